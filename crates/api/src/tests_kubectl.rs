//! End-to-end test with the real `kubectl` (1.32) against the router served over plain HTTP on
//! 127.0.0.1:0, through the fake bearer-token identity layer. Skipped (with a note) when no
//! kubectl binary is installed; `KFSEC_KUBECTL` overrides the path.
//!
//! Invariants: test-only; kubectl runs with its own KUBECONFIG, HOME and cache dir in a temp dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::testutil::{fixture, serve_as};

struct Kubectl {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    /// `servers`: (user, URL of the listener that authenticates as that user).
    fn new(bin: PathBuf, servers: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
        for (u, url) in servers {
            cfg.push_str(&format!("- name: {u}\n  cluster:\n    server: {url}\n"));
        }
        cfg.push_str("users:\n");
        for (u, _) in servers {
            cfg.push_str(&format!("- name: {u}\n  user:\n    token: {u}\n"));
        }
        cfg.push_str("contexts:\n");
        for (u, _) in servers {
            cfg.push_str(&format!(
                "- name: {u}\n  context:\n    cluster: {u}\n    user: {u}\n    namespace: x\n"
            ));
        }
        cfg.push_str(&format!("current-context: {}\n", servers[0].0));
        std::fs::write(dir.path().join("config"), cfg).unwrap();
        Self { bin, dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("KUBECONFIG", self.dir.path().join("config"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .arg("--request-timeout=20s")
            .args(args);
        c
    }

    fn file(&self, name: &str, body: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_string_lossy().into_owned()
    }

    async fn run(&self, args: &[&str]) -> Out {
        let mut c = self.command(args);
        let out = tokio::task::spawn_blocking(move || c.output()).await.unwrap().unwrap();
        let o = Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "$ kubectl {} -> exit {}\n{}{}",
            args.join(" "),
            o.code,
            o.stdout,
            o.stderr
        );
        o
    }

    /// `kubectl --context admin ARGS`, which must succeed.
    async fn admin(&self, args: &[&str]) -> String {
        let mut a = vec!["--context", "admin"];
        a.extend_from_slice(args);
        self.ok(&a).await
    }

    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert_eq!(o.code, 0, "kubectl {args:?} failed: {}{}", o.stdout, o.stderr);
        o.stdout
    }
}

fn kubectl_binary() -> Option<PathBuf> {
    let p = std::env::var_os("KFSEC_KUBECTL").map_or_else(|| PathBuf::from("/usr/bin/kubectl"), PathBuf::from);
    Path::new(&p).exists().then_some(p)
}

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c1\n  labels:\n    app: web\ndata:\n  a: \"1\"\n";
const CM2: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c1\n  labels:\n    app: web\ndata:\n  a: \"2\"\n  b: \"3\"\n";
const PD: &str = "apiVersion: kubeflow.org/v1alpha1\nkind: PodDefault\nmetadata:\n  name: add-gcp-secret\n  namespace: x\nspec:\n  desc: add gcp credential\n  selector:\n    matchLabels:\n      add-gcp-secret: \"true\"\n  env:\n  - name: GOOGLE_APPLICATION_CREDENTIALS\n    value: /secret/gcp/user-gcp-sa.json\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kubectl() {
    let Some(bin) = kubectl_binary() else {
        eprintln!("kubectl not installed: skipping the real-kubectl test");
        return;
    };
    let f = fixture();
    // kubectl only sends credentials over TLS, so each test user gets its own listener.
    let servers = [
        ("alice", serve_as(&f.api, "alice").await),
        ("bob", serve_as(&f.api, "bob").await),
        ("admin", serve_as(&f.api, "admin").await),
    ];
    let k = Kubectl::new(bin, &servers);

    // Discovery + version.
    let v = k.ok(&["version", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.32.0-kfsec");

    // Namespaces.
    let out = k.run(&["get", "namespaces"]).await;
    assert_eq!(out.code, 0);
    assert!(out.stderr.contains("No resources found") || out.stdout.contains("No resources found"));
    assert!(
        k.ok(&["create", "namespace", "x"])
            .await
            .contains("namespace/x created")
    );
    let out = k.ok(&["get", "namespaces"]).await;
    assert!(
        out.contains("NAME") && out.contains("x ") && out.contains("Active"),
        "{out}"
    );
    let out = k
        .ok(&[
            "get",
            "ns",
            "x",
            "-o",
            "jsonpath={.metadata.labels.kubernetes\\.io/metadata\\.name}",
        ])
        .await;
    assert_eq!(out, "x");

    // apply: create, configure, unchanged (ConfigMap → strategic merge patch).
    let cm = k.file("cm.yaml", CM);
    assert!(k.ok(&["apply", "-f", &cm]).await.contains("configmap/c1 created"));
    let cm2 = k.file("cm2.yaml", CM2);
    assert!(k.ok(&["apply", "-f", &cm2]).await.contains("configmap/c1 configured"));
    assert!(k.ok(&["apply", "-f", &cm2]).await.contains("configmap/c1 unchanged"));
    assert_eq!(
        k.ok(&["get", "configmap", "c1", "-o", "jsonpath={.data.a}{.data.b}"])
            .await,
        "23"
    );
    let out = k.ok(&["get", "cm"]).await;
    assert!(out.contains("c1") && out.contains("DATA"), "{out}");
    assert!(
        k.ok(&["get", "cm", "-l", "app=web", "-o", "name"])
            .await
            .contains("configmap/c1")
    );
    assert!(k.ok(&["label", "cm", "c1", "tier=fe"]).await.contains("labeled"));
    assert!(
        k.ok(&["patch", "cm", "c1", "--type=merge", "-p", "{\"data\":{\"c\":\"4\"}}"])
            .await
            .contains("patched")
    );
    assert!(
        k.ok(&[
            "patch",
            "cm",
            "c1",
            "--type=json",
            "-p",
            "[{\"op\":\"remove\",\"path\":\"/data/c\"}]"
        ])
        .await
        .contains("patched")
    );

    // apply of a CRD-like kind (merge patch), twice.
    let pd = k.file("pd.yaml", PD);
    assert!(
        k.ok(&["apply", "-f", &pd])
            .await
            .contains("poddefault.kubeflow.org/add-gcp-secret created")
    );
    let pd2 = k.file("pd2.yaml", &PD.replace("add gcp credential", "changed"));
    assert!(
        k.ok(&["apply", "-f", &pd2])
            .await
            .contains("poddefault.kubeflow.org/add-gcp-secret configured")
    );
    let out = k.ok(&["get", "poddefaults", "-n", "x", "-o", "json"]).await;
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["items"][0]["spec"]["desc"], "changed");
    assert_eq!(list["items"][0]["kind"], "PodDefault");
    let out = k.ok(&["get", "poddefault", "add-gcp-secret", "-o", "yaml"]).await;
    assert!(out.contains("GOOGLE_APPLICATION_CREDENTIALS"));

    // create -f with generateName.
    let generated = k.file(
        "gen.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  generateName: gen-\n",
    );
    assert!(k.ok(&["create", "-f", &generated]).await.contains("configmap/gen-"));

    // Watch: a change made while `kubectl get -w` runs shows up.
    let mut w = k.command(&["get", "configmaps", "--watch"]);
    let child = w.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cms = crate::ApiServer::resource("", "v1", "configmaps").unwrap();
    f.api
        .create_object(cms, "x", json!({"metadata": {"name": "watched"}}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let pid = child.id();
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "$ kubectl get configmaps --watch (killed)\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("c1 ") && text.contains("watched ") && text.matches("NAME").count() == 1,
        "{text}"
    );
    // A server-side timeout ends the watch cleanly (exit 0).
    let o = k
        .run(&["get", "configmaps", "--watch-only", "--request-timeout=2s"])
        .await;
    assert!(
        o.code == 0 || o.stderr.contains("timeout") || o.stderr.contains("deadline"),
        "{}",
        o.stderr
    );

    // delete.
    assert!(
        k.ok(&["delete", "configmap", "c1"])
            .await
            .contains("configmap \"c1\" deleted")
    );
    assert!(k.ok(&["delete", "-f", &pd]).await.contains("deleted"));
    let o = k.run(&["get", "configmap", "c1"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains("Error from server (NotFound): configmaps \"c1\" not found"),
        "{}",
        o.stderr
    );

    // auth can-i.
    let o = k.run(&["auth", "can-i", "list", "pods", "-n", "x"]).await;
    assert_eq!((o.code, o.stdout.trim()), (0, "yes"));
    let o = k.run(&["auth", "can-i", "list", "pods", "-n", "y"]).await;
    assert_eq!((o.code, o.stdout.trim()), (1, "no"));
    let o = k
        .run(&["auth", "can-i", "create", "poddefaults.kubeflow.org", "-n", "x"])
        .await;
    assert_eq!((o.code, o.stdout.trim()), (0, "yes"));
    let out = k.ok(&["auth", "can-i", "--list", "-n", "x"]).await;
    assert!(out.contains("selfsubjectaccessreviews.authorization.k8s.io"), "{out}");

    // Impersonation.
    let o = k
        .run(&["auth", "can-i", "list", "configmaps", "-n", "x", "--as", "bob"])
        .await;
    assert_eq!((o.code, o.stdout.trim()), (0, "yes"));
    let o = k
        .run(&["auth", "can-i", "list", "secrets", "-n", "x", "--as", "bob"])
        .await;
    assert_eq!((o.code, o.stdout.trim()), (1, "no"));
    assert!(
        k.ok(&["get", "configmaps", "-n", "x", "--as", "bob", "-o", "name"])
            .await
            .contains("configmap/watched")
    );
    let o = k.run(&["get", "configmaps", "-n", "x", "--as", "carol"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("users \"carol\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{}",
        o.stderr
    );

    // Forbidden as another user.
    let o = k.run(&["--context", "bob", "get", "namespaces"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("Error from server (Forbidden): namespaces is forbidden: User \"bob\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"),
        "{}",
        o.stderr
    );
    let o = k
        .run(&["--context", "bob", "create", "configmap", "z", "--from-literal=a=b"])
        .await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("cannot create resource \"configmaps\""),
        "{}",
        o.stderr
    );

    // Typed-client (protobuf) creates, cluster-scoped kinds and all-namespace lists, as admin.
    assert!(
        k.admin(&["create", "configmap", "lit", "--from-literal=a=b"])
            .await
            .contains("configmap/lit created")
    );
    assert!(
        k.admin(&["create", "secret", "generic", "s1", "--from-literal=password=hunter2"])
            .await
            .contains("secret/s1 created")
    );
    assert_eq!(
        k.admin(&["get", "secret", "s1", "-o", "jsonpath={.data.password}"])
            .await,
        "aHVudGVyMg=="
    );
    assert!(
        k.admin(&["create", "serviceaccount", "sa1"])
            .await
            .contains("serviceaccount/sa1 created")
    );
    assert!(
        k.admin(&["create", "role", "r1", "--verb=get", "--resource=pods"])
            .await
            .contains("role.rbac.authorization.k8s.io/r1 created")
    );
    assert!(
        k.admin(&["create", "rolebinding", "rb1", "--role=r1", "--user=bob"])
            .await
            .contains("rolebinding.rbac.authorization.k8s.io/rb1 created")
    );
    assert!(
        k.admin(&["create", "clusterrole", "cr1", "--verb=list", "--resource=namespaces"])
            .await
            .contains("created")
    );
    assert!(
        k.admin(&[
            "create",
            "clusterrolebinding",
            "crb1",
            "--clusterrole=cr1",
            "--group=team-a"
        ])
        .await
        .contains("created")
    );
    assert!(
        k.admin(&["create", "quota", "q1", "--hard=pods=10"])
            .await
            .contains("resourcequota/q1 created")
    );
    let out = k.admin(&["get", "rolebinding", "rb1", "-o", "json"]).await;
    let rb: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&rb["roleRef"]["name"], &rb["subjects"][0]["name"]),
        (&json!("r1"), &json!("bob"))
    );
    assert!(k.admin(&["get", "configmaps", "-A"]).await.contains("lit"));
    let out = k
        .admin(&["get", "--raw", "/api/v1/namespaces/x/configmaps?limit=1"])
        .await;
    let l: Value = serde_json::from_str(&out).unwrap();
    assert!(l["metadata"]["continue"].is_string());
    let profile = k.file(
        "profile.yaml",
        "apiVersion: kubeflow.org/v1\nkind: Profile\nmetadata:\n  name: team-a\nspec:\n  owner:\n    kind: User\n    name: alice@example.com\n",
    );
    assert!(
        k.admin(&["apply", "-f", &profile])
            .await
            .contains("profile.kubeflow.org/team-a created")
    );
    assert!(
        k.admin(&["get", "profiles.v1beta1.kubeflow.org", "team-a", "-o", "name"])
            .await
            .contains("team-a")
    );
    let replaced = k.file(
        "lit.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: lit\n  namespace: x\ndata:\n  a: replaced\n",
    );
    assert!(
        k.admin(&["replace", "-f", &replaced])
            .await
            .contains("configmap/lit replaced")
    );
    assert!(
        k.admin(&["delete", "namespace", "x"])
            .await
            .contains("namespace \"x\" deleted")
    );
    let o = k
        .run(&["--context", "admin", "get", "configmap", "lit", "-n", "x"])
        .await;
    assert_eq!(o.code, 1);
}

impl Kubectl {
    /// Runs kubectl, which must exit 1 with `text` in its error output.
    async fn fails_with(&self, args: &[&str], text: &str) {
        let o = self.run(args).await;
        assert_eq!(o.code, 1, "kubectl {args:?}: {}", o.stdout);
        assert!(o.stderr.contains(text), "{}", o.stderr);
    }
}

/// The OpenAPI documents with the real kubectl: `explain` of built-in and Kubeflow kinds (v3),
/// `create -f` of the review kinds with validation on (v2 protobuf, client-side), and unknown
/// fields refused the way kube-apiserver refuses them (server-side, `fieldValidation=Strict`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_openapi_explain_and_validation() {
    let Some(bin) = kubectl_binary() else {
        eprintln!("kubectl not installed: skipping the real-kubectl test");
        return;
    };
    let f = fixture();
    let servers = [
        ("admin", serve_as(&f.api, "admin").await),
        ("alice", serve_as(&f.api, "alice").await),
    ];
    let k = Kubectl::new(bin, &servers);

    let out = k.ok(&["explain", "profile"]).await;
    assert!(
        out.contains("KIND:       Profile") && out.contains("VERSION:    v1") && out.contains("spec\t<Object>"),
        "{out}"
    );
    let out = k.ok(&["explain", "profile.spec.owner"]).await;
    assert!(
        out.contains("FIELD: owner <Object>") && out.contains("The profile owner") && out.contains("name\t<string>"),
        "{out}"
    );
    let out = k.ok(&["explain", "configmap.data"]).await;
    assert!(out.contains("FIELD: data <map[string]string>"), "{out}");
    let out = k
        .ok(&["explain", "--api-version=kubeflow.org/v1beta1", "profile"])
        .await;
    assert!(out.contains("VERSION:    v1beta1"), "{out}");
    let out = k.ok(&["explain", "pods.spec.containers.resources"]).await;
    assert!(out.contains("limits\t<map[string]Quantity>"), "{out}");
    let out = k.ok(&["explain", "poddefault.spec"]).await;
    assert!(out.contains("selector\t<Object> -required-"), "{out}");
    let out = k.ok(&["explain", "selfsubjectreview.status.userInfo"]).await;
    assert!(
        out.contains("GROUP:      authentication.k8s.io") && out.contains("username\t<string>"),
        "{out}"
    );

    // Review kinds validate client-side (no --validate=false needed).
    k.ok(&["create", "namespace", "x"]).await;
    let tr = k.file(
        "tr.yaml",
        "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: not-a-token\n",
    );
    let out = k.ok(&["create", "-f", &tr, "-o", "json"]).await;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&v["kind"], &v["status"]["authenticated"]),
        (&json!("TokenReview"), &json!(false)),
        "{out}"
    );
    let sar = k.file(
        "sar.yaml",
        "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: bob\n  resourceAttributes:\n    verb: list\n    resource: configmaps\n    namespace: x\n",
    );
    let out = k.ok(&["create", "-f", &sar, "-o", "jsonpath={.status.allowed}"]).await;
    assert_eq!(out, "true");
    let bad = k.file(
        "badtr.yaml",
        "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  tokn: x\n",
    );
    k.fails_with(
        &["create", "-f", &bad],
        "unknown field \"tokn\" in io.k8s.api.authentication.v1.TokenReviewSpec",
    )
    .await;

    // Unknown fields of stored kinds: refused by the server (kubectl sends fieldValidation=Strict).
    let cm = k.file(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: x\ndata:\n  a: b\nspec:\n  foo: 1\n",
    );
    k.fails_with(
        &["apply", "-f", &cm],
        "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"spec\"",
    )
    .await;
    let p = k.file(
        "p.yaml",
        "apiVersion: kubeflow.org/v1\nkind: Profile\nmetadata:\n  name: p1\nspec:\n  owner:\n    kind: User\n    name: a@example.com\n  foo: bar\n",
    );
    k.fails_with(
        &["apply", "-f", &p],
        "strict decoding error: unknown field \"spec.foo\"",
    )
    .await;
    // An existing object: the patch is refused as well.
    let good = k.file(
        "good.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: x\ndata:\n  a: b\n",
    );
    k.ok(&["apply", "-f", &good]).await;
    k.fails_with(&["apply", "-f", &cm], "strict decoding error: unknown field \"spec\"")
        .await;
    // --validate=warn: accepted, with kube-apiserver's warning.
    let o = k.run(&["apply", "--validate=warn", "-f", &cm]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("Warning: unknown field \"spec\""), "{}", o.stderr);
}

/// `kubectl apply --server-side`: create, re-apply with a field removed, conflicts with other
/// managers (kubectl's own message), `--force-conflicts`, `--dry-run=server`, the client-side
/// apply migration, and `--show-managed-fields`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kubectl_server_side_apply() {
    let Some(bin) = kubectl_binary() else {
        eprintln!("kubectl not installed: skipping the real-kubectl test");
        return;
    };
    let f = fixture();
    let servers = [
        ("alice", serve_as(&f.api, "alice").await),
        ("admin", serve_as(&f.api, "admin").await),
    ];
    let k = Kubectl::new(bin, &servers);
    k.admin(&["create", "namespace", "x"]).await;
    let get = |what: &'static str| {
        let k = &k;
        async move { k.ok(&["get", "configmap", "c1", "-o", what]).await }
    };

    let cm = k.file("ssa.yaml", CM);
    let out = k.ok(&["apply", "--server-side", "-f", &cm]).await;
    assert!(out.contains("configmap/c1 serverside-applied"), "{out}");
    let plain = get("yaml").await;
    assert!(!plain.contains("managedFields"), "hidden by default: {plain}");
    let shown = k
        .ok(&["get", "configmap", "c1", "-o", "yaml", "--show-managed-fields"])
        .await;
    for want in [
        "managedFields:",
        "manager: kubectl",
        "operation: Apply",
        "fieldsType: FieldsV1",
        "f:a: {}",
    ] {
        assert!(shown.contains(want), "{want} in {shown}");
    }

    // Re-applied without `a` (and with `b`): `a` is gone.
    let without_a = k.file("ssa2.yaml", &CM.replace("  a: \"1\"\n", "  b: \"3\"\n"));
    k.ok(&["apply", "--server-side", "-f", &without_a]).await;
    assert_eq!(get("jsonpath={.data}").await, "{\"b\":\"3\"}");

    // Another manager changes `b`: the next apply conflicts, with kubectl's advice.
    k.ok(&[
        "patch",
        "cm",
        "c1",
        "--type=merge",
        "-p",
        "{\"data\":{\"b\":\"patched\"}}",
    ])
    .await;
    let o = k.run(&["apply", "--server-side", "-f", &without_a]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains("Apply failed with 1 conflict: conflict with \"kubectl-patch\" using v1: .data.b")
            && o.stderr.contains("--force-conflicts"),
        "{}",
        o.stderr
    );
    // --dry-run=server answers but keeps the stored object.
    let out = k
        .ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            &without_a,
        ])
        .await;
    assert!(out.contains("serverside-applied (server dry run)"), "{out}");
    assert_eq!(get("jsonpath={.data.b}").await, "patched");
    // --force-conflicts takes the field back.
    k.ok(&["apply", "--server-side", "--force-conflicts", "-f", &without_a])
        .await;
    assert_eq!(get("jsonpath={.data.b}").await, "3");
    let shown = k
        .ok(&["get", "configmap", "c1", "-o", "yaml", "--show-managed-fields"])
        .await;
    assert!(!shown.contains("kubectl-patch"), "{shown}");
    // kubectl diff --server-side: a server dry-run apply, shown as a diff (exit 1: differences).
    let b4 = k.file("ssa4.yaml", &CM.replace("  a: \"1\"\n", "  b: \"4\"\n"));
    let o = k.run(&["diff", "--server-side", "-f", &b4]).await;
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stdout.contains("+  b: \"4\"") && o.stdout.contains("-  b: \"3\""),
        "{}",
        o.stdout
    );
    assert_eq!(get("jsonpath={.data.b}").await, "3");

    // A cluster-scoped kind, created by apply.
    let ns = k.file(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels:\n    team: a\n",
    );
    let out = k.admin(&["apply", "--server-side", "-f", &ns]).await;
    assert!(out.contains("namespace/demo serverside-applied"), "{out}");
    assert_eq!(
        k.admin(&["get", "ns", "demo", "-o", "jsonpath={.metadata.labels.team}"])
            .await,
        "a"
    );

    // A Kubeflow kind: its env list is merged by name and owned item by item.
    let pd = k.file("pd.yaml", PD);
    let out = k.ok(&["apply", "--server-side", "-f", &pd]).await;
    assert!(
        out.contains("poddefault.kubeflow.org/add-gcp-secret serverside-applied"),
        "{out}"
    );
    let shown = k
        .ok(&[
            "get",
            "poddefault",
            "add-gcp-secret",
            "-o",
            "yaml",
            "--show-managed-fields",
        ])
        .await;
    assert!(
        shown.contains("k:{\"name\":\"GOOGLE_APPLICATION_CREDENTIALS\"}"),
        "{shown}"
    );

    // A client-side applied object: another applier conflicts with kubectl-client-side-apply.
    let c2 = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c2\ndata:\n  a: \"1\"\n";
    let c2_file = k.file("c2.yaml", c2);
    assert!(k.ok(&["apply", "-f", &c2_file]).await.contains("configmap/c2 created"));
    let changed = k.file("c2b.yaml", &c2.replace("\"1\"", "\"2\""));
    let o = k
        .run(&["apply", "--server-side", "--field-manager=other-tool", "-f", &changed])
        .await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains("Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using v1: .data.a"),
        "{}",
        o.stderr
    );
    // kubectl's own switch to server-side apply migrates the client-side ownership, after
    // which a changed value applies without conflict.
    k.ok(&["apply", "--server-side", "-f", &c2_file]).await;
    let shown = k
        .ok(&["get", "configmap", "c2", "-o", "yaml", "--show-managed-fields"])
        .await;
    assert!(!shown.contains("manager: kubectl-client-side-apply"), "{shown}");
    k.ok(&["apply", "--server-side", "-f", &changed]).await;
    assert_eq!(k.ok(&["get", "configmap", "c2", "-o", "jsonpath={.data.a}"]).await, "2");
}
