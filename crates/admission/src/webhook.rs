//! The webhook contract: the [`Webhook`] trait every mutator/validator implements, its
//! [`AdmissionOutcome`], and the per-request [`Context`] (namespace labels, PodDefaults, related
//! objects and settings) the caller supplies.
//!
//! Invariants: webhooks are pure — everything they may look at arrives in the request or the
//! context, so the same input always gives the same outcome; an outcome is either allow, a
//! JSON Patch against exactly the object in the request, or a denial with an HTTP code.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::katib::KatibSettings;
use crate::kserve::KServeSettings;
use crate::poddefault::PodDefaultSet;
use crate::pvcviewer::PvcViewerSettings;
use crate::registration::Registration;
use crate::review::AdmissionRequest;

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

/// A mutating or validating admission webhook.
pub trait Webhook: Send + Sync {
    /// The webhook's registered name (e.g. `validator.experiment.katib.kubeflow.org`).
    fn name(&self) -> &str;
    /// The HTTP path it is served on (e.g. `/validate-experiment`).
    fn path(&self) -> &str;
    /// How upstream registers it (rules, selectors, versions, failure policy).
    fn registration(&self) -> Registration;
    /// Admits one request.
    fn admit(&self, req: &AdmissionRequest, ctx: &Context) -> AdmissionOutcome;
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
