//! The operator's door (`[admin]`, CONTRACT §9): a JSON API under `/api/v1/` to see and act
//! on running uploads, sessions, the outbox and bans, and a status page at `/` that calls it.
//!
//! Every API call carries `Authorization: Bearer <admin.token>` (compared in constant time;
//! an address that sends ten wrong tokens within five minutes is refused for five minutes);
//! every action (`DELETE`, `POST`) and every wrong token goes to the audit trail with the
//! caller's address; every request is counted in `ingest_bridge_admin_requests_total`.
//! Running uploads and sessions are this replica's; the outbox and bans are whatever the
//! state store holds — cluster-wide on PostgreSQL.

mod api;
mod auth;
mod page;
mod routes;
mod tls;

pub use routes::{ROUTES, RouteSpec};
pub use tls::{AdminTlsError, acceptor as tls_acceptor};

use crate::defender::Defender;
use crate::files::Files;
use crate::metrics::{CheckResult, Metrics, Readiness};
use crate::notify::Notifier;
use crate::upload::Pipeline;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Applies the config file again (what SIGHUP does); `Err` says why it was refused.
pub type Reload = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the admin API reads and acts on.
pub struct AdminContext {
    /// The Bearer token; empty: calls need none (a loopback listener only). A reload
    /// (SIGHUP) swaps it, so a token is rotated without a restart.
    pub token: Arc<arc_swap::ArcSwap<String>>,
    /// Sessions and their uploads.
    pub files: Files,
    /// Running uploads.
    pub pipeline: Pipeline,
    /// The outbox.
    pub notifier: Notifier,
    /// Bans.
    pub defender: Arc<Defender>,
    /// The readiness checks of `/readyz`.
    pub readiness: Readiness,
    /// What `POST /api/v1/reload` runs.
    pub reload: Reload,
    /// Counters and the audit trail.
    pub metrics: Metrics,
    /// This replica's name in answers (its host name).
    pub replica: String,
    /// `sqlite` or `postgres`.
    pub state_backend: &'static str,
    /// When this process started.
    pub started_at: SystemTime,
    /// Wrong tokens per caller address.
    pub guesses: auth::Guesses,
    /// The last readiness checks and when they ran: every open page asks for them, and one
    /// run (an S3 HeadBucket among them) serves all callers for [`READINESS_TTL`].
    pub readiness_cache: tokio::sync::Mutex<Option<(std::time::Instant, Vec<CheckResult>)>>,
}

/// How long one run of the readiness checks answers `GET /api/v1/status`.
pub const READINESS_TTL: Duration = Duration::from_secs(2);

/// Serves the admin listener (HTTPS when `tls` is given) until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    context: Arc<AdminContext>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let context = context.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, context, stop).await,
                        Ok(Err(e)) => {
                            tracing::debug!(remote = %peer, error = %e, "admin: TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(remote = %peer, "admin: TLS handshake timed out"),
                    }
                }
                None => serve_connection(socket, peer, context, stop).await,
            }
        });
    }
}

/// One HTTP/1.1 connection.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    context: Arc<AdminContext>,
    stop: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let context = context.clone();
        async move { Ok::<_, Infallible>(api::handle(&context, peer, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

/// This host's name, which names the replica in answers (a Kubernetes pod's name).
pub fn replica_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "ingest-bridge".to_string())
}

/// A JSON or text answer.
pub(crate) fn respond(
    status: hyper::StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    // Live data: never cached by a browser or a proxy.
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        "x-content-type-options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    resp
}
