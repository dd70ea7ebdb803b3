//! `MemoryStore`: the in-memory backend (BTreeMaps under one mutex), for unit tests of other
//! crates and as the conformance reference. Nothing is persisted. Invariants: all state changes and
//! the broadcast of their events happen under the one mutex, so events go out in revision order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kfsec_types::Clock;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::engine::{self, Counters, Op, Outcome, Tables};
use crate::{KeyValue, ListPage, Revision, Store, StoreError, StoreOptions, WatchEvent, WatchStream};

#[derive(Default)]
struct State {
    kv: BTreeMap<String, KeyValue>,
    expiry: BTreeSet<(u64, String)>,
    log: BTreeMap<Revision, WatchEvent>,
    counters: Counters,
}

impl Tables for State {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.kv.get(key).cloned())
    }
    fn set(&mut self, kv: &KeyValue) -> Result<(), StoreError> {
        self.kv.insert(kv.key.clone(), kv.clone());
        Ok(())
    }
    fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        self.kv.remove(key);
        Ok(())
    }
    fn expiry_insert(&mut self, at: u64, key: &str) -> Result<(), StoreError> {
        self.expiry.insert((at, key.to_owned()));
        Ok(())
    }
    fn expiry_remove(&mut self, at: u64, key: &str) -> Result<(), StoreError> {
        self.expiry.remove(&(at, key.to_owned()));
        Ok(())
    }
    fn expired_up_to(&mut self, now: u64) -> Result<Vec<(u64, String)>, StoreError> {
        Ok(self.expiry.iter().take_while(|(at, _)| *at <= now).cloned().collect())
    }
    fn log_append(&mut self, ev: &WatchEvent) -> Result<(), StoreError> {
        self.log.insert(ev.kv.mod_revision, ev.clone());
        Ok(())
    }
    fn log_remove(&mut self, _from: Revision, to: Revision) -> Result<(), StoreError> {
        while let Some(entry) = self.log.first_entry() {
            if *entry.key() > to {
                break;
            }
            entry.remove();
        }
        Ok(())
    }
    fn counters(&mut self) -> Result<Counters, StoreError> {
        Ok(self.counters)
    }
    fn set_counters(&mut self, c: Counters) -> Result<(), StoreError> {
        self.counters = c;
        Ok(())
    }
}

/// The in-memory backend.
pub struct MemoryStore {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    options: StoreOptions,
    events: broadcast::Sender<Arc<WatchEvent>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store with default options. Starts the background sweeper if called inside a
    /// tokio runtime.
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        Self::with_options(clock, StoreOptions::default())
    }

    /// An empty store with `options`.
    pub fn with_options(clock: Arc<dyn Clock>, options: StoreOptions) -> Arc<Self> {
        let (events, _) = broadcast::channel(options.watch_channel_capacity.max(1));
        let store = Arc::new(Self {
            state: Mutex::new(State::default()),
            clock,
            options,
            events,
        });
        engine::spawn_sweeper(
            Arc::downgrade(&store),
            store.options.sweep_interval,
            |s: Arc<Self>| async move { s.sweep_expired().await },
        );
        store
    }

    /// Deletes every expired record now (one Delete event each); returns how many.
    pub async fn sweep_expired(&self) -> Result<usize, StoreError> {
        match self.write(Op::Sweep)? {
            Outcome::Swept(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    fn write(&self, op: Op) -> Result<Outcome, StoreError> {
        let mut state = self.state.lock();
        let now = self.clock.now();
        let (outcome, events, _) = engine::apply(&mut *state, op, now, self.options.log_retention)?;
        for ev in events {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(Arc::new(ev));
        }
        Ok(outcome)
    }

    fn written(&self, op: Op) -> Result<Revision, StoreError> {
        match self.write(op)? {
            Outcome::Written(rev) => Ok(rev),
            _ => Err(unexpected()),
        }
    }
}

fn unexpected() -> StoreError {
    StoreError::Backend("unexpected operation outcome".into())
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let now = self.clock.now();
        let state = self.state.lock();
        Ok(state.kv.get(key).filter(|kv| engine::is_live(kv, now)).cloned())
    }

    async fn list(&self, prefix: &str, limit: usize, start_after: Option<&str>) -> Result<ListPage, StoreError> {
        let now = self.clock.now();
        let state = self.state.lock();
        let start = engine::start_bound(prefix, start_after);
        let iter = state
            .kv
            .range::<str, _>((start, std::ops::Bound::Unbounded))
            .map(|(_, kv)| Ok(kv.clone()));
        let (items, continue_key) = engine::page(iter, prefix, limit, now)?;
        Ok(ListPage {
            items,
            revision: state.counters.revision,
            continue_key,
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.written(Op::Create {
            key: key.to_owned(),
            value,
            ttl,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> Result<Revision, StoreError> {
        self.written(Op::Update {
            key: key.to_owned(),
            value,
            expected,
            ttl,
        })
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.written(Op::Put {
            key: key.to_owned(),
            value,
            ttl,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        match self.write(Op::Delete {
            key: key.to_owned(),
            expected,
        })? {
            Outcome::Deleted(kv) => Ok(kv),
            _ => Err(unexpected()),
        }
    }

    async fn take(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        match self.write(Op::Take { key: key.to_owned() })? {
            Outcome::Taken(kv) => Ok(kv),
            _ => Err(unexpected()),
        }
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.state.lock().counters.revision)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let (live, replay, snapshot) = {
            let state = self.state.lock();
            engine::check_watchable(after, state.counters.compacted)?;
            // Subscribing under the lock: no event can slip between the replay and live parts.
            let live = self.events.subscribe();
            let replay: Vec<WatchEvent> = state
                .log
                .range(after.saturating_add(1)..)
                .map(|(_, ev)| ev)
                .filter(|ev| ev.kv.key.starts_with(prefix))
                .cloned()
                .collect();
            (live, replay, state.counters.revision)
        };
        Ok(engine::spawn_watch(
            prefix.to_owned(),
            after,
            replay,
            snapshot,
            live,
            self.options.watch_buffer,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;
    use kfsec_types::{ManualClock, UnixTime};

    fn harness(opts: StoreOptions) -> conformance::Harness {
        let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
        let store = MemoryStore::with_options(clock.clone(), opts);
        let s = store.clone();
        conformance::Harness {
            store,
            clock,
            sweep: Box::new(move || {
                let s = s.clone();
                Box::pin(async move { s.sweep_expired().await })
            }),
            log_retention: conformance::TEST_LOG_RETENTION,
            watch_channel_capacity: Some(conformance::TEST_WATCH_CAPACITY),
            watch_buffer: conformance::TEST_WATCH_BUFFER,
        }
    }

    #[tokio::test]
    async fn memory_conformance() {
        conformance::run_all(&harness(conformance::test_options())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_conformance_multi_thread() {
        conformance::run_all(&harness(conformance::test_options())).await;
    }

    #[tokio::test]
    async fn memory_background_sweeper() {
        let opts = StoreOptions {
            sweep_interval: Some(Duration::from_millis(20)),
            ..conformance::test_options()
        };
        conformance::background_sweeper(&harness(opts)).await;
    }

    #[test]
    fn new_outside_runtime_works_without_sweeper() {
        let clock = ManualClock::new(UnixTime::from_secs(1));
        let store = MemoryStore::new(clock);
        assert_eq!(store.options.log_retention, 10_000);
    }
}
