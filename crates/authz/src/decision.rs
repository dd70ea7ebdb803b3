//! What the authorizer answers: [`Decision`], the SelfSubjectRulesReview rule shapes, and the
//! [`Explanation`] behind `kfsec why`.
//!
//! Invariants: an allow reason has exactly the Kubernetes RBAC authorizer's text
//! (`RBAC: allowed by RoleBinding "name/ns" of ClusterRole "role" to User "u"`); a denial is
//! `NoOpinion` with no reason, as RBAC never denies outright (another authorizer may still allow).

use serde::Serialize;

use kfsec_types::rbac::{PolicyRule, RoleRef, Subject};

/// The result of one authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "decision")]
pub enum Decision {
    /// Allowed; `reason` names the binding, role and subject (empty for `system:masters`, as in
    /// Kubernetes' privileged-group authorizer).
    Allow {
        /// Kubernetes-format reason.
        reason: String,
    },
    /// No rule allows the request.
    NoOpinion,
}

impl Decision {
    /// Whether the request is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }

    /// The reason text; empty for `NoOpinion`.
    pub fn reason(&self) -> &str {
        match self {
            Self::Allow { reason } => reason,
            Self::NoOpinion => "",
        }
    }
}

/// A resource rule as reported by SelfSubjectRulesReview (`status.resourceRules[]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRule {
    /// Verbs.
    pub verbs: Vec<String>,
    /// API groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Resources.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Resource names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
}

/// A non-resource rule as reported by SelfSubjectRulesReview (`status.nonResourceRules[]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NonResourceRule {
    /// Verbs.
    pub verbs: Vec<String>,
    /// Paths.
    #[serde(rename = "nonResourceURLs", skip_serializing_if = "Vec::is_empty")]
    pub non_resource_urls: Vec<String>,
}

/// Splits policy rules the way Kubernetes' `RulesFor` does: a rule with resources yields a
/// resource rule, a rule with URLs a non-resource rule (a rule with both yields both).
pub fn split_rules<'a>(rules: impl IntoIterator<Item = &'a PolicyRule>) -> (Vec<ResourceRule>, Vec<NonResourceRule>) {
    let mut resource = Vec::new();
    let mut non_resource = Vec::new();
    for rule in rules {
        if !rule.resources.is_empty() {
            resource.push(ResourceRule {
                verbs: rule.verbs.clone(),
                api_groups: rule.api_groups.clone(),
                resources: rule.resources.clone(),
                resource_names: rule.resource_names.clone(),
            });
        }
        if !rule.non_resource_urls.is_empty() {
            non_resource.push(NonResourceRule {
                verbs: rule.verbs.clone(),
                non_resource_urls: rule.non_resource_urls.clone(),
            });
        }
    }
    (resource, non_resource)
}

/// RoleBinding or ClusterRoleBinding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum BindingKind {
    /// Namespaced.
    RoleBinding,
    /// Cluster-wide.
    ClusterRoleBinding,
}

/// One binding that applies to the requesting subject, and what it did for the request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingTrace {
    /// Binding kind.
    pub kind: BindingKind,
    /// Binding namespace (`""` for a ClusterRoleBinding).
    pub namespace: String,
    /// Binding name.
    pub name: String,
    /// The role it grants.
    pub role_ref: RoleRef,
    /// The first of its subjects that matches the requester.
    pub subject: Subject,
    /// Whether the referenced role exists (a missing role grants nothing).
    pub role_found: bool,
    /// How many rules the (aggregated) role has.
    pub rule_count: usize,
    /// The first rule that allows the request, if any.
    pub matched_rule: Option<PolicyRule>,
    /// Kubernetes' description of the source, e.g. `RoleBinding "a/ns" of ClusterRole "r" to User "u"`.
    pub source: String,
}

/// A binding of the subject outside the request's scope (a hint for denials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingRef {
    /// Namespace of the RoleBinding.
    pub namespace: String,
    /// Binding name.
    pub name: String,
    /// The role it grants.
    pub role_ref: RoleRef,
}

/// Why a request was allowed or not.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The decision, identical to `authorize`.
    pub decision: Decision,
    /// The user.
    pub user: String,
    /// The groups considered, including implicit service-account groups.
    pub groups: Vec<String>,
    /// Whether the user is in `system:masters`.
    pub privileged: bool,
    /// Every binding that applies to the subject in the request's scope: ClusterRoleBindings,
    /// then RoleBindings of the request's namespace, each sorted by name.
    pub bindings: Vec<BindingTrace>,
    /// RoleBindings of the subject in other namespaces, sorted by namespace then name.
    pub elsewhere: Vec<BindingRef>,
    /// One human-readable paragraph.
    pub summary: String,
}
