//! `[state]`: where durable state lives — SQLite files under `server.data_dir` (one replica),
//! or a PostgreSQL database every replica naming it shares (CONTRACT §8).

use super::{Text, Validator};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::path::PathBuf;

/// `state.url` when unset: SQLite under `server.data_dir`.
pub const DEFAULT_URL: &str = "sqlite";
/// `state.max_connections` when unset: PostgreSQL connections each replica keeps at most.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8;
/// `state.tls_verify` when unset: chain and host name, as libpq's `sslmode=verify-full`.
pub const DEFAULT_TLS_VERIFY: TlsVerify = TlsVerify::Full;

/// `[state]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawState {
    url: Option<Text>,
    max_connections: Option<Spanned<i64>>,
    tls_verify: Option<Text>,
    tls_ca_file: Option<Text>,
}

/// Where durable state lives.
#[derive(Clone, PartialEq, Eq)]
pub enum StateBackend {
    /// SQLite files under `server.data_dir`, bans in memory: one replica.
    Sqlite,
    /// A PostgreSQL database shared by every replica naming it (the URL as written,
    /// `${NAME}` expanded, so it may hold a password: never logged whole).
    Postgres(String),
}

impl std::fmt::Debug for StateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateBackend::Sqlite => f.write_str("Sqlite"),
            StateBackend::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&without_password(url))
                .finish(),
        }
    }
}

/// `url` with any password replaced by `***` (for logs and `Debug`).
pub fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Cannot fail on a URL that already has a password (it has a host).
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "(not a URL)".to_string(),
    }
}

/// How a TLS connection made for `sslmode=require` checks the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVerify {
    /// The chain up to a trusted root, and the host name of the URL (libpq's `verify-full`).
    #[default]
    Full,
    /// The chain up to a trusted root, any host name (libpq's `verify-ca`).
    Ca,
    /// Nothing: encrypted, but anyone on the path may answer (libpq's `require`).
    None,
}

/// TLS to the PostgreSQL database (`sslmode` itself is in the URL).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateTls {
    /// How `sslmode=require` checks the server's certificate.
    pub verify: TlsVerify,
    /// PEM file of the CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
}

/// `[state]`
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// Where durable state lives.
    pub backend: StateBackend,
    /// PostgreSQL connections this replica keeps at most.
    pub max_connections: usize,
    /// TLS to the PostgreSQL database.
    pub tls: StateTls,
}

impl Validator<'_> {
    /// `[state]`.
    pub(super) fn state(&mut self, raw: RawState) -> StateConfig {
        let max_connections = self.count(
            "state.max_connections",
            raw.max_connections,
            1..=1_000,
            DEFAULT_MAX_CONNECTIONS as i64,
        ) as usize;
        let (url, at) = Self::text(raw.url, DEFAULT_URL);
        let backend = if url == DEFAULT_URL {
            StateBackend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            match url::Url::parse(&url) {
                Ok(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => {
                    StateBackend::Postgres(url)
                }
                _ => {
                    self.problem(
                        "state.url",
                        at.as_ref(),
                        "not a PostgreSQL URL; write \
                         \"postgres://user:${PGPASSWORD}@host:5432/database\"",
                    );
                    StateBackend::Sqlite
                }
            }
        } else {
            self.problem(
                "state.url",
                at.as_ref(),
                "must be \"sqlite\" (files under server.data_dir) or a \
                 \"postgres://user:${PGPASSWORD}@host:5432/database\" URL shared by every replica",
            );
            StateBackend::Sqlite
        };
        let tls = self.state_tls(raw.tls_verify, raw.tls_ca_file, &backend, at.as_ref());
        StateConfig {
            backend,
            max_connections,
            tls,
        }
    }

    /// `state.tls_verify` and `state.tls_ca_file`, which only `sslmode=require` uses; libpq's
    /// spellings of the same in the URL are pointed at them.
    fn state_tls(
        &mut self,
        verify: Option<Text>,
        ca_file: Option<Text>,
        backend: &StateBackend,
        url_at: Option<&Text>,
    ) -> StateTls {
        let sslmode = match backend {
            StateBackend::Postgres(url) => url_parameter(url, "sslmode"),
            StateBackend::Sqlite => None,
        };
        match sslmode.as_deref() {
            Some(mode @ ("verify-full" | "verify-ca")) => self.problem(
                "state.url",
                url_at,
                format!(
                    "sslmode={mode}: write sslmode=require and set state.tls_verify = \"{}\" \
                     (\"full\", the default, is verify-full)",
                    &mode["verify-".len()..]
                ),
            ),
            Some("disable" | "prefer" | "require") | None => {}
            Some(_) => self.problem(
                "state.url",
                url_at,
                "sslmode must be disable, prefer (the default) or require",
            ),
        }
        if matches!(backend, StateBackend::Postgres(url) if url_parameter(url, "sslrootcert").is_some())
        {
            self.problem(
                "state.url",
                url_at,
                "sslrootcert is not read from the URL: set state.tls_ca_file to the PEM file instead",
            );
        }
        let require = sslmode.as_deref() == Some("require");
        // Verification only means something when TLS is required: with `prefer` anyone on the
        // path can answer "no TLS" and be talked to in plain text.
        let unused = |key: &str| {
            format!(
                "only used with sslmode=require in state.url (with prefer, a server that \
                 declines TLS gets plain text, so a checked certificate proves nothing); add \
                 ?sslmode=require to state.url or remove {key}"
            )
        };
        let verify = match verify {
            None => DEFAULT_TLS_VERIFY,
            Some(t) => {
                let parsed = match t.get_ref().as_str() {
                    "full" => TlsVerify::Full,
                    "ca" => TlsVerify::Ca,
                    "none" => TlsVerify::None,
                    _ => {
                        self.problem(
                            "state.tls_verify",
                            Some(&t),
                            "must be \"full\" (chain and host name), \"ca\" (chain only) or \
                             \"none\" (encrypted, not checked)",
                        );
                        DEFAULT_TLS_VERIFY
                    }
                };
                if !require {
                    self.problem("state.tls_verify", Some(&t), unused("state.tls_verify"));
                }
                parsed
            }
        };
        let ca_file = ca_file.and_then(|t| {
            if t.get_ref().is_empty() {
                self.problem(
                    "state.tls_ca_file",
                    Some(&t),
                    "empty; name a PEM file of CA certificates or remove the key",
                );
                return None;
            }
            if !require {
                self.problem("state.tls_ca_file", Some(&t), unused("state.tls_ca_file"));
            } else if verify == TlsVerify::None {
                self.problem(
                    "state.tls_ca_file",
                    Some(&t),
                    "state.tls_verify = \"none\" checks no certificate; set it to \"full\" or \
                     \"ca\", or remove state.tls_ca_file",
                );
            }
            Some(PathBuf::from(t.into_inner()))
        });
        StateTls { verify, ca_file }
    }
}

/// The last value of query parameter `name` in `url` (as tokio-postgres, the last one wins).
fn url_parameter(url: &str, name: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    parsed
        .query_pairs()
        .filter(|(k, _)| k == name)
        .last()
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::*;

    #[test]
    fn sqlite_is_the_default_and_postgres_urls_are_accepted() {
        let c = parse("").expect("valid").state;
        assert_eq!(c.backend, StateBackend::Sqlite);
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        for url in [
            "postgres://ingest:pw@db.internal:5432/ingest",
            "postgresql://db.internal/ingest?connect_timeout=5",
        ] {
            let c = parse(&format!("[state]\nurl = \"{url}\"\nmax_connections = 3\n"))
                .expect("valid")
                .state;
            assert_eq!(c.backend, StateBackend::Postgres(url.to_string()));
            assert_eq!(c.max_connections, 3);
        }
    }

    #[test]
    fn bad_values_name_their_keys() {
        let err = parse("[state]\nurl = \"mysql://db/ingest\"\nmax_connections = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("state.url (line 2)") && err.contains("state.max_connections (line 3)"),
            "{err}"
        );
        let err = parse("[state]\nurl = \"postgres://\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a PostgreSQL URL"), "{err}");
    }

    #[test]
    fn tls_keys_go_with_sslmode_require() {
        let c = parse("[state]\nurl = \"postgres://db/ingest\"\n")
            .expect("valid")
            .state;
        assert_eq!(c.tls, StateTls::default());
        assert_eq!(c.tls.verify, TlsVerify::Full);
        let c = parse(
            "[state]\nurl = \"postgres://db/ingest?sslmode=require\"\ntls_verify = \"ca\"\n\
             tls_ca_file = \"/etc/ingest/rds.pem\"\n",
        )
        .expect("valid")
        .state;
        assert_eq!(
            c.tls,
            StateTls {
                verify: TlsVerify::Ca,
                ca_file: Some(PathBuf::from("/etc/ingest/rds.pem")),
            }
        );
        let c =
            parse("[state]\nurl = \"postgres://db/i?sslmode=require\"\ntls_verify = \"none\"\n")
                .expect("valid")
                .state;
        assert_eq!(c.tls.verify, TlsVerify::None);
    }

    #[test]
    fn tls_mistakes_name_their_keys() {
        // Without sslmode=require (prefer by default) the keys would check nothing.
        let err = parse("[state]\nurl = \"postgres://db/ingest\"\ntls_ca_file = \"ca.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("state.tls_ca_file (line 3): only used with sslmode=require"),
            "{err}"
        );
        let err = parse("[state]\ntls_verify = \"full\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("state.tls_verify (line 2): only used"),
            "{err}"
        );
        let err =
            parse("[state]\nurl = \"postgres://db/i?sslmode=require\"\ntls_verify = \"strict\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("state.tls_verify (line 3): must be \"full\""),
            "{err}"
        );
        let err = parse(
            "[state]\nurl = \"postgres://db/i?sslmode=require\"\ntls_verify = \"none\"\n\
             tls_ca_file = \"ca.pem\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("state.tls_ca_file (line 4): state.tls_verify = \"none\""),
            "{err}"
        );
        // libpq's spellings point at ours.
        let err =
            parse("[state]\nurl = \"postgres://db/i?sslmode=verify-full&sslrootcert=/ca.pem\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("sslmode=verify-full: write sslmode=require")
                && err.contains("set state.tls_ca_file"),
            "{err}"
        );
        let err = parse("[state]\nurl = \"postgres://db/i?sslmode=allow\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslmode must be disable, prefer"), "{err}");
    }

    #[test]
    fn the_password_stays_out_of_debug_output() {
        let c = parse("[state]\nurl = \"postgres://ingest:s3cret@db/ingest\"\n")
            .expect("valid")
            .state;
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("ingest:***@db"),
            "{shown}"
        );
    }
}
