//! The per-request audit context: [`RequestAudit`], created by the gateway's edge for every
//! front-door request while auditing is on and carried in the request's extensions; surfaces
//! fill in what they learn (caller, verb and object, authorization decision, identity action),
//! the edge writes the response's status and emits the request's Event(s) when the response is
//! complete. Also the standalone identity events of background actions ([`background`]), the
//! `Audit-ID` rules ([`audit_id_from_client`], [`new_audit_id`]) and the vocabulary of identity
//! events ([`identity`]).
//!
//! Security invariants: nothing here reads a request or response body or a header other than
//! what the edge passes in; the request body is kept only when the policy's level for the
//! request allows it ([`RequestAudit::request_object`]) and is dropped again when the final
//! level does not; an Event is emitted at most once per stage; a client's `Audit-ID` is reused
//! only when it is short and of a safe charset (so it cannot forge log lines or blow up memory).

use std::borrow::Cow;
use std::sync::{Arc, Mutex, MutexGuard};

use kfsec_types::identity::UserInfo;
use kfsec_types::{Clock, Rng, UnixTime};

use crate::Auditor;
use crate::encode::{Annotations, EventView, StaticAnnotations, Text};
use crate::event::{Event, IDENTITY_GROUP, Level, ObjectRef, ResponseStatus, Stage};
use crate::policy::{Attributes, ResourceAttributes};

/// The request and response header carrying the audit id (as kube-apiserver's).
pub const AUDIT_ID_HEADER: &str = "audit-id";
/// Annotation: `allow` or `forbid`, as kube-apiserver's authorizer filter writes it.
pub const DECISION_ANNOTATION: &str = "authorization.k8s.io/decision";
/// Annotation: the authorizer's reason (RBAC's `RBAC: allowed by …`, a route's rule).
pub const AUTHZ_REASON_ANNOTATION: &str = "authorization.k8s.io/reason";
/// Annotation of identity events: the connector (`local`, `ldap`, an upstream's id).
pub const CONNECTOR_ANNOTATION: &str = "kfsec.io/connector";
/// Annotation of identity events: why an action failed or happened (`invalid credentials`).
pub const REASON_ANNOTATION: &str = "kfsec.io/reason";
/// Annotation of token events: the OAuth2 grant type.
pub const GRANT_TYPE_ANNOTATION: &str = "kfsec.io/grant-type";
/// Annotation of identity events: `success` or `failure` (a failed login's response is often a
/// 200 page that says so).
pub const OUTCOME_ANNOTATION: &str = "kfsec.io/outcome";
/// Annotation of identity events: the OAuth2 client the action was for.
pub const CLIENT_ANNOTATION: &str = "kfsec.io/client";
/// The user of a request nobody authenticated for.
pub const ANONYMOUS: &str = "system:anonymous";
/// The longest client `Audit-ID` reused; longer ones are replaced by a generated id.
pub const MAX_CLIENT_AUDIT_ID: usize = 128;

/// The identity events' vocabulary: resources (objectRef.resource, group [`IDENTITY_GROUP`])
/// and verbs.
pub mod identity {
    /// Logins (objectRef.name: the account that logged in or was attempted).
    pub const LOGINS: &str = "logins";
    /// Browser sessions (logout).
    pub const SESSIONS: &str = "sessions";
    /// OAuth2 / OIDC tokens (issue, refresh, revoke).
    pub const TOKENS: &str = "tokens";
    /// Account lockouts after repeated failures.
    pub const LOCKOUTS: &str = "lockouts";
    /// Device-flow user codes (approve).
    pub const DEVICECODES: &str = "devicecodes";
    /// Token signing keys (rotate).
    pub const SIGNINGKEYS: &str = "signingkeys";
    /// Serving and client certificates, CAs (rotate).
    pub const CERTIFICATES: &str = "certificates";
    /// kfsec's configuration (reload).
    pub const CONFIG: &str = "config";

    /// A login (success or failure; the response status tells which).
    pub const LOGIN: &str = "login";
    /// A logout.
    pub const LOGOUT: &str = "logout";
    /// An account locked out.
    pub const LOCKOUT: &str = "lockout";
    /// Tokens issued.
    pub const ISSUE: &str = "issue";
    /// Tokens refreshed.
    pub const REFRESH: &str = "refresh";
    /// Tokens revoked.
    pub const REVOKE: &str = "revoke";
    /// A device code approved (or denied).
    pub const APPROVE: &str = "approve";
    /// A key or certificate rotated.
    pub const ROTATE: &str = "rotate";
    /// Configuration reloaded.
    pub const RELOAD: &str = "reload";
}

/// Whether `value` (a client's `Audit-ID` header) is reused as the request's audit id: 1 to
/// [`MAX_CLIENT_AUDIT_ID`] characters of `A-Z a-z 0-9 - _ . :` (UUIDs and the usual trace ids).
pub fn audit_id_from_client(value: &[u8]) -> Option<&str> {
    let ok = !value.is_empty()
        && value.len() <= MAX_CLIENT_AUDIT_ID
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok { std::str::from_utf8(value).ok() } else { None }
}

/// The longest `User-Agent` an Event records, in bytes (a hostile client's huge header is cut).
pub const MAX_USER_AGENT: usize = 1024;

/// A `User-Agent` header's value as an Event records it: as text (invalid UTF-8 replaced), cut
/// to at most [`MAX_USER_AGENT`] bytes at a character boundary and then marked `…`. The thread's
/// last one is shared with its next request that sent the same bytes (most often the same
/// client's), instead of converted and allocated again.
pub fn user_agent(raw: &[u8]) -> Arc<str> {
    thread_local! {
        static LAST: std::cell::RefCell<(Vec<u8>, Option<Arc<str>>)> = const { std::cell::RefCell::new((Vec::new(), None)) };
    }
    let remembered = LAST.try_with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        let (last_raw, last) = &mut *last;
        match last {
            Some(text) if last_raw.as_slice() == raw => Some(text.clone()),
            _ => {
                let text: Arc<str> = bounded_lossy(raw, MAX_USER_AGENT).into();
                last_raw.clear();
                if raw.len() <= MAX_USER_AGENT {
                    last_raw.extend_from_slice(raw);
                    *last = Some(text.clone());
                } else {
                    *last = None;
                }
                Some(text)
            }
        }
    });
    // (Without the thread's memo, at thread exit: made on its own.)
    remembered
        .ok()
        .flatten()
        .unwrap_or_else(|| bounded_lossy(raw, MAX_USER_AGENT).into())
}

/// `bytes` as text (invalid UTF-8 replaced), cut to at most `max` bytes at a character boundary
/// and marked `…` when cut.
fn bounded_lossy(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= max {
        return text.into_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = text[..end].to_owned();
    out.push('…');
    out
}

/// A random (version 4) UUID from `rng`, as kube-apiserver generates audit ids.
pub fn new_audit_id(rng: &dyn Rng) -> String {
    let mut b = [0u8; 16];
    rng.fill(&mut b);
    AuditId::uuid(b).as_str().to_owned()
}

/// A request's audit id: a generated UUID's text, kept inline (no allocation per request), or
/// any other id (a client's, a test's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditId(IdRepr);

#[derive(Debug, Clone, PartialEq, Eq)]
enum IdRepr {
    /// A version 4 UUID's text ([`uuid_v4`]: only hex digits and dashes).
    Uuid([u8; 36]),
    /// Another id.
    Text(String),
}

impl AuditId {
    fn uuid(b: [u8; 16]) -> Self {
        Self(IdRepr::Uuid(uuid_v4(b)))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            IdRepr::Uuid(b) => std::str::from_utf8(b).unwrap_or_default(),
            IdRepr::Text(s) => s,
        }
    }
}

impl From<String> for AuditId {
    fn from(s: String) -> Self {
        Self(IdRepr::Text(s))
    }
}

impl From<&str> for AuditId {
    fn from(s: &str) -> Self {
        Self(IdRepr::Text(s.to_owned()))
    }
}

/// Random bytes drawn per [`AuditIds`] refill (256 ids).
const ID_POOL: usize = 4096;

/// Audit ids for a hot path: version 4 UUIDs from `rng`, drawn 256 at a time (one call to the
/// system generator per 256 requests instead of one per request) into a pool of the calling
/// thread's own, so threads never wait on each other or share a lock's cache line. Each pooled
/// byte is used once.
pub struct AuditIds {
    rng: std::sync::Arc<dyn Rng>,
    /// Tells this instance's pooled bytes from another's on the same thread.
    instance: u64,
}

impl std::fmt::Debug for AuditIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditIds").finish_non_exhaustive()
    }
}

/// A thread's pool: the instance it was drawn for, its bytes, how many are used.
type IdPool = (u64, Box<[u8; ID_POOL]>, usize);

thread_local! {
    static ID_POOLS: std::cell::RefCell<Option<IdPool>> = const { std::cell::RefCell::new(None) };
}

impl AuditIds {
    /// Ids from `rng`.
    pub fn new(rng: std::sync::Arc<dyn Rng>) -> Self {
        static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            rng,
            instance: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The next id ([`new_audit_id`]'s format).
    pub fn next_id(&self) -> AuditId {
        let mut b = [0u8; 16];
        ID_POOLS.with_borrow_mut(|pool| {
            let (instance, bytes, used) =
                pool.get_or_insert_with(|| (self.instance, Box::new([0u8; ID_POOL]), ID_POOL));
            if *instance != self.instance || *used + 16 > ID_POOL {
                self.rng.fill(&mut bytes[..]);
                *instance = self.instance;
                *used = 0;
            }
            b.copy_from_slice(&bytes[*used..*used + 16]);
            *used += 16;
        });
        AuditId::uuid(b)
    }
}

/// What request contexts record through: the auditor and the clock.
pub struct Recorder {
    auditor: Auditor,
    clock: Arc<dyn Clock>,
}

/// One [`Recorder`] per thread for a hot path: each request's context holds its thread's (one
/// reference count of the thread's own), not the shared auditor's and clock's, whose counts
/// every core would otherwise write on every request.
pub struct Recorders {
    auditor: Auditor,
    clock: Arc<dyn Clock>,
    /// Tells this instance's recorders from another's on the same thread.
    instance: u64,
}

impl std::fmt::Debug for Recorders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorders").finish_non_exhaustive()
    }
}

thread_local! {
    static RECORDERS: std::cell::RefCell<Option<(u64, Arc<Recorder>)>> = const { std::cell::RefCell::new(None) };
}

impl Recorders {
    /// Recorders through `auditor` and `clock`.
    pub fn new(auditor: Auditor, clock: Arc<dyn Clock>) -> Self {
        static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            auditor,
            clock,
            instance: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Whether anything can be recorded ([`Auditor::enabled`]).
    pub fn enabled(&self) -> bool {
        self.auditor.enabled()
    }

    /// The calling thread's recorder.
    pub fn here(&self) -> Arc<Recorder> {
        self.with_here(Arc::clone)
    }

    /// `f` of the calling thread's recorder, lent (no reference count taken and given back).
    /// The thread's slot stays borrowed while `f` runs: `f` must not ask for the thread's
    /// recorder again (`here`, `with_here`), which would panic.
    pub fn with_here<T>(&self, f: impl FnOnce(&Arc<Recorder>) -> T) -> T {
        RECORDERS.with_borrow_mut(|slot| match slot {
            Some((instance, r)) if *instance == self.instance => f(r),
            _ => f(&slot
                .insert((
                    self.instance,
                    Arc::new(Recorder {
                        auditor: self.auditor.clone(),
                        clock: self.clock.clone(),
                    }),
                ))
                .1),
        })
    }
}

/// `b` as a version 4 UUID's text (version and variant bits set).
fn uuid_v4(mut b: [u8; 16]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut text = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    text
}

/// Query parameters whose values are credentials, single-use codes or bearer handles (OAuth2
/// and OIDC callbacks, the device flow, the approval screen's `req`, PKCE verifiers, token
/// exchange, presigned object-store URLs): their values are recorded as `REDACTED`.
const SECRET_PARAMS: &[&str] = &[
    "code",
    "state",
    "req",
    "user_code",
    "device_code",
    "token",
    "access_token",
    "id_token",
    "id_token_hint",
    "refresh_token",
    "password",
    "client_secret",
    "code_verifier",
    "client_assertion",
    "subject_token",
    "actor_token",
    "api_key",
    "apikey",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
];

fn secret_param(pair: &str) -> bool {
    url::form_urlencoded::parse(pair.as_bytes())
        .next()
        .is_some_and(|(k, _)| SECRET_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(&k)))
}

/// A query's parameters with the separator before each (`&` or `;`, which some servers also
/// split on; the first has none).
fn query_pairs(query: &str) -> impl Iterator<Item = (Option<char>, &str)> {
    let mut sep = None;
    query.split_inclusive(['&', ';']).map(move |part| {
        let this = sep;
        let (pair, next) = match part.strip_suffix(['&', ';']) {
            Some(p) => (p, part.chars().last()),
            None => (part, None),
        };
        sep = next;
        (this, pair)
    })
}

/// `path_and_query` as an Event's `requestURI`: the values of [`SECRET_PARAMS`] replaced by `REDACTED` (the
/// parameter's name kept, so the log still says a code was presented).
pub fn redacted_uri(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    if !query_pairs(query).any(|(_, p)| secret_param(p)) {
        return path_and_query.to_owned();
    }
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    out.push('?');
    for (sep, pair) in query_pairs(query) {
        out.extend(sep);
        match pair.split_once('=') {
            Some((k, _)) if secret_param(pair) => {
                out.push_str(k);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    // A trailing separator is not followed by a pair.
    out.extend(query.chars().last().filter(|c| matches!(c, '&' | ';')));
    out
}

/// The Kubernetes `Status` reason of an HTTP failure code (what kube-apiserver's Status bodies
/// carry for it), `None` for codes without one.
pub fn status_reason(code: u16) -> Option<&'static str> {
    Some(match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        502 | 503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => return None,
    })
}

/// What the edge knows when a request arrives.
#[derive(Debug)]
pub struct Begin {
    /// The audit id ([`audit_id_from_client`] or [`AuditIds::next_id`]).
    pub audit_id: AuditId,
    /// The request's method (its lower-cased form is the default, non-resource verb).
    pub method: http::Method,
    /// Path and query, as routed (normalised).
    pub request_uri: String,
    /// Trusted proxies' forwarded addresses, then the peer address (shared: a connection's
    /// requests can hand on one list).
    pub source_ips: Arc<[String]>,
    /// The client's `User-Agent` ([`user_agent`]).
    pub user_agent: Option<Arc<str>>,
}

/// The audit context of one request: cheap to clone (one `Arc`), shared by the edge and the
/// surfaces through the request's extensions.
#[derive(Clone)]
pub struct RequestAudit(Arc<Inner>);

impl std::fmt::Debug for RequestAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestAudit")
            .field("audit_id", &self.0.audit_id)
            .finish()
    }
}

struct Inner {
    recorder: Arc<Recorder>,
    audit_id: AuditId,
    received: UnixTime,
    state: Mutex<State>,
}

struct State {
    method: http::Method,
    request_uri: String,
    source_ips: Arc<[String]>,
    user_agent: Option<Arc<str>>,
    user: Option<Arc<UserInfo>>,
    impersonated: Option<UserInfo>,
    /// `None`: a non-resource request with the lower-cased method as its verb.
    verb: Option<String>,
    object: Option<ObjectRef>,
    annotations: StaticAnnotations,
    request_object: Option<serde_json::Value>,
    failure: Option<(String, String)>,
    long_running: bool,
    /// Stages already emitted (`RequestReceived`, `ResponseStarted`, `ResponseComplete`).
    emitted: [bool; 3],
    /// A stage was recorded before the response's end: every stage is recorded in sequence
    /// ([`crate::Sink::record_stage`]).
    in_sequence: bool,
}

fn anonymous() -> UserInfo {
    UserInfo {
        username: ANONYMOUS.to_owned(),
        groups: vec!["system:unauthenticated".to_owned()],
        ..UserInfo::default()
    }
}

impl State {
    fn verb(&self) -> String {
        self.verb_str().into_owned()
    }

    /// The verb: the one a surface set, else the lower-cased method (no allocation for the
    /// standard methods).
    fn verb_str(&self) -> std::borrow::Cow<'_, str> {
        use http::Method;
        if let Some(v) = &self.verb {
            return std::borrow::Cow::Borrowed(v);
        }
        std::borrow::Cow::Borrowed(match self.method {
            Method::GET => "get",
            Method::POST => "post",
            Method::PUT => "put",
            Method::DELETE => "delete",
            Method::PATCH => "patch",
            Method::HEAD => "head",
            Method::OPTIONS => "options",
            _ => return std::borrow::Cow::Owned(self.method.as_str().to_ascii_lowercase()),
        })
    }
}

impl RequestAudit {
    /// The context of a new request; `None` when `auditor` is disabled (nothing allocated).
    pub fn begin(auditor: &Auditor, clock: &Arc<dyn Clock>, begin: Begin) -> Option<Self> {
        if !auditor.enabled() {
            return None;
        }
        let recorder = Arc::new(Recorder {
            auditor: auditor.clone(),
            clock: clock.clone(),
        });
        Some(Self::begin_with(&recorder, begin))
    }

    /// The context of a new request recording through `recorder` (a hot path's: one per thread,
    /// [`Recorders::here`]).
    pub fn begin_with(recorder: &Arc<Recorder>, begin: Begin) -> Self {
        Self(Arc::new(Inner {
            recorder: recorder.clone(),
            audit_id: begin.audit_id,
            received: recorder.clock.now(),
            state: Mutex::new(State {
                method: begin.method,
                request_uri: begin.request_uri,
                source_ips: begin.source_ips,
                user_agent: begin.user_agent,
                user: None,
                impersonated: None,
                verb: None,
                object: None,
                annotations: StaticAnnotations::new(),
                request_object: None,
                failure: None,
                long_running: false,
                emitted: [false; 3],
                in_sequence: false,
            }),
        }))
    }

    /// The request's context, or `None` when auditing is off.
    pub fn from_extensions(ext: &http::Extensions) -> Option<RequestAudit> {
        ext.get::<RequestAudit>().cloned()
    }

    /// The request's audit id (also in the `Audit-ID` response header).
    pub fn audit_id(&self) -> &str {
        self.0.audit_id.as_str()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The authenticated caller (set by the gateway; `system:anonymous` when never set).
    pub fn set_user(&self, user: UserInfo) {
        self.set_user_shared(Arc::new(user));
    }

    /// [`RequestAudit::set_user`] of a user a hot path holds already (one per caller, not one
    /// built per request).
    pub fn set_user_shared(&self, user: Arc<UserInfo>) {
        self.state().user = Some(user);
    }

    /// The effective user after impersonation.
    pub fn impersonated(&self, user: UserInfo) {
        self.state().impersonated = Some(user);
    }

    /// A resource request: its verb and the object acted on.
    pub fn resource(&self, verb: &str, object: ObjectRef) {
        let mut s = self.state();
        s.verb = Some(verb.to_owned());
        s.object = Some(object);
        if verb == "watch" {
            s.long_running = true;
        }
    }

    /// A non-resource request with `verb` (the default: the lower-cased method, no objectRef).
    pub fn non_resource(&self, verb: &str) {
        let mut s = self.state();
        s.verb = Some(verb.to_owned());
        s.object = None;
    }

    /// An identity action (the request's Event becomes it): objectRef `{apiGroup:
    /// identity.kfsec.io, resource, name}` and the verb (see [`identity`]). `name` is the account
    /// (for a failed login: the attempted one), a client id or a key id — never a secret.
    pub fn identity(&self, resource: &str, verb: &str, name: Option<&str>) {
        self.resource(verb, identity_object(resource, name));
    }

    /// Sets the objectRef's name after the fact (a login whose account is known only later).
    pub fn object_name(&self, name: &str) {
        if let Some(o) = self.state().object.as_mut() {
            o.name = Some(name.to_owned());
        }
    }

    /// The authorization decision: `authorization.k8s.io/decision` `allow` | `forbid`, and
    /// `authorization.k8s.io/reason` when `reason` is not empty.
    pub fn decision(&self, allowed: bool, reason: impl Into<Text>) {
        let reason = reason.into();
        let mut s = self.state();
        s.annotations.insert(
            Cow::Borrowed(DECISION_ANNOTATION),
            if allowed { "allow" } else { "forbid" },
        );
        if !reason.is_empty() {
            s.annotations.insert(Cow::Borrowed(AUTHZ_REASON_ANNOTATION), reason);
        }
    }

    /// Sets annotation `key` (the last value wins). Never pass a secret.
    pub fn annotate(&self, key: impl Into<Cow<'static, str>>, value: impl Into<Text>) {
        self.state().annotations.insert(key.into(), value.into());
    }

    /// Sets annotation `key` unless it is set already.
    pub fn annotate_default(&self, key: impl Into<Cow<'static, str>>, value: impl Into<Text>) {
        self.state().annotations.insert_default(key.into(), || value);
    }

    /// The failure's Kubernetes reason and message for `responseStatus` (defaults: the reason
    /// of the status code, no message).
    pub fn failure(&self, reason: &str, message: &str) {
        self.state().failure = Some((reason.to_owned(), message.to_owned()));
    }

    /// Marks the request long-running (a watch, a stream): `ResponseStarted` at the headers,
    /// `ResponseComplete` when the body ends. Verb `watch` implies it.
    pub fn long_running(&self) {
        self.state().long_running = true;
    }

    /// Whether the request is long-running.
    pub fn is_long_running(&self) -> bool {
        self.state().long_running
    }

    fn level_now(&self, s: &State) -> Level {
        let anon;
        let user = match &s.user {
            Some(u) => &**u,
            None => {
                anon = anonymous();
                &anon
            }
        };
        let verb = s.verb();
        let path = s.request_uri.split('?').next().unwrap_or_default();
        let attrs = attributes(user, &verb, s.object.as_ref(), path);
        self.0.recorder.auditor.decide(&attrs).level
    }

    /// Whether the policy's level for what is known of the request so far is Request or more
    /// (so the surface should hand its body to [`RequestAudit::request_object`]).
    pub fn wants_request_body(&self) -> bool {
        let s = self.state();
        s.object.is_some() && self.level_now(&s) >= Level::Request
    }

    /// The request body, kept only when the level allows it (checked again when emitted).
    /// Never pass a body carrying credentials.
    pub fn request_object(&self, body: serde_json::Value) {
        let mut s = self.state();
        if s.object.is_some() && self.level_now(&s) >= Level::Request {
            s.request_object = Some(body);
        }
    }

    /// A further identity event of this request, emitted now as its own Event with this
    /// request's audit id, user and client (e.g. the `lockout` a failed `login` caused).
    /// It is recorded in sequence with the request's own stages (which then are too).
    pub fn side_event(&self, resource: &str, verb: &str, name: Option<&str>, annotations: &[(&str, &str)], code: u16) {
        let mut s = self.state();
        let user = s.user.as_deref().cloned().unwrap_or_else(anonymous);
        let object = identity_object(resource, name);
        let attrs = attributes(&user, verb, Some(&object), "");
        let decision = self.0.recorder.auditor.decide(&attrs);
        if decision.level == Level::None || decision.omit_stages.contains(&Stage::ResponseComplete) {
            return;
        }
        let event = Event {
            kind: "Event".to_owned(),
            api_version: "audit.k8s.io/v1".to_owned(),
            level: decision.level.min(Level::Metadata),
            audit_id: self.0.audit_id.as_str().to_owned(),
            stage: Stage::ResponseComplete,
            request_uri: s.request_uri.clone(),
            verb: verb.to_owned(),
            user,
            impersonated_user: None,
            source_ips: s.source_ips.to_vec(),
            user_agent: s.user_agent.as_deref().map(str::to_owned),
            object_ref: Some(object),
            response_status: Some(response_status(code, None)),
            request_object: None,
            response_object: None,
            request_received_timestamp: self.0.received.to_rfc3339_micros(),
            stage_timestamp: self.0.recorder.clock.now().to_rfc3339_micros(),
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        s.in_sequence = true;
        drop(s);
        self.0.recorder.auditor.record_stage(&EventView::of(&event));
    }

    /// The response's headers are out with `code`: a long-running request emits
    /// `RequestReceived` and `ResponseStarted` (as the policy allows) and returns `true` (call
    /// [`RequestAudit::complete`] when the body ends); any other request emits its events now
    /// and returns `false`.
    pub fn response_started(&self, code: u16) -> bool {
        if self.is_long_running() {
            self.emit(code, &[Stage::RequestReceived, Stage::ResponseStarted]);
            true
        } else {
            self.complete(code);
            false
        }
    }

    /// The response is complete with `code`: emits `RequestReceived` (unless already) and
    /// `ResponseComplete`, as the policy allows. Later calls do nothing.
    pub fn complete(&self, code: u16) {
        self.emit(code, &[Stage::RequestReceived, Stage::ResponseComplete]);
    }

    /// The handler panicked and the request is answered 500: emits `RequestReceived` (unless
    /// already) and a `Panic` Event (responseStatus 500 `InternalError`, `message`), as
    /// kube-apiserver's audit filter does when it recovers a panic. Later calls do nothing.
    /// `message` must not carry the panic's own text (it may hold anything): say where the
    /// detail was logged.
    pub fn panicked(&self, message: &str) {
        self.failure("InternalError", message);
        self.emit(500, &[Stage::RequestReceived, Stage::Panic]);
    }

    fn emit(&self, code: u16, stages: &[Stage]) {
        let mut s = self.state();
        let verb = s.verb_str();
        let user = s.user.as_deref().unwrap_or_else(|| anonymous_ref());
        let path = s.request_uri.split('?').next().unwrap_or_default();
        let decision = self
            .0
            .recorder
            .auditor
            .decide(&attributes(user, &verb, s.object.as_ref(), path));
        if decision.level == Level::None {
            drop(verb);
            s.emitted = [true; 3];
            return;
        }
        // Bodies are recorded for resource requests only, as kube-apiserver does.
        let level = if s.object.is_none() {
            decision.level.min(Level::Metadata)
        } else {
            decision.level
        };
        let mut due = [None; 3];
        let mut emitted = s.emitted;
        for &stage in stages {
            let i = match stage {
                Stage::RequestReceived => 0,
                Stage::ResponseStarted => 1,
                Stage::ResponseComplete | Stage::Panic => 2,
            };
            if !std::mem::replace(&mut emitted[i], true) && !decision.omit_stages.contains(&stage) {
                due[i] = Some(stage);
            }
        }
        // Stages recorded by one call are recorded in order by this thread; a request whose
        // stages span calls (a long-running one: `ResponseStarted` at the headers, the rest when
        // the body ends, maybe on another thread) records them all in sequence.
        let last_call = stages
            .iter()
            .any(|s| matches!(s, Stage::ResponseComplete | Stage::Panic));
        let in_sequence = s.in_sequence || (!last_call && due.iter().any(Option::is_some));
        let received = self.0.received.rfc3339_micros();
        let now = self.0.recorder.clock.now().rfc3339_micros();
        static NO_ANNOTATIONS: StaticAnnotations = StaticAnnotations::new();
        for stage in due.into_iter().flatten() {
            let status = (stage != Stage::RequestReceived).then(|| {
                let failure = s.failure.as_ref().map(|(r, m)| (r.as_str(), m.as_str()));
                response_status(code, failure)
            });
            let view = EventView {
                kind: "Event",
                api_version: "audit.k8s.io/v1",
                level,
                audit_id: self.0.audit_id.as_str(),
                stage,
                request_uri: &s.request_uri,
                verb: &verb,
                user,
                impersonated_user: s.impersonated.as_ref(),
                source_ips: &s.source_ips,
                user_agent: s.user_agent.as_deref(),
                object_ref: s.object.as_ref(),
                response_status: status.as_ref(),
                request_object: if level >= Level::Request {
                    s.request_object.as_ref()
                } else {
                    None
                },
                response_object: None,
                request_received_timestamp: received.as_str(),
                stage_timestamp: if stage == Stage::RequestReceived {
                    received.as_str()
                } else {
                    now.as_str()
                },
                annotations: Annotations::Static(if stage == Stage::RequestReceived {
                    &NO_ANNOTATIONS
                } else {
                    &s.annotations
                }),
            };
            if in_sequence {
                self.0.recorder.auditor.record_stage(&view);
            } else {
                self.0.recorder.auditor.record_view(&view);
            }
        }
        drop(verb);
        s.emitted = emitted;
        s.in_sequence = in_sequence;
    }
}

/// The user of requests nobody authenticated ([`ANONYMOUS`]), built once.
fn anonymous_ref() -> &'static UserInfo {
    static ANON: std::sync::OnceLock<UserInfo> = std::sync::OnceLock::new();
    ANON.get_or_init(anonymous)
}

fn identity_object(resource: &str, name: Option<&str>) -> ObjectRef {
    ObjectRef {
        resource: Some(resource.to_owned()),
        name: name.filter(|n| !n.is_empty()).map(str::to_owned),
        api_group: Some(IDENTITY_GROUP.to_owned()),
        api_version: Some("v1".to_owned()),
        ..ObjectRef::default()
    }
}

fn attributes<'a>(user: &'a UserInfo, verb: &'a str, object: Option<&'a ObjectRef>, path: &'a str) -> Attributes<'a> {
    Attributes {
        user,
        verb,
        resource: object.map(|o| ResourceAttributes {
            api_group: o.api_group.as_deref().unwrap_or_default(),
            resource: o.resource.as_deref().unwrap_or_default(),
            subresource: o.subresource.as_deref().unwrap_or_default(),
            namespace: o.namespace.as_deref().unwrap_or_default(),
            name: o.name.as_deref().unwrap_or_default(),
        }),
        path,
    }
}

fn response_status(code: u16, failure: Option<(&str, &str)>) -> ResponseStatus {
    if code < 400 {
        return ResponseStatus {
            code,
            ..ResponseStatus::default()
        };
    }
    let (reason, message) = match failure {
        Some((r, m)) => (Some(r.to_owned()), Some(m.to_owned()).filter(|m| !m.is_empty())),
        None => (status_reason(code).map(str::to_owned), None),
    };
    ResponseStatus {
        status: Some("Failure".to_owned()),
        message,
        reason,
        code,
    }
}

/// Records a standalone identity event of a background action (a key or certificate rotated
/// by kfsec itself, configuration reloaded): user kfsec's system user, a fresh audit id, stage
/// `ResponseComplete`, Metadata level at most. `annotations` must not carry secrets.
pub fn background(
    auditor: &Auditor,
    clock: &dyn Clock,
    rng: &dyn Rng,
    resource: &str,
    verb: &str,
    name: Option<&str>,
    annotations: &[(&str, &str)],
) {
    if !auditor.enabled() {
        return;
    }
    let user = UserInfo::system();
    let object = identity_object(resource, name);
    let decision = auditor.decide(&attributes(&user, verb, Some(&object), ""));
    if decision.level == Level::None || decision.omit_stages.contains(&Stage::ResponseComplete) {
        return;
    }
    let now = clock.now().to_rfc3339_micros();
    auditor.record(Event {
        kind: "Event".to_owned(),
        api_version: "audit.k8s.io/v1".to_owned(),
        level: decision.level.min(Level::Metadata),
        audit_id: new_audit_id(rng),
        stage: Stage::ResponseComplete,
        request_uri: String::new(),
        verb: verb.to_owned(),
        user,
        impersonated_user: None,
        source_ips: Vec::new(),
        user_agent: None,
        object_ref: Some(object),
        response_status: Some(response_status(200, None)),
        request_object: None,
        response_object: None,
        request_received_timestamp: now.clone(),
        stage_timestamp: now,
        annotations: annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Capture;
    use kfsec_types::{ManualClock, SequenceRng};

    fn begin(auditor: &Auditor, uri: &str) -> RequestAudit {
        let clock: Arc<dyn Clock> = ManualClock::new(UnixTime::from_millis(1_795_321_800_123));
        RequestAudit::begin(
            auditor,
            &clock,
            Begin {
                audit_id: "id-1".into(),
                method: http::Method::POST,
                request_uri: uri.into(),
                source_ips: vec!["10.0.0.1".into()].into(),
                user_agent: Some("curl/8".into()),
            },
        )
        .unwrap()
    }

    #[test]
    fn user_agents_are_bounded_at_a_character_boundary() {
        assert_eq!(bounded_lossy(b"curl/8", 1024), "curl/8");
        assert_eq!(bounded_lossy("aé".as_bytes(), 2), "a…");
        assert_eq!(bounded_lossy(&[b'x'; 2000], 1024).len(), 1024 + '…'.len_utf8());
        assert_eq!(bounded_lossy(b"a\xffb", 10), "a\u{fffd}b");
    }

    #[test]
    fn a_threads_last_user_agent_is_shared_only_with_the_same_bytes() {
        let a = user_agent(b"kfp/2.0");
        assert!(
            Arc::ptr_eq(&a, &user_agent(b"kfp/2.0")),
            "the same bytes share one text"
        );
        for other in [&b"kfp/2.1"[..], b"kfp/2.0 ", b"KFP/2.0", b"", b"kfp/2.\xff"] {
            let got = user_agent(other);
            assert_eq!(&*got, &*String::from_utf8_lossy(other), "{other:?}");
            assert!(!Arc::ptr_eq(&a, &got));
        }
        let huge = vec![b'u'; MAX_USER_AGENT * 4];
        let cut = user_agent(&huge);
        assert_eq!(cut.len(), MAX_USER_AGENT + '…'.len_utf8());
        let again = user_agent(&huge);
        assert_eq!(again, cut);
        assert!(!Arc::ptr_eq(&cut, &again), "not remembered, made again");
        assert_eq!(&*user_agent(b"kfp/2.0"), "kfp/2.0");
    }

    #[test]
    fn disabled_auditor_gives_no_context() {
        let clock: Arc<dyn Clock> = ManualClock::new(UnixTime::from_secs(0));
        let b = Begin {
            audit_id: "x".into(),
            method: http::Method::GET,
            request_uri: "/".into(),
            source_ips: vec![].into(),
            user_agent: None,
        };
        assert!(RequestAudit::begin(&Auditor::disabled(), &clock, b).is_none());
        assert!(RequestAudit::from_extensions(&http::Extensions::new()).is_none());
    }

    /// Which way each stage reached the sink: `true` through [`Sink::record_stage`].
    struct Routes(Mutex<Vec<(Stage, bool)>>, crate::policy::Stages);

    impl crate::Sink for Routes {
        fn decide(&self, _: &crate::Attributes<'_>) -> crate::Decision {
            crate::Decision {
                level: Level::Metadata,
                omit_stages: self.1,
            }
        }
        fn record(&self, event: Event) {
            self.0.lock().unwrap().push((event.stage, false));
        }
        fn record_stage(&self, view: &EventView<'_>) {
            self.0.lock().unwrap().push((view.stage, true));
        }
    }

    #[test]
    fn only_the_stages_of_a_request_recorded_by_several_calls_are_recorded_in_sequence() {
        use Stage::*;
        let run = |omit: &[Stage], long_running: bool, panics: bool| {
            let sink = Arc::new(Routes(Mutex::default(), crate::policy::Stages::of(omit)));
            let a = begin(&Auditor::new(sink.clone()), "/w");
            if long_running {
                a.long_running();
                assert!(a.response_started(200));
            }
            if panics {
                a.panicked("see the log");
            } else {
                a.complete(200);
            }
            a.complete(200);
            sink.0.lock().unwrap().clone()
        };
        // One call (an ordinary request): its stages in order on the recording thread.
        assert_eq!(
            run(&[], false, false),
            [(RequestReceived, false), (ResponseComplete, false)]
        );
        assert_eq!(run(&[RequestReceived], false, false), [(ResponseComplete, false)]);
        assert_eq!(run(&[], false, true), [(RequestReceived, false), (Panic, false)]);
        // A long-running request: every stage in sequence, the last one too.
        assert_eq!(
            run(&[], true, false),
            [
                (RequestReceived, true),
                (ResponseStarted, true),
                (ResponseComplete, true)
            ]
        );
        assert_eq!(
            run(&[RequestReceived], true, false),
            [(ResponseStarted, true), (ResponseComplete, true)]
        );
        // ... unless the policy left nothing before the last stage.
        assert_eq!(
            run(&[RequestReceived, ResponseStarted], true, false),
            [(ResponseComplete, false)]
        );
    }

    #[test]
    fn a_non_resource_request_is_the_lower_cased_method_with_anonymous_user() {
        let cap = Capture::metadata();
        let a = begin(&cap.auditor(), "/x?y=1");
        a.decision(true, "route /x");
        a.complete(200);
        a.complete(500); // ignored
        let ev = cap.events();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].stage, Stage::RequestReceived);
        let e = &ev[1];
        assert_eq!(e.stage, Stage::ResponseComplete);
        assert_eq!(e.verb, "post");
        assert_eq!(e.user.username, ANONYMOUS);
        assert_eq!(e.object_ref, None);
        assert_eq!(e.response_status.as_ref().map(|s| s.code), Some(200));
        assert_eq!(e.request_received_timestamp, "2026-11-22T04:30:00.123000Z");
        assert_eq!(e.annotations[DECISION_ANNOTATION], "allow");
        assert_eq!(e.source_ips, ["10.0.0.1"]);
    }

    #[test]
    fn a_failed_login_names_the_account_and_reason() {
        let cap = Capture::metadata();
        let a = begin(&cap.auditor(), "/dex/auth/local/login");
        a.identity(identity::LOGINS, identity::LOGIN, Some("alice@example.com"));
        a.annotate(CONNECTOR_ANNOTATION, "local");
        a.annotate(REASON_ANNOTATION, "invalid credentials");
        a.complete(401);
        let e = cap.events().pop().unwrap();
        let o = e.object_ref.unwrap();
        assert_eq!(o.api_group.as_deref(), Some(IDENTITY_GROUP));
        assert_eq!(o.name.as_deref(), Some("alice@example.com"));
        assert_eq!(e.verb, "login");
        let st = e.response_status.unwrap();
        assert_eq!(
            (st.code, st.status.as_deref(), st.reason.as_deref()),
            (401, Some("Failure"), Some("Unauthorized"))
        );
    }

    #[test]
    fn request_bodies_follow_the_level() {
        let cap = Capture::metadata();
        let a = begin(&cap.auditor(), "/api/v1/namespaces/a/configmaps");
        a.resource("create", ObjectRef::default());
        assert!(!a.wants_request_body());
        a.request_object(serde_json::json!({"a": 1}));
        a.complete(201);
        assert!(cap.events().iter().all(|e| e.request_object.is_none()));

        let cap = Capture::with_level(Level::Request);
        let a = begin(&cap.auditor(), "/api/v1/namespaces/a/configmaps");
        assert!(!a.wants_request_body(), "non-resource requests carry no body");
        a.resource("create", ObjectRef::default());
        assert!(a.wants_request_body());
        a.request_object(serde_json::json!({"a": 1}));
        a.complete(201);
        assert_eq!(
            cap.events().last().unwrap().request_object,
            Some(serde_json::json!({"a": 1}))
        );
    }

    #[test]
    fn watches_start_then_complete() {
        let cap = Capture::metadata();
        let a = begin(&cap.auditor(), "/api/v1/pods?watch=1");
        a.resource("watch", ObjectRef::default());
        assert!(a.response_started(200));
        assert_eq!(cap.events().len(), 2);
        a.complete(200);
        let stages: Vec<_> = cap.events().iter().map(|e| e.stage).collect();
        assert_eq!(
            stages,
            [Stage::RequestReceived, Stage::ResponseStarted, Stage::ResponseComplete]
        );
    }

    #[test]
    fn client_audit_ids_are_reused_only_when_sane() {
        assert_eq!(audit_id_from_client(b"abc-123_x.y:z"), Some("abc-123_x.y:z"));
        assert_eq!(audit_id_from_client(b""), None);
        assert_eq!(audit_id_from_client(b"a b"), None);
        assert_eq!(audit_id_from_client(b"a\"}\n{"), None);
        assert_eq!(audit_id_from_client(&[b'a'; 129]), None);
        assert!(audit_id_from_client(&[b'a'; 128]).is_some());
        let id = new_audit_id(&SequenceRng::default());
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(audit_id_from_client(id.as_bytes()).is_some());
    }

    #[test]
    fn pooled_audit_ids_are_each_instances_own_and_never_repeat() {
        /// An Rng that fills every byte with its own constant.
        struct Constant(u8);
        impl kfsec_types::Rng for Constant {
            fn fill(&self, buf: &mut [u8]) {
                buf.fill(self.0);
            }
        }
        let a = AuditIds::new(Arc::new(Constant(0x11)));
        let b = AuditIds::new(Arc::new(Constant(0xee)));
        // Interleaved on one thread, each instance's ids come from its own generator.
        for _ in 0..3 {
            assert!(a.next_id().as_str().starts_with("11111111-1111-4111-9111-"));
            assert!(b.next_id().as_str().starts_with("eeeeeeee-eeee-4eee-aeee-"));
        }
        // From a sequence, ids are distinct across refills and threads.
        let seq = Arc::new(AuditIds::new(Arc::new(SequenceRng::default())));
        let ids: std::collections::HashSet<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let seq = seq.clone();
                    s.spawn(move || (0..600).map(|_| seq.next_id().as_str().to_owned()).collect::<Vec<_>>())
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        assert_eq!(ids.len(), 1200);
    }

    #[test]
    fn uuids_are_spelled_in_full() {
        assert_eq!(uuid_v4([0; 16]).as_slice(), b"00000000-0000-4000-8000-000000000000");
        assert_eq!(uuid_v4([0xab; 16]).as_slice(), b"abababab-abab-4bab-abab-abababababab");
        assert_eq!(uuid_v4([0xff; 16]).as_slice(), b"ffffffff-ffff-4fff-bfff-ffffffffffff");
    }

    #[test]
    fn each_recorders_events_reach_its_own_auditor_from_every_thread() {
        let (one, two) = (Capture::metadata(), Capture::metadata());
        let clock: Arc<dyn Clock> = ManualClock::new(UnixTime::from_secs(1));
        let r1 = Arc::new(Recorders::new(one.auditor(), clock.clone()));
        let r2 = Arc::new(Recorders::new(two.auditor(), clock));
        let request = |recorders: &Recorders, id: &str| {
            let b = Begin {
                audit_id: id.into(),
                method: http::Method::GET,
                request_uri: "/".into(),
                source_ips: vec![].into(),
                user_agent: None,
            };
            RequestAudit::begin_with(&recorders.here(), b).complete(200);
        };
        // Interleaved on one thread, then from another.
        for _ in 0..2 {
            request(&r1, "one");
            request(&r2, "two");
        }
        let (t1, t2) = (r1.clone(), r2.clone());
        std::thread::spawn(move || {
            request(&t1, "one");
            request(&t2, "two");
        })
        .join()
        .unwrap_or_else(|_| panic!("thread panicked"));
        for (cap, id) in [(&one, "one"), (&two, "two")] {
            let ids: Vec<_> = cap.events().into_iter().map(|e| e.audit_id).collect();
            assert_eq!(ids, [id; 6], "2 events for each of 3 requests");
        }
        assert!(Arc::ptr_eq(&r1.here(), &r1.here()), "a thread's recorder is reused");
    }

    #[test]
    fn background_events_are_the_system_user() {
        let cap = Capture::metadata();
        let clock = ManualClock::new(UnixTime::from_secs(1));
        background(
            &cap.auditor(),
            &*clock,
            &SequenceRng::default(),
            identity::SIGNINGKEYS,
            identity::ROTATE,
            Some("k1"),
            &[],
        );
        let e = cap.events().pop().unwrap();
        assert_eq!(e.user.username, kfsec_types::identity::KFSEC_SYSTEM_USER);
        assert_eq!(e.verb, "rotate");
        assert_eq!(e.stage_timestamp, "1970-01-01T00:00:01.000000Z");
    }

    #[test]
    fn codes_and_tokens_in_queries_are_redacted() {
        assert_eq!(redacted_uri("/app/x?y=1"), "/app/x?y=1");
        assert_eq!(redacted_uri("/app/x"), "/app/x");
        assert_eq!(
            redacted_uri("/authservice/oidc/callback?code=abc123&state=s.t"),
            "/authservice/oidc/callback?code=REDACTED&state=REDACTED"
        );
        assert_eq!(
            redacted_uri("/dex/device?user_code=ABCD-EFGH&x=1"),
            "/dex/device?user_code=REDACTED&x=1"
        );
        // Other spellings of the name are still the parameter the server reads.
        assert_eq!(
            redacted_uri("/cb?c%6Fde=abc&CODE=d"),
            "/cb?c%6Fde=REDACTED&CODE=REDACTED"
        );
        assert_eq!(redacted_uri("/cb?code"), "/cb?code");
        assert_eq!(
            redacted_uri("/cb?access_token=t&&a=b"),
            "/cb?access_token=REDACTED&&a=b"
        );
    }

    #[test]
    fn every_bearer_handle_and_separator_spelling_is_redacted() {
        // The approval screen's `req` is a bearer handle: whoever reads it can POST the approval
        // and receive the victim's code in the redirect.
        assert_eq!(redacted_uri("/dex/approval?req=abc123"), "/dex/approval?req=REDACTED");
        for name in [
            "code_verifier",
            "client_assertion",
            "subject_token",
            "actor_token",
            "api_key",
            "X-Amz-Signature",
            "X-Amz-Security-Token",
            "x-amz-credential",
        ] {
            assert_eq!(
                redacted_uri(&format!("/app?{name}=s3cr3t&x=1")),
                format!("/app?{name}=REDACTED&x=1"),
                "{name}"
            );
        }
        // `;` separates parameters for some upstream apps (W3C form encoding, older servers).
        assert_eq!(redacted_uri("/app?a=1;token=s3cr3t;b=2"), "/app?a=1;token=REDACTED;b=2");
        assert_eq!(
            redacted_uri("/app?a=1&b=2;code=s3cr3t&code=x"),
            "/app?a=1&b=2;code=REDACTED&code=REDACTED"
        );
        assert_eq!(redacted_uri("/cb?code=s&"), "/cb?code=REDACTED&");
        assert_eq!(redacted_uri("/cb?;code=s;;"), "/cb?;code=REDACTED;;");
    }
}
