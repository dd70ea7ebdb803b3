//! Arbitrary bytes as a request path through the front door's normaliser: it never panics; an
//! accepted path's canonical form starts with `/`, has no `//`, no `.`/`..` segment, no escape of
//! an unreserved character and no lowercase escape, and normalising it again changes nothing.
//! The same bytes as a post-login/logout return URL (`return_path`, oauth2-proxy's `rd`): an
//! accepted one is itself, starts with one `/` (never `//` or `/\`), is visible ASCII without
//! backslash within the length cap, and its path part is canonical.
//! The same bytes as an audit Event's request URI (`redacted_uri`): never a panic, a URI without
//! a secret parameter is unchanged, the redacted one keeps the path and names no secret value;
//! and as a client's `Audit-ID`: an accepted id is short and of the safe charset. A path
//! `is_normal` accepts (the edge's no-allocation shortcut) normalises to itself.

#![no_main]

use kfsec_types::path::{MAX_RETURN_PATH, is_normal, normalize, return_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(id) = kfsec_audit::request::audit_id_from_client(data) {
        assert!(!id.is_empty() && id.len() <= kfsec_audit::request::MAX_CLIENT_AUDIT_ID);
        assert!(
            id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)),
            "{id:?}"
        );
    }
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let uri = kfsec_audit::request::redacted_uri(input);
    assert_eq!(uri.split('?').next(), input.split('?').next(), "{uri:?}");
    if uri != input {
        assert!(uri.contains("=REDACTED"), "{uri:?}");
        assert!(uri.len() <= input.len() + "=REDACTED".len() * input.matches(['&', ';']).count() + 9);
    }
    if let Some(back) = return_path(input) {
        assert_eq!(back, input);
        assert!(back.starts_with('/') && !back.starts_with("//"), "{back:?}");
        assert!(back.len() <= MAX_RETURN_PATH, "{back:?}");
        assert!(back.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'), "{back:?}");
        let path = back.split(['?', '#']).next().unwrap();
        assert_eq!(normalize(path).as_deref(), Ok(path), "{back:?}");
    }
    // The edge's shortcut: a path it takes as already canonical is exactly what normalising gives.
    if is_normal(input) {
        assert_eq!(normalize(input).as_deref(), Ok(input), "is_normal({input:?})");
    }
    let Ok(out) = normalize(input) else {
        return;
    };
    assert!(out.starts_with('/'), "{out:?}");
    assert!(!out.contains("//"), "{out:?}");
    for seg in out.split('/') {
        assert!(seg != "." && seg != "..", "dot-segment in {out:?}");
    }
    assert!(!out.contains('\\'), "{out:?}");
    assert!(out.bytes().all(|b| b > 0x20 && b < 0x7f), "{out:?}");
    let bytes = out.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' {
            let hex = &bytes[i + 1..i + 3];
            assert!(
                hex.iter().all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)),
                "{out:?}"
            );
            let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
            assert!(
                !(v.is_ascii_alphanumeric() || b"-._~".contains(&v)),
                "escaped unreserved character in {out:?}"
            );
        }
    }
    assert_eq!(normalize(&out).as_deref(), Ok(out.as_str()), "not idempotent");
});
