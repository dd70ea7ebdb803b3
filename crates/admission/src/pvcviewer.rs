//! PVCViewer webhooks (`kubeflow/kubeflow` `components/pvcviewer-controller` v1.9.2): the
//! defaulter (`/mutate-kubeflow-org-v1alpha1-pvcviewer`) and the validator
//! (`/validate-kubeflow-org-v1alpha1-pvcviewer`).
//!
//! Invariants: the defaulter touches only an empty `spec.podSpec` (filled from the configured
//! default pod spec, else the filebrowser container) and then always appends the `viewer-volume`
//! volume for `spec.pvc`; the validator refuses viewers without a PVC, without a pod spec, or whose
//! pod spec does not use the PVC (`Denied`, 403).

use kfsec_types::admission::AdmissionRequest;
use serde_json::{Value, json};

use crate::registration::{FailurePolicy, Registration, Rule, WebhookKind};
use crate::webhook::{AdmissionOutcome, Context, ContextNeeds, Webhook};

/// The volume the defaulter appends.
pub const VIEWER_VOLUME: &str = "viewer-volume";

/// PVCViewer controller settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PvcViewerSettings {
    /// The pod spec read from `DEFAULT_POD_SPEC_PATH`, if configured.
    pub default_pod_spec: Option<Value>,
}

fn registration(
    name: &'static str,
    path: &'static str,
    kind: WebhookKind,
    configuration: &'static str,
) -> Registration {
    Registration {
        name,
        path,
        kind,
        configuration,
        service: "pvcviewer-webhook-service",
        rules: vec![Rule::new(
            &["CREATE", "UPDATE"],
            &["kubeflow.org"],
            &["v1alpha1"],
            &["pvcviewers"],
        )],
        admission_review_versions: &["v1"],
        failure_policy: FailurePolicy::Fail,
        namespace_selector: None,
        object_selector: None,
        match_conditions: Vec::new(),
        reinvocation_policy: None,
    }
}

fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        match cur.get(*p) {
            Some(next) => cur = next,
            None => return "",
        }
    }
    cur.as_str().unwrap_or_default()
}

/// `reflect.DeepEqual(podSpec, corev1.PodSpec{})` on JSON: absent, `null`, or only `null` members.
fn pod_spec_is_empty(spec: Option<&Value>) -> bool {
    match spec {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.values().all(Value::is_null),
        Some(_) => false,
    }
}

/// `PVCViewer.Default()` on a JSON PVCViewer; `namespace` is used when the object has none.
pub fn default_pvcviewer(viewer: &Value, namespace: &str, settings: &PvcViewerSettings) -> Value {
    let mut out = viewer.clone();
    if !pod_spec_is_empty(viewer.get("spec").and_then(|s| s.get("podSpec"))) {
        return out;
    }
    let ns = match text(viewer, &["metadata", "namespace"]) {
        "" => namespace,
        n => n,
    };
    let name = text(viewer, &["metadata", "name"]);
    let base = text(viewer, &["spec", "networking", "basePrefix"]);
    let pvc = text(viewer, &["spec", "pvc"]);
    let mut pod_spec = match settings
        .default_pod_spec
        .as_ref()
        .filter(|p| !pod_spec_is_empty(Some(p)))
    {
        Some(p) => p.clone(),
        None => json!({
            "containers": [{
                "name": "pvcviewer",
                "image": "filebrowser/filebrowser:latest",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "env": [
                    {"name": "FB_ADDRESS", "value": "0.0.0.0"},
                    {"name": "FB_PORT", "value": "8080"},
                    {"name": "FB_DATABASE", "value": "/tmp/filebrowser.db"},
                    {"name": "FB_NOAUTH", "value": "true"},
                    {"name": "FB_BASEURL", "value": format!("{base}/{ns}/{name}/")}
                ],
                "workingDir": "/data",
                "volumeMounts": [{"name": VIEWER_VOLUME, "mountPath": "/data"}]
            }]
        }),
    };
    let volume = json!({"name": VIEWER_VOLUME, "persistentVolumeClaim": {"claimName": pvc}});
    if let Value::Object(ps) = &mut pod_spec {
        let vols = ps.entry("volumes").or_insert_with(|| Value::Array(Vec::new()));
        if !vols.is_array() {
            *vols = Value::Array(Vec::new());
        }
        if let Value::Array(v) = vols {
            v.push(volume);
        }
    }
    if let Value::Object(root) = &mut out {
        let spec = root.entry("spec").or_insert_with(|| json!({}));
        if !spec.is_object() {
            *spec = json!({});
        }
        if let Value::Object(spec) = spec {
            spec.insert("podSpec".into(), pod_spec);
        }
    }
    out
}

/// `PVCViewer.validate()`.
pub fn validate_pvcviewer(viewer: &Value) -> Result<(), String> {
    let pvc = text(viewer, &["spec", "pvc"]);
    if pvc.is_empty() {
        return Err("PVC name must be specified".into());
    }
    let pod_spec = viewer.get("spec").and_then(|s| s.get("podSpec"));
    if pod_spec_is_empty(pod_spec) {
        return Err("PodSpec must be specified".into());
    }
    let used = pod_spec
        .and_then(|p| p.get("volumes"))
        .and_then(Value::as_array)
        .is_some_and(|vols| {
            vols.iter()
                .any(|v| text(v, &["persistentVolumeClaim", "claimName"]) == pvc)
        });
    if !used {
        return Err(format!("PVC {pvc} must be used in the podSpec"));
    }
    Ok(())
}

/// `/mutate-kubeflow-org-v1alpha1-pvcviewer` (`mpvcviewer.kb.io`).
#[derive(Debug, Clone, Copy, Default)]
pub struct PvcViewerDefaulter;

impl Webhook for PvcViewerDefaulter {
    fn name(&self) -> &str {
        "mpvcviewer.kb.io"
    }

    fn path(&self) -> &str {
        "/mutate-kubeflow-org-v1alpha1-pvcviewer"
    }

    fn registration(&self) -> Registration {
        registration(
            "mpvcviewer.kb.io",
            "/mutate-kubeflow-org-v1alpha1-pvcviewer",
            WebhookKind::Mutating,
            "pvcviewer-mutating-webhook-configuration",
        )
    }

    fn context_needs(&self) -> ContextNeeds {
        ContextNeeds {
            settings: true,
            ..ContextNeeds::none()
        }
    }

    fn admit(&self, req: &AdmissionRequest, ctx: &Context) -> AdmissionOutcome {
        match &req.object {
            Some(v @ Value::Object(_)) => {
                AdmissionOutcome::from_mutation(v, &default_pvcviewer(v, &req.namespace, &ctx.settings.pvcviewer))
            }
            _ => AdmissionOutcome::deny(400, "there is no content to decode"),
        }
    }
}

/// `/validate-kubeflow-org-v1alpha1-pvcviewer` (`vpvcviewer.kb.io`).
#[derive(Debug, Clone, Copy, Default)]
pub struct PvcViewerValidator;

impl Webhook for PvcViewerValidator {
    fn name(&self) -> &str {
        "vpvcviewer.kb.io"
    }

    fn path(&self) -> &str {
        "/validate-kubeflow-org-v1alpha1-pvcviewer"
    }

    fn registration(&self) -> Registration {
        registration(
            "vpvcviewer.kb.io",
            "/validate-kubeflow-org-v1alpha1-pvcviewer",
            WebhookKind::Validating,
            "pvcviewer-validating-webhook-configuration",
        )
    }

    fn context_needs(&self) -> ContextNeeds {
        ContextNeeds::none()
    }

    fn admit(&self, req: &AdmissionRequest, _ctx: &Context) -> AdmissionOutcome {
        match &req.object {
            Some(v @ Value::Object(_)) => match validate_pvcviewer(v) {
                Ok(()) => AdmissionOutcome::Allow,
                Err(message) => AdmissionOutcome::deny(403, message),
            },
            _ => AdmissionOutcome::deny(400, "there is no content to decode"),
        }
    }
}
