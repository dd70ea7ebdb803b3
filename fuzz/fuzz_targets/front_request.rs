//! Arbitrary bytes as what a client sent the front door's lean HTTP/1.1 loop
//! (`kfsec_gateway::h1::parse_request_head`), then as the headers of its answer
//! (`write_response_head`): parsing never panics and is deterministic; a request taken by the
//! lean path has no body by any rule (no `Content-Length`, `Transfer-Encoding`, `Expect` or
//! `Upgrade` in any spelling; HTTP/1.1; not `CONNECT`), its head ends with an empty line within
//! the limit, every proper prefix of it is partial, and the same head alone reads the same; a
//! request left to hyper or not yet whole leaves the buffer exactly as it was. An answer's head
//! parses back (with the lean client's strict parser) framed exactly as the writer said it
//! would send the body, whatever `Content-Length` and `Transfer-Encoding` the service set.

#![no_main]

use bytes::BytesMut;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use kfsec_gateway::h1::{
    BodyFraming, BodySize, Framing, RequestHead, parse_request_head, parse_response_head, write_response_head,
};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fn parse(data: &[u8]) -> (RequestHead, BytesMut) {
    let mut buf = BytesMut::from(data);
    let head = parse_request_head(&mut buf, MAX);
    (head, buf)
}

fn check_response(req_headers: &http::HeaderMap, method: &Method, knobs: &[u8]) {
    let k = |i: usize| knobs.get(i).copied().unwrap_or(0);
    let status = StatusCode::from_u16(100 + u16::from(k(0)) * 2 + u16::from(k(1) % 2)).unwrap_or(StatusCode::OK);
    let mut resp = http::Response::new(());
    *resp.status_mut() = status;
    // The request's headers as the service's answer's, plus the framing headers a careless
    // service might set.
    for (name, value) in req_headers {
        resp.headers_mut().append(name.clone(), value.clone());
    }
    if k(2) % 3 == 1 {
        let cl = format!("{}", k(3));
        resp.headers_mut().append(HeaderName::from_static("content-length"), HeaderValue::from_str(&cl).unwrap());
    } else if k(2) % 3 == 2 {
        resp.headers_mut().append(HeaderName::from_static("content-length"), HeaderValue::from_static("x"));
    }
    if k(4) % 2 == 1 {
        resp.headers_mut().append(HeaderName::from_static("transfer-encoding"), HeaderValue::from_static("gzip"));
    }
    let body = match k(5) % 3 {
        0 => BodySize::Empty,
        1 => BodySize::Exact(u64::from(k(6))),
        _ => BodySize::Unknown,
    };
    let (parts, ()) = resp.into_parts();
    let mut out = Vec::new();
    let (framing, close) = write_response_head(&mut out, &parts, method, body, k(7) % 2 == 1, || *b"Sun, 06 Nov 1994 08:49:37 GMT");
    let mut buf = BytesMut::from(&out[..]);
    let parsed = parse_response_head(&mut buf, method)
        .unwrap_or_else(|e| panic!("a written head does not parse back: {e}: {:?}", String::from_utf8_lossy(&out)))
        .expect("a written head is whole");
    assert!(buf.is_empty(), "bytes after the head");
    let want = match framing {
        BodyFraming::None => Framing::Empty,
        BodyFraming::Length(n) => Framing::Length(n),
        BodyFraming::Chunked => Framing::Chunked,
    };
    // A HEAD answer reads as bodiless whatever length it declares.
    assert_eq!(parsed.body, want, "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(parsed.keep_alive, !close, "{:?}", String::from_utf8_lossy(&out));
    if let BodySize::Exact(n) = body
        && n > 0
        && *method != Method::HEAD
        && !matches!(status.as_u16(), 100..=199 | 204 | 304)
    {
        assert_eq!(framing, BodyFraming::Length(n));
    }
}

fuzz_target!(|data: &[u8]| {
    let (head, rest) = parse(data);
    let (again, rest_again) = parse(data);
    assert_eq!(format!("{head:?}"), format!("{again:?}"), "not deterministic");
    assert_eq!(rest, rest_again);
    match head {
        RequestHead::Partial => {
            assert_eq!(&rest[..], data, "a partial head changed the buffer");
            assert!(data.len() < MAX);
        }
        RequestHead::Other => assert_eq!(&rest[..], data, "a head left to hyper changed the buffer"),
        RequestHead::Lean { request, keep_alive } => {
            let len = data.len() - rest.len();
            assert_eq!(&data[len..], &rest[..]);
            let head_bytes = &data[..len];
            assert!(len <= MAX);
            assert!(head_bytes.ends_with(b"\n\n") || head_bytes.ends_with(b"\n\r\n"));
            assert!(kfsec_gateway::h1::may_hold_head(head_bytes, 0));
            assert_eq!(request.version(), http::Version::HTTP_11);
            assert_ne!(request.method(), Method::CONNECT);
            for name in ["content-length", "transfer-encoding", "expect", "upgrade"] {
                assert!(!request.headers().contains_key(name), "{name}");
            }
            let closes = request
                .headers()
                .get_all("connection")
                .iter()
                .any(|v| v.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")));
            assert_eq!(keep_alive, !closes);
            for cut in [0, len / 2, len - 1] {
                assert!(matches!(parse(&head_bytes[..cut]).0, RequestHead::Partial), "prefix {cut}");
            }
            let RequestHead::Lean { request: alone, .. } = parse(head_bytes).0 else {
                panic!("the head alone reads differently")
            };
            assert_eq!(alone.method(), request.method());
            assert_eq!(alone.uri(), request.uri());
            assert_eq!(alone.headers(), request.headers());
            check_response(request.headers(), request.method(), &rest);
        }
    }
});
