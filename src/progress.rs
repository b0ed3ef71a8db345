//! Work timed by its progress, not its duration. A connector's push of 50 GiB may take
//! hours, but one that has not had a byte accepted for `notify.progress_timeout` has
//! stalled; an SFTP connection whose sessions neither took a request's bytes nor wrote a
//! reply for `sftp.idle_timeout` is abandoned, whatever SSH keepalives it still sends.

use futures::{Stream, StreamExt};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// When some work last moved.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    /// Milliseconds after `start` of the last movement.
    last: AtomicU64,
}

impl Progress {
    /// Starts the clock now.
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress {
            start: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    /// Records a movement (a chunk handed to the connection, or one of the answer read).
    pub fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(now, Ordering::AcqRel);
    }

    /// How long since the last movement.
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Acquire));
        self.start.elapsed().saturating_sub(last)
    }

    /// Returns once `timeout` has passed without movement.
    pub async fn stalled(&self, timeout: Duration) {
        loop {
            let idle = self.idle();
            if idle >= timeout {
                return;
            }
            tokio::time::sleep(timeout - idle).await;
        }
    }
}

/// `stream` with every chunk it yields counted as progress: the HTTP client pulls the next
/// chunk only once the connection took the previous one.
pub fn counted<S: Stream>(stream: S, progress: Arc<Progress>) -> impl Stream<Item = S::Item> {
    stream.inspect(move |_| progress.touch())
}

/// Runs `work` to its end, or gives up once `progress` has been idle for `limit`; the error
/// is how long it was idle.
pub async fn watched<T>(
    work: impl Future<Output = T>,
    progress: &Progress,
    limit: Duration,
) -> Result<T, Duration> {
    tokio::select! {
        out = work => Ok(out),
        () = progress.stalled(limit) => Err(progress.idle()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_that_keeps_moving_is_not_cut() {
        let progress = Progress::new();
        let mover = progress.clone();
        let work = async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                mover.touch();
            }
            "done"
        };
        let out = watched(work, &progress, Duration::from_millis(400)).await;
        assert_eq!(out, Ok("done"), "1 s in all, never 400 ms without progress");
    }

    #[tokio::test]
    async fn work_that_stops_moving_is_cut() {
        let progress = Progress::new();
        let mover = progress.clone();
        let work = async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            mover.touch();
            std::future::pending::<()>().await;
        };
        let started = Instant::now();
        let out = watched(work, &progress, Duration::from_millis(300)).await;
        assert!(out.is_err());
        assert!(started.elapsed() >= Duration::from_millis(400));
    }
}
