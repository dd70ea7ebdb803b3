//! RBAC privilege-escalation prevention for writes of Roles, ClusterRoles and their bindings,
//! as the Kubernetes API server does it: a user may only grant permissions they hold, unless
//! they have `escalate` (roles) or `bind` (bindings) on the role in question.
//!
//! Invariants: every rule a written role contains, and every rule a written binding references
//! (aggregated ClusterRoles expanded through their selectors), must be allowed for the writer in
//! the same scope; a ClusterRole with an aggregationRule needs `escalate`; an unresolvable role
//! reference or an oversized rule set is refused (403), never waved through.

use std::collections::{BTreeMap, BTreeSet};

use kfsec_types::identity::UserInfo;
use kfsec_types::meta::LabelSelector;
use kfsec_types::rbac::RBAC_GROUP;
use serde::Deserialize;
use serde_json::Value;

use crate::ApiServer;
use crate::authorize::Attributes;
use crate::objects::ListQuery;
use crate::registry::{self, Resource};
use crate::status::ApiError;

/// The most attribute combinations one write may ask the authorizer about.
const MAX_CHECKS: usize = 20_000;

/// An object's string-valued labels.
fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

fn forbidden(res: &Resource, name: &str, why: String) -> ApiError {
    ApiError::Forbidden {
        message: format!("{} {name:?} is forbidden: {why}", res.qualified()),
        group: res.group.to_owned(),
        kind: res.plural.to_owned(),
        name: name.to_owned(),
    }
}

impl ApiServer {
    fn allows(&self, user: &UserInfo, verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> bool {
        let (r, sub) = resource.split_once('/').unwrap_or((resource, ""));
        let a = Attributes::resource(&user.username, user.groups.clone(), verb, group, r, ns)
            .with_subresource(sub)
            .with_name(name);
        self.authz.authorize(&a).is_allowed()
    }

    /// Refuses a role or binding write that would grant `user` more than they hold.
    pub(crate) async fn check_rbac_escalation(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        obj: &Value,
        user: &UserInfo,
    ) -> Result<(), ApiError> {
        if res.group != RBAC_GROUP {
            return Ok(());
        }
        let scope = if res.namespaced { ns } else { "" };
        match res.kind {
            "Role" | "ClusterRole" => {
                if self.allows(user, "escalate", RBAC_GROUP, res.plural, scope, name) {
                    return Ok(());
                }
                if obj.get("aggregationRule").is_some_and(|v| !v.is_null()) {
                    return Err(forbidden(
                        res,
                        name,
                        "must have cluster-admin privileges to use the aggregationRule".into(),
                    ));
                }
                let rules = obj.get("rules").and_then(Value::as_array).cloned().unwrap_or_default();
                self.confirm_covered(res, name, user, scope, &rules)
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let rr = obj.get("roleRef");
                let kind = rr.and_then(|r| r.get("kind")).and_then(Value::as_str).unwrap_or("");
                let rname = rr.and_then(|r| r.get("name")).and_then(Value::as_str).unwrap_or("");
                let plural = if kind == "Role" { "roles" } else { "clusterroles" };
                if self.allows(user, "bind", RBAC_GROUP, plural, scope, rname) {
                    return Ok(());
                }
                let rules = if kind == "Role" {
                    let roles = registry::find(RBAC_GROUP, "v1", "roles").ok_or(ApiError::NoRoute)?;
                    match self.read(roles, ns, rname).await? {
                        Some((r, _)) => r.get("rules").and_then(Value::as_array).cloned().unwrap_or_default(),
                        None => return Err(forbidden(res, name, format!("roles.{RBAC_GROUP} {rname:?} not found"))),
                    }
                } else {
                    self.cluster_role_rules(rname)
                        .await?
                        .ok_or_else(|| forbidden(res, name, format!("clusterroles.{RBAC_GROUP} {rname:?} not found")))?
                };
                self.confirm_covered(res, name, user, scope, &rules)
            }
            _ => Ok(()),
        }
    }

    /// A ClusterRole's rules, with aggregation expanded; `None` if it does not exist.
    async fn cluster_role_rules(&self, name: &str) -> Result<Option<Vec<Value>>, ApiError> {
        let crs = registry::find(RBAC_GROUP, "v1", "clusterroles").ok_or(ApiError::NoRoute)?;
        let Some((root, _)) = self.read(crs, "", name).await? else {
            return Ok(None);
        };
        if root.get("aggregationRule").is_none_or(Value::is_null) {
            return Ok(Some(
                root.get("rules").and_then(Value::as_array).cloned().unwrap_or_default(),
            ));
        }
        let all = self.list_in(crs, None, &ListQuery::default()).await?.items;
        let mut rules = Vec::new();
        let mut seen = BTreeSet::new();
        let mut queue = vec![root];
        while let Some(role) = queue.pop() {
            let rname = crate::objects::name_of(&role).to_owned();
            if !seen.insert(rname) {
                continue;
            }
            rules.extend(role.get("rules").and_then(Value::as_array).cloned().unwrap_or_default());
            // A selector that does not decode selects nothing (as for the authorizer).
            let selectors: Vec<LabelSelector> = role
                .pointer("/aggregationRule/clusterRoleSelectors")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|s| LabelSelector::deserialize(s).ok()).collect())
                .unwrap_or_default();
            for other in &all {
                let labels = labels_of(other);
                if selectors.iter().any(|s| s.matches(&labels)) {
                    queue.push(other.clone());
                }
            }
        }
        Ok(Some(rules))
    }

    fn confirm_covered(
        &self,
        res: &Resource,
        name: &str,
        user: &UserInfo,
        scope: &str,
        rules: &[Value],
    ) -> Result<(), ApiError> {
        let mut missing = Vec::new();
        let mut checks = 0usize;
        for rule in rules {
            let verbs = strings(rule.get("verbs"));
            let urls = strings(rule.get("nonResourceURLs"));
            // (RBAC ignores non-resource rules in namespaced roles. A rule that also names
            // resources is refused by validation; its resources are compared below all the same.)
            if scope.is_empty() {
                checks += urls.len() * verbs.len();
                if checks > MAX_CHECKS {
                    return Err(forbidden(
                        res,
                        name,
                        "the rules are too large to verify against the caller's permissions".into(),
                    ));
                }
                for u in &urls {
                    for v in &verbs {
                        let a = Attributes::non_resource(&user.username, user.groups.clone(), v, u);
                        if !self.authz.authorize(&a).is_allowed() {
                            missing.push(format!("{{NonResourceURLs:[{u:?}], Verbs:[{v:?}]}}"));
                        }
                    }
                }
            }
            let groups = strings(rule.get("apiGroups"));
            let resources = strings(rule.get("resources"));
            let mut names = strings(rule.get("resourceNames"));
            if names.is_empty() {
                names.push(String::new());
            }
            checks += groups.len() * resources.len() * verbs.len() * names.len();
            if checks > MAX_CHECKS {
                return Err(forbidden(
                    res,
                    name,
                    "the rules are too large to verify against the caller's permissions".into(),
                ));
            }
            for g in &groups {
                for r in &resources {
                    for v in &verbs {
                        for n in &names {
                            if !self.allows(user, v, g, r, scope, n) {
                                let with_names = if n.is_empty() {
                                    String::new()
                                } else {
                                    format!(", ResourceNames:[{n:?}]")
                                };
                                missing.push(format!(
                                    "{{APIGroups:[{g:?}], Resources:[{r:?}]{with_names}, Verbs:[{v:?}]}}"
                                ));
                            }
                        }
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
        Err(forbidden(
            res,
            name,
            format!(
                "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
                user.username,
                groups.join(" "),
                missing.join("\n")
            ),
        ))
    }
}
