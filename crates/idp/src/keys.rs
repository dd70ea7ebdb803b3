//! Signing-key lifecycle: the current key signs, the next key is already published, retired keys
//! stay published until every token they signed has expired. Kept in the store so restarts and
//! other replicas agree.
//!
//! Invariants: a key is in `/keys` for at least one rotation period before it signs anything;
//! a retired key leaves `/keys` only after `now > retired_at + id token lifetime`; rotation is a
//! compare-and-swap on the store record, so two replicas never both rotate.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kfsec_store::{Store, StoreError};
use kfsec_types::{Clock, Rng, UnixTime, random_array};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::IdpError;
use crate::jwt::{SigningKey, VerifyingKey};

pub(crate) const KEYS_KEY: &str = "/kfsec/idp/keys";

#[derive(Serialize, Deserialize)]
struct StoredPrivate {
    kid: String,
    pkcs8: String,
}

#[derive(Serialize, Deserialize, Clone)]
struct Retired {
    key: VerifyingKey,
    /// Unix seconds after which no token signed by this key is valid.
    expires_at: u64,
}

#[derive(Serialize, Deserialize)]
struct KeysRecord {
    signing: StoredPrivate,
    next: StoredPrivate,
    #[serde(default)]
    retired: Vec<Retired>,
    /// Unix seconds at which `next` becomes the signing key.
    next_rotation: u64,
}

/// The loaded key set.
pub struct KeySet {
    /// Signs new tokens.
    pub signing: SigningKey,
    signing_public: VerifyingKey,
    /// Published, not yet signing.
    pub next: VerifyingKey,
    /// Published, no longer signing.
    pub retired: Vec<VerifyingKey>,
    /// When the next rotation is due.
    pub next_rotation: UnixTime,
    revision: u64,
}

impl KeySet {
    /// Every key that may have signed a still-valid token, signing key first.
    pub fn verifying(&self) -> impl Iterator<Item = &VerifyingKey> {
        std::iter::once(&self.signing_public)
            .chain(std::iter::once(&self.next))
            .chain(self.retired.iter())
    }
}

/// Owns the signing keys and rotates them on schedule.
pub struct KeyManager {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    rotation: Duration,
    token_lifetime: Duration,
    current: RwLock<Arc<KeySet>>,
    auditor: std::sync::OnceLock<kfsec_audit::Auditor>,
}

fn new_kid(rng: &dyn Rng) -> String {
    kfsec_types::hex::encode(&random_array::<16>(rng))
}

fn stored(k: &SigningKey) -> Result<StoredPrivate, IdpError> {
    Ok(StoredPrivate {
        kid: k.kid().to_owned(),
        pkcs8: STANDARD.encode(k.to_pkcs8()?),
    })
}

fn load_private(s: &StoredPrivate) -> Result<SigningKey, IdpError> {
    let der = STANDARD
        .decode(&s.pkcs8)
        .map_err(|_| IdpError::Internal("corrupt signing key".into()))?;
    Ok(SigningKey::from_pkcs8(s.kid.clone(), &der)?)
}

fn load(rec: &KeysRecord, revision: u64, now: UnixTime) -> Result<KeySet, IdpError> {
    let signing = load_private(&rec.signing)?;
    let next = load_private(&rec.next)?.public();
    let retired = rec
        .retired
        .iter()
        .filter(|r| r.expires_at > now.as_secs())
        .map(|r| r.key.clone())
        .collect();
    let signing_public = signing.public();
    Ok(KeySet {
        signing_public,
        signing,
        next,
        retired,
        next_rotation: UnixTime::from_secs(rec.next_rotation),
        revision,
    })
}

impl KeyManager {
    /// Loads the key set from the store, creating it on first start.
    pub async fn open(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        rotation: Duration,
        token_lifetime: Duration,
    ) -> Result<Arc<Self>, IdpError> {
        let loaded = match store.get(KEYS_KEY).await? {
            Some(kv) => {
                let rec: KeysRecord = serde_json::from_slice(&kv.value)?;
                load(&rec, kv.mod_revision, clock.now())?
            }
            None => {
                let now = clock.now();
                let signing = SigningKey::generate(new_kid(rng.as_ref()))?;
                let next = SigningKey::generate(new_kid(rng.as_ref()))?;
                let rec = KeysRecord {
                    signing: stored(&signing)?,
                    next: stored(&next)?,
                    retired: vec![],
                    next_rotation: now.add(rotation).as_secs(),
                };
                match store.create(KEYS_KEY, serde_json::to_vec(&rec)?, None).await {
                    Ok(rev) => load(&rec, rev, now)?,
                    // Another replica created it first: use theirs.
                    Err(StoreError::AlreadyExists(_)) => {
                        let kv = store
                            .get(KEYS_KEY)
                            .await?
                            .ok_or_else(|| IdpError::Internal("keys vanished".into()))?;
                        load(&serde_json::from_slice(&kv.value)?, kv.mod_revision, now)?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        Ok(Arc::new(Self {
            store,
            clock,
            rng,
            rotation,
            token_lifetime,
            current: RwLock::new(Arc::new(loaded)),
            auditor: std::sync::OnceLock::new(),
        }))
    }

    /// Records each rotation this process makes as an audit event (`rotate` on `signingkeys`,
    /// the new key's id as its name; once, a second call is ignored).
    pub fn audit(&self, auditor: kfsec_audit::Auditor) {
        let _ = self.auditor.set(auditor);
    }

    /// The current key set.
    pub fn keys(&self) -> Arc<KeySet> {
        self.current.read().clone()
    }

    /// Rotates if due; re-reads the store when another replica rotated. Returns whether the
    /// signing key changed.
    pub async fn tick(&self) -> Result<bool, IdpError> {
        self.maintain(true).await
    }

    /// Re-reads the store when another replica (the leader) rotated; never rotates. Returns
    /// whether the signing key changed.
    pub async fn reload(&self) -> Result<bool, IdpError> {
        self.maintain(false).await
    }

    async fn maintain(&self, rotate: bool) -> Result<bool, IdpError> {
        let now = self.clock.now();
        let Some(kv) = self.store.get(KEYS_KEY).await? else {
            return Err(IdpError::Internal("signing keys missing from store".into()));
        };
        let mut rec: KeysRecord = serde_json::from_slice(&kv.value)?;
        let before = self.keys().signing.kid().to_owned();
        if rotate && now.as_secs() >= rec.next_rotation {
            let old = load_private(&rec.signing)?.public();
            rec.retired.push(Retired {
                key: old,
                expires_at: now.add(self.token_lifetime).as_secs(),
            });
            rec.retired.retain(|r| r.expires_at > now.as_secs());
            rec.signing = std::mem::replace(
                &mut rec.next,
                stored(&SigningKey::generate(new_kid(self.rng.as_ref()))?)?,
            );
            rec.next_rotation = now.add(self.rotation).as_secs();
            match self
                .store
                .update(KEYS_KEY, serde_json::to_vec(&rec)?, Some(kv.mod_revision), None)
                .await
            {
                Ok(rev) => {
                    tracing::info!(kid = %rec.signing.kid, "rotated the ID token signing key");
                    if let Some(auditor) = self.auditor.get() {
                        kfsec_audit::request::background(
                            auditor,
                            self.clock.as_ref(),
                            self.rng.as_ref(),
                            kfsec_audit::request::identity::SIGNINGKEYS,
                            kfsec_audit::request::identity::ROTATE,
                            Some(&rec.signing.kid),
                            &[],
                        );
                    }
                    *self.current.write() = Arc::new(load(&rec, rev, now)?);
                }
                Err(StoreError::Conflict { .. }) => return Box::pin(self.maintain(rotate)).await,
                Err(e) => return Err(e.into()),
            }
        } else {
            let live_retired = rec.retired.iter().filter(|r| r.expires_at > now.as_secs()).count();
            let cur = self.keys();
            if kv.mod_revision != cur.revision || cur.retired.len() != live_retired {
                *self.current.write() = Arc::new(load(&rec, kv.mod_revision, now)?);
            }
        }
        Ok(self.keys().signing.kid() != before)
    }

    /// How long the current signing key has been signing: from the rotation that made it the
    /// signing key (the next rotation is scheduled one rotation period after it), by this
    /// process's clock.
    pub fn signing_key_age(&self) -> Duration {
        let began = self
            .keys()
            .next_rotation
            .as_secs()
            .saturating_sub(self.rotation.as_secs());
        Duration::from_secs(self.clock.now().as_secs().saturating_sub(began))
    }

    /// Seconds until the next rotation (for `Cache-Control` on `/keys`).
    pub fn seconds_to_rotation(&self) -> u64 {
        self.keys()
            .next_rotation
            .as_secs()
            .saturating_sub(self.clock.now().as_secs())
    }
}

#[cfg(test)]
mod leader_tests {
    use kfsec_store::MemoryStore;
    use kfsec_types::{ManualClock, SequenceRng};

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    /// Two replicas over one store: only the leader rotates, the follower re-reads, and two
    /// leaders for a moment still rotate once.
    #[tokio::test]
    async fn only_the_leader_rotates_and_a_double_rotation_is_one() {
        let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
        let store = MemoryStore::new(clock.clone());
        let open = || {
            KeyManager::open(
                store.clone(),
                clock.clone(),
                Arc::new(SequenceRng::default()),
                HOUR,
                HOUR / 2,
            )
        };
        let (leader, follower) = (open().await.unwrap(), open().await.unwrap());
        let first = leader.keys().signing.kid().to_owned();
        assert_eq!(follower.keys().signing.kid(), first);
        clock.advance(HOUR + Duration::from_secs(1));
        assert!(!follower.reload().await.unwrap(), "a follower never rotates");
        assert_eq!(follower.keys().signing.kid(), first);
        assert!(leader.tick().await.unwrap());
        let second = leader.keys().signing.kid().to_owned();
        assert!(
            follower.reload().await.unwrap(),
            "the follower picks up the leader's rotation"
        );
        assert_eq!(follower.keys().signing.kid(), second);
        // Both believe they lead when the next rotation is due: one rotation, not two.
        clock.advance(HOUR + Duration::from_secs(1));
        let (a, b) = tokio::join!(leader.tick(), follower.tick());
        assert!(a.unwrap() && b.unwrap());
        let third = leader.keys().signing.kid().to_owned();
        assert_eq!(follower.keys().signing.kid(), third);
        let rec: KeysRecord = serde_json::from_slice(&store.get(KEYS_KEY).await.unwrap().unwrap().value).unwrap();
        assert_eq!(rec.signing.kid, third);
        // One rotation: the second key retired once (the first has expired), the next one new.
        let retired: Vec<_> = rec.retired.iter().map(|r| r.key.kid.clone()).collect();
        assert_eq!(retired, vec![second]);
        assert_ne!(rec.next.kid, third);
    }
}
