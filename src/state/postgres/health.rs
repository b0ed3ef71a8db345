//! Whether the shared database answers, known without asking it on every request.
//!
//! A probe runs `SELECT 1` through the pool every [`PROBE_INTERVAL`] (and at once after any
//! store operation fails). While it fails, the database counts as unreachable: `/readyz`
//! says why, `ingest_bridge_state_up` is 0, and store operations fail at once instead of
//! each waiting for its own connection attempt (up to the pool's 10 s against a database
//! that does not answer). The first probe that succeeds makes it reachable again, so
//! service returns by itself when the database does.

use deadpool_postgres::{Pool, PoolError, TimeoutType, Timeouts, WeakPool};
use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often the probe asks the database while nothing fails.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one probe may take (connecting included) before the database counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Probes at most this often, however many operations fail.
const PROBE_SPACING: Duration = Duration::from_millis(100);

/// Reachability of one database, its failures and its pool, shared by its stores.
#[derive(Debug, Default)]
pub struct Health {
    /// Why the database is unreachable and since when; `None` while it answers.
    down: Mutex<Option<(String, Instant)>>,
    /// Whether a probe runs (only then may operations fail fast: it is what clears `down`).
    probing: AtomicBool,
    /// Asks the probe to run now.
    wake: Notify,
    /// The metrics, once registered.
    metrics: OnceLock<HealthMetrics>,
}

/// The `ingest_bridge_state_*` metrics.
#[derive(Debug)]
struct HealthMetrics {
    errors: IntCounterVec,
    up: IntGauge,
    in_use: IntGauge,
    max: IntGauge,
}

impl Health {
    /// `Err("state database unreachable: …")` while the probe fails (for `/readyz`).
    pub fn check(&self) -> Result<(), String> {
        match &*self.down.lock() {
            Some((why, since)) => Err(format!(
                "state database unreachable for {}s: {why}",
                since.elapsed().as_secs()
            )),
            None => Ok(()),
        }
    }

    /// Registers `ingest_bridge_state_errors_total{store}`, `ingest_bridge_state_up`,
    /// `ingest_bridge_state_connections_in_use` and `ingest_bridge_state_connections_max`
    /// in `registry` (only a bridge on PostgreSQL has them); the probe keeps the gauges.
    pub fn register(&self, registry: &Registry) {
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace("ingest_bridge");
        let Ok(metrics) = (|| -> prometheus::Result<HealthMetrics> {
            Ok(HealthMetrics {
                errors: IntCounterVec::new(
                    opts(
                        "state_errors_total",
                        "Failed operations of the shared state database, by store.",
                    ),
                    &["store"],
                )?,
                up: IntGauge::with_opts(opts(
                    "state_up",
                    "1 while the shared state database answers the probe, 0 while it does not.",
                ))?,
                in_use: IntGauge::with_opts(opts(
                    "state_connections_in_use",
                    "Connections to the state database in use by an operation.",
                ))?,
                max: IntGauge::with_opts(opts(
                    "state_connections_max",
                    "Connections to the state database this replica opens at most.",
                ))?,
            })
        })() else {
            return;
        };
        for c in [
            Box::new(metrics.errors.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.up.clone()),
            Box::new(metrics.in_use.clone()),
            Box::new(metrics.max.clone()),
        ] {
            // Registered once per bridge; a second registry entry would only be a duplicate.
            let _ = registry.register(c);
        }
        metrics.up.set(i64::from(self.down.lock().is_none()));
        let _ = self.metrics.set(metrics);
    }

    /// Why operations should fail at once, when the probe knows the database is down.
    pub(super) fn known_down(&self) -> Option<String> {
        if !self.probing.load(Ordering::Acquire) {
            return None;
        }
        self.down.lock().as_ref().map(|(why, _)| why.clone())
    }

    /// Counts a failed operation of `store`.
    pub(super) fn count(&self, store: &'static str) {
        if let Some(m) = self.metrics.get() {
            m.errors.with_label_values(&[store]).inc();
        }
    }

    /// Has the probe look at once (a failed operation may be the first sign of an outage);
    /// probes stay at least [`PROBE_SPACING`] apart however often this is called.
    pub(super) fn look_now(&self) {
        self.wake.notify_one();
    }

    /// Starts the probe of `pool`; it ends when the pool is dropped.
    pub(super) fn start_probe(self: &Arc<Self>, pool: &Pool) {
        self.probing.store(true, Ordering::Release);
        tokio::spawn(probe(self.clone(), pool.weak()));
    }

    fn set(&self, result: Result<(), String>, pool: &Pool) {
        let mut down = self.down.lock();
        match (result, down.as_ref()) {
            (Ok(()), Some((_, since))) => {
                tracing::info!(
                    after_ms = since.elapsed().as_millis() as u64,
                    "state database reachable again"
                );
                *down = None;
            }
            (Err(why), None) => {
                tracing::error!(error = %why, "state database unreachable: uploads fail until it answers again");
                *down = Some((why, Instant::now()));
            }
            (Err(why), Some((_, since))) => *down = Some((why, *since)),
            (Ok(()), None) => {}
        }
        if let Some(m) = self.metrics.get() {
            m.up.set(i64::from(down.is_none()));
            let status = pool.status();
            m.in_use
                .set(i64::try_from(status.size.saturating_sub(status.available)).unwrap_or(0));
            m.max.set(i64::try_from(status.max_size).unwrap_or(0));
        }
    }
}

/// Probes every [`PROBE_INTERVAL`], or sooner when woken, until the pool is gone.
async fn probe(health: Arc<Health>, pool: WeakPool) {
    loop {
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if let Some(result) = probe_once(&pool).await {
            health.set(result, &pool);
        }
        drop(pool);
        tokio::time::sleep(PROBE_SPACING).await;
        let _ = tokio::time::timeout(PROBE_INTERVAL, health.wake.notified()).await;
    }
}

/// One `SELECT 1`; `None` when it says nothing (every connection busy: the database
/// answers someone). A connection that broke while idle is replaced and tried again once,
/// so a database that came back is seen at the first probe.
async fn probe_once(pool: &Pool) -> Option<Result<(), String>> {
    for _ in 0..2 {
        let answer = tokio::time::timeout(PROBE_TIMEOUT * 2, select_one(pool)).await;
        match answer {
            Err(_) => return Some(Err(format!("no answer within {:?}", PROBE_TIMEOUT * 2))),
            Ok(Probe::Answered) => return Some(Ok(())),
            Ok(Probe::Busy) => return None,
            Ok(Probe::Closed) => continue,
            Ok(Probe::Failed(why)) => return Some(Err(why)),
        }
    }
    Some(Err("connections close as soon as they are made".into()))
}

/// What one `SELECT 1` found.
enum Probe {
    Answered,
    /// No connection free within the timeout: inconclusive.
    Busy,
    /// The pooled connection had broken (found only by using it).
    Closed,
    Failed(String),
}

async fn select_one(pool: &Pool) -> Probe {
    let timeouts = Timeouts {
        wait: Some(PROBE_TIMEOUT),
        create: Some(PROBE_TIMEOUT),
        recycle: Some(PROBE_TIMEOUT),
    };
    let client = match pool.timeout_get(&timeouts).await {
        Ok(client) => client,
        Err(PoolError::Timeout(TimeoutType::Wait)) => return Probe::Busy,
        Err(PoolError::Timeout(_)) => {
            return Probe::Failed(format!("no connection within {PROBE_TIMEOUT:?}"));
        }
        Err(PoolError::Backend(e)) => return Probe::Failed(chain(&e)),
        Err(e) => return Probe::Failed(chain(&e)),
    };
    match client.simple_query("SELECT 1").await {
        Ok(_) => Probe::Answered,
        Err(e) if e.is_closed() => Probe::Closed,
        Err(e) => Probe::Failed(chain(&e)),
    }
}

/// `e` and its causes, as tokio-postgres says only "error connecting to server" itself
/// (no password: neither the URL nor the password is in its errors).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}
