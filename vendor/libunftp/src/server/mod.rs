//! Contains the [`Server`](crate::Server) struct that is used to configure and control an FTP server instance.

mod chancomms;
pub(crate) mod controlchan;
mod datachan;
mod failed_logins;
pub(crate) mod ftpserver;
mod password;
#[cfg(feature = "proxy_protocol")]
mod proxy_protocol;
mod session;
pub(crate) mod shutdown;
mod switchboard;
mod tls;
// ingest-bridge patch: ABOR during STOR/APPE aborts the upload (see the module).
pub(crate) mod transfer_abort;

pub(crate) use chancomms::ControlChanMsg;
pub(crate) use controlchan::ControlChanMiddleware;
pub(crate) use controlchan::Event;
pub(crate) use controlchan::command::Command;
pub(crate) use controlchan::reply::{Reply, ReplyCode};
pub(crate) use controlchan::{ControlChanError, ControlChanErrorKind};

/// See [`crate::idle_session_timeouts`].
pub(crate) static IDLE_SESSION_TIMEOUTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// See [`crate::command_lines_too_long`].
pub(crate) static COMMAND_LINES_TOO_LONG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

use session::{Session, SessionState};
