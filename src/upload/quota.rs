//! Per-user storage quotas (`quota_bytes`, `quota_files`).
//!
//! What a user stores is counted from S3 once (a listing of the home) the first time the
//! user uploads with a quota set, kept in the upload state store so it survives restarts,
//! and changed by every upload, delete and rename the user makes through the bridge.
//! Uploads in progress hold a reservation in the same store (shared by every replica on
//! PostgreSQL): before bytes are accepted the upload takes them, up to a part ahead, and
//! the store refuses atomically when stored plus every live reservation would pass the
//! quota, so parallel uploads on any replicas cannot overrun a quota together. A commit turns
//! the reservation into usage in one step; an abort or cut gives it back; a replica that
//! dies leaves its reservations to expire with their lease ([`QUOTA_LEASE`]). A replaced file
//! counts in full until its replacement is complete.

use super::UploadError;
use crate::auth::User;
use crate::config::format_size;
use crate::state::{QuotaClaim, QuotaGrant, QuotaStore, StateError, now_ms};
use crate::storage::Storage;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// How long a reservation holds without being renewed. A running upload renews it at half
/// this as its bytes arrive (and before it commits); a replica that died frees its uploads'
/// holds at the latest this long after its last renewal.
pub const QUOTA_LEASE: Duration = Duration::from_secs(10 * 60);

/// A quota the user has reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaExceeded {
    /// `quota_bytes`.
    #[error(
        "quota exceeded: this account may store {} (quota_bytes) and stores {}; delete files or ask for a larger quota",
        format_size(*.limit),
        format_size(*.used)
    )]
    Bytes {
        /// The quota.
        limit: u64,
        /// Stored plus uploads in progress.
        used: u64,
    },
    /// `quota_files`.
    #[error(
        "quota exceeded: this account may store {limit} files (quota_files) and stores {used}; delete files or ask for a larger quota"
    )]
    Files {
        /// The quota.
        limit: u64,
        /// Stored plus uploads in progress.
        used: u64,
    },
}

impl QuotaExceeded {
    /// The config key, as `limits_exceeded_total{limit}` names it.
    pub fn key(&self) -> &'static str {
        match self {
            QuotaExceeded::Bytes { .. } => "quota_bytes",
            QuotaExceeded::Files { .. } => "quota_files",
        }
    }
}

/// What the quotas of every user share: the store and this process's name in it.
struct Shared {
    store: Arc<dyn QuotaStore>,
    /// This process in `quota_claims.owner`, for operators.
    owner: String,
    /// What a growing upload takes ahead of its bytes at most: one (first) part's worth,
    /// so that a claim is made about once a part rather than once a write.
    ahead: u64,
}

impl Shared {
    /// What an upload takes ahead under a byte quota of `limit`: a part, but never more
    /// than an eighth of the quota, so that a quota of a few parts still lets several
    /// uploads run side by side.
    fn ahead_for(&self, limit: u64) -> u64 {
        self.ahead.min(limit / 8).max(1)
    }
}

fn internal(e: StateError) -> UploadError {
    UploadError::Internal(e.to_string())
}

/// An upload's hold on its user's quota, kept in the quota store; given back when dropped
/// unless committed.
pub struct QuotaTicket {
    shared: Arc<Shared>,
    username: String,
    /// The reservation's id in the store.
    id: String,
    limit_bytes: Option<u64>,
    limit_files: Option<u64>,
    /// Bytes the store holds for this upload (with a byte quota).
    held: u64,
    /// Whether the store holds a file for this upload (a new file under a file quota).
    file: bool,
    /// When the lease wants renewing.
    renew_at: Instant,
    /// Committed or given back already.
    settled: bool,
}

impl QuotaTicket {
    /// Adds `bytes` and `files` to the reservation (renewing its lease); the store's answer.
    async fn claim(&mut self, bytes: u64, files: u64) -> Result<QuotaGrant, UploadError> {
        let now = now_ms();
        let lease = i64::try_from(QUOTA_LEASE.as_millis()).unwrap_or(i64::MAX);
        let grant = self
            .shared
            .store
            .claim_quota(QuotaClaim {
                username: self.username.clone(),
                id: self.id.clone(),
                owner: self.shared.owner.clone(),
                bytes,
                files,
                limit_bytes: self.limit_bytes,
                limit_files: self.limit_files,
                expires_ms: now.saturating_add(lease),
                now_ms: now,
            })
            .await
            .map_err(internal)?;
        if let QuotaGrant::Granted { bytes, files } = grant {
            self.held = bytes;
            self.file = files > 0;
            self.renew_at = Instant::now() + QUOTA_LEASE / 2;
        }
        Ok(grant)
    }

    /// Renews the lease when half of it has passed; a hold lost meanwhile (the lease ran out
    /// while nothing arrived) is taken again, against the quota as it is now.
    async fn renew_if_due(&mut self) -> Result<(), UploadError> {
        if Instant::now() < self.renew_at || (self.held == 0 && !self.file) {
            return Ok(());
        }
        let had_file = self.file;
        self.claim(0, 0).await?;
        if had_file && !self.file {
            match self.claim(0, 1).await? {
                QuotaGrant::Granted { .. } => {}
                QuotaGrant::Refused(t) => {
                    let limit = self.limit_files.unwrap_or(0);
                    return Err(QuotaExceeded::Files {
                        limit,
                        used: t.files + t.reserved_files,
                    }
                    .into());
                }
                QuotaGrant::Uncounted => return Err(uncounted()),
            }
        }
        Ok(())
    }

    /// Makes the reservation cover `size` bytes, taking up to one part ahead; fails once
    /// stored plus reserved bytes (on every replica) would pass the quota.
    pub async fn grow_to(&mut self, size: u64) -> Result<(), UploadError> {
        self.renew_if_due().await?;
        let Some(limit) = self.limit_bytes else {
            return Ok(());
        };
        let mut used = 0;
        // A claim may find its lease ran out and hold less than asked: a few rounds.
        for _ in 0..3 {
            if size <= self.held {
                return Ok(());
            }
            let need = size - self.held;
            let want = need.max(self.shared.ahead_for(limit));
            match self.claim(want, 0).await? {
                QuotaGrant::Granted { .. } => continue,
                QuotaGrant::Uncounted => return Err(uncounted()),
                QuotaGrant::Refused(t) => {
                    let stored = t.bytes.saturating_add(t.reserved_bytes);
                    used = stored.saturating_add(need);
                    // Not a whole part left: take what is left, if it covers the need.
                    let room = limit.saturating_sub(stored);
                    if room < need || room >= want {
                        break;
                    }
                    match self.claim(room, 0).await? {
                        QuotaGrant::Granted { .. } => continue,
                        QuotaGrant::Uncounted => return Err(uncounted()),
                        QuotaGrant::Refused(t) => {
                            used = t
                                .bytes
                                .saturating_add(t.reserved_bytes)
                                .saturating_add(need);
                        }
                    }
                }
            }
        }
        if size <= self.held {
            return Ok(());
        }
        Err(QuotaExceeded::Bytes { limit, used }.into())
    }

    /// Gives the reservation back (in the background when dropped inside a runtime).
    fn release(&mut self) {
        if self.settled {
            return;
        }
        self.settled = true;
        if self.held == 0 && !self.file {
            return;
        }
        let (store, username, id) = (
            self.shared.store.clone(),
            self.username.clone(),
            self.id.clone(),
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = store.settle_quota(username.clone(), id, 0, 0).await {
                    tracing::warn!(user = %username, error = %e,
                        "cannot give back a quota reservation; it ends with its lease");
                }
            });
        }
    }
}

impl Drop for QuotaTicket {
    fn drop(&mut self) {
        self.release();
    }
}

/// Why an upload fails when the store lost the user's count while it ran.
const UNCOUNTED: &str = "the user's quota usage was forgotten during the upload (quota \
     removed on another replica?); upload again";

fn uncounted() -> UploadError {
    UploadError::Internal(UNCOUNTED.into())
}

/// Every user's usage; one per pipeline.
pub struct Quotas {
    shared: Arc<Shared>,
    storage: Storage,
    /// Users whose usage this process made sure was counted.
    counted: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<()>>>>,
    /// Users without a quota whose stale count (from when they had one) is gone.
    forgotten: Mutex<HashSet<String>>,
    /// When expired reservations were last swept, ms since the epoch.
    swept_ms: AtomicI64,
}

impl Quotas {
    /// Usage kept in `store`, first counted in `storage`; uploads take `ahead` bytes (one
    /// part) at a time.
    pub fn new(store: Arc<dyn QuotaStore>, storage: Storage, ahead: u64) -> Quotas {
        Quotas {
            shared: Arc::new(Shared {
                store,
                owner: uuid::Uuid::now_v7().to_string(),
                ahead: ahead.max(1),
            }),
            storage,
            counted: Mutex::new(HashMap::new()),
            forgotten: Mutex::new(HashSet::new()),
            swept_ms: AtomicI64::new(0),
        }
    }

    /// Makes sure the user's usage is counted (from S3 if it never was); `again` drops
    /// what this process knew first (the store said it is gone).
    async fn count(&self, user: &User, again: bool) -> Result<(), UploadError> {
        let cell = {
            let mut counted = self.counted.lock();
            if again {
                counted.remove(&user.name);
            }
            counted.entry(user.name.clone()).or_default().clone()
        };
        let store = &self.shared.store;
        cell.get_or_try_init(|| async {
            if store
                .quota_usage(user.name.clone())
                .await
                .map_err(internal)?
                .is_some()
            {
                return Ok(());
            }
            let counted = self.storage.usage_under(&user.home).await?;
            store
                .set_quota_usage(user.name.clone(), counted.0, counted.1)
                .await
                .map_err(internal)?;
            tracing::info!(user = %user.name, home = %user.home, bytes = counted.0,
                files = counted.1, "counted what the user stores for their quota");
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// Deletes reservations whose lease ended, at most once a lease (they already count
    /// for nothing; this only keeps the table small).
    async fn sweep(&self) {
        let now = now_ms();
        let lease = i64::try_from(QUOTA_LEASE.as_millis()).unwrap_or(i64::MAX);
        let last = self.swept_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) < lease
            || self
                .swept_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        if let Err(e) = self.shared.store.expire_quota_claims(now).await {
            tracing::warn!(error = %e, "cannot delete expired quota reservations");
        }
    }

    /// A hold for an upload of `key` by `user` that continues at `offset`, or `None` when
    /// no quota applies. Refuses when the user's quota is already reached; at the file
    /// quota only a replacement of an existing file may go on.
    pub async fn reserve(
        &self,
        user: &User,
        key: &str,
        offset: u64,
    ) -> Result<Option<QuotaTicket>, UploadError> {
        if !user.has_quota() {
            self.forget(user).await;
            return Ok(None);
        }
        self.forgotten.lock().remove(&user.name);
        self.sweep().await;
        self.count(user, false).await?;
        match self.reserve_counted(user, key, offset).await {
            Err(UploadError::Internal(why)) if why == UNCOUNTED => {
                self.count(user, true).await?;
                self.reserve_counted(user, key, offset).await
            }
            other => other,
        }
    }

    async fn reserve_counted(
        &self,
        user: &User,
        key: &str,
        offset: u64,
    ) -> Result<Option<QuotaTicket>, UploadError> {
        let mut ticket = QuotaTicket {
            shared: self.shared.clone(),
            username: user.name.clone(),
            id: uuid::Uuid::now_v7().to_string(),
            limit_bytes: user.quota_bytes,
            limit_files: user.quota_files,
            held: 0,
            file: false,
            renew_at: Instant::now() + QUOTA_LEASE / 2,
            settled: false,
        };
        // The usual case in one claim: the new file and the first bytes, some ahead.
        let files = u64::from(user.quota_files.is_some());
        let first = match user.quota_bytes {
            Some(limit) => offset.max(1).max(self.shared.ahead_for(limit)),
            None => 0,
        };
        match ticket.claim(first, files).await? {
            QuotaGrant::Granted { .. } => return Ok(Some(ticket)),
            QuotaGrant::Uncounted => return Err(uncounted()),
            QuotaGrant::Refused(_) => {}
        }
        // Refused: one limit at a time, to say which, and to let a replacement or a smaller
        // first claim through.
        if let Some(limit) = user.quota_files {
            match ticket.claim(0, 1).await? {
                QuotaGrant::Granted { .. } => {}
                QuotaGrant::Uncounted => return Err(uncounted()),
                // A replacement adds no file.
                QuotaGrant::Refused(t) => {
                    if self.storage.head(key).await?.is_none() {
                        let used = t.files + t.reserved_files;
                        return Err(QuotaExceeded::Files { limit, used }.into());
                    }
                }
            }
        }
        // At least one byte: an upload may not even start at a reached quota.
        ticket.grow_to(offset.max(1)).await?;
        Ok(Some(ticket))
    }

    /// Counts a completed upload of `size` bytes that replaced an object of `replaced`
    /// bytes (or added a file), and lets its reservation go, in one step.
    pub async fn committed(
        &self,
        user: &User,
        mut ticket: QuotaTicket,
        size: u64,
        replaced: Option<u64>,
    ) {
        let bytes = clamp(size) - clamp(replaced.unwrap_or(0));
        let files = i64::from(replaced.is_none());
        ticket.settled = true;
        if let Err(e) = self
            .shared
            .store
            .settle_quota(user.name.clone(), ticket.id.clone(), bytes, files)
            .await
        {
            tracing::warn!(user = %user.name, error = %e, "cannot record quota usage");
        }
    }

    /// Counts a file of `size` bytes that the user deleted or replaced by a rename.
    pub async fn removed(&self, user: &User, size: u64) {
        if !user.has_quota() {
            return;
        }
        if let Err(e) = self
            .shared
            .store
            .add_quota_usage(user.name.clone(), -clamp(size), -1)
            .await
        {
            tracing::warn!(user = %user.name, error = %e, "cannot record quota usage");
        }
    }

    /// Drops the count of a user whose quota was taken away, so a quota set again later
    /// starts from a fresh count.
    async fn forget(&self, user: &User) {
        let first = self.forgotten.lock().insert(user.name.clone());
        if !first {
            return;
        }
        self.counted.lock().remove(&user.name);
        if let Err(e) = self
            .shared
            .store
            .forget_quota_usage(user.name.clone())
            .await
        {
            tracing::warn!(user = %user.name, error = %e, "cannot forget quota usage");
        }
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::sqlite;

    #[tokio::test]
    async fn parallel_uploads_share_the_byte_quota_and_give_it_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = sqlite::open(dir.path(), false).expect("open").quota;
        store
            .set_quota_usage("u".into(), 40, 0)
            .await
            .expect("count");
        // A part is 20 bytes, but an eighth of the quota (12) is what is taken ahead.
        let shared = Arc::new(Shared {
            store: store.clone(),
            owner: "test".into(),
            ahead: 20,
        });
        let ticket = |id: &str| QuotaTicket {
            shared: shared.clone(),
            username: "u".into(),
            id: id.into(),
            limit_bytes: Some(100),
            limit_files: None,
            held: 0,
            file: false,
            renew_at: Instant::now() + QUOTA_LEASE,
            settled: false,
        };
        let (mut a, mut b) = (ticket("a"), ticket("b"));
        a.grow_to(30).expect_ok().await;
        assert_eq!(a.held, 30, "needs more than it takes ahead: just that");
        b.grow_to(1).expect_ok().await;
        assert_eq!(b.held, 12, "an eighth of the quota ahead");
        b.grow_to(20).expect_ok().await;
        assert_eq!(b.held, 24);
        b.grow_to(25).expect_ok().await;
        assert_eq!(b.held, 30, "only 6 were left: all of them");
        let err = b.grow_to(31).await.expect_err("101 of 100");
        assert!(err.to_string().contains("quota_bytes"), "{err}");
        drop(b);
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.grow_to(60).expect_ok().await;
        let mut c = ticket("c");
        shared_commit(&shared, a, 60).await;
        assert_eq!(
            store.quota_usage("u".into()).await.expect("usage"),
            Some((100, 1))
        );
        assert!(c.grow_to(1).await.is_err(), "100 of 100 stored");
    }

    async fn shared_commit(shared: &Arc<Shared>, mut t: QuotaTicket, size: i64) {
        t.settled = true;
        shared
            .store
            .settle_quota(t.username.clone(), t.id.clone(), size, 1)
            .await
            .expect("settle");
    }

    trait ExpectOk {
        async fn expect_ok(self);
    }

    impl<F: std::future::Future<Output = Result<(), UploadError>>> ExpectOk for F {
        async fn expect_ok(self) {
            if let Err(e) = self.await {
                panic!("{e}");
            }
        }
    }
}
