//! The SFTP file-system requests of one session, over the shared file operations
//! ([`Files`]). Writing is in `writing`: russh-sftp serves requests strictly one at a time,
//! so a WRITE must not wait for S3, and each file open for writing feeds a background task.

use super::writing::WriteFile;
use crate::auth::{PathError, User, VirtualPath};
use crate::files::{Files, RenameRequest};
use crate::namespace::{DirPages, Entry, FsError};
use crate::protocol::Protocol;
use crate::storage::ObjectReader;
use crate::upload::{SessionCharge, UploadError};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::AsyncReadExt;

/// Names per READDIR reply.
const DIR_BATCH: usize = 256;
/// Largest READ answered at once: the advertised length, so that a DATA reply always fits
/// the 256 KiB message OpenSSH clients accept.
const MAX_READ: u32 = ADVERTISED_IO_LENGTH as u32;
/// Largest SFTP message a client may send (russh-sftp refuses longer ones).
pub const MAX_MESSAGE: u32 = 256 * 1024 + 1024;
/// READ and WRITE lengths advertised through `limits@openssh.com`: OpenSSH's own server
/// value, which leaves room for the message header inside a 256 KiB message. OpenSSH
/// clients (8.7+) then move 255 KiB per request instead of 32 KiB: 8× fewer round trips
/// and replies per GiB.
pub(super) const ADVERTISED_IO_LENGTH: u64 = 256 * 1024 - 1024;
/// What every SFTP session shares.
pub struct SftpShared {
    /// Uploads, listings, renames, deletes and downloads.
    pub files: Files,
    /// The allowlist and the bans.
    pub defender: Arc<crate::defender::Defender>,
}

/// A file open for reading: the GET in progress and where it stands.
pub(super) struct ReadFile {
    path: VirtualPath,
    size: u64,
    position: u64,
    body: Option<ObjectReader>,
}

/// An open directory: names not yet sent, and the pages not yet fetched.
pub(super) struct DirListing {
    pending: VecDeque<File>,
    pages: DirPages,
}

/// What a handle refers to.
pub(super) enum OpenFile {
    Write(WriteFile),
    Read(ReadFile),
    Dir(Box<DirListing>),
}

/// One SFTP session's requests.
pub struct SftpFiles {
    pub(super) shared: Arc<SftpShared>,
    pub(super) user: Arc<User>,
    pub(super) remote_addr: SocketAddr,
    pub(super) session_id: String,
    pub(super) open: HashMap<String, OpenFile>,
    next_handle: u64,
    initialised: bool,
    /// This session's own buffers, charged to the memory budget while it lasts.
    _charge: Option<SessionCharge>,
}

fn status(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

pub(super) fn failure(message: impl Into<String>) -> StatusReply {
    StatusCode::Failure.with_message(message)
}

fn path_reply(e: PathError) -> StatusReply {
    match e {
        PathError::EscapesHome(_) => StatusCode::PermissionDenied.with_message(e.to_string()),
        _ => failure(e.to_string()),
    }
}

fn fs_reply(e: FsError) -> StatusReply {
    match e {
        FsError::NotFound(_) => StatusCode::NoSuchFile.with_message(e.to_string()),
        FsError::PermissionDenied(_) => StatusCode::PermissionDenied.with_message(e.to_string()),
        FsError::Path(p) => path_reply(p),
        FsError::Unsupported(_) => StatusCode::OpUnsupported.with_message(e.to_string()),
        FsError::Exists(_) | FsError::Refused(_) => {
            StatusCode::PermissionDenied.with_message(e.to_string())
        }
        _ => {
            if e.is_server_fault() {
                tracing::warn!(error = %e, "sftp request failed");
            }
            failure(e.client_message())
        }
    }
}

pub(super) fn upload_reply(e: &UploadError) -> StatusReply {
    match e {
        UploadError::PermissionDenied => StatusCode::PermissionDenied.with_message(e.to_string()),
        // The pipeline logged and audited the details; the client gets the short reason.
        _ => failure(e.client_message()),
    }
}

fn attributes(entry: &Entry) -> FileAttributes {
    let mtime = entry
        .modified
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs().min(u32::MAX as u64) as u32)
        .unwrap_or(0);
    FileAttributes {
        size: Some(entry.size),
        uid: Some(0),
        user: None,
        gid: Some(0),
        group: None,
        permissions: Some(if entry.is_dir { 0o040755 } else { 0o100644 }),
        atime: Some(mtime),
        mtime: Some(mtime),
    }
}

impl SftpFiles {
    /// A session of `user`.
    pub fn new(
        shared: Arc<SftpShared>,
        user: Arc<User>,
        remote_addr: SocketAddr,
        session_id: String,
        charge: Option<SessionCharge>,
    ) -> SftpFiles {
        SftpFiles {
            _charge: charge,
            shared,
            user,
            remote_addr,
            session_id,
            open: HashMap::new(),
            next_handle: 0,
            initialised: false,
        }
    }

    /// A client path of this user, normalised and checked (see [`VirtualPath::parse_under`]).
    fn path(&self, path: &str) -> Result<VirtualPath, StatusReply> {
        VirtualPath::parse_under(path, &self.user.home).map_err(path_reply)
    }

    pub(super) fn add(&mut self, file: OpenFile) -> String {
        self.next_handle += 1;
        let handle = format!("h{}", self.next_handle);
        self.open.insert(handle.clone(), file);
        handle
    }

    pub(super) fn invalid_handle(handle: &str) -> StatusReply {
        failure(format!("invalid handle {handle:?}"))
    }

    async fn open_read(&mut self, path: VirtualPath) -> Result<String, StatusReply> {
        let entry = self
            .shared
            .files
            .stat(&self.user, &path)
            .await
            .map_err(fs_reply)?;
        if entry.is_dir {
            return Err(failure(format!("{path} is a directory")));
        }
        if !self.user.may(crate::config::Permission::Download) {
            return Err(StatusCode::PermissionDenied
                .with_message("permission denied: user may not download"));
        }
        Ok(self.add(OpenFile::Read(ReadFile {
            path,
            size: entry.size,
            position: 0,
            body: None,
        })))
    }
}

impl russh_sftp::server::Handler for SftpFiles {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.into()
    }

    async fn init(
        &mut self,
        version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        if self.initialised {
            return Err(StatusCode::ConnectionLost.with_message("duplicate SSH_FXP_INIT"));
        }
        self.initialised = true;
        tracing::debug!(version, user = %self.user.name, "sftp session initialised");
        let mut reply = Version::new();
        reply
            .extensions
            .insert(russh_sftp::extensions::LIMITS.to_owned(), "1".to_owned());
        Ok(reply)
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        _data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        if request != russh_sftp::extensions::LIMITS {
            return Err(StatusCode::OpUnsupported
                .with_message(format!("extension {request} is not supported")));
        }
        let budget = self.shared.files.budget();
        let io_length = super::advertised_io_length(budget.limit(), budget.sessions().get());
        // The reply is four uint64 fields after the id, not a length-prefixed string.
        let mut data = Vec::with_capacity(32);
        for field in [
            u64::from(MAX_MESSAGE),
            io_length,
            io_length,
            0, // open handles: no fixed limit
        ] {
            data.extend_from_slice(&field.to_be_bytes());
        }
        Ok(Packet::ExtendedReply(ExtendedReply { id, data }))
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        _attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let path = self.path(&filename)?;
        let writing = pflags.intersects(
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::APPEND,
        );
        if writing && pflags.contains(OpenFlags::READ) {
            return Err(StatusCode::OpUnsupported
                .with_message("S3 objects are read or written, not both at once"));
        }
        let handle = if writing {
            self.open_write(path, pflags).await?
        } else {
            self.open_read(path).await?
        };
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.open.remove(&handle) {
            Some(OpenFile::Write(file)) => self.finish_write(file).await.map(|()| status(id)),
            Some(_) => Ok(status(id)),
            None => Err(Self::invalid_handle(&handle)),
        }
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        self.write_at(&handle, offset, data).await?;
        Ok(status(id))
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let files = self.shared.files.clone();
        let user = self.user.clone();
        let Some(OpenFile::Read(file)) = self.open.get_mut(&handle) else {
            return Err(Self::invalid_handle(&handle));
        };
        if offset >= file.size {
            return Err(StatusCode::Eof.into());
        }
        if file.body.is_none() || offset != file.position {
            let body = files
                .read(&user, &file.path, offset)
                .await
                .map_err(fs_reply)?;
            file.body = Some(body);
            file.position = offset;
        }
        let want = len.min(MAX_READ) as usize;
        let mut data = vec![0u8; want];
        let mut filled = 0;
        if let Some(body) = file.body.as_mut() {
            while filled < want {
                match body.read(&mut data[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => return Err(failure(format!("reading from S3 failed: {e}"))),
                }
            }
        }
        if filled == 0 {
            return Err(StatusCode::Eof.into());
        }
        data.truncate(filled);
        file.position += filled as u64;
        Ok(Data { id, data })
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.stat(id, path).await
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let path = self.path(&path)?;
        let entry = self
            .shared
            .files
            .stat(&self.user, &path)
            .await
            .map_err(fs_reply)?;
        Ok(Attrs {
            id,
            attrs: attributes(&entry),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let entry = |size, is_dir| Entry {
            name: String::new(),
            is_dir,
            size,
            modified: SystemTime::now(),
        };
        let attrs = match self.open.get(&handle) {
            Some(OpenFile::Write(f)) => attributes(&entry(f.written, false)),
            Some(OpenFile::Read(f)) => attributes(&entry(f.size, false)),
            Some(OpenFile::Dir(_)) => attributes(&entry(0, true)),
            None => return Err(Self::invalid_handle(&handle)),
        };
        Ok(Attrs { id, attrs })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        // Times and modes have no place on S3 objects; clients (`put -p`) expect success.
        self.path(&path)?;
        Ok(status(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        if self.open.contains_key(&handle) {
            Ok(status(id))
        } else {
            Err(Self::invalid_handle(&handle))
        }
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let path = self.path(&path)?;
        let pages = self
            .shared
            .files
            .open_dir(&self.user, &path)
            .await
            .map_err(fs_reply)?;
        let pending = [".", ".."]
            .into_iter()
            .map(|name| {
                File::new(
                    name,
                    attributes(&Entry {
                        name: name.into(),
                        is_dir: true,
                        size: 0,
                        modified: UNIX_EPOCH,
                    }),
                )
            })
            .collect();
        let handle = self.add(OpenFile::Dir(Box::new(DirListing { pending, pages })));
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(OpenFile::Dir(listing)) = self.open.get_mut(&handle) else {
            return Err(Self::invalid_handle(&handle));
        };
        // One ListObjectsV2 page per READDIR at most (pages of only filtered names aside),
        // so no request waits on a whole large directory.
        while listing.pending.is_empty() {
            match listing.pages.next_page().await.map_err(fs_reply)? {
                Some(entries) => listing.pending.extend(
                    entries
                        .iter()
                        .map(|e| File::new(e.name.clone(), attributes(e))),
                ),
                None => return Err(StatusCode::Eof.into()),
            }
        }
        let take = listing.pending.len().min(DIR_BATCH);
        let files = listing.pending.drain(..take).collect();
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let path = self.path(&filename)?;
        self.shared
            .files
            .delete(&self.user, &path)
            .await
            .map_err(fs_reply)?;
        Ok(status(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let path = self.path(&path)?;
        self.shared
            .files
            .mkdir(&self.user, &path)
            .await
            .map_err(fs_reply)?;
        Ok(status(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let path = self.path(&path)?;
        self.shared
            .files
            .rmdir(&self.user, &path)
            .await
            .map_err(fs_reply)?;
        Ok(status(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let path = self.path(&path)?;
        Ok(Name {
            id,
            files: vec![File::dummy(path.to_string())],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        let request = RenameRequest {
            user: self.user.clone(),
            protocol: Protocol::Sftp,
            remote_addr: self.remote_addr,
            from: self.path(&oldpath)?,
            to: self.path(&newpath)?,
        };
        self.shared.files.rename(request).await.map_err(fs_reply)?;
        Ok(status(id))
    }
}
