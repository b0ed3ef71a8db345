//! One upload in progress: its state, what front-ends may ask of it, and the clean-up when
//! a session drops it unfinished.

use super::multipart::{Multipart, end};
use super::pipeline::{CommitCheck, Inner, UploadRequest};
use super::registry::Registration;
use super::write::Buffer;
use super::{QuotaTicket, UploadError};
use crate::metrics::{GaugeGuard, UploadOutcome};
use sha2::Sha256;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

/// One upload in progress. Finish it with [`Upload::finish`]; dropping it aborts.
pub struct Upload {
    pub(super) pipeline: Arc<Inner>,
    pub(super) req: UploadRequest,
    /// The completion id, fixed at the start so `create` can use it.
    pub(super) id: String,
    /// Fields the `create` step extracted, for the later steps.
    pub(super) fields: serde_json::Map<String, serde_json::Value>,
    pub(super) key: String,
    pub(super) started_at: SystemTime,
    pub(super) started: Instant,
    pub(super) hasher: Sha256,
    pub(super) size: u64,
    pub(super) buffer: Option<Buffer>,
    pub(super) multipart: Option<Multipart>,
    pub(super) content_type: Option<String>,
    pub(super) open: bool,
    /// Under a temporary name: no completion until renamed.
    pub(super) temp: bool,
    pub(super) commit_check: Option<CommitCheck>,
    /// In the registry until the upload (and its cleanup) ends.
    pub(super) registration: Option<Registration>,
    /// The hold on the user's quota, if one applies.
    pub(super) quota: Option<QuotaTicket>,
    /// Holds `uploads_active` up until the upload is dropped.
    pub(super) _active_gauge: GaugeGuard,
}

impl Upload {
    /// The object key this upload writes.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The S3 multipart upload id, once the upload has needed one.
    pub fn multipart_id(&self) -> Option<&str> {
        self.multipart.as_ref().map(|m| m.upload_id.as_str())
    }

    /// Runs `check` right before the object is committed; an error there cuts the upload.
    pub fn set_commit_check(&mut self, check: CommitCheck) {
        self.commit_check = Some(check);
    }

    /// Resolves when a resume from another session takes this upload over.
    pub fn preempted(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let token = self
            .registration
            .as_ref()
            .map(|r| r.preempt.clone())
            .unwrap_or_default();
        async move { token.cancelled().await }
    }

    /// The error an upload ends with when a resume from another session takes it over.
    pub fn taken_over() -> UploadError {
        UploadError::Client(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "another session resumed this upload",
        ))
    }

    /// Why the upload was asked to stop: the operator closed its session, or a resume from
    /// another session took it over.
    pub fn preempted_error(&self) -> UploadError {
        if self.registration.as_ref().is_some_and(|r| r.live.closed()) {
            return UploadError::Client(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the server's operator closed this session",
            ));
        }
        Self::taken_over()
    }

    pub(super) fn is_preempted(&self) -> bool {
        self.registration
            .as_ref()
            .is_some_and(|r| r.preempt.is_cancelled())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Neither finished nor aborted: the session vanished. Clean up in the background.
        if let Some(ending) = self.close(
            UploadOutcome::Aborted,
            &"the client session ended mid-upload",
            true,
        ) && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(end(
                self.pipeline.clone(),
                self.key.clone(),
                ending,
                self.registration.take(),
            ));
        }
        if self.pipeline.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.pipeline.idle.notify_waiters();
        }
    }
}
