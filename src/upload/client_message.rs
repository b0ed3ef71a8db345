//! What a client reads when an upload fails (`FsError` does the same in `namespace`).
//! Reasons that are the client's to act on (permissions, names, limits, the platform's
//! refusal) are said as they are; failures of the server itself (its disk, its database,
//! S3, an internal fault) become a short sentence with what to do, because their details
//! name server paths, hosts and library words. The details go to the log and the audit
//! trail only.

use super::UploadError;
use crate::notify::NotifyError;

/// The completion could not be recorded (event log or outbox: disk full, database error).
pub const NOT_RECORDED: &str = "the server cannot record uploads right now; try again later";
/// S3 failed after the SDK's retries.
pub const STORAGE_UNAVAILABLE: &str = "the storage service failed; try again later";
/// Anything else on the server's side.
pub const SERVER_FAULT: &str = "the server could not complete this request; try again later";

impl UploadError {
    /// The reason to show the client; see the module doc for what is held back.
    pub fn client_message(&self) -> String {
        match self {
            UploadError::Notify(NotifyError::Refused(message)) => message.clone(),
            UploadError::Notify(_) => NOT_RECORDED.into(),
            UploadError::Storage(e) if !e.not_found => STORAGE_UNAVAILABLE.into(),
            UploadError::Internal(_) => SERVER_FAULT.into(),
            other => other.to_string(),
        }
    }

    /// Whether [`UploadError::client_message`] holds details back (they belong in the log).
    pub fn is_server_fault(&self) -> bool {
        self.client_message() != self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_without_paths_or_database_words() {
        let e = UploadError::Notify(NotifyError::Outbox(crate::state::StateError::backend(
            "outbox",
            "/var/lib/ingest-bridge/outbox.sqlite3",
            "database or disk is full",
        )));
        assert_eq!(e.client_message(), NOT_RECORDED);
        assert!(e.to_string().contains("outbox.sqlite3"), "the log keeps it");
        let e = UploadError::Notify(NotifyError::EventLog {
            path: "/data/events.jsonl".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        });
        assert_eq!(e.client_message(), NOT_RECORDED);
    }

    #[test]
    fn the_clients_own_reasons_are_said_as_they_are() {
        let e = UploadError::Refused("Not enough credit".into());
        assert_eq!(e.client_message(), "Not enough credit");
        let e = UploadError::Notify(NotifyError::Refused("Folder closed".into()));
        assert_eq!(e.client_message(), "Folder closed");
        assert!(!UploadError::PermissionDenied.is_server_fault());
        assert!(UploadError::Internal("task panicked".into()).is_server_fault());
    }
}
