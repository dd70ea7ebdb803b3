//! The S3 keys of profile namespaces, wired: `kfsec_s3::keystore::KeyStore` is the profile
//! controller's `WorkspaceCredentials` (Kubeflow's Secret `mlpipeline-minio-artifact`, keys
//! `accesskey` and `secretkey`, in each profile namespace; issued only when `s3:` is configured),
//! and the admin operations `kfsec s3 rotate` / `kfsec s3 keys` run here.
//!
//! Invariants: a rotation writes the new key into the namespace's Secret through the same
//! controller code that wrote the first one; what is shown of a key is its id and salted
//! fingerprint — the secret leaves only into the Secret, or to the CLI over the owner-only admin
//! socket when asked for explicitly; key issue, rotation and revocation are logged (target
//! `audit`) with ids and fingerprints only.

use std::sync::Arc;
use std::time::Duration;

use kfsec_profiles::credentials::{ARTIFACT_SECRET, CredentialError, CredentialSecret, WorkspaceCredentials};
use kfsec_s3::keystore::{IssuedKey, KeyStore};
use kfsec_store::Store;
use kfsec_types::{Clock, Rng};
use zeroize::Zeroizing;

/// The key store as the profile controller's credentials.
pub struct S3Credentials(pub Arc<KeyStore>);

fn failed(e: kfsec_s3::keystore::KeyStoreError) -> CredentialError {
    CredentialError(e.to_string())
}

/// Kubeflow's artifact Secret for `key`.
pub fn artifact_secret(key: &IssuedKey) -> CredentialSecret {
    CredentialSecret {
        name: ARTIFACT_SECRET.to_owned(),
        data: [
            ("accesskey".to_owned(), Zeroizing::new(key.id.clone())),
            ("secretkey".to_owned(), key.secret.clone()),
        ]
        .into_iter()
        .collect(),
    }
}

#[async_trait::async_trait]
impl WorkspaceCredentials for S3Credentials {
    async fn secrets(&self, namespace: &str) -> Result<Vec<CredentialSecret>, CredentialError> {
        let (key, issued) = self.0.current_or_issue(namespace).await.map_err(failed)?;
        if issued {
            tracing::info!(target: "audit", namespace = %namespace, access_key_id = %key.id, fingerprint = %key.fingerprint, "S3 key issued for a profile namespace");
        }
        Ok(vec![artifact_secret(&key)])
    }

    async fn revoke(&self, namespace: &str) -> Result<(), CredentialError> {
        let n = self.0.revoke(namespace).await.map_err(failed)?;
        if n > 0 {
            tracing::info!(target: "audit", namespace = %namespace, keys = n, "S3 keys of a deleted profile revoked");
        }
        Ok(())
    }

    async fn holders(&self) -> Result<Vec<String>, CredentialError> {
        self.0.namespaces().await.map_err(failed)
    }
}

/// Why a rotation failed.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The key store refused or failed.
    #[error(transparent)]
    Keys(#[from] kfsec_s3::keystore::KeyStoreError),
    /// The namespace's Secret could not be written (the new key is issued all the same; the
    /// controller writes it at the Profile's next reconcile).
    #[error("the new key is issued, but the namespace's Secret was not updated: {0}")]
    Secret(String),
}

/// Issues a new key for `namespace` (the current ones stay valid for `overlap`) and writes it
/// into the namespace's `mlpipeline-minio-artifact` Secret.
pub async fn rotate(
    store: Arc<dyn Store>,
    namespace: &str,
    overlap: Duration,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
) -> Result<IssuedKey, RotateError> {
    let keys = Arc::new(KeyStore::new(store.clone(), clock.clone(), rng.clone()));
    let key = keys.rotate(namespace, overlap).await?;
    tracing::info!(target: "audit", namespace = %namespace, access_key_id = %key.id, fingerprint = %key.fingerprint, overlap_secs = overlap.as_secs(), "S3 key rotated");
    let api = kfsec_api::ApiServer::new(store, crate::rbac::RbacCache::new(), clock, rng);
    let controller = kfsec_profiles::ProfileController::with_credentials(
        api,
        kfsec_profiles::ProfileSettings::default(),
        Arc::new(S3Credentials(keys)),
    );
    controller
        .sync_credentials(namespace)
        .await
        .map_err(|e| RotateError::Secret(e.to_string()))?;
    Ok(key)
}
