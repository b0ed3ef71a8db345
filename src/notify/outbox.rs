//! The outbox: completions waiting for the API, in SQLite under `data_dir`, so that none is
//! lost when the bridge restarts, crashes or the API is down for days. It also holds each
//! entry's retry schedule and, for multi-step connectors, the next step to run and the
//! fields earlier steps extracted, so a retry resumes where delivery stopped.
//!
//! SQLite (rusqlite, bundled) rather than redb: one file an operator can inspect with the
//! `sqlite3` tool, WAL journaling with `synchronous = FULL` (a committed entry survives power
//! loss), and queries by state and due time for the scheduler and the operator commands.

use super::NotifyError;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// File name of the outbox inside `data_dir`.
pub const OUTBOX_FILE: &str = "outbox.sqlite3";

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

/// The SQLite outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    path: PathBuf,
    /// `synchronous = FULL`: new entries, step progress and dead letters.
    durable: Arc<Mutex<Connection>>,
    /// `synchronous = NORMAL`: deliveries and retry schedules, whose loss in a power cut
    /// only means one more (idempotent) attempt; saves an fsync per delivered entry.
    relaxed: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS outbox (
        id TEXT PRIMARY KEY,
        key TEXT NOT NULL,
        body BLOB NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        last_error TEXT
    );";

/// Columns added after the first release, with their definitions (added when missing).
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("next_attempt_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("step", "INTEGER NOT NULL DEFAULT 0"),
    ("fields", "TEXT NOT NULL DEFAULT '{}'"),
    ("since_ms", "INTEGER NOT NULL DEFAULT 0"),
];

impl Outbox {
    /// Opens (creating or upgrading) `data_dir/outbox.sqlite3`.
    pub fn open(data_dir: &Path) -> Result<Outbox, NotifyError> {
        let path = data_dir.join(OUTBOX_FILE);
        let err = |e: rusqlite::Error| NotifyError::Outbox {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let durable = connect(&path, "FULL").map_err(err)?;
        durable.execute_batch(SCHEMA).map_err(err)?;
        let existing: Vec<String> = {
            let mut s = durable
                .prepare("SELECT name FROM pragma_table_info('outbox')")
                .map_err(err)?;
            let names = s.query_map([], |r| r.get(0)).map_err(err)?;
            names.collect::<Result<_, _>>().map_err(err)?
        };
        for (column, definition) in ADDED_COLUMNS {
            if !existing.iter().any(|c| c == column) {
                durable
                    .execute_batch(&format!(
                        "ALTER TABLE outbox ADD COLUMN {column} {definition}"
                    ))
                    .map_err(err)?;
            }
        }
        durable
            .execute_batch(
                "UPDATE outbox SET since_ms = created_ms WHERE since_ms = 0;
                 DROP INDEX IF EXISTS outbox_state;
                 CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_ms);",
            )
            .map_err(err)?;
        let relaxed = connect(&path, "NORMAL").map_err(err)?;
        Ok(Outbox {
            path,
            durable: Arc::new(Mutex::new(durable)),
            relaxed: Arc::new(Mutex::new(relaxed)),
        })
    }

    /// Runs `f` on a connection in a blocking thread (SQLite commits fsync).
    async fn with<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, NotifyError> {
        let conn = if durable {
            self.durable.clone()
        } else {
            self.relaxed.clone()
        };
        let path = self.path.display().to_string();
        let fail = |message: String| NotifyError::Outbox {
            path: path.clone(),
            message,
        };
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| "the outbox lock is poisoned".to_string())?;
            f(&conn).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(fail)
    }

    /// Stores a new pending entry, due at once; returns once it is committed to disk.
    pub async fn insert(&self, entry: PendingEntry) -> Result<(), NotifyError> {
        let now = now_ms();
        let fields = serde_json::Value::Object(entry.fields).to_string();
        self.with(true, move |c| {
            c.execute(
                "INSERT OR IGNORE INTO outbox
                   (id, key, body, state, created_ms, updated_ms, next_attempt_ms, step, fields, since_ms)
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?4, 0, 0, ?5, ?4)",
                params![entry.id, entry.key, entry.body, now, fields],
            )
            .map(|_| ())
        })
        .await
    }

    /// Ids of pending entries due by `now_ms`, soonest first, at most `limit`. The rows
    /// themselves are read by [`Outbox::claim`] when their delivery starts.
    pub async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, NotifyError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(false, move |c| {
            let mut statement = c.prepare_cached(
                "SELECT id FROM outbox
                 WHERE state = 'pending' AND next_attempt_ms <= ?1
                 ORDER BY next_attempt_ms LIMIT ?2",
            )?;
            let rows = statement.query_map(params![now_ms, limit], |row| row.get(0))?;
            rows.collect()
        })
        .await
    }

    /// The entry as it stands now, if it is still pending and due: a delivery that ended
    /// while the scheduler read a batch must not run again.
    pub async fn claim(&self, id: &str, now_ms: i64) -> Result<Option<PendingEntry>, NotifyError> {
        let id = id.to_string();
        self.with(false, move |c| {
            c.query_row(
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM outbox
                     WHERE id = ?1 AND state = 'pending' AND next_attempt_ms <= ?2"
                ),
                params![id, now_ms],
                entry_of_row,
            )
            .optional()
        })
        .await
    }

    /// The earliest `next_attempt_ms` of a pending entry, if any.
    pub async fn next_due(&self) -> Result<Option<i64>, NotifyError> {
        self.with(false, |c| {
            c.query_row(
                "SELECT MIN(next_attempt_ms) FROM outbox WHERE state = 'pending'",
                [],
                |row| row.get(0),
            )
        })
        .await
    }

    /// How many entries are pending, and the creation time of the oldest.
    pub async fn pending_summary(&self) -> Result<(usize, Option<i64>), NotifyError> {
        self.with(false, |c| {
            c.query_row(
                "SELECT COUNT(*), MIN(created_ms) FROM outbox WHERE state = 'pending'",
                [],
                |row| Ok((row.get::<_, i64>(0)? as usize, row.get(1)?)),
            )
        })
        .await
    }

    /// Records a step that succeeded: the next step and the fields so far (durably, so no
    /// platform sees the step again).
    pub async fn advance(
        &self,
        id: &str,
        step: usize,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), NotifyError> {
        let id = id.to_string();
        let fields = serde_json::Value::Object(fields.clone()).to_string();
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let now = now_ms();
        self.with(true, move |c| {
            c.execute(
                "UPDATE outbox SET step = ?2, fields = ?3, attempts = 0, updated_ms = ?4,
                   last_error = NULL WHERE id = ?1",
                params![id, step, fields, now],
            )
            .map(|_| ())
        })
        .await
    }

    /// Schedules the next attempt of an entry's current step.
    pub async fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_ms: i64,
        error: String,
    ) -> Result<(), NotifyError> {
        let id = id.to_string();
        let now = now_ms();
        self.with(false, move |c| {
            c.execute(
                "UPDATE outbox SET attempts = ?2, next_attempt_ms = ?3, updated_ms = ?4,
                   last_error = ?5 WHERE id = ?1 AND state = 'pending'",
                params![id, attempts, next_attempt_ms, now, error],
            )
            .map(|_| ())
        })
        .await
    }

    /// Records the end of an entry's delivery: `Delivered` or `Dead`.
    pub async fn finish(
        &self,
        id: &str,
        state: State,
        attempts: u32,
        error: Option<String>,
    ) -> Result<(), NotifyError> {
        let id = id.to_string();
        let now = now_ms();
        self.with(state == State::Dead, move |c| {
            c.execute(
                "UPDATE outbox SET state = ?2, attempts = ?3, updated_ms = ?4, last_error = ?5
                 WHERE id = ?1",
                params![id, state.as_str(), attempts, now, error],
            )
            .map(|_| ())
        })
        .await
    }

    /// The state of one entry, if it exists.
    pub async fn state_of(&self, id: &str) -> Result<Option<String>, NotifyError> {
        let id = id.to_string();
        self.with(false, move |c| {
            c.query_row("SELECT state FROM outbox WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()
        })
        .await
    }

    /// Entries in `state` (all when `None`), oldest first.
    pub async fn list(&self, state: Option<State>) -> Result<Vec<EntrySummary>, NotifyError> {
        let state = state.map(State::as_str);
        self.with(false, move |c| {
            let mut statement = c.prepare(
                "SELECT id, key, state, attempts, step, created_ms, next_attempt_ms, last_error
                 FROM outbox WHERE ?1 IS NULL OR state = ?1 ORDER BY created_ms, id",
            )?;
            let rows = statement.query_map([state], |row| {
                let step: i64 = row.get(4)?;
                Ok(EntrySummary {
                    id: row.get(0)?,
                    key: row.get(1)?,
                    state: row.get(2)?,
                    attempts: row.get(3)?,
                    step: usize::try_from(step).unwrap_or(0),
                    created_ms: row.get(5)?,
                    next_attempt_ms: row.get(6)?,
                    last_error: row.get(7)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Puts entries back to pending, due now, with a fresh `max_age`: one id, or every dead
    /// entry. Returns how many changed.
    pub async fn retry(&self, id: Option<String>) -> Result<usize, NotifyError> {
        let now = now_ms();
        self.with(true, move |c| match id {
            Some(id) => c.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_ms = 0,
                   since_ms = ?2, updated_ms = ?2 WHERE id = ?1 AND state != 'delivered'",
                params![id, now],
            ),
            None => c.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_ms = 0,
                   since_ms = ?1, updated_ms = ?1 WHERE state = 'dead'",
                params![now],
            ),
        })
        .await
    }

    /// Takes the write lock and lets it go: can new entries be committed?
    pub async fn check_writable(&self) -> Result<(), NotifyError> {
        self.with(true, |c| c.execute_batch("BEGIN IMMEDIATE; ROLLBACK;"))
            .await
    }

    /// Deletes delivered entries last updated before `before_ms`. Returns how many.
    pub async fn purge_delivered(&self, before_ms: i64) -> Result<usize, NotifyError> {
        self.with(true, move |c| {
            c.execute(
                "DELETE FROM outbox WHERE state = 'delivered' AND updated_ms < ?1",
                [before_ms],
            )
        })
        .await
    }
}

const ENTRY_COLUMNS: &str = "id, key, body, step, fields, attempts, since_ms";

fn entry_of_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PendingEntry> {
    let fields: String = row.get(4)?;
    let step: i64 = row.get(3)?;
    Ok(PendingEntry {
        id: row.get(0)?,
        key: row.get(1)?,
        // Text or blob: an operator may have edited the row with the sqlite3 tool.
        body: row
            .get_ref(2)?
            .as_bytes()
            .map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    2,
                    rusqlite::types::Type::Blob,
                    Box::new(e),
                )
            })?
            .to_vec(),
        step: usize::try_from(step).unwrap_or(0),
        fields: serde_json::from_str(&fields).unwrap_or_default(),
        attempts: row.get(5)?,
        since_ms: row.get(6)?,
    })
}

fn connect(path: &Path, synchronous: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
