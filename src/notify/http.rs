//! HTTP details shared by every step: the contract's classification of a status, the
//! Standard Webhooks signature, `Retry-After`, and the full-jitter backoff.

use crate::config::RuleOutcome;
use base64::Engine;
use hmac::{KeyInit, Mac};
use rand::Rng;
use reqwest::StatusCode;
use std::time::{Duration, SystemTime};

/// First retry waits up to this long; each further retry doubles it.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Classifies an HTTP status per the contract: 2xx delivered, 409 duplicate, 408/429/5xx
/// retry, any other status permanent.
pub fn classify(status: StatusCode) -> RuleOutcome {
    match status.as_u16() {
        200..=299 => RuleOutcome::Delivered,
        409 => RuleOutcome::Duplicate,
        408 | 429 | 500..=599 => RuleOutcome::Retry,
        _ => RuleOutcome::Permanent,
    }
}

/// Full-jitter exponential backoff after `attempt` failures, or the server's
/// `Retry-After`, capped at `max`.
pub fn backoff(attempt: u32, retry_after: Option<Duration>, max: Duration) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(max);
    }
    let ceiling = FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.min(20))
        .min(max);
    let millis = rand::thread_rng().gen_range(0..=ceiling.as_millis().max(1) as u64);
    Duration::from_millis(millis)
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
pub fn parse_retry_after(value: &str) -> Option<Duration> {
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
        assert_eq!(classify(StatusCode::OK), RuleOutcome::Delivered);
        assert_eq!(classify(StatusCode::ACCEPTED), RuleOutcome::Delivered);
        assert_eq!(classify(StatusCode::CONFLICT), RuleOutcome::Duplicate);
        assert_eq!(classify(StatusCode::REQUEST_TIMEOUT), RuleOutcome::Retry);
        assert_eq!(classify(StatusCode::TOO_MANY_REQUESTS), RuleOutcome::Retry);
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE),
            RuleOutcome::Retry
        );
        assert_eq!(classify(StatusCode::BAD_REQUEST), RuleOutcome::Permanent);
        assert_eq!(classify(StatusCode::UNAUTHORIZED), RuleOutcome::Permanent);
    }

    #[test]
    fn backoff_is_jittered_capped_and_honours_retry_after() {
        let max = Duration::from_secs(5);
        for attempt in 0..30 {
            let wait = backoff(attempt, None, max);
            assert!(wait <= max.min(FIRST_BACKOFF * (1 << attempt.min(20))));
        }
        assert_eq!(
            backoff(3, Some(Duration::from_secs(2)), max),
            Duration::from_secs(2)
        );
        assert_eq!(backoff(3, Some(Duration::from_secs(60)), max), max);
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
