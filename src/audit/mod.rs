//! The audit trail: one JSON line per login attempt, per transfer (completed, aborted,
//! failed or refused) and per admin action (or wrong admin token), appended to
//! `log.audit_file` and also emitted as a `tracing` event with target `audit`. Never carries
//! a password, key or token.

use crate::protocol::Protocol;
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Where audit records go; cheap to clone. [`Audit::default`] only logs them.
#[derive(Clone, Default)]
pub struct Audit {
    file: Option<Arc<Mutex<std::fs::File>>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Audit")
    }
}

/// A login attempt.
#[derive(Serialize)]
pub struct LoginRecord<'a> {
    /// The connection.
    pub session: &'a str,
    /// ftp | ftps | sftp
    pub protocol: Protocol,
    /// The name the client gave.
    pub user: &'a str,
    /// Client address and port.
    pub remote_addr: SocketAddr,
    /// password | publickey
    pub method: &'a str,
    /// Whether it was accepted.
    pub success: bool,
}

/// One upload, however it ended.
#[derive(Serialize)]
pub struct TransferRecord<'a> {
    /// The connection.
    pub session: &'a str,
    /// ftp | ftps | sftp
    pub protocol: Protocol,
    /// Who uploaded.
    pub user: &'a str,
    /// Client address and port.
    pub remote_addr: SocketAddr,
    /// The path as the client named it.
    pub path: &'a str,
    /// The object key.
    pub key: &'a str,
    /// Bytes received.
    pub size: u64,
    /// SHA-256 of the content (completed uploads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<&'a str>,
    /// From the start of the upload to its end.
    #[serde(serialize_with = "millis", rename = "duration_ms")]
    pub duration: Duration,
    /// completed | aborted | failed | rejected
    pub outcome: &'a str,
    /// Why it did not complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One call of the admin API that acted, or that carried a wrong token.
#[derive(Serialize)]
pub struct AdminRecord<'a> {
    /// Who called: the caller's address and port.
    pub caller: SocketAddr,
    /// The action (route): close_session, retry_outbox, lift_ban, reload, …
    pub action: &'a str,
    /// What it acted on: a session id, an outbox id, an address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
    /// The HTTP status answered.
    pub status: u16,
    /// ok | unauthorized | invalid | not_found | conflict | error
    pub result: &'a str,
    /// Why it did not succeed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    record: &'a str,
    at: String,
    #[serde(flatten)]
    fields: &'a T,
}

/// A new id for a connection (UUIDv7: unique and time-ordered).
pub fn new_session_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Audit {
    /// Appends to `path` (created when missing).
    pub fn open(path: &Path) -> std::io::Result<Audit> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Audit {
            file: Some(Arc::new(Mutex::new(file))),
        })
    }

    /// The default file inside `data_dir`.
    pub fn default_path(data_dir: &Path) -> PathBuf {
        data_dir.join("audit.jsonl")
    }

    /// Records a login attempt.
    pub fn login(&self, record: &LoginRecord<'_>) {
        self.write("login", record);
    }

    /// Records the end of an upload.
    pub fn transfer(&self, record: &TransferRecord<'_>) {
        self.write("transfer", record);
    }

    /// Records an admin API action.
    pub fn admin(&self, record: &AdminRecord<'_>) {
        self.write("admin", record);
    }

    fn write<T: Serialize>(&self, kind: &str, fields: &T) {
        let line = Line {
            record: kind,
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            fields,
        };
        let Ok(mut text) = serde_json::to_string(&line) else {
            return;
        };
        tracing::info!(target: "audit", "{text}");
        if let Some(file) = &self.file {
            text.push('\n');
            // One write per record: lines from concurrent sessions never interleave.
            let written = file
                .lock()
                .map_err(|_| std::io::Error::other("audit lock poisoned"))
                .and_then(|mut f| f.write_all(text.as_bytes()));
            if let Err(e) = written {
                tracing::error!(error = %e, "cannot write the audit file");
            }
        }
    }
}
