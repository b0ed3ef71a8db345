//! The byte stream between one SSH channel and its SFTP session.
//!
//! russh's `ChannelStream` fed the session through a queue of SSH messages that the
//! connection loop waited on when full. A client with many requests in flight (paramiko's
//! `get` asks for a whole file at once) filled it while the session's replies waited for a
//! window adjustment that only the blocked loop could read: the session hung, and since the
//! loop no longer read the socket, it outlived its client. Here the loop hands each data
//! message to an [`Inbox`] and never waits. What bounds the inbox is the SSH window, which
//! russh re-opens as the session takes bytes out ([`ConsumedBytes`]), so a session that
//! stops consuming (an upload waiting for the memory budget) still holds its client back.

use crate::progress::Progress;
use russh::server::Msg;
use russh::{ChannelWriteHalf, ConsumedBytes};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Data received on a channel and not yet taken by its session.
#[derive(Default)]
struct Queue {
    chunks: VecDeque<bytes::Bytes>,
    /// Bytes in `chunks`.
    bytes: usize,
    /// The channel or the connection ended: reads see the end, writes fail.
    ended: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Queue {
    /// Ends the stream and drops what the session had not taken.
    fn end(&mut self) {
        self.ended = true;
        self.chunks.clear();
        self.bytes = 0;
        for waker in [self.reader.take(), self.writer.take()]
            .into_iter()
            .flatten()
        {
            waker.wake();
        }
    }
}

type Shared = Arc<Mutex<Queue>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Queue> {
    // The queue stays consistent whatever panicked while holding it.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The connection's end of a channel: where `Handler::data` puts what the client sent.
/// Dropping it (the connection ended) ends the session's stream.
pub struct Inbox {
    shared: Shared,
}

/// The client sent more than its window allowed.
#[derive(Debug)]
pub struct WindowOverrun;

impl Inbox {
    /// Queues `data` for the session; never waits. `window` is the largest window the
    /// client was ever given: the bytes it may have sent and the session not yet taken.
    pub fn push(&self, data: &[u8], window: u32) -> Result<(), WindowOverrun> {
        let mut queue = lock(&self.shared);
        if queue.ended {
            return Ok(());
        }
        if queue.bytes.saturating_add(data.len()) > window as usize {
            return Err(WindowOverrun);
        }
        queue.bytes += data.len();
        queue.chunks.push_back(bytes::Bytes::copy_from_slice(data));
        if let Some(waker) = queue.reader.take() {
            waker.wake();
        }
        Ok(())
    }

    /// The client closed the channel (or sent EOF, after which the channel is closed):
    /// the session sees the end of its input at once.
    pub fn end(&self) {
        lock(&self.shared).end();
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.end();
    }
}

/// The SFTP session's end of a channel: reads what the client sent, writes replies
/// through russh's channel writer (which waits for the client's window). Dropping it
/// closes the channel.
pub struct SftpStream {
    shared: Shared,
    consumed: ConsumedBytes,
    writer: Pin<Box<dyn AsyncWrite + Send>>,
    progress: Arc<Progress>,
    /// Closes the channel when the session ends.
    channel: Option<ChannelWriteHalf<Msg>>,
}

/// A channel's two ends, from the channel's write half and russh's consumption counter
/// (`Channel::into_handler_data`).
pub fn channel_stream(
    channel: ChannelWriteHalf<Msg>,
    consumed: ConsumedBytes,
    progress: Arc<Progress>,
) -> (Inbox, SftpStream) {
    let shared = Shared::default();
    let stream = SftpStream {
        shared: shared.clone(),
        consumed,
        writer: Box::pin(channel.make_writer()),
        progress,
        channel: Some(channel),
    };
    (Inbox { shared }, stream)
}

impl AsyncRead for SftpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let this = self.get_mut();
        let mut queue = lock(&this.shared);
        let mut taken = 0;
        while buf.remaining() > 0 {
            let Some(chunk) = queue.chunks.front_mut() else {
                break;
            };
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk.split_to(n));
            taken += n;
            if chunk.is_empty() {
                queue.chunks.pop_front();
            }
        }
        if taken > 0 {
            queue.bytes -= taken;
            drop(queue);
            this.consumed.consumed(taken);
            this.progress.touch();
            return Poll::Ready(Ok(()));
        }
        if queue.ended {
            return Poll::Ready(Ok(())); // end of stream
        }
        queue.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for SftpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        {
            let mut queue = lock(&this.shared);
            if queue.ended {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            // Woken when the channel ends, should the client's window never re-open.
            queue.writer = Some(cx.waker().clone());
        }
        let written = this.writer.as_mut().poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            this.progress.touch();
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().writer.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().writer.as_mut().poll_shutdown(cx)
    }
}

impl Drop for SftpStream {
    fn drop(&mut self) {
        let (Some(channel), Ok(runtime)) =
            (self.channel.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        // The connection may be gone already: then there is nothing to close.
        runtime.spawn(async move {
            let _ = channel.close().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn progress_stalls_only_after_the_timeout_without_progress() {
        let timeout = Duration::from_millis(1000);
        let progress = Progress::new();
        let watch = tokio::spawn({
            let progress = progress.clone();
            async move { progress.stalled(timeout).await }
        });
        tokio::time::sleep(Duration::from_millis(600)).await;
        progress.touch();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!watch.is_finished(), "progress 600 ms ago");
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(watch.is_finished(), "no progress for 1.4 s");
    }
}
