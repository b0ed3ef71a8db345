//! What each user with a quota stores: the `quota_usage` table. A change is one atomic
//! `UPDATE … SET bytes = bytes + $2`, so uploads on several replicas add up in any order.

use super::{PgUploads, clamp, unsigned};
use crate::state::{QuotaStore, StateError, now_ms};

#[async_trait::async_trait]
impl QuotaStore for PgUploads {
    async fn quota_usage(&self, username: String) -> Result<Option<(u64, u64)>, StateError> {
        let rows = self
            .query(
                "SELECT bytes, files FROM quota_usage WHERE username = $1",
                &[&username],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let usage = || -> Result<(u64, u64), tokio_postgres::Error> {
            Ok((unsigned(row.try_get(0)?), unsigned(row.try_get(1)?)))
        };
        usage()
            .map(Some)
            .map_err(|e| self.pg.error(super::UPLOADS, e))
    }

    async fn set_quota_usage(
        &self,
        username: String,
        bytes: u64,
        files: u64,
    ) -> Result<(), StateError> {
        self.execute(
            "INSERT INTO quota_usage (username, bytes, files, counted_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (username) DO UPDATE
             SET bytes = EXCLUDED.bytes, files = EXCLUDED.files, counted_ms = EXCLUDED.counted_ms",
            &[&username, &clamp(bytes), &clamp(files), &now_ms()],
        )
        .await
        .map(|_| ())
    }

    async fn add_quota_usage(
        &self,
        username: String,
        bytes: i64,
        files: i64,
    ) -> Result<(), StateError> {
        self.execute(
            "UPDATE quota_usage
             SET bytes = GREATEST(0, bytes + $2), files = GREATEST(0, files + $3)
             WHERE username = $1",
            &[&username, &bytes, &files],
        )
        .await
        .map(|_| ())
    }

    async fn forget_quota_usage(&self, username: String) -> Result<(), StateError> {
        self.execute("DELETE FROM quota_usage WHERE username = $1", &[&username])
            .await
            .map(|_| ())
    }
}
