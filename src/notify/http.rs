//! One completion call: the POST, its signature headers, the classification of the answer,
//! and retries with exponential backoff and full jitter.

use super::NotifyError;
use super::outbox::{PendingEntry, State};
use crate::config::NotifyConfig;
use crate::metrics::Metrics;
use base64::Engine;
use hmac::{KeyInit, Mac};
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// First retry waits up to this long; each further retry doubles it.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Completions the API refused for good, kept for an operator.
const FAILED_FILE: &str = "notify-failed.jsonl";

/// What an answer means for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// 2xx.
    Delivered,
    /// 409: the API already has it.
    Duplicate,
    /// 408, 429, 5xx, network errors: try again, after `Retry-After` when given.
    Retry(Option<Duration>),
    /// Any other 4xx: keep for an operator.
    Permanent,
}

/// Classifies an HTTP status (and its `Retry-After`) per the contract.
pub fn classify(status: StatusCode, retry_after: Option<Duration>) -> Classification {
    match status.as_u16() {
        200..=299 => Classification::Delivered,
        409 => Classification::Duplicate,
        408 | 429 | 500..=599 => Classification::Retry(retry_after),
        _ => Classification::Permanent,
    }
}

/// Sends completions to one URL.
pub struct Sender {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    signing_key: Option<Vec<u8>>,
    max_backoff: Duration,
    failed_path: PathBuf,
}

impl Sender {
    /// Builds the HTTP client with the configured timeout and headers.
    pub fn new(cfg: &NotifyConfig, url: String, data_dir: &Path) -> Result<Sender, NotifyError> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("ingest-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifyError::Client(e.to_string()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            // Validated with the config.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(n, v);
            }
        }
        Ok(Sender {
            client,
            url,
            headers,
            signing_key: cfg.signing_secret.clone(),
            max_backoff: cfg.max_backoff,
            failed_path: data_dir.join(FAILED_FILE),
        })
    }

    /// Delivers until the API accepts or refuses for good; returns how it ended, after how
    /// many attempts, and the refusal.
    pub async fn deliver(
        &self,
        completion: &PendingEntry,
        metrics: &Metrics,
    ) -> (State, u32, Option<String>) {
        let body = &completion.body;
        let mut attempt: u32 = 0;
        loop {
            let started = Instant::now();
            let outcome = self.attempt(&completion.id, body).await;
            metrics
                .notification_duration_seconds
                .observe(started.elapsed().as_secs_f64());
            let class = match &outcome {
                Ok((status, retry_after)) => classify(*status, *retry_after),
                Err(_) => Classification::Retry(None),
            };
            match class {
                Classification::Delivered => {
                    metrics
                        .notifications_total
                        .with_label_values(&["delivered"])
                        .inc();
                    tracing::info!(id = %completion.id, key = %completion.key, attempts = attempt + 1, "completion delivered");
                    return (State::Delivered, attempt + 1, None);
                }
                Classification::Duplicate => {
                    metrics
                        .notifications_total
                        .with_label_values(&["duplicate"])
                        .inc();
                    tracing::info!(id = %completion.id, "completion already delivered (409)");
                    return (State::Delivered, attempt + 1, None);
                }
                Classification::Permanent => {
                    metrics
                        .notifications_total
                        .with_label_values(&["failed"])
                        .inc();
                    let status = outcome.as_ref().map(|(s, _)| s.as_u16()).unwrap_or(0);
                    tracing::error!(id = %completion.id, status, file = %self.failed_path.display(),
                        "the ingest API refused the completion; kept for an operator");
                    self.keep_failed(body);
                    return (
                        State::Dead,
                        attempt + 1,
                        Some(format!("the API answered HTTP {status}")),
                    );
                }
                Classification::Retry(retry_after) => {
                    metrics
                        .notifications_total
                        .with_label_values(&["retried"])
                        .inc();
                    let wait = self.backoff(attempt, retry_after);
                    match &outcome {
                        Ok((status, _)) => {
                            tracing::warn!(id = %completion.id, status = status.as_u16(), retry_in = ?wait, "completion call failed; retrying")
                        }
                        Err(e) => {
                            tracing::warn!(id = %completion.id, error = %e, retry_in = ?wait, "completion call failed; retrying")
                        }
                    }
                    tokio::time::sleep(wait).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    async fn attempt(
        &self,
        id: &str,
        body: &[u8],
    ) -> Result<(StatusCode, Option<Duration>), reqwest::Error> {
        let mut request = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", id);
        if let Some(key) = &self.signing_key {
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            request = request
                .header("webhook-id", id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", sign(key, id, timestamp, body));
        }
        let response = request.body(body.to_vec()).send().await?;
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        Ok((response.status(), retry_after))
    }

    /// Full-jitter exponential backoff, or the server's `Retry-After`, capped.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.max_backoff);
        }
        let ceiling = FIRST_BACKOFF
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_backoff);
        let millis = rand::thread_rng().gen_range(0..=ceiling.as_millis().max(1) as u64);
        Duration::from_millis(millis)
    }

    fn keep_failed(&self, body: &[u8]) {
        let result = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.failed_path)
            .and_then(|mut f| {
                f.write_all(body)?;
                f.write_all(b"\n")
            });
        if let Err(e) = result {
            tracing::error!(file = %self.failed_path.display(), error = %e, "cannot keep the refused completion");
        }
    }
}

/// `v1,<base64 HMAC-SHA256(id.timestamp.body)>` per Standard Webhooks.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// `Retry-After`: delay seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value.trim()).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_contract() {
        assert_eq!(classify(StatusCode::OK, None), Classification::Delivered);
        assert_eq!(
            classify(StatusCode::ACCEPTED, None),
            Classification::Delivered
        );
        assert_eq!(
            classify(StatusCode::CONFLICT, None),
            Classification::Duplicate
        );
        assert_eq!(
            classify(StatusCode::REQUEST_TIMEOUT, None),
            Classification::Retry(None)
        );
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(3))),
            Classification::Retry(Some(Duration::from_secs(3)))
        );
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, None),
            Classification::Retry(None)
        );
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, None),
            Classification::Permanent
        );
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, None),
            Classification::Permanent
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn standard_webhooks_signature() {
        // Test vector from the Standard Webhooks specification.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("base64");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
