//! Property tests: the indexed authorizer against a plain reference model written independently
//! here (a naive scan over every binding and rule, aggregation as the controller's fixed point).
//!
//! Worlds are random Kubeflow-like setups: profiles (namespaces) with an owner RoleBinding to
//! `kubeflow-admin`, contributors bound to `kubeflow-edit`/`kubeflow-view`, the `default-editor`
//! and `default-viewer` service accounts, random extra RoleBindings and ClusterRoleBindings,
//! random custom (aggregating or labelled) ClusterRoles and namespaced Roles, on top of
//! Kubeflow's default ClusterRoles. Every (user, namespace, resource, verb) of a fixed grid is
//! decided by both and must agree; incremental updates are checked the same way, and against a
//! rebuild from the final objects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test-only crate: helpers outside #[test] fns may fail loudly

use std::collections::{BTreeMap, HashMap};

use kfsec_authz::{Attributes, Authorizer, Change, Decision, RbacKind, RbacObject, kubeflow_default_cluster_roles};
use kfsec_types::rbac::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, RoleRefKind, Subject, SubjectKind,
};
use kfsec_types::{LabelSelector, LabelSelectorRequirement};
use proptest::prelude::*;
use proptest::sample::subsequence;

const NAMESPACES: [&str; 4] = ["p0", "p1", "p2", "p3"];
const USERS: [&str; 5] = ["u0", "u1", "u2", "u3", "u4"];
const GROUP_POOL: [&str; 3] = ["g0", "g1", "system:authenticated"];
const SA_USERS: [&str; 3] = [
    "system:serviceaccount:p0:default-editor",
    "system:serviceaccount:p1:default-viewer",
    "system:serviceaccount:p2:robot",
];
const QUERY_NAMESPACES: [&str; 6] = ["p0", "p1", "p2", "p3", "", "elsewhere"];
/// (group, resource, subresource, name)
const QUERY_RESOURCES: [(&str, &str, &str, &str); 10] = [
    ("pipelines.kubeflow.org", "experiments", "", ""),
    ("pipelines.kubeflow.org", "runs", "", ""),
    ("kubeflow.org", "notebooks", "", ""),
    ("", "pods", "", ""),
    ("", "pods", "log", ""),
    ("", "secrets", "", ""),
    ("apps", "deployments", "scale", ""),
    ("", "configmaps", "", "cm1"),
    ("custom.io", "widgets", "", ""),
    ("rbac.authorization.k8s.io", "rolebindings", "", ""),
];
const QUERY_PATHS: [&str; 3] = ["/healthz", "/apis/custom", "/metrics"];
const QUERY_VERBS: [&str; 5] = ["get", "list", "create", "delete", "readArtifact"];

const VERB_POOL: [&str; 6] = ["get", "list", "create", "delete", "readArtifact", "*"];
const API_GROUP_POOL: [&str; 6] = ["", "kubeflow.org", "pipelines.kubeflow.org", "custom.io", "apps", "*"];
const RESOURCE_POOL: [&str; 12] = [
    "pods",
    "pods/log",
    "*/scale",
    "*",
    "notebooks",
    "experiments",
    "secrets",
    "deployments/scale",
    "configmaps",
    "widgets",
    "runs",
    "deployments",
];
const URL_POOL: [&str; 4] = ["/healthz", "/apis/*", "*", "/apis"];
const CUSTOM_NAMES: [&str; 4] = ["custom-0", "custom-1", "custom-2", "custom-3"];
const ROLE_NAMES: [&str; 2] = ["role-0", "role-1"];
const AGG_VIEW: &str = "rbac.authorization.kubeflow.org/aggregate-to-kubeflow-view";
const AGG_EDIT: &str = "rbac.authorization.kubeflow.org/aggregate-to-kubeflow-edit";
const AGG_ADMIN: &str = "rbac.authorization.kubeflow.org/aggregate-to-kubeflow-admin";

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------- strategies

fn rule_strategy() -> impl Strategy<Value = PolicyRule> {
    let names = prop_oneof![
        6 => Just(vec![]),
        1 => Just(vec!["cm1"]),
        1 => Just(vec!["other"]),
        1 => Just(vec!["x", "cm1"]),
    ];
    prop_oneof![
        9 => (
            subsequence(VERB_POOL.to_vec(), 1..=3),
            subsequence(API_GROUP_POOL.to_vec(), 1..=2),
            subsequence(RESOURCE_POOL.to_vec(), 1..=3),
            names,
        )
            .prop_map(|(v, g, r, n)| PolicyRule {
                verbs: owned(&v),
                api_groups: owned(&g),
                resources: owned(&r),
                resource_names: owned(&n),
                non_resource_urls: vec![],
            }),
        1 => (subsequence(VERB_POOL.to_vec(), 1..=2), subsequence(URL_POOL.to_vec(), 1..=2))
            .prop_map(|(v, u)| PolicyRule::non_resource(owned(&u), owned(&v))),
    ]
}

fn rules_strategy() -> impl Strategy<Value = Vec<PolicyRule>> {
    prop::collection::vec(rule_strategy(), 1..=3)
}

fn labels_strategy() -> impl Strategy<Value = BTreeMap<String, String>> {
    let pool = vec![
        (AGG_VIEW, "true"),
        (AGG_EDIT, "true"),
        (AGG_ADMIN, "true"),
        ("tier", "a"),
        ("tier", "b"),
        ("x", "1"),
    ];
    subsequence(pool, 0..=2).prop_map(|pairs| pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}

fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: op.into(),
        values: owned(values),
    }
}

fn selector_strategy() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        Just(LabelSelector::match_label("tier", "a")),
        Just(LabelSelector::match_label("x", "1")),
        Just(LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![expr("tier", "In", &["a", "b"])],
        }),
        Just(LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![expr("tier", "NotIn", &["a"])],
        }),
        Just(LabelSelector {
            match_labels: BTreeMap::from([("x".to_owned(), "1".to_owned())]),
            match_expressions: vec![expr("tier", "DoesNotExist", &[])],
        }),
        Just(LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![expr("x", "Exists", &[])],
        }),
        // Invalid: matches nothing.
        Just(LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![expr("tier", "In", &[])],
        }),
    ]
}

fn custom_cluster_role(name: &'static str) -> impl Strategy<Value = ClusterRole> {
    prop_oneof![
        3 => (labels_strategy(), rules_strategy()).prop_map(move |(labels, rules)| {
            let mut role = ClusterRole::new(name, rules);
            role.metadata.labels = labels;
            role
        }),
        1 => (labels_strategy(), prop::collection::vec(selector_strategy(), 1..=2)).prop_map(move |(labels, sels)| {
            let mut role = ClusterRole::aggregator(name, sels);
            role.metadata.labels = labels;
            role
        }),
    ]
}

fn custom_cluster_roles() -> impl Strategy<Value = Vec<ClusterRole>> {
    (
        prop::option::of(custom_cluster_role(CUSTOM_NAMES[0])),
        prop::option::of(custom_cluster_role(CUSTOM_NAMES[1])),
        prop::option::of(custom_cluster_role(CUSTOM_NAMES[2])),
        prop::option::of(custom_cluster_role(CUSTOM_NAMES[3])),
    )
        .prop_map(|(a, b, c, d)| [a, b, c, d].into_iter().flatten().collect())
}

fn role_strategy() -> impl Strategy<Value = Role> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        prop::sample::select(ROLE_NAMES.to_vec()),
        rules_strategy(),
    )
        .prop_map(|(ns, name, rules)| Role::new(ns, name, rules))
}

fn subject_strategy() -> impl Strategy<Value = Subject> {
    prop_oneof![
        4 => prop::sample::select(USERS.to_vec()).prop_map(Subject::user),
        2 => prop::sample::select(vec!["g0", "g1", "system:authenticated", "system:serviceaccounts", "system:serviceaccounts:p1"])
            .prop_map(Subject::group),
        1 => Just(Subject::service_account("p0", "default-editor")),
        1 => Just(Subject::service_account("", "default-viewer")),
        1 => Just(Subject::service_account("p2", "robot")),
        1 => Just(Subject::user("system:serviceaccount:p2:robot")),
        1 => Just(Subject { kind: SubjectKind::Other("Robot".into()), api_group: String::new(), name: "u0".into(), namespace: String::new() }),
    ]
}

fn role_ref_strategy(cluster_admin: bool) -> impl Strategy<Value = RoleRef> {
    let mut cluster = vec![
        "kubeflow-admin",
        "kubeflow-edit",
        "kubeflow-view",
        "missing",
        "kubeflow-pipelines-view",
    ];
    cluster.extend(CUSTOM_NAMES);
    if cluster_admin {
        cluster.push("cluster-admin");
    }
    prop_oneof![
        6 => prop::sample::select(cluster).prop_map(RoleRef::cluster_role),
        2 => prop::sample::select(vec!["role-0", "role-1", "missing-role"]).prop_map(RoleRef::role),
        1 => Just(RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: RoleRefKind::Other("Weird".into()), name: "kubeflow-admin".into() }),
    ]
}

fn extra_rb() -> impl Strategy<Value = RoleBinding> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        prop::sample::select(vec!["x0", "x1", "x2", "namespaceAdmin"]),
        role_ref_strategy(true),
        prop::collection::vec(subject_strategy(), 1..=3),
    )
        .prop_map(|(ns, name, role_ref, subjects)| RoleBinding::new(ns, name, role_ref, subjects))
}

fn extra_crb() -> impl Strategy<Value = ClusterRoleBinding> {
    (
        prop::sample::select(vec!["c0", "c1", "c2"]),
        role_ref_strategy(false),
        prop::collection::vec(subject_strategy(), 1..=2),
    )
        .prop_map(|(name, role_ref, subjects)| ClusterRoleBinding::new(name, role_ref, subjects))
}

/// One profile: owner, contributors `(user, edit?)`, whether the SA bindings exist.
fn profile_strategy() -> impl Strategy<Value = (usize, Vec<(usize, bool)>, bool)> {
    (
        0..USERS.len(),
        prop::collection::vec((0..USERS.len(), any::<bool>()), 0..=3),
        any::<bool>(),
    )
}

#[derive(Debug, Clone)]
struct World {
    roles: Vec<Role>,
    cluster_roles: Vec<ClusterRole>,
    rbs: Vec<RoleBinding>,
    crbs: Vec<ClusterRoleBinding>,
    /// Groups of each of `USERS`.
    memberships: Vec<Vec<String>>,
}

fn upsert_by<T>(list: &mut Vec<T>, item: T, same: impl Fn(&T, &T) -> bool) {
    match list.iter().position(|x| same(x, &item)) {
        Some(i) => list[i] = item,
        None => list.push(item),
    }
}

fn same_rb(a: &RoleBinding, b: &RoleBinding) -> bool {
    a.metadata.namespace == b.metadata.namespace && a.metadata.name == b.metadata.name
}
fn same_crb(a: &ClusterRoleBinding, b: &ClusterRoleBinding) -> bool {
    a.metadata.name == b.metadata.name
}
fn same_role(a: &Role, b: &Role) -> bool {
    a.metadata.namespace == b.metadata.namespace && a.metadata.name == b.metadata.name
}
fn same_cr(a: &ClusterRole, b: &ClusterRole) -> bool {
    a.metadata.name == b.metadata.name
}

fn world_strategy() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(profile_strategy(), NAMESPACES.len()),
        custom_cluster_roles(),
        prop::collection::vec(role_strategy(), 0..=3),
        prop::collection::vec(extra_rb(), 0..=5),
        prop::collection::vec(extra_crb(), 0..=3),
        prop::collection::vec(subsequence(GROUP_POOL.to_vec(), 0..=2), USERS.len()),
    )
        .prop_map(|(profiles, customs, roles, extra_rbs, extra_crbs, memberships)| {
            let mut world = World {
                roles: vec![],
                cluster_roles: kubeflow_default_cluster_roles(),
                rbs: vec![],
                crbs: vec![],
                memberships: memberships.into_iter().map(|g| owned(&g)).collect(),
            };
            for role in customs {
                upsert_by(&mut world.cluster_roles, role, same_cr);
            }
            for role in roles {
                upsert_by(&mut world.roles, role, same_role);
            }
            for (ns, (owner, contributors, sas)) in NAMESPACES.iter().zip(profiles) {
                let rb = RoleBinding::new(
                    *ns,
                    "namespaceAdmin",
                    RoleRef::cluster_role("kubeflow-admin"),
                    vec![Subject::user(USERS[owner])],
                );
                upsert_by(&mut world.rbs, rb, same_rb);
                if sas {
                    let editor = RoleBinding::new(
                        *ns,
                        "default-editor",
                        RoleRef::cluster_role("kubeflow-edit"),
                        vec![Subject::service_account(*ns, "default-editor")],
                    );
                    // Unqualified: defaults to the binding's namespace.
                    let viewer = RoleBinding::new(
                        *ns,
                        "default-viewer",
                        RoleRef::cluster_role("kubeflow-view"),
                        vec![Subject::service_account("", "default-viewer")],
                    );
                    upsert_by(&mut world.rbs, editor, same_rb);
                    upsert_by(&mut world.rbs, viewer, same_rb);
                }
                for (user, edit) in contributors {
                    let role = if edit { "edit" } else { "view" };
                    let rb = RoleBinding::new(
                        *ns,
                        format!("user-{}-clusterrole-{role}", USERS[user]),
                        RoleRef::cluster_role(format!("kubeflow-{role}")),
                        vec![Subject::user(USERS[user])],
                    );
                    upsert_by(&mut world.rbs, rb, same_rb);
                }
            }
            for rb in extra_rbs {
                upsert_by(&mut world.rbs, rb, same_rb);
            }
            for crb in extra_crbs {
                upsert_by(&mut world.crbs, crb, same_crb);
            }
            world
        })
}

// ---------------------------------------------------------------- reference model

fn ref_selector(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in &sel.match_labels {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in &sel.match_expressions {
        let got = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => !e.values.is_empty() && got.is_some() && e.values.contains(got.unwrap()),
            "NotIn" => !e.values.is_empty() && (got.is_none() || !e.values.contains(got.unwrap())),
            "Exists" => e.values.is_empty() && got.is_some(),
            "DoesNotExist" => e.values.is_empty() && got.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// The clusterrole-aggregation controller, iterated to its fixed point.
fn ref_cluster_rules(cluster_roles: &[ClusterRole]) -> HashMap<String, Vec<PolicyRule>> {
    let mut current: HashMap<String, Vec<PolicyRule>> = cluster_roles
        .iter()
        .map(|cr| {
            let rules = if cr.aggregation_rule.is_some() {
                vec![]
            } else {
                cr.rules.clone()
            };
            (cr.metadata.name.clone(), rules)
        })
        .collect();
    loop {
        let mut changed = false;
        for agg in cluster_roles {
            let Some(rule) = &agg.aggregation_rule else { continue };
            let mut next: Vec<PolicyRule> = vec![];
            for sel in &rule.cluster_role_selectors {
                for other in cluster_roles {
                    if other.metadata.name == agg.metadata.name || !ref_selector(sel, &other.metadata.labels) {
                        continue;
                    }
                    for r in &current[&other.metadata.name] {
                        if !next.contains(r) {
                            next.push(r.clone());
                        }
                    }
                }
            }
            let old = &current[&agg.metadata.name];
            if old.len() != next.len() || next.iter().any(|r| !old.contains(r)) {
                current.insert(agg.metadata.name.clone(), next);
                changed = true;
            }
        }
        if !changed {
            return current;
        }
    }
}

#[derive(Debug, Clone)]
enum Req {
    Res {
        verb: String,
        group: String,
        resource: String,
        sub: String,
        ns: String,
        name: String,
        /// `resource` or `resource/sub`, and `*/sub`, precomputed.
        combined: String,
        star_sub: String,
    },
    Url {
        verb: String,
        path: String,
    },
}

fn res_req(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Req {
    Req::Res {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        sub: sub.into(),
        ns: ns.into(),
        name: name.into(),
        combined: if sub.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}/{sub}")
        },
        star_sub: format!("*/{sub}"),
    }
}

fn ref_rule_allows(req: &Req, rule: &PolicyRule) -> bool {
    let verb_ok = |verb: &str| rule.verbs.iter().any(|v| v == "*" || v == verb);
    match req {
        Req::Res {
            verb,
            group,
            sub,
            name,
            combined,
            star_sub,
            ..
        } => {
            verb_ok(verb)
                && rule.api_groups.iter().any(|g| g == "*" || g == group)
                && rule
                    .resources
                    .iter()
                    .any(|r| r == "*" || r == combined || (!sub.is_empty() && r == star_sub))
                && (rule.resource_names.is_empty() || rule.resource_names.contains(name))
        }
        Req::Url { verb, path } => {
            verb_ok(verb)
                && rule
                    .non_resource_urls
                    .iter()
                    .any(|u| u == "*" || u == path || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*'))))
        }
    }
}

fn ref_groups(user: &str, groups: &[String]) -> Vec<String> {
    let mut out = groups.to_vec();
    if let Some(rest) = user.strip_prefix("system:serviceaccount:") {
        let parts: Vec<&str> = rest.split(':').collect();
        if parts.len() == 2 && !parts[0].is_empty() && !parts[1].is_empty() {
            out.push("system:serviceaccounts".to_owned());
            out.push(format!("system:serviceaccounts:{}", parts[0]));
        }
    }
    out
}

fn ref_applies(s: &Subject, user: &str, groups: &[String], binding_ns: &str) -> bool {
    match &s.kind {
        SubjectKind::User => s.name == user,
        SubjectKind::Group => groups.contains(&s.name),
        SubjectKind::ServiceAccount => {
            let ns = if s.namespace.is_empty() {
                binding_ns
            } else {
                s.namespace.as_str()
            };
            !ns.is_empty() && user == format!("system:serviceaccount:{ns}:{}", s.name)
        }
        SubjectKind::Other(_) => false,
    }
}

fn ref_describe(s: &Subject, binding_ns: &str) -> String {
    match &s.kind {
        SubjectKind::ServiceAccount => {
            let ns = if s.namespace.is_empty() {
                binding_ns
            } else {
                s.namespace.as_str()
            };
            format!("ServiceAccount \"{}/{}\"", s.name, ns)
        }
        SubjectKind::User => format!("User \"{}\"", s.name),
        SubjectKind::Group => format!("Group \"{}\"", s.name),
        SubjectKind::Other(k) => format!("{k} \"{}\"", s.name),
    }
}

struct Reference<'w> {
    world: &'w World,
    cluster_rules: HashMap<String, Vec<PolicyRule>>,
}

/// What the reference says: allowed at all, allowed by a ClusterRoleBinding, and the reason texts
/// of every allowing binding.
struct RefDecision {
    allowed: bool,
    by_cluster_binding: bool,
    reasons: Vec<String>,
}

/// One binding that applies: ClusterRoleBinding?, namespace, name, its reason source, its rules.
struct Applicable<'a> {
    cluster: bool,
    namespace: &'a str,
    name: &'a str,
    role_ref: &'a RoleRef,
    subject: &'a Subject,
    rules: &'a [PolicyRule],
}

impl Applicable<'_> {
    fn source(&self) -> String {
        if self.cluster {
            format!(
                "ClusterRoleBinding \"{}\" of {} \"{}\" to {}",
                self.name,
                self.role_ref.kind.as_str(),
                self.role_ref.name,
                ref_describe(self.subject, "")
            )
        } else {
            format!(
                "RoleBinding \"{}/{}\" of {} \"{}\" to {}",
                self.name,
                self.namespace,
                self.role_ref.kind.as_str(),
                self.role_ref.name,
                ref_describe(self.subject, self.namespace)
            )
        }
    }
}

impl<'w> Reference<'w> {
    fn new(world: &'w World) -> Self {
        Self {
            world,
            cluster_rules: ref_cluster_rules(&world.cluster_roles),
        }
    }

    fn resolve(&self, role_ref: &RoleRef, binding_ns: &str) -> &[PolicyRule] {
        match role_ref.kind {
            RoleRefKind::ClusterRole => self.cluster_rules.get(&role_ref.name).map_or(&[], Vec::as_slice),
            RoleRefKind::Role => self
                .world
                .roles
                .iter()
                .find(|r| {
                    !binding_ns.is_empty() && r.metadata.namespace == binding_ns && r.metadata.name == role_ref.name
                })
                .map_or(&[], |r| r.rules.as_slice()),
            RoleRefKind::Other(_) => &[],
        }
    }

    /// Every binding that applies to the user in `ns` (ClusterRoleBindings, then RoleBindings of `ns`).
    fn applicable(&self, user: &str, groups: &[String], ns: &str) -> Vec<Applicable<'_>> {
        let groups = ref_groups(user, groups);
        let mut out = vec![];
        for crb in &self.world.crbs {
            if let Some(s) = crb.subjects.iter().find(|s| ref_applies(s, user, &groups, "")) {
                out.push(Applicable {
                    cluster: true,
                    namespace: "",
                    name: &crb.metadata.name,
                    role_ref: &crb.role_ref,
                    subject: s,
                    rules: self.resolve(&crb.role_ref, ""),
                });
            }
        }
        if !ns.is_empty() {
            for rb in self.world.rbs.iter().filter(|rb| rb.metadata.namespace == ns) {
                if let Some(s) = rb.subjects.iter().find(|s| ref_applies(s, user, &groups, ns)) {
                    out.push(Applicable {
                        cluster: false,
                        namespace: &rb.metadata.namespace,
                        name: &rb.metadata.name,
                        role_ref: &rb.role_ref,
                        subject: s,
                        rules: self.resolve(&rb.role_ref, ns),
                    });
                }
            }
        }
        out
    }

    fn decide(&self, user: &str, groups: &[String], req: &Req) -> RefDecision {
        if groups.iter().any(|g| g == "system:masters") {
            return RefDecision {
                allowed: true,
                by_cluster_binding: false,
                reasons: vec![String::new()],
            };
        }
        let ns = match req {
            Req::Res { ns, .. } => ns.as_str(),
            Req::Url { .. } => "",
        };
        let mut decision = RefDecision {
            allowed: false,
            by_cluster_binding: false,
            reasons: vec![],
        };
        for binding in self.applicable(user, groups, ns) {
            if binding.rules.iter().any(|r| ref_rule_allows(req, r)) {
                decision.allowed = true;
                decision.by_cluster_binding |= binding.cluster;
                decision.reasons.push(format!("RBAC: allowed by {}", binding.source()));
            }
        }
        decision
    }
}

// ---------------------------------------------------------------- the grid

struct Query {
    user: String,
    groups: Vec<String>,
    req: Req,
    attrs: Attributes,
}

impl Query {
    fn new(user: &str, groups: &[String], req: Req) -> Self {
        let attrs = match &req {
            Req::Res {
                verb,
                group,
                resource,
                sub,
                ns,
                name,
                ..
            } => Attributes::resource(user, groups.to_vec(), verb, group, resource, ns)
                .with_subresource(sub)
                .with_name(name),
            Req::Url { verb, path } => Attributes::non_resource(user, groups.to_vec(), verb, path),
        };
        Self {
            user: user.to_owned(),
            groups: groups.to_vec(),
            req,
            attrs,
        }
    }
}

/// Every (user, namespace, resource, verb), and every (user, path, verb).
fn grid(world: &World) -> Vec<Query> {
    let mut principals: Vec<(String, Vec<String>)> = USERS
        .iter()
        .zip(&world.memberships)
        .map(|(u, g)| ((*u).to_owned(), g.clone()))
        .collect();
    principals.extend(
        SA_USERS
            .iter()
            .map(|u| ((*u).to_owned(), vec!["system:authenticated".to_owned()])),
    );
    principals.push(("root".to_owned(), vec!["system:masters".to_owned()]));
    let mut out = vec![];
    for (user, groups) in &principals {
        for ns in QUERY_NAMESPACES {
            for (group, resource, sub, name) in QUERY_RESOURCES {
                for verb in QUERY_VERBS {
                    out.push(Query::new(user, groups, res_req(verb, group, resource, sub, ns, name)));
                }
            }
        }
        for path in QUERY_PATHS {
            for verb in QUERY_VERBS {
                out.push(Query::new(
                    user,
                    groups,
                    Req::Url {
                        verb: verb.into(),
                        path: path.into(),
                    },
                ));
            }
        }
    }
    out
}

fn build(world: &World) -> Authorizer {
    Authorizer::from_objects(
        world.roles.clone(),
        world.cluster_roles.clone(),
        world.rbs.clone(),
        world.crbs.clone(),
    )
    .unwrap()
}

/// Compares every `stride`-th grid query; returns the number of decisions compared.
fn compare(world: &World, authz: &Authorizer, stride: usize) -> Result<usize, TestCaseError> {
    let reference = Reference::new(world);
    let mut compared = 0;
    for query in grid(world).iter().step_by(stride) {
        let attrs = &query.attrs;
        let expected = reference.decide(&query.user, &query.groups, &query.req);
        let got = authz.authorize(attrs);
        prop_assert_eq!(got.is_allowed(), expected.allowed, "decision differs for {:?}", attrs);
        prop_assert_eq!(
            authz.allows(attrs),
            expected.allowed,
            "allows() differs for {:?}",
            attrs
        );
        if let Decision::Allow { reason } = &got {
            prop_assert!(
                expected.reasons.contains(reason),
                "reason {:?} not in {:?}",
                reason,
                expected.reasons
            );
            if expected.by_cluster_binding {
                prop_assert!(reason.contains("ClusterRoleBinding"), "CRBs come first: {:?}", reason);
            }
        }
        compared += 1;
    }
    Ok(compared)
}

// ---------------------------------------------------------------- mutations

#[derive(Debug, Clone)]
enum Mutation {
    DeleteRb(usize),
    DeleteCrb(usize),
    UpsertRb(RoleBinding),
    UpsertCrb(RoleBinding),
    UpsertClusterRole(ClusterRole),
    DeleteClusterRole(&'static str),
    ToggleViewLabel(&'static str),
    UpsertRole(Role),
    DeleteRole(&'static str, &'static str),
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    let custom = prop::sample::select(CUSTOM_NAMES.to_vec()).prop_flat_map(custom_cluster_role);
    prop_oneof![
        3 => any::<usize>().prop_map(Mutation::DeleteRb),
        1 => any::<usize>().prop_map(Mutation::DeleteCrb),
        3 => extra_rb().prop_map(Mutation::UpsertRb),
        1 => extra_crb().prop_map(|c| Mutation::UpsertCrb(RoleBinding::new("", c.metadata.name, c.role_ref, c.subjects))),
        2 => custom.prop_map(Mutation::UpsertClusterRole),
        1 => prop::sample::select(vec![
            "custom-0", "custom-1", "kubeflow-notebooks-view", "kubeflow-pipelines-view", "kubeflow-edit",
            "kubeflow-kubernetes-view", "aggregate-to-kubeflow-pipelines-edit",
        ]).prop_map(Mutation::DeleteClusterRole),
        2 => prop::sample::select(vec![
            "kubeflow-notebooks-view", "kubeflow-katib-view", "kubeflow-kserve-view", "kubeflow-pipelines-view",
            "kubeflow-volume-ui-view", "custom-0", "custom-1",
        ]).prop_map(Mutation::ToggleViewLabel),
        1 => role_strategy().prop_map(Mutation::UpsertRole),
        1 => (prop::sample::select(NAMESPACES.to_vec()), prop::sample::select(ROLE_NAMES.to_vec()))
            .prop_map(|(ns, n)| Mutation::DeleteRole(ns, n)),
    ]
}

/// Applies a mutation to the world and returns the equivalent change.
fn mutate(world: &mut World, mutation: Mutation) -> Option<Change> {
    Some(match mutation {
        Mutation::DeleteRb(i) => {
            if world.rbs.is_empty() {
                return None;
            }
            let rb = world.rbs.remove(i % world.rbs.len());
            Change::Delete(RbacKind::RoleBinding, rb.metadata.namespace, rb.metadata.name)
        }
        Mutation::DeleteCrb(i) => {
            if world.crbs.is_empty() {
                return None;
            }
            let crb = world.crbs.remove(i % world.crbs.len());
            Change::Delete(RbacKind::ClusterRoleBinding, String::new(), crb.metadata.name)
        }
        Mutation::UpsertRb(rb) => {
            upsert_by(&mut world.rbs, rb.clone(), same_rb);
            Change::Upsert(RbacObject::RoleBinding(rb))
        }
        Mutation::UpsertCrb(rb) => {
            let crb = ClusterRoleBinding::new(rb.metadata.name, rb.role_ref, rb.subjects);
            upsert_by(&mut world.crbs, crb.clone(), same_crb);
            Change::Upsert(RbacObject::ClusterRoleBinding(crb))
        }
        Mutation::UpsertClusterRole(cr) => {
            upsert_by(&mut world.cluster_roles, cr.clone(), same_cr);
            Change::Upsert(RbacObject::ClusterRole(cr))
        }
        Mutation::DeleteClusterRole(name) => {
            world.cluster_roles.retain(|cr| cr.metadata.name != name);
            Change::Delete(RbacKind::ClusterRole, String::new(), name.to_owned())
        }
        Mutation::ToggleViewLabel(name) => {
            let cr = world.cluster_roles.iter_mut().find(|cr| cr.metadata.name == name)?;
            if cr.metadata.labels.remove(AGG_VIEW).is_none() {
                cr.metadata.labels.insert(AGG_VIEW.to_owned(), "true".to_owned());
            }
            Change::Upsert(RbacObject::ClusterRole(cr.clone()))
        }
        Mutation::UpsertRole(role) => {
            upsert_by(&mut world.roles, role.clone(), same_role);
            Change::Upsert(RbacObject::Role(role))
        }
        Mutation::DeleteRole(ns, name) => {
            world
                .roles
                .retain(|r| !(r.metadata.namespace == ns && r.metadata.name == name));
            Change::Delete(RbacKind::Role, ns.to_owned(), name.to_owned())
        }
    })
}

fn sorted_debug<T: std::fmt::Debug>(items: impl IntoIterator<Item = T>) -> Vec<String> {
    let mut out: Vec<String> = items.into_iter().map(|i| format!("{i:?}")).collect();
    out.sort();
    out
}

// ---------------------------------------------------------------- properties

// Case counts: 3000 + 800 + 4000 + 2200 = 10,000 generated worlds. The decision property compares
// the full grid (2,835 decisions) per world; the incremental one compares a slice of the grid after
// every change, then the full grid and a rebuild at the end.
proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn decisions_match_reference(world in world_strategy()) {
        let authz = build(&world);
        compare(&world, &authz, 1)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 800, ..ProptestConfig::default() })]

    #[test]
    fn incremental_updates_match_reference(
        world in world_strategy(),
        mutations in prop::collection::vec(mutation_strategy(), 1..=8),
    ) {
        let mut world = world;
        let authz = build(&world);
        for mutation in mutations {
            if let Some(change) = mutate(&mut world, mutation) {
                authz.apply(change).unwrap();
                compare(&world, &authz, 11)?;
            }
        }
        compare(&world, &authz, 1)?;
        // Same decisions and reasons as a rebuild from the final objects.
        let rebuilt = build(&world);
        for query in grid(&world) {
            let attrs = &query.attrs;
            prop_assert_eq!(authz.authorize(attrs), rebuilt.authorize(attrs), "rebuild differs for {:?}", attrs);
        }
        let (a, b) = (authz.stats(), rebuilt.stats());
        prop_assert_eq!(a, b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn rules_for_matches_reference(world in world_strategy()) {
        let authz = build(&world);
        let reference = Reference::new(&world);
        let mut principals: Vec<(String, Vec<String>)> =
            USERS.iter().zip(&world.memberships).map(|(u, g)| ((*u).to_owned(), g.clone())).collect();
        principals.extend(SA_USERS.iter().map(|u| ((*u).to_owned(), vec![])));
        for (user, groups) in &principals {
            for ns in QUERY_NAMESPACES {
                let (resource, non_resource) = authz.rules_for(user, groups, ns);
                let rules: Vec<&PolicyRule> =
                    reference.applicable(user, groups, ns).into_iter().flat_map(|b| b.rules.iter()).collect();
                let expected_resource = rules.iter().filter(|r| !r.resources.is_empty()).map(|r| {
                    (r.verbs.clone(), r.api_groups.clone(), r.resources.clone(), r.resource_names.clone())
                });
                let expected_urls = rules
                    .iter()
                    .filter(|r| !r.non_resource_urls.is_empty())
                    .map(|r| (r.verbs.clone(), r.non_resource_urls.clone()));
                let got_resource = resource
                    .iter()
                    .map(|r| (r.verbs.clone(), r.api_groups.clone(), r.resources.clone(), r.resource_names.clone()));
                let got_urls = non_resource.iter().map(|r| (r.verbs.clone(), r.non_resource_urls.clone()));
                prop_assert_eq!(sorted_debug(got_resource), sorted_debug(expected_resource), "{} in {:?}", user, ns);
                prop_assert_eq!(sorted_debug(got_urls), sorted_debug(expected_urls), "{} in {:?}", user, ns);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2200, ..ProptestConfig::default() })]

    #[test]
    fn explain_is_consistent(world in world_strategy()) {
        let authz = build(&world);
        let reference = Reference::new(&world);
        for query in grid(&world).iter().step_by(5) {
            let attrs = &query.attrs;
            let explanation = authz.explain(attrs);
            prop_assert_eq!(&explanation.decision, &authz.authorize(attrs));
            let ns = attrs.namespace();
            let mut expected: Vec<(String, String)> = reference
                .applicable(&query.user, &query.groups, ns)
                .into_iter()
                .map(|b| (b.namespace.to_owned(), b.name.to_owned()))
                .collect();
            expected.sort();
            let mut got: Vec<(String, String)> =
                explanation.bindings.iter().map(|b| (b.namespace.clone(), b.name.clone())).collect();
            got.sort();
            prop_assert_eq!(got, expected);
            let any_matched = explanation.bindings.iter().any(|b| b.matched_rule.is_some());
            if !explanation.privileged {
                prop_assert_eq!(any_matched, explanation.decision.is_allowed());
            }
        }
    }
}
