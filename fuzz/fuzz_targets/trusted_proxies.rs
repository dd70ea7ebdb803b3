//! `trustedProxies` entries and `X-Forwarded-For` chains (`kfsec_gateway::forwarded`): never a
//! panic, and
//! - an entry that parses prints as an entry that parses to itself, and holds its own address;
//!   a range that parses is never `/0`, nor holds every IPv4 address;
//! - whether a range holds an address is what a bit-by-bit reading of the printed range says
//!   (an IPv6 range holds an IPv4 address only inside `::ffff:0:0/96`);
//! - the reported client is what a second reading (every entry left to right, then from the
//!   right) finds: the last entry that is an address no entry trusts, never one to the left of
//!   it; when every entry is trusted, the first; at an entry that is not an address, the trusted
//!   entry to its right.
//!
//! Input: a first line of entries separated by spaces, then `X-Forwarded-For` values, one per
//! line.

#![no_main]

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use kfsec_gateway::forwarded::{Net, TrustedProxies};
use libfuzzer_sys::fuzz_target;

/// Whether the printed range `net` holds `ip`, read bit by bit (the second reading of
/// `Net::contains`).
fn holds(net: &Net, ip: IpAddr) -> bool {
    let text = net.to_string();
    let (addr, prefix) = text.split_once('/').unwrap_or((&text, ""));
    let addr: IpAddr = addr.parse().unwrap();
    let octets = |a: IpAddr| -> Vec<u8> {
        match a {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        }
    };
    let net_bits = octets(addr);
    let prefix: usize = if prefix.is_empty() { net_bits.len() * 8 } else { prefix.parse().unwrap() };
    let ip_bits = match (addr, ip.to_canonical()) {
        (IpAddr::V4(_), IpAddr::V4(v4)) => v4.octets().to_vec(),
        (IpAddr::V6(_), IpAddr::V6(v6)) => v6.octets().to_vec(),
        (IpAddr::V6(_), IpAddr::V4(v4)) if prefix >= 96 => v4.to_ipv6_mapped().octets().to_vec(),
        _ => return false,
    };
    (0..prefix).all(|i| (net_bits[i / 8] >> (7 - i % 8)) & 1 == (ip_bits[i / 8] >> (7 - i % 8)) & 1)
}

/// The second reading: entries left to right (empty ones skipped), then the walk from the right.
fn reference(nets: &[Net], values: &[&[u8]]) -> Option<IpAddr> {
    let entries: Vec<Option<IpAddr>> = values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|e| String::from_utf8_lossy(e).trim_matches(|c: char| c.is_ascii_whitespace()).to_owned())
        .filter(|e| !e.is_empty())
        .map(|e| {
            // (an address, `ip:port` or `[ip6]:port`; text with U+FFFD is never one)
            e.parse::<IpAddr>()
                .ok()
                .or_else(|| e.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        })
        .collect();
    let mut found = None;
    for entry in entries.iter().rev() {
        match entry {
            None => return found,
            Some(ip) if nets.iter().any(|n| holds(n, *ip)) => found = Some(*ip),
            Some(ip) => return Some(*ip),
        }
    }
    found
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut nets = Vec::new();
    for entry in String::from_utf8_lossy(first).split(' ') {
        if let Ok(net) = entry.parse::<Net>() {
            let again: Net = net.to_string().parse().expect("a printed entry parses");
            assert_eq!(again, net, "{entry}");
            assert!(!net.to_string().ends_with("/0"), "{entry}");
            let own: IpAddr = net.to_string().split('/').next().unwrap().parse().unwrap();
            assert!(net.contains(own), "{entry} does not hold its own address");
            let (v4_low, v4_high) = (IpAddr::from([0, 0, 0, 0]), IpAddr::from([255, 255, 255, 255]));
            assert!(!(net.contains(v4_low) && net.contains(v4_high)), "{entry} holds every IPv4 address");
            for probe in [own, v4_low, v4_high, IpAddr::from([10, 1, 2, 3])] {
                assert_eq!(net.contains(probe), holds(&net, probe), "{entry} {probe}");
            }
            nets.push(net);
        }
    }
    let values: Vec<&[u8]> = lines.filter(|v| HeaderValue::from_bytes(v).is_ok()).collect();
    let mut h = HeaderMap::new();
    for v in &values {
        h.append("x-forwarded-for", HeaderValue::from_bytes(v).unwrap());
    }
    for v in &values {
        for e in String::from_utf8_lossy(v).split(',') {
            if let Ok(ip) = e.trim().parse::<IpAddr>() {
                for net in &nets {
                    assert_eq!(net.contains(ip), holds(net, ip), "{net} {ip}");
                }
            }
        }
    }
    let got = TrustedProxies::new(nets.clone()).reported_client(&h);
    // (`HeaderValue` keeps a value's bytes as given, surrounding whitespace included)
    assert_eq!(got, reference(&nets, &values), "{values:?}");
});
