//! Two bridges sharing one bucket and one PostgreSQL database (`[state] url`), as two
//! replicas behind a balancer: what one replica started, the other finishes — a cut upload
//! resumed, a temporary name renamed, a ban enforced.

use crate::common;

use common::postgres::TestServer;
use common::{FakeApi, Harness, Received, data, sha256_hex};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

const MIB: usize = 1024 * 1024;

/// Replica A and replica B on one new database of the shared test server and one bucket,
/// both notifying `api`; each `customize`d the same way.
pub(crate) async fn two_replicas(
    api: &FakeApi,
    customize: impl Fn(common::HarnessBuilder) -> common::HarnessBuilder,
) -> (Arc<TestServer>, Harness, Harness) {
    let pg = common::postgres::server();
    let url = pg.database().await;
    let builder = || {
        customize(
            Harness::builder()
                .notify_url(&api.url)
                .state_url(&url)
                .part_size("5MiB"),
        )
    };
    let a = builder().start().await;
    let b = builder().start_sharing(&a.store).await;
    (pg, a, b)
}

/// The requests `api` received for object `key`.
fn completions_for(api: &FakeApi, key: &str) -> Vec<Received> {
    api.requests()
        .into_iter()
        .filter(|r| r.body["key"] == key)
        .collect()
}

/// Waits up to `within` for a completion of `key`, then a little longer for any duplicate;
/// returns all of them.
pub(crate) async fn settled_completions(
    api: &FakeApi,
    key: &str,
    within: Duration,
) -> Vec<Received> {
    let deadline = tokio::time::Instant::now() + within;
    while completions_for(api, key).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    completions_for(api, key)
}

/// The first line the FTP server at `addr` sends.
pub(crate) async fn ftp_greeting(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("a greeting in time")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_cut_on_one_replica_is_resumed_on_the_other() {
    let api = FakeApi::start().await;
    let (_pg, a, b) = two_replicas(&api, |builder| builder).await;
    let source = data(17 * MIB, 31);
    crate::resume::ftp_die_mid_upload(a.ftp, "clip.mxf", &source[..12 * MIB]).await;

    let mut ftp = b.login("alice").await;
    let kept = common::resume_from_kept(&mut ftp, "clip.mxf", &source).await;
    assert_eq!(kept, 10 * MIB, "B shows the two whole parts A kept");
    let _ = ftp.quit().await;

    let object = b.object("alice/clip.mxf").await.expect("object");
    assert!(object == source, "the object is whole");
    assert!(
        b.open_multipart_ids().is_empty(),
        "no multipart upload left"
    );
    let got = settled_completions(&api, "alice/clip.mxf", Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "one completion: {got:?}");
    assert_eq!(got[0].body["size"], source.len() as u64);
    assert_eq!(got[0].body["sha256"], sha256_hex(&source));
    assert!(a.events().is_empty(), "A completed nothing");
    let m = b.scrape().await;
    m.assert("ingest_bridge_uploads_resumed_total{protocol=ftp}", 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_temp_name_uploaded_on_one_replica_completes_when_renamed_on_the_other() {
    let api = FakeApi::start().await;
    let (_pg, a, b) = two_replicas(&api, |builder| builder).await;
    let source = data(7 * MIB, 32);
    a.upload("alice", "show.mp4.filepart", &source).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        api.requests().is_empty(),
        "no completion for a temporary name"
    );

    let mut ftp = b.login("alice").await;
    ftp.rename("show.mp4.filepart", "show.mp4")
        .await
        .expect("rename on B");
    let _ = ftp.quit().await;

    assert!(b.object("alice/show.mp4.filepart").await.is_none());
    assert!(b.object("alice/show.mp4").await.expect("object") == source);
    let got = settled_completions(&api, "alice/show.mp4", Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "one completion: {got:?}");
    assert_eq!(got[0].body["path"], "/show.mp4");
    assert_eq!(got[0].body["sha256"], sha256_hex(&source));
    let all = api.requests();
    assert_eq!(all.len(), 1, "nothing for the temporary name: {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ban_made_on_one_replica_refuses_the_address_on_the_other_within_seconds() {
    let api = FakeApi::start().await;
    let (_pg, a, b) = two_replicas(&api, |builder| builder.defender(3, "60s")).await;
    let mut ftp = b.login("alice").await;
    let _ = ftp.quit().await;

    for _ in 0..3 {
        let mut ftp = suppaftp::tokio::AsyncFtpStream::connect(a.ftp)
            .await
            .expect("connect");
        assert!(ftp.login("alice", "wrong").await.is_err());
    }
    let banned_at = tokio::time::Instant::now();
    let greeting = ftp_greeting(a.ftp).await;
    assert!(greeting.starts_with("421 "), "banned on A: {greeting}");

    // B reads bans written elsewhere at its next refresh (every 0.5 s): within a second,
    // with slack for a loaded test machine.
    loop {
        let greeting = ftp_greeting(b.ftp).await;
        if greeting.starts_with("421 ") {
            assert!(greeting.contains("failed logins"), "{greeting}");
            break;
        }
        assert!(
            banned_at.elapsed() < Duration::from_millis(1500),
            "B still greets the banned address after {:?}: {greeting}",
            banned_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delay = banned_at.elapsed();
    eprintln!("B refused the address {delay:?} after A banned it");
    assert!(
        common::sftp_login(b.sftp, "alice", common::Login::Password(common::PASSWORD))
            .await
            .is_err(),
        "banned on B's SFTP too"
    );
    b.wait_metric(
        "ingest_bridge_defender_banned_addresses",
        Duration::from_secs(3),
        |v| v == 1.0,
    )
    .await;
}

/// The pending outbox entries in the database at `url`: id, attempts, whether claimed.
async fn pending_entries(url: &str) -> Vec<(String, i64, bool)> {
    common::postgres::rows(
        url,
        "SELECT id, attempts, claimed_by IS NOT NULL FROM outbox WHERE state = 'pending'",
    )
    .await
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// A replica killed with completions pending while the API is down: the other delivers each
/// exactly once, with its original id. Failed attempts release their claim (and the API's
/// `Retry-After` spaces them 5 s apart), so the kill lands between attempts; an entry
/// claimed at the moment of a kill would wait for the lease (a minute) instead, which the
/// test checks did not happen rather than hiding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completions_pending_on_a_killed_replica_are_delivered_once_by_the_other() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let api = FakeApi::start().await;
    let down = Arc::new(AtomicBool::new(true));
    let is_down = down.clone();
    api.route(move |_| {
        is_down
            .load(Ordering::SeqCst)
            .then(|| common::Reply::new(503, "{}").header("retry-after", "5"))
    });
    let pg = common::postgres::server();
    let url = pg.database().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = || {
        Harness::builder()
            .notify_url(&api.url)
            .notify("max_backoff", "5s")
            .state_url(&url)
    };
    let (store, config) = replica().write_config(dir.path()).await;
    let mut a = common::spawn_bridge_process(&config);
    let names = ["one.bin", "two.bin", "three.bin"];
    let sources: Vec<Vec<u8>> = (0..names.len())
        .map(|i| data(4096, 40 + i as u64))
        .collect();
    let killed = async {
        let mut ftp = common::ftp_login_at(a.ftp, "alice").await;
        for (name, source) in names.iter().zip(&sources) {
            ftp.put_file(*name, &mut std::io::Cursor::new(source.clone()))
                .await
                .expect("STOR on A");
        }
        let _ = ftp.quit().await;
        // Every completion tried once and put back unclaimed until its retry.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let pending = pending_entries(&url).await;
            if pending.len() == names.len() && pending.iter().all(|(_, n, c)| *n >= 1 && !c) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "A never tried each completion: {pending:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    .await;
    a.child.kill().expect("SIGKILL A");
    let _ = a.child.wait();
    let () = killed;
    let pending = pending_entries(&url).await;
    assert!(
        pending.iter().all(|(_, _, claimed)| !claimed),
        "A died holding a claim (it waits for the lease, a minute): {pending:?}"
    );
    let ids: std::collections::BTreeSet<String> =
        pending.into_iter().map(|(id, _, _)| id).collect();
    let tried: std::collections::BTreeSet<String> = api
        .requests()
        .iter()
        .filter_map(|r| r.body["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids, tried, "the pending entries are the ones A tried");
    let before = api.requests().len();

    down.store(false, Ordering::SeqCst);
    let b = replica().start_sharing(&store).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !pending_entries(&url).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never delivered them"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let delivered: Vec<Received> = api.requests().split_off(before);
    let mut delivered_ids: Vec<String> = delivered
        .iter()
        .map(|r| r.body["id"].as_str().expect("id").to_string())
        .collect();
    delivered_ids.sort();
    assert_eq!(
        delivered_ids,
        ids.iter().cloned().collect::<Vec<_>>(),
        "each delivered exactly once by B, with its original id"
    );
    for r in &delivered {
        assert_eq!(r.header("idempotency-key"), r.body["id"].as_str());
    }
    let mut keys: Vec<&str> = delivered
        .iter()
        .map(|r| r.body["key"].as_str().expect("key"))
        .collect();
    keys.sort();
    assert_eq!(keys, ["alice/one.bin", "alice/three.bin", "alice/two.bin"]);
    b.assert_metric("ingest_bridge_notifications_total{outcome=delivered}", 3.0)
        .await;
}
