//! Upstream HTTP/1.1 connections: one pool per upstream (plain) or per TLS route, each pooled
//! connection driven by the task of the request that uses it — no task per connection, no
//! channel hop per request. Requests without a body (`GET`, `HEAD`: [`lean_eligible`], the
//! bulk of proxied traffic) take the lean path: kfsec's own codec ([`crate::h1`]) writes the
//! head and reads the answer straight from the socket, the small answer whole with its head.
//! Others (bodies, upgrades) go through hyper's client connection: the request task polls it
//! while it awaits the response head; the response body handed back ([`ResponseBody`]) holds
//! the connection and polls it before each frame, so the front door's connection task drives
//! the upstream one too. The two kinds keep separate idle lists.
//!
//! Invariants: a connection goes back to its pool only after its response body ended and the
//! connection settled idle, ready for the next request — for a lean one: its answer said where
//! it ends (never read until close), kept the connection alive, and nothing was read past it
//! or arrived since; a body dropped before its end (the client went away) or that failed
//! closes its connection. An answer [`crate::h1`] could frame two ways is refused, never
//! guessed at. An idle connection is checked before reuse (an upstream's close shows as the
//! connection finishing, or the socket readable) and expires after [`IDLE_TIMEOUT`]. A
//! request is retried — once, on a fresh connection — only from a reused connection: through
//! hyper when it hands the request back unsent, on the lean path (idempotent requests only)
//! when the connection failed before any byte of an answer arrived. Upgrade requests get a
//! dedicated connection of their own (its driver spawned), never pooled. TLS connections are
//! verified at connect by their route's `ClientConfig`; the proxy replaces a TLS route's pool
//! when the roots change, so no connection verified under old roots is checked out again.
//!
//! Deadlines (nginx's `proxy_connect_timeout`, `proxy_read_timeout`, `proxy_send_timeout`):
//! opening a connection (TCP, then TLS) takes at most [`CONNECT_TIMEOUT`] each; every
//! transport is [`Timed`]: a write the upstream does not take, and — once the request was sent
//! whole, until its answer ended — a read it does not answer, fail after the pool's `timeout`
//! without progress. Time between two requests (pooled), while the client's request body is
//! still coming, or in a tunnel after `101` is never counted against the upstream. A request
//! that timed out is never retried.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::header::{CONTENT_LENGTH, HOST, HeaderValue, TRANSFER_ENCODING};
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::h1::{self, ChunkedDecoder, Decoded, Framing, H1Error};
use crate::stall::StallTimer;

/// How long an idle connection is kept (hyper_util's legacy client's default).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The time one new TCP connection may take (split between an upstream's addresses), and then
/// its TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an upstream request failed. The display names the step; the source says what happened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("resolving {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr} timed out")]
    ConnectTimeout { addr: SocketAddr },
    #[error("TLS handshake")]
    Tls(#[source] std::io::Error),
    #[error("TLS handshake timed out")]
    TlsTimeout,
    #[error("HTTP/1.1 handshake")]
    Handshake(#[source] hyper::Error),
    #[error("upstream request")]
    Request(#[source] hyper::Error),
    #[error("sending the request")]
    Send(#[source] std::io::Error),
    #[error("receiving the response")]
    Receive(#[source] std::io::Error),
    #[error("the upstream closed the connection before the response ended")]
    Closed,
    #[error("upstream response")]
    Response(#[source] H1Error),
}

impl UpstreamError {
    /// Whether the upstream let a deadline pass (connecting, a [`Timed`] wait, or the kernel's
    /// own `ETIMEDOUT` on the connection): nginx's 504, not a 502.
    pub(crate) fn timed_out(&self) -> bool {
        if matches!(self, Self::ConnectTimeout { .. } | Self::TlsTimeout) {
            return true;
        }
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            if e.is::<Stalled>()
                || e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// The error of a [`Timed`] transport whose upstream let one wait last its timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent and took nothing for {0:?}")]
pub(crate) struct Stalled(Duration);

/// Which wait a connection's [`Timed`] transport times, set by the task driving the connection:
/// [`Phase::AWAITING`] says an answer is awaited (the request was sent whole and its answer has
/// not ended), [`Phase::TUNNEL`] that the connection became a tunnel (for good: nothing is
/// awaited again); the rest counts the changes, so each change ends the wait under way.
#[derive(Debug, Default)]
pub(crate) struct Phase(AtomicU64);

impl Phase {
    const AWAITING: u64 = 1;
    const TUNNEL: u64 = 2;
    /// One change, in the count above the flags.
    const STEP: u64 = 4;

    /// A new phase with `flags` (one atomic step: an upgrade's connection task and its request
    /// task may both set it), unless the connection is a tunnel.
    fn set(&self, flags: u64) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
            (now & Self::TUNNEL == 0).then_some(((now & !(Self::STEP - 1)) + Self::STEP) | flags)
        });
    }

    /// The request was sent whole: its answer is awaited from now on.
    fn awaiting(&self) {
        self.set(Self::AWAITING);
    }

    /// The answer ended: nothing is awaited.
    fn settled(&self) {
        self.set(0);
    }

    /// The connection became a tunnel: either side may be quiet as long as it likes.
    fn tunnel(&self) {
        self.set(Self::TUNNEL);
    }

    /// Whether the phase `value` awaits an answer.
    fn awaits(value: u64) -> bool {
        value & Self::AWAITING != 0
    }
}

/// An upstream transport under its pool's `timeout`: a write (or flush) the upstream does not
/// take, and a read it does not answer while [`Phase`] says an answer is awaited, fail with
/// [`Stalled`] once one wait lasted `timeout`. Reads and writes wait apart (progress of one
/// never ends the other's wait); every change of phase ends the read's.
pub(crate) struct Timed<Io> {
    io: Io,
    phase: Arc<Phase>,
    /// The phase the running read wait belongs to.
    seen: u64,
    reading: StallTimer,
    writing: StallTimer,
}

impl<Io> Timed<Io> {
    fn new(io: Io, timeout: Duration) -> Self {
        Self {
            io,
            phase: Arc::default(),
            seen: 0,
            reading: StallTimer::new(timeout),
            writing: StallTimer::new(timeout),
        }
    }

    fn stalled<T>(timeout: Duration) -> std::io::Result<T> {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, Stalled(timeout)))
    }

    /// `poll` (a write's or a flush's) under the write timer.
    fn watch_write<T>(&mut self, cx: &mut Context<'_>, poll: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        let timeout = self.writing.limit();
        self.writing.watch(cx, poll, || Self::stalled(timeout))
    }

    /// A write's `poll` under the write timer. The upstream taking bytes also restarts the
    /// read's wait when an answer is awaited — the answer is awaited from the request's last
    /// byte written, and the task is woken at the wait's end even if it never looks for the
    /// answer again before (hyper may have looked before the request was whole, untimed).
    fn watch_written(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            let phase = self.phase.0.load(Ordering::Relaxed);
            self.seen = phase;
            if Phase::awaits(phase) {
                self.reading.restart(cx);
            } else {
                self.reading.disarm();
            }
        }
        self.watch_write(cx, poll)
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Timed<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let phase = this.phase.0.load(Ordering::Relaxed);
        if phase != this.seen {
            this.seen = phase;
            this.reading.disarm();
        }
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        if Phase::awaits(phase) {
            let timeout = this.reading.limit();
            this.reading.watch(cx, poll, || Self::stalled(timeout))
        } else {
            poll
        }
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Timed<Io> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch_written(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch_written(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.watch_write(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request body that tells its connection's [`Phase`] when it was sent whole (hyper's path:
/// the answer is awaited from then on, not while the client is still sending): at its end, its
/// trailers, or when hyper drops it (hyper stops polling a body once its length is reached,
/// without asking whether it ended). Telling wakes the task driving the connection, whose last
/// look for the answer may have been untimed.
pub(crate) struct Sending<B> {
    body: B,
    phase: Arc<Phase>,
    /// The waker of the task driving the connection (kept from the last poll, for the drop).
    waker: Option<Waker>,
    /// Told already (once per request: telling again would restart the wait).
    told: bool,
}

impl<B: http_body::Body> Sending<B> {
    fn new(body: B, phase: Arc<Phase>) -> Self {
        let mut sending = Self {
            body,
            phase,
            waker: None,
            told: false,
        };
        if sending.body.is_end_stream() {
            sending.sent();
        }
        sending
    }

    /// The same body, unsent, for another connection.
    fn moved_to(&mut self, phase: Arc<Phase>) {
        self.phase = phase;
        self.waker = None;
        self.told = false;
        if self.body.is_end_stream() {
            self.sent();
        }
    }

    /// Tells the phase, once; whether it was told now.
    fn sent(&mut self) -> bool {
        let now = !std::mem::replace(&mut self.told, true);
        if now {
            self.phase.awaiting();
        }
        now
    }
}

impl<B> Drop for Sending<B> {
    fn drop(&mut self) {
        if !self.told {
            self.told = true;
            self.phase.awaiting();
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Sending<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            this.waker = Some(cx.waker().clone());
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        let over = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers() || this.body.is_end_stream(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => false,
        };
        if over && this.sent() {
            cx.waker().wake_by_ref();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request body the pool can send: what hyper's client connections accept.
pub(crate) trait ReqBody: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static {}
impl<B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static> ReqBody for B {}

/// Opens a transport to one upstream.
pub(crate) trait Connect: Send + Sync + 'static {
    /// The byte stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A new connection.
    fn connect(&self) -> impl Future<Output = Result<Self::Io, UpstreamError>> + Send;
}

/// TCP to `host:port` (a name is resolved on each new connection), `TCP_NODELAY` set.
#[derive(Debug, Clone)]
pub(crate) struct Tcp {
    host: String,
    port: u16,
    /// Places for the name's lookups on the blocking pool ([`MAX_LOOKUPS`]); a place is held
    /// until its lookup returns, even one a connection gave up waiting for.
    lookups: Arc<tokio::sync::Semaphore>,
}

/// Lookups of one upstream's name at once: a resolver that stopped answering holds this many
/// blocking threads, not one per connection attempt.
const MAX_LOOKUPS: usize = 4;

impl Tcp {
    /// The upstream of `uri` (an `http://` or `https://` URL with an authority).
    pub(crate) fn new(uri: &Uri) -> Self {
        let host = uri.host().unwrap_or_default();
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let default = if uri.scheme_str() == Some("https") { 443 } else { 80 };
        Self {
            host: host.to_owned(),
            port: uri.port_u16().unwrap_or(default),
            lookups: Arc::new(tokio::sync::Semaphore::new(MAX_LOOKUPS)),
        }
    }

    /// The addresses of the upstream, by `deadline`: an address as it is; a name looked up on
    /// the blocking pool, at most [`MAX_LOOKUPS`] at once.
    async fn addresses(&self, deadline: Instant) -> Result<Vec<SocketAddr>, UpstreamError> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let failed = |source| UpstreamError::Resolve {
            host: self.host.clone(),
            source,
        };
        let timed_out = || failed(std::io::ErrorKind::TimedOut.into());
        let permit = tokio::time::timeout_at(deadline, self.lookups.clone().acquire_owned())
            .await
            .map_err(|_| timed_out())?
            .map_err(std::io::Error::other)
            .map_err(failed)?;
        let (host, port) = (self.host.clone(), self.port);
        let lookup = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)).map(Iterator::collect)
        });
        match tokio::time::timeout_at(deadline, lookup).await {
            Err(_) => Err(timed_out()),
            Ok(Err(joined)) => Err(failed(std::io::Error::other(joined))),
            Ok(Ok(found)) => found.map_err(failed),
        }
    }

    async fn stream(&self) -> Result<TcpStream, UpstreamError> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let addrs = self.addresses(deadline).await?;
        let mut failed = UpstreamError::NoAddress {
            host: self.host.clone(),
        };
        // Like hyper_util's `HttpConnector`: each address gets its share of the time left.
        for (i, addr) in addrs.iter().enumerate() {
            let share =
                deadline.saturating_duration_since(Instant::now()) / u32::try_from(addrs.len() - i).unwrap_or(1);
            match tokio::time::timeout(share, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    s.set_nodelay(true)
                        .map_err(|source| UpstreamError::Connect { addr: *addr, source })?;
                    return Ok(s);
                }
                Ok(Err(source)) => failed = UpstreamError::Connect { addr: *addr, source },
                Err(_) => failed = UpstreamError::ConnectTimeout { addr: *addr },
            }
        }
        Err(failed)
    }
}

impl Connect for Tcp {
    type Io = TcpStream;

    async fn connect(&self) -> Result<TcpStream, UpstreamError> {
        self.stream().await
    }
}

/// TLS over [`Tcp`] with a fixed server name and a route's client config.
pub(crate) struct Tls {
    pub(crate) tcp: Tcp,
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) server_name: rustls::pki_types::ServerName<'static>,
}

impl Connect for Tls {
    type Io = tokio_rustls::client::TlsStream<TcpStream>;

    async fn connect(&self) -> Result<Self::Io, UpstreamError> {
        let tcp = self.tcp.stream().await?;
        let handshake = self.connector.connect(self.server_name.clone(), tcp);
        match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Ok(done) => done.map_err(UpstreamError::Tls),
            Err(_) => Err(UpstreamError::TlsTimeout),
        }
    }
}

/// The waker a connection is polled with, for its whole life: it wakes the task that drives the
/// connection now (none while idle), and holds back the wake-ups that task causes itself while
/// it takes the connection's output (`ResponseBody::poll_frame`).
#[derive(Default)]
struct Gate {
    task: AtomicWaker,
    holding: AtomicBool,
    held: AtomicBool,
}

impl std::task::Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.holding.load(Ordering::SeqCst) {
            self.held.store(true, Ordering::SeqCst);
        } else {
            self.task.wake();
        }
    }
}

/// One HTTP/1.1 connection: the sender and the connection future, polled by whoever uses it.
struct Conn<C: Connect, B: ReqBody> {
    tx: SendRequest<Sending<B>>,
    /// What its transport times.
    phase: Arc<Phase>,
    gate: Arc<Gate>,
    /// `gate` as a waker (made once: hyper and tokio keep it registered, no clone per poll).
    waker: Waker,
    /// `None` once the connection finished (closed or failed). Boxed: it is large (hundreds of
    /// bytes), and a `Conn` moves several times per request (pool, request, body, pool).
    conn: Option<Box<HyperConnection<C, B>>>,
}

/// hyper's side of a pooled connection.
type HyperConnection<C, B> = Connection<TokioIo<Timed<<C as Connect>::Io>>, Sending<B>>;

impl<C: Connect, B: ReqBody> Conn<C, B> {
    /// Polls the connection; false once it finished (it is dropped then, which hands a request
    /// it never took back to its sender).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        self.gate.task.register(cx.waker());
        match Pin::new(conn).poll(&mut Context::from_waker(&self.waker)) {
            Poll::Pending => true,
            Poll::Ready(done) => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "upstream connection failed");
                }
                self.conn = None;
                false
            }
        }
    }

    /// Whether the connection can take another request now: polled once for no task (no
    /// syscall when its socket saw no event), so it settles idle — or shows the upstream closed it —
    /// and wakes no task that used it before.
    fn settle(&mut self) -> bool {
        matches!(unbudgeted(poll_fn(|cx| Poll::Ready(self.drive(cx)))), Poll::Ready(true)) && self.tx.is_ready()
    }

    /// Drives the connection until `sent` (a request sent on it) has the response head. The
    /// request comes back in the error only when it was never written.
    fn poll_sent<F: Future>(&mut self, cx: &mut Context<'_>, sent: Pin<&mut F>) -> Poll<F::Output> {
        if self.drive(cx) {
            // Only polling the connection (just done) can complete `sent`: no waker needed.
            sent.poll(&mut Context::from_waker(Waker::noop()))
        } else {
            sent.poll(cx)
        }
    }
}

/// Polls `fut` once for no task, outside tokio's cooperative budget: with the task's budget
/// spent (a client pipelining many requests), tokio would answer Pending without looking at
/// the socket, and a closed or unsolicited-data connection would pass an idle check.
fn unbudgeted<F: Future>(fut: F) -> Poll<F::Output> {
    pin!(tokio::task::unconstrained(fut)).poll(&mut Context::from_waker(Waker::noop()))
}

/// A connection being opened.
type Opening<'a, C, B> = Pin<Box<dyn Future<Output = Result<Conn<C, B>, UpstreamError>> + Send + 'a>>;

struct Idle<T> {
    conn: T,
    since: Instant,
}

/// One worker's idle connections to an upstream, the oldest first.
type IdleList<T> = parking_lot::Mutex<VecDeque<Idle<T>>>;

/// Idle lists, one per connection worker (`workers::current`; index 0 for other threads): a
/// connection is reused by the worker that opened it, whose reactor it is registered with.
struct Shards<T>(Box<[IdleList<T>]>);

impl<T> Shards<T> {
    fn new(workers: usize) -> Self {
        // One per worker (`Workers::per_core`) and one for other threads.
        Self(
            (0..=workers)
                .map(|_| parking_lot::Mutex::new(VecDeque::new()))
                .collect(),
        )
    }

    /// This thread's idle list.
    fn current(&self) -> &IdleList<T> {
        &self.0[crate::workers::current() % self.0.len()]
    }

    /// The most recently used idle connection younger than `timeout` that `settle` finds
    /// usable, if any (the expired ones are dropped on the way, after the lock).
    fn checkout(&self, timeout: Duration, mut settle: impl FnMut(&mut T) -> bool) -> Option<T> {
        loop {
            let now = Instant::now();
            let (mut candidate, expired) = {
                let mut idle = self.current().lock();
                let candidate = idle.pop_back()?;
                (candidate, take_expired(&mut idle, now, timeout))
            };
            drop(expired);
            if now.saturating_duration_since(candidate.since) < timeout && settle(&mut candidate.conn) {
                return Some(candidate.conn);
            }
        }
    }

    /// Keeps `conn` on this thread's list unless it holds `max` already (then it is closed).
    fn put(&self, conn: T, max: usize) {
        let idle = Idle {
            conn,
            since: Instant::now(),
        };
        let full = {
            let mut list = self.current().lock();
            if list.len() < max {
                list.push_back(idle);
                None
            } else {
                Some(idle)
            }
        };
        drop(full);
    }

    /// Closes the connections idle for `timeout`.
    fn purge(&self, timeout: Duration) {
        let now = Instant::now();
        for list in &self.0 {
            let expired = take_expired(&mut list.lock(), now, timeout);
            drop(expired);
        }
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.0.iter().map(|s| s.lock().len()).sum()
    }
}

/// The connections of `idle` that were idle for `timeout` at `now` (the oldest are at its front).
fn take_expired<T>(idle: &mut VecDeque<Idle<T>>, now: Instant, timeout: Duration) -> Vec<Idle<T>> {
    let mut expired = Vec::new();
    while let Some(front) = idle.front()
        && now.saturating_duration_since(front.since) >= timeout
    {
        expired.extend(idle.pop_front());
    }
    expired
}

/// The idle connections to one upstream.
pub(crate) struct Pool<C: Connect, B: ReqBody> {
    connect: C,
    /// The `Host` every request carries (the upstream's authority, default port omitted).
    host: HeaderValue,
    /// Idle hyper connections (requests with a body).
    idle: Shards<Conn<C, B>>,
    /// Idle lean connections (requests without one: [`lean_eligible`]).
    lean: Shards<Lean<C::Io>>,
    /// Per idle list (the pool's cap divided among the workers).
    max_idle: usize,
    idle_timeout: Duration,
    /// The longest an upstream may let one wait last ([`Timed`]).
    timeout: Duration,
    reaper: AtomicBool,
}

/// `Host` for `uri`, as hyper_util's legacy client sets it: the host, and the port unless it is
/// the scheme's default.
pub(crate) fn host_header(uri: &Uri) -> HeaderValue {
    let host = uri.host().unwrap_or_default();
    let default = if uri.scheme_str() == Some("https") { 443 } else { 80 };
    let value = match uri.port_u16() {
        Some(port) if port != default => HeaderValue::try_from(format!("{host}:{port}")),
        _ => HeaderValue::try_from(host),
    };
    value.unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl<C: Connect, B: ReqBody> Pool<C, B> {
    /// An empty pool that keeps at most `max_idle` idle connections, each for `idle_timeout`; an
    /// upstream that lets one wait last `timeout` fails its request ([`Timed`]).
    pub(crate) fn new(
        connect: C,
        host: HeaderValue,
        max_idle: usize,
        idle_timeout: Duration,
        timeout: Duration,
    ) -> Self {
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            connect,
            host,
            idle: Shards::new(workers),
            lean: Shards::new(workers),
            // Divided, so that more workers keep no more idle sockets (they count against the
            // file descriptors the listeners' caps leave free).
            max_idle: max_idle.div_ceil(workers),
            idle_timeout,
            timeout,
            reaper: AtomicBool::new(false),
        }
    }

    /// Sends `req` (origin-form URI, no `Host`) over a pooled or new connection; the answer's body
    /// drives the connection and returns it to the pool at its end. An `upgrade` request gets a
    /// dedicated connection that can be taken over (`hyper::upgrade::on`).
    pub(crate) fn send(
        self: &Arc<Self>,
        mut req: Request<B>,
        upgrade: bool,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamError>> + Send + '_ {
        req.headers_mut().insert(HOST, self.host.clone());
        let lean = !upgrade && lean_eligible(&req);
        let idle = if upgrade || lean { None } else { self.checkout() };
        async move {
            if lean {
                return self.send_lean(req).await;
            }
            // (boxed: the rarer path's large future is not made part of every request's)
            Box::pin(self.send_on(idle, req, upgrade)).await
        }
    }

    /// [`Self::send`] for a request without a body ([`lean_eligible`]), over a lean connection.
    /// A reused connection that fails before any byte of the answer arrived (the upstream
    /// closed it meanwhile) is replaced once by a new one: the request is idempotent.
    async fn send_lean(self: &Arc<Self>, req: Request<B>) -> Result<Response<Body>, UpstreamError> {
        let method = req.method().clone();
        let mut head = Vec::with_capacity(512);
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        h1::write_request_head(&mut head, &method, target, req.headers());
        drop(req);
        let (mut conn, mut reused) = match self.lean.checkout(self.idle_timeout, Lean::settle) {
            Some(conn) => (conn, true),
            // (boxed: connecting is rare, and its future large)
            None => (self.open_lean().await?, false),
        };
        let answer = loop {
            match conn.exchange(&head, &method).await {
                Ok(answer) => break answer,
                Err((e, unanswered)) if reused && unanswered && !e.timed_out() => {
                    tracing::debug!(error = %e, "reused upstream connection was closed; retrying");
                    conn = self.open_lean().await?;
                    reused = false;
                }
                Err((e, _)) => return Err(e),
            }
        };
        // (After a HEAD too, as hyper and nginx do: closing every HEAD's connection would let a
        // client flooding HEADs fill kfsec's ephemeral ports with TIME_WAIT sockets.)
        let keep_alive = answer.keep_alive;
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = answer.status;
        *resp.version_mut() = answer.version;
        *resp.headers_mut() = answer.headers;
        if let Some(reason) = answer.reason.and_then(|r| hyper::ext::ReasonPhrase::try_from(r).ok()) {
            resp.extensions_mut().insert(reason);
        }
        let reading = match answer.body {
            Framing::Empty => {
                self.release_lean(conn, keep_alive);
                return Ok(resp);
            }
            // The usual small answer: read whole with its head.
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                let body = conn.buf.split_to(usize::try_from(n).unwrap_or(usize::MAX)).freeze();
                self.release_lean(conn, keep_alive);
                *resp.body_mut() = Body::from(body);
                return Ok(resp);
            }
            Framing::Length(n) => Reading::Length(n),
            Framing::Chunked => Reading::Chunked(ChunkedDecoder::default()),
            Framing::UntilClose => Reading::UntilClose,
        };
        *resp.body_mut() = Body::new(LeanBody {
            conn: Some(conn),
            reading,
            keep_alive,
            pool: self.clone(),
        });
        Ok(resp)
    }

    /// [`Self::send`] on `idle` (a reused hyper connection) or a new one. One flat state machine (no
    /// nested `async fn` holding the request again): it is part of every proxied request's
    /// future, which is moved and copied whole.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice (rust-lang/rust#62958): the request's future grows by one request"
    )]
    fn send_on(
        self: &Arc<Self>,
        idle: Option<Conn<C, B>>,
        req: Request<B>,
        upgrade: bool,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamError>> + Send + '_ {
        async move {
            if upgrade {
                return Box::pin(self.send_upgrade(req)).await;
            }
            let (mut conn, mut reused) = match idle {
                Some(conn) => (conn, true),
                None => (self.open().await?, false),
            };
            let mut req = req.map(|body| Sending::new(body, conn.phase.clone()));
            let resp = loop {
                let mut sent = pin!(conn.tx.try_send_request(req));
                let unsent = match poll_fn(|cx| conn.poll_sent(cx, sent.as_mut())).await {
                    Ok(resp) => break resp,
                    Err(mut e) => match e.take_message() {
                        // The upstream closed the idle connection as it was taken: never written,
                        // so sent once more on a new connection.
                        Some(unsent) if reused => {
                            tracing::debug!(error = %e.error(), "reused upstream connection was closed; retrying");
                            unsent
                        }
                        _ => return Err(UpstreamError::Request(e.into_error())),
                    },
                };
                conn = self.open().await?;
                req = unsent;
                req.body_mut().moved_to(conn.phase.clone());
                reused = false;
            };
            Ok(resp.map(|body| {
                Body::new(ResponseBody {
                    body,
                    conn: Some(conn),
                    pool: self.clone(),
                    ended: false,
                })
            }))
        }
    }

    async fn send_upgrade(&self, req: Request<B>) -> Result<Response<Body>, UpstreamError> {
        let io = Timed::new(self.connect.connect().await?, self.timeout);
        let phase = io.phase.clone();
        let (mut tx, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(UpstreamError::Handshake)?;
        // The rare path: a connection that may become a tunnel, driven by its own task.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection failed");
            }
        });
        let req = req.map(|body| Sending::new(body, phase.clone()));
        let resp = tx.send_request(req).await.map_err(UpstreamError::Request)?;
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // A tunnel: either side may be quiet for as long as it likes (writes stay timed).
            phase.tunnel();
        }
        Ok(resp.map(Body::new))
    }

    /// A new connection. (Boxed: connecting — resolving, TCP, TLS — takes a large future that
    /// would otherwise be part of every request's, which is moved and copied whole.)
    fn open(&self) -> Opening<'_, C, B> {
        Box::pin(async move {
            let io = Timed::new(self.connect.connect().await?, self.timeout);
            let phase = io.phase.clone();
            let (tx, conn) = http1::handshake(TokioIo::new(io))
                .await
                .map_err(UpstreamError::Handshake)?;
            let gate = Arc::new(Gate::default());
            Ok(Conn {
                tx,
                phase,
                waker: Waker::from(gate.clone()),
                gate,
                conn: Some(Box::new(conn)),
            })
        })
    }

    /// A new lean connection.
    async fn open_lean(&self) -> Result<Lean<C::Io>, UpstreamError> {
        Ok(Lean::new(Timed::new(
            Box::pin(self.connect.connect()).await?,
            self.timeout,
        )))
    }

    /// The most recently used idle connection that is still open, if any.
    fn checkout(&self) -> Option<Conn<C, B>> {
        self.idle.checkout(self.idle_timeout, Conn::settle)
    }

    /// Keeps `conn` for the next request (unless the pool is full).
    fn put(self: &Arc<Self>, conn: Conn<C, B>) {
        self.idle.put(conn, self.max_idle);
        self.reap_later();
    }

    /// Keeps a lean connection whose response ended, when it is reusable: `keep_alive` (its
    /// response allowed it) and nothing arrived since.
    fn release_lean(self: &Arc<Self>, mut conn: Lean<C::Io>, keep_alive: bool) {
        conn.io.phase.settled();
        if keep_alive && conn.settle() {
            if conn.buf.capacity() > READ_CHUNK {
                // (a large head grew it: an idle connection keeps no more than a small one)
                conn.buf = BytesMut::new();
            }
            self.lean.put(conn, self.max_idle);
            self.reap_later();
        }
    }

    /// Starts the reaper of expired idle connections, once.
    fn reap_later(self: &Arc<Self>) {
        if !self.reaper.swap(true, Ordering::Relaxed)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(reap(Arc::downgrade(self), self.idle_timeout));
        }
    }

    fn purge(&self) {
        self.idle.purge(self.idle_timeout);
        self.lean.purge(self.idle_timeout);
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.count() + self.lean.count()
    }
}

/// Closes a pool's expired idle connections while nobody takes connections from it (a
/// checkout drops the expired ones itself); ends with the pool.
/// Whether `req` takes the lean path: a `GET` or `HEAD` whose body is known to be empty (no
/// `Transfer-Encoding`, no `Content-Length` but 0). Anything else goes through hyper.
fn lean_eligible<B: ReqBody>(req: &Request<B>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD)
        && http_body::Body::is_end_stream(req.body())
        && !req.headers().contains_key(TRANSFER_ENCODING)
        && req.headers().get_all(CONTENT_LENGTH).iter().all(|v| v == "0")
}

/// How much the read buffer grows by when it runs low.
const READ_CHUNK: usize = 16 * 1024;

/// A connection of the lean path, spoken to with [`crate::h1`]: the transport, and what was read
/// past the response being handled.
struct Lean<Io> {
    io: Timed<Io>,
    buf: BytesMut,
}

impl<Io: AsyncRead + AsyncWrite + Unpin> Lean<Io> {
    fn new(io: Timed<Io>) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether the connection can take another request: nothing is left of the last answer and
    /// nothing arrived since — no byte, no close, no error. Polled once for no task (no syscall
    /// when the socket saw no event).
    fn settle(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut probe);
        let io = &mut self.io;
        unbudgeted(poll_fn(|cx| Pin::new(&mut *io).poll_read(cx, &mut probe))).is_pending()
    }

    /// Makes room for the next read.
    fn reserve(&mut self) {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
    }

    /// Writes the request `head` and reads the final response head (interim 1xx answers are
    /// skipped). On failure, also whether no byte of an answer arrived.
    async fn exchange(&mut self, head: &[u8], method: &Method) -> Result<h1::ResponseHead, (UpstreamError, bool)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // (the head is the whole request: its answer is awaited from the first byte written)
        self.io.phase.awaiting();
        if let Err(e) = async {
            self.io.write_all(head).await?;
            self.io.flush().await
        }
        .await
        {
            return Err((UpstreamError::Send(e), true));
        }
        let mut interim = 0;
        let mut answered = false;
        // How much of the buffer is known to hold no end of a head: after a first parse found
        // the head incomplete, only reads that may complete it are parsed again.
        let mut searched = 0;
        loop {
            let parsed = if searched == 0 || h1::may_hold_head(&self.buf, searched) || self.buf.len() >= h1::MAX_HEAD {
                h1::parse_response_head(&mut self.buf, method)
            } else {
                Ok(None)
            };
            searched = self.buf.len();
            match parsed {
                Ok(Some(answer)) => {
                    searched = 0;
                    if answer.status == http::StatusCode::SWITCHING_PROTOCOLS {
                        return Err((UpstreamError::Response(H1Error::UnexpectedUpgrade), false));
                    }
                    if !answer.status.is_informational() {
                        return Ok(answer);
                    }
                    interim += 1;
                    if interim > h1::MAX_INTERIM {
                        return Err((UpstreamError::Response(H1Error::TooManyInterim), false));
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err((UpstreamError::Response(e), false)),
            }
            self.reserve();
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => return Err((UpstreamError::Closed, !answered)),
                Ok(_) => answered = true,
                Err(e) => return Err((UpstreamError::Receive(e), !answered)),
            }
        }
    }
}

/// What is left to read of a lean response's body.
enum Reading {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// A lean response's body, read from its connection as it is polled; the connection goes back
/// to the pool at the body's end when the response allowed it, and is closed when the body is
/// dropped before its end or fails.
struct LeanBody<C: Connect, B: ReqBody> {
    /// `None` once the body ended or failed.
    conn: Option<Lean<C::Io>>,
    reading: Reading,
    keep_alive: bool,
    pool: Arc<Pool<C, B>>,
}

impl<C: Connect, B: ReqBody> LeanBody<C, B> {
    /// The body ended: the connection may serve another request.
    fn finish(&mut self) {
        self.reading = Reading::Done;
        if let Some(conn) = self.conn.take() {
            self.pool.release_lean(conn, self.keep_alive);
        }
    }

    fn fail(&mut self, e: UpstreamError) -> Poll<Option<Result<http_body::Frame<Bytes>, UpstreamError>>> {
        self.reading = Reading::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl<C: Connect, B: ReqBody> http_body::Body for LeanBody<C, B> {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, UpstreamError>>> {
        use http_body::Frame;
        use tokio::io::AsyncReadExt;
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.reading {
                Reading::Done => return Poll::Ready(None),
                Reading::Length(left) if !conn.buf.is_empty() => {
                    let n = usize::try_from(*left).map_or(conn.buf.len(), |l| l.min(conn.buf.len()));
                    let data = conn.buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Reading::Chunked(decoder) => match decoder.decode(&mut conn.buf) {
                    Ok(Some(Decoded::Data(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Some(Decoded::Trailers(t))) => {
                        // The last frame (hyper's server polls no further): the connection is
                        // released now.
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Some(Decoded::End)) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => return this.fail(UpstreamError::Response(e)),
                },
                Reading::UntilClose if !conn.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                }
                Reading::Length(_) | Reading::UntilClose => {}
            }
            conn.reserve();
            // (`read_buf` reads or registers the waker; dropped when pending, nothing is lost)
            let read = pin!(conn.io.read_buf(&mut conn.buf)).poll(cx);
            match std::task::ready!(read) {
                Ok(0) if matches!(this.reading, Reading::UntilClose) => {
                    this.reading = Reading::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(UpstreamError::Closed),
                Ok(_) => {}
                Err(e) => return this.fail(UpstreamError::Receive(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.reading, Reading::Done | Reading::Length(0))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.reading {
            Reading::Length(n) => http_body::SizeHint::with_exact(n),
            Reading::Done => http_body::SizeHint::with_exact(0),
            Reading::Chunked(_) | Reading::UntilClose => http_body::SizeHint::default(),
        }
    }
}

async fn reap<C: Connect, B: ReqBody>(pool: Weak<Pool<C, B>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.purge();
    }
}

/// An upstream response body that drives its connection, and returns it to the pool once the
/// body ended.
struct ResponseBody<C: Connect, B: ReqBody> {
    body: Incoming,
    /// `None` once the connection finished or was released.
    conn: Option<Conn<C, B>>,
    pool: Arc<Pool<C, B>>,
    ended: bool,
}

impl<C: Connect, B: ReqBody> ResponseBody<C, B> {
    fn release(&mut self) {
        if let Some(mut conn) = self.conn.take()
            && conn.settle()
        {
            // (after the settling drive: the request's body may have ended in it)
            conn.phase.settled();
            self.pool.put(conn);
        }
    }
}

impl<C: Connect, B: ReqBody> http_body::Body for ResponseBody<C, B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let driving = this.conn.as_mut().is_some_and(|c| c.drive(cx));
        let polled = match this.conn.as_ref() {
            Some(c) if driving => {
                // Only the connection (polled just now) feeds the body: no waker needed. Taking
                // a frame wakes the connection's body sender, that is this task: held back, as
                // the caller polls again for the next frame (or the body ended); a wake-up held
                // back when there was no frame is passed on.
                c.gate.holding.store(true, Ordering::SeqCst);
                let polled = Pin::new(&mut this.body).poll_frame(&mut Context::from_waker(Waker::noop()));
                c.gate.holding.store(false, Ordering::SeqCst);
                if c.gate.held.swap(false, Ordering::SeqCst) && polled.is_pending() {
                    cx.waker().wake_by_ref();
                }
                polled
            }
            _ => Pin::new(&mut this.body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => {
                this.ended = true;
                this.release();
            }
            Poll::Ready(Some(Err(_))) => this.conn = None,
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl<C: Connect, B: ReqBody> Drop for ResponseBody<C, B> {
    /// A body that ended — also one never polled because it was empty (HEAD, 204, 304,
    /// `Content-Length: 0`) or whose last frame was its known length — returns the connection;
    /// one dropped midway closes it (the rest of the answer is still on the wire).
    fn drop(&mut self) {
        if self.ended || http_body::Body::is_end_stream(&self.body) {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use http::{Method, StatusCode};
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const BIG: usize = 8 << 20;
    /// The pools' upstream timeout in tests (long: only the deadline tests wait for theirs).
    const TIMEOUT: Duration = Duration::from_secs(30);

    /// A local HTTP/1 upstream that counts the connections it accepted.
    struct Upstream {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
    }

    impl Upstream {
        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        fn pool(&self, idle_timeout: Duration) -> Arc<Pool<Tcp, Body>> {
            self.timed_pool(idle_timeout, TIMEOUT)
        }

        fn timed_pool(&self, idle_timeout: Duration, timeout: Duration) -> Arc<Pool<Tcp, Body>> {
            let uri: Uri = format!("http://{}", self.addr).parse().unwrap();
            Arc::new(Pool::new(Tcp::new(&uri), host_header(&uri), 256, idle_timeout, timeout))
        }
    }

    async fn answer(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_owned();
        let resp = match path.as_str() {
            "/204" => Response::builder().status(StatusCode::NO_CONTENT).body(Body::empty()),
            "/304" => Response::builder().status(StatusCode::NOT_MODIFIED).body(Body::empty()),
            "/empty" => Response::builder().header("content-length", "0").body(Body::empty()),
            "/echo" => Response::builder().body(Body::new(req.into_body())),
            // answers once the whole request body arrived: its length
            // reads the whole request body, then never answers
            "/hang" => {
                let _ = req.into_body().collect().await;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Response::builder().body(Body::empty())
            }
            "/collect" => {
                let n = req.into_body().collect().await.map_or(0, |b| b.to_bytes().len());
                Response::builder().body(Body::from(format!("{n}")))
            }
            "/drip" => {
                let chunks = futures_util::stream::unfold(0u8, |i| async move {
                    if i == 20 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Some((Ok::<_, Infallible>(Bytes::from(vec![i; 1000])), i + 1))
                });
                Response::builder().body(Body::from_stream(chunks))
            }
            "/big" => {
                let chunks = (0..BIG / 65536).map(|_| Ok::<_, Infallible>(Bytes::from(vec![7u8; 65536])));
                Response::builder().body(Body::from_stream(futures_util::stream::iter(chunks)))
            }
            _ => {
                let host = req.headers().get(HOST).cloned();
                Response::builder()
                    .header("x-host", host.unwrap_or_else(|| HeaderValue::from_static("")))
                    .body(Body::from(format!("ok {path}")))
            }
        };
        Ok(resp.unwrap())
    }

    /// Accepts connections on 127.0.0.1, counts them and hands each to `serve` in a task.
    async fn serve<F: Future<Output = ()> + Send + 'static>(
        serve: impl Fn(TcpStream) -> F + Send + 'static,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s));
            }
        });
        Upstream { addr, accepted }
    }

    /// A hyper HTTP/1 upstream answering with [`answer`].
    async fn upstream(keep_alive: bool) -> Upstream {
        async fn http1(s: TcpStream, keep_alive: bool) {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(keep_alive)
                .serve_connection(TokioIo::new(s), hyper::service::service_fn(answer))
                .await;
        }
        if keep_alive {
            serve(|s| http1(s, true)).await
        } else {
            serve(|s| http1(s, false)).await
        }
    }

    /// How long after its answer [`closing_upstream`] closes the connection.
    const CLOSE_AFTER: Duration = Duration::from_millis(30);

    /// An upstream that answers one request per connection, keep-alive in its headers, then
    /// closes the connection (as at the end of its keep-alive timeout).
    async fn closing_upstream() -> Upstream {
        serve(|mut s| async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            // the close comes a little after the answer: the connection was idle
            tokio::time::sleep(CLOSE_AFTER).await;
        })
        .await
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    async fn text(pool: &Arc<Pool<Tcp, Body>>, req: Request<Body>) -> (StatusCode, String) {
        let resp = pool.send(req, false).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let up = upstream(true).await;
        let pool = up.pool(IDLE_TIMEOUT);
        for i in 0..20 {
            assert_eq!(
                text(&pool, get(&format!("/n{i}"))).await,
                (StatusCode::OK, format!("ok /n{i}"))
            );
        }
        assert_eq!(up.accepted(), 1);
        assert_eq!(pool.idle_count(), 1);
        // Host is the upstream's authority
        let resp = pool.send(get("/"), false).await.unwrap();
        assert_eq!(resp.headers()["x-host"], up.addr.to_string().as_str());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_requests_open_at_most_one_connection_each_and_reuse_them() {
        let up = upstream(true).await;
        let pool = up.pool(IDLE_TIMEOUT);
        let burst = |n: usize| {
            let pool = pool.clone();
            async move {
                let tasks: Vec<_> = (0..n)
                    .map(|i| {
                        let pool = pool.clone();
                        tokio::spawn(async move { text(&pool, get(&format!("/p{i}"))).await })
                    })
                    .collect();
                for (i, t) in tasks.into_iter().enumerate() {
                    assert_eq!(t.await.unwrap(), (StatusCode::OK, format!("ok /p{i}")));
                }
            }
        };
        burst(16).await;
        let opened = up.accepted();
        assert!((1..=16).contains(&opened), "{opened}");
        assert_eq!(pool.idle_count(), opened);
        // one at a time now: all on the idle connections
        for i in 0..opened {
            assert_eq!(text(&pool, get(&format!("/p{i}"))).await.0, StatusCode::OK);
        }
        assert_eq!(up.accepted(), opened);
    }

    #[tokio::test]
    async fn a_body_dropped_midway_closes_its_connection() {
        let up = upstream(true).await;
        let pool = up.pool(IDLE_TIMEOUT);
        let resp = pool.send(get("/big"), false).await.unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        drop(body);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(text(&pool, get("/")).await.0, StatusCode::OK);
        assert_eq!(up.accepted(), 2);
    }

    #[tokio::test]
    async fn empty_answers_return_their_connection() {
        let up = upstream(true).await;
        let pool = up.pool(IDLE_TIMEOUT);
        for _ in 0..3 {
            let head = Request::builder()
                .method(Method::HEAD)
                .uri("/")
                .body(Body::empty())
                .unwrap();
            for (req, status) in [
                (head, StatusCode::OK),
                (get("/204"), StatusCode::NO_CONTENT),
                (get("/304"), StatusCode::NOT_MODIFIED),
                (get("/empty"), StatusCode::OK),
            ] {
                // dropped without a poll, as hyper's server does with an empty body
                let resp = pool.send(req, false).await.unwrap();
                assert_eq!(resp.status(), status);
                assert!(http_body::Body::is_end_stream(resp.body()));
                drop(resp);
                assert_eq!(pool.idle_count(), 1);
            }
        }
        assert_eq!(up.accepted(), 1);
    }

    #[tokio::test]
    async fn connections_the_upstream_closes_are_not_reused() {
        // `Connection: close` in the answer
        let up = upstream(false).await;
        let pool = up.pool(IDLE_TIMEOUT);
        for _ in 0..5 {
            assert_eq!(text(&pool, get("/")).await, (StatusCode::OK, "ok /".into()));
        }
        assert_eq!(up.accepted(), 5);
        // closed silently after a keep-alive answer
        let up = closing_upstream().await;
        let pool = up.pool(IDLE_TIMEOUT);
        for _ in 0..5 {
            assert_eq!(text(&pool, get("/")).await, (StatusCode::OK, "ok".into()));
            assert_eq!(pool.idle_count(), 1);
            tokio::time::sleep(CLOSE_AFTER * 3).await;
        }
        assert_eq!(up.accepted(), 5);
    }

    #[tokio::test]
    async fn a_request_handed_back_unsent_is_retried_on_a_new_connection() {
        let up = closing_upstream().await;
        let pool = up.pool(IDLE_TIMEOUT);
        // (hyper's path, which requests with a body take)
        let resp = pool.send_on(None, get("/"), false).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(pool.idle.count(), 1);
        // the upstream's close reaches the idle socket; taken without the pool's check, as if
        // it arrived just after it
        tokio::time::sleep(CLOSE_AFTER * 3).await;
        let conn = pool.idle.current().lock().pop_back().unwrap().conn;
        let resp = pool.send_on(Some(conn), get("/"), false).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(up.accepted(), 2);
    }

    #[tokio::test]
    async fn a_request_on_a_new_connection_is_not_retried() {
        // an upstream that closes every connection it accepts
        let up = serve(|s| async move { drop(s) }).await;
        let pool = up.pool(IDLE_TIMEOUT);
        let e = pool.send(get("/"), false).await.unwrap_err();
        assert!(
            matches!(
                e,
                UpstreamError::Closed | UpstreamError::Receive(_) | UpstreamError::Send(_)
            ),
            "{e:?}"
        );
        assert_eq!(up.accepted(), 1);
        // hyper's path (requests with a body) alike
        let req = Request::post("/").body(Body::from("x")).unwrap();
        let e = pool.send(req, false).await.unwrap_err();
        assert!(matches!(e, UpstreamError::Request(_)), "{e:?}");
        assert_eq!(up.accepted(), 2);
    }

    /// An upstream that answers every request on a connection with `answer` (raw bytes).
    async fn raw_upstream(answer: &'static [u8], then: Option<(Duration, &'static [u8])>) -> Upstream {
        serve(move |mut s| async move {
            let mut buf = [0u8; 4096];
            loop {
                let mut head = Vec::new();
                // (a body may follow in the same read: not read as the next head, as an upstream
                // that never reads bodies)
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if s.write_all(answer).await.is_err() {
                    return;
                }
                if let Some((after, extra)) = then {
                    tokio::time::sleep(after).await;
                    let _ = s.write_all(extra).await;
                }
            }
        })
        .await
    }

    /// `pool`'s answer to `req` as (status, body, trailers), or the error (of the head or body).
    async fn lean_answer(
        pool: &Arc<Pool<Tcp, Body>>,
        req: Request<Body>,
    ) -> Result<(StatusCode, String, Option<http::HeaderMap>), String> {
        let resp = pool.send(req, false).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status();
        let collected = resp.into_body().collect().await.map_err(|e| format!("{e:?}"))?;
        let trailers = collected.trailers().cloned();
        Ok((
            status,
            String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
            trailers,
        ))
    }

    #[tokio::test]
    async fn lean_answers_are_framed_and_reused_as_they_say() {
        // (answer, body read, connection reusable)
        let cases: &[(&'static [u8], &str, bool)] = &[
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", "ok", true),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", "", true),
            (b"HTTP/1.1 204 No Content\r\n\r\n", "", true),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", "ok", true),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n3;x=y\r\n ok\r\n0\r\nx-t: 1\r\n\r\n", "ok ok", true),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok", "ok", false),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", "ok", false),
        ];
        for &(answer, body, reused) in cases {
            let up = raw_upstream(answer, None).await;
            let pool = up.pool(IDLE_TIMEOUT);
            for _ in 0..3 {
                let (status, got, trailers) = lean_answer(&pool, get("/")).await.unwrap();
                assert!(status.is_success(), "{answer:?}");
                assert_eq!(got, body, "{answer:?}");
                if body == "ok ok" {
                    assert_eq!(trailers.unwrap()["x-t"], "1");
                }
            }
            assert_eq!(up.accepted(), if reused { 1 } else { 3 }, "{answer:?}");
        }
        // a body delimited by the close
        let up = serve(|mut s| async move {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = s.write_all(b" the close").await;
        })
        .await;
        let pool = up.pool(IDLE_TIMEOUT);
        assert_eq!(lean_answer(&pool, get("/")).await.unwrap().1, "until the close");
        assert_eq!(pool.idle_count(), 0);
        // HEAD: no body, whatever the length says
        let up = raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", None).await;
        let pool = up.pool(IDLE_TIMEOUT);
        for _ in 0..3 {
            let req = Request::head("/").body(Body::empty()).unwrap();
            let resp = pool.send(req, false).await.unwrap();
            assert_eq!(resp.headers()[CONTENT_LENGTH], "9");
            assert!(resp.into_body().collect().await.unwrap().to_bytes().is_empty());
        }
        assert_eq!(up.accepted(), 1);
    }

    #[tokio::test]
    async fn a_lean_answer_ending_in_trailers_returns_its_connection_at_them() {
        let up = raw_upstream(
            b"HTTP/1.1 299 Fine\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n",
            None,
        )
        .await;
        let pool = up.pool(IDLE_TIMEOUT);
        for _ in 0..3 {
            let resp = pool.send(get("/"), false).await.unwrap();
            let reason = resp.extensions().get::<hyper::ext::ReasonPhrase>().unwrap();
            assert_eq!(reason.as_bytes(), b"Fine", "an uncommon reason phrase is passed on");
            let mut body = resp.into_body();
            assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "ok");
            let trailers = body.frame().await.unwrap().unwrap().into_trailers().unwrap();
            assert_eq!(trailers["x-t"], "1");
            // hyper's server polls no further after trailers: the body is dropped here
            assert!(http_body::Body::is_end_stream(&body));
            drop(body);
            assert_eq!(pool.idle_count(), 1);
        }
        assert_eq!(up.accepted(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_idle_check_sees_the_socket_even_with_the_tasks_budget_spent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (mut upstream, _) = listener.accept().await.unwrap();
        // an idle connection the upstream wrote to, then closed
        upstream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil")
            .await
            .unwrap();
        drop(upstream);
        let mut conn = Lean::new(Timed::new(client, TIMEOUT));
        // another socket with data, polled in the same task poll until tokio's budget is spent
        let mut other = TcpStream::connect(addr).await.unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        peer.write_all(&[0u8; 4096]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let settled = poll_fn(|cx| {
            let mut byte = [0u8; 1];
            for _ in 0..200 {
                let _ = Pin::new(&mut other).poll_read(cx, &mut tokio::io::ReadBuf::new(&mut byte));
            }
            Poll::Ready(conn.settle())
        })
        .await;
        assert!(!settled, "a connection with unread bytes passed the idle check");
    }

    #[tokio::test]
    async fn lean_answers_framed_two_ways_or_cut_short_fail_and_close() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nok",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\r\n folded\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let up = raw_upstream(answer, None).await;
            let pool = up.pool(IDLE_TIMEOUT);
            for _ in 0..2 {
                let e = lean_answer(&pool, get("/")).await.unwrap_err();
                assert!(e.contains("Response("), "{answer:?}: {e}");
            }
            assert_eq!(pool.idle_count(), 0);
            assert_eq!(up.accepted(), 2, "{answer:?}: a failed connection is never reused");
        }
        // a length not reached before the close
        let up = serve(|mut s| async move {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort").await;
        })
        .await;
        let pool = up.pool(IDLE_TIMEOUT);
        assert!(lean_answer(&pool, get("/")).await.unwrap_err().contains("Closed"));
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_lean_request_the_reused_connection_drops_unanswered_is_sent_again_once() {
        // Each connection answers its first request and drops the second unanswered (as an
        // upstream closing an idle connection as the request arrives).
        let up = serve(|mut s| async move {
            let mut buf = [0u8; 4096];
            for answered in [true, false] {
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if answered {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                }
            }
        })
        .await;
        let pool = up.pool(IDLE_TIMEOUT);
        assert_eq!(text(&pool, get("/")).await, (StatusCode::OK, "ok".into()));
        assert_eq!(text(&pool, get("/")).await, (StatusCode::OK, "ok".into()));
        assert_eq!(up.accepted(), 2, "sent again on a new connection");
        // (a new connection that drops the request: not sent again, see
        // `a_request_on_a_new_connection_is_not_retried`)
    }

    #[tokio::test]
    async fn extra_answers_never_reach_the_next_request() {
        const EVIL: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil";
        // in the same write
        let up = raw_upstream(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil",
            None,
        )
        .await;
        let pool = up.pool(IDLE_TIMEOUT);
        for _ in 0..3 {
            assert_eq!(text(&pool, get("/")).await, (StatusCode::OK, "ok".into()));
        }
        // a little later, while the connection is idle
        let up = raw_upstream(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Some((Duration::from_millis(30), EVIL)),
        )
        .await;
        let pool = up.pool(IDLE_TIMEOUT);
        for _ in 0..3 {
            assert_eq!(text(&pool, get("/")).await, (StatusCode::OK, "ok".into()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // after a 304, a HEAD, a 204 that came with bodies anyway
        for answer in [
            &b"HTTP/1.1 304 Not Modified\r\ncontent-length: 4\r\n\r\nevil"[..],
            b"HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n4\r\nevil\r\n0\r\n\r\n",
        ] {
            let up = raw_upstream(answer, None).await;
            let pool = up.pool(IDLE_TIMEOUT);
            for _ in 0..3 {
                let resp = pool.send(get("/"), false).await.unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert!(body.is_empty());
            }
        }
        let up = raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil", None).await;
        let pool = up.pool(IDLE_TIMEOUT);
        for _ in 0..3 {
            let head = Request::head("/").body(Body::empty()).unwrap();
            let resp = pool.send(head, false).await.unwrap();
            assert!(resp.into_body().collect().await.unwrap().to_bytes().is_empty());
            assert_eq!(text(&pool, get("/")).await, (StatusCode::OK, "evil".into()));
        }
    }

    #[tokio::test]
    async fn a_connection_with_a_request_body_half_sent_is_never_reused() {
        // The upstream answers as soon as it has a head, without reading the body.
        let up = raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", None).await;
        let pool = up.pool(IDLE_TIMEOUT);
        // a body that stalls after its first chunk (its sender kept)
        let stalled = futures_util::StreamExt::chain(
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(
                b"GET /smuggled HTTP/1.1\r\n",
            ))]),
            futures_util::stream::pending(),
        );
        let req = Request::post("/up")
            .header("content-length", "1000")
            .body(Body::from_stream(stalled))
            .unwrap();
        assert_eq!(text(&pool, req).await, (StatusCode::OK, "ok".into()));
        assert_eq!(pool.idle_count(), 0);
        // a body that fails after its first chunk
        let chunks = futures_util::stream::iter([
            Ok(Bytes::from_static(b"half")),
            Err(std::io::Error::other("client went away")),
        ]);
        let req = Request::post("/up")
            .header("content-length", "1000")
            .body(Body::from_stream(chunks))
            .unwrap();
        if let Ok(resp) = pool.send(req, false).await {
            let _ = resp.into_body().collect().await;
        }
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(text(&pool, get("/")).await, (StatusCode::OK, "ok".into()));
        assert_eq!(up.accepted(), 3);
    }

    #[tokio::test]
    async fn bodies_stream_both_ways() {
        let up = upstream(true).await;
        let pool = up.pool(IDLE_TIMEOUT);
        // download
        let resp = pool.send(get("/big"), false).await.unwrap();
        let mut body = resp.into_body();
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            n += frame.unwrap().into_data().unwrap().len();
        }
        drop(body);
        assert_eq!(n, BIG);
        // upload, echoed while it is still being sent
        let chunks = (0..BIG / 65536).map(|i| Ok::<_, Infallible>(Bytes::from(vec![(i % 251) as u8; 65536])));
        let req = Request::post("/echo")
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .unwrap();
        let resp = pool.send(req, false).await.unwrap();
        let echoed = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(echoed.len(), BIG);
        assert!(
            echoed
                .chunks(65536)
                .enumerate()
                .all(|(i, c)| c.iter().all(|b| *b == (i % 251) as u8))
        );
        assert_eq!(text(&pool, get("/")).await.0, StatusCode::OK);
        // one lean connection (GETs) and one of hyper's (the upload), each reused
        assert_eq!(up.accepted(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bodies_that_arrive_slowly_wake_their_reader() {
        let up = upstream(true).await;
        let pool = up.pool(IDLE_TIMEOUT);
        for _ in 0..3 {
            let pool = pool.clone();
            let read = tokio::spawn(async move {
                let resp = pool.send(get("/drip"), false).await.unwrap();
                let mut body = resp.into_body();
                let mut frames = Vec::new();
                while let Some(frame) = body.frame().await {
                    frames.push(frame.unwrap().into_data().unwrap());
                }
                frames
            });
            let frames = tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                frames.concat(),
                (0..20u8).flat_map(|i| vec![i; 1000]).collect::<Vec<_>>()
            );
        }
        assert_eq!(up.accepted(), 1);
    }

    #[tokio::test]
    async fn upstreams_by_name_are_looked_up_on_each_new_connection() {
        let up = upstream(true).await;
        let uri: Uri = format!("http://localhost:{}", up.addr.port()).parse().unwrap();
        let pool: Arc<Pool<Tcp, Body>> =
            Arc::new(Pool::new(Tcp::new(&uri), host_header(&uri), 8, IDLE_TIMEOUT, TIMEOUT));
        assert_eq!(text(&pool, get("/n")).await, (StatusCode::OK, "ok /n".into()));
        // every place for a lookup given back
        assert_eq!(pool.connect.lookups.available_permits(), MAX_LOOKUPS);
        let unknown: Uri = "http://no-such-host.invalid:80".parse().unwrap();
        let pool: Arc<Pool<Tcp, Body>> = Arc::new(Pool::new(
            Tcp::new(&unknown),
            host_header(&unknown),
            8,
            IDLE_TIMEOUT,
            TIMEOUT,
        ));
        let e = pool.send(get("/"), false).await.unwrap_err();
        // (refused by the resolver, or — one that does not answer — timed out: either way, named)
        assert!(matches!(e, UpstreamError::Resolve { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn an_upstream_that_is_down_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let pool: Arc<Pool<Tcp, Body>> =
            Arc::new(Pool::new(Tcp::new(&uri), host_header(&uri), 8, IDLE_TIMEOUT, TIMEOUT));
        let e = pool.send(get("/"), false).await.unwrap_err();
        assert!(matches!(e, UpstreamError::Connect { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let up = upstream(true).await;
        let pool = up.pool(Duration::from_millis(100));
        assert_eq!(text(&pool, get("/")).await.0, StatusCode::OK);
        assert_eq!(text(&pool, get("/")).await.0, StatusCode::OK);
        assert_eq!(up.accepted(), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        // the reaper closed it
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(text(&pool, get("/")).await.0, StatusCode::OK);
        assert_eq!(up.accepted(), 2);
    }

    /// The deadline of the deadline tests.
    const SHORT: Duration = Duration::from_millis(300);

    /// Reads one request head (and `body` bytes after it) from `s`; false if it closed first.
    async fn read_request(s: &mut TcpStream, body: usize) -> bool {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n")
                && seen.len() >= end + 4 + body
            {
                return true;
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// An upstream that reads a request (head and `body` bytes), writes the `parts` of its
    /// answer `gap` apart, reads the next request and answers nothing more: it keeps the
    /// connection open, silent, for a minute.
    async fn scripted(body: usize, parts: &'static [&'static [u8]], gap: Duration) -> Upstream {
        serve(move |mut s| async move {
            if read_request(&mut s, body).await {
                for part in parts {
                    tokio::time::sleep(gap).await;
                    if s.write_all(part).await.is_err() {
                        return;
                    }
                }
                let _ = read_request(&mut s, body).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        })
        .await
    }

    fn post(path: &str, body: &'static str) -> Request<Body> {
        Request::post(path).body(Body::from(body)).unwrap()
    }

    /// `what` failed by the deadline, within a second of it.
    async fn times_out<T: std::fmt::Debug>(what: impl Future<Output = Result<T, UpstreamError>>) {
        let start = Instant::now();
        let e = tokio::time::timeout(Duration::from_secs(10), what)
            .await
            .unwrap()
            .unwrap_err();
        let took = start.elapsed();
        assert!(e.timed_out(), "{e:?}");
        assert!(took >= SHORT && took < SHORT + Duration::from_secs(1), "{took:?}");
    }

    #[tokio::test]
    async fn an_upstream_that_never_answers_times_out_on_both_paths_and_is_not_retried() {
        // no answer at all, half a head, an interim answer only — then nothing: on the lean
        // path (GET) and hyper's (a body)
        const SILENCES: [&[&[u8]]; 3] = [
            &[],
            &[b"HTTP/1.1 200 OK\r\ncontent-len"],
            &[b"HTTP/1.1 100 Continue\r\n\r\n"],
        ];
        for parts in SILENCES {
            for body in [0, 1] {
                let up = scripted(body, parts, Duration::ZERO).await;
                let pool = up.timed_pool(IDLE_TIMEOUT, SHORT);
                let req = if body == 0 { get("/") } else { post("/", "x") };
                times_out(pool.send(req, false)).await;
            }
        }
        // answered once, silent on the reused connection: not sent again on a new one
        for body in [0, 1] {
            let up = scripted(
                body,
                &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"],
                Duration::ZERO,
            )
            .await;
            let pool = up.timed_pool(IDLE_TIMEOUT, SHORT);
            let req = || if body == 0 { get("/") } else { post("/", "x") };
            assert_eq!(text(&pool, req()).await, (StatusCode::OK, "ok".into()));
            times_out(pool.send(req(), false)).await;
            assert_eq!(up.accepted(), 1);
        }
    }

    #[tokio::test]
    async fn request_bodies_that_end_without_saying_so_start_the_wait() {
        use http_body::Frame;
        let up = upstream(true).await;
        let pool = up.timed_pool(IDLE_TIMEOUT, SHORT);
        // chunked, ending in trailers (whose body never says it ended)
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("1"));
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(trailers)),
        ];
        let req = Request::post("/hang")
            .body(Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
            .unwrap();
        times_out(pool.send(req, false)).await;
        // a declared length reached by a stream that never ends: hyper stops at the length
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
        tx.send(Ok(Bytes::from_static(b"x"))).await.unwrap();
        let req = Request::post("/hang")
            .header(CONTENT_LENGTH, "1")
            .body(Body::from_stream(futures_util::stream::poll_fn(move |cx| {
                rx.poll_recv(cx)
            })))
            .unwrap();
        times_out(pool.send(req, false)).await;
        drop(tx);
        // a GET whose body's end is not known yet (hyper sends it none, and drops it unpolled),
        // and a declared empty body that has not said it ended
        for (method, length) in [(Method::GET, None), (Method::POST, Some("0"))] {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
            let mut req = Request::builder().method(method).uri("/hang");
            if let Some(n) = length {
                req = req.header(CONTENT_LENGTH, n);
            }
            let req = req
                .body(Body::from_stream(futures_util::stream::poll_fn(move |cx| {
                    rx.poll_recv(cx)
                })))
                .unwrap();
            times_out(pool.send(req, false)).await;
            drop(tx);
        }
    }

    #[test]
    fn a_tunnel_stays_a_tunnel() {
        let phase = Phase::default();
        phase.awaiting();
        assert!(Phase::awaits(phase.0.load(Ordering::Relaxed)));
        phase.tunnel();
        let tunnel = phase.0.load(Ordering::Relaxed);
        assert!(!Phase::awaits(tunnel));
        // a request body that ends after the 101 does not make the tunnel's quiet timed
        phase.awaiting();
        phase.settled();
        assert_eq!(phase.0.load(Ordering::Relaxed), tunnel);
    }

    #[tokio::test]
    async fn an_answer_that_stalls_midway_fails_its_body() {
        let stalled = |e: &(dyn std::error::Error + 'static)| {
            let mut cause = Some(e);
            while let Some(c) = cause {
                if c.downcast_ref::<std::io::Error>()
                    .and_then(std::io::Error::get_ref)
                    .is_some_and(|i| i.is::<Stalled>())
                {
                    return true;
                }
                cause = c.source();
            }
            false
        };
        // the lean path, hyper's, and an upgrade request answered without a 101
        for (body, upgrade) in [(0, false), (1, false), (0, true)] {
            let up = scripted(
                body,
                &[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"],
                Duration::ZERO,
            )
            .await;
            let pool = up.timed_pool(IDLE_TIMEOUT, SHORT);
            let req = match (body, upgrade) {
                (0, false) => get("/"),
                (_, false) => post("/", "x"),
                _ => Request::get("/ws")
                    .header("connection", "upgrade")
                    .header("upgrade", "x")
                    .body(Body::empty())
                    .unwrap(),
            };
            let resp = pool.send(req, upgrade).await.unwrap();
            let start = Instant::now();
            let e = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
                .await
                .unwrap()
                .unwrap_err();
            let took = start.elapsed();
            assert!(took >= SHORT / 2 && took < SHORT + Duration::from_secs(1), "{took:?}");
            assert!(stalled(&e), "{upgrade}: {e:?}");
            assert_eq!(pool.idle_count(), 0);
        }
    }

    #[tokio::test]
    async fn a_slow_but_steady_answer_is_never_cut() {
        // five parts, each half the deadline after the last: 2.5 times the deadline in all,
        // never one whole deadline without a byte
        const PARTS: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\n",
            b"transfer-encoding: chunked\r\n\r\n",
            b"2\r\nab\r\n",
            b"2\r\ncd\r\n",
            b"0\r\n\r\n",
        ];
        for body in [0, 1] {
            let up = scripted(body, PARTS, SHORT * 2 / 3).await;
            // (a deadline twice the gap: a busy machine's scheduling does not make the gap one)
            let pool = up.timed_pool(IDLE_TIMEOUT, SHORT * 4 / 3);
            let req = if body == 0 { get("/") } else { post("/", "x") };
            assert_eq!(text(&pool, req).await, (StatusCode::OK, "abcd".into()));
        }
    }

    #[tokio::test]
    async fn rest_between_requests_and_a_slow_client_body_are_not_the_upstreams_delay() {
        let up = upstream(true).await;
        let pool = up.timed_pool(IDLE_TIMEOUT, SHORT);
        for req in [get("/"), post("/collect", "abc")] {
            let first = text(&pool, req).await;
            assert_eq!(first.0, StatusCode::OK);
        }
        // pooled twice the deadline, then reused
        tokio::time::sleep(SHORT * 2).await;
        assert_eq!(text(&pool, get("/a")).await, (StatusCode::OK, "ok /a".into()));
        assert_eq!(
            text(&pool, post("/collect", "abcd")).await,
            (StatusCode::OK, "4".into())
        );
        assert_eq!(up.accepted(), 2);
        // a client that pauses twice the deadline within its body: the upstream waits for the
        // whole body before it answers, and the wait is the client's
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
        let req = Request::post("/collect")
            .body(Body::from_stream(futures_util::stream::poll_fn(move |cx| {
                rx.poll_recv(cx)
            })))
            .unwrap();
        let client = tokio::spawn(async move {
            tx.send(Ok(Bytes::from_static(b"12345"))).await.unwrap();
            tokio::time::sleep(SHORT * 2).await;
            tx.send(Ok(Bytes::from_static(b"678"))).await.unwrap();
        });
        assert_eq!(text(&pool, req).await, (StatusCode::OK, "8".into()));
        client.await.unwrap();
    }

    #[tokio::test]
    async fn an_upstream_that_takes_no_request_bytes_times_out() {
        // reads nothing at all: the body fills the sockets' buffers, then waits
        let up = serve(|s| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(s);
        })
        .await;
        let pool = up.timed_pool(IDLE_TIMEOUT, SHORT);
        // a body that never ends (the client still sending): only the write timer runs
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
        let req = Request::post("/")
            .body(Body::from_stream(futures_util::stream::poll_fn(move |cx| {
                rx.poll_recv(cx)
            })))
            .unwrap();
        let client = tokio::spawn(async move {
            for _ in 0..BIG / 65536 {
                if tx.send(Ok(Bytes::from(vec![0u8; 65536]))).await.is_err() {
                    return;
                }
            }
            std::future::pending::<()>().await;
        });
        times_out(pool.send(req, false)).await;
        client.abort();
    }

    #[tokio::test]
    async fn a_tunnel_may_be_quiet_longer_than_the_deadline() {
        let up = serve(|mut s| async move {
            if read_request(&mut s, 0).await {
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n")
                    .await
                    .unwrap();
                tokio::time::sleep(SHORT * 2).await;
                s.write_all(b"hello").await.unwrap();
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
            }
        })
        .await;
        let pool = up.timed_pool(IDLE_TIMEOUT, SHORT);
        let req = Request::get("/ws")
            .header("connection", "upgrade")
            .header("upgrade", "x")
            .body(Body::empty())
            .unwrap();
        let resp = pool.send(req, true).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        let mut tunnel = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
        let mut buf = [0u8; 5];
        tunnel.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        tunnel.write_all(b"again").await.unwrap();
        tunnel.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"again");
    }

    #[test]
    fn host_headers_omit_default_ports() {
        for (uri, host) in [
            ("http://127.0.0.1:8080/", "127.0.0.1:8080"),
            ("http://svc/", "svc"),
            ("http://svc:80/", "svc"),
            ("https://svc:443/", "svc"),
            ("https://svc:8443/", "svc:8443"),
            ("http://[::1]:81/", "[::1]:81"),
        ] {
            assert_eq!(host_header(&uri.parse().unwrap()), host, "{uri}");
        }
        let t = Tcp::new(&"http://[::1]:81/".parse().unwrap());
        assert_eq!((t.host.as_str(), t.port), ("::1", 81));
    }
}
