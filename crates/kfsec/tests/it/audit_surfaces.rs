//! What each surface tells the audit log (`<dataDir>/audit/audit.log`, on by default), driven
//! by real clients: kubectl 1.32's refused and allowed calls (verb, objectRef, the 403, the
//! decision and RBAC's reason text, uid/resourceVersion of the write, the request body — never a
//! Secret's), a watch, KFAM contributor changes (Events on `rolebindings` in the workspace
//! namespace, the owner's reason, another user's refusal), a KFP experiment create
//! (`pipelines.kubeflow.org`), the dashboard API, and an AdmissionReview on the webhook listener
//! (the calling API server's certificate as user, the reviewed object, the webhook's verdict).

use serde_json::Value;

use crate::audit_events::audit_log;
use crate::harness::*;
use crate::kube_clients::user_kubectl;
use crate::rbac::Kubectl;

const USER2: &str = "test.user2@example.org";
const PASSWORD2: &str = "user2 password here";

/// The last Event of the request `verb` on `resource` by `user` (checkpoints excluded), with
/// its stage `ResponseComplete`.
fn event<'a>(events: &'a [Value], user: &str, verb: &str, resource: &str) -> &'a Value {
    events
        .iter()
        .rev()
        .find(|e| {
            e["user"]["username"] == user
                && e["verb"] == verb
                && e["objectRef"]["resource"] == resource
                && e["stage"] == "ResponseComplete"
        })
        .unwrap_or_else(|| panic!("no {verb} {resource} Event of {user}"))
}

fn annotation<'a>(e: &'a Value, key: &str) -> &'a str {
    e["annotations"][key].as_str().unwrap_or_default()
}

fn decision(e: &Value) -> (&str, &str) {
    (
        annotation(e, "authorization.k8s.io/decision"),
        annotation(e, "authorization.k8s.io/reason"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_calls_leave_their_verb_object_and_decision() {
    let k = Kfsec::start("bearerAudiences: [rp-test]\noauth2:\n  passwordConnector: local\n").await;
    let admin = Kubectl::new(k._dir.path());
    let tmp = tempfile::tempdir().unwrap();
    let user = user_kubectl(&k, tmp.path()).await;
    assert_eq!(admin.run(&["create", "namespace", "team"], None).await.0, 0);

    // Refused: kubectl's Forbidden line, and an Event with the 403 and `forbid`.
    let (code, _, err) = user.run(&["get", "configmaps", "-n", "team"], None).await;
    assert_eq!(code, 1);
    assert!(err.contains("Forbidden"), "{err}");
    let (events, _) = audit_log(&k).await;
    let e = event(&events, USER, "list", "configmaps");
    eprintln!("denied kubectl call: {e}");
    assert_eq!(e["objectRef"]["namespace"], "team");
    assert_eq!(e["objectRef"]["apiVersion"], "v1");
    assert!(e["objectRef"].get("apiGroup").is_none(), "the core group is omitted");
    assert_eq!(e["responseStatus"]["code"], 403);
    assert_eq!(e["responseStatus"]["reason"], "Forbidden");
    assert_eq!(decision(e), ("forbid", ""));
    assert!(
        e["user"]["groups"]
            .as_array()
            .unwrap()
            .contains(&"system:authenticated".into())
    );
    assert!(e["userAgent"].as_str().unwrap().starts_with("kubectl/"));

    // Allowed by a RoleBinding: RBAC's reason text; the write's uid and resourceVersion; the
    // body (Request level for writes, by default).
    for args in [
        vec![
            "create",
            "role",
            "writer",
            "-n",
            "team",
            "--verb=create,get,list,watch",
            "--resource=configmaps,secrets",
        ],
        vec![
            "create",
            "rolebinding",
            "writer",
            "-n",
            "team",
            "--role=writer",
            &format!("--user={USER}"),
        ],
    ] {
        let (code, out, err) = admin.run(&args, None).await;
        assert_eq!(code, 0, "{out}{err}");
    }
    let mut allowed = false;
    for _ in 0..50 {
        let (code, _, _) = user
            .run(
                &[
                    "create",
                    "configmap",
                    "settings",
                    "-n",
                    "team",
                    "--from-literal=color=blue",
                ],
                None,
            )
            .await;
        if code == 0 {
            allowed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(allowed, "the RoleBinding takes effect");
    let (events, _) = audit_log(&k).await;
    let e = event(&events, USER, "create", "configmaps");
    eprintln!("allowed kubectl create: {e}");
    assert_eq!(e["responseStatus"]["code"], 201);
    assert_eq!(
        decision(e),
        (
            "allow",
            r#"RBAC: allowed by RoleBinding "writer/team" of Role "writer" to User "test.user1@example.org""#
        )
    );
    assert_eq!(e["objectRef"]["name"], "settings");
    assert!(e["objectRef"]["uid"].as_str().is_some_and(|u| !u.is_empty()), "{e}");
    assert!(e["objectRef"]["resourceVersion"].as_str().is_some(), "{e}");
    assert_eq!(e["level"], "Request");
    assert_eq!(e["requestObject"]["data"]["color"], "blue");

    // A Secret: recorded, never its body.
    let (code, _, err) = user
        .run(
            &[
                "create",
                "secret",
                "generic",
                "creds",
                "-n",
                "team",
                "--from-literal=password=Sup3r-s3cret-v4lue",
            ],
            None,
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let (events, text) = audit_log(&k).await;
    let e = event(&events, USER, "create", "secrets");
    assert_eq!(e["responseStatus"]["code"], 201);
    assert_eq!(decision(e).0, "allow");
    assert!(e.get("requestObject").is_none(), "{e}");
    assert!(!text.contains("Sup3r-s3cret-v4lue"));
    // base64 of the value, as a Secret's `data` would carry it
    assert!(!text.contains("U3VwM3ItczNjcmV0LXY0bHVl"));

    // Impersonation: the admin acting as the user — both recorded.
    let (code, _, err) = admin
        .run(&["get", "configmap", "settings", "-n", "team", "--as", USER], None)
        .await;
    assert_eq!(code, 0, "{err}");
    let (events, _) = audit_log(&k).await;
    let e = events
        .iter()
        .rev()
        .find(|e| e["verb"] == "get" && e["objectRef"]["name"] == "settings")
        .unwrap();
    assert_eq!(e["impersonatedUser"]["username"], USER);
    assert_ne!(e["user"]["username"], USER);
    assert_eq!(decision(e).0, "allow");

    // A watch: ResponseStarted at the headers, ResponseComplete when it ends.
    let token = password_id_token(&k, USER, PASSWORD).await;
    let r = http_client(&k.running.ca_pem)
        .get(format!(
            "{}/api/v1/namespaces/team/configmaps?watch=1&timeoutSeconds=1",
            k.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let audit_id = r.headers()["audit-id"].to_str().unwrap().to_owned();
    let _ = r.text().await;
    let (events, _) = audit_log(&k).await;
    let stages: Vec<&Value> = events
        .iter()
        .filter(|e| e["auditID"] == audit_id.as_str())
        .map(|e| &e["stage"])
        .collect();
    assert_eq!(stages, ["ResponseStarted", "ResponseComplete"]);
    let e = events.iter().rfind(|e| e["auditID"] == audit_id.as_str()).unwrap();
    assert_eq!((e["verb"].as_str(), decision(e).0), (Some("watch"), "allow"));
    k.running.shutdown().await;
}

const PROFILE: &str = "apiVersion: kubeflow.org/v1
kind: Profile
metadata:
  name: user1
spec:
  owner:
    kind: User
    name: test.user1@example.org
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kfam_dashboard_and_kfp_requests_leave_events() {
    let k = Kfsec::start("").await;
    k.add_user(USER2, PASSWORD2).await;
    let kc = Kubectl::new(k._dir.path());
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(PROFILE)).await;
    assert_eq!(code, 0, "{err}");
    eventually(|| async {
        kc.run(&["get", "rolebinding", "namespaceAdmin", "-n", "user1"], None)
            .await
            .0
            == 0
    })
    .await;
    let mut owner = k.client();
    assert_eq!(owner.login("/", USER, PASSWORD).await.0.status(), 200);
    let mut other = k.client();
    assert_eq!(other.login("/", USER2, PASSWORD2).await.0.status(), 200);
    let binding = serde_json::json!({
        "user": {"kind": "User", "name": USER2},
        "referredNamespace": "user1",
        "RoleRef": {"kind": "ClusterRole", "name": "edit"},
    });

    // KFAM: user2 may not add themselves; the owner may.
    let r = other
        .send(other.http.post(other.url("/kfam/v1/bindings")).json(&binding))
        .await;
    assert_eq!(r.status(), 403);
    let r = owner
        .send(owner.http.post(owner.url("/kfam/v1/bindings")).json(&binding))
        .await;
    assert_eq!(r.status(), 200);
    let (events, _) = audit_log(&k).await;
    let refused = event(&events, USER2, "create", "rolebindings");
    assert_eq!(decision(refused), ("forbid", ""));
    assert_eq!(refused["responseStatus"]["code"], 403);
    let e = event(&events, USER, "create", "rolebindings");
    eprintln!("KFAM contributor add: {e}");
    assert_eq!(e["objectRef"]["apiGroup"], "rbac.authorization.k8s.io");
    assert_eq!(e["objectRef"]["apiVersion"], "v1");
    assert_eq!(e["objectRef"]["namespace"], "user1");
    assert_eq!(e["objectRef"]["name"], "user-test-user2-example-org-clusterrole-edit");
    assert!(e["objectRef"]["uid"].as_str().is_some(), "{e}");
    assert_eq!(e["requestURI"], "/kfam/v1/bindings");
    assert_eq!(e["responseStatus"]["code"], 200);
    assert_eq!(
        decision(e),
        ("allow", r#"KFAM: allowed as the owner of Profile "user1""#)
    );

    // The dashboard API: removing the contributor is a delete of the same binding.
    let r = owner
        .send(
            owner
                .http
                .delete(owner.url("/api/workgroup/remove-contributor/user1"))
                .json(&serde_json::json!({"contributor": USER2})),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    // … and the activities of a namespace are a list of its events, decided by RBAC.
    let r = other.send(other.http.get(other.url("/api/activities/user1"))).await;
    assert_eq!(r.status(), 403);
    let (events, _) = audit_log(&k).await;
    let e = event(&events, USER, "delete", "rolebindings");
    assert_eq!(e["objectRef"]["name"], "user-test-user2-example-org-clusterrole-edit");
    assert_eq!(e["requestURI"], "/api/workgroup/remove-contributor/user1");
    assert_eq!(decision(e).0, "allow");
    let e = event(&events, USER2, "list", "events");
    assert_eq!(
        (e["objectRef"]["namespace"].as_str(), decision(e).0),
        (Some("user1"), "forbid")
    );

    // KFP: an experiment created in the owner's namespace.
    let r = owner
        .send(
            owner
                .http
                .post(owner.url("/pipeline/apis/v2beta1/experiments"))
                .json(&serde_json::json!({"display_name": "audited", "namespace": "user1"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["experiment_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (events, _) = audit_log(&k).await;
    let e = event(&events, USER, "create", "experiments");
    eprintln!("KFP experiment create: {e}");
    assert_eq!(e["objectRef"]["apiGroup"], "pipelines.kubeflow.org");
    assert_eq!(e["objectRef"]["apiVersion"], "v1beta1");
    assert_eq!(e["objectRef"]["namespace"], "user1");
    assert_eq!(e["objectRef"]["name"], "audited");
    assert_eq!(e["objectRef"]["uid"], id.as_str());
    let (d, reason) = decision(e);
    assert_eq!(d, "allow");
    assert!(
        reason.starts_with(r#"RBAC: allowed by RoleBinding "namespaceAdmin/user1""#),
        "{reason}"
    );
    // kfsec's Pipelines page of it: the page's Event names the experiment KFP's check read.
    let r = owner.get(&format!("/pipeline/experiments/details/{id}")).await;
    assert_eq!(r.status(), 200);
    let (events, _) = audit_log(&k).await;
    let e = event(&events, USER, "get", "experiments");
    assert_eq!(
        e["requestURI"].as_str(),
        Some(format!("/pipeline/experiments/details/{id}").as_str())
    );
    assert_eq!(
        (e["objectRef"]["uid"].as_str(), decision(e).0),
        (Some(id.as_str()), "allow")
    );
    // … and user2 may not read it.
    let r = other
        .send(
            other
                .http
                .get(other.url(&format!("/pipeline/apis/v2beta1/experiments/{id}"))),
        )
        .await;
    assert_eq!(r.status(), 403);
    let (events, _) = audit_log(&k).await;
    let e = event(&events, USER2, "get", "experiments");
    assert_eq!(decision(e), ("forbid", ""));
    assert_eq!(e["responseStatus"]["code"], 403);
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_reviews_leave_an_event_naming_the_caller_and_the_verdict() {
    use crate::sec_webhooks::{add_poddefault, client, issue_client_cert, review, url};
    let k = Kfsec::start("webhooks:\n  clientAuth:\n    allowedNames: [kube-apiserver]\n").await;
    add_poddefault(&k, 1, 8).await;
    let certs = tempfile::tempdir().unwrap();
    let apiserver = issue_client_cert(k._dir.path(), "kube-apiserver", certs.path());
    let r = client(&k, Some(&apiserver))
        .post(url(&k))
        .header("audit-id", "apiserver-call-1")
        .json(&review(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["audit-id"], "apiserver-call-1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    // Not an AdmissionReview: a non-resource post answered 400. A secret in its query is
    // recorded as REDACTED, as on the front door.
    let r = client(&k, Some(&apiserver))
        .post(format!("{}?timeout=10s&token=s3cr3t", url(&k)))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let bad_id = r.headers()["audit-id"].to_str().unwrap().to_owned();

    // The same webhook in-process, on a write through kfsec's own API: kube-apiserver's
    // mutation annotation on the write's Event.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: q\n  namespace: team\n  labels:\n    add-env: \"true\"\nspec:\n  containers:\n  - name: c\n    image: x\n";
    let admin = crate::rbac::Kubectl::new(k._dir.path());
    let label = [
        "label",
        "namespace",
        "team",
        "app.kubernetes.io/part-of=kubeflow-profile",
    ];
    assert_eq!(admin.run(&label, None).await.0, 0, "the webhook's namespaceSelector");
    let (code, _, err) = admin.run(&["create", "-f", "-"], Some(pod)).await;
    assert_eq!(code, 0, "{err}");

    let (events, _) = audit_log(&k).await;
    let e = events
        .iter()
        .rfind(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "pods" && e["objectRef"]["name"] == "q")
        .unwrap();
    let mutation = e["annotations"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(key, _)| key.starts_with("mutation.webhook.admission.k8s.io/round_0_index_"))
        .map(|(_, v)| serde_json::from_str::<Value>(v.as_str().unwrap()).unwrap());
    assert_eq!(
        mutation,
        Some(serde_json::json!({
            "configuration": "poddefaults-webhook-mutating-webhook-configuration",
            "webhook": "poddefaults-webhook-deployment.kubeflow.org",
            "mutated": true,
        })),
        "{e}"
    );
    let e = events.iter().find(|e| e["auditID"] == "apiserver-call-1").unwrap();
    eprintln!("admission review: {e}");
    assert_eq!(e["user"]["username"], "kube-apiserver");
    assert_eq!(e["verb"], "create");
    assert_eq!(e["objectRef"]["resource"], "pods");
    assert_eq!(e["objectRef"]["namespace"], "team");
    assert_eq!(e["objectRef"]["name"], "p");
    assert_eq!(e["requestURI"], "/apply-poddefault");
    assert_eq!(e["responseStatus"]["code"], 200);
    assert_eq!(decision(e).0, "allow");
    assert_eq!(
        annotation(e, "admission.kfsec.io/webhook"),
        "poddefaults-webhook-deployment.kubeflow.org"
    );
    assert_eq!(annotation(e, "admission.kfsec.io/outcome"), "patch");
    assert!(
        annotation(e, "admission.kfsec.io/patch-operations")
            .parse::<u32>()
            .unwrap()
            > 0
    );
    assert_eq!(annotation(e, "admission.kfsec.io/reviewed-user"), "u");
    assert!(e["sourceIPs"][0].as_str().is_some());
    let e = events.iter().find(|e| e["auditID"] == bad_id.as_str()).unwrap();
    assert_eq!(
        (e["verb"].as_str(), e["responseStatus"]["code"].as_u64()),
        (Some("post"), Some(400))
    );
    assert!(e.get("objectRef").is_none());
    assert_eq!(e["requestURI"], "/apply-poddefault?timeout=10s&token=REDACTED");
    assert!(!e.to_string().contains("s3cr3t"), "{e}");
    k.running.shutdown().await;
}
