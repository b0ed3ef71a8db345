//! Bans and failed-login scores in process memory: the single-replica [`BanStore`]. They are
//! gone after a restart, which only forgives the addresses banned at the time.

use super::{BanEntry, BanStore, FailureScore};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Addresses tracked before stale ones are dropped (bounds memory under a scan).
const PRUNE_ABOVE: usize = 10_000;
/// How long a banned address's history is kept after its last failure: as long as the
/// defender's longest ban, so a returning offender still gets a longer ban.
pub(crate) const REMEMBER_BANS: Duration = Duration::from_secs(7 * 24 * 3600);

/// One address's failed logins and bans: the bookkeeping every [`BanStore`] keeps the same
/// way (PostgreSQL's cache too), whatever stores it.
#[derive(Debug, Default)]
pub(crate) struct BanRecord {
    /// Recent failed logins, oldest first.
    pub(crate) failures: VecDeque<SystemTime>,
    /// End of the current ban.
    pub(crate) banned_until: Option<SystemTime>,
    /// Bans so far: each one doubles the next.
    pub(crate) bans: u32,
}

/// Time from `earlier` to `later`, zero if the clock says otherwise.
fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

impl BanRecord {
    /// Whether the address is banned at `now`.
    pub(crate) fn banned_at(&self, now: SystemTime) -> bool {
        self.banned_until.is_some_and(|u| u > now)
    }

    /// Whether the record still matters at `now`: banned, failures inside `window`, or a
    /// past offender seen within [`REMEMBER_BANS`]. Others are pruned under a scan.
    pub(crate) fn worth_keeping(&self, now: SystemTime, window: Duration) -> bool {
        let last = self.failures.back();
        self.banned_at(now)
            || last.is_some_and(|t| since(now, *t) < window)
            || self.bans > 0 && last.is_some_and(|t| since(now, *t) < REMEMBER_BANS)
    }

    /// Counts a failed login at `now` (nothing while banned) and forgets those older than
    /// `window`.
    pub(crate) fn add_failure(
        &mut self,
        now: SystemTime,
        window: Duration,
    ) -> Option<FailureScore> {
        if self.banned_at(now) {
            return None;
        }
        self.failures.push_back(now);
        while self
            .failures
            .front()
            .is_some_and(|t| since(now, *t) > window)
        {
            self.failures.pop_front();
        }
        Some(FailureScore {
            failures: self.failures.len(),
            bans: self.bans,
        })
    }

    /// The record as listed at `now`, if it is banned or has failures counted.
    pub(crate) fn entry(&self, ip: IpAddr, now: SystemTime) -> Option<BanEntry> {
        let banned_until = self.banned_until.filter(|u| *u > now);
        (banned_until.is_some() || !self.failures.is_empty()).then_some(BanEntry {
            ip,
            banned_until,
            failures: self.failures.len(),
            bans: self.bans,
        })
    }

    /// Bans until `until`, unless already banned at `now`; the bans so far.
    pub(crate) fn ban(&mut self, now: SystemTime, until: SystemTime) -> Option<u32> {
        if self.banned_at(now) {
            return None;
        }
        self.bans += 1;
        self.banned_until = Some(until);
        self.failures.clear();
        Some(self.bans)
    }
}

/// The in-memory ban list; one per bridge.
#[derive(Debug, Default)]
pub struct MemoryBans {
    records: Mutex<HashMap<IpAddr, BanRecord>>,
}

impl MemoryBans {
    /// An empty ban list.
    pub fn new() -> MemoryBans {
        MemoryBans::default()
    }
}

impl BanStore for MemoryBans {
    fn banned_until(&self, ip: IpAddr, now: SystemTime) -> Option<SystemTime> {
        self.records
            .lock()
            .get(&ip)
            .and_then(|r| r.banned_until)
            .filter(|until| *until > now)
    }

    fn add_failure(&self, ip: IpAddr, now: SystemTime, window: Duration) -> Option<FailureScore> {
        let mut records = self.records.lock();
        if records.len() > PRUNE_ABOVE {
            records.retain(|_, r| r.worth_keeping(now, window));
        }
        records.entry(ip).or_default().add_failure(now, window)
    }

    fn ban(&self, ip: IpAddr, now: SystemTime, until: SystemTime) -> Option<u32> {
        self.records.lock().entry(ip).or_default().ban(now, until)
    }

    fn unban(&self, ip: IpAddr) {
        if let Some(record) = self.records.lock().get_mut(&ip) {
            record.banned_until = None;
        }
    }

    fn list(&self, now: SystemTime) -> Vec<BanEntry> {
        let mut entries: Vec<BanEntry> = self
            .records
            .lock()
            .iter()
            .filter_map(|(ip, r)| r.entry(*ip, now))
            .collect();
        entries.sort_by_key(|e| e.ip);
        entries
    }

    fn banned_count(&self, now: SystemTime) -> usize {
        self.records
            .lock()
            .values()
            .filter(|r| r.banned_at(now))
            .count()
    }
}
