//! A connector at run time: the configured steps compiled into minijinja templates, and the
//! one function that runs a step — render the request, send it, classify the answer, pull
//! out the fields later steps need. Without `[[notify.steps]]` the connector is the
//! contract's default: one POST of the completion JSON to `notify.url`.

use super::http::sign;
use super::token::{Token, Tokens};
use crate::config::{NotifyConfig, StepBody, StepConfig, UserConfig, UserNotifyConfig};
use crate::storage::Storage;
use arc_swap::ArcSwap;
use base64::Engine;
use minijinja::Environment;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Bytes of an answer kept for classification, extraction and error messages.
pub(super) const MAX_ANSWER: usize = 1 << 20;
/// Characters of an unparsed answer quoted in an error.
pub(super) const SNIPPET: usize = 200;

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
    /// Part of the step is done (a part pushed): record `fields`, then run it again.
    Progress {
        /// All fields the step has so far (the finished parts).
        fields: Map<String, Value>,
    },
    /// Go back to step `step`, forgetting what it and later steps extracted.
    Restart {
        /// Index of the step to run next.
        step: usize,
        /// Why, for logs and `outbox list`.
        error: String,
    },
    /// The credentials were refused even after renewing them: try again later.
    Reauth {
        /// The API's words.
        error: String,
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
pub(super) struct Call<'a> {
    pub step: &'a StepConfig,
    /// Names its templates: "create" or "steps<index>".
    pub prefix: &'a str,
    pub ctx: &'a Map<String, Value>,
    pub idempotency: &'a str,
    pub completion_body: &'a [u8],
    pub object: Option<&'a StoredObject<'a>>,
}

/// The configured connector.
pub struct Connector {
    pub(super) env: Environment<'static>,
    create: Option<StepConfig>,
    pub(super) steps: Vec<StepConfig>,
    /// `notify.url` for the default step (used literally, never as a template).
    default_url: Option<String>,
    /// Follows no redirect.
    pub(super) client: reqwest::Client,
    /// For steps with `follow_redirects`.
    pub(super) redirecting: reqwest::Client,
    /// Deadline of a request that pushes no object.
    pub(super) timeout: Duration,
    /// How long a push may go without progress.
    pub(super) progress_timeout: Duration,
    /// `[notify.auth]`'s token, when configured.
    pub(super) tokens: Option<Tokens>,
    pub(super) headers: HeaderMap,
    signing_key: Option<Vec<u8>>,
    pub(super) storage: Storage,
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
        let client = crate::outbound::step_client(false).map_err(|e| e.to_string())?;
        let redirecting = crate::outbound::step_client(true).map_err(|e| e.to_string())?;
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
            .auth
            .iter()
            .map(|a| ("auth".to_string(), &a.step))
            .chain(cfg.create.iter().map(|s| ("create".to_string(), s)))
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
            redirecting,
            timeout: cfg.timeout,
            progress_timeout: cfg.progress_timeout,
            tokens: cfg.auth.clone().map(Tokens::new),
            headers,
            signing_key: cfg.signing_secret.clone(),
            storage,
            presign_ttl: cfg.presign_ttl,
            users: ArcSwap::from_pointee(user_settings(users)),
            default_step: StepConfig::plain(
                "complete",
                reqwest::Method::POST,
                "",
                StepBody::Completion,
            ),
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

    /// The fields step `index` and the steps after it extract (dropped when a delivery
    /// restarts at `index`).
    pub fn fields_from(&self, index: usize) -> Vec<String> {
        self.steps
            .iter()
            .skip(index)
            .flat_map(|s| {
                let parts = s
                    .parts
                    .as_ref()
                    .map(|_| super::parts::PARTS_FIELD.to_string());
                s.extract.keys().cloned().chain(parts)
            })
            .collect()
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
        let idempotency = step_key(&id, &step.name);
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
                StepOutcome::Retry { error, .. } | StepOutcome::Reauth { error } => {
                    last_error = error;
                }
                StepOutcome::Progress { .. } | StepOutcome::Restart { .. } => {
                    last_error = "the create step cannot push parts or restart".into();
                }
            }
        }
        Err(CreateError::Unavailable(last_error))
    }

    /// Runs step `index` of a completion: skipped when its `when` is false, one part at a
    /// time for a parts step.
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
        if let Some(when) = &step.when {
            match self.holds(when, ctx) {
                Ok(true) => {}
                Ok(false) => {
                    return StepOutcome::Done {
                        duplicate: false,
                        fields: Map::new(),
                    };
                }
                Err(message) => return StepOutcome::Refused { message },
            }
        }
        let idempotency = if last {
            id.to_string()
        } else {
            step_key(id, &step.name)
        };
        let prefix = format!("steps{index}");
        let call = Call {
            step,
            prefix: &prefix,
            ctx,
            idempotency: &idempotency,
            completion_body,
            object: Some(object),
        };
        if let Some(parts) = &step.parts {
            return self.push_part(call, parts, object).await;
        }
        self.run(call).await
    }

    /// Whether the expression `when` is true for `ctx`.
    fn holds(&self, when: &str, ctx: &Map<String, Value>) -> Result<bool, String> {
        let expression = self
            .env
            .compile_expression(when)
            .map_err(|e| format!("when {when:?}: {e}"))?;
        expression
            .eval(Value::Object(ctx.clone()))
            .map(|v| v.is_true())
            .map_err(|e| format!("when {when:?}: {e}"))
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
        let request = request.headers(user_headers).timeout(self.timeout);
        self.send(request, &self.default_step, None).await
    }

    pub(super) fn signed(
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

    pub(super) fn user_headers(&self, username: &str) -> HeaderMap {
        self.users
            .load()
            .get(username)
            .map(|u| crate::outbound::header_map(&u.headers))
            .unwrap_or_default()
    }

    pub(super) fn render(&self, name: &str, ctx: &Map<String, Value>) -> Result<String, String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| format!("{name}: {e}"))?;
        template
            .render(Value::Object(ctx.clone()))
            .map_err(|e| format!("cannot render {name}: {e}"))
    }

    /// Renders, sends and classifies one configured step. With `[notify.auth]`, templates
    /// see `auth.token`; when the API refuses it (HTTP 401, or a `reauth` rule), the token
    /// is renewed and the step sent once more.
    pub(super) async fn run(&self, call: Call<'_>) -> StepOutcome {
        let mut refused_before = false;
        loop {
            let token = match self.token().await {
                Ok(token) => token,
                Err(error) => return StepOutcome::Retry { after: None, error },
            };
            let ctx = with_token(call.ctx, token.as_ref());
            let outcome = match self
                .build(Call {
                    ctx: ctx.as_ref(),
                    ..call
                })
                .await
            {
                Ok((request, pushed)) => self.send(request, call.step, pushed).await,
                Err(outcome) => outcome,
            };
            match (outcome, token, &self.tokens) {
                (StepOutcome::Reauth { error }, Some(token), Some(tokens)) if !refused_before => {
                    tracing::info!(step = %call.step.name, error = %error, "credentials refused; renewing them");
                    tokens.refused(token.generation);
                    refused_before = true;
                }
                (outcome, ..) => return outcome,
            }
        }
    }
}

/// The Idempotency-Key (and Standard Webhooks `webhook-id`) of a step before the last: the
/// completion's id and the step's name, with no `.` (the spec forbids it in ids).
pub(super) fn step_key(id: &str, step: &str) -> String {
    let name: String = step
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{id}_{name}")
}

/// `ctx` with `auth.token` when there is a token.
fn with_token<'a>(
    ctx: &'a Map<String, Value>,
    token: Option<&Token>,
) -> std::borrow::Cow<'a, Map<String, Value>> {
    match token {
        None => std::borrow::Cow::Borrowed(ctx),
        Some(token) => {
            let mut ctx = ctx.clone();
            let mut auth = Map::new();
            auth.insert("token".into(), Value::String(token.value.clone()));
            ctx.insert("auth".into(), Value::Object(auth));
            std::borrow::Cow::Owned(ctx)
        }
    }
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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
