//! In-process admission: runs the registered mutating webhooks, then the validating ones, over an
//! object being created or updated through kfsec's own API, exactly as an API server would call
//! them (same rules, selectors and match conditions), applying each mutation before the next.
//!
//! Invariants: a denial stops the chain and nothing is returned but the [`Denial`]; the object is
//! only changed by patches the webhooks returned; validating webhooks see the fully mutated object;
//! a patch that does not apply is a denial (500), never a partial mutation.

use std::collections::BTreeMap;

use kfsec_types::admission::AdmissionRequest;
use serde_json::Value;

use crate::registration::{FailurePolicy, Registration, WebhookKind};
use crate::webhook::{AdmissionOutcome, Context, ContextNeeds, Webhook};

/// A refusal by one webhook of the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.text())]
pub struct Denial {
    /// The webhook's name.
    pub webhook: String,
    /// HTTP status code it gave.
    pub code: u16,
    /// Its message.
    pub message: String,
}

impl Denial {
    /// Kubernetes' text: `admission webhook "<name>" denied the request: <message>`.
    pub fn text(&self) -> String {
        if self.message.is_empty() {
            format!(
                "admission webhook {:?} denied the request without explanation",
                self.webhook
            )
        } else {
            format!(
                "admission webhook {:?} denied the request: {}",
                self.webhook, self.message
            )
        }
    }
}

/// A mutating webhook the chain called ([`Chain::admit_observed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mutation {
    /// Its position among the chain's mutating webhooks (Kubernetes' `index`).
    pub index: usize,
    /// Its name.
    pub webhook: &'static str,
    /// Its MutatingWebhookConfiguration.
    pub configuration: &'static str,
    /// Whether it returned a patch.
    pub mutated: bool,
}

/// A set of webhooks with their registrations, ready to run in-process.
pub struct Chain {
    hooks: Vec<(Box<dyn Webhook>, Registration)>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.hooks.iter().map(|(_, r)| r.name)).finish()
    }
}

impl Chain {
    /// A chain over `webhooks` (mutating ones run first, each group in the given order).
    pub fn new(webhooks: Vec<Box<dyn Webhook>>) -> Self {
        let hooks = webhooks
            .into_iter()
            .map(|w| {
                let r = w.registration();
                (w, r)
            })
            .collect();
        Self { hooks }
    }

    /// The chain of [`crate::all_webhooks`].
    pub fn standard() -> Self {
        Self::new(crate::all_webhooks())
    }

    /// True if any webhook would be called for `req` (lets callers skip building a context).
    pub fn wants(&self, req: &AdmissionRequest, namespace_labels: &BTreeMap<String, String>) -> bool {
        self.hooks.iter().any(|(_, r)| r.matches(req, namespace_labels))
    }

    /// The webhooks that may be called for `req`, whatever its namespace's labels.
    fn candidates<'a>(
        &'a self,
        req: &'a AdmissionRequest,
    ) -> impl Iterator<Item = &'a (Box<dyn Webhook>, Registration)> {
        self.hooks.iter().filter(|(_, r)| r.matches_except_namespace(req))
    }

    /// The context `req` needs: the union of what every webhook that may be called for it
    /// declares, plus the namespace's labels when one of them has a namespace selector. `None`
    /// when no webhook can be called (no context is needed at all).
    pub fn needs(&self, req: &AdmissionRequest) -> Option<ContextNeeds> {
        let mut out: Option<ContextNeeds> = None;
        for (hook, reg) in self.candidates(req) {
            let mut n = out.take().unwrap_or_default().union(&hook.context_needs());
            n.namespace_labels |= reg.namespace_selector.is_some() && !req.namespace.is_empty();
            out = Some(n);
        }
        out
    }

    /// When the context of `req` cannot be loaded: the first webhook that may be called for it
    /// and whose `failurePolicy` is `Fail` (the request must be refused on its behalf), or `None`
    /// when every such webhook is `Ignore` (the request goes on without them).
    pub fn failing_webhook(&self, req: &AdmissionRequest) -> Option<&'static str> {
        self.candidates(req)
            .find(|(hook, r)| {
                r.failure_policy == FailurePolicy::Fail
                    && (r.namespace_selector.is_some() || !hook.context_needs().is_empty())
            })
            .map(|(_, r)| r.name)
    }

    /// Names of the webhooks that would be called for `req`, in call order.
    pub fn selected(&self, req: &AdmissionRequest, namespace_labels: &BTreeMap<String, String>) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for kind in [WebhookKind::Mutating, WebhookKind::Validating] {
            out.extend(
                self.hooks
                    .iter()
                    .filter(|(_, r)| r.kind == kind && r.matches(req, namespace_labels))
                    .map(|(_, r)| r.name),
            );
        }
        out
    }

    /// Admits `object` (which replaces `req.object`), mutating it in place.
    pub fn admit(&self, req: &AdmissionRequest, ctx: &Context, object: &mut Value) -> Result<(), Denial> {
        self.admit_observed(req, ctx, object, &mut |_| {})
    }

    /// [`Chain::admit`], telling `observe` about every mutating webhook called (for the audit
    /// log's `mutation.webhook.admission.k8s.io/round_0_index_<i>` annotations).
    pub fn admit_observed(
        &self,
        req: &AdmissionRequest,
        ctx: &Context,
        object: &mut Value,
        observe: &mut dyn FnMut(Mutation),
    ) -> Result<(), Denial> {
        let mut current = req.clone();
        for kind in [WebhookKind::Mutating, WebhookKind::Validating] {
            for (index, (hook, reg)) in self.hooks.iter().filter(|(_, r)| r.kind == kind).enumerate() {
                current.object = Some(object.clone());
                if !reg.matches(&current, &ctx.namespace_labels) {
                    continue;
                }
                let outcome = crate::webhook::admit_bounded(hook.as_ref(), &current, ctx);
                if kind == WebhookKind::Mutating {
                    observe(Mutation {
                        index,
                        webhook: reg.name,
                        configuration: reg.configuration,
                        mutated: matches!(outcome, AdmissionOutcome::Patch(_)),
                    });
                }
                match outcome {
                    AdmissionOutcome::Allow => {}
                    AdmissionOutcome::Patch(patch) => {
                        if kind == WebhookKind::Validating {
                            continue;
                        }
                        let mut next = object.clone();
                        if let Err(e) = json_patch::patch(&mut next, &patch) {
                            return Err(Denial {
                                webhook: reg.name.to_string(),
                                code: 500,
                                message: format!("the webhook's patch does not apply: {e}"),
                            });
                        }
                        *object = next;
                    }
                    AdmissionOutcome::Deny { code, message } => {
                        return Err(Denial {
                            webhook: reg.name.to_string(),
                            code,
                            message,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;
    use kfsec_types::admission::{GroupVersionKind, GroupVersionResource, Operation};

    fn request(group: &str, version: &str, kind: &str, plural: &str, ns: &str) -> AdmissionRequest {
        AdmissionRequest::for_object(
            Operation::Create,
            GroupVersionKind::new(group, version, kind),
            GroupVersionResource::new(group, version, plural),
            ns,
            "x",
            json!({"metadata": {"name": "x", "namespace": ns}}),
        )
    }

    #[test]
    fn needs_are_the_union_of_the_webhooks_that_may_be_called() {
        let chain = Chain::standard();
        // nothing registered for ConfigMaps: no context at all
        assert_eq!(chain.needs(&request("", "v1", "ConfigMap", "configmaps", "ns")), None);
        // Pods: PodDefaults (namespace-selected) and Katib's trial pod mutator (Trials, Jobs)
        let pods = chain.needs(&request("", "v1", "Pod", "pods", "ns")).unwrap();
        assert!(pods.pod_defaults && pods.namespace_labels && !pods.settings);
        assert_eq!(pods.objects, [("batch/v1", "Job"), ("kubeflow.org/v1beta1", "Trial")]);
        assert_eq!(
            chain.failing_webhook(&request("", "v1", "Pod", "pods", "ns")),
            Some("poddefaults-webhook-deployment.kubeflow.org")
        );
        // Experiments: labels and settings, no objects
        let exp = chain
            .needs(&request("kubeflow.org", "v1beta1", "Experiment", "experiments", "ns"))
            .unwrap();
        assert!(exp.namespace_labels && exp.settings && !exp.pod_defaults && exp.objects.is_empty());
        // declarations are canonical (objects sorted, no duplicates): equal needs, equal cache keys
        for hook in crate::all_webhooks() {
            let n = hook.context_needs();
            assert_eq!(n.clone().union(&n), n, "{}", hook.name());
        }
    }
}
