//! `[notify.create]` and `[[notify.steps]]`: a connector is configured, not coded. Each step
//! is one templated HTTP request (minijinja); this module checks every template, method,
//! header, rule and extraction path at load time so a typo is a config error with its key,
//! not a dead letter days later.

use super::Validator;
use super::raw::{RawParts, RawRule, RawStep, RawUserNotify};
use std::collections::BTreeMap;
use std::time::Duration;

/// S3's smallest part (but the last), and its largest.
const MIN_PART: u64 = 5 << 20;
const MAX_PART: u64 = 5 << 30;

/// One templated HTTP request.
#[derive(Debug, Clone)]
pub struct StepConfig {
    /// For logs, `outbox list` and the Idempotency-Key of steps before the last.
    pub name: String,
    /// HTTP method.
    pub method: http::Method,
    /// URL template.
    pub url: String,
    /// Header templates (over `notify.headers`).
    pub headers: BTreeMap<String, String>,
    /// What the request carries.
    pub body: StepBody,
    /// Response fields to keep: name → path (`a.b.0.c`) in the JSON or XML answer.
    pub extract: BTreeMap<String, String>,
    /// Path of the human-readable error in a refusal's body.
    pub message: String,
    /// Classification rules, tried in order before the contract's defaults.
    pub rules: Vec<RuleConfig>,
    /// `create` only: template of the object path (inside the user's home).
    pub key: Option<String>,
    /// A minijinja expression: the step runs only when it is true (`size > 5000000000`).
    pub when: Option<String>,
    /// Whether 3xx answers are followed (off: a redirect is a failure, per Standard Webhooks).
    pub follow_redirects: bool,
    /// Push the object part by part: this step's request then asks for each part's URL.
    pub parts: Option<PartsConfig>,
}

impl StepConfig {
    /// A step with only a name, method, URL template and body: no headers, extraction or
    /// rules, errors at `message` (the contract's default call; tests).
    pub fn plain(name: &str, method: http::Method, url: &str, body: StepBody) -> StepConfig {
        StepConfig {
            name: name.into(),
            method,
            url: url.into(),
            headers: BTreeMap::new(),
            body,
            extract: BTreeMap::new(),
            message: "message".into(),
            rules: Vec::new(),
            key: None,
            when: None,
            follow_redirects: false,
            parts: None,
        }
    }
}

/// `parts = { size, url, method, keep_header }`: how a step pushes the object in parts. The
/// step's own request is sent once per part (templates see `part_number`, `part_offset`,
/// `part_size`) and answers the URL the part's bytes go to; the header kept from each part's
/// answer (S3's `ETag`) is recorded, with the part, before the next part starts.
#[derive(Debug, Clone)]
pub struct PartsConfig {
    /// Bytes per part (the last may be smaller).
    pub size: u64,
    /// Path of the part's URL in the answer.
    pub url: String,
    /// Method the part's bytes go with.
    pub method: http::Method,
    /// Header of the part's answer that is kept (`etag` in the recorded parts).
    pub keep_header: String,
}

/// `[notify.auth]`: how the connector obtains a token, which templates see as `auth.token`.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// The token request.
    pub step: StepConfig,
    /// Path of the token in the answer (empty: the whole answer, e.g. a bare JSON string).
    pub token: String,
    /// Path of the token's lifetime in seconds in the answer, if it says.
    pub expires_in: Option<String>,
    /// Lifetime when the answer does not say.
    pub ttl: Duration,
}

/// The body of a step's request.
#[derive(Debug, Clone)]
pub enum StepBody {
    /// The contract's completion JSON (the default).
    Completion,
    /// No body.
    Empty,
    /// A JSON template (`Content-Type: application/json`).
    Json(String),
    /// A text template with its content type.
    Text {
        /// The template.
        template: String,
        /// `Content-Type`.
        content_type: String,
    },
    /// `application/x-www-form-urlencoded` fields (templates).
    Form(BTreeMap<String, String>),
    /// `multipart/form-data`: templated fields plus the object, streamed from S3, as a file part.
    Multipart {
        /// Text fields (templates).
        fields: BTreeMap<String, String>,
        /// Name of the file part.
        file_field: String,
        /// Template of the file part's file name.
        file_name: String,
    },
    /// The object's bytes, streamed from S3.
    Object,
}

impl StepBody {
    /// Whether the body is the stored object (not signable, streamed per attempt).
    pub fn carries_object(&self) -> bool {
        matches!(self, StepBody::Object | StepBody::Multipart { .. })
    }
}

/// Which responses a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// One status code.
    Exact(u16),
    /// A class: `2xx` is `Class(2)`.
    Class(u16),
}

impl StatusMatch {
    /// Whether `status` matches.
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Exact(s) => s == status,
            StatusMatch::Class(c) => status / 100 == c,
        }
    }
}

/// What a matching response means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOutcome {
    /// Accepted.
    Delivered,
    /// Already there.
    Duplicate,
    /// Try again later.
    Retry,
    /// Refused for good.
    Permanent,
    /// The credentials were refused: renew the `[notify.auth]` token and try again.
    Reauth,
    /// Go back to the rule's `step`, forgetting what it and later steps extracted.
    Restart,
}

/// One classification rule: status and/or a regex on the body.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    /// Statuses it applies to (all when `None`).
    pub status: Option<StatusMatch>,
    /// A regex the body must match (any body when `None`).
    pub body: Option<regex::Regex>,
    /// The classification.
    pub outcome: RuleOutcome,
    /// `restart` only: the step to go back to.
    pub restart: Option<String>,
}

/// When the client hears success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Once the completion is durably queued (the default).
    Async,
    /// Once the connector's steps succeeded; a refusal reaches the client.
    Sync,
}

/// `[users.notify]`: one tenant's additions to every connector request.
#[derive(Debug, Clone, Default)]
pub struct UserNotifyConfig {
    /// Headers over the step's and `notify.headers`.
    pub headers: BTreeMap<String, String>,
    /// Template variables under `vars.`.
    pub vars: BTreeMap<String, String>,
}

/// What `create` sends when it names no body: what is known when an upload starts.
const CREATE_DEFAULT_BODY: &str = r#"{"event": "upload.started", "id": {{ id | tojson }}, "protocol": {{ protocol | tojson }}, "username": {{ username | tojson }}, "path": {{ path | tojson }}, "bucket": {{ bucket | tojson }}, "key": {{ key | tojson }}, "metadata": {{ metadata | tojson }}}"#;

impl Validator<'_> {
    pub(super) fn step(&mut self, key: &str, raw: RawStep, is_create: bool) -> Option<StepConfig> {
        let before = self.problems.len();
        let name = raw.name.unwrap_or_else(|| {
            if is_create {
                "create".into()
            } else {
                "complete".into()
            }
        });
        let method_text = raw.method.unwrap_or_else(|| "POST".into());
        let method = match http::Method::from_bytes(method_text.to_ascii_uppercase().as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                self.problem(
                    &format!("{key}.method"),
                    None,
                    format!("{method_text:?} is not an HTTP method"),
                );
                http::Method::POST
            }
        };
        let url = match raw.url {
            Some(t) => t.into_inner(),
            None => {
                self.problem(
                    &format!("{key}.url"),
                    None,
                    "every step needs a url (a template, e.g. \"https://api.example.com/media\")",
                );
                String::new()
            }
        };
        self.template(&format!("{key}.url"), &url);
        let mut headers = BTreeMap::new();
        for (name, value) in raw.headers {
            let at = format!("{key}.headers.{name}");
            if http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.problem(&at, None, "not a valid HTTP header name");
            }
            self.template(&at, &value);
            headers.insert(name, value);
        }
        let mut body = self.step_body(
            key,
            &raw.json,
            &raw.body,
            raw.content_type,
            raw.form,
            raw.multipart,
            raw.file_field,
            raw.file_name,
            raw.object.unwrap_or(false),
        );
        if matches!(body, StepBody::Completion)
            && (is_create
                || matches!(
                    method,
                    http::Method::GET | http::Method::DELETE | http::Method::HEAD
                ))
        {
            // Nothing to complete yet (create), or a method that carries no body.
            body = if is_create {
                StepBody::Json(CREATE_DEFAULT_BODY.into())
            } else {
                StepBody::Empty
            };
        }
        let mut extract = BTreeMap::new();
        for (field, path) in raw.extract {
            if path.trim().is_empty() || field.is_empty() {
                self.problem(
                    &format!("{key}.extract.{field}"),
                    None,
                    "write field = \"path\", e.g. upload_url = \"data.uploadUrl\"",
                );
            }
            extract.insert(field, path);
        }
        let rules = raw
            .rules
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| self.rule(&format!("{key}.rules[{i}]"), r))
            .collect();
        let object_key = raw.key.inspect(|k| {
            let at = format!("{key}.key");
            if !is_create {
                self.problem(
                    &at,
                    None,
                    "only [notify.create] may set the object key (the object exists by the time later steps run)",
                );
            }
            self.template(&at, k);
        });
        if is_create && body.carries_object() {
            self.problem(
                key,
                None,
                "the create step runs before the object exists; it cannot send it",
            );
        }
        if let Some(when) = &raw.when {
            let env = minijinja::Environment::new();
            if let Err(e) = env.compile_expression(when) {
                self.problem(
                    &format!("{key}.when"),
                    None,
                    format!("expression error: {e}"),
                );
            }
            if is_create {
                self.problem(&format!("{key}.when"), None, "the create step always runs");
            }
        }
        let parts = raw.parts.map(|p| self.parts(&format!("{key}.parts"), p));
        if parts.is_some() && (is_create || body.carries_object()) {
            self.problem(
                &format!("{key}.parts"),
                None,
                "a parts step's own request asks for each part's URL: it sends no object, and create cannot push",
            );
        }
        for (field, given) in [
            ("token", raw.token.is_some()),
            ("expires_in", raw.expires_in.is_some()),
            ("ttl", raw.ttl.is_some()),
        ] {
            if given {
                self.problem(
                    &format!("{key}.{field}"),
                    None,
                    "only [notify.auth] has a token, expires_in or ttl",
                );
            }
        }
        if self.problems.len() > before {
            return None;
        }
        Some(StepConfig {
            name,
            method,
            url,
            headers,
            body,
            extract,
            message: raw.message.unwrap_or_else(|| "message".into()),
            rules,
            key: object_key,
            when: raw.when,
            follow_redirects: raw.follow_redirects.unwrap_or(false),
            parts,
        })
    }

    fn parts(&mut self, key: &str, raw: RawParts) -> PartsConfig {
        let size_at = raw.size.clone();
        let size = self.size(&format!("{key}.size"), raw.size, 100 << 20);
        if !(MIN_PART..=MAX_PART).contains(&size) {
            self.problem(
                &format!("{key}.size"),
                size_at.as_ref(),
                "parts go to S3: between 5MiB and 5GiB",
            );
        }
        let method_text = raw.method.unwrap_or_else(|| "PUT".into());
        let method = http::Method::from_bytes(method_text.to_ascii_uppercase().as_bytes())
            .unwrap_or_else(|_| {
                self.problem(
                    &format!("{key}.method"),
                    None,
                    format!("{method_text:?} is not an HTTP method"),
                );
                http::Method::PUT
            });
        PartsConfig {
            size,
            url: raw.url.unwrap_or_else(|| {
                self.problem(
                    &format!("{key}.url"),
                    None,
                    "where the part's URL is in the answer, e.g. url = \"uploadUrl\"",
                );
                String::new()
            }),
            method,
            keep_header: raw.keep_header.unwrap_or_else(|| "ETag".into()),
        }
    }

    /// `[notify.auth]`: a step whose answer carries a token.
    pub(super) fn token(&mut self, mut raw: RawStep) -> Option<TokenConfig> {
        let key = "notify.auth";
        let token = raw.token.take().unwrap_or_else(|| "access_token".into());
        let expires_in = raw
            .expires_in
            .take()
            .or_else(|| (token == "access_token").then(|| "expires_in".into()));
        let ttl_at = raw.ttl.clone();
        let ttl = self.duration(
            &format!("{key}.ttl"),
            raw.ttl.take(),
            Duration::from_secs(3600),
        );
        if ttl < Duration::from_secs(2) {
            self.problem(&format!("{key}.ttl"), ttl_at.as_ref(), "at least 2s");
        }
        let mut step = self.step(key, raw, false)?;
        if step.body.carries_object() || step.parts.is_some() || step.when.is_some() {
            self.problem(key, None, "a token request sends no object and always runs");
            return None;
        }
        if matches!(step.body, StepBody::Completion) {
            step.body = StepBody::Empty;
        }
        Some(TokenConfig {
            step,
            token,
            expires_in,
            ttl,
        })
    }

    /// Every restart rule goes back to a step at or before its own.
    pub(super) fn restarts(&mut self, steps: &[StepConfig]) {
        for (i, step) in steps.iter().enumerate() {
            for rule in &step.rules {
                let Some(target) = &rule.restart else {
                    continue;
                };
                if !steps[..=i].iter().any(|s| &s.name == target) {
                    self.problem(
                        &format!("notify.steps[{i}].rules"),
                        None,
                        format!("restart goes back to {target:?}, which is not this step or one before it"),
                    );
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn step_body(
        &mut self,
        key: &str,
        json: &Option<String>,
        text: &Option<String>,
        content_type: Option<String>,
        form: Option<BTreeMap<String, String>>,
        multipart: Option<BTreeMap<String, String>>,
        file_field: Option<String>,
        file_name: Option<String>,
        object: bool,
    ) -> StepBody {
        let given = [
            json.is_some(),
            text.is_some(),
            form.is_some(),
            multipart.is_some(),
            object,
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given > 1 {
            self.problem(
                key,
                None,
                "give at most one of json, body, form, multipart, object = true",
            );
            return StepBody::Empty;
        }
        let templates = |this: &mut Self, what: &str, fields: BTreeMap<String, String>| {
            fields
                .into_iter()
                .map(|(name, value)| {
                    let at = format!("{key}.{what}.{name}");
                    this.template(&at, &value);
                    (name, value)
                })
                .collect::<BTreeMap<_, _>>()
        };
        if let Some(t) = json {
            let t = t.clone();
            self.template(&format!("{key}.json"), &t);
            StepBody::Json(t)
        } else if let Some(t) = text {
            let t = t.clone();
            self.template(&format!("{key}.body"), &t);
            StepBody::Text {
                template: t,
                content_type: content_type.unwrap_or_else(|| "text/plain; charset=utf-8".into()),
            }
        } else if let Some(f) = form {
            StepBody::Form(templates(self, "form", f))
        } else if let Some(f) = multipart {
            let file_name = file_name.unwrap_or_else(|| "{{ filename }}".into());
            self.template(&format!("{key}.file_name"), &file_name);
            StepBody::Multipart {
                fields: templates(self, "multipart", f),
                file_field: file_field.unwrap_or_else(|| "file".into()),
                file_name,
            }
        } else if object {
            StepBody::Object
        } else {
            StepBody::Completion
        }
    }

    fn rule(&mut self, key: &str, raw: RawRule) -> Option<RuleConfig> {
        let status = match raw.status.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => match parse_status(s) {
                Some(m) => Some(m),
                None => {
                    self.problem(
                        &format!("{key}.status"),
                        None,
                        format!("{s:?} is neither a status code (\"200\") nor a class (\"4xx\")"),
                    );
                    return None;
                }
            },
        };
        let body = match raw.body {
            None => None,
            Some(b) => match regex::Regex::new(&b) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.problem(
                        &format!("{key}.body"),
                        None,
                        format!("not a valid regex: {e}"),
                    );
                    return None;
                }
            },
        };
        let outcome = match raw.outcome.as_deref() {
            Some("delivered") => RuleOutcome::Delivered,
            Some("duplicate") => RuleOutcome::Duplicate,
            Some("retry") => RuleOutcome::Retry,
            Some("permanent") => RuleOutcome::Permanent,
            Some("reauth") => RuleOutcome::Reauth,
            Some("restart") => RuleOutcome::Restart,
            other => {
                self.problem(
                    &format!("{key}.outcome"),
                    None,
                    format!(
                        "{other:?}: write delivered, duplicate, retry, permanent, reauth or restart"
                    ),
                );
                return None;
            }
        };
        if (outcome == RuleOutcome::Restart) != raw.step.is_some() {
            self.problem(
                &format!("{key}.step"),
                None,
                "a restart rule names the step to go back to (step = \"entry\"), and only a restart rule does",
            );
            return None;
        }
        Some(RuleConfig {
            status,
            body,
            outcome,
            restart: raw.step,
        })
    }

    fn template(&mut self, key: &str, source: &str) {
        let env = minijinja::Environment::new();
        if let Err(e) = env.template_from_str(source) {
            self.problem(key, None, format!("template error: {e}"));
        }
    }

    /// Headers sent as written (after `${ENV}`): checked to be valid HTTP.
    pub(super) fn literal_headers(
        &mut self,
        key: &str,
        raw: BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut headers = BTreeMap::new();
        for (name, value) in raw {
            let at = format!("{key}.{name}");
            if http::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::header::HeaderValue::from_str(&value).is_err()
            {
                self.problem(&at, None, "not a valid HTTP header name or value");
            }
            headers.insert(name, value);
        }
        headers
    }

    pub(super) fn user_notify(&mut self, key: &str, raw: RawUserNotify) -> UserNotifyConfig {
        let headers = self.literal_headers(&format!("{key}.headers"), raw.headers);
        let vars = raw.vars.into_iter().collect();
        UserNotifyConfig { headers, vars }
    }
}

fn parse_status(s: &str) -> Option<StatusMatch> {
    if let Some(class) = s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
        return match class.parse::<u16>() {
            Ok(c @ 1..=5) => Some(StatusMatch::Class(c)),
            _ => None,
        };
    }
    match s.parse::<u16>() {
        Ok(code @ 100..=599) => Some(StatusMatch::Exact(code)),
        _ => None,
    }
}
