//! The outbox's contract: completions waiting for the API, each with its retry schedule
//! and, for multi-step connectors, the next step and the fields earlier steps extracted, so a
//! retry resumes where delivery stopped.

use super::StateError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

/// An entry's delivery state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not delivered yet.
    Pending,
    /// The API accepted it (or already had it).
    Delivered,
    /// The API refused it for good, or it stayed undeliverable past `notify.max_age`.
    Dead,
}

impl State {
    /// The name stored in the database and shown by `outbox list`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Delivered => "delivered",
            State::Dead => "dead",
        }
    }

    /// Parses a state name.
    pub fn parse(name: &str) -> Option<State> {
        match name {
            "pending" => Some(State::Pending),
            "delivered" => Some(State::Delivered),
            "dead" => Some(State::Dead),
            _ => None,
        }
    }
}

/// A completion to deliver: its id, the exact body, and where delivery stands.
#[derive(Debug, Clone)]
pub struct PendingEntry {
    /// The completion id (also the Idempotency-Key).
    pub id: String,
    /// Object key, for logs.
    pub key: String,
    /// The completion's JSON body.
    pub body: Vec<u8>,
    /// Index of the next step to run (0 for the first).
    pub step: usize,
    /// Fields extracted by the steps that already succeeded (and by `create`), as JSON.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Failed attempts of the current step so far.
    pub attempts: u32,
    /// When the current delivery began (creation, or the last `outbox retry`), in ms since the epoch.
    pub since_ms: i64,
}

/// One row, as the operator commands show it.
#[derive(Debug, Clone)]
pub struct EntrySummary {
    /// Completion id.
    pub id: String,
    /// Object key.
    pub key: String,
    /// Delivery state.
    pub state: String,
    /// Failed attempts of the current step.
    pub attempts: u32,
    /// Next step to run.
    pub step: usize,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// Next attempt, ms since the epoch (pending entries).
    pub next_attempt_ms: i64,
    /// Last change (for a delivered entry: its delivery), ms since the epoch.
    pub updated_ms: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// How many entries are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Not delivered yet.
    pub pending: usize,
    /// Refused for good or expired.
    pub dead: usize,
    /// Delivered (until purged).
    pub delivered: usize,
}

impl StateCounts {
    /// Adds `n` entries in the state stored as `state` (unknown names are ignored).
    pub fn add(&mut self, state: &str, n: usize) {
        match State::parse(state) {
            Some(State::Pending) => self.pending += n,
            Some(State::Dead) => self.dead += n,
            Some(State::Delivered) => self.delivered += n,
            None => {}
        }
    }
}

/// Completions waiting for the API; every method returns once its change is stored.
#[async_trait::async_trait]
pub trait OutboxStore: Send + Sync + std::fmt::Debug {
    /// Stores a new pending entry, due at once (an existing id is left as it is).
    async fn insert(&self, entry: PendingEntry) -> Result<(), StateError>;

    /// Stores many new pending entries as [`OutboxStore::insert`] does, in one durable
    /// write where the backend can (an imported backlog, a test's ten thousand entries).
    async fn insert_batch(&self, entries: Vec<PendingEntry>) -> Result<(), StateError> {
        for entry in entries {
            self.insert(entry).await?;
        }
        Ok(())
    }

    /// Ids of pending entries due by `now_ms`, soonest first, at most `limit`. The entries
    /// themselves are read by [`OutboxStore::claim`] when their delivery starts.
    async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StateError>;

    /// The entry as it stands now, if it is still pending and due: a delivery that ended
    /// while the scheduler read a batch must not run again.
    async fn claim(&self, id: &str, now_ms: i64) -> Result<Option<PendingEntry>, StateError>;

    /// When (ms since the epoch) a pending entry is next due for this store, if any: its
    /// next attempt, or the end of another process's claim on it (an entry leased elsewhere
    /// is not due here before that).
    async fn next_due(&self) -> Result<Option<i64>, StateError>;

    /// How many entries are pending, and the creation time of the oldest.
    async fn pending_summary(&self) -> Result<(usize, Option<i64>), StateError>;

    /// Records a step that succeeded: the next step and the fields so far (durably, so no
    /// platform sees the step again); resets the attempts and the last error.
    async fn advance(
        &self,
        id: &str,
        step: usize,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StateError>;

    /// Schedules the next attempt of a pending entry's current step.
    async fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_ms: i64,
        error: String,
    ) -> Result<(), StateError>;

    /// Records the end of an entry's delivery: `Delivered` or `Dead`.
    async fn finish(
        &self,
        id: &str,
        state: State,
        attempts: u32,
        error: Option<String>,
    ) -> Result<(), StateError>;

    /// The state name of one entry, if it exists.
    async fn state_of(&self, id: &str) -> Result<Option<String>, StateError>;

    /// Entries in `state` (all when `None`), oldest first (then by id).
    async fn list(&self, state: Option<State>) -> Result<Vec<EntrySummary>, StateError> {
        self.page(state, usize::MAX, false).await
    }

    /// At most `limit` entries in `state` (all states when `None`): the oldest first (then
    /// by id), or, with `newest`, the most recently changed first (the last deliveries).
    async fn page(
        &self,
        state: Option<State>,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<EntrySummary>, StateError>;

    /// How many entries are in each state.
    async fn counts(&self) -> Result<StateCounts, StateError> {
        let mut counts = StateCounts::default();
        for entry in self.list(None).await? {
            counts.add(&entry.state, 1);
        }
        Ok(counts)
    }

    /// Puts entries back to pending, due now, with a fresh `max_age`: one id (unless
    /// delivered), or every dead entry. Returns how many changed.
    async fn retry(&self, id: Option<String>) -> Result<usize, StateError>;

    /// Whether new entries can be committed now (for the readiness check).
    async fn check_writable(&self) -> Result<(), StateError>;

    /// Deletes delivered entries last updated before `before_ms`. Returns how many.
    async fn purge_delivered(&self, before_ms: i64) -> Result<usize, StateError>;

    /// How long a claim keeps other processes off an entry where claims are leases (a
    /// shared database); `None` where one process owns the outbox and claims never lapse.
    fn lease(&self) -> Option<Duration> {
        None
    }

    /// Extends this store's claim on `id` by a whole lease. `Ok(false)`: the claim is no
    /// longer this store's (it lapsed and another process took it, or it was released).
    async fn renew(&self, _id: &str) -> Result<bool, StateError> {
        Ok(true)
    }

    /// Releases every claim this store holds, so other processes take the entries at once
    /// (a clean stop). Returns how many.
    async fn release_claims(&self) -> Result<usize, StateError> {
        Ok(0)
    }

    /// Starts listening for other processes' changes that make entries due (an insert, an
    /// operator's retry, a released claim); `None` where no other process shares the
    /// outbox. Each call starts its own listener, which stops when the last clone of the
    /// returned [`Wakeups`] is dropped.
    fn wakeups(&self) -> Option<Wakeups> {
        None
    }
}

/// Word from the other processes sharing an outbox that an entry may have become due:
/// an idle delivery worker waits on [`Wakeups::changed`] besides its own timers.
#[derive(Clone, Debug)]
pub struct Wakeups {
    notify: Arc<Notify>,
    live: Arc<AtomicBool>,
    /// Stops the listener when the last clone goes.
    _listener: Arc<DropGuard>,
}

impl Wakeups {
    /// Wake-ups fed through the returned [`WakeupSender`]; `stop` is cancelled when the last
    /// clone of these wake-ups is dropped, so the listener feeding them can end.
    pub fn new(stop: CancellationToken) -> (Wakeups, WakeupSender) {
        let notify = Arc::new(Notify::new());
        let live = Arc::new(AtomicBool::new(false));
        let sender = WakeupSender {
            notify: notify.clone(),
            live: live.clone(),
        };
        let wakeups = Wakeups {
            notify,
            live,
            _listener: Arc::new(stop.drop_guard()),
        };
        (wakeups, sender)
    }

    /// Returns at the next wake-up (at once if one came since the last call returned).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    /// Whether wake-ups arrive now; while they do not, the worker must poll.
    pub fn live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }
}

/// The listener's side of [`Wakeups`].
#[derive(Clone, Debug)]
pub struct WakeupSender {
    notify: Arc<Notify>,
    live: Arc<AtomicBool>,
}

impl WakeupSender {
    /// Wakes the worker (one stored wake-up if it is busy, so nothing is missed).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Records whether wake-ups arrive; becoming live also wakes the worker, to look at
    /// what changed while they did not.
    pub fn set_live(&self, live: bool) {
        if !self.live.swap(live, Ordering::AcqRel) && live {
            self.wake();
        }
    }
}

/// Runs `work` (one entry's delivery) while keeping `store`'s claim on `id` alive: renewed
/// every third of the lease, so a slow API or a long multi-step delivery is never taken
/// over by another process while this one is alive.
pub async fn leased<T>(
    store: &dyn OutboxStore,
    id: &str,
    work: impl std::future::Future<Output = T>,
) -> T {
    let Some(lease) = store.lease() else {
        return work.await;
    };
    let heartbeat = async {
        let every = (lease / 3).max(Duration::from_millis(10));
        let mut warned = false;
        loop {
            tokio::time::sleep(every).await;
            match store.renew(id).await {
                Ok(true) => warned = false,
                Ok(false) if !warned => {
                    warned = true;
                    tracing::warn!(
                        id,
                        "the claim on this completion lapsed; another replica may deliver it too (at least once, same id)"
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(id, error = %e, "cannot renew the claim on this completion; another replica may take it over when it lapses");
                }
            }
        }
    };
    tokio::pin!(work);
    tokio::select! {
        out = &mut work => out,
        () = heartbeat => work.await,
    }
}
