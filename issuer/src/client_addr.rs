//! Who the client is, by address: the peer of the connection, unless that peer is a
//! configured trusted proxy (Envoy, a load balancer), in which case the address that proxy
//! appended to `x-forwarded-for` (counting `xff_num_trusted_hops` entries from the right, as
//! Envoy does). A client can write anything into `x-forwarded-for`; only what a trusted proxy
//! wrote is believed.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// How client addresses are found.
#[derive(Debug, Clone)]
pub struct ClientAddress {
    trusted: Vec<IpNet>,
    hops: usize,
}

impl ClientAddress {
    /// `trusted_proxies` are CIDRs (`10.0.0.0/8`, `::1/128`) or plain addresses.
    pub fn new(trusted_proxies: &[String], xff_num_trusted_hops: u32) -> Result<Self, String> {
        let trusted = trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{p}` is not an address or CIDR"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { trusted, hops: usize::try_from(xff_num_trusted_hops).unwrap_or(1).max(1) })
    }

    /// The client address of a request that arrived from `peer` with `headers`.
    pub fn of(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer_ip = peer.ip();
        if !self.trusted.iter().any(|net| net.contains(&peer_ip)) {
            return peer_ip;
        }
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        forwarded
            .len()
            .checked_sub(self.hops)
            .and_then(|i| forwarded.get(i))
            .and_then(|entry| entry.parse::<IpAddr>().ok())
            .unwrap_or(peer_ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn only_a_trusted_peer_is_believed() {
        let clients = ClientAddress::new(&["127.0.0.1/32".into(), "10.0.0.0/8".into()], 1).unwrap();
        let proxy: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        assert_eq!(clients.of(proxy, &headers("6.6.6.6, 203.0.113.7")), "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(clients.of(stranger, &headers("203.0.113.7")), stranger.ip(), "untrusted peer: XFF ignored");
        assert_eq!(clients.of(proxy, &HeaderMap::new()), proxy.ip(), "no XFF: the peer");
        assert_eq!(clients.of(proxy, &headers("garbage")), proxy.ip());
        let two = ClientAddress::new(&["10.0.0.0/8".into()], 2).unwrap();
        assert_eq!(two.of(proxy, &headers("198.51.100.1, 203.0.113.7")), "198.51.100.1".parse::<IpAddr>().unwrap());
        assert!(ClientAddress::new(&["nope".into()], 1).is_err());
        let none = ClientAddress::new(&[], 1).unwrap();
        assert_eq!(none.of(proxy, &headers("203.0.113.7")), proxy.ip(), "nothing trusted by default");
    }
}
