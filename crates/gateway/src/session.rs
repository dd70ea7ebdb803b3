//! Server-side sessions behind the `authservice_session` cookie.
//!
//! The cookie holds `<id>.<mac>`: a 256-bit random id and an HMAC-SHA256 over it. The store keeps
//! the session under the SHA-256 of the id (never the id itself), with a TTL; an in-memory cache
//! makes the hot path a MAC check plus a hash-map lookup. Invariants: a cookie is honoured only
//! while its record exists, so logout (record deleted, cache evicted, other replicas evicted by
//! watch) stops a copied cookie at once; MAC comparison is constant-time; a session is returned
//! with its start time (the time of the login's password check, given by the caller) so the
//! caller ([`kfsec_idp::Authenticator::session`]) can hold it against the user's revocation epoch; a user has at most `max_per_user` sessions (a per-user index
//! under `/kfsec/session-users/`, the oldest ended first), and all of them end together on
//! [`Sessions::revoke_user`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kfsec_idp::secret::sha256_hex;
use kfsec_store::{Store, StoreError};
use kfsec_types::{Clock, Identity, Rng, UnixTime, random_array};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::GatewayError;

const PREFIX: &str = "/kfsec/sessions/";
const USER_INDEX: &str = "/kfsec/session-users/";
const KEYS: &str = "/kfsec/gateway/keys";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRecord {
    user: String,
    #[serde(default)]
    groups: Vec<String>,
    created_at: u64,
    expires_at: u64,
    /// Start, Unix ms: when the login's password check began (0 in records from before
    /// revocation existed: `created_at` then).
    #[serde(default)]
    created_ms: u64,
}

impl SessionRecord {
    fn started_ms(&self) -> u64 {
        if self.created_ms == 0 {
            self.created_at.saturating_mul(1000)
        } else {
            self.created_ms
        }
    }
}

/// A live session: who, until when (Unix s), since when (Unix ms).
#[derive(Debug)]
struct Live {
    identity: Identity,
    expires_at: u64,
    started_ms: u64,
}

fn user_prefix(user: &str) -> String {
    format!("{USER_INDEX}{}/", sha256_hex(user.to_ascii_lowercase().as_bytes()))
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

/// The user's sessions, oldest first: (index key, session hash).
async fn user_sessions(store: &dyn Store, user: &str) -> Result<Vec<(String, String)>, GatewayError> {
    let all = kfsec_store::list_all(store, &user_prefix(user)).await?;
    Ok(all
        .items
        .into_iter()
        .filter_map(|kv| {
            let hash = kv.key.rsplit_once('-')?.1.to_owned();
            Some((kv.key, hash))
        })
        .collect())
}

/// Deletes one session record and its index entry (looked up when not given).
async fn end(store: &dyn Store, hash: &str, index_key: Option<&str>) -> Result<(), GatewayError> {
    let index_key = match index_key {
        Some(k) => Some(k.to_owned()),
        None => match store.get(&format!("{PREFIX}{hash}")).await? {
            Some(kv) => serde_json::from_slice::<SessionRecord>(&kv.value)
                .ok()
                .map(|r| format!("{}{:020}-{hash}", user_prefix(&r.user), r.created_ms)),
            None => None,
        },
    };
    for key in [Some(format!("{PREFIX}{hash}")), index_key].into_iter().flatten() {
        match store.delete(&key, None).await {
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Deletes every session of `user` from the store (the offline CLI's path; a running server's
/// other caches follow by watch). Returns how many there were.
pub async fn delete_user_sessions(store: &dyn Store, user: &str) -> Result<usize, GatewayError> {
    let mine = user_sessions(store, user).await?;
    for (index_key, hash) in &mine {
        end(store, hash, Some(index_key)).await?;
    }
    Ok(mine.len())
}

/// The session table.
pub struct Sessions {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    key: hmac::Key,
    ttl: Duration,
    max_per_user: usize,
    cache: RwLock<HashMap<String, Arc<Live>>>,
}

impl Sessions {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        key: hmac::Key,
        ttl: Duration,
        max_per_user: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            rng,
            key,
            ttl,
            max_per_user: max_per_user.max(1),
            cache: RwLock::default(),
        })
    }

    /// Session lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session for a login whose password check began at `started_ms` (Unix ms; it is
    /// held against the user's revocation epoch, never a later time), ending the user's oldest
    /// sessions beyond the per-user limit; returns the cookie value.
    pub async fn create(&self, identity: &Identity, started_ms: u64) -> Result<String, GatewayError> {
        let id = B64.encode(random_array::<32>(self.rng.as_ref()));
        let now = self.clock.now();
        let rec = SessionRecord {
            user: identity.user.clone(),
            groups: identity.groups.clone(),
            created_at: now.as_secs(),
            expires_at: now.add(self.ttl).as_secs(),
            created_ms: started_ms.min(now.as_millis()),
        };
        let hash = sha256_hex(id.as_bytes());
        let mine = self.user_sessions(&identity.user).await?;
        let excess = (mine.len() + 1).saturating_sub(self.max_per_user);
        for (index_key, old) in mine.iter().take(excess) {
            self.end(old, Some(index_key)).await?;
            tracing::info!(target: "audit", user = %identity.user, "oldest session ended (session limit)");
        }
        self.store
            .create(&format!("{PREFIX}{hash}"), serde_json::to_vec(&rec)?, Some(self.ttl))
            .await?;
        self.store
            .put(
                &format!("{}{:020}-{hash}", user_prefix(&identity.user), rec.created_ms),
                Vec::new(),
                Some(self.ttl),
            )
            .await?;
        self.cache.write().insert(
            hash,
            Arc::new(Live {
                identity: identity.clone(),
                expires_at: rec.expires_at,
                started_ms: rec.created_ms,
            }),
        );
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

    /// The identity of a live session and when it started (Unix ms). The caller checks the
    /// start against the user's revocation epoch (the `Authenticator`).
    pub async fn validate(&self, cookie: &str) -> Option<(Identity, u64)> {
        let hash = self.open(cookie)?;
        let now = self.clock.now().as_secs();
        let cached = self.cache.read().get(&hash).cloned();
        if let Some(entry) = cached {
            return (now < entry.expires_at).then(|| (entry.identity.clone(), entry.started_ms));
        }
        let kv = self.store.get(&format!("{PREFIX}{hash}")).await.ok()??;
        let rec: SessionRecord = serde_json::from_slice(&kv.value).ok()?;
        if now >= rec.expires_at {
            return None;
        }
        let started_ms = rec.started_ms();
        let identity = Identity::new(rec.user, rec.groups);
        let mut cache = self.cache.write();
        if cache.len() > 200_000 {
            cache.retain(|_, e| e.expires_at > now);
        }
        cache.insert(
            hash,
            Arc::new(Live {
                identity: identity.clone(),
                expires_at: rec.expires_at,
                started_ms,
            }),
        );
        Some((identity, started_ms))
    }

    /// Ends a session. Unknown or forged cookies are ignored.
    pub async fn revoke(&self, cookie: &str) -> Result<(), GatewayError> {
        let Some(hash) = self.open(cookie) else { return Ok(()) };
        self.end(&hash, None).await
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<(String, String)>, GatewayError> {
        user_sessions(self.store.as_ref(), user).await
    }

    /// Deletes one session (record, index entry, cache entry).
    async fn end(&self, hash: &str, index_key: Option<&str>) -> Result<(), GatewayError> {
        self.cache.write().remove(hash);
        end(self.store.as_ref(), hash, index_key).await
    }

    /// Ends every session of `user` (password change, deletion, "log out everywhere"); returns
    /// how many there were.
    pub async fn revoke_user(&self, user: &str) -> Result<usize, GatewayError> {
        let n = delete_user_sessions(self.store.as_ref(), user).await?;
        self.cache
            .write()
            .retain(|_, e| !e.identity.user.eq_ignore_ascii_case(user));
        Ok(n)
    }

    /// Follows session deletions in the store (logout on another replica, expiry) and evicts
    /// them from the cache; the cache starts clean whenever the watch (re)starts or breaks (a
    /// deletion may have been missed), until the task is dropped.
    pub fn spawn_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let config = kfsec_store::WatcherConfig::new(PREFIX).skip_list();
        let mut watcher = kfsec_store::Watcher::new(me.store.clone(), config, me.rng.clone());
        tokio::spawn(async move {
            loop {
                match watcher.next().await {
                    Ok(kfsec_store::Event::Deleted(kv)) => {
                        if let Some(hash) = kv.key.strip_prefix(PREFIX) {
                            me.cache.write().remove(hash);
                        }
                    }
                    Ok(kfsec_store::Event::Restarted { .. }) => me.cache.write().clear(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "session watch lost; clearing the cache");
                        me.cache.write().clear();
                    }
                }
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
                me.cache.write().retain(|_, e| e.expires_at > now.as_secs());
            }
        })
    }
}
