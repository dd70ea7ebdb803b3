//! Request-path normalisation (RFC 3986 §6.2.2): the one canonical form in which every routing
//! and authentication decision is made and which upstreams receive.
//!
//! Invariants: the output starts with `/`; has no empty segment (`//`) and no `.`/`..` segment;
//! has no percent-escape of an unreserved character and only uppercase escapes; contains only
//! RFC 3986 `pchar`s and `/` (anything else is percent-encoded); normalising it again changes
//! nothing. Refused (the caller answers 400): escapes of `/`, `\`, NUL and other control
//! characters, raw `\` and control characters, invalid escapes, escapes that do not decode to
//! UTF-8 (overlong forms such as `%C0%AE` were read as `.` by some decoders), and `.`/`..`
//! segments carrying `;` parameters — upstreams disagree about what these mean, so no meaning
//! is chosen for them.

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// Not an absolute path (`*`, authority-form, empty).
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-escape")]
    BadEscape,
    /// `%2F`, `%5C`, `%00` or another encoded control character.
    #[error("encoded '/', '\\' or control character")]
    EncodedSeparator,
    /// A raw backslash or control character.
    #[error("backslash or control character")]
    ForbiddenChar,
    /// `.;x` or `..;x`, which some servers resolve as a dot-segment.
    #[error("dot-segment with parameters")]
    DotParameter,
    /// The decoded path is not UTF-8 (overlong forms, Latin-1 bytes, stray continuation bytes).
    #[error("escapes that do not decode to UTF-8")]
    NotUtf8,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `pchar` minus unreserved and escapes: sub-delims, `:` and `@`.
fn is_plain_pchar(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@'
    )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

/// Decodes escaped unreserved characters, uppercases the other escapes and escapes whatever is
/// not a `pchar` or `/`.
fn canonical_chars(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    // The path's bytes with every escape decoded, to check that they spell UTF-8.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i).copied().and_then(hex),
                bytes.get(i + 1).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            i += 2;
            let v = (h << 4) | l;
            if v == b'/' || v == b'\\' || v < 0x20 || v == 0x7f {
                return Err(PathError::EncodedSeparator);
            }
            decoded.push(v);
            if is_unreserved(v) {
                out.push(char::from(v));
            } else {
                push_escape(&mut out, v);
            }
        } else if b == b'\\' || b < 0x20 || b == 0x7f {
            return Err(PathError::ForbiddenChar);
        } else {
            decoded.push(b);
            if b == b'/' || is_unreserved(b) || is_plain_pchar(b) {
                out.push(char::from(b));
            } else {
                // includes the bytes of raw UTF-8 (the input is a `str`)
                push_escape(&mut out, b);
            }
        }
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(PathError::NotUtf8);
    }
    Ok(out)
}

/// The canonical form of `path` (the path component only, without the query), or why it is
/// refused. Repeated slashes are merged before dot-segments are removed, as nginx does.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let chars = canonical_chars(path)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in chars.split('/').skip(1) {
        let base = seg.split(';').next().unwrap_or_default();
        if (base == "." || base == "..") && base.len() != seg.len() {
            return Err(PathError::DotParameter);
        }
        trailing = true;
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => {
                segments.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(chars.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Whether `path` is already in canonical form, decided without allocating (every request asks):
/// only `/`, unreserved characters and plain `pchar`s (no escape at all), no empty segment but a
/// trailing one, and no `.`/`..` segment with or without parameters. `true` implies
/// `normalize(path) == Ok(path)`; `false` says only that [`normalize`] must decide.
pub fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if !rest.bytes().all(|b| b == b'/' || is_unreserved(b) || is_plain_pchar(b)) {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg.is_empty() {
            if !last {
                return false;
            }
            continue;
        }
        let base = seg.split(';').next().unwrap_or_default();
        if base == "." || base == ".." {
            return false;
        }
    }
    true
}

/// Longest return path [`return_path`] accepts (bytes).
pub const MAX_RETURN_PATH: usize = 2048;

/// `candidate` if a browser may be sent there after a login or a logout (the original URL of a
/// login, oauth2-proxy's `rd`): the one rule for both. A same-origin relative URL only: it
/// starts with `/`, is at most [`MAX_RETURN_PATH`] bytes of visible ASCII (no space, CR/LF, tab
/// or other control character, which browsers drop or split on), has no backslash anywhere
/// (browsers read `\` as `/`), and its path (up to `?` or `#`) is already in canonical form
/// ([`normalize`]): so no `//` (scheme-relative), no `.`/`..` segments and no escaped `/` or
/// `\` (`%2F`, `%5C`) that something downstream might decode.
pub fn return_path(candidate: &str) -> Option<&str> {
    let plain = candidate.len() <= MAX_RETURN_PATH
        && candidate.starts_with('/')
        && candidate.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    if !plain {
        return None;
    }
    let path = candidate.split(['?', '#']).next().unwrap_or_default();
    (normalize(path).ok()? == path).then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_recognised_without_normalising() {
        for p in [
            "/",
            "/a",
            "/a/",
            "/a/b;c=d/e",
            "/~x/-._/a:b@c!$&'()*+,;=",
            "/a..b/.c/..d/",
        ] {
            assert!(is_normal(p), "{p}");
            assert_eq!(normalize(p).as_deref(), Ok(p), "{p}");
        }
        for p in [
            "", "a", "//", "/a//b", "/a/./b", "/a/../b", "/.", "/..", "/a/.", "/a/..", "/.;x/a", "/..;x", "/%41",
            "/a%2Fb", "/a b", "/é", "/a\\b", "/a?b", "/a#b", "/a\u{7f}",
        ] {
            assert!(!is_normal(p), "{p}");
        }
    }

    proptest::proptest! {
        #[test]
        fn is_normal_means_normalize_changes_nothing(p in "[/a.;%2Fb~@-]{0,24}") {
            let normalized = normalize(&p);
            if is_normal(&p) {
                proptest::prop_assert_eq!(normalized.as_deref(), Ok(p.as_str()));
            }
            if normalized.as_deref() == Ok(p.as_str()) && !p.contains('%') {
                proptest::prop_assert!(is_normal(&p), "{}", p);
            }
        }
    }

    #[test]
    fn return_paths_are_same_origin_canonical_paths_only() {
        for ok in [
            "/",
            "/app/x",
            "/app/x?ns=a&rd=//evil.example",
            "/pipeline/#/runs/details/1",
            "/a;b/c?x=%2F",
            "/caf%C3%A9",
        ] {
            assert_eq!(return_path(ok), Some(ok), "{ok:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_RETURN_PATH));
        for bad in [
            "",
            "app",
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "/x\\y",
            "/%2F%2Fevil.example",
            "/%2f/evil",
            "/%5Cevil",
            "/a/../b",
            "/./x",
            "/a//b",
            "/caf%c3%a9",
            "/\t/evil.example",
            "/x\r\nSet-Cookie: a=b",
            "/ /evil.example",
            "/é",
            "https://evil.example/",
            "javascript:alert(1)",
            long.as_str(),
        ] {
            assert_eq!(return_path(bad), None, "{bad:?}");
        }
        assert!(return_path(long.get(..MAX_RETURN_PATH).unwrap()).is_some());
    }

    #[test]
    fn canonical_forms() {
        for (input, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a///b//", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../a", "/a"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E./b", "/b"),
            ("/static//admin/x", "/static/admin/x"),
            ("/static/%61dmin/x", "/static/admin/x"),
            ("/a%7e%5f%2D", "/a~_-"),
            ("/a%3b%3Fb", "/a%3B%3Fb"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("/a\u{e9}", "/a%C3%A9"),
            ("/a b\"<>{}|^`[]", "/a%20b%22%3C%3E%7B%7D%7C%5E%60%5B%5D"),
            ("/a;b=c/d:e@f!$&'()*+,", "/a;b=c/d:e@f!$&'()*+,"),
            ("/...", "/..."),
            ("/a/..../b", "/a/..../b"),
            ("/a//../b", "/b"),
        ] {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
            assert_eq!(normalize(want).as_deref(), Ok(want), "idempotent on {want}");
        }
    }

    #[test]
    fn refusals() {
        for (input, why) in [
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("a/b", PathError::NotAbsolute),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%2F..", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a%00", PathError::EncodedSeparator),
            ("/a%0d%0a", PathError::EncodedSeparator),
            ("/a%7f", PathError::EncodedSeparator),
            ("/a\\b", PathError::ForbiddenChar),
            ("/a\u{1}", PathError::ForbiddenChar),
            ("/a\u{7f}", PathError::ForbiddenChar),
            ("/a%", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a%%32%65", PathError::BadEscape),
            ("/a/..;/b", PathError::DotParameter),
            ("/a/.;x/b", PathError::DotParameter),
            ("/a/%2e%2e;/b", PathError::DotParameter),
            ("/a/%C0%AE%C0%AE/b", PathError::NotUtf8),
            ("/a/%c0%2e", PathError::NotUtf8),
            ("/a/%e9", PathError::NotUtf8),
            ("/a/%e0%80%ae", PathError::NotUtf8),
            ("/a/%80", PathError::NotUtf8),
            ("/a/%C3", PathError::NotUtf8),
        ] {
            assert_eq!(normalize(input), Err(why), "{input:?}");
        }
        // a double-encoded dot stays an escape of `%`, never a dot
        assert_eq!(normalize("/a/%252e%252e/b").as_deref(), Ok("/a/%252e%252e/b"));
    }

    /// The fuzz target's properties over many combinations of the tricky pieces.
    #[test]
    fn properties_over_combinations() {
        const PIECES: [&str; 24] = [
            "/", "//", ".", "..", "%2e", "%2E", "%2e%2e", "a", "%61", "%7e", "%25", "%3b", ";", "..;", "%2f", "%5c",
            "\\", "%00", "%", "%4", "\u{e9}", " ", "?", "~",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut p = String::from("/");
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            for _ in 0..(state >> 60) {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                p.push_str(PIECES[usize::try_from(state >> 59).unwrap() % PIECES.len()]);
            }
            let Ok(out) = normalize(&p) else { continue };
            assert!(out.starts_with('/') && !out.contains("//"), "{p:?} -> {out:?}");
            assert!(out.split('/').all(|s| s != "." && s != ".."), "{p:?} -> {out:?}");
            assert!(
                out.bytes().all(|b| b > 0x20 && b < 0x7f && b != b'\\'),
                "{p:?} -> {out:?}"
            );
            assert_eq!(normalize(&out).as_deref(), Ok(out.as_str()), "{p:?}");
        }
    }
}
