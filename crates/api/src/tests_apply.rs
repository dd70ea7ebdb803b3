//! HTTP-level tests of server-side apply and field managers (in-process, through the fake
//! identity layer): kube-apiserver's statuses, messages and `managedFields`.
//!
//! Invariants: test-only.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::ApiServer;
use crate::testutil::{Fixture, app, default_grants, fixture_with, grant};

const APPLY: &str = "application/apply-patch+yaml";
const CM: &str = "/api/v1/namespaces/x/configmaps/c";

async fn send(
    api: &Arc<ApiServer>,
    method: &str,
    path: &str,
    user: &str,
    ct: &str,
    agent: &str,
    body: &[u8],
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {user}"))
        .header("content-type", ct)
        .header("user-agent", agent)
        .body(Body::from(body.to_vec()))
        .unwrap();
    let resp = app(api).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn apply(api: &Arc<ApiServer>, query: &str, body: &str) -> (StatusCode, Value) {
    send(
        api,
        "PATCH",
        &format!("{CM}?{query}"),
        "alice",
        APPLY,
        "test/1",
        body.as_bytes(),
    )
    .await
}

fn cm(data: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels:\n    app: web\ndata:\n{data}")
}

fn entry<'a>(obj: &'a Value, manager: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager)
}

async fn setup() -> Fixture {
    let mut grants = default_grants();
    grants.push(grant(
        "user:carol",
        &["get", "patch"],
        &[""],
        &["configmaps"],
        Some("x"),
    ));
    let f = fixture_with(grants);
    let ns = crate::ApiServer::resource("", "v1", "namespaces").unwrap();
    f.api
        .create_object(ns, "", json!({"metadata": {"name": "x"}}))
        .await
        .unwrap();
    f
}

#[tokio::test]
async fn apply_creates_merges_prunes_and_reports_conflicts() {
    let f = setup().await;
    let api = &f.api;
    // Apply creates (201) and records an Apply entry with exactly the applied fields.
    let (s, o) = apply(api, "fieldManager=ssa", &cm("  a: \"1\"\n  b: \"2\"\n")).await;
    assert_eq!(s, StatusCode::CREATED, "{o}");
    let e = entry(&o, "ssa").unwrap();
    assert_eq!(
        (&e["operation"], &e["apiVersion"], &e["fieldsType"]),
        (&json!("Apply"), &json!("v1"), &json!("FieldsV1"))
    );
    assert_eq!(
        e["fieldsV1"],
        json!({"f:data": {"f:a": {}, "f:b": {}}, "f:metadata": {"f:labels": {"f:app": {}}}})
    );
    let rv = o["metadata"]["resourceVersion"].clone();
    // The same config again changes nothing.
    let (s, o) = apply(api, "fieldManager=ssa", &cm("  a: \"1\"\n  b: \"2\"\n")).await;
    assert_eq!((s, &o["metadata"]["resourceVersion"]), (StatusCode::OK, &rv));
    // Omitting b removes it.
    let (s, o) = apply(api, "fieldManager=ssa", &cm("  a: \"1\"\n")).await;
    assert_eq!((s, &o["data"]), (StatusCode::OK, &json!({"a": "1"})));
    // Another client's write (manager from its User-Agent) takes the field it changed.
    let mut edited = o.clone();
    edited["data"]["a"] = json!("9");
    edited["metadata"]["managedFields"] = Value::Null;
    let (s, o) = send(
        api,
        "PUT",
        CM,
        "alice",
        "application/json",
        "kubectl-edit/v1.32.0 (linux/amd64) kubernetes/abc",
        edited.to_string().as_bytes(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{o}");
    let e = entry(&o, "kubectl-edit").unwrap();
    assert_eq!(
        (&e["operation"], &e["fieldsV1"]),
        (&json!("Update"), &json!({"f:data": {"f:a": {}}}))
    );
    assert!(entry(&o, "ssa").is_some(), "ssa keeps its labels: {o}");
    // Applying the old value now conflicts, in kube-apiserver's words.
    let (s, st) = apply(api, "fieldManager=ssa&force=false", &cm("  a: \"1\"\n")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{st}");
    assert_eq!(st["reason"], "Conflict");
    assert_eq!(
        st["message"],
        "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .data.a"
    );
    assert_eq!(
        st["details"]["causes"],
        json!([{"reason": "FieldManagerConflict", "message": "conflict with \"kubectl-edit\" using v1", "field": ".data.a"}])
    );
    // Co-owning with the same value is fine; force takes the field over.
    let (s, o) = apply(
        api,
        "fieldManager=other",
        "apiVersion: v1\nkind: ConfigMap\ndata:\n  a: \"9\"\n",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{o}");
    let (s, o) = apply(api, "fieldManager=ssa&force=true", &cm("  a: \"1\"\n")).await;
    assert_eq!((s, &o["data"]["a"]), (StatusCode::OK, &json!("1")), "{o}");
    assert!(
        entry(&o, "kubectl-edit").is_none() && entry(&o, "other").is_none(),
        "{o}"
    );
    // Two fields of two managers: the multi-conflict message.
    let (_, o) = apply(
        api,
        "fieldManager=m2",
        "apiVersion: v1\nkind: ConfigMap\ndata:\n  z: \"1\"\n",
    )
    .await;
    assert_eq!(o["data"]["z"], "1");
    let (s, st) = apply(
        api,
        "fieldManager=m3",
        "apiVersion: v1\nkind: ConfigMap\ndata:\n  a: \"x\"\n  z: \"x\"\n",
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        st["message"],
        "Apply failed with 2 conflicts: conflicts with \"m2\":\n- .data.z\nconflicts with \"ssa\":\n- .data.a"
    );
}

#[tokio::test]
async fn apply_request_checks() {
    let f = setup().await;
    let api = &f.api;
    let (s, _) = apply(api, "fieldManager=ssa", &cm("  a: \"1\"\n")).await;
    assert_eq!(s, StatusCode::CREATED);
    let bad = |q: &'static str, body: String| async move { apply(api, q, &body).await };
    let (s, st) = bad("fieldManager=ssa", cm("  a: \"1\"\n").replace("v1", "v2")).await;
    assert_eq!(
        (s, st["message"].as_str().unwrap()),
        (
            StatusCode::BAD_REQUEST,
            "Incorrect version specified in apply patch. Specified patch version: v2, expected: v1"
        )
    );
    let (s, _) = bad("fieldManager=ssa", cm("").replace("ConfigMap", "Secret")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, st) = bad(
        "fieldManager=ssa",
        cm("").replace("  name: c\n", "  name: c\n  managedFields: []\n"),
    )
    .await;
    assert_eq!(
        (s, st["message"].as_str().unwrap()),
        (StatusCode::BAD_REQUEST, "metadata.managedFields must be nil")
    );
    let (s, _) = bad("fieldManager=ssa", cm("").replace("name: c", "name: other")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // resourceVersion is a precondition.
    let (s, st) = bad(
        "fieldManager=ssa",
        cm("").replace("  name: c\n", "  name: c\n  resourceVersion: \"1\"\n"),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{st}");
    assert!(st["message"].as_str().unwrap().contains("the object has been modified"));
    // Strict field validation refuses duplicate keys; without it the last one wins.
    let dup = cm("  a: \"1\"\n  a: \"2\"\n");
    let (s, st) = bad("fieldManager=ssa&fieldValidation=Strict", dup.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .starts_with("error strict decoding YAML: "),
        "{st}"
    );
    let (s, o) = bad("fieldManager=ssa&fieldValidation=Ignore", dup).await;
    assert_eq!((s, &o["data"]["a"]), (StatusCode::OK, &json!("2")));
    // Alias bombs and deep nesting are refused, not expanded.
    let mut bomb = String::from("apiVersion: v1\nkind: ConfigMap\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let p = format!("*a{}", i - 1);
        bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![p; 10].join(", ")));
    }
    let (s, _) = bad("fieldManager=ssa", bomb).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let deep = format!(
        "apiVersion: v1\nkind: ConfigMap\ndata: {}1{}\n",
        "[".repeat(500),
        "]".repeat(500)
    );
    let (s, _) = bad("fieldManager=ssa", deep).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // An associative list item without its key.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - image: x\n";
    let (s, st) = send(
        api,
        "PATCH",
        "/api/v1/namespaces/x/pods/p?fieldManager=m",
        "alice",
        APPLY,
        "t",
        pod.as_bytes(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{st}");
    // Options as kube-apiserver validates them.
    let (s, st) = send(
        api,
        "PATCH",
        &format!("{CM}?force=true"),
        "alice",
        "application/merge-patch+json",
        "t",
        b"{}",
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        st["message"]
            == "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch",
        "{st}"
    );
    let long = format!("fieldManager={}", "m".repeat(129));
    let (s, _) = send(
        api,
        "PATCH",
        &format!("{CM}?{long}"),
        "alice",
        APPLY,
        "t",
        cm("").as_bytes(),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // Reviews take no patch at all.
    let (s, _) = send(
        api,
        "PATCH",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews/x?fieldManager=m",
        "alice",
        APPLY,
        "t",
        b"{}",
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn apply_authorization_dry_run_and_migration() {
    let f = setup().await;
    let api = &f.api;
    // carol may patch but not create: an apply that would create is refused.
    let (s, st) = send(
        api,
        "PATCH",
        &format!("{CM}?fieldManager=c"),
        "carol",
        APPLY,
        "t",
        cm("  a: \"1\"\n").as_bytes(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{st}");
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .contains("cannot create resource \"configmaps\""),
        "{st}"
    );
    // bob may not patch at all.
    let (s, _) = send(
        api,
        "PATCH",
        &format!("{CM}?fieldManager=b"),
        "bob",
        APPLY,
        "t",
        cm("").as_bytes(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The status subresource never creates.
    let (s, _) = send(
        api,
        "PATCH",
        "/api/v1/namespaces/x/pods/p/status?fieldManager=m",
        "alice",
        APPLY,
        "t",
        b"apiVersion: v1\nkind: Pod\nstatus:\n  phase: Running\n",
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Dry run: answered, not stored.
    let (s, o) = apply(api, "fieldManager=ssa&dryRun=All", &cm("  a: \"1\"\n")).await;
    assert_eq!(s, StatusCode::CREATED, "{o}");
    assert!(entry(&o, "ssa").is_some());
    let (s, _) = send(api, "GET", CM, "alice", "application/json", "t", b"").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // An object written before field management: its fields belong to before-first-apply.
    let cms = crate::ApiServer::resource("", "v1", "configmaps").unwrap();
    let o = api
        .create_object(cms, "x", json!({"metadata": {"name": "c"}, "data": {"a": "0"}}))
        .await
        .unwrap();
    assert!(o["metadata"].get("managedFields").is_none(), "{o}");
    let (s, st) = apply(api, "fieldManager=ssa", &cm("  a: \"1\"\n")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        st["message"],
        "Apply failed with 1 conflict: conflict with \"before-first-apply\" using v1: .data.a"
    );
    // carol may apply to the existing object.
    let (s, _) = send(
        api,
        "PATCH",
        &format!("{CM}?fieldManager=c&force=true"),
        "carol",
        APPLY,
        "t",
        cm("  a: \"1\"\n").as_bytes(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // A client may rewrite the entries (kubectl's client-side-apply migration does).
    let patch = json!([{"op": "replace", "path": "/metadata/managedFields", "value": [
        {"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "time": "2026-01-01T00:00:00Z",
         "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:a": {}}}}
    ]}]);
    let (s, o) = send(
        api,
        "PATCH",
        CM,
        "alice",
        "application/json-patch+json",
        "t",
        patch.to_string().as_bytes(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{o}");
    assert_eq!(o["metadata"]["managedFields"].as_array().unwrap().len(), 1, "{o}");
    assert_eq!(entry(&o, "kubectl").unwrap()["operation"], "Apply");
    // …and a merge patch that does not mention them keeps them, adding its own entry.
    let (s, o) = send(
        api,
        "PATCH",
        &format!("{CM}?fieldManager=kubectl-label"),
        "alice",
        "application/merge-patch+json",
        "t",
        br#"{"metadata":{"labels":{"x":"y"}}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(entry(&o, "kubectl").is_some());
    // (The labels map existed already: only the new label is the patcher's.)
    assert_eq!(
        entry(&o, "kubectl-label").unwrap()["fieldsV1"],
        json!({"f:metadata": {"f:labels": {"f:x": {}}}})
    );
}

#[tokio::test]
async fn apply_lists_by_key_and_the_status_subresource() {
    let f = setup().await;
    let api = &f.api;
    let pod = |containers: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n{containers}status:\n  phase: Faked\n"
        )
    };
    let path = "/api/v1/namespaces/x/pods/p";
    let (s, o) = send(
        api,
        "PATCH",
        &format!("{path}?fieldManager=one"),
        "alice",
        APPLY,
        "t",
        pod("  - name: a\n    image: x\n").as_bytes(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{o}");
    assert_eq!(
        entry(&o, "one").unwrap()["fieldsV1"]["f:spec"],
        json!({"f:containers": {"k:{\"name\":\"a\"}": {".": {}, "f:image": {}, "f:name": {}}}})
    );
    assert!(o["status"].get("phase").is_none_or(|p| p != "Faked"), "{o}");
    // A second manager adds its own container: merged by name, not replaced.
    let (s, o) = send(
        api,
        "PATCH",
        &format!("{path}?fieldManager=two"),
        "alice",
        APPLY,
        "t",
        pod("  - name: b\n    image: y\n").as_bytes(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{o}");
    let names: Vec<&str> = o["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    // The status subresource: only status is applied and owned, under its own entry.
    let (s, o) = send(
        api,
        "PATCH",
        &format!("{path}/status?fieldManager=ctrl"),
        "alice",
        APPLY,
        "t",
        b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  nodeName: ignored\nstatus:\n  phase: Running\n",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{o}");
    assert_eq!(o["status"]["phase"], "Running");
    assert!(o["spec"].get("nodeName").is_none(), "{o}");
    let e = entry(&o, "ctrl").unwrap();
    assert_eq!(
        (&e["subresource"], &e["fieldsV1"]),
        (&json!("status"), &json!({"f:status": {"f:phase": {}}}))
    );
}

/// Marks the operation it saw, refuses `deny`-labelled objects, and tries to forge ownership.
struct Marking;

#[async_trait::async_trait]
impl crate::Admission for Marking {
    async fn admit(&self, req: crate::AdmissionAttributes<'_>, obj: &mut Value) -> Result<(), crate::AdmissionDenied> {
        if obj.pointer("/metadata/labels/deny").is_some() {
            return Err(crate::AdmissionDenied {
                webhook: "test.kubeflow.org".into(),
                code: 403,
                message: "nope".into(),
                call_failed: false,
            });
        }
        obj["metadata"]["annotations"] = json!({"admitted": req.operation.as_str()});
        obj["metadata"]["managedFields"] =
            json!([{"manager": "forged", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}}]);
        Ok(())
    }
}

#[tokio::test]
async fn apply_runs_admission_as_create_then_update() {
    let clock = kfsec_types::ManualClock::new(kfsec_types::UnixTime::from_secs(1_700_000_000));
    let store = kfsec_store::MemoryStore::new(clock.clone());
    let authz = crate::testutil::TableAuthz::new(default_grants());
    let api = ApiServer::builder(store, authz, clock, Arc::new(crate::testutil::CounterRng::default()))
        .admission(Arc::new(Marking))
        .build();
    let ns = crate::ApiServer::resource("", "v1", "namespaces").unwrap();
    api.create_object(ns, "", json!({"metadata": {"name": "x"}}))
        .await
        .unwrap();
    let (s, o) = apply(&api, "fieldManager=ssa", &cm("  a: \"1\"\n")).await;
    assert_eq!(s, StatusCode::CREATED, "{o}");
    assert_eq!(o["metadata"]["annotations"]["admitted"], "CREATE");
    let managers: Vec<&str> = o["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["manager"].as_str())
        .collect();
    assert_eq!(managers, ["ssa"], "admission cannot forge ownership: {o}");
    let (s, o) = apply(&api, "fieldManager=ssa", &cm("  a: \"2\"\n")).await;
    assert_eq!(
        (s, &o["metadata"]["annotations"]["admitted"]),
        (StatusCode::OK, &json!("UPDATE"))
    );
    let denied = cm("  a: \"3\"\n").replace("    app: web\n", "    app: web\n    deny: \"1\"\n");
    let (s, st) = apply(&api, "fieldManager=ssa", &denied).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{st}");
    assert_eq!(
        st["message"],
        "admission webhook \"test.kubeflow.org\" denied the request: nope"
    );
}
