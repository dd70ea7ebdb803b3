//! In-process admission: Pods created through the API get their namespace's PodDefaults, and a
//! conflicting set is refused with Kubernetes' webhook-denial message.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poddefaults_apply_to_pods_created_through_the_api() {
    let k = Kfsec::start("").await;
    let kc = crate::rbac::Kubectl::new(k._dir.path());
    assert_eq!(kc.run(&["create", "namespace", "team"], None).await.0, 0);
    // Kubeflow registers the PodDefault webhook for profile namespaces only
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
    let pd = |name: &str, value: &str| {
        format!(
            "apiVersion: kubeflow.org/v1alpha1\nkind: PodDefault\nmetadata:\n  name: {name}\n  namespace: team\nspec:\n  selector:\n    matchLabels:\n      add-gcp-secret: \"true\"\n  desc: d\n  env:\n  - name: GOOGLE_APPLICATION_CREDENTIALS\n    value: {value}\n  volumeMounts:\n  - name: secret-volume\n    mountPath: /secret/gcp\n  volumes:\n  - name: secret-volume\n    secret:\n      secretName: user-gcp-sa\n"
        )
    };
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: team\n  labels:\n    add-gcp-secret: \"true\"\nspec:\n  containers:\n  - name: main\n    image: jupyter\n"
        )
    };
    let (code, _, err) = kc
        .run(
            &["apply", "-f", "-"],
            Some(&pd("add-gcp-secret", "/secret/gcp/sa.json")),
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&pod("nb"))).await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = kc.run(&["get", "pod", "nb", "-n", "team", "-o", "json"], None).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["spec"]["containers"][0]["env"][0]["value"], "/secret/gcp/sa.json");
    assert_eq!(
        v["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
        "/secret/gcp"
    );
    assert_eq!(v["spec"]["volumes"][0]["secret"]["secretName"], "user-gcp-sa");
    assert!(
        v["metadata"]["annotations"]["poddefault.admission.kubeflow.org/poddefault-add-gcp-secret"].is_string(),
        "{v}"
    );
    // a pod without the label is left alone
    let (code, _, _) = kc
        .run(
            &["apply", "-f", "-"],
            Some(&pod("plain").replace("add-gcp-secret: \"true\"", "app: x")),
        )
        .await;
    assert_eq!(code, 0);
    let (_, out, _) = kc
        .run(
            &[
                "get",
                "pod",
                "plain",
                "-n",
                "team",
                "-o",
                "jsonpath={.spec.containers[0].env}",
            ],
            None,
        )
        .await;
    assert!(out.is_empty(), "{out}");
    // a conflicting PodDefault makes the create fail with the webhook's denial
    let (code, _, err) = kc
        .run(&["apply", "-f", "-"], Some(&pd("conflicting", "/other.json")))
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&pod("nb2"))).await;
    assert_ne!(code, 0);
    assert!(
        err.contains("admission webhook \"")
            && err.contains("denied the request: conflict occurred while applying poddefaults"),
        "{err}"
    );
    assert_ne!(
        kc.run(&["get", "pod", "nb2", "-n", "team"], None).await.0,
        0,
        "nothing was written"
    );
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_listener_answers_admission_reviews_with_its_own_certificate() {
    let k = Kfsec::start("").await;
    let kc = crate::rbac::Kubectl::new(k._dir.path());
    assert_eq!(kc.run(&["create", "namespace", "team"], None).await.0, 0);
    let pd = "apiVersion: kubeflow.org/v1alpha1\nkind: PodDefault\nmetadata:\n  name: add-env\n  namespace: team\nspec:\n  selector:\n    matchLabels:\n      add-env: \"true\"\n  desc: d\n  env:\n  - name: A\n    value: b\n";
    assert_eq!(kc.run(&["apply", "-f", "-"], Some(pd)).await.0, 0);
    let host = "poddefaults-webhook-service.kubeflow.svc";
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(k.running.ca_pem.as_bytes()).unwrap()])
        .resolve(host, k.running.webhook_addr)
        .build()
        .unwrap();
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team", "operation": "CREATE",
            "userInfo": {"username": "u"},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team", "labels": {"add-env": "true"}},
                       "spec": {"containers": [{"name": "main", "image": "x"}]}}
        }
    });
    let url = format!("https://{host}:{}/apply-poddefault", k.running.webhook_addr.port());
    let r = client
        .post(&url)
        .json(&review)
        .send()
        .await
        .expect("the service name verifies against the CA");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    use base64::Engine;
    let patch = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(v["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(
        patch.contains("\"name\":\"A\"") && patch.contains("poddefault-add-env"),
        "{patch}"
    );
    // malformed input is a 400, not a 500
    let r = client.post(&url).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    k.running.shutdown().await;
}
