//! Arbitrary bytes as an upstream's HTTP/1.1 answer to the front door's lean client
//! (`kfsec_gateway::h1`), for `GET` and `HEAD`: parsing never panics and is deterministic; a
//! parsed head lies within the input and within `MAX_HEAD`, every proper prefix of it is
//! "incomplete" (no answer is read differently because it arrived in pieces), and the cheap
//! "may hold a head" check never hides it; its framing is the one its headers allow (chunked
//! only without `Content-Length`, a length only as the header says, no body for `HEAD`, 1xx,
//! 204 and 304; reuse only for HTTP/1.1 that knows its end, never after a 204 that declares a
//! body). The bytes after the head, as a chunked body, decode to the same data, trailers and
//! leftover — or the same refusal — whether they arrive whole or one byte at a time, and a body
//! the target itself chunks from the input decodes back to it.

#![no_main]

use http::{Method, StatusCode, Version};
use bytes::BytesMut;
use kfsec_gateway::h1::{Framing, H1Error, MAX_HEAD, ResponseHead, dechunk, may_hold_head, parse_response_head};
use libfuzzer_sys::fuzz_target;

/// The head at the start of `data` (and its length), as the lean client parses it.
fn parse(data: &[u8], method: &Method) -> Result<Option<(ResponseHead, usize)>, H1Error> {
    let mut buf = BytesMut::from(data);
    let head = parse_response_head(&mut buf, method)?;
    Ok(head.map(|h| (h, data.len() - buf.len())))
}

fn check_head(data: &[u8], method: &Method) {
    let parsed = parse(data, method);
    let again = parse(data, method);
    assert_eq!(format!("{parsed:?}"), format!("{again:?}"), "not deterministic");
    let Ok(Some((head, len))) = parsed else { return };
    assert!(len <= data.len() && len <= MAX_HEAD, "{len}");
    assert!(may_hold_head(&data[..len], 0), "a head the pre-check would never parse");
    for cut in [0, len / 2, len - 1] {
        assert!(
            matches!(parse(&data[..cut], method), Ok(None)),
            "a prefix of {cut} bytes read as something else"
        );
    }
    let cl = head.headers.get(http::header::CONTENT_LENGTH);
    let te = head.headers.contains_key(http::header::TRANSFER_ENCODING);
    let no_body = *method == Method::HEAD
        || head.status.is_informational()
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED;
    match head.body {
        Framing::Empty => assert!(
            no_body || cl.and_then(|v| v.to_str().ok()).is_some_and(|v| v.split(',').all(|p| p.trim().parse::<u64>() == Ok(0)))
        ),
        Framing::Length(n) => {
            assert!(!no_body && !te && n > 0);
            let v = cl.expect("a length from Content-Length").to_str().expect("digits");
            assert!(v.split(',').all(|p| p.trim().parse::<u64>() == Ok(n)), "{v} vs {n}");
        }
        Framing::Chunked => assert!(!no_body && te && cl.is_none() && head.version == Version::HTTP_11),
        Framing::UntilClose => assert!(!no_body && !te && cl.is_none() && !head.keep_alive),
    }
    if head.keep_alive {
        assert!(head.version == Version::HTTP_11 && head.body != Framing::UntilClose);
        // a 204 that declares a body may send it where the next answer would be read
        let declared = te || cl.and_then(|v| v.to_str().ok()).is_some_and(|v| v.split(',').any(|p| p.trim() != "0"));
        assert!(!(head.status == StatusCode::NO_CONTENT && declared), "a 204 declaring a body was kept alive");
    }
}

fuzz_target!(|data: &[u8]| {
    check_head(data, &Method::GET);
    check_head(data, &Method::HEAD);
    // The input after a head (or all of it) as a chunked body: the same however it arrives.
    let body = match parse(data, &Method::GET) {
        Ok(Some((_, len))) => &data[len..],
        _ => data,
    };
    let whole = dechunk(body, body.len().max(1));
    let bytewise = dechunk(body, 1);
    assert_eq!(format!("{whole:?}"), format!("{bytewise:?}"), "decoding depends on how the body arrives");
    // The input as data, chunked by the target (sizes from its bytes), decodes back to it.
    let mut encoded = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = usize::from(rest[0]).clamp(1, rest.len());
        encoded.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        encoded.extend_from_slice(&rest[..n]);
        encoded.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    encoded.extend_from_slice(b"0\r\n\r\n");
    let (decoded, trailers, left) = dechunk(&encoded, 7).expect("a well-formed chunked body");
    assert_eq!(decoded, data);
    assert!(trailers.is_none() && left.is_empty());
});
