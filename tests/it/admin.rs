//! The admin API (CONTRACT §9) against a real bridge: the token, every call, and each action
//! seen working end to end — a slow upload in `transfers`, a session closed, a dead
//! completion retried and delivered, a ban lifted, a reload.

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The token the tests' admin listeners take.
pub(crate) const TOKEN: &str = "test-admin-token-0123456789abcdef";

/// `[admin]` on a free loopback port with [`TOKEN`].
pub(crate) fn with_admin(builder: HarnessBuilder) -> HarnessBuilder {
    builder
        .set("admin.listen", "127.0.0.1:0")
        .set("admin.token", TOKEN)
}

/// A client of one bridge's admin API.
pub(crate) struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    pub(crate) fn of(h: &Harness) -> Admin {
        let addr = h.bridge().admin_addr.expect("admin enabled");
        Admin {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    /// The admin API on this machine's `port` (a listener on every address).
    pub(crate) fn of_port(port: u16) -> Admin {
        Admin {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    /// `method path` with `token` (none when `None`): status and JSON body.
    pub(crate) async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("the admin API answers");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    pub(crate) async fn call(&self, method: Method, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.call_with(method, path, Some(TOKEN)).await;
        (status, body)
    }

    pub(crate) async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(Method::GET, path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }
}

/// `value` has every property `schema` (a component of `openapi.json`) requires.
fn assert_fits(openapi: &Value, schema: &str, value: &Value) {
    let required = openapi["components"]["schemas"][schema]["required"]
        .as_array()
        .unwrap_or_else(|| panic!("schema {schema} has required properties"));
    for name in required {
        let name = name.as_str().expect("a property name");
        assert!(
            value.get(name).is_some(),
            "{schema} without {name}: {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_call_needs_the_token_and_the_page_does_not() {
    let h = with_admin(Harness::builder()).start().await;
    let admin = Admin::of(&h);
    for (i, (method, path)) in [
        (Method::GET, "/api/v1/status"),
        (Method::GET, "/api/v1/transfers"),
        (Method::GET, "/api/v1/sessions"),
        (Method::DELETE, "/api/v1/sessions/x"),
        (Method::GET, "/api/v1/outbox?state=dead"),
        (Method::POST, "/api/v1/outbox/x/retry"),
        (Method::GET, "/api/v1/bans"),
        (Method::DELETE, "/api/v1/bans/127.0.0.1"),
        (Method::POST, "/api/v1/reload"),
        (Method::GET, "/api/v1/openapi.json"),
    ]
    .into_iter()
    .enumerate()
    {
        // Each route's calls from their own address: twenty wrong tokens from one address
        // would be refused as guessing.
        let caller = Admin {
            base: admin.base.clone(),
            http: reqwest::Client::builder()
                .local_address(std::net::IpAddr::from([127, 0, 0, 10 + i as u8]))
                .build()
                .expect("client"),
        };
        for token in [None, Some("wrong-token"), Some("")] {
            let (status, headers, body) = caller.call_with(method.clone(), path, token).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}"
            );
            assert!(
                headers
                    .get("www-authenticate")
                    .is_some_and(|v| v.to_str().unwrap_or("").starts_with("Bearer")),
                "{headers:?}"
            );
            assert!(body["error"].is_string(), "{body}");
        }
    }
    // The page holds no data: it loads without a token and asks for one.
    let page = reqwest::get(format!("{}/", admin.base))
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(page.text().await.expect("html").contains("<title>"));

    let status = admin.get("/api/v1/status").await;
    assert_eq!(status["ready"], true, "{status}");
    let openapi = admin.get("/api/v1/openapi.json").await;
    assert_fits(&openapi, "Status", &status);
    let (status, _) = admin.call(Method::GET, "/api/v1/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = admin.call(Method::POST, "/api/v1/transfers").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, body) = admin.call(Method::GET, "/api/v1/transfers?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = admin.call(Method::GET, "/api/v1/outbox").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no connector, no outbox: {body}"
    );

    let m = h.scrape().await;
    m.assert(
        "ingest_bridge_admin_requests_total{action=status,result=unauthorized}",
        3.0,
    );
    m.assert(
        "ingest_bridge_admin_requests_total{action=status,result=ok}",
        1.0,
    );
    // Refused tokens are in the audit trail with the caller's address, never the token.
    let audit =
        std::fs::read_to_string(h.config.server.data_dir.join("audit.jsonl")).expect("audit file");
    let refused: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["record"] == "admin" && r["result"] == "unauthorized")
        .collect();
    assert_eq!(
        refused.len(),
        20,
        "every wrong token is recorded; a call without one only counted"
    );
    assert!(
        refused[0]["caller"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.10:")),
        "the caller's address: {}",
        refused[0]
    );
    assert!(!audit.contains("wrong-token") && !audit.contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_address_guessing_tokens_is_refused_for_a_while_and_nothing_else_is() {
    let h = with_admin(Harness::builder()).start().await;
    let admin = Admin::of(&h);
    // A page without a token yet asks without one: that is no guess.
    for _ in 0..20 {
        let (status, _, _) = admin.call_with(Method::GET, "/api/v1/status", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    admin.get("/api/v1/status").await;
    for _ in 0..10 {
        let (status, _, _) = admin
            .call_with(Method::GET, "/api/v1/status", Some("guess"))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, headers, body) = admin
        .call_with(Method::GET, "/api/v1/status", Some(TOKEN))
        .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "refused, even with the token: {body}"
    );
    let retry_after: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((290..=300).contains(&retry_after), "{retry_after}");
    // The guesser's FTP clients are not banned for it.
    h.upload("alice", "still.bin", b"ok").await;
    h.scrape().await.assert(
        "ingest_bridge_admin_requests_total{action=status,result=refused}",
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_upload_shows_in_transfers_with_growing_bytes_and_leaves_when_done() {
    let h = with_admin(Harness::builder()).start().await;
    let admin = Admin::of(&h);
    let openapi = admin.get("/api/v1/openapi.json").await;
    let mut ftp = h.login("alice").await;
    let mut stream = ftp.put_with_stream("slow.mxf").await.expect("STOR");
    let chunk = data(256 * 1024, 9);
    // About 2.5 MiB/s for 3 s: a camera on a thin line.
    let sender = async {
        for _ in 0..30 {
            stream.write_all(&chunk).await.expect("write");
            stream.flush().await.expect("flush");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stream
    };
    let watcher = async {
        let mut seen = Vec::new();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let list = admin.get("/api/v1/transfers").await;
            if let Some(t) = list
                .as_array()
                .and_then(|l| l.iter().find(|t| t["path"] == "/slow.mxf"))
            {
                assert_fits(&openapi, "Transfer", t);
                seen.push(t.clone());
            }
        }
        seen
    };
    let (stream, seen) = tokio::join!(sender, watcher);
    assert!(seen.len() >= 5, "listed while it ran: {seen:?}");
    let first = &seen[0];
    let last = &seen[seen.len() - 1];
    assert_eq!(last["username"], "alice");
    assert_eq!(last["protocol"], "ftp");
    assert_eq!(last["key"], "alice/slow.mxf");
    assert!(
        last["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    let (a, b) = (first["bytes"].as_u64(), last["bytes"].as_u64());
    assert!(a < b, "bytes grow: {a:?} then {b:?}");
    let rate = last["rate_bytes_per_second"].as_f64().unwrap_or(0.0);
    println!(
        "transfers: {} polls, bytes {a:?} → {b:?}, rate {:.2} MiB/s",
        seen.len(),
        rate / 1048576.0
    );
    assert!(rate > 256.0 * 1024.0, "a rate is shown: {rate}");
    let status = admin.get("/api/v1/status").await;
    assert_eq!(status["transfers"]["count"], 1, "{status}");
    let sessions = admin.get("/api/v1/sessions").await;
    let mine = sessions
        .as_array()
        .and_then(|l| l.iter().find(|s| s["id"] == last["session_id"]))
        .expect("the upload's session is listed");
    assert_eq!(mine["uploads"], 1);
    assert_eq!(mine["username"], "alice");
    assert_fits(&openapi, "Session", mine);

    stream.finish().await.expect("226");
    let _ = ftp.quit().await;
    let after = admin.get("/api/v1/transfers").await;
    assert_eq!(after, Value::Array(vec![]), "gone once done");
    assert_eq!(
        h.object("alice/slow.mxf").await.map(|b| b.len()),
        Some(30 * chunk.len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_closed_from_the_api_is_closed_and_its_upload_cut() {
    let h = with_admin(Harness::builder()).start().await;
    let admin = Admin::of(&h);
    // An SFTP session in the middle of an upload, and an idle FTP session.
    let client = sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("sftp login");
    let mut file = client.sftp.create("/closing.bin").await.expect("open");
    file.write_all(&data(1024 * 1024, 3)).await.expect("write");
    file.flush().await.expect("flush");
    let mut ftp = h.login("bob").await;

    let admin_ref = &admin;
    let wait_listed = |n: usize| async move {
        for _ in 0..100 {
            let transfers = admin_ref.get("/api/v1/transfers").await;
            if transfers.as_array().map_or(0, Vec::len) == n {
                return transfers;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not {n} transfers");
    };
    let transfers = wait_listed(1).await;
    let sftp_session = transfers[0]["session_id"].as_str().expect("id").to_string();
    let sessions = admin.get("/api/v1/sessions").await;
    let ftp_session = sessions
        .as_array()
        .and_then(|l| l.iter().find(|s| s["username"] == "bob"))
        .and_then(|s| s["id"].as_str())
        .expect("bob's FTP session is listed")
        .to_string();

    let (status, body) = admin
        .call(Method::DELETE, &format!("/api/v1/sessions/{sftp_session}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["closed"], true);
    // The SSH connection ends: a further write fails.
    let mut ended = false;
    for _ in 0..50 {
        if file.write_all(b"more").await.is_err() || file.flush().await.is_err() {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ended, "the SFTP client notices its session is gone");
    wait_listed(0).await;
    assert_eq!(h.object("alice/closing.bin").await, None, "no object");

    let (status, _) = admin
        .call(Method::DELETE, &format!("/api/v1/sessions/{ftp_session}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        ftp.noop().await.is_err(),
        "the FTP control connection is closed"
    );
    for _ in 0..50 {
        let open = admin.get("/api/v1/sessions").await;
        if open.as_array().is_some_and(Vec::is_empty) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(admin.get("/api/v1/sessions").await, Value::Array(vec![]));
    let (status, _) = admin
        .call(Method::DELETE, &format!("/api/v1/sessions/{ftp_session}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "closed already");

    let audit =
        std::fs::read_to_string(h.config.server.data_dir.join("audit.jsonl")).expect("audit file");
    let closes = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["record"] == "admin" && r["action"] == "close_session")
        .collect::<Vec<_>>();
    assert_eq!(closes.len(), 3, "{closes:?}");
    assert_eq!(closes[0]["target"], sftp_session.as_str());
    assert_eq!(closes[0]["result"], "ok");
    assert_eq!(closes[2]["result"], "not_found");
    h.scrape().await.assert(
        "ingest_bridge_admin_requests_total{action=close_session,result=ok}",
        2.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_completion_is_retried_from_the_api_and_delivered() {
    let api = FakeApi::scripted([400]).await;
    let h = with_admin(Harness::builder().notify_url(&api.url))
        .start()
        .await;
    let admin = Admin::of(&h);
    let openapi = admin.get("/api/v1/openapi.json").await;
    h.upload("alice", "refused.bin", b"r").await;
    api.wait_for(1, Duration::from_secs(10)).await;
    let mut dead = Value::Null;
    for _ in 0..100 {
        dead = admin.get("/api/v1/outbox?state=dead").await;
        if dead.as_array().is_some_and(|l| l.len() == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let entry = dead[0].clone();
    assert_fits(&openapi, "OutboxEntry", &entry);
    assert_eq!(entry["key"], "alice/refused.bin");
    assert!(
        entry["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("400")),
        "{entry}"
    );
    assert_eq!(
        entry["next_attempt_at"],
        Value::Null,
        "dead: no next attempt"
    );
    let status = admin.get("/api/v1/status").await;
    assert_eq!(status["outbox"]["dead"], 1, "{status}");

    let id = entry["id"].as_str().expect("id");
    let (status, body) = admin
        .call(Method::POST, &format!("/api/v1/outbox/{id}/retry"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "pending");
    let received = api.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(received[1].body["id"], id, "the same completion, delivered");
    let mut delivered = Value::Null;
    for _ in 0..100 {
        delivered = admin.get("/api/v1/outbox?state=delivered&limit=10").await;
        if delivered.as_array().is_some_and(|l| l.len() == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered[0]["id"], id);
    let (status, _) = admin
        .call(Method::POST, &format!("/api/v1/outbox/{id}/retry"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "delivered: nothing to retry");
    let (status, _) = admin.call(Method::POST, "/api/v1/outbox/nope/retry").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = admin.call(Method::GET, "/api/v1/outbox?state=lost").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    h.scrape().await.assert(
        "ingest_bridge_admin_requests_total{action=retry_outbox,result=ok}",
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ban_lifted_from_the_api_lets_the_address_log_in() {
    let h = with_admin(Harness::builder().defender(3, "10m"))
        .start()
        .await;
    let admin = Admin::of(&h);
    for _ in 0..3 {
        let mut ftp = suppaftp::tokio::AsyncFtpStream::connect(h.ftp)
            .await
            .expect("connect");
        assert!(ftp.login("alice", "wrong").await.is_err());
    }
    let bans = admin.get("/api/v1/bans").await;
    assert_eq!(bans[0]["address"], "127.0.0.1", "{bans}");
    let openapi = admin.get("/api/v1/openapi.json").await;
    assert_fits(&openapi, "Ban", &bans[0]);
    assert!(bans[0]["seconds_left"].as_u64().is_some_and(|s| s > 500));
    assert!(
        suppaftp::tokio::AsyncFtpStream::connect(h.ftp)
            .await
            .is_err(),
        "banned: the greeting is 421"
    );
    let (status, _) = admin.call(Method::DELETE, "/api/v1/bans/not-an-ip").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = admin.call(Method::DELETE, "/api/v1/bans/10.9.8.7").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = admin.call(Method::DELETE, "/api/v1/bans/127.0.0.1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["lifted"], true);
    let mut ftp = h.login("alice").await;
    let _ = ftp.quit().await;
    assert_eq!(admin.get("/api/v1/bans").await, Value::Array(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_from_the_api_applies_the_file_or_keeps_the_running_config() {
    let h = with_admin(Harness::builder()).start().await;
    let admin = Admin::of(&h);
    let (status, body) = admin.call(Method::POST, "/api/v1/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let good = std::fs::read_to_string(&h.config_path).expect("config");
    std::fs::write(&h.config_path, "[storage]\npart_size = \"1KiB\"\n").expect("write");
    let (status, body) = admin.call(Method::POST, "/api/v1/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("storage.part_size")),
        "{body}"
    );
    // A new token takes effect at the reload: the old one is refused from then on.
    let rotated = "rotated-admin-token-fedcba9876543210";
    assert!(good.contains(TOKEN), "the file names the token");
    std::fs::write(&h.config_path, good.replace(TOKEN, rotated)).expect("rotate");
    let (status, body) = admin.call(Method::POST, "/api/v1/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = admin
        .call_with(Method::GET, "/api/v1/status", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old token");
    let (status, _, _) = admin
        .call_with(Method::GET, "/api/v1/status", Some(rotated))
        .await;
    assert_eq!(status, StatusCode::OK, "the new token");
    let m = h.scrape().await;
    m.assert("ingest_bridge_config_reloads_total{result=ok}", 2.0);
    m.assert("ingest_bridge_config_reloads_total{result=error}", 1.0);
    // Still serving with the old config.
    h.upload("alice", "after.bin", b"x").await;
}
