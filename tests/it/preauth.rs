//! Nothing a client sends before it logs in is buffered without a small bound: PROXY headers
//! from trusted balancers, SSH identification lines and SSH packets before the login. A
//! client that sends more is closed at once, the bridge's memory does not follow its input,
//! and `limits_exceeded_total{limit}` counts it. Each test streams up to 256 MiB and stops
//! as soon as the bridge closes the connection.

use crate::common;

use common::Harness;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;
/// What a hostile client offers to send.
const INPUT: usize = 256 * MIB;
/// The bridge's memory may grow by far less than the input: this much at most.
const RSS_SLACK: u64 = 32 * MIB as u64;
/// Bytes the kernel's socket buffers may hold before the bridge's close reaches the client.
const IN_FLIGHT: usize = 16 * MIB;
/// Streaming tests take one at a time (each pushes up to 256 MiB through loopback).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This process's resident memory (the bridge runs in it). The tests that measure it run
/// in a process of their own ([`common::in_own_process`]): the other tests of the binary
/// would grow it too.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Sends `prefix`, then `fill` over and over up to [`INPUT`] bytes, until the bridge closes
/// the connection; returns the bytes sent. Panics if the bridge reads it all, or stops
/// reading without closing.
async fn stream_until_closed(mut stream: TcpStream, prefix: &[u8], fill: &[u8]) -> usize {
    let chunk: Vec<u8> = fill.iter().copied().cycle().take(64 * 1024).collect();
    if stream.write_all(prefix).await.is_err() {
        return 0;
    }
    let mut sent = prefix.len();
    while sent < INPUT {
        match tokio::time::timeout(Duration::from_secs(5), stream.write(&chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return sent,
            Ok(Ok(n)) => sent += n,
            Err(_) => panic!("the bridge stopped reading after {sent} bytes but did not close"),
        }
    }
    panic!("the bridge read all {INPUT} bytes without closing the connection");
}

/// Sends `bytes` and waits (at most 3 s) for the bridge to close the connection.
async fn send_and_expect_close(mut stream: TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let mut buf = vec![0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue, // the bridge's SSH identification line
            Err(_) => panic!("the bridge kept the connection open"),
        }
    }
}

/// `limits_exceeded_total{limit}`, once it reaches `expected` (the bridge counts it as the
/// connection ends, at about the moment the client sees the close) or after 3 s.
async fn limit_count(h: &Harness, limit: &str, expected: f64) -> f64 {
    let selector = format!("ingest_bridge_limits_exceeded_total{{limit={limit}}}");
    h.wait_metric(&selector, Duration::from_secs(3), |n| n >= expected)
        .await
}

/// Streams `prefix` + `fill` to `addr`, and checks that the bridge closed the connection
/// promptly, without its memory following the input, and counted `limit` once.
async fn hostile_input_is_cut_off(
    h: &Harness,
    addr: SocketAddr,
    prefix: &[u8],
    fill: &[u8],
    limit: &str,
) {
    let before = rss();
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let sent = stream_until_closed(stream, prefix, fill).await;
    let took = started.elapsed();
    let grown = rss().saturating_sub(before);
    eprintln!(
        "{limit}: closed after {sent} bytes in {took:?}, RSS +{} KiB",
        grown / 1024
    );
    assert!(sent < IN_FLIGHT, "closed only after {sent} bytes ({limit})");
    assert!(
        took < Duration::from_secs(3),
        "closed after {took:?} ({limit})"
    );
    assert!(
        grown < RSS_SLACK,
        "RSS grew by {} MiB ({limit})",
        grown / MIB as u64
    );
    assert_eq!(
        limit_count(h, limit, 1.0).await,
        1.0,
        "{limit} counted once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_identification_line_without_an_end_is_cut_off() {
    let _one = SERIAL.lock().await;
    if !common::in_own_process("preauth::an_ssh_identification_line_without_an_end_is_cut_off")
        .await
    {
        return;
    }
    let h = Harness::start().await;
    hostile_input_is_cut_off(&h, h.sftp, b"SSH-2.0-", b"A", "line_length").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_lines_before_the_ssh_identification_are_cut_off() {
    let _one = SERIAL.lock().await;
    if !common::in_own_process("preauth::garbage_lines_before_the_ssh_identification_are_cut_off")
        .await
    {
        return;
    }
    let h = Harness::start().await;
    // Long lines: over RFC 4253's 255 bytes, a limit.
    let mut line = vec![b'x'; 1022];
    line.extend_from_slice(b"\r\n");
    hostile_input_is_cut_off(&h, h.sftp, b"", &line, "line_length").await;
    // Short lines: a client may send none before its identification (only servers may),
    // so the first one ends the connection as not SSH.
    let stream = TcpStream::connect(h.sftp).await.expect("connect");
    let sent = stream_until_closed(stream, b"", b"debug: hello\r\n").await;
    assert!(sent > 0 && sent < IN_FLIGHT, "closed after {sent} bytes");
}

/// A valid identification line, then the 4-byte length field of a first packet.
fn id_then_packet_length(len: u32) -> Vec<u8> {
    let mut bytes = b"SSH-2.0-OpenSSH_9.9\r\n".to_vec();
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_packet_declared_huge_before_the_login_is_cut_off() {
    let _one = SERIAL.lock().await;
    if !common::in_own_process("preauth::an_ssh_packet_declared_huge_before_the_login_is_cut_off")
        .await
    {
        return;
    }
    let h = Harness::start().await;
    let prefix = id_then_packet_length(200 * MIB as u32);
    hostile_input_is_cut_off(&h, h.sftp, &prefix, &[0], "packet_size").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_declare_a_full_size_packet_before_the_login_hold_no_memory() {
    // 256 KiB is a valid packet once logged in; before, RFC 4253's 35000 bytes are enough,
    // and a client that declares more and sends nothing must not make the bridge hold it.
    const CONNECTIONS: usize = 150;
    let _one = SERIAL.lock().await;
    if !common::in_own_process(
        "preauth::connections_that_declare_a_full_size_packet_before_the_login_hold_no_memory",
    )
    .await
    {
        return;
    }
    let h = Harness::start().await;
    let before = rss();
    let mut open = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(h.sftp).await.expect("connect");
        let mut bytes = id_then_packet_length(256 * 1024);
        bytes.extend_from_slice(&[0; 16]);
        stream.write_all(&bytes).await.expect("send");
        open.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = rss().saturating_sub(before);
    eprintln!(
        "{CONNECTIONS} connections declaring 256 KiB: RSS +{} KiB",
        grown / 1024
    );
    assert!(
        grown < 16 * MIB as u64,
        "{CONNECTIONS} connections that sent 16 bytes of a packet grew RSS by {} MiB",
        grown / MIB as u64
    );
    for stream in open {
        send_and_expect_close(stream, b"").await;
    }
    assert_eq!(
        limit_count(&h, "packet_size", CONNECTIONS as f64).await,
        CONNECTIONS as f64
    );
}

/// A bridge that reads PROXY headers from connections from 127.0.0.1.
async fn behind_a_balancer() -> Harness {
    Harness::builder()
        .trusted_proxies(&["127.0.0.1"])
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_v1_header_without_an_end_is_cut_off() {
    let _one = SERIAL.lock().await;
    if !common::in_own_process("preauth::a_proxy_v1_header_without_an_end_is_cut_off").await {
        return;
    }
    let h = behind_a_balancer().await;
    hostile_input_is_cut_off(&h, h.ftp, b"PROXY TCP4 ", b"1", "proxy_header").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_v2_header_declaring_a_large_block_is_cut_off() {
    let _one = SERIAL.lock().await;
    if !common::in_own_process("preauth::a_proxy_v2_header_declaring_a_large_block_is_cut_off")
        .await
    {
        return;
    }
    let h = behind_a_balancer().await;
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]); // PROXY, TCP over IPv4, 65535 bytes
    hostile_input_is_cut_off(&h, h.sftp, &header, &[0], "proxy_header").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_bytes_is_closed_at_the_login_deadline() {
    let _one = SERIAL.lock().await;
    let h = Harness::builder().login_timeout("1s").start().await;
    let mut stream = TcpStream::connect(h.sftp).await.expect("connect");
    let started = Instant::now();
    let _ = stream.write_all(b"SSH-2.0-").await;
    loop {
        // One byte every 50 ms never finishes the line and never stays silent for long.
        if stream.write_all(b"z").await.is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            _ => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "still open after 4 s"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(limit_count(&h, "login_timeout", 1.0).await, 1.0);
}
