//! The shared conformance suite every [`Store`] backend must pass (enable the `conformance`
//! feature to use it from another crate). Each check works under its own key prefix and only
//! relies on revision *differences*, so checks can share one store; TTL checks sweep what they
//! expire before returning, so every sweep count is exact. Build the store with
//! [`test_options`] (no background sweeper, small log and channels) and describe it in a
//! [`Harness`].

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a conformance suite: a failed expectation is the report

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kfsec_types::{Clock, ManualClock};

use crate::{EventKind, KeyValue, Revision, Store, StoreError, StoreOptions, WatchEvent, WatchStream};

/// Change-log length the suite expects from [`test_options`].
pub const TEST_LOG_RETENTION: usize = 64;
/// Broadcast capacity the suite expects from [`test_options`].
pub const TEST_WATCH_CAPACITY: usize = 16;
/// Per-watcher buffer the suite expects from [`test_options`].
pub const TEST_WATCH_BUFFER: usize = 8;

/// Options for a store under test: no background sweeper, the small sizes above.
pub fn test_options() -> StoreOptions {
    StoreOptions {
        sweep_interval: None,
        log_retention: TEST_LOG_RETENTION,
        watch_channel_capacity: TEST_WATCH_CAPACITY,
        watch_buffer: TEST_WATCH_BUFFER,
        volatile_prefixes: Vec::new(),
    }
}

/// Runs one sweep of expired records on the store under test.
pub type SweepFn = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<usize, StoreError>> + Send>> + Send + Sync>;

/// A store under test and how to drive it.
pub struct Harness {
    /// The store (built on `clock`).
    pub store: Arc<dyn Store>,
    /// The store's clock.
    pub clock: Arc<ManualClock>,
    /// Triggers a sweep of expired records.
    pub sweep: SweepFn,
    /// The store's change-log retention (at least this many latest events are replayable).
    pub log_retention: usize,
    /// The live broadcast capacity, if the backend has one (`None` skips the lag check).
    pub watch_channel_capacity: Option<usize>,
    /// The per-watcher buffer.
    pub watch_buffer: usize,
}

/// Runs every check in order.
pub async fn run_all(h: &Harness) {
    create_get_put(h).await;
    update_rules(h).await;
    delete_rules(h).await;
    revision_is_global_and_monotonic(h).await;
    list_paging_and_prefix_isolation(h).await;
    list_skips_expired(h).await;
    ttl_expiry_and_sweep(h).await;
    ttl_replaced_by_update(h).await;
    take_is_single_use(h).await;
    watch_replay_then_live(h).await;
    watch_from_future_revision(h).await;
    watch_compacted(h).await;
    concurrent_cas(h).await;
    if h.watch_channel_capacity.is_some() {
        lagging_watcher_gets_compacted(h).await;
    }
}

const WAIT: Duration = Duration::from_secs(10);

async fn next(w: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(WAIT, w.recv()).await {
        Ok(Some(Ok(ev))) => ev,
        other => panic!("expected a watch event, got {other:?}"),
    }
}

async fn quiet(w: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(100), w.recv()).await {
        panic!("expected no watch event, got {item:?}");
    }
}

fn keys(items: &[KeyValue]) -> Vec<&str> {
    items.iter().map(|kv| kv.key.as_str()).collect()
}

async fn rev(h: &Harness) -> Revision {
    h.store.revision().await.unwrap()
}

async fn sweep(h: &Harness) -> usize {
    (h.sweep)().await.unwrap()
}

/// create / AlreadyExists / get / put.
pub async fn create_get_put(h: &Harness) {
    let s = &h.store;
    let r0 = rev(h).await;
    let r1 = s.create("/c/a", b"1".to_vec(), None).await.unwrap();
    assert_eq!(r1, r0 + 1);
    let kv = s.get("/c/a").await.unwrap().unwrap();
    assert_eq!(
        kv,
        KeyValue {
            key: "/c/a".into(),
            value: b"1".to_vec(),
            create_revision: r1,
            mod_revision: r1,
            expires_at: None,
        }
    );
    let err = s.create("/c/a", b"x".to_vec(), None).await.unwrap_err();
    assert!(matches!(&err, StoreError::AlreadyExists(k) if k == "/c/a"), "{err:?}");
    assert_eq!(rev(h).await, r1, "a failed write must not bump the revision");
    assert_eq!(s.get("/c/a").await.unwrap().unwrap().value, b"1");
    assert!(s.get("/c/missing").await.unwrap().is_none());

    let r2 = s.put("/c/a", b"2".to_vec(), None).await.unwrap();
    assert_eq!(r2, r1 + 1);
    let kv = s.get("/c/a").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r2));
    assert_eq!(kv.value, b"2");
    let r3 = s.put("/c/b", Vec::new(), None).await.unwrap();
    let kv = s.get("/c/b").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r3, r3));
    assert!(kv.value.is_empty());
    let r4 = s
        .create("/c/ünïcode key@example.com", b"u".to_vec(), None)
        .await
        .unwrap();
    let kv = s.get("/c/ünïcode key@example.com").await.unwrap().unwrap();
    assert_eq!(kv.mod_revision, r4);
    assert_eq!(rev(h).await, r4);
}

/// update: compare-and-swap, unconditional, NotFound.
pub async fn update_rules(h: &Harness) {
    let s = &h.store;
    let r1 = s.create("/u/a", b"1".to_vec(), None).await.unwrap();
    let r2 = s.update("/u/a", b"2".to_vec(), Some(r1), None).await.unwrap();
    assert_eq!(r2, r1 + 1);
    let kv = s.get("/u/a").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r2));
    assert_eq!(kv.value, b"2");

    let err = s.update("/u/a", b"stale".to_vec(), Some(r1), None).await.unwrap_err();
    match err {
        StoreError::Conflict { key, expected, found } => assert_eq!((key.as_str(), expected, found), ("/u/a", r1, r2)),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(rev(h).await, r2);
    assert_eq!(s.get("/u/a").await.unwrap().unwrap().value, b"2");

    let r3 = s.update("/u/a", b"3".to_vec(), None, None).await.unwrap();
    assert_eq!(r3, r2 + 1);
    let err = s.update("/u/missing", b"x".to_vec(), None, None).await.unwrap_err();
    assert!(matches!(&err, StoreError::NotFound(k) if k == "/u/missing"), "{err:?}");
    let err = s.update("/u/missing", b"x".to_vec(), Some(r3), None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(s.get("/u/missing").await.unwrap().is_none());
    assert_eq!(rev(h).await, r3);
}

/// delete: Conflict, returned record, NotFound, re-create starts a new record.
pub async fn delete_rules(h: &Harness) {
    let s = &h.store;
    let r1 = s.create("/d/a", b"1".to_vec(), None).await.unwrap();
    let r2 = s.update("/d/a", b"2".to_vec(), None, None).await.unwrap();
    let err = s.delete("/d/a", Some(r1)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { expected, found, .. } if expected == r1 && found == r2),
        "{err:?}"
    );
    assert!(s.get("/d/a").await.unwrap().is_some());
    let deleted = s.delete("/d/a", Some(r2)).await.unwrap();
    let r3 = rev(h).await;
    assert_eq!(r3, r2 + 1);
    assert_eq!(
        deleted,
        KeyValue {
            key: "/d/a".into(),
            value: b"2".to_vec(),
            create_revision: r1,
            mod_revision: r3,
            expires_at: None,
        }
    );
    assert!(s.get("/d/a").await.unwrap().is_none());
    let err = s.delete("/d/a", None).await.unwrap_err();
    assert!(matches!(&err, StoreError::NotFound(k) if k == "/d/a"), "{err:?}");
    let err = s.delete("/d/a", Some(r3)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(rev(h).await, r3);
    let r4 = s.create("/d/a", b"new".to_vec(), None).await.unwrap();
    let kv = s.get("/d/a").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r4, r4));
    let unconditional = s.delete("/d/a", None).await.unwrap();
    assert_eq!(unconditional.value, b"new");
}

/// One global counter across unrelated keys; +1 per successful write, +0 per failed one.
pub async fn revision_is_global_and_monotonic(h: &Harness) {
    let s = &h.store;
    let mut last = rev(h).await;
    for i in 0..5 {
        let key = format!("/g/{}/k", ["x", "y", "z"][i % 3]);
        let r = s.put(&key, vec![u8::try_from(i).unwrap()], None).await.unwrap();
        assert_eq!(r, last + 1);
        last = r;
    }
    assert!(s.take("/g/absent").await.unwrap().is_none());
    assert!(s.create("/g/x/k", Vec::new(), None).await.is_err());
    assert!(s.delete("/g/absent", None).await.is_err());
    assert_eq!(rev(h).await, last);
    let deleted = s.delete("/g/x/k", None).await.unwrap();
    assert_eq!(deleted.mod_revision, last + 1);
    let taken = s.take("/g/y/k").await.unwrap().unwrap();
    assert_eq!(taken.mod_revision, last + 2);
    assert_eq!(rev(h).await, last + 2);
}

/// list: key order, prefix isolation (`/l/a/b/` vs `/l/a/bc/`), limit / continue paging.
pub async fn list_paging_and_prefix_isolation(h: &Harness) {
    let s = &h.store;
    for k in [
        "/l/a/b/3",
        "/l/a/bc/x",
        "/l/a/b/1",
        "/l/a/b",
        "/l/a/a/z",
        "/l/a/b/5",
        "/l/a/b0",
        "/l/a/b/2",
        "/l/a/b/4",
        "/l/a/c",
    ] {
        s.create(k, k.as_bytes().to_vec(), None).await.unwrap();
    }
    let all = ["/l/a/b/1", "/l/a/b/2", "/l/a/b/3", "/l/a/b/4", "/l/a/b/5"];
    let page = s.list("/l/a/b/", 0, None).await.unwrap();
    assert_eq!(keys(&page.items), all);
    assert_eq!(page.continue_key, None);
    assert_eq!(page.revision, rev(h).await);
    assert!(page.items.iter().all(|kv| kv.value == kv.key.as_bytes()));

    let page = s.list("/l/a/bc/", 0, None).await.unwrap();
    assert_eq!(keys(&page.items), ["/l/a/bc/x"]);
    let page = s.list("/l/a/b", 0, None).await.unwrap();
    assert_eq!(page.items.len(), 8, "{:?}", keys(&page.items));
    assert!(s.list("/l/none/", 0, None).await.unwrap().items.is_empty());

    // Paging by 2.
    let mut seen = Vec::new();
    let mut start: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = s.list("/l/a/b/", 2, start.as_deref()).await.unwrap();
        assert!(page.items.len() <= 2);
        pages += 1;
        seen.extend(page.items.iter().map(|kv| kv.key.clone()));
        match page.continue_key {
            Some(c) => {
                assert_eq!(Some(&c), seen.last());
                start = Some(c);
            }
            None => break,
        }
    }
    assert_eq!(seen, all);
    assert_eq!(pages, 3);

    // Exact boundary: no continue when nothing follows.
    let page = s.list("/l/a/b/", 5, None).await.unwrap();
    assert_eq!(page.items.len(), 5);
    assert_eq!(page.continue_key, None);
    let page = s.list("/l/a/b/", 4, None).await.unwrap();
    assert_eq!(page.continue_key.as_deref(), Some("/l/a/b/4"));
    // start_after before the prefix, at the end, and after the range.
    let page = s.list("/l/a/b/", 0, Some("/l/a/a")).await.unwrap();
    assert_eq!(keys(&page.items), all);
    let page = s.list("/l/a/b/", 0, Some("/l/a/b/5")).await.unwrap();
    assert!(page.items.is_empty() && page.continue_key.is_none());
    let page = s.list("/l/a/b/", 0, Some("/l/z")).await.unwrap();
    assert!(page.items.is_empty());
    let page = s.list("/l/a/b/", 0, Some("/l/a/b/2x")).await.unwrap();
    assert_eq!(keys(&page.items), &all[2..]);
}

/// Expired records are skipped by list and do not count toward the limit.
pub async fn list_skips_expired(h: &Harness) {
    let s = &h.store;
    let ttl = Some(Duration::from_secs(1));
    s.create("/lt/1", Vec::new(), None).await.unwrap();
    s.create("/lt/2", Vec::new(), ttl).await.unwrap();
    s.create("/lt/3", Vec::new(), ttl).await.unwrap();
    s.create("/lt/4", Vec::new(), None).await.unwrap();
    s.create("/lt/5", Vec::new(), ttl).await.unwrap();
    assert_eq!(s.list("/lt/", 0, None).await.unwrap().items.len(), 5);
    h.clock.advance(Duration::from_secs(1));
    let page = s.list("/lt/", 1, None).await.unwrap();
    assert_eq!(keys(&page.items), ["/lt/1"]);
    assert_eq!(page.continue_key.as_deref(), Some("/lt/1"));
    let page = s.list("/lt/", 1, Some("/lt/1")).await.unwrap();
    assert_eq!(keys(&page.items), ["/lt/4"]);
    assert_eq!(page.continue_key, None, "only expired records follow");
    assert_eq!(sweep(h).await, 3);
    assert_eq!(keys(&s.list("/lt/", 0, None).await.unwrap().items), ["/lt/1", "/lt/4"]);
}

/// TTL: invisible from `expires_at` on to every read and conditional write; the sweep deletes
/// with one Delete event each; re-creating over an expired record starts a new record.
pub async fn ttl_expiry_and_sweep(h: &Harness) {
    let s = &h.store;
    let r0 = rev(h).await;
    let mut w = s.watch("/t/", r0).await.unwrap();
    let t0 = h.clock.now();
    let ra = s
        .create("/t/a", b"a".to_vec(), Some(Duration::from_secs(10)))
        .await
        .unwrap();
    let rb = s
        .create("/t/b", b"b".to_vec(), Some(Duration::from_secs(20)))
        .await
        .unwrap();
    s.put("/t/c", b"c".to_vec(), None).await.unwrap();
    let kv = s.get("/t/a").await.unwrap().unwrap();
    assert_eq!(kv.expires_at, Some(t0.add(Duration::from_secs(10))));

    h.clock.advance(Duration::from_millis(9_999));
    assert!(s.get("/t/a").await.unwrap().is_some());
    h.clock.advance(Duration::from_millis(1));
    let before = rev(h).await;
    assert!(s.get("/t/a").await.unwrap().is_none());
    assert_eq!(keys(&s.list("/t/", 0, None).await.unwrap().items), ["/t/b", "/t/c"]);
    let err = s.update("/t/a", Vec::new(), None, None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = s.update("/t/a", Vec::new(), Some(ra), None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = s.delete("/t/a", None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(s.take("/t/a").await.unwrap().is_none());
    assert_eq!(rev(h).await, before, "reads of expired records must not write");

    // Re-create over the expired (unswept) record: a new record, no expiry, never swept.
    let ra2 = s.create("/t/a", b"a2".to_vec(), None).await.unwrap();
    let kv = s.get("/t/a").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.expires_at), (ra2, ra2, None));

    h.clock.advance(Duration::from_secs(10));
    assert!(s.get("/t/b").await.unwrap().is_none());
    assert_eq!(sweep(h).await, 1);
    let rdel = rev(h).await;
    assert_eq!(rdel, ra2 + 1);
    assert_eq!(sweep(h).await, 0);
    assert!(s.get("/t/a").await.unwrap().is_some());

    let evs = [
        next(&mut w).await,
        next(&mut w).await,
        next(&mut w).await,
        next(&mut w).await,
    ];
    assert!(evs.iter().take(3).all(|e| e.kind == EventKind::Put));
    assert_eq!(evs[3].kv.key, "/t/a");
    assert_eq!(evs[3].kv.mod_revision, ra2);
    let del = next(&mut w).await;
    assert_eq!(del.kind, EventKind::Delete);
    assert_eq!(
        (
            del.kv.key.as_str(),
            del.kv.value.as_slice(),
            del.kv.create_revision,
            del.kv.mod_revision
        ),
        ("/t/b", &b"b"[..], rb, rdel)
    );
    quiet(&mut w).await;
}

/// `update`'s ttl replaces the expiry: None clears it, Some sets a new one.
pub async fn ttl_replaced_by_update(h: &Harness) {
    let s = &h.store;
    s.put("/tu/d", b"1".to_vec(), Some(Duration::from_secs(5)))
        .await
        .unwrap();
    s.update("/tu/d", b"2".to_vec(), None, None).await.unwrap();
    assert_eq!(s.get("/tu/d").await.unwrap().unwrap().expires_at, None);
    h.clock.advance(Duration::from_secs(10));
    assert!(s.get("/tu/d").await.unwrap().is_some());
    assert_eq!(sweep(h).await, 0);
    let t = h.clock.now();
    s.update("/tu/d", b"3".to_vec(), None, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(
        s.get("/tu/d").await.unwrap().unwrap().expires_at,
        Some(t.add(Duration::from_secs(1)))
    );
    // put also replaces the expiry.
    s.put("/tu/e", Vec::new(), Some(Duration::from_secs(1))).await.unwrap();
    s.put("/tu/e", Vec::new(), Some(Duration::from_secs(3))).await.unwrap();
    h.clock.advance(Duration::from_secs(1));
    assert!(s.get("/tu/d").await.unwrap().is_none());
    assert!(s.get("/tu/e").await.unwrap().is_some());
    assert_eq!(sweep(h).await, 1);
    h.clock.advance(Duration::from_secs(2));
    assert_eq!(sweep(h).await, 1);
    assert!(s.get("/tu/e").await.unwrap().is_none());
}

/// take: returns the record once, atomically, even under concurrency; expired → None.
pub async fn take_is_single_use(h: &Harness) {
    let s = &h.store;
    let mut w = s.watch("/k/", rev(h).await).await.unwrap();
    let rc = s
        .create("/k/code", b"code".to_vec(), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let taken = s.take("/k/code").await.unwrap().unwrap();
    let rt = rev(h).await;
    assert_eq!(rt, rc + 1);
    assert_eq!(
        (taken.value.as_slice(), taken.create_revision, taken.mod_revision),
        (&b"code"[..], rc, rt)
    );
    assert!(s.take("/k/code").await.unwrap().is_none());
    assert!(s.get("/k/code").await.unwrap().is_none());
    assert_eq!(rev(h).await, rt);
    assert_eq!(next(&mut w).await.kind, EventKind::Put);
    let del = next(&mut w).await;
    assert_eq!((del.kind, del.kv), (EventKind::Delete, taken));

    s.create("/k/old", Vec::new(), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(1));
    assert!(s.take("/k/old").await.unwrap().is_none());
    assert_eq!(sweep(h).await, 1);

    s.put("/k/once", b"x".to_vec(), None).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.take("/k/once").await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        if t.await.unwrap().is_some() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

/// watch: replay from a past revision (prefix-filtered, Delete carries the last value), then
/// live events, with no gaps or duplicates.
pub async fn watch_replay_then_live(h: &Harness) {
    let s = &h.store;
    let r0 = rev(h).await;
    let r1 = s.put("/w/b/1", b"1".to_vec(), None).await.unwrap();
    s.put("/w/bc/1", b"other".to_vec(), None).await.unwrap();
    let r2 = s.put("/w/b/2", b"2".to_vec(), None).await.unwrap();
    s.delete("/w/b/1", None).await.unwrap();
    let r3 = rev(h).await;

    let mut w = s.watch("/w/b/", r0).await.unwrap();
    let e = next(&mut w).await;
    assert_eq!(
        (e.kind, e.kv.key.as_str(), e.kv.mod_revision),
        (EventKind::Put, "/w/b/1", r1)
    );
    let e = next(&mut w).await;
    assert_eq!(
        (e.kind, e.kv.key.as_str(), e.kv.mod_revision),
        (EventKind::Put, "/w/b/2", r2)
    );
    let e = next(&mut w).await;
    assert_eq!(
        e,
        WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: "/w/b/1".into(),
                value: b"1".to_vec(),
                create_revision: r1,
                mod_revision: r3,
                expires_at: None,
            }
        }
    );
    quiet(&mut w).await;

    // From the middle of the history.
    let mut mid = s.watch("/w/b/", r2).await.unwrap();
    assert_eq!(next(&mut mid).await.kv.mod_revision, r3);
    // From now: live only.
    let mut now = s.watch("/w/", r3).await.unwrap();

    let r4 = s.put("/w/b/3", b"3".to_vec(), None).await.unwrap();
    s.put("/w/bc/2", Vec::new(), None).await.unwrap();
    let r6 = s.update("/w/b/2", b"2b".to_vec(), Some(r2), None).await.unwrap();
    for watcher in [&mut w, &mut mid] {
        let e = next(watcher).await;
        assert_eq!((e.kv.key.as_str(), e.kv.mod_revision), ("/w/b/3", r4));
        let e = next(watcher).await;
        assert_eq!(
            (e.kv.key.as_str(), e.kv.mod_revision, e.kv.create_revision),
            ("/w/b/2", r6, r2)
        );
        assert_eq!(e.kv.value, b"2b");
        quiet(watcher).await;
    }
    let revs: Vec<Revision> = [next(&mut now).await, next(&mut now).await, next(&mut now).await]
        .iter()
        .map(|e| e.kv.mod_revision)
        .collect();
    assert_eq!(revs, [r4, r4 + 1, r6]);
    quiet(&mut now).await;
}

/// A watch from a revision not yet reached delivers only later events.
pub async fn watch_from_future_revision(h: &Harness) {
    let s = &h.store;
    let r = rev(h).await;
    let mut w = s.watch("/f/", r + 2).await.unwrap();
    s.put("/f/1", Vec::new(), None).await.unwrap();
    s.put("/f/2", Vec::new(), None).await.unwrap();
    let r3 = s.put("/f/3", Vec::new(), None).await.unwrap();
    let e = next(&mut w).await;
    assert_eq!((e.kv.key.as_str(), e.kv.mod_revision), ("/f/3", r3));
    quiet(&mut w).await;
}

/// A watch older than the retained log fails with Compacted; the oldest it reports works.
pub async fn watch_compacted(h: &Harness) {
    let s = &h.store;
    let start = rev(h).await;
    for i in 0..h.log_retention + 5 {
        s.put(&format!("/z/{}", i % 7), Vec::new(), None).await.unwrap();
    }
    let end = rev(h).await;
    let retention = Revision::try_from(h.log_retention).unwrap();
    let oldest = match s.watch("/z/", start).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!(requested, start);
            assert!(oldest > start && oldest <= end - retention, "oldest {oldest}");
            oldest
        }
        Ok(_) => panic!("expected Compacted"),
        Err(e) => panic!("expected Compacted, got {e:?}"),
    };
    let mut w = s.watch("/z/", oldest).await.unwrap();
    for r in oldest + 1..=end {
        assert_eq!(next(&mut w).await.kv.mod_revision, r);
    }
    quiet(&mut w).await;
    assert!(s.watch("/z/", end - retention).await.is_ok());
    assert!(s.watch("/z/", end).await.is_ok());
}

/// Compare-and-swap under concurrency: exactly one writer wins.
pub async fn concurrent_cas(h: &Harness) {
    let s = &h.store;
    let r = s.create("/cas/k", b"0".to_vec(), None).await.unwrap();
    let updates: Vec<_> = (0..8u8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.update("/cas/k", vec![i], Some(r), None).await })
        })
        .collect();
    let creates: Vec<_> = (0..8u8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.create("/cas/new", vec![i], None).await })
        })
        .collect();
    let mut ok = 0;
    for t in updates {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 1);
    let mut ok = 0;
    for t in creates {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(rev(h).await, r + 2);
}

/// A watcher that falls behind the live channel gets contiguous events, then Compacted, then
/// the end of the stream.
pub async fn lagging_watcher_gets_compacted(h: &Harness) {
    let s = &h.store;
    let capacity = h.watch_channel_capacity.unwrap_or(0);
    let start = rev(h).await;
    let mut w = s.watch("/lag/", start).await.unwrap();
    for i in 0..capacity + h.watch_buffer + 10 {
        s.put(&format!("/lag/{i}"), Vec::new(), None).await.unwrap();
    }
    let mut expect = start + 1;
    loop {
        match tokio::time::timeout(WAIT, w.recv()).await {
            Ok(Some(Ok(ev))) => {
                assert_eq!(ev.kv.mod_revision, expect, "events must not be skipped");
                expect += 1;
            }
            Ok(Some(Err(StoreError::Compacted { requested, .. }))) => {
                assert_eq!(requested, expect - 1);
                break;
            }
            other => panic!("expected Compacted, got {other:?}"),
        }
    }
    assert!(expect <= rev(h).await, "a lagging watcher cannot have seen everything");
    match tokio::time::timeout(WAIT, w.recv()).await {
        Ok(None) => {}
        other => panic!("expected the end of the stream, got {other:?}"),
    }
}

/// With a background sweeper running (short interval), expired records are deleted without an
/// explicit sweep.
pub async fn background_sweeper(h: &Harness) {
    let s = &h.store;
    let mut w = s.watch("/bg/", rev(h).await).await.unwrap();
    s.create("/bg/a", b"a".to_vec(), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(next(&mut w).await.kind, EventKind::Put);
    h.clock.advance(Duration::from_secs(1));
    let e = next(&mut w).await;
    assert_eq!((e.kind, e.kv.key.as_str()), (EventKind::Delete, "/bg/a"));
}
