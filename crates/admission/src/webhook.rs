//! The webhook contract: the [`Webhook`] trait every mutator/validator implements, its
//! [`AdmissionOutcome`], and the per-request [`Context`] (namespace labels, PodDefaults, related
//! objects and settings) the caller supplies.
//!
//! Invariants: webhooks are pure — everything they may look at arrives in the request or the
//! context, so the same input always gives the same outcome; an outcome is either allow, a
//! JSON Patch against exactly the object in the request, or a denial with an HTTP code. Through
//! [`admit_bounded`] (how every caller runs a webhook) an outcome is bounded: an object with more
//! than [`MAX_CONTAINERS`] containers is refused before any webhook runs, and a patch of more than
//! [`MAX_PATCH_OPS`] operations or [`MAX_PATCH_BYTES`] bytes, or a denial message longer than
//! [`MAX_MESSAGE_BYTES`], never leaves — the request is denied (413) instead.

use std::collections::BTreeMap;
use std::sync::Arc;

use kfsec_types::admission::AdmissionRequest;
use serde_json::Value;

use crate::katib::KatibSettings;
use crate::kserve::KServeSettings;
use crate::poddefault::PodDefaultSet;
use crate::pvcviewer::PvcViewerSettings;
use crate::registration::Registration;

/// What a webhook decided.
#[derive(Debug, Clone, PartialEq)]
pub enum AdmissionOutcome {
    /// Admit unchanged.
    Allow,
    /// Admit with these JSON Patch operations applied to `request.object`.
    Patch(json_patch::Patch),
    /// Refuse, with an HTTP status code and a message.
    Deny {
        /// HTTP status code (`status.code`).
        code: u16,
        /// Reason text (`status.message`).
        message: String,
    },
}

impl AdmissionOutcome {
    /// A denial.
    pub fn deny(code: u16, message: impl Into<String>) -> Self {
        Self::Deny {
            code,
            message: message.into(),
        }
    }

    /// `Patch(diff(before, after))`, or `Allow` when nothing changed.
    pub fn from_mutation(before: &Value, after: &Value) -> Self {
        let patch = json_patch::diff(before, after);
        if patch.0.is_empty() {
            Self::Allow
        } else {
            Self::Patch(patch)
        }
    }

    /// True unless this is a denial.
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Self::Deny { .. })
    }
}

/// `v` as a typed Kubeflow object (`kfsec_types::kubeflow`); a member of the wrong JSON type is
/// refused as upstream's decoder refuses it (`Errored(400)`), naming the member:
/// `cannot decode <what>: spec.maxTrialCount: invalid type: …`.
pub(crate) fn decode_typed<T: serde::de::DeserializeOwned>(v: &Value, what: &str) -> Result<T, AdmissionOutcome> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        AdmissionOutcome::deny(400, format!("cannot decode {what}: {path}: {}", e.into_inner()))
    })
}

/// The most containers (`containers`, `initContainers` and `ephemeralContainers`, wherever they
/// appear in the object) a request may carry.
pub const MAX_CONTAINERS: usize = 256;
/// The most JSON Patch operations one response may carry.
pub const MAX_PATCH_OPS: usize = 10_000;
/// The largest JSON Patch (before base64) one response may carry: with base64 and the envelope,
/// responses stay under 3 MiB, the API server's own request limit.
pub const MAX_PATCH_BYTES: usize = 2 * 1024 * 1024;
/// The longest denial message (longer ones are cut at a character boundary).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// How many containers `v` holds, wherever pod specs sit in it (a Pod, a template, a Katib trial
/// spec …).
pub fn container_count(v: &Value) -> usize {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let own = match (k.as_str(), v) {
                    ("containers" | "initContainers" | "ephemeralContainers", Value::Array(a)) => a.len(),
                    _ => 0,
                };
                own.saturating_add(container_count(v))
            })
            .fold(0, usize::saturating_add),
        Value::Array(a) => a.iter().map(container_count).fold(0, usize::saturating_add),
        _ => 0,
    }
}

fn too_large(what: String) -> AdmissionOutcome {
    AdmissionOutcome::deny(413, format!("{what}, over kfsec's admission limits"))
}

/// Runs `hook` within the limits above: the way every caller (the webhook listener and the
/// in-process chain) admits a request.
pub fn admit_bounded(hook: &dyn Webhook, req: &AdmissionRequest, ctx: &Context) -> AdmissionOutcome {
    let containers = [req.object.as_ref(), req.old_object.as_ref()]
        .into_iter()
        .flatten()
        .map(container_count)
        .max()
        .unwrap_or(0);
    if containers > MAX_CONTAINERS {
        return too_large(format!(
            "the object has {containers} containers (at most {MAX_CONTAINERS})"
        ));
    }
    match hook.admit(req, ctx) {
        AdmissionOutcome::Patch(p) if p.0.len() > MAX_PATCH_OPS => too_large(format!(
            "the mutation needs {} patch operations (at most {MAX_PATCH_OPS})",
            p.0.len()
        )),
        AdmissionOutcome::Patch(p) => {
            let size = serde_json::to_vec(&p).map_or(usize::MAX, |b| b.len());
            if size > MAX_PATCH_BYTES {
                too_large(format!("the mutation is {size} bytes (at most {MAX_PATCH_BYTES})"))
            } else {
                AdmissionOutcome::Patch(p)
            }
        }
        AdmissionOutcome::Deny { code, mut message } => {
            if message.len() > MAX_MESSAGE_BYTES {
                let mut cut = MAX_MESSAGE_BYTES;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
                message.push_str(" …");
            }
            AdmissionOutcome::Deny { code, message }
        }
        AdmissionOutcome::Allow => AdmissionOutcome::Allow,
    }
}

/// A mutating or validating admission webhook.
pub trait Webhook: Send + Sync {
    /// The webhook's registered name (e.g. `validator.experiment.katib.kubeflow.org`).
    fn name(&self) -> &str;
    /// The HTTP path it is served on (e.g. `/validate-experiment`).
    fn path(&self) -> &str;
    /// How upstream registers it (rules, selectors, versions, failure policy).
    fn registration(&self) -> Registration;
    /// What of the [`Context`] it reads: the caller loads exactly that (and nothing else is
    /// guaranteed to be filled in).
    fn context_needs(&self) -> ContextNeeds;
    /// Admits one request.
    fn admit(&self, req: &AdmissionRequest, ctx: &Context) -> AdmissionOutcome;
}

/// A kind of related object, as `(apiVersion, kind)`.
pub type ObjectKind = (&'static str, &'static str);

/// What a webhook reads from its [`Context`] besides the request: the declaration the caller
/// builds the context from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ContextNeeds {
    /// [`Context::namespace_labels`].
    pub namespace_labels: bool,
    /// [`Context::pod_defaults`].
    pub pod_defaults: bool,
    /// [`Context::objects`]: every object of these kinds in the request's namespace, sorted and
    /// without duplicates (as [`ContextNeeds::union`] builds it), so equal needs compare equal.
    pub objects: Vec<ObjectKind>,
    /// [`Context::settings`].
    pub settings: bool,
}

impl ContextNeeds {
    /// Nothing but the request.
    pub fn none() -> Self {
        Self::default()
    }

    /// Everything either needs.
    pub fn union(mut self, other: &Self) -> Self {
        self.namespace_labels |= other.namespace_labels;
        self.pod_defaults |= other.pod_defaults;
        self.settings |= other.settings;
        self.objects.extend(other.objects.iter().copied());
        self.objects.sort_unstable();
        self.objects.dedup();
        self
    }

    /// True if nothing is needed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Settings a real deployment would read from ConfigMaps, files or flags.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Katib (`katib-config`).
    pub katib: KatibSettings,
    /// KServe (`inferenceservice-config`).
    pub kserve: KServeSettings,
    /// PVCViewer (`DEFAULT_POD_SPEC_PATH`).
    pub pvcviewer: PvcViewerSettings,
}

/// Everything a webhook may consult besides the request itself.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Labels of the request's namespace (Katib's namespace check, selector matching in-process).
    pub namespace_labels: BTreeMap<String, String>,
    /// The PodDefaults of the request's namespace, in list (name) order.
    pub pod_defaults: PodDefaultSet,
    /// Other objects of the request's namespace the webhooks may follow owner references to
    /// (Katib Trials and the Jobs they own). Full JSON objects with apiVersion/kind/metadata.
    pub objects: Arc<[Value]>,
    /// Configuration.
    pub settings: Arc<Settings>,
}

impl Context {
    /// A context with these namespace labels.
    pub fn with_namespace_labels<'a>(mut self, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.namespace_labels = labels
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// A context with these PodDefaults (JSON objects as stored, with `metadata.resourceVersion`).
    pub fn with_pod_defaults(mut self, pod_defaults: &[Value]) -> Self {
        self.pod_defaults = PodDefaultSet::from_values(pod_defaults);
        self
    }

    /// A context with these related objects.
    pub fn with_objects(mut self, objects: Vec<Value>) -> Self {
        self.objects = objects.into();
        self
    }
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;
    use crate::poddefault::PodDefaultWebhook;
    use kfsec_types::admission::{GroupVersionKind, GroupVersionResource, Operation};

    fn pod_request(containers: usize) -> AdmissionRequest {
        let cs: Vec<Value> = (0..containers)
            .map(|i| json!({"name": format!("c{i}"), "image": "x"}))
            .collect();
        AdmissionRequest::for_object(
            Operation::Create,
            GroupVersionKind::new("", "v1", "Pod"),
            GroupVersionResource::new("", "v1", "pods"),
            "ns",
            "p",
            json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"a": "b"}}, "spec": {"containers": cs}}),
        )
    }

    fn ctx(env: usize, value_len: usize) -> Context {
        let env: Vec<Value> = (0..env)
            .map(|i| json!({"name": format!("E{i}"), "value": "v".repeat(value_len)}))
            .collect();
        Context::default().with_pod_defaults(&[json!({
            "apiVersion": "kubeflow.org/v1alpha1", "kind": "PodDefault",
            "metadata": {"name": "pd", "namespace": "ns", "resourceVersion": "1"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "desc": "d", "env": env}
        })])
    }

    #[test]
    fn outcomes_are_bounded() {
        // within the limits: a patch
        assert!(matches!(
            admit_bounded(&PodDefaultWebhook, &pod_request(3), &ctx(2, 10)),
            AdmissionOutcome::Patch(_)
        ));
        // too many containers: refused before the webhook runs
        match admit_bounded(&PodDefaultWebhook, &pod_request(MAX_CONTAINERS + 1), &ctx(2, 10)) {
            AdmissionOutcome::Deny { code: 413, message } => assert!(message.contains("containers"), "{message}"),
            other => panic!("{other:?}"),
        }
        // a patch over the byte limit: refused
        match admit_bounded(&PodDefaultWebhook, &pod_request(200), &ctx(40, 400)) {
            AdmissionOutcome::Deny { code: 413, message } => assert!(message.contains("bytes"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            container_count(&json!({"spec": {"template": {"spec": {"initContainers": [1, 2], "containers": [3]}}}})),
            3
        );
    }
}
