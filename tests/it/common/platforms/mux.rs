//! Stand-in of the Mux Video API's `POST /video/v1/assets`.
//!
//! Follows https://mux.com/docs/api-reference/video/assets/create-asset and GitHub
//! `muxinc/mux-node-sdk` (HEAD `89eff086`): `src/client.ts` (Basic auth
//! `tokenId:tokenSecret`; base `https://api.mux.com`), `src/resources/video/assets.ts`
//! (`AssetCreateParams`: `inputs` required, `input` and `playback_policy` deprecated,
//! `playback_policies` of `public|signed|drm`, `passthrough` max 255 characters; answers
//! `{data: Asset}` with `status: 'preparing'|'ready'|'errored'`). The error envelope
//! `{"error":{"type","messages":[..]}}` follows `muxinc/mux-elixir`
//! `lib/mux/middleware/simplify_response.ex`.
//!
//! UNVERIFIED / GUESSES:
//! - `type` strings: `unauthorized` (401), `invalid_parameters` (400), `conflict` (409).
//! - 201 for a create (REST convention for a created asset).
//! - Unknown top-level fields are refused (brief: as Mux does); the known set is the SDK's
//!   `AssetCreateParams` plus the deprecated `mp4_support`. Input objects are checked only
//!   for a string `url`.
//! - `created_at` is Unix seconds as a string; ids are 40 random alphanumerics.
//! - The deprecated `input` is also accepted as a bare URL string (Mux's early docs).

use super::{FakeApi, Received, Reply, basic_auth, json, path, serve};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

pub const TOKEN_ID: &str = "mux-token-id";
pub const TOKEN_SECRET: &str = "mux-token-secret";

const KNOWN: [&str; 17] = [
    "inputs",
    "input",
    "playback_policies",
    "playback_policy",
    "advanced_playback_policies",
    "passthrough",
    "video_quality",
    "encoding_tier",
    "master_access",
    "max_resolution_tier",
    "meta",
    "normalize_audio",
    "per_title_encode",
    "static_renditions",
    "test",
    "copy_overlays",
    "mp4_support",
];
const DEPRECATED: [&str; 5] = [
    "input",
    "playback_policy",
    "encoding_tier",
    "mp4_support",
    "per_title_encode",
];

/// A created asset.
#[derive(Debug, Clone)]
pub struct MuxAsset {
    pub id: String,
    pub input_urls: Vec<String>,
    pub playback_policies: Vec<String>,
    pub passthrough: Option<String>,
    /// Deprecated fields the create used.
    pub deprecated_fields: Vec<String>,
    /// The create's body.
    pub request: Value,
}

#[derive(Default)]
struct State {
    assets: Vec<MuxAsset>,
    conflict_next: bool,
}

pub struct Mux {
    pub api: FakeApi,
    state: Arc<Mutex<State>>,
}

fn error(status: u16, kind: &str, message: &str) -> Reply {
    eprintln!("Mux stand-in: {status} {kind}: {message}");
    json(
        status,
        &json!({"error": {"type": kind, "messages": [message]}}),
    )
}

fn invalid(message: &str) -> Reply {
    error(400, "invalid_parameters", message)
}

impl State {
    fn create(&mut self, r: &Received) -> Reply {
        let Ok(body) = serde_json::from_slice::<Value>(&r.raw) else {
            return invalid("Invalid JSON body");
        };
        let Some(obj) = body.as_object() else {
            return invalid("Body must be a JSON object");
        };
        if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return invalid(&format!("{k} is not an allowed parameter"));
        }
        let deprecated: Vec<String> = obj
            .keys()
            .filter(|k| DEPRECATED.contains(&k.as_str()))
            .cloned()
            .collect();
        let inputs: Vec<Value> = match (obj.get("inputs"), obj.get("input")) {
            (Some(Value::Array(a)), _) => a.clone(),
            (Some(_), _) => return invalid("inputs must be an array"),
            (None, Some(Value::String(url))) => vec![json!({"url": url})],
            (None, Some(Value::Array(a))) => a.clone(),
            (None, Some(_)) => return invalid("input must be an array"),
            (None, None) => return invalid("inputs is required"),
        };
        if inputs.is_empty() {
            return invalid("inputs must not be empty");
        }
        let mut input_urls = Vec::new();
        for i in &inputs {
            match i.get("url").and_then(Value::as_str) {
                Some(url) if !url.is_empty() => input_urls.push(url.to_string()),
                _ => return invalid("inputs[].url must be a string"),
            }
        }
        let mut policies = Vec::new();
        for key in ["playback_policies", "playback_policy"] {
            match obj.get(key) {
                None => {}
                Some(Value::Array(a)) => {
                    for p in a {
                        match p.as_str() {
                            Some(p @ ("public" | "signed" | "drm")) => policies.push(p.to_string()),
                            _ => return invalid(&format!("{key} must be public, signed or drm")),
                        }
                    }
                }
                // Early docs allowed a single string.
                Some(Value::String(p))
                    if key == "playback_policy"
                        && ["public", "signed", "drm"].contains(&p.as_str()) =>
                {
                    policies.push(p.clone())
                }
                Some(_) => return invalid(&format!("{key} must be an array")),
            }
        }
        let passthrough = match obj.get("passthrough") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.chars().count() <= 255 => Some(s.clone()),
            Some(Value::String(_)) => return invalid("passthrough must be at most 255 characters"),
            Some(_) => return invalid("passthrough must be a string"),
        };
        if std::mem::take(&mut self.conflict_next) {
            return error(409, "conflict", "The resource is locked; retry the request");
        }
        let id = super::random_from(40, super::ALNUM);
        let playback_ids: Vec<Value> = policies
            .iter()
            .map(|p| json!({"policy": p, "id": super::random_from(40, super::ALNUM)}))
            .collect();
        let mut data = json!({
            "id": id,
            "status": "preparing",
            "playback_ids": playback_ids,
            "created_at": super::unix_now().to_string(),
            "video_quality": obj.get("video_quality").cloned().unwrap_or(json!("basic")),
            "max_resolution_tier": obj.get("max_resolution_tier").cloned().unwrap_or(json!("1080p")),
            "master_access": obj.get("master_access").cloned().unwrap_or(json!("none")),
            "encoding_tier": "baseline",
            "progress": {"state": "ingesting", "progress": 0},
            "mp4_support": "none",
        });
        if let Some(p) = &passthrough {
            data["passthrough"] = json!(p);
        }
        if obj.get("test") == Some(&json!(true)) {
            data["test"] = json!(true);
        }
        self.assets.push(MuxAsset {
            id,
            input_urls,
            playback_policies: policies,
            passthrough,
            deprecated_fields: deprecated,
            request: body.clone(),
        });
        json(201, &json!({"data": data}))
    }

    fn handle(&mut self, r: &Received) -> Reply {
        let authorized =
            basic_auth(r).is_some_and(|(id, secret)| id == TOKEN_ID && secret == TOKEN_SECRET);
        if !authorized {
            return error(401, "unauthorized", "Unauthorized request");
        }
        match (r.method.as_str(), path(r)) {
            ("POST", "/video/v1/assets") => self.create(r),
            _ => error(404, "not_found", "The requested resource was not found"),
        }
    }
}

impl Mux {
    /// Accepts Basic `TOKEN_ID:TOKEN_SECRET`.
    pub async fn start() -> Self {
        let (api, state) = serve(State::default(), |s, _, r| s.handle(r)).await;
        Mux { api, state }
    }

    /// `https://api.mux.com` in production.
    pub fn base(&self) -> String {
        self.api.base.clone()
    }

    pub fn token_id(&self) -> &'static str {
        TOKEN_ID
    }

    pub fn token_secret(&self) -> &'static str {
        TOKEN_SECRET
    }

    /// The next create answers 409 `conflict` once, creating nothing.
    pub fn conflict_next(&self) {
        self.state.lock().unwrap().conflict_next = true;
    }

    pub fn assets(&self) -> Vec<MuxAsset> {
        self.state.lock().unwrap().assets.clone()
    }

    /// Deprecated fields used by any create so far.
    pub fn deprecated_fields_used(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .assets
            .iter()
            .flat_map(|a| a.deprecated_fields.clone())
            .collect()
    }

    /// Assets created with `passthrough` or an input url equal to `key`.
    pub fn creates_for(&self, key: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .assets
            .iter()
            .filter(|a| {
                a.passthrough.as_deref() == Some(key) || a.input_urls.iter().any(|u| u == key)
            })
            .count()
    }
}
