//! Server-side sessions behind the `authservice_session` cookie.
//!
//! The cookie holds `<id>.<mac>`: a 256-bit random id and an HMAC-SHA256 over it. The store keeps
//! the session under the SHA-256 of the id (never the id itself), with a TTL; an in-memory cache
//! makes the hot path a MAC check plus a hash-map lookup. Invariants: a cookie is honoured only
//! while its record exists, so logout (record deleted, cache evicted, other replicas evicted by
//! watch) stops a copied cookie at once; MAC comparison is constant-time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kfsec_idp::secret::sha256_hex;
use kfsec_store::{EventKind, Store, StoreError};
use kfsec_types::{Clock, Identity, Rng, UnixTime, random_array};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::GatewayError;

const PREFIX: &str = "/kfsec/sessions/";
const KEYS: &str = "/kfsec/gateway/keys";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRecord {
    user: String,
    #[serde(default)]
    groups: Vec<String>,
    created_at: u64,
    expires_at: u64,
}

#[derive(Serialize, Deserialize)]
struct GatewayKeys {
    session: String,
    csrf: String,
}

/// Two HMAC keys kept in the store so every replica and every restart agrees.
pub(crate) struct MacKeys {
    pub session: hmac::Key,
    pub csrf: hmac::Key,
}

/// Loads the gateway's MAC keys, creating them on first start.
pub(crate) async fn load_keys(store: &dyn Store, rng: &dyn Rng) -> Result<MacKeys, GatewayError> {
    let kv = match store.get(KEYS).await? {
        Some(kv) => kv,
        None => {
            let rec = GatewayKeys {
                session: B64.encode(random_array::<32>(rng)),
                csrf: B64.encode(random_array::<32>(rng)),
            };
            match store.create(KEYS, serde_json::to_vec(&rec)?, None).await {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
            store
                .get(KEYS)
                .await?
                .ok_or_else(|| GatewayError::Internal("gateway keys vanished".into()))?
        }
    };
    let rec: GatewayKeys = serde_json::from_slice(&kv.value)?;
    let dec = |s: &str| {
        B64.decode(s)
            .map_err(|_| GatewayError::Internal("corrupt gateway keys".into()))
    };
    Ok(MacKeys {
        session: hmac::Key::new(hmac::HMAC_SHA256, &dec(&rec.session)?),
        csrf: hmac::Key::new(hmac::HMAC_SHA256, &dec(&rec.csrf)?),
    })
}

/// The session table.
pub struct Sessions {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    key: hmac::Key,
    ttl: Duration,
    cache: RwLock<HashMap<String, Arc<(Identity, u64)>>>,
}

impl Sessions {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        key: hmac::Key,
        ttl: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            rng,
            key,
            ttl,
            cache: RwLock::default(),
        })
    }

    /// Session lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session; returns the cookie value.
    pub async fn create(&self, identity: &Identity) -> Result<String, GatewayError> {
        let id = B64.encode(random_array::<32>(self.rng.as_ref()));
        let now = self.clock.now();
        let rec = SessionRecord {
            user: identity.user.clone(),
            groups: identity.groups.clone(),
            created_at: now.as_secs(),
            expires_at: now.add(self.ttl).as_secs(),
        };
        let hash = sha256_hex(id.as_bytes());
        self.store
            .create(&format!("{PREFIX}{hash}"), serde_json::to_vec(&rec)?, Some(self.ttl))
            .await?;
        self.cache
            .write()
            .insert(hash, Arc::new((identity.clone(), rec.expires_at)));
        let mac = hmac::sign(&self.key, id.as_bytes());
        Ok(format!("{id}.{}", B64.encode(mac.as_ref())))
    }

    /// The id inside a cookie value whose MAC verifies.
    fn open(&self, cookie: &str) -> Option<String> {
        let (id, mac) = cookie.split_once('.')?;
        if id.len() != 43 || mac.len() > 64 {
            return None;
        }
        let mac = B64.decode(mac).ok()?;
        hmac::verify(&self.key, id.as_bytes(), &mac).ok()?;
        Some(sha256_hex(id.as_bytes()))
    }

    /// The identity of a live session.
    pub async fn validate(&self, cookie: &str) -> Option<Identity> {
        let hash = self.open(cookie)?;
        let now = self.clock.now().as_secs();
        let cached = self.cache.read().get(&hash).cloned();
        if let Some(entry) = cached {
            return (now < entry.1).then(|| entry.0.clone());
        }
        let kv = self.store.get(&format!("{PREFIX}{hash}")).await.ok()??;
        let rec: SessionRecord = serde_json::from_slice(&kv.value).ok()?;
        if now >= rec.expires_at {
            return None;
        }
        let identity = Identity::new(rec.user, rec.groups);
        let mut cache = self.cache.write();
        if cache.len() > 200_000 {
            cache.retain(|_, e| e.1 > now);
        }
        cache.insert(hash, Arc::new((identity.clone(), rec.expires_at)));
        Some(identity)
    }

    /// Ends a session. Unknown or forged cookies are ignored.
    pub async fn revoke(&self, cookie: &str) -> Result<(), GatewayError> {
        let Some(hash) = self.open(cookie) else { return Ok(()) };
        self.cache.write().remove(&hash);
        match self.store.delete(&format!("{PREFIX}{hash}"), None).await {
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Follows session deletions in the store (logout on another replica, expiry) and evicts
    /// them from the cache.
    pub fn spawn_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let from = me.store.revision().await.unwrap_or(0);
                match me.store.watch(PREFIX, from).await {
                    Ok(mut rx) => {
                        while let Some(ev) = rx.recv().await {
                            match ev {
                                Ok(ev) if ev.kind == EventKind::Delete => {
                                    if let Some(hash) = ev.kv.key.strip_prefix(PREFIX) {
                                        me.cache.write().remove(hash);
                                    }
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    // Lagged: we may have missed deletions; start clean.
                                    tracing::warn!(error = %e, "session watch lagged; clearing the cache");
                                    me.cache.write().clear();
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "session watch failed"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    /// Drops expired entries from the cache every `every`, until the task is dropped.
    pub fn spawn_prune(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let now: UnixTime = me.clock.now();
                me.cache.write().retain(|_, e| e.1 > now.as_secs());
            }
        })
    }
}
