//! Stand-in of the JW Player Platform Management API v2 fetch upload
//! (`POST /v2/sites/{site_id}/media`).
//!
//! Follows https://docs.jwplayer.com/platform/reference/vdh-fetch-upload-via-url (curl
//! `POST https://api.jwplayer.com/v2/sites/{site_id}/media` with
//! `{"upload":{"method":"fetch","download_url":…},"metadata":{"title":…}}`; "The API call
//! will return a response with `"status": "processing"`"),
//! https://docs.jwplayer.com/platform/reference/api-v2-authentication (`Authorization:
//! Bearer {v2_api_secret}`), GitHub `jwplayer/jwplatform-go` (`api.go`/`media.go`: `id`,
//! `created`, `last_modified`, `type`, `status`, `metadata`, … at top level; errors
//! `{"errors":[{"code","description"}]}`) and `jwplayer/jwplatform-py`
//! (`jwplatform/client.py`: `Bearer {api_secret}`; `jwplatform/errors.py`).
//!
//! Path: the fetch guide's curl has no trailing slash (`…/media`); the reference page is
//! titled `POST /v2/sites/site_id/media/` and the listing docs use `…/media/`. Both are
//! accepted.
//!
//! UNVERIFIED / GUESSES:
//! - HTTP 200 for the create (201 would also be plausible).
//! - Error `code` strings: `unauthorized` (401), `not_found` (404), `invalid_body` (400).
//! - Unknown top-level fields are refused; the known ones are `upload`, `metadata`,
//!   `relationships`. `metadata` fields beyond the documented example's are allowed, but
//!   the documented ones are type-checked.
//! - This stand-in implements only `upload.method = "fetch"`; other methods get 400.
//! - Media ids are 8 random alphanumerics.

use super::{FakeApi, Received, Reply, iso8601, json, path, serve};
use serde_json::{Map, Value, json};
use std::sync::{Arc, Mutex};

pub const SITE_ID: &str = "Ab12Cd34";
pub const API_SECRET: &str = "jw-v2-api-secret";

/// A created media item.
#[derive(Debug, Clone)]
pub struct JwMedia {
    pub id: String,
    pub download_url: String,
    pub metadata: Value,
    /// The create's body.
    pub request: Value,
}

#[derive(Default)]
struct State {
    media: Vec<JwMedia>,
}

pub struct JwPlayer {
    pub api: FakeApi,
    state: Arc<Mutex<State>>,
}

fn error(status: u16, code: &str, description: &str) -> Reply {
    eprintln!("JwPlayer stand-in: {status} {code}: {description}");
    json(
        status,
        &json!({"errors": [{"code": code, "description": description}]}),
    )
}

fn invalid(description: &str) -> Reply {
    error(400, "invalid_body", description)
}

/// Checks the documented metadata fields' types.
fn check_metadata(m: &Map<String, Value>) -> Result<(), String> {
    for key in [
        "title",
        "description",
        "author",
        "category",
        "external_id",
        "publish_start_date",
        "publish_end_date",
    ] {
        if m.get(key).is_some_and(|v| !v.is_string() && !v.is_null()) {
            return Err(format!("metadata.{key} must be a string"));
        }
    }
    if let Some(tags) = m.get("tags").filter(|t| !t.is_null()) {
        let ok = tags
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string));
        if !ok {
            return Err("metadata.tags must be an array of strings".into());
        }
    }
    if let Some(params) = m.get("custom_params").filter(|p| !p.is_null()) {
        let ok = params
            .as_object()
            .is_some_and(|o| o.values().all(Value::is_string));
        if !ok {
            return Err("metadata.custom_params must be an object of strings".into());
        }
    }
    if m.get("duration")
        .is_some_and(|d| !d.is_number() && !d.is_null())
    {
        return Err("metadata.duration must be a number".into());
    }
    Ok(())
}

impl State {
    fn create(&mut self, r: &Received) -> Reply {
        let Ok(body) = serde_json::from_slice::<Value>(&r.raw) else {
            return invalid("The request body is not valid JSON");
        };
        let Some(obj) = body.as_object() else {
            return invalid("The request body must be a JSON object");
        };
        if let Some(k) = obj
            .keys()
            .find(|k| !["upload", "metadata", "relationships"].contains(&k.as_str()))
        {
            return invalid(&format!("{k} is not a valid field"));
        }
        let Some(upload) = obj.get("upload").and_then(Value::as_object) else {
            return invalid("upload is required and must be an object");
        };
        match upload.get("method").and_then(Value::as_str) {
            Some("fetch") => {}
            Some(m @ ("direct" | "multipart" | "external")) => {
                return invalid(&format!(
                    "upload.method {m} is not implemented by this stand-in"
                ));
            }
            _ => return invalid("upload.method must be one of direct, multipart, fetch, external"),
        }
        let download_url = upload
            .get("download_url")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"));
        let Some(download_url) = download_url else {
            return invalid("upload.download_url is required for fetch and must be an http(s) URL");
        };
        let metadata = match obj.get("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return invalid("metadata must be an object"),
        };
        if let Err(e) = check_metadata(&metadata) {
            return invalid(&e);
        }
        let id = super::random_from(8, super::ALNUM);
        let now = iso8601(super::unix_now());
        let mut full = json!({
            "title": null, "description": null, "author": null, "category": null,
            "tags": [], "custom_params": {}, "external_id": null, "permalink": null,
            "publish_start_date": now, "publish_end_date": null, "language": null,
            "duration": 0,
        });
        for (k, v) in &metadata {
            full[k] = v.clone();
        }
        let media = JwMedia {
            id: id.clone(),
            download_url: download_url.to_string(),
            metadata: full.clone(),
            request: body.clone(),
        };
        self.media.push(media);
        json(
            200,
            &json!({
                "id": id,
                "type": "media",
                "created": now,
                "last_modified": now,
                "relationships": {},
                "status": "processing",
                "error_message": null,
                "duration": 0,
                "external_id": full["external_id"],
                "hosting_type": "hosted",
                "media_type": "unknown",
                "mime_type": null,
                "source_url": null,
                "trim_in_point": null,
                "trim_out_point": null,
                "metadata": full,
            }),
        )
    }

    fn handle(&mut self, r: &Received) -> Reply {
        if super::bearer(r) != Some(API_SECRET) {
            return error(401, "unauthorized", "Missing or invalid API credentials");
        }
        let p = path(r);
        let site = p.strip_prefix("/v2/sites/").and_then(|rest| {
            rest.strip_suffix("/media/")
                .or_else(|| rest.strip_suffix("/media"))
        });
        match (r.method.as_str(), site) {
            ("POST", Some(SITE_ID)) => self.create(r),
            ("POST", Some(other)) => {
                error(404, "not_found", &format!("Site {other} was not found"))
            }
            _ => error(404, "not_found", "The requested resource was not found"),
        }
    }
}

impl JwPlayer {
    /// Accepts `Bearer API_SECRET` for site [`SITE_ID`].
    pub async fn start() -> Self {
        let (api, state) = serve(State::default(), |s, _, r| s.handle(r)).await;
        JwPlayer { api, state }
    }

    /// `https://api.jwplayer.com` in production.
    pub fn base(&self) -> String {
        self.api.base.clone()
    }

    pub fn site_id(&self) -> &'static str {
        SITE_ID
    }

    pub fn api_secret(&self) -> &'static str {
        API_SECRET
    }

    pub fn media(&self) -> Vec<JwMedia> {
        self.state.lock().unwrap().media.clone()
    }

    /// Media created with `metadata.external_id` or `download_url` equal to `key`.
    pub fn creates_for(&self, key: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .media
            .iter()
            .filter(|m| m.download_url == key || m.metadata["external_id"].as_str() == Some(key))
            .count()
    }
}
