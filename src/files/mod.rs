//! The one door front-ends use for file operations: FTP (`ftp::backend`) and SFTP
//! (`sftp::files`) make the same calls here and know nothing of the bookkeeping behind
//! them — which calls go to the upload [`Pipeline`] and which to the [`Namespace`], that a
//! finished upload makes its directory real, that deleting a cut upload gives up its kept
//! parts, that a rename may be when an upload becomes final.
//!
//! This module owns both sides, so neither knows the other: the namespace shows cut uploads
//! (reading the partials store), the pipeline never sees the namespace.

mod rename;
mod upload;

pub use rename::RenameRequest;
pub use upload::FileUpload;

use crate::auth::{User, VirtualPath};
use crate::namespace::{DirPages, Entry, FsError, Namespace};
use crate::sessions::SessionTable;
use crate::storage::ObjectReader;
use crate::upload::{MemoryBudget, Pipeline, UploadError, UploadRequest};
use std::sync::Arc;

/// File operations for every front-end; cheap to clone.
#[derive(Clone)]
pub struct Files {
    pipeline: Pipeline,
    namespace: Arc<Namespace>,
    sessions: Arc<SessionTable>,
}

impl Files {
    /// Uploads through `pipeline`, everything else through `namespace`.
    pub fn new(pipeline: Pipeline, namespace: Arc<Namespace>) -> Files {
        Files {
            pipeline,
            namespace,
            sessions: Arc::new(SessionTable::default()),
        }
    }

    /// The connections open in this process.
    pub fn sessions(&self) -> &Arc<SessionTable> {
        &self.sessions
    }

    /// Closes connection `id` for the operator: its uploads end first (cut, kept for a
    /// resume when resuming is on, saying the operator closed the session), then its
    /// front-end ends the connection. False when no such connection is open here.
    pub fn close_session(&self, id: &str) -> bool {
        let uploads = self.pipeline.close_uploads_of(id);
        let found = self.sessions.close(id);
        tracing::info!(
            session = id,
            uploads,
            found,
            "session closed by the operator"
        );
        found
    }

    /// The memory budget uploads and sessions share (for buffer sizes and limits).
    pub fn budget(&self) -> &MemoryBudget {
        self.pipeline.budget()
    }

    /// Starts an upload of `req.path`, continuing its cut upload at `offset` (FTP REST or
    /// APPE, an SFTP open without truncate); 0 starts afresh.
    pub async fn upload(&self, req: UploadRequest, offset: u64) -> Result<FileUpload, UploadError> {
        let upload = self.pipeline.resume(req, offset).await?;
        Ok(FileUpload::new(upload))
    }

    /// The bytes kept of the cut upload of `path` its owner may resume, if one is kept.
    pub async fn kept_bytes(&self, user: &User, path: &VirtualPath) -> Option<u64> {
        self.namespace
            .cut_upload(user, path)
            .await
            .map(|cut| cut.durable_bytes)
    }

    /// STAT: a file or a directory; a cut upload shows its owner the bytes kept.
    pub async fn stat(&self, user: &User, path: &VirtualPath) -> Result<Entry, FsError> {
        self.namespace.stat(user, path).await
    }

    /// LIST: a directory's entries in name order (or the file itself).
    pub async fn list(&self, user: &User, path: &VirtualPath) -> Result<Vec<Entry>, FsError> {
        self.namespace.list(user, path).await
    }

    /// A directory read one page at a time (SFTP READDIR).
    pub async fn open_dir(&self, user: &User, path: &VirtualPath) -> Result<DirPages, FsError> {
        self.namespace.open_dir(user, path).await
    }

    /// CWD: succeeds for directories only.
    pub async fn enter(&self, user: &User, path: &VirtualPath) -> Result<(), FsError> {
        self.namespace.enter(user, path).await
    }

    /// MKD.
    pub async fn mkdir(&self, user: &User, path: &VirtualPath) -> Result<(), FsError> {
        self.namespace.mkdir(user, path).await
    }

    /// RMD: only empty directories.
    pub async fn rmdir(&self, user: &User, path: &VirtualPath) -> Result<(), FsError> {
        self.namespace.rmdir(user, path).await
    }

    /// RETR / SFTP READ: the file's bytes from `offset`.
    pub async fn read(
        &self,
        user: &User,
        path: &VirtualPath,
        offset: u64,
    ) -> Result<ObjectReader, FsError> {
        self.namespace.read(user, path, offset).await
    }
}
