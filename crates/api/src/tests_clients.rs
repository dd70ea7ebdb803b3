//! HTTP-level tests of what real clients (kubectl 1.32, the Python `kubernetes` client) send
//! beyond plain CRUD: trailing-slash discovery paths, every spelling of `watch=`, TokenRequest
//! and SelfSubjectReview — in-process, through the fake identity layer.
//!
//! Invariants: test-only.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::ApiServer;
use crate::testutil::{app, fixture, watch_events};

async fn send(api: &Arc<ApiServer>, method: &str, path: &str, user: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {user}"));
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b
        .body(body.map_or_else(Body::empty, |v| Body::from(v.to_string())))
        .unwrap();
    let resp = app(api).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

/// `/version/`, `/api/`, `/apis/`, `/api/v1/`, `/apis/{g}/`, `/apis/{g}/{v}/` answer as without
/// the slash (the Python client asks `/version/`); unknown paths under the API's prefixes are a
/// 404 `Status`.
#[tokio::test]
async fn trailing_slash_paths_answer_like_kube_apiserver() {
    let f = fixture();
    for (path, key, want) in [
        ("/version/", "gitVersion", json!("v1.32.0-kfsec")),
        ("/api/", "kind", json!("APIVersions")),
        ("/apis/", "kind", json!("APIGroupList")),
        ("/api/v1/", "groupVersion", json!("v1")),
        ("/apis/kubeflow.org/", "kind", json!("APIGroup")),
        ("/apis/kubeflow.org/v1/", "groupVersion", json!("kubeflow.org/v1")),
    ] {
        let (s, v) = send(&f.api, "GET", path, "nobody", None).await;
        assert_eq!((s, &v[key]), (StatusCode::OK, &want), "{path}: {v}");
    }
    for path in [
        "/version/x",
        "/api/v2/",
        "/apis/nope.io/",
        "/apis/kubeflow.org/v9/",
        "/openapi/v3/nope",
    ] {
        let (s, v) = send(&f.api, "GET", path, "nobody", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            (&v["kind"], &v["reason"]),
            (&json!("Status"), &json!("NotFound")),
            "{path}: {v}"
        );
    }
}

/// `watch=True` (the Python client), `watch=1`, `watch=t`, the bare `watch` — each starts a watch
/// stream; `watch=false`/`0`/`False` is a plain list.
#[tokio::test]
async fn every_spelling_of_watch_starts_a_watch() {
    let f = fixture();
    send(
        &f.api,
        "POST",
        "/api/v1/namespaces",
        "alice",
        Some(json!({"metadata": {"name": "x"}})),
    )
    .await;
    let (s, _) = send(
        &f.api,
        "POST",
        "/api/v1/namespaces/x/configmaps",
        "alice",
        Some(json!({"metadata": {"name": "c1"}})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    for spelling in [
        "watch=True",
        "watch=true",
        "watch=1",
        "watch=t",
        "watch=TRUE",
        "watch",
        "watch=&x=1",
    ] {
        let req = Request::builder()
            .uri(format!("/api/v1/namespaces/x/configmaps?{spelling}&timeoutSeconds=5"))
            .header("authorization", "Bearer alice")
            .body(Body::empty())
            .unwrap();
        let resp = app(&f.api).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{spelling}");
        assert_eq!(watch_events(resp, 1).await, ["ADDED c1"], "{spelling}");
    }
    for spelling in ["watch=false", "watch=False", "watch=0", "watch=FALSE"] {
        let (s, v) = send(
            &f.api,
            "GET",
            &format!("/api/v1/namespaces/x/configmaps?{spelling}"),
            "alice",
            None,
        )
        .await;
        assert_eq!((s, &v["kind"]), (StatusCode::OK, &json!("ConfigMapList")), "{spelling}");
    }
}

/// `kubectl auth whoami`: the caller after impersonation, with its implicit groups; a body
/// naming someone else changes nothing; discovery lists the resource.
#[tokio::test]
async fn self_subject_review_answers_the_caller() {
    // As kfsec's `system:basic-user` grants every authenticated user.
    let mut grants = crate::testutil::default_grants();
    grants.push(crate::testutil::grant(
        "group:system:authenticated",
        &["create"],
        &["authentication.k8s.io"],
        &["selfsubjectreviews"],
        None,
    ));
    let f = crate::testutil::fixture_with(grants);
    let path = "/apis/authentication.k8s.io/v1/selfsubjectreviews";
    let (s, v) = send(
        &f.api,
        "POST",
        path,
        "alice",
        Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["kind"], "SelfSubjectReview");
    assert_eq!(v["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(
        v["status"]["userInfo"],
        json!({"username": "alice", "groups": ["team-a", "system:authenticated"]})
    );
    assert_eq!(v["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
    // Nothing of the body is echoed: a claimed status stays the caller's.
    let (_, v) = send(
        &f.api,
        "POST",
        path,
        "bob",
        Some(json!({"status": {"userInfo": {"username": "admin", "groups": ["system:masters"]}}})),
    )
    .await;
    assert_eq!(
        v["status"]["userInfo"],
        json!({"username": "bob", "groups": ["system:authenticated"]})
    );
    // Impersonated (alice may impersonate bob): the review shows bob.
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("authorization", "Bearer alice")
        .header("impersonate-user", "bob")
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let resp = app(&f.api).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["status"]["userInfo"]["username"], "bob");
    // Wrong kind and other verbs.
    let (s, _) = send(&f.api, "POST", path, "alice", Some(json!({"kind": "TokenReview"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = send(&f.api, "GET", path, "alice", None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (_, v) = send(&f.api, "GET", "/apis/authentication.k8s.io/v1", "alice", None).await;
    let r = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "selfsubjectreviews")
        .unwrap();
    assert_eq!(
        (&r["kind"], &r["verbs"], &r["namespaced"]),
        (&json!("SelfSubjectReview"), &json!(["create"]), &json!(false))
    );
}

/// `POST` a TokenRequest `body` for service account `ns/sa` as `user`.
async fn mint(api: &Arc<ApiServer>, ns: &str, sa: &str, user: &str, body: Value) -> (StatusCode, Value) {
    let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token");
    send(api, "POST", &path, user, Some(body)).await
}

/// An issuer that signs nothing: it returns the grant as its "token", so a test sees exactly
/// what the API asked for.
struct EchoIssuer;

#[async_trait::async_trait]
impl crate::TokenIssuer for EchoIssuer {
    async fn issue(&self, g: &crate::TokenGrant) -> Result<crate::IssuedToken, crate::IssueError> {
        if g.name == "vanished" {
            return Err(crate::IssueError::NoAccount);
        }
        if let Some(a) = g.audiences.iter().find(|a| a.starts_with("client-")) {
            return Err(crate::IssueError::Audience(a.clone()));
        }
        let audiences = if g.audiences.is_empty() {
            vec!["kfsec".to_owned()]
        } else {
            g.audiences.clone()
        };
        let lifetime = g.lifetime.as_secs().min(48 * 3600);
        Ok(crate::IssuedToken {
            token: match &g.bound {
                None => format!("{}/{}/{}/{lifetime}", g.namespace, g.name, audiences.join(",")),
                Some(b) => format!("{}/{}/{:?}:{}:{}", g.namespace, g.name, b.kind, b.name, b.uid),
            },
            audiences,
            issued_at: 1_700_000_000,
            expires_at: 1_700_000_000 + lifetime,
        })
    }
}

fn token_fixture() -> Arc<ApiServer> {
    let clock = kfsec_types::ManualClock::new(kfsec_types::UnixTime::from_secs(1_700_000_000));
    let store = kfsec_store::MemoryStore::new(clock.clone());
    let mut grants = crate::testutil::default_grants();
    // bob may mint tokens for `robot` only.
    let mut g = crate::testutil::grant("user:bob", &["create"], &[""], &["serviceaccounts/token"], Some("x"));
    g.names = vec!["robot".into()];
    grants.push(g);
    let authz = crate::testutil::TableAuthz::new(grants);
    ApiServer::builder(store, authz, clock, Arc::new(crate::testutil::CounterRng::default()))
        .token_issuer(Arc::new(EchoIssuer))
        .build()
}

/// `kubectl create token`: RBAC on `serviceaccounts/token` with the account's name, 404 for a
/// missing account, kube-apiserver's validation, defaults and answer shape.
#[tokio::test]
async fn token_request_mints_for_existing_accounts_only() {
    let api = token_fixture();
    send(
        &api,
        "POST",
        "/api/v1/namespaces",
        "alice",
        Some(json!({"metadata": {"name": "x"}})),
    )
    .await;
    for sa in ["robot", "other", "vanished"] {
        let (s, _) = send(
            &api,
            "POST",
            "/api/v1/namespaces/x/serviceaccounts",
            "alice",
            Some(json!({"metadata": {"name": sa}})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let path = "/api/v1/namespaces/x/serviceaccounts/robot/token";
    let (s, v) = mint(
        &api,
        "x",
        "robot",
        "alice",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        (&v["kind"], &v["apiVersion"]),
        (&json!("TokenRequest"), &json!("authentication.k8s.io/v1"))
    );
    assert_eq!(v["status"]["token"], "x/robot/kfsec/3600");
    assert_eq!(v["status"]["expirationTimestamp"], "2023-11-14T23:13:20Z");
    assert_eq!(
        v["spec"],
        json!({"audiences": ["kfsec"], "expirationSeconds": 3600, "boundObjectRef": null})
    );
    assert_eq!(v["metadata"]["namespace"], "x");
    // Audiences and a long lifetime (capped by the issuer), as `--audience A --duration 100h`.
    let (s, v) = mint(
        &api,
        "x",
        "robot",
        "bob",
        json!({"spec": {"audiences": ["pipelines.kubeflow.org", "vault"], "expirationSeconds": 360_000}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"]["token"], "x/robot/pipelines.kubeflow.org,vault/172800");
    assert_eq!(v["spec"]["expirationSeconds"], 172_800);
    // bob's grant names `robot` only; a list-only user cannot mint at all.
    let (s, v) = mint(&api, "x", "other", "bob", json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        v["message"],
        "serviceaccounts \"other\" is forbidden: User \"bob\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"x\""
    );
    let (s, _) = mint(&api, "y", "robot", "bob", json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // No such account: 404 as for a get; one deleted as the token is issued too.
    let (s, v) = mint(&api, "x", "ghost", "alice", json!({})).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("serviceaccounts \"ghost\" not found"))
    );
    let (s, _) = mint(&api, "x", "vanished", "alice", json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Validation before the lookup, with kube-apiserver's words.
    let (s, v) = mint(&api, "x", "ghost", "alice", json!({"spec": {"expirationSeconds": 60}})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        v["message"],
        "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"
    );
    let (s, v) = mint(
        &api,
        "x",
        "robot",
        "alice",
        json!({"spec": {"boundObjectRef": {"kind": "Node", "apiVersion": "v1", "name": "n"}}}),
    )
    .await;
    assert_eq!(
        (s, v["message"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("cannot bind token to object of type /v1, Kind=Node")
        )
    );
    let (s, _) = mint(&api, "x", "robot", "alice", json!({"kind": "TokenReview"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = mint(&api, "x", "robot", "alice", json!({"metadata": {"namespace": "other"}})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // An audience the issuer refuses (one of its OAuth2 clients) is a 422 on spec.audiences.
    let (s, v) = mint(
        &api,
        "x",
        "robot",
        "alice",
        json!({"spec": {"audiences": ["vault", "client-rp"]}}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        v["message"],
        "TokenRequest.authentication.k8s.io \"\" is invalid: spec.audiences: Invalid value: \"client-rp\": names an OAuth2 client of this issuer (the token could pass for its ID token)"
    );
    // Only POST; only on service accounts; the cluster-wide path has no token.
    let (s, _) = send(&api, "GET", path, "alice", None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = send(
        &api,
        "POST",
        "/api/v1/namespaces/x/configmaps/robot/token",
        "alice",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = send(
        &api,
        "POST",
        "/api/v1/serviceaccounts/robot/token",
        "admin",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Discovery names the subresource as kube-apiserver does.
    let (_, v) = send(&api, "GET", "/api/v1", "alice", None).await;
    let r = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "serviceaccounts/token")
        .unwrap();
    assert_eq!(
        r,
        &json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]})
    );
}

/// Without an issuer (an API without an IdP) the subresource does not exist.
#[tokio::test]
async fn token_request_without_an_issuer_is_not_found() {
    let f = fixture();
    send(
        &f.api,
        "POST",
        "/api/v1/namespaces",
        "alice",
        Some(json!({"metadata": {"name": "x"}})),
    )
    .await;
    send(
        &f.api,
        "POST",
        "/api/v1/namespaces/x/serviceaccounts",
        "alice",
        Some(json!({"metadata": {"name": "robot"}})),
    )
    .await;
    let (s, v) = mint(&f.api, "x", "robot", "alice", json!({})).await;
    assert_eq!((s, &v["kind"]), (StatusCode::NOT_FOUND, &json!("Status")));
}

/// `kubectl create token --bound-object-kind Pod|Secret`: the object must exist in the account's
/// namespace, a Pod must run as the account, a given uid must be the object's; the issuer gets
/// the stored uid.
#[tokio::test]
async fn token_request_binds_to_pods_and_secrets() {
    let api = token_fixture();
    let post = |path: &'static str, body: Value| {
        let api = api.clone();
        async move { send(&api, "POST", path, "alice", Some(body)).await }
    };
    post("/api/v1/namespaces", json!({"metadata": {"name": "x"}})).await;
    post(
        "/api/v1/namespaces/x/serviceaccounts",
        json!({"metadata": {"name": "robot"}}),
    )
    .await;
    let (_, secret) = post("/api/v1/namespaces/x/secrets", json!({"metadata": {"name": "s"}})).await;
    let uid = secret["metadata"]["uid"].as_str().unwrap().to_owned();
    for (name, sa) in [("mine", "robot"), ("theirs", "other"), ("plain", "")] {
        let mut pod = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        if !sa.is_empty() {
            pod["spec"]["serviceAccountName"] = json!(sa);
        }
        let (s, v) = post("/api/v1/namespaces/x/pods", pod).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let bind = |kind: &str, name: &str, uid: &str| json!({"spec": {"boundObjectRef": {"kind": kind, "apiVersion": "v1", "name": name, "uid": uid}}});

    let (s, v) = mint(&api, "x", "robot", "alice", bind("Secret", "s", "")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"]["token"], format!("x/robot/Secret:s:{uid}"));
    assert_eq!(v["spec"]["boundObjectRef"]["name"], "s");
    let (s, v) = mint(&api, "x", "robot", "alice", bind("Secret", "s", &uid)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = mint(&api, "x", "robot", "alice", bind("Secret", "s", "stale-uid")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        v["message"],
        "Operation cannot be fulfilled on Secret \"s\": the UID in the bound object reference (stale-uid) does not match the UID in record. The object might have been deleted and then recreated"
    );
    let (s, v) = mint(&api, "x", "robot", "alice", bind("Secret", "gone", "")).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("secrets \"gone\" not found"))
    );
    let (s, v) = mint(&api, "x", "robot", "alice", bind("Pod", "mine", "")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(
        v["status"]["token"].as_str().unwrap().starts_with("x/robot/Pod:mine:"),
        "{v}"
    );
    let (s, v) = mint(&api, "x", "robot", "alice", bind("Pod", "theirs", "")).await;
    assert_eq!(
        (s, v["message"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("cannot bind token for serviceaccount \"robot\" to pod running with different serviceaccount name.")
        )
    );
    // A pod without serviceAccountName runs as `default`.
    let (s, _) = mint(&api, "x", "robot", "alice", bind("Pod", "plain", "")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}
