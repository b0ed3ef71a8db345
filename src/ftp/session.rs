//! Per-connection state shared by the authenticator and the storage backend: who is
//! connected from where, and whether the control channel is encrypted.

use crate::auth::{Logins, Secret, User};
use crate::defender::LoginDeadline;
use crate::metrics::{Metrics, Protocol};
use async_trait::async_trait;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use unftp_core::auth::{
    AuthenticationError, Authenticator, ChannelEncryptionState, Credentials, Principal, UserDetail,
    UserDetailError, UserDetailProvider,
};

/// One control connection.
#[derive(Debug)]
pub struct Session {
    /// The client's address and port.
    pub remote_addr: SocketAddr,
    /// Names this connection in the audit trail.
    pub id: String,
    tls: AtomicBool,
    /// Who logged in: the authenticator sets it, libunftp's user provider hands it out.
    user: parking_lot::Mutex<Option<Arc<User>>>,
    /// Closes the connection if no login comes in time.
    login_deadline: Arc<LoginDeadline>,
    /// A second handle on the control socket, to see whether the client is still there
    /// before an upload is committed; dropped when the control loop ends.
    control: parking_lot::Mutex<Option<std::net::TcpStream>>,
    /// This connection in the table the admin API lists.
    tracked: Arc<crate::sessions::OpenSession>,
}

impl Session {
    /// A new, not yet logged-in session on `control` (a duplicate of the control socket),
    /// listed as `tracked`.
    pub fn new(
        remote_addr: SocketAddr,
        control: Option<std::net::TcpStream>,
        login_deadline: Arc<LoginDeadline>,
        tracked: Arc<crate::sessions::OpenSession>,
    ) -> Arc<Session> {
        Arc::new(Session {
            remote_addr,
            id: tracked.id.clone(),
            tracked,
            tls: AtomicBool::new(false),
            user: parking_lot::Mutex::new(None),
            login_deadline,
            control: parking_lot::Mutex::new(control),
        })
    }

    /// Says `reply` on a plain control connection and shuts it down (the operator closed the
    /// session): the control loop sees the end of its socket and ends.
    pub fn say_and_shut(&self, reply: &str) {
        use std::io::Write;
        if let Some(control) = self.control.lock().as_ref() {
            // The socket is non-blocking (a duplicate of tokio's): a reply that does not fit
            // in the send buffer is cut short, which is fine for a farewell. Over TLS plain
            // text would only garble the stream: the connection just ends.
            if !self.tls.load(Ordering::Acquire) {
                let _ = (&*control).write(reply.as_bytes());
            }
            let _ = control.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The control loop has ended: the client is gone.
    pub fn control_closed(&self) {
        self.login_deadline.ended();
        *self.control.lock() = None;
    }

    /// Whether the client still wants its upload: the control connection not closed by the
    /// control loop, no end-of-stream or reset on the socket, and no `ABOR` (`abort`). In FTP
    /// stream mode the end of an upload is the data connection closing, which a client that
    /// died mid-transfer does too; its control connection closes alongside, which is what
    /// this sees. The two closes of a killed client arrive microseconds apart in either order,
    /// and a client that cancels may close the data connection just before its `ABOR`, so the
    /// control connection is watched for [`CONTROL_SETTLE`] before the upload counts as
    /// confirmed. Bytes waiting on it prove nothing by themselves: they may be that `ABOR`
    /// (behind Telnet IP/DM, or inside TLS), which the control loop reads and signals; while
    /// they wait unread the commit waits up to [`CONTROL_READ_GRACE`] longer.
    pub async fn control_alive(
        &self,
        abort: Option<&libunftp::TransferAbort>,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + CONTROL_SETTLE;
        loop {
            if abort.is_some_and(libunftp::TransferAbort::is_aborted) {
                return Err("the client aborted the transfer (ABOR)".to_string());
            }
            match self.control_state() {
                ControlState::Gone => {
                    return Err("the control connection closed before the upload was confirmed; the transfer is treated as cut".to_string());
                }
                // Bytes that came within the settle time may be an ABOR the control loop
                // has not read yet (a loaded server schedules it late): they get
                // CONTROL_READ_GRACE more for the loop to read them.
                ControlState::Readable
                    if tokio::time::Instant::now() < deadline + CONTROL_READ_GRACE =>
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                ControlState::Readable | ControlState::Quiet
                    if tokio::time::Instant::now() >= deadline =>
                {
                    return Ok(());
                }
                ControlState::Readable | ControlState::Quiet => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }

    fn control_state(&self) -> ControlState {
        self.control
            .lock()
            .as_ref()
            .map_or(ControlState::Gone, control_state)
    }

    /// `ftps` once the client logged in over TLS, else `ftp`.
    pub fn protocol(&self) -> Protocol {
        if self.tls.load(Ordering::Acquire) {
            Protocol::Ftps
        } else {
            Protocol::Ftp
        }
    }
}

/// How long an FTP upload whose data connection ended waits for a sign that the client is
/// gone before it is committed.
pub const CONTROL_SETTLE: Duration = Duration::from_millis(5);

/// How much longer the commit waits, past [`CONTROL_SETTLE`], while bytes that arrived on the
/// control connection are still unread: a client that pipelines another command costs at
/// most this.
pub const CONTROL_READ_GRACE: Duration = Duration::from_millis(100);

/// What a control socket shows without reading it.
enum ControlState {
    /// The peer closed or reset it.
    Gone,
    /// Bytes wait, and no end after them.
    Readable,
    /// Nothing happened.
    Quiet,
}

/// `POLLRDHUP` sees the peer's close even behind unread bytes, where a peek would only see
/// the bytes.
#[cfg(target_os = "linux")]
fn control_state(socket: &std::net::TcpStream) -> ControlState {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for a descriptor this socket owns, and a zero timeout.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    if ready < 0 || poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
        ControlState::Gone
    } else if poll.revents & libc::POLLIN != 0 {
        ControlState::Readable
    } else {
        ControlState::Quiet
    }
}

#[cfg(not(target_os = "linux"))]
fn control_state(socket: &std::net::TcpStream) -> ControlState {
    let mut byte = [0u8; 1];
    // The socket is non-blocking (tokio set it so for the shared file description).
    match socket.peek(&mut byte) {
        Ok(0) => ControlState::Gone,
        Ok(_) => ControlState::Readable,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => ControlState::Quiet,
        Err(_) => ControlState::Gone,
    }
}

/// The logged-in user as libunftp carries it.
#[derive(Debug, Clone)]
pub struct FtpUser(pub Arc<User>);

impl fmt::Display for FtpUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.name)
    }
}

impl UserDetail for FtpUser {}

/// Checks passwords (`[[users]]`, `[auth.http]`) and counts logins.
#[derive(Debug)]
pub struct SessionAuthenticator {
    /// Who may log in.
    pub logins: Arc<Logins>,
    /// This connection.
    pub session: Arc<Session>,
    /// Login counters.
    pub metrics: MetricsRef,
    /// Counts failed logins towards bans.
    pub defender: Arc<crate::defender::Defender>,
}

/// `Metrics` behind a Debug-able handle.
#[derive(Clone)]
pub struct MetricsRef(pub Metrics);

impl fmt::Debug for MetricsRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

#[async_trait]
impl Authenticator for SessionAuthenticator {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        let tls = creds.command_channel_security == ChannelEncryptionState::Tls;
        let protocol = if tls { Protocol::Ftps } else { Protocol::Ftp };
        let password = creds.password.as_deref().unwrap_or("");
        let result = self
            .logins
            .log_in(
                username,
                Secret::Password(password),
                protocol,
                self.session.remote_addr.ip(),
            )
            .await;
        self.metrics.0.audit.login(&crate::audit::LoginRecord {
            session: &self.session.id,
            protocol,
            user: username,
            remote_addr: self.session.remote_addr,
            method: "password",
            success: result.is_ok(),
        });
        match result {
            Ok(user) => {
                self.session.tls.store(tls, Ordering::Release);
                *self.session.user.lock() = Some(user.clone());
                self.session.tracked.logged_in(&user.name, protocol);
                self.session.login_deadline.logged_in();
                self.metrics.0.login(protocol, true);
                tracing::info!(user = %user.name, protocol = protocol.as_str(), remote = %self.session.remote_addr, "login");
                Ok(Principal {
                    username: user.name.clone(),
                })
            }
            Err(e) => {
                if e.is_bad_credentials() {
                    self.defender.login_failed(self.session.remote_addr.ip());
                }
                self.metrics.0.login(protocol, false);
                tracing::warn!(user = %username, protocol = protocol.as_str(), remote = %self.session.remote_addr, "login failed: {e}");
                Err(AuthenticationError::BadPassword)
            }
        }
    }
}

/// Hands libunftp the user this session's authenticator let in.
#[derive(Debug)]
pub struct UserProvider(pub Arc<Session>);

#[async_trait]
impl UserDetailProvider for UserProvider {
    type User = FtpUser;

    async fn provide_user_detail(&self, principal: &Principal) -> Result<FtpUser, UserDetailError> {
        self.0
            .user
            .lock()
            .clone()
            .filter(|user| user.name == principal.username)
            .map(FtpUser)
            .ok_or_else(|| UserDetailError::UserNotFound {
                username: principal.username.clone(),
            })
    }
}
