//! `[metrics]`: where `/metrics`, `/healthz` and `/readyz` are served.

use super::{Text, Validator};
use serde::Deserialize;
use std::net::SocketAddr;

/// `metrics.listen` when unset.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9100";

/// `[metrics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawMetrics {
    listen: Option<Text>,
}

/// `[metrics]`
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
}

impl Validator<'_> {
    /// `[metrics]`.
    pub(super) fn metrics(&mut self, raw: RawMetrics) -> MetricsConfig {
        MetricsConfig {
            listen: self.socket("metrics.listen", raw.listen, DEFAULT_LISTEN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::*;

    #[test]
    fn listen_defaults_and_is_checked() {
        let c = parse("").expect("valid");
        assert_eq!(c.metrics.listen.to_string(), DEFAULT_LISTEN);
        let err = parse("[metrics]\nlisten = \":9100\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics.listen (line 2)"), "{err}");
    }
}
