//! Tests against real etcd members (see [`crate::testing`]): the shared conformance suite, and
//! what only etcd can get wrong — compaction, lease vs stored expiry, CAS races across clients,
//! the prefix boundary, and a member killed under load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, PutOptions};
use kfsec_store::conformance;
use kfsec_store::{EventKind, Revision, Store, StoreError, WatchStream};
use kfsec_types::{ManualClock, SequenceRng, UnixTime};

use crate::testing::{EtcdCluster, etcd_binary};
use crate::{Compaction, EtcdConfig, EtcdError, EtcdStore, connect};

/// One random source for every store of the test binary, so that no two stores name their
/// receipts alike (as two replicas' OS randomness never does).
pub(crate) fn rng() -> Arc<dyn kfsec_types::Rng> {
    static RNG: std::sync::OnceLock<Arc<SequenceRng>> = std::sync::OnceLock::new();
    RNG.get_or_init(Arc::default).clone()
}

/// A single-member etcd, or `None` to skip (etcd missing and not required).
async fn single() -> Option<EtcdCluster> {
    let bin = etcd_binary().unwrap()?;
    Some(EtcdCluster::single(&bin).await.unwrap())
}

fn config(cluster: &EtcdCluster, prefix: &str) -> EtcdConfig {
    let mut c = EtcdConfig::new(cluster.endpoints(), prefix);
    // The suite drives expiry with a manual clock; leases must not fire during a test.
    c.lease_grace = Duration::from_secs(3600);
    c.watch_buffer = conformance::TEST_WATCH_BUFFER;
    c
}

/// The etcd store as the suite sees it: before each `watch`, history is compacted down to the
/// suite's retention (etcd keeps history until compacted; the leader's schedule does this in
/// production), so "a watch older than the retained log is Compacted" holds as for redb.
struct Retaining {
    inner: Arc<EtcdStore>,
    keep: u64,
}

#[async_trait::async_trait]
impl kfsec_store::forward::Forward for Retaining {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.inner
            .compact(Compaction::KeepRevisions(self.keep))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        self.inner.watch(prefix, after).await
    }
}

async fn harness(cluster: &EtcdCluster, prefix: &str) -> (conformance::Harness, Arc<EtcdStore>) {
    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let store = Arc::new(connect(&config(cluster, prefix), clock.clone(), rng()).await.unwrap());
    let s = store.clone();
    let h = conformance::Harness {
        store: Arc::new(Retaining {
            inner: store.clone(),
            keep: conformance::TEST_LOG_RETENTION as u64,
        }),
        clock,
        sweep: Box::new(move || {
            let s = s.clone();
            Box::pin(async move { s.sweep_expired().await })
        }),
        log_retention: conformance::TEST_LOG_RETENTION,
        watch_channel_capacity: None,
        watch_buffer: conformance::TEST_WATCH_BUFFER,
    };
    (h, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_conformance() {
    let Some(cluster) = single().await else { return };
    let (h, _) = harness(&cluster, "/kfsec").await;
    conformance::run_all(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_conformance_on_three_members() {
    let Some(bin) = etcd_binary().unwrap() else { return };
    let cluster = EtcdCluster::three(&bin).await.unwrap();
    let (h, _) = harness(&cluster, "/deep/prefix/").await;
    conformance::run_all(&h).await;
}

async fn next(w: &mut WatchStream) -> Result<kfsec_store::WatchEvent, StoreError> {
    match tokio::time::timeout(Duration::from_secs(10), w.recv()).await {
        Ok(Some(item)) => item,
        other => panic!("expected a watch item, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_from_compacted_history_is_compacted() {
    let Some(cluster) = single().await else { return };
    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let store = connect(&config(&cluster, "/kfsec"), clock, rng()).await.unwrap();
    let r0 = store.revision().await.unwrap();
    for i in 0..10 {
        store.put(&format!("/c/{i}"), vec![i], None).await.unwrap();
    }
    let end = store.revision().await.unwrap();
    let at = store.compact(Compaction::KeepRevisions(4)).await.unwrap().unwrap();
    assert_eq!(at, end - 4);
    // Compacting again at the same point is not an error.
    assert_eq!(store.compact(Compaction::BeforeRevision(at)).await.unwrap(), Some(at));
    assert_eq!(store.compact(Compaction::KeepRevisions(end + 5)).await.unwrap(), None);
    match store.watch("/c/", r0).await {
        Err(StoreError::Compacted { requested, oldest }) => assert_eq!((requested, oldest), (r0, at - 1)),
        other => panic!("expected Compacted, got {other:?}"),
    }
    // A watch from the oldest available replays everything from the compaction revision on.
    let mut w = store.watch("/c/", at - 1).await.unwrap();
    for r in at..=end {
        assert_eq!(next(&mut w).await.unwrap().kv.mod_revision, r);
    }
    // Reads are unaffected by compaction.
    assert_eq!(store.list("/c/", 0, None).await.unwrap().items.len(), 10);
}

#[tokio::test]
async fn ttl_is_enforced_from_the_stored_expiry_and_the_lease_cleans_up() {
    let Some(cluster) = single().await else { return };
    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let mut cfg = config(&cluster, "/kfsec");
    cfg.lease_grace = Duration::ZERO;
    let store = connect(&cfg, clock.clone(), rng()).await.unwrap();
    let mut raw = cluster.raw_client().await.unwrap();

    // Expired by the clock, long before any lease could fire: invisible to every read.
    store
        .create("/t/code", b"c".to_vec(), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(61));
    assert!(store.get("/t/code").await.unwrap().is_none());
    assert!(store.list("/t/", 0, None).await.unwrap().items.is_empty());
    assert!(store.take("/t/code").await.unwrap().is_none());
    let lease = raw.get("/kfsec/t/code", None).await.unwrap().kvs()[0].lease();
    assert_ne!(lease, 0, "a TTL record carries a lease");
    assert!(
        raw.lease_time_to_live(lease, None).await.unwrap().ttl() > 50,
        "the lease has not fired: expiry came from the value"
    );

    // The lease (2 s minimum) deletes a record nobody sweeps, with a Delete event.
    let r = store.revision().await.unwrap();
    let mut w = store.watch("/t/", r).await.unwrap();
    store
        .create("/t/short", b"s".to_vec(), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(next(&mut w).await.unwrap().kind, EventKind::Put);
    let del = next(&mut w).await.unwrap();
    assert_eq!(
        (del.kind, del.kv.key.as_str(), del.kv.value.as_slice()),
        (EventKind::Delete, "/t/short", &b"s"[..])
    );
    assert!(raw.get("/kfsec/t/short", None).await.unwrap().kvs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_from_two_replicas_lose_nothing() {
    let Some(cluster) = single().await else { return };
    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let a = Arc::new(
        connect(&config(&cluster, "/kfsec"), clock.clone(), rng())
            .await
            .unwrap(),
    );
    let b = Arc::new(connect(&config(&cluster, "/kfsec"), clock, rng()).await.unwrap());
    a.create("/n/counter", b"0".to_vec(), None).await.unwrap();
    const TASKS: usize = 8;
    const EACH: usize = 15;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..EACH {
                loop {
                    let kv = s.get("/n/counter").await.unwrap().unwrap();
                    let n: usize = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                    match s
                        .update(
                            "/n/counter",
                            (n + 1).to_string().into_bytes(),
                            Some(kv.mod_revision),
                            None,
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("{e:?}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for h in handles {
        conflicts += h.await.unwrap();
    }
    let kv = a.get("/n/counter").await.unwrap().unwrap();
    assert_eq!(kv.value, (TASKS * EACH).to_string().into_bytes());
    assert!(conflicts > 0, "the race never happened; the test proves nothing");
}

#[tokio::test]
async fn nothing_outside_the_prefix_is_read_or_written() {
    let Some(cluster) = single().await else { return };
    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let store = connect(&config(&cluster, "/kfsec/"), clock.clone(), rng())
        .await
        .unwrap();
    assert_eq!(store.prefix(), "/kfsec");
    let mut raw = cluster.raw_client().await.unwrap();
    let foreign = [
        "/kfsec",
        "/kfsec2/x",
        "/kfsec0",
        "/kfsed",
        "/other/y",
        "kfsec/z",
        "/kfsec.bak/a",
    ];
    for k in foreign {
        raw.put(k, b"foreign", None).await.unwrap();
    }
    let r = store.revision().await.unwrap();
    let mut w = store.watch("", r).await.unwrap();
    store
        .put("/a", b"1".to_vec(), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    store.put("/b/c", b"2".to_vec(), None).await.unwrap();
    raw.put("/kfsec2/during", b"foreign", None).await.unwrap();
    store.delete("/b/c", None).await.unwrap();
    clock.advance(Duration::from_secs(2));
    assert_eq!(store.sweep_expired().await.unwrap(), 1);

    for prefix in ["", "/", "/a", "/b"] {
        let page = store.list(prefix, 0, None).await.unwrap();
        assert!(page.items.is_empty(), "{prefix:?}: {:?}", page.items);
    }
    let page = store.list("2", 0, None).await.unwrap();
    assert!(page.items.is_empty());
    // Watch sees exactly the store's four writes, none of the foreign one.
    let kinds: Vec<(EventKind, String)> = [
        next(&mut w).await,
        next(&mut w).await,
        next(&mut w).await,
        next(&mut w).await,
    ]
    .into_iter()
    .map(|e| {
        let e = e.unwrap();
        (e.kind, e.kv.key)
    })
    .collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Put, "/a".to_owned()),
            (EventKind::Put, "/b/c".to_owned()),
            (EventKind::Delete, "/b/c".to_owned()),
            (EventKind::Delete, "/a".to_owned()),
        ]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), w.recv())
            .await
            .is_err()
    );

    // Keys that do not start with `/` are refused before anything is sent, and so are the
    // reserved ones (the probe key, the receipts' range).
    for bad in ["", "a", "../x", "2/x", "/", "/\0receipt/x", "/\0"] {
        assert!(
            matches!(store.put(bad, Vec::new(), None).await, Err(StoreError::Backend(_))),
            "{bad:?}"
        );
        assert!(matches!(store.get(bad).await, Err(StoreError::Backend(_))), "{bad:?}");
    }
    // Every foreign key still holds its value, unchanged since it was written.
    for k in foreign {
        let resp = raw.get(k, None).await.unwrap();
        assert_eq!(resp.kvs()[0].value(), b"foreign", "{k}");
        assert!(
            u64::try_from(resp.kvs()[0].mod_revision()).unwrap() <= r,
            "{k} was rewritten"
        );
    }
    let all = raw.get("", Some(GetOptions::new().with_all_keys())).await.unwrap();
    let mut receipts = 0;
    for kv in all.kvs() {
        let k = String::from_utf8_lossy(kv.key());
        if k.starts_with("/kfsec/\0receipt/") {
            // Each write's and delete's receipt: leased, inside the prefix, never listed,
            // watched or swept (the checks above).
            assert_ne!(kv.lease(), 0, "{k}");
            receipts += 1;
            continue;
        }
        assert!(
            foreign.contains(&k.as_ref()) || k == "/kfsec2/during",
            "unexpected key {k}"
        );
    }
    assert_eq!(receipts, 3, "the two puts and the delete");

    // A value under the prefix that is not a kfsec record: an error, never a panic; the
    // sweeper leaves it alone.
    raw.put("/kfsec/bad", b"\x01\xff garbage", Some(PutOptions::new()))
        .await
        .unwrap();
    assert!(matches!(store.get("/bad").await, Err(StoreError::Backend(_))));
    assert!(matches!(store.list("", 0, None).await, Err(StoreError::Backend(_))));
    assert_eq!(store.sweep_expired().await.unwrap(), 0);
    assert_eq!(raw.get("/kfsec/bad", None).await.unwrap().kvs().len(), 1);
}

#[tokio::test]
async fn bad_configuration_and_unreachable_endpoints_are_named() {
    let clock: Arc<dyn kfsec_types::Clock> = ManualClock::new(UnixTime::from_secs(1));
    let mut cfg = EtcdConfig::new(vec!["http://127.0.0.1:1".into()], "/kfsec");
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.request_timeout = Duration::from_millis(500);
    let err = connect(&cfg, clock.clone(), rng()).await.unwrap_err();
    assert!(matches!(err, EtcdError::Unreachable(_)), "{err:?}");
    assert!(err.to_string().contains("http://127.0.0.1:1"), "{err}");

    for (endpoints, prefix, why) in [
        (vec![], "/kfsec", "no endpoints"),
        (vec!["127.0.0.1:2379".to_owned()], "/kfsec", "127.0.0.1:2379"),
        (
            vec!["https://127.0.0.1:2379".to_owned()],
            "/kfsec",
            "https://127.0.0.1:2379",
        ),
        (vec!["http://127.0.0.1:2379".to_owned()], "/", "prefix"),
        (vec!["http://127.0.0.1:2379".to_owned()], "kfsec", "prefix"),
        (vec!["http://127.0.0.1:2379".to_owned()], "", "prefix"),
    ] {
        let cfg = EtcdConfig::new(endpoints, prefix);
        let err = connect(&cfg, clock.clone(), rng()).await.unwrap_err();
        assert!(matches!(err, EtcdError::Config(_)), "{err:?}");
        assert!(err.to_string().contains(why), "{err} should name {why}");
    }
    let mut cfg = EtcdConfig::new(vec!["https://127.0.0.1:2379".into()], "/kfsec");
    cfg.tls = Some(crate::EtcdTls {
        ca_file: Some("/nonexistent/ca.crt".into()),
        ..Default::default()
    });
    let err = connect(&cfg, clock.clone(), rng()).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.crt"), "{err}");
    let mut cfg = EtcdConfig::new(vec!["http://127.0.0.1:2379".into()], "/kfsec");
    cfg.username = Some("root".into());
    cfg.password = Some("s3cret-pw".into());
    assert!(!format!("{cfg:?}").contains("s3cret-pw"));
}

/// The index of the member that is the raft leader.
pub(crate) async fn leader_of(cluster: &EtcdCluster) -> usize {
    for i in 0..3 {
        let mut c = etcd_client::Client::connect([cluster.client_url(i)], None)
            .await
            .unwrap();
        let st = c.status().await.unwrap();
        if st.header().unwrap().member_id() == st.leader() {
            return i;
        }
    }
    panic!("no leader");
}

/// Kills one member of a 3-member cluster (the raft leader or a follower) while a writer and a
/// watcher run through one store connected to all three endpoints: no write fails (in-flight
/// ones included: an ambiguous answer is resolved by reading the key), every acknowledged write
/// is there afterwards, and every watch delivers every event once, in order.
async fn kill_member_under_load(kill_leader: bool) {
    let Some(bin) = etcd_binary().unwrap() else { return };
    let mut cluster = EtcdCluster::three(&bin).await.unwrap();
    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let store = Arc::new(connect(&config(&cluster, "/kfsec"), clock, rng()).await.unwrap());
    let r0 = store.revision().await.unwrap();
    // Several watches, so that some are (very likely) on the member that dies and must be
    // re-opened through another one.
    let mut watches = Vec::new();
    for _ in 0..6 {
        watches.push(store.watch("/m/", r0).await.unwrap());
    }

    let acked = Arc::new(std::sync::Mutex::new(Vec::<(String, Revision)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, acked, stop) = (store.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = format!("/m/{i:05}");
                match store.create(&key, vec![1], None).await {
                    Ok(r) => acked.lock().unwrap().push((key, r)),
                    Err(e) => failures.push(format!("{key}: {e}")),
                }
                i += 1;
            }
            failures
        })
    };
    let acked_count = || acked.lock().unwrap().len();
    while acked_count() < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let leader = leader_of(&cluster).await;
    let victim = if kill_leader { leader } else { (leader + 1) % 3 };
    cluster.kill(victim);
    let at_kill = acked_count();
    while acked_count() < at_kill + 40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let failures = writer.await.unwrap();
    assert!(
        failures.is_empty(),
        "writes failed after member {victim} died: {failures:?}"
    );

    let acked = acked.lock().unwrap().clone();
    let page = store.list("/m/", 0, None).await.unwrap();
    let stored: Vec<(String, Revision)> = page.items.iter().map(|kv| (kv.key.clone(), kv.mod_revision)).collect();
    assert_eq!(stored, acked, "exactly the acknowledged writes, at their revisions");

    for w in &mut watches {
        let mut seen = Vec::new();
        while seen.len() < acked.len() {
            seen.push(next(w).await.unwrap().kv.mod_revision);
        }
        assert_eq!(seen, acked.iter().map(|(_, r)| *r).collect::<Vec<_>>());
        assert!(
            tokio::time::timeout(Duration::from_millis(200), w.recv())
                .await
                .is_err()
        );
    }
    assert!(store.health().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_fails_no_request() {
    kill_member_under_load(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_follower_fails_no_request() {
    kill_member_under_load(false).await;
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let Some(bin) = etcd_binary().unwrap() else { return };
    let cluster = EtcdCluster::single_tls(&bin).await.unwrap();
    let pki = cluster.pki().unwrap().clone();
    let endpoint = cluster.client_url(0).to_owned();
    assert!(endpoint.starts_with("https://"));
    let clock: Arc<dyn kfsec_types::Clock> = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let with = |tls: crate::EtcdTls| {
        let mut c = EtcdConfig::new(vec![endpoint.clone()], "/kfsec");
        c.tls = Some(tls);
        c.connect_timeout = Duration::from_secs(2);
        c.request_timeout = Duration::from_secs(2);
        c
    };
    let good = crate::EtcdTls {
        ca_file: Some(pki.ca_file.clone()),
        cert_file: Some(pki.client_cert.clone()),
        key_file: Some(pki.client_key.clone()),
    };
    let store = connect(&with(good.clone()), clock.clone(), rng()).await.unwrap();
    let r = store.put("/tls", b"over TLS".to_vec(), None).await.unwrap();
    assert_eq!(store.get("/tls").await.unwrap().unwrap().mod_revision, r);
    assert!(store.health().await.is_ok());

    // No client certificate: the member refuses; the error names the endpoint.
    let no_cert = crate::EtcdTls {
        cert_file: None,
        key_file: None,
        ..good.clone()
    };
    let err = connect(&with(no_cert), clock.clone(), rng()).await.unwrap_err();
    eprintln!("no client certificate: {err}");
    assert!(err.to_string().contains(&endpoint), "{err}");

    // A CA that did not sign the member's certificate: refused, naming the endpoint.
    let other = tempfile::tempdir().unwrap();
    let other_pki = crate::testing::TestPki::generate(other.path()).unwrap();
    let wrong_ca = crate::EtcdTls {
        ca_file: Some(other_pki.ca_file.clone()),
        ..good.clone()
    };
    let err = connect(&with(wrong_ca), clock.clone(), rng()).await.unwrap_err();
    eprintln!("wrong CA: {err}");
    assert!(matches!(err, EtcdError::Unreachable(_)), "{err:?}");
    assert!(err.to_string().contains(&endpoint), "{err}");

    // A key file that is not a key: refused before connecting.
    let bad_key = crate::EtcdTls {
        key_file: Some(pki.ca_file.clone()),
        ..good
    };
    let err = connect(&with(bad_key), clock, rng()).await.unwrap_err();
    assert!(err.to_string().contains(&endpoint), "{err}");
}

#[tokio::test]
async fn etcd_users_limited_to_the_prefix() {
    let Some(cluster) = single().await else { return };
    let mut raw = cluster.raw_client().await.unwrap();
    raw.user_add("root", "root-pw", None).await.unwrap();
    raw.user_grant_role("root", "root").await.unwrap();
    raw.role_add("kfsec").await.unwrap();
    raw.role_grant_permission("kfsec", etcd_client::Permission::read_write("/kfsec/").with_prefix())
        .await
        .unwrap();
    raw.user_add("kfsec", "kfsec-pw", None).await.unwrap();
    raw.user_grant_role("kfsec", "kfsec").await.unwrap();
    raw.auth_enable().await.unwrap();

    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let mut cfg = config(&cluster, "/kfsec");
    cfg.username = Some("kfsec".into());
    cfg.password = Some("kfsec-pw".into());
    let store = connect(&cfg, clock.clone(), rng()).await.unwrap();
    // Every operation stays inside the role's prefix.
    let r0 = store.revision().await.unwrap();
    let mut w = store.watch("/", r0).await.unwrap();
    store
        .create("/a", b"1".to_vec(), Some(Duration::from_secs(5)))
        .await
        .unwrap();
    store.update("/a", b"2".to_vec(), None, None).await.unwrap();
    assert_eq!(store.list("", 0, None).await.unwrap().items.len(), 1);
    assert!(store.take("/a").await.unwrap().is_some());
    assert_eq!(store.sweep_expired().await.unwrap(), 0);
    assert!(store.health().await.is_ok());
    for _ in 0..3 {
        assert!(next(&mut w).await.is_ok());
    }
    // etcd 3.4 lets a prefix-limited user compact (the leader's schedule needs no root).
    assert!(store.compact(Compaction::KeepRevisions(1)).await.unwrap().is_some());

    cfg.password = Some("wrong".into());
    let err = connect(&cfg, clock, rng()).await.unwrap_err();
    eprintln!("wrong password: {err}");
    assert!(err.to_string().contains(&cluster.client_url(0).to_owned()), "{err}");
    assert!(!err.to_string().contains("wrong"), "{err}");
}

#[tokio::test]
async fn ttl_records_share_a_lease_and_outlive_a_revoked_one() {
    let Some(cluster) = single().await else { return };
    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let store = connect(&config(&cluster, "/kfsec"), clock, rng()).await.unwrap();
    let mut raw = cluster.raw_client().await.unwrap();
    let lease_of = |resp: etcd_client::GetResponse| resp.kvs()[0].lease();
    let ttl = Some(Duration::from_secs(600));
    store.create("/s/a", Vec::new(), ttl).await.unwrap();
    store.create("/s/b", Vec::new(), ttl).await.unwrap();
    store
        .create("/s/c", Vec::new(), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let a = lease_of(raw.get("/kfsec/s/a", None).await.unwrap());
    assert_ne!(a, 0);
    assert_eq!(
        lease_of(raw.get("/kfsec/s/b", None).await.unwrap()),
        a,
        "same TTL class: one lease"
    );
    assert_ne!(lease_of(raw.get("/kfsec/s/c", None).await.unwrap()), a);
    // The shared lease lasts past every attached record's stored expiry.
    let left = raw.lease_time_to_live(a, None).await.unwrap().ttl();
    assert!(left >= 600 + 3600, "{left}");

    // An operator revokes it: its records go; the next TTL write gets a new lease.
    raw.lease_revoke(a).await.unwrap();
    assert!(store.get("/s/a").await.unwrap().is_none());
    store.create("/s/d", Vec::new(), ttl).await.unwrap();
    let d = lease_of(raw.get("/kfsec/s/d", None).await.unwrap());
    assert!(d != 0 && d != a);
}

#[tokio::test]
async fn a_record_written_over_an_expired_one_keeps_its_own_create_revision() {
    let Some(cluster) = single().await else { return };
    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let store = connect(&config(&cluster, "/kfsec"), clock.clone(), rng())
        .await
        .unwrap();
    let old = store
        .create("/r/k", b"old".to_vec(), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(2));
    // etcd still holds the expired record (created at `old`); the store starts a new one.
    let new = store.put("/r/k", b"new".to_vec(), None).await.unwrap();
    let mut w = store.watch("/r/", new).await.unwrap();
    let r2 = store.update("/r/k", b"v2".to_vec(), Some(new), None).await.unwrap();
    let r3 = store
        .update("/r/k", b"v3".to_vec(), None, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let kv = store.get("/r/k").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (new, r3));
    assert!(old < new);
    let e = next(&mut w).await.unwrap();
    assert_eq!((e.kv.create_revision, e.kv.mod_revision), (new, r2));
    let taken = store.take("/r/k").await.unwrap().unwrap();
    assert_eq!(taken.create_revision, new);
    let del = next(&mut w).await.unwrap();
    let del2 = next(&mut w).await.unwrap();
    assert_eq!((del.kind, del2.kind), (EventKind::Put, EventKind::Delete));
    assert_eq!(del2.kv.create_revision, new);
    // Re-created after the take: etcd's own create revision again.
    let fresh = store.create("/r/k", Vec::new(), None).await.unwrap();
    assert_eq!(store.get("/r/k").await.unwrap().unwrap().create_revision, fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_fails_within_the_deadline_and_recovers_by_itself() {
    let Some(mut cluster) = single().await else { return };
    let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
    let mut cfg = config(&cluster, "/kfsec");
    cfg.request_timeout = Duration::from_secs(1);
    let store = connect(&cfg, clock, rng()).await.unwrap();
    store.put("/d/before", b"1".to_vec(), None).await.unwrap();
    let r = store.revision().await.unwrap();
    let mut w = store.watch("/d/", r).await.unwrap();

    cluster.kill(0);
    let started = tokio::time::Instant::now();
    for op in 0..3 {
        let res = match op {
            0 => store.get("/d/before").await.map(|_| ()),
            1 => store.put("/d/x", Vec::new(), None).await.map(|_| ()),
            _ => store
                .create("/d/y", Vec::new(), Some(Duration::from_secs(60)))
                .await
                .map(|_| ()),
        };
        assert!(matches!(res, Err(StoreError::Backend(_))), "{op}: {res:?}");
    }
    assert!(store.health().await.is_err());
    // Each operation gives up after about 2 × request_timeout.
    assert!(started.elapsed() < Duration::from_secs(9), "{:?}", started.elapsed());

    // etcd comes back (same data): the same store serves again, the watch resumed on its own.
    cluster.spawn(0).unwrap();
    cluster.wait_ready(0, Duration::from_secs(30)).await.unwrap();
    assert_eq!(store.get("/d/before").await.unwrap().unwrap().value, b"1");
    let r2 = store.put("/d/after", b"2".to_vec(), None).await.unwrap();
    let e = next(&mut w).await.unwrap();
    assert_eq!((e.kv.key.as_str(), e.kv.mod_revision), ("/d/after", r2));
    assert!(store.health().await.is_ok());
}
