//! Two replicas on one PostgreSQL database: an operator lifts a ban once with
//! `ingest-bridge bans lift` and both replicas admit the address again; an SFTP upload cut on
//! one replica is continued on the other (OpenSSH `reput`) with only the rest re-sent.

use crate::common;
use crate::replicas::{ftp_greeting, settled_completions, two_replicas};

use common::{FakeApi, Harness, Login, PASSWORD, data, sftp_login, sha256_hex};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

/// Runs `ingest-bridge bans ARGS --config CONFIG`, the real binary.
fn bans(config: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ingest-bridge"))
        .arg("bans")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run ingest-bridge bans")
}

/// Waits up to `within` until the FTP server at `addr` greets this address with `code`.
async fn greeted_with(addr: std::net::SocketAddr, code: &str, within: Duration) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        let greeting = ftp_greeting(addr).await;
        if greeting.starts_with(code) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{addr} still greets with {greeting:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_bans_lift_admits_the_address_on_every_replica() {
    let api = FakeApi::start().await;
    let (_pg, a, b) = two_replicas(&api, |builder| builder.defender(3, "10m")).await;
    for _ in 0..3 {
        let mut ftp = suppaftp::tokio::AsyncFtpStream::connect(a.ftp)
            .await
            .expect("connect");
        assert!(ftp.login("alice", "wrong").await.is_err());
    }
    greeted_with(a.ftp, "421 ", Duration::from_secs(1)).await;
    greeted_with(b.ftp, "421 ", Duration::from_secs(4)).await;

    // What the operator sees, from either replica's config.
    let listed = bans(&b.config_path, &["list"]);
    assert!(listed.status.success(), "{listed:?}");
    let text = String::from_utf8_lossy(&listed.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("127.0.0.1\t"))
        .unwrap_or_else(|| panic!("127.0.0.1 not listed:\n{text}"));
    let columns: Vec<&str> = row.split('\t').collect();
    assert_eq!(columns.len(), 4, "{row}");
    assert!(columns[1].ends_with('Z'), "banned until, RFC 3339: {row}");
    assert_eq!(columns[2], "1", "first ban: {row}");

    let lifted = bans(&a.config_path, &["lift", "127.0.0.1"]);
    assert!(lifted.status.success(), "{lifted:?}");
    assert!(
        String::from_utf8_lossy(&lifted.stdout).contains("lifted"),
        "{lifted:?}"
    );
    let on_a = greeted_with(a.ftp, "220", Duration::from_secs(4)).await;
    let on_b = greeted_with(b.ftp, "220", Duration::from_secs(4)).await;
    eprintln!("admitted again on A after {on_a:?}, on B {on_b:?} later");
    for replica in [&a, &b] {
        let mut ftp = replica.login("alice").await;
        let _ = ftp.quit().await;
        replica
            .wait_metric(
                "ingest_bridge_defender_banned_addresses",
                Duration::from_secs(3),
                |v| v == 0.0,
            )
            .await;
    }

    // Lifted once: no longer listed, and lifting again says so.
    let listed = bans(&a.config_path, &["list"]);
    assert!(listed.status.success(), "{listed:?}");
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(!text.contains("127.0.0.1"), "{text}");
    let again = bans(&a.config_path, &["lift", "127.0.0.1"]);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not banned"),
        "{again:?}"
    );
    let bad = bans(&a.config_path, &["lift", "not-an-address"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

/// With SQLite the bans are in the `serve` process: the command says it cannot reach them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_commands_refuse_state_they_cannot_reach() {
    let h = Harness::start().await;
    for args in [&["list"][..], &["lift", "127.0.0.1"]] {
        let out = bans(&h.config_path, args);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let message = String::from_utf8_lossy(&out.stderr);
        assert!(
            message.contains("cannot reach") && message.contains("postgres://"),
            "{message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sftp_upload_cut_on_one_replica_is_resumed_on_the_other() {
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
    let api = FakeApi::start().await;
    let (_pg, a, b) = two_replicas(&api, |builder| builder).await;
    let source = data(16 * MIB, 33);
    common::vanish_mid_sftp_upload(a.sftp, "/reel.mov", &source[..12 * MIB]).await;

    // As OpenSSH's `reput` does on B: stat, open for writing without truncation, write from
    // the remote size.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let c = sftp_login(b.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("login on B");
    let kept = loop {
        match c.sftp.metadata("/reel.mov").await {
            Ok(meta) if meta.size.is_some_and(|s| s > 0) => break meta.size.unwrap_or(0),
            _ => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "A never kept it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(kept, 10 * MIB as u64, "B shows the two whole parts A kept");
    let mut file = c
        .sftp
        .open_with_flags(
            "/reel.mov",
            russh_sftp::protocol::OpenFlags::WRITE | russh_sftp::protocol::OpenFlags::CREATE,
        )
        .await
        .expect("open without truncation");
    file.seek(std::io::SeekFrom::Start(kept))
        .await
        .expect("seek");
    file.write_all(&source[10 * MIB..]).await.expect("write");
    file.shutdown().await.expect("close");
    drop(file);

    let object = b.object("alice/reel.mov").await.expect("object");
    assert!(object == source, "the object is whole");
    assert!(
        b.open_multipart_ids().is_empty(),
        "no multipart upload left"
    );
    let got = settled_completions(&api, "alice/reel.mov", Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "one completion: {got:?}");
    assert_eq!(got[0].body["size"], source.len() as u64);
    assert_eq!(got[0].body["sha256"], sha256_hex(&source));
    assert!(a.events().is_empty(), "A completed nothing");
    // Only the rest crossed B: 6 MiB received, parts 3 and 4 sent.
    let m = b.scrape().await;
    m.assert("ingest_bridge_uploads_resumed_total{protocol=sftp}", 1.0);
    m.assert(
        "ingest_bridge_upload_bytes_total{protocol=sftp}",
        (6 * MIB) as f64,
    );
    m.assert(
        "ingest_bridge_s3_requests_total{operation=UploadPart,result=success}",
        2.0,
    );
}
