//! The Central Dashboard backend API (issue 13 point 1) through the front door, with real
//! sessions, ID tokens as bearer tokens and kubectl: every `/api/workgroup/*` JSON shape pinned
//! against upstream's, the owner / edit / view / outsider / cluster-admin matrix, and upstream's
//! holes closed (no identity → 401, reads checked, owner spoofing refused, removal immediate,
//! cross-site cookie writes refused, `/api/v1/…` untouched).

#![allow(clippy::disallowed_methods)] // polls real time while the profile controller works

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::*;
use crate::rbac::Kubectl;

pub(crate) const VIEWER: &str = "viewer@example.org";
const EDITOR: &str = "editor@example.org";
pub(crate) const OUTSIDER: &str = "outsider@example.org";
pub(crate) const ADMIN: &str = "boss@example.org";
pub(crate) const PW: &str = "a long dashboard password";

const CONFIG: &str = "registrationFlow: true\noauth2:\n  passwordConnector: local\nbearerAudiences: [rp-test]\n";

async fn add_user(k: &Kfsec, email: &str) {
    k.add_user(email, PW).await;
}

/// A logged-in browser session of `user`.
pub(crate) async fn session(k: &Kfsec, user: &str, password: &str) -> Browser {
    let mut b = k.client();
    assert_eq!(b.login("/", user, password).await.0.status(), 200, "{user}");
    b
}

/// Sends `method path` with an optional JSON body; returns the status and the JSON answer.
async fn call(b: &mut Browser, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = b.http.request(method, b.url(path));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = b.send(req).await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text:?}")),
    )
}

/// A cookie-authenticated add-contributor to `user1` with one extra header.
async fn add_with_header(b: &mut Browser, name: &'static str, value: &str, who: &str) -> reqwest::Response {
    let req = b
        .http
        .post(b.url("/api/workgroup/add-contributor/user1"))
        .header(name, value)
        .json(&json!({ "contributor": who }));
    b.send(req).await
}

async fn get(b: &mut Browser, path: &str) -> (u16, Value) {
    call(b, Method::GET, path, None).await
}

/// Every key of `v`, sorted.
fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

/// An error answer: `{"error": "<text>"}` and nothing else.
fn is_error(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.len() == 1) && v["error"].is_string()
}

fn sorted(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// A server with user1 (the harness's user) owning profile `user1`, the other users, and `ADMIN`
/// bound to cluster-admin.
pub(crate) async fn setup(extra: &str) -> (Kfsec, Kubectl) {
    let k = Kfsec::start(extra).await;
    for u in [VIEWER, EDITOR, OUTSIDER, ADMIN] {
        add_user(&k, u).await;
    }
    let kc = Kubectl::new(k._dir.path());
    let yaml = format!(
        "apiVersion: kubeflow.org/v1\nkind: Profile\nmetadata:\n  name: user1\nspec:\n  owner:\n    kind: User\n    name: {USER}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: boss\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: cluster-admin\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: User\n  name: {ADMIN}\n"
    );
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&yaml)).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        eventually(|| async {
            kc.run(&["get", "rolebinding", "namespaceAdmin", "-n", "user1"], None)
                .await
                .0
                == 0
        })
        .await
    );
    (k, kc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shapes_and_the_role_matrix() {
    let (k, kc) = setup(CONFIG).await;
    let mut owner = session(&k, USER, PASSWORD).await;
    let mut viewer = session(&k, VIEWER, PW).await;
    let mut editor = session(&k, EDITOR, PW).await;
    let mut outsider = session(&k, OUTSIDER, PW).await;
    let mut admin = session(&k, ADMIN, PW).await;

    // exists: upstream's four fields, with their types.
    let (s, v) = get(&mut owner, "/api/workgroup/exists").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(keys(&v), ["hasAuth", "hasWorkgroup", "registrationFlowAllowed", "user"]);
    assert_eq!(
        v,
        json!({"hasAuth": true, "user": "test.user1", "hasWorkgroup": true, "registrationFlowAllowed": true})
    );
    let (_, v) = get(&mut outsider, "/api/workgroup/exists").await;
    assert_eq!(v["hasWorkgroup"], false);

    // The owner adds a viewer and an editor (role view is new; default is edit as upstream).
    let (s, v) = call(
        &mut owner,
        Method::POST,
        "/api/workgroup/add-contributor/user1",
        Some(json!({"contributor": VIEWER, "role": "view"})),
    )
    .await;
    assert_eq!((s, sorted(&v)), (200, vec![VIEWER.to_owned()]), "{v}");
    let (s, v) = call(
        &mut owner,
        Method::POST,
        "/api/workgroup/add-contributor/user1",
        Some(json!({"contributor": EDITOR})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(sorted(&v), [EDITOR, VIEWER]);
    // KFAM's names and Kubeflow's ClusterRoles, so kubectl and KFAM see the same thing.
    let (code, out, _) = kc
        .run(
            &[
                "get",
                "rolebinding",
                "-n",
                "user1",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.roleRef.name} {end}",
            ],
            None,
        )
        .await;
    assert_eq!(code, 0);
    assert!(
        out.contains("user-viewer-example-org-clusterrole-view=kubeflow-view"),
        "{out}"
    );
    assert!(
        out.contains("user-editor-example-org-clusterrole-edit=kubeflow-edit"),
        "{out}"
    );
    let (_, kfam) = get(&mut owner, "/kfam/v1/bindings?namespace=user1&role=view").await;
    assert_eq!(kfam["bindings"][0]["user"]["name"], VIEWER, "{kfam}");

    // env-info: the role of each caller, in upstream's shape.
    for (b, role) in [
        (&mut owner, "owner"),
        (&mut editor, "contributor"),
        (&mut viewer, "viewer"),
    ] {
        let (s, v) = get(b, "/api/workgroup/env-info").await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(keys(&v), ["isClusterAdmin", "namespaces", "platform", "user"]);
        assert_eq!(
            keys(&v["platform"]),
            ["kubeflowVersion", "logoutUrl", "provider", "providerName"]
        );
        assert!(v["platform"].as_object().unwrap().values().all(Value::is_string), "{v}");
        assert_eq!(v["isClusterAdmin"], false);
        let me = v["user"].as_str().unwrap();
        assert_eq!(
            v["namespaces"],
            json!([{"namespace": "user1", "role": role, "user": me}]),
            "{v}"
        );
    }
    let (_, v) = get(&mut outsider, "/api/workgroup/env-info").await;
    assert_eq!(
        (v["namespaces"].clone(), v["isClusterAdmin"].clone()),
        (json!([]), json!(false))
    );
    let (_, v) = get(&mut admin, "/api/workgroup/env-info").await;
    assert_eq!(
        (v["namespaces"].clone(), v["isClusterAdmin"].clone()),
        (json!([]), json!(true)),
        "{v}"
    );

    // get-contributors: edit and view alike, to members and cluster admins only.
    for b in [&mut owner, &mut editor, &mut viewer, &mut admin] {
        let (s, v) = get(b, "/api/workgroup/get-contributors/user1").await;
        assert_eq!((s, sorted(&v)), (200, vec![EDITOR.to_owned(), VIEWER.to_owned()]));
    }
    let (s, v) = get(&mut outsider, "/api/workgroup/get-contributors/user1").await;
    assert_eq!(s, 403);
    assert!(is_error(&v), "{v}");
    let (s, _) = get(&mut outsider, "/api/workgroup/get-contributors/nosuch").await;
    assert_eq!(s, 403, "existence is not disclosed");

    // Only the owner and cluster admins change contributors.
    for b in [&mut editor, &mut viewer, &mut outsider] {
        let (s, v) = call(
            b,
            Method::POST,
            "/api/workgroup/add-contributor/user1",
            Some(json!({"contributor": OUTSIDER, "role": "edit"})),
        )
        .await;
        assert_eq!(s, 403, "{v}");
        assert!(is_error(&v), "{v}");
        let (s, v) = call(
            b,
            Method::DELETE,
            "/api/workgroup/remove-contributor/user1",
            Some(json!({"contributor": EDITOR})),
        )
        .await;
        assert_eq!(s, 403, "{v}");
        assert!(is_error(&v), "{v}");
    }
    let (s, v) = call(
        &mut admin,
        Method::POST,
        "/api/workgroup/add-contributor/user1",
        Some(json!({"contributor": OUTSIDER, "role": "viewer"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(sorted(&v), [EDITOR, OUTSIDER, VIEWER]);
    let (_, v) = get(&mut outsider, "/api/workgroup/env-info").await;
    assert_eq!(v["namespaces"][0]["role"], "viewer", "the grant is there at once: {v}");
    let (s, v) = call(
        &mut admin,
        Method::DELETE,
        "/api/workgroup/remove-contributor/user1",
        Some(json!({"contributor": OUTSIDER})),
    )
    .await;
    assert_eq!((s, sorted(&v)), (200, vec![EDITOR.to_owned(), VIEWER.to_owned()]));

    // Bad bodies: upstream's messages, as {"error"}.
    for (body, want) in [
        (json!({}), "Missing contributor field."),
        (
            json!({"contributor": "not-an-email"}),
            "Contributor doesn't look like a valid email address",
        ),
        (
            json!({"contributor": "a@b.org", "role": "admin"}),
            "role must be \"edit\" or \"view\"",
        ),
    ] {
        let (s, v) = call(
            &mut owner,
            Method::POST,
            "/api/workgroup/add-contributor/user1",
            Some(body),
        )
        .await;
        assert_eq!((s, v), (400, json!({"error": want})));
    }

    // get-all-namespaces: rows of three strings; a cluster admin sees every workspace, others
    // only their own.
    let (s, v) = get(&mut admin, "/api/workgroup/get-all-namespaces").await;
    assert_eq!(s, 200);
    let row = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0] == "user1")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(row.as_array().unwrap().len(), 3);
    assert_eq!(row[1], USER);
    let mut c: Vec<&str> = row[2].as_str().unwrap().split(", ").collect();
    c.sort_unstable();
    assert_eq!(c, [EDITOR, VIEWER]);
    let (_, v) = get(&mut outsider, "/api/workgroup/get-all-namespaces").await;
    assert_eq!(v, json!([]));
    let (_, v) = get(&mut viewer, "/api/workgroup/get-all-namespaces").await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");

    // /api/namespaces: raw Namespace objects the caller may see.
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, v) = get(&mut viewer, "/api/namespaces").await;
    assert_eq!(s, 200);
    assert_eq!(names(&v), ["user1"], "{v}");
    assert_eq!(v[0]["kind"], "Namespace");
    let (_, v) = get(&mut outsider, "/api/namespaces").await;
    assert_eq!(v, json!([]));
    let (_, v) = get(&mut admin, "/api/namespaces").await;
    for ns in ["user1", "kubeflow", "default"] {
        assert!(names(&v).iter().any(|n| n == ns), "{ns}: {v}");
    }

    // activities: Events newest first, to those who may list events there.
    let event = |name: &str, at: &str| {
        format!(
            "apiVersion: v1\nkind: Event\nmetadata:\n  name: {name}\n  namespace: user1\ninvolvedObject:\n  kind: Pod\n  name: p\n  namespace: user1\nreason: Test\nmessage: {name}\ntype: Normal\nlastTimestamp: \"{at}\"\n"
        )
    };
    let yaml = [
        event("older", "2026-01-01T00:00:00Z"),
        event("newer", "2026-02-01T00:00:00Z"),
    ]
    .join("---\n");
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&yaml)).await;
    assert_eq!(code, 0, "{err}");
    for b in [&mut owner, &mut viewer, &mut admin] {
        let (s, v) = get(b, "/api/activities/user1").await;
        assert_eq!(s, 200, "{v}");
        let order: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["newer", "older"]);
        assert_eq!(v[0]["kind"], "Event");
    }
    let (s, v) = get(&mut outsider, "/api/activities/user1").await;
    assert_eq!(
        (s, v),
        (
            403,
            json!({"error": "Access denied. You do not have permission to view activities for namespace 'user1'."})
        )
    );

    // Links and settings without configuration.
    let (s, v) = get(&mut viewer, "/api/dashboard-links").await;
    assert_eq!(s, 200);
    assert_eq!(
        keys(&v),
        ["documentationItems", "externalLinks", "menuLinks", "quickLinks"]
    );
    assert!(
        v["menuLinks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["link"].as_str().unwrap().starts_with("/pipeline/"))
    );
    let (s, v) = get(&mut viewer, "/api/dashboard-settings").await;
    assert_eq!((s, v), (200, json!({"DASHBOARD_FORCE_IFRAME": false})));

    // A viewer really holds kubeflow-view (read, not write), through the Kubernetes API under
    // /api/v1, which the dashboard routes do not shadow.
    let token = password_id_token(&k, VIEWER, PW).await;
    let http = http_client(&k.running.ca_pem);
    let r = http
        .get(format!("{}/api/v1/namespaces/user1/configmaps", k.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["kind"], "ConfigMapList");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    let r = http
        .post(format!("{}/api/v1/namespaces/user1/configmaps", k.base))
        .bearer_auth(&token)
        .json(&cm)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Removal takes effect at once: the editor's next request is refused.
    let (s, v) = call(
        &mut owner,
        Method::DELETE,
        "/api/workgroup/remove-contributor/user1",
        Some(json!({"contributor": EDITOR})),
    )
    .await;
    assert_eq!((s, sorted(&v)), (200, vec![VIEWER.to_owned()]));
    let (s, _) = get(&mut editor, "/api/workgroup/get-contributors/user1").await;
    assert_eq!(s, 403);
    let (s, _) = get(&mut editor, "/api/activities/user1").await;
    assert_eq!(s, 403);
    let (_, v) = get(&mut editor, "/api/workgroup/env-info").await;
    assert_eq!(v["namespaces"], json!([]));
    // Removing someone who is not a contributor: 404 to the owner, still 403 to others.
    let (s, v) = call(
        &mut owner,
        Method::DELETE,
        "/api/workgroup/remove-contributor/user1",
        Some(json!({"contributor": EDITOR})),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    // A role change replaces the role: the viewer becomes an editor, once.
    let (_, v) = call(
        &mut owner,
        Method::POST,
        "/api/workgroup/add-contributor/user1",
        Some(json!({"contributor": VIEWER, "role": "edit"})),
    )
    .await;
    assert_eq!(sorted(&v), [VIEWER]);
    let (_, v) = get(&mut viewer, "/api/workgroup/env-info").await;
    assert_eq!(v["namespaces"][0]["role"], "contributor", "{v}");
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_holes_are_closed() {
    let (k, kc) = setup(CONFIG).await;
    let http = http_client(&k.running.ca_pem);

    // No identity: 401 {"error"} on every route (upstream: every namespace, isClusterAdmin true).
    for (m, path) in [
        (Method::GET, "/api/workgroup/exists"),
        (Method::GET, "/api/workgroup/env-info"),
        (Method::GET, "/api/workgroup/get-all-namespaces"),
        (Method::GET, "/api/workgroup/get-contributors/user1"),
        (Method::POST, "/api/workgroup/add-contributor/user1"),
        (Method::DELETE, "/api/workgroup/remove-contributor/user1"),
        (Method::POST, "/api/workgroup/create"),
        (Method::DELETE, "/api/workgroup/nuke-self"),
        (Method::GET, "/api/namespaces"),
        (Method::GET, "/api/activities/user1"),
        (Method::GET, "/api/dashboard-links"),
        (Method::GET, "/api/dashboard-settings"),
    ] {
        let r = http
            .request(m.clone(), format!("{}{path}", k.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{m} {path}");
        let v: Value = r.json().await.unwrap();
        assert!(is_error(&v), "{m} {path}: {v}");
        // a forged identity header is no identity
        let r = http
            .request(m.clone(), format!("{}{path}", k.base))
            .header("kubeflow-userid", ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{m} {path} with kubeflow-userid");
    }

    // A non-admin naming another owner: 403, nothing created.
    let mut outsider = session(&k, OUTSIDER, PW).await;
    let (s, v) = call(
        &mut outsider,
        Method::POST,
        "/api/workgroup/create",
        Some(json!({"namespace": "stolen", "user": USER})),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(is_error(&v), "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ne!(kc.run(&["get", "profile", "stolen"], None).await.0, 0, "no profile");
    assert_ne!(kc.run(&["get", "namespace", "stolen"], None).await.0, 0, "no namespace");
    // Nor a system or foreign namespace, nor a bad name.
    for (body, status) in [
        (json!({"namespace": "kubeflow"}), 403),
        (json!({"namespace": "Bad_Name"}), 400),
        (json!({"namespace": 5}), 400),
        (json!({"namespace": "x", "extra": 1}), 400),
    ] {
        let (s, v) = call(&mut outsider, Method::POST, "/api/workgroup/create", Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(is_error(&v), "{v}");
    }
    // The registration flow: the caller's own workspace, named after the email's local part.
    let (s, v) = call(&mut outsider, Method::POST, "/api/workgroup/create", Some(json!({}))).await;
    assert_eq!((s, v), (200, json!({"message": "Created namespace outsider"})));
    let (_, v) = get(&mut outsider, "/api/workgroup/exists").await;
    assert_eq!(v["hasWorkgroup"], true);
    assert!(
        eventually(|| async {
            kc.run(&["get", "rolebinding", "namespaceAdmin", "-n", "outsider"], None)
                .await
                .0
                == 0
        })
        .await
    );
    // Somebody else cannot delete it, nuke-self deletes one's own.
    let mut owner = session(&k, USER, PASSWORD).await;
    let (s, v) = call(&mut owner, Method::DELETE, "/api/workgroup/nuke-self", None).await;
    assert_eq!(
        s, 403,
        "user1's local part is test.user1 → test-user1, which user1 does not own: {v}"
    );
    let (s, v) = call(&mut outsider, Method::DELETE, "/api/workgroup/nuke-self", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(keys(&v), ["message", "serverBody"]);
    assert_eq!(v["message"], "Removed namespace/profile outsider");
    let (_, v) = get(&mut outsider, "/api/workgroup/exists").await;
    assert_eq!(v["hasWorkgroup"], false);

    // A cluster admin may create for another user.
    let mut admin = session(&k, ADMIN, PW).await;
    let (s, v) = call(
        &mut admin,
        Method::POST,
        "/api/workgroup/create",
        Some(json!({"namespace": "for-viewer", "user": VIEWER})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, out, _) = kc
        .run(
            &["get", "profile", "for-viewer", "-o", "jsonpath={.spec.owner.name}"],
            None,
        )
        .await;
    assert_eq!(out, VIEWER);
    // nuke-self is the caller's own workspace only, even for a cluster admin.
    let (s, _) = call(
        &mut admin,
        Method::POST,
        "/api/workgroup/create",
        Some(json!({"namespace": "boss", "user": VIEWER})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = call(&mut admin, Method::DELETE, "/api/workgroup/nuke-self", None).await;
    assert_eq!(s, 403, "{v}");
    assert!(is_error(&v), "{v}");
    assert_eq!(kc.run(&["get", "profile", "boss"], None).await.0, 0, "still there");
    // … and kubectl (the admin's client certificate) reads the same API.
    let (code, out, err) = kc.run(&["get", "--raw", "/api/workgroup/env-info"], None).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["isClusterAdmin"], true);
    // kubectl's raw POST and DELETE (with a body) reach the contributor routes too.
    let body = format!(r#"{{"contributor": "{VIEWER}", "role": "view"}}"#);
    let (code, out, err) = kc
        .run(
            &[
                "create",
                "--raw",
                "/api/workgroup/add-contributor/for-viewer",
                "-f",
                "-",
            ],
            Some(&body.replace(VIEWER, EDITOR)),
        )
        .await;
    assert_eq!((code, out.trim()), (0, format!(r#"["{EDITOR}"]"#).as_str()), "{err}");
    let (code, out, err) = kc
        .run(
            &[
                "delete",
                "--raw",
                "/api/workgroup/remove-contributor/for-viewer",
                "-f",
                "-",
            ],
            Some(&body.replace(VIEWER, EDITOR)),
        )
        .await;
    assert_eq!((code, out.trim()), (0, "[]"), "{err}");

    // A cross-site write carried by the cookie is refused; nothing changes.
    let r = add_with_header(&mut owner, "origin", "https://evil.example", OUTSIDER).await;
    assert_eq!(r.status(), 403);
    assert!(is_error(&r.json().await.unwrap()));
    let r = add_with_header(&mut owner, "sec-fetch-site", "cross-site", OUTSIDER).await;
    assert_eq!(r.status(), 403);
    let (_, v) = get(&mut owner, "/api/workgroup/get-contributors/user1").await;
    assert_eq!(v, json!([]));
    // Same-origin from the page itself passes, and a bearer token is not subject to the check.
    let r = add_with_header(&mut owner, "origin", &k.base, EDITOR).await;
    assert_eq!(r.status(), 200);
    let token = password_id_token(&k, USER, PASSWORD).await;
    let r = http
        .delete(format!("{}/api/workgroup/remove-contributor/user1", k.base))
        .bearer_auth(&token)
        .header("origin", "https://elsewhere.example")
        .json(&json!({"contributor": EDITOR}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]));

    // The routes neither shadow nor are shadowed by the Kubernetes API.
    let (s, v) = get(&mut owner, "/api/workgroup/nope").await;
    assert_eq!(
        (s, v),
        (404, json!({"error": "Could not find the route you're looking for"}))
    );
    for (m, path) in [
        (Method::GET, "/api/workgroup/create"),
        (Method::POST, "/api/namespaces"),
    ] {
        let (s, v) = call(&mut owner, m, path, None).await;
        assert_eq!((s, v), (405, json!({"error": "Method not allowed"})), "{path}");
    }
    let (code, out, err) = kc.run(&["get", "--raw", "/api/v1/namespaces/user1"], None).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["kind"], "Namespace");
    let (code, out, _) = kc.run(&["get", "--raw", "/api/v1"], None).await;
    assert_eq!(
        (code, serde_json::from_str::<Value>(&out).unwrap()["kind"].clone()),
        (0, json!("APIResourceList"))
    );
    let (code, _, err) = kc.run(&["get", "--raw", "/api/namespaces/user1"], None).await;
    assert_ne!(code, 0, "not a dashboard route: {err}");
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_off_and_configured_links() {
    let dir = tempfile::tempdir().unwrap();
    let links = dir.path().join("links.json");
    std::fs::write(
        &links,
        r#"{"menuLinks":[{"type":"item","link":"/pipeline/#/runs?ns={ns}","text":"Runs","icon":"maps:directions-run"}],
            "externalLinks":[{"type":"item","iframe":false,"text":"Docs","url":"https://example.com/docs","icon":"book"}],
            "quickLinks":[],"documentationItems":[]}"#,
    )
    .unwrap();
    let settings = dir.path().join("settings.json");
    std::fs::write(&settings, r#"{"DASHBOARD_FORCE_IFRAME": true}"#).unwrap();
    let extra = format!(
        "dashboard:\n  links: {}\n  settings: {}\n",
        links.display(),
        settings.display()
    );
    let (k, kc) = setup(&extra).await;
    let mut outsider = session(&k, OUTSIDER, PW).await;
    let (_, v) = get(&mut outsider, "/api/workgroup/exists").await;
    assert_eq!(v["registrationFlowAllowed"], false);
    let (s, v) = call(&mut outsider, Method::POST, "/api/workgroup/create", Some(json!({}))).await;
    assert_eq!(s, 403, "{v}");
    assert!(is_error(&v), "{v}");
    assert_ne!(kc.run(&["get", "profile", "outsider"], None).await.0, 0);
    // `url` (the docs' spelling) is served as `link` (the code's).
    let (_, v) = get(&mut outsider, "/api/dashboard-links").await;
    assert_eq!(v["externalLinks"][0]["link"], "https://example.com/docs");
    assert_eq!(v["menuLinks"][0]["link"], "/pipeline/#/runs?ns={ns}");
    let (_, v) = get(&mut outsider, "/api/dashboard-settings").await;
    assert_eq!(v, json!({"DASHBOARD_FORCE_IFRAME": true}));
    k.running.shutdown().await;

    // A bad links file or an unknown key fails the start with the reason.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"menuLinks":[{"link":"javascript:alert(1)"}]}"#).unwrap();
    let parse = |yaml: String| {
        let f = kfsec_server::config::parse(std::path::Path::new("t.yaml"), &yaml).map_err(|e| e.to_string())?;
        kfsec_server::config::validate(
            f,
            &kfsec_server::config::Overrides::default(),
            &kfsec_server::config::ProcessEnv,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let e = parse(format!(
        "apiVersion: kfsec/v1\ndashboard:\n  links: {}\n",
        bad.display()
    ))
    .unwrap_err();
    assert!(
        e.contains("dashboard.links") && e.contains("javascript:alert(1)"),
        "{e}"
    );
    let e = parse("apiVersion: kfsec/v1\ndashboard:\n  linkz: x\n".into()).unwrap_err();
    assert!(e.contains("linkz"), "{e}");
    let e = parse("apiVersion: kfsec/v1\ndashboard:\n  links: /nonexistent/links.json\n".into()).unwrap_err();
    assert!(e.contains("/nonexistent/links.json"), "{e}");
}
