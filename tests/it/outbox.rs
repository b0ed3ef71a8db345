//! The durable outbox: completions survive restarts of the bridge and outages of the API.

use crate::common;

use common::{FakeApi, Harness, data};
use ingest_bridge::notify::Outbox;
use ingest_bridge::state::OutboxStore as _;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_completions_survive_a_restart_and_are_sent_once_with_the_same_id() {
    let api = FakeApi::start().await;
    // Down for the whole first run: every attempt gets 503.
    api.script.lock().unwrap().extend([503; 50]);
    let mut h = Harness::builder()
        .notify_url(&api.url)
        .drain_timeout("1s")
        .start()
        .await;
    h.upload("alice", "survivor.bin", &data(1000, 9)).await;
    let first = api.wait_for(1, Duration::from_secs(10)).await;
    assert!(!first.is_empty(), "first attempt made");
    let id = first[0].body["id"].as_str().expect("id").to_string();
    h.shutdown().await;

    let data_dir = h.config.server.data_dir.clone();
    let outbox = Outbox::open(&data_dir).expect("outbox");
    assert_eq!(
        outbox.state_of(&id).await.expect("query").as_deref(),
        Some("pending"),
        "undelivered after the first run"
    );
    let attempts_before = api.requests().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        api.requests().len(),
        attempts_before,
        "a stopped bridge sends nothing"
    );

    // The API is back; a new run sends what the first left pending.
    api.script.lock().unwrap().clear();
    let again = ingest_bridge::server::Bridge::start(h.config.clone())
        .await
        .expect("restart");
    let received = api
        .wait_for(attempts_before + 1, Duration::from_secs(10))
        .await;
    assert_eq!(received.len(), attempts_before + 1, "sent after restart");
    let last = &received[attempts_before];
    assert_eq!(last.body["id"], id.as_str(), "same id");
    assert_eq!(last.header("idempotency-key"), Some(id.as_str()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.requests().len(), attempts_before + 1, "sent once");
    assert_eq!(
        outbox.state_of(&id).await.expect("query").as_deref(),
        Some("delivered")
    );
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_completion_is_dead_in_the_outbox() {
    let api = FakeApi::scripted([400]).await;
    let h = Harness::builder().notify_url(&api.url).start().await;
    h.upload("alice", "refused.bin", b"r").await;
    let received = api.wait_for(1, Duration::from_secs(10)).await;
    let id = received[0].body["id"].as_str().expect("id").to_string();
    let outbox = Outbox::open(&h.config.server.data_dir).expect("outbox");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let state = outbox.state_of(&id).await.expect("query");
        if state.as_deref() == Some("dead") || tokio::time::Instant::now() > deadline {
            assert_eq!(state.as_deref(), Some("dead"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What an operator sees.
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_ingest-bridge"))
        .args(["outbox", "list", "--state", "dead", "--config"])
        .arg(&h.config_path)
        .output()
        .expect("outbox list");
    assert!(listed.status.success(), "{listed:?}");
    let text = String::from_utf8_lossy(&listed.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{text}"));
    assert!(
        row.contains("\tdead\t") && row.contains("alice/refused.bin") && row.contains("HTTP 400"),
        "{row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_while_retrying_loses_nothing() {
    let api = FakeApi::scripted([503; 50]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, config) = Harness::builder()
        .notify_url(&api.url)
        .write_config(dir.path())
        .await;

    let (mut first, ftp) = common::spawn_bridge(&config);
    let mut client = suppaftp::tokio::AsyncFtpStream::connect(ftp)
        .await
        .expect("connect");
    client
        .login("alice", common::PASSWORD)
        .await
        .expect("login");
    client
        .transfer_type(suppaftp::types::FileType::Binary)
        .await
        .expect("TYPE I");
    let mut reader = std::io::Cursor::new(data(2000, 4));
    client
        .put_file("killed.bin", &mut reader)
        .await
        .expect("STOR succeeds");
    let seen = api.wait_for(1, Duration::from_secs(10)).await;
    let id = seen[0].body["id"].as_str().expect("id").to_string();
    first.kill().expect("SIGKILL");
    let _ = first.wait();

    api.script.lock().unwrap().clear();
    let before = api.requests().len();
    let (mut second, _) = common::spawn_bridge(&config);
    let received = api.wait_for(before + 1, Duration::from_secs(10)).await;
    let _ = second.kill();
    let _ = second.wait();
    assert!(received.len() > before, "sent again after the crash");
    assert!(
        received[before..]
            .iter()
            .all(|r| r.body["id"] == id.as_str()),
        "the same id"
    );
}
