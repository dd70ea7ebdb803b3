//! The IdP's HTTP endpoints (Dex's paths, relative to the issuer path): discovery, keys,
//! authorize, the local password connector, approval, token, userinfo and health.
//!
//! Invariants: an unknown client or unregistered redirect URI gets an error page and is never
//! redirected to; a failed login issues no code and is counted by the lockout; `/token` answers
//! only OAuth2 JSON.
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

use axum::extract::{DefaultBodyLimit, Extension, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use serde::{Deserialize, Serialize};

use crate::error::PageError;
use crate::lockout::Gate;
use crate::secret::random_token;
use crate::tokens::{CodeRecord, Grant};
use crate::{ClientAddr, ClientAuth, Idp, IdpError, OAuthCode, OAuthError, pages};
use aws_lc_rs::hmac;
use kfsec_store::{Store, StoreError};
use kfsec_types::{Rng, random_array};

const AUTHREQ_PREFIX: &str = "/kfsec/idp/authreqs/";
const AUTHREQ_KEY: &str = "/kfsec/idp/authreq-key";
type Params = Query<HashMap<String, String>>;

/// Longest `state` of the in-process gatekeeper (it carries the return path, ≤ 2,048 bytes).
const MAX_INPROCESS_STATE: usize = 4096;
const MAX_NONCE: usize = 256;
const MAX_CLIENT_ID: usize = 256;
const MAX_REDIRECT_URI: usize = 2048;
/// Longest signed request accepted back from the login form.
const MAX_SIGNED_REQUEST: usize = 16 * 1024;
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
}

/// A pending authorization request.
#[derive(Debug, Serialize, Deserialize)]
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
}

impl Idp {
    /// The router, to be nested under [`crate::IdpSettings::issuer_path`].
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/keys", get(keys))
            .route("/auth", get(authorize))
            .route("/auth/local", get(authorize_local))
            .route("/auth/local/login", get(login_page).post(login_submit))
            .route("/approval", get(approval_page).post(approval_submit))
            .route("/token", axum::routing::post(token))
            .route("/userinfo", get(userinfo).post(userinfo))
            .route("/healthz", get(|| async { "Health check passed" }))
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

    pub(crate) fn login_url(&self, id: &str) -> String {
        format!("{}/auth/local/login?back=&state={id}", self.settings.issuer_path())
    }

    /// Signs a pending authorization request: the login form's `state`.
    pub(crate) fn sign_auth_request(&self, req: &mut AuthRequest) -> Result<String, IdpError> {
        req.exp = self.clock.now().add(self.settings.auth_request_ttl).as_secs();
        let payload = B64.encode(serde_json::to_vec(req)?);
        let mac = hmac::sign(&self.auth_key.0, payload.as_bytes());
        Ok(format!("{payload}.{}", B64.encode(mac.as_ref())))
    }

    /// The PKCE verifier that binds a device login's code to its user code: only the callback
    /// for that user code can redeem it.
    pub(crate) fn device_verifier(&self, user_code: &str) -> String {
        B64.encode(hmac::sign(&self.auth_key.0, format!("device-pkce\0{user_code}").as_bytes()).as_ref())
    }

    /// Opens a signed request: `None` if forged, malformed or expired.
    fn open_auth_request(&self, token: &str) -> Option<AuthRequest> {
        if token.len() > MAX_SIGNED_REQUEST {
            return None;
        }
        let (payload, mac) = token.split_once('.')?;
        let mac = B64.decode(mac).ok()?;
        hmac::verify(&self.auth_key.0, payload.as_bytes(), &mac).ok()?;
        let req: AuthRequest = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        (req.exp > self.clock.now().as_secs() && req.logged_in.is_none()).then_some(req)
    }
}

async fn discovery(State(idp): State<Arc<Idp>>) -> Response {
    let iss = &idp.settings.issuer;
    let mut resp = Json(serde_json::json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/auth"),
        "token_endpoint": format!("{iss}/token"),
        "jwks_uri": format!("{iss}/keys"),
        "userinfo_endpoint": format!("{iss}/userinfo"),
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["S256", "plain"],
        "scopes_supported": ["openid", "email", "groups", "profile", "offline_access"],
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
    if !client.redirect_allowed(redirect_uri) {
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
    let mut scopes: Vec<String> = Vec::new();
    for s in get("scope").split_whitespace() {
        if !scopes.iter().any(|have| have == s) {
            scopes.push(s.to_owned());
        }
    }
    if !scopes.iter().any(|s| s == "openid") {
        return Ok(Err(back(
            OAuthCode::InvalidScope,
            "Missing required scope(s) [\"openid\"].",
        )));
    }
    if let Some(bad) = scopes
        .iter()
        .find(|s| !matches!(s.as_str(), "openid" | "email" | "groups" | "profile" | "offline_access"))
    {
        return Ok(Err(back(
            OAuthCode::InvalidScope,
            &format!("Unrecognized scope(s) [{bad:?}]"),
        )));
    }
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
    Ok(Ok(AuthRequest {
        client_id: client.id,
        redirect_uri: redirect_uri.to_owned(),
        scopes,
        state,
        nonce: q.get("nonce").filter(|n| !n.is_empty()).cloned(),
        code_challenge: challenge,
        code_challenge_method: method,
        logged_in: None,
        auth_ms: 0,
        exp: 0,
    }))
}

async fn authorize(State(idp): State<Arc<Idp>>, Query(q): Params) -> Result<Response, PageError> {
    if let Err(resp) = parse_auth(&idp, &q).await? {
        return Ok(resp);
    }
    // One connector: go straight to it, as Dex does (only the request's own parameters).
    let qs = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(AUTH_PARAMS.iter().filter_map(|k| q.get(*k).map(|v| (*k, v))))
        .finish();
    Ok(Redirect::to(&format!("{}/auth/local?{qs}", idp.settings.issuer_path())).into_response())
}

async fn authorize_local(State(idp): State<Arc<Idp>>, Query(q): Params) -> Result<Response, PageError> {
    let mut req = match parse_auth(&idp, &q).await? {
        Ok(r) => r,
        Err(resp) => return Ok(resp),
    };
    let token = idp.sign_auth_request(&mut req)?;
    Ok(Redirect::to(&idp.login_url(&token)).into_response())
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

async fn login_page(State(idp): State<Arc<Idp>>, Query(q): Params) -> Result<Response, PageError> {
    let id = q.get("state").cloned().unwrap_or_default();
    idp.open_auth_request(&id).ok_or_else(expired)?;
    Ok(pages::login_form(&idp.login_url(&id), "", None))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    login: String,
    #[serde(default)]
    password: String,
}

async fn login_submit(
    State(idp): State<Arc<Idp>>,
    Query(q): Params,
    addr: Option<Extension<ClientAddr>>,
    Form(form): Form<LoginForm>,
) -> Result<Response, PageError> {
    let id = q.get("state").cloned().unwrap_or_default();
    let req = idp.open_auth_request(&id).ok_or_else(expired)?;
    let action = idp.login_url(&id);
    let account = form.login.trim().to_ascii_lowercase();
    let address = addr.map_or_else(|| "unknown".to_owned(), |Extension(ClientAddr(a))| a.to_string());
    let outcome = |o: &str| {
        idp.metrics
            .logins
            .get_or_create(&vec![("outcome".to_owned(), o.to_owned())])
            .inc()
    };

    let locked_answer = || pages::login_form(&action, &form.login, Some("Too many failed attempts. Try again later."));
    // Reserve the check before running it: concurrent guesses cannot overrun the budget.
    let permit = match idp.lockout.reserve(&account, &address) {
        Gate::Open(p) => p,
        Gate::Locked => {
            outcome("locked");
            tracing::warn!(target: "audit", %address, "login refused: locked out");
            return Ok(locked_answer());
        }
    };
    if !permit.wait().is_zero() {
        tokio::time::sleep(permit.wait()).await;
    }
    // The login's time for revocation: before the hash is read, so a `user passwd` or
    // logout-all that lands while the old password is being checked voids what this login gets.
    let auth_ms = idp.clock.now().as_millis();
    let user = if account.is_empty() || form.password.is_empty() || form.password.len() > 1024 {
        None
    } else {
        idp.metrics.verifications.inc();
        idp.users.verify(&account, &form.password).await?
    };
    let Some(user) = user else {
        outcome("failure");
        let failure = permit.failure().await;
        if failure.locked {
            idp.metrics.lockouts.inc();
        }
        tracing::warn!(target: "audit", %address, "login failed");
        tokio::time::sleep(failure.delay).await;
        return Ok(pages::login_form(
            &action,
            &form.login,
            Some("Invalid Email Address and password."),
        ));
    };
    permit.success().await;
    outcome("success");
    tracing::info!(target: "audit", user = %user.email, %address, "login succeeded");

    let client = idp
        .clients
        .get(&req.client_id)
        .await?
        .ok_or_else(|| PageError::bad("The client no longer exists."))?;
    if idp.settings.skip_approval || client.auth == ClientAuth::InProcess {
        return Ok(see_other(&finish(&idp, req, user.email, auth_ms).await?));
    }
    // Only now, after a successful login, is anything stored.
    let mut req = req;
    req.logged_in = Some(user.email);
    req.auth_ms = auth_ms;
    let id = create_auth_request(&idp, &req).await?;
    Ok(see_other(&format!("{}/approval?req={id}", idp.settings.issuer_path())))
}

fn see_other(location: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Issues the code of a request whose user `email` authenticated at `auth_ms` (Unix ms: when
/// the password check began; the code and all it is redeemed for keep it).
async fn finish(idp: &Idp, req: AuthRequest, email: String, auth_ms: u64) -> Result<String, IdpError> {
    let state = req.state.clone();
    let rec = CodeRecord {
        grant: Grant {
            client_id: req.client_id,
            scopes: req.scopes,
            nonce: req.nonce,
            email,
        },
        redirect_uri: req.redirect_uri,
        code_challenge: req.code_challenge,
        code_challenge_method: req.code_challenge_method,
        auth_ms,
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
    Ok(pages::approval(&id, &client.name, &req.scopes))
}

#[derive(Deserialize)]
struct ApprovalForm {
    #[serde(default)]
    req: String,
    #[serde(default)]
    approval: String,
}

async fn approval_submit(State(idp): State<Arc<Idp>>, Form(form): Form<ApprovalForm>) -> Result<Response, PageError> {
    let (req, rev) = load_req(&idp, &form.req).await?;
    let Some(email) = req.logged_in.clone() else {
        return Err(PageError::bad("Login process not yet finalized."));
    };
    // Single use: whoever deletes the request first finishes it.
    idp.store
        .delete(&format!("{AUTHREQ_PREFIX}{}", form.req), Some(rev))
        .await
        .map_err(|_| PageError::bad("This request was already answered."))?;
    if form.approval != "approve" {
        let to = crate::tokens::append_query(
            &req.redirect_uri,
            &[("error", OAuthCode::AccessDenied.as_str()), ("state", &req.state)],
        );
        return Ok(see_other(&to));
    }
    let auth_ms = req.auth_ms;
    Ok(see_other(&finish(&idp, req, email, auth_ms).await?))
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

async fn token(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Result<Response, OAuthError> {
    let Form(form) = form.map_err(|e| OAuthError::invalid_request(format!("Could not parse the request body: {e}")))?;
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
    let mut r = Json(resp).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

async fn userinfo(State(idp): State<Arc<Idp>>, headers: HeaderMap) -> Response {
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
        Ok(c) => Json(serde_json::json!({
            "sub": c.sub,
            "email": c.email,
            "email_verified": c.email_verified,
            "groups": c.groups,
            "name": c.name,
            "preferred_username": c.preferred_username,
        }))
        .into_response(),
        Err(e) => {
            tracing::debug!(error = %e, "userinfo token refused");
            unauthorized()
        }
    }
}
