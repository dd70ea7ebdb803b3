//! Arbitrary bytes against the S3 gateway's SigV4 parsers and the aws-chunked decoder.
//!
//! Byte 0 picks the surface, byte 1 how the body is split into frames:
//! - 0: header auth — the rest is `Authorization\nx-amz-content-sha256\npath?query\nname:value`;
//! - 1: presigned URL — the rest is the request target (path and query);
//! - 2, 3, 4: an aws-chunked body (signed, signed with trailers, unsigned with trailers) under
//!   AWS's documented example key and seed; bytes 2–3 are the decoded length;
//! - 5: an upstream listing through the gateway's filter (`listing::filter`);
//! - 6: a DeleteObjects body (`listing::delete_request`): an accepted body re-serializes to a
//!   canonical document that reads back to the same list, with the same keys (what the store
//!   deletes is what the gateway checked).
//!
//! Invariants: nothing panics; every refusal is a 4xx S3 error whose XML renders; the decoder
//! never yields more than the announced decoded length, yields exactly what it counted, and gives
//! the same output and the same verdict however the body is split into frames.

#![no_main]

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use kfsec_s3::checksum::Algorithm;
use kfsec_s3::chunked::{ChunkMode, ChunkedDecoder};
use kfsec_s3::error::S3Error;
use kfsec_s3::keys::AccessKey;
use kfsec_s3::sigv4::{AmzDate, Auth, ChunkSigner, RequestParts, SigningKey};
use kfsec_types::UnixTime;
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const NOW: u64 = 1_369_353_600; // 20130524T000000Z

fn check_error(e: &S3Error) {
    let s = e.status().as_u16();
    assert!((400..500).contains(&s) || s == 501, "{e:?} answered {s}");
    let xml = e.to_xml("/b/k", "id");
    assert!(xml.contains(e.code()));
}

fn auth(data: &[u8], presigned: bool) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut b = Request::builder().method(Method::GET);
    let target;
    if presigned {
        target = text.to_string();
    } else {
        let authz = lines.next().unwrap_or("");
        let sha = lines.next().unwrap_or("");
        target = lines.next().unwrap_or("/").to_owned();
        if let Ok(v) = HeaderValue::from_str(authz) {
            b = b.header("authorization", v);
        }
        if let Ok(v) = HeaderValue::from_str(sha) {
            b = b.header("x-amz-content-sha256", v);
        }
        if let Some((n, v)) = lines.next().and_then(|l| l.split_once(':'))
            && let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(v))
        {
            b = b.header(n, v);
        }
        b = b.header("x-amz-date", "20130524T000000Z");
    }
    let Ok(req) = b.uri(target.as_str()).header("host", "examplebucket.s3.amazonaws.com").body(()) else {
        return;
    };
    let (parts, ()) = req.into_parts();
    let rp = RequestParts::from_parts(&parts);
    let parsed = match Auth::parse(rp, "us-east-1", UnixTime::from_secs(NOW)) {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(e) => return check_error(&e),
    };
    let key = AccessKey {
        id: parsed.access_key_id().to_owned(),
        namespace: "ns".into(),
        secret: SECRET.to_owned().into(),
        not_after: None,
    };
    if let Err(e) = parsed.verify(rp, Some(&key)) {
        check_error(&e);
    }
}

fn decode(mode: u8, split: u8, data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let expected = u64::from(u16::from_be_bytes([data[0], data[1]]));
    let body = &data[2..];
    let signer = || {
        let date = AmzDate::parse("20130524T000000Z").expect("a valid date");
        let mut seed = [0u8; 32];
        // The seed of AWS's chunked-upload example (sigv4-streaming.html).
        let hex = b"4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
        for (i, pair) in hex.chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).expect("ascii");
            seed[i] = u8::from_str_radix(s, 16).expect("hex");
        }
        ChunkSigner::new(SigningKey::derive(SECRET, "20130524", "us-east-1"), &date, seed)
    };
    let (m, trailer) = match mode {
        2 => (ChunkMode::Signed(signer()), None),
        3 => (ChunkMode::SignedTrailer(signer()), Some(Algorithm::Crc32)),
        _ => (ChunkMode::UnsignedTrailer, Some(Algorithm::Crc32)),
    };
    let run = |pieces: &mut dyn Iterator<Item = &[u8]>| -> (Vec<u8>, Result<Vec<(String, String)>, &'static str>) {
        let mut d = ChunkedDecoder::new(m.clone(), expected, trailer);
        let mut out: Vec<u8> = Vec::new();
        for p in pieces {
            let mut frames = Vec::new();
            let r = d.push(Bytes::copy_from_slice(p), &mut frames);
            for f in frames {
                out.extend_from_slice(&f);
            }
            assert!(out.len() as u64 <= expected, "decoded past the announced length");
            assert_eq!(out.len() as u64, d.decoded_len());
            if let Err(e) = r {
                check_error(&e);
                return (out, Err(e.code()));
            }
        }
        match d.finish() {
            Ok(t) => {
                assert_eq!(out.len() as u64, expected);
                (out, Ok(t))
            }
            Err(e) => {
                check_error(&e);
                (out, Err(e.code()))
            }
        }
    };
    let whole = run(&mut std::iter::once(body));
    let stride = usize::from(split % 64) + 1;
    let split_run = run(&mut body.chunks(stride));
    assert_eq!(whole.1, split_run.1, "verdict depends on framing");
    if whole.1.is_ok() {
        assert_eq!(whole.0, split_run.0);
    }
}

/// Modes 5 and 6 (the gateway's listing filter, DeleteObjects bodies): a filtered listing keeps
/// no entry the predicate refuses, re-filters to itself, and leaks no paging marker in clear.
fn listing(rest: &[u8]) {
    use kfsec_s3::listing;
    let visible = |k: &str| k.starts_with('a');
    // Sealed markers: any token a client sends opens to nothing or to a marker this seal made;
    // a marker seals to a fixed length and opens back to itself, for its scope only.
    let seal = listing::MarkerSeal::new(b"fuzz");
    let text = String::from_utf8_lossy(rest);
    let _ = seal.open("ns\nb", &text);
    let _ = seal.open("ns\nb", &format!("{}{text}", listing::SEALED_PREFIX));
    let rng = kfsec_types::SequenceRng::default();
    // S3 keys are at most 1024 bytes.
    let mut marker = String::new();
    for c in text.chars() {
        if marker.len() + c.len_utf8() > 1024 {
            break;
        }
        marker.push(c);
    }
    let token = seal.seal("ns\nb", &marker, &rng);
    assert_eq!(
        token.len(),
        seal.seal("ns\nb", "", &rng).len(),
        "a sealed marker's length varies"
    );
    assert_eq!(seal.open("ns\nb", &token).as_deref(), Some(marker.as_str()));
    assert_eq!(seal.open("other\nb", &token), None);
    let Ok(out) = listing::filter(rest, visible, visible, |_| "SEALED".to_owned()) else {
        return;
    };
    let again = listing::filter(&out, visible, visible, |_| "SEALED".to_owned());
    assert_eq!(again.as_deref(), Ok(out.as_slice()), "filtering is not idempotent");
    let seen = std::cell::RefCell::new(Vec::new());
    let _ = listing::filter(
        &out,
        |k| {
            seen.borrow_mut().push(k.to_owned());
            true
        },
        |_| true,
        str::to_owned,
    );
    let seen = seen.into_inner();
    assert!(seen.iter().all(|k| visible(k)), "an invisible key survived: {seen:?}");
}

fuzz_target!(|data: &[u8]| {
    let [mode, split, rest @ ..] = data else {
        return;
    };
    match mode % 7 {
        0 => auth(rest, false),
        1 => auth(rest, true),
        5 => listing(rest),
        6 => {
            if let Ok(d) = kfsec_s3::listing::delete_request(rest) {
                let canonical = d.to_xml();
                let again = kfsec_s3::listing::delete_request(&canonical).expect("the canonical Delete reads back");
                assert_eq!(again, d);
                assert_eq!(again.to_xml(), canonical);
            }
        }
        m => decode(m, *split, rest),
    }
});
