//! The upload pipeline's contracts: records of cut (and running) uploads with the mark of
//! every part (its end offset and the SHA-256 state there), finished uploads under temporary
//! names, and what each user with a quota stores.
//!
//! A part's mark is written before the part is sent; what is durable is decided against S3
//! (ListParts) when an upload is cut or the bridge starts, so a lost mark only means the
//! client resends one more part.

use super::StateError;

/// A cut (or running) upload that can be resumed.
#[derive(Debug, Clone)]
pub struct PartialRecord {
    /// The object key.
    pub key: String,
    /// Whose upload it is: only this user sees or resumes it.
    pub username: String,
    /// The client path, for logs.
    pub path: String,
    /// The S3 multipart upload.
    pub upload_id: String,
    /// Detected from the first part.
    pub content_type: String,
    /// The completion id, kept so a resumed upload reports under the id it started with.
    pub id: String,
    /// Fields the connector's `create` step extracted.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// When the first byte arrived, ms since the epoch.
    pub started_at_ms: i64,
    /// Last change, ms since the epoch; the resume window runs from here.
    pub updated_ms: i64,
    /// Bytes safely in S3: where a resume must start.
    pub durable_bytes: u64,
    /// Whole parts (1..=n) making up `durable_bytes`.
    pub durable_parts: u32,
    /// SHA-256 state after `durable_bytes`.
    pub hash_state: Option<Vec<u8>>,
    /// A session is writing it now.
    pub active: bool,
}

/// A part's end offset and the hash state there, written before the part is sent.
#[derive(Debug, Clone)]
pub struct PartMark {
    /// Part number.
    pub number: u32,
    /// Offset just past the part.
    pub end: u64,
    /// Serialized SHA-256 state at `end`.
    pub hash_state: Vec<u8>,
}

/// A finished upload under a temporary name, waiting for its rename.
#[derive(Debug, Clone)]
pub struct TempRecord {
    /// The object key.
    pub key: String,
    /// Who uploaded it.
    pub username: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the whole content, hex.
    pub sha256: String,
    /// Detected content type.
    pub content_type: String,
    /// The completion id the rename will report.
    pub id: String,
    /// Fields the connector's `create` step extracted.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// When the upload started, ms since the epoch.
    pub started_at_ms: i64,
}

/// Records of cut (and running) uploads, keyed by object key, and their part marks.
#[async_trait::async_trait]
pub trait CutUploadStore: Send + Sync + std::fmt::Debug {
    /// Records a new multipart upload as running, with nothing durable yet; replaces any
    /// older record for the key.
    async fn begin(&self, rec: PartialRecord) -> Result<(), StateError>;

    /// Writes a part's mark before the part is sent (replacing one of the same number). On a
    /// shared store only while this process holds the upload: a refused mark is an error
    /// and makes [`CutUploadStore::may_write`] false.
    async fn mark(&self, upload_id: String, mark: PartMark) -> Result<(), StateError>;

    /// The marks of an upload, by part number.
    async fn marks(&self, upload_id: String) -> Result<Vec<PartMark>, StateError>;

    /// Marks the upload as cut with `durable` bytes in parts 1..=`parts` and drops the
    /// marks after them; false when the record belongs to a newer upload of the same key
    /// (this one must be aborted).
    async fn suspend(
        &self,
        key: String,
        upload_id: String,
        durable: u64,
        parts: u32,
        hash_state: Vec<u8>,
    ) -> Result<bool, StateError>;

    /// Claims a cut upload for a resuming session (or the sweep that aborts it); false if
    /// another session has it.
    async fn activate(&self, key: String, upload_id: String) -> Result<bool, StateError>;

    /// Forgets an upload (completed or aborted) and its marks.
    async fn remove(&self, key: String, upload_id: String) -> Result<(), StateError>;

    /// The record for a key, running or cut.
    async fn get(&self, key: String) -> Result<Option<PartialRecord>, StateError>;

    /// Cut uploads of `username` directly under `prefix` (a directory's key prefix).
    async fn cut_under(
        &self,
        prefix: String,
        username: String,
    ) -> Result<Vec<PartialRecord>, StateError>;

    /// Every record (for the start-up reconciliation).
    async fn all(&self) -> Result<Vec<PartialRecord>, StateError>;

    /// How many cut uploads are kept.
    async fn count_cut(&self) -> Result<i64, StateError>;

    /// Cut uploads untouched since before `before_ms`.
    async fn expired(&self, before_ms: i64) -> Result<Vec<PartialRecord>, StateError>;

    /// Running records whose writer is gone: on a shared store, those whose writer's lease
    /// ran out (its replica died); on a store one process owns, those an earlier process
    /// left running. Never a record this store began, resumed or adopted and still runs.
    async fn orphaned(&self) -> Result<Vec<PartialRecord>, StateError>;

    /// Takes an orphaned running record for this store (it stays running, now held here),
    /// so that one process alone keeps it at the parts S3 holds; false if its writer is
    /// alive, another process took it first, or it is gone.
    async fn adopt(&self, key: String, upload_id: String) -> Result<bool, StateError>;

    /// Whether this process may still send parts into (or complete) the upload it began,
    /// resumed or adopted: false on a shared store once its lease may be about to run out
    /// (renewals failed, or a fenced `mark` found the record no longer its own), so another
    /// replica might adopt it. Once false it stays false: the store stops renewing the
    /// lease and the writer must let go of the multipart upload without completing,
    /// marking or aborting it. A store one process owns always answers true.
    fn may_write(&self, upload_id: &str) -> bool {
        let _ = upload_id;
        true
    }

    /// Takes or renews, for `lease`, the right to sweep expired cut uploads; true while this
    /// store holds it. One process at a time holds it (a store one process owns always
    /// does), so two replicas never sweep together.
    async fn lead_sweep(&self, lease: std::time::Duration) -> Result<bool, StateError>;
}

/// Finished uploads under temporary names, keyed by object key.
#[async_trait::async_trait]
pub trait TempNameStore: Send + Sync + std::fmt::Debug {
    /// Remembers a finished temporary upload (replacing an older one of the same key).
    async fn put_temp(&self, rec: TempRecord) -> Result<(), StateError>;

    /// The finished temporary upload at `key`, if any.
    async fn temp(&self, key: String) -> Result<Option<TempRecord>, StateError>;

    /// Forgets the temporary upload at `key`.
    async fn remove_temp(&self, key: String) -> Result<(), StateError>;

    /// Forgets temporary uploads finished before `before_ms` (never renamed); returns how
    /// many.
    async fn prune_temp(&self, before_ms: i64) -> Result<usize, StateError>;
}

/// What each user with a quota stores: bytes and files.
#[async_trait::async_trait]
pub trait QuotaStore: Send + Sync + std::fmt::Debug {
    /// What `username` stores (bytes, files), if it was counted before.
    async fn quota_usage(&self, username: String) -> Result<Option<(u64, u64)>, StateError>;

    /// Records a fresh count of what `username` stores.
    async fn set_quota_usage(
        &self,
        username: String,
        bytes: u64,
        files: u64,
    ) -> Result<(), StateError>;

    /// Adds a change to what `username` stores (never below zero; nothing when the user
    /// was never counted); changes commute, so concurrent uploads may record in any order.
    async fn add_quota_usage(
        &self,
        username: String,
        bytes: i64,
        files: i64,
    ) -> Result<(), StateError>;

    /// Forgets what `username` stores (their quota was taken away).
    async fn forget_quota_usage(&self, username: String) -> Result<(), StateError>;

    /// Takes `claim.bytes` and `claim.files` more for one upload in flight, atomically
    /// refused when what the user stores plus every live reservation (theirs included) plus
    /// the claim would pass a limit; renews the reservation's lease to `claim.expires_ms`
    /// either way. A claim of nothing only renews and is never refused. A reservation whose
    /// lease ran out counts for nothing and restarts from the claim.
    async fn claim_quota(&self, claim: QuotaClaim) -> Result<QuotaGrant, StateError>;

    /// Ends reservation `id` of `username` and adds `bytes` and `files` to what the user
    /// stores, in one atomic step (zero and zero to just give the reservation back).
    async fn settle_quota(
        &self,
        username: String,
        id: String,
        bytes: i64,
        files: i64,
    ) -> Result<(), StateError>;

    /// Deletes reservations whose lease ended before `before_ms` (they already count for
    /// nothing); returns how many.
    async fn expire_quota_claims(&self, before_ms: i64) -> Result<usize, StateError>;
}

/// More of a user's quota asked for by one upload in flight (see
/// [`QuotaStore::claim_quota`]).
#[derive(Debug, Clone)]
pub struct QuotaClaim {
    /// Whose quota.
    pub username: String,
    /// The reservation: one per upload attempt, unique across replicas.
    pub id: String,
    /// The replica holding it, for operators reading the table.
    pub owner: String,
    /// Bytes to add to the reservation.
    pub bytes: u64,
    /// Files to add to the reservation.
    pub files: u64,
    /// `quota_bytes`, if set.
    pub limit_bytes: Option<u64>,
    /// `quota_files`, if set.
    pub limit_files: Option<u64>,
    /// The lease: after this (ms since the epoch) the reservation counts for nothing unless
    /// renewed, so a replica that died holds no quota for long.
    pub expires_ms: i64,
    /// The claimer's clock, ms since the epoch: leases ended before it count for nothing.
    pub now_ms: i64,
}

/// A user's figures: what they store and what live reservations hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaTotals {
    /// Bytes stored.
    pub bytes: u64,
    /// Files stored.
    pub files: u64,
    /// Bytes held by uploads in flight (live leases only).
    pub reserved_bytes: u64,
    /// Files held by uploads in flight (live leases only).
    pub reserved_files: u64,
}

/// What came of a [`QuotaClaim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaGrant {
    /// Taken: what the reservation holds now, in total (less than asked for plus held
    /// before when its lease had run out).
    Granted {
        /// Bytes held.
        bytes: u64,
        /// Files held.
        files: u64,
    },
    /// It would pass a limit; the user's figures at the time. Nothing was taken.
    Refused(QuotaTotals),
    /// The user was never counted (or was forgotten): count what they store first.
    Uncounted,
}

/// The uploads a store's own process is writing, by upload id: what tells its running
/// records from those another (dead) process left running, and whose leases it renews.
#[derive(Debug, Default, Clone)]
pub(crate) struct Writing(std::sync::Arc<parking_lot::Mutex<std::collections::HashSet<String>>>);

#[cfg(test)]
impl PartialRecord {
    /// A running record of `upload_id` at `key` as the pipeline begins one (user `u`, path
    /// `/x.bin`, id `e`, nothing durable yet), for the stores' tests.
    pub(crate) fn running(key: &str, upload_id: &str) -> PartialRecord {
        PartialRecord {
            key: key.into(),
            username: "u".into(),
            path: "/x.bin".into(),
            upload_id: upload_id.into(),
            content_type: "video/mp4".into(),
            id: "e".into(),
            fields: serde_json::Map::new(),
            started_at_ms: 1,
            updated_ms: 1,
            durable_bytes: 0,
            durable_parts: 0,
            hash_state: None,
            active: true,
        }
    }
}

impl Writing {
    /// Records that this process writes `upload_id`; false if it already did.
    pub(crate) fn take(&self, upload_id: &str) -> bool {
        self.0.lock().insert(upload_id.to_string())
    }

    /// This process no longer writes `upload_id`.
    pub(crate) fn release(&self, upload_id: &str) {
        self.0.lock().remove(upload_id);
    }

    /// Whether this process writes `upload_id`.
    pub(crate) fn has(&self, upload_id: &str) -> bool {
        self.0.lock().contains(upload_id)
    }

    /// Every upload id this process writes.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.0.lock().iter().cloned().collect()
    }
}
