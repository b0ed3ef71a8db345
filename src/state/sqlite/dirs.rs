//! Directories clients made: the `made_dirs` table, each row with its parent so a listing
//! reads its made subdirectories with one indexed query.

use super::SqliteUploads;
use crate::state::dirs::parent_of;
use crate::state::{DirStore, StateError, dirs::name_of};
use rusqlite::params;

#[async_trait::async_trait]
impl DirStore for SqliteUploads {
    async fn add_dir(&self, prefix: String) -> Result<(), StateError> {
        self.db
            .run(move |c| {
                c.execute(
                    "INSERT OR IGNORE INTO made_dirs (prefix, parent) VALUES (?1, ?2)",
                    params![prefix, parent_of(&prefix)],
                )
                .map(|_| ())
            })
            .await
    }

    async fn remove_dirs(&self, prefix: String) -> Result<bool, StateError> {
        self.db
            .run(move |c| {
                let had = c.execute("DELETE FROM made_dirs WHERE prefix = ?1", params![prefix])?;
                c.execute(
                    "DELETE FROM made_dirs WHERE substr(prefix, 1, length(?1)) = ?1",
                    params![prefix],
                )?;
                Ok(had > 0)
            })
            .await
    }

    async fn has_dir(&self, prefix: String) -> Result<bool, StateError> {
        self.db
            .run(move |c| {
                c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM made_dirs WHERE prefix = ?1)",
                    params![prefix],
                    |r| r.get(0),
                )
            })
            .await
    }

    async fn dirs_in(&self, parent: String) -> Result<Vec<String>, StateError> {
        self.db
            .run(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT prefix FROM made_dirs WHERE parent = ?1 ORDER BY prefix",
                )?;
                let rows = stmt.query_map(params![parent], |r| r.get::<_, String>(0))?;
                rows.map(|r| r.map(|p| name_of(&p).to_string())).collect()
            })
            .await
    }
}
