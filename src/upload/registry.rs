//! The running-upload registry: one entry per key, so a resume from a new session can ask
//! the session still holding the upload (gone but not yet timed out) to let go, and wait
//! until it has; and the live figures of each running upload, for the admin API.

use super::live::{LiveTransfer, TransferView};
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
    /// What the operator sees of it.
    pub(super) live: Arc<LiveTransfer>,
}

/// An upload's place in the registry; leaving it (drop) tells waiters the upload ended.
pub(super) struct Registration {
    registry: Arc<Registry>,
    key: String,
    serial: u64,
    /// Cancelled when a resume from another session takes the upload over, or the operator
    /// closes its session.
    pub(super) preempt: CancellationToken,
    /// The figures the write path keeps up to date.
    pub(super) live: Arc<LiveTransfer>,
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
    /// Enters `live.key`, replacing any older entry of it.
    pub(super) fn register(self: &Arc<Self>, live: LiveTransfer) -> Registration {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed) + 1;
        let preempt = CancellationToken::new();
        let (done_tx, done_rx) = tokio::sync::watch::channel(());
        let live = Arc::new(live);
        let key = live.info.key.clone();
        self.running.lock().insert(
            key.clone(),
            Running {
                serial,
                preempt: preempt.clone(),
                done: done_rx,
                live: live.clone(),
            },
        );
        Registration {
            registry: self.clone(),
            key,
            serial,
            preempt,
            live,
            _done: done_tx,
        }
    }

    /// Every running upload, oldest first.
    pub(super) fn views(&self) -> Vec<TransferView> {
        let lives: Vec<Arc<LiveTransfer>> = self
            .running
            .lock()
            .values()
            .map(|r| r.live.clone())
            .collect();
        // Views are built outside the lock: a thousand of them never hold up a new upload.
        let mut views: Vec<(std::time::SystemTime, TransferView)> =
            lives.iter().map(|l| (l.started_at, l.view())).collect();
        views.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.info.id.cmp(&b.1.info.id)));
        views.into_iter().map(|(_, v)| v).collect()
    }

    /// How many uploads run, the bytes they hold and their rates together, without building
    /// a view of each.
    pub(super) fn totals(&self) -> (usize, u64, f64) {
        let running = self.running.lock();
        let bytes = running.values().map(|r| r.live.bytes()).sum();
        let rate = running.values().map(|r| r.live.rate()).sum();
        (running.len(), bytes, rate)
    }

    /// Running uploads of the connection `session_id`.
    pub(super) fn of_session(&self, session_id: &str) -> Vec<Running> {
        self.running
            .lock()
            .values()
            .filter(|r| r.live.info.session_id == session_id)
            .cloned()
            .collect()
    }

    /// How many uploads each connection runs, by session id.
    pub(super) fn per_session(&self) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for running in self.running.lock().values() {
            *counts
                .entry(running.live.info.session_id.clone())
                .or_insert(0) += 1;
        }
        counts
    }

    /// The running upload of `key`, if any.
    pub(super) fn get(&self, key: &str) -> Option<Running> {
        self.running.lock().get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Registry {
        fn register_key(self: &Arc<Self>, key: &str) -> Registration {
            self.register(crate::upload::live::tests::transfer(key, 0))
        }
    }

    #[test]
    fn views_list_every_running_upload_and_sessions_count_theirs() {
        let registry = Arc::new(Registry::default());
        let a = registry.register_key("u/a.bin");
        let _b = registry.register_key("u/b.bin");
        a.live.set_bytes(42);
        let views = registry.views();
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].info.key, "u/a.bin", "oldest first");
        assert_eq!(views[0].bytes, 42);
        assert_eq!(registry.totals().0, 2);
        assert_eq!(registry.totals().1, 42);
        assert_eq!(registry.per_session().get("session"), Some(&2));
        assert_eq!(registry.of_session("session").len(), 2);
        assert!(registry.of_session("other").is_empty());
        drop(a);
        assert_eq!(registry.views().len(), 1);
    }

    #[test]
    fn leaving_removes_the_entry() {
        let registry = Arc::new(Registry::default());
        let registration = registry.register_key("u/a.bin");
        assert!(registry.get("u/a.bin").is_some());
        drop(registration);
        assert!(registry.get("u/a.bin").is_none());
    }

    #[test]
    fn an_older_upload_leaving_keeps_the_newer_entry() {
        let registry = Arc::new(Registry::default());
        let older = registry.register_key("u/a.bin");
        let newer = registry.register_key("u/a.bin");
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
        let registration = registry.register_key("u/a.bin");
        let mut done = registry.get("u/a.bin").expect("registered").done;
        let waiter = tokio::spawn(async move { while done.changed().await.is_ok() {} });
        drop(registration);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is told")
            .expect("the waiter ran");
    }
}
