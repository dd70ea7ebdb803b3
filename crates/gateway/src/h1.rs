//! The HTTP/1.1 codec of the upstream pool's lean path (requests without a body: `GET`,
//! `HEAD`): the request head it writes, the response head it reads and the framing of the
//! response body (RFC 9112 §6) — without I/O, so the parser and the chunked decoder are fuzzed
//! on their own (`fuzz/fuzz_targets/upstream_response.rs`).
//!
//! Security invariants: a response is framed one way only. Anything two readers could frame
//! differently — `Transfer-Encoding` with `Content-Length`, lengths that differ or are not plain
//! digits, a transfer coding other than exactly `chunked`, a repeated `Transfer-Encoding`,
//! obsolete line folding, a chunk size that is not hex or overflows, chunk data or a chunk-size
//! line not ended by CRLF — is refused ([`H1Error`]), never guessed at, and its connection is
//! dropped. (Head and trailer lines may end in a bare LF, as RFC 9112 §2.2 lets a recipient
//! accept and hyper does: it cannot move where a message ends.)
//! A connection may carry another request only when its response said where it ends, asked for
//! no close and was HTTP/1.1 ([`ResponseHead::keep_alive`]); the caller also checks that
//! nothing follows it. Heads, header counts, chunk lines and trailers are bounded. The request
//! head is built from `http` types, which admit no CR, LF or NUL in a method, target, name or
//! value: no request can be split.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

/// The largest response head (status line and headers) read, in bytes: what hyper's client
/// buffers at most, so no answer hyper's path takes is refused here.
pub const MAX_HEAD: usize = 8192 + 4096 * 100;
/// The most headers in a response head, or in a trailer section.
pub const MAX_HEADERS: usize = 128;
/// The most interim (1xx) responses skipped before the final one.
pub const MAX_INTERIM: usize = 8;
/// The longest chunk-size line (size and extensions), in bytes.
const MAX_CHUNK_LINE: usize = 4096;
/// The largest trailer section, in bytes.
const MAX_TRAILERS: usize = 16 * 1024;

/// Why an upstream response cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum H1Error {
    /// The status line or a header line is malformed (or there are too many headers).
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    /// The head exceeds [`MAX_HEAD`].
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The status code is not 100–999.
    #[error("invalid status code")]
    Status,
    /// A header or trailer name or value `http` refuses.
    #[error("invalid header name or value")]
    Header,
    /// The body could be delimited more than one way, or not at all.
    #[error("ambiguous body framing: {0}")]
    Framing(&'static str),
    /// The chunked body is malformed.
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
    /// A 101 answered a request that asked for no upgrade.
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnexpectedUpgrade,
    /// More than [`MAX_INTERIM`] interim responses.
    #[error("more than {MAX_INTERIM} interim (1xx) responses")]
    TooManyInterim,
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a `HEAD` answer, 1xx, 204, 304, `Content-Length: 0`).
    Empty,
    /// Exactly this many bytes (> 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status (final or interim).
    pub status: StatusCode,
    /// HTTP/1.1 or HTTP/1.0.
    pub version: Version,
    /// As received, except that a repeated `Content-Length` (all values equal) is kept once.
    pub headers: HeaderMap,
    /// The reason phrase when it is not the status's canonical one (to be passed on as sent).
    pub reason: Option<Bytes>,
    /// How the body is delimited.
    pub body: Framing,
    /// Whether the connection may carry another request once the body is read.
    pub keep_alive: bool,
}

/// Appends a request head: `METHOD target HTTP/1.1`, then `headers` in order, then the empty
/// line. `target` is the origin-form path and query.
pub fn write_request_head(out: &mut Vec<u8>, method: &Method, target: &str, headers: &HeaderMap) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses the response head at the start of `buf`, for a request with `method`: `Ok(None)` when
/// it is not complete yet (`buf` untouched), else the head, split off `buf` (which then starts
/// with the body). The header values share the head's bytes (no copy). Interim (1xx) heads are
/// returned like final ones (with [`Framing::Empty`]); the caller skips them. After an error,
/// what is left in `buf` is unspecified (its connection is not used again).
pub fn parse_response_head(buf: &mut BytesMut, method: &Method) -> Result<Option<ResponseHead>, H1Error> {
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Complete(_)) => return Err(H1Error::HeadTooLarge),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(H1Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(H1Error::Head(e)),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(H1Error::Status)?;
    let reason = parsed
        .reason
        .filter(|r| Some(*r) != status.canonical_reason())
        .map(|r| Bytes::copy_from_slice(r.as_bytes()));
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(H1Error::Head(httparse::Error::Version)),
    };
    // Names, and where each value lies in the head, whose bytes the values then share.
    let base = buf.as_ptr().addr();
    let mut fields = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| H1Error::Header)?;
        let start = match h.value.as_ptr().addr().checked_sub(base) {
            Some(start) if start + h.value.len() <= len => start,
            _ if h.value.is_empty() => 0,
            _ => return Err(H1Error::Header),
        };
        fields.push((name, start..start + h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut chunked = None;
    let mut length: Option<u64> = None;
    let mut close = false;
    for (name, at) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(at)).map_err(|_| H1Error::Header)?;
        if name == TRANSFER_ENCODING {
            if chunked.is_some() {
                return Err(H1Error::Framing("repeated Transfer-Encoding"));
            }
            chunked = Some(value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == CONTENT_LENGTH {
            let n = content_length(value.as_bytes())?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Framing("differing Content-Length values"));
            }
            if length.replace(n).is_some() {
                continue;
            }
        } else if name == CONNECTION {
            close |= value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
        headers.append(name, value);
    }
    let no_body = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = match (chunked, length) {
        _ if no_body => Framing::Empty,
        (Some(_), Some(_)) => return Err(H1Error::Framing("both Transfer-Encoding and Content-Length")),
        (Some(_), None) if version == Version::HTTP_10 => {
            return Err(H1Error::Framing("Transfer-Encoding in an HTTP/1.0 response"));
        }
        (Some(true), None) => Framing::Chunked,
        (Some(false), None) => return Err(H1Error::Framing("a transfer coding other than chunked")),
        (None, Some(0)) => Framing::Empty,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::UntilClose,
    };
    let keep_alive = version == Version::HTTP_11 && !close && body != Framing::UntilClose;
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        reason,
        body,
        keep_alive,
    }))
}

/// Whether `buf` may hold a whole head, given that its first `searched` bytes held no end of
/// one (an empty line: `\n\r\n` or `\n\n`). Lets a reader parse once per head instead of
/// after every read (which a head arriving in many small pieces would make quadratic).
pub fn may_hold_head(buf: &[u8], searched: usize) -> bool {
    let from = searched.saturating_sub(2).min(buf.len());
    let tail = &buf[from..];
    tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
}

/// A `Content-Length` value: plain decimal digits, or a list of equal ones (RFC 9110 §8.6).
fn content_length(v: &[u8]) -> Result<u64, H1Error> {
    let mut value = None;
    for part in v.split(|&b| b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(H1Error::Framing("a Content-Length that is not a number"));
        }
        let n = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<u64>().ok())
            .ok_or(H1Error::Framing("a Content-Length that is not a number"))?;
        if value.is_some_and(|v| v != n) {
            return Err(H1Error::Framing("differing Content-Length values"));
        }
        value = Some(n);
    }
    value.ok_or(H1Error::Framing("an empty Content-Length"))
}

/// What [`ChunkedDecoder::decode`] took from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes (never empty).
    Data(Bytes),
    /// The trailer section (only when it has fields): the body ended with it.
    Trailers(HeaderMap),
    /// The body ended (no trailers); what follows in the buffer is not part of it.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    /// The body ended.
    Done,
}

/// Decodes a `Transfer-Encoding: chunked` body incrementally from a read buffer.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: Chunk,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self { state: Chunk::Size }
    }
}

impl ChunkedDecoder {
    /// Takes the next piece of the body from the front of `buf`: `Ok(None)` when `buf` holds
    /// too little (read more and call again). Data is split off `buf` without copying.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, H1Error> {
        loop {
            match self.state {
                Chunk::Size => {
                    let Some(end) = line_end(buf, MAX_CHUNK_LINE)? else {
                        return Ok(None);
                    };
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    self.state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                }
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) };
                    return Ok(Some(Decoded::Data(data)));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err(H1Error::Chunked("chunk data not followed by CRLF"));
                        }
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Chunked("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = Chunk::Size;
                }
                Chunk::Trailers => {
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let (len, fields) = match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete((n, _))) if n > MAX_TRAILERS => {
                            return Err(H1Error::Chunked("trailer section too large"));
                        }
                        Ok(httparse::Status::Complete((n, fields))) => (n, fields),
                        Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
                            return Err(H1Error::Chunked("trailer section too large"));
                        }
                        Ok(httparse::Status::Partial) => return Ok(None),
                        Err(_) => return Err(H1Error::Chunked("malformed trailer section")),
                    };
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for f in fields {
                        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| H1Error::Header)?;
                        let value = HeaderValue::from_bytes(f.value).map_err(|_| H1Error::Header)?;
                        trailers.append(name, value);
                    }
                    buf.advance(len);
                    self.state = Chunk::Done;
                    return Ok(Some(if trailers.is_empty() {
                        Decoded::End
                    } else {
                        Decoded::Trailers(trailers)
                    }));
                }
                Chunk::Done => return Ok(Some(Decoded::End)),
            }
        }
    }
}

/// A whole chunked body's data, its trailers (if any) and the bytes after it.
pub type Dechunked = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

/// Decodes the chunked body at the start of `input`, fed to the decoder `step` bytes at a time
/// (the incremental decoder over a complete input: for tests and the fuzz target). An input
/// that ends before the body does is [`H1Error::Chunked`].
pub fn dechunk(input: &[u8], step: usize) -> Result<Dechunked, H1Error> {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut fed = 0;
    loop {
        let trailers = match decoder.decode(&mut buf)? {
            Some(Decoded::Data(b)) => {
                data.extend_from_slice(&b);
                continue;
            }
            Some(Decoded::Trailers(t)) => Some(t),
            Some(Decoded::End) => None,
            None if fed == input.len() => return Err(H1Error::Chunked("the input ended inside the body")),
            None => {
                let n = step.max(1).min(input.len() - fed);
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
                continue;
            }
        };
        buf.extend_from_slice(&input[fed..]);
        return Ok((data, trailers, buf.to_vec()));
    }
}

/// Where the CRLF ending the line at the start of `buf` is (`None`: not yet read); a bare LF or
/// a line longer than `max` is an error.
fn line_end(buf: &[u8], max: usize) -> Result<Option<usize>, H1Error> {
    let window = &buf[..buf.len().min(max + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) if i > 0 && window[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(H1Error::Chunked("a line not ended by CRLF")),
        None if buf.len() >= max + 2 => Err(H1Error::Chunked("chunk-size line too long")),
        None => Ok(None),
    }
}

/// The size of a chunk-size line (`hex [ext]`): 1 to 15 hex digits (well below `u64::MAX`),
/// then optional blanks (space, tab) and optional extensions (`;…`: ignored, but with no
/// control character).
fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(H1Error::Chunked("chunk size not 1 to 15 hex digits"));
    }
    let rest = &line[digits..];
    let blank = rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    let ext = &rest[blank..];
    if !(ext.is_empty() || ext.starts_with(b";")) {
        return Err(H1Error::Chunked("junk after the chunk size"));
    }
    if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(H1Error::Chunked("control character in a chunk extension"));
    }
    let mut size = 0u64;
    for &b in &line[..digits] {
        // 15 digits fit: at most 60 bits.
        size = size << 4 | u64::from(char::from(b).to_digit(16).unwrap_or(0));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head of `raw` and its length.
    fn head(raw: &str) -> Result<Option<(ResponseHead, usize)>, H1Error> {
        let mut buf = BytesMut::from(raw.as_bytes());
        let parsed = parse_response_head(&mut buf, &Method::GET)?;
        Ok(parsed.map(|h| (h, raw.len() - buf.len())))
    }

    fn framing(raw: &str) -> Result<(Framing, bool), H1Error> {
        head(raw).map(|h| {
            let (h, _) = h.expect("complete");
            (h.body, h.keep_alive)
        })
    }

    #[test]
    fn request_heads_are_origin_form_with_every_header() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("up:8080"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        write_request_head(&mut out, &Method::GET, "/a?b=c", &h);
        assert_eq!(out, b"GET /a?b=c HTTP/1.1\r\nhost: up:8080\r\nx-a: 1\r\nx-a: 2\r\n\r\n");
    }

    #[test]
    fn heads_are_read_whole_or_not_at_all() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Y: z\r\n\r\nok";
        for cut in 0..raw.len() - 2 {
            assert!(head(&raw[..cut]).unwrap().is_none(), "{cut}");
        }
        let (h, len) = head(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 2);
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.headers["x-y"], "z");
        assert_eq!((h.body, h.keep_alive), (Framing::Length(2), true));
    }

    #[test]
    fn a_head_is_parsed_once_its_end_may_have_arrived() {
        let raw = b"HTTP/1.1 200 OK\r\nx: y\r\n\r\n";
        for end in 0..raw.len() {
            assert!(!may_hold_head(&raw[..end], 0), "{end}");
            // however the bytes arrived
            for searched in 0..end {
                assert!(!may_hold_head(&raw[..end], searched));
            }
        }
        for searched in 0..raw.len() {
            assert!(may_hold_head(raw, searched), "{searched}");
        }
        assert!(may_hold_head(b"HTTP/1.1 200 OK\nx: y\n\n", 17));
    }

    #[test]
    fn only_uncommon_reason_phrases_are_kept() {
        let reason = |raw: &str| head(raw).unwrap().unwrap().0.reason;
        assert_eq!(reason("HTTP/1.1 200 OK\r\n\r\n"), None);
        assert_eq!(reason("HTTP/1.1 404 Not Found\r\n\r\n"), None);
        assert_eq!(reason("HTTP/1.1 200 Fine\r\n\r\n").as_deref(), Some(&b"Fine"[..]));
        assert_eq!(reason("HTTP/1.1 200 \r\n\r\n").as_deref(), Some(&b""[..]));
    }

    #[test]
    fn each_body_is_framed_one_way() {
        use Framing::*;
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            Ok((Empty, true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n"),
            Ok((Length(7), true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-length: 7\r\n\r\n"),
            Ok((Length(7), true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked \r\n\r\n"),
            Ok((Chunked, true))
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Ok((UntilClose, false)));
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: x, Close\r\n\r\n"),
            Ok((Length(3), false))
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n"),
            Ok((Length(3), false))
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n"),
            Ok((Empty, true))
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n"),
            Ok((Empty, true))
        );
        assert_eq!(framing("HTTP/1.1 100 Continue\r\n\r\n"), Ok((Empty, true)));
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"[..]);
        let h = parse_response_head(&mut buf, &Method::HEAD).unwrap().unwrap();
        assert_eq!(h.body, Empty);
        assert_eq!(h.headers[CONTENT_LENGTH], "9", "a HEAD answer keeps its length");
    }

    #[test]
    fn ambiguous_or_malformed_framing_is_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, identity\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: xchunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0x10\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: ,\r\n\r\n",
        ] {
            assert!(
                matches!(head(raw), Err(H1Error::Framing(_))),
                "{raw:?}: {:?}",
                head(raw)
            );
        }
        for raw in [
            "HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad name: a\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-nul: a\0b\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(head(raw).is_err(), "{raw:?}: {:?}", head(raw));
        }
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(head(&huge).unwrap_err(), H1Error::HeadTooLarge);
        assert_eq!(head(&huge[..MAX_HEAD]).unwrap_err(), H1Error::HeadTooLarge);
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "x: y\r\n".repeat(MAX_HEADERS + 1));
        assert!(matches!(
            head(&many),
            Err(H1Error::Head(httparse::Error::TooManyHeaders))
        ));
    }

    #[test]
    fn chunked_bodies_decode_in_any_pieces() {
        let body = b"5\r\nhello\r\n1;name=\"v\"\r\n \r\nA \t;x\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (data, trailers, rest) = dechunk(body, step).unwrap();
            assert_eq!(data, b"hello 0123456789");
            assert_eq!(trailers.unwrap()["x-t"], "1");
            assert_eq!(rest, b"NEXT");
        }
        let (data, trailers, rest) = dechunk(b"0\r\n\r\n", 1).unwrap();
        assert!(data.is_empty() && trailers.is_none() && rest.is_empty());
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for body in [
            &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"\r\n",
            b"g\r\n",
            b"-5\r\n",
            b"0x5\r\n",
            b"5 5\r\n",
            b"1000000000000000\r\n",
            b"5;a\0b\r\nhello\r\n0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"0\r\nx: a\r\n b\r\n\r\n",
        ] {
            for step in [1, body.len()] {
                assert!(
                    matches!(dechunk(body, step), Err(H1Error::Chunked(_) | H1Error::Header)),
                    "{body:?} by {step}: {:?}",
                    dechunk(body, step)
                );
            }
        }
        let long = format!("1;{}\r\n", "x".repeat(MAX_CHUNK_LINE + 8));
        assert!(dechunk(long.as_bytes(), 1).is_err());
        let trailers = format!("0\r\n{}\r\n", "x-t: y\r\n".repeat(MAX_TRAILERS / 8 + 1));
        assert!(dechunk(trailers.as_bytes(), 4096).is_err());
    }
}
