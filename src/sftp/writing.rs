//! Writing over SFTP. russh-sftp serves requests strictly one at a time, so a WRITE must
//! not wait for S3: each file open for writing feeds a background task that owns the
//! [`FileUpload`]. WRITE replies as soon as its bytes are queued (the queue is short, so a
//! slow store still slows the client); CLOSE replies only after the object is complete and
//! its completion queued. A session that ends without CLOSE drops its queues, and the tasks
//! abort their uploads.

use super::files::{OpenFile, SftpFiles, failure, upload_reply};
use crate::auth::VirtualPath;
use crate::files::FileUpload;
use crate::notify::CompletedUpload;
use crate::protocol::Protocol;
use crate::upload::{Reservation, UploadError, UploadRequest};
use russh_sftp::protocol::{OpenFlags, StatusCode};
use russh_sftp::server::StatusReply;
use std::collections::BTreeMap;
use tokio::sync::{mpsc, oneshot};

/// Chunks queued between a session and its upload task. Each chunk (up to 255 KiB) is
/// outside the memory budget, and a session whose upload waits for the budget holds the
/// queue full: 1,000 uploads at once peaked at 1,367 MiB with 4, 1,271 MiB with 1
/// (`bench/scale.sh`), at the same single-upload throughput.
const WRITE_QUEUE: usize = 1;
/// Out-of-order bytes one file may hold while waiting for the gap before them.
const REORDER_LIMIT: u64 = 8 * 1024 * 1024;

/// What a session hands its upload task.
enum Chunk {
    Data(Vec<u8>),
    Finish(oneshot::Sender<Result<CompletedUpload, UploadError>>),
}

/// A file open for writing: the queue to its upload task and the bytes not yet in order.
pub(super) struct WriteFile {
    queue: mpsc::Sender<Chunk>,
    /// Bytes handed to the upload, in order.
    pub(super) written: u64,
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

/// Feeds queued chunks into the upload; finishes on `Finish`, ends it (keeping whole parts
/// for a resume) when the queue closes or a resume from another session takes it over.
async fn drive(mut upload: FileUpload, mut queue: mpsc::Receiver<Chunk>) {
    let preempted = upload.preempted();
    tokio::pin!(preempted);
    loop {
        let chunk = tokio::select! {
            chunk = queue.recv() => chunk,
            () = &mut preempted => {
                let reason = upload.preempted_error();
                upload.abort(&reason).await;
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
    /// OPEN for writing. With TRUNCATE a fresh upload; without it (OpenSSH `reput`, rclone,
    /// WinSCP resuming) a cut upload continues at the bytes kept, which stat showed.
    pub(super) async fn open_write(
        &mut self,
        path: VirtualPath,
        flags: OpenFlags,
    ) -> Result<String, StatusReply> {
        let mut offset = 0;
        if !flags.contains(OpenFlags::TRUNCATE) {
            if let Some(kept) = self.shared.files.kept_bytes(&self.user, &path).await {
                offset = kept;
            } else {
                let exists = self
                    .shared
                    .files
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
            .files
            .upload(request, offset)
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

    pub(super) async fn finish_write(&mut self, file: WriteFile) -> Result<(), StatusReply> {
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
            // The facade already told the namespace the file landed.
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(upload_reply(&e)),
            Err(_) => Err(failure("the upload task stopped unexpectedly")),
        }
    }

    /// WRITE at `offset`: in order bytes go to the upload, bytes ahead wait (within a
    /// budgeted limit) for the gap before them, rewrites are refused.
    pub(super) async fn write_at(
        &mut self,
        handle: &str,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), StatusReply> {
        let budget = self.shared.files.budget().clone();
        let Some(OpenFile::Write(file)) = self.open.get_mut(handle) else {
            return Err(Self::invalid_handle(handle));
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
            Ok(())
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
            Ok(())
        } else {
            Err(failure(format!(
                "rewriting bytes already written or kept (offset {offset} < {}) is not supported: S3 objects are written once, in order; resume from {} or open with truncate to start over",
                file.written, file.written
            )))
        }
    }
}
