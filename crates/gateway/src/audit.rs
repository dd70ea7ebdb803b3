//! The front door's audit layer: the edge opens a [`RequestAudit`] for every request while an
//! [`Auditor`] is enabled (audit id, client addresses, user agent, request URI, arrival time),
//! returns the id in the `Audit-ID` response header, and emits the request's Event(s) from the
//! final response — at once for ordinary requests, `ResponseStarted` at the headers and
//! `ResponseComplete` when the body ends for long-running ones (watches).
//!
//! Security invariants: a client's `Audit-ID` is reused only when short and of a safe charset
//! (`kfsec_audit::request::audit_id_from_client`), otherwise a UUID is generated from the
//! injected Rng; `sourceIPs` believe a forwarded address only from a trusted proxy, by the one
//! rule the edge already applies (`headers::sanitize`, `forwarded::TrustedProxies`: the last
//! `X-Forwarded-For` entry of a trusted peer's that no trusted proxy wrote), then the peer
//! address; nothing here reads a body, a cookie or an
//! `Authorization` header; with auditing off nothing is allocated.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use kfsec_audit::RequestAudit;
use kfsec_audit::request::{AUDIT_ID_HEADER, AuditId, Begin, Recorders, audit_id_from_client, redacted_uri};
use kfsec_types::Identity;
use kfsec_types::identity::UserInfo;

use crate::App;

/// `Audit-ID` as a typed name (a `&str` name is parsed again at every use).
static AUDIT_ID: HeaderName = HeaderName::from_static(AUDIT_ID_HEADER);

/// Opens the request's audit context (auditing is on). `forwarded`: the client address a
/// trusted proxy reported.
pub(crate) fn begin(
    app: &App,
    recorders: &Recorders,
    req: &Request,
    peer: Option<IpAddr>,
    forwarded: Option<IpAddr>,
) -> RequestAudit {
    let audit_id = req
        .headers()
        .get(&AUDIT_ID)
        .and_then(|v| audit_id_from_client(v.as_bytes()))
        .map_or_else(|| app.audit_ids.next_id(), AuditId::from);
    let source_ips = source_ips(forwarded, peer);
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .map(|v| kfsec_audit::request::user_agent(v.as_bytes()));
    let request_uri = redacted_uri(req.uri().path_and_query().map_or("/", |pq| pq.as_str()));
    let begin = Begin {
        audit_id,
        method: req.method().clone(),
        request_uri,
        source_ips,
        user_agent,
    };
    recorders.with_here(|recorder| RequestAudit::begin_with(recorder, begin))
}

/// A thread's last `sourceIPs`: the forwarded address and the peer's, and their list.
type LastIps = (Option<IpAddr>, Option<IpAddr>, Arc<[String]>);

/// `sourceIPs`: the address a trusted proxy reported, then the peer's. The last list is kept
/// per thread and shared with the next request from the same addresses (most often the same
/// connection's), instead of formatted again.
fn source_ips(forwarded: Option<IpAddr>, peer: Option<IpAddr>) -> Arc<[String]> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<LastIps>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((f, p, ips)) if (*f, *p) == (forwarded, peer) => ips.clone(),
        _ => {
            let ips: Arc<[String]> = forwarded
                .into_iter()
                .chain(peer)
                .map(crate::headers::ip_string)
                .collect();
            *last = Some((forwarded, peer, ips.clone()));
            ips
        }
    })
}

thread_local! {
    /// The last caller recorded on this thread, as an audit user: the next request is most
    /// often the same caller's, whose user is then shared rather than built again.
    static LAST_USER: std::cell::RefCell<Option<(Identity, Arc<UserInfo>)>> = const { std::cell::RefCell::new(None) };
}

/// Records the authenticated caller on the request's audit context, if any.
pub(crate) fn set_user(audit: Option<&RequestAudit>, identity: &Identity) {
    if let Some(a) = audit {
        let user = LAST_USER.with_borrow_mut(|last| match last {
            Some((who, user)) if who == identity => user.clone(),
            _ => {
                let user = Arc::new(UserInfo::from(identity));
                *last = Some((identity.clone(), user.clone()));
                user
            }
        });
        a.set_user_shared(user);
    }
}

/// A route's decision reasons, as `authorization.k8s.io/reason` records them (`route <prefix>:
/// <why>`): built once per route with the front door.
pub(crate) struct RouteReasons {
    /// Tells this route's reasons from another's (another front door's too) in a thread's memo.
    id: u64,
    texts: [Box<str>; 4],
}

/// Why a route's request was decided as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    Authenticated,
    PublicRoute,
    InvalidCredentials,
    NotAuthenticated,
}

impl RouteReasons {
    pub(crate) fn new(prefix: &str) -> Self {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let reason = |why: &str| format!("route {prefix}: {why}").into_boxed_str();
        Self {
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            texts: [
                reason("authenticated"),
                reason("public route"),
                reason("invalid credentials"),
                reason("not authenticated"),
            ],
        }
    }
}

/// A thread's last route decision reason: whose, why, and the thread's own copy of its text.
type LastReason = (u64, Why, Arc<str>);

/// Records a proxied route's decision and its reason on the request's audit context, if any.
/// The reason is shared from the thread's own copy (its reference count is written by this
/// core only), made again when a request of another route or outcome comes.
pub(crate) fn route_decision(audit: Option<&RequestAudit>, allowed: bool, reasons: &RouteReasons, why: Why) {
    thread_local! {
        static LAST: std::cell::RefCell<Option<LastReason>> = const { std::cell::RefCell::new(None) };
    }
    if let Some(a) = audit {
        let reason = LAST.with_borrow_mut(|last| match last {
            Some((id, w, reason)) if *id == reasons.id && *w == why => reason.clone(),
            _ => {
                let reason: Arc<str> = Arc::from(&*reasons.texts[why as usize]);
                *last = Some((reasons.id, why, reason.clone()));
                reason
            }
        });
        a.decision(allowed, reason);
    }
}

/// Adds the `Audit-ID` header and emits the request's events (wrapping the body of a
/// long-running response so `ResponseComplete` is emitted when it ends).
pub(crate) fn finish(audit: Option<RequestAudit>, mut resp: Response) -> Response {
    let Some(audit) = audit else {
        return resp;
    };
    if let Some(v) = audit_id_value(audit.audit_id()) {
        resp.headers_mut().insert(AUDIT_ID.clone(), v);
    }
    let code = resp.status().as_u16();
    if audit.response_started(code) {
        resp = resp.map(|inner| {
            Body::new(Completing {
                inner,
                audit: Some(audit),
                code,
            })
        });
    }
    resp
}

/// Bytes of `Audit-ID` values a thread cuts from one buffer (about a hundred ids).
const AUDIT_ID_CHUNK: usize = 4096;

/// `id` as a header value, cut from the thread's buffer of values (a reference count on a buffer
/// shared by the next hundred answers of the thread, instead of an allocation per answer);
/// `None` when it is not a valid header value.
fn audit_id_value(id: &str) -> Option<HeaderValue> {
    thread_local! {
        static VALUES: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
    }
    VALUES.with_borrow_mut(|values| {
        if values.capacity() < id.len() {
            *values = bytes::BytesMut::with_capacity(AUDIT_ID_CHUNK.max(id.len()));
        }
        values.extend_from_slice(id.as_bytes());
        HeaderValue::from_maybe_shared(values.split().freeze()).ok()
    })
}

/// A long-running response's body: `ResponseComplete` is emitted when it ends or is dropped
/// (the client went away).
struct Completing {
    inner: Body,
    audit: Option<RequestAudit>,
    code: u16,
}

impl Completing {
    fn done(&mut self) {
        if let Some(a) = self.audit.take() {
            a.complete(self.code);
        }
    }
}

impl Drop for Completing {
    fn drop(&mut self) {
        self.done();
    }
}

impl HttpBody for Completing {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kfsec_audit::testing::Capture;
    use kfsec_types::{Clock, ManualClock, UnixTime};

    #[test]
    fn audit_id_values_cut_from_one_buffer_each_keep_their_own_text() {
        // Across several buffers, ids of every allowed length, each value kept past later ones.
        let ids: Vec<String> = (0..300).map(|i| format!("{i:0>w$}", w = 1 + i % 128)).collect();
        let values: Vec<HeaderValue> = ids.iter().map(|id| audit_id_value(id).unwrap()).collect();
        for (id, v) in ids.iter().zip(&values) {
            assert_eq!(v.as_bytes(), id.as_bytes());
        }
        assert_eq!(audit_id_value("not\nvalid\x01"), None);
        assert_eq!(audit_id_value("ok").unwrap(), "ok");
    }

    #[test]
    fn each_request_gets_its_own_routes_reason_and_addresses_when_they_take_turns_on_a_thread() {
        let cap = Capture::metadata();
        let clock: Arc<dyn Clock> = ManualClock::new(UnixTime::from_secs(1_800_000_000));
        let (a, b): (IpAddr, IpAddr) = (
            [10, 0, 0, 1].into(),
            "2001:db8::7".parse().unwrap_or_else(|e| panic!("{e}")),
        );
        let (ra, rb, ra2) = (
            RouteReasons::new("/a/"),
            RouteReasons::new("/b/"),
            RouteReasons::new("/a2/"),
        );
        // (route, why, forwarded address, peer, the reason's text, sourceIPs)
        type Case<'a> = (
            &'a RouteReasons,
            Why,
            Option<IpAddr>,
            Option<IpAddr>,
            &'a str,
            &'a [&'a str],
        );
        let cases: [Case<'_>; 7] = [
            (
                &ra,
                Why::Authenticated,
                None,
                Some(a),
                "route /a/: authenticated",
                &["10.0.0.1"],
            ),
            (
                &rb,
                Why::Authenticated,
                Some(b),
                Some(a),
                "route /b/: authenticated",
                &["2001:db8::7", "10.0.0.1"],
            ),
            (
                &rb,
                Why::PublicRoute,
                None,
                Some(b),
                "route /b/: public route",
                &["2001:db8::7"],
            ),
            (
                &ra,
                Why::InvalidCredentials,
                None,
                None,
                "route /a/: invalid credentials",
                &[],
            ),
            (
                &ra,
                Why::NotAuthenticated,
                None,
                Some(a),
                "route /a/: not authenticated",
                &["10.0.0.1"],
            ),
            (
                &ra2,
                Why::NotAuthenticated,
                None,
                Some(a),
                "route /a2/: not authenticated",
                &["10.0.0.1"],
            ),
            (
                &ra,
                Why::Authenticated,
                None,
                Some(a),
                "route /a/: authenticated",
                &["10.0.0.1"],
            ),
        ];
        for (i, (route, why, forwarded, peer, text, ips)) in cases.into_iter().enumerate() {
            let id = format!("r{i}");
            let audit = RequestAudit::begin(
                &cap.auditor(),
                &clock,
                Begin {
                    audit_id: id.as_str().into(),
                    method: http::Method::GET,
                    request_uri: "/".into(),
                    source_ips: source_ips(forwarded, peer),
                    user_agent: None,
                },
            )
            .unwrap_or_else(|| panic!("auditing is on"));
            route_decision(Some(&audit), true, route, why);
            audit.complete(200);
            let events = cap.of(&id);
            let e = events.last().unwrap_or_else(|| panic!("no event for {id}"));
            let got = e.annotations.get(kfsec_audit::request::AUTHZ_REASON_ANNOTATION);
            assert_eq!(got.map(String::as_str), Some(text), "{id}");
            assert_eq!(e.source_ips, ips, "{id}");
        }
    }
}
