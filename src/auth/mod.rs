//! Who may log in, and what they may touch: users, password verification, and the
//! confinement of every client path to the user's `home` prefix.

mod http;
mod path;

pub use http::{HttpAuth, HttpAuthSetupError, Secret};
pub use path::{PathError, VirtualPath};

use crate::config::{Permission, UserConfig};
use arc_swap::ArcSwap;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A configured user, shared by every session it opens.
#[derive(Debug)]
pub struct User {
    /// Login name.
    pub name: String,
    /// S3 key prefix the user sees as "/": "" or "dir/…/".
    pub home: String,
    /// What the user may do.
    pub permissions: HashSet<Permission>,
    /// Copied into every completion.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// OpenSSH public keys.
    pub public_keys: Vec<String>,
    /// Networks the user may log in from; empty: any.
    pub allowed_ips: Vec<ipnet::IpNet>,
    /// Largest file the user may upload.
    pub max_file_size: Option<u64>,
    /// File name endings the user may upload (".mp4"); empty: any.
    pub allowed_extensions: Vec<String>,
    /// Most bytes the user may store (`quota_bytes`).
    pub quota_bytes: Option<u64>,
    /// Most files the user may store (`quota_files`).
    pub quota_files: Option<u64>,
    password_hash: String,
}

impl User {
    /// Whether the user holds `permission`.
    pub fn may(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// Whether the user may log in from `ip` (`allowed_ips`).
    pub fn may_connect_from(&self, ip: std::net::IpAddr) -> bool {
        crate::defender::in_networks(&self.allowed_ips, ip)
    }

    /// Whether `key` is one of the user's `public_keys`.
    pub fn has_key(&self, key: &russh::keys::PublicKey) -> bool {
        self.public_keys.iter().any(|line| {
            russh::keys::PublicKey::from_openssh(line.trim())
                .is_ok_and(|allowed| allowed.key_data() == key.key_data())
        })
    }

    /// Whether a storage quota applies to the user.
    pub fn has_quota(&self) -> bool {
        self.quota_bytes.is_some() || self.quota_files.is_some()
    }

    /// Whether the user may upload a file named `file_name` (`allowed_extensions`).
    pub fn accepts_name(&self, file_name: &str) -> bool {
        let name = file_name.to_lowercase();
        self.allowed_extensions.is_empty()
            || self
                .allowed_extensions
                .iter()
                .any(|e| name.ends_with(e.as_str()))
    }

    /// The S3 key of a path inside the user's home.
    pub fn key_of(&self, path: &VirtualPath) -> String {
        format!("{}{}", self.home, path.relative())
    }
}

/// Why a login was refused. Deliberately says nothing about which part was wrong.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user or wrong password (indistinguishable to the client).
    #[error("invalid username or password")]
    BadCredentials,
    /// Right credentials, from an address outside the user's `allowed_ips`.
    #[error("the user may not log in from this address (allowed_ips)")]
    AddressNotAllowed,
    /// `[auth.http]` failed (down, slow, a bad answer): the login is refused, never opened.
    #[error("the login service (auth.http) is unavailable")]
    ServiceUnavailable,
}

impl AuthError {
    /// Whether the client tried wrong credentials (counts towards a ban), as opposed to
    /// the login service failing.
    pub fn is_bad_credentials(&self) -> bool {
        !matches!(self, AuthError::ServiceUnavailable)
    }
}

/// Decides logins: `[[users]]` first, then, for names not configured there, `[auth.http]`.
#[derive(Debug)]
pub struct Logins {
    /// Configured users (reloaded on SIGHUP).
    pub users: Arc<UserDirectory>,
    http: Option<HttpAuth>,
}

impl Logins {
    /// Local users, and the platform's auth endpoint when configured.
    pub fn new(users: Arc<UserDirectory>, http: Option<HttpAuth>) -> Logins {
        Logins { users, http }
    }

    /// Checks `secret` for `username` connecting from `ip` over `protocol`.
    pub async fn log_in(
        &self,
        username: &str,
        secret: Secret<'_>,
        protocol: crate::metrics::Protocol,
        ip: std::net::IpAddr,
    ) -> Result<Arc<User>, AuthError> {
        match (&self.http, self.users.get(username)) {
            (Some(http), None) => http.authenticate(username, secret, protocol, ip).await,
            _ => match secret {
                Secret::Password(p) => self.users.authenticate_password(username, p, ip).await,
                Secret::Key(k) => self.users.authenticate_key(username, k, ip),
            },
        }
    }

    /// Whether an offered SSH key could log `username` in (so a signature is worth asking
    /// for): a configured key, or any key of a user the platform decides on.
    pub fn may_accept_key(&self, username: &str, key: &russh::keys::PublicKey) -> bool {
        match self.users.get(username) {
            Some(user) => user.has_key(key),
            None => self.http.is_some(),
        }
    }
}

/// All configured users.
#[derive(Debug)]
pub struct UserDirectory {
    /// Swapped whole on reload; a session keeps the `User` it logged in with.
    users: ArcSwap<HashMap<String, Arc<User>>>,
    /// Verified against when the user is unknown, so both cases cost the same time.
    decoy_hash: String,
    /// Password checks at once: each argon2 verification takes 19 MiB and a core for tens
    /// of milliseconds, so a burst of logins queues here instead of growing memory.
    hashing: tokio::sync::Semaphore,
}

impl UserDirectory {
    /// Builds the directory from validated config.
    pub fn new(users: &[UserConfig]) -> UserDirectory {
        let decoy_hash = hash_password("decoy password for unknown users").unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        UserDirectory {
            users: ArcSwap::from_pointee(user_map(users)),
            decoy_hash,
            hashing: tokio::sync::Semaphore::new(cores),
        }
    }

    /// Lets `users` log in from now on (SIGHUP); sessions already open keep running.
    pub fn replace(&self, users: &[UserConfig]) {
        self.users.store(Arc::new(user_map(users)));
    }

    /// Looks a user up by name.
    pub fn get(&self, username: &str) -> Option<Arc<User>> {
        self.users.load().get(username).cloned()
    }

    /// Checks that `key` (its signature already verified) is one of the user's keys and
    /// that the user may log in from `from`.
    pub fn authenticate_key(
        &self,
        username: &str,
        key: &russh::keys::PublicKey,
        from: std::net::IpAddr,
    ) -> Result<Arc<User>, AuthError> {
        match self.get(username) {
            Some(u) if u.has_key(key) => from_allowed_address(u, from),
            _ => Err(AuthError::BadCredentials),
        }
    }

    /// Verifies a password (argon2, constant-time compare) off the async threads, one per
    /// core at a time, and that the user may log in from `from`.
    pub async fn authenticate_password(
        &self,
        username: &str,
        password: &str,
        from: std::net::IpAddr,
    ) -> Result<Arc<User>, AuthError> {
        let user = self.get(username);
        let hash = match &user {
            Some(u) if !u.password_hash.is_empty() => u.password_hash.clone(),
            _ => self.decoy_hash.clone(),
        };
        let password = password.to_string();
        let Ok(_permit) = self.hashing.acquire().await else {
            return Err(AuthError::BadCredentials);
        };
        let verified = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .unwrap_or(false);
        match user {
            Some(u) if verified && !u.password_hash.is_empty() => from_allowed_address(u, from),
            _ => Err(AuthError::BadCredentials),
        }
    }
}

/// A user whose credentials checked out, if `from` is in its `allowed_ips`.
fn from_allowed_address(user: Arc<User>, from: std::net::IpAddr) -> Result<Arc<User>, AuthError> {
    if user.may_connect_from(from) {
        Ok(user)
    } else {
        Err(AuthError::AddressNotAllowed)
    }
}

fn user_map(users: &[UserConfig]) -> HashMap<String, Arc<User>> {
    users
        .iter()
        .map(|u| {
            let user = User {
                name: u.username.clone(),
                home: u.home.clone(),
                permissions: u.permissions.clone(),
                metadata: u.metadata.clone(),
                public_keys: u.public_keys.clone(),
                allowed_ips: u.allowed_ips.clone(),
                max_file_size: u.max_file_size,
                allowed_extensions: u.allowed_extensions.clone(),
                quota_bytes: u.quota_bytes,
                quota_files: u.quota_files,
                password_hash: u.password_hash.clone(),
            };
            (u.username.clone(), Arc::new(user))
        })
        .collect()
}

/// Hashes a password into an argon2id PHC string with a random salt.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Checks a password against a PHC string; false for any malformed hash.
pub fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> UserDirectory {
        let hash = hash_password("secret").expect("hash");
        UserDirectory::new(&[UserConfig {
            username: "alice".into(),
            password_hash: hash,
            public_keys: vec![],
            home: "alice/".into(),
            permissions: [Permission::Upload].into(),
            metadata: Default::default(),
            notify: Default::default(),
            allowed_ips: vec!["10.0.0.0/8".parse().expect("net")],
            max_file_size: None,
            allowed_extensions: vec![".mp4".into()],
            quota_bytes: None,
            quota_files: None,
        }])
    }

    #[tokio::test]
    async fn passwords_and_allowed_addresses() {
        let dir = directory();
        let inside: std::net::IpAddr = "10.1.2.3".parse().expect("ip");
        let outside: std::net::IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(
            dir.authenticate_password("alice", "secret", inside)
                .await
                .is_ok()
        );
        assert!(
            dir.authenticate_password("alice", "wrong", inside)
                .await
                .is_err()
        );
        assert!(
            dir.authenticate_password("bob", "secret", inside)
                .await
                .is_err()
        );
        assert!(matches!(
            dir.authenticate_password("alice", "secret", outside).await,
            Err(AuthError::AddressNotAllowed)
        ));
    }

    #[test]
    fn hashes_are_argon2id() {
        let hash = hash_password("x").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&hash, "x"));
        assert!(!verify_password("garbage", "x"));
    }
}
