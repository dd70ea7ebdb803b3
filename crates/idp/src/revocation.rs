//! Per-user credential epochs: "every credential of this user issued at or before T is void".
//!
//! `kfsec user passwd`, `user delete` and `user logout-all` (and the home page's "Log out
//! everywhere") write the epoch to the store; the [`crate::authn::Authenticator`] consults it for
//! every ID token and session, the token endpoint for every code and refresh token. Invariants:
//! the epoch only moves forward; it is in milliseconds and so are the times it is held against —
//! the time the login's password check began, which sessions, codes, refresh-token chains and
//! ID/access tokens (`kfsec_iat_ms`) all carry, never when they were issued — so a login after a
//! revocation, even in the same second, stays valid, and one checked before it never does,
//! however late its credentials are issued (a token without that claim counts from the start
//! of its `iat` second);
//! a store error while reading an epoch refuses the credential (fail closed); the in-memory
//! cache is kept current by a store watch (other writers) and by the local writer, is dropped
//! whole whenever the watch restarts or breaks, and is not filled while no watch is following
//! the store (reads then go to the store).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kfsec_store::{Event, EventKind, Store, StoreError};
use kfsec_types::{Rng, Versioned};
use serde::{Deserialize, Serialize};

use crate::secret::sha256_hex;

const PREFIX: &str = "/kfsec/idp/revoked/";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EpochRecord {
    /// Credentials issued at or before this Unix millisecond are void.
    not_before_ms: u64,
}

/// A user's key in the epoch table: the SHA-256 of the lower-cased email, hex. Computed once
/// per session by its holder ([`Epochs::revoked_key`]) rather than per request; cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserKey(Arc<str>);

impl UserKey {
    /// The key of `email` (case-insensitive: `Alice@x` and `alice@x` share one epoch).
    pub fn of(email: &str) -> Self {
        Self(sha256_hex(email.to_ascii_lowercase().as_bytes()).into())
    }

    fn as_str(&self) -> &str {
        &self.0
    }
}

/// The epochs, cached.
pub struct Epochs {
    store: Arc<dyn Store>,
    /// Jitter for the watch's backoff.
    rng: Arc<dyn Rng>,
    /// Whether the watch is following the store: only then are reads cached.
    live: AtomicBool,
    /// Key hash → epoch (`None`: the store has none). Its version moves with every change: a
    /// read that began before one may be stale, and so may a copy of what it held.
    cache: Versioned<HashMap<String, Option<u64>>>,
    /// Bumped whenever the cache is dropped: a store read that began before may be older than
    /// what the watch resumed from, and is not cached.
    clears: AtomicU64,
}

impl Epochs {
    pub(crate) fn new(store: Arc<dyn Store>, rng: Arc<dyn Rng>) -> Arc<Self> {
        Arc::new(Self {
            store,
            rng,
            live: AtomicBool::new(false),
            cache: Versioned::default(),
            clears: AtomicU64::new(0),
        })
    }

    /// The epoch of `email` in Unix milliseconds, if its credentials were ever revoked.
    /// A shared store not heard from for longer than its stale limit is an error (the cache may
    /// miss a revocation made meanwhile): the credential is refused.
    pub async fn get(&self, email: &str) -> Result<Option<u64>, StoreError> {
        self.get_key(&UserKey::of(email)).await
    }

    /// [`Epochs::get`] by the user's key.
    async fn get_key(&self, key: &UserKey) -> Result<Option<u64>, StoreError> {
        self.store.check_current()?;
        let k = key.as_str();
        if let Some(v) = self.cache.read().get(k) {
            return Ok(*v);
        }
        let clears = self.clears.load(Ordering::Acquire);
        let v = read(self.store.as_ref(), k).await?;
        // No watch keeps the cache current, or the cache was dropped while we read (our value
        // may predate what the watch resumed from): answer without caching, and without
        // writing to the cache (which would retire every copy of it for nothing).
        let cacheable = || self.live.load(Ordering::Acquire) && self.clears.load(Ordering::Acquire) == clears;
        if !cacheable() {
            return Ok(v);
        }
        let mut cache = self.cache.write();
        if !cacheable() {
            return Ok(v);
        }
        if cache.len() > 100_000 {
            // Dropping entries could lose an event newer than our read: start empty instead.
            self.clear(&mut cache);
            return Ok(v);
        }
        // A watch event may have landed meanwhile: it is newer than our read.
        Ok(*cache.entry(k.to_owned()).or_insert(v))
    }

    fn clear(&self, cache: &mut HashMap<String, Option<u64>>) {
        self.clears.fetch_add(1, Ordering::AcqRel);
        cache.clear();
    }

    /// The cache's version ([`Versioned::version`]), when the cache is followed by the watch:
    /// an answer of [`Epochs::revoked_key`] given at this version stays true for as long as
    /// the version does (every change of a cached epoch, a drop of the cache and the watch's
    /// loss move it). `None` while no watch follows the store (every read goes to it then).
    pub fn cached_version(&self) -> Option<u64> {
        let version = self.cache.version();
        self.live.load(Ordering::Acquire).then_some(version)
    }

    /// Whether a credential of `email` issued at `issued_ms` is void.
    pub async fn revoked(&self, email: &str, issued_ms: u64) -> Result<bool, StoreError> {
        self.revoked_key(&UserKey::of(email), issued_ms).await
    }

    /// [`Epochs::revoked`] by the user's key (computed once by a session's holder).
    pub async fn revoked_key(&self, key: &UserKey, issued_ms: u64) -> Result<bool, StoreError> {
        Ok(self.get_key(key).await?.is_some_and(|e| issued_ms <= e))
    }

    /// Voids every credential of `email` issued up to `now_ms` (and remembers it here at once).
    pub async fn revoke(&self, email: &str, now_ms: u64) -> Result<u64, StoreError> {
        let epoch = write(self.store.as_ref(), email, now_ms).await?;
        if self.live.load(Ordering::Acquire) {
            let mut cache = self.cache.write();
            let e = cache.entry(UserKey::of(email).as_str().to_owned()).or_insert(None);
            *e = Some(e.unwrap_or(0).max(epoch));
        }
        Ok(epoch)
    }

    /// Applies a watched change. Epochs only move forward, so a late event (our own earlier
    /// write, delivered after a newer local one) never moves the cached value back.
    fn observe(&self, k: &str, kind: &EventKind, value: &[u8]) {
        let mut cache = self.cache.write();
        let parsed = serde_json::from_slice::<EpochRecord>(value);
        match (kind, parsed) {
            (EventKind::Delete, _) | (_, Err(_)) => {
                cache.remove(k);
            }
            (_, Ok(r)) => {
                let e = cache.entry(k.to_owned()).or_insert(None);
                *e = Some(e.unwrap_or(0).max(r.not_before_ms));
            }
        }
    }

    /// Follows epoch writes of other processes, until the task is dropped. The cache is dropped
    /// whenever the watch (re)starts or breaks, and holds nothing while the watch is down: every
    /// read then goes to the store.
    pub fn spawn_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let config = kfsec_store::WatcherConfig::new(PREFIX).skip_list();
        let mut watcher = kfsec_store::Watcher::new(me.store.clone(), config, me.rng.clone());
        tokio::spawn(async move {
            loop {
                match watcher.next().await {
                    Ok(Event::Restarted { .. }) => {
                        // Anything read before the watch started may be stale.
                        let mut cache = me.cache.write();
                        me.clear(&mut cache);
                        me.live.store(true, Ordering::Release);
                    }
                    Ok(Event::Applied(kv)) => me.observe_key(&kv.key, &EventKind::Put, &kv.value),
                    Ok(Event::Deleted(kv)) => me.observe_key(&kv.key, &EventKind::Delete, &kv.value),
                    Ok(Event::Progress(_)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "revocation watch lost; reloading");
                        me.live.store(false, Ordering::Release);
                        let mut cache = me.cache.write();
                        me.clear(&mut cache);
                    }
                }
            }
        })
    }

    fn observe_key(&self, key: &str, kind: &EventKind, value: &[u8]) {
        if let Some(k) = key.strip_prefix(PREFIX) {
            self.observe(k, kind, value);
        }
    }
}

async fn read(store: &dyn Store, k: &str) -> Result<Option<u64>, StoreError> {
    Ok(store
        .get(&format!("{PREFIX}{k}"))
        .await?
        .and_then(|kv| serde_json::from_slice::<EpochRecord>(&kv.value).ok())
        .map(|r| r.not_before_ms))
}

/// Writes the epoch of `email` (never moving it back) straight to the store: the offline CLI's
/// path and the building block of [`Epochs::revoke`]. Returns the epoch in force.
pub async fn write(store: &dyn Store, email: &str, now_ms: u64) -> Result<u64, StoreError> {
    let key = format!("{PREFIX}{}", UserKey::of(email).as_str());
    for _ in 0..5 {
        let current = store.get(&key).await?;
        let old = current
            .as_ref()
            .and_then(|kv| serde_json::from_slice::<EpochRecord>(&kv.value).ok())
            .map_or(0, |r| r.not_before_ms);
        let epoch = old.max(now_ms);
        let body = serde_json::to_vec(&EpochRecord { not_before_ms: epoch })
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let res = match &current {
            Some(kv) => store.update(&key, body, Some(kv.mod_revision), None).await,
            None => store.create(&key, body, None).await,
        };
        match res {
            Ok(_) => return Ok(epoch),
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_) | StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Backend("revocation epoch kept changing".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> Arc<dyn Rng> {
        Arc::new(kfsec_types::SequenceRng::default())
    }

    #[tokio::test]
    async fn epochs_only_move_forward_and_are_case_blind() {
        let store: Arc<dyn Store> = kfsec_store::MemoryStore::new(Arc::new(kfsec_types::SystemClock));
        let e = Epochs::new(store.clone(), rng());
        assert_eq!(e.get("a@x").await.unwrap(), None);
        assert_eq!(e.revoke("A@x", 5_000).await.unwrap(), 5_000);
        assert!(e.revoked("a@X", 5_000).await.unwrap());
        assert!(!e.revoked("a@x", 5_001).await.unwrap());
        // the key a session keeps answers as the email does, in any spelling
        assert_eq!(UserKey::of("A@X"), UserKey::of("a@x"));
        assert!(e.revoked_key(&UserKey::of("a@X"), 5_000).await.unwrap());
        assert!(!e.revoked_key(&UserKey::of("a@x"), 5_001).await.unwrap());
        assert!(!e.revoked_key(&UserKey::of("b@x"), 1).await.unwrap());
        assert_eq!(write(store.as_ref(), "a@x", 1_000).await.unwrap(), 5_000);
        // a fresh cache reads the store
        let e2 = Epochs::new(store, rng());
        assert_eq!(e2.get("a@x").await.unwrap(), Some(5_000));
        // a late watch event of an older write does not move the epoch back
        e2.live.store(true, Ordering::Release);
        assert_eq!(e2.get("a@x").await.unwrap(), Some(5_000));
        let old = serde_json::to_vec(&EpochRecord { not_before_ms: 1_000 }).unwrap();
        e2.observe(UserKey::of("a@x").as_str(), &EventKind::Put, &old);
        assert_eq!(e2.get("a@x").await.unwrap(), Some(5_000));
    }

    #[tokio::test]
    async fn the_watch_keeps_the_cache_current_and_nothing_is_cached_without_it() {
        let store: Arc<dyn Store> = kfsec_store::MemoryStore::new(Arc::new(kfsec_types::SystemClock));
        let e = Epochs::new(store.clone(), rng());
        // without a watch, reads are not cached: another writer is seen at once
        assert_eq!(e.get("b@x").await.unwrap(), None);
        write(store.as_ref(), "b@x", 1_000).await.unwrap();
        assert_eq!(e.get("b@x").await.unwrap(), Some(1_000));
        assert!(e.cache.read().is_empty());
        let task = e.spawn_watch();
        while !e.live.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(e.get("c@x").await.unwrap(), None);
        assert_eq!(e.cache.read().len(), 1, "cached while the watch runs");
        // another writer: the watch updates the cached value
        write(store.as_ref(), "c@x", 2_000).await.unwrap();
        let mut seen = None;
        for _ in 0..2_000 {
            seen = e.get("c@x").await.unwrap();
            if seen.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(seen, Some(2_000));
        task.abort();
    }
}
