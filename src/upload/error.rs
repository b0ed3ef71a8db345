//! Why an upload did not complete, and what each reason counts as (metrics outcome, and
//! whether the client may resume).

use super::QuotaExceeded;
use crate::config::format_size;
use crate::metrics::UploadOutcome;
use crate::notify::NotifyError;
use crate::storage::StorageError;
use std::time::Duration;

/// Why an upload did not complete. Every variant leaves no object and no completion.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The user lacks the `upload` permission.
    #[error("permission denied: user may not upload")]
    PermissionDenied,
    /// The path names the home directory itself.
    #[error("cannot upload to a directory")]
    IsDirectory,
    /// The transfer exceeds what S3 (10,000 parts, 5 TiB) and the part sizes allow.
    #[error("file exceeds the largest object these settings allow ({})", format_size(*.limit))]
    TooLarge {
        /// The largest allowed object.
        limit: u64,
    },
    /// The file passed the user's `max_file_size`.
    #[error("file is larger than this account may upload ({}, max_file_size)", format_size(*.limit))]
    OverFileSizeLimit {
        /// The user's limit.
        limit: u64,
    },
    /// The user's `quota_bytes` or `quota_files` is reached.
    #[error(transparent)]
    OverQuota(#[from] QuotaExceeded),
    /// Reading from the client failed (reset, broken connection).
    #[error("connection to the client failed: {0}")]
    Client(std::io::Error),
    /// The client sent nothing for too long.
    #[error("no data from the client for {0:?}")]
    Stalled(Duration),
    /// S3 refused or failed after the SDK's retries.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The completion could not be queued.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// The ingest API refused the upload (`create` step, or `complete` in sync mode); the
    /// client hears the API's message.
    #[error("{0}")]
    Refused(String),
    /// The server is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The server is draining before a restart: running uploads finish, new ones go elsewhere.
    #[error(
        "this server is restarting and takes no new uploads; upload again in a moment (another server will take it)"
    )]
    Draining,
    /// A resume cannot continue at the offset the client asked for.
    #[error("{0}")]
    Resume(String),
    /// The user may not upload files of this type (`allowed_extensions`).
    #[error("{name}: files of this type are not accepted here (allowed: {allowed})")]
    NameNotAccepted {
        /// The file name.
        name: String,
        /// The allowed endings.
        allowed: String,
    },
    /// The file exists and `upload.overwrite` is false.
    #[error("{0} exists and this server does not replace files (upload.overwrite = false)")]
    Exists(String),
    /// This replica can no longer show that it alone writes the upload (its lease in the
    /// shared state lapsed or another replica took the upload): it stops without touching
    /// the multipart upload, which the new owner or the sweep keeps for a resume.
    #[error(
        "the server lost track of this upload (its shared state did not answer in time); resume it in a moment or upload it again"
    )]
    LeaseLost,
    /// An internal task died.
    #[error("internal error: {0}")]
    Internal(String),
}

impl UploadError {
    /// The metrics outcome this error counts as.
    pub fn outcome(&self) -> UploadOutcome {
        match self {
            UploadError::PermissionDenied
            | UploadError::IsDirectory
            | UploadError::TooLarge { .. }
            | UploadError::OverFileSizeLimit { .. }
            | UploadError::OverQuota(_)
            | UploadError::Resume(_)
            | UploadError::Exists(_)
            | UploadError::NameNotAccepted { .. }
            | UploadError::Refused(_)
            | UploadError::Draining => UploadOutcome::Rejected,
            UploadError::Client(_) | UploadError::Stalled(_) | UploadError::ShuttingDown => {
                UploadOutcome::Aborted
            }
            UploadError::Storage(_)
            | UploadError::Notify(_)
            | UploadError::LeaseLost
            | UploadError::Internal(_) => UploadOutcome::Failed,
        }
    }

    /// Whether the client may come back for the bytes already stored: the transfer was cut,
    /// not refused.
    pub(super) fn keeps_partial(&self) -> bool {
        matches!(
            self,
            UploadError::Client(_) | UploadError::Stalled(_) | UploadError::ShuttingDown
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")
    }

    #[test]
    fn refusals_count_as_rejected_and_keep_nothing() {
        for e in [
            UploadError::PermissionDenied,
            UploadError::IsDirectory,
            UploadError::TooLarge { limit: 1 },
            UploadError::OverFileSizeLimit { limit: 1 },
            UploadError::Resume("no".into()),
            UploadError::Exists("a".into()),
            UploadError::Refused("no".into()),
            UploadError::Draining,
        ] {
            assert_eq!(e.outcome(), UploadOutcome::Rejected, "{e}");
            assert!(!e.keeps_partial(), "{e}");
        }
    }

    #[test]
    fn cut_transfers_count_as_aborted_and_keep_their_parts() {
        for e in [
            UploadError::Client(io()),
            UploadError::Stalled(Duration::from_secs(1)),
            UploadError::ShuttingDown,
        ] {
            assert_eq!(e.outcome(), UploadOutcome::Aborted, "{e}");
            assert!(e.keeps_partial(), "{e}");
        }
    }

    #[test]
    fn server_failures_count_as_failed_and_keep_nothing() {
        let storage = StorageError {
            operation: "UploadPart",
            not_found: false,
            message: "boom".into(),
        };
        for e in [
            UploadError::Storage(storage),
            UploadError::Notify(NotifyError::Client("down".into())),
            UploadError::Internal("panic".into()),
            UploadError::LeaseLost,
        ] {
            assert_eq!(e.outcome(), UploadOutcome::Failed, "{e}");
            assert!(!e.keeps_partial(), "{e}");
        }
    }
}
