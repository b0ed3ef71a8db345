//! A hand-driven FTP control connection, plain or TLS: for asserting exact replies and for
//! clients that misbehave on purpose (die mid-transfer, send plain text where TLS belongs).

use super::PASSWORD;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// One control connection.
pub struct RawFtp<S = TcpStream> {
    io: BufReader<S>,
}

impl RawFtp<TcpStream> {
    /// Connects; returns the connection and the greeting (or the refusal) it got.
    pub async fn connect(addr: SocketAddr) -> (RawFtp, (u32, String)) {
        RawFtp::over(TcpStream::connect(addr).await.expect("connect")).await
    }

    /// Speaks FTP on a connection the test opened itself (e.g. after a PROXY header).
    pub async fn over(stream: TcpStream) -> (RawFtp, (u32, String)) {
        let mut ftp = RawFtp {
            io: BufReader::new(stream),
        };
        let greeting = ftp.reply().await;
        (ftp, greeting)
    }

    /// Sends `bytes` with `MSG_OOB`, as a Telnet "Synch" sends its `DM`: the last byte is the
    /// urgent one, which the server's kernel takes out of the stream.
    pub fn send_urgent(&self, bytes: &[u8]) {
        use std::os::fd::AsRawFd;
        let fd = self.io.get_ref().as_raw_fd();
        // SAFETY: a live buffer and its length, on a socket this connection owns.
        let sent = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_OOB) };
        assert_eq!(
            usize::try_from(sent).ok(),
            Some(bytes.len()),
            "urgent send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Connects and logs in as alice, binary mode.
    pub async fn login(addr: SocketAddr) -> RawFtp {
        let (mut ftp, _) = RawFtp::connect(addr).await;
        ftp.log_in_as_alice().await;
        ftp.command("TYPE I").await;
        ftp
    }

    /// `AUTH TLS` and the handshake; returns the secured connection and the certificate
    /// the server presented.
    pub async fn start_tls(
        mut self,
        config: Arc<rustls::ClientConfig>,
    ) -> (RawFtp<TlsStream<TcpStream>>, CertificateDer<'static>) {
        let (code, text) = self.command("AUTH TLS").await;
        assert_eq!(code, 234, "{text}");
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(
                ServerName::try_from("localhost").expect("name"),
                self.io.into_inner(),
            )
            .await
            .expect("TLS handshake on the control connection");
        let presented = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .expect("server certificate")
            .clone()
            .into_owned();
        (
            RawFtp {
                io: BufReader::new(tls),
            },
            presented,
        )
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawFtp<S> {
    /// Reads one (possibly multi-line) reply: its code and its last line.
    pub async fn reply(&mut self) -> (u32, String) {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                .await
                .expect("a reply within 10 s")
                .expect("read");
            assert!(n > 0, "control connection closed");
            let bytes = line.as_bytes();
            if bytes.len() >= 4 && bytes[3] == b' ' && bytes[..3].iter().all(u8::is_ascii_digit) {
                let code = line[..3].parse().expect("reply code");
                return (code, line.trim_end().to_string());
            }
        }
    }

    /// Waits up to 10 s for the server to close the connection; returns what it sent first.
    pub async fn closed_by_server(&mut self) -> String {
        let mut rest = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                .await
                .expect("the server closes the connection within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return rest;
            }
            rest.push_str(&line);
        }
    }

    /// Sends one command line and reads its reply.
    pub async fn command(&mut self, cmd: &str) -> (u32, String) {
        self.send(cmd.as_bytes()).await;
        self.reply().await
    }

    /// Sends raw bytes followed by CRLF, for names no string can hold.
    pub async fn send(&mut self, line: &[u8]) {
        let stream = self.io.get_mut();
        stream.write_all(line).await.expect("send");
        stream.write_all(b"\r\n").await.expect("send");
        stream.flush().await.expect("flush");
    }

    /// Sends raw bytes as they are (Telnet commands, unterminated lines).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let stream = self.io.get_mut();
        stream.write_all(bytes).await.expect("send");
        stream.flush().await.expect("flush");
    }

    /// `USER alice`, `PASS`; asserts success.
    pub async fn log_in_as_alice(&mut self) {
        let (code, text) = self.command("USER alice").await;
        assert_eq!(code, 331, "{text}");
        let (code, text) = self.command(&format!("PASS {PASSWORD}")).await;
        assert_eq!(code, 230, "{text}");
    }

    /// PASV and the (plain TCP) data connection.
    pub async fn data(&mut self) -> TcpStream {
        let (code, text) = self.command("PASV").await;
        assert_eq!(code, 227, "{text}");
        let inner = &text[text.find('(').expect("(") + 1..text.find(')').expect(")")];
        let n: Vec<u16> = inner
            .split(',')
            .map(|x| x.trim().parse().expect("n"))
            .collect();
        let addr = SocketAddr::from((
            [n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8],
            n[4] * 256 + n[5],
        ));
        TcpStream::connect(addr).await.expect("data connection")
    }
}

/// A self-signed certificate for "localhost" written as `<name>.pem` / `<name>.key` in `dir`.
pub fn self_signed_certificate(
    dir: &std::path::Path,
    name: &str,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    CertificateDer<'static>,
) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, generated.cert.pem()).expect("write cert");
    std::fs::write(&key, generated.signing_key.serialize_pem()).expect("write key");
    (cert, key, generated.cert.der().clone())
}

/// A TLS client that trusts only `trusted`.
pub fn client_config_trusting(trusted: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone()).expect("trust anchor");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
