//! `keys`: the seam between the gateway and wherever workspace keys live — an access key id
//! names one namespace's key. Invariants: the secret is held in `Zeroizing` memory, never in
//! `Debug` output or logs; a key past `not_after` is as absent as an unknown one.

use kfsec_types::UnixTime;
use zeroize::Zeroizing;

/// One workspace's S3 key, as the gateway verifies signatures with it.
#[derive(Clone)]
pub struct AccessKey {
    /// The access key id clients send in `Credential=`.
    pub id: String,
    /// The profile namespace the key belongs to; the policy scopes it to that namespace.
    pub namespace: String,
    /// The secret access key (the HMAC key's seed).
    pub secret: Zeroizing<String>,
    /// End of the key's life (a rotated key's overlap end); `None` while it is current.
    pub not_after: Option<UnixTime>,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("namespace", &self.namespace)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Looks keys up by access key id.
#[async_trait::async_trait]
pub trait KeyLookup: Send + Sync + 'static {
    /// The key with this id if it exists and is live at `now`; `Ok(None)` when unknown, revoked
    /// or expired; `Err` only when the lookup itself failed (the gateway answers 503).
    async fn lookup(&self, id: &str, now: UnixTime) -> Result<Option<AccessKey>, KeyLookupError>;
}

/// A key lookup that could not be made (the store is unavailable or unreadable).
#[derive(Debug, thiserror::Error)]
#[error("key lookup failed: {0}")]
pub struct KeyLookupError(#[source] pub Box<dyn std::error::Error + Send + Sync>);
