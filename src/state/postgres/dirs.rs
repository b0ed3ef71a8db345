//! Directories clients made: the `made_dirs` table, shared, so a directory made on one
//! replica lists on every other; each row keeps its parent so a listing reads its made
//! subdirectories with one indexed query.

use super::PgUploads;
use crate::state::dirs::{name_of, parent_of};
use crate::state::{DirStore, StateError};

impl PgUploads {
    /// Runs `sql` as a statement prepared once per connection: listings and `stat` ask on
    /// every call, so each is one round trip rather than two.
    async fn query_prepared(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StateError> {
        let err = |e| self.pg.error(super::UPLOADS, e);
        let client = self.pg.client(super::UPLOADS).await?;
        let statement = client.prepare_cached(sql).await.map_err(err)?;
        client.query(&statement, params).await.map_err(err)
    }
}

#[async_trait::async_trait]
impl DirStore for PgUploads {
    async fn add_dir(&self, prefix: String) -> Result<(), StateError> {
        self.execute(
            "INSERT INTO made_dirs (prefix, parent) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&prefix, &parent_of(&prefix)],
        )
        .await
        .map(|_| ())
    }

    async fn remove_dirs(&self, prefix: String) -> Result<bool, StateError> {
        // The directory and everything under it, in one statement; `starts_with` compares
        // bytes, so no pattern characters in names need escaping.
        let rows = self
            .query(
                "DELETE FROM made_dirs WHERE starts_with(prefix, $1) RETURNING prefix",
                &[&prefix],
            )
            .await?;
        Ok(rows
            .iter()
            .any(|r| r.try_get::<_, String>(0).is_ok_and(|p| p == prefix)))
    }

    async fn has_dir(&self, prefix: String) -> Result<bool, StateError> {
        let rows = self
            .query_prepared("SELECT 1 FROM made_dirs WHERE prefix = $1", &[&prefix])
            .await?;
        Ok(!rows.is_empty())
    }

    async fn dirs_in(&self, parent: String) -> Result<Vec<String>, StateError> {
        let rows = self
            .query_prepared(
                "SELECT prefix FROM made_dirs WHERE parent = $1 ORDER BY prefix",
                &[&parent],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<_, String>(0).ok())
            .map(|p| name_of(&p).to_string())
            .collect())
    }
}
