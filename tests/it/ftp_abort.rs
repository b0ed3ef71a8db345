//! Cancelling an FTP upload the RFC 959 way: `ABOR` on the control connection — bare (Apache
//! Commons Net), behind Telnet `IAC IP` / `IAC DM` with the DM as urgent data (lftp's Ctrl-C),
//! or inside TLS — cuts the upload like a reset does, answers `426` then `226`, and keeps the
//! session. Also: a command line that never ends is refused without being buffered.

use crate::common;

use common::raw_ftp::{RawFtp, client_config_trusting, self_signed_certificate};
use common::{Harness, data, wait_metric_at};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;
/// Telnet (RFC 854): Interpret As Command, Interrupt Process, Data Mark.
const IAC: u8 = 255;
const IP: u8 = 244;
const DM: u8 = 242;

/// Sends 12 MiB into an upload and lets the bridge take them: two 5 MiB parts reach S3.
async fn send_and_settle<W: AsyncWrite + Unpin>(data_conn: &mut W) {
    data_conn
        .write_all(&data(12 * MIB, 21))
        .await
        .expect("send");
    data_conn.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(400)).await;
}

/// `STOR name` on a plain data connection with 12 MiB sent; the data connection stays open.
async fn plain_upload_in_progress(ftp: &mut RawFtp, name: &str) -> TcpStream {
    let mut data_conn = ftp.data().await;
    let (code, text) = ftp.command(&format!("STOR {name}")).await;
    assert!(code == 150 || code == 125, "{text}");
    send_and_settle(&mut data_conn).await;
    data_conn
}

/// The transfer's reply, then ABOR's: RFC 959 §4.1.3.
async fn assert_426_then_226<S: tokio::io::AsyncRead + AsyncWrite + Unpin>(ftp: &mut RawFtp<S>) {
    let (code, text) = ftp.reply().await;
    assert_eq!(code, 426, "the aborted transfer: {text}");
    let (code, text) = ftp.reply().await;
    assert_eq!(code, 226, "ABOR itself: {text}");
}

/// What a cut upload leaves: its whole parts kept for a resume, no object, no completion.
async fn assert_cut(h: &Harness, key: &str) {
    assert_eq!(h.kept_bytes(key).await, Some(10 * MIB as u64), "{key}");
    assert!(h.object(key).await.is_none(), "nothing published at {key}");
    assert!(
        h.events().iter().all(|e| e["key"] != key),
        "no completion for {key}"
    );
}

/// The session goes on: a new STOR on the same control connection lands whole.
async fn assert_next_plain_upload_lands(h: &Harness, ftp: &mut RawFtp, name: &str) {
    let bytes = data(100_000, 22);
    let mut data_conn = ftp.data().await;
    let (code, text) = ftp.command(&format!("STOR {name}")).await;
    assert!(code == 150 || code == 125, "{text}");
    data_conn.write_all(&bytes).await.expect("send");
    drop(data_conn);
    let (code, text) = ftp.reply().await;
    assert_eq!(code, 226, "{text}");
    assert!(h.object(&format!("alice/{name}")).await == Some(bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abor_during_stor_cuts_the_upload_and_the_session_goes_on() {
    let h = Harness::start().await;
    let mut ftp = RawFtp::login(h.ftp).await;
    let data_conn = plain_upload_in_progress(&mut ftp, "abort.bin").await;
    // Commons Net's abort(): ABOR while the data connection is still open.
    ftp.send(b"ABOR").await;
    assert_426_then_226(&mut ftp).await;
    drop(data_conn);
    assert_cut(&h, "alice/abort.bin").await;
    assert_next_plain_upload_lands(&h, &mut ftp, "after.bin").await;
    // With no transfer running, ABOR is simply acknowledged.
    let (code, text) = ftp.command("ABOR").await;
    assert!(code == 225 || code == 226, "{text}");
    assert_eq!(ftp.command("NOOP").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lftp_interrupt_with_urgent_data_mark_then_abor_cuts_the_upload() {
    let h = Harness::start().await;
    let mut ftp = RawFtp::login(h.ftp).await;
    let data_conn = plain_upload_in_progress(&mut ftp, "urgent.bin").await;
    // lftp's Ctrl-C: IAC IP IAC normally, DM as TCP urgent data (which the server's kernel
    // takes out of the stream), then ABOR.
    ftp.send_raw(&[IAC, IP, IAC]).await;
    ftp.send_urgent(&[DM]);
    ftp.send(b"ABOR").await;
    assert_426_then_226(&mut ftp).await;
    drop(data_conn);
    assert_cut(&h, "alice/urgent.bin").await;
    assert_next_plain_upload_lands(&h, &mut ftp, "after.bin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_ftplib_abort_with_the_whole_line_urgent_cuts_the_upload() {
    let h = Harness::start().await;
    let mut ftp = RawFtp::login(h.ftp).await;
    let data_conn = plain_upload_in_progress(&mut ftp, "ftplib.bin").await;
    // ftplib's abort(): `ABOR\r\n` sent with MSG_OOB, so its `\n` is the urgent byte.
    ftp.send_urgent(b"ABOR\r\n");
    assert_426_then_226(&mut ftp).await;
    drop(data_conn);
    assert_cut(&h, "alice/ftplib.bin").await;
    assert_next_plain_upload_lands(&h, &mut ftp, "after.bin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn telnet_interrupt_and_data_mark_inline_then_abor_cuts_the_upload() {
    let h = Harness::start().await;
    let mut ftp = RawFtp::login(h.ftp).await;
    let data_conn = plain_upload_in_progress(&mut ftp, "inline.bin").await;
    ftp.send_raw(&[IAC, IP, IAC, DM]).await;
    ftp.send(b"ABOR").await;
    assert_426_then_226(&mut ftp).await;
    drop(data_conn);
    assert_cut(&h, "alice/inline.bin").await;
    // Telnet option negotiation and an escaped 255 do not break later commands either.
    ftp.send_raw(&[IAC, 253, 1, IAC, 241]).await;
    assert_eq!(ftp.command("NOOP").await.0, 200);
    assert_next_plain_upload_lands(&h, &mut ftp, "after.bin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abor_just_after_the_data_connection_closed_is_a_cut_not_a_file() {
    let h = Harness::start().await;
    let mut ftp = RawFtp::login(h.ftp).await;
    let data_conn = plain_upload_in_progress(&mut ftp, "late.bin").await;
    // The data connection ends first — on its own that reads as a finished upload — and
    // lftp's interrupt with ABOR follows a moment later, while the bridge is about to commit.
    drop(data_conn);
    tokio::time::sleep(Duration::from_millis(1)).await;
    ftp.send_raw(&[IAC, IP, IAC]).await;
    ftp.send_urgent(&[DM]);
    ftp.send(b"ABOR").await;
    assert_426_then_226(&mut ftp).await;
    assert_cut(&h, "alice/late.bin").await;
    assert_next_plain_upload_lands(&h, &mut ftp, "after.bin").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abor_inside_tls_cuts_an_ftps_upload_and_the_session_goes_on() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key, der) = self_signed_certificate(certs.path(), "server");
    let h = Harness::builder().ftp_tls(&cert, &key, true).start().await;
    let config = client_config_trusting(&[der]);
    let (plain, _) = RawFtp::connect(h.ftp).await;
    let (mut ftp, _) = plain.start_tls(config.clone()).await;
    ftp.log_in_as_alice().await;
    for cmd in ["TYPE I", "PBSZ 0", "PROT P"] {
        assert_eq!(ftp.command(cmd).await.0, 200, "{cmd}");
    }
    let tls_data = |tcp: TcpStream| {
        let config = config.clone();
        async move {
            tokio_rustls::TlsConnector::from(config)
                .connect(
                    rustls::pki_types::ServerName::try_from("localhost").expect("name"),
                    tcp,
                )
                .await
                .expect("TLS on the data connection")
        }
    };
    let tcp = ftp.data().await;
    let (code, text) = ftp.command("STOR secret.bin").await;
    assert!(code == 150 || code == 125, "{text}");
    let mut data_conn = tls_data(tcp).await;
    send_and_settle(&mut data_conn).await;
    ftp.send_raw(&[IAC, IP, IAC, DM]).await;
    ftp.send(b"ABOR").await;
    assert_426_then_226(&mut ftp).await;
    drop(data_conn);
    assert_cut(&h, "alice/secret.bin").await;

    let bytes = data(100_000, 23);
    let tcp = ftp.data().await;
    let (code, text) = ftp.command("STOR after.bin").await;
    assert!(code == 150 || code == 125, "{text}");
    let mut data_conn = tls_data(tcp).await;
    data_conn.write_all(&bytes).await.expect("send");
    data_conn.shutdown().await.expect("close_notify");
    let (code, text) = ftp.reply().await;
    assert_eq!(code, 226, "{text}");
    assert!(h.object("alice/after.bin").await == Some(bytes));
}

/// A `/proc/<pid>/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("field")
}

/// Kills the bridge process however the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endless_command_line_is_refused_without_being_buffered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, config) = Harness::builder().write_config(dir.path()).await;
    let spawned = common::spawn_bridge_process(&config);
    let (ftp_addr, metrics_addr) = (spawned.ftp, spawned.metrics);
    let bridge = Killed(spawned.child);
    let pid = bridge.0.id();
    let rss_before = status_kib(pid, "VmRSS");
    let peak_before = status_kib(pid, "VmHWM");

    let stream = TcpStream::connect(ftp_addr).await.expect("connect");
    let (mut read_half, mut write_half) = stream.into_split();
    let replies = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match read_half.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    // `USER ` and 256 MiB without a line end, in chunks, until the server closes.
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    let mut closed = write_half.write_all(b"USER ").await.is_err();
    while !closed && sent < 256 * MIB {
        closed = write_half.write_all(&chunk).await.is_err();
        sent += chunk.len();
    }
    let peak = status_kib(pid, "VmHWM");
    eprintln!(
        "sent {} KiB before the close; before: VmRSS {rss_before} KiB, VmHWM {peak_before} KiB; VmHWM after {peak} KiB",
        sent / 1024
    );
    let got = tokio::time::timeout(Duration::from_secs(10), replies)
        .await
        .expect("the server closes the connection")
        .expect("reader");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.lines().any(|l| l.starts_with("500 ")),
        "a 500 reply: {text:?}"
    );
    assert!(sent < 256 * MIB, "the server closed the connection");
    assert!(
        peak.saturating_sub(rss_before) < 32 * 1024,
        "memory grew by {} KiB",
        peak.saturating_sub(rss_before)
    );
    let counted = wait_metric_at(
        metrics_addr,
        "ingest_bridge_limits_exceeded_total{limit=line_length}",
        Duration::from_secs(10),
        |n| n == 1.0,
    )
    .await;
    assert_eq!(counted, 1.0, "line_length counted");
}
