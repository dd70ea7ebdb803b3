//! Arbitrary bytes as an AdmissionReview body: parsing must never panic, and every well-formed
//! review gets a response that echoes the uid and whose patch (if any) applies to the object.
//! The body goes through the PodDefault webhook (with PodDefaults in the context) and, once
//! parsed, through every other webhook too.

#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use kfsec_admission::poddefault::PodDefaultWebhook;
use kfsec_admission::{Context, all_webhooks, parse_review, review, review_parsed};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fn context() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let ns = "kubeflow-user-example-com";
        Context::default()
            .with_namespace_labels([
                ("app.kubernetes.io/part-of", "kubeflow-profile"),
                ("katib.kubeflow.org/metrics-collector-injection", "enabled"),
            ])
            .with_pod_defaults(&[
                json!({"metadata": {"name": "access-ml-pipeline", "namespace": ns, "resourceVersion": "1"},
                       "spec": {"selector": {"matchLabels": {"access-ml-pipeline": "true"}},
                                "env": [{"name": "KF_PIPELINES_SA_TOKEN_PATH", "value": "/var/run/secrets/kubeflow/pipelines/token"}],
                                "volumes": [{"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}],
                                "volumeMounts": [{"mountPath": "/var/run/secrets/kubeflow/pipelines", "name": "token"}]}}),
                json!({"metadata": {"name": "gpu", "namespace": ns, "resourceVersion": "2"},
                       "spec": {"selector": {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]},
                                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                                "labels": {"team": "ml"}, "annotations": {"a": "b"},
                                "sidecars": [{"name": "side", "image": "x"}],
                                "initContainers": [{"name": "init", "image": "y"}],
                                "imagePullSecrets": [{"name": "reg"}],
                                "serviceAccountName": "sa", "command": ["sh"], "args": ["-c"]}}),
                json!({"metadata": {"name": "everyone", "namespace": ns, "resourceVersion": "3"},
                       "spec": {"selector": {}, "envFrom": [{"configMapRef": {"name": "cm"}}]}}),
            ])
    })
}

fn check(body: &[u8], response: &[u8]) {
    let request: Value = serde_json::from_slice(body).expect("a reviewed body is JSON");
    let v: Value = serde_json::from_slice(response).expect("the response is JSON");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["apiVersion"], request["apiVersion"]);
    assert_eq!(v["response"]["uid"], request["request"]["uid"]);
    if let Some(p) = v["response"].get("patch") {
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        let raw = base64::engine::general_purpose::STANDARD.decode(p.as_str().expect("string")).expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&raw).expect("a JSON Patch");
        let mut obj = request["request"]["object"].clone();
        json_patch::patch(&mut obj, &patch).expect("the patch applies to the object");
    }
}

fuzz_target!(|data: &[u8]| {
    let ctx = context();
    if let Ok(resp) = review(data, &PodDefaultWebhook, ctx) {
        check(data, &resp);
    }
    if let Ok(parsed) = parse_review(data) {
        for w in all_webhooks() {
            check(data, &review_parsed(&parsed, w.as_ref(), ctx));
        }
    }
});
