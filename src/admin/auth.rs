//! The Bearer token check, and the brake on guessing it. Both sides are hashed first, so
//! the comparison takes the same time whatever the token's length and wherever the first
//! difference is.

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Wrong tokens an address may send within [`GUESS_WINDOW`] before it is refused.
pub const MAX_GUESSES: usize = 10;
/// How long wrong tokens count, and how long an address that sent too many is refused.
pub const GUESS_WINDOW: Duration = Duration::from_secs(300);
/// Addresses tracked at most: past it the oldest are forgotten, so a flood of addresses
/// cannot grow the table without bound.
const MAX_TRACKED: usize = 10_000;

/// Wrong tokens per address. Kept apart from the defender's bans: an operator behind a
/// port-forward shares 127.0.0.1 with local clients, and a mistyped token must not ban them.
#[derive(Debug, Default)]
pub struct Guesses {
    by_address: Mutex<HashMap<IpAddr, Tally>>,
}

#[derive(Debug, Clone, Copy)]
struct Tally {
    first: Instant,
    wrong: usize,
}

impl Guesses {
    /// Counts a wrong token from `ip`.
    pub fn wrong(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut table = self.by_address.lock();
        if table.len() >= MAX_TRACKED && !table.contains_key(&ip) {
            table.retain(|_, t| now.duration_since(t.first) < GUESS_WINDOW);
            if table.len() >= MAX_TRACKED
                && let Some(oldest) = table.iter().min_by_key(|(_, t)| t.first).map(|(a, _)| *a)
            {
                table.remove(&oldest);
            }
        }
        let tally = table.entry(ip).or_insert(Tally {
            first: now,
            wrong: 0,
        });
        if now.duration_since(tally.first) >= GUESS_WINDOW {
            *tally = Tally {
                first: now,
                wrong: 0,
            };
        }
        tally.wrong += 1;
        if tally.wrong == MAX_GUESSES {
            // Refused for a whole window from the last guess.
            tally.first = now;
            tracing::warn!(remote = %ip, "admin API: too many wrong tokens; address refused for {GUESS_WINDOW:?}");
        }
    }

    /// How much longer `ip` is refused, if it sent too many wrong tokens.
    pub fn refused_for(&self, ip: IpAddr) -> Option<Duration> {
        let table = self.by_address.lock();
        let tally = table.get(&ip)?;
        let elapsed = tally.first.elapsed();
        (tally.wrong >= MAX_GUESSES && elapsed < GUESS_WINDOW).then(|| GUESS_WINDOW - elapsed)
    }
}

/// Whether `authorization` (the header's value) carries `token`. An empty `token` (a
/// loopback listener without one) lets every call through.
pub fn authorized(token: &str, authorization: Option<&[u8]>) -> bool {
    if token.is_empty() {
        return true;
    }
    let Some(given) = authorization.and_then(bearer) else {
        return false;
    };
    let want = Sha256::digest(token.as_bytes());
    let got = Sha256::digest(given);
    want.as_slice().ct_eq(got.as_slice()).into()
}

/// The credentials of `Bearer <credentials>` (the scheme is case-insensitive, RFC 9110).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    let credentials = &rest[start..];
    let end = credentials
        .iter()
        .rposition(|b| *b != b' ')
        .map_or(0, |i| i + 1);
    Some(&credentials[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_passes() {
        let token = "s3cr3t-admin-token";
        assert!(authorized(token, Some(b"Bearer s3cr3t-admin-token")));
        assert!(authorized(token, Some(b"bearer  s3cr3t-admin-token ")));
        assert!(!authorized(token, None));
        assert!(!authorized(token, Some(b"Bearer s3cr3t-admin-toke")));
        assert!(!authorized(token, Some(b"Bearer s3cr3t-admin-token2")));
        assert!(!authorized(token, Some(b"Basic czNjcjN0")));
        assert!(!authorized(token, Some(b"Bearer ")));
        assert!(!authorized(token, Some(b"Bearer")));
        assert!(!authorized(token, Some(b"s3cr3t-admin-token")));
    }

    #[test]
    fn an_address_is_refused_after_too_many_wrong_tokens_and_others_are_not() {
        let guesses = Guesses::default();
        let guesser: IpAddr = "203.0.113.9".parse().expect("address");
        let other: IpAddr = "203.0.113.10".parse().expect("address");
        for _ in 0..MAX_GUESSES - 1 {
            guesses.wrong(guesser);
        }
        assert_eq!(guesses.refused_for(guesser), None, "not yet");
        guesses.wrong(guesser);
        let left = guesses.refused_for(guesser).expect("refused");
        assert!(left > GUESS_WINDOW - Duration::from_secs(5));
        assert_eq!(guesses.refused_for(other), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let guesses = Guesses::default();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            guesses.wrong(IpAddr::from(i.to_be_bytes()));
        }
        assert!(guesses.by_address.lock().len() <= MAX_TRACKED);
    }

    #[test]
    fn no_token_configured_lets_every_call_through() {
        assert!(authorized("", None));
        assert!(authorized("", Some(b"Bearer anything")));
    }
}
