//! The store kfsec runs on (`store:`): the redb file under the data directory, or an etcd
//! cluster reached with retries at startup; and for etcd, the contact tracking that lets caches
//! and `/readyz` know how current the process's view of the store is.
//!
//! Invariants: an unreachable etcd at startup is retried with capped backoff (200 ms → 5 s),
//! each attempt logged naming every endpoint and its failure, while `/readyz` answers 503 naming
//! the store problem; a failure of etcd to answer (refused, no leader, timeout) reaches callers
//! as [`StoreError::Unavailable`] (503 in every protocol), never as an internal error; the
//! last successful contact (any answer, any watch event, the 1 s health probe) is one atomic,
//! and [`Store::check_current`] fails once it is older than `staleLimit`, so cached sessions and
//! authorization fail closed instead of outliving a change (a logout, a revoked binding) they
//! could not see; nothing here logs a credential.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kfsec_store::{KeyValue, ListPage, Revision, Store, StoreError, Upkeep, WatchStream};
use kfsec_store_etcd::{EtcdConfig, EtcdError, EtcdStore};
use kfsec_types::{Clock, Rng};
use parking_lot::Mutex;

use crate::config::store::StoreSettings;
use crate::{DataDir, ServerError};

/// How often the etcd health probe runs at most (also the age of the answer `/readyz` serves);
/// more often with a short `staleLimit` (a quarter of it), so that an idle replica never goes
/// stale while etcd answers.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// `/readyz` fails when nothing has been heard from etcd for this long, even if the last
/// probe's answer was good (a probe stuck on a frozen member).
const READY_CONTACT: Duration = Duration::from_secs(8);

/// The readiness of the store as `/readyz` reports it, and the last contact with it.
pub struct StoreHealth {
    clock: Arc<dyn Clock>,
    /// Unix milliseconds of the last successful answer from the store; 0 = never.
    last_contact: AtomicU64,
    stale_limit: Duration,
    /// `None` = healthy; `Some(reason)` = what `/readyz` says.
    problem: Mutex<Option<String>>,
    /// A shared store (etcd): contact matters. A local one is always current.
    shared: bool,
}

impl StoreHealth {
    /// The health of a store described by `settings`; `problem` is set until the store is open.
    pub fn new(settings: &StoreSettings, clock: Arc<dyn Clock>) -> Arc<Self> {
        let (shared, stale_limit) = match settings {
            StoreSettings::Redb => (false, Duration::MAX),
            StoreSettings::Etcd { stale_limit, .. } => (true, *stale_limit),
        };
        Arc::new(Self {
            clock,
            last_contact: AtomicU64::new(0),
            stale_limit,
            problem: Mutex::new(Some("store: opening".into())),
            shared,
        })
    }

    fn now_ms(&self) -> u64 {
        self.clock.now().as_millis()
    }

    /// Records a successful answer from the store.
    pub fn touch(&self) {
        self.last_contact.fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    /// How long ago the store last answered (`None`: never).
    pub fn since_contact(&self) -> Option<Duration> {
        match self.last_contact.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(self.now_ms().saturating_sub(t))),
        }
    }

    fn set_problem(&self, p: Option<String>) {
        *self.problem.lock() = p;
    }

    /// `Err(reason)` when the store is not fit to serve (for `/readyz`).
    pub fn ready(&self) -> Result<(), String> {
        if let Some(p) = self.problem.lock().clone() {
            return Err(p);
        }
        if self.shared {
            match self.since_contact() {
                Some(age) if age <= READY_CONTACT => {}
                Some(age) => return Err(format!("store: no answer from etcd for {}s", age.as_secs())),
                None => return Err("store: no answer from etcd yet".into()),
            }
        }
        Ok(())
    }

    /// [`Store::check_current`]: `Err(Unavailable)` once the last contact is older than the
    /// stale limit.
    pub fn check_current(&self) -> Result<(), StoreError> {
        if !self.shared {
            return Ok(());
        }
        let last = self.last_contact.load(Ordering::Relaxed);
        let limit = u64::try_from(self.stale_limit.as_millis()).unwrap_or(u64::MAX);
        if last == 0 || self.now_ms().saturating_sub(last) > limit {
            return Err(StoreError::Unavailable(format!(
                "no contact with the store for more than {}s (store.staleLimit)",
                self.stale_limit.as_secs()
            )));
        }
        Ok(())
    }
}

/// The store kfsec runs on and, for etcd, the handle the health probe uses.
pub struct Opened {
    /// The store (for etcd: not yet sealed nor tracked).
    pub store: Arc<dyn Store>,
    /// The etcd store itself (health, leader election).
    pub etcd: Option<EtcdStore>,
}

/// Opens the configured store. etcd: connects, retrying an unreachable cluster with backoff
/// (200 ms doubling to 5 s) for as long as it takes, logging each attempt with the endpoints
/// and keeping `health`'s problem (what `/readyz` says) current; a configuration problem (a TLS
/// file, a bad endpoint) fails at once.
pub async fn open(
    settings: &StoreSettings,
    dir: &DataDir,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    health: &StoreHealth,
) -> Result<Opened, ServerError> {
    let config = match settings {
        StoreSettings::Redb => {
            let store: Arc<dyn Store> = crate::open_store(dir, clock)?;
            health.set_problem(None);
            return Ok(Opened { store, etcd: None });
        }
        StoreSettings::Etcd { config, .. } => config,
    };
    let etcd = connect_retrying(config, clock, rng, health).await?;
    health.touch();
    health.set_problem(None);
    tracing::info!(endpoints = %config.endpoints.join(","), prefix = %etcd.prefix(), "connected to etcd");
    Ok(Opened {
        store: Arc::new(etcd.clone()),
        etcd: Some(etcd),
    })
}

async fn connect_retrying(
    config: &EtcdConfig,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    health: &StoreHealth,
) -> Result<EtcdStore, ServerError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1u32;
    loop {
        match kfsec_store_etcd::connect(config, clock.clone(), rng.clone()).await {
            Ok(s) => return Ok(s),
            Err(EtcdError::Unreachable(failures)) => {
                for (endpoint, cause) in &failures {
                    tracing::warn!(%endpoint, %cause, attempt, retry_in_ms = delay.as_millis(), "etcd endpoint not reachable; retrying");
                }
                let named = failures
                    .iter()
                    .map(|(e, c)| format!("{e} ({c})"))
                    .collect::<Vec<_>>()
                    .join("; ");
                health.set_problem(Some(format!(
                    "store: no etcd endpoint reachable (attempt {attempt}): {named}"
                )));
            }
            Err(e) => return Err(ServerError::Store(StoreError::Backend(e.to_string()))),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
        attempt = attempt.saturating_add(1);
    }
}

/// Probes etcd every second or more often (see [`PROBE_EVERY`]; a quorum read through any member): records the contact, and sets
/// or clears what `/readyz` reports. Logs each change of state once.
pub fn spawn_probe(etcd: EtcdStore, health: Arc<StoreHealth>) -> tokio::task::JoinHandle<()> {
    let every = (health.stale_limit / 4).clamp(Duration::from_millis(250), PROBE_EVERY);
    tokio::spawn(async move {
        let failing = AtomicBool::new(false);
        loop {
            match etcd.health().await {
                Ok(_) => {
                    health.touch();
                    health.set_problem(None);
                    if failing.swap(false, Ordering::Relaxed) {
                        tracing::info!("etcd answers again; ready");
                    }
                }
                Err(e) => {
                    if !failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "etcd health check failed; not ready");
                    }
                    health.set_problem(Some(format!("store: etcd health check failed: {e}")));
                }
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// Whether an etcd failure means "cannot reach the cluster now" (as opposed to a bad request or
/// a corrupt value): refused connections, no leader, timeouts, broken transports.
fn transient(message: &str) -> bool {
    const MARKS: [&str; 11] = [
        "tcp connect error",
        "Connection refused",
        "no leader",
        "no answer within",
        "transport error",
        "Unavailable",
        "DeadlineExceeded",
        "Deadline expired",
        "timed out",
        "connection reset",
        "broken pipe",
    ];
    MARKS.iter().any(|m| message.contains(m))
}

/// The store as the components see it on etcd: every answer counts as contact, and failures to
/// reach etcd become [`StoreError::Unavailable`].
pub struct Tracked {
    inner: Arc<dyn Store>,
    health: Arc<StoreHealth>,
}

impl Tracked {
    /// Wraps `inner`, recording contact in `health`.
    pub fn new(inner: Arc<dyn Store>, health: Arc<StoreHealth>) -> Self {
        Self { inner, health }
    }

    fn seen<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        match r {
            Ok(v) => {
                self.health.touch();
                Ok(v)
            }
            Err(e) => Err(self.map_err(e)),
        }
    }

    fn map_err(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Backend(m) if transient(&m) => {
                // The renderers log the refusal (with an incident id); this is the detail.
                tracing::debug!(error = %m, "etcd did not answer");
                StoreError::Unavailable("etcd did not answer".into())
            }
            // A contract answer (not found, conflict…) is an answer.
            e @ (StoreError::NotFound(_)
            | StoreError::AlreadyExists(_)
            | StoreError::Conflict { .. }
            | StoreError::Compacted { .. }) => {
                self.health.touch();
                e
            }
            e => e,
        }
    }
}

#[async_trait::async_trait]
impl Store for Tracked {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.seen(self.inner.get(key).await)
    }
    async fn list(&self, prefix: &str, limit: usize, start_after: Option<&str>) -> Result<ListPage, StoreError> {
        self.seen(self.inner.list(prefix, limit, start_after).await)
    }
    async fn create(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.seen(self.inner.create(key, value, ttl).await)
    }
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> Result<Revision, StoreError> {
        self.seen(self.inner.update(key, value, expected, ttl).await)
    }
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.seen(self.inner.put(key, value, ttl).await)
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        self.seen(self.inner.delete(key, expected).await)
    }
    async fn take(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.seen(self.inner.take(key).await)
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.seen(self.inner.revision().await)
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let mut rx = self.seen(self.inner.watch(prefix, after).await)?;
        let (tx, out) = tokio::sync::mpsc::channel(64);
        let health = self.health.clone();
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    _ = tx.closed() => return,
                    i = rx.recv() => i,
                };
                let Some(item) = item else { return };
                let item = match item {
                    Ok(ev) => {
                        health.touch();
                        Ok(ev)
                    }
                    Err(StoreError::Backend(m)) if transient(&m) => {
                        Err(StoreError::Unavailable(format!("etcd watch: {m}")))
                    }
                    Err(e) => Err(e),
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(out)
    }
    fn upkeep(&self) -> Option<&dyn Upkeep> {
        self.inner.upkeep()
    }
    fn check_current(&self) -> Result<(), StoreError> {
        self.health.check_current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kfsec_types::{ManualClock, UnixTime};

    fn etcd_settings(stale: u64) -> StoreSettings {
        StoreSettings::Etcd {
            config: Box::new(EtcdConfig::new(vec!["http://127.0.0.1:1".into()], "/kfsec")),
            stale_limit: Duration::from_secs(stale),
        }
    }

    #[test]
    fn a_shared_store_is_current_until_the_stale_limit_after_the_last_contact() {
        let clock = ManualClock::new(UnixTime::from_millis(1_000_000));
        let h = StoreHealth::new(&etcd_settings(2), clock.clone());
        assert!(h.check_current().is_err(), "never heard from: not current");
        assert!(h.ready().is_err());
        h.touch();
        h.set_problem(None);
        assert!(h.check_current().is_ok());
        assert!(h.ready().is_ok());
        clock.advance(Duration::from_millis(2_000));
        assert!(h.check_current().is_ok(), "at the limit: still current");
        clock.advance(Duration::from_millis(1));
        let e = h.check_current().unwrap_err();
        assert!(e.is_unavailable() && e.to_string().contains("staleLimit"), "{e}");
        h.touch();
        assert!(h.check_current().is_ok(), "contact again: current again");
    }

    #[test]
    fn the_rbac_cache_allows_nothing_while_the_store_is_stale() {
        use kfsec_api::{Attributes, Authorize};
        let clock = ManualClock::new(UnixTime::from_millis(1_000_000));
        let h = StoreHealth::new(&etcd_settings(2), clock.clone());
        let cache = crate::rbac::RbacCache::new();
        let admin = Attributes::resource(
            "root",
            vec![kfsec_types::identity::SYSTEM_MASTERS.to_owned()],
            "delete",
            "",
            "namespaces",
            "",
        );
        assert!(cache.authorize(&admin).is_allowed(), "unguarded: memory only");
        cache.guard_with(Arc::new(Tracked::new(
            kfsec_store::MemoryStore::new(clock.clone()),
            h.clone(),
        )));
        assert!(!cache.authorize(&admin).is_allowed(), "never heard from the store");
        h.touch();
        assert!(cache.authorize(&admin).is_allowed());
        clock.advance(Duration::from_millis(2_001));
        assert!(!cache.authorize(&admin).is_allowed(), "past staleLimit: fail closed");
    }

    #[test]
    fn a_local_store_is_always_current_and_ready_once_open() {
        let clock = ManualClock::new(UnixTime::from_millis(1_000_000));
        let h = StoreHealth::new(&StoreSettings::Redb, clock.clone());
        assert_eq!(h.ready().unwrap_err(), "store: opening");
        h.set_problem(None);
        clock.advance(Duration::from_secs(86_400));
        assert!(h.check_current().is_ok() && h.ready().is_ok());
    }

    #[test]
    fn unreachable_etcd_errors_are_unavailable_and_contract_answers_are_not() {
        let clock = ManualClock::new(UnixTime::from_millis(1_000_000));
        let h = StoreHealth::new(&etcd_settings(60), clock.clone());
        let t = Tracked::new(kfsec_store::MemoryStore::new(clock), h.clone());
        for m in [
            "etcd: grpc request error: status: Unavailable, message: \"tcp connect error\"",
            "etcd: no answer within 4s",
            "etcd: etcdserver: no leader",
        ] {
            assert!(t.map_err(StoreError::Backend(m.into())).is_unavailable(), "{m}");
        }
        let e = t.map_err(StoreError::Backend("corrupt value at etcd key \"/kfsec/x\"".into()));
        assert!(!e.is_unavailable());
        assert!(h.since_contact().is_none());
        assert!(!t.map_err(StoreError::NotFound("/x".into())).is_unavailable());
        assert!(h.since_contact().is_some(), "a not-found is an answer");
    }
}
