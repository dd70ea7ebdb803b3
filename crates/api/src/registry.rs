//! The static table of served resource types (group, version, kind, plural, scope, verbs) and
//! their store keys.
//!
//! Invariants: the table is the only source of truth for what exists; a path naming a type not
//! in it is a 404. Two versions of one type (profiles v1 and v1beta1) share one storage prefix.
//! Store keys are `/k8s/{group|core}/{plural}/[{namespace}/]{name}`; names and namespaces are
//! validated to contain no `/` before a key is ever built from them.

/// Verbs of a stored type.
const CRUD: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Verbs of namespaces (no deletecollection, as in Kubernetes).
const NS_VERBS: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];
/// Verbs of the review types.
const CREATE_ONLY: &[&str] = &["create"];

/// How object names of a type are validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most types).
    Subdomain,
    /// RFC 1123 label (namespaces, profiles).
    Label,
    /// Any path segment: not `.`/`..`, no `/` or `%` (RBAC types, e.g. `system:aggregate-to-edit`).
    PathSegment,
}

/// The virtual (not stored) review types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Review {
    /// `authorization.k8s.io/v1 SelfSubjectAccessReview`.
    SelfSubjectAccess,
    /// `authorization.k8s.io/v1 SubjectAccessReview`.
    SubjectAccess,
    /// `authorization.k8s.io/v1 LocalSubjectAccessReview`.
    LocalSubjectAccess,
    /// `authorization.k8s.io/v1 SelfSubjectRulesReview`.
    SelfSubjectRules,
    /// `authentication.k8s.io/v1 TokenReview`.
    Token,
    /// `authentication.k8s.io/v1 SelfSubjectReview` (`kubectl auth whoami`).
    SelfSubject,
}

/// What backs a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Objects in the store; `status` says whether a `/status` subresource exists (then the
    /// main resource ignores status changes over HTTP).
    Stored {
        /// Has a status subresource.
        status: bool,
    },
    /// A create-only review computed on the fly.
    Review(Review),
    /// The type of a create-only subresource of another type, computed on the fly (TokenRequest
    /// at `serviceaccounts/{name}/token`); not in the table, so no path names it directly.
    Subresource,
}

/// One served resource type at one version.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group, `""` for core.
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural (the URL segment).
    pub plural: &'static str,
    /// Singular.
    pub singular: &'static str,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Served verbs.
    pub verbs: &'static [&'static str],
    /// Name validation.
    pub names: NameRule,
    /// Storage.
    pub backing: Backing,
}

impl Resource {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`.
    pub fn qualified(&self) -> String {
        crate::status::qualified(self.group, self.plural)
    }

    /// The group segment of store keys.
    pub fn storage_group(&self) -> &'static str {
        if self.group.is_empty() { "core" } else { self.group }
    }

    /// True for stored types.
    pub fn is_stored(&self) -> bool {
        matches!(self.backing, Backing::Stored { .. })
    }

    /// True if `/status` is served.
    pub fn has_status(&self) -> bool {
        matches!(self.backing, Backing::Stored { status: true })
    }

    /// True if `verb` is served.
    pub fn serves(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }

    /// The type behind subresource `sub` of this type: `status` (the type itself) where served,
    /// and `token` of core `serviceaccounts` ([`TOKEN_REQUEST`]).
    pub fn subresource(&self, sub: &str) -> Option<&Resource> {
        match sub {
            "status" if self.has_status() => Some(self),
            "token" if self.group.is_empty() && self.plural == "serviceaccounts" => Some(&TOKEN_REQUEST),
            _ => None,
        }
    }

    /// The store prefix of all objects of this type: `/k8s/{group}/{plural}/`.
    pub fn type_prefix(&self) -> String {
        format!("/k8s/{}/{}/", self.storage_group(), self.plural)
    }

    /// The store prefix for a list: the whole type, or one namespace of a namespaced type.
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/", self.type_prefix()),
            _ => self.type_prefix(),
        }
    }

    /// The store key of one object (namespace ignored for cluster-scoped types).
    pub fn key(&self, namespace: &str, name: &str) -> String {
        if self.namespaced {
            format!("{}{namespace}/{name}", self.type_prefix())
        } else {
            format!("{}{name}", self.type_prefix())
        }
    }
}

macro_rules! stored {
    ($g:expr, $v:expr, $k:expr, $p:expr, $s:expr, $short:expr, $ns:expr, $names:expr, $status:expr) => {
        stored!($g, $v, $k, $p, $s, $short, &[], $ns, CRUD, $names, $status)
    };
    ($g:expr, $v:expr, $k:expr, $p:expr, $s:expr, $short:expr, $cat:expr, $ns:expr, $verbs:expr, $names:expr, $status:expr) => {
        Resource {
            group: $g,
            version: $v,
            kind: $k,
            plural: $p,
            singular: $s,
            short_names: $short,
            categories: $cat,
            namespaced: $ns,
            verbs: $verbs,
            names: $names,
            backing: Backing::Stored { status: $status },
        }
    };
}

macro_rules! review {
    ($g:expr, $k:expr, $p:expr, $s:expr, $ns:expr, $r:expr) => {
        Resource {
            group: $g,
            version: "v1",
            kind: $k,
            plural: $p,
            singular: $s,
            short_names: &[],
            categories: &[],
            namespaced: $ns,
            verbs: CREATE_ONLY,
            names: NameRule::Subdomain,
            backing: Backing::Review($r),
        }
    };
}

const RBAC: &str = "rbac.authorization.k8s.io";
const KF: &str = "kubeflow.org";
const AUTHZ: &str = "authorization.k8s.io";
const AUTHN: &str = "authentication.k8s.io";
use NameRule::{Label, PathSegment, Subdomain};

static RESOURCES: &[Resource] = &[
    stored!(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        &["ns"],
        &[],
        false,
        NS_VERBS,
        Label,
        true
    ),
    stored!(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        &["sa"],
        true,
        Subdomain,
        false
    ),
    stored!(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        &["cm"],
        true,
        Subdomain,
        false
    ),
    stored!("", "v1", "Secret", "secrets", "secret", &[], true, Subdomain, false),
    stored!(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        &["po"],
        &["all"],
        true,
        CRUD,
        Subdomain,
        true
    ),
    stored!(
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        "resourcequota",
        &["quota"],
        true,
        Subdomain,
        true
    ),
    stored!("", "v1", "Event", "events", "event", &["ev"], true, Subdomain, false),
    stored!(RBAC, "v1", "Role", "roles", "role", &[], true, PathSegment, false),
    stored!(
        RBAC,
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        &[],
        true,
        PathSegment,
        false
    ),
    stored!(
        RBAC,
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        &[],
        false,
        PathSegment,
        false
    ),
    stored!(
        RBAC,
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        &[],
        false,
        PathSegment,
        false
    ),
    stored!(KF, "v1", "Profile", "profiles", "profile", &[], false, Label, true),
    stored!(
        KF,
        "v1",
        "Notebook",
        "notebooks",
        "notebook",
        &[],
        true,
        Subdomain,
        true
    ),
    stored!(KF, "v1beta1", "Profile", "profiles", "profile", &[], false, Label, true),
    stored!(
        KF,
        "v1beta1",
        "Experiment",
        "experiments",
        "experiment",
        &[],
        true,
        Subdomain,
        true
    ),
    stored!(KF, "v1beta1", "Trial", "trials", "trial", &[], true, Subdomain, true),
    stored!(
        KF,
        "v1alpha1",
        "PodDefault",
        "poddefaults",
        "poddefault",
        &[],
        true,
        Subdomain,
        false
    ),
    stored!(
        KF,
        "v1alpha1",
        "PVCViewer",
        "pvcviewers",
        "pvcviewer",
        &[],
        true,
        Subdomain,
        true
    ),
    stored!(
        "serving.kserve.io",
        "v1beta1",
        "InferenceService",
        "inferenceservices",
        "inferenceservice",
        &["isvc"],
        true,
        Subdomain,
        true
    ),
    review!(
        AUTHZ,
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        false,
        Review::SelfSubjectAccess
    ),
    review!(
        AUTHZ,
        "SubjectAccessReview",
        "subjectaccessreviews",
        "subjectaccessreview",
        false,
        Review::SubjectAccess
    ),
    review!(
        AUTHZ,
        "LocalSubjectAccessReview",
        "localsubjectaccessreviews",
        "localsubjectaccessreview",
        true,
        Review::LocalSubjectAccess
    ),
    review!(
        AUTHZ,
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        false,
        Review::SelfSubjectRules
    ),
    review!(
        AUTHN,
        "TokenReview",
        "tokenreviews",
        "tokenreview",
        false,
        Review::Token
    ),
    review!(
        AUTHN,
        "SelfSubjectReview",
        "selfsubjectreviews",
        "selfsubjectreview",
        false,
        Review::SelfSubject
    ),
];

/// `authentication.k8s.io/v1 TokenRequest`, served only as `serviceaccounts/{name}/token`
/// (create).
pub static TOKEN_REQUEST: Resource = Resource {
    group: AUTHN,
    version: "v1",
    kind: "TokenRequest",
    plural: "token",
    singular: "",
    short_names: &[],
    categories: &[],
    namespaced: true,
    verbs: CREATE_ONLY,
    names: Subdomain,
    backing: Backing::Subresource,
};

/// Groups with their versions, preferred version first, in discovery order.
static GROUPS: &[(&str, &[&str])] = &[
    (RBAC, &["v1"]),
    (KF, &["v1", "v1beta1", "v1alpha1"]),
    ("serving.kserve.io", &["v1beta1"]),
    (AUTHZ, &["v1"]),
    (AUTHN, &["v1"]),
];

/// Every served type.
pub fn all() -> &'static [Resource] {
    RESOURCES
}

/// Named API groups and their versions (preferred first); the core group is not listed.
pub fn groups() -> &'static [(&'static str, &'static [&'static str])] {
    GROUPS
}

/// True if `group/version` is served (`""`/`v1` is core).
pub fn serves_group_version(group: &str, version: &str) -> bool {
    RESOURCES.iter().any(|r| r.group == group && r.version == version)
}

/// The types served at `group/version`.
pub fn in_group_version<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static Resource> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// The type with this plural at `group/version`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The type of `kind` at `apiVersion` (`v1` or `group/version`).
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// One representative per storage prefix among namespaced stored types (for namespace cleanup).
pub fn namespaced_storage() -> impl Iterator<Item = &'static Resource> {
    RESOURCES.iter().enumerate().filter_map(|(i, r)| {
        let first = RESOURCES
            .iter()
            .position(|o| o.group == r.group && o.plural == r.plural)
            .unwrap_or(i);
        (first == i && r.namespaced && r.is_stored()).then_some(r)
    })
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn keys_and_prefixes() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(pods.key("ns", "p"), "/k8s/core/pods/ns/p");
        assert_eq!(pods.list_prefix(None), "/k8s/core/pods/");
        assert_eq!(pods.list_prefix(Some("ns")), "/k8s/core/pods/ns/");
        let ns = find("", "v1", "namespaces").unwrap();
        assert_eq!(ns.key("ignored", "x"), "/k8s/core/namespaces/x");
        assert_eq!(ns.list_prefix(Some("x")), "/k8s/core/namespaces/");
        let p1 = find("kubeflow.org", "v1", "profiles").unwrap();
        let p2 = find("kubeflow.org", "v1beta1", "profiles").unwrap();
        assert_eq!(p1.key("", "a"), p2.key("", "a"));
        assert_eq!(p1.key("", "a"), "/k8s/kubeflow.org/profiles/a");
        assert_eq!(pods.qualified(), "pods");
        assert_eq!(p1.qualified(), "profiles.kubeflow.org");
    }

    #[test]
    fn every_group_version_is_listed_and_kinds_unique() {
        for r in all() {
            if !r.group.is_empty() {
                let g = groups().iter().find(|(g, _)| *g == r.group).unwrap();
                assert!(g.1.contains(&r.version), "{} {}", r.group, r.version);
            }
            assert_eq!(find_kind(&r.api_version(), r.kind).unwrap(), r);
        }
        let n: Vec<_> = namespaced_storage().map(|r| r.plural).collect();
        assert!(n.contains(&"pods") && !n.contains(&"namespaces") && !n.contains(&"profiles"));
        assert_eq!(n.iter().filter(|p| **p == "poddefaults").count(), 1);
    }
}
