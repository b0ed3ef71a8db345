//! `[[users]]`: the accounts defined in the file, with what each may do.

use super::{Text, Validator};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;

/// `permissions` of a user when unset.
pub const DEFAULT_PERMISSIONS: [Permission; 2] = [Permission::Upload, Permission::List];

/// One `[[users]]` entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawUser {
    username: Option<Text>,
    password_hash: Option<Text>,
    public_keys: Vec<Text>,
    home: Option<Text>,
    permissions: Option<Vec<Text>>,
    metadata: serde_json::Map<String, serde_json::Value>,
    notify: RawUserNotify,
    allowed_ips: Option<Vec<Text>>,
    max_file_size: Option<Text>,
    allowed_extensions: Option<Vec<Text>>,
    quota_bytes: Option<Text>,
    quota_files: Option<Spanned<i64>>,
}

/// `[users.notify]` as written: one user's additions to every connector request.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawUserNotify {
    headers: BTreeMap<String, String>,
    vars: BTreeMap<String, String>,
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

/// `[users.notify]`: one tenant's additions to every connector request.
#[derive(Debug, Clone, Default)]
pub struct UserNotifyConfig {
    /// Headers over the step's and `notify.headers`.
    pub headers: BTreeMap<String, String>,
    /// Template variables under `vars.`.
    pub vars: BTreeMap<String, String>,
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

impl Validator<'_> {
    /// Every `[[users]]` entry; names must be unique.
    pub(super) fn users(&mut self, raw: Vec<RawUser>) -> Vec<UserConfig> {
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
                    permissions.extend(DEFAULT_PERMISSIONS);
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

    /// A user's `[users.notify]`.
    fn user_notify(&mut self, key: &str, raw: RawUserNotify) -> UserNotifyConfig {
        let headers = self.literal_headers(&format!("{key}.headers"), raw.headers);
        let vars = raw.vars.into_iter().collect();
        UserNotifyConfig { headers, vars }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::*;

    #[test]
    fn home_is_normalised() {
        assert_eq!(normalize_home("/alice//x/").as_deref(), Some("alice/x/"));
        assert_eq!(normalize_home("").as_deref(), Some(""));
        assert_eq!(normalize_home("a/../b"), None);
    }

    #[test]
    fn permissions_read_and_print_as_written() {
        for (name, p) in Permission::ALL {
            assert_eq!(name.parse::<Permission>(), Ok(p));
            assert_eq!(p.to_string(), name);
        }
        assert!("fly".parse::<Permission>().is_err());
    }

    #[test]
    fn users_are_checked_and_take_the_named_defaults() {
        let c = parse("[[users]]\nusername = \"a\"\npublic_keys = [\"ssh-ed25519 AAAA\"]\nallowed_extensions = [\"MXF\", \".mp4\"]\n[users.notify]\nvars = { to = \"desk\" }\n")
            .expect("valid");
        let u = &c.users[0];
        assert_eq!(u.permissions, HashSet::from(DEFAULT_PERMISSIONS));
        assert_eq!(u.allowed_extensions, [".mxf", ".mp4"]);
        assert_eq!(u.notify.vars["to"], "desk");
        assert_eq!(
            (u.max_file_size, u.quota_bytes, u.quota_files),
            (None, None, None)
        );
        let err = parse("[[users]]\nusername = \"a\"\n[[users]]\nusername = \"a\"\npassword_hash = \"x\"\nquota_files = -1\n")
            .unwrap_err()
            .to_string();
        for expected in [
            "users[0].password_hash (line 2): the user has neither",
            "users[1].username (line 4): \"a\" is defined twice",
            "users[1].password_hash (line 5): not a PHC hash string",
            "users[1].quota_files (line 6): must be between 0 and",
        ] {
            assert!(err.contains(expected), "{expected} missing in {err}");
        }
    }
}
