//! The outbox's contract: completions waiting for the API, each with its retry schedule
//! and, for multi-step connectors, the next step and the fields earlier steps extracted, so a
//! retry resumes where delivery stopped.

use super::StateError;

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
    /// Why the last attempt failed.
    pub last_error: Option<String>,
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

    /// The earliest next attempt (ms since the epoch) of a pending entry, if any.
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
    async fn list(&self, state: Option<State>) -> Result<Vec<EntrySummary>, StateError>;

    /// Puts entries back to pending, due now, with a fresh `max_age`: one id (unless
    /// delivered), or every dead entry. Returns how many changed.
    async fn retry(&self, id: Option<String>) -> Result<usize, StateError>;

    /// Whether new entries can be committed now (for the readiness check).
    async fn check_writable(&self) -> Result<(), StateError>;

    /// Deletes delivered entries last updated before `before_ms`. Returns how many.
    async fn purge_delivered(&self, before_ms: i64) -> Result<usize, StateError>;
}
