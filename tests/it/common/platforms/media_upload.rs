//! Stand-in of an Acrobits "Media Upload" web service (a provider-side service the
//! Acrobits client calls).
//!
//! Follows https://doc.acrobits.net/api/client/media_upload.html (also
//! `/_sources/api/client/media_upload.rst.txt`): "The content type of the request can be
//! either POST or PUT, the content type is always multipart/form-data"; parameters `to`,
//! `description` (optional, UTF-8), `media_size` ("The size in bytes of the binary
//! representation of the media"), `content_type` ("Either image/jpeg or video/mp4");
//! `genericMediaUploadUrl` example
//! `https://example.com/upload_message?from=%account[username]%&password=%account[password]%&to=%sms_to%&media_size=456000`
//! (so `from`/`password` travel in the query string). `media_url` ("The URL returned from
//! the media upload web service from where the actual media can be downloaded") is from
//! https://doc.acrobits.net/api/client/media_ref_send.html.
//!
//! UNVERIFIED / GUESSES (the stored copies of the page end before its response section):
//! - The success answer is JSON `{"media_url":"…"}` (HTTP 200); a refusal is HTTP 4xx
//!   `{"message":"…"}` (401 bad credentials, 400 otherwise, 403 for `refuse_next`).
//! - Every parameter may be in the query string or a form field (the query wins); the
//!   media is the part carrying a `filename`, or else the one part whose name is not a
//!   parameter. When that part has a `Content-Type`, it must equal `content_type`.
//! - Path `/upload_message` (the doc's example); the media is then served (GET) from a
//!   second local server at `<media base>/media/<id>`.

use super::{
    BlobServer, FakeApi, Received, Reply, json, multipart_form, param, path, query, serve,
};
use serde_json::json;
use std::sync::{Arc, Mutex};

pub const USERNAME: &str = "alice";
pub const PASSWORD: &str = "media-upload-password";
/// Where uploads are taken.
pub const UPLOAD_PATH: &str = "/upload_message";

/// One accepted upload.
#[derive(Debug, Clone)]
pub struct MediaUploadRecord {
    pub id: String,
    pub from: String,
    pub to: String,
    pub description: Option<String>,
    pub content_type: String,
    pub media_size: u64,
    pub filename: Option<String>,
    pub bytes: Vec<u8>,
    pub media_url: String,
    pub method: String,
}

struct State {
    uploads: Vec<MediaUploadRecord>,
    refuse_next: Option<String>,
    blobs: BlobServer,
}

pub struct MediaUpload {
    pub api: FakeApi,
    state: Arc<Mutex<State>>,
}

fn refusal(status: u16, message: &str) -> Reply {
    eprintln!("MediaUpload stand-in: {status}: {message}");
    json(status, &json!({"message": message}))
}

const PARAMS: [&str; 6] = [
    "from",
    "password",
    "to",
    "description",
    "media_size",
    "content_type",
];

impl State {
    fn upload(&mut self, r: &Received) -> Reply {
        let ctype = r.header("content-type").unwrap_or("");
        if super::content_type(r) != "multipart/form-data" {
            return refusal(400, "The request must be multipart/form-data");
        }
        let Some(parts) = multipart_form(ctype, &r.raw) else {
            return refusal(400, "Malformed multipart/form-data body");
        };
        let mut params = query(r);
        for p in &parts {
            let is_param = PARAMS.contains(&p.name.as_str()) && p.filename.is_none();
            if is_param && !params.iter().any(|(k, _)| *k == p.name) {
                let Ok(v) = String::from_utf8(p.data.clone()) else {
                    return refusal(400, &format!("{} is not UTF-8", p.name));
                };
                params.push((p.name.clone(), v));
            }
        }
        if param(&params, "from") != Some(USERNAME) || param(&params, "password") != Some(PASSWORD)
        {
            return refusal(401, "Invalid username or password");
        }
        if let Some(message) = self.refuse_next.take() {
            return refusal(403, &message);
        }
        let Some(to) = param(&params, "to").filter(|t| !t.is_empty()) else {
            return refusal(400, "Missing parameter to");
        };
        let Some(size) = param(&params, "media_size") else {
            return refusal(400, "Missing parameter media_size");
        };
        let Ok(size) = size.parse::<u64>() else {
            return refusal(400, "media_size is not a number");
        };
        let content_type = param(&params, "content_type").unwrap_or("");
        if !["image/jpeg", "video/mp4"].contains(&content_type) {
            return refusal(400, "content_type must be image/jpeg or video/mp4");
        }
        let with_name: Vec<_> = parts.iter().filter(|p| p.filename.is_some()).collect();
        let media = if with_name.is_empty() {
            parts
                .iter()
                .filter(|p| !PARAMS.contains(&p.name.as_str()))
                .collect()
        } else {
            with_name
        };
        let [media] = media.as_slice() else {
            return refusal(400, "Expected exactly one media part");
        };
        if media.data.len() as u64 != size {
            return refusal(
                400,
                &format!(
                    "media_size {size} does not match the media's {} bytes",
                    media.data.len()
                ),
            );
        }
        if media
            .content_type
            .as_deref()
            .is_some_and(|c| c != content_type)
        {
            return refusal(
                400,
                "The media part's Content-Type does not match content_type",
            );
        }
        let id = super::random_from(16, super::LOWER_ALNUM);
        let media_url = self
            .blobs
            .put(&format!("media/{id}"), content_type, media.data.clone());
        self.uploads.push(MediaUploadRecord {
            id,
            from: USERNAME.to_string(),
            to: to.to_string(),
            description: param(&params, "description").map(str::to_string),
            content_type: content_type.to_string(),
            media_size: size,
            filename: media.filename.clone(),
            bytes: media.data.clone(),
            media_url: media_url.clone(),
            method: r.method.clone(),
        });
        json(200, &json!({"media_url": media_url}))
    }

    fn handle(&mut self, r: &Received) -> Reply {
        match r.method.as_str() {
            "POST" | "PUT" if path(r) == UPLOAD_PATH => self.upload(r),
            _ => refusal(404, "Not found"),
        }
    }
}

impl MediaUpload {
    /// Accepts `from=USERNAME`, `password=PASSWORD`.
    pub async fn start() -> Self {
        let (api, state) = serve(
            State {
                uploads: Vec::new(),
                refuse_next: None,
                blobs: BlobServer::start().await,
            },
            |s, _, r| s.handle(r),
        )
        .await;
        MediaUpload { api, state }
    }

    /// The server's base URL; uploads go to `<base>/upload_message`.
    pub fn base(&self) -> String {
        self.api.base.clone()
    }

    /// `<base>/upload_message`.
    pub fn upload_url(&self) -> String {
        format!("{}{UPLOAD_PATH}", self.api.base)
    }

    pub fn username(&self) -> &'static str {
        USERNAME
    }

    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    /// The next upload with good credentials is refused with `message` (HTTP 403).
    pub fn refuse_next(&self, message: &str) {
        self.state.lock().unwrap().refuse_next = Some(message.to_string());
    }

    pub fn uploads(&self) -> Vec<MediaUploadRecord> {
        self.state.lock().unwrap().uploads.clone()
    }

    /// Uploads whose media part was named `filename`.
    pub fn creates_for(&self, filename: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .uploads
            .iter()
            .filter(|u| u.filename.as_deref() == Some(filename))
            .count()
    }
}
