//! Server-side sessions behind the `authservice_session` cookie.
//!
//! The cookie holds `<id>.<mac>`: a 256-bit random id and an HMAC-SHA256 over it. The store keeps
//! the session under the SHA-256 of the id (never the id itself), with a TTL; an in-memory cache
//! makes the hot path a MAC check plus a hash-map lookup. Invariants: a cookie is honoured only
//! while its record exists, so logout (record deleted, cache evicted, other replicas evicted by
//! watch) stops a copied cookie at once, and a store read begun before a logout never puts the
//! session back in a cache (`Sessions::cache_if_current`); MAC comparison is constant-time; a session is returned
//! with its start time (the time of the login's password check, given by the caller) so the
//! caller ([`kfsec_idp::Authenticator::session`]) can hold it against the user's revocation epoch; a user has at most `max_per_user` sessions (a per-user index
//! under `/kfsec/session-users/`, the oldest ended first), and all of them end together on
//! [`Sessions::revoke_user`].
//!
//! Federated sessions (the user signed in through an upstream connector) keep the gatekeeper's
//! refresh token in the record — server-side only, never in the cookie, hidden from `Debug` —
//! and are re-checked through it ([`Sessions::check`]) when a request arrives and the
//! last check is older than the revalidation interval: a refusal (`invalid_grant`) ends the
//! session before the request is served; a temporary failure keeps it and is retried (not
//! sooner than [`RETRY_AFTER_FAILURE`]). One re-check per session at a time: concurrent requests
//! meanwhile go on with the identity last confirmed; across replicas the record is re-read and
//! written back only if unchanged (its revision).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use futures_util::future::BoxFuture;
use kfsec_idp::revocation::UserKey;
use kfsec_idp::secret::sha256_hex;
use kfsec_store::{Store, StoreError};
use kfsec_types::{Clock, Identity, Rng, Versioned, random_array};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::GatewayError;

const PREFIX: &str = "/kfsec/sessions/";
const USER_INDEX: &str = "/kfsec/session-users/";
const KEYS: &str = "/kfsec/gateway/keys";
/// The store prefixes holding secrets (the MAC keys; session records, which keep a federated
/// login's refresh token): sealed at rest when `secretsEncryption` is on.
pub const SECRET_PREFIXES: &[&str] = &[PREFIX, KEYS];

/// How long a session whose re-check failed for a passing reason (upstream down or slow) goes on
/// before the next attempt: so an outage does not make every request wait for a timeout.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

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
    /// For a session that is re-checked upstream: how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream: Option<UpstreamLink>,
    /// The `sub` of the ID token the session began with (empty in older records).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    subject: String,
}

/// How a session is re-checked: the connector the user signed in through and the gatekeeper's
/// refresh token for that login.
#[derive(Clone, Serialize, Deserialize)]
struct UpstreamLink {
    /// The connector id (the second half of the ID token's `sub`).
    connector: String,
    /// The gatekeeper client's refresh token (usable only in-process: the gatekeeper client
    /// cannot authenticate at `/token`).
    refresh_token: String,
    /// Last successful check, Unix ms.
    checked_ms: u64,
}

impl std::fmt::Debug for UpstreamLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamLink")
            .field("connector", &self.connector)
            .field("checked_ms", &self.checked_ms)
            .finish_non_exhaustive()
    }
}

/// What a new session is re-checked through: the connector id and the refresh token.
#[derive(Clone)]
pub struct Federated {
    /// The connector the user signed in through.
    pub connector: String,
    /// The gatekeeper client's refresh token of this login.
    pub refresh_token: String,
}

impl std::fmt::Debug for Federated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federated")
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

/// The answer of a re-check upstream.
pub enum Refreshed {
    /// Still accepted: the identity now (email and groups) and the rotated refresh token.
    Valid {
        /// The identity from the new ID token.
        identity: Identity,
        /// The refresh token to use next time.
        refresh_token: String,
    },
    /// Refused for good (`invalid_grant`): the session ends.
    Refused(String),
    /// Not known now (the upstream or the IdP failed for a passing reason): try again later.
    Unavailable(String),
}

/// Re-checks a session's login through its refresh token (the gatekeeper's IdP in production).
pub trait Refresher: Send + Sync {
    /// Redeems `refresh_token`.
    fn refresh<'a>(&'a self, refresh_token: &'a str) -> BoxFuture<'a, Refreshed>;
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

/// A live session: who, until when (Unix s), since when (Unix ms), and when it is re-checked.
#[derive(Debug, Clone)]
struct Live {
    identity: Identity,
    /// The user's revocation key, computed once per cached session (not per request).
    user_key: UserKey,
    expires_at: u64,
    started_ms: u64,
    /// Re-checked upstream: `(connector, last check in Unix ms, no attempt before this Unix ms)`.
    upstream: Option<(String, u64, u64)>,
    /// The `sub` of the ID token the session began with (empty: not known).
    subject: String,
}

/// A session that passed [`Sessions::check`]: who, since when, and until when the answer holds.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Who.
    pub identity: Identity,
    /// The login's start (Unix ms), for the revocation check.
    pub started_ms: u64,
    /// The user's revocation key.
    pub user_key: UserKey,
    /// The session's end (Unix s): not valid from then on.
    pub expires_at: u64,
    /// When the session is next re-checked upstream (Unix ms; `u64::MAX`: never).
    pub recheck_at_ms: u64,
    /// Whether this answer is the cache's entry, whose eviction moves the cache's version: only
    /// then may a copy of it be kept for as long as the version stays ([`crate::front`]). (An
    /// answer read while a logout ran is not cached, and its session's later eviction would not
    /// move the version.)
    pub cached: bool,
}

impl Live {
    fn from_record(rec: &SessionRecord) -> Self {
        Self {
            identity: Identity::new(rec.user.clone(), rec.groups.clone()),
            user_key: UserKey::of(&rec.user),
            expires_at: rec.expires_at,
            started_ms: rec.started_ms(),
            upstream: rec.upstream.as_ref().map(|u| (u.connector.clone(), u.checked_ms, 0)),
            subject: rec.subject.clone(),
        }
    }
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
/// Whether the session record was there to delete.
async fn end(store: &dyn Store, hash: &str, index_key: Option<&str>) -> Result<bool, GatewayError> {
    let index_key = match index_key {
        Some(k) => Some(k.to_owned()),
        None => match store.get(&format!("{PREFIX}{hash}")).await? {
            Some(kv) => serde_json::from_slice::<SessionRecord>(&kv.value)
                .ok()
                .map(|r| format!("{}{:020}-{hash}", user_prefix(&r.user), r.created_ms)),
            None => None,
        },
    };
    let mut deleted = false;
    // (the record first)
    for (i, key) in [Some(format!("{PREFIX}{hash}")), index_key]
        .into_iter()
        .flatten()
        .enumerate()
    {
        match store.delete(&key, None).await {
            Ok(_) => deleted |= i == 0,
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
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
    /// How often a federated session is re-checked (None: never).
    revalidate: Option<Duration>,
    /// Live sessions by hash. Its version moves with every change (login, logout, re-check,
    /// watch event, prune): copies of what it answered ([`crate::front`]) go with it.
    cache: Versioned<HashMap<String, Arc<Live>>>,
    /// Evictions so far (a logout, a watched deletion, a user's revocation, a cleared cache),
    /// counted before the cache is looked at. What was read from the store is cached only if
    /// none happened since the read began ([`Sessions::cache_if_current`]): a logout racing
    /// the read — its eviction finding nothing cached yet — is not undone by the read's insert.
    evictions: AtomicU64,
    /// Sessions being re-checked right now (by hash).
    refreshing: Mutex<HashSet<String>>,
}

/// Removes a session from [`Sessions::refreshing`] when its re-check ends, however it ends.
struct Refreshing<'a>(&'a Sessions, String);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.refreshing.lock().remove(&self.1);
    }
}

/// A standing session, as [`Sessions::standing`] finds it.
#[derive(Debug)]
pub struct Standing {
    /// Who it is.
    pub identity: Identity,
    /// The user's revocation key, for the caller's epoch check.
    pub user_key: UserKey,
    /// When it started (Unix ms), for the caller's epoch check.
    pub started_ms: u64,
    /// When it ends (Unix s).
    pub expires_at: u64,
}

impl Sessions {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        key: hmac::Key,
        ttl: Duration,
        max_per_user: usize,
        revalidate: Option<Duration>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            rng,
            key,
            ttl,
            max_per_user: max_per_user.max(1),
            revalidate,
            cache: Versioned::default(),
            evictions: AtomicU64::new(0),
            refreshing: Mutex::default(),
        })
    }

    /// How often a federated session is re-checked upstream (None: never).
    pub fn revalidate_interval(&self) -> Option<Duration> {
        self.revalidate
    }

    /// Session lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session for a login whose password check began at `started_ms` (Unix ms; it is
    /// held against the user's revocation epoch, never a later time), ending the user's oldest
    /// sessions beyond the per-user limit; returns the cookie value.
    pub async fn create(&self, identity: &Identity, started_ms: u64) -> Result<String, GatewayError> {
        self.create_with(identity, started_ms, None).await
    }

    /// Like [`Sessions::create`], for a login to be re-checked upstream through `federated`
    /// (kept only when revalidation is on).
    pub async fn create_with(
        &self,
        identity: &Identity,
        started_ms: u64,
        federated: Option<Federated>,
    ) -> Result<String, GatewayError> {
        self.create_login(identity, started_ms, "", federated).await
    }

    /// Like [`Sessions::create_with`], remembering the `sub` of the ID token the login produced
    /// (for the tokens minted for the session, [`Sessions::login_of`]).
    pub async fn create_login(
        &self,
        identity: &Identity,
        started_ms: u64,
        subject: &str,
        federated: Option<Federated>,
    ) -> Result<String, GatewayError> {
        let id = B64.encode(random_array::<32>(self.rng.as_ref()));
        let now = self.clock.now();
        let rec = SessionRecord {
            user: identity.user.clone(),
            groups: identity.groups.clone(),
            created_at: now.as_secs(),
            expires_at: now.add(self.ttl).as_secs(),
            created_ms: started_ms.min(now.as_millis()),
            upstream: federated.filter(|_| self.revalidate.is_some()).map(|f| UpstreamLink {
                connector: f.connector,
                refresh_token: f.refresh_token,
                checked_ms: now.as_millis(),
            }),
            subject: subject.to_owned(),
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
        self.cache.write().insert(hash, Arc::new(Live::from_record(&rec)));
        let mac = hmac::sign(&self.key, id.as_bytes());
        Ok(format!("{id}.{}", B64.encode(mac.as_ref())))
    }

    /// Whether kfsec issued `cookie` (its MAC verifies; no store access).
    pub fn is_genuine(&self, cookie: &str) -> bool {
        self.open(cookie).is_some()
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

    /// `Err(Unavailable)` when the store has not been heard from for longer than its stale
    /// limit ([`kfsec_store::Store::check_current`]; one atomic load): cached sessions must
    /// not be served then.
    pub fn store_current(&self) -> Result<(), StoreError> {
        self.store.check_current()
    }

    /// The identity of a live session and when it started (Unix ms). The caller checks the
    /// start against the user's revocation epoch (the `Authenticator`).
    pub async fn validate(&self, cookie: &str) -> Option<(Identity, u64)> {
        let (_, live, _) = self.live(cookie).await?;
        Some((live.identity.clone(), live.started_ms))
    }

    /// Who a live session's cookie stands for and its login: start, end and subject (for a
    /// token minted for the session). The revocation check is the caller's, as for
    /// [`Sessions::validate`].
    pub async fn login_of(&self, cookie: &str) -> Option<(Identity, kfsec_idp::SessionLogin)> {
        let (_, live, _) = self.live(cookie).await?;
        let login = kfsec_idp::SessionLogin {
            started_ms: live.started_ms,
            expires_at: live.expires_at,
            subject: live.subject.clone(),
        };
        Some((live.identity.clone(), login))
    }

    /// Whether the session behind `cookie` still stands, as a tunnel it opened asks: `Ok(None)`
    /// when it is gone (ended, expired, never issued), else its [`Standing`] — from the cache,
    /// else the store, whose failure is an `Err` (not an end: a tunnel outlives a store's
    /// hiccup). It caches nothing and re-checks nothing upstream (requests do that).
    pub async fn standing(&self, cookie: &str) -> Result<Option<Standing>, StoreError> {
        let Some(hash) = self.open(cookie) else {
            return Ok(None);
        };
        let now = self.clock.now().as_secs();
        let cached = self.cache.read().get(&hash).cloned();
        let live = match cached {
            Some(live) => live,
            None => match self.stored(&hash).await? {
                Some(live) => live,
                None => return Ok(None),
            },
        };
        Ok((now < live.expires_at).then(|| Standing {
            identity: live.identity.clone(),
            user_key: live.user_key.clone(),
            started_ms: live.started_ms,
            expires_at: live.expires_at,
        }))
    }

    /// Like [`Sessions::validate`], and a federated session whose last check is older than the
    /// revalidation interval is re-checked through `refresher` first: refused → the session
    /// ends and this is None; a passing failure → the session goes on (retried later).
    /// Also returns the user's revocation key, for the caller's check, and how long the answer
    /// holds while the cache's [`Sessions::version`] stays the same.
    pub async fn check(&self, cookie: &str, refresher: &dyn Refresher) -> Option<Checked> {
        let (hash, live, cached) = self.live(cookie).await?;
        let recheck_at = |live: &Live| match (&live.upstream, self.revalidate) {
            (Some((_, checked_ms, retry_ms)), Some(every)) => checked_ms.saturating_add(millis(every)).max(*retry_ms),
            _ => u64::MAX,
        };
        let (live, cached) = if self.clock.now().as_millis() >= recheck_at(&live) {
            let every = self.revalidate?;
            Box::pin(self.recheck(&hash, (live, cached), every, refresher)).await?
        } else {
            (live, cached)
        };
        Some(Checked {
            identity: live.identity.clone(),
            started_ms: live.started_ms,
            user_key: live.user_key.clone(),
            expires_at: live.expires_at,
            recheck_at_ms: recheck_at(&live),
            cached,
        })
    }

    /// The session cache's version ([`Versioned::version`]): an answer of [`Sessions::check`]
    /// given at this version holds, until its expiry and re-check times, for as long as the
    /// version stays the same.
    pub fn version(&self) -> u64 {
        self.cache.version()
    }

    /// The live session behind a cookie (cache, else store): its hash, its state, and whether
    /// that state is the cache's entry.
    async fn live(&self, cookie: &str) -> Option<(String, Arc<Live>, bool)> {
        let hash = self.open(cookie)?;
        let now = self.clock.now().as_secs();
        let cached = self.cache.read().get(&hash).cloned();
        if let Some(entry) = cached {
            return (now < entry.expires_at).then_some((hash, entry, true));
        }
        // Read again (once) when a session was evicted meanwhile: the eviction may have been
        // this one's logout, which the second read sees; a request that still overlaps one is
        // answered from its read, uncached.
        for attempt in 0..2 {
            let seen = self.evictions.load(Ordering::SeqCst);
            let live = self.stored(&hash).await.ok()??;
            if now >= live.expires_at {
                return None;
            }
            let cached = self.cache_if_current(&hash, &live, seen);
            if cached || attempt == 1 {
                return Some((hash, live, cached));
            }
        }
        None
    }

    /// The session record stored as `hash` (None: there is none, or it does not parse), expired
    /// or not.
    async fn stored(&self, hash: &str) -> Result<Option<Arc<Live>>, StoreError> {
        let Some(kv) = self.store.get(&format!("{PREFIX}{hash}")).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice::<SessionRecord>(&kv.value)
            .ok()
            .map(|rec| Arc::new(Live::from_record(&rec))))
    }

    /// Caches `live` as `hash`'s state unless a session was evicted since `seen` (the count
    /// read before the store read `live` came from); whether it was cached.
    fn cache_if_current(&self, hash: &str, live: &Arc<Live>, seen: u64) -> bool {
        // (looked at first without the lock: a refused insert then moves no version)
        if self.evictions.load(Ordering::SeqCst) != seen {
            return false;
        }
        let mut cache = self.cache.write();
        // (read under the lock an eviction's look at the cache waits for: an eviction counted
        // after this sees the entry and removes it)
        if self.evictions.load(Ordering::SeqCst) != seen {
            return false;
        }
        if cache.len() > 200_000 {
            let now = self.clock.now().as_secs();
            cache.retain(|_, e| e.expires_at > now);
        }
        cache.insert(hash.to_owned(), live.clone());
        true
    }

    /// Re-checks one session upstream (one at a time per session: a request arriving meanwhile
    /// goes on with `live`). None: the session ended.
    async fn recheck(
        &self,
        hash: &str,
        (live, cached): (Arc<Live>, bool),
        every: Duration,
        refresher: &dyn Refresher,
    ) -> Option<(Arc<Live>, bool)> {
        if !self.refreshing.lock().insert(hash.to_owned()) {
            return Some((live, cached));
        }
        let _guard = Refreshing(self, hash.to_owned());
        let seen = self.evictions.load(Ordering::SeqCst);
        let key = format!("{PREFIX}{hash}");
        // The record, not the cache: another replica may have re-checked (and rotated the
        // refresh token) already.
        let (kv, mut rec) = match self.store.get(&key).await {
            Ok(Some(kv)) => match serde_json::from_slice::<SessionRecord>(&kv.value) {
                Ok(rec) => (kv, rec),
                Err(_) => return self.ended(hash, &live.identity.user, "unreadable session record").await,
            },
            Ok(None) => return self.ended(hash, &live.identity.user, "session record gone").await,
            Err(e) => {
                tracing::warn!(user = %live.identity.user, error = %e, "session re-check postponed: store unavailable");
                return Some(self.postpone(hash, &live));
            }
        };
        let now = self.clock.now();
        let Some(link) = rec.upstream.clone() else {
            return Some(self.cache_record(hash, &rec, seen));
        };
        if now.as_millis() < link.checked_ms.saturating_add(millis(every)) {
            return Some(self.cache_record(hash, &rec, seen));
        }
        match refresher.refresh(&link.refresh_token).await {
            Refreshed::Valid {
                identity,
                refresh_token,
            } => {
                if !identity.user.eq_ignore_ascii_case(&rec.user) {
                    // Another Kubeflow user now: sign in again as them (the session, its
                    // per-user index and its revocation epoch belong to the old name).
                    tracing::info!(target: "audit", user = %rec.user, now = %identity.user, connector = %link.connector, "session ended: the identity provider now names another user");
                    return self.ended(hash, &rec.user, "user renamed upstream").await;
                }
                rec.groups = identity.groups;
                rec.upstream = Some(UpstreamLink {
                    connector: link.connector.clone(),
                    refresh_token,
                    checked_ms: now.as_millis(),
                });
                let ttl = Duration::from_secs(rec.expires_at.saturating_sub(now.as_secs()).max(1));
                let body = serde_json::to_vec(&rec).ok()?;
                match self.store.update(&key, body, Some(kv.mod_revision), Some(ttl)).await {
                    Ok(_) => {
                        tracing::debug!(user = %rec.user, connector = %link.connector, "session re-checked upstream");
                        Some(self.cache_record(hash, &rec, seen))
                    }
                    // Written meanwhile (another replica's re-check, whose token is the newer).
                    Err(StoreError::Conflict { .. }) => match self.store.get(&key).await {
                        Ok(Some(kv)) => serde_json::from_slice::<SessionRecord>(&kv.value)
                            .ok()
                            .map(|r| self.cache_record(hash, &r, seen)),
                        _ => self.ended(hash, &rec.user, "session record gone").await,
                    },
                    Err(StoreError::NotFound(_)) => self.ended(hash, &rec.user, "session record gone").await,
                    Err(e) => {
                        tracing::warn!(user = %rec.user, error = %e, "re-checked session not saved; retried later");
                        Some(self.postpone(hash, &live))
                    }
                }
            }
            Refreshed::Refused(why) => {
                tracing::info!(target: "audit", user = %rec.user, connector = %link.connector, reason = %why, "session ended: the identity provider no longer accepts the user");
                self.ended(hash, &rec.user, "refused upstream").await
            }
            Refreshed::Unavailable(why) => {
                tracing::warn!(user = %rec.user, connector = %link.connector, reason = %why, "session re-check failed for now; the session goes on and is re-checked later");
                Some(self.postpone(hash, &live))
            }
        }
    }

    /// Caches `rec` as the session's state (unless a session was evicted since `seen`) and
    /// returns it, and whether it was cached.
    fn cache_record(&self, hash: &str, rec: &SessionRecord, seen: u64) -> (Arc<Live>, bool) {
        let live = Arc::new(Live::from_record(rec));
        let cached = self.cache_if_current(hash, &live, seen);
        (live, cached)
    }

    /// No new attempt before [`RETRY_AFTER_FAILURE`] from now.
    /// The entry is replaced only if it is still `live` itself: a session evicted meanwhile (a
    /// logout while the store or the IdP failed) is not put back.
    fn postpone(&self, hash: &str, live: &Arc<Live>) -> (Arc<Live>, bool) {
        let retry = self.clock.now().as_millis().saturating_add(millis(RETRY_AFTER_FAILURE));
        let mut next = Live::clone(live);
        if let Some(u) = &mut next.upstream {
            u.2 = retry;
        }
        let next = Arc::new(next);
        // (looked at first under the read lock: a write moves the version)
        if !self.cache.read().get(hash).is_some_and(|e| Arc::ptr_eq(e, live)) {
            return (next, false);
        }
        let mut cache = self.cache.write();
        match cache.get_mut(hash) {
            Some(entry) if Arc::ptr_eq(entry, live) => {
                *entry = next.clone();
                (next, true)
            }
            _ => (next, false),
        }
    }

    /// Ends a session found invalid during a re-check; always None.
    async fn ended(&self, hash: &str, user: &str, why: &str) -> Option<(Arc<Live>, bool)> {
        if let Err(e) = self.end(hash, None).await {
            // Still refused now; the cache no longer has it and the record fails its next check.
            tracing::warn!(user = %user, error = %e, "could not delete an ended session ({why})");
        }
        None
    }

    /// Ends a session. Unknown or forged cookies are ignored.
    pub async fn revoke(&self, cookie: &str) -> Result<(), GatewayError> {
        let Some(hash) = self.open(cookie) else { return Ok(()) };
        self.end(&hash, None).await
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<(String, String)>, GatewayError> {
        user_sessions(self.store.as_ref(), user).await
    }

    /// Deletes one session (record, index entry, cache entry: the record first, so a check
    /// running meanwhile cannot read it back into the cache after the eviction).
    async fn end(&self, hash: &str, index_key: Option<&str>) -> Result<(), GatewayError> {
        let ended = end(self.store.as_ref(), hash, index_key).await;
        // Counted unless this call found the record gone: its deletion was counted by whoever
        // made it, here or through the watch (so a logout repeating one old cookie many times
        // does not keep every cache miss from being cached).
        if !matches!(ended, Ok(false)) {
            self.evictions.fetch_add(1, Ordering::SeqCst);
        }
        self.drop_cached(hash);
        ended.map(drop)
    }

    /// Removes a session from the cache. The cache is written (and its version moved) only if
    /// it holds the session: a client repeating the logout of a session that is gone does not
    /// retire every thread's copy of every other session.
    fn evict(&self, hash: &str) {
        // (counted first: see `evictions`)
        self.evictions.fetch_add(1, Ordering::SeqCst);
        self.drop_cached(hash);
    }

    /// [`Sessions::evict`] without the count (which the caller made, or need not make).
    fn drop_cached(&self, hash: &str) {
        if self.cache.read().contains_key(hash) {
            self.cache.write().remove(hash);
        }
    }

    /// Empties the cache (a deletion may have been missed).
    fn clear(&self) {
        self.evictions.fetch_add(1, Ordering::SeqCst);
        self.cache.write().clear();
    }

    /// Ends every session of `user` (password change, deletion, "log out everywhere"); returns
    /// how many there were.
    pub async fn revoke_user(&self, user: &str) -> Result<usize, GatewayError> {
        let n = delete_user_sessions(self.store.as_ref(), user).await?;
        self.evictions.fetch_add(1, Ordering::SeqCst);
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
                            me.evict(hash);
                        }
                    }
                    Ok(kfsec_store::Event::Restarted { .. }) => me.clear(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "session watch lost; clearing the cache");
                        me.clear();
                    }
                }
            }
        })
    }

    /// Sessions alive now, read from the store (so every replica counts the same, on etcd too);
    /// at most `limit` records are read.
    pub async fn active(&self, limit: usize) -> Result<usize, StoreError> {
        let now = self.clock.now().as_secs();
        let (mut read, mut alive) = (0usize, 0usize);
        let mut after: Option<String> = None;
        while read < limit {
            let page = self.store.list(PREFIX, 500, after.as_deref()).await?;
            read += page.items.len();
            alive += page
                .items
                .iter()
                .filter(|kv| serde_json::from_slice::<SessionRecord>(&kv.value).is_ok_and(|r| r.expires_at > now))
                .count();
            match page.continue_key {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        Ok(alive)
    }

    /// Drops expired entries from the cache every `every`, until the task is dropped.
    pub fn spawn_prune(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let now = me.clock.now().as_secs();
                if me.cache.read().values().any(|e| e.expires_at <= now) {
                    me.cache.write().retain(|_, e| e.expires_at > now);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use kfsec_store::{KeyValue, MemoryStore};
    use kfsec_types::{ManualClock, SequenceRng, UnixTime};

    use super::*;

    const EVERY: Duration = Duration::from_secs(15 * 60);

    /// Answers re-checks from a script, recording the tokens it was given; `gate` holds each
    /// call until a permit is added.
    #[derive(Default)]
    struct Script {
        answers: Mutex<VecDeque<Refreshed>>,
        seen: Mutex<Vec<String>>,
        gate: Option<tokio::sync::Semaphore>,
    }

    impl Script {
        fn new(answers: impl IntoIterator<Item = Refreshed>) -> Self {
            Self {
                answers: Mutex::new(answers.into_iter().collect()),
                ..Self::default()
            }
        }
        fn seen(&self) -> Vec<String> {
            self.seen.lock().clone()
        }
    }

    impl Refresher for Script {
        fn refresh<'a>(&'a self, refresh_token: &'a str) -> BoxFuture<'a, Refreshed> {
            Box::pin(async move {
                self.seen.lock().push(refresh_token.to_owned());
                if let Some(gate) = &self.gate {
                    let _permit = gate.acquire().await;
                }
                self.answers
                    .lock()
                    .pop_front()
                    .unwrap_or_else(|| Refreshed::Unavailable("script ran out".into()))
            })
        }
    }

    fn valid(user: &str, groups: &[&str], token: &str) -> Refreshed {
        Refreshed::Valid {
            identity: Identity::new(user, groups.iter().map(|g| (*g).to_owned()).collect::<Vec<String>>()),
            refresh_token: token.into(),
        }
    }

    fn sessions_on(store: Arc<dyn Store>, clock: Arc<ManualClock>, revalidate: Option<Duration>) -> Arc<Sessions> {
        Sessions::new(
            store,
            clock,
            Arc::new(SequenceRng::default()),
            hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]),
            Duration::from_secs(24 * 3600),
            100,
            revalidate,
        )
    }

    fn setup(revalidate: Option<Duration>) -> (Arc<Sessions>, Arc<ManualClock>, Arc<dyn Store>) {
        let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000));
        let store: Arc<dyn Store> = MemoryStore::new(clock.clone());
        (sessions_on(store.clone(), clock.clone(), revalidate), clock, store)
    }

    fn alice() -> Identity {
        Identity::new("alice@example.com", vec!["team-a".to_owned()])
    }

    fn federated(token: &str) -> Option<Federated> {
        Some(Federated {
            connector: "entra".into(),
            refresh_token: token.into(),
        })
    }

    async fn record(store: &dyn Store) -> SessionRecord {
        let all = kfsec_store::list_all(store, PREFIX).await.unwrap();
        assert_eq!(all.items.len(), 1);
        serde_json::from_slice(&all.items[0].value).unwrap()
    }

    #[tokio::test]
    async fn a_sessions_login_keeps_its_subject_start_and_end() {
        let (s, clock, store) = setup(None);
        let cookie = s
            .create_login(&alice(), 1_799_999_999_000, "c3ViLTE", None)
            .await
            .unwrap();
        let want = kfsec_idp::SessionLogin {
            started_ms: 1_799_999_999_000,
            expires_at: 1_800_000_000 + 24 * 3600,
            subject: "c3ViLTE".into(),
        };
        assert_eq!(s.login_of(&cookie).await, Some((alice(), want.clone())));
        // From the record too (another replica, a restart).
        let other = sessions_on(store.clone(), clock.clone(), None);
        assert_eq!(other.login_of(&cookie).await, Some((alice(), want)));
        // Older sessions have none; a forged or ended cookie has no login.
        let plain = s.create(&alice(), 0).await.unwrap();
        assert_eq!(s.login_of(&plain).await.unwrap().1.subject, "");
        assert!(s.login_of(&format!("{}x", &cookie)).await.is_none());
        s.revoke(&cookie).await.unwrap();
        assert!(s.login_of(&cookie).await.is_none());
    }

    #[tokio::test]
    async fn the_cache_version_moves_with_every_change_and_only_then() {
        let (s, clock, _) = setup(None);
        let v0 = s.version();
        let cookie = s.create_login(&alice(), 0, "", None).await.unwrap();
        let v1 = s.version();
        assert!(v1 > v0, "a login");
        assert!(s.validate(&cookie).await.is_some());
        assert_eq!(s.version(), v1, "a check of a cached session changes nothing");
        s.revoke(&cookie).await.unwrap();
        let v2 = s.version();
        assert!(v2 > v1, "a logout");
        assert!(s.validate(&cookie).await.is_none());
        s.revoke(&cookie).await.unwrap();
        assert_eq!(s.version(), v2, "the logout of a session that is gone changes nothing");
        let other = s.create_login(&alice(), 0, "", None).await.unwrap();
        let prune = s.spawn_prune(Duration::from_millis(5));
        tokio::time::sleep(Duration::from_millis(30)).await;
        let v3 = s.version();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(s.version(), v3, "a prune that finds nothing expired changes nothing");
        clock.advance(Duration::from_secs(2 * 24 * 3600));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(s.version() > v3, "a prune that drops an expired session");
        assert!(s.validate(&other).await.is_none());
        prune.abort();
    }

    /// A store whose next `holding` reads of `key` each take the record at once but return it
    /// only when released: reads served before a write and delivered after it.
    struct LateReads {
        inner: Arc<dyn Store>,
        key: Mutex<String>,
        holding: std::sync::atomic::AtomicUsize,
        taken: tokio::sync::Notify,
        release: tokio::sync::Semaphore,
    }

    #[async_trait::async_trait]
    impl kfsec_store::forward::Forward for LateReads {
        fn inner(&self) -> &dyn Store {
            self.inner.as_ref()
        }

        async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
            let got = self.inner.get(key).await;
            if *self.key.lock() == key
                && self
                    .holding
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                self.taken.notify_one();
                // (each release lets one read through)
                if let Ok(permit) = self.release.acquire().await {
                    permit.forget();
                }
            }
            got
        }
    }

    /// Replicas A (on the store) and B (on a [`LateReads`] of it, holding reads of the session's
    /// record), and a session made at A that B has never served.
    async fn late_replicas() -> (Arc<LateReads>, Arc<Sessions>, Arc<Sessions>, String) {
        let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000));
        let inner: Arc<dyn Store> = MemoryStore::new(clock.clone());
        let late = Arc::new(LateReads {
            inner: inner.clone(),
            key: Mutex::default(),
            holding: 0.into(),
            taken: tokio::sync::Notify::new(),
            release: tokio::sync::Semaphore::new(0),
        });
        let a = sessions_on(inner, clock.clone(), None);
        let b = sessions_on(late.clone(), clock, None);
        let cookie = a.create_login(&alice(), 0, "", None).await.unwrap();
        *late.key.lock() = format!("{PREFIX}{}", b.open(&cookie).unwrap());
        (late, a, b, cookie)
    }

    #[tokio::test]
    async fn a_logout_racing_a_cache_miss_is_not_undone_by_its_read() {
        // The session is made at replica A; replica B has never served it.
        let (late, _a, b, cookie) = late_replicas().await;
        late.holding.store(1, Ordering::SeqCst);
        // A request at B misses B's cache and reads the record; before the read returns, the
        // session is logged out at B (its eviction finds nothing cached), then the read returns
        // the record as it was.
        let pending = tokio::spawn({
            let (b, cookie) = (b.clone(), cookie.clone());
            async move { b.validate(&cookie).await }
        });
        late.taken.notified().await;
        b.revoke(&cookie).await.unwrap();
        late.release.add_permits(1);
        // (that request overlapped the logout: either answer is right for it)
        let _ = pending.await.unwrap();
        assert!(
            b.validate(&cookie).await.is_none(),
            "a read begun before the logout revived the session"
        );
    }

    #[tokio::test]
    async fn an_answer_read_while_sessions_were_evicted_is_not_cached_nor_said_to_be() {
        let (late, a, b, cookie) = late_replicas().await;
        let others: Vec<String> = [
            a.create_login(&alice(), 0, "", None).await.unwrap(),
            a.create_login(&alice(), 0, "", None).await.unwrap(),
        ]
        .into();
        // Both of B's reads of the session are held while another session is logged out at B.
        late.holding.store(2, Ordering::SeqCst);
        let pending = tokio::spawn({
            let (b, cookie) = (b.clone(), cookie.clone());
            async move { b.check(&cookie, &Script::new([])).await }
        });
        for other in &others {
            late.taken.notified().await;
            b.revoke(other).await.unwrap();
            late.release.add_permits(1);
        }
        let checked = pending.await.unwrap().expect("the session is live");
        assert!(!checked.cached, "an answer not in the cache was said to be the cache's");
        assert!(!b.cache.read().contains_key(&b.open(&cookie).unwrap()));
        // The next check caches it, and says so.
        assert!(b.check(&cookie, &Script::new([])).await.unwrap().cached);
    }

    #[tokio::test]
    async fn only_a_logout_that_ends_a_session_counts_as_an_eviction() {
        let (s, _, _) = setup(None);
        let cookie = s.create_login(&alice(), 0, "", None).await.unwrap();
        let before = s.evictions.load(Ordering::SeqCst);
        s.revoke(&cookie).await.unwrap();
        let after = s.evictions.load(Ordering::SeqCst);
        assert_eq!(after, before + 1);
        // The same old cookie logged out again (as often as a client repeats it) ends nothing:
        // what the store reads for other sessions is still cached.
        for _ in 0..5 {
            s.revoke(&cookie).await.unwrap();
        }
        assert_eq!(s.evictions.load(Ordering::SeqCst), after);
    }

    #[tokio::test]
    async fn a_logout_at_one_replica_ends_the_session_cached_at_another() {
        let (a, clock, store) = setup(None);
        let b = sessions_on(store.clone(), clock.clone(), None);
        let watch = b.spawn_watch();
        let cookie = a.create_login(&alice(), 0, "c3ViLTE", None).await.unwrap();
        // B has served the session (its cache holds it), then A logs it out.
        assert!(b.validate(&cookie).await.is_some());
        assert!(b.login_of(&cookie).await.is_some());
        a.revoke(&cookie).await.unwrap();
        let mut gone = false;
        for _ in 0..200 {
            if b.validate(&cookie).await.is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone, "replica B still honours a logged-out session");
        // Nor can B mint a token for it ("Download kubeconfig" reads the login through B).
        assert!(b.login_of(&cookie).await.is_none());
        watch.abort();
    }

    #[tokio::test]
    async fn a_federated_session_is_rechecked_after_the_interval_and_follows_the_upstream() {
        let (s, clock, store) = setup(Some(EVERY));
        let cookie = s.create_with(&alice(), 0, federated("rt-1")).await.unwrap();
        // The refresh token lives in the record, never in the cookie.
        assert!(!cookie.contains("rt-1"));
        assert_eq!(record(store.as_ref()).await.upstream.unwrap().refresh_token, "rt-1");
        assert!(!format!("{:?}", record(store.as_ref()).await).contains("rt-1"));
        let up = Script::new([
            valid("alice@example.com", &["team-b"], "rt-2"),
            valid("alice@example.com", &["team-b", "team-c"], "rt-3"),
        ]);
        // Within the interval: no upstream call.
        clock.advance(EVERY - Duration::from_secs(1));
        assert_eq!(s.check(&cookie, &up).await.unwrap().identity, alice());
        assert!(up.seen().is_empty());
        // Due: re-checked once; the groups and the token follow the answer.
        clock.advance(Duration::from_secs(1));
        let Checked {
            identity: id,
            user_key: key,
            ..
        } = s.check(&cookie, &up).await.unwrap();
        assert_eq!(id.groups, ["team-b"]);
        assert_eq!(
            key,
            UserKey::of(&id.user),
            "the session carries its user's revocation key"
        );
        assert_eq!(up.seen(), ["rt-1"]);
        assert_eq!(record(store.as_ref()).await.upstream.unwrap().refresh_token, "rt-2");
        assert_eq!(s.check(&cookie, &up).await.unwrap().identity.groups, ["team-b"]);
        assert_eq!(up.seen().len(), 1);
        // The next interval uses the rotated token.
        clock.advance(EVERY);
        assert_eq!(
            s.check(&cookie, &up).await.unwrap().identity.groups,
            ["team-b", "team-c"]
        );
        assert_eq!(up.seen(), ["rt-1", "rt-2"]);
        // A restart (empty cache) reads the updated identity from the store.
        let again = sessions_on(store.clone(), clock.clone(), Some(EVERY));
        assert_eq!(again.validate(&cookie).await.unwrap().0.groups, ["team-b", "team-c"]);
    }

    #[tokio::test]
    async fn a_refusal_ends_the_session_before_the_request_is_served() {
        let (s, clock, store) = setup(Some(EVERY));
        let cookie = s.create_with(&alice(), 0, federated("rt-1")).await.unwrap();
        clock.advance(EVERY);
        let up = Script::new([Refreshed::Refused("invalid_grant: user removed upstream".into())]);
        assert!(s.check(&cookie, &up).await.is_none());
        assert!(s.validate(&cookie).await.is_none());
        assert!(
            kfsec_store::list_all(store.as_ref(), PREFIX)
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert!(
            kfsec_store::list_all(store.as_ref(), USER_INDEX)
                .await
                .unwrap()
                .items
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_passing_failure_keeps_the_session_and_retries_later() {
        let (s, clock, _) = setup(Some(EVERY));
        let cookie = s.create_with(&alice(), 0, federated("rt-1")).await.unwrap();
        clock.advance(EVERY);
        let up = Script::new([
            Refreshed::Unavailable("temporarily_unavailable: upstream timed out".into()),
            Refreshed::Refused("invalid_grant".into()),
        ]);
        assert_eq!(s.check(&cookie, &up).await.unwrap().identity, alice());
        // Not retried at every request while the upstream is down…
        clock.advance(RETRY_AFTER_FAILURE - Duration::from_secs(1));
        assert!(s.check(&cookie, &up).await.is_some());
        assert_eq!(up.seen().len(), 1);
        // …but after the pause, with the same token; a refusal then ends it.
        clock.advance(Duration::from_secs(1));
        assert!(s.check(&cookie, &up).await.is_none());
        assert_eq!(up.seen(), ["rt-1", "rt-1"]);
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_recheck() {
        let (s, clock, _) = setup(Some(EVERY));
        let cookie = s.create_with(&alice(), 0, federated("rt-1")).await.unwrap();
        clock.advance(EVERY);
        let up = Arc::new(Script {
            gate: Some(tokio::sync::Semaphore::new(0)),
            ..Script::new([valid("alice@example.com", &["team-b"], "rt-2")])
        });
        let first = {
            let (s, up, cookie) = (s.clone(), up.clone(), cookie.clone());
            tokio::spawn(async move { s.check(&cookie, up.as_ref()).await })
        };
        while up.seen().is_empty() {
            tokio::task::yield_now().await;
        }
        // While the first re-check is under way, other requests go on with the last confirmed
        // identity and call nobody.
        for _ in 0..5 {
            let other = tokio::time::timeout(Duration::from_secs(5), s.check(&cookie, up.as_ref()));
            assert_eq!(other.await.expect("waited for the re-check").unwrap().identity, alice());
        }
        assert_eq!(up.seen().len(), 1);
        up.gate.as_ref().unwrap().add_permits(1);
        assert_eq!(first.await.unwrap().unwrap().identity.groups, ["team-b"]);
        assert_eq!(s.check(&cookie, up.as_ref()).await.unwrap().identity.groups, ["team-b"]);
        assert_eq!(up.seen().len(), 1);
    }

    #[tokio::test]
    async fn a_recheck_by_another_replica_is_not_repeated() {
        let (a, clock, store) = setup(Some(EVERY));
        let b = sessions_on(store.clone(), clock.clone(), Some(EVERY));
        let cookie = a.create_with(&alice(), 0, federated("rt-1")).await.unwrap();
        assert!(b.validate(&cookie).await.is_some()); // b caches the session
        clock.advance(EVERY);
        let up = Script::new([valid("alice@example.com", &["team-b"], "rt-2")]);
        assert_eq!(a.check(&cookie, &up).await.unwrap().identity.groups, ["team-b"]);
        // b's cache is stale and due; b reads the record, sees the fresh check and its groups.
        let none = Script::new([]);
        assert_eq!(b.check(&cookie, &none).await.unwrap().identity.groups, ["team-b"]);
        assert!(none.seen().is_empty());
    }

    #[tokio::test]
    async fn another_user_upstream_ends_the_session() {
        let (s, clock, _) = setup(Some(EVERY));
        let cookie = s.create_with(&alice(), 0, federated("rt-1")).await.unwrap();
        clock.advance(EVERY);
        let up = Script::new([valid("mallory@example.com", &[], "rt-2")]);
        assert!(s.check(&cookie, &up).await.is_none());
        assert!(s.validate(&cookie).await.is_none());
    }

    #[tokio::test]
    async fn local_sessions_and_revalidation_off_are_never_rechecked() {
        let (s, clock, store) = setup(Some(EVERY));
        let local = s.create(&alice(), 0).await.unwrap();
        let (off, _, off_store) = setup(None);
        let fed = off.create_with(&alice(), 0, federated("rt-1")).await.unwrap();
        // With revalidation off the token is not even kept.
        assert!(record(off_store.as_ref()).await.upstream.is_none());
        assert!(record(store.as_ref()).await.upstream.is_none());
        clock.advance(EVERY * 4);
        let none = Script::new([]);
        assert!(s.check(&local, &none).await.is_some());
        assert!(off.check(&fed, &none).await.is_some());
        assert!(none.seen().is_empty());
    }
}
