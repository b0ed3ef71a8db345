//! `[upload]`: how uploads behave beyond the byte stream.

use super::{Text, Validator};
use serde::Deserialize;

/// File names clients upload under before renaming them to the final name (WinSCP,
/// FileZilla, browsers, rsync-style tools).
pub const DEFAULT_TEMP_PATTERNS: &[&str] =
    &["*.filepart", "*.part", "*.tmp", ".~*", "*.crdownload"];
/// `upload.overwrite` when unset.
pub const DEFAULT_OVERWRITE: bool = true;
/// `upload.notify_on_rename` when unset.
pub const DEFAULT_NOTIFY_ON_RENAME: bool = true;

/// `[upload]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawUpload {
    temp_patterns: Option<Vec<Text>>,
    overwrite: Option<bool>,
    notify_on_rename: Option<bool>,
}

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
            overwrite: DEFAULT_OVERWRITE,
            notify_on_rename: DEFAULT_NOTIFY_ON_RENAME,
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

impl Validator<'_> {
    /// `[upload]`.
    pub(super) fn upload(&mut self, raw: RawUpload) -> UploadConfig {
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
            overwrite: raw.overwrite.unwrap_or(defaults.overwrite),
            notify_on_rename: raw.notify_on_rename.unwrap_or(defaults.notify_on_rename),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use std::time::Duration;

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
