//! The OAuth2 device authorization grant (RFC 8628) at Dex's paths: `/device/code`, the
//! `/device` page where the user enters the code, `/device/auth/verify_code`, the
//! `/device/callback` that finishes the browser leg, and polling at `/token`.
//!
//! Invariants: a device code is high-entropy and stored only as a digest; user codes are short
//! but expire with the request (5 minutes) and are single-use; tokens are handed out once, to
//! the client that asked, and the record is deleted when they are.
//!
//! Binding (RFC 8628 §5.4): the browser leg belongs to the browser that entered the user code.
//! `verify_code` (a same-origin form post) sets that browser a fresh random value in the
//! `__Host-kfsec_device_login` cookie and signs only its SHA-256 into the login: the
//! request's `device` and, sealed, the callback's `state`; the login's code is PKCE-bound to
//! the user code and that digest. `/device/callback` completes nothing unless the cookie
//! matches (constant-time), so a login link handed to someone else (a phishing victim who
//! logs in with their password or through silent upstream SSO) gives the device nothing and
//! denies it (`access_denied` at the next poll). The callback is no client's redirect URI:
//! `/auth` refuses it, so no login the device flow did not start can end there. Whoever logs
//! in always confirms on a screen naming the user code, even with `skipApprovalScreen`; a
//! cancel there denies the device too. One browser holds one device login at a time: a code
//! entered later replaces the cookie of an earlier one, whose callback is then refused without
//! denying its device (entering that code again finishes it).
//!
//! Bounds (config `loginProtection`): at most `maxDeviceCodesPerAddress` device codes per source
//! per window (429 `slow_down`) and `maxPendingDeviceCodes` live at once (503
//! `temporarily_unavailable`), so unauthenticated `/device/code` traffic cannot grow the store
//! past a fixed size; user-code entry is throttled per source (`maxUserCodeAttemptsPerAddress`)
//! and overall (`maxUserCodeAttempts`), answered with the device page's error (429).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kfsec_audit::RequestAudit;
use kfsec_store::{Store, StoreError};
use kfsec_types::UnixTime;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::cookies::{DEVICE_LOGIN, login_state_cookie};
use crate::error::{OAuthForm, PageError, PageForm};
use crate::flow::{AuthRequest, MAX_PENDING_LOOKS};
use crate::lockout::LockoutPolicy;
use crate::secret::{ct_eq, random_alnum, random_token, sha256_b64, sha256_hex};
use crate::throttle::{Capacity, Gcra, KeyedCounter, source_key};
use crate::{Client, ClientAddr, Idp, IdpError, OAuthCode, OAuthError, TokenResponse, pages};

/// The grant type of device-code polling.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";
pub(crate) const DEVICE_PREFIX: &str = "/kfsec/idp/device/";
const USER_CODE_PREFIX: &str = "/kfsec/idp/usercodes/";
const TTL: Duration = Duration::from_secs(300);
const INTERVAL: u64 = 5;
const MAX_SOURCES: usize = 100_000;

/// Rate and capacity bounds of the device flow's unauthenticated endpoints.
pub(crate) struct DeviceLimits {
    policy: LockoutPolicy,
    state: Mutex<LimitState>,
}

struct LimitState {
    issued: KeyedCounter,
    pending: Capacity,
    user_codes: KeyedCounter,
    user_codes_global: Gcra,
}

impl DeviceLimits {
    /// The limits, counting device codes already in the store as pending.
    pub(crate) async fn load(policy: &LockoutPolicy, store: &dyn Store, now: UnixTime) -> Result<Self, IdpError> {
        let mut pending = Capacity::new(usize::try_from(policy.max_pending_device_codes).unwrap_or(usize::MAX));
        for kv in kfsec_store::list_all(store, DEVICE_PREFIX).await?.items {
            pending.try_admit(now, kv.expires_at.unwrap_or(now.add(TTL)));
        }
        Ok(Self {
            policy: policy.clone(),
            state: Mutex::new(LimitState {
                issued: KeyedCounter::new(policy.device_codes_per_address, policy.window, MAX_SOURCES),
                pending,
                user_codes: KeyedCounter::new(policy.user_code_per_address, policy.window, MAX_SOURCES),
                user_codes_global: Gcra::default(),
            }),
        })
    }

    /// Admits a new device code from `source`, or the OAuth2 error to answer.
    fn admit_device_code(&self, source: &str, now: UnixTime) -> Result<(), OAuthError> {
        let mut st = self.state.lock();
        if !st.issued.try_acquire(source, now) {
            return Err(OAuthError::new(
                StatusCode::TOO_MANY_REQUESTS,
                OAuthCode::SlowDown,
                "Too many device codes from this address; try again later.",
            ));
        }
        if !st.pending.try_admit(now, now.add(TTL)) {
            tracing::warn!("device code capacity reached; refusing new device codes");
            return Err(OAuthError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                OAuthCode::TemporarilyUnavailable,
                "Too many pending device logins; try again in a few minutes.",
            ));
        }
        Ok(())
    }

    /// Whether `source` may try a user code now.
    fn admit_user_code(&self, source: &str, now: UnixTime) -> bool {
        let mut st = self.state.lock();
        let p = &self.policy;
        st.user_codes.try_acquire(source, now)
            && st
                .user_codes_global
                .take(p.user_code_global, p.window, now, Duration::ZERO)
                .is_some()
    }
}

fn address(addr: Option<Extension<ClientAddr>>) -> String {
    addr.map_or_else(
        || "unknown".to_owned(),
        |Extension(ClientAddr(a))| source_key(&a.to_string()),
    )
}

/// A user code's shape: `XXXX-XXXX`, upper-case letters and digits.
fn well_formed(user_code: &str) -> bool {
    user_code.len() == 9
        && user_code.char_indices().all(|(i, c)| {
            if i == 4 {
                c == '-'
            } else {
                c.is_ascii_uppercase() || c.is_ascii_digit()
            }
        })
}

/// The device page's answer to too many code entries.
fn throttled() -> Response {
    retry_later(pages::device_throttled())
}

fn retry_later(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    resp
}

/// A device login's binding to the browser that entered its user code: signed into its
/// authorization request and sealed as its callback's `state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeviceLogin {
    /// The user code.
    pub(crate) user_code: String,
    /// Base64url SHA-256 of the random value in that browser's [`DEVICE_LOGIN`] cookie.
    pub(crate) browser: String,
}

#[derive(Serialize, Deserialize)]
struct DeviceRecord {
    client_id: String,
    scopes: Vec<String>,
    user_code: String,
    #[serde(default)]
    last_poll: u64,
    #[serde(default)]
    tokens: Option<TokenResponse>,
    /// The login was cancelled or finished in another browser: the next poll is told
    /// `access_denied`.
    #[serde(default)]
    denied: bool,
    /// The polling interval this device was told (s; 0: [`INTERVAL`]): each `slow_down` adds
    /// five seconds to it, for this and every later poll (RFC 8628 §3.5).
    #[serde(default)]
    interval: u64,
}

/// What is left of a device code's life (its record's expiry): a write while polling keeps it,
/// so a device that polls cannot keep its code alive past the `expires_in` it was told.
fn remaining(kv: &kfsec_store::KeyValue, now: UnixTime) -> Duration {
    kv.expires_at.map_or(TTL, |end| {
        Duration::from_millis(end.as_millis().saturating_sub(now.as_millis()).max(1))
    })
}

#[derive(Deserialize)]
pub(crate) struct CodeForm {
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    scope: String,
}

/// `POST /device/code`.
pub(crate) async fn device_code(
    State(idp): State<Arc<Idp>>,
    addr: Option<Extension<ClientAddr>>,
    audit: Option<Extension<RequestAudit>>,
    OAuthForm(f): OAuthForm<CodeForm>,
) -> Result<Response, Response> {
    let audit = audit.map(|Extension(a)| a);
    crate::audit::device_code(audit.as_ref(), &f.client_id);
    device_code_inner(&idp, &address(addr), f)
        .await
        .inspect_err(|e| crate::audit::failed(audit.as_ref(), e.error.as_str()))
        .map_err(|e| retry_later(e.into_response()))
}

async fn device_code_inner(idp: &Idp, source: &str, f: CodeForm) -> Result<Response, OAuthError> {
    let client = idp
        .clients
        .get(&f.client_id)
        .await?
        .ok_or_else(OAuthError::invalid_client)?;
    if !client.authenticate(f.client_secret.as_deref()) {
        return Err(OAuthError::invalid_client());
    }
    let scopes = crate::flow::requested_scopes(&f.scope)?;
    idp.device_limits.admit_device_code(source, idp.clock.now())?;
    let device_code = random_token(idp.rng.as_ref());
    let raw = random_alnum(idp.rng.as_ref(), 8).to_ascii_uppercase();
    let user_code = format!("{}-{}", &raw[..4], &raw[4..]);
    let rec = DeviceRecord {
        client_id: client.id,
        scopes,
        user_code: user_code.clone(),
        last_poll: 0,
        tokens: None,
        denied: false,
        interval: 0,
    };
    let hash = sha256_hex(device_code.as_bytes());
    idp.store
        .create(
            &format!("{DEVICE_PREFIX}{hash}"),
            serde_json::to_vec(&rec).map_err(IdpError::from)?,
            Some(TTL),
        )
        .await
        .map_err(IdpError::from)?;
    idp.store
        .create(&format!("{USER_CODE_PREFIX}{user_code}"), hash.into_bytes(), Some(TTL))
        .await
        .map_err(IdpError::from)?;
    let iss = &idp.settings.issuer;
    Ok(Json(serde_json::json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": format!("{iss}/device"),
        "verification_uri_complete": format!("{iss}/device?user_code={user_code}"),
        "expires_in": TTL.as_secs(),
        "interval": INTERVAL,
    }))
    .into_response())
}

/// `GET /device`: the form where the user types the code shown in their terminal.
pub(crate) async fn device_page(State(idp): State<Arc<Idp>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let code = q.get("user_code").map(String::as_str).unwrap_or_default();
    pages::device(&idp.settings.issuer_path(), code)
}

#[derive(Deserialize)]
pub(crate) struct VerifyForm {
    #[serde(default)]
    user_code: String,
}

/// `POST /device/auth/verify_code`: starts the browser login for that device, bound to this
/// browser (the [`DEVICE_LOGIN`] cookie).
pub(crate) async fn verify_code(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    addr: Option<Extension<ClientAddr>>,
    PageForm(f): PageForm<VerifyForm>,
) -> Result<Response, PageError> {
    // A cross-site post of an attacker's user code would log the victim in to the attacker's
    // device (with one connector and no approval screen, without a click).
    idp.same_origin(&headers)?;
    let source = address(addr);
    if !idp.device_limits.admit_user_code(&source, idp.clock.now()) {
        tracing::warn!(target: "audit", %source, "device code entry throttled");
        return Ok(throttled());
    }
    let user_code = f.user_code.trim().to_ascii_uppercase();
    let invalid = || PageError::bad("Invalid or expired code. Check the code on your device and try again.");
    if !well_formed(&user_code) {
        return Err(invalid());
    }
    let hash = idp
        .store
        .get(&format!("{USER_CODE_PREFIX}{user_code}"))
        .await
        .map_err(IdpError::from)?
        .ok_or_else(invalid)?;
    let hash = String::from_utf8(hash.value).map_err(|_| invalid())?;
    let kv = idp
        .store
        .get(&format!("{DEVICE_PREFIX}{hash}"))
        .await
        .map_err(IdpError::from)?
        .ok_or_else(invalid)?;
    let rec: DeviceRecord = serde_json::from_slice(&kv.value).map_err(IdpError::from)?;
    // This browser keeps a fresh random value; the login carries only its digest (its signed
    // payload is readable), so the login can finish only where the value is.
    let secret = random_token(idp.rng.as_ref());
    let login = DeviceLogin {
        user_code,
        browser: sha256_b64(secret.as_bytes()),
    };
    let challenge = sha256_b64(idp.device_verifier(&login).as_bytes());
    let mut req = AuthRequest::new(
        rec.client_id,
        idp.device_callback_path(),
        rec.scopes,
        idp.seal_device_login(&login)?,
    );
    req.code_challenge = Some(challenge);
    req.code_challenge_method = Some("S256".into());
    req.device = Some(login);
    // The same chooser as any login: a device can be logged in through any connector.
    let mut resp = idp.choose(req).await?;
    // (kept as long as a user code lives: the login cannot finish after that)
    let cookie = login_state_cookie(DEVICE_LOGIN, &secret, TTL.as_secs());
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

#[derive(Deserialize)]
pub(crate) struct CallbackQuery {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    /// `access_denied` when the user cancelled on the confirmation screen.
    #[serde(default)]
    error: String,
}

/// The page of a device login's callback in a browser that did not enter its user code.
fn other_browser() -> PageError {
    PageError {
        status: StatusCode::FORBIDDEN,
        message: "This device login was started in another browser, so it was not completed. If you did not \
                  enter the code shown on your own device, someone may have sent you this link to get access \
                  to your account. To log in a device, enter its code in this browser."
            .into(),
        cause: None,
        back: None,
    }
}

/// `GET /device/callback`: in the browser that entered the user code, redeems the code for the
/// device and tells the user to go back; anywhere else (or after a cancel), denies the device.
pub(crate) async fn device_callback(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    addr: Option<Extension<ClientAddr>>,
    audit: Option<Extension<RequestAudit>>,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, PageError> {
    let audit = audit.map(|Extension(a)| a);
    crate::audit::device_approval(audit.as_ref());
    let invalid = || PageError::bad("This device login is invalid or has expired. Start again on your device.");
    // Guessing here is throttled like entering a user code on the page.
    let source = address(addr);
    if !idp.device_limits.admit_user_code(&source, idp.clock.now()) {
        tracing::warn!(target: "audit", %source, "device callback throttled");
        return Ok(throttled());
    }
    // The state is the login's binding, sealed by `verify_code`.
    let Some(login) = idp.open_device_login(&q.state) else {
        return Err(invalid());
    };
    let user_code_key = format!("{USER_CODE_PREFIX}{}", login.user_code);
    // Looked up, not taken: only a callback whose code redeems may use the user code up.
    let Some(kv) = idp.store.get(&user_code_key).await.map_err(IdpError::from)? else {
        return Err(invalid());
    };
    let key = format!("{DEVICE_PREFIX}{}", String::from_utf8(kv.value).map_err(|_| invalid())?);
    let kv = idp.store.get(&key).await.map_err(IdpError::from)?.ok_or_else(invalid)?;
    let rec: DeviceRecord = serde_json::from_slice(&kv.value).map_err(IdpError::from)?;
    let client = idp.clients.get(&rec.client_id).await?.ok_or_else(invalid)?;
    crate::audit::client(audit.as_ref(), &client.id);
    // Only the browser that entered the user code holds the value whose digest was signed.
    let browser = login.browser.as_bytes();
    let mut holds_one = false;
    let here = crate::cookies::cookies(&headers)
        .filter(|(k, _)| *k == DEVICE_LOGIN)
        .take(MAX_PENDING_LOOKS)
        .any(|(_, v)| {
            holds_one = true;
            ct_eq(sha256_b64(v.as_bytes()).as_bytes(), browser)
        });
    if !here && holds_one && q.error.is_empty() {
        // This browser entered a code, just not this one (a later one replaced its cookie: two
        // `kfsec login`s, or the code form sent again): refused, but the device is not denied
        // and its code not used up — entering it again here finishes it.
        tracing::info!(target: "audit", client = %client.id, "device login refused: this browser entered another code since");
        return Err(PageError {
            status: StatusCode::FORBIDDEN,
            message: "This browser entered another device code since this login began. Enter this device's code again to finish its login.".into(),
            cause: None,
            back: None,
        });
    }
    if !here || !q.error.is_empty() {
        // Denied for good: the user code is used up and the device told at its next poll.
        if idp.store.take(&user_code_key).await.map_err(IdpError::from)?.is_none() {
            return Err(invalid());
        }
        settle(&idp, &key, |rec| rec.denied = true).await?;
        crate::audit::failed(audit.as_ref(), OAuthCode::AccessDenied.as_str());
        if !here {
            tracing::warn!(target: "audit", client = %client.id, "device login refused: finished in a browser that did not enter its code");
            return Err(other_browser());
        }
        return Ok(cleared(pages::device_cancelled()));
    }
    let verifier = idp.device_verifier(&login);
    let tokens = idp
        .redeem_code(&client, &q.code, &idp.device_callback_path(), Some(&verifier))
        .await
        .map_err(|e| {
            tracing::warn!(target: "audit", error = %e.error, "device login code exchange failed");
            invalid()
        })?;
    if idp.store.take(&user_code_key).await.map_err(IdpError::from)?.is_none() {
        return Err(invalid());
    }
    crate::audit::device_approved(audit.as_ref(), &tokens);
    settle(&idp, &key, |rec| rec.tokens = Some(tokens.clone())).await?;
    Ok(cleared(pages::device_done()))
}

/// `resp` clearing the browser's [`DEVICE_LOGIN`] cookie (its login is over).
fn cleared(mut resp: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&login_state_cookie(DEVICE_LOGIN, "", 0)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// Records a device login's outcome (its user code already taken), over concurrent polls.
async fn settle(idp: &Idp, key: &str, outcome: impl Fn(&mut DeviceRecord)) -> Result<(), PageError> {
    let gone = || PageError::bad("This device login has expired. Start again on your device.");
    for _ in 0..3 {
        let kv = idp.store.get(key).await.map_err(IdpError::from)?.ok_or_else(gone)?;
        let mut rec: DeviceRecord = serde_json::from_slice(&kv.value).map_err(IdpError::from)?;
        outcome(&mut rec);
        let body = serde_json::to_vec(&rec).map_err(IdpError::from)?;
        // (the code's own end is kept: finishing the login does not give the device longer)
        let left = remaining(&kv, idp.clock.now());
        match idp.store.update(key, body, Some(kv.mod_revision), Some(left)).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => {}
            Err(StoreError::NotFound(_)) => return Err(gone()),
            Err(e) => return Err(IdpError::from(e).into()),
        }
    }
    Err(gone())
}

/// Token polling for a device code.
pub(crate) async fn poll(idp: &Idp, client: &Client, device_code: &str) -> Result<TokenResponse, OAuthError> {
    if device_code.is_empty() || device_code.len() > 128 {
        return Err(OAuthError::invalid_request("Required param: device_code."));
    }
    let key = format!("{DEVICE_PREFIX}{}", sha256_hex(device_code.as_bytes()));
    let Some(kv) = idp.store.get(&key).await.map_err(IdpError::from)? else {
        return Err(OAuthError::bad(OAuthCode::ExpiredToken, "The device code has expired."));
    };
    let mut rec: DeviceRecord = serde_json::from_slice(&kv.value).map_err(IdpError::from)?;
    if rec.client_id != client.id {
        return Err(OAuthError::invalid_grant(
            "The device code was issued to another client.",
        ));
    }
    if rec.denied {
        return match idp.store.delete(&key, Some(kv.mod_revision)).await {
            Ok(_) | Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {
                Err(OAuthError::bad(OAuthCode::AccessDenied, "The device login was denied."))
            }
            Err(e) => Err(IdpError::from(e).into()),
        };
    }
    if let Some(tokens) = rec.tokens.take() {
        return match idp.store.delete(&key, Some(kv.mod_revision)).await {
            Ok(_) => Ok(tokens),
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {
                Err(OAuthError::invalid_grant("The device code was already used."))
            }
            Err(e) => Err(IdpError::from(e).into()),
        };
    }
    let at = idp.clock.now();
    let now = at.as_secs();
    let interval = rec.interval.max(INTERVAL);
    let too_fast = rec.last_poll != 0 && now < rec.last_poll.saturating_add(interval);
    rec.last_poll = now;
    if too_fast {
        rec.interval = interval + INTERVAL;
    }
    let _ = idp
        .store
        .update(
            &key,
            serde_json::to_vec(&rec).map_err(IdpError::from)?,
            Some(kv.mod_revision),
            Some(remaining(&kv, at)),
        )
        .await;
    if too_fast {
        return Err(OAuthError::bad(OAuthCode::SlowDown, "Polling too frequently."));
    }
    Err(OAuthError::bad(
        OAuthCode::AuthorizationPending,
        "The user has not completed the login yet.",
    ))
}
