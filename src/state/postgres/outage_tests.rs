//! The PostgreSQL backend while its database stops and starts again (a private test server
//! each, as stopping the shared one would fail other tests): the health probe, failing fast,
//! pooled connections that broke, and durable commits.

use super::test_server::{TestServer, server};
use super::{Pg, open};
use crate::config::StateTls;
use crate::state::Stores;
use std::time::{Duration, Instant};

/// A quota read: the cheapest operation that needs a connection.
async fn read(stores: &Stores) -> Result<(), crate::state::StateError> {
    stores.quota.quota_usage("alice".into()).await.map(|_| ())
}

/// Waits up to `within` for `done`; returns how long it took.
async fn wait_until(within: Duration, what: &str, done: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Down: the probe says why (without the password) and operations fail at once; back: the
/// probe clears it and operations succeed, with no restart of the stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_reported_failed_fast_and_recovered_from() {
    let mut pg = TestServer::private();
    let url = pg
        .database()
        .await
        .replace("postgres@", "postgres:s3cret-pw@");
    let stores = open(&url, true, 4, &StateTls::default())
        .await
        .expect("open");
    let health = stores
        .health
        .clone()
        .expect("a shared database has a health");
    read(&stores).await.expect("read while up");
    assert_eq!(health.check(), Ok(()));

    pg.stop();
    let noticed = wait_until(Duration::from_secs(5), "the probe notices", || {
        health.check().is_err()
    })
    .await;
    let why = health.check().expect_err("down");
    assert!(why.starts_with("state database unreachable"), "{why}");
    assert!(!why.contains("s3cret"), "no password in the reason: {why}");
    assert!(why.contains("refused"), "the cause is said: {why}");
    let started = Instant::now();
    let e = read(&stores).await.expect_err("no database");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "fails at once, not after a connection attempt: {:?}",
        started.elapsed()
    );
    assert!(e.to_string().contains("unreachable"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");

    pg.restart();
    let back = wait_until(Duration::from_secs(5), "the probe sees it back", || {
        health.check().is_ok()
    })
    .await;
    read(&stores).await.expect("read once it is back");
    eprintln!("outage noticed after {noticed:?}; recovery seen {back:?} after the restart");
}

/// Connections pooled before a restart broke with it; the first operation after the restart
/// gets a new one rather than failing on a dead one (no health probe here to hide it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_operation_after_a_restart_succeeds() {
    let mut pg = TestServer::private();
    let url = pg.database().await;
    let db = Pg::connect(&url, 4, &StateTls::default())
        .await
        .expect("pool");
    let query = |db: Pg| async move {
        let client = db.client("test").await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| db.error("test", e))
    };
    // Several connections in the pool, all idle.
    let held: Vec<_> = futures::future::join_all((0..3).map(|_| db.client("test"))).await;
    drop(held);
    query(db.clone()).await.expect("up");
    pg.stop();
    pg.restart();
    for i in 0..4 {
        query(db.clone())
            .await
            .unwrap_or_else(|e| panic!("operation {i} after the restart: {e}"));
    }
}

/// The shared test server runs with `synchronous_commit = off`; the bridge's sessions turn
/// it on, so an outbox insert is on disk before the client hears success.
#[tokio::test]
async fn sessions_commit_durably_on_a_server_that_does_not() {
    let pg = server();
    let url = pg.database().await;
    let db = Pg::connect(&url, 1, &StateTls::default())
        .await
        .expect("pool");
    let client = db.client("test").await.expect("connection");
    let row = client
        .query_one("SELECT current_setting('synchronous_commit')", &[])
        .await
        .expect("setting");
    assert_eq!(row.get::<_, String>(0), "on");
    let server_default = client
        .query_one(
            "SELECT reset_val FROM pg_settings WHERE name = 'synchronous_commit'",
            &[],
        )
        .await
        .expect("default");
    assert_eq!(
        server_default.get::<_, String>(0),
        "off",
        "the test's premise"
    );
}
