//! Which client-sent headers the front door removes before anything else sees the request, and
//! the forwarding headers it sets itself.
//!
//! Invariants: `Connection` is applied to the message as received (the headers it names are
//! removed here, before identity is added), so a client can never remove a header kfsec sets;
//! every header whose name, read the way CGI/WSGI gateways read names (ASCII case folded, every
//! non-alphanumeric character taken as `-`), is a reserved identity or forwarding name is
//! removed, on every route and protocol version; so is every header whose name reads that way as
//! a framing or hop-by-hop name but is spelled otherwise (`Content_Length`, `transfer.encoding`):
//! kfsec frames a request by the real names, and an upstream that read the look-alike could
//! frame it otherwise on a connection other users' requests share; `X-Forwarded-For` is kept
//! (and appended to) only when the peer is a trusted proxy, otherwise it is set fresh to the
//! peer.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::forwarded::{TrustedProxies, X_FORWARDED_FOR};

/// Reserved names (canonical form): identity and forwarding headers only kfsec sets.
const RESERVED: [&str; 16] = [
    "kubeflow-userid",
    "kubeflow-groups",
    "remote-user",
    "remote-groups",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "forwarded",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-user",
    "x-email",
    "x-userid",
    "x-user-id",
    "x-groups",
];

/// Framing and hop-by-hop names (canonical form), reserved in any spelling but their own: those
/// with a `-`, which a look-alike can spell with another byte (`Connection`, `TE`, `Host`… have
/// no look-alike: a name reads as them only when it is them).
const FRAMING: [&str; 4] = ["content-length", "transfer-encoding", "keep-alive", "proxy-connection"];

/// Reserved name prefixes (canonical form): `X-Forwarded-*`, oauth2-proxy's `X-Auth-Request-*`,
/// the Kubernetes front-proxy's `X-Remote-*`.
const RESERVED_PREFIXES: [&str; 3] = ["x-forwarded-", "x-auth-request-", "x-remote-"];

/// `name` as a CGI/WSGI-style gateway reads it: lowercase, every non-alphanumeric byte as `-`.
pub fn canonical_name(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b.to_ascii_lowercase())
            } else {
                '-'
            }
        })
        .collect()
}

/// Whether `name` in canonical form ([`canonical_name`]) equals `canonical`.
fn canonical_eq(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len()
        && name.iter().zip(canonical).all(|(&b, &c)| {
            let b = if b.is_ascii_alphanumeric() {
                b.to_ascii_lowercase()
            } else {
                b'-'
            };
            b == c
        })
}

/// The identity header names of one deployment (the configured user and groups headers
/// included), in canonical form.
#[derive(Debug, Clone)]
pub struct Reserved {
    extra: Vec<String>,
    /// The first letters of every reserved name (canonical form): most headers a client sends
    /// (`cookie`, `accept`, `user-agent`…) are passed over with one comparison.
    first: [bool; 256],
}

impl Reserved {
    /// The built-in names plus the configured `user` and `groups` headers.
    pub fn new(user: &HeaderName, groups: &HeaderName) -> Self {
        let extra = vec![canonical_name(user.as_str()), canonical_name(groups.as_str())];
        let mut first = [false; 256];
        let names = RESERVED.iter().chain(&RESERVED_PREFIXES).copied();
        for name in names.chain(extra.iter().map(String::as_str)) {
            if let Some(&b) = name.as_bytes().first() {
                first[usize::from(b)] = true;
            }
        }
        Self { extra, first }
    }

    /// Whether a client may not send `name`: an identity or forwarding name, or a framing or
    /// hop-by-hop name spelled otherwise than itself (compared in canonical form without
    /// allocating: this runs for every header of every request).
    pub fn is_reserved(&self, name: &str) -> bool {
        let name = name.as_bytes();
        self.is_identity(name) || is_framing_look_alike(name)
    }

    /// Whether `name` reads as an identity or forwarding name.
    fn is_identity(&self, name: &[u8]) -> bool {
        // The canonical form's first byte: a letter folded to lowercase, `-` for the rest.
        let first = name.first().map_or(b'-', |&b| {
            if b.is_ascii_alphanumeric() {
                b.to_ascii_lowercase()
            } else {
                b'-'
            }
        });
        if !self.first[usize::from(first)] {
            return false;
        }
        RESERVED.iter().any(|r| canonical_eq(name, r.as_bytes()))
            || RESERVED_PREFIXES
                .iter()
                .any(|p| name.len() >= p.len() && canonical_eq(&name[..p.len()], p.as_bytes()))
            || self.extra.iter().any(|r| canonical_eq(name, r.as_bytes()))
    }
}

/// Whether `name` reads as a framing or hop-by-hop name ([`FRAMING`]) but is not spelled as one:
/// it holds a byte other than a letter, a digit or `-` (a name of only those, in any case, is
/// the header itself, which the framing and `Connection` rules handle).
fn is_framing_look_alike(name: &[u8]) -> bool {
    name.iter().any(|&b| !(b.is_ascii_alphanumeric() || b == b'-'))
        && FRAMING.iter().any(|f| canonical_eq(name, f.as_bytes()))
}

/// The names a `Connection` header value lists (RFC 9110 §7.6.1), split on commas and trimmed
/// (of any whitespace, not only the grammar's: a sloppy list removes more, never less), read
/// from its bytes: a value that is not all visible ASCII (obs-text elsewhere in it) still names
/// the headers it lists. An empty entry, or one that is not UTF-8 (so no header name), names
/// nothing.
pub(crate) fn connection_names(v: &HeaderValue) -> impl Iterator<Item = &str> {
    v.as_bytes()
        .split(|&b| b == b',')
        .filter_map(|n| std::str::from_utf8(n).ok())
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// Applies the received message's `Connection` header: removes the headers it names (except
/// `Upgrade`, which the proxy needs to join upgrades) and leaves `Connection: upgrade` only when
/// an upgrade is requested. Runs before anything is added, so it can only remove client headers.
pub fn apply_connection(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(connection_names)
        .map(str::to_ascii_lowercase)
        .collect();
    let mut upgrade = false;
    for n in &named {
        if n == "upgrade" {
            upgrade = true;
        } else if n != "connection"
            && let Ok(name) = HeaderName::from_bytes(n.as_bytes())
        {
            h.remove(name);
        }
    }
    h.remove(header::CONNECTION);
    if upgrade && h.contains_key(header::UPGRADE) {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// `groups` as one header value, comma-separated as Kubeflow's `kubeflow-groups` and
/// oauth2-proxy's `X-Auth-Request-Groups` carry them. A group the list cannot carry as itself is
/// left out: one whose name holds a comma (a reader would split it in two, and a part could
/// read as another group: `a,admins`), an empty one or one with whitespace at either end (a
/// reader trims each entry, so ` admins` would read as `admins`), one with a `"` (a reader that
/// unquotes would read `"admins"` as `admins`), and one with a control byte (no header value
/// can hold it, and the whole header would be lost).
pub(crate) fn groups_list(groups: &[String]) -> String {
    let mut list = String::new();
    for g in groups {
        if g.contains([',', '"']) || g.is_empty() || g.trim() != g || g.bytes().any(|b| b.is_ascii_control()) {
            tracing::debug!(group = %g, "a group the groups header cannot carry as itself is left out of it");
            continue;
        }
        if !list.is_empty() {
            list.push(',');
        }
        list.push_str(g);
    }
    list
}

/// Removes every reserved header; `X-Forwarded-For` is then kept with `socket_peer` appended when
/// the peer is a trusted proxy (`trusted`: the trusted proxies, when it is one of them), and set
/// to `socket_peer` otherwise. Returns the client address the trusted proxies reported
/// ([`TrustedProxies::reported_client`]), if any. `X-Forwarded-For` is read before `Connection`
/// is applied: a client's `Connection` that a proxy passes on (`upgrade, x-forwarded-for`) cannot
/// hide the address the proxy reported, here or from the in-flight caps, which read it as sent.
pub fn sanitize(
    h: &mut HeaderMap,
    reserved: &Reserved,
    socket_peer: Option<IpAddr>,
    trusted: Option<&TrustedProxies>,
) -> Option<IpAddr> {
    let reported = trusted.and_then(|t| t.reported_client(h));
    let prior: Vec<String> = if trusted.is_some() {
        h.get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect()
    } else {
        Vec::new()
    };
    apply_connection(h);
    let doomed: Vec<HeaderName> = h.keys().filter(|n| reserved.is_reserved(n.as_str())).cloned().collect();
    for n in doomed {
        h.remove(n);
    }
    // The common case, nothing forwarded (a client straight, or a trusted proxy that sent
    // none): the peer's value, made once per thread and peer.
    if prior.is_empty() {
        if let Some(v) = socket_peer.and_then(forwarded_for) {
            h.insert(X_FORWARDED_FOR.clone(), v);
        }
        return reported;
    }
    let mut xff = prior.join(", ");
    xff.reserve(15);
    if let Some(peer) = socket_peer {
        if !xff.is_empty() {
            xff.push_str(", ");
        }
        push_ip(&mut xff, peer);
    }
    if !xff.is_empty()
        && let Ok(v) = HeaderValue::from_str(&xff)
    {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    reported
}

/// Appends `ip` as text (what `Display` writes; IPv4 without the formatting machinery: this runs
/// for every request).
pub(crate) fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(_) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{ip}");
        }
    }
}

/// `peer` as an `X-Forwarded-For` value. Each thread keeps the last one it made: the requests a
/// thread serves come most often from one address (a load balancer's, a client's), and the
/// value is then shared, not formatted again.
pub(crate) fn forwarded_for(peer: IpAddr) -> Option<HeaderValue> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((ip, v)) if *ip == peer => Some(v.clone()),
        _ => {
            // (an address's text is digits, dots, colons and hex letters: always a valid value)
            let v = HeaderValue::from_maybe_shared(bytes::Bytes::from(ip_string(peer))).ok()?;
            *last = Some((peer, v.clone()));
            Some(v)
        }
    })
}

/// `ip` as text ([`push_ip`]).
pub(crate) fn ip_string(ip: IpAddr) -> String {
    let mut s = String::with_capacity(15);
    push_ip(&mut s, ip);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_is_forwarded_as_itself_when_peers_take_turns_on_a_thread() {
        let peers: [IpAddr; 3] = [
            [10, 0, 0, 1].into(),
            "2001:db8::7".parse().unwrap(),
            [10, 0, 0, 2].into(),
        ];
        for round in 0..3 {
            for p in peers.iter().cycle().skip(round).take(4) {
                assert_eq!(forwarded_for(*p).unwrap(), p.to_string().as_str());
            }
        }
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "127.0.0.1",
            "255.255.255.255",
            "192.168.100.9",
            "1.20.199.250",
            "::1",
            "2001:db8::7",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_string(ip), ip.to_string());
        }
        for n in 0..=255u8 {
            let ip = IpAddr::from([n, n.wrapping_mul(7), 0, 255 - n]);
            assert_eq!(ip_string(ip), ip.to_string());
        }
    }

    fn reserved() -> Reserved {
        Reserved::new(
            &HeaderName::from_static("x-goog-authenticated-user-email"),
            &HeaderName::from_static("kubeflow-groups"),
        )
    }

    #[test]
    fn every_spelling_of_a_reserved_name_is_reserved() {
        let r = reserved();
        for n in [
            "kubeflow-userid",
            "kubeflow_userid",
            "KUBEFLOW_USERID",
            "Kubeflow.UserId",
            "x_forwarded_for",
            "x-forwarded-anything",
            "X-Auth-Request-Email",
            "x_remote_user",
            "remote_user",
            "x_goog_authenticated_user_email",
            "Forwarded",
            "x-real-ip",
            "X-Original-URL",
            "x-rewrite-url",
        ] {
            assert!(r.is_reserved(n), "{n}");
        }
        for n in [
            "cookie",
            "authorization",
            "content-type",
            "x-request-id",
            "user-agent",
            "",
            "-",
        ] {
            assert!(!r.is_reserved(n), "{n}");
        }
        // Configured names whose first letters no built-in name has are reserved as well.
        let r = Reserved::new(
            &HeaderName::from_static("my-user"),
            &HeaderName::from_static("9-groups"),
        );
        for n in [
            "my-user",
            "MY_USER",
            "My.User",
            "9-groups",
            "9_GROUPS",
            "kubeflow-userid",
        ] {
            assert!(r.is_reserved(n), "{n}");
        }
        for n in ["my-users", "mx-user", "8-groups"] {
            assert!(!r.is_reserved(n), "{n}");
        }
    }

    #[test]
    fn framing_and_hop_by_hop_look_alikes_are_reserved_and_the_names_themselves_are_not() {
        let r = reserved();
        for n in [
            "content_length",
            "Content.Length",
            "transfer_encoding",
            "Transfer~Encoding",
            "transfer'encoding",
            "KEEP.ALIVE",
            "keep_alive",
            "proxy_connection",
            "Proxy*Connection",
        ] {
            assert!(r.is_reserved(n), "{n}");
        }
        // The names themselves, in any case, are left to the framing and `Connection` rules;
        // other names with `_` or `.` pass.
        for n in [
            "content-length",
            "Content-Length",
            "transfer-encoding",
            "TE",
            "te",
            "host",
            "upgrade",
            "x_custom",
            "x.trace.id",
            "content_type",
            "content_lengths",
            "_content_length",
            "connection_",
            "te_",
            "h_st",
        ] {
            assert!(!r.is_reserved(n), "{n}");
        }
    }

    #[test]
    fn a_group_with_a_comma_is_left_out_of_the_groups_list() {
        let groups = |g: &[&str]| groups_list(&g.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(groups(&[]), "");
        assert_eq!(groups(&["team-a"]), "team-a");
        assert_eq!(groups(&["team-a", "team b", "x"]), "team-a,team b,x");
        assert_eq!(groups(&["a,admins", "team-a"]), "team-a");
        assert_eq!(groups(&["team-a", "a,admins"]), "team-a");
        assert_eq!(groups(&[",", "a,", ",b"]), "");
        assert_eq!(groups(&[" admins", "admins ", "", "\tx", "team b"]), "team b");
        assert_eq!(groups(&["\"admins\"", "a\u{7f}b", "a\nb", "ops"]), "ops");
    }

    #[test]
    fn connection_cannot_outlive_the_received_message() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("kubeflow-userid, x-secret, Upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-fine", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        apply_connection(&mut h);
        assert!(h.get("x-secret").is_none() && h.get("x-fine").is_some());
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        apply_connection(&mut h);
        assert!(h.get(header::CONNECTION).is_none());
        // A value with a byte that is not visible ASCII (obs-text) still names its headers, in
        // every spelling and position.
        for value in [
            &b"x-secret, \xff"[..],
            b"\xff,X-Secret",
            b" x-secret\t,\x80\x81",
            b"caf\xc3\xa9, x-secret",
            b"\xc2\xa0x-secret\xc2\xa0, \xff",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_bytes(value).unwrap());
            h.insert("x-secret", HeaderValue::from_static("1"));
            h.insert("x-fine", HeaderValue::from_static("1"));
            apply_connection(&mut h);
            assert!(h.get("x-secret").is_none(), "{value:?}");
            assert!(
                h.get("x-fine").is_some() && h.get(header::CONNECTION).is_none(),
                "{value:?}"
            );
        }
    }

    #[test]
    fn forwarded_for_is_appended_only_for_trusted_peers() {
        let r = reserved();
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.9.9.9"),
        );
        h.insert("x_forwarded_for", HeaderValue::from_static("6.6.6.6"));
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let reported = sanitize(&mut h, &r, Some(peer), Some(&trusted));
        assert_eq!(reported, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(
            h.get("x-forwarded-for").unwrap(),
            "6.6.6.6, 203.0.113.7, 10.9.9.9, 10.0.0.1"
        );
        assert!(h.get("x_forwarded_for").is_none());
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        assert_eq!(sanitize(&mut h, &r, Some(peer), None), None);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1");
        // a client's `Connection` passed on by the proxy does not hide what the proxy reported
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("upgrade, x-forwarded-for"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        assert_eq!(
            sanitize(&mut h, &r, Some(peer), Some(&trusted)),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.7, 10.0.0.1");
    }
}
