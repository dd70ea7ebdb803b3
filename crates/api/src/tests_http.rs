//! HTTP-level tests of the router (in-process, through the fake identity layer).
//!
//! Invariants: test-only.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use kfsec_types::admission::Operation;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::testutil::{Fixture, app, fixture, grant, watch_events};
use crate::{Admission, AdmissionAttributes, AdmissionDenied, ApiServer, PatchType};

struct Call<'a> {
    method: &'a str,
    path: &'a str,
    user: Option<&'a str>,
    body: Option<Vec<u8>>,
    content_type: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

fn call<'a>(method: &'a str, path: &'a str, user: &'a str) -> Call<'a> {
    Call {
        method,
        path,
        user: Some(user),
        body: None,
        content_type: "application/json",
        headers: Vec::new(),
    }
}

impl<'a> Call<'a> {
    fn json(mut self, v: &Value) -> Self {
        self.body = Some(v.to_string().into_bytes());
        self
    }
    fn raw(mut self, b: &[u8], ct: &'a str) -> Self {
        self.body = Some(b.to_vec());
        self.content_type = ct;
        self
    }
    fn header(mut self, k: &'a str, v: &'a str) -> Self {
        self.headers.push((k, v));
        self
    }
    fn anonymous(mut self) -> Self {
        self.user = None;
        self
    }
    fn request(&self) -> Request<Body> {
        let mut b = Request::builder().method(self.method).uri(self.path);
        if let Some(u) = self.user {
            b = b.header("authorization", format!("Bearer {u}"));
        }
        for (k, v) in &self.headers {
            b = b.header(*k, *v);
        }
        if self.body.is_some() {
            b = b.header("content-type", self.content_type);
        }
        b.body(self.body.clone().map(Body::from).unwrap_or_else(Body::empty))
            .unwrap()
    }
    async fn send(self, api: &Arc<ApiServer>) -> (StatusCode, Value) {
        let resp = app(api).oneshot(self.request()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, v)
    }
}

async fn setup() -> Fixture {
    let f = fixture();
    let (s, _) = call("POST", "/api/v1/namespaces", "alice")
        .json(&json!({"metadata": {"name": "x"}}))
        .send(&f.api)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    f
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

#[tokio::test]
async fn unauthenticated_and_discovery() {
    let f = fixture();
    let (s, v) = call("GET", "/api", "x").anonymous().send(&f.api).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["reason"], "Unauthorized");
    let (s, v) = call("GET", "/version", "nobody").send(&f.api).await;
    assert_eq!((s, v["gitVersion"].as_str()), (StatusCode::OK, Some("v1.32.0-kfsec")));
    let (_, v) = call("GET", "/api", "nobody").send(&f.api).await;
    assert_eq!(v["versions"], json!(["v1"]));
    let (_, v) = call("GET", "/apis", "nobody").send(&f.api).await;
    assert_eq!(v["kind"], "APIGroupList");
    let (_, v) = call("GET", "/apis/kubeflow.org/v1alpha1", "nobody").send(&f.api).await;
    assert_eq!(v["resources"][0]["kind"], "PodDefault");
    let (s, v) = call("GET", "/apis/nope.io/v1/things", "nobody").send(&f.api).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["message"], "the server could not find the requested resource");
    let (s, v) = call("GET", "/openapi/v2", "nobody").send(&f.api).await;
    assert_eq!((s, &v["swagger"]), (StatusCode::OK, &json!("2.0")));
    let (s, v) = call("GET", "/openapi/v3", "nobody").send(&f.api).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["paths"]["api/v1"]["serverRelativeURL"].is_string());
    let (s, _) = call("POST", "/api", "nobody").send(&f.api).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn crud_lifecycle() {
    let f = setup().await;
    let api = &f.api;
    let (s, c) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&cm("c1", json!({"app": "web"})))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    assert_eq!(c["metadata"]["namespace"], "x");
    assert_eq!(c["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert_eq!(c["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
    let rv1 = c["metadata"]["resourceVersion"].as_str().unwrap().to_owned();

    let (s, v) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&cm("c1", json!({})))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["reason"], "AlreadyExists");
    assert_eq!(v["message"], "configmaps \"c1\" already exists");

    let (s, v) = call("GET", "/api/v1/namespaces/x/configmaps/c1", "alice")
        .send(api)
        .await;
    assert_eq!((s, &v["metadata"]["resourceVersion"]), (StatusCode::OK, &json!(rv1)));

    // Update with the right RV, then with the stale one.
    let mut upd = v.clone();
    upd["data"]["k"] = json!("v2");
    let (s, u) = call("PUT", "/api/v1/namespaces/x/configmaps/c1", "alice")
        .json(&upd)
        .send(api)
        .await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_ne!(u["metadata"]["resourceVersion"], json!(rv1));
    assert_eq!(u["metadata"]["uid"], c["metadata"]["uid"]);
    let (s, e) = call("PUT", "/api/v1/namespaces/x/configmaps/c1", "alice")
        .json(&upd)
        .send(api)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        e["message"],
        "Operation cannot be fulfilled on configmaps \"c1\": the object has been modified; please apply your changes to the latest version and try again"
    );
    assert_eq!(e["reason"], "Conflict");

    // Patches.
    let (s, p) = call("PATCH", "/api/v1/namespaces/x/configmaps/c1", "alice")
        .raw(br#"{"data":{"n":"1","k":null}}"#, "application/merge-patch+json")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["data"], json!({"n": "1"}));
    let (s, p) = call("PATCH", "/api/v1/namespaces/x/configmaps/c1", "alice")
        .raw(
            br#"[{"op":"add","path":"/data/j","value":"2"}]"#,
            "application/json-patch+json",
        )
        .send(api)
        .await;
    assert_eq!((s, &p["data"]["j"]), (StatusCode::OK, &json!("2")));
    let (s, p) = call("PATCH", "/api/v1/namespaces/x/configmaps/c1", "alice")
        .raw(
            br#"{"metadata":{"labels":{"tier":"fe"}}}"#,
            "application/strategic-merge-patch+json",
        )
        .send(api)
        .await;
    assert_eq!((s, &p["metadata"]["labels"]["tier"]), (StatusCode::OK, &json!("fe")));
    // Server-side apply needs a field manager (kube-apiserver's PatchOptions validation).
    let (s, p) = call("PATCH", "/api/v1/namespaces/x/configmaps/c1", "alice")
        .raw(b"apiVersion: v1", "application/apply-patch+yaml")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        p["message"],
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );
    assert_eq!(p["details"]["causes"][0]["reason"], "FieldValueRequired");
    let (s, _) = call("PATCH", "/api/v1/namespaces/x/configmaps/c1", "alice")
        .raw(
            br#"{"metadata":{"resourceVersion":"1"}}"#,
            "application/merge-patch+json",
        )
        .send(api)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);

    // Lists and selectors.
    call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&cm("c2", json!({"app": "db"})))
        .send(api)
        .await;
    call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&cm("c3", json!({})))
        .send(api)
        .await;
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, l) = call(
        "GET",
        "/api/v1/namespaces/x/configmaps?labelSelector=app%20in%20(web,db)",
        "alice",
    )
    .send(api)
    .await;
    assert_eq!(names(&l), ["c1", "c2"]);
    assert_eq!(l["kind"], "ConfigMapList");
    let (_, l) = call("GET", "/api/v1/namespaces/x/configmaps?labelSelector=!app", "alice")
        .send(api)
        .await;
    assert_eq!(names(&l), ["c3"]);
    let (_, l) = call(
        "GET",
        "/api/v1/namespaces/x/configmaps?fieldSelector=metadata.name%3Dc2",
        "alice",
    )
    .send(api)
    .await;
    assert_eq!(names(&l), ["c2"]);
    let (s, e) = call(
        "GET",
        "/api/v1/namespaces/x/configmaps?labelSelector=a%20b%3Dc",
        "alice",
    )
    .send(api)
    .await;
    assert_eq!((s, &e["reason"]), (StatusCode::BAD_REQUEST, &json!("BadRequest")));
    let (s, _) = call(
        "GET",
        "/api/v1/namespaces/x/configmaps?fieldSelector=spec.x%3D1",
        "alice",
    )
    .send(api)
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, p1) = call("GET", "/api/v1/namespaces/x/configmaps?limit=2", "alice")
        .send(api)
        .await;
    assert_eq!(names(&p1), ["c1", "c2"]);
    let token = p1["metadata"]["continue"].as_str().unwrap().to_owned();
    let (_, p2) = call(
        "GET",
        &format!("/api/v1/namespaces/x/configmaps?limit=2&continue={token}"),
        "alice",
    )
    .send(api)
    .await;
    assert_eq!(names(&p2), ["c3"]);
    assert!(p2["metadata"].get("continue").is_none());
    assert_eq!(p2["metadata"]["resourceVersion"], p1["metadata"]["resourceVersion"]);
    let (s, _) = call("GET", "/api/v1/namespaces/x/configmaps?limit=2&continue=bogus", "alice")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Table output.
    let (_, t) = call("GET", "/api/v1/namespaces/x/configmaps", "alice")
        .header(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .send(api)
        .await;
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["rows"].as_array().unwrap().len(), 3);

    // Delete.
    let (s, d) = call("DELETE", "/api/v1/namespaces/x/configmaps/c1", "alice")
        .send(api)
        .await;
    assert_eq!((s, &d["status"]), (StatusCode::OK, &json!("Success")));
    assert_eq!(d["details"]["name"], "c1");
    assert_eq!(d["details"]["uid"], c["metadata"]["uid"]);
    let (s, e) = call("GET", "/api/v1/namespaces/x/configmaps/c1", "alice")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(e["message"], "configmaps \"c1\" not found");
    assert_eq!(e["details"], json!({"name": "c1", "kind": "configmaps"}));
    let (s, l) = call("DELETE", "/api/v1/namespaces/x/configmaps?labelSelector=app", "alice")
        .send(api)
        .await;
    assert_eq!((s, names(&l)), (StatusCode::OK, vec!["c2".to_owned()]));
}

#[tokio::test]
async fn validation_and_bad_input() {
    let f = setup().await;
    let api = &f.api;
    let (s, e) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&cm("Bad_Name", json!({})))
        .send(api)
        .await;
    assert_eq!((s, &e["reason"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("Invalid")));
    assert!(e["message"].as_str().unwrap().starts_with(
        "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"
    ));
    let (s, _) = call("POST", "/api/v1/namespaces", "admin")
        .json(&json!({"metadata": {"name": "a.b"}}))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&json!({"metadata": {}}))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .raw(b"{not json", "application/json")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .raw(b"metadata: [", "application/yaml")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, y) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .raw(
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fromyaml\n",
            "application/yaml",
        )
        .send(api)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{y}");
    let (s, _) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&json!({"kind": "Secret", "metadata": {"name": "s"}}))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&json!({"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "s"}}))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&json!({"metadata": {"name": "s", "namespace": "other"}}))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .raw(b"x", "application/cbor")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = vec![b' '; 3 * 1024 * 1024 + 1];
    let (s, e) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .raw(&big, "application/json")
        .send(api)
        .await;
    assert_eq!(
        (s, &e["reason"]),
        (StatusCode::PAYLOAD_TOO_LARGE, &json!("RequestEntityTooLarge"))
    );
    let (s, e) = call("POST", "/api/v1/namespaces/nope/configmaps", "admin")
        .json(&cm("c", json!({})))
        .send(api)
        .await;
    assert_eq!(
        (s, &e["message"]),
        (StatusCode::NOT_FOUND, &json!("namespaces \"nope\" not found"))
    );
    let (s, _) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&json!({"metadata": {"name": "l", "labels": {"bad key!": "v"}}}))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, g) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&json!({"metadata": {"generateName": "gen-"}}))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(g["metadata"]["name"].as_str().unwrap().starts_with("gen-"));
    assert_eq!(g["metadata"]["name"].as_str().unwrap().len(), 9);
    for (m, p) in [
        ("POST", "/api/v1/configmaps"),
        ("DELETE", "/api/v1/configmaps"),
        ("POST", "/apis/authorization.k8s.io/v1/localsubjectaccessreviews"),
    ] {
        let (s, _) = call(m, p, "admin").json(&cm("c", json!({}))).send(api).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{m} {p}");
    }
    let (s, _) = call("PUT", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&cm("c", json!({})))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = call("GET", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "alice")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = call("PUT", "/api/v1/namespaces/x/configmaps/missing", "alice")
        .json(&cm("missing", json!({})))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call("PUT", "/api/v1/namespaces/x/configmaps/a", "alice")
        .json(&cm("b", json!({})))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn forbidden_shapes() {
    let f = setup().await;
    let api = &f.api;
    let (s, e) = call("GET", "/api/v1/namespaces/y/configmaps/c", "bob").send(api).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        e,
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"configmaps \"c\" is forbidden: User \"bob\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"y\"",
            "reason":"Forbidden","details":{"name":"c","kind":"configmaps"},"code":403})
    );
    let (_, e) = call("GET", "/apis/kubeflow.org/v1alpha1/namespaces/y/poddefaults", "bob")
        .send(api)
        .await;
    assert_eq!(
        e["message"],
        "poddefaults.kubeflow.org is forbidden: User \"bob\" cannot list resource \"poddefaults\" in API group \"kubeflow.org\" in the namespace \"y\""
    );
    let (_, e) = call("GET", "/api/v1/namespaces", "bob").send(api).await;
    assert_eq!(
        e["message"],
        "namespaces is forbidden: User \"bob\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
    );
    let (_, e) = call("GET", "/api/v1/namespaces/x", "bob").send(api).await;
    assert_eq!(
        e["message"],
        "namespaces \"x\" is forbidden: User \"bob\" cannot get resource \"namespaces\" in API group \"\" in the namespace \"x\""
    );
    let (s, _) = call("GET", "/api/v1/configmaps", "alice").send(api).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call("GET", "/api/v1/configmaps", "admin").send(api).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn impersonation() {
    let f = setup().await;
    let api = &f.api;
    let (s, v) = call("GET", "/api/v1/namespaces/x/configmaps", "alice")
        .header("impersonate-user", "bob")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, e) = call("GET", "/api/v1/namespaces/x/secrets", "alice")
        .header("impersonate-user", "bob")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(e["message"].as_str().unwrap().contains("User \"bob\" cannot list"));
    let (s, e) = call("GET", "/api/v1/namespaces/x/configmaps", "alice")
        .header("impersonate-user", "carol")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        e["message"],
        "users \"carol\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );
    let (s, e) = call("GET", "/api/v1/namespaces/x/configmaps", "alice")
        .header("impersonate-user", "bob")
        .header("impersonate-group", "system:masters")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("groups \"system:masters\" is forbidden")
    );
    let (s, _) = call("GET", "/api/v1/namespaces/x/configmaps", "alice")
        .header("impersonate-group", "g")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = call("GET", "/api/v1/namespaces/x/configmaps", "admin")
        .header("impersonate-user", "system:serviceaccount:x:sa")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["message"].as_str().unwrap().contains("system:serviceaccount:x:sa"));
}

#[tokio::test]
async fn access_reviews() {
    let f = setup().await;
    let api = &f.api;
    let ssar = |verb: &str, ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
               "spec": {"resourceAttributes": {"namespace": ns, "verb": verb, "resource": "pods"}}})
    };
    let (s, v) = call(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        "alice",
    )
    .json(&ssar("list", "x"))
    .send(api)
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["status"]["allowed"], true);
    assert_eq!(v["spec"]["resourceAttributes"]["verb"], "list");
    let (_, v) = call(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        "alice",
    )
    .json(&ssar("list", "y"))
    .send(api)
    .await;
    assert_eq!(v["status"], json!({"allowed": false}));
    let (_, v) = call(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        "alice",
    )
    .header("impersonate-user", "bob")
    .json(&ssar("list", "x"))
    .send(api)
    .await;
    assert_eq!(v["status"]["allowed"], false);
    let (s, _) = call(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        "alice",
    )
    .json(&json!({"spec": {}}))
    .send(api)
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let sar = json!({"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
        "spec": {"user": "alice", "resourceAttributes": {"namespace": "x", "verb": "get", "resource": "pods"}}});
    let (s, _) = call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", "alice")
        .json(&sar)
        .send(api)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = call("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", "admin")
        .json(&sar)
        .send(api)
        .await;
    assert_eq!((s, &v["status"]["allowed"]), (StatusCode::CREATED, &json!(true)));
    let mut lsar = sar.clone();
    lsar["kind"] = json!("LocalSubjectAccessReview");
    let (s, _) = call(
        "POST",
        "/apis/authorization.k8s.io/v1/namespaces/y/localsubjectaccessreviews",
        "admin",
    )
    .json(&lsar)
    .send(api)
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = call(
        "POST",
        "/apis/authorization.k8s.io/v1/namespaces/x/localsubjectaccessreviews",
        "admin",
    )
    .json(&lsar)
    .send(api)
    .await;
    assert_eq!((s, &v["status"]["allowed"]), (StatusCode::CREATED, &json!(true)));
    let ssrr =
        json!({"kind": "SelfSubjectRulesReview", "apiVersion": "authorization.k8s.io/v1", "spec": {"namespace": "x"}});
    let (s, v) = call("POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", "alice")
        .json(&ssrr)
        .send(api)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["status"]["incomplete"], false);
    assert!(v["status"]["resourceRules"].as_array().unwrap().len() >= 3);
    let tr = json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "spec": {"token": "t"}});
    let (s, v) = call("POST", "/apis/authentication.k8s.io/v1/tokenreviews", "admin")
        .json(&tr)
        .send(api)
        .await;
    assert_eq!((s, &v["status"]["authenticated"]), (StatusCode::CREATED, &json!(false)));
    assert!(v["spec"].get("token").is_none());
}

struct DenyLabelled;

#[async_trait::async_trait]
impl Admission for DenyLabelled {
    async fn admit(&self, req: AdmissionAttributes<'_>, obj: &mut Value) -> Result<(), AdmissionDenied> {
        if obj.pointer("/metadata/labels/deny").is_some() {
            return Err(AdmissionDenied {
                webhook: "test.kubeflow.org".into(),
                code: 403,
                message: "nope".into(),
                call_failed: false,
            });
        }
        if obj.pointer("/metadata/labels/unloadable").is_some() {
            return Err(AdmissionDenied {
                webhook: "test.kubeflow.org".into(),
                code: 500,
                message: "context: store: redb page 7".into(),
                call_failed: true,
            });
        }
        obj["metadata"]["annotations"] = json!({"admitted": req.operation.as_str()});
        obj["metadata"]["uid"] = json!("forged");
        Ok(())
    }
}

#[tokio::test]
async fn admission_hook() {
    let clock = kfsec_types::ManualClock::new(kfsec_types::UnixTime::from_secs(1_700_000_000));
    let store = kfsec_store::MemoryStore::new(clock.clone());
    let authz = crate::testutil::TableAuthz::new(crate::testutil::default_grants());
    let api = ApiServer::builder(store, authz, clock, Arc::new(crate::testutil::CounterRng::default()))
        .admission(Arc::new(DenyLabelled))
        .build();
    call("POST", "/api/v1/namespaces", "admin")
        .json(&json!({"metadata": {"name": "x"}}))
        .send(&api)
        .await;
    let (s, e) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&cm("c", json!({"deny": "1"})))
        .send(&api)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        e["message"],
        "admission webhook \"test.kubeflow.org\" denied the request: nope"
    );
    // A webhook that could not be run (failurePolicy Fail): 500 with Kubernetes' text and an
    // incident id; the cause goes to the log only.
    let (s, e) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&cm("c", json!({"unloadable": "1"})))
        .send(&api)
        .await;
    assert_eq!(
        (s, &e["reason"]),
        (StatusCode::INTERNAL_SERVER_ERROR, &json!("InternalError"))
    );
    let m = e["message"].as_str().unwrap();
    assert!(
        m.starts_with("Internal error occurred: failed calling webhook \"test.kubeflow.org\": the webhook could not be run (incident "),
        "{m}"
    );
    assert!(
        kfsec_types::Incident::quoted_in(m).is_some() && !m.contains("redb"),
        "{m}"
    );
    let (s, v) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&cm("c", json!({})))
        .send(&api)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["metadata"]["annotations"]["admitted"], "CREATE");
    assert_ne!(v["metadata"]["uid"], "forged");
    let (s, v) = call("PATCH", "/api/v1/namespaces/x/configmaps/c", "alice")
        .raw(br#"{"data":{"a":"b"}}"#, "application/merge-patch+json")
        .send(&api)
        .await;
    assert_eq!(
        (s, &v["metadata"]["annotations"]["admitted"]),
        (StatusCode::OK, &json!("UPDATE"))
    );
    let (s, _) = call("PATCH", "/api/v1/namespaces/x/configmaps/c", "alice")
        .raw(
            br#"{"metadata":{"labels":{"deny":"1"}}}"#,
            "application/merge-patch+json",
        )
        .send(&api)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn rbac_escalation_is_refused() {
    let f = setup().await;
    let api = &f.api;
    f.api
        .create_object(
            crate::registry::find("rbac.authorization.k8s.io", "v1", "clusterroles").unwrap(),
            "",
            json!({"metadata": {"name": "cluster-admin"}, "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
        )
        .await
        .unwrap();
    f.api
        .create_object(
            crate::registry::find("rbac.authorization.k8s.io", "v1", "clusterroles").unwrap(),
            "",
            json!({"metadata": {"name": "cm-reader"}, "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
        )
        .await
        .unwrap();
    f.authz.0.write().unwrap().push(grant(
        "user:alice",
        &["create", "get", "list", "update", "patch", "delete"],
        &["rbac.authorization.k8s.io"],
        &["*"],
        Some("x"),
    ));
    let rb = |role: &str| {
        json!({"metadata": {"name": format!("rb-{role}")}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
               "subjects": [{"kind": "User", "name": "bob"}]})
    };
    let (s, e) = call(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/x/rolebindings",
        "alice",
    )
    .json(&rb("cluster-admin"))
    .send(api)
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("is attempting to grant RBAC permissions not currently held")
    );
    let (s, e) = call(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/x/rolebindings",
        "alice",
    )
    .json(&rb("cm-reader"))
    .send(api)
    .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let (s, _) = call(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/x/rolebindings",
        "alice",
    )
    .json(&rb("missing"))
    .send(api)
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let role = |verb: &str, group: &str| json!({"metadata": {"name": format!("r-{verb}")}, "rules": [{"apiGroups": [group], "resources": ["pods"], "verbs": [verb]}]});
    let (s, _) = call("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/x/roles", "alice")
        .json(&role("get", ""))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = call("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/x/roles", "alice")
        .json(&role("delete", "apps"))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let mut changed = rb("cm-reader");
    changed["roleRef"]["name"] = json!("cluster-admin");
    let (s, _) = call(
        "PUT",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/x/rolebindings/rb-cm-reader",
        "admin",
    )
    .json(&changed)
    .send(api)
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn finalizers_namespaces_and_status() {
    let f = setup().await;
    let api = &f.api;
    let (s, created) = call("POST", "/apis/kubeflow.org/v1/profiles", "admin")
        .json(&json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": "p", "finalizers": ["profile-finalizer"]},
                      "spec": {"owner": {"kind": "User", "name": "alice"}}, "status": {"conditions": [{"type": "Forged"}]}}))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(created.get("status").is_none(), "{created}");
    // Status can be written through /status, not through the main resource.
    let (s, v) = call("PATCH", "/apis/kubeflow.org/v1beta1/profiles/p", "admin")
        .raw(
            br#"{"status":{"conditions":[]},"spec":{"x":1}}"#,
            "application/merge-patch+json",
        )
        .send(api)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["apiVersion"], "kubeflow.org/v1beta1");
    assert!(v.get("status").is_none(), "{v}");
    assert_eq!(v["metadata"]["generation"], 2);
    let (_, v) = call("PATCH", "/apis/kubeflow.org/v1/profiles/p/status", "admin")
        .raw(
            br#"{"status":{"conditions":[{"type":"Successful"}]},"spec":{"x":2}}"#,
            "application/merge-patch+json",
        )
        .send(api)
        .await;
    assert_eq!(
        (&v["status"]["conditions"][0]["type"], &v["spec"]["x"]),
        (&json!("Successful"), &json!(1))
    );
    let (_, v) = call("PUT", "/apis/kubeflow.org/v1/profiles/p", "admin")
        .json(&json!({"metadata": {"name": "p", "finalizers": ["profile-finalizer"]}, "spec": {"x": 3}, "status": {"conditions": []}}))
        .send(api)
        .await;
    assert_eq!(
        (&v["status"]["conditions"][0]["type"], &v["spec"]["x"]),
        (&json!("Successful"), &json!(3))
    );
    let (s, v) = call("DELETE", "/apis/kubeflow.org/v1/profiles/p", "admin")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(v["metadata"]["deletionTimestamp"].is_string());
    let (s, _) = call("PATCH", "/apis/kubeflow.org/v1/profiles/p", "admin")
        .raw(br#"{"metadata":{"finalizers":null}}"#, "application/merge-patch+json")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call("GET", "/apis/kubeflow.org/v1/profiles/p", "admin").send(api).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Deleting a namespace deletes its contents.
    call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&cm("c", json!({})))
        .send(api)
        .await;
    let (_, ns) = call("GET", "/api/v1/namespaces/x", "alice").send(api).await;
    assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "x");
    assert_eq!(ns["status"]["phase"], "Active");
    let (s, _) = call("DELETE", "/api/v1/namespaces/x", "admin").send(api).await;
    assert_eq!(s, StatusCode::OK);
    call("POST", "/api/v1/namespaces", "admin")
        .json(&json!({"metadata": {"name": "x"}}))
        .send(api)
        .await;
    let (s, _) = call("GET", "/api/v1/namespaces/x/configmaps/c", "alice")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// Removing the last finalizer of a terminating Namespace empties it, as a DELETE without
/// finalizers does: a namespace made later under the same name inherits none of its objects
/// (RoleBindings, Roles and Secrets above all).
#[tokio::test]
async fn a_namespace_whose_last_finalizer_goes_is_emptied() {
    let f = setup().await;
    let api = &f.api;
    let (s, _) = call("POST", "/api/v1/namespaces", "admin")
        .json(&json!({"metadata": {"name": "n", "finalizers": ["example.com/hold"]}}))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let planted = json!({"metadata": {"name": "planted"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                         "subjects": [{"kind": "User", "name": "mallory"}]});
    for (uri, body) in [
        ("/api/v1/namespaces/n/configmaps", cm("c", json!({}))),
        ("/apis/rbac.authorization.k8s.io/v1/namespaces/n/rolebindings", planted),
    ] {
        let (s, e) = call("POST", uri, "admin").json(&body).send(api).await;
        assert_eq!(s, StatusCode::CREATED, "{e}");
    }
    let (s, v) = call("DELETE", "/api/v1/namespaces/n", "admin").send(api).await;
    assert!(v["metadata"]["deletionTimestamp"].is_string(), "{s} {v}");
    let (s, _) = call("PATCH", "/api/v1/namespaces/n", "admin")
        .raw(br#"{"metadata":{"finalizers":null}}"#, "application/merge-patch+json")
        .send(api)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call("GET", "/api/v1/namespaces/n", "admin").send(api).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call("POST", "/api/v1/namespaces", "admin")
        .json(&json!({"metadata": {"name": "n"}}))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    for uri in [
        "/api/v1/namespaces/n/configmaps/c",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/n/rolebindings/planted",
    ] {
        let (s, v) = call("GET", uri, "admin").send(api).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri} outlived its namespace: {v}");
    }
}

/// A `NamespaceData` that records what it was asked, and fails while `down`.
#[derive(Default)]
struct Recorder {
    purged: std::sync::Mutex<Vec<String>>,
    cleared: std::sync::Mutex<Vec<String>>,
    down: std::sync::atomic::AtomicBool,
}

impl Recorder {
    fn answer(&self, log: &std::sync::Mutex<Vec<String>>, ns: &str) -> Result<(), kfsec_store::StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(kfsec_store::StoreError::Unavailable("down".into()));
        }
        log.lock().unwrap().push(ns.to_owned());
        Ok(())
    }
}

/// A fixture whose server asks a [`Recorder`] about namespace data.
fn recording_fixture() -> (Arc<Recorder>, Fixture) {
    let data = Arc::new(Recorder::default());
    let f = crate::testutil::fixture_built(crate::testutil::default_grants(), |b| b.namespace_data(data.clone()));
    (data, f)
}

#[async_trait::async_trait]
impl crate::NamespaceData for Recorder {
    async fn purge_namespace(&self, ns: &str) -> Result<(), kfsec_store::StoreError> {
        self.answer(&self.purged, ns)
    }
    async fn before_create(&self, ns: &str) -> Result<(), kfsec_store::StoreError> {
        self.answer(&self.cleared, ns)
    }
}

/// Before a Namespace is created where none exists, what other APIs still keep for the name
/// goes (a write authorized before the last namespace of that name went can land after its
/// purge); an existing namespace's data is never touched, a dry run touches nothing, and a
/// failure fails the create.
#[tokio::test]
async fn a_new_namespace_starts_without_data_left_for_its_name() {
    use std::sync::atomic::Ordering;
    let (data, f) = recording_fixture();
    let api = &f.api;
    let create = |name: &'static str, query: &'static str| async move {
        call("POST", &format!("/api/v1/namespaces{query}"), "admin")
            .json(&json!({"metadata": {"name": name}}))
            .send(api)
            .await
            .0
    };
    assert_eq!(create("fresh", "?dryRun=All").await, StatusCode::CREATED);
    assert!(data.cleared.lock().unwrap().is_empty(), "a dry run cleared data");
    data.down.store(true, Ordering::SeqCst);
    assert_eq!(create("fresh", "").await, StatusCode::SERVICE_UNAVAILABLE);
    data.down.store(false, Ordering::SeqCst);
    assert_eq!(create("fresh", "").await, StatusCode::CREATED);
    assert_eq!(create("fresh", "").await, StatusCode::CONFLICT);
    assert_eq!(
        *data.cleared.lock().unwrap(),
        ["fresh"],
        "an existing namespace's data was cleared"
    );
}

/// What another API keeps for a namespace (`NamespaceData`: Pipelines' runs…) is purged before
/// the Namespace goes, by a DELETE and by the removal of its last finalizer; while the purge
/// fails the Namespace stays (503, and the delete can be retried).
#[tokio::test]
async fn other_apis_data_is_purged_before_a_namespace_goes() {
    use std::sync::atomic::Ordering;
    let (data, f) = recording_fixture();
    let api = &f.api;
    let exists = |name: &'static str| async move {
        call("GET", &format!("/api/v1/namespaces/{name}"), "admin")
            .send(api)
            .await
            .0
            == StatusCode::OK
    };
    for (name, finalizers) in [("n", json!([])), ("m", json!(["example.com/hold"]))] {
        let (s, _) = call("POST", "/api/v1/namespaces", "admin")
            .json(&json!({"metadata": {"name": name, "finalizers": finalizers}}))
            .send(api)
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let delete_n = || call("DELETE", "/api/v1/namespaces/n", "admin").send(api);
    let release_m = || {
        call("PATCH", "/api/v1/namespaces/m", "admin")
            .raw(br#"{"metadata":{"finalizers":null}}"#, "application/merge-patch+json")
            .send(api)
    };
    let (s, _) = call("DELETE", "/api/v1/namespaces/m", "admin").send(api).await;
    assert_eq!(s, StatusCode::ACCEPTED, "terminating while its finalizer holds");

    data.down.store(true, Ordering::SeqCst);
    assert_eq!(delete_n().await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(release_m().await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert!(exists("n").await && exists("m").await);
    assert!(data.purged.lock().unwrap().is_empty());

    data.down.store(false, Ordering::SeqCst);
    assert_eq!(delete_n().await.0, StatusCode::OK);
    assert_eq!(release_m().await.0, StatusCode::OK);
    assert!(!exists("n").await && !exists("m").await);
    assert_eq!(*data.purged.lock().unwrap(), ["n", "m"]);
}

/// Roles stored before rules were validated on write are found and named (the server warns
/// of them at start): a namespaced rule with URLs, a rule naming resources and URLs.
#[tokio::test]
async fn stored_roles_with_rules_the_api_refuses_are_listed() {
    let f = setup().await;
    let api = &f.api;
    let mixed = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "sneaky", "namespace": "x"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"], "nonResourceURLs": ["/x"]}]});
    let cluster = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "mixed"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "nonResourceURLs": ["/healthz"]}]});
    let res = |plural| ApiServer::resource("rbac.authorization.k8s.io", "v1", plural).unwrap();
    for (key, obj) in [
        (res("roles").key("x", "sneaky"), &mixed),
        (res("clusterroles").key("", "mixed"), &cluster),
    ] {
        kfsec_store::Store::put(f.store.as_ref(), &key, serde_json::to_vec(obj).unwrap(), None)
            .await
            .unwrap();
    }
    let (s, _) = call("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", "admin")
        .json(&json!({"metadata": {"name": "fine"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let found = api.invalid_stored_roles().await.unwrap();
    let names: Vec<(&str, &str, &str)> = found
        .iter()
        .map(|(k, ns, n, _)| (*k, ns.as_str(), n.as_str()))
        .collect();
    assert_eq!(
        names,
        [("Role", "x", "sneaky"), ("ClusterRole", "", "mixed")],
        "{found:?}"
    );
    assert!(
        found[0]
            .3
            .iter()
            .any(|l| l.contains("namespaced rules cannot apply to non-resource URLs")),
        "{found:?}"
    );
}

/// Kubernetes' `ValidatePolicyRule`: a rule that names both resources and non-resource URLs, a
/// Role with URLs, a rule without verbs or without API groups or resources are 422. A mixed rule
/// used to pass the escalation check as a URL rule while granting every resource it named.
#[tokio::test]
async fn policy_rules_are_validated_as_kubernetes_does() {
    let f = setup().await;
    let api = &f.api;
    f.authz.0.write().unwrap().push(grant(
        "user:alice",
        &["create", "get", "list", "update", "patch", "delete"],
        &["rbac.authorization.k8s.io"],
        &["*"],
        Some("x"),
    ));
    let roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/x/roles";
    let cluster_roles = "/apis/rbac.authorization.k8s.io/v1/clusterroles";
    let mixed = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"], "nonResourceURLs": ["/x"]});
    let cases = [
        (
            roles,
            "alice",
            mixed.clone(),
            "rules[0].nonResourceURLs",
            "Invalid value: []string{\"/x\"}: namespaced rules cannot apply to non-resource URLs",
        ),
        (
            roles,
            "alice",
            mixed.clone(),
            "rules[0].nonResourceURLs",
            "rules cannot apply to both regular resources and non-resource URLs",
        ),
        (
            cluster_roles,
            "admin",
            mixed,
            "rules[0].nonResourceURLs",
            "rules cannot apply to both regular resources and non-resource URLs",
        ),
        (
            cluster_roles,
            "admin",
            json!({"nonResourceURLs": ["/x"], "resourceNames": ["n"], "verbs": ["get"]}),
            "rules[0].nonResourceURLs",
            "both regular resources",
        ),
        (
            roles,
            "alice",
            json!({"apiGroups": [""], "resources": ["pods"]}),
            "rules[0].verbs",
            "Required value: verbs must contain at least one value",
        ),
        (
            roles,
            "alice",
            json!({"resources": ["pods"], "verbs": ["get"]}),
            "rules[0].apiGroups",
            "Required value: resource rules must supply at least one api group",
        ),
        (
            roles,
            "alice",
            json!({"apiGroups": [""], "verbs": ["get"]}),
            "rules[0].resources",
            "Required value: resource rules must supply at least one resource",
        ),
    ];
    for (i, (uri, user, rule, field, message)) in cases.into_iter().enumerate() {
        let body = json!({"metadata": {"name": format!("r{i}")}, "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}, rule]});
        let (s, e) = call("POST", uri, user).json(&body).send(api).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "case {i}: {e}");
        let field = field.replace("rules[0]", "rules[1]");
        let causes = e["details"]["causes"].as_array().unwrap();
        assert!(
            causes
                .iter()
                .any(|c| c["field"] == field.as_str() && c["message"].as_str().unwrap().contains(message)),
            "case {i}: {e}"
        );
    }
    // A URL rule in a ClusterRole, and resource rules, are fine.
    let (s, e) = call("POST", cluster_roles, "admin")
        .json(&json!({"metadata": {"name": "urls"}, "rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]}))
        .send(api)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
}

#[tokio::test]
async fn watch_streams_events() {
    let f = setup().await;
    let api = f.api.clone();
    call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&cm("pre", json!({"app": "web"})))
        .send(&api)
        .await;
    let resp = app(&api)
        .oneshot(
            call(
                "GET",
                "/api/v1/namespaces/x/configmaps?watch=true&labelSelector=app%3Dweb&timeoutSeconds=5",
                "alice",
            )
            .request(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let api2 = api.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        call("POST", "/api/v1/namespaces/x/configmaps", "alice")
            .json(&cm("other", json!({})))
            .send(&api2)
            .await;
        call("POST", "/api/v1/namespaces/x/configmaps", "alice")
            .json(&cm("new", json!({"app": "web"})))
            .send(&api2)
            .await;
        call("PATCH", "/api/v1/namespaces/x/configmaps/pre", "alice")
            .raw(
                br#"{"metadata":{"labels":{"app":"db"}}}"#,
                "application/merge-patch+json",
            )
            .send(&api2)
            .await;
        call("DELETE", "/api/v1/namespaces/x/configmaps/new", "alice")
            .send(&api2)
            .await;
    });
    let events = watch_events(resp, 4).await;
    assert_eq!(events, ["ADDED pre", "ADDED new", "DELETED pre", "DELETED new"]);

    // Too old a resourceVersion → an ERROR event with 410.
    let (s, v) = call(
        "GET",
        "/api/v1/namespaces/x/configmaps?watch=1&resourceVersion=abc",
        "alice",
    )
    .send(&api)
    .await;
    assert_eq!((s, &v["reason"]), (StatusCode::BAD_REQUEST, &json!("BadRequest")));
    // A forbidden watch never starts.
    let (s, _) = call("GET", "/api/v1/namespaces/y/configmaps?watch=1", "alice")
        .send(&api)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn typed_helpers() {
    let f = fixture();
    let api = &f.api;
    let ns = ApiServer::resource("", "v1", "namespaces").unwrap();
    let cms = ApiServer::resource("", "v1", "configmaps").unwrap();
    api.create_object(ns, "", json!({"metadata": {"name": "t"}}))
        .await
        .unwrap();
    let c = api.create_object(cms, "t", cm("a", json!({"k": "1"}))).await.unwrap();
    assert_eq!(c["metadata"]["namespace"], "t");
    let got = api.get_object(cms, "t", "a").await.unwrap().unwrap();
    assert_eq!(got["metadata"]["resourceVersion"], c["metadata"]["resourceVersion"]);
    let mut u = got.clone();
    u["data"]["k"] = json!("2");
    let u = api.update_object(cms, u).await.unwrap();
    assert_eq!(u["data"]["k"], "2");
    let e = api.update_object(cms, got).await.unwrap_err();
    assert_eq!(e.code(), 409);
    let p = api
        .patch_object(cms, "t", "a", PatchType::Merge, &json!({"data": {"z": "9"}}))
        .await
        .unwrap();
    assert_eq!(p["data"]["z"], "9");
    let l = api.list_objects(cms, Some("t"), "k=1").await.unwrap();
    assert_eq!(l.items.len(), 1);
    assert!(api.list_objects(cms, None, "k in (").await.is_err());
    let unchanged = api.update_object(cms, p.clone()).await.unwrap();
    assert_eq!(
        unchanged["metadata"]["resourceVersion"],
        p["metadata"]["resourceVersion"]
    );
    assert!(api.delete_object(cms, "t", "a").await.unwrap().is_some());
    assert!(api.delete_object(cms, "t", "a").await.unwrap().is_none());
    // Internal creates do not need the namespace to exist.
    api.create_object(cms, "", json!({"metadata": {"name": "b", "namespace": "later"}}))
        .await
        .unwrap();
    let kv = kfsec_store::Store::get(f.store.as_ref(), "/k8s/core/configmaps/later/b")
        .await
        .unwrap()
        .unwrap();
    let stored: Value = serde_json::from_slice(&kv.value).unwrap();
    assert!(stored["metadata"].get("resourceVersion").is_none());
    assert_eq!(
        crate::objects::decode(cms, &kv).unwrap()["metadata"]["resourceVersion"],
        kv.mod_revision.to_string()
    );
    assert_eq!(Operation::Create.as_str(), "CREATE");
}

#[tokio::test]
async fn with_the_rbac_authorizer() {
    use kfsec_types::rbac::{ClusterRole, ClusterRoleBinding, RoleBinding};
    let mut cluster_roles = kfsec_authz::kubeflow_default_cluster_roles();
    let basic: ClusterRole = serde_json::from_value(json!({"metadata": {"name": "system:basic-user"}, "rules": [
        {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]}]}))
    .unwrap();
    cluster_roles.push(basic);
    let crb: ClusterRoleBinding = serde_json::from_value(json!({"metadata": {"name": "system:basic-user"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:basic-user"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]}))
    .unwrap();
    let rb: RoleBinding = serde_json::from_value(json!({"metadata": {"name": "namespaceAdmin", "namespace": "x"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubeflow-edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}))
    .unwrap();
    let authz = Arc::new(kfsec_authz::Authorizer::from_objects(vec![], cluster_roles, vec![rb], vec![crb]).unwrap());
    let clock = kfsec_types::ManualClock::new(kfsec_types::UnixTime::from_secs(1_700_000_000));
    let store = kfsec_store::MemoryStore::new(clock.clone());
    let api = ApiServer::new(store, authz, clock, Arc::new(crate::testutil::CounterRng::default()));
    let ns = ApiServer::resource("", "v1", "namespaces").unwrap();
    api.create_object(ns, "", json!({"metadata": {"name": "x"}}))
        .await
        .unwrap();

    let ssar = json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
        "spec": {"resourceAttributes": {"namespace": "x", "verb": "create", "resource": "pods"}}});
    let (s, v) = call(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        "alice",
    )
    .json(&ssar)
    .send(&api)
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"]["allowed"], true);
    assert!(
        v["status"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("RBAC: allowed by RoleBinding \"namespaceAdmin/x\""),
        "{v}"
    );
    let (s, v) = call("POST", "/api/v1/namespaces/x/configmaps", "alice")
        .json(&cm("c", json!({})))
        .send(&api)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = call("GET", "/api/v1/namespaces/y/configmaps", "alice").send(&api).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let ssrr =
        json!({"kind": "SelfSubjectRulesReview", "apiVersion": "authorization.k8s.io/v1", "spec": {"namespace": "x"}});
    let (s, v) = call("POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", "alice")
        .json(&ssrr)
        .send(&api)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(v["status"]["resourceRules"].as_array().unwrap().len() > 2, "{v}");
}

#[tokio::test]
async fn escalation_check_aggregates_as_the_authorizer_does() {
    // An aggregation selector that is not valid (`NotIn` without values) selects nothing, for the
    // escalation check as for the authorizer: binding the aggregator grants nothing, so it is no
    // escalation. (The check used to read such a selector as "everything".)
    let f = setup().await;
    let crs = crate::registry::find("rbac.authorization.k8s.io", "v1", "clusterroles").unwrap();
    f.api
        .create_object(
            crs,
            "",
            json!({"metadata": {"name": "cluster-admin"}, "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
        )
        .await
        .unwrap();
    let created = f
        .api
        .create_object(
            crs,
            "",
            json!({"metadata": {"name": "agg"}, "aggregationRule": {"clusterRoleSelectors": [
                {"matchExpressions": [{"key": "tier", "operator": "NotIn"}]}]}}),
        )
        .await;
    created.unwrap();
    f.authz.0.write().unwrap().push(grant(
        "user:alice",
        &["create"],
        &["rbac.authorization.k8s.io"],
        &["rolebindings"],
        Some("x"),
    ));
    let rb = json!({"metadata": {"name": "rb-agg"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "agg"},
        "subjects": [{"kind": "User", "name": "bob"}]});
    let (s, e) = call(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/x/rolebindings",
        "alice",
    )
    .json(&rb)
    .send(&f.api)
    .await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
}
