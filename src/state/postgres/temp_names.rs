//! Finished uploads under temporary names: the `temp_objects` table.

use super::{PgUploads, clamp, fields_of, fields_text, unsigned};
use crate::state::{StateError, TempNameStore, TempRecord, now_ms};

#[async_trait::async_trait]
impl TempNameStore for PgUploads {
    async fn put_temp(&self, rec: TempRecord) -> Result<(), StateError> {
        self.execute(
            "INSERT INTO temp_objects (key, username, size, sha256, content_type, id, fields,
                started_at_ms, completed_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (key) DO UPDATE SET username = EXCLUDED.username,
                size = EXCLUDED.size, sha256 = EXCLUDED.sha256,
                content_type = EXCLUDED.content_type, id = EXCLUDED.id,
                fields = EXCLUDED.fields, started_at_ms = EXCLUDED.started_at_ms,
                completed_ms = EXCLUDED.completed_ms",
            &[
                &rec.key,
                &rec.username,
                &clamp(rec.size),
                &rec.sha256,
                &rec.content_type,
                &rec.id,
                &fields_text(&rec.fields),
                &rec.started_at_ms,
                &now_ms(),
            ],
        )
        .await
        .map(|_| ())
    }

    async fn temp(&self, key: String) -> Result<Option<TempRecord>, StateError> {
        let rows = self
            .query(
                "SELECT key, username, size, sha256, content_type, id, fields, started_at_ms
                 FROM temp_objects WHERE key = $1",
                &[&key],
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let record = || -> Result<TempRecord, tokio_postgres::Error> {
            Ok(TempRecord {
                key: r.try_get(0)?,
                username: r.try_get(1)?,
                size: unsigned(r.try_get(2)?),
                sha256: r.try_get(3)?,
                content_type: r.try_get(4)?,
                id: r.try_get(5)?,
                fields: fields_of(&r.try_get::<_, String>(6)?),
                started_at_ms: r.try_get(7)?,
            })
        };
        record()
            .map(Some)
            .map_err(|e| self.pg.error(super::UPLOADS, e))
    }

    async fn remove_temp(&self, key: String) -> Result<(), StateError> {
        self.execute("DELETE FROM temp_objects WHERE key = $1", &[&key])
            .await
            .map(|_| ())
    }

    async fn prune_temp(&self, before_ms: i64) -> Result<usize, StateError> {
        let n = self
            .execute(
                "DELETE FROM temp_objects WHERE completed_ms < $1",
                &[&before_ms],
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}
