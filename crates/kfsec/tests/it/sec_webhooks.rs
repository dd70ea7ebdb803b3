//! The webhook listener (issue 9, finding 12 and the response-amplification item): with
//! `webhooks.clientAuth` only a client certificate from the configured CA that names an allowed
//! caller gets an AdmissionReview answered (no certificate, a wrong name, another CA, kfsec's own
//! admin certificate: all refused); a huge Pod gets a bounded denial, not an unbounded patch.
//! (The loopback default bind is a unit test of the configuration.)

use std::path::Path;
use std::process::Command;

use crate::harness::*;

const HOOK_HOST: &str = "poddefaults-webhook-service.kubeflow.svc";

pub(crate) fn review(containers: usize) -> serde_json::Value {
    let cs: Vec<serde_json::Value> = (0..containers)
        .map(|i| serde_json::json!({"name": format!("c{i}"), "image": "x"}))
        .collect();
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team", "operation": "CREATE",
            "userInfo": {"username": "u"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "p", "namespace": "team", "labels": {"add-env": "true"}},
                       "spec": {"containers": cs}}
        }
    })
}

/// A client of the webhook listener, presenting `identity` (PEM certificate chain + key).
pub(crate) fn client(k: &Kfsec, identity: Option<&str>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(k.running.ca_pem.as_bytes()).unwrap()])
        .resolve(HOOK_HOST, k.running.webhook_addr);
    if let Some(pem) = identity {
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

pub(crate) fn url(k: &Kfsec) -> String {
    format!("https://{HOOK_HOST}:{}/apply-poddefault", k.running.webhook_addr.port())
}

/// `kfsec cert issue --client NAME` into `out`; returns certificate chain + key as one PEM.
pub(crate) fn issue_client_cert(data_dir: &Path, name: &str, out: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_kfsec"))
        .args(["cert", "issue", "--client", name, "--duration", "1h", "--data-dir"])
        .arg(data_dir)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let crt = std::fs::read_to_string(out.join("tls.crt")).unwrap();
    let key = std::fs::read_to_string(out.join("tls.key")).unwrap();
    format!("{crt}{key}")
}

pub(crate) async fn add_poddefault(k: &Kfsec, env: usize, value_len: usize) {
    let kc = crate::rbac::Kubectl::new(k._dir.path());
    assert_eq!(kc.run(&["create", "namespace", "team"], None).await.0, 0);
    let mut pd = "apiVersion: kubeflow.org/v1alpha1\nkind: PodDefault\nmetadata:\n  name: add-env\n  namespace: team\nspec:\n  selector:\n    matchLabels:\n      add-env: \"true\"\n  desc: d\n  env:\n".to_owned();
    for i in 0..env {
        pd.push_str(&format!("  - name: E{i}\n    value: {}\n", "v".repeat(value_len)));
    }
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&pd)).await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_callers_need_an_allowed_client_certificate() {
    let k = Kfsec::start("webhooks:\n  clientAuth:\n    allowedNames: [kube-apiserver, system:kube-apiserver]\n").await;
    add_poddefault(&k, 1, 8).await;
    let certs = tempfile::tempdir().unwrap();
    let apiserver = issue_client_cert(k._dir.path(), "kube-apiserver", &certs.path().join("a"));
    let stranger = issue_client_cert(k._dir.path(), "someone-else", &certs.path().join("b"));
    // kfsec's own admin certificate is from the right CA but not an allowed caller
    let kubeconfig = std::fs::read_to_string(k._dir.path().join("admin.kubeconfig")).unwrap();
    let field = |name: &str| {
        use base64::Engine;
        let line = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(line).unwrap()).unwrap()
    };
    let admin = format!("{}{}", field("client-certificate-data"), field("client-key-data"));
    // the right name from another CA
    let other_ca_dir = tempfile::tempdir().unwrap();
    let other = kfsec_pki::CaSet::load_or_create(
        other_ca_dir.path(),
        kfsec_pki::KeyAlgorithm::EcdsaP256,
        &kfsec_types::SystemClock,
    )
    .unwrap();
    let forged = other
        .current()
        .issue_client(
            "kube-apiserver",
            &[],
            std::time::Duration::from_secs(3600),
            &kfsec_types::SystemClock,
        )
        .unwrap();
    let forged = format!("{}{}", other.chain_pem(&forged), forged.key_pem);

    for (what, identity) in [
        ("no certificate", None),
        ("a name not allowed", Some(stranger.as_str())),
        ("kfsec's admin certificate", Some(admin.as_str())),
        ("an allowed name from another CA", Some(forged.as_str())),
    ] {
        let r = client(&k, identity).post(url(&k)).json(&review(1)).send().await;
        match r {
            Err(_) => {}
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                panic!("{what}: answered {status}: {body}");
            }
        }
    }
    let r = client(&k, Some(&apiserver))
        .post(url(&k))
        .json(&review(1))
        .send()
        .await
        .expect("the allowed caller is served");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_responses_are_bounded() {
    let k = Kfsec::start("").await;
    // 40 variables of 400 bytes: about 17 KB of patch per container
    add_poddefault(&k, 40, 400).await;
    let http = client(&k, None);
    // (containers, what the denial names): a patch that would be ~3.4 MB; too many containers
    for (containers, names) in [(200, "bytes"), (2_000, "containers")] {
        let r = http.post(url(&k)).json(&review(containers)).send().await.unwrap();
        assert_eq!(r.status(), 200, "an AdmissionReview answer");
        let body = r.bytes().await.unwrap();
        assert!(body.len() < 64 * 1024, "{containers} containers: {} bytes", body.len());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(v["response"]["allowed"], false, "{v}");
        assert_eq!(v["response"]["status"]["code"], 413);
        let message = v["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{message}");
    }
    // a normal Pod is still mutated
    let r = http.post(url(&k)).json(&review(2)).send().await.unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    // the same caps hold in-process: a Pod created through the API is refused, not stored
    // inflated
    let kc = crate::rbac::Kubectl::new(k._dir.path());
    assert_eq!(
        kc.run(
            &[
                "label",
                "namespace",
                "team",
                "app.kubernetes.io/part-of=kubeflow-profile"
            ],
            None
        )
        .await
        .0,
        0
    );
    let pod = serde_json::to_string(&review(200)["request"]["object"]).unwrap();
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&pod)).await;
    assert_ne!(code, 0, "the inflated pod was stored");
    assert!(err.contains("admission limits"), "{err}");
    k.running.shutdown().await;
}

/// An allowed caller's kept-alive connection stops being served at its certificate's notAfter
/// (TLS checked the dates at the handshake only): 401 from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_callers_certificate_ends_at_its_not_after() {
    let k = Kfsec::start_with_clock("webhooks:\n  clientAuth:\n    allowedNames: [kube-apiserver]\n").await;
    add_poddefault(&k, 1, 8).await;
    let certs = tempfile::tempdir().unwrap();
    let apiserver = issue_client_cert(k._dir.path(), "kube-apiserver", &certs.path().join("a"));
    let not_after = kfsec_pki::parse_cert_pem(&apiserver).unwrap().not_after;
    let caller = client(&k, Some(&apiserver));
    let r = caller.post(url(&k)).json(&review(1)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    k.clock.as_ref().unwrap().set(not_after);
    let r = caller.post(url(&k)).json(&review(1)).send().await.unwrap();
    assert_eq!(r.status(), 401, "served after notAfter on a kept-alive connection");
    k.running.shutdown().await;
}
