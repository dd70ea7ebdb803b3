//! One leader for the singleton work of a kfsec replica set: the election
//! ([`kfsec_store::leader`] over the store), the `kfsec_leader` gauge, and the store upkeep the
//! leader runs on a shared store (TTL sweeping, compaction on kube-apiserver's schedule).
//!
//! Invariants: on a store this process owns alone (redb, memory) the election is won at once
//! ([`LeaderConfig::exclusive`]); `kfsec_leader` is 1 exactly while this replica's singleton
//! work may run; compaction keeps at least one whole interval of history (it compacts at the
//! revision seen one interval earlier, never at start), so a watch-fed cache that is less than
//! an interval behind never has to re-list.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use kfsec_store::leader::{Elector, LeaderConfig, Leadership};
use kfsec_store::{Revision, Store};
use kfsec_types::{Clock, Rng};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::ServerError;

/// How often the leader deletes expired records of a shared store (reads hide them anyway; the
/// sweep gives them their Delete events and frees space).
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How often the leader compacts a shared store's history (kube-apiserver's
/// `--etcd-compaction-interval` default).
pub const COMPACT_EVERY: Duration = Duration::from_secs(300);

/// Starts this replica's candidacy: identity `host-<random>`, the default timing (lease 6 s,
/// renew deadline 4 s, retry 1 s), exclusive when the store has no upkeep (not shared). Registers
/// `kfsec_leader`; returns the election and the task keeping the gauge.
pub fn elect(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    host: Option<String>,
    registry: &mut Registry,
) -> Result<(Leadership, JoinHandle<()>), ServerError> {
    let suffix = kfsec_types::hex::encode(&kfsec_types::random_array::<6>(rng.as_ref()));
    let identity = format!("{}-{suffix}", host.as_deref().unwrap_or("kfsec"));
    let exclusive = store.upkeep().is_none();
    let config = LeaderConfig {
        exclusive,
        ..LeaderConfig::new(identity)
    };
    let leadership = Elector::new(store, config, clock, rng)?.spawn();
    let gauge = Gauge::<i64, AtomicI64>::default();
    registry.register(
        "kfsec_leader",
        "1 on the replica that runs the singleton work (profile controller, key rotation, store upkeep), 0 elsewhere",
        gauge.clone(),
    );
    let mut leading = leadership.subscribe();
    let task = tokio::spawn(async move {
        loop {
            gauge.set(i64::from(*leading.borrow_and_update()));
            if leading.changed().await.is_err() {
                gauge.set(0);
                return;
            }
        }
    });
    Ok((leadership, task))
}

/// kube-apiserver's compaction schedule: each round compacts at the revision the previous round
/// saw, so at least one interval of history survives; the first round (at start or after a
/// takeover) only records.
#[derive(Debug, Default)]
pub struct CompactionSchedule {
    previous: Option<Revision>,
}

impl CompactionSchedule {
    /// One round at the store's `current` revision: the revision to compact at, if any.
    pub fn round(&mut self, current: Revision) -> Option<Revision> {
        self.previous.replace(current).filter(|&p| p > 0)
    }
}

/// The leader's upkeep of a shared store until aborted: sweeps every `sweep_every`, compacts
/// every `compact_every` ([`CompactionSchedule`]). Returns at once for a store without upkeep.
pub async fn upkeep(store: Arc<dyn Store>, sweep_every: Duration, compact_every: Duration) {
    if store.upkeep().is_none() {
        return;
    }
    let mut schedule = CompactionSchedule::default();
    let mut sweep = tokio::time::interval(sweep_every);
    let mut compact = tokio::time::interval(compact_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    compact.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(up) = store.upkeep() else { return };
        tokio::select! {
            _ = sweep.tick() => match up.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(swept = n, "deleted expired records"),
                Err(e) => tracing::warn!(error = %e, "sweeping expired records failed; retrying"),
            },
            _ = compact.tick() => {
                let at = match store.revision().await {
                    Ok(current) => schedule.round(current),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the store revision for compaction failed; retrying");
                        None
                    }
                };
                if let Some(at) = at {
                    match up.compact_before(at).await {
                        Ok(()) => tracing::info!(revision = at, "compacted the store's history"),
                        Err(e) => tracing::warn!(error = %e, revision = at, "compaction failed; retrying at the next interval"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kfsec_store::{MemoryStore, StoreError, Upkeep};
    use kfsec_types::{ManualClock, UnixTime};
    use parking_lot::Mutex;

    use super::*;

    /// A memory store that says it is shared and records the upkeep asked of it.
    struct Shared {
        inner: Arc<MemoryStore>,
        sweeps: Mutex<usize>,
        compactions: Mutex<Vec<Revision>>,
    }

    #[async_trait::async_trait]
    impl Upkeep for Shared {
        async fn sweep(&self) -> Result<usize, StoreError> {
            *self.sweeps.lock() += 1;
            Ok(0)
        }
        async fn compact_before(&self, revision: Revision) -> Result<(), StoreError> {
            self.compactions.lock().push(revision);
            Ok(())
        }
    }

    impl kfsec_store::forward::Forward for Shared {
        fn inner(&self) -> &dyn Store {
            self.inner.as_ref()
        }
        fn upkeep(&self) -> Option<&dyn Upkeep> {
            Some(self)
        }
    }

    /// The leader's loop sweeps on its interval and compacts each round at the revision the
    /// round before saw (never at its start); a local store gets no upkeep loop at all.
    #[tokio::test]
    async fn upkeep_sweeps_and_compacts_one_interval_behind() {
        let store = Arc::new(Shared {
            inner: MemoryStore::new(ManualClock::new(UnixTime::from_secs(1_700_000_000))),
            sweeps: Mutex::new(0),
            compactions: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(upkeep(
            store.clone(),
            Duration::from_millis(20),
            Duration::from_millis(100),
        ));
        // Writes go on between rounds: each round sees a newer revision.
        let mut seen = Vec::new();
        for i in 0..40u8 {
            store.put("/k", vec![i], None).await.unwrap();
            seen.push(store.revision().await.unwrap());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        assert!(*store.sweeps.lock() >= 5, "swept {} times", store.sweeps.lock());
        let compactions = store.compactions.lock().clone();
        assert!(compactions.len() >= 2, "{compactions:?}");
        // Never at the start (the first round records revision 0 or the first write), always
        // behind the latest write, and increasing.
        assert!(compactions.windows(2).all(|w| w[0] <= w[1]), "{compactions:?}");
        assert!(*compactions.last().unwrap() < *seen.last().unwrap());
        // A store this process owns alone: the loop ends at once.
        let local: Arc<dyn Store> = MemoryStore::new(ManualClock::new(UnixTime::from_secs(1_700_000_000)));
        tokio::time::timeout(
            Duration::from_secs(1),
            upkeep(local, Duration::from_millis(1), Duration::from_millis(1)),
        )
        .await
        .unwrap();
    }

    #[test]
    fn compaction_keeps_one_interval_and_never_runs_at_start() {
        let mut s = CompactionSchedule::default();
        assert_eq!(s.round(100), None, "the first round only records");
        assert_eq!(s.round(250), Some(100));
        assert_eq!(
            s.round(250),
            Some(250),
            "compacting the same revision again is harmless"
        );
        assert_eq!(s.round(900), Some(250));
        let mut fresh = CompactionSchedule::default();
        assert_eq!(fresh.round(0), None);
        assert_eq!(fresh.round(5), None, "revision 0 is nothing to compact");
    }
}
