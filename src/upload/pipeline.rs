//! The pipeline every front-end shares: its memory budget, part sizes, S3 client and
//! notifier, the count of running uploads, and shutdown.

use super::buffers::BufferPool;
use super::registry::Registry;
use super::{MemoryBudget, PartSizes, Quotas};
use crate::auth::{User, VirtualPath};
use crate::config::{StorageConfig, UploadConfig};
use crate::metrics::{Metrics, Protocol};
use crate::notify::Notifier;
use crate::state::{CutUploadStore, Stores, TempNameStore};
use crate::storage::Storage;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) storage: Storage,
    pub(super) notifier: Notifier,
    pub(super) budget: MemoryBudget,
    pub(super) buffers: BufferPool,
    pub(super) sizes: PartSizes,
    pub(super) concurrency: usize,
    pub(super) metrics: Metrics,
    pub(super) active: AtomicUsize,
    pub(super) idle: Notify,
    pub(super) stop: CancellationToken,
    /// Set when [`Pipeline::shutdown`] starts: new uploads are refused, running ones go on.
    pub(super) draining: CancellationToken,
    /// Temp names, overwrite and rename behaviour.
    pub(super) upload: UploadConfig,
    /// Cut uploads.
    pub(super) partials: Arc<dyn CutUploadStore>,
    /// Finished temporary uploads.
    pub(super) temp_names: Arc<dyn TempNameStore>,
    /// What each user with a quota stores.
    pub(super) quotas: Quotas,
    /// How long a cut upload stays resumable; zero turns resuming off.
    pub(super) resume_window: Duration,
    /// Running uploads by key, so a resume can take over from a session that is gone but
    /// not yet timed out.
    pub(super) running: Arc<Registry>,
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
        let quotas = Quotas::new(stores.quota.clone(), storage.clone(), sizes.size_of(1));
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
                running: Arc::new(Registry::default()),
            }),
        }
    }

    /// Cut uploads.
    pub fn partials(&self) -> &Arc<dyn CutUploadStore> {
        &self.inner.partials
    }

    /// Finished temporary uploads, waiting for their rename.
    pub(crate) fn temp_names(&self) -> &Arc<dyn TempNameStore> {
        &self.inner.temp_names
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

    /// The upload settings (temporary names, overwrite, rename behaviour).
    pub(crate) fn upload_config(&self) -> &UploadConfig {
        &self.inner.upload
    }

    /// What each user with a quota stores.
    pub(crate) fn quotas(&self) -> &Quotas {
        &self.inner.quotas
    }

    /// Where completions are queued.
    pub(crate) fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }

    /// Uploads in progress.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Waits up to `grace` for running uploads to finish, then stops the rest (they end
    /// as cut: kept for a resume when resuming is on) and waits briefly for their cleanup.
    /// New uploads are refused from the start ([`UploadError::Draining`](super::UploadError::Draining)).
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

    /// The uploads running in this process now, oldest first (`GET /api/v1/transfers`).
    pub fn transfers(&self) -> Vec<super::TransferView> {
        self.inner.running.views()
    }

    /// How many uploads run in this process now, their bytes so far and their rates summed.
    pub fn transfer_totals(&self) -> (usize, u64, f64) {
        self.inner.running.totals()
    }

    /// How many uploads each connection runs, by session id.
    pub fn uploads_per_session(&self) -> std::collections::HashMap<String, usize> {
        self.inner.running.per_session()
    }

    /// Stops the uploads of connection `session_id` (the operator closed it): each ends as a
    /// cut transfer, kept for a resume when resuming is on, and says why. Returns how many.
    pub fn close_uploads_of(&self, session_id: &str) -> usize {
        let running = self.inner.running.of_session(session_id);
        for upload in &running {
            upload.live.close();
            upload.preempt.cancel();
        }
        running.len()
    }

    /// Refuses new uploads and cancels running ones at once.
    pub fn stop_now(&self) {
        self.inner.stop.cancel();
    }
}

impl Inner {
    /// Resolves once no upload is running.
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
