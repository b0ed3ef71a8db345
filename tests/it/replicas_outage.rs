//! PostgreSQL failing under a bridge, and replicas meeting an empty database: no client hears
//! success without a durable completion, `/readyz` says why while the database is away,
//! service comes back by itself, and replicas starting at one moment both migrate and serve.

use crate::common;

use common::postgres::TestServer;
use common::{FakeApi, Harness, Login, PASSWORD, data, sha256_hex};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// How long the database stays down.
const OUTAGE: Duration = Duration::from_secs(4);
/// Uploads must succeed again within this long after the database is back.
const RECOVERY: Duration = Duration::from_secs(30);

/// One upload a client tried: what it sent, when, and what it heard.
#[derive(Debug, Clone)]
struct Attempt {
    key: String,
    bytes: Arc<Vec<u8>>,
    started: Instant,
    ended: Instant,
    /// The error the client heard, `None` for success.
    error: Option<String>,
}

/// Shared record of every attempt.
type Log = Arc<parking_lot::Mutex<Vec<Attempt>>>;

/// FTP client `n` uploading small files in a loop until `stop`, reconnecting after errors.
async fn ftp_client(addr: std::net::SocketAddr, n: usize, log: Log, stop: Arc<AtomicBool>) {
    let mut ftp = None;
    for i in 0.. {
        let name = format!("ftp{n}-{i}.bin");
        let bytes = Arc::new(data(2048 + i % 7, (n * 100_000 + i) as u64));
        let started = Instant::now();
        let result = async {
            if ftp.is_none() {
                let mut c = suppaftp::tokio::AsyncFtpStream::connect(addr)
                    .await
                    .map_err(|e| e.to_string())?;
                c.login("alice", PASSWORD)
                    .await
                    .map_err(|e| e.to_string())?;
                c.transfer_type(suppaftp::types::FileType::Binary)
                    .await
                    .map_err(|e| e.to_string())?;
                ftp = Some(c);
            }
            let c = ftp.as_mut().expect("connected");
            c.put_file(&name, &mut std::io::Cursor::new(bytes.to_vec()))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        .await;
        if result.is_err() {
            // A refused STOR leaves the session usable, but start clean after any error.
            if let Some(mut c) = ftp.take() {
                let _ = c.quit().await;
            }
        }
        if logged(&log, &name, bytes, started, result, &stop).await {
            return;
        }
    }
}

/// Logs one attempt of a client loop; true when the loop is to stop, after a short pause
/// otherwise.
async fn logged(
    log: &Log,
    name: &str,
    bytes: Arc<Vec<u8>>,
    started: Instant,
    result: Result<(), String>,
    stop: &AtomicBool,
) -> bool {
    log.lock().push(Attempt {
        key: format!("alice/{name}"),
        bytes,
        started,
        ended: Instant::now(),
        error: result.err(),
    });
    if stop.load(Ordering::SeqCst) {
        return true;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    false
}

/// An SFTP client uploading small files in a loop until `stop`, reconnecting after errors.
async fn sftp_client(addr: std::net::SocketAddr, log: Log, stop: Arc<AtomicBool>) {
    let mut session: Option<common::SftpClient> = None;
    for i in 0.. {
        let name = format!("sftp-{i}.bin");
        let bytes = Arc::new(data(3000 + i % 5, 900_000 + i as u64));
        let started = Instant::now();
        let result = async {
            if session.is_none() {
                session = Some(common::sftp_login(addr, "alice", Login::Password(PASSWORD)).await?);
            }
            let sftp = &session.as_ref().expect("connected").sftp;
            let mut file = sftp
                .create(name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            file.write_all(&bytes).await.map_err(|e| e.to_string())?;
            file.shutdown().await.map_err(|e| e.to_string())
        }
        .await;
        if result.is_err() {
            session = None;
        }
        if logged(&log, &name, bytes, started, result, &stop).await {
            return;
        }
    }
}

/// `GET path` from the metrics endpoint at `addr`: status and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://{addr}{path}")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// PostgreSQL stopped (as by a crash) for a few seconds and started again while FTP and
/// SFTP clients upload in a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_under_load_never_loses_a_completion_a_client_heard_succeed() {
    let mut pg = TestServer::private();
    // A password (which the test server does not ask for) that must never be shown.
    let url = pg
        .database()
        .await
        .replace("postgres@", "postgres:pw-s3cret@");
    // The API refuses until PostgreSQL is back, so every completion heard before the crash
    // is still only a row in the outbox when it happens.
    let api = FakeApi::start().await;
    let api_down = Arc::new(AtomicBool::new(true));
    let refusing = api_down.clone();
    let accepted: Arc<parking_lot::Mutex<Vec<common::Received>>> = Arc::default();
    let accepting = accepted.clone();
    api.route(move |r| {
        if refusing.load(Ordering::SeqCst) {
            return Some(common::Reply::new(503, "{}").header("retry-after", "1"));
        }
        accepting.lock().push(r.clone());
        None
    });
    let bridge = Harness::builder()
        .notify_url(&api.url)
        .notify("max_backoff", "2s")
        .state_url(&url)
        .start()
        .await;
    let metrics = bridge.bridge().metrics_addr;
    assert_eq!(get(metrics, "/readyz").await.0, 200);

    let log: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for n in 0..3 {
        clients.push(tokio::spawn(ftp_client(
            bridge.ftp,
            n,
            log.clone(),
            stop.clone(),
        )));
    }
    clients.push(tokio::spawn(sftp_client(
        bridge.sftp,
        log.clone(),
        stop.clone(),
    )));
    // /readyz every 100 ms: when, status, body.
    let probes: Arc<parking_lot::Mutex<Vec<(Instant, u16, String)>>> = Arc::default();
    let prober = {
        let probes = probes.clone();
        tokio::spawn(async move {
            loop {
                let (status, body) = get(metrics, "/readyz").await;
                probes.lock().push((Instant::now(), status, body));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let down_at = tokio::task::block_in_place(|| {
        pg.stop();
        Instant::now()
    });
    tokio::time::sleep(OUTAGE).await;
    let restarting_at = Instant::now();
    let back_at = tokio::task::block_in_place(|| {
        pg.restart();
        Instant::now()
    });
    api_down.store(false, Ordering::SeqCst);
    // Until a client hears success for an upload begun after the database is back.
    let recovered_at = loop {
        let first = log
            .lock()
            .iter()
            .filter(|a| a.started >= back_at && a.error.is_none())
            .map(|a| a.ended)
            .min();
        if let Some(t) = first {
            break t;
        }
        assert!(
            back_at.elapsed() < RECOVERY,
            "no upload succeeded within {RECOVERY:?} of PostgreSQL's return: {:?}",
            log.lock().iter().rev().take(4).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(20), c).await;
    }
    prober.abort();
    let recovery = recovered_at.duration_since(back_at);
    let attempts = log.lock().clone();
    let succeeded: Vec<&Attempt> = attempts.iter().filter(|a| a.error.is_none()).collect();
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.error.is_some()).collect();
    eprintln!(
        "{} uploads, {} succeeded, {} failed; outage {OUTAGE:?}; first success {recovery:?} \
         after PostgreSQL accepted connections again",
        attempts.len(),
        succeeded.len(),
        failed.len()
    );

    // Begun and ended while the database was down: each heard an error, which names
    // neither the database nor a server path.
    let during: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.started > down_at && a.ended < restarting_at)
        .collect();
    assert!(!during.is_empty(), "no upload was tried during the outage");
    for a in &during {
        let Some(e) = &a.error else {
            panic!("{} heard success while PostgreSQL was down", a.key);
        };
        for leak in ["postgres", "s3cret", "127.0.0.1", "/tmp", "outbox"] {
            assert!(!e.contains(leak), "the client's error names {leak:?}: {e}");
        }
    }
    let protocols = ["ftp", "sftp"].map(|p| {
        during
            .iter()
            .filter(|a| a.key.starts_with(&format!("alice/{p}")))
            .count()
    });
    assert!(
        protocols.iter().all(|n| *n > 0),
        "both protocols tried: {protocols:?}"
    );

    // Every success: whole in S3, and delivered with one id (at least once).
    let deadline = Instant::now() + Duration::from_secs(30);
    let by_key = loop {
        let mut by_key: BTreeMap<String, Vec<common::Received>> = BTreeMap::new();
        for r in accepted.lock().iter().cloned() {
            if let Some(key) = r.body["key"].as_str() {
                by_key.entry(key.to_string()).or_default().push(r);
            }
        }
        if succeeded.iter().all(|a| by_key.contains_key(&a.key)) {
            break by_key;
        }
        assert!(
            Instant::now() < deadline,
            "completions missing for {:?}",
            succeeded
                .iter()
                .filter(|a| !by_key.contains_key(&a.key))
                .map(|a| &a.key)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for a in &succeeded {
        let object = bridge.object(&a.key).await;
        assert!(
            object.as_deref() == Some(a.bytes.as_slice()),
            "{} is whole in S3",
            a.key
        );
        let got = &by_key[&a.key];
        let ids: std::collections::BTreeSet<&str> =
            got.iter().filter_map(|r| r.body["id"].as_str()).collect();
        assert_eq!(ids.len(), 1, "one id for {}: {got:?}", a.key);
        assert_eq!(got[0].body["sha256"], sha256_hex(&a.bytes));
    }
    // A completion for an upload whose client heard an error is possible only when the
    // connection broke between the commit and its acknowledgement; count them.
    let unheard = failed
        .iter()
        .filter(|a| by_key.contains_key(&a.key))
        .count();
    eprintln!("completions delivered for uploads whose client heard an error: {unheard}");

    // /readyz: not ready with the reason while down, ready again after.
    let probes = probes.lock().clone();
    let reason = probes
        .iter()
        .filter(|(t, _, _)| *t > down_at && *t < restarting_at)
        .find(|(_, status, body)| *status == 503 && body.contains("state database unreachable"));
    let Some((_, _, body)) = reason else {
        panic!("/readyz never said the database was unreachable: {probes:?}");
    };
    assert!(!body.contains("s3cret"), "{body}");
    let ready_again = probes
        .iter()
        .find(|(t, status, _)| *t > back_at && *status == 200)
        .map(|(t, _, _)| t.duration_since(back_at));
    eprintln!("/readyz ready again {ready_again:?} after PostgreSQL's return; while down: {body}");
    assert!(ready_again.is_some(), "/readyz ready again");
    assert_eq!(
        get(metrics, "/healthz").await.0,
        200,
        "liveness never failed"
    );
    let m = bridge.scrape().await;
    m.assert("ingest_bridge_state_up", 1.0);
    assert!(m.get("ingest_bridge_state_errors_total{store=outbox}") >= 1.0);
    assert!(m.get("ingest_bridge_state_connections_max") >= 1.0);
    assert!(
        recovery < RECOVERY,
        "uploads succeeded again {recovery:?} after PostgreSQL's return"
    );
}

/// Two `serve` processes started at one moment on an empty database, several times: the
/// migrations queue behind the advisory lock, both start, and both take uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_starting_together_on_an_empty_database_both_serve() {
    let pg = common::postgres::server();
    for round in 0..3 {
        let url = pg.database().await;
        let dir_a = tempfile::tempdir().expect("tempdir");
        let dir_b = tempfile::tempdir().expect("tempdir");
        let builder = || Harness::builder().state_url(&url);
        let (store, config_a) = builder().write_config(dir_a.path()).await;
        let config_b = dir_b.path().join("bridge.toml");
        std::fs::write(&config_b, builder().config_text(dir_b.path(), &store)).expect("config");
        let barrier = std::sync::Barrier::new(2);
        let (mut a, mut b) = std::thread::scope(|s| {
            let barrier = &barrier;
            let start = move |config: &std::path::Path| {
                barrier.wait();
                common::spawn_bridge_process(config)
            };
            let a = s.spawn(move || start(&config_a));
            let b = s.spawn(move || start(&config_b));
            (
                a.join().expect("replica A starts"),
                b.join().expect("replica B starts"),
            )
        });
        for (name, replica) in [("A", &a), ("B", &b)] {
            assert_eq!(get(replica.metrics, "/readyz").await.0, 200, "{name} ready");
            let mut ftp = common::ftp_login_at(replica.ftp, "alice").await;
            let source = data(1000, round * 2 + u64::from(name == "B"));
            ftp.put_file(
                format!("{name}-{round}.bin"),
                &mut std::io::Cursor::new(source),
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: an upload on {name}: {e}"));
            let _ = ftp.quit().await;
        }
        for child in [&mut a.child, &mut b.child] {
            let _ = child.kill();
            let _ = child.wait();
        }
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        let connection = tokio::spawn(connection);
        let tables: i64 = client
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'outbox'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(tables, 1, "round {round}: one schema");
        drop(client);
        let _ = connection.await;
    }
}

/// Multipart uploads the database fails under: one begun (and recorded) before the outage
/// and finished during it hears an error and publishes nothing; one cut during it is not
/// kept, as its record cannot be written — S3 holds no multipart upload of either. Once the
/// database is back the same file uploads whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multipart_uploads_the_database_fails_under_leave_nothing_behind() {
    const MIB: usize = 1024 * 1024;
    let mut pg = TestServer::private();
    let url = pg.database().await;
    let api = FakeApi::start().await;
    let h = Harness::builder()
        .notify_url(&api.url)
        .state_url(&url)
        .part_size("5MiB")
        .start()
        .await;
    let source = data(12 * MIB, 70);
    let mut finishing = h.login("alice").await;
    let mut stream = finishing
        .put_with_stream("whole.bin")
        .await
        .expect("STOR accepted");
    stream.write_all(&source[..11 * MIB]).await.expect("write");
    stream.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !h.open_multipart_ids().is_empty(),
        "parts were being uploaded"
    );

    tokio::task::block_in_place(|| pg.stop());
    h.wait_metric("ingest_bridge_state_up", Duration::from_secs(5), |v| {
        v == 0.0
    })
    .await;
    stream.write_all(&source[11 * MIB..]).await.expect("write");
    let finished = stream.finish().await;
    let e = finished.expect_err("no success while the completion cannot be recorded");
    assert!(
        e.to_string().contains("cannot record uploads right now"),
        "{e}"
    );
    crate::resume::ftp_die_mid_upload(h.ftp, "cut.bin", &source).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !h.open_multipart_ids().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        h.open_multipart_ids(),
        Vec::<String>::new(),
        "every multipart upload aborted"
    );
    assert!(
        h.object("alice/whole.bin").await.is_none(),
        "nothing published"
    );
    assert!(
        h.object("alice/cut.bin").await.is_none(),
        "nothing published"
    );

    tokio::task::block_in_place(|| pg.restart());
    h.wait_metric("ingest_bridge_state_up", Duration::from_secs(5), |v| {
        v == 1.0
    })
    .await;
    h.upload("alice", "whole.bin", &source).await;
    assert!(h.object("alice/whole.bin").await.expect("object") == source);
    let got = api.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = api.requests();
    assert_eq!(
        all.len(),
        1,
        "one completion, for the upload after the outage: {all:?}"
    );
    assert_eq!(got[0].body["key"], "alice/whole.bin");
    assert_eq!(got[0].body["sha256"], sha256_hex(&source));
}
