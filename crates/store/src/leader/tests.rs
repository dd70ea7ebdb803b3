//! The election on simulated time: every candidate has its own manual clock (skewed at will)
//! and is stepped when its own wait is over, over one shared memory store, each through its own
//! [`Flaky`] view (a partition fails only that candidate's calls).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};

use kfsec_types::{ManualClock, SequenceRng};

use super::*;
use crate::MemoryStore;
use crate::flaky::Flaky;

const START: u64 = 1_700_000_000;
const TICK: Duration = Duration::from_millis(50);
const LEASE: Duration = Duration::from_secs(6);
const DEADLINE: Duration = Duration::from_secs(4);

/// A sleep that never ends: store calls on the memory store answer at once.
struct Never;
impl Sleep for Never {
    fn sleep(&self, _: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::pending())
    }
}

struct Candidate {
    elector: Elector,
    clock: Arc<ManualClock>,
    view: Arc<Flaky>,
    /// Simulated time of its next step.
    next: Duration,
    alive: bool,
}

struct Sim {
    store: Arc<MemoryStore>,
    cands: Vec<Candidate>,
    /// Simulated time since the start.
    now: Duration,
    /// Simulated time of each candidate's last successful renewal or acquisition.
    renewed: Vec<Option<Duration>>,
}

fn memory() -> Arc<MemoryStore> {
    MemoryStore::new(ManualClock::new(UnixTime::from_secs(START)))
}

impl Sim {
    /// Candidates whose clocks read `START + skew` at the start.
    fn new(skews: &[i64]) -> Self {
        let store = memory();
        let cands = skews
            .iter()
            .enumerate()
            .map(|(i, skew)| {
                let clock = ManualClock::new(UnixTime::from_secs(START.saturating_add_signed(*skew)));
                let view = Flaky::new(store.clone());
                let elector = Elector::new(
                    view.clone(),
                    LeaderConfig::new(format!("replica-{i}")),
                    clock.clone(),
                    Arc::new(SequenceRng::default()),
                )
                .unwrap()
                .with_sleep(Arc::new(Never));
                Candidate {
                    elector,
                    clock,
                    view,
                    next: Duration::ZERO,
                    alive: true,
                }
            })
            .collect::<Vec<_>>();
        let n = cands.len();
        Self {
            store,
            cands,
            now: Duration::ZERO,
            renewed: vec![None; n],
        }
    }

    /// Who believes it leads (a dead process leads nobody).
    fn leaders(&self) -> Vec<usize> {
        (0..self.cands.len())
            .filter(|&i| self.cands[i].alive && self.cands[i].elector.is_leading())
            .collect()
    }

    /// Advances simulated time by `d`, stepping every live candidate whose wait is over, and
    /// checks after every tick that at most one believes it leads.
    async fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            for i in 0..self.cands.len() {
                let c = &mut self.cands[i];
                if !c.alive || c.next > self.now {
                    continue;
                }
                let wait = c.elector.step().await;
                if c.elector.is_leading() && c.elector.renewed.is_some_and(|(at, _)| at == c.clock.now()) {
                    self.renewed[i] = Some(self.now);
                }
                c.next = self.now + wait;
            }
            let leaders = self.leaders();
            assert!(leaders.len() <= 1, "two leaders at {:?}: {leaders:?}", self.now);
            self.now += TICK;
            for c in &mut self.cands {
                c.clock.advance(TICK);
                // Between steps a candidate sleeps: its own monotonic measure moves too.
                c.elector.slept += TICK;
            }
        }
    }

    /// Runs until someone other than `not` leads; returns who and when.
    async fn until_led_by_other(&mut self, not: usize, limit: Duration) -> (usize, Duration) {
        let end = self.now + limit;
        while self.now < end {
            self.run(TICK).await;
            if let Some(&l) = self.leaders().iter().find(|&&l| l != not) {
                return (l, self.now);
            }
        }
        panic!("nobody took over within {limit:?}");
    }

    fn only_leader(&self) -> usize {
        let l = self.leaders();
        assert_eq!(l.len(), 1, "exactly one leader: {l:?}");
        l[0]
    }

    async fn record(&self) -> LeaseRecord {
        let kv = self.store.get(LEADER_KEY).await.unwrap().unwrap();
        serde_json::from_slice(&kv.value).unwrap()
    }
}

#[tokio::test]
async fn one_leader_among_three_and_it_stays() {
    let mut sim = Sim::new(&[0, 0, 0]);
    sim.run(TICK).await;
    let first = sim.only_leader();
    for _ in 0..60 {
        sim.run(Duration::from_secs(1)).await;
        assert_eq!(
            sim.only_leader(),
            first,
            "leadership does not move while the leader renews"
        );
    }
    let rec = sim.record().await;
    assert_eq!(rec.holder_identity, format!("replica-{first}"));
    assert_eq!(rec.leader_transitions, 0);
    assert_eq!(rec.lease_duration_ms, 6_000);
}

async fn dead_leader_is_replaced(skews: &[i64]) {
    let mut sim = Sim::new(skews);
    sim.run(Duration::from_secs(20)).await;
    let old = sim.only_leader();
    // The leader's process dies (kill -9): no more renewals, no release.
    let died = sim.now;
    sim.cands[old].alive = false;
    let last_renewal = sim.renewed[old].unwrap();
    let (new, at) = sim.until_led_by_other(old, Duration::from_secs(30)).await;
    assert_ne!(new, old);
    // Not before a whole lease without a change, measured by the follower…
    assert!(
        at >= last_renewal + LEASE,
        "took over {at:?}, last renewal {last_renewal:?}"
    );
    // …and within 10 s of the death (lease 8 s + at most 1.2 s until the last renewal was seen).
    assert!(
        at - died <= Duration::from_secs(10),
        "took over {:?} after the death",
        at - died
    );
    let rec = sim.record().await;
    assert_eq!(rec.holder_identity, format!("replica-{new}"));
    assert_eq!(rec.leader_transitions, 1);
    // The new leader stays.
    sim.run(Duration::from_secs(30)).await;
    assert_eq!(sim.only_leader(), new);
}

#[tokio::test]
async fn a_dead_leader_is_replaced_within_the_lease_by_the_followers_own_clock() {
    dead_leader_is_replaced(&[0, 0, 0]).await;
}

#[tokio::test]
async fn clock_skew_between_candidates_does_not_matter() {
    // An hour ahead, a day behind, a year ahead: nobody reads another's clock.
    dead_leader_is_replaced(&[3_600, -86_400, 31_536_000]).await;
    dead_leader_is_replaced(&[-86_400, 0, 3_600]).await;
}

#[tokio::test]
async fn a_partitioned_leader_steps_down_before_anyone_takes_over() {
    let mut sim = Sim::new(&[0, 0, 0]);
    sim.run(Duration::from_secs(10)).await;
    let old = sim.only_leader();
    // Its store calls fail from now on (the CAS of its renewal among them); it keeps running.
    let cut = sim.now;
    sim.cands[old].view.fail(true);
    let last_renewal = sim.renewed[old].unwrap();
    let mut stepped_down = None;
    let end = sim.now + Duration::from_secs(30);
    let mut takeover = None;
    while sim.now < end && takeover.is_none() {
        sim.run(TICK).await;
        if stepped_down.is_none() && !sim.cands[old].elector.is_leading() {
            stepped_down = Some(sim.now);
        }
        takeover = sim.leaders().into_iter().find(|&l| l != old).map(|l| (l, sim.now));
    }
    let stepped_down = stepped_down.expect("the cut-off leader stepped down");
    let (new, at) = takeover.expect("another replica took over");
    // The old leader stopped by its renew deadline, strictly before the takeover (run() also
    // checked that no two believed they led at any tick).
    assert!(
        stepped_down <= last_renewal + DEADLINE + TICK,
        "stepped down at {stepped_down:?}"
    );
    assert!(stepped_down < at);
    assert!(at >= last_renewal + LEASE);
    assert!(at - cut <= Duration::from_secs(10));
    // The partition heals: the old leader follows the new one.
    sim.cands[old].view.fail(false);
    sim.run(Duration::from_secs(20)).await;
    assert_eq!(sim.only_leader(), new);
}

#[tokio::test]
async fn a_follower_whose_wall_clock_jumps_forward_still_waits_a_whole_lease() {
    let mut sim = Sim::new(&[0, 0]);
    sim.run(Duration::from_secs(5)).await;
    let old = sim.only_leader();
    let follower = 1 - old;
    sim.cands[old].alive = false;
    let last_renewal = sim.renewed[old].unwrap();
    // An NTP step of an hour on the follower right after the death.
    sim.run(TICK).await;
    sim.cands[follower].clock.advance(Duration::from_secs(3_600));
    let (_, at) = sim.until_led_by_other(old, Duration::from_secs(30)).await;
    assert!(
        at >= last_renewal + LEASE,
        "took over at {at:?}, last renewal {last_renewal:?}"
    );
}

#[tokio::test]
async fn release_hands_over_at_once() {
    let mut sim = Sim::new(&[0, 0, 0]);
    sim.run(Duration::from_secs(5)).await;
    let old = sim.only_leader();
    let c = &mut sim.cands[old];
    c.elector.set_leading(false, "shutting down");
    c.elector.release().await.unwrap();
    c.alive = false;
    let released = sim.now;
    assert_eq!(sim.record().await.holder_identity, "");
    let (_, at) = sim.until_led_by_other(old, Duration::from_secs(30)).await;
    // The next poll of a follower (≤ 1.2 s), not a lease later.
    assert!(at - released <= Duration::from_millis(1_300), "{:?}", at - released);
}

#[tokio::test]
async fn an_exclusive_store_is_won_at_once_even_when_a_previous_run_holds_it() {
    let store = memory();
    let old = LeaseRecord {
        holder_identity: "previous-run".into(),
        lease_duration_ms: 8_000,
        ..LeaseRecord::default()
    };
    store
        .create(LEADER_KEY, serde_json::to_vec(&old).unwrap(), None)
        .await
        .unwrap();
    let clock = ManualClock::new(UnixTime::from_secs(START));
    let mut shared = Elector::new(
        store.clone(),
        LeaderConfig::new("a"),
        clock.clone(),
        Arc::new(SequenceRng::default()),
    )
    .unwrap()
    .with_sleep(Arc::new(Never));
    shared.step().await;
    assert!(
        !shared.is_leading(),
        "on a shared store the holder's lease is respected"
    );
    let mut alone = Elector::new(
        store.clone(),
        LeaderConfig {
            exclusive: true,
            ..LeaderConfig::new("b")
        },
        clock,
        Arc::new(SequenceRng::default()),
    )
    .unwrap()
    .with_sleep(Arc::new(Never));
    alone.step().await;
    assert!(alone.is_leading());
    // And keeps leading without writing: no renewal on a store nobody else can open.
    let taken = store.get(LEADER_KEY).await.unwrap().unwrap().mod_revision;
    for _ in 0..5 {
        alone.step().await;
        assert!(alone.is_leading());
    }
    assert_eq!(
        store.revision().await.unwrap(),
        taken,
        "no durable write per retry period on an exclusive store"
    );
    // A fresh store: the first candidate wins at once too.
    let mut first = Elector::new(
        memory(),
        LeaderConfig::new("c"),
        ManualClock::new(UnixTime::from_secs(START)),
        Arc::new(SequenceRng::default()),
    )
    .unwrap();
    first.step().await;
    assert!(first.is_leading());
}

#[test]
fn timing_rules_are_checked() {
    assert!(LeaderConfig::new("x").validate().is_ok());
    let bad = |f: fn(&mut LeaderConfig)| {
        let mut c = LeaderConfig::new("x");
        f(&mut c);
        c.validate().is_err()
    };
    assert!(bad(|c| c.lease_duration = c.renew_deadline));
    assert!(bad(|c| c.renew_deadline = c.retry_period));
    assert!(bad(|c| c.retry_period = Duration::ZERO));
    assert!(bad(|c| c.identity.clear()));
}

/// Advances its candidate's clock by each wait and yields (for the spawned loop).
struct ClockSleep(Arc<ManualClock>);
impl Sleep for ClockSleep {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let clock = self.0.clone();
        Box::pin(async move {
            tokio::task::yield_now().await;
            clock.advance(d);
        })
    }
}

fn spawned(store: Arc<MemoryStore>, name: &str) -> (Leadership, Arc<ManualClock>) {
    let clock = ManualClock::new(UnixTime::from_secs(START));
    let e = Elector::new(
        store,
        LeaderConfig::new(name),
        clock.clone(),
        Arc::new(SequenceRng::default()),
    )
    .unwrap()
    .with_sleep(Arc::new(ClockSleep(clock.clone())));
    (e.spawn(), clock)
}

async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if f() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never held");
}

/// Sets its flag when dropped (the work was stopped).
struct Stopped(Arc<AtomicBool>);
impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn work_runs_only_while_leading_and_release_stops_it_before_handing_over() {
    let store = memory();
    let (a, _) = spawned(store.clone(), "a");
    let starts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stopped = Arc::new(AtomicBool::new(false));
    let (s, st) = (starts.clone(), stopped.clone());
    let _work = a.while_leading("test", move || {
        s.fetch_add(1, Ordering::SeqCst);
        let guard = Stopped(st.clone());
        tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        })
    });
    until(|| a.is_leader()).await;
    until(|| starts.load(Ordering::SeqCst) == 1).await;
    let (b, b_clock) = spawned(store.clone(), "b");
    let mut b_leading = b.subscribe();
    // b follows for a while.
    let before = b_clock.now();
    until(|| b_clock.now().since(before) >= Duration::from_secs(3)).await;
    assert!(!b.is_leader());
    assert!(!stopped.load(Ordering::SeqCst));
    a.release().await;
    // The work was stopped before the lease was handed back.
    assert!(stopped.load(Ordering::SeqCst), "the work stopped");
    let released = b_clock.now();
    b_leading.wait_for(|l| *l).await.unwrap();
    assert!(
        b_clock.now().since(released) < LEASE,
        "b took over at once, not a lease later"
    );
    let rec: LeaseRecord = serde_json::from_slice(&store.get(LEADER_KEY).await.unwrap().unwrap().value).unwrap();
    assert_eq!(rec.holder_identity, "b");
    assert_eq!(starts.load(Ordering::SeqCst), 1, "a's work ran once");
    b.release().await;
}

/// A store whose calls never answer while `hung` is set (a frozen etcd member).
struct Hanging(Arc<MemoryStore>, AtomicBool);

#[async_trait::async_trait]
impl crate::forward::Forward for Hanging {
    fn inner(&self) -> &dyn Store {
        self.0.as_ref()
    }
    async fn before(&self, _call: crate::forward::Call) -> Result<(), StoreError> {
        if self.1.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// Completes at its second poll, moving its clock by the wait (the wait "happened"), so a store
/// call that answers at once wins the race against it.
struct Instant(Arc<ManualClock>);
impl Sleep for Instant {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let clock = self.0.clone();
        Box::pin(async move {
            tokio::task::yield_now().await;
            clock.advance(d);
        })
    }
}

#[tokio::test]
async fn a_leader_whose_store_hangs_steps_down_at_its_renew_deadline() {
    let clock = ManualClock::new(UnixTime::from_secs(START));
    let store = Arc::new(Hanging(memory(), AtomicBool::new(false)));
    let mut e = Elector::new(
        store.clone(),
        LeaderConfig::new("a"),
        clock.clone(),
        Arc::new(SequenceRng::default()),
    )
    .unwrap()
    .with_sleep(Arc::new(Instant(clock.clone())));
    e.step().await;
    assert!(e.is_leading());
    let renewed = clock.now();
    // One retry period later the store freezes: the renewal is abandoned at the deadline.
    clock.advance(Duration::from_secs(1));
    e.slept += Duration::from_secs(1);
    store.1.store(true, Ordering::SeqCst);
    e.step().await;
    assert!(!e.is_leading(), "stepped down although the store call never returned");
    assert_eq!(clock.now().since(renewed), DEADLINE, "exactly at the renew deadline");
}
