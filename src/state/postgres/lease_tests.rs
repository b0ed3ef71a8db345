//! Leases on a shared database: a running upload stays with the replica writing it, and one
//! replica at a time sweeps expired cut uploads; a replica that cannot show it still holds
//! an upload's lease stops writing it before another replica may adopt it.

use super::open;
use super::test_server::{TestServer, server};
use super::tests::{NO_KEYS, stores};
use crate::state::PartialRecord;
use std::time::Duration;

/// The upload stores of one replica on the database at `url`, with a lease of `lease`
/// renewed every `renew` (shorter than in production, for the test's sake).
async fn leased_uploads(url: &str, lease: Duration, renew: Duration) -> super::PgUploads {
    let pg = super::Pg::connect(url, 2, &NO_KEYS).await.expect("connect");
    super::schema::migrate(&pg).await.expect("migrate");
    super::PgUploads::start(pg, lease, renew)
}

/// Part `number`'s mark ending at `end`.
fn mark(number: u32, end: u64) -> crate::state::PartMark {
    crate::state::PartMark {
        number,
        end,
        hash_state: vec![number as u8],
    }
}

/// The lease's end and the database's clock now, in ms by the database's clock.
async fn lease_end_and_now(uploads: &super::PgUploads, upload_id: &str) -> (i64, i64) {
    let rows = uploads
        .query(
            &format!(
                "SELECT lease_until_ms, {} FROM partials WHERE upload_id = $1",
                super::DB_NOW
            ),
            &[&upload_id],
        )
        .await
        .expect("read the lease");
    let row = rows.first().expect("the record");
    (row.get(0), row.get(1))
}

/// Cut off from the database, a replica stops writing an upload (`may_write` turns false)
/// while its lease still runs by the database's clock — so strictly before any other
/// replica could adopt it — and does not renew it when the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_database_stops_writing_before_its_lease_ends() {
    use crate::state::CutUploadStore;
    let mut server = TestServer::private();
    let url = server.database().await;
    let (lease, renew) = (Duration::from_secs(3), Duration::from_millis(500));
    let a = leased_uploads(&url, lease, renew).await;
    a.begin(PartialRecord::running("u/x.bin", "up"))
        .await
        .expect("begin");
    // Renewed while the database answers: well past the first lease.
    tokio::time::sleep(lease + renew).await;
    assert!(a.may_write("up"), "renewed leases keep the writer going");
    a.mark("up".into(), mark(1, 10))
        .await
        .expect("a fenced mark of its own");

    server.stop();
    let cut = std::time::Instant::now();
    assert!(
        a.may_write("up"),
        "a renewal or two may fail without stopping uploads"
    );
    while a.may_write("up") {
        assert!(cut.elapsed() < lease, "the writer never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped = std::time::Instant::now();
    assert!(!a.may_write("up"), "once stopped, it stays stopped");

    server.restart();
    let (until, now) = loop {
        // Pooled connections broke with the server: the first tries may fail.
        if let Ok(rows) = a
            .query(
                &format!("SELECT lease_until_ms, {} FROM partials", super::DB_NOW),
                &[],
            )
            .await
        {
            let row = rows.first().expect("the record survives the restart");
            break (row.get::<_, i64>(0), row.get::<_, i64>(1));
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "the database came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The database's clock when the writer stopped, from its clock now.
    let stopped_at_db = now - i64::try_from(stopped.elapsed().as_millis()).expect("ms");
    assert!(
        until - stopped_at_db >= 500,
        "the writer stopped {} ms before its lease ended by the database's clock; at least 500 ms expected",
        until - stopped_at_db
    );
    // Let go of: the renewing task leaves its lease to run out for another replica.
    tokio::time::sleep(renew * 4).await;
    assert_eq!(
        lease_end_and_now(&a, "up").await.0,
        until,
        "not renewed again"
    );
    assert!(!a.may_write("up"));
}

/// `mark` is fenced in the database: a replica that does not hold the running record (never
/// did, or lost it to a replica that adopted it) writes no mark, and stops writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_from_a_replica_that_does_not_hold_the_upload_is_refused() {
    use crate::state::CutUploadStore;
    let server = server();
    let url = server.database().await;
    // Renewed rarely: the test runs the lease out by hand, as a long cut would.
    let (lease, renew) = (Duration::from_secs(60), Duration::from_secs(20));
    let a = leased_uploads(&url, lease, renew).await;
    let b = leased_uploads(&url, lease, renew).await;
    a.begin(PartialRecord::running("u/x.bin", "up"))
        .await
        .expect("begin");
    assert!(
        b.mark("up".into(), mark(1, 10)).await.is_err(),
        "B never held it"
    );
    assert!(!b.may_write("up"));
    a.mark("up".into(), mark(1, 10)).await.expect("A holds it");
    assert!(a.may_write("up"));

    // A is cut off long enough for its lease to run out, and B adopts the upload.
    a.execute("UPDATE partials SET lease_until_ms = 0", &[])
        .await
        .expect("run the lease out");
    assert!(b.adopt("u/x.bin".into(), "up".into()).await.expect("adopt"));
    assert!(b.may_write("up"), "the adopter writes it now");
    assert!(a.may_write("up"), "A's own clock has not run out yet");
    let e = a
        .mark("up".into(), mark(2, 20))
        .await
        .expect_err("A no longer holds it");
    assert!(e.to_string().contains("lease was lost"), "{e}");
    assert!(
        !a.may_write("up"),
        "a refused mark stops the writer at once"
    );
    b.mark("up".into(), mark(2, 30)).await.expect("B holds it");
    let ends: Vec<u64> = b
        .marks("up".into())
        .await
        .expect("marks")
        .iter()
        .map(|m| m.end)
        .collect();
    assert_eq!(ends, [10, 30], "only the holder's marks are written");
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
    a.begin(PartialRecord::running("u/x.bin", "up"))
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
