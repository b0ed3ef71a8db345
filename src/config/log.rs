//! `[log]`: what the process writes about itself.

use super::{Text, Validator};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `log.level` when unset.
pub const DEFAULT_LEVEL: &str = "info";
/// `log.format` when unset.
pub const DEFAULT_FORMAT: LogFormat = LogFormat::Text;
/// `log.audit_file` when unset, relative to `server.data_dir`.
pub const DEFAULT_AUDIT_FILE: &str = "audit.jsonl";

/// `[log]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawLog {
    level: Option<Text>,
    format: Option<Text>,
    audit_file: Option<Text>,
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

impl Validator<'_> {
    /// `[log]`; the audit file lives in `data_dir`.
    pub(super) fn log(&mut self, raw: RawLog, data_dir: &Path) -> LogConfig {
        let (level, level_at) = Self::text(raw.level, DEFAULT_LEVEL);
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            self.problem(
                "log.level",
                level_at.as_ref(),
                format!("{level:?} is not a log filter; write e.g. \"info\", \"debug\" or \"info,ingest_bridge::sftp=debug\""),
            );
        }
        let format = match raw.format {
            None => DEFAULT_FORMAT,
            Some(t) => match t.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    self.problem(
                        "log.format",
                        Some(&t),
                        format!("{other:?}: write \"text\" or \"json\""),
                    );
                    DEFAULT_FORMAT
                }
            },
        };
        let audit_file = match raw.audit_file.map(Text::into_inner) {
            None => Some(data_dir.join(DEFAULT_AUDIT_FILE)),
            Some(path) if path.is_empty() => None,
            Some(path) => Some(data_dir.join(path)),
        };
        LogConfig {
            level,
            format,
            audit_file,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::*;

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
}
