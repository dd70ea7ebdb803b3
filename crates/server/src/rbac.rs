//! The RBAC authorizer kept current from the store: one snapshot of the four RBAC kinds at
//! start, then their changes (`kfsec_api::Objects::follow`); the adapter through which the API
//! server, KFAM and the front door ask it; and the default roles installed at first start.
//!
//! Invariants: decisions read memory only (no store access on the hot path); a writer can wait
//! until its own RBAC write is visible ([`AuthzSync`]), which makes KFAM revocation immediate;
//! if the watch falls behind, the cache is rebuilt from a fresh list rather than guessed; an
//! object that does not decode grants nothing; on a shared store (etcd) a cache not fed for
//! longer than `store.staleLimit` grants nothing either ([`RbacCache::guard_with`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kfsec_api::{ApiError, ApiServer, ObjectEvent, Resource, StoredObject, SubjectRules};
use kfsec_authz::{Authorizer, AuthzError, Change, RbacKind, RbacObject};
use kfsec_profiles::AuthzSync;
use kfsec_types::identity::{SYSTEM_AUTHENTICATED, UserInfo};
use kfsec_types::rbac::RBAC_GROUP;
use tokio::sync::watch;

const KINDS: [(&str, RbacKind); 4] = [
    ("roles", RbacKind::Role),
    ("clusterroles", RbacKind::ClusterRole),
    ("rolebindings", RbacKind::RoleBinding),
    ("clusterrolebindings", RbacKind::ClusterRoleBinding),
];

/// The authorizer plus the store revision it reflects.
pub struct RbacCache {
    authorizer: Authorizer,
    seen: watch::Sender<u64>,
    /// The store whose currency decisions depend on (set once at start).
    store: std::sync::OnceLock<Arc<dyn kfsec_store::Store>>,
}

impl RbacCache {
    /// An empty cache.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            authorizer: Authorizer::new(),
            seen: watch::channel(0).0,
            store: std::sync::OnceLock::new(),
        })
    }

    /// Makes every decision depend on `store` being current
    /// ([`kfsec_store::Store::check_current`], one atomic load): a cache the store has not fed
    /// for longer than its stale limit allows nothing (a revoked binding must not outlive it).
    pub fn guard_with(&self, store: Arc<dyn kfsec_store::Store>) {
        let _ = self.store.set(store);
    }

    fn current(&self) -> bool {
        self.store.get().is_none_or(|s| s.check_current().is_ok())
    }

    /// The authorizer.
    pub fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    /// Loads every RBAC object from the store once (also used offline by `kfsec can-i`).
    pub async fn load(&self, api: &ApiServer) -> Result<u64, ApiError> {
        let mut objects = Vec::new();
        let mut revision = 0;
        for res in rbac_resources()? {
            let list = api.list_objects(res, None, "").await?;
            revision = revision.max(list.resource_version);
            for item in list.items {
                match RbacObject::from_value(item) {
                    Ok(o) => objects.push(o),
                    Err(e) => tracing::warn!(error = %e, "skipping an unreadable RBAC object"),
                }
            }
        }
        self.replace(objects, revision)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(revision)
    }

    /// Replaces every object with `objects`, as of `revision`.
    fn replace(&self, objects: impl IntoIterator<Item = RbacObject>, revision: u64) -> Result<(), AuthzError> {
        let (mut roles, mut cluster_roles, mut role_bindings, mut cluster_role_bindings) =
            (vec![], vec![], vec![], vec![]);
        for o in objects {
            match o {
                RbacObject::Role(o) => roles.push(o),
                RbacObject::ClusterRole(o) => cluster_roles.push(o),
                RbacObject::RoleBinding(o) => role_bindings.push(o),
                RbacObject::ClusterRoleBinding(o) => cluster_role_bindings.push(o),
            }
        }
        self.authorizer
            .replace(roles, cluster_roles, role_bindings, cluster_role_bindings)?;
        self.seen.send_replace(revision);
        Ok(())
    }

    /// Applies one watched change; an object that does not decode is removed.
    fn apply(&self, o: &StoredObject, deleted: bool) {
        let readable = if deleted { None } else { readable(o) };
        let change = match (readable, kind_of(o.resource)) {
            (Some(obj), _) => Some(Change::Upsert(obj)),
            (None, Some(kind)) => Some(Change::Delete(kind, o.namespace.clone(), o.name.clone())),
            (None, None) => None,
        };
        if let Some(change) = change
            && let Err(e) = self.authorizer.apply(change)
        {
            tracing::warn!(error = %e, "RBAC change not applied");
        }
        self.seen.send_replace(o.revision());
    }

    /// Loads the RBAC objects (one snapshot of the four kinds) and follows their changes until
    /// the task is dropped; a lost watch re-lists. An object that does not decode grants
    /// nothing (it is removed, and logged).
    pub fn spawn(self: &Arc<Self>, api: Arc<ApiServer>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let resources = match rbac_resources() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "RBAC cache not started");
                    return;
                }
            };
            let mut follow = api.objects().follow(&resources);
            loop {
                match follow.next().await {
                    Ok(ObjectEvent::Restarted { objects, revision }) => {
                        if let Err(e) = me.replace(objects.iter().filter_map(readable), revision) {
                            tracing::warn!(error = %e, "RBAC snapshot not applied; re-listing");
                            follow.restart();
                        }
                    }
                    Ok(ObjectEvent::Applied(o)) => me.apply(&o, false),
                    Ok(ObjectEvent::Deleted(o)) => me.apply(&o, true),
                    Ok(ObjectEvent::Progress(revision)) => {
                        me.seen.send_replace(revision);
                    }
                    Err(e) => tracing::warn!(error = %e, "RBAC watch lost; resyncing"),
                }
            }
        })
    }
}

/// The four RBAC resources.
fn rbac_resources() -> Result<Vec<&'static Resource>, ApiError> {
    KINDS
        .iter()
        .map(|(plural, _)| ApiServer::resource(RBAC_GROUP, "v1", plural).ok_or(ApiError::NoRoute))
        .collect()
}

fn kind_of(res: &Resource) -> Option<RbacKind> {
    KINDS.iter().find(|(p, _)| *p == res.plural).map(|(_, k)| *k)
}

/// A followed object as the authorizer's input; `None` (logged) if it does not decode.
fn readable(o: &StoredObject) -> Option<RbacObject> {
    let read = o
        .decode()
        .map_err(|e| e.to_string())
        .and_then(|v| RbacObject::from_value(v).map_err(|e| e.to_string()));
    match read {
        Ok(obj) => Some(obj),
        Err(e) => {
            tracing::warn!(kind = o.resource.kind, namespace = %o.namespace, name = %o.name, error = %e, "an unreadable RBAC object grants nothing");
            None
        }
    }
}

impl AuthzSync for RbacCache {
    fn wait_for(&self, revision: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut rx = self.seen.subscribe();
        Box::pin(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|seen| *seen >= revision)).await;
        })
    }
}

impl kfsec_api::Authorize for RbacCache {
    fn authorize(&self, attributes: &kfsec_api::Attributes) -> kfsec_api::Decision {
        if !self.current() {
            return kfsec_api::Decision::NoOpinion;
        }
        self.authorizer.authorize(attributes)
    }

    fn rules_for(&self, user: &UserInfo, namespace: &str) -> SubjectRules {
        if !self.current() {
            return SubjectRules::default();
        }
        kfsec_api::Authorize::rules_for(&self.authorizer, user, namespace)
    }

    /// Changes after every RBAC event applied (and every reload): open watches re-authorize.
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.seen.subscribe())
    }
}

/// Warns, at start, of each stored Role or ClusterRole whose rules Kubernetes' validation
/// refuses — written before kfsec checked rules on write (a rule naming both `resources` and
/// `nonResourceURLs` escaped the escalation check). The authorizer still grants what they name,
/// as Kubernetes' own does, so an operator must rewrite or delete them.
pub async fn warn_invalid_roles(api: &ApiServer) {
    match api.invalid_stored_roles().await {
        Ok(found) => {
            for (kind, namespace, name, problems) in found {
                tracing::warn!(
                    target: "audit",
                    kind,
                    namespace,
                    name,
                    problems = %problems.join("; "),
                    "a stored role has rules the API refuses today (written before kfsec checked them); what they name is still granted: rewrite or delete it"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "stored roles not checked"),
    }
}

/// Installs Kubeflow's default ClusterRoles and binds kfsec's admin group to `cluster-admin`,
/// creating what is missing (existing objects are left as the operator changed them).
pub async fn install_defaults(api: &ApiServer, admin_group: &str) -> Result<(), ApiError> {
    let cr = ApiServer::resource(RBAC_GROUP, "v1", "clusterroles").ok_or(ApiError::NoRoute)?;
    for role in kfsec_authz::kubeflow_default_cluster_roles() {
        let mut v = serde_json::to_value(&role).map_err(|e| ApiError::Internal(e.to_string()))?;
        v["apiVersion"] = serde_json::json!("rbac.authorization.k8s.io/v1");
        v["kind"] = serde_json::json!("ClusterRole");
        match api.create_object(cr, "", v).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    // Kubernetes' bootstrap roles every authenticated user has: discovery and self reviews.
    let basics = [
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "system:basic-user"},
            "rules": [{"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                      {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}],
        }),
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "system:discovery"},
            "rules": [{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}],
        }),
    ];
    for role in basics {
        match api.create_object(cr, "", role).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let crb = ApiServer::resource(RBAC_GROUP, "v1", "clusterrolebindings").ok_or(ApiError::NoRoute)?;
    for name in ["system:basic-user", "system:discovery"] {
        let b = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": SYSTEM_AUTHENTICATED}],
        });
        match api.create_object(crb, "", b).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "kfsec-admins"},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": admin_group}],
    });
    match api.create_object(crb, "", binding).await {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use kfsec_store::flaky::Flaky;
    use kfsec_store::{MemoryStore, Store};
    use kfsec_types::{SequenceRng, SystemClock};
    use serde_json::json;

    use super::*;

    fn rbac(plural: &str) -> &'static Resource {
        ApiServer::resource(RBAC_GROUP, "v1", plural).unwrap()
    }

    /// The four kinds used to be listed one after the other and watched from the newest list's
    /// revision: a Role written after the Roles were read was in neither the list nor the watch.
    #[tokio::test]
    async fn a_write_while_the_rbac_objects_are_read_is_not_missed() {
        let inner = MemoryStore::new(Arc::new(SystemClock));
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "b", "namespace": "team"},
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": "r"},
            "subjects": [{"apiGroup": RBAC_GROUP, "kind": "User", "name": "alice"}],
        });
        let key = rbac("rolebindings").key("team", "b");
        inner.put(&key, binding.to_string().into_bytes(), None).await.unwrap();
        let store = Flaky::new(inner.clone());
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "r", "namespace": "team"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        });
        let key = rbac("roles").key("team", "r");
        store.after_next_list(async move {
            inner.put(&key, role.to_string().into_bytes(), None).await.unwrap();
        });
        let cache = RbacCache::new();
        let api = ApiServer::builder(
            store,
            cache.clone(),
            Arc::new(SystemClock),
            Arc::new(SequenceRng::default()),
        )
        .build();
        let task = cache.spawn(api);
        let attrs = kfsec_authz::Attributes::resource("alice", vec![], "get", "", "pods", "team");
        let mut allowed = false;
        for _ in 0..2_000 {
            allowed = cache.authorizer().authorize(&attrs).is_allowed();
            if allowed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        task.abort();
        assert!(allowed, "the Role written during the initial read is applied");
    }
}
