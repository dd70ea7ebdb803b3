//! The RBAC authorizer kept current from the store: a list of the four RBAC kinds at start, then
//! a watch; the adapter through which the API server, KFAM and the front door ask it; and the
//! default roles installed at first start.
//!
//! Invariants: decisions read memory only (no store access on the hot path); a writer can wait
//! until its own RBAC write is visible ([`AuthzSync`]), which makes KFAM revocation immediate;
//! if the watch falls behind, the cache is rebuilt from a fresh list rather than guessed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kfsec_api::{ApiError, ApiServer, SubjectRules};
use kfsec_authz::{Authorizer, Change, RbacKind, RbacObject};
use kfsec_profiles::AuthzSync;
use kfsec_store::{EventKind, Store};
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
}

impl RbacCache {
    /// An empty cache.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            authorizer: Authorizer::new(),
            seen: watch::channel(0).0,
        })
    }

    /// The authorizer.
    pub fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    /// Loads every RBAC object from the store once (also used offline by `kfsec can-i`).
    pub async fn load(&self, api: &ApiServer) -> Result<u64, ApiError> {
        let (mut roles, mut cluster_roles, mut role_bindings, mut cluster_role_bindings) =
            (vec![], vec![], vec![], vec![]);
        let mut revision = 0;
        for (plural, _) in KINDS {
            let res = ApiServer::resource(RBAC_GROUP, "v1", plural).ok_or(ApiError::NoRoute)?;
            let list = api.list_objects(res, None, "").await?;
            revision = revision.max(list.resource_version);
            for item in list.items {
                match RbacObject::from_value(item) {
                    Ok(RbacObject::Role(o)) => roles.push(o),
                    Ok(RbacObject::ClusterRole(o)) => cluster_roles.push(o),
                    Ok(RbacObject::RoleBinding(o)) => role_bindings.push(o),
                    Ok(RbacObject::ClusterRoleBinding(o)) => cluster_role_bindings.push(o),
                    Err(e) => tracing::warn!(error = %e, "skipping an unreadable RBAC object"),
                }
            }
        }
        self.authorizer
            .replace(roles, cluster_roles, role_bindings, cluster_role_bindings)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        self.seen.send_replace(revision);
        Ok(revision)
    }

    /// Loads the RBAC objects and follows the store until the task is dropped.
    pub fn spawn(self: &Arc<Self>, api: Arc<ApiServer>, store: Arc<dyn Store>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.follow(&api, store.as_ref()).await {
                    tracing::warn!(error = %e, "RBAC cache resyncing");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    async fn follow(&self, api: &ApiServer, store: &dyn Store) -> Result<(), ApiError> {
        let from = self.load(api).await?;
        let prefix = format!("/k8s/{RBAC_GROUP}/");
        let mut rx = store.watch(&prefix, from).await.map_err(ApiError::Store)?;
        while let Some(ev) = rx.recv().await {
            let ev = ev.map_err(ApiError::Store)?;
            let rest = ev.kv.key.strip_prefix(&prefix).unwrap_or_default();
            let plural = rest.split('/').next().unwrap_or_default();
            let Some((_, kind)) = KINDS.iter().find(|(p, _)| *p == plural) else {
                continue;
            };
            let res = ApiServer::resource(RBAC_GROUP, "v1", plural).ok_or(ApiError::NoRoute)?;
            let change = match ev.kind {
                EventKind::Put => {
                    let obj = ApiServer::decode_record(res, &ev.kv)?;
                    RbacObject::from_value(obj)
                        .map(Change::Upsert)
                        .map_err(|e| ApiError::Internal(e.to_string()))?
                }
                EventKind::Delete => {
                    let obj = ApiServer::decode_record(res, &ev.kv)?;
                    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
                    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                    Change::Delete(*kind, ns, name)
                }
            };
            if let Err(e) = self.authorizer.apply(change) {
                tracing::warn!(error = %e, "RBAC change not applied");
            }
            self.seen.send_replace(ev.kv.mod_revision);
        }
        Ok(())
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
        self.authorizer.authorize(attributes)
    }

    fn rules_for(&self, user: &UserInfo, namespace: &str) -> SubjectRules {
        kfsec_api::Authorize::rules_for(&self.authorizer, user, namespace)
    }

    /// Changes after every RBAC event applied (and every reload): open watches re-authorize.
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.seen.subscribe())
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
