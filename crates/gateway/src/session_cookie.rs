//! The session cookie's names — the configured one (`authservice_session`, the name Kubeflow's
//! clients and scripts know) and its `__Host-` twin — which of them a request is held to, and
//! the `Set-Cookie` values that set and clear them.
//!
//! Invariants: only the `__Host-` name is read when a request carries one, and a browser that
//! sends Fetch Metadata (`Sec-Fetch-Site`, which Chromium, Firefox and
//! Safari send on every HTTPS request, and which no page can remove) is held to it alone.
//! Browsers accept that name only from the host itself over HTTPS, `Secure`, for `Path=/`,
//! without `Domain`: a cookie planted under the plain name — by another site of the domain
//! (`Domain=`), by a network attacker over plain HTTP, or by an app's script for a narrower
//! path — is then never read, neither as the session of a user who has none nor as a second
//! value that would refuse (and end) the user's own. A script of an app on the same origin can
//! still create a `__Host-` cookie while the user has none (kfsec's is `HttpOnly`, so no script
//! replaces it while it exists): apps that share the origin are trusted with that. Other
//! clients (the kfp SDK, curl, scripts, older browsers) may present the plain name when they
//! send no `__Host-` one. kfsec sets and clears both names together, with one value and the
//! same attributes. A configured `__Host-` name has no twin.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use kfsec_idp::cookies::cookies;

/// The prefix browsers reserve for cookies set by the host itself, `Secure`, for `Path=/`.
const HOST_PREFIX: &str = "__Host-";

/// The session cookie's names.
#[derive(Debug, Clone)]
pub struct SessionCookie {
    /// The configured name.
    plain: Box<str>,
    /// Its `__Host-` twin (the configured name when that is one).
    host: Box<str>,
}

impl SessionCookie {
    /// The session cookie configured as `name` (a `__Secure-` name's twin is `__Host-` with the
    /// rest of it).
    pub fn new(name: &str) -> Self {
        let host = if name.starts_with(HOST_PREFIX) {
            name.to_owned()
        } else {
            format!("{HOST_PREFIX}{}", name.strip_prefix("__Secure-").unwrap_or(name))
        };
        Self {
            plain: name.into(),
            host: host.into(),
        }
    }

    /// Its distinct names: the `__Host-` one first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&*self.host).chain((self.plain != self.host).then_some(&*self.plain))
    }

    /// The session cookie values `headers` present, in their order: those of the `__Host-`
    /// name when there is one; else those of the plain name, unless the sender is a browser
    /// that sends Fetch Metadata ([`fetch_metadata`], asked only then).
    pub fn values<'a>(&'a self, headers: &'a HeaderMap) -> impl Iterator<Item = &'a str> + 'a {
        let host = cookies(headers).any(|(k, _)| k == &*self.host);
        let name: &str = if host || fetch_metadata(headers) {
            &self.host
        } else {
            &self.plain
        };
        cookies(headers).filter(move |(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The first of [`SessionCookie::values`], and whether another of another value follows it
    /// — in one reading of the `Cookie` headers (the front door asks this of every request).
    pub fn first<'a>(&self, headers: &'a HeaderMap) -> (Option<&'a str>, bool) {
        // (per name: its first value, and whether another of another value followed it)
        let mut host: (Option<&str>, bool) = (None, false);
        let mut plain = host;
        for (k, v) in cookies(headers) {
            let seen = if k == &*self.host {
                &mut host
            } else if k == &*self.plain {
                &mut plain
            } else {
                continue;
            };
            match seen.0 {
                None => seen.0 = Some(v),
                Some(first) => seen.1 |= first != v,
            }
        }
        if host.0.is_some() || plain.0.is_none() || fetch_metadata(headers) {
            host
        } else {
            plain
        }
    }

    /// The `Set-Cookie` values that set both names to `value` for `max_age` seconds (`""` and
    /// 0 clear them): `Path=/`, no `Domain`, `HttpOnly`, `Secure`, `SameSite=Lax` — what the
    /// `__Host-` prefix requires of its name, kept for the plain one too.
    pub fn set(&self, value: &str, max_age: u64) -> Vec<HeaderValue> {
        let attrs = format!("={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax");
        self.names()
            .filter_map(|name| HeaderValue::from_str(&format!("{name}{attrs}")).ok())
            .collect()
    }
}

/// Whether the request carries Fetch Metadata (`Sec-Fetch-Site`), so its sender is a browser
/// that sends it — every current one does, with `Sec-Fetch-Mode` and `-Dest`, on every request
/// to an HTTPS origin, navigations, fetches and WebSockets alike — and cannot be made to leave
/// it out by a page. (One header looked up: the front door asks this of API clients' requests.)
pub fn fetch_metadata(headers: &HeaderMap) -> bool {
    static SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
    headers.contains_key(&SITE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header::COOKIE;

    fn request(cookie: &str, extra: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_str(cookie).unwrap());
        for (k, v) in extra {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// The values, checked against [`SessionCookie::first`]'s one reading.
    fn values<'a>(c: &'a SessionCookie, h: &'a HeaderMap) -> Vec<&'a str> {
        let all: Vec<&str> = c.values(h).collect();
        let several = all.iter().any(|v| *v != all[0]);
        assert_eq!(c.first(h), (all.first().copied(), several), "{h:?}");
        all
    }

    #[test]
    fn a_sent_host_name_wins_and_a_browser_is_held_to_it() {
        let c = SessionCookie::new("authservice_session");
        let both = "authservice_session=planted; a=1; __Host-authservice_session=mine";
        // Fetch Metadata, in any spelling and with any value, marks a browser.
        for marker in [
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "none"),
            ("Sec-Fetch-Site", ""),
        ] {
            let h = request(both, &[marker]);
            assert_eq!(values(&c, &h), ["mine"], "{marker:?}");
            let h = request("authservice_session=planted", &[marker]);
            assert!(
                values(&c, &h).is_empty(),
                "a planted plain cookie alone is no session: {marker:?}"
            );
        }
        // `Sec-Fetch-Mode` or `-Dest` alone is not the marker (every browser sends Site with them).
        for other in [("sec-fetch-dest", "document"), ("sec-fetch-mode", "navigate")] {
            let h = request("authservice_session=sdk", &[other]);
            assert_eq!(values(&c, &h), ["sdk"]);
        }
        // Without it (the kfp SDK, curl, an old browser) the `__Host-` name wins too, so a
        // plain-named cookie planted beside it neither shadows it nor counts as a second session.
        assert_eq!(values(&c, &request(both, &[])), ["mine"]);
        let h = request(
            "authservice_session=x; __Host-authservice_session=a; __Host-authservice_session=b",
            &[],
        );
        assert_eq!(values(&c, &h), ["a", "b"]);
        // Alone, the plain name is read, every value in order.
        assert_eq!(values(&c, &request("authservice_session=sdk", &[])), ["sdk"]);
        let h = request("authservice_session=one; a=1; authservice_session=two", &[]);
        assert_eq!(values(&c, &h), ["one", "two"]);
        // Names are exact: another case, a space inside, a longer name are other cookies.
        let odd = "__host-authservice_session=a; AUTHSERVICE_SESSION=b; __Host-authservice_session2=c";
        assert!(values(&c, &request(odd, &[])).is_empty());
    }

    proptest::proptest! {
        /// The front door's one reading decides as the values do, for any mix of names, values,
        /// separators and headers, with and without Fetch Metadata.
        #[test]
        fn first_reads_as_the_values(
            headers in proptest::collection::vec(
                proptest::collection::vec(
                    (
                        proptest::sample::select(vec![
                            "__Host-authservice_session", "authservice_session", "a", " authservice_session",
                            "__host-authservice_session", "",
                        ]),
                        proptest::sample::select(vec!["=x", "=y", "=", "", "=x=y"]),
                        proptest::sample::select(vec!["; ", ";", " ; ", ";\t"]),
                    ),
                    0..6,
                ),
                1..3,
            ),
            browser in proptest::bool::ANY,
        ) {
            let c = SessionCookie::new("authservice_session");
            let mut h = HeaderMap::new();
            for pairs in headers {
                let line: String = pairs.iter().map(|(n, v, sep)| format!("{n}{v}{sep}")).collect();
                if let Ok(v) = HeaderValue::from_str(line.trim()) {
                    h.append(COOKIE, v);
                }
            }
            if browser {
                h.append("sec-fetch-site", HeaderValue::from_static("same-origin"));
            }
            values(&c, &h);
        }
    }

    #[test]
    fn names_and_their_cookies() {
        let plain = SessionCookie::new("authservice_session");
        assert_eq!(
            plain.names().collect::<Vec<_>>(),
            ["__Host-authservice_session", "authservice_session"]
        );
        let set = plain.set("v.mac", 60);
        assert_eq!(
            set,
            [
                "__Host-authservice_session=v.mac; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Lax",
                "authservice_session=v.mac; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Lax",
            ]
        );
        // A configured `__Host-` name is the only one, for browsers too.
        let host = SessionCookie::new("__Host-s");
        assert_eq!(host.names().collect::<Vec<_>>(), ["__Host-s"]);
        assert_eq!(host.set("", 0).len(), 1);
        let h = request("s=planted; __Host-s=mine", &[("sec-fetch-site", "none")]);
        assert_eq!(values(&host, &h), ["mine"]);
        assert_eq!(values(&host, &request("s=x", &[])), Vec::<&str>::new());
        // A `__Secure-` name's twin drops that prefix.
        let secure = SessionCookie::new("__Secure-s");
        assert_eq!(secure.names().collect::<Vec<_>>(), ["__Host-s", "__Secure-s"]);
    }
}
