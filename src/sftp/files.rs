//! The SFTP file-system requests of one session, over the shared namespace and upload
//! pipeline.
//!
//! russh-sftp serves requests strictly one at a time, so a WRITE must not wait for S3: each
//! file open for writing feeds a background task that owns the [`Upload`]. WRITE replies as
//! soon as its bytes are queued (the queue is short, so a slow store still slows the client);
//! CLOSE replies only after the object is complete and its completion queued. A session that
//! ends without CLOSE drops its queues, and the tasks abort their uploads.

use crate::auth::{PathError, User, VirtualPath};
use crate::metrics::Protocol;
use crate::namespace::{DirPages, Entry, FsError, Namespace};
use crate::notify::CompletedUpload;
use crate::upload::{
    Pipeline, RenameRequest, Reservation, SessionCharge, Upload, UploadError, UploadRequest,
};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};

/// Chunks queued between a session and its upload task. Each chunk (up to 255 KiB) is
/// outside the memory budget, and a session whose upload waits for the budget holds the
/// queue full: 1,000 uploads at once peaked at 1,367 MiB with 4, 1,271 MiB with 1
/// (`bench/scale.sh`), at the same single-upload throughput.
const WRITE_QUEUE: usize = 1;
/// Out-of-order bytes one file may hold while waiting for the gap before them.
const REORDER_LIMIT: u64 = 8 * 1024 * 1024;
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
    /// Uploads.
    pub pipeline: Pipeline,
    /// Everything but uploads.
    pub namespace: Arc<Namespace>,
    /// The allowlist and the bans.
    pub defender: Arc<crate::defender::Defender>,
}

enum Chunk {
    Data(Vec<u8>),
    Finish(oneshot::Sender<Result<CompletedUpload, UploadError>>),
}

struct WriteFile {
    queue: mpsc::Sender<Chunk>,
    /// Bytes handed to the upload, in order.
    written: u64,
    /// Writes that arrived ahead of `written`, with the budget they hold.
    ahead: BTreeMap<u64, (Vec<u8>, Reservation)>,
    ahead_bytes: u64,
    /// Why the upload failed, once it has.
    failed: Option<String>,
    /// Opened with APPEND onto `base` kept bytes: whether the client's offsets count from
    /// the file's start or (as APPEND allows) from `base`, decided by its first write.
    append: Option<Append>,
}

/// See `WriteFile::append`.
#[derive(Clone, Copy)]
enum Append {
    /// No write yet; `base` bytes are kept.
    Undecided { base: u64 },
    /// Offsets are shifted by this much.
    Shift(u64),
}

struct ReadFile {
    path: VirtualPath,
    size: u64,
    position: u64,
    body: Option<Box<dyn AsyncRead + Send + Unpin>>,
}

/// An open directory: names not yet sent, and the pages not yet fetched.
struct DirListing {
    pending: VecDeque<File>,
    pages: DirPages,
}

enum OpenFile {
    Write(WriteFile),
    Read(ReadFile),
    Dir(Box<DirListing>),
}

/// One SFTP session's requests.
pub struct SftpFiles {
    shared: Arc<SftpShared>,
    user: Arc<User>,
    remote_addr: SocketAddr,
    session_id: String,
    open: HashMap<String, OpenFile>,
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

fn failure(message: impl Into<String>) -> StatusReply {
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

fn upload_reply(e: &UploadError) -> StatusReply {
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

/// Feeds queued chunks into the upload; finishes on `Finish`, ends it (keeping whole parts
/// for a resume) when the queue closes or a resume from another session takes it over.
async fn drive(mut upload: Upload, mut queue: mpsc::Receiver<Chunk>) {
    let preempted = upload.preempted();
    tokio::pin!(preempted);
    loop {
        let chunk = tokio::select! {
            chunk = queue.recv() => chunk,
            () = &mut preempted => {
                upload.abort(&Upload::taken_over()).await;
                return;
            }
        };
        let Some(chunk) = chunk else { break };
        match chunk {
            Chunk::Data(bytes) => {
                if let Err(e) = upload.write(&bytes).await {
                    upload.abort(&e).await;
                    return;
                }
            }
            Chunk::Finish(done) => {
                let _ = done.send(upload.finish().await);
                return;
            }
        }
    }
    let reason = UploadError::Client(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the SFTP session ended before CLOSE",
    ));
    upload.abort(&reason).await;
}

impl WriteFile {
    /// Hands in-order bytes to the upload task.
    async fn push(&mut self, bytes: Vec<u8>) -> Result<(), StatusReply> {
        let len = bytes.len() as u64;
        if self.queue.send(Chunk::Data(bytes)).await.is_err() {
            let why = "the upload failed; see the server log, then upload the file again";
            self.failed = Some(why.into());
            return Err(failure(why));
        }
        self.written += len;
        Ok(())
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

    fn add(&mut self, file: OpenFile) -> String {
        self.next_handle += 1;
        let handle = format!("h{}", self.next_handle);
        self.open.insert(handle.clone(), file);
        handle
    }

    fn invalid_handle(handle: &str) -> StatusReply {
        failure(format!("invalid handle {handle:?}"))
    }

    /// OPEN for writing. With TRUNCATE a fresh upload; without it (OpenSSH `reput`, rclone,
    /// WinSCP resuming) a cut upload continues at the bytes kept, which stat showed.
    async fn open_write(
        &mut self,
        path: VirtualPath,
        flags: OpenFlags,
    ) -> Result<String, StatusReply> {
        let mut offset = 0;
        if !flags.contains(OpenFlags::TRUNCATE) {
            if let Some(cut) = self.shared.namespace.cut_upload(&self.user, &path).await {
                offset = cut.durable_bytes;
            } else {
                let exists = self
                    .shared
                    .namespace
                    .stat(&self.user, &path)
                    .await
                    .map(|e| !e.is_dir)
                    .unwrap_or(false);
                if exists {
                    return Err(StatusCode::OpUnsupported.with_message(
                        "this file is complete and S3 objects cannot be changed in place; open it with truncate to replace it",
                    ));
                }
            }
        }
        let request = UploadRequest {
            user: self.user.clone(),
            protocol: Protocol::Sftp,
            path,
            remote_addr: self.remote_addr,
            session_id: self.session_id.clone(),
        };
        let upload = self
            .shared
            .pipeline
            .resume(request, offset)
            .await
            .map_err(|e| upload_reply(&e))?;
        let (queue, receiver) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(drive(upload, receiver));
        let append = (flags.contains(OpenFlags::APPEND) && offset > 0)
            .then_some(Append::Undecided { base: offset });
        Ok(self.add(OpenFile::Write(WriteFile {
            queue,
            written: offset,
            ahead: BTreeMap::new(),
            ahead_bytes: 0,
            failed: None,
            append,
        })))
    }

    async fn open_read(&mut self, path: VirtualPath) -> Result<String, StatusReply> {
        let entry = self
            .shared
            .namespace
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

    async fn finish_write(&mut self, file: WriteFile) -> Result<(), StatusReply> {
        if let Some(why) = file.failed {
            return Err(failure(why));
        }
        if let Some((&offset, _)) = file.ahead.iter().next() {
            // Dropping the queue aborts the upload.
            return Err(failure(format!(
                "the file has a gap: bytes {}..{offset} never arrived; nothing was stored",
                file.written
            )));
        }
        let (done, result) = oneshot::channel();
        if file.queue.send(Chunk::Finish(done)).await.is_err() {
            return Err(failure(
                "the upload failed; see the server log, then upload the file again",
            ));
        }
        match result.await {
            Ok(Ok(completion)) => {
                self.shared.namespace.object_written(&completion.key);
                Ok(())
            }
            Ok(Err(e)) => Err(upload_reply(&e)),
            Err(_) => Err(failure("the upload task stopped unexpectedly")),
        }
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
        let budget = self.shared.pipeline.budget();
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
        let budget = self.shared.pipeline.budget().clone();
        let Some(OpenFile::Write(file)) = self.open.get_mut(&handle) else {
            return Err(Self::invalid_handle(&handle));
        };
        if let Some(why) = &file.failed {
            return Err(failure(why.clone()));
        }
        let offset = match file.append {
            Some(Append::Undecided { base }) => {
                let shift = if offset == base { 0 } else { base };
                file.append = Some(Append::Shift(shift));
                offset + shift
            }
            Some(Append::Shift(shift)) => offset + shift,
            None => offset,
        };
        let len = data.len() as u64;
        if offset == file.written {
            file.push(data).await?;
            while let Some(entry) = file.ahead.first_entry() {
                if *entry.key() != file.written {
                    break;
                }
                let (bytes, _reservation) = entry.remove();
                file.ahead_bytes -= bytes.len() as u64;
                file.push(bytes).await?;
            }
            Ok(status(id))
        } else if offset > file.written {
            let reservation = (file.ahead_bytes + len <= REORDER_LIMIT)
                .then(|| budget.try_reserve_probe(len))
                .flatten();
            let Some(reservation) = reservation else {
                return Err(failure(format!(
                    "write at offset {offset} is too far ahead of the {} bytes received in order",
                    file.written
                )));
            };
            file.ahead_bytes += len;
            file.ahead.insert(offset, (data, reservation));
            Ok(status(id))
        } else {
            Err(failure(format!(
                "rewriting bytes already written or kept (offset {offset} < {}) is not supported: S3 objects are written once, in order; resume from {} or open with truncate to start over",
                file.written, file.written
            )))
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let namespace = self.shared.namespace.clone();
        let user = self.user.clone();
        let Some(OpenFile::Read(file)) = self.open.get_mut(&handle) else {
            return Err(Self::invalid_handle(&handle));
        };
        if offset >= file.size {
            return Err(StatusCode::Eof.into());
        }
        if file.body.is_none() || offset != file.position {
            let body = namespace
                .read(&user, &file.path, offset)
                .await
                .map_err(fs_reply)?;
            file.body = Some(Box::new(body.into_async_read()));
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
            .namespace
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
            .namespace
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
            .pipeline
            .delete(&self.shared.namespace, &self.user, &path)
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
            .namespace
            .mkdir(&self.user, &path)
            .await
            .map_err(fs_reply)?;
        Ok(status(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let path = self.path(&path)?;
        self.shared
            .namespace
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
        self.shared
            .pipeline
            .rename(&self.shared.namespace, request)
            .await
            .map_err(fs_reply)?;
        Ok(status(id))
    }
}
