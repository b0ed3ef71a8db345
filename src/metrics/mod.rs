//! One Prometheus registry with the contract's metrics (prefix `ingest_bridge_`), and the
//! HTTP endpoint that serves it.

mod endpoint;

pub use crate::protocol::Protocol;
pub use endpoint::{CheckResult, Readiness, serve as serve_endpoint};

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use std::time::Instant;

/// How an upload ended; the `outcome` label of `uploads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Whole in S3, completion queued.
    Completed,
    /// The client went away or the server stopped it.
    Aborted,
    /// S3 or the bridge failed.
    Failed,
    /// Refused before any byte was stored (permissions, names, size).
    Rejected,
}

impl UploadOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UploadOutcome::Completed => "completed",
            UploadOutcome::Aborted => "aborted",
            UploadOutcome::Failed => "failed",
            UploadOutcome::Rejected => "rejected",
        }
    }
}

/// Every metric the bridge exports, and the audit trail (the same places record both).
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Login and transfer records.
    pub audit: crate::audit::Audit,
    /// `sessions_active{protocol}`
    pub sessions_active: IntGaugeVec,
    /// `logins_total{protocol,result}`
    pub logins_total: IntCounterVec,
    /// `uploads_active{protocol}`
    pub uploads_active: IntGaugeVec,
    /// `uploads_total{protocol,outcome}`
    pub uploads_total: IntCounterVec,
    /// `upload_bytes_total{protocol}`
    pub upload_bytes_total: IntCounterVec,
    /// `upload_duration_seconds{protocol}`
    pub upload_duration_seconds: HistogramVec,
    /// `upload_size_bytes{protocol}`: sizes of completed uploads.
    pub upload_size_bytes: HistogramVec,
    /// `upload_bytes_in_flight{protocol}`: received from clients, not yet in S3.
    pub upload_bytes_in_flight: IntGaugeVec,
    /// `s3_requests_total{operation,result}`
    pub s3_requests_total: IntCounterVec,
    /// `s3_retries_total{operation}`: attempts after the first.
    pub s3_retries_total: IntCounterVec,
    /// `s3_request_duration_seconds{operation}`
    pub s3_request_duration_seconds: HistogramVec,
    /// `buffer_bytes_in_use`
    pub buffer_bytes_in_use: IntGauge,
    /// `buffer_bytes_limit`: `storage.memory_limit`.
    pub buffer_bytes_limit: IntGauge,
    /// `uploads_resumed_total{protocol}`: cut uploads continued by a client.
    pub uploads_resumed_total: IntCounterVec,
    /// `uploads_kept`: cut uploads waiting for a resume (updated by the sweeper).
    pub uploads_kept: IntGauge,
    /// `connections_refused_total{protocol,reason}`: closed at accept (`not_allowed`, `banned`).
    pub connections_refused_total: IntCounterVec,
    /// `limits_exceeded_total{limit}`: uploads or connections refused by a limit.
    pub limits_exceeded_total: IntCounterVec,
    /// `auth_http_requests_total{result}`: `[auth.http]` logins: allowed, refused, error, cached.
    pub auth_http_requests_total: IntCounterVec,
    /// `config_reloads_total{result}`: reloads (SIGHUP or the admin API), `ok` or `error`
    /// (old config kept).
    pub config_reloads_total: IntCounterVec,
    /// `admin_requests_total{action,result}`: admin API calls by route and outcome.
    pub admin_requests_total: IntCounterVec,
    /// `defender_bans_total`: addresses banned for failed logins.
    pub defender_bans_total: IntCounter,
    /// `defender_banned_addresses`: addresses banned right now.
    pub defender_banned_addresses: IntGauge,
    /// `ready{check}`: 1 when the readiness check passed at the last scrape.
    pub ready: IntGaugeVec,
    /// `notifications_total{outcome}`
    pub notifications_total: IntCounterVec,
    /// `notifications_pending`
    pub notifications_pending: IntGauge,
    /// `notification_duration_seconds`
    pub notification_duration_seconds: Histogram,
    /// `notification_oldest_pending_seconds`
    pub notification_oldest_pending_seconds: Gauge,
}

const PREFIX: &str = "ingest_bridge";

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(PREFIX)
}

impl Metrics {
    /// Creates and registers every metric, plus process metrics and build info.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            // Names are fixed and distinct, so registration cannot collide.
            let _ = registry.register(c);
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(opts(name, help), labels).expect("valid metric definition");
            reg(Box::new(g.clone()));
            g
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(opts(name, help)).expect("valid metric definition");
            reg(Box::new(g.clone()));
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(opts(name, help), labels).expect("valid metric definition");
            reg(Box::new(c.clone()));
            c
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(
                HistogramOpts::from(opts(name, help)).buckets(buckets),
                labels,
            )
            .expect("valid metric definition");
            reg(Box::new(h.clone()));
            h
        };
        let upload_buckets = vec![
            0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
            10800.0, 21600.0,
        ];
        let request_buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        ];
        let metrics = Metrics {
            audit: crate::audit::Audit::default(),
            sessions_active: gauge_vec(
                "sessions_active",
                "Connected client sessions.",
                &["protocol"],
            ),
            logins_total: counter_vec(
                "logins_total",
                "Login attempts by result.",
                &["protocol", "result"],
            ),
            uploads_active: gauge_vec("uploads_active", "Uploads in progress.", &["protocol"]),
            uploads_total: counter_vec(
                "uploads_total",
                "Finished uploads by outcome.",
                &["protocol", "outcome"],
            ),
            upload_bytes_total: counter_vec(
                "upload_bytes_total",
                "Bytes received from clients for uploads.",
                &["protocol"],
            ),
            upload_duration_seconds: histogram_vec(
                "upload_duration_seconds",
                "Time from the first byte of an upload to its completion.",
                &["protocol"],
                upload_buckets,
            ),
            upload_size_bytes: histogram_vec(
                "upload_size_bytes",
                "Sizes of completed uploads.",
                &["protocol"],
                // 1 KiB to 1 TiB, ×4 per bucket.
                (0..=15).map(|k| 1024.0 * 4f64.powi(k)).collect(),
            ),
            upload_bytes_in_flight: gauge_vec(
                "upload_bytes_in_flight",
                "Bytes received from clients and not yet acknowledged by S3.",
                &["protocol"],
            ),
            s3_requests_total: counter_vec(
                "s3_requests_total",
                "S3 requests by operation and result.",
                &["operation", "result"],
            ),
            s3_retries_total: counter_vec(
                "s3_retries_total",
                "S3 request attempts the SDK retried, by operation.",
                &["operation"],
            ),
            s3_request_duration_seconds: histogram_vec(
                "s3_request_duration_seconds",
                "S3 request latency, including the SDK's retries.",
                &["operation"],
                request_buckets.clone(),
            ),
            buffer_bytes_in_use: gauge(
                "buffer_bytes_in_use",
                "Bytes of the upload memory budget reserved by part buffers.",
            ),
            buffer_bytes_limit: gauge(
                "buffer_bytes_limit",
                "The memory budget for upload buffers (storage.memory_limit).",
            ),
            uploads_resumed_total: counter_vec(
                "uploads_resumed_total",
                "Cut uploads continued at their kept length (REST/APPE, SFTP writes).",
                &["protocol"],
            ),
            connections_refused_total: counter_vec(
                "connections_refused_total",
                "Connections closed at accept: address outside server.allowed_ips, banned, or over max_connections / max_connections_per_ip.",
                &["protocol", "reason"],
            ),
            limits_exceeded_total: counter_vec(
                "limits_exceeded_total",
                "Uploads or connections refused by a limit (max_file_size, allowed_extensions, max_connections, …).",
                &["limit"],
            ),
            auth_http_requests_total: counter_vec(
                "auth_http_requests_total",
                "Logins decided by auth.http: allowed, refused, error (login refused), cached.",
                &["result"],
            ),
            config_reloads_total: counter_vec(
                "config_reloads_total",
                "Configuration reloads (SIGHUP or POST /api/v1/reload): ok, or error (the running configuration stays).",
                &["result"],
            ),
            admin_requests_total: counter_vec(
                "admin_requests_total",
                "Admin API calls by action (route) and result: ok, unauthorized, refused, invalid, not_found, conflict, error.",
                &["action", "result"],
            ),
            defender_bans_total: {
                let c = IntCounter::with_opts(opts(
                    "defender_bans_total",
                    "Addresses banned for repeated failed logins.",
                ))
                .expect("valid metric definition");
                reg(Box::new(c.clone()));
                c
            },
            defender_banned_addresses: gauge(
                "defender_banned_addresses",
                "Addresses banned right now.",
            ),
            uploads_kept: gauge(
                "uploads_kept",
                "Cut uploads whose parts are kept in S3 for a resume.",
            ),
            ready: gauge_vec(
                "ready",
                "1 when the readiness check passed at the last scrape (listeners, s3, event_log, outbox).",
                &["check"],
            ),
            notifications_total: counter_vec(
                "notifications_total",
                "Completion call attempts by outcome.",
                &["outcome"],
            ),
            notifications_pending: gauge(
                "notifications_pending",
                "Completions queued and not yet delivered.",
            ),
            notification_oldest_pending_seconds: {
                let g = Gauge::with_opts(opts(
                    "notification_oldest_pending_seconds",
                    "Age of the oldest undelivered completion (0 when none is pending).",
                ))
                .expect("valid metric definition");
                reg(Box::new(g.clone()));
                g
            },
            notification_duration_seconds: {
                let h = Histogram::with_opts(
                    HistogramOpts::from(opts(
                        "notification_duration_seconds",
                        "Completion call latency per attempt.",
                    ))
                    .buckets(request_buckets),
                )
                .expect("valid metric definition");
                reg(Box::new(h.clone()));
                h
            },
            registry: registry.clone(),
        };
        let build_info = IntGaugeVec::new(opts("build_info", "Build information."), &["version"])
            .expect("valid metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        reg(Box::new(build_info));
        #[cfg(target_os = "linux")]
        reg(Box::new(
            prometheus::process_collector::ProcessCollector::new(std::process::id() as i32, PREFIX),
        ));
        metrics
    }

    /// Records one S3 request's result and latency.
    pub fn observe_s3(&self, operation: &str, ok: bool, started: Instant) {
        let result = if ok { "success" } else { "error" };
        self.s3_requests_total
            .with_label_values(&[operation, result])
            .inc();
        self.s3_request_duration_seconds
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts a login attempt.
    pub fn login(&self, protocol: Protocol, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.logins_total
            .with_label_values(&[protocol.as_str(), result])
            .inc();
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps a gauge raised while alive: sessions, uploads.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    /// Increments `gauge` until the guard is dropped.
    pub fn new(gauge: IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
