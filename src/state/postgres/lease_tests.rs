//! Leases on a shared database: a running upload stays with the replica writing it, and one
//! replica at a time sweeps expired cut uploads.

use super::open;
use super::test_server::server;
use super::tests::{NO_KEYS, stores};
use std::time::Duration;

/// The upload stores of one replica on the database at `url`, with a lease of `lease`
/// renewed every `renew` (shorter than in production, for the test's sake).
async fn leased_uploads(url: &str, lease: Duration, renew: Duration) -> super::PgUploads {
    let pg = super::Pg::connect(url, 2, &NO_KEYS).await.expect("connect");
    super::schema::migrate(&pg).await.expect("migrate");
    super::PgUploads::start(pg, lease, renew)
}

/// A running upload stays its replica's while that replica renews its lease, so another
/// replica starting meanwhile neither adopts nor resumes it; once the writer is gone its
/// lease runs out and exactly one other replica adopts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_upload_is_leased_to_the_replica_writing_it() {
    use crate::state::CutUploadStore;
    let server = server();
    let url = server.database().await;
    let (lease, renew) = (Duration::from_millis(800), Duration::from_millis(200));
    let a = leased_uploads(&url, lease, renew).await;
    a.begin(crate::state::PartialRecord {
        key: "u/x.bin".into(),
        username: "u".into(),
        path: "/x.bin".into(),
        upload_id: "up".into(),
        content_type: "video/mp4".into(),
        id: "e".into(),
        fields: serde_json::Map::new(),
        started_at_ms: 1,
        updated_ms: 1,
        durable_bytes: 0,
        durable_parts: 0,
        hash_state: None,
        active: true,
    })
    .await
    .expect("begin");
    let b = leased_uploads(&url, lease, renew).await;
    let c = leased_uploads(&url, lease, renew).await;
    // Three leases long: A's renewals keep it.
    for _ in 0..6 {
        assert!(b.orphaned().await.expect("orphaned").is_empty());
        assert!(!b.adopt("u/x.bin".into(), "up".into()).await.expect("adopt"));
        assert!(
            !b.activate("u/x.bin".into(), "up".into())
                .await
                .expect("activate")
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // A dies: its renewals stop with it.
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.orphaned().await.expect("orphaned").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (bb, cc) = (b.clone(), c.clone());
    let one = tokio::spawn(async move { bb.adopt("u/x.bin".into(), "up".into()).await });
    let two = tokio::spawn(async move { cc.adopt("u/x.bin".into(), "up".into()).await });
    let won = [
        one.await.expect("task").expect("adopt"),
        two.await.expect("task").expect("adopt"),
    ];
    assert_eq!(
        won.iter().filter(|w| **w).count(),
        1,
        "one replica adopts it: {won:?}"
    );
    let (holder, other) = if won[0] { (&b, &c) } else { (&c, &b) };
    // The adopter renews it in turn.
    tokio::time::sleep(lease * 2).await;
    assert!(other.orphaned().await.expect("orphaned").is_empty());
    assert!(
        holder
            .suspend("u/x.bin".into(), "up".into(), 5, 1, vec![7])
            .await
            .expect("kept")
    );
    assert!(
        other
            .activate("u/x.bin".into(), "up".into())
            .await
            .expect("resumable")
    );
}

/// The sweep lease: one replica holds it and renews it; another takes it only once it ran
/// out.
#[tokio::test]
async fn one_replica_sweeps_at_a_time() {
    let (_server, url, a) = stores().await;
    let b = open(&url, false, 2, &NO_KEYS)
        .await
        .expect("second replica");
    let lease = Duration::from_millis(600);
    assert!(a.uploads.lead_sweep(lease).await.expect("lead"));
    assert!(
        !b.uploads.lead_sweep(lease).await.expect("lead"),
        "A holds it"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.uploads.lead_sweep(lease).await.expect("renewed"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !b.uploads.lead_sweep(lease).await.expect("lead"),
        "renewed by A"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(b.uploads.lead_sweep(lease).await.expect("taken over"));
    assert!(!a.uploads.lead_sweep(lease).await.expect("lead"), "B's now");
}
