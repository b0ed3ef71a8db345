//! The writer's side of an upload's lease: when this opening last knew it held each
//! upload's lease, so the pipeline can stop writing before another replica may adopt it.
//!
//! The lease ends at the database's clock (`lease_until_ms`, set from `clock_timestamp()`
//! by the statement that took or renewed it); this side counts on the monotonic clock from
//! the instant *before* that statement was sent, which is never later than the moment the
//! database read its clock. So `sent + lease` never ends after the database's lease does,
//! and the writer stops a margin earlier still (see [`super::PgUploads::start`]).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per upload id, when the latest statement that gave or renewed this opening's lease was
/// sent; cheap to clone (shared with the renewing task).
#[derive(Debug, Default, Clone)]
pub(super) struct Fence(Arc<Mutex<HashMap<String, Instant>>>);

impl Fence {
    /// A statement sent at `sent` gave this opening the lease of `upload_id` (begin,
    /// activate, adopt).
    pub(super) fn granted(&self, upload_id: &str, sent: Instant) {
        let mut map = self.0.lock();
        let at = map.entry(upload_id.to_string()).or_insert(sent);
        *at = (*at).max(sent);
    }

    /// A renewal sent at `sent` renewed the leases of `ids`; uploads let go of meanwhile
    /// stay let go of.
    pub(super) fn renewed(&self, ids: &[String], sent: Instant) {
        let mut map = self.0.lock();
        for id in ids {
            if let Some(at) = map.get_mut(id) {
                *at = (*at).max(sent);
            }
        }
    }

    /// This opening no longer holds (or writes) `upload_id`.
    pub(super) fn forget(&self, upload_id: &str) {
        self.0.lock().remove(upload_id);
    }

    /// Whether the lease of `upload_id` was given or renewed less than `window` ago.
    pub(super) fn holds(&self, upload_id: &str, window: Duration) -> bool {
        self.0
            .lock()
            .get(upload_id)
            .is_some_and(|at| at.elapsed() < window)
    }
}
