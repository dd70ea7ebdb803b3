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
//! caller unless a cluster admin asks. A store or internal failure is answered 503/500 with a
//! generic message and an incident id that the log line also carries, never with internal text
//! and never as a refusal (403/401 are for genuine refusals only).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use kfsec_api::audit::{self, ObjectRef};
use kfsec_api::{ApiError, ApiServer, Attributes, Authorize, Decision};
use kfsec_store::Store;
use kfsec_types::identity::UserInfo;
use kfsec_types::kubeflow::{PROFILE_API_VERSION, Profile};
use kfsec_types::rbac::{RoleBinding, RoleRef, Subject};
use kfsec_types::{Failure, Identity, Refusal, Rng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::controller::{CoreObject, decode_profile, encode, profiles, stored_profile};

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
    rng: Arc<dyn Rng>,
    registration_flow: bool,
}

fn user_info(id: &Identity) -> UserInfo {
    UserInfo::from(id)
}

pub(crate) fn json_utf8(status: StatusCode, body: Value) -> Response {
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

pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    json_utf8(status, json!({ "error": message }))
}

/// KFAM's renderer for a protocol-neutral refusal (the front door's own refusals on `/kfam/`,
/// KFAM's failures): `{"error": <text>}`, plus `"incident"` for a failure of kfsec.
pub fn refusal_response(r: &Refusal) -> Response {
    let status = StatusCode::from_u16(r.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match &r.incident {
        Some(id) => json_utf8(status, json!({ "error": r.text(), "incident": id.as_str() })),
        None => error(status, &r.message),
    }
}

/// A failure of kfsec, not a refusal: what KFAM was doing when the store or an invariant failed.
/// The client gets 503 (store) or 500 (anything else) with a generic message and an incident id;
/// the cause goes to the log under the same id.
fn failure(k: &Kfam, doing: &str, e: &ApiError) -> Response {
    let what = match e {
        ApiError::Store(_) => Failure::Storage,
        _ => Failure::Internal,
    };
    let r = Refusal::failure(what, k.rng.as_ref());
    tracing::error!(incident = %r.incident_id(), error = %e, "KFAM failed while {doing}");
    refusal_response(&r)
}

/// Whether `e` is kfsec failing (storage, a broken invariant) rather than the request being refused.
fn is_failure(e: &ApiError) -> bool {
    matches!(e, ApiError::Store(_) | ApiError::Internal(_))
}

/// KFAM's answer to an API error: a genuine refusal is 403 with its (client-facing) message, as
/// KFAM answers; a failure is [`failure`].
fn refusal_or_failure(k: &Kfam, doing: &str, e: &ApiError) -> Denied {
    if is_failure(e) {
        Denied::Failed(failure(k, doing, e))
    } else {
        Denied::Refused(StatusCode::FORBIDDEN, Some(e.to_string()))
    }
}

/// Why a KFAM operation (shared by `/kfam/` and the dashboard API) did not happen.
pub(crate) enum Denied {
    /// A genuine refusal: the status and its client-facing message (`None`: KFAM answers with an
    /// empty body).
    Refused(StatusCode, Option<String>),
    /// kfsec failed: the response (generic message, incident id) is already rendered.
    Failed(Response),
}

impl Denied {
    /// KFAM's rendering.
    fn kfam(self) -> Response {
        match self {
            Self::Refused(status, Some(message)) => error(status, &message),
            Self::Refused(status, None) => empty(status),
            Self::Failed(r) => r,
        }
    }
}

/// A profile as KFAM shows it to a caller: its namespace, owner and annotated bindings
/// (`(user, role)`, the owner's `admin` binding included).
pub(crate) struct Workspace {
    /// The profile's (and namespace's) name.
    pub(crate) name: String,
    /// The owner's name.
    pub(crate) owner: String,
    /// `(user, role)` of each KFAM binding, role `admin`, `edit` or `view`.
    pub(crate) bindings: Vec<(String, String)>,
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
pub(crate) struct Binding {
    user_kind: String,
    user: String,
    namespace: String,
    role: &'static str,
}

impl Binding {
    /// `user` bound in `namespace` with `role` (`admin`, `edit` or `view`; `None` if unknown).
    pub(crate) fn user(user: &str, namespace: &str, role: &str) -> Option<Self> {
        Some(Self {
            user_kind: "User".to_owned(),
            user: user.to_owned(),
            namespace: namespace.to_owned(),
            role: short_role(role)?,
        })
    }
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
        rng: Arc<dyn Rng>,
        registration_flow: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            api,
            store,
            authz,
            sync,
            rng,
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
            .layer(axum::middleware::from_fn(audit::layer))
            .with_state(self.clone())
    }

    /// The authorizer KFAM decides with.
    pub(crate) fn authz(&self) -> &dyn Authorize {
        self.authz.as_ref()
    }

    /// A failure of kfsec while `doing` (logged with an incident id).
    pub(crate) fn failed(&self, doing: &str, e: &ApiError) -> Denied {
        Denied::Failed(failure(self, doing, e))
    }

    /// Whether `user` may do anything anywhere.
    pub fn cluster_admin(&self, user: &UserInfo) -> bool {
        self.cluster_admin_reason(user).is_some()
    }

    /// RBAC's reason when `user` may do anything anywhere (`None`: not a cluster admin).
    pub(crate) fn cluster_admin_reason(&self, user: &UserInfo) -> Option<String> {
        let a = Attributes::resource(user.username.clone(), user.groups.clone(), "*", "*", "*", "");
        match self.authz.authorize(&a) {
            Decision::Allow { reason } => Some(reason),
            Decision::NoOpinion => None,
        }
    }

    pub(crate) async fn may_manage(&self, user: &UserInfo, namespace: &str) -> Result<bool, ApiError> {
        Ok(self.manage_reason(user, namespace).await?.is_some())
    }

    /// Why `user` may manage `namespace`'s contributors (a cluster admin: RBAC's reason; its
    /// owner: [`owner_reason`]); `None`: they may not.
    pub(crate) async fn manage_reason(&self, user: &UserInfo, namespace: &str) -> Result<Option<String>, ApiError> {
        if let Some(reason) = self.cluster_admin_reason(user) {
            return Ok(Some(reason));
        }
        // A system namespace has no owner, whatever a Profile of that name (old data) says.
        if self.api.is_reserved_namespace(namespace) {
            return Ok(None);
        }
        let Some(profile) = self.api.get_object(profiles()?, "", namespace).await? else {
            return Ok(None);
        };
        let profile = stored_profile(profile);
        if profile.owner_name() != user.username {
            return Ok(None);
        }
        // The owner manages only the namespace this very Profile made (its owner reference): a
        // Profile refused a namespace that was there before it (its Failed condition) grants
        // nothing in it, and neither does one re-created under the name of another's.
        let nsr = ApiServer::resource("", "v1", "namespaces")
            .ok_or_else(|| ApiError::Internal("namespaces are not served".into()))?;
        let Some(ns) = self.api.get_object(nsr, "", namespace).await? else {
            return Ok(None);
        };
        let own = CoreObject::decode(ns)?.owned_by_profile(namespace, Some(crate::controller::uid_of(&profile)));
        Ok(own.then(|| owner_reason(namespace)))
    }

    /// Whether a new profile may be named `name`: not a system namespace, not a namespace that
    /// already exists (unless a Profile of that name owns it). `Ok(Err(reason))` is a refusal;
    /// `Err` is a failure to find out.
    async fn claimable(&self, name: &str) -> Result<Result<(), String>, ApiError> {
        if self.api.is_reserved_namespace(name) {
            return Ok(Err(format!(
                "namespace {name:?} is reserved for the system and cannot be owned by a profile"
            )));
        }
        let nsr = ApiServer::resource("", "v1", "namespaces")
            .ok_or_else(|| ApiError::Internal("namespaces are not served".into()))?;
        Ok(match self.api.get_object(nsr, "", name).await? {
            None => Ok(()),
            Some(ns) => {
                if CoreObject::decode(ns)?.owned_by_profile(name, None) {
                    Ok(())
                } else {
                    Err(format!(
                        "namespace {name:?} already exists and is not owned by a profile"
                    ))
                }
            }
        })
    }

    async fn settle(&self) {
        if let Ok(rev) = self.store.revision().await {
            self.sync.wait_for(rev).await;
        }
    }
}

/// The audit `objectRef` of a KFAM binding: `rolebindings` (`rbac.authorization.k8s.io/v1`) in
/// the workspace namespace.
pub(crate) fn binding_ref(namespace: &str, name: &str) -> ObjectRef {
    audit::object_ref(RBAC_GROUP, "v1", "rolebindings", namespace, name)
}

/// The audit `objectRef` of a Profile (`kubeflow.org/v1`, cluster-scoped).
pub(crate) fn profile_ref(name: &str) -> ObjectRef {
    let (group, version) = PROFILE_API_VERSION.split_once('/').unwrap_or(("kubeflow.org", "v1"));
    audit::object_ref(group, version, "profiles", "", name)
}

/// The audit reason of a decision a profile's ownership makes.
pub(crate) fn owner_reason(namespace: &str) -> String {
    format!("KFAM: allowed as the owner of Profile {namespace:?}")
}

/// The audit reason of a profile created through self-registration.
const REGISTRATION_REASON: &str = "KFAM: registrationFlow lets a user create the Profile they own";

/// The audit reason of the cluster-admin question asked about oneself.
const SELF_QUESTION_REASON: &str = "KFAM: every user may ask whether they are a cluster admin";

/// The audit reason of reads every user may make, limited to the workspaces they belong to.
pub(crate) const MEMBERS_REASON: &str = "KFAM: every user reads the workspaces they belong to";

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn rolebindings() -> Result<&'static kfsec_api::Resource, ApiError> {
    ApiServer::resource(RBAC_GROUP, "v1", "rolebindings")
        .ok_or_else(|| ApiError::Internal("rolebindings are not served".into()))
}

impl Kfam {
    /// Checks that the caller may manage the binding's namespace (a refusal is KFAM's empty 403;
    /// a failure to find out is a failure, not a refusal).
    /// The decision is recorded in the request's audit Event as `verb` on the binding `name`.
    async fn check_manage(&self, id: &Identity, b: &Binding, verb: &str, name: &str) -> Result<(), Denied> {
        let decided = self.manage_reason(&user_info(id), &b.namespace).await;
        if let Ok(reason) = &decided {
            let object = binding_ref(&b.namespace, name);
            audit::decided(verb, object, reason.is_some(), reason.as_deref().unwrap_or_default());
        }
        match decided {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                tracing::info!(target: "audit", caller = %id.user, namespace = %b.namespace, "KFAM binding refused");
                Err(Denied::Refused(StatusCode::FORBIDDEN, None))
            }
            Err(e) => Err(Denied::Failed(failure(self, "checking who may manage a namespace", &e))),
        }
    }

    /// Adds a contributor binding, if the caller may manage its namespace; the authorizer sees it
    /// before this returns.
    pub(crate) async fn bind(&self, id: &Identity, b: &Binding) -> Result<(), Denied> {
        let name = binding_name(&b.user_kind, &b.user, "ClusterRole", b.role);
        self.check_manage(id, b, "create", &name).await?;
        let rb = rolebindings().map_err(|e| Denied::Failed(failure(self, "finding rolebindings", &e)))?;
        let mut binding = RoleBinding::new(
            &b.namespace,
            name,
            RoleRef::cluster_role(format!("kubeflow-{}", b.role)),
            vec![Subject::user(&b.user)],
        );
        binding.metadata.annotations = BTreeMap::from([
            ("user".to_owned(), b.user.clone()),
            ("role".to_owned(), b.role.to_owned()),
        ]);
        let obj = encode(&binding).map_err(|e| Denied::Failed(failure(self, "encoding a binding", &e)))?;
        match self.api.create_object(rb, &b.namespace, obj).await {
            Ok(created) => audit::written(&created),
            Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(refusal_or_failure(self, "creating a binding", &e)),
        }
        self.settle().await;
        tracing::info!(target: "audit", caller = %id.user, user = %b.user, namespace = %b.namespace, role = b.role, "contributor added");
        Ok(())
    }

    /// Removes a contributor binding, if the caller may manage its namespace; the authorizer no
    /// longer grants it when this returns.
    pub(crate) async fn unbind(&self, id: &Identity, b: &Binding) -> Result<(), Denied> {
        let name = binding_name(&b.user_kind, &b.user, "ClusterRole", b.role);
        self.check_manage(id, b, "delete", &name).await?;
        let rb = rolebindings().map_err(|e| Denied::Failed(failure(self, "finding rolebindings", &e)))?;
        match self.api.delete_object(rb, &b.namespace, &name).await {
            Ok(Some(deleted)) => {
                audit::written(&deleted);
                self.settle().await;
                tracing::info!(target: "audit", caller = %id.user, user = %b.user, namespace = %b.namespace, "contributor removed");
                Ok(())
            }
            Ok(None) => Err(Denied::Refused(
                StatusCode::FORBIDDEN,
                Some(format!("rolebinding {name} not found")),
            )),
            Err(e) => Err(refusal_or_failure(self, "deleting a binding", &e)),
        }
    }
}

async fn create_binding(
    State(k): State<Arc<Kfam>>,
    Extension(id): Extension<Identity>,
    body: axum::body::Bytes,
) -> Response {
    let b = match parse_binding(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::FORBIDDEN, &e),
    };
    match k.bind(&id, &b).await {
        Ok(()) => empty(StatusCode::OK),
        Err(d) => d.kfam(),
    }
}

async fn delete_binding(
    State(k): State<Arc<Kfam>>,
    Extension(id): Extension<Identity>,
    body: axum::body::Bytes,
) -> Response {
    let b = match parse_binding(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::FORBIDDEN, &e),
    };
    match k.unbind(&id, &b).await {
        Ok(()) => empty(StatusCode::OK),
        Err(d) => d.kfam(),
    }
}

/// A binding as KFAM lists it (note the capital `RoleRef`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BindingOut {
    user: KindName,
    referred_namespace: String,
    #[serde(rename = "RoleRef")]
    role_ref: KindName,
    status: &'static str,
}

/// `{kind, name}`.
#[derive(Serialize)]
struct KindName {
    kind: &'static str,
    name: String,
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

impl Kfam {
    /// The profiles whose bindings the caller may see: all for a cluster admin, else those the
    /// caller owns or is bound in. A namespace whose bindings cannot be read fails the answer
    /// rather than vanishing from it.
    pub(crate) async fn workspaces(&self, id: &Identity) -> Result<Vec<Workspace>, Response> {
        let rb = rolebindings().map_err(|e| failure(self, "finding rolebindings", &e))?;
        let pr = profiles().map_err(|e| failure(self, "finding profiles", &e))?;
        let profiles = self
            .api
            .list_objects(pr, None, "")
            .await
            .map_err(|e| failure(self, "listing profiles", &e))?
            .items;
        let admin = self.cluster_admin(&user_info(id));
        let mut out = Vec::new();
        for p in profiles.into_iter().map(stored_profile) {
            let ns = p.name();
            if ns.is_empty() {
                continue;
            }
            let list = self
                .api
                .list_objects(rb, Some(ns), "")
                .await
                .map_err(|e| failure(self, "listing bindings", &e))?;
            // KFAM's bindings are the RoleBindings annotated with `user` and `role`.
            let bindings: Vec<(String, String)> = list
                .items
                .into_iter()
                .filter_map(|b| {
                    let mut annotations = CoreObject::decode(b).ok()?.metadata.annotations;
                    Some((annotations.remove("user")?, annotations.remove("role")?))
                })
                .collect();
            // Who is in a workspace is shown to its members and to cluster admins only.
            let member = p.owner_name() == id.user || bindings.iter().any(|(u, _)| *u == id.user);
            if admin || member {
                out.push(Workspace {
                    name: ns.to_owned(),
                    owner: p.owner_name().to_owned(),
                    bindings,
                });
            }
        }
        Ok(out)
    }
}

async fn list_bindings(
    State(k): State<Arc<Kfam>>,
    Extension(id): Extension<Identity>,
    Query(q): Query<BindingQuery>,
) -> Response {
    audit::decided("list", binding_ref(&q.namespace, ""), true, MEMBERS_REASON);
    let workspaces = match k.workspaces(&id).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let mut out = Vec::new();
    for w in workspaces {
        if !q.namespace.is_empty() && q.namespace != w.name {
            continue;
        }
        for (user, role) in w.bindings {
            if (!q.user.is_empty() && q.user != user) || (!q.role.is_empty() && q.role != role) {
                continue;
            }
            out.push(BindingOut {
                user: KindName {
                    kind: "User",
                    name: user,
                },
                referred_namespace: w.name.clone(),
                role_ref: KindName {
                    kind: "ClusterRole",
                    name: role,
                },
                status: "",
            });
        }
    }
    json_utf8(StatusCode::OK, json!({ "bindings": out }))
}

impl Kfam {
    /// Creates profile `p` if the caller is a cluster admin, or self-registration is on and the
    /// caller owns it; never over a system or foreign namespace.
    pub(crate) async fn make_profile(&self, id: &Identity, mut p: Profile) -> Result<(), Denied> {
        let own = p.owner_name() == id.user;
        let admin = self.cluster_admin_reason(&user_info(id));
        let beyond = if admin.is_none() { admin_only_part(&p) } else { None };
        let reason = match admin {
            Some(reason) => Some(reason),
            None => (self.registration_flow && own && beyond.is_none()).then(|| REGISTRATION_REASON.to_owned()),
        };
        audit::decided(
            "create",
            profile_ref(p.name()),
            reason.is_some(),
            reason.as_deref().unwrap_or_default(),
        );
        if reason.is_none() {
            let message = match beyond {
                Some(why) if self.registration_flow && own => why,
                _ => "only cluster admins create profiles for others (or enable registrationFlow)".to_owned(),
            };
            return Err(Denied::Refused(StatusCode::FORBIDDEN, Some(message)));
        }
        p.api_version.set(PROFILE_API_VERSION.to_owned());
        p.kind.set("Profile".to_owned());
        let r = profiles().map_err(|e| Denied::Failed(failure(self, "finding profiles", &e)))?;
        let name = p.name().to_owned();
        match self.claimable(&name).await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                tracing::info!(target: "audit", caller = %id.user, profile = %name, "KFAM profile refused: {message}");
                return Err(Denied::Refused(StatusCode::FORBIDDEN, Some(message)));
            }
            Err(e) => return Err(Denied::Failed(failure(self, "checking a profile's namespace", &e))),
        }
        let p = encode(&p).map_err(|e| Denied::Failed(failure(self, "encoding a profile", &e)))?;
        match self.api.create_object(r, "", p).await {
            Ok(created) => {
                audit::written(&created);
                tracing::info!(target: "audit", caller = %id.user, profile = %name, "profile created");
                Ok(())
            }
            Err(e) => Err(refusal_or_failure(self, "creating a profile", &e)),
        }
    }

    /// Deletes profile `name` if the caller owns it or is a cluster admin (else KFAM's empty 401).
    pub(crate) async fn remove_profile(&self, id: &Identity, name: &str) -> Result<(), Denied> {
        let refused = || Denied::Refused(StatusCode::UNAUTHORIZED, None);
        let r = profiles().map_err(|e| Denied::Failed(failure(self, "finding profiles", &e)))?;
        let reason = match self.api.get_object(r, "", name).await {
            Ok(Some(p)) => {
                if stored_profile(p).owner_name() == id.user {
                    Some(owner_reason(name))
                } else {
                    self.cluster_admin_reason(&user_info(id))
                }
            }
            Ok(None) => None,
            Err(e) => return Err(Denied::Failed(failure(self, "reading a profile", &e))),
        };
        audit::decided(
            "delete",
            profile_ref(name),
            reason.is_some(),
            reason.as_deref().unwrap_or_default(),
        );
        if reason.is_none() {
            return Err(refused());
        }
        match self.api.delete_object(r, "", name).await {
            Ok(deleted) => {
                if let Some(d) = &deleted {
                    audit::written(d);
                }
                tracing::info!(target: "audit", caller = %id.user, profile = %name, "profile deleted");
                Ok(())
            }
            Err(e) if is_failure(&e) => Err(Denied::Failed(failure(self, "deleting a profile", &e))),
            Err(_) => Err(refused()),
        }
    }
}

/// What a self-registered Profile may not carry, said as a refusal: it names its user as owner
/// and nothing more. `plugins` annotate the workspace's `default-editor` with a cloud identity
/// (an IAM role, a GCP service account) its pods then act as, and `resourceQuotaSpec` is the
/// workspace's share of the cluster: both are a cluster admin's to set (Kubeflow's KFAM takes
/// profiles only from the dashboard's service account for the same reason).
fn admin_only_part(p: &Profile) -> Option<String> {
    let spec = p.spec.get()?;
    if spec.plugins.get().is_some_and(|v| !v.is_empty()) {
        return Some("a self-registered profile cannot set plugins (cloud identities for its service accounts): ask a cluster admin".into());
    }
    if spec.resource_quota_spec.get().is_some() {
        return Some("a self-registered profile cannot set resourceQuotaSpec: ask a cluster admin".into());
    }
    let kind = spec
        .owner
        .get()
        .and_then(|o| o.kind.get())
        .map_or("User", String::as_str);
    if kind != "User" {
        return Some(format!(
            "a self-registered profile is owned by its user (kind User), not a {kind}"
        ));
    }
    None
}

async fn create_profile(
    State(k): State<Arc<Kfam>>,
    Extension(id): Extension<Identity>,
    body: axum::body::Bytes,
) -> Response {
    let p = match serde_json::from_slice(&body).and_then(decode_profile) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::FORBIDDEN, &format!("invalid profile: {e}")),
    };
    match k.make_profile(&id, p).await {
        Ok(()) => empty(StatusCode::OK),
        Err(d) => d.kfam(),
    }
}

async fn delete_profile(
    State(k): State<Arc<Kfam>>,
    Extension(id): Extension<Identity>,
    Path(name): Path<String>,
) -> Response {
    match k.remove_profile(&id, &name).await {
        Ok(()) => empty(StatusCode::OK),
        Err(d) => d.kfam(),
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
        audit::decided_non_resource("get", true, SELF_QUESTION_REASON);
        k.cluster_admin(&caller)
    } else if let Some(reason) = k.cluster_admin_reason(&caller) {
        audit::decided_non_resource("get", true, &reason);
        k.cluster_admin(&UserInfo::authenticated(q.user, &[]))
    } else {
        audit::decided_non_resource("get", false, "");
        tracing::info!(target: "audit", caller = %id.user, "KFAM cluster-admin question about another user answered false");
        false
    };
    json_utf8(StatusCode::OK, json!(answer))
}

#[cfg(test)]
mod tests {
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

#[cfg(test)]
mod failure_tests {
    //! A store that fails on demand: every KFAM surface answers a failure with 503 and an
    //! incident id, never with the store's text and never as a refusal.

    use std::sync::atomic::{AtomicU8, Ordering};

    use kfsec_store::MemoryStore;
    use kfsec_store::flaky::Flaky;
    use kfsec_types::{ManualClock, UnixTime};

    use super::*;

    /// `admin` may do anything; nobody else may do anything.
    struct AdminOnly;

    impl Authorize for AdminOnly {
        fn authorize(&self, a: &Attributes) -> Decision {
            if a.user == "admin" {
                Decision::Allow { reason: String::new() }
            } else {
                Decision::NoOpinion
            }
        }
        fn rules_for(&self, _user: &UserInfo, _namespace: &str) -> kfsec_api::SubjectRules {
            kfsec_api::SubjectRules::default()
        }
    }

    struct NoWait;

    impl AuthzSync for NoWait {
        fn wait_for(&self, _revision: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async {})
        }
    }

    struct CountingRng(AtomicU8);

    impl Rng for CountingRng {
        fn fill(&self, buf: &mut [u8]) {
            for b in buf {
                *b = self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    async fn setup() -> (Arc<Kfam>, Arc<Flaky>) {
        let clock = ManualClock::new(UnixTime::from_millis(1_700_000_000_000));
        let store = Flaky::new(MemoryStore::new(clock.clone()));
        let rng: Arc<dyn Rng> = Arc::new(CountingRng(AtomicU8::new(0xa0)));
        let api = ApiServer::new(store.clone(), Arc::new(AdminOnly), clock, rng.clone());
        let profile = json!({
            "apiVersion": "kubeflow.org/v1", "kind": "Profile",
            "metadata": {"name": "team"},
            "spec": {"owner": {"kind": "User", "name": "alice"}},
        });
        let stored = api.create_object(profiles().unwrap(), "", profile).await.unwrap();
        // Its namespace, as the controller makes it (the owner manages only that one).
        let controller = crate::controller::ProfileController::new(api.clone(), Default::default());
        controller
            .reconcile(&crate::controller::decode_profile(stored).unwrap())
            .await
            .unwrap();
        let k = Kfam::new(api, store.clone(), Arc::new(AdminOnly), Arc::new(NoWait), rng, true);
        (k, store)
    }

    /// Self-registration (registrationFlow) takes a Profile naming its user as owner and nothing
    /// more: plugins (a cloud identity for the workspace's service accounts), a quota or another
    /// kind of owner are a cluster admin's to set, and refused with the reason.
    #[tokio::test]
    async fn a_self_registered_profile_names_its_owner_and_nothing_more() {
        let (k, _) = setup().await;
        let make = |name: &str, spec: &str| {
            axum::body::Bytes::from(format!(r#"{{"metadata": {{"name": "{name}"}}, "spec": {spec}}}"#))
        };
        for (spec, says) in [
            (
                r#"{"owner": {"kind": "User", "name": "carol"}, "plugins": [{"kind": "AwsIamForServiceAccount", "spec": {"awsIamRole": "arn:aws:iam::1:role/admin"}}]}"#,
                "plugins",
            ),
            (
                r#"{"owner": {"kind": "User", "name": "carol"}, "resourceQuotaSpec": {"hard": {"cpu": "1000"}}}"#,
                "resourceQuotaSpec",
            ),
            (r#"{"owner": {"kind": "Group", "name": "carol"}}"#, "kind User"),
        ] {
            let (status, text) = body(create_profile(State(k.clone()), who("carol"), make("carol", spec)).await).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{spec}: {text}");
            assert!(text.contains(says), "{spec}: {text}");
        }
        let plain = r#"{"owner": {"kind": "User", "name": "carol"}}"#;
        let (status, text) = body(create_profile(State(k.clone()), who("carol"), make("carol", plain)).await).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let with_plugins = r#"{"owner": {"kind": "User", "name": "dave"}, "plugins": [{"kind": "WorkloadIdentity", "spec": {"gcpServiceAccount": "sa@p.iam"}}], "resourceQuotaSpec": {"hard": {"cpu": "2"}}}"#;
        let (status, text) =
            body(create_profile(State(k.clone()), who("admin"), make("dave", with_plugins)).await).await;
        assert_eq!(status, StatusCode::OK, "a cluster admin sets them: {text}");
    }

    /// A Profile whose namespace it did not make (one that was there before it: the controller
    /// marks it Failed) gives its owner nothing to manage there.
    #[tokio::test]
    async fn a_profile_refused_its_namespace_grants_its_owner_nothing() {
        let (k, _) = setup().await;
        let alice = UserInfo::authenticated("alice", &[]);
        assert!(k.may_manage(&alice, "team").await.unwrap());
        let nsr = ApiServer::resource("", "v1", "namespaces").unwrap();
        k.api
            .create_object(nsr, "", json!({"metadata": {"name": "taken"}}))
            .await
            .unwrap();
        let profile = json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": "taken"},
                             "spec": {"owner": {"kind": "User", "name": "alice"}}});
        k.api.create_object(profiles().unwrap(), "", profile).await.unwrap();
        assert!(!k.may_manage(&alice, "taken").await.unwrap());
        assert!(!k.may_manage(&alice, "nowhere").await.unwrap());
    }

    fn who(user: &str) -> Extension<Identity> {
        Extension(Identity::new(user, Vec::new()))
    }

    const BINDING: &str = r#"{"user":{"kind":"User","name":"bob"},"referredNamespace":"team","roleRef":{"kind":"ClusterRole","name":"edit"}}"#;

    async fn body(r: Response) -> (StatusCode, String) {
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// `method path` as `user` through KFAM's router with an audit context: the status and the
    /// request's Event.
    async fn audited(k: &Arc<Kfam>, user: &str, method: &str, path: &str, body: &str) -> (u16, kfsec_audit::Event) {
        use tower::ServiceExt as _;
        let cap = kfsec_audit::testing::Capture::metadata();
        let clock: Arc<dyn kfsec_types::Clock> = ManualClock::new(UnixTime::from_secs(1));
        let begin = kfsec_audit::request::Begin {
            audit_id: "a".into(),
            method: method.parse().unwrap(),
            request_uri: path.into(),
            source_ips: vec![].into(),
            user_agent: None,
        };
        let ctx = kfsec_audit::RequestAudit::begin(&cap.auditor(), &clock, begin).unwrap();
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        req.extensions_mut().insert(Identity::new(user, Vec::new()));
        req.extensions_mut().insert(ctx.clone());
        let status = k.router().oneshot(req).await.unwrap().status().as_u16();
        ctx.complete(status);
        (status, cap.take().pop().unwrap())
    }

    #[tokio::test]
    async fn audit_events_name_the_binding_and_who_decided() {
        let (k, _) = setup().await;
        let decision = |e: &kfsec_audit::Event| {
            let a = |key: &str| e.annotations.get(key).cloned().unwrap_or_default();
            (a("authorization.k8s.io/decision"), a("authorization.k8s.io/reason"))
        };
        // The owner adds bob: create rolebindings/<KFAM's name> in the workspace namespace.
        let (status, e) = audited(&k, "alice", "POST", "/v1/bindings", BINDING).await;
        assert_eq!(status, 200);
        assert_eq!(e.verb, "create");
        let o = e.object_ref.clone().unwrap();
        assert_eq!(o.api_group.as_deref(), Some("rbac.authorization.k8s.io"));
        assert_eq!(
            (o.resource.as_deref(), o.namespace.as_deref(), o.name.as_deref()),
            (Some("rolebindings"), Some("team"), Some("user-bob-clusterrole-edit"))
        );
        assert!(o.uid.is_some());
        assert_eq!(
            decision(&e),
            ("allow".into(), r#"KFAM: allowed as the owner of Profile "team""#.into())
        );
        // Someone else may not remove him: forbid, no reason.
        let (status, e) = audited(&k, "mallory", "DELETE", "/v1/bindings", BINDING).await;
        assert_eq!(status, 403);
        assert_eq!(e.verb, "delete");
        assert_eq!(decision(&e), ("forbid".into(), String::new()));
        assert_eq!(e.object_ref.unwrap().name.as_deref(), Some("user-bob-clusterrole-edit"));
        // Profiles: a refused creation, an owner's deletion.
        let p = r#"{"metadata":{"name":"other"},"spec":{"owner":{"kind":"User","name":"carol"}}}"#;
        let (status, e) = audited(&k, "mallory", "POST", "/v1/profiles", p).await;
        assert_eq!(status, 403);
        assert_eq!(decision(&e).0, "forbid");
        let o = e.object_ref.unwrap();
        assert_eq!(
            (o.resource.as_deref(), o.name.as_deref()),
            (Some("profiles"), Some("other"))
        );
        let (status, e) = audited(&k, "alice", "DELETE", "/v1/profiles/team", "").await;
        assert_eq!(status, 200);
        assert_eq!((e.verb.as_str(), decision(&e).0.as_str()), ("delete", "allow"));
    }

    #[tokio::test]
    async fn store_failures_are_503_with_an_incident_id_and_no_internal_text() {
        let (k, store) = setup().await;
        store.fail(true);
        let binding = || axum::body::Bytes::from_static(BINDING.as_bytes());
        let profile = || {
            axum::body::Bytes::from_static(
                br#"{"metadata":{"name":"newteam"},"spec":{"owner":{"kind":"User","name":"carol"}}}"#,
            )
        };
        let cases: Vec<(&str, Response)> = vec![
            // the owner check itself fails
            (
                "create binding (owner)",
                create_binding(State(k.clone()), who("alice"), binding()).await,
            ),
            (
                "delete binding (owner)",
                delete_binding(State(k.clone()), who("alice"), binding()).await,
            ),
            // the write fails
            (
                "create binding (admin)",
                create_binding(State(k.clone()), who("admin"), binding()).await,
            ),
            (
                "delete binding (admin)",
                delete_binding(State(k.clone()), who("admin"), binding()).await,
            ),
            (
                "list bindings",
                list_bindings(
                    State(k.clone()),
                    who("alice"),
                    Query(BindingQuery {
                        user: String::new(),
                        namespace: String::new(),
                        role: String::new(),
                    }),
                )
                .await,
            ),
            // the namespace check fails
            (
                "create profile (admin)",
                create_profile(State(k.clone()), who("admin"), profile()).await,
            ),
            (
                "create profile (self)",
                create_profile(State(k.clone()), who("carol"), profile()).await,
            ),
            (
                "delete profile (owner)",
                delete_profile(State(k.clone()), who("alice"), Path("team".into())).await,
            ),
            (
                "delete profile (admin)",
                delete_profile(State(k.clone()), who("admin"), Path("team".into())).await,
            ),
        ];
        for (what, r) in cases {
            let (status, text) = body(r).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {text}");
            for leak in ["redb", "I/O", "/var/lib", "page 7", "backend", "storage:"] {
                assert!(!text.contains(leak), "{what} leaks {leak:?}: {text}");
            }
            let v: Value = serde_json::from_str(&text).unwrap();
            let id = v["incident"].as_str().expect("an incident id");
            assert!(
                id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{what}: {text}"
            );
            assert!(v["error"].as_str().unwrap().contains(id), "{what}: {text}");
        }
    }

    #[tokio::test]
    async fn refusals_stay_403_and_ids_differ() {
        let (k, store) = setup().await;
        let binding = || axum::body::Bytes::from_static(BINDING.as_bytes());
        // Not the owner: a genuine refusal, as KFAM answers it.
        let (status, _) = body(create_binding(State(k.clone()), who("mallory"), binding()).await).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = body(delete_binding(State(k.clone()), who("mallory"), binding()).await).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = body(delete_profile(State(k.clone()), who("mallory"), Path("team".into())).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // The owner succeeds while the store works.
        let (status, text) = body(create_binding(State(k.clone()), who("alice"), binding()).await).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        // Two failures carry two incident ids.
        store.fail(true);
        let (_, a) = body(create_binding(State(k.clone()), who("alice"), binding()).await).await;
        let (_, b) = body(create_binding(State(k.clone()), who("alice"), binding()).await).await;
        let id = |t: &str| serde_json::from_str::<Value>(t).unwrap()["incident"].clone();
        assert_ne!(id(&a), id(&b));
    }

    #[tokio::test]
    async fn profiles_that_do_not_decode_are_refused_not_panics() {
        let (k, _) = setup().await;
        // Submitted: refused 403 as KFAM refuses a bad body. An array body used to panic the
        // handler (the JSON was indexed mutably as an object).
        for bad in [
            &b"[]"[..],
            b"5",
            br#"{"spec": []}"#,
            br#"{"metadata": {"name": "x"}, "spec": {"owner": {"name": 5}}}"#,
        ] {
            let r = create_profile(State(k.clone()), who("admin"), axum::body::Bytes::from_static(bad)).await;
            let (status, text) = body(r).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
            assert!(text.starts_with(r#"{"error":"invalid profile: "#), "{text}");
        }
        // Stored (written before the type existed): read as having no owner.
        let odd = json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": "odd"},
            "spec": {"owner": {"kind": "User", "name": 5}}});
        k.api.create_object(profiles().unwrap(), "", odd).await.unwrap();
        let (status, _) = body(delete_profile(State(k.clone()), who("alice"), Path("odd".into())).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let into_odd = || {
            axum::body::Bytes::from_static(
                br#"{"user":{"kind":"User","name":"bob"},"referredNamespace":"odd","roleRef":{"kind":"ClusterRole","name":"edit"}}"#,
            )
        };
        let (status, _) = body(create_binding(State(k.clone()), who("alice"), into_odd()).await).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, text) = body(create_binding(State(k.clone()), who("admin"), into_odd()).await).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let q = || {
            Query(BindingQuery {
                user: String::new(),
                namespace: String::new(),
                role: String::new(),
            })
        };
        let (status, text) = body(list_bindings(State(k.clone()), who("admin"), q()).await).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"bindings": [{"user": {"kind": "User", "name": "bob"}, "referredNamespace": "odd",
                "RoleRef": {"kind": "ClusterRole", "name": "edit"}, "status": ""},
                {"user": {"kind": "User", "name": "alice"}, "referredNamespace": "team",
                "RoleRef": {"kind": "ClusterRole", "name": "admin"}, "status": ""}]})
        );
    }
}
