//! Outgoing HTTP, shared by the notify connector and `[auth.http]`: one way to build the
//! client and one way to turn configured headers into request headers.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::collections::BTreeMap;
use std::time::Duration;

/// A client whose every request ends after `timeout`, identifying itself as ingest-bridge.
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("ingest-bridge/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A client for connector steps: no overall deadline (each request sets its own, or is
/// watched for progress), and redirects followed only when `redirects` (Standard Webhooks:
/// a 3xx is a failure).
pub fn step_client(redirects: bool) -> reqwest::Result<reqwest::Client> {
    let policy = if redirects {
        reqwest::redirect::Policy::limited(10)
    } else {
        reqwest::redirect::Policy::none()
    };
    reqwest::Client::builder()
        .redirect(policy)
        .connect_timeout(Duration::from_secs(30))
        .user_agent(concat!("ingest-bridge/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Literal headers (validated with the config) as a `HeaderMap`.
pub fn header_map(headers: &BTreeMap<String, String>) -> HeaderMap {
    headers
        .iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_str(value).ok()?,
            ))
        })
        .collect()
}
