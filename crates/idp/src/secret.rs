//! Generated secrets and their verification: random tokens, SHA-256 digests, salted digests and
//! constant-time comparison.
//!
//! Invariants: secrets come only from the injected CSPRNG; comparisons of secret material are
//! constant-time; only digests of client secrets, codes and refresh tokens are ever stored.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kfsec_types::{Rng, random_array};
use serde::{Deserialize, Serialize};

/// A 256-bit random token, base64url without padding.
pub fn random_token(rng: &dyn Rng) -> String {
    B64.encode(random_array::<32>(rng))
}

/// A random string of `len` characters from `[A-Za-z0-9]`, unbiased.
pub fn random_alnum(rng: &dyn Rng, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let [b] = random_array::<1>(rng);
        // 62 * 4 = 248: reject 248..=255 so every character is equally likely.
        if let Some(&c) = ALPHABET.get(usize::from(b % 62)).filter(|_| b < 248) {
            out.push(char::from(c));
        }
    }
    out
}

/// Hex SHA-256 of `data`: the store key of a code, refresh token or session.
pub fn sha256_hex(data: &[u8]) -> String {
    kfsec_types::hex::encode(digest(&SHA256, data).as_ref())
}

/// Base64url SHA-256 of `data` (PKCE S256).
pub fn sha256_b64(data: &[u8]) -> String {
    B64.encode(digest(&SHA256, data).as_ref())
}

/// Constant-time equality of two byte strings (compares digests so lengths do not leak).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let da = digest(&SHA256, a);
    let db = digest(&SHA256, b);
    verify_slices_are_equal(da.as_ref(), db.as_ref()).is_ok()
}

/// A salted SHA-256 digest of a high-entropy secret, as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaltedDigest {
    /// Random salt, base64url.
    pub salt: String,
    /// SHA-256(salt || secret), base64url.
    pub sha256: String,
}

impl std::fmt::Debug for SaltedDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaltedDigest(..)")
    }
}

impl SaltedDigest {
    /// Digests `secret` under a fresh salt.
    pub fn new(rng: &dyn Rng, secret: &str) -> Self {
        let salt = random_array::<16>(rng);
        Self {
            salt: B64.encode(salt),
            sha256: B64.encode(Self::compute(&salt, secret)),
        }
    }
    fn compute(salt: &[u8], secret: &str) -> Vec<u8> {
        let mut ctx = aws_lc_rs::digest::Context::new(&SHA256);
        ctx.update(salt);
        ctx.update(secret.as_bytes());
        ctx.finish().as_ref().to_vec()
    }
    /// Whether `secret` matches, in constant time.
    pub fn verify(&self, secret: &str) -> bool {
        let (Ok(salt), Ok(want)) = (B64.decode(&self.salt), B64.decode(&self.sha256)) else {
            return false;
        };
        verify_slices_are_equal(&Self::compute(&salt, secret), &want).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(std::sync::atomic::AtomicU8);
    impl Rng for Counter {
        fn fill(&self, buf: &mut [u8]) {
            for b in buf {
                *b = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    #[test]
    fn secrets() {
        let rng = Counter(Default::default());
        let s = random_alnum(&rng, 30);
        assert_eq!(s.len(), 30);
        assert!(s.chars().all(|c| c.is_ascii_alphanumeric()));
        let d = SaltedDigest::new(&rng, "hunter2");
        assert!(d.verify("hunter2"));
        assert!(!d.verify("hunter3"));
        assert!(ct_eq(b"a", b"a") && !ct_eq(b"a", b"ab"));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // PKCE S256 = base64url(SHA-256(verifier)); SHA-256("abc") is the FIPS 180-2 vector.
        assert_eq!(sha256_b64(b"abc"), "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
    }

    #[test]
    fn every_character_is_equally_likely() {
        // One pass over the 256 byte values: the 248 kept give each of the 62 characters 4 times.
        let drawn = random_alnum(&Counter(Default::default()), 248);
        let mut counts = std::collections::BTreeMap::new();
        for c in drawn.chars() {
            *counts.entry(c).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 62, "{counts:?}");
        assert!(counts.values().all(|&n| n == 4), "{counts:?}");
    }
}
