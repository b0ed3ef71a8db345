//! `server.data_dir` on a real full filesystem (a small tmpfs, mounted by the test; CI runs
//! as root): the event log holds exactly the completions of uploads told success, one whole
//! JSON object per line; a client told of an error finds no object and no completion; and
//! the error it reads names no server path and no database words.

use crate::common;

use common::{FakeApi, Harness, Login, PASSWORD, sftp_login};
use ingest_bridge::upload::NOT_RECORDED;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

/// tmpfs allocates whole pages: slack in a file's last page takes writes on a full disk.
const PAGE: usize = 4096;

/// A tmpfs mounted at `dir/data`, unmounted on drop.
struct SmallDisk {
    data: PathBuf,
}

impl SmallDisk {
    /// Mounts it, or says loudly why the test cannot run here.
    fn mount(dir: &Path) -> Option<SmallDisk> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("mkdir data");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&data)
            .status();
        match mounted {
            Ok(s) if s.success() => Some(SmallDisk { data }),
            other => {
                eprintln!(
                    "\n\n!!! SKIPPED: cannot mount a tmpfs for the full-disk test ({other:?}); run as root to test a real full filesystem !!!\n\n"
                );
                None
            }
        }
    }

    /// Writes a filler file until the filesystem refuses more.
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.data.join("filler")).expect("filler");
        let chunk = vec![0u8; PAGE];
        while filler.write_all(&chunk).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.data.join("filler")).expect("remove filler");
    }

    fn events_text(&self) -> String {
        std::fs::read_to_string(self.data.join("events.jsonl")).expect("event log")
    }

    /// Every line of the event log, each of which must be one whole JSON object.
    fn events(&self) -> Vec<serde_json::Value> {
        let text = self.events_text();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "torn tail: {text:?}"
        );
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.data).status();
    }
}

/// A first line that leaves `slack` bytes free in the event log's first page.
fn seed_event_log(data: &Path, slack: usize) -> String {
    let len = PAGE - slack;
    let pad = "x".repeat(len - r#"{"seed":""}"#.len() - 1);
    let line = format!("{{\"seed\":\"{pad}\"}}\n");
    assert_eq!(line.len(), len);
    std::fs::write(data.join("events.jsonl"), &line).expect("seed");
    line
}

async fn ftp_store(h: &Harness, path: &str, bytes: &[u8]) -> Result<(), String> {
    let mut ftp = h.login("alice").await;
    let mut reader = std::io::Cursor::new(bytes.to_vec());
    let result = ftp.put_file(path, &mut reader).await.map(|_| ());
    let _ = ftp.quit().await;
    result.map_err(|e| e.to_string())
}

/// The status message of an SFTP upload's CLOSE, `None` when it succeeded.
async fn sftp_store(h: &Harness, path: &str, bytes: &[u8]) -> Option<String> {
    let c = sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("login");
    let mut file = c.sftp.create(path).await.expect("open");
    file.write_all(bytes).await.expect("write");
    file.shutdown().await.err().map(|e| e.to_string())
}

fn assert_no_internals(message: &str, data: &Path) {
    let lower = message.to_lowercase();
    for word in ["sqlite", "database", "events.jsonl", "outbox", "os error"] {
        assert!(!lower.contains(word), "{word:?} leaked: {message}");
    }
    assert!(
        !message.contains(&*data.to_string_lossy()) && !message.contains("/tmp"),
        "server path leaked: {message}"
    );
}

/// With the event log as the only sink: an append cut short by the full disk is taken back
/// (the next record starts on its own line), the client hears an error, no object stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_tears_no_event_log_line_and_publishes_nothing() {
    let dir = TempDir::new().expect("tempdir");
    let Some(disk) = SmallDisk::mount(dir.path()) else {
        return;
    };
    // 100 bytes fit in the first page, the completion line (~700) does not.
    let seed = seed_event_log(&disk.data, 100);
    let h = Harness::builder().start_in(dir).await;
    disk.fill();

    let err = ftp_store(&h, "torn.bin", b"cut by the full disk")
        .await
        .expect_err("the completion cannot be recorded");
    assert!(err.contains("451") && err.contains(NOT_RECORDED), "{err}");
    assert_no_internals(&err, &disk.data);
    assert_eq!(h.object("alice/torn.bin").await, None, "nothing published");
    assert_eq!(disk.events_text(), seed, "no half line left behind");

    let status = sftp_store(&h, "/torn-sftp.bin", b"cut too")
        .await
        .expect("CLOSE fails");
    assert!(status.contains(NOT_RECORDED), "{status}");
    assert_no_internals(&status, &disk.data);
    assert_eq!(h.object("alice/torn-sftp.bin").await, None);
    assert_eq!(disk.events_text(), seed);

    disk.free();
    ftp_store(&h, "whole.bin", b"room again")
        .await
        .expect("stored");
    let events = disk.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["key"], "alice/whole.bin");
    assert_eq!(
        h.object("alice/whole.bin").await.as_deref(),
        Some(&b"room again"[..])
    );
}

/// With a connector: the log line fits in its page but the outbox (SQLite's WAL) cannot
/// grow. The client hears an error, so the log must not list the upload either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completion_the_outbox_cannot_take_leaves_no_event_log_line() {
    let dir = TempDir::new().expect("tempdir");
    let Some(disk) = SmallDisk::mount(dir.path()) else {
        return;
    };
    let seed = seed_event_log(&disk.data, 3000);
    let api = FakeApi::start().await;
    let h = Harness::builder().notify_url(&api.url).start_in(dir).await;
    disk.fill();

    let err = ftp_store(&h, "unrecorded.bin", b"the outbox is full")
        .await
        .expect_err("the completion cannot be recorded");
    assert!(err.contains("451") && err.contains(NOT_RECORDED), "{err}");
    assert_no_internals(&err, &disk.data);
    let status = sftp_store(&h, "/unrecorded-sftp.bin", b"full here too")
        .await
        .expect("CLOSE fails");
    assert!(status.contains(NOT_RECORDED), "{status}");
    assert_no_internals(&status, &disk.data);
    assert_eq!(h.object("alice/unrecorded.bin").await, None);
    assert_eq!(h.object("alice/unrecorded-sftp.bin").await, None);
    assert_eq!(
        disk.events_text(),
        seed,
        "the log lists no upload told of an error"
    );

    disk.free();
    ftp_store(&h, "recorded.bin", b"room again")
        .await
        .expect("stored");
    let events = disk.events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["key"], "alice/recorded.bin");
    let sent = api.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 1, "only the recorded upload is delivered");
}
