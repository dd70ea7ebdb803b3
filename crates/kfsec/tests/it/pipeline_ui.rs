//! `/pipeline` (issue 13 point 4) through the front door with real sessions: kfsec's read-only
//! Pipelines view lists a run created through the KFP API with its state, and the experiment,
//! recurring-run and pipeline (namespaced and shared, with versions) pages; the fragment script
//! is kfsec's own file under the pages' CSP; another user's items are a 404 that looks like a
//! missing one; a browser without a session is sent to log in and lands back on `/pipeline/`;
//! and a configured `/pipeline/` route is proxied with the identity while the KFP API keeps
//! `/pipeline/apis/`. A deleted Profile's Pipelines data goes with its namespace: the next
//! owner of the name starts empty.

#![allow(clippy::disallowed_methods)] // polls real time while the profile controller works

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;
use crate::rbac::Kubectl;

const USER2: &str = "pipelines.other@example.org";
const PASSWORD2: &str = "another long password";
const HOSTILE: &str = "<script>alert(1)</script>\"'";

async fn profile(kc: &Kubectl, name: &str, owner: &str) {
    let yaml = format!(
        "apiVersion: kubeflow.org/v1\nkind: Profile\nmetadata:\n  name: {name}\nspec:\n  owner:\n    kind: User\n    name: {owner}\n"
    );
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&yaml)).await;
    assert_eq!(code, 0, "{err}");
}

async fn post_json(b: &mut Browser, path: &str, body: Value) -> (u16, Value) {
    let r = b.send(b.http.post(b.url(path)).json(&body)).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn page(b: &mut Browser, path: &str) -> (u16, String) {
    let r = b.get(path).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

fn spec(name: &str) -> Value {
    json!({"pipelineInfo": {"name": name}, "root": {"dag": {"tasks": {}}}, "schemaVersion": "2.1.0", "sdkVersion": "kfp-2.14.6"})
}

/// Creates a pipeline with one version in `namespace` ("" = shared); returns the pipeline's id
/// and its version's id and name as the API lists them.
async fn pipeline(b: &mut Browser, name: &str, version: &str, namespace: &str) -> (String, String, String) {
    let mut p = json!({"display_name": name});
    if !namespace.is_empty() {
        p["namespace"] = json!(namespace);
    }
    let (s, v) = post_json(
        b,
        "/pipeline/apis/v2beta1/pipelines/create",
        json!({"pipeline": p, "pipeline_version": {"display_name": version, "pipeline_spec": spec(name)}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let pid = v["pipeline_id"].as_str().unwrap().to_owned();
    let list: Value = b
        .get(&format!("/pipeline/apis/v2beta1/pipelines/{pid}/versions"))
        .await
        .json()
        .await
        .unwrap();
    let v = &list["pipeline_versions"][0];
    let vid = v["pipeline_version_id"].as_str().unwrap().to_owned();
    (pid, vid, v["display_name"].as_str().unwrap().to_owned())
}

/// Posts until the profile's bindings let `b` in (the controller works asynchronously).
async fn post_when_bound(b: &mut Browser, path: &str, body: Value) -> Value {
    for _ in 0..100 {
        let (s, v) = post_json(b, path, body.clone()).await;
        if s == 200 {
            return v;
        }
        assert_eq!(s, 403, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never bound: {path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_profiles_pipelines_do_not_reach_the_next_owner_of_its_name() {
    let k = Kfsec::start("").await;
    k.add_user(USER2, PASSWORD2).await;
    let kc = Kubectl::new(k._dir.path());
    profile(&kc, "handover", USER).await;
    let mut first = k.client();
    first.login("/pipeline", USER, PASSWORD).await;
    let exp = post_when_bound(
        &mut first,
        "/pipeline/apis/v2beta1/experiments",
        json!({"display_name": "secret-project", "namespace": "handover"}),
    )
    .await;
    let eid = exp["experiment_id"].as_str().unwrap().to_owned();
    let (pid, vid, _) = pipeline(&mut first, "train", "train-v1", "handover").await;
    let (s, run) = post_json(
        &mut first,
        "/pipeline/apis/v2beta1/runs",
        json!({"display_name": "run", "experiment_id": eid,
               "runtime_config": {"parameters": {"token": "the first owner's"}},
               "pipeline_version_reference": {"pipeline_id": pid, "pipeline_version_id": vid}}),
    )
    .await;
    assert_eq!(s, 200, "{run}");
    let rid = run["run_id"].as_str().unwrap().to_owned();

    // The Profile goes, and with it its namespace.
    let (code, _, err) = kc.run(&["delete", "profile", "handover"], None).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        eventually(|| async { kc.run(&["get", "namespace", "handover"], None).await.0 != 0 }).await,
        "the namespace stayed"
    );

    // Another user claims the name: nothing of the first owner's is there.
    profile(&kc, "handover", USER2).await;
    let mut second = k.client();
    second.login("/pipeline", USER2, PASSWORD2).await;
    let mine = post_when_bound(
        &mut second,
        "/pipeline/apis/v2beta1/experiments",
        json!({"display_name": "secret-project", "namespace": "handover"}),
    )
    .await;
    for (path, list) in [
        ("/pipeline/apis/v2beta1/experiments?namespace=handover", "experiments"),
        ("/pipeline/apis/v2beta1/runs?namespace=handover", "runs"),
        ("/pipeline/apis/v2beta1/pipelines?namespace=handover", "pipelines"),
    ] {
        let v: Value = second.get(path).await.json().await.unwrap();
        let ids: Vec<&Value> = v[list].as_array().map(|a| a.iter().collect()).unwrap_or_default();
        let expected = if list == "experiments" { 1 } else { 0 };
        assert_eq!(ids.len(), expected, "{path}: {v}");
    }
    assert_ne!(mine["experiment_id"], exp["experiment_id"]);
    for path in [
        format!("/pipeline/apis/v2beta1/runs/{rid}"),
        format!("/pipeline/apis/v2beta1/experiments/{eid}"),
        format!("/pipeline/apis/v2beta1/pipelines/{pid}"),
    ] {
        assert_eq!(second.get(&path).await.status(), 404, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipelines_view_shows_a_namespaces_runs_and_refuses_other_users_items() {
    let k = Kfsec::start("").await;
    k.add_user(USER2, PASSWORD2).await;
    let kc = Kubectl::new(k._dir.path());
    profile(&kc, "user1", USER).await;
    profile(&kc, "other", USER2).await;
    // Shared pipelines are written with the right in KFP's own namespace.
    let yaml = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: shared-pipelines\n  namespace: kubeflow\nrules:\n- apiGroups: [pipelines.kubeflow.org]\n  resources: [pipelines]\n  verbs: [create, get, list]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: shared-pipelines\n  namespace: kubeflow\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: shared-pipelines\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: User\n  name: {USER}\n"
    );
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&yaml)).await;
    assert_eq!(code, 0, "{err}");

    // A browser without a session is sent to log in, and the login lands on the view.
    let mut owner = k.client();
    let r = owner.get("/pipeline/").await;
    assert!(r.status().is_redirection(), "{}", r.status());
    let (r, url) = owner.login("/pipeline", USER, PASSWORD).await;
    assert_eq!(r.status(), 200);
    assert!(url.ends_with("/pipeline/"), "{url}");

    // Objects through the KFP API, once the profile's bindings are in place.
    let mut exp = Value::Null;
    for _ in 0..100 {
        let (s, v) = post_json(
            &mut owner,
            "/pipeline/apis/v2beta1/experiments",
            json!({"display_name": format!("exp {HOSTILE}"), "namespace": "user1"}),
        )
        .await;
        exp = v;
        if s == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(exp["experiment_id"].is_string(), "{exp}");
    let eid = exp["experiment_id"].as_str().unwrap().to_owned();
    let (pid, vid, vname) = pipeline(&mut owner, "train", "train-v1", "user1").await;
    let (shared_pid, _, _) = pipeline(&mut owner, "shared-flow", "shared-v1", "").await;
    let (s, run) = post_json(
        &mut owner,
        "/pipeline/apis/v2beta1/runs",
        json!({"display_name": "nightly-run", "experiment_id": eid,
               "runtime_config": {"parameters": {"msg": "hi <b>", "epochs": 3}},
               "pipeline_version_reference": {"pipeline_id": pid, "pipeline_version_id": vid}}),
    )
    .await;
    assert_eq!(s, 200, "{run}");
    let rid = run["run_id"].as_str().unwrap().to_owned();
    let state = run["state"].as_str().unwrap_or_default().to_owned();
    assert!(!state.is_empty(), "{run}");
    let (s, job) = post_json(
        &mut owner,
        "/pipeline/apis/v2beta1/recurringruns",
        json!({"display_name": "hourly", "experiment_id": eid, "mode": "ENABLE",
               "trigger": {"periodic_schedule": {"interval_second": 3600}},
               "pipeline_version_reference": {"pipeline_id": pid, "pipeline_version_id": vid}}),
    )
    .await;
    assert_eq!(s, 200, "{job}");
    let jid = job["recurring_run_id"].as_str().unwrap().to_owned();

    // The view of the user's first (only) workspace.
    let r = owner.get("/pipeline/").await;
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline';  script"),
        "{csp}"
    );
    assert!(!csp.contains("script-src 'unsafe"), "{csp}");
    let html = r.text().await.unwrap();
    assert!(
        html.contains("<script src=\"/pipeline/kfsec-links.js\"></script>"),
        "{html}"
    );
    assert_eq!(html.matches("<script").count(), 1, "one script, kfsec's file: {html}");
    assert!(html.contains("<option value=\"user1\" selected>"), "{html}");
    assert!(
        !html.contains("value=\"other\""),
        "another user's namespace offered: {html}"
    );
    assert!(
        html.contains(&format!(
            "<a href=\"/pipeline/runs/details/{rid}\">nightly-run</a></td><td>{state}</td>"
        )),
        "{html}"
    );
    assert!(html.contains(&format!("/pipeline/experiments/details/{eid}")), "{html}");
    assert!(
        html.contains(&format!("/pipeline/recurringruns/details/{jid}\">hourly</a>")),
        "{html}"
    );
    assert!(
        html.contains(&format!("/pipeline/pipelines/details/{pid}\">train</a>")),
        "{html}"
    );
    assert!(html.contains(&format!("\">train</a></td><td>{vname}</td>")), "{html}");
    assert!(
        html.contains(&format!("/pipeline/pipelines/details/{shared_pid}\">shared-flow</a>")),
        "{html}"
    );
    assert!(
        html.contains("exp &#60;script&#62;alert(1)&#60;/script&#62;&#34;&#39;"),
        "{html}"
    );
    assert!(!html.contains(HOSTILE), "{html}");
    assert_eq!(page(&mut owner, "/pipeline/?ns=user1").await.0, 200);
    let r = owner.get("/pipeline?ns=user1").await;
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r), "/pipeline/?ns=user1");

    // Each item's page.
    let (s, html) = page(&mut owner, &format!("/pipeline/runs/details/{rid}")).await;
    assert_eq!(s, 200, "{html}");
    assert!(
        html.contains("<h1>Run nightly-run</h1>") && html.contains(&rid),
        "{html}"
    );
    assert!(html.contains(&format!("<th>State</th><td>{state}</td>")), "{html}");
    assert!(html.contains("href=\"/pipeline/?ns=user1\""), "{html}");
    // Related items are links, the experiment under its name; parameters read as values
    // (a string without JSON's quotes, escaped); the history's columns say what they hold.
    assert!(
        html.contains(&format!(
            "<th>Experiment</th><td><a href=\"/pipeline/experiments/details/{eid}\">"
        )),
        "{html}"
    );
    assert!(
        html.contains(&format!("<a href=\"/pipeline/pipelines/details/{pid}\">{pid}</a>")),
        "{html}"
    );
    assert!(html.contains("<th>Parameter msg</th><td>hi &#60;b&#62;</td>"), "{html}");
    assert!(html.contains("<th>Parameter epochs</th><td>3</td>"), "{html}");
    assert!(html.contains("<th>State</th><th>Since</th>"), "{html}");
    let (s, html) = page(&mut owner, &format!("/pipeline/experiments/details/{eid}")).await;
    assert_eq!(s, 200, "{html}");
    assert!(
        html.contains(&format!("/pipeline/runs/details/{rid}\">nightly-run</a>")),
        "{html}"
    );
    let (s, html) = page(&mut owner, &format!("/pipeline/pipelines/details/{pid}")).await;
    assert_eq!(s, 200, "{html}");
    assert!(html.contains(&format!("<td>{vname}</td><td>{vid}</td>")), "{html}");
    let (s, html) = page(&mut owner, &format!("/pipeline/recurringruns/details/{jid}")).await;
    assert_eq!(s, 200, "{html}");
    assert!(html.contains("ENABLE"), "{html}");

    // The fragment script: kfsec's file, JavaScript, under a policy of its own.
    let r = owner.get("/pipeline/kfsec-links.js").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers().contains_key("content-security-policy"));
    let js = r.text().await.unwrap();
    assert!(js.contains("'/pipeline/' + kind + '/details/'"), "{js}");
    // The page is read-only.
    let r = owner
        .send(owner.http.post(owner.url("/pipeline/")).form(&[("a", "b")]))
        .await;
    assert_eq!(r.status(), 405);
    // The KFP API keeps its paths.
    let r = owner.get("/pipeline/apis/v2beta1/healthz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["multi_user"], true);

    // Another user: the same 404 for the owner's items as for missing ones, no namespace of the
    // owner's offered or shown.
    let mut other = k.client();
    assert_eq!(other.login("/pipeline", USER2, PASSWORD2).await.0.status(), 200);
    let (s, missing) = page(&mut other, "/pipeline/runs/details/no-such-run").await;
    assert_eq!(s, 404);
    for path in [
        format!("/pipeline/runs/details/{rid}"),
        format!("/pipeline/experiments/details/{eid}"),
        format!("/pipeline/pipelines/details/{pid}"),
        format!("/pipeline/recurringruns/details/{jid}"),
    ] {
        let (s, html) = page(&mut other, &path).await;
        assert_eq!(s, 404, "{path}: {html}");
        assert!(
            !html.contains("nightly-run") && !html.contains("train"),
            "{path}: {html}"
        );
        if path.contains("/runs/") {
            assert_eq!(html, missing, "a refused run reads like a missing one");
        }
    }
    let (s, html) = page(&mut other, "/pipeline/?ns=user1").await;
    assert_eq!(s, 403, "{html}");
    let (s, html) = page(&mut other, "/pipeline/").await;
    assert_eq!(s, 200, "{html}");
    assert!(
        !html.contains("nightly-run") && !html.contains("value=\"user1\""),
        "{html}"
    );
    // The shared pipeline is everybody's.
    assert!(html.contains("shared-flow"), "{html}");
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_pipeline_route_is_proxied_and_the_api_keeps_its_paths() {
    let ui = echo_upstream().await;
    // appended to the base config's `routes:` list
    let k = Kfsec::start(&format!("- prefix: /pipeline/\n  upstream: http://{ui}\n")).await;
    let mut b = k.client();
    let (r, url) = b.login("/pipeline/", USER, PASSWORD).await;
    assert_eq!(r.status(), 200, "{url}");
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["path"], "/pipeline/", "{seen}");
    assert_eq!(seen["headers"]["kubeflow-userid"], USER, "{seen}");
    assert!(
        seen["headers"]
            .get("cookie")
            .is_none_or(|c| !c.as_str().unwrap().contains("authservice_session")),
        "{seen}"
    );
    let r = b.get("/pipeline/runs/details/abc").await;
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["path"], "/pipeline/runs/details/abc", "{seen}");
    // `/pipeline/apis/` stays the built-in KFP API.
    let r = b.get("/pipeline/apis/v2beta1/healthz").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["multi_user"], true, "{v}");
    assert!(v.get("path").is_none(), "the API was proxied: {v}");
    k.running.shutdown().await;
}
