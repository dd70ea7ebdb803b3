//! Arbitrary bytes through the JWT verifier (kfsec-idp's `jwt::verify_with_typ`), two ways:
//! as a compact token (header parsing, base64, algorithm pinning, `crit`/`typ` checks before the
//! signature), and — split at the first NUL into a header and a claims part that the target
//! signs itself with a real key — as a correctly signed token, so the header rules are reached
//! with a valid signature. It never panics; an accepted token never has `crit`, an `alg` other
//! than RS256, or a `typ` other than JWT/application/jwt (or `at+jwt` where that is asked for).

#![no_main]

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeyPair;
use aws_lc_rs::signature::RSA_PKCS1_SHA256;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kfsec_idp::jwt::{ACCESS_TOKEN_TYP, SigningKey, verify_with_typ};
use libfuzzer_sys::fuzz_target;

fn key() -> &'static (SigningKey, KeyPair) {
    static KEY: OnceLock<(SigningKey, KeyPair)> = OnceLock::new();
    KEY.get_or_init(|| {
        let k = SigningKey::generate("k1".into()).expect("RSA key generation");
        let pair = KeyPair::from_pkcs8(&k.to_pkcs8().expect("PKCS#8")).expect("same key");
        (k, pair)
    })
}

/// `header.claims` (each base64url-encoded as given) signed with the key, RS256.
fn signed(header: &[u8], claims: &[u8]) -> Option<String> {
    let msg = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let pair = &key().1;
    let mut sig = vec![0u8; pair.public_modulus_len()];
    pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg.as_bytes(), &mut sig)
        .ok()?;
    Some(format!("{msg}.{}", B64.encode(sig)))
}

fuzz_target!(|data: &[u8]| {
    let pubk = key().0.public();
    let check = |token: &str| {
        for also in [None, Some(ACCESS_TOKEN_TYP)] {
            if verify_with_typ::<serde_json::Value>(token, [&pubk], also).is_ok() {
                let h = token.split('.').next().unwrap_or_default();
                let header: serde_json::Value =
                    serde_json::from_slice(&B64.decode(h).expect("accepted header is base64url"))
                        .expect("accepted header is JSON");
                assert_eq!(header["alg"], "RS256");
                assert!(header.get("crit").is_none(), "crit accepted: {header}");
                if let Some(t) = header.get("typ") {
                    let t = t.as_str().expect("typ is a string").to_ascii_lowercase();
                    let t = t.strip_prefix("application/").unwrap_or(&t);
                    assert!(t == "jwt" || (also.is_some() && t == ACCESS_TOKEN_TYP), "typ {t:?} accepted");
                }
            }
        }
    };
    if let Ok(s) = std::str::from_utf8(data) {
        check(s);
    }
    if let Some(i) = data.iter().position(|&b| b == 0)
        && let Some(token) = signed(&data[..i], &data[i + 1..])
    {
        check(&token);
    }
});
