//! Stand-in of the StreamAMG CloudMatrix Upload API and of the S3 presigned URLs it hands out.
//!
//! Follows GitHub `StreamAMG/cloudmatrix-documentation-portal`, `reference/Upload-API.yaml`
//! (OpenAPI 3.1.0; last change `381494a5`, paths `POST /entry`, `PUT /multipart/start`,
//! `PUT /multipart/upload`, `PUT /multipart/complete`, security scheme `x-api-key`) and
//! `docs/Guides/Upload a media entry.md` (a plain `PUT` of the file to `uploadUrl`). The
//! presigned URLs behave as Amazon S3's PutObject / UploadPart (ETag = quoted MD5 of the
//! bytes; 403 XML errors), since the spec's `uploadUrl` examples are S3 presigned URLs.
//!
//! GUESSES (the spec is silent):
//! - `PUT /multipart/complete` declares no `security`; this stand-in still requires the
//!   key (stricter; a client that sends it everywhere passes either way).
//! - Error bodies of the multipart endpoints are undocumented: refusals use the `/entry`
//!   400 shape `{"status":400,"message":"Bad Request Exception"}` (unknown or finished
//!   `uploadId`, bad etags, a second complete).
//! - An unknown route answers 403 `{"message":"Missing Authentication Token"}` (AWS API
//!   Gateway's answer; the documented 403 `{"message":"Forbidden"}` is Gateway's key refusal).
//! - Complete requires `parts` in strictly ascending `partNumber` order (S3's
//!   `InvalidPartOrder` rule) and each `etag` exactly as the part PUT returned it, quotes
//!   included (the spec's example shows unquoted values; real S3 accepts both).
//! - `partNumber` must be an integer 1..=10000 (S3's range; the spec says only `number`).
//! - The presigned path is `/s3/<entryId>/<filename>` (or `/s3/<entryId>/<entryId>` when no
//!   filename is given) and `/s3/<uploadId>/part/<n>` for parts.
//! - `PUT /multipart/start` has no `filename` in the spec; one sent is ignored. The entry
//!   takes the `filename` of `/multipart/upload` or `/multipart/complete` when given.

use super::{FakeApi, Received, Reply, iso8601, json, md5_hex, path, query, serve};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The key [`StreamAmg::start`] expects in `x-api-key`.
pub const DEFAULT_KEY: &str = "amg-test-api-key";
/// Attribute ids configured by [`StreamAmg::start`] (the spec example's title and
/// description ids).
pub const TITLE_ATTRIBUTE: &str = "e078d72a-aad4-4b68-9227-e0bde0b35c6d";
pub const DESCRIPTION_ATTRIBUTE: &str = "57e816fb-03b7-4706-a99f-5c6ef8d18ada";

/// A created CloudMatrix entry.
#[derive(Debug, Clone)]
pub struct AmgEntry {
    pub filename: Option<String>,
    pub attributes: Value,
    pub publication: Value,
    /// The object as stored through the presigned URL(s); `None` until uploaded/completed.
    pub bytes: Option<Vec<u8>>,
    pub multipart: bool,
    /// `Content-Type` of the single PUT, when sent.
    pub content_type: Option<String>,
    /// The `language` query parameter of the create, when sent.
    pub language: Option<String>,
}

struct Upload {
    entry_id: String,
    parts: BTreeMap<u64, (String, Vec<u8>)>,
    done: bool,
}

#[derive(Clone)]
enum Target {
    Entry(String),
    Part(String, u64),
}

#[derive(Default)]
struct State {
    key: String,
    attribute_ids: HashSet<String>,
    entries: BTreeMap<String, AmgEntry>,
    uploads: HashMap<String, Upload>,
    /// Presigned path → what it stores, and the signatures issued for it.
    presigned: HashMap<String, (Target, Vec<String>)>,
    expire_next: bool,
    s3_puts: usize,
}

/// The CloudMatrix Upload API stand-in (clones share the server and its state).
#[derive(Clone)]
pub struct StreamAmg {
    pub api: FakeApi,
    state: Arc<Mutex<State>>,
}

fn bad() -> Reply {
    json(
        400,
        &json!({"status": 400, "message": "Bad Request Exception"}),
    )
}

fn refuse(why: &str) -> Reply {
    eprintln!("StreamAmg stand-in: 400: {why}");
    bad()
}

fn s3_error(code: &str, message: &str, extra: &str) -> Reply {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>{extra}<RequestId>{}</RequestId><HostId>{}</HostId></Error>",
        super::random_hex(16).to_uppercase(),
        super::random_from(56, super::ALNUM),
    );
    Reply::new(403, body).header("content-type", "application/xml")
}

fn non_empty_str(v: Option<&Value>) -> bool {
    v.and_then(Value::as_str).is_some_and(|s| !s.is_empty())
}

fn optional_str(v: Option<&Value>) -> bool {
    v.is_none() || non_empty_str(v)
}

fn unique(items: &[Value]) -> bool {
    let set: HashSet<String> = items.iter().map(Value::to_string).collect();
    set.len() == items.len()
}

/// Checks the `/entry` and `/multipart/start` body schema (not the attribute ids).
fn check_entry_body(body: &Value) -> Result<(), String> {
    let obj = body.as_object().ok_or("body is not a JSON object")?;
    let attributes = obj
        .get("attributes")
        .and_then(Value::as_array)
        .ok_or("attributes missing or not an array")?;
    if attributes.is_empty() || !unique(attributes) {
        return Err("attributes empty or not unique".into());
    }
    for a in attributes {
        let a = a.as_object().ok_or("attribute not an object")?;
        if !non_empty_str(a.get("id")) || !optional_str(a.get("value")) {
            return Err("attribute id/value".into());
        }
        if let Some(items) = a.get("items") {
            let items = items.as_array().ok_or("items not an array")?;
            if items.is_empty() || !unique(items) {
                return Err("items empty or not unique".into());
            }
            for i in items {
                let i = i.as_object().ok_or("item not an object")?;
                if i.len() != 1 || !non_empty_str(i.get("value")) {
                    return Err("item must be exactly {value}".into());
                }
            }
        }
    }
    let publication = obj
        .get("publication")
        .and_then(Value::as_object)
        .ok_or("publication missing or not an object")?;
    if !publication.get("publish").is_some_and(Value::is_boolean) {
        return Err("publication.publish missing or not a boolean".into());
    }
    if !non_empty_str(publication.get("from")) || !optional_str(publication.get("to")) {
        return Err("publication.from/to".into());
    }
    if let Some(config) = publication.get("config") {
        let config = config.as_array().ok_or("config not an array")?;
        if config.is_empty() || !unique(config) {
            return Err("config empty or not unique".into());
        }
        for c in config {
            let c = c.as_object().ok_or("config item not an object")?;
            let region = c.get("region").and_then(Value::as_array);
            if !non_empty_str(c.get("target"))
                || !optional_str(c.get("from"))
                || !optional_str(c.get("to"))
                || !region.is_some_and(|r| !r.is_empty() && unique(r))
            {
                return Err("config target/region".into());
            }
            for r in region.into_iter().flatten() {
                let ok = r.as_object().is_some_and(|r| {
                    non_empty_str(r.get("id"))
                        && optional_str(r.get("from"))
                        && optional_str(r.get("to"))
                });
                if !ok {
                    return Err("region item".into());
                }
            }
        }
    }
    Ok(())
}

fn presign_query(signature: &str) -> String {
    let now = super::unix_now();
    let iso = iso8601(now);
    let day: String = iso[..10].replace('-', "");
    let stamp = format!("{day}T{}Z", iso[11..19].replace(':', ""));
    format!(
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIASTANDIN0000000000%2F{day}%2Feu-west-2%2Fs3%2Faws4_request&X-Amz-Date={stamp}&X-Amz-Expires=1800&X-Amz-Signature={signature}&X-Amz-SignedHeaders=host"
    )
}

const KEY_SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

impl State {
    /// Registers a presigned URL for `target` at `path`; returns the full URL.
    fn presign(&mut self, base: &str, path: String, target: Target) -> String {
        let signature = super::random_hex(64);
        let entry = self
            .presigned
            .entry(path.clone())
            .or_insert_with(|| (target, Vec::new()));
        entry.1.push(signature.clone());
        format!("{base}{path}?{}", presign_query(&signature))
    }

    fn create(&mut self, r: &Received, multipart: bool) -> Result<String, Reply> {
        let body: Value = serde_json::from_slice(&r.raw).map_err(|_| refuse("malformed JSON"))?;
        check_entry_body(&body).map_err(|why| refuse(&why))?;
        if !multipart && !optional_str(body.get("filename")) {
            return Err(refuse("filename not a non-empty string"));
        }
        let failed: Vec<Value> = body["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["id"].as_str())
            .filter(|id| !self.attribute_ids.contains(*id))
            .map(|id| json!({"id": id, "reason": "Attribute identifier is invalid"}))
            .collect();
        if !failed.is_empty() {
            eprintln!("StreamAmg stand-in: 400: unknown attribute ids {failed:?}");
            return Err(json(
                400,
                &json!({"status": 400, "message": "Failed to create attributes", "failed": failed}),
            ));
        }
        let id = format!("0_{}", super::random_from(8, super::LOWER_ALNUM));
        let filename = if multipart {
            None
        } else {
            body["filename"].as_str().map(str::to_string)
        };
        self.entries.insert(
            id.clone(),
            AmgEntry {
                filename,
                attributes: body["attributes"].clone(),
                publication: body["publication"].clone(),
                bytes: None,
                multipart,
                content_type: None,
                language: super::param(&query(r), "language").map(str::to_string),
            },
        );
        Ok(id)
    }

    fn name_entry(&mut self, entry_id: &str, filename: Option<&str>) {
        if let (Some(e), Some(f)) = (self.entries.get_mut(entry_id), filename) {
            e.filename.get_or_insert_with(|| f.to_string());
        }
    }

    fn s3_put(&mut self, r: &Received) -> Reply {
        let sig_mismatch = || {
            s3_error(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
                "",
            )
        };
        let Some((target, signatures)) = self.presigned.get(path(r)).cloned() else {
            return sig_mismatch();
        };
        let given = super::param(&query(r), "X-Amz-Signature").map(str::to_string);
        if r.method != "PUT" || !given.is_some_and(|s| signatures.contains(&s)) {
            return sig_mismatch();
        }
        if std::mem::take(&mut self.expire_next) {
            let now = super::unix_now();
            return s3_error(
                "AccessDenied",
                "Request has expired",
                &format!(
                    "<X-Amz-Expires>1800</X-Amz-Expires><Expires>{}</Expires><ServerTime>{}</ServerTime>",
                    iso8601(now - 60),
                    iso8601(now)
                ),
            );
        }
        let etag = format!("\"{}\"", md5_hex(&r.raw));
        match target {
            Target::Entry(id) => {
                let Some(entry) = self.entries.get_mut(&id) else {
                    return sig_mismatch();
                };
                entry.bytes = Some(r.raw.to_vec());
                entry.content_type = r.header("content-type").map(str::to_string);
            }
            Target::Part(upload_id, n) => {
                let Some(upload) = self.uploads.get_mut(&upload_id).filter(|u| !u.done) else {
                    let mut reply = s3_error(
                        "NoSuchUpload",
                        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
                        &format!("<UploadId>{upload_id}</UploadId>"),
                    );
                    reply.status = 404;
                    return reply;
                };
                upload.parts.insert(n, (etag.clone(), r.raw.to_vec()));
            }
        }
        self.s3_puts += 1;
        Reply::new(200, "").header("etag", etag)
    }

    fn part_url(&mut self, base: &str, r: &Received) -> Reply {
        let Ok(body) = serde_json::from_slice::<Value>(&r.raw) else {
            return refuse("malformed JSON");
        };
        let n = body.get("partNumber").and_then(Value::as_u64);
        let Some(n) = n.filter(|n| (1..=10_000).contains(n)) else {
            return refuse("partNumber missing or not an integer 1..=10000");
        };
        let Some(upload_id) = body.get("uploadId").and_then(Value::as_str) else {
            return refuse("uploadId missing or not a string");
        };
        if !body.get("filename").is_none_or(Value::is_string) {
            return refuse("filename not a string");
        }
        let Some(entry_id) = self
            .uploads
            .get(upload_id)
            .filter(|u| !u.done)
            .map(|u| u.entry_id.clone())
        else {
            return refuse("unknown or completed uploadId");
        };
        self.name_entry(&entry_id, body["filename"].as_str());
        let url = self.presign(
            base,
            format!("/s3/{upload_id}/part/{n}"),
            Target::Part(upload_id.to_string(), n),
        );
        json(
            200,
            &json!({"partNumber": n, "uploadId": upload_id, "uploadUrl": url}),
        )
    }

    fn complete(&mut self, r: &Received) -> Reply {
        let Ok(body) = serde_json::from_slice::<Value>(&r.raw) else {
            return refuse("malformed JSON");
        };
        if !body.get("filename").is_none_or(Value::is_string) {
            return refuse("filename not a string");
        }
        let Some(upload_id) = body.get("uploadId").and_then(Value::as_str) else {
            return refuse("uploadId missing or not a string");
        };
        let Some(parts) = body.get("parts").and_then(Value::as_array) else {
            return refuse("parts missing or not an array");
        };
        if parts.is_empty() || !unique(parts) {
            return refuse("parts empty or not unique");
        }
        let Some(upload) = self.uploads.get(upload_id).filter(|u| !u.done) else {
            return refuse("unknown or completed uploadId");
        };
        let mut object = Vec::new();
        let mut last = 0;
        for p in parts {
            let n = p.get("partNumber").and_then(Value::as_u64);
            let etag = p.get("etag").and_then(Value::as_str);
            let (Some(n), Some(etag)) = (n, etag.filter(|e| !e.is_empty())) else {
                return refuse("part needs partNumber (integer) and etag (string)");
            };
            if n <= last {
                return refuse("parts not in ascending partNumber order");
            }
            last = n;
            match upload.parts.get(&n) {
                Some((stored, bytes)) if stored == etag => object.extend_from_slice(bytes),
                Some((stored, _)) => {
                    return refuse(&format!("part {n}: etag {etag} is not {stored}"));
                }
                None => return refuse(&format!("part {n} was never uploaded")),
            }
        }
        let entry_id = upload.entry_id.clone();
        if let Some(u) = self.uploads.get_mut(upload_id) {
            u.done = true;
        }
        self.name_entry(&entry_id, body["filename"].as_str());
        if let Some(e) = self.entries.get_mut(&entry_id) {
            e.bytes = Some(object);
        }
        // The spec documents `200: OK` with no body.
        Reply::new(200, "")
    }

    fn handle(&mut self, base: &str, r: &Received) -> Reply {
        let p = path(r);
        if p.starts_with("/s3/") {
            return self.s3_put(r);
        }
        let known = matches!(
            (r.method.as_str(), p),
            ("POST", "/entry")
                | ("PUT", "/multipart/start")
                | ("PUT", "/multipart/upload")
                | ("PUT", "/multipart/complete")
        );
        if !known {
            return json(403, &json!({"message": "Missing Authentication Token"}));
        }
        if r.header("x-api-key") != Some(self.key.as_str()) {
            return json(403, &json!({"message": "Forbidden"}));
        }
        match p {
            "/entry" => match self.create(r, false) {
                Ok(id) => {
                    let name = self.entries[&id].filename.clone().unwrap_or(id.clone());
                    let key = percent_encoding::utf8_percent_encode(&name, KEY_SET).to_string();
                    let url =
                        self.presign(base, format!("/s3/{id}/{key}"), Target::Entry(id.clone()));
                    json(
                        200,
                        &json!({"status": 200, "message": "Successfully uploaded", "entryId": id, "uploadUrl": url}),
                    )
                }
                Err(reply) => reply,
            },
            "/multipart/start" => match self.create(r, true) {
                Ok(id) => {
                    let upload_id = super::new_uuid();
                    self.uploads.insert(
                        upload_id.clone(),
                        Upload {
                            entry_id: id.clone(),
                            parts: BTreeMap::new(),
                            done: false,
                        },
                    );
                    json(200, &json!({"entryId": id, "uploadId": upload_id}))
                }
                Err(reply) => reply,
            },
            "/multipart/upload" => self.part_url(base, r),
            _ => self.complete(r),
        }
    }
}

impl StreamAmg {
    /// Expects [`DEFAULT_KEY`]; knows [`TITLE_ATTRIBUTE`] and [`DESCRIPTION_ATTRIBUTE`].
    pub async fn start() -> Self {
        Self::start_with(DEFAULT_KEY, &[TITLE_ATTRIBUTE, DESCRIPTION_ATTRIBUTE]).await
    }

    pub async fn start_with_key(key: &str) -> Self {
        Self::start_with(key, &[TITLE_ATTRIBUTE, DESCRIPTION_ATTRIBUTE]).await
    }

    /// Expects `key` in `x-api-key`; `attribute_ids` are the customer's configured attributes.
    pub async fn start_with(key: &str, attribute_ids: &[&str]) -> Self {
        let (api, state) = serve(
            State {
                key: key.to_string(),
                attribute_ids: attribute_ids.iter().map(|s| s.to_string()).collect(),
                ..State::default()
            },
            |s, base, r| s.handle(base, r),
        )
        .await;
        StreamAmg { api, state }
    }

    /// The API base URL (`https://cloudmatrix.api.streamamg.com` in production).
    pub fn base(&self) -> String {
        self.api.base.clone()
    }

    pub fn api_key(&self) -> String {
        self.state.lock().unwrap().key.clone()
    }

    /// Configures one more valid attribute id.
    pub fn add_attribute(&self, id: &str) {
        self.state
            .lock()
            .unwrap()
            .attribute_ids
            .insert(id.to_string());
    }

    /// Entries by entry id.
    pub fn entries(&self) -> BTreeMap<String, AmgEntry> {
        self.state.lock().unwrap().entries.clone()
    }

    pub fn entry(&self, id: &str) -> Option<AmgEntry> {
        self.state.lock().unwrap().entries.get(id).cloned()
    }

    /// Successful `POST /entry` + `PUT /multipart/start` calls (= entries created).
    pub fn creates(&self) -> usize {
        self.state.lock().unwrap().entries.len()
    }

    /// Entries created for `filename` (a multipart entry takes its name from
    /// `/multipart/upload` or `/multipart/complete`).
    pub fn creates_for(&self, filename: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .entries
            .values()
            .filter(|e| e.filename.as_deref() == Some(filename))
            .count()
    }

    /// Successful PUTs to presigned URLs (single objects and parts).
    pub fn s3_puts(&self) -> usize {
        self.state.lock().unwrap().s3_puts
    }

    /// The next PUT to any presigned URL answers S3's 403 "Request has expired", once.
    pub fn expire_next_upload(&self) {
        self.state.lock().unwrap().expire_next = true;
    }
}
