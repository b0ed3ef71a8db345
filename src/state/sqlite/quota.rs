//! What each user with a quota stores (the `quota_usage` table) and what its uploads in
//! flight hold (`quota_claims`, one row per upload with a lease).

use super::{SqliteUploads, clamp};
use crate::state::{QuotaClaim, QuotaGrant, QuotaStore, QuotaTotals, StateError, now_ms};
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

    async fn claim_quota(&self, claim: QuotaClaim) -> Result<QuotaGrant, StateError> {
        self.claim(claim).await
    }

    async fn settle_quota(
        &self,
        username: String,
        id: String,
        bytes: i64,
        files: i64,
    ) -> Result<(), StateError> {
        self.db
            .run(move |c| {
                let tx = c.unchecked_transaction()?;
                tx.execute("DELETE FROM quota_claims WHERE id = ?1", params![id])?;
                tx.execute(
                    "UPDATE quota_usage SET bytes = max(0, bytes + ?2), files = max(0, files + ?3)
                     WHERE username = ?1",
                    params![username, bytes, files],
                )?;
                tx.commit()
            })
            .await
    }

    async fn expire_quota_claims(&self, before_ms: i64) -> Result<usize, StateError> {
        self.db
            .run(move |c| {
                c.execute(
                    "DELETE FROM quota_claims WHERE expires_ms < ?1",
                    params![before_ms],
                )
            })
            .await
    }
}

/// The user's stored figures and live reservations, read on `c`.
fn totals(
    c: &rusqlite::Connection,
    username: &str,
    now_ms: i64,
) -> rusqlite::Result<Option<QuotaTotals>> {
    let stored = c
        .query_row(
            "SELECT bytes, files FROM quota_usage WHERE username = ?1",
            params![username],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()?;
    let Some((bytes, files)) = stored else {
        return Ok(None);
    };
    let (reserved_bytes, reserved_files) = c.query_row(
        "SELECT COALESCE(SUM(bytes), 0), COALESCE(SUM(files), 0) FROM quota_claims
         WHERE username = ?1 AND expires_ms >= ?2",
        params![username, now_ms],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
    )?;
    let n = |v: i64| v.max(0) as u64;
    Ok(Some(QuotaTotals {
        bytes: n(bytes),
        files: n(files),
        reserved_bytes: n(reserved_bytes),
        reserved_files: n(reserved_files),
    }))
}

/// Whether `claim` fits next to `t` (a claim of nothing always does).
pub(crate) fn fits(claim: &QuotaClaim, t: &QuotaTotals) -> bool {
    let within = |limit: Option<u64>, used: u64, held: u64, more: u64| {
        more == 0 || limit.is_none_or(|l| used.saturating_add(held).saturating_add(more) <= l)
    };
    within(claim.limit_bytes, t.bytes, t.reserved_bytes, claim.bytes)
        && within(claim.limit_files, t.files, t.reserved_files, claim.files)
}

impl SqliteUploads {
    /// [`QuotaStore::claim_quota`]: one connection, so the check and the write are already
    /// serialised with every other claim; the transaction keeps them whole on a crash.
    async fn claim(&self, claim: QuotaClaim) -> Result<QuotaGrant, StateError> {
        self.db
            .run(move |c| {
                let tx = c.unchecked_transaction()?;
                let Some(t) = totals(&tx, &claim.username, claim.now_ms)? else {
                    return Ok(QuotaGrant::Uncounted);
                };
                if !fits(&claim, &t) {
                    return Ok(QuotaGrant::Refused(t));
                }
                let held = tx.query_row(
                    "INSERT INTO quota_claims (id, username, owner, bytes, files, expires_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(id) DO UPDATE SET
                       bytes = CASE WHEN expires_ms < ?7 THEN 0 ELSE bytes END + excluded.bytes,
                       files = CASE WHEN expires_ms < ?7 THEN 0 ELSE files END + excluded.files,
                       owner = excluded.owner, expires_ms = excluded.expires_ms
                     RETURNING bytes, files",
                    params![
                        claim.id,
                        claim.username,
                        claim.owner,
                        clamp(claim.bytes),
                        clamp(claim.files),
                        claim.expires_ms,
                        claim.now_ms
                    ],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )?;
                tx.commit()?;
                Ok(QuotaGrant::Granted {
                    bytes: held.0.max(0) as u64,
                    files: held.1.max(0) as u64,
                })
            })
            .await
    }
}
