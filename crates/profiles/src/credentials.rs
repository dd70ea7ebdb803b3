//! Workspace credentials: the seam through which the profile controller gives each profile
//! namespace credentials kfsec issues elsewhere (the S3 keys of `kfsec-s3`), as Kubernetes
//! Secrets in the namespace — Kubeflow's `mlpipeline-minio-artifact` with `accesskey` and
//! `secretkey` — and revokes them with the Profile.
//!
//! Invariants: the issuer decides what exists, the controller only mirrors it: a reconcile that
//! runs again writes nothing and issues nothing new; a Secret someone changed or deleted while its
//! credential lives is written back; secret values stay in [`Zeroizing`] memory until they are
//! encoded into the object, and never appear in `Debug` output or logs.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

/// The Secret Kubeflow Pipelines reads a namespace's object-store credentials from.
pub const ARTIFACT_SECRET: &str = "mlpipeline-minio-artifact";

/// One Secret a namespace must hold: its name and its data (values as plain text; the
/// controller base64-encodes them as Kubernetes stores `data`).
pub struct CredentialSecret {
    /// The Secret's name.
    pub name: String,
    /// Keys and their values.
    pub data: BTreeMap<String, Zeroizing<String>>,
}

impl std::fmt::Debug for CredentialSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSecret")
            .field("name", &self.name)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A credential operation that failed (the issuer's store is unavailable, …); the text is for
/// the log only.
#[derive(Debug, thiserror::Error)]
#[error("workspace credentials: {0}")]
pub struct CredentialError(pub String);

/// Issues and revokes the credentials of profile namespaces.
#[async_trait::async_trait]
pub trait WorkspaceCredentials: Send + Sync + 'static {
    /// The Secrets `namespace` must hold, issuing its credentials if it has none yet
    /// (idempotent: the same answer until a rotation or a revocation).
    async fn secrets(&self, namespace: &str) -> Result<Vec<CredentialSecret>, CredentialError>;
    /// Revokes everything issued for `namespace`.
    async fn revoke(&self, namespace: &str) -> Result<(), CredentialError>;
    /// The namespaces holding credentials (to revoke those of Profiles deleted while no
    /// controller watched).
    async fn holders(&self) -> Result<Vec<String>, CredentialError>;
}
