//! The client's address, for the per-client sign-up budgets, and the bucket it spends
//! ([`bucket`]: an IPv4 address, or an IPv6 /64).
//!
//! Without configuration it is the connection's peer. Behind a load balancer every peer is the
//! balancer, so one client could spend everyone's budget (and every client would share one):
//! `--trusted-proxy CIDR` names the proxies whose `X-Forwarded-For` is believed. The header
//! is read from the right, the way a proxy appends to it: while the address at hand is a
//! trusted proxy, the next one to the left is who spoke to it. The first address that is not
//! a trusted proxy is the client. Entries to the left of it were written by the client itself
//! and are never believed, so a client cannot pick its own bucket by sending the header.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::AppState;

/// An address block, `10.0.0.0/8`, `fd00::/8`, or one address (`192.0.2.7`, a /32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// A `--trusted-proxy` value that is not an address block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an address block (expected an address or ADDRESS/PREFIX, as 10.0.0.0/8): {0}")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError(s.to_owned());
        let (address, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let network: IpAddr = address.parse().map_err(|_| bad())?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => width,
        };
        if prefix > width {
            return Err(bad());
        }
        Ok(Self { network, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in the block. An IPv4 address seen as IPv4-mapped IPv6 (a dual-stack
    /// listener) counts as the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n).into(), 32, self.prefix)
                    == masked(u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), 128, self.prefix) == masked(u128::from(a), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `width`-bit address.
fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
    let host_bits = width - u32::from(prefix);
    if host_bits >= 128 {
        0
    } else {
        bits >> host_bits
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn new(blocks: Vec<Cidr>) -> Self {
        Self(blocks)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// Who the client is, given the connection's `peer` and the request's headers.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer;
        if !self.trusts(peer) {
            return client;
        }
        // every X-Forwarded-For line, in order, as one list; rightmost is the nearest hop
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for hop in hops.iter().rev() {
            // a hop that is not an address (a proxy's obfuscated name) ends what can be known:
            // the last trusted proxy is the client's closest known address
            let Ok(ip) = hop.parse::<IpAddr>() else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// The client's address: the connection's peer, or, from a trusted proxy, the address it
/// forwarded for (`None` when the service is driven without a socket, as in tests).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl ClientAddr {
    /// The client's budget key ([`bucket`]), `None` without an address.
    pub fn bucket(&self) -> Option<String> {
        self.0.map(bucket)
    }
}

/// Whose budget a client spends: an IPv4 address is one client (an IPv4-mapped IPv6 address
/// is its IPv4 address), an IPv6 address is its /64. A /64 is what one subscriber, or one
/// host, is given: inside it an address costs nothing, so per exact address an IPv6 client
/// would have as many budgets as it cares to use. `2001:db8:1:2::/64`, `192.0.2.7`.
pub fn bucket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(network))
            }
        },
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(Self(peer.map(|peer| {
            state.signups.trusted_proxies.client(peer, &parts.headers)
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(blocks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(blocks.iter().map(|b| b.parse().expect("a block")).collect())
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().expect("a header value"));
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn blocks_parse_and_contain() {
        let ten: Cidr = "10.0.0.0/8".parse().expect("a block");
        assert!(ten.contains(ip("10.200.3.4")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        let one: Cidr = "192.0.2.7".parse().expect("a block");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "fd00::/8".parse().expect("a block");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().expect("a block");
        assert!(all.contains(ip("203.0.113.9")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "proxy.internal",
            "::/129",
            "10.0.0.0/x",
            "",
        ] {
            let e = bad.parse::<Cidr>().expect_err("not a block");
            assert!(e.to_string().contains("not an address block"), "{bad}: {e}");
        }
    }

    #[test]
    fn ipv6_clients_are_bucketed_by_their_64_and_ipv4_by_address() {
        assert_eq!(bucket(ip("192.0.2.7")), "192.0.2.7");
        assert_eq!(bucket(ip("::ffff:192.0.2.7")), "192.0.2.7", "IPv4-mapped");
        assert_eq!(bucket(ip("2001:db8:1:2::1")), "2001:db8:1:2::/64");
        assert_eq!(
            bucket(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            "2001:db8:1:2::/64"
        );
        assert_eq!(bucket(ip("2001:db8:1:3::1")), "2001:db8:1:3::/64");
        assert_eq!(bucket(ip("::1")), "::/64");
        assert_eq!(ClientAddr(None).bucket(), None);
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let p = proxies(&["10.0.0.0/8"]);
        let h = forwarded(&["198.51.100.1"]);
        assert_eq!(p.client(ip("203.0.113.5"), &h), ip("203.0.113.5"));
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_header_is_read_from_the_right_up_to_the_first_untrusted_hop() {
        let p = proxies(&["10.0.0.0/8", "192.0.2.7"]);
        // client-sent junk, the client, then two trusted proxies appended their peers
        let h = forwarded(&["6.6.6.6, 203.0.113.5", "192.0.2.7"]);
        assert_eq!(p.client(ip("10.1.1.1"), &h), ip("203.0.113.5"));
        // a spoofed entry left of the real client is never believed
        let h = forwarded(&["1.2.3.4, 203.0.113.5"]);
        assert_eq!(p.client(ip("10.1.1.1"), &h), ip("203.0.113.5"));
        // a trusted peer without the header is the client (nothing better is known)
        assert_eq!(p.client(ip("10.1.1.1"), &HeaderMap::new()), ip("10.1.1.1"));
        // an unparsable hop stops the walk at the last address known
        let h = forwarded(&["203.0.113.5, unknown"]);
        assert_eq!(p.client(ip("10.1.1.1"), &h), ip("10.1.1.1"));
    }
}
