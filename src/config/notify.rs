//! `[notify]`: the upload-complete API, and the connector (`[notify.auth]`,
//! `[notify.create]`, `[[notify.steps]]`) whose steps are checked in `connector` and `rules`.

use super::connector::{RawStep, StepConfig, TokenConfig};
use super::{Text, Validator};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::collections::BTreeMap;
use std::time::Duration;

/// `notify.timeout` when unset.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// `notify.progress_timeout` when unset.
pub const DEFAULT_PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// `notify.max_backoff` when unset.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);
/// `notify.max_age` when unset.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(72 * 3600);
/// `notify.concurrency` when unset.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// `notify.mode` when unset.
pub const DEFAULT_MODE: DeliveryMode = DeliveryMode::Async;
/// `notify.presign_ttl` when unset.
pub const DEFAULT_PRESIGN_TTL: Duration = Duration::from_secs(12 * 3600);

/// The longest presigned URL S3 signs (SigV4's limit).
const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// `[notify]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawNotify {
    url: Option<Text>,
    timeout: Option<Text>,
    headers: BTreeMap<String, String>,
    signing_secret: Option<Text>,
    max_backoff: Option<Text>,
    max_age: Option<Text>,
    concurrency: Option<Spanned<i64>>,
    mode: Option<Text>,
    sync_timeout: Option<Text>,
    presign_ttl: Option<Text>,
    progress_timeout: Option<Text>,
    auth: Option<RawStep>,
    create: Option<RawStep>,
    steps: Vec<RawStep>,
}

/// When the client hears success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Once the completion is durably queued (the default).
    Async,
    /// Once the connector's steps succeeded; a refusal reaches the client.
    Sync,
}

/// `[notify]`: the upload-complete API.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Where completions are POSTed; `None` writes only the event log.
    pub url: Option<String>,
    /// One request's deadline.
    pub timeout: Duration,
    /// Extra headers on every request.
    pub headers: BTreeMap<String, String>,
    /// Standard Webhooks secret (`whsec_…`), decoded.
    pub signing_secret: Option<Vec<u8>>,
    /// Longest wait between two retries.
    pub max_backoff: Duration,
    /// An entry undeliverable this long becomes a dead letter.
    pub max_age: Duration,
    /// Deliveries running at once.
    pub concurrency: usize,
    /// Whether the client's success waits for the connector.
    pub mode: DeliveryMode,
    /// In sync mode, how long a client waits for the connector before success is said
    /// on the strength of the durable outbox.
    pub sync_timeout: Duration,
    /// Lifetime of `presigned_get_url`.
    pub presign_ttl: Duration,
    /// A push step fails when no byte was accepted (or, after the last, no answer came) for
    /// this long; its whole duration is not limited.
    pub progress_timeout: Duration,
    /// How a token is obtained, renewed and shared (`auth.token` in templates).
    pub auth: Option<TokenConfig>,
    /// Runs when an upload starts, before any byte goes to S3.
    pub create: Option<StepConfig>,
    /// Run in order once the object is durable; empty: POST the completion to `url`.
    pub steps: Vec<StepConfig>,
}

impl NotifyConfig {
    /// Whether completions go anywhere beyond the event log.
    pub fn enabled(&self) -> bool {
        self.url.is_some() || !self.steps.is_empty()
    }
}

impl Validator<'_> {
    /// `[notify]` with its connector.
    pub(super) fn notify(&mut self, raw: RawNotify) -> NotifyConfig {
        let (url, url_at) = Self::text(raw.url, "");
        let url = if url.is_empty() {
            None
        } else {
            match url::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(url),
                _ => {
                    self.problem(
                        "notify.url",
                        url_at.as_ref(),
                        format!("{url:?} is not an http(s) URL; leave it empty to write completions only to the event log"),
                    );
                    None
                }
            }
        };
        let headers = self.literal_headers("notify.headers", raw.headers);
        let (secret, secret_at) = Self::text(raw.signing_secret, "");
        let signing_secret = if secret.is_empty() {
            None
        } else {
            match decode_webhook_secret(&secret) {
                Some(key) => Some(key),
                None => {
                    self.problem(
                        "notify.signing_secret",
                        secret_at.as_ref(),
                        "write \"whsec_\" followed by the base64 secret your platform gave you",
                    );
                    None
                }
            }
        };
        let concurrency = self.count(
            "notify.concurrency",
            raw.concurrency,
            1..=1024,
            DEFAULT_CONCURRENCY as i64,
        ) as usize;
        let mode_at = raw.mode;
        let mode = match mode_at.as_ref().map(|t| t.get_ref().as_str()) {
            None => DEFAULT_MODE,
            Some("async") => DeliveryMode::Async,
            Some("sync") => DeliveryMode::Sync,
            Some(other) => {
                self.problem(
                    "notify.mode",
                    mode_at.as_ref(),
                    format!("{other:?}: write \"async\" (success once queued) or \"sync\" (success once the API accepted)"),
                );
                DEFAULT_MODE
            }
        };
        let ttl_at = raw.presign_ttl.clone();
        let presign_ttl = self.duration("notify.presign_ttl", raw.presign_ttl, DEFAULT_PRESIGN_TTL);
        if presign_ttl.is_zero() || presign_ttl > MAX_PRESIGN_TTL {
            self.problem(
                "notify.presign_ttl",
                ttl_at.as_ref(),
                "S3 presigned URLs live between 1s and 7 days",
            );
        }
        let create = raw.create.and_then(|c| self.step("notify.create", c, true));
        let steps: Vec<StepConfig> = raw
            .steps
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| self.step(&format!("notify.steps[{i}]"), s, false))
            .collect();
        self.restarts(&steps);
        if create
            .iter()
            .flat_map(|c| &c.rules)
            .any(|r| r.restart.is_some())
        {
            self.problem(
                "notify.create.rules",
                None,
                "the create step cannot restart: the client is waiting",
            );
        }
        let auth = raw.auth.and_then(|a| self.token(a));
        if create.is_some() && steps.is_empty() && url.is_none() {
            self.problem(
                "notify.steps",
                None,
                "a connector with [notify.create] needs [[notify.steps]] (or notify.url) to run once the object is durable",
            );
        }
        if mode == DeliveryMode::Sync && url.is_none() && steps.is_empty() {
            self.problem(
                "notify.mode",
                mode_at.as_ref(),
                "sync mode waits for the API: set notify.url or [[notify.steps]]",
            );
        }
        let timeout = self.duration("notify.timeout", raw.timeout, DEFAULT_TIMEOUT);
        let progress_at = raw.progress_timeout.clone();
        let progress_timeout = self.duration(
            "notify.progress_timeout",
            raw.progress_timeout,
            DEFAULT_PROGRESS_TIMEOUT,
        );
        if progress_timeout < Duration::from_secs(1) {
            self.problem(
                "notify.progress_timeout",
                progress_at.as_ref(),
                "at least 1s: a push that may not pause for a second would be cut by any hiccup",
            );
        }
        NotifyConfig {
            url,
            timeout,
            headers,
            signing_secret,
            max_backoff: self.duration("notify.max_backoff", raw.max_backoff, DEFAULT_MAX_BACKOFF),
            max_age: self.duration("notify.max_age", raw.max_age, DEFAULT_MAX_AGE),
            concurrency,
            mode,
            sync_timeout: self.duration("notify.sync_timeout", raw.sync_timeout, timeout),
            presign_ttl,
            progress_timeout,
            auth,
            create,
            steps,
        }
    }
}

/// "whsec_<base64>" → key bytes.
fn decode_webhook_secret(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let b64 = secret.strip_prefix("whsec_")?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::super::StepBody;
    use super::super::test_support::parse;
    use super::*;

    #[test]
    fn connector_mistakes_are_config_errors_with_their_keys() {
        let err = parse(
            r#"
[notify]
mode = "eventually"
concurrency = 0
presign_ttl = "30d"
[notify.create]
url = "https://api.example.com/{{ unclosed"
object = true
[[notify.steps]]
method = "FETCH ME"
url = "https://api.example.com/x"
json = "{}"
form = { a = "b" }
[[notify.steps]]
url = "https://api.example.com/y"
key = "nope"
rules = [ { status = "2x9", outcome = "delivered" }, { body = "(", outcome = "retry" }, { outcome = "maybe" } ]
"#,
        )
        .unwrap_err()
        .to_string();
        for key in [
            "notify.mode",
            "notify.concurrency",
            "notify.presign_ttl",
            "notify.create.url",
            "notify.create (",
            "notify.steps[0].method",
            "notify.steps[0] (",
            "notify.steps[1].key",
            "notify.steps[1].rules[0].status",
            "notify.steps[1].rules[1].body",
            "notify.steps[1].rules[2].outcome",
        ] {
            assert!(text_has(&err, key), "{key} missing in:\n{err}");
        }
    }

    #[test]
    fn token_parts_restart_and_when_mistakes_are_config_errors() {
        let err = parse(
            r#"
[notify]
progress_timeout = "0s"
[notify.auth]
url = "https://sso.example.com/token"
ttl = "1s"
object = true
[[notify.steps]]
name = "first"
url = "https://api.example.com/a"
when = "size >"
token = "x"
rules = [ { status = "403", outcome = "restart", step = "later" }, { outcome = "restart" } ]
[[notify.steps]]
name = "later"
url = "https://api.example.com/b"
parts = { size = "1MiB" }
"#,
        )
        .unwrap_err()
        .to_string();
        for key in [
            "notify.progress_timeout",
            "notify.auth.ttl",
            "notify.auth (",
            "notify.steps[0].when",
            "notify.steps[0].token",
            "notify.steps[0].rules[1].step",
            "notify.steps[1].parts.size",
            "notify.steps[1].parts.url",
        ] {
            assert!(text_has(&err, key), "{key} missing in:\n{err}");
        }
        let err = parse(
            "[[notify.steps]]\nname = \"a\"\nurl = \"https://x.example/a\"\nrules = [{ outcome = \"restart\", step = \"b\" }]\n[[notify.steps]]\nname = \"b\"\nurl = \"https://x.example/b\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("notify.steps[0].rules") && err.contains("not this step or one before it"),
            "{err}"
        );
    }

    fn text_has(text: &str, key: &str) -> bool {
        let key = key.trim_end_matches(" (");
        text.lines().any(|l| {
            l.trim_start_matches("  - ")
                .strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with(':'))
        })
    }

    #[test]
    fn a_connector_without_url_is_enabled_by_its_steps() {
        let c = parse("[notify]\n[[notify.steps]]\nurl = \"https://a.example/{{ id }}\"\n")
            .expect("valid");
        assert!(c.notify.enabled());
        assert_eq!(c.notify.steps[0].name, "complete");
        assert!(matches!(c.notify.steps[0].body, StepBody::Completion));
        assert_eq!(c.notify.concurrency, 8);
        assert_eq!(c.notify.max_age, Duration::from_secs(72 * 3600));
        assert_eq!(c.notify.mode, DeliveryMode::Async);
    }
}
