//! The process-wide memory budget for upload buffers.
//!
//! Two pools share `memory_limit`: a small *probe* pool from which every upload takes its
//! first, small buffer (so a 2 KiB file costs 256 KiB of budget, not a whole part), and the
//! *part* pool from which whole parts are reserved atomically. Reservations are taken before
//! bytes are read and returned when S3 has the part, so the sum of reservations never exceeds
//! the limit. Parts are reserved whole and the part pool only ever holds buffers that are
//! being filled or sent, so no set of uploads can wait on each other forever; the semaphores
//! are fair (FIFO), so a fast upload cannot starve a slow one. SFTP sessions also charge
//! their own buffers to the part pool while they last, never its last `kept_for_parts`.

use prometheus::IntGauge;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget accounting unit: semaphores count KiB so that terabytes fit in a permit count.
const UNIT: u64 = 1024;
/// An upload's first buffer: small files finish inside it.
pub const PROBE_SIZE: u64 = 256 * 1024;

/// The shared budget.
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    probes: Arc<Semaphore>,
    parts: Arc<Semaphore>,
    part_pool_bytes: u64,
    limit: u64,
    in_use: AtomicU64,
    peak: AtomicU64,
    gauge: IntGauge,
    sessions: OpenSessions,
    /// Bytes of the part pool held by [`SessionCharge`]s now.
    session_charged: AtomicU64,
    /// The most [`SessionCharge`]s may hold: the part pool less what is kept for parts.
    session_charge_cap: u64,
}

/// Bytes of budget held by one buffer; returned when dropped.
pub struct Reservation {
    bytes: u64,
    _permit: OwnedSemaphorePermit,
    budget: Arc<Inner>,
}

impl Reservation {
    /// Reserved bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let now = self.budget.in_use.fetch_sub(self.bytes, Ordering::AcqRel) - self.bytes;
        self.budget.gauge.set(now as i64);
    }
}

/// One session's buffers, charged to the part pool until dropped ([`MemoryBudget::charge_session`]).
pub struct SessionCharge {
    _reservation: Reservation,
    _counted: ChargeCounted,
}

/// A session charge's place under the cap.
struct ChargeCounted {
    budget: Arc<Inner>,
    bytes: u64,
}

impl Drop for ChargeCounted {
    fn drop(&mut self) {
        self.budget
            .session_charged
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The client sessions (FTP and SFTP) open now: each may stream an upload, so each is owed
/// a share of the budget in the buffers the kernel and the SSH layer keep for it.
#[derive(Debug, Clone, Default)]
pub struct OpenSessions(Arc<AtomicUsize>);

impl OpenSessions {
    /// Counts one session until the guard is dropped.
    pub fn enter(&self) -> OpenSessionGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        OpenSessionGuard(self.0.clone())
    }

    /// How many are open.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Half of one session's equal share of `memory_limit` when `sessions` are open: what each
/// may keep in buffers outside the budget (kernel receive buffers, SSH windows), so that all
/// of them together stay within about half the limit.
pub fn session_share(memory_limit: u64, sessions: usize) -> u64 {
    memory_limit / (2 * sessions.max(1) as u64)
}

/// Holds one place in [`OpenSessions`].
#[derive(Debug)]
pub struct OpenSessionGuard(Arc<AtomicUsize>);

impl Drop for OpenSessionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl MemoryBudget {
    /// Splits `limit` into the probe pool (an eighth, at least one probe) and the part pool,
    /// of which session charges never take the last `kept_for_parts` bytes.
    pub fn new(limit: u64, kept_for_parts: u64, gauge: IntGauge) -> MemoryBudget {
        let probe_pool = (limit / 8).max(PROBE_SIZE).min(limit / 2);
        let part_pool = limit - probe_pool;
        MemoryBudget {
            inner: Arc::new(Inner {
                probes: Arc::new(Semaphore::new(units(probe_pool))),
                parts: Arc::new(Semaphore::new(units(part_pool))),
                part_pool_bytes: units(part_pool) as u64 * UNIT,
                limit,
                in_use: AtomicU64::new(0),
                peak: AtomicU64::new(0),
                gauge,
                sessions: OpenSessions::default(),
                session_charged: AtomicU64::new(0),
                session_charge_cap: (units(part_pool) as u64 * UNIT).saturating_sub(kept_for_parts),
            }),
        }
    }

    /// The client sessions sharing the budget.
    pub fn sessions(&self) -> &OpenSessions {
        &self.inner.sessions
    }

    /// The largest part the budget can ever hold.
    pub fn max_part(&self) -> u64 {
        self.inner.part_pool_bytes
    }

    /// The configured limit.
    pub fn limit(&self) -> u64 {
        self.inner.limit
    }

    /// Bytes reserved right now.
    pub fn in_use(&self) -> u64 {
        self.inner.in_use.load(Ordering::Acquire)
    }

    /// The most ever reserved at once.
    pub fn peak(&self) -> u64 {
        self.inner.peak.load(Ordering::Acquire)
    }

    /// Reserves a first buffer of up to [`PROBE_SIZE`]; waits while the probe pool is spent.
    pub async fn reserve_probe(&self, bytes: u64) -> Reservation {
        let pool = self.inner.probes.clone();
        self.reserve(pool, bytes.min(PROBE_SIZE)).await
    }

    /// Reserves a whole part buffer at once; waits while the part pool is spent.
    pub async fn reserve_part(&self, bytes: u64) -> Reservation {
        let pool = self.inner.parts.clone();
        self.reserve(pool, bytes.min(self.inner.part_pool_bytes))
            .await
    }

    /// Reserves from the probe pool only if the bytes are free right now (for buffers whose
    /// owner must not wait, such as out-of-order writes).
    pub fn try_reserve_probe(&self, bytes: u64) -> Option<Reservation> {
        let n = units(bytes) as u32;
        let permit = self.inner.probes.clone().try_acquire_many_owned(n).ok()?;
        Some(self.account(permit, n))
    }

    /// Charges one session's own buffers (SSH window, requests being parsed, its tasks) to
    /// the part pool for as long as the session lasts, waiting like a part would. Returns
    /// `None`, uncharged, once session charges would leave less than `kept_for_parts` of the
    /// part pool: that much always stays for uploads, so sessions never hold back the uploads
    /// that would end them.
    pub async fn charge_session(&self, bytes: u64) -> Option<SessionCharge> {
        let bytes = units(bytes) as u64 * UNIT;
        let cap = self.inner.session_charge_cap;
        let charged = &self.inner.session_charged;
        charged
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now + bytes <= cap).then_some(now + bytes)
            })
            .ok()?;
        // Counted before waiting, and uncounted should the wait be abandoned.
        let counted = ChargeCounted {
            budget: self.inner.clone(),
            bytes,
        };
        let pool = self.inner.parts.clone();
        Some(SessionCharge {
            _reservation: self.reserve(pool, bytes).await,
            _counted: counted,
        })
    }

    async fn reserve(&self, pool: Arc<Semaphore>, bytes: u64) -> Reservation {
        let n = units(bytes) as u32;
        // The semaphores are never closed, so acquiring can only wait, not fail.
        let permit = match pool.acquire_many_owned(n).await {
            Ok(p) => p,
            Err(_) => unreachable!("upload budget semaphores are never closed"),
        };
        self.account(permit, n)
    }

    fn account(&self, permit: OwnedSemaphorePermit, n: u32) -> Reservation {
        let bytes = n as u64 * UNIT;
        let now = self.inner.in_use.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.inner.peak.fetch_max(now, Ordering::AcqRel);
        self.inner.gauge.set(now as i64);
        Reservation {
            bytes,
            _permit: permit,
            budget: self.inner.clone(),
        }
    }
}

/// Bytes → whole units, rounding up, clamped to what a semaphore permit count can hold.
fn units(bytes: u64) -> usize {
    bytes.div_ceil(UNIT).min(u32::MAX as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn budget(limit: u64) -> MemoryBudget {
        MemoryBudget::new(limit, limit / 2, IntGauge::new("t", "t").expect("gauge"))
    }

    #[tokio::test]
    async fn reservations_are_counted_and_returned() {
        let b = budget(64 << 20);
        let p = b.reserve_part(16 << 20).await;
        let q = b.reserve_probe(2048).await;
        assert_eq!(b.in_use(), (16 << 20) + 2048);
        drop(p);
        drop(q);
        assert_eq!(b.in_use(), 0);
        assert_eq!(b.peak(), (16 << 20) + 2048);
    }

    #[tokio::test]
    async fn a_spent_budget_waits_instead_of_growing() {
        let b = budget(16 << 20);
        let part = b.max_part();
        let held = b.reserve_part(part).await;
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            b.reserve_part(1 << 20),
        )
        .await;
        assert!(waiting.is_err(), "second reservation must wait");
        drop(held);
        let _ok = tokio::time::timeout(std::time::Duration::from_secs(1), b.reserve_part(1 << 20))
            .await
            .expect("released budget is reusable");
        assert!(b.peak() <= b.limit());
    }

    #[tokio::test]
    async fn session_charges_stop_at_their_cap_and_leave_parts_room() {
        let b = budget(8 << 20);
        let charges: Vec<_> = (0..40)
            .filter_map(|_| b.charge_session(64 << 10).now_or_never().flatten())
            .collect();
        // The part pool (7 MiB) less the 4 MiB kept for parts: 48 charges of 64 KiB; 40 fit.
        assert_eq!(charges.len(), 40);
        assert!(b.charge_session(1 << 20).now_or_never().flatten().is_none());
        assert_eq!(b.in_use(), 40 * (64 << 10));
        let part = b.reserve_part(4 << 20).now_or_never();
        assert!(part.is_some(), "half the limit stays for parts");
        drop(charges);
        drop(part);
        assert_eq!(b.in_use(), 0);
        assert!(b.charge_session(3 << 20).now_or_never().flatten().is_some());
    }
}
