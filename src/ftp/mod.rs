//! The FTP/FTPS front-end: our own accept loop (so every session knows its client's address
//! and the server controls draining), one libunftp control loop per connection, and a
//! storage backend that streams STOR into the upload pipeline.

mod backend;
mod data_socket;
mod session;
mod tls;

pub use backend::FtpShared;
pub use tls::{Certificates, TlsError};

use crate::auth::Logins;
use crate::config::FtpConfig;
use crate::defender::{Admission, Refusal};
use crate::metrics::{GaugeGuard, Metrics, Protocol};
use crate::upload::OpenSessions;
use backend::S3Backend;
use data_socket::DataSocketBinder;
use libunftp::ServerBuilder;
use libunftp::options::{FtpsRequired, PassiveHost};
use session::{FtpUser, MetricsRef, Session, SessionAuthenticator, UserProvider};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Greeting sent on connect.
const GREETING: &str = "ingest-bridge FTP ready";

/// What a connection hears while the server drains.
const DRAINING_REPLY: &str = "421 Service not available: this server is restarting; connect again (another server will answer).\r\n";

/// What a session closed by the operator hears before its connection is shut.
const CLOSED_REPLY: &str = "421 The server's operator closed this session.\r\n";

/// How long a closed session's control loop gets to end by itself.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves FTP on `listener`: sessions until `draining` is cancelled, then a 421 to every new
/// connection until `stopped`. Sessions in progress keep running (their uploads are drained
/// by the pipeline).
pub async fn serve(
    listener: TcpListener,
    cfg: FtpConfig,
    shared: Arc<FtpShared>,
    logins: Arc<Logins>,
    metrics: Metrics,
    draining: CancellationToken,
    stopped: CancellationToken,
) {
    let cfg = Arc::new(cfg);
    let open_sessions = shared.files.budget().sessions().clone();
    let mut sessions = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "ftp: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped.cancelled() => break,
        };
        if draining.is_cancelled() {
            say_and_close(stream, DRAINING_REPLY.to_string());
            continue;
        }
        while sessions.try_join_next().is_some() {}
        sessions.spawn(serve_connection(
            stream,
            peer,
            cfg.clone(),
            shared.clone(),
            logins.clone(),
            metrics.clone(),
            open_sessions.clone(),
        ));
    }
    // Sessions are detached: their uploads finish or abort under the pipeline's drain.
    sessions.detach_all();
}

/// One control connection, from admission (PROXY header, allowlist, bans, limits) to its end.
async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    cfg: Arc<FtpConfig>,
    shared: Arc<FtpShared>,
    logins: Arc<Logins>,
    metrics: Metrics,
    open_sessions: OpenSessions,
) {
    let (remote_addr, _slot) = match shared
        .defender
        .admit_connection(&mut stream, peer, Protocol::Ftp)
        .await
    {
        Ok(admitted) => admitted,
        Err(Refusal::ProxyHeader) => return,
        Err(Refusal::Refused(admission)) => {
            refuse(stream, admission);
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let control = crate::defender::second_handle(&stream);
    let deadline = shared
        .defender
        .login_deadline(&stream, "421 No login in time; closing the connection.\r\n");
    let tracked =
        shared
            .files
            .sessions()
            .enter(&crate::audit::new_session_id(), Protocol::Ftp, remote_addr);
    let session = Session::new(remote_addr, control, deadline, tracked.session.clone());
    let _counted = open_sessions.enter();
    let binder = DataSocketBinder {
        policy: cfg.data_receive_buffer,
        memory_limit: shared.files.budget().limit(),
        sessions: open_sessions,
    };
    let server = match build_server(&cfg, &shared, &logins, &metrics, session.clone(), binder) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "ftp: cannot set up session");
            return;
        }
    };
    let _active = GaugeGuard::new(
        metrics
            .sessions_active
            .with_label_values(&[Protocol::Ftp.as_str()]),
    );
    tracing::debug!(remote = %remote_addr, "ftp session opened");
    let service = server.service(stream);
    tokio::pin!(service);
    let ended = tokio::select! {
        ended = &mut service => ended,
        () = tracked.session.closed() => {
            // The uploads already stopped (`Files::close_session`); the control loop sees
            // the end of its socket and ends, or is dropped after a grace.
            session.say_and_shut(CLOSED_REPLY);
            tokio::time::timeout(CLOSE_GRACE, &mut service).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = ended {
        tracing::warn!(remote = %remote_addr, error = %e, "ftp session ended with an error");
    }
    count_libunftp_limits(&metrics);
    session.control_closed();
    tracing::debug!(remote = %remote_addr, "ftp session closed");
}

/// Adds libunftp's idle closes (`421 Session timed out`) to
/// `limits_exceeded_total{limit="idle_timeout"}` and its overlong command lines (`500`, then
/// closed) to `{limit="line_length"}`. libunftp counts them per process, so the increase since
/// the last report goes to whichever session ends next.
fn count_libunftp_limits(metrics: &Metrics) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static IDLE_REPORTED: AtomicU64 = AtomicU64::new(0);
    static LINES_REPORTED: AtomicU64 = AtomicU64::new(0);
    for (reported, total, limit) in [
        (
            &IDLE_REPORTED,
            libunftp::idle_session_timeouts(),
            "idle_timeout",
        ),
        (
            &LINES_REPORTED,
            libunftp::command_lines_too_long(),
            "line_length",
        ),
    ] {
        let before = reported.fetch_max(total, Ordering::AcqRel);
        if total > before {
            metrics
                .limits_exceeded_total
                .with_label_values(&[limit])
                .inc_by(total - before);
        }
    }
}

/// Answers a refused connection with `421` and closes it, without a session.
fn refuse(stream: TcpStream, admission: Admission) {
    let reply = match admission {
        Admission::Banned(left) => format!(
            "421 Too many failed logins from your address; try again in {} s.\r\n",
            left.as_secs().max(1)
        ),
        Admission::TooManyConnections => {
            "421 Too many connections to this server; try again later.\r\n".to_string()
        }
        Admission::TooManyFromAddress => {
            "421 Too many connections from your address; close one and try again.\r\n".to_string()
        }
        _ => "421 Connections from your address are not allowed.\r\n".to_string(),
    };
    say_and_close(stream, reply);
}

/// Sends `reply` and closes, without waiting on a client that does not read.
fn say_and_close(stream: TcpStream, reply: String) {
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut stream = stream;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}

fn build_server(
    cfg: &FtpConfig,
    shared: &Arc<FtpShared>,
    logins: &Arc<Logins>,
    metrics: &Metrics,
    session: Arc<Session>,
    binder: DataSocketBinder,
) -> Result<libunftp::Server<S3Backend, FtpUser>, libunftp::ServerError> {
    let backend_shared = shared.clone();
    let backend_session = session.clone();
    let generator = Box::new(move || S3Backend {
        shared: backend_shared.clone(),
        session: backend_session.clone(),
    });
    let passive_host = match cfg.passive_host.parse::<Ipv4Addr>() {
        Ok(ip) => PassiveHost::Ip(ip),
        Err(_) => PassiveHost::Dns(cfg.passive_host.clone()),
    };
    let mut builder = ServerBuilder::<S3Backend, FtpUser>::with_user_detail_provider(
        generator,
        Arc::new(UserProvider(session.clone())),
    )
    .authenticator(Arc::new(SessionAuthenticator {
        logins: logins.clone(),
        session,
        metrics: MetricsRef(metrics.clone()),
        defender: shared.defender.clone(),
    }))
    .greeting(GREETING)
    .passive_ports(cfg.passive_ports.clone())
    .passive_host(passive_host)
    .binder(binder)
    .idle_session_timeout(cfg.idle_timeout.as_secs().max(1));
    if let (Some(tls), Some(server_config)) = (&cfg.tls, &shared.tls) {
        builder = builder.ftps_manual::<std::path::PathBuf>(server_config.clone());
        if tls.required {
            builder = builder.ftps_required(FtpsRequired::All, FtpsRequired::All);
        }
    }
    builder.build()
}
