//! The configuration file exactly as written: strings still unparsed, every key optional.
//!
//! Sizes, durations and addresses stay strings here (with their position in the file) so
//! that validation can report every bad value at once, each with its key and line.

use serde::Deserialize;
use serde_spanned::Spanned;
use std::collections::BTreeMap;

/// A string value together with where it stands in the file.
pub type Text = Spanned<String>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    pub ftp: RawFtp,
    pub sftp: RawSftp,
    pub storage: RawStorage,
    pub notify: RawNotify,
    pub metrics: RawMetrics,
    pub log: RawLog,
    pub upload: RawUpload,
    pub defender: RawDefender,
    pub auth: RawAuth,
    pub users: Vec<RawUser>,
}

/// `[auth]`
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAuth {
    pub http: Option<RawAuthHttp>,
}

/// `[auth.http]`
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAuthHttp {
    pub url: Option<Text>,
    pub timeout: Option<Text>,
    pub cache_ttl: Option<Text>,
    pub headers: BTreeMap<String, String>,
}

/// `[defender]`
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDefender {
    pub enabled: Option<bool>,
    pub max_failures: Option<Spanned<i64>>,
    pub window: Option<Text>,
    pub ban_time: Option<Text>,
    pub safelist: Option<Vec<Text>>,
}

/// `[upload]`
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUpload {
    pub temp_patterns: Option<Vec<Text>>,
    pub overwrite: Option<bool>,
    pub notify_on_rename: Option<bool>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<Text>,
    pub format: Option<Text>,
    pub audit_file: Option<Text>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    pub data_dir: Option<Text>,
    pub drain_timeout: Option<Text>,
    /// The name `drain_timeout` had before 0.2; still read.
    pub shutdown_timeout: Option<Text>,
    pub allowed_ips: Option<Vec<Text>>,
    pub max_connections: Option<serde_spanned::Spanned<i64>>,
    pub max_connections_per_ip: Option<serde_spanned::Spanned<i64>>,
    pub login_timeout: Option<Text>,
    pub trusted_proxies: Option<Vec<Text>>,
}

/// `[ftp]`
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawFtp {
    pub enabled: Option<bool>,
    pub listen: Option<Text>,
    pub passive_ports: Option<Text>,
    pub passive_host: Option<Text>,
    pub idle_timeout: Option<Text>,
    pub data_timeout: Option<Text>,
    pub data_receive_buffer: Option<Text>,
    pub tls: Option<RawFtpTls>,
}

/// `[ftp.tls]`
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawFtpTls {
    pub cert: Option<Text>,
    pub key: Option<Text>,
    pub required: Option<bool>,
}

/// `[sftp]`
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSftp {
    pub enabled: Option<bool>,
    pub listen: Option<Text>,
    pub host_keys: Option<Vec<Text>>,
    pub idle_timeout: Option<Text>,
    pub ciphers: Option<Vec<Text>>,
}

/// `[storage]`
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawStorage {
    pub endpoint: Option<Text>,
    pub bucket: Option<Text>,
    pub region: Option<Text>,
    pub path_style: Option<bool>,
    pub sign_payload: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub part_size: Option<Text>,
    pub max_part_size: Option<Text>,
    pub upload_concurrency: Option<Spanned<i64>>,
    pub memory_limit: Option<Text>,
    pub resume_window: Option<Text>,
    pub copy_part_size: Option<Text>,
    pub multipart_copy_threshold: Option<Text>,
}

/// `[notify]`
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawNotify {
    pub url: Option<Text>,
    pub timeout: Option<Text>,
    pub headers: BTreeMap<String, String>,
    pub signing_secret: Option<Text>,
    pub max_backoff: Option<Text>,
    pub max_age: Option<Text>,
    pub concurrency: Option<Spanned<i64>>,
    pub mode: Option<Text>,
    pub sync_timeout: Option<Text>,
    pub presign_ttl: Option<Text>,
    pub progress_timeout: Option<Text>,
    pub auth: Option<RawStep>,
    pub create: Option<RawStep>,
    pub steps: Vec<RawStep>,
}

/// One templated HTTP request of a connector (`[notify.create]`, `[[notify.steps]]`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawStep {
    pub name: Option<String>,
    pub method: Option<String>,
    pub url: Option<Text>,
    pub headers: BTreeMap<String, String>,
    pub json: Option<String>,
    pub body: Option<String>,
    pub content_type: Option<String>,
    pub form: Option<BTreeMap<String, String>>,
    pub multipart: Option<BTreeMap<String, String>>,
    pub file_field: Option<String>,
    pub file_name: Option<String>,
    pub object: Option<bool>,
    pub extract: BTreeMap<String, String>,
    pub message: Option<String>,
    pub key: Option<String>,
    pub rules: Vec<RawRule>,
    pub when: Option<String>,
    pub follow_redirects: Option<bool>,
    pub parts: Option<RawParts>,
    /// `[notify.auth]` only: where the token is in the answer.
    pub token: Option<String>,
    /// `[notify.auth]` only: where its lifetime (seconds) is in the answer.
    pub expires_in: Option<String>,
    /// `[notify.auth]` only: the lifetime when the answer has none.
    pub ttl: Option<Text>,
}

/// `parts = { … }` of a step: push the object part by part to URLs the platform hands out.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawParts {
    pub size: Option<Text>,
    pub url: Option<String>,
    pub method: Option<String>,
    pub keep_header: Option<String>,
}

/// One classification rule of a step.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRule {
    pub status: Option<String>,
    pub body: Option<String>,
    pub outcome: Option<String>,
    pub step: Option<String>,
}

/// `[users.notify]`: one user's additions to every connector request.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUserNotify {
    pub headers: BTreeMap<String, String>,
    pub vars: BTreeMap<String, String>,
}

/// `[metrics]`
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<Text>,
}

/// One `[[users]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUser {
    pub username: Option<Text>,
    pub password_hash: Option<Text>,
    pub public_keys: Vec<Text>,
    pub home: Option<Text>,
    pub permissions: Option<Vec<Text>>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub notify: RawUserNotify,
    pub allowed_ips: Option<Vec<Text>>,
    pub max_file_size: Option<Text>,
    pub allowed_extensions: Option<Vec<Text>>,
    pub quota_bytes: Option<Text>,
    pub quota_files: Option<Spanned<i64>>,
}
