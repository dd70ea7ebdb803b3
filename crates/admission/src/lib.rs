//! Admission webhooks of the platform, as pure logic over the admission types of
//! `kfsec_types::admission`: AdmissionReview parsing and encoding ([`review`]), Kubeflow's
//! PodDefault mutator ([`poddefault`]), Katib's Experiment defaulter and
//! validator and trial pod mutator ([`katib`]), KServe's InferenceService defaulter and validator
//! ([`kserve`]), the PVCViewer defaulter and validator ([`pvcviewer`]), their registrations and
//! webhook-configuration manifests ([`registration`]), and the in-process chain ([`chain`]).
//!
//! Invariants: no IO, no clock, no randomness — every webhook is a function of the request and the
//! [`Context`] its caller builds from what the webhook declares it reads ([`ContextNeeds`]:
//! namespace labels, PodDefaults, related objects, settings; [`Chain::needs`] for a request); no
//! input makes anything here panic; malformed AdmissionReviews are errors for the HTTP layer to
//! answer with 400, while malformed objects inside a well-formed review are denials.
//!
//! Deliberate differences from upstream (everything else follows the upstream code cited in each
//! module):
//! - PodDefault conflict messages print Go `%#v` values, except that a non-nil pointer shows its
//!   JSON value instead of a memory address, and quantities show as `resource.MustParse("…")`;
//!   when several map entries conflict they are reported in key order (Go's order is random).
//! - A PodDefault sidecar equal to an existing container is compared against the container as
//!   submitted; upstream re-compares after env merging and then drops all containers.
//! - Responses always echo the request's apiVersion/kind (upstream PodDefault omits them) and a
//!   PodDefault conflict is sent with code 403 (upstream sends no code).
//! - Mutating webhooks return only semantic changes: the Go round-trip noise upstream patches carry
//!   (`creationTimestamp: null`, empty `status`) is not produced.
//! - Katib's trial pod mutator adds the trial labels and `KATIB_TRIAL_NAME` but does not inject the
//!   metrics-collector sidecar (that needs images and entrypoints from registries); the validator
//!   does not check templates kept in ConfigMaps, the FromVolume PV, or the batch Job conversion.
//! - KServe's validator skips storage-URI, GPU-type and autoscaler-metric checks; KServe's pod
//!   mutator (`/mutate-pods`, storage initializer and agent injection) is not provided.
//! - The PodDefault webhook is registered as `poddefaults-webhook-deployment.kubeflow.org` behind
//!   `poddefaults-webhook-service` (the `kubeflow/dashboard` manifests; Kubeflow ≤ 1.9 manifests
//!   used `admission-webhook-deployment.kubeflow.org`).

pub mod chain;
pub(crate) mod gofmt;
pub mod katib;
pub mod kserve;
pub mod poddefault;
pub mod pvcviewer;
pub mod registration;
pub mod review;
pub mod selector;
pub mod settings;
pub mod webhook;

pub use chain::{Chain, Denial};
pub use json_patch;
pub use poddefault::{PodDefault, PodDefaultError, PodDefaultSet, PodDefaultWebhook, apply_poddefaults};
pub use registration::{Registration, manifests};
pub use review::{ParsedReview, ReviewError, encode_response, parse_review, review, review_parsed};
pub use webhook::{
    AdmissionOutcome, Context, ContextNeeds, MAX_CONTAINERS, MAX_PATCH_BYTES, MAX_PATCH_OPS, ObjectKind, Settings,
    Webhook, admit_bounded,
};

/// Every webhook kfsec serves, mutating before validating within each component.
pub fn all_webhooks() -> Vec<Box<dyn Webhook>> {
    vec![
        Box::new(poddefault::PodDefaultWebhook),
        Box::new(katib::ExperimentDefaulter),
        Box::new(katib::ExperimentValidator),
        Box::new(katib::TrialPodMutator),
        Box::new(kserve::InferenceServiceDefaulter),
        Box::new(kserve::InferenceServiceValidator),
        Box::new(pvcviewer::PvcViewerDefaulter),
        Box::new(pvcviewer::PvcViewerValidator),
    ]
}

/// The webhook served at `path`, if any.
pub fn webhook_for_path(path: &str) -> Option<Box<dyn Webhook>> {
    all_webhooks().into_iter().find(|w| w.path() == path)
}
