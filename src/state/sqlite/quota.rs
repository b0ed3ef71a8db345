//! What each user with a quota stores: the `quota_usage` table.

use super::{SqliteUploads, clamp};
use crate::state::{QuotaStore, StateError, now_ms};
use rusqlite::{OptionalExtension, params};

#[async_trait::async_trait]
impl QuotaStore for SqliteUploads {
    async fn quota_usage(&self, username: String) -> Result<Option<(u64, u64)>, StateError> {
        self.db
            .run(move |c| {
                c.query_row(
                    "SELECT bytes, files FROM quota_usage WHERE username = ?1",
                    params![username],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?.max(0) as u64,
                            r.get::<_, i64>(1)?.max(0) as u64,
                        ))
                    },
                )
                .optional()
            })
            .await
    }

    async fn set_quota_usage(
        &self,
        username: String,
        bytes: u64,
        files: u64,
    ) -> Result<(), StateError> {
        self.db.run(move |c| {
            c.execute(
                "INSERT INTO quota_usage (username, bytes, files, counted_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(username) DO UPDATE SET bytes = ?2, files = ?3, counted_ms = ?4",
                params![username, clamp(bytes), clamp(files), now_ms()],
            )
            .map(|_| ())
        })
        .await
    }

    async fn add_quota_usage(
        &self,
        username: String,
        bytes: i64,
        files: i64,
    ) -> Result<(), StateError> {
        self.db
            .run(move |c| {
                c.execute(
                    "UPDATE quota_usage SET bytes = max(0, bytes + ?2), files = max(0, files + ?3)
                 WHERE username = ?1",
                    params![username, bytes, files],
                )
                .map(|_| ())
            })
            .await
    }

    async fn forget_quota_usage(&self, username: String) -> Result<(), StateError> {
        self.db
            .run(move |c| {
                c.execute(
                    "DELETE FROM quota_usage WHERE username = ?1",
                    params![username],
                )
                .map(|_| ())
            })
            .await
    }
}
