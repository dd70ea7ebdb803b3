//! Verification of an upstream identity provider's ID tokens (compact JWS) against its JWKS:
//! the key set parser, the signature check and the registered-claim checks (`iss`, `aud`,
//! `exp`, `iat`, `nbf`, `nonce`).
//!
//! Invariants: upstream tokens and key sets are untrusted input. A token is accepted only if its
//! `alg` is an asymmetric algorithm kfsec implements (RS256/384/512, PS256/384/512,
//! ES256/384/512, EdDSA) — never `none` and never an HMAC (`HS*`, which would let a public key
//! act as a shared secret) — the key it names is of that algorithm's type (and curve), the key's
//! own `alg`, when published, equals the header's, and the upstream's discovery list of signing
//! algorithms, when published, contains it. The signature is checked before any claim is read;
//! a `crit` header is refused; sizes are capped before parsing.

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The largest ID token accepted (Entra ID tokens with many groups are a few tens of KiB).
pub const MAX_TOKEN: usize = 256 * 1024;
/// The most keys a key set may hold.
pub const MAX_KEYS: usize = 100;
/// Clock skew allowed on `exp`, `iat` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 60;

/// A JWS signature algorithm kfsec verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// ECDSA P-521 with SHA-512.
    ES512,
    /// Ed25519.
    EdDSA,
}

impl Alg {
    /// The algorithm a JWS `alg` names, if kfsec verifies it.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            "PS256" => Self::PS256,
            "PS384" => Self::PS384,
            "PS512" => Self::PS512,
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            "ES512" => Self::ES512,
            "EdDSA" => Self::EdDSA,
            _ => return None,
        })
    }

    /// The JWS name.
    pub fn name(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::ES512 => "ES512",
            Self::EdDSA => "EdDSA",
        }
    }

    fn rsa(self) -> Option<&'static signature::RsaParameters> {
        Some(match self {
            Self::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Self::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Self::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Self::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Self::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
            Self::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }

    fn curve(self) -> Option<Curve> {
        match self {
            Self::ES256 => Some(Curve::P256),
            Self::ES384 => Some(Curve::P384),
            Self::ES512 => Some(Curve::P521),
            _ => None,
        }
    }
}

/// An elliptic curve of an `EC` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// P-256.
    P256,
    /// P-384.
    P384,
    /// P-521.
    P521,
}

impl Curve {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "P-256" => Some(Self::P256),
            "P-384" => Some(Self::P384),
            "P-521" => Some(Self::P521),
            _ => None,
        }
    }
    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }
    fn algorithm(self) -> &'static signature::EcdsaVerificationAlgorithm {
        match self {
            Self::P256 => &signature::ECDSA_P256_SHA256_FIXED,
            Self::P384 => &signature::ECDSA_P384_SHA384_FIXED,
            Self::P521 => &signature::ECDSA_P521_SHA512_FIXED,
        }
    }
}

/// The public part of a signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { curve: Curve, point: Vec<u8> },
    Ed25519(Vec<u8>),
}

/// One usable signing key of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    kid: Option<String>,
    alg: Option<Alg>,
    key: PublicKey,
}

impl Jwk {
    /// The key id, if the key has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Whether this key may verify a token signed with `alg`: the key type (and curve) fits,
    /// and the key's own `alg`, if published, is the same.
    fn fits(&self, alg: Alg) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        match &self.key {
            PublicKey::Rsa { .. } => alg.rsa().is_some(),
            PublicKey::Ec { curve, .. } => alg.curve() == Some(*curve),
            PublicKey::Ed25519(_) => alg == Alg::EdDSA,
        }
    }

    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        match (&self.key, alg.rsa()) {
            (PublicKey::Rsa { n, e }, Some(params)) => RsaPublicKeyComponents {
                n: n.as_slice(),
                e: e.as_slice(),
            }
            .verify(params, msg, sig)
            .is_ok(),
            (PublicKey::Ec { curve, point }, _) => unparsed(curve.algorithm(), point, msg, sig),
            (PublicKey::Ed25519(x), _) => unparsed(&signature::ED25519, x, msg, sig),
            _ => false,
        }
    }
}

fn unparsed(alg: &'static dyn VerificationAlgorithm, key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(alg, key).verify(msg, sig).is_ok()
}

/// An upstream's signing keys (its `jwks_uri` document).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// Why a key set could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    /// Not a JSON object with a `keys` array.
    #[error("not a JSON Web Key Set: {0}")]
    Malformed(String),
    /// More than [`MAX_KEYS`] keys.
    #[error("more than {MAX_KEYS} keys")]
    TooMany,
}

impl KeySet {
    /// Parses a JWKS document. Keys kfsec cannot use for signatures (encryption keys, symmetric
    /// `oct` keys, unknown types or curves, malformed members) are skipped, as go-oidc skips
    /// them; the result may be empty.
    pub fn parse(body: &[u8]) -> Result<Self, JwksError> {
        let raw: RawSet = serde_json::from_slice(body).map_err(|e| JwksError::Malformed(e.to_string()))?;
        if raw.keys.len() > MAX_KEYS {
            return Err(JwksError::TooMany);
        }
        let keys = raw
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<RawKey>(v).ok())
            .filter_map(Self::usable)
            .collect();
        Ok(Self { keys })
    }

    fn usable(raw: RawKey) -> Option<Jwk> {
        if raw.use_.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        // A key that names an algorithm kfsec does not verify (HS256 on an RSA key, say) is not
        // used at all rather than used with another algorithm.
        let alg = match raw.alg.as_deref() {
            None => None,
            Some(a) => Some(Alg::from_name(a)?),
        };
        let b64 = |s: &Option<String>| s.as_deref().and_then(|s| B64.decode(s).ok());
        let key = match raw.kty.as_str() {
            "RSA" => {
                let n = strip_zeros(b64(&raw.n)?);
                let e = strip_zeros(b64(&raw.e)?);
                if n.is_empty() || e.is_empty() {
                    return None;
                }
                PublicKey::Rsa { n, e }
            }
            "EC" => {
                let curve = Curve::from_name(raw.crv.as_deref()?)?;
                let (x, y) = (b64(&raw.x)?, b64(&raw.y)?);
                let len = curve.coordinate_len();
                if x.len() != len || y.len() != len {
                    return None;
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                PublicKey::Ec { curve, point }
            }
            "OKP" if raw.crv.as_deref() == Some("Ed25519") => {
                let x = b64(&raw.x)?;
                if x.len() != 32 {
                    return None;
                }
                PublicKey::Ed25519(x)
            }
            _ => return None,
        };
        let jwk = Jwk { kid: raw.kid, alg, key };
        // The key's type must fit its own published algorithm.
        match jwk.alg {
            Some(a) if !jwk.fits(a) => None,
            _ => Some(jwk),
        }
    }

    /// The usable keys.
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    /// Whether a key with id `kid` is in the set.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

/// A verified token's parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The algorithm it was signed with.
    pub alg: Alg,
    /// Its claims.
    pub claims: Map<String, Value>,
}

/// Why an upstream ID token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a compact JWS of JSON parts, or too large.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `none`, an HMAC or another algorithm kfsec does not verify, or one the upstream does not
    /// list in its discovery document.
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(String),
    /// A `crit` header.
    #[error("critical header extension")]
    Critical,
    /// A `typ` header naming something other than a JWT.
    #[error("unexpected token type {0:?}")]
    Type(String),
    /// No key with this `kid` (or, without a `kid`, no key of the algorithm's type).
    #[error("no upstream signing key {0:?} for this algorithm")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `iss` is not the upstream's issuer.
    #[error("issuer {0:?} is not the configured issuer")]
    Issuer(String),
    /// `aud` does not contain the client id.
    #[error("audience does not contain the client id")]
    Audience,
    /// `exp` is past (beyond the leeway), or missing.
    #[error("token expired")]
    Expired,
    /// `iat` or `nbf` is in the future (beyond the leeway).
    #[error("token not valid yet")]
    NotYetValid,
    /// `nonce` is not the one this login sent.
    #[error("nonce does not match")]
    Nonce,
}

/// What a token must say to be accepted.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The issuer (`iss` must equal it).
    pub issuer: &'a str,
    /// The client id (`aud` must contain it).
    pub client_id: &'a str,
    /// Now, in seconds since the epoch.
    pub now: u64,
    /// The upstream's `id_token_signing_alg_values_supported`, if it published one.
    pub algs: Option<&'a [String]>,
    /// The nonce this login sent (checked when given).
    pub nonce: Option<&'a str>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// A token's header fields that decide which key verifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHint {
    /// The algorithm.
    pub alg: Alg,
    /// The key id, if given.
    pub kid: Option<String>,
}

struct Parts<'t> {
    signed: &'t str,
    claims: &'t str,
    sig: Vec<u8>,
    hint: KeyHint,
}

fn split<'t>(token: &'t str, expect: &Expect<'_>) -> Result<Parts<'t>, TokenError> {
    if token.len() > MAX_TOKEN {
        return Err(TokenError::Malformed("too large"));
    }
    let mut it = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(TokenError::Malformed("not three parts"));
    };
    let header: Header = json_part(h)?;
    let alg = Alg::from_name(&header.alg).ok_or_else(|| TokenError::Algorithm(header.alg.clone()))?;
    if expect.algs.is_some_and(|list| !list.iter().any(|a| a == alg.name())) {
        return Err(TokenError::Algorithm(header.alg));
    }
    if header.crit.is_some() {
        return Err(TokenError::Critical);
    }
    if let Some(t) = &header.typ {
        let lower = t.to_ascii_lowercase();
        if lower != "jwt" && lower != "application/jwt" {
            return Err(TokenError::Type(t.clone()));
        }
    }
    let sig = B64
        .decode(s)
        .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
    Ok(Parts {
        signed: token
            .get(..h.len() + 1 + c.len())
            .ok_or(TokenError::Malformed("split"))?,
        claims: c,
        sig,
        hint: KeyHint { alg, kid: header.kid },
    })
}

/// Reads the header of `token` far enough to know which key it needs (so a caller can refetch
/// the key set on an unknown `kid` before verifying). Refuses what [`verify`] would refuse in
/// the header.
pub fn key_hint(token: &str, expect: &Expect<'_>) -> Result<KeyHint, TokenError> {
    split(token, expect).map(|p| p.hint)
}

/// Verifies `token` against `keys` and checks its registered claims; returns its claims.
pub fn verify(token: &str, keys: &KeySet, expect: &Expect<'_>) -> Result<Verified, TokenError> {
    let parts = split(token, expect)?;
    let alg = parts.hint.alg;
    let kid = &parts.hint.kid;
    let candidates: Vec<&Jwk> = keys.keys.iter().filter(|k| kid.is_none() || k.kid == *kid).collect();
    if candidates.is_empty() {
        return Err(TokenError::UnknownKey(kid.clone().unwrap_or_default()));
    }
    let fitting: Vec<&&Jwk> = candidates.iter().filter(|k| k.fits(alg)).collect();
    if fitting.is_empty() {
        // The key exists but is of another type or algorithm: a downgrade attempt.
        return Err(TokenError::Algorithm(alg.name().to_owned()));
    }
    if !fitting
        .iter()
        .any(|k| k.verify(alg, parts.signed.as_bytes(), &parts.sig))
    {
        return Err(TokenError::Signature);
    }
    let claims: Map<String, Value> = json_part(parts.claims)?;
    check_claims(&claims, expect)?;
    Ok(Verified { alg, claims })
}

fn check_claims(claims: &Map<String, Value>, expect: &Expect<'_>) -> Result<(), TokenError> {
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or_default();
    if iss != expect.issuer {
        return Err(TokenError::Issuer(iss.to_owned()));
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == expect.client_id,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(expect.client_id)),
        _ => false,
    };
    if !aud_ok {
        return Err(TokenError::Audience);
    }
    let time = |name: &str| claims.get(name).and_then(numeric_date);
    match time("exp") {
        Some(exp) if expect.now < exp.saturating_add(LEEWAY_SECS) => {}
        _ => return Err(TokenError::Expired),
    }
    for name in ["iat", "nbf"] {
        if claims.contains_key(name) {
            match time(name) {
                Some(t) if t <= expect.now.saturating_add(LEEWAY_SECS) => {}
                _ => return Err(TokenError::NotYetValid),
            }
        }
    }
    if let Some(nonce) = expect.nonce
        && claims.get("nonce").and_then(Value::as_str) != Some(nonce)
    {
        return Err(TokenError::Nonce);
    }
    Ok(())
}

/// A JSON NumericDate (seconds; fractions are truncated, negatives refused).
fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e15)
            .map(|f| f as u64)
    })
}

fn json_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = B64
        .decode(part)
        .map_err(|_| TokenError::Malformed("part is not base64url"))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| TokenError::Malformed("part is not UTF-8"))?;
    serde_json::from_str(text).map_err(|_| TokenError::Malformed("part is not the expected JSON"))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // test keys sign with aws-lc-rs, whose API takes its own SecureRandom
mod tests {
    use super::*;
    use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
    use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};

    const NOW: u64 = 1_800_000_000;

    fn rsa() -> RsaKeyPair {
        RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap()
    }

    fn rsa_jwk(k: &RsaKeyPair, kid: &str, alg: Option<&str>) -> Value {
        let pk = k.public_key();
        let mut v = serde_json::json!({
            "kty": "RSA", "kid": kid, "use": "sig",
            "n": B64.encode(pk.modulus().big_endian_without_leading_zero()),
            "e": B64.encode(pk.exponent().big_endian_without_leading_zero()),
        });
        if let Some(a) = alg {
            v["alg"] = a.into();
        }
        v
    }

    fn claims() -> Value {
        serde_json::json!({"iss": "https://op.example", "aud": ["kf", "other"], "sub": "u1",
            "exp": NOW + 300, "iat": NOW, "nonce": "n0"})
    }

    fn expect() -> Expect<'static> {
        Expect {
            issuer: "https://op.example",
            client_id: "kf",
            now: NOW,
            algs: None,
            nonce: Some("n0"),
        }
    }

    fn message(header: &Value, claims: &Value) -> String {
        format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(header).unwrap()),
            B64.encode(serde_json::to_vec(claims).unwrap())
        )
    }

    fn sign_rsa(k: &RsaKeyPair, alg: &str, kid: &str, claims: &Value) -> String {
        let msg = message(&serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"}), claims);
        let pad: &dyn aws_lc_rs::signature::RsaEncoding = match alg {
            "RS256" => &signature::RSA_PKCS1_SHA256,
            "RS384" => &signature::RSA_PKCS1_SHA384,
            "RS512" => &signature::RSA_PKCS1_SHA512,
            "PS256" => &signature::RSA_PSS_SHA256,
            "PS384" => &signature::RSA_PSS_SHA384,
            _ => &signature::RSA_PSS_SHA512,
        };
        let mut sig = vec![0; k.public_modulus_len()];
        k.sign(pad, &aws_lc_rs::rand::SystemRandom::new(), msg.as_bytes(), &mut sig)
            .unwrap();
        format!("{msg}.{}", B64.encode(sig))
    }

    fn set(keys: Vec<Value>) -> KeySet {
        KeySet::parse(&serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()).unwrap()
    }

    #[test]
    fn every_rsa_algorithm_verifies_and_claims_are_checked() {
        let k = rsa();
        let keys = set(vec![rsa_jwk(&k, "k1", None)]);
        for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
            let v = verify(&sign_rsa(&k, alg, "k1", &claims()), &keys, &expect()).unwrap();
            assert_eq!(v.alg.name(), alg);
            assert_eq!(v.claims["sub"], "u1");
        }
        let bad = |c: Value| verify(&sign_rsa(&k, "RS256", "k1", &c), &keys, &expect()).unwrap_err();
        let with = |k: &str, v: Value| {
            let mut c = claims();
            c[k] = v;
            c
        };
        assert_eq!(
            bad(with("iss", "https://evil".into())),
            TokenError::Issuer("https://evil".into())
        );
        assert_eq!(bad(with("aud", "other".into())), TokenError::Audience);
        assert_eq!(bad(with("exp", (NOW - 61).into())), TokenError::Expired);
        assert_eq!(bad(with("exp", Value::Null)), TokenError::Expired);
        assert_eq!(bad(with("iat", (NOW + 61).into())), TokenError::NotYetValid);
        assert_eq!(bad(with("nbf", (NOW + 3600).into())), TokenError::NotYetValid);
        assert_eq!(bad(with("nonce", "other".into())), TokenError::Nonce);
        // Within the leeway.
        assert!(
            verify(
                &sign_rsa(&k, "RS256", "k1", &with("exp", (NOW - 59).into())),
                &keys,
                &expect()
            )
            .is_ok()
        );
    }

    #[test]
    fn ec_and_ed25519_keys_verify_their_algorithms_only() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        for (alg, sign_alg, crv, len) in [
            ("ES256", &signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32),
            ("ES384", &signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48),
        ] {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(sign_alg, &rng).unwrap();
            let kp = EcdsaKeyPair::from_pkcs8(sign_alg, pkcs8.as_ref()).unwrap();
            let point = kp.public_key().as_ref().to_vec();
            let jwk = serde_json::json!({"kty": "EC", "crv": crv, "kid": "e1",
                "x": B64.encode(&point[1..=len]), "y": B64.encode(&point[len + 1..])});
            let keys = set(vec![jwk]);
            let msg = message(&serde_json::json!({"alg": alg, "kid": "e1"}), &claims());
            let sig = kp.sign(&rng, msg.as_bytes()).unwrap();
            let token = format!("{msg}.{}", B64.encode(sig.as_ref()));
            assert_eq!(verify(&token, &keys, &expect()).unwrap().alg.name(), alg);
            // The same signature under an RSA algorithm name: refused as a downgrade.
            let msg2 = message(&serde_json::json!({"alg": "RS256", "kid": "e1"}), &claims());
            let t2 = format!("{msg2}.{}", B64.encode(sig.as_ref()));
            assert_eq!(
                verify(&t2, &keys, &expect()).unwrap_err(),
                TokenError::Algorithm("RS256".into())
            );
        }
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let keys = set(vec![
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(kp.public_key().as_ref())}),
        ]);
        let msg = message(&serde_json::json!({"alg": "EdDSA"}), &claims());
        let token = format!("{msg}.{}", B64.encode(kp.sign(msg.as_bytes()).as_ref()));
        assert_eq!(verify(&token, &keys, &expect()).unwrap().alg, Alg::EdDSA);
    }

    #[test]
    fn none_hmac_crit_typ_and_pinned_algorithms_are_refused() {
        let k = rsa();
        let keys = set(vec![rsa_jwk(&k, "k1", Some("RS256"))]);
        let unsigned = format!(
            "{}.",
            message(&serde_json::json!({"alg": "none", "kid": "k1"}), &claims())
        );
        assert_eq!(
            verify(&unsigned, &keys, &expect()).unwrap_err(),
            TokenError::Algorithm("none".into())
        );
        let hs = format!(
            "{}.AAAA",
            message(&serde_json::json!({"alg": "HS256", "kid": "k1"}), &claims())
        );
        assert_eq!(
            verify(&hs, &keys, &expect()).unwrap_err(),
            TokenError::Algorithm("HS256".into())
        );
        // The key says RS256: a PS256 signature by the same key is refused.
        assert_eq!(
            verify(&sign_rsa(&k, "PS256", "k1", &claims()), &keys, &expect()).unwrap_err(),
            TokenError::Algorithm("PS256".into())
        );
        // Discovery lists RS512 only.
        let algs = vec!["RS512".to_owned()];
        let e = Expect {
            algs: Some(&algs),
            ..expect()
        };
        assert_eq!(
            verify(&sign_rsa(&k, "RS256", "k1", &claims()), &keys, &e).unwrap_err(),
            TokenError::Algorithm("RS256".into())
        );
        let crit = message(
            &serde_json::json!({"alg": "RS256", "kid": "k1", "crit": ["x"]}),
            &claims(),
        );
        assert_eq!(
            verify(&format!("{crit}.AA"), &keys, &expect()).unwrap_err(),
            TokenError::Critical
        );
        let typ = message(
            &serde_json::json!({"alg": "RS256", "kid": "k1", "typ": "at+jwt"}),
            &claims(),
        );
        assert_eq!(
            verify(&format!("{typ}.AA"), &keys, &expect()).unwrap_err(),
            TokenError::Type("at+jwt".into())
        );
        // A bad signature, an unknown kid, garbage.
        // One signature character changed well inside it (the last one carries padding bits
        // a strict decoder refuses, which would test the decoder instead).
        let mut t = sign_rsa(&k, "RS256", "k1", &claims()).into_bytes();
        let i = t.len() - 10;
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(t).unwrap();
        assert_eq!(verify(&t, &keys, &expect()).unwrap_err(), TokenError::Signature);
        assert_eq!(
            verify(&sign_rsa(&k, "RS256", "k2", &claims()), &keys, &expect()).unwrap_err(),
            TokenError::UnknownKey("k2".into())
        );
        for junk in ["", "a.b", "a.b.c.d", "....", &"a".repeat(MAX_TOKEN + 1)] {
            assert!(
                matches!(verify(junk, &keys, &expect()), Err(TokenError::Malformed(_))),
                "{junk:.20}"
            );
        }
    }

    #[test]
    fn key_sets_skip_what_cannot_verify() {
        let k = rsa();
        let keys = set(vec![
            rsa_jwk(&k, "enc", None),
            serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"}),
            serde_json::json!({"kty": "RSA", "kid": "hs", "alg": "HS256", "n": "AQAB", "e": "AQAB"}),
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "short", "x": "AA", "y": "AA"}),
            serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES384", "kid": "mismatch",
                "x": B64.encode([1; 32]), "y": B64.encode([1; 32])}),
            serde_json::json!({"kty": "RSA", "kid": "bad", "n": "!!", "e": "AQAB"}),
            serde_json::json!("not an object"),
            rsa_jwk(&k, "k1", None),
        ]);
        let kids: Vec<_> = keys.keys().iter().map(|k| k.kid().unwrap_or("")).collect();
        assert_eq!(kids, vec!["enc", "k1"]);
        let mut enc = rsa_jwk(&k, "x", None);
        enc["use"] = "enc".into();
        assert!(set(vec![enc]).keys().is_empty());
        assert!(KeySet::parse(b"[]").is_err());
        let many: Vec<Value> = (0..=MAX_KEYS).map(|i| rsa_jwk(&k, &i.to_string(), None)).collect();
        assert_eq!(
            KeySet::parse(&serde_json::to_vec(&serde_json::json!({ "keys": many })).unwrap()),
            Err(JwksError::TooMany)
        );
    }
}
