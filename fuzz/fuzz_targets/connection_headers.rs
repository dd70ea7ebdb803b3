//! Arbitrary header lists — any name `http` accepts, any value it accepts (obs-text included),
//! several `Connection` headers listing anything — as a client's request at the edge
//! (`kfsec_gateway::headers::sanitize`) and as an upstream's answer
//! (`kfsec_gateway::proxy::sanitize_upstream_response`): never a panic, and
//! - at the edge: no header a received `Connection` value lists (read from its bytes, in any
//!   case) remains but `Upgrade`; no reserved identity or forwarding header remains in any
//!   spelling, nor any look-alike of a framing or hop-by-hop name (`Content_Length`); `X-Forwarded-For` is exactly the peer for a peer that is not a trusted proxy;
//!   `Connection` remains only as `upgrade`, beside an `Upgrade`;
//! - in an answer: no hop-by-hop header and no header its `Connection` lists remains
//!   (`Connection` and `Upgrade` only for an upgrade, and `Upgrade` only if not listed),
//!   nor `Service-Worker-Allowed` or an origin-wide header (`Clear-Site-Data`, `NEL`,
//!   `Report-To`, `Alt-Svc`), nor a `Set-Cookie` of one of kfsec's cookies (the name it comes
//!   back under, in any case: a nameless cookie comes back as its value), while every other
//!   `Set-Cookie` is kept in order;
//! - every other header is kept, with all its values in order.
//!
//! Input: a flags byte (bit 0: the peer is a trusted proxy; bit 1: the answer is an upgrade's),
//! then header lines `name:value` separated by `\n`.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};
use kfsec_gateway::headers::{Reserved, sanitize};
use kfsec_gateway::proxy::{OwnCookies, sanitize_upstream_response};
use kfsec_gateway::session_cookie::SessionCookie;
use kfsec_gateway::forwarded::TrustedProxies;
use libfuzzer_sys::fuzz_target;

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

/// Headers an answer never passes on (RFC 9110 §7.6.1, and proxy credentials).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Framing and hop-by-hop names a look-alike can spell (this target's own list: an oracle that
/// read the code's could not find a name missing from it).
const LOOK_ALIKE_OF: [&str; 4] = ["content-length", "transfer-encoding", "keep-alive", "proxy-connection"];

/// Whether `name` is spelled otherwise than, but reads (CGI-style: every byte that is not a
/// letter or digit as `-`) as, a framing or hop-by-hop name.
fn look_alike(name: &str) -> bool {
    let canonical: String = name
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { char::from(b.to_ascii_lowercase()) } else { '-' })
        .collect();
    canonical != name.to_ascii_lowercase() && LOOK_ALIKE_OF.contains(&canonical.as_str())
}

fn headers(lines: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value.trim_ascii())) {
            h.append(name, value);
        }
    }
    h
}

/// The names `h`'s `Connection` values list, lowercase (the reference reading: lossy text,
/// split on commas, trimmed).
fn listed(h: &HeaderMap) -> Vec<String> {
    h.get_all(CONNECTION)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Every header of `before` that `keep` says must stay is in `after` with the same values in
/// the same order.
fn kept(before: &HeaderMap, after: &HeaderMap, keep: impl Fn(&HeaderName) -> bool) {
    for name in before.keys().filter(|n| keep(n)) {
        let want: Vec<&HeaderValue> = before.get_all(name).iter().collect();
        let got: Vec<&HeaderValue> = after.get_all(name).iter().collect();
        assert_eq!(got, want, "{name} was not kept as it came");
    }
}

fn edge(received: &HeaderMap, trusted: bool) {
    let reserved = Reserved::new(
        &HeaderName::from_static("kubeflow-userid"),
        &HeaderName::from_static("kubeflow-groups"),
    );
    let proxies = TrustedProxies::new(vec!["192.0.2.0/24".parse().unwrap()]);
    let mut h = received.clone();
    sanitize(&mut h, &reserved, Some(PEER), trusted.then_some(&proxies));
    let listed = listed(received);
    for n in &listed {
        // (`Connection` itself is checked below; `X-Forwarded-For` is set fresh by kfsec)
        if n != "upgrade" && n != "connection" && n != "x-forwarded-for" {
            assert!(!h.contains_key(n.as_str()), "{n}, listed in Connection, reached the upstream");
        }
    }
    for name in h.keys() {
        assert!(
            name == "x-forwarded-for" || !reserved.is_reserved(name.as_str()),
            "reserved {name} reached the upstream"
        );
        assert!(!look_alike(name.as_str()), "{name}, a framing look-alike, reached the upstream");
    }
    if !trusted {
        let xff: Vec<&HeaderValue> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, [&HeaderValue::from_static("192.0.2.7")]);
    }
    let connection: Vec<&HeaderValue> = h.get_all(CONNECTION).iter().collect();
    assert!(
        connection.is_empty() || (connection == [&HeaderValue::from_static("upgrade")] && h.contains_key(UPGRADE)),
        "Connection reached the upstream as {connection:?}"
    );
    kept(received, &h, |n| {
        n != CONNECTION
            && !reserved.is_reserved(n.as_str())
            && !listed.iter().any(|l| l == n.as_str() && l != "upgrade")
    });
}

/// kfsec's cookies, as this target knows them (its own list: see `LOOK_ALIKE_OF`).
const OWN_COOKIES: [&str; 5] = [
    "authservice_session",
    "__Host-authservice_session",
    "__Host-oidc_state_csrf",
    "__Host-kfsec_upstream_login",
    "__Host-kfsec_device_login",
];

/// Headers an answer may not send, which speak for the whole origin.
const CONFINED: [&str; 8] = [
    "service-worker-allowed",
    "clear-site-data",
    "nel",
    "report-to",
    "alt-svc",
    "accept-ch",
    "origin-agent-cluster",
    "set-login",
];

/// Whether a `Set-Cookie` value sets one of [`OWN_COOKIES`] (the reference reading: lossy text,
/// up to the first `;`, the name before the first `=`, trimmed; for a nameless cookie, the same
/// of its value, which is what a browser sends back).
fn sets_own(v: &HeaderValue) -> bool {
    let text = String::from_utf8_lossy(v.as_bytes());
    let trim = |s: &str| s.trim_matches(|c: char| c.is_ascii_whitespace()).to_owned();
    let pair = text.split(';').next().unwrap_or_default();
    let name = match pair.split_once('=') {
        Some((name, value)) if trim(name).is_empty() => trim(value).split_once('=').map(|(n, _)| trim(n)),
        Some((name, _)) => Some(trim(name)),
        None => None,
    };
    name.is_some_and(|name| OWN_COOKIES.iter().any(|own| own.eq_ignore_ascii_case(&name)))
}

fn answer(received: &HeaderMap, upgrade: bool) {
    let mut h = received.clone();
    let own = OwnCookies::new(&SessionCookie::new("authservice_session"));
    sanitize_upstream_response(&mut h, upgrade, &own);
    let listed = listed(received);
    let upgrade_keeps = |n: &str| upgrade && (n == "connection" || n == "upgrade");
    for n in HOP_BY_HOP {
        if !upgrade_keeps(n) {
            assert!(!h.contains_key(n), "hop-by-hop {n} reached the client");
        }
    }
    for n in &listed {
        if !(upgrade && n == "upgrade") {
            assert!(!h.contains_key(n.as_str()), "{n}, listed in Connection, reached the client");
        }
    }
    for n in CONFINED {
        assert!(!h.contains_key(n), "{n} reached the client");
    }
    let cookies_kept: Vec<&HeaderValue> = h.get_all("set-cookie").iter().collect();
    assert!(!cookies_kept.iter().any(|v| sets_own(v)), "kfsec's cookie set by an upstream reached the client: {cookies_kept:?}");
    if !listed.iter().any(|l| l == "set-cookie") {
        let want: Vec<&HeaderValue> = received.get_all("set-cookie").iter().filter(|v| !sets_own(v)).collect();
        assert_eq!(cookies_kept, want, "another Set-Cookie was not kept as it came");
    }
    kept(received, &h, |n| {
        !HOP_BY_HOP.contains(&n.as_str())
            && !CONFINED.contains(&n.as_str())
            && n != "set-cookie"
            && !listed.iter().any(|l| l == n.as_str())
    });
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, lines)) = data.split_first() else { return };
    let received = headers(lines);
    edge(&received, flags & 1 == 1);
    answer(&received, flags & 2 == 2);
});
