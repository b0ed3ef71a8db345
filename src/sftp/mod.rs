//! The SFTP front-end: russh for SSH (password and public-key logins, the same users as FTP),
//! russh-sftp for the file protocol, and the same upload pipeline and namespace as FTP.

mod files;
mod keys;
mod stream;
mod writing;

pub use files::SftpShared;
pub use keys::{HostKeyError, fingerprint, load_or_generate};

use crate::audit::LoginRecord;
use crate::auth::{AuthError, Logins, Secret, User};
use crate::config::SftpConfig;
use crate::defender::LoginDeadline;
use crate::metrics::{GaugeGuard, Metrics, Protocol};
use crate::progress::Progress;
use crate::upload::OpenSessionGuard;
use files::SftpFiles;
use russh::keys::PrivateKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stream::{Inbox, SftpStream, channel_stream};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// SSH channel window while few sessions share the memory budget: large, so one round trip
/// does not limit a bulk upload over a long path.
const WINDOW_SIZE: u32 = 16 * 1024 * 1024;
/// The smallest window [`window_for`] gives; below it even a loopback client crawls.
const MIN_WINDOW: u32 = 64 * 1024;
/// How long a connection shut down for making no progress may take to end before the
/// bridge stops waiting for it (its places are freed either way).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Largest SSH packet we accept and send.
const MAX_PACKET: u32 = 256 * 1024;

/// All windows together get `memory_limit / WINDOW_SHARE` while enough sessions are open to
/// reach [`MIN_WINDOW`]: an eighth, not FTP's half, because 1,000 SFTP uploads on 512 MiB
/// peaked at 969 MiB with half (`bench/scale.sh`), and a window of 1/8 still reaches
/// [`WINDOW_SIZE`] for a single session from 128 MiB up.
const WINDOW_SHARE: u64 = 8;
/// What one SFTP session holds of its own, charged to the memory budget while it lasts
/// ([`MemoryBudget::charge_session`](crate::upload::MemoryBudget)): a window at its floor
/// (64 KiB), the WRITE request russh-sftp is parsing (it keeps the message and a copy of its
/// data) and the one handed to the upload task, 96 KiB at the 32 KiB most clients write, and
/// the connection's tasks (about 74 KiB in heap profiles), rounded up.
const SESSION_CHARGE: u64 = 256 * 1024;

/// The SSH window for each channel when `sessions` share `memory_limit`.
///
/// An upload that waits for the memory budget stops consuming, and its client may then send
/// a window's worth more, which the bridge holds: at most `memory_limit / WINDOW_SHARE`
/// over all sessions until each is down to [`MIN_WINDOW`], which [`SESSION_CHARGE`] counts.
fn window_for(memory_limit: u64, sessions: usize) -> u32 {
    u32::try_from(memory_limit / (WINDOW_SHARE * sessions.max(1) as u64))
        .unwrap_or(u32::MAX)
        .clamp(MIN_WINDOW, WINDOW_SIZE)
}

/// READ and WRITE lengths advertised while windows are small: what clients without the
/// extension move, and what the session charge (`SESSION_CHARGE`) counts per request.
const CROWDED_IO_LENGTH: u64 = 32 * 1024;

/// The lengths a new session is told: 255 KiB while its window holds a whole message,
/// 32 KiB once so many sessions share the budget that it does not. russh-sftp keeps each
/// WRITE twice while it parses it and the session hands one more to its upload, so 1,000
/// OpenSSH uploads would otherwise hold about 750 MiB in requests outside the budget.
fn advertised_io_length(memory_limit: u64, sessions: usize) -> u64 {
    if u64::from(window_for(memory_limit, sessions)) >= u64::from(files::MAX_MESSAGE) {
        files::ADVERTISED_IO_LENGTH
    } else {
        CROWDED_IO_LENGTH
    }
}

/// Builds the russh server configuration from `[sftp]` and the loaded host keys.
pub fn server_config(cfg: &SftpConfig, keys: Vec<PrivateKey>) -> Arc<russh::server::Config> {
    // Names were checked against `config::SFTP_CIPHERS`, which russh all knows.
    let ciphers: Vec<russh::cipher::Name> = cfg
        .ciphers
        .iter()
        .filter_map(|name| russh::cipher::Name::try_from(name.as_str()).ok())
        .collect();
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::Password);
    methods.push(MethodKind::PublicKey);
    Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard(
            concat!("SSH-2.0-ingest-bridge_", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods,
        keys,
        auth_rejection_time: Duration::from_secs(1),
        auth_rejection_time_initial: Some(Duration::ZERO),
        window_size: WINDOW_SIZE,
        maximum_packet_size: MAX_PACKET,
        // No channel is read through russh's queue (`stream.rs`): its size does not matter.
        // Counts SSH packets only; `serve_connection` also watches the SFTP sessions.
        inactivity_timeout: Some(cfg.idle_timeout),
        nodelay: true,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Owned(ciphers),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Loads (or creates) every configured host key.
pub fn load_host_keys(cfg: &SftpConfig) -> Result<Vec<PrivateKey>, HostKeyError> {
    cfg.host_keys
        .iter()
        .map(|path| load_or_generate(path))
        .collect()
}

/// Serves SFTP on `listener`: sessions until `draining` is cancelled, then new connections
/// are closed at once (SSH has no way to say why before its handshake) until `stopped`.
pub async fn serve(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    shared: Arc<SftpShared>,
    logins: Arc<Logins>,
    metrics: Metrics,
    draining: CancellationToken,
    stopped: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "sftp: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped.cancelled() => break,
        };
        if draining.is_cancelled() {
            drop(stream);
            continue;
        }
        tokio::spawn(serve_connection(
            stream,
            peer,
            config.clone(),
            shared.clone(),
            logins.clone(),
            metrics.clone(),
        ));
    }
}

/// One SSH connection, from admission (PROXY header, allowlist, bans, limits) to its end.
async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    config: Arc<russh::server::Config>,
    shared: Arc<SftpShared>,
    logins: Arc<Logins>,
    metrics: Metrics,
) {
    // SSH has no way to say why before the handshake: refused connections are just closed.
    let Ok((remote_addr, _slot)) = shared
        .defender
        .admit_connection(&mut stream, peer, Protocol::Sftp)
        .await
    else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let deadline = shared.defender.login_deadline(&stream, "");
    // Shuts the connection down when its SFTP sessions stall, whatever russh is doing.
    let socket = crate::defender::second_handle(&stream);
    let progress = Progress::new();
    let tracked =
        shared
            .files
            .sessions()
            .enter(&crate::audit::new_session_id(), Protocol::Sftp, remote_addr);
    let connection = SshConnection {
        shared: shared.clone(),
        logins,
        metrics: metrics.clone(),
        remote_addr,
        session_id: tracked.session.id.clone(),
        tracked: tracked.session.clone(),
        user: None,
        login_deadline: deadline.clone(),
        channels: HashMap::new(),
        sftp_streams: HashMap::new(),
        largest_window: 0,
        progress: progress.clone(),
        _counted: shared.files.budget().sessions().enter(),
        _active: GaugeGuard::new(
            metrics
                .sessions_active
                .with_label_values(&[Protocol::Sftp.as_str()]),
        ),
    };
    let idle_timeout = config.inactivity_timeout;
    match russh::server::run_stream(config, stream, connection).await {
        Ok(mut session) => {
            let stalled = async {
                match idle_timeout {
                    Some(timeout) => progress.stalled(timeout).await,
                    None => std::future::pending().await,
                }
            };
            let handle = session.handle();
            let ended = tokio::select! {
                ended = &mut session => ended,
                () = tracked.session.closed() => {
                    // The uploads already stopped (`Files::close_session`): say why, then
                    // make sure the connection ends even if the client does not answer.
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, handle.disconnect(
                        russh::Disconnect::ByApplication,
                        "the server's operator closed this session".into(),
                        "en".into(),
                    )).await;
                    match tokio::time::timeout(SHUTDOWN_GRACE, &mut session).await {
                        Ok(ended) => ended,
                        Err(_) => {
                            if let Some(socket) = &socket {
                                let _ = socket.shutdown(std::net::Shutdown::Both);
                            }
                            let _ = tokio::time::timeout(SHUTDOWN_GRACE, session).await;
                            Ok(())
                        }
                    }
                }
                () = stalled => {
                    // Shut down, russh's loop sees the end of its socket and ends the
                    // session, whose end ends its SFTP sessions (`stream.rs`).
                    if let Some(socket) = &socket {
                        let _ = socket.shutdown(std::net::Shutdown::Both);
                    }
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, session).await;
                    Err(russh::Error::InactivityTimeout)
                }
            };
            if let Err(e) = ended {
                if let Some(limit) = crate::defender::ssh_limit(&e) {
                    shared.defender.limit_exceeded(limit);
                }
                tracing::debug!(remote = %remote_addr, error = %e, "sftp connection ended");
            }
        }
        Err(e) => {
            if let Some(limit) = crate::defender::ssh_limit(&e) {
                shared.defender.limit_exceeded(limit);
            }
            tracing::debug!(remote = %remote_addr, error = %e, "ssh handshake failed")
        }
    }
    deadline.ended();
}

/// One SSH connection.
struct SshConnection {
    shared: Arc<SftpShared>,
    logins: Arc<Logins>,
    metrics: Metrics,
    remote_addr: SocketAddr,
    /// Names this connection in the audit trail.
    session_id: String,
    /// This connection in the table the admin API lists.
    tracked: Arc<crate::sessions::OpenSession>,
    user: Option<Arc<User>>,
    /// Closes the connection if no login comes in time.
    login_deadline: Arc<LoginDeadline>,
    /// Where each open channel's data goes, read by its SFTP session once it has one.
    channels: HashMap<ChannelId, Inbox>,
    /// The other end of each channel in `channels` that has no SFTP session yet.
    sftp_streams: HashMap<ChannelId, SftpStream>,
    /// The largest window any channel was given: more unread data is a client overrunning
    /// its window.
    largest_window: u32,
    /// When the SFTP sessions last made progress, for `sftp.idle_timeout`.
    progress: Arc<Progress>,
    /// Holds this connection's place among the sessions sharing the memory budget.
    _counted: OpenSessionGuard,
    _active: GaugeGuard,
}

/// No shell and no commands: say so at once and close, or clients that probe (rclone runs
/// `echo` to detect a shell) wait forever.
fn refuse_channel(channel: ChannelId, session: &mut Session) -> Result<(), russh::Error> {
    session.channel_failure(channel)?;
    session.close(channel)
}

impl SshConnection {
    fn login(
        &mut self,
        outcome: Result<Arc<User>, AuthError>,
        method: &str,
        username: &str,
    ) -> Auth {
        let success = outcome.is_ok();
        self.metrics.login(Protocol::Sftp, success);
        self.metrics.audit.login(&LoginRecord {
            session: &self.session_id,
            protocol: Protocol::Sftp,
            user: username,
            remote_addr: self.remote_addr,
            method,
            success,
        });
        match outcome {
            Ok(user) => {
                tracing::info!(user = %username, protocol = "sftp", method, remote = %self.remote_addr, "login");
                self.tracked.logged_in(&user.name, Protocol::Sftp);
                self.user = Some(user);
                self.login_deadline.logged_in();
                Auth::Accept
            }
            Err(e) => {
                if e.is_bad_credentials() {
                    self.shared.defender.login_failed(self.remote_addr.ip());
                }
                tracing::warn!(user = %username, protocol = "sftp", method, remote = %self.remote_addr, "login failed: {e}");
                Auth::reject()
            }
        }
    }
}

impl russh::server::Handler for SshConnection {
    type Error = russh::Error;

    /// Sizes every channel's window (when opened and each time it is re-opened) to this
    /// session's share of the memory budget now.
    fn adjust_window(&mut self, _channel: ChannelId, _current: u32) -> u32 {
        let budget = self.shared.files.budget();
        let window = window_for(budget.limit(), budget.sessions().get());
        self.largest_window = self.largest_window.max(window);
        window
    }

    /// Queues the client's data for the channel's SFTP session and returns at once: the
    /// connection loop must never wait for a session, or the session's replies, waiting in
    /// turn for window adjustments only that loop reads, never go out.
    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(inbox) = self.channels.get(&channel) else {
            return Ok(());
        };
        if inbox.push(data, self.largest_window).is_err() {
            tracing::warn!(remote = %self.remote_addr, "sftp: the client sent more than its window allowed");
            return Err(russh::Error::Inconsistent);
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        self.sftp_streams.remove(&channel);
        Ok(())
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let outcome = self
            .logins
            .log_in(
                user,
                Secret::Password(password),
                Protocol::Sftp,
                self.remote_addr.ip(),
            )
            .await;
        Ok(self.login(outcome, "password", user))
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Only keys that could succeed are worth a signature; say no early to the rest.
        let worth_it = self.logins.may_accept_key(user, offer.public_key);
        Ok(if worth_it {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let outcome = self
            .logins
            .log_in(
                user,
                Secret::Key(key.public_key),
                Protocol::Sftp,
                self.remote_addr.ip(),
            )
            .await;
        Ok(self.login(outcome, "publickey", user))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let id = channel.id();
        let (write, consumed) = channel.into_handler_data();
        let (inbox, stream) = channel_stream(write, consumed, self.progress.clone());
        self.channels.insert(id, inbox);
        self.sftp_streams.insert(id, stream);
        reply.accept().await;
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Clients such as JSch and sshj wait for the server to close after their EOF.
        if let Some(inbox) = self.channels.get(&channel) {
            inbox.end();
        }
        session.close(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::debug!(remote = %self.remote_addr, command = %String::from_utf8_lossy(data), "exec refused: SFTP only");
        refuse_channel(channel, session)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse_channel(channel, session)
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(user), true) = (self.user.clone(), name == "sftp") else {
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        let Some(stream) = self.sftp_streams.remove(&channel_id) else {
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        session.channel_success(channel_id)?;
        let (shared, remote_addr, session_id) = (
            self.shared.clone(),
            self.remote_addr,
            self.session_id.clone(),
        );
        // The charge may wait for uploads to return parts; the connection loop must not.
        tokio::spawn(async move {
            let charge = shared.files.budget().charge_session(SESSION_CHARGE).await;
            let files = SftpFiles::new(shared, user, remote_addr, session_id, charge);
            let config = russh_sftp::server::Config {
                max_client_packet_len: files::MAX_MESSAGE,
            };
            russh_sftp::server::run_with_config(stream, files, config).await;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_share_an_eighth_of_the_budget_between_their_floor_and_ceiling() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(
            window_for(512 * MIB, 1),
            WINDOW_SIZE,
            "one upload keeps 16 MiB"
        );
        assert_eq!(window_for(1024 * MIB, 4), WINDOW_SIZE);
        assert_eq!(window_for(512 * MIB, 16), 4 * MIB as u32);
        assert_eq!(window_for(512 * MIB, 1000), 67_108, "just above the floor");
        assert_eq!(window_for(512 * MIB, 2000), MIN_WINDOW);
        assert_eq!(window_for(0, 0), MIN_WINDOW);
    }

    #[test]
    fn crowded_sessions_are_told_to_write_32_kib() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(
            advertised_io_length(512 * MIB, 10),
            files::ADVERTISED_IO_LENGTH
        );
        assert_eq!(advertised_io_length(512 * MIB, 1000), 32 * 1024);
    }
}
