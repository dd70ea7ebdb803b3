//! Which peers are trusted proxies (`trustedProxies`: addresses and CIDR ranges), and the client
//! address a chain of them reports in `X-Forwarded-For`.
//!
//! Invariants: only the entries trusted proxies appended are believed. The reported client is
//! found from the right (nginx's `real_ip_recursive`): the last entry was appended by the peer,
//! a trusted proxy; each entry that is itself a trusted proxy's address was appended by the hop
//! before it, and is skipped; the first entry that is not is the client, and nothing to its left
//! (what the client sent) is read. An entry that is not an address ends the walk at the nearest
//! trusted hop. A peer on a dual-stack socket (`::ffff:a.b.c.d`) is the IPv4 address it maps,
//! and an IPv6 range holds IPv4 addresses only inside the mapped range `::ffff:0:0/96`. A range
//! that would trust every address (`/0`, or `::ffff:0:0/96`: every IPv4 address) or has bits set
//! past its prefix is refused; a range of more than 256 addresses is warned about at start
//! (every address in it can name any client).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName};

/// `X-Forwarded-For` as a typed name (a `&str` name is parsed again at every use).
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// One `trustedProxies` entry: an address (`10.0.0.5`) or a CIDR range (`10.0.0.0/8`,
/// `fd00::/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

/// Why a `trustedProxies` entry was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    /// Neither an address nor `address/prefix`.
    #[error("{0:?} is not an IP address or a CIDR range (10.0.0.0/8, fd00::/8)")]
    Syntax(String),
    /// A prefix longer than the address.
    #[error("{0:?}: the prefix length is at most {1}")]
    PrefixTooLong(String, u8),
    /// `/0` would believe any client's `X-Forwarded-For`.
    #[error("{0:?} trusts every address: any client could name its own address")]
    Everyone(String),
    /// Bits set past the prefix: a typo for an address or for the range.
    #[error("{0:?} has bits set past its prefix (the range is {1})")]
    HostBits(String, Net),
}

impl Net {
    /// Whether `ip` is in this range (an IPv4-mapped IPv6 address as the IPv4 address it maps;
    /// an IPv6 range holds IPv4 addresses only inside `::ffff:0:0/96`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => same_prefix(u128::from(net), u128::from(ip), 128, self.prefix),
            (IpAddr::V6(net), IpAddr::V4(ip)) => {
                self.prefix >= MAPPED_PREFIX
                    && same_prefix(u128::from(net), u128::from(ip.to_ipv6_mapped()), 128, self.prefix)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }

    /// Whether the range holds more than 256 addresses (warned about at start).
    pub fn is_broad(&self) -> bool {
        let bits = if self.addr.is_ipv4() { 32 } else { 128 };
        bits - self.prefix > 8
    }
}

/// The prefix of the IPv4-mapped IPv6 range, `::ffff:0:0/96`.
const MAPPED_PREFIX: u8 = 96;

/// Whether `addr/prefix` holds every IPv4 address: `::ffff:0:0/96` (a shorter IPv6 prefix holds
/// none of them, see [`Net::contains`]).
fn every_ipv4(addr: Ipv6Addr, prefix: u8) -> bool {
    prefix == MAPPED_PREFIX && addr.to_ipv4_mapped().is_some()
}

/// Whether the first `prefix` of the low `bits` bits of `a` and `b` are the same.
fn same_prefix(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    let shift = u32::from(bits - prefix.min(bits));
    a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0)
}

impl FromStr for Net {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        let syntax = || NetError::Syntax(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            None => (s, None),
            Some((addr, prefix)) => (addr, Some(prefix)),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let bits: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some("0") => return Err(NetError::Everyone(s.to_owned())),
            // (digits only, without a leading zero: `u8`'s parser would take a sign)
            Some(p) if (1..=3).contains(&p.len()) && !p.starts_with('0') && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .map_err(|_| NetError::PrefixTooLong(s.to_owned(), bits))?,
            Some(_) => return Err(syntax()),
        };
        if prefix > bits {
            return Err(NetError::PrefixTooLong(s.to_owned(), bits));
        }
        if let IpAddr::V6(v6) = addr
            && every_ipv4(v6, prefix)
        {
            return Err(NetError::Everyone(s.to_owned()));
        }
        let net = Net { addr, prefix };
        let masked = Net {
            addr: masked(addr, prefix),
            prefix,
        };
        if masked != net {
            return Err(NetError::HostBits(s.to_owned(), masked));
        }
        Ok(net)
    }
}

/// `addr` with every bit past `prefix` cleared.
fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    let keep = |bits: u32| u128::MAX.checked_shl(bits - u32::from(prefix)).unwrap_or(0);
    match addr {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & (keep(32) as u32)).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & keep(128)).into()),
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == bits {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// The trusted proxies: whose `X-Forwarded-For` is believed and appended to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Arc<[Net]>);

impl TrustedProxies {
    /// These ranges.
    pub fn new(nets: Vec<Net>) -> Self {
        Self(nets.into())
    }

    /// Whether any proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `peer` is a trusted proxy.
    pub fn contains(&self, peer: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(peer))
    }

    /// The ranges of more than 256 addresses ([`Net::is_broad`]).
    pub fn broad(&self) -> impl Iterator<Item = &Net> {
        self.0.iter().filter(|n| n.is_broad())
    }

    /// The client address the trusted proxies in front of a trusted peer reported: the last
    /// `X-Forwarded-For` entry that is not a trusted proxy's, each read from the value's bytes
    /// (another byte earlier in it — the client's own entries — does not hide it); when every
    /// entry is a trusted proxy's, the first; when an entry is not an address, the trusted hop
    /// to its right; `None` when no entry is an address.
    pub fn reported_client(&self, h: &HeaderMap) -> Option<IpAddr> {
        let mut nearest = None;
        let entries = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .rev()
            .flat_map(|v| v.as_bytes().rsplit(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|e| !e.is_empty());
        for entry in entries {
            let Some(ip) = std::str::from_utf8(entry).ok().and_then(forwarded_entry) else {
                return nearest;
            };
            if !self.contains(ip) {
                return Some(ip);
            }
            nearest = Some(ip);
        }
        nearest
    }
}

/// One `X-Forwarded-For` entry as an address: `ip`, or `ip:port` and `[ip6]:port` as some load
/// balancers write it.
fn forwarded_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_are_addresses_or_ranges() {
        let t = proxies(&[
            "10.0.0.5",
            "192.168.0.0/16",
            "fd00::/8",
            "::ffff:127.0.0.1",
            "172.16.0.0/12",
        ]);
        for yes in [
            "10.0.0.5",
            "192.168.3.4",
            "192.168.255.255",
            "fd12::1",
            "127.0.0.1",
            "::ffff:10.0.0.5",
            "172.31.9.9",
        ] {
            assert!(t.contains(ip(yes)), "{yes}");
        }
        for no in [
            "10.0.0.6",
            "192.169.0.1",
            "fe80::1",
            "127.0.0.2",
            "172.32.0.1",
            "::a00:5",
        ] {
            assert!(!t.contains(ip(no)), "{no}");
        }
        // an IPv4-mapped range holds the IPv4 addresses it maps; a wider IPv6 range none
        assert!(!proxies(&["::ffff:10.0.0.0/104"]).contains(ip("11.0.0.1")));
        for wide in ["::/1", "::/80", "::fffe:0:0/95"] {
            assert!(!proxies(&[wide]).contains(ip("10.9.8.7")), "{wide}");
            assert!(!proxies(&[wide]).contains(ip("::ffff:10.9.8.7")), "{wide}");
        }
        assert!(proxies(&["::/1"]).contains(ip("2001:db8::1")));
        assert!(proxies(&["::ffff:10.0.0.0/104"]).contains(ip("10.9.8.7")));
        assert!(proxies(&["0.0.0.0/1"]).contains(ip("127.0.0.1")));
        assert!(!proxies(&["0.0.0.0/1"]).contains(ip("128.0.0.1")));
        assert!(proxies(&["2001:db8::1/128"]).contains(ip("2001:db8::1")));
        assert_eq!("10.0.0.0/8".parse::<Net>().unwrap().to_string(), "10.0.0.0/8");
        assert_eq!("10.0.0.5/32".parse::<Net>().unwrap().to_string(), "10.0.0.5");
    }

    #[test]
    fn entries_that_say_something_else_are_refused() {
        let err = |s: &str| s.parse::<Net>().unwrap_err().to_string();
        for bad in [
            "",
            "10.0.0",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            " 10.0.0.1",
            "10.0.0.0 /8",
            "host.example",
            "10.0.0.0/0x8",
            "10.0.0.0/0008",
            "10.0.0.0/08",
            "10.0.0.0/00",
        ] {
            assert!(
                err(bad).contains("is not an IP address or a CIDR range"),
                "{bad}: {}",
                err(bad)
            );
        }
        assert!(err("10.0.0.0/33").contains("at most 32"));
        assert!(err("fd00::/129").contains("at most 128"));
        assert!(err("10.0.0.0/255").contains("at most 32"));
        assert!(err("0.0.0.0/0").contains("trusts every address"));
        assert!(err("::/0").contains("trusts every address"));
        assert!(err("::ffff:0:0/96").contains("trusts every address"));
        assert!(err("::ffff:0.0.0.0/96").contains("trusts every address"));
        // broad: more than 256 addresses
        let broad = |s: &str| s.parse::<Net>().unwrap().is_broad();
        assert!(broad("10.244.0.0/16") && broad("10.0.0.0/23") && broad("fd00::/64"));
        assert!(!broad("10.0.0.0/24") && !broad("10.0.0.5") && !broad("fd00::/120") && !broad("::ffff:10.0.0.0/120"));
        assert!(
            err("10.0.0.5/8").contains("the range is 10.0.0.0/8"),
            "{}",
            err("10.0.0.5/8")
        );
        assert!(err("fd00::1/64").contains("the range is fd00::/64"));
    }

    #[test]
    fn the_client_is_the_last_entry_no_trusted_proxy_wrote() {
        let t = proxies(&["10.0.0.0/8", "2001:db8:1::/48"]);
        let xff = |values: &[&[u8]]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(&X_FORWARDED_FOR, HeaderValue::from_bytes(v).unwrap());
            }
            t.reported_client(&h)
        };
        let some = |s: &str| Some(ip(s));
        assert_eq!(xff(&[b"203.0.113.50, 198.51.100.7"]), some("198.51.100.7"));
        assert_eq!(xff(&[b"1.1.1.1", b"2001:db8::1 "]), some("2001:db8::1"));
        // a chain: the hops' own addresses are skipped, what the client wrote is not read
        assert_eq!(
            xff(&[b"6.6.6.6, 198.51.100.7, 10.1.2.3, 10.0.0.9"]),
            some("198.51.100.7")
        );
        assert_eq!(
            xff(&[b"6.6.6.6, 198.51.100.7", b"10.1.2.3", b"2001:db8:1::9"]),
            some("198.51.100.7")
        );
        assert_eq!(xff(&[b"10.0.0.1, 198.51.100.7:5678, 10.1.2.3"]), some("198.51.100.7"));
        // a client's own bytes before the entries the hops wrote do not hide them
        assert_eq!(xff(&[b"\xff\xfe, 198.51.100.7"]), some("198.51.100.7"));
        assert_eq!(xff(&[b"a, [2001:db8::2]:443"]), some("2001:db8::2"));
        // every entry a hop's: the first; an entry that is not an address: the hop to its right
        assert_eq!(xff(&[b"10.0.0.1, 10.0.0.2"]), some("10.0.0.1"));
        assert_eq!(xff(&[b"unknown, 10.0.0.2"]), some("10.0.0.2"));
        assert_eq!(xff(&[b"198.51.100.7", b" "]), some("198.51.100.7"));
        assert_eq!(xff(&[b"198.51.100.7, ,"]), some("198.51.100.7"));
        assert_eq!(xff(&[b"unknown"]), None);
        assert_eq!(xff(&[b"198.51.100.7, unknown"]), None);
        assert_eq!(xff(&[]), None);
    }
}
