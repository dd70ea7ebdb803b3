//! End-to-end tests through the router (in-memory store, a recording fake authorizer): the
//! authorization table and KFP's error JSON, namespaces, paging / sort / filter over HTTP,
//! package integrity (tampered bytes → DataLoss), the report endpoint, and bad input.
#![allow(clippy::type_complexity)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use kfsec_api::{Attributes, Authorize, Decision, RequestAttributes, SubjectRules};
use kfsec_store::{MemoryStore, Store};
use kfsec_types::identity::UserInfo;
use kfsec_types::{Identity, ManualClock, Rng, UnixTime};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{Kfp, KfpSettings};

const U1: &str = "user1@example.com";
const U2: &str = "user2@example.com";
const VIEWER: &str = "viewer@example.com";
const ADMIN: &str = "admin@example.com";
const AGENT: &str = "system:serviceaccount:kubeflow:ml-pipeline-persistenceagent";

const IR: &str = "pipelineInfo:\n  name: hello-pipeline\nroot:\n  dag:\n    tasks:\n      hello:\n        taskInfo:\n          name: hello\nschemaVersion: 2.1.0\nsdkVersion: kfp-2.14.6\n";
const WF: &str = "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nmetadata:\n  generateName: legacy-\nspec:\n  entrypoint: main\n  arguments:\n    parameters:\n    - name: msg\n      value: hi\n  templates:\n  - name: main\n    container:\n      image: alpine\n";

#[derive(Debug, Clone)]
struct Grant {
    user: &'static str,
    namespace: Option<&'static str>,
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
}

const EDIT: &[&str] = &[
    "get",
    "list",
    "create",
    "delete",
    "update",
    "archive",
    "unarchive",
    "terminate",
    "retry",
    "reportMetrics",
    "enable",
    "disable",
];
const ALL_RES: &[&str] = &["experiments", "runs", "jobs", "pipelines", "pipelineversions"];

/// A fake RBAC: explicit grants, and a record of every question asked.
#[derive(Default)]
struct FakeAuthz {
    grants: Vec<Grant>,
    asked: Mutex<Vec<Attributes>>,
}

impl Authorize for FakeAuthz {
    fn authorize(&self, a: &Attributes) -> Decision {
        self.asked.lock().push(a.clone());
        let RequestAttributes::Resource(r) = &a.request else {
            return Decision::NoOpinion;
        };
        assert!(
            a.groups.contains(&"system:authenticated".to_owned()),
            "implicit group missing"
        );
        let ok = r.api_group == "pipelines.kubeflow.org"
            && self.grants.iter().any(|g| {
                g.user == a.user
                    && g.namespace.is_none_or(|n| n == r.namespace)
                    && g.resources.contains(&r.resource.as_str())
                    && g.verbs.contains(&r.verb.as_str())
            });
        if ok {
            Decision::Allow { reason: "test".into() }
        } else {
            Decision::NoOpinion
        }
    }
    fn rules_for(&self, _: &UserInfo, _: &str) -> SubjectRules {
        SubjectRules::default()
    }
}

struct CountingRng(AtomicU64);

impl Rng for CountingRng {
    fn fill(&self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            let n = self.0.fetch_add(0x9E37_79B9, Ordering::Relaxed);
            *b = (n >> 11) as u8 ^ (n >> 3) as u8;
        }
    }
}

struct Env {
    kfp: Arc<Kfp>,
    router: Router,
    store: Arc<MemoryStore>,
    authz: Arc<FakeAuthz>,
    clock: Arc<ManualClock>,
}

fn grants() -> Vec<Grant> {
    vec![
        Grant {
            user: U1,
            namespace: Some("user1"),
            resources: ALL_RES,
            verbs: EDIT,
        },
        Grant {
            user: U2,
            namespace: Some("user2"),
            resources: ALL_RES,
            verbs: EDIT,
        },
        Grant {
            user: VIEWER,
            namespace: Some("user1"),
            resources: ALL_RES,
            verbs: &["get", "list"],
        },
        Grant {
            user: ADMIN,
            namespace: None,
            resources: ALL_RES,
            verbs: EDIT,
        },
        Grant {
            user: AGENT,
            namespace: None,
            resources: &["workflows", "scheduledworkflows"],
            verbs: &["report"],
        },
    ]
}

async fn env_with(settings: KfpSettings) -> Env {
    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let store = MemoryStore::new(clock.clone());
    env_on(store.clone(), store, clock, settings).await
}

/// The environment over `backend` (`store` is what the test reads directly).
async fn env_on(
    backend: Arc<dyn Store>,
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    settings: KfpSettings,
) -> Env {
    let authz = Arc::new(FakeAuthz {
        grants: grants(),
        asked: Mutex::new(Vec::new()),
    });
    let kfp = Kfp::new(
        backend,
        authz.clone(),
        clock.clone(),
        Arc::new(CountingRng(AtomicU64::new(7))),
        settings,
    )
    .await
    .unwrap();
    Env {
        router: kfp.router(),
        kfp,
        store,
        authz,
        clock,
    }
}

async fn env() -> Env {
    env_with(KfpSettings::default()).await
}

impl Env {
    async fn send(&self, who: Option<&str>, req: Request<Body>) -> (StatusCode, Value) {
        let mut req = req;
        if let Some(u) = who {
            req.extensions_mut().insert(Identity::new(u, vec![]));
        }
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        (status, v)
    }

    async fn call(&self, who: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let b = body.map_or(Body::empty(), |v| Body::from(v.to_string()));
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(b)
            .unwrap();
        self.send(Some(who), req).await
    }

    async fn get(&self, who: &str, path: &str) -> (StatusCode, Value) {
        self.call(who, Method::GET, path, None).await
    }

    async fn post(&self, who: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(who, Method::POST, path, Some(body)).await
    }

    async fn upload(&self, who: &str, path: &str, filename: &str, bytes: &[u8]) -> (StatusCode, Value) {
        let mut body = b"--BOUNDARY\r\nContent-Disposition: form-data; name=\"uploadfile\"; filename=\"".to_vec();
        body.extend_from_slice(filename.as_bytes());
        body.extend_from_slice(b"\"\r\nContent-Type: application/octet-stream\r\n\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n--BOUNDARY--\r\n");
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("content-type", "multipart/form-data; boundary=BOUNDARY")
            .body(Body::from(body))
            .unwrap();
        self.send(Some(who), req).await
    }

    async fn experiment_v2(&self, who: &str, ns: &str, name: &str) -> String {
        let (s, v) = self
            .post(
                who,
                "/pipeline/apis/v2beta1/experiments",
                json!({"display_name": name, "namespace": ns}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["experiment_id"].as_str().unwrap().to_owned()
    }

    async fn pipeline_v2(&self, who: &str, ns: &str, name: &str) -> (String, String) {
        let q = if ns.is_empty() {
            String::new()
        } else {
            format!("&namespace={ns}")
        };
        let (s, v) = self
            .upload(
                who,
                &format!("/pipeline/apis/v2beta1/pipelines/upload?name={name}{q}"),
                "p.yaml",
                IR.as_bytes(),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let pid = v["pipeline_id"].as_str().unwrap().to_owned();
        let (s, v) = self
            .get(who, &format!("/pipeline/apis/v2beta1/pipelines/{pid}/versions"))
            .await;
        assert_eq!(s, 200, "{v}");
        let vid = v["pipeline_versions"][0]["pipeline_version_id"]
            .as_str()
            .unwrap()
            .to_owned();
        (pid, vid)
    }

    async fn run_v2(&self, who: &str, exp: &str, pid: &str, vid: &str) -> String {
        let (s, v) = self
            .post(
                who,
                "/pipeline/apis/v2beta1/runs",
                json!({"display_name": "r", "experiment_id": exp,
                       "pipeline_version_reference": {"pipeline_id": pid, "pipeline_version_id": vid}}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["run_id"].as_str().unwrap().to_owned()
    }
}

fn denied_message(user: &str, ns: &str, verb: &str, res: &str, name: &str) -> String {
    format!(
        "User '{user}' is not authorized with reason:  (request: &ResourceAttributes{{Namespace:{ns},Verb:{verb},Group:pipelines.kubeflow.org,Version:v1beta1,Resource:{res},Subresource:,Name:{name},}})"
    )
}

fn assert_denied(s: StatusCode, v: &Value, user: &str, ns: &str, verb: &str, res: &str, name: &str) {
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["code"], 7, "{v}");
    let ext = denied_message(user, ns, verb, res, name);
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.ends_with(&format!("PermissionDenied: {ext}: Unauthorized access")),
        "{msg}"
    );
    assert_eq!(v["error"], v["message"]);
    assert_eq!(
        v["details"],
        json!([{"@type": "type.googleapis.com/google.rpc.Status", "code": 7, "message": ext}])
    );
}

#[tokio::test]
async fn healthz_and_unauthenticated() {
    let e = env().await;
    let (s, v) = e.get(U1, "/pipeline/apis/v1beta1/healthz").await;
    assert_eq!((s, v["multi_user"].clone()), (StatusCode::OK, json!(true)));
    let (_, v) = e.get(U1, "/pipeline/apis/v2beta1/healthz").await;
    assert_eq!(v["multi_user"], true);
    let req = Request::builder()
        .uri("/pipeline/apis/v1beta1/experiments")
        .body(Body::empty())
        .unwrap();
    let (s, v) = e.send(None, req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["code"], 16);
    assert_eq!(
        v["details"][0]["message"],
        "Failed to check authorization. User identity is empty in the request header"
    );
}

#[tokio::test]
async fn the_seed_example_list_another_namespace_is_denied_with_kfps_json() {
    let e = env().await;
    let (s, v) = e
        .get(
            U1,
            "/pipeline/apis/v1beta1/experiments?resource_reference_key.type=NAMESPACE&resource_reference_key.id=user2",
        )
        .await;
    assert_denied(s, &v, U1, "user2", "list", "experiments", "");
    assert_eq!(
        v["message"],
        format!(
            "List v1beta1 experiments failed: Failed to authorize with API: Failed to authorize with API: PermissionDenied: {}: Unauthorized access",
            denied_message(U1, "user2", "list", "experiments", "")
        )
    );
    // The SubjectAccessReview-equivalent question carried KFP's attributes.
    let asked = e.authz.asked.lock().last().cloned().unwrap();
    assert_eq!(asked.user, U1);
    let RequestAttributes::Resource(r) = asked.request else {
        panic!()
    };
    assert_eq!(
        (
            r.api_group.as_str(),
            r.resource.as_str(),
            r.verb.as_str(),
            r.namespace.as_str(),
            r.name.as_str()
        ),
        ("pipelines.kubeflow.org", "experiments", "list", "user2", "")
    );
    // user2 on its own empty namespace: exactly {}.
    let (s, v) = e
        .get(
            U2,
            "/pipeline/apis/v1beta1/experiments?resource_reference_key.type=NAMESPACE&resource_reference_key.id=user2",
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!({})));
    let (s, v) = e.get(U2, "/pipeline/apis/v2beta1/runs?namespace=user2").await;
    assert_eq!((s, v), (StatusCode::OK, json!({})));
}

#[tokio::test]
async fn empty_namespace_is_invalid_argument() {
    let e = env().await;
    for (path, text) in [
        (
            "/pipeline/apis/v1beta1/experiments",
            "An experiment cannot have an empty namespace in multi-user mode",
        ),
        (
            "/pipeline/apis/v2beta1/experiments",
            "An experiment cannot have an empty namespace in multi-user mode",
        ),
        (
            "/pipeline/apis/v2beta1/experiments?namespace=",
            "An experiment cannot have an empty namespace in multi-user mode",
        ),
        (
            "/pipeline/apis/v1beta1/runs",
            "A run cannot have an empty namespace in multi-user mode",
        ),
        (
            "/pipeline/apis/v2beta1/runs",
            "A run cannot have an empty namespace in multi-user mode",
        ),
    ] {
        let (s, v) = e.get(U1, path).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert_eq!(v["code"], 3);
        assert_eq!(v["details"][0]["message"], text, "{path}");
    }
    let (s, v) = e
        .post(U1, "/pipeline/apis/v1beta1/experiments", json!({"name": "x"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["message"],
        "Failed to create a v1beta1 experiment: Failed to authorize the request: Invalid input error: An experiment cannot have an empty namespace in multi-user mode"
    );
    let (s, _) = e
        .post(
            U1,
            "/pipeline/apis/v2beta1/experiments",
            json!({"display_name": "x", "namespace": "Not_A_Namespace"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn authorization_table() {
    let e = env().await;
    let exp = e.experiment_v2(U1, "user1", "e1").await;
    let (pid, vid) = e.pipeline_v2(U1, "user1", "private").await;
    let (spid, svid) = e.pipeline_v2(ADMIN, "", "shared").await;
    let run = e.run_v2(U1, &exp, &pid, &vid).await;
    let (s, v) = e
        .post(
            U1,
            "/pipeline/apis/v2beta1/recurringruns",
            json!({"display_name": "nightly", "experiment_id": exp, "max_concurrency": "2",
                   "trigger": {"cron_schedule": {"cron": "0 0 * * * *"}},
                   "pipeline_version_reference": {"pipeline_id": spid, "pipeline_version_id": svid}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let job = v["recurring_run_id"].as_str().unwrap().to_owned();
    let v1 = "/pipeline/apis/v1beta1";
    let v2 = "/pipeline/apis/v2beta1";
    let ok = StatusCode::OK;
    let no = StatusCode::FORBIDDEN;
    // (user, method, path, expected, denied verb, resource, namespace, name)
    let table: Vec<(&str, Method, String, StatusCode, &str, &str, &str, &str)> = vec![
        (
            U2,
            Method::GET,
            format!("{v2}/experiments/{exp}"),
            no,
            "get",
            "experiments",
            "user1",
            "e1",
        ),
        (
            U2,
            Method::GET,
            format!("{v1}/experiments/{exp}"),
            no,
            "get",
            "experiments",
            "user1",
            "e1",
        ),
        (
            VIEWER,
            Method::GET,
            format!("{v2}/experiments/{exp}"),
            ok,
            "",
            "",
            "",
            "",
        ),
        (
            U2,
            Method::POST,
            format!("{v2}/experiments/{exp}:archive"),
            no,
            "archive",
            "experiments",
            "user1",
            "e1",
        ),
        (
            VIEWER,
            Method::POST,
            format!("{v1}/experiments/{exp}:unarchive"),
            no,
            "unarchive",
            "experiments",
            "user1",
            "e1",
        ),
        (
            U2,
            Method::GET,
            format!("{v2}/experiments?namespace=user1"),
            no,
            "list",
            "experiments",
            "user1",
            "",
        ),
        (
            VIEWER,
            Method::GET,
            format!("{v2}/experiments?namespace=user1"),
            ok,
            "",
            "",
            "",
            "",
        ),
        (
            U2,
            Method::GET,
            format!("{v2}/runs/{run}"),
            no,
            "get",
            "runs",
            "user1",
            "r",
        ),
        (
            U2,
            Method::GET,
            format!("{v1}/runs/{run}"),
            no,
            "get",
            "runs",
            "user1",
            "r",
        ),
        (VIEWER, Method::GET, format!("{v1}/runs/{run}"), ok, "", "", "", ""),
        (
            VIEWER,
            Method::POST,
            format!("{v2}/runs/{run}:terminate"),
            no,
            "terminate",
            "runs",
            "user1",
            "r",
        ),
        (
            U2,
            Method::POST,
            format!("{v1}/runs/{run}/terminate"),
            no,
            "terminate",
            "runs",
            "user1",
            "r",
        ),
        (
            U2,
            Method::POST,
            format!("{v1}/runs/{run}/retry"),
            no,
            "retry",
            "runs",
            "user1",
            "r",
        ),
        (
            U2,
            Method::POST,
            format!("{v2}/runs/{run}:archive"),
            no,
            "archive",
            "runs",
            "user1",
            "r",
        ),
        (
            U2,
            Method::DELETE,
            format!("{v2}/runs/{run}"),
            no,
            "delete",
            "runs",
            "user1",
            "r",
        ),
        (
            U2,
            Method::GET,
            format!("{v2}/runs?experiment_id={exp}"),
            no,
            "list",
            "runs",
            "user1",
            "",
        ),
        (
            U2,
            Method::GET,
            format!("{v1}/runs?resource_reference_key.type=EXPERIMENT&resource_reference_key.id={exp}"),
            no,
            "list",
            "runs",
            "user1",
            "",
        ),
        (
            U2,
            Method::GET,
            format!("{v2}/recurringruns/{job}"),
            no,
            "get",
            "jobs",
            "user1",
            "nightly",
        ),
        (
            U2,
            Method::POST,
            format!("{v1}/jobs/{job}/disable"),
            no,
            "disable",
            "jobs",
            "user1",
            "nightly",
        ),
        (
            VIEWER,
            Method::POST,
            format!("{v2}/recurringruns/{job}:enable"),
            no,
            "enable",
            "jobs",
            "user1",
            "nightly",
        ),
        (
            U2,
            Method::GET,
            format!("{v2}/recurringruns?namespace=user1"),
            no,
            "list",
            "jobs",
            "user1",
            "",
        ),
        (
            U2,
            Method::GET,
            format!("{v2}/pipelines/{pid}"),
            no,
            "get",
            "pipelines",
            "user1",
            "private",
        ),
        (
            U2,
            Method::GET,
            format!("{v2}/pipelines/{pid}/versions/{vid}"),
            no,
            "get",
            "pipelines",
            "user1",
            "private",
        ),
        (
            U2,
            Method::GET,
            format!("{v1}/pipeline_versions/{vid}/templates"),
            no,
            "get",
            "pipelines",
            "user1",
            "private",
        ),
        (
            U2,
            Method::GET,
            format!("{v2}/pipelines?namespace=user1"),
            no,
            "list",
            "pipelines",
            "user1",
            "",
        ),
        (
            U2,
            Method::DELETE,
            format!("{v2}/pipelines/{pid}"),
            no,
            "delete",
            "pipelines",
            "user1",
            "private",
        ),
        (
            U2,
            Method::GET,
            format!("{v2}/pipelines/names/private?namespace=user1"),
            no,
            "get",
            "pipelines",
            "user1",
            "private",
        ),
        // Shared pipelines: readable by everyone, writable only with rights in the system namespace.
        (U2, Method::GET, format!("{v2}/pipelines/{spid}"), ok, "", "", "", ""),
        (U2, Method::GET, format!("{v1}/pipelines/{spid}"), ok, "", "", "", ""),
        (
            U2,
            Method::GET,
            format!("{v1}/pipelines/{spid}/templates"),
            ok,
            "",
            "",
            "",
            "",
        ),
        (
            U2,
            Method::GET,
            format!("{v2}/pipelines/{spid}/versions/{svid}"),
            ok,
            "",
            "",
            "",
            "",
        ),
        (
            U2,
            Method::GET,
            format!("{v2}/pipelines/names/shared"),
            ok,
            "",
            "",
            "",
            "",
        ),
        (
            U1,
            Method::DELETE,
            format!("{v2}/pipelines/{spid}"),
            no,
            "delete",
            "pipelines",
            "kubeflow",
            "shared",
        ),
        (
            U1,
            Method::DELETE,
            format!("{v2}/pipelines/{spid}/versions/{svid}"),
            no,
            "delete",
            "pipelines",
            "kubeflow",
            "shared",
        ),
        // Own namespace: allowed.
        (U1, Method::POST, format!("{v2}/runs/{run}:archive"), ok, "", "", "", ""),
        (
            U1,
            Method::POST,
            format!("{v1}/runs/{run}:unarchive"),
            ok,
            "",
            "",
            "",
            "",
        ),
        (U1, Method::POST, format!("{v1}/jobs/{job}/disable"), ok, "", "", "", ""),
        (
            U1,
            Method::POST,
            format!("{v2}/recurringruns/{job}:enable"),
            ok,
            "",
            "",
            "",
            "",
        ),
        (
            U1,
            Method::POST,
            format!("{v1}/runs/{run}/terminate"),
            ok,
            "",
            "",
            "",
            "",
        ),
    ];
    for (user, method, path, want, verb, res, ns, name) in table {
        let (s, v) = e.call(user, method.clone(), &path, None).await;
        if want == no {
            assert_denied(s, &v, user, ns, verb, res, name);
        } else {
            assert_eq!(s, want, "{user} {method} {path}: {v}");
        }
    }
    // Creating in someone else's namespace.
    let (s, v) = e
        .post(
            U2,
            "/pipeline/apis/v2beta1/experiments",
            json!({"display_name": "x", "namespace": "user1"}),
        )
        .await;
    assert_denied(s, &v, U2, "user1", "create", "experiments", "x");
    let (s, v) = e
        .post(
            U2,
            "/pipeline/apis/v1beta1/runs",
            json!({"name": "sneaky", "pipeline_spec": {"pipeline_id": spid},
                   "resource_references": [{"key": {"type": "EXPERIMENT", "id": exp}, "relationship": "OWNER"}]}),
        )
        .await;
    assert_denied(s, &v, U2, "user1", "create", "runs", "");
    let (s, v) = e
        .upload(
            U2,
            "/pipeline/apis/v2beta1/pipelines/upload?name=p&namespace=user1",
            "p.yaml",
            IR.as_bytes(),
        )
        .await;
    assert_denied(s, &v, U2, "user1", "create", "pipelines", "p");
    // Publishing a new shared pipeline is open (KFP's upload rule, what kfp 1.8 needs)...
    let (s, v) = e
        .upload(
            U1,
            "/pipeline/apis/v1beta1/pipelines/upload?name=p2",
            "p.yaml",
            IR.as_bytes(),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // ...but changing someone else's shared pipeline (a new version, which becomes the default
    // others run) needs the right in the system namespace (see shared_pipeline_owner_rule for
    // the creator's own); so does the v2 create.
    let (s, v) = e
        .upload(
            U1,
            &format!("/pipeline/apis/v1beta1/pipelines/upload_version?name=evil&pipelineid={spid}"),
            "p.yaml",
            IR.as_bytes(),
        )
        .await;
    assert_denied(s, &v, U1, "kubeflow", "create", "pipelines", "shared");
    let (s, v) = e
        .post(U1, "/pipeline/apis/v2beta1/pipelines", json!({"display_name": "p3"}))
        .await;
    assert_denied(s, &v, U1, "kubeflow", "create", "pipelines", "p3");
    // user2 cannot run user1's private pipeline in its own namespace either.
    let exp2 = e.experiment_v2(U2, "user2", "e2").await;
    let (s, v) = e
        .post(
            U2,
            "/pipeline/apis/v2beta1/runs",
            json!({"display_name": "r", "experiment_id": exp2,
                   "pipeline_version_reference": {"pipeline_id": pid, "pipeline_version_id": vid}}),
        )
        .await;
    assert_denied(s, &v, U2, "user1", "get", "pipelines", "private");
    // ...but a shared one is fine.
    e.run_v2(U2, &exp2, &spid, &svid).await;
    // A shared pipeline is listed for both users.
    for u in [U1, U2] {
        let (s, v) = e.get(u, "/pipeline/apis/v1beta1/pipelines").await;
        assert_eq!(s, 200);
        assert_eq!(v["pipelines"].as_array().unwrap().len(), 2, "{v}");
        assert_eq!(v["pipelines"][0]["name"], "shared");
        let (_, v) = e.get(u, "/pipeline/apis/v2beta1/pipelines").await;
        assert_eq!(v["pipelines"][0]["display_name"], "shared");
    }
    // The admin can delete the shared pipeline.
    let (s, v) = e
        .call(
            ADMIN,
            Method::DELETE,
            &format!("/pipeline/apis/v1beta1/pipelines/{spid}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn runs_take_the_namespace_of_their_experiment() {
    let e = env().await;
    let exp = e.experiment_v2(U1, "user1", "e").await;
    let wf_json = serde_json::to_string(&serde_saphyr::from_str::<Value>(WF).unwrap()).unwrap();
    let (s, v) = e
        .post(
            U1,
            "/pipeline/apis/v1beta1/runs",
            json!({"name": "legacy", "pipeline_spec": {"workflow_manifest": wf_json},
                   "resource_references": [{"key": {"type": "EXPERIMENT", "id": exp}, "relationship": "OWNER"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let run = &v["run"];
    assert_eq!(run["status"], "Pending");
    assert!(
        run.get("storage_state").is_none(),
        "AVAILABLE is the zero value in v1 runs"
    );
    let rr = run["resource_references"].as_array().unwrap();
    assert!(rr.contains(&json!({"key": {"type": "NAMESPACE", "id": "user1"}, "relationship": "OWNER"})));
    assert_eq!(
        run["pipeline_spec"]["parameters"],
        json!([{"name": "msg", "value": "hi"}])
    );
    let id = run["id"].as_str().unwrap();
    let (s, v) = e.get(U1, &format!("/pipeline/apis/v1beta1/runs/{id}")).await;
    assert_eq!(s, 200);
    assert!(
        v["run"]["pipeline_spec"]["workflow_manifest"]
            .as_str()
            .unwrap()
            .contains("Workflow")
    );
    assert_eq!(v["pipeline_runtime"], json!({}));
    // v1 list by namespace and by experiment
    for q in [
        "resource_reference_key.type=NAMESPACE&resource_reference_key.id=user1".to_owned(),
        format!("resource_reference_key.type=EXPERIMENT&resource_reference_key.id={exp}"),
    ] {
        let (s, v) = e.get(U1, &format!("/pipeline/apis/v1beta1/runs?{q}")).await;
        assert_eq!(s, 200);
        assert_eq!(v["total_size"], 1, "{v}");
    }
    // a NAMESPACE reference that disagrees with the experiment
    let (s, v) = e
        .post(
            U1,
            "/pipeline/apis/v1beta1/runs",
            json!({"name": "x", "pipeline_spec": {"workflow_manifest": wf_json},
                   "resource_references": [{"key": {"type": "EXPERIMENT", "id": exp}, "relationship": "OWNER"},
                                           {"key": {"type": "NAMESPACE", "id": "user2"}, "relationship": "OWNER"}]}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    // no experiment at all
    let (s, v) = e
        .post(
            U1,
            "/pipeline/apis/v1beta1/runs",
            json!({"name": "x", "pipeline_spec": {"workflow_manifest": wf_json},
                   "resource_references": [{"key": {"type": "NAMESPACE", "id": "user1"}, "relationship": "OWNER"}]}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("Experiment id can not be empty in multi-user mode")
    );
    // the v2 experiment records its last run
    let (_, v) = e.get(U1, &format!("/pipeline/apis/v2beta1/experiments/{exp}")).await;
    assert_eq!(v["last_run_created_at"], "2023-11-14T22:13:20Z");
}

/// v1 `reportMetrics` as KFP answers it: each metric once per node (a repeat is
/// `DUPLICATE_REPORTING` and replaces nothing), names KFP accepts, and a bounded number per run
/// (every listing loads the run whole).
#[tokio::test]
async fn reported_metrics_are_checked_once_each_and_bounded() {
    let e = env().await;
    let exp = e.experiment_v2(U1, "user1", "e").await;
    let wf_json = serde_json::to_string(&serde_saphyr::from_str::<Value>(WF).unwrap()).unwrap();
    let (_, v) = e
        .post(
            U1,
            "/pipeline/apis/v1beta1/runs",
            json!({"name": "m", "pipeline_spec": {"workflow_manifest": wf_json},
                   "resource_references": [{"key": {"type": "EXPERIMENT", "id": exp}, "relationship": "OWNER"}]}),
        )
        .await;
    let id = v["run"]["id"].as_str().unwrap().to_owned();
    let path = format!("/pipeline/apis/v1beta1/runs/{id}:reportMetrics");
    let metric = |name: &str, node: &str, value: f64| json!({"name": name, "node_id": node, "number_value": value});
    let statuses = |v: &Value| -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, v) = e
        .post(
            U1,
            &path,
            json!({"metrics": [metric("accuracy", "n1", 0.9), metric("accuracy", "n2", 0.8), metric("accuracy", "n1", 0.1),
                               metric("Accuracy", "n1", 1.0), metric("-a", "n1", 1.0), metric("loss", "", 1.0),
                               metric("loss", &"n".repeat(1 << 20), 1.0),
                               {"name": "loss", "node_id": "n1", "number_value": 1.0, "format": "HUGE"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        statuses(&v),
        [
            "OK",
            "OK",
            "DUPLICATE_REPORTING",
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ]
    );
    let (_, again) = e
        .post(U1, &path, json!({"metrics": [metric("accuracy", "n1", 0.0)]}))
        .await;
    assert_eq!(statuses(&again), ["DUPLICATE_REPORTING"]);
    let (_, run) = e.get(U1, &format!("/pipeline/apis/v1beta1/runs/{id}")).await;
    let kept = run["run"]["metrics"].as_array().unwrap();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(kept[0]["number_value"], 0.9, "the first report stands");
    // Past the run's bound every new metric is refused, and the run stays at it.
    for batch in 0..4 {
        let many: Vec<Value> = (0..300).map(|i| metric(&format!("m{batch}-{i}"), "n", 1.0)).collect();
        e.post(U1, &path, json!({"metrics": many})).await;
    }
    let (_, v) = e.post(U1, &path, json!({"metrics": [metric("late", "n", 1.0)]})).await;
    assert_eq!(statuses(&v), ["INVALID_ARGUMENT"]);
    let (_, run) = e.get(U1, &format!("/pipeline/apis/v1beta1/runs/{id}")).await;
    assert_eq!(run["run"]["metrics"].as_array().unwrap().len(), 1_000);
}

#[tokio::test]
async fn paging_sorting_filtering_over_http() {
    let e = env().await;
    for i in 0..45 {
        e.experiment_v2(U1, "user1", &format!("exp-{:02}", (i * 7) % 45)).await;
        e.clock.advance(std::time::Duration::from_secs(1));
    }
    e.experiment_v2(U2, "user2", "elsewhere").await;
    let base = "/pipeline/apis/v2beta1/experiments?namespace=user1";
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let (s, v) = e.get(U1, &format!("{base}&page_token={token}")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["total_size"], 45);
        for x in v["experiments"].as_array().unwrap() {
            seen.push(x["created_at"].as_str().unwrap().to_owned());
        }
        match v["next_page_token"].as_str() {
            Some(t) => token = t.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 45);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "default order is created_at ascending"
    );
    let (_, v) = e
        .get(U1, &format!("{base}&page_size=5&sort_by=display_name%20desc"))
        .await;
    let names: Vec<&str> = v["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["display_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["exp-44", "exp-43", "exp-42", "exp-41", "exp-40"]);
    // filter, with both spellings, as the SDKs send it (URL-encoded JSON)
    for f in [
        r#"{"predicates":[{"key":"display_name","operation":"EQUALS","string_value":"exp-07"}]}"#,
        r#"{"predicates":[{"key":"name","op":1,"stringValue":"exp-07"}]}"#,
    ] {
        let enc: String = url::form_urlencoded::byte_serialize(f.as_bytes()).collect();
        let (s, v) = e.get(U1, &format!("{base}&filter={enc}")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["total_size"], 1, "{f}");
        assert_eq!(v["experiments"][0]["display_name"], "exp-07");
    }
    // v1 sees the same objects in its own shape
    let (_, v) = e
        .get(U1, "/pipeline/apis/v1beta1/experiments?resource_reference_key.type=NAMESPACE&resource_reference_key.id=user1&page_size=1&sort_by=name")
        .await;
    assert_eq!(v["experiments"][0]["name"], "exp-00");
    assert_eq!(v["experiments"][0]["storage_state"], "STORAGESTATE_AVAILABLE");
    assert!(v["next_page_token"].is_string());
    // bad list input
    let (_, v) = e.get(U1, &format!("{base}&page_size=2")).await;
    let good = v["next_page_token"].as_str().unwrap().to_owned();
    for q in [
        "page_token=garbage".to_owned(),
        "page_token=eyJhIjoxfQ.AAAA".to_owned(),
        format!("page_token={}x", &good[..good.len() - 1]),
        "page_size=-1".to_owned(),
        "page_size=abc".to_owned(),
        "sort_by=nope".to_owned(),
        "sort_by=a%20b%20c".to_owned(),
        "filter=%7Bbroken".to_owned(),
        "filter=%7B%22predicates%22%3A%5B%7B%22key%22%3A%22x%22%7D%5D%7D".to_owned(),
    ] {
        let (s, v) = e.get(U1, &format!("{base}&{q}")).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert_eq!(v["code"], 3, "{q}");
    }
    // a token from user1's listing does not page another namespace
    let (s, _) = e
        .get(
            U2,
            &format!("/pipeline/apis/v2beta1/experiments?namespace=user2&page_token={good}"),
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn tampered_packages_are_data_loss_never_served() {
    let e = env().await;
    let (pid, vid) = e.pipeline_v2(U1, "user1", "p").await;
    let (s, v) = e
        .get(U1, &format!("/pipeline/apis/v2beta1/pipelines/{pid}/versions/{vid}"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["pipeline_spec"]["pipelineInfo"]["name"], "hello-pipeline");
    let exp = e.experiment_v2(U1, "user1", "e").await;
    let run = e.run_v2(U1, &exp, &pid, &vid).await;
    // Tamper with the stored package bytes.
    let key = format!("/kfp/packages/{vid}");
    let evil = IR.replace("alpine", "evil").replace("hello", "pwned");
    e.store.put(&key, evil.into_bytes(), None).await.unwrap();
    for path in [
        format!("/pipeline/apis/v2beta1/pipelines/{pid}/versions/{vid}"),
        format!("/pipeline/apis/v1beta1/pipelines/{pid}/templates"),
        format!("/pipeline/apis/v1beta1/pipeline_versions/{vid}/templates"),
    ] {
        let (s, v) = e.get(U1, &path).await;
        assert_eq!(s, 500, "{path}: {v}");
        assert_eq!(v["code"], 15, "{path}");
        assert!(!v.to_string().contains("pwned"), "tampered content leaked");
    }
    let (s, v) = e
        .post(
            U1,
            "/pipeline/apis/v2beta1/runs",
            json!({"display_name": "r2", "experiment_id": exp,
                   "pipeline_version_reference": {"pipeline_id": pid, "pipeline_version_id": vid}}),
        )
        .await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::INTERNAL_SERVER_ERROR, json!(15)),
        "{v}"
    );
    // The run's own copy is checked too.
    let (s, _) = e.get(U1, &format!("/pipeline/apis/v2beta1/runs/{run}")).await;
    assert_eq!(s, 200);
    e.store
        .put(&format!("/kfp/specs/{run}"), b"{\"x\":1}".to_vec(), None)
        .await
        .unwrap();
    let (s, v) = e.get(U1, &format!("/pipeline/apis/v2beta1/runs/{run}")).await;
    assert_eq!((s, v["code"].clone()), (StatusCode::INTERNAL_SERVER_ERROR, json!(15)));
    // A deleted blob is DataLoss as well.
    e.store.delete(&key, None).await.unwrap();
    let (_, v) = e
        .get(U1, &format!("/pipeline/apis/v1beta1/pipelines/{pid}/templates"))
        .await;
    assert_eq!(v["code"], 15);
}

#[tokio::test]
async fn uploads_in_every_format_and_bad_packages() {
    let e = env_with(KfpSettings {
        max_body_bytes: 256 * 1024,
        ..KfpSettings::default()
    })
    .await;
    let zip = {
        use std::io::Write;
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut w = zip::ZipWriter::new(&mut buf);
        w.start_file("pipeline.yaml", zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(WF.as_bytes()).unwrap();
        w.finish().unwrap();
        buf.into_inner()
    };
    let tgz = {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut t = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(IR.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, "pipeline.yaml", IR.as_bytes()).unwrap();
        t.into_inner().unwrap().finish().unwrap()
    };
    let up = "/pipeline/apis/v1beta1/pipelines/upload";
    let (s, v) = e.upload(ADMIN, &format!("{up}?name=zipped"), "p.zip", &zip).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["default_version"]["name"], "zipped");
    assert_eq!(v["parameters"], json!([{"name": "msg", "value": "hi"}]));
    let pid = v["id"].as_str().unwrap().to_owned();
    let (s, v) = e
        .get(U1, &format!("/pipeline/apis/v1beta1/pipelines/{pid}/templates"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["template"], WF);
    let (s, v) = e.upload(ADMIN, &format!("{up}?name=tarred"), "p.tar.gz", &tgz).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = e.upload(ADMIN, &format!("{up}?name=tarred"), "p.tar.gz", &tgz).await;
    assert_eq!((s, v["code"].clone()), (StatusCode::CONFLICT, json!(6)), "{v}");
    // a new version of an existing pipeline
    let (s, v) = e
        .upload(
            ADMIN,
            &format!("/pipeline/apis/v1beta1/pipelines/upload_version?name=v2&pipelineid={pid}"),
            "p.yaml",
            IR.as_bytes(),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = e.get(U1, &format!("/pipeline/apis/v1beta1/pipelines/{pid}")).await;
    assert_eq!(v["default_version"]["name"], "v2");
    // bad packages and bodies: 4xx KFP JSON
    let big = vec![b'a'; 300 * 1024];
    for (name, bytes, want) in [
        ("p.bin", &b"\x00\x01\x02"[..], 400),
        ("p.yaml", b"kind: Pod\n", 400),
        ("p.yaml", b"a: [unclosed", 400),
        ("p.zip", b"PK\x03\x04broken", 400),
        ("p.tgz", b"\x1f\x8bbroken", 400),
        ("p.yaml", &big, 413),
    ] {
        let (s, v) = e.upload(ADMIN, &format!("{up}?name=bad"), name, bytes).await;
        assert_eq!(s.as_u16(), want, "{name}: {v}");
        assert!(v["code"].is_number() && v["details"].is_array(), "{v}");
    }
    for (ct, body) in [
        ("application/json", "{}"),
        ("multipart/form-data", "x"),
        (
            "multipart/form-data; boundary=B",
            "--B\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--B--",
        ),
        ("multipart/form-data; boundary=B", "--B\r\nbroken"),
    ] {
        let req = Request::builder()
            .method(Method::POST)
            .uri(up)
            .header("content-type", ct)
            .body(Body::from(body))
            .unwrap();
        let (s, v) = e.send(Some(ADMIN), req).await;
        assert_eq!(s, 400, "{ct}: {v}");
        assert_eq!(v["code"], 3);
    }
    // URL-based creation is refused (no server-side fetches)
    let (s, _) = e
        .post(
            ADMIN,
            "/pipeline/apis/v1beta1/pipelines",
            json!({"name": "u", "url": {"pipeline_url": "http://169.254.169.254/"}}),
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn bad_input_never_500() {
    let e = env().await;
    let exp = e.experiment_v2(U1, "user1", "e").await;
    let cases: Vec<(Method, String, &str)> = vec![
        (Method::POST, "/pipeline/apis/v1beta1/experiments".into(), "{not json"),
        (Method::POST, "/pipeline/apis/v1beta1/experiments".into(), "[1,2]"),
        (Method::POST, "/pipeline/apis/v1beta1/experiments".into(), r#"{"name": 5}"#),
        (Method::POST, "/pipeline/apis/v1beta1/experiments".into(), r#"{"name":"x","resource_references":[{"key":{"type":"BOGUS","id":"user1"}}]}"#),
        (Method::POST, "/pipeline/apis/v1beta1/experiments".into(), r#"{"name":"x","resource_references":"no"}"#),
        (Method::POST, "/pipeline/apis/v2beta1/runs".into(), r#"{"display_name":"x"}"#),
        (Method::POST, "/pipeline/apis/v2beta1/runs".into(), &*Box::leak(format!(r#"{{"display_name":"x","experiment_id":"{exp}"}}"#).into_boxed_str())),
        (Method::POST, "/pipeline/apis/v2beta1/runs".into(), &*Box::leak(format!(r#"{{"display_name":"x","experiment_id":"{exp}","pipeline_spec":{{"nope":1}}}}"#).into_boxed_str())),
        (Method::POST, "/pipeline/apis/v2beta1/recurringruns".into(), &*Box::leak(format!(r#"{{"display_name":"x","experiment_id":"{exp}","max_concurrency":"99","trigger":{{"cron_schedule":{{"cron":"* * * * * *"}}}}}}"#).into_boxed_str())),
        (Method::POST, "/pipeline/apis/v2beta1/recurringruns".into(), &*Box::leak(format!(r#"{{"display_name":"x","experiment_id":"{exp}","trigger":{{}}}}"#).into_boxed_str())),
        (Method::GET, "/pipeline/apis/v1beta1/experiments?resource_reference_key.type=EXPERIMENT&resource_reference_key.id=x".into(), ""),
        (Method::GET, "/pipeline/apis/v1beta1/experiments?resource_reference_key.type=WHAT&resource_reference_key.id=x".into(), ""),
        (Method::GET, "/pipeline/apis/v2beta1/pipelines/%2e%2e%2f".into(), ""),
        (Method::GET, "/pipeline/apis/v2beta1/experiments/..%2F..%2Fkfp".into(), ""),
        (Method::GET, "/pipeline/apis/v2beta1/experiments?namespace=a%2Fb".into(), ""),
        (Method::POST, "/pipeline/apis/v1beta1/workflows".into(), "{}"),
        (Method::GET, "/pipeline/apis/v9/nothing".into(), ""),
        (Method::PUT, "/pipeline/apis/v2beta1/experiments".into(), ""),
    ];
    for (m, path, body) in cases {
        let req = Request::builder()
            .method(m.clone())
            .uri(&path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let (s, v) = e.send(Some(ADMIN), req).await;
        assert!(s.is_client_error(), "{m} {path} {body}: {s} {v}");
        assert!(v["code"].is_number() && v["message"].is_string(), "{v}");
    }
}

#[tokio::test]
async fn the_persistence_agent_reports_workflows() {
    let e = env().await;
    let exp = e.experiment_v2(U1, "user1", "e").await;
    let (pid, vid) = e.pipeline_v2(U1, "user1", "p").await;
    let run = e.run_v2(U1, &exp, &pid, &vid).await;
    let wf = |phase: &str, ns: &str| {
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
               "metadata": {"name": "p-abc", "namespace": ns, "uid": "u-1", "labels": {"pipeline/runid": run}},
               "status": {"phase": phase, "finishedAt": "2023-11-15T00:00:00Z"}})
    };
    // A user (even the run's owner) may not report.
    let (s, v) = e.post(U1, "/apis/v1beta1/workflows", wf("Succeeded", "user1")).await;
    assert_denied(s, &v, U1, "", "report", "workflows", "");
    // The agent may; grpc-gateway's form (the workflow as a JSON string) works too.
    let (s, v) = e.post(AGENT, "/apis/v1beta1/workflows", wf("Running", "user1")).await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = e.get(U1, &format!("/pipeline/apis/v2beta1/runs/{run}")).await;
    assert_eq!(v["state"], "RUNNING");
    let body = Value::String(wf("Succeeded", "user1").to_string());
    let (s, v) = e.post(AGENT, "/pipeline/apis/v1beta1/workflows", body).await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = e.get(U1, &format!("/pipeline/apis/v2beta1/runs/{run}")).await;
    assert_eq!(v["state"], "SUCCEEDED");
    assert_eq!(v["finished_at"], "2023-11-15T00:00:00Z");
    let states: Vec<&str> = v["state_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["PENDING", "RUNNING", "SUCCEEDED"]);
    let (_, v) = e.get(U1, &format!("/pipeline/apis/v1beta1/runs/{run}")).await;
    assert_eq!(v["run"]["status"], "Succeeded");
    assert!(
        v["pipeline_runtime"]["workflow_manifest"]
            .as_str()
            .unwrap()
            .contains("p-abc")
    );
    // Terminating a finished run is a precondition failure; retry of a succeeded one too.
    let (s, _) = e
        .post(U1, &format!("/pipeline/apis/v2beta1/runs/{run}:terminate"), json!({}))
        .await;
    assert_eq!(s, 400);
    let (s, _) = e
        .post(U1, &format!("/pipeline/apis/v2beta1/runs/{run}:retry"), json!({}))
        .await;
    assert_eq!(s, 400);
    // A failed run can be retried.
    let (s, _) = e.post(AGENT, "/apis/v1beta1/workflows", wf("Error", "user1")).await;
    assert_eq!(s, 200);
    let (s, _) = e
        .post(U1, &format!("/pipeline/apis/v1beta1/runs/{run}/retry"), json!({}))
        .await;
    assert_eq!(s, 200);
    let (_, v) = e.get(U1, &format!("/pipeline/apis/v2beta1/runs/{run}")).await;
    assert_eq!(v["state"], "PENDING");
    // Bad reports.
    let (s, _) = e.post(AGENT, "/apis/v1beta1/workflows", wf("Succeeded", "user2")).await;
    assert_eq!(s, 400, "a workflow cannot move a run of another namespace");
    let mut no_label = wf("Succeeded", "user1");
    no_label["metadata"]["labels"] = json!({});
    let (s, v) = e.post(AGENT, "/apis/v1beta1/workflows", no_label).await;
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("missing the Run ID label"));
    let mut no_uid = wf("Succeeded", "user1");
    no_uid["metadata"]["uid"] = json!("");
    let (s, _) = e.post(AGENT, "/apis/v1beta1/workflows", no_uid).await;
    assert_eq!(s, 400);
    let (s, _) = e.call(AGENT, Method::POST, "/apis/v1beta1/workflows", None).await;
    assert_eq!(s, 400);
    // Scheduled workflows update their job.
    let (s, v) = e
        .post(
            U1,
            "/pipeline/apis/v1beta1/jobs",
            json!({"name": "j", "enabled": true, "max_concurrency": "1",
                   "trigger": {"periodic_schedule": {"interval_second": "3600"}},
                   "pipeline_spec": {"pipeline_id": pid},
                   "resource_references": [{"key": {"type": "EXPERIMENT", "id": exp}, "relationship": "OWNER"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["mode"], "ENABLED");
    assert_eq!(v["trigger"]["periodic_schedule"]["interval_second"], "3600");
    let job = v["id"].as_str().unwrap().to_owned();
    let swf = json!({"metadata": {"name": "j-1", "namespace": "user1", "uid": job},
                     "status": {"conditions": [{"type": "Enabled"}, {"type": "Running"}]}});
    let (s, _) = e.post(U1, "/apis/v1beta1/scheduledworkflows", swf.clone()).await;
    assert_eq!(s, 403);
    let (s, v) = e.post(AGENT, "/apis/v1beta1/scheduledworkflows", swf).await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = e.get(U1, &format!("/pipeline/apis/v1beta1/jobs/{job}")).await;
    assert_eq!(v["status"], "Running");
}

#[tokio::test]
async fn archive_lifecycle_and_deletes() {
    let e = env().await;
    let exp = e.experiment_v2(U1, "user1", "e").await;
    let (pid, vid) = e.pipeline_v2(U1, "user1", "p").await;
    let run = e.run_v2(U1, &exp, &pid, &vid).await;
    let (s, _) = e
        .post(
            U1,
            &format!("/pipeline/apis/v1beta1/experiments/{exp}:archive"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = e.get(U1, &format!("/pipeline/apis/v2beta1/runs/{run}")).await;
    assert_eq!(v["storage_state"], "ARCHIVED");
    let f: String = url::form_urlencoded::byte_serialize(
        br#"{"predicates":[{"key":"storage_state","op":"NOT_EQUALS","string_value":"STORAGESTATE_ARCHIVED"}]}"#,
    )
    .collect();
    let (_, v) = e
        .get(U1, &format!("/pipeline/apis/v1beta1/experiments?resource_reference_key.type=NAMESPACE&resource_reference_key.id=user1&filter={f}"))
        .await;
    assert_eq!(v, json!({}));
    // duplicate names are AlreadyExists
    let (s, v) = e
        .post(
            U1,
            "/pipeline/apis/v2beta1/experiments",
            json!({"display_name": "e", "namespace": "user1"}),
        )
        .await;
    assert_eq!((s, v["code"].clone()), (StatusCode::CONFLICT, json!(6)));
    // v2 pipeline delete refuses while versions exist, unless cascading
    let (s, _) = e
        .call(
            U1,
            Method::DELETE,
            &format!("/pipeline/apis/v2beta1/pipelines/{pid}"),
            None,
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = e
        .call(
            U1,
            Method::DELETE,
            &format!("/pipeline/apis/v2beta1/pipelines/{pid}?cascade=true"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = e.get(U1, &format!("/pipeline/apis/v2beta1/pipelines/{pid}")).await;
    assert_eq!((s, v["code"].clone()), (StatusCode::NOT_FOUND, json!(5)));
    let (s, _) = e
        .call(U1, Method::DELETE, &format!("/pipeline/apis/v2beta1/runs/{run}"), None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = e
        .call(
            U1,
            Method::DELETE,
            &format!("/pipeline/apis/v1beta1/experiments/{exp}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = e.get(U1, &format!("/pipeline/apis/v1beta1/experiments/{exp}")).await;
    assert_eq!(s, 404);
    // the name is free again
    e.experiment_v2(U1, "user1", "e").await;
}

#[tokio::test]
async fn namespace_listing_reads_only_its_prefix() {
    let e = env().await;
    for ns in ["user1", "user10", "user2"] {
        let who = if ns == "user2" { U2 } else { ADMIN };
        e.experiment_v2(who, ns, "same-name").await;
    }
    let (_, v) = e.get(U1, "/pipeline/apis/v2beta1/experiments?namespace=user1").await;
    assert_eq!(v["total_size"], 1, "user10 must not leak into user1: {v}");
}

#[tokio::test]
async fn routes_merge_with_a_kubernetes_catch_all() {
    let e = env().await;
    let k8s = Router::new().route(
        "/apis/{*rest}",
        axum::routing::any(|| async { (StatusCode::IM_A_TEAPOT, "k8s") }),
    );
    let merged = e.router.clone().merge(k8s);
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/apis/v1beta1/workflows")
        .body(Body::from("{}"))
        .unwrap();
    req.extensions_mut().insert(Identity::new(AGENT, vec![]));
    let resp = merged.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 400, "the report path reaches kfp");
    let req = Request::builder()
        .uri("/apis/apps/v1/deployments")
        .body(Body::empty())
        .unwrap();
    assert_eq!(merged.oneshot(req).await.unwrap().status(), StatusCode::IM_A_TEAPOT);
}

/// Uploads are authorized from the path and the query before a byte of the body is read: a body
/// that never ends still gets its 403 (or 404 for a missing parent) at once.
#[tokio::test]
async fn unauthorised_uploads_are_refused_before_the_body_is_read() {
    let e = env().await;
    let (pid, _) = e.pipeline_v2(U1, "user1", "mine").await;
    for (path, want) in [
        (
            "/pipeline/apis/v2beta1/pipelines/upload?name=p&namespace=user1".to_owned(),
            403,
        ),
        (
            "/pipeline/apis/v1beta1/pipelines/upload?name=p&namespace=user1".to_owned(),
            403,
        ),
        (
            format!("/pipeline/apis/v2beta1/pipelines/upload_version?pipelineid={pid}&name=v"),
            403,
        ),
        (format!("/pipeline/apis/v2beta1/pipelines/{pid}/versions"), 403),
        (
            "/pipeline/apis/v2beta1/pipelines/upload_version?pipelineid=nope&name=v".to_owned(),
            404,
        ),
        ("/pipeline/apis/v2beta1/pipelines/upload_version?name=v".to_owned(), 400),
        ("/apis/v1beta1/workflows".to_owned(), 403),
        ("/pipeline/apis/v1beta1/scheduledworkflows".to_owned(), 403),
    ] {
        // A real socket: the request head announces 100 MB that never come.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = e.router.clone().layer(axum::middleware::from_fn(
            |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
                req.extensions_mut().insert(Identity::new(U2, vec![]));
                next.run(req).await
            },
        ));
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: multipart/form-data; boundary=B\r\ncontent-length: 100000000\r\n\r\n--B\r\n"
        );
        tokio::io::AsyncWriteExt::write_all(&mut c, head.as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut c, &mut buf),
        )
        .await
        .unwrap_or_else(|_| panic!("{path}: the body was awaited before authorization"))
        .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with(&format!("HTTP/1.1 {want} ")), "{path}: {text}");
        server.abort();
    }
}

/// The per-namespace package quota: count and bytes, shared pipelines as one namespace, freed by
/// deletion; over it, KFP's error JSON with ResourceExhausted (8, HTTP 429).
#[tokio::test]
async fn package_quota_per_namespace() {
    let e = env_with(KfpSettings {
        max_packages_per_namespace: 2,
        max_package_bytes_per_namespace: 2 * IR.len() as u64 + 10,
        ..KfpSettings::default()
    })
    .await;
    let (p1, _) = e.pipeline_v2(U1, "user1", "a").await;
    e.pipeline_v2(U1, "user1", "b").await;
    let (s, v) = e
        .upload(
            U1,
            "/pipeline/apis/v2beta1/pipelines/upload?name=c&namespace=user1",
            "p.yaml",
            IR.as_bytes(),
        )
        .await;
    assert_eq!(s.as_u16(), 429, "{v}");
    assert_eq!(v["code"], 8);
    assert!(
        v["message"].as_str().unwrap().contains("quota of namespace user1"),
        "{v}"
    );
    // the refused upload left nothing behind
    let (_, v) = e.get(U1, "/pipeline/apis/v2beta1/pipelines?namespace=user1").await;
    assert_eq!(v["total_size"], 2, "{v}");
    // other namespaces and shared pipelines have their own budget
    e.pipeline_v2(U2, "user2", "a").await;
    e.pipeline_v2(U1, "", "shared-a").await;
    // bytes: a package bigger than the whole budget
    let big = format!("{IR}# {}\n", "x".repeat(3 * IR.len()));
    let (s, v) = e
        .upload(
            U1,
            "/pipeline/apis/v2beta1/pipelines/upload?name=big",
            "p.yaml",
            big.as_bytes(),
        )
        .await;
    assert_eq!(s.as_u16(), 429, "{v}");
    // deleting frees the quota
    let (s, _) = e
        .call(
            U1,
            Method::DELETE,
            &format!("/pipeline/apis/v2beta1/pipelines/{p1}?cascade=true"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    e.pipeline_v2(U1, "user1", "c").await;
}

/// Issue 10: a storage failure is KFP's Internal error with a generic message and an incident id
/// (the cause is logged under the same id), never the store's text.
#[tokio::test]
async fn store_failures_are_internal_errors_with_an_incident_id_and_no_internal_text() {
    use kfsec_store::flaky::Flaky;
    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let memory = MemoryStore::new(clock.clone());
    let store = Flaky::new(memory.clone());
    let e = env_on(store.clone(), memory, clock, KfpSettings::default()).await;
    store.fail(true);
    let mut ids = Vec::new();
    for (s, v) in [
        e.get(
            U1,
            "/pipeline/apis/v1beta1/experiments?resource_reference_key.type=NAMESPACE&resource_reference_key.id=user1",
        )
        .await,
        e.post(
            U1,
            "/pipeline/apis/v2beta1/experiments",
            json!({"display_name": "e", "namespace": "user1"}),
        )
        .await,
    ] {
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
        assert_eq!(v["code"], 13, "{v}");
        let text = v.to_string();
        for leak in ["redb", "I/O", "/var/lib", "page 7", "storage"] {
            assert!(!text.contains(leak), "leaks {leak:?}: {text}");
        }
        let message = v["message"].as_str().unwrap();
        let id = kfsec_types::Incident::quoted_in(message).unwrap_or_else(|| panic!("no incident id: {message}"));
        assert_eq!(v["details"][0]["message"], message, "{v}");
        ids.push(id.to_owned());
    }
    assert_ne!(ids[0], ids[1]);
}

/// Rewrites the stored record of pipeline `pid` (scope `ns`) with `edit` — what an older kfsec
/// stored, or a creator set by hand.
async fn edit_stored_pipeline(e: &Env, ns: &str, pid: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let key = crate::storage::object_key(crate::storage::Kind::Pipeline, ns, pid);
    let kv = e.store.get(&key).await.unwrap().expect("stored pipeline");
    let mut v: Value = serde_json::from_slice(&kv.value).unwrap();
    edit(v.as_object_mut().unwrap());
    e.store.put(&key, serde_json::to_vec(&v).unwrap(), None).await.unwrap();
}

/// kfsec's owner rule for shared pipelines: the user who uploaded one may add versions (kfp
/// 1.8's `upload_pipeline_version`, and the v1/v2 JSON create), choose the default version,
/// delete versions and the pipeline; anyone else needs the verb on `pipelines` in the system
/// namespace (KFP 2.17's `canAccessPipeline`), which the admin has; a pipeline stored without a
/// creator has no owner; namespaced pipelines keep KFP's namespace rule.
#[tokio::test]
async fn shared_pipeline_owner_rule() {
    let e = env().await;
    let v1 = "/pipeline/apis/v1beta1";
    let v2 = "/pipeline/apis/v2beta1";
    // user1 publishes a shared pipeline the kfp 1.8 way (no namespace).
    let (s, v) = e
        .upload(U1, &format!("{v1}/pipelines/upload?name=mine"), "p.yaml", IR.as_bytes())
        .await;
    assert_eq!(s, 200, "{v}");
    let pid = v["id"].as_str().unwrap().to_owned();
    assert!(
        v.get("created_by").is_none(),
        "kfsec's creator is not part of KFP's wire format: {v}"
    );
    let upload_version = |who: &'static str, name: &'static str| {
        let path = format!("{v1}/pipelines/upload_version?name={name}&pipelineid={pid}");
        let e = &e;
        async move { e.upload(who, &path, "p.yaml", IR.as_bytes()).await }
    };
    // The owner adds versions: multipart (kfp 1.8) and JSON (v2, v1).
    let (s, v) = upload_version(U1, "v2").await;
    assert_eq!(s, 200, "{v}");
    let owner_vid = v["id"].as_str().unwrap().to_owned();
    assert_eq!(v["resource_references"][0]["key"]["id"], pid.as_str(), "{v}");
    let spec: Value = serde_saphyr::from_str(IR).unwrap();
    let (s, v) = e
        .post(
            U1,
            &format!("{v2}/pipelines/{pid}/versions"),
            json!({"display_name": "v3", "pipeline_spec": spec}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let v1_version = |name: &str| {
        json!({"name": name, "pipeline_spec": spec,
               "resource_references": [{"key": {"type": "PIPELINE", "id": pid}, "relationship": "OWNER"}]})
    };
    let (s, v) = e.post(U1, &format!("{v1}/pipeline_versions"), v1_version("v4")).await;
    assert_eq!(s, 200, "{v}");
    // The new version is the default (what `run_pipeline(pipeline_id=…)` runs).
    let (_, v) = e.get(U2, &format!("{v1}/pipelines/{pid}")).await;
    assert_eq!(v["default_version"]["name"], "v4", "{v}");
    // Another user is refused on every write, with KFP's text for the system namespace; the
    // user name is compared exactly (another spelling is another user).
    for who in [U2, VIEWER, "User1@example.com", "user1@example.com "] {
        let (s, v) = upload_version(who, "evil").await;
        assert_denied(s, &v, who, "kubeflow", "create", "pipelines", "mine");
        let (s, v) = e
            .post(
                who,
                &format!("{v2}/pipelines/{pid}/versions"),
                json!({"display_name": "evil", "pipeline_spec": spec}),
            )
            .await;
        assert_denied(s, &v, who, "kubeflow", "create", "pipelines", "mine");
        let (s, v) = e
            .post(who, &format!("{v1}/pipeline_versions"), v1_version("evil"))
            .await;
        assert_denied(s, &v, who, "kubeflow", "create", "pipelines", "mine");
        let (s, v) = e
            .post(
                who,
                &format!("{v1}/pipelines/{pid}/default_version/{owner_vid}"),
                json!({}),
            )
            .await;
        assert_denied(s, &v, who, "kubeflow", "update", "pipelines", "mine");
        let (s, v) = e
            .call(
                who,
                Method::DELETE,
                &format!("{v1}/pipeline_versions/{owner_vid}"),
                None,
            )
            .await;
        assert_denied(s, &v, who, "kubeflow", "delete", "pipelines", "mine");
        let (s, v) = e
            .call(who, Method::DELETE, &format!("{v1}/pipelines/{pid}"), None)
            .await;
        assert_denied(s, &v, who, "kubeflow", "delete", "pipelines", "mine");
    }
    let (_, v) = e
        .get(
            U2,
            &format!("{v1}/pipeline_versions?resource_key.type=PIPELINE&resource_key.id={pid}"),
        )
        .await;
    assert_eq!(v["total_size"], 4, "a refused write left a version: {v}");
    // The admin (rights in the system namespace) may add versions too.
    let (s, v) = upload_version(ADMIN, "by-admin").await;
    assert_eq!(s, 200, "{v}");
    // The owner sets the default, deletes a version, then the pipeline.
    let (s, v) = e
        .post(
            U1,
            &format!("{v1}/pipelines/{pid}/default_version/{owner_vid}"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = e.get(U2, &format!("{v1}/pipelines/{pid}")).await;
    assert_eq!(v["default_version"]["id"], owner_vid.as_str(), "{v}");
    let (s, v) = e
        .call(U1, Method::DELETE, &format!("{v1}/pipeline_versions/{owner_vid}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = e.call(U1, Method::DELETE, &format!("{v1}/pipelines/{pid}"), None).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = e.get(U1, &format!("{v1}/pipelines/{pid}")).await;
    assert_eq!(s, 404);

    // A shared pipeline stored before kfsec recorded creators has no owner: as before, only the
    // system namespace's right counts (its uploader is refused, the admin is not).
    let (s, v) = e
        .upload(U1, &format!("{v1}/pipelines/upload?name=old"), "p.yaml", IR.as_bytes())
        .await;
    assert_eq!(s, 200, "{v}");
    let old = v["id"].as_str().unwrap().to_owned();
    edit_stored_pipeline(&e, "", &old, |m| {
        assert_eq!(m.remove("created_by"), Some(json!(U1)));
    })
    .await;
    let path = format!("{v1}/pipelines/upload_version?name=later&pipelineid={old}");
    let (s, v) = e.upload(U1, &path, "p.yaml", IR.as_bytes()).await;
    assert_denied(s, &v, U1, "kubeflow", "create", "pipelines", "old");
    let (s, v) = e.upload(ADMIN, &path, "p.yaml", IR.as_bytes()).await;
    assert_eq!(s, 200, "{v}");
    // An empty creator is no owner either (an empty user name never reaches a handler anyway).
    edit_stored_pipeline(&e, "", &old, |m| {
        m.insert("created_by".into(), json!(""));
    })
    .await;
    let (s, v) = e.call(U1, Method::DELETE, &format!("{v1}/pipelines/{old}"), None).await;
    assert_denied(s, &v, U1, "kubeflow", "delete", "pipelines", "old");

    // Namespaced pipelines: the creator counts for nothing, the namespace's RBAC decides.
    let (npid, _) = e.pipeline_v2(U1, "user1", "private").await;
    edit_stored_pipeline(&e, "user1", &npid, |m| {
        m.insert("created_by".into(), json!(VIEWER));
    })
    .await;
    let (s, v) = e
        .upload(
            VIEWER,
            &format!("{v1}/pipelines/upload_version?name=x&pipelineid={npid}"),
            "p.yaml",
            IR.as_bytes(),
        )
        .await;
    assert_denied(s, &v, VIEWER, "user1", "create", "pipelines", "private");
}

/// Sends `req` as `who` with an audit context and returns the status and the request's Event.
async fn audited(e: &Env, who: &str, mut req: Request<Body>) -> (StatusCode, kfsec_audit::Event) {
    let cap = kfsec_audit::testing::Capture::metadata();
    let clock: Arc<dyn kfsec_types::Clock> = e.clock.clone();
    let begin = kfsec_audit::request::Begin {
        audit_id: "a".into(),
        method: req.method().clone(),
        request_uri: req.uri().to_string(),
        source_ips: vec![].into(),
        user_agent: None,
    };
    let ctx = kfsec_audit::RequestAudit::begin(&cap.auditor(), &clock, begin).unwrap();
    req.extensions_mut().insert(ctx.clone());
    let (status, _) = e.send(Some(who), req).await;
    ctx.complete(status.as_u16());
    (status, cap.take().pop().unwrap())
}

fn json_req(method: Method, path: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn audit_events_carry_kfps_question_and_decision() {
    let e = env().await;
    let body = json!({"display_name": "exp", "namespace": "user1"});
    let (s, ev) = audited(
        &e,
        U1,
        json_req(Method::POST, "/pipeline/apis/v2beta1/experiments", &body),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(ev.verb, "create");
    let o = ev.object_ref.unwrap();
    assert_eq!(o.api_group.as_deref(), Some("pipelines.kubeflow.org"));
    assert_eq!(o.api_version.as_deref(), Some("v1beta1"));
    assert_eq!(
        (o.resource.as_deref(), o.namespace.as_deref(), o.name.as_deref()),
        (Some("experiments"), Some("user1"), Some("exp"))
    );
    assert!(o.uid.is_some(), "the new experiment's id");
    assert_eq!(ev.annotations["authorization.k8s.io/decision"], "allow");
    assert_eq!(ev.annotations["authorization.k8s.io/reason"], "test");
    // Another user's namespace: forbid, no reason, KFP's 403.
    let (s, ev) = audited(
        &e,
        U2,
        json_req(Method::POST, "/pipeline/apis/v2beta1/experiments", &body),
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(ev.verb, "create");
    assert_eq!(ev.object_ref.unwrap().namespace.as_deref(), Some("user1"));
    assert_eq!(ev.annotations["authorization.k8s.io/decision"], "forbid");
    assert!(!ev.annotations.contains_key("authorization.k8s.io/reason"));
    assert_eq!(ev.response_status.unwrap().code, 403);
    // A run by id: the object's namespace and the id as uid.
    let exp = e.experiment_v2(U1, "user1", "e2").await;
    let (pid, vid) = e.pipeline_v2(U1, "user1", "p").await;
    let run = json!({"display_name": "r", "experiment_id": exp,
        "pipeline_version_reference": {"pipeline_id": pid, "pipeline_version_id": vid}});
    let (s, v) = e.post(U1, "/pipeline/apis/v2beta1/runs", run).await;
    assert_eq!(s, 200, "{v}");
    let id = v["run_id"].as_str().unwrap().to_owned();
    let get = Request::builder()
        .uri(format!("/pipeline/apis/v2beta1/runs/{id}"))
        .body(Body::empty())
        .unwrap();
    let (s, ev) = audited(&e, VIEWER, get).await;
    assert_eq!(s, 200);
    let o = ev.object_ref.unwrap();
    assert_eq!(
        (ev.verb.as_str(), o.resource.as_deref(), o.uid.as_deref()),
        ("get", Some("runs"), Some(id.as_str()))
    );
    // A shared pipeline upload is open: allowed without RBAC, and says so.
    let mut body = b"--B\r\nContent-Disposition: form-data; name=\"uploadfile\"; filename=\"p.yaml\"\r\n\r\n".to_vec();
    body.extend_from_slice(IR.as_bytes());
    body.extend_from_slice(b"\r\n--B--\r\n");
    let up = Request::builder()
        .method(Method::POST)
        .uri("/pipeline/apis/v2beta1/pipelines/upload?name=shared")
        .header("content-type", "multipart/form-data; boundary=B")
        .body(Body::from(body))
        .unwrap();
    let (s, ev) = audited(&e, U2, up).await;
    assert_eq!(s, 200);
    let o = ev.object_ref.unwrap();
    assert_eq!(
        (o.resource.as_deref(), o.namespace.as_deref(), o.name.as_deref()),
        (Some("pipelines"), None, Some("shared"))
    );
    assert!(o.uid.is_some());
    assert!(ev.annotations["authorization.k8s.io/reason"].starts_with("kfp: shared pipelines may be uploaded"));
}

/// Every key under `/kfp/`.
async fn kfp_keys(e: &Env) -> Vec<String> {
    let all = kfsec_store::list_all(e.store.as_ref(), "/kfp/").await.unwrap();
    all.items.into_iter().map(|kv| kv.key).collect()
}

/// A namespace's Pipelines data goes with it (`kfsec_api::NamespaceData`, asked before a
/// Namespace is deleted): every object, index entry, name claim and blob, so a later namespace
/// of the same name, perhaps another user's, starts empty; `user10` and shared pipelines stay.
#[tokio::test]
async fn a_namespaces_data_is_purged_with_it() {
    use kfsec_api::NamespaceData as _;
    let e = env().await;
    let exp = e.experiment_v2(U1, "user1", "e").await;
    let (pid, vid) = e.pipeline_v2(U1, "user1", "p").await;
    let (spid, svid) = e.pipeline_v2(ADMIN, "", "shared").await;
    let run = e.run_v2(U1, &exp, &pid, &vid).await;
    let wf = json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
        "metadata": {"name": "p-abc", "namespace": "user1", "uid": "u-1", "labels": {"pipeline/runid": run}},
        "status": {"phase": "Running"}});
    let (s, v) = e.post(AGENT, "/apis/v1beta1/workflows", wf).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = e
        .post(
            U1,
            "/pipeline/apis/v2beta1/recurringruns",
            json!({"display_name": "nightly", "experiment_id": exp,
                   "trigger": {"cron_schedule": {"cron": "0 0 * * * *"}},
                   "pipeline_version_reference": {"pipeline_id": spid, "pipeline_version_id": svid}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let job = v["recurring_run_id"].as_str().unwrap().to_owned();
    let neighbour = e.experiment_v2(ADMIN, "user10", "e").await;

    let before = kfp_keys(&e).await;
    let gone = [&exp, &pid, &vid, &run, &job];
    for id in gone {
        assert!(before.iter().any(|k| k.contains(id.as_str())), "{id}: {before:#?}");
    }
    for blob in [
        format!("/kfp/specs/{run}"),
        format!("/kfp/runtime/{run}"),
        format!("/kfp/specs/{job}"),
        format!("/kfp/packages/{vid}"),
    ] {
        assert!(before.contains(&blob), "{blob}: {before:#?}");
    }

    e.kfp.purge_namespace("user1").await.unwrap();
    let after = kfp_keys(&e).await;
    for id in gone {
        assert!(
            !after.iter().any(|k| k.contains(id.as_str())),
            "{id} is left: {after:#?}"
        );
    }
    assert!(!after.iter().any(|k| k.contains("/user1/")), "{after:#?}");
    for id in [&neighbour, &spid, &svid] {
        assert!(
            after.iter().any(|k| k.contains(id.as_str())),
            "{id} went too: {after:#?}"
        );
    }
    let (s, _) = e.get(U1, &format!("/pipeline/apis/v2beta1/runs/{run}")).await;
    assert_eq!(s, 404);
    let (s, v) = e.get(U1, "/pipeline/apis/v2beta1/experiments?namespace=user1").await;
    assert_eq!((s, v), (StatusCode::OK, json!({})));
    // The names are free again; a second purge finds nothing and succeeds.
    e.experiment_v2(U1, "user1", "e").await;
    e.pipeline_v2(U1, "user1", "p").await;
    e.kfp.purge_namespace("user10").await.unwrap();
    e.kfp.purge_namespace("user10").await.unwrap();
    let (_, v) = e
        .get(ADMIN, "/pipeline/apis/v2beta1/experiments?namespace=user10")
        .await;
    assert_eq!(v, json!({}));
    let (_, v) = e.get(U1, "/pipeline/apis/v2beta1/experiments?namespace=user1").await;
    assert_eq!(v["total_size"], 1, "{v}");
}
