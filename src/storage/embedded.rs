//! The in-process S3 store (s3s-fs) behind `storage.endpoint = "embedded"`: a real S3 API on
//! a loopback port, so the bridge uses exactly the same aws-sdk-s3 path as against AWS.
//! For evaluation and tests; production points `endpoint` at AWS S3, MinIO, Ceph RGW, Garage…

use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::{Rng, distributions::Alphanumeric};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Generated for this run.
    pub access_key: String,
    /// Generated for this run.
    pub secret_key: String,
    /// Where objects live on disk.
    pub root: PathBuf,
    stop: CancellationToken,
}

/// Why the embedded store could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The directory could not be created or opened.
    #[error(
        "cannot use {path} for the embedded store: {message}. Check that server.data_dir is writable."
    )]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The address could not be bound.
    #[error("cannot bind the embedded store on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl EmbeddedStore {
    /// Starts s3s-fs on `127.0.0.1:port` (0 = any) over `root`, creating `bucket` when absent,
    /// with fresh random credentials.
    pub async fn start(
        root: &Path,
        bucket: &str,
        port: u16,
    ) -> Result<EmbeddedStore, EmbeddedError> {
        let credentials = (random_token(20), random_token(40));
        Self::start_on(
            root,
            bucket,
            SocketAddr::from(([127, 0, 0, 1], port)),
            credentials,
        )
        .await
    }

    /// Starts s3s-fs on `listen` with the given access key and secret key.
    pub async fn start_on(
        root: &Path,
        bucket: &str,
        listen: SocketAddr,
        (access_key, secret_key): (String, String),
    ) -> Result<EmbeddedStore, EmbeddedError> {
        let dir_err = |e: &dyn std::fmt::Display| EmbeddedError::Directory {
            path: root.to_path_buf(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(root.join(bucket)).map_err(|e| dir_err(&e))?;
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| dir_err(&format!("{e:?}")))?;
        let service = {
            let mut b = S3ServiceBuilder::new(fs);
            b.set_auth(SimpleAuth::from_single(
                access_key.clone(),
                secret_key.clone(),
            ));
            b.build()
        };
        let bind_err = |source| EmbeddedError::Bind {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            loop {
                let socket = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((socket, _)) => socket,
                        Err(e) => {
                            tracing::warn!(error = %e, "embedded store: accept failed");
                            continue;
                        }
                    },
                    () = stopped.cancelled() => break,
                };
                let _ = socket.set_nodelay(true);
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = conn => {}
                        () = stopped.cancelled() => {}
                    }
                });
            }
        });
        Ok(EmbeddedStore {
            url: format!("http://{addr}"),
            access_key,
            secret_key,
            root: root.to_path_buf(),
            stop,
        })
    }

    /// Stops serving: open connections are cut, the port is closed.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

fn random_token(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
