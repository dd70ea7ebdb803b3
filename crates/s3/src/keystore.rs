//! `keystore`: the store-backed [`KeyLookup`] — per-namespace S3 keys issued from the injected
//! CSPRNG, rotated with an overlap, revoked with the workspace.
//!
//! Layout: `/kfsec/s3/ns/<namespace>` holds the namespace's keys (ids, secrets, salted
//! fingerprints, creation and end times) as one record, sealed at rest (it is under
//! [`SECRET_PREFIXES`], which the server's `secretsEncryption` seal covers); `/kfsec/s3/ids/<id>`
//! names the namespace of an access key id (no secret: an index only). A key is live only while
//! its namespace's record lists it and `now < not_after`: an index entry alone grants nothing, so
//! a crash between the two writes leaves no live key behind, and a revocation is one delete.
//!
//! Invariants: secrets are 40 base62 characters (≈238 bits) and access key ids `KF` + 18
//! characters `A-Z0-9`, both drawn from the injected [`Rng`] by rejection sampling (no modulo
//! bias); a secret is never logged, never in `Debug` output and never shown — only its salted
//! SHA-256 fingerprint is; every change of a namespace's record is a create-if-absent or a
//! compare-and-swap, so two controllers (a leader handover) issue one key, not two; an id or a
//! namespace that could not be a key's is refused before it reaches a store key; the lookup
//! cache holds an answer (found or not) at most [`CACHE_TTL`], so a revocation or the end of a
//! rotation's overlap on any replica takes effect within that time, and a key whose `not_after`
//! has passed is refused at once (liveness is checked at every lookup, not at caching).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kfsec_store::{Store, StoreError};
use kfsec_types::{Clock, Rng, UnixTime};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::{AccessKey, KeyLookup, KeyLookupError};

/// Where each namespace's keys live (sealed).
pub const NAMESPACE_PREFIX: &str = "/kfsec/s3/ns/";
/// Where access key ids name their namespace (not secret).
pub const ID_PREFIX: &str = "/kfsec/s3/ids/";
/// The store prefixes holding secret material, for the server's seal.
pub const SECRET_PREFIXES: &[&str] = &[NAMESPACE_PREFIX];
/// How long a lookup's answer is reused before the store is asked again.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// Length of an access key id (as AWS's).
pub const ID_LEN: usize = 20;
/// The fixed start of every access key id kfsec issues.
pub const ID_PREFIX_CHARS: &str = "KF";
/// Length of a secret access key.
pub const SECRET_LEN: usize = 40;
/// The most lookups cached at once (the cache is emptied when it is full).
const CACHE_MAX: usize = 10_000;
/// Compare-and-swap attempts against writers that keep changing a namespace's record.
const CAS_ATTEMPTS: usize = 8;
const SALT_LEN: usize = 16;

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const BASE62: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error("the S3 key record of namespace {namespace} does not decode: {source}")]
    Decode {
        /// The namespace.
        namespace: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Not a namespace name (a DNS-1123 label).
    #[error("{0:?} is not a namespace name")]
    InvalidNamespace(String),
    /// The namespace has no key (no profile, or revoked).
    #[error("namespace {0} has no S3 key (is it a profile's namespace?)")]
    NoKey(String),
    /// Other writers kept changing the record.
    #[error("the S3 keys of namespace {0} kept changing; try again")]
    Busy(String),
}

/// One stored key (inside the sealed namespace record).
#[derive(Serialize, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct StoredKey {
    id: String,
    #[serde(with = "zeroizing")]
    secret: Zeroizing<String>,
    fingerprint: String,
    created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_after: Option<u64>,
}

/// (De)serializes a secret string held in [`Zeroizing`] memory.
mod zeroizing {
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub(super) fn serialize<S: Serializer>(v: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
        String::deserialize(d).map(Zeroizing::new)
    }
}

/// A namespace's keys, newest last.
#[derive(Serialize, Deserialize, Default, Clone)]
struct NamespaceRecord {
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
struct IdRecord {
    namespace: String,
}

/// What a listing shows of a key: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeySummary {
    /// Access key id.
    pub id: String,
    /// The salted SHA-256 fingerprint of the secret.
    pub fingerprint: String,
    /// When it was issued.
    pub created: u64,
    /// End of its life (a rotated key's overlap end), Unix seconds; `None` while current.
    pub not_after: Option<u64>,
}

/// A key just issued or current: the one place the secret leaves the store (into the
/// namespace's Secret).
#[derive(Clone)]
pub struct IssuedKey {
    /// Access key id.
    pub id: String,
    /// Namespace.
    pub namespace: String,
    /// The secret access key.
    pub secret: Zeroizing<String>,
    /// Its salted SHA-256 fingerprint (what may be shown).
    pub fingerprint: String,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey")
            .field("id", &self.id)
            .field("namespace", &self.namespace)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl StoredKey {
    fn issued(&self, namespace: &str) -> IssuedKey {
        IssuedKey {
            id: self.id.clone(),
            namespace: namespace.to_owned(),
            secret: self.secret.clone(),
            fingerprint: self.fingerprint.clone(),
        }
    }

    fn live(&self, now: UnixTime) -> bool {
        self.not_after.is_none_or(|end| now.as_secs() < end)
    }

    fn summary(&self) -> KeySummary {
        KeySummary {
            id: self.id.clone(),
            fingerprint: self.fingerprint.clone(),
            created: self.created,
            not_after: self.not_after,
        }
    }
}

/// `len` characters of `alphabet`, uniformly, from `rng` (bytes at or above the largest multiple
/// of the alphabet's size are drawn again).
fn random_chars(rng: &dyn Rng, alphabet: &[u8], len: usize) -> Zeroizing<String> {
    let n = alphabet.len();
    let limit = 256 - 256 % n;
    let mut out = Zeroizing::new(String::with_capacity(len));
    let mut buf = Zeroizing::new([0u8; 64]);
    while out.len() < len {
        rng.fill(buf.as_mut());
        for &b in buf.iter() {
            if usize::from(b) < limit && out.len() < len {
                out.push(char::from(alphabet[usize::from(b) % n]));
            }
        }
    }
    out
}

/// A fresh access key id: `KF` and 18 characters `A-Z0-9`.
pub fn new_access_key_id(rng: &dyn Rng) -> String {
    let tail = random_chars(rng, UPPER_DIGITS, ID_LEN - ID_PREFIX_CHARS.len());
    format!("{ID_PREFIX_CHARS}{}", tail.as_str())
}

/// A fresh secret access key: 40 base62 characters.
pub fn new_secret(rng: &dyn Rng) -> Zeroizing<String> {
    random_chars(rng, BASE62, SECRET_LEN)
}

/// The salted fingerprint of `secret`: `sha256:` and 32 hex digits of SHA-256(salt ‖ secret).
pub fn fingerprint(salt: &[u8], secret: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(salt);
    ctx.update(secret.as_bytes());
    let digest = ctx.finish();
    format!("sha256:{}", kfsec_types::hex::encode(&digest.as_ref()[..16]))
}

/// Whether `id` could be an access key id kfsec issued (checked before it names a store key).
pub fn well_formed_id(id: &str) -> bool {
    id.len() == ID_LEN
        && id.starts_with(ID_PREFIX_CHARS)
        && id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

fn check_namespace(ns: &str) -> Result<(), KeyStoreError> {
    if kfsec_types::validation::is_dns1123_label(ns) {
        Ok(())
    } else {
        Err(KeyStoreError::InvalidNamespace(ns.chars().take(80).collect()))
    }
}

/// One cached lookup: when it was read, and what (the namespace's live-or-not key).
struct Cached {
    at: UnixTime,
    key: Option<AccessKey>,
    not_after: Option<u64>,
}

/// The store-backed key store (see the module documentation).
pub struct KeyStore {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    cache: Mutex<HashMap<String, Cached>>,
    ttl: Duration,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// A key store over `store` (the server's sealed store), with the clock and randomness.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, rng: Arc<dyn Rng>) -> Self {
        Self {
            store,
            clock,
            rng,
            cache: Mutex::new(HashMap::new()),
            ttl: CACHE_TTL,
        }
    }

    /// The same with another cache lifetime (zero: every lookup reads the store).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    fn ns_key(ns: &str) -> String {
        format!("{NAMESPACE_PREFIX}{ns}")
    }

    fn id_key(id: &str) -> String {
        format!("{ID_PREFIX}{id}")
    }

    async fn read(&self, ns: &str) -> Result<Option<(NamespaceRecord, u64)>, KeyStoreError> {
        let Some(kv) = self.store.get(&Self::ns_key(ns)).await? else {
            return Ok(None);
        };
        let value = Zeroizing::new(kv.value);
        let record = serde_json::from_slice(&value).map_err(|source| KeyStoreError::Decode {
            namespace: ns.to_owned(),
            source,
        })?;
        Ok(Some((record, kv.mod_revision)))
    }

    fn encode(record: &NamespaceRecord) -> Result<Vec<u8>, KeyStoreError> {
        // A record of strings and numbers always encodes.
        serde_json::to_vec(record).map_err(|source| KeyStoreError::Decode {
            namespace: String::new(),
            source,
        })
    }

    /// A new key for `ns`, its id already indexed.
    async fn mint(&self, ns: &str) -> Result<StoredKey, KeyStoreError> {
        let secret = new_secret(self.rng.as_ref());
        let mut salt = [0u8; SALT_LEN];
        self.rng.fill(&mut salt);
        let fp = fingerprint(&salt, &secret);
        let index = serde_json::to_vec(&IdRecord {
            namespace: ns.to_owned(),
        })
        .map_err(|source| KeyStoreError::Decode {
            namespace: ns.to_owned(),
            source,
        })?;
        // A fresh id; a collision (≈2^-93) draws again.
        loop {
            let id = new_access_key_id(self.rng.as_ref());
            match self.store.create(&Self::id_key(&id), index.clone(), None).await {
                Ok(_) => {
                    return Ok(StoredKey {
                        id,
                        secret,
                        fingerprint: fp,
                        created: self.clock.now().as_secs(),
                        not_after: None,
                    });
                }
                Err(StoreError::AlreadyExists(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Drops the index entries of keys no longer in a record (best effort: an orphan entry
    /// grants nothing).
    async fn unindex(&self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            self.evict(&id);
            match self.store.delete(&Self::id_key(&id), None).await {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => tracing::warn!(access_key_id = %id, error = %e, "removing an S3 key's index entry failed"),
            }
        }
    }

    fn evict(&self, id: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(id);
        }
    }

    /// The namespace's current key, issuing one if it has none (idempotent: a reconcile that runs
    /// again gets the same key). The flag says whether this call issued it.
    pub async fn current_or_issue(&self, ns: &str) -> Result<(IssuedKey, bool), KeyStoreError> {
        check_namespace(ns)?;
        for _ in 0..CAS_ATTEMPTS {
            if let Some((record, rev)) = self.read(ns).await? {
                if let Some(current) = record.keys.iter().rev().find(|k| k.not_after.is_none()) {
                    return Ok((current.issued(ns), false));
                }
                // Every key is rotated out (or the record is empty): a new current key.
                if let Some(key) = self.add_current(ns, &record, rev, None).await? {
                    tracing::info!(namespace = %ns, access_key_id = %key.id, fingerprint = %key.fingerprint, "S3 key issued");
                    return Ok((key.issued(ns), true));
                }
                continue;
            }
            let key = self.mint(ns).await?;
            let record = NamespaceRecord {
                keys: vec![key.clone()],
            };
            match self.store.create(&Self::ns_key(ns), Self::encode(&record)?, None).await {
                Ok(_) => {
                    tracing::info!(namespace = %ns, access_key_id = %key.id, fingerprint = %key.fingerprint, "S3 key issued");
                    return Ok((key.issued(ns), true));
                }
                // Issued meanwhile by another controller: theirs is the key.
                Err(StoreError::AlreadyExists(_)) => self.unindex([key.id]).await,
                Err(e) => {
                    self.unindex([key.id]).await;
                    return Err(e.into());
                }
            }
        }
        Err(KeyStoreError::Busy(ns.to_owned()))
    }

    /// Writes `record` (read at `rev`) back with a new current key — the keys current until now
    /// ending at `end` when given, the dead ones dropped: the new key, or `None` when the record
    /// changed or went meanwhile (read it again).
    async fn add_current(
        &self,
        ns: &str,
        record: &NamespaceRecord,
        rev: u64,
        end: Option<u64>,
    ) -> Result<Option<StoredKey>, KeyStoreError> {
        let now = self.clock.now();
        let key = self.mint(ns).await?;
        let mut next = record.clone();
        if let Some(end) = end {
            for k in &mut next.keys {
                k.not_after = Some(k.not_after.map_or(end, |e| e.min(end)));
            }
        }
        next.keys.retain(|k| k.live(now));
        next.keys.push(key.clone());
        match self
            .store
            .update(&Self::ns_key(ns), Self::encode(&next)?, Some(rev), None)
            .await
        {
            Ok(_) => {
                self.prune_index(record, &next).await;
                Ok(Some(key))
            }
            Err(e) => {
                self.unindex([key.id]).await;
                match e {
                    StoreError::Conflict { .. } | StoreError::NotFound(_) => Ok(None),
                    e => Err(e.into()),
                }
            }
        }
    }

    async fn prune_index(&self, before: &NamespaceRecord, after: &NamespaceRecord) {
        let gone = before
            .keys
            .iter()
            .filter(|k| !after.keys.iter().any(|a| a.id == k.id))
            .map(|k| k.id.clone());
        self.unindex(gone.collect::<Vec<_>>()).await;
        for k in &after.keys {
            self.evict(&k.id);
        }
    }

    /// Issues a new current key for `ns`; the keys current until now stay valid for `overlap`
    /// (zero: they end now). Keys whose end has passed are dropped.
    pub async fn rotate(&self, ns: &str, overlap: Duration) -> Result<IssuedKey, KeyStoreError> {
        check_namespace(ns)?;
        for _ in 0..CAS_ATTEMPTS {
            let Some((record, rev)) = self.read(ns).await? else {
                return Err(KeyStoreError::NoKey(ns.to_owned()));
            };
            let end = self.clock.now().add(overlap).as_secs();
            if let Some(key) = self.add_current(ns, &record, rev, Some(end)).await? {
                tracing::info!(namespace = %ns, access_key_id = %key.id, fingerprint = %key.fingerprint, overlap_secs = overlap.as_secs(), "S3 key rotated");
                return Ok(key.issued(ns));
            }
        }
        Err(KeyStoreError::Busy(ns.to_owned()))
    }

    /// Revokes every key of `ns` (one delete: from then on no lookup on any replica reads
    /// them, past caches within [`CACHE_TTL`]). Returns how many keys there were.
    pub async fn revoke(&self, ns: &str) -> Result<usize, KeyStoreError> {
        check_namespace(ns)?;
        let record = match self.store.delete(&Self::ns_key(ns), None).await {
            Ok(kv) => {
                let value = Zeroizing::new(kv.value);
                // What it held only matters for tidying the index.
                serde_json::from_slice::<NamespaceRecord>(&value).unwrap_or_default()
            }
            Err(StoreError::NotFound(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let n = record.keys.len();
        self.unindex(record.keys.into_iter().map(|k| k.id).collect::<Vec<_>>())
            .await;
        tracing::info!(namespace = %ns, keys = n, "S3 keys revoked");
        Ok(n)
    }

    /// The keys of `ns` that are live now, oldest first (no secrets).
    pub async fn list(&self, ns: &str) -> Result<Vec<KeySummary>, KeyStoreError> {
        check_namespace(ns)?;
        let now = self.clock.now();
        Ok(self
            .read(ns)
            .await?
            .map(|(r, _)| r.keys.iter().filter(|k| k.live(now)).map(StoredKey::summary).collect())
            .unwrap_or_default())
    }

    /// Every namespace holding keys.
    pub async fn namespaces(&self) -> Result<Vec<String>, KeyStoreError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(NAMESPACE_PREFIX, 500, after.as_deref()).await?;
            let last = page.items.last().map(|kv| kv.key.clone());
            out.extend(
                page.items
                    .iter()
                    .filter_map(|kv| kv.key.strip_prefix(NAMESPACE_PREFIX).map(str::to_owned)),
            );
            match last {
                Some(l) if page.items.len() == 500 => after = Some(l),
                _ => return Ok(out),
            }
        }
    }

    /// Reads `id`'s key from the store (no cache): the key and its end.
    async fn fetch(&self, id: &str) -> Result<Option<(AccessKey, Option<u64>)>, KeyStoreError> {
        let Some(kv) = self.store.get(&Self::id_key(id)).await? else {
            return Ok(None);
        };
        let Ok(index) = serde_json::from_slice::<IdRecord>(&kv.value) else {
            tracing::warn!(access_key_id = %id, "an S3 key index entry does not decode; the key is refused");
            return Ok(None);
        };
        if check_namespace(&index.namespace).is_err() {
            return Ok(None);
        }
        let Some((record, _)) = self.read(&index.namespace).await? else {
            return Ok(None);
        };
        Ok(record.keys.into_iter().find(|k| k.id == id).map(|k| {
            let not_after = k.not_after;
            (
                AccessKey {
                    id: k.id,
                    namespace: index.namespace,
                    secret: k.secret,
                    not_after: not_after.map(UnixTime::from_secs),
                },
                not_after,
            )
        }))
    }
}

#[async_trait::async_trait]
impl KeyLookup for KeyStore {
    async fn lookup(&self, id: &str, now: UnixTime) -> Result<Option<AccessKey>, KeyLookupError> {
        if !well_formed_id(id) {
            return Ok(None);
        }
        let fresh = |c: &Cached| self.clock.now().since(c.at) < self.ttl;
        let hit = self
            .cache
            .lock()
            .ok()
            .and_then(|cache| cache.get(id).filter(|c| fresh(c)).map(|c| (c.key.clone(), c.not_after)));
        let (key, not_after) = match hit {
            Some(hit) => hit,
            None => {
                let found = self.fetch(id).await.map_err(|e| KeyLookupError(Box::new(e)))?;
                let (key, not_after) = match found {
                    Some((k, end)) => (Some(k), end),
                    None => (None, None),
                };
                if !self.ttl.is_zero()
                    && let Ok(mut cache) = self.cache.lock()
                {
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(
                        id.to_owned(),
                        Cached {
                            at: self.clock.now(),
                            key: key.clone(),
                            not_after,
                        },
                    );
                }
                (key, not_after)
            }
        };
        Ok(key.filter(|_| not_after.is_none_or(|end| now.as_secs() < end)))
    }
}

#[cfg(test)]
mod tests {
    use kfsec_store::MemoryStore;
    use kfsec_store::sealed::{Keyring, SealKey, SealedStore};
    use kfsec_types::{ManualClock, SequenceRng};

    use super::*;

    struct Fixture {
        raw: Arc<dyn Store>,
        clock: Arc<ManualClock>,
        keys: KeyStore,
    }

    fn fixture(ttl: Duration) -> Fixture {
        let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000));
        let raw: Arc<dyn Store> = MemoryStore::new(clock.clone());
        let rng: Arc<dyn Rng> = Arc::new(SequenceRng::default());
        let ring = Keyring::new(SealKey::from_bytes([9; 32]), vec![]);
        let sealed: Arc<dyn Store> = Arc::new(SealedStore::new(raw.clone(), SECRET_PREFIXES, ring, rng.clone()));
        let keys = KeyStore::new(sealed, clock.clone(), rng).with_cache_ttl(ttl);
        Fixture { raw, clock, keys }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn ids_and_secrets_have_the_promised_shape_and_no_bias() {
        let rng = SequenceRng::default();
        let id = new_access_key_id(&rng);
        assert!(well_formed_id(&id), "{id}");
        let secret = new_secret(&rng);
        assert_eq!(secret.len(), SECRET_LEN);
        assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()));
        // Bytes 248..=255 would bias base62 by modulo: they are drawn again.
        struct High;
        impl Rng for High {
            fn fill(&self, buf: &mut [u8]) {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = if i % 2 == 0 { 255 } else { 61 };
                }
            }
        }
        assert_eq!(new_secret(&High).as_str(), "9".repeat(SECRET_LEN));
        for bad in [
            "",
            "KF",
            "kf000000000000000000",
            "AKIA0000000000000000",
            "KF00000000000000000/",
            "KF0000000000000000000",
        ] {
            assert!(!well_formed_id(bad), "{bad}");
        }
        assert_ne!(fingerprint(b"salt-a", "s"), fingerprint(b"salt-b", "s"), "salted");
    }

    #[tokio::test]
    async fn issue_is_idempotent_and_the_lookup_finds_the_key() {
        let f = fixture(Duration::ZERO);
        let (key, new) = f.keys.current_or_issue("team-a").await.unwrap();
        assert!(new);
        let (again, new) = f.keys.current_or_issue("team-a").await.unwrap();
        assert!(!new, "a second reconcile does not issue another key");
        assert_eq!(again.id, key.id);
        assert_eq!(again.secret, key.secret);
        let now = f.clock.now();
        let found = f.keys.lookup(&key.id, now).await.unwrap().unwrap();
        assert_eq!(found.namespace, "team-a");
        assert_eq!(found.secret, key.secret);
        assert!(found.not_after.is_none());
        let (other, _) = f.keys.current_or_issue("team-b").await.unwrap();
        assert_ne!(other.id, key.id);
        assert_eq!(
            f.keys.lookup(&other.id, now).await.unwrap().unwrap().namespace,
            "team-b"
        );
        assert!(f.keys.lookup("KF000000000000000000", now).await.unwrap().is_none());
        assert!(f.keys.lookup("../../kfsec/idp/keys", now).await.unwrap().is_none());
        assert!(
            !format!("{key:?}{found:?}").contains(key.secret.as_str()),
            "no secret in Debug"
        );
        let listed = f.keys.list("team-a").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].fingerprint, key.fingerprint);
        let mut namespaces = f.keys.namespaces().await.unwrap();
        namespaces.sort();
        assert_eq!(namespaces, ["team-a", "team-b"]);
    }

    #[tokio::test]
    async fn two_controllers_issuing_at_once_agree_on_one_key() {
        let f = fixture(Duration::ZERO);
        // The same random sequence on both: their first ids collide too.
        let other = KeyStore::new(f.keys.store.clone(), f.clock.clone(), Arc::new(SequenceRng::default()));
        let (a, b) = tokio::join!(f.keys.current_or_issue("team-a"), other.current_or_issue("team-a"));
        let ((a, a_new), (b, b_new)) = (a.unwrap(), b.unwrap());
        assert_eq!(a.id, b.id);
        assert_eq!(a.secret, b.secret);
        assert!(a_new ^ b_new, "exactly one issued it");
        let index = f.raw.list(ID_PREFIX, 0, None).await.unwrap();
        assert_eq!(index.items.len(), 1, "the loser's index entry is gone");
    }

    #[tokio::test]
    async fn a_rotated_key_works_during_the_overlap_and_not_after() {
        let f = fixture(Duration::ZERO);
        let (old, _) = f.keys.current_or_issue("team-a").await.unwrap();
        let t = f.clock.now();
        let new = f.keys.rotate("team-a", Duration::from_secs(3600)).await.unwrap();
        assert_ne!(new.id, old.id);
        assert_ne!(new.secret, old.secret);
        let (current, issued) = f.keys.current_or_issue("team-a").await.unwrap();
        assert!(!issued);
        assert_eq!(current.id, new.id, "the reconcile now writes the new key");
        for now in [t, t.add(Duration::from_secs(3599))] {
            assert!(
                f.keys.lookup(&old.id, now).await.unwrap().is_some(),
                "old key in the overlap"
            );
            assert!(f.keys.lookup(&new.id, now).await.unwrap().is_some());
        }
        let after = t.add(Duration::from_secs(3601));
        assert!(
            f.keys.lookup(&old.id, after).await.unwrap().is_none(),
            "old key after the overlap"
        );
        assert!(f.keys.lookup(&new.id, after).await.unwrap().is_some());
        f.clock.advance(Duration::from_secs(3601));
        let listed = f.keys.list("team-a").await.unwrap();
        assert_eq!(
            listed.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            [new.id.as_str()]
        );
        // A rotation with no overlap ends the old key at once, and drops the long-dead one.
        let newer = f.keys.rotate("team-a", Duration::ZERO).await.unwrap();
        let now = f.clock.now();
        assert!(f.keys.lookup(&new.id, now).await.unwrap().is_none());
        assert!(f.keys.lookup(&newer.id, now).await.unwrap().is_some());
        assert!(
            f.raw.get(&format!("{ID_PREFIX}{}", old.id)).await.unwrap().is_none(),
            "index tidied"
        );
        assert!(matches!(
            f.keys.rotate("nobody", Duration::ZERO).await,
            Err(KeyStoreError::NoKey(_))
        ));
    }

    #[tokio::test]
    async fn revocation_takes_effect_within_the_cache_lifetime() {
        let f = fixture(CACHE_TTL);
        let (key, _) = f.keys.current_or_issue("team-a").await.unwrap();
        assert!(f.keys.lookup(&key.id, f.clock.now()).await.unwrap().is_some());
        // Another replica revokes (a second key store over the same store, its own cache).
        let other = KeyStore::new(f.keys.store.clone(), f.clock.clone(), Arc::new(SequenceRng::default()));
        assert_eq!(other.revoke("team-a").await.unwrap(), 1);
        assert_eq!(other.revoke("team-a").await.unwrap(), 0, "revoking twice is fine");
        f.clock.advance(CACHE_TTL);
        assert!(
            f.keys.lookup(&key.id, f.clock.now()).await.unwrap().is_none(),
            "gone once the cached answer is older than the TTL"
        );
        assert!(f.keys.list("team-a").await.unwrap().is_empty());
        // A new profile of the same name gets a new key.
        let (again, new) = f.keys.current_or_issue("team-a").await.unwrap();
        assert!(new && again.id != key.id);
    }

    #[tokio::test]
    async fn secrets_are_sealed_in_the_backend() {
        let f = fixture(Duration::ZERO);
        let (key, _) = f.keys.current_or_issue("team-a").await.unwrap();
        let rotated = f.keys.rotate("team-a", Duration::from_secs(60)).await.unwrap();
        let page = f.raw.list("/kfsec/s3/", 0, None).await.unwrap();
        assert!(page.items.len() >= 3, "the record and two index entries");
        for kv in &page.items {
            for secret in [&key.secret, &rotated.secret] {
                assert!(
                    !contains(&kv.value, secret.as_bytes()),
                    "{} holds a secret in the clear",
                    kv.key
                );
            }
        }
        let record = f.raw.get("/kfsec/s3/ns/team-a").await.unwrap().unwrap();
        assert!(
            record.value.starts_with(&kfsec_store::sealed::MAGIC),
            "the namespace record is sealed"
        );
    }

    #[tokio::test]
    async fn hostile_namespaces_never_name_a_store_key() {
        let f = fixture(Duration::ZERO);
        for bad in ["", "../idp", "a/b", "UPPER", &"a".repeat(64), "a\0b"] {
            assert!(matches!(
                f.keys.current_or_issue(bad).await,
                Err(KeyStoreError::InvalidNamespace(_))
            ));
            assert!(f.keys.revoke(bad).await.is_err());
        }
        assert!(f.raw.list("/kfsec/s3/", 0, None).await.unwrap().items.is_empty());
    }
}
