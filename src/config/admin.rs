//! `[admin]` and `[admin.tls]`: the operator's API and status page.

use super::{Text, Validator};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `[admin]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawAdmin {
    listen: Option<Text>,
    token: Option<Text>,
    tls: Option<RawAdminTls>,
}

/// `[admin.tls]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawAdminTls {
    cert: Option<Text>,
    key: Option<Text>,
}

/// `[admin]`: the admin API (`/api/v1/…`) and status page (`/`).
#[derive(Clone, Default)]
pub struct AdminConfig {
    /// Where to serve them; `None`: off.
    pub listen: Option<SocketAddr>,
    /// The Bearer token every API call must carry; empty only on a loopback address, where
    /// calls need none.
    pub token: String,
    /// HTTPS instead of HTTP, when configured.
    pub tls: Option<AdminTlsConfig>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &if self.token.is_empty() { "" } else { "…" })
            .field("tls", &self.tls)
            .finish()
    }
}

/// `[admin.tls]`: the certificate the admin listener presents.
#[derive(Debug, Clone)]
pub struct AdminTlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl Validator<'_> {
    /// `[admin]`: a listener anyone but this machine can reach needs a token.
    pub(super) fn admin(&mut self, raw: RawAdmin) -> AdminConfig {
        let listen_at = raw.listen.clone();
        let listen = match &raw.listen {
            Some(t) if !t.get_ref().trim().is_empty() => {
                Some(self.socket("admin.listen", raw.listen.clone(), ""))
            }
            _ => None,
        };
        let (token, token_at) = Self::text(raw.token, "");
        if let Some(addr) = listen
            && token.is_empty()
            && !addr.ip().is_loopback()
        {
            self.problem(
                "admin.token",
                listen_at.as_ref(),
                format!(
                    "admin.listen {addr} is reachable from other machines, so the admin API needs a token: set admin.token (e.g. token = \"${{ADMIN_TOKEN}}\" with a long random value), or listen on 127.0.0.1"
                ),
            );
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.problem(
                "admin.token",
                token_at.as_ref(),
                "must be one word: no spaces or control characters (it travels in an HTTP header)",
            );
        }
        let tls = raw.tls.and_then(|t| self.admin_tls(t));
        AdminConfig { listen, token, tls }
    }

    /// `[admin.tls]`: both files or none.
    fn admin_tls(&mut self, raw: RawAdminTls) -> Option<AdminTlsConfig> {
        match (raw.cert, raw.key) {
            (Some(cert), Some(key)) => Some(AdminTlsConfig {
                cert: PathBuf::from(cert.into_inner()),
                key: PathBuf::from(key.into_inner()),
            }),
            _ => {
                self.problem(
                    "admin.tls",
                    None,
                    "HTTPS needs both cert and key (PEM files); remove [admin.tls] to serve plain HTTP",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;

    #[test]
    fn off_by_default() {
        let c = parse("").expect("valid");
        assert!(c.admin.listen.is_none());
        let c = parse("[admin]\nlisten = \"\"\n").expect("empty is off");
        assert!(c.admin.listen.is_none());
    }

    #[test]
    fn loopback_needs_no_token_but_other_addresses_do() {
        let c = parse("[admin]\nlisten = \"127.0.0.1:9200\"\n").expect("loopback, no token");
        assert_eq!(c.admin.listen.map(|a| a.port()), Some(9200));
        let c = parse("[admin]\nlisten = \"[::1]:9200\"\n").expect("IPv6 loopback");
        assert!(c.admin.token.is_empty());
        let err = parse("[admin]\nlisten = \"0.0.0.0:9200\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.token (line 2)"), "{err}");
        assert!(err.contains("needs a token"), "{err}");
        parse("[admin]\nlisten = \"0.0.0.0:9200\"\ntoken = \"a-long-random-token\"\n")
            .expect("with a token");
    }

    #[test]
    fn bad_values_are_named() {
        let err = parse("[admin]\nlisten = \"9200\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.listen (line 2)"), "{err}");
        let err = parse("[admin]\nlisten = \"127.0.0.1:9200\"\ntoken = \"two words\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.token (line 3)"), "{err}");
        let err = parse("[admin]\nlisten = \"127.0.0.1:9200\"\n[admin.tls]\ncert = \"c.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.tls: HTTPS needs both"), "{err}");
    }

    #[test]
    fn the_token_is_not_printed() {
        let c = parse("[admin]\nlisten = \"127.0.0.1:9200\"\ntoken = \"s3cr3t-token\"\n")
            .expect("valid");
        assert!(!format!("{:?}", c.admin).contains("s3cr3t"));
    }

    #[test]
    fn its_port_is_its_own() {
        let err =
            parse("[metrics]\nlisten = \"127.0.0.1:9200\"\n[admin]\nlisten = \"127.0.0.1:9200\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("admin.listen"), "{err}");
    }
}
