//! kfsec-kfp: the Kubeflow Pipelines API (v1beta1 and v2beta1) under `/pipeline/apis/…`, with
//! KFP's multi-user semantics — experiments, pipelines and versions (with package upload), runs,
//! jobs / recurring runs, healthz — and the persistence agent's report endpoints.
//!
//! Invariants: every request carries the front door's `Identity` (else Unauthenticated, 401);
//! every operation on an object is authorized (`access::check`, the SubjectAccessReview
//! equivalent) in the object's own stored namespace before anything is returned or changed;
//! shared pipelines (no namespace) are readable by every authenticated caller but writable only
//! by the user who created them or with the right in the KFP system namespace; a namespace listing reads only that namespace's
//! keys; pipeline packages are stored with their SHA-256 and verified on every read; bodies are
//! bounded; no input makes a handler panic or answer 500 (except DataLoss and store failures).

mod access;
pub mod artifacts;
mod error;
mod experiments;
mod jobs;
mod json;
pub mod list;
pub mod multipart;
mod package;
mod pipelines;
mod refs;
mod report;
mod routes;
mod runs;
mod storage;
pub mod view;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, post};
use kfsec_api::Authorize;
use kfsec_store::Store;
use kfsec_types::{Clock, Rng};

pub use access::{denied_text, resource_attributes_text};
pub use error::code as error_code;
pub use error::{KfpError, KfpResult, NO_IDENTITY, error_response, refusal_response};

/// The front-door paths KFP owns, as served by [`Kfp::router`] (an entry ending in `/` owns every
/// path under it; the persistence agent's report endpoints sit under the Kubernetes API's
/// `/apis/`); the composition hands them to the gateway with [`refusal_response`].
pub const PATHS: &[&str] = &[
    "/pipeline/apis/",
    "/pipeline/artifacts/get",
    "/artifacts/get",
    "/apis/v1beta1/workflows",
    "/apis/v1beta1/scheduledworkflows",
];

/// Tunables.
#[derive(Debug, Clone)]
pub struct KfpSettings {
    /// The namespace KFP itself runs in: writes to shared pipelines are authorized there
    /// (KFP's `POD_NAMESPACE`). Default `kubeflow`.
    pub system_namespace: String,
    /// Largest accepted request body (uploads included). Default 32 MiB.
    pub max_body_bytes: usize,
    /// Most bytes of stored pipeline packages per namespace (shared pipelines count as one
    /// namespace). Default 512 MiB.
    pub max_package_bytes_per_namespace: u64,
    /// Most stored pipeline packages (versions) per namespace. Default 1000.
    pub max_packages_per_namespace: u64,
}

impl Default for KfpSettings {
    fn default() -> Self {
        Self {
            system_namespace: "kubeflow".into(),
            max_body_bytes: 32 * 1024 * 1024,
            max_package_bytes_per_namespace: 512 * 1024 * 1024,
            max_packages_per_namespace: 1000,
        }
    }
}

/// The KFP API server.
pub struct Kfp {
    pub(crate) db: storage::Db,
    pub(crate) authz: Arc<dyn Authorize>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rng: Arc<dyn Rng>,
    pub(crate) pager: list::Paginator,
    pub(crate) settings: KfpSettings,
    /// Serialises the quota check and the write of a new package.
    pub(crate) quota: tokio::sync::Mutex<()>,
    /// Where the artifact endpoint reads (set once by the composition when an S3 upstream is
    /// configured; unset, the endpoint answers 501).
    pub(crate) artifacts: std::sync::OnceLock<Arc<dyn artifacts::ArtifactStore>>,
}

impl std::fmt::Debug for Kfp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kfp")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

const TOKEN_KEY: &str = "/kfp/meta/page-token-key";
/// The longest a CPU-heavy job waits for its turn before the request is answered Unavailable.
const CPU_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

#[async_trait::async_trait]
impl kfsec_api::NamespaceData for Kfp {
    async fn purge_namespace(&self, namespace: &str) -> Result<(), kfsec_store::StoreError> {
        self.db.purge_namespace(namespace).await?;
        tracing::info!(target: "audit", namespace, "kfp: the namespace's experiments, runs, jobs and pipelines were deleted with it");
        Ok(())
    }

    async fn before_create(&self, namespace: &str) -> Result<(), kfsec_store::StoreError> {
        self.db.purge_namespace(namespace).await
    }
}

impl Kfp {
    /// Builds the server; loads (or creates, once) the page-token signing key in the store.
    pub async fn new(
        store: Arc<dyn Store>,
        authz: Arc<dyn Authorize>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        settings: KfpSettings,
    ) -> KfpResult<Arc<Self>> {
        let db = storage::Db::new(store);
        let fresh: [u8; 32] = kfsec_types::random_array(rng.as_ref());
        db.create_raw(TOKEN_KEY, fresh.to_vec()).await?;
        let secret = db
            .get_raw(TOKEN_KEY)
            .await?
            .map(|(b, _)| b)
            .filter(|b| b.len() >= 16)
            .ok_or_else(|| KfpError::DataLoss("the page-token key is missing".into()))?;
        Ok(Arc::new(Self {
            db,
            authz,
            clock,
            rng,
            pager: list::Paginator::new(&secret),
            settings,
            quota: tokio::sync::Mutex::new(()),
            artifacts: std::sync::OnceLock::new(),
        }))
    }

    /// Serves the artifact endpoint from `store` (once; a second call is ignored).
    pub fn serve_artifacts(&self, store: Arc<dyn artifacts::ArtifactStore>) {
        let _ = self.artifacts.set(store);
    }

    /// The router: `/pipeline/apis/{v1beta1,v2beta1}/…`, the UI's artifact endpoint
    /// (`/pipeline/artifacts/get`, `/artifacts/get`) plus the persistence agent's
    /// `/apis/v1beta1/workflows` and `/apis/v1beta1/scheduledworkflows`. Requests must carry an
    /// `Extension<kfsec_types::Identity>`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/pipeline/apis/{*rest}", any(routes::dispatch))
            .route("/pipeline/artifacts/get", get(artifacts::get))
            .route("/artifacts/get", get(artifacts::get))
            .route("/apis/v1beta1/workflows", post(routes::dispatch))
            .route("/apis/v1beta1/scheduledworkflows", post(routes::dispatch))
            .with_state(Arc::clone(self))
    }

    /// Runs CPU-heavy `work` (multipart, decompression, YAML, large JSON) on the bounded
    /// process-wide blocking pool ([`kfsec_api::body::run_blocking`]), so that the async workers
    /// (and every other listener) stay responsive. Its input is bounded by the caller (body and
    /// decompression limits), which bounds its time: every parser is linear.
    pub(crate) async fn offload<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> KfpResult<T> + Send + 'static,
    ) -> KfpResult<T> {
        kfsec_api::body::run_blocking(CPU_WAIT, work)
            .await
            .map_err(|e| match e {
                kfsec_api::body::PoolError::Busy => KfpError::Unavailable(format!("{e}; retry later")),
                kfsec_api::body::PoolError::Failed => KfpError::Internal(e.to_string()),
            })?
    }

    pub(crate) fn now_ms(&self) -> i64 {
        i64::try_from(self.clock.now().as_millis()).unwrap_or(i64::MAX)
    }

    pub(crate) fn new_id(&self) -> String {
        storage::new_id(self.clock.now().as_millis(), self.rng.as_ref())
    }
}
