//! `[auth.http]`: the platform decides the logins of users it owns. Each login of a user not
//! in `[[users]]` is POSTed to the platform, whose answer may set the home, permissions,
//! metadata and limits. Allowed logins are cached briefly; a platform that is down, slow or
//! answers nonsense refuses the login — it never opens one.

use super::{AuthError, User};
use crate::config::{HttpAuthConfig, Permission};
use crate::metrics::{Metrics, Protocol};
use parking_lot::Mutex;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cached logins kept before expired ones are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// What the client proved.
#[derive(Debug, Clone, Copy)]
pub enum Secret<'a> {
    /// A password.
    Password(&'a str),
    /// An SSH public key whose signature checked out.
    Key(&'a russh::keys::PublicKey),
}

/// The request body.
#[derive(Serialize)]
struct AuthRequest<'a> {
    username: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key_fingerprint: Option<String>,
    protocol: &'a str,
    remote_ip: String,
}

/// A 2xx answer: who the user is here.
#[derive(Deserialize)]
struct AuthAnswer {
    home: Option<String>,
    #[serde(default)]
    permissions: Option<Vec<String>>,
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    max_file_size: Option<u64>,
    #[serde(default)]
    allowed_extensions: Vec<String>,
    #[serde(default)]
    quota_bytes: Option<u64>,
    #[serde(default)]
    quota_files: Option<u64>,
}

/// An allowed login and when it stops counting.
type CachedLogin = (Instant, Arc<User>);

/// The connection to the platform's auth endpoint.
pub struct HttpAuth {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], CachedLogin>>,
    metrics: Metrics,
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAuth").field("url", &self.url).finish()
    }
}

/// The `[auth.http]` HTTP client cannot be built (no usable TLS roots or backend).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the auth.http client: {0}")]
pub struct HttpAuthSetupError(#[source] reqwest::Error);

impl HttpAuth {
    /// A client for `cfg` (already validated by the config loader).
    pub fn new(cfg: &HttpAuthConfig, metrics: Metrics) -> Result<HttpAuth, HttpAuthSetupError> {
        let client = crate::outbound::client(cfg.timeout).map_err(HttpAuthSetupError)?;
        let headers = crate::outbound::header_map(&cfg.headers);
        Ok(HttpAuth {
            client,
            url: cfg.url.clone(),
            headers,
            ttl: cfg.cache_ttl,
            cache: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Asks the platform (or the cache) whether `username` may log in with `secret`.
    pub async fn authenticate(
        &self,
        username: &str,
        secret: Secret<'_>,
        protocol: Protocol,
        ip: IpAddr,
    ) -> Result<Arc<User>, AuthError> {
        let ip = ip.to_canonical();
        let cache_key = cache_key(username, secret, protocol, ip);
        if let Some(user) = self.cached(&cache_key) {
            self.count("cached");
            return Ok(user);
        }
        let (password, public_key, public_key_fingerprint) = match secret {
            Secret::Password(p) => (Some(p), None, None),
            Secret::Key(k) => (
                None,
                k.to_openssh().ok(),
                Some(k.fingerprint(russh::keys::HashAlg::Sha256).to_string()),
            ),
        };
        let body = AuthRequest {
            username,
            password,
            public_key,
            public_key_fingerprint,
            protocol: protocol.as_str(),
            remote_ip: ip.to_string(),
        };
        let response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .json(&body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return Err(self.unavailable(format!("request failed: {e}"))),
        };
        let status = response.status();
        if matches!(status.as_u16(), 401 | 403 | 404) {
            self.count("refused");
            return Err(AuthError::BadCredentials);
        }
        if !status.is_success() {
            return Err(self.unavailable(format!("answered {status}")));
        }
        let answer: AuthAnswer = match response.json().await {
            Ok(a) => a,
            Err(e) => return Err(self.unavailable(format!("answer is not the expected JSON: {e}"))),
        };
        let user = match user_from(username, answer) {
            Ok(u) => Arc::new(u),
            Err(why) => return Err(self.unavailable(why)),
        };
        self.count("allowed");
        if !self.ttl.is_zero() {
            let mut cache = self.cache.lock();
            let now = Instant::now();
            if cache.len() > PRUNE_ABOVE {
                cache.retain(|_, (expires, _)| *expires > now);
            }
            cache.insert(cache_key, (now + self.ttl, user.clone()));
        }
        Ok(user)
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Arc<User>> {
        let cache = self.cache.lock();
        cache
            .get(key)
            .filter(|(expires, _)| *expires > Instant::now())
            .map(|(_, user)| user.clone())
    }

    fn unavailable(&self, why: String) -> AuthError {
        self.count("error");
        tracing::error!(url = %self.url, "auth.http: {why}; the login is refused");
        AuthError::ServiceUnavailable
    }

    fn count(&self, result: &str) {
        self.metrics
            .auth_http_requests_total
            .with_label_values(&[result])
            .inc();
    }
}

/// Same user, secret, protocol and address: same answer, within the TTL. Hashed so the
/// cache holds no password.
fn cache_key(username: &str, secret: Secret<'_>, protocol: Protocol, ip: IpAddr) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [username, protocol.as_str(), &ip.to_string()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    match secret {
        Secret::Password(p) => {
            h.update(b"password\0");
            h.update(p.as_bytes());
        }
        Secret::Key(k) => {
            h.update(b"key\0");
            h.update(k.to_openssh().unwrap_or_default().as_bytes());
        }
    }
    h.finalize().into()
}

/// The user an answer describes, or why the answer cannot be used (then the login fails).
fn user_from(username: &str, answer: AuthAnswer) -> Result<User, String> {
    let home = answer
        .home
        .ok_or("the answer has no \"home\" (the user's key prefix; \"\" for the whole bucket)")?;
    let home = home.trim_start_matches('/').to_string();
    if home.split('/').any(|s| s == "..") || home.chars().any(char::is_control) {
        return Err(format!("home {home:?} is not a usable key prefix"));
    }
    let home = if home.is_empty() || home.ends_with('/') {
        home
    } else {
        format!("{home}/")
    };
    let permissions = match answer.permissions {
        None => HashSet::from([Permission::Upload, Permission::List]),
        Some(names) => names
            .iter()
            .map(|n| {
                n.parse::<Permission>()
                    .map_err(|()| format!("unknown permission {n:?}"))
            })
            .collect::<Result<_, _>>()?,
    };
    let allowed_extensions = answer
        .allowed_extensions
        .iter()
        .map(|e| format!(".{}", e.trim().trim_start_matches('.').to_lowercase()))
        .collect();
    Ok(User {
        name: username.to_string(),
        home,
        permissions,
        metadata: answer.metadata,
        public_keys: Vec::new(),
        allowed_ips: Vec::new(),
        max_file_size: answer.max_file_size,
        allowed_extensions,
        quota_bytes: answer.quota_bytes,
        quota_files: answer.quota_files,
        password_hash: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: &str) -> AuthAnswer {
        serde_json::from_str(json).expect("json")
    }

    #[test]
    fn answers_become_users_or_refusals() {
        let u = user_from(
            "agency",
            answer(r#"{"home": "/tenants/7", "permissions": ["upload", "list", "rename"], "metadata": {"tenant": 7}}"#),
        )
        .expect("user");
        assert_eq!(u.home, "tenants/7/");
        assert!(u.may(Permission::Rename) && !u.may(Permission::Delete));
        assert_eq!(u.metadata["tenant"], 7);
        let u = user_from("a", answer(r#"{"home": ""}"#)).expect("whole bucket, on purpose");
        assert!(
            u.may(Permission::Upload) && u.may(Permission::List) && !u.may(Permission::Download)
        );
        assert!(user_from("a", answer(r#"{}"#)).is_err(), "no home: refused");
        assert!(user_from("a", answer(r#"{"home": "x/../y"}"#)).is_err());
        assert!(user_from("a", answer(r#"{"home": "x", "permissions": ["root"]}"#)).is_err());
    }
}
