//! Two replicas sharing one PostgreSQL database: a user's quota counts uploads on both
//! (reservations of uploads in flight included), and directories made on one are seen,
//! entered and removed on the other.

use crate::common;

use common::postgres::TestServer;
use common::raw_ftp::RawFtp;
use common::{Harness, Login, PASSWORD, data, sftp_login};
use std::sync::Arc;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

/// Replica A and replica B on one new database of the shared test server and one bucket,
/// each `customize`d the same way; also the database's URL.
async fn two_replicas(
    customize: impl Fn(common::HarnessBuilder) -> common::HarnessBuilder,
) -> (Arc<TestServer>, String, Harness, Harness) {
    let pg = common::postgres::server();
    let url = pg.database().await;
    let builder = || customize(Harness::builder().state_url(&url).part_size("5MiB"));
    let a = builder().start().await;
    let b = builder().start_sharing(&a.store).await;
    (pg, url, a, b)
}

/// STOR of `bytes` at `path` through the replica at `h`; the final reply.
async fn stor(h: &Harness, path: &str, bytes: &[u8]) -> (u32, String) {
    use tokio::io::AsyncWriteExt;
    let mut ftp = RawFtp::login(h.ftp).await;
    let mut data = ftp.data().await;
    let (code, text) = ftp.command(&format!("STOR {path}")).await;
    if code != 150 {
        return (code, text);
    }
    // The server stops reading once past a limit: the write may fail, that is fine.
    let _ = data.write_all(bytes).await;
    let _ = data.shutdown().await;
    drop(data);
    ftp.reply().await
}

/// What the database holds for `user`: stored bytes, and live reservations (count, bytes).
async fn quota_rows(url: &str, user: &str) -> (i64, i64, i64) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the state database");
    let connection = tokio::spawn(connection);
    let stored: i64 = client
        .query_one(
            "SELECT bytes FROM quota_usage WHERE username = $1",
            &[&user],
        )
        .await
        .expect("read quota_usage")
        .get(0);
    let held = client
        .query_one(
            "SELECT count(*), COALESCE(SUM(bytes), 0)::bigint FROM quota_claims
             WHERE username = $1",
            &[&user],
        )
        .await
        .expect("read quota_claims");
    drop(client);
    let _ = connection.await;
    (stored, held.get(0), held.get(1))
}

/// Bytes of the objects under alice's home.
async fn stored_under_alice(h: &Harness) -> u64 {
    let (bytes, _) = h.s3.usage_under("alice/").await.expect("list the home");
    bytes
}

/// Waits until no reservation is left (given back in the background after an abort).
async fn no_reservations_left(url: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, count, _) = quota_rows(url, "alice").await;
        if count == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} reservations left after every upload ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_is_reached_by_uploads_through_both_replicas() {
    let (_pg, url, a, b) = two_replicas(|builder| builder.alice("quota_bytes", "12MiB")).await;
    a.upload("alice", "a.bin", &data(5 * MIB, 1)).await;
    b.upload("alice", "b.bin", &data(5 * MIB, 2)).await;

    // 10 MiB stored, half through each replica: 3 MiB more passes 12 MiB on either.
    for h in [&b, &a] {
        let (code, text) = stor(h, "c.bin", &data(3 * MIB, 3)).await;
        assert!(
            code == 552 && text.contains("quota_bytes") && text.contains("12MiB"),
            "{code} {text}"
        );
        assert!(h.object("alice/c.bin").await.is_none(), "nothing kept");
    }
    no_reservations_left(&url).await;
    a.upload("alice", "d.bin", &data(2 * MIB, 4)).await;
    let (code, text) = stor(&b, "e.bin", b"one byte more").await;
    assert_eq!(code, 552, "B refuses at the quota A filled: {text}");

    // SFTP on B is held to the same count.
    let c = sftp_login(b.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("login");
    let refused = async {
        use tokio::io::AsyncWriteExt;
        let mut file = c.sftp.create("/f.txt").await?;
        file.write_all(b"more").await?;
        file.shutdown().await?;
        Ok::<_, std::io::Error>(())
    }
    .await;
    assert!(refused.is_err(), "over SFTP on B");
    assert!(b.object("alice/f.txt").await.is_none());

    let (stored, _, _) = quota_rows(&url, "alice").await;
    assert_eq!(stored, 12 * MIB as i64, "the shared count");
    assert_eq!(stored_under_alice(&a).await, 12 * MIB as u64);
    for h in [&a, &b] {
        let refused = h
            .metric("ingest_bridge_limits_exceeded_total{limit=quota_bytes}")
            .await;
        assert!(refused >= 1.0, "each replica counted its refusals");
    }
}

/// Uploads on A and B at once that together pass the quota: whatever order their bytes
/// arrive in, what is stored never passes it (each upload holds its bytes, up to a part
/// ahead, in the shared database before it accepts them), every reservation is given back,
/// and the room left is usable to the byte afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_on_both_replicas_never_pass_the_quota() {
    const QUOTA: usize = 16 * MIB;
    let (_pg, url, a, b) = two_replicas(|builder| builder.alice("quota_bytes", "16MiB")).await;
    a.upload("alice", "seed.bin", &data(2 * MIB, 9)).await;
    let uploads = [
        (&a, "a1.bin"),
        (&b, "b1.bin"),
        (&a, "a2.bin"),
        (&b, "b2.bin"),
    ];
    let bodies: Vec<Vec<u8>> = (0..uploads.len())
        .map(|i| data(6 * MIB, i as u64))
        .collect();
    let replies = futures::future::join_all(
        uploads
            .iter()
            .zip(&bodies)
            .map(|((h, name), body)| stor(h, name, body)),
    )
    .await;
    let ok = replies.iter().filter(|(code, _)| *code == 226).count();
    let refused = replies.iter().filter(|(code, _)| *code == 552).count();
    assert_eq!(ok + refused, 4, "{replies:?}");
    assert!(
        refused >= 2,
        "four 6 MiB uploads cannot all fit 14 MiB: {replies:?}"
    );

    let stored = stored_under_alice(&a).await;
    assert!(
        stored <= QUOTA as u64,
        "{stored} bytes stored past the quota"
    );
    assert_eq!(stored, (2 + 6 * ok) as u64 * MIB as u64);
    no_reservations_left(&url).await;
    let (counted, _, _) = quota_rows(&url, "alice").await;
    assert_eq!(counted as u64, stored, "the count is what S3 holds");

    // What is left fits exactly, through either replica.
    let left = QUOTA - stored as usize;
    if left > 0 {
        b.upload("alice", "rest.bin", &data(left, 20)).await;
    }
    let (code, text) = stor(&a, "over.bin", b"x").await;
    assert_eq!(code, 552, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_made_on_one_replica_is_seen_and_removed_on_the_other() {
    let (_pg, _url, a, b) = two_replicas(|builder| builder).await;
    let mut on_a = a.login("alice").await;
    on_a.mkdir("/made").await.expect("MKD on A");
    on_a.mkdir("/made/inner").await.expect("MKD under it on A");

    let mut on_b = b.login("alice").await;
    let list = on_b.list(None).await.expect("LIST on B");
    assert!(
        list.iter()
            .any(|l| l.starts_with('d') && l.ends_with(" made")),
        "{list:?}"
    );
    let names = on_b.nlst(Some("/made")).await.expect("NLST on B");
    assert!(names.iter().any(|n| n.ends_with("inner")), "{names:?}");
    on_b.cwd("/made/inner").await.expect("CWD on B");
    on_b.cwd("/").await.expect("back home");
    let again = on_b
        .mkdir("/made")
        .await
        .expect_err("MKD of A's directory on B");
    assert!(again.to_string().contains("already exists"), "{again}");

    let c = sftp_login(b.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("login");
    let names: Vec<String> = c
        .sftp
        .read_dir("/")
        .await
        .expect("readdir on B")
        .map(|e| e.file_name())
        .collect();
    assert!(names.contains(&"made".to_string()), "{names:?}");
    assert!(c.sftp.metadata("/made/inner").await.expect("stat").is_dir());

    on_b.rmdir("/made").await.expect("RMD on B");
    let list = on_a.list(None).await.expect("LIST on A");
    assert!(!list.iter().any(|l| l.ends_with(" made")), "{list:?}");
    assert!(
        on_a.cwd("/made/inner").await.is_err(),
        "gone on A, inner too"
    );
    let _ = on_a.quit().await;
    let _ = on_b.quit().await;
}
