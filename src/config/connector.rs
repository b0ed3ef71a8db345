//! `[notify.create]`, `[[notify.steps]]` and `[notify.auth]`: a connector is configured, not
//! coded. Each step is one templated HTTP request (minijinja); this module checks every
//! template, method, header, body and extraction path at load time so a typo is a config error
//! with its key, not a dead letter days later. Classification rules are in `rules`.

use super::rules::{RawRule, RuleConfig};
use super::{S3_MAX_PART_SIZE, S3_MIN_PART_SIZE, Text, Validator};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// A step's `name` when unset (`[notify.create]` is `"create"`).
pub const DEFAULT_STEP_NAME: &str = "complete";
/// `[notify.create]`'s `name` when unset.
pub const DEFAULT_CREATE_NAME: &str = "create";
/// A step's `method` when unset.
pub const DEFAULT_METHOD: &str = "POST";
/// A step's `message` when unset: where a refusal's human-readable text is.
pub const DEFAULT_MESSAGE: &str = "message";
/// A step's `follow_redirects` when unset: a redirect is a failure (Standard Webhooks).
pub const DEFAULT_FOLLOW_REDIRECTS: bool = false;
/// A step's `object` when unset.
pub const DEFAULT_OBJECT: bool = false;
/// A text `body`'s `content_type` when unset.
pub const DEFAULT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
/// A `multipart` body's `file_field` when unset.
pub const DEFAULT_FILE_FIELD: &str = "file";
/// A `multipart` body's `file_name` template when unset.
pub const DEFAULT_FILE_NAME: &str = "{{ filename }}";
/// `parts.size` when unset.
pub const DEFAULT_PARTS_SIZE: u64 = 100 << 20;
/// `parts.method` when unset.
pub const DEFAULT_PARTS_METHOD: &str = "PUT";
/// `parts.keep_header` when unset.
pub const DEFAULT_PARTS_KEEP_HEADER: &str = "ETag";
/// `[notify.auth]`'s `token` when unset.
pub const DEFAULT_TOKEN_PATH: &str = "access_token";
/// `[notify.auth]`'s `expires_in` when unset and `token` is the default.
pub const DEFAULT_EXPIRES_IN_PATH: &str = "expires_in";
/// `[notify.auth]`'s `ttl` when unset.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// One templated HTTP request of a connector (`[notify.create]`, `[[notify.steps]]`,
/// `[notify.auth]`) as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawStep {
    name: Option<String>,
    method: Option<String>,
    url: Option<Text>,
    headers: BTreeMap<String, String>,
    json: Option<String>,
    body: Option<String>,
    content_type: Option<String>,
    form: Option<BTreeMap<String, String>>,
    multipart: Option<BTreeMap<String, String>>,
    file_field: Option<String>,
    file_name: Option<String>,
    object: Option<bool>,
    extract: BTreeMap<String, String>,
    message: Option<String>,
    key: Option<String>,
    rules: Vec<RawRule>,
    when: Option<String>,
    follow_redirects: Option<bool>,
    parts: Option<RawParts>,
    /// `[notify.auth]` only: where the token is in the answer.
    token: Option<String>,
    /// `[notify.auth]` only: where its lifetime (seconds) is in the answer.
    expires_in: Option<String>,
    /// `[notify.auth]` only: the lifetime when the answer has none.
    ttl: Option<Text>,
}

/// `parts = { … }` of a step as written: push the object part by part to URLs the platform
/// hands out.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawParts {
    size: Option<Text>,
    url: Option<String>,
    method: Option<String>,
    keep_header: Option<String>,
}

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
            message: DEFAULT_MESSAGE.into(),
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

/// What `create` sends when it names no body: what is known when an upload starts.
const CREATE_DEFAULT_BODY: &str = r#"{"event": "upload.started", "id": {{ id | tojson }}, "protocol": {{ protocol | tojson }}, "username": {{ username | tojson }}, "path": {{ path | tojson }}, "bucket": {{ bucket | tojson }}, "key": {{ key | tojson }}, "metadata": {{ metadata | tojson }}}"#;

impl Validator<'_> {
    /// One step; `None` when it has a problem (each is reported).
    pub(super) fn step(&mut self, key: &str, raw: RawStep, is_create: bool) -> Option<StepConfig> {
        let before = self.problems.len();
        let name = raw.name.unwrap_or_else(|| {
            if is_create {
                DEFAULT_CREATE_NAME.into()
            } else {
                DEFAULT_STEP_NAME.into()
            }
        });
        let method_text = raw.method.unwrap_or_else(|| DEFAULT_METHOD.into());
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
            raw.object.unwrap_or(DEFAULT_OBJECT),
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
            message: raw.message.unwrap_or_else(|| DEFAULT_MESSAGE.into()),
            rules,
            key: object_key,
            when: raw.when,
            follow_redirects: raw.follow_redirects.unwrap_or(DEFAULT_FOLLOW_REDIRECTS),
            parts,
        })
    }

    /// A step's `parts = { … }`.
    fn parts(&mut self, key: &str, raw: RawParts) -> PartsConfig {
        let size_at = raw.size.clone();
        let size = self.size(&format!("{key}.size"), raw.size, DEFAULT_PARTS_SIZE);
        if !(S3_MIN_PART_SIZE..=S3_MAX_PART_SIZE).contains(&size) {
            self.problem(
                &format!("{key}.size"),
                size_at.as_ref(),
                "parts go to S3: between 5MiB and 5GiB",
            );
        }
        let method_text = raw.method.unwrap_or_else(|| DEFAULT_PARTS_METHOD.into());
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
            keep_header: raw
                .keep_header
                .unwrap_or_else(|| DEFAULT_PARTS_KEEP_HEADER.into()),
        }
    }

    /// `[notify.auth]`: a step whose answer carries a token.
    pub(super) fn token(&mut self, mut raw: RawStep) -> Option<TokenConfig> {
        let key = "notify.auth";
        let token = raw
            .token
            .take()
            .unwrap_or_else(|| DEFAULT_TOKEN_PATH.into());
        let expires_in = raw
            .expires_in
            .take()
            .or_else(|| (token == DEFAULT_TOKEN_PATH).then(|| DEFAULT_EXPIRES_IN_PATH.into()));
        let ttl_at = raw.ttl.clone();
        let ttl = self.duration(&format!("{key}.ttl"), raw.ttl.take(), DEFAULT_TOKEN_TTL);
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

    /// The request body from the body keys given (at most one of them).
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
                content_type: content_type.unwrap_or_else(|| DEFAULT_CONTENT_TYPE.into()),
            }
        } else if let Some(f) = form {
            StepBody::Form(templates(self, "form", f))
        } else if let Some(f) = multipart {
            let file_name = file_name.unwrap_or_else(|| DEFAULT_FILE_NAME.into());
            self.template(&format!("{key}.file_name"), &file_name);
            StepBody::Multipart {
                fields: templates(self, "multipart", f),
                file_field: file_field.unwrap_or_else(|| DEFAULT_FILE_FIELD.into()),
                file_name,
            }
        } else if object {
            StepBody::Object
        } else {
            StepBody::Completion
        }
    }

    /// Reports a template that does not compile.
    fn template(&mut self, key: &str, source: &str) {
        let env = minijinja::Environment::new();
        if let Err(e) = env.template_from_str(source) {
            self.problem(key, None, format!("template error: {e}"));
        }
    }
}
