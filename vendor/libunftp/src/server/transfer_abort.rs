//! ingest-bridge patch: `ABOR` during `STOR`/`APPE` aborts the upload.
//!
//! Upstream answered `226` to `ABOR` at once and let the upload run on, so the bytes received
//! so far were stored as if the client had finished. Here `ABOR` marks the upload aborted: its
//! data reader fails (the storage backend sees a cut connection, not an end of file), and the
//! storage backend can ask [`transfer_abort`] before it commits, for an `ABOR` that arrives
//! just after the data connection ended. The data channel then answers `426` for the transfer
//! and `226` for `ABOR`, in that order (RFC 959 §4.1.3).

use futures_util::task::AtomicWaker;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const ABORTED: u8 = 2;

/// Whether the client aborted the upload in progress with `ABOR`. One per control connection.
#[derive(Clone, Debug, Default)]
pub struct TransferAbort(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    state: AtomicU8,
    waker: AtomicWaker,
}

impl TransferAbort {
    /// `ABOR` arrived while this upload was running.
    pub fn is_aborted(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == ABORTED
    }

    /// An upload starts (or is about to): `ABOR` from now on is its to answer.
    pub(crate) fn start(&self) {
        let _ = self.0.state.compare_exchange(IDLE, RUNNING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// `ABOR`: true if an upload is running, which is then aborted and will answer for it.
    pub(crate) fn request(&self) -> bool {
        let aborted = self
            .0
            .state
            .compare_exchange(RUNNING, ABORTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if aborted {
            self.0.waker.wake();
        }
        aborted
    }

    /// The upload's reply is queued; true if `ABOR` came meanwhile and still needs its own.
    pub(crate) fn end(&self) -> bool {
        self.0.state.swap(IDLE, Ordering::AcqRel) == ABORTED
    }

    fn poll_aborted(&self, cx: &mut Context<'_>) -> bool {
        self.0.waker.register(cx.waker());
        self.is_aborted()
    }
}

tokio::task_local! {
    static CURRENT: TransferAbort;
}

/// The `ABOR` signal of the upload whose `StorageBackend::put` is calling this, if any: a
/// backend checks it right before it commits, since an `ABOR` sent just after the data
/// connection closed finds the data reader already at its end.
pub fn transfer_abort() -> Option<TransferAbort> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `put` with `abort` as its [`transfer_abort`].
pub(crate) async fn scope<F: std::future::Future>(abort: TransferAbort, put: F) -> F::Output {
    CURRENT.scope(abort, put).await
}

/// An upload's data reader that fails once `ABOR` arrives.
pub(crate) struct AbortableReader {
    pub(crate) inner: Box<dyn AsyncRead + Send + Unpin + Sync>,
    pub(crate) abort: TransferAbort,
}

impl AsyncRead for AbortableReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.abort.poll_aborted(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the client aborted the transfer (ABOR)",
            )));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}
