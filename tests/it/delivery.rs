//! Delivery policy: Retry-After, max_age dead letters and the operator commands, Standard
//! Webhooks signatures checked by an independent implementation, and a 10,000-entry
//! backlog drained with bounded concurrency.

use crate::common;

use base64::Engine;
use common::{FakeApi, Harness, Reply, data};
use ingest_bridge::notify::{Outbox, State};
use ingest_bridge::state::OutboxStore as _;
use sha2::{Digest, Sha256};
use std::process::Command;
use std::time::{Duration, Instant};

fn bin(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ingest-bridge"))
        .arg("outbox")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run ingest-bridge")
}

async fn wait_state(outbox: &Outbox, id: &str, want: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let state = outbox.state_of(id).await.expect("query");
        if state.as_deref() == Some(want) || Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_is_honoured_and_the_oldest_pending_age_is_exported() {
    let api = FakeApi::start().await;
    api.replies
        .lock()
        .unwrap()
        .push_back(Reply::new(503, "{}").header("retry-after", "3"));
    let h = Harness::builder().plain_notify(&api.url).start().await;
    h.upload("alice", "later.bin", b"later").await;
    let first = api.wait_for(1, Duration::from_secs(10)).await;
    let sent_first = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = h.scrape().await;
    let age = m.get("ingest_bridge_notification_oldest_pending_seconds");
    assert!(age >= 0.5, "oldest pending age exported: {age}");
    m.assert("ingest_bridge_notifications_pending", 1.0);
    let both = api.wait_for(2, Duration::from_secs(10)).await;
    let gap = sent_first.elapsed();
    assert_eq!(both.len(), 2);
    // Without Retry-After the first retry comes within 1 s (full jitter).
    assert!(
        gap >= Duration::from_millis(2700),
        "second attempt after {gap:?}, before the 3 s Retry-After"
    );
    assert_eq!(both[1].body["id"], first[0].body["id"], "same id");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let m = h.scrape().await;
    m.assert("ingest_bridge_notifications_pending", 0.0);
    m.assert("ingest_bridge_notification_oldest_pending_seconds", 0.0);
}

/// HMAC-SHA256 written out from RFC 2104, independent of the `hmac` crate the bridge uses.
fn rfc2104_hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signatures_verify_with_an_independent_implementation_of_standard_webhooks() {
    let api = FakeApi::start().await;
    let key = b"an independent check of the signature";
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let h = Harness::builder()
        .plain_notify(&api.url)
        .notify("signing_secret", &secret)
        .start()
        .await;
    h.upload("alice", "signed.bin", &data(5000, 3)).await;
    let got = api.wait_for(1, Duration::from_secs(10)).await;
    let req = &got[0];
    let id = req.header("webhook-id").expect("webhook-id");
    let timestamp = req.header("webhook-timestamp").expect("webhook-timestamp");
    let signature = req.header("webhook-signature").expect("webhook-signature");
    assert_eq!(Some(id), req.header("idempotency-key"));
    assert_eq!(req.body["id"], id);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let ts: i64 = timestamp.parse().expect("integer timestamp");
    assert!(
        (now - ts).abs() <= 300,
        "timestamp within the spec's tolerance"
    );
    let signed = [id.as_bytes(), b".", timestamp.as_bytes(), b".", &req.raw].concat();
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(rfc2104_hmac_sha256(key, &signed))
    );
    assert!(
        signature.split(' ').any(|s| s == expected),
        "{signature} does not contain {expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_max_age_an_entry_is_dead_and_the_outbox_commands_bring_it_back() {
    let api = FakeApi::scripted([503; 1000]).await;
    let h = Harness::builder()
        .plain_notify(&api.url)
        .notify("max_age", "2s")
        .notify("max_backoff", "500ms")
        .start()
        .await;
    h.upload("alice", "unlucky.bin", b"u").await;
    let id = api.wait_for(1, Duration::from_secs(10)).await[0].body["id"]
        .as_str()
        .expect("id")
        .to_string();
    let outbox = Outbox::open(&h.config.server.data_dir).expect("outbox");
    assert_eq!(
        wait_state(&outbox, &id, "dead", Duration::from_secs(10))
            .await
            .as_deref(),
        Some("dead")
    );
    let dead = outbox.list(Some(State::Dead)).await.expect("list");
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("notify.max_age")),
        "{:?}",
        dead[0].last_error
    );

    // The operator sees it, the API recovers, the operator retries it: delivered, same id.
    let listed = bin(&h.config_path, &["list", "--state", "dead"]);
    assert!(listed.status.success(), "{listed:?}");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains(&id) && text.contains("alice/unlucky.bin"),
        "{text}"
    );
    assert!(text.contains("notify.max_age"), "{text}");
    let pending = bin(&h.config_path, &["list", "--state", "pending"]);
    assert!(!String::from_utf8_lossy(&pending.stdout).contains(&id));

    api.script.lock().unwrap().clear();
    let before = api.requests().len();
    let retried = bin(&h.config_path, &["retry", "--all-dead"]);
    assert!(retried.status.success(), "{retried:?}");
    assert!(String::from_utf8_lossy(&retried.stdout).starts_with("1 entries"));
    assert_eq!(
        wait_state(&outbox, &id, "delivered", Duration::from_secs(10))
            .await
            .as_deref(),
        Some("delivered"),
        "the running bridge picked up the retried entry"
    );
    let after = api.requests();
    assert_eq!(after.len(), before + 1);
    assert_eq!(after[before].body["id"], id.as_str());

    let unknown = bin(&h.config_path, &["retry", "no-such-id"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no-such-id"));

    let kept = bin(&h.config_path, &["purge", "--delivered-before", "1h"]);
    assert!(String::from_utf8_lossy(&kept.stdout).starts_with("0 delivered"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let purged = bin(&h.config_path, &["purge", "--delivered-before", "1ms"]);
    assert!(
        String::from_utf8_lossy(&purged.stdout).starts_with("1 delivered"),
        "{purged:?}"
    );
    assert_eq!(outbox.state_of(&id).await.expect("query"), None);
    let bad = bin(&h.config_path, &["purge", "--delivered-before", "soon"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_of_10000_drains_at_the_apis_speed_with_bounded_concurrency() {
    const ENTRIES: usize = 10_000;
    let api = FakeApi::start().await;
    // Down while the backlog builds: the bridge is started against a dead port first.
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    // One durable write for the whole backlog (10,000 single inserts would each fsync).
    let backlog = (0..ENTRIES)
        .map(|i| {
            let id = format!("backlog-{i:05}");
            let body = serde_json::json!({"event": "upload.completed", "id": id, "key": format!("alice/{i}.bin"), "path": format!("/{i}.bin"), "username": "alice", "size": 1});
            ingest_bridge::notify::PendingEntry {
                id,
                key: format!("alice/{i}.bin"),
                body: body.to_string().into_bytes(),
                step: 0,
                fields: serde_json::Map::new(),
                attempts: 0,
                since_ms: 0,
            }
        })
        .collect();
    Outbox::open(&data_dir)
        .expect("create outbox")
        .insert_batch(backlog)
        .await
        .expect("backlog");
    // A slow API (4 ms per answer): 8 deliveries at once are what limits the drain.
    *api.delay.lock().unwrap() = Duration::from_millis(
        std::env::var("BACKLOG_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4),
    );
    let store = common::start_store(dir.path()).await;
    let text = Harness::builder()
        .plain_notify(&api.url)
        .notify("concurrency", 8)
        .set("server.data_dir", data_dir.display().to_string())
        .config_text(dir.path(), &store);
    let config = ingest_bridge::config::Config::parse(&text, std::path::Path::new("t.toml"))
        .expect("config");
    let started = Instant::now();
    let bridge = ingest_bridge::server::Bridge::start(config)
        .await
        .expect("bridge");
    let got = api.wait_for(ENTRIES, Duration::from_secs(120)).await;
    let took = started.elapsed();
    assert_eq!(got.len(), ENTRIES, "all sent");
    let mut ids: Vec<&str> = got.iter().filter_map(|r| r.body["id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), ENTRIES, "each once");
    let max = api.max_concurrent.load(std::sync::atomic::Ordering::SeqCst);
    let rate = ENTRIES as f64 / took.as_secs_f64();
    // What the API itself could take: 8 at once, each as long as it really took to answer.
    let mean =
        api.busy_nanos.load(std::sync::atomic::Ordering::SeqCst) as f64 / ENTRIES as f64 / 1e9;
    println!(
        "drained {ENTRIES} in {:.2} s = {rate:.0}/s; the API answered in {:.2} ms on average, so 8 at once cap it at {:.0}/s; max {max} at once",
        took.as_secs_f64(),
        mean * 1e3,
        8.0 / mean
    );
    assert!(max <= 8, "at most notify.concurrency at once, saw {max}");
    assert!(max >= 6, "the concurrency is used, saw {max}");
    assert!(bridge.notifier.drain(Duration::from_secs(10)).await);
    let outbox = Outbox::open(&data_dir).expect("outbox");
    assert_eq!(
        outbox
            .list(Some(State::Delivered))
            .await
            .expect("list")
            .len(),
        ENTRIES
    );
    bridge.shutdown().await;
}
