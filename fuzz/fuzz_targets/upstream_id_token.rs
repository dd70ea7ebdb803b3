//! Arbitrary bytes through the upstream ID token verifier (kfsec-idp's `connector::jwks`), three
//! ways: as a JWKS document (`KeySet::parse`), as a compact token against a fixed key set, and —
//! split at the first NUL into a header and a claims part that the target signs itself with a
//! real RSA key — as a correctly signed token, so the header and claim rules are reached with a
//! valid signature. It never panics; an accepted token always has an asymmetric `alg` the key
//! allows, no `crit`, the expected `iss`, an `aud` holding the client id, an `exp` not past
//! (beyond the leeway) and the expected nonce.

#![no_main]

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kfsec_idp::connector::jwks::{Expect, KeySet, LEEWAY_SECS, verify};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const NOW: u64 = 1_800_000_000;

fn key() -> &'static (KeyPair, KeySet) {
    static KEY: OnceLock<(KeyPair, KeySet)> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
        let pk = pair.public_key();
        let jwks = serde_json::json!({"keys": [{
            "kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
            "n": B64.encode(pk.modulus().big_endian_without_leading_zero()),
            "e": B64.encode(pk.exponent().big_endian_without_leading_zero()),
        }]});
        let set = KeySet::parse(&serde_json::to_vec(&jwks).expect("json")).expect("JWKS");
        (pair, set)
    })
}

fn signed(header: &[u8], claims: &[u8]) -> Option<String> {
    let msg = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let pair = &key().0;
    let mut sig = vec![0u8; pair.public_modulus_len()];
    pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg.as_bytes(), &mut sig)
        .ok()?;
    Some(format!("{msg}.{}", B64.encode(sig)))
}

fn part(token: &str, i: usize) -> Value {
    let p = token.split('.').nth(i).expect("part");
    serde_json::from_slice(&B64.decode(p).expect("accepted part is base64url")).expect("accepted part is JSON")
}

fuzz_target!(|data: &[u8]| {
    let _ = KeySet::parse(data);
    let expect = Expect {
        issuer: "https://op.example",
        client_id: "kf",
        now: NOW,
        algs: None,
        nonce: Some("n0"),
    };
    let check = |token: &str| {
        if let Ok(v) = verify(token, &key().1, &expect) {
            let header = part(token, 0);
            assert_eq!(header["alg"], "RS256", "the key pins RS256");
            assert!(header.get("crit").is_none(), "crit accepted: {header}");
            let claims = part(token, 1);
            assert_eq!(claims, Value::Object(v.claims.clone()));
            assert_eq!(claims["iss"], "https://op.example");
            assert_eq!(claims["nonce"], "n0");
            let aud_ok = claims["aud"] == "kf" || claims["aud"].as_array().is_some_and(|a| a.iter().any(|x| x == "kf"));
            assert!(aud_ok, "aud {}", claims["aud"]);
            let exp = claims["exp"].as_f64().expect("exp is a number");
            assert!(
                exp + LEEWAY_SECS as f64 > NOW as f64 - 1.0,
                "expired token accepted: {exp}"
            );
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
