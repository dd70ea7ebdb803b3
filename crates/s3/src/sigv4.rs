//! `sigv4`: AWS Signature Version 4 for S3 — parse and verify header auth and presigned URLs,
//! and sign requests to the upstream with the same canonicalisation code. Pure logic: time is a
//! parameter, keys are handed in.
//!
//! Invariants: the parser is strict (one of each parameter, lower-case sorted `SignedHeaders`
//! containing `host`, 64 lower-case hex signature, bounded lengths) and answers
//! `AuthorizationHeaderMalformed` / `AuthorizationQueryParametersError` for anything else; every
//! `x-amz-*` header present must be signed; the scope must be `<X-Amz-Date's date>/<our
//! region>/s3/aws4_request`; header auth is refused beyond 15 minutes of skew, presigned URLs
//! past `X-Amz-Date + X-Amz-Expires` (at most 7 days); signatures are compared in constant
//! time; the canonical request and string-to-sign are never rendered or logged.
//!
//! Use: [`Auth::parse`] (stateless checks, gives the access key id), look the key up, then
//! [`Auth::verify`] (or [`Auth::verify_with`] and a cached [`SigningKey`]) → [`Verified`], whose
//! [`Payload`] tells how the body must be checked (see `chunked` and `checksum`). [`sign`]
//! re-signs a request for the upstream.

use std::borrow::Cow;
use std::fmt;

use aws_lc_rs::{constant_time, digest, hmac};
use http::{HeaderMap, HeaderValue, Method, Uri};
use kfsec_types::UnixTime;

use crate::error::S3Error;
use crate::keys::AccessKey;

/// The only signing algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// `x-amz-content-sha256` for a body that is not hashed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// `x-amz-content-sha256` for an aws-chunked body with a signature per chunk.
pub const STREAMING_PAYLOAD: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
/// `x-amz-content-sha256` for signed chunks followed by signed trailers.
pub const STREAMING_PAYLOAD_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";
/// `x-amz-content-sha256` for unsigned chunks followed by (checksum) trailers.
pub const STREAMING_UNSIGNED_PAYLOAD_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
/// The largest accepted clock skew for header auth, in seconds.
pub const MAX_SKEW_SECS: u64 = 900;
/// The longest lifetime of a presigned URL (`X-Amz-Expires`), in seconds (7 days).
pub const MAX_EXPIRES_SECS: u64 = 604_800;

/// Longest accepted `Authorization` header / auth query parameter value.
const MAX_AUTH_LEN: usize = 8192;
/// Most headers a request may sign.
const MAX_SIGNED_HEADERS: usize = 128;
/// Longest accepted access key id and region.
const MAX_ID_LEN: usize = 128;

/// The parts of an HTTP request SigV4 covers, as received (raw path and query).
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The method.
    pub method: &'a Method,
    /// The request target (path and query as sent; authority for HTTP/2).
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestParts<'a> {
    /// The signature-relevant parts of a received request.
    pub fn from_parts(p: &'a http::request::Parts) -> Self {
        Self {
            method: &p.method,
            uri: &p.uri,
            headers: &p.headers,
        }
    }
}

/// A derived SigV4 signing key for one (secret, date, region) of service `s3`. Deriving costs
/// four HMACs, so a gateway may cache it per access key and day. Never printed.
#[derive(Clone)]
pub struct SigningKey {
    key: hmac::Key,
    date: String,
    region: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("date", &self.date)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// `HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), "s3"), "aws4_request")`; `date` is
    /// `YYYYMMDD`.
    pub fn derive(secret: &str, date: &str, region: &str) -> Self {
        Self::derive_for_service(secret, date, region, "s3")
    }

    /// The key for another service (AWS's generic SigV4 test suite signs for `service`).
    fn derive_for_service(secret: &str, date: &str, region: &str, service: &str) -> Self {
        let mut seed = zeroize::Zeroizing::new(Vec::with_capacity(secret.len() + 4));
        seed.extend_from_slice(b"AWS4");
        seed.extend_from_slice(secret.as_bytes());
        let k_date = hmac_raw(&seed, date.as_bytes());
        let k_region = hmac_raw(k_date.as_ref(), region.as_bytes());
        let k_service = hmac_raw(k_region.as_ref(), service.as_bytes());
        let k_signing = hmac_raw(k_service.as_ref(), b"aws4_request");
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref()),
            date: date.to_owned(),
            region: region.to_owned(),
        }
    }

    /// The scope date (`YYYYMMDD`) this key signs for.
    pub fn date(&self) -> &str {
        &self.date
    }

    /// The region this key signs for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// `HMAC-SHA256(key, msg)`.
    fn sign(&self, msg: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.key, msg);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The credential scope `<date>/<region>/s3/aws4_request`.
    fn scope(&self) -> String {
        format!("{}/{}/s3/aws4_request", self.date, self.region)
    }
}

/// HMAC-SHA256 with a raw key; the result is wiped when dropped.
fn hmac_raw(key: &[u8], msg: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    zeroize::Zeroizing::new(hmac::sign(&k, msg).as_ref().to_vec())
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    kfsec_types::hex::encode(bytes)
}

/// Decodes exactly 64 lower-case hex characters.
pub(crate) fn parse_hex32(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = lower_hex_digit(pair[0])?;
        let lo = lower_hex_digit(pair[1])?;
        out[i] = (hi << 4) | lo;
    }
    Some(out)
}

fn lower_hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Constant-time equality of two signatures.
pub(crate) fn signatures_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// A request time: seconds since the epoch and its `YYYYMMDDTHHMMSSZ` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmzDate {
    time: UnixTime,
    text: String,
}

impl AmzDate {
    /// Parses `YYYYMMDDTHHMMSSZ` strictly.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
            return None;
        }
        if !b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit) {
            return None;
        }
        let rfc = format!(
            "{}-{}-{}T{}:{}:{}Z",
            &s[0..4],
            &s[4..6],
            &s[6..8],
            &s[9..11],
            &s[11..13],
            &s[13..15]
        );
        let secs = kfsec_types::time::parse_rfc3339(&rfc)?;
        let secs = u64::try_from(secs).ok()?;
        // Reject what the calendar parser normalised (e.g. Feb 30) by formatting back.
        let back = Self::from_time(UnixTime::from_secs(secs));
        (back.text == s).then_some(back)
    }

    /// The `YYYYMMDDTHHMMSSZ` form of `t` (whole seconds).
    pub fn from_time(t: UnixTime) -> Self {
        let rfc = t.to_rfc3339();
        let text: String = rfc.chars().filter(|c| *c != '-' && *c != ':').collect();
        Self {
            time: UnixTime::from_secs(t.as_secs()),
            text,
        }
    }

    /// The time.
    pub fn time(&self) -> UnixTime {
        self.time
    }

    /// `YYYYMMDDTHHMMSSZ`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `YYYYMMDD`.
    pub fn date(&self) -> &str {
        self.text.get(..8).unwrap_or_default()
    }
}

/// How the request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// `Authorization: AWS4-HMAC-SHA256 …`.
    Header,
    /// Presigned URL (`X-Amz-Algorithm` … query parameters), valid for `expires_secs`.
    Presigned {
        /// `X-Amz-Expires`.
        expires_secs: u64,
    },
}

/// The declared payload hash (`x-amz-content-sha256`, or `UNSIGNED-PAYLOAD` for presigned URLs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PayloadDecl {
    Sha256([u8; 32]),
    Unsigned,
    Streaming,
    StreamingTrailer,
    StreamingUnsignedTrailer,
}

/// A parsed SigV4 authentication whose stateless checks passed (format, algorithm, scope,
/// region, date, skew/expiry, signed headers). The signature is not yet verified.
#[derive(Clone)]
pub struct Auth {
    access_key_id: String,
    kind: AuthKind,
    amz_date: AmzDate,
    region: String,
    signed_headers: Vec<String>,
    signature: [u8; 32],
    payload: PayloadDecl,
    /// The exact `x-amz-content-sha256` text the client signed (or `UNSIGNED-PAYLOAD`).
    payload_text: String,
    security_token: Option<String>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("access_key_id", &self.access_key_id)
            .field("kind", &self.kind)
            .field("amz_date", &self.amz_date.text)
            .field("signed_headers", &self.signed_headers)
            .finish_non_exhaustive()
    }
}

/// The outcome of a verified signature.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The access key id that signed.
    pub access_key_id: String,
    /// The request's `X-Amz-Date`.
    pub request_time: UnixTime,
    /// Header auth or presigned URL.
    pub kind: AuthKind,
    /// How the body must be checked.
    pub payload: Payload,
}

/// How the request body is covered by the signature — what the gateway must check as it streams.
#[derive(Debug, Clone)]
pub enum Payload {
    /// The body's SHA-256 must equal this (else `XAmzContentSHA256Mismatch`).
    Sha256([u8; 32]),
    /// `UNSIGNED-PAYLOAD`: the body is not covered (checksum headers still apply).
    Unsigned,
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD`: aws-chunked, each chunk signed, chained from the seed.
    Streaming(ChunkSigner),
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER`: as `Streaming`, then signed trailers.
    StreamingTrailer(ChunkSigner),
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: aws-chunked without signatures, then trailers
    /// (whose checksum is the only integrity check).
    StreamingUnsignedTrailer,
}

impl Payload {
    /// Whether the body is `Content-Encoding: aws-chunked` framed.
    pub fn is_aws_chunked(&self) -> bool {
        matches!(
            self,
            Self::Streaming(_) | Self::StreamingTrailer(_) | Self::StreamingUnsignedTrailer
        )
    }
}

/// What verifies chunk and trailer signatures of a streaming upload: the signing key, the
/// request's date and scope, and the seed (the request's own signature).
#[derive(Clone)]
pub struct ChunkSigner {
    key: SigningKey,
    amz_date: String,
    scope: String,
    seed: [u8; 32],
}

impl fmt::Debug for ChunkSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkSigner")
            .field("amz_date", &self.amz_date)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// `hex(SHA256(""))`.
const EMPTY_SHA256_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

impl ChunkSigner {
    /// A chunk signer for a request signed with `key` at `amz_date`, whose signature is `seed`.
    pub fn new(key: SigningKey, amz_date: &AmzDate, seed: [u8; 32]) -> Self {
        let scope = key.scope();
        Self {
            key,
            amz_date: amz_date.as_str().to_owned(),
            scope,
            seed,
        }
    }

    /// The seed signature (the request's signature); the first chunk chains from it.
    pub fn seed(&self) -> [u8; 32] {
        self.seed
    }

    /// The signature of a chunk whose data hashes to `chunk_sha256`, chained from `previous`:
    /// string-to-sign `AWS4-HMAC-SHA256-PAYLOAD\n<date>\n<scope>\n<prev>\n<hash("")>\n<hash(chunk)>`.
    pub fn chunk_signature(&self, previous: &[u8; 32], chunk_sha256: &[u8; 32]) -> [u8; 32] {
        let sts = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{}\n{}",
            self.amz_date,
            self.scope,
            hex(previous),
            EMPTY_SHA256_HEX,
            hex(chunk_sha256)
        );
        self.key.sign(sts.as_bytes())
    }

    /// The signature of the trailer block hashing to `trailer_sha256`, chained from the final
    /// chunk's signature: `AWS4-HMAC-SHA256-TRAILER\n<date>\n<scope>\n<prev>\n<hash(trailers)>`.
    pub fn trailer_signature(&self, previous: &[u8; 32], trailer_sha256: &[u8; 32]) -> [u8; 32] {
        let sts = format!(
            "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{}\n{}",
            self.amz_date,
            self.scope,
            hex(previous),
            hex(trailer_sha256)
        );
        self.key.sign(sts.as_bytes())
    }
}

fn malformed(kind_is_query: bool, msg: impl Into<Cow<'static, str>>) -> S3Error {
    if kind_is_query {
        S3Error::AuthorizationQueryParametersError(msg.into())
    } else {
        S3Error::AuthorizationHeaderMalformed(msg.into())
    }
}

/// The raw fields of either auth form, before the shared checks.
struct RawAuth<'a> {
    credential: Cow<'a, str>,
    signed_headers: Cow<'a, str>,
    signature: Cow<'a, str>,
    amz_date: Option<Cow<'a, str>>,
    expires: Option<Cow<'a, str>>,
    security_token: Option<Cow<'a, str>>,
}

impl Auth {
    /// Parses the request's SigV4 authentication and makes every check that needs no key:
    /// format, algorithm, credential scope (date = `X-Amz-Date`'s, `region`, `s3`),
    /// `SignedHeaders` (contains `host` and every `x-amz-*` header present), clock skew or
    /// presigned expiry against `now`, and the `x-amz-content-sha256` value.
    ///
    /// `Ok(None)`: the request carries no authentication (anonymous).
    pub fn parse(req: RequestParts<'_>, region: &str, now: UnixTime) -> Result<Option<Self>, S3Error> {
        let header = req.headers.get_all(http::header::AUTHORIZATION);
        let mut header_iter = header.iter();
        let auth_header = header_iter.next();
        if header_iter.next().is_some() {
            return Err(S3Error::AuthorizationHeaderMalformed(
                "More than one Authorization header".into(),
            ));
        }
        let query = req.uri.query().unwrap_or("");
        let q = parse_query_auth(query)?;
        let has_query_auth = q.algorithm.is_some();
        let raw = match (auth_header, has_query_auth) {
            (Some(_), true) => {
                return Err(S3Error::InvalidArgument(
                    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified".into(),
                ));
            }
            (None, false) => {
                if q.v2_signature {
                    return Err(unsupported_mechanism());
                }
                return Ok(None);
            }
            (Some(h), false) => {
                let h = h
                    .to_str()
                    .map_err(|_| malformed(false, "The authorization header is malformed"))?;
                parse_auth_header(h)?
            }
            (None, true) => {
                if q.algorithm.as_deref() != Some(ALGORITHM) {
                    return Err(malformed(true, "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\""));
                }
                let need = |v: Option<Cow<'static, str>>, name: &'static str| {
                    v.ok_or_else(|| {
                        malformed(
                            true,
                            format!("Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters (missing {name})"),
                        )
                    })
                };
                RawAuth {
                    credential: need(q.credential, "X-Amz-Credential")?,
                    signed_headers: need(q.signed_headers, "X-Amz-SignedHeaders")?,
                    signature: need(q.signature, "X-Amz-Signature")?,
                    amz_date: Some(need(q.date, "X-Amz-Date")?),
                    expires: Some(need(q.expires, "X-Amz-Expires")?),
                    security_token: q.security_token,
                }
            }
        };
        Self::check(req, raw, has_query_auth, region, now).map(Some)
    }

    fn check(
        req: RequestParts<'_>,
        raw: RawAuth<'_>,
        is_query: bool,
        region: &str,
        now: UnixTime,
    ) -> Result<Self, S3Error> {
        // Credential=AK/date/region/s3/aws4_request
        let cred_err = || {
            malformed(
                is_query,
                "The Credential is mal-formed; expecting \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".",
            )
        };
        let parts: Vec<&str> = raw.credential.split('/').collect();
        let [ak, date, cred_region, service, terminator] = parts.as_slice() else {
            return Err(cred_err());
        };
        if ak.is_empty()
            || ak.len() > MAX_ID_LEN
            || !ak.bytes().all(|b| b.is_ascii_graphic())
            || date.len() != 8
            || !date.bytes().all(|b| b.is_ascii_digit())
            || cred_region.is_empty()
            || cred_region.len() > MAX_ID_LEN
            || !cred_region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(cred_err());
        }
        if *service != "s3" {
            return Err(malformed(
                is_query,
                "The authorization header is malformed; incorrect service. This endpoint belongs to \"s3\".",
            ));
        }
        if *terminator != "aws4_request" {
            return Err(malformed(
                is_query,
                "The authorization header is malformed; incorrect terminal. This endpoint uses \"aws4_request\".",
            ));
        }
        if *cred_region != region {
            return Err(malformed(
                is_query,
                format!(
                    "The authorization header is malformed; the region '{cred_region}' is wrong; expecting '{region}'"
                ),
            ));
        }

        // X-Amz-Date (header auth: the x-amz-date header; presigned: the query parameter).
        let date_text: Cow<'_, str> = match raw.amz_date {
            Some(d) => d,
            None => {
                let mut vals = req.headers.get_all("x-amz-date").iter();
                let v = vals.next();
                if vals.next().is_some() {
                    return Err(S3Error::AccessDenied(
                        "AWS authentication requires a valid Date or x-amz-date header".into(),
                    ));
                }
                match v.and_then(|v| v.to_str().ok()) {
                    Some(v) => Cow::Borrowed(v),
                    None => {
                        return Err(S3Error::AccessDenied(
                            "AWS authentication requires a valid Date or x-amz-date header".into(),
                        ));
                    }
                }
            }
        };
        let amz_date = AmzDate::parse(&date_text).ok_or_else(|| {
            if is_query {
                malformed(
                    true,
                    "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"",
                )
            } else {
                S3Error::AccessDenied("AWS authentication requires a valid Date or x-amz-date header".into())
            }
        })?;
        if amz_date.date() != *date {
            return Err(malformed(
                is_query,
                format!(
                    "The authorization header is malformed; Invalid credential date \"{date}\". Date is not the same as X-Amz-Date: \"{}\".",
                    amz_date.date()
                ),
            ));
        }

        // SignedHeaders: lower-case, strictly ascending (so unique), host included.
        let signed_headers = parse_signed_headers(&raw.signed_headers)
            .ok_or_else(|| malformed(is_query, "The SignedHeaders parameter is malformed"))?;
        if !signed_headers.iter().any(|h| h == "host") {
            return Err(malformed(
                is_query,
                "The SignedHeaders parameter must include the host header",
            ));
        }

        let signature = parse_hex32(raw.signature.as_bytes())
            .ok_or_else(|| malformed(is_query, "The Signature is not 64 lower-case hex characters"))?;

        // Time: skew for header auth; validity window for presigned URLs.
        let kind = match raw.expires {
            None => {
                let t = amz_date.time().as_secs();
                let n = now.as_secs();
                if t.abs_diff(n) > MAX_SKEW_SECS {
                    return Err(S3Error::RequestTimeTooSkewed {
                        request_time: amz_date.time(),
                        server_time: now,
                    });
                }
                AuthKind::Header
            }
            Some(exp) => {
                let expires_secs = parse_expires(&exp)?;
                let t = amz_date.time().as_secs();
                let n = now.as_secs();
                if t > n.saturating_add(MAX_SKEW_SECS) {
                    return Err(S3Error::RequestTimeTooSkewed {
                        request_time: amz_date.time(),
                        server_time: now,
                    });
                }
                let expired_at = t.saturating_add(expires_secs);
                if n > expired_at {
                    return Err(S3Error::RequestExpired {
                        expires_secs,
                        expired_at: UnixTime::from_secs(expired_at),
                        server_time: now,
                    });
                }
                AuthKind::Presigned { expires_secs }
            }
        };

        // Every x-amz-* header present must be signed.
        let mut unsigned: Vec<&str> = Vec::new();
        for name in req.headers.keys() {
            let n = name.as_str();
            if n.starts_with("x-amz-") && signed_headers.binary_search_by(|h| h.as_str().cmp(n)).is_err() {
                unsigned.push(n);
            }
        }
        if !unsigned.is_empty() {
            unsigned.sort_unstable();
            return Err(S3Error::HeadersNotSigned(unsigned.join(",")));
        }

        // The payload hash.
        let sha_header = single_header(req.headers, "x-amz-content-sha256")?;
        let (payload, payload_text) = match (sha_header, kind) {
            (Some(v), _) => (parse_payload_decl(v)?, v.to_owned()),
            (None, AuthKind::Presigned { .. }) => (PayloadDecl::Unsigned, UNSIGNED_PAYLOAD.to_owned()),
            (None, AuthKind::Header) => {
                return Err(S3Error::InvalidRequest(
                    "Missing required header for this request: x-amz-content-sha256".into(),
                ));
            }
        };
        if matches!(kind, AuthKind::Presigned { .. })
            && !matches!(payload, PayloadDecl::Unsigned | PayloadDecl::Sha256(_))
        {
            return Err(S3Error::InvalidRequest(
                "Presigned URLs do not support streaming payloads".into(),
            ));
        }

        let security_token = match raw.security_token {
            Some(t) => Some(t.into_owned()),
            None => single_header(req.headers, "x-amz-security-token")?.map(str::to_owned),
        };

        Ok(Self {
            access_key_id: (*ak).to_owned(),
            kind,
            region: region.to_owned(),
            amz_date,
            signed_headers,
            signature,
            payload,
            payload_text,
            security_token,
        })
    }

    /// The access key id the client claims (look the key up with it).
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// Header auth or presigned URL.
    pub fn kind(&self) -> AuthKind {
        self.kind
    }

    /// The request's `X-Amz-Date`.
    pub fn amz_date(&self) -> &AmzDate {
        &self.amz_date
    }

    /// The session token (`X-Amz-Security-Token`), if the client sent one. kfsec's keys have no
    /// sessions; the gateway decides whether to refuse it.
    pub fn security_token(&self) -> Option<&str> {
        self.security_token.as_deref()
    }

    /// The signing key this request needs from `secret` (cacheable per key id, date and region).
    pub fn signing_key(&self, secret: &str) -> SigningKey {
        SigningKey::derive(secret, self.amz_date.date(), &self.region)
    }

    /// Verifies the signature with the looked-up key: `None` (unknown, revoked or expired key)
    /// → `InvalidAccessKeyId`; a key with a different id → `InvalidAccessKeyId`.
    pub fn verify(&self, req: RequestParts<'_>, key: Option<&AccessKey>) -> Result<Verified, S3Error> {
        let Some(key) = key else {
            return Err(S3Error::InvalidAccessKeyId);
        };
        if key.id != self.access_key_id {
            return Err(S3Error::InvalidAccessKeyId);
        }
        self.verify_with(req, &self.signing_key(&key.secret))
    }

    /// Verifies the signature with an already derived (cached) signing key. A key for another
    /// date or region than the request's scope fails as `SignatureDoesNotMatch`.
    pub fn verify_with(&self, req: RequestParts<'_>, key: &SigningKey) -> Result<Verified, S3Error> {
        if key.date != self.amz_date.date() || key.region != self.region {
            return Err(S3Error::SignatureDoesNotMatch);
        }
        let creq = canonical_request(
            req.method,
            req.uri,
            req.headers,
            &self.signed_headers,
            &self.payload_text,
            matches!(self.kind, AuthKind::Presigned { .. }),
        )?;
        let sts = string_to_sign(&self.amz_date, &key.scope(), &creq);
        let expected = key.sign(sts.as_bytes());
        if !signatures_equal(&expected, &self.signature) {
            return Err(S3Error::SignatureDoesNotMatch);
        }
        let signer = || ChunkSigner::new(key.clone(), &self.amz_date, self.signature);
        let payload = match self.payload {
            PayloadDecl::Sha256(h) => Payload::Sha256(h),
            PayloadDecl::Unsigned => Payload::Unsigned,
            PayloadDecl::Streaming => Payload::Streaming(signer()),
            PayloadDecl::StreamingTrailer => Payload::StreamingTrailer(signer()),
            PayloadDecl::StreamingUnsignedTrailer => Payload::StreamingUnsignedTrailer,
        };
        Ok(Verified {
            access_key_id: self.access_key_id.clone(),
            request_time: self.amz_date.time(),
            kind: self.kind,
            payload,
        })
    }
}

fn unsupported_mechanism() -> S3Error {
    S3Error::InvalidRequest(
        "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.".into(),
    )
}

/// At most one value of a header, as text.
pub(crate) fn single_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, S3Error> {
    let mut it = headers.get_all(name).iter();
    let Some(v) = it.next() else {
        return Ok(None);
    };
    if it.next().is_some() {
        return Err(S3Error::InvalidArgument(
            format!("Multiple {name} headers are not allowed").into(),
        ));
    }
    v.to_str()
        .map(Some)
        .map_err(|_| S3Error::InvalidArgument(format!("Invalid {name} header").into()))
}

fn parse_payload_decl(v: &str) -> Result<PayloadDecl, S3Error> {
    Ok(match v {
        UNSIGNED_PAYLOAD => PayloadDecl::Unsigned,
        STREAMING_PAYLOAD => PayloadDecl::Streaming,
        STREAMING_PAYLOAD_TRAILER => PayloadDecl::StreamingTrailer,
        STREAMING_UNSIGNED_PAYLOAD_TRAILER => PayloadDecl::StreamingUnsignedTrailer,
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD" | "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER" => {
            return Err(S3Error::NotImplemented(
                "SigV4a (ECDSA) streaming payloads are not supported".into(),
            ));
        }
        _ => match parse_hex32(v.as_bytes()) {
            Some(h) => PayloadDecl::Sha256(h),
            None => {
                return Err(S3Error::InvalidArgument(
                    "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER or a valid sha256 value.".into(),
                ));
            }
        },
    })
}

fn parse_expires(s: &str) -> Result<u64, S3Error> {
    if s.is_empty() || s.len() > 7 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(true, "X-Amz-Expires should be a number"));
    }
    let n: u64 = s
        .parse()
        .map_err(|_| malformed(true, "X-Amz-Expires should be a number"))?;
    if n == 0 {
        return Err(malformed(true, "X-Amz-Expires must be non-negative"));
    }
    if n > MAX_EXPIRES_SECS {
        return Err(malformed(
            true,
            "X-Amz-Expires must be less than a week (in seconds) that is 604800",
        ));
    }
    Ok(n)
}

/// `a;b;c` → names, if each is a non-empty lower-case token and the list is strictly ascending.
fn parse_signed_headers(s: &str) -> Option<Vec<String>> {
    if s.is_empty() || s.len() > MAX_AUTH_LEN {
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    for name in s.split(';') {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
        {
            return None;
        }
        if let Some(prev) = out.last()
            && prev.as_str() >= name
        {
            return None;
        }
        out.push(name.to_owned());
        if out.len() > MAX_SIGNED_HEADERS {
            return None;
        }
    }
    Some(out)
}

/// `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…` (", " or "," between the
/// three parameters, each exactly once, nothing else).
fn parse_auth_header(h: &str) -> Result<RawAuth<'_>, S3Error> {
    let bad = || malformed(false, "The authorization header is malformed");
    if h.len() > MAX_AUTH_LEN {
        return Err(bad());
    }
    let Some(rest) = h.strip_prefix(ALGORITHM) else {
        if h.starts_with("AWS ") {
            return Err(unsupported_mechanism());
        }
        return Err(malformed(
            false,
            "The authorization header is malformed; the authorization mechanism is not supported. Please use AWS4-HMAC-SHA256.",
        ));
    };
    let rest = rest.strip_prefix(' ').ok_or_else(bad)?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for (i, part) in rest.split(',').enumerate() {
        let part = if i == 0 {
            part
        } else {
            part.strip_prefix(' ').unwrap_or(part)
        };
        let (name, value) = part.split_once('=').ok_or_else(bad)?;
        if value.is_empty() || value.bytes().any(|b| b == b' ' || b == b'\t' || !b.is_ascii_graphic()) {
            return Err(bad());
        }
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => return Err(bad()),
        };
        if slot.replace(Cow::Borrowed(value)).is_some() {
            return Err(bad());
        }
    }
    Ok(RawAuth {
        credential: credential.ok_or_else(bad)?,
        signed_headers: signed_headers.ok_or_else(bad)?,
        signature: signature.ok_or_else(bad)?,
        amz_date: None,
        expires: None,
        security_token: None,
    })
}

/// The auth-relevant query parameters (decoded).
#[derive(Default)]
struct QueryAuth {
    algorithm: Option<Cow<'static, str>>,
    credential: Option<Cow<'static, str>>,
    signed_headers: Option<Cow<'static, str>>,
    signature: Option<Cow<'static, str>>,
    date: Option<Cow<'static, str>>,
    expires: Option<Cow<'static, str>>,
    security_token: Option<Cow<'static, str>>,
    /// SigV2 query auth (`Signature` + `AWSAccessKeyId`), which is refused.
    v2_signature: bool,
}

fn parse_query_auth(query: &str) -> Result<QueryAuth, S3Error> {
    let mut q = QueryAuth::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "X-Amz-Algorithm" => &mut q.algorithm,
            "X-Amz-Credential" => &mut q.credential,
            "X-Amz-SignedHeaders" => &mut q.signed_headers,
            "X-Amz-Signature" => &mut q.signature,
            "X-Amz-Date" => &mut q.date,
            "X-Amz-Expires" => &mut q.expires,
            "X-Amz-Security-Token" => &mut q.security_token,
            "AWSAccessKeyId" => {
                q.v2_signature = true;
                continue;
            }
            _ => continue,
        };
        if value.len() > MAX_AUTH_LEN {
            return Err(malformed(true, format!("{name} is too long")));
        }
        let decoded = percent_decode(value.as_bytes())
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| malformed(true, format!("{name} is not valid percent-encoded UTF-8")))?;
        if slot.replace(Cow::Owned(decoded)).is_some() {
            return Err(malformed(true, format!("{name} is given more than once")));
        }
    }
    Ok(q)
}

/// Decodes `%XX` escapes; `None` for a `%` not followed by two hex digits.
pub fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            let hi = s.get(i + 1).and_then(|c| (*c as char).to_digit(16))?;
            let lo = s.get(i + 2).and_then(|c| (*c as char).to_digit(16))?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

/// SigV4's URI encoding: RFC 3986 unreserved characters kept, everything else `%XX` (upper-case
/// hex); `/` kept when `keep_slash`.
pub fn uri_encode(out: &mut String, bytes: &[u8], keep_slash: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
    }
}

/// The canonical URI of a raw request path: each `/`-separated segment percent-decoded and
/// encoded once (S3 does not normalise `.`/`..` or double slashes). A malformed escape →
/// `InvalidURI`.
pub fn canonical_uri(raw_path: &str) -> Result<String, S3Error> {
    if raw_path.is_empty() {
        return Ok("/".to_owned());
    }
    let mut out = String::with_capacity(raw_path.len() + 8);
    for (i, seg) in raw_path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let dec = percent_decode(seg.as_bytes()).ok_or(S3Error::InvalidUri)?;
        uri_encode(&mut out, &dec, false);
    }
    Ok(out)
}

/// The canonical query string: parameters decoded, re-encoded, sorted by name then value;
/// `X-Amz-Signature` left out when `presigned`.
pub fn canonical_query(raw_query: &str, presigned: bool) -> Result<String, S3Error> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if presigned && name == "X-Amz-Signature" {
            continue;
        }
        let mut n = String::with_capacity(name.len());
        uri_encode(
            &mut n,
            &percent_decode(name.as_bytes()).ok_or(S3Error::InvalidUri)?,
            false,
        );
        let mut v = String::with_capacity(value.len());
        uri_encode(
            &mut v,
            &percent_decode(value.as_bytes()).ok_or(S3Error::InvalidUri)?,
            false,
        );
        pairs.push((n, v));
    }
    pairs.sort_unstable();
    let mut out = String::with_capacity(raw_query.len() + 8);
    for (i, (n, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(n);
        out.push('=');
        out.push_str(v);
    }
    Ok(out)
}

/// A header value with leading/trailing whitespace trimmed and inner runs collapsed to one space.
fn push_trimmed_value(out: &mut Vec<u8>, v: &[u8]) {
    let mut pending_space = false;
    let mut started = false;
    for &b in v {
        if b == b' ' || b == b'\t' {
            pending_space = started;
        } else {
            if pending_space {
                out.push(b' ');
                pending_space = false;
            }
            out.push(b);
            started = true;
        }
    }
}

/// The `Host` a request was sent to: the header, else the URI's authority (HTTP/2).
fn host_of<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a [u8]> {
    headers
        .get(http::header::HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| uri.authority().map(|a| a.as_str().as_bytes()))
}

/// The canonical request (bytes): method, URI, query, headers, signed-header list, payload hash.
fn canonical_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    signed_headers: &[String],
    payload_hash: &str,
    presigned: bool,
) -> Result<Vec<u8>, S3Error> {
    let mut out: Vec<u8> = Vec::with_capacity(512);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_uri(uri.path())?.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_query(uri.query().unwrap_or(""), presigned)?.as_bytes());
    out.push(b'\n');
    for name in signed_headers {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        if name == "host" {
            if let Some(h) = host_of(uri, headers) {
                push_trimmed_value(&mut out, h);
            }
        } else {
            for (i, v) in headers.get_all(name.as_str()).iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_trimmed_value(&mut out, v.as_bytes());
            }
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    for (i, name) in signed_headers.iter().enumerate() {
        if i > 0 {
            out.push(b';');
        }
        out.extend_from_slice(name.as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(payload_hash.as_bytes());
    Ok(out)
}

fn string_to_sign(date: &AmzDate, scope: &str, canonical_request: &[u8]) -> String {
    format!(
        "{ALGORITHM}\n{}\n{scope}\n{}",
        date.as_str(),
        hex(&sha256(canonical_request))
    )
}

/// Credentials to sign a request with (the upstream's).
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// The access key id.
    pub access_key_id: &'a str,
    /// The secret access key.
    pub secret: &'a str,
    /// An optional session token, sent as `x-amz-security-token`.
    pub session_token: Option<&'a str>,
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Signs a request with SigV4 header auth: sets `x-amz-date`, `x-amz-content-sha256` (=
/// `payload_hash`: a lower-case hex SHA-256 or [`UNSIGNED_PAYLOAD`]), `x-amz-security-token`
/// if any, `host` when absent (from the URI's authority), and `Authorization`. Signs `host`,
/// `content-md5`, `content-type` and every `x-amz-*` header present. `uri` must be the exact
/// path and query that will be sent; send the path in [`canonical_uri`] form (each segment
/// encoded once, as [`uri_encode`] does), so that an upstream which signs the path as received
/// (botocore-based verifiers such as moto do) computes the same canonical request.
pub fn sign(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    creds: &Credentials<'_>,
    region: &str,
    now: UnixTime,
    payload_hash: &str,
) -> Result<(), S3Error> {
    let key = SigningKey::derive(creds.secret, AmzDate::from_time(now).date(), region);
    sign_with(
        method,
        uri,
        headers,
        creds.access_key_id,
        creds.session_token,
        &key,
        now,
        payload_hash,
    )
}

/// [`sign`] with a derived (cached) signing key; `key` must be for `now`'s date.
#[allow(clippy::too_many_arguments)]
pub fn sign_with(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    access_key_id: &str,
    session_token: Option<&str>,
    key: &SigningKey,
    now: UnixTime,
    payload_hash: &str,
) -> Result<(), S3Error> {
    let internal = |what: &'static str| S3Error::InternalError(Some(what.into()));
    let date = AmzDate::from_time(now);
    if key.date() != date.date() {
        return Err(internal("signing key is for another date"));
    }
    let hv = |s: &str| HeaderValue::from_str(s).map_err(|_| internal("unrepresentable header value"));
    headers.insert("x-amz-date", hv(date.as_str())?);
    headers.insert("x-amz-content-sha256", hv(payload_hash)?);
    if let Some(t) = session_token {
        headers.insert("x-amz-security-token", hv(t)?);
    }
    if !headers.contains_key(http::header::HOST) {
        let host = uri.authority().ok_or_else(|| internal("no host to sign"))?;
        let host = match host.port() {
            Some(p) => format!("{}:{}", host.host(), p.as_str()),
            None => host.host().to_owned(),
        };
        headers.insert(http::header::HOST, hv(&host)?);
    }
    headers.remove(http::header::AUTHORIZATION);
    let mut signed: Vec<String> = headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| *k == "host" || *k == "content-md5" || *k == "content-type" || k.starts_with("x-amz-"))
        .map(str::to_owned)
        .collect();
    signed.sort_unstable();
    signed.dedup();
    let creq = canonical_request(method, uri, headers, &signed, payload_hash, false)?;
    let sts = string_to_sign(&date, &key.scope(), &creq);
    let sig = key.sign(sts.as_bytes());
    let auth = format!(
        "{ALGORITHM} Credential={access_key_id}/{}, SignedHeaders={}, Signature={}",
        key.scope(),
        signed.join(";"),
        hex(&sig)
    );
    headers.insert(http::header::AUTHORIZATION, hv(&auth)?);
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
