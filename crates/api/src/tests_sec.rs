//! Security regressions of the API server (issue 9): no Profile may claim a system namespace by
//! any path or caller; a watch ends with a 403 ERROR event once RBAC revokes its caller; PATCH
//! bodies built to be quadratic stay fast, and oversized JSON patches are refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::testutil::{app, default_grants, fixture, grant};
use crate::{ApiServer, PatchType};

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
        assert!(
            e.to_status()["message"].as_str().unwrap().contains("reserved"),
            "{name}"
        );
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

#[tokio::test]
async fn a_watch_ends_when_its_caller_loses_the_right() {
    let f = fixture();
    let (s, _) = send(
        &f.api,
        "POST",
        "/api/v1/namespaces",
        "alice",
        "application/json",
        br#"{"metadata":{"name":"x"}}"#.to_vec(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let watch = || async {
        let req = Request::builder()
            .uri("/api/v1/namespaces/x/configmaps?watch=true&timeoutSeconds=30")
            .header("authorization", "Bearer bob")
            .body(Body::empty())
            .unwrap();
        app(&f.api).oneshot(req).await.unwrap()
    };
    let with_bob_watching = |extra: Vec<crate::testutil::Grant>| {
        let mut grants = default_grants();
        grants.push(grant("user:bob", &["watch"], &[""], &["configmaps"], Some("x")));
        grants.extend(extra);
        grants
    };
    // bob may get and list, not watch: forbidden from the start
    assert_eq!(watch().await.status(), StatusCode::FORBIDDEN);
    f.authz.set(with_bob_watching(vec![]));
    let resp = watch().await;
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
