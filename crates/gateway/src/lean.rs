//! The front door's lean HTTP/1.1 loop: serves the plain requests of a TLS connection — no
//! body, no upgrade, HTTP/1.1 (what browsers, the Central Dashboard, `kubectl get` and `kfp`
//! list calls send) — by calling the service directly, without hyper's dispatcher, and hands
//! the connection to hyper, with every byte it has read, at the first request it does not
//! serve (a body, an upgrade, HTTP/1.0, a malformed or oversized head). An HTTP/2 connection
//! never comes here.
//!
//! Security invariants: a request is served here only when `h1::parse_request_head` finds it
//! has no body by every rule (no `Content-Length`, no `Transfer-Encoding` in any spelling), so
//! where it ends is never in doubt and whatever follows it is the next request, read as such by
//! this loop or by hyper; anything else goes to hyper untouched, so hyper's refusals (400, 431)
//! still apply. The listener's limits hold as on hyper's path: the first head within the header
//! timeout, later ones within the idle timeout of the previous answer, a response the client
//! stops taking fails after the idle timeout (the socket's write stall), the in-flight caps
//! (503 when over them), the client's address and certificate identity on every request, the
//! end of the connection on shutdown or when its client roots are replaced (after the request
//! in flight), and a client that hangs up ends a streaming answer at once.

#![allow(clippy::disallowed_methods)] // header and idle timeouts are monotonic IO deadlines, not logic time

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::h1::{self, BodyFraming, BodySize, RequestHead};
use crate::listener::{ClientCertIdentity, ListenerMetrics, MAX_HEADER_BYTES, RequestCaps, Service, busy};

/// How a connection left the lean loop.
pub(crate) enum End {
    /// It is closed (or to be dropped): the client left, a limit was reached, or kfsec stops.
    Closed,
    /// hyper serves the rest, starting with these bytes.
    Handoff {
        /// What the client sent that the loop has not served.
        buffered: BytesMut,
        /// When the loop's last answer was sent (`None`: it served none).
        last_done: Option<Instant>,
    },
}

/// The connection's context.
pub(crate) struct Lean<'a, S> {
    pub app: &'a S,
    pub peer: std::net::IpAddr,
    pub cert_identity: Option<&'a ClientCertIdentity>,
    pub requests: &'a Arc<RequestCaps>,
    pub address: &'a Arc<AtomicUsize>,
    /// The trusted proxies, when the peer is one of them (its requests count under the clients
    /// it reports).
    pub trusted: Option<&'a crate::forwarded::TrustedProxies>,
    pub metrics: &'a ListenerMetrics,
    pub name: &'static str,
    pub header_deadline: Instant,
    pub idle_timeout: Duration,
}

/// Bytes of empty lines (CR, LF) ignored before a request line (RFC 9112 §2.2 asks for at least
/// one CRLF); a client that sends more is not speaking HTTP, and its connection is closed.
const MAX_BLANK: usize = 16;

/// Bytes of whole empty lines (`\r\n` or a bare `\n`) at the start of `buf`. A lone `\r` is
/// left: it is an empty line only if `\n` follows (one that does not is not one, and the parser
/// refuses it as hyper does).
fn empty_lines(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match &buf[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] => at += 1,
            _ => return at,
        }
    }
}

/// Bodies larger than this are written straight from their frame, not copied behind the head.
const COPY_MAX: usize = 16 * 1024;

/// Why an answer could not be sent whole.
enum SendError {
    /// The socket failed (the client left or stopped reading: see `stalled`).
    Io(std::io::Error),
    /// The body failed or did not match its length; the connection cannot go on.
    Body,
    /// The client hung up while a streaming answer waited for data.
    Gone,
}

impl<S: Service> Lean<'_, S> {
    /// Serves requests on `io` until the connection ends or is handed to hyper.
    /// `stopping` and `replaced` are the connection's (`roots` waits for `replaced`); they are
    /// asked with one atomic load per request, and their futures polled only once they may
    /// have fired (`Gated`).
    pub(crate) async fn serve<IO>(
        self,
        io: &mut IO,
        stopping: &watch::Receiver<bool>,
        replaced: &kfsec_pki::Replaced,
        roots: &mut Gated<impl Future<Output = ()>>,
        bound_to_roots: bool,
    ) -> End
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut out: Vec<u8> = Vec::with_capacity(8 * 1024);
        let mut last_done: Option<Instant> = None;
        // Bytes of `buf` known to hold no end of a head.
        let mut searched = 0;
        // Bytes of empty lines dropped before the request being read.
        let mut blank = 0;
        // Never later than the real deadline (the header deadline before the first answer, the
        // idle timeout after the last one); looked at again, and moved, when it passes.
        let timer = tokio::time::sleep_until(self.header_deadline.min(Instant::now() + self.idle_timeout));
        tokio::pin!(timer);
        // One wait for shutdown for the connection's life (not one registration per request).
        let mut stop = stopping.clone();
        let mut stopped = Gated::new(async move { drop(stop.wait_for(|s| *s).await) });
        // Whether the client roots changed since the handshake is looked at between requests
        // too, so a client pipelining without pause cannot outrun it.
        let revoked = || bound_to_roots && replaced.fired();
        // The request being served: one place for the connection's life, made at its first
        // request and reused, so a request costs no allocation of its (large) future.
        let mut serving = Box::pin(None);
        loop {
            if stop_asked(stopping) || revoked() {
                let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                return End::Closed;
            }
            let (request, keep_alive) = loop {
                // Empty lines before the request line are dropped as they come, so they are
                // never parsed again (httparse skips any number of them, and a head re-parsed
                // after each of many tiny reads would make the work quadratic).
                let leading = empty_lines(&buf);
                if leading > 0 {
                    blank += leading;
                    if blank > MAX_BLANK {
                        return End::Closed;
                    }
                    buf.advance(leading);
                    searched = 0;
                }
                // A head that came in one read is parsed at once; one that comes in pieces only
                // once a piece may have ended it.
                if searched == 0 || h1::may_hold_head(&buf, searched) || buf.len() >= MAX_HEADER_BYTES {
                    match h1::parse_request_head(&mut buf, MAX_HEADER_BYTES) {
                        RequestHead::Partial => {}
                        RequestHead::Lean { request, keep_alive } => break (request, keep_alive),
                        // A connection that spoke HTTP/1.1 stays HTTP/1.1 (hyper's automatic
                        // detection would take an HTTP/2 preface now).
                        RequestHead::Other if last_done.is_some() && h2_preface(&buf) => return End::Closed,
                        RequestHead::Other => {
                            return End::Handoff {
                                buffered: buf,
                                last_done,
                            };
                        }
                    }
                }
                searched = buf.len();
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(8 * 1024);
                }
                tokio::select! {
                    biased;
                    () = stopped.poll_if(|| may_have_changed(stopping)) => return End::Closed,
                    () = roots.poll_if(|| replaced.fired()), if bound_to_roots => return End::Closed,
                    () = &mut timer => {
                        let deadline = last_done.map_or(self.header_deadline, |t| t + self.idle_timeout);
                        let now = Instant::now();
                        if now >= deadline {
                            let reason = if last_done.is_some() { "idle_timeout" } else { "header_timeout" };
                            self.metrics.closed(self.name, reason);
                            let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                            return End::Closed;
                        }
                        timer.as_mut().reset(deadline.min(now + self.idle_timeout));
                    }
                    r = io.read_buf(&mut buf) => match r {
                        Ok(0) | Err(_) => return End::Closed,
                        Ok(_) => {}
                    },
                }
            };
            searched = 0;
            blank = 0;
            let method = request.method().clone();
            let mut req = request.map(|()| axum::body::Body::empty());
            if let Some(id) = self.cert_identity {
                req.extensions_mut().insert(id.clone());
            }
            let forwarded = self.requests.forwarded(self.trusted, req.headers());
            let permit = self.requests.try_acquire(forwarded.as_ref().unwrap_or(self.address));
            let resp = match &permit {
                Ok(_) => {
                    serving.set(Some(self.app.serve_from(req, self.peer)));
                    // The client is read meanwhile: one that hangs up ends its request (as hyper
                    // does), releasing its places under the caps and its upstream connection.
                    let resp = loop {
                        tokio::select! {
                            biased;
                            resp = poll_serving(serving.as_mut()) => break resp,
                            r = io.read_buf(&mut buf), if buf.len() < MAX_HEADER_BYTES => match r {
                                Ok(0) | Err(_) => return End::Closed,
                                Ok(_) => {}
                            },
                        }
                    };
                    // (what the request held is released now, not at the next request)
                    serving.set(None);
                    resp
                }
                Err(reason) => {
                    self.metrics.refused(self.name, reason);
                    busy()
                }
            };
            let close = !keep_alive || stop_asked(stopping) || revoked();
            let (parts, body) = resp.into_parts();
            let size = if body.is_end_stream() {
                BodySize::Empty
            } else {
                body.size_hint().exact().map_or(BodySize::Unknown, BodySize::Exact)
            };
            out.clear();
            let (framing, close) = h1::write_response_head(&mut out, &parts, &method, size, close, http_date);
            drop(parts);
            let sent = send(io, &mut out, body, framing, &mut buf).await;
            drop(permit);
            // A large answer's or head's buffer is not kept for the connection's life.
            if out.capacity() > 4 * COPY_MAX {
                out = Vec::with_capacity(8 * 1024);
            }
            if buf.is_empty() && buf.capacity() > 4 * COPY_MAX {
                buf = BytesMut::with_capacity(8 * 1024);
            }
            match sent {
                Ok(()) if !close => last_done = Some(Instant::now()),
                Ok(()) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                    return End::Closed;
                }
                Err(SendError::Io(e)) => {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        self.metrics.closed(self.name, "send_timeout");
                    }
                    return End::Closed;
                }
                Err(SendError::Body | SendError::Gone) => return End::Closed,
            }
        }
    }
}

/// Writes the head in `out` and the body as `framing` says, flushing whenever the body has no
/// data ready (so a streaming answer's frames reach the client as they come). While it waits
/// for the body, reads from the client (into `buf`, up to the head limit) so a hang-up is seen.
async fn send<IO>(
    io: &mut IO,
    out: &mut Vec<u8>,
    mut body: axum::body::Body,
    framing: BodyFraming,
    buf: &mut BytesMut,
) -> Result<(), SendError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut left = match framing {
        BodyFraming::None => {
            drop(body);
            return flush(io, out).await;
        }
        BodyFraming::Length(n) => Some(n),
        BodyFraming::Chunked => None,
    };
    loop {
        let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(f) => f,
            Poll::Pending => {
                flush(io, out).await?;
                loop {
                    tokio::select! {
                        biased;
                        f = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)) => break f,
                        r = io.read_buf(buf), if buf.len() < MAX_HEADER_BYTES => match r {
                            Ok(0) | Err(_) => return Err(SendError::Gone),
                            Ok(_) => {}
                        },
                    }
                }
            }
        };
        let data: Bytes = match frame {
            None => break,
            Some(Err(_)) => return Err(SendError::Body),
            // Trailers are not sent (hyper sends them only when the client asked with `TE`).
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        match &mut left {
            Some(n) => {
                // More than the length said: what is owed is sent, then the connection ends.
                let owed = usize::try_from(*n).unwrap_or(usize::MAX);
                let overrun = data.len() > owed;
                let data = if overrun { data.slice(..owed) } else { data };
                *n -= u64::try_from(data.len()).unwrap_or(*n);
                put(io, out, &data).await?;
                if overrun {
                    flush(io, out).await?;
                    return Err(SendError::Body);
                }
                if *n == 0 {
                    // Whole: the body is not waited on further.
                    break;
                }
            }
            None => {
                h1::write_chunk_size(out, data.len());
                put(io, out, &data).await?;
                out.extend_from_slice(b"\r\n");
            }
        }
        if out.len() > COPY_MAX {
            flush(io, out).await?;
        }
    }
    match left {
        Some(0) => {}
        Some(_) => return Err(SendError::Body),
        None => out.extend_from_slice(h1::LAST_CHUNK),
    }
    flush(io, out).await
}

/// Appends `data` behind what `out` holds, or, when it is large, writes both as they are
/// (no copy of a large frame).
async fn put<IO: AsyncWrite + Unpin>(io: &mut IO, out: &mut Vec<u8>, data: &[u8]) -> Result<(), SendError> {
    if data.len() > COPY_MAX {
        flush(io, out).await?;
        io.write_all(data).await.map_err(SendError::Io)?;
    } else {
        out.extend_from_slice(data);
    }
    Ok(())
}

/// The request in `serving` polled (pending when there is none).
fn poll_serving<F: Future>(mut serving: Pin<&mut Option<F>>) -> impl Future<Output = F::Output> + '_ {
    std::future::poll_fn(move |cx| match serving.as_mut().as_pin_mut() {
        Some(f) => f.poll(cx),
        None => Poll::Pending,
    })
}

/// Whether `stopping` may have changed since the connection began (one atomic load; the lock
/// of `borrow` only when it has).
fn may_have_changed(stopping: &watch::Receiver<bool>) -> bool {
    !matches!(stopping.has_changed(), Ok(false))
}

/// Whether kfsec is stopping.
fn stop_asked(stopping: &watch::Receiver<bool>) -> bool {
    may_have_changed(stopping) && *stopping.borrow()
}

/// A wait on a signal shared by every connection (shutdown, a replacement of the client roots),
/// polled only when a cheap check says it may have fired. Polling a registered waiter of
/// tokio's `Notify` takes the lock its waiters share, on every wake-up of every connection;
/// once polled, the waiter stays registered, so the task is still woken when it fires.
pub(crate) struct Gated<F> {
    wait: Pin<Box<tokio::task::Unconstrained<F>>>,
    registered: bool,
}

impl<F: Future> Gated<F> {
    pub(crate) fn new(wait: F) -> Self {
        Self {
            // (unconstrained: a poll is never turned away for the task's cooperative budget,
            // which would leave the wait unregistered and the gate shut)
            wait: Box::pin(tokio::task::unconstrained(wait)),
            registered: false,
        }
    }

    /// The wait, polled the first time (which registers it) and then only when
    /// `may_have_fired()` (asked at each poll: a wake-up of the task may be the signal's).
    pub(crate) fn poll_if<'a>(
        &'a mut self,
        may_have_fired: impl Fn() -> bool + 'a,
    ) -> impl Future<Output = F::Output> + 'a {
        std::future::poll_fn(move |cx| {
            if self.registered && !may_have_fired() {
                return Poll::Pending;
            }
            self.registered = true;
            self.wait.as_mut().poll(cx)
        })
    }
}

/// Whether `buf` starts as HTTP/2's connection preface does (RFC 9113 §3.4), whole or cut.
fn h2_preface(buf: &[u8]) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let n = buf.len().min(PREFACE.len());
    n > 0 && buf[..n] == PREFACE[..n]
}

/// Writes `out` whole and flushes.
async fn flush<IO: AsyncWrite + Unpin>(io: &mut IO, out: &mut Vec<u8>) -> Result<(), SendError> {
    if !out.is_empty() {
        io.write_all(out).await.map_err(SendError::Io)?;
        out.clear();
    }
    io.flush().await.map_err(SendError::Io)
}

/// The `Date` value for now, formatted once a second per thread.
fn http_date() -> [u8; 29] {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let (at, date) = c.get();
        if at == secs {
            return date;
        }
        let mut fresh = [0u8; 29];
        let text = kfsec_types::time::format_http_date(i64::try_from(secs).unwrap_or(i64::MAX));
        if text.len() == fresh.len() {
            fresh.copy_from_slice(text.as_bytes());
        }
        c.set((secs, fresh));
        fresh
    })
}

/// A connection's stream with bytes already read from it put back in front: what hyper reads
/// after the lean loop hands the connection over.
pub(crate) struct Prefixed<T> {
    prefix: Bytes,
    io: T,
}

impl<T> Prefixed<T> {
    pub(crate) fn new(prefix: Bytes, io: T) -> Self {
        Self { prefix, io }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::empty_lines;

    #[test]
    fn only_whole_empty_lines_are_dropped() {
        for (buf, n) in [
            (&b""[..], 0),
            (b"GET / HTTP/1.1\r\n", 0),
            (b"\r\nGET", 2),
            (b"\nGET", 1),
            (b"\r\n\n\r\nGET", 5),
            (b"\r", 0),
            (b"\r\n\r", 2),
            (b"\rGET", 0),
            (b"\r\r\n", 0),
            (b"\n\rGET", 1),
        ] {
            assert_eq!(empty_lines(buf), n, "{buf:?}");
        }
    }
}
