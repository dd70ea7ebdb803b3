//! `RedbStore`: the embedded, durable backend (one redb file). Tables: `kv` (key → record),
//! `expiry` ((expires-at millis, key) → (), the sweeper's index), `log` (revision → event, the
//! last N events for watch replay) and `meta` (revision and compaction counters). Invariants:
//! every write commits with `Durability::Immediate` before it returns or is broadcast; writes are
//! serialized by one mutex that also covers the broadcast, so live events go out in revision
//! order; blocking redb work runs on tokio's blocking pool.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kfsec_types::Clock;
use parking_lot::Mutex;
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use tokio::sync::broadcast;

use crate::engine::{self, Counters, Op, Outcome, Tables};
use crate::{KeyValue, ListPage, Revision, Store, StoreError, StoreOptions, WatchEvent, WatchStream};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("expiry");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

fn be(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

struct RedbTables<'t> {
    kv: Table<'t, &'static str, &'static [u8]>,
    expiry: Table<'t, (u64, &'static str), ()>,
    log: Table<'t, u64, &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    buf: Vec<u8>,
}

impl<'t> RedbTables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            kv: txn.open_table(KV).map_err(be)?,
            expiry: txn.open_table(EXPIRY).map_err(be)?,
            log: txn.open_table(LOG).map_err(be)?,
            meta: txn.open_table(META).map_err(be)?,
            buf: Vec::new(),
        })
    }
}

fn read_counters(meta: &impl ReadableTable<&'static str, u64>) -> Result<Counters, StoreError> {
    let get = |k: &str| -> Result<u64, StoreError> { Ok(meta.get(k).map_err(be)?.map(|v| v.value()).unwrap_or(0)) };
    Ok(Counters {
        revision: get(META_REVISION)?,
        compacted: get(META_COMPACTED)?,
    })
}

impl Tables for RedbTables<'_> {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        match self.kv.get(key).map_err(be)? {
            Some(v) => Ok(Some(engine::decode_record(key, v.value())?)),
            None => Ok(None),
        }
    }
    fn set(&mut self, kv: &KeyValue) -> Result<(), StoreError> {
        self.buf.clear();
        engine::encode_record(kv, &mut self.buf);
        self.kv.insert(kv.key.as_str(), self.buf.as_slice()).map_err(be)?;
        Ok(())
    }
    fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        self.kv.remove(key).map_err(be)?;
        Ok(())
    }
    fn expiry_insert(&mut self, at: u64, key: &str) -> Result<(), StoreError> {
        self.expiry.insert((at, key), ()).map_err(be)?;
        Ok(())
    }
    fn expiry_remove(&mut self, at: u64, key: &str) -> Result<(), StoreError> {
        self.expiry.remove((at, key)).map_err(be)?;
        Ok(())
    }
    fn expired_up_to(&mut self, now: u64) -> Result<Vec<(u64, String)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.expiry.range::<(u64, &str)>(..).map_err(be)? {
            let (k, _) = entry.map_err(be)?;
            let (at, key) = k.value();
            if at > now {
                break;
            }
            out.push((at, key.to_owned()));
        }
        Ok(out)
    }
    fn log_append(&mut self, ev: &WatchEvent) -> Result<(), StoreError> {
        let bytes = engine::encode_event(ev);
        self.log.insert(ev.kv.mod_revision, bytes.as_slice()).map_err(be)?;
        Ok(())
    }
    fn log_remove(&mut self, from: Revision, to: Revision) -> Result<(), StoreError> {
        let first = match self.log.first().map_err(be)? {
            Some((k, _)) => k.value(),
            None => return Ok(()),
        };
        for rev in first.max(from.saturating_add(1))..=to {
            self.log.remove(rev).map_err(be)?;
        }
        Ok(())
    }
    fn counters(&mut self) -> Result<Counters, StoreError> {
        read_counters(&self.meta)
    }
    fn set_counters(&mut self, c: Counters) -> Result<(), StoreError> {
        self.meta.insert(META_REVISION, c.revision).map_err(be)?;
        self.meta.insert(META_COMPACTED, c.compacted).map_err(be)?;
        Ok(())
    }
}

struct Inner {
    db: Database,
    clock: Arc<dyn Clock>,
    options: StoreOptions,
    write_lock: Mutex<()>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    revision: AtomicU64,
}

impl Inner {
    fn write(&self, op: Op) -> Result<Outcome, StoreError> {
        let _serial = self.write_lock.lock();
        let now = self.clock.now();
        let mut txn = self.db.begin_write().map_err(be)?;
        if self.is_volatile(&op) {
            txn.set_durability(redb::Durability::None).map_err(be)?;
        }
        let applied =
            RedbTables::open(&txn).and_then(|mut t| engine::apply(&mut t, op, now, self.options.log_retention));
        let (outcome, events, counters) = match applied {
            Ok(a) => a,
            Err(e) => {
                txn.abort().map_err(be)?;
                return Err(e);
            }
        };
        if events.is_empty() {
            txn.abort().map_err(be)?;
            return Ok(outcome);
        }
        txn.commit().map_err(be)?;
        self.revision.store(counters.revision, Ordering::SeqCst);
        for ev in events {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(Arc::new(ev));
        }
        Ok(outcome)
    }

    /// Whether `op` only touches disposable records (see `StoreOptions::volatile_prefixes`).
    fn is_volatile(&self, op: &Op) -> bool {
        let key = match op {
            Op::Create { key, .. }
            | Op::Update { key, .. }
            | Op::Put { key, .. }
            | Op::Delete { key, .. }
            | Op::Take { key } => key,
            // Expired records are gone either way; a lost sweep is simply redone.
            Op::Sweep => return true,
        };
        self.options
            .volatile_prefixes
            .iter()
            .any(|p| key.starts_with(p.as_str()))
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let now = self.clock.now();
        let txn = self.db.begin_read().map_err(be)?;
        let kv = txn.open_table(KV).map_err(be)?;
        let Some(raw) = kv.get(key).map_err(be)? else {
            return Ok(None);
        };
        let rec = engine::decode_record(key, raw.value())?;
        Ok(engine::is_live(&rec, now).then_some(rec))
    }

    fn list(&self, prefix: &str, limit: usize, start_after: Option<&str>) -> Result<ListPage, StoreError> {
        let now = self.clock.now();
        let txn = self.db.begin_read().map_err(be)?;
        let revision = read_counters(&txn.open_table(META).map_err(be)?)?.revision;
        let kv = txn.open_table(KV).map_err(be)?;
        let start = engine::start_bound(prefix, start_after);
        let range = kv.range::<&str>((start, Bound::Unbounded)).map_err(be)?;
        let iter = range.map(|entry| {
            let (k, v) = entry.map_err(be)?;
            engine::decode_record(k.value(), v.value())
        });
        let (items, continue_key) = engine::page(iter, prefix, limit, now)?;
        Ok(ListPage {
            items,
            revision,
            continue_key,
        })
    }

    /// Events after `after` under `prefix` from the log, and the revision of the snapshot.
    fn replay(&self, prefix: &str, after: Revision) -> Result<(Vec<WatchEvent>, Revision), StoreError> {
        let txn = self.db.begin_read().map_err(be)?;
        let counters = read_counters(&txn.open_table(META).map_err(be)?)?;
        engine::check_watchable(after, counters.compacted)?;
        let log = txn.open_table(LOG).map_err(be)?;
        let mut out = Vec::new();
        if after < counters.revision {
            for entry in log.range(after.saturating_add(1)..).map_err(be)? {
                let (_, v) = entry.map_err(be)?;
                let ev = engine::decode_event(v.value())?;
                if ev.kv.key.starts_with(prefix) {
                    out.push(ev);
                }
            }
        }
        Ok((out, counters.revision))
    }
}

/// The redb backend. Cheap to share (`Arc`); dropping the last handle closes the file.
pub struct RedbStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// Creates `path` with mode 0600 if absent and makes an existing file 0600: the store holds
/// password hashes, token digests and session records, readable by the owner only whatever the
/// process's umask (stores created by older builds under a permissive umask are tightened).
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

impl RedbStore {
    /// Opens (creating if absent) the database at `path` with default options. Starts the
    /// background TTL sweeper if called inside a tokio runtime. `Err(Locked)` if another process
    /// (or another handle in this process) has the file open.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<Arc<Self>, StoreError> {
        Self::open_with_options(path, clock, StoreOptions::default())
    }

    /// Like [`RedbStore::open`], with `options`.
    pub fn open_with_options(
        path: &Path,
        clock: Arc<dyn Clock>,
        options: StoreOptions,
    ) -> Result<Arc<Self>, StoreError> {
        private_file(path).map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        let db = Database::create(path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => StoreError::Locked,
            other => StoreError::Backend(format!("opening {}: {other}", path.display())),
        })?;
        let counters = {
            let txn = db.begin_write().map_err(be)?;
            let c = {
                let mut t = RedbTables::open(&txn)?;
                let c = t.counters()?;
                t.set_counters(c)?;
                c
            };
            txn.commit().map_err(be)?;
            c
        };
        let (events, _) = broadcast::channel(options.watch_channel_capacity.max(1));
        let inner = Arc::new(Inner {
            db,
            clock,
            options,
            write_lock: Mutex::new(()),
            events,
            revision: AtomicU64::new(counters.revision),
        });
        engine::spawn_sweeper(
            Arc::downgrade(&inner),
            inner.options.sweep_interval,
            |inner: Arc<Inner>| async move { sweep(inner).await },
        );
        Ok(Arc::new(Self { inner }))
    }

    /// Deletes every expired record now (one Delete event each); returns how many.
    pub async fn sweep_expired(&self) -> Result<usize, StoreError> {
        sweep(self.inner.clone()).await
    }

    async fn blocking<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Inner) -> Result<R, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    async fn write(&self, op: Op) -> Result<Outcome, StoreError> {
        self.blocking(move |inner| inner.write(op)).await
    }

    async fn written(&self, op: Op) -> Result<Revision, StoreError> {
        match self.write(op).await? {
            Outcome::Written(rev) => Ok(rev),
            _ => Err(unexpected()),
        }
    }
}

async fn sweep(inner: Arc<Inner>) -> Result<usize, StoreError> {
    let swept = tokio::task::spawn_blocking(move || inner.write(Op::Sweep))
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))??;
    match swept {
        Outcome::Swept(n) => Ok(n),
        _ => Err(unexpected()),
    }
}

fn unexpected() -> StoreError {
    StoreError::Backend("unexpected operation outcome".into())
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |inner| inner.get(&key)).await
    }

    async fn list(&self, prefix: &str, limit: usize, start_after: Option<&str>) -> Result<ListPage, StoreError> {
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        self.blocking(move |inner| inner.list(&prefix, limit, start_after.as_deref()))
            .await
    }

    async fn create(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.written(Op::Create {
            key: key.to_owned(),
            value,
            ttl,
        })
        .await
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
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.written(Op::Put {
            key: key.to_owned(),
            value,
            ttl,
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        match self
            .write(Op::Delete {
                key: key.to_owned(),
                expected,
            })
            .await?
        {
            Outcome::Deleted(kv) => Ok(kv),
            _ => Err(unexpected()),
        }
    }

    async fn take(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        match self.write(Op::Take { key: key.to_owned() }).await? {
            Outcome::Taken(kv) => Ok(kv),
            _ => Err(unexpected()),
        }
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.inner.revision.load(Ordering::SeqCst))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        // Subscribe before reading the snapshot: every event after it arrives live (duplicates
        // of replayed events are dropped by revision).
        let live = self.inner.events.subscribe();
        let p = prefix.to_owned();
        let (replay, snapshot) = self.blocking(move |inner| inner.replay(&p, after)).await?;
        Ok(engine::spawn_watch(
            prefix.to_owned(),
            after,
            replay,
            snapshot,
            live,
            self.inner.options.watch_buffer,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;
    use kfsec_types::{ManualClock, UnixTime};

    fn harness_at(path: &Path, opts: StoreOptions) -> (conformance::Harness, Arc<RedbStore>) {
        let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
        let store = RedbStore::open_with_options(path, clock.clone(), opts).unwrap();
        let s = store.clone();
        let h = conformance::Harness {
            store: store.clone(),
            clock,
            sweep: Box::new(move || {
                let s = s.clone();
                Box::pin(async move { s.sweep_expired().await })
            }),
            log_retention: conformance::TEST_LOG_RETENTION,
            watch_channel_capacity: Some(conformance::TEST_WATCH_CAPACITY),
            watch_buffer: conformance::TEST_WATCH_BUFFER,
        };
        (h, store)
    }

    #[tokio::test]
    async fn redb_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let (h, _) = harness_at(&dir.path().join("s.redb"), conformance::test_options());
        conformance::run_all(&h).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_conformance_multi_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (h, _) = harness_at(&dir.path().join("s.redb"), conformance::test_options());
        conformance::run_all(&h).await;
    }

    #[tokio::test]
    async fn the_store_file_is_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // New file: 0600 even though the default mode of new files here would be 0644 or wider.
        let fresh = dir.path().join("fresh.redb");
        let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
        drop(RedbStore::open(&fresh, clock.clone()).unwrap());
        assert_eq!(mode(&fresh), 0o600);
        // A store left world-readable by an older build is tightened at open, data intact.
        let old = dir.path().join("old.redb");
        {
            let s = RedbStore::open(&old, clock.clone()).unwrap();
            s.create("/k", b"v".to_vec(), None).await.unwrap();
        }
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o666)).unwrap();
        let s = RedbStore::open(&old, clock).unwrap();
        assert_eq!(mode(&old), 0o600);
        assert_eq!(s.get("/k").await.unwrap().unwrap().value, b"v".to_vec());
    }

    #[tokio::test]
    async fn volatile_writes_behave_the_same_and_persist_with_the_next_durable_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.redb");
        // every key volatile: the whole conformance suite must still hold
        let opts = StoreOptions {
            volatile_prefixes: vec!["/".into()],
            ..conformance::test_options()
        };
        let (h, _) = harness_at(&path, opts);
        conformance::run_all(&h).await;
        drop(h);
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let opts = StoreOptions {
            volatile_prefixes: vec!["/tmp/".into()],
            ..conformance::test_options()
        };
        let path2 = dir.path().join("w.redb");
        {
            let s = RedbStore::open_with_options(&path2, clock.clone(), opts.clone()).unwrap();
            s.create("/tmp/code", b"c".to_vec(), None).await.unwrap();
            s.create("/users/a", b"u".to_vec(), None).await.unwrap();
        }
        let s = RedbStore::open_with_options(&path2, clock, opts).unwrap();
        assert!(
            s.get("/tmp/code").await.unwrap().is_some(),
            "made durable by the later commit"
        );
        assert!(s.get("/users/a").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn redb_background_sweeper() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            sweep_interval: Some(Duration::from_millis(20)),
            ..conformance::test_options()
        };
        let (h, _) = harness_at(&dir.path().join("s.redb"), opts);
        conformance::background_sweeper(&h).await;
    }

    #[tokio::test]
    async fn reopen_keeps_data_revision_log_and_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let opts = conformance::test_options();
        let (r1, r2, r_ttl) = {
            let s = RedbStore::open_with_options(&path, clock.clone(), opts.clone()).unwrap();
            let r1 = s.create("/r/a", b"1".to_vec(), None).await.unwrap();
            let r2 = s.update("/r/a", b"2".to_vec(), Some(r1), None).await.unwrap();
            let r_ttl = s
                .create("/r/t", b"t".to_vec(), Some(Duration::from_secs(5)))
                .await
                .unwrap();
            (r1, r2, r_ttl)
        };
        let s = RedbStore::open_with_options(&path, clock.clone(), opts.clone()).unwrap();
        assert_eq!(s.revision().await.unwrap(), r_ttl);
        let kv = s.get("/r/a").await.unwrap().unwrap();
        assert_eq!(
            (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
            (&b"2"[..], r1, r2)
        );
        // The change log survived too: replay from 0.
        let mut w = s.watch("/r/", 0).await.unwrap();
        let mut revs = Vec::new();
        for _ in 0..3 {
            revs.push(w.recv().await.unwrap().unwrap().kv.mod_revision);
        }
        assert_eq!(revs, vec![r1, r2, r_ttl]);
        // New writes continue the counter.
        assert_eq!(s.put("/r/b", b"x".to_vec(), None).await.unwrap(), r_ttl + 1);
        // The expiry index survived: the TTL record is swept after reopening.
        clock.advance(Duration::from_secs(5));
        assert!(s.get("/r/t").await.unwrap().is_none());
        assert_eq!(s.sweep_expired().await.unwrap(), 1);
        drop(w);
        drop(s);
        let s = RedbStore::open_with_options(&path, clock, opts).unwrap();
        assert_eq!(s.revision().await.unwrap(), r_ttl + 2);
        assert_eq!(s.sweep_expired().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn second_open_while_open_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let clock = ManualClock::new(UnixTime::from_secs(1));
        let s = RedbStore::open(&path, clock.clone()).unwrap();
        s.put("/k", b"v".to_vec(), None).await.unwrap();
        let err = RedbStore::open(&path, clock.clone()).unwrap_err();
        assert!(matches!(err, StoreError::Locked), "{err:?}");
        drop(s);
        // Released on drop.
        let s = RedbStore::open(&path, clock).unwrap();
        assert!(s.get("/k").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn list_reads_only_the_prefix_range() {
        // 20 keys in one namespace among many others; a page is served from the range alone.
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(UnixTime::from_secs(1));
        let s = RedbStore::open(&dir.path().join("s.redb"), clock).unwrap();
        {
            // Bulk-load directly in one transaction to keep the test fast.
            let inner = s.inner.clone();
            tokio::task::spawn_blocking(move || {
                let txn = inner.db.begin_write().unwrap();
                {
                    let mut t = RedbTables::open(&txn).unwrap();
                    for ns in 0..500 {
                        for i in 0..20 {
                            let key = format!("/kfsec/pipelines/ns{ns:03}/p{i:02}");
                            let kv = KeyValue {
                                key,
                                value: b"{}".to_vec(),
                                create_revision: 1,
                                mod_revision: 1,
                                expires_at: None,
                            };
                            t.set(&kv).unwrap();
                        }
                    }
                    t.set_counters(Counters {
                        revision: 1,
                        compacted: 1,
                    })
                    .unwrap();
                }
                txn.commit().unwrap();
            })
            .await
            .unwrap();
        }
        let page = s.list("/kfsec/pipelines/ns250/", 0, None).await.unwrap();
        assert_eq!(page.items.len(), 20);
        assert!(
            page.items
                .iter()
                .all(|kv| kv.key.starts_with("/kfsec/pipelines/ns250/"))
        );
        let page = s
            .list("/kfsec/pipelines/ns250/", 5, Some("/kfsec/pipelines/ns250/p17"))
            .await
            .unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.continue_key, None);
    }
}
