//! The HTTP/1.1 codec of kfsec's lean paths, without I/O so each parser is fuzzed on its own:
//! on the upstream side (`GET`, `HEAD`: `fuzz/fuzz_targets/upstream_response.rs`), the request
//! head the pool writes, the response head it reads and the framing of the response body
//! (RFC 9112 §6); on the client side (`fuzz/fuzz_targets/front_request.rs`), the request heads
//! the front door's lean loop serves itself and the response heads it writes.
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
//! On the client side, only a request that has no body by every rule is taken
//! ([`parse_request_head`]: no `Content-Length` or `Transfer-Encoding` in any spelling, no
//! `Expect` or `Upgrade`, HTTP/1.1, not `CONNECT`); anything else is left untouched for hyper,
//! so where a client's request ends is decided once, the same way. A response head says the
//! length of the body that is actually sent, never one the service claimed
//! ([`write_response_head`]).

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

/// Headers kfsec may add to a parsed head: to a request, the identity pair and
/// `X-Forwarded-For`, `-Proto` and `-Host`; to an answer, HSTS, `nosniff`, `Audit-ID` and the
/// framing of its own.
const ADDED_HEADERS: usize = 6;

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

/// A head's header names and where each value lies in it, gathered before the head's bytes are
/// frozen: the usual head's fit on the stack (no allocation per head).
type Fields = smallvec::SmallVec<[(HeaderName, std::ops::Range<usize>); 24]>;

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
    let mut fields = Fields::new();
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
    // (room for the headers kfsec adds to an answer, so the map is not grown and rehashed)
    let mut headers = HeaderMap::with_capacity(fields.len() + ADDED_HEADERS);
    let mut chunked = None;
    let mut length: Option<u64> = None;
    let mut close = false;
    for (name, at) in fields.drain(..) {
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
    // A 204 may declare no body (RFC 9110 §8.6, §6.4.1); one that does may send it, where the
    // connection's next answer would be read: it is not reused.
    let declares_body = chunked.is_some() || length.is_some_and(|n| n > 0);
    let stray = status == StatusCode::NO_CONTENT && declares_body;
    let keep_alive = version == Version::HTTP_11 && !close && !stray && body != Framing::UntilClose;
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

// The front door's side: request heads from clients, response heads to them.

/// The most headers in a request head the lean path reads: hyper's server default (a head
/// with more goes to hyper, which answers 431).
pub const MAX_REQUEST_HEADERS: usize = 100;

/// What the front door makes of the bytes a client has sent so far on an HTTP/1.1 connection.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // returned once per request and taken apart at once: a box would be one more allocation
pub enum RequestHead {
    /// No whole head yet, and fewer bytes than the limit.
    Partial,
    /// A request the lean path serves, split off the buffer (which then starts with whatever
    /// the client pipelined after it). It has no body: HTTP/1.1 without `Content-Length`,
    /// `Transfer-Encoding`, `Expect` or `Upgrade`, and `Connection` says at most `close` or
    /// `keep-alive`.
    Lean {
        /// Method, target, headers (values sharing the head's bytes), version HTTP/1.1.
        request: http::Request<()>,
        /// Whether the connection may carry another request afterwards (no `Connection: close`).
        keep_alive: bool,
    },
    /// Anything else — a body, HTTP/1.0, an upgrade, `CONNECT`, a malformed or oversized head:
    /// the buffer is left as it was, for hyper to serve (or refuse) from the same bytes.
    Other,
}

/// Parses the request head at the start of `buf` (at most `max_head` bytes) for the front
/// door's lean path; see [`RequestHead`].
pub fn parse_request_head(buf: &mut BytesMut, max_head: usize) -> RequestHead {
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_REQUEST_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) if n <= max_head => n,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return RequestHead::Partial,
        _ => return RequestHead::Other,
    };
    if parsed.version != Some(1) {
        return RequestHead::Other;
    }
    let Some(method) = parsed.method.and_then(|m| Method::from_bytes(m.as_bytes()).ok()) else {
        return RequestHead::Other;
    };
    let base = buf.as_ptr().addr();
    let within = |s: &[u8]| match s.as_ptr().addr().checked_sub(base) {
        Some(start) if start + s.len() <= len => Some(start..start + s.len()),
        _ if s.is_empty() => Some(0..0),
        _ => None,
    };
    let Some(target) = parsed.path.and_then(|p| within(p.as_bytes())) else {
        return RequestHead::Other;
    };
    if method == Method::CONNECT || target.is_empty() {
        return RequestHead::Other;
    }
    let mut keep_alive = true;
    let mut fields = Fields::new();
    for h in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return RequestHead::Other;
        };
        if name == CONTENT_LENGTH
            || name == TRANSFER_ENCODING
            || name == http::header::EXPECT
            || name == http::header::UPGRADE
        {
            return RequestHead::Other;
        }
        if name == CONNECTION {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if !(token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive")) {
                    return RequestHead::Other;
                }
            }
        }
        let Some(at) = within(h.value) else {
            return RequestHead::Other;
        };
        fields.push((name, at));
    }
    let head = buf.split_to(len).freeze();
    let built = (|| {
        let uri = http::Uri::from_maybe_shared(head.slice(target)).ok()?;
        // (room for the headers kfsec adds to a request, so the map is not grown and rehashed)
        let mut headers = HeaderMap::with_capacity(fields.len() + ADDED_HEADERS);
        for (name, at) in fields.drain(..) {
            headers.append(name, HeaderValue::from_maybe_shared(head.slice(at)).ok()?);
        }
        let mut request = http::Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Some(request)
    })();
    match built {
        Some(request) => RequestHead::Lean { request, keep_alive },
        None => {
            // Put the head back in front of what followed it, for hyper.
            let mut whole = BytesMut::with_capacity(head.len() + buf.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(buf);
            *buf = whole;
            RequestHead::Other
        }
    }
}

/// How much body a response has, as its `http_body::Body` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySize {
    /// None (the body is at its end already).
    Empty,
    /// Exactly this many bytes.
    Exact(u64),
    /// Not known in advance (a stream).
    Unknown,
}

/// How the body of a response written by [`write_response_head`] is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Not at all (`HEAD`, 204, 304, an empty body).
    None,
    /// Exactly this many bytes (> 0): more is an error, fewer ends the connection.
    Length(u64),
    /// In chunks (each a [`write_chunk_size`] line, the data and CRLF; then [`LAST_CHUNK`]).
    Chunked,
}

/// The end of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends the size line of a chunk of `n` (> 0) bytes; its data and a CRLF follow.
pub fn write_chunk_size(out: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(n >> (i * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends the HTTP/1.1 head of a response to a `method` request, as hyper's server writes it:
/// the status line (a `hyper::ext::ReasonPhrase` extension's phrase, else the canonical one),
/// the headers in order except `Content-Length` and `Transfer-Encoding`, which are written for
/// the body actually sent (`content-length` for an empty or sized body or a valid
/// `Content-Length` the service set on a stream, else `transfer-encoding: chunked`; none for
/// 204 and 304, and a `HEAD` answer keeps the length the service gave), `connection: close`
/// when `close` and the service did not say it, and the `Date` value `date` gives unless the
/// service set one (so most proxied answers cost no clock reading). An
/// interim (1xx) status cannot answer here and becomes an empty 500 that closes the connection,
/// as with hyper. Returns the body's framing and whether the connection closes after it.
pub fn write_response_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    method: &Method,
    body: BodySize,
    close: bool,
    date: impl FnOnce() -> [u8; 29],
) -> (BodyFraming, bool) {
    let status = parts.status;
    if status.is_informational() {
        out.extend_from_slice(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\ndate: ",
        );
        out.extend_from_slice(&date());
        out.extend_from_slice(b"\r\n\r\n");
        return (BodyFraming::None, true);
    }
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        match reason {
            Some(r) => out.extend_from_slice(r.as_bytes()),
            None => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    let bodiless_status = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let head = *method == Method::HEAD;
    let mut close = close;
    let mut said_close = false;
    let mut has_date = false;
    let mut declared: Option<u64> = None;
    let mut declared_ok = true;
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH {
            match content_length(value.as_bytes()) {
                Ok(n) if declared.is_none_or(|d| d == n) => declared = Some(n),
                _ => declared_ok = false,
            }
            continue;
        }
        // A `Trailer` announcement where no chunked body can follow is dropped, as hyper does.
        if name == TRANSFER_ENCODING || (name == http::header::TRAILER && (head || bodiless_status)) {
            continue;
        }
        if name == CONNECTION {
            said_close |= value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if name == http::header::DATE {
            has_date = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let declared = declared.filter(|_| declared_ok);
    let (length, framing) = match body {
        _ if bodiless_status => (None, BodyFraming::None),
        _ if head => (
            declared.or(match body {
                BodySize::Exact(n) => Some(n),
                _ => None,
            }),
            BodyFraming::None,
        ),
        BodySize::Empty | BodySize::Exact(0) => (Some(0), BodyFraming::None),
        BodySize::Exact(n) => (Some(n), BodyFraming::Length(n)),
        BodySize::Unknown => match declared {
            Some(0) => (Some(0), BodyFraming::None),
            Some(n) => (Some(n), BodyFraming::Length(n)),
            None => (None, BodyFraming::Chunked),
        },
    };
    if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, n);
        out.extend_from_slice(b"\r\n");
    } else if framing == BodyFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close && !said_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    close |= said_close;
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&date());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, close)
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

    /// What `parse_request_head` makes of `raw`, and the bytes left in the buffer.
    fn lean_parse(raw: &[u8]) -> (RequestHead, Vec<u8>) {
        let mut buf = BytesMut::from(raw);
        let head = parse_request_head(&mut buf, 64 * 1024);
        (head, buf.to_vec())
    }

    #[test]
    fn plain_requests_are_lean_and_what_follows_is_left_for_the_next() {
        let raw = b"GET /a/b?c=d HTTP/1.1\r\nHost: kf.example\r\nCookie: x=1\r\nX-Twice: 1\r\nx-twice: 2\r\n\r\nHEAD / HTTP/1.1\r\n";
        let (head, rest) = lean_parse(raw);
        let RequestHead::Lean { request, keep_alive } = head else {
            panic!("{head:?}")
        };
        assert!(keep_alive);
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/a/b?c=d");
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["host"], "kf.example");
        assert_eq!(
            request.headers().get_all("x-twice").iter().collect::<Vec<_>>(),
            ["1", "2"]
        );
        assert_eq!(rest, b"HEAD / HTTP/1.1\r\n");
        // Every proper prefix is partial, and leaves the buffer alone.
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 0..whole.len() {
            let (head, rest) = lean_parse(&whole[..cut]);
            assert!(matches!(head, RequestHead::Partial), "{cut}: {head:?}");
            assert_eq!(rest, &whole[..cut]);
        }
        for (raw, keep) in [
            (&b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..], false),
            (b"GET / HTTP/1.1\r\nconnection: Keep-Alive, CLOSE\r\n\r\n", false),
            (b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", true),
            (b"DELETE /x HTTP/1.1\r\n\r\n", true),
            (b"OPTIONS * HTTP/1.1\r\n\r\n", true),
        ] {
            let (head, _) = lean_parse(raw);
            assert!(
                matches!(head, RequestHead::Lean { keep_alive, .. } if keep_alive == keep),
                "{head:?}"
            );
        }
    }

    #[test]
    fn requests_that_may_have_a_body_or_change_protocol_are_left_to_hyper_untouched() {
        let others: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok",
            b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n Transfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: TE\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"CONNECT kf.example:443 HTTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
            b"GET http://[::1 HTTP/1.1\r\n\r\n",
        ];
        for raw in others {
            let (head, rest) = lean_parse(raw);
            assert!(
                matches!(head, RequestHead::Other),
                "{:?}: {head:?}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(&rest, raw, "{:?}", String::from_utf8_lossy(raw));
        }
        // More headers than hyper reads, and heads over the limit (whole or not yet).
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_REQUEST_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(lean_parse(&many).0, RequestHead::Other));
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(64 * 1024));
        assert!(matches!(lean_parse(big.as_bytes()).0, RequestHead::Other));
        assert!(matches!(
            lean_parse(&big.as_bytes()[..64 * 1024 + 5]).0,
            RequestHead::Other
        ));
    }

    fn response(
        status: u16,
        headers: &[(&str, &str)],
        method: Method,
        body: BodySize,
        close: bool,
    ) -> (String, BodyFraming, bool) {
        let mut r = http::Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (parts, ()) = r.into_parts();
        let mut out = Vec::new();
        let (framing, close) = write_response_head(&mut out, &parts, &method, body, close, || {
            *b"Sun, 06 Nov 1994 08:49:37 GMT"
        });
        (String::from_utf8(out).unwrap(), framing, close)
    }

    #[test]
    fn response_heads_frame_the_body_that_is_sent() {
        const DATE: &str = "date: Sun, 06 Nov 1994 08:49:37 GMT\r\n";
        let (head, framing, close) = response(
            200,
            &[("content-type", "text/plain")],
            Method::GET,
            BodySize::Exact(5),
            false,
        );
        assert_eq!(
            head,
            format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n{DATE}\r\n")
        );
        assert_eq!((framing, close), (BodyFraming::Length(5), false));
        // A length the service wrote is replaced by the body's own; a stream is chunked.
        let (head, framing, _) = response(
            200,
            &[("content-length", "99"), ("transfer-encoding", "gzip")],
            Method::GET,
            BodySize::Exact(5),
            false,
        );
        assert_eq!(head, format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n{DATE}\r\n"));
        assert_eq!(framing, BodyFraming::Length(5));
        let (head, framing, _) = response(200, &[], Method::GET, BodySize::Unknown, false);
        assert_eq!(
            head,
            format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n{DATE}\r\n")
        );
        assert_eq!(framing, BodyFraming::Chunked);
        let (head, framing, _) = response(200, &[("content-length", "7")], Method::GET, BodySize::Unknown, false);
        assert_eq!(
            (head.contains("content-length: 7\r\n"), framing),
            (true, BodyFraming::Length(7))
        );
        let (head, framing, _) = response(
            200,
            &[("content-length", "7"), ("content-length", "8")],
            Method::GET,
            BodySize::Unknown,
            false,
        );
        assert_eq!(
            (head.contains("content-length"), framing),
            (false, BodyFraming::Chunked)
        );
        let (head, framing, _) = response(404, &[], Method::GET, BodySize::Empty, false);
        assert_eq!(
            head,
            format!("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n{DATE}\r\n")
        );
        assert_eq!(framing, BodyFraming::None);
        // HEAD keeps the length it was given and sends nothing; 204 and 304 have neither.
        let (head, framing, _) = response(200, &[("content-length", "1234")], Method::HEAD, BodySize::Empty, false);
        assert_eq!(
            (head.contains("content-length: 1234\r\n"), framing),
            (true, BodyFraming::None)
        );
        for status in [204, 304] {
            let (head, framing, _) = response(
                status,
                &[("content-length", "3")],
                Method::GET,
                BodySize::Exact(3),
                false,
            );
            assert!(
                !head.contains("content-length") && !head.contains("transfer-encoding"),
                "{head}"
            );
            assert_eq!(framing, BodyFraming::None);
        }
        // Closing: said once; the service's own close is honoured; its date is kept.
        let (head, _, close) = response(200, &[], Method::GET, BodySize::Empty, true);
        assert!(close && head.contains("connection: close\r\n"));
        let (head, _, close) = response(
            200,
            &[("connection", "close"), ("date", "x")],
            Method::GET,
            BodySize::Empty,
            false,
        );
        assert!(
            close && head.matches("connection").count() == 1 && !head.contains(DATE),
            "{head}"
        );
        // An interim status cannot answer here.
        let (head, framing, close) = response(101, &[("upgrade", "websocket")], Method::GET, BodySize::Empty, false);
        assert!(head.starts_with("HTTP/1.1 500 ") && !head.contains("upgrade"));
        assert_eq!((framing, close), (BodyFraming::None, true));
        // Every head parses back, framed as written.
        for (status, body, want) in [
            (200, BodySize::Exact(5), Framing::Length(5)),
            (200, BodySize::Unknown, Framing::Chunked),
            (500, BodySize::Empty, Framing::Empty),
        ] {
            let (head, _, _) = response(status, &[("x", "y")], Method::GET, body, false);
            let mut buf = BytesMut::from(head.as_bytes());
            let parsed = parse_response_head(&mut buf, &Method::GET).unwrap().unwrap();
            assert_eq!(parsed.body, want);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn chunks_are_sized_in_hex() {
        let mut out = Vec::new();
        write_chunk_size(&mut out, 26);
        out.extend_from_slice(&[b'a'; 26]);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(&out[..4], b"1a\r\n");
        let (body, trailers, rest) = dechunk(&out, 3).unwrap();
        assert_eq!((body, trailers.is_none(), rest.len()), (vec![b'a'; 26], true, 0));
        let mut line = Vec::new();
        write_chunk_size(&mut line, 0x1_0000);
        assert_eq!(line, b"10000\r\n");
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
        // A 204 that declares a body may send it after its head: its connection is not reused.
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n"),
            Ok((Empty, false))
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ncontent-length: 6\r\n\r\n"),
            Ok((Empty, false))
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"),
            Ok((Empty, true))
        );
        assert_eq!(framing("HTTP/1.1 204 No Content\r\n\r\n"), Ok((Empty, true)));
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
