//! Test harness: an in-process s3s-fs store, an in-process stand-in for the ingest API, and
//! a bridge configured against both, driven by real client crates.

mod builder;
// The stand-ins model each platform whole: some of what they record no test reads yet.
#[allow(dead_code)]
pub mod platforms;
/// The library's throwaway PostgreSQL 15 server, compiled here from the same file (the
/// library's copy is `#[cfg(test)]`, out of reach of integration tests).
#[path = "../../../src/state/postgres/test_server.rs"]
pub mod postgres;
pub mod raw_ftp;
pub mod sftp_wire;

pub use builder::{HarnessBuilder, start_store};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ingest_bridge::config::Config;
use ingest_bridge::metrics::Metrics;
use ingest_bridge::server::Bridge;
use ingest_bridge::storage::embedded::EmbeddedStore;
use ingest_bridge::storage::{Connection, Storage};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use suppaftp::tokio::AsyncFtpStream;
use tempfile::TempDir;
use tokio::net::TcpListener;

/// Password of every test user.
pub const PASSWORD: &str = "test-password";
/// argon2id of PASSWORD (precomputed: hashing is the slow part of a login).
pub fn password_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| ingest_bridge::auth::hash_password(PASSWORD).expect("hash"))
}

/// One request the stand-in API received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Lower-cased header names and values.
    pub headers: Vec<(String, String)>,
    /// The JSON body (Null when not JSON).
    pub body: serde_json::Value,
    /// The body as received.
    pub raw: Bytes,
}

/// A scripted answer of the stand-in API.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    /// An answer with `status` and `body`, no headers.
    pub fn new(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// This answer with the header `name: value` added.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP server standing in for the platform's upload-complete API.
#[derive(Clone)]
pub struct FakeApi {
    pub url: String,
    /// `http://host:port` without a path.
    pub base: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Statuses to answer with, in order; 200 once empty.
    pub script: Arc<Mutex<VecDeque<u16>>>,
    /// Full answers, used before `script`.
    pub replies: Arc<Mutex<VecDeque<Reply>>>,
    /// Answers chosen by the request (method, path): checked first.
    pub route: Arc<Mutex<Option<RouteFn>>>,
    /// Each answer waits this long (a slow API).
    pub delay: Arc<Mutex<Duration>>,
    /// Requests being answered now, and the most ever at once.
    pub concurrent: Arc<std::sync::atomic::AtomicUsize>,
    pub max_concurrent: Arc<std::sync::atomic::AtomicUsize>,
    /// Nanoseconds spent answering, all requests together (the API's own latency).
    pub busy_nanos: Arc<std::sync::atomic::AtomicU64>,
}

/// Picks an answer from a request.
pub type RouteFn = Arc<dyn Fn(&Received) -> Option<Reply> + Send + Sync>;

impl FakeApi {
    /// Starts a stand-in on a loopback port; it answers 200 `{}` until told otherwise.
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let api = FakeApi {
            url: format!("{base}/upload-complete"),
            base,
            received: Arc::default(),
            script: Arc::default(),
            replies: Arc::default(),
            route: Arc::default(),
            delay: Arc::default(),
            concurrent: Arc::default(),
            max_concurrent: Arc::default(),
            busy_nanos: Arc::default(),
        };
        let shared = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let api = shared.clone();
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let api = api.clone();
                    async move {
                        let began = std::time::Instant::now();
                        let now = api.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
                        api.max_concurrent.fetch_max(now, Ordering::SeqCst);
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(n, v)| {
                                (n.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                            })
                            .collect();
                        let method = req.method().to_string();
                        let uri = req.uri().to_string();
                        let raw = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let body = serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
                        let received = Received {
                            method,
                            uri,
                            headers,
                            body,
                            raw,
                        };
                        let delay = *api.delay.lock().unwrap();
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let routed = api
                            .route
                            .lock()
                            .unwrap()
                            .clone()
                            .and_then(|route| route(&received));
                        api.received.lock().unwrap().push(received);
                        let reply = routed
                            .or_else(|| api.replies.lock().unwrap().pop_front())
                            .unwrap_or_else(|| {
                                let status = api.script.lock().unwrap().pop_front().unwrap_or(200);
                                Reply::new(status, "{}")
                            });
                        let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
                        *resp.status_mut() = hyper::StatusCode::from_u16(reply.status).unwrap();
                        for (name, value) in reply.headers {
                            resp.headers_mut()
                                .insert(name, value.parse().expect("header value"));
                        }
                        api.concurrent.fetch_sub(1, Ordering::SeqCst);
                        api.busy_nanos
                            .fetch_add(began.elapsed().as_nanos() as u64, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        api
    }

    /// A stand-in that answers with `statuses` in order, then 200.
    pub async fn scripted(statuses: impl IntoIterator<Item = u16>) -> FakeApi {
        let api = FakeApi::start().await;
        api.script.lock().unwrap().extend(statuses);
        api
    }

    /// Answers by request from now on.
    pub fn route(&self, f: impl Fn(&Received) -> Option<Reply> + Send + Sync + 'static) {
        *self.route.lock().unwrap() = Some(Arc::new(f));
    }

    /// The requests received so far, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.requests();
            if got.len() >= n || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Distinct passive port ranges for bridges running in parallel in one test binary.
fn passive_range() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::SeqCst) % 40;
    let pid_offset = (std::process::id() % 5) as u16 * 2000;
    let start = 20000 + pid_offset + slot * 200;
    (start, start + 199)
}

/// A bridge against its own store (and optional API).
pub struct Harness {
    /// Kept for its drop: the store, data dir and config live as long as the harness.
    _dir: TempDir,
    pub store: EmbeddedStore,
    pub bridge: Option<Bridge>,
    pub ftp: SocketAddr,
    pub sftp: SocketAddr,
    /// A separate client for reading back what landed.
    pub s3: Storage,
    pub config: Config,
    /// The config as a file, for the command line.
    pub config_path: PathBuf,
}

/// An object's bytes, `None` when it does not exist.
pub async fn object_bytes(s3: &Storage, key: &str) -> Option<Vec<u8>> {
    match s3.get(key, 0).await {
        Ok(body) => Some(body.collect().await.expect("body").into_bytes().to_vec()),
        Err(e) if e.not_found => None,
        Err(e) => panic!("unexpected S3 error: {e}"),
    }
}

/// A separate S3 client for `store`, to read back what landed.
pub async fn s3_client(store: &EmbeddedStore) -> Storage {
    let cfg = Config::parse("", Path::new("x")).expect("defaults").storage;
    Storage::connect(
        &cfg,
        &Connection {
            endpoint_url: Some(store.url.clone()),
            credentials: Some((store.access_key.clone(), store.secret_key.clone())),
        },
        Metrics::new(),
    )
    .await
}

impl Harness {
    /// Starts a bridge from `text` (with `${NAME}`s from `env`, then the process's own)
    /// against `store`; the config is also written to `dir/ingest-bridge.toml`.
    async fn start_with(
        dir: TempDir,
        store: EmbeddedStore,
        text: String,
        env: Vec<(String, String)>,
    ) -> Harness {
        let config_path = dir.path().join("ingest-bridge.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let config = Config::parse_with_env(&text, &config_path, |name| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(name).ok())
        })
        .expect("test config is valid");
        let bridge = Bridge::start(config.clone()).await.expect("bridge starts");
        let ftp = bridge.ftp_addr.expect("ftp enabled");
        let sftp = bridge.sftp_addr.expect("sftp enabled");
        let s3 = s3_client(&store).await;
        Harness {
            _dir: dir,
            store,
            bridge: Some(bridge),
            ftp,
            sftp,
            s3,
            config,
            config_path,
        }
    }

    /// The bridge with the base config (see [`Harness::builder`]).
    pub async fn start() -> Harness {
        Harness::builder().start().await
    }

    /// The running bridge (panics after [`Harness::shutdown`]).
    pub fn bridge(&self) -> &Bridge {
        self.bridge.as_ref().expect("running")
    }

    /// An FTP session of `user` (password [`PASSWORD`]), binary mode.
    pub async fn login(&self, user: &str) -> AsyncFtpStream {
        ftp_login_at(self.ftp, user).await
    }

    /// STOR of `bytes` at `path` as `user`; panics unless the server says 226.
    pub async fn upload(&self, user: &str, path: &str, bytes: &[u8]) {
        let mut ftp = self.login(user).await;
        let mut reader = std::io::Cursor::new(bytes.to_vec());
        ftp.put_file(path, &mut reader)
            .await
            .expect("STOR succeeds");
        let _ = ftp.quit().await;
    }

    /// The embedded store's directory on disk.
    pub fn store_root(&self) -> PathBuf {
        self.store.root.clone()
    }

    /// Upload ids of multipart uploads the store still holds.
    pub fn open_multipart_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(self.store_root())
            .expect("store dir")
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(rest) = name.strip_prefix(".upload_id-")
                && let Some((id, _)) = rest.split_once(".part-")
                && !ids.contains(&id.to_string())
            {
                ids.push(id.to_string());
            }
        }
        ids
    }

    /// Completions in the event log.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let path = self.config.server.data_dir.join("events.jsonl");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("event log lines are JSON"))
            .collect()
    }

    /// The bytes of object `key`, `None` when it does not exist.
    pub async fn object(&self, key: &str) -> Option<Vec<u8>> {
        object_bytes(&self.s3, key).await
    }

    /// The bridge's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        metrics_at(self.bridge().metrics_addr).await
    }

    /// One scrape of the bridge's `/metrics`, to read several values from.
    pub async fn scrape(&self) -> Scrape {
        Scrape(self.metrics_text().await)
    }

    /// The current value of `selector` (see [`Scrape`]).
    pub async fn metric(&self, selector: &str) -> f64 {
        self.scrape().await.get(selector)
    }

    /// Scrapes and asserts that `selector`'s value is `want`.
    pub async fn assert_metric(&self, selector: &str, want: f64) {
        let got = self.metric(selector).await;
        assert_eq!(got, want, "metric {selector}");
    }

    /// [`wait_metric_at`] this bridge.
    pub async fn wait_metric(
        &self,
        selector: &str,
        within: Duration,
        done: impl Fn(f64) -> bool,
    ) -> f64 {
        wait_metric_at(self.bridge().metrics_addr, selector, within, done).await
    }

    /// Waits until `key`'s cut upload is kept (its record no longer running); returns its
    /// length, `None` when none is kept.
    pub async fn kept_bytes(&self, key: &str) -> Option<u64> {
        use ingest_bridge::state::CutUploadStore as _;
        let store =
            ingest_bridge::upload::PartialStore::open(&self.config.server.data_dir).expect("store");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match store.get(key.to_string()).await.expect("read") {
                Some(r) if !r.active => return Some(r.durable_bytes),
                None if tokio::time::Instant::now() > deadline - Duration::from_secs(8) => {
                    return None;
                }
                _ => {}
            }
            assert!(tokio::time::Instant::now() < deadline, "never settled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Shuts the bridge down and waits until it has stopped.
    pub async fn shutdown(&mut self) {
        if let Some(b) = self.bridge.take() {
            b.shutdown().await;
        }
    }
}

/// `GET /metrics` from the endpoint at `addr` (a bridge in process or spawned).
pub async fn metrics_at(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    out
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// One scrape of `/metrics`, read with selectors: `name` or `name{label="value",…}` (the
/// quotes may be left out); a selector's value is the sum of the samples whose labels
/// include all of its labels.
pub struct Scrape(pub String);

impl Scrape {
    /// The value `selector` selects (0 when no sample matches).
    pub fn get(&self, selector: &str) -> f64 {
        metric_value(&self.0, selector)
    }

    /// Asserts that `selector`'s value is `want`.
    #[track_caller]
    pub fn assert(&self, selector: &str, want: f64) {
        assert_eq!(self.get(selector), want, "metric {selector}");
    }
}

/// Splits a selector `name{k="v",…}` into the name and its labels.
fn parse_selector(selector: &str) -> (&str, Vec<(&str, &str)>) {
    let Some((name, rest)) = selector.split_once('{') else {
        return (selector.trim(), Vec::new());
    };
    let labels = rest
        .strip_suffix('}')
        .unwrap_or_else(|| panic!("selector {selector} ends with '}}'"))
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("label {pair} in {selector} is k=v"));
            (k.trim(), v.trim().trim_matches('"'))
        })
        .collect();
    (name.trim(), labels)
}

/// The value of `selector` (see [`Scrape`]) in a `/metrics` text.
pub fn metric_value(text: &str, selector: &str) -> f64 {
    let (name, labels) = parse_selector(selector);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scrapes the metrics endpoint at `addr` until `selector`'s value satisfies `done`, or
/// `within` has passed; returns the last value (the caller asserts on it).
pub async fn wait_metric_at(
    addr: SocketAddr,
    selector: &str,
    within: Duration,
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let value = metric_value(&metrics_at(addr).await, selector);
        if done(value) || tokio::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A deterministic ed25519 client key (seed 1 is alice's configured key).
pub fn client_key(seed: u8) -> russh::keys::PrivateKey {
    russh::keys::PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
        &[seed; 32],
    ))
}

/// SSH client that trusts any host key (the tests check fingerprints separately).
pub struct TrustingClient;

impl russh::client::Handler for TrustingClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// How a test logs in over SFTP.
pub enum Login {
    Password(&'static str),
    Key(Box<russh::keys::PrivateKey>),
}

/// An SFTP session and the SSH connection that carries it.
pub struct SftpClient {
    pub ssh: russh::client::Handle<TrustingClient>,
    pub sftp: russh_sftp::client::SftpSession,
}

/// Connects and logs in; `Err` when the login is refused.
pub async fn sftp_login(addr: SocketAddr, user: &str, login: Login) -> Result<SftpClient, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    sftp_login_over(stream, user, login).await
}

/// [`sftp_login`] over a connection the test opened itself (e.g. after a PROXY header).
pub async fn sftp_login_over(
    stream: tokio::net::TcpStream,
    user: &str,
    login: Login,
) -> Result<SftpClient, String> {
    let config = Arc::new(russh::client::Config::default());
    let mut ssh = russh::client::connect_stream(config, stream, TrustingClient)
        .await
        .map_err(|e| e.to_string())?;
    let result = match login {
        Login::Password(p) => ssh.authenticate_password(user, p).await,
        Login::Key(k) => {
            ssh.authenticate_publickey(
                user,
                russh::keys::PrivateKeyWithHashAlg::new(Arc::new(*k), None),
            )
            .await
        }
    }
    .map_err(|e| e.to_string())?;
    if !result.success() {
        return Err("login refused".into());
    }
    let channel = ssh
        .channel_open_session()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| e.to_string())?;
    let sftp = russh_sftp::client::SftpSession::new(channel.into_stream())
        .await
        .map_err(|e| e.to_string())?;
    Ok(SftpClient { ssh, sftp })
}

/// Alice logs in over SFTP, retrying for up to `within` while a place is being freed;
/// panics with `why` if no login succeeds by then.
pub async fn sftp_login_within(addr: SocketAddr, within: Duration, why: &str) -> SftpClient {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match sftp_login(addr, "alice", Login::Password(PASSWORD)).await {
            Ok(client) => return client,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{why}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Alice opens `path` over SFTP, writes `bytes`, and vanishes: the SSH connection ends
/// without a CLOSE, as when a client crashes or the network drops.
pub async fn vanish_mid_sftp_upload(addr: SocketAddr, path: &str, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let c = sftp_login(addr, "alice", Login::Password(PASSWORD))
        .await
        .expect("login");
    let mut file = c.sftp.create(path).await.expect("open");
    file.write_all(bytes).await.expect("write");
    file.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Dropping a russh-sftp File sends CLOSE (which completes the upload); a client that
    // vanishes sends nothing.
    std::mem::forget(file);
    let _ = c
        .ssh
        .disconnect(russh::Disconnect::ByApplication, "bye", "en")
        .await;
}

/// Logs in as `user` (password [`PASSWORD`]) at `addr`, binary mode.
pub async fn ftp_login_at(addr: SocketAddr, user: &str) -> AsyncFtpStream {
    let mut ftp = AsyncFtpStream::connect(addr).await.expect("connect");
    ftp.login(user, PASSWORD).await.expect("login");
    ftp.transfer_type(suppaftp::types::FileType::Binary)
        .await
        .expect("TYPE I");
    ftp
}

/// Waits (up to 10 s: a restarted bridge finds its cut uploads beside the first requests)
/// until `name` shows the length a cut upload kept, then resumes it with the rest of
/// `source`; returns the kept length.
pub async fn resume_from_kept(ftp: &mut AsyncFtpStream, name: &str, source: &[u8]) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let kept = loop {
        if let Ok(n) = ftp.size(name).await {
            break n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut upload is never shown"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ftp.resume_transfer(kept).await.expect("REST");
    ftp.put_file(name, &mut std::io::Cursor::new(source[kept..].to_vec()))
        .await
        .expect("resumed STOR");
    kept
}

/// Multipart parts the embedded store holds under `root`, of every upload.
pub fn parts_in_store(root: &Path) -> usize {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().contains(".part-"))
                .count()
        })
        .unwrap_or(0)
}

/// Starts `ingest-bridge serve` as a real process; returns it and its FTP address.
pub fn spawn_bridge(config: &std::path::Path) -> (std::process::Child, std::net::SocketAddr) {
    let spawned = spawn_bridge_process(config);
    (spawned.child, spawned.ftp)
}

/// A bridge running as its own process, with the addresses it printed.
pub struct SpawnedBridge {
    pub child: std::process::Child,
    pub ftp: std::net::SocketAddr,
    pub metrics: std::net::SocketAddr,
}

/// Starts `ingest-bridge serve` as a real process and reads its addresses from stdout.
pub fn spawn_bridge_process(config: &std::path::Path) -> SpawnedBridge {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ingest-bridge"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let address = |line: &str, prefix: &str| -> Option<std::net::SocketAddr> {
        let rest = line.strip_prefix(prefix)?;
        let rest = rest.strip_prefix("http://").unwrap_or(rest);
        rest.split(['/', ' ']).next()?.parse().ok()
    };
    let (mut ftp, mut metrics) = (None, None);
    for line in lines.by_ref().map_while(Result::ok) {
        ftp = ftp.or_else(|| address(&line, "ftp listening on "));
        metrics = metrics.or_else(|| address(&line, "metrics listening on "));
        if metrics.is_some() {
            break;
        }
    }
    // Keep reading so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    SpawnedBridge {
        child,
        ftp: ftp.expect("the bridge prints its FTP address"),
        metrics: metrics.expect("the bridge prints its metrics address"),
    }
}

/// Runs the test named `test` (its path in this binary, e.g. `preauth::some_test`) alone in
/// a fresh process of this test binary, for tests that measure the whole process (RSS);
/// returns true inside that process, where the caller goes on with its body, and false in
/// the calling process once the child passed (it panics when the child failed).
pub async fn in_own_process(test: &str) -> bool {
    const CHILD: &str = "INGEST_BRIDGE_IT_OWN_PROCESS";
    if std::env::var(CHILD).is_ok_and(|t| t == test) {
        return true;
    }
    let out = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, test)
        .output()
        .await
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{test} in its own process:\n{stdout}{stderr}");
    assert!(out.status.success(), "{test} failed in its own process");
    assert!(
        stdout.contains("1 passed"),
        "{test} did not run in its own process (renamed?)"
    );
    false
}
