//! libunftp's `StorageBackend` over the shared file operations: translates FTP verbs into
//! [`Files`] calls and STOR into one streaming [`FileUpload`](crate::files::FileUpload).

use super::session::{FtpUser, Session};
use crate::auth::{PathError, VirtualPath};
use crate::files::{Files, RenameRequest};
use crate::namespace::{Entry, FsError};
use crate::upload::{UploadError, UploadRequest};
use async_trait::async_trait;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use sync_wrapper::SyncWrapper;
use tokio::io::{AsyncRead, ReadBuf};
use unftp_core::storage::{Error, ErrorKind, Fileinfo, Metadata, Result, StorageBackend};

/// What every FTP session shares.
pub struct FtpShared {
    /// Uploads, listings, renames, deletes and downloads.
    pub files: Files,
    /// A data connection silent this long fails its transfer.
    pub data_timeout: Duration,
    /// The allowlist and the bans.
    pub defender: Arc<crate::defender::Defender>,
    /// The TLS config for explicit FTPS (certificates swap under it on reload).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// One session's view of S3.
pub struct S3Backend {
    /// Shared services.
    pub shared: Arc<FtpShared>,
    /// This connection.
    pub session: Arc<Session>,
}

impl Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("session", &self.session)
            .finish()
    }
}

/// An [`Entry`] as libunftp lists it.
#[derive(Debug, Clone)]
pub struct EntryMeta(Entry);

impl Metadata for EntryMeta {
    fn len(&self) -> u64 {
        self.0.size
    }
    fn is_dir(&self) -> bool {
        self.0.is_dir
    }
    fn is_file(&self) -> bool {
        !self.0.is_dir
    }
    fn is_symlink(&self) -> bool {
        false
    }
    fn modified(&self) -> Result<SystemTime> {
        Ok(self.0.modified)
    }
    fn gid(&self) -> u32 {
        0
    }
    fn uid(&self) -> u32 {
        0
    }
    fn permissions(&self) -> unftp_core::storage::Permissions {
        unftp_core::storage::Permissions(if self.0.is_dir { 0o755 } else { 0o644 })
    }
}

fn virtual_path(user: &FtpUser, path: &Path) -> Result<VirtualPath> {
    let text = path.to_str().ok_or_else(|| {
        Error::new(
            ErrorKind::FileNameNotAllowedError,
            "path is not valid UTF-8",
        )
    })?;
    VirtualPath::parse_under(text, &user.0.home).map_err(path_error)
}

fn path_error(e: PathError) -> Error {
    match e {
        PathError::EscapesHome(_) => Error::new(ErrorKind::PermissionDenied, e),
        PathError::ControlCharacter(_) | PathError::NotUtf8(_) | PathError::TooLong(_) => {
            Error::new(ErrorKind::FileNameNotAllowedError, e)
        }
    }
}

fn fs_error(e: FsError) -> Error {
    let kind = match &e {
        FsError::NotFound(_) | FsError::IsDirectory(_) | FsError::Unsupported(_) => {
            ErrorKind::PermanentFileNotAvailable
        }
        // PermissionDenied replies 550 with the message (our libunftp patch).
        FsError::PermissionDenied(_)
        | FsError::Exists(_)
        | FsError::DirectoryExists(_)
        | FsError::Refused(_) => ErrorKind::PermissionDenied,
        FsError::Path(p) => return path_error(p.clone()),
        FsError::NotEmpty(_) => ErrorKind::PermanentDirectoryNotEmpty,
        FsError::Storage(_) | FsError::State(_) | FsError::ReadBack(_) | FsError::Unrecorded(_) => {
            ErrorKind::LocalError
        }
    };
    if e.is_server_fault() {
        tracing::warn!(error = %e, "ftp request failed");
        return Error::new(kind, e.client_message());
    }
    tracing::debug!(error = %e, "ftp request refused");
    Error::new(kind, e)
}

fn upload_error(e: UploadError) -> Error {
    let kind = match &e {
        UploadError::PermissionDenied
        | UploadError::Refused(_)
        | UploadError::Resume(_)
        | UploadError::Exists(_)
        | UploadError::NameNotAccepted { .. } => ErrorKind::PermissionDenied,
        UploadError::IsDirectory => ErrorKind::PermanentFileNotAvailable,
        UploadError::TooLarge { .. }
        | UploadError::OverFileSizeLimit { .. }
        | UploadError::OverQuota(_) => ErrorKind::ExceededStorageAllocationError,
        UploadError::Client(_) | UploadError::Stalled(_) => ErrorKind::ConnectionClosed,
        UploadError::Storage(_)
        | UploadError::Notify(_)
        | UploadError::Internal(_)
        | UploadError::LeaseLost
        | UploadError::ShuttingDown
        | UploadError::Draining => ErrorKind::LocalError,
    };
    // The pipeline logged and audited the details; the client gets the short reason.
    if e.is_server_fault() {
        return Error::new(kind, e.client_message());
    }
    Error::new(kind, e)
}

/// Makes a `Send` reader `Sync`, as libunftp's `get` requires, without locking.
struct SyncReader<R>(SyncWrapper<R>);

impl<R: AsyncRead + Unpin> AsyncRead for SyncReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(self.get_mut().0.get_mut()).poll_read(cx, buf)
    }
}

#[async_trait]
impl StorageBackend<FtpUser> for S3Backend {
    type Metadata = EntryMeta;

    fn name(&self) -> &str {
        "s3"
    }

    fn supported_features(&self) -> u32 {
        // REST + STOR (and APPE) continue a cut upload at the bytes kept.
        unftp_core::storage::FEATURE_RESTART
    }

    async fn metadata<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
    ) -> Result<EntryMeta> {
        let path = virtual_path(user, path.as_ref())?;
        self.shared
            .files
            .stat(&user.0, &path)
            .await
            .map(EntryMeta)
            .map_err(fs_error)
    }

    async fn list<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
    ) -> Result<Vec<Fileinfo<PathBuf, EntryMeta>>> {
        let path = virtual_path(user, path.as_ref())?;
        let entries = self
            .shared
            .files
            .list(&user.0, &path)
            .await
            .map_err(fs_error)?;
        Ok(entries
            .into_iter()
            .map(|e| Fileinfo {
                path: PathBuf::from(&e.name),
                metadata: EntryMeta(e),
            })
            .collect())
    }

    async fn get<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
        start_pos: u64,
    ) -> Result<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        let path = virtual_path(user, path.as_ref())?;
        let body = self
            .shared
            .files
            .read(&user.0, &path, start_pos)
            .await
            .map_err(fs_error)?;
        Ok(Box::new(SyncReader(SyncWrapper::new(body))))
    }

    async fn put<P: AsRef<Path> + Send + Debug, R: AsyncRead + Send + Sync + Unpin + 'static>(
        &self,
        user: &FtpUser,
        mut input: R,
        path: P,
        start_pos: u64,
    ) -> Result<u64> {
        let path = virtual_path(user, path.as_ref())?;
        let request = UploadRequest {
            user: user.0.clone(),
            protocol: self.session.protocol(),
            path,
            remote_addr: self.session.remote_addr,
            session_id: self.session.id.clone(),
        };
        // REST n + STOR, and APPE (libunftp passes SIZE's answer), continue a cut upload.
        let mut upload = self
            .shared
            .files
            .upload(request, start_pos)
            .await
            .map_err(upload_error)?;
        let session = self.session.clone();
        // libunftp's ABOR signal for this transfer (our patch): an ABOR that comes just after
        // the data connection ended must still cut the upload.
        let abort = libunftp::transfer_abort();
        upload.set_commit_check(Arc::new(move || {
            let (session, abort) = (session.clone(), abort.clone());
            Box::pin(async move { session.control_alive(abort.as_ref()).await })
        }));
        if let Err(e) = upload.fill_from(&mut input, self.shared.data_timeout).await {
            upload.abort(&e).await;
            return Err(upload_error(e));
        }
        let done = upload.finish().await.map_err(upload_error)?;
        Ok(done.size)
    }

    async fn del<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let path = virtual_path(user, path.as_ref())?;
        self.shared
            .files
            .delete(&user.0, &path)
            .await
            .map_err(fs_error)
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let path = virtual_path(user, path.as_ref())?;
        self.shared
            .files
            .mkdir(&user.0, &path)
            .await
            .map_err(fs_error)
    }

    async fn rename<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        from: P,
        to: P,
    ) -> Result<()> {
        let request = RenameRequest {
            user: user.0.clone(),
            protocol: self.session.protocol(),
            remote_addr: self.session.remote_addr,
            from: virtual_path(user, from.as_ref())?,
            to: virtual_path(user, to.as_ref())?,
        };
        self.shared.files.rename(request).await.map_err(fs_error)
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let path = virtual_path(user, path.as_ref())?;
        self.shared
            .files
            .rmdir(&user.0, &path)
            .await
            .map_err(fs_error)
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let path = virtual_path(user, path.as_ref())?;
        self.shared
            .files
            .enter(&user.0, &path)
            .await
            .map_err(fs_error)
    }
}
