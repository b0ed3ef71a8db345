//! Cut (and running) uploads and their part marks: the `partials` and `part_marks` tables.

use super::{SqliteUploads, fields_of, fields_text};
use crate::state::{CutUploadStore, PartMark, PartialRecord, StateError, now_ms};
use rusqlite::{OptionalExtension, params};

fn partial_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PartialRecord> {
    Ok(PartialRecord {
        key: r.get(0)?,
        username: r.get(1)?,
        path: r.get(2)?,
        upload_id: r.get(3)?,
        content_type: r.get(4)?,
        id: r.get(5)?,
        fields: fields_of(&r.get::<_, String>(6)?),
        started_at_ms: r.get(7)?,
        updated_ms: r.get(8)?,
        durable_bytes: r.get::<_, i64>(9)?.max(0) as u64,
        durable_parts: r.get::<_, i64>(10)?.clamp(0, i64::from(u32::MAX)) as u32,
        hash_state: r.get(11)?,
        active: r.get::<_, i64>(12)? != 0,
    })
}

const PARTIAL_COLUMNS: &str = "key, username, path, upload_id, content_type, id, fields, \
     started_at_ms, updated_ms, durable_bytes, durable_parts, hash_state, active";

#[async_trait::async_trait]
impl CutUploadStore for SqliteUploads {
    async fn begin(&self, rec: PartialRecord) -> Result<(), StateError> {
        self.writing.take(&rec.upload_id);
        self.db.run(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO partials (key, username, path, upload_id, content_type, id,
                    fields, started_at_ms, updated_ms, durable_bytes, durable_parts, hash_state, active)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, 0, NULL, 1)",
                params![
                    rec.key,
                    rec.username,
                    rec.path,
                    rec.upload_id,
                    rec.content_type,
                    rec.id,
                    fields_text(&rec.fields),
                    rec.started_at_ms,
                    now_ms()
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn mark(&self, upload_id: String, mark: PartMark) -> Result<(), StateError> {
        self.db
            .run(move |c| {
                c.execute(
                    "INSERT OR REPLACE INTO part_marks (upload_id, number, end_offset, hash_state)
                 VALUES (?1, ?2, ?3, ?4)",
                    params![upload_id, mark.number, mark.end as i64, mark.hash_state],
                )
                .map(|_| ())
            })
            .await
    }

    async fn marks(&self, upload_id: String) -> Result<Vec<PartMark>, StateError> {
        self.db
            .run(move |c| {
                let mut s = c.prepare(
                    "SELECT number, end_offset, hash_state FROM part_marks
                 WHERE upload_id = ?1 ORDER BY number",
                )?;
                let rows = s.query_map([upload_id], |r| {
                    Ok(PartMark {
                        number: r.get(0)?,
                        end: r.get::<_, i64>(1)?.max(0) as u64,
                        hash_state: r.get(2)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }

    async fn suspend(
        &self,
        key: String,
        upload_id: String,
        durable: u64,
        parts: u32,
        hash_state: Vec<u8>,
    ) -> Result<bool, StateError> {
        self.writing.release(&upload_id);
        self.db
            .run(move |c| {
                let n = c.execute(
                    "UPDATE partials SET durable_bytes = ?3, durable_parts = ?4, hash_state = ?5,
                    active = 0, updated_ms = ?6
                 WHERE key = ?1 AND upload_id = ?2",
                    params![key, upload_id, durable as i64, parts, hash_state, now_ms()],
                )?;
                c.execute(
                    "DELETE FROM part_marks WHERE upload_id = ?1 AND number > ?2",
                    params![upload_id, parts],
                )?;
                Ok(n > 0)
            })
            .await
    }

    async fn activate(&self, key: String, upload_id: String) -> Result<bool, StateError> {
        let id = upload_id.clone();
        let won = self
            .db
            .run(move |c| {
                c.execute(
                    "UPDATE partials SET active = 1, updated_ms = ?3
                 WHERE key = ?1 AND upload_id = ?2 AND active = 0",
                    params![key, id, now_ms()],
                )
                .map(|n| n > 0)
            })
            .await?;
        if won {
            self.writing.take(&upload_id);
        }
        Ok(won)
    }

    async fn remove(&self, key: String, upload_id: String) -> Result<(), StateError> {
        self.writing.release(&upload_id);
        self.db
            .run(move |c| {
                c.execute(
                    "DELETE FROM partials WHERE key = ?1 AND upload_id = ?2",
                    params![key, upload_id],
                )?;
                c.execute("DELETE FROM part_marks WHERE upload_id = ?1", [upload_id])?;
                Ok(())
            })
            .await
    }

    async fn get(&self, key: String) -> Result<Option<PartialRecord>, StateError> {
        self.db
            .run(move |c| {
                c.query_row(
                    &format!("SELECT {PARTIAL_COLUMNS} FROM partials WHERE key = ?1"),
                    [key],
                    partial_row,
                )
                .optional()
            })
            .await
    }

    async fn cut_under(
        &self,
        prefix: String,
        username: String,
    ) -> Result<Vec<PartialRecord>, StateError> {
        self.db
            .run(move |c| {
                let mut s = c.prepare(&format!(
                    "SELECT {PARTIAL_COLUMNS} FROM partials
                 WHERE active = 0 AND username = ?2 AND substr(key, 1, length(?1)) = ?1
                   AND instr(substr(key, length(?1) + 1), '/') = 0"
                ))?;
                let rows = s.query_map(params![prefix, username], partial_row)?;
                rows.collect()
            })
            .await
    }

    async fn all(&self) -> Result<Vec<PartialRecord>, StateError> {
        self.db
            .run(|c| {
                let mut s = c.prepare(&format!("SELECT {PARTIAL_COLUMNS} FROM partials"))?;
                let rows = s.query_map([], partial_row)?;
                rows.collect()
            })
            .await
    }

    async fn count_cut(&self) -> Result<i64, StateError> {
        self.db
            .run(|c| {
                c.query_row("SELECT COUNT(*) FROM partials WHERE active = 0", [], |r| {
                    r.get(0)
                })
            })
            .await
    }

    async fn expired(&self, before_ms: i64) -> Result<Vec<PartialRecord>, StateError> {
        self.db
            .run(move |c| {
                let mut s = c.prepare(&format!(
                    "SELECT {PARTIAL_COLUMNS} FROM partials WHERE active = 0 AND updated_ms < ?1"
                ))?;
                let rows = s.query_map([before_ms], partial_row)?;
                rows.collect()
            })
            .await
    }

    async fn orphaned(&self) -> Result<Vec<PartialRecord>, StateError> {
        let running = self
            .db
            .run(|c| {
                let mut s = c.prepare(&format!(
                    "SELECT {PARTIAL_COLUMNS} FROM partials WHERE active = 1"
                ))?;
                let rows = s.query_map([], partial_row)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        Ok(running
            .into_iter()
            .filter(|r| !self.writing.has(&r.upload_id))
            .collect())
    }

    async fn adopt(&self, key: String, upload_id: String) -> Result<bool, StateError> {
        // Taken first: two adoptions in this process cannot both win.
        if !self.writing.take(&upload_id) {
            return Ok(false);
        }
        let id = upload_id.clone();
        let found = self
            .db
            .run(move |c| {
                c.execute(
                    "UPDATE partials SET updated_ms = ?3
                     WHERE key = ?1 AND upload_id = ?2 AND active = 1",
                    params![key, id, now_ms()],
                )
                .map(|n| n > 0)
            })
            .await;
        if !matches!(found, Ok(true)) {
            self.writing.release(&upload_id);
        }
        found
    }

    async fn lead_sweep(&self, _lease: std::time::Duration) -> Result<bool, StateError> {
        // One process owns the file.
        Ok(true)
    }
}
