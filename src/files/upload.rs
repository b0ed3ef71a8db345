//! An upload as front-ends hold it: the pipeline's [`Upload`] plus what a finished one
//! means for the namespace.

use crate::namespace::Namespace;
use crate::notify::CompletedUpload;
use crate::upload::{CommitCheck, Upload, UploadError};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncRead;

/// One upload in progress. Finish it with [`FileUpload::finish`]; dropping it aborts.
pub struct FileUpload {
    upload: Upload,
    namespace: Arc<Namespace>,
}

impl FileUpload {
    /// Wraps a started upload.
    pub(super) fn new(upload: Upload, namespace: Arc<Namespace>) -> FileUpload {
        FileUpload { upload, namespace }
    }

    /// Runs `check` right before the object is committed; an error there cuts the upload.
    pub fn set_commit_check(&mut self, check: CommitCheck) {
        self.upload.set_commit_check(check);
    }

    /// Appends bytes; waits while the memory budget is spent or parts are in flight.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), UploadError> {
        self.upload.write(data).await
    }

    /// Reads `reader` to its end; a read silent for `stall_timeout` fails the upload.
    pub async fn fill_from<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        stall_timeout: Duration,
    ) -> Result<u64, UploadError> {
        self.upload.fill_from(reader, stall_timeout).await
    }

    /// Resolves when a resume from another session takes this upload over.
    pub fn preempted(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.upload.preempted()
    }

    /// The error an upload ends with when a resume from another session takes it over.
    pub fn taken_over() -> UploadError {
        Upload::taken_over()
    }

    /// Ends the upload without success (a cut transfer keeps its whole parts for a resume).
    pub async fn abort(self, reason: &UploadError) {
        self.upload.abort(reason).await;
    }

    /// Completes the object and queues its completion; the directory it landed in is then
    /// real in S3, so the namespace stops remembering it as made by a client.
    pub async fn finish(self) -> Result<CompletedUpload, UploadError> {
        let done = self.upload.finish().await?;
        self.namespace.object_written(&done.key);
        Ok(done)
    }
}
