//! The outbox in PostgreSQL: the `outbox` table, shared by every replica. Commits are
//! durable (the server's `synchronous_commit`), so a stored entry survives a crash.
//!
//! Several replicas deliver from one table, so a claim is a lease: `claim` takes the row
//! with `FOR UPDATE SKIP LOCKED` (a replica claiming it at the same moment gets nothing
//! rather than waiting) and records this store as `claimed_by` until `claimed_until_ms`.
//! Other replicas neither list (`due`) nor claim a leased entry until the lease ends, and
//! their `next_due` is the lease's end — so a dead replica's entries are taken over
//! after [`LEASE_MS`]. The same store may claim its own entry again, as the contract (and
//! SQLite) allow. A retry schedule, an end state or an operator's retry releases the
//! lease; so does a clean stop ([`OutboxStore::release_claims`]), for every claim the
//! stopping replica still holds, so another replica takes them at once.
//!
//! The lease is 60 s. A delivery renews it every third of that while it runs (the worker
//! wraps each delivery in [`crate::state::leased`]), and each step that succeeds renews it
//! too, so a live replica keeps its entry however slow the API or however many steps and
//! token fetches a connector makes; the lease only has to outlast two missed renewals
//! (a database round trip stalled for 40 s), and a crashed replica's entries wait at most
//! a minute instead of the five minutes a lease long enough for any delivery would need.
//! Replicas compare leases with their own clocks, so clocks a few seconds apart only move
//! a takeover by as much.
//!
//! Changes that make an entry due to others (an insert, a retry, a reschedule, a release)
//! `pg_notify` in the same statement, delivered at commit to every replica's listener
//! ([`super::listener`]).

use super::listener::{self, CHANNEL};
use super::{Pg, fields_of, fields_text};
use crate::state::{
    EntrySummary, OutboxStore, PendingEntry, State, StateCounts, StateError, Wakeups, now_ms,
};
use std::time::Duration;
use tokio_postgres::Row;

/// The store name in errors.
const STORE: &str = "outbox";

/// How long a claim keeps other replicas off an entry; a running delivery renews it every
/// third of that, and each step that succeeds renews it too.
pub const LEASE_MS: i64 = 60 * 1000;

/// The shared outbox; cheap to clone.
#[derive(Clone, Debug)]
pub struct PgOutbox {
    pg: Pg,
    /// This store's name in `claimed_by`: unique per opening, so a restarted replica does
    /// not mistake an older run's lease for its own.
    owner: String,
    /// How long a claim lasts, in ms ([`LEASE_MS`] but in tests).
    lease_ms: i64,
}

impl PgOutbox {
    /// The outbox in `pg`'s database (already migrated).
    pub(super) fn new(pg: Pg) -> PgOutbox {
        PgOutbox {
            pg,
            owner: uuid::Uuid::now_v7().to_string(),
            lease_ms: LEASE_MS,
        }
    }

    /// This outbox with claims lasting `lease` (tests: a delivery outlasting its lease).
    #[cfg(test)]
    pub(super) fn with_lease(mut self, lease: Duration) -> PgOutbox {
        self.lease_ms = i64::try_from(lease.as_millis()).unwrap_or(LEASE_MS);
        self
    }

    /// This store's name in `claimed_by`.
    #[cfg(test)]
    pub(super) fn owner(&self) -> &str {
        &self.owner
    }

    fn err(&self, e: tokio_postgres::Error) -> StateError {
        self.pg.error(STORE, e)
    }

    /// Runs one statement and returns the rows it changed.
    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StateError> {
        let client = self.pg.client(STORE).await?;
        // Prepared once per connection: one round trip per statement, not two.
        let statement = client.prepare_cached(sql).await.map_err(|e| self.err(e))?;
        client
            .execute(&statement, params)
            .await
            .map_err(|e| self.err(e))
    }

    /// Runs one query and returns its rows.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StateError> {
        let client = self.pg.client(STORE).await?;
        let statement = client.prepare_cached(sql).await.map_err(|e| self.err(e))?;
        client
            .query(&statement, params)
            .await
            .map_err(|e| self.err(e))
    }
}

/// The columns [`entry_of_row`] reads, in order.
const ENTRY_COLUMNS: &str = "id, key, body, step, fields, attempts, since_ms";

fn entry_of_row(row: &Row) -> Result<PendingEntry, tokio_postgres::Error> {
    let fields: String = row.try_get(4)?;
    Ok(PendingEntry {
        id: row.try_get(0)?,
        key: row.try_get(1)?,
        body: row.try_get(2)?,
        step: usize::try_from(row.try_get::<_, i64>(3)?).unwrap_or(0),
        fields: fields_of(&fields),
        attempts: u32::try_from(row.try_get::<_, i64>(5)?).unwrap_or(u32::MAX),
        since_ms: row.try_get(6)?,
    })
}

/// Stores a new entry (an existing id is left alone); wrapped in [`notifying`], so the other
/// replicas hear of it at commit in the same round trip.
const INSERT: &str = "INSERT INTO outbox
        (id, key, body, state, created_ms, updated_ms, next_attempt_ms, step, fields, since_ms)
     VALUES ($1, $2, $3, 'pending', $4, $4, 0, 0, $5, $4)
     ON CONFLICT (id) DO NOTHING";

/// `pg_notify` of the changed rows of a data-modifying `changed` CTE: one notification at
/// commit however many rows (PostgreSQL folds identical ones), none when nothing changed.
/// The payload is the notifying store's owner name (a UUID, safe in a literal), so its own
/// replica's listener can skip it: that replica woke its workers itself.
fn notifying(changed: &str, owner: &str) -> String {
    format!(
        "WITH changed AS ({changed} RETURNING 1) SELECT pg_notify('{CHANNEL}', '{owner}') FROM changed"
    )
}

#[async_trait::async_trait]
impl OutboxStore for PgOutbox {
    async fn insert(&self, entry: PendingEntry) -> Result<(), StateError> {
        let fields = fields_text(&entry.fields);
        self.execute(
            &notifying(INSERT, &self.owner),
            &[&entry.id, &entry.key, &entry.body, &now_ms(), &fields],
        )
        .await
        .map(|_| ())
    }

    async fn insert_batch(&self, entries: Vec<PendingEntry>) -> Result<(), StateError> {
        let now = now_ms();
        let mut client = self.pg.client(STORE).await?;
        // One transaction: one commit (one WAL flush) for the whole batch.
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        let statement = tx
            .prepare(&notifying(INSERT, &self.owner))
            .await
            .map_err(|e| self.err(e))?;
        for entry in &entries {
            let fields = fields_text(&entry.fields);
            tx.execute(
                &statement,
                &[&entry.id, &entry.key, &entry.body, &now, &fields],
            )
            .await
            .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<String>, StateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "SELECT id FROM outbox
                 WHERE state = 'pending' AND next_attempt_ms <= $1
                   AND (claimed_by IS NULL OR claimed_by = $3 OR claimed_until_ms <= $1)
                 ORDER BY next_attempt_ms LIMIT $2",
                &[&now_ms, &limit, &self.owner],
            )
            .await?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    async fn claim(&self, id: &str, now_ms: i64) -> Result<Option<PendingEntry>, StateError> {
        let until = now_ms.saturating_add(self.lease_ms);
        let rows = self
            .query(
                &format!(
                    "UPDATE outbox SET claimed_by = $3, claimed_until_ms = $4
                     WHERE id = (
                         SELECT id FROM outbox
                         WHERE id = $1 AND state = 'pending' AND next_attempt_ms <= $2
                           AND (claimed_by IS NULL OR claimed_by = $3 OR claimed_until_ms <= $2)
                         FOR UPDATE SKIP LOCKED)
                     RETURNING {ENTRY_COLUMNS}"
                ),
                &[&id, &now_ms, &self.owner, &until],
            )
            .await?;
        rows.first()
            .map(entry_of_row)
            .transpose()
            .map_err(|e| self.err(e))
    }

    async fn next_due(&self) -> Result<Option<i64>, StateError> {
        let rows = self
            .query(
                "SELECT MIN(CASE WHEN claimed_by != $1 AND claimed_until_ms > next_attempt_ms
                                 THEN claimed_until_ms ELSE next_attempt_ms END)
                 FROM outbox WHERE state = 'pending'",
                &[&self.owner],
            )
            .await?;
        match rows.first() {
            Some(row) => row.try_get(0).map_err(|e| self.err(e)),
            None => Ok(None),
        }
    }

    async fn pending_summary(&self) -> Result<(usize, Option<i64>), StateError> {
        let rows = self
            .query(
                "SELECT COUNT(*), MIN(created_ms) FROM outbox WHERE state = 'pending'",
                &[],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok((0, None));
        };
        let count: i64 = row.try_get(0).map_err(|e| self.err(e))?;
        let oldest: Option<i64> = row.try_get(1).map_err(|e| self.err(e))?;
        Ok((usize::try_from(count).unwrap_or(0), oldest))
    }

    async fn advance(
        &self,
        id: &str,
        step: usize,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), StateError> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let now = now_ms();
        // The delivery goes on with the next step: its lease is renewed.
        self.execute(
            "UPDATE outbox SET step = $2, fields = $3, attempts = 0, updated_ms = $4,
                last_error = NULL,
                claimed_until_ms = CASE WHEN claimed_by = $5 THEN $6 ELSE claimed_until_ms END
             WHERE id = $1",
            &[
                &id,
                &step,
                &fields_text(fields),
                &now,
                &self.owner,
                &now.saturating_add(self.lease_ms),
            ],
        )
        .await
        .map(|_| ())
    }

    async fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_ms: i64,
        error: String,
    ) -> Result<(), StateError> {
        // Released, and due again at `next_attempt_ms` for every replica: the others look
        // at their schedule again (it may be sooner than the lease they were waiting for).
        self.execute(
            &notifying(
                "UPDATE outbox SET attempts = $2, next_attempt_ms = $3, updated_ms = $4,
                    last_error = $5, claimed_by = NULL, claimed_until_ms = NULL
                 WHERE id = $1 AND state = 'pending'",
                &self.owner,
            ),
            &[
                &id,
                &i64::from(attempts),
                &next_attempt_ms,
                &now_ms(),
                &error,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn finish(
        &self,
        id: &str,
        state: State,
        attempts: u32,
        error: Option<String>,
    ) -> Result<(), StateError> {
        self.execute(
            "UPDATE outbox SET state = $2, attempts = $3, updated_ms = $4, last_error = $5,
                claimed_by = NULL, claimed_until_ms = NULL
             WHERE id = $1",
            &[
                &id,
                &state.as_str(),
                &i64::from(attempts),
                &now_ms(),
                &error,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn state_of(&self, id: &str) -> Result<Option<String>, StateError> {
        let rows = self
            .query("SELECT state FROM outbox WHERE id = $1", &[&id])
            .await?;
        rows.first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(|e| self.err(e))
    }

    async fn page(
        &self,
        state: Option<State>,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<EntrySummary>, StateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let state = state.map(State::as_str);
        let sql = if newest {
            "SELECT id, key, state, attempts, step, created_ms, next_attempt_ms, last_error,
                updated_ms
             FROM outbox WHERE $1::text IS NULL OR state = $1
             ORDER BY updated_ms DESC, id DESC LIMIT $2"
        } else {
            "SELECT id, key, state, attempts, step, created_ms, next_attempt_ms, last_error,
                updated_ms
             FROM outbox WHERE $1::text IS NULL OR state = $1
             ORDER BY created_ms, id LIMIT $2"
        };
        let rows = self.query(sql, &[&state, &limit]).await?;
        let summary = |row: &Row| -> Result<EntrySummary, tokio_postgres::Error> {
            Ok(EntrySummary {
                id: row.try_get(0)?,
                key: row.try_get(1)?,
                state: row.try_get(2)?,
                attempts: u32::try_from(row.try_get::<_, i64>(3)?).unwrap_or(u32::MAX),
                step: usize::try_from(row.try_get::<_, i64>(4)?).unwrap_or(0),
                created_ms: row.try_get(5)?,
                next_attempt_ms: row.try_get(6)?,
                last_error: row.try_get(7)?,
                updated_ms: row.try_get(8)?,
            })
        };
        rows.iter()
            .map(summary)
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    async fn counts(&self) -> Result<StateCounts, StateError> {
        let rows = self
            .query("SELECT state, count(*) FROM outbox GROUP BY state", &[])
            .await?;
        let mut counts = StateCounts::default();
        for row in &rows {
            let state: String = row.try_get(0).map_err(|e| self.err(e))?;
            let n: i64 = row.try_get(1).map_err(|e| self.err(e))?;
            counts.add(&state, usize::try_from(n).unwrap_or(0));
        }
        Ok(counts)
    }

    async fn retry(&self, id: Option<String>) -> Result<usize, StateError> {
        let now = now_ms();
        let changed = match id {
            Some(id) => {
                self.execute(
                    &notifying(
                        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_ms = 0,
                            since_ms = $2, updated_ms = $2, claimed_by = NULL,
                            claimed_until_ms = NULL
                         WHERE id = $1 AND state != 'delivered'",
                        &self.owner,
                    ),
                    &[&id, &now],
                )
                .await?
            }
            None => {
                self.execute(
                    &notifying(
                        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_ms = 0,
                            since_ms = $1, updated_ms = $1, claimed_by = NULL,
                            claimed_until_ms = NULL
                         WHERE state = 'dead'",
                        &self.owner,
                    ),
                    &[&now],
                )
                .await?
            }
        };
        Ok(usize::try_from(changed).unwrap_or(usize::MAX))
    }

    async fn check_writable(&self) -> Result<(), StateError> {
        // A read-write transaction that writes nothing: fails on a read-only standby (after
        // a failover) or when no connection can be had.
        let mut client = self.pg.client(STORE).await?;
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        tx.batch_execute("SET TRANSACTION READ WRITE; LOCK TABLE outbox IN ROW EXCLUSIVE MODE")
            .await
            .map_err(|e| self.err(e))?;
        tx.rollback().await.map_err(|e| self.err(e))
    }

    async fn purge_delivered(&self, before_ms: i64) -> Result<usize, StateError> {
        let n = self
            .execute(
                "DELETE FROM outbox WHERE state = 'delivered' AND updated_ms < $1",
                &[&before_ms],
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn lease(&self) -> Option<Duration> {
        Some(Duration::from_millis(
            u64::try_from(self.lease_ms).unwrap_or(0),
        ))
    }

    async fn renew(&self, id: &str) -> Result<bool, StateError> {
        let until = now_ms().saturating_add(self.lease_ms);
        let renewed = self
            .execute(
                "UPDATE outbox SET claimed_until_ms = $3
                 WHERE id = $1 AND claimed_by = $2 AND state = 'pending'",
                &[&id, &self.owner, &until],
            )
            .await?;
        Ok(renewed > 0)
    }

    async fn release_claims(&self) -> Result<usize, StateError> {
        let released = self
            .execute(
                &notifying(
                    "UPDATE outbox SET claimed_by = NULL, claimed_until_ms = NULL
                     WHERE claimed_by = $1 AND state = 'pending'",
                    &self.owner,
                ),
                &[&self.owner],
            )
            .await?;
        Ok(usize::try_from(released).unwrap_or(usize::MAX))
    }

    fn wakeups(&self) -> Option<Wakeups> {
        Some(listener::start(
            self.pg.config.clone(),
            self.pg.tls.clone(),
            self.pg.location.clone(),
            self.owner.clone(),
        ))
    }
}
