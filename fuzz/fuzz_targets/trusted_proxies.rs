//! `trustedProxies` entries and `X-Forwarded-For` chains (`kfsec_gateway::trust`): never a
//! panic, and
//! - an entry that parses prints as an entry that parses to itself, and holds its own address;
//!   a range that parses is never `/0`;
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
            Some(ip) if nets.iter().any(|n| n.contains(*ip)) => found = Some(*ip),
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
            nets.push(net);
        }
    }
    let values: Vec<&[u8]> = lines.filter(|v| HeaderValue::from_bytes(v).is_ok()).collect();
    let mut h = HeaderMap::new();
    for v in &values {
        h.append("x-forwarded-for", HeaderValue::from_bytes(v).unwrap());
    }
    let got = TrustedProxies::new(nets.clone()).reported_client(&h);
    // (`HeaderValue` keeps a value's bytes as given, surrounding whitespace included)
    assert_eq!(got, reference(&nets, &values), "{values:?}");
});
