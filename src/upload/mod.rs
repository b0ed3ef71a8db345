//! The protocol-agnostic streaming pipeline: client bytes in, one S3 object and one queued
//! completion out — or nothing at all.
//!
//! ```text
//! begin() ─► write()/fill_from() ─► probe buffer ─► part buffers ─► UploadPart × concurrency
//!                 │ SHA-256 as bytes pass        (reserved from the MemoryBudget first)
//!                 ▼
//! finish() ─► PutObject (fits in one part) | CompleteMultipartUpload ─► Notifier::enqueue ─► Ok
//! client gone, stalled, shutdown ─► whole parts kept for resume (partials), the rest dropped
//! refused, too large, S3 failure ─► AbortMultipartUpload, no completion
//! ```
//!
//! Success is said last: `finish` returns only after the object is whole in S3 and its
//! completion is durably queued. Uploads under temporary names (`upload.temp_patterns`)
//! queue nothing: their completion comes with the rename to a final name (see `rename`).

mod budget;
mod buffers;
mod client_message;
mod content_type;
mod part_size;
pub mod partials;
mod quota;
mod rename;
mod resume;

pub use budget::{
    MemoryBudget, OpenSessionGuard, OpenSessions, PROBE_SIZE, Reservation, SessionCharge,
    session_share,
};
pub use client_message::{NOT_RECORDED, SERVER_FAULT, STORAGE_UNAVAILABLE};
pub use part_size::{MAX_PARTS, PartSizes, S3_MAX_OBJECT};
pub use partials::PartialStore;
pub use quota::{QuotaExceeded, QuotaTicket, Quotas};
pub use rename::RenameRequest;

use crate::audit::TransferRecord;
use crate::auth::{User, VirtualPath};
use crate::config::{Permission, S3_MIN_PART_SIZE, StorageConfig, UploadConfig, format_size};
use crate::metrics::{GaugeGuard, Metrics, Protocol, UploadOutcome};
use crate::notify::{
    CompletedUpload, CreateError, Notifier, NotifyError, UPLOAD_COMPLETED, new_event_id,
};
use crate::state::{CutUploadStore, Stores, TempNameStore};
use crate::storage::{Storage, StorageError};
use aws_sdk_s3::types::CompletedPart;
use buffers::BufferPool;
use bytes::{BufMut, BytesMut};
use parking_lot::Mutex;
use partials::{PartMark, PartialRecord, TempRecord, save_hash};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why an upload did not complete. Every variant leaves no object and no completion.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The user lacks the `upload` permission.
    #[error("permission denied: user may not upload")]
    PermissionDenied,
    /// The path names the home directory itself.
    #[error("cannot upload to a directory")]
    IsDirectory,
    /// The transfer exceeds what S3 (10,000 parts, 5 TiB) and the part sizes allow.
    #[error("file exceeds the largest object these settings allow ({})", format_size(*.limit))]
    TooLarge {
        /// The largest allowed object.
        limit: u64,
    },
    /// The file passed the user's `max_file_size`.
    #[error("file is larger than this account may upload ({}, max_file_size)", format_size(*.limit))]
    OverFileSizeLimit {
        /// The user's limit.
        limit: u64,
    },
    /// The user's `quota_bytes` or `quota_files` is reached.
    #[error("{0}")]
    OverQuota(#[from] QuotaExceeded),
    /// Reading from the client failed (reset, broken connection).
    #[error("connection to the client failed: {0}")]
    Client(std::io::Error),
    /// The client sent nothing for too long.
    #[error("no data from the client for {0:?}")]
    Stalled(Duration),
    /// S3 refused or failed after the SDK's retries.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// The completion could not be queued.
    #[error("{0}")]
    Notify(#[from] NotifyError),
    /// The ingest API refused the upload (`create` step, or `complete` in sync mode); the
    /// client hears the API's message.
    #[error("{0}")]
    Refused(String),
    /// The server is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The server is draining before a restart: running uploads finish, new ones go elsewhere.
    #[error(
        "this server is restarting and takes no new uploads; upload again in a moment (another server will take it)"
    )]
    Draining,
    /// A resume cannot continue at the offset the client asked for.
    #[error("{0}")]
    Resume(String),
    /// The user may not upload files of this type (`allowed_extensions`).
    #[error("{name}: files of this type are not accepted here (allowed: {allowed})")]
    NameNotAccepted {
        /// The file name.
        name: String,
        /// The allowed endings.
        allowed: String,
    },
    /// The file exists and `upload.overwrite` is false.
    #[error("{0} exists and this server does not replace files (upload.overwrite = false)")]
    Exists(String),
    /// An internal task died.
    #[error("internal error: {0}")]
    Internal(String),
}

impl UploadError {
    /// The metrics outcome this error counts as.
    pub fn outcome(&self) -> UploadOutcome {
        match self {
            UploadError::PermissionDenied
            | UploadError::IsDirectory
            | UploadError::TooLarge { .. }
            | UploadError::OverFileSizeLimit { .. }
            | UploadError::OverQuota(_)
            | UploadError::Resume(_)
            | UploadError::Exists(_)
            | UploadError::NameNotAccepted { .. }
            | UploadError::Refused(_)
            | UploadError::Draining => UploadOutcome::Rejected,
            UploadError::Client(_) | UploadError::Stalled(_) | UploadError::ShuttingDown => {
                UploadOutcome::Aborted
            }
            UploadError::Storage(_) | UploadError::Notify(_) | UploadError::Internal(_) => {
                UploadOutcome::Failed
            }
        }
    }

    /// Whether the client may come back for the bytes already stored: the transfer was cut,
    /// not refused.
    fn keeps_partial(&self) -> bool {
        matches!(
            self,
            UploadError::Client(_) | UploadError::Stalled(_) | UploadError::ShuttingDown
        )
    }
}

/// A last check before an upload is committed, e.g. that the FTP control connection still
/// stands (a client that died mid-STOR closes its data connection like a finished one).
pub type CommitCheck =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Who uploads what, from where.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    /// The logged-in user.
    pub user: Arc<User>,
    /// The front-end.
    pub protocol: Protocol,
    /// The normalised path inside the user's home.
    pub path: VirtualPath,
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The connection, as the audit trail names it.
    pub session_id: String,
}

/// Starts uploads; shared by every front-end.
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Storage,
    notifier: Notifier,
    budget: MemoryBudget,
    buffers: BufferPool,
    sizes: PartSizes,
    concurrency: usize,
    metrics: Metrics,
    active: AtomicUsize,
    idle: Notify,
    stop: CancellationToken,
    /// Set when [`Pipeline::shutdown`] starts: new uploads are refused, running ones go on.
    draining: CancellationToken,
    /// Temp names, overwrite and rename behaviour.
    upload: UploadConfig,
    /// Cut uploads.
    partials: Arc<dyn CutUploadStore>,
    /// Finished temporary uploads.
    temp_names: Arc<dyn TempNameStore>,
    /// What each user with a quota stores.
    quotas: Quotas,
    /// How long a cut upload stays resumable; zero turns resuming off.
    resume_window: Duration,
    /// Running uploads by key, so a resume can take over from a session that is gone but
    /// not yet timed out.
    running: Mutex<HashMap<String, Running>>,
    next_serial: AtomicU64,
}

/// A running upload as the registry sees it.
#[derive(Clone)]
struct Running {
    serial: u64,
    preempt: CancellationToken,
    done: tokio::sync::watch::Receiver<()>,
}

/// An upload's place in the registry; leaving it (drop) tells waiters the upload ended.
struct Registration {
    pipeline: Arc<Inner>,
    key: String,
    serial: u64,
    preempt: CancellationToken,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut running = self.pipeline.running.lock();
        if running
            .get(&self.key)
            .is_some_and(|r| r.serial == self.serial)
        {
            running.remove(&self.key);
        }
    }
}

impl Pipeline {
    /// A pipeline writing to `storage` under the budget and part sizes of `cfg`, keeping
    /// cut uploads, temporary names and quota usage in `stores`.
    pub fn new(
        cfg: &StorageConfig,
        upload: &UploadConfig,
        stores: &Stores,
        storage: Storage,
        notifier: Notifier,
        metrics: Metrics,
    ) -> Pipeline {
        metrics
            .buffer_bytes_limit
            .set(i64::try_from(cfg.memory_limit).unwrap_or(i64::MAX));
        // Two parts always stay for uploads, whatever sessions charge for their buffers.
        let budget = MemoryBudget::new(
            cfg.memory_limit,
            2 * cfg.part_size,
            metrics.buffer_bytes_in_use.clone(),
        );
        let sizes = PartSizes::new(
            cfg.part_size.min(budget.max_part()),
            cfg.max_part_size.min(budget.max_part()),
        );
        let quotas = Quotas::new(stores.quota.clone(), storage.clone());
        Pipeline {
            inner: Arc::new(Inner {
                storage,
                notifier,
                budget,
                // One upload's worth of idle parts: enough to stop page-fault churn, little
                // enough to keep RSS near the budget.
                buffers: BufferPool::new(cfg.upload_concurrency),
                sizes,
                concurrency: cfg.upload_concurrency,
                metrics,
                active: AtomicUsize::new(0),
                idle: Notify::new(),
                stop: CancellationToken::new(),
                draining: CancellationToken::new(),
                upload: upload.clone(),
                quotas,
                partials: stores.uploads.clone(),
                temp_names: stores.temp_names.clone(),
                resume_window: cfg.resume_window,
                running: Mutex::new(HashMap::new()),
                next_serial: AtomicU64::new(1),
            }),
        }
    }

    /// Cut uploads.
    pub fn partials(&self) -> &Arc<dyn CutUploadStore> {
        &self.inner.partials
    }

    /// The memory budget (for tests and diagnostics).
    pub fn budget(&self) -> &MemoryBudget {
        &self.inner.budget
    }

    /// The largest object an upload may produce.
    pub fn max_object_size(&self) -> u64 {
        self.inner.sizes.max_object_size()
    }

    /// The storage the pipeline writes to.
    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// Uploads in progress.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Counts, logs and audits a refused upload.
    fn refuse<T>(&self, req: &UploadRequest, e: UploadError) -> Result<T, UploadError> {
        let protocol = req.protocol;
        self.inner
            .metrics
            .uploads_total
            .with_label_values(&[protocol.as_str(), e.outcome().as_str()])
            .inc();
        tracing::warn!(user = %req.user.name, path = %req.path, error = %e, "upload refused");
        self.inner.metrics.audit.transfer(&TransferRecord {
            session: &req.session_id,
            protocol,
            user: &req.user.name,
            remote_addr: req.remote_addr,
            path: &req.path.to_string(),
            key: &req.user.key_of(&req.path),
            size: 0,
            sha256: None,
            duration: Duration::ZERO,
            outcome: e.outcome().as_str(),
            error: Some(e.to_string()),
        });
        Err(e)
    }

    /// Checks that `req` may upload at all.
    fn admit(&self, req: &UploadRequest) -> Result<(), UploadError> {
        if !req.user.may(Permission::Upload) {
            return Err(UploadError::PermissionDenied);
        }
        if req.path.is_root() {
            return Err(UploadError::IsDirectory);
        }
        if self.inner.stop.is_cancelled() {
            return Err(UploadError::ShuttingDown);
        }
        if self.inner.draining.is_cancelled() {
            return Err(UploadError::Draining);
        }
        self.check_name(&req.user, req.path.file_name())
    }

    /// `allowed_extensions`, for an upload or a rename target. Temporary names pass: they
    /// are checked when renamed to their final name.
    fn check_name(&self, user: &User, name: &str) -> Result<(), UploadError> {
        if self.inner.upload.is_temp(name) || user.accepts_name(name) {
            return Ok(());
        }
        self.inner
            .metrics
            .limits_exceeded_total
            .with_label_values(&["allowed_extensions"])
            .inc();
        Err(UploadError::NameNotAccepted {
            name: name.to_string(),
            allowed: user.allowed_extensions.join(", "),
        })
    }

    /// Starts an upload after checking the user's permission and, with a connector that
    /// has a `create` step, asking the API (which may choose the object's key). A cut
    /// upload of the same key is discarded: the new one starts from byte 0.
    pub async fn begin(&self, req: UploadRequest) -> Result<Upload, UploadError> {
        if let Err(e) = self.admit(&req) {
            return self.refuse(&req, e);
        }
        let id = new_event_id();
        let mut key = req.user.key_of(&req.path);
        if !self.inner.upload.overwrite {
            match self.inner.storage.head(&key).await {
                Ok(Some(_)) => {
                    let path = req.path.to_string();
                    return self.refuse(&req, UploadError::Exists(path));
                }
                Ok(None) => {}
                Err(e) => return self.refuse(&req, e.into()),
            }
        }
        let quota = match self.reserve_quota(&req, &key, 0).await {
            Ok(quota) => quota,
            Err(e) => return self.refuse(&req, e),
        };
        let mut fields = serde_json::Map::new();
        if self.inner.notifier.has_create() {
            let ctx = self.create_context(&req, &id, &key);
            match self.inner.notifier.create(ctx).await {
                Ok(created) => {
                    fields = created.fields;
                    if let Some(path) = created.path {
                        match VirtualPath::parse(&path) {
                            Ok(p) if !p.is_root() => key = req.user.key_of(&p),
                            _ => {
                                return self.refuse(
                                    &req,
                                    UploadError::Refused(format!(
                                        "the ingest API chose an unusable path {path:?}"
                                    )),
                                );
                            }
                        }
                    }
                }
                Err(CreateError::Refused(message)) => {
                    return self.refuse(&req, UploadError::Refused(message));
                }
                Err(e @ CreateError::Unavailable(_)) => {
                    return self.refuse(
                        &req,
                        UploadError::Notify(NotifyError::Client(e.to_string())),
                    );
                }
            }
        }
        self.discard_cut(&key).await;
        Ok(self.start(req, key, id, fields, None, quota))
    }

    /// The user's quota hold for an upload of `key` continuing at `offset`.
    async fn reserve_quota(
        &self,
        req: &UploadRequest,
        key: &str,
        offset: u64,
    ) -> Result<Option<QuotaTicket>, UploadError> {
        let reserved = self.inner.quotas.reserve(&req.user, key, offset).await;
        if let Err(UploadError::OverQuota(e)) = &reserved {
            self.inner
                .metrics
                .limits_exceeded_total
                .with_label_values(&[e.key()])
                .inc();
        }
        reserved
    }

    /// Registers and returns a new upload, fresh or continuing `resumed`.
    fn start(
        &self,
        req: UploadRequest,
        key: String,
        id: String,
        fields: serde_json::Map<String, serde_json::Value>,
        resumed: Option<resume::Resumed>,
        quota: Option<QuotaTicket>,
    ) -> Upload {
        let protocol = req.protocol;
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        let registration = self.register(&key);
        let temp = self.inner.upload.is_temp(req.path.file_name());
        tracing::debug!(user = %req.user.name, path = %req.path, key = %key,
            resumed_from = resumed.as_ref().map_or(0, |r| r.offset), "upload started");
        let mut upload = Upload {
            _active_gauge: GaugeGuard::new(
                self.inner
                    .metrics
                    .uploads_active
                    .with_label_values(&[protocol.as_str()]),
            ),
            pipeline: self.inner.clone(),
            id,
            fields,
            key,
            req,
            started_at: SystemTime::now(),
            started: Instant::now(),
            hasher: Sha256::new(),
            size: 0,
            buffer: None,
            multipart: None,
            content_type: None,
            open: true,
            temp,
            commit_check: None,
            registration: Some(registration),
            quota,
        };
        if let Some(r) = resumed {
            upload.started_at = r.started_at;
            upload.hasher = r.hasher;
            upload.size = r.offset;
            upload.content_type = Some(r.content_type);
            upload.multipart = Some(r.multipart);
        }
        upload
    }

    /// Enters `key` in the registry of running uploads.
    fn register(&self, key: &str) -> Registration {
        let serial = self.inner.next_serial.fetch_add(1, Ordering::Relaxed);
        let preempt = CancellationToken::new();
        let (done_tx, done_rx) = tokio::sync::watch::channel(());
        self.inner.running.lock().insert(
            key.to_string(),
            Running {
                serial,
                preempt: preempt.clone(),
                done: done_rx,
            },
        );
        Registration {
            pipeline: self.inner.clone(),
            key: key.to_string(),
            serial,
            preempt,
            _done: done_tx,
        }
    }

    /// What `create` templates see: everything known before the first byte.
    fn create_context(
        &self,
        req: &UploadRequest,
        id: &str,
        key: &str,
    ) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::Value;
        let mut ctx = serde_json::Map::new();
        ctx.insert("event".into(), Value::from("upload.started"));
        ctx.insert("id".into(), Value::from(id));
        ctx.insert("protocol".into(), Value::from(req.protocol.as_str()));
        ctx.insert("username".into(), Value::from(req.user.name.as_str()));
        ctx.insert(
            "remote_addr".into(),
            Value::from(req.remote_addr.to_string()),
        );
        ctx.insert("path".into(), Value::from(req.path.to_string()));
        ctx.insert("bucket".into(), Value::from(self.inner.storage.bucket()));
        ctx.insert("key".into(), Value::from(key));
        ctx.insert("metadata".into(), Value::Object(req.user.metadata.clone()));
        ctx
    }

    /// Waits up to `grace` for running uploads to finish, then stops the rest (they end
    /// as cut: kept for a resume when resuming is on) and waits briefly for their cleanup.
    /// New uploads are refused from the start ([`UploadError::Draining`]).
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.draining.cancel();
        let finished = tokio::time::timeout(grace, inner.wait_idle()).await.is_ok();
        inner.stop.cancel();
        if !finished {
            tracing::warn!(
                active = self.active(),
                "shutdown grace period over; aborting running uploads"
            );
            let _ = tokio::time::timeout(Duration::from_secs(15), inner.wait_idle()).await;
        }
    }

    /// Refuses new uploads and cancels running ones at once.
    pub fn stop_now(&self) {
        self.inner.stop.cancel();
    }
}

impl Inner {
    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.active.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// A buffer being filled, with the budget it holds.
struct Buffer {
    data: BytesMut,
    capacity: usize,
    /// The small first buffer, before the upload is known to need parts.
    probe: bool,
    reservation: Reservation,
    /// Counts `data` in `upload_bytes_in_flight` until S3 has it (or it is dropped).
    in_flight: InFlight,
}

/// Bytes counted in `upload_bytes_in_flight` for as long as this lives.
struct InFlight {
    gauge: prometheus::IntGauge,
    bytes: i64,
}

impl InFlight {
    fn new(gauge: prometheus::IntGauge, bytes: usize) -> InFlight {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        gauge.add(bytes);
        InFlight { gauge, bytes }
    }

    fn add(&mut self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(0);
        self.bytes += bytes;
        self.gauge.add(bytes);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

/// An S3 multipart upload in progress.
struct Multipart {
    upload_id: String,
    next_number: u32,
    in_flight: JoinSet<Result<CompletedPart, StorageError>>,
    done: Vec<CompletedPart>,
    /// Each sent part's end offset and hash state there (resumable uploads only).
    marks: BTreeMap<u32, (u64, Vec<u8>)>,
    /// Whether the partials store has a record of it.
    recorded: bool,
}

impl Multipart {
    fn new(upload_id: String) -> Multipart {
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
    fn spawn_part(&mut self, pipeline: &Arc<Inner>, key: &str, buffer: Buffer) -> u32 {
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

    /// The longest run of whole parts 1..=n that S3 acknowledged and that have marks:
    /// `(n, end offset, hash state)`.
    fn durable_prefix(&self) -> Option<(u32, u64, Vec<u8>)> {
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
enum Ending {
    /// Nothing is kept.
    Abort(Multipart),
    /// Whole parts are kept for a resume; a full buffer not yet sent goes first.
    Suspend(Multipart, Option<(Buffer, u64, Vec<u8>)>),
}

/// One upload in progress. Finish it with [`Upload::finish`]; dropping it aborts.
pub struct Upload {
    pipeline: Arc<Inner>,
    req: UploadRequest,
    /// The completion id, fixed at the start so `create` can use it.
    id: String,
    /// Fields the `create` step extracted, for the later steps.
    fields: serde_json::Map<String, serde_json::Value>,
    key: String,
    started_at: SystemTime,
    started: Instant,
    hasher: Sha256,
    size: u64,
    buffer: Option<Buffer>,
    multipart: Option<Multipart>,
    content_type: Option<String>,
    open: bool,
    /// Under a temporary name: no completion until renamed.
    temp: bool,
    commit_check: Option<CommitCheck>,
    /// In the registry until the upload (and its cleanup) ends.
    registration: Option<Registration>,
    /// The hold on the user's quota, if one applies.
    quota: Option<QuotaTicket>,
    /// Holds `uploads_active` up until the upload is dropped.
    _active_gauge: GaugeGuard,
}

impl Upload {
    /// The object key this upload writes.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The S3 multipart upload id, once the upload has needed one.
    pub fn multipart_id(&self) -> Option<&str> {
        self.multipart.as_ref().map(|m| m.upload_id.as_str())
    }

    /// Runs `check` right before the object is committed; an error there cuts the upload.
    pub fn set_commit_check(&mut self, check: CommitCheck) {
        self.commit_check = Some(check);
    }

    /// Resolves when a resume from another session takes this upload over.
    pub fn preempted(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let token = self
            .registration
            .as_ref()
            .map(|r| r.preempt.clone())
            .unwrap_or_default();
        async move { token.cancelled().await }
    }

    /// The error an upload ends with when a resume from another session takes it over.
    pub fn taken_over() -> UploadError {
        UploadError::Client(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "another session resumed this upload",
        ))
    }

    fn is_preempted(&self) -> bool {
        self.registration
            .as_ref()
            .is_some_and(|r| r.preempt.is_cancelled())
    }

    /// Appends bytes; waits while the memory budget is spent or parts are in flight.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), UploadError> {
        while !data.is_empty() {
            if self.pipeline.stop.is_cancelled() {
                return Err(UploadError::ShuttingDown);
            }
            if self.is_preempted() {
                return Err(Self::taken_over());
            }
            let spare = self.writable_buffer().await?;
            let n = spare.min(data.len());
            let (chunk, rest) = data.split_at(n);
            self.accept(chunk)?;
            if let Some(buffer) = self.buffer.as_mut() {
                buffer.data.extend_from_slice(chunk);
                buffer.in_flight.add(chunk.len());
            }
            data = rest;
        }
        Ok(())
    }

    /// Reads `reader` to its end straight into part buffers. A read that yields nothing for
    /// `stall_timeout` fails the upload, as does a server shutdown.
    pub async fn fill_from<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        stall_timeout: Duration,
    ) -> Result<u64, UploadError> {
        let stop = self.pipeline.stop.clone();
        let preempted = self.preempted();
        tokio::pin!(preempted);
        loop {
            let spare = self.writable_buffer().await?;
            let Some(buffer) = self.buffer.as_mut() else {
                return Err(UploadError::Internal("no buffer after reservation".into()));
            };
            let before = buffer.data.len();
            let mut limited = (&mut buffer.data).limit(spare);
            let read = tokio::select! {
                r = tokio::time::timeout(stall_timeout, reader.read_buf(&mut limited)) => r,
                () = stop.cancelled() => return Err(UploadError::ShuttingDown),
                () = &mut preempted => return Err(Self::taken_over()),
            };
            let n = match read {
                Err(_) => {
                    self.pipeline
                        .metrics
                        .limits_exceeded_total
                        .with_label_values(&["stalled_transfer"])
                        .inc();
                    return Err(UploadError::Stalled(stall_timeout));
                }
                Ok(Err(e)) => return Err(UploadError::Client(e)),
                Ok(Ok(0)) => return Ok(self.size),
                Ok(Ok(n)) => n,
            };
            let Upload {
                buffer,
                hasher,
                size,
                ..
            } = self;
            if let Some(buffer) = buffer.as_mut() {
                hasher.update(&buffer.data[before..before + n]);
                buffer.in_flight.add(n);
            }
            *size += n as u64;
            self.check_size()?;
            self.pipeline
                .metrics
                .upload_bytes_total
                .with_label_values(&[self.req.protocol.as_str()])
                .inc_by(n as u64);
        }
    }

    fn in_flight_gauge(&self) -> prometheus::IntGauge {
        self.pipeline
            .metrics
            .upload_bytes_in_flight
            .with_label_values(&[self.req.protocol.as_str()])
    }

    /// Counts and hashes bytes about to enter the buffer.
    fn accept(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.check_size()?;
        self.pipeline
            .metrics
            .upload_bytes_total
            .with_label_values(&[self.req.protocol.as_str()])
            .inc_by(chunk.len() as u64);
        Ok(())
    }

    fn check_size(&mut self) -> Result<(), UploadError> {
        let object_limit = self.pipeline.sizes.max_object_size();
        let user_limit = self.req.user.max_file_size.unwrap_or(u64::MAX);
        if self.size > object_limit.min(user_limit) {
            let (which, error) = if user_limit < object_limit {
                (
                    "max_file_size",
                    UploadError::OverFileSizeLimit { limit: user_limit },
                )
            } else {
                (
                    "max_object_size",
                    UploadError::TooLarge {
                        limit: object_limit,
                    },
                )
            };
            self.pipeline
                .metrics
                .limits_exceeded_total
                .with_label_values(&[which])
                .inc();
            return Err(error);
        }
        if let Some(quota) = self.quota.as_mut()
            && let Err(e) = quota.grow_to(self.size)
        {
            self.pipeline
                .metrics
                .limits_exceeded_total
                .with_label_values(&[e.key()])
                .inc();
            return Err(e.into());
        }
        Ok(())
    }

    /// Makes sure a buffer with free space exists and returns the free space: reserves the
    /// probe, grows it into the first part, or sends a full part and reserves the next.
    async fn writable_buffer(&mut self) -> Result<usize, UploadError> {
        loop {
            match &self.buffer {
                Some(b) if b.data.len() < b.capacity => return Ok(b.capacity - b.data.len()),
                Some(b) if b.probe => {
                    let first = self.pipeline.sizes.size_of(1);
                    let reservation = self.pipeline.budget.reserve_part(first).await;
                    let capacity = reservation.bytes().min(first) as usize;
                    let mut data = self.pipeline.buffers.take(capacity);
                    data.extend_from_slice(&b.data);
                    // The probe's reservation (and its in-flight count, taken over by the
                    // new buffer) is returned as the old buffer drops.
                    let in_flight = InFlight::new(self.in_flight_gauge(), b.data.len());
                    self.buffer = Some(Buffer {
                        data,
                        capacity,
                        probe: false,
                        reservation,
                        in_flight,
                    });
                }
                Some(_) => self.send_part().await?,
                None => {
                    let next = self.multipart.as_ref().map_or(1, |m| m.next_number);
                    if next > MAX_PARTS {
                        return Err(UploadError::TooLarge {
                            limit: self.pipeline.sizes.max_object_size(),
                        });
                    }
                    let part = self.pipeline.sizes.size_of(next);
                    let (reservation, probe) = if self.multipart.is_none() {
                        (
                            self.pipeline
                                .budget
                                .reserve_probe(PROBE_SIZE.min(part))
                                .await,
                            true,
                        )
                    } else {
                        // The buffer being filled counts as one of the upload's
                        // `upload_concurrency` parts: at most that many buffers per upload.
                        self.wait_for_parts_below(self.pipeline.concurrency).await?;
                        (self.pipeline.budget.reserve_part(part).await, false)
                    };
                    let capacity = reservation.bytes().min(part) as usize;
                    self.buffer = Some(Buffer {
                        data: if probe {
                            BytesMut::with_capacity(capacity)
                        } else {
                            self.pipeline.buffers.take(capacity)
                        },
                        capacity,
                        probe,
                        reservation,
                        in_flight: InFlight::new(self.in_flight_gauge(), 0),
                    });
                }
            }
        }
    }

    /// Waits until fewer than `limit` parts are in flight, collecting finished ones.
    async fn wait_for_parts_below(&mut self, limit: usize) -> Result<(), UploadError> {
        if let Some(mp) = self.multipart.as_mut() {
            while mp.in_flight.len() >= limit {
                match mp.in_flight.join_next().await {
                    Some(joined) => mp.done.push(part_result(joined)?),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Sends the current buffer as the next part, creating the multipart upload first when
    /// needed. Never waits for a slot: `writable_buffer` waited for one before reserving
    /// this buffer, so fewer than `upload_concurrency` parts are in flight.
    async fn send_part(&mut self) -> Result<(), UploadError> {
        let Some(buffer) = self.buffer.take() else {
            return Ok(());
        };
        if self.multipart.is_none() {
            let content_type = content_type::detect(
                self.req.path.file_name(),
                &buffer.data[..buffer.data.len().min(4096)],
            );
            let upload_id = self
                .pipeline
                .storage
                .create_multipart(&self.key, Some(&content_type))
                .await?;
            self.content_type = Some(content_type);
            self.multipart = Some(Multipart::new(upload_id));
        }
        self.record_mark().await;
        let Some(mp) = self.multipart.as_mut() else {
            return Err(UploadError::Internal("multipart state missing".into()));
        };
        mp.spawn_part(&self.pipeline, &self.key, buffer);
        Ok(())
    }

    /// For a resumable upload, writes the next part's mark (its end is everything received
    /// so far), and the upload's record before its first part. A failure here only costs
    /// resumability, never the upload.
    async fn record_mark(&mut self) {
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

    async fn complete(&mut self) -> Result<CompletedUpload, UploadError> {
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
        let storage = self.pipeline.storage.clone();
        // The quota needs to know whether this replaces a file, and how big it was.
        let replaced = match self.quota {
            Some(_) => storage.head(&self.key).await?.map(|old| old.size),
            None => None,
        };
        let (etag, content_type) = if self.multipart.is_none() {
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
            let etag = storage.put_object(&self.key, bytes, &content_type).await?;
            drop(reservation);
            (etag, content_type)
        } else {
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
            let mut parts = std::mem::take(&mut mp.done);
            parts.sort_by_key(|p| p.part_number());
            let etag = storage
                .complete_multipart(&self.key, &mp.upload_id, parts)
                .await?;
            // Complete succeeded: there is no multipart upload left to abort or resume.
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
            (
                etag,
                self.content_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".into()),
            )
        };
        let hasher = std::mem::take(&mut self.hasher);
        let completion = CompletedUpload {
            event: UPLOAD_COMPLETED,
            id: self.id.clone(),
            protocol: self.req.protocol,
            username: self.req.user.name.clone(),
            remote_addr: self.req.remote_addr.to_string(),
            path: self.req.path.to_string(),
            bucket: storage.bucket().to_string(),
            key: self.key.clone(),
            size: self.size,
            etag,
            sha256: hex::encode(hasher.finalize()),
            content_type,
            started_at: self.started_at,
            completed_at: SystemTime::now(),
            metadata: self.req.user.metadata.clone(),
        };
        let fields = std::mem::take(&mut self.fields);
        let queued = if self.temp {
            // Not final yet: the rename to a final name reports it.
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
        } else {
            self.pipeline
                .notifier
                .enqueue(completion.clone(), fields)
                .await
        };
        if let Err(e) = queued {
            // The object is whole but its completion cannot be queued (or, in sync mode,
            // the API refused it): take it back so nothing is left half-published.
            if let Err(del) = storage.delete(&self.key).await {
                tracing::error!(key = %self.key, error = %del, "cannot remove object whose completion could not be queued");
            }
            return Err(match e {
                NotifyError::Refused(message) => UploadError::Refused(message),
                other => other.into(),
            });
        }
        if let Some(quota) = self.quota.take() {
            self.pipeline
                .quotas
                .committed(&self.req.user, quota, self.size, replaced)
                .await;
        }
        Ok(completion)
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
    fn close(
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

impl Drop for Upload {
    fn drop(&mut self) {
        // Neither finished nor aborted: the session vanished. Clean up in the background.
        if let Some(ending) = self.close(
            UploadOutcome::Aborted,
            &"the client session ended mid-upload",
            true,
        ) && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(end(
                self.pipeline.clone(),
                self.key.clone(),
                ending,
                self.registration.take(),
            ));
        }
        if self.pipeline.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.pipeline.idle.notify_waiters();
        }
    }
}

/// Aborts or suspends what an upload left in S3; the registration is released (telling a
/// waiting resume to go on) only once that is settled.
async fn end(
    pipeline: Arc<Inner>,
    key: String,
    ending: Ending,
    _registration: Option<Registration>,
) {
    match ending {
        Ending::Abort(mp) => abort_multipart(&pipeline, &key, mp).await,
        Ending::Suspend(mp, full) => resume::suspend(&pipeline, &key, mp, full).await,
    }
}

/// Aborts after the last check that parts still land, up to this many times.
const ABORT_TRIES: u32 = 3;

/// Stops parts in flight first, then aborts the upload, then forgets the record. A part
/// whose bytes the S3 server already had may still land after its request was dropped;
/// S3's documentation says so and advises aborting again ("it might be necessary to abort
/// a given multipart upload multiple times"), so the abort is repeated while parts remain.
async fn abort_multipart(pipeline: &Inner, key: &str, mut mp: Multipart) {
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

fn part_result(
    joined: Result<Result<CompletedPart, StorageError>, tokio::task::JoinError>,
) -> Result<CompletedPart, UploadError> {
    match joined {
        Ok(Ok(part)) => Ok(part),
        Ok(Err(e)) => Err(UploadError::Storage(e)),
        Err(e) => Err(UploadError::Internal(format!("part upload task: {e}"))),
    }
}
