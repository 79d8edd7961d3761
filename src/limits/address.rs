//! The client's address: the peer's, or — for a peer in
//! `server.trusted_proxies` — the last `X-Forwarded-For` entry (else
//! `X-Real-IP`). A client that is not behind a trusted proxy cannot
//! choose the address the limits count.

use std::net::IpAddr;

/// An address block: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an address or CIDR block (e.g. 10.0.0.0/8, fd00::/8, 127.0.0.1)");
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(bad());
        }
        Ok(Cidr { net, bits })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                prefix_eq(u32::from(n).into(), u32::from(a).into(), self.bits, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(u128::from(n), u128::from(a), self.bits, 128),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, width: u8) -> bool {
    if bits == 0 {
        return true;
    }
    let shift = width - bits;
    (a >> shift) == (b >> shift)
}

/// IPv4-mapped IPv6 addresses as IPv4, so one client is one address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client of a request from `peer` with these header values.
pub fn client_address(
    peer: IpAddr,
    forwarded_for: Option<&str>,
    real_ip: Option<&str>,
    trusted: &[Cidr],
) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let last_forwarded = forwarded_for.and_then(|v| v.rsplit(',').next()).map(str::trim);
    last_forwarded
        .and_then(parse_entry)
        .or_else(|| real_ip.map(str::trim).and_then(parse_entry))
        .map_or(peer, canonical)
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_entry(s: &str) -> Option<IpAddr> {
    s.parse()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| s.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.200.1.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped counts as IPv4");
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "x", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<Cidr>().unwrap_err().contains("not an address or CIDR"), "{bad}");
        }
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let proxy = ip("10.0.0.5");
        let stranger = ip("203.0.113.9");
        assert_eq!(client_address(proxy, Some("1.1.1.1, 2.2.2.2"), None, &trusted), ip("2.2.2.2"));
        assert_eq!(client_address(proxy, None, Some("3.3.3.3"), &trusted), ip("3.3.3.3"));
        assert_eq!(client_address(proxy, Some("junk"), Some("3.3.3.3"), &trusted), ip("3.3.3.3"));
        assert_eq!(client_address(proxy, Some("[2001:db8::1]:443"), None, &trusted), ip("2001:db8::1"));
        assert_eq!(client_address(proxy, None, None, &trusted), proxy);
        assert_eq!(client_address(stranger, Some("1.1.1.1"), Some("3.3.3.3"), &trusted), stranger);
        assert_eq!(client_address(stranger, Some("1.1.1.1"), None, &[]), stranger);
    }
}
