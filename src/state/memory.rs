//! Bans and failed-login scores in process memory: the single-replica [`BanStore`]. They are
//! gone after a restart, which only forgives the addresses banned at the time.

use super::{BanStore, FailureScore};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Addresses tracked before stale ones are dropped (bounds memory under a scan).
const PRUNE_ABOVE: usize = 10_000;
/// How long a banned address's history is kept after its last failure: as long as the
/// defender's longest ban, so a returning offender still gets a longer ban.
const REMEMBER_BANS: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Default)]
struct Record {
    /// Recent failed logins, oldest first.
    failures: VecDeque<SystemTime>,
    /// End of the current ban.
    banned_until: Option<SystemTime>,
    /// Bans so far: each one doubles the next.
    bans: u32,
}

/// Time from `earlier` to `later`, zero if the clock says otherwise.
fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

impl Record {
    fn banned_at(&self, now: SystemTime) -> bool {
        self.banned_until.is_some_and(|u| u > now)
    }
}

/// The in-memory ban list; one per bridge.
#[derive(Debug, Default)]
pub struct MemoryBans {
    records: Mutex<HashMap<IpAddr, Record>>,
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
            records.retain(|_, r| {
                r.banned_at(now)
                    || r.failures.back().is_some_and(|t| since(now, *t) < window)
                    || r.bans > 0
                        && r.failures
                            .back()
                            .is_some_and(|t| since(now, *t) < REMEMBER_BANS)
            });
        }
        let record = records.entry(ip).or_default();
        if record.banned_at(now) {
            return None;
        }
        record.failures.push_back(now);
        while record
            .failures
            .front()
            .is_some_and(|t| since(now, *t) > window)
        {
            record.failures.pop_front();
        }
        Some(FailureScore {
            failures: record.failures.len(),
            bans: record.bans,
        })
    }

    fn ban(&self, ip: IpAddr, now: SystemTime, until: SystemTime) -> Option<u32> {
        let mut records = self.records.lock();
        let record = records.entry(ip).or_default();
        if record.banned_at(now) {
            return None;
        }
        record.bans += 1;
        record.banned_until = Some(until);
        record.failures.clear();
        Some(record.bans)
    }

    fn unban(&self, ip: IpAddr) {
        if let Some(record) = self.records.lock().get_mut(&ip) {
            record.banned_until = None;
        }
    }

    fn banned_count(&self, now: SystemTime) -> usize {
        self.records
            .lock()
            .values()
            .filter(|r| r.banned_at(now))
            .count()
    }
}
