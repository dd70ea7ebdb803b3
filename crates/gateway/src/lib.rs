//! The HTTPS front door: router, gatekeeper (sessions, login redirect, callback, logout, check
//! endpoint), reverse proxy to configured routes, the home page and request metrics.
//!
//! Invariants: `/dex/*`, `/authservice/*` and oauth2-proxy's `/oauth2/` endpoints (`start`,
//! `sign_in`, `sign_out`, `auth`, `userinfo`) are never gated; every other path is authenticated
//! unless its route is public; every routing and authentication decision is made on the
//! normalised path (`kfsec_types::path`), which is also what upstreams receive, and a path that
//! cannot be normalised is a 400 before any routing; client-sent identity and forwarding headers
//! (every spelling, `headers`) are always stripped and replaced by the authenticated identity;
//! handlers receive an `Identity`, never raw credentials.

mod audit;
pub mod forwarded;
mod front;
mod gatekeeper;
pub mod h1;
pub mod headers;
mod lean;
pub mod listener;
pub mod metrics;
mod panics;
pub mod proxy;
pub mod responses;
pub mod session;
pub mod session_cookie;
pub mod sharded;
mod stall;
mod tunnel;
mod upstream;
pub mod workers;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use kfsec_audit::RequestAudit;
use kfsec_idp::{Authenticator, Client, ClientAddr, ClientAuth, CredentialKind, Idp};
use kfsec_store::{Store, StoreError};
use kfsec_types::{Clock, Identity, RefusalKind, Rng, same};
use prometheus_client::registry::Registry;

pub use kfsec_types::path;

pub use gatekeeper::{Authn, CALLBACK_PATH, CSRF_COOKIE, LOGGED_OUT_AUTHSERVICE, LOGGED_OUT_OAUTH2, safe_return_path};
pub use kfsec_idp::authn::{PIPELINES_AUDIENCE, SERVICE_ACCOUNT_AUDIENCE};
pub use kfsec_idp::cookies::same_origin_write;
pub use proxy::{Route, UpstreamIdentity, UpstreamTls};
pub use responses::{Mount, RenderRefusal};
pub use session::{Federated, Refreshed, Refresher, Sessions};

/// oauth2-proxy's prefix, whose `start`, `sign_in`, `sign_out`, `auth` and `userinfo` the
/// gatekeeper serves (no configured route may use it).
pub const OAUTH2_PREFIX: &str = "/oauth2/";

/// The gatekeeper's OAuth2 client id at the built-in IdP.
pub const GATEKEEPER_CLIENT_ID: &str = "kfsec-gatekeeper";

/// `Strict-Transport-Security` on every front-door response (one year).
const HSTS: &str = "max-age=31536000";

/// Gateway errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// Storage failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A record did not decode.
    #[error("corrupt record: {0}")]
    Json(#[from] serde_json::Error),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// An invariant broke.
    #[error("internal: {0}")]
    Internal(String),
}

/// Validated gateway settings.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Session cookie name.
    pub cookie_name: String,
    /// Session lifetime.
    pub session_ttl: Duration,
    /// Header carrying the user id upstream.
    pub user_id_header: HeaderName,
    /// Prefix before the user id.
    pub user_id_prefix: String,
    /// Header carrying groups upstream.
    pub groups_header: HeaderName,
    /// Proxied routes.
    pub routes: Vec<Route>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: forwarded::TrustedProxies,
    /// TLS material for upstreams.
    pub upstream_identity: Option<UpstreamIdentity>,
    /// How long an upstream may let one wait last (`frontDoor.upstreamTimeout`).
    pub upstream_timeout: Duration,
    /// How long a WebSocket tunnel may stay quiet (`frontDoor.tunnelIdleTimeout`).
    pub tunnel_idle_timeout: Duration,
    /// `X-Forwarded-Host` for upstreams: the public URL's `host[:port]` (never the client's `Host`).
    pub forwarded_host: Option<String>,
    /// Concurrent sessions per user; the oldest ends when a new one starts.
    pub max_sessions_per_user: usize,
    /// How often a session of a user signed in through an upstream connector is re-checked
    /// there, at its next request (None: never).
    pub revalidate_federated: Option<Duration>,
    /// Re-check local users' sessions too (tests only: exercises the re-check without an
    /// upstream).
    pub revalidate_all_sessions: bool,
}

/// The built-in client registration the gatekeeper uses at the IdP.
pub fn gatekeeper_client() -> Client {
    Client {
        id: GATEKEEPER_CLIENT_ID.into(),
        name: "kfsec gatekeeper".into(),
        redirect_uris: vec![CALLBACK_PATH.into()],
        auth: ClientAuth::InProcess,
    }
}

/// The client id `kfsec login` uses (device flow, public).
pub const CLI_CLIENT_ID: &str = "kfsec-cli";

/// The built-in public client of `kfsec login`. It registers no redirect URI: its logins are
/// device logins, whose browser leg ends at the IdP's own `/device/callback`, which only a
/// device login started at `/device/auth/verify_code` may use (never an `/auth` request's).
pub fn cli_client() -> Client {
    Client {
        id: CLI_CLIENT_ID.into(),
        name: "kfsec command line".into(),
        redirect_uris: Vec::new(),
        auth: ClientAuth::Public,
    }
}

/// Shared state of the front door.
pub struct App {
    settings: GatewaySettings,
    idp: Arc<Idp>,
    idp_path: String,
    sessions: Arc<Sessions>,
    /// The session cookie's names.
    session_cookie: session_cookie::SessionCookie,
    authn: Authenticator,
    keys: session::MacKeys,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    proxy: proxy::Proxy,
    reserved: headers::Reserved,
    metrics: metrics::HttpMetrics,
    api: Option<Router>,
    mounts: responses::Mounts,
    pages: std::sync::OnceLock<Pages>,
    /// What each request's audit context records through (one per thread).
    recorders: std::sync::OnceLock<kfsec_audit::request::Recorders>,
    /// Audit ids (pooled randomness: one per request).
    audit_ids: kfsec_audit::request::AuditIds,
    /// The session check's per-thread front.
    front: front::Front,
    decisions: std::sync::OnceLock<metrics::Decisions>,
    /// Each configured route's metrics series, labelled by its prefix (a proxied request
    /// counts without a lookup).
    route_series: Vec<metrics::RouteSeries>,
    /// Each configured route's audit decision reasons (`audit::RouteReasons`), built once.
    route_reasons: Vec<audit::RouteReasons>,
    /// Whether a route prefix has capitals (`ambiguity` then always compares loose readings).
    upper_case_routes: bool,
}

/// kfsec's own dashboard pages, served for signed-in callers on the paths no route claims. The
/// router receives the caller's [`Identity`] and the forms' [`kfsec_idp::pages::CsrfToken`] as
/// request extensions; cookie-authenticated writes have passed the same-origin rule.
pub struct Pages {
    /// Owned paths: an entry ending in `/` owns every path under it, any other entry that exact
    /// path.
    pub paths: Vec<&'static str>,
    /// Serves them.
    pub router: Router,
}

impl Pages {
    fn owns(&self, path: &str) -> bool {
        self.paths
            .iter()
            .any(|p| path == *p || (p.ends_with('/') && path.starts_with(p)))
    }
}

impl App {
    /// Builds the front door. `api` serves the paths of the mounted surfaces (`mounts`: the
    /// Kubernetes-style API, Pipelines, KFAM) for authenticated callers; it receives the caller's
    /// [`Identity`] as a request extension. Refusals on a mount's paths are written by its
    /// renderer.
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        settings: GatewaySettings,
        idp: Arc<Idp>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        registry: &mut Registry,
        api: Option<(Router, Vec<Mount>)>,
    ) -> Result<Arc<Self>, GatewayError> {
        let keys = session::load_keys(store.as_ref(), rng.as_ref()).await?;
        let sessions = Sessions::new(
            store.clone(),
            clock.clone(),
            rng.clone(),
            keys.session.clone(),
            settings.session_ttl,
            settings.max_sessions_per_user,
            settings.revalidate_federated,
        );
        let authn = Authenticator::new(idp.clone());
        let session_cookie = session_cookie::SessionCookie::new(&settings.cookie_name);
        let idp_path = idp.settings().issuer_path();
        let metrics = metrics::HttpMetrics::register(registry);
        let forwarded_host = match &settings.forwarded_host {
            Some(h) => Some(
                HeaderValue::from_str(h)
                    .map_err(|_| GatewayError::Config(format!("public host {h:?} is not a header value")))?,
            ),
            None => None,
        };
        let proxy = proxy::Proxy::new(
            &settings.routes,
            settings.upstream_identity.as_ref(),
            forwarded_host,
            proxy::OwnCookies::new(&session_cookie),
            settings.upstream_timeout,
            settings.tunnel_idle_timeout,
        )?;
        let reserved = headers::Reserved::new(&settings.user_id_header, &settings.groups_header);
        let (api, mounts) = match api {
            Some((router, mounts)) => (Some(router), responses::Mounts::new(mounts)),
            None => (None, responses::Mounts::default()),
        };
        let route_series = settings
            .routes
            .iter()
            .map(|r| metrics.route_series(&Arc::new(r.prefix.clone())))
            .collect();
        let route_reasons = settings
            .routes
            .iter()
            .map(|r| audit::RouteReasons::new(&r.prefix))
            .collect();
        let upper_case_routes = settings
            .routes
            .iter()
            .any(|r| r.prefix.bytes().any(|b| b.is_ascii_uppercase()));
        Ok(Arc::new(Self {
            settings,
            idp,
            idp_path,
            sessions,
            session_cookie,
            authn,
            keys,
            clock,
            audit_ids: kfsec_audit::request::AuditIds::new(rng.clone()),
            front: front::Front::new(),
            rng,
            proxy,
            reserved,
            metrics,
            api,
            mounts,
            pages: std::sync::OnceLock::new(),
            recorders: std::sync::OnceLock::new(),
            decisions: std::sync::OnceLock::new(),
            route_series,
            route_reasons,
            upper_case_routes,
        }))
    }

    /// Serves kfsec's dashboard pages (once; a second call is ignored). Without them `/` is the
    /// plain "signed in as" page.
    pub fn serve_pages(&self, pages: Pages) {
        let _ = self.pages.set(pages);
    }

    /// Records every front-door request through `auditor` (once; a second call is ignored; without
    /// it nothing is recorded): the edge opens each request's `kfsec_audit::RequestAudit`.
    pub fn audit(&self, auditor: kfsec_audit::Auditor) {
        let _ = self
            .recorders
            .set(kfsec_audit::request::Recorders::new(auditor, self.clock.clone()));
    }

    /// Counts the gateway's own decisions (proxied routes, the gatekeeper's check endpoint) in
    /// `decisions` (once; a second call is ignored).
    pub fn count_decisions(&self, decisions: metrics::Decisions) {
        let _ = self.decisions.set(decisions);
    }

    fn decided(&self, surface: &'static str, allowed: bool) {
        if let Some(d) = self.decisions.get() {
            d.record(surface, allowed);
        }
    }

    /// A proxied route's decision (`proxied`: the path is a configured route's, no surface's).
    fn decided_proxy(&self, proxied: bool, allowed: bool) {
        if proxied {
            self.decided("proxy", allowed);
        }
    }

    /// The session table.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// The authenticator every surface uses (TokenReview too).
    pub fn authenticator(&self) -> &Authenticator {
        &self.authn
    }

    /// The front door as a service for the TLS listener: the edge (`edge`) runs first on every
    /// request; then the IdP's and the gatekeeper's own endpoints go through their router and
    /// every other path straight to `protected` (the same function that router falls back to),
    /// with no router or middleware layer between the edge and a proxied route.
    pub fn service(self: &Arc<Self>) -> FrontDoor {
        let idp = self.idp.router();
        let gate = Router::new()
            .route(CALLBACK_PATH, get(gatekeeper::callback))
            .route("/authservice/logout", post(gatekeeper::logout))
            .route("/authservice/logout-all", post(gatekeeper::logout_all))
            .route("/authservice/check", any(gatekeeper::check))
            .route("/authservice/check/{*rest}", any(gatekeeper::check))
            // oauth2-proxy's paths (Kubeflow 1.8+), through the same handlers.
            .route("/oauth2/start", get(gatekeeper::oauth2_start))
            .route("/oauth2/sign_in", get(gatekeeper::oauth2_start))
            .route("/oauth2/sign_out", get(gatekeeper::sign_out).post(gatekeeper::sign_out))
            .route("/oauth2/auth", any(gatekeeper::check))
            .route("/oauth2/userinfo", get(gatekeeper::userinfo))
            .route(gatekeeper::LOGGED_OUT_OAUTH2, get(gatekeeper::logged_out_page))
            .route(gatekeeper::LOGGED_OUT_AUTHSERVICE, get(gatekeeper::logged_out_page))
            .fallback(protected)
            .with_state(self.clone());
        let gate = if self.idp_path.is_empty() {
            gate
        } else {
            gate.nest(&self.idp_path, idp)
        };
        FrontDoor(Arc::new((self.clone(), gate)))
    }

    /// Whether `path` may be one of the gate router's own endpoints (the IdP under its issuer
    /// path, `/authservice/…`, `/oauth2/…`). A path it does not serve falls back to `protected`
    /// there too, so answering yes too often costs only the routing.
    fn gate_path(&self, path: &str) -> bool {
        path.starts_with("/authservice")
            || path.starts_with("/oauth2")
            || (!self.idp_path.is_empty() && path.starts_with(&self.idp_path))
    }

    /// Replaces any client-sent identity headers with `id`. Names are sent as UTF-8 bytes
    /// (HTTP's obs-text), so a directory user `jürgen` or a group `équipe` reaches the upstream
    /// rather than silently dropping the header.
    pub fn set_identity_headers(&self, h: &mut HeaderMap, caller: &Arc<kfsec_idp::Authenticated>) {
        let (user, groups) = IdentityValues::of(caller, &self.settings.user_id_prefix);
        if let Some(v) = user {
            h.insert(self.settings.user_id_header.clone(), v);
        }
        if let Some(v) = groups {
            h.insert(self.settings.groups_header.clone(), v);
        }
    }

    fn route_label(&self, path: &str) -> Result<usize, String> {
        let names = metrics::RouteNames {
            idp_path: &self.idp_path,
            routes: &self.settings.routes,
            mount: self.mounts.owner(path).map(|m| m.name),
            page: self.pages.get().is_some_and(|p| p.owns(path)),
        };
        metrics::route_label(&names, path)
    }

    /// Counts a request of `route` (`App::route_label`) answered `code` after `seconds`.
    fn record_request(&self, route: Result<usize, String>, code: u16, seconds: f64) {
        let series = match route {
            Ok(i) => self.route_series.get(i).ok_or_else(|| Arc::new("other".to_owned())),
            Err(name) => Err(Arc::new(name)),
        };
        self.metrics.record(series, code, seconds);
    }
}

/// A caller's identity header values (`<prefix><user>`, the groups joined by commas), for
/// `App::set_identity_headers`; `None` for a value that is not a valid header value.
struct IdentityValues {
    /// Whose (kept, so its address cannot be another caller's while it is compared).
    caller: Arc<kfsec_idp::Authenticated>,
    prefix: String,
    user: Option<HeaderValue>,
    groups: Option<HeaderValue>,
}

impl IdentityValues {
    /// The values of `caller`'s identity with `prefix`. Those last built on this thread are
    /// shared (a reference count each) with the next request of the same caller (the same
    /// shared answer, or an equal identity) and prefix: most often the same session's.
    fn of(caller: &Arc<kfsec_idp::Authenticated>, prefix: &str) -> (Option<HeaderValue>, Option<HeaderValue>) {
        thread_local! {
            static LAST: std::cell::RefCell<Option<IdentityValues>> = const { std::cell::RefCell::new(None) };
        }
        LAST.with_borrow_mut(|last| match last {
            Some(v)
                if same::str(&v.prefix, prefix)
                    && (Arc::ptr_eq(&v.caller, caller) || v.caller.identity == caller.identity) =>
            {
                if !Arc::ptr_eq(&v.caller, caller) {
                    v.caller = caller.clone();
                }
                (v.user.clone(), v.groups.clone())
            }
            _ => {
                let v = Self::new(caller, prefix);
                let values = (v.user.clone(), v.groups.clone());
                *last = Some(v);
                values
            }
        })
    }

    fn new(caller: &Arc<kfsec_idp::Authenticated>, prefix: &str) -> Self {
        let id = &caller.identity;
        let mut user = String::with_capacity(prefix.len() + id.user.len());
        user.push_str(prefix);
        user.push_str(&id.user);
        let groups = match id.groups.as_slice() {
            [] => Ok(HeaderValue::from_static("")),
            many => HeaderValue::from_maybe_shared(bytes::Bytes::from(headers::groups_list(many))),
        };
        Self {
            caller: caller.clone(),
            prefix: prefix.to_owned(),
            user: HeaderValue::from_maybe_shared(bytes::Bytes::from(user)).ok(),
            groups: groups.ok(),
        }
    }
}

/// The front door's service (`App::service`): every request runs through `edge`. Cheap to
/// clone (one `Arc`).
#[derive(Clone)]
pub struct FrontDoor(Arc<(Arc<App>, Router)>);

impl tower::Service<Request> for FrontDoor {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let this = self.0.clone();
        Box::pin(async move {
            let (app, gate) = &*this;
            Ok(edge(app, gate, req, None).await)
        })
    }
}

impl listener::Service for FrontDoor {
    fn serve(&self, req: Request) -> impl std::future::Future<Output = Response> + Send + '_ {
        let (app, gate) = &*self.0;
        edge(app, gate, req, None)
    }

    /// The peer is handed on by the edge (put in the request's extensions only for the handlers
    /// that read it there, not for a proxied request).
    fn serve_from(&self, req: Request, peer: IpAddr) -> impl std::future::Future<Output = Response> + Send + '_ {
        let (app, gate) = &*self.0;
        edge(app, gate, req, Some(peer))
    }
}

/// What the edge hands on with a request: its audit context, the client's address (a trusted
/// proxy's report, else the peer's), and a flag set when the answer came from an upstream.
/// kfsec's own handlers read the first two from the request's extensions (`Hop::hand_over`
/// puts them there); the proxied path takes them from here, and allocates neither.
#[derive(Clone, Copy)]
struct Hop<'a> {
    audit: Option<&'a RequestAudit>,
    client: Option<IpAddr>,
    proxied: &'a AtomicBool,
}

impl Hop<'_> {
    /// Puts the audit context and the client's address in `req`'s extensions, for a handler.
    fn hand_over(&self, req: &mut Request) {
        if let Some(a) = self.audit {
            req.extensions_mut().insert(a.clone());
        }
        if let Some(ip) = self.client {
            req.extensions_mut().insert(ClientAddr(ip));
        }
    }
}

/// After the edge: the gate router for its endpoints, `protected` for everything else. (Not an
/// `async fn`, whose future would hold both branches' futures one after the other.)
fn dispatch<'a>(
    app: &'a Arc<App>,
    gate: &Router,
    mut req: Request,
    hop: Hop<'a>,
) -> impl std::future::Future<Output = Response> + 'a {
    use futures_util::future::Either;
    if app.gate_path(req.uri().path()) {
        hop.hand_over(&mut req);
        // Boxed, as every branch off the proxied path: a future is as large as its largest
        // branch, and the whole of it is copied into its box for every request.
        let routed = Box::pin(tower::ServiceExt::oneshot(gate.clone(), req));
        return Either::Left(futures_util::FutureExt::map(routed, |r| match r {
            Ok(r) => r,
            Err(never) => match never {},
        }));
    }
    Either::Right(guarded(app, req, hop))
}

/// Runs first on every request, before routing: the path is normalised (or refused with 400),
/// the received `Connection` header is applied and reserved identity and forwarding headers
/// removed (`headers`), the client address is taken from a trusted proxy, security headers are
/// added to the answer, metrics; a handler's panic becomes a 500 and a `Panic` audit Event.
/// `peer`: the connection's peer, when the listener hands it on (else it is read from the
/// request's extensions).
async fn edge(app: &Arc<App>, gate: &Router, mut req: Request, peer: Option<IpAddr>) -> Response {
    #[allow(clippy::disallowed_methods)] // the request-latency metric is a monotonic measurement, not logic time
    let start = Instant::now();
    let peer = peer.or_else(|| req.extensions().get::<ClientAddr>().map(|c| c.0));
    let refusal = normalise_target(&app.mounts, &mut req).or_else(|| ambiguity(app, &req));
    let recorders = app.recorders.get().filter(|r| r.enabled());
    let mut request_audit = None;
    if refusal.is_some()
        && let Some(recorders) = recorders
    {
        request_audit = Some(audit::begin(app, recorders, &req, peer, None));
    }
    let proxied = AtomicBool::new(false);
    let (resp, route) = match refusal {
        None => {
            let proxies = &app.settings.trusted_proxies;
            let trusted = peer.filter(|p| proxies.contains(*p)).map(|_| proxies);
            let forwarded = headers::sanitize(req.headers_mut(), &app.reserved, peer, trusted);
            if let Some(recorders) = recorders {
                request_audit = Some(audit::begin(app, recorders, &req, peer, forwarded));
            }
            let route = app.route_label(req.uri().path());
            // A handler's panic is answered 500 and recorded (`panics`), not a reset connection.
            let uri = req.uri().clone();
            let hop = Hop {
                audit: request_audit.as_ref(),
                client: forwarded.or(peer),
                proxied: &proxied,
            };
            let resp = match panics::catch(dispatch(app, gate, req, hop)).await {
                Ok(resp) => resp,
                Err(panic) => panics::answer(
                    &app.mounts,
                    app.rng.as_ref(),
                    uri.path(),
                    request_audit.as_ref(),
                    &panic,
                ),
            };
            (resp, route)
        }
        Some(resp) => (resp, Err("rejected".to_owned())),
    };
    let proxied = proxied.load(Ordering::Relaxed) || resp.extensions().get::<proxy::Proxied>().is_some();
    let resp = audit::finish(request_audit, security_headers(resp, proxied));
    app.record_request(route, resp.status().as_u16(), start.elapsed().as_secs_f64());
    resp
}

/// Replaces the request's path with its canonical form (`path::normalize`; absolute-form and
/// HTTP/2 targets alike, the query untouched), or returns the 400 (in the path's family format)
/// that refuses it.
fn normalise_target(mounts: &responses::Mounts, req: &mut Request) -> Option<Response> {
    let raw = req.uri().path();
    if path::is_normal(raw) {
        return None;
    }
    let refuse = |raw: &str, why: &dyn std::fmt::Display| {
        mounts.error(raw, RefusalKind::BadRequest, &format!("Invalid request path: {why}."))
    };
    let canonical = match path::normalize(raw) {
        Ok(p) if p == raw => return None,
        Ok(p) => p,
        Err(e) => return Some(refuse(raw, &e)),
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = match pq.parse() {
        Ok(pq) => Some(pq),
        Err(e) => return Some(refuse(req.uri().path(), &e)),
    };
    match axum::http::Uri::from_parts(parts) {
        Ok(uri) => {
            *req.uri_mut() = uri;
            None
        }
        Err(e) => Some(refuse(req.uri().path(), &e)),
    }
}

/// The 400 that refuses a path an upstream could read as another route (`proxy::ambiguous`).
fn ambiguity(app: &App, req: &Request) -> Option<Response> {
    let path = req.uri().path();
    // Without ';' or capitals in the path, and no capitals in any route prefix, the loose
    // readings are the path itself: nothing to compare.
    if !app.upper_case_routes && !path.bytes().any(|b| b == b';' || b.is_ascii_uppercase()) {
        return None;
    }
    proxy::ambiguous(&app.settings.routes, path).then(|| {
        app.mounts.error(
            path,
            RefusalKind::BadRequest,
            "Ambiguous request path: its ';' parameters or letter case would select another route.",
        )
    })
}

/// HSTS and `nosniff` on every answer; kfsec's own HTML pages (not an upstream's) also refuse
/// framing and cross-origin referrers.
/// (`proxied`: the answer came from an upstream.)
fn security_headers(mut resp: Response, proxied: bool) -> Response {
    let own_html = !proxied
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html"));
    let h = resp.headers_mut();
    // (an upstream's replaced: the transport policy is the whole origin's, kfsec's to set)
    h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if own_html {
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.entry(header::REFERRER_POLICY)
            .or_insert(HeaderValue::from_static("same-origin"));
    }
    resp
}

/// Everything that is not the IdP or the gatekeeper's own endpoints.
/// Whether a request is a page the browser is navigating to (so a login may start). A browser's
/// sub-resource request (`/favicon.ico` after every page, a script, an XHR) says otherwise in
/// `Sec-Fetch-Dest`; starting a login for it would replace the login the page itself started
/// (its state cookie), and that login's callback would fail. Without the header (curl, an older
/// browser) a GET is taken as a navigation, as before.
fn is_navigation(headers: &http::HeaderMap) -> bool {
    static SEC_FETCH_DEST: http::HeaderName = http::HeaderName::from_static("sec-fetch-dest");
    headers
        .get(&SEC_FETCH_DEST)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|d| matches!(d.to_ascii_lowercase().as_str(), "document" | "iframe" | "frame"))
}

/// The gate router's fallback.
/// (Its hop comes from the request's extensions, where the edge put it for the gate router; an
/// upstream's answer is marked [`proxy::Proxied`] for the edge.)
async fn protected(State(app): State<Arc<App>>, req: Request) -> Response {
    let audit = RequestAudit::from_extensions(req.extensions());
    let proxied = AtomicBool::new(false);
    let hop = Hop {
        audit: audit.as_ref(),
        client: req.extensions().get::<ClientAddr>().map(|c| c.0),
        proxied: &proxied,
    };
    let mut resp = guarded(&app, req, hop).await;
    if proxied.load(Ordering::Relaxed) {
        resp.extensions_mut().insert(proxy::Proxied);
    }
    resp
}

/// Everything that is not the IdP or the gatekeeper's own endpoints: the session or credential
/// checked, then a configured route proxied, kfsec's own APIs or pages served, or refused.
/// `hop`: what the edge hands on (the request's audit context and the client's address are put
/// in the request's extensions only for kfsec's own APIs and pages).
async fn guarded(app: &Arc<App>, mut req: Request, hop: Hop<'_>) -> Response {
    let audit = hop.audit;
    let path = req.uri().path().to_owned();
    let (route, reasons) = app
        .settings
        .routes
        .iter()
        .zip(&app.route_reasons)
        .filter(|(r, _)| r.matches(&path))
        .max_by_key(|(r, _)| r.prefix.len())
        .unzip();
    let peer = hop.client.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let cert = req.extensions().get::<listener::ClientCertIdentity>().cloned();
    let mount = app.mounts.owner(&path).map(|_| ());
    let authn = app.authenticate(req.headers(), cert.as_ref(), &path).await;
    let by_session = matches!(&authn, Authn::Ok(a) if a.kind == CredentialKind::Session);
    let caller = match authn {
        // kfsec's own APIs refuse cross-site writes carried by the cookie (see
        // `same_origin_write`); proxied routes leave that to their upstream.
        Authn::Ok(a)
            if a.kind == CredentialKind::Session
                && app.api.is_some()
                && mount.is_some()
                && !app.cookie_write_allowed(req.method(), req.headers()) =>
        {
            tracing::warn!(target: "audit", user = %a.identity.user, path = %path, "cross-site cookie write refused");
            return app
                .mounts
                .error(&path, RefusalKind::Forbidden, "Cross-site request refused.");
        }
        Authn::Ok(a) => Some(a),
        Authn::Unavailable => {
            return app
                .mounts
                .error(&path, RefusalKind::Unavailable, gatekeeper::STORE_DOWN);
        }
        conflict @ (Authn::Invalid | Authn::Conflict) if route.is_none_or(|r| !r.public) => {
            if let (Some(r), None) = (reasons, mount) {
                audit::route_decision(audit, false, r, audit::Why::InvalidCredentials);
            }
            app.decided_proxy(route.is_some() && mount.is_none(), false);
            // (never a login redirect for several session cookies: the planted one would still
            // be sent after the login, and refused again)
            return match conflict {
                Authn::Conflict => app
                    .mounts
                    .error(&path, RefusalKind::Unauthenticated, gatekeeper::SEVERAL_SESSIONS),
                _ => app.mounts.unauthenticated(&path),
            };
        }
        _ if route.is_some_and(|r| r.public) => None,
        _ => {
            if let (Some(r), None) = (reasons, mount) {
                audit::route_decision(audit, false, r, audit::Why::NotAuthenticated);
            }
            let browser =
                matches!(*req.method(), Method::GET | Method::HEAD) && mount.is_none() && is_navigation(req.headers());
            app.decided_proxy(route.is_some() && mount.is_none(), false);
            if browser {
                let original = req.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
                return app.start_login(&original);
            }
            return app.mounts.unauthenticated(&path);
        }
    };
    // (shared with the session front's answer: borrowed here, copied only for kfsec's own
    // APIs and pages)
    let identity = caller.as_deref().map(|a| &a.identity);
    if let Some(id) = identity {
        audit::set_user(audit, id);
    }
    if let (Some(api), Some(id)) = (&app.api, identity)
        && mount.is_some()
    {
        hop.hand_over(&mut req);
        req.extensions_mut().insert(id.clone());
        return match Box::pin(tower::ServiceExt::oneshot(api.clone(), req)).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    if route.is_none()
        && let Some(id) = identity
        && let Some(pages) = app.pages.get().filter(|p| p.owns(&path))
    {
        if by_session && !app.cookie_write_allowed(req.method(), req.headers()) {
            tracing::warn!(target: "audit", user = %id.user, path = %path, "cross-site cookie write refused");
            return kfsec_idp::error_page(StatusCode::FORBIDDEN, "Forbidden", "Cross-site request refused.");
        }
        let token = app.page_token(req.headers(), &id.user, by_session);
        if by_session && let Some(login) = Box::pin(app.session_login(req.headers(), id)).await {
            req.extensions_mut().insert(login);
        }
        hop.hand_over(&mut req);
        req.extensions_mut().insert(id.clone());
        req.extensions_mut().insert(token);
        return match Box::pin(tower::ServiceExt::oneshot(pages.router.clone(), req)).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    match route.zip(reasons) {
        Some((route, reasons)) => {
            let why = if route.public {
                audit::Why::PublicRoute
            } else {
                audit::Why::Authenticated
            };
            audit::route_decision(audit, true, reasons, why);
            app.decided_proxy(true, true);
            // (a tunnel lives while what opened it holds: a certificate, while the trust it was
            // verified under stands and until its notAfter)
            let upgrade = proxy::is_upgrade(req.headers());
            let credential: Option<Box<dyn tunnel::Credential>> = match &caller {
                Some(c) if upgrade => match c.kind {
                    CredentialKind::ClientCertificate => req.extensions().get::<listener::CertTrust>().map(|t| {
                        Box::new(listener::CertTunnel {
                            trust: t.clone(),
                            not_after: c.expires_at.unwrap_or(u64::MAX),
                            clock: app.clock.clone(),
                        }) as Box<_>
                    }),
                    _ => {
                        let held = gatekeeper::TunnelCredential::new(app, req.headers(), &path, c);
                        Some(Box::new(held))
                    }
                },
                _ => None,
            };
            proxy::remove_own_cookies(req.headers_mut(), app.proxy.own_cookies());
            if let Some(caller) = &caller {
                app.set_identity_headers(req.headers_mut(), caller);
            }
            match app
                .proxy
                .forward(route, req, upgrade, peer, &app.mounts, credential)
                .await
            {
                Ok(resp) => {
                    hop.proxied.store(true, Ordering::Relaxed);
                    resp
                }
                Err(own) => own,
            }
        }
        None if path == "/" => match identity {
            Some(id) => home(id),
            None => app.mounts.error(&path, RefusalKind::NotFound, "Not found."),
        },
        None => app
            .mounts
            .error(&path, RefusalKind::NotFound, &format!("No route for {path}.")),
    }
}

fn home(id: &Identity) -> Response {
    kfsec_idp::home_page(&id.user, &id.groups)
}

/// Whether the process is ready: `Err(reason)` is answered 503 with the reason (no secret, no
/// internal detail beyond naming the failing dependency). Called on every `/readyz`: it must be
/// cheap (read cached state, never wait on the store).
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Health endpoints and metrics for the admin listener. `/healthz` always answers 200 while the
/// process runs; `/readyz` answers `ready` or 503 with `ready`'s reason; `/metrics` answers 503
/// until `registry` is set (the components register their metrics while the server starts).
pub fn admin_router(registry: Arc<std::sync::OnceLock<Arc<Registry>>>, ready: ReadyCheck) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready() {
                        Ok(()) => (StatusCode::OK, "ready".to_owned()).into_response(),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move |headers: http::HeaderMap| {
                let registry = registry.clone();
                async move {
                    let Some(registry) = registry.get() else {
                        return (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response();
                    };
                    let mut out = String::new();
                    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
                        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    // OpenMetrics for scrapers that ask for it (Prometheus), else the text format.
                    let openmetrics = headers
                        .get_all(header::ACCEPT)
                        .iter()
                        .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
                    let (body, kind) = match openmetrics {
                        true => (out, "application/openmetrics-text; version=1.0.0; charset=utf-8"),
                        false => (
                            metrics::prometheus_text(&out),
                            "text/plain; version=0.0.4; charset=utf-8",
                        ),
                    };
                    let mut r = Response::new(Body::from(body));
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
                    r
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_gets_its_own_identity_headers_when_callers_take_turns_on_a_thread() {
        let caller = |user: &str, groups: &[&str]| {
            Arc::new(kfsec_idp::Authenticated {
                identity: Identity::new(user.to_owned(), groups.iter().map(|g| (*g).to_owned()).collect()),
                audiences: vec![],
                kind: CredentialKind::Session,
                expires_at: None,
            })
        };
        let ann = caller("ann@example.com", &["a", "b"]);
        let ann_again = caller("ann@example.com", &["a", "b"]);
        let bob = caller("bob@example.com", &[]);
        let ann_other_groups = caller("ann@example.com", &["c"]);
        let text = |v: Option<HeaderValue>| v.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let google = "accounts.google.com:";
        let cases = [
            (&ann, "", Some("ann@example.com"), Some("a,b")),
            (&ann_again, "", Some("ann@example.com"), Some("a,b")),
            (&bob, "", Some("bob@example.com"), Some("")),
            (&ann, google, Some("accounts.google.com:ann@example.com"), Some("a,b")),
            (
                &ann_other_groups,
                google,
                Some("accounts.google.com:ann@example.com"),
                Some("c"),
            ),
            (&ann, "", Some("ann@example.com"), Some("a,b")),
        ];
        for (i, (caller, prefix, user, groups)) in cases.into_iter().enumerate() {
            let (u, g) = IdentityValues::of(caller, prefix);
            assert_eq!((text(u).as_deref(), text(g).as_deref()), (user, groups), "case {i}");
        }
        let bad = caller("eve\nx", &[]);
        assert_eq!(IdentityValues::of(&bad, "").0, None, "not a header value: not sent");
    }
}
