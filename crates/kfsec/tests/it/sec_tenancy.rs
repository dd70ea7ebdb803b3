//! Tenancy hardening (issue 9, findings 4 and 6 and the KFAM / pipeline / watch items): reserved
//! system namespaces exist from the first start and cannot become anybody's profile by any path;
//! KFP uploads are authorized before their body is read and parsed in linear time off the async
//! workers; KFAM discloses memberships only to those who may see them; stored pipeline packages
//! have a per-namespace quota; a watch ends when its caller's access is revoked.

#![allow(clippy::disallowed_methods)] // timing assertions (linear-time parsing, prompt revocation) measure real elapsed time

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::rbac::Kubectl;

const USER2: &str = "test.user2@example.org";
const PASSWORD2: &str = "user2 password here";

/// Every reserved spelling a profile might try (lower-case RFC 1123 names only: the others are
/// invalid names anyway).
const RESERVED: &[&str] = &[
    "kubeflow",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "kube-anything",
    "default",
    "kfsec",
];

async fn add_user2(k: &Kfsec) {
    k.add_user(USER2, PASSWORD2).await;
}

async fn logged_in(k: &Kfsec, user: &str, password: &str) -> Browser {
    let mut b = k.client();
    assert_eq!(b.login("/", user, password).await.0.status(), 200);
    b
}

fn profile(name: &str, owner: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubeflow.org/v1", "kind": "Profile",
        "metadata": {"name": name},
        "spec": {"owner": {"kind": "User", "name": owner}},
    })
}

fn profile_yaml(name: &str, owner: &str) -> String {
    format!(
        "apiVersion: kubeflow.org/v1\nkind: Profile\nmetadata:\n  name: {name}\nspec:\n  owner:\n    kind: User\n    name: {owner}\n"
    )
}

/// Applies profiles `(name, owner)` and waits until the controller made their owners admins.
async fn profiles(kc: &Kubectl, list: &[(&str, &str)]) {
    let yaml: Vec<String> = list.iter().map(|(n, o)| profile_yaml(n, o)).collect();
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&yaml.join("---\n"))).await;
    assert_eq!(code, 0, "{err}");
    for (name, _) in list {
        assert!(
            eventually(|| rolebinding_exists(kc, name, "namespaceAdmin")).await,
            "{name}"
        );
    }
}

/// `kubectl auth can-i create pipelines.pipelines.kubeflow.org -n NS --as USER`.
async fn can_create_pipelines(kc: &Kubectl, ns: &str, user: &str) -> bool {
    let args = [
        "auth",
        "can-i",
        "create",
        "pipelines.pipelines.kubeflow.org",
        "-n",
        ns,
        "--as",
        user,
    ];
    let (code, out, _) = kc.run(&args, None).await;
    assert!(code == 0 || (code == 1 && out.trim() == "no"), "{out}");
    code == 0
}

async fn rolebinding_exists(kc: &Kubectl, ns: &str, name: &str) -> bool {
    kc.run(&["get", "rolebinding", name, "-n", ns], None).await.0 == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_namespaces_exist_and_cannot_become_profiles() {
    let k = Kfsec::start("registrationFlow: true\n").await;
    let kc = Kubectl::new(k._dir.path());
    // the system namespaces exist from the first start, owned by nobody
    for ns in [
        "default",
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "kubeflow",
        "kfsec",
    ] {
        let (code, out, err) = kc.run(&["get", "namespace", ns, "-o", "json"], None).await;
        assert_eq!(code, 0, "namespace {ns} missing at first start: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(
            v["metadata"]["annotations"]["owner"].is_null(),
            "{ns} has an owner: {v}"
        );
        assert!(v["metadata"]["ownerReferences"].is_null(), "{ns} has owners: {v}");
    }

    // 1. self-registration through KFAM (registrationFlow: true), the user owning the profile
    let mut user = logged_in(&k, USER, PASSWORD).await;
    for name in RESERVED {
        let r = user
            .send(user.http.post(user.url("/kfam/v1/profiles")).json(&profile(name, USER)))
            .await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 403, "registration of {name}: {body}");
        assert!(body.contains("reserved"), "registration of {name}: {body}");
    }
    // a normal name still registers
    let r = user
        .send(
            user.http
                .post(user.url("/kfam/v1/profiles"))
                .json(&profile("user1", USER)),
        )
        .await;
    assert_eq!(r.status(), 200);

    // 2. the admin through the Kubernetes-style API: create, apply,
    //    both served versions, raw HTTP with the admin certificate
    for name in RESERVED {
        let y = profile_yaml(name, "admin@kfsec.local");
        for args in [&["create", "-f", "-"][..], &["apply", "-f", "-"]] {
            let (code, out, err) = kc.run(args, Some(&y)).await;
            assert_ne!(code, 0, "{args:?} of profile {name} succeeded: {out}");
            assert!(err.contains("reserved"), "{args:?} {name}: {err}");
            assert!(err.contains("Forbidden") || err.contains("forbidden"), "{err}");
        }
        let (code, _, err) = kc
            .run(
                &["apply", "-f", "-"],
                Some(&y.replace("kubeflow.org/v1\n", "kubeflow.org/v1beta1\n")),
            )
            .await;
        assert_ne!(code, 0, "v1beta1 profile {name}");
        assert!(err.contains("reserved"), "{err}");
    }
    // the API answers with a Kubernetes Status naming the reason
    let (code, out, err) = kc
        .run(
            &["create", "--raw", "/apis/kubeflow.org/v1/profiles", "-f", "-"],
            Some(&profile("kubeflow", USER).to_string()),
        )
        .await;
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("reserved"), "{err}");

    // 3. KFAM as a cluster admin (the admin certificate)
    for name in RESERVED {
        let (code, out, err) = kc
            .run(
                &["create", "--raw", "/kfam/v1/profiles", "-f", "-"],
                Some(&profile(name, USER).to_string()),
            )
            .await;
        assert_ne!(code, 0, "KFAM admin created profile {name}: {out}");
        assert!(
            err.contains("403") || err.contains("Forbidden") || err.contains("forbidden"),
            "{err}"
        );
    }
    let (_, out, _) = kc.run(&["get", "profiles", "-o", "name"], None).await;
    assert_eq!(out.trim(), "profile.kubeflow.org/user1", "{out}");

    // nobody got rights in a system namespace
    for ns in ["kubeflow", "kube-system", "default"] {
        assert!(!can_create_pipelines(&kc, ns, USER).await, "{ns}");
    }
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_namespace_is_not_adopted_by_a_profile() {
    let k = Kfsec::start("registrationFlow: true\n").await;
    let kc = Kubectl::new(k._dir.path());
    // an operator's namespace, even one annotated with the would-be owner
    assert_eq!(kc.run(&["create", "namespace", "team-x"], None).await.0, 0);
    assert_eq!(
        kc.run(&["annotate", "namespace", "team-x", &format!("owner={USER}")], None)
            .await
            .0,
        0
    );
    let mut user = logged_in(&k, USER, PASSWORD).await;
    let r = user
        .send(
            user.http
                .post(user.url("/kfam/v1/profiles"))
                .json(&profile("team-x", USER)),
        )
        .await;
    let status = r.status();
    if status == 200 {
        // accepted as a record, but the controller must refuse to take the namespace over
        let mut message = String::new();
        for _ in 0..50 {
            let (_, out, _) = kc
                .run(
                    &[
                        "get",
                        "profile",
                        "team-x",
                        "-o",
                        "jsonpath={.status.conditions[0].type}",
                    ],
                    None,
                )
                .await;
            message = out;
            if !message.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(message, "Failed");
    } else {
        assert_eq!(status, 403);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !rolebinding_exists(&kc, "team-x", "namespaceAdmin").await,
        "namespace adopted"
    );
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatted_system_namespace_in_old_data_is_no_longer_honoured() {
    let k = Kfsec::start("").await;
    // what an old kfsec left behind after `kubeflow` was registered by a user: the Profile, its
    // namespace (owned by the Profile) and the owner's admin binding
    let uid = "0b8e6a55-0000-4000-8000-000000000001";
    let store = k.running.store.clone();
    let mut p = profile("kubeflow", USER);
    p["metadata"]["uid"] = serde_json::json!(uid);
    p["metadata"]["creationTimestamp"] = serde_json::json!("2026-01-01T00:00:00Z");
    store
        .put(
            &object_key("kubeflow.org", "v1", "profiles", "", "kubeflow"),
            serde_json::to_vec(&p).unwrap(),
            None,
        )
        .await
        .unwrap();
    let ns = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "kubeflow", "uid": "0b8e6a55-0000-4000-8000-000000000002",
            "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": {"owner": USER},
            "ownerReferences": [{"apiVersion": "kubeflow.org/v1", "kind": "Profile", "name": "kubeflow", "uid": uid, "controller": true, "blockOwnerDeletion": true}]},
    });
    store
        .put(
            &object_key("", "v1", "namespaces", "", "kubeflow"),
            serde_json::to_vec(&ns).unwrap(),
            None,
        )
        .await
        .unwrap();
    let rb = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "namespaceAdmin", "namespace": "kubeflow", "uid": "0b8e6a55-0000-4000-8000-000000000003",
            "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": {"user": USER, "role": "admin"},
            "ownerReferences": [{"apiVersion": "kubeflow.org/v1", "kind": "Profile", "name": "kubeflow", "uid": uid, "controller": true, "blockOwnerDeletion": true}]},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubeflow-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
    });
    store
        .put(
            &object_key(
                "rbac.authorization.k8s.io",
                "v1",
                "rolebindings",
                "kubeflow",
                "namespaceAdmin",
            ),
            serde_json::to_vec(&rb).unwrap(),
            None,
        )
        .await
        .unwrap();
    drop(store);
    let dir = k.stop().await;
    let k = Kfsec::start_in(dir, "").await;
    let kc = Kubectl::new(k._dir.path());
    let revoked = eventually(|| async { !can_create_pipelines(&kc, "kubeflow", USER).await }).await;
    assert!(revoked, "the squatter still has rights in kubeflow");
    // the namespace is the system's again, so deleting the stale Profile cannot delete it
    let (_, out, _) = kc.run(&["get", "namespace", "kubeflow", "-o", "json"], None).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["metadata"]["ownerReferences"].is_null(), "{v}");
    assert!(v["metadata"]["annotations"]["owner"].is_null(), "{v}");
    let (_, out, _) = kc
        .run(
            &[
                "get",
                "profile",
                "kubeflow",
                "-o",
                "jsonpath={.status.conditions[0].type}",
            ],
            None,
        )
        .await;
    assert_eq!(out, "Failed");
    // the owner cannot write shared pipelines (KFP checks them in the system namespace)
    let mut user = logged_in(&k, USER, PASSWORD).await;
    let r = user
        .send(
            user.http
                .post(user.url("/pipeline/apis/v2beta1/pipelines"))
                .json(&serde_json::json!({"display_name": "shared-x"})),
        )
        .await;
    assert_eq!(r.status(), 403);
    // nor hand out rights there through KFAM as the "owner"
    let binding = serde_json::json!({
        "user": {"kind": "User", "name": USER2},
        "referredNamespace": "kubeflow",
        "RoleRef": {"kind": "ClusterRole", "name": "edit"},
    });
    let r = user
        .send(user.http.post(user.url("/kfam/v1/bindings")).json(&binding))
        .await;
    assert_eq!(r.status(), 403);
    assert!(!rolebinding_exists(&kc, "kubeflow", "user-test-user2-example-org-clusterrole-edit").await);
    k.running.shutdown().await;
}

/// A multipart body of about `size` bytes made of many small fields (each part's header search
/// used to scan the rest of the body), without the `uploadfile` part.
fn many_parts(size: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size + 100);
    while body.len() < size {
        body.extend_from_slice(b"--B0undary\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nv\r\n");
    }
    body.extend_from_slice(b"--B0undary--\r\n");
    body
}

/// One `uploadfile` part of about `size` bytes whose content is full of near-boundaries.
fn near_boundaries(size: usize) -> Vec<u8> {
    let boundary = "x".repeat(69) + "y";
    let mut body =
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"uploadfile\"; filename=\"p.yaml\"\r\n\r\n")
            .into_bytes();
    let near = format!("\r\n--{}", "x".repeat(69));
    while body.len() < size {
        body.extend_from_slice(near.as_bytes());
    }
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

async fn upload(b: &mut Browser, query: &str, boundary: &str, body: Vec<u8>) -> (u16, String, Duration) {
    let t = Instant::now();
    let r = b
        .send(
            b.http
                .post(b.url(&format!("/pipeline/apis/v2beta1/pipelines/upload?{query}")))
                .header("content-type", format!("multipart/form-data; boundary={boundary}"))
                .timeout(Duration::from_secs(30))
                .body(body),
        )
        .await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, text, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_parsing_is_linear_and_never_stalls_the_process() {
    let k = Kfsec::start("").await;
    let mut b = logged_in(&k, USER, PASSWORD).await;
    // warm up (TLS, session)
    upload(&mut b, "name=w", "B0undary", many_parts(1000)).await;
    for (make, boundary) in [
        (many_parts as fn(usize) -> Vec<u8>, "B0undary".to_owned()),
        (near_boundaries, "x".repeat(69) + "y"),
    ] {
        // the fastest of three, and at least 10 ms (below that, scheduling noise dominates)
        let mut times = Vec::new();
        for size in [100_000, 800_000] {
            let body = make(size);
            let mut best = Duration::MAX;
            for _ in 0..3 {
                let (s, text, t) = upload(&mut b, "name=timed", &boundary, body.clone()).await;
                assert!((400..500).contains(&s), "{s} {text}");
                best = best.min(t);
            }
            times.push(best);
        }
        let (t1, t8) = (times[0], times[1]);
        let ratio = t8.as_secs_f64() / t1.as_secs_f64().max(0.010);
        assert!(
            ratio < 16.0 && t8 < Duration::from_secs(2),
            "100 KB took {t1:?}, 800 KB took {t8:?} (ratio {ratio:.1}, quadratic is 64)"
        );
    }

    // the admin listener stays responsive while two large uploads are parsed
    let admin = format!("http://{}/healthz", k.running.admin_addr);
    let plain = reqwest::Client::new();
    let mut uploads = Vec::new();
    for i in 0..2 {
        let mut c = logged_in(&k, USER, PASSWORD).await;
        uploads.push(tokio::spawn(async move {
            upload(&mut c, &format!("name=u{i}"), "B0undary", many_parts(480_000)).await
        }));
    }
    let mut worst = Duration::ZERO;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) && !uploads.iter().all(|u| u.is_finished()) {
        let t = Instant::now();
        let r = plain.get(&admin).timeout(Duration::from_secs(15)).send().await.unwrap();
        assert!(r.status().is_success());
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for u in uploads {
        let (_, _, took) = u.await.unwrap();
        assert!(took < Duration::from_secs(3), "a 480 KB upload took {took:?}");
    }
    assert!(
        worst < Duration::from_millis(500),
        "admin /healthz took {worst:?} during uploads"
    );
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorised_upload_is_refused_before_its_body_is_read() {
    let k = Kfsec::start("").await;
    let kc = Kubectl::new(k._dir.path());
    profiles(&kc, &[("user1", USER)]).await;
    add_user2(&k).await;
    let mut other = logged_in(&k, USER2, PASSWORD2).await;
    // 50 MB: the answer must not wait for it
    let mut big =
        b"--B0undary\r\nContent-Disposition: form-data; name=\"uploadfile\"; filename=\"p.yaml\"\r\n\r\n".to_vec();
    big.resize(50 << 20, b'a');
    for query in ["name=x&namespace=user1", "name=x&namespace=nobody-here"] {
        let t = Instant::now();
        let r = other
            .send(
                other
                    .http
                    .post(other.url(&format!("/pipeline/apis/v2beta1/pipelines/upload?{query}")))
                    .header("content-type", "multipart/form-data; boundary=B0undary")
                    .timeout(Duration::from_secs(20))
                    .body(big.clone()),
            )
            .await;
        let took = t.elapsed();
        assert_eq!(r.status(), 403, "{query}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["code"], 7, "{v}");
        assert!(took < Duration::from_secs(1), "403 after {took:?}");
    }
    // a version upload to someone else's pipeline likewise
    let mut owner = logged_in(&k, USER, PASSWORD).await;
    let ir =
        "pipelineInfo:\n  name: hello\nroot:\n  dag:\n    tasks: {}\nschemaVersion: 2.1.0\nsdkVersion: kfp-2.14.6\n";
    let mut body =
        b"--B0undary\r\nContent-Disposition: form-data; name=\"uploadfile\"; filename=\"p.yaml\"\r\n\r\n".to_vec();
    body.extend_from_slice(ir.as_bytes());
    body.extend_from_slice(b"\r\n--B0undary--\r\n");
    let (s, text, _) = upload(&mut owner, "name=mine&namespace=user1", "B0undary", body).await;
    assert_eq!(s, 200, "{text}");
    let pid = serde_json::from_str::<serde_json::Value>(&text).unwrap()["pipeline_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let t = Instant::now();
    let r = other
        .send(
            other
                .http
                .post(other.url(&format!(
                    "/pipeline/apis/v2beta1/pipelines/upload_version?pipelineid={pid}&name=v2"
                )))
                .header("content-type", "multipart/form-data; boundary=B0undary")
                .timeout(Duration::from_secs(20))
                .body(big),
        )
        .await;
    assert_eq!(r.status(), 403);
    assert!(t.elapsed() < Duration::from_secs(1), "403 after {:?}", t.elapsed());
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_packages_have_a_namespace_quota() {
    let k = Kfsec::start("pipelines:\n  maxPackagesPerNamespace: 2\n  maxPackageBytesPerNamespace: 4096\n").await;
    let kc = Kubectl::new(k._dir.path());
    profiles(&kc, &[("user1", USER)]).await;
    let mut owner = logged_in(&k, USER, PASSWORD).await;
    let ir = |name: &str| {
        format!(
            "pipelineInfo:\n  name: {name}\nroot:\n  dag:\n    tasks: {{}}\nschemaVersion: 2.1.0\nsdkVersion: kfp-2.14.6\n"
        )
    };
    let part = |text: &str| {
        let mut body =
            b"--B0undary\r\nContent-Disposition: form-data; name=\"uploadfile\"; filename=\"p.yaml\"\r\n\r\n".to_vec();
        body.extend_from_slice(text.as_bytes());
        body.extend_from_slice(b"\r\n--B0undary--\r\n");
        body
    };
    let ok = eventually(|| async {
        let mut c = logged_in(&k, USER, PASSWORD).await;
        upload(&mut c, "name=p1&namespace=user1", "B0undary", part(&ir("p1")))
            .await
            .0
            == 200
    })
    .await;
    assert!(ok);
    let (s, text, _) = upload(&mut owner, "name=p2&namespace=user1", "B0undary", part(&ir("p2"))).await;
    assert_eq!(s, 200, "{text}");
    // a third package is over the count
    let (s, text, _) = upload(&mut owner, "name=p3&namespace=user1", "B0undary", part(&ir("p3"))).await;
    assert_eq!(s, 429, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["code"], 8, "{v}");
    assert!(v["message"].as_str().unwrap().contains("quota"), "{v}");
    // also through the JSON create path, and for shared pipelines over the byte budget
    let big = ir("big") + &format!("# {}\n", "x".repeat(5000));
    let (s, text, _) = upload(&mut owner, "name=shared-big", "B0undary", part(&big)).await;
    assert_eq!(s, 429, "{text}");
    let r = owner
        .send(
            owner
                .http
                .post(owner.url("/pipeline/apis/v2beta1/pipelines/create"))
                .json(&serde_json::json!({
                    "pipeline": {"display_name": "p4", "namespace": "user1"},
                    "pipeline_version": {"display_name": "p4", "pipeline_spec": {"pipelineInfo": {"name": "p4"}, "root": {"dag": {"tasks": {}}}, "schemaVersion": "2.1.0"}},
                })),
        )
        .await;
    assert_eq!(r.status(), 429);
    // deleting frees the quota
    let list: serde_json::Value = owner
        .get("/pipeline/apis/v2beta1/pipelines?namespace=user1")
        .await
        .json()
        .await
        .unwrap();
    let id = list["pipelines"][0]["pipeline_id"].as_str().unwrap().to_owned();
    let r = owner
        .send(
            owner
                .http
                .delete(owner.url(&format!("/pipeline/apis/v2beta1/pipelines/{id}?cascade=true"))),
        )
        .await;
    assert_eq!(r.status(), 200);
    let (s, text, _) = upload(&mut owner, "name=p3&namespace=user1", "B0undary", part(&ir("p3"))).await;
    assert_eq!(s, 200, "{text}");
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kfam_discloses_memberships_only_to_those_who_may_see_them() {
    let k = Kfsec::start("").await;
    add_user2(&k).await;
    let kc = Kubectl::new(k._dir.path());
    profiles(&kc, &[("user1", USER), ("user2", USER2)]).await;
    // a cluster admin by name
    let crb = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: boss\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: cluster-admin\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: User\n  name: boss@example.org\n";
    assert_eq!(kc.run(&["apply", "-f", "-"], Some(crb)).await.0, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut one = logged_in(&k, USER, PASSWORD).await;
    let mut two = logged_in(&k, USER2, PASSWORD2).await;
    let names = |v: &serde_json::Value| -> Vec<(String, String)> {
        v["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["referredNamespace"].as_str().unwrap().to_owned(),
                    b["user"]["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    for q in ["", "?namespace=user1", &format!("?user={USER}"), "?role=admin"] {
        let r = two.get(&format!("/kfam/v1/bindings{q}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json; charset=UTF-8");
        let v: serde_json::Value = r.json().await.unwrap();
        let seen = names(&v);
        assert!(
            seen.iter().all(|(ns, _)| ns == "user2"),
            "user2 saw {seen:?} with {q:?}"
        );
    }
    let v: serde_json::Value = one.get("/kfam/v1/bindings").await.json().await.unwrap();
    assert_eq!(names(&v), vec![("user1".to_owned(), USER.to_owned())]);
    // once a contributor, user2 sees user1's bindings too
    let binding = serde_json::json!({
        "user": {"kind": "User", "name": USER2},
        "referredNamespace": "user1",
        "RoleRef": {"kind": "ClusterRole", "name": "edit"},
    });
    let r = one
        .send(one.http.post(one.url("/kfam/v1/bindings")).json(&binding))
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = two.get("/kfam/v1/bindings?namespace=user1").await.json().await.unwrap();
    assert_eq!(names(&v).len(), 2, "{v}");
    // a cluster admin sees everything
    let (code, out, err) = kc.run(&["get", "--raw", "/kfam/v1/bindings"], None).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(names(&v).len(), 3, "{v}");

    // clusteradmin: only about the caller, unless the caller is a cluster admin
    let r = two.get("/kfam/v1/role/clusteradmin?user=boss@example.org").await;
    let body = r.text().await.unwrap();
    assert_ne!(body, "true", "user2 learnt who the cluster admins are");
    let r = two.get(&format!("/kfam/v1/role/clusteradmin?user={USER2}")).await;
    assert_eq!(r.text().await.unwrap(), "false");
    let (code, out, err) = kc
        .run(
            &["get", "--raw", "/kfam/v1/role/clusteradmin?user=boss@example.org"],
            None,
        )
        .await;
    assert_eq!((code, out.as_str()), (0, "true"), "{err}");
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_when_the_contributor_binding_is_removed() {
    let k = Kfsec::start("").await;
    add_user2(&k).await;
    let kc = Kubectl::new(k._dir.path());
    profiles(&kc, &[("user1", USER)]).await;
    let mut owner = logged_in(&k, USER, PASSWORD).await;
    let mut other = logged_in(&k, USER2, PASSWORD2).await;
    let binding = serde_json::json!({
        "user": {"kind": "User", "name": USER2},
        "referredNamespace": "user1",
        "RoleRef": {"kind": "ClusterRole", "name": "edit"},
    });
    let r = owner
        .send(owner.http.post(owner.url("/kfam/v1/bindings")).json(&binding))
        .await;
    assert_eq!(r.status(), 200);
    for path in [
        "/api/v1/namespaces/user1/configmaps?watch=true&timeoutSeconds=60",
        "/api/v1/namespaces/user1/configmaps?watch=1&resourceVersion=1&timeoutSeconds=60",
    ] {
        let r = other.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        let mut stream = r;
        // the stream is live: a new object arrives
        let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-NAME\n  namespace: user1\n";
        let n = if path.contains("resourceVersion") { "b" } else { "a" };
        assert_eq!(kc.run(&["apply", "-f", "-"], Some(&cm.replace("NAME", n))).await.0, 0);
        let mut seen = String::new();
        let t = Instant::now();
        while !seen.contains(&format!("cm-{n}")) && t.elapsed() < Duration::from_secs(5) {
            match tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await {
                Ok(Ok(Some(c))) => seen.push_str(&String::from_utf8_lossy(&c)),
                _ => break,
            }
        }
        assert!(seen.contains(&format!("cm-{n}")), "{seen}");
        // revoke; the stream must end (an ERROR event with a 403 Status, then EOF)
        let r = owner
            .send(owner.http.delete(owner.url("/kfam/v1/bindings")).json(&binding))
            .await;
        assert_eq!(r.status(), 200);
        let t = Instant::now();
        let mut tail = String::new();
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(3), stream.chunk()).await {
                Ok(Ok(None)) | Ok(Err(_)) => break true,
                Ok(Ok(Some(c))) => tail.push_str(&String::from_utf8_lossy(&c)),
                Err(_) => break false,
            }
        };
        assert!(
            ended && t.elapsed() < Duration::from_secs(3),
            "watch still open after revocation: {tail}"
        );
        assert!(tail.contains("\"ERROR\"") && tail.contains("403"), "{tail}");
        // activity after revocation is not streamed (it ended)
        let r = owner
            .send(owner.http.post(owner.url("/kfam/v1/bindings")).json(&binding))
            .await;
        assert_eq!(r.status(), 200);
    }
    k.running.shutdown().await;
}
