//! The S3 multipart upload behind a large upload: parts sent in the background, the
//! durable prefix a resume may continue from, and the abort (repeated while parts land).

use super::partials::{PartMark, PartialRecord, save_hash};
use super::pipeline::Inner;
use super::registry::Registration;
use super::transfer::Upload;
use super::write::Buffer;
use super::{UploadError, resume};
use crate::config::S3_MIN_PART_SIZE;
use crate::storage::StorageError;
use aws_sdk_s3::types::CompletedPart;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::task::JoinSet;

/// An S3 multipart upload in progress.
pub(super) struct Multipart {
    pub(super) upload_id: String,
    pub(super) next_number: u32,
    pub(super) in_flight: JoinSet<Result<CompletedPart, StorageError>>,
    pub(super) done: Vec<CompletedPart>,
    /// Each sent part's end offset and hash state there (resumable uploads only).
    pub(super) marks: BTreeMap<u32, (u64, Vec<u8>)>,
    /// Whether the partials store has a record of it.
    pub(super) recorded: bool,
}

impl Multipart {
    pub(super) fn new(upload_id: String) -> Multipart {
        Multipart {
            upload_id,
            next_number: 1,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            marks: BTreeMap::new(),
            recorded: false,
        }
    }

    /// Sends `buffer` as the next part in the background.
    pub(super) fn spawn_part(&mut self, pipeline: &Arc<Inner>, key: &str, buffer: Buffer) -> u32 {
        let number = self.next_number;
        self.next_number += 1;
        let pipeline = pipeline.clone();
        let key = key.to_string();
        let upload_id = self.upload_id.clone();
        let Buffer {
            data,
            reservation,
            in_flight,
            ..
        } = buffer;
        self.in_flight.spawn(async move {
            let body = data.freeze();
            let kept = body.clone();
            let result = pipeline
                .storage
                .upload_part(&key, &upload_id, number as i32, body)
                .await;
            // The SDK has let go of the body: its memory serves the next part.
            if let Ok(buffer) = kept.try_into_mut() {
                pipeline.buffers.give(buffer);
            }
            // The budget is returned only once S3 has the part (or the part failed).
            drop(reservation);
            drop(in_flight);
            result
        });
        number
    }

    /// Whether this process may still write into the multipart upload: always, unless it
    /// is recorded in a shared store that no longer vouches for this replica's lease.
    pub(super) fn may_write(&self, pipeline: &Inner) -> bool {
        !self.recorded || pipeline.partials.may_write(&self.upload_id)
    }

    /// The longest run of whole parts 1..=n that S3 acknowledged and that have marks:
    /// `(n, end offset, hash state)`.
    pub(super) fn durable_prefix(&self) -> Option<(u32, u64, Vec<u8>)> {
        let done: std::collections::HashSet<i32> =
            self.done.iter().filter_map(|p| p.part_number()).collect();
        let mut best = None;
        let mut previous_end = 0;
        for number in 1.. {
            let Some((end, state)) = self.marks.get(&number) else {
                break;
            };
            // A short part may only be the last: resuming after it would fail Complete.
            if !done.contains(&(number as i32)) || end - previous_end < S3_MIN_PART_SIZE {
                break;
            }
            best = Some((number, *end, state.clone()));
            previous_end = *end;
        }
        best
    }
}

/// How an upload that did not complete leaves S3.
pub(super) enum Ending {
    /// Nothing is kept.
    Abort(Multipart),
    /// Whole parts are kept for a resume; a full buffer not yet sent goes first.
    Suspend(Multipart, Option<(Buffer, u64, Vec<u8>)>),
}

impl Upload {
    /// For a resumable upload, writes the next part's mark (its end is everything received
    /// so far), and the upload's record before its first part. A failure here only costs
    /// resumability, never the upload.
    pub(super) async fn record_mark(&mut self) {
        if self.pipeline.resume_window.is_zero() {
            return;
        }
        let Some(mp) = self.multipart.as_mut() else {
            return;
        };
        let store = &self.pipeline.partials;
        if !mp.recorded {
            let started_at_ms = self
                .started_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let record = PartialRecord {
                key: self.key.clone(),
                username: self.req.user.name.clone(),
                path: self.req.path.to_string(),
                upload_id: mp.upload_id.clone(),
                content_type: self.content_type.clone().unwrap_or_default(),
                id: self.id.clone(),
                fields: self.fields.clone(),
                started_at_ms,
                updated_ms: 0,
                durable_bytes: 0,
                durable_parts: 0,
                hash_state: None,
                active: true,
            };
            match store.begin(record).await {
                Ok(()) => mp.recorded = true,
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "cannot record the upload for resuming");
                    return;
                }
            }
        }
        let state = save_hash(&self.hasher);
        let mark = PartMark {
            number: mp.next_number,
            end: self.size,
            hash_state: state.clone(),
        };
        mp.marks.insert(mp.next_number, (self.size, state));
        if let Err(e) = store.mark(mp.upload_id.clone(), mark).await {
            tracing::warn!(key = %self.key, error = %e, "cannot record a part for resuming");
        }
    }
}

/// Aborts or suspends what an upload left in S3; the registration is released (telling a
/// waiting resume to go on) only once that is settled.
pub(super) async fn end(
    pipeline: Arc<Inner>,
    key: String,
    ending: Ending,
    _registration: Option<Registration>,
) {
    let (Ending::Abort(mp) | Ending::Suspend(mp, _)) = &ending;
    if !mp.may_write(&pipeline) {
        let (Ending::Abort(mp) | Ending::Suspend(mp, _)) = ending;
        // Another replica can only write into an upload whose record it found. When the
        // key's record names another upload (a newer upload of the same name replaced it)
        // or none, nobody else can: abort it rather than leave its parts behind. When the
        // record is this upload's (adopted by another replica) or cannot be read, let go.
        match pipeline.partials.get(key.clone()).await {
            Ok(record) if record.as_ref().is_none_or(|r| r.upload_id != mp.upload_id) => {
                tracing::info!(key, upload_id = %mp.upload_id,
                    "the upload's record was replaced by a newer upload of the same name; aborting it");
                abort_multipart(&pipeline, &key, mp).await;
            }
            _ => let_go(&key, mp),
        }
        return;
    }
    match ending {
        Ending::Abort(mp) => abort_multipart(&pipeline, &key, mp).await,
        Ending::Suspend(mp, full) => resume::suspend(&pipeline, &key, mp, full).await,
    }
}

/// Leaves a multipart upload whose lease this replica lost as it is: another replica may
/// own it now, so it is neither completed, marked, suspended nor aborted here. Its record
/// stays for the new owner, or for the sweep that adopts it once the lease has run out.
fn let_go(key: &str, mut mp: Multipart) {
    mp.in_flight.abort_all();
    tracing::warn!(key, upload_id = %mp.upload_id,
        "this replica lost the lease of the upload; leaving it to the replica that holds it now (or to the sweep)");
}

/// Aborts after the last check that parts still land, up to this many times.
const ABORT_TRIES: u32 = 3;

/// Stops parts in flight first, then aborts the upload, then forgets the record. A part
/// whose bytes the S3 server already had may still land after its request was dropped;
/// S3's documentation says so and advises aborting again ("it might be necessary to abort
/// a given multipart upload multiple times"), so the abort is repeated while parts remain.
pub(super) async fn abort_multipart(pipeline: &Inner, key: &str, mut mp: Multipart) {
    mp.in_flight.abort_all();
    while mp.in_flight.join_next().await.is_some() {}
    for attempt in 1..=ABORT_TRIES {
        if let Err(e) = pipeline.storage.abort_multipart(key, &mp.upload_id).await {
            tracing::warn!(key = %key, upload_id = %mp.upload_id, error = %e, "AbortMultipartUpload failed; a bucket lifecycle rule should clean it up");
            break;
        }
        match pipeline.storage.list_parts(key, &mp.upload_id).await {
            Ok(parts) if !parts.is_empty() && attempt < ABORT_TRIES => {
                tracing::info!(key = %key, upload_id = %mp.upload_id, "a part landed after the abort; aborting again");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            _ => break,
        }
    }
    if mp.recorded
        && let Err(e) = pipeline
            .partials
            .remove(key.to_string(), mp.upload_id.clone())
            .await
    {
        tracing::warn!(key = %key, error = %e, "cannot forget the aborted upload's resume record");
    }
}

pub(super) fn part_result(
    joined: Result<Result<CompletedPart, StorageError>, tokio::task::JoinError>,
) -> Result<CompletedPart, UploadError> {
    match joined {
        Ok(Ok(part)) => Ok(part),
        Ok(Err(e)) => Err(UploadError::Storage(e)),
        Err(e) => Err(UploadError::Internal(format!("part upload task: {e}"))),
    }
}
