//! A replica cut off from the shared database while its client keeps sending: it stops
//! writing into the multipart upload before its lease could run out (another replica may
//! adopt the upload then), tells its client so, and leaves the multipart upload as it is —
//! neither completed nor aborted — for the replica that takes it over.

use crate::common;

use common::postgres::TestServer;
use common::raw_ftp::RawFtp;
use common::{FakeApi, Harness, data};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_loses_its_upload_lease_stops_writing_and_leaves_the_upload_alone() {
    let mut pg = TestServer::private();
    let url = pg.database().await;
    let api = FakeApi::start().await;
    let a = Harness::builder()
        .notify_url(&api.url)
        .state_url(&url)
        .part_size("5MiB")
        .start()
        .await;
    let mut ftp = RawFtp::login(a.ftp).await;
    let mut stream = ftp.data().await;
    let (code, text) = ftp.command("STOR slow.bin").await;
    assert!(code == 150 || code == 125, "STOR accepted: {text}");
    let source = data(60 * MIB, 77);
    // One whole part in S3 and its record in the database.
    stream.write_all(&source[..6 * MIB]).await.expect("write");
    stream.flush().await.expect("flush");
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::parts_in_store(&a.store_root()) == 0 {
        assert!(Instant::now() < deadline, "the first part reached S3");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids = a.open_multipart_ids();
    assert_eq!(ids.len(), 1, "one multipart upload: {ids:?}");

    // Cut off from the database (a partition looks the same to A); the client goes on
    // sending, slowly, a part every few seconds.
    tokio::task::block_in_place(|| pg.stop());
    let cut = Instant::now();
    let mut sent = 6 * MIB;
    let mut write_failed = None;
    while sent < source.len() && cut.elapsed() < Duration::from_secs(60) {
        let chunk = &source[sent..sent + 256 * 1024];
        if let Err(e) = stream.write_all(chunk).await {
            write_failed = Some(e);
            break;
        }
        sent += chunk.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped_after = cut.elapsed();
    if write_failed.is_none() {
        // Sent everything (the fence never closed): end the transfer normally.
        stream.shutdown().await.expect("close the data connection");
    }
    drop(stream);
    let (code, text) = tokio::time::timeout(Duration::from_secs(10), ftp.reply())
        .await
        .expect("the transfer's reply");
    assert!(
        code >= 400,
        "the client is told the upload did not complete: {code} {text}"
    );
    assert!(
        text.contains("lost track of this upload"),
        "a clear reason, no server internals: {code} {text}"
    );
    assert!(
        stopped_after < Duration::from_secs(30),
        "A stopped within the 30 s lease (after {stopped_after:?}); {sent} bytes sent"
    );

    // Let the upload's ending settle: A neither completed nor aborted it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        a.open_multipart_ids(),
        ids,
        "the multipart upload is left for its new owner"
    );
    assert!(common::parts_in_store(&a.store_root()) >= 1);
    assert_eq!(a.object("alice/slow.bin").await, None, "no object");
    assert!(api.requests().is_empty(), "no completion");
}

/// Two fresh uploads of one name on two replicas at once: the newer one's record replaces
/// the older one's, so the older replica loses its lease. Nobody else knows the older
/// multipart upload (no record names it), so that replica aborts it rather than leave its
/// parts behind; the newer upload completes alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_whose_record_a_newer_upload_replaced_is_aborted_not_left_behind() {
    let pg = common::postgres::server();
    let url = pg.database().await;
    let api = FakeApi::start().await;
    let builder = || {
        Harness::builder()
            .notify_url(&api.url)
            .state_url(&url)
            .part_size("5MiB")
    };
    let a = builder().start().await;
    let b = builder().start_sharing(&a.store).await;

    let mut ftp = RawFtp::login(a.ftp).await;
    let mut stream = ftp.data().await;
    let (code, text) = ftp.command("STOR same.bin").await;
    assert!(code == 150 || code == 125, "STOR accepted: {text}");
    let older = data(40 * MIB, 5);
    stream.write_all(&older[..6 * MIB]).await.expect("write");
    stream.flush().await.expect("flush");
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.open_multipart_ids().is_empty() || common::parts_in_store(&a.store_root()) == 0 {
        assert!(Instant::now() < deadline, "A's first part reached S3");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let older_ids = a.open_multipart_ids();

    // The newer upload of the same name, on B, while A's client is still sending.
    let newer = data(12 * MIB, 6);
    b.upload("alice", "same.bin", &newer).await;

    // A's client goes on; A's next part mark is refused and it stops.
    let mut sent = 6 * MIB;
    while sent < older.len() {
        if stream.write_all(&older[sent..sent + MIB]).await.is_err() {
            break;
        }
        sent += MIB;
    }
    let _ = stream.shutdown().await;
    drop(stream);
    let (code, text) = tokio::time::timeout(Duration::from_secs(20), ftp.reply())
        .await
        .expect("the older transfer's reply");
    assert!(
        code >= 400,
        "the older upload did not complete: {code} {text}"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while a
        .open_multipart_ids()
        .iter()
        .any(|id| older_ids.contains(id))
    {
        assert!(
            Instant::now() < deadline,
            "the older multipart upload was aborted, not left behind: {:?}",
            a.open_multipart_ids()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let object = a.object("alice/same.bin").await.expect("the newer object");
    assert!(object == newer, "the object is the newer upload");
    let delivered: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.body["key"] == "alice/same.bin")
        .collect();
    assert_eq!(delivered.len(), 1, "one completion, the newer upload's");
    assert_eq!(delivered[0].body["sha256"], common::sha256_hex(&newer));
}
