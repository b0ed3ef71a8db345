//! The benchmark's load generator: many uploads at once through the bridge, over FTP or SFTP,
//! with deterministic content whose SHA-256 is known, so the completions can be checked.
//!
//! Usage: load PROTOCOL ADDR USER PASSWORD FILES SIZE CLIENTS PREFIX MANIFEST
//!   PROTOCOL  ftp | sftp
//!   FILES     uploads in all; SIZE bytes each (suffixes K, M: KiB, MiB)
//!   CLIENTS   connections at once; each logs in once and uploads its share one after the
//!             other (FILES = CLIENTS: every upload runs at the same time)
//!   PREFIX    directory the files go to (created first)
//!   MANIFEST  written with one "PATH SHA256" line per finished upload
//! Prints one line: `files=N failed=N seconds=S files_per_s=F mib_per_s=M`.

use sha2::{Digest, Sha256};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Content of upload `index`: `len` bytes from a xorshift stream seeded by the index, hashed
/// as it is read, never held whole in memory.
struct Content {
    state: u64,
    left: u64,
    hasher: Sha256,
}

impl Content {
    fn new(index: u64, len: u64) -> Content {
        Content {
            state: index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            left: len,
            hasher: Sha256::new(),
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
        self.hasher.update(&*out);
        self.left -= out.len() as u64;
    }

    fn sha256(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl AsyncRead for Content {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left).min(256 * 1024) as usize;
        let out = buf.initialize_unfilled_to(n);
        self.fill(out);
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// SSH client for the benchmark: trusts the bridge's host key.
struct Trusting;

impl russh::client::Handler for Trusting {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// One logged-in connection.
enum Client {
    Ftp(suppaftp::tokio::AsyncFtpStream),
    Sftp {
        /// Keeps the SSH connection open.
        _ssh: russh::client::Handle<Trusting>,
        sftp: russh_sftp::client::SftpSession,
    },
}

impl Client {
    async fn connect(
        protocol: &str,
        addr: &str,
        user: &str,
        password: &str,
    ) -> Result<Client, Error> {
        match protocol {
            "ftp" => {
                let mut ftp = suppaftp::tokio::AsyncFtpStream::connect(addr).await?;
                ftp.login(user, password).await?;
                ftp.transfer_type(suppaftp::types::FileType::Binary).await?;
                Ok(Client::Ftp(ftp))
            }
            "sftp" => {
                let config = Arc::new(russh::client::Config::default());
                let mut ssh = russh::client::connect(config, addr, Trusting).await?;
                if !ssh.authenticate_password(user, password).await?.success() {
                    return Err("sftp login refused".into());
                }
                let channel = ssh.channel_open_session().await?;
                channel.request_subsystem(true, "sftp").await?;
                let sftp = russh_sftp::client::SftpSession::new(channel.into_stream()).await?;
                // Like OpenSSH, wait as long as the server takes: a write the bridge holds
                // while the memory budget is spent is backpressure, not a failure.
                sftp.set_timeout(3600);
                Ok(Client::Sftp { _ssh: ssh, sftp })
            }
            other => Err(format!("unknown protocol {other:?}: use ftp or sftp").into()),
        }
    }

    async fn mkdir(&mut self, dir: &str) {
        let _ = match self {
            Client::Ftp(ftp) => ftp.mkdir(dir).await.map_err(Error::from),
            Client::Sftp { sftp, .. } => sftp.create_dir(dir).await.map_err(Error::from),
        };
    }

    /// Uploads `content` to `path`; returns its SHA-256 once the server confirmed it.
    async fn upload(&mut self, path: &str, mut content: Content) -> Result<String, Error> {
        match self {
            Client::Ftp(ftp) => {
                ftp.put_file(path, &mut content).await?;
            }
            Client::Sftp { sftp, .. } => {
                let mut file = sftp.create(path).await?;
                let mut chunk = vec![0u8; 255 * 1024];
                while content.left > 0 {
                    let n = (content.left as usize).min(chunk.len());
                    content.fill(&mut chunk[..n]);
                    file.write_all(&chunk[..n]).await?;
                }
                file.shutdown().await?;
            }
        }
        Ok(content.sha256())
    }
}

fn size(text: &str) -> Result<u64, Error> {
    let (digits, unit) = match text.strip_suffix(['K', 'k']) {
        Some(d) => (d, 1024),
        None => match text.strip_suffix(['M', 'm']) {
            Some(d) => (d, 1024 * 1024),
            None => (text, 1),
        },
    };
    Ok(digits.parse::<u64>()? * unit)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [
        _,
        protocol,
        addr,
        user,
        password,
        files,
        file_size,
        clients,
        prefix,
        manifest,
    ] = args.as_slice()
    else {
        return Err(
            "usage: load PROTOCOL ADDR USER PASSWORD FILES SIZE CLIENTS PREFIX MANIFEST".into(),
        );
    };
    let (files, file_size, clients) = (
        files.parse::<u64>()?,
        size(file_size)?,
        clients.parse::<u64>()?,
    );
    let clients = clients.clamp(1, files.max(1));
    Client::connect(protocol, addr, user, password)
        .await?
        .mkdir(prefix)
        .await;

    // Every client logs in before the clock starts, so FILES = CLIENTS means every upload
    // really runs at once.
    let ready = Arc::new(tokio::sync::Barrier::new(clients as usize + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (protocol, addr, user, password, prefix) = (
            protocol.clone(),
            addr.clone(),
            user.clone(),
            password.clone(),
            prefix.clone(),
        );
        let ready = ready.clone();
        tasks.spawn(async move {
            let client = Client::connect(&protocol, &addr, &user, &password).await;
            ready.wait().await;
            let mut client = match client {
                Ok(client) => client,
                Err(e) => return (Vec::new(), vec![e.to_string()]),
            };
            let (mut done, mut failed) = (Vec::new(), Vec::new());
            for index in (c..files).step_by(clients as usize) {
                let path = format!("{prefix}/f{index:06}.bin");
                match client.upload(&path, Content::new(index, file_size)).await {
                    Ok(sha) => done.push(format!("{path} {sha}")),
                    Err(e) => failed.push(format!("{path}: {e}")),
                }
            }
            (done, failed)
        });
    }
    ready.wait().await;
    let started = Instant::now();
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        let (d, f) = joined?;
        done.extend(d);
        failed.extend(f);
    }
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(manifest, done.join("\n") + "\n")?;
    for f in failed.iter().take(5) {
        eprintln!("failed: {f}");
    }
    println!(
        "files={} failed={} seconds={seconds:.2} files_per_s={:.1} mib_per_s={:.1}",
        done.len(),
        failed.len(),
        done.len() as f64 / seconds,
        (done.len() as u64 * file_size) as f64 / seconds / 1048576.0
    );
    Ok(())
}
