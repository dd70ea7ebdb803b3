//! Reading cookies from request headers: every `Cookie` header, every `name=value` pair.
//!
//! Invariants: values are returned as sent (no decoding); a pair without `=` is skipped; the
//! caller decides which of several same-named cookies it trusts (each is checked by its MAC).

use http::{HeaderMap, header};

/// Iterates `name=value` pairs of all `Cookie` headers.
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.trim().split_once('='))
}
