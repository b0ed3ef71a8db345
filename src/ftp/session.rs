//! Per-connection state shared by the authenticator and the storage backend: who is
//! connected from where, and whether the control channel is encrypted.

use crate::auth::{User, UserDirectory};
use crate::metrics::{Metrics, Protocol};
use async_trait::async_trait;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
}

impl Session {
    /// A new, not yet logged-in session.
    pub fn new(remote_addr: SocketAddr) -> Arc<Session> {
        Arc::new(Session {
            remote_addr,
            id: crate::audit::new_session_id(),
            tls: AtomicBool::new(false),
        })
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

/// The logged-in user as libunftp carries it.
#[derive(Debug, Clone)]
pub struct FtpUser(pub Arc<User>);

impl fmt::Display for FtpUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.name)
    }
}

impl UserDetail for FtpUser {}

/// Checks passwords against the user directory and counts logins.
#[derive(Debug)]
pub struct SessionAuthenticator {
    /// Configured users.
    pub users: Arc<UserDirectory>,
    /// This connection.
    pub session: Arc<Session>,
    /// Login counters.
    pub metrics: MetricsRef,
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
        let result = self.users.authenticate_password(username, password).await;
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
                self.metrics.0.login(protocol, true);
                tracing::info!(user = %user.name, protocol = protocol.as_str(), remote = %self.session.remote_addr, "login");
                Ok(Principal {
                    username: user.name.clone(),
                })
            }
            Err(e) => {
                self.metrics.0.login(protocol, false);
                tracing::warn!(user = %username, protocol = protocol.as_str(), remote = %self.session.remote_addr, "login failed: {e}");
                Err(AuthenticationError::BadPassword)
            }
        }
    }
}

/// Turns an authenticated principal into the configured user.
#[derive(Debug)]
pub struct UserProvider(pub Arc<UserDirectory>);

#[async_trait]
impl UserDetailProvider for UserProvider {
    type User = FtpUser;

    async fn provide_user_detail(&self, principal: &Principal) -> Result<FtpUser, UserDetailError> {
        self.0
            .get(&principal.username)
            .map(FtpUser)
            .ok_or_else(|| UserDetailError::UserNotFound {
                username: principal.username.clone(),
            })
    }
}
