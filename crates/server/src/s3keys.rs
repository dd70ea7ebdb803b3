//! The S3 keys of profile namespaces, wired: `kfsec_s3::keystore::KeyStore` is the profile
//! controller's `WorkspaceCredentials` (Kubeflow's Secret `mlpipeline-minio-artifact`, keys
//! `accesskey` and `secretkey`, in each profile namespace; issued only when `s3:` is configured),
//! and the admin operations `kfsec s3 rotate` / `kfsec s3 keys` run here.
//!
//! Invariants: a rotation writes the new key into the namespace's Secret through the same
//! controller code that wrote the first one; what is shown of a key is its id and salted
//! fingerprint — the secret leaves only into the Secret, or to the CLI over the owner-only admin
//! socket when asked for explicitly; key issue, rotation and revocation are audit Events
//! (`identity.kfsec.io` resource `s3keys`, verbs `issue`/`rotate`/`revoke`, named by the access
//! key id, with the namespace and fingerprint as annotations) and log lines, with ids and
//! fingerprints only.

use std::sync::Arc;
use std::time::Duration;

use kfsec_audit::request::identity::{ISSUE, REVOKE, ROTATE};
use kfsec_profiles::credentials::{ARTIFACT_SECRET, CredentialError, CredentialSecret, WorkspaceCredentials};
use kfsec_s3::keystore::{IssuedKey, KeyStore};
use kfsec_store::Store;
use kfsec_types::{Clock, Rng};
use zeroize::Zeroizing;

/// The audit resource of S3 keys (`identity.kfsec.io`).
pub const S3KEYS: &str = "s3keys";
/// The annotation naming a key's namespace.
pub const NAMESPACE_ANNOTATION: &str = "kfsec.io/namespace";
/// The annotation carrying a key's salted fingerprint.
pub const FINGERPRINT_ANNOTATION: &str = "kfsec.io/fingerprint";

/// Where key events are recorded: the audit log (when on) and the log.
#[derive(Clone)]
pub struct KeyEvents {
    auditor: kfsec_audit::Auditor,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
}

impl KeyEvents {
    /// Events through `auditor`, timed by `clock`, ids from `rng`.
    pub fn new(auditor: kfsec_audit::Auditor, clock: Arc<dyn Clock>, rng: Arc<dyn Rng>) -> Self {
        Self { auditor, clock, rng }
    }

    /// One key event: `verb` (`issue`, `rotate`, `revoke`) of key `id` (or of every key of the
    /// namespace when `None`).
    pub fn record(&self, verb: &str, namespace: &str, id: Option<&str>, fingerprint: Option<&str>) {
        tracing::info!(target: "audit", %verb, namespace = %namespace, access_key_id = id.unwrap_or("-"), fingerprint = fingerprint.unwrap_or("-"), "S3 key event");
        let mut annotations = vec![(NAMESPACE_ANNOTATION, namespace)];
        if let Some(fp) = fingerprint {
            annotations.push((FINGERPRINT_ANNOTATION, fp));
        }
        kfsec_audit::request::background(
            &self.auditor,
            self.clock.as_ref(),
            self.rng.as_ref(),
            S3KEYS,
            verb,
            id,
            &annotations,
        );
    }
}

/// The key store as the profile controller's credentials.
pub struct S3Credentials {
    keys: Arc<KeyStore>,
    events: KeyEvents,
}

impl S3Credentials {
    /// The controller's credentials from `keys`, recording events to `events`.
    pub fn new(keys: Arc<KeyStore>, events: KeyEvents) -> Self {
        Self { keys, events }
    }
}

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
        let (key, issued) = self.keys.current_or_issue(namespace).await.map_err(failed)?;
        if issued {
            self.events
                .record(ISSUE, namespace, Some(&key.id), Some(&key.fingerprint));
        }
        Ok(vec![artifact_secret(&key)])
    }

    async fn revoke(&self, namespace: &str) -> Result<(), CredentialError> {
        let n = self.keys.revoke(namespace).await.map_err(failed)?;
        if n > 0 {
            self.events.record(REVOKE, namespace, None, None);
        }
        Ok(())
    }

    async fn holders(&self) -> Result<Vec<String>, CredentialError> {
        self.keys.namespaces().await.map_err(failed)
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
    events: KeyEvents,
) -> Result<IssuedKey, RotateError> {
    let (clock, rng) = (events.clock.clone(), events.rng.clone());
    let keys = Arc::new(KeyStore::new(store.clone(), clock.clone(), rng.clone()));
    let key = keys.rotate(namespace, overlap).await?;
    events.record(ROTATE, namespace, Some(&key.id), Some(&key.fingerprint));
    let api = kfsec_api::ApiServer::new(store, crate::rbac::RbacCache::new(), clock, rng);
    let controller = kfsec_profiles::ProfileController::with_credentials(
        api,
        kfsec_profiles::ProfileSettings::default(),
        Arc::new(S3Credentials::new(keys, events)),
    );
    controller
        .sync_credentials(namespace)
        .await
        .map_err(|e| RotateError::Secret(e.to_string()))?;
    Ok(key)
}
