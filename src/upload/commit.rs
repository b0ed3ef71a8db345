//! The end of an upload: committed (object whole, completion queued, quota charged,
//! audited) or closed without success (audited, and what S3 holds aborted or kept).

use super::UploadError;
use super::content_type;
use super::multipart::{Ending, end, part_result};
use super::partials::{TempRecord, save_hash};
use super::transfer::Upload;
use crate::audit::TransferRecord;
use crate::metrics::UploadOutcome;
use crate::notify::{CompletedUpload, NotifyError, UPLOAD_COMPLETED};
use sha2::Digest;
use std::time::SystemTime;

impl Upload {
    /// Completes the object, queues its completion, and only then returns success.
    pub async fn finish(mut self) -> Result<CompletedUpload, UploadError> {
        match self.complete().await {
            Ok(completion) => {
                self.open = false;
                let protocol = self.req.protocol.as_str();
                let m = &self.pipeline.metrics;
                m.uploads_total
                    .with_label_values(&[protocol, UploadOutcome::Completed.as_str()])
                    .inc();
                m.upload_duration_seconds
                    .with_label_values(&[protocol])
                    .observe(self.started.elapsed().as_secs_f64());
                m.upload_size_bytes
                    .with_label_values(&[protocol])
                    .observe(completion.size as f64);
                self.audit(UploadOutcome::Completed, Some(&completion.sha256), None);
                tracing::info!(
                    user = %completion.username, protocol, path = %completion.path, key = %completion.key,
                    size = completion.size, sha256 = %completion.sha256, id = %completion.id,
                    duration_ms = self.started.elapsed().as_millis() as u64, "upload completed"
                );
                Ok(completion)
            }
            Err(e) => {
                self.abort_with(&e).await;
                Err(e)
            }
        }
    }

    /// Commits the upload: each step below, in order; any failure leaves no object and no
    /// completion (the caller aborts what S3 still holds).
    async fn complete(&mut self) -> Result<CompletedUpload, UploadError> {
        self.check_still_wanted().await?;
        // The quota hold must still be live (its lease renewed) when the object appears.
        if let Some(quota) = self.quota.as_mut() {
            quota.grow_to(self.size).await?;
        }
        let replaced = self.replaced_size().await?;
        let (etag, content_type) = if self.multipart.is_none() {
            self.put_whole().await?
        } else {
            self.complete_parts().await?
        };
        let completion = self.completion(etag, content_type);
        if let Err(e) = self.queue_completion(&completion).await {
            return Err(self.take_back(e).await);
        }
        self.charge_quota(replaced).await;
        Ok(completion)
    }

    /// Refuses to commit when the server is stopping or the commit check (e.g. the FTP
    /// control connection) says the client is gone.
    async fn check_still_wanted(&self) -> Result<(), UploadError> {
        if self.pipeline.stop.is_cancelled() {
            return Err(UploadError::ShuttingDown);
        }
        if let Some(check) = &self.commit_check
            && let Err(why) = check().await
        {
            return Err(UploadError::Client(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                why,
            )));
        }
        Ok(())
    }

    /// The size of the object this upload replaces, when a quota needs to know it.
    async fn replaced_size(&self) -> Result<Option<u64>, UploadError> {
        Ok(match self.quota {
            Some(_) => self
                .pipeline
                .storage
                .head(&self.key)
                .await?
                .map(|old| old.size),
            None => None,
        })
    }

    /// PutObject of an upload that fits in one part; returns its ETag and content type.
    async fn put_whole(&mut self) -> Result<(String, String), UploadError> {
        let body = self
            .buffer
            .take()
            .map(|b| (b.data.freeze(), (b.reservation, b.in_flight)));
        let (bytes, reservation) = match body {
            Some((bytes, r)) => (bytes, Some(r)),
            None => (bytes::Bytes::new(), None),
        };
        let content_type =
            content_type::detect(self.req.path.file_name(), &bytes[..bytes.len().min(4096)]);
        let etag = self
            .pipeline
            .storage
            .put_object(&self.key, bytes, &content_type)
            .await?;
        // The budget is held until S3 has the bytes.
        drop(reservation);
        Ok((etag, content_type))
    }

    /// Sends the last part, waits for every part, and completes the multipart upload;
    /// returns its ETag and content type.
    async fn complete_parts(&mut self) -> Result<(String, String), UploadError> {
        if self.buffer.as_ref().is_some_and(|b| !b.data.is_empty()) {
            self.send_part().await?;
        }
        self.buffer = None;
        let Some(mp) = self.multipart.as_mut() else {
            return Err(UploadError::Internal("multipart state missing".into()));
        };
        while let Some(joined) = mp.in_flight.join_next().await {
            mp.done.push(part_result(joined)?);
        }
        // Checked after the last part landed, right before the object is made.
        if !mp.may_write(&self.pipeline) {
            return Err(UploadError::LeaseLost);
        }
        let mut parts = std::mem::take(&mut mp.done);
        parts.sort_by_key(|p| p.part_number());
        let etag = self
            .pipeline
            .storage
            .complete_multipart(&self.key, &mp.upload_id, parts)
            .await?;
        self.forget_resume_record().await;
        let content_type = self
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into());
        Ok((etag, content_type))
    }

    /// After Complete there is no multipart upload left to abort or resume: drops its
    /// record. A failure here only leaves a record the sweeper removes.
    async fn forget_resume_record(&mut self) {
        if let Some(mp) = self.multipart.take()
            && mp.recorded
            && let Err(e) = self
                .pipeline
                .partials
                .remove(self.key.clone(), mp.upload_id)
                .await
        {
            tracing::warn!(key = %self.key, error = %e, "cannot forget the completed upload's resume record");
        }
    }

    /// The completion this upload reports (the hash is final from here on).
    fn completion(&mut self, etag: String, content_type: String) -> CompletedUpload {
        let hasher = std::mem::take(&mut self.hasher);
        CompletedUpload {
            event: UPLOAD_COMPLETED,
            id: self.id.clone(),
            protocol: self.req.protocol,
            username: self.req.user.name.clone(),
            remote_addr: self.req.remote_addr.to_string(),
            path: self.req.path.to_string(),
            bucket: self.pipeline.storage.bucket().to_string(),
            key: self.key.clone(),
            size: self.size,
            etag,
            sha256: hex::encode(hasher.finalize()),
            content_type,
            started_at: self.started_at,
            completed_at: SystemTime::now(),
            metadata: self.req.user.metadata.clone(),
        }
    }

    /// Queues the completion durably; under a temporary name records it for the rename to
    /// a final name instead, which reports it.
    async fn queue_completion(&mut self, completion: &CompletedUpload) -> Result<(), NotifyError> {
        let fields = std::mem::take(&mut self.fields);
        if !self.temp {
            return self
                .pipeline
                .notifier
                .enqueue(completion.clone(), fields)
                .await;
        }
        self.pipeline
            .temp_names
            .put_temp(TempRecord {
                key: completion.key.clone(),
                username: completion.username.clone(),
                size: completion.size,
                sha256: completion.sha256.clone(),
                content_type: completion.content_type.clone(),
                id: completion.id.clone(),
                fields,
                started_at_ms: completion
                    .started_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
            })
            .await
            .map_err(|e| NotifyError::Client(e.to_string()))
    }

    /// The object is whole but its completion cannot be queued (or, in sync mode, the API
    /// refused it): deletes it so nothing is left half-published, and says why.
    async fn take_back(&self, e: NotifyError) -> UploadError {
        if let Err(del) = self.pipeline.storage.delete(&self.key).await {
            tracing::error!(key = %self.key, error = %del, "cannot remove object whose completion could not be queued");
        }
        match e {
            NotifyError::Refused(message) => UploadError::Refused(message),
            other => other.into(),
        }
    }

    /// Turns the quota hold into usage, net of the file replaced.
    async fn charge_quota(&mut self, replaced: Option<u64>) {
        if let Some(quota) = self.quota.take() {
            self.pipeline
                .quotas
                .committed(&self.req.user, quota, self.size, replaced)
                .await;
        }
    }

    fn audit(&self, outcome: UploadOutcome, sha256: Option<&str>, error: Option<String>) {
        self.pipeline.metrics.audit.transfer(&TransferRecord {
            session: &self.req.session_id,
            protocol: self.req.protocol,
            user: &self.req.user.name,
            remote_addr: self.req.remote_addr,
            path: &self.req.path.to_string(),
            key: &self.key,
            size: self.size,
            sha256,
            duration: self.started.elapsed(),
            outcome: outcome.as_str(),
            error,
        });
    }

    /// Ends the upload without success: a cut transfer keeps its whole parts for a resume
    /// (within `storage.resume_window`), anything else aborts the multipart upload.
    pub async fn abort(mut self, reason: &UploadError) {
        self.abort_with(reason).await;
    }

    async fn abort_with(&mut self, reason: &UploadError) {
        if let Some(ending) = self.close(reason.outcome(), reason, reason.keeps_partial()) {
            let registration = self.registration.take();
            end(
                self.pipeline.clone(),
                self.key.clone(),
                ending,
                registration,
            )
            .await;
        }
    }

    /// Marks the upload as ended without success, counts and logs it, and hands back what
    /// S3 still holds: to abort, or (`keep`) to suspend for a resume.
    pub(super) fn close(
        &mut self,
        outcome: UploadOutcome,
        reason: &dyn std::fmt::Display,
        keep: bool,
    ) -> Option<Ending> {
        if !self.open {
            return None;
        }
        self.open = false;
        let buffer = self.buffer.take();
        self.audit(outcome, None, Some(reason.to_string()));
        let protocol = self.req.protocol.as_str();
        self.pipeline
            .metrics
            .uploads_total
            .with_label_values(&[protocol, outcome.as_str()])
            .inc();
        let mp = self.multipart.take()?;
        if !keep || self.pipeline.resume_window.is_zero() || !mp.recorded {
            tracing::warn!(user = %self.req.user.name, protocol, path = %self.req.path, key = %self.key,
                size = self.size, error = %reason, "upload not completed");
            return Some(Ending::Abort(mp));
        }
        tracing::warn!(user = %self.req.user.name, protocol, path = %self.req.path, key = %self.key,
            size = self.size, error = %reason, "upload cut; whole parts are kept for a resume");
        // A buffer that is exactly full is a whole part: keep it too.
        let full = buffer
            .filter(|b| !b.probe && b.data.len() == b.capacity)
            .map(|b| (b, self.size, save_hash(&self.hasher)));
        Some(Ending::Suspend(mp, full))
    }
}
