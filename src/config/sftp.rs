//! `[sftp]`: the SFTP listener.

use super::{Text, Validator};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `sftp.enabled` when unset.
pub const DEFAULT_ENABLED: bool = true;
/// `sftp.listen` when unset.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2222";
/// `sftp.host_keys` when unset: this one file under `server.data_dir`.
pub const DEFAULT_HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
/// `sftp.idle_timeout` when unset.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// SSH ciphers `sftp.ciphers` may name: AEAD and CTR modes only (no CBC).
pub const SFTP_CIPHERS: &[&str] = &[
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
];

/// `sftp.ciphers` when unset: every client since 2013 finds one. OpenSSH prefers
/// ChaCha20, then CTR, then GCM; ChaCha20 is left out because it costs the most CPU here.
pub const SFTP_DEFAULT_CIPHERS: &[&str] = &[
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
];

/// `[sftp]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawSftp {
    enabled: Option<bool>,
    listen: Option<Text>,
    host_keys: Option<Vec<Text>>,
    idle_timeout: Option<Text>,
    ciphers: Option<Vec<Text>>,
}

/// `[sftp]`: the SFTP listener.
#[derive(Debug, Clone)]
pub struct SftpConfig {
    /// Whether the SFTP server starts.
    pub enabled: bool,
    /// Listen address.
    pub listen: SocketAddr,
    /// Host key files, generated when missing.
    pub host_keys: Vec<PathBuf>,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// SSH ciphers offered; the client picks the first of its own list that is here.
    pub ciphers: Vec<String>,
}

impl Validator<'_> {
    /// `[sftp]`; default host keys live in `data_dir`.
    pub(super) fn sftp(&mut self, raw: RawSftp, data_dir: &Path) -> SftpConfig {
        SftpConfig {
            enabled: raw.enabled.unwrap_or(DEFAULT_ENABLED),
            listen: self.socket("sftp.listen", raw.listen, DEFAULT_LISTEN),
            host_keys: raw
                .host_keys
                .map(|keys| {
                    keys.into_iter()
                        .map(|k| PathBuf::from(k.into_inner()))
                        .collect()
                })
                .unwrap_or_else(|| vec![data_dir.join(DEFAULT_HOST_KEY_FILE)]),
            idle_timeout: self.duration(
                "sftp.idle_timeout",
                raw.idle_timeout,
                DEFAULT_IDLE_TIMEOUT,
            ),
            ciphers: self.ciphers(raw.ciphers),
        }
    }

    /// `sftp.ciphers`: only supported ones, at least one.
    fn ciphers(&mut self, raw: Option<Vec<Text>>) -> Vec<String> {
        let Some(raw) = raw else {
            return SFTP_DEFAULT_CIPHERS.iter().map(|c| c.to_string()).collect();
        };
        if raw.is_empty() {
            self.problem(
                "sftp.ciphers",
                None,
                "must name at least one cipher (or be left out for the default list)",
            );
        }
        let mut ciphers = Vec::new();
        for name in raw {
            if SFTP_CIPHERS.contains(&name.get_ref().as_str()) {
                ciphers.push(name.get_ref().clone());
            } else {
                self.problem(
                    "sftp.ciphers",
                    Some(&name),
                    format!(
                        "{:?} is not a supported cipher; choose from {}",
                        name.get_ref(),
                        SFTP_CIPHERS.join(", ")
                    ),
                );
            }
        }
        ciphers
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::*;

    #[test]
    fn defaults_are_the_named_constants() {
        let c = parse("[server]\ndata_dir = \"/srv\"\n")
            .expect("valid")
            .sftp;
        assert_eq!(c.enabled, DEFAULT_ENABLED);
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.host_keys, [PathBuf::from("/srv/ssh_host_ed25519_key")]);
        assert_eq!(c.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(c.ciphers, SFTP_DEFAULT_CIPHERS);
    }

    #[test]
    fn sftp_ciphers_are_checked_against_the_supported_list() {
        let c = parse("[sftp]\nciphers = [\"aes128-gcm@openssh.com\"]\n").expect("valid");
        assert_eq!(c.sftp.ciphers, ["aes128-gcm@openssh.com"]);
        let err = parse("[sftp]\nciphers = [\"aes128-cbc\"]\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("sftp.ciphers") && text.contains("line 2"),
            "{text}"
        );
        assert!(parse("[sftp]\nciphers = []\n").is_err());
        let defaults = parse("").expect("valid").sftp.ciphers;
        assert!(defaults.iter().all(|c| SFTP_CIPHERS.contains(&c.as_str())));
    }
}
