//! Kubernetes `rbac.authorization.k8s.io/v1` wire types: `PolicyRule`, `Role`, `ClusterRole` (with
//! aggregation rules and label selectors), `RoleBinding`, `ClusterRoleBinding`, `Subject`, `RoleRef`,
//! over the shared `ObjectMeta` and `LabelSelector` of [`crate::meta`]. The rule matching,
//! indexing, aggregation and explanations are `kfsec-authz`'s.
//!
//! Invariants: field names and omission rules follow the Kubernetes JSON exactly (camelCase, `verbs`
//! and `rules` always present, optional lists omitted when empty); `null` is accepted wherever Go
//! may write one for a nil slice or map; metadata fields this crate does not model are kept in
//! [`ObjectMeta::extra`], and unknown subject or role-ref kinds are kept verbatim, so every object
//! round-trips. These types carry no behaviour beyond constructors.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::meta::{LabelSelector, ObjectMeta, null_default};

/// The RBAC API group.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// The RBAC `apiVersion` written on objects built here.
pub const RBAC_API_VERSION: &str = "rbac.authorization.k8s.io/v1";
/// The wildcard accepted in verbs, API groups, resources and non-resource URLs.
pub const WILDCARD: &str = "*";

fn default_api_version() -> String {
    RBAC_API_VERSION.to_owned()
}

/// One RBAC rule. A resource rule has `apiGroups` and `resources`; a non-resource rule has
/// `nonResourceURLs`. Matching semantics live in `kfsec_authz::rule`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Verbs, or `*`.
    #[serde(default, deserialize_with = "null_default")]
    pub verbs: Vec<String>,
    /// API groups (`""` is the core group), or `*`.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    /// Resources: `pods`, `pods/log`, `*/scale`, or `*`.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// When non-empty, the rule applies only to requests naming one of these objects.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    /// Non-resource paths: exact, `*`, or a prefix ending in `*`.
    #[serde(
        rename = "nonResourceURLs",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

fn strings<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    items.into_iter().map(Into::into).collect()
}

impl PolicyRule {
    /// A resource rule over `api_groups` × `resources` with `verbs`.
    pub fn resource<G, R, V>(api_groups: G, resources: R, verbs: V) -> Self
    where
        G: IntoIterator,
        G::Item: Into<String>,
        R: IntoIterator,
        R::Item: Into<String>,
        V: IntoIterator,
        V::Item: Into<String>,
    {
        Self {
            verbs: strings(verbs),
            api_groups: strings(api_groups),
            resources: strings(resources),
            ..Self::default()
        }
    }

    /// A non-resource rule over `urls` with `verbs`.
    pub fn non_resource<U, V>(urls: U, verbs: V) -> Self
    where
        U: IntoIterator,
        U::Item: Into<String>,
        V: IntoIterator,
        V::Item: Into<String>,
    {
        Self {
            verbs: strings(verbs),
            non_resource_urls: strings(urls),
            ..Self::default()
        }
    }

    /// The same rule restricted to the named objects.
    #[must_use]
    pub fn with_resource_names<N>(mut self, names: N) -> Self
    where
        N: IntoIterator,
        N::Item: Into<String>,
    {
        self.resource_names = strings(names);
        self
    }
}

/// A namespaced set of rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    /// `rbac.authorization.k8s.io/v1`.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// `Role`.
    #[serde(default = "Role::default_kind")]
    pub kind: String,
    /// Metadata; `namespace` is required.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Rules.
    #[serde(default, deserialize_with = "null_default")]
    pub rules: Vec<PolicyRule>,
}

impl Role {
    fn default_kind() -> String {
        "Role".to_owned()
    }

    /// A Role in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, rules: Vec<PolicyRule>) -> Self {
        Self {
            api_version: default_api_version(),
            kind: Self::default_kind(),
            metadata: ObjectMeta::namespaced(namespace, name),
            rules,
        }
    }
}

/// A cluster-wide set of rules, possibly aggregated from other ClusterRoles by label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRole {
    /// `rbac.authorization.k8s.io/v1`.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// `ClusterRole`.
    #[serde(default = "ClusterRole::default_kind")]
    pub kind: String,
    /// Metadata; labels select this role into aggregators.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Rules. For an aggregator these are computed (the stored value is ignored).
    #[serde(default, deserialize_with = "null_default")]
    pub rules: Vec<PolicyRule>,
    /// When set, the role's rules are the union of the rules of every ClusterRole selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation_rule: Option<AggregationRule>,
}

impl ClusterRole {
    fn default_kind() -> String {
        "ClusterRole".to_owned()
    }

    /// A ClusterRole with rules.
    pub fn new(name: impl Into<String>, rules: Vec<PolicyRule>) -> Self {
        Self {
            api_version: default_api_version(),
            kind: Self::default_kind(),
            metadata: ObjectMeta::named(name),
            rules,
            aggregation_rule: None,
        }
    }

    /// An aggregating ClusterRole selecting roles by `selectors` (no rules of its own).
    pub fn aggregator(name: impl Into<String>, selectors: Vec<LabelSelector>) -> Self {
        Self {
            aggregation_rule: Some(AggregationRule {
                cluster_role_selectors: selectors,
            }),
            ..Self::new(name, Vec::new())
        }
    }

    /// The same role with `key=value` added to its labels.
    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.labels.insert(key.into(), value.into());
        self
    }

    /// Whether this role is an aggregator.
    pub fn is_aggregator(&self) -> bool {
        self.aggregation_rule.is_some()
    }
}

/// `aggregationRule`: the selectors whose matching ClusterRoles' rules are unioned.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AggregationRule {
    /// A ClusterRole is selected if any selector matches its labels.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub cluster_role_selectors: Vec<LabelSelector>,
}

/// Binds a Role or ClusterRole to subjects within one namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleBinding {
    /// `rbac.authorization.k8s.io/v1`.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// `RoleBinding`.
    #[serde(default = "RoleBinding::default_kind")]
    pub kind: String,
    /// Metadata; `namespace` is required.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Who is granted the role.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    /// The role granted.
    pub role_ref: RoleRef,
}

impl RoleBinding {
    fn default_kind() -> String {
        "RoleBinding".to_owned()
    }

    /// A RoleBinding in `namespace`.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        role_ref: RoleRef,
        subjects: Vec<Subject>,
    ) -> Self {
        Self {
            api_version: default_api_version(),
            kind: Self::default_kind(),
            metadata: ObjectMeta::namespaced(namespace, name),
            subjects,
            role_ref,
        }
    }
}

/// Binds a ClusterRole to subjects cluster-wide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRoleBinding {
    /// `rbac.authorization.k8s.io/v1`.
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// `ClusterRoleBinding`.
    #[serde(default = "ClusterRoleBinding::default_kind")]
    pub kind: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Who is granted the role.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    /// The role granted (only a ClusterRole resolves).
    pub role_ref: RoleRef,
}

impl ClusterRoleBinding {
    fn default_kind() -> String {
        "ClusterRoleBinding".to_owned()
    }

    /// A ClusterRoleBinding.
    pub fn new(name: impl Into<String>, role_ref: RoleRef, subjects: Vec<Subject>) -> Self {
        Self {
            api_version: default_api_version(),
            kind: Self::default_kind(),
            metadata: ObjectMeta::named(name),
            subjects,
            role_ref,
        }
    }
}

/// The kind of a binding subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SubjectKind {
    /// A user name.
    User,
    /// A group name.
    Group,
    /// A service account (`namespace` + `name`).
    ServiceAccount,
    /// Any other kind (never matches; kept for round-tripping).
    #[serde(untagged)]
    Other(String),
}

impl SubjectKind {
    /// The kind as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::User => "User",
            Self::Group => "Group",
            Self::ServiceAccount => "ServiceAccount",
            Self::Other(kind) => kind,
        }
    }
}

impl fmt::Display for SubjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a binding grants its role to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// `User`, `Group` or `ServiceAccount`.
    pub kind: SubjectKind,
    /// `rbac.authorization.k8s.io` for users and groups, `""` for service accounts.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    /// User, group or service-account name.
    pub name: String,
    /// Service-account namespace; when empty in a RoleBinding, the binding's namespace.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

impl Subject {
    /// A `User` subject.
    pub fn user(name: impl Into<String>) -> Self {
        Self {
            kind: SubjectKind::User,
            api_group: RBAC_GROUP.to_owned(),
            name: name.into(),
            namespace: String::new(),
        }
    }

    /// A `Group` subject.
    pub fn group(name: impl Into<String>) -> Self {
        Self {
            kind: SubjectKind::Group,
            api_group: RBAC_GROUP.to_owned(),
            name: name.into(),
            namespace: String::new(),
        }
    }

    /// A `ServiceAccount` subject.
    pub fn service_account(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind: SubjectKind::ServiceAccount,
            api_group: String::new(),
            name: name.into(),
            namespace: namespace.into(),
        }
    }
}

/// The kind of role a binding refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RoleRefKind {
    /// A Role in the binding's namespace.
    Role,
    /// A ClusterRole.
    ClusterRole,
    /// Any other kind (resolves to no rules; kept for round-tripping).
    #[serde(untagged)]
    Other(String),
}

impl RoleRefKind {
    /// The kind as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Role => "Role",
            Self::ClusterRole => "ClusterRole",
            Self::Other(kind) => kind,
        }
    }
}

impl fmt::Display for RoleRefKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role a binding grants.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleRef {
    /// `rbac.authorization.k8s.io`.
    #[serde(default, deserialize_with = "null_default")]
    pub api_group: String,
    /// `Role` or `ClusterRole`.
    pub kind: RoleRefKind,
    /// Role name.
    pub name: String,
}

impl RoleRef {
    /// A reference to a ClusterRole.
    pub fn cluster_role(name: impl Into<String>) -> Self {
        Self {
            api_group: RBAC_GROUP.to_owned(),
            kind: RoleRefKind::ClusterRole,
            name: name.into(),
        }
    }

    /// A reference to a Role in the binding's namespace.
    pub fn role(name: impl Into<String>) -> Self {
        Self {
            api_group: RBAC_GROUP.to_owned(),
            kind: RoleRefKind::Role,
            name: name.into(),
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use serde_json::json;

    #[test]
    fn role_binding_round_trips_with_unknown_metadata() {
        let input = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {
                "name": "namespaceAdmin",
                "namespace": "alice",
                "annotations": {"role": "admin", "user": "alice@example.com"},
                "ownerReferences": [{"apiVersion": "kubeflow.org/v1", "kind": "Profile", "name": "alice",
                    "uid": "u1", "controller": true, "blockOwnerDeletion": true}],
                "resourceVersion": "42",
                "uid": "abc",
                "creationTimestamp": "2024-01-01T00:00:00Z",
                "generation": 3
            },
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubeflow-admin"},
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice@example.com"},
                {"kind": "ServiceAccount", "name": "default-editor", "namespace": "alice"},
                {"kind": "Robot", "name": "r2"}
            ]
        });
        let rb: RoleBinding = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(rb.metadata.namespace, "alice");
        assert_eq!(rb.role_ref.kind, RoleRefKind::ClusterRole);
        assert_eq!(rb.subjects[1].kind, SubjectKind::ServiceAccount);
        assert_eq!(rb.subjects[2].kind, SubjectKind::Other("Robot".into()));
        assert!(rb.metadata.extra.contains_key("ownerReferences"));
        assert_eq!(serde_json::to_value(&rb).unwrap(), input);
    }

    #[test]
    fn cluster_role_accepts_null_rules_and_round_trips_aggregation() {
        let input = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "kubeflow-edit", "creationTimestamp": null,
                "labels": {"rbac.authorization.kubeflow.org/aggregate-to-kubeflow-admin": "true"}},
            "aggregationRule": {"clusterRoleSelectors": [
                {"matchLabels": {"rbac.authorization.kubeflow.org/aggregate-to-kubeflow-edit": "true"}},
                {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}
            ]},
            "rules": null
        });
        let cr: ClusterRole = serde_json::from_value(input).unwrap();
        assert!(cr.rules.is_empty());
        assert!(cr.is_aggregator());
        let out = serde_json::to_value(&cr).unwrap();
        assert_eq!(out["rules"], json!([]));
        assert_eq!(
            out["aggregationRule"]["clusterRoleSelectors"][1]["matchExpressions"][0]["operator"],
            "In"
        );
        let back: ClusterRole = serde_json::from_value(out).unwrap();
        assert_eq!(back, cr);
    }

    #[test]
    fn policy_rule_wire_names() {
        let rule = PolicyRule::non_resource(["/healthz", "/api/*"], ["get"]);
        assert_eq!(
            serde_json::to_value(&rule).unwrap(),
            json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/api/*"]})
        );
        let rule = PolicyRule::resource([""], ["pods"], ["get"]).with_resource_names(["a"]);
        assert_eq!(
            serde_json::to_value(&rule).unwrap(),
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["a"]})
        );
    }
}
