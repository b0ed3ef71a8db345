//! Durable state behind traits, so that the rest of the bridge does not care where it lives:
//! the outbox of completions, the records of cut uploads (with their part marks and SHA-256
//! states), finished uploads under temporary names, quota usage, the defender's bans and
//! failed-login scores, and the directories clients made.
//!
//! One trait per kind of state, each object-safe (held as `Arc<dyn …>`) and async where the
//! work may block on a disk or a network. [`Stores`] bundles one implementation of each;
//! [`sqlite::open`] opens the default backend (SQLite files under `data_dir`, bans in
//! memory), [`postgres::open`] the one every replica shares (`[state] url = "postgres://…"`).
//! Every implementation must pass the shared contract tests in `conformance`.

mod bans;
#[cfg(test)]
pub mod conformance;
mod dirs;
pub mod memory;
mod outbox;
pub mod postgres;
pub mod sqlite;
mod uploads;

pub use bans::{BanEntry, BanStore, FailureScore};
pub use dirs::DirStore;
pub use outbox::{
    EntrySummary, OutboxStore, PendingEntry, State, StateCounts, WakeupSender, Wakeups, leased,
};
pub(crate) use uploads::Writing;
pub use uploads::{
    CutUploadStore, PartMark, PartialRecord, QuotaClaim, QuotaGrant, QuotaStore, QuotaTotals,
    TempNameStore, TempRecord,
};

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a store failed: which store, where, and the backend's own error as the cause.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The backend refused or failed an operation (or could not be opened).
    #[error("{store} {location}: {source}")]
    Backend {
        /// Which store ("outbox", "upload state").
        store: &'static str,
        /// Where it lives (a file path, a database URL without credentials).
        location: String,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The blocking task that ran the operation panicked or was cancelled.
    #[error("{store} {location}: {source}")]
    Task {
        /// Which store.
        store: &'static str,
        /// Where it lives.
        location: String,
        /// Why the task ended.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl StateError {
    /// A backend failure of `store` at `location`, caused by `source`.
    pub fn backend(
        store: &'static str,
        location: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StateError {
        StateError::Backend {
            store,
            location: location.into(),
            source: source.into(),
        }
    }

    /// What an operator should look at: the database of `state.url`, or the files.
    pub fn what_to_check(&self) -> &'static str {
        let location = match self {
            StateError::Backend { location, .. } | StateError::Task { location, .. } => location,
        };
        if location.starts_with("postgres://") {
            "Check that the database of state.url is reachable and accepts writes."
        } else {
            "Check free space and permissions of server.data_dir."
        }
    }

    /// Which store failed ("outbox", "upload state").
    pub fn store(&self) -> &'static str {
        match self {
            StateError::Backend { store, .. } | StateError::Task { store, .. } => store,
        }
    }
}

/// One implementation of every kind of durable state, as the server wires it.
#[derive(Clone, Debug)]
pub struct Stores {
    /// Completions waiting for the API; `None` when no connector is configured (no
    /// outbox is created then).
    pub outbox: Option<Arc<dyn OutboxStore>>,
    /// Cut (and running) uploads with their part marks and hash states.
    pub uploads: Arc<dyn CutUploadStore>,
    /// Finished uploads under temporary names, waiting for their rename.
    pub temp_names: Arc<dyn TempNameStore>,
    /// What each user with a quota stores.
    pub quota: Arc<dyn QuotaStore>,
    /// The defender's bans and failed-login scores.
    pub bans: Arc<dyn BanStore>,
    /// Directories clients made (`MKD`) that S3 cannot show while they hold no object.
    pub dirs: Arc<dyn DirStore>,
    /// Reachability of a shared database (for `/readyz` and metrics); `None` on SQLite,
    /// whose files the outbox and event-log checks already cover.
    pub health: Option<Arc<postgres::Health>>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
