//! Completion delivery: every completed upload is appended (fsynced) to the event log under
//! `data_dir` and, when `notify.url` is set, committed to the outbox (SQLite) before the
//! client hears success; a worker POSTs it, retrying with backoff until the API accepts or
//! refuses it for good, and re-sends at start what an earlier run left pending. Knows
//! nothing about FTP or SFTP: it receives [`CompletedUpload`] records.

mod event_log;
mod http;
mod outbox;
mod record;

pub use http::{Classification, classify};
pub use record::{CompletedUpload, UPLOAD_COMPLETED, new_event_id};

use crate::config::NotifyConfig;
use crate::metrics::Metrics;
use event_log::EventLog;
pub use outbox::{OUTBOX_FILE, Outbox, PendingEntry, State};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Deliveries running at once.
const DELIVERY_CONCURRENCY: usize = 8;

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
    #[error(
        "cannot use the outbox {path}: {message}. Check free space and permissions of server.data_dir."
    )]
    Outbox {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The completion could not be turned into JSON.
    #[error("cannot serialise the completion: {0}")]
    Serialise(#[from] serde_json::Error),
    /// The HTTP client could not be built.
    #[error("cannot set up the notify HTTP client: {0}")]
    Client(String),
}

/// Queues completions durably and delivers them.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    log: EventLog,
    /// Present when `notify.url` is set: entries stay here until delivered or dead.
    outbox: Option<Outbox>,
    queue: Option<mpsc::UnboundedSender<PendingEntry>>,
    /// Stops the worker and every delivery in progress (they stay pending in the outbox).
    stop: CancellationToken,
    pending: AtomicUsize,
    idle: Notify,
    metrics: Metrics,
}

impl Notifier {
    /// Opens the event log in `data_dir` and, when a URL is set, the outbox and the delivery
    /// worker, which first re-sends what an earlier run left pending.
    pub fn start(
        cfg: &NotifyConfig,
        data_dir: &Path,
        metrics: Metrics,
    ) -> Result<Notifier, NotifyError> {
        let log = EventLog::open(data_dir)?;
        let (queue, receiver, outbox) = match &cfg.url {
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx), Some(Outbox::open(data_dir)?))
            }
            None => (None, None, None),
        };
        let inner = Arc::new(Inner {
            log,
            outbox,
            queue,
            stop: CancellationToken::new(),
            pending: AtomicUsize::new(0),
            idle: Notify::new(),
            metrics,
        });
        if let (Some(rx), Some(url)) = (receiver, cfg.url.clone()) {
            let sender = http::Sender::new(cfg, url, data_dir)?;
            tokio::spawn(deliver_all(inner.clone(), sender, rx));
        }
        Ok(Notifier { inner })
    }

    /// Records a completion durably (event log and outbox, both on disk) and queues its
    /// delivery. Returns only then: the client may be told the upload succeeded.
    pub async fn enqueue(&self, completion: CompletedUpload) -> Result<(), NotifyError> {
        let body = serde_json::to_vec(&completion)?;
        self.inner.log.append(&body).await?;
        if let (Some(queue), Some(outbox)) = (&self.inner.queue, &self.inner.outbox) {
            let entry = PendingEntry {
                id: completion.id,
                key: completion.key,
                body,
            };
            outbox.insert(entry.clone()).await?;
            self.inner.pending.fetch_add(1, Ordering::AcqRel);
            self.inner.metrics.notifications_pending.inc();
            if queue.send(entry).is_err() {
                tracing::error!("notify worker has stopped; the completion stays in the outbox");
                self.finished_one();
            }
        }
        Ok(())
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

    /// Stops delivering; what is undelivered stays pending in the outbox for the next start.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    /// Writes a test record to the event log: is it still writable?
    pub async fn check_writable(&self) -> Result<(), String> {
        self.inner.log.check().await.map_err(|e| e.to_string())
    }

    fn finished_one(&self) {
        self.inner.finished_one();
    }
}

impl Inner {
    fn finished_one(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        self.metrics.notifications_pending.dec();
        self.idle.notify_waiters();
    }
}

async fn deliver_all(
    inner: Arc<Inner>,
    sender: http::Sender,
    mut rx: mpsc::UnboundedReceiver<PendingEntry>,
) {
    let sender = Arc::new(sender);
    let slots = Arc::new(Semaphore::new(DELIVERY_CONCURRENCY));
    let Some(outbox) = inner.outbox.clone() else {
        return;
    };
    // What an earlier run left pending (stopped, crashed, or the API was down) goes first.
    let left = match outbox.pending().await {
        Ok(left) => left,
        Err(e) => {
            tracing::error!(error = %e, "cannot read pending completions from the outbox");
            Vec::new()
        }
    };
    if !left.is_empty() {
        tracing::info!(
            count = left.len(),
            "re-sending completions left pending by an earlier run"
        );
    }
    inner.pending.fetch_add(left.len(), Ordering::AcqRel);
    inner
        .metrics
        .notifications_pending
        .add(i64::try_from(left.len()).unwrap_or(i64::MAX));
    let mut left = left.into_iter();
    loop {
        let entry = match left.next() {
            Some(entry) => entry,
            None => tokio::select! {
                entry = rx.recv() => match entry {
                    Some(entry) => entry,
                    None => break,
                },
                () = inner.stop.cancelled() => break,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let inner = inner.clone();
        let sender = sender.clone();
        let outbox = outbox.clone();
        tokio::spawn(async move {
            let delivery = sender.deliver(&entry, &inner.metrics);
            let (state, attempts, error) = tokio::select! {
                ended = delivery => ended,
                () = inner.stop.cancelled() => return, // still pending in the outbox
            };
            if let Err(e) = outbox.finish(&entry.id, state, attempts, error).await {
                // Left pending: sent once more after a restart (at least once, same id).
                tracing::error!(id = %entry.id, error = %e, "cannot record the delivery in the outbox");
            }
            inner.finished_one();
            drop(slot);
        });
    }
}
