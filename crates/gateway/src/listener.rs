//! The TLS accept loop (after kanidm's): rustls handshake, HTTP/1.1 and HTTP/2 on one port with
//! upgrades, the peer address attached to every request, connection caps and timeouts, graceful
//! shutdown that lets in-flight requests finish; each accepted connection served whole on one
//! per-core worker (`workers`), its plain HTTP/1.1 requests by the lean loop (`lean`) until the
//! first one that loop leaves to hyper; and the admin listener on its own thread.
//!
//! Invariants: TLS ≥ 1.2 (the `ServerConfig` comes from `kfsec-pki`); request headers are bounded
//! (oversized → 431); every connection ends unless it has a request in flight: from accept (TLS
//! handshake included) to the end of its first request head it has `header_timeout`, and with no
//! request in flight (HTTP/1 keep-alive, HTTP/2 with no open stream — PINGs do not count) it has
//! `idle_timeout`; a request body the client stops sending, or a response it stops taking (a full
//! socket, or an HTTP/2 flow-control window kept shut), fails after `idle_timeout` without
//! progress; no more than `max_connections` connections are open at once, nor more than
//! `max_connections_per_address` from one client address (an IPv6 /64), and one over a cap is
//! closed at once; no more than `max_connections` requests are in flight at once (HTTP/2 streams
//! included), nor more than twice `max_connections_per_address` from one address, and one over a
//! cap is answered 503 at once (both counted in `kfsec_listener_connections_refused_total`); a
//! trusted proxy's requests count under the client address the chain of trusted proxies reports
//! (`forwarded::TrustedProxies::reported_client`), and so do the upgrade tunnels they become
//! (`TunnelPlace`: a tunnel keeps its request's place until it closes, for every client); its
//! connections count in the total only, so no client behind it can take them all while twice
//! `max_connections_per_address` is below `max_connections` (as by default, and as the caps
//! fitted to the file-descriptor limit keep it); a
//! failing `accept` (e.g. out of file descriptors)
//! backs off exponentially up to 1 s instead of spinning; the admin listener runs on its own
//! thread and runtime, so no front-door load can starve it of CPU time, and the caps are fitted
//! below the file-descriptor limit so it cannot be starved of descriptors.

#![allow(clippy::disallowed_methods)] // connection, header and idle timeouts are monotonic IO deadlines, not logic time

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use kfsec_idp::ClientAddr;
use kfsec_types::Identity;

use crate::stall::StallTimer;

/// The identity of a verified TLS client certificate, attached to each request of its
/// connection, and the certificate's notAfter (Unix s): a kept-alive connection's requests
/// from then on are refused, and its tunnels end.
#[derive(Debug, Clone)]
pub struct ClientCertIdentity {
    /// Who.
    pub identity: Identity,
    /// The certificate's notAfter (Unix s).
    pub not_after: u64,
}

/// The trust a client certificate was verified under, attached to each hyper-served request of
/// its connection.
#[derive(Debug, Clone)]
pub(crate) struct CertTrust(pub(crate) kfsec_pki::Replaced);

/// What keeps a tunnel a client certificate opened: the trust it was verified under (until the
/// config is replaced, when the connection itself would be closed — a CA may have left the
/// trust) and the certificate's notAfter.
pub(crate) struct CertTunnel {
    pub(crate) trust: CertTrust,
    pub(crate) not_after: u64,
    pub(crate) clock: Arc<dyn kfsec_types::Clock>,
}

impl crate::tunnel::Credential for CertTunnel {
    fn holds(&mut self) -> futures_util::future::BoxFuture<'_, bool> {
        let expired = self.clock.now().as_secs() >= self.not_after;
        if expired {
            tracing::info!(target: "audit", "a tunnel's client certificate expired: closed");
        }
        let holds = !expired && !self.trust.0.fired();
        Box::pin(async move { holds })
    }
}

/// Largest request head accepted (HTTP/1 buffer and HTTP/2 header list).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long a connection told to close gracefully (idle, or shutting down) may take to finish
/// once it has no request in flight.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The longest pause between two failed `accept` calls.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// File descriptors kept out of the listeners' caps (store, upstream connections, the admin
/// listener, logs): at least this many, or a tenth of the limit if that is more.
const FD_RESERVE: u64 = 256;

/// Timeouts and caps of one TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerLimits {
    /// From accept (TLS handshake included) to the end of the first request head.
    pub header_timeout: Duration,
    /// With no request in flight, a connection is closed after this long.
    pub idle_timeout: Duration,
    /// Open connections at once.
    pub max_connections: usize,
    /// Open connections at once from one client address (IPv6: one /64).
    pub max_connections_per_address: usize,
}

impl ListenerLimits {
    /// The front door's defaults: 30 s header timeout (nginx's `client_header_timeout`), 60 s
    /// idle timeout, 10,000 connections, 512 per address.
    pub const FRONT_DOOR: Self = Self {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        max_connections: 10_000,
        max_connections_per_address: 512,
    };
    /// The webhook listener's defaults: the front door's timeouts, 1,000 connections, 512 per
    /// address.
    pub const WEBHOOKS: Self = Self {
        max_connections: 1_000,
        ..Self::FRONT_DOOR
    };
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self::FRONT_DOOR
    }
}

/// Raises the soft limit on open files to the hard limit and returns the soft limit in force
/// (None if unknown or unlimited).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return limit.maximum,
            Err(e) => tracing::debug!(error = %e, "could not raise the open-files limit"),
        }
    }
    limit.current
}

/// Lowers the listeners' connection caps so that together they stay below `fd_limit` minus a
/// reserve (for the store, logs and the admin listener); returns whether any was lowered. Each
/// connection is counted twice: in-flight requests are capped at `max_connections` too, and
/// each may hold one upstream connection.
pub fn fit_to_fd_limit(limits: &mut [&mut ListenerLimits], fd_limit: u64) -> bool {
    let reserve = FD_RESERVE.max(fd_limit / 10);
    let budget = usize::try_from(fd_limit.saturating_sub(reserve)).unwrap_or(usize::MAX) / 2;
    let wanted: usize = limits.iter().map(|l| l.max_connections).sum();
    if wanted <= budget {
        return false;
    }
    for l in limits.iter_mut() {
        // Each keeps its share of the budget (at least one connection).
        let share = u128::from(u64::try_from(l.max_connections).unwrap_or(u64::MAX))
            * u128::from(u64::try_from(budget).unwrap_or(u64::MAX))
            / u128::from(u64::try_from(wanted).unwrap_or(u64::MAX)).max(1);
        l.max_connections = usize::try_from(share).unwrap_or(usize::MAX).max(1);
        // (one address at most a quarter: its requests, twice its connections, stay below the
        // total, and others keep room)
        l.max_connections_per_address = l.max_connections_per_address.min((l.max_connections / 4).max(1));
    }
    true
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    listener: String,
    reason: String,
}

/// Connection metrics of the TLS listeners (labelled by listener name).
#[derive(Clone, Debug, Default)]
pub struct ListenerMetrics {
    open: Family<ListenerLabel, Gauge>,
    requests: Family<ListenerLabel, Gauge>,
    refused: Family<ReasonLabels, Counter>,
    closed: Family<ReasonLabels, Counter>,
    accept_errors: Family<ListenerLabel, Counter>,
}

impl ListenerMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "kfsec_listener_connections_open",
            "Open connections by listener",
            m.open.clone(),
        );
        registry.register(
            "kfsec_listener_requests_in_flight",
            "Requests in flight by listener",
            m.requests.clone(),
        );
        registry.register(
            "kfsec_listener_connections_refused",
            "Connections closed at accept, or requests answered 503, because a cap was reached (reason: max_connections, max_connections_per_address, max_requests, max_requests_per_address)",
            m.refused.clone(),
        );
        registry.register(
            "kfsec_listener_connections_timed_out",
            "Connections closed by a timeout (reason: header_timeout, idle_timeout, send_timeout)",
            m.closed.clone(),
        );
        registry.register(
            "kfsec_listener_accept_errors",
            "Failed accept calls (e.g. out of file descriptors)",
            m.accept_errors.clone(),
        );
        m
    }

    /// Counts a connection of `listener` closed by a timeout (`reason`).
    pub(crate) fn closed(&self, listener: &str, reason: &str) {
        Self::count(&self.closed, listener, reason);
    }

    /// Counts a connection or request of `listener` refused over a cap (`reason`).
    pub(crate) fn refused(&self, listener: &str, reason: &str) {
        Self::count(&self.refused, listener, reason);
    }

    fn count(family: &Family<ReasonLabels, Counter>, listener: &str, reason: &str) {
        family
            .get_or_create(&ReasonLabels {
                listener: listener.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// Everything a TLS listener needs besides its socket, config and router.
#[derive(Debug, Clone)]
pub struct TlsListenerSettings {
    /// Name in logs and metrics (`front-door`, `webhooks`).
    pub name: &'static str,
    /// Timeouts and caps.
    pub limits: ListenerLimits,
    /// Where connections are counted.
    pub metrics: ListenerMetrics,
    /// How long in-flight requests may finish after shutdown starts.
    pub drain: Duration,
    /// The per-core workers that serve the connections (`None`: the caller's runtime).
    pub workers: Option<Arc<crate::workers::Workers>>,
    /// Proxies whose `X-Forwarded-For` is believed: each request of theirs counts under the
    /// per-address request cap of the client address they report, and so does each upgrade
    /// tunnel for its life; their connections count under the total cap only.
    pub trusted_proxies: crate::forwarded::TrustedProxies,
}

/// The key a per-address cap counts under: the IPv4 address, or an IPv6 address's /64 (one
/// client usually holds a whole /64).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// Open connections, in total and per address.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// The connection (or in-flight request) caps of one listener.
#[derive(Debug)]
struct Slots {
    counts: parking_lot::Mutex<Counts>,
    max: usize,
    per_address: usize,
    gauge: Gauge,
    /// Metric reasons for a refusal: over `max`, over `per_address`.
    reasons: (&'static str, &'static str),
}

/// One open connection's place under the caps; released when the connection's socket is
/// dropped (so an upgraded connection keeps counting).
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    /// The address counted (`None`: counted in the total only, a trusted proxy's connection).
    key: Option<IpAddr>,
}

impl Slots {
    fn new(max: usize, per_address: usize, gauge: Gauge, reasons: (&'static str, &'static str)) -> Arc<Self> {
        Arc::new(Self {
            counts: parking_lot::Mutex::new(Counts::default()),
            max: max.max(1),
            per_address: per_address.max(1),
            gauge,
            reasons,
        })
    }

    /// A place for `ip` (`None`: under the total cap only).
    fn try_acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, &'static str> {
        let key = ip.map(address_key);
        let mut c = self.counts.lock();
        if c.total >= self.max {
            return Err(self.reasons.0);
        }
        if let Some(key) = key {
            let n = c.by_address.entry(key).or_insert(0);
            if *n >= self.per_address {
                return Err(self.reasons.1);
            }
            *n += 1;
        }
        c.total += 1;
        self.gauge.inc();
        Ok(Slot {
            slots: self.clone(),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.counts.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(key) = self.key
            && let Some(n) = c.by_address.get_mut(&key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_address.remove(&key);
            }
        }
        self.slots.gauge.dec();
    }
}

/// The in-flight request caps of one listener: a total, and one count per client address that
/// the address's connections share. A connection takes its address's count once
/// ([`RequestCaps::address`]), so a request costs two atomic additions and two subtractions —
/// no lock, no lookup, no reference count on the request path. The total is the in-flight
/// gauge itself (`kfsec_listener_requests_in_flight`): one count, not two.
#[derive(Debug)]
pub(crate) struct RequestCaps {
    max: usize,
    per_address: usize,
    gauge: Gauge,
    /// Each address's count while a connection from it holds the count.
    addresses: parking_lot::Mutex<Addresses>,
}

#[derive(Debug, Default)]
struct Addresses {
    counts: HashMap<IpAddr, std::sync::Weak<AtomicUsize>>,
    /// Entries of addresses with no connection left are dropped when the table reaches this size
    /// (then twice the live entries, at least 1,024): amortised, and the table stays bounded by
    /// the open connections.
    sweep_at: usize,
}

/// One in-flight request's place under the [`RequestCaps`], released when dropped (the lean
/// loop's, held while it answers).
#[derive(Debug)]
pub(crate) struct RequestSlot<'a> {
    caps: &'a RequestCaps,
    address: &'a AtomicUsize,
}

impl Drop for RequestSlot<'_> {
    fn drop(&mut self) {
        self.caps.release(self.address);
    }
}

/// An upgrade request's place under the in-flight caps (its client's: behind a trusted proxy,
/// the address the proxy reported), shared with the tunnel it becomes (`proxy`), which holds it
/// until it closes: a trusted proxy's connections count for none of its clients, so without it
/// one client's tunnels could take every connection. Released with the request's answer when
/// it does not become one.
#[derive(Clone, Debug)]
pub(crate) struct TunnelPlace {
    _place: Arc<OwnedRequestSlot>,
}

/// The place a response body holds under the in-flight caps: its own, or one it shares with
/// the tunnel its request may become. (Held for its `Drop`, never read.)
#[derive(Debug)]
#[allow(dead_code)]
enum Place {
    Own(OwnedRequestSlot),
    Shared(Arc<OwnedRequestSlot>),
}

/// [`RequestSlot`] that owns its counts (hyper's path: released when the answer's body is
/// dropped, which may outlive the connection's task).
#[derive(Debug)]
pub(crate) struct OwnedRequestSlot {
    caps: Arc<RequestCaps>,
    address: Arc<AtomicUsize>,
}

impl Drop for OwnedRequestSlot {
    fn drop(&mut self) {
        self.caps.release(&self.address);
    }
}

impl RequestCaps {
    fn new(max: usize, per_address: usize, gauge: Gauge) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            per_address: per_address.max(1),
            gauge,
            addresses: parking_lot::Mutex::new(Addresses::default()),
        })
    }

    /// The in-flight count of `ip`'s address (an IPv6 address's /64), shared by its connections.
    fn address(&self, ip: IpAddr) -> Arc<AtomicUsize> {
        let key = address_key(ip);
        let mut a = self.addresses.lock();
        if let Some(count) = a.counts.get(&key).and_then(std::sync::Weak::upgrade) {
            return count;
        }
        if a.counts.len() >= a.sweep_at {
            a.counts.retain(|_, c| c.strong_count() > 0);
            a.sweep_at = (a.counts.len() * 2).max(1024);
        }
        let count = Arc::new(AtomicUsize::new(0));
        a.counts.insert(key, Arc::downgrade(&count));
        count
    }

    /// The count a request on a trusted proxy's connection takes: that of the client address
    /// the proxy reported (`None`: the connection's own — not a trusted proxy's, or no address
    /// reported).
    pub(crate) fn forwarded(
        &self,
        trusted: Option<&crate::forwarded::TrustedProxies>,
        headers: &http::HeaderMap,
    ) -> Option<Arc<AtomicUsize>> {
        trusted?.reported_client(headers).map(|client| self.address(client))
    }

    /// A place for one request of the address whose count is `address`, or the metric reason
    /// of the refusal (`max_requests`, `max_requests_per_address`).
    pub(crate) fn try_acquire<'a>(&'a self, address: &'a AtomicUsize) -> Result<RequestSlot<'a>, &'static str> {
        self.take(address)?;
        Ok(RequestSlot { caps: self, address })
    }

    /// [`Self::try_acquire`] for a place that owns its counts.
    pub(crate) fn try_acquire_owned(
        self: &Arc<Self>,
        address: &Arc<AtomicUsize>,
    ) -> Result<OwnedRequestSlot, &'static str> {
        self.take(address)?;
        Ok(OwnedRequestSlot {
            caps: self.clone(),
            address: address.clone(),
        })
    }

    /// Counts one more request, or refuses it leaving the counts as they were (a refused
    /// request is taken back at once: the gauge shows it for no longer).
    fn take(&self, address: &AtomicUsize) -> Result<(), &'static str> {
        let before = self.gauge.inc();
        if usize::try_from(before).is_ok_and(|n| n >= self.max) {
            self.gauge.dec();
            return Err("max_requests");
        }
        if address.fetch_add(1, Ordering::AcqRel) >= self.per_address {
            address.fetch_sub(1, Ordering::AcqRel);
            self.gauge.dec();
            return Err("max_requests_per_address");
        }
        Ok(())
    }

    fn release(&self, address: &AtomicUsize) {
        address.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }

    /// Requests in flight (tests).
    #[cfg(test)]
    fn total(&self) -> i64 {
        self.gauge.get()
    }
}

/// A socket that holds its connection's [`Slot`], and fails a write the client has not let
/// progress for the idle timeout (a client that stops reading a response).
struct Counted {
    io: TcpStream,
    _slot: Slot,
    write_stall: StallTimer,
}

fn write_stalled<T>() -> std::io::Result<T> {
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the client stopped reading",
    ))
}

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.write_stall.watch(cx, poll, write_stalled)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.write_stall.watch(cx, poll, write_stalled)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What the connection task knows of its requests. Requests and bodies update it without waking
/// the connection task (a wake-up per request start, frame and end cost ~15% of the proxy's CPU);
/// the task reads it whenever its deadline passes and computes the next one, so every limit is
/// still enforced on time: a deadline is never later than the earliest one the state allows.
#[derive(Debug, Clone, Copy)]
struct Activity {
    /// A request head has been received.
    started: bool,
    /// Requests whose response has not been fully sent.
    in_flight: usize,
    /// When `in_flight` last became 0.
    idle_since: Instant,
    /// Response bodies that handed a frame to the connection and have not been asked for the
    /// next one: the connection is waiting for the client to take data.
    handed_over: usize,
    /// When a response body last handed over a frame or was asked for the next.
    last_progress: Instant,
}

/// Marks one request in flight until dropped (with the response body, or with the handler's
/// future if the request is abandoned).
struct InFlight(Arc<Mutex<Activity>>);

impl InFlight {
    fn start(activity: &Arc<Mutex<Activity>>) -> Self {
        {
            let mut a = activity.lock();
            a.started = true;
            a.in_flight += 1;
        }
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut a = self.0.lock();
        a.in_flight = a.in_flight.saturating_sub(1);
        if a.in_flight == 0 {
            a.idle_since = Instant::now();
        }
    }
}

/// A response body that keeps its request in flight until it is sent or dropped, and tells
/// the connection when it waits for the client to take data (a frame handed over, the next one
/// not yet asked for: a full socket, or an HTTP/2 flow-control window the client keeps shut).
struct TrackedBody {
    inner: axum::body::Body,
    in_flight: InFlight,
    handed_over: bool,
    /// The request's place under the in-flight caps.
    _permit: Option<Place>,
}

impl TrackedBody {
    fn new(inner: axum::body::Body, in_flight: InFlight, permit: Option<Place>) -> Self {
        Self {
            inner,
            in_flight,
            handed_over: false,
            _permit: permit,
        }
    }

    /// Records progress; `handed_over` is the new state of this body. Nobody is woken: the
    /// connection task reads the state at its next deadline.
    fn progress(&mut self, handed_over: bool) {
        let was = std::mem::replace(&mut self.handed_over, handed_over);
        let mut a = self.in_flight.0.lock();
        a.handed_over = (a.handed_over + usize::from(handed_over)).saturating_sub(usize::from(was));
        a.last_progress = Instant::now();
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if self.handed_over {
            self.progress(false);
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.handed_over {
            this.progress(false);
        }
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &poll {
            this.progress(true);
        }
        poll
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request body ended early.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The connection failed or the body was malformed.
    #[error(transparent)]
    Client(#[from] hyper::Error),
    /// The client sent nothing for the idle timeout while the body was being read.
    #[error("the client sent no request body data for {0:?}")]
    Stalled(Duration),
}

/// A request body that fails when the client sends nothing for the idle timeout while it is
/// being read (a slow-POST client otherwise holds its request in flight forever).
struct TimedBody {
    inner: Incoming,
    stall: StallTimer,
}

impl http_body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(RequestBodyError::Client)));
        let limit = this.stall.limit();
        this.stall
            .watch(cx, poll, || Some(Err(RequestBodyError::Stalled(limit))))
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Exponential backoff for a failing `accept`: 5 ms doubling up to [`MAX_ACCEPT_BACKOFF`].
#[derive(Debug, Default)]
struct Backoff(Option<Duration>);

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = match self.0 {
            None => Duration::from_millis(5),
            Some(d) => (d * 2).min(MAX_ACCEPT_BACKOFF),
        };
        self.0 = Some(d);
        d
    }
    fn reset(&mut self) {
        self.0 = None;
    }
}

/// Errors of one connection that say nothing about the listener itself.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

fn builder() -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    // No HTTP/1 timer: hyper's would arm a timer for every request head it waits for; the
    // connection task below enforces the header limit (first request) and the idle limit (no
    // request in flight, whatever part of a head has arrived) on its own.
    b.http1().max_buf_size(MAX_HEADER_BYTES).keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then drains connections for at
/// most `settings.drain`.
pub async fn serve_tls<S>(
    listener: TcpListener,
    tls: Arc<kfsec_pki::LiveServerConfig>,
    app: S,
    shutdown: impl Future<Output = ()>,
    settings: TlsListenerSettings,
) where
    S: Service + Clone,
{
    let TlsListenerSettings {
        name,
        limits,
        metrics,
        drain,
        workers,
        trusted_proxies,
    } = settings;
    // Every connection task holds a clone of `alive`; the drain waits for all of them to drop.
    let (alive, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    let (stop, stopping) = watch::channel(false);
    let builder = Arc::new(builder());
    let label = ListenerLabel {
        listener: name.to_owned(),
    };
    let slots = Slots::new(
        limits.max_connections,
        limits.max_connections_per_address,
        metrics.open.get_or_create(&label).clone(),
        ("max_connections", "max_connections_per_address"),
    );
    // In-flight requests (HTTP/2 streams included), each of which may hold an upstream
    // connection: as many as connections in all, twice the per-address connections per address.
    let requests = RequestCaps::new(
        limits.max_connections,
        limits.max_connections_per_address.saturating_mul(2),
        metrics.requests.get_or_create(&label).clone(),
    );
    let accept_errors = metrics
        .accept_errors
        .get_or_create(&ListenerLabel {
            listener: name.to_owned(),
        })
        .clone();
    let mut backoff = Backoff::default();
    let idle_timeout = limits.idle_timeout;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff.reset();
                    x
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    accept_errors.inc();
                    let pause = backoff.next();
                    tracing::warn!(listener = name, error = %e, pause_ms = pause.as_millis(), "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        // Over a cap: closed at once, before any TLS work.
        // (a trusted proxy's connections count in the total only: its clients' requests and
        // tunnels count under their own addresses)
        let trusted = trusted_proxies.contains(peer.ip()).then(|| trusted_proxies.clone());
        let slot = match slots.try_acquire(trusted.is_none().then_some(peer.ip())) {
            Ok(s) => s,
            Err(reason) => {
                metrics.refused(name, reason);
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let accepted = Instant::now();
        // The config current at accept time (client roots change with a CA rotation); its
        // replacements are watched from before it is taken, so none is missed.
        let replaced = tls.replaced();
        let acceptor = TlsAcceptor::from(tls.current());
        let conn = Connection {
            name,
            peer,
            limits: limits.clone(),
            metrics: metrics.clone(),
            app: app.clone(),
            builder: builder.clone(),
            requests: requests.clone(),
            trusted,
        };
        let (alive, stopping) = (alive.clone(), stopping.clone());
        let serve = move |tcp| async move {
            let _alive = alive;
            let io = Counted {
                io: tcp,
                _slot: slot,
                write_stall: StallTimer::new(idle_timeout),
            };
            conn.run(io, accepted, acceptor, replaced, stopping).await;
        };
        match &workers {
            Some(workers) => workers.spawn(tcp, serve),
            None => drop(tokio::spawn(serve(tcp))),
        }
    }
    drop(listener);
    let _ = stop.send(true);
    drop(alive);
    if tokio::time::timeout(drain, drained.recv()).await.is_err() {
        tracing::warn!(
            listener = name,
            "connections still open after the drain period; closing"
        );
    }
}

type Req = http::Request<axum::body::Body>;
type Resp = axum::response::Response;

/// What a TLS listener serves: a router, or the front door's own service.
pub trait Service:
    tower::Service<Req, Response = Resp, Error = Infallible, Future: Send> + Send + Sync + 'static
{
    /// Serves `req` with the service borrowed (nothing is cloned for it).
    fn serve(&self, req: Req) -> impl Future<Output = Resp> + Send + '_;

    /// Serves `req` from `peer` (the lean loop's call). By default the address goes into the
    /// request's extensions ([`ClientAddr`]), where handlers read it; a service that hands it on
    /// itself may skip that.
    fn serve_from(&self, mut req: Req, peer: std::net::IpAddr) -> impl Future<Output = Resp> + Send + '_ {
        req.extensions_mut().insert(ClientAddr(peer));
        self.serve(req)
    }
}

impl Service for axum::Router {
    fn serve(&self, req: Req) -> impl Future<Output = Resp> + Send + '_ {
        let call = tower::ServiceExt::oneshot(self.clone(), req);
        async move {
            match call.await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    }
}

/// One accepted connection.
struct Connection<S> {
    name: &'static str,
    peer: SocketAddr,
    limits: ListenerLimits,
    metrics: ListenerMetrics,
    app: S,
    builder: Arc<Builder<TokioExecutor>>,
    requests: Arc<RequestCaps>,
    /// The trusted proxies, when the peer is one of them.
    trusted: Option<crate::forwarded::TrustedProxies>,
}

/// The answer to a request over the in-flight caps: 503 with `Retry-After`, no work done.
pub(crate) fn busy() -> hyper::Response<axum::body::Body> {
    let mut r = hyper::Response::new(axum::body::Body::from(
        "kfsec: too many requests in flight, retry shortly\n",
    ));
    *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    let h = r.headers_mut();
    h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl<S: Service + Clone> Connection<S> {
    async fn run(
        self,
        io: Counted,
        accepted: Instant,
        acceptor: TlsAcceptor,
        replaced: kfsec_pki::Replaced,
        mut stopping: watch::Receiver<bool>,
    ) {
        let Self {
            name,
            peer,
            limits,
            metrics,
            app,
            builder,
            requests,
            trusted,
        } = self;
        let header_deadline = accepted + limits.header_timeout;
        let tls = match tokio::time::timeout_at(header_deadline, acceptor.accept(io)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                metrics.closed(name, "header_timeout");
                return;
            }
        };
        // A client certificate (already verified by rustls) is an identity, as with the
        // Kubernetes API server.
        let cert_identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| kfsec_pki::client_identity_in_chain(chain).ok())
            .map(|c| ClientCertIdentity {
                identity: Identity::new(c.user, c.groups),
                not_after: c.not_after.as_secs(),
            });
        // Such an identity was checked against the roots of this config only: when the config
        // is replaced (a CA leaves the trust), the connection is closed gracefully and the
        // client's next handshake is checked again.
        let bound_to_roots = cert_identity.is_some();
        // The in-flight count of this client's address, taken once for all its requests.
        let address = requests.address(peer.ip());
        let mut roots = crate::lean::Gated::new(replaced.clone().wait());
        let mut tls = tls;
        // HTTP/1.1's plain requests are served by the lean loop until the first one it leaves
        // to hyper; HTTP/2 is hyper's from the start.
        let (buffered, last_done) = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            (bytes::BytesMut::new(), None)
        } else {
            let lean = crate::lean::Lean {
                app: &app,
                peer: peer.ip(),
                cert_identity: cert_identity.as_ref(),
                requests: &requests,
                address: &address,
                trusted: trusted.as_ref(),
                metrics: &metrics,
                name,
                header_deadline,
                idle_timeout: limits.idle_timeout,
            };
            match lean
                .serve(&mut tls, &stopping, &replaced, &mut roots, bound_to_roots)
                .await
            {
                crate::lean::End::Closed => return,
                crate::lean::End::Handoff { buffered, last_done } => (buffered, last_done),
            }
        };
        let since = last_done.unwrap_or(accepted);
        let activity = Arc::new(Mutex::new(Activity {
            started: last_done.is_some(),
            in_flight: 0,
            idle_since: since,
            handed_over: 0,
            last_progress: since,
        }));
        let watching = activity.clone();
        let idle_timeout = limits.idle_timeout;
        let refusals = metrics.clone();
        let trust = replaced.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let in_flight = InFlight::start(&activity);
            req.extensions_mut().insert(ClientAddr(peer.ip()));
            if let Some(id) = &cert_identity {
                req.extensions_mut().insert(id.clone());
                req.extensions_mut().insert(CertTrust(trust.clone()));
            }
            let app = app.clone();
            let stall = StallTimer::new(idle_timeout);
            let forwarded = requests.forwarded(trusted.as_ref(), req.headers());
            let permit = requests
                .try_acquire_owned(forwarded.as_ref().unwrap_or(&address))
                .map(|permit| {
                    // An upgrade: the tunnel it may become keeps the request's place, which is
                    // its client's (through a trusted proxy, the proxy's connection it holds
                    // counts for no client).
                    if !req.headers().contains_key(http::header::UPGRADE) {
                        return Place::Own(permit);
                    }
                    let shared = Arc::new(permit);
                    req.extensions_mut().insert(TunnelPlace { _place: shared.clone() });
                    Place::Shared(shared)
                })
                .map_err(|reason| {
                    refusals.refused(name, reason);
                });
            async move {
                let Ok(permit) = permit else {
                    return Ok(busy().map(|inner| TrackedBody::new(inner, in_flight, None)));
                };
                let req = req.map(|inner| axum::body::Body::new(TimedBody { inner, stall }));
                let resp = app.oneshot(req).await?;
                Ok::<_, std::convert::Infallible>(resp.map(|inner| TrackedBody::new(inner, in_flight, Some(permit))))
            }
        });
        let io = crate::lean::Prefixed::new(buffered.freeze(), tls);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        // When a graceful close was asked for.
        let mut closing: Option<Instant> = None;
        let result = loop {
            let now = *watching.lock();
            // The earliest moment a limit could be reached given what is known now; requests
            // that start or end meanwhile only move real deadlines later, except a request that
            // starts and ends before the header deadline, whose idle deadline may be earlier:
            // hence the header deadline is also capped at one idle timeout from now.
            let recheck = Instant::now() + limits.idle_timeout;
            let deadline = match closing {
                Some(at) => at + CLOSE_GRACE,
                None if !now.started => header_deadline.min(recheck),
                None if now.in_flight == 0 => now.idle_since + limits.idle_timeout,
                None if now.handed_over > 0 => now.last_progress + limits.idle_timeout,
                // Requests in flight, none waiting on the client: a response may start waiting
                // at any moment; looking again after an idle timeout finds such a stall on time
                // (its deadline is its last progress plus the idle timeout, never earlier).
                None => recheck,
            };
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = stopping.wait_for(|s| *s), if closing.is_none() => {
                    closing = Some(Instant::now());
                    conn.as_mut().graceful_shutdown();
                }
                () = roots.poll_if(|| replaced.fired()), if bound_to_roots && closing.is_none() => {
                    closing = Some(Instant::now());
                    conn.as_mut().graceful_shutdown();
                }
                () = tokio::time::sleep_until(deadline) => match (closing, *watching.lock()) {
                    // The client has taken no response data for the idle timeout (whether or
                    // not a close was asked for).
                    (_, cur) if cur.handed_over > 0 && cur.last_progress + limits.idle_timeout <= Instant::now() => {
                        metrics.closed(name, "send_timeout");
                        return;
                    }
                    // A request in flight is let finish; otherwise the grace is over.
                    (Some(_), cur) if cur.in_flight > 0 => closing = Some(Instant::now()),
                    (Some(_), _) => return,
                    // A request arrived meanwhile: the deadline is computed again.
                    (None, cur) if cur.in_flight > 0 || cur.started != now.started => {}
                    // Only the recheck before the header deadline.
                    (None, cur) if !cur.started && Instant::now() < header_deadline => {}
                    (None, cur) if !cur.started => {
                        // No complete request head in time (slow handshake, silence, dripping
                        // headers, HTTP/2 PINGs only): closed without an answer.
                        metrics.closed(name, "header_timeout");
                        return;
                    }
                    (None, cur) if cur.idle_since != now.idle_since => {}
                    (None, _) => {
                        metrics.closed(name, "idle_timeout");
                        closing = Some(Instant::now());
                        conn.as_mut().graceful_shutdown();
                    }
                },
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Serves `app` over plain HTTP (the admin listener, loopback by default).
pub async fn serve_plain(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()> + Send + 'static) {
    let svc = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, svc).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}

/// Like [`serve_plain`], on a thread and single-threaded runtime of its own, so that no load on
/// the main runtime (the front door's connections and handshakes) delays it. The returned task
/// ends when the listener has stopped.
pub fn serve_plain_dedicated(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let std_listener = listener.into_std()?;
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    crate::workers::runtime_thread("kfsec-admin".into(), 2, || {}, async move {
        match TcpListener::from_std(std_listener) {
            Ok(l) => serve_plain(l, app, shutdown).await,
            Err(e) => tracing::error!(error = %e, "admin listener failed"),
        }
        let _ = done.send(());
    })?;
    Ok(tokio::spawn(async move {
        let _ = finished.await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let seq: Vec<u128> = (0..10).map(|_| b.next().as_millis()).collect();
        assert_eq!(seq, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(5));
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn caps_count_and_release() {
        let slots = Slots::new(
            3,
            2,
            Gauge::default(),
            ("max_connections", "max_connections_per_address"),
        );
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = slots.try_acquire(Some(a)).unwrap();
        let _s2 = slots.try_acquire(Some(a)).unwrap();
        assert_eq!(slots.try_acquire(Some(a)).unwrap_err(), "max_connections_per_address");
        let _s3 = slots.try_acquire(Some(b)).unwrap();
        assert_eq!(slots.try_acquire(Some(b)).unwrap_err(), "max_connections");
        drop(s1);
        let s4 = slots.try_acquire(Some(a)).unwrap();
        assert_eq!(slots.gauge.get(), 3);
        drop(s4);
        assert_eq!(slots.gauge.get(), 2);
        // a place in the total only (a trusted proxy's connection): no address's count moves
        let proxy = slots.try_acquire(None).unwrap();
        assert_eq!(slots.try_acquire(None).unwrap_err(), "max_connections");
        drop(proxy);
        assert_eq!(slots.counts.lock().by_address.get(&a), Some(&1));
        assert_eq!(slots.gauge.get(), 2);
    }

    #[test]
    fn a_trusted_proxys_requests_count_under_the_clients_they_report() {
        let caps = RequestCaps::new(100, 2, Gauge::default());
        let proxy = caps.address("10.0.0.5".parse().unwrap());
        let from = |xff: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("x-forwarded-for", http::HeaderValue::from_str(xff).unwrap());
            h
        };
        let proxies = crate::forwarded::TrustedProxies::new(vec!["10.0.0.0/24".parse().unwrap()]);
        let trusted = Some(&proxies);
        // not trusted, or nothing reported: the connection's own count
        assert!(caps.forwarded(None, &from("192.0.2.1")).is_none());
        assert!(caps.forwarded(trusted, &http::HeaderMap::new()).is_none());
        assert!(caps.forwarded(trusted, &from("not an address")).is_none());
        // the last entry no trusted proxy wrote is the client (what came before is its word)
        let greedy = caps.forwarded(trusted, &from("198.51.100.7, 192.0.2.1")).unwrap();
        let held: Vec<_> = (0..2).map(|_| caps.try_acquire_owned(&greedy).unwrap()).collect();
        assert_eq!(
            caps.try_acquire_owned(&caps.forwarded(trusted, &from("192.0.2.1, 10.0.0.7")).unwrap())
                .unwrap_err(),
            "max_requests_per_address"
        );
        // another client behind the same proxy, and the proxy's own requests, still get places
        let other = caps.forwarded(trusted, &from("192.0.2.1, 203.0.113.9")).unwrap();
        assert!(caps.try_acquire_owned(&other).is_ok());
        assert!(caps.try_acquire(&proxy).is_ok());
        drop(held);
        assert_eq!(greedy.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn request_caps_count_per_address_and_in_total_and_release() {
        let caps = RequestCaps::new(3, 2, Gauge::default());
        // two connections of one /64 share a count; another address has its own
        let a1 = caps.address("2001:db8:1:2::1".parse().unwrap());
        let a2 = caps.address("2001:db8:1:2::ffff".parse().unwrap());
        let b = caps.address("127.0.0.1".parse().unwrap());
        assert!(Arc::ptr_eq(&a1, &a2));
        let r1 = caps.try_acquire(&a1).unwrap();
        let _r2 = caps.try_acquire(&a2).unwrap();
        assert_eq!(caps.try_acquire(&a1).unwrap_err(), "max_requests_per_address");
        let _r3 = caps.try_acquire(&b).unwrap();
        assert_eq!(caps.try_acquire(&b).unwrap_err(), "max_requests");
        assert_eq!(caps.gauge.get(), 3);
        drop(r1);
        let _r4 = caps.try_acquire(&a1).unwrap();
        assert_eq!(caps.try_acquire(&a2).unwrap_err(), "max_requests");
        // refusals leave no count behind
        assert_eq!((caps.total(), a1.load(Ordering::Relaxed)), (3, 2));
        // an owned place counts the same
        drop(_r4);
        let owned = caps.try_acquire_owned(&a1).unwrap();
        assert_eq!(caps.try_acquire(&b).unwrap_err(), "max_requests");
        drop(owned);
        assert_eq!((caps.total(), a1.load(Ordering::Relaxed)), (2, 1));
    }

    #[test]
    fn request_caps_hold_under_concurrency() {
        let caps = RequestCaps::new(1_000, 5, Gauge::default());
        let address = caps.address("10.0.0.1".parse().unwrap());
        let peak = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (caps, address, peak) = (caps.clone(), address.clone(), peak.clone());
                s.spawn(move || {
                    for _ in 0..20_000 {
                        if let Ok(slot) = caps.try_acquire(&address) {
                            peak.fetch_max(address.load(Ordering::Relaxed), Ordering::Relaxed);
                            drop(slot);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 5, "never more than the cap at once");
        assert_eq!((caps.total(), address.load(Ordering::Relaxed)), (0, 0));
    }

    #[test]
    fn the_address_table_forgets_addresses_without_connections() {
        let caps = RequestCaps::new(10, 10, Gauge::default());
        let kept = caps.address("10.0.0.1".parse().unwrap());
        for i in 0..5_000u32 {
            drop(caps.address(IpAddr::from((0x0b00_0000 + i).to_be_bytes())));
        }
        let len = caps.addresses.lock().counts.len();
        assert!(len <= 1025, "bounded by the live connections (amortised): {len}");
        assert!(Arc::ptr_eq(&kept, &caps.address("10.0.0.1".parse().unwrap())));
    }

    #[test]
    fn caps_fit_below_the_fd_limit() {
        let (mut f, mut w) = (ListenerLimits::FRONT_DOOR, ListenerLimits::WEBHOOKS);
        assert!(!fit_to_fd_limit(&mut [&mut f, &mut w], 1 << 20));
        assert_eq!(f.max_connections, 10_000);
        assert!(fit_to_fd_limit(&mut [&mut f, &mut w], 1024));
        assert!(2 * (f.max_connections + w.max_connections) <= 1024 - 256, "{f:?} {w:?}");
        assert!(f.max_connections > 10 * w.max_connections / 2);
        assert!(f.max_connections_per_address <= f.max_connections);
        // one address at most a quarter: its requests (twice its connections) stay below the total
        assert_eq!(f.max_connections_per_address, f.max_connections / 4, "{f:?}");
        let (mut f, mut w) = (ListenerLimits::FRONT_DOOR, ListenerLimits::WEBHOOKS);
        assert!(fit_to_fd_limit(&mut [&mut f, &mut w], 1 << 14));
        assert_eq!(
            f.max_connections_per_address, 512,
            "a cap below a quarter is kept: {f:?}"
        );
    }
}
