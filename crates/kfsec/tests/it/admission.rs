//! In-process admission: Pods created through the API get their namespace's PodDefaults, and a
//! conflicting set is refused with Kubernetes' webhook-denial message; Katib trial pods get the
//! trial labels; a context that cannot be loaded refuses the write (failurePolicy Fail).

use crate::harness::*;

/// A kfsec with namespace `ns` labelled `label` (`key=value`), and kubectl for it.
async fn start_with_namespace(ns: &str, label: &str) -> (Kfsec, crate::rbac::Kubectl) {
    let k = Kfsec::start("").await;
    let kc = crate::rbac::Kubectl::new(k._dir.path());
    assert_eq!(kc.run(&["create", "namespace", ns], None).await.0, 0);
    assert_eq!(kc.run(&["label", "namespace", ns, label], None).await.0, 0);
    (k, kc)
}

/// A client of the webhook listener that verifies the PodDefault webhook Service's certificate,
/// and the URL of `/apply-poddefault`.
fn poddefault_webhook(k: &Kfsec) -> (reqwest::Client, String) {
    let host = "poddefaults-webhook-service.kubeflow.svc";
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(k.running.ca_pem.as_bytes()).unwrap()])
        .resolve(host, k.running.webhook_addr)
        .build()
        .unwrap();
    let url = format!("https://{host}:{}/apply-poddefault", k.running.webhook_addr.port());
    (client, url)
}

/// An AdmissionReview of creating a Pod labelled `add-env: "true"` in `team`.
fn pod_review(uid: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team", "operation": "CREATE",
            "userInfo": {"username": "u"},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team", "labels": {"add-env": "true"}},
                       "spec": {"containers": [{"name": "main", "image": "x"}]}}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poddefaults_apply_to_pods_created_through_the_api() {
    // Kubeflow registers the PodDefault webhook for profile namespaces only
    let (k, kc) = start_with_namespace("team", "app.kubernetes.io/part-of=kubeflow-profile").await;
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
    let (client, url) = poddefault_webhook(&k);
    let review = pod_review("705ab4f5-6393-11e8-b7cc-42010a800002");
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

/// A Katib Experiment, its Trial and the Trial's pod, all created through kfsec's API: the pod
/// comes back mutated by Katib's trial pod mutator (the Trial is found in the admission context).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn katib_trial_pods_created_through_the_api_are_mutated() {
    let (k, kc) = start_with_namespace("hp", "katib.kubeflow.org/metrics-collector-injection=enabled").await;
    let experiment = serde_json::json!({
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
        "metadata": {"name": "random-example", "namespace": "hp"},
        "spec": {
            "objective": {"type": "maximize", "goal": 0.99, "objectiveMetricName": "Validation-accuracy"},
            "algorithm": {"algorithmName": "random"},
            "maxTrialCount": 12, "maxFailedTrialCount": 3, "parallelTrialCount": 3,
            "parameters": [{"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "0.01", "max": "0.03"}}],
            "trialTemplate": {
                "primaryContainerName": "training-container",
                "trialParameters": [{"name": "learningRate", "description": "Learning rate", "reference": "lr"}],
                "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {
                    "containers": [{"name": "training-container", "image": "docker.io/kubeflowkatib/mxnet-mnist:latest",
                                    "command": ["python3", "/opt/mxnet-mnist/mnist.py", "--lr=${trialParameters.learningRate}"]}],
                    "restartPolicy": "Never"}}}}
            },
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}}
        }
    });
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&experiment.to_string())).await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = kc
        .run(&["get", "experiment", "random-example", "-n", "hp", "-o", "json"], None)
        .await;
    let exp: serde_json::Value = serde_json::from_str(&out).unwrap();
    let trial = serde_json::json!({
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Trial",
        "metadata": {"name": "random-example-x7k2p", "namespace": "hp",
                     "labels": {"katib.kubeflow.org/experiment": "random-example"},
                     "ownerReferences": [{"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
                                          "name": "random-example", "uid": exp["metadata"]["uid"], "controller": true}]},
        "spec": {"primaryContainerName": "training-container", "metricsCollector": {"collector": {"kind": "StdOut"}}}
    });
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&trial.to_string())).await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = kc
        .run(
            &["get", "trial", "random-example-x7k2p", "-n", "hp", "-o", "json"],
            None,
        )
        .await;
    let trial: serde_json::Value = serde_json::from_str(&out).unwrap();
    // the trial's own workload: a pod the Trial owns (kfsec serves no batch Jobs)
    let pod = |name: &str, owner: &serde_json::Value| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "hp",
                         "ownerReferences": [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                              "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                                              "controller": true}]},
            "spec": {"containers": [{"name": "training-container", "image": "docker.io/kubeflowkatib/mxnet-mnist:latest"}]}
        })
        .to_string()
    };
    let (code, _, err) = kc
        .run(&["apply", "-f", "-"], Some(&pod("random-example-x7k2p", &trial)))
        .await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = kc
        .run(&["get", "pod", "random-example-x7k2p", "-n", "hp", "-o", "json"], None)
        .await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["metadata"]["labels"]["katib.kubeflow.org/trial"], "random-example-x7k2p",
        "{v}"
    );
    assert_eq!(
        v["metadata"]["labels"]["katib.kubeflow.org/experiment"], "random-example",
        "{v}"
    );
    assert_eq!(v["spec"]["containers"][0]["env"][0]["name"], "KATIB_TRIAL_NAME", "{v}");
    assert_eq!(
        v["spec"]["containers"][0]["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.labels['katib.kubeflow.org/trial']"
    );
    // a pod owned by the Experiment (not a Trial) is left alone
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&pod("other", &exp))).await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = kc.run(&["get", "pod", "other", "-n", "hp", "-o", "json"], None).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["metadata"]["labels"]["katib.kubeflow.org/trial"].is_null(), "{v}");
    assert!(v["spec"]["containers"][0]["env"].is_null(), "{v}");
    k.running.shutdown().await;
}

/// A PodDefault record that cannot be read makes the namespace's context unloadable: a Pod the
/// PodDefault webhook (failurePolicy Fail) would see is refused with a generic 500 — not admitted
/// without its PodDefaults, and nothing of the failure is cached — and once the record is fixed
/// the next Pod gets every PodDefault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poddefault_that_cannot_be_loaded_refuses_the_pod_until_fixed() {
    // Kubeflow registers the PodDefault webhook for profile namespaces only
    let (k, kc) = start_with_namespace("team", "app.kubernetes.io/part-of=kubeflow-profile").await;
    let pd = "apiVersion: kubeflow.org/v1alpha1\nkind: PodDefault\nmetadata:\n  name: add-a\n  namespace: team\nspec:\n  selector:\n    matchLabels:\n      add-env: \"true\"\n  desc: d\n  env:\n  - name: A\n    value: a\n";
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(pd)).await;
    assert_eq!(code, 0, "{err}");
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: team\n  labels:\n    add-env: \"true\"\nspec:\n  containers:\n  - name: main\n    image: x\n"
        )
    };
    let envs = |name: &'static str| {
        let kc = &kc;
        async move {
            let (_, out, _) = kc.run(&["get", "pod", name, "-n", "team", "-o", "json"], None).await;
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let mut names: Vec<String> = v["spec"]["containers"][0]["env"]
                .as_array()
                .map(|a| a.iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            names.sort();
            names
        }
    };
    // the context of "team" is loaded and cached
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&pod("p1"))).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(envs("p1").await, ["A"]);
    // a second PodDefault whose record is corrupt
    let key = &object_key("kubeflow.org", "v1alpha1", "poddefaults", "team", "add-b");
    // the store's keys of the namespace's PodDefaults (internal: never in an answer)
    let keys_in_team = &object_key("kubeflow.org", "v1alpha1", "poddefaults", "team", "");
    k.running
        .store
        .put(key, b"{\"apiVersion\": \"kubeflow.org/v1al".to_vec(), None)
        .await
        .unwrap();
    for attempt in ["p2", "p2"] {
        let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&pod(attempt))).await;
        assert_ne!(code, 0, "admitted without its PodDefaults");
        assert!(
            err.contains("InternalError")
                && err.contains("failed calling webhook \"poddefaults-webhook-deployment.kubeflow.org\""),
            "{err}"
        );
        for internal in ["add-b", keys_in_team.as_str(), "corrupt", "EOF", "decod"] {
            assert!(!err.contains(internal), "internal text {internal:?} in {err}");
        }
        assert_ne!(
            kc.run(&["get", "pod", "p2", "-n", "team"], None).await.0,
            0,
            "nothing was written"
        );
    }
    // writes no webhook concerned with the context sees still go through
    assert_eq!(kc.run(&["create", "configmap", "cm", "-n", "team"], None).await.0, 0);
    // the webhook listener answers such a review with 500 (the API server applies failurePolicy)
    let (client, url) = poddefault_webhook(&k);
    let review = pod_review("705ab4f5-6393-11e8-b7cc-42010a800003");
    let r = client.post(&url).json(&review).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let body = r.text().await.unwrap();
    assert!(
        !body.contains("add-b") && !body.contains(keys_in_team.as_str()),
        "{body}"
    );
    // fixed: the next pod gets both PodDefaults
    let fixed = serde_json::json!({
        "apiVersion": "kubeflow.org/v1alpha1", "kind": "PodDefault",
        "metadata": {"name": "add-b", "namespace": "team", "uid": "0b6f1c3e-5a1b-4c59-9d1e-2f0c8f6f0b01",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"selector": {"matchLabels": {"add-env": "true"}}, "desc": "d", "env": [{"name": "B", "value": "b"}]}
    });
    k.running
        .store
        .put(key, fixed.to_string().into_bytes(), None)
        .await
        .unwrap();
    let (code, _, err) = kc.run(&["apply", "-f", "-"], Some(&pod("p3"))).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(envs("p3").await, ["A", "B"]);
    let r = client.post(&url).json(&review).send().await.unwrap();
    assert_eq!(r.status(), 200);
    k.running.shutdown().await;
}

/// Katib's and KServe's webhooks read their settings from the ConfigMaps the upstream
/// controllers read, written through kfsec's own API: an algorithm `katib-config` does not list
/// is refused, KServe defaults follow `inferenceservice-config`, a ConfigMap that cannot be read
/// refuses the write (failurePolicy Fail, nothing of it in the answer), and deleting it restores
/// the shipped defaults — each change seen by the very next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn katib_and_kserve_settings_follow_their_config_maps() {
    let (k, kc) = start_with_namespace("hp", "katib.kubeflow.org/metrics-collector-injection=enabled").await;
    let _ = kc.run(&["create", "namespace", "kubeflow"], None).await;
    let experiment = |name: &str, algorithm: &str| {
        serde_json::json!({
            "apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
            "metadata": {"name": name, "namespace": "hp"},
            "spec": {
                "objective": {"type": "maximize", "goal": 0.99, "objectiveMetricName": "accuracy"},
                "algorithm": {"algorithmName": algorithm},
                "maxTrialCount": 2, "parallelTrialCount": 1,
                "parameters": [{"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "0.01", "max": "0.03"}}],
                "trialTemplate": {
                    "primaryContainerName": "main",
                    "trialParameters": [{"name": "lr", "reference": "lr"}],
                    "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {
                        "containers": [{"name": "main", "image": "x", "command": ["run", "--lr=${trialParameters.lr}"]}],
                        "restartPolicy": "Never"}}}}
                },
                "metricsCollectorSpec": {"collector": {"kind": "StdOut"}}
            }
        })
        .to_string()
    };
    let katib_config = |yaml: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "katib-config", "namespace": "kubeflow"},
                           "data": {"katib-config.yaml": yaml}})
        .to_string()
    };
    let apply = |doc: String| {
        let kc = &kc;
        async move { kc.run(&["apply", "-f", "-"], Some(&doc)).await }
    };
    // no katib-config: Katib's shipped algorithms
    let (code, _, err) = apply(experiment("e1", "random")).await;
    assert_eq!(code, 0, "{err}");
    // katib-config lists tpe only (grid has no image, so it is not usable either)
    let only_tpe = "apiVersion: config.kubeflow.org/v1beta1\nkind: KatibConfig\nruntime:\n  suggestions:\n  - algorithmName: tpe\n    image: docker.io/kubeflowkatib/suggestion-hyperopt:v0.17.0\n  - algorithmName: grid\n";
    let (code, _, err) = apply(katib_config(only_tpe)).await;
    assert_eq!(code, 0, "{err}");
    for algorithm in ["random", "grid"] {
        let (code, _, err) = apply(experiment("e2", algorithm)).await;
        assert_ne!(code, 0, "{algorithm} admitted");
        assert!(
            err.contains(&format!("failed to find suggestion config for algorithm: {algorithm}")),
            "{err}"
        );
    }
    let (code, _, err) = apply(experiment("e2", "tpe")).await;
    assert_eq!(code, 0, "{err}");
    // an unreadable katib-config refuses Experiments, without its text
    let (code, _, err) = apply(katib_config("runtime: [unclosed")).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = apply(experiment("e3", "tpe")).await;
    assert_ne!(code, 0, "admitted on settings nobody wrote");
    assert!(err.contains("InternalError"), "{err}");
    for internal in ["unclosed", "katib-config.yaml", "runtime"] {
        assert!(!err.contains(internal), "internal text {internal:?} in {err}");
    }
    // deleted: the shipped defaults again
    assert_eq!(
        kc.run(&["delete", "configmap", "katib-config", "-n", "kubeflow"], None)
            .await
            .0,
        0
    );
    let (code, _, err) = apply(experiment("e3", "random")).await;
    assert_eq!(code, 0, "{err}");

    // KServe: the deployment mode and resource defaults come from inferenceservice-config
    let isvc = |name: &str| {
        serde_json::json!({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                           "metadata": {"name": name, "namespace": "hp"},
                           "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "ghcr.io/example/model:1"}]}}})
        .to_string()
    };
    let get = |name: &'static str| {
        let kc = &kc;
        async move {
            let (_, out, _) = kc
                .run(&["get", "inferenceservice", name, "-n", "hp", "-o", "json"], None)
                .await;
            serde_json::from_str::<serde_json::Value>(&out).unwrap()
        }
    };
    let (code, _, err) = apply(isvc("s1")).await;
    assert_eq!(code, 0, "{err}");
    let v = get("s1").await;
    assert!(
        v["metadata"]["annotations"]["serving.kserve.io/deploymentMode"].is_null(),
        "{v}"
    );
    assert_eq!(
        v["spec"]["predictor"]["containers"][0]["resources"]["limits"]["memory"], "2Gi",
        "{v}"
    );
    let kserve_config = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "inferenceservice-config", "namespace": "kubeflow"},
        "data": {"deploy": "{\"defaultDeploymentMode\": \"RawDeployment\"}",
                 "inferenceService": "{\"resource\": {\"memoryLimit\": \"4Gi\"}}"}});
    let (code, _, err) = apply(kserve_config.to_string()).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = apply(isvc("s2")).await;
    assert_eq!(code, 0, "{err}");
    let v = get("s2").await;
    assert_eq!(
        v["metadata"]["annotations"]["serving.kserve.io/deploymentMode"], "RawDeployment",
        "{v}"
    );
    assert_eq!(
        v["spec"]["predictor"]["containers"][0]["resources"]["limits"]["memory"], "4Gi",
        "{v}"
    );
    k.running.shutdown().await;
}
