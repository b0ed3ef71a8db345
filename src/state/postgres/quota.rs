//! What each user with a quota stores: the `quota_usage` table. A change is one atomic
//! `UPDATE … SET bytes = bytes + $2`, so uploads on several replicas add up in any order.
//!
//! What uploads in flight hold: `quota_claims`, one row per upload with its lease. A claim
//! locks the user's `quota_usage` row (`FOR UPDATE`), so claims of one user on every replica
//! queue behind each other, then inserts or grows its row only if the stored figures plus
//! every live reservation plus the claim stay within the limits — a statement started after
//! the lock was granted sees every claim committed before it. Settling (commit or release) is
//! one statement that deletes the reservation and adds to the stored figures.

use super::{PgUploads, clamp, unsigned};
use crate::state::{QuotaClaim, QuotaGrant, QuotaStore, QuotaTotals, StateError, now_ms};

/// Renews a reservation's lease (a claim of nothing): unchecked, unlocked.
const RENEW: &str = "INSERT INTO quota_claims (id, username, owner, bytes, files, expires_ms)
    VALUES ($1, $2, $3, 0, 0, $4)
    ON CONFLICT (id) DO UPDATE SET
      bytes = CASE WHEN quota_claims.expires_ms < $5 THEN 0 ELSE quota_claims.bytes END,
      files = CASE WHEN quota_claims.expires_ms < $5 THEN 0 ELSE quota_claims.files END,
      owner = EXCLUDED.owner, expires_ms = EXCLUDED.expires_ms
    RETURNING bytes, files";

/// Locks the user's figures: claims of one user queue here, on every replica.
const LOCK: &str = "SELECT bytes, files FROM quota_usage WHERE username = $1 FOR UPDATE";

/// Takes more for one reservation unless the limits would pass, counting live leases only
/// (run after [`LOCK`], so it sees every claim committed before).
const CLAIM: &str = "INSERT INTO quota_claims (id, username, owner, bytes, files, expires_ms)
    SELECT $1, $2, $3, $4::bigint, $5::bigint, $6::bigint
    WHERE ($4::bigint = 0 OR $8::bigint IS NULL OR $10::bigint
           + (SELECT COALESCE(SUM(bytes), 0) FROM quota_claims
              WHERE username = $2 AND expires_ms >= $7::bigint)
           + $4::bigint <= $8::bigint)
      AND ($5::bigint = 0 OR $9::bigint IS NULL OR $11::bigint
           + (SELECT COALESCE(SUM(files), 0) FROM quota_claims
              WHERE username = $2 AND expires_ms >= $7::bigint)
           + $5::bigint <= $9::bigint)
    ON CONFLICT (id) DO UPDATE SET
      bytes = CASE WHEN quota_claims.expires_ms < $7::bigint THEN 0
              ELSE quota_claims.bytes END + EXCLUDED.bytes,
      files = CASE WHEN quota_claims.expires_ms < $7::bigint THEN 0
              ELSE quota_claims.files END + EXCLUDED.files,
      owner = EXCLUDED.owner, expires_ms = EXCLUDED.expires_ms
    RETURNING bytes, files";

/// Ends a reservation and adds to the stored figures, in one statement (a commit, or a
/// release with zeros).
const SETTLE: &str = "WITH released AS (DELETE FROM quota_claims WHERE id = $2)
    UPDATE quota_usage
    SET bytes = GREATEST(0, bytes + $3), files = GREATEST(0, files + $4)
    WHERE username = $1";

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

    async fn claim_quota(&self, claim: QuotaClaim) -> Result<QuotaGrant, StateError> {
        let err = |e| self.pg.error(super::UPLOADS, e);
        let (bytes, files) = (clamp(claim.bytes), clamp(claim.files));
        let mut client = self.pg.client(super::UPLOADS).await?;
        if bytes == 0 && files == 0 {
            // A renewal: nothing to check, nothing to lock.
            let row = client
                .query_one(
                    &client.prepare_cached(RENEW).await.map_err(err)?,
                    &[
                        &claim.id,
                        &claim.username,
                        &claim.owner,
                        &claim.expires_ms,
                        &claim.now_ms,
                    ],
                )
                .await
                .map_err(err)?;
            return granted(&row).map_err(err);
        }
        let tx = client.transaction().await.map_err(err)?;
        let Some(stored) = tx
            .query_opt(
                &tx.prepare_cached(LOCK).await.map_err(err)?,
                &[&claim.username],
            )
            .await
            .map_err(err)?
        else {
            return Ok(QuotaGrant::Uncounted);
        };
        let (stored_bytes, stored_files): (i64, i64) = (
            stored.try_get(0).map_err(err)?,
            stored.try_get(1).map_err(err)?,
        );
        let (limit_bytes, limit_files) =
            (claim.limit_bytes.map(clamp), claim.limit_files.map(clamp));
        let row = tx
            .query_opt(
                &tx.prepare_cached(CLAIM).await.map_err(err)?,
                &[
                    &claim.id,
                    &claim.username,
                    &claim.owner,
                    &bytes,
                    &files,
                    &claim.expires_ms,
                    &claim.now_ms,
                    &limit_bytes,
                    &limit_files,
                    &stored_bytes,
                    &stored_files,
                ],
            )
            .await
            .map_err(err)?;
        let grant = match row {
            Some(row) => granted(&row).map_err(err)?,
            None => {
                let held = tx
                    .query_one(
                        "SELECT COALESCE(SUM(bytes), 0)::bigint, COALESCE(SUM(files), 0)::bigint
                         FROM quota_claims WHERE username = $1 AND expires_ms >= $2",
                        &[&claim.username, &claim.now_ms],
                    )
                    .await
                    .map_err(err)?;
                QuotaGrant::Refused(QuotaTotals {
                    bytes: unsigned(stored_bytes),
                    files: unsigned(stored_files),
                    reserved_bytes: unsigned(held.try_get(0).map_err(err)?),
                    reserved_files: unsigned(held.try_get(1).map_err(err)?),
                })
            }
        };
        tx.commit().await.map_err(err)?;
        Ok(grant)
    }

    async fn settle_quota(
        &self,
        username: String,
        id: String,
        bytes: i64,
        files: i64,
    ) -> Result<(), StateError> {
        let err = |e| self.pg.error(super::UPLOADS, e);
        let client = self.pg.client(super::UPLOADS).await?;
        let statement = client.prepare_cached(SETTLE).await.map_err(err)?;
        client
            .execute(&statement, &[&username, &id, &bytes, &files])
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn expire_quota_claims(&self, before_ms: i64) -> Result<usize, StateError> {
        self.execute(
            "DELETE FROM quota_claims WHERE expires_ms < $1",
            &[&before_ms],
        )
        .await
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// A granted claim's row: what the reservation holds now.
fn granted(row: &tokio_postgres::Row) -> Result<QuotaGrant, tokio_postgres::Error> {
    Ok(QuotaGrant::Granted {
        bytes: unsigned(row.try_get(0)?),
        files: unsigned(row.try_get(1)?),
    })
}
