//! `[ftp]` and `[ftp.tls]`: the FTP/FTPS listener.

use super::{Text, Validator, parse_size};
use serde::Deserialize;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

/// `ftp.enabled` when unset.
pub const DEFAULT_ENABLED: bool = true;
/// `ftp.listen` when unset.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2121";
/// `ftp.passive_ports` when unset.
pub const DEFAULT_PASSIVE_PORTS: RangeInclusive<u16> = 50000..=50100;
/// `ftp.passive_host` when unset.
pub const DEFAULT_PASSIVE_HOST: &str = "127.0.0.1";
/// `ftp.idle_timeout` when unset.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// `ftp.data_timeout` when unset.
pub const DEFAULT_DATA_TIMEOUT: Duration = Duration::from_secs(60);
/// `ftp.data_receive_buffer` when unset.
pub const DEFAULT_DATA_RECEIVE_BUFFER: ReceiveBuffer = ReceiveBuffer::Auto;
/// `ftp.tls.required` when unset.
pub const DEFAULT_TLS_REQUIRED: bool = false;

/// Fixed receive buffers a config may set: below a page is useless, above 1 GiB absurd.
const RECEIVE_BUFFER_RANGE: RangeInclusive<u64> = 4096..=1 << 30;

/// `[ftp]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawFtp {
    enabled: Option<bool>,
    listen: Option<Text>,
    passive_ports: Option<Text>,
    passive_host: Option<Text>,
    idle_timeout: Option<Text>,
    data_timeout: Option<Text>,
    data_receive_buffer: Option<Text>,
    tls: Option<RawFtpTls>,
}

/// `[ftp.tls]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawFtpTls {
    cert: Option<Text>,
    key: Option<Text>,
    required: Option<bool>,
}

/// `[ftp]`: the FTP/FTPS listener.
#[derive(Debug, Clone)]
pub struct FtpConfig {
    /// Whether the FTP server starts.
    pub enabled: bool,
    /// Control connection address.
    pub listen: SocketAddr,
    /// Ports offered for passive data connections.
    pub passive_ports: RangeInclusive<u16>,
    /// Address (IP or DNS name) advertised in PASV replies.
    pub passive_host: String,
    /// A control connection idle this long is closed.
    pub idle_timeout: Duration,
    /// A data connection that delivers no byte for this long fails the transfer.
    pub data_timeout: Duration,
    /// The kernel receive buffer of passive data connections.
    pub data_receive_buffer: ReceiveBuffer,
    /// Explicit FTPS, when configured.
    pub tls: Option<FtpTlsConfig>,
}

/// `ftp.data_receive_buffer`: how large a kernel receive buffer each passive data
/// connection gets. Data a client sends while its upload waits for the memory budget sits in
/// this buffer, outside `storage.memory_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveBuffer {
    /// The kernel's autotuning while few FTP sessions are open; a share of
    /// `storage.memory_limit` per session when many are.
    Auto,
    /// Always the kernel's autotuning.
    Kernel,
    /// This many bytes (`SO_RCVBUF`; the kernel doubles it for bookkeeping and caps it at
    /// `net.core.rmem_max`).
    Fixed(u32),
}

/// `[ftp.tls]`: explicit FTPS.
#[derive(Debug, Clone)]
pub struct FtpTlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Refuse logins and transfers that are not encrypted.
    pub required: bool,
}

impl Validator<'_> {
    /// `[ftp]` and `[ftp.tls]`.
    pub(super) fn ftp(&mut self, raw: RawFtp) -> FtpConfig {
        let passive_ports = match raw.passive_ports {
            None => DEFAULT_PASSIVE_PORTS,
            Some(t) => match parse_port_range(t.get_ref()) {
                Ok(r) => r,
                Err(e) => {
                    self.problem("ftp.passive_ports", Some(&t), e);
                    DEFAULT_PASSIVE_PORTS
                }
            },
        };
        let (passive_host, host_at) = Self::text(raw.passive_host, DEFAULT_PASSIVE_HOST);
        if passive_host.trim().is_empty() || passive_host.contains(char::is_whitespace) {
            self.problem(
                "ftp.passive_host",
                host_at.as_ref(),
                "write the IP address or DNS name clients reach this server at, e.g. \"203.0.113.7\"",
            );
        }
        let tls = raw.tls.and_then(|t| self.ftp_tls(t));
        FtpConfig {
            enabled: raw.enabled.unwrap_or(DEFAULT_ENABLED),
            listen: self.socket("ftp.listen", raw.listen, DEFAULT_LISTEN),
            passive_ports,
            passive_host,
            idle_timeout: self.duration("ftp.idle_timeout", raw.idle_timeout, DEFAULT_IDLE_TIMEOUT),
            data_timeout: self.duration("ftp.data_timeout", raw.data_timeout, DEFAULT_DATA_TIMEOUT),
            data_receive_buffer: self.receive_buffer(raw.data_receive_buffer),
            tls,
        }
    }

    /// `[ftp.tls]`: both files or none.
    fn ftp_tls(&mut self, raw: RawFtpTls) -> Option<FtpTlsConfig> {
        let cert = raw.cert.map(|c| PathBuf::from(c.into_inner()));
        let key = raw.key.map(|k| PathBuf::from(k.into_inner()));
        match (cert, key) {
            (Some(cert), Some(key)) => Some(FtpTlsConfig {
                cert,
                key,
                required: raw.required.unwrap_or(DEFAULT_TLS_REQUIRED),
            }),
            _ => {
                self.problem(
                    "ftp.tls",
                    None,
                    "explicit FTPS needs both cert and key (PEM files); remove [ftp.tls] to serve plain FTP",
                );
                None
            }
        }
    }

    /// `ftp.data_receive_buffer`: `"auto"`, `"kernel"` or a size.
    fn receive_buffer(&mut self, value: Option<Text>) -> ReceiveBuffer {
        let Some(t) = value else {
            return DEFAULT_DATA_RECEIVE_BUFFER;
        };
        match t.get_ref().trim() {
            "auto" => ReceiveBuffer::Auto,
            "kernel" => ReceiveBuffer::Kernel,
            text => match parse_size(text) {
                Ok(n) if RECEIVE_BUFFER_RANGE.contains(&n) => {
                    ReceiveBuffer::Fixed(u32::try_from(n).unwrap_or(u32::MAX))
                }
                _ => {
                    self.problem(
                        "ftp.data_receive_buffer",
                        Some(&t),
                        "write \"auto\" (the default), \"kernel\" (always the kernel's autotuning) or a size from 4KiB to 1GiB, e.g. \"256KiB\"",
                    );
                    DEFAULT_DATA_RECEIVE_BUFFER
                }
            },
        }
    }
}

/// "50000-50100" → 50000..=50100.
fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let err = || format!("{s:?} is not a port range; write FIRST-LAST, e.g. \"50000-50100\"");
    let (a, b) = s.split_once('-').ok_or_else(err)?;
    let a: u16 = a.trim().parse().map_err(|_| err())?;
    let b: u16 = b.trim().parse().map_err(|_| err())?;
    if a == 0 || a > b {
        return Err(err());
    }
    Ok(a..=b)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;
    use super::*;

    #[test]
    fn defaults_are_the_named_constants() {
        let c = parse("").expect("valid").ftp;
        assert_eq!(c.enabled, DEFAULT_ENABLED);
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.passive_ports, DEFAULT_PASSIVE_PORTS);
        assert_eq!(c.passive_host, DEFAULT_PASSIVE_HOST);
        assert_eq!(c.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(c.data_timeout, DEFAULT_DATA_TIMEOUT);
        assert!(c.tls.is_none());
    }

    #[test]
    fn port_ranges_are_first_dash_last() {
        assert_eq!(parse_port_range("1000 - 1010"), Ok(1000..=1010));
        for bad in ["0-10", "10-9", "10", "a-b"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
        let err = parse("[ftp]\nlisten = \"0.0.0.0:50050\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the range includes ftp.listen's port"),
            "{err}"
        );
    }

    #[test]
    fn tls_needs_cert_and_key() {
        let c = parse("[ftp.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n").expect("valid");
        let tls = c.ftp.tls.expect("tls configured");
        assert_eq!(tls.required, DEFAULT_TLS_REQUIRED);
        let err = parse("[ftp.tls]\ncert = \"c.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ftp.tls: explicit FTPS needs both"), "{err}");
    }

    #[test]
    fn the_data_receive_buffer_is_auto_kernel_or_a_size() {
        let buffer = |value: &str| {
            parse(&format!("[ftp]\ndata_receive_buffer = \"{value}\"\n"))
                .map(|c| c.ftp.data_receive_buffer)
        };
        assert_eq!(
            parse("").expect("valid").ftp.data_receive_buffer,
            ReceiveBuffer::Auto
        );
        assert_eq!(buffer("auto").expect("valid"), ReceiveBuffer::Auto);
        assert_eq!(buffer("kernel").expect("valid"), ReceiveBuffer::Kernel);
        assert_eq!(
            buffer("256KiB").expect("valid"),
            ReceiveBuffer::Fixed(256 * 1024)
        );
        for bad in ["1KiB", "2GiB", "large"] {
            let err = buffer(bad).expect_err(bad).to_string();
            assert!(err.contains("ftp.data_receive_buffer"), "{err}");
            assert!(err.contains("\"kernel\""), "says what to write: {err}");
        }
    }
}
