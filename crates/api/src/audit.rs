//! What each surface tells its request's audit Event (`kfsec_audit::RequestAudit`, created by
//! the gateway's edge): the verb and `objectRef` it authorized, the authorization decision and
//! its reason, the impersonated user, the request body where the policy wants it. The API, KFP,
//! KFAM and the dashboard API call the free functions here from wherever they decide; [`scope`]
//! (or the [`layer`] middleware) makes the request's context current for the handler's task, and
//! outside one every call is a no-op, so nothing costs anything while auditing is off.
//!
//! One request may ask several questions (KFP checks an experiment, then a pipeline; KFAM checks
//! ownership, then writes). The Event names the **first** decision — the request's own question —
//! unless a later one refuses: then the first refusal, which is what ended the request. Checks
//! that only filter what a caller sees are not decisions. The verb, objectRef and decision are
//! written into the context once, when the handler's future ends (or is dropped), so a refusal
//! after an allow never leaves the allow's reason behind.
//!
//! Security invariants: bodies of `secrets` and `tokenreviews` (a bearer token in `spec`) are
//! never handed to the context, whatever the policy says ([`request_body`]); no reason or
//! annotation carries a credential; a surface records only what it decided, never what a client
//! claimed.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use kfsec_types::identity::UserInfo;
use serde_json::Value;

use crate::authorize::ResourceAttributes;

pub use kfsec_audit::{ObjectRef, RequestAudit};

/// Resources whose request bodies are never recorded: Secrets, and TokenReviews (their
/// `spec.token` is a live credential).
pub const NO_BODY_RESOURCES: &[&str] = &["secrets", "tokenreviews"];

/// The `objectRef` of `resource` in `group`/`version`; empty strings are left out (the core group
/// is omitted, as kube-apiserver does).
pub fn object_ref(group: &str, version: &str, resource: &str, namespace: &str, name: &str) -> ObjectRef {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    ObjectRef {
        resource: some(resource),
        namespace: some(namespace),
        name: some(name),
        api_group: some(group),
        api_version: some(version),
        ..ObjectRef::default()
    }
}

/// The `objectRef` of an authorized resource request: its authorization attributes (so the
/// Event names exactly what was authorized — for `namespaces/NAME` the namespace NAME, for a
/// list pinned by `metadata.name=` that name) and the API version called.
pub fn resource_ref(r: &ResourceAttributes, version: &str) -> ObjectRef {
    ObjectRef {
        subresource: (!r.subresource.is_empty()).then(|| r.subresource.clone()),
        ..object_ref(&r.api_group, version, &r.resource, &r.namespace, &r.name)
    }
}

#[derive(Default)]
struct State {
    /// The verb and object (`None`: a non-resource request) of the decision recorded.
    what: Option<(String, Option<ObjectRef>)>,
    /// `(allowed, reason)`.
    decision: Option<(bool, String)>,
    /// Inside [`unrecorded`]: questions that only filter what the caller sees.
    filtering: bool,
}

/// The current request's context and what its surface decided so far.
struct Recorder {
    ctx: RequestAudit,
    state: Mutex<State>,
}

impl Recorder {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the verb, objectRef and decision into the context.
    fn flush(&self) {
        let s = self.state();
        if let Some((verb, object)) = &s.what {
            match object {
                Some(o) => self.ctx.resource(verb, o.clone()),
                None => self.ctx.non_resource(verb),
            }
        }
        if let Some((allowed, reason)) = &s.decision {
            self.ctx.decision(*allowed, reason.clone());
        }
    }
}

/// Flushes the recorder when the handler's future ends or is dropped.
struct Flush(Arc<Recorder>);

impl Drop for Flush {
    fn drop(&mut self) {
        self.0.flush();
    }
}

tokio::task_local! {
    static CURRENT: Arc<Recorder>;
}

/// Runs `f` with `ctx` (the request's audit context, `None` when auditing is off) current.
pub async fn scope<F: Future>(ctx: Option<RequestAudit>, f: F) -> F::Output {
    match ctx {
        None => f.await,
        Some(ctx) => {
            let recorder = Arc::new(Recorder {
                ctx,
                state: Mutex::new(State::default()),
            });
            let _flush = Flush(recorder.clone());
            CURRENT.scope(recorder, f).await
        }
    }
}

/// Middleware (`axum::middleware::from_fn(layer)`) making the request's audit context current
/// for the handler ([`scope`]).
pub async fn layer(req: Request, next: Next) -> Response {
    let ctx = RequestAudit::from_extensions(req.extensions());
    scope(ctx, next.run(req)).await
}

fn with(f: impl FnOnce(&Recorder)) {
    let _ = CURRENT.try_with(|r| f(r));
}

/// Whether a request's audit context is current (lets callers skip building attributes).
pub fn active() -> bool {
    CURRENT.try_with(|_| ()).is_ok()
}

fn record(verb: &str, object: Option<ObjectRef>, allowed: bool, reason: &str) {
    with(|r| {
        let mut s = r.state();
        if s.filtering {
            return;
        }
        let take = match &s.decision {
            None => true,
            Some((was_allowed, _)) => *was_allowed && !allowed,
        };
        if take {
            s.what = Some((verb.to_owned(), object));
            s.decision = Some((allowed, reason.to_owned()));
        }
    });
}

/// Runs `f`, whose authorization questions only filter what the caller is shown (a namespace
/// selector's entries): none of them is the request's decision.
pub fn unrecorded<R>(f: impl FnOnce() -> R) -> R {
    let set = |on: bool| with(|r| r.state().filtering = on);
    set(true);
    let out = f();
    set(false);
    out
}

/// A decision on a resource request: `verb` on `object`, allowed or not, with the authorizer's
/// reason (RBAC's `RBAC: allowed by …`; empty for most refusals, as Kubernetes).
pub fn decided(verb: &str, object: ObjectRef, allowed: bool, reason: &str) {
    record(verb, Some(object), allowed, reason);
}

/// A decision on a non-resource request (`verb`: the lower-cased HTTP method).
pub fn decided_non_resource(verb: &str, allowed: bool, reason: &str) {
    record(verb, None, allowed, reason);
}

/// A refusal that ends the request, whatever was allowed before (a second question such as
/// server-side apply's `create` answered no): the recorded verb and object stay, the decision
/// becomes `forbid`, the reason empty. (A refused impersonation is a [`decided`] refusal of the
/// attempted request, with the refusal as its reason.)
pub fn refused() {
    with(|r| {
        let mut s = r.state();
        if s.decision.as_ref().is_none_or(|(allowed, _)| *allowed) {
            s.decision = Some((false, String::new()));
        }
    });
}

/// Completes the recorded objectRef from a written (or deleted) object's metadata: `uid` and
/// `resourceVersion`, and `name`/`namespace` when the request did not name them (a create).
/// Ignored when the recorded decision is a refusal.
pub fn written(object: &Value) {
    let meta = |k: &str| {
        object
            .pointer(&format!("/metadata/{k}"))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    with(|r| {
        let mut s = r.state();
        if !s.decision.as_ref().is_some_and(|(allowed, _)| *allowed) {
            return;
        }
        if let Some((_, Some(o))) = &mut s.what {
            o.uid = meta("uid").or(o.uid.take());
            o.resource_version = meta("resourceVersion").or(o.resource_version.take());
            if o.name.is_none() {
                o.name = meta("name");
            }
            if o.namespace.is_none() {
                o.namespace = meta("namespace");
            }
        }
    });
}

/// Completes the recorded objectRef with an identity the surface learnt after deciding (KFP's
/// object id as `uid`, a created object's name): only fields still empty are set.
pub fn identified(name: Option<&str>, uid: Option<&str>) {
    with(|r| {
        let mut s = r.state();
        if let Some((_, Some(o))) = &mut s.what {
            if o.name.is_none() {
                o.name = name.filter(|n| !n.is_empty()).map(str::to_owned);
            }
            if o.uid.is_none() {
                o.uid = uid.filter(|n| !n.is_empty()).map(str::to_owned);
            }
        }
    });
}

/// The effective user after impersonation (the authenticated caller stays `user`).
pub fn impersonated(user: &UserInfo) {
    with(|r| r.ctx.impersonated(user.clone()));
}

/// Sets annotation `key` on the request's Event. Never pass a secret.
pub fn annotate(key: impl Into<std::borrow::Cow<'static, str>>, value: impl Into<kfsec_audit::encode::Text>) {
    with(|r| r.ctx.annotate(key, value));
}

/// Whether the policy's level for the recorded request (a request on `resource`) is Request or
/// more, so its body should be handed over — never for [`NO_BODY_RESOURCES`].
pub fn wants_body(resource: &str) -> bool {
    if NO_BODY_RESOURCES.contains(&resource) {
        return false;
    }
    CURRENT
        .try_with(|r| {
            // The level depends on the verb and object: the context must know them first.
            {
                let s = r.state();
                match &s.what {
                    Some((verb, Some(o))) if o.resource.as_deref() == Some(resource) => {
                        r.ctx.resource(verb, o.clone());
                    }
                    _ => return false,
                }
            }
            r.ctx.wants_request_body()
        })
        .unwrap_or(false)
}

/// Hands the request body to the context when [`wants_body`] says so; `body` is only called
/// then.
pub fn request_body(resource: &str, body: impl FnOnce() -> Option<Value>) {
    if wants_body(resource)
        && let Some(v) = body()
    {
        with(|r| r.ctx.request_object(v));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kfsec_audit::request::Begin;
    use kfsec_audit::testing::Capture;
    use kfsec_audit::{Level, RequestAudit};
    use kfsec_types::{Clock, ManualClock, UnixTime};
    use serde_json::json;

    use super::*;

    fn begin(cap: &Arc<Capture>) -> RequestAudit {
        let clock: Arc<dyn Clock> = ManualClock::new(UnixTime::from_secs(1));
        RequestAudit::begin(
            &cap.auditor(),
            &clock,
            Begin {
                audit_id: "a1".into(),
                method: http::Method::POST,
                request_uri: "/x".into(),
                source_ips: vec![].into(),
                user_agent: None,
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_first_decision_names_the_request_unless_a_later_one_refuses() {
        let cap = Capture::metadata();
        let ctx = begin(&cap);
        scope(Some(ctx.clone()), async {
            decided(
                "create",
                object_ref("g", "v1", "runs", "ns", ""),
                true,
                "RBAC: allowed by X",
            );
            decided(
                "get",
                object_ref("g", "v1", "pipelines", "ns", "p"),
                true,
                "RBAC: allowed by Y",
            );
            written(&json!({"metadata": {"name": "r", "uid": "u1", "resourceVersion": "7"}}));
        })
        .await;
        ctx.complete(200);
        let e = cap.take().pop().unwrap();
        assert_eq!(e.verb, "create");
        let o = e.object_ref.unwrap();
        assert_eq!(
            (
                o.resource.as_deref(),
                o.name.as_deref(),
                o.uid.as_deref(),
                o.resource_version.as_deref()
            ),
            (Some("runs"), Some("r"), Some("u1"), Some("7"))
        );
        assert_eq!(e.annotations["authorization.k8s.io/reason"], "RBAC: allowed by X");

        let ctx = begin(&cap);
        scope(Some(ctx.clone()), async {
            decided(
                "create",
                object_ref("g", "v1", "runs", "ns", ""),
                true,
                "RBAC: allowed by X",
            );
            decided("get", object_ref("g", "v1", "pipelines", "ns", "p"), false, "");
            decided("delete", object_ref("g", "v1", "pipelines", "ns", "q"), false, "");
            written(&json!({"metadata": {"uid": "u1"}}));
        })
        .await;
        ctx.complete(403);
        let e = cap.take().pop().unwrap();
        assert_eq!(e.verb, "get");
        assert_eq!(e.object_ref.unwrap().uid, None);
        assert_eq!(e.annotations["authorization.k8s.io/decision"], "forbid");
        assert!(!e.annotations.contains_key("authorization.k8s.io/reason"));
    }

    #[tokio::test]
    async fn outside_a_scope_nothing_happens_and_a_dropped_handler_still_flushes() {
        decided("get", ObjectRef::default(), true, "");
        assert!(!active());
        let cap = Capture::metadata();
        let ctx = begin(&cap);
        let fut = scope(Some(ctx.clone()), async {
            decided("get", object_ref("", "v1", "pods", "a", "p"), true, "r");
            std::future::pending::<()>().await;
        });
        let _ = tokio::time::timeout(std::time::Duration::from_millis(10), fut).await;
        ctx.complete(499);
        let e = cap.take().pop().unwrap();
        assert_eq!(e.verb, "get");
        assert_eq!(e.annotations["authorization.k8s.io/decision"], "allow");

        // Filtering questions are not the request's decision.
        let ctx = begin(&cap);
        scope(Some(ctx.clone()), async {
            unrecorded(|| decided("list", object_ref("g", "v1", "runs", "other", ""), false, ""));
            decided("list", object_ref("g", "v1", "runs", "mine", ""), true, "r");
        })
        .await;
        ctx.complete(200);
        let e = cap.take().pop().unwrap();
        assert_eq!(e.object_ref.unwrap().namespace.as_deref(), Some("mine"));
        assert_eq!(e.annotations["authorization.k8s.io/decision"], "allow");

        // A refusal before any question (impersonation) stands; the method stays the verb.
        let ctx = begin(&cap);
        scope(Some(ctx.clone()), async {
            refused();
            decided("get", object_ref("", "v1", "pods", "a", "p"), true, "r");
        })
        .await;
        ctx.complete(403);
        let e = cap.take().pop().unwrap();
        assert_eq!((e.verb.as_str(), e.object_ref), ("post", None));
        assert_eq!(e.annotations["authorization.k8s.io/decision"], "forbid");
    }

    #[tokio::test]
    async fn secret_bodies_are_never_handed_over() {
        let cap = Capture::with_level(Level::Request);
        for (resource, kept) in [("configmaps", true), ("secrets", false), ("tokenreviews", false)] {
            let ctx = begin(&cap);
            scope(Some(ctx.clone()), async {
                decided("create", object_ref("", "v1", resource, "a", ""), true, "");
                request_body(resource, || Some(json!({"data": {"k": "v"}})));
            })
            .await;
            ctx.complete(201);
            let e = cap.take().pop().unwrap();
            assert_eq!(e.request_object.is_some(), kept, "{resource}");
        }
    }

    /// One request through the API router (fake identity layer) with an audit context; the
    /// Event it produced.
    async fn through_api(
        f: &crate::testutil::Fixture,
        cap: &Arc<Capture>,
        method: &str,
        path: &str,
        user: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> kfsec_audit::Event {
        use tower::ServiceExt as _;
        let ctx = begin(cap);
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {user}"));
        if !headers.iter().any(|(k, _)| *k == "content-type") {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req
            .body(axum::body::Body::from(body.map(|b| b.to_string()).unwrap_or_default()))
            .unwrap();
        req.extensions_mut().insert(ctx.clone());
        let resp = crate::testutil::app(&f.api).oneshot(req).await.unwrap();
        ctx.complete(resp.status().as_u16());
        cap.take().pop().unwrap()
    }

    fn decision(e: &kfsec_audit::Event) -> (&str, &str) {
        let a = |k: &str| e.annotations.get(k).map_or("", String::as_str);
        (a("authorization.k8s.io/decision"), a("authorization.k8s.io/reason"))
    }

    #[tokio::test]
    async fn api_requests_name_their_verb_object_and_decision() {
        let f = crate::testutil::fixture();
        let cap = Capture::with_level(Level::Request);
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
        let e = through_api(&f, &cap, "POST", "/api/v1/namespaces", "admin", &[], Some(ns)).await;
        assert_eq!(e.response_status.map(|s| s.code), Some(201));
        // bob may not create ConfigMaps in x: forbid, no reason, the 403 recorded.
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
        let e = through_api(
            &f,
            &cap,
            "POST",
            "/api/v1/namespaces/x/configmaps",
            "bob",
            &[],
            Some(cm.clone()),
        )
        .await;
        assert_eq!(e.verb, "create");
        assert_eq!(e.object_ref, Some(object_ref("", "v1", "configmaps", "x", "")));
        assert_eq!(decision(&e), ("forbid", ""));
        assert_eq!(e.response_status.as_ref().map(|s| s.code), Some(403));
        assert_eq!(e.request_object, None, "a refused body is never read");
        // alice may: allow with the authorizer's reason; uid and resourceVersion of the write.
        let e = through_api(
            &f,
            &cap,
            "POST",
            "/api/v1/namespaces/x/configmaps",
            "alice",
            &[],
            Some(cm.clone()),
        )
        .await;
        assert_eq!(decision(&e), ("allow", "test: allowed by grant to user:alice"));
        let o = e.object_ref.clone().unwrap();
        assert_eq!(
            (o.name.as_deref(), o.namespace.as_deref()),
            (Some("c"), Some("x")),
            "{e:?}"
        );
        assert!(o.uid.is_some() && o.resource_version.is_some(), "{o:?}");
        assert_eq!(e.request_object, Some(cm));
        // A patch's body is the patch, as sent.
        let patch = json!({"data": {"a": "c"}});
        let e = through_api(
            &f,
            &cap,
            "PATCH",
            "/api/v1/namespaces/x/configmaps/c",
            "alice",
            &[("content-type", "application/merge-patch+json")],
            Some(patch.clone()),
        )
        .await;
        assert_eq!((e.verb.as_str(), e.request_object), ("patch", Some(patch)));
        // A Secret's body is never handed over, at any level.
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "hunter2"}});
        let e = through_api(
            &f,
            &cap,
            "POST",
            "/api/v1/namespaces/x/secrets",
            "alice",
            &[],
            Some(secret),
        )
        .await;
        assert_eq!(
            (e.verb.as_str(), e.response_status.as_ref().map(|s| s.code)),
            ("create", Some(201))
        );
        assert_eq!(e.request_object, None);
        assert!(!serde_json::to_string(&e).unwrap().contains("hunter2"));
        // namespaces/NAME is authorized (and recorded) in namespace NAME; a pinned list names it.
        let e = through_api(&f, &cap, "GET", "/api/v1/namespaces/x", "alice", &[], None).await;
        assert_eq!(e.object_ref, Some(object_ref("", "v1", "namespaces", "x", "x")));
        let e = through_api(
            &f,
            &cap,
            "GET",
            "/api/v1/namespaces/x/configmaps?fieldSelector=metadata.name%3Dc",
            "bob",
            &[],
            None,
        )
        .await;
        assert_eq!(
            (e.verb.as_str(), e.object_ref.unwrap().name.as_deref()),
            ("list", Some("c"))
        );
        // a subresource
        let e = through_api(&f, &cap, "GET", "/api/v1/namespaces/x/pods/p/status", "bob", &[], None).await;
        assert_eq!(e.object_ref.unwrap().subresource.as_deref(), Some("status"));
        // Discovery: a non-resource request, allowed.
        let e = through_api(&f, &cap, "GET", "/apis", "bob", &[], None).await;
        assert_eq!((e.verb.as_str(), e.object_ref.is_none()), ("get", true));
        assert_eq!(decision(&e).0, "allow");
    }

    #[tokio::test]
    async fn impersonation_is_recorded_and_its_refusal_is_a_forbid() {
        let f = crate::testutil::fixture();
        let cap = Capture::metadata();
        let e = through_api(
            &f,
            &cap,
            "GET",
            "/api/v1/namespaces/x/configmaps",
            "alice",
            &[("impersonate-user", "bob")],
            None,
        )
        .await;
        assert_eq!(e.impersonated_user.as_ref().map(|u| u.username.as_str()), Some("bob"));
        assert_eq!(decision(&e), ("allow", "test: allowed by grant to user:bob"));
        let e = through_api(
            &f,
            &cap,
            "GET",
            "/api/v1/namespaces/x/configmaps",
            "bob",
            &[("impersonate-user", "alice")],
            None,
        )
        .await;
        // Refused: the attempted request's verb and objectRef, the refusal as the reason.
        assert_eq!(e.impersonated_user, None);
        assert_eq!(e.verb, "list");
        assert_eq!(e.object_ref, Some(object_ref("", "v1", "configmaps", "x", "")));
        assert_eq!(
            decision(&e),
            (
                "forbid",
                "users \"alice\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
            )
        );
        assert_eq!(e.response_status.unwrap().code, 403);
        for (method, path, verb, want) in [
            (
                "DELETE",
                "/apis/kubeflow.org/v1alpha1/namespaces/x/poddefaults/p",
                "delete",
                Some(object_ref("kubeflow.org", "v1alpha1", "poddefaults", "x", "p")),
            ),
            (
                "GET",
                "/api/v1/namespaces/x",
                "get",
                Some(object_ref("", "v1", "namespaces", "x", "x")),
            ),
            (
                "GET",
                "/api/v1/pods?watch=1",
                "watch",
                Some(object_ref("", "v1", "pods", "", "")),
            ),
            ("GET", "/apis", "get", None),
        ] {
            let e = through_api(&f, &cap, method, path, "bob", &[("impersonate-user", "alice")], None).await;
            assert_eq!((e.verb.as_str(), &e.object_ref), (verb, &want), "{method} {path}");
            assert_eq!(decision(&e).0, "forbid", "{method} {path}");
        }
        let e = through_api(
            &f,
            &cap,
            "GET",
            "/api/v1/namespaces/x/pods/p/status",
            "bob",
            &[("impersonate-user", "alice")],
            None,
        )
        .await;
        assert_eq!(e.object_ref.and_then(|o| o.subresource).as_deref(), Some("status"));
    }

    #[tokio::test]
    async fn an_apply_that_would_create_without_create_rights_is_a_forbid() {
        let mut grants = crate::testutil::default_grants();
        grants.push(crate::testutil::grant(
            "user:bob",
            &["patch"],
            &[""],
            &["configmaps"],
            Some("x"),
        ));
        let f = crate::testutil::fixture_with(grants);
        let cap = Capture::metadata();
        use tower::ServiceExt as _;
        let ctx = begin(&cap);
        let mut req = axum::http::Request::builder()
            .method("PATCH")
            .uri("/api/v1/namespaces/x/configmaps/c?fieldManager=m")
            .header("authorization", "Bearer bob")
            .header("content-type", "application/apply-patch+yaml")
            .body(axum::body::Body::from(
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#,
            ))
            .unwrap();
        req.extensions_mut().insert(ctx.clone());
        let resp = crate::testutil::app(&f.api).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 403);
        ctx.complete(403);
        let e = cap.take().pop().unwrap();
        assert_eq!(e.verb, "patch");
        assert_eq!(decision(&e), ("forbid", ""));
    }

    struct Annotating;

    #[async_trait::async_trait]
    impl crate::Admission for Annotating {
        async fn admit(&self, _: crate::AdmissionAttributes<'_>, _: &mut Value) -> Result<(), crate::AdmissionDenied> {
            annotate("mutation.webhook.admission.k8s.io/round_0_index_0", "m");
            Ok(())
        }
    }

    #[tokio::test]
    async fn admission_plugins_annotate_the_writes_event() {
        let clock = kfsec_types::ManualClock::new(kfsec_types::UnixTime::from_secs(1_700_000_000));
        let store = kfsec_store::MemoryStore::new(clock.clone());
        let authz = crate::testutil::TableAuthz::new(crate::testutil::default_grants());
        let api = crate::ApiServer::builder(store, authz, clock, Arc::new(crate::testutil::CounterRng::default()))
            .admission(Arc::new(Annotating))
            .build();
        let f = crate::testutil::Fixture {
            api,
            store: kfsec_store::MemoryStore::new(kfsec_types::ManualClock::new(UnixTime::from_secs(1))),
            authz: crate::testutil::TableAuthz::new(vec![]),
        };
        let cap = Capture::metadata();
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
        let e = through_api(&f, &cap, "POST", "/api/v1/namespaces", "admin", &[], Some(ns)).await;
        assert_eq!(e.annotations["mutation.webhook.admission.k8s.io/round_0_index_0"], "m");
    }
}
