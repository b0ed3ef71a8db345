//! `[notify.create]` and `[[notify.steps]]`: a connector is configured, not coded. Each step
//! is one templated HTTP request (minijinja); this module checks every template, method,
//! header, rule and extraction path at load time so a typo is a config error with its key,
//! not a dead letter days later.

use super::Validator;
use super::raw::{RawRule, RawStep, RawUserNotify};
use std::collections::BTreeMap;

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
        })
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
            other => {
                self.problem(
                    &format!("{key}.outcome"),
                    None,
                    format!("{other:?}: write delivered, duplicate, retry or permanent"),
                );
                return None;
            }
        };
        Some(RuleConfig {
            status,
            body,
            outcome,
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
