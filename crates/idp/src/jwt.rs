//! Compact JWS (RS256) signing and verification with the process's one crypto provider.
//!
//! Invariants: verification accepts exactly `alg: RS256` with a `kid` from our own key set, so
//! `alg: none`, HS256-with-the-public-key and foreign keys are rejected before any claim is read;
//! a `crit` header is refused (we understand no extensions, RFC 7515 §4.1.11), and `typ`, when
//! present, must be `JWT`/`application/jwt` or the typ the caller names (e.g. `at+jwt`), compared
//! case-insensitively (RFC 7515 §4.1.9, RFC 8725 §3.11).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a token was rejected. Callers answer all of these the same way (401) and log the detail.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts or not JSON.
    #[error("malformed token")]
    Malformed,
    /// `alg` other than RS256.
    #[error("unsupported algorithm {0:?}")]
    Algorithm(String),
    /// `kid` not in the key set.
    #[error("unknown signing key")]
    UnknownKey,
    /// Signature does not verify.
    #[error("bad signature")]
    Signature,
    /// Signing failed.
    #[error("signing failed")]
    Sign,
    /// A `crit` header (extensions we do not understand).
    #[error("critical header extension")]
    Critical,
    /// A `typ` header naming another kind of token.
    #[error("unexpected token type {0:?}")]
    Type(String),
}

/// The `typ` of kfsec's access tokens (RFC 9068): never accepted where an ID token is expected.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing)]
    crit: Option<serde_json::Value>,
}

/// A private RSA signing key with its key id.
pub struct SigningKey {
    kid: String,
    pair: KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh RSA-2048 key.
    pub fn generate(kid: String) -> Result<Self, JwtError> {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| JwtError::Sign)?;
        Ok(Self { kid, pair })
    }
    /// Loads a key from PKCS#8 DER.
    pub fn from_pkcs8(kid: String, der: &[u8]) -> Result<Self, JwtError> {
        let pair = KeyPair::from_pkcs8(der).map_err(|_| JwtError::Malformed)?;
        Ok(Self { kid, pair })
    }
    /// PKCS#8 DER encoding of the private key.
    pub fn to_pkcs8(&self) -> Result<Vec<u8>, JwtError> {
        use aws_lc_rs::encoding::AsDer;
        let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> = self.pair.as_der().map_err(|_| JwtError::Sign)?;
        Ok(der.as_ref().to_vec())
    }
    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }
    /// The public half.
    pub fn public(&self) -> VerifyingKey {
        let pk = self.pair.public_key();
        VerifyingKey {
            kid: self.kid.clone(),
            n: pk.modulus().big_endian_without_leading_zero().to_vec(),
            e: pk.exponent().big_endian_without_leading_zero().to_vec(),
        }
    }
    /// Signs `claims` as a compact JWS.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, JwtError> {
        self.sign_typed(claims, None)
    }

    /// Signs `claims` as a compact JWS with header `typ` (e.g. [`ACCESS_TOKEN_TYP`]).
    pub fn sign_typed<T: Serialize>(&self, claims: &T, typ: Option<&str>) -> Result<String, JwtError> {
        let header = Header {
            alg: "RS256".into(),
            kid: self.kid.clone(),
            typ: typ.map(str::to_owned),
            crit: None,
        };
        let h = serde_json::to_vec(&header).map_err(|_| JwtError::Sign)?;
        let c = serde_json::to_vec(claims).map_err(|_| JwtError::Sign)?;
        let mut out = String::with_capacity(h.len() * 2 + c.len() * 2 + 360);
        B64.encode_string(h, &mut out);
        out.push('.');
        B64.encode_string(c, &mut out);
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        // aws-lc-rs's RSA API takes its own SecureRandom (not a kfsec Rng); PKCS#1 v1.5 signatures
        // are deterministic, so nothing observable depends on it.
        #[allow(clippy::disallowed_methods)]
        let rng = SystemRandom::new();
        self.pair
            .sign(&RSA_PKCS1_SHA256, &rng, out.as_bytes(), &mut sig)
            .map_err(|_| JwtError::Sign)?;
        out.push('.');
        B64.encode_string(sig, &mut out);
        Ok(out)
    }
}

/// A public RSA key as published in JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyingKey {
    /// Key id.
    pub kid: String,
    /// Modulus, big-endian.
    #[serde(with = "b64bytes")]
    pub n: Vec<u8>,
    /// Exponent, big-endian.
    #[serde(with = "b64bytes")]
    pub e: Vec<u8>,
}

impl VerifyingKey {
    /// The JWK form (`kty: RSA`, `use: sig`, `alg: RS256`).
    pub fn to_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "use": "sig",
            "kty": "RSA",
            "kid": self.kid,
            "alg": "RS256",
            "n": B64.encode(&self.n),
            "e": B64.encode(&self.e),
        })
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), JwtError> {
        PublicKeyComponents {
            n: self.n.as_slice(),
            e: self.e.as_slice(),
        }
        .verify(&RSA_PKCS1_2048_8192_SHA256, msg, sig)
        .map_err(|_| JwtError::Signature)
    }
}

mod b64bytes {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s).map_err(serde::de::Error::custom)
    }
}

/// Verifies a compact JWS against `keys` and decodes its claims. Only the signature and the
/// header are checked here (`typ` absent or plain JWT); the caller checks `iss`, `aud`, `exp`,
/// `nbf`, `iat` and `nonce`.
pub fn verify<'k, T: DeserializeOwned>(
    token: &str,
    keys: impl IntoIterator<Item = &'k VerifyingKey>,
) -> Result<T, JwtError> {
    verify_with_typ(token, keys, None).map(|(c, _)| c)
}

/// Whether a header `typ` is acceptable: absent, `JWT`/`application/jwt`, or `also`
/// (`x` and `application/x` alike), case-insensitively.
fn typ_ok(typ: Option<&str>, also: Option<&str>) -> bool {
    typ.is_none_or(|t| typ_is(t, "jwt") || also.is_some_and(|a| typ_is(t, a)))
}

/// `typ` equals `want`, ignoring case and an `application/` prefix (RFC 7515 §4.1.9).
fn typ_is(typ: &str, want: &str) -> bool {
    let t = typ.to_ascii_lowercase();
    t.strip_prefix("application/").unwrap_or(&t).eq_ignore_ascii_case(want)
}

/// Like [`verify`], also accepting header `typ` `also` (e.g. [`ACCESS_TOKEN_TYP`]); returns the
/// claims and whether the token carried that typ.
pub fn verify_with_typ<'k, T: DeserializeOwned>(
    token: &str,
    keys: impl IntoIterator<Item = &'k VerifyingKey>,
    also: Option<&str>,
) -> Result<(T, bool), JwtError> {
    if token.len() > 16 * 1024 {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.splitn(4, '.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed);
    };
    let header: Header = json_part(h)?;
    if header.alg != "RS256" {
        return Err(JwtError::Algorithm(header.alg));
    }
    if header.crit.is_some() {
        return Err(JwtError::Critical);
    }
    if !typ_ok(header.typ.as_deref(), also) {
        return Err(JwtError::Type(header.typ.unwrap_or_default()));
    }
    let is_also = matches!((header.typ.as_deref(), also), (Some(t), Some(a)) if typ_is(t, a));
    let key = keys
        .into_iter()
        .find(|k| k.kid == header.kid)
        .ok_or(JwtError::UnknownKey)?;
    let sig = B64.decode(s).map_err(|_| JwtError::Malformed)?;
    let signed_len = h.len() + 1 + c.len();
    key.verify(token.as_bytes().get(..signed_len).ok_or(JwtError::Malformed)?, &sig)?;
    let claims = json_part(c)?;
    Ok((claims, is_also))
}

/// A base64url part that must hold UTF-8 JSON (RFC 7515 §5.2). UTF-8 is checked for the whole
/// part first: serde_json does not validate strings it skips (unknown header members), and a
/// header no other JSON parser accepts must not be accepted here either.
fn json_part<T: DeserializeOwned>(part: &str) -> Result<T, JwtError> {
    let bytes = B64.decode(part).map_err(|_| JwtError::Malformed)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| JwtError::Malformed)?;
    serde_json::from_str(text).map_err(|_| JwtError::Malformed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // signs test tokens with aws-lc-rs, whose RSA API takes its own SecureRandom
    use super::*;

    fn forge(header: &str, claims: &str, sig: &[u8]) -> String {
        format!("{}.{}.{}", B64.encode(header), B64.encode(claims), B64.encode(sig))
    }

    #[test]
    fn round_trip_and_attacks() {
        let k = SigningKey::generate("k1".into()).unwrap();
        let pubk = k.public();
        let t = k.sign(&serde_json::json!({"sub": "a"})).unwrap();
        let v: serde_json::Value = verify(&t, [&pubk]).unwrap();
        assert_eq!(v["sub"], "a");

        // alg none
        let none = forge(r#"{"alg":"none","kid":"k1"}"#, r#"{"sub":"a"}"#, b"");
        assert_eq!(
            verify::<serde_json::Value>(&none, [&pubk]),
            Err(JwtError::Algorithm("none".into()))
        );
        // HS256 keyed with the public key
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &pubk.n);
        let h = B64.encode(r#"{"alg":"HS256","kid":"k1"}"#);
        let c = B64.encode(r#"{"sub":"a"}"#);
        let tag = aws_lc_rs::hmac::sign(&key, format!("{h}.{c}").as_bytes());
        let hs = format!("{h}.{c}.{}", B64.encode(tag.as_ref()));
        assert!(matches!(
            verify::<serde_json::Value>(&hs, [&pubk]),
            Err(JwtError::Algorithm(_))
        ));
        // tampered claims
        let mut parts: Vec<&str> = t.split('.').collect();
        let evil = B64.encode(r#"{"sub":"b"}"#);
        parts[1] = &evil;
        assert_eq!(
            verify::<serde_json::Value>(&parts.join("."), [&pubk]),
            Err(JwtError::Signature)
        );
        // unknown key
        let other = SigningKey::generate("k2".into()).unwrap();
        let t2 = other.sign(&serde_json::json!({})).unwrap();
        assert_eq!(verify::<serde_json::Value>(&t2, [&pubk]), Err(JwtError::UnknownKey));
        // pkcs8 round trip keeps the public key
        let again = SigningKey::from_pkcs8("k1".into(), &k.to_pkcs8().unwrap()).unwrap();
        assert_eq!(again.public(), pubk);
        assert_eq!(verify::<serde_json::Value>("a.b", [&pubk]), Err(JwtError::Malformed));
    }

    fn signed_with_header(k: &SigningKey, header: &serde_json::Value) -> String {
        let h = B64.encode(serde_json::to_vec(header).unwrap());
        let c = B64.encode(br#"{"sub":"a"}"#);
        let msg = format!("{h}.{c}");
        let mut sig = vec![0u8; k.pair.public_modulus_len()];
        k.pair
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg.as_bytes(), &mut sig)
            .unwrap();
        format!("{msg}.{}", B64.encode(sig))
    }

    /// Found by the `jwt_verify` fuzz target: an unknown header member holding bytes that are
    /// not UTF-8 was skipped unchecked by serde_json, so a header no JSON parser accepts was
    /// accepted. Both parts must be UTF-8 JSON.
    #[test]
    fn parts_that_are_not_utf8_json_are_malformed() {
        let k = SigningKey::generate("k1".into()).unwrap();
        let pubk = k.public();
        let sign = |h: &[u8], c: &[u8]| {
            let msg = format!("{}.{}", B64.encode(h), B64.encode(c));
            let mut sig = vec![0u8; k.pair.public_modulus_len()];
            k.pair
                .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg.as_bytes(), &mut sig)
                .unwrap();
            format!("{msg}.{}", B64.encode(sig))
        };
        let bad_header = b"{\"alg\":\"RS256\",\"kid\":\"k1\",\"cri4\":[\"exp\xca\xca\xca\xca\xca\"]}";
        assert_eq!(
            verify::<serde_json::Value>(&sign(bad_header, b"{}"), [&pubk]),
            Err(JwtError::Malformed)
        );
        let bad_claims = b"{\"sub\":\"a\",\"x\":\"\xff\"}";
        let good_header = br#"{"alg":"RS256","kid":"k1"}"#;
        assert_eq!(
            verify::<serde_json::Value>(&sign(good_header, bad_claims), [&pubk]),
            Err(JwtError::Malformed)
        );
        assert!(verify::<serde_json::Value>(&sign(good_header, br#"{"sub":"a"}"#), [&pubk]).is_ok());
    }

    #[test]
    fn header_crit_and_typ() {
        let k = SigningKey::generate("k1".into()).unwrap();
        let pubk = k.public();
        let v = |h: serde_json::Value| verify::<serde_json::Value>(&signed_with_header(&k, &h), [&pubk]);
        for ok in ["JWT", "jwt", "application/jwt", "Application/JWT"] {
            assert!(
                v(serde_json::json!({"alg":"RS256","kid":"k1","typ":ok})).is_ok(),
                "{ok}"
            );
        }
        assert!(v(serde_json::json!({"alg":"RS256","kid":"k1"})).is_ok());
        for bad in ["at+jwt", "application/at+jwt", "JOSE", "", "secevent+jwt", "dpop+jwt"] {
            assert_eq!(
                v(serde_json::json!({"alg":"RS256","kid":"k1","typ":bad})),
                Err(JwtError::Type(bad.into())),
                "{bad}"
            );
        }
        for crit in [
            serde_json::json!(["exp"]),
            serde_json::json!([]),
            serde_json::json!("b64"),
        ] {
            assert_eq!(
                v(serde_json::json!({"alg":"RS256","kid":"k1","crit":crit})),
                Err(JwtError::Critical)
            );
        }
        // an access token verifies only where its typ is named, and says so
        let at = k
            .sign_typed(&serde_json::json!({"sub":"a"}), Some(ACCESS_TOKEN_TYP))
            .unwrap();
        assert_eq!(
            verify::<serde_json::Value>(&at, [&pubk]),
            Err(JwtError::Type(ACCESS_TOKEN_TYP.into()))
        );
        let (_, is_at) = verify_with_typ::<serde_json::Value>(&at, [&pubk], Some(ACCESS_TOKEN_TYP)).unwrap();
        assert!(is_at);
        let id = k.sign(&serde_json::json!({"sub":"a"})).unwrap();
        let (_, is_at) = verify_with_typ::<serde_json::Value>(&id, [&pubk], Some(ACCESS_TOKEN_TYP)).unwrap();
        assert!(!is_at);
    }
}
