//! Reading and following a key prefix: [`list_all`] (every record under a prefix, page by page,
//! or the error) and [`Watcher`] (list, then watch; re-list after `Compacted` or a broken watch,
//! with capped, jittered exponential backoff) — the one copy of the loops every component that
//! mirrors part of the store needs, in the manner of a Kubernetes reflector.
//!
//! Invariants: `list_all` never returns a partial result — a store error, or more records than
//! [`MAX_RECORDS`], is an error — and what it returns is one consistent snapshot at its
//! `revision` (pages that saw different revisions are discarded and the prefix is read again in
//! one request); a [`Watcher`] never skips a change silently: events follow its last
//! [`Event::Restarted`] in revision order with nothing missing, and any gap is reported as an
//! `Err` (the consumer's state may be stale from then on) followed, once the store answers again,
//! by a new `Restarted` carrying the full current state; time between attempts comes from an
//! injectable [`Sleep`] and its jitter from the caller's [`Rng`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kfsec_types::Rng;

use crate::{EventKind, KeyValue, Revision, Store, StoreError, WatchStream};

/// Records per page of a [`list_all`].
pub const PAGE_SIZE: usize = 500;
/// The most records a [`list_all`] returns; a larger prefix is an error
/// ([`StoreError::TooLarge`]), never a truncated list.
pub const MAX_RECORDS: usize = 1_000_000;

/// Every record under a prefix, as of one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The records, in key order.
    pub items: Vec<KeyValue>,
    /// The store revision the records reflect: watch from here to follow later changes.
    pub revision: Revision,
}

/// Every record under `prefix` (pages of [`PAGE_SIZE`]), as one consistent [`Snapshot`]; an
/// error rather than a partial result. More than [`MAX_RECORDS`] is [`StoreError::TooLarge`].
pub async fn list_all(store: &dyn Store, prefix: &str) -> Result<Snapshot, StoreError> {
    read_prefix(store, prefix, PAGE_SIZE, MAX_RECORDS).await
}

async fn read_prefix(store: &dyn Store, prefix: &str, page_size: usize, max: usize) -> Result<Snapshot, StoreError> {
    let too_large = || StoreError::TooLarge {
        prefix: prefix.to_owned(),
        max,
    };
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    let mut revision = None;
    loop {
        let page = store.list(prefix, page_size, after.as_deref()).await?;
        if *revision.get_or_insert(page.revision) != page.revision {
            // The store moved between pages: the pages are not one snapshot. One request is.
            let all = store.list(prefix, 0, None).await?;
            if all.items.len() > max {
                return Err(too_large());
            }
            return Ok(Snapshot {
                items: all.items,
                revision: all.revision,
            });
        }
        items.extend(page.items);
        if items.len() > max {
            return Err(too_large());
        }
        match page.continue_key {
            Some(k) => after = Some(k),
            None => break,
        }
    }
    Ok(Snapshot {
        items,
        revision: revision.unwrap_or_default(),
    })
}

/// Waits out a delay; injectable so tests do not sleep.
pub trait Sleep: Send + Sync + 'static {
    /// Completes after `d`.
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// [`Sleep`] on the tokio timer.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioSleep;

impl Sleep for TokioSleep {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Delays between failed attempts: doubling from `initial` up to `max`, each drawn uniformly
/// from its upper half (so watchers of many replicas do not retry in step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure (before jitter).
    pub initial: Duration,
    /// The cap.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (≥ 1), jittered with `rng`.
    pub fn delay(&self, failures: u32, rng: &dyn Rng) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        let base = self.initial.saturating_mul(1u32 << doublings.min(31)).min(self.max);
        let half = base / 2;
        let r = u64::from_le_bytes(kfsec_types::random_array::<8>(rng));
        // r / 2^64 of the upper half, in nanoseconds (u128: no overflow).
        let extra = (u128::from(r) * (base - half).as_nanos()) >> 64;
        half + Duration::from_nanos(u64::try_from(extra).unwrap_or(u64::MAX))
    }
}

/// Where a [`Watcher`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initial {
    /// Read every record under the prefix: [`Event::Restarted`] carries them.
    List,
    /// Read nothing, start at the current revision: [`Event::Restarted`] carries no records (for
    /// consumers that only invalidate caches and must forget everything on a restart).
    Skip,
}

/// What a [`Watcher`] follows.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// The key prefix.
    pub prefix: String,
    /// Start with the records or without.
    pub initial: Initial,
    /// Also follow writes outside the prefix, reported as [`Event::Progress`]: lets a consumer
    /// prove it has seen every write up to a revision (the whole store is watched).
    pub progress: bool,
    /// Delays between failed attempts.
    pub backoff: Backoff,
}

impl WatcherConfig {
    /// Lists `prefix` and follows it, with the default backoff.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            initial: Initial::List,
            progress: false,
            backoff: Backoff::default(),
        }
    }

    /// Starts without listing (see [`Initial::Skip`]).
    #[must_use]
    pub fn skip_list(mut self) -> Self {
        self.initial = Initial::Skip;
        self
    }

    /// Reports writes outside the prefix as [`Event::Progress`].
    #[must_use]
    pub fn with_progress(mut self) -> Self {
        self.progress = true;
        self
    }
}

/// What a [`Watcher`] delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The watcher (re)started: `items` is every record under the prefix at `revision` (empty
    /// with [`Initial::Skip`]). Replace whatever was built from earlier events.
    Restarted {
        /// The records, in key order.
        items: Vec<KeyValue>,
        /// The revision they reflect; later events are newer.
        revision: Revision,
    },
    /// A record was created or replaced.
    Applied(KeyValue),
    /// A record was deleted or expired (its last value; `mod_revision` is the deletion's).
    Deleted(KeyValue),
    /// A write outside the prefix at this revision (only with [`WatcherConfig::progress`]).
    Progress(Revision),
}

enum State {
    Start,
    Watching(WatchStream),
}

/// Lists a prefix, then follows it for ever (see the module docs). Dropping it stops it.
pub struct Watcher {
    store: Arc<dyn Store>,
    config: WatcherConfig,
    rng: Arc<dyn Rng>,
    sleep: Arc<dyn Sleep>,
    state: State,
    failures: u32,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("config", &self.config)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// A watcher of `store` waiting with the tokio timer; jitter from `rng`.
    pub fn new(store: Arc<dyn Store>, config: WatcherConfig, rng: Arc<dyn Rng>) -> Self {
        Self::with_sleep(store, config, rng, Arc::new(TokioSleep))
    }

    /// A watcher waiting with `sleep`.
    pub fn with_sleep(store: Arc<dyn Store>, config: WatcherConfig, rng: Arc<dyn Rng>, sleep: Arc<dyn Sleep>) -> Self {
        Self {
            store,
            config,
            rng,
            sleep,
            state: State::Start,
            failures: 0,
        }
    }

    /// The prefix followed.
    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// The next event. An `Err` means the watcher lost track (the store failed, the watch fell
    /// behind or ended): state built from its events may be stale until the next
    /// [`Event::Restarted`], which the following calls deliver once the store answers again
    /// (after the backoff delay). Cancel-safe: dropping the future loses no event.
    pub async fn next(&mut self) -> Result<Event, StoreError> {
        let State::Watching(rx) = &mut self.state else {
            if self.failures > 0 {
                let d = self.config.backoff.delay(self.failures, self.rng.as_ref());
                self.sleep.sleep(d).await;
            }
            return match self.start().await {
                Ok((event, rx)) => {
                    self.state = State::Watching(rx);
                    self.failures = 0;
                    Ok(event)
                }
                Err(e) => Err(self.failed(e)),
            };
        };
        match rx.recv().await {
            Some(Ok(ev)) if !ev.kv.key.starts_with(&self.config.prefix) => Ok(Event::Progress(ev.kv.mod_revision)),
            Some(Ok(ev)) => Ok(match ev.kind {
                EventKind::Put => Event::Applied(ev.kv),
                EventKind::Delete => Event::Deleted(ev.kv),
            }),
            Some(Err(e)) => Err(self.failed(e)),
            None => Err(self.failed(StoreError::Backend("the watch ended".into()))),
        }
    }

    /// Gives up the current watch as if it had failed: the next call re-lists after the backoff
    /// delay (for a consumer that could not apply what it was given).
    pub fn restart(&mut self) {
        let _ = self.failed(StoreError::Backend(String::new()));
    }

    fn failed(&mut self, e: StoreError) -> StoreError {
        self.state = State::Start;
        self.failures = self.failures.saturating_add(1);
        e
    }

    async fn start(&self) -> Result<(Event, WatchStream), StoreError> {
        let store = self.store.as_ref();
        let (items, revision) = match self.config.initial {
            Initial::List => {
                let s = list_all(store, &self.config.prefix).await?;
                (s.items, s.revision)
            }
            Initial::Skip => (Vec::new(), store.revision().await?),
        };
        let watched = if self.config.progress {
            ""
        } else {
            self.config.prefix.as_str()
        };
        let rx = store.watch(watched, revision).await?;
        Ok((Event::Restarted { items, revision }, rx))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kfsec_types::{ManualClock, UnixTime};
    use parking_lot::Mutex;

    use super::*;
    use crate::flaky::Flaky;
    use crate::{MemoryStore, StoreOptions};

    fn rng() -> Arc<dyn Rng> {
        Arc::new(kfsec_types::SequenceRng::default())
    }

    /// Records the delays and returns at once.
    #[derive(Default)]
    struct NoSleep(Mutex<Vec<Duration>>);
    impl Sleep for NoSleep {
        fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
            self.0.lock().push(d);
            Box::pin(async {})
        }
    }

    fn memory(log_retention: usize) -> Arc<MemoryStore> {
        let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
        MemoryStore::with_options(
            clock,
            StoreOptions {
                sweep_interval: None,
                log_retention,
                watch_channel_capacity: 8,
                watch_buffer: 4,
                volatile_prefixes: Vec::new(),
            },
        )
    }

    /// The state a consumer rebuilds from the events: key → value.
    #[derive(Default)]
    struct Mirror {
        state: BTreeMap<String, Vec<u8>>,
        restarts: usize,
        revision: Revision,
    }

    impl Mirror {
        fn apply(&mut self, ev: Event) {
            match ev {
                Event::Restarted { items, revision } => {
                    self.restarts += 1;
                    self.state = items.into_iter().map(|kv| (kv.key, kv.value)).collect();
                    self.revision = revision;
                }
                Event::Applied(kv) => {
                    assert!(kv.mod_revision > self.revision, "events in revision order");
                    self.revision = kv.mod_revision;
                    self.state.insert(kv.key, kv.value);
                }
                Event::Deleted(kv) => {
                    assert!(kv.mod_revision > self.revision, "events in revision order");
                    self.revision = kv.mod_revision;
                    self.state.remove(&kv.key);
                }
                Event::Progress(rev) => self.revision = rev,
            }
        }
    }

    async fn truth(store: &dyn Store, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let page = store.list(prefix, 0, None).await.unwrap();
        page.items.into_iter().map(|kv| (kv.key, kv.value)).collect()
    }

    /// Feeds the mirror until it matches the store.
    async fn converge(w: &mut Watcher, m: &mut Mirror, store: &dyn Store) {
        let want = truth(store, w.prefix()).await;
        for _ in 0..10_000 {
            if m.state == want && m.revision >= store.revision().await.unwrap() {
                return;
            }
            let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
                .await
                .expect("an event");
            if let Ok(ev) = ev {
                m.apply(ev);
            }
        }
        panic!("never converged");
    }

    #[tokio::test]
    async fn list_all_reads_every_page_or_fails() {
        let store = memory(1000);
        for i in 0..7 {
            store.put(&format!("/p/{i}"), vec![i], None).await.unwrap();
        }
        store.put("/q/x", vec![], None).await.unwrap();
        let s = read_prefix(store.as_ref(), "/p/", 2, 100).await.unwrap();
        assert_eq!(s.items.len(), 7);
        assert_eq!(s.revision, 8);
        assert!(s.items.windows(2).all(|w| w[0].key < w[1].key));
        assert_eq!(list_all(store.as_ref(), "/p/").await.unwrap(), s);
        // the bound is an error, never a truncated list
        assert!(matches!(
            read_prefix(store.as_ref(), "/p/", 2, 6).await,
            Err(StoreError::TooLarge { max: 6, .. })
        ));
        // a failing page fails the whole read
        let faulty = Flaky::new(store.clone());
        faulty.fail_next_reads(1);
        assert!(read_prefix(faulty.as_ref(), "/p/", 2, 100).await.is_err());
        assert!(read_prefix(faulty.as_ref(), "/p/", 2, 100).await.is_ok());
        assert!(list_all(store.as_ref(), "/none/").await.unwrap().items.is_empty());
    }

    #[tokio::test]
    async fn list_all_is_one_snapshot_even_when_the_store_moves_between_pages() {
        let store = memory(1000);
        for i in 0..5 {
            store.put(&format!("/p/{i}"), b"old".to_vec(), None).await.unwrap();
        }
        let moving = Flaky::new(store.clone());
        moving.write_after_every_page(Some("/p/0"));
        let s = read_prefix(moving.as_ref(), "/p/", 2, 100).await.unwrap();
        assert_eq!(s.items.len(), 5);
        assert_eq!(s.items[0].value, b"new");
        assert_eq!(
            s.revision, s.items[0].mod_revision,
            "the snapshot's revision is the read's"
        );
    }

    #[tokio::test]
    async fn initial_list_then_live_events() {
        let store = memory(1000);
        store.put("/p/a", b"1".to_vec(), None).await.unwrap();
        store.put("/p/b", b"1".to_vec(), None).await.unwrap();
        store.put("/other", b"1".to_vec(), None).await.unwrap();
        let mut w = Watcher::new(store.clone(), WatcherConfig::new("/p/"), rng());
        let Ok(Event::Restarted { items, revision }) = w.next().await else {
            panic!("starts with the list")
        };
        assert_eq!(
            items.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
            ["/p/a", "/p/b"]
        );
        assert_eq!(revision, 3);
        store.put("/p/c", b"2".to_vec(), None).await.unwrap();
        store.put("/other", b"2".to_vec(), None).await.unwrap();
        store.delete("/p/a", None).await.unwrap();
        assert!(matches!(w.next().await, Ok(Event::Applied(kv)) if kv.key == "/p/c" && kv.mod_revision == 4));
        assert!(matches!(w.next().await, Ok(Event::Deleted(kv)) if kv.key == "/p/a" && kv.mod_revision == 6));
    }

    #[tokio::test]
    async fn skip_list_with_progress_reports_every_write() {
        let store = memory(1000);
        store.put("/p/a", b"1".to_vec(), None).await.unwrap();
        let mut w = Watcher::new(
            store.clone(),
            WatcherConfig::new("/p/").skip_list().with_progress(),
            rng(),
        );
        assert_eq!(
            w.next().await.unwrap(),
            Event::Restarted {
                items: vec![],
                revision: 1
            }
        );
        store.put("/q", b"1".to_vec(), None).await.unwrap();
        store.put("/p/b", b"1".to_vec(), None).await.unwrap();
        assert_eq!(w.next().await.unwrap(), Event::Progress(2));
        assert!(matches!(w.next().await, Ok(Event::Applied(kv)) if kv.key == "/p/b"));
    }

    #[tokio::test]
    async fn compaction_before_the_watch_relists_to_the_right_state() {
        let inner = memory(3);
        for i in 0..4 {
            inner.put(&format!("/p/{i}"), b"v1".to_vec(), None).await.unwrap();
        }
        let faulty = Flaky::new(inner.clone());
        // Between the list and the watch, more writes than the log retains: the watch from the
        // list's revision is compacted.
        let writer = inner.clone();
        faulty.before_next_watch(move || {
            let w = writer.clone();
            futures_util::FutureExt::now_or_never(async move {
                w.delete("/p/0", None).await.unwrap();
                w.put("/p/1", b"v2".to_vec(), None).await.unwrap();
                w.put("/p/9", b"v1".to_vec(), None).await.unwrap();
                w.put("/p/8", b"v1".to_vec(), None).await.unwrap();
                w.delete("/p/8", None).await.unwrap();
            })
            .unwrap();
        });
        let sleeps = Arc::new(NoSleep::default());
        let store: Arc<dyn Store> = faulty.clone();
        let mut w = Watcher::with_sleep(store.clone(), WatcherConfig::new("/p/"), rng(), sleeps.clone());
        assert!(matches!(w.next().await, Err(StoreError::Compacted { .. })));
        let mut m = Mirror::default();
        converge(&mut w, &mut m, store.as_ref()).await;
        assert_eq!(m.restarts, 1);
        assert_eq!(
            m.state.keys().map(String::as_str).collect::<Vec<_>>(),
            ["/p/1", "/p/2", "/p/3", "/p/9"]
        );
        assert_eq!(m.state["/p/1"], b"v2");
        assert_eq!(sleeps.0.lock().len(), 1, "one backoff before the re-list");
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_relists_without_losing_or_duplicating_state() {
        let store = memory(4);
        let mut w = Watcher::with_sleep(
            store.clone(),
            WatcherConfig::new("/p/"),
            rng(),
            Arc::new(NoSleep::default()),
        );
        let mut m = Mirror::default();
        m.apply(w.next().await.unwrap());
        // Far more writes than the watch channel holds, while the consumer is not reading.
        for i in 0..200u32 {
            let key = format!("/p/{}", i % 13);
            if i % 5 == 4 {
                let _ = store.delete(&key, None).await;
            } else {
                store.put(&key, i.to_le_bytes().to_vec(), None).await.unwrap();
            }
            tokio::task::yield_now().await;
        }
        let mut errors = 0;
        let want = truth(store.as_ref(), "/p/").await;
        let rev = store.revision().await.unwrap();
        while m.state != want || m.revision < rev {
            match tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap() {
                Ok(ev) => m.apply(ev),
                Err(e) => {
                    assert!(matches!(e, StoreError::Compacted { .. }), "{e}");
                    errors += 1;
                }
            }
        }
        assert!(errors >= 1, "the watch fell behind");
        assert!(m.restarts >= 2, "and the watcher re-listed");
        assert_eq!(m.state, want);
    }

    #[tokio::test]
    async fn store_errors_back_off_then_recover() {
        let inner = memory(1000);
        inner.put("/p/a", b"1".to_vec(), None).await.unwrap();
        let faulty = Flaky::new(inner.clone());
        faulty.fail_next_reads(4);
        let sleeps = Arc::new(NoSleep::default());
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        let config = WatcherConfig {
            backoff,
            ..WatcherConfig::new("/p/")
        };
        let mut w = Watcher::with_sleep(faulty.clone(), config, rng(), sleeps.clone());
        for _ in 0..4 {
            assert!(matches!(w.next().await, Err(StoreError::Backend(_))));
        }
        let Ok(Event::Restarted { items, .. }) = w.next().await else {
            panic!("recovers")
        };
        assert_eq!(items.len(), 1);
        let delays = sleeps.0.lock().clone();
        assert_eq!(delays.len(), 4, "{delays:?}");
        for (d, cap) in delays.iter().zip([100u64, 200, 400, 500]) {
            let cap = Duration::from_millis(cap);
            assert!(*d >= cap / 2 && *d <= cap, "{d:?} not in [{:?}, {cap:?}]", cap / 2);
        }
        // recovered: the backoff starts over, and live events flow
        inner.put("/p/b", b"1".to_vec(), None).await.unwrap();
        assert!(matches!(w.next().await, Ok(Event::Applied(kv)) if kv.key == "/p/b"));
        // a consumer that could not apply an event asks for a re-list (after a backoff)
        w.restart();
        let Ok(Event::Restarted { items, .. }) = w.next().await else {
            panic!("re-lists")
        };
        assert_eq!(items.len(), 2);
        assert_eq!(sleeps.0.lock().len(), 5);
        faulty.fail_next_reads(1);
        drop(w);
        let mut w = Watcher::with_sleep(faulty.clone(), WatcherConfig::new("/p/"), rng(), sleeps.clone());
        assert!(w.next().await.is_err());
        assert!(matches!(w.next().await, Ok(Event::Restarted { .. })));
        assert_eq!(sleeps.0.lock().len(), 6);
    }

    #[tokio::test]
    async fn a_closed_watch_is_an_error_and_a_relist() {
        let inner = memory(1000);
        let store = Flaky::new(inner.clone());
        store.close_next_watches(1);
        let mut w = Watcher::with_sleep(store, WatcherConfig::new("/p/"), rng(), Arc::new(NoSleep::default()));
        assert!(matches!(w.next().await, Ok(Event::Restarted { .. })));
        inner.put("/p/a", b"1".to_vec(), None).await.unwrap();
        assert!(w.next().await.is_err(), "the end of a watch is reported");
        let Ok(Event::Restarted { items, .. }) = w.next().await else {
            panic!("re-lists")
        };
        assert_eq!(items.len(), 1, "and the re-list has the write the ended watch missed");
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        let b = Backoff::default();
        let r = rng();
        for f in 1..80 {
            let d = b.delay(f, r.as_ref());
            let cap = (b.initial * 2u32.saturating_pow((f - 1).min(20))).min(b.max);
            assert!(d >= cap / 2 && d <= cap, "{f}: {d:?}");
        }
        assert!(b.delay(u32::MAX, r.as_ref()) <= b.max);
    }
}
