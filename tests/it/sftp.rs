//! SFTP through a real SSH/SFTP client (russh + russh-sftp) into a real S3 store.

use crate::common;

use crate::common::sftp_wire::{RawSftp, WRITE_NEW, put_string, sftp_message};
use common::{Harness, Login, PASSWORD, client_key, data, metric_value, sftp_login, sha256_hex};
use russh_sftp::protocol::OpenFlags;
use std::io::SeekFrom;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

async fn write_file(
    sftp: &russh_sftp::client::SftpSession,
    path: &str,
    bytes: &[u8],
) -> Result<(), String> {
    let mut file = sftp.create(path).await.map_err(|e| e.to_string())?;
    file.write_all(bytes).await.map_err(|e| e.to_string())?;
    file.shutdown().await.map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_download_list_rename_remove_over_sftp() {
    let (h, api) = Harness::builder().start_with_api().await;
    let c = sftp_login(h.sftp, "alice", Login::Key(Box::new(client_key(1))))
        .await
        .expect("key login");
    let sftp = &c.sftp;
    assert_eq!(sftp.canonicalize(".").await.expect("realpath"), "/");

    sftp.create_dir("/shows").await.expect("mkdir");
    let big = data(13 * 1024 * 1024 + 5, 1);
    write_file(sftp, "/shows/ep1.mp4", &big)
        .await
        .expect("upload");
    let small = data(100, 2);
    write_file(sftp, "notes.txt", &small)
        .await
        .expect("small upload");

    assert_eq!(
        h.object("alice/shows/ep1.mp4").await.as_deref(),
        Some(&big[..])
    );
    let meta = sftp.metadata("/shows/ep1.mp4").await.expect("stat");
    assert_eq!(meta.size, Some(big.len() as u64));
    assert!(sftp.metadata("/shows").await.expect("stat dir").is_dir());

    let names: Vec<String> = sftp
        .read_dir("/shows")
        .await
        .expect("readdir")
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec!["ep1.mp4"]);

    let mut back = Vec::new();
    sftp.open("/shows/ep1.mp4")
        .await
        .expect("open")
        .read_to_end(&mut back)
        .await
        .expect("read");
    assert!(back == big, "download matches");

    sftp.rename("/shows/ep1.mp4", "/shows/final.mp4")
        .await
        .expect("rename");
    assert_eq!(h.object("alice/shows/ep1.mp4").await, None);
    sftp.remove_file("/notes.txt").await.expect("remove");
    assert_eq!(h.object("alice/notes.txt").await, None);
    assert!(sftp.remove_dir("/shows").await.is_err(), "not empty");

    // Two uploads, and the rename to a new final name (`upload.notify_on_rename`).
    let received = api.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 3);
    let renamed = received
        .iter()
        .find(|r| r.body["key"] == "alice/shows/final.mp4")
        .expect("completion for the new key");
    assert_eq!(renamed.body["sha256"], sha256_hex(&big));
    let ep1 = received
        .iter()
        .find(|r| r.body["key"] == "alice/shows/ep1.mp4")
        .expect("completion");
    assert_eq!(ep1.body["protocol"], "sftp");
    assert_eq!(ep1.body["sha256"], sha256_hex(&big));
    assert_eq!(ep1.body["size"], big.len() as u64);
    let m = h.scrape().await;
    m.assert(
        "ingest_bridge_uploads_total{protocol=sftp,outcome=completed}",
        2.0,
    );
    m.assert(
        "ingest_bridge_logins_total{protocol=sftp,result=success}",
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_and_key_logins_and_refusals() {
    let h = Harness::start().await;
    assert!(
        sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
            .await
            .is_ok(),
        "password"
    );
    assert!(
        sftp_login(h.sftp, "alice", Login::Key(Box::new(client_key(1))))
            .await
            .is_ok(),
        "configured key"
    );
    assert!(
        sftp_login(h.sftp, "alice", Login::Key(Box::new(client_key(2))))
            .await
            .is_err(),
        "unknown key refused"
    );
    assert!(
        sftp_login(h.sftp, "bob", Login::Key(Box::new(client_key(1))))
            .await
            .is_err(),
        "alice's key is not bob's"
    );
    assert!(
        sftp_login(h.sftp, "alice", Login::Password("wrong"))
            .await
            .is_err(),
        "wrong password"
    );
    assert!(
        sftp_login(h.sftp, "mallory", Login::Password(PASSWORD))
            .await
            .is_err(),
        "unknown user"
    );
    let m = h.scrape().await;
    m.assert(
        "ingest_bridge_logins_total{protocol=sftp,result=success}",
        2.0,
    );
    assert!(m.get("ingest_bridge_logins_total{protocol=sftp,result=failure}") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_session_publishes_nothing_with_resuming_off() {
    let (h, api) = Harness::builder()
        .resume_window("0s")
        .start_with_api()
        .await;
    common::vanish_mid_sftp_upload(h.sftp, "/cut.bin", &data(12 * 1024 * 1024, 3)).await;
    // Settled means: no multipart left open and every buffer returned (under load the
    // upload task may still be creating the multipart upload when the session ends).
    let settled =
        || h.open_multipart_ids().is_empty() && h.bridge().pipeline.budget().in_use() == 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !settled() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.open_multipart_ids().is_empty(), "multipart aborted");
    assert_eq!(h.bridge().pipeline.budget().in_use(), 0, "buffers returned");
    assert_eq!(h.object("alice/cut.bin").await, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(api.requests().is_empty(), "no completion");
    assert!(h.events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn home_escapes_and_missing_permissions_are_refused() {
    let h = Harness::start().await;
    let bob = sftp_login(h.sftp, "bob", Login::Password(PASSWORD))
        .await
        .expect("login");
    assert!(
        write_file(&bob.sftp, "/../alice/evil.bin", b"x")
            .await
            .is_err(),
        "escape refused"
    );
    assert_eq!(h.object("alice/evil.bin").await, None);
    write_file(&bob.sftp, "/mine.bin", b"bob")
        .await
        .expect("bob may upload");
    assert!(bob.sftp.read_dir("/").await.is_err(), "no list permission");
    assert!(
        bob.sftp.open("/mine.bin").await.is_err(),
        "no download permission"
    );
    assert!(
        bob.sftp.remove_file("/mine.bin").await.is_err(),
        "no delete permission"
    );
    assert!(
        bob.sftp.rename("/mine.bin", "/x.bin").await.is_err(),
        "no rename permission"
    );
    assert!(
        bob.sftp.create_dir("/d").await.is_err(),
        "no mkdir permission"
    );
    assert_eq!(h.object("bob/mine.bin").await.as_deref(), Some(&b"bob"[..]));

    let reader = sftp_login(h.sftp, "reader", Login::Password(PASSWORD))
        .await
        .expect("login");
    assert!(
        write_file(&reader.sftp, "/new.bin", b"x").await.is_err(),
        "no upload permission"
    );
    assert_eq!(h.object("alice/new.bin").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_order_writes_are_assembled_or_refused_cleanly() {
    let h = Harness::start().await;
    let c = sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("login");
    let bytes = data(3 * 65536, 4);

    // Second and third blocks first, then the first: assembled in order.
    let mut file = c
        .sftp
        .open_with_flags(
            "/shuffled.bin",
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
        )
        .await
        .expect("open");
    file.seek(SeekFrom::Start(65536)).await.expect("seek");
    file.write_all(&bytes[65536..]).await.expect("write ahead");
    file.seek(SeekFrom::Start(0)).await.expect("seek");
    file.write_all(&bytes[..65536]).await.expect("write gap");
    file.shutdown().await.expect("close");
    assert_eq!(
        h.object("alice/shuffled.bin").await.as_deref(),
        Some(&bytes[..])
    );

    // A gap that is never filled: CLOSE fails and nothing is stored.
    let mut file = c
        .sftp
        .open_with_flags(
            "/gap.bin",
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
        )
        .await
        .expect("open");
    file.seek(SeekFrom::Start(4096)).await.expect("seek");
    file.write_all(b"late").await.expect("buffered");
    assert!(file.shutdown().await.is_err(), "close reports the gap");
    assert_eq!(h.object("alice/gap.bin").await, None);

    // Far beyond the reorder buffer: refused at once.
    let mut file = c
        .sftp
        .open_with_flags(
            "/far.bin",
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
        )
        .await
        .expect("open");
    file.seek(SeekFrom::Start(1 << 30)).await.expect("seek");
    file.write_all(&data(65536, 5))
        .await
        .expect("first far write fits the buffer");
    let big_ahead = data(9 * 1024 * 1024, 6);
    assert!(file.write_all(&big_ahead).await.is_err(), "too far ahead");
    drop(file);
    assert_eq!(h.object("alice/far.bin").await, None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.events().iter().all(|e| e["key"] == "alice/shuffled.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_key_is_generated_once_and_reused() {
    let mut h = Harness::start().await;
    let first = h.bridge().sftp_fingerprints.clone();
    assert_eq!(first.len(), 1);
    assert!(first[0].starts_with("SHA256:"));
    h.shutdown().await;
    let again = ingest_bridge::server::Bridge::start(h.config.clone())
        .await
        .expect("restart");
    assert_eq!(
        again.sftp_fingerprints, first,
        "same host key after restart"
    );
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_directories_list_completely_over_sftp_and_ftp() {
    use futures::StreamExt;
    let h = Harness::start().await;
    // More than two ListObjectsV2 pages (1,000 keys each).
    const COUNT: usize = 2_500;
    futures::stream::iter(0..COUNT)
        .map(|i| {
            let s3 = h.s3.clone();
            async move {
                s3.put_object(
                    &format!("alice/big/f{i:05}.bin"),
                    bytes::Bytes::from_static(b"x"),
                    "application/octet-stream",
                )
                .await
                .expect("put");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let c = sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("login");
    let names: Vec<String> = c
        .sftp
        .read_dir("/big")
        .await
        .expect("readdir")
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), COUNT, "every object listed over SFTP");
    assert!(names.contains(&"f02499.bin".to_string()));
    let mut ftp = h.login("alice").await;
    assert_eq!(
        ftp.nlst(Some("/big")).await.expect("NLST").len(),
        COUNT,
        "every object listed over FTP"
    );
}

/// s3s-fs reads the whole directory for every ListObjectsV2 page (2-3 s per page at this
/// size), so this takes minutes; `.ci/run` runs it with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "100 pages from s3s-fs take ~5 minutes; run by .ci/run"]
async fn a_directory_of_100000_objects_lists_page_by_page_over_sftp() {
    let h = Harness::start().await;
    // Written straight into the store's directory (s3s-fs keeps one file per object):
    // 100,000 PUTs would take longer than the listing.
    const COUNT: usize = 100_000;
    let dir = h.store_root().join("ingest/alice/huge");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for i in 0..COUNT {
        std::fs::write(dir.join(format!("f{i:06}.bin")), b"x").expect("write object");
    }
    let c = sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("login");
    let names: Vec<String> = c
        .sftp
        .read_dir("/huge")
        .await
        .expect("readdir")
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), COUNT, "every object listed");
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), COUNT, "no name twice");
    // (russh-sftp's read_dir puts each READDIR batch before the previous ones: no order check.)
    assert_eq!(sorted.first().map(String::as_str), Some("f000000.bin"));
    assert_eq!(sorted.last().map(String::as_str), Some("f099999.bin"));
    let pages = metric_value(
        &h.metrics_text().await,
        "ingest_bridge_s3_requests_total{operation=ListObjectsV2}",
    );
    assert!(pages >= 100.0, "listed page by page ({pages} requests)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_and_shells_are_refused_at_once() {
    let h = Harness::start().await;
    let c = sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("login");
    let mut channel = c.ssh.channel_open_session().await.expect("session channel");
    channel
        .exec(true, "echo probe")
        .await
        .expect("request sent");
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(msg) = channel.wait().await {
            if matches!(msg, russh::ChannelMsg::Failure | russh::ChannelMsg::Close) {
                return true;
            }
        }
        true
    })
    .await;
    assert!(
        answer.is_ok(),
        "the server answers exec instead of leaving the client waiting"
    );
}

/// An SFTP upload that waits for the memory budget holds back its client through the SSH
/// window: the bridge re-opens the window as it consumes, not as packets arrive (our russh
/// patch). Before it, the client could queue 256 packets per channel in the bridge, outside
/// the budget (an OpenSSH client: about 16 MiB per upload). Then, once the budget frees, the
/// held-back upload completes whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_waiting_for_the_budget_holds_its_client_back_with_the_ssh_window() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    const MIB: usize = 1024 * 1024;
    // Part pool 10.5 MiB: two FTP uploads that stop sending hold a 5 MiB part each.
    let h = Harness::builder().memory_limit("12MiB").start().await;
    let mut held = Vec::new();
    for name in ["held1.bin", "held2.bin"] {
        let mut ftp = h.login("alice").await;
        let mut stream = ftp.put_with_stream(name).await.expect("STOR accepted");
        stream.write_all(&data(MIB, 1)).await.expect("write");
        stream.flush().await.expect("flush");
        held.push((ftp, stream));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut sftp = RawSftp::start(h.sftp).await;
    let handle = sftp.open("/stalled.bin", WRITE_NEW).await;
    // The writer task owns the write half; the replies are read here. `_ssh` keeps the
    // connection open.
    let RawSftp {
        ssh: _ssh,
        write,
        mut replies,
    } = sftp;

    // Write 12 MiB in 32 KiB requests without waiting for replies, as OpenSSH pipelines.
    let content = data(12 * MIB, 2);
    let sent = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let (content, sent, handle) = (content.clone(), sent.clone(), handle.clone());
        async move {
            for (i, chunk) in content.chunks(32 * 1024).enumerate() {
                let mut body = (10 + i as u32).to_be_bytes().to_vec();
                put_string(&mut body, &handle);
                body.extend_from_slice(&((i * 32 * 1024) as u64).to_be_bytes());
                put_string(&mut body, chunk);
                write
                    .data(&sftp_message(6, &body)[..])
                    .await
                    .expect("WRITE");
                sent.fetch_add(chunk.len() as u64, Ordering::AcqRel);
            }
            let mut close = 2u32.to_be_bytes().to_vec();
            put_string(&mut close, &handle);
            write
                .data(&sftp_message(4, &close)[..])
                .await
                .expect("CLOSE");
            write
        }
    });
    // Wait until the client can send no more.
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = sent.load(Ordering::Acquire);
        if now == last {
            break;
        }
        last = now;
    }
    // The window is 12 MiB / (2 × 3 sessions) = 2 MiB; what the bridge consumed and holds
    // for the upload (its 256 KiB probe, a request being parsed, one handed over) re-opened
    // it by that much. Measured: 1.97 MiB; 3.1 MiB with the window re-opened on arrival.
    assert!(
        last <= (2 * MIB + MIB / 2) as u64,
        "the client got {last} bytes into a bridge whose upload waits for the budget"
    );

    for (_ftp, mut stream) in held {
        stream.write_all(&data(MIB, 3)).await.expect("write");
        stream.finish().await.expect("the FTP upload completes");
    }
    let _write = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the held-back upload resumes")
        .expect("writer");
    loop {
        let (kind, id, body) = tokio::time::timeout(Duration::from_secs(30), replies.recv())
            .await
            .expect("replies keep coming")
            .expect("reply");
        assert_eq!(
            (kind, &body[..4]),
            (101, &[0u8, 0, 0, 0][..]),
            "request {id} succeeded"
        );
        if id == 2 {
            break;
        }
    }
    assert_eq!(
        h.object("alice/stalled.bin").await.map(|b| sha256_hex(&b)),
        Some(sha256_hex(&content))
    );
}
