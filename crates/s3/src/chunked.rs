//! `chunked`: the aws-chunked upload body — an incremental decoder ([`ChunkedDecoder`], fed
//! `Bytes` as frames arrive) that checks each chunk signature (chained from the seed), the final
//! zero-size chunk, the trailers (`x-amz-checksum-*`, and `x-amz-trailer-signature` for the signed
//! variant), and [`VerifyingBody`], an `http_body::Body` that decodes, runs the
//! [`BodyChecks`](crate::checksum::BodyChecks) and errors with an [`S3Error`].
//!
//! Invariants: memory is bounded (a chunk-size or trailer line is at most 4 KiB, a chunk at most
//! 16 MiB, at most 8 trailer lines); sizes are hex only; the decoded length must equal
//! `x-amz-decoded-content-length`; nothing follows the end of the body. [`VerifyingBody`] withholds
//! its last data frame until every check passed, so a consumer that sends the body upstream with
//! the exact decoded `Content-Length` never delivers a complete body that failed a check: on an
//! error it must abort the upstream request.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use aws_lc_rs::digest;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};

use crate::checksum::{Algorithm, BodyChecks};
use crate::error::S3Error;
use crate::sigv4::{ChunkSigner, Payload, Verified, parse_hex32, sha256, signatures_equal};

/// Longest chunk-size line or trailer line.
pub const MAX_LINE: usize = 4096;
/// Largest accepted chunk.
pub const MAX_CHUNK: u64 = 16 * 1024 * 1024;
/// Most trailer lines.
pub const MAX_TRAILERS: usize = 8;
/// S3's largest single PUT (5 GiB).
pub const MAX_OBJECT: u64 = 5 * 1024 * 1024 * 1024;

/// How the chunks of an aws-chunked body are authenticated.
#[derive(Debug, Clone)]
pub enum ChunkMode {
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD`: signed chunks, no trailers.
    Signed(ChunkSigner),
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER`: signed chunks and signed trailers.
    SignedTrailer(ChunkSigner),
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: plain chunks, unsigned trailers.
    UnsignedTrailer,
}

impl ChunkMode {
    /// The mode of a verified aws-chunked payload; `None` for a plain body.
    pub fn of(payload: &Payload) -> Option<Self> {
        match payload {
            Payload::Streaming(s) => Some(Self::Signed(s.clone())),
            Payload::StreamingTrailer(s) => Some(Self::SignedTrailer(s.clone())),
            Payload::StreamingUnsignedTrailer => Some(Self::UnsignedTrailer),
            Payload::Sha256(_) | Payload::Unsigned => None,
        }
    }

    fn signer(&self) -> Option<&ChunkSigner> {
        match self {
            Self::Signed(s) | Self::SignedTrailer(s) => Some(s),
            Self::UnsignedTrailer => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading `hex-size[;chunk-signature=sig]\r\n`.
    SizeLine,
    /// Reading chunk data.
    Data,
    /// Expecting the `\r` (0) or `\n` (1) after chunk data.
    DataEnd(u8),
    /// Reading trailer lines after the final chunk.
    Trailer,
    /// The body is complete.
    Done,
}

fn framing(msg: &'static str) -> S3Error {
    S3Error::InvalidRequest(msg.into())
}

/// An incremental aws-chunked decoder.
pub struct ChunkedDecoder {
    mode: ChunkMode,
    state: State,
    line: Vec<u8>,
    remaining: u64,
    chunk_sig: Option<[u8; 32]>,
    chunk_hash: Option<digest::Context>,
    prev_sig: [u8; 32],
    decoded: u64,
    expected: u64,
    trailer_name: Option<&'static str>,
    trailers: Vec<(String, String)>,
    trailer_canonical: Vec<u8>,
    trailer_signed: bool,
}

impl std::fmt::Debug for ChunkedDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedDecoder")
            .field("state", &self.state)
            .field("decoded", &self.decoded)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl ChunkedDecoder {
    /// A decoder for a body of `decoded_len` bytes (`x-amz-decoded-content-length`) that may end
    /// with the trailer `trailer` (the checksum named by `x-amz-trailer`; no other trailer is
    /// accepted).
    pub fn new(mode: ChunkMode, decoded_len: u64, trailer: Option<Algorithm>) -> Self {
        let prev_sig = mode.signer().map(ChunkSigner::seed).unwrap_or([0; 32]);
        Self {
            mode,
            state: State::SizeLine,
            line: Vec::new(),
            remaining: 0,
            chunk_sig: None,
            chunk_hash: None,
            prev_sig,
            decoded: 0,
            expected: decoded_len,
            trailer_name: trailer.map(Algorithm::header_name),
            trailers: Vec::new(),
            trailer_canonical: Vec::new(),
            trailer_signed: false,
        }
    }

    /// Decoded bytes so far.
    pub fn decoded_len(&self) -> u64 {
        self.decoded
    }

    /// Feeds the next piece of the wire body; decoded data is appended to `out` (zero-copy slices
    /// of `input`). Data is yielded before its chunk's signature is checked (the check happens at
    /// the chunk's end): the caller must not complete anything until [`ChunkedDecoder::finish`].
    pub fn push(&mut self, mut input: Bytes, out: &mut Vec<Bytes>) -> Result<(), S3Error> {
        while !input.is_empty() {
            match self.state {
                State::SizeLine | State::Trailer => {
                    let Some(line) = self.take_line(&mut input)? else {
                        return Ok(());
                    };
                    if self.state == State::SizeLine {
                        self.size_line(&line)?;
                    } else {
                        self.trailer_line(&line)?;
                    }
                }
                State::Data => {
                    let n = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(input.len());
                    let data = input.split_to(n);
                    if let Some(h) = &mut self.chunk_hash {
                        h.update(&data);
                    }
                    self.remaining -= n as u64;
                    self.decoded += n as u64;
                    out.push(data);
                    if self.remaining == 0 {
                        self.state = State::DataEnd(0);
                    }
                }
                State::DataEnd(k) => {
                    let want = if k == 0 { b'\r' } else { b'\n' };
                    if input[0] != want {
                        return Err(framing("aws-chunked data is not followed by CRLF"));
                    }
                    let _ = input.split_to(1);
                    if k == 0 {
                        self.state = State::DataEnd(1);
                    } else {
                        self.end_chunk()?;
                        self.state = State::SizeLine;
                    }
                }
                State::Done => return Err(framing("data after the end of the aws-chunked body")),
            }
        }
        Ok(())
    }

    /// Takes one CRLF-terminated line (without CRLF) once complete; bounded by [`MAX_LINE`].
    fn take_line(&mut self, input: &mut Bytes) -> Result<Option<Vec<u8>>, S3Error> {
        let nl = input.iter().position(|b| *b == b'\n');
        let take = nl.map_or(input.len(), |i| i + 1);
        if self.line.len() + take > MAX_LINE + 2 {
            return Err(framing("aws-chunked line too long"));
        }
        self.line.extend_from_slice(&input.split_to(take));
        if nl.is_none() {
            return Ok(None);
        }
        let mut line = std::mem::take(&mut self.line);
        line.pop();
        if line.pop() != Some(b'\r') {
            return Err(framing("aws-chunked line does not end in CRLF"));
        }
        Ok(Some(line))
    }

    fn size_line(&mut self, line: &[u8]) -> Result<(), S3Error> {
        let (size, ext) = match line.iter().position(|b| *b == b';') {
            Some(i) => (&line[..i], Some(&line[i + 1..])),
            None => (line, None),
        };
        if size.is_empty() || size.len() > 8 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(framing("aws-chunked chunk size is not hex"));
        }
        let mut n: u64 = 0;
        for &c in size {
            n = n * 16 + u64::from((c as char).to_digit(16).unwrap_or(0));
        }
        if n > MAX_CHUNK {
            return Err(framing("aws-chunked chunk larger than 16 MiB"));
        }
        self.chunk_sig = match (&self.mode, ext) {
            (ChunkMode::UnsignedTrailer, None) => None,
            (ChunkMode::UnsignedTrailer, Some(_)) => {
                return Err(framing("unexpected aws-chunked chunk extension"));
            }
            (_, Some(ext)) => {
                let sig = ext
                    .strip_prefix(b"chunk-signature=")
                    .and_then(parse_hex32)
                    .ok_or_else(|| framing("malformed chunk-signature"))?;
                Some(sig)
            }
            (_, None) => return Err(S3Error::SignatureDoesNotMatch),
        };
        if self.decoded.saturating_add(n) > self.expected {
            return Err(S3Error::BodyTooLong);
        }
        if n == 0 {
            self.chunk_hash = None;
            self.verify_chunk_sig(&sha256(b""))?;
            self.state = State::Trailer;
        } else {
            self.remaining = n;
            self.chunk_hash = self.chunk_sig.is_some().then(|| digest::Context::new(&digest::SHA256));
            self.state = State::Data;
        }
        Ok(())
    }

    fn end_chunk(&mut self) -> Result<(), S3Error> {
        if let Some(h) = self.chunk_hash.take() {
            let d = h.finish();
            let mut hash = [0u8; 32];
            hash.copy_from_slice(d.as_ref());
            self.verify_chunk_sig(&hash)?;
        }
        Ok(())
    }

    fn verify_chunk_sig(&mut self, chunk_hash: &[u8; 32]) -> Result<(), S3Error> {
        let (Some(signer), Some(got)) = (self.mode.signer(), self.chunk_sig.take()) else {
            return Ok(());
        };
        let want = signer.chunk_signature(&self.prev_sig, chunk_hash);
        if !signatures_equal(&want, &got) {
            return Err(S3Error::SignatureDoesNotMatch);
        }
        self.prev_sig = want;
        Ok(())
    }

    fn trailer_line(&mut self, line: &[u8]) -> Result<(), S3Error> {
        if line.is_empty() {
            return self.end_trailers();
        }
        if self.trailer_signed {
            return Err(framing("trailer after x-amz-trailer-signature"));
        }
        let text = std::str::from_utf8(line).map_err(|_| framing("trailer is not UTF-8"))?;
        let (name, value) = text.split_once(':').ok_or_else(|| framing("malformed trailer"))?;
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        match &self.mode {
            ChunkMode::Signed(_) => return Err(framing("trailers without a trailer payload")),
            ChunkMode::SignedTrailer(signer) if name == "x-amz-trailer-signature" => {
                let got = parse_hex32(value.as_bytes()).ok_or_else(|| framing("malformed x-amz-trailer-signature"))?;
                let want = signer.trailer_signature(&self.prev_sig, &sha256(&self.trailer_canonical));
                if !signatures_equal(&want, &got) {
                    return Err(S3Error::SignatureDoesNotMatch);
                }
                self.trailer_signed = true;
                return Ok(());
            }
            _ => {}
        }
        if Some(name.as_str()) != self.trailer_name {
            return Err(S3Error::InvalidRequest(
                "The trailer was not announced in x-amz-trailer".into(),
            ));
        }
        if self.trailers.iter().any(|(n, _)| *n == name) || self.trailers.len() >= MAX_TRAILERS {
            return Err(framing("duplicate trailer"));
        }
        self.trailer_canonical.extend_from_slice(name.as_bytes());
        self.trailer_canonical.push(b':');
        self.trailer_canonical.extend_from_slice(value.as_bytes());
        self.trailer_canonical.push(b'\n');
        self.trailers.push((name, value.to_owned()));
        Ok(())
    }

    fn end_trailers(&mut self) -> Result<(), S3Error> {
        if matches!(self.mode, ChunkMode::SignedTrailer(_)) && !self.trailers.is_empty() && !self.trailer_signed {
            return Err(S3Error::SignatureDoesNotMatch);
        }
        self.state = State::Done;
        Ok(())
    }

    /// Ends the body: it must have reached its end (a body ending right after the last trailer
    /// line is accepted) and decoded to exactly the announced length. Returns the trailers
    /// (lower-case names) for [`BodyChecks::finish`](crate::checksum::BodyChecks::finish).
    pub fn finish(&mut self) -> Result<Vec<(String, String)>, S3Error> {
        if self.state == State::Trailer && self.line.is_empty() {
            self.end_trailers()?;
        }
        if self.state != State::Done {
            return Err(S3Error::IncompleteBody(
                "The aws-chunked body ended before its final chunk".into(),
            ));
        }
        if self.decoded != self.expected {
            return Err(S3Error::IncompleteBody(
                "You did not provide the number of bytes specified by the x-amz-decoded-content-length HTTP header"
                    .into(),
            ));
        }
        Ok(std::mem::take(&mut self.trailers))
    }
}

/// What a request body must be: its decoded length, aws-chunked framing, and the checks.
#[derive(Debug)]
pub struct BodyPlan {
    /// The decoded body length: send it upstream as `Content-Length`.
    pub decoded_len: u64,
    decoder: Option<ChunkedDecoder>,
    checks: BodyChecks,
}

impl BodyPlan {
    /// The plan for a verified request: aws-chunked payloads need `x-amz-decoded-content-length`
    /// (else `MissingContentLength`), other bodies `Content-Length` when they have one
    /// (`Transfer-Encoding` without it → `MissingContentLength`); over 5 GiB → `EntityTooLarge`;
    /// `Content-Encoding: aws-chunked` with a non-streaming payload → `InvalidArgument`; the
    /// checks from [`BodyChecks::from_request`].
    pub fn from_request(headers: &HeaderMap, verified: &Verified) -> Result<Self, S3Error> {
        let checks = BodyChecks::from_request(headers, &verified.payload)?;
        let length = |name: &str| -> Result<Option<u64>, S3Error> {
            let mut it = headers.get_all(name).iter();
            let Some(v) = it.next() else { return Ok(None) };
            if it.next().is_some() {
                return Err(S3Error::InvalidArgument(format!("Multiple {name} headers").into()));
            }
            let s = v.to_str().unwrap_or("");
            if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(S3Error::InvalidArgument(format!("Invalid {name}").into()));
            }
            s.parse::<u64>()
                .map(Some)
                .map_err(|_| S3Error::InvalidArgument(format!("Invalid {name}").into()))
        };
        // aws-chunked framing without a streaming x-amz-content-sha256 would reach the object
        // store undecoded (as the object's bytes): refused.
        let aws_chunked_encoding = headers
            .get_all(http::header::CONTENT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|e| e.trim().eq_ignore_ascii_case("aws-chunked"));
        if aws_chunked_encoding && !verified.payload.is_aws_chunked() {
            return Err(S3Error::InvalidArgument(
                "Content-Encoding aws-chunked needs a STREAMING-* x-amz-content-sha256".into(),
            ));
        }
        let (decoded_len, decoder) = match ChunkMode::of(&verified.payload) {
            Some(mode) => {
                let n = length("x-amz-decoded-content-length")?.ok_or(S3Error::MissingContentLength)?;
                let trailer = checks.trailer();
                (n, Some(ChunkedDecoder::new(mode, n, trailer)))
            }
            None => match length("content-length")? {
                Some(n) => (n, None),
                None if headers.contains_key(http::header::TRANSFER_ENCODING) => {
                    return Err(S3Error::MissingContentLength);
                }
                None => (0, None),
            },
        };
        if decoded_len > MAX_OBJECT {
            return Err(S3Error::EntityTooLarge);
        }
        Ok(Self {
            decoded_len,
            decoder,
            checks,
        })
    }
}

/// `Content-Encoding` to forward upstream: the request's without `aws-chunked` (`None` when
/// nothing is left).
pub fn forward_content_encoding(value: &str) -> Option<String> {
    let rest: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!rest.is_empty()).then(|| rest.join(","))
}

/// A request body that decodes aws-chunked framing, checks length, signatures and checksums as
/// it streams, and yields the decoded bytes. The last data frame is withheld until every check
/// passed; any failure is an `Err(S3Error)` frame (the consumer must abort the upstream write).
pub struct VerifyingBody<B> {
    inner: B,
    decoder: Option<ChunkedDecoder>,
    checks: Option<BodyChecks>,
    expected: u64,
    seen: u64,
    held: Option<Bytes>,
    queue: VecDeque<Bytes>,
    done: bool,
}

impl<B> std::fmt::Debug for VerifyingBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingBody")
            .field("expected", &self.expected)
            .field("seen", &self.seen)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<B> VerifyingBody<B> {
    /// Wraps `inner` (the client's body) according to `plan`.
    pub fn new(inner: B, plan: BodyPlan) -> Self {
        Self {
            inner,
            decoder: plan.decoder,
            checks: Some(plan.checks),
            expected: plan.decoded_len,
            seen: 0,
            held: None,
            queue: VecDeque::new(),
            done: false,
        }
    }

    fn accept(&mut self, frame: Bytes) -> Result<(), S3Error> {
        let mut out = Vec::new();
        match &mut self.decoder {
            Some(d) => d.push(frame, &mut out)?,
            None => out.push(frame),
        }
        for b in out {
            if b.is_empty() {
                continue;
            }
            self.seen = self.seen.saturating_add(b.len() as u64);
            if self.seen > self.expected {
                return Err(S3Error::BodyTooLong);
            }
            if let Some(c) = &mut self.checks {
                c.update(&b);
            }
            self.queue.push_back(b);
        }
        Ok(())
    }

    fn complete(&mut self) -> Result<(), S3Error> {
        let trailers = match &mut self.decoder {
            Some(d) => d.finish()?,
            None => Vec::new(),
        };
        if self.seen != self.expected {
            return Err(S3Error::IncompleteBody(
                "You did not provide the number of bytes specified by the Content-Length HTTP header".into(),
            ));
        }
        if let Some(c) = self.checks.take() {
            c.finish(&trailers)?;
        }
        Ok(())
    }
}

impl<B> Body for VerifyingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = S3Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, S3Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.queue.pop_front() {
                if let Some(prev) = this.held.replace(b) {
                    return Poll::Ready(Some(Ok(Frame::data(prev))));
                }
                continue;
            }
            if this.done {
                return Poll::Ready(this.held.take().map(|b| Ok(Frame::data(b))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // HTTP trailers of the transport are not part of S3's protocol: ignored.
                    if let Ok(data) = frame.into_data()
                        && let Err(e) = this.accept(data)
                    {
                        this.done = true;
                        this.held = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Some(Err(e)) => {
                    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                    tracing::debug!(error = %e, "s3: request body failed");
                    this.done = true;
                    this.held = None;
                    return Poll::Ready(Some(Err(S3Error::IncompleteBody(
                        "The request body could not be read".into(),
                    ))));
                }
                None => {
                    this.done = true;
                    if let Err(e) = this.complete() {
                        this.held = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.held.is_none() && self.queue.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.expected.saturating_sub(self.seen.saturating_sub(
            self.held.as_ref().map_or(0, |b| b.len() as u64) + self.queue.iter().map(|b| b.len() as u64).sum::<u64>(),
        )))
    }
}

#[cfg(test)]
mod tests;
