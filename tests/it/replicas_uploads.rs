//! One writer per running upload on a shared database: a replica that starts leaves the
//! uploads other live replicas are writing alone, and the uploads of a replica killed
//! mid-upload are adopted by another once their lease runs out, then resumed there.

use crate::common;
use crate::replicas::settled_completions;

use common::raw_ftp::RawFtp;
use common::{FakeApi, Harness, data, sha256_hex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const MIB: usize = 1024 * 1024;

/// Waits until the store under `root` holds `n` parts of running multipart uploads.
async fn parts_landed(root: &std::path::Path, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while common::parts_in_store(root) < n {
        assert!(tokio::time::Instant::now() < deadline, "parts never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_starting_leaves_uploads_running_on_another_alone() {
    let api = FakeApi::start().await;
    let pg = common::postgres::server();
    let url = pg.database().await;
    let replica = || {
        Harness::builder()
            .notify_url(&api.url)
            .state_url(&url)
            .part_size("5MiB")
    };
    let a = replica().start().await;
    let source = data(12 * MIB, 34);
    let mut ftp = RawFtp::login(a.ftp).await;
    let mut data_conn = ftp.data().await;
    let (code, text) = ftp.command("STOR live.bin").await;
    assert!(code == 150 || code == 125, "{text}");
    data_conn.write_all(&source[..7 * MIB]).await.expect("send");
    data_conn.flush().await.expect("flush");
    parts_landed(&a.store_root(), 1).await;

    // B starts (and reconciles the records it finds) while A's upload runs.
    let b = replica().start_sharing(&a.store).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let record = b
        .bridge()
        .pipeline
        .partials()
        .get("alice/live.bin".into())
        .await
        .expect("read")
        .expect("A's record");
    assert!(
        record.active,
        "B took A's running upload for a cut one: {record:?}"
    );
    assert!(
        b.bridge()
            .pipeline
            .partials()
            .orphaned()
            .await
            .expect("orphaned")
            .is_empty(),
        "A is alive: nothing is orphaned"
    );

    data_conn
        .write_all(&source[7 * MIB..])
        .await
        .expect("send the rest");
    drop(data_conn);
    let (code, text) = ftp.reply().await;
    assert_eq!(code, 226, "{text}");
    assert!(a.object("alice/live.bin").await.expect("object") == source);
    let got = settled_completions(&api, "alice/live.bin", Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "one completion: {got:?}");
    assert_eq!(got[0].body["sha256"], sha256_hex(&source));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_of_a_killed_replica_are_adopted_and_resumed_on_another() {
    let api = FakeApi::start().await;
    let pg = common::postgres::server();
    let url = pg.database().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A 20 s resume window: the sweep runs every 5 s.
    let replica = || {
        Harness::builder()
            .notify_url(&api.url)
            .state_url(&url)
            .part_size("5MiB")
            .resume_window("20s")
    };
    let (store, config) = replica().write_config(dir.path()).await;
    let mut a = common::spawn_bridge_process(&config);
    let b = replica().start_sharing(&store).await;
    let source = data(17 * MIB, 35);
    let mut ftp = RawFtp::login(a.ftp).await;
    let mut data_conn = ftp.data().await;
    let (code, text) = ftp.command("STOR crash.bin").await;
    assert!(code == 150 || code == 125, "{text}");
    data_conn
        .write_all(&source[..12 * MIB])
        .await
        .expect("send");
    parts_landed(&store.root, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.child.kill().expect("SIGKILL A");
    let _ = a.child.wait();
    let killed = tokio::time::Instant::now();
    drop((data_conn, ftp));

    // Leased to A until its lease runs out: not B's to keep or resume yet.
    let mut client = b.login("alice").await;
    assert!(
        client.size("crash.bin").await.is_err(),
        "A's lease still runs"
    );
    let deadline = killed + Duration::from_secs(45);
    while client.size("crash.bin").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never adopted A's upload"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("B adopted A's upload {:?} after the kill", killed.elapsed());
    let kept = common::resume_from_kept(&mut client, "crash.bin", &source).await;
    assert_eq!(kept, 10 * MIB, "the two whole parts A sent");
    let _ = client.quit().await;

    assert!(b.object("alice/crash.bin").await.expect("object") == source);
    assert!(
        b.open_multipart_ids().is_empty(),
        "no multipart upload left"
    );
    let got = settled_completions(&api, "alice/crash.bin", Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "one completion: {got:?}");
    assert_eq!(got[0].body["sha256"], sha256_hex(&source));
    let m = b.scrape().await;
    m.assert(
        "ingest_bridge_s3_requests_total{operation=UploadPart,result=success}",
        2.0,
    );
}
