//! The outbox in SQLite (`data_dir/outbox.sqlite3`): new entries, step progress and dead
//! letters are committed with `synchronous = FULL` (a committed entry survives power loss);
//! deliveries and retry schedules with `NORMAL`, whose loss in a power cut only means one
//! more (idempotent) attempt, saving an fsync per delivered entry.

use super::{Db, fields_of, fields_text};
use crate::state::{
    EntrySummary, OutboxStore, PendingEntry, State, StateCounts, StateError, now_ms,
};
use rusqlite::{OptionalExtension, params};
use std::path::Path;

/// File name of the outbox inside `data_dir`.
pub const OUTBOX_FILE: &str = "outbox.sqlite3";

/// The SQLite outbox; cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteOutbox {
    /// `synchronous = FULL`: new entries, step progress and dead letters.
    durable: Db,
    /// `synchronous = NORMAL`: deliveries and retry schedules.
    relaxed: Db,
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

impl SqliteOutbox {
    /// Opens (creating or upgrading) `data_dir/outbox.sqlite3`.
    pub fn open(data_dir: &Path) -> Result<SqliteOutbox, StateError> {
        let path = data_dir.join(OUTBOX_FILE);
        let durable = Db::open("outbox", &path, "FULL")?;
        durable.now(|c| {
            c.execute_batch(SCHEMA)?;
            let existing: Vec<String> = {
                let mut s = c.prepare("SELECT name FROM pragma_table_info('outbox')")?;
                let names = s.query_map([], |r| r.get(0))?;
                names.collect::<Result<_, _>>()?
            };
            for (column, definition) in ADDED_COLUMNS {
                if !existing.iter().any(|c| c == column) {
                    c.execute_batch(&format!(
                        "ALTER TABLE outbox ADD COLUMN {column} {definition}"
                    ))?;
                }
            }
            c.execute_batch(
                "UPDATE outbox SET since_ms = created_ms WHERE since_ms = 0;
                 DROP INDEX IF EXISTS outbox_state;
                 CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_ms);
                 CREATE INDEX IF NOT EXISTS outbox_changed ON outbox (state, updated_ms);",
            )
        })?;
        let relaxed = Db::open("outbox", &path, "NORMAL")?;
        Ok(SqliteOutbox { durable, relaxed })
    }

    /// The connection for a change: the durable one when it must survive power loss.
    fn db(&self, durable: bool) -> &Db {
        if durable {
            &self.durable
        } else {
            &self.relaxed
        }
    }
}

#[async_trait::async_trait]
impl OutboxStore for SqliteOutbox {
    async fn insert(&self, entry: PendingEntry) -> Result<(), StateError> {
        let now = now_ms();
        let fields = fields_text(&entry.fields);
        self.durable.run(move |c| {
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

    async fn insert_batch(&self, entries: Vec<PendingEntry>) -> Result<(), StateError> {
        let now = now_ms();
        self.durable
            .run(move |c| {
                // One transaction: one fsync for the whole batch.
                let tx = c.unchecked_transaction()?;
                {
                    let mut statement = tx.prepare_cached(
                        "INSERT OR IGNORE INTO outbox
                           (id, key, body, state, created_ms, updated_ms, next_attempt_ms, step, fields, since_ms)
                         VALUES (?1, ?2, ?3, 'pending', ?4, ?4, 0, 0, ?5, ?4)",
                    )?;
                    for entry in &entries {
                        let fields = fields_text(&entry.fields);
                        statement.execute(params![entry.id, entry.key, entry.body, now, fields])?;
                    }
                }
                tx.commit()
            })
            .await
    }

    async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.relaxed
            .run(move |c| {
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

    async fn claim(&self, id: &str, now_ms: i64) -> Result<Option<PendingEntry>, StateError> {
        let id = id.to_string();
        self.relaxed
            .run(move |c| {
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

    async fn next_due(&self) -> Result<Option<i64>, StateError> {
        self.relaxed
            .run(|c| {
                c.query_row(
                    "SELECT MIN(next_attempt_ms) FROM outbox WHERE state = 'pending'",
                    [],
                    |row| row.get(0),
                )
            })
            .await
    }

    async fn pending_summary(&self) -> Result<(usize, Option<i64>), StateError> {
        self.relaxed
            .run(|c| {
                c.query_row(
                    "SELECT COUNT(*), MIN(created_ms) FROM outbox WHERE state = 'pending'",
                    [],
                    |row| Ok((row.get::<_, i64>(0)? as usize, row.get(1)?)),
                )
            })
            .await
    }

    async fn advance(
        &self,
        id: &str,
        step: usize,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StateError> {
        let id = id.to_string();
        let fields = fields_text(fields);
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let now = now_ms();
        self.durable
            .run(move |c| {
                c.execute(
                    "UPDATE outbox SET step = ?2, fields = ?3, attempts = 0, updated_ms = ?4,
                   last_error = NULL WHERE id = ?1",
                    params![id, step, fields, now],
                )
                .map(|_| ())
            })
            .await
    }

    async fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_ms: i64,
        error: String,
    ) -> Result<(), StateError> {
        let id = id.to_string();
        let now = now_ms();
        self.relaxed
            .run(move |c| {
                c.execute(
                    "UPDATE outbox SET attempts = ?2, next_attempt_ms = ?3, updated_ms = ?4,
                   last_error = ?5 WHERE id = ?1 AND state = 'pending'",
                    params![id, attempts, next_attempt_ms, now, error],
                )
                .map(|_| ())
            })
            .await
    }

    async fn finish(
        &self,
        id: &str,
        state: State,
        attempts: u32,
        error: Option<String>,
    ) -> Result<(), StateError> {
        let id = id.to_string();
        let now = now_ms();
        self.db(state == State::Dead)
            .run(move |c| {
                c.execute(
                    "UPDATE outbox SET state = ?2, attempts = ?3, updated_ms = ?4, last_error = ?5
                 WHERE id = ?1",
                    params![id, state.as_str(), attempts, now, error],
                )
                .map(|_| ())
            })
            .await
    }

    async fn state_of(&self, id: &str) -> Result<Option<String>, StateError> {
        let id = id.to_string();
        self.relaxed
            .run(move |c| {
                c.query_row("SELECT state FROM outbox WHERE id = ?1", [id], |row| {
                    row.get(0)
                })
                .optional()
            })
            .await
    }

    async fn page(
        &self,
        state: Option<State>,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<EntrySummary>, StateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let state = state.map(State::as_str);
        let order = if newest {
            "updated_ms DESC, id DESC"
        } else {
            "created_ms, id"
        };
        self.relaxed
            .run(move |c| {
                let mut statement = c.prepare_cached(&format!(
                    "SELECT id, key, state, attempts, step, created_ms, next_attempt_ms, last_error,
                        updated_ms
                     FROM outbox WHERE ?1 IS NULL OR state = ?1 ORDER BY {order} LIMIT ?2"
                ))?;
                let rows = statement.query_map(params![state, limit], |row| {
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
                        updated_ms: row.get(8)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }

    async fn counts(&self) -> Result<StateCounts, StateError> {
        self.relaxed
            .run(|c| {
                let mut statement =
                    c.prepare("SELECT state, count(*) FROM outbox GROUP BY state")?;
                let rows = statement.query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })?;
                let mut counts = StateCounts::default();
                for row in rows {
                    let (state, n) = row?;
                    counts.add(&state, usize::try_from(n).unwrap_or(0));
                }
                Ok(counts)
            })
            .await
    }

    async fn retry(&self, id: Option<String>) -> Result<usize, StateError> {
        let now = now_ms();
        self.durable
            .run(move |c| match id {
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

    async fn check_writable(&self) -> Result<(), StateError> {
        self.durable
            .run(|c| c.execute_batch("BEGIN IMMEDIATE; ROLLBACK;"))
            .await
    }

    async fn purge_delivered(&self, before_ms: i64) -> Result<usize, StateError> {
        self.durable
            .run(move |c| {
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
        fields: fields_of(&fields),
        attempts: row.get(5)?,
        since_ms: row.get(6)?,
    })
}
