//! The running-upload registry: one entry per key, so a resume from a new session can ask
//! the session still holding the upload (gone but not yet timed out) to let go, and wait
//! until it has.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;

/// Running uploads by key.
#[derive(Default)]
pub(super) struct Registry {
    running: Mutex<HashMap<String, Running>>,
    next_serial: AtomicU64,
}

/// A running upload as the registry sees it.
#[derive(Clone)]
pub(super) struct Running {
    /// Tells entries apart when a newer upload of the same key replaced this one.
    serial: u64,
    /// Cancelled to ask the upload to stop, keeping its parts.
    pub(super) preempt: CancellationToken,
    /// Closed once the upload and its clean-up have ended.
    pub(super) done: tokio::sync::watch::Receiver<()>,
}

/// An upload's place in the registry; leaving it (drop) tells waiters the upload ended.
pub(super) struct Registration {
    registry: Arc<Registry>,
    key: String,
    serial: u64,
    /// Cancelled when a resume from another session takes the upload over.
    pub(super) preempt: CancellationToken,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut running = self.registry.running.lock();
        // A newer upload of the same key may have replaced this entry: leave that one be.
        if running
            .get(&self.key)
            .is_some_and(|r| r.serial == self.serial)
        {
            running.remove(&self.key);
        }
    }
}

impl Registry {
    /// Enters `key`, replacing any older entry of it.
    pub(super) fn register(self: &Arc<Self>, key: &str) -> Registration {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed) + 1;
        let preempt = CancellationToken::new();
        let (done_tx, done_rx) = tokio::sync::watch::channel(());
        self.running.lock().insert(
            key.to_string(),
            Running {
                serial,
                preempt: preempt.clone(),
                done: done_rx,
            },
        );
        Registration {
            registry: self.clone(),
            key: key.to_string(),
            serial,
            preempt,
            _done: done_tx,
        }
    }

    /// The running upload of `key`, if any.
    pub(super) fn get(&self, key: &str) -> Option<Running> {
        self.running.lock().get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaving_removes_the_entry() {
        let registry = Arc::new(Registry::default());
        let registration = registry.register("u/a.bin");
        assert!(registry.get("u/a.bin").is_some());
        drop(registration);
        assert!(registry.get("u/a.bin").is_none());
    }

    #[test]
    fn an_older_upload_leaving_keeps_the_newer_entry() {
        let registry = Arc::new(Registry::default());
        let older = registry.register("u/a.bin");
        let newer = registry.register("u/a.bin");
        drop(older);
        let running = registry
            .get("u/a.bin")
            .expect("the newer upload is still registered");
        running.preempt.cancel();
        assert!(
            newer.preempt.is_cancelled(),
            "the entry is the newer upload's"
        );
    }

    #[tokio::test]
    async fn waiters_hear_when_the_upload_ends() {
        let registry = Arc::new(Registry::default());
        let registration = registry.register("u/a.bin");
        let mut done = registry.get("u/a.bin").expect("registered").done;
        let waiter = tokio::spawn(async move { while done.changed().await.is_ok() {} });
        drop(registration);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is told")
            .expect("the waiter ran");
    }
}
