//! Uploads through a real FTP client (suppaftp) into a real S3 store (s3s-fs), with the
//! completion call received by a stand-in API.

use crate::common;

use common::{FakeApi, Harness, data, sha256_hex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_multipart_and_empty_files_land_whole_with_one_completion_each() {
    let (h, api) = Harness::builder().start_with_api().await;

    let small = data(2_000, 1);
    let big = data(17 * 1024 * 1024 + 123, 2); // 4 parts of 5 MiB: multipart with concurrency
    h.upload("alice", "/shows/small.txt", &small).await;
    h.upload("alice", "/shows/ep1.mp4", &big).await;
    h.upload("alice", "empty.bin", b"").await;

    assert_eq!(
        h.object("alice/shows/small.txt").await.as_deref(),
        Some(&small[..])
    );
    assert_eq!(
        h.object("alice/shows/ep1.mp4").await.as_deref(),
        Some(&big[..])
    );
    assert_eq!(h.object("alice/empty.bin").await.as_deref(), Some(&b""[..]));
    assert!(
        h.open_multipart_ids().is_empty(),
        "no multipart upload left open"
    );

    let received = api.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 3, "exactly one completion per file");
    let by_key = |key: &str| {
        received
            .iter()
            .find(|r| r.body["key"] == key)
            .unwrap_or_else(|| panic!("completion for {key}"))
            .clone()
    };

    let ep1 = by_key("alice/shows/ep1.mp4");
    let b = &ep1.body;
    assert_eq!(b["event"], "upload.completed");
    assert_eq!(b["protocol"], "ftp");
    assert_eq!(b["username"], "alice");
    assert_eq!(b["path"], "/shows/ep1.mp4");
    assert_eq!(b["bucket"], "ingest");
    assert_eq!(b["size"], big.len() as u64);
    assert_eq!(b["sha256"], sha256_hex(&big));
    assert_eq!(b["content_type"], "video/mp4");
    assert_eq!(b["metadata"]["channel_id"], "ch-42");
    assert!(
        b["etag"].as_str().is_some_and(|e| e.ends_with("-4\"")),
        "multipart etag: {}",
        b["etag"]
    );
    assert!(
        b["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    assert!(b["started_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    let id = b["id"].as_str().expect("id");
    assert_eq!(ep1.header("idempotency-key"), Some(id));
    assert_eq!(ep1.header("x-api-key"), Some("k-123"));
    assert_eq!(ep1.header("content-type"), Some("application/json"));

    let small_c = by_key("alice/shows/small.txt");
    assert_eq!(small_c.body["sha256"], sha256_hex(&small));
    assert_eq!(small_c.body["content_type"], "text/plain");
    assert!(
        !small_c.body["etag"].as_str().unwrap_or("").contains('-'),
        "single PutObject"
    );
    let empty = by_key("alice/empty.bin");
    assert_eq!(empty.body["size"], 0);
    assert_eq!(empty.body["sha256"], sha256_hex(b""));

    // The event log holds the same three completions.
    let events = h.events();
    assert_eq!(events.len(), 3);
    assert!(events.iter().any(|e| e["id"] == id));

    let m = h.scrape().await;
    m.assert(
        "ingest_bridge_uploads_total{protocol=ftp,outcome=completed}",
        3.0,
    );
    m.assert(
        "ingest_bridge_upload_bytes_total{protocol=ftp}",
        (small.len() + big.len()) as f64,
    );
    m.assert("ingest_bridge_notifications_total{outcome=delivered}", 3.0);
    assert!(m.get("ingest_bridge_s3_requests_total{operation=UploadPart,result=success}") >= 4.0);
    m.assert("ingest_bridge_buffer_bytes_in_use", 0.0);
    m.assert(
        "ingest_bridge_logins_total{protocol=ftp,result=success}",
        3.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_answering_503_then_200_is_delivered_once_with_the_same_idempotency_key() {
    let api = FakeApi::scripted([503, 503, 200]).await;
    let h = Harness::builder().notify_url(&api.url).start().await;
    h.upload("alice", "retry.bin", &data(1000, 3)).await;
    let received = api.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 3, "two failures, one success");
    let keys: Vec<_> = received
        .iter()
        .map(|r| r.header("idempotency-key").map(str::to_string))
        .collect();
    assert!(keys[0].is_some());
    assert!(
        keys.iter().all(|k| k == &keys[0]),
        "same key on every attempt: {keys:?}"
    );
    assert!(
        received
            .iter()
            .all(|r| r.body["id"] == received[0].body["id"])
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.requests().len(), 3, "nothing sent after delivery");
    let m = h.scrape().await;
    m.assert("ingest_bridge_notifications_total{outcome=retried}", 2.0);
    m.assert("ingest_bridge_notifications_total{outcome=delivered}", 1.0);
    m.assert("ingest_bridge_notifications_pending", 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflict_counts_as_delivered_and_4xx_is_kept_for_an_operator() {
    let api = FakeApi::scripted([409, 400]).await;
    let h = Harness::builder().notify_url(&api.url).start().await;
    h.upload("alice", "a.bin", b"a").await;
    api.wait_for(1, Duration::from_secs(10)).await;
    h.upload("alice", "b.bin", b"b").await;
    let received = api.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received.len(), 2, "neither is retried");
    use ingest_bridge::state::OutboxStore as _;
    let outbox = ingest_bridge::notify::Outbox::open(&h.config.server.data_dir).expect("outbox");
    let dead = outbox
        .list(Some(ingest_bridge::notify::State::Dead))
        .await
        .expect("list");
    assert_eq!(dead.len(), 1, "kept as a dead letter");
    assert_eq!(dead[0].key, "alice/b.bin");
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("400")),
        "{:?}",
        dead[0].last_error
    );
    let m = h.scrape().await;
    m.assert("ingest_bridge_notifications_total{outcome=duplicate}", 1.0);
    m.assert("ingest_bridge_notifications_total{outcome=failed}", 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_reset_mid_transfer_leaves_nothing_with_resuming_off() {
    let (h, api) = Harness::builder()
        .resume_window("0s")
        .start_with_api()
        .await;
    let mut ftp = h.login("alice").await;
    let mut stream = ftp.put_with_stream("cut.bin").await.expect("STOR accepted");
    // Far enough for the multipart upload to exist and parts to be in S3.
    stream
        .write_all(&data(12 * 1024 * 1024, 4))
        .await
        .expect("write");
    stream.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !h.open_multipart_ids().is_empty(),
        "parts were being uploaded"
    );
    stream
        .get_ref()
        .get_ref()
        .set_zero_linger()
        .expect("linger");
    drop(stream); // RST
    let reply = ftp.noop().await;
    // The control connection reports the failed transfer (426) before NOOP's answer.
    let _ = reply;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !h.open_multipart_ids().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = h.open_multipart_ids();
    assert!(left.is_empty(), "multipart upload aborted, left: {left:?}");
    assert_eq!(h.object("alice/cut.bin").await, None, "no object");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(api.requests().is_empty(), "no completion");
    assert!(h.events().is_empty(), "nothing in the event log");
    let m = h.scrape().await;
    m.assert("ingest_bridge_uploads_total{outcome=aborted}", 1.0);
    m.assert("ingest_bridge_buffer_bytes_in_use", 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multipart_abort_is_confirmed_by_list_parts_with_resuming_off() {
    let h = Harness::builder().resume_window("0s").start().await;
    let mut ftp = h.login("alice").await;
    let mut stream = ftp
        .put_with_stream("gone.bin")
        .await
        .expect("STOR accepted");
    stream
        .write_all(&data(11 * 1024 * 1024, 5))
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = h.open_multipart_ids();
    assert_eq!(ids.len(), 1);
    assert!(
        !h.s3
            .list_parts("alice/gone.bin", &ids[0])
            .await
            .expect("parts listed")
            .is_empty()
    );
    stream
        .get_ref()
        .get_ref()
        .set_zero_linger()
        .expect("linger");
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match h.s3.list_parts("alice/gone.bin", &ids[0]).await {
            // AWS answers NoSuchUpload; s3s-fs lists no parts.
            Err(e) if e.not_found => break,
            Ok(parts) if parts.is_empty() => break,
            _ if tokio::time::Instant::now() > deadline => panic!("upload {} still listed", ids[0]),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_data_connection_times_out_and_aborts_with_resuming_off() {
    let h = Harness::builder()
        .data_timeout("1s")
        .resume_window("0s")
        .start()
        .await;
    let mut ftp = h.login("alice").await;
    let mut stream = ftp
        .put_with_stream("stalled.bin")
        .await
        .expect("STOR accepted");
    stream
        .write_all(&data(6 * 1024 * 1024, 6))
        .await
        .expect("write");
    stream.flush().await.expect("flush");
    // Keep the socket open but silent well past the timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let result = stream.finish().await;
    assert!(result.is_err(), "the stalled transfer failed: {result:?}");
    assert_eq!(h.object("alice/stalled.bin").await, None);
    assert!(h.open_multipart_ids().is_empty());
    assert!(h.events().is_empty());
    let m = h.scrape().await;
    m.assert(
        "ingest_bridge_limits_exceeded_total{limit=stalled_transfer}",
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_failing_mid_upload_fails_the_transfer_without_completion() {
    let (h, api) = Harness::builder().start_with_api().await;
    let mut ftp = h.login("alice").await;
    let mut stream = ftp
        .put_with_stream("doomed.bin")
        .await
        .expect("STOR accepted");
    stream
        .write_all(&data(6 * 1024 * 1024, 7))
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.store.stop();
    // The rest of the file: the bridge's next parts and the completion must fail.
    let _ = stream.write_all(&data(6 * 1024 * 1024, 8)).await;
    let result = stream.finish().await;
    assert!(result.is_err(), "the client hears an error, got {result:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(api.requests().is_empty(), "no completion");
    assert!(h.events().is_empty());

    // Bring the same store back up: no object at the key.
    let revived =
        ingest_bridge::storage::embedded::EmbeddedStore::start(&h.store_root(), "ingest", 0)
            .await
            .expect("store restarts");
    let s3 = common::s3_client(&revived).await;
    assert!(s3.head("alice/doomed.bin").await.expect("head").is_none());
    let m = h.scrape().await;
    assert!(
        m.get("ingest_bridge_s3_retries_total") >= 1.0,
        "the SDK's retries against the dead store are counted"
    );
    m.assert("ingest_bridge_uploads_total{outcome=failed}", 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_uploads_land_within_a_small_memory_budget() {
    let (h, api) = Harness::builder()
        .part_size("5MiB")
        .memory_limit("12MiB")
        .upload_concurrency(2)
        .start_with_api()
        .await;
    // Up to 50 sessions sharing 12 MiB: `ftp.data_receive_buffer = "auto"` gives each data
    // connection a fixed receive buffer (down to 123 KiB) instead of the kernel's autotuning.
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        // Every fifth upload needs parts; the rest fit in a first buffer or one PutObject.
        let len = if i % 5 == 0 {
            6 * 1024 * 1024 + i as usize
        } else {
            100_000 + 50_000 * i as usize
        };
        let bytes = data(len, 100 + i);
        let addr = h.ftp;
        tasks.push(tokio::spawn(async move {
            let mut ftp = suppaftp::tokio::AsyncFtpStream::connect(addr)
                .await
                .expect("connect");
            ftp.login("alice", common::PASSWORD).await.expect("login");
            ftp.transfer_type(suppaftp::types::FileType::Binary)
                .await
                .expect("binary");
            let mut r = std::io::Cursor::new(bytes.clone());
            ftp.put_file(format!("many/f{i}.bin"), &mut r)
                .await
                .expect("upload");
            let _ = ftp.quit().await;
            (i, bytes)
        }));
    }
    let mut uploaded = Vec::new();
    for t in tasks {
        uploaded.push(t.await.expect("task"));
    }
    for (i, bytes) in &uploaded {
        let got = h
            .object(&format!("alice/many/f{i}.bin"))
            .await
            .expect("object exists");
        assert!(got == *bytes, "f{i} intact");
    }
    let budget = h.bridge().pipeline.budget();
    assert!(
        budget.peak() <= budget.limit(),
        "peak {} above limit {}",
        budget.peak(),
        budget.limit()
    );
    assert!(budget.peak() > 0);
    assert_eq!(budget.in_use(), 0);
    let received = api.wait_for(50, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_lets_running_uploads_finish() {
    let mut h = Harness::start().await;
    let mut ftp = h.login("alice").await;
    let mut stream = ftp
        .put_with_stream("late.bin")
        .await
        .expect("STOR accepted");
    let bytes = data(7 * 1024 * 1024, 9);
    stream
        .write_all(&bytes[..4 * 1024 * 1024])
        .await
        .expect("write");
    let bridge = h.bridge.take().expect("bridge");
    let stopping = tokio::spawn(bridge.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are refused once the bridge stops accepting.
    assert!(
        suppaftp::tokio::AsyncFtpStream::connect(h.ftp)
            .await
            .is_err(),
        "listener closed"
    );
    stream
        .write_all(&bytes[4 * 1024 * 1024..])
        .await
        .expect("write rest");
    stream.finish().await.expect("the running upload completes");
    stopping.await.expect("shutdown finishes");
    assert!(h.object("alice/late.bin").await.as_deref() == Some(bytes.as_slice()));
    assert_eq!(h.events().len(), 1);
}
