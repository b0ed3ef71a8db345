//! The outbox: completions waiting for the API, in SQLite under `data_dir`, so that none is
//! lost when the bridge restarts, crashes or the API is down for days.
//!
//! SQLite (rusqlite, bundled) rather than redb: one file an operator can inspect with the
//! `sqlite3` tool, WAL journaling with `synchronous = FULL` (a committed entry survives power
//! loss), and queries by state and age for the operator commands.

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
    /// The API refused it for good; kept for an operator.
    Dead,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Delivered => "delivered",
            State::Dead => "dead",
        }
    }
}

/// A completion not yet delivered: its id and the exact body to send.
#[derive(Debug, Clone)]
pub struct PendingEntry {
    /// The completion id (also the Idempotency-Key).
    pub id: String,
    /// Object key, for logs.
    pub key: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

/// The SQLite outbox; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl Outbox {
    /// Opens (creating) `data_dir/outbox.sqlite3`.
    pub fn open(data_dir: &Path) -> Result<Outbox, NotifyError> {
        let path = data_dir.join(OUTBOX_FILE);
        let err = |e: rusqlite::Error| NotifyError::Outbox {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS outbox (
                id TEXT PRIMARY KEY,
                key TEXT NOT NULL,
                body BLOB NOT NULL,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                created_ms INTEGER NOT NULL,
                updated_ms INTEGER NOT NULL,
                last_error TEXT
            );
            CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, created_ms);",
        )
        .map_err(err)?;
        Ok(Outbox {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection in a blocking thread (SQLite commits fsync).
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, NotifyError> {
        let conn = self.conn.clone();
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

    /// Stores a new pending entry; returns once it is committed to disk.
    pub async fn insert(&self, entry: PendingEntry) -> Result<(), NotifyError> {
        let now = now_ms();
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO outbox (id, key, body, state, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?4)",
                params![entry.id, entry.key, entry.body, now],
            )
            .map(|_| ())
        })
        .await
    }

    /// Every pending entry, oldest first (delivered again after a restart).
    pub async fn pending(&self) -> Result<Vec<PendingEntry>, NotifyError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT id, key, body FROM outbox WHERE state = 'pending' ORDER BY created_ms",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(PendingEntry {
                    id: row.get(0)?,
                    key: row.get(1)?,
                    body: row.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Records the end of an entry's delivery: `Delivered` or `Dead`, after `attempts` tries.
    pub async fn finish(
        &self,
        id: &str,
        state: State,
        attempts: u32,
        error: Option<String>,
    ) -> Result<(), NotifyError> {
        let id = id.to_string();
        let now = now_ms();
        self.with(move |c| {
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
        self.with(move |c| {
            c.query_row("SELECT state FROM outbox WHERE id = ?1", [id], |row| {
                row.get(0)
            })
            .optional()
        })
        .await
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
