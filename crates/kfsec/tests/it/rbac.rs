//! Multi-tenancy with real kubectl 1.32: profiles, Kubeflow's can-i answers, PodDefaults,
//! Forbidden messages, KFAM contributors (added and revoked at once), bad input.

use std::path::{Path, PathBuf};

use crate::harness::*;

const USER2: &str = "test.user2@example.org";
const PASSWORD2: &str = "user2 password here";

pub struct Kubectl {
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

impl Kubectl {
    pub fn new(data_dir: &Path) -> Self {
        Self::with_kubeconfig(&data_dir.join("admin.kubeconfig"))
    }

    pub fn with_kubeconfig(kubeconfig: &Path) -> Self {
        Self {
            kubeconfig: kubeconfig.to_path_buf(),
            cache: tempfile::tempdir().unwrap(),
        }
    }

    pub async fn run(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        use tokio::io::AsyncWriteExt;
        let mut c = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl 1.32 is on the machine");
        let mut input = c.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).await.unwrap();
        }
        drop(input);
        let o = c.wait_with_output().await.unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

const PROFILES: &str = "apiVersion: kubeflow.org/v1
kind: Profile
metadata:
  name: user1
spec:
  owner:
    kind: User
    name: test.user1@example.org
---
apiVersion: kubeflow.org/v1
kind: Profile
metadata:
  name: user2
spec:
  owner:
    kind: User
    name: test.user2@example.org
  resourceQuotaSpec:
    hard:
      cpu: \"2\"
";

const PODDEFAULT: &str = "apiVersion: kubeflow.org/v1alpha1
kind: PodDefault
metadata:
  name: add-gcp-secret
  namespace: user1
spec:
  selector:
    matchLabels:
      add-gcp-secret: \"true\"
  desc: add gcp credential
  env:
  - name: GOOGLE_APPLICATION_CREDENTIALS
    value: /secret/gcp/user-gcp-sa.json
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_gives_kubeflows_answers() {
    let k = Kfsec::start("").await;
    let kc = Kubectl::new(k._dir.path());
    let (code, out, err) = kc.run(&["apply", "-f", "-"], Some(PROFILES)).await;
    assert_eq!(code, 0, "{out}{err}");
    // the controller creates the namespaces, bindings, service accounts and quota
    let mut ready = false;
    for _ in 0..50 {
        let (_, out, _) = kc
            .run(&["get", "rolebindings", "-n", "user2", "-o", "name"], None)
            .await;
        if out.contains("namespaceAdmin") && out.contains("default-editor") {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "profile controller did not create the bindings");
    let (code, out, _) = kc.run(&["get", "profiles"], None).await;
    assert_eq!(code, 0);
    assert!(out.contains("user1") && out.contains("user2"), "{out}");
    let (_, out, _) = kc
        .run(
            &[
                "get",
                "namespace",
                "user1",
                "-o",
                "jsonpath={.metadata.annotations.owner}",
            ],
            None,
        )
        .await;
    assert_eq!(out, USER);
    let (_, out, _) = kc
        .run(
            &[
                "get",
                "resourcequota",
                "kf-resource-quota",
                "-n",
                "user2",
                "-o",
                "jsonpath={.spec.hard.cpu}",
            ],
            None,
        )
        .await;
    assert_eq!(out, "2");
    let (_, out, _) = kc
        .run(&["get", "serviceaccounts", "-n", "user1", "-o", "name"], None)
        .await;
    assert!(
        out.contains("default-editor") && out.contains("default-viewer"),
        "{out}"
    );

    // the two lines of the issue
    let (code, out, _) = kc
        .run(
            &[
                "auth",
                "can-i",
                "list",
                "experiments.kubeflow.org",
                "-n",
                "user2",
                "--as",
                USER2,
            ],
            None,
        )
        .await;
    assert_eq!((code, out.trim()), (0, "yes"));
    let (code, out, _) = kc
        .run(
            &[
                "auth",
                "can-i",
                "list",
                "experiments.kubeflow.org",
                "-n",
                "user1",
                "--as",
                USER2,
            ],
            None,
        )
        .await;
    assert_eq!((code, out.trim()), (1, "no"));

    // PodDefaults: apply twice (create, then unchanged), and Forbidden across tenants
    let (code, out, err) = kc.run(&["apply", "-f", "-"], Some(PODDEFAULT)).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created"), "{out}");
    let (code, out, _) = kc.run(&["apply", "-f", "-"], Some(PODDEFAULT)).await;
    assert_eq!(code, 0);
    assert!(out.contains("unchanged") || out.contains("configured"), "{out}");
    let (code, _, err) = kc
        .run(&["get", "poddefaults", "-n", "user1", "--as", USER2], None)
        .await;
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("poddefaults.kubeflow.org is forbidden: User \"{USER2}\" cannot list resource \"poddefaults\" in API group \"kubeflow.org\" in the namespace \"user1\"")),
        "{err}"
    );
    let (code, out, _) = kc.run(&["get", "poddefaults", "-n", "user1", "--as", USER], None).await;
    assert_eq!(code, 0);
    assert!(out.contains("add-gcp-secret"));

    // a profile owned by someone else's namespace is refused, not taken over
    let (code, _, _) = kc.run(&["create", "namespace", "taken"], None).await;
    assert_eq!(code, 0);
    let stolen = "apiVersion: kubeflow.org/v1\nkind: Profile\nmetadata:\n  name: taken\nspec:\n  owner:\n    kind: User\n    name: mallory@example.org\n";
    kc.run(&["apply", "-f", "-"], Some(stolen)).await;
    let mut message = String::new();
    for _ in 0..50 {
        let (_, out, _) = kc
            .run(
                &[
                    "get",
                    "profile",
                    "taken",
                    "-o",
                    "jsonpath={.status.conditions[0].message}",
                ],
                None,
            )
            .await;
        if !out.is_empty() {
            message = out;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        message,
        "namespace already exist, but not owned by profile creator mallory@example.org"
    );
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kfam_contributors_grant_and_revoke_at_once() {
    let k = Kfsec::start("").await;
    k.add_user(USER2, PASSWORD2).await;
    let kc = Kubectl::new(k._dir.path());
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(PROFILES)).await;
    assert_eq!(code, 0, "{err}");
    let can_user2 = || async {
        kc.run(
            &[
                "auth",
                "can-i",
                "list",
                "experiments.kubeflow.org",
                "-n",
                "user1",
                "--as",
                USER2,
            ],
            None,
        )
        .await
        .0 == 0
    };
    eventually(|| async {
        kc.run(&["get", "rolebinding", "namespaceAdmin", "-n", "user1"], None)
            .await
            .0
            == 0
    })
    .await;
    assert!(!can_user2().await);

    let mut owner = k.client();
    assert_eq!(owner.login("/", USER, PASSWORD).await.0.status(), 200);
    let mut other = k.client();
    assert_eq!(other.login("/", USER2, PASSWORD2).await.0.status(), 200);
    let binding = serde_json::json!({
        "user": {"kind": "User", "name": USER2},
        "referredNamespace": "user1",
        "RoleRef": {"kind": "ClusterRole", "name": "edit"},
    });
    // user2 cannot make themselves a contributor of user1's workspace
    let r = other
        .send(other.http.post(other.url("/kfam/v1/bindings")).json(&binding))
        .await;
    assert_eq!(r.status(), 403);
    // the owner can, and it works at once
    let r = owner
        .send(owner.http.post(owner.url("/kfam/v1/bindings")).json(&binding))
        .await;
    assert_eq!(r.status(), 200);
    assert!(can_user2().await, "contributor can list experiments in user1");
    let (_, out, _) = kc
        .run(
            &[
                "get",
                "rolebinding",
                "user-test-user2-example-org-clusterrole-edit",
                "-n",
                "user1",
                "-o",
                "jsonpath={.roleRef.name} {.metadata.annotations.role} {.metadata.annotations.user}",
            ],
            None,
        )
        .await;
    assert_eq!(out, format!("kubeflow-edit edit {USER2}"));
    let list: serde_json::Value = owner
        .get("/kfam/v1/bindings?namespace=user1")
        .await
        .json()
        .await
        .unwrap();
    let bindings = list["bindings"].as_array().unwrap();
    assert!(
        bindings
            .iter()
            .any(|b| b["user"]["name"] == USER2 && b["RoleRef"]["name"] == "edit"),
        "{list}"
    );
    assert!(
        bindings
            .iter()
            .any(|b| b["user"]["name"] == USER && b["RoleRef"]["name"] == "admin"),
        "{list}"
    );
    // removal revokes at once
    let r = owner
        .send(owner.http.delete(owner.url("/kfam/v1/bindings")).json(&binding))
        .await;
    assert_eq!(r.status(), 200);
    assert!(!can_user2().await, "revoked at once");
    // the cluster-admin query
    let r = owner
        .get(&format!("/kfam/v1/role/clusteradmin?user={USER}"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(r, "false");
    let r = owner.get("/kfam/v1/role/clusteradmin?user=admin@kfsec.local").await;
    let body = r.text().await.unwrap();
    assert_eq!(
        body, "false",
        "the bootstrap admin's rights come from its group, not its name"
    );
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_input_is_a_kubernetes_status() {
    let k = Kfsec::start("").await;
    let kc = Kubectl::new(k._dir.path());
    let (code, _, err) = kc
        .run(
            &["apply", "-f", "-"],
            Some("apiVersion: v1\nkind: ConfigMap\nmetadata: [oops\n"),
        )
        .await;
    assert_ne!(code, 0);
    assert!(!err.is_empty());
    let (code, _, err) = kc.run(&["get", "frobnicators"], None).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("the server doesn't have a resource type \"frobnicators\""),
        "{err}"
    );
    let (code, _, err) = kc.run(&["get", "pods", "-l", "a in (b", "-A"], None).await;
    assert_ne!(code, 0, "{err}");
    // raw HTTP with the admin identity: malformed JSON, wrong kind, huge body
    let mut b = k.client();
    b.login("/", USER, PASSWORD).await;
    let url = "/api/v1/namespaces/default/configmaps";
    for (body, want) in [
        ("{", 400),
        (
            "{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{\"name\":\"x\"}}",
            400,
        ),
    ] {
        let r = b
            .send(
                b.http
                    .post(b.url(url))
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await;
        assert!(r.status() == want || r.status() == 403, "{}", r.status());
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["kind"], "Status");
    }
    let huge = vec![b' '; 4 * 1024 * 1024];
    let r = b
        .send(
            b.http
                .post(b.url(url))
                .header("content-type", "application/json")
                .body(huge),
        )
        .await;
    assert!(r.status() == 413 || r.status() == 403, "{}", r.status());
    // curl, still sending a 12 MiB upload when the answer is known, reads the 413 (not a reset)
    let work = tempfile::tempdir().unwrap();
    let (ca, upload) = (work.path().join("ca.pem"), work.path().join("upload.json"));
    std::fs::write(&ca, &k.running.ca_pem).unwrap();
    std::fs::write(&upload, vec![b' '; 12 * 1024 * 1024]).unwrap();
    let session = format!("authservice_session={}", b.cookies["authservice_session"]);
    let o = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "content-type: application/json",
        ])
        .args(["-H", &format!("cookie: {session}"), "--cacert"])
        .arg(&ca)
        .arg("--data-binary")
        .arg(format!("@{}", upload.display()))
        .arg(b.url("/api/v1/namespaces/user1/configmaps"))
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "413",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    k.running.shutdown().await;
}
