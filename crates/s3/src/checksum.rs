//! `checksum`: streaming verification of an upload's integrity claims — `Content-MD5`,
//! `x-amz-checksum-{crc32,crc32c,crc64nvme,sha1,sha256}` (header or aws-chunked trailer) and the
//! hex `x-amz-content-sha256` of a signed single-chunk payload. Invariants: every claim the
//! client made is checked over the exact (decoded) bytes before the upload may complete; a
//! malformed claim is refused before any byte is sent upstream; at most one `x-amz-checksum-*`
//! (header or trailer) is accepted; comparisons are over fixed-size digests.
//!
//! Use: [`BodyChecks::from_request`] once the signature verified, [`BodyChecks::update`] with
//! each decoded data chunk, [`BodyChecks::finish`] with the trailers before completing the
//! upstream write.

use std::borrow::Cow;

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::HeaderMap;
use md5::Digest as _;

use crate::error::S3Error;
use crate::sigv4::{Payload, single_header};

/// An `x-amz-checksum-*` algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// CRC-32 (ISO-HDLC), 4 bytes.
    Crc32,
    /// CRC-32C (Castagnoli), 4 bytes.
    Crc32c,
    /// CRC-64/NVME, 8 bytes.
    Crc64Nvme,
    /// SHA-1, 20 bytes.
    Sha1,
    /// SHA-256, 32 bytes.
    Sha256,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Crc32,
        Algorithm::Crc32c,
        Algorithm::Crc64Nvme,
        Algorithm::Sha1,
        Algorithm::Sha256,
    ];

    /// The header (and trailer) name, e.g. `x-amz-checksum-crc32`.
    pub fn header_name(self) -> &'static str {
        match self {
            Self::Crc32 => "x-amz-checksum-crc32",
            Self::Crc32c => "x-amz-checksum-crc32c",
            Self::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Self::Sha1 => "x-amz-checksum-sha1",
            Self::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// S3's name for it (`x-amz-sdk-checksum-algorithm`, error messages), e.g. `CRC32`.
    pub fn s3_name(self) -> &'static str {
        match self {
            Self::Crc32 => "CRC32",
            Self::Crc32c => "CRC32C",
            Self::Crc64Nvme => "CRC64NVME",
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
        }
    }

    /// The algorithm of a (lower-case) header name.
    pub fn from_header_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.header_name() == name)
    }

    /// The algorithm of an `x-amz-sdk-checksum-algorithm` value (case-insensitive).
    pub fn from_s3_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.s3_name().eq_ignore_ascii_case(name))
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Crc32 | Self::Crc32c => 4,
            Self::Crc64Nvme => 8,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    /// A fresh hasher.
    pub fn hasher(self) -> Hasher {
        Hasher(match self {
            Self::Crc32 => HasherImpl::Crc32(crc32fast::Hasher::new()),
            Self::Crc32c => HasherImpl::Crc32c(0),
            Self::Crc64Nvme => HasherImpl::Crc64(!0),
            Self::Sha1 => HasherImpl::Digest(digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY)),
            Self::Sha256 => HasherImpl::Digest(digest::Context::new(&digest::SHA256)),
        })
    }

    /// The checksum of `data` (big-endian for CRCs), as S3 base64-encodes it.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let mut h = self.hasher();
        h.update(data);
        h.finish()
    }
}

/// An incremental checksum of one [`Algorithm`].
pub struct Hasher(HasherImpl);

enum HasherImpl {
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Crc64(u64),
    Digest(digest::Context),
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HasherImpl::Crc32(h) => h.update(data),
            HasherImpl::Crc32c(c) => *c = crc32c::crc32c_append(*c, data),
            HasherImpl::Crc64(c) => *c = crc64nvme_update(*c, data),
            HasherImpl::Digest(d) => d.update(data),
        }
    }

    /// The digest bytes (CRCs big-endian).
    pub fn finish(self) -> Vec<u8> {
        match self.0 {
            HasherImpl::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            HasherImpl::Crc32c(c) => c.to_be_bytes().to_vec(),
            HasherImpl::Crc64(c) => (!c).to_be_bytes().to_vec(),
            HasherImpl::Digest(d) => d.finish().as_ref().to_vec(),
        }
    }
}

/// CRC-64/NVME's table: polynomial 0xAD93D23594C93659, reflected.
const CRC64_TABLE: [u64; 256] = {
    let poly = 0xad93_d235_94c9_3659u64.reverse_bits();
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ poly } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc64nvme_update(mut crc: u64, data: &[u8]) -> u64 {
    for &b in data {
        crc = CRC64_TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    crc
}

/// Where a checksum's expected value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// Given in a request header (decoded digest bytes).
    Header(Vec<u8>),
    /// Announced by `x-amz-trailer`, sent after the body.
    Trailer,
}

/// Every integrity check a request body is subject to, fed the decoded body as it streams.
pub struct BodyChecks {
    md5: Option<(md5::Md5, [u8; 16])>,
    checksum: Option<(Algorithm, Hasher, Expected)>,
    sha256: Option<(digest::Context, [u8; 32])>,
}

impl std::fmt::Debug for BodyChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyChecks")
            .field("md5", &self.md5.is_some())
            .field("checksum", &self.checksum.as_ref().map(|c| c.0))
            .field("sha256", &self.sha256.is_some())
            .finish()
    }
}

fn invalid_value(alg: Algorithm, trailer: bool) -> S3Error {
    S3Error::InvalidRequest(Cow::Owned(format!(
        "Value for {} {} is invalid.",
        alg.header_name(),
        if trailer { "trailing header" } else { "header" }
    )))
}

/// Decodes a base64 checksum of exactly `alg.digest_len()` bytes.
pub fn decode_checksum(alg: Algorithm, value: &str, trailer: bool) -> Result<Vec<u8>, S3Error> {
    let v = B64
        .decode(value.trim().as_bytes())
        .map_err(|_| invalid_value(alg, trailer))?;
    if v.len() != alg.digest_len() {
        return Err(invalid_value(alg, trailer));
    }
    Ok(v)
}

impl BodyChecks {
    /// No checks (a body-less request).
    pub fn none() -> Self {
        Self {
            md5: None,
            checksum: None,
            sha256: None,
        }
    }

    /// The checks a request's headers and verified payload mode call for: `Content-MD5`
    /// (malformed → `InvalidDigest`), one `x-amz-checksum-*` header or the one checksum named by
    /// `x-amz-trailer` (trailer only with a `*-TRAILER` payload; both, or several →
    /// `InvalidRequest`), and the signed body SHA-256 for [`Payload::Sha256`].
    pub fn from_request(headers: &HeaderMap, payload: &Payload) -> Result<Self, S3Error> {
        let mut checks = Self::none();

        let mut md5_vals = headers.get_all("content-md5").iter();
        if let Some(v) = md5_vals.next() {
            if md5_vals.next().is_some() {
                return Err(S3Error::InvalidDigest);
            }
            let raw = v
                .to_str()
                .ok()
                .and_then(|s| B64.decode(s.trim().as_bytes()).ok())
                .ok_or(S3Error::InvalidDigest)?;
            let want: [u8; 16] = raw.try_into().map_err(|_| S3Error::InvalidDigest)?;
            checks.md5 = Some((md5::Md5::new(), want));
        }

        // Checksum headers.
        let mut found: Option<(Algorithm, Vec<u8>)> = None;
        for (name, value) in headers {
            let n = name.as_str();
            // `-mode` (GetObject: return the stored checksum), `-type` and `-algorithm`
            // (CreateMultipartUpload) carry no value to verify.
            if !n.starts_with("x-amz-checksum-")
                || matches!(
                    n,
                    "x-amz-checksum-mode" | "x-amz-checksum-type" | "x-amz-checksum-algorithm"
                )
            {
                continue;
            }
            let Some(alg) = Algorithm::from_header_name(n) else {
                return Err(S3Error::InvalidRequest(
                    format!("Unsupported checksum header {n}").into(),
                ));
            };
            if found.is_some() || headers.get_all(name).iter().count() > 1 {
                return Err(multiple_checksums());
            }
            let v = value.to_str().map_err(|_| invalid_value(alg, false))?;
            found = Some((alg, decode_checksum(alg, v, false)?));
        }

        // The announced trailer.
        let trailer = match single_header(headers, "x-amz-trailer")? {
            None => None,
            Some(v) => {
                let names: Vec<&str> = v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
                let [name] = names.as_slice() else {
                    return Err(multiple_checksums());
                };
                let lower = name.to_ascii_lowercase();
                let alg = Algorithm::from_header_name(&lower).ok_or_else(|| {
                    S3Error::InvalidRequest("The value specified in the x-amz-trailer header is not supported".into())
                })?;
                Some(alg)
            }
        };
        let trailer_mode = matches!(
            payload,
            Payload::StreamingTrailer(_) | Payload::StreamingUnsignedTrailer
        );
        if trailer.is_some() && !trailer_mode {
            return Err(S3Error::InvalidRequest(
                "x-amz-trailer needs a STREAMING-*-TRAILER x-amz-content-sha256".into(),
            ));
        }
        checks.checksum = match (found, trailer) {
            (Some(_), Some(_)) => return Err(multiple_checksums()),
            (Some((alg, want)), None) => Some((alg, alg.hasher(), Expected::Header(want))),
            (None, Some(alg)) => Some((alg, alg.hasher(), Expected::Trailer)),
            (None, None) => None,
        };

        if let Some(sdk) = single_header(headers, "x-amz-sdk-checksum-algorithm")? {
            let alg = Algorithm::from_s3_name(sdk.trim()).ok_or_else(|| {
                S3Error::InvalidRequest("Value for x-amz-sdk-checksum-algorithm header is invalid.".into())
            })?;
            if let Some((have, _, _)) = &checks.checksum
                && *have != alg
            {
                return Err(S3Error::InvalidRequest(
                    "Value for x-amz-sdk-checksum-algorithm header is invalid.".into(),
                ));
            }
        }

        if let Payload::Sha256(h) = payload {
            checks.sha256 = Some((digest::Context::new(&digest::SHA256), *h));
        }
        Ok(checks)
    }

    /// The checksum expected as a trailer, if any (the aws-chunked decoder must receive it).
    pub fn trailer(&self) -> Option<Algorithm> {
        match &self.checksum {
            Some((alg, _, Expected::Trailer)) => Some(*alg),
            _ => None,
        }
    }

    /// Whether any check is active.
    pub fn is_empty(&self) -> bool {
        self.md5.is_none() && self.checksum.is_none() && self.sha256.is_none()
    }

    /// Feeds a chunk of the (decoded) body to every active check.
    pub fn update(&mut self, data: &[u8]) {
        if let Some((h, _)) = &mut self.md5 {
            h.update(data);
        }
        if let Some((_, h, _)) = &mut self.checksum {
            h.update(data);
        }
        if let Some((h, _)) = &mut self.sha256 {
            h.update(data);
        }
    }

    /// Completes every check: the body SHA-256 (`XAmzContentSHA256Mismatch`), `Content-MD5`
    /// (`BadDigest`), the checksum from its header or from `trailers` (missing or malformed →
    /// `InvalidRequest`, mismatch → `BadDigest`).
    pub fn finish(self, trailers: &[(String, String)]) -> Result<(), S3Error> {
        if let Some((h, want)) = self.sha256 {
            let got = h.finish();
            if got.as_ref() != want.as_slice() {
                return Err(S3Error::XAmzContentSha256Mismatch {
                    client: crate::sigv4::hex(&want),
                    computed: crate::sigv4::hex(got.as_ref()),
                });
            }
        }
        if let Some((h, want)) = self.md5
            && h.finalize().as_slice() != want.as_slice()
        {
            return Err(S3Error::BadDigest);
        }
        if let Some((alg, h, expected)) = self.checksum {
            let want = match expected {
                Expected::Header(w) => w,
                Expected::Trailer => {
                    let v = trailers
                        .iter()
                        .find(|(n, _)| n == alg.header_name())
                        .map(|(_, v)| v.as_str())
                        .ok_or_else(|| {
                            S3Error::InvalidRequest(
                                format!("The {} trailing header was announced but not sent", alg.header_name()).into(),
                            )
                        })?;
                    decode_checksum(alg, v, true)?
                }
            };
            if h.finish() != want {
                return Err(S3Error::ChecksumMismatch {
                    algorithm: alg.s3_name(),
                });
            }
        }
        Ok(())
    }
}

fn multiple_checksums() -> S3Error {
    S3Error::InvalidRequest(
        "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn b64(alg: Algorithm, data: &[u8]) -> String {
        B64.encode(alg.digest(data))
    }

    #[test]
    fn check_values() {
        // The CRC catalogue's check input "123456789".
        let d = b"123456789";
        assert_eq!(Algorithm::Crc32.digest(d), 0xCBF4_3926u32.to_be_bytes());
        assert_eq!(Algorithm::Crc32c.digest(d), 0xE306_9283u32.to_be_bytes());
        assert_eq!(Algorithm::Crc64Nvme.digest(d), 0xAE8B_1486_0A79_9888u64.to_be_bytes());
        // AWS's trailer example: CRC32C of 66560 'a' is sOO8/Q==.
        assert_eq!(b64(Algorithm::Crc32c, &[b'a'; 66560]), "sOO8/Q==");
        // Incremental equals one-shot, across split points.
        for alg in Algorithm::ALL {
            let mut h = alg.hasher();
            h.update(b"1234");
            h.update(b"");
            h.update(b"56789");
            assert_eq!(h.finish(), alg.digest(d), "{alg:?}");
        }
        assert_eq!(
            crate::sigv4::hex(&Algorithm::Sha1.digest(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    fn headers(h: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in h {
            m.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn run(h: &[(&str, &str)], payload: &Payload, body: &[u8], trailers: &[(String, String)]) -> Result<(), S3Error> {
        let mut c = BodyChecks::from_request(&headers(h), payload)?;
        for part in body.chunks(3) {
            c.update(part);
        }
        c.finish(trailers)
    }

    #[test]
    fn content_md5() {
        let body = b"Welcome to Amazon S3.";
        let good = B64.encode(md5::Md5::digest(body));
        run(&[("content-md5", &good)], &Payload::Unsigned, body, &[]).unwrap();
        let e = run(
            &[("content-md5", &good)],
            &Payload::Unsigned,
            b"Welcome to Amazon S4.",
            &[],
        )
        .unwrap_err();
        assert_eq!((e.code(), e.status().as_u16()), ("BadDigest", 400));
        for bad in ["", "not base64!", "AAAA", &B64.encode([0u8; 17])] {
            let e = run(&[("content-md5", bad)], &Payload::Unsigned, body, &[]).unwrap_err();
            assert_eq!(e.code(), "InvalidDigest", "{bad}");
        }
        let e = run(
            &[("content-md5", &good), ("content-md5", &good)],
            &Payload::Unsigned,
            body,
            &[],
        )
        .unwrap_err();
        assert_eq!(e.code(), "InvalidDigest");
    }

    #[test]
    fn checksum_headers() {
        let body = b"hello world";
        for alg in Algorithm::ALL {
            let v = b64(alg, body);
            run(&[(alg.header_name(), &v)], &Payload::Unsigned, body, &[]).unwrap();
            let e = run(&[(alg.header_name(), &v)], &Payload::Unsigned, b"hello worle", &[]).unwrap_err();
            assert!(
                matches!(e, S3Error::ChecksumMismatch { algorithm } if algorithm == alg.s3_name()),
                "{e:?}"
            );
            assert_eq!(e.code(), "BadDigest");
            // Wrong length / not base64.
            let e = run(&[(alg.header_name(), "AAAA")], &Payload::Unsigned, body, &[]).unwrap_err();
            assert_eq!(e.code(), "InvalidRequest");
            let e = run(&[(alg.header_name(), "!!")], &Payload::Unsigned, body, &[]).unwrap_err();
            assert_eq!(e.code(), "InvalidRequest");
        }
        // Two algorithms at once.
        let e = run(
            &[
                ("x-amz-checksum-crc32", &b64(Algorithm::Crc32, body)),
                ("x-amz-checksum-sha1", &b64(Algorithm::Sha1, body)),
            ],
            &Payload::Unsigned,
            body,
            &[],
        )
        .unwrap_err();
        assert_eq!(e.code(), "InvalidRequest");
        // Unknown algorithm.
        let e = run(&[("x-amz-checksum-md5", "AAAA")], &Payload::Unsigned, body, &[]).unwrap_err();
        assert_eq!(e.code(), "InvalidRequest");
        // The SDK's algorithm must match the header sent.
        let e = run(
            &[
                ("x-amz-checksum-crc32", &b64(Algorithm::Crc32, body)),
                ("x-amz-sdk-checksum-algorithm", "SHA256"),
            ],
            &Payload::Unsigned,
            body,
            &[],
        )
        .unwrap_err();
        assert_eq!(e.code(), "InvalidRequest");
        run(
            &[
                ("x-amz-checksum-crc32", &b64(Algorithm::Crc32, body)),
                ("x-amz-sdk-checksum-algorithm", "crc32"),
            ],
            &Payload::Unsigned,
            body,
            &[],
        )
        .unwrap();
    }

    #[test]
    fn trailers() {
        let body = b"trailing";
        let p = Payload::StreamingUnsignedTrailer;
        let v = b64(Algorithm::Crc32, body);
        let t = vec![("x-amz-checksum-crc32".to_owned(), v.clone())];
        run(&[("x-amz-trailer", "x-amz-checksum-crc32")], &p, body, &t).unwrap();
        let e = run(&[("x-amz-trailer", "x-amz-checksum-crc32")], &p, b"trailinG", &t).unwrap_err();
        assert_eq!(e.code(), "BadDigest");
        // Announced, not sent.
        let e = run(&[("x-amz-trailer", "x-amz-checksum-crc32")], &p, body, &[]).unwrap_err();
        assert_eq!(e.code(), "InvalidRequest");
        // Header and trailer together (versitygw's rule).
        let e = run(
            &[("x-amz-trailer", "x-amz-checksum-crc32"), ("x-amz-checksum-crc32", &v)],
            &p,
            body,
            &t,
        )
        .unwrap_err();
        assert_eq!(e.code(), "InvalidRequest");
        // Trailer without a trailer payload mode.
        let e = run(
            &[("x-amz-trailer", "x-amz-checksum-crc32")],
            &Payload::Unsigned,
            body,
            &t,
        )
        .unwrap_err();
        assert_eq!(e.code(), "InvalidRequest");
        // Two trailers announced.
        let e = run(
            &[("x-amz-trailer", "x-amz-checksum-crc32,x-amz-checksum-sha1")],
            &p,
            body,
            &t,
        )
        .unwrap_err();
        assert_eq!(e.code(), "InvalidRequest");
    }

    #[test]
    fn signed_body_sha256() {
        let body = b"Welcome to Amazon S3.";
        let h = crate::sigv4::sha256(body);
        run(&[], &Payload::Sha256(h), body, &[]).unwrap();
        let e = run(&[], &Payload::Sha256(h), b"Welcome to Amazon S3!", &[]).unwrap_err();
        assert_eq!((e.code(), e.status().as_u16()), ("XAmzContentSHA256Mismatch", 400));
    }
}
