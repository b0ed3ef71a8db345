//! Completion delivery: every completed upload is appended (fsynced) to the event log under
//! `data_dir` and, when a connector is configured, committed to the outbox (SQLite) before
//! the client hears success; a worker runs the connector's steps, retrying on a schedule
//! kept in the outbox until the API accepts, refuses for good, or `notify.max_age` passes.
//! Knows nothing about FTP or SFTP: it receives [`CompletedUpload`] records. It reads
//! objects back from S3 only to presign or push them.

mod answer;
mod connector;
mod event_log;
mod extract;
mod http;
mod parts;
mod record;
mod request;
mod token;
mod worker;

/// The SQLite outbox under its old name (the `outbox` commands and tests open it directly).
pub use crate::state::sqlite::{OUTBOX_FILE, SqliteOutbox as Outbox};
pub use crate::state::{EntrySummary, PendingEntry, State, now_ms};
pub use connector::{CreateError, Created};
pub use http::sign;
pub use record::{CompletedUpload, UPLOAD_COMPLETED, new_event_id};

use crate::config::{DeliveryMode, NotifyConfig, UserConfig};
use crate::metrics::Metrics;
use crate::state::{OutboxStore, StateError};
use crate::storage::Storage;
use connector::Connector;
use event_log::EventLog;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a stop waits for the worker and the cut deliveries to end before it releases
/// their claims (they end at their next await; this only bounds a wedged one).
const STOP_WAIT: Duration = Duration::from_secs(5);
/// How long a stop tries to release this replica's claims.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a completion could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The event log could not be opened or written.
    #[error(
        "cannot write the event log {path}: {source}. Check free space and permissions of server.data_dir."
    )]
    EventLog {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The outbox could not be opened or written.
    #[error("cannot use the {store}. {hint}", store = .0, hint = .0.what_to_check())]
    Outbox(#[from] StateError),
    /// The completion could not be turned into JSON.
    #[error("cannot serialise the completion: {0}")]
    Serialise(#[from] serde_json::Error),
    /// The HTTP client or templates could not be set up.
    #[error("cannot set up the notify connector: {0}")]
    Client(String),
    /// Sync mode: the API refused the upload; the client hears this message.
    #[error("{0}")]
    Refused(String),
}

/// Queues completions durably and delivers them.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

/// The outbox side, present when a connector is configured.
struct Delivery {
    outbox: Arc<dyn OutboxStore>,
    connector: Connector,
    concurrency: usize,
    max_age: Duration,
    max_backoff: Duration,
    mode: DeliveryMode,
    sync_timeout: Duration,
}

struct Inner {
    log: EventLog,
    delivery: Option<Delivery>,
    /// Stops the worker and every delivery in progress (they stay pending in the outbox).
    stop: CancellationToken,
    /// Wakes the worker: a new entry, or a free delivery slot.
    wake: Notify,
    /// The worker and the deliveries it started, waited for by a stop.
    tasks: TaskTracker,
    /// Deliveries running now.
    running: AtomicUsize,
    /// Stopping with a shared outbox: start no new delivery, the other replicas will.
    handing_over: AtomicBool,
    /// The outbox may hold entries the worker has not listed yet (a new entry here or on
    /// another replica, a wait that ran out): the worker looks again only then, not after
    /// every delivery — one query per completion fewer on a shared database.
    fresh: AtomicBool,
    pending: AtomicUsize,
    idle: Notify,
    /// Sync mode: clients waiting for their completion's outcome.
    waiters: Mutex<HashMap<String, oneshot::Sender<Result<(), String>>>>,
    metrics: Metrics,
}

impl Notifier {
    /// Opens the event log in `data_dir` and, when a connector is configured, starts the
    /// delivery worker on `outbox`, which resumes what an earlier run left pending.
    pub async fn start(
        cfg: &NotifyConfig,
        users: &[UserConfig],
        data_dir: &Path,
        outbox: Option<Arc<dyn OutboxStore>>,
        storage: Storage,
        metrics: Metrics,
    ) -> Result<Notifier, NotifyError> {
        let log = EventLog::open(data_dir)?;
        let delivery = if cfg.enabled() {
            let Some(outbox) = outbox else {
                return Err(NotifyError::Client(
                    "a connector is configured but no outbox was opened".into(),
                ));
            };
            Some(Delivery {
                outbox,
                connector: Connector::new(cfg, users, storage).map_err(NotifyError::Client)?,
                concurrency: cfg.concurrency,
                max_age: cfg.max_age,
                max_backoff: cfg.max_backoff,
                mode: cfg.mode,
                sync_timeout: cfg.sync_timeout,
            })
        } else {
            None
        };
        let inner = Arc::new(Inner {
            log,
            delivery,
            stop: CancellationToken::new(),
            wake: Notify::new(),
            tasks: TaskTracker::new(),
            running: AtomicUsize::new(0),
            handing_over: AtomicBool::new(false),
            fresh: AtomicBool::new(true),
            pending: AtomicUsize::new(0),
            idle: Notify::new(),
            waiters: Mutex::default(),
            metrics,
        });
        if let Some(delivery) = &inner.delivery {
            let (count, _) = delivery.outbox.pending_summary().await?;
            if count > 0 {
                tracing::info!(count, "resuming completions left pending by an earlier run");
            }
            inner.pending.store(count, Ordering::Release);
            inner.refresh_gauges().await;
            inner.tasks.spawn(worker::run(inner.clone()));
        }
        Ok(Notifier { inner })
    }

    /// Uses `users`' per-user notify settings (`vars`, headers) from now on (SIGHUP).
    pub fn set_users(&self, users: &[UserConfig]) {
        if let Some(delivery) = &self.inner.delivery {
            delivery.connector.set_users(users);
        }
    }

    /// Runs the connector's `create` step for an upload about to start (a no-op without
    /// one). `ctx` holds what is known then: id, protocol, username, path, key…
    pub async fn create(&self, ctx: Map<String, Value>) -> Result<Created, CreateError> {
        match &self.inner.delivery {
            Some(d) if d.connector.has_create() => d.connector.create(ctx).await,
            _ => Ok(Created::default()),
        }
    }

    /// Whether uploads run a `create` step first.
    pub fn has_create(&self) -> bool {
        self.inner
            .delivery
            .as_ref()
            .is_some_and(|d| d.connector.has_create())
    }

    /// Records a completion durably (event log and outbox, both on disk) and queues its
    /// delivery, with the fields `create` extracted. Returns only then — in sync mode only
    /// once the connector finished, or with [`NotifyError::Refused`].
    pub async fn enqueue(
        &self,
        completion: CompletedUpload,
        fields: Map<String, Value>,
    ) -> Result<(), NotifyError> {
        let body = serde_json::to_vec(&completion)?;
        let Some(delivery) = &self.inner.delivery else {
            return self.inner.log.record(&body, async { Ok(()) }).await;
        };
        let id = completion.id.clone();
        let waiter = match delivery.mode {
            DeliveryMode::Sync => {
                let (tx, rx) = oneshot::channel();
                self.inner.waiters.lock().insert(id.clone(), tx);
                Some(rx)
            }
            DeliveryMode::Async => None,
        };
        let entry = PendingEntry {
            id: id.clone(),
            key: completion.key,
            body: body.clone(),
            step: 0,
            fields,
            attempts: 0,
            since_ms: now_ms(),
        };
        // The log line and the outbox row stand or fall together: a client told of an
        // error must not find its upload in either.
        let recorded = self
            .inner
            .log
            .record(&body, async {
                delivery
                    .outbox
                    .insert(entry)
                    .await
                    .map_err(NotifyError::from)
            })
            .await;
        if let Err(e) = recorded {
            self.forget_waiter(&id);
            return Err(e);
        }
        self.inner.pending.fetch_add(1, Ordering::AcqRel);
        self.inner.metrics.notifications_pending.inc();
        self.inner.fresh.store(true, Ordering::Release);
        self.inner.wake.notify_one();
        let Some(rx) = waiter else {
            return Ok(());
        };
        match tokio::time::timeout(delivery.sync_timeout, rx).await {
            Ok(Ok(Err(message))) => Err(NotifyError::Refused(message)),
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Err(_)) | Err(_) => {
                // Still retrying (or stopping): the entry is durable and will be delivered.
                self.forget_waiter(&id);
                tracing::warn!(id = %id, timeout = ?delivery.sync_timeout,
                    "the API has not answered in time (notify.sync_timeout); the client is told success, delivery continues from the outbox");
                Ok(())
            }
        }
    }

    fn forget_waiter(&self, id: &str) {
        self.inner.waiters.lock().remove(id);
    }

    /// Completions queued and not yet delivered or given up.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::Acquire)
    }

    /// Waits until every queued completion is delivered, or `timeout` passes.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.inner.idle.notified();
                if self.pending() == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Stops delivering, after up to `timeout` for what is under way. With an outbox of its
    /// own, queued completions get that time to be delivered (what is left stays pending
    /// for the next start). With an outbox shared by replicas, this one starts nothing new
    /// and its running deliveries get that time to finish; then the rest are cut and their
    /// claims released at once, so another replica delivers them now rather than when the
    /// lease ends — a cut one is sent again, with the same id (at least once, as after a
    /// crash: the API may have seen the cut attempt).
    pub async fn shutdown(&self, timeout: Duration) {
        let Some(delivery) = &self.inner.delivery else {
            self.inner.stop.cancel();
            return;
        };
        if delivery.outbox.lease().is_some() {
            self.inner.handing_over.store(true, Ordering::Release);
            self.inner.wake.notify_one();
            if !self.deliveries_end(timeout).await {
                tracing::warn!(
                    running = self.inner.running.load(Ordering::Acquire),
                    "stopping with deliveries running; they are cut and handed to the other replicas (sent again with the same id)"
                );
            }
        } else if !self.drain(timeout).await {
            tracing::warn!(
                pending = self.pending(),
                "stopping with undelivered completions; they stay in the outbox and are sent after the next start"
            );
        }
        self.inner.stop.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(STOP_WAIT, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("a delivery did not stop in time; its claim is released anyway");
        }
        match tokio::time::timeout(RELEASE_TIMEOUT, delivery.outbox.release_claims()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(released)) => tracing::info!(
                released,
                "released the completions this replica was delivering; another replica takes them over now"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e,
                "cannot release the completions this replica was delivering; another replica takes them over when their lease ends"),
            Err(_) => tracing::warn!(timeout = ?RELEASE_TIMEOUT,
                "the outbox did not answer in time to release this replica's completions; another replica takes them over when their lease ends"),
        }
    }

    /// Waits until no delivery runs, or `timeout` passes.
    async fn deliveries_end(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let idle = self.inner.idle.notified();
                if self.inner.running.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// The outbox, when a connector is configured (the admin API reads it).
    pub fn outbox(&self) -> Option<Arc<dyn OutboxStore>> {
        self.inner.delivery.as_ref().map(|d| d.outbox.clone())
    }

    /// Puts entry `id` back to pending, due now (an operator's retry), and wakes the worker
    /// so it is delivered at once. `Ok(false)`: no such entry, or it was delivered already.
    pub async fn retry(&self, id: &str) -> Result<bool, NotifyError> {
        let Some(delivery) = &self.inner.delivery else {
            return Ok(false);
        };
        let changed = delivery.outbox.retry(Some(id.to_string())).await?;
        if changed > 0 {
            self.inner.refresh_gauges().await;
            self.inner.fresh.store(true, Ordering::Release);
            self.inner.wake.notify_one();
        }
        Ok(changed > 0)
    }

    /// Writes a test record to the event log: is it still writable?
    pub async fn check_writable(&self) -> Result<(), NotifyError> {
        self.inner.log.check().await
    }

    /// Whether the outbox takes new entries (`Ok` when there is no outbox).
    pub async fn check_outbox(&self) -> Result<(), NotifyError> {
        match &self.inner.delivery {
            Some(d) => d.outbox.check_writable().await.map_err(NotifyError::from),
            None => Ok(()),
        }
    }
}

impl Inner {
    /// Records the end of an entry's delivery and tells a waiting sync client.
    async fn finished(&self, entry: &PendingEntry, state: State, error: Option<String>) {
        if let Some(delivery) = &self.delivery
            && let Err(e) = delivery
                .outbox
                .finish(&entry.id, state, entry.attempts + 1, error.clone())
                .await
        {
            // Left pending: sent once more (at least once, same id).
            tracing::error!(id = %entry.id, error = %e, "cannot record the delivery in the outbox");
        }
        let waiter = self.waiters.lock().remove(&entry.id);
        if let Some(tx) = waiter {
            let _ = tx.send(match state {
                State::Dead => Err(error.unwrap_or_else(|| "refused by the ingest API".into())),
                _ => Ok(()),
            });
        }
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.metrics
            .notifications_pending
            .set(i64::try_from(self.pending.load(Ordering::Acquire)).unwrap_or(i64::MAX));
        self.idle.notify_waiters();
    }

    /// Re-reads the pending count and the oldest pending entry's age from the outbox (an
    /// operator's `outbox retry` may have changed them).
    async fn refresh_gauges(&self) {
        let Some(delivery) = &self.delivery else {
            return;
        };
        match delivery.outbox.pending_summary().await {
            Ok((count, oldest)) => {
                self.pending.store(count, Ordering::Release);
                self.metrics
                    .notifications_pending
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
                let age = oldest.map_or(0.0, |t| (now_ms() - t).max(0) as f64 / 1000.0);
                self.metrics.notification_oldest_pending_seconds.set(age);
                if count == 0 {
                    self.idle.notify_waiters();
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
        }
    }
}
