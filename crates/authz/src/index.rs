//! [`RbacIndex`]: the RBAC state indexed by subject, with incremental updates.
//!
//! Layout: every binding is stored once (a slot with its namespace, name, role reference and
//! subjects); every subject key (a user name — service accounts become their
//! `system:serviceaccount:NS:NAME` user — or a group name) maps to the bindings naming it, split
//! into cluster-wide edges (ClusterRoleBindings) and per-namespace edges (RoleBindings). Each edge
//! carries the id of its role's compiled rule set, so a decision costs a few hash lookups (user,
//! namespace, each group) plus the rule checks of the handful of bindings found: it never scans
//! all bindings. ClusterRole aggregation is resolved into the aggregator's compiled rules and
//! recomputed whenever a ClusterRole that is, or is selected by, an aggregator changes.
//!
//! Invariants:
//! - decisions equal the Kubernetes RBAC authorizer's over the same objects: ClusterRoleBindings
//!   apply everywhere, RoleBindings only in their namespace, a RoleBinding's `Role` is looked up in
//!   the binding's namespace, a ClusterRoleBinding to a `Role` grants nothing, cluster-scoped and
//!   non-resource requests are granted only by ClusterRoleBindings, `system:masters` is always
//!   allowed;
//! - the index is a function of the current object set: any sequence of `apply` calls ends in the
//!   same decisions (and reasons) as building from the final objects;
//! - edge lists are kept sorted by binding name, ClusterRoleBindings are consulted before
//!   RoleBindings, the user before its groups, so the reported binding is deterministic.

use std::collections::{BTreeMap, BTreeSet};

use kfsec_types::identity::{
    SERVICE_ACCOUNT_USER_PREFIX, SERVICE_ACCOUNTS_GROUP, SYSTEM_MASTERS, parse_service_account_username,
    service_account_namespace_group, service_account_username,
};
use kfsec_types::rbac::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, RoleRefKind, Subject, SubjectKind,
};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::attributes::{Attributes, RequestAttributes};
use crate::authorizer::{Change, RbacKind, RbacObject};
use crate::decision::{
    BindingKind, BindingRef, BindingTrace, Decision, Explanation, NonResourceRule, ResourceRule, split_rules,
};
use crate::error::AuthzError;
use crate::rule::CompiledRules;

type RoleId = u32;
type BindingId = u32;
/// The role id of a binding whose role reference can never resolve (unknown kind).
const NO_ROLE: RoleId = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RoleKey {
    Cluster(Box<str>),
    /// `(namespace, name)`; a ClusterRoleBinding to a Role uses namespace `""`, which never resolves.
    Namespaced(Box<str>, Box<str>),
}

#[derive(Debug)]
struct RoleSlot {
    key: RoleKey,
    compiled: CompiledRules,
    /// The Role or ClusterRole object exists.
    present: bool,
    /// Bindings referring to this role.
    refs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SubjectKey {
    User(Box<str>),
    Group(Box<str>),
}

#[derive(Debug)]
struct BindingSlot {
    kind: BindingKind,
    namespace: Box<str>,
    name: Box<str>,
    role_ref: RoleRef,
    subjects: Vec<Subject>,
    role: RoleId,
    keys: Vec<SubjectKey>,
    /// Kubernetes' source description for each subject, precomputed so an allow reason costs one
    /// copy: `RoleBinding "name/ns" of ClusterRole "role" to User "u"`.
    sources: Box<[Box<str>]>,
}

impl BindingSlot {
    fn new(
        kind: BindingKind,
        namespace: Box<str>,
        name: Box<str>,
        role_ref: RoleRef,
        subjects: Vec<Subject>,
        role: RoleId,
    ) -> Self {
        let keys = subject_keys(&subjects, &namespace);
        let prefix = match kind {
            BindingKind::ClusterRoleBinding => {
                format!(
                    "ClusterRoleBinding {:?} of {} {:?} to ",
                    &*name, role_ref.kind, role_ref.name
                )
            }
            BindingKind::RoleBinding => format!(
                "RoleBinding {:?} of {} {:?} to ",
                format!("{name}/{namespace}"),
                role_ref.kind,
                role_ref.name
            ),
        };
        let sources = subjects
            .iter()
            .map(|s| format!("{prefix}{}", describe_subject(s, &namespace)).into_boxed_str())
            .collect();
        Self {
            kind,
            namespace,
            name,
            role_ref,
            subjects,
            role,
            keys,
            sources,
        }
    }
}

/// A binding as seen from one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edge {
    binding: BindingId,
    role: RoleId,
}

#[derive(Debug, Default)]
struct SubjectEntry {
    cluster: Vec<Edge>,
    namespaced: FxHashMap<Box<str>, Vec<Edge>>,
}

impl SubjectEntry {
    fn is_empty(&self) -> bool {
        self.cluster.is_empty() && self.namespaced.is_empty()
    }
}

/// Object counts, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Roles present.
    pub roles: usize,
    /// ClusterRoles present.
    pub cluster_roles: usize,
    /// RoleBindings.
    pub role_bindings: usize,
    /// ClusterRoleBindings.
    pub cluster_role_bindings: usize,
    /// Distinct users (including service accounts) named by bindings.
    pub users: usize,
    /// Distinct groups named by bindings.
    pub groups: usize,
}

/// The requester as the index sees it: user, groups, and the implicit service-account groups.
struct Principal<'a> {
    user: &'a str,
    groups: &'a [String],
    /// `system:serviceaccounts` and `system:serviceaccounts:NS` for a service-account user, when
    /// not already among `groups`.
    implicit: [Option<String>; 2],
}

impl<'a> Principal<'a> {
    fn new(user: &'a str, groups: &'a [String]) -> Self {
        let mut implicit = [None, None];
        if let Some((namespace, _)) = parse_service_account_username(user) {
            if !groups.iter().any(|g| g == SERVICE_ACCOUNTS_GROUP) {
                implicit[0] = Some(SERVICE_ACCOUNTS_GROUP.to_owned());
            }
            let ns_group = service_account_namespace_group(namespace);
            if !groups.contains(&ns_group) {
                implicit[1] = Some(ns_group);
            }
        }
        Self { user, groups, implicit }
    }

    fn all_groups(&self) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .map(String::as_str)
            .chain(self.implicit.iter().flatten().map(String::as_str))
    }

    fn has_group(&self, group: &str) -> bool {
        self.all_groups().any(|g| g == group)
    }

    /// Kubernetes `appliesToUser`.
    fn applies(&self, subject: &Subject, binding_namespace: &str) -> bool {
        match subject.kind {
            SubjectKind::User => subject.name == self.user,
            SubjectKind::Group => self.has_group(&subject.name),
            SubjectKind::ServiceAccount => {
                let namespace = if subject.namespace.is_empty() {
                    binding_namespace
                } else {
                    &subject.namespace
                };
                !namespace.is_empty() && parse_sa_exact(self.user, namespace, &subject.name)
            }
            SubjectKind::Other(_) => false,
        }
    }
}

/// Kubernetes `serviceaccount.MatchesUsername`: the user is exactly `system:serviceaccount:NS:NAME`.
fn parse_sa_exact(user: &str, namespace: &str, name: &str) -> bool {
    user.strip_prefix(SERVICE_ACCOUNT_USER_PREFIX)
        .and_then(|rest| rest.strip_prefix(namespace))
        .and_then(|rest| rest.strip_prefix(':'))
        == Some(name)
}

/// Kubernetes' `describeSubject`.
fn describe_subject(subject: &Subject, binding_namespace: &str) -> String {
    match subject.kind {
        SubjectKind::ServiceAccount => {
            let namespace = if subject.namespace.is_empty() {
                binding_namespace
            } else {
                &subject.namespace
            };
            format!("{} {:?}", subject.kind, format!("{}/{}", subject.name, namespace))
        }
        _ => format!("{} {:?}", subject.kind, subject.name),
    }
}

/// What allowed a request.
enum Hit {
    Masters,
    Binding(BindingId),
}

/// The RBAC objects, indexed for decisions. Pure data: mutate with [`RbacIndex::apply`], share it
/// through [`crate::Authorizer`].
#[derive(Debug, Default)]
pub struct RbacIndex {
    roles: Vec<Option<RoleSlot>>,
    free_roles: Vec<RoleId>,
    role_ids: FxHashMap<RoleKey, RoleId>,
    bindings: Vec<Option<BindingSlot>>,
    free_bindings: Vec<BindingId>,
    role_binding_ids: FxHashMap<(Box<str>, Box<str>), BindingId>,
    cluster_role_binding_ids: FxHashMap<Box<str>, BindingId>,
    users: FxHashMap<Box<str>, SubjectEntry>,
    groups: FxHashMap<Box<str>, SubjectEntry>,
    /// ClusterRole objects by name (sorted: aggregation visits them in name order).
    cluster_roles: BTreeMap<String, ClusterRole>,
    role_count: usize,
}

impl RbacIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the index from a full snapshot.
    pub fn from_objects(
        roles: Vec<Role>,
        cluster_roles: Vec<ClusterRole>,
        role_bindings: Vec<RoleBinding>,
        cluster_role_bindings: Vec<ClusterRoleBinding>,
    ) -> Result<Self, AuthzError> {
        let mut index = Self::new();
        for role in roles {
            index.upsert_role(role)?;
        }
        for cluster_role in cluster_roles {
            index.put_cluster_role(cluster_role, false)?;
        }
        index.reaggregate();
        for binding in role_bindings {
            index.upsert_role_binding(binding)?;
        }
        for binding in cluster_role_bindings {
            index.upsert_cluster_role_binding(binding)?;
        }
        Ok(index)
    }

    /// Applies one change. Deleting an absent object is not an error.
    pub fn apply(&mut self, change: Change) -> Result<(), AuthzError> {
        match change {
            Change::Upsert(RbacObject::Role(role)) => self.upsert_role(role),
            Change::Upsert(RbacObject::ClusterRole(role)) => self.put_cluster_role(role, true),
            Change::Upsert(RbacObject::RoleBinding(binding)) => self.upsert_role_binding(binding),
            Change::Upsert(RbacObject::ClusterRoleBinding(binding)) => self.upsert_cluster_role_binding(binding),
            Change::Delete(RbacKind::Role, namespace, name) => {
                self.delete_role(&namespace, &name);
                Ok(())
            }
            Change::Delete(RbacKind::ClusterRole, _, name) => {
                self.delete_cluster_role(&name);
                Ok(())
            }
            Change::Delete(RbacKind::RoleBinding, namespace, name) => {
                if let Some(id) = self
                    .role_binding_ids
                    .remove(&(namespace.as_str().into(), name.as_str().into()))
                {
                    self.remove_binding(id);
                }
                Ok(())
            }
            Change::Delete(RbacKind::ClusterRoleBinding, _, name) => {
                if let Some(id) = self.cluster_role_binding_ids.remove(name.as_str()) {
                    self.remove_binding(id);
                }
                Ok(())
            }
        }
    }

    /// Object counts.
    pub fn stats(&self) -> IndexStats {
        IndexStats {
            roles: self.role_count,
            cluster_roles: self.cluster_roles.len(),
            role_bindings: self.role_binding_ids.len(),
            cluster_role_bindings: self.cluster_role_binding_ids.len(),
            users: self.users.len(),
            groups: self.groups.len(),
        }
    }

    /// The effective rules of a ClusterRole (aggregated for an aggregator); `None` if absent.
    pub fn cluster_role_rules(&self, name: &str) -> Option<&[PolicyRule]> {
        self.present_slot(&RoleKey::Cluster(name.into()))
            .map(|slot| slot.compiled.rules())
    }

    /// The rules of a Role; `None` if absent.
    pub fn role_rules(&self, namespace: &str, name: &str) -> Option<&[PolicyRule]> {
        self.present_slot(&RoleKey::Namespaced(namespace.into(), name.into()))
            .map(|slot| slot.compiled.rules())
    }

    fn present_slot(&self, key: &RoleKey) -> Option<&RoleSlot> {
        let id = self.role_ids.get(key)?;
        self.roles.get(*id as usize)?.as_ref().filter(|slot| slot.present)
    }

    // ----- decisions -----

    /// The Kubernetes RBAC decision for `attrs`.
    pub fn authorize(&self, attrs: &Attributes) -> Decision {
        match self.find(attrs) {
            None => Decision::NoOpinion,
            Some(Hit::Masters) => Decision::Allow { reason: String::new() },
            Some(Hit::Binding(id)) => {
                const PREFIX: &str = "RBAC: allowed by ";
                let source = self.describe_source(id, &Principal::new(&attrs.user, &attrs.groups));
                let mut reason = String::with_capacity(PREFIX.len() + source.len());
                reason.push_str(PREFIX);
                reason.push_str(source);
                Decision::Allow { reason }
            }
        }
    }

    /// Whether `attrs` is allowed (the same decision as [`Self::authorize`], without the reason).
    pub fn allows(&self, attrs: &Attributes) -> bool {
        self.find(attrs).is_some()
    }

    fn find(&self, attrs: &Attributes) -> Option<Hit> {
        if attrs.groups.iter().any(|g| g == SYSTEM_MASTERS) {
            return Some(Hit::Masters);
        }
        let principal = Principal::new(&attrs.user, &attrs.groups);
        let request = &attrs.request;
        let namespace = match request {
            RequestAttributes::Resource(r) => r.namespace.as_str(),
            RequestAttributes::NonResource(_) => "",
        };
        // Pass 1: ClusterRoleBindings of the user, then of each group; remember the entries found.
        const KEEP: usize = 8;
        let mut found: [Option<&SubjectEntry>; KEEP] = [None; KEEP];
        let mut kept = 0;
        let mut overflow = false;
        for entry in self.entries(&principal) {
            if let Some(id) = self.first_allowing(&entry.cluster, request) {
                return Some(Hit::Binding(id));
            }
            if let Some(slot) = found.get_mut(kept) {
                *slot = Some(entry);
                kept += 1;
            } else {
                overflow = true;
            }
        }
        if namespace.is_empty() {
            return None;
        }
        // Pass 2: RoleBindings of the request's namespace.
        let check = |entry: &SubjectEntry| {
            entry
                .namespaced
                .get(namespace)
                .and_then(|edges| self.first_allowing(edges, request))
        };
        if overflow {
            self.entries(&principal).find_map(check).map(Hit::Binding)
        } else {
            found
                .iter()
                .take(kept)
                .flatten()
                .find_map(|e| check(e))
                .map(Hit::Binding)
        }
    }

    /// The subject entries of the user and each of its groups (explicit, then implicit).
    fn entries<'s>(&'s self, principal: &'s Principal<'_>) -> impl Iterator<Item = &'s SubjectEntry> + 's {
        self.users
            .get(principal.user)
            .into_iter()
            .chain(principal.all_groups().filter_map(|g| self.groups.get(g)))
    }

    #[inline]
    fn first_allowing(&self, edges: &[Edge], request: &RequestAttributes) -> Option<BindingId> {
        edges
            .iter()
            .find(|edge| {
                self.roles
                    .get(edge.role as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|slot| slot.compiled.allows_any(request))
            })
            .map(|edge| edge.binding)
    }

    fn binding(&self, id: BindingId) -> Option<&BindingSlot> {
        self.bindings.get(id as usize).and_then(Option::as_ref)
    }

    /// `ClusterRoleBinding "name" of ClusterRole "role" to User "u"` or
    /// `RoleBinding "name/ns" of Role "role" to Group "g"`, naming the binding's first subject that
    /// applies to the requester.
    fn describe_source(&self, id: BindingId, principal: &Principal<'_>) -> &str {
        self.binding(id)
            .and_then(|binding| {
                let index = binding
                    .subjects
                    .iter()
                    .position(|s| principal.applies(s, &binding.namespace))?;
                binding.sources.get(index)
            })
            .map_or("", |source| source)
    }

    /// The bindings that apply to the principal in `namespace`: ClusterRoleBindings sorted by name,
    /// then (for a non-empty namespace) RoleBindings of that namespace sorted by name.
    fn applicable_bindings(&self, principal: &Principal<'_>, namespace: &str) -> Vec<BindingId> {
        let mut cluster = FxHashSet::default();
        let mut local = FxHashSet::default();
        for entry in self.entries(principal) {
            cluster.extend(entry.cluster.iter().map(|e| e.binding));
            if !namespace.is_empty()
                && let Some(edges) = entry.namespaced.get(namespace)
            {
                local.extend(edges.iter().map(|e| e.binding));
            }
        }
        let sort = |set: FxHashSet<BindingId>| {
            let mut ids: Vec<_> = set.into_iter().collect();
            ids.sort_by(|a, b| {
                let name = |id| self.binding(id).map(|b| &*b.name);
                name(*a).cmp(&name(*b))
            });
            ids
        };
        let mut out = sort(cluster);
        out.extend(sort(local));
        out
    }

    fn role_slot(&self, role: RoleId) -> Option<&RoleSlot> {
        self.roles.get(role as usize).and_then(Option::as_ref)
    }

    /// The rules that apply to `user` with `groups` in `namespace` (Kubernetes `RulesFor`, as used
    /// by SelfSubjectRulesReview): the rules of every applicable binding, ClusterRoleBindings first.
    /// `system:masters` gets no extra rules here (it is allowed by a separate authorizer).
    pub fn rules_for(
        &self,
        user: &str,
        groups: &[String],
        namespace: &str,
    ) -> (Vec<ResourceRule>, Vec<NonResourceRule>) {
        let principal = Principal::new(user, groups);
        let ids = self.applicable_bindings(&principal, namespace);
        let rules = ids
            .iter()
            .filter_map(|id| self.binding(*id))
            .filter_map(|b| self.role_slot(b.role))
            .flat_map(|slot| slot.compiled.rules());
        split_rules(rules)
    }

    /// The decision for `attrs` with the bindings behind it.
    pub fn explain(&self, attrs: &Attributes) -> Explanation {
        let decision = self.authorize(attrs);
        let principal = Principal::new(&attrs.user, &attrs.groups);
        let namespace = attrs.namespace();
        let privileged = attrs.groups.iter().any(|g| g == SYSTEM_MASTERS);
        let mut bindings = Vec::new();
        for id in self.applicable_bindings(&principal, namespace) {
            let Some(binding) = self.binding(id) else { continue };
            let slot = self.role_slot(binding.role).filter(|s| s.present);
            let Some(subject) = binding
                .subjects
                .iter()
                .find(|s| principal.applies(s, &binding.namespace))
            else {
                continue;
            };
            bindings.push(BindingTrace {
                kind: binding.kind,
                namespace: binding.namespace.to_string(),
                name: binding.name.to_string(),
                role_ref: binding.role_ref.clone(),
                subject: subject.clone(),
                role_found: slot.is_some(),
                rule_count: slot.map_or(0, |s| s.compiled.rules().len()),
                matched_rule: slot.and_then(|s| s.compiled.allows(&attrs.request)).cloned(),
                source: self.describe_source(id, &principal).to_owned(),
            });
        }
        let mut elsewhere = BTreeSet::new();
        for entry in self.entries(&principal) {
            for (ns, edges) in &entry.namespaced {
                if **ns == *namespace {
                    continue;
                }
                for edge in edges {
                    if let Some(b) = self.binding(edge.binding) {
                        elsewhere.insert((b.namespace.to_string(), b.name.to_string(), edge.binding));
                    }
                }
            }
        }
        let elsewhere: Vec<BindingRef> = elsewhere
            .into_iter()
            .filter_map(|(namespace, name, id)| {
                self.binding(id).map(|b| BindingRef {
                    namespace,
                    name,
                    role_ref: b.role_ref.clone(),
                })
            })
            .collect();
        let groups: Vec<String> = principal.all_groups().map(str::to_owned).collect();
        let summary = summarize(attrs, &decision, privileged, &bindings, &elsewhere, &groups);
        Explanation {
            decision,
            user: attrs.user.clone(),
            groups,
            privileged,
            bindings,
            elsewhere,
            summary,
        }
    }

    // ----- updates -----

    fn role_id(&mut self, key: RoleKey) -> RoleId {
        if let Some(id) = self.role_ids.get(&key) {
            return *id;
        }
        let slot = RoleSlot {
            key: key.clone(),
            compiled: CompiledRules::default(),
            present: false,
            refs: 0,
        };
        let id = match self.free_roles.pop() {
            Some(id) => {
                if let Some(place) = self.roles.get_mut(id as usize) {
                    *place = Some(slot);
                }
                id
            }
            None => {
                self.roles.push(Some(slot));
                u32::try_from(self.roles.len() - 1).unwrap_or(NO_ROLE)
            }
        };
        self.role_ids.insert(key, id);
        id
    }

    fn slot_mut(&mut self, id: RoleId) -> Option<&mut RoleSlot> {
        self.roles.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// Frees a role slot nobody refers to and whose object is gone.
    fn maybe_free_role(&mut self, id: RoleId) {
        let Some(slot) = self.slot_mut(id) else { return };
        if slot.present || slot.refs > 0 {
            return;
        }
        let key = slot.key.clone();
        self.role_ids.remove(&key);
        if let Some(place) = self.roles.get_mut(id as usize) {
            *place = None;
        }
        self.free_roles.push(id);
    }

    fn set_role_rules(&mut self, key: RoleKey, rules: Vec<PolicyRule>) {
        let id = self.role_id(key);
        if let Some(slot) = self.slot_mut(id) {
            slot.present = true;
            if slot.compiled.rules() != rules.as_slice() {
                slot.compiled = CompiledRules::new(rules);
            }
        }
    }

    fn clear_role(&mut self, key: &RoleKey) -> bool {
        let Some(&id) = self.role_ids.get(key) else {
            return false;
        };
        let was_present = match self.slot_mut(id) {
            Some(slot) => {
                let was = slot.present;
                slot.present = false;
                slot.compiled = CompiledRules::default();
                was
            }
            None => false,
        };
        self.maybe_free_role(id);
        was_present
    }

    fn upsert_role(&mut self, role: Role) -> Result<(), AuthzError> {
        let (namespace, name) = namespaced_key(RbacKind::Role, &role.metadata.namespace, &role.metadata.name)?;
        let existed = self
            .role_ids
            .get(&RoleKey::Namespaced(namespace.clone(), name.clone()))
            .is_some_and(|id| {
                self.roles
                    .get(*id as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.present)
            });
        if !existed {
            self.role_count += 1;
        }
        self.set_role_rules(RoleKey::Namespaced(namespace, name), role.rules);
        Ok(())
    }

    fn delete_role(&mut self, namespace: &str, name: &str) {
        if self.clear_role(&RoleKey::Namespaced(namespace.into(), name.into())) {
            self.role_count -= 1;
        }
    }

    /// Whether any aggregator selects a role with these labels.
    fn selected_by_aggregator(&self, labels: &BTreeMap<String, String>) -> bool {
        self.cluster_roles.values().any(|cr| {
            cr.aggregation_rule
                .as_ref()
                .is_some_and(|rule| rule.cluster_role_selectors.iter().any(|s| s.matches(labels)))
        })
    }

    fn put_cluster_role(&mut self, role: ClusterRole, reaggregate: bool) -> Result<(), AuthzError> {
        if role.metadata.name.is_empty() {
            return Err(AuthzError::MissingName {
                kind: RbacKind::ClusterRole,
            });
        }
        let name = role.metadata.name.clone();
        let aggregator = role.is_aggregator();
        let key = RoleKey::Cluster(name.as_str().into());
        let new_labels = role.metadata.labels.clone();
        if aggregator {
            // The rules come from aggregation; until then, keep whatever the slot had.
            let id = self.role_id(key);
            if let Some(slot) = self.slot_mut(id) {
                slot.present = true;
            }
        } else {
            self.set_role_rules(key, role.rules.clone());
        }
        let old = self.cluster_roles.insert(name, role);
        if reaggregate {
            let relevant = aggregator
                || old
                    .as_ref()
                    .is_some_and(|o| o.is_aggregator() || self.selected_by_aggregator(&o.metadata.labels))
                || self.selected_by_aggregator(&new_labels);
            if relevant {
                self.reaggregate();
            }
        }
        Ok(())
    }

    fn delete_cluster_role(&mut self, name: &str) {
        let Some(old) = self.cluster_roles.remove(name) else {
            return;
        };
        self.clear_role(&RoleKey::Cluster(name.into()));
        if old.is_aggregator() || self.selected_by_aggregator(&old.metadata.labels) {
            self.reaggregate();
        }
    }

    /// Recomputes every aggregator's rules (Kubernetes' clusterrole-aggregation controller, run
    /// to its fixed point): the de-duplicated union of the rules of every non-aggregating
    /// ClusterRole reachable through the selectors, visiting selectors in order and matched roles
    /// by name.
    fn reaggregate(&mut self) {
        let aggregators: Vec<String> = self
            .cluster_roles
            .values()
            .filter(|cr| cr.is_aggregator())
            .map(|cr| cr.metadata.name.clone())
            .collect();
        for name in aggregators {
            let rules = self.aggregate(&name);
            self.set_role_rules(RoleKey::Cluster(name.as_str().into()), rules);
        }
    }

    fn aggregate(&self, root: &str) -> Vec<PolicyRule> {
        let mut visited = FxHashSet::default();
        visited.insert(root);
        let mut seen = FxHashSet::default();
        let mut out = Vec::new();
        self.aggregate_into(root, &mut visited, &mut seen, &mut out);
        out
    }

    fn aggregate_into<'a>(
        &'a self,
        name: &str,
        visited: &mut FxHashSet<&'a str>,
        seen: &mut FxHashSet<&'a PolicyRule>,
        out: &mut Vec<PolicyRule>,
    ) {
        let Some(rule) = self.cluster_roles.get(name).and_then(|cr| cr.aggregation_rule.as_ref()) else {
            return;
        };
        for selector in &rule.cluster_role_selectors {
            for (other, role) in &self.cluster_roles {
                if other == name || !selector.matches(&role.metadata.labels) {
                    continue;
                }
                if role.is_aggregator() {
                    if visited.insert(other.as_str()) {
                        self.aggregate_into(other, visited, seen, out);
                    }
                } else {
                    for r in &role.rules {
                        if seen.insert(r) {
                            out.push(r.clone());
                        }
                    }
                }
            }
        }
    }

    fn upsert_role_binding(&mut self, binding: RoleBinding) -> Result<(), AuthzError> {
        let (namespace, name) = namespaced_key(
            RbacKind::RoleBinding,
            &binding.metadata.namespace,
            &binding.metadata.name,
        )?;
        let role = match binding.role_ref.kind {
            RoleRefKind::Role => self.role_id(RoleKey::Namespaced(
                namespace.clone(),
                binding.role_ref.name.as_str().into(),
            )),
            RoleRefKind::ClusterRole => self.role_id(RoleKey::Cluster(binding.role_ref.name.as_str().into())),
            RoleRefKind::Other(_) => NO_ROLE,
        };
        let slot = BindingSlot::new(
            BindingKind::RoleBinding,
            namespace.clone(),
            name.clone(),
            binding.role_ref,
            binding.subjects,
            role,
        );
        let previous = self.role_binding_ids.get(&(namespace.clone(), name.clone())).copied();
        let id = self.store_binding(previous, slot);
        self.role_binding_ids.insert((namespace, name), id);
        Ok(())
    }

    fn upsert_cluster_role_binding(&mut self, binding: ClusterRoleBinding) -> Result<(), AuthzError> {
        if binding.metadata.name.is_empty() {
            return Err(AuthzError::MissingName {
                kind: RbacKind::ClusterRoleBinding,
            });
        }
        let name: Box<str> = binding.metadata.name.as_str().into();
        let role = match binding.role_ref.kind {
            // Kubernetes looks the Role up in namespace "", where none can exist.
            RoleRefKind::Role => self.role_id(RoleKey::Namespaced("".into(), binding.role_ref.name.as_str().into())),
            RoleRefKind::ClusterRole => self.role_id(RoleKey::Cluster(binding.role_ref.name.as_str().into())),
            RoleRefKind::Other(_) => NO_ROLE,
        };
        let slot = BindingSlot::new(
            BindingKind::ClusterRoleBinding,
            "".into(),
            name.clone(),
            binding.role_ref,
            binding.subjects,
            role,
        );
        let previous = self.cluster_role_binding_ids.get(&name).copied();
        let id = self.store_binding(previous, slot);
        self.cluster_role_binding_ids.insert(name, id);
        Ok(())
    }

    /// Stores a binding (replacing `previous`, whose edges are removed first) and indexes it.
    /// The new role's reference count is taken before the old one is released, so a slot shared by
    /// both is never freed in between.
    fn store_binding(&mut self, previous: Option<BindingId>, slot: BindingSlot) -> BindingId {
        if let Some(role) = self.slot_mut(slot.role) {
            role.refs += 1;
        }
        if let Some(id) = previous {
            self.remove_binding(id);
        }
        let id = match self.free_bindings.pop() {
            Some(id) => id,
            None => {
                self.bindings.push(None);
                u32::try_from(self.bindings.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let edge = Edge {
            binding: id,
            role: slot.role,
        };
        let namespace = slot.namespace.clone();
        let name = slot.name.clone();
        let keys = slot.keys.clone();
        if let Some(place) = self.bindings.get_mut(id as usize) {
            *place = Some(slot);
        }
        for key in keys {
            let entry = match key {
                SubjectKey::User(user) => self.users.entry(user).or_default(),
                SubjectKey::Group(group) => self.groups.entry(group).or_default(),
            };
            let edges = if namespace.is_empty() {
                &mut entry.cluster
            } else {
                entry.namespaced.entry(namespace.clone()).or_default()
            };
            // Keep edges sorted by binding name (names are unique within one list).
            let bindings = &self.bindings;
            let position = edges.partition_point(|e| {
                bindings
                    .get(e.binding as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|b| *b.name < *name)
            });
            edges.insert(position, edge);
        }
        id
    }

    /// Removes a binding's edges and slot, releasing its role.
    fn remove_binding(&mut self, id: BindingId) {
        let Some(slot) = self.bindings.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        self.free_bindings.push(id);
        for key in &slot.keys {
            let (map, subject) = match key {
                SubjectKey::User(user) => (&mut self.users, user),
                SubjectKey::Group(group) => (&mut self.groups, group),
            };
            let Some(entry) = map.get_mut(subject) else { continue };
            if slot.namespace.is_empty() {
                entry.cluster.retain(|e| e.binding != id);
            } else if let Some(edges) = entry.namespaced.get_mut(&slot.namespace) {
                edges.retain(|e| e.binding != id);
                if edges.is_empty() {
                    entry.namespaced.remove(&slot.namespace);
                }
            }
            if entry.is_empty() {
                map.remove(subject);
            }
        }
        if let Some(role) = self.slot_mut(slot.role) {
            role.refs = role.refs.saturating_sub(1);
        }
        self.maybe_free_role(slot.role);
    }
}

fn namespaced_key(kind: RbacKind, namespace: &str, name: &str) -> Result<(Box<str>, Box<str>), AuthzError> {
    if name.is_empty() {
        return Err(AuthzError::MissingName { kind });
    }
    if namespace.is_empty() {
        return Err(AuthzError::MissingNamespace {
            kind,
            name: name.to_owned(),
        });
    }
    Ok((namespace.into(), name.into()))
}

/// The distinct index keys of a binding's subjects; `binding_namespace` defaults a service
/// account's namespace (a ClusterRoleBinding passes `""`, so an unqualified service account there
/// matches nobody).
fn subject_keys(subjects: &[Subject], binding_namespace: &str) -> Vec<SubjectKey> {
    let mut keys = Vec::new();
    for subject in subjects {
        let key = match subject.kind {
            SubjectKind::User => SubjectKey::User(subject.name.as_str().into()),
            SubjectKind::Group => SubjectKey::Group(subject.name.as_str().into()),
            SubjectKind::ServiceAccount => {
                let namespace = if subject.namespace.is_empty() {
                    binding_namespace
                } else {
                    &subject.namespace
                };
                if namespace.is_empty() {
                    continue;
                }
                SubjectKey::User(service_account_username(namespace, &subject.name).into())
            }
            SubjectKind::Other(_) => continue,
        };
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

fn summarize(
    attrs: &Attributes,
    decision: &Decision,
    privileged: bool,
    bindings: &[BindingTrace],
    elsewhere: &[BindingRef],
    groups: &[String],
) -> String {
    if privileged {
        return format!("allowed: User {:?} is in group {SYSTEM_MASTERS:?}", attrs.user);
    }
    if let Decision::Allow { reason } = decision {
        return format!("allowed: {}", reason.trim_start_matches("RBAC: allowed by "));
    }
    let namespace = attrs.namespace();
    let mut text = format!("denied: {}", attrs.forbidden_message());
    if bindings.is_empty() {
        if namespace.is_empty() {
            text.push_str(&format!(
                "; no ClusterRoleBinding applies to User {:?} with groups {groups:?}",
                attrs.user
            ));
        } else {
            text.push_str(&format!(
                "; no ClusterRoleBinding, and no RoleBinding in namespace {namespace:?}, applies to User {:?} with groups {groups:?}",
                attrs.user
            ));
        }
    } else {
        let missing: Vec<String> = bindings
            .iter()
            .filter(|b| !b.role_found)
            .map(|b| format!("{} {:?} (of {})", b.role_ref.kind, b.role_ref.name, b.source))
            .collect();
        text.push_str(&format!(
            "; {} binding(s) apply to the subject but none of their rules allows the request",
            bindings.len()
        ));
        if !missing.is_empty() {
            text.push_str(&format!("; role(s) not found: {}", missing.join(", ")));
        }
    }
    if namespace.is_empty() && !elsewhere.is_empty() {
        text.push_str("; cluster-scoped and non-resource requests are granted only by ClusterRoleBindings");
    }
    if !elsewhere.is_empty() {
        let mut namespaces: Vec<&str> = elsewhere.iter().map(|b| b.namespace.as_str()).collect();
        namespaces.dedup();
        text.push_str(&format!(
            "; the subject has RoleBindings in other namespaces: {}",
            namespaces.join(", ")
        ));
    }
    text
}
