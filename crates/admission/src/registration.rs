//! How each webhook is registered with a Kubernetes API server (rules, selectors, review versions,
//! failure policy — as upstream's manifests register them), rule matching for the in-process
//! chain, and the Mutating/ValidatingWebhookConfiguration YAML that `kfsec webhook manifests`
//! prints.
//!
//! Invariants: the YAML is deterministic for a given input (same order, every string quoted) and
//! every webhook in it carries the given `caBundle`; matching never admits a request a real API
//! server would not send to the webhook (rules, namespace/object selectors, match conditions).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kfsec_types::admission::AdmissionRequest;
use kfsec_types::meta::LabelSelector;

use crate::selector::Selector;
use crate::webhook::Webhook;

/// Mutating or validating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKind {
    /// `MutatingWebhookConfiguration`.
    Mutating,
    /// `ValidatingWebhookConfiguration`.
    Validating,
}

impl WebhookKind {
    /// The configuration kind.
    pub fn configuration_kind(self) -> &'static str {
        match self {
            Self::Mutating => "MutatingWebhookConfiguration",
            Self::Validating => "ValidatingWebhookConfiguration",
        }
    }
}

/// `failurePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Reject the request when the webhook cannot be called.
    Fail,
    /// Admit the request when the webhook cannot be called.
    Ignore,
}

impl FailurePolicy {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "Fail",
            Self::Ignore => "Ignore",
        }
    }
}

/// One `rules` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `CREATE`, `UPDATE`, `DELETE`, `CONNECT` or `*`.
    pub operations: Vec<String>,
    /// API groups (`""` = core, `*` = all).
    pub api_groups: Vec<String>,
    /// Versions (`*` = all).
    pub api_versions: Vec<String>,
    /// Resources (`pods`, `pods/status`, `*`, `*/*`).
    pub resources: Vec<String>,
}

impl Rule {
    /// Builds a rule.
    pub fn new(operations: &[&str], api_groups: &[&str], api_versions: &[&str], resources: &[&str]) -> Self {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_string()).collect();
        Self {
            operations: v(operations),
            api_groups: v(api_groups),
            api_versions: v(api_versions),
            resources: v(resources),
        }
    }

    /// True if a request with these attributes falls under the rule.
    pub fn matches(&self, operation: &str, group: &str, version: &str, resource: &str, subresource: &str) -> bool {
        let any = |list: &[String], x: &str| list.iter().any(|l| l == "*" || l == x);
        any(&self.operations, operation)
            && any(&self.api_groups, group)
            && any(&self.api_versions, version)
            && self.resources.iter().any(|r| {
                let (res, sub) = r.split_once('/').unwrap_or((r.as_str(), ""));
                (res == "*" || res == resource) && (sub == subresource || (sub == "*" && !subresource.is_empty()))
                    || r == "*/*"
            })
    }
}

/// A `matchConditions` entry. Only the condition upstream uses is modelled, so it can be
/// evaluated in-process without a CEL interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchCondition {
    /// `request.userInfo.username != "<username>"`.
    UsernameIsNot {
        /// Condition name.
        name: &'static str,
        /// The excluded user.
        username: &'static str,
    },
}

impl MatchCondition {
    /// The condition's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::UsernameIsNot { name, .. } => name,
        }
    }

    /// The CEL expression.
    pub fn expression(&self) -> String {
        match self {
            Self::UsernameIsNot { username, .. } => format!("request.userInfo.username != \"{username}\""),
        }
    }

    /// Evaluates the condition.
    pub fn holds(&self, req: &AdmissionRequest) -> bool {
        match self {
            Self::UsernameIsNot { username, .. } => req.user_info.username != *username,
        }
    }
}

/// How one webhook is registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Webhook name.
    pub name: &'static str,
    /// Service path.
    pub path: &'static str,
    /// Mutating or validating.
    pub kind: WebhookKind,
    /// Name of the Mutating/ValidatingWebhookConfiguration it belongs to.
    pub configuration: &'static str,
    /// Name of the Service the API server calls (upstream's; port 443).
    pub service: &'static str,
    /// Rules.
    pub rules: Vec<Rule>,
    /// `admissionReviewVersions`, in upstream's order.
    pub admission_review_versions: &'static [&'static str],
    /// `failurePolicy`.
    pub failure_policy: FailurePolicy,
    /// `namespaceSelector`.
    pub namespace_selector: Option<LabelSelector>,
    /// `objectSelector`.
    pub object_selector: Option<LabelSelector>,
    /// `matchConditions`.
    pub match_conditions: Vec<MatchCondition>,
    /// `reinvocationPolicy` (mutating only).
    pub reinvocation_policy: Option<&'static str>,
}

impl Registration {
    /// True if a Kubernetes API server would send `req` to this webhook, given the labels of the
    /// request's namespace. An invalid selector matches nothing.
    pub fn matches(&self, req: &AdmissionRequest, namespace_labels: &BTreeMap<String, String>) -> bool {
        if !self.matches_except_namespace(req) {
            return false;
        }
        if let Some(sel) = &self.namespace_selector
            && !req.namespace.is_empty()
        {
            match Selector::compile(sel) {
                Ok(s) if s.matches_map(namespace_labels) => {}
                _ => return false,
            }
        }
        true
    }

    /// True if `req` falls under the rules, object selector and match conditions — everything
    /// [`Self::matches`] checks but the namespace selector (which needs the namespace's labels).
    pub fn matches_except_namespace(&self, req: &AdmissionRequest) -> bool {
        let op = req.operation.as_str();
        let r = &req.resource;
        if !self
            .rules
            .iter()
            .any(|rule| rule.matches(op, &r.group, &r.version, &r.resource, &req.sub_resource))
        {
            return false;
        }
        if let Some(sel) = &self.object_selector {
            let Ok(s) = Selector::compile(sel) else { return false };
            let old = req.old_object_labels();
            if !(s.matches_json(req.object_labels()) || (req.old_object.is_some() && s.matches_json(old))) {
                return false;
            }
        }
        self.match_conditions.iter().all(|c| c.holds(req))
    }
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A selector as compact JSON (members in sorted order).
fn selector_json(selector: &LabelSelector) -> String {
    serde_json::to_value(selector).unwrap_or_default().to_string()
}

fn flow(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|s| q(s)).collect();
    format!("[{}]", items.join(", "))
}

/// The Mutating/ValidatingWebhookConfiguration documents for `registrations`, grouped by
/// configuration in first-seen order, every webhook pointing at its Service in
/// `service_namespace` with `caBundle` set.
pub fn manifests_for(registrations: &[Registration], ca_bundle_b64: &str, service_namespace: &str) -> String {
    let mut groups: Vec<((WebhookKind, &str), Vec<&Registration>)> = Vec::new();
    for r in registrations {
        let key = (r.kind, r.configuration);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(r),
            None => groups.push((key, vec![r])),
        }
    }
    let mut out = String::new();
    for (i, ((kind, configuration), regs)) in groups.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let _ = writeln!(out, "apiVersion: admissionregistration.k8s.io/v1");
        let _ = writeln!(out, "kind: {}", kind.configuration_kind());
        let _ = writeln!(out, "metadata:\n  name: {}", q(configuration));
        out.push_str("webhooks:\n");
        for r in regs {
            let _ = writeln!(out, "- name: {}", q(r.name));
            let versions: Vec<String> = r.admission_review_versions.iter().map(|s| (*s).to_string()).collect();
            let _ = writeln!(out, "  admissionReviewVersions: {}", flow(&versions));
            let _ = writeln!(out, "  clientConfig:");
            let _ = writeln!(out, "    caBundle: {}", q(ca_bundle_b64));
            let _ = writeln!(out, "    service:");
            let _ = writeln!(out, "      name: {}", q(r.service));
            let _ = writeln!(out, "      namespace: {}", q(service_namespace));
            let _ = writeln!(out, "      path: {}", q(r.path));
            let _ = writeln!(out, "      port: 443");
            let _ = writeln!(out, "  failurePolicy: {}", r.failure_policy.as_str());
            let _ = writeln!(out, "  sideEffects: None");
            if let Some(p) = r.reinvocation_policy {
                let _ = writeln!(out, "  reinvocationPolicy: {p}");
            }
            if let Some(sel) = &r.namespace_selector {
                let _ = writeln!(out, "  namespaceSelector: {}", selector_json(sel));
            }
            if let Some(sel) = &r.object_selector {
                let _ = writeln!(out, "  objectSelector: {}", selector_json(sel));
            }
            if !r.match_conditions.is_empty() {
                out.push_str("  matchConditions:\n");
                for c in &r.match_conditions {
                    let _ = writeln!(out, "  - name: {}\n    expression: {}", q(c.name()), q(&c.expression()));
                }
            }
            out.push_str("  rules:\n");
            for rule in &r.rules {
                let _ = writeln!(out, "  - operations: {}", flow(&rule.operations));
                let _ = writeln!(out, "    apiGroups: {}", flow(&rule.api_groups));
                let _ = writeln!(out, "    apiVersions: {}", flow(&rule.api_versions));
                let _ = writeln!(out, "    resources: {}", flow(&rule.resources));
            }
        }
    }
    out
}

/// [`manifests_for`] over [`crate::all_webhooks`].
pub fn manifests(ca_bundle_b64: &str, service_namespace: &str) -> String {
    let regs: Vec<Registration> = crate::all_webhooks().iter().map(|w| w.registration()).collect();
    manifests_for(&regs, ca_bundle_b64, service_namespace)
}

/// Every distinct Service name the webhooks are registered behind (one certificate each).
pub fn service_names() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for w in crate::all_webhooks() {
        let s = w.registration().service;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// The registrations of `webhooks`, keyed by path.
pub fn by_path(webhooks: &[Box<dyn Webhook>]) -> BTreeMap<String, Registration> {
    webhooks
        .iter()
        .map(|w| (w.path().to_string(), w.registration()))
        .collect()
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn rule_matching() {
        let r = Rule::new(&["CREATE"], &[""], &["v1"], &["pods"]);
        assert!(r.matches("CREATE", "", "v1", "pods", ""));
        assert!(!r.matches("UPDATE", "", "v1", "pods", ""));
        assert!(!r.matches("CREATE", "", "v1", "pods", "status"));
        assert!(!r.matches("CREATE", "apps", "v1", "pods", ""));
        let r = Rule::new(&["*"], &["*"], &["*"], &["*/*"]);
        assert!(r.matches("DELETE", "x", "v9", "things", "status"));
        let r = Rule::new(&["*"], &["*"], &["*"], &["pods/*"]);
        assert!(r.matches("DELETE", "", "v1", "pods", "status"));
        assert!(!r.matches("DELETE", "", "v1", "pods", ""));
    }
}
