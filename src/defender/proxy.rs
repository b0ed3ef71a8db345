//! The PROXY protocol (v1 text, v2 binary) from load balancers in `server.trusted_proxies`
//! (HAProxy, AWS NLB, …): the header in front of the connection names the real client, so
//! allowlists, bans, logs and completions see it rather than the balancer.

use ipnet::IpNet;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a trusted proxy may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The v2 signature, the first 12 bytes of a binary header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// The longest v2 address block (addresses and TLVs) we read. The format allows 65535 bytes;
/// balancers send tens (AWS NLB's VPC endpoint id, Azure's link id, HAProxy's TLS details),
/// and nothing is buffered for a connection before it is admitted beyond this.
const V2_MAX_ADDRESS_BLOCK: usize = 4096;

/// Why a connection from a trusted proxy was dropped.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No complete header in time.
    #[error("no PROXY header within {HEADER_TIMEOUT:?}")]
    Timeout,
    /// The connection failed while reading it.
    #[error("reading the PROXY header failed: {0}")]
    Io(#[from] std::io::Error),
    /// Not a PROXY protocol header.
    #[error("not a PROXY protocol header: {0}")]
    Malformed(String),
    /// Longer than a header may be (v1: 107 bytes; v2: [`V2_MAX_ADDRESS_BLOCK`]); counted in
    /// `limits_exceeded_total{limit="proxy_header"}`.
    #[error("PROXY header too long: {0}")]
    TooLong(&'static str),
}

/// The client behind `peer`: read from the PROXY header when `peer` is a trusted proxy
/// (exactly the header's bytes are consumed, the protocol follows untouched), else `peer`.
/// A header with no address (a balancer's health check, v2 LOCAL) leaves `peer`.
pub async fn client_address(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted_proxies: &[IpNet],
) -> Result<SocketAddr, ProxyError> {
    let ip = peer.ip().to_canonical();
    if !trusted_proxies.iter().any(|n| n.contains(&ip)) {
        return Ok(peer);
    }
    let header = tokio::time::timeout(HEADER_TIMEOUT, read_header(stream))
        .await
        .map_err(|_| ProxyError::Timeout)??;
    source_of(&header).map(|source| source.unwrap_or(peer))
}

/// Reads exactly one v1 or v2 header.
async fn read_header(stream: &mut TcpStream) -> Result<Vec<u8>, ProxyError> {
    let mut header = vec![0u8; 8];
    stream.read_exact(&mut header).await?;
    if header.starts_with(b"PROXY ") {
        while !header.ends_with(b"\r\n") {
            if header.len() >= V1_MAX {
                return Err(ProxyError::TooLong("no CRLF within 107 bytes (v1)"));
            }
            header.push(stream.read_u8().await?);
        }
        Ok(header)
    } else if V2_SIGNATURE.starts_with(&header) {
        header.resize(16, 0);
        stream.read_exact(&mut header[8..]).await?;
        if !header.starts_with(V2_SIGNATURE) {
            return Err(ProxyError::Malformed("bad v2 signature".into()));
        }
        let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
        if len > V2_MAX_ADDRESS_BLOCK {
            return Err(ProxyError::TooLong("v2 address block over 4096 bytes"));
        }
        let start = header.len();
        header.resize(start + len, 0);
        stream.read_exact(&mut header[start..]).await?;
        Ok(header)
    } else {
        Err(ProxyError::Malformed(format!(
            "starts with {:?}",
            String::from_utf8_lossy(&header)
        )))
    }
}

/// The source address a header names, `None` for "unknown"/LOCAL.
fn source_of(header: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use proxy_protocol::{ProxyHeader, version1, version2};
    let mut buf = header;
    let parsed =
        proxy_protocol::parse(&mut buf).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    Ok(match parsed {
        ProxyHeader::Version1 { addresses } => match addresses {
            version1::ProxyAddresses::Ipv4 { source, .. } => Some(SocketAddr::V4(source)),
            version1::ProxyAddresses::Ipv6 { source, .. } => Some(SocketAddr::V6(source)),
            version1::ProxyAddresses::Unknown => None,
        },
        ProxyHeader::Version2 { addresses, .. } => match addresses {
            version2::ProxyAddresses::Ipv4 { source, .. } => Some(SocketAddr::V4(source)),
            version2::ProxyAddresses::Ipv6 { source, .. } => Some(SocketAddr::V6(source)),
            version2::ProxyAddresses::Unspec | version2::ProxyAddresses::Unix { .. } => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_headers_name_the_client() {
        assert_eq!(
            source_of(b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 2121\r\n").expect("v1"),
            Some("203.0.113.9:51000".parse().expect("addr"))
        );
        assert_eq!(source_of(b"PROXY UNKNOWN\r\n").expect("v1 unknown"), None);
        let v2 = proxy_protocol::encode(proxy_protocol::ProxyHeader::Version2 {
            command: proxy_protocol::version2::ProxyCommand::Proxy,
            transport_protocol: proxy_protocol::version2::ProxyTransportProtocol::Stream,
            addresses: proxy_protocol::version2::ProxyAddresses::Ipv6 {
                source: "[2001:db8::7]:40000".parse().expect("addr"),
                destination: "[2001:db8::1]:2222".parse().expect("addr"),
            },
        })
        .expect("encode");
        assert_eq!(
            source_of(&v2).expect("v2"),
            Some("[2001:db8::7]:40000".parse().expect("addr"))
        );
        assert!(source_of(b"GET / HTTP/1.1\r\n").is_err());
    }
}
