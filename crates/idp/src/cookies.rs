//! What a browser's request says about where it comes from: its cookies, and whether a write
//! (a form POST) was made by this site's own pages.
//!
//! Invariants: cookie values are returned as sent (no decoding); a pair is trimmed of spaces and
//! tabs only (a name behind another space, a non-breaking one, is another name, as browsers
//! read it); a pair without `=` is skipped;
//! the caller decides which of several same-named cookies it trusts (each is checked by its
//! MAC). A write is same-origin only if `Sec-Fetch-Site` says `same-origin`/`none` or, without
//! it, `Origin` is absent (not a browser) or equals the site's origin.

use http::{HeaderMap, Method, header};

/// The cookie an upstream login (a federated connector's) keeps its pending state in, from its
/// start to its callback.
pub const PENDING_LOGIN: &str = "__Host-kfsec_upstream_login";

/// The cookie that binds a device login (RFC 8628) to the browser that entered its user code,
/// from `/device/auth/verify_code` to `/device/callback`.
pub const DEVICE_LOGIN: &str = "__Host-kfsec_device_login";

/// The IdP's own login-state cookies, which no proxied app may set or read.
pub const IDP_COOKIES: [&str; 2] = [PENDING_LOGIN, DEVICE_LOGIN];

/// A `Set-Cookie` value for one of the IdP's login-state cookies: `__Host-` rules (`Secure`,
/// `Path=/`, no `Domain`), `HttpOnly`, `SameSite=Lax` (it must come back on the top-level
/// redirect that ends the login), kept `max_age_secs` (0 clears it).
pub(crate) fn login_state_cookie(name: &str, value: &str, max_age_secs: u64) -> String {
    format!("{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Lax")
}

/// The name a server reads, in the `Cookie` header a browser sends back, for the cookie a
/// `Set-Cookie` value sets (RFC 6265bis §5.6): the bytes before the first `=` of the part before
/// the first `;`, trimmed. A cookie with an empty name is sent as its value alone, so
/// `=authservice_session=x` comes back as `authservice_session=x`: then the name is the value's,
/// read the same way. Empty when the cookie comes back without a `=` (no name at all).
pub fn set_cookie_name(value: &[u8]) -> &[u8] {
    let pair = value.split(|&b| b == b';').next().unwrap_or_default();
    let Some(i) = pair.iter().position(|&b| b == b'=') else {
        return &[];
    };
    match pair[..i].trim_ascii() {
        [] => {
            let value = pair[i + 1..].trim_ascii();
            value
                .iter()
                .position(|&b| b == b'=')
                .map_or(&[][..], |j| value[..j].trim_ascii())
        }
        name => name,
    }
}

/// Iterates `name=value` pairs of all `Cookie` headers, read from their bytes: a pair that is
/// not UTF-8 is skipped alone (a browser sends all its cookies in one header, and one cookie
/// with another byte — an app on the origin can set one — must not hide the others).
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|p| std::str::from_utf8(p).ok())
        .filter_map(|p| p.trim_matches([' ', '\t']).split_once('='))
}

/// Cross-site request forgery rule for cookie-authenticated writes and the IdP's forms (the
/// rule of Go's `net/http.CrossOriginProtection`, with the site's `public_origin`,
/// `https://host[:port]`): safe methods (GET, HEAD, OPTIONS) pass; otherwise, when the browser
/// sent `Sec-Fetch-Site` it must be `same-origin` or `none` (typed URL, bookmark); without it,
/// an `Origin` must equal the site's origin; with neither header the request did not come from
/// a browser page (every browser since 2020 sends one of them on a cross-origin POST) and
/// passes. `text/plain` and multipart bodies are therefore refused cross-site whatever their
/// content type. Bearer tokens and client certificates are never sent by a browser on its own
/// and are not subject to this.
pub fn same_origin_write(method: &Method, headers: &HeaderMap, public_origin: &str) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(
            site.to_str().map(str::to_ascii_lowercase).as_deref(),
            Ok("same-origin" | "none")
        );
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(o) => o
            .to_str()
            .is_ok_and(|o| o.trim_end_matches('/').eq_ignore_ascii_case(public_origin)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_cookie_that_is_not_utf8_or_ascii_hides_no_other() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            http::HeaderValue::from_bytes(b"x=\xc3\xa9; authservice_session=abc; y=\xff\xfe; z=1").unwrap(),
        );
        h.append(header::COOKIE, http::HeaderValue::from_static("w=2"));
        let got: Vec<(&str, &str)> = cookies(&h).collect();
        assert_eq!(
            got,
            [("x", "\u{e9}"), ("authservice_session", "abc"), ("z", "1"), ("w", "2")]
        );
        // only spaces and tabs are trimmed, as browsers do: a name behind a non-breaking space
        // (which a prefix rule such as `__Host-` does not apply to) is another name
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            http::HeaderValue::from_bytes(b"\xc2\xa0__Host-s=planted;\t__Host-s=mine ").unwrap(),
        );
        let got: Vec<(&str, &str)> = cookies(&h).collect();
        assert_eq!(got, [("\u{a0}__Host-s", "planted"), ("__Host-s", "mine")]);
    }

    #[test]
    fn the_name_a_set_cookie_comes_back_under() {
        for (set, name) in [
            ("a=1", "a"),
            (" a =1; Path=/", "a"),
            ("a=1=2", "a"),
            ("a", ""),
            ("", ""),
            ("=a=1", "a"),
            ("= a =1; Path=/x/", "a"),
            ("=a", ""),
            ("==a=1", ""),
            ("x=1; a=2", "x"),
            ("=; a=1", ""),
        ] {
            assert_eq!(set_cookie_name(set.as_bytes()), name.as_bytes(), "{set:?}");
        }
    }

    #[test]
    fn cross_site_writes_are_told_apart() {
        let me = "https://kf.example.com";
        let post = Method::POST;
        assert!(same_origin_write(
            &Method::GET,
            &headers(&[("sec-fetch-site", "cross-site")]),
            me
        ));
        assert!(same_origin_write(&post, &headers(&[]), me), "not a browser");
        assert!(same_origin_write(
            &post,
            &headers(&[("sec-fetch-site", "same-origin")]),
            me
        ));
        assert!(same_origin_write(
            &post,
            &headers(&[("origin", "https://KF.example.com/")]),
            me
        ));
        for bad in [
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site")]),
            headers(&[("origin", "https://evil.example")]),
            headers(&[("origin", "null")]),
            headers(&[("sec-fetch-site", "cross-site"), ("origin", me)]),
        ] {
            assert!(!same_origin_write(&post, &bad, me), "{bad:?}");
        }
        let c = headers(&[("cookie", "a=1; b=2"), ("cookie", "c=3;bad; d=")]);
        assert_eq!(
            cookies(&c).collect::<Vec<_>>(),
            [("a", "1"), ("b", "2"), ("c", "3"), ("d", "")]
        );
    }
}
