//! An upload as front-ends hold it: the pipeline's [`Upload`], behind the files facade.

use crate::notify::CompletedUpload;
use crate::upload::{CommitCheck, Upload, UploadError};
use std::time::Duration;
use tokio::io::AsyncRead;

/// One upload in progress. Finish it with [`FileUpload::finish`]; dropping it aborts.
pub struct FileUpload {
    upload: Upload,
}

impl FileUpload {
    /// Wraps a started upload.
    pub(super) fn new(upload: Upload) -> FileUpload {
        FileUpload { upload }
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

    /// The error an upload ends with when it was asked to stop: its session closed by the
    /// operator, or a resume from another session took it over.
    pub fn preempted_error(&self) -> UploadError {
        self.upload.preempted_error()
    }

    /// Ends the upload without success (a cut transfer keeps its whole parts for a resume).
    pub async fn abort(self, reason: &UploadError) {
        self.upload.abort(reason).await;
    }

    /// Completes the object and queues its completion.
    pub async fn finish(self) -> Result<CompletedUpload, UploadError> {
        self.upload.finish().await
    }
}
