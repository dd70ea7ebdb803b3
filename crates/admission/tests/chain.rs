//! The in-process chain (selection by rules, namespace selector and match conditions; mutation
//! then validation; Kubernetes' denial text) and the webhook-configuration manifests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test-only crate: helpers outside #[test] fns may fail loudly

use kfsec_admission::{Chain, Context, all_webhooks, manifests};
use kfsec_types::admission::{AdmissionRequest, GroupVersionKind, GroupVersionResource, Operation};
use kfsec_types::identity::UserInfo;
use serde_json::{Value, json};

const NS: &str = "kubeflow-user-example-com";

fn profile_ctx() -> Context {
    Context::default()
        .with_namespace_labels([("app.kubernetes.io/part-of", "kubeflow-profile")])
        .with_pod_defaults(&[
            json!({
                "metadata": {"name": "add-env", "namespace": NS, "resourceVersion": "42"},
                "spec": {"selector": {"matchLabels": {"add-env": "true"}}, "env": [{"name": "A", "value": "1"}]}
            }),
            json!({
                "metadata": {"name": "other-env", "namespace": NS, "resourceVersion": "43"},
                "spec": {"selector": {"matchLabels": {"other-env": "true"}}, "env": [{"name": "A", "value": "2"}]}
            }),
        ])
}

fn pod_request(labels: Value) -> (AdmissionRequest, Value) {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "img"}]}
    });
    let req = AdmissionRequest {
        uid: "u".into(),
        kind: GroupVersionKind {
            group: String::new(),
            version: "v1".into(),
            kind: "Pod".into(),
        },
        resource: GroupVersionResource::new("", "v1", "pods"),
        name: "p".into(),
        namespace: NS.into(),
        operation: Operation::Create,
        user_info: UserInfo {
            username: "alice@example.com".into(),
            ..UserInfo::default()
        },
        ..AdmissionRequest::default()
    };
    (req, pod)
}

#[test]
fn pod_in_profile_namespace_gets_its_poddefaults() {
    let chain = Chain::standard();
    let (req, mut pod) = pod_request(json!({"add-env": "true"}));
    chain.admit(&req, &profile_ctx(), &mut pod).unwrap();
    assert_eq!(
        pod["spec"]["containers"][0]["env"],
        json!([{"name": "A", "value": "1"}])
    );
    assert_eq!(
        pod["metadata"]["annotations"]["poddefault.admission.kubeflow.org/poddefault-add-env"],
        "42"
    );
}

#[test]
fn conflicting_poddefaults_deny_with_kubernetes_text() {
    let chain = Chain::standard();
    let (req, mut pod) = pod_request(json!({"add-env": "true", "other-env": "true"}));
    let before = pod.clone();
    let denial = chain.admit(&req, &profile_ctx(), &mut pod).unwrap_err();
    assert_eq!(denial.webhook, "poddefaults-webhook-deployment.kubeflow.org");
    assert_eq!(denial.code, 403);
    assert!(
        denial.to_string().starts_with(
            "admission webhook \"poddefaults-webhook-deployment.kubeflow.org\" denied the request: conflict occurred while applying poddefaults: add-env,other-env on pod: p err: merging env for other-env has a conflict on A: "
        ),
        "{denial}"
    );
    assert_eq!(pod, before, "a denied object is not changed");
}

#[test]
fn namespace_outside_profiles_is_not_selected() {
    let chain = Chain::standard();
    let (req, mut pod) = pod_request(json!({"add-env": "true"}));
    let mut ctx = profile_ctx();
    ctx.namespace_labels.clear();
    assert!(!chain.wants(&req, &ctx.namespace_labels));
    let before = pod.clone();
    chain.admit(&req, &ctx, &mut pod).unwrap();
    assert_eq!(pod, before);
}

#[test]
fn katib_pod_mutator_honours_its_match_condition() {
    let chain = Chain::standard();
    let (mut req, _) = pod_request(json!({}));
    let labels = [("katib.kubeflow.org/metrics-collector-injection", "enabled")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(chain.selected(&req, &labels), vec!["mutator.pod.katib.kubeflow.org"]);
    req.user_info.username = "system:serviceaccount:kubeflow:katib-controller".into();
    assert!(chain.selected(&req, &labels).is_empty());
}

#[test]
fn experiment_is_defaulted_then_validated() {
    let chain = Chain::standard();
    let mut exp = json!({
        "apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
        "metadata": {"name": "exp", "namespace": NS},
        "spec": {
            "objective": {"type": "minimize", "objectiveMetricName": "loss"},
            "algorithm": {"algorithmName": "random"},
            "parameters": [{"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "0.1", "max": "0.2"}}],
            "trialTemplate": {
                "primaryContainerName": "main",
                "trialParameters": [{"name": "lr", "reference": "lr"}],
                "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {"containers": [{"name": "main", "args": ["--lr=${trialParameters.lr}"]}]}}}}
            }
        }
    });
    let req = AdmissionRequest {
        uid: "u".into(),
        resource: GroupVersionResource::new("kubeflow.org", "v1beta1", "experiments"),
        namespace: NS.into(),
        operation: Operation::Create,
        ..AdmissionRequest::default()
    };
    let labelled =
        Context::default().with_namespace_labels([("katib.kubeflow.org/metrics-collector-injection", "enabled")]);
    assert_eq!(
        Chain::standard().selected(&req, &labelled.namespace_labels),
        vec![
            "defaulter.experiment.katib.kubeflow.org",
            "validator.experiment.katib.kubeflow.org"
        ]
    );
    chain.admit(&req, &labelled, &mut exp).unwrap();
    assert_eq!(exp["spec"]["parallelTrialCount"], 3);
    assert_eq!(exp["spec"]["metricsCollectorSpec"]["collector"]["kind"], "StdOut");

    let mut again = exp.clone();
    let denial = chain.admit(&req, &Context::default(), &mut again).unwrap_err();
    assert_eq!(denial.webhook, "validator.experiment.katib.kubeflow.org");
    assert_eq!(denial.code, 400);
    assert!(denial.message.contains("the namespace lacks label"), "{denial}");
}

#[test]
fn manifests_are_valid_yaml_with_the_ca_bundle() {
    let yaml = manifests("Q0EtQlVORExF", "kubeflow");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let mut names = Vec::new();
    for d in &docs {
        assert_eq!(d["apiVersion"], "admissionregistration.k8s.io/v1");
        assert!(
            d["kind"] == "MutatingWebhookConfiguration" || d["kind"] == "ValidatingWebhookConfiguration",
            "{d}"
        );
        for w in d["webhooks"].as_array().unwrap() {
            assert_eq!(w["clientConfig"]["caBundle"], "Q0EtQlVORExF");
            assert_eq!(w["clientConfig"]["service"]["namespace"], "kubeflow");
            assert_eq!(w["sideEffects"], "None");
            assert_eq!(w["failurePolicy"], "Fail");
            names.push((
                w["name"].as_str().unwrap().to_string(),
                w["clientConfig"]["service"]["path"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert_eq!(names.len(), all_webhooks().len());
    for w in all_webhooks() {
        assert!(
            names.contains(&(w.name().to_string(), w.path().to_string())),
            "{} missing",
            w.name()
        );
    }
    let pd = docs
        .iter()
        .flat_map(|d| d["webhooks"].as_array().unwrap())
        .find(|w| w["name"] == "poddefaults-webhook-deployment.kubeflow.org")
        .unwrap();
    assert_eq!(pd["admissionReviewVersions"], json!(["v1beta1", "v1"]));
    assert_eq!(
        pd["namespaceSelector"],
        json!({"matchLabels": {"app.kubernetes.io/part-of": "kubeflow-profile"}})
    );
    assert_eq!(
        pd["rules"],
        json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}])
    );
    let katib_pod = docs
        .iter()
        .flat_map(|d| d["webhooks"].as_array().unwrap())
        .find(|w| w["name"] == "mutator.pod.katib.kubeflow.org")
        .unwrap();
    assert_eq!(
        katib_pod["matchConditions"],
        json!([{"name": "exclude-katib-controller", "expression": "request.userInfo.username != \"system:serviceaccount:kubeflow:katib-controller\""}])
    );
}
