//! In-process admission: runs the registered mutating webhooks, then the validating ones, over an
//! object being created or updated through kfsec's own API, exactly as an API server would call
//! them (same rules, selectors and match conditions), applying each mutation before the next.
//!
//! Invariants: a denial stops the chain and nothing is returned but the [`Denial`]; the object is
//! only changed by patches the webhooks returned; validating webhooks see the fully mutated object;
//! a patch that does not apply is a denial (500), never a partial mutation.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::registration::{Registration, WebhookKind};
use crate::review::AdmissionRequest;
use crate::webhook::{AdmissionOutcome, Context, Webhook};

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
        let mut current = req.clone();
        for kind in [WebhookKind::Mutating, WebhookKind::Validating] {
            for (hook, reg) in self.hooks.iter().filter(|(_, r)| r.kind == kind) {
                current.object = Some(object.clone());
                if !reg.matches(&current, &ctx.namespace_labels) {
                    continue;
                }
                match crate::webhook::admit_bounded(hook.as_ref(), &current, ctx) {
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
