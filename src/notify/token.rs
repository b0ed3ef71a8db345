//! `[notify.auth]`: credentials with a lifecycle. The token (OAuth2 client credentials, a
//! Kaltura session, …) is fetched when a step first needs it, shared by every delivery,
//! renewed shortly before it expires or as soon as a step says it was refused, and kept in
//! memory only: it never reaches the outbox, the event log or an error message.

use super::connector::{Call, Connector, StepOutcome};
use super::extract::Document;
use crate::config::{RuleOutcome, TokenConfig};
use parking_lot::Mutex;
use serde_json::Map;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Renew this long before expiry at most (a tenth of a short lifetime).
const RENEW_MARGIN: Duration = Duration::from_secs(60);

/// One token and when to stop using it.
#[derive(Debug, Clone)]
pub struct Token {
    /// The secret itself.
    pub value: String,
    /// Which fetch it came from (to forget only that one when it is refused).
    pub generation: u64,
    renew_at: Instant,
}

/// The connector's token, fetched one at a time.
pub struct Tokens {
    config: TokenConfig,
    current: Mutex<Option<Token>>,
    /// Held while fetching, so concurrent deliveries wait for one fetch instead of each
    /// starting its own.
    fetching: tokio::sync::Mutex<u64>,
}

impl Tokens {
    /// No token yet.
    pub fn new(config: TokenConfig) -> Tokens {
        Tokens {
            config,
            current: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(0),
        }
    }

    /// How tokens are requested.
    pub fn config(&self) -> &TokenConfig {
        &self.config
    }

    fn cached(&self) -> Option<Token> {
        let current = self.current.lock();
        current
            .as_ref()
            .filter(|t| Instant::now() < t.renew_at)
            .cloned()
    }

    /// The current token, or a new one from `fetch` (the token and, if the answer said, its
    /// lifetime; otherwise `ttl` applies).
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Token, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(String, Option<Duration>), String>>,
    {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let mut generation = self.fetching.lock().await;
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let (value, lifetime) = fetch().await?;
        let lifetime = lifetime.unwrap_or(self.config.ttl);
        let margin = (lifetime / 10).min(RENEW_MARGIN);
        *generation += 1;
        let token = Token {
            value,
            generation: *generation,
            renew_at: Instant::now() + lifetime.saturating_sub(margin),
        };
        *self.current.lock() = Some(token.clone());
        Ok(token)
    }

    /// Forgets the token of `generation` (the API refused it), unless a newer one replaced it.
    pub fn refused(&self, generation: u64) {
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|t| t.generation == generation) {
            *current = None;
        }
    }
}

impl Connector {
    /// The `[notify.auth]` token, fetched or renewed when needed; `None` without one.
    pub(super) async fn token(&self) -> Result<Option<Token>, String> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        tokens
            .get(|| self.fetch_token(tokens))
            .await
            .map(Some)
            .map_err(|e| format!("cannot obtain credentials ([notify.auth]): {e}"))
    }

    async fn fetch_token(&self, tokens: &Tokens) -> Result<(String, Option<Duration>), String> {
        let config = tokens.config();
        let ctx = Map::new();
        let call = Call {
            step: &config.step,
            prefix: "auth",
            ctx: &ctx,
            idempotency: "",
            completion_body: b"",
            object: None,
        };
        let (request, _) = self.build(call).await.map_err(|o| describe(&o))?;
        let answer = self.exchange(request, &config.step, None).await?;
        match self.classify(&config.step, &answer) {
            RuleOutcome::Delivered | RuleOutcome::Duplicate => {}
            _ => return Err(answer.message(&config.step)),
        }
        let doc = Document::parse(&answer.body);
        let token = doc
            .text(&config.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                format!(
                    "the answer (HTTP {}) has no token at {:?}",
                    answer.status.as_u16(),
                    config.token
                )
            })?;
        let lifetime = config
            .expires_in
            .as_deref()
            .and_then(|path| doc.get(path))
            .and_then(|v| lifetime(&v));
        Ok((token, lifetime))
    }
}

/// A step outcome as one line (why a token could not be had).
pub(super) fn describe(outcome: &StepOutcome) -> String {
    match outcome {
        StepOutcome::Refused { message } => message.clone(),
        StepOutcome::Retry { error, .. }
        | StepOutcome::Reauth { error }
        | StepOutcome::Restart { error, .. } => error.clone(),
        StepOutcome::Done { .. } | StepOutcome::Progress { .. } => "done".into(),
    }
}

/// A lifetime in seconds as the answer gives it: a number or a numeric string.
pub fn lifetime(value: &serde_json::Value) -> Option<Duration> {
    let seconds = match value {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (seconds.is_finite() && seconds > 0.0).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn tokens(ttl: Duration) -> Tokens {
        Tokens::new(TokenConfig {
            step: crate::config::StepConfig::plain(
                "auth",
                http::Method::POST,
                "https://sso.example.com/token",
                crate::config::StepBody::Empty,
            ),
            token: "access_token".into(),
            expires_in: None,
            ttl,
        })
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch_and_a_refusal_renews() {
        let tokens = Arc::new(tokens(Duration::from_secs(3600)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut waiting = Vec::new();
        for _ in 0..8 {
            let (tokens, fetches) = (tokens.clone(), fetches.clone());
            waiting.push(tokio::spawn(async move {
                tokens
                    .get(|| async move {
                        let n = fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok((format!("t{n}"), None))
                    })
                    .await
            }));
        }
        for w in waiting {
            assert_eq!(w.await.expect("task").expect("token").value, "t0");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let first = tokens.cached().expect("cached");
        tokens.refused(first.generation + 7); // an older token's refusal: kept
        assert!(tokens.cached().is_some());
        tokens.refused(first.generation);
        let next = tokens
            .get(|| async { Ok(("t1".to_string(), None)) })
            .await
            .expect("token");
        assert_eq!(next.value, "t1");
    }

    #[tokio::test]
    async fn tokens_are_renewed_before_they_expire() {
        let tokens = tokens(Duration::from_secs(3600));
        let short = tokens
            .get(|| async { Ok(("a".to_string(), Some(Duration::from_millis(200)))) })
            .await
            .expect("token");
        assert_eq!(short.value, "a");
        tokio::time::sleep(Duration::from_millis(190)).await;
        let renewed = tokens
            .get(|| async { Ok(("b".to_string(), None)) })
            .await
            .expect("token");
        assert_eq!(renewed.value, "b", "a tenth of the lifetime before it ends");
        assert_eq!(
            lifetime(&serde_json::json!(57600)),
            Some(Duration::from_secs(57600))
        );
        assert_eq!(
            lifetime(&serde_json::json!("300")),
            Some(Duration::from_secs(300))
        );
        assert_eq!(lifetime(&serde_json::json!(0)), None);
    }
}
