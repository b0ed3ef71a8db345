//! The PostgreSQL backend against a real PostgreSQL 15 (see `test_server`): the shared
//! conformance suite, each function on a fresh database, and what only a shared database
//! has — migrations racing, a newer schema, replicas seeing each other's bans and leases.

use super::test_server::{TestServer, server};
use super::{DEFAULT_MAX_CONNECTIONS, PgBans, SCHEMA_VERSION, open, open_with_bans};
use crate::config::{StateTls, TlsVerify};
use crate::state::{BanStore, OutboxStore, PendingEntry, Stores, conformance, now_ms};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// `[state]` without TLS keys (the test server speaks plain text, which `prefer` accepts).
pub(super) const NO_KEYS: StateTls = StateTls {
    verify: TlsVerify::Full,
    ca_file: None,
};

/// A fresh database on the shared server, with every store opened on it.
pub(super) async fn stores() -> (Arc<TestServer>, String, Stores) {
    let server = server();
    let url = server.database().await;
    let stores = open(&url, true, DEFAULT_MAX_CONNECTIONS, &NO_KEYS)
        .await
        .expect("open the PostgreSQL stores");
    (server, url, stores)
}

#[tokio::test]
async fn postgres_outbox() {
    let (_server, _, stores) = stores().await;
    conformance::outbox(stores.outbox.as_deref().expect("outbox")).await;
}

#[tokio::test]
async fn postgres_outbox_batch() {
    let (_server, _, stores) = stores().await;
    conformance::outbox_batch(stores.outbox.as_deref().expect("outbox")).await;
}

#[tokio::test]
async fn postgres_outbox_pages() {
    let (_server, _, stores) = stores().await;
    conformance::outbox_pages(stores.outbox.as_deref().expect("outbox")).await;
}

#[tokio::test]
async fn postgres_cut_uploads() {
    let (_server, _, stores) = stores().await;
    conformance::cut_uploads(stores.uploads.as_ref()).await;
}

#[tokio::test]
async fn postgres_temp_names() {
    let (_server, _, stores) = stores().await;
    conformance::temp_names(stores.temp_names.as_ref()).await;
}

#[tokio::test]
async fn postgres_quota() {
    let (_server, _, stores) = stores().await;
    conformance::quota(stores.quota.as_ref()).await;
    conformance::quota_claims(stores.quota.as_ref()).await;
}

#[tokio::test]
async fn postgres_dirs() {
    let (_server, _, stores) = stores().await;
    conformance::dirs(stores.dirs.as_ref()).await;
}

/// The suite on the cache, then the same answers from a second replica's store that only
/// read the table: every change was written through.
#[tokio::test]
async fn postgres_bans() {
    let server = server();
    let url = server.database().await;
    let (_, bans) = open_with_bans(&url, false, 2, &NO_KEYS)
        .await
        .expect("open");
    conformance::bans(bans.as_ref());
    bans.sync().await.expect("every change written");
    let other = open(&url, false, 2, &NO_KEYS)
        .await
        .expect("second replica");
    let ip = "198.51.100.7".parse().expect("ip");
    let other_ip = "2001:db8::1".parse().expect("ip");
    let now = SystemTime::now();
    // As the suite left them: `ip` unbanned after two bans, `other_ip` banned for ~1000 s.
    assert_eq!(other.bans.banned_until(ip, now), None);
    assert!(other.bans.banned_until(other_ip, now).is_some());
    let score = other
        .bans
        .add_failure(ip, now + Duration::from_secs(400), Duration::from_secs(60))
        .expect("not banned");
    assert_eq!(score.bans, 2, "the ban count came through the table");
}

/// Two replicas' ban stores on one fresh database.
async fn two_replicas() -> (Arc<TestServer>, Arc<PgBans>, Arc<PgBans>) {
    let server = server();
    let url = server.database().await;
    let (a, b) = two_replicas_on(&url).await;
    (server, a, b)
}

/// Two replicas' ban stores on the database at `url`.
async fn two_replicas_on(url: &str) -> (Arc<PgBans>, Arc<PgBans>) {
    let (_, a) = open_with_bans(url, false, 2, &NO_KEYS)
        .await
        .expect("first replica");
    let (_, b) = open_with_bans(url, false, 2, &NO_KEYS)
        .await
        .expect("second replica");
    (a, b)
}

/// Both replicas' changes written and each one's cache refreshed from the table.
async fn settle(a: &PgBans, b: &PgBans) {
    a.sync().await.expect("written and read");
    b.sync().await.expect("written and read");
    a.sync().await.expect("written and read");
}

#[tokio::test]
async fn a_ban_on_one_replica_reaches_the_others() {
    let (_server, a, b) = two_replicas().await;
    let ip = "203.0.113.9".parse().expect("ip");
    let now = SystemTime::now();
    let until = now + Duration::from_secs(600);
    let window = Duration::from_secs(60);

    // Failures on both replicas add up in the table.
    assert_eq!(a.add_failure(ip, now, window).map(|s| s.failures), Some(1));
    settle(&a, &b).await;
    let later = now + Duration::from_millis(5);
    assert_eq!(
        b.add_failure(ip, later, window).map(|s| s.failures),
        Some(2)
    );
    settle(&a, &b).await;
    assert_eq!(
        a.add_failure(ip, now + Duration::from_millis(9), window)
            .map(|s| s.failures),
        Some(3)
    );

    // A ban reaches the other replica, to the millisecond.
    assert_eq!(a.ban(ip, now, until), Some(1));
    settle(&a, &b).await;
    let seen = b
        .banned_until(ip, now)
        .expect("banned on the other replica");
    assert!(
        seen <= until && until.duration_since(seen).unwrap_or_default() < Duration::from_millis(1)
    );
    assert_eq!(b.banned_count(now), 1);
    assert_eq!(b.add_failure(ip, now, window), None, "banned: not counted");

    // Both replicas banning at once, each before seeing the other's: the ban counts once.
    let other = "203.0.113.10".parse().expect("ip");
    assert_eq!(a.ban(other, now, until), Some(1));
    assert_eq!(b.ban(other, now, until), Some(1));
    settle(&a, &b).await;

    // An unban on one replica lifts the ban on both; the ban counts stay.
    b.unban(other);
    a.unban(ip);
    settle(&a, &b).await;
    for replica in [&a, &b] {
        assert_eq!(replica.banned_until(other, now), None);
        assert_eq!(replica.banned_until(ip, now), None);
        assert_eq!(replica.banned_count(now), 0);
    }
    let score = a.add_failure(other, now, window).expect("not banned");
    assert_eq!(score.bans, 1, "two simultaneous bans counted once");
    let score = b.add_failure(ip, now, window).expect("not banned");
    assert_eq!(
        (score.failures, score.bans),
        (1, 1),
        "the ban cleared the failures"
    );
}

/// Replicas starting together on an empty database: both open, one schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_of_an_empty_database_both_succeed() {
    let server = server();
    let url = server.database().await;
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { open(&url, true, 2, &NO_KEYS).await })
        })
        .collect();
    for opened in opens {
        let stores = opened
            .await
            .expect("task")
            .expect("every replica opens the database");
        stores
            .outbox
            .expect("outbox")
            .check_writable()
            .await
            .expect("writable");
    }
    let version: i32 =
        super::test_server::rows(&url, "SELECT version FROM ingest_bridge_schema").await[0].get(0);
    assert_eq!(version, SCHEMA_VERSION);
}

/// A database a newer release migrated is refused, saying what to do.
#[tokio::test]
async fn a_newer_schema_is_refused() {
    let (_server, url, _stores) = stores().await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .execute(
            "UPDATE ingest_bridge_schema SET version = $1",
            &[&(SCHEMA_VERSION + 1)],
        )
        .await
        .expect("pretend a newer release ran");
    let error = open(&url, true, 2, &NO_KEYS).await.expect_err("refused");
    let message = format!("{error}");
    assert!(
        message.contains(&format!("version {}", SCHEMA_VERSION + 1))
            && message.contains("newer")
            && message.contains("Run that release"),
        "{message}"
    );
    assert!(!message.contains("password"), "{message}");
    assert_eq!(error.store(), "state database");
    let source = std::error::Error::source(&error).expect("cause");
    assert!(source.downcast_ref::<super::SchemaTooNew>().is_some());
}

/// The outbox's lease: an entry one replica claimed is neither due nor claimable on
/// another until the lease ends (a dead replica's entries are taken over) or is released.
#[tokio::test]
async fn a_claimed_entry_is_leased_to_its_replica() {
    let (_server, url, first) = stores().await;
    let second = open(&url, true, 2, &NO_KEYS).await.expect("second replica");
    let (a, b) = (
        first.outbox.expect("outbox"),
        second.outbox.expect("outbox"),
    );
    a.insert(PendingEntry {
        id: "e".into(),
        key: "u/e.bin".into(),
        body: b"{}".to_vec(),
        step: 0,
        fields: serde_json::Map::new(),
        attempts: 0,
        since_ms: 0,
    })
    .await
    .expect("insert");
    let now = now_ms();
    assert!(a.claim("e", now).await.expect("claim").is_some());
    assert!(b.due(now, 10).await.expect("due").is_empty());
    assert!(b.claim("e", now).await.expect("claim").is_none(), "leased");
    assert!(a.claim("e", now).await.expect("claim").is_some(), "its own");
    let after = now + super::outbox::LEASE_MS + 1;
    assert_eq!(b.due(after, 10).await.expect("due"), vec!["e"]);
    assert!(
        b.claim("e", after).await.expect("claim").is_some(),
        "taken over"
    );
    // A reschedule releases the lease: the next attempt is anyone's.
    b.reschedule("e", 1, now, "503".into())
        .await
        .expect("reschedule");
    assert!(a.claim("e", now).await.expect("claim").is_some());
}

/// Concurrent resumes of one cut upload on two replicas: exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_resumes_a_cut_upload() {
    let (_server, url, first) = stores().await;
    let second = open(&url, false, 2, &NO_KEYS)
        .await
        .expect("second replica");
    let mut rec = crate::state::PartialRecord::running("u/x.bin", "up");
    rec.fields.insert("asset".into(), "1".into());
    first.uploads.begin(rec).await.expect("begin");
    first
        .uploads
        .suspend("u/x.bin".into(), "up".into(), 5, 1, vec![7])
        .await
        .expect("suspend");
    for _ in 0..10 {
        let (a, b) = (first.uploads.clone(), second.uploads.clone());
        let one = tokio::spawn(async move { a.activate("u/x.bin".into(), "up".into()).await });
        let two = tokio::spawn(async move { b.activate("u/x.bin".into(), "up".into()).await });
        let won = [one, two];
        let mut winners = 0;
        for task in won {
            if task.await.expect("task").expect("activate") {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
        second
            .uploads
            .suspend("u/x.bin".into(), "up".into(), 5, 1, vec![7])
            .await
            .expect("suspend again");
    }
}

/// A URL that is not PostgreSQL's, or a server that is not there, is a typed error.
#[tokio::test]
async fn bad_urls_are_typed_errors() {
    let error = open(
        "postgres://u:secret@127.0.0.1:notaport/db",
        true,
        2,
        &NO_KEYS,
    )
    .await
    .expect_err("bad url");
    let message = format!("{error}");
    assert!(message.contains("not a PostgreSQL URL"), "{message}");
    assert!(!message.contains("secret"), "{message}");
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let url = format!("postgres://u:secret@127.0.0.1:{port}/db?connect_timeout=2");
    let error = open(&url, true, 2, &NO_KEYS)
        .await
        .expect_err("nothing listens");
    let message = format!("{error}");
    assert!(
        message.contains(&format!("127.0.0.1:{port}/db")),
        "{message}"
    );
    assert!(!message.contains("secret"), "{message}");
}

/// A pending entry `id`, due at once.
fn entry(id: &str) -> PendingEntry {
    PendingEntry {
        id: id.into(),
        key: format!("u/{id}.bin"),
        body: b"{}".to_vec(),
        step: 0,
        fields: serde_json::Map::new(),
        attempts: 0,
        since_ms: 0,
    }
}

/// Waits up to 10 s for `wakeups` to be live, then takes the wake-up that going live gives.
async fn listening(wakeups: &crate::state::Wakeups) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !wakeups.live() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener never connected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    woken(wakeups, "going live").await;
}

/// Asserts that `wakeups` wakes within 5 s.
async fn woken(wakeups: &crate::state::Wakeups, why: &str) {
    tokio::time::timeout(Duration::from_secs(5), wakeups.changed())
        .await
        .unwrap_or_else(|_| panic!("not woken by {why}"));
}

/// A clean stop releases the stopping replica's claims: another replica is woken and
/// claims the entry at once, not when the lease ends. Meanwhile the other replica's next
/// due time is the lease's end (not "now", which would have it poll in a tight loop).
#[tokio::test]
async fn a_released_claim_is_claimable_at_once_by_another_replica() {
    let (_server, url, first) = stores().await;
    let second = open(&url, true, 2, &NO_KEYS).await.expect("second replica");
    let (a, b) = (
        first.outbox.expect("outbox"),
        second.outbox.expect("outbox"),
    );
    let wakeups = b.wakeups().expect("a shared outbox wakes its replicas");
    listening(&wakeups).await;

    a.insert(entry("e")).await.expect("insert");
    woken(&wakeups, "an insert on the other replica").await;
    let now = now_ms();
    assert!(a.claim("e", now).await.expect("claim").is_some());
    assert!(b.claim("e", now).await.expect("claim").is_none(), "leased");
    let lease = i64::try_from(a.lease().expect("a lease").as_millis()).expect("ms");
    let next = b.next_due().await.expect("next due").expect("pending");
    assert!(
        next >= now + lease - 1000,
        "due on B when A's lease ends, not at once: {} ms from now",
        next - now
    );

    assert_eq!(a.release_claims().await.expect("release"), 1);
    woken(&wakeups, "a released claim").await;
    let now = now_ms();
    assert_eq!(b.due(now, 10).await.expect("due"), vec!["e"]);
    assert!(b.next_due().await.expect("next due").expect("pending") <= now);
    assert!(
        b.claim("e", now).await.expect("claim").is_some(),
        "claimed at once"
    );
    assert_eq!(
        a.release_claims().await.expect("release"),
        0,
        "A holds none"
    );

    // An operator's retry wakes the replicas too.
    b.finish("e", crate::state::State::Dead, 1, Some("refused".into()))
        .await
        .expect("finish");
    a.retry(Some("e".into())).await.expect("retry");
    woken(&wakeups, "an operator's retry").await;
}

/// A delivery that takes longer than the lease keeps its claim: [`crate::state::leased`]
/// renews it every third of the lease, and the other replica can neither list nor claim
/// the entry all along; once nothing renews it, the lease lapses and the other takes it.
#[tokio::test]
async fn a_delivery_outlasting_its_lease_keeps_its_claim() {
    let (_server, url, _) = stores().await;
    let lease = Duration::from_millis(600);
    let replica = || async {
        let pg = super::Pg::connect(&url, 2, &NO_KEYS)
            .await
            .expect("connect");
        super::PgOutbox::new(pg).with_lease(lease)
    };
    let (a, b) = (replica().await, replica().await);
    assert_ne!(a.owner(), b.owner());
    a.insert(entry("slow")).await.expect("insert");
    assert!(a.claim("slow", now_ms()).await.expect("claim").is_some());

    let delivery = crate::state::leased(&a, "slow", async {
        tokio::time::sleep(lease * 4).await;
        "delivered"
    });
    let other = async {
        let until = tokio::time::Instant::now() + lease * 4 - Duration::from_millis(100);
        let mut looks = 0;
        while tokio::time::Instant::now() < until {
            let now = now_ms();
            assert!(b.due(now, 10).await.expect("due").is_empty(), "listed on B");
            assert!(
                b.claim("slow", now).await.expect("claim").is_none(),
                "B took over a delivery still running on A"
            );
            looks += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        looks
    };
    let (outcome, looks) = tokio::join!(delivery, other);
    assert_eq!(outcome, "delivered");
    assert!(looks > 10, "B looked {looks} times");

    // Nothing renews it now: the lease lapses and B takes over.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert!(
        b.claim("slow", now_ms()).await.expect("claim").is_some(),
        "taken over once the lease lapsed"
    );
    assert!(!a.renew("slow").await.expect("renew"), "A lost it");
}

/// A ban whose row an operator deleted (rather than lifting it) is forgotten by every
/// replica's cache at its next refresh, though an unchanged row is never read again.
#[tokio::test]
async fn a_ban_deleted_from_the_table_is_forgotten_by_every_cache() {
    let server = server();
    let url = server.database().await;
    let (a, b) = two_replicas_on(&url).await;
    let (ip, kept) = (
        "203.0.113.11".parse().expect("ip"),
        "203.0.113.12".parse().expect("ip"),
    );
    let now = SystemTime::now();
    let until = now + Duration::from_secs(600);
    assert_eq!(a.ban(ip, now, until), Some(1));
    assert_eq!(a.ban(kept, now, until), Some(1));
    settle(&a, &b).await;
    assert!(b.banned_until(ip, now).is_some());

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .execute(
            "DELETE FROM defender_addresses WHERE ip = $1",
            &[&ip.to_string()],
        )
        .await
        .expect("an operator deletes the row");
    settle(&a, &b).await;
    for replica in [&a, &b] {
        assert_eq!(replica.banned_until(ip, now), None);
        assert!(
            replica.banned_until(kept, now).is_some(),
            "the other ban stays"
        );
        assert_eq!(replica.banned_count(now), 1);
    }
}

/// The listening connection killed by the server (a failover, an operator): wake-ups stop
/// being live (the worker polls), the listener connects again by itself, and wake-ups
/// arrive again.
#[tokio::test]
async fn the_listener_reconnects_after_its_connection_is_killed() {
    let (_server, url, stores) = stores().await;
    let outbox = stores.outbox.expect("outbox");
    let wakeups = outbox
        .wakeups()
        .expect("a shared outbox wakes its replicas");
    listening(&wakeups).await;

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let killed = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND query LIKE 'LISTEN%'",
            &[],
        )
        .await
        .expect("terminate the listener");
    assert_eq!(killed.len(), 1, "one listening connection");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while wakeups.live() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lost connection went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    listening(&wakeups).await;
    // Its own replica's changes are skipped (that replica woke its own workers); another
    // replica's wake it.
    outbox.insert(entry("own")).await.expect("insert");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), wakeups.changed())
            .await
            .is_err(),
        "woken by its own insert"
    );
    let other = open(&url, true, 2, &NO_KEYS)
        .await
        .expect("another replica")
        .outbox
        .expect("outbox");
    other.insert(entry("after")).await.expect("insert");
    woken(&wakeups, "an insert after the reconnection").await;
}
