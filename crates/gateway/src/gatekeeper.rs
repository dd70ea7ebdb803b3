//! The session gatekeeper: who is calling (session cookie or bearer ID token), the login
//! redirect with state, nonce and PKCE, the OIDC callback, logout and the check endpoint for
//! other ingresses — at oidc-authservice's paths (`/authservice/*`) and oauth2-proxy's
//! (`/oauth2/start`, `sign_in`, `sign_out`, `auth`, `userinfo`), each pair served by one handler.
//!
//! Invariants: the state is bound to a MAC'd, short-lived CSRF cookie; after login or logout we
//! redirect only to a path [`return_path`] accepts (one rule for the login's original URL and
//! oauth2-proxy's `rd`), a logout without one to the logged-out page, which needs no session
//! (so it never starts a new login); a logout ends the session record server-side (cookie or bearer
//! session), and one carried by the cookie must come from our own origin whatever its method;
//! the ID token is verified for signature, `iss`, `aud`, `exp` and `nonce` before a session
//! exists; every credential is judged by the one
//! [`kfsec_idp::Authenticator`] (audience policy, revocation); a presented bearer token that
//! fails verification is refused outright (never downgraded to the cookie); a browser is held
//! to the session cookie's `__Host-` name ([`crate::session_cookie`]: no other site of the
//! domain can plant that one); session cookies of several values (one planted beside the
//! user's) are refused and the sessions they name ended (only values kfsec issued are looked
//! at, at most 16 of at most 64); an unsafe request
//! authenticated by the session cookie must come from our own origin ([`same_origin_write`]);
//! a session of a user who signed in through an upstream connector is re-checked there through
//! the login's refresh token (asked for with `offline_access`, kept in the server-side session
//! record only) at the configured interval, and ends when the IdP refuses it (`invalid_grant`).

use std::sync::Arc;

use aws_lc_rs::hmac;
use axum::body::Body;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use futures_util::future::BoxFuture;
use kfsec_audit::RequestAudit;
use kfsec_audit::request::identity as ident;
use kfsec_audit::request::{OUTCOME_ANNOTATION, REASON_ANNOTATION};
use kfsec_idp::secret::{ct_eq, random_token, sha256_b64};
use kfsec_types::path::return_path;
use kfsec_types::{Failure, Identity, Refusal, RefusalKind, random_array};
use serde::{Deserialize, Serialize};

use axum::http::Method;
use kfsec_idp::{Authenticated, CredentialKind, Idp, OAuthCode};

use crate::listener::ClientCertIdentity;
use crate::session::{Federated, Refreshed, Refresher};
use crate::{App, GATEKEEPER_CLIENT_ID, front, responses};

/// The callback path registered for the gatekeeper client.
pub const CALLBACK_PATH: &str = "/authservice/oidc/callback";
/// The "you are logged out" page under oauth2-proxy's prefix, where `/oauth2/sign_out` without
/// a valid `rd` lands (a proxy in front that sends `/oauth2/` to kfsec unauthenticated serves it
/// too).
pub const LOGGED_OUT_OAUTH2: &str = "/oauth2/logged_out";
/// The same page under oidc-authservice's prefix, where `/authservice/logout` lands.
pub const LOGGED_OUT_AUTHSERVICE: &str = "/authservice/logged_out";
/// The cookie that carries the gatekeeper's login state (`state` and its check) through the login.
pub const CSRF_COOKIE: &str = "__Host-oidc_state_csrf";
const CSRF_TTL_SECS: u64 = 600;
const SCOPES: &str = "openid profile email groups";
/// With `offline_access`: the refresh token a federated session is re-checked with (asked for
/// only while re-checks are on).
const SCOPES_OFFLINE: &str = "openid profile email groups offline_access";

#[derive(Serialize, Deserialize)]
struct CsrfState {
    /// Random part of `state`.
    s: String,
    /// Nonce sent to the IdP.
    n: String,
    /// PKCE verifier.
    v: String,
    /// Expiry, Unix seconds.
    e: u64,
}

/// How a request authenticated, or why it did not.
pub enum Authn {
    /// A valid session, bearer token or client certificate (shared: a session's, with the
    /// answer its front remembers).
    Ok(Arc<Authenticated>),
    /// No credentials at all.
    Missing,
    /// Credentials presented but invalid.
    Invalid,
    /// Session cookies of several values: refused, their sessions ended (see
    /// `App::several_sessions`).
    Conflict,
    /// Credentials presented, but the store has not been heard from for longer than its stale
    /// limit (`store.staleLimit`): what the caches hold (sessions, revocations, RBAC) may be out
    /// of date, so nothing is granted — answered 503.
    Unavailable,
}

pub(crate) use kfsec_idp::cookies::{cookies, same_origin_write};

/// What a caller is told while the store cannot be trusted (503).
pub(crate) const STORE_DOWN: &str =
    "The service is temporarily unavailable (its store cannot be reached); retry later.";

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookies(headers).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// The most session cookies kfsec issued (their MAC verifies) that one request may carry to be
/// looked at: each is a store read and write.
const MAX_SESSION_COOKIES: usize = 16;

/// What a caller whose request carried several session cookies is told.
pub(crate) const SEVERAL_SESSIONS: &str = "This browser sent more than one session cookie (one was set by another page or site of this domain), so none is used. Clear this site's cookies, then sign in again.";

/// The distinct values of the session cookie the request presents that kfsec issued (forged
/// ones cost a MAC check and no store access, and are not counted), or `None` when there are
/// more than [`MAX_SESSION_COOKIES`] of them, or more than four times as many values in all
/// (each a MAC check: a header full of forged values is not read to its end).
fn genuine_sessions<'a>(app: &'a App, headers: &'a HeaderMap) -> Option<Vec<&'a str>> {
    let (mut values, mut seen): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
    for v in app.session_cookie.values(headers) {
        if seen.contains(&v) {
            continue;
        }
        if seen.len() == 4 * MAX_SESSION_COOKIES {
            return None;
        }
        seen.push(v);
        if app.sessions.is_genuine(v) {
            if values.len() == MAX_SESSION_COOKIES {
                return None;
            }
            values.push(v);
        }
    }
    Some(values)
}

/// The token of an `Authorization: Bearer` header, if the request has one.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

impl App {
    /// Authenticates a request by bearer token (an ID token from our IdP for an accepted
    /// audience, or a service-account token for an audience `path` accepts), verified client
    /// certificate or session cookie — all through the one [`kfsec_idp::Authenticator`].
    pub async fn authenticate(&self, headers: &HeaderMap, cert: Option<&ClientCertIdentity>, path: &str) -> Authn {
        let bearer = bearer_token(headers);
        let (first_session, several) = self.session_cookie.first(headers);
        let credential = bearer.is_some() || cert.is_some() || first_session.is_some();
        if credential && let Err(e) = self.sessions.store_current() {
            tracing::debug!(error = %e, "credential not checked: the store is not current");
            return Authn::Unavailable;
        }
        if let Some(token) = bearer {
            return match Box::pin(self.authn.bearer(token, self.mounts.surface(path))).await {
                Ok(a) => Authn::Ok(Arc::new(a)),
                Err(e) => {
                    tracing::info!(target: "audit", reason = %e, "bearer token refused");
                    Authn::Invalid
                }
            };
        }
        if let Some(c) = cert {
            // (rustls checked the validity at the handshake; a kept-alive connection outlives it)
            if self.clock.now().as_secs() >= c.not_after {
                tracing::info!(target: "audit", user = %c.identity.user, "client certificate expired since its connection opened: refused");
                return Authn::Invalid;
            }
            return Authn::Ok(Arc::new(self.authn.client_certificate(c.identity.clone(), c.not_after)));
        }
        // An expired, revoked or forged cookie is treated like no cookie: browsers go back
        // through login, API clients get 401. The versions are read before anything is
        // checked: an answer remembered by the front holds only while they stay the same.
        let versions = self.credential_versions();
        // The session cookie, as its front remembers it (no second reading of the `Cookie`
        // headers on this path, which most requests take).
        if let (Some(v), Some(versions), false) = (first_session, versions, several)
            && let Some(a) = self.front.get(v, versions, self.clock.now())
        {
            return Authn::Ok(a);
        }
        if several {
            return self.several_sessions(headers).await;
        }
        for v in self.session_cookie.values(headers) {
            if let Some(s) = self.sessions.check(v, &IdpRefresher(&self.idp)).await
                && let Ok(a) = self.authn.session(s.identity, &s.user_key, s.started_ms).await
            {
                let a = Arc::new(a);
                // (only an answer that is the session cache's entry: its eviction moves the
                // version the copy is kept for)
                if let Some(versions) = versions.filter(|_| s.cached) {
                    let holds = front::Holds {
                        versions,
                        expires_at: s.expires_at,
                        recheck_at_ms: s.recheck_at_ms,
                    };
                    self.front.put(v, holds, &a);
                }
                return Authn::Ok(a);
            }
        }
        Authn::Missing
    }

    /// The versions of the caches a credential's answer is derived from (sessions, revocation
    /// epochs): an answer holds for as long as they stay the same (and the session's own times
    /// allow). `None` while no watch follows the store's epochs.
    pub(crate) fn credential_versions(&self) -> Option<front::Versions> {
        self.idp.epochs().cached_version().map(|epochs| front::Versions {
            sessions: self.sessions.version(),
            epochs,
        })
    }

    /// A request with session cookies of several values: refused, and the sessions they name
    /// ended. kfsec sets its session cookie for `Path=/` of its own host only, so a second value
    /// was set by someone else — a page of the origin (a narrower `Path`), another site of the
    /// domain (a `Domain` attribute), a nameless cookie that reads as it — and a browser sends a
    /// narrower path's first: taking any one of them could sign the user in as the planter (whose
    /// workspace then receives what the user uploads). Presenting a cookie is enough to end it
    /// (as at logout). Only values kfsec issued are looked at, at most [`MAX_SESSION_COOKIES`];
    /// a request with more is refused without a look.
    async fn several_sessions(&self, headers: &HeaderMap) -> Authn {
        let genuine = genuine_sessions(self, headers);
        let mut users = Vec::new();
        for v in genuine.as_deref().unwrap_or_default() {
            if let Some((who, _)) = self.sessions.validate(v).await {
                if let Err(e) = self.sessions.revoke(v).await {
                    tracing::warn!(error = %e, "the session of a conflicting cookie was not ended");
                }
                users.push(who.user);
            }
        }
        tracing::warn!(
            target: "audit", ended = ?users, too_many = genuine.is_none(),
            "several session cookies in one request (one set by another page or site of the domain?): refused, and the sessions they name ended"
        );
        Authn::Conflict
    }

    /// The login of the session cookie that authenticated `id` (the first of the cookies that
    /// is a live session of `id`, as `authenticate` takes the first that validates).
    pub(crate) async fn session_login(&self, headers: &HeaderMap, id: &Identity) -> Option<kfsec_idp::SessionLogin> {
        for v in self.session_cookie.values(headers) {
            if let Some((who, login)) = self.sessions.login_of(v).await
                && who == *id
            {
                return Some(login);
            }
        }
        None
    }

    /// A failure of kfsec while serving a browser: the cause is logged under a fresh incident
    /// id; the page shows a generic message and the id (503 when the store cannot be reached).
    fn failed(&self, title: &str, doing: &str, cause: &dyn std::fmt::Display) -> Response {
        let cause_text = cause.to_string();
        if kfsec_store::StoreError::text_is_unavailable(&cause_text) {
            let r = Refusal::failure(Failure::Storage, self.rng.as_ref());
            tracing::warn!(incident = %r.incident_id(), error = %cause_text, "{doing}: store unavailable");
            return responses::html_error(StatusCode::SERVICE_UNAVAILABLE, title, &r.text());
        }
        let r = Refusal::failure(Failure::Internal, self.rng.as_ref());
        tracing::error!(incident = %r.incident_id(), error = %cause, "{doing}");
        responses::html_error(StatusCode::INTERNAL_SERVER_ERROR, title, &r.text())
    }

    /// The public origin (`scheme://host[:port]`), from the issuer URL.
    fn public_origin(&self) -> &str {
        let iss = self.idp.settings().issuer.as_str();
        let after_scheme = iss.find("://").map_or(0, |i| i + 3);
        iss.get(after_scheme..)
            .and_then(|rest| rest.find('/'))
            .and_then(|i| iss.get(..after_scheme + i))
            .unwrap_or(iss)
    }

    /// Whether an unsafe request may act with the session cookie: see [`same_origin_write`].
    pub(crate) fn cookie_write_allowed(&self, method: &Method, headers: &HeaderMap) -> bool {
        same_origin_write(method, headers, self.public_origin())
    }

    /// The CSRF token of kfsec's dashboard forms for this caller: a MAC of their session cookie
    /// (so it is bound to the session and dies with it), or of their name for a bearer or
    /// certificate caller (whose browser cannot be made to send the credential).
    pub(crate) fn page_token(&self, headers: &HeaderMap, user: &str, by_session: bool) -> kfsec_idp::pages::CsrfToken {
        let bound = match self.session_cookie.values(headers).next() {
            Some(session) if by_session => format!("kfsec-pages\0session\0{session}"),
            _ => format!("kfsec-pages\0user\0{user}"),
        };
        kfsec_idp::pages::CsrfToken::new(self.csrf_mac(&bound))
    }

    fn csrf_mac(&self, payload: &str) -> String {
        B64.encode(hmac::sign(&self.keys.csrf, payload.as_bytes()).as_ref())
    }

    /// Starts a login: 302 to the IdP with state, nonce and PKCE; the original URL travels in
    /// the state and is re-checked on the way back.
    pub fn start_login(&self, original: &str) -> Response {
        let rng = self.rng.as_ref();
        let s = B64.encode(random_array::<16>(rng));
        let n = B64.encode(random_array::<16>(rng));
        let v = random_token(rng);
        let csrf = CsrfState {
            s: s.clone(),
            n: n.clone(),
            v: v.clone(),
            e: self.clock.now().as_secs() + CSRF_TTL_SECS,
        };
        let payload = B64.encode(serde_json::to_vec(&csrf).unwrap_or_default());
        let cookie_value = format!("{payload}.{}", self.csrf_mac(&payload));
        let state = format!("{s}.{}", B64.encode(safe_return_path(original)));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", GATEKEEPER_CLIENT_ID)
            .append_pair("redirect_uri", CALLBACK_PATH)
            .append_pair("response_type", "code")
            .append_pair(
                "scope",
                if self.sessions.revalidate_interval().is_some() {
                    SCOPES_OFFLINE
                } else {
                    SCOPES
                },
            )
            .append_pair("state", &state)
            .append_pair("nonce", &n)
            .append_pair("code_challenge", &sha256_b64(v.as_bytes()))
            .append_pair("code_challenge_method", "S256")
            .finish();
        let location = format!("{}/auth?{qs}", self.idp_path);
        let mut resp = responses::redirect(StatusCode::FOUND, &location);
        let c =
            format!("{CSRF_COOKIE}={cookie_value}; Path=/; Max-Age={CSRF_TTL_SECS}; HttpOnly; Secure; SameSite=Lax");
        if let Ok(h) = HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, h);
        }
        resp
    }

    fn open_csrf(&self, headers: &HeaderMap) -> Option<CsrfState> {
        let raw = cookie(headers, CSRF_COOKIE)?;
        let (payload, mac) = raw.split_once('.')?;
        let mac = B64.decode(mac).ok()?;
        hmac::verify(&self.keys.csrf, payload.as_bytes(), &mac).ok()?;
        let st: CsrfState = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        (self.clock.now().as_secs() < st.e).then_some(st)
    }

    /// `resp` with the session cookie's names set to `value` for `max_age` seconds.
    fn set_session_cookie(&self, mut resp: Response, value: &str, max_age: u64) -> Response {
        for c in self.session_cookie.set(value, max_age) {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        resp
    }

    /// `resp` with the session cookie cleared (the attributes it was set with, `Max-Age=0`).
    fn clear_session_cookie(&self, resp: Response) -> Response {
        self.set_session_cookie(resp, "", 0)
    }
}

/// The credential a tunnel was opened with ([`crate::tunnel::Credential`]), holding while it
/// still names the tunnel's user:
/// - a session cookie: the session must still stand ([`crate::session::Sessions::standing`]:
///   not ended, not expired) and its start must be after the user's revocation epoch — looked
///   at when the caches those derive from moved (a logout, a revocation, any session's start
///   or end: seen at the next tick) and at least every [`TUNNEL_RECHECK_SECS`];
/// - a bearer token: authenticated again, as the request was, every [`TUNNEL_RECHECK_SECS`]
///   (each is a signature check), a refusal confirmed by the next tick's;
/// - either: not past its own end (the session's expiry, the token's `exp`), looked at on every
///   tick (the tunnel ends within a tick of it, not at the next full check).
///
/// What the store cannot answer ends nothing: a tunnel outlives a store's hiccup (new requests
/// are refused meanwhile). It keeps the credential only — the cookie's value, the
/// `Authorization` header's bytes — not the request's other headers.
pub(crate) struct TunnelCredential {
    app: Arc<App>,
    user: String,
    held: Held,
    /// The versions at the last full check (None: never, or no watch).
    seen: Option<front::Versions>,
    /// When the last full check was (Unix s).
    checked_at: u64,
    /// Whether the last bearer check refused it (one more closes the tunnel).
    refused_once: bool,
    /// When the credential ends by itself (Unix s; `u64::MAX` until known: a session's is read
    /// at the first tick's check).
    ends_at: u64,
}

enum Held {
    Session(String),
    /// The `Authorization` header, and the path the token was accepted at (its surface).
    Bearer(HeaderMap, String),
}

/// The longest a tunnel's credential goes without a full check (s).
const TUNNEL_RECHECK_SECS: u64 = 30;

impl TunnelCredential {
    /// What `caller` opened a tunnel at `path` with, from the request's `headers`.
    pub(crate) fn new(app: &Arc<App>, headers: &HeaderMap, path: &str, caller: &Authenticated) -> Self {
        let held = if caller.kind == CredentialKind::Session {
            Held::Session(app.session_cookie.first(headers).0.unwrap_or_default().to_owned())
        } else {
            let mut kept = HeaderMap::new();
            if let Some(v) = headers.get(header::AUTHORIZATION)
                && let Ok(owned) = HeaderValue::from_bytes(v.as_bytes())
            {
                kept.insert(header::AUTHORIZATION, owned);
            }
            Held::Bearer(kept, path.to_owned())
        };
        Self {
            app: app.clone(),
            user: caller.identity.user.clone(),
            held,
            seen: None,
            checked_at: app.clock.now().as_secs(),
            refused_once: false,
            ends_at: caller.expires_at.unwrap_or(u64::MAX),
        }
    }

    /// Whether the session `cookie` still stands for the user (`None`: the store cannot say),
    /// and when it ends.
    async fn session_holds(&self, cookie: &str) -> (Option<bool>, Option<u64>) {
        let standing = match self.app.sessions.standing(cookie).await {
            Ok(Some(standing)) => standing,
            Ok(None) => return (Some(false), None),
            Err(e) => {
                tracing::debug!(error = %e, "a tunnel's session not checked: the store did not answer");
                return (None, None);
            }
        };
        let ends = Some(standing.expires_at);
        match self
            .app
            .idp
            .epochs()
            .revoked_key(&standing.user_key, standing.started_ms)
            .await
        {
            Ok(revoked) => (Some(!revoked && standing.identity.user == self.user), ends),
            Err(e) => {
                tracing::debug!(error = %e, "a tunnel's session not checked: the revocation state did not answer");
                (None, ends)
            }
        }
    }
}

impl crate::tunnel::Credential for TunnelCredential {
    fn holds(&mut self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let versions = self.app.credential_versions();
            let now = self.app.clock.now().as_secs();
            if now >= self.ends_at {
                tracing::info!(target: "audit", user = %self.user, "a tunnel's credential expired: closed");
                return false;
            }
            let due = now >= self.checked_at.saturating_add(TUNNEL_RECHECK_SECS);
            let holds = match &self.held {
                Held::Session(cookie) => {
                    if !due && versions.is_some() && versions == self.seen {
                        return true;
                    }
                    (self.seen, self.checked_at) = (versions, now);
                    let (holds, ends) = self.session_holds(cookie).await;
                    self.ends_at = ends.unwrap_or(self.ends_at);
                    holds.unwrap_or(true)
                }
                Held::Bearer(headers, path) => {
                    if !due && !self.refused_once {
                        return true;
                    }
                    self.checked_at = now;
                    let refused = match self.app.authenticate(headers, None, path).await {
                        Authn::Ok(a) => a.identity.user != self.user,
                        Authn::Unavailable => false,
                        Authn::Missing | Authn::Invalid | Authn::Conflict => true,
                    };
                    let confirmed = refused && self.refused_once;
                    self.refused_once = refused;
                    !confirmed
                }
            };
            if !holds {
                tracing::info!(target: "audit", user = %self.user, "a tunnel's credential no longer holds: closed");
            }
            holds
        })
    }
}

/// Re-checks a session's login through the gatekeeper's refresh token at the built-in IdP (which
/// re-checks the upstream connector, rotates the token and refuses revoked users).
struct IdpRefresher<'a>(&'a Idp);

impl Refresher for IdpRefresher<'_> {
    fn refresh<'a>(&'a self, refresh_token: &'a str) -> BoxFuture<'a, Refreshed> {
        Box::pin(async move {
            let client = match self.0.clients().get(GATEKEEPER_CLIENT_ID).await {
                Ok(Some(c)) => c,
                Ok(None) => return Refreshed::Unavailable("the gatekeeper client is missing".into()),
                Err(e) => return Refreshed::Unavailable(format!("reading the gatekeeper client: {e}")),
            };
            let tokens = match self.0.refresh(&client, refresh_token).await {
                Ok(t) => t,
                Err(e) => return refresh_refusal(&e),
            };
            let claims = match self
                .0
                .verify_token(&tokens.id_token, Some(GATEKEEPER_CLIENT_ID), None)
                .await
            {
                Ok(c) => c,
                Err(e) => return Refreshed::Unavailable(format!("refreshed ID token not accepted: {e}")),
            };
            let (Some(email), Some(refresh_token)) = (claims.email, tokens.refresh_token) else {
                return Refreshed::Refused("the refreshed tokens carry no email or no refresh token".into());
            };
            Refreshed::Valid {
                identity: Identity::new(email, claims.groups.unwrap_or_default()),
                refresh_token,
            }
        })
    }
}

/// What a refused refresh means for the session: `invalid_grant` (and any other refusal of the
/// request itself) ends it; a failure of the IdP or the upstream (5xx,
/// `temporarily_unavailable`) does not.
fn refresh_refusal(e: &kfsec_idp::OAuthError) -> Refreshed {
    let why = match e.cause() {
        Some(cause) => format!("{}: {} ({cause})", e.error.as_str(), e.description),
        None => format!("{}: {}", e.error.as_str(), e.description),
    };
    if e.status.is_server_error() || matches!(e.error, OAuthCode::TemporarilyUnavailable | OAuthCode::ServerError) {
        Refreshed::Unavailable(why)
    } else {
        Refreshed::Refused(why)
    }
}

/// What a new session is re-checked through: the connector of the ID token's `sub` unless it is
/// the local password database (unless `all`), with the login's refresh token.
fn federation(sub: &str, refresh_token: Option<String>, all: bool) -> Option<Federated> {
    let (_, connector) = kfsec_idp::connector::parse_subject(sub)?;
    let refresh_token = refresh_token?;
    (all || connector != kfsec_idp::connector::LOCAL).then_some(Federated {
        connector,
        refresh_token,
    })
}

/// [`return_path`], or `/`.
pub fn safe_return_path(candidate: &str) -> String {
    return_path(candidate).unwrap_or("/").to_owned()
}

#[derive(Deserialize)]
pub(crate) struct CallbackQuery {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// `GET /authservice/oidc/callback`.
pub(crate) async fn callback(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    audit: Option<axum::Extension<RequestAudit>>,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let audit = audit.map(|axum::Extension(a)| a);
    if let Some(a) = &audit {
        a.identity(ident::SESSIONS, ident::ISSUE, None);
    }
    let fail = |msg: &str| {
        if let Some(a) = &audit {
            a.annotate(OUTCOME_ANNOTATION, "failure");
            a.annotate(REASON_ANNOTATION, "invalid callback");
        }
        responses::html_error(StatusCode::BAD_REQUEST, "Login failed", msg)
    };
    if let Some(err) = q.error {
        return fail(&format!(
            "The identity provider answered: {err} {}",
            q.error_description.unwrap_or_default()
        ));
    }
    let Some((s, ret)) = q.state.split_once('.') else {
        return fail("Missing or malformed state. Start again from the page you wanted.");
    };
    let Some(csrf) = app.open_csrf(&headers) else {
        return fail("Your login session expired or cookies are disabled. Start again from the page you wanted.");
    };
    if !ct_eq(s.as_bytes(), csrf.s.as_bytes()) {
        tracing::warn!(target: "audit", "callback state does not match the CSRF cookie");
        return fail("State mismatch. Start again from the page you wanted.");
    }
    let original = B64
        .decode(ret)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map_or_else(|| "/".to_owned(), |p| safe_return_path(&p));
    let Ok(Some(client)) = app.idp.clients().get(GATEKEEPER_CLIENT_ID).await else {
        return responses::html_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Login failed",
            "The gatekeeper client is missing.",
        );
    };
    let tokens = match app
        .idp
        .redeem_code(&client, &q.code, CALLBACK_PATH, Some(&csrf.v))
        .await
    {
        Ok(t) => t,
        Err(e) => {
            // A failure of the IdP (not a bad code): 500 with an incident id, like the IdP's own.
            if let Some(cause) = e.cause() {
                return app.failed(
                    "Login failed",
                    "identity provider failure during the code exchange",
                    &cause,
                );
            }
            tracing::warn!(target: "audit", error = %e.error, detail = %e.description, "code exchange failed");
            return fail("The login could not be completed (invalid or reused code). Start again.");
        }
    };
    let claims = match app
        .idp
        .verify_token(&tokens.id_token, Some(GATEKEEPER_CLIENT_ID), Some(&csrf.n))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(target: "audit", error = %e, "ID token refused at callback");
            return fail("The identity token was not valid.");
        }
    };
    let Some(email) = claims.email else {
        return fail("The identity token carries no email.");
    };
    let identity = Identity::new(email, claims.groups.unwrap_or_default());
    // The session starts when the password was checked (the ID token's `kfsec_iat_ms`), not
    // now: a revocation between that check and this line voids it.
    let started_ms = claims.iat_ms.unwrap_or_else(|| claims.iat.saturating_mul(1000));
    let federated = federation(
        &claims.sub,
        tokens.refresh_token.clone(),
        app.settings.revalidate_all_sessions,
    );
    if let (None, Some(unused)) = (&federated, &tokens.refresh_token) {
        // A session that is never re-checked keeps no refresh token: drop it now rather than
        // leave a record for its idle lifetime.
        if let Err(e) = app.idp.revoke_refresh(unused).await {
            tracing::warn!(error = %e, "could not drop the unused refresh token of a local session");
        }
    }
    let value = match app
        .sessions
        .create_login(&identity, started_ms, &claims.sub, federated)
        .await
    {
        Ok(v) => v,
        Err(e) => {
            return app.failed("Login failed", "could not create a session", &e);
        }
    };
    tracing::info!(target: "audit", user = %identity.user, "session started");
    if let Some(a) = &audit {
        a.annotate(OUTCOME_ANNOTATION, "success");
        a.object_name(&identity.user);
        a.set_user((&identity).into());
    }
    let mut resp = app.set_session_cookie(
        responses::redirect(StatusCode::FOUND, &original),
        &value,
        app.sessions.ttl().as_secs(),
    );
    if let Ok(c) = HeaderValue::from_str(&format!(
        "{CSRF_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax"
    )) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// Ends the sessions a logout request presents: its session cookie and a session given as
/// `Authorization: Bearer <session>` (how oidc-authservice's clients log out). The one logout
/// rule of both prefixes: a logout carried by the cookie must come from kfsec's own origin,
/// whatever the method ([`same_origin_write`] applied as to a POST — a GET to
/// `/oauth2/sign_out` is a write here), so a third-party page cannot end the user's session
/// (403); a bearer is never sent by a browser on its own and needs no such check. Whatever else
/// is in `Authorization` (an ID token, a service-account token, a forged or expired session)
/// names no session: nothing ends and the answer is the same as after a logout (as RFC 7009 for
/// unknown tokens), with no detail. Stateless ID tokens stay valid until they expire ("log out
/// everywhere" voids them).
async fn end_sessions(app: &App, headers: &HeaderMap, audit: Option<&RequestAudit>) -> Result<(), Response> {
    if let Some(a) = audit {
        a.identity(ident::SESSIONS, ident::LOGOUT, None);
    }
    if app.session_cookie.values(headers).next().is_some() && !app.cookie_write_allowed(&Method::POST, headers) {
        tracing::warn!(target: "audit", "cross-site logout refused");
        return Err(responses::html_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Cross-site request refused.",
        ));
    }
    let bearer = bearer_token(headers);
    // (each distinct value kfsec issued once, and not too many: each is a store read and write;
    // a logout that cannot end every session presented says so rather than seem to succeed)
    let Some(values) = genuine_sessions(app, headers) else {
        tracing::warn!(target: "audit", "logout refused: too many session cookies");
        return Err(responses::html_error(
            StatusCode::BAD_REQUEST,
            "Logout failed",
            SEVERAL_SESSIONS,
        ));
    };
    let presented = values
        .into_iter()
        .map(|v| (v, "cookie"))
        .chain(bearer.map(|v| (v, "bearer")));
    for (value, via) in presented {
        let user = app.sessions.validate(value).await.map(|(id, _)| id.user);
        if let Err(e) = app.sessions.revoke(value).await {
            return Err(app.failed("Logout failed", "logout failed", &e));
        }
        match user {
            Some(u) => {
                if let Some(a) = audit {
                    a.object_name(&u);
                    a.set_user(kfsec_types::identity::UserInfo::authenticated(u.as_str(), &[]));
                }
                tracing::info!(target: "audit", user = %u, via, "session ended by logout")
            }
            None => tracing::info!(target: "audit", via, "logout named no live session; nothing ended"),
        }
    }
    Ok(())
}

/// `POST /authservice/logout`: ends the session server-side ([`end_sessions`]) and clears the
/// cookie.
pub(crate) async fn logout(
    State(app): State<Arc<App>>,
    audit: Option<axum::Extension<RequestAudit>>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = end_sessions(&app, &headers, audit.as_ref().map(|axum::Extension(a)| a)).await {
        return refused;
    }
    logged_out(&app, &headers)
}

/// The answer to a logout at `/authservice/*`: oidc-authservice's `201 {"afterLogoutURL"}` for
/// the dashboard's XHR (the logged-out page, which a browser following it shows without starting
/// a login) and for callers that logged out with a bearer session (`/`, as before: such a caller
/// is no browser, and the answer must not tell whether the bearer named a session), else
/// [`after_logout`]; clears the cookie.
fn logged_out(app: &App, headers: &HeaderMap) -> Response {
    let bearer = bearer_token(headers).is_some();
    let wants_json = bearer
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/json"));
    let resp = if wants_json {
        // Kubeflow's dashboard logs out with XHR and follows `afterLogoutURL`.
        let after = if bearer { "/" } else { LOGGED_OUT_AUTHSERVICE };
        (
            StatusCode::CREATED,
            axum::Json(serde_json::json!({ "afterLogoutURL": after })),
        )
            .into_response()
    } else {
        after_logout(LOGGED_OUT_AUTHSERVICE)
    };
    app.clear_session_cookie(resp)
}

/// Where a logout that names no (acceptable) return path sends the caller: 302 to the logged-out
/// `page` — oauth2-proxy answers 302 to `/` there, but kfsec's `/` would start a new login at
/// once, and the user would never see that they are logged out.
fn after_logout(page: &str) -> Response {
    responses::redirect(StatusCode::FOUND, page)
}

/// `GET /oauth2/logged_out` and `/authservice/logged_out`: "You are logged out" with a link to
/// log in again. Served to anyone (no session needed, so it never starts a login); it reads
/// nothing from the request.
pub(crate) async fn logged_out_page(State(app): State<Arc<App>>) -> Response {
    kfsec_idp::pages::logged_out_page(&app.idp.settings().branding)
}

/// The first `rd` parameter of a query (oauth2-proxy reads the first too), decoded.
fn rd_param(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "rd")
        .map(|(_, v)| v.into_owned())
}

/// `GET /oauth2/start?rd=<path>` (and `/oauth2/sign_in`, which kfsec has no separate page
/// for): starts a login that lands on `rd` afterwards — if [`return_path`] accepts it, else `/`.
pub(crate) async fn oauth2_start(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Response {
    app.start_login(rd_param(query.as_deref()).as_deref().unwrap_or("/"))
}

/// `GET`/`POST /oauth2/sign_out?rd=<path>`: ends the session as `/authservice/logout` does
/// ([`end_sessions`]), clears the cookie and redirects (302, for every client, as oauth2-proxy)
/// to `rd` if [`return_path`] accepts it, else to the logged-out page ([`after_logout`]).
/// `HEAD` is 405: a probe must not end a session.
pub(crate) async fn sign_out(
    State(app): State<Arc<App>>,
    method: Method,
    audit: Option<axum::Extension<RequestAudit>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if method == Method::HEAD {
        let mut resp = StatusCode::METHOD_NOT_ALLOWED.into_response();
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
        return resp;
    }
    if let Err(refused) = end_sessions(&app, &headers, audit.as_ref().map(|axum::Extension(a)| a)).await {
        return refused;
    }
    let rd = rd_param(query.as_deref());
    let resp = match rd.as_deref().and_then(return_path) {
        Some(to) => responses::redirect(StatusCode::FOUND, to),
        None => after_logout(LOGGED_OUT_OAUTH2),
    };
    app.clear_session_cookie(resp)
}

/// `POST /authservice/logout-all` ("Log out everywhere"): ends every session of the caller
/// and voids their ID tokens, codes and refresh tokens. Needs the caller's session (or ID
/// token); a cookie-authenticated request must pass the same-origin rule.
pub(crate) async fn logout_all(State(app): State<Arc<App>>, req: Request<Body>) -> Response {
    let path = req.uri().path().to_owned();
    let who = match app.authenticate(req.headers(), None, &path).await {
        Authn::Ok(a) if matches!(a.kind, CredentialKind::Session | CredentialKind::IdToken) => a,
        Authn::Ok(_) => {
            return responses::html_error(
                StatusCode::BAD_REQUEST,
                "Not possible",
                "Only a user's own session or ID token can end all of the user's sessions.",
            );
        }
        _ => return responses::html_error(StatusCode::UNAUTHORIZED, "Not signed in", "You are not signed in."),
    };
    if who.kind == CredentialKind::Session && !app.cookie_write_allowed(req.method(), req.headers()) {
        tracing::warn!(target: "audit", user = %who.identity.user, "cross-site logout-all refused");
        return responses::html_error(StatusCode::FORBIDDEN, "Forbidden", "Cross-site request refused.");
    }
    if let Some(a) = RequestAudit::from_extensions(req.extensions()) {
        a.identity(ident::TOKENS, ident::REVOKE, Some(&who.identity.user));
        a.set_user((&who.identity).into());
        a.annotate(kfsec_audit::request::REASON_ANNOTATION, "logout everywhere");
    }
    let user = who.identity.user.clone();
    if let Err(e) = app.idp.revoke_user(&user).await {
        return app.failed("Logout failed", "revocation failed", &e);
    }
    match app.sessions.revoke_user(&user).await {
        Ok(n) => tracing::info!(target: "audit", user = %user, sessions = n, "logged out everywhere"),
        Err(e) => {
            return app.failed("Logout failed", "ending sessions failed", &e);
        }
    }
    logged_out(&app, req.headers())
}

/// `/authservice/check` for nginx `auth_request` and Envoy `ext_authz` (HTTP): 200 with the
/// identity headers, or 401.
pub(crate) async fn check(State(app): State<Arc<App>>, req: Request<Body>) -> Response {
    // `/authservice/check/<path>` asks about `<path>`: the same surface (and so the same
    // service-account audiences) as a request to `<path>` itself.
    let asked = req
        .uri()
        .path()
        .strip_prefix("/authservice/check")
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    match app.authenticate(req.headers(), req.extensions().get(), asked).await {
        Authn::Ok(a) => {
            if let Some(audit) = req.extensions().get::<RequestAudit>() {
                crate::audit::set_user(Some(audit), &a.identity);
                audit.decision(true, "authenticated");
            }
            app.decided("gatekeeper", true);
            let mut resp = StatusCode::OK.into_response();
            app.set_identity_headers(resp.headers_mut(), &a);
            set_auth_request_headers(resp.headers_mut(), &a.identity);
            resp
        }
        Authn::Unavailable => app.mounts.error(req.uri().path(), RefusalKind::Unavailable, STORE_DOWN),
        // (403, not 401: an ingress that sends a 401 to the login would loop, the planted cookie
        // still beside the fresh one)
        Authn::Conflict => {
            if let Some(audit) = req.extensions().get::<RequestAudit>() {
                audit.decision(false, "several session cookies");
            }
            app.decided("gatekeeper", false);
            app.mounts
                .error(req.uri().path(), RefusalKind::Forbidden, SEVERAL_SESSIONS)
        }
        _ => {
            if let Some(audit) = req.extensions().get::<RequestAudit>() {
                audit.decision(false, "not authenticated");
            }
            app.decided("gatekeeper", false);
            app.mounts.unauthenticated(req.uri().path())
        }
    }
}

/// The user's email, when the Kubeflow user id is one (service accounts have none).
fn email_of(id: &Identity) -> Option<&str> {
    id.user.contains('@').then_some(id.user.as_str())
}

/// oauth2-proxy's `--set-xauthrequest` answer headers, which nginx `auth_request` setups read
/// (`$upstream_http_x_auth_request_user`…): the user id, the email (people only) and the groups
/// comma-separated, as oauth2-proxy joins them (`headers::groups_list`). Sent as UTF-8 bytes
/// like the identity headers.
fn set_auth_request_headers(h: &mut HeaderMap, id: &Identity) {
    let groups = crate::headers::groups_list(&id.groups);
    let values = [
        ("x-auth-request-user", Some(id.user.as_str())),
        ("x-auth-request-email", email_of(id)),
        ("x-auth-request-groups", (!groups.is_empty()).then_some(groups.as_str())),
    ];
    for (name, value) in values {
        if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
            h.insert(name, v);
        }
    }
}

/// oauth2-proxy's `/oauth2/userinfo` body (`user` and `email` always, `groups` when there are
/// any; kfsec keeps no `preferredUsername` in a session, which oauth2-proxy then omits too).
#[derive(Serialize)]
struct UserInfo<'a> {
    user: &'a str,
    email: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    groups: &'a [String],
}

/// `GET /oauth2/userinfo`: the caller's identity as oauth2-proxy's JSON, or 401.
pub(crate) async fn userinfo(State(app): State<Arc<App>>, req: Request<Body>) -> Response {
    match app.authenticate(req.headers(), req.extensions().get(), "/").await {
        Authn::Ok(a) => {
            let id = &a.identity;
            let body = UserInfo {
                user: &id.user,
                email: email_of(id).unwrap_or_default(),
                groups: &id.groups,
            };
            let mut resp = axum::Json(body).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Authn::Conflict => app
            .mounts
            .error(req.uri().path(), RefusalKind::Forbidden, SEVERAL_SESSIONS),
        _ => app.mounts.unauthenticated(req.uri().path()),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use kfsec_idp::{OAuthCode, OAuthError, dex_subject};

    use super::*;

    #[test]
    fn unsafe_return_paths_become_home() {
        for bad in ["//evil.example", "/\\evil", "https://evil.example/", "/%2F%2Fevil"] {
            assert_eq!(safe_return_path(bad), "/", "{bad:?}");
        }
        assert_eq!(safe_return_path("/app/x?ns=a"), "/app/x?ns=a");
    }

    #[test]
    fn only_invalid_grant_and_other_refusals_end_a_session() {
        let ends = |e: OAuthError| matches!(refresh_refusal(&e), Refreshed::Refused(_));
        assert!(ends(OAuthError::invalid_grant("The user no longer exists.")));
        assert!(ends(OAuthError::invalid_client()));
        assert!(!ends(OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            OAuthCode::TemporarilyUnavailable,
            "The identity provider did not answer in time."
        )));
        assert!(!ends(OAuthError::new(
            StatusCode::BAD_GATEWAY,
            OAuthCode::ServerError,
            "x"
        )));
        assert!(!ends(OAuthError::bad(OAuthCode::TemporarilyUnavailable, "x")));
    }

    #[test]
    fn sessions_of_connector_logins_are_federated_local_ones_only_when_asked() {
        let token = || Some("rt".to_owned());
        let entra = dex_subject("7f0c", "entra");
        let f = federation(&entra, token(), false).unwrap();
        assert_eq!((f.connector.as_str(), f.refresh_token.as_str()), ("entra", "rt"));
        let local = dex_subject("15841185641784", "local");
        assert!(federation(&local, token(), false).is_none());
        assert_eq!(federation(&local, token(), true).unwrap().connector, "local");
        // No refresh token (offline access not granted) or a sub that is not Dex's: nothing to
        // re-check with.
        assert!(federation(&entra, None, false).is_none());
        assert!(federation("not-a-dex-sub!", token(), true).is_none());
    }
}
