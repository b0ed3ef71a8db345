//! `[server]`: process-wide settings.

use super::{Text, Validator};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::path::PathBuf;
use std::time::Duration;

/// `server.data_dir` when unset.
pub const DEFAULT_DATA_DIR: &str = "data";
/// `server.drain_timeout` when unset.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// `server.max_connections` when unset.
pub const DEFAULT_MAX_CONNECTIONS: usize = 5000;
/// `server.max_connections_per_ip` when unset.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 200;
/// `server.login_timeout` when unset.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Connection limits a config may set (both `max_connections` keys).
const CONNECTIONS_RANGE: std::ops::RangeInclusive<i64> = 1..=1_000_000;

/// `[server]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawServer {
    data_dir: Option<Text>,
    drain_timeout: Option<Text>,
    /// The name `drain_timeout` had before 0.2; still read.
    shutdown_timeout: Option<Text>,
    allowed_ips: Option<Vec<Text>>,
    max_connections: Option<Spanned<i64>>,
    max_connections_per_ip: Option<Spanned<i64>>,
    login_timeout: Option<Text>,
    trusted_proxies: Option<Vec<Text>>,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Host keys, event log and the embedded store live here.
    pub data_dir: PathBuf,
    /// How long a drain (SIGTERM) lets running uploads finish before cutting them.
    pub drain_timeout: Duration,
    /// Client networks allowed to connect at all; empty allows every address.
    pub allowed_ips: Vec<ipnet::IpNet>,
    /// Open FTP + SFTP control connections at most; more are refused at accept.
    pub max_connections: usize,
    /// Open connections from one client address at most.
    pub max_connections_per_ip: usize,
    /// A connection that has not logged in by then is closed.
    pub login_timeout: Duration,
    /// Load balancers whose PROXY protocol header names the real client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Validator<'_> {
    /// `[server]`.
    pub(super) fn server(&mut self, raw: RawServer) -> ServerConfig {
        ServerConfig {
            data_dir: PathBuf::from(Self::text(raw.data_dir, DEFAULT_DATA_DIR).0),
            drain_timeout: self.drain_timeout(raw.drain_timeout, raw.shutdown_timeout),
            allowed_ips: self.networks("server.allowed_ips", raw.allowed_ips),
            max_connections: self.count(
                "server.max_connections",
                raw.max_connections,
                CONNECTIONS_RANGE,
                DEFAULT_MAX_CONNECTIONS as i64,
            ) as usize,
            max_connections_per_ip: self.count(
                "server.max_connections_per_ip",
                raw.max_connections_per_ip,
                CONNECTIONS_RANGE,
                DEFAULT_MAX_CONNECTIONS_PER_IP as i64,
            ) as usize,
            login_timeout: self.duration(
                "server.login_timeout",
                raw.login_timeout,
                DEFAULT_LOGIN_TIMEOUT,
            ),
            trusted_proxies: self.networks("server.trusted_proxies", raw.trusted_proxies),
        }
    }

    /// `server.drain_timeout`, or its old name `server.shutdown_timeout`; not both.
    fn drain_timeout(&mut self, drain: Option<Text>, old_name: Option<Text>) -> Duration {
        match (drain, old_name) {
            (Some(_), Some(old)) => {
                self.problem(
                    "server.shutdown_timeout",
                    Some(&old),
                    "is the old name of server.drain_timeout, which is also set: remove it",
                );
                DEFAULT_DRAIN_TIMEOUT
            }
            (None, Some(old)) => {
                self.duration("server.shutdown_timeout", Some(old), DEFAULT_DRAIN_TIMEOUT)
            }
            (drain, None) => self.duration("server.drain_timeout", drain, DEFAULT_DRAIN_TIMEOUT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::*;

    #[test]
    fn defaults_are_the_named_constants() {
        let c = parse("").expect("valid").server;
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.max_connections_per_ip, DEFAULT_MAX_CONNECTIONS_PER_IP);
        assert_eq!(c.login_timeout, DEFAULT_LOGIN_TIMEOUT);
        assert!(c.allowed_ips.is_empty() && c.trusted_proxies.is_empty());
    }

    #[test]
    fn the_old_name_of_drain_timeout_is_read_but_not_beside_the_new_one() {
        let c = parse("[server]\nshutdown_timeout = \"10s\"\n").expect("valid");
        assert_eq!(c.server.drain_timeout, Duration::from_secs(10));
        let err = parse("[server]\ndrain_timeout = \"1m\"\nshutdown_timeout = \"10s\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.shutdown_timeout (line 3): is the old name"),
            "{err}"
        );
    }

    #[test]
    fn networks_and_limits_are_checked() {
        let c =
            parse("[server]\nallowed_ips = [\"10.1.2.3/8\", \"2001:db8::1\"]\n").expect("valid");
        assert_eq!(c.server.allowed_ips[0].to_string(), "10.0.0.0/8");
        assert_eq!(c.server.allowed_ips[1].to_string(), "2001:db8::1/128");
        let err = parse("[server]\ntrusted_proxies = [\"lb\"]\nmax_connections = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.trusted_proxies (line 2)")
                && err.contains("server.max_connections (line 3): must be between 1 and 1000000"),
            "{err}"
        );
    }
}
