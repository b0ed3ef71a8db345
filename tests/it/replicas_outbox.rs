//! The shared outbox's liveness across two replicas on one PostgreSQL database: a
//! completion queued on a busy replica wakes the idle one at once (LISTEN/NOTIFY, not its
//! polling interval), and a replica stopped cleanly hands its running delivery over at once
//! (its claim released, not left to lapse).

use crate::common;

use common::{FakeApi, Harness, Received, data};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long the held API takes to answer: longer than any test here runs.
const HELD: Duration = Duration::from_secs(120);

/// An API that holds every request for [`HELD`] before answering 200.
async fn held_api() -> FakeApi {
    let api = FakeApi::start().await;
    *api.delay.lock().expect("delay") = HELD;
    api
}

/// A replica of the database at `url` notifying `api`, whose requests may take as long as
/// the held API (so a held delivery is not cut by its own timeout and retried).
fn replica(url: &str, api: &FakeApi) -> common::HarnessBuilder {
    Harness::builder()
        .notify_url(&api.url)
        .notify("timeout", "300s")
        .state_url(url)
}

/// Waits up to 10 s until `api` is answering `n` requests at once.
async fn holding(api: &FakeApi, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.concurrent.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "the API never got the request");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits up to `within` for `api` to have answered a completion of `key`.
async fn completion_of(api: &FakeApi, key: &str, within: Duration) -> Received {
    let deadline = Instant::now() + within;
    loop {
        if let Some(r) = api.requests().into_iter().find(|r| r.body["key"] == key) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no completion of {key} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The outbox rows in the database at `url`: id, state, whether claimed.
async fn outbox_rows(url: &str) -> Vec<(String, String, bool)> {
    common::postgres::rows(
        url,
        "SELECT id, state, claimed_by IS NOT NULL FROM outbox ORDER BY id",
    )
    .await
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// A completes an upload while its only delivery slot is held by a slow API; B, idle, is
/// woken by A's insert and delivers it at once. B's own polling would not have: with
/// wake-ups live an idle replica looks at the outbox only every 15 s, and the one entry it
/// knows of is A's, leased for a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completion_on_a_busy_replica_wakes_the_idle_one_at_once() {
    let slow = held_api().await;
    let fast = FakeApi::start().await;
    let pg = common::postgres::server();
    let url = pg.database().await;
    let a = replica(&url, &slow).notify("concurrency", 1).start().await;
    a.upload("alice", "blocker.bin", &data(1024, 61)).await;
    holding(&slow, 1).await;
    let b = replica(&url, &fast).start_sharing(&a.store).await;
    // B starts, finds only A's leased entry, and goes to sleep.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        fast.requests().is_empty(),
        "B took over A's running delivery"
    );

    let stored = Instant::now();
    a.upload("alice", "fresh.bin", &data(2048, 62)).await;
    let got = completion_of(&fast, "alice/fresh.bin", Duration::from_secs(10)).await;
    let latency = stored.elapsed();
    eprintln!("a completion stored on A was delivered by B {latency:?} later");
    assert!(
        latency < Duration::from_secs(3),
        "B was not woken: {latency:?}"
    );
    assert_eq!(got.header("idempotency-key"), got.body["id"].as_str());
    assert_eq!(slow.concurrent.load(Ordering::SeqCst), 1, "A is still held");
    let rows = outbox_rows(&url).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .any(|(_, state, claimed)| state == "pending" && *claimed),
        "A's blocker is still A's: {rows:?}"
    );
    drop(b);
}

/// A is stopped (SIGTERM) while the API holds its delivery: A gives the running delivery
/// `server.drain_timeout` (1 s) to finish, then cuts it and releases its claim, and B —
/// woken by the release — delivers it with the same id at once, rather than after A's
/// lease (a minute; five before renewals existed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_stopped_cleanly_hands_its_running_delivery_over_at_once() {
    let api = held_api().await;
    let pg = common::postgres::server();
    let url = pg.database().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, config) = replica(&url, &api)
        .drain_timeout("1s")
        .write_config(dir.path())
        .await;
    let mut a = common::spawn_bridge_process(&config);
    let mut ftp = common::ftp_login_at(a.ftp, "alice").await;
    ftp.put_file("held.bin", &mut std::io::Cursor::new(data(4096, 63)))
        .await
        .expect("STOR on A");
    let _ = ftp.quit().await;
    holding(&api, 1).await;
    let rows = outbox_rows(&url).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (id, _, claimed) = rows[0].clone();
    assert!(claimed, "A holds its delivery");

    let b = replica(&url, &api).start_sharing(&store).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(outbox_rows(&url).await[0].2, "still A's");
    // From now on the API answers at once (A's held request stays held).
    *api.delay.lock().expect("delay") = Duration::ZERO;

    let stopped = Instant::now();
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    let sent = unsafe { libc::kill(a.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0, "SIGTERM A");
    let got = completion_of(&api, "alice/held.bin", Duration::from_secs(30)).await;
    let latency = stopped.elapsed();
    eprintln!("B delivered A's held completion {latency:?} after A was told to stop");
    assert!(
        latency < Duration::from_secs(10),
        "B waited for A's lease: {latency:?}"
    );
    assert_eq!(got.body["id"], id.as_str(), "the original id");
    assert_eq!(got.header("idempotency-key"), Some(id.as_str()));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = a.child.try_wait().expect("wait for A") {
            break status;
        }
        assert!(Instant::now() < deadline, "A did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "A stopped cleanly: {status}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = outbox_rows(&url).await;
    assert_eq!(rows, vec![(id, "delivered".to_string(), false)]);
    let answered: Vec<Received> = api.requests();
    assert_eq!(
        answered.len(),
        1,
        "only B's attempt was answered: {answered:?}"
    );
    b.assert_metric("ingest_bridge_notifications_total{outcome=delivered}", 1.0)
        .await;
}
