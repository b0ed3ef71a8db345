//! Test stand-ins of the video platforms' HTTP APIs that connectors call, each written
//! from the platform's published reference (named in each module's doc comment).
//!
//! Every stand-in runs on a [`FakeApi`] (so `api.received` still records every request),
//! answers through its `route`, keeps its state in `Arc<Mutex<..>>`, checks auth, required
//! fields and types, answers with the documented shapes, and counts creates so a test can
//! assert "no create twice for one file". Details the references leave open are marked
//! GUESS / UNVERIFIED where they are chosen. Refusals are also printed to stderr (the wire
//! shape stays the documented one) so a failing test shows why.

pub mod jwplayer;
pub mod kaltura;
pub mod media_upload;
pub mod mux;
pub mod streamamg;
pub mod streamdiver;

// Re-exports for tests; unused in most test binaries.
#[allow(unused_imports)]
pub use jwplayer::{JwMedia, JwPlayer};
#[allow(unused_imports)]
pub use kaltura::{Kaltura, KalturaEntry};
#[allow(unused_imports)]
pub use media_upload::{MediaUpload, MediaUploadRecord};
#[allow(unused_imports)]
pub use mux::{Mux, MuxAsset};
#[allow(unused_imports)]
pub use streamamg::{AmgEntry, StreamAmg};
#[allow(unused_imports)]
pub use streamdiver::{Streamdiver, StreamdiverFile, StreamdiverImport};

pub(crate) use super::{FakeApi, Received, Reply};
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

/// Every request is answered by `handler` (a stand-in owns its whole server).
pub(crate) fn install(api: &FakeApi, handler: impl Fn(&Received) -> Reply + Send + Sync + 'static) {
    api.route(move |r| Some(handler(r)));
}

/// Starts a stand-in's server: every request is answered by `handle` with the stand-in's
/// `state` (shared with the test, which inspects it) and the server's base URL.
pub(crate) async fn serve<S: Send + 'static>(
    state: S,
    handle: impl Fn(&mut S, &str, &Received) -> Reply + Send + Sync + 'static,
) -> (FakeApi, std::sync::Arc<std::sync::Mutex<S>>) {
    let api = FakeApi::start().await;
    let state = std::sync::Arc::new(std::sync::Mutex::new(state));
    let (shared, base) = (state.clone(), api.base.clone());
    install(&api, move |r| handle(&mut shared.lock().unwrap(), &base, r));
    (api, state)
}

/// A JSON answer.
pub(crate) fn json(status: u16, body: &Value) -> Reply {
    Reply::new(status, body.to_string()).header("content-type", "application/json")
}

/// The request's path, without the query.
pub(crate) fn path(r: &Received) -> &str {
    r.uri.split('?').next().unwrap_or("")
}

/// The request's query parameters, decoded.
pub(crate) fn query(r: &Received) -> Vec<(String, String)> {
    match r.uri.split_once('?') {
        Some((_, q)) => form(q.as_bytes()),
        None => Vec::new(),
    }
}

/// `application/x-www-form-urlencoded` pairs, decoded.
pub(crate) fn form(raw: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}

/// The first value of `name` in `pairs`.
pub(crate) fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The request's content type (lower-cased, without parameters).
pub(crate) fn content_type(r: &Received) -> String {
    r.header("content-type")
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `Basic` credentials of the request, decoded.
pub(crate) fn basic_auth(r: &Received) -> Option<(String, String)> {
    use base64::Engine;
    let value = r.header("authorization")?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// The `Bearer` token of the request.
pub(crate) fn bearer(r: &Received) -> Option<&str> {
    let value = r.header("authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// `len` random characters from `alphabet`.
pub(crate) fn random_from(len: usize, alphabet: &[u8]) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

pub(crate) const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
pub(crate) const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `len` random hex digits.
pub(crate) fn random_hex(len: usize) -> String {
    random_from(len, b"0123456789abcdef")
}

/// A new (time-ordered, v7) UUID, as text.
pub(crate) fn new_uuid() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (UTC).
pub(crate) fn iso8601(unix: u64) -> String {
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// MD5 of `data`, lower-case hex (RFC 1321). Written here because `md-5` is not a
/// dependency of this crate; S3 ETags of single-part PUTs are this value in quotes.
pub fn md5_hex(data: &[u8]) -> String {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut h = [0x67452301u32, 0xefcdab89, 0x98badcfe, 0x10325476];
    let mut block = |chunk: &[u8]| {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let [mut a, mut b, mut c, mut d] = h;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d]) {
            *x = x.wrapping_add(y);
        }
    };
    let full = data.len() / 64 * 64;
    for chunk in data[..full].chunks(64) {
        block(chunk);
    }
    let mut tail = data[full..].to_vec();
    tail.push(0x80);
    while tail.len() % 64 != 56 {
        tail.push(0);
    }
    tail.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_le_bytes());
    for chunk in tail.chunks(64) {
        block(chunk);
    }
    h.iter()
        .flat_map(|x| x.to_le_bytes())
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One part of a `multipart/form-data` body.
#[derive(Debug, Clone)]
pub struct FormPart {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The parts of a `multipart/form-data` body (RFC 7578); `None` when it is malformed.
pub(crate) fn multipart_form(content_type: &str, body: &[u8]) -> Option<Vec<FormPart>> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))?
        .trim_matches('"');
    let delim = format!("--{boundary}").into_bytes();
    let inner = [b"\r\n".as_slice(), &delim].concat();
    let mut pos = find(body, &delim, 0)? + delim.len();
    let mut parts = Vec::new();
    loop {
        if body[pos..].starts_with(b"--") {
            return Some(parts);
        }
        pos = pos
            .checked_add(2)
            .filter(|_| body[pos..].starts_with(b"\r\n"))?;
        let end = find(body, &inner, pos)?;
        let part = &body[pos..end];
        let split = find(part, b"\r\n\r\n", 0)?;
        let head = std::str::from_utf8(&part[..split]).ok()?;
        let (mut name, mut filename, mut ctype) = (None, None, None);
        for line in head.split("\r\n") {
            let (h, v) = line.split_once(':')?;
            match h.trim().to_ascii_lowercase().as_str() {
                "content-disposition" => {
                    for p in v.split(';').map(str::trim) {
                        if let Some(n) = p.strip_prefix("name=") {
                            name = Some(n.trim_matches('"').to_string());
                        } else if let Some(f) = p.strip_prefix("filename=") {
                            filename = Some(f.trim_matches('"').to_string());
                        }
                    }
                }
                "content-type" => ctype = Some(v.trim().to_string()),
                _ => {}
            }
        }
        parts.push(FormPart {
            name: name?,
            filename,
            content_type: ctype,
            data: part[split + 4..].to_vec(),
        });
        pos = end + inner.len();
    }
}

/// A served body and its content type.
type Blob = (String, Vec<u8>);

/// A minimal HTTP/1.1 server answering `GET /<key>` with stored bytes (the `FakeApi`'s
/// `Reply` carries only text bodies).
#[derive(Clone, Default)]
pub struct BlobServer {
    pub base: String,
    blobs: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Blob>>>,
}

impl BlobServer {
    /// Starts the server on a loopback port.
    pub async fn start() -> BlobServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind blob server");
        let server = BlobServer {
            base: format!("http://{}", listener.local_addr().expect("addr")),
            blobs: Default::default(),
        };
        let blobs = server.blobs.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let blobs = blobs.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while find(&head, b"\r\n\r\n", 0).is_none() {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head);
                    let mut words = line.split_whitespace();
                    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let key = target
                        .split('?')
                        .next()
                        .unwrap_or("")
                        .trim_start_matches('/');
                    let found = blobs.lock().unwrap().get(key).cloned();
                    let (status, ctype, body) = match found {
                        Some((ctype, bytes)) if method == "GET" => ("200 OK", ctype, bytes),
                        _ => (
                            "404 Not Found",
                            "text/plain".to_string(),
                            b"not found".to_vec(),
                        ),
                    };
                    let header = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(header.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        server
    }

    /// Serves `bytes` at `<base>/<key>`; returns that URL.
    pub fn put(&self, key: &str, content_type: &str, bytes: Vec<u8>) -> String {
        self.blobs
            .lock()
            .unwrap()
            .insert(key.to_string(), (content_type.to_string(), bytes));
        format!("{}/{key}", self.base)
    }
}

/// A plain client for driving stand-ins directly.
pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// An answer's status and body (JSON, or the text as a JSON string).
pub async fn body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A shipped connector's text from `config/connectors/`, unchanged.
pub fn example(name: &str) -> String {
    let path = format!("{}/config/connectors/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).expect("example exists")
}

/// Waits until `n` outbox entries are delivered; fails at once on a dead letter.
pub async fn wait_delivered(h: &super::Harness, n: usize) {
    use ingest_bridge::state::OutboxStore as _;
    let outbox = ingest_bridge::notify::Outbox::open(&h.config.server.data_dir).expect("outbox");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let all = outbox.list(None).await.expect("list");
        let dead: Vec<_> = all.iter().filter(|e| e.state == "dead").collect();
        assert!(dead.is_empty(), "dead letters: {dead:?}");
        if all.iter().filter(|e| e.state == "delivered").count() >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered: {all:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// GETs a presigned URL as a platform would; the bytes.
pub async fn fetch(url: &str) -> Vec<u8> {
    let response = reqwest::get(url).await.expect("presigned GET");
    assert!(response.status().is_success(), "{}", response.status());
    response.bytes().await.expect("body").to_vec()
}
