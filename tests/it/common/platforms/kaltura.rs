//! Stand-in of Kaltura's api_v3: `session.start`, `media.add`, `media.addContent`, `media.get`.
//!
//! Follows GitHub `kaltura/server` (snapshot HEAD `c447fdb3`):
//! `api_v3/services/SessionService.php` (`startAction($secret, $userId = "", $type = 0,
//! $partnerId = null, $expiry = 86400, …)`, `@return string`, throws `START_SESSION_ERROR`),
//! `api_v3/services/MediaService.php` (`addAction` → status NO_CONTENT; `addContentAction`
//! → `ENTRY_ID_NOT_FOUND` / `ENTRY_ALREADY_WITH_CONTENT` unless status is NO_CONTENT),
//! `api_v3/lib/KalturaEntryService.php::attachUrlResource` (→ `kJobsManager::addImportJob`,
//! which sets status IMPORT = 0), `alpha/lib/enums/entryStatus.php`,
//! `api_v3/lib/types/enums/KalturaMediaType.php`, `api_v3/lib/KalturaErrors.php` and
//! `alpha/apps/kaltura/lib/webservices/APIErrors.class.php` (error strings),
//! `api_v3/lib/KalturaSerializer.php` + `KalturaJsonSerializer.php` (exception JSON
//! `{code,message,objectType,args}`, nulls dropped, HTTP 200),
//! `api_v3/lib/KalturaFrontController.php` (expired KS → `INVALID_KS` with
//! `ERR_CODE -1, INVALID_STR`), `api_v3/lib/types/KalturaObject.php` (`PROPERTY_VALIDATION_*`
//! with `Class::prop` names) and `alpha/apps/kaltura/lib/request/infraRequestUtils.class.php`
//! (params = POST form or a JSON body, overridden by URL params).
//!
//! GUESSES:
//! - Only `format=1` (JSON) is spoken; any other format gets an XML placeholder so a client
//!   that forgot `format=1` (XML is Kaltura's default) fails to parse it.
//! - A KS that was never issued: `INVALID_KS` with KSID `INVALID_STR` (ks::INVALID_STR).
//! - The KS is `base64url("v2|<partnerId>|<random>")` (so it starts `djJ8`), opaque here.
//! - The admin secret starts sessions of either type; the user secret only type 0 (USER).
//! - Unknown entry properties are ignored (Kaltura's deserializer reads only declared
//!   properties); read-only ones (`id`, `partnerId`, `status`, `createdAt`, `updatedAt`)
//!   are refused with `PROPERTY_VALIDATION_NOT_UPDATABLE` as `validateForInsert` does.
//! - `media.addContent` here accepts only `KalturaUrlResource`; an image entry becomes READY
//!   (2) at once (Kaltura downloads images synchronously), others IMPORT (0).
//! - `lose_next_answer_after_success` answers 503 with an HTML body, as a proxy would.

use super::{FakeApi, Received, Reply, json, param, path, query, serve};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PARTNER_ID: u64 = 2_345_678;
pub const ADMIN_SECRET: &str = "kaltura-admin-secret";
pub const USER_SECRET: &str = "kaltura-user-secret";

/// A media entry.
#[derive(Debug, Clone)]
pub struct KalturaEntry {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub reference_id: Option<String>,
    pub media_type: i64,
    /// `entryStatus`: 7 NO_CONTENT, 0 IMPORT, 2 READY.
    pub status: i64,
    /// `resource:url` of `media.addContent`.
    pub content_url: Option<String>,
    pub created_at: u64,
}

impl KalturaEntry {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "mediaType": self.media_type,
            "sourceType": 1,
            "plays": 0, "views": 0, "duration": 0, "msDuration": 0,
            "id": self.id,
            "partnerId": PARTNER_ID,
            "userId": "",
            "creatorId": "",
            "status": self.status,
            "moderationStatus": 6,
            "moderationCount": 0,
            "type": 1,
            "createdAt": self.created_at,
            "updatedAt": super::unix_now(),
            "rank": 0, "totalRank": 0, "votes": 0,
            "licenseType": -1,
            "version": 0,
            "rootEntryId": self.id,
            "objectType": "KalturaMediaEntry",
        });
        for (k, val) in [
            ("name", &self.name),
            ("description", &self.description),
            ("referenceId", &self.reference_id),
        ] {
            if let Some(s) = val {
                v[k] = json!(s);
            }
        }
        v
    }
}

#[derive(Default)]
struct State {
    ks_lifetime: Option<Duration>,
    sessions: HashMap<String, Instant>,
    sessions_started: usize,
    entries: BTreeMap<String, KalturaEntry>,
    adds: Vec<Option<String>>,
    content_adds: usize,
    fail_next: Option<String>,
    /// Lose the next successful answer of this action (`""`: any `media.*` action).
    lose_next: Option<String>,
}

pub struct Kaltura {
    pub api: FakeApi,
    state: Arc<Mutex<State>>,
}

/// An api_v3 exception (HTTP 200). `args` is `[]` when the error has no params.
fn exception(code: &str, message: &str, args: &[(&str, &str)]) -> Reply {
    eprintln!("Kaltura stand-in: exception {code}: {message}");
    let args = if args.is_empty() {
        json!([])
    } else {
        Value::Object(
            args.iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect::<Map<_, _>>(),
        )
    };
    json(
        200,
        &json!({"code": code, "message": message, "objectType": "KalturaAPIException", "args": args}),
    )
}

fn not_null(prop: &str) -> Reply {
    exception(
        "PROPERTY_VALIDATION_CANNOT_BE_NULL",
        &format!("The property \"{prop}\" cannot be null"),
        &[("PROP_NAME", prop)],
    )
}

fn missing(name: &str) -> Reply {
    exception(
        "MISSING_MANDATORY_PARAMETER",
        &format!("Missing parameter \"{name}\""),
        &[("PARAM_NAME", name)],
    )
}

fn invalid_ks(ksid: &str) -> Reply {
    exception(
        "INVALID_KS",
        &format!("Invalid KS \"{ksid}\", Error \"-1,INVALID_STR\""),
        &[
            ("KSID", ksid),
            ("ERR_CODE", "-1"),
            ("ERR_DESC", "INVALID_STR"),
        ],
    )
}

fn invalid_enum(value: &str, param: &str, enum_type: &str) -> Reply {
    exception(
        "INVALID_ENUM_VALUE",
        &format!(
            "Invalid enumeration value \"{value}\" for parameter \"{param}\", expecting enumeration type \"{enum_type}\""
        ),
        &[
            ("ENUM_VAL", value),
            ("PARAM_NAME", param),
            ("ENUM_TYPE", enum_type),
        ],
    )
}

/// Messages of the codes a test may inject with [`Kaltura::fail_next`].
fn known_message(code: &str) -> &'static str {
    match code {
        "LOCK_TIMED_OUT" => "Timed out while attempting to grab lock",
        "INTERNAL_SERVERL_ERROR" => "Internal server error occurred",
        "INTERNAL_DATABASE_ERROR" => "Internal database error",
        "MISSING_KS" => "Missing KS, session not established",
        _ => "Injected failure",
    }
}

/// Flattens a JSON body into api_v3's `a:b` parameter names.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}:{k}")
                };
                flatten(&name, x, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Null => {}
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// (service, action, params) of an api_v3 request.
fn parse(r: &Received) -> (String, String, Vec<(String, String)>) {
    let mut params = Vec::new();
    if super::content_type(r) == "application/json" {
        if let Ok(v) = serde_json::from_slice::<Value>(&r.raw) {
            flatten("", &v, &mut params);
        }
    } else {
        params = super::form(&r.raw);
    }
    // URL params win (array_replace_recursive($post, $_FILES, $urlParams)).
    let mut url_params = query(r);
    let segments: Vec<&str> = path(r)
        .trim_start_matches("/api_v3")
        .split('/')
        .filter(|s| !s.is_empty() && *s != "index.php")
        .collect();
    for pair in segments.chunks(2) {
        if let [k, v] = pair {
            url_params.push((k.to_string(), v.to_string()));
        }
    }
    params.retain(|(k, _)| !url_params.iter().any(|(u, _)| u == k));
    params.extend(url_params);
    let service = param(&params, "service").unwrap_or("").to_ascii_lowercase();
    let action = param(&params, "action").unwrap_or("").to_ascii_lowercase();
    (service, action, params)
}

impl State {
    fn check_ks(&self, params: &[(String, String)]) -> Result<(), Reply> {
        match param(params, "ks").filter(|k| !k.is_empty()) {
            None => Err(exception("MISSING_KS", known_message("MISSING_KS"), &[])),
            Some(ks) => match self.sessions.get(ks) {
                None => Err(invalid_ks("INVALID_STR")),
                Some(expiry) if Instant::now() >= *expiry => Err(invalid_ks("EXPIRED")),
                Some(_) => Ok(()),
            },
        }
    }

    fn session_start(&mut self, p: &[(String, String)]) -> Reply {
        let Some(secret) = param(p, "secret") else {
            return missing("secret");
        };
        let pid = param(p, "partnerId").unwrap_or("");
        let kind = param(p, "type").unwrap_or("0");
        if kind != "0" && kind != "2" {
            return invalid_enum(kind, "type", "KalturaSessionType");
        }
        let secret_ok = secret == ADMIN_SECRET || (secret == USER_SECRET && kind == "0");
        if pid != PARTNER_ID.to_string() || !secret_ok {
            return exception(
                "START_SESSION_ERROR",
                &format!("Error while starting session for partner [{pid}]"),
                &[("PID", pid)],
            );
        }
        let expiry = param(p, "expiry")
            .and_then(|e| e.parse::<u64>().ok())
            .filter(|e| *e > 0)
            .unwrap_or(86_400);
        let lifetime = self.ks_lifetime.unwrap_or(Duration::from_secs(expiry));
        use base64::Engine;
        let raw = format!("v2|{PARTNER_ID}|{}", super::random_from(48, super::ALNUM));
        let ks = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        self.sessions.insert(ks.clone(), Instant::now() + lifetime);
        self.sessions_started += 1;
        json(200, &json!(ks))
    }

    fn media_add(&mut self, p: &[(String, String)]) -> Reply {
        let entry: HashMap<&str, &str> = p
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("entry:")?, v.as_str())))
            .collect();
        if entry.is_empty() {
            return missing("entry");
        }
        if let Some(t) = entry
            .get("objectType")
            .filter(|t| **t != "KalturaMediaEntry")
        {
            return exception(
                "INVALID_OBJECT_TYPE",
                &format!("Invalid object type \"{t}\""),
                &[("INVALID_OBJ_TYPE", t)],
            );
        }
        for readonly in ["id", "partnerId", "status", "createdAt", "updatedAt"] {
            if entry.contains_key(readonly) {
                let prop = format!("KalturaMediaEntry::{readonly}");
                return exception(
                    "PROPERTY_VALIDATION_NOT_UPDATABLE",
                    &format!("The property \"{prop}\" cannot be updated"),
                    &[("PROP_NAME", &prop)],
                );
            }
        }
        let Some(media_type) = entry.get("mediaType") else {
            return not_null("KalturaMediaEntry::mediaType");
        };
        let valid = [1, 2, 5, 201, 202, 203, 204];
        let Some(media_type) = media_type.parse::<i64>().ok().filter(|m| valid.contains(m)) else {
            return invalid_enum(media_type, "mediaType", "KalturaMediaType");
        };
        let id = format!("0_{}", super::random_from(8, super::LOWER_ALNUM));
        let s = |k: &str| entry.get(k).map(|v| v.to_string());
        let e = KalturaEntry {
            id: id.clone(),
            name: s("name"),
            description: s("description"),
            reference_id: s("referenceId"),
            media_type,
            status: 7,
            content_url: None,
            created_at: super::unix_now(),
        };
        self.adds.push(e.name.clone());
        let reply = json(200, &e.to_json());
        self.entries.insert(id, e);
        reply
    }

    fn media_add_content(&mut self, p: &[(String, String)]) -> Reply {
        let Some(entry_id) = param(p, "entryId") else {
            return missing("entryId");
        };
        let resource_type = param(p, "resource:objectType");
        let url = param(p, "resource:url");
        let has_resource = p.iter().any(|(k, _)| k.starts_with("resource:"));
        if has_resource {
            match resource_type {
                None => {
                    return exception(
                        "OBJECT_TYPE_ABSTRACT",
                        "The object type \"KalturaResource\" is abstract, use one of the object implementations",
                        &[("OBJ_TYPE", "KalturaResource")],
                    );
                }
                Some("KalturaUrlResource") => {}
                Some(other) => {
                    return exception(
                        "RESOURCE_TYPE_NOT_SUPPORTED",
                        &format!("Resource type \"{other}\" not supported"),
                        &[("RES_TYPE", other)],
                    );
                }
            }
        }
        let Some(entry) = self.entries.get_mut(entry_id) else {
            return exception(
                "ENTRY_ID_NOT_FOUND",
                &format!("Entry id \"{entry_id}\" not found"),
                &[("ENTRY_ID", entry_id)],
            );
        };
        if entry.status != 7 {
            return exception(
                "ENTRY_ALREADY_WITH_CONTENT",
                "Entry already associated with content",
                &[],
            );
        }
        if has_resource {
            let Some(url) = url.filter(|u| !u.is_empty()) else {
                return not_null("KalturaUrlResource::url");
            };
            entry.content_url = Some(url.to_string());
            entry.status = if entry.media_type == 2 { 2 } else { 0 };
            self.content_adds += 1;
        }
        json(200, &entry.to_json())
    }

    fn media_get(&self, p: &[(String, String)]) -> Reply {
        let Some(entry_id) = param(p, "entryId") else {
            return missing("entryId");
        };
        match self.entries.get(entry_id) {
            Some(e) => json(200, &e.to_json()),
            None => exception(
                "ENTRY_ID_NOT_FOUND",
                &format!("Entry id \"{entry_id}\" not found"),
                &[("ENTRY_ID", entry_id)],
            ),
        }
    }

    fn handle(&mut self, r: &Received) -> Reply {
        if !path(r).starts_with("/api_v3") || !matches!(r.method.as_str(), "GET" | "POST") {
            return Reply::new(404, "Not Found");
        }
        let (service, action, p) = parse(r);
        if param(&p, "format") != Some("1") {
            return Reply::new(
                200,
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><xml><result><error><code>STAND_IN_SPEAKS_ONLY_FORMAT_1</code></error></result></xml>",
            )
            .header("content-type", "text/xml");
        }
        match (service.as_str(), action.as_str()) {
            ("session", "start") => self.session_start(&p),
            ("media", "add" | "addcontent" | "get") => {
                if let Some(code) = self.fail_next.take() {
                    return exception(&code, known_message(&code), &[]);
                }
                if let Err(reply) = self.check_ks(&p) {
                    return reply;
                }
                let reply = match action.as_str() {
                    "add" => self.media_add(&p),
                    "addcontent" => self.media_add_content(&p),
                    _ => self.media_get(&p),
                };
                let ok = !reply.body.contains("\"KalturaAPIException\"");
                let lose = self
                    .lose_next
                    .as_deref()
                    .is_some_and(|a| a.is_empty() || a == action);
                if ok && lose {
                    self.lose_next = None;
                    return Reply::new(
                        503,
                        "<html><body><h1>503 Service Unavailable</h1></body></html>",
                    )
                    .header("content-type", "text/html");
                }
                reply
            }
            ("session" | "media", _) => exception(
                "ACTION_DOES_NOT_EXISTS",
                &format!("Action \"{action}\" does not exists for service \"{service}\""),
                &[("ACTION_NAME", &action), ("SERVICE_NAME", &service)],
            ),
            _ => exception(
                "SERVICE_DOES_NOT_EXISTS",
                &format!("Service \"{service}\" does not exists"),
                &[("SRV_NAME", &service)],
            ),
        }
    }
}

impl Kaltura {
    pub async fn start() -> Self {
        let (api, state) = serve(State::default(), |s, _, r| s.handle(r)).await;
        Kaltura { api, state }
    }

    /// The service URL (`https://www.kaltura.com` in production); calls go to
    /// `<base>/api_v3/service/<service>/action/<action>`.
    pub fn base(&self) -> String {
        self.api.base.clone()
    }

    pub fn partner_id(&self) -> u64 {
        PARTNER_ID
    }

    pub fn admin_secret(&self) -> &'static str {
        ADMIN_SECRET
    }

    pub fn user_secret(&self) -> &'static str {
        USER_SECRET
    }

    /// Sessions started from now on live `lifetime`, whatever `expiry` asked for.
    pub fn set_ks_lifetime(&self, lifetime: Duration) {
        self.state.lock().unwrap().ks_lifetime = Some(lifetime);
    }

    /// Every KS issued so far is expired from now on.
    pub fn expire_sessions(&self) {
        let now = Instant::now();
        for expiry in self.state.lock().unwrap().sessions.values_mut() {
            *expiry = now;
        }
    }

    /// The next `media.*` call answers exception `code` with `args: []`, doing nothing.
    pub fn fail_next(&self, code: &str) {
        self.state.lock().unwrap().fail_next = Some(code.to_string());
    }

    /// The next `media.*` call that succeeds is performed but answered HTTP 503.
    pub fn lose_next_answer_after_success(&self) {
        self.state.lock().unwrap().lose_next = Some(String::new());
    }

    /// Like [`Kaltura::lose_next_answer_after_success`], for `action` only (lower case, e.g.
    /// `addcontent`).
    pub fn lose_next_answer_of(&self, action: &str) {
        self.state.lock().unwrap().lose_next = Some(action.to_ascii_lowercase());
    }

    pub fn entries(&self) -> BTreeMap<String, KalturaEntry> {
        self.state.lock().unwrap().entries.clone()
    }

    pub fn entry(&self, id: &str) -> Option<KalturaEntry> {
        self.state.lock().unwrap().entries.get(id).cloned()
    }

    pub fn sessions_started(&self) -> usize {
        self.state.lock().unwrap().sessions_started
    }

    /// Successful `media.add` calls with `entry:name` = `name`.
    pub fn media_adds_for(&self, name: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .adds
            .iter()
            .filter(|n| n.as_deref() == Some(name))
            .count()
    }

    /// Successful `media.add` calls.
    pub fn media_adds(&self) -> usize {
        self.state.lock().unwrap().adds.len()
    }

    /// Successful `media.addContent` calls that attached a resource.
    pub fn content_adds(&self) -> usize {
        self.state.lock().unwrap().content_adds
    }
}
