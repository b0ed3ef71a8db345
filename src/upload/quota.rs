//! Per-user storage quotas (`quota_bytes`, `quota_files`).
//!
//! What a user stores is counted from S3 once (a listing of the home) the first time the
//! user uploads with a quota set, kept in the upload state store so it survives restarts,
//! and changed by every upload, delete and rename the user makes through the bridge.
//! Uploads in progress hold a reservation that grows with their bytes, so parallel uploads
//! cannot overrun a quota together; a replaced file counts in full until its replacement is
//! complete.

use super::UploadError;
use crate::auth::User;
use crate::config::format_size;
use crate::state::{QuotaStore, StateError};
use crate::storage::Storage;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// What one user stores and what their running uploads hold.
#[derive(Default)]
struct Usage {
    counted: tokio::sync::OnceCell<()>,
    bytes: AtomicU64,
    files: AtomicU64,
    reserved_bytes: AtomicU64,
    reserved_files: AtomicU64,
}

impl Usage {
    fn apply(&self, bytes: i64, files: i64) {
        let add = |cell: &AtomicU64, delta: i64| {
            let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_add_signed(delta))
            });
        };
        add(&self.bytes, bytes);
        add(&self.files, files);
    }
}

/// An upload's hold on its user's quota; released when dropped.
pub struct QuotaTicket {
    usage: Arc<Usage>,
    limit_bytes: Option<u64>,
    bytes: u64,
    file: bool,
}

impl QuotaTicket {
    /// Grows the reservation to `size` bytes; fails once stored plus reserved bytes pass
    /// the quota.
    pub fn grow_to(&mut self, size: u64) -> Result<(), QuotaExceeded> {
        if size <= self.bytes {
            return Ok(());
        }
        let added = size - self.bytes;
        let before = self.usage.reserved_bytes.fetch_add(added, Ordering::AcqRel);
        self.bytes = size;
        match self.limit_bytes {
            Some(limit) => {
                let used = self.usage.bytes.load(Ordering::Acquire) + before + added;
                if used > limit {
                    Err(QuotaExceeded::Bytes { limit, used })
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }
}

impl Drop for QuotaTicket {
    fn drop(&mut self) {
        self.usage
            .reserved_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
        if self.file {
            self.usage.reserved_files.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Every user's usage; one per pipeline.
pub struct Quotas {
    store: Arc<dyn QuotaStore>,
    storage: Storage,
    users: Mutex<HashMap<String, Arc<Usage>>>,
    /// Users without a quota whose stale count (from when they had one) is gone.
    forgotten: Mutex<HashSet<String>>,
}

impl Quotas {
    /// Usage kept in `store`, first counted in `storage`.
    pub fn new(store: Arc<dyn QuotaStore>, storage: Storage) -> Quotas {
        Quotas {
            store,
            storage,
            users: Mutex::new(HashMap::new()),
            forgotten: Mutex::new(HashSet::new()),
        }
    }

    /// The user's usage, counted from S3 if it never was.
    async fn usage(&self, user: &User) -> Result<Arc<Usage>, UploadError> {
        let usage = self
            .users
            .lock()
            .entry(user.name.clone())
            .or_default()
            .clone();
        usage
            .counted
            .get_or_try_init(|| async {
                let internal = |e: StateError| UploadError::Internal(e.to_string());
                let (bytes, files) = match self.store.quota_usage(user.name.clone()).await {
                    Ok(Some(counted)) => counted,
                    Ok(None) => {
                        let counted = self.storage.usage_under(&user.home).await?;
                        self.store
                            .set_quota_usage(user.name.clone(), counted.0, counted.1)
                            .await
                            .map_err(internal)?;
                        tracing::info!(user = %user.name, home = %user.home, bytes = counted.0,
                            files = counted.1, "counted what the user stores for their quota");
                        counted
                    }
                    Err(e) => return Err(internal(e)),
                };
                usage.bytes.store(bytes, Ordering::Release);
                usage.files.store(files, Ordering::Release);
                Ok(())
            })
            .await?;
        Ok(usage)
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
        let usage = self.usage(user).await?;
        let mut ticket = QuotaTicket {
            usage: usage.clone(),
            limit_bytes: user.quota_bytes,
            bytes: 0,
            file: false,
        };
        if let Some(limit) = user.quota_files {
            let before = usage.reserved_files.fetch_add(1, Ordering::AcqRel);
            ticket.file = true;
            let used = usage.files.load(Ordering::Acquire) + before;
            if used >= limit {
                // A replacement adds no file.
                usage.reserved_files.fetch_sub(1, Ordering::AcqRel);
                ticket.file = false;
                if self.storage.head(key).await?.is_none() {
                    return Err(QuotaExceeded::Files { limit, used }.into());
                }
            }
        }
        if let Some(limit) = user.quota_bytes {
            let used =
                usage.bytes.load(Ordering::Acquire) + usage.reserved_bytes.load(Ordering::Acquire);
            if used >= limit {
                return Err(QuotaExceeded::Bytes { limit, used }.into());
            }
        }
        ticket.grow_to(offset)?;
        Ok(Some(ticket))
    }

    /// Counts a completed upload of `size` bytes that replaced an object of `replaced`
    /// bytes (or added a file), then lets its reservation go.
    pub async fn committed(
        &self,
        user: &User,
        ticket: QuotaTicket,
        size: u64,
        replaced: Option<u64>,
    ) {
        let bytes = clamp(size) - clamp(replaced.unwrap_or(0));
        let files = i64::from(replaced.is_none());
        ticket.usage.apply(bytes, files);
        drop(ticket);
        self.persist(user, bytes, files).await;
    }

    /// Counts a file of `size` bytes that the user deleted or replaced by a rename.
    pub async fn removed(&self, user: &User, size: u64) {
        if !user.has_quota() {
            return;
        }
        let usage = self.users.lock().get(&user.name).cloned();
        if let Some(usage) = usage
            && usage.counted.initialized()
        {
            usage.apply(-clamp(size), -1);
        }
        self.persist(user, -clamp(size), -1).await;
    }

    async fn persist(&self, user: &User, bytes: i64, files: i64) {
        if let Err(e) = self
            .store
            .add_quota_usage(user.name.clone(), bytes, files)
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
        self.users.lock().remove(&user.name);
        if let Err(e) = self.store.forget_quota_usage(user.name.clone()).await {
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

    #[test]
    fn parallel_uploads_share_the_byte_quota_and_give_it_back() {
        let usage = Arc::new(Usage::default());
        usage.bytes.store(4, Ordering::Release);
        let ticket = || QuotaTicket {
            usage: usage.clone(),
            limit_bytes: Some(10),
            bytes: 0,
            file: false,
        };
        let (mut a, mut b) = (ticket(), ticket());
        a.grow_to(3).expect("7 of 10");
        b.grow_to(3).expect("10 of 10");
        assert_eq!(
            b.grow_to(4),
            Err(QuotaExceeded::Bytes {
                limit: 10,
                used: 11
            })
        );
        drop(b);
        assert_eq!(usage.reserved_bytes.load(Ordering::Acquire), 3);
        drop(a);
        assert_eq!(usage.reserved_bytes.load(Ordering::Acquire), 0);
        usage.apply(-5, -1);
        assert_eq!(usage.bytes.load(Ordering::Acquire), 0, "never below zero");
    }
}
