//! Who may connect and what they may send: the global address allowlist, per-user
//! allowlists, bans of addresses that keep failing to log in, connection limits, upload
//! limits and hostile names — on FTP and SFTP alike.

use crate::common;

use common::raw_ftp::RawFtp;
use common::{Harness, Login, PASSWORD, sftp_login, sftp_login_within};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// The first line the FTP server sends on a new connection.
async fn ftp_greeting(addr: std::net::SocketAddr) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    line.trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn addresses_outside_the_allowlist_are_refused_on_both_protocols() {
    let h = Harness::builder()
        .allowed_ips(&["10.0.0.0/8", "2001:db8::/32"])
        .start()
        .await;
    let greeting = ftp_greeting(h.ftp).await;
    assert!(
        greeting.starts_with("421 ") && greeting.contains("not allowed"),
        "{greeting}"
    );
    assert!(
        sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
            .await
            .is_err()
    );
    let m = h.scrape().await;
    for protocol in ["ftp", "sftp"] {
        assert_eq!(
            m.get(&format!(
                "ingest_bridge_connections_refused_total{{protocol={protocol},reason=not_allowed}}"
            )),
            1.0,
            "{protocol}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_allowlist_refuses_that_user_elsewhere_as_a_failed_login() {
    let h = Harness::builder()
        .alice("allowed_ips", ["192.0.2.0/24"])
        .start()
        .await;
    let mut ftp = suppaftp::tokio::AsyncFtpStream::connect(h.ftp)
        .await
        .expect("connect");
    assert!(ftp.login("alice", PASSWORD).await.is_err(), "alice refused");
    assert!(ftp.login("bob", PASSWORD).await.is_ok(), "bob unrestricted");
    assert!(
        sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
            .await
            .is_err()
    );
    assert!(
        sftp_login(h.sftp, "alice", Login::Key(Box::new(common::client_key(1))))
            .await
            .is_err(),
        "a right key from the wrong address is refused too"
    );
    let m = h.scrape().await;
    m.assert(
        "ingest_bridge_logins_total{protocol=ftp,result=failure}",
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_failed_logins_ban_the_address_on_both_protocols_until_the_ban_ends() {
    let h = Harness::builder().defender(3, "2s").start().await;
    for _ in 0..3 {
        let mut ftp = suppaftp::tokio::AsyncFtpStream::connect(h.ftp)
            .await
            .expect("connect");
        assert!(ftp.login("alice", "wrong").await.is_err());
    }
    let greeting = ftp_greeting(h.ftp).await;
    assert!(
        greeting.starts_with("421 ") && greeting.contains("failed logins"),
        "{greeting}"
    );
    assert!(
        sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
            .await
            .is_err(),
        "banned on SFTP too, even with the right password"
    );
    let m = h.scrape().await;
    m.assert("ingest_bridge_defender_bans_total", 1.0);
    m.assert("ingest_bridge_defender_banned_addresses", 1.0);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let mut ftp = h.login("alice").await;
    let _ = ftp.quit().await;
    assert!(
        sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
            .await
            .is_ok()
    );
    let m = h.scrape().await;
    m.assert("ingest_bridge_defender_banned_addresses", 0.0);
}

/// Alice sends `bytes` with `STOR path`, which a limit refuses mid-transfer; returns the
/// reply once the multipart upload is gone and checks that no object was left.
async fn refused_mid_transfer(h: &Harness, path: &str, bytes: &[u8]) -> (u32, String) {
    use tokio::io::AsyncWriteExt;
    let mut ftp = RawFtp::login(h.ftp).await;
    let mut data = ftp.data().await;
    let (code, text) = ftp.command(&format!("STOR {path}")).await;
    assert_eq!(code, 150, "{text}");
    // The server stops reading once past the limit: the write may fail, that is fine.
    let _ = data.write_all(bytes).await;
    let _ = data.shutdown().await;
    let reply = ftp.reply().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !h.open_multipart_ids().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "multipart left open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.object(&format!("alice/{path}")).await.is_none());
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_file_size_cuts_the_upload_off_and_keeps_nothing() {
    let h = Harness::builder()
        .alice("max_file_size", "6MiB")
        .start()
        .await;
    let (code, text) = refused_mid_transfer(&h, "big.mov", &common::data(9 * 1024 * 1024, 1)).await;
    assert!(
        code == 552 && text.contains("max_file_size") && text.contains("6MiB"),
        "{text}"
    );
    let mut ftp = h.login("alice").await;
    assert!(ftp.size("big.mov").await.is_err(), "nothing kept to resume");
    ftp.put_file(
        "small.mov",
        &mut std::io::Cursor::new(common::data(1024 * 1024, 2)),
    )
    .await
    .expect("under the limit");
    let m = h.scrape().await;
    m.assert(
        "ingest_bridge_limits_exceeded_total{limit=max_file_size}",
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allowed_extensions_refuse_other_files_at_upload_and_at_rename() {
    let h = Harness::builder()
        .alice("allowed_extensions", [".mp4", "mxf"])
        .start()
        .await;
    let mut ftp = h.login("alice").await;
    let mut raw = std::io::Cursor::new(b"notes".to_vec());
    let err = ftp
        .put_file("notes.txt", &mut raw)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("not accepted"), "{err}");
    for ok in ["clip.MP4", "reel.mxf", "late.txt.filepart"] {
        ftp.put_file(ok, &mut std::io::Cursor::new(b"x".to_vec()))
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    let err = ftp
        .rename("late.txt.filepart", "late.txt")
        .await
        .expect_err("the final name is checked too");
    assert!(err.to_string().contains("not accepted"), "{err}");
    let _ = ftp.quit().await;
    assert!(h.object("alice/notes.txt").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_limits_refuse_the_extra_connection_on_both_protocols() {
    let h = Harness::builder()
        .set("server.max_connections_per_ip", 2)
        .start()
        .await;
    let (first, (code, _)) = RawFtp::connect(h.ftp).await;
    assert_eq!(code, 220);
    let (_second, (code, _)) = RawFtp::connect(h.ftp).await;
    assert_eq!(code, 220);
    let (_, (code, text)) = RawFtp::connect(h.ftp).await;
    assert!(
        code == 421 && text.contains("Too many connections from your address"),
        "{text}"
    );
    assert!(
        sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
            .await
            .is_err(),
        "the limit counts both protocols"
    );
    drop(first);
    sftp_login_within(
        h.sftp,
        Duration::from_secs(5),
        "a closed connection frees its place",
    )
    .await;
    let m = h.scrape().await;
    m.assert(
        "ingest_bridge_connections_refused_total{protocol=ftp,reason=max_connections_per_ip}",
        1.0,
    );
    assert!(m.get("ingest_bridge_limits_exceeded_total{limit=max_connections_per_ip}") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_names_are_refused_and_unicode_is_stored_in_nfc() {
    let h = Harness::start().await;
    let mut ftp = RawFtp::login(h.ftp).await;
    // "alice/" + 1016 + ".mov" is 1026 bytes: over S3's key limit only with the home.
    let too_long = format!("{}.mov", "x".repeat(1016));
    let refusals: [(&[u8], &str); 5] = [
        (b"../../escape", "leaves your home"),
        (b"bad\x01name", "control characters"),
        (b"del\x7fete", "control characters"),
        (b"caf\xe9-latin1", "UTF-8"),
        (too_long.as_bytes(), "1024-byte"),
    ];
    for (name, why) in refusals {
        ftp.send(&[b"MKD ", name].concat()).await;
        let (code, text) = ftp.reply().await;
        assert!(
            (500..600).contains(&code),
            "{}: {text}",
            String::from_utf8_lossy(name)
        );
        assert!(text.contains(why), "{why}: {text}");
    }
    let (code, text) = ftp.command("MKD shows/./../s1").await;
    assert_eq!(code, 257, "dot segments resolve inside home: {text}");

    let c = sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("login");
    assert!(c.sftp.create("nul\0name.mov").await.is_err());
    assert!(c.sftp.create("../../outside.mov").await.is_err());
    {
        use tokio::io::AsyncWriteExt;
        let mut file = c
            .sftp
            .create("cafe\u{301}.mov")
            .await
            .expect("decomposed name");
        file.write_all(b"nfc").await.expect("write");
        file.shutdown().await.expect("close");
    }
    assert_eq!(
        h.object("alice/caf\u{e9}.mov").await,
        Some(b"nfc".to_vec()),
        "stored under the composed (NFC) name"
    );
    assert!(h.object("alice/cafe\u{301}.mov").await.is_none());
    assert!(
        c.sftp.metadata("caf\u{e9}.mov").await.is_ok(),
        "found by either spelling"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_that_do_not_log_in_in_time_are_closed() {
    use tokio::io::AsyncReadExt;
    let h = Harness::builder().login_timeout("1s").start().await;
    let (mut silent_ftp, (code, _)) = RawFtp::connect(h.ftp).await;
    assert_eq!(code, 220);
    let mut silent_ssh = tokio::net::TcpStream::connect(h.sftp)
        .await
        .expect("connect");
    let mut logged_in = h.login("alice").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (code, text) = silent_ftp.reply().await;
    assert!(code == 421 && text.contains("No login in time"), "{text}");
    let mut buf = vec![0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), silent_ssh.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue, // the server's SSH banner
            Err(_) => panic!("the silent SSH connection is still open"),
        }
    }
    assert!(
        logged_in.noop().await.is_ok(),
        "a logged-in session outlives the login timeout"
    );
    let m = h.scrape().await;
    m.assert(
        "ingest_bridge_limits_exceeded_total{limit=login_timeout}",
        2.0,
    );
}

/// A connection to `addr` that starts with `header`, as a load balancer opens it.
async fn behind_proxy(addr: std::net::SocketAddr, header: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(header).await.expect("PROXY header");
    stream
}

/// A PROXY v2 header for a TCP client at `source` (IPv6).
fn proxy_v2(source: &str) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x21, 0, 36]); // v2 PROXY, TCP over IPv6, 36 bytes
    let source: std::net::SocketAddrV6 = source.parse().expect("source");
    header.extend_from_slice(&source.ip().octets());
    header.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    header.extend_from_slice(&source.port().to_be_bytes());
    header.extend_from_slice(&2222u16.to_be_bytes());
    header
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_header_from_a_trusted_balancer_names_the_client() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::builder()
        .trusted_proxies(&["127.0.0.1"])
        .allowed_ips(&["203.0.113.0/24", "2001:db8::/32"])
        .start()
        .await;
    // FTP behind a v1 balancer: the client's address decides admission and is reported.
    let stream = behind_proxy(h.ftp, b"PROXY TCP4 203.0.113.9 127.0.0.1 51000 2121\r\n").await;
    let (mut ftp, (code, text)) = RawFtp::over(stream).await;
    assert_eq!(code, 220, "{text}");
    ftp.log_in_as_alice().await;
    let mut data = ftp.data().await;
    let (code, text) = ftp.command("STOR proxied.bin").await;
    assert_eq!(code, 150, "{text}");
    data.write_all(b"through the balancer").await.expect("send");
    drop(data);
    let (code, text) = ftp.reply().await;
    assert_eq!(code, 226, "{text}");
    let event = h
        .events()
        .into_iter()
        .find(|e| e["key"] == "alice/proxied.bin")
        .expect("completion");
    assert_eq!(event["remote_addr"], "203.0.113.9:51000");

    // A client outside the allowlist is refused although the balancer itself is local.
    let stream = behind_proxy(h.ftp, b"PROXY TCP4 198.51.100.1 127.0.0.1 51000 2121\r\n").await;
    let (_, (code, text)) = RawFtp::over(stream).await;
    assert!(code == 421 && text.contains("not allowed"), "{text}");

    // SFTP behind a v2 balancer.
    let stream = behind_proxy(h.sftp, &proxy_v2("[2001:db8::7]:40000")).await;
    assert!(
        common::sftp_login_over(stream, "alice", Login::Password(PASSWORD))
            .await
            .is_ok(),
        "a v2 header naming an allowed IPv6 client"
    );
    let stream = behind_proxy(h.sftp, &proxy_v2("[2001:db9::7]:40000")).await;
    assert!(
        common::sftp_login_over(stream, "alice", Login::Password(PASSWORD))
            .await
            .is_err()
    );
    // Without a header, a trusted balancer's connection is dropped, not served as itself.
    assert!(
        sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
            .await
            .is_err()
    );
    let m = h.scrape().await;
    let refused = |protocol: &str, reason: &str| {
        m.get(&format!(
            "ingest_bridge_connections_refused_total{{protocol={protocol},reason={reason}}}"
        ))
    };
    assert_eq!(refused("ftp", "not_allowed"), 1.0);
    assert_eq!(refused("sftp", "not_allowed"), 1.0);
    assert_eq!(refused("sftp", "proxy_header"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_count_what_the_user_stores_across_deletes_and_restarts() {
    use tokio::io::AsyncWriteExt;
    const MIB: usize = 1024 * 1024;
    let mut h = Harness::builder()
        .alice("quota_bytes", "12MiB")
        .alice("quota_files", 3)
        .start()
        .await;
    // A file already in the home counts from the first upload on.
    h.s3.put_object(
        "alice/old.bin",
        common::data(2 * MIB, 1).into(),
        "application/octet-stream",
    )
    .await
    .expect("seed");
    h.upload("alice", "a.bin", &common::data(5 * MIB, 2)).await;

    // 7 MiB stored: another 6 MiB would pass 12 MiB and is cut off, nothing kept.
    let (code, text) = refused_mid_transfer(&h, "c.bin", &common::data(6 * MIB, 3)).await;
    assert!(
        code == 552 && text.contains("quota_bytes") && text.contains("12MiB"),
        "{code} {text}"
    );

    // Deleting frees its bytes and its file.
    let mut ftp = h.login("alice").await;
    ftp.rm("old.bin").await.expect("delete");
    ftp.put_file("c.bin", &mut std::io::Cursor::new(common::data(5 * MIB, 4)))
        .await
        .expect("fits now");
    ftp.put_file("d.txt", &mut std::io::Cursor::new(b"third".to_vec()))
        .await
        .expect("third file");
    let err = ftp
        .put_file("e.txt", &mut std::io::Cursor::new(b"fourth".to_vec()))
        .await
        .expect_err("a fourth file passes quota_files");
    assert!(err.to_string().contains("quota_files"), "{err}");
    ftp.put_file("d.txt", &mut std::io::Cursor::new(b"replaced".to_vec()))
        .await
        .expect("replacing a file adds none");
    let _ = ftp.quit().await;
    let m = h.scrape().await;
    for limit in ["quota_bytes", "quota_files"] {
        assert!(
            m.get(&format!(
                "ingest_bridge_limits_exceeded_total{{limit={limit}}}"
            )) >= 1.0,
            "{limit}"
        );
    }

    // The count survives a restart: no new listing, and SFTP is held to it too.
    h.shutdown().await;
    let bridge = ingest_bridge::server::Bridge::start(h.config.clone())
        .await
        .expect("restart");
    h.sftp = bridge.sftp_addr.expect("sftp");
    h.bridge = Some(bridge);
    let c = sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("login");
    let refused = async {
        let mut file = c.sftp.create("/e.txt").await?;
        file.write_all(b"fourth").await?;
        file.shutdown().await?;
        Ok::<_, std::io::Error>(())
    }
    .await;
    assert!(
        refused.is_err(),
        "a fourth file over SFTP after the restart"
    );
    assert!(h.object("alice/e.txt").await.is_none());
    let m = h.scrape().await;
    assert_eq!(
        m.get("ingest_bridge_s3_requests_total{operation=ListObjectsV2}"),
        0.0,
        "the stored count is used, not a new listing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_sessions_are_closed_and_counted_on_both_protocols() {
    let h = Harness::builder().idle_timeout("1s").start().await;
    let mut ftp = RawFtp::login(h.ftp).await;
    let c = sftp_login(h.sftp, "alice", Login::Password(PASSWORD))
        .await
        .expect("login");
    let (code, text) = tokio::time::timeout(Duration::from_secs(10), ftp.reply())
        .await
        .expect("closed in time");
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("timed out"), "{text}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let idle = h
            .metric("ingest_bridge_limits_exceeded_total{limit=idle_timeout}")
            .await;
        if idle >= 2.0 && c.ssh.is_closed() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle closes counted: {idle}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
