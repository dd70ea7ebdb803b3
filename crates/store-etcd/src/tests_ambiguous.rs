//! Ambiguous answers on a real etcd member: a TCP proxy ([`Cutter`]) between a store and the
//! member loses one transaction's answer — after forwarding it (it applied) or instead of
//! forwarding it (it never reached etcd), optionally holding it while another store acts — so
//! that the store sees exactly what a member dying mid-request does. Asserts that the receipts
//! make every outcome exact: a single-use `take` goes to exactly one caller, never to both and
//! never as an error; a CAS update with the same bytes as a competitor's is not mistaken for
//! the competitor's win; an applied `create` / `delete` reports success with its revision.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use kfsec_store::{EventKind, Store, StoreError};
use kfsec_types::{ManualClock, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::testing::{EtcdCluster, etcd_binary};
use crate::tests::{leader_of, rng};
use crate::{EtcdConfig, EtcdStore, connect};

/// What the next matching request suffers.
#[derive(Clone, Copy)]
struct Cut {
    /// Forward the request before cutting (it applies; only the answer is lost).
    apply: bool,
    /// Wait for [`Cutter::release`] before going on (after signalling [`Cutter::hit`]).
    hold: bool,
}

/// A TCP proxy in front of one etcd member that loses one request's answer on demand.
struct Cutter {
    url: String,
    armed: Arc<parking_lot::Mutex<Option<Cut>>>,
    hit: Arc<Notify>,
    release: Arc<Notify>,
    cuts: Arc<AtomicUsize>,
}

/// The bytes of every write transaction and nothing else: the receipt range.
const PATTERN: &[u8] = b"\0receipt/";

impl Cutter {
    async fn start(member: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let target = member.trim_start_matches("http://").to_owned();
        let c = Self {
            url,
            armed: Arc::default(),
            hit: Arc::default(),
            release: Arc::default(),
            cuts: Arc::default(),
        };
        let (armed, hit, release, cuts) = (c.armed.clone(), c.hit.clone(), c.release.clone(), c.cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                tokio::spawn(pipe(
                    client,
                    server,
                    armed.clone(),
                    hit.clone(),
                    release.clone(),
                    cuts.clone(),
                ));
            }
        });
        c
    }

    /// The next write transaction sent through the proxy suffers `cut`.
    fn arm(&self, cut: Cut) {
        *self.armed.lock() = Some(cut);
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<parking_lot::Mutex<Option<Cut>>>,
    hit: Arc<Notify>,
    release: Arc<Notify>,
    cuts: Arc<AtomicUsize>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Set before a cut request is forwarded: its answer (and everything after) is dropped.
    let mute = Arc::new(AtomicBool::new(false));
    let m = mute.clone();
    let down = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Muted: swallowed, the connection kept open until the cut closes it.
            if !m.load(Ordering::SeqCst) && cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match cr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let cut = {
            let mut a = armed.lock();
            if a.is_some() && chunk.windows(PATTERN.len()).any(|w| w == PATTERN) {
                a.take()
            } else {
                None
            }
        };
        if let Some(cut) = cut {
            mute.store(true, Ordering::SeqCst);
            cuts.fetch_add(1, Ordering::SeqCst);
            if cut.hold {
                hit.notify_one();
                release.notified().await;
            }
            if cut.apply {
                let _ = sw.write_all(chunk).await;
                // Long enough for etcd to apply it (and answer into the void).
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            break;
        }
        if sw.write_all(chunk).await.is_err() {
            break;
        }
    }
    // Dropping every half closes both connections: the client's request fails mid-flight.
    down.abort();
}

async fn single() -> Option<EtcdCluster> {
    let bin = etcd_binary().unwrap()?;
    Some(EtcdCluster::single(&bin).await.unwrap())
}

/// A store on `cluster` (directly, or through `via`), sharing `clock`.
async fn store(cluster: &EtcdCluster, via: Option<&Cutter>, clock: &Arc<ManualClock>) -> Arc<EtcdStore> {
    let endpoints = match via {
        Some(c) => vec![c.url.clone()],
        None => cluster.endpoints(),
    };
    let mut cfg = EtcdConfig::new(endpoints, "/kfsec");
    cfg.lease_grace = Duration::from_secs(3600);
    Arc::new(connect(&cfg, clock.clone(), rng()).await.unwrap())
}

fn clock() -> Arc<ManualClock> {
    ManualClock::new(UnixTime::from_secs(1_700_000_000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_whose_answer_is_lost_is_settled_by_its_receipt() {
    let Some(cluster) = single().await else { return };
    let clock = clock();
    let cutter = Cutter::start(cluster.client_url(0)).await;
    let a = store(&cluster, Some(&cutter), &clock).await;
    let b = store(&cluster, None, &clock).await;

    // Applied, answer lost, nobody else around: the record is A's, with the deleting revision.
    b.create("/code/1", b"one".to_vec(), None).await.unwrap();
    let r0 = b.revision().await.unwrap();
    let mut w = b.watch("/code/", r0).await.unwrap();
    cutter.arm(Cut {
        apply: true,
        hold: false,
    });
    let got = a
        .take("/code/1")
        .await
        .unwrap()
        .expect("A's delete applied: the record is A's");
    assert_eq!(
        cutter.cuts.load(Ordering::SeqCst),
        1,
        "the answer was not lost: the test proves nothing"
    );
    let ev = tokio::time::timeout(Duration::from_secs(5), w.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.kind, EventKind::Delete);
    assert_eq!((got.key.as_str(), got.value.as_slice()), ("/code/1", &b"one"[..]));
    assert_eq!(
        got.mod_revision, ev.kv.mod_revision,
        "the deleting revision, as Delete reports it"
    );
    assert!(b.get("/code/1").await.unwrap().is_none());

    // Lost before reaching etcd: the key is unchanged, so A sends it again and gets it.
    b.create("/code/2", b"two".to_vec(), None).await.unwrap();
    cutter.arm(Cut {
        apply: false,
        hold: false,
    });
    assert_eq!(a.take("/code/2").await.unwrap().unwrap().value, b"two");
    assert_eq!(cutter.cuts.load(Ordering::SeqCst), 2);

    // B takes it while A's request is in the air; A's (failing) compare then applies with its
    // answer lost, or never reaches etcd: either way the record is B's and A gets None.
    for apply in [true, false] {
        b.create("/code/3", b"three".to_vec(), None).await.unwrap();
        cutter.arm(Cut { apply, hold: true });
        let ta = tokio::spawn({
            let a = a.clone();
            async move { a.take("/code/3").await }
        });
        cutter.hit.notified().await;
        assert_eq!(b.take("/code/3").await.unwrap().unwrap().value, b"three");
        cutter.release.notify_one();
        assert_eq!(ta.await.unwrap().unwrap(), None, "apply={apply}: the record went to B");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takes_across_lost_answers_go_to_exactly_one() {
    let Some(cluster) = single().await else { return };
    let clock = clock();
    let (ca, cb) = (
        Cutter::start(cluster.client_url(0)).await,
        Cutter::start(cluster.client_url(0)).await,
    );
    let a = store(&cluster, Some(&ca), &clock).await;
    let b = store(&cluster, Some(&cb), &clock).await;
    let direct = store(&cluster, None, &clock).await;
    let mut wins = [0usize; 2];
    for round in 0..24u8 {
        let key = format!("/code/r{round}");
        direct.create(&key, vec![round], None).await.unwrap();
        // Every combination of: A's answer lost (applied or not), B's too, neither.
        let cut = |i: u8| Cut {
            apply: i.is_multiple_of(2),
            hold: false,
        };
        match round % 4 {
            0 => ca.arm(cut(round / 4)),
            1 => cb.arm(cut(round / 4)),
            2 => {
                ca.arm(cut(round / 4));
                cb.arm(cut(round / 4 + 1));
            }
            _ => {}
        }
        let (ra, rb) = tokio::join!(a.take(&key), b.take(&key));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        match (&ra, &rb) {
            (Some(kv), None) | (None, Some(kv)) => assert_eq!(kv.value, vec![round]),
            _ => panic!("round {round}: exactly one take gets the record: {ra:?} / {rb:?}"),
        }
        wins[usize::from(ra.is_none())] += 1;
        assert!(direct.get(&key).await.unwrap().is_none());
        // Disarm what a take that lost the race before sending did not trigger.
        *ca.armed.lock() = None;
        *cb.armed.lock() = None;
    }
    assert!(
        ca.cuts.load(Ordering::SeqCst) + cb.cuts.load(Ordering::SeqCst) >= 8,
        "too few answers lost: the test proves little"
    );
    eprintln!("wins A/B: {wins:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_writes_and_deletes_whose_answer_is_lost_are_exact() {
    let Some(cluster) = single().await else { return };
    let clock = clock();
    let cutter = Cutter::start(cluster.client_url(0)).await;
    let a = store(&cluster, Some(&cutter), &clock).await;
    let b = store(&cluster, None, &clock).await;

    // Two CAS updates of one revision with the same bytes (two lockout reservations from the
    // same count): B's wins while A's is lost unsent. A must see the Conflict — matching bytes
    // at the key are not A's write.
    let r = b.create("/n/counter", b"0".to_vec(), None).await.unwrap();
    cutter.arm(Cut {
        apply: false,
        hold: true,
    });
    let ta = tokio::spawn({
        let a = a.clone();
        async move { a.update("/n/counter", b"1".to_vec(), Some(r), None).await }
    });
    cutter.hit.notified().await;
    let won = b.update("/n/counter", b"1".to_vec(), Some(r), None).await.unwrap();
    cutter.release.notify_one();
    match ta.await.unwrap() {
        Err(StoreError::Conflict { expected, found, .. }) => assert_eq!((expected, found), (r, won)),
        other => panic!("two winners of one compare-and-swap: {other:?}"),
    }

    // Applied, answer lost: success with the write's own revision.
    cutter.arm(Cut {
        apply: true,
        hold: false,
    });
    let rev = a.update("/n/counter", b"2".to_vec(), Some(won), None).await.unwrap();
    assert_eq!(b.get("/n/counter").await.unwrap().unwrap().mod_revision, rev);
    cutter.arm(Cut {
        apply: true,
        hold: false,
    });
    let created = a
        .create("/n/new", b"x".to_vec(), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(b.get("/n/new").await.unwrap().unwrap().mod_revision, created);

    // A delete with an expected revision, applied, answer lost: the deleted record, not
    // NotFound.
    cutter.arm(Cut {
        apply: true,
        hold: false,
    });
    let gone = a.delete("/n/counter", Some(rev)).await.unwrap();
    assert_eq!(gone.value, b"2");
    assert_eq!(gone.mod_revision, b.revision().await.unwrap());
    // Lost unsent while B deleted it: NotFound, as the contract says for an absent record.
    cutter.arm(Cut {
        apply: false,
        hold: true,
    });
    let ta = tokio::spawn({
        let a = a.clone();
        async move { a.delete("/n/new", Some(created)).await }
    });
    cutter.hit.notified().await;
    b.delete("/n/new", None).await.unwrap();
    cutter.release.notify_one();
    assert!(matches!(ta.await.unwrap(), Err(StoreError::NotFound(_))));
    assert_eq!(cutter.cuts.load(Ordering::SeqCst), 5);
}

/// Two stores (two replicas) race to `take` each of a run of single-use records — several
/// lanes at once, so that many transactions are in flight — while the raft leader is killed:
/// every record goes to exactly one of them, and no take fails. (The real-death counterpart of
/// the proxy tests above; how many answers a death leaves ambiguous varies from run to run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_racing_across_a_killed_leader_go_to_exactly_one() {
    let Some(bin) = etcd_binary().unwrap() else { return };
    let mut cluster = EtcdCluster::three(&bin).await.unwrap();
    let clock = clock();
    let a = store(&cluster, None, &clock).await;
    let b = store(&cluster, None, &clock).await;
    const N: usize = 800;
    const LANES: usize = 8;
    for i in 0..N {
        a.create(&format!("/code/{i:04}"), i.to_le_bytes().to_vec(), None)
            .await
            .unwrap();
    }
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for lane in 0..LANES {
        for s in [a.clone(), b.clone()] {
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let mut errors = Vec::new();
                for i in (lane..N).step_by(LANES) {
                    match s.take(&format!("/code/{i:04}")).await {
                        Ok(Some(kv)) => got.push((i, kv.value)),
                        Ok(None) => {}
                        Err(e) => errors.push(format!("{i}: {e}")),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                (got, errors)
            }));
        }
    }
    while done.load(Ordering::SeqCst) < N / 2 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let victim = leader_of(&cluster).await;
    cluster.kill(victim);
    let mut owners = vec![0u8; N];
    let mut errors = Vec::new();
    for t in tasks {
        let (got, errs) = t.await.unwrap();
        errors.extend(errs);
        for (i, v) in got {
            assert_eq!(v, i.to_le_bytes().to_vec());
            owners[i] += 1;
        }
    }
    assert!(errors.is_empty(), "takes failed after member {victim} died: {errors:?}");
    let wrong: Vec<usize> = (0..N).filter(|i| owners[*i] != 1).collect();
    assert!(wrong.is_empty(), "records not taken exactly once: {wrong:?}");
    assert!(a.list("/code/", 0, None).await.unwrap().items.is_empty());
}
