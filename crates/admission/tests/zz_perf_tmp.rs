#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use kfsec_admission::{Context, review, poddefault::PodDefaultWebhook};
use serde_json::json;
#[test]
#[ignore]
fn perf() {
    let ns = "kubeflow-user";
    let pds: Vec<_> = (0..1000).map(|i| json!({"metadata": {"name": format!("pd-{i}"), "namespace": ns, "resourceVersion": "1"},
        "spec": {"selector": {"matchLabels": {format!("pd-{i}"): "true"}}, "env": [{"name": format!("E{i}"), "value": "x"}]}})).collect();
    let t = std::time::Instant::now();
    let ctx = Context::default().with_pod_defaults(&pds);
    println!("prepare 1000 PDs: {:?}", t.elapsed());
    let body = serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": ns, "operation": "CREATE", "userInfo": {"username": "a"},
        "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": ns, "labels": {"pd-1": "true", "pd-500": "true", "app": "x"}},
                   "spec": {"containers": [{"name": "main", "image": "img", "env": [{"name": "A", "value": "b"}]}, {"name": "istio-proxy", "image": "i"}]}}}})).unwrap();
    let n = 20000;
    let t = std::time::Instant::now();
    for _ in 0..n { let r = review(&body, &PodDefaultWebhook, &ctx).unwrap(); assert!(r.len() > 10); }
    println!("review w/ 1000 PDs: {:?}/op", t.elapsed() / n);
    let empty = Context::default();
    let t = std::time::Instant::now();
    for _ in 0..n { let r = review(&body, &PodDefaultWebhook, &empty).unwrap(); assert!(r.len() > 10); }
    println!("review w/ 0 PDs: {:?}/op", t.elapsed() / n);
}
