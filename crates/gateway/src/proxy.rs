//! Reverse proxy to configured upstreams: bodies streamed both ways, WebSocket upgrades joined,
//! hop-by-hop headers removed, `X-Forwarded-*` set.
//!
//! Invariants: identity headers from the client are removed (by the edge, `crate::headers`)
//! before the authenticated identity is added, and the request's `Connection` header was applied
//! there, so nothing here removes a header by a client-chosen name; the session cookie never
//! reaches an upstream, nor `Authorization` unless the route opts in; `X-Forwarded-Host` is the
//! configured public host, never the client's `Host`; an unreachable upstream is a 502, one that
//! let a deadline pass a 504 (`upstream::Timed`), whose bodies name no internal error; a
//! malformed client body is a 400; an upstream's answer cannot reach beyond its route: no
//! `Service-Worker-Allowed` (a service worker stays under the route), no `Set-Cookie` of kfsec's
//! own cookies (`OwnCookies`), none of the origin-wide headers (`ORIGIN_WIDE`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::uri::PathAndQuery;
use axum::http::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;

use kfsec_types::RefusalKind;

use crate::GatewayError;
use crate::upstream::{self, Pool, Tcp, Tls, UpstreamError};

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix.
    pub prefix: String,
    /// Upstream scheme + authority, e.g. `http://127.0.0.1:8080`.
    pub upstream: Uri,
    /// Upstream base path (no trailing slash).
    pub base_path: String,
    /// Skip authentication.
    pub public: bool,
    /// Replacement for `prefix`.
    pub rewrite_prefix: Option<String>,
    /// TLS to the upstream.
    pub tls: Option<UpstreamTls>,
    /// Pass the client's `Authorization` header to the upstream (default: removed).
    pub forward_authorization: bool,
}

/// How the gateway speaks TLS to one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name the upstream's certificate must carry.
    pub server_name: String,
    /// Present the gateway's workload certificate.
    pub mutual: bool,
}

/// The gateway's TLS material for upstreams, kept current by the server: the roots upstream
/// certificates must chain to (both CAs during a rotation window) and the workload certificate
/// presented on mutual-TLS routes (renewed in place).
#[derive(Clone, Debug)]
pub struct UpstreamIdentity {
    /// Trust anchors for upstream certificates.
    pub roots: Arc<kfsec_pki::LiveRoots>,
    /// The gateway's workload certificate.
    pub certificate: Arc<kfsec_pki::ReloadingResolver>,
}

impl Route {
    /// Builds a route from config values.
    pub fn new(
        prefix: &str,
        upstream: &str,
        public: bool,
        rewrite_prefix: Option<String>,
        tls: Option<(String, Option<String>)>,
    ) -> Result<Self, GatewayError> {
        if !prefix.starts_with('/') {
            return Err(GatewayError::Config(format!(
                "route prefix {prefix:?} must start with '/'"
            )));
        }
        if crate::path::normalize(prefix).as_deref() != Ok(prefix) {
            return Err(GatewayError::Config(format!(
                "route prefix {prefix:?} must be a normalised path (no '//', dot-segments or needless escapes): requests are matched after normalisation"
            )));
        }
        let uri: Uri = upstream
            .parse()
            .map_err(|e| GatewayError::Config(format!("route {prefix}: upstream {upstream:?}: {e}")))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        if uri.scheme_str() != Some(scheme) || uri.authority().is_none() {
            let hint = if tls.is_some() {
                " (the route has tls)"
            } else {
                " (https upstreams need tls: {mode: mutual})"
            };
            return Err(GatewayError::Config(format!(
                "route {prefix}: upstream {upstream:?} must be an {scheme}:// URL{hint}"
            )));
        }
        let tls = match tls {
            None => None,
            Some((mode, server_name)) => {
                let mutual = match mode.as_str() {
                    "mutual" => true,
                    "simple" => false,
                    other => {
                        return Err(GatewayError::Config(format!(
                            "route {prefix}: tls.mode {other:?} must be mutual or simple"
                        )));
                    }
                };
                let server_name = server_name
                    .or_else(|| uri.host().map(str::to_owned))
                    .unwrap_or_default();
                Some(UpstreamTls { server_name, mutual })
            }
        };
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let upstream = Uri::builder()
            .scheme(scheme)
            .authority(uri.authority().map(|a| a.as_str()).unwrap_or_default())
            .path_and_query("/")
            .build()
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        Ok(Self {
            prefix: prefix.to_owned(),
            upstream,
            base_path,
            public,
            rewrite_prefix,
            tls,
            forward_authorization: false,
        })
    }

    /// Whether the client's `Authorization` header reaches the upstream.
    #[must_use]
    pub fn with_forward_authorization(mut self, forward: bool) -> Self {
        self.forward_authorization = forward;
        self
    }

    /// Whether `path` belongs to this route. A prefix `/x/` also matches `/x`.
    pub fn matches(&self, path: &str) -> bool {
        path.starts_with(&self.prefix) || (self.prefix.ends_with('/') && path == &self.prefix[..self.prefix.len() - 1])
    }

    fn matches_folded(&self, lower_path: &str) -> bool {
        let prefix = self.prefix.to_ascii_lowercase();
        lower_path.starts_with(&prefix) || (prefix.ends_with('/') && lower_path == &prefix[..prefix.len() - 1])
    }

    /// The upstream's path and query for `uri`: the base path, then the path with the prefix
    /// rewritten (`/` when both are empty), then the query; always starting with `/`. Built in
    /// one string of the exact size.
    fn target_path(&self, uri: &Uri) -> Result<PathAndQuery, GatewayError> {
        // A route that neither rewrites nor adds a base path sends the path and query as they
        // came (their bytes shared, not copied and checked again).
        if self.rewrite_prefix.is_none()
            && self.base_path.is_empty()
            && let Some(pq) = uri.path_and_query()
            // (an absolute-form target's empty path reads as `/`, yet its text starts `?`)
            && pq.as_str().starts_with('/')
        {
            return Ok(pq.clone());
        }
        self.built_target_path(uri)
    }

    /// [`Route::target_path`], built.
    fn built_target_path(&self, uri: &Uri) -> Result<PathAndQuery, GatewayError> {
        let path = uri.path();
        let (head, tail) = match &self.rewrite_prefix {
            Some(r) => (
                r.as_str(),
                path.get(self.prefix.len().min(path.len())..).unwrap_or_default(),
            ),
            None => ("", path),
        };
        let mapped = if head.is_empty() && tail.is_empty() {
            ("/", "")
        } else {
            (head, tail)
        };
        let slash = [self.base_path.as_str(), mapped.0, mapped.1]
            .iter()
            .find(|s| !s.is_empty())
            .is_none_or(|s| !s.starts_with('/'));
        let query = uri.query();
        let mut pq = String::with_capacity(
            usize::from(slash)
                + self.base_path.len()
                + mapped.0.len()
                + mapped.1.len()
                + query.map_or(0, |q| q.len() + 1),
        );
        if slash {
            pq.push('/');
        }
        pq.push_str(&self.base_path);
        pq.push_str(mapped.0);
        pq.push_str(mapped.1);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        PathAndQuery::try_from(pq).map_err(|_| GatewayError::Internal("bad upstream path".into()))
    }

    /// The full upstream URI for `uri` (upstreams receive [`Self::target_path`]).
    #[cfg(test)]
    fn target(&self, uri: &Uri) -> Result<Uri, GatewayError> {
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query = Some(self.target_path(uri)?);
        Uri::from_parts(parts).map_err(|e| GatewayError::Internal(e.to_string()))
    }
}

/// The most specific route for `path` (by index), comparing letter case or not.
fn best_route(routes: &[Route], path: &str, fold_case: bool) -> Option<usize> {
    let lower = path.to_ascii_lowercase();
    routes
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            if fold_case {
                r.matches_folded(&lower)
            } else {
                r.matches(path)
            }
        })
        .max_by_key(|(_, r)| r.prefix.len())
        .map(|(i, _)| i)
}

/// Whether an upstream reading the (normalised) `path` loosely — ignoring `;` parameters in
/// segments as Tomcat, Jetty and Spring do, or letter case as case-insensitive file systems do —
/// could take it for another route than kfsec does. The route decides whether login is needed,
/// so such a path is refused rather than guessed at.
pub fn ambiguous(routes: &[Route], path: &str) -> bool {
    let Some(exact) = best_route(routes, path, false) else {
        return false;
    };
    let stripped: String = path
        .split('/')
        .map(|seg| seg.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/");
    best_route(routes, &stripped, false) != Some(exact)
        || best_route(routes, path, true) != Some(exact)
        || best_route(routes, &stripped, true) != Some(exact)
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static SERVICE_WORKER_ALLOWED: HeaderName = HeaderName::from_static("service-worker-allowed");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that belong to one connection (RFC 9110 §7.6.1) plus proxy credentials, with
/// whether an upgrade keeps them.
static HOP_BY_HOP: [(&HeaderName, bool); 9] = [
    (&header::CONNECTION, true),
    (&KEEP_ALIVE, false),
    (&PROXY_CONNECTION, false),
    (&header::TE, false),
    (&header::TRAILER, false),
    (&header::TRANSFER_ENCODING, false),
    (&header::UPGRADE, true),
    (&header::PROXY_AUTHORIZATION, false),
    (&header::PROXY_AUTHENTICATE, false),
];

/// Removes hop-by-hop headers. `named`: also the headers the message's own `Connection` names —
/// only for a message as received (responses here; requests had theirs applied at the edge).
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool, named: bool) {
    // Most often the message's `Connection` names no header that is present (`keep-alive`,
    // `close`): then no value is copied.
    if named
        && h.get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| named_by(v, keep_upgrade))
            .any(|n| h.contains_key(n))
    {
        // (values are cheap to clone: shared bytes)
        let values: Vec<HeaderValue> = h.get_all(header::CONNECTION).iter().cloned().collect();
        for n in values.iter().flat_map(|v| named_by(v, keep_upgrade)) {
            h.remove(n);
        }
    }
    // One pass over the names present (a handful, usually none of them hop-by-hop: comparing
    // them is cheaper than a hashed lookup of each hop-by-hop name), then a removal of each one
    // found, with all its values.
    let mut found = [false; HOP_BY_HOP.len()];
    for name in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|(n, _)| *n == name) {
            found[i] = true;
        }
    }
    for ((n, upgrade_keeps), found) in HOP_BY_HOP.iter().zip(found) {
        if found && !(keep_upgrade && *upgrade_keeps) {
            h.remove(*n);
        }
    }
}

/// The header names a `Connection` value lists (`headers::connection_names`), except `upgrade`
/// when an upgrade keeps it (a name that is not a valid header name names no header).
fn named_by(v: &HeaderValue, keep_upgrade: bool) -> impl Iterator<Item = &str> {
    crate::headers::connection_names(v).filter(move |n| !(keep_upgrade && n.eq_ignore_ascii_case("upgrade")))
}

/// What an upstream's answer could tell a browser about the whole origin rather than its own
/// route: erase every app's cookies and storage (`Clear-Site-Data`), send a report of every
/// request to the origin — its URL, other apps' query tokens and login callbacks included — to
/// a collector of the app's choosing for as long as it says (`NEL` with `Report-To`), take
/// the origin's traffic to another endpoint (`Alt-Svc`), have every later request to the origin
/// carry the client hints it asks for (`Accept-CH`, remembered for the origin), key or unkey
/// the origin's agent cluster (`Origin-Agent-Cluster`), or speak for the origin's sign-in state
/// to the browser's federated login (`Set-Login`).
static ORIGIN_WIDE: [HeaderName; 7] = [
    HeaderName::from_static("clear-site-data"),
    HeaderName::from_static("nel"),
    HeaderName::from_static("report-to"),
    HeaderName::from_static("alt-svc"),
    HeaderName::from_static("accept-ch"),
    HeaderName::from_static("origin-agent-cluster"),
    HeaderName::from_static("set-login"),
];

/// The cookies kfsec sets on the origin — the session, the gatekeeper's login state, an upstream
/// login's pending state, a device login's browser binding — which no upstream's answer may
/// set, replace or clear.
#[derive(Debug, Clone)]
pub struct OwnCookies(Box<[Box<str>]>);

impl OwnCookies {
    /// kfsec's cookies: the session cookie's names (`session`), the login states.
    pub fn new(session: &crate::session_cookie::SessionCookie) -> Self {
        Self(
            session
                .names()
                .chain([crate::gatekeeper::CSRF_COOKIE])
                .chain(kfsec_idp::cookies::IDP_COOKIES)
                .map(Box::from)
                .collect(),
        )
    }

    /// Whether a request's cookie named `name` is one of them (exactly: that is what kfsec reads).
    fn is_own(&self, name: &[u8]) -> bool {
        self.0.iter().any(|own| own.as_bytes() == name)
    }

    /// Whether the `Set-Cookie` value `v` sets one of them (its name in any case: a browser
    /// would keep another case apart, so removing it too removes nothing kfsec reads).
    fn sets_own(&self, v: &HeaderValue) -> bool {
        let name = kfsec_idp::cookies::set_cookie_name(v.as_bytes());
        self.0.iter().any(|own| own.as_bytes().eq_ignore_ascii_case(name))
    }
}

/// Removes what an upstream's answer must not say for the whole origin, whose other routes are
/// other users' apps and kfsec's own pages:
/// - `Service-Worker-Allowed` would let an app's service worker control paths beyond the
///   script's directory — `/`, kfsec's login form and pages, and navigations such as
///   `POST /kubeconfig`, whose answers it could read. Without it, a worker stays under its
///   route's prefix.
/// - A `Set-Cookie` of one of kfsec's cookies (`own`) would plant a session — the app owner's,
///   under a path of the victim's app, which the browser then sends first — or a login state,
///   or clear them.
/// - [`ORIGIN_WIDE`]: `Clear-Site-Data`, `NEL`, `Report-To`, `Alt-Svc`, `Accept-CH`,
///   `Origin-Agent-Cluster`, `Set-Login`.
///
/// (`Strict-Transport-Security` is the edge's to set: it replaces an upstream's.)
fn confine_upstream_response(h: &mut HeaderMap, own: &OwnCookies) {
    // One pass over the names present (a handful, usually none of these: cheaper than a hashed
    // lookup of each), then the lookups that are needed.
    let (mut confined, mut cookies) = (false, false);
    for name in h.keys() {
        confined |= *name == SERVICE_WORKER_ALLOWED || ORIGIN_WIDE.contains(name);
        cookies |= *name == header::SET_COOKIE;
    }
    if confined {
        h.remove(&SERVICE_WORKER_ALLOWED);
        for name in &ORIGIN_WIDE {
            h.remove(name);
        }
    }
    // Most answers set no cookie, and most that do set none of kfsec's: nothing is copied then.
    if cookies && h.get_all(header::SET_COOKIE).iter().any(|v| own.sets_own(v)) {
        let kept: Vec<HeaderValue> = h
            .get_all(header::SET_COOKIE)
            .iter()
            .filter(|v| !own.sets_own(v))
            .cloned()
            .collect();
        h.remove(header::SET_COOKIE);
        for v in kept {
            h.append(header::SET_COOKIE, v);
        }
    }
}

/// What an upstream's answer may say to the client: its hop-by-hop headers and the headers its
/// own `Connection` lists removed (`Connection` and `Upgrade` kept for an `upgrade` the client
/// asked for), and what would reach beyond its route (`confine_upstream_response`:
/// `Service-Worker-Allowed`, the origin-wide `Clear-Site-Data`, `NEL`, `Report-To` and
/// `Alt-Svc`, a `Set-Cookie` of kfsec's cookies `own`).
pub fn sanitize_upstream_response(h: &mut HeaderMap, upgrade: bool, own: &OwnCookies) {
    strip_hop_by_hop(h, upgrade, true);
    confine_upstream_response(h, own);
}

pub(crate) fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.to_ascii_lowercase().contains("upgrade")))
}

/// Removes kfsec's own cookies (`own`: the session, and the login states a login in progress
/// holds) from the `Cookie` headers, keeping the others: what remains becomes one header, its
/// cookies trimmed and joined by `"; "` (no header when nothing remains). Read as bytes, not
/// text: a browser sends all its cookies in one header, and one cookie value that is not ASCII
/// (a page on the origin can set one) must not carry the session cookie beside it to the
/// upstream.
pub(crate) fn remove_own_cookies(h: &mut HeaderMap, own: &OwnCookies) {
    // The common case, one header holding one cookie and no space around it (a `contains` is a
    // `memchr`, not a loop over the bytes): kept as it is, or removed.
    let mut all = h.get_all(header::COOKIE).iter();
    if let (Some(v), None) = (all.next(), all.next())
        && !v.as_bytes().contains(&b';')
        && v.as_bytes().trim_ascii().len() == v.len()
    {
        let p = v.as_bytes();
        let key = p.iter().position(|&b| b == b'=').map(|i| &p[..i]);
        if p.is_empty() || key.is_some_and(|k| own.is_own(k)) {
            h.remove(header::COOKIE);
        }
        return;
    }
    remove_own_cookies_from_all(h, own);
}

/// [`remove_own_cookies`] for any number of `Cookie` headers and cookies.
fn remove_own_cookies_from_all(h: &mut HeaderMap, own: &OwnCookies) {
    let mut kept: Vec<u8> = Vec::new();
    let mut headers = 0;
    for v in h.get_all(header::COOKIE) {
        headers += 1;
        for p in v.as_bytes().split(|&b| b == b';').map(<[u8]>::trim_ascii) {
            let key = p.iter().position(|&b| b == b'=').map(|i| &p[..i]);
            if !p.is_empty() && key.is_none_or(|k| !own.is_own(k)) {
                if !kept.is_empty() {
                    kept.extend_from_slice(b"; ");
                }
                kept.extend_from_slice(p);
            }
        }
    }
    if headers == 0 {
        return;
    }
    // One header that already reads as the result: left as it is.
    if headers == 1 && !kept.is_empty() && h.get(header::COOKIE).is_some_and(|v| v.as_bytes() == kept.as_slice()) {
        return;
    }
    h.remove(header::COOKIE);
    // (bytes of header values, joined by "; ": always a valid value)
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(kept))
    {
        h.insert(header::COOKIE, v);
    }
}

type PlainPool = Pool<Tcp, WatchedBody>;
type TlsPool = Pool<Tls, WatchedBody>;
/// By route prefix.
type TlsPools = HashMap<String, Arc<TlsPool>>;

/// The upstream connection pools: one per plain upstream, one per TLS route.
#[derive(Clone)]
pub struct Proxy {
    /// By upstream authority.
    plain: Arc<HashMap<String, Arc<PlainPool>>>,
    tls: Arc<TlsClients>,
    forwarded_host: Option<HeaderValue>,
    own_cookies: OwnCookies,
    /// How long an upstream may let one wait last (nginx's `proxy_read_timeout`).
    timeout: Duration,
    /// How long a WebSocket tunnel may stay quiet.
    tunnel_idle: Duration,
}

/// Idle connections kept per plain upstream and per TLS route.
const MAX_IDLE_PLAIN: usize = 256;
const MAX_IDLE_TLS: usize = 64;

fn plain_pool(upstream: &Uri, timeout: Duration) -> PlainPool {
    Pool::new(
        Tcp::new(upstream),
        upstream::host_header(upstream),
        MAX_IDLE_PLAIN,
        upstream::IDLE_TIMEOUT,
        timeout,
    )
}

/// Marks a response that came from an upstream when it passes through a router on its way back
/// to the edge (kfsec's own pages get stricter headers).
#[derive(Debug, Clone, Copy)]
pub struct Proxied;

/// A request body that remembers whether reading it from the client failed (a malformed chunk,
/// a connection cut mid-body), so that failure is answered 400, not 502.
struct WatchedBody {
    inner: Body,
    /// `None` for a body that is over before it starts (nothing to watch, nothing allocated).
    failed: Option<Arc<AtomicBool>>,
}

impl http_body::Body for WatchedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Err(_))), Some(failed)) = (&polled, &self.failed) {
            failed.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The TLS routes' pools with the roots generation their connections were verified under.
struct TlsClients {
    routes: Vec<Route>,
    identity: Option<UpstreamIdentity>,
    /// The pools' upstream timeout.
    timeout: Duration,
    current: parking_lot::RwLock<(u64, Arc<TlsPools>)>,
}

impl TlsClients {
    /// One pool per TLS route; each starts empty.
    fn build(&self) -> Result<TlsPools, GatewayError> {
        let mut tls = HashMap::new();
        for r in &self.routes {
            let Some(t) = &r.tls else { continue };
            let id = self
                .identity
                .as_ref()
                .ok_or_else(|| GatewayError::Config(format!("route {}: TLS needs the internal CA", r.prefix)))?;
            // No ALPN (as hyper_rustls's HTTP/1-only connector had it): HTTP/1.1, which upgrades
            // need.
            let cfg = kfsec_pki::client_config_live(id.roots.clone(), t.mutual.then(|| id.certificate.clone()))
                .map_err(|e| GatewayError::Config(format!("route {}: {e}", r.prefix)))?;
            let name = rustls::pki_types::ServerName::try_from(t.server_name.clone())
                .map_err(|e| GatewayError::Config(format!("route {}: server name: {e}", r.prefix)))?;
            let connect = Tls {
                tcp: Tcp::new(&r.upstream),
                connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
                server_name: name,
            };
            let host = upstream::host_header(&r.upstream);
            tls.insert(
                r.prefix.clone(),
                Arc::new(Pool::new(
                    connect,
                    host,
                    MAX_IDLE_TLS,
                    upstream::IDLE_TIMEOUT,
                    self.timeout,
                )),
            );
        }
        Ok(tls)
    }

    /// The pool of `prefix`. When the roots changed since its connections were verified, the
    /// pools are rebuilt, so no pooled connection outlives the trust it was checked against.
    fn get(&self, prefix: &str) -> Option<Arc<TlsPool>> {
        let generation = self.identity.as_ref().map_or(0, |id| id.roots.generation());
        {
            let current = self.current.read();
            if current.0 == generation {
                return current.1.get(prefix).cloned();
            }
        }
        let mut current = self.current.write();
        if current.0 != generation {
            match self.build() {
                Ok(clients) => *current = (generation, Arc::new(clients)),
                Err(e) => {
                    // Never the old pools: their connections were verified under the old roots.
                    tracing::warn!(error = %e, "rebuilding the upstream TLS clients failed");
                    *current = (current.0, Arc::new(HashMap::new()));
                }
            }
        }
        current.1.get(prefix).cloned()
    }
}

impl Proxy {
    /// Pools for `routes`; TLS routes trust only `identity`'s CA and, when mutual, present its
    /// workload certificate. `forwarded_host` is the `X-Forwarded-Host` upstreams receive (the
    /// public URL's host). An upstream that lets one wait last `timeout` — for the next bytes
    /// of its answer, or to take the next bytes of a request — fails its request
    /// ([`upstream::Timed`]); a WebSocket tunnel through which no byte moved for
    /// `tunnel_idle` is closed ([`crate::tunnel`]).
    pub fn new(
        routes: &[Route],
        identity: Option<&UpstreamIdentity>,
        forwarded_host: Option<HeaderValue>,
        own_cookies: OwnCookies,
        timeout: Duration,
        tunnel_idle: Duration,
    ) -> Result<Self, GatewayError> {
        let mut plain = HashMap::new();
        for r in routes.iter().filter(|r| r.tls.is_none()) {
            let authority = r.upstream.authority().map(|a| a.as_str()).unwrap_or_default();
            plain
                .entry(authority.to_owned())
                .or_insert_with(|| Arc::new(plain_pool(&r.upstream, timeout)));
        }
        let generation = identity.map_or(0, |id| id.roots.generation());
        let mut tls = TlsClients {
            routes: routes.to_vec(),
            identity: identity.cloned(),
            timeout,
            current: parking_lot::RwLock::new((generation, Arc::new(HashMap::new()))),
        };
        let clients = tls.build()?;
        tls.current.get_mut().1 = Arc::new(clients);
        Ok(Self {
            plain: Arc::new(plain),
            tls: Arc::new(tls),
            forwarded_host,
            own_cookies,
            timeout,
            tunnel_idle,
        })
    }
}

impl Proxy {
    /// kfsec's own cookies, which no upstream sees or sets.
    pub(crate) fn own_cookies(&self) -> &OwnCookies {
        &self.own_cookies
    }

    /// Forwards `req`: its headers were sanitised at the edge (`Connection` applied, reserved
    /// names removed, `X-Forwarded-For` set) and identity added by the caller. `peer` is used for
    /// `X-Forwarded-For` only when the edge did not set it. `Ok`: the upstream's answer; `Err`:
    /// kfsec's own refusal (502 with its reason, 400 for a malformed body), rendered for the
    /// path's clients by `mounts`. `upgrade`: the request asks for one ([`is_upgrade`], read
    /// once by the caller); a tunnel it opens lives while `credential` (if any) holds.
    pub(crate) async fn forward(
        &self,
        route: &Route,
        mut req: Request<Body>,
        upgrade: bool,
        peer: IpAddr,
        mounts: &crate::responses::Mounts,
        credential: Option<Box<dyn crate::tunnel::Credential>>,
    ) -> Result<Response<Body>, Response<Body>> {
        let target = match route.target_path(req.uri()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(route = %route.prefix, error = %e, "no upstream target");
                return Err(bad_gateway(mounts, req.uri().path()));
            }
        };
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let tunnel_place = upgrade
            .then(|| req.extensions_mut().remove::<crate::listener::TunnelPlace>())
            .flatten();
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade, false);
        let h = &mut parts.headers;
        if !h.contains_key(&X_FORWARDED_FOR)
            && let Some(v) = crate::headers::forwarded_for(peer)
        {
            h.insert(X_FORWARDED_FOR.clone(), v);
        }
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        match &self.forwarded_host {
            Some(host) => h.insert(X_FORWARDED_HOST.clone(), host.clone()),
            None => h.remove(&X_FORWARDED_HOST),
        };
        if !route.forward_authorization {
            h.remove(header::AUTHORIZATION);
        }
        h.remove(header::HOST);
        // Upstreams are spoken to over HTTP/1.1 (the only version that can carry an Upgrade), in
        // origin form; the pool adds `Host`. The client's URI is kept for the error answers.
        parts.version = http::Version::HTTP_11;
        let uri = std::mem::replace(&mut parts.uri, Uri::from(target));
        let failed = (!http_body::Body::is_end_stream(&body)).then(|| Arc::new(AtomicBool::new(false)));
        let body = WatchedBody {
            inner: body,
            failed: failed.clone(),
        };
        let out = Request::from_parts(parts, body);
        let unconfigured;
        let sent = match &route.tls {
            None => {
                let pool = match self.plain.get(route.upstream.authority().map_or("", |a| a.as_str())) {
                    Some(pool) => pool,
                    // (not a configured route: a pool for this request only)
                    None => {
                        unconfigured = Arc::new(plain_pool(&route.upstream, self.timeout));
                        &unconfigured
                    }
                };
                pool.send(out, upgrade).await
            }
            // (boxed: a TLS connection's state is large, and would otherwise be part of every
            // proxied request's future, copied at each step)
            Some(_) => match self.tls.get(&route.prefix) {
                Some(pool) => Box::pin(pool.send(out, upgrade)).await,
                None => {
                    tracing::warn!(route = %route.prefix, "no TLS client for this route");
                    return Err(bad_gateway(mounts, uri.path()));
                }
            },
        };
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) if failed.as_ref().is_some_and(|f| f.load(Ordering::Acquire)) => {
                tracing::debug!(route = %route.prefix, error = %e, "the client's request body was malformed");
                return Err(mounts.error(uri.path(), RefusalKind::BadRequest, "Malformed request body."));
            }
            Err(e) if e.timed_out() => {
                tracing::warn!(route = %route.prefix, error = %e, detail = causes(&e), "upstream timed out");
                return Err(mounts.error(
                    uri.path(),
                    RefusalKind::GatewayTimeout,
                    "The upstream service did not answer in time.",
                ));
            }
            Err(e) => {
                let detail = causes(&e);
                match &route.tls {
                    Some(t) => tracing::warn!(
                        route = %route.prefix, error = %e, detail, server_name = %t.server_name,
                        "upstream request failed (a TLS upstream's certificate must be issued by kfsec's CA for its server name)"
                    ),
                    None => tracing::warn!(route = %route.prefix, error = %e, detail, "upstream request failed"),
                }
                return Err(bad_gateway(mounts, uri.path()));
            }
        };
        if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            if let Some(client_upgrade) = client_upgrade {
                let (tunnel_idle, prefix) = (self.tunnel_idle, route.prefix.clone());
                tokio::spawn(async move {
                    // (the request's place under its client's in-flight caps is held for the
                    // tunnel's life)
                    let _place = tunnel_place;
                    match (client_upgrade.await, upstream_upgrade.await) {
                        (Ok(c), Ok(u)) => {
                            let ended =
                                crate::tunnel::run(TokioIo::new(c), TokioIo::new(u), tunnel_idle, credential).await;
                            if ended != crate::tunnel::Ended::Closed {
                                tracing::debug!(route = %prefix, ?ended, "a tunnel was closed");
                            }
                        }
                        (Err(e), _) | (_, Err(e)) => tracing::debug!(error = %e, "websocket upgrade failed"),
                    }
                });
            }
            let (mut parts, _) = resp.into_parts();
            sanitize_upstream_response(&mut parts.headers, true, &self.own_cookies);
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        let (mut parts, body) = resp.into_parts();
        sanitize_upstream_response(&mut parts.headers, false, &self.own_cookies);
        Ok(Response::from_parts(parts, body))
    }
}

/// What caused `e`, innermost last (the log's `detail`).
fn causes(e: &UpstreamError) -> String {
    let mut detail = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if !detail.is_empty() {
            detail.push_str(": ");
        }
        detail.push_str(&s.to_string());
        source = s.source();
    }
    detail
}

/// The one 502 answer, in the format of `path`'s clients: the detail goes to the log, never to
/// the client.
fn bad_gateway(mounts: &crate::responses::Mounts, path: &str) -> Response<Body> {
    mounts.error(path, RefusalKind::BadGateway, "The upstream service is unavailable.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session_cookie::SessionCookie;

    /// kfsec's cookies with the default session cookie name.
    fn own() -> OwnCookies {
        OwnCookies::new(&SessionCookie::new("authservice_session"))
    }

    #[test]
    fn targets_and_rewrites() {
        let r = Route::new("/jupyter/", "http://127.0.0.1:8888", false, Some("/".into()), None).unwrap();
        assert_eq!(
            r.target(&"/jupyter/api/x?y=1".parse().unwrap()).unwrap().to_string(),
            "http://127.0.0.1:8888/api/x?y=1"
        );
        assert!(r.matches("/jupyter") && r.matches("/jupyter/a") && !r.matches("/jupyterx"));
        let r = Route::new("/app", "http://h:1/base/", false, None, None).unwrap();
        assert_eq!(
            r.target(&"/app/z".parse().unwrap()).unwrap().to_string(),
            "http://h:1/base/app/z"
        );
        // A route without rewrite or base path passes the path and query on as built would.
        let plain = Route::new("/", "http://h:1", false, None, None).unwrap();
        for uri in [
            "/",
            "/a/b?c=d&e",
            "/a?",
            "/%2F%zz?x=%20",
            "http://other:9/p/q?r",
            "/a;b=c/d?e#f",
            "https://h?x=1",
            "https://h?",
            "https://h",
        ] {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(
                plain.target_path(&uri).unwrap().as_str(),
                plain.built_target_path(&uri).unwrap().as_str(),
                "{uri}"
            );
        }
        assert!(Route::new("app", "http://h", false, None, None).is_err());
        assert!(Route::new("/a//b/", "http://h", false, None, None).is_err());
        assert!(Route::new("/a/./b/", "http://h", false, None, None).is_err());
        assert!(Route::new("/a", "ftp://h", false, None, None).is_err());
    }

    #[test]
    fn hop_by_hop_and_cookies() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("x-fine", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false, true);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none() && h.get("x-fine").is_some());
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; authservice_session=zzz; b=2"),
        );
        remove_own_cookies(&mut h, &own());
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2");
        // the session cookie's `__Host-` twin goes too
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-authservice_session=zzz; a=1; authservice_session=zzz"),
        );
        remove_own_cookies(&mut h, &own());
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1");
        // the login states (sent on every path: `__Host-` cookies are `Path=/`) go too
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static(
                "__Host-oidc_state_csrf=st; a=1; __Host-kfsec_upstream_login=p; __host-oidc_state_csrf=x; __Host-kfsec_device_login=d",
            ),
        );
        remove_own_cookies(&mut h, &own());
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; __host-oidc_state_csrf=x");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-kfsec_upstream_login=p"),
        );
        remove_own_cookies(&mut h, &own());
        assert!(h.get(header::COOKIE).is_none());
    }

    #[test]
    fn cookie_removal_keeps_the_others_in_one_normalised_header() {
        let removed = |values: &[&'static [u8]]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::COOKIE, HeaderValue::from_bytes(v).unwrap());
            }
            remove_own_cookies(&mut h, &own());
            h.get_all(header::COOKIE)
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect::<Vec<_>>()
        };
        assert!(removed(&[b"authservice_session=zzz"]).is_empty());
        assert!(removed(&[b" authservice_session=zzz ; "]).is_empty());
        assert!(removed(&[b""]).is_empty());
        assert_eq!(removed(&[b"a=1;b=2"]), [b"a=1; b=2"]);
        assert_eq!(removed(&[b"a=1; b=2"]), [b"a=1; b=2"]);
        assert_eq!(removed(&[b"a=1", b"authservice_session=x; b=2"]), [b"a=1; b=2"]);
        assert_eq!(
            removed(&[b"authservice_session =x; flag"]),
            [b"authservice_session =x; flag"]
        );
        assert_eq!(removed(&[b"a=1"]), [b"a=1"]);
        assert_eq!(removed(&[b"authservice_session"]), [b"authservice_session"]);
        assert_eq!(removed(&[b"authservice_session2=x"]), [b"authservice_session2=x"]);
        assert_eq!(removed(&[b" a=1"]), [b"a=1"]);
        // a header that is not text is read as bytes
        assert_eq!(removed(&[b"a=\xff"]), [b"a=\xff"]);
        assert_eq!(removed(&[b"a=\xff", b"b=2"]), [&b"a=\xff; b=2"[..]]);
    }

    proptest::proptest! {
        /// The shortcut for one header holding one cookie decides as the general removal does.
        #[test]
        fn one_cookie_is_removed_or_kept_as_by_the_general_rule(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    &b"authservice_session"[..], b"=", b";", b" ", b"\t", b"a", b"x=1", b"\xff", b"",
                ]),
                0..8,
            )
        ) {
            let value = parts.concat();
            let Ok(v) = HeaderValue::from_bytes(&value) else { return Ok(()) };
            let mut fast = HeaderMap::new();
            fast.insert(header::COOKIE, v);
            let mut general = fast.clone();
            remove_own_cookies(&mut fast, &own());
            remove_own_cookies_from_all(&mut general, &own());
            proptest::prop_assert_eq!(fast, general);
        }
    }

    #[test]
    fn the_session_cookie_is_removed_from_headers_that_are_not_text() {
        // A browser joins all its cookies in one header: one cookie with a UTF-8 value (which a
        // page on the origin can set) makes the whole header not `to_str`-able. The session
        // cookie in it must not reach the upstream either.
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"authservice_session=secret; name=J\xc3\xbcrgen").unwrap(),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"b=\xff; authservice_session=s2").unwrap(),
        );
        remove_own_cookies(&mut h, &own());
        let left: Vec<&[u8]> = h.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(left, [&b"name=J\xc3\xbcrgen; b=\xff"[..]]);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_bytes(b"authservice_session=\xff").unwrap(),
        );
        remove_own_cookies(&mut h, &own());
        assert!(!h.contains_key(header::COOKIE));
    }

    #[test]
    fn every_hop_by_hop_header_is_removed_with_all_its_values() {
        for (name, upgrade_keeps) in &HOP_BY_HOP {
            for keep_upgrade in [false, true] {
                let mut h = HeaderMap::new();
                h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
                h.append(*name, HeaderValue::from_static("one"));
                h.append(*name, HeaderValue::from_static("two"));
                h.insert("x-after", HeaderValue::from_static("1"));
                strip_hop_by_hop(&mut h, keep_upgrade, false);
                let kept = keep_upgrade && *upgrade_keeps;
                assert_eq!(h.get_all(*name).iter().count(), if kept { 2 } else { 0 }, "{name}");
                assert_eq!(h.len(), if kept { 4 } else { 2 }, "{name}: the others stay");
            }
        }
        // all of them at once, amid others
        let mut h = HeaderMap::new();
        for (name, _) in &HOP_BY_HOP {
            h.insert(*name, HeaderValue::from_static("x"));
            h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        strip_hop_by_hop(&mut h, false, false);
        assert_eq!(h.keys().collect::<Vec<_>>(), [header::ACCEPT]);
    }

    proptest::proptest! {
        /// Whatever the `Connection` headers list (several headers, any case, empty and invalid
        /// names, a value with bytes that are not text), the headers they name are removed
        /// exactly as by removing every listed name in turn, and nothing else is.
        #[test]
        fn the_headers_connection_names_are_removed_as_listed(
            values in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::sample::select(vec![
                        &b"x-secret"[..], b"X-Secret", b"keep-alive", b"close", b"upgrade", b"Upgrade",
                        b"x-other", b"", b" ", b"bad name", b"\xff", b"accept",
                    ]),
                    0..4,
                ),
                0..3,
            ),
            keep_upgrade in proptest::bool::ANY,
        ) {
            let mut h = HeaderMap::new();
            for v in &values {
                if let Ok(v) = HeaderValue::from_bytes(&v.join(&b","[..])) {
                    h.append(header::CONNECTION, v);
                }
            }
            for name in ["x-secret", "x-other", "close", "accept", "x-kept"] {
                h.insert(name, HeaderValue::from_static("1"));
            }
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            let mut expected = h.clone();
            // (a value is read as its bytes: one with obs-text still names its headers)
            let listed: Vec<String> = expected
                .get_all(header::CONNECTION)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .flat_map(|v| v.split(',').map(|n| n.trim().to_owned()).collect::<Vec<_>>())
                .collect();
            for n in listed {
                if !(keep_upgrade && n.eq_ignore_ascii_case("upgrade")) {
                    expected.remove(n.as_str());
                }
            }
            strip_hop_by_hop(&mut expected, keep_upgrade, false);
            strip_hop_by_hop(&mut h, keep_upgrade, true);
            proptest::prop_assert_eq!(h, expected);
        }
    }

    #[test]
    fn upgrades_keep_their_connection_and_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade, X-Secret"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::PROXY_AUTHENTICATE, HeaderValue::from_static("Basic"));
        strip_hop_by_hop(&mut h, true, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert!(h.contains_key(header::CONNECTION));
        assert!(
            !h.contains_key("x-secret") && !h.contains_key(header::TE) && !h.contains_key(header::PROXY_AUTHENTICATE)
        );
        strip_hop_by_hop(&mut h, false, true);
        assert!(h.is_empty());
    }

    #[test]
    fn upstream_service_workers_stay_under_their_route() {
        let mut h = HeaderMap::new();
        h.insert("service-worker-allowed", HeaderValue::from_static("/"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript"));
        confine_upstream_response(&mut h, &own());
        assert!(h.get("service-worker-allowed").is_none());
        assert_eq!(h[header::CONTENT_TYPE], "text/javascript");
    }

    #[test]
    fn upstream_answers_cannot_set_kfsecs_cookies_or_clear_the_site() {
        let own = OwnCookies::new(&SessionCookie::new("my_session"));
        let set_cookies = |h: &HeaderMap| -> Vec<String> {
            h.get_all(header::SET_COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        let mut h = HeaderMap::new();
        for v in [
            "my_session=attackers; Path=/victim/; Secure",
            "theme=dark; Path=/app/",
            " MY_SESSION =x",
            "__Host-oidc_state_csrf=forged; Path=/; Secure",
            "__host-kfsec_upstream_login=; Max-Age=0",
            "__Host-kfsec_device_login=planted; Path=/; Secure",
            "app_session=1; HttpOnly",
            "my_session",
            "x=1; my_session=2",
            "=my_session=attackers; Path=/victim/",
            "= __Host-oidc_state_csrf =forged",
            "__Host-my_session=attackers; Path=/; Secure",
        ] {
            h.append(header::SET_COOKIE, HeaderValue::from_static(v));
        }
        h.insert("clear-site-data", HeaderValue::from_static("\"cookies\""));
        h.insert(
            "nel",
            HeaderValue::from_static("{\"report_to\":\"g\",\"max_age\":31536000}"),
        );
        h.insert("report-to", HeaderValue::from_static("{\"group\":\"g\"}"));
        h.insert("alt-svc", HeaderValue::from_static("h3=\":8443\""));
        confine_upstream_response(&mut h, &own);
        // (`my_session` alone names no cookie, and `x=1; my_session=2` sets `x`)
        assert_eq!(
            set_cookies(&h),
            [
                "theme=dark; Path=/app/",
                "app_session=1; HttpOnly",
                "my_session",
                "x=1; my_session=2"
            ]
        );
        for name in ["clear-site-data", "nel", "report-to", "alt-svc"] {
            assert!(h.get(name).is_none(), "{name}");
        }
        // The default session name is kfsec's only when configured so.
        let mut h = HeaderMap::new();
        h.append(header::SET_COOKIE, HeaderValue::from_static("authservice_session=x"));
        confine_upstream_response(&mut h, &own);
        assert_eq!(h.get_all(header::SET_COOKIE).iter().count(), 1);
        // An answer without kfsec's cookies keeps its own in order.
        let mut h = HeaderMap::new();
        h.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        confine_upstream_response(&mut h, &own);
        assert_eq!(set_cookies(&h), ["b=2", "a=1"]);
    }

    #[test]
    fn loosely_read_paths_that_change_the_route_are_ambiguous() {
        let routes = [
            Route::new("/static/", "http://h:1", true, None, None).unwrap(),
            Route::new("/static/admin/", "http://h:1", false, None, None).unwrap(),
        ];
        for p in [
            "/static/admin;x/y",
            "/static/admin;/y",
            "/static/ADMIN/y",
            "/static/Admin;v=1/y",
            "/static/ADMIN",
        ] {
            assert!(ambiguous(&routes, p), "{p}");
        }
        for p in [
            "/static/a;b/c",
            "/static/admin/x;y",
            "/static/Other/x",
            "/nowhere;x",
            "/static/admin/Y",
            "/",
        ] {
            assert!(!ambiguous(&routes, p), "{p}");
        }
    }
}
