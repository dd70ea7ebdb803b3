//! kfsec's operational metrics beyond the front door's own (`gateway::metrics`): store latency
//! ([`Timed`]), authorization decisions of the mounted surfaces ([`CountedAuthz`]), and the
//! values read when `/metrics` is scraped ([`Live`]: certificate expiry, signing-key age,
//! readiness) or refreshed in the background ([`spawn_gauges`]: sessions and lockouts, counted
//! from the store so every replica reports the cluster's number, on etcd too).
//!
//! Invariants: every label value comes from a fixed set or from configuration (store operation
//! names, surface names, certificate names), never from a request; nothing here holds or prints a
//! secret; a metric never changes an answer (the wrappers return the inner result unchanged).

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::{Duration, Instant};

use kfsec_api::{Attributes, Authorize, Decision, SubjectRules};
use kfsec_gateway::metrics::Decisions;
use kfsec_store::{KeyValue, ListPage, Revision, Store, StoreError, Upkeep, WatchStream};
use kfsec_types::identity::UserInfo;
use kfsec_types::{Clock, UnixTime};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

type LatencyFamily = Family<OpLabel, Histogram, fn() -> Histogram>;

/// The store as the components see it, each call's duration observed in
/// `kfsec_store_operation_duration_seconds{op}` (op: get, list, create, update, put, delete,
/// take, revision, watch — opening the watch, not its life).
pub struct Timed {
    inner: Arc<dyn Store>,
    latency: LatencyFamily,
}

impl Timed {
    /// Wraps `inner`, registering the histogram in `registry`.
    pub fn new(inner: Arc<dyn Store>, registry: &mut Registry) -> Self {
        let latency: LatencyFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16)));
        registry.register(
            "kfsec_store_operation_duration_seconds",
            "Store call latency by operation (get, list, create, update, put, delete, take, revision, watch)",
            latency.clone(),
        );
        Self { inner, latency }
    }

    /// Runs `call`, observing how long it took under `op`.
    async fn timed<T>(&self, op: &'static str, call: impl std::future::Future<Output = T>) -> T {
        let start = started();
        let r = call.await;
        self.latency
            .get_or_create(&OpLabel { op })
            .observe(start.elapsed().as_secs_f64());
        r
    }
}

/// A monotonic start for a latency measurement (metrics only, never logic time).
#[allow(clippy::disallowed_methods)]
fn started() -> Instant {
    Instant::now()
}

#[async_trait::async_trait]
impl Store for Timed {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.timed("get", self.inner.get(key)).await
    }
    async fn list(&self, prefix: &str, limit: usize, start_after: Option<&str>) -> Result<ListPage, StoreError> {
        self.timed("list", self.inner.list(prefix, limit, start_after)).await
    }
    async fn create(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.timed("create", self.inner.create(key, value, ttl)).await
    }
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> Result<Revision, StoreError> {
        self.timed("update", self.inner.update(key, value, expected, ttl)).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.timed("put", self.inner.put(key, value, ttl)).await
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        self.timed("delete", self.inner.delete(key, expected)).await
    }
    async fn take(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.timed("take", self.inner.take(key)).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.timed("revision", self.inner.revision()).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.timed("watch", self.inner.watch(prefix, after)).await
    }
    fn upkeep(&self) -> Option<&dyn Upkeep> {
        self.inner.upkeep()
    }
    fn check_current(&self) -> Result<(), StoreError> {
        self.inner.check_current()
    }
}

/// The authorizer one surface consults, each decision counted under the surface's name.
pub struct CountedAuthz {
    inner: Arc<dyn Authorize>,
    surface: &'static str,
    decisions: Decisions,
}

impl CountedAuthz {
    /// `inner`'s decisions counted as `surface`'s.
    pub fn wrap(inner: Arc<dyn Authorize>, surface: &'static str, decisions: &Decisions) -> Arc<dyn Authorize> {
        Arc::new(Self {
            inner,
            surface,
            decisions: decisions.clone(),
        })
    }
}

impl Authorize for CountedAuthz {
    fn authorize(&self, attributes: &Attributes) -> Decision {
        let d = self.inner.authorize(attributes);
        self.decisions.record(self.surface, d.is_allowed());
        d
    }
    fn rules_for(&self, user: &UserInfo, namespace: &str) -> SubjectRules {
        self.inner.rules_for(user, namespace)
    }
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.changes()
    }
}

/// Certificates by name and end of validity, read at each scrape.
pub type Certificates = Arc<dyn Fn() -> Vec<(String, UnixTime)> + Send + Sync>;

/// The values computed when `/metrics` is scraped.
pub struct Live {
    /// The live PKI's certificates.
    pub certificates: Certificates,
    /// How long the current ID-token signing key has been signing.
    pub signing_key_age: Arc<dyn Fn() -> Duration + Send + Sync>,
    /// What `/readyz` answers.
    pub ready: kfsec_gateway::ReadyCheck,
    /// Now.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = self.clock.now().as_secs();
        let certs = (self.certificates)();
        if !certs.is_empty() {
            let mut family = encoder.encode_descriptor(
                "kfsec_certificate_expiry_seconds",
                "Seconds until the certificate's end of validity (negative once expired), by certificate: ca, ca-previous, front-door, gateway-workload, webhook-<service>",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (name, not_after) in certs {
                let left =
                    i64::try_from(not_after.as_secs()).unwrap_or(i64::MAX) - i64::try_from(now).unwrap_or(i64::MAX);
                ConstGauge::new(left).encode(family.encode_family(&NameLabel { name })?)?;
            }
        }
        let age = i64::try_from((self.signing_key_age)().as_secs()).unwrap_or(i64::MAX);
        let g = ConstGauge::new(age);
        g.encode(encoder.encode_descriptor(
            "kfsec_signing_key_age_seconds",
            "Seconds since the current ID-token signing key began signing",
            None,
            g.metric_type(),
        )?)?;
        let ready = ConstGauge::new(i64::from((self.ready)().is_ok()));
        ready.encode(encoder.encode_descriptor(
            "kfsec_ready",
            "1 while /readyz answers ready, 0 otherwise",
            None,
            ready.metric_type(),
        )?)
    }
}

/// Gauges counted from the store by [`spawn_gauges`].
#[derive(Clone, Debug, Default)]
pub struct StoreGauges {
    sessions: Gauge<i64, AtomicI64>,
    lockouts: Gauge<i64, AtomicI64>,
}

impl StoreGauges {
    /// New gauges, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let g = Self::default();
        registry.register(
            "kfsec_sessions_active",
            "Gatekeeper sessions alive (counted from the store every few seconds: every replica's value is the cluster's)",
            g.sessions.clone(),
        );
        registry.register(
            "kfsec_lockouts_active",
            "Login lockouts in force, by account and address pair or address (counted from the store every few seconds)",
            g.lockouts.clone(),
        );
        g
    }
}

/// At most this many records are read per count.
const COUNT_LIMIT: usize = 200_000;

/// Counts sessions and lockouts from the store now and every `every`; a failed count keeps the
/// last value (logged).
pub fn spawn_gauges(
    gauges: StoreGauges,
    sessions: Arc<kfsec_gateway::Sessions>,
    lockout: kfsec_idp::lockout::Lockout,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match sessions.active(COUNT_LIMIT).await {
                Ok(n) => {
                    gauges.sessions.set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                Err(e) => tracing::debug!(error = %e, "counting sessions for kfsec_sessions_active failed"),
            }
            match lockout.active(COUNT_LIMIT).await {
                Ok(n) => {
                    gauges.lockouts.set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                Err(e) => tracing::debug!(error = %e, "counting lockouts for kfsec_lockouts_active failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kfsec_types::ManualClock;

    fn scrape(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[tokio::test]
    async fn store_calls_are_timed_by_operation_and_answers_are_unchanged() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let mut registry = Registry::default();
        let store = Timed::new(kfsec_store::MemoryStore::new(clock), &mut registry);
        store.create("/a", b"1".to_vec(), None).await.unwrap();
        assert_eq!(store.get("/a").await.unwrap().unwrap().value, b"1");
        assert!(matches!(
            store.create("/a", b"2".to_vec(), None).await,
            Err(StoreError::AlreadyExists(_))
        ));
        let text = scrape(&registry);
        assert!(
            text.contains("kfsec_store_operation_duration_seconds_count{op=\"create\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("kfsec_store_operation_duration_seconds_count{op=\"get\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn live_values_are_read_at_scrape_time() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let mut registry = Registry::default();
        let not_after = Arc::new(parking_lot::Mutex::new(UnixTime::from_secs(1_100)));
        let na = not_after.clone();
        registry.register_collector(Box::new(Live {
            certificates: Arc::new(move || vec![("front-door".to_owned(), *na.lock())]),
            signing_key_age: Arc::new(|| Duration::from_secs(42)),
            ready: Arc::new(|| Err("starting".into())),
            clock: clock.clone(),
        }));
        let text = scrape(&registry);
        assert!(
            text.contains("kfsec_certificate_expiry_seconds{name=\"front-door\"} 100"),
            "{text}"
        );
        assert!(text.contains("kfsec_signing_key_age_seconds 42"), "{text}");
        assert!(text.contains("kfsec_ready 0"), "{text}");
        // Renewed: the next scrape sees the new end at once.
        *not_after.lock() = UnixTime::from_secs(5_000);
        clock.advance(Duration::from_secs(500));
        let text = scrape(&registry);
        assert!(
            text.contains("kfsec_certificate_expiry_seconds{name=\"front-door\"} 3500"),
            "{text}"
        );
    }
}
