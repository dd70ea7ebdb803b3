//! Upstream HTTP/1.1 connections: one pool per upstream (plain) or per TLS route, each pooled
//! connection driven by the task of the request that uses it — no task per connection, no
//! channel hop per request. The request task polls the connection while it awaits the response
//! head; the response body handed back ([`ResponseBody`]) holds the connection and polls it
//! before each frame, so the front door's connection task drives the upstream one too.
//!
//! Invariants: a connection goes back to its pool only after its response body ended and the
//! connection settled idle, ready for the next request; a body dropped before its end (the
//! client went away) closes its connection. An idle connection is checked before reuse (an
//! upstream's close shows as the connection finishing) and expires after [`IDLE_TIMEOUT`]. A
//! request is retried — once, on a fresh connection — only when hyper hands it back unsent
//! from a reused connection; one that may have been written never is. Upgrade requests get a
//! dedicated connection of their own (its driver spawned), never pooled. TLS connections are
//! verified at connect by their route's `ClientConfig`; the proxy replaces a TLS route's pool
//! when the roots change, so no connection verified under old roots is checked out again.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::header::{HOST, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long an idle connection is kept (hyper_util's legacy client's default).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The time one new TCP connection may take (split between an upstream's addresses).
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
    #[error("HTTP/1.1 handshake")]
    Handshake(#[source] hyper::Error),
    #[error("upstream request")]
    Request(#[source] hyper::Error),
}

/// A request body the pool can send: what hyper's client connections accept.
pub(crate) trait ReqBody: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}
impl<B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static> ReqBody for B {}

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
}

impl Tcp {
    /// The upstream of `uri` (an `http://` or `https://` URL with an authority).
    pub(crate) fn new(uri: &Uri) -> Self {
        let host = uri.host().unwrap_or_default();
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let default = if uri.scheme_str() == Some("https") { 443 } else { 80 };
        Self {
            host: host.to_owned(),
            port: uri.port_u16().unwrap_or(default),
        }
    }

    async fn stream(&self) -> Result<TcpStream, UpstreamError> {
        let resolve = |source| UpstreamError::Resolve {
            host: self.host.clone(),
            source,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(resolve)?
            .collect();
        let deadline = Instant::now() + CONNECT_TIMEOUT;
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
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(UpstreamError::Tls)
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
    tx: SendRequest<B>,
    gate: Arc<Gate>,
    /// `gate` as a waker (made once: hyper and tokio keep it registered, no clone per poll).
    waker: Waker,
    /// `None` once the connection finished (closed or failed). Boxed: it is large (hundreds of
    /// bytes), and a `Conn` moves several times per request (pool, request, body, pool).
    conn: Option<Box<Connection<TokioIo<C::Io>, B>>>,
}

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
        self.drive(&mut Context::from_waker(Waker::noop())) && self.tx.is_ready()
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

/// A connection being opened.
type Opening<'a, C, B> = Pin<Box<dyn Future<Output = Result<Conn<C, B>, UpstreamError>> + Send + 'a>>;

struct Idle<C: Connect, B: ReqBody> {
    conn: Conn<C, B>,
    since: Instant,
}

/// One worker's idle connections to an upstream, the oldest first.
type IdleList<C, B> = parking_lot::Mutex<VecDeque<Idle<C, B>>>;

/// The idle connections to one upstream.
pub(crate) struct Pool<C: Connect, B: ReqBody> {
    connect: C,
    /// The `Host` every request carries (the upstream's authority, default port omitted).
    host: HeaderValue,
    /// One idle list per connection worker (`workers::current`; index 0 for other threads): a
    /// connection is reused by the worker that opened it, whose reactor it is registered with.
    idle: Box<[IdleList<C, B>]>,
    /// Per idle list (the pool's cap divided among the workers).
    max_idle: usize,
    idle_timeout: Duration,
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
    /// An empty pool that keeps at most `max_idle` idle connections, each for `idle_timeout`.
    pub(crate) fn new(connect: C, host: HeaderValue, max_idle: usize, idle_timeout: Duration) -> Self {
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            connect,
            host,
            // One per worker (`Workers::per_core`) and one for other threads.
            idle: (0..=workers)
                .map(|_| parking_lot::Mutex::new(VecDeque::new()))
                .collect(),
            // Divided, so that more workers keep no more idle sockets (they count against the
            // file descriptors the listeners' caps leave free).
            max_idle: max_idle.div_ceil(workers),
            idle_timeout,
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
        let idle = if upgrade { None } else { self.checkout() };
        self.send_on(idle, req, upgrade)
    }

    /// [`Self::send`] on `idle` (a reused connection) or a new one. One flat state machine (no
    /// nested `async fn` holding the request again): it is part of every proxied request's
    /// future, which is moved and copied whole.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice (rust-lang/rust#62958): the request's future grows by one request"
    )]
    fn send_on(
        self: &Arc<Self>,
        idle: Option<Conn<C, B>>,
        mut req: Request<B>,
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
                req = unsent;
                conn = self.open().await?;
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
        let io = self.connect.connect().await?;
        let (mut tx, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(UpstreamError::Handshake)?;
        // The rare path: a connection that may become a tunnel, driven by its own task.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection failed");
            }
        });
        let resp = tx.send_request(req).await.map_err(UpstreamError::Request)?;
        Ok(resp.map(Body::new))
    }

    /// A new connection. (Boxed: connecting — resolving, TCP, TLS — takes a large future that
    /// would otherwise be part of every request's, which is moved and copied whole.)
    fn open(&self) -> Opening<'_, C, B> {
        Box::pin(async move {
            let io = self.connect.connect().await?;
            let (tx, conn) = http1::handshake(TokioIo::new(io))
                .await
                .map_err(UpstreamError::Handshake)?;
            let gate = Arc::new(Gate::default());
            Ok(Conn {
                tx,
                waker: Waker::from(gate.clone()),
                gate,
                conn: Some(Box::new(conn)),
            })
        })
    }

    /// This thread's idle list.
    fn shard(&self) -> &IdleList<C, B> {
        &self.idle[crate::workers::current() % self.idle.len()]
    }

    /// The most recently used idle connection that is still open, if any.
    fn checkout(&self) -> Option<Conn<C, B>> {
        loop {
            let now = Instant::now();
            let (mut candidate, expired) = {
                let mut idle = self.shard().lock();
                let candidate = idle.pop_back()?;
                (candidate, self.take_expired(&mut idle, now))
            };
            // (closed after the lock)
            drop(expired);
            if now.saturating_duration_since(candidate.since) < self.idle_timeout && candidate.conn.settle() {
                return Some(candidate.conn);
            }
        }
    }

    /// The connections of `idle` that were idle for `idle_timeout` at `now` (the oldest are at
    /// its front).
    fn take_expired(&self, idle: &mut VecDeque<Idle<C, B>>, now: Instant) -> Vec<Idle<C, B>> {
        let mut expired = Vec::new();
        while let Some(front) = idle.front()
            && now.saturating_duration_since(front.since) >= self.idle_timeout
        {
            expired.extend(idle.pop_front());
        }
        expired
    }

    /// Keeps `conn` for the next request (unless the pool is full).
    fn put(self: &Arc<Self>, conn: Conn<C, B>) {
        let idle = Idle {
            conn,
            since: Instant::now(),
        };
        let full = {
            let mut pool = self.shard().lock();
            if pool.len() < self.max_idle {
                pool.push_back(idle);
                None
            } else {
                Some(idle)
            }
        };
        drop(full);
        if !self.reaper.swap(true, Ordering::Relaxed)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(reap(Arc::downgrade(self), self.idle_timeout));
        }
    }

    fn purge(&self) {
        let now = Instant::now();
        for shard in &self.idle {
            let expired = self.take_expired(&mut shard.lock(), now);
            drop(expired);
        }
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.iter().map(|s| s.lock().len()).sum()
    }
}

/// Closes a pool's expired idle connections while nobody takes connections from it (a
/// checkout drops the expired ones itself); ends with the pool.
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
            let uri: Uri = format!("http://{}", self.addr).parse().unwrap();
            Arc::new(Pool::new(Tcp::new(&uri), host_header(&uri), 256, idle_timeout))
        }
    }

    async fn answer(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_owned();
        let resp = match path.as_str() {
            "/204" => Response::builder().status(StatusCode::NO_CONTENT).body(Body::empty()),
            "/304" => Response::builder().status(StatusCode::NOT_MODIFIED).body(Body::empty()),
            "/empty" => Response::builder().header("content-length", "0").body(Body::empty()),
            "/echo" => Response::builder().body(Body::new(req.into_body())),
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
        assert_eq!(text(&pool, get("/")).await, (StatusCode::OK, "ok".into()));
        assert_eq!(pool.idle_count(), 1);
        // the upstream's close reaches the idle socket; taken without the pool's check, as if
        // it arrived just after it
        tokio::time::sleep(CLOSE_AFTER * 3).await;
        let conn = pool.shard().lock().pop_back().unwrap().conn;
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
        assert!(matches!(e, UpstreamError::Request(_)), "{e:?}");
        assert_eq!(up.accepted(), 1);
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
        assert_eq!(up.accepted(), 1);
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
    async fn an_upstream_that_is_down_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let pool: Arc<Pool<Tcp, Body>> = Arc::new(Pool::new(Tcp::new(&uri), host_header(&uri), 8, IDLE_TIMEOUT));
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
