//! kfsec-api: a Kubernetes-style API server over the kfsec store — discovery, CRUD, patch,
//! watch, access reviews, TokenReview and impersonation — good enough for real `kubectl`, plus
//! typed helpers controllers use without HTTP.
//!
//! Invariants: every HTTP request is authorized (as the effective, possibly impersonated, user)
//! before it touches the store; the typed helpers are system-internal (no authorization) but run
//! the same validation, defaulting and admission and bump `resourceVersion` like HTTP writes;
//! store keys are `/k8s/{group|core}/{plural}/[{ns}/]{name}` and values are the object JSON
//! without `metadata.resourceVersion` (which is always the record's mod revision).

mod access;
pub mod audit;
mod authorize;
pub mod body;
mod discovery;
pub mod fieldcheck;
mod handlers;
mod hooks;
mod impersonation;
mod kinds;
mod list;
mod lists;
pub mod managed;
mod meta;
mod objects;
mod openapi;
mod openapi_pb;
/// Public for the `api_patch` fuzz target ([`patch::apply`]); the server reaches it only
/// through PATCH requests.
pub mod patch;
pub mod proto;
mod rbac_guard;
pub mod registry;
mod reviews;
mod route;
pub mod selector;
mod status;
mod table;
mod tokenrequest;
mod watch;

#[cfg(test)]
mod tests_apply;
#[cfg(test)]
mod tests_clients;
#[cfg(test)]
mod tests_http;
#[cfg(test)]
mod tests_kubectl;
#[cfg(test)]
mod tests_props;
#[cfg(test)]
mod tests_sec;
#[cfg(test)]
mod testutil;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::any;
use kfsec_store::{Revision, Store};
use kfsec_types::identity::UserInfo;
use kfsec_types::{Clock, Rng};
use serde_json::Value;

pub use access::{Follow, ObjectEvent, Objects, StoredObject};
pub use authorize::{
    Attributes, Authorize, Decision, NonResourceAttributes, NonResourceRule, RequestAttributes, ResourceAttributes,
    ResourceRule, SubjectRules, attributes_for,
};
pub use hooks::{
    Admission, AdmissionAttributes, AdmissionDenied, BoundKindRef, BoundRef, IssueError, IssuedToken, NamespaceData,
    NoAdmission, NoTokenIssuer, NoTokenReviewer, TokenGrant, TokenIssuer, TokenReviewStatus, TokenReviewer,
};
pub use patch::PatchType;
pub use registry::Resource;
pub use status::{ApiError, FieldCause, refusal_response, refusal_status, status_response};

/// The front-door paths the API owns, as served by [`ApiServer::router`] (an entry ending in `/`
/// owns every path under it); the composition hands them to the gateway with
/// [`refusal_response`], the API's renderer for the gateway's refusals.
pub const PATHS: &[&str] = &["/version", "/version/", "/api", "/api/", "/apis", "/apis/", "/openapi/"];

use objects::{ListQuery, Preconditions, WriteCtx};

/// Tunables.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// `/version` gitVersion.
    pub git_version: String,
    /// The build `/version` reports (`gitCommit`, `gitTreeState`, `buildDate`).
    pub build: kfsec_types::BuildInfo,
    /// Largest accepted request body (413 above). Default 3 MiB.
    pub max_body_bytes: usize,
    /// Longest a watch stays open (and the default when `timeoutSeconds` is absent). Default 30 min.
    pub max_watch_timeout: Duration,
    /// System namespaces no Profile may claim, besides every `kube-*` name. Default `default`,
    /// `kubeflow` (KFP's system namespace) and `kfsec`.
    pub reserved_namespaces: Vec<String>,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            git_version: "v1.32.0-kfsec".into(),
            build: kfsec_types::BuildInfo::default(),
            max_body_bytes: 3 * 1024 * 1024,
            max_watch_timeout: Duration::from_secs(1800),
            reserved_namespaces: ["default", "kubeflow", "kfsec"].map(str::to_owned).to_vec(),
        }
    }
}

/// A list from [`ApiServer::list_objects`].
#[derive(Debug, Clone)]
pub struct ObjectList {
    /// The objects (with `apiVersion`, `kind`, `metadata.resourceVersion`).
    pub items: Vec<Value>,
    /// The store revision of the list (watch from here).
    pub resource_version: Revision,
}

/// The Kubernetes-style API server.
pub struct ApiServer {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) authz: Arc<dyn Authorize>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rng: Arc<dyn Rng>,
    pub(crate) admission: Arc<dyn Admission>,
    pub(crate) tokens: Arc<dyn TokenReviewer>,
    pub(crate) issuer: Arc<dyn TokenIssuer>,
    pub(crate) namespace_data: Vec<Arc<dyn NamespaceData>>,
    pub(crate) options: ApiOptions,
}

/// Bodies up to this size are decoded inline; larger ones on the blocking pool.
const INLINE_DECODE_BYTES: usize = 64 * 1024;
/// The longest a decode waits for its turn on the blocking pool (then 429).
const DECODE_WAIT: Duration = Duration::from_secs(20);

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Builds an [`ApiServer`].
pub struct ApiServerBuilder {
    inner: ApiServer,
}

impl ApiServerBuilder {
    /// In-process admission (default: none).
    #[must_use]
    pub fn admission(mut self, a: Arc<dyn Admission>) -> Self {
        self.inner.admission = a;
        self
    }
    /// TokenReview backend (default: every token unauthenticated).
    #[must_use]
    pub fn token_reviewer(mut self, t: Arc<dyn TokenReviewer>) -> Self {
        self.inner.tokens = t;
        self
    }
    /// Service-account token minting for TokenRequest (default: none, the subresource is a 404).
    #[must_use]
    pub fn token_issuer(mut self, t: Arc<dyn TokenIssuer>) -> Self {
        self.inner.issuer = t;
        self
    }
    /// Data another API keeps per namespace, emptied before a Namespace is deleted (each call
    /// adds one).
    #[must_use]
    pub fn namespace_data(mut self, d: Arc<dyn NamespaceData>) -> Self {
        self.inner.namespace_data.push(d);
        self
    }
    /// Options.
    #[must_use]
    pub fn options(mut self, o: ApiOptions) -> Self {
        self.inner.options = o;
        self
    }
    /// Finishes.
    pub fn build(self) -> Arc<ApiServer> {
        Arc::new(self.inner)
    }
}

fn system_ctx(user: &UserInfo) -> WriteCtx<'_> {
    WriteCtx {
        user,
        http: false,
        dry_run: false,
        subresource: "",
        manager: "",
    }
}

impl ApiServer {
    /// A builder with no admission, no token reviewer and default options.
    pub fn builder(
        store: Arc<dyn Store>,
        authorizer: Arc<dyn Authorize>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
    ) -> ApiServerBuilder {
        ApiServerBuilder {
            inner: Self {
                store,
                authz: authorizer,
                clock,
                rng,
                admission: Arc::new(NoAdmission),
                tokens: Arc::new(NoTokenReviewer),
                issuer: Arc::new(NoTokenIssuer),
                namespace_data: Vec::new(),
                options: ApiOptions::default(),
            },
        }
    }

    /// A server with defaults (see [`ApiServer::builder`] for hooks).
    pub fn new(
        store: Arc<dyn Store>,
        authorizer: Arc<dyn Authorize>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
    ) -> Arc<Self> {
        Self::builder(store, authorizer, clock, rng).build()
    }

    /// The router for `/version`, `/api`, `/api/*`, `/apis`, `/apis/*` and `/openapi/*`. Each
    /// request must carry an `Extension<kfsec_types::Identity>` (else 401).
    pub fn router(self: &Arc<Self>) -> Router {
        let h = any(handlers::handle);
        Router::new()
            .route("/version", h.clone())
            .route("/version/", h.clone())
            .route("/version/{*rest}", h.clone())
            .route("/api/", h.clone())
            .route("/apis/", h.clone())
            .route("/api", h.clone())
            .route("/api/{*rest}", h.clone())
            .route("/apis", h.clone())
            .route("/apis/{*rest}", h.clone())
            .route("/openapi/{*rest}", h)
            .with_state(Arc::clone(self))
    }

    /// Runs `work` (decoding or patching `size` bytes) inline when small, else on the bounded
    /// process-wide blocking pool ([`body::run_blocking`]), so large bodies never stall the
    /// async workers.
    pub(crate) async fn offload<T: Send + 'static>(
        &self,
        size: usize,
        work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        if size <= INLINE_DECODE_BYTES {
            return work();
        }
        body::run_blocking(DECODE_WAIT, work).await.map_err(|e| match e {
            body::PoolError::Busy => ApiError::TooManyRequests(e.to_string()),
            body::PoolError::Failed => ApiError::Internal(e.to_string()),
        })?
    }

    /// Whether `name` is a system namespace no Profile may own: `kube-*` or one of
    /// [`ApiOptions::reserved_namespaces`].
    pub fn is_reserved_namespace(&self, name: &str) -> bool {
        name.starts_with("kube-") || self.options.reserved_namespaces.iter().any(|r| r == name)
    }

    /// The reserved namespaces that always exist (`kube-*` ones Kubernetes creates included).
    pub fn system_namespaces(&self) -> Vec<String> {
        let mut out: Vec<String> = ["kube-system", "kube-public", "kube-node-lease"]
            .map(str::to_owned)
            .to_vec();
        out.extend(self.options.reserved_namespaces.iter().cloned());
        out.dedup();
        out
    }

    /// The served type `group/version/plural` (`""` group for core).
    pub fn resource(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        registry::find(group, version, plural)
    }

    /// Typed read access to the stored objects (get, list, follow by resource), for
    /// components that are not the HTTP API.
    pub fn objects(&self) -> Objects {
        Objects::new(self.store.clone(), self.rng.clone())
    }

    /// One object, or `None`. `ns` is ignored for cluster-scoped types.
    pub async fn get_object(&self, res: &'static Resource, ns: &str, name: &str) -> Result<Option<Value>, ApiError> {
        Ok(self.read(res, ns, name).await?.map(|(v, _)| v))
    }

    /// Creates `obj` (system-internal: no authorization, no namespace-existence check; validation,
    /// defaulting and admission run). `ns` empty → `metadata.namespace` of `obj`.
    pub async fn create_object(&self, res: &'static Resource, ns: &str, obj: Value) -> Result<Value, ApiError> {
        let ns = if ns.is_empty() {
            objects::namespace_of(&obj).to_owned()
        } else {
            ns.to_owned()
        };
        let user = UserInfo::system();
        self.create_in(res, &ns, obj, system_ctx(&user)).await
    }

    /// Replaces an object (name and namespace from `obj.metadata`); a non-empty
    /// `metadata.resourceVersion` is a precondition (409 Conflict if stale). Status is written
    /// too (controllers own it).
    pub async fn update_object(&self, res: &'static Resource, obj: Value) -> Result<Value, ApiError> {
        let ns = objects::namespace_of(&obj).to_owned();
        let name = objects::name_of(&obj).to_owned();
        let user = UserInfo::system();
        self.update_in(res, &ns, &name, obj, system_ctx(&user)).await
    }

    /// Patches an object (system-internal).
    pub async fn patch_object(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        kind: PatchType,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        let user = UserInfo::system();
        let raw = serde_json::to_vec(patch).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        self.patch_in(res, ns, name, kind, &raw, system_ctx(&user)).await
    }

    /// Deletes an object; `Ok(None)` if it did not exist. With finalizers the object is only
    /// marked (`deletionTimestamp`) and returned. Deleting a Namespace deletes its contents.
    pub async fn delete_object(&self, res: &'static Resource, ns: &str, name: &str) -> Result<Option<Value>, ApiError> {
        let user = UserInfo::system();
        match self
            .delete_in(res, ns, name, &Preconditions::default(), system_ctx(&user))
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(ApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stored Roles and ClusterRoles whose rules Kubernetes' validation refuses (kept from
    /// before kfsec checked them on write): each as (kind, namespace, name, "field: message"
    /// lines). The authorizer still grants what such rules name, so an operator must rewrite
    /// them; the server lists them at start.
    pub async fn invalid_stored_roles(&self) -> Result<Vec<(&'static str, String, String, Vec<String>)>, ApiError> {
        let mut out = Vec::new();
        for (plural, namespaced) in [("roles", true), ("clusterroles", false)] {
            let res = Self::resource("rbac.authorization.k8s.io", "v1", plural).ok_or(ApiError::NoRoute)?;
            for obj in self.list_objects(res, None, "").await?.items {
                let causes = kinds::policy_rule_causes(obj.get("rules"), namespaced);
                if causes.is_empty() {
                    continue;
                }
                let meta = |k: &str| {
                    obj.pointer(&format!("/metadata/{k}"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let lines = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
                out.push((res.kind, meta("namespace"), meta("name"), lines));
            }
        }
        Ok(out)
    }

    /// Lists objects (`ns` `None` = all namespaces) matching a label selector (`""` = all).
    pub async fn list_objects(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
        label_selector: &str,
    ) -> Result<ObjectList, ApiError> {
        let labels = selector::LabelQuery::parse(label_selector).map_err(|e| ApiError::BadRequest(e.0))?;
        let q = ListQuery {
            labels,
            ..ListQuery::default()
        };
        let out = self.list_in(res, ns, &q).await?;
        Ok(ObjectList {
            items: out.items,
            resource_version: out.revision,
        })
    }
}
