//! Who may connect at all: the global address allowlist (`server.allowed_ips`), bans of
//! addresses that keep failing to log in (`[defender]`) and the connection limits
//! (`server.max_connections`, `server.max_connections_per_ip`), checked when a connection
//! is accepted, before FTP says hello or SSH exchanges keys — on both protocols alike.

mod proxy;

pub use proxy::ProxyError;

/// Why [`Defender::admit_connection`] turned a connection away (already counted and logged).
#[derive(Debug)]
pub enum Refusal {
    /// A trusted balancer sent no valid PROXY header in time.
    ProxyHeader,
    /// The client may not connect now (allowlist, ban or connection limit).
    Refused(Admission),
}

use crate::config::DefenderConfig;
use crate::metrics::{Metrics, Protocol};
use crate::state::BanStore;
use arc_swap::ArcSwap;
use ipnet::IpNet;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Longest ban, however often an address comes back.
const MAX_BAN: Duration = Duration::from_secs(7 * 24 * 3600);

/// Whether an address is in `networks` (an empty list allows every address). IPv4 clients
/// reaching an IPv6 listener (`::ffff:a.b.c.d`) are matched as IPv4.
pub fn in_networks(networks: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    networks.is_empty() || networks.iter().any(|n| n.contains(&ip))
}

/// What to do with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Serve it.
    Allowed,
    /// The address is outside `server.allowed_ips`.
    NotAllowed,
    /// The address is banned for this much longer.
    Banned(Duration),
    /// `server.max_connections` connections are open.
    TooManyConnections,
    /// `server.max_connections_per_ip` connections from this address are open.
    TooManyFromAddress,
}

impl Admission {
    /// The `connections_refused_total` reason, for refusals.
    pub fn reason(&self) -> &'static str {
        match self {
            Admission::Allowed => "allowed",
            Admission::NotAllowed => "not_allowed",
            Admission::Banned(_) => "banned",
            Admission::TooManyConnections => "max_connections",
            Admission::TooManyFromAddress => "max_connections_per_ip",
        }
    }
}

/// The allowlist and the ban list; one per bridge, shared by both front-ends.
#[derive(Debug)]
pub struct Defender {
    cfg: DefenderConfig,
    allowed: ArcSwap<Vec<IpNet>>,
    trusted_proxies: ArcSwap<Vec<IpNet>>,
    /// Failed-login scores and bans; the policy applied to them is ours.
    bans: Arc<dyn BanStore>,
    limits: ConnectionLimits,
    open: Mutex<OpenConnections>,
    metrics: MetricsHandle,
}

/// `server.max_connections`, `server.max_connections_per_ip` and `server.login_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most, both protocols together.
    pub total: usize,
    /// Open connections from one address at most.
    pub per_ip: usize,
    /// A connection that has not logged in by then is closed.
    pub login_timeout: Duration,
}

/// A second handle on a new connection's socket, held until the client logs in: if it has
/// not by `server.login_timeout`, the socket is shut down under the protocol library, so a
/// client that connects and never authenticates cannot hold a place for long.
#[derive(Debug)]
pub struct LoginDeadline {
    socket: Mutex<Option<std::net::TcpStream>>,
}

impl LoginDeadline {
    /// The client logged in: the deadline no longer applies.
    pub fn logged_in(&self) {
        self.release();
    }

    /// The connection ended by itself.
    pub fn ended(&self) {
        self.release();
    }

    fn release(&self) {
        *self.socket.lock() = None;
    }

    /// Closes the connection if nobody released the deadline; says `farewell` first.
    fn expire(&self, farewell: &str, metrics: &Metrics) {
        use std::io::Write;
        let mut socket = self.socket.lock();
        if let Some(socket) = socket.take() {
            metrics
                .limits_exceeded_total
                .with_label_values(&["login_timeout"])
                .inc();
            // Best effort: the socket is non-blocking and the client may be gone.
            let _ = (&socket).write(farewell.as_bytes());
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// An admitted connection's place in the limits; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionSlot {
    defender: Arc<Defender>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.defender.open.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

/// `Metrics` without a Debug bound.
struct MetricsHandle(Metrics);

impl std::fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Defender {
    /// A defender admitting `allowed` networks (empty: all) and banning per `cfg`, keeping
    /// scores and bans in `bans`.
    pub fn new(
        allowed: Vec<IpNet>,
        cfg: DefenderConfig,
        limits: ConnectionLimits,
        bans: Arc<dyn BanStore>,
        metrics: Metrics,
    ) -> Defender {
        Defender {
            cfg,
            allowed: ArcSwap::from_pointee(allowed),
            trusted_proxies: ArcSwap::from_pointee(Vec::new()),
            bans,
            limits,
            open: Mutex::default(),
            metrics: MetricsHandle(metrics),
        }
    }

    /// Admits `allowed` networks (empty: all) from the next connection on (SIGHUP).
    pub fn set_allowed(&self, allowed: Vec<IpNet>) {
        self.allowed.store(Arc::new(allowed));
    }

    /// Reads PROXY headers from these load balancers from the next connection on.
    pub fn set_trusted_proxies(&self, proxies: Vec<IpNet>) {
        self.trusted_proxies.store(Arc::new(proxies));
    }

    /// Admits a new `protocol` connection from `peer`: finds its real client (`peer`, or
    /// the address the PROXY header of a `server.trusted_proxies` balancer names; the header
    /// is consumed), then applies [`connect`](Self::connect). Every refusal is counted in
    /// `connections_refused_total{protocol,reason}` and logged.
    pub async fn admit_connection(
        self: &Arc<Self>,
        stream: &mut tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        protocol: Protocol,
    ) -> Result<(std::net::SocketAddr, ConnectionSlot), Refusal> {
        let refused = |reason: &str| {
            self.metrics
                .0
                .connections_refused_total
                .with_label_values(&[protocol.as_str(), reason])
                .inc();
        };
        let proxies = self.trusted_proxies.load_full();
        let client = match proxy::client_address(stream, peer, &proxies).await {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(protocol = protocol.as_str(), proxy = %peer, error = %e,
                    "connection from a trusted proxy dropped");
                if matches!(e, ProxyError::TooLong(_)) {
                    self.limit_exceeded("proxy_header");
                }
                refused("proxy_header");
                return Err(Refusal::ProxyHeader);
            }
        };
        match self.connect(client.ip()) {
            Ok(slot) => Ok((client, slot)),
            Err(admission) => {
                refused(admission.reason());
                tracing::debug!(protocol = protocol.as_str(), remote = %client,
                    reason = admission.reason(), "connection refused");
                Err(Refusal::Refused(admission))
            }
        }
    }

    /// Counts a connection closed because it sent more than a limit allows
    /// (`limits_exceeded_total{limit}`).
    pub fn limit_exceeded(&self, limit: &str) {
        self.metrics
            .0
            .limits_exceeded_total
            .with_label_values(&[limit])
            .inc();
    }

    /// Decides on a new connection from `ip`.
    pub fn admit(&self, ip: IpAddr) -> Admission {
        let ip = ip.to_canonical();
        if !in_networks(&self.allowed.load(), ip) {
            return Admission::NotAllowed;
        }
        let now = SystemTime::now();
        match self.bans.banned_until(ip, now) {
            Some(until) => Admission::Banned(until.duration_since(now).unwrap_or_default()),
            None => Admission::Allowed,
        }
    }

    /// Admits a new connection from `ip` ([`admit`](Self::admit)) and takes its place in the
    /// connection limits until the slot is dropped. Refusals are counted in
    /// `limits_exceeded_total` when a limit caused them.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Admission> {
        match self.admit(ip) {
            Admission::Allowed => {}
            refused => return Err(refused),
        }
        let ip = ip.to_canonical();
        let mut open = self.open.lock();
        let refused = if open.total >= self.limits.total {
            Some(Admission::TooManyConnections)
        } else if open.by_ip.get(&ip).copied().unwrap_or(0) >= self.limits.per_ip {
            Some(Admission::TooManyFromAddress)
        } else {
            None
        };
        if let Some(refused) = refused {
            self.metrics
                .0
                .limits_exceeded_total
                .with_label_values(&[refused.reason()])
                .inc();
            return Err(refused);
        }
        open.total += 1;
        *open.by_ip.entry(ip).or_default() += 1;
        Ok(ConnectionSlot {
            defender: self.clone(),
            ip,
        })
    }

    /// Starts `server.login_timeout` for a new connection; `farewell` is written to the
    /// client when it expires (FTP's `421`; empty for SSH, which has no way to say it).
    pub fn login_deadline(
        &self,
        stream: &tokio::net::TcpStream,
        farewell: &'static str,
    ) -> Arc<LoginDeadline> {
        let deadline = Arc::new(LoginDeadline {
            socket: Mutex::new(second_handle(stream)),
        });
        let watched = deadline.clone();
        let timeout = self.limits.login_timeout;
        let metrics = self.metrics.0.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            watched.expire(farewell, &metrics);
        });
        deadline
    }

    /// Counts a failed login from `ip`; bans it once `max_failures` fall within `window`.
    pub fn login_failed(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if !self.cfg.enabled || in_networks_nonempty(&self.cfg.safelist, ip) {
            return;
        }
        let now = SystemTime::now();
        let Some(score) = self.bans.add_failure(ip, now, self.cfg.window) else {
            return;
        };
        if score.failures >= self.cfg.max_failures as usize {
            let factor = 1u32 << score.bans.min(20);
            let ban = self.cfg.ban_time.saturating_mul(factor).min(MAX_BAN);
            // None: a concurrent failure of the same address banned it first.
            if let Some(bans) = self.bans.ban(ip, now, now + ban) {
                self.metrics.0.defender_bans_total.inc();
                tracing::warn!(remote = %ip, ban_secs = ban.as_secs(), bans,
                    "too many failed logins; address banned");
            }
        }
        let banned = self.bans.banned_count(now);
        self.metrics
            .0
            .defender_banned_addresses
            .set(i64::try_from(banned).unwrap_or(i64::MAX));
    }

    /// Addresses banned right now (for the gauge at scrape time).
    pub fn banned_now(&self) -> usize {
        self.bans.banned_count(SystemTime::now())
    }

    /// The bans in force now, by address.
    pub fn bans(&self) -> Vec<crate::state::BanEntry> {
        let mut bans = self.bans.list(SystemTime::now());
        bans.retain(|e| e.banned_until.is_some());
        bans
    }

    /// Lifts `ip`'s ban through [`BanStore::unban`], the one place a ban ends early (with a
    /// shared store, every replica admits the address within its ban refresh). Returns the
    /// end the ban had; `None` when `ip` is not banned.
    pub fn lift(&self, ip: IpAddr) -> Option<SystemTime> {
        let ip = ip.to_canonical();
        let until = self.bans.banned_until(ip, SystemTime::now())?;
        self.bans.unban(ip);
        self.metrics
            .0
            .defender_banned_addresses
            .set(i64::try_from(self.banned_now()).unwrap_or(i64::MAX));
        tracing::info!(address = %ip, "ban lifted by the operator");
        Some(until)
    }
}

/// The `limits_exceeded_total` label for an SSH connection that russh ended because its
/// client passed a limit, `None` for every other end. Before a login the bridge reads at
/// most a 255-byte identification line and packets of 35000 bytes (our russh patch); both
/// limits close the connection, as SSH has no way to say why before its handshake.
pub fn ssh_limit(error: &russh::Error) -> Option<&'static str> {
    match error {
        russh::Error::IdentificationTooLong => Some("line_length"),
        // A size error names the length the client declared: above the 35000 bytes RFC 4253
        // makes every implementation accept it met a limit; tiny ones are malformed packets.
        russh::Error::PacketSize(declared) if *declared > 35_000 => Some("packet_size"),
        russh::Error::InactivityTimeout => Some("idle_timeout"),
        _ => None,
    }
}

/// Another handle on `stream`'s socket (same connection), for watching or closing it from
/// outside the protocol library that owns the stream.
pub fn second_handle(stream: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    use std::os::fd::AsFd;
    stream
        .as_fd()
        .try_clone_to_owned()
        .map(std::net::TcpStream::from)
        .ok()
}

fn in_networks_nonempty(networks: &[IpNet], ip: IpAddr) -> bool {
    !networks.is_empty() && in_networks(networks, ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::memory::MemoryBans;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        total: 3,
        per_ip: 2,
        login_timeout: Duration::from_secs(60),
    };

    #[test]
    fn connection_limits_hold_places_until_dropped() {
        let d = Arc::new(Defender::new(
            Vec::new(),
            cfg(3, 40),
            LIMITS,
            Arc::new(MemoryBans::new()),
            Metrics::new(),
        ));
        let a: IpAddr = "198.51.100.1".parse().expect("ip");
        let b: IpAddr = "198.51.100.2".parse().expect("ip");
        let a1 = d.connect(a).expect("first");
        let a2 = d.connect(a).expect("second");
        assert_eq!(d.connect(a).err(), Some(Admission::TooManyFromAddress));
        let b1 = d.connect(b).expect("other address");
        assert_eq!(d.connect(b).err(), Some(Admission::TooManyConnections));
        drop(a1);
        let _b2 = d.connect(b).expect("a place was freed");
        drop((a2, b1));
        assert!(d.connect(a).is_ok());
    }

    fn cfg(max: u32, ban_ms: u64) -> DefenderConfig {
        DefenderConfig {
            enabled: true,
            max_failures: max,
            window: Duration::from_secs(60),
            ban_time: Duration::from_millis(ban_ms),
            safelist: vec!["192.0.2.0/24".parse().expect("net")],
        }
    }

    #[test]
    fn networks_match_v4_v6_and_mapped_addresses() {
        let nets: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().expect("net"),
            "2001:db8::/32".parse().expect("net"),
        ];
        assert!(in_networks(&nets, "10.1.2.3".parse().expect("ip")));
        assert!(in_networks(&nets, "::ffff:10.1.2.3".parse().expect("ip")));
        assert!(in_networks(&nets, "2001:db8::7".parse().expect("ip")));
        assert!(!in_networks(&nets, "11.0.0.1".parse().expect("ip")));
        assert!(in_networks(&[], "11.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn bans_after_max_failures_and_doubles_on_repeat_but_never_the_safelist() {
        let d = Defender::new(
            Vec::new(),
            cfg(3, 40),
            LIMITS,
            Arc::new(MemoryBans::new()),
            Metrics::new(),
        );
        let ip: IpAddr = "198.51.100.9".parse().expect("ip");
        d.login_failed(ip);
        d.login_failed(ip);
        assert_eq!(d.admit(ip), Admission::Allowed);
        d.login_failed(ip);
        assert!(matches!(d.admit(ip), Admission::Banned(t) if t <= Duration::from_millis(40)));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(d.admit(ip), Admission::Allowed);
        for _ in 0..3 {
            d.login_failed(ip);
        }
        assert!(matches!(d.admit(ip), Admission::Banned(t) if t > Duration::from_millis(40)));
        let safe: IpAddr = "192.0.2.5".parse().expect("ip");
        for _ in 0..10 {
            d.login_failed(safe);
        }
        assert_eq!(d.admit(safe), Admission::Allowed);
        assert_eq!(d.banned_now(), 1);
    }

    #[test]
    fn the_allowlist_refuses_other_addresses() {
        let d = Defender::new(
            vec!["127.0.0.0/8".parse().expect("net")],
            cfg(3, 40),
            LIMITS,
            Arc::new(MemoryBans::new()),
            Metrics::new(),
        );
        assert_eq!(
            d.admit("127.0.0.1".parse().expect("ip")),
            Admission::Allowed
        );
        assert_eq!(
            d.admit("203.0.113.1".parse().expect("ip")),
            Admission::NotAllowed
        );
    }
}
