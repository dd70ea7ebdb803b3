//! Security regressions of the API server (issue 9): no Profile may claim a system namespace by
//! any path or caller; a watch ends with a 403 ERROR event once RBAC revokes its caller, even a revocation
//! between the handler's check and the watch's start; PATCH
//! bodies built to be quadratic stay fast, and oversized JSON patches are refused; YAML aliases
//! cannot expand a body beyond the body limit, and no write stores an object larger than three
//! bodies (issue 12).

#![allow(clippy::disallowed_methods)] // timing assertions (quadratic-body regressions) measure real elapsed time

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use kfsec_store::MemoryStore;
use kfsec_types::identity::UserInfo;
use kfsec_types::{ManualClock, UnixTime};

use crate::testutil::{CounterRng, app, default_grants, fixture, grant};
use crate::{ApiServer, Attributes, Authorize, Decision, PatchType, RequestAttributes, SubjectRules};

async fn send(
    api: &Arc<ApiServer>,
    method: &str,
    uri: &str,
    user: &str,
    ct: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {user}"))
        .header("content-type", ct)
        .body(Body::from(body))
        .unwrap();
    let resp = app(api).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn profile(name: &str) -> Value {
    json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": name},
           "spec": {"owner": {"kind": "User", "name": "alice"}}})
}

#[tokio::test]
async fn no_profile_claims_a_system_namespace() {
    let f = fixture();
    let p = ApiServer::resource("kubeflow.org", "v1", "profiles").unwrap();
    for name in ["kubeflow", "kube-system", "kube-public", "kube-x", "default", "kfsec"] {
        assert!(f.api.is_reserved_namespace(name));
        // the typed helper KFAM and controllers use (system:masters) is refused too
        let e = f.api.create_object(p, "", profile(name)).await.unwrap_err();
        assert_eq!(e.code(), 403, "{name}");
        assert!(e.to_status().message.contains("reserved"), "{name}");
        for version in ["v1", "v1beta1"] {
            let (s, v) = send(
                &f.api,
                "POST",
                &format!("/apis/kubeflow.org/{version}/profiles"),
                "admin",
                "application/json",
                profile(name).to_string().into_bytes(),
            )
            .await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{name} {version}: {v}");
            assert_eq!(
                (v["kind"].as_str(), v["reason"].as_str()),
                (Some("Status"), Some("Forbidden"))
            );
            assert!(
                v["message"].as_str().unwrap().contains("is reserved for the system"),
                "{v}"
            );
        }
        // generateName landing on a reserved name is no way around it
        let mut g = profile("");
        g["metadata"] = json!({"generateName": "kube-"});
        assert_eq!(f.api.create_object(p, "", g).await.unwrap_err().code(), 403);
    }
    assert!(!f.api.is_reserved_namespace("kubeflow-user"));
    assert!(!f.api.is_reserved_namespace("kubex"));
    f.api.create_object(p, "", profile("team-a")).await.unwrap();
    // a squatting Profile left by older data cannot be changed by callers (the controller can)
    let mut old = profile("kubeflow");
    old["metadata"]["uid"] = json!("u1");
    kfsec_store::Store::put(
        f.store.as_ref(),
        &p.key("", "kubeflow"),
        serde_json::to_vec(&old).unwrap(),
        None,
    )
    .await
    .unwrap();
    let (s, _) = send(
        &f.api,
        "PATCH",
        "/apis/kubeflow.org/v1/profiles/kubeflow",
        "admin",
        "application/merge-patch+json",
        br#"{"spec":{"owner":{"name":"mallory"}}}"#.to_vec(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let mut current = f.api.get_object(p, "", "kubeflow").await.unwrap().unwrap();
    current["status"] = json!({"conditions": [{"type": "Failed"}]});
    f.api.update_object(p, current).await.unwrap();
    // and it can be deleted
    let (s, _) = send(
        &f.api,
        "DELETE",
        "/apis/kubeflow.org/v1/profiles/kubeflow",
        "admin",
        "application/json",
        Vec::new(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

/// POSTs `body` to `uri` as `user`, which must create it.
async fn create(api: &Arc<ApiServer>, user: &str, uri: &str, body: &str) {
    let (s, v) = send(api, "POST", uri, user, "application/json", body.into()).await;
    assert_eq!(s, StatusCode::CREATED, "{uri}: {v}");
}

/// Bob's watch of the configmaps in `x`.
async fn watch_as_bob(api: &Arc<ApiServer>) -> axum::response::Response {
    let req = Request::builder()
        .uri("/api/v1/namespaces/x/configmaps?watch=true&timeoutSeconds=30")
        .header("authorization", "Bearer bob")
        .body(Body::empty())
        .unwrap();
    app(api).oneshot(req).await.unwrap()
}

#[tokio::test]
async fn a_watch_ends_when_its_caller_loses_the_right() {
    let f = fixture();
    create(&f.api, "alice", "/api/v1/namespaces", r#"{"metadata":{"name":"x"}}"#).await;
    let with_bob_watching = |extra: Vec<crate::testutil::Grant>| {
        let mut grants = default_grants();
        grants.push(grant("user:bob", &["watch"], &[""], &["configmaps"], Some("x")));
        grants.extend(extra);
        grants
    };
    // bob may get and list, not watch: forbidden from the start
    assert_eq!(watch_as_bob(&f.api).await.status(), StatusCode::FORBIDDEN);
    f.authz.set(with_bob_watching(vec![]));
    let resp = watch_as_bob(&f.api).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // an unrelated RBAC change keeps the watch open
    f.authz.set(with_bob_watching(vec![grant(
        "user:carol",
        &["get"],
        &[""],
        &["pods"],
        None,
    )]));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), body.frame())
            .await
            .is_err()
    );
    // revoking bob's watch right ends it at once with a 403 ERROR event
    let t = Instant::now();
    f.authz.set(default_grants());
    let mut text = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), body.frame())
            .await
            .unwrap()
        {
            Some(Ok(frame)) => {
                if let Ok(d) = frame.into_data() {
                    text.push_str(std::str::from_utf8(&d).unwrap());
                }
            }
            Some(Err(e)) => panic!("{e}"),
            None => break,
        }
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    let v: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["type"], "ERROR");
    assert_eq!(v["object"]["code"], 403);
    assert_eq!(v["object"]["reason"], "Forbidden");
}

/// Allows everything except a watch after its first `allowed` checks, and never announces a
/// change: a binding removed between the handler's check and the watch's subscription.
struct RevokedAfter {
    allowed: usize,
    asked: AtomicUsize,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Authorize for RevokedAfter {
    fn authorize(&self, a: &Attributes) -> Decision {
        let watch = matches!(&a.request, RequestAttributes::Resource(r) if r.verb == "watch");
        if watch && self.asked.fetch_add(1, Ordering::SeqCst) >= self.allowed {
            return Decision::NoOpinion;
        }
        Decision::Allow { reason: "test".into() }
    }

    fn rules_for(&self, _: &UserInfo, _: &str) -> SubjectRules {
        SubjectRules::default()
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }
}

/// The whole body of a watch that must end by itself within 2 s.
async fn drain(resp: axum::response::Response) -> String {
    let mut body = resp.into_body();
    let mut text = String::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(2), body.frame())
        .await
        .expect("the watch kept streaming")
    {
        if let Ok(d) = frame.unwrap().into_data() {
            text.push_str(std::str::from_utf8(&d).unwrap());
        }
    }
    text
}

#[tokio::test]
async fn a_watch_rechecks_its_right_before_it_streams() {
    // `allowed` watch checks pass: 1 = only the handler's (revoked before the watch subscribed),
    // 2 = also the one at subscription (revoked during the initial list)
    for allowed in [1, 2, usize::MAX] {
        let authz = Arc::new(RevokedAfter {
            allowed,
            asked: AtomicUsize::new(0),
            changes: tokio::sync::watch::channel(0).0,
        });
        let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
        let api = ApiServer::new(
            MemoryStore::new(clock.clone()),
            authz.clone(),
            clock,
            Arc::new(CounterRng::default()),
        );
        for (uri, body) in [
            ("/api/v1/namespaces", r#"{"metadata":{"name":"x"}}"#),
            ("/api/v1/namespaces/x/configmaps", r#"{"metadata":{"name":"c"}}"#),
        ] {
            create(&api, "bob", uri, body).await;
        }
        let resp = watch_as_bob(&api).await;
        assert_eq!(resp.status(), StatusCode::OK, "allowed={allowed}");
        if allowed == usize::MAX {
            // the control: still allowed, the initial state streams and the watch stays open
            let mut body = resp.into_body();
            let frame = tokio::time::timeout(Duration::from_secs(2), body.frame())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let v: Value = serde_json::from_slice(&frame.into_data().unwrap()).unwrap();
            assert_eq!(v["type"], "ADDED");
            assert!(
                tokio::time::timeout(Duration::from_millis(200), body.frame())
                    .await
                    .is_err()
            );
            continue;
        }
        // revoked: nothing of the namespace is sent, only the 403 ERROR event, then the end
        let text = drain(resp).await;
        let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("allowed={allowed}: {e}: {text}"));
        assert_eq!(v["type"], "ERROR", "allowed={allowed}");
        assert_eq!(v["object"]["code"], 403);
        assert_eq!(v["object"]["reason"], "Forbidden");
        assert_eq!(authz.asked.load(Ordering::SeqCst), allowed + 1);
    }
}

#[tokio::test]
async fn a_revocation_while_the_initial_state_streams_ends_the_watch() {
    let f = fixture();
    let mut grants = default_grants();
    grants.push(grant("user:bob", &["watch"], &[""], &["configmaps"], Some("x")));
    f.authz.set(grants);
    create(&f.api, "alice", "/api/v1/namespaces", r#"{"metadata":{"name":"x"}}"#).await;
    for i in 0..3 {
        let body = format!(r#"{{"metadata":{{"name":"c{i}"}}}}"#);
        create(&f.api, "alice", "/api/v1/namespaces/x/configmaps", &body).await;
    }
    let resp = watch_as_bob(&f.api).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&first).unwrap()["type"], "ADDED");
    // revoked with two objects of the initial state still queued: none of them is sent
    f.authz.set(default_grants());
    let rest = drain(axum::response::Response::new(Body::new(body))).await;
    let v: Value = serde_json::from_str(rest.trim()).unwrap_or_else(|e| panic!("{e}: {rest}"));
    assert_eq!(v["type"], "ERROR");
    assert_eq!(v["object"]["code"], 403);
}

#[tokio::test]
async fn patches_built_to_be_quadratic_stay_fast() {
    let n = 40_000;
    let items: Vec<Value> = (0..n).map(|i| json!(format!("v{i}"))).collect();
    let containers: Vec<Value> = (0..n).map(|i| json!({"name": format!("c{i}"), "image": "x"})).collect();
    let doc = json!({"spec": {"finalizers": items, "containers": containers}});
    let t = Instant::now();
    let del: Vec<Value> = (0..n).step_by(2).map(|i| json!(format!("v{i}"))).collect();
    let order: Vec<Value> = (0..n).rev().map(|i| json!({"name": format!("c{i}")})).collect();
    let ops: Vec<Value> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                json!({"name": format!("c{i}"), "$patch": "delete"})
            } else {
                json!({"name": format!("c{i}"), "image": "y"})
            }
        })
        .collect();
    let patch = json!({"spec": {"$deleteFromPrimitiveList/finalizers": del, "$setElementOrder/containers": order, "containers": ops}});
    let out = crate::patch::apply(&doc, PatchType::Strategic, patch.to_string().as_bytes(), true).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(out["spec"]["finalizers"].as_array().unwrap().len(), n / 2);
    let cs = out["spec"]["containers"].as_array().unwrap();
    assert_eq!(cs.len(), n / 2);
    assert_eq!(cs[0], json!({"name": format!("c{}", n - 1), "image": "y"}));
    // a JSON patch has at most 10000 operations (Kubernetes' limit)
    let ops: Vec<Value> = (0..10_001)
        .map(|_| json!({"op": "test", "path": "/spec", "value": 1}))
        .collect();
    let e = crate::patch::apply(&doc, PatchType::Json, Value::Array(ops).to_string().as_bytes(), true).unwrap_err();
    assert_eq!(e.code(), 413);
}

/// Issue 10: a storage failure is a 500 `Status` with a generic message and an incident id,
/// never the store's text; two failures carry two ids.
#[tokio::test]
async fn store_failures_are_500_with_an_incident_id_and_no_internal_text() {
    use kfsec_store::flaky::Flaky;
    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let store = Flaky::new(MemoryStore::new(clock.clone()));
    let authz = crate::testutil::TableAuthz::new(default_grants());
    let api = ApiServer::new(store.clone(), authz, clock, Arc::new(CounterRng::default()));
    store.fail(true);
    let mut ids = Vec::new();
    for (method, uri, body) in [
        ("GET", "/api/v1/namespaces/x/configmaps", Vec::new()),
        (
            "POST",
            "/api/v1/namespaces/x/configmaps",
            br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}}"#.to_vec(),
        ),
    ] {
        let (status, v) = send(&api, method, uri, "alice", "application/json", body).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
        assert_eq!(
            (v["kind"].as_str(), v["reason"].as_str()),
            (Some("Status"), Some("InternalError"))
        );
        let text = v.to_string();
        for leak in ["redb", "I/O", "/var/lib", "page 7", "storage:"] {
            assert!(!text.contains(leak), "{uri} leaks {leak:?}: {text}");
        }
        let message = v["message"].as_str().unwrap();
        let id = kfsec_types::Incident::quoted_in(message).unwrap_or_else(|| panic!("no incident id: {message}"));
        ids.push(id.to_owned());
    }
    assert_ne!(ids[0], ids[1]);
}

/// A watch on one object follows exactly that name, whatever it holds: RBAC names are path
/// segments and may contain `=` and `,`. The name used to be spliced into a field selector and
/// parsed again, so `a,b` was a 400 (and, with Kubernetes' value rules, `a=b` would be too).
#[tokio::test]
async fn a_watch_on_one_object_takes_its_name_as_it_is() {
    let f = fixture();
    for name in ["a=b", "a,b", "c"] {
        let body = json!({"metadata": {"name": name}, "rules": []}).to_string();
        create(
            &f.api,
            "admin",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            &body,
        )
        .await;
    }
    for name in ["a=b", "a,b"] {
        let req = Request::builder()
            .uri(format!(
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}?watch=1"
            ))
            .header("authorization", "Bearer admin")
            .body(Body::empty())
            .unwrap();
        let resp = app(&f.api).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{name}");
        let mut body = resp.into_body();
        let frame = tokio::time::timeout(Duration::from_secs(2), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let line = frame.into_data().unwrap();
        let v: Value = serde_json::from_slice(line.trim_ascii()).unwrap();
        assert_eq!(v["type"], "ADDED", "{name}");
        assert_eq!(v["object"]["metadata"]["name"], name);
        // Nothing else (no `a=b` for `a,b`, no `c`).
        assert!(
            tokio::time::timeout(Duration::from_millis(100), body.frame())
                .await
                .is_err(),
            "{name}"
        );
    }
}

/// A YAML body of `n_aliases` aliases of one anchored `anchor_bytes`-byte scalar (plus enough
/// other anchors for the parser's alias/anchor ratio): ~52 KB that expand to ~60 MB.
fn alias_bomb(name: &str, anchor_bytes: usize, n_aliases: usize) -> String {
    let mut s = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  big: &b ");
    s.push_str(&"A".repeat(anchor_bytes));
    s.push('\n');
    for i in 0..=n_aliases / 10 {
        s.push_str(&format!("  d{i}: &a{i} x\n"));
    }
    s.push_str("  many: [");
    s.push_str(&vec!["*b"; n_aliases].join(","));
    s.push_str("]\n");
    s
}

/// Issue 12: YAML aliases cannot turn a small create body into an object larger than any body
/// the API accepts (a 52 KB body was stored as a 60 MB ConfigMap); a body whose aliases expand
/// within that limit still decodes.
#[tokio::test]
async fn yaml_aliases_cannot_grow_a_body_beyond_the_body_limit() {
    let f = fixture();
    create(&f.api, "alice", "/api/v1/namespaces", r#"{"metadata":{"name":"x"}}"#).await;
    let uri = "/api/v1/namespaces/x/configmaps";
    let bomb = alias_bomb("bomb", 6000, 10_000);
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    let (s, v) = send(&f.api, "POST", uri, "alice", "application/yaml", bomb.into_bytes()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{}", v.to_string().len());
    let (s, _) = send(&f.api, "GET", &format!("{uri}/bomb"), "alice", "", Vec::new()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // 100 aliases of 6 KB: 600 KB decoded from 7 KB, under the 3 MiB body limit.
    let fine = alias_bomb("fine", 6000, 100).replace("  many:", "  more:");
    let (s, v) = send(&f.api, "POST", uri, "alice", "application/yaml", fine.into_bytes()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["data"]["more"].as_array().map(Vec::len), Some(100));
}

/// Issue 12: no write stores an object larger than three request bodies (the object, its
/// `managedFields` and slack). Before, an object grew without bound: each server-side apply of
/// the same configuration by another field manager added a `managedFields` entry the size of
/// the configuration (no conflict: shared ownership), and each merge patch could add a body's
/// worth of new keys.
#[tokio::test]
async fn objects_cannot_grow_beyond_three_bodies() {
    let max_body = 64 * 1024;
    let f = fixture();
    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let api = ApiServer::builder(
        MemoryStore::new(clock.clone()),
        f.authz.clone(),
        clock,
        Arc::new(CounterRng::default()),
    )
    .options(crate::ApiOptions {
        max_body_bytes: max_body,
        ..Default::default()
    })
    .build();
    create(&api, "alice", "/api/v1/namespaces", r#"{"metadata":{"name":"x"}}"#).await;
    let data: serde_json::Map<String, Value> = (0..2000).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "grow"}, "data": data});
    let cfg = serde_json::to_vec(&cfg).unwrap();
    let uri = "/api/v1/namespaces/x/configmaps/grow";
    let mut refused = None;
    for i in 0..40 {
        let (s, v) = send(
            &api,
            "PATCH",
            &format!("{uri}?fieldManager=m{i}"),
            "alice",
            "application/apply-patch+yaml",
            cfg.clone(),
        )
        .await;
        if s == StatusCode::PAYLOAD_TOO_LARGE {
            refused = Some(i);
            break;
        }
        assert!(s.is_success(), "{s}: {v}");
    }
    assert!(refused.is_some_and(|i| i > 2), "{refused:?}");
    let (s, stored) = send(&api, "GET", uri, "alice", "", Vec::new()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(stored.to_string().len() <= 3 * max_body, "{}", stored.to_string().len());

    // Merge patches adding new keys, each within the body limit.
    let mut refused = None;
    for i in 0..10 {
        let more: serde_json::Map<String, Value> = (0..2000)
            .map(|j| (format!("p{i}-{j}"), json!("0123456789abcdef")))
            .collect();
        let body = serde_json::to_vec(&json!({"data": more})).unwrap();
        assert!(body.len() < max_body);
        let (s, v) = send(&api, "PATCH", uri, "alice", "application/merge-patch+json", body).await;
        if s == StatusCode::PAYLOAD_TOO_LARGE {
            refused = Some(i);
            break;
        }
        assert!(s.is_success(), "{s}: {v}");
    }
    assert!(refused.is_some(), "merge patches grew the object without bound");
    let (_, stored) = send(&api, "GET", uri, "alice", "", Vec::new()).await;
    assert!(stored.to_string().len() <= 3 * max_body, "{}", stored.to_string().len());
}
