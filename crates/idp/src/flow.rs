//! The IdP's HTTP endpoints (Dex's paths, relative to the issuer path): discovery, keys,
//! authorize, the local password connector, approval, token, userinfo and health.
//!
//! Invariants: an unknown client or unregistered redirect URI gets an error page and is never
//! redirected to; the device callback is no client's redirect URI (only a device login started
//! at `/device/auth/verify_code` ends there) and a device login always shows the confirmation
//! screen naming its user code, whatever `skipApprovalScreen` says; a failed login issues no
//! code and is counted by the lockout; `/token` answers only OAuth2 JSON.
//!
//! Pre-login state is stateless and small: `/auth/local` validates the request (with tight
//! length caps: `state` ≤ `loginProtection.maxStateLength` (512) bytes, 4,096 for the in-process
//! gatekeeper whose state carries the return path; `nonce` ≤ 256; `code_challenge` 43–128;
//! `client_id` ≤ 256; `redirect_uri` ≤ 2,048) and hands the login form a signed, expiring copy
//! of it (HMAC-SHA256 under a key kept in the store) as the form's `state`, as Dex's
//! `/auth/local/login?back=&state=<id>`. Nothing is stored before a user has proved a password;
//! the approval screen's record is written only after a successful login.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use serde::{Deserialize, Serialize};

use crate::connector::{Connector, ConnectorKind, LOCAL, Scopes, UpstreamIdentity};
use crate::device::DeviceLogin;
use crate::error::{OAuthForm, PageError, PageForm};
use crate::lockout::Gate;
use crate::secret::{ct_eq, random_token};
use crate::tokens::{Claims, CodeRecord, Grant};
use crate::{ClientAddr, ClientAuth, Idp, IdpError, OAuthCode, OAuthError, pages};
use aws_lc_rs::hmac;
use kfsec_audit::RequestAudit;
use kfsec_store::{Store, StoreError};
use kfsec_types::{Rng, random_array};

pub(crate) const AUTHREQ_PREFIX: &str = "/kfsec/idp/authreqs/";
pub(crate) const AUTHREQ_KEY: &str = "/kfsec/idp/authreq-key";
type Params = Query<HashMap<String, String>>;

/// Longest `state` of the in-process gatekeeper (it carries the return path, ≤ 2,048 bytes).
const MAX_INPROCESS_STATE: usize = 4096;
const MAX_NONCE: usize = 256;
const MAX_CLIENT_ID: usize = 256;
const MAX_REDIRECT_URI: usize = 2048;
/// Longest signed request accepted back from the login form.
const MAX_SIGNED_REQUEST: usize = 16 * 1024;
/// The scopes kfsec knows (Dex's, without cross-client audiences).
const SCOPES: [&str; 6] = ["openid", "email", "groups", "profile", "offline_access", "federated:id"];
/// The parameters `/auth` passes on to the connector (nothing else is reflected).
const AUTH_PARAMS: [&str; 8] = [
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
];

/// The key that signs pending authorization requests, created once and kept in the store so
/// pending logins survive a restart.
pub(crate) struct AuthRequestKey(hmac::Key);

impl AuthRequestKey {
    /// Loads the key, creating it on first start.
    pub(crate) async fn load(store: &dyn Store, rng: &dyn Rng) -> Result<Self, IdpError> {
        let raw = match store.get(AUTHREQ_KEY).await? {
            Some(kv) => kv.value,
            None => {
                let fresh = random_array::<32>(rng).to_vec();
                match store.create(AUTHREQ_KEY, fresh.clone(), None).await {
                    Ok(_) => fresh,
                    Err(StoreError::AlreadyExists(_)) => store
                        .get(AUTHREQ_KEY)
                        .await?
                        .map(|kv| kv.value)
                        .ok_or_else(|| IdpError::Internal("authorization request key vanished".into()))?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if raw.len() != 32 {
            return Err(IdpError::Internal("malformed authorization request key".into()));
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, &raw)))
    }

    /// A 256-bit key for `purpose`, derived from this one (HMAC-SHA256 of the label), so one
    /// stored secret serves unrelated uses without one's output opening the other's.
    pub(crate) fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&self.0, format!("derive\0{purpose}").as_bytes()).as_ref());
        out
    }
}

/// A pending authorization request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AuthRequest {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) nonce: Option<String>,
    #[serde(default)]
    pub(crate) code_challenge: Option<String>,
    #[serde(default)]
    pub(crate) code_challenge_method: Option<String>,
    /// Set after login when the approval screen is shown.
    #[serde(default)]
    pub(crate) logged_in: Option<String>,
    /// With `logged_in`: when that login's password check began (Unix ms), what revocation is
    /// held against (not when the approval is given).
    #[serde(default)]
    pub(crate) auth_ms: u64,
    /// Expiry of a signed request (Unix seconds).
    #[serde(default)]
    pub(crate) exp: u64,
    /// The connector this request logs in with (empty until one is chosen).
    #[serde(default)]
    pub(crate) connector_id: String,
    /// With `logged_in`, for a federated login awaiting approval: the upstream's identity
    /// (with its connector data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) identity: Option<UpstreamIdentity>,
    /// For a device login (started only at `/device/auth/verify_code`, the one request whose
    /// `redirect_uri` may be the device callback): its user code and the browser it is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) device: Option<DeviceLogin>,
}

impl AuthRequest {
    /// A fresh request of `client_id`, before any login.
    pub(crate) fn new(client_id: String, redirect_uri: String, scopes: Vec<String>, state: String) -> Self {
        Self {
            client_id,
            redirect_uri,
            scopes,
            state,
            nonce: None,
            code_challenge: None,
            code_challenge_method: None,
            logged_in: None,
            auth_ms: 0,
            exp: 0,
            connector_id: String::new(),
            identity: None,
            device: None,
        }
    }
}

/// A callback login kept in the browser that started it (a signed cookie), never in the URL:
/// the random value sent upstream as `state` (so only this browser can finish the login), the
/// connector's pending data (PKCE verifier, nonce) and the authorization request itself (so the
/// upstream's `state` stays short: some providers cap it, and it reveals nothing).
#[derive(Debug, Serialize, Deserialize)]
struct PendingLogin {
    b: String,
    p: serde_json::Value,
    exp: u64,
    req: AuthRequest,
}

/// Failed upstream callbacks one client address may make per [`CALLBACK_WINDOW`]: a person
/// fails a few; a replaying client would otherwise spend the upstream's rate limit (kfsec's
/// client credentials, shared by every user) one token request at a time.
pub(crate) const CALLBACKS_PER_ADDRESS: u32 = 30;
/// The window of [`CALLBACKS_PER_ADDRESS`].
pub(crate) const CALLBACK_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// The longest cookie a browser is sure to keep (RFC 6265 §6.1 asks for at least 4,096 bytes
/// of name, value and attributes).
const MAX_PENDING_COOKIE: usize = 3800;
/// The most login-state cookies of one name a callback looks at (kfsec sets one per browser,
/// each login replacing the last; more were planted beside it).
pub(crate) const MAX_PENDING_LOOKS: usize = 8;

/// What signed values are for: a value signed for one purpose never opens as another.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    /// A pending authorization request (the login form's and the upstream's `state`).
    Request,
    /// A callback login's browser-bound secrets (a cookie).
    Pending,
    /// A device login's binding to its browser (the device callback's `state`).
    Device,
}

impl Purpose {
    fn tag(self) -> &'static [u8] {
        match self {
            Self::Request => b"authreq\0",
            Self::Pending => b"pending\0",
            Self::Device => b"device\0",
        }
    }
}

impl Idp {
    /// The router, to be nested under [`crate::IdpSettings::issuer_path`].
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/keys", get(keys))
            .route("/auth", get(authorize))
            .route("/auth/{connector}", get(authorize_connector))
            .route("/auth/{connector}/login", get(login_page).post(login_submit))
            .route("/callback", get(callback))
            .route("/callback/{connector}", get(callback_connector))
            .route("/approval", get(approval_page).post(approval_submit))
            .route("/token", axum::routing::post(token))
            .route("/userinfo", get(userinfo).post(userinfo))
            .route("/healthz", get(|| async { "Health check passed" }))
            .route(pages::LOGIN_SCRIPT, get(|| async { pages::login_script() }))
            .route("/device/code", axum::routing::post(crate::device::device_code))
            .route("/device", get(crate::device::device_page))
            .route(
                "/device/auth/verify_code",
                axum::routing::post(crate::device::verify_code),
            )
            .route("/device/callback", get(crate::device::device_callback))
            .layer(DefaultBodyLimit::max(64 * 1024))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                crate::error::incidents,
            ))
            .with_state(self.clone())
    }

    /// The password form of `connector` for the signed request `token`.
    pub(crate) fn login_url(&self, connector: &str, token: &str) -> String {
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        format!(
            "{}/auth/{}/login?state={}",
            self.settings.issuer_path(),
            enc(connector),
            enc(token)
        )
    }

    /// The chooser for the signed request `token` (where "Select another login method" goes).
    fn chooser_url(&self, token: &str) -> String {
        let enc = url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>();
        format!("{}/auth?req={enc}", self.settings.issuer_path())
    }

    /// HMAC-signs `value` for `purpose` (payload `.` MAC, both base64url).
    fn seal<T: Serialize>(&self, purpose: Purpose, value: &T) -> Result<String, IdpError> {
        let payload = B64.encode(serde_json::to_vec(value)?);
        let mut ctx = hmac::Context::with_key(&self.auth_key.0);
        ctx.update(purpose.tag());
        ctx.update(payload.as_bytes());
        Ok(format!("{payload}.{}", B64.encode(ctx.sign().as_ref())))
    }

    /// Opens a value sealed for `purpose`: `None` if forged, malformed or for another purpose.
    fn unseal<T: serde::de::DeserializeOwned>(&self, purpose: Purpose, token: &str) -> Option<T> {
        if token.len() > MAX_SIGNED_REQUEST {
            return None;
        }
        let (payload, mac) = token.split_once('.')?;
        let mac = B64.decode(mac).ok()?;
        let mut signed = Vec::with_capacity(purpose.tag().len() + payload.len());
        signed.extend_from_slice(purpose.tag());
        signed.extend_from_slice(payload.as_bytes());
        hmac::verify(&self.auth_key.0, &signed, &mac).ok()?;
        serde_json::from_slice(&B64.decode(payload).ok()?).ok()
    }

    /// Signs a pending authorization request: the login form's `state`.
    /// A request keeps the expiry it got when first signed: passing it through the chooser
    /// again does not make it live longer.
    pub(crate) fn sign_auth_request(&self, req: &mut AuthRequest) -> Result<String, IdpError> {
        if req.exp == 0 {
            req.exp = self.clock.now().add(self.settings.auth_request_ttl).as_secs();
        }
        self.seal(Purpose::Request, req)
    }

    /// The PKCE verifier that binds a device login's code to its user code and to the browser
    /// that entered it: only the callback for that user code, in that browser, can redeem it.
    pub(crate) fn device_verifier(&self, login: &DeviceLogin) -> String {
        let DeviceLogin { user_code, browser } = login;
        B64.encode(
            hmac::sign(
                &self.auth_key.0,
                format!("device-pkce\0{user_code}\0{browser}").as_bytes(),
            )
            .as_ref(),
        )
    }

    /// A device login's binding, sealed: the device callback's `state`.
    pub(crate) fn seal_device_login(&self, login: &DeviceLogin) -> Result<String, IdpError> {
        self.seal(Purpose::Device, login)
    }

    /// Opens a device callback's `state`: `None` if forged or malformed.
    pub(crate) fn open_device_login(&self, state: &str) -> Option<DeviceLogin> {
        self.unseal(Purpose::Device, state)
    }

    /// Where a device login's browser leg ends: `{issuer path}/device/callback`.
    pub(crate) fn device_callback_path(&self) -> String {
        format!("{}/device/callback", self.settings.issuer_path())
    }

    /// Whether `uri` (absolute or relative to the issuer) names the device callback: never a
    /// client's redirect URI, whatever its registrations say.
    fn is_device_callback(&self, uri: &str) -> bool {
        let want = self.device_callback_path();
        let Ok(issuer) = url::Url::parse(&self.settings.issuer) else {
            return uri == want;
        };
        issuer
            .join(uri)
            .is_ok_and(|u| u.origin() == issuer.origin() && u.path().trim_end_matches('/').eq_ignore_ascii_case(&want))
    }

    /// Opens a signed request: `None` if forged, malformed or expired.
    fn open_auth_request(&self, token: &str) -> Option<AuthRequest> {
        let req: AuthRequest = self.unseal(Purpose::Request, token)?;
        (req.exp > self.clock.now().as_secs() && req.logged_in.is_none()).then_some(req)
    }

    fn connector(&self, id: &str) -> Option<&Connector> {
        self.settings.connectors.iter().find(|c| c.id == id)
    }

    /// Where a validated request goes next: straight to the only connector, or the chooser.
    pub(crate) async fn choose(&self, mut req: AuthRequest) -> Result<Response, PageError> {
        req.connector_id.clear();
        let connectors = &self.settings.connectors;
        if let [only] = connectors.as_slice()
            && !self.settings.always_show_login_screen
        {
            return self.start(req, only).await;
        }
        let token = self.sign_auth_request(&mut req)?;
        let enc = url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>();
        let choices: Vec<pages::Choice> = connectors
            .iter()
            .map(|c| pages::Choice {
                id: c.id.clone(),
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                href: format!("{}/auth/{}?req={enc}", self.settings.issuer_path(), c.id),
            })
            .collect();
        Ok(pages::chooser(
            &self.settings.branding,
            &self.settings.issuer_path(),
            &choices,
        ))
    }

    /// Starts the login of `req` at `connector`: its password form, or the upstream.
    async fn start(&self, mut req: AuthRequest, connector: &Connector) -> Result<Response, PageError> {
        req.connector_id.clone_from(&connector.id);
        let upstream = match &connector.kind {
            ConnectorKind::Local | ConnectorKind::Password(_) => {
                let token = self.sign_auth_request(&mut req)?;
                return Ok(Redirect::to(&self.login_url(&connector.id, &token)).into_response());
            }
            ConnectorKind::Callback(c) => c,
        };
        let back = self.back_link(&req)?;
        let binding = random_token(self.rng.as_ref());
        let scopes = Scopes::from_list(&req.scopes);
        let redirect = upstream
            .login_url(scopes, &self.callback_url(), &binding, self.rng.as_ref())
            .await
            .map_err(|e| PageError::connector(&connector.id, &e, back))?;
        if req.exp == 0 {
            req.exp = self.clock.now().add(self.settings.auth_request_ttl).as_secs();
        }
        let pending = PendingLogin {
            b: binding.clone(),
            p: redirect.pending,
            exp: req.exp,
            req,
        };
        let sealed = self.seal(Purpose::Pending, &pending)?;
        if sealed.len() > MAX_PENDING_COOKIE {
            return Err(PageError::bad(
                "This login request is too large (its state or return address is too long).",
            ));
        }
        let cookie =
            crate::cookies::login_state_cookie(PENDING_COOKIE, &sealed, self.settings.auth_request_ttl.as_secs());
        let mut resp = Redirect::to(&redirect.url).into_response();
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        Ok(resp)
    }

    /// The chooser link a failed login offers, when there is a choice.
    fn back_link(&self, req: &AuthRequest) -> Result<Option<String>, IdpError> {
        if self.settings.connectors.len() < 2 {
            return Ok(None);
        }
        let mut fresh = AuthRequest {
            connector_id: String::new(),
            ..req.clone()
        };
        Ok(Some(self.chooser_url(&self.sign_auth_request(&mut fresh)?)))
    }

    /// Refuses a form post that did not come from kfsec's own pages (login CSRF; a device code
    /// posted for a victim).
    pub(crate) fn same_origin(&self, headers: &HeaderMap) -> Result<(), PageError> {
        let origin = url::Url::parse(&self.settings.issuer)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        if crate::cookies::same_origin_write(&http::Method::POST, headers, &origin) {
            Ok(())
        } else {
            tracing::warn!(target: "audit", "cross-site form post refused");
            Err(PageError {
                status: StatusCode::FORBIDDEN,
                message: "This form was sent from another site; kfsec accepts its forms only from its own pages."
                    .into(),
                cause: None,
                back: None,
            })
        }
    }

    /// The upstream's return address: `<issuer>/callback` (Dex's).
    pub fn callback_url(&self) -> String {
        format!("{}/callback", self.settings.issuer)
    }
}

/// The cookie that holds the pending callback login. One per browser: a login started later
/// replaces an earlier one (whose callback then asks the user to start again), so no page can
/// pile pending logins up until the browser's cookie or header limits lock the user out.
const PENDING_COOKIE: &str = crate::cookies::PENDING_LOGIN;

/// The grant types `/token` serves, sorted as Dex lists them: the password grant only when
/// `oauth2.passwordConnector` names a connector. Dex also lists the token-exchange grant; kfsec
/// does not serve it, so it is not listed.
fn grant_types(idp: &Idp) -> Vec<&'static str> {
    let mut grants = vec!["authorization_code", "refresh_token", crate::device::GRANT_TYPE];
    if idp.settings.password_connector.is_some() {
        grants.push("password");
    }
    grants.sort_unstable();
    grants
}

/// The discovery document: Dex's keys and values (Dex v2.45 `server/handlers.go`), listing only
/// endpoints kfsec serves. Dex's `introspection_endpoint` is left out: kfsec does not serve
/// token introspection (`/token/introspect`). `federated:id` is listed in `scopes_supported`
/// because kfsec honours it (Dex honours it too but does not list it).
async fn discovery(State(idp): State<Arc<Idp>>) -> Response {
    let iss = &idp.settings.issuer;
    let mut resp = Json(serde_json::json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/auth"),
        "token_endpoint": format!("{iss}/token"),
        "jwks_uri": format!("{iss}/keys"),
        "userinfo_endpoint": format!("{iss}/userinfo"),
        "device_authorization_endpoint": format!("{iss}/device/code"),
        "grant_types_supported": grant_types(&idp),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["S256", "plain"],
        "scopes_supported": SCOPES,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "claims_supported": ["iss", "sub", "aud", "iat", "exp", "email", "email_verified", "locale", "name", "preferred_username", "at_hash"],
    }))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    resp
}

async fn keys(State(idp): State<Arc<Idp>>) -> Response {
    let set = idp.keys.keys();
    let jwks: Vec<_> = set.verifying().map(|k| k.to_jwk()).collect();
    let mut resp = Json(serde_json::json!({ "keys": jwks })).into_response();
    let max_age = idp.keys.seconds_to_rotation().clamp(60, 3600);
    if let Ok(v) = HeaderValue::from_str(&format!("max-age={max_age}, must-revalidate")) {
        resp.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    resp
}

/// Validates `/auth` parameters. Errors before the redirect URI is known to be registered are
/// shown as a page; later ones are sent back to the client.
async fn parse_auth(idp: &Idp, q: &HashMap<String, String>) -> Result<Result<AuthRequest, Response>, PageError> {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    let client_id = get("client_id");
    if client_id.len() > MAX_CLIENT_ID {
        return Err(PageError::bad("Invalid client_id (too long)."));
    }
    let redirect_uri = get("redirect_uri");
    if redirect_uri.len() > MAX_REDIRECT_URI {
        return Err(PageError::bad("Unregistered redirect_uri (too long)."));
    }
    let Some(client) = idp.clients.get(client_id).await? else {
        return Err(PageError::bad(format!("Invalid client_id ({client_id:?}).")));
    };
    // The device callback finishes only device logins started at `/device/auth/verify_code`
    // (bound to the browser that entered the user code); a request from outside naming it
    // would complete someone's device login in whichever browser follows the link.
    if idp.is_device_callback(redirect_uri) || !client.redirect_allowed(redirect_uri) {
        return Err(PageError::bad(format!("Unregistered redirect_uri ({redirect_uri:?}).")));
    }
    let max_state = if client.auth == ClientAuth::InProcess {
        MAX_INPROCESS_STATE
    } else {
        idp.lockout.policy().max_state_length
    };
    let state_ok = get("state").len() <= max_state;
    // An oversized state is not echoed back.
    let state = if state_ok {
        get("state").to_owned()
    } else {
        String::new()
    };
    let back = |error: OAuthCode, desc: &str| {
        let mut params = vec![("error", error.as_str()), ("error_description", desc)];
        if !state.is_empty() {
            params.push(("state", &state));
        }
        Redirect::to(&crate::tokens::append_query(redirect_uri, &params)).into_response()
    };
    if !state_ok {
        return Ok(Err(back(
            OAuthCode::InvalidRequest,
            &format!("state is longer than {max_state} bytes"),
        )));
    }
    if get("nonce").len() > MAX_NONCE {
        return Ok(Err(back(
            OAuthCode::InvalidRequest,
            &format!("nonce is longer than {MAX_NONCE} bytes"),
        )));
    }
    if get("response_type") != "code" {
        return Ok(Err(back(
            OAuthCode::UnsupportedResponseType,
            "Only the code response type is supported.",
        )));
    }
    let scopes = match requested_scopes(get("scope")) {
        Ok(s) => s,
        Err(e) => return Ok(Err(back(e.error, &e.description))),
    };
    let challenge = q.get("code_challenge").filter(|c| !c.is_empty()).cloned();
    let method = match (challenge.is_some(), get("code_challenge_method")) {
        (false, _) => None,
        (true, "" | "plain") => Some("plain".to_owned()),
        (true, "S256") => Some("S256".to_owned()),
        (true, _) => {
            return Ok(Err(back(
                OAuthCode::InvalidRequest,
                "Unsupported PKCE challenge method.",
            )));
        }
    };
    if challenge.as_ref().is_some_and(|c| c.len() < 43 || c.len() > 128) {
        return Ok(Err(back(OAuthCode::InvalidRequest, "Invalid code_challenge length.")));
    }
    // A public client has no secret: its code is redeemable by whoever intercepts it unless the
    // request binds it with PKCE (RFC 9700 §2.1.1), and only S256 keeps the verifier secret.
    if client.auth == ClientAuth::Public && method.as_deref() != Some("S256") {
        return Ok(Err(back(
            OAuthCode::InvalidRequest,
            "A public client must send a code_challenge with code_challenge_method S256 (PKCE).",
        )));
    }
    let mut req = AuthRequest::new(client.id, redirect_uri.to_owned(), scopes, state);
    req.nonce = q.get("nonce").filter(|n| !n.is_empty()).cloned();
    req.code_challenge = challenge;
    req.code_challenge_method = method;
    Ok(Ok(req))
}

/// `GET /auth`: validates the request, then `connector_id=` picks a connector (as Dex: a
/// redirect to `/auth/{id}` with the rest of the query), one connector is gone to directly, or
/// the chooser is shown. `?req=` (the chooser's own link back) shows the chooser again for a
/// request validated earlier.
async fn authorize(State(idp): State<Arc<Idp>>, Query(q): Params) -> Result<Response, PageError> {
    if let Some(token) = q.get("req") {
        let req = idp.open_auth_request(token).ok_or_else(expired)?;
        return idp.choose(req).await;
    }
    let req = match parse_auth(&idp, &q).await? {
        Ok(r) => r,
        Err(resp) => return Ok(resp),
    };
    let to_connector = |id: &str| {
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(AUTH_PARAMS.iter().filter_map(|k| q.get(*k).map(|v| (*k, v))))
            .finish();
        let enc = url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>();
        Redirect::to(&format!("{}/auth/{enc}?{qs}", idp.settings.issuer_path())).into_response()
    };
    if let Some(id) = q.get("connector_id").filter(|id| !id.is_empty()) {
        if idp.connector(id).is_none() {
            return Err(PageError::bad("Connector ID does not match a valid Connector"));
        }
        return Ok(to_connector(id));
    }
    if let [only] = idp.settings.connectors.as_slice()
        && !idp.settings.always_show_login_screen
    {
        // One connector: go straight to it, as Dex does (only the request's own parameters).
        return Ok(to_connector(&only.id));
    }
    idp.choose(req).await
}

/// `GET /auth/{connector}`: starts the login at that connector, for a request given as OAuth2
/// parameters or as the chooser's signed `req`.
async fn authorize_connector(
    State(idp): State<Arc<Idp>>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, PageError> {
    let Some(connector) = idp.connector(&id).cloned() else {
        return Err(PageError::bad("Connector ID does not match a valid Connector"));
    };
    let req = match q.get("req") {
        Some(token) => idp.open_auth_request(token).ok_or_else(expired)?,
        None => match parse_auth(&idp, &q).await? {
            Ok(r) => r,
            Err(resp) => return Ok(resp),
        },
    };
    idp.start(req, &connector).await
}

/// Stores an authorization request after login (for the approval screen); returns its id.
async fn create_auth_request(idp: &Idp, req: &AuthRequest) -> Result<String, IdpError> {
    let id = random_token(idp.rng.as_ref());
    let body = serde_json::to_vec(req)?;
    idp.store
        .create(
            &format!("{AUTHREQ_PREFIX}{id}"),
            body,
            Some(idp.settings.auth_request_ttl),
        )
        .await?;
    Ok(id)
}

async fn load_req(idp: &Idp, id: &str) -> Result<(AuthRequest, u64), PageError> {
    if id.is_empty() || id.len() > 64 || id.contains('/') {
        return Err(expired());
    }
    let kv = idp
        .store
        .get(&format!("{AUTHREQ_PREFIX}{id}"))
        .await
        .map_err(IdpError::from)?
        .ok_or_else(expired)?;
    Ok((
        serde_json::from_slice(&kv.value).map_err(IdpError::from)?,
        kv.mod_revision,
    ))
}

fn expired() -> PageError {
    PageError::bad("Your login request has expired or is invalid. Go back to the application and sign in again.")
}

/// The password connector `id` and the request `state` signed for it.
fn password_request(
    idp: &Idp,
    id: &str,
    q: &HashMap<String, String>,
) -> Result<(Connector, AuthRequest, String), PageError> {
    let token = q.get("state").cloned().unwrap_or_default();
    let req = idp.open_auth_request(&token).ok_or_else(expired)?;
    let connector = idp
        .connector(id)
        .filter(|c| c.id == req.connector_id)
        .filter(|c| matches!(c.kind, ConnectorKind::Local | ConnectorKind::Password(_)))
        .cloned()
        .ok_or_else(expired)?;
    Ok((connector, req, token))
}

/// The password form's fixed parts for `connector`.
fn form_for<'a>(
    idp: &'a Idp,
    connector: &'a Connector,
    req: &'a AuthRequest,
    action: &'a str,
    back: Option<&'a str>,
    issuer_path: &'a str,
) -> pages::PasswordForm<'a> {
    let (prompt, email_input) = match &connector.kind {
        ConnectorKind::Password(p) => (p.prompt(), false),
        _ => ("Email Address", true),
    };
    pages::PasswordForm {
        branding: &idp.settings.branding,
        issuer_path,
        action,
        prompt,
        email_input,
        back,
        redirect_uri: &req.redirect_uri,
    }
}

async fn login_page(
    State(idp): State<Arc<Idp>>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Result<Response, PageError> {
    let (connector, req, token) = password_request(&idp, &id, &q)?;
    let action = idp.login_url(&connector.id, &token);
    let back = idp.back_link(&req)?;
    let issuer_path = idp.settings.issuer_path();
    Ok(pages::login_form(
        form_for(&idp, &connector, &req, &action, back.as_deref(), &issuer_path),
        "",
        None,
        None,
    ))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    login: String,
    #[serde(default)]
    password: String,
}

/// Why a password check did not produce a user.
enum PasswordOutcome {
    /// Wrong user name or password, or the lockout refused the check: the text for the user
    /// (`{prompt}` standing for the user-name label).
    Refused(String),
    /// The connector could not decide (upstream down, ambiguous account).
    Failed(crate::connector::ConnectorError),
    /// The login protection's counters could not be kept (a store error): refused unchecked,
    /// with the text for the user.
    Unavailable(String),
}

impl Idp {
    /// Checks a user name and password at a password connector (`local` or upstream), under the
    /// lockout. Returns the identity and when the check began (Unix ms: what revocation is held
    /// against).
    async fn check_password(
        &self,
        connector: &Connector,
        scopes: Scopes,
        login: &str,
        password: &str,
        address: &str,
        audit: Option<&RequestAudit>,
    ) -> Result<Result<(LoggedIn, u64), PasswordOutcome>, IdpError> {
        let account_name = login.trim();
        let audit = crate::audit::Login::start(audit, &connector.id, account_name);
        // The lockout counts per connector: `local` keeps its old keys (lowercased emails).
        // Case-folded for every connector (directories match names without case, so `Alice`
        // must not buy a second budget), and each connector in its own space: `local` keeps its
        // old keys (emails cannot hold NUL), the others are `{id}\0{name}`.
        // Directory names as the directory compares them (`Ａｌｉｃｅ`, `al\u{200B}ice`…).
        let account = match connector.kind {
            ConnectorKind::Local if !account_name.contains('\0') => account_name.to_lowercase(),
            _ => format!("{}\0{}", connector.id, crate::lockout::directory_account(account_name)),
        };
        let outcome = |o: &str| self.metrics.login(&connector.id, o);
        // Reserve the check before running it: concurrent guesses cannot overrun the budget.
        let permit = match self.lockout.reserve(&account, address).await {
            Gate::Open(p) => p,
            Gate::Unavailable(retry) => {
                // Fail closed: no password is checked while the counters cannot be kept.
                outcome("unavailable");
                audit.failed("login protection unavailable");
                tracing::warn!(target: "audit", %address, connector = %connector.id, "login refused: login protection unavailable");
                return Ok(Err(PasswordOutcome::Unavailable(format!(
                    "Logins cannot be checked right now. Try again {}.",
                    retry.in_words()
                ))));
            }
            Gate::Locked(retry) => {
                outcome("locked");
                audit.failed("locked out");
                tracing::warn!(target: "audit", %address, connector = %connector.id, "login refused: locked out");
                return Ok(Err(PasswordOutcome::Refused(format!(
                    "Too many failed attempts. Try again {}.",
                    retry.in_words()
                ))));
            }
        };
        if !permit.wait().is_zero() {
            tokio::time::sleep(permit.wait()).await;
        }
        // The login's time for revocation: before the check, so a `user passwd` or logout-all
        // that lands while the old password is being checked voids what this login gets.
        let auth_ms = self.clock.now().as_millis();
        let acceptable = !account_name.is_empty() && !password.is_empty() && password.len() <= 1024;
        let found = match &connector.kind {
            _ if !acceptable => None,
            ConnectorKind::Local => {
                self.metrics.verifications.inc();
                self.users
                    .verify(&account_name.to_ascii_lowercase(), password)
                    .await?
                    .map(|u| LoggedIn::local(u.email))
            }
            ConnectorKind::Password(p) => match p.login(scopes, account_name, password).await {
                Ok(Some(ident)) => match crate::connector::admit(ident) {
                    Ok(ident) => Some(LoggedIn::federated(&connector.id, ident)),
                    Err(e) => {
                        audit.failed("not admitted");
                        permit.success().await;
                        return Ok(Err(PasswordOutcome::Failed(e)));
                    }
                },
                Ok(None) => None,
                Err(e) => {
                    // Not a wrong password: the budget is given back, nothing is counted.
                    outcome("error");
                    audit.failed("upstream error");
                    permit.release().await;
                    return Ok(Err(PasswordOutcome::Failed(e)));
                }
            },
            ConnectorKind::Callback(_) => None,
        };
        let Some(found) = found else {
            outcome("failure");
            audit.failed("invalid credentials");
            let failure = permit.failure().await;
            if failure.locked {
                audit.locked_out(200);
                self.metrics.lockouts.inc();
            }
            tracing::warn!(target: "audit", %address, connector = %connector.id, "login failed");
            tokio::time::sleep(failure.delay).await;
            let text = match failure.retry {
                // This failure started a lock: say so now, not only at the next attempt.
                Some(retry) => format!(
                    "Invalid {{prompt}} and password. Too many failed attempts: try again {}.",
                    retry.in_words()
                ),
                None => "Invalid {prompt} and password.".to_owned(),
            };
            return Ok(Err(PasswordOutcome::Refused(text)));
        };
        permit.success().await;
        outcome("success");
        audit.succeeded(&found.email, found.identity.as_ref().map_or(&[], |i| &i.groups[..]));
        tracing::info!(target: "audit", user = %found.email, connector = %connector.id, %address, "login succeeded");
        Ok(Ok((found, auth_ms)))
    }
}

async fn login_submit(
    State(idp): State<Arc<Idp>>,
    Path(id): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
    addr: Option<Extension<ClientAddr>>,
    audit: Option<Extension<RequestAudit>>,
    PageForm(form): PageForm<LoginForm>,
) -> Result<Response, PageError> {
    idp.same_origin(&headers)?;
    let (connector, req, token) = password_request(&idp, &id, &q)?;
    let action = idp.login_url(&connector.id, &token);
    let back = idp.back_link(&req)?;
    let issuer_path = idp.settings.issuer_path();
    let page = form_for(&idp, &connector, &req, &action, back.as_deref(), &issuer_path);
    let address = addr.map_or_else(|| "unknown".to_owned(), |Extension(ClientAddr(a))| a.to_string());
    let scopes = Scopes::from_list(&req.scopes);
    let (who, auth_ms) = match idp
        .check_password(
            &connector,
            scopes,
            &form.login,
            &form.password,
            &address,
            audit.as_ref().map(|Extension(a)| a),
        )
        .await?
    {
        Ok(found) => found,
        Err(PasswordOutcome::Refused(text)) => {
            let text = text.replace("{prompt}", page.prompt);
            return Ok(pages::login_form(page, &form.login, Some(&text), None));
        }
        Err(PasswordOutcome::Unavailable(text)) => {
            return Ok(pages::login_form(
                page,
                &form.login,
                Some(&text),
                Some(StatusCode::SERVICE_UNAVAILABLE),
            ));
        }
        Err(PasswordOutcome::Failed(e)) => {
            tracing::warn!(target: "audit", connector = %connector.id, error = %e, "password connector failed");
            return Ok(pages::login_form(
                page,
                &form.login,
                Some(e.user_message()),
                Some(e.status()),
            ));
        }
    };
    finish_login(&idp, req, who, auth_ms).await
}

/// Who logged in: the local user's email, or a connector's identity.
#[derive(Debug)]
pub(crate) struct LoggedIn {
    pub(crate) email: String,
    pub(crate) connector_id: String,
    pub(crate) identity: Option<UpstreamIdentity>,
}

impl LoggedIn {
    pub(crate) fn local(email: String) -> Self {
        Self {
            email,
            connector_id: LOCAL.into(),
            identity: None,
        }
    }

    pub(crate) fn federated(connector_id: &str, identity: UpstreamIdentity) -> Self {
        Self {
            email: identity.email.clone(),
            connector_id: connector_id.to_owned(),
            identity: Some(identity),
        }
    }
}

/// After a login: the code (skipping approval where configured), or the approval screen.
async fn finish_login(idp: &Idp, req: AuthRequest, who: LoggedIn, auth_ms: u64) -> Result<Response, PageError> {
    let client = idp
        .clients
        .get(&req.client_id)
        .await?
        .ok_or_else(|| PageError::bad("The client no longer exists."))?;
    // The client may have lost this redirect URI since the request was signed; the device
    // callback is only ever a device login's.
    let registered = if req.device.is_some() {
        req.redirect_uri == idp.device_callback_path()
    } else {
        !idp.is_device_callback(&req.redirect_uri) && client.redirect_allowed(&req.redirect_uri)
    };
    if !registered {
        return Err(PageError::bad("Unregistered redirect_uri."));
    }
    // A device login is always confirmed, naming its user code (RFC 8628 §5.4): whoever sent
    // the user here may be asking for access for their own device.
    if req.device.is_none() && (idp.settings.skip_approval || client.auth == ClientAuth::InProcess) {
        return Ok(see_other(&finish(idp, req, who, auth_ms).await?));
    }
    // Only now, after a successful login, is anything stored.
    let mut req = req;
    req.logged_in = Some(who.email);
    req.identity = who.identity;
    req.connector_id = who.connector_id;
    req.auth_ms = auth_ms;
    let id = create_auth_request(idp, &req).await?;
    Ok(see_other(&format!("{}/approval?req={id}", idp.settings.issuer_path())))
}

/// `GET /callback`: the upstream's answer to a callback connector's login.
async fn callback(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    addr: Option<Extension<ClientAddr>>,
    audit: Option<Extension<RequestAudit>>,
    Query(q): Params,
) -> Result<Response, PageError> {
    upstream_callback(&idp, None, &headers, addr, audit, &q).await
}

/// `GET /callback/{connector}`: the same, for the named connector only.
async fn callback_connector(
    State(idp): State<Arc<Idp>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    addr: Option<Extension<ClientAddr>>,
    audit: Option<Extension<RequestAudit>>,
    Query(q): Params,
) -> Result<Response, PageError> {
    upstream_callback(&idp, Some(&id), &headers, addr, audit, &q).await
}

async fn upstream_callback(
    idp: &Idp,
    expect: Option<&str>,
    headers: &HeaderMap,
    addr: Option<Extension<ClientAddr>>,
    audit: Option<Extension<RequestAudit>>,
    q: &HashMap<String, String>,
) -> Result<Response, PageError> {
    let source = addr.map_or_else(|| "unknown".to_owned(), |Extension(ClientAddr(a))| a.to_string());
    let source_key = crate::throttle::source_key(&source);
    // Failed callbacks count against the address (logins that succeed never do, so many people
    // behind one proxy are not held back by each other's logins).
    let charge = |e: PageError| {
        let _ = idp.callback_limits.lock().try_acquire(&source_key, idp.clock.now());
        e
    };
    if idp.callback_limits.lock().exhausted(&source_key, idp.clock.now()) {
        tracing::warn!(target: "audit", %source, "upstream callbacks throttled");
        let mut resp = PageError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "Too many login attempts from this address. Wait a few minutes and try again.".into(),
            cause: None,
            back: None,
        }
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("300"));
        return Ok(resp);
    }
    let state = q.get("state").map(String::as_str).unwrap_or_default();
    let cookie_name = PENDING_COOKIE;
    // The login must come back to the browser that started it (no login CSRF): its cookie
    // holds the login, sealed, with the `state` the upstream echoes.
    // (at most a few looked at: each is an AEAD open)
    let pending: Option<PendingLogin> = crate::cookies::cookies(headers)
        .filter(|(k, _)| *k == cookie_name)
        .take(MAX_PENDING_LOOKS)
        .filter_map(|(_, v)| idp.unseal::<PendingLogin>(Purpose::Pending, v))
        .find(|p: &PendingLogin| {
            !state.is_empty() && p.exp > idp.clock.now().as_secs() && ct_eq(p.b.as_bytes(), state.as_bytes())
        });
    let Some(pending) = pending else {
        let e = crate::connector::ConnectorError::BadCallback("no login cookie matches the state".into());
        return Err(charge(PageError::connector(expect.unwrap_or("-"), &e, None)));
    };
    let req = pending.req;
    let Some(connector) = idp.connector(&req.connector_id).cloned() else {
        return Err(expired());
    };
    if expect.is_some_and(|e| e != connector.id) {
        return Err(PageError::bad("Bad connector ID"));
    }
    let ConnectorKind::Callback(upstream) = &connector.kind else {
        return Err(expired());
    };
    let back = idp.back_link(&req)?;
    let scopes = Scopes::from_list(&req.scopes);
    let audit = crate::audit::Login::start(audit.as_ref().map(|Extension(a)| a), &connector.id, "");
    let identity = upstream
        .callback(scopes, &idp.callback_url(), &pending.p, q)
        .await
        .and_then(crate::connector::admit)
        .inspect_err(|_| audit.failed("upstream error"))
        .map_err(|e| {
            idp.metrics.login(&connector.id, "failure");
            charge(PageError::connector(&connector.id, &e, back.clone()))
        })?;
    idp.metrics.login(&connector.id, "success");
    audit.succeeded(&identity.email, &identity.groups);
    let auth_ms = idp.clock.now().as_millis();
    tracing::info!(target: "audit", user = %identity.email, connector = %connector.id, "upstream login succeeded");
    let who = LoggedIn::federated(&connector.id, identity);
    let mut resp = finish_login(idp, req, who, auth_ms).await?;
    if let Ok(v) = HeaderValue::from_str(&crate::cookies::login_state_cookie(cookie_name, "", 0)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

fn see_other(location: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Issues the code of a request whose user `who` authenticated at `auth_ms` (Unix ms: when
/// the password check began; the code and all it is redeemed for keep it).
async fn finish(idp: &Idp, req: AuthRequest, who: LoggedIn, auth_ms: u64) -> Result<String, IdpError> {
    let state = req.state.clone();
    let (identity, upstream) = match who.identity {
        Some(mut ident) => {
            let data = ident.connector_data.take();
            (Some(ident), data)
        }
        None => (None, None),
    };
    let rec = CodeRecord {
        grant: Grant {
            client_id: req.client_id,
            scopes: req.scopes,
            nonce: req.nonce,
            email: who.email,
            connector_id: who.connector_id,
            identity,
        },
        redirect_uri: req.redirect_uri,
        code_challenge: req.code_challenge,
        code_challenge_method: req.code_challenge_method,
        auth_ms,
        upstream,
    };
    idp.issue_code(rec, &state).await
}

async fn approval_page(State(idp): State<Arc<Idp>>, Query(q): Params) -> Result<Response, PageError> {
    let id = q.get("req").cloned().unwrap_or_default();
    let (req, _) = load_req(&idp, &id).await?;
    if req.logged_in.is_none() {
        return Err(PageError::bad("Login process not yet finalized."));
    }
    let client = idp
        .clients
        .get(&req.client_id)
        .await?
        .ok_or_else(|| PageError::bad("The client no longer exists."))?;
    let mut scopes = Vec::with_capacity(req.scopes.len());
    for scope in &req.scopes {
        // A cross-client scope names the other client: shown by its name when it exists.
        let peer = match scope.strip_prefix(pages::CROSS_CLIENT_PREFIX) {
            Some(peer) if !peer.is_empty() && peer.len() <= MAX_CLIENT_ID => {
                idp.clients.get(peer).await?.map(|c| c.name)
            }
            _ => None,
        };
        scopes.push(pages::describe_scope(scope, peer.as_deref()));
    }
    let issuer_path = idp.settings.issuer_path();
    Ok(pages::approval(
        pages::Brand::new(&idp.settings.branding, &issuer_path),
        &id,
        &client.name,
        &scopes,
        &req.redirect_uri,
        req.device.as_ref().map(|d| d.user_code.as_str()),
    ))
}

#[derive(Deserialize)]
struct ApprovalForm {
    #[serde(default)]
    req: String,
    #[serde(default)]
    approval: String,
}

/// `POST /approval`, with its audit Event: `approve` on `tokens` (or `devicecodes` for a device
/// login), the user who answered, `kfsec.io/outcome` and, when declined or refused, the reason.
async fn approval_submit(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    audit: Option<Extension<RequestAudit>>,
    PageForm(form): PageForm<ApprovalForm>,
) -> Result<Response, PageError> {
    let audit = audit.map(|Extension(a)| a);
    crate::audit::approval_answered(audit.as_ref());
    let result = approval_inner(&idp, &headers, audit.as_ref(), form).await;
    match &result {
        Ok(_) => crate::audit::succeeded(audit.as_ref()),
        Err(_) => crate::audit::failed(audit.as_ref(), "invalid approval request"),
    }
    result
}

async fn approval_inner(
    idp: &Arc<Idp>,
    headers: &HeaderMap,
    audit: Option<&RequestAudit>,
    form: ApprovalForm,
) -> Result<Response, PageError> {
    idp.same_origin(headers)?;
    let (mut req, rev) = load_req(idp, &form.req).await?;
    let Some(email) = req.logged_in.clone() else {
        return Err(PageError::bad("Login process not yet finalized."));
    };
    let device = req.device.is_some();
    crate::audit::approval_request(audit, device, &req.client_id, &email);
    // Single use: whoever deletes the request first finishes it.
    idp.store
        .delete(&format!("{AUTHREQ_PREFIX}{}", form.req), Some(rev))
        .await
        .map_err(|_| PageError::bad("This request was already answered."))?;
    if form.approval != "approve" {
        crate::audit::failed(audit, OAuthCode::AccessDenied.as_str());
        let to = crate::tokens::append_query(
            &req.redirect_uri,
            &[("error", OAuthCode::AccessDenied.as_str()), ("state", &req.state)],
        );
        return Ok(see_other(&to));
    }
    let auth_ms = req.auth_ms;
    let who = match req.identity.take() {
        Some(ident) => LoggedIn::federated(&req.connector_id, ident),
        None => LoggedIn::local(email),
    };
    Ok(see_other(&finish(idp, req, who, auth_ms).await?))
}

/// Client credentials from HTTP Basic (RFC 6749 §2.3.1, form-urlencoded parts) or the body.
fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(String, Option<String>), OAuthError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| OAuthError::invalid_client())?;
        let b64 = v.strip_prefix("Basic ").ok_or_else(OAuthError::invalid_client)?;
        let raw = STANDARD.decode(b64.trim()).map_err(|_| OAuthError::invalid_client())?;
        let raw = String::from_utf8(raw).map_err(|_| OAuthError::invalid_client())?;
        let (id, secret) = raw.split_once(':').ok_or_else(OAuthError::invalid_client)?;
        let dec = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        return Ok((dec(id), Some(dec(secret))));
    }
    let id = form.get("client_id").cloned().ok_or_else(OAuthError::invalid_client)?;
    Ok((id, form.get("client_secret").cloned()))
}

/// `POST /token`, with its audit Event: the grant's identity action, the client, and the OAuth2
/// error code as the reason of a failure.
async fn token(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    addr: Option<Extension<ClientAddr>>,
    audit: Option<Extension<RequestAudit>>,
    form: Result<OAuthForm<HashMap<String, String>>, OAuthError>,
) -> Result<Response, OAuthError> {
    let audit = audit.map(|Extension(a)| a);
    if let (Some(a), Ok(OAuthForm(f))) = (&audit, &form) {
        crate::audit::token_request(
            a,
            f.get("grant_type").map(String::as_str),
            f.get("client_id").map(String::as_str),
        );
    }
    let result = token_inner(idp, headers, addr, audit.as_ref(), form).await;
    match &result {
        Ok(_) => crate::audit::succeeded(audit.as_ref()),
        Err(e) => crate::audit::failed(audit.as_ref(), e.error.as_str()),
    }
    result
}

async fn token_inner(
    idp: Arc<Idp>,
    headers: HeaderMap,
    addr: Option<Extension<ClientAddr>>,
    audit: Option<&RequestAudit>,
    form: Result<OAuthForm<HashMap<String, String>>, OAuthError>,
) -> Result<Response, OAuthError> {
    let OAuthForm(form) = form?;
    let (client_id, secret) = client_credentials(&headers, &form)?;
    let client = idp
        .clients
        .get(&client_id)
        .await?
        .ok_or_else(OAuthError::invalid_client)?;
    if !client.authenticate(secret.as_deref()) {
        tracing::warn!(target: "audit", client = %client_id, "client authentication failed");
        return Err(OAuthError::invalid_client());
    }
    let get = |k: &str| form.get(k).map(String::as_str);
    crate::audit::token_client(audit, get("grant_type"), &client.id);
    let resp = match get("grant_type") {
        Some("authorization_code") => {
            idp.redeem_code(
                &client,
                get("code").unwrap_or_default(),
                get("redirect_uri").unwrap_or_default(),
                get("code_verifier"),
            )
            .await?
        }
        Some("refresh_token") => {
            let t = get("refresh_token")
                .filter(|t| !t.is_empty() && t.len() <= 128)
                .ok_or_else(|| OAuthError::invalid_request("Required param: refresh_token."))?;
            idp.refresh(&client, t).await?
        }
        Some("password") if idp.settings.password_connector.is_some() => {
            let address = addr.map_or_else(|| "unknown".to_owned(), |Extension(ClientAddr(a))| a.to_string());
            password_grant(&idp, &client, &form, &address, audit).await?
        }
        Some(crate::device::GRANT_TYPE) => {
            crate::device::poll(&idp, &client, get("device_code").unwrap_or_default()).await?
        }
        Some(other) => {
            return Err(OAuthError::bad(
                OAuthCode::UnsupportedGrantType,
                format!("Unsupported grant type {other:?}."),
            ));
        }
        None => return Err(OAuthError::invalid_request("Required param: grant_type.")),
    };
    // Only the grant types matched above get here: the label is bounded.
    idp.metrics.token_issued(get("grant_type").unwrap_or_default());
    crate::audit::token_user(audit, &resp);
    let mut r = Json(resp).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// A request's `scope` list, de-duplicated: `openid` required, every scope one kfsec knows
/// (Dex's texts and order of checks; the first unknown scope is echoed at most 64 characters
/// long). One pass, and the list kept holds known scopes only, so a body of thousands of
/// distinct scopes costs linear time (de-duplicating them all was quadratic).
pub(crate) fn requested_scopes(raw: &str) -> Result<Vec<String>, OAuthError> {
    let mut scopes: Vec<String> = Vec::new();
    let mut unknown = None;
    for s in raw.split_whitespace() {
        if !SCOPES.contains(&s) {
            unknown.get_or_insert(s);
        } else if !scopes.iter().any(|have| have == s) {
            scopes.push(s.to_owned());
        }
    }
    if !scopes.iter().any(|s| s == "openid") {
        return Err(OAuthError::bad(
            OAuthCode::InvalidScope,
            "Missing required scope(s) [\"openid\"].",
        ));
    }
    if let Some(bad) = unknown {
        return Err(OAuthError::bad(
            OAuthCode::InvalidScope,
            format!("Unrecognized scope(s) [{:?}]", bad.chars().take(64).collect::<String>()),
        ));
    }
    Ok(scopes)
}

/// The resource-owner password grant (`grant_type=password`) against
/// `oauth2.passwordConnector`, as Dex offers it to CLI users: the same lockout as the form.
async fn password_grant(
    idp: &Idp,
    client: &crate::Client,
    form: &HashMap<String, String>,
    address: &str,
    audit: Option<&RequestAudit>,
) -> Result<crate::TokenResponse, OAuthError> {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let scopes = requested_scopes(get("scope"))?;
    let Some(connector) = idp
        .settings
        .password_connector
        .as_deref()
        .and_then(|id| idp.connector(id))
        .cloned()
    else {
        return Err(OAuthError::bad(
            OAuthCode::UnsupportedGrantType,
            "The password grant is not enabled.",
        ));
    };
    if get("username").is_empty() || get("password").is_empty() {
        return Err(OAuthError::invalid_request("Required params: username, password."));
    }
    match idp
        .check_password(
            &connector,
            Scopes::from_list(&scopes),
            get("username"),
            get("password"),
            address,
            audit,
        )
        .await?
    {
        Ok((who, auth_ms)) => idp.mint_for_password(client, scopes, who, auth_ms).await,
        Err(PasswordOutcome::Refused(_)) => Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            OAuthCode::AccessDenied,
            "Invalid username or password",
        )),
        Err(PasswordOutcome::Unavailable(text)) => Err(OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            OAuthCode::TemporarilyUnavailable,
            text,
        )),
        Err(PasswordOutcome::Failed(e)) => {
            tracing::warn!(target: "audit", connector = %connector.id, error = %e, "password grant: connector failed");
            Err(OAuthError::new(
                e.status(),
                if e.status().is_server_error() {
                    OAuthCode::TemporarilyUnavailable
                } else {
                    OAuthCode::AccessDenied
                },
                e.user_message(),
            ))
        }
    }
}

/// `GET|POST /userinfo`: the verified access token's claims; its audit Event's user is the
/// token's subject.
async fn userinfo(State(idp): State<Arc<Idp>>, headers: HeaderMap, audit: Option<Extension<RequestAudit>>) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let unauthorized = || {
        let mut r = OAuthError::new(
            StatusCode::UNAUTHORIZED,
            OAuthCode::InvalidToken,
            "Invalid bearer token.",
        )
        .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let Some(token) = token else { return unauthorized() };
    match idp.verify_token(token.trim(), None, None).await {
        // As Dex: the access token's claims, so a claim whose scope was not granted is absent
        // (never `null`); kfsec's own bookkeeping claims stay out.
        Ok(c) => {
            crate::audit::token_holder(audit.as_ref().map(|Extension(a)| a), &c);
            Json(Claims {
                iat_ms: None,
                user: None,
                at_hash: None,
                nbf: None,
                ..c
            })
            .into_response()
        }
        Err(e) => {
            tracing::debug!(error = %e, "userinfo token refused");
            unauthorized()
        }
    }
}

#[cfg(test)]
mod tests {
    use kfsec_store::MemoryStore;
    use kfsec_store::flaky::Flaky;
    use kfsec_types::{ManualClock, UnixTime};

    use super::*;
    use crate::IdpSettings;
    use crate::test_support::{USER, client, idp, settings};

    #[tokio::test]
    async fn no_authorization_request_ends_at_the_device_callback_whatever_a_client_registers() {
        let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000));
        let callbacks = [
            "/dex/device/callback",
            "https://kf.example.com/dex/device/callback",
            "https://KF.example.com:443/dex/device/callback?x=1",
            "//kf.example.com/dex/device/callback/",
            "/dex/Device/Callback",
        ];
        let mut rp = client();
        rp.redirect_uris.extend(callbacks.iter().map(|u| (*u).to_owned()));
        let idp = idp(
            IdpSettings {
                static_clients: vec![rp],
                ..settings()
            },
            MemoryStore::new(clock.clone()),
            clock,
        )
        .await;
        let query = |redirect_uri: &str| -> HashMap<String, String> {
            [
                ("client_id", "rp"),
                ("redirect_uri", redirect_uri),
                ("response_type", "code"),
                ("scope", "openid"),
                ("state", "s"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
        };
        for uri in callbacks {
            match parse_auth(&idp, &query(uri)).await {
                Err(e) => {
                    assert_eq!(e.status, StatusCode::BAD_REQUEST, "{uri}");
                    assert!(
                        e.message.starts_with("Unregistered redirect_uri"),
                        "{uri}: {}",
                        e.message
                    );
                }
                Ok(_) => panic!("{uri} accepted as a redirect URI"),
            }
        }
        // the client's other redirect URI still works (with PKCE: the client is public)
        for uri in ["https://rp.example/cb"] {
            let mut q = query(uri);
            q.insert(
                "code_challenge".into(),
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
            );
            q.insert("code_challenge_method".into(), "S256".into());
            assert!(matches!(parse_auth(&idp, &q).await, Ok(Ok(_))), "{uri}");
        }
        assert!(!idp.is_device_callback("https://other.example/dex/device/callback"));
        assert!(!idp.is_device_callback("/dex/device/callbacks"));
        assert!(idp.is_device_callback("/dex/device/callback"));
    }

    /// A public client's authorization request carries an S256 PKCE challenge (RFC 9700
    /// §2.1.1): without one, or with `plain`, it is sent back `invalid_request`. A confidential
    /// client may still leave PKCE out, as Dex allows.
    #[tokio::test]
    async fn a_public_client_must_use_pkce_s256() {
        let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000));
        let mut confidential = client();
        confidential.id = "conf".into();
        confidential.auth = ClientAuth::Static("s3cret".into());
        let idp = idp(
            IdpSettings {
                static_clients: vec![client(), confidential],
                ..settings()
            },
            MemoryStore::new(clock.clone()),
            clock,
        )
        .await;
        let query = |client_id: &str, pkce: &[(&str, &str)]| -> HashMap<String, String> {
            [
                ("client_id", client_id),
                ("redirect_uri", "https://rp.example/cb"),
                ("response_type", "code"),
                ("scope", "openid"),
                ("state", "s"),
            ]
            .iter()
            .chain(pkce)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
        };
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        for pkce in [
            &[][..],
            &[("code_challenge", challenge)][..],
            &[("code_challenge", challenge), ("code_challenge_method", "plain")][..],
        ] {
            let Ok(Err(back)) = parse_auth(&idp, &query("rp", pkce)).await else {
                panic!("{pkce:?}: accepted");
            };
            let to = back.headers()[header::LOCATION].to_str().unwrap().to_owned();
            assert!(
                to.starts_with("https://rp.example/cb?error=invalid_request") && to.contains("PKCE"),
                "{pkce:?}: {to}"
            );
        }
        let s256 = [("code_challenge", challenge), ("code_challenge_method", "S256")];
        assert!(matches!(parse_auth(&idp, &query("rp", &s256)).await, Ok(Ok(_))));
        assert!(matches!(parse_auth(&idp, &query("conf", &[])).await, Ok(Ok(_))));
    }

    #[tokio::test]
    async fn a_store_failure_at_the_lockout_refuses_the_login_unchecked_and_says_try_again() {
        let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000));
        let flaky = Flaky::new(MemoryStore::new(clock.clone()));
        let idp = idp(
            IdpSettings {
                password_connector: Some(LOCAL.into()),
                ..settings()
            },
            flaky.clone(),
            clock,
        )
        .await;
        flaky.fail(true);
        // The login form: refused without a check, in words, no internal text.
        let outcome = idp
            .check_password(
                &Connector::local(),
                Scopes::from_list(&[]),
                USER,
                "password",
                "10.0.0.1",
                None,
            )
            .await
            .unwrap();
        match outcome {
            Err(PasswordOutcome::Unavailable(text)) => {
                assert!(
                    text.starts_with("Logins cannot be checked right now. Try again in "),
                    "{text}"
                );
                assert!(!text.contains(Flaky::CAUSE));
            }
            Ok(_) => panic!("a password was checked while its counters could not be kept"),
            Err(_) => panic!("not the unavailable answer"),
        }
        // The password grant: 503 temporarily_unavailable, as OAuth2 says.
        let form: HashMap<String, String> = [
            ("grant_type", "password"),
            ("username", USER),
            ("password", "password"),
            ("scope", "openid"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let e = password_grant(&idp, &client(), &form, "10.0.0.1", None)
            .await
            .unwrap_err();
        assert_eq!(
            (e.status, e.error),
            (StatusCode::SERVICE_UNAVAILABLE, OAuthCode::TemporarilyUnavailable)
        );
        assert_eq!(idp.metrics.verifications.get(), 0, "no password was verified");
    }
}
