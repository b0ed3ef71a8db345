//! Explicit FTPS: TLS required before login, encrypted uploads through suppaftp (rustls),
//! plain-text data connections refused without a panic, certificates reloaded in place.

use crate::common;

use common::raw_ftp::{
    RawFtp, client_config_trusting as client_config, self_signed_certificate as certificate,
};
use common::{Harness, PASSWORD};
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A bridge whose FTP requires TLS, with its certificate; the certificate files live in a
/// directory of their own so a test can replace them.
async fn tls_bridge(required: bool) -> (Harness, CertificateDer<'static>, tempfile::TempDir) {
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key, der) = certificate(certs.path(), "server");
    let h = Harness::builder()
        .ftp_tls(&cert, &key, required)
        .start()
        .await;
    (h, der, certs)
}

/// Connects, upgrades with AUTH TLS and logs in as alice; returns the control connection
/// and the certificate the server presented.
async fn tls_login(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> (
    RawFtp<tokio_rustls::client::TlsStream<TcpStream>>,
    CertificateDer<'static>,
) {
    let (plain, _) = RawFtp::connect(addr).await;
    let (mut ftp, presented) = plain.start_tls(config).await;
    ftp.log_in_as_alice().await;
    (ftp, presented)
}

/// suppaftp over explicit FTPS (AUTH TLS, PBSZ 0, PROT P), logged in as alice, binary mode.
async fn suppaftp_over_tls(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> suppaftp::tokio::AsyncRustlsFtpStream {
    let connector =
        suppaftp::tokio::AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(config));
    let mut ftp = suppaftp::tokio::AsyncRustlsFtpStream::connect(addr)
        .await
        .expect("connect")
        .into_secure(connector, "localhost")
        .await
        .expect("AUTH TLS, PBSZ 0, PROT P");
    ftp.login("alice", PASSWORD).await.expect("login over TLS");
    ftp.transfer_type(suppaftp::types::FileType::Binary)
        .await
        .expect("TYPE I");
    ftp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plain_login_is_refused_when_tls_is_required() {
    let (h, _cert, _certs) = tls_bridge(true).await;
    let (mut plain, (greeting, _)) = RawFtp::connect(h.ftp).await;
    assert_eq!(greeting, 220);
    let (code, text) = plain.command("USER alice").await;
    assert!(
        code == 534 && text.contains("TLS connection is required"),
        "{text}"
    );
    let (code, text) = plain.command(&format!("PASS {PASSWORD}")).await;
    assert_eq!(code, 534, "{text}");
    let mut ftp = suppaftp::tokio::AsyncFtpStream::connect(h.ftp)
        .await
        .expect("connect");
    assert!(
        ftp.login("alice", PASSWORD).await.is_err(),
        "suppaftp without TLS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ftps_upload_lands_whole_and_its_completion_says_ftps() {
    let (h, cert, _certs) = tls_bridge(true).await;
    let mut ftp = suppaftp_over_tls(h.ftp, client_config(&[cert])).await;
    let bytes = common::data(7 * 1024 * 1024 + 11, 7);
    ftp.put_file("secure.mxf", &mut std::io::Cursor::new(bytes.clone()))
        .await
        .expect("FTPS upload");
    let names = ftp
        .nlst(None)
        .await
        .expect("listing over a TLS data connection");
    assert!(names.iter().any(|n| n.ends_with("secure.mxf")), "{names:?}");
    let _ = ftp.quit().await;
    let stored = h.object("alice/secure.mxf").await.expect("object");
    assert_eq!(common::sha256_hex(&stored), common::sha256_hex(&bytes));
    let events = h.events();
    let event = events
        .iter()
        .find(|e| e["key"] == "alice/secure.mxf")
        .expect("completion");
    assert_eq!(event["protocol"], "ftps");
    assert_eq!(event["sha256"], common::sha256_hex(&bytes));
    let m = h.scrape().await;
    m.assert(
        "ingest_bridge_uploads_total{protocol=ftps,outcome=completed}",
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_text_pipelined_behind_auth_tls_closes_the_connection() {
    // A man in the middle could append plain-text commands to AUTH TLS; had the server kept
    // them buffered, it would run them as if they had come over TLS.
    let (h, cert, _certs) = tls_bridge(true).await;
    let (mut plain, _) = RawFtp::connect(h.ftp).await;
    plain.send(b"AUTH TLS\r\nUSER alice").await;
    let (code, text) = plain.reply().await;
    assert_eq!(code, 234, "{text}");
    let after = plain.closed_by_server().await;
    assert!(after.is_empty(), "nothing more in plain text: {after:?}");
    // Well-behaved clients are unaffected, however often they connect.
    for _ in 0..20 {
        let (mut control, _) = tls_login(h.ftp, client_config(std::slice::from_ref(&cert))).await;
        assert_eq!(control.command("NOOP").await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_text_on_a_protected_data_connection_fails_the_transfer_not_the_server() {
    let (h, cert, _certs) = tls_bridge(true).await;
    let config = client_config(&[cert]);
    let (mut control, _) = tls_login(h.ftp, config.clone()).await;
    // Without PROT P every way to open a data connection is refused.
    for command in ["PASV", "EPSV", "PORT 127,0,0,1,200,10"] {
        let (code, text) = control.command(command).await;
        assert_eq!(code, 534, "{command}: {text}");
    }
    assert_eq!(control.command("PBSZ 0").await.0, 200);
    assert_eq!(control.command("PROT P").await.0, 200);
    let mut data = control.data().await;
    let (code, text) = control.command("STOR plain.bin").await;
    assert_eq!(code, 150, "{text}");
    // Plain bytes where a TLS ClientHello belongs.
    let _ = data.write_all(b"this is not a TLS handshake\r\n\r\n").await;
    let _ = data.shutdown().await;
    drop(data);
    let (code, text) = control.reply().await;
    assert!(
        (400..600).contains(&code),
        "the transfer fails with an error reply: {text}"
    );
    assert_eq!(control.command("NOOP").await.0, 200, "the session goes on");
    assert!(h.object("alice/plain.bin").await.is_none());
    // And the server still serves TLS uploads.
    let mut ftp = suppaftp_over_tls(h.ftp, config).await;
    ftp.put_file("after.bin", &mut std::io::Cursor::new(b"fine".to_vec()))
        .await
        .expect("upload after the failed one");
    assert_eq!(h.object("alice/after.bin").await, Some(b"fine".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_swaps_the_certificate_and_a_broken_one_keeps_the_old() {
    let (h, first, certs) = tls_bridge(false).await;
    let tls = h.config.ftp.tls.clone().expect("tls configured");
    let (cert, key) = (tls.cert, tls.key);
    let (new_cert, new_key, second) = certificate(certs.path(), "renewed");
    // A fresh client config per connection: a resumed TLS session shows no certificate.
    let trusting_both = || client_config(&[first.clone(), second.clone()]);
    let (_, presented) = tls_login(h.ftp, trusting_both()).await;
    assert_eq!(presented, first);
    let (mut open_session, _) = tls_login(h.ftp, trusting_both()).await;

    std::fs::copy(&new_cert, &cert).expect("renew cert");
    std::fs::copy(&new_key, &key).expect("renew key");
    h.bridge().reload(&h.config_path).expect("reload");
    let (_, presented) = tls_login(h.ftp, trusting_both()).await;
    assert_eq!(
        presented, second,
        "new handshakes get the renewed certificate"
    );
    assert!(
        open_session.command("NOOP").await.0 == 200,
        "sessions opened before the reload keep running"
    );

    std::fs::write(&cert, "not a certificate").expect("break cert");
    let err = h
        .bridge()
        .reload(&h.config_path)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("ftp.tls.cert"), "{err}");
    let (_, presented) = tls_login(h.ftp, trusting_both()).await;
    assert_eq!(presented, second, "a broken renewal keeps the working one");
    let m = h.scrape().await;
    m.assert("ingest_bridge_config_reloads_total{result=ok}", 1.0);
    m.assert("ingest_bridge_config_reloads_total{result=error}", 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_data_connection_closed_without_close_notify_is_a_cut_not_a_file() {
    let (h, cert, _certs) = tls_bridge(true).await;
    let config = client_config(&[cert]);
    let (mut control, _) = tls_login(h.ftp, config.clone()).await;
    assert_eq!(control.command("TYPE I").await.0, 200);
    assert_eq!(control.command("PBSZ 0").await.0, 200);
    assert_eq!(control.command("PROT P").await.0, 200);
    let data = control.data().await;
    let (code, text) = control.command("STOR cut.mxf").await;
    assert_eq!(code, 150, "{text}");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            data,
        )
        .await
        .expect("TLS on the data connection");
    tls.write_all(&common::data(7 * 1024 * 1024, 3))
        .await
        .expect("send");
    tls.flush().await.expect("flush");
    // The TCP connection ends without a TLS close_notify: in stream mode that is the only
    // sign of a client that died, and it must not publish a truncated file.
    let (tcp, _) = tls.into_inner();
    drop(tcp);
    let (code, text) = control.reply().await;
    assert!(
        (400..500).contains(&code),
        "a truncated transfer is not a success: {text}"
    );
    assert!(h.object("alice/cut.mxf").await.is_none());
    assert!(
        h.events().iter().all(|e| e["key"] != "alice/cut.mxf"),
        "no completion"
    );
}
