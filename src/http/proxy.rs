//! Who the client is: the socket's peer, or, behind proxies the operator
//! named (`TRUST_PROXY`), the address the nearest trusted proxy saw.
//!
//! `X-Forwarded-For` is written left to right: the client's own claim first,
//! then each proxy appends the address it received the request from. Only
//! the right end is trustworthy, so the client is the rightmost address that
//! is not itself a trusted proxy (walking left past a chain of them), and
//! only when the socket's peer is a trusted proxy; a client talking to the
//! gateway directly cannot choose its address by sending the header. This is
//! nginx's `real_ip_recursive on` and Express's `trust proxy` with a list.
//!
//! [`client_key`] is what per-client limits count by: an IPv4 address, or an
//! IPv6 client's /64 (one subscriber's usual allocation, so rotating through
//! its 2^64 addresses does not make a new client each time).

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// The networks whose connections may speak for a client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// `TRUST_PROXY`: `false` (or empty) for none, or a comma list of
    /// networks and addresses (`10.0.0.0/8, 127.0.0.1, fd00::/8`).
    ///
    /// # Errors
    /// What a valid value looks like, for the configuration error.
    pub fn parse(v: &str) -> Result<Self, String> {
        const EXPECTED: &str =
            "`false`, or the proxies' networks as a comma list such as 10.0.0.0/8,127.0.0.1";
        let v = v.trim();
        if v.is_empty() || v.eq_ignore_ascii_case("false") {
            return Ok(Self::default());
        }
        if v.eq_ignore_ascii_case("true") {
            return Err(format!(
                "{EXPECTED}; `true` is refused: trusting every peer lets any client choose its address"
            ));
        }
        let nets = v
            .split(',')
            .map(str::trim)
            .map(|part| {
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| EXPECTED.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { nets })
    }

    /// Whether any proxy is trusted.
    pub fn enabled(&self) -> bool {
        !self.nets.is_empty()
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client of a request from `peer` carrying `forwarded_for` (every
    /// `X-Forwarded-For` value, in order, comma-joined).
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let peer = canonical(peer);
        let Some(list) = forwarded_for.filter(|_| self.contains(peer)) else { return peer };
        let mut client = peer;
        for hop in list.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>().map(canonical) else {
                // Garbage where an address should be: stop at the last one
                // vouched for rather than guess further left.
                break;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack socket
/// reports) are the IPv4 client they map.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key per-client limits count by: the address, or an IPv6 /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_rightmost_address_no_trusted_proxy_owns() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1").unwrap();
        let from_proxy = ip("10.1.2.3");
        // The client wrote the first entry itself; the proxy appended the second.
        assert_eq!(proxies.client(from_proxy, Some("6.6.6.6, 203.0.113.7")), ip("203.0.113.7"));
        // A chain of trusted proxies is walked past.
        assert_eq!(proxies.client(from_proxy, Some("6.6.6.6, 203.0.113.7, 10.9.9.9")), ip("203.0.113.7"));
        // Only trusted proxies are there: the leftmost one they vouch for.
        assert_eq!(proxies.client(from_proxy, Some("10.5.5.5")), ip("10.5.5.5"));
        // Garbage stops the walk at the last good hop.
        assert_eq!(proxies.client(from_proxy, Some("1.1.1.1, junk, 10.9.9.9")), ip("10.9.9.9"));
        assert_eq!(proxies.client(from_proxy, None), from_proxy);
        // A direct client's header is ignored.
        assert_eq!(proxies.client(ip("198.51.100.1"), Some("10.0.0.1")), ip("198.51.100.1"));
        // Nothing trusted: the header never counts.
        let none = TrustedProxies::parse("false").unwrap();
        assert!(!none.enabled());
        assert_eq!(none.client(ip("127.0.0.1"), Some("203.0.113.7")), ip("127.0.0.1"));
    }

    #[test]
    fn mapped_ipv4_is_ipv4_and_ipv6_clients_are_keyed_by_their_64() {
        let proxies = TrustedProxies::parse("127.0.0.1").unwrap();
        assert!(proxies.contains(ip("::ffff:127.0.0.1")));
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("2001:db8:1:2::1")), client_key(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(client_key(ip("2001:db8:1:2::1")), client_key(ip("2001:db8:1:3::1")));
        assert_eq!(client_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn bad_values_and_true_are_refused() {
        for bad in ["true", "TRUE", "10.0.0.0/33", "example.com", "10.0.0.1,", "1.2.3.4/8/1"] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
        assert!(TrustedProxies::parse("true").unwrap_err().contains("any client choose its address"));
        let p = TrustedProxies::parse("fd00::/8,192.168.1.7").unwrap();
        assert!(p.contains(ip("fd12::1")) && p.contains(ip("192.168.1.7")) && !p.contains(ip("192.168.1.8")));
    }
}
