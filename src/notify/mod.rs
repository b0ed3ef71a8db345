//! Completion delivery: every completed upload is appended (fsynced) to the event log under
//! `data_dir`, then POSTed to `notify.url` by a worker that retries with backoff until the API
//! accepts it. Knows nothing about FTP or SFTP: it receives [`CompletedUpload`] records.

mod event_log;
mod http;
mod record;

pub use http::{Classification, classify};
pub use record::{CompletedUpload, UPLOAD_COMPLETED, new_event_id};

use crate::config::NotifyConfig;
use crate::metrics::Metrics;
use event_log::EventLog;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc};

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
    queue: Option<mpsc::UnboundedSender<Arc<CompletedUpload>>>,
    pending: AtomicUsize,
    idle: Notify,
    metrics: Metrics,
}

impl Notifier {
    /// Opens the event log in `data_dir` and starts the delivery worker when a URL is set.
    pub fn start(
        cfg: &NotifyConfig,
        data_dir: &Path,
        metrics: Metrics,
    ) -> Result<Notifier, NotifyError> {
        let log = EventLog::open(data_dir)?;
        let (queue, receiver) = match &cfg.url {
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let inner = Arc::new(Inner {
            log,
            queue,
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

    /// Records a completion durably (fsynced) and queues its delivery. Returns only when
    /// the record is on disk: the client may then be told the upload succeeded.
    pub async fn enqueue(&self, completion: CompletedUpload) -> Result<(), NotifyError> {
        self.inner.log.append(&completion).await?;
        if let Some(queue) = &self.inner.queue {
            self.inner.pending.fetch_add(1, Ordering::AcqRel);
            self.inner.metrics.notifications_pending.inc();
            if queue.send(Arc::new(completion)).is_err() {
                tracing::error!("notify worker has stopped; the completion stays in the event log");
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
    mut rx: mpsc::UnboundedReceiver<Arc<CompletedUpload>>,
) {
    let sender = Arc::new(sender);
    let slots = Arc::new(Semaphore::new(DELIVERY_CONCURRENCY));
    while let Some(completion) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let inner = inner.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            sender.deliver(&completion, &inner.metrics).await;
            inner.finished_one();
            drop(slot);
        });
    }
}
