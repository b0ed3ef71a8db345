//! What a running upload shows the operator (`GET /api/v1/transfers`): who sends what from
//! where, the bytes so far and the rate now. The write path updates it with two relaxed
//! atomic stores per chunk; readers never block a writer.

use crate::metrics::Protocol;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How long a rate sample spans: the rate shown is over the last one to two of these.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Who sends what from where: what the admin API shows of a running upload besides its
/// figures.
#[derive(Debug, Clone, Serialize)]
pub struct TransferInfo {
    /// The completion id this upload will carry.
    pub id: String,
    /// The connection it runs on (`GET /api/v1/sessions`).
    pub session_id: String,
    /// Who uploads.
    pub username: String,
    /// ftp | ftps | sftp
    pub protocol: Protocol,
    /// The path as the client sees it.
    pub path: String,
    /// The object key.
    pub key: String,
    /// The client's address and port.
    pub remote_addr: SocketAddr,
}

/// One running upload's live figures.
#[derive(Debug)]
pub struct LiveTransfer {
    /// Who sends what from where.
    pub info: TransferInfo,
    /// When the upload began (the first attempt's start, for a resumed upload).
    pub started_at: SystemTime,
    /// This process's clock at registration: rates are measured on it.
    clock: Instant,
    bytes: AtomicU64,
    /// Milliseconds after `clock` at which the current rate window began.
    window_start_ms: AtomicU64,
    /// Bytes at the start of the current window.
    window_bytes: AtomicU64,
    /// Bytes per second over the last whole window (`f64` bits).
    rate_bits: AtomicU64,
    /// Set when the operator closed the upload's session: the upload ends saying so.
    closed: AtomicBool,
}

/// A running upload as the admin API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct TransferView {
    /// Who sends what from where.
    #[serde(flatten)]
    pub info: TransferInfo,
    /// Bytes received so far.
    pub bytes: u64,
    /// Bytes per second over the last second or two.
    pub rate_bytes_per_second: f64,
    /// When the upload began (RFC 3339).
    pub started_at: String,
    /// Seconds since then.
    pub elapsed_seconds: f64,
}

impl LiveTransfer {
    /// A transfer that began at `started_at`, registered now with `bytes` already held (a
    /// resume's offset).
    pub(super) fn new(info: TransferInfo, started_at: SystemTime, bytes: u64) -> LiveTransfer {
        LiveTransfer {
            info,
            started_at,
            clock: Instant::now(),
            bytes: AtomicU64::new(bytes),
            window_start_ms: AtomicU64::new(0),
            window_bytes: AtomicU64::new(bytes),
            rate_bits: AtomicU64::new(0f64.to_bits()),
            closed: AtomicBool::new(false),
        }
    }

    /// Records the bytes received so far (the upload's one writer calls this).
    pub(super) fn set_bytes(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
        let now_ms = self.elapsed_ms();
        let start_ms = self.window_start_ms.load(Ordering::Relaxed);
        let span_ms = now_ms.saturating_sub(start_ms);
        if span_ms >= RATE_WINDOW.as_millis() as u64 {
            let moved = bytes.saturating_sub(self.window_bytes.load(Ordering::Relaxed));
            let rate = moved as f64 * 1000.0 / span_ms as f64;
            self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
            self.window_bytes.store(bytes, Ordering::Relaxed);
            self.window_start_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Bytes per second lately: the last whole window's rate, or, once the current window
    /// has run past two spans with no word from the writer (a stalled client), what it got
    /// in that time.
    pub fn rate(&self) -> f64 {
        let span_ms = self
            .elapsed_ms()
            .saturating_sub(self.window_start_ms.load(Ordering::Relaxed));
        if span_ms >= 2 * RATE_WINDOW.as_millis() as u64 {
            let moved = self
                .bytes()
                .saturating_sub(self.window_bytes.load(Ordering::Relaxed));
            return moved as f64 * 1000.0 / span_ms as f64;
        }
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    /// Marks the upload as closed by the operator (see [`LiveTransfer::closed`]).
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Whether the operator closed the upload's session.
    pub(super) fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The upload as the admin API lists it.
    pub fn view(&self) -> TransferView {
        TransferView {
            info: self.info.clone(),
            bytes: self.bytes(),
            rate_bytes_per_second: self.rate(),
            started_at: humantime::format_rfc3339_millis(self.started_at).to_string(),
            elapsed_seconds: SystemTime::now()
                .duration_since(self.started_at)
                .unwrap_or_default()
                .as_secs_f64(),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A transfer of alice's `/a.bin` registered with `bytes` held.
    pub(in crate::upload) fn transfer(key: &str, bytes: u64) -> LiveTransfer {
        LiveTransfer::new(
            TransferInfo {
                id: format!("id-{key}"),
                session_id: "session".into(),
                username: "alice".into(),
                protocol: Protocol::Ftp,
                path: format!("/{key}"),
                key: key.to_string(),
                remote_addr: "127.0.0.1:5000".parse().expect("address"),
            },
            SystemTime::now(),
            bytes,
        )
    }

    #[test]
    fn a_resumed_upload_starts_at_its_offset_with_no_rate() {
        let live = transfer("a.bin", 1000);
        assert_eq!(live.bytes(), 1000);
        assert_eq!(live.rate(), 0.0);
        assert_eq!(live.view().bytes, 1000);
    }

    #[test]
    fn the_rate_is_measured_over_a_window() {
        let live = transfer("a.bin", 0);
        live.set_bytes(100);
        assert_eq!(live.rate(), 0.0, "no whole window yet");
        std::thread::sleep(Duration::from_millis(1100));
        live.set_bytes(1_100_000);
        let rate = live.rate();
        assert!(
            (800_000.0..=1_100_000.0).contains(&rate),
            "about 1.1 MB in 1.1 s: {rate}"
        );
    }

    #[test]
    fn a_stalled_upload_shows_its_rate_falling() {
        let live = transfer("a.bin", 0);
        std::thread::sleep(Duration::from_millis(1050));
        live.set_bytes(1_000_000);
        assert!(live.rate() > 500_000.0);
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(live.rate(), 0.0, "nothing came for two windows");
    }
}
