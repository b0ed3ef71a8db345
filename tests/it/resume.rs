//! Resuming cut uploads (FTP REST+STOR, APPE, SFTP writes at the kept length), uploads
//! under temporary names completed by a rename, and overwrite refusal.

use crate::common;

use common::raw_ftp::RawFtp;
use common::{Harness, Login, PASSWORD, data, sftp_login, sha256_hex};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const MIB: usize = 1024 * 1024;

/// Alice starts `STOR path`, sends `bytes`, then dies: the control connection closes, then
/// the data connection — which on its own looks exactly like a finished upload.
pub(crate) async fn ftp_die_mid_upload(addr: SocketAddr, path: &str, bytes: &[u8]) {
    let mut ftp = RawFtp::login(addr).await;
    let mut data = ftp.data().await;
    let (code, text) = ftp.command(&format!("STOR {path}")).await;
    assert!(code == 150 || code == 125, "{text}");
    data.write_all(bytes).await.expect("send");
    data.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(ftp);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(data);
}

fn completions_for(h: &Harness, key: &str) -> Vec<serde_json::Value> {
    h.events().into_iter().filter(|e| e["key"] == key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ftp_cut_inside_a_part_resumes_with_rest_and_stor() {
    let h = Harness::start().await;
    let source = data(17 * MIB, 11);
    ftp_die_mid_upload(h.ftp, "clip.mxf", &source[..12 * MIB]).await;
    assert_eq!(h.kept_bytes("alice/clip.mxf").await, Some(10 * MIB as u64));
    assert!(
        h.object("alice/clip.mxf").await.is_none(),
        "nothing published"
    );
    assert!(h.events().is_empty(), "no completion for a cut upload");

    let mut ftp = h.login("alice").await;
    assert_eq!(ftp.size("clip.mxf").await.expect("SIZE"), 10 * MIB);
    let listed = ftp.list(None).await.expect("LIST");
    assert!(
        listed
            .iter()
            .any(|l| l.contains("clip.mxf") && l.contains(&(10 * MIB).to_string())),
        "{listed:?}"
    );
    // Any other offset is refused with the one to use (after the 150 that libunftp sends
    // before the storage is asked, hence the hand-driven client).
    let mut raw = RawFtp::login(h.ftp).await;
    let data_conn = raw.data().await;
    let (code, _) = raw.command(&format!("REST {}", 5 * MIB)).await;
    assert_eq!(code, 350);
    let (code, _) = raw.command("STOR clip.mxf").await;
    assert!(code == 150 || code == 125);
    let (code, text) = raw.reply().await;
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("10485760 bytes are stored"), "{text}");
    drop(data_conn);
    ftp.resume_transfer(10 * MIB).await.expect("REST");
    ftp.put_file(
        "clip.mxf",
        &mut std::io::Cursor::new(source[10 * MIB..].to_vec()),
    )
    .await
    .expect("resumed STOR");
    let _ = ftp.quit().await;

    assert!(h.object("alice/clip.mxf").await.expect("object") == source);
    let events = completions_for(&h, "alice/clip.mxf");
    assert_eq!(events.len(), 1, "one completion");
    assert_eq!(events[0]["size"], source.len() as u64);
    assert_eq!(events[0]["sha256"], sha256_hex(&source));
    assert!(h.open_multipart_ids().is_empty());
    let m = h.scrape().await;
    let resumed = m.get("ingest_bridge_uploads_resumed_total{protocol=ftp}");
    assert_eq!(resumed, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ftp_cut_on_a_part_boundary_resumes_with_appe() {
    let h = Harness::start().await;
    let source = data(13 * MIB, 12);
    ftp_die_mid_upload(h.ftp, "boundary.bin", &source[..10 * MIB]).await;
    // The second part's buffer was exactly full: it is a whole part and is kept.
    assert_eq!(
        h.kept_bytes("alice/boundary.bin").await,
        Some(10 * MIB as u64)
    );
    let mut ftp = h.login("alice").await;
    ftp.append_file(
        "boundary.bin",
        &mut std::io::Cursor::new(source[10 * MIB..].to_vec()),
    )
    .await
    .expect("APPE continues the cut upload");
    let _ = ftp.quit().await;
    assert!(h.object("alice/boundary.bin").await.expect("object") == source);
    let events = completions_for(&h, "alice/boundary.bin");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["sha256"], sha256_hex(&source));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_before_the_first_part_keeps_nothing_and_a_new_upload_starts_over() {
    let h = Harness::start().await;
    let source = data(7 * MIB, 13);
    ftp_die_mid_upload(h.ftp, "early.bin", &source[..3 * MIB]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ftp = h.login("alice").await;
    assert!(ftp.size("early.bin").await.is_err(), "no file to resume");
    ftp.put_file("early.bin", &mut std::io::Cursor::new(source.clone()))
        .await
        .expect("STOR");
    let _ = ftp.quit().await;
    assert!(h.object("alice/early.bin").await.expect("object") == source);
    assert_eq!(completions_for(&h, "alice/early.bin").len(), 1);
}

/// A killed client's connections close microseconds apart in either order; lftp's close
/// the data connection first under SIGKILL, which on its own reads as a finished upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_whose_data_connection_closes_just_before_its_control_connection_is_cut() {
    let h = Harness::start().await;
    let source = data(12 * MIB, 16);
    let mut ftp = RawFtp::login(h.ftp).await;
    let mut data_conn = ftp.data().await;
    let (code, text) = ftp.command("STOR killed.bin").await;
    assert!(code == 150 || code == 125, "{text}");
    data_conn.write_all(&source).await.expect("send");
    data_conn.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(data_conn);
    tokio::time::sleep(Duration::from_millis(1)).await;
    drop(ftp);
    assert_eq!(
        h.kept_bytes("alice/killed.bin").await,
        Some(10 * MIB as u64)
    );
    assert!(
        h.object("alice/killed.bin").await.is_none(),
        "nothing published"
    );
    assert!(h.events().is_empty(), "no completion for a cut upload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allo_size_disagreeing_with_the_data_cuts_the_upload() {
    let h = Harness::start().await;
    let source = data(12 * MIB, 14);
    let mut ftp = RawFtp::login(h.ftp).await;
    let (code, text) = ftp.command(&format!("ALLO {}", 20 * MIB)).await;
    assert_eq!(code, 200, "{text}");
    let mut data_conn = ftp.data().await;
    let (code, _) = ftp.command("STOR allo.bin").await;
    assert!(code == 150 || code == 125);
    data_conn.write_all(&source).await.expect("send");
    drop(data_conn);
    let (code, text) = ftp.reply().await;
    assert!((400..600).contains(&code), "not a success: {text}");
    assert_eq!(h.kept_bytes("alice/allo.bin").await, Some(10 * MIB as u64));
    assert!(h.object("alice/allo.bin").await.is_none());
    assert!(h.events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_cut_resumes_with_a_write_at_the_kept_length_even_after_a_restart() {
    use tokio::io::AsyncSeekExt;
    let mut h = Harness::start().await;
    let source = data(16 * MIB, 15);
    common::vanish_mid_sftp_upload(h.sftp, "/reel.mov", &source[..12 * MIB]).await;
    assert_eq!(h.kept_bytes("alice/reel.mov").await, Some(10 * MIB as u64));

    // The bridge restarts between the cut and the resume.
    h.shutdown().await;
    let bridge = ingest_bridge::server::Bridge::start(h.config.clone())
        .await
        .expect("restart");
    let sftp_addr = bridge.sftp_addr.expect("sftp");
    h.bridge = Some(bridge);

    let c = sftp_login(sftp_addr, "alice", Login::Password(PASSWORD))
        .await
        .expect("login");
    let meta = c.sftp.metadata("/reel.mov").await.expect("stat");
    assert_eq!(meta.size, Some(10 * MIB as u64));
    let mut file = c
        .sftp
        .open_with_flags(
            "/reel.mov",
            russh_sftp::protocol::OpenFlags::WRITE | russh_sftp::protocol::OpenFlags::CREATE,
        )
        .await
        .expect("open without truncate");
    file.seek(std::io::SeekFrom::Start(10 * MIB as u64))
        .await
        .expect("seek");
    file.write_all(&source[10 * MIB..]).await.expect("write");
    file.shutdown().await.expect("close");
    drop(file);
    assert!(h.object("alice/reel.mov").await.expect("object") == source);
    let events = completions_for(&h, "alice/reel.mov");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["sha256"], sha256_hex(&source));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kept_uploads_expire_after_the_resume_window() {
    let h = Harness::builder().resume_window("2s").start().await;
    ftp_die_mid_upload(h.ftp, "old.bin", &data(11 * MIB, 16)).await;
    assert_eq!(h.kept_bytes("alice/old.bin").await, Some(10 * MIB as u64));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !h.open_multipart_ids().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ftp = h.login("alice").await;
    assert!(ftp.size("old.bin").await.is_err(), "gone after expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_temp_name_upload_completes_on_rename_to_the_final_name_only() {
    // Above 6 MiB a rename copies in 5 MiB UploadPartCopy ranges.
    let h = Harness::builder()
        .set("storage.multipart_copy_threshold", "6MiB")
        .set("storage.copy_part_size", "5MiB")
        .start()
        .await;
    let source = data(13 * MIB, 17);
    let mut ftp = h.login("alice").await;
    ftp.put_file(
        "show.mp4.filepart",
        &mut std::io::Cursor::new(source.clone()),
    )
    .await
    .expect("STOR");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.events().is_empty(), "no completion for a temporary name");
    ftp.rename("show.mp4.filepart", "show.mp4")
        .await
        .expect("rename");
    let _ = ftp.quit().await;
    assert!(
        h.object("alice/show.mp4.filepart").await.is_none(),
        "no temp object left"
    );
    assert!(h.object("alice/show.mp4").await.expect("object") == source);
    let events = h.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["key"], "alice/show.mp4");
    assert_eq!(events[0]["path"], "/show.mp4");
    assert_eq!(events[0]["size"], source.len() as u64);
    assert_eq!(events[0]["sha256"], sha256_hex(&source));
    let m = h.scrape().await;
    m.assert(
        "ingest_bridge_s3_requests_total{operation=UploadPartCopy,result=success}",
        3.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renaming_a_final_file_reports_the_new_key_and_overwrite_can_be_refused() {
    let h = Harness::builder().upload_overwrite(false).start().await;
    let source = data(4096, 18);
    h.upload("alice", "a.mov", &source).await;
    let mut ftp = h.login("alice").await;
    let err = ftp
        .put_file("a.mov", &mut std::io::Cursor::new(source.clone()))
        .await
        .expect_err("overwrite refused");
    assert!(err.to_string().contains("does not replace files"), "{err}");
    ftp.rename("a.mov", "b.mov").await.expect("rename");
    h.upload("alice", "c.mov", &source).await;
    let err = ftp
        .rename("b.mov", "c.mov")
        .await
        .expect_err("rename onto a file refused");
    assert!(err.to_string().contains("does not replace files"), "{err}");
    let _ = ftp.quit().await;
    let keys: Vec<String> = h
        .events()
        .iter()
        .map(|e| e["key"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(keys, ["alice/a.mov", "alice/b.mov", "alice/c.mov"]);
    let renamed = &completions_for(&h, "alice/b.mov")[0];
    assert_eq!(renamed["sha256"], sha256_hex(&source));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_kill_9_mid_upload_the_parts_in_s3_are_resumable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, config) = Harness::builder().write_config(dir.path()).await;
    let source = data(14 * MIB, 19);
    let (mut first, ftp_addr) = common::spawn_bridge(&config);
    let mut ftp = RawFtp::login(ftp_addr).await;
    let mut data_conn = ftp.data().await;
    let (code, _) = ftp.command("STOR crash.bin").await;
    assert!(code == 150 || code == 125);
    data_conn
        .write_all(&source[..12 * MIB])
        .await
        .expect("send");
    // Wait for two parts in the store, then crash: no chance to record anything more.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while common::parts_in_store(&store.root) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "parts never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    drop(data_conn);
    drop(ftp);

    let (mut second, ftp_addr) = common::spawn_bridge(&config);
    let result = async {
        let mut ftp = common::ftp_login_at(ftp_addr, "alice").await;
        let kept = common::resume_from_kept(&mut ftp, "crash.bin", &source).await;
        assert_eq!(kept, 10 * MIB, "the two whole parts S3 holds");
        let _ = ftp.quit().await;
    }
    .await;
    let _ = second.kill();
    let _ = second.wait();
    let () = result;
    let s3 = common::s3_client(&store).await;
    let body = common::object_bytes(&s3, "alice/crash.bin").await;
    assert!(body.expect("object") == source);
    let events: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("data").join("events.jsonl"))
            .expect("event log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["sha256"], sha256_hex(&source));
}
