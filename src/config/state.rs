//! `[state]`: where durable state lives — SQLite files under `server.data_dir` (one replica),
//! or a PostgreSQL database every replica naming it shares (CONTRACT §8).

use super::{Text, Validator};
use serde::Deserialize;
use serde_spanned::Spanned;

/// `state.url` when unset: SQLite under `server.data_dir`.
pub const DEFAULT_URL: &str = "sqlite";
/// `state.max_connections` when unset: PostgreSQL connections each replica keeps at most.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8;

/// `[state]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawState {
    url: Option<Text>,
    max_connections: Option<Spanned<i64>>,
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

/// `[state]`
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// Where durable state lives.
    pub backend: StateBackend,
    /// PostgreSQL connections this replica keeps at most.
    pub max_connections: usize,
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
        StateConfig {
            backend,
            max_connections,
        }
    }
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
