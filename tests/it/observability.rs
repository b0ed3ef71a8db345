//! What an operator watches: metric values after real traffic, and `/readyz` following the
//! S3 store down and back up.

use crate::common;

use common::{Harness, Login, PASSWORD, Scrape, data, sftp_login};
use ingest_bridge::storage::embedded::EmbeddedStore;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One GET: status code and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_uploads_sizes_failures_logins_and_deliveries() {
    let (h, api) = Harness::builder().start_with_api().await;
    h.upload("alice", "small.bin", &data(2000, 1)).await;
    h.upload("alice", "large.bin", &data(6 * 1024 * 1024, 2))
        .await;
    // A refused login, and an upload refused for lack of permission.
    let mut ftp = suppaftp::tokio::AsyncFtpStream::connect(h.ftp)
        .await
        .expect("connect");
    assert!(ftp.login("alice", "wrong").await.is_err());
    let mut reader = h.login("reader").await;
    let mut bytes = std::io::Cursor::new(b"no".to_vec());
    assert!(reader.put_file("nope.bin", &mut bytes).await.is_err());
    api.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, text) = get(h.bridge().metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    let m = Scrape(text.clone());
    m.assert(
        "ingest_bridge_uploads_total{protocol=ftp,outcome=completed}",
        2.0,
    );
    m.assert(
        "ingest_bridge_uploads_total{protocol=ftp,outcome=rejected}",
        1.0,
    );
    m.assert(
        "ingest_bridge_upload_bytes_total{protocol=ftp}",
        (2000 + 6 * 1024 * 1024) as f64,
    );
    m.assert("ingest_bridge_upload_size_bytes_count{protocol=ftp}", 2.0);
    m.assert(
        "ingest_bridge_upload_size_bytes_sum{protocol=ftp}",
        (2000 + 6 * 1024 * 1024) as f64,
    );
    assert_eq!(
        m.get("ingest_bridge_upload_size_bytes_bucket{protocol=ftp,le=4096}"),
        1.0,
        "2,000 bytes in the 4 KiB bucket"
    );
    assert_eq!(
        m.get("ingest_bridge_upload_size_bytes_bucket{protocol=ftp,le=1099511627776}"),
        2.0,
        "the last bucket is 1 TiB"
    );
    m.assert(
        "ingest_bridge_upload_duration_seconds_count{protocol=ftp}",
        2.0,
    );
    m.assert("ingest_bridge_upload_bytes_in_flight{protocol=ftp}", 0.0);
    m.assert("ingest_bridge_uploads_active{protocol=ftp}", 0.0);
    m.assert("ingest_bridge_buffer_bytes_in_use", 0.0);
    m.assert(
        "ingest_bridge_logins_total{protocol=ftp,result=failure}",
        1.0,
    );
    m.assert(
        "ingest_bridge_logins_total{protocol=ftp,result=success}",
        3.0,
    );
    m.assert("ingest_bridge_notifications_total{outcome=delivered}", 2.0);
    m.assert("ingest_bridge_notifications_pending", 0.0);
    m.assert("ingest_bridge_notification_duration_seconds_count", 2.0);
    m.assert(
        "ingest_bridge_s3_requests_total{operation=PutObject,result=success}",
        1.0,
    );
    m.assert(
        "ingest_bridge_s3_requests_total{operation=CompleteMultipartUpload,result=success}",
        1.0,
    );
    m.assert("ingest_bridge_build_info", 1.0);
    assert!(m.get("ingest_bridge_process_resident_memory_bytes") > 0.0);
    assert!(m.get("ingest_bridge_process_open_fds") > 0.0);
    // Every sample line is `name{labels} value`, and no label carries a user, path or address.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        assert!(value.parse::<f64>().is_ok(), "{line}");
        assert!(
            !series.contains("alice")
                && !series.contains("small.bin")
                && !series.contains("127.0.0.1"),
            "{line}"
        );
    }

    // While an upload runs, its bytes are in flight.
    let mut ftp = h.login("alice").await;
    let mut stream = ftp.put_with_stream("slow.bin").await.expect("STOR");
    stream.write_all(&data(100_000, 3)).await.expect("write");
    stream.flush().await.expect("flush");
    let in_flight = "ingest_bridge_upload_bytes_in_flight{protocol=ftp}";
    let now = h
        .wait_metric(in_flight, Duration::from_secs(5), |v| v == 100_000.0)
        .await;
    assert_eq!(now, 100_000.0, "in flight");
    stream.finish().await.expect("226");
    h.assert_metric(in_flight, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_follows_the_store_down_and_back() {
    let (h, _api) = Harness::builder().start_with_api().await;
    let addr = h.bridge().metrics_addr;
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("json");
    for check in ["listeners", "s3", "event_log", "outbox"] {
        assert_eq!(ready["checks"][check]["ok"], true, "{check}: {body}");
    }
    assert_eq!(get(addr, "/healthz").await.0, 200);

    h.store.stop();
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let not_ready: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(not_ready["checks"]["s3"]["ok"], false, "{body}");
    assert!(
        not_ready["checks"]["s3"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    assert_eq!(not_ready["checks"]["outbox"]["ok"], true);
    assert_eq!(get(addr, "/healthz").await.0, 200, "alive all the same");

    let listen: std::net::SocketAddr = h
        .store
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let _back = EmbeddedStore::start_on(
        &h.store_root(),
        "ingest",
        listen,
        (h.store.access_key.clone(), h.store.secret_key.clone()),
    )
    .await
    .expect("store back on the same port");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(addr, "/readyz").await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The audit file's records of one kind.
fn audit_records(h: &Harness, kind: &str) -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(h.config.server.data_dir.join("audit.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON object per line"))
        .filter(|r| r["record"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_trail_has_one_record_per_transfer_and_login() {
    let h = Harness::start().await;
    let bytes = data(3000, 4);
    h.upload("alice", "audited.bin", &bytes).await;
    let mut reader = h.login("reader").await;
    let mut refused = std::io::Cursor::new(b"no".to_vec());
    assert!(reader.put_file("refused.bin", &mut refused).await.is_err());
    let mut ftp = suppaftp::tokio::AsyncFtpStream::connect(h.ftp)
        .await
        .expect("connect");
    assert!(ftp.login("alice", "not-the-password").await.is_err());

    // Aborted: the SFTP session ends before the file is closed.
    common::vanish_mid_sftp_upload(h.sftp, "/cut.bin", &data(100_000, 5)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while audit_records(&h, "transfer").len() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let transfers = audit_records(&h, "transfer");
    assert_eq!(transfers.len(), 3, "{transfers:#?}");
    let by_path = |p: &str| {
        transfers
            .iter()
            .find(|t| t["path"] == p)
            .unwrap_or_else(|| panic!("no record for {p}: {transfers:#?}"))
    };
    let done = by_path("/audited.bin");
    assert_eq!(done["outcome"], "completed");
    assert_eq!(done["protocol"], "ftp");
    assert_eq!(done["user"], "alice");
    assert_eq!(done["key"], "alice/audited.bin");
    assert_eq!(done["size"], 3000);
    assert_eq!(done["sha256"], common::sha256_hex(&bytes));
    assert!(done["duration_ms"].is_u64());
    assert!(
        done["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    assert!(done["session"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(done.get("error").is_none());
    let no = by_path("/refused.bin");
    assert_eq!(no["outcome"], "rejected");
    assert_eq!(no["user"], "reader");
    assert!(
        no["error"]
            .as_str()
            .is_some_and(|e| e.contains("permission"))
    );
    let cut = by_path("/cut.bin");
    assert_eq!(cut["outcome"], "aborted");
    assert_eq!(cut["protocol"], "sftp");
    assert_eq!(cut["size"], 100_000);
    assert!(cut.get("sha256").is_none());
    assert!(cut["error"].as_str().is_some_and(|e| !e.is_empty()));

    let logins = audit_records(&h, "login");
    let failed: Vec<_> = logins.iter().filter(|l| l["success"] == false).collect();
    assert_eq!(failed.len(), 1, "{logins:#?}");
    assert_eq!(failed[0]["user"], "alice");
    assert_eq!(failed[0]["method"], "password");
    assert!(
        logins
            .iter()
            .any(|l| l["protocol"] == "sftp" && l["success"] == true)
    );
    let text =
        std::fs::read_to_string(h.config.server.data_dir.join("audit.jsonl")).expect("audit");
    assert!(
        !text.contains("not-the-password") && !text.contains(PASSWORD),
        "no secrets"
    );
    // The FTP upload's session is the one its login was recorded under.
    assert!(
        logins
            .iter()
            .any(|l| l["session"] == done["session"] && l["success"] == true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_and_alerts_name_only_metrics_the_bridge_exports() {
    let (h, api) = Harness::builder().start_with_api().await;
    h.upload("alice", "seen.bin", b"traffic so every series exists")
        .await;
    let c = sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("login");
    drop(c);
    api.wait_for(1, Duration::from_secs(10)).await;
    let _ = get(h.bridge().metrics_addr, "/metrics").await; // sets ingest_bridge_ready
    let (_, exposition) = get(h.bridge().metrics_addr, "/metrics").await;
    let exported: std::collections::HashSet<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let name = regex::Regex::new(r"ingest_bridge_[a-z0-9_]+").expect("regex");
    let root = env!("CARGO_MANIFEST_DIR");

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/ingest-bridge.json"))
            .expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut queries = 0;
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queries += 1;
            let names: Vec<&str> = name.find_iter(expr).map(|m| m.as_str()).collect();
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                assert!(
                    exported.contains(n),
                    "panel {:?} queries {n}, not exported",
                    panel["title"]
                );
            }
        }
    }
    assert!(queries >= 15);

    let alerts =
        std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).expect("alerts");
    let mut named = 0;
    for n in name.find_iter(&alerts).map(|m| m.as_str()) {
        named += 1;
        assert!(exported.contains(n), "an alert uses {n}, not exported");
    }
    assert!(named >= 5);
    for alert in [
        "NotificationBacklogOld",
        "UploadFailureRatio",
        "S3Errors",
        "NotReady",
        "MemoryBudgetSaturated",
    ] {
        assert!(
            alerts.contains(&format!("alert: IngestBridge{alert}")),
            "{alert}"
        );
    }
}
