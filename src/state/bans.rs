//! The defender's contract: failed-login scores and bans per client address. The policy
//! (how many failures within which window ban for how long) stays in `defender`; a store
//! only keeps the counts and the deadlines, each change atomic per address.
//!
//! Times are wall-clock (`SystemTime`) so that replicas sharing a store agree on them.
//! The methods are synchronous: the defender decides before a connection is served.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// An address's standing after a failed login was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureScore {
    /// Failed logins within the window, this one included.
    pub failures: usize,
    /// Bans the address had so far (each one lengthens the next).
    pub bans: u32,
}

/// One address the store remembers, as `ingest-bridge bans list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanEntry {
    /// The client address.
    pub ip: IpAddr,
    /// The end of its ban, if it is banned at the time asked.
    pub banned_until: Option<SystemTime>,
    /// Failed logins counted since its last ban (a ban clears them).
    pub failures: usize,
    /// Bans it had so far.
    pub bans: u32,
}

/// Failed-login scores and bans per address.
pub trait BanStore: Send + Sync + std::fmt::Debug {
    /// The end of `ip`'s ban, if it is banned at `now`.
    fn banned_until(&self, ip: IpAddr, now: SystemTime) -> Option<SystemTime>;

    /// Counts a failed login of `ip` at `now`, forgetting its failures more than `window`
    /// before; `None` (and nothing counted) while `ip` is banned.
    fn add_failure(&self, ip: IpAddr, now: SystemTime, window: Duration) -> Option<FailureScore>;

    /// Bans `ip` until `until` and clears its failures, unless it is already banned at
    /// `now` (another connection's failure banned it first); returns the bans so far, this
    /// one included, when it banned.
    fn ban(&self, ip: IpAddr, now: SystemTime, until: SystemTime) -> Option<u32>;

    /// Lifts `ip`'s ban; its ban count stays, so a next ban is still longer. The one place
    /// a ban is lifted (the `bans lift` command, the admin API): a shared store lifts it for
    /// every replica.
    fn unban(&self, ip: IpAddr);

    /// The addresses banned at `now` or with failed logins counted, by address.
    fn list(&self, now: SystemTime) -> Vec<BanEntry>;

    /// How many addresses are banned at `now`.
    fn banned_count(&self, now: SystemTime) -> usize;
}
