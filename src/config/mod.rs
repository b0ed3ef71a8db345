//! One typed configuration tree, loaded from TOML and validated as a whole.
//!
//! Loading never stops at the first mistake: every bad key is collected into one
//! [`ConfigError`] that names the key, the line and what to write instead.

mod connector;
mod env;
pub mod overrides;
mod raw;
mod units;

use raw::{RawAuth, RawConfig, Text};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub use connector::{
    DeliveryMode, PartsConfig, RuleConfig, RuleOutcome, StatusMatch, StepBody, StepConfig,
    TokenConfig, UserNotifyConfig,
};
pub use units::{format_size, parse_duration, parse_size};

/// Default configuration path, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/ingest-bridge.toml";

/// S3's smallest part (all but the last).
pub const S3_MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const S3_MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

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
    /// `[[users]]`
    pub users: Vec<UserConfig>,
}

/// `[auth]`: who decides logins besides `[[users]]`.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// The platform's login endpoint, when set.
    pub http: Option<HttpAuthConfig>,
}

/// `[auth.http]`: logins of users not in `[[users]]` are POSTed here.
#[derive(Debug, Clone)]
pub struct HttpAuthConfig {
    /// The endpoint.
    pub url: String,
    /// One request's deadline; a slower answer refuses the login.
    pub timeout: Duration,
    /// How long an allowed login is remembered ("0s": ask every time).
    pub cache_ttl: Duration,
    /// Extra request headers (e.g. the platform's API key).
    pub headers: BTreeMap<String, String>,
}

/// File names clients upload under before renaming them to the final name (WinSCP,
/// FileZilla, browsers, rsync-style tools).
pub const DEFAULT_TEMP_PATTERNS: &[&str] =
    &["*.filepart", "*.part", "*.tmp", ".~*", "*.crdownload"];

/// `[upload]`: how uploads behave beyond the byte stream.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// Glob patterns (matched against the file name) of uploads that are not final: they
    /// produce no completion until renamed to a name that matches none.
    pub temp_patterns: Vec<String>,
    /// The compiled `temp_patterns`.
    pub temp_matcher: globset::GlobSet,
    /// Whether an upload may replace an existing object.
    pub overwrite: bool,
    /// Whether renaming a final file produces a completion for its new key.
    pub notify_on_rename: bool,
}

impl UploadConfig {
    /// Whether `file_name` marks a temporary upload.
    pub fn is_temp(&self, file_name: &str) -> bool {
        self.temp_matcher.is_match(file_name)
    }
}

impl Default for UploadConfig {
    fn default() -> UploadConfig {
        let temp_patterns: Vec<String> = DEFAULT_TEMP_PATTERNS
            .iter()
            .map(|p| p.to_string())
            .collect();
        UploadConfig {
            temp_matcher: compile_globs(&temp_patterns)
                .unwrap_or_else(|_| globset::GlobSet::empty()),
            temp_patterns,
            overwrite: true,
            notify_on_rename: true,
        }
    }
}

/// Compiles file-name globs; `*` never crosses a `/`.
fn compile_globs(patterns: &[String]) -> Result<globset::GlobSet, String> {
    let mut set = globset::GlobSetBuilder::new();
    for p in patterns {
        let glob = globset::GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("{p:?} is not a glob pattern: {e}"))?;
        set.add(glob);
    }
    set.build().map_err(|e| e.to_string())
}

/// `[log]`: what the process writes about itself.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `info,ingest_bridge::sftp=debug`…
    pub level: String,
    /// Human-readable lines or one JSON object per line.
    pub format: LogFormat,
    /// Where audit records are appended; `None`: only logged.
    pub audit_file: Option<PathBuf>,
}

/// `log.format`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
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

/// `[ftp]`: the FTP/FTPS listener.
#[derive(Debug, Clone)]
pub struct FtpConfig {
    /// Whether the FTP server starts.
    pub enabled: bool,
    /// Control connection address.
    pub listen: SocketAddr,
    /// Ports offered for passive data connections.
    pub passive_ports: RangeInclusive<u16>,
    /// Address (IP or DNS name) advertised in PASV replies.
    pub passive_host: String,
    /// A control connection idle this long is closed.
    pub idle_timeout: Duration,
    /// A data connection that delivers no byte for this long fails the transfer.
    pub data_timeout: Duration,
    /// The kernel receive buffer of passive data connections.
    pub data_receive_buffer: ReceiveBuffer,
    /// Explicit FTPS, when configured.
    pub tls: Option<FtpTlsConfig>,
}

/// `ftp.data_receive_buffer`: how large a kernel receive buffer each passive data
/// connection gets. Data a client sends while its upload waits for the memory budget sits in
/// this buffer, outside `storage.memory_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveBuffer {
    /// The kernel's autotuning while few FTP sessions are open; a share of
    /// `storage.memory_limit` per session when many are.
    Auto,
    /// Always the kernel's autotuning.
    Kernel,
    /// This many bytes (`SO_RCVBUF`; the kernel doubles it for bookkeeping and caps it at
    /// `net.core.rmem_max`).
    Fixed(u32),
}

/// `[ftp.tls]`: explicit FTPS.
#[derive(Debug, Clone)]
pub struct FtpTlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Refuse logins and transfers that are not encrypted.
    pub required: bool,
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

/// Where the S3 API lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An in-process s3s-fs store under `data_dir`.
    Embedded,
    /// The default AWS endpoint for the region.
    Aws,
    /// Any S3-compatible URL.
    Url(String),
}

/// `[storage]`: the S3 bucket and the upload pipeline's limits.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// S3 endpoint.
    pub endpoint: Endpoint,
    /// Bucket every object goes to.
    pub bucket: String,
    /// Signing region.
    pub region: String,
    /// Path-style addressing (MinIO, s3s) instead of virtual hosts.
    pub path_style: bool,
    /// Sign each part's SHA-256 into SigV4 (`x-amz-content-sha256`) instead of sending
    /// `UNSIGNED-PAYLOAD`; the CRC32 checksum guards the bytes either way.
    pub sign_payload: bool,
    /// Static access key; empty means the AWS default credential chain.
    pub access_key_id: String,
    /// Static secret key.
    pub secret_access_key: String,
    /// First part size.
    pub part_size: u64,
    /// Part sizes grow up to this.
    pub max_part_size: u64,
    /// Parts in flight (and buffered) per upload.
    pub upload_concurrency: usize,
    /// All upload buffers together.
    pub memory_limit: u64,
    /// How long a cut upload's stored parts wait for the client to resume; zero aborts
    /// cut uploads at once.
    pub resume_window: Duration,
    /// Range size of each UploadPartCopy when a rename copies a large object.
    pub copy_part_size: u64,
    /// Objects above this are copied in parallel UploadPartCopy ranges instead of one
    /// CopyObject (S3 allows CopyObject up to 5 GiB).
    pub multipart_copy_threshold: u64,
}

/// `[notify]`: the upload-complete API.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Where completions are POSTed; `None` writes only the event log.
    pub url: Option<String>,
    /// One request's deadline.
    pub timeout: Duration,
    /// Extra headers on every request.
    pub headers: BTreeMap<String, String>,
    /// Standard Webhooks secret (`whsec_…`), decoded.
    pub signing_secret: Option<Vec<u8>>,
    /// Longest wait between two retries.
    pub max_backoff: Duration,
    /// An entry undeliverable this long becomes a dead letter.
    pub max_age: Duration,
    /// Deliveries running at once.
    pub concurrency: usize,
    /// Whether the client's success waits for the connector.
    pub mode: DeliveryMode,
    /// In sync mode, how long a client waits for the connector before success is said
    /// on the strength of the durable outbox.
    pub sync_timeout: Duration,
    /// Lifetime of `presigned_get_url`.
    pub presign_ttl: Duration,
    /// A push step fails when no byte was accepted (or, after the last, no answer came) for
    /// this long; its whole duration is not limited.
    pub progress_timeout: Duration,
    /// How a token is obtained, renewed and shared (`auth.token` in templates).
    pub auth: Option<TokenConfig>,
    /// Runs when an upload starts, before any byte goes to S3.
    pub create: Option<StepConfig>,
    /// Run in order once the object is durable; empty: POST the completion to `url`.
    pub steps: Vec<StepConfig>,
}

impl NotifyConfig {
    /// Whether completions go anywhere beyond the event log.
    pub fn enabled(&self) -> bool {
        self.url.is_some() || !self.steps.is_empty()
    }
}

/// `[metrics]`
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
}

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Store files.
    Upload,
    /// List directories, stat files.
    List,
    /// Read files.
    Download,
    /// Delete files.
    Delete,
    /// Rename files.
    Rename,
    /// Create and remove directories.
    Mkdir,
}

impl Permission {
    /// Every permission, as written in the config.
    pub const ALL: [(&'static str, Permission); 6] = [
        ("upload", Permission::Upload),
        ("list", Permission::List),
        ("download", Permission::Download),
        ("delete", Permission::Delete),
        ("rename", Permission::Rename),
        ("mkdir", Permission::Mkdir),
    ];
}

impl FromStr for Permission {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, p)| *p)
            .ok_or(())
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(_, p)| p == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

/// One `[[users]]` entry.
#[derive(Debug, Clone)]
pub struct UserConfig {
    /// Login name.
    pub username: String,
    /// argon2 PHC string; empty when the user logs in by key only.
    pub password_hash: String,
    /// OpenSSH public keys.
    pub public_keys: Vec<String>,
    /// S3 key prefix, normalised to "" or "dir/…/".
    pub home: String,
    /// What the user may do.
    pub permissions: HashSet<Permission>,
    /// Copied into every completion of this user.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// This user's headers and template variables for the connector.
    pub notify: UserNotifyConfig,
    /// Client networks this user may log in from; empty allows every address.
    pub allowed_ips: Vec<ipnet::IpNet>,
    /// Largest file this user may upload.
    pub max_file_size: Option<u64>,
    /// File name endings (lowercase, e.g. ".mp4") this user may upload; empty: any.
    pub allowed_extensions: Vec<String>,
    /// Most bytes this user may store.
    pub quota_bytes: Option<u64>,
    /// Most files this user may store.
    pub quota_files: Option<u64>,
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
        let config = v.config(raw);
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

/// Collects problems while converting the raw tree.
struct Validator<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn problem(&mut self, key: &str, at: Option<&Text>, message: impl Into<String>) {
        let line = at.map(|t| self.line_of(t.span().start));
        self.problems.push(Problem {
            key: key.to_string(),
            line,
            message: message.into(),
        });
    }

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

    fn text(value: Option<Text>, default: &str) -> (String, Option<Text>) {
        match value {
            Some(t) => (t.get_ref().clone(), Some(t)),
            None => (default.to_string(), None),
        }
    }

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
        value: Option<serde_spanned::Spanned<i64>>,
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

    /// `server.drain_timeout`, or its old name `server.shutdown_timeout`; not both.
    fn drain_timeout(&mut self, drain: Option<Text>, old_name: Option<Text>) -> Duration {
        const DEFAULT: Duration = Duration::from_secs(300);
        match (drain, old_name) {
            (Some(_), Some(old)) => {
                self.problem(
                    "server.shutdown_timeout",
                    Some(&old),
                    "is the old name of server.drain_timeout, which is also set: remove it",
                );
                DEFAULT
            }
            (None, Some(old)) => self.duration("server.shutdown_timeout", Some(old), DEFAULT),
            (drain, None) => self.duration("server.drain_timeout", drain, DEFAULT),
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let server = ServerConfig {
            data_dir: PathBuf::from(Self::text(raw.server.data_dir, "data").0),
            drain_timeout: self
                .drain_timeout(raw.server.drain_timeout, raw.server.shutdown_timeout),
            allowed_ips: self.networks("server.allowed_ips", raw.server.allowed_ips),
            max_connections: self.count(
                "server.max_connections",
                raw.server.max_connections,
                1..=1_000_000,
                5000,
            ) as usize,
            max_connections_per_ip: self.count(
                "server.max_connections_per_ip",
                raw.server.max_connections_per_ip,
                1..=1_000_000,
                200,
            ) as usize,
            login_timeout: self.duration(
                "server.login_timeout",
                raw.server.login_timeout,
                Duration::from_secs(60),
            ),
            trusted_proxies: self.networks("server.trusted_proxies", raw.server.trusted_proxies),
        };
        let ftp = self.ftp(raw.ftp);
        let sftp = SftpConfig {
            enabled: raw.sftp.enabled.unwrap_or(true),
            listen: self.socket("sftp.listen", raw.sftp.listen, "127.0.0.1:2222"),
            host_keys: raw
                .sftp
                .host_keys
                .map(|keys| {
                    keys.into_iter()
                        .map(|k| PathBuf::from(k.into_inner()))
                        .collect()
                })
                .unwrap_or_else(|| vec![server.data_dir.join("ssh_host_ed25519_key")]),
            idle_timeout: self.duration(
                "sftp.idle_timeout",
                raw.sftp.idle_timeout,
                Duration::from_secs(600),
            ),
            ciphers: self.ciphers(raw.sftp.ciphers),
        };
        let storage = self.storage(raw.storage);
        let notify = self.notify(raw.notify);
        let metrics = MetricsConfig {
            listen: self.socket("metrics.listen", raw.metrics.listen, "127.0.0.1:9100"),
        };
        let log = self.log(raw.log, &server.data_dir);
        let upload = self.upload(raw.upload);
        let defender = self.defender(raw.defender);
        let auth = self.auth(raw.auth);
        let users = self.users(raw.users);
        self.listeners_distinct(&ftp, &sftp, &metrics);
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
            users,
        }
    }

    fn auth(&mut self, raw: RawAuth) -> AuthConfig {
        let Some(raw) = raw.http else {
            return AuthConfig::default();
        };
        let (url, url_at) = Self::text(raw.url, "");
        if !url::Url::parse(&url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
            self.problem(
                "auth.http.url",
                url_at.as_ref(),
                format!("{url:?} is not an http(s) URL; remove [auth.http] to use only [[users]]"),
            );
        }
        AuthConfig {
            http: Some(HttpAuthConfig {
                url,
                timeout: self.duration("auth.http.timeout", raw.timeout, Duration::from_secs(5)),
                cache_ttl: self.duration(
                    "auth.http.cache_ttl",
                    raw.cache_ttl,
                    Duration::from_secs(60),
                ),
                headers: self.literal_headers("auth.http.headers", raw.headers),
            }),
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

    fn defender(&mut self, raw: raw::RawDefender) -> DefenderConfig {
        let max_failures =
            self.count("defender.max_failures", raw.max_failures, 1..=1_000_000, 10) as u32;
        DefenderConfig {
            enabled: raw.enabled.unwrap_or(true),
            max_failures,
            window: self.duration("defender.window", raw.window, Duration::from_secs(300)),
            ban_time: self.duration("defender.ban_time", raw.ban_time, Duration::from_secs(900)),
            safelist: self.networks("defender.safelist", raw.safelist),
        }
    }

    fn upload(&mut self, raw: raw::RawUpload) -> UploadConfig {
        let defaults = UploadConfig::default();
        let temp_patterns = match raw.temp_patterns {
            None => defaults.temp_patterns,
            Some(list) => {
                let mut patterns = Vec::new();
                for p in list {
                    if p.get_ref().is_empty() || p.get_ref().contains('/') {
                        self.problem(
                            "upload.temp_patterns",
                            Some(&p),
                            format!("{:?} must be a non-empty file-name pattern without '/', e.g. \"*.part\"", p.get_ref()),
                        );
                    } else if let Err(e) = compile_globs(std::slice::from_ref(p.get_ref())) {
                        self.problem("upload.temp_patterns", Some(&p), e);
                    } else {
                        patterns.push(p.into_inner());
                    }
                }
                patterns
            }
        };
        UploadConfig {
            temp_matcher: compile_globs(&temp_patterns)
                .unwrap_or_else(|_| globset::GlobSet::empty()),
            temp_patterns,
            overwrite: raw.overwrite.unwrap_or(true),
            notify_on_rename: raw.notify_on_rename.unwrap_or(true),
        }
    }

    fn log(&mut self, raw: raw::RawLog, data_dir: &Path) -> LogConfig {
        let (level, level_at) = Self::text(raw.level, "info");
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            self.problem(
                "log.level",
                level_at.as_ref(),
                format!("{level:?} is not a log filter; write e.g. \"info\", \"debug\" or \"info,ingest_bridge::sftp=debug\""),
            );
        }
        let (format, format_at) = Self::text(raw.format, "text");
        let format = match format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                self.problem(
                    "log.format",
                    format_at.as_ref(),
                    format!("{other:?}: write \"text\" or \"json\""),
                );
                LogFormat::Text
            }
        };
        let audit_file = match raw.audit_file.map(Text::into_inner) {
            None => Some(data_dir.join("audit.jsonl")),
            Some(path) if path.is_empty() => None,
            Some(path) => Some(data_dir.join(path)),
        };
        LogConfig {
            level,
            format,
            audit_file,
        }
    }

    fn ftp(&mut self, raw: raw::RawFtp) -> FtpConfig {
        let (ports, ports_at) = Self::text(raw.passive_ports, "50000-50100");
        let passive_ports = match parse_port_range(&ports) {
            Ok(r) => r,
            Err(e) => {
                self.problem("ftp.passive_ports", ports_at.as_ref(), e);
                50000..=50100
            }
        };
        let (passive_host, host_at) = Self::text(raw.passive_host, "127.0.0.1");
        if passive_host.trim().is_empty() || passive_host.contains(char::is_whitespace) {
            self.problem(
                "ftp.passive_host",
                host_at.as_ref(),
                "write the IP address or DNS name clients reach this server at, e.g. \"203.0.113.7\"",
            );
        }
        let tls = raw.tls.and_then(|t| {
            let cert = t.cert.map(|c| PathBuf::from(c.into_inner()));
            let key = t.key.map(|k| PathBuf::from(k.into_inner()));
            match (cert, key) {
                (Some(cert), Some(key)) => Some(FtpTlsConfig {
                    cert,
                    key,
                    required: t.required.unwrap_or(false),
                }),
                _ => {
                    self.problem(
                        "ftp.tls",
                        None,
                        "explicit FTPS needs both cert and key (PEM files); remove [ftp.tls] to serve plain FTP",
                    );
                    None
                }
            }
        });
        FtpConfig {
            enabled: raw.enabled.unwrap_or(true),
            listen: self.socket("ftp.listen", raw.listen, "127.0.0.1:2121"),
            passive_ports,
            passive_host,
            idle_timeout: self.duration(
                "ftp.idle_timeout",
                raw.idle_timeout,
                Duration::from_secs(600),
            ),
            data_timeout: self.duration(
                "ftp.data_timeout",
                raw.data_timeout,
                Duration::from_secs(60),
            ),
            data_receive_buffer: self.receive_buffer(raw.data_receive_buffer),
            tls,
        }
    }

    fn receive_buffer(&mut self, value: Option<Text>) -> ReceiveBuffer {
        let Some(t) = value else {
            return ReceiveBuffer::Auto;
        };
        match t.get_ref().trim() {
            "auto" => ReceiveBuffer::Auto,
            "kernel" => ReceiveBuffer::Kernel,
            text => match parse_size(text) {
                Ok(n) if (4096..=1 << 30).contains(&n) => {
                    ReceiveBuffer::Fixed(u32::try_from(n).unwrap_or(u32::MAX))
                }
                _ => {
                    self.problem(
                        "ftp.data_receive_buffer",
                        Some(&t),
                        "write \"auto\" (the default), \"kernel\" (always the kernel's autotuning) or a size from 4KiB to 1GiB, e.g. \"256KiB\"",
                    );
                    ReceiveBuffer::Auto
                }
            },
        }
    }

    fn storage(&mut self, raw: raw::RawStorage) -> StorageConfig {
        let (endpoint_text, endpoint_at) = Self::text(raw.endpoint, "embedded");
        let endpoint = match endpoint_text.as_str() {
            "embedded" => Endpoint::Embedded,
            "" | "aws" => Endpoint::Aws,
            url if url.starts_with("http://") || url.starts_with("https://") => {
                Endpoint::Url(url.trim_end_matches('/').to_string())
            }
            other => {
                self.problem(
                    "storage.endpoint",
                    endpoint_at.as_ref(),
                    format!("{other:?} is neither \"embedded\", \"aws\" nor an http(s):// URL"),
                );
                Endpoint::Embedded
            }
        };
        let (bucket, bucket_at) = Self::text(raw.bucket, "ingest");
        if !valid_bucket_name(&bucket) {
            self.problem(
                "storage.bucket",
                bucket_at.as_ref(),
                format!(
                    "{bucket:?} is not a valid S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')"
                ),
            );
        }
        let part_at = raw.part_size.clone();
        let part_size = self.size("storage.part_size", raw.part_size, 16 << 20);
        if !(S3_MIN_PART_SIZE..=S3_MAX_PART_SIZE).contains(&part_size) {
            self.problem(
                "storage.part_size",
                part_at.as_ref(),
                "S3 parts must be between 5MiB and 5GiB",
            );
        }
        let max_at = raw.max_part_size.clone();
        let max_part_size = self.size("storage.max_part_size", raw.max_part_size, 512 << 20);
        if max_part_size > S3_MAX_PART_SIZE || max_part_size < part_size {
            self.problem(
                "storage.max_part_size",
                max_at.as_ref(),
                format!(
                    "must be between part_size ({}) and 5GiB",
                    format_size(part_size)
                ),
            );
        }
        let upload_concurrency = self.count(
            "storage.upload_concurrency",
            raw.upload_concurrency,
            1..=64,
            4,
        ) as usize;
        let memory_at = raw.memory_limit.clone();
        let memory_limit = self.size("storage.memory_limit", raw.memory_limit, 1 << 30);
        if memory_limit < 2 * part_size {
            self.problem(
                "storage.memory_limit",
                memory_at.as_ref(),
                format!(
                    "must hold at least two parts (2 × part_size = {}) so that every upload can progress",
                    format_size(2 * part_size)
                ),
            );
        }
        let access_key_id = raw.access_key_id.unwrap_or_default();
        let secret_access_key = raw.secret_access_key.unwrap_or_default();
        if access_key_id.is_empty() != secret_access_key.is_empty() {
            self.problem(
                "storage.secret_access_key",
                None,
                "set both access_key_id and secret_access_key, or neither (to use the AWS default credential chain)",
            );
        }
        let resume_window = self.duration(
            "storage.resume_window",
            raw.resume_window,
            Duration::from_secs(24 * 3600),
        );
        let copy_at = raw.copy_part_size.clone();
        let copy_part_size = self.size("storage.copy_part_size", raw.copy_part_size, 512 << 20);
        if !(S3_MIN_PART_SIZE..=S3_MAX_PART_SIZE).contains(&copy_part_size) {
            self.problem(
                "storage.copy_part_size",
                copy_at.as_ref(),
                "copy ranges are parts: between 5MiB and 5GiB",
            );
        }
        let threshold_at = raw.multipart_copy_threshold.clone();
        let multipart_copy_threshold = self.size(
            "storage.multipart_copy_threshold",
            raw.multipart_copy_threshold,
            S3_MAX_PART_SIZE,
        );
        if multipart_copy_threshold > S3_MAX_PART_SIZE {
            self.problem(
                "storage.multipart_copy_threshold",
                threshold_at.as_ref(),
                "S3's CopyObject stops at 5GiB: write at most \"5GiB\"",
            );
        }
        StorageConfig {
            resume_window,
            copy_part_size,
            multipart_copy_threshold,
            endpoint,
            bucket,
            region: Self::text(raw.region, "us-east-1").0,
            path_style: raw.path_style.unwrap_or(true),
            sign_payload: raw.sign_payload.unwrap_or(false),
            access_key_id,
            secret_access_key,
            part_size,
            max_part_size,
            upload_concurrency,
            memory_limit,
        }
    }

    fn notify(&mut self, raw: raw::RawNotify) -> NotifyConfig {
        let (url, url_at) = Self::text(raw.url, "");
        let url = if url.is_empty() {
            None
        } else {
            match url::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(url),
                _ => {
                    self.problem(
                        "notify.url",
                        url_at.as_ref(),
                        format!("{url:?} is not an http(s) URL; leave it empty to write completions only to the event log"),
                    );
                    None
                }
            }
        };
        let headers = self.literal_headers("notify.headers", raw.headers);
        let (secret, secret_at) = Self::text(raw.signing_secret, "");
        let signing_secret = if secret.is_empty() {
            None
        } else {
            match decode_webhook_secret(&secret) {
                Some(key) => Some(key),
                None => {
                    self.problem(
                        "notify.signing_secret",
                        secret_at.as_ref(),
                        "write \"whsec_\" followed by the base64 secret your platform gave you",
                    );
                    None
                }
            }
        };
        let concurrency = self.count("notify.concurrency", raw.concurrency, 1..=1024, 8) as usize;
        let (mode_text, mode_at) = Self::text(raw.mode, "async");
        let mode = match mode_text.as_str() {
            "async" => DeliveryMode::Async,
            "sync" => DeliveryMode::Sync,
            other => {
                self.problem(
                    "notify.mode",
                    mode_at.as_ref(),
                    format!("{other:?}: write \"async\" (success once queued) or \"sync\" (success once the API accepted)"),
                );
                DeliveryMode::Async
            }
        };
        let ttl_at = raw.presign_ttl.clone();
        let presign_ttl = self.duration(
            "notify.presign_ttl",
            raw.presign_ttl,
            Duration::from_secs(12 * 3600),
        );
        if presign_ttl.is_zero() || presign_ttl > Duration::from_secs(7 * 24 * 3600) {
            self.problem(
                "notify.presign_ttl",
                ttl_at.as_ref(),
                "S3 presigned URLs live between 1s and 7 days",
            );
        }
        let create = raw.create.and_then(|c| self.step("notify.create", c, true));
        let steps: Vec<StepConfig> = raw
            .steps
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| self.step(&format!("notify.steps[{i}]"), s, false))
            .collect();
        self.restarts(&steps);
        if create
            .iter()
            .flat_map(|c| &c.rules)
            .any(|r| r.restart.is_some())
        {
            self.problem(
                "notify.create.rules",
                None,
                "the create step cannot restart: the client is waiting",
            );
        }
        let auth = raw.auth.and_then(|a| self.token(a));
        if create.is_some() && steps.is_empty() && url.is_none() {
            self.problem(
                "notify.steps",
                None,
                "a connector with [notify.create] needs [[notify.steps]] (or notify.url) to run once the object is durable",
            );
        }
        if mode == DeliveryMode::Sync && url.is_none() && steps.is_empty() {
            self.problem(
                "notify.mode",
                mode_at.as_ref(),
                "sync mode waits for the API: set notify.url or [[notify.steps]]",
            );
        }
        let timeout = self.duration("notify.timeout", raw.timeout, Duration::from_secs(30));
        let progress_at = raw.progress_timeout.clone();
        let progress_timeout = self.duration(
            "notify.progress_timeout",
            raw.progress_timeout,
            Duration::from_secs(60),
        );
        if progress_timeout < Duration::from_secs(1) {
            self.problem(
                "notify.progress_timeout",
                progress_at.as_ref(),
                "at least 1s: a push that may not pause for a second would be cut by any hiccup",
            );
        }
        NotifyConfig {
            url,
            timeout,
            headers,
            signing_secret,
            max_backoff: self.duration(
                "notify.max_backoff",
                raw.max_backoff,
                Duration::from_secs(300),
            ),
            max_age: self.duration(
                "notify.max_age",
                raw.max_age,
                Duration::from_secs(72 * 3600),
            ),
            concurrency,
            mode,
            sync_timeout: self.duration("notify.sync_timeout", raw.sync_timeout, timeout),
            presign_ttl,
            progress_timeout,
            auth,
            create,
            steps,
        }
    }

    fn users(&mut self, raw: Vec<raw::RawUser>) -> Vec<UserConfig> {
        let mut seen = HashSet::new();
        let mut users = Vec::new();
        for (i, u) in raw.into_iter().enumerate() {
            let key = |field: &str| format!("users[{i}].{field}");
            let (username, name_at) = Self::text(u.username, "");
            if username.is_empty()
                || username
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace())
            {
                self.problem(
                    &key("username"),
                    name_at.as_ref(),
                    "every user needs a username without spaces or control characters",
                );
            } else if !seen.insert(username.clone()) {
                self.problem(
                    &key("username"),
                    name_at.as_ref(),
                    format!("{username:?} is defined twice"),
                );
            }
            let (password_hash, hash_at) = Self::text(u.password_hash, "");
            if !password_hash.is_empty() && argon2::PasswordHash::new(&password_hash).is_err() {
                self.problem(
                    &key("password_hash"),
                    hash_at.as_ref(),
                    "not a PHC hash string; create one with `ingest-bridge hash-password`",
                );
            }
            if password_hash.is_empty() && u.public_keys.is_empty() {
                self.problem(
                    &key("password_hash"),
                    name_at.as_ref(),
                    "the user has neither a password_hash nor public_keys and could never log in",
                );
            }
            let (home_text, home_at) = Self::text(u.home, "");
            let home = match normalize_home(&home_text) {
                Some(h) => h,
                None => {
                    self.problem(&key("home"), home_at.as_ref(), "home must be a relative S3 prefix without '.' or '..' segments, e.g. \"alice/\"");
                    String::new()
                }
            };
            let mut permissions = HashSet::new();
            match u.permissions {
                None => {
                    permissions.extend([Permission::Upload, Permission::List]);
                }
                Some(list) => {
                    for p in list {
                        match p.get_ref().parse::<Permission>() {
                            Ok(perm) => {
                                permissions.insert(perm);
                            }
                            Err(()) => self.problem(
                                &key("permissions"),
                                Some(&p),
                                format!("unknown permission {:?}; use upload, list, download, delete, rename, mkdir", p.get_ref()),
                            ),
                        }
                    }
                }
            }
            users.push(UserConfig {
                username,
                password_hash,
                public_keys: u.public_keys.into_iter().map(Text::into_inner).collect(),
                home,
                permissions,
                metadata: u.metadata,
                notify: self.user_notify(&key("notify"), u.notify),
                allowed_ips: self.networks(&key("allowed_ips"), u.allowed_ips),
                max_file_size: u
                    .max_file_size
                    .map(|t| self.size(&key("max_file_size"), Some(t), u64::MAX)),
                quota_bytes: u
                    .quota_bytes
                    .map(|t| self.size(&key("quota_bytes"), Some(t), u64::MAX)),
                quota_files: u
                    .quota_files
                    .map(|n| self.count(&key("quota_files"), Some(n), 0..=i64::MAX, 0) as u64),
                allowed_extensions: u
                    .allowed_extensions
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|t| {
                        let ext = t.get_ref().trim().to_lowercase();
                        let ext = ext.trim_start_matches('.');
                        if ext.is_empty() || ext.contains('/') {
                            self.problem(
                                &key("allowed_extensions"),
                                Some(&t),
                                "write extensions like \".mp4\" or \"mxf\"",
                            );
                            None
                        } else {
                            Some(format!(".{ext}"))
                        }
                    })
                    .collect(),
            });
        }
        users
    }

    fn listeners_distinct(&mut self, ftp: &FtpConfig, sftp: &SftpConfig, metrics: &MetricsConfig) {
        let mut bound: Vec<(&str, SocketAddr)> = vec![("metrics.listen", metrics.listen)];
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

/// "50000-50100" → 50000..=50100.
fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let err = || format!("{s:?} is not a port range; write FIRST-LAST, e.g. \"50000-50100\"");
    let (a, b) = s.split_once('-').ok_or_else(err)?;
    let a: u16 = a.trim().parse().map_err(|_| err())?;
    let b: u16 = b.trim().parse().map_err(|_| err())?;
    if a == 0 || a > b {
        return Err(err());
    }
    Ok(a..=b)
}

fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-'])
}

/// "alice", "/alice/", "alice//x" → "alice/", "alice/x/"; "" and "/" → "".
pub fn normalize_home(home: &str) -> Option<String> {
    let mut out = String::new();
    for segment in home.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." || segment.chars().any(char::is_control) {
            return None;
        }
        out.push_str(segment);
        out.push('/');
    }
    Some(out)
}

/// "whsec_<base64>" → key bytes.
fn decode_webhook_secret(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let b64 = secret.strip_prefix("whsec_")?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

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
    fn home_is_normalised() {
        assert_eq!(normalize_home("/alice//x/").as_deref(), Some("alice/x/"));
        assert_eq!(normalize_home("").as_deref(), Some(""));
        assert_eq!(normalize_home("a/../b"), None);
    }

    #[test]
    fn budget_must_hold_two_parts() {
        let err = parse("[storage]\npart_size = \"8MiB\"\nmemory_limit = \"10MiB\"\n").unwrap_err();
        assert!(err.to_string().contains("storage.memory_limit"), "{err}");
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

    #[test]
    fn payload_signing_is_off_unless_asked() {
        assert!(!parse("").expect("valid").storage.sign_payload);
        let c = parse("[storage]\nsign_payload = true\n").expect("valid");
        assert!(c.storage.sign_payload);
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

    #[test]
    fn connector_mistakes_are_config_errors_with_their_keys() {
        let err = parse(
            r#"
[notify]
mode = "eventually"
concurrency = 0
presign_ttl = "30d"
[notify.create]
url = "https://api.example.com/{{ unclosed"
object = true
[[notify.steps]]
method = "FETCH ME"
url = "https://api.example.com/x"
json = "{}"
form = { a = "b" }
[[notify.steps]]
url = "https://api.example.com/y"
key = "nope"
rules = [ { status = "2x9", outcome = "delivered" }, { body = "(", outcome = "retry" }, { outcome = "maybe" } ]
"#,
        )
        .unwrap_err()
        .to_string();
        for key in [
            "notify.mode",
            "notify.concurrency",
            "notify.presign_ttl",
            "notify.create.url",
            "notify.create (",
            "notify.steps[0].method",
            "notify.steps[0] (",
            "notify.steps[1].key",
            "notify.steps[1].rules[0].status",
            "notify.steps[1].rules[1].body",
            "notify.steps[1].rules[2].outcome",
        ] {
            assert!(text_has(&err, key), "{key} missing in:\n{err}");
        }
    }

    #[test]
    fn token_parts_restart_and_when_mistakes_are_config_errors() {
        let err = parse(
            r#"
[notify]
progress_timeout = "0s"
[notify.auth]
url = "https://sso.example.com/token"
ttl = "1s"
object = true
[[notify.steps]]
name = "first"
url = "https://api.example.com/a"
when = "size >"
token = "x"
rules = [ { status = "403", outcome = "restart", step = "later" }, { outcome = "restart" } ]
[[notify.steps]]
name = "later"
url = "https://api.example.com/b"
parts = { size = "1MiB" }
"#,
        )
        .unwrap_err()
        .to_string();
        for key in [
            "notify.progress_timeout",
            "notify.auth.ttl",
            "notify.auth (",
            "notify.steps[0].when",
            "notify.steps[0].token",
            "notify.steps[0].rules[1].step",
            "notify.steps[1].parts.size",
            "notify.steps[1].parts.url",
        ] {
            assert!(text_has(&err, key), "{key} missing in:\n{err}");
        }
        let err = parse(
            "[[notify.steps]]\nname = \"a\"\nurl = \"https://x.example/a\"\nrules = [{ outcome = \"restart\", step = \"b\" }]\n[[notify.steps]]\nname = \"b\"\nurl = \"https://x.example/b\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("notify.steps[0].rules") && err.contains("not this step or one before it"),
            "{err}"
        );
    }

    fn text_has(text: &str, key: &str) -> bool {
        let key = key.trim_end_matches(" (");
        text.lines().any(|l| {
            l.trim_start_matches("  - ")
                .strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with(':'))
        })
    }

    #[test]
    fn a_connector_without_url_is_enabled_by_its_steps() {
        let c = parse("[notify]\n[[notify.steps]]\nurl = \"https://a.example/{{ id }}\"\n")
            .expect("valid");
        assert!(c.notify.enabled());
        assert_eq!(c.notify.steps[0].name, "complete");
        assert!(matches!(c.notify.steps[0].body, StepBody::Completion));
        assert_eq!(c.notify.concurrency, 8);
        assert_eq!(c.notify.max_age, Duration::from_secs(72 * 3600));
        assert_eq!(c.notify.mode, DeliveryMode::Async);
    }

    #[test]
    fn log_settings_are_checked_and_the_audit_file_lives_in_data_dir() {
        let c = parse("[server]\ndata_dir = \"/srv/bridge\"\n").expect("valid");
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(
            c.log.audit_file,
            Some(PathBuf::from("/srv/bridge/audit.jsonl"))
        );
        let c =
            parse("[log]\nformat = \"json\"\naudit_file = \"\"\nlevel = \"debug,libunftp=info\"\n")
                .expect("valid");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.audit_file, None);
        let err = parse("[log]\nformat = \"xml\"\nlevel = \"info,=\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("log.format") && err.contains("log.level"),
            "{err}"
        );
    }

    #[test]
    fn upload_defaults_match_temporary_names_by_file_name() {
        let c = parse("").expect("valid");
        assert!(c.upload.overwrite && c.upload.notify_on_rename);
        assert_eq!(c.storage.resume_window, Duration::from_secs(24 * 3600));
        for temp in [
            "a.mp4.filepart",
            "x.part",
            "y.tmp",
            ".~lock",
            "clip.crdownload",
        ] {
            assert!(c.upload.is_temp(temp), "{temp}");
        }
        for final_name in ["a.mp4", "partial.mov", "tmp", "x.partx"] {
            assert!(!c.upload.is_temp(final_name), "{final_name}");
        }
        let c = parse("[upload]\ntemp_patterns = [\"*.uploading\"]\noverwrite = false\n")
            .expect("valid");
        assert!(c.upload.is_temp("a.uploading") && !c.upload.is_temp("a.part"));
        assert!(!c.upload.overwrite);
    }

    #[test]
    fn the_data_receive_buffer_is_auto_kernel_or_a_size() {
        let buffer = |value: &str| {
            parse(&format!("[ftp]\ndata_receive_buffer = \"{value}\"\n"))
                .map(|c| c.ftp.data_receive_buffer)
        };
        assert_eq!(
            parse("").expect("valid").ftp.data_receive_buffer,
            ReceiveBuffer::Auto
        );
        assert_eq!(buffer("auto").expect("valid"), ReceiveBuffer::Auto);
        assert_eq!(buffer("kernel").expect("valid"), ReceiveBuffer::Kernel);
        assert_eq!(
            buffer("256KiB").expect("valid"),
            ReceiveBuffer::Fixed(256 * 1024)
        );
        for bad in ["1KiB", "2GiB", "large"] {
            let err = buffer(bad).expect_err(bad).to_string();
            assert!(err.contains("ftp.data_receive_buffer"), "{err}");
            assert!(err.contains("\"kernel\""), "says what to write: {err}");
        }
    }

    #[test]
    fn bad_upload_and_copy_settings_name_their_keys() {
        let err = parse(
            "[upload]\ntemp_patterns = [\"dir/*.part\", \"[\"]\n[storage]\ncopy_part_size = \"1MiB\"\nmultipart_copy_threshold = \"6GiB\"\nresume_window = \"soon\"\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "upload.temp_patterns",
            "storage.copy_part_size",
            "storage.multipart_copy_threshold",
            "storage.resume_window",
        ] {
            assert!(err.contains(key), "{key} missing in {err}");
        }
    }
}
