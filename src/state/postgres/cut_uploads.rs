//! Cut (and running) uploads and their part marks: the `partials` and `part_marks` tables.
//! Shared, so a client cut on one replica resumes on another; `activate` is one conditional
//! `UPDATE`, so two replicas resuming the same upload at once cannot both win.
//!
//! A running record is leased to the replica writing it (`owner`, `lease_until_ms` by the
//! database's clock, renewed by that replica's task in `super`); one whose lease ran out
//! was left by a replica that died, and `adopt` gives it to one other replica alone. The
//! sweep of expired cut uploads runs under a row of `leases`, one replica at a time.

use super::{DB_NOW, PgUploads, UPLOADS, clamp, fields_of, fields_text, unsigned};
use crate::state::{CutUploadStore, PartMark, PartialRecord, StateError, now_ms};
use std::time::Instant;
use tokio_postgres::Row;

/// The columns [`partial_row`] reads, in order.
const PARTIAL_COLUMNS: &str = "key, username, path, upload_id, content_type, id, fields, \
     started_at_ms, updated_ms, durable_bytes, durable_parts, hash_state, active";

fn partial_row(r: &Row) -> Result<PartialRecord, tokio_postgres::Error> {
    Ok(PartialRecord {
        key: r.try_get(0)?,
        username: r.try_get(1)?,
        path: r.try_get(2)?,
        upload_id: r.try_get(3)?,
        content_type: r.try_get(4)?,
        id: r.try_get(5)?,
        fields: fields_of(&r.try_get::<_, String>(6)?),
        started_at_ms: r.try_get(7)?,
        updated_ms: r.try_get(8)?,
        durable_bytes: unsigned(r.try_get(9)?),
        durable_parts: u32::try_from(r.try_get::<_, i64>(10)?.max(0)).unwrap_or(u32::MAX),
        hash_state: r.try_get(11)?,
        active: r.try_get(12)?,
    })
}

impl PgUploads {
    /// This opening no longer writes `upload_id`: its lease is neither renewed nor trusted.
    fn let_go(&self, upload_id: &str) {
        self.writing.release(upload_id);
        self.fence.forget(upload_id);
    }

    fn err(&self, e: tokio_postgres::Error) -> StateError {
        self.pg.error(UPLOADS, e)
    }

    /// Runs one statement and returns the rows it changed.
    pub(super) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StateError> {
        let client = self.pg.client(UPLOADS).await?;
        // Prepared once per connection: one round trip per statement, not two.
        let statement = client.prepare_cached(sql).await.map_err(|e| self.err(e))?;
        client
            .execute(&statement, params)
            .await
            .map_err(|e| self.err(e))
    }

    /// Runs one query and returns its rows.
    pub(super) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StateError> {
        let client = self.pg.client(UPLOADS).await?;
        let statement = client.prepare_cached(sql).await.map_err(|e| self.err(e))?;
        client
            .query(&statement, params)
            .await
            .map_err(|e| self.err(e))
    }

    /// Runs a query of records.
    async fn records(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<PartialRecord>, StateError> {
        let rows = self.query(sql, params).await?;
        rows.iter()
            .map(partial_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Runs statements in one transaction; returns the rows the first one changed.
    async fn in_transaction(
        &self,
        statements: &[(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)])],
    ) -> Result<u64, StateError> {
        let mut client = self.pg.client(UPLOADS).await?;
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        let mut first = None;
        for (sql, params) in statements {
            let statement = tx.prepare_cached(sql).await.map_err(|e| self.err(e))?;
            let n = tx
                .execute(&statement, params)
                .await
                .map_err(|e| self.err(e))?;
            first.get_or_insert(n);
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(first.unwrap_or(0))
    }
}

#[async_trait::async_trait]
impl CutUploadStore for PgUploads {
    async fn begin(&self, rec: PartialRecord) -> Result<(), StateError> {
        self.writing.take(&rec.upload_id);
        let sent = Instant::now();
        self.execute(
            &format!(
                "INSERT INTO partials (key, username, path, upload_id, content_type, id, fields,
                    started_at_ms, updated_ms, durable_bytes, durable_parts, hash_state, active,
                    owner, lease_until_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, 0, NULL, true,
                    $10, {DB_NOW} + $11)
                 ON CONFLICT (key) DO UPDATE SET username = EXCLUDED.username,
                    path = EXCLUDED.path, upload_id = EXCLUDED.upload_id,
                    content_type = EXCLUDED.content_type, id = EXCLUDED.id,
                    fields = EXCLUDED.fields, started_at_ms = EXCLUDED.started_at_ms,
                    updated_ms = EXCLUDED.updated_ms, durable_bytes = 0, durable_parts = 0,
                    hash_state = NULL, active = true, owner = EXCLUDED.owner,
                    lease_until_ms = EXCLUDED.lease_until_ms"
            ),
            &[
                &rec.key,
                &rec.username,
                &rec.path,
                &rec.upload_id,
                &rec.content_type,
                &rec.id,
                &fields_text(&rec.fields),
                &rec.started_at_ms,
                &now_ms(),
                &&*self.owner,
                &self.lease_ms,
            ],
        )
        .await?;
        self.fence.granted(&rec.upload_id, sent);
        Ok(())
    }

    async fn mark(&self, upload_id: String, mark: PartMark) -> Result<(), StateError> {
        // Fenced: written only while the running record is this opening's, so a replica
        // whose upload another one adopted learns it here, before sending the part.
        let n = self
            .execute(
                "INSERT INTO part_marks (upload_id, number, end_offset, hash_state)
                 SELECT $1, $2::bigint, $3::bigint, $4::bytea
                 WHERE EXISTS (SELECT 1 FROM partials
                               WHERE upload_id = $1 AND active AND owner = $5)
                 ON CONFLICT (upload_id, number) DO UPDATE
                 SET end_offset = EXCLUDED.end_offset, hash_state = EXCLUDED.hash_state",
                &[
                    &upload_id,
                    &i64::from(mark.number),
                    &clamp(mark.end),
                    &mark.hash_state,
                    &&*self.owner,
                ],
            )
            .await?;
        if n == 0 {
            self.let_go(&upload_id);
            tracing::warn!(upload_id = %upload_id,
                "the record of a running upload is no longer this replica's (its lease ran out and another replica took it); this replica stops writing it");
            return Err(StateError::backend(
                UPLOADS,
                self.pg.location.to_string(),
                "the upload's lease was lost: another replica holds it now",
            ));
        }
        Ok(())
    }

    async fn marks(&self, upload_id: String) -> Result<Vec<PartMark>, StateError> {
        let rows = self
            .query(
                "SELECT number, end_offset, hash_state FROM part_marks
                 WHERE upload_id = $1 ORDER BY number",
                &[&upload_id],
            )
            .await?;
        let mark = |r: &Row| -> Result<PartMark, tokio_postgres::Error> {
            Ok(PartMark {
                number: u32::try_from(r.try_get::<_, i64>(0)?.max(0)).unwrap_or(u32::MAX),
                end: unsigned(r.try_get(1)?),
                hash_state: r.try_get(2)?,
            })
        };
        rows.iter()
            .map(mark)
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    async fn suspend(
        &self,
        key: String,
        upload_id: String,
        durable: u64,
        parts: u32,
        hash_state: Vec<u8>,
    ) -> Result<bool, StateError> {
        self.let_go(&upload_id);
        let parts = i64::from(parts);
        let updated = self
            .in_transaction(&[
                (
                    "UPDATE partials SET durable_bytes = $3, durable_parts = $4, hash_state = $5,
                        active = false, updated_ms = $6, owner = NULL, lease_until_ms = NULL
                     WHERE key = $1 AND upload_id = $2",
                    &[
                        &key,
                        &upload_id,
                        &clamp(durable),
                        &parts,
                        &hash_state,
                        &now_ms(),
                    ],
                ),
                (
                    "DELETE FROM part_marks WHERE upload_id = $1 AND number > $2",
                    &[&upload_id, &parts],
                ),
            ])
            .await?;
        Ok(updated > 0)
    }

    async fn activate(&self, key: String, upload_id: String) -> Result<bool, StateError> {
        let sent = Instant::now();
        let n = self
            .execute(
                &format!(
                    "UPDATE partials SET active = true, updated_ms = $3, owner = $4,
                        lease_until_ms = {DB_NOW} + $5
                     WHERE key = $1 AND upload_id = $2 AND NOT active"
                ),
                &[&key, &upload_id, &now_ms(), &&*self.owner, &self.lease_ms],
            )
            .await?;
        if n > 0 {
            self.writing.take(&upload_id);
            self.fence.granted(&upload_id, sent);
        }
        Ok(n > 0)
    }

    async fn remove(&self, key: String, upload_id: String) -> Result<(), StateError> {
        self.let_go(&upload_id);
        self.in_transaction(&[
            (
                "DELETE FROM partials WHERE key = $1 AND upload_id = $2",
                &[&key, &upload_id],
            ),
            ("DELETE FROM part_marks WHERE upload_id = $1", &[&upload_id]),
        ])
        .await
        .map(|_| ())
    }

    async fn get(&self, key: String) -> Result<Option<PartialRecord>, StateError> {
        let mut records = self
            .records(
                &format!("SELECT {PARTIAL_COLUMNS} FROM partials WHERE key = $1"),
                &[&key],
            )
            .await?;
        Ok(records.pop())
    }

    async fn cut_under(
        &self,
        prefix: String,
        username: String,
    ) -> Result<Vec<PartialRecord>, StateError> {
        // Directly under: the rest of the key after the prefix has no '/'.
        self.records(
            &format!(
                "SELECT {PARTIAL_COLUMNS} FROM partials
                 WHERE NOT active AND username = $2 AND starts_with(key, $1)
                   AND strpos(substr(key, length($1) + 1), '/') = 0"
            ),
            &[&prefix, &username],
        )
        .await
    }

    async fn all(&self) -> Result<Vec<PartialRecord>, StateError> {
        self.records(&format!("SELECT {PARTIAL_COLUMNS} FROM partials"), &[])
            .await
    }

    async fn count_cut(&self) -> Result<i64, StateError> {
        let rows = self
            .query("SELECT COUNT(*) FROM partials WHERE NOT active", &[])
            .await?;
        match rows.first() {
            Some(row) => row.try_get(0).map_err(|e| self.err(e)),
            None => Ok(0),
        }
    }

    async fn expired(&self, before_ms: i64) -> Result<Vec<PartialRecord>, StateError> {
        self.records(
            &format!("SELECT {PARTIAL_COLUMNS} FROM partials WHERE NOT active AND updated_ms < $1"),
            &[&before_ms],
        )
        .await
    }

    async fn orphaned(&self) -> Result<Vec<PartialRecord>, StateError> {
        self.records(
            &format!(
                "SELECT {PARTIAL_COLUMNS} FROM partials
                 WHERE active AND (lease_until_ms IS NULL OR lease_until_ms < {DB_NOW})"
            ),
            &[],
        )
        .await
    }

    async fn adopt(&self, key: String, upload_id: String) -> Result<bool, StateError> {
        let sent = Instant::now();
        let n = self
            .execute(
                &format!(
                    "UPDATE partials SET owner = $3, lease_until_ms = {DB_NOW} + $4
                     WHERE key = $1 AND upload_id = $2 AND active
                       AND (lease_until_ms IS NULL OR lease_until_ms < {DB_NOW})"
                ),
                &[&key, &upload_id, &&*self.owner, &self.lease_ms],
            )
            .await?;
        if n > 0 {
            self.writing.take(&upload_id);
            self.fence.granted(&upload_id, sent);
        }
        Ok(n > 0)
    }

    fn may_write(&self, upload_id: &str) -> bool {
        if self.fence.holds(upload_id, self.write_window) {
            return true;
        }
        // No longer renewed either: a partition that heals must not keep the lease alive
        // for an upload nobody here writes any more.
        self.let_go(upload_id);
        false
    }

    async fn lead_sweep(&self, lease: std::time::Duration) -> Result<bool, StateError> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        // Taken when free or run out, renewed when already ours; otherwise left alone.
        let n = self
            .execute(
                &format!(
                    "INSERT INTO leases AS l (name, owner, until_ms)
                     VALUES ('sweep', $1, {DB_NOW} + $2)
                     ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner,
                        until_ms = EXCLUDED.until_ms
                     WHERE l.owner = EXCLUDED.owner OR l.until_ms < {DB_NOW}"
                ),
                &[&&*self.owner, &lease_ms],
            )
            .await?;
        Ok(n > 0)
    }
}
