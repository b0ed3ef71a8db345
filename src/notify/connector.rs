//! A connector at run time: the configured steps compiled into minijinja templates, and the
//! one function that runs a step — render the request, send it, classify the answer, pull
//! out the fields later steps need. Without `[[notify.steps]]` the connector is the
//! contract's default: one POST of the completion JSON to `notify.url`.

use super::extract::Document;
use super::http::{classify, parse_retry_after, sign};
use crate::config::{
    NotifyConfig, RuleOutcome, StepBody, StepConfig, UserConfig, UserNotifyConfig,
};
use crate::storage::Storage;
use arc_swap::ArcSwap;
use base64::Engine;
use minijinja::Environment;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Bytes of an answer kept for classification, extraction and error messages.
const MAX_ANSWER: usize = 1 << 20;
/// Characters of an unparsed answer quoted in an error.
const SNIPPET: usize = 200;

/// How one step ended.
#[derive(Debug)]
pub enum StepOutcome {
    /// Accepted (or already there): the fields it extracted.
    Done {
        /// The API said it already had it (409 or a `duplicate` rule).
        duplicate: bool,
        /// Extracted fields.
        fields: Map<String, Value>,
    },
    /// Try again later (after `after` when the API said so).
    Retry {
        /// `Retry-After`.
        after: Option<Duration>,
        /// What went wrong, for logs and `outbox list`.
        error: String,
    },
    /// Refused for good, with the API's message.
    Refused {
        /// The API's message (or status and a snippet of its answer).
        message: String,
    },
}

/// What `create` decided for an upload.
#[derive(Debug, Default)]
pub struct Created {
    /// Extracted fields, kept for the later steps.
    pub fields: Map<String, Value>,
    /// The object path the API chose (inside the user's home), if the step sets one.
    pub path: Option<String>,
}

/// Why `create` did not let an upload start.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The API refused: the client hears this message.
    #[error("{0}")]
    Refused(String),
    /// The API could not be reached or kept failing.
    #[error("the ingest API is unavailable: {0}")]
    Unavailable(String),
}

/// An object a step may send, as stored in S3.
pub struct StoredObject<'a> {
    /// Object key.
    pub key: &'a str,
    /// Bytes.
    pub size: u64,
    /// MIME type.
    pub content_type: &'a str,
}

/// One step about to run: what its templates and body are made from.
#[derive(Clone, Copy)]
struct Call<'a> {
    step: &'a StepConfig,
    /// Names its templates: "create" or "steps<index>".
    prefix: &'a str,
    ctx: &'a Map<String, Value>,
    idempotency: &'a str,
    completion_body: &'a [u8],
    object: Option<&'a StoredObject<'a>>,
}

/// The configured connector.
pub struct Connector {
    env: Environment<'static>,
    create: Option<StepConfig>,
    steps: Vec<StepConfig>,
    /// `notify.url` for the default step (used literally, never as a template).
    default_url: Option<String>,
    client: reqwest::Client,
    headers: HeaderMap,
    signing_key: Option<Vec<u8>>,
    storage: Storage,
    presign_ttl: Duration,
    /// Per-user settings; swapped whole when users are reloaded.
    users: ArcSwap<HashMap<String, UserNotifyConfig>>,
    /// The contract's call as a step: no rules, no extraction.
    default_step: StepConfig,
}

impl Connector {
    /// Compiles the templates of `cfg` (already checked by the config loader).
    pub fn new(
        cfg: &NotifyConfig,
        users: &[UserConfig],
        storage: Storage,
    ) -> Result<Connector, String> {
        let client = crate::outbound::client(cfg.timeout).map_err(|e| e.to_string())?;
        let headers = crate::outbound::header_map(&cfg.headers);
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        // HTTP Basic credentials (Mux) are base64 of "id:secret".
        env.add_filter("b64encode", |value: String| {
            base64::engine::general_purpose::STANDARD.encode(value)
        });
        let mut add = |name: String, source: &str| {
            env.add_template_owned(name.clone(), source.to_string())
                .map_err(|e| format!("{name}: {e}"))
        };
        let named: Vec<(String, &StepConfig)> = cfg
            .create
            .iter()
            .map(|s| ("create".to_string(), s))
            .chain(
                cfg.steps
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (format!("steps{i}"), s)),
            )
            .collect();
        for (prefix, step) in &named {
            add(format!("{prefix}.url"), &step.url)?;
            for (name, value) in &step.headers {
                add(format!("{prefix}.headers.{name}"), value)?;
            }
            if let Some(key) = &step.key {
                add(format!("{prefix}.key"), key)?;
            }
            match &step.body {
                StepBody::Json(t) | StepBody::Text { template: t, .. } => {
                    add(format!("{prefix}.body"), t)?;
                }
                StepBody::Form(fields) => {
                    for (name, t) in fields {
                        add(format!("{prefix}.fields.{name}"), t)?;
                    }
                }
                StepBody::Multipart {
                    fields, file_name, ..
                } => {
                    for (name, t) in fields {
                        add(format!("{prefix}.fields.{name}"), t)?;
                    }
                    add(format!("{prefix}.file_name"), file_name)?;
                }
                StepBody::Completion | StepBody::Empty | StepBody::Object => {}
            }
        }
        Ok(Connector {
            env,
            create: cfg.create.clone(),
            steps: cfg.steps.clone(),
            default_url: cfg.url.clone(),
            client,
            headers,
            signing_key: cfg.signing_secret.clone(),
            storage,
            presign_ttl: cfg.presign_ttl,
            users: ArcSwap::from_pointee(user_settings(users)),
            default_step: StepConfig {
                name: "complete".into(),
                method: reqwest::Method::POST,
                url: String::new(),
                headers: Default::default(),
                body: StepBody::Completion,
                extract: Default::default(),
                message: "message".into(),
                rules: Vec::new(),
                key: None,
            },
        })
    }

    /// Steps run once the object is durable.
    pub fn step_count(&self) -> usize {
        self.steps.len().max(1)
    }

    /// Name of step `index`.
    pub fn step_name(&self, index: usize) -> &str {
        self.steps
            .get(index)
            .map_or("complete", |s| s.name.as_str())
    }

    /// Whether uploads first run a `create` step.
    pub fn has_create(&self) -> bool {
        self.create.is_some()
    }

    /// The template variables of a completion: its fields, `filename`,
    /// `presigned_get_url`, the user's `vars`, and the fields earlier steps extracted.
    pub async fn context(
        &self,
        completion: &Map<String, Value>,
        fields: &Map<String, Value>,
    ) -> Result<Map<String, Value>, String> {
        let mut ctx = completion.clone();
        let key = completion.get("key").and_then(Value::as_str).unwrap_or("");
        if !self.steps.is_empty() {
            // Only templated steps can use it; the default POST does not need a signature.
            let url = self
                .storage
                .presign_get(key, self.presign_ttl)
                .await
                .map_err(|e| e.to_string())?;
            ctx.insert("presigned_get_url".into(), Value::String(url));
        }
        self.add_common(&mut ctx, fields);
        Ok(ctx)
    }

    /// Adds `filename`, `vars` and extracted fields to a context that has `path` and `username`.
    fn add_common(&self, ctx: &mut Map<String, Value>, fields: &Map<String, Value>) {
        let path = ctx.get("path").and_then(Value::as_str).unwrap_or("");
        let filename = path.rsplit('/').next().unwrap_or(path).to_string();
        ctx.insert("filename".into(), Value::String(filename));
        let username = ctx.get("username").and_then(Value::as_str).unwrap_or("");
        let vars: Map<String, Value> = self
            .users
            .load()
            .get(username)
            .map(|u| {
                u.vars
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect()
            })
            .unwrap_or_default();
        ctx.insert("vars".into(), Value::Object(vars));
        ctx.insert("fields".into(), Value::Object(fields.clone()));
        for (k, v) in fields {
            ctx.insert(k.clone(), v.clone());
        }
    }

    /// Runs `create` for an upload about to start; `ctx` holds what is known then.
    pub async fn create(&self, mut ctx: Map<String, Value>) -> Result<Created, CreateError> {
        let Some(step) = &self.create else {
            return Ok(Created::default());
        };
        self.add_common(&mut ctx, &Map::new());
        let id = ctx
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let idempotency = format!("{id}.{}", step.name);
        let mut last_error = String::new();
        // The client is waiting: a few quick tries, not the outbox's patient schedule.
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
            let outcome = self
                .run(Call {
                    step,
                    prefix: "create",
                    ctx: &ctx,
                    idempotency: &idempotency,
                    completion_body: b"",
                    object: None,
                })
                .await;
            match outcome {
                StepOutcome::Done { fields, .. } => {
                    let mut with_fields = ctx.clone();
                    for (k, v) in &fields {
                        with_fields.insert(k.clone(), v.clone());
                    }
                    let path = match &step.key {
                        Some(_) => Some(
                            self.render("create.key", &with_fields)
                                .map_err(CreateError::Refused)?,
                        ),
                        None => None,
                    };
                    return Ok(Created { fields, path });
                }
                StepOutcome::Refused { message } => return Err(CreateError::Refused(message)),
                StepOutcome::Retry { error, .. } => last_error = error,
            }
        }
        Err(CreateError::Unavailable(last_error))
    }

    /// Runs step `index` of a completion.
    pub async fn run_step(
        &self,
        index: usize,
        ctx: &Map<String, Value>,
        id: &str,
        completion_body: &[u8],
        object: &StoredObject<'_>,
    ) -> StepOutcome {
        let last = index + 1 >= self.step_count();
        let Some(step) = self.steps.get(index) else {
            return self.run_default(ctx, id, completion_body).await;
        };
        let idempotency = if last {
            id.to_string()
        } else {
            format!("{id}.{}", step.name)
        };
        self.run(Call {
            step,
            prefix: &format!("steps{index}"),
            ctx,
            idempotency: &idempotency,
            completion_body,
            object: Some(object),
        })
        .await
    }

    /// The contract's call: POST the completion JSON to `notify.url`.
    async fn run_default(&self, ctx: &Map<String, Value>, id: &str, body: &[u8]) -> StepOutcome {
        let Some(url) = &self.default_url else {
            return StepOutcome::Refused {
                message: "no notify.url configured".into(),
            };
        };
        let request = self
            .client
            .post(url)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", id);
        let request = self.signed(request, id, body).body(body.to_vec());
        let username = ctx.get("username").and_then(Value::as_str).unwrap_or("");
        let user_headers = self.user_headers(username);
        self.send(request.headers(user_headers), &self.default_step)
            .await
    }

    fn signed(
        &self,
        request: reqwest::RequestBuilder,
        id: &str,
        body: &[u8],
    ) -> reqwest::RequestBuilder {
        let Some(key) = &self.signing_key else {
            return request;
        };
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        request
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", sign(key, id, timestamp, body))
    }

    /// Uses `users`' notify settings from now on (SIGHUP).
    pub fn set_users(&self, users: &[UserConfig]) {
        self.users.store(Arc::new(user_settings(users)));
    }

    fn user_headers(&self, username: &str) -> HeaderMap {
        self.users
            .load()
            .get(username)
            .map(|u| crate::outbound::header_map(&u.headers))
            .unwrap_or_default()
    }

    fn render(&self, name: &str, ctx: &Map<String, Value>) -> Result<String, String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| format!("{name}: {e}"))?;
        template
            .render(Value::Object(ctx.clone()))
            .map_err(|e| format!("cannot render {name}: {e}"))
    }

    /// Renders, sends and classifies one configured step.
    async fn run(&self, call: Call<'_>) -> StepOutcome {
        match self.build(call).await {
            Ok(request) => self.send(request, call.step).await,
            Err(outcome) => outcome,
        }
    }

    async fn build(&self, call: Call<'_>) -> Result<reqwest::RequestBuilder, StepOutcome> {
        let Call {
            step,
            prefix,
            ctx,
            idempotency,
            completion_body,
            object,
        } = call;
        let refused = |message: String| StepOutcome::Refused { message };
        let render = |name: String| self.render(&name, ctx).map_err(refused);
        let url = render(format!("{prefix}.url"))?;
        let url = reqwest::Url::parse(url.trim())
            .map_err(|e| refused(format!("step {}: {url:?} is not a URL: {e}", step.name)))?;
        let mut headers = self.headers.clone();
        for name in step.headers.keys() {
            let value = render(format!("{prefix}.headers.{name}"))?;
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                (Ok(n), Ok(v)) => {
                    headers.insert(n, v);
                }
                _ => {
                    return Err(refused(format!(
                        "step {}: header {name} renders to an invalid value",
                        step.name
                    )));
                }
            }
        }
        let username = ctx.get("username").and_then(Value::as_str).unwrap_or("");
        headers.extend(self.user_headers(username));
        let request = self
            .client
            .request(step.method.clone(), url)
            .header("Idempotency-Key", idempotency);
        let request = match &step.body {
            StepBody::Completion => self
                .signed(request, idempotency, completion_body)
                .header(CONTENT_TYPE, "application/json")
                .body(completion_body.to_vec()),
            StepBody::Empty => request,
            StepBody::Json(_) => {
                let body = render(format!("{prefix}.body"))?;
                if let Err(e) = serde_json::from_str::<Value>(&body) {
                    return Err(refused(format!(
                        "step {}: the json template did not render JSON ({e}); use the tojson filter for values",
                        step.name
                    )));
                }
                self.signed(request, idempotency, body.as_bytes())
                    .header(CONTENT_TYPE, "application/json")
                    .body(body)
            }
            StepBody::Text { content_type, .. } => {
                let body = render(format!("{prefix}.body"))?;
                self.signed(request, idempotency, body.as_bytes())
                    .header(CONTENT_TYPE, content_type.as_str())
                    .body(body)
            }
            StepBody::Form(fields) => {
                let mut form = Vec::new();
                for name in fields.keys() {
                    form.push((name.clone(), render(format!("{prefix}.fields.{name}"))?));
                }
                request.form(&form)
            }
            StepBody::Multipart {
                fields, file_field, ..
            } => {
                let Some(object) = object else {
                    return Err(refused("no object to send".into()));
                };
                let mut form = reqwest::multipart::Form::new();
                for name in fields.keys() {
                    form = form.text(name.clone(), render(format!("{prefix}.fields.{name}"))?);
                }
                let file_name = render(format!("{prefix}.file_name"))?;
                let body = self.object_body(object).await?;
                let part = reqwest::multipart::Part::stream_with_length(body, object.size)
                    .file_name(file_name)
                    .mime_str(object.content_type)
                    .map_err(|e| refused(e.to_string()))?;
                request.multipart(form.part(file_field.clone(), part))
            }
            StepBody::Object => {
                let Some(object) = object else {
                    return Err(refused("no object to send".into()));
                };
                let body = self.object_body(object).await?;
                request
                    .header(CONTENT_TYPE, object.content_type)
                    .header(CONTENT_LENGTH, object.size)
                    .body(body)
            }
        };
        // Configured headers win over the defaults set with the body.
        Ok(request.headers(headers))
    }

    /// The object's bytes, streamed from S3 with bounded memory.
    async fn object_body(&self, object: &StoredObject<'_>) -> Result<reqwest::Body, StepOutcome> {
        let stream = self
            .storage
            .get(object.key, 0)
            .await
            .map_err(|e| StepOutcome::Retry {
                after: None,
                error: format!("cannot read the object back from S3: {e}"),
            })?;
        let reader = stream.into_async_read();
        Ok(reqwest::Body::wrap_stream(
            tokio_util::io::ReaderStream::new(reader),
        ))
    }

    async fn send(&self, request: reqwest::RequestBuilder, step: &StepConfig) -> StepOutcome {
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return StepOutcome::Retry {
                    after: None,
                    error: format!("{}: {}", step.name, error_chain(&e)),
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_ANSWER.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                Err(e) => {
                    return StepOutcome::Retry {
                        after: None,
                        error: format!("{}: reading the answer: {}", step.name, error_chain(&e)),
                    };
                }
            }
        }
        let text = String::from_utf8_lossy(&body);
        let outcome = step
            .rules
            .iter()
            .find(|r| {
                r.status.is_none_or(|s| s.matches(status.as_u16()))
                    && r.body.as_ref().is_none_or(|b| b.is_match(&text))
            })
            .map(|r| r.outcome)
            .unwrap_or_else(|| classify(status));
        let doc = Document::parse(&body);
        let message = || {
            doc.text(&step.message).unwrap_or_else(|| {
                let snippet: String = text.chars().take(SNIPPET).collect();
                if snippet.trim().is_empty() {
                    format!("HTTP {}", status.as_u16())
                } else {
                    format!("HTTP {}: {}", status.as_u16(), snippet.trim())
                }
            })
        };
        match outcome {
            RuleOutcome::Delivered | RuleOutcome::Duplicate => {
                let duplicate = outcome == RuleOutcome::Duplicate;
                let mut fields = Map::new();
                for (name, path) in &step.extract {
                    match doc.get(path) {
                        Some(v) => {
                            fields.insert(name.clone(), v);
                        }
                        None if duplicate => {}
                        None => {
                            return StepOutcome::Refused {
                                message: format!(
                                    "step {}: the answer (HTTP {}) has no {path:?} for {name}",
                                    step.name,
                                    status.as_u16()
                                ),
                            };
                        }
                    }
                }
                StepOutcome::Done { duplicate, fields }
            }
            RuleOutcome::Retry => StepOutcome::Retry {
                after: retry_after,
                error: format!("{}: {}", step.name, message()),
            },
            RuleOutcome::Permanent => StepOutcome::Refused { message: message() },
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn user_settings(users: &[UserConfig]) -> HashMap<String, UserNotifyConfig> {
    users
        .iter()
        .map(|u| (u.username.clone(), u.notify.clone()))
        .collect()
}
