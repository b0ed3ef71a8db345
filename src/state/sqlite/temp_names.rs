//! Finished uploads under temporary names: the `temp_objects` table.

use super::{SqliteUploads, fields_of, fields_text};
use crate::state::{StateError, TempNameStore, TempRecord, now_ms};
use rusqlite::{OptionalExtension, params};

#[async_trait::async_trait]
impl TempNameStore for SqliteUploads {
    async fn put_temp(&self, rec: TempRecord) -> Result<(), StateError> {
        self.db
            .run(move |c| {
                c.execute(
                "INSERT OR REPLACE INTO temp_objects (key, username, size, sha256, content_type,
                    id, fields, started_at_ms, completed_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    rec.key,
                    rec.username,
                    rec.size as i64,
                    rec.sha256,
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

    async fn temp(&self, key: String) -> Result<Option<TempRecord>, StateError> {
        self.db
            .run(move |c| {
                c.query_row(
                    "SELECT key, username, size, sha256, content_type, id, fields, started_at_ms
                 FROM temp_objects WHERE key = ?1",
                    [key],
                    |r| {
                        Ok(TempRecord {
                            key: r.get(0)?,
                            username: r.get(1)?,
                            size: r.get::<_, i64>(2)?.max(0) as u64,
                            sha256: r.get(3)?,
                            content_type: r.get(4)?,
                            id: r.get(5)?,
                            fields: fields_of(&r.get::<_, String>(6)?),
                            started_at_ms: r.get(7)?,
                        })
                    },
                )
                .optional()
            })
            .await
    }

    async fn remove_temp(&self, key: String) -> Result<(), StateError> {
        self.db
            .run(move |c| {
                c.execute("DELETE FROM temp_objects WHERE key = ?1", [key])
                    .map(|_| ())
            })
            .await
    }

    async fn prune_temp(&self, before_ms: i64) -> Result<usize, StateError> {
        self.db
            .run(move |c| {
                c.execute(
                    "DELETE FROM temp_objects WHERE completed_ms < ?1",
                    [before_ms],
                )
            })
            .await
    }
}
