//! `[auth]` and `[auth.http]`: who decides logins besides `[[users]]`.

use super::{Text, Validator};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// `auth.http.timeout` when unset.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// `auth.http.cache_ttl` when unset.
pub const DEFAULT_HTTP_CACHE_TTL: Duration = Duration::from_secs(60);

/// `[auth]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawAuth {
    http: Option<RawAuthHttp>,
}

/// `[auth.http]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawAuthHttp {
    url: Option<Text>,
    timeout: Option<Text>,
    cache_ttl: Option<Text>,
    headers: BTreeMap<String, String>,
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

impl Validator<'_> {
    /// `[auth]`: the HTTP endpoint, when `[auth.http]` is there.
    pub(super) fn auth(&mut self, raw: RawAuth) -> AuthConfig {
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
                timeout: self.duration("auth.http.timeout", raw.timeout, DEFAULT_HTTP_TIMEOUT),
                cache_ttl: self.duration(
                    "auth.http.cache_ttl",
                    raw.cache_ttl,
                    DEFAULT_HTTP_CACHE_TTL,
                ),
                headers: self.literal_headers("auth.http.headers", raw.headers),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::*;

    #[test]
    fn http_auth_needs_a_url_and_takes_the_named_defaults() {
        assert!(parse("").expect("valid").auth.http.is_none());
        let c = parse("[auth.http]\nurl = \"https://auth.example.com/login\"\n").expect("valid");
        let http = c.auth.http.expect("configured");
        assert_eq!(http.timeout, DEFAULT_HTTP_TIMEOUT);
        assert_eq!(http.cache_ttl, DEFAULT_HTTP_CACHE_TTL);
        let err = parse("[auth.http]\ntimeout = \"1s\"\nheaders = { \"bad name\" = \"x\" }\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth.http.url: \"\" is not an http(s) URL")
                && err.contains("auth.http.headers.bad name"),
            "{err}"
        );
    }
}
