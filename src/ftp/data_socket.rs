//! Passive data listeners: a free port from `ftp.passive_ports`, with a kernel receive
//! buffer sized for the load (`ftp.data_receive_buffer`).
//!
//! Why the size matters: an upload that waits for the memory budget stops reading, and its
//! client keeps sending until the socket's receive buffer is full. Linux autotunes that buffer
//! up to `net.ipv4.tcp_rmem` (32 MiB on some distributions) for a connection that was read
//! fast, so a thousand waiting uploads can park gigabytes in the kernel, outside
//! `storage.memory_limit`. Under that TCP memory pressure the kernel drops segments, and
//! uploads stall until `ftp.data_timeout` cuts them.

use crate::config::ReceiveBuffer;
use crate::upload::{OpenSessions, session_share};
use async_trait::async_trait;
use libunftp::options::Binder;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use tokio::net::TcpSocket;

/// Below this the window would slow even a loopback client to a crawl.
const AUTO_FLOOR: u64 = 64 * 1024;
/// At or above this share the kernel's autotuning is left alone: it would not grow a
/// buffer much past this anyway (`net.core.rmem_max` is 4 MiB on common kernels).
const AUTO_CEILING: u64 = 4 * 1024 * 1024;

/// The `SO_RCVBUF` to ask for, or `None` for the kernel's autotuning.
///
/// `auto` gives each open session [`session_share`] (half an equal share of `memory_limit`);
/// the kernel doubles the value it is given, so the buffers of all data connections together
/// stay within about `memory_limit`, on top of the budget itself.
pub fn receive_buffer(policy: ReceiveBuffer, memory_limit: u64, sessions: usize) -> Option<u32> {
    match policy {
        ReceiveBuffer::Kernel => None,
        ReceiveBuffer::Fixed(bytes) => Some(bytes),
        ReceiveBuffer::Auto => {
            let share = session_share(memory_limit, sessions);
            (share < AUTO_CEILING).then(|| u32::try_from(share.max(AUTO_FLOOR)).unwrap_or(u32::MAX))
        }
    }
}

/// libunftp's hook for creating passive data listeners.
#[derive(Debug)]
pub struct DataSocketBinder {
    /// `ftp.data_receive_buffer`.
    pub policy: ReceiveBuffer,
    /// `storage.memory_limit`.
    pub memory_limit: u64,
    /// The sessions sharing it.
    pub sessions: OpenSessions,
}

#[async_trait]
impl Binder for DataSocketBinder {
    async fn bind(&mut self, ip: IpAddr, ports: RangeInclusive<u16>) -> io::Result<TcpSocket> {
        let buffer = receive_buffer(self.policy, self.memory_limit, self.sessions.get());
        bind_in_range(ip, ports, buffer)
    }
}

/// Binds a socket to a free port of `ports`, trying each once from a random start so that
/// concurrent sessions spread over the range and a nearly full range still finds its gap.
fn bind_in_range(
    ip: IpAddr,
    ports: RangeInclusive<u16>,
    receive_buffer: Option<u32>,
) -> io::Result<TcpSocket> {
    let (first, last) = (u32::from(*ports.start()), u32::from(*ports.end()));
    if first > last {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the passive port range is empty",
        ));
    }
    let count = last - first + 1;
    let start = rand::random::<u32>() % count;
    let mut last_error = None;
    for step in 0..count {
        let Ok(port) = u16::try_from(first + (start + step) % count) else {
            continue;
        };
        let socket = match ip {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        // Before listen(): accepted connections inherit it, and the window scale offered in
        // the handshake is chosen from it.
        if let Some(bytes) = receive_buffer {
            socket.set_recv_buffer_size(bytes)?;
        }
        match socket.bind(SocketAddr::new(ip, port)) {
            Ok(()) => return Ok(socket),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn auto_leaves_few_sessions_to_the_kernel_and_shares_the_limit_among_many() {
        let auto = |sessions| receive_buffer(ReceiveBuffer::Auto, 512 * MIB, sessions);
        assert_eq!(auto(0), None);
        assert_eq!(auto(1), None);
        assert_eq!(auto(64), None, "4 MiB each is what autotuning reaches");
        assert_eq!(auto(65), Some(4_129_776));
        assert_eq!(auto(1000), Some(268_435));
        assert_eq!(auto(100_000), Some(64 * 1024), "never below the floor");
    }

    #[test]
    fn fixed_and_kernel_ignore_the_load() {
        assert_eq!(
            receive_buffer(ReceiveBuffer::Fixed(262_144), 512 * MIB, 1),
            Some(262_144)
        );
        assert_eq!(
            receive_buffer(ReceiveBuffer::Kernel, 512 * MIB, 10_000),
            None
        );
    }

    #[tokio::test]
    async fn binds_within_the_range_with_the_buffer_asked_for() {
        let ip: IpAddr = [127, 0, 0, 1].into();
        let socket = bind_in_range(ip, 41_000..=41_999, Some(128 * 1024)).expect("bind");
        let port = socket.local_addr().expect("addr").port();
        assert!((41_000..=41_999).contains(&port), "{port}");
        // Linux reports twice the size asked for.
        assert!(socket.recv_buffer_size().expect("size") >= 128 * 1024);
        let _listener = socket.listen(8).expect("listen");
        // The one port of a single-port range is taken: a clear error, not a hang or panic.
        let busy = bind_in_range(ip, port..=port, None).and_then(|s| s.listen(8));
        assert!(busy.is_err());
    }
}
