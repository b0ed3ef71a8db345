//! `[defender]`: bans addresses that keep failing to log in.

use super::{Text, Validator};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::time::Duration;

/// `defender.enabled` when unset.
pub const DEFAULT_ENABLED: bool = true;
/// `defender.max_failures` when unset.
pub const DEFAULT_MAX_FAILURES: u32 = 10;
/// `defender.window` when unset.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// `defender.ban_time` when unset.
pub const DEFAULT_BAN_TIME: Duration = Duration::from_secs(900);

/// `[defender]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawDefender {
    enabled: Option<bool>,
    max_failures: Option<Spanned<i64>>,
    window: Option<Text>,
    ban_time: Option<Text>,
    safelist: Option<Vec<Text>>,
}

/// `[defender]`: bans addresses that keep failing to log in.
#[derive(Debug, Clone)]
pub struct DefenderConfig {
    /// Whether failed logins lead to bans.
    pub enabled: bool,
    /// Failed logins from one address within `window` that trigger a ban.
    pub max_failures: u32,
    /// How far back failed logins count.
    pub window: Duration,
    /// The first ban's length; each further ban of the same address doubles it.
    pub ban_time: Duration,
    /// Networks never banned.
    pub safelist: Vec<ipnet::IpNet>,
}

impl Validator<'_> {
    /// `[defender]`.
    pub(super) fn defender(&mut self, raw: RawDefender) -> DefenderConfig {
        let max_failures = self.count(
            "defender.max_failures",
            raw.max_failures,
            1..=1_000_000,
            i64::from(DEFAULT_MAX_FAILURES),
        ) as u32;
        DefenderConfig {
            enabled: raw.enabled.unwrap_or(DEFAULT_ENABLED),
            max_failures,
            window: self.duration("defender.window", raw.window, DEFAULT_WINDOW),
            ban_time: self.duration("defender.ban_time", raw.ban_time, DEFAULT_BAN_TIME),
            safelist: self.networks("defender.safelist", raw.safelist),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::*;

    #[test]
    fn defaults_are_the_named_constants_and_bad_values_name_their_keys() {
        let c = parse("").expect("valid").defender;
        assert_eq!(c.enabled, DEFAULT_ENABLED);
        assert_eq!(c.max_failures, DEFAULT_MAX_FAILURES);
        assert_eq!(c.window, DEFAULT_WINDOW);
        assert_eq!(c.ban_time, DEFAULT_BAN_TIME);
        assert!(c.safelist.is_empty());
        let err = parse("[defender]\nmax_failures = 0\nsafelist = [\"office\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("defender.max_failures (line 2)")
                && err.contains("defender.safelist (line 3)"),
            "{err}"
        );
    }
}
