//! Handler panics at the front door: a panic anywhere under the edge (a surface's handler, a
//! broken invariant) is caught there and answered `500` in the path's own format
//! (`Refusal::failure`: a generic message and an incident id), logged under that id, and
//! recorded as the request's audit Event at stage `Panic` with responseStatus 500 — what
//! kube-apiserver's panic-recovery and audit filters do — instead of a reset connection and no
//! record at all.
//!
//! Security invariants: the panic's own text (which may hold anything a handler had in hand) goes
//! only to the operator's log, under the incident id; the client and the audit Event get the
//! generic message with that id. Nothing is caught beyond the response's head: a body that
//! panics while streaming ends the connection as before.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use axum::response::Response;
use futures_util::FutureExt as _;
use kfsec_audit::RequestAudit;
use kfsec_types::refusal::Failure;
use kfsec_types::{Refusal, Rng};

use crate::responses::Mounts;

/// Runs `fut` (the router); a panic in it is returned as its text instead of unwinding further.
/// (A plain function, not an `async fn`, whose future would hold `fut` twice: as its argument and
/// inside the unwinding guard.)
pub(crate) fn catch(fut: impl Future<Output = Response>) -> impl Future<Output = Result<Response, String>> {
    AssertUnwindSafe(fut).catch_unwind().map(|r| r.map_err(panic_text))
}

fn panic_text(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast_ref::<&'static str>()
            .map_or_else(|| "(a panic without a message)".to_owned(), |s| (*s).to_owned()),
    }
}

/// The answer to a request whose handler panicked with `text`: a 500 in `path`'s format with a
/// fresh incident id, the panic logged under it, and the `Panic` stage on `audit`.
pub(crate) fn answer(mounts: &Mounts, rng: &dyn Rng, path: &str, audit: Option<&RequestAudit>, text: &str) -> Response {
    let refusal = Refusal::failure(Failure::Internal, rng);
    tracing::error!(
        incident = refusal.incident_id(),
        path,
        panic = text,
        "a request handler panicked"
    );
    if let Some(a) = audit {
        a.panicked(&refusal.text());
    }
    mounts.refuse(path, &refusal)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kfsec_audit::Stage;
    use kfsec_audit::request::Begin;
    use kfsec_audit::testing::Capture;
    use kfsec_types::{Clock, ManualClock, SequenceRng, UnixTime};

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_and_a_panic_stage_event_without_its_text() {
        let cap = Capture::metadata();
        let clock: Arc<dyn Clock> = ManualClock::new(UnixTime::from_secs(1_800_000_000));
        let audit = RequestAudit::begin(
            &cap.auditor(),
            &clock,
            Begin {
                audit_id: "panic-1".into(),
                method: http::Method::GET,
                request_uri: "/app/x".into(),
                source_ips: vec!["10.0.0.1".into()].into(),
                user_agent: None,
            },
        )
        .unwrap_or_else(|| panic!("auditing is on"));
        let handler = async {
            if clock.now().as_secs() > 0 {
                panic!("index out of bounds near s3cr3t-value");
            }
            Response::default()
        };
        let text = catch(handler).await.err().unwrap_or_default();
        assert!(text.contains("s3cr3t-value"), "{text}");
        let resp = answer(
            &Mounts::default(),
            &SequenceRng::default(),
            "/app/x",
            Some(&audit),
            &text,
        );
        let resp = crate::audit::finish(Some(audit), resp);
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()["audit-id"], "panic-1");
        let events = cap.take();
        let stages: Vec<Stage> = events.iter().map(|e| e.stage).collect();
        assert_eq!(stages, [Stage::RequestReceived, Stage::Panic], "one final Event");
        let e = &events[1];
        let status = e.response_status.clone().unwrap_or_default();
        assert_eq!(
            (status.code, status.status.as_deref(), status.reason.as_deref()),
            (500, Some("Failure"), Some("InternalError"))
        );
        assert!(status.message.unwrap_or_default().contains("incident"));
        let line = serde_json::to_string(e).unwrap_or_default();
        assert!(line.contains(r#""stage":"Panic""#), "{line}");
        assert!(!line.contains("s3cr3t"), "{line}");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        assert!(!String::from_utf8_lossy(&body).contains("s3cr3t"));

        // Without a panic the answer passes through.
        let ok = catch(async { Response::default() }).await;
        assert!(ok.is_ok_and(|r| r.status() == 200));
        assert_eq!(panic_text(Box::new(7u8)), "(a panic without a message)");
        assert_eq!(panic_text(Box::new("static")), "static");
    }
}
