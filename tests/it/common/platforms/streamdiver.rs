//! Stand-in of the Streamdiver API: the OAuth 2.0 client-credentials token endpoint and
//! `POST /v2/uploads/imports`.
//!
//! Follows https://developer.streamdiver.com/docs/getting-started/authentication (token at
//! `…/realms/{tenantShortcode}/protocol/openid-connect/token`, form `grant_type=
//! client_credentials`, `client_id`, `client_secret`; "session lifetime of 16 hours"; calls
//! carry `Authorization: Bearer {token}`), …/getting-started/protocol (JSend: `status` one
//! of success/fail/error, `data`, `message`) and …/getting-started/file_import (request
//! `{"files":[{"url","name","filename"?,"transcriptionLanguageCode"?}],"channel"?}`; the
//! response carries the import `id` and, per file, an `uploadId`). In production the token
//! host is `https://sso.streamdiver.com` and the API `https://api.streamdiver.com`; here
//! both are [`Streamdiver::base`].
//!
//! UNVERIFIED / GUESSES:
//! - Token answer beyond `access_token`: Keycloak's usual client-credentials fields
//!   (`expires_in`, `refresh_expires_in: 0`, `token_type: "Bearer"`, `not-before-policy`,
//!   `scope`); `expires_in` defaults to 57600 (16 h). Error bodies are Keycloak's
//!   (`invalid_client` 401, `invalid_request` / `unsupported_grant_type` 400,
//!   404 `{"error":"Realm does not exist"}`). Client credentials are also taken from a
//!   Basic header (Keycloak's client_secret_basic).
//! - 401 for a missing/unknown/expired token: `{"status":"fail","data":null,"message":"Unauthorized"}`.
//! - Which file fields are required (`url`, `name` here), that unknown fields (top level
//!   and per file) are refused, and the refusal shape: 400
//!   `{"status":"fail","data":{"<field>":"<reason>"},"message":"Bad Request"}`.
//! - The success answer: HTTP 200 `{"status":"success","data":{"id","files":[{"url","name",
//!   "filename","transcriptionLanguageCode"?,"uploadId"}]},"message":null}`.

use super::{FakeApi, Received, Reply, basic_auth, bearer, form, json, param, path, serve};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TENANT: &str = "ingest-test";
pub const CLIENT_ID: &str = "ingest-bridge";
pub const CLIENT_SECRET: &str = "streamdiver-client-secret";
/// "The tokens by default have a session lifetime of 16 hours."
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(16 * 3600);

#[derive(Debug, Clone)]
pub struct StreamdiverFile {
    pub url: String,
    pub name: String,
    pub filename: Option<String>,
    pub transcription_language_code: Option<String>,
    pub upload_id: String,
}

#[derive(Debug, Clone)]
pub struct StreamdiverImport {
    pub id: String,
    pub channel: Option<String>,
    pub files: Vec<StreamdiverFile>,
}

struct State {
    lifetime: Duration,
    tokens: HashMap<String, Instant>,
    issued: usize,
    imports: Vec<StreamdiverImport>,
}

pub struct Streamdiver {
    pub api: FakeApi,
    state: Arc<Mutex<State>>,
}

fn fail(status: u16, data: Value, message: &str) -> Reply {
    eprintln!("Streamdiver stand-in: {status}: {data} {message}");
    json(
        status,
        &json!({"status": "fail", "data": data, "message": message}),
    )
}

fn keycloak_error(status: u16, error: &str, description: &str) -> Reply {
    json(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

fn token_string(lifetime: Duration) -> String {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = super::unix_now();
    format!(
        "{}.{}.{}",
        b64(&json!({"alg": "RS256", "typ": "JWT"})),
        b64(
            &json!({"exp": now + lifetime.as_secs(), "iat": now, "jti": super::new_uuid(), "azp": CLIENT_ID})
        ),
        super::random_from(43, super::ALNUM)
    )
}

impl State {
    fn token(&mut self, r: &Received) -> Reply {
        let p = path(r);
        let realm = p
            .strip_prefix("/realms/")
            .and_then(|rest| rest.strip_suffix("/protocol/openid-connect/token"));
        if realm != Some(TENANT) {
            return json(404, &json!({"error": "Realm does not exist"}));
        }
        if r.method != "POST" {
            return json(405, &json!({"error": "HTTP 405 Method Not Allowed"}));
        }
        if super::content_type(r) != "application/x-www-form-urlencoded" {
            return keycloak_error(400, "invalid_request", "Unsupported content type");
        }
        let f = form(&r.raw);
        let Some(grant) = param(&f, "grant_type") else {
            return keycloak_error(400, "invalid_request", "Missing form parameter: grant_type");
        };
        let (id, secret) = match (param(&f, "client_id"), basic_auth(r)) {
            (Some(id), _) => (
                Some(id.to_string()),
                param(&f, "client_secret").map(str::to_string),
            ),
            (None, Some((id, secret))) => (Some(id), Some(secret)),
            (None, None) => (None, None),
        };
        if id.as_deref() != Some(CLIENT_ID) || secret.as_deref() != Some(CLIENT_SECRET) {
            return keycloak_error(401, "invalid_client", "Invalid client credentials");
        }
        if grant != "client_credentials" {
            return keycloak_error(400, "unsupported_grant_type", "Unsupported grant_type");
        }
        let token = token_string(self.lifetime);
        self.tokens
            .insert(token.clone(), Instant::now() + self.lifetime);
        self.issued += 1;
        json(
            200,
            &json!({
                "access_token": token,
                "expires_in": self.lifetime.as_secs(),
                "refresh_expires_in": 0,
                "token_type": "Bearer",
                "not-before-policy": 0,
                "scope": "profile email",
            }),
        )
    }

    fn import(&mut self, r: &Received) -> Reply {
        let valid = bearer(r)
            .and_then(|t| self.tokens.get(t))
            .is_some_and(|expiry| Instant::now() < *expiry);
        if !valid {
            return fail(401, Value::Null, "Unauthorized");
        }
        let Ok(body) = serde_json::from_slice::<Value>(&r.raw) else {
            return fail(400, json!({"body": "Malformed JSON"}), "Bad Request");
        };
        let Some(obj) = body.as_object() else {
            return fail(400, json!({"body": "Must be an object"}), "Bad Request");
        };
        if let Some(k) = obj
            .keys()
            .find(|k| !["files", "channel"].contains(&k.as_str()))
        {
            return fail(400, json!({k: "Unrecognized field"}), "Bad Request");
        }
        let channel = match obj.get("channel") {
            None | Some(Value::Null) => None,
            Some(Value::String(c)) if uuid::Uuid::parse_str(c).is_ok() => Some(c.clone()),
            Some(_) => return fail(400, json!({"channel": "Must be a UUID"}), "Bad Request"),
        };
        let Some(files) = obj
            .get("files")
            .and_then(Value::as_array)
            .filter(|f| !f.is_empty())
        else {
            return fail(
                400,
                json!({"files": "Must be a non-empty array"}),
                "Bad Request",
            );
        };
        let mut out = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let Some(f) = f.as_object() else {
                return fail(
                    400,
                    json!({format!("files[{i}]"): "Must be an object"}),
                    "Bad Request",
                );
            };
            const KNOWN: [&str; 4] = ["url", "name", "filename", "transcriptionLanguageCode"];
            if let Some(k) = f.keys().find(|k| !KNOWN.contains(&k.as_str())) {
                return fail(
                    400,
                    json!({format!("files[{i}].{k}"): "Unrecognized field"}),
                    "Bad Request",
                );
            }
            let s = |k: &str| f.get(k).and_then(Value::as_str).map(str::to_string);
            let url = s("url").filter(|u| u.starts_with("http://") || u.starts_with("https://"));
            let Some(url) = url else {
                return fail(
                    400,
                    json!({format!("files[{i}].url"): "Must be an http(s) URL"}),
                    "Bad Request",
                );
            };
            let Some(name) = s("name").filter(|n| !n.is_empty()) else {
                return fail(
                    400,
                    json!({format!("files[{i}].name"): "Must not be empty"}),
                    "Bad Request",
                );
            };
            for k in ["filename", "transcriptionLanguageCode"] {
                if f.get(k).is_some_and(|v| !v.is_string() && !v.is_null()) {
                    return fail(
                        400,
                        json!({format!("files[{i}].{k}"): "Must be a string"}),
                        "Bad Request",
                    );
                }
            }
            out.push(StreamdiverFile {
                url,
                name,
                filename: s("filename"),
                transcription_language_code: s("transcriptionLanguageCode"),
                upload_id: super::new_uuid(),
            });
        }
        let import = StreamdiverImport {
            id: super::new_uuid(),
            channel,
            files: out,
        };
        let files: Vec<Value> = import
            .files
            .iter()
            .map(|f| {
                let mut v = json!({"url": f.url, "name": f.name, "filename": f.filename, "uploadId": f.upload_id});
                if let Some(code) = &f.transcription_language_code {
                    v["transcriptionLanguageCode"] = json!(code);
                }
                v
            })
            .collect();
        let id = import.id.clone();
        self.imports.push(import);
        json(
            200,
            &json!({"status": "success", "data": {"id": id, "files": files}, "message": null}),
        )
    }

    fn handle(&mut self, r: &Received) -> Reply {
        let p = path(r);
        if p.starts_with("/realms/") {
            return self.token(r);
        }
        if p == "/v2/uploads/imports" && r.method == "POST" {
            return self.import(r);
        }
        json(
            404,
            &json!({"status": "fail", "data": null, "message": "Not Found"}),
        )
    }
}

impl Streamdiver {
    /// Tokens live [`DEFAULT_TOKEN_LIFETIME`].
    pub async fn start() -> Self {
        Self::start_with_token_lifetime(DEFAULT_TOKEN_LIFETIME).await
    }

    pub async fn start_with_token_lifetime(lifetime: Duration) -> Self {
        let (api, state) = serve(
            State {
                lifetime,
                tokens: HashMap::new(),
                issued: 0,
                imports: Vec::new(),
            },
            |s, _, r| s.handle(r),
        )
        .await;
        Streamdiver { api, state }
    }

    /// Base of both the token endpoint and the API.
    pub fn base(&self) -> String {
        self.api.base.clone()
    }

    /// `<base>/realms/<tenant>/protocol/openid-connect/token`.
    pub fn token_url(&self) -> String {
        format!(
            "{}/realms/{TENANT}/protocol/openid-connect/token",
            self.api.base
        )
    }

    pub fn tenant(&self) -> &'static str {
        TENANT
    }

    pub fn client_id(&self) -> &'static str {
        CLIENT_ID
    }

    pub fn client_secret(&self) -> &'static str {
        CLIENT_SECRET
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state.lock().unwrap().lifetime = lifetime;
    }

    /// Every token issued so far stops being accepted.
    pub fn revoke_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    pub fn tokens_issued(&self) -> usize {
        self.state.lock().unwrap().issued
    }

    pub fn imports(&self) -> Vec<StreamdiverImport> {
        self.state.lock().unwrap().imports.clone()
    }

    /// Every file url imported, in order.
    pub fn imported_urls(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .imports
            .iter()
            .flat_map(|i| i.files.iter().map(|f| f.url.clone()))
            .collect()
    }

    /// Files imported under `name` or `filename` equal to `key`.
    pub fn creates_for(&self, key: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .imports
            .iter()
            .flat_map(|i| i.files.iter())
            .filter(|f| f.name == key || f.filename.as_deref() == Some(key))
            .count()
    }
}
