//! ingest-bridge patch: reads of the control connection that do not stall at TCP urgent data.
//!
//! Clients send Telnet's Synch (RFC 959 §4.1.3: lftp's `IAC DM`, Python ftplib's whole `ABOR`
//! line) with `MSG_OOB`. Linux ends a read at the urgent mark, so one read returns less than
//! is waiting; tokio takes a short read for a drained socket and waits for the next readiness
//! event, which does not come while the client waits for the reply to its `ABOR`. After every
//! read this checks for bytes still waiting and reads them straight from the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The control connection's socket, read past urgent marks.
pub(crate) struct UrgentSafeStream {
    inner: TcpStream,
    /// Bytes were waiting after the last read.
    more_waiting: bool,
}

impl UrgentSafeStream {
    pub(crate) fn new(inner: TcpStream) -> Self {
        UrgentSafeStream { inner, more_waiting: false }
    }
}

// The crate denies unsafe code; this one block borrows the socket for std's non-async calls,
// which tokio's readiness-checked API cannot make here.
#[cfg(unix)]
#[allow(unsafe_code)]
fn with_std<R>(stream: &TcpStream, f: impl FnOnce(&mut std::net::TcpStream) -> R) -> R {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: a second handle on a descriptor `stream` owns and keeps open for this call; the
    // handle is never dropped (ManuallyDrop), so the descriptor is not closed twice. The
    // descriptor is non-blocking (tokio set it so), so reads through it never block.
    let mut std_stream = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(stream.as_raw_fd()) });
    f(&mut std_stream)
}

/// Whether a read now would return something (bytes, or the end of the stream).
#[cfg(unix)]
fn bytes_waiting(stream: &TcpStream) -> bool {
    with_std(stream, |s| s.peek(&mut [0u8; 1]).is_ok())
}

#[cfg(not(unix))]
fn bytes_waiting(_stream: &TcpStream) -> bool {
    false
}

#[cfg(unix)]
fn read_now(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    with_std(stream, |s| s.read(buf))
}

#[cfg(not(unix))]
fn read_now(_stream: &TcpStream, _buf: &mut [u8]) -> io::Result<usize> {
    Err(io::ErrorKind::WouldBlock.into())
}

impl AsyncRead for UrgentSafeStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.more_waiting) {
            match read_now(&this.inner, buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    this.more_waiting = n > 0 && bytes_waiting(&this.inner);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.more_waiting = buf.filled().len() > before && bytes_waiting(&this.inner);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for UrgentSafeStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
