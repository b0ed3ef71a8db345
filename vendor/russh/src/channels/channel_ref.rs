use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio::sync::mpsc::Sender;

use super::WindowSizeRef;
use crate::ChannelMsg;

/// ingest-bridge patch: how much of a channel's incoming data has arrived and how much its
/// reader has taken, so that the session re-opens the receive window as data is consumed
/// (as OpenSSH does), not as it arrives. Without it a slow reader lets the peer queue up to
/// `channel_buffer_size` packets per channel, whatever the window.
#[derive(Debug, Default)]
pub(crate) struct ReadProgress {
    received: AtomicU64,
    consumed: AtomicU64,
    /// The reader is gone: nothing will be consumed, so nothing holds the window back.
    reader_gone: AtomicBool,
    /// The session to wake when data is consumed; `None`: not flow-controlled this way.
    wake: Option<Arc<Notify>>,
}

impl ReadProgress {
    pub(crate) fn new(wake: Option<Arc<Notify>>) -> Arc<Self> {
        Arc::new(Self {
            wake,
            ..Self::default()
        })
    }

    /// Counts `len` bytes queued for the reader; returns the bytes queued and not yet read.
    pub(crate) fn arrived(&self, len: usize) -> u32 {
        if self.wake.is_none() {
            return 0;
        }
        self.received.fetch_add(len as u64, Ordering::AcqRel);
        self.unconsumed()
    }

    /// Bytes queued for the reader and not yet read (0 when not flow-controlled this way).
    pub(crate) fn unconsumed(&self) -> u32 {
        if self.wake.is_none() || self.reader_gone.load(Ordering::Acquire) {
            return 0;
        }
        let consumed = self.consumed.load(Ordering::Acquire);
        let received = self.received.load(Ordering::Acquire);
        u32::try_from(received.saturating_sub(consumed)).unwrap_or(u32::MAX)
    }

    /// Called by the reader as it takes a data message off the queue.
    pub(crate) fn taken(&self, msg: &ChannelMsg) {
        if let ChannelMsg::Data { data } = msg {
            self.consumed(data.len());
        }
    }

    /// The reader has taken `len` more bytes of data.
    pub(crate) fn consumed(&self, len: usize) {
        if let Some(wake) = &self.wake {
            self.consumed.fetch_add(len as u64, Ordering::AcqRel);
            wake.notify_one();
        }
    }

    /// The reader is gone: nothing queued will be read, so nothing holds the window back.
    pub(crate) fn forget(&self) {
        self.reader_gone.store(true, Ordering::Release);
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
    }
}

/// A handle to the [`super::Channel`]'s to be able to transmit messages
/// to it and update it's `window_size`.
#[derive(Debug)]
pub struct ChannelRef {
    pub(super) sender: Sender<ChannelMsg>,
    pub(super) window_size: WindowSizeRef,
    pub(super) progress: Arc<ReadProgress>,
}

impl ChannelRef {
    pub fn new(sender: Sender<ChannelMsg>) -> Self {
        Self {
            sender,
            window_size: WindowSizeRef::new(0),
            progress: ReadProgress::new(None),
        }
    }

    pub(crate) fn window_size(&self) -> &WindowSizeRef {
        &self.window_size
    }

    /// See [`ReadProgress`].
    pub(crate) fn progress(&self) -> &ReadProgress {
        &self.progress
    }
}

impl std::ops::Deref for ChannelRef {
    type Target = Sender<ChannelMsg>;

    fn deref(&self) -> &Self::Target {
        &self.sender
    }
}
