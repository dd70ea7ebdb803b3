//! Equality of the short, public strings compared on every request (user names, groups,
//! addresses, user agents, annotation keys and values, header-name prefixes), inline: eight
//! bytes at a time, without a call into libc's `memcmp`, whose call and size dispatch cost more
//! than the comparison for strings this short.
//!
//! Security invariant: not constant-time — the time taken says where the first difference is.
//! Only for values that are not secret (never a token, a cookie, a password or a MAC: those are
//! compared with `aws_lc_rs::constant_time`).

/// Whether `a` and `b` hold the same bytes.
#[inline]
pub fn bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a, mut b) = (a, b);
    while let (Some((x, rest_a)), Some((y, rest_b))) = (a.split_first_chunk::<8>(), b.split_first_chunk::<8>()) {
        if u64::from_ne_bytes(*x) != u64::from_ne_bytes(*y) {
            return false;
        }
        (a, b) = (rest_a, rest_b);
    }
    // (fewer than eight left, as many in each)
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// Whether `a` and `b` are the same text.
#[inline]
pub fn str(a: &str, b: &str) -> bool {
    bytes(a.as_bytes(), b.as_bytes())
}

/// Whether `s` starts with `prefix`.
#[inline]
pub fn starts_with(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| bytes(head, prefix.as_bytes()))
}

/// Whether `a` and `b` are the same texts in the same order.
#[inline]
pub fn strs<A: AsRef<str>, B: AsRef<str>>(a: &[A], b: &[B]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| str(x.as_ref(), y.as_ref()))
}

/// Whether `a` and `b` are both absent or the same text.
#[inline]
pub fn opt_str(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => str(a, b),
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn every_length_and_every_position_of_a_difference() {
        for len in 0..40usize {
            let a: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).unwrap_or(0)).collect();
            assert!(bytes(&a, &a.clone()), "len {len}");
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 0x80;
                assert!(!bytes(&a, &b), "len {len}, difference at {at}");
                assert!(!bytes(&b, &a), "len {len}, difference at {at}");
            }
            // a prefix is not the whole
            if len > 0 {
                assert!(!bytes(&a, &a[..len - 1]));
                assert!(!bytes(&a[..len - 1], &a));
            }
        }
    }

    #[test]
    fn texts_lists_and_absence() {
        assert!(starts_with("kfsec.io/chain-seq", "kfsec.io/chain-"));
        assert!(starts_with("x", ""));
        assert!(!starts_with("kfsec.io/chain", "kfsec.io/chain-"));
        assert!(!starts_with("kfsec.io/chainXseq", "kfsec.io/chain-"));
        assert!(str("", ""));
        assert!(str("system:authenticated", "system:authenticated"));
        assert!(!str("system:authenticated", "system:authenticatee"));
        assert!(strs(&["a".to_owned(), "b".to_owned()], &["a", "b"]));
        assert!(!strs(&["a".to_owned(), "b".to_owned()], &["b", "a"]));
        assert!(!strs(&["a".to_owned()], &["a", "a"]));
        assert!(strs::<String, &str>(&[], &[]));
        assert!(opt_str(None, None));
        assert!(opt_str(Some("x"), Some("x")));
        assert!(!opt_str(Some("x"), None));
        assert!(!opt_str(None, Some("")));
        assert!(!opt_str(Some("x"), Some("y")));
    }

    proptest! {
        #[test]
        fn agrees_with_slice_equality(a in proptest::collection::vec(any::<u8>(), 0..70),
                                      b in proptest::collection::vec(any::<u8>(), 0..70),
                                      cut in 0usize..70) {
            prop_assert_eq!(bytes(&a, &b), a == b);
            let c = &a[..cut.min(a.len())];
            prop_assert_eq!(bytes(&a, c), a.as_slice() == c);
            prop_assert!(bytes(&a, &a.clone()));
        }
    }
}
