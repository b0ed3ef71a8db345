//! Resuming cut uploads: suspending one when its client goes away, continuing it at the
//! exact byte S3's whole parts end, expiring it after `storage.resume_window`, and
//! reconciling the records with S3 when the bridge starts.

use super::multipart::{Multipart, abort_multipart};
use super::partials::{PartialRecord, load_hash};
use super::pipeline::Inner;
use super::write::Buffer;
use super::{Pipeline, Upload, UploadError, UploadRequest};
use aws_sdk_s3::types::CompletedPart;
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a resume waits for the session it takes over to let go.
const TAKE_OVER_WAIT: Duration = Duration::from_secs(30);
/// The sweep lease lasts this many sweep intervals.
const SWEEP_LEASE_ROUNDS: u32 = 3;

/// What a resumed upload continues from.
pub(super) struct Resumed {
    pub offset: u64,
    pub hasher: Sha256,
    pub multipart: Multipart,
    pub content_type: String,
    pub started_at: SystemTime,
}

impl Pipeline {
    /// Continues the cut upload of `req.path` at `offset` (FTP REST/APPE, an SFTP write past
    /// the start). `offset` must equal the bytes kept, which SIZE, LIST and stat show;
    /// 0 starts afresh. A session still holding the upload (gone but not yet timed out) is
    /// taken over.
    pub async fn resume(&self, req: UploadRequest, offset: u64) -> Result<Upload, UploadError> {
        if offset == 0 {
            return self.begin(req).await;
        }
        if let Err(e) = self.admit(&req) {
            return self.refuse(&req, e);
        }
        // Before taking the cut upload over, so a refusal leaves it as it was.
        let quota = match self
            .reserve_quota(&req, &req.user.key_of(&req.path), offset)
            .await
        {
            Ok(quota) => quota,
            Err(e) => return self.refuse(&req, e),
        };
        let (record, resumed) = match self.prepare_resume(&req, offset).await {
            Ok(prepared) => prepared,
            Err(e) => return self.refuse(&req, e),
        };
        Ok(self.start(
            req,
            record.key,
            record.id,
            record.fields,
            Some(resumed),
            quota,
        ))
    }

    async fn prepare_resume(
        &self,
        req: &UploadRequest,
        offset: u64,
    ) -> Result<(PartialRecord, Resumed), UploadError> {
        let key = req.user.key_of(&req.path);
        let store = &self.inner.partials;
        let nothing = || {
            UploadError::Resume(format!(
                "cannot resume {} at byte {offset}: no interrupted upload of it is kept; upload the whole file",
                req.path
            ))
        };
        let own = |r: Option<PartialRecord>| r.filter(|r| r.username == req.user.name);
        let Some(mut record) = own(store.get(key.clone()).await.map_err(internal)?) else {
            return Err(nothing());
        };
        if record.active {
            // The user's own session still holds it (gone but not yet timed out).
            self.take_over(&key).await?;
            record = own(store.get(key.clone()).await.map_err(internal)?).ok_or_else(nothing)?;
        }
        if record.active && adopt(&self.inner, &record).await {
            // Its writer was gone (a replica that died): now kept at the parts S3 holds.
            record = own(store.get(key.clone()).await.map_err(internal)?).ok_or_else(nothing)?;
        }
        if record.active {
            return Err(UploadError::Resume(format!(
                "{} is being uploaded by another session; try again when it has ended",
                req.path
            )));
        }
        if offset != record.durable_bytes {
            return Err(UploadError::Resume(format!(
                "cannot resume {} at byte {offset}: {} bytes are stored, resume from there (or from 0 to start over)",
                req.path, record.durable_bytes
            )));
        }
        let parts = match self.inner.storage.list_parts(&key, &record.upload_id).await {
            Ok(parts) => parts,
            Err(e) if e.not_found => {
                let _ = store.remove(key.clone(), record.upload_id.clone()).await;
                return Err(nothing());
            }
            Err(e) => return Err(e.into()),
        };
        let kept: Vec<(CompletedPart, u64)> = parts
            .into_iter()
            .filter(|(p, _)| {
                p.part_number()
                    .is_some_and(|n| n as u32 <= record.durable_parts)
            })
            .collect();
        let whole = kept.len() as u32 == record.durable_parts
            && kept.iter().map(|(_, size)| size).sum::<u64>() == record.durable_bytes;
        let hasher = record.hash_state.as_deref().and_then(load_hash);
        let (true, Some(hasher)) = (whole, hasher) else {
            tracing::warn!(key = %key, "a kept upload no longer matches S3; it is discarded");
            discard(&self.inner, &record).await;
            return Err(nothing());
        };
        if !store
            .activate(key.clone(), record.upload_id.clone())
            .await
            .map_err(internal)?
        {
            return Err(UploadError::Resume(format!(
                "{} is being resumed by another session",
                req.path
            )));
        }
        let marks = store
            .marks(record.upload_id.clone())
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|m| m.number <= record.durable_parts)
            .map(|m| (m.number, (m.end, m.hash_state)))
            .collect();
        let mut multipart = Multipart::new(record.upload_id.clone());
        multipart.next_number = record.durable_parts + 1;
        multipart.done = kept.into_iter().map(|(p, _)| p).collect();
        multipart.marks = marks;
        multipart.recorded = true;
        tracing::info!(user = %req.user.name, path = %req.path, offset, "resuming an interrupted upload");
        self.inner
            .metrics
            .uploads_resumed_total
            .with_label_values(&[req.protocol.as_str()])
            .inc();
        let resumed = Resumed {
            offset,
            hasher,
            multipart,
            content_type: record.content_type.clone(),
            started_at: UNIX_EPOCH + Duration::from_millis(record.started_at_ms.max(0) as u64),
        };
        Ok((record, resumed))
    }

    /// Asks a running upload of `key` to stop (keeping its parts) and waits until it has.
    async fn take_over(&self, key: &str) -> Result<(), UploadError> {
        let running = self.inner.running.get(key);
        let Some(running) = running else {
            return Ok(());
        };
        running.preempt.cancel();
        let mut done = running.done;
        tokio::time::timeout(TAKE_OVER_WAIT, async {
            while done.changed().await.is_ok() {}
        })
        .await
        .map_err(|_| {
            UploadError::Resume(
                "the file is still being uploaded by another session; try again later".into(),
            )
        })
    }

    /// Drops the cut upload of `key`, if one is kept, before a fresh upload replaces it.
    pub(super) async fn discard_cut(&self, key: &str) {
        if self.inner.resume_window.is_zero() {
            return;
        }
        match self.inner.partials.get(key.to_string()).await {
            Ok(Some(record)) if !record.active => discard(&self.inner, &record).await,
            Ok(_) => {}
            Err(e) => tracing::warn!(key, error = %e, "cannot look up a kept upload"),
        }
    }

    /// Removes a kept upload: the client deleted the partial file.
    pub async fn delete_cut(&self, record: &PartialRecord) {
        discard(&self.inner, record).await;
    }

    /// Brings the records in line with S3 after a start (a crash leaves running uploads
    /// recorded as running), then expires old ones every so often, until shutdown.
    pub fn maintain(&self) -> tokio::task::JoinHandle<()> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if inner.resume_window.is_zero() {
                return;
            }
            reconcile(&inner).await;
            count_kept(&inner).await;
            let every = (inner.resume_window / 4)
                .clamp(Duration::from_millis(500), Duration::from_secs(60));
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {
                        // One replica at a time; a dead holder's lease runs out after three
                        // rounds and another replica takes over.
                        match inner.partials.lead_sweep(every * SWEEP_LEASE_ROUNDS).await {
                            Ok(true) => {
                                adopt_orphans(&inner).await;
                                expire(&inner).await;
                            }
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "cannot take the sweep lease; expired uploads wait"),
                        }
                        count_kept(&inner).await;
                    }
                    () = inner.stop.cancelled() => return,
                }
            }
        })
    }

    /// Runs one reconciliation with S3 now (tests and start-up).
    pub async fn reconcile(&self) {
        reconcile(&self.inner).await;
    }
}

fn internal(e: impl std::fmt::Display) -> UploadError {
    UploadError::Internal(e.to_string())
}

/// Aborts a kept upload in S3 and forgets it.
async fn discard(inner: &Inner, record: &PartialRecord) {
    if let Err(e) = inner
        .storage
        .abort_multipart(&record.key, &record.upload_id)
        .await
        && !e.not_found
    {
        tracing::warn!(key = %record.key, error = %e, "AbortMultipartUpload of a kept upload failed; a bucket lifecycle rule should clean it up");
    }
    if let Err(e) = inner
        .partials
        .remove(record.key.clone(), record.upload_id.clone())
        .await
    {
        tracing::warn!(key = %record.key, error = %e, "cannot forget a kept upload");
    }
}

/// Keeps a cut upload's whole parts: sends a full last buffer, lets parts in flight land,
/// and records how far the parts S3 holds reach. Nothing whole means nothing kept.
pub(super) async fn suspend(
    inner: &Arc<Inner>,
    key: &str,
    mut mp: Multipart,
    full: Option<(Buffer, u64, Vec<u8>)>,
) {
    if let Some((buffer, end, state)) = full {
        let mark = super::partials::PartMark {
            number: mp.next_number,
            end,
            hash_state: state.clone(),
        };
        if inner
            .partials
            .mark(mp.upload_id.clone(), mark)
            .await
            .is_ok()
        {
            mp.marks.insert(mp.next_number, (end, state));
            mp.spawn_part(inner, key, buffer);
        }
    }
    while let Some(joined) = mp.in_flight.join_next().await {
        if let Ok(Ok(part)) = joined {
            mp.done.push(part);
        }
    }
    let Some((parts, durable, state)) = mp.durable_prefix() else {
        tracing::info!(
            key,
            "no whole part of the cut upload reached S3; nothing kept"
        );
        abort_multipart(inner, key, mp).await;
        return;
    };
    match inner
        .partials
        .suspend(key.to_string(), mp.upload_id.clone(), durable, parts, state)
        .await
    {
        Ok(true) => {
            tracing::info!(key, durable, parts, "cut upload kept for a resume");
        }
        Ok(false) => {
            // A newer upload of the same key owns the record: this one cannot be resumed.
            mp.recorded = false;
            abort_multipart(inner, key, mp).await;
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "cannot record the cut upload; aborting it");
            abort_multipart(inner, key, mp).await;
        }
    }
}

/// Start-up: every cut record is checked against ListParts (vanished ones are forgotten),
/// then running records left by a process that is gone are kept at the parts S3 holds.
/// Records other replicas are writing are left alone.
async fn reconcile(inner: &Arc<Inner>) {
    let records = match inner.partials.all().await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot read kept uploads");
            return;
        }
    };
    for record in records.into_iter().filter(|r| !r.active) {
        match inner
            .storage
            .list_parts(&record.key, &record.upload_id)
            .await
        {
            Ok(_) => {}
            Err(e) if e.not_found => {
                let _ = inner
                    .partials
                    .remove(record.key.clone(), record.upload_id.clone())
                    .await;
            }
            Err(e) => {
                tracing::warn!(key = %record.key, error = %e, "cannot check a kept upload; will retry at the next start");
            }
        }
    }
    adopt_orphans(inner).await;
}

/// Keeps every running upload whose writer is gone at the parts S3 holds.
async fn adopt_orphans(inner: &Arc<Inner>) {
    match inner.partials.orphaned().await {
        Ok(records) => {
            for record in records {
                adopt(inner, &record).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read uploads left running"),
    }
}

/// Takes `record`, running but left by a writer that is gone, for this process alone and
/// keeps it at the parts S3 holds (suspended like a cut upload); false when its writer is
/// alive, another replica took it, or S3 cannot be asked now.
async fn adopt(inner: &Arc<Inner>, record: &PartialRecord) -> bool {
    // Asked before adopting, so an upload that cannot be checked stays anyone's.
    let parts = match inner
        .storage
        .list_parts(&record.key, &record.upload_id)
        .await
    {
        Ok(parts) => Some(parts),
        Err(e) if e.not_found => None,
        Err(e) => {
            tracing::warn!(key = %record.key, error = %e, "cannot check an upload left running; will retry");
            return false;
        }
    };
    match inner
        .partials
        .adopt(record.key.clone(), record.upload_id.clone())
        .await
    {
        Ok(true) => {}
        Ok(false) => return false,
        Err(e) => {
            tracing::warn!(key = %record.key, error = %e, "cannot adopt an upload left running");
            return false;
        }
    }
    let Some(parts) = parts else {
        let _ = inner
            .partials
            .remove(record.key.clone(), record.upload_id.clone())
            .await;
        return true;
    };
    let marks = inner
        .partials
        .marks(record.upload_id.clone())
        .await
        .unwrap_or_default();
    let mut mp = Multipart::new(record.upload_id.clone());
    mp.recorded = true;
    mp.marks = marks
        .into_iter()
        .map(|m| (m.number, (m.end, m.hash_state)))
        .collect();
    mp.done = parts.into_iter().map(|(p, _)| p).collect();
    mp.next_number = mp.marks.keys().max().map_or(1, |n| n + 1);
    tracing::info!(key = %record.key, "an upload was running when its bridge stopped; keeping its parts");
    suspend(inner, &record.key, mp, None).await;
    true
}

/// Sets `uploads_kept`.
async fn count_kept(inner: &Inner) {
    if let Ok(n) = inner.partials.count_cut().await {
        inner.metrics.uploads_kept.set(n);
    }
}

/// Aborts kept uploads older than the resume window, and forgets temporary uploads never
/// renamed within a week.
async fn expire(inner: &Arc<Inner>) {
    let now = crate::notify::now_ms();
    let window = i64::try_from(inner.resume_window.as_millis()).unwrap_or(i64::MAX);
    match inner.partials.expired(now.saturating_sub(window)).await {
        Ok(records) => {
            for record in records {
                // Claimed first, as a resume would: a client resuming it at this moment
                // keeps it, and the upload is aborted once.
                match inner
                    .partials
                    .activate(record.key.clone(), record.upload_id.clone())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(key = %record.key, error = %e, "cannot claim an expired kept upload");
                        continue;
                    }
                }
                tracing::info!(key = %record.key, durable = record.durable_bytes, "resume window over; aborting the kept upload");
                discard(inner, &record).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read kept uploads"),
    }
    let week = 7 * 24 * 3600 * 1000;
    if let Err(e) = inner.temp_names.prune_temp(now - week).await {
        tracing::warn!(error = %e, "cannot prune temporary-upload records");
    }
}
