//! KFAM, Kubeflow's access-management API, under `/kfam/`: contributors as RoleBindings with
//! Kubeflow's names and annotations, profile creation and deletion, the cluster-admin query.
//!
//! Invariants: only a profile's owner or a cluster admin adds or removes contributors; a new or
//! removed binding is visible to the authorizer before the call returns (so revocation is
//! immediate); unlike upstream KFAM, creating a profile is not open to everyone: the caller must
//! be a cluster admin, or self-registration must be on and the caller must own the new profile;
//! no profile may claim a system namespace or an existing namespace, whoever asks; unlike
//! upstream KFAM, bindings are listed only for namespaces the caller owns, contributes to, or
//! (as a cluster admin) administers, and the cluster-admin question is answered only about the
//! caller unless a cluster admin asks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use kfsec_api::{ApiError, ApiServer, Attributes, Authorize, Decision, UserInfo};
use kfsec_store::Store;
use kfsec_types::Identity;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::controller::{owner_of, profiles};

/// The largest KFAM request body.
const KFAM_MAX_BODY: usize = 64 * 1024;

/// Lets a writer wait until the authorizer has caught up with the store.
pub trait AuthzSync: Send + Sync + 'static {
    /// Resolves once the authorizer reflects every write up to `revision`.
    fn wait_for(&self, revision: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// KFAM's state.
pub struct Kfam {
    api: Arc<ApiServer>,
    store: Arc<dyn Store>,
    authz: Arc<dyn Authorize>,
    sync: Arc<dyn AuthzSync>,
    registration_flow: bool,
}

fn user_info(id: &Identity) -> UserInfo {
    UserInfo::authenticated(id.user.clone(), &id.groups)
}

fn json_utf8(status: StatusCode, body: Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

fn empty(status: StatusCode) -> Response {
    let mut r = status.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response {
    json_utf8(status, json!({ "error": message }))
}

/// The name KFAM gives a contributor's RoleBinding, e.g. `user-user1-org1-com-clusterrole-edit`.
pub fn binding_name(kind: &str, user: &str, role_kind: &str, role: &str) -> String {
    let squash = |s: &str| {
        let mut out = String::new();
        let mut dash = false;
        for c in s.chars() {
            if c.is_ascii_alphanumeric() {
                out.push(c.to_ascii_lowercase());
                dash = false;
            } else if !dash {
                out.push('-');
                dash = true;
            }
        }
        out
    };
    squash(&format!("{}-{}-{}-{}", kind, squash(user), role_kind, role))
}

/// Accepts `admin|edit|view` or `kubeflow-admin|…`; returns the short name.
fn short_role(name: &str) -> Option<&'static str> {
    match name.strip_prefix("kubeflow-").unwrap_or(name) {
        "admin" => Some("admin"),
        "edit" => Some("edit"),
        "view" => Some("view"),
        _ => None,
    }
}

/// A KFAM binding as posted (keys matched case-insensitively, as upstream's decoder does).
#[derive(Debug)]
struct Binding {
    user_kind: String,
    user: String,
    namespace: String,
    role: &'static str,
}

fn parse_binding(body: &[u8]) -> Result<Binding, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid binding: {e}"))?;
    let get = |obj: &Value, key: &str| -> Value {
        obj.as_object()
            .and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or(Value::Null)
    };
    let user = get(&v, "user");
    let name = get(&user, "name").as_str().unwrap_or_default().to_owned();
    let kind = get(&user, "kind").as_str().unwrap_or("User").to_owned();
    let namespace = get(&v, "referredNamespace").as_str().unwrap_or_default().to_owned();
    let role_name = get(&get(&v, "roleRef"), "name").as_str().unwrap_or_default().to_owned();
    if name.is_empty() || namespace.is_empty() {
        return Err("binding needs user.name and referredNamespace".into());
    }
    if kind != "User" {
        return Err(format!("unsupported subject kind {kind:?}"));
    }
    let role = short_role(&role_name).ok_or_else(|| format!("unknown role {role_name:?}: use admin, edit or view"))?;
    Ok(Binding {
        user_kind: kind,
        user: name,
        namespace,
        role,
    })
}

impl Kfam {
    /// KFAM over `api`.
    pub fn new(
        api: Arc<ApiServer>,
        store: Arc<dyn Store>,
        authz: Arc<dyn Authorize>,
        sync: Arc<dyn AuthzSync>,
        registration_flow: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            api,
            store,
            authz,
            sync,
            registration_flow,
        })
    }

    /// The router, to be nested at `/kfam`. Requests carry `Extension<Identity>`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(|| async { "Hello World!" }))
            .route(
                "/v1/bindings",
                post(create_binding).delete(delete_binding).get(list_bindings),
            )
            .route("/v1/profiles", post(create_profile))
            .route("/v1/profiles/{name}", delete(delete_profile))
            .route("/v1/role/clusteradmin", get(is_cluster_admin))
            // KFAM bodies are a binding or a profile: a few hundred bytes.
            .layer(axum::extract::DefaultBodyLimit::max(KFAM_MAX_BODY))
            .with_state(self.clone())
    }

    /// Whether `user` may do anything anywhere.
    pub fn cluster_admin(&self, user: &UserInfo) -> bool {
        let a = Attributes::resource(user.username.clone(), user.groups.clone(), "*", "*", "*", "");
        matches!(self.authz.authorize(&a), Decision::Allow { .. })
    }

    async fn may_manage(&self, user: &UserInfo, namespace: &str) -> Result<bool, ApiError> {
        if self.cluster_admin(user) {
            return Ok(true);
        }
        // A system namespace has no owner, whatever a Profile of that name (old data) says.
        if self.api.is_reserved_namespace(namespace) {
            return Ok(false);
        }
        let profile = self.api.get_object(profiles()?, "", namespace).await?;
        Ok(profile.is_some_and(|p| owner_of(&p) == user.username))
    }

    /// Whether a new profile may be named `name`: not a system namespace, not a namespace that
    /// already exists (unless a Profile of that name owns it).
    async fn claimable(&self, name: &str) -> Result<(), String> {
        if self.api.is_reserved_namespace(name) {
            return Err(format!(
                "namespace {name:?} is reserved for the system and cannot be owned by a profile"
            ));
        }
        let Some(nsr) = ApiServer::resource("", "v1", "namespaces") else {
            return Err("namespaces are not served".into());
        };
        match self.api.get_object(nsr, "", name).await {
            Ok(None) => Ok(()),
            Ok(Some(ns)) => {
                let profile_owned = ns["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["kind"] == "Profile" && r["name"] == name));
                if profile_owned {
                    Ok(())
                } else {
                    Err(format!(
                        "namespace {name:?} already exists and is not owned by a profile"
                    ))
                }
            }
            Err(e) => Err(e.to_string()),
        }
    }

    async fn settle(&self) {
        if let Ok(rev) = self.store.revision().await {
            self.sync.wait_for(rev).await;
        }
    }
}

fn rolebindings() -> Result<&'static kfsec_api::Resource, ApiError> {
    ApiServer::resource("rbac.authorization.k8s.io", "v1", "rolebindings").ok_or(ApiError::NoRoute)
}

/// Parses a binding and checks that the caller may manage its namespace (KFAM answers both
/// failures with 403).
async fn authorized_binding(k: &Kfam, id: &Identity, body: &[u8]) -> Result<Binding, Response> {
    let b = parse_binding(body).map_err(|e| error(StatusCode::FORBIDDEN, &e))?;
    match k.may_manage(&user_info(id), &b.namespace).await {
        Ok(true) => Ok(b),
        Ok(false) => {
            tracing::info!(target: "audit", caller = %id.user, namespace = %b.namespace, "KFAM binding refused");
            Err(empty(StatusCode::FORBIDDEN))
        }
        Err(e) => Err(error(StatusCode::FORBIDDEN, &e.to_string())),
    }
}

async fn create_binding(
    State(k): State<Arc<Kfam>>,
    Extension(id): Extension<Identity>,
    body: axum::body::Bytes,
) -> Response {
    let b = match authorized_binding(&k, &id, &body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let Ok(rb) = rolebindings() else {
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let name = binding_name(&b.user_kind, &b.user, "ClusterRole", b.role);
    let obj = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": b.namespace, "annotations": {"user": b.user, "role": b.role}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("kubeflow-{}", b.role)},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": b.user}],
    });
    match k.api.create_object(rb, &b.namespace, obj).await {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) => {
            k.settle().await;
            tracing::info!(target: "audit", caller = %id.user, user = %b.user, namespace = %b.namespace, role = b.role, "contributor added");
            empty(StatusCode::OK)
        }
        Err(e) => error(StatusCode::FORBIDDEN, &e.to_string()),
    }
}

async fn delete_binding(
    State(k): State<Arc<Kfam>>,
    Extension(id): Extension<Identity>,
    body: axum::body::Bytes,
) -> Response {
    let b = match authorized_binding(&k, &id, &body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let Ok(rb) = rolebindings() else {
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let name = binding_name(&b.user_kind, &b.user, "ClusterRole", b.role);
    match k.api.delete_object(rb, &b.namespace, &name).await {
        Ok(Some(_)) => {
            k.settle().await;
            tracing::info!(target: "audit", caller = %id.user, user = %b.user, namespace = %b.namespace, "contributor removed");
            empty(StatusCode::OK)
        }
        Ok(None) => error(StatusCode::FORBIDDEN, &format!("rolebinding {name} not found")),
        Err(e) => error(StatusCode::FORBIDDEN, &e.to_string()),
    }
}

#[derive(Deserialize)]
struct BindingQuery {
    #[serde(default)]
    user: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    role: String,
}

async fn list_bindings(
    State(k): State<Arc<Kfam>>,
    Extension(id): Extension<Identity>,
    Query(q): Query<BindingQuery>,
) -> Response {
    let Ok(rb) = rolebindings() else {
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let Ok(pr) = profiles() else {
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let profiles = match k.api.list_objects(pr, None, "").await {
        Ok(l) => l.items,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let admin = k.cluster_admin(&user_info(&id));
    let mut out = Vec::new();
    for p in &profiles {
        let Some(ns) = p["metadata"]["name"].as_str() else {
            continue;
        };
        if !q.namespace.is_empty() && q.namespace != ns {
            continue;
        }
        let Ok(list) = k.api.list_objects(rb, Some(ns), "").await else {
            continue;
        };
        let bindings: Vec<(&str, &str)> = list
            .items
            .iter()
            .filter_map(|b| {
                Some((
                    b["metadata"]["annotations"]["user"].as_str()?,
                    b["metadata"]["annotations"]["role"].as_str()?,
                ))
            })
            .collect();
        // Who is in a workspace is shown to its members and to cluster admins only.
        let member = owner_of(p) == id.user || bindings.iter().any(|(u, _)| *u == id.user);
        if !(admin || member) {
            continue;
        }
        for (user, role) in bindings {
            if (!q.user.is_empty() && q.user != user) || (!q.role.is_empty() && q.role != role) {
                continue;
            }
            out.push(json!({
                "user": {"kind": "User", "name": user},
                "referredNamespace": ns,
                "RoleRef": {"kind": "ClusterRole", "name": role},
                "status": "",
            }));
        }
    }
    json_utf8(StatusCode::OK, json!({ "bindings": out }))
}

async fn create_profile(
    State(k): State<Arc<Kfam>>,
    Extension(id): Extension<Identity>,
    body: axum::body::Bytes,
) -> Response {
    let mut p: Value = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::FORBIDDEN, &format!("invalid profile: {e}")),
    };
    let user = user_info(&id);
    let own = owner_of(&p) == id.user;
    if !(k.cluster_admin(&user) || (k.registration_flow && own)) {
        return error(
            StatusCode::FORBIDDEN,
            "only cluster admins create profiles for others (or enable registrationFlow)",
        );
    }
    p["apiVersion"] = json!("kubeflow.org/v1");
    p["kind"] = json!("Profile");
    let Ok(r) = profiles() else {
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let name = p["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    if let Err(message) = k.claimable(&name).await {
        tracing::info!(target: "audit", caller = %id.user, profile = %name, "KFAM profile refused: {message}");
        return error(StatusCode::FORBIDDEN, &message);
    }
    match k.api.create_object(r, "", p).await {
        Ok(_) => empty(StatusCode::OK),
        Err(e) => error(StatusCode::FORBIDDEN, &e.to_string()),
    }
}

async fn delete_profile(
    State(k): State<Arc<Kfam>>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
) -> Response {
    let user = user_info(&id);
    let Ok(r) = profiles() else {
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let allowed = match k.api.get_object(r, "", &name).await {
        Ok(Some(p)) => owner_of(&p) == id.user || k.cluster_admin(&user),
        _ => false,
    };
    if !allowed {
        return empty(StatusCode::UNAUTHORIZED);
    }
    match k.api.delete_object(r, "", &name).await {
        Ok(_) => empty(StatusCode::OK),
        Err(_) => empty(StatusCode::UNAUTHORIZED),
    }
}

#[derive(Deserialize)]
struct AdminQuery {
    #[serde(default)]
    user: String,
}

/// `GET /v1/role/clusteradmin?user=`: about the caller (with the caller's groups), or, for a
/// cluster admin, about anyone (by name, as KFAM does). A non-admin asking about someone else
/// learns nothing: the answer is `false`.
async fn is_cluster_admin(
    State(k): State<Arc<Kfam>>,
    Extension(id): Extension<Identity>,
    Query(q): Query<AdminQuery>,
) -> Response {
    let caller = user_info(&id);
    let answer = if q.user.is_empty() || q.user == id.user {
        k.cluster_admin(&caller)
    } else if k.cluster_admin(&caller) {
        k.cluster_admin(&UserInfo::authenticated(q.user, &[]))
    } else {
        tracing::info!(target: "audit", caller = %id.user, "KFAM cluster-admin question about another user answered false");
        false
    };
    json_utf8(StatusCode::OK, json!(answer))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_and_bodies_follow_kfam() {
        assert_eq!(
            binding_name("User", "user1@org1.com", "ClusterRole", "edit"),
            "user-user1-org1-com-clusterrole-edit"
        );
        assert_eq!(
            binding_name("User", "test.user2@example.org", "ClusterRole", "view"),
            "user-test-user2-example-org-clusterrole-view"
        );
        let b = parse_binding(br#"{"user":{"kind":"User","name":"a@b.c"},"referredNamespace":"ns","RoleRef":{"kind":"ClusterRole","name":"edit"}}"#).unwrap();
        assert_eq!((b.user.as_str(), b.namespace.as_str(), b.role), ("a@b.c", "ns", "edit"));
        // the dashboard's lower-case roleRef and the long role name work too
        let b = parse_binding(br#"{"user":{"kind":"User","name":"a@b.c"},"referredNamespace":"ns","roleRef":{"kind":"ClusterRole","name":"kubeflow-view"}}"#).unwrap();
        assert_eq!(b.role, "view");
        assert!(
            parse_binding(br#"{"user":{"name":"a"},"referredNamespace":"ns","RoleRef":{"name":"owner"}}"#).is_err()
        );
        assert!(parse_binding(b"not json").is_err());
    }
}
