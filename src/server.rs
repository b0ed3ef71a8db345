//! `serve`: wires config → storage → notifier → pipeline → front-ends and metrics, and stops
//! them in order.

use crate::auth::{HttpAuth, Logins, UserDirectory};
use crate::config::{Config, Endpoint, StateBackend};
use crate::defender::Defender;
use crate::files::Files;
use crate::ftp::{self, FtpShared};
use crate::metrics::{self, Metrics};
use crate::namespace::Namespace;
use crate::notify::{Notifier, NotifyError};
use crate::sftp::{self, SftpShared};
use crate::storage::embedded::{EmbeddedError, EmbeddedStore};
use crate::storage::{Connection, Storage};
use crate::upload::Pipeline;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long the start-up bucket check may take.
const BUCKET_CHECK_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `/readyz` waits for HeadBucket.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a stop waits for queued completions to be delivered — with a shared outbox,
/// for this replica's running deliveries to finish — (or `drain_timeout`, if shorter);
/// what is left stays pending in the outbox (handed to the other replicas when shared).
const NOTIFY_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the bridge could not start. Each message names the key or address to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `server.data_dir` unusable.
    #[error("cannot create server.data_dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `log.audit_file` unusable.
    #[error(
        "cannot open log.audit_file {path}: {source}. Check the directory and its permissions, or set audit_file = \"\" to only log audit records."
    )]
    AuditFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A listener could not bind.
    #[error(
        "cannot listen on {addr} ({key}): {source}. Is another process using the port? Change {key} or stop it."
    )]
    Bind {
        /// The config key.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The embedded store failed.
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    /// The record of cut uploads (`data_dir/uploads.sqlite3`) cannot be opened.
    #[error("{0}. Check server.data_dir and its permissions.")]
    Partials(crate::state::StateError),
    /// The shared state database (`[state] url`) cannot be opened or migrated.
    #[error(
        "{0}. Check state.url, that the database is reachable, and that its user may create tables."
    )]
    SharedState(crate::state::StateError),
    /// The bucket is unreachable.
    #[error(
        "cannot reach bucket {bucket:?} at {endpoint} (storage.endpoint / storage.bucket): {message}. Check the endpoint URL, that the bucket exists, and the credentials (storage.access_key_id or the AWS default chain)."
    )]
    Bucket {
        /// The bucket.
        bucket: String,
        /// The endpoint.
        endpoint: String,
        /// What S3 said.
        message: String,
    },
    /// The event log failed.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// The FTPS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] ftp::TlsError),
    /// `[auth.http]` cannot be set up.
    #[error(transparent)]
    Auth(#[from] crate::auth::HttpAuthSetupError),
    /// An SSH host key is unusable.
    #[error("cannot use {0}. Fix or remove the file (a new key is generated when it is missing).")]
    HostKey(#[from] sftp::HostKeyError),
    /// The admin listener's certificate or key is unusable.
    #[error(transparent)]
    AdminTls(#[from] crate::admin::AdminTlsError),
}

/// Why a reload (SIGHUP) kept the running configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The new FTPS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] ftp::TlsError),
    /// The new file would leave an admin listener other machines reach without a token.
    #[error(
        "admin.token is empty but the running admin listener ({0}) is reachable from other machines; set admin.token (admin.listen takes effect at the next start)"
    )]
    AdminToken(SocketAddr),
}

/// A running bridge.
pub struct Bridge {
    /// FTP control address, when enabled.
    pub ftp_addr: Option<SocketAddr>,
    /// SFTP address, when enabled.
    pub sftp_addr: Option<SocketAddr>,
    /// SHA-256 fingerprints of the SSH host keys.
    pub sftp_fingerprints: Vec<String>,
    /// Metrics endpoint address.
    pub metrics_addr: SocketAddr,
    /// Admin API and status page address, when `[admin] listen` is set.
    pub admin_addr: Option<SocketAddr>,
    /// The embedded store, when `storage.endpoint = "embedded"`.
    pub embedded: Option<EmbeddedStore>,
    /// The pipeline (budget, S3).
    pub pipeline: Pipeline,
    /// Completion delivery.
    pub notifier: Notifier,
    /// The metric registry.
    pub metrics: Metrics,
    reloader: Arc<Reloader>,
    admin_https: bool,
    draining: CancellationToken,
    stopped: CancellationToken,
    drain_timeout: Duration,
}

/// Connections the kernel holds for a listener before it accepts them (capped by
/// `net.core.somaxconn`). The standard library's 128 drops part of a burst of logins, and a
/// client whose handshake completed on its side then waits for a greeting that never comes.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    socket
        .and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)
        })
        .map_err(|source| StartError::Bind { key, addr, source })
}

impl Bridge {
    /// Starts everything the config enables; returns once every listener is bound.
    pub async fn start(config: Config) -> Result<Bridge, StartError> {
        let data_dir = config.server.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let mut metrics = Metrics::new();
        if let Some(path) = &config.log.audit_file {
            metrics.audit =
                crate::audit::Audit::open(path).map_err(|source| StartError::AuditFile {
                    path: path.display().to_string(),
                    source,
                })?;
        }

        let (embedded, connection) = match config.storage.endpoint {
            Endpoint::Embedded => {
                let store =
                    EmbeddedStore::start(&data_dir.join("store"), &config.storage.bucket, 0)
                        .await?;
                let conn = Connection {
                    endpoint_url: Some(store.url.clone()),
                    credentials: Some((store.access_key.clone(), store.secret_key.clone())),
                };
                (Some(store), conn)
            }
            _ => (None, Connection::from_config(&config.storage)),
        };
        let storage = Storage::connect(&config.storage, &connection, metrics.clone()).await;
        let endpoint = connection
            .endpoint_url
            .clone()
            .unwrap_or_else(|| "AWS S3".into());
        match tokio::time::timeout(BUCKET_CHECK_TIMEOUT, storage.check_bucket()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(StartError::Bucket {
                    bucket: config.storage.bucket.clone(),
                    endpoint,
                    message: e.message,
                });
            }
            Err(_) => {
                return Err(StartError::Bucket {
                    bucket: config.storage.bucket.clone(),
                    endpoint,
                    message: format!("no answer within {BUCKET_CHECK_TIMEOUT:?}"),
                });
            }
        }

        let with_outbox = config.notify.enabled();
        let stores = match &config.state.backend {
            StateBackend::Sqlite => {
                crate::state::sqlite::open(&data_dir, with_outbox).map_err(|e| {
                    // The outbox's failures read as before: the notifier's.
                    if e.store() == "outbox" {
                        StartError::Notify(NotifyError::Outbox(e))
                    } else {
                        StartError::Partials(e)
                    }
                })?
            }
            StateBackend::Postgres(url) => {
                let stores = crate::state::postgres::open(
                    url,
                    with_outbox,
                    config.state.max_connections,
                    &config.state.tls,
                )
                .await
                .map_err(StartError::SharedState)?;
                tracing::info!(database = %crate::config::state::without_password(url),
                    "durable state shared in PostgreSQL");
                stores
            }
        };
        if let Some(health) = &stores.health {
            health.register(&metrics.registry);
        }
        let notifier = Notifier::start(
            &config.notify,
            &config.users,
            &data_dir,
            stores.outbox.clone(),
            storage.clone(),
            metrics.clone(),
        )
        .await?;
        let pipeline = Pipeline::new(
            &config.storage,
            &config.upload,
            &stores,
            storage.clone(),
            notifier.clone(),
            metrics.clone(),
        );
        // Reconciles kept uploads with S3, then expires them after storage.resume_window.
        pipeline.maintain();
        let namespace = Arc::new(Namespace::new(storage.clone(), &stores));
        let files = Files::new(pipeline.clone(), namespace);
        let users = Arc::new(UserDirectory::new(&config.users));
        let http_auth = match &config.auth.http {
            Some(cfg) => Some(HttpAuth::new(cfg, metrics.clone()).map_err(StartError::from)?),
            None => None,
        };
        let logins = Arc::new(Logins::new(users.clone(), http_auth));

        let metrics_listener = bind("metrics.listen", config.metrics.listen).await?;
        let metrics_addr = metrics_listener
            .local_addr()
            .unwrap_or(config.metrics.listen);
        let admin_listener = match config.admin.listen {
            Some(addr) => Some(bind("admin.listen", addr).await?),
            None => None,
        };
        let admin_tls = match &config.admin.tls {
            Some(tls) => Some(crate::admin::tls_acceptor(tls)?),
            None => None,
        };
        let certificates = match &config.ftp.tls {
            Some(tls) if config.ftp.enabled => Some(ftp::Certificates::load(tls)?),
            _ => None,
        };
        let ftp_tls = match &certificates {
            Some(c) => Some(c.server_config()?),
            None => None,
        };
        let ftp_listener = if config.ftp.enabled {
            Some(bind("ftp.listen", config.ftp.listen).await?)
        } else {
            None
        };
        let (sftp_listener, host_keys) = if config.sftp.enabled {
            let keys = sftp::load_host_keys(&config.sftp)?;
            (Some(bind("sftp.listen", config.sftp.listen).await?), keys)
        } else {
            (None, Vec::new())
        };
        let sftp_fingerprints = host_keys.iter().map(sftp::fingerprint).collect();

        let draining = CancellationToken::new();
        let stopped = CancellationToken::new();
        let defender = Arc::new(Defender::new(
            config.server.allowed_ips.clone(),
            config.defender.clone(),
            crate::defender::ConnectionLimits {
                total: config.server.max_connections,
                per_ip: config.server.max_connections_per_ip,
                login_timeout: config.server.login_timeout,
            },
            stores.bans.clone(),
            metrics.clone(),
        ));
        defender.set_trusted_proxies(config.server.trusted_proxies.clone());
        let ftp_addr = match ftp_listener {
            Some(listener) => {
                let addr = listener.local_addr().unwrap_or(config.ftp.listen);
                let shared = Arc::new(FtpShared {
                    files: files.clone(),
                    data_timeout: config.ftp.data_timeout,
                    defender: defender.clone(),
                    tls: ftp_tls,
                });
                tokio::spawn(ftp::serve(
                    listener,
                    config.ftp.clone(),
                    shared,
                    logins.clone(),
                    metrics.clone(),
                    draining.clone(),
                    stopped.clone(),
                ));
                Some(addr)
            }
            None => None,
        };
        let sftp_addr = match sftp_listener {
            Some(listener) => {
                let addr = listener.local_addr().unwrap_or(config.sftp.listen);
                let shared = Arc::new(SftpShared {
                    files: files.clone(),
                    defender: defender.clone(),
                });
                tokio::spawn(sftp::serve(
                    listener,
                    sftp::server_config(&config.sftp, host_keys),
                    shared,
                    logins.clone(),
                    metrics.clone(),
                    draining.clone(),
                    stopped.clone(),
                ));
                Some(addr)
            }
            None => None,
        };
        let readiness: metrics::Readiness = {
            let storage = storage.clone();
            let notifier = notifier.clone();
            let draining = draining.clone();
            let defender = defender.clone();
            let banned = metrics.defender_banned_addresses.clone();
            let state = stores.health.clone();
            Arc::new(move || {
                // Bans end by themselves: refresh the gauge whenever it is looked at.
                banned.set(i64::try_from(defender.banned_now()).unwrap_or(i64::MAX));
                let storage = storage.clone();
                let notifier = notifier.clone();
                let draining = draining.clone();
                // Read from the background probe: a scrape never waits on the database.
                let state = state.as_ref().map(|health| health.check());
                Box::pin(async move {
                    let listeners = if draining.is_cancelled() {
                        Err(
                            "draining: new connections are refused while running uploads finish"
                                .to_string(),
                        )
                    } else {
                        Ok(())
                    };
                    let bucket =
                        match tokio::time::timeout(READY_CHECK_TIMEOUT, storage.check_bucket())
                            .await
                        {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err(format!(
                                "HeadBucket took longer than {READY_CHECK_TIMEOUT:?}"
                            )),
                        };
                    let mut checks = vec![
                        ("listeners", listeners),
                        ("s3", bucket),
                        (
                            "event_log",
                            notifier.check_writable().await.map_err(|e| e.to_string()),
                        ),
                        (
                            "outbox",
                            notifier.check_outbox().await.map_err(|e| e.to_string()),
                        ),
                    ];
                    if let Some(state) = state {
                        checks.push(("state", state));
                    }
                    checks
                })
            })
        };
        tokio::spawn(metrics::serve_endpoint(
            metrics_listener,
            metrics.clone(),
            readiness.clone(),
            stopped.clone(),
        ));
        let admin_token = Arc::new(arc_swap::ArcSwap::from_pointee(config.admin.token.clone()));
        let admin_addr = match &admin_listener {
            Some(listener) => listener.local_addr().ok().or(config.admin.listen),
            None => None,
        };
        let reloader = Arc::new(Reloader {
            path: config.source.clone(),
            admin: admin_addr.map(|addr| (addr, admin_token.clone())),
            users,
            notifier: notifier.clone(),
            defender: defender.clone(),
            certificates,
            metrics: metrics.clone(),
        });
        if let Some(listener) = admin_listener {
            if !config.admin.token.is_empty() && config.admin.token.len() < 16 {
                tracing::warn!(
                    "admin.token is shorter than 16 characters; use a long random value (e.g. `openssl rand -hex 24`)"
                );
            }
            let reload: crate::admin::Reload = {
                let reloader = reloader.clone();
                Arc::new(move || reloader.reload_logged().map_err(|e| e.to_string()))
            };
            let context = Arc::new(crate::admin::AdminContext {
                token: admin_token,
                files: files.clone(),
                pipeline: pipeline.clone(),
                notifier: notifier.clone(),
                defender: defender.clone(),
                readiness,
                reload,
                metrics: metrics.clone(),
                replica: crate::admin::replica_name(),
                state_backend: match config.state.backend {
                    StateBackend::Sqlite => "sqlite",
                    StateBackend::Postgres(_) => "postgres",
                },
                started_at: std::time::SystemTime::now(),
                guesses: Default::default(),
                readiness_cache: Default::default(),
            });
            tokio::spawn(crate::admin::serve(
                listener,
                context,
                admin_tls,
                stopped.clone(),
            ));
        }

        Ok(Bridge {
            ftp_addr,
            sftp_addr,
            sftp_fingerprints,
            metrics_addr,
            admin_addr,
            embedded,
            pipeline,
            notifier,
            metrics,
            reloader,
            admin_https: config.admin.tls.is_some(),
            draining,
            stopped,
            drain_timeout: config.server.drain_timeout,
        })
    }

    /// Reads the config file at `path` again and applies it without dropping sessions:
    /// users (passwords, keys, homes, permissions, limits, notify settings),
    /// `server.allowed_ips`, `server.trusted_proxies`, the FTPS certificate and
    /// `admin.token`. All or nothing: a file that does not load, or an unusable
    /// certificate, keeps the whole running config. Other keys take effect at the next start.
    pub fn reload(&self, path: &std::path::Path) -> Result<(), ReloadError> {
        self.reloader.reload(path)
    }

    /// [`Bridge::reload`] of the file the bridge started from, with the outcome logged:
    /// what SIGHUP and `POST /api/v1/reload` both do.
    pub fn reload_logged(&self) -> Result<(), ReloadError> {
        self.reloader.reload_logged()
    }

    /// `http://addr` or `https://addr`: how to reach the admin listener at `addr`.
    pub fn admin_url(&self, addr: SocketAddr) -> String {
        let scheme = if self.admin_https { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    /// Drains, then stops: `/readyz` fails at once, new connections are refused (FTP 421)
    /// and new uploads from open sessions too; running uploads get `server.drain_timeout`
    /// to finish, the rest are cut (kept for a resume when resuming is on); queued
    /// completions get a last chance; then the listeners, the metrics endpoint and the
    /// embedded store stop.
    pub async fn shutdown(self) {
        // Readiness fails and new connections hear "service unavailable" from here on, so a
        // load balancer stops sending while running uploads finish.
        self.draining.cancel();
        let active = self.pipeline.active();
        if active > 0 {
            tracing::info!(active, timeout = ?self.drain_timeout, "waiting for running uploads to finish");
        }
        // Refuses new uploads at once, then waits for the running ones.
        self.pipeline.shutdown(self.drain_timeout).await;
        self.notifier
            .shutdown(self.drain_timeout.min(NOTIFY_DRAIN_TIMEOUT))
            .await;
        self.stopped.cancel();
        if let Some(store) = &self.embedded {
            store.stop();
        }
    }
}

/// What a reload (SIGHUP, or `POST /api/v1/reload`) changes.
struct Reloader {
    /// The file the bridge started from.
    path: std::path::PathBuf,
    /// The admin listener's address and the token it checks, when it runs.
    admin: Option<(SocketAddr, Arc<arc_swap::ArcSwap<String>>)>,
    users: Arc<UserDirectory>,
    notifier: Notifier,
    defender: Arc<Defender>,
    certificates: Option<Arc<ftp::Certificates>>,
    metrics: Metrics,
}

impl Reloader {
    /// See [`Bridge::reload`].
    fn reload(&self, path: &std::path::Path) -> Result<(), ReloadError> {
        let outcome = Config::load(path)
            .map_err(ReloadError::from)
            .and_then(|config| self.apply(&config));
        let result = if outcome.is_ok() { "ok" } else { "error" };
        self.metrics
            .config_reloads_total
            .with_label_values(&[result])
            .inc();
        outcome
    }

    /// Reloads the file the bridge started from, and logs the outcome as SIGHUP does.
    fn reload_logged(&self) -> Result<(), ReloadError> {
        let outcome = self.reload(&self.path);
        match &outcome {
            Ok(()) => {
                tracing::info!(config = %self.path.display(), "configuration reloaded (users, allowed_ips, trusted_proxies, FTPS certificate, admin token)")
            }
            Err(e) => {
                tracing::error!(config = %self.path.display(), error = %e, "reload refused; the running configuration stays")
            }
        }
        outcome
    }

    fn apply(&self, config: &Config) -> Result<(), ReloadError> {
        if let Some((addr, _)) = &self.admin
            && config.admin.token.is_empty()
            && !addr.ip().is_loopback()
        {
            return Err(ReloadError::AdminToken(*addr));
        }
        if let (Some(certificates), Some(tls)) = (&self.certificates, &config.ftp.tls) {
            certificates.reload(tls)?;
        }
        if let Some((_, token)) = &self.admin {
            token.store(Arc::new(config.admin.token.clone()));
        }
        self.users.replace(&config.users);
        self.notifier.set_users(&config.users);
        self.defender.set_allowed(config.server.allowed_ips.clone());
        self.defender
            .set_trusted_proxies(config.server.trusted_proxies.clone());
        Ok(())
    }
}
