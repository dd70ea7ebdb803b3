//! The webhook listener's audit Events. That listener is not behind the front door's edge, so it
//! opens each request's `RequestAudit` itself: one Event per AdmissionReview (or per refused
//! body), in the same log and format as every other request.
//!
//! What an Event says (decided here, documented in `docs/architecture.md`):
//! - `user`: the **caller of the webhook** — the identity of its verified client certificate
//!   (the API server's, with `webhooks.clientAuth`), `system:anonymous` without one; never the
//!   reviewed request's user, which is annotated instead (`admission.kfsec.io/reviewed-user`);
//! - `verb`: the review's operation in lower case (`create`, `update`, `delete`, `connect`);
//!   `objectRef`: the reviewed object (the review's resource, subresource, namespace and name —
//!   the object's own name when the request leaves it empty);
//!   a body that is not an AdmissionReview is a non-resource `post` answered 400;
//! - `authorization.k8s.io/decision`: `allow` — the listener decides who may call it at the TLS
//!   handshake; the reason says whether a verified certificate was required;
//! - the webhook's verdict in annotations: `admission.kfsec.io/webhook` (its name),
//!   `admission.kfsec.io/outcome` (`allow`, `patch` or `deny`), `admission.kfsec.io/patch-operations`
//!   (how many JSON Patch operations), `kfsec.io/reason` (a denial's message, at most
//!   [`MAX_REASON`] bytes); `responseStatus` is the HTTP answer (200 for every answered review).
//!
//! Security invariants: no body is recorded (the reviewed object may hold anything); what the
//! review claims (names, the reviewed user) is cut to Kubernetes' lengths, so a caller cannot
//! write megabytes into the log through one field (nor through `User-Agent`); `requestURI`
//! carries secret query values as `REDACTED` (`kfsec_audit::request::redacted_uri`, as on the
//! front door); the caller's `Audit-ID` is reused only by `kfsec_audit`'s rule; `sourceIPs` is
//! the TCP peer only (nothing forwarded is believed on this listener).

use std::sync::Arc;

use axum::http::HeaderValue;
use axum::http::request::Parts;
use axum::response::Response;
use kfsec_admission::{AdmissionOutcome, ParsedReview};
use kfsec_audit::request::{
    AUDIT_ID_HEADER, Begin, REASON_ANNOTATION, audit_id_from_client, new_audit_id, redacted_uri,
};
use kfsec_audit::{Auditor, ObjectRef, RequestAudit};
use kfsec_gateway::listener::ClientCertIdentity;
use kfsec_types::identity::UserInfo;
use kfsec_types::{Clock, Rng};

/// Annotation: the webhook that answered.
pub const WEBHOOK_ANNOTATION: &str = "admission.kfsec.io/webhook";
/// Annotation: `allow`, `patch` or `deny`.
pub const OUTCOME_ANNOTATION: &str = "admission.kfsec.io/outcome";
/// Annotation: the number of JSON Patch operations of a `patch` outcome.
pub const PATCH_OPERATIONS_ANNOTATION: &str = "admission.kfsec.io/patch-operations";
/// Annotation: the user whose request the API server is reviewing.
pub const REVIEWED_USER_ANNOTATION: &str = "admission.kfsec.io/reviewed-user";
/// The longest denial message (and reviewed user name) recorded.
pub const MAX_REASON: usize = 512;
/// The longest object name, namespace, resource, group or version recorded (a DNS subdomain).
pub const MAX_NAME: usize = 253;

/// The decision reason when the caller presented a verified client certificate.
const CLIENT_CERT_REASON: &str = "kfsec: the webhook caller's client certificate was verified (webhooks.clientAuth)";
/// The decision reason when the listener asks for no client certificate.
const OPEN_REASON: &str = "kfsec: webhooks.clientAuth is off, any TLS client may call the webhooks";

/// What the webhook listener records its Events with.
#[derive(Clone)]
pub struct ReviewAudit {
    auditor: Auditor,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
}

impl std::fmt::Debug for ReviewAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReviewAudit").field("auditor", &self.auditor).finish()
    }
}

impl ReviewAudit {
    /// Events through `auditor`, timed by `clock`, ids from `rng`.
    pub fn new(auditor: Auditor, clock: Arc<dyn Clock>, rng: Arc<dyn Rng>) -> Self {
        Self { auditor, clock, rng }
    }

    /// Opens the context of one webhook request (`None` when auditing is off): the caller, the
    /// peer address, the listener's decision.
    pub(crate) fn begin(&self, parts: &Parts) -> Option<RequestAudit> {
        let audit_id = parts
            .headers
            .get(AUDIT_ID_HEADER)
            .and_then(|v| audit_id_from_client(v.as_bytes()))
            .map_or_else(|| new_audit_id(self.rng.as_ref()), str::to_owned);
        let ctx = RequestAudit::begin(
            &self.auditor,
            &self.clock,
            Begin {
                audit_id: audit_id.into(),
                method: parts.method.clone(),
                // Secret query values `REDACTED`, by the one rule every surface's Event follows.
                request_uri: redacted_uri(parts.uri.path_and_query().map_or("/", |pq| pq.as_str())),
                source_ips: parts
                    .extensions
                    .get::<kfsec_idp::ClientAddr>()
                    .map(|a| vec![a.0.to_string()])
                    .unwrap_or_default()
                    .into(),
                user_agent: parts
                    .headers
                    .get(axum::http::header::USER_AGENT)
                    .map(|v| kfsec_audit::request::user_agent(v.as_bytes())),
            },
        )?;
        let caller = parts.extensions.get::<ClientCertIdentity>();
        if let Some(ClientCertIdentity { identity, .. }) = caller {
            ctx.set_user(UserInfo::from(identity));
        }
        ctx.decision(
            true,
            if caller.is_some() {
                CLIENT_CERT_REASON
            } else {
                OPEN_REASON
            },
        );
        Some(ctx)
    }
}

/// The reviewed object as the Event's `objectRef`, and the operation as its verb.
pub(crate) fn reviewed(ctx: &RequestAudit, webhook: &str, review: &ParsedReview) {
    let r = &review.request;
    // The review is the caller's word: each field is cut to what Kubernetes allows a name.
    let some = |s: &str| (!s.is_empty()).then(|| truncated(s, MAX_NAME));
    let object = ObjectRef {
        resource: some(&r.resource.resource),
        namespace: some(&r.namespace),
        // A create's request may leave `name` to the object (kube-apiserver fills it in later).
        name: some(&r.name).or_else(|| {
            let object = r.object.as_ref()?;
            some(object.pointer("/metadata/name")?.as_str()?)
        }),
        api_group: some(&r.resource.group),
        api_version: some(&r.resource.version),
        subresource: some(&r.sub_resource),
        ..ObjectRef::default()
    };
    ctx.resource(&r.operation.as_str().to_ascii_lowercase(), object);
    ctx.annotate(WEBHOOK_ANNOTATION, webhook.to_owned());
    if !r.user_info.username.is_empty() {
        ctx.annotate(REVIEWED_USER_ANNOTATION, truncated(&r.user_info.username, MAX_REASON));
    }
}

/// The webhook's verdict as annotations.
pub(crate) fn outcome(ctx: &RequestAudit, outcome: &AdmissionOutcome) {
    match outcome {
        AdmissionOutcome::Allow => ctx.annotate(OUTCOME_ANNOTATION, "allow"),
        AdmissionOutcome::Patch(p) => {
            ctx.annotate(OUTCOME_ANNOTATION, "patch");
            ctx.annotate(PATCH_OPERATIONS_ANNOTATION, p.0.len().to_string());
        }
        AdmissionOutcome::Deny { message, .. } => {
            ctx.annotate(OUTCOME_ANNOTATION, "deny");
            ctx.annotate(REASON_ANNOTATION, truncated(message, MAX_REASON));
        }
    }
}

/// Emits the request's Event with the response's status and returns the response with the
/// `Audit-ID` header.
pub(crate) fn finish(ctx: Option<RequestAudit>, mut resp: Response) -> Response {
    if let Some(ctx) = ctx {
        ctx.complete(resp.status().as_u16());
        if let Ok(v) = HeaderValue::from_str(ctx.audit_id()) {
            resp.headers_mut().insert(AUDIT_ID_HEADER, v);
        }
    }
    resp
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncated(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_review_claims_is_cut_to_kubernetes_lengths() {
        let cap = kfsec_audit::testing::Capture::metadata();
        let clock: Arc<dyn Clock> = kfsec_types::ManualClock::new(kfsec_types::UnixTime::from_secs(1));
        let audit = ReviewAudit::new(cap.auditor(), clock, Arc::new(kfsec_types::SequenceRng::default()));
        let (parts, ()) = axum::http::Request::post("/apply-poddefault")
            .body(())
            .unwrap()
            .into_parts();
        let ctx = audit.begin(&parts).unwrap();
        let long = "x".repeat(1 << 20);
        let review = kfsec_admission::parse_review(
            serde_json::json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "1", "operation": "UPDATE", "name": long, "namespace": long,
                            "kind": {"group": "", "version": "v1", "kind": "Pod"},
                            "resource": {"group": long, "version": "v1", "resource": "pods"},
                            "userInfo": {"username": long}}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        reviewed(&ctx, "w", &review);
        outcome(&ctx, &AdmissionOutcome::deny(403, long.clone()));
        ctx.complete(200);
        let e = cap.take().pop().unwrap();
        assert_eq!(e.verb, "update");
        assert_eq!(e.user.username, kfsec_audit::request::ANONYMOUS);
        let o = e.object_ref.unwrap();
        for field in [o.name, o.namespace, o.api_group] {
            assert_eq!(field.map(|f| f.len()), Some(MAX_NAME));
        }
        assert!(serde_json::to_string(&e.annotations).unwrap().len() < 4 * MAX_REASON);
    }

    #[test]
    fn secret_query_values_and_huge_user_agents_are_not_recorded() {
        let cap = kfsec_audit::testing::Capture::metadata();
        let clock: Arc<dyn Clock> = kfsec_types::ManualClock::new(kfsec_types::UnixTime::from_secs(1));
        let audit = ReviewAudit::new(cap.auditor(), clock, Arc::new(kfsec_types::SequenceRng::default()));
        let (parts, ()) = axum::http::Request::post("/apply-poddefault?timeout=10s&token=s3cr3t;code=c0de")
            .header("user-agent", "u".repeat(1 << 16))
            .body(())
            .unwrap()
            .into_parts();
        let ctx = audit.begin(&parts).unwrap();
        ctx.complete(400);
        let e = cap.take().pop().unwrap();
        assert_eq!(
            e.request_uri,
            "/apply-poddefault?timeout=10s&token=REDACTED;code=REDACTED"
        );
        assert_eq!(
            e.user_agent.map(|u| u.len()),
            Some(kfsec_audit::request::MAX_USER_AGENT + '…'.len_utf8())
        );
    }

    #[test]
    fn denial_messages_are_cut_on_a_character_boundary() {
        assert_eq!(truncated("abc", 512), "abc");
        assert_eq!(truncated("aé", 2), "a");
        assert_eq!(truncated(&"x".repeat(600), MAX_REASON).len(), MAX_REASON);
    }
}
