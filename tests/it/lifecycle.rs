//! Restarts without loss, on a real process: SIGTERM drains, SIGKILL loses nothing.

use crate::common;

use common::raw_ftp::RawFtp;
use common::{FakeApi, Harness, data, sha256_hex};
use std::process::Child;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const MIB: usize = 1024 * 1024;

async fn ftp_login(addr: std::net::SocketAddr) -> suppaftp::tokio::AsyncFtpStream {
    common::ftp_login_at(addr, "alice").await
}

fn signal(child: &Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name}");
}

/// Waits up to `limit` for the process to exit; its exit code.
fn exit_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the bridge did not exit within {limit:?}");
}

async fn readyz(metrics: std::net::SocketAddr) -> (u16, String) {
    let response = reqwest::get(format!("http://{metrics}/readyz"))
        .await
        .expect("readyz answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// SIGTERM during a multipart upload: `/readyz` fails at once, a new connection hears 421, an
/// open session's new upload is refused, the running upload completes and its client hears
/// 226, its completion is delivered, and the process exits 0 well within the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_running_uploads_refuses_new_ones_and_exits_0() {
    let api = FakeApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, config) = Harness::builder()
        .notify_url(&api.url)
        .drain_timeout("60s")
        .write_config(dir.path())
        .await;
    let mut bridge = common::spawn_bridge_process(&config);
    assert_eq!(readyz(bridge.metrics).await.0, 200);

    let mut running = ftp_login(bridge.ftp).await;
    let mut idle = ftp_login(bridge.ftp).await;
    let bytes = data(12 * MIB, 7);
    let mut stream = running
        .put_with_stream("drained.bin")
        .await
        .expect("STOR accepted");
    stream.write_all(&bytes[..6 * MIB]).await.expect("write");
    stream.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(300)).await;

    signal(&bridge.child, "TERM");
    let sent = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = readyz(bridge.metrics).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let (_, greeting) = RawFtp::connect(bridge.ftp).await;
    assert_eq!(greeting.0, 421, "{}", greeting.1);
    assert!(greeting.1.contains("restarting"), "{}", greeting.1);
    let mut late = std::io::Cursor::new(data(1000, 8));
    let refused = idle.put_file("late.bin", &mut late).await;
    assert!(refused.is_err(), "a new upload during the drain is refused");

    stream
        .write_all(&bytes[6 * MIB..])
        .await
        .expect("write rest");
    stream
        .finish()
        .await
        .expect("the running upload completes: 226");
    assert_eq!(
        exit_within(&mut bridge.child, Duration::from_secs(30)),
        Some(0)
    );
    assert!(sent.elapsed() < Duration::from_secs(30));

    let s3 = common::s3_client(&store).await;
    let stored = common::object_bytes(&s3, "alice/drained.bin").await;
    assert_eq!(
        stored.as_deref().map(sha256_hex),
        Some(sha256_hex(&bytes)),
        "the object is whole"
    );
    assert_eq!(common::object_bytes(&s3, "alice/late.bin").await, None);
    let received = api.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body["key"], "alice/drained.bin");
}

/// SIGKILL mid-upload, with an earlier upload's completion still undelivered (the API is
/// down), then a restart: the cut upload left no object, and the earlier completion is
/// delivered once the API is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_upload_leaves_no_partial_object_and_loses_no_completion() {
    let api = FakeApi::scripted([503; 100]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, config) = Harness::builder()
        .notify_url(&api.url)
        .write_config(dir.path())
        .await;
    let mut first = common::spawn_bridge_process(&config);

    let mut ftp = ftp_login(first.ftp).await;
    let done = data(3 * MIB, 1);
    ftp.put_file("done.bin", &mut std::io::Cursor::new(done.clone()))
        .await
        .expect("the first upload completes");
    api.wait_for(1, Duration::from_secs(10)).await;

    let mut cut = ftp_login(first.ftp).await;
    let mut stream = cut.put_with_stream("cut.bin").await.expect("STOR accepted");
    stream
        .write_all(&data(8 * MIB, 2))
        .await
        .expect("write part of it");
    stream.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.child.kill().expect("SIGKILL");
    let _ = first.child.wait();
    drop(stream);

    api.script.lock().expect("script").clear();
    let before = api.requests().len();
    let mut second = common::spawn_bridge_process(&config);
    api.wait_for(before + 1, Duration::from_secs(15)).await;
    // Anything sent twice would come now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let delivered: Vec<_> = api.requests()[before..]
        .iter()
        .map(|r| r.body["key"].as_str().unwrap_or_default().to_string())
        .collect();
    let _ = second.child.kill();
    let _ = second.child.wait();

    assert_eq!(delivered, vec!["alice/done.bin".to_string()]);
    let s3 = common::s3_client(&store).await;
    assert_eq!(common::object_bytes(&s3, "alice/cut.bin").await, None);
    assert_eq!(
        common::object_bytes(&s3, "alice/done.bin").await.as_deref(),
        Some(done.as_slice())
    );
}

/// An upload still running when `server.drain_timeout` runs out is cut like a dropped
/// connection: its whole parts stay in S3, and after the restart the client resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_still_running_at_the_drain_deadline_is_kept_for_a_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, config) = Harness::builder()
        .drain_timeout("2s")
        .write_config(dir.path())
        .await;
    let source = data(14 * MIB, 21);
    let mut first = common::spawn_bridge_process(&config);
    let mut ftp = RawFtp::login(first.ftp).await;
    let mut data_conn = ftp.data().await;
    let (code, _) = ftp.command("STOR slow.bin").await;
    assert!(code == 150 || code == 125);
    data_conn
        .write_all(&source[..12 * MIB])
        .await
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::parts_in_store(&store.root) < 2 {
        assert!(Instant::now() < deadline, "parts never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The client stalls; the drain gives it 2 s, then cuts it and the process exits 0.
    signal(&first.child, "TERM");
    assert_eq!(
        exit_within(&mut first.child, Duration::from_secs(30)),
        Some(0)
    );
    drop(data_conn);
    drop(ftp);

    let mut second = common::spawn_bridge_process(&config);
    let mut ftp = ftp_login(second.ftp).await;
    let kept = common::resume_from_kept(&mut ftp, "slow.bin", &source).await;
    assert_eq!(kept, 10 * MIB, "the two whole parts S3 holds");
    let _ = second.child.kill();
    let _ = second.child.wait();
    let s3 = common::s3_client(&store).await;
    let body = common::object_bytes(&s3, "alice/slow.bin").await;
    assert!(
        body.as_deref() == Some(source.as_slice()),
        "the resumed object is whole"
    );
}
