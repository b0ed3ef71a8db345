//! One typed configuration tree, loaded from TOML and validated as a whole.
//!
//! Loading never stops at the first mistake: every bad key is collected into one
//! [`ConfigError`] that names the key, the line and what to write instead.
//!
//! Each section lives in its own module (`server`, `ftp`, `sftp`, `storage`, `notify`,
//! `metrics`, `log`, `upload`, `defender`, `auth`, `state`, `admin`, `users`): the key as written (its serde
//! struct), the key as used (its typed struct), its defaults as `DEFAULT_…` constants and its
//! checks. This module holds the whole tree, the errors and the helpers every section shares.

pub mod admin;
pub mod auth;
mod connector;
pub mod defender;
#[cfg(test)]
mod docs_keys;
mod env;
pub mod ftp;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod overrides;
mod rules;
pub mod server;
pub mod sftp;
pub mod state;
pub mod storage;
mod units;
pub mod upload;
pub mod users;

use serde::Deserialize;
use serde_spanned::Spanned;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use admin::{AdminConfig, AdminTlsConfig};
pub use auth::{AuthConfig, HttpAuthConfig};
pub use connector::{PartsConfig, StepBody, StepConfig, TokenConfig};
pub use defender::DefenderConfig;
pub use ftp::{FtpConfig, FtpTlsConfig, ReceiveBuffer};
pub use log::{LogConfig, LogFormat};
pub use metrics::MetricsConfig;
pub use notify::{DeliveryMode, NotifyConfig};
pub use rules::{RuleConfig, RuleOutcome, StatusMatch};
pub use server::ServerConfig;
pub use sftp::{SFTP_CIPHERS, SFTP_DEFAULT_CIPHERS, SftpConfig};
pub use state::{StateBackend, StateConfig, StateTls, TlsVerify};
pub use storage::{Endpoint, StorageConfig};
pub use units::{format_size, parse_duration, parse_size};
pub use upload::{DEFAULT_TEMP_PATTERNS, UploadConfig};
pub use users::{Permission, UserConfig, UserNotifyConfig, normalize_home};

/// Default configuration path, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/ingest-bridge.toml";

/// S3's smallest part (all but the last).
pub const S3_MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const S3_MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// A string value together with where it stands in the file.
type Text = Spanned<String>;

/// The configuration file exactly as written: strings still unparsed, every key optional.
///
/// Sizes, durations and addresses stay strings (with their position in the file) so that
/// validation can report every bad value at once, each with its key and line. Each section's
/// own struct lives in its module.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    server: server::RawServer,
    ftp: ftp::RawFtp,
    sftp: sftp::RawSftp,
    storage: storage::RawStorage,
    notify: notify::RawNotify,
    metrics: metrics::RawMetrics,
    log: log::RawLog,
    upload: upload::RawUpload,
    defender: defender::RawDefender,
    auth: auth::RawAuth,
    state: state::RawState,
    admin: admin::RawAdmin,
    users: Vec<users::RawUser>,
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[ftp]`
    pub ftp: FtpConfig,
    /// `[sftp]`
    pub sftp: SftpConfig,
    /// `[storage]`
    pub storage: StorageConfig,
    /// `[notify]`
    pub notify: NotifyConfig,
    /// `[metrics]`
    pub metrics: MetricsConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[upload]`
    pub upload: UploadConfig,
    /// `[defender]`
    pub defender: DefenderConfig,
    /// `[auth]`
    pub auth: AuthConfig,
    /// `[state]`
    pub state: StateConfig,
    /// `[admin]`
    pub admin: AdminConfig,
    /// `[[users]]`
    pub users: Vec<UserConfig>,
    /// The file this configuration was read from: what a reload reads again.
    pub source: PathBuf,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `storage.part_size`.
    pub key: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// Every problem found in a configuration, or why it could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error(
        "cannot read config file {path}: {source}. Pass --config PATH or set INGEST_BRIDGE_CONFIG."
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// One or more keys have bad values.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem.
        problems: Vec<Problem>,
    },
}

/// The `Invalid` message: a count, then one line per problem.
fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "{} has {} problem{}:",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        match p.line {
            Some(line) => out.push_str(&format!("\n  - {} (line {}): {}", p.key, line, p.message)),
            None => out.push_str(&format!("\n  - {}: {}", p.key, p.message)),
        }
    }
    out
}

impl Config {
    /// Reads the file at `path`, applies `INGEST_BRIDGE__SECTION__KEY` variables from the
    /// environment, and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_with_overrides(
            &text,
            path,
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// [`Config::parse`] after writing the `INGEST_BRIDGE__…` variables among `vars` into the
    /// text; problems name the variable that set a key, and lines count the file's own lines.
    pub fn parse_with_overrides(
        text: &str,
        path: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let applied = overrides::apply(text, vars).map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })?;
        if applied.keys.is_empty() {
            return Self::parse(text, path);
        }
        Self::parse(&applied.text, path).map_err(|e| match e {
            ConfigError::Invalid { path, problems } => ConfigError::Invalid {
                path,
                problems: problems
                    .into_iter()
                    .map(|mut p| {
                        if let Some(var) = applied.variable_for(&p.key) {
                            p.message =
                                format!("{} (from the environment variable {var})", p.message);
                            p.line = None;
                        } else {
                            p.line = p.line.and_then(|l| applied.file_line(l));
                        }
                        p
                    })
                    .collect(),
            },
            ConfigError::Syntax { path, message } => ConfigError::Syntax {
                path,
                message: format!(
                    "{message}\n(with the environment overrides {} written in; lines count them)",
                    applied
                        .keys
                        .iter()
                        .map(|(_, var)| var.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            other => other,
        })
    }

    /// Validates configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::parse_with_env(text, path, |name| std::env::var(name).ok())
    }

    /// [`Config::parse`] with `${NAME}` values taken from `lookup` instead of the process
    /// environment (tests, tools that hold their own variables).
    pub fn parse_with_env(
        text: &str,
        path: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let expanded =
            env::expand_document(text, lookup).map_err(|problems| ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })?;
        let text = expanded.as_str();
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut v = Validator {
            text,
            problems: Vec::new(),
        };
        let mut config = v.config(raw);
        config.source = path.to_path_buf();
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: v.problems,
            })
        }
    }
}

/// Collects problems while converting the raw tree; each section adds its own methods.
struct Validator<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    /// The 1-based line of a byte offset.
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    /// Records a problem at `at`'s line (no line when `None`).
    fn problem(&mut self, key: &str, at: Option<&Text>, message: impl Into<String>) {
        let line = at.map(|t| self.line_of(t.span().start));
        self.problems.push(Problem {
            key: key.to_string(),
            line,
            message: message.into(),
        });
    }

    /// The value or `default`, and the value's position when it was written.
    fn text(value: Option<Text>, default: &str) -> (String, Option<Text>) {
        match value {
            Some(t) => (t.get_ref().clone(), Some(t)),
            None => (default.to_string(), None),
        }
    }

    /// A size such as `"16MiB"` (the default when absent or bad).
    fn size(&mut self, key: &str, value: Option<Text>, default: u64) -> u64 {
        let Some(t) = value else { return default };
        match parse_size(t.get_ref()) {
            Ok(n) => n,
            Err(e) => {
                self.problem(key, Some(&t), e);
                default
            }
        }
    }

    /// A whole number within `range` (the default when absent or out of range).
    fn count(
        &mut self,
        key: &str,
        value: Option<Spanned<i64>>,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> i64 {
        match value {
            None => default,
            Some(n) if range.contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                let line = self.line_of(n.span().start);
                self.problems.push(Problem {
                    key: key.into(),
                    line: Some(line),
                    message: format!("must be between {} and {}", range.start(), range.end()),
                });
                default
            }
        }
    }

    /// A duration such as `"30s"` (the default when absent or bad).
    fn duration(&mut self, key: &str, value: Option<Text>, default: Duration) -> Duration {
        let Some(t) = value else { return default };
        match parse_duration(t.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.problem(key, Some(&t), e);
                default
            }
        }
    }

    /// An `IP:PORT` address (the default when absent).
    fn socket(&mut self, key: &str, value: Option<Text>, default: &str) -> SocketAddr {
        let fallback = || SocketAddr::from(([127, 0, 0, 1], 0));
        let (s, at) = Self::text(value, default);
        match s.parse() {
            Ok(a) => a,
            Err(_) => {
                self.problem(
                    key,
                    at.as_ref(),
                    format!("{s:?} is not an address; write IP:PORT, e.g. \"0.0.0.0:2121\" or \"[::]:2121\""),
                );
                s.parse().unwrap_or_else(|_| fallback())
            }
        }
    }

    /// A list of CIDR networks (`"10.0.0.0/8"`, `"2001:db8::/32"`) or single addresses.
    fn networks(&mut self, key: &str, raw: Option<Vec<Text>>) -> Vec<ipnet::IpNet> {
        let mut nets = Vec::new();
        for t in raw.unwrap_or_default() {
            let text = t.get_ref().trim();
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => self.problem(
                    key,
                    Some(&t),
                    format!("{text:?} is not an address or network; write e.g. \"203.0.113.7\", \"10.0.0.0/8\" or \"2001:db8::/32\""),
                ),
            }
        }
        nets
    }

    /// Headers sent as written (after `${ENV}`): checked to be valid HTTP.
    fn literal_headers(
        &mut self,
        key: &str,
        raw: BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut headers = BTreeMap::new();
        for (name, value) in raw {
            let at = format!("{key}.{name}");
            if http::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::header::HeaderValue::from_str(&value).is_err()
            {
                self.problem(&at, None, "not a valid HTTP header name or value");
            }
            headers.insert(name, value);
        }
        headers
    }

    /// Every section in the order problems have always been reported, then the checks that
    /// span sections.
    fn config(&mut self, raw: RawConfig) -> Config {
        let server = self.server(raw.server);
        let ftp = self.ftp(raw.ftp);
        let sftp = self.sftp(raw.sftp, &server.data_dir);
        let storage = self.storage(raw.storage);
        let notify = self.notify(raw.notify);
        let metrics = self.metrics(raw.metrics);
        let log = self.log(raw.log, &server.data_dir);
        let upload = self.upload(raw.upload);
        let defender = self.defender(raw.defender);
        let auth = self.auth(raw.auth);
        let state = self.state(raw.state);
        let admin = self.admin(raw.admin);
        let users = self.users(raw.users);
        self.listeners_distinct(&ftp, &sftp, &metrics, &admin);
        Config {
            server,
            ftp,
            sftp,
            storage,
            notify,
            metrics,
            log,
            upload,
            defender,
            auth,
            state,
            admin,
            users,
            source: PathBuf::new(),
        }
    }

    /// No two listeners share an address, and FTP's passive range leaves its own port alone.
    fn listeners_distinct(
        &mut self,
        ftp: &FtpConfig,
        sftp: &SftpConfig,
        metrics: &MetricsConfig,
        admin: &AdminConfig,
    ) {
        let mut bound: Vec<(&str, SocketAddr)> = vec![("metrics.listen", metrics.listen)];
        if let Some(listen) = admin.listen {
            bound.push(("admin.listen", listen));
        }
        if ftp.enabled {
            bound.push(("ftp.listen", ftp.listen));
        }
        if sftp.enabled {
            bound.push(("sftp.listen", sftp.listen));
        }
        for (i, (a_key, a)) in bound.iter().enumerate() {
            for (b_key, b) in &bound[i + 1..] {
                if a == b && a.port() != 0 {
                    self.problem(
                        b_key,
                        None,
                        format!("{b} is also {a_key}; give each listener its own port"),
                    );
                }
            }
        }
        if ftp.enabled && ftp.passive_ports.contains(&ftp.listen.port()) {
            self.problem(
                "ftp.passive_ports",
                None,
                "the range includes ftp.listen's port",
            );
        }
    }
}

/// Helpers for the sections' unit tests.
#[cfg(test)]
mod test_support {
    use super::{Config, ConfigError};
    use std::path::Path;

    /// Validates `text` as a file named `test.toml`.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::parse;
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = parse("").expect("empty config is valid");
        assert!(c.ftp.enabled);
        assert_eq!(c.ftp.listen.to_string(), "127.0.0.1:2121");
        assert_eq!(c.ftp.passive_ports, 50000..=50100);
        assert_eq!(c.sftp.listen.to_string(), "127.0.0.1:2222");
        assert_eq!(c.storage.endpoint, Endpoint::Embedded);
        assert_eq!(c.storage.bucket, "ingest");
        assert_eq!(c.storage.part_size, 16 << 20);
        assert_eq!(c.storage.max_part_size, 512 << 20);
        assert_eq!(c.storage.upload_concurrency, 4);
        assert_eq!(c.storage.memory_limit, 1 << 30);
        assert_eq!(c.notify.timeout, Duration::from_secs(30));
        assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(c.server.data_dir, PathBuf::from("data"));
    }

    #[test]
    fn every_problem_is_reported_with_key_and_line() {
        let text = r#"
[ftp]
listen = "nope"
passive_ports = "9-1"
[storage]
part_size = "1MiB"
memory_limit = "lots"
upload_concurrency = 0
[notify]
url = "ftp://x"
timeout = "soon"
[[users]]
username = "a"
password_hash = "plain"
permissions = ["upload", "fly"]
home = "../etc"
"#;
        let Err(ConfigError::Invalid { problems, .. }) = parse(text) else {
            panic!("expected validation problems");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "ftp.listen",
            "ftp.passive_ports",
            "storage.part_size",
            "storage.memory_limit",
            "storage.upload_concurrency",
            "notify.url",
            "notify.timeout",
            "users[0].password_hash",
            "users[0].permissions",
            "users[0].home",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
        let listen = problems
            .iter()
            .find(|p| p.key == "ftp.listen")
            .map(|p| p.line);
        assert_eq!(listen, Some(Some(3)));
    }

    #[test]
    fn unknown_keys_and_bad_types_are_syntax_errors_with_a_line() {
        let Err(ConfigError::Syntax { message, .. }) = parse("[ftp]\nlistne = \"x\"\n") else {
            panic!("expected a syntax error");
        };
        assert!(message.contains("listne"), "{message}");
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn listeners_on_one_address_are_refused() {
        let err = parse("[sftp]\nlisten = \"127.0.0.1:9100\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sftp.listen: 127.0.0.1:9100 is also metrics.listen"),
            "{err}"
        );
    }

    #[test]
    fn secrets_and_urls_come_from_the_environment() {
        let path = std::env::var("PATH").expect("PATH is set in tests");
        let c = parse(
            "[storage]\nendpoint = \"http://127.0.0.1:9000\"\naccess_key_id = \"${PATH}\"\nsecret_access_key = \"x\"\n[notify]\nheaders = { Authorization = \"Bearer ${PATH}\" }\n",
        )
        .expect("valid");
        assert_eq!(c.storage.access_key_id, path);
        assert_eq!(c.notify.headers["Authorization"], format!("Bearer {path}"));
        let err = parse("[notify]\nurl = \"${INGEST_BRIDGE_TEST_SURELY_UNSET}\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("notify.url")
                && text.contains("line 2")
                && text.contains("INGEST_BRIDGE_TEST_SURELY_UNSET is not set"),
            "{text}"
        );
    }
}
