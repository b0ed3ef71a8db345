//! SFTP sessions that no client behaviour can wedge: any number of requests in flight is
//! answered, and a session whose client left or stopped reading ends, freeing its place.

use crate::common;

use crate::common::sftp_wire::{READ, RawSftp};
use common::{Harness, PASSWORD, data, sftp_login_within};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const CHUNK: usize = 32 * 1024;

/// A loopback relay between a test's client and the bridge: frozen, it stops reading both
/// ways and keeps both sockets open (a client that stopped reading); cut, it closes both (a
/// client that went away). The bridge sees one connection from 127.0.0.1.
struct Relay {
    addr: SocketAddr,
    frozen: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn to(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let frozen = CancellationToken::new();
        let task = tokio::spawn({
            let frozen = frozen.clone();
            async move {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(bridge) = TcpStream::connect(target).await else {
                    return;
                };
                let (client_read, client_write) = client.into_split();
                let (bridge_read, bridge_write) = bridge.into_split();
                tokio::join!(
                    pipe(client_read, bridge_write, frozen.clone()),
                    pipe(bridge_read, client_write, frozen),
                );
            }
        });
        Relay { addr, frozen, task }
    }

    fn freeze(&self) {
        self.frozen.cancel();
    }

    fn cut(&self) {
        self.task.abort();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: CancellationToken) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            () = frozen.cancelled() => {
                // Hold both sockets open, reading nothing, until the relay is dropped.
                std::future::pending::<()>().await;
                return;
            }
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// paramiko's `get` asks for a whole file before it reads a reply (one READ per 32 KiB).
/// Before, the bridge's connection loop blocked on a full queue of requests while the
/// session's replies waited for a window adjustment only that loop could read: the session
/// hung after about 2 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_reads_in_flight_are_all_answered() {
    const READS: u32 = 1000;
    let h = Harness::start().await;
    let content = data(READS as usize * CHUNK + 12_345, 7);
    h.upload("alice", "big.bin", &content).await;

    let mut sftp = RawSftp::start(h.sftp).await;
    let handle = sftp.open("/big.bin", READ).await;
    for i in 0..READS {
        sftp.read(10 + i, &handle, u64::from(i) * CHUNK as u64, CHUNK as u32)
            .await;
    }
    let mut answered = vec![false; READS as usize];
    for n in 0..READS {
        let (kind, id, body) = tokio::time::timeout(Duration::from_secs(20), sftp.replies.recv())
            .await
            .unwrap_or_else(|_| panic!("the session hung after {n} of {READS} replies"))
            .expect("reply");
        assert_eq!(kind, 103, "READ {id} answered with DATA");
        let i = (id - 10) as usize;
        assert!(!answered[i], "READ {id} answered once");
        answered[i] = true;
        assert!(
            body[4..] == content[i * CHUNK..(i + 1) * CHUNK],
            "READ {id} has the file's bytes"
        );
    }
}

/// Waits until the bridge has no SFTP session left, then shows that the one place
/// `max_connections_per_ip` gives 127.0.0.1 is free again: an FTP login and an SFTP login
/// from it succeed. Returns how long the session took to end.
async fn place_is_freed(h: &Harness, within: Duration) -> Duration {
    let start = tokio::time::Instant::now();
    let active = h
        .wait_metric(
            "ingest_bridge_sessions_active{protocol=sftp}",
            within,
            |n| n == 0.0,
        )
        .await;
    assert_eq!(
        active, 0.0,
        "the abandoned SFTP session still holds its place after {within:?}"
    );
    let took = start.elapsed();
    let mut ftp = suppaftp::tokio::AsyncFtpStream::connect(h.ftp)
        .await
        .expect("the address's place is free for FTP");
    ftp.login("alice", PASSWORD)
        .await
        .expect("an FTP login from the same address");
    let _ = ftp.quit().await;
    drop(ftp);
    // The FTP session's place is freed as its connection closes.
    sftp_login_within(
        h.sftp,
        Duration::from_secs(5),
        "an SFTP login from the same address",
    )
    .await;
    took
}

/// A bridge allowing one connection per address, with `idle_timeout`, holding a file for
/// downloads; and a client mid-download through a relay: 1,000 READs sent, 20 replies read.
async fn mid_download(idle_timeout: &str) -> (Harness, Relay, RawSftp) {
    let h = Harness::builder()
        .set("server.max_connections_per_ip", 1)
        .set("sftp.idle_timeout", idle_timeout)
        .start()
        .await;
    h.upload("alice", "big.bin", &data(1000 * CHUNK, 8)).await;
    let relay = Relay::to(h.sftp).await;
    let mut sftp = RawSftp::start(relay.addr).await;
    let handle = sftp.open("/big.bin", READ).await;
    for i in 0..1000u32 {
        sftp.read(10 + i, &handle, u64::from(i) * CHUNK as u64, CHUNK as u32)
            .await;
    }
    for _ in 0..20 {
        tokio::time::timeout(Duration::from_secs(10), sftp.replies.recv())
            .await
            .expect("the download starts")
            .expect("reply");
    }
    (h, relay, sftp)
}

/// A client that gives up mid-download (stops reading, then closes its socket) ends its
/// session at once, long before `sftp.idle_timeout`: before, the session outlived it (socket
/// in CLOSE-WAIT, `sessions_active` unchanged) and held its place in
/// `max_connections_per_ip` until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_gone_mid_download_frees_its_place() {
    let (h, relay, sftp) = mid_download("60s").await;
    relay.freeze();
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.cut();
    drop(sftp);
    place_is_freed(&h, Duration::from_secs(3)).await;
}

/// A client that stops reading mid-download, its socket left open, is ended by
/// `sftp.idle_timeout` (the session makes no progress), counted as an idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_is_ended_by_the_idle_timeout() {
    let (h, relay, _sftp) = mid_download("2s").await;
    relay.freeze();
    let took = place_is_freed(&h, Duration::from_secs(6)).await;
    assert!(
        took >= Duration::from_millis(1500),
        "ended by the idle timeout, not at once ({took:?})"
    );
    assert!(
        h.metric("ingest_bridge_limits_exceeded_total{limit=idle_timeout}")
            .await
            >= 1.0
    );
}
