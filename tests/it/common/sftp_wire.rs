//! Raw SFTP messages over a russh client channel, for tests that need what russh-sftp's
//! client does not do: many requests in flight, or a client that stops reading.

use crate::common::{PASSWORD, TrustingClient};
use std::net::SocketAddr;
use std::sync::Arc;

/// SSH_FXP_OPEN flags.
pub const READ: u32 = 0x01;
/// SSH_FXP_OPEN: WRITE | CREAT | TRUNC.
pub const WRITE_NEW: u32 = 0x02 | 0x08 | 0x10;

/// One SFTP message: length, type, body.
pub fn sftp_message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut message = u32::try_from(body.len() + 1)
        .expect("small")
        .to_be_bytes()
        .to_vec();
    message.push(kind);
    message.extend_from_slice(body);
    message
}

/// Appends an SSH string (u32 length, then the bytes).
pub fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u32::try_from(s.len()).expect("small").to_be_bytes());
    out.extend_from_slice(s);
}

/// Reads SFTP replies off a raw channel: (type, request id, rest of the message).
pub fn sftp_replies(
    mut read: russh::ChannelReadHalf,
) -> tokio::sync::mpsc::UnboundedReceiver<(u8, u32, Vec<u8>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(msg) = read.wait().await {
            if let russh::ChannelMsg::Data { data } = msg {
                buf.extend_from_slice(&data);
            }
            while buf.len() >= 4 {
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if buf.len() < 4 + len {
                    break;
                }
                let message: Vec<u8> = buf.drain(..4 + len).skip(4).collect();
                let id = u32::from_be_bytes([message[1], message[2], message[3], message[4]]);
                let _ = tx.send((message[0], id, message[5..].to_vec()));
            }
        }
    });
    rx
}

/// An SFTP channel driven by hand: requests written as raw messages, replies as they come.
pub struct RawSftp {
    pub ssh: russh::client::Handle<TrustingClient>,
    pub write: russh::ChannelWriteHalf<russh::client::Msg>,
    pub replies: tokio::sync::mpsc::UnboundedReceiver<(u8, u32, Vec<u8>)>,
}

impl RawSftp {
    /// Logs alice in at `addr` (any stream there: the bridge or a relay to it), starts the
    /// SFTP subsystem and exchanges INIT/VERSION.
    pub async fn start(addr: SocketAddr) -> RawSftp {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let config = Arc::new(russh::client::Config::default());
        let mut ssh = russh::client::connect_stream(config, stream, TrustingClient)
            .await
            .expect("ssh");
        let auth = ssh
            .authenticate_password("alice", PASSWORD)
            .await
            .expect("auth");
        assert!(auth.success());
        let channel = ssh.channel_open_session().await.expect("channel");
        channel
            .request_subsystem(true, "sftp")
            .await
            .expect("subsystem");
        let (read, write) = channel.split();
        let mut sftp = RawSftp {
            ssh,
            write,
            replies: sftp_replies(read),
        };
        sftp.send(1, &3u32.to_be_bytes()).await;
        assert_eq!(sftp.replies.recv().await.expect("VERSION").0, 2);
        sftp
    }

    /// Sends one message.
    pub async fn send(&self, kind: u8, body: &[u8]) {
        self.write
            .data(&sftp_message(kind, body)[..])
            .await
            .expect("request sent");
    }

    /// OPENs `path` with `flags` (request id 1) and returns the handle.
    pub async fn open(&mut self, path: &str, flags: u32) -> Vec<u8> {
        let mut open = 1u32.to_be_bytes().to_vec();
        put_string(&mut open, path.as_bytes());
        open.extend_from_slice(&flags.to_be_bytes());
        open.extend_from_slice(&0u32.to_be_bytes());
        self.send(3, &open).await;
        let (kind, _, body) = self.replies.recv().await.expect("HANDLE");
        assert_eq!(kind, 102, "OPEN answered with a handle");
        body[4..].to_vec()
    }

    /// Sends READ `id` of `len` bytes at `offset`, without waiting for its reply.
    pub async fn read(&self, id: u32, handle: &[u8], offset: u64, len: u32) {
        let mut body = id.to_be_bytes().to_vec();
        put_string(&mut body, handle);
        body.extend_from_slice(&offset.to_be_bytes());
        body.extend_from_slice(&len.to_be_bytes());
        self.send(5, &body).await;
    }
}
