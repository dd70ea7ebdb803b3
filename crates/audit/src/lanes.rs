//! Staging lanes: where recording threads leave serialized audit events for the log worker —
//! one lane per recording thread (per pipeline), and one shared lane for the stages of a request
//! that records several. A thread serializes its event straight into its own lane's buffer, so
//! recording allocates nothing in the steady state and writes no cache line another recording
//! thread writes; the worker swaps each lane's buffer for an empty one and seals what it took.
//!
//! Invariants:
//! - recording never waits on IO nor on the worker beyond a buffer swap (the worker holds a
//!   lane's lock only for `mem::swap` or a look at its length, and never while holding the
//!   registry); a full lane refuses the event (the caller counts it);
//! - memory is bounded: a lane holds at most [`LANE_EVENTS`] events, and past its first
//!   [`LANE_FREE`] bytes it takes each byte from the pipeline's budget of [`BUDGET`] (so the
//!   shared budget is touched only when the worker falls behind);
//! - an event staged before [`Lanes::take`] locks its lane is taken by that call (the lane's
//!   mutex orders the two): a flush that takes after receiving its request sees every event
//!   recorded before the request was sent;
//! - a lane's events are taken in the order they were staged; the stages of a request that
//!   records several all go to the shared lane, so they are written in the order recorded
//!   whichever threads record them (events of different threads staged within one round may be
//!   written in another order than their timestamps, as from kube-apiserver's batching
//!   backend);
//! - an idle worker is woken by the first event staged after it went idle and never misses one
//!   (the `idle` flag is set before the worker looks at the lanes and read after a producer
//!   unlocks its lane, both sequentially consistent), and is not woken per event while busy;
//! - a lane whose thread has exited is forgotten once the worker has taken its events; when the
//!   worker stops (or dies), every lane is emptied (the events discarded are counted by the
//!   caller) and marked closed, and threads forget closed lanes.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::Thread;

use crate::chain::{Body, ChainError};

/// Events a lane holds before it refuses more.
pub(crate) const LANE_EVENTS: usize = crate::pipeline::QUEUE_CAPACITY;
/// Bytes a lane stages without drawing on the pipeline's [`BUDGET`] (a round's worth of events
/// many times over).
pub(crate) const LANE_FREE: usize = 256 << 10;
/// Bytes all of a pipeline's lanes together stage beyond their [`LANE_FREE`] allowances.
pub(crate) const BUDGET: usize = 64 << 20;
/// A buffer that grew past this in a burst is given back to the allocator once taken, not kept.
const SPARE_BYTES: usize = 1 << 20;
/// Empty buffers the worker keeps for the next swaps.
pub(crate) const SPARES: usize = 4;

/// Serialized event bodies back to back, and where each ends.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    bytes: Vec<u8>,
    /// Each body's end in `bytes`, and whether it ends in annotations.
    ends: Vec<(usize, bool)>,
    /// Bytes drawn from the pipeline's budget (given back when the batch is taken).
    drawn: usize,
}

impl Batch {
    /// The bodies, in the order staged.
    pub(crate) fn bodies(&self) -> impl Iterator<Item = Body<'_>> {
        let mut start = 0;
        self.ends.iter().map(move |&(end, annotated)| {
            let body = Body::staged(&self.bytes[start..end], annotated);
            start = end;
            body
        })
    }

    /// Empties it, keeping its buffers unless a burst made them large.
    pub(crate) fn clear(&mut self) {
        if self.bytes.capacity() > SPARE_BYTES || self.ends.capacity() > SPARE_BYTES / 256 {
            *self = Self::default();
        } else {
            self.bytes.clear();
            self.ends.clear();
        }
    }

    /// Appends a body through `encode`, unless the batch is full or the budget spent.
    fn push(
        &mut self,
        budget: &AtomicUsize,
        encode: &mut impl FnMut(&mut Vec<u8>) -> Result<bool, ChainError>,
    ) -> Result<(), Refusal> {
        // A body whose encoding panicked half-way (the lock was poisoned) is cut off.
        let start = self.ends.last().map_or(0, |&(end, _)| end);
        self.bytes.truncate(start);
        if self.ends.len() >= LANE_EVENTS {
            return Err(Refusal::Full);
        }
        let annotated = encode(&mut self.bytes).map_err(Refusal::Encode)?;
        let need = self.bytes.len().saturating_sub(LANE_FREE).saturating_sub(self.drawn);
        if need > 0 {
            if budget.fetch_add(need, Ordering::Relaxed) + need > BUDGET {
                budget.fetch_sub(need, Ordering::Relaxed);
                self.bytes.truncate(start);
                return Err(Refusal::Full);
            }
            self.drawn += need;
        }
        self.ends.push((self.bytes.len(), annotated));
        Ok(())
    }
}

/// Why an event was not staged.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Its lane is full (the worker is behind).
    Full,
    /// The worker has stopped.
    Stopped,
    /// It did not serialize.
    Encode(ChainError),
}

/// One thread's staged events (or the shared lane's).
#[derive(Debug, Default)]
pub(crate) struct Lane {
    batch: Mutex<Batch>,
    /// Set (under the batch's lock) when the worker has stopped: the lane refuses events and
    /// threads forget it.
    closed: AtomicBool,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

thread_local! {
    /// This thread's lane in each pipeline it has recorded into, by the pipeline's id.
    static MINE: RefCell<Vec<(u64, Arc<Lane>)>> = const { RefCell::new(Vec::new()) };
}

/// One pipeline's lanes, shared by its recording threads and its log worker.
#[derive(Debug)]
pub(crate) struct Lanes {
    /// Tells this pipeline's lanes from another's in a thread's table.
    id: u64,
    /// Every thread's lane.
    threads: Mutex<Vec<Arc<Lane>>>,
    /// The stages of requests that record several (and events of threads without a lane).
    shared: Lane,
    /// Bytes the lanes have drawn beyond their free allowances.
    budget: AtomicUsize,
    /// The worker is asleep (or about to be) until an event is staged.
    idle: AtomicBool,
    stopping: AtomicBool,
    worker: OnceLock<Thread>,
}

impl Lanes {
    pub(crate) fn new() -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            threads: Mutex::default(),
            shared: Lane::default(),
            budget: AtomicUsize::new(0),
            idle: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            worker: OnceLock::new(),
        }
    }

    /// The thread the worker runs on (woken by [`Lanes::wake`]).
    pub(crate) fn set_worker(&self, worker: Thread) {
        let _ = self.worker.set(worker);
    }

    /// Serializes an event through `encode` into this thread's lane (`in_sequence`: the shared
    /// lane, for a stage of a request that records several) and wakes the worker if idle.
    pub(crate) fn stage(
        &self,
        in_sequence: bool,
        mut encode: impl FnMut(&mut Vec<u8>) -> Result<bool, ChainError>,
    ) -> Result<(), Refusal> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(Refusal::Stopped);
        }
        self.with_lane(in_sequence, |lane| {
            let mut batch = lane.lock();
            if lane.closed.load(Ordering::Relaxed) {
                return Err(Refusal::Stopped);
            }
            batch.push(&self.budget, &mut encode)
        })?;
        if self.idle.load(Ordering::SeqCst) && self.idle.swap(false, Ordering::SeqCst) {
            self.wake();
        }
        Ok(())
    }

    /// Runs `f` on this thread's lane (registered at its first event), or on the shared lane
    /// when `in_sequence` or when the thread's table is out of reach (the thread is exiting, or
    /// an event is recorded while one is being staged).
    fn with_lane<R>(&self, in_sequence: bool, mut f: impl FnMut(&Lane) -> R) -> R {
        if !in_sequence {
            let mine = MINE.try_with(|m| {
                let mut m = m.try_borrow_mut().ok()?;
                Some(f(self.lane_in(&mut m)))
            });
            if let Ok(Some(r)) = mine {
                return r;
            }
        }
        f(&self.shared)
    }

    // (Nothing records an event while one is being encoded: the lane's lock is never taken
    // twice by one thread.)

    /// This pipeline's lane in a thread's table, registered now if the thread has none (and
    /// the table forgets the lanes of stopped pipelines).
    fn lane_in<'m>(&self, mine: &'m mut Vec<(u64, Arc<Lane>)>) -> &'m Lane {
        let at = match mine.iter().position(|(id, _)| *id == self.id) {
            Some(at) => at,
            None => {
                mine.retain(|(_, lane)| !lane.closed.load(Ordering::Relaxed));
                let lane = Arc::new(Lane::default());
                lock(&self.threads).push(lane.clone());
                mine.push((self.id, lane));
                mine.len() - 1
            }
        };
        &mine[at].1
    }

    /// Takes every lane's events: each non-empty lane's batch is swapped for an empty one from
    /// `spares` and pushed to `taken` (the shared lane's first). `lanes` is the worker's scratch
    /// list. Forgets the lanes of threads that have exited, once taken.
    pub(crate) fn take(&self, lanes: &mut Vec<Arc<Lane>>, spares: &mut Vec<Batch>, taken: &mut Vec<Batch>) {
        // Lanes whose thread has exited are held by the registry alone: nothing more can be
        // staged in them, so they leave it now and are taken one last time below. (The acquire
        // fence pairs with the exiting thread's release of its handle: its last event is seen.)
        lock(&self.threads).retain(|lane| {
            lanes.push(lane.clone());
            Arc::strong_count(lane) > 2
        });
        std::sync::atomic::fence(Ordering::Acquire);
        for lane in self.with_shared(lanes) {
            let mut batch = lane.lock();
            if batch.ends.is_empty() {
                continue;
            }
            let mut spare = spares.pop().unwrap_or_default();
            std::mem::swap(&mut *batch, &mut spare);
            drop(batch);
            self.budget
                .fetch_sub(std::mem::take(&mut spare.drawn), Ordering::Relaxed);
            taken.push(spare);
        }
        lanes.clear();
    }

    /// The worker is going to sleep: marks it idle, then returns whether anything is staged
    /// (if so it must not sleep; a later event wakes it). `lanes`: the worker's scratch list.
    pub(crate) fn going_idle(&self, lanes: &mut Vec<Arc<Lane>>) -> bool {
        self.idle.store(true, Ordering::SeqCst);
        lanes.extend(lock(&self.threads).iter().cloned());
        let staged = self.with_shared(lanes).any(|l| !l.lock().ends.is_empty());
        lanes.clear();
        staged
    }

    /// The shared lane, then the lanes of a snapshot of the registry.
    fn with_shared<'a>(&'a self, lanes: &'a [Arc<Lane>]) -> impl Iterator<Item = &'a Lane> {
        std::iter::once(&self.shared).chain(lanes.iter().map(|l| &**l))
    }

    /// The worker is awake: events no longer wake it.
    pub(crate) fn awake(&self) {
        self.idle.store(false, Ordering::SeqCst);
    }

    /// Wakes the worker (a flush request, the pipeline stopping, an event staged while idle).
    pub(crate) fn wake(&self) {
        if let Some(t) = self.worker.get() {
            t.unpark();
        }
    }

    /// Asks the worker to stop (it takes what is staged, then [`Lanes::close`]s).
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Whether [`Lanes::stop`] was called.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The worker has stopped (or died): refuses further events, empties every lane and marks
    /// it closed (threads forget it). Returns how many staged events were discarded (none when
    /// the worker took them first).
    pub(crate) fn close(&self) -> u64 {
        self.stopping.store(true, Ordering::SeqCst);
        let close = |lane: &Lane| {
            let mut batch = lane.lock();
            lane.closed.store(true, Ordering::Relaxed);
            std::mem::take(&mut *batch).ends.len() as u64
        };
        let lanes = std::mem::take(&mut *lock(&self.threads));
        close(&self.shared) + lanes.iter().map(|l| close(l)).sum::<u64>()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::EventView;

    fn event(i: u64) -> crate::Event {
        crate::chain::tests::event(i)
    }

    fn stage(lanes: &Lanes, in_sequence: bool, i: u64) -> Result<(), Refusal> {
        let e = event(i);
        lanes.stage(in_sequence, |out| crate::chain::encode_into(out, &EventView::of(&e)))
    }

    /// The events taken (their object's name), lane by lane.
    fn take(lanes: &Lanes) -> Vec<Vec<String>> {
        let (mut scratch, mut spares, mut taken) = (Vec::new(), Vec::new(), Vec::new());
        lanes.take(&mut scratch, &mut spares, &mut taken);
        taken
            .iter()
            .map(|b| {
                b.bodies()
                    .map(|body| {
                        let mut line = Vec::new();
                        crate::chain::Head::default().seal_into(body, false, &mut line);
                        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
                        v["objectRef"]["name"].as_str().unwrap().to_owned()
                    })
                    .collect()
            })
            .collect()
    }

    fn id(i: u64) -> String {
        format!("cm-{i}")
    }

    #[test]
    fn each_thread_stages_in_its_own_lane_in_order_and_sequenced_stages_share_one() {
        let lanes = Arc::new(Lanes::new());
        stage(&lanes, false, 1).unwrap();
        stage(&lanes, true, 2).unwrap();
        stage(&lanes, false, 3).unwrap();
        let other = lanes.clone();
        std::thread::spawn(move || {
            stage(&other, false, 4).unwrap();
            stage(&other, true, 5).unwrap();
        })
        .join()
        .unwrap();
        let taken = take(&lanes);
        assert_eq!(taken, vec![vec![id(2), id(5)], vec![id(1), id(3)], vec![id(4)]]);
        // Taken once; the exited thread's lane is forgotten, this thread's kept.
        assert!(take(&lanes).is_empty());
        assert_eq!(lock(&lanes.threads).len(), 1);
        stage(&lanes, false, 6).unwrap();
        assert_eq!(take(&lanes), vec![vec![id(6)]]);
    }

    #[test]
    fn a_full_lane_refuses_and_a_stopped_pipeline_refuses_everything() {
        let lanes = Lanes::new();
        for i in 0..LANE_EVENTS as u64 {
            stage(&lanes, false, i).unwrap();
        }
        assert!(matches!(stage(&lanes, false, 0), Err(Refusal::Full)));
        // The shared lane has room of its own.
        stage(&lanes, true, 0).unwrap();
        assert_eq!(take(&lanes).iter().map(Vec::len).collect::<Vec<_>>(), [1, LANE_EVENTS]);
        stage(&lanes, false, 1).unwrap();
        stage(&lanes, true, 2).unwrap();
        assert_eq!(lanes.close(), 2, "the events discarded are counted");
        assert!(matches!(stage(&lanes, false, 2), Err(Refusal::Stopped)));
        assert!(matches!(stage(&lanes, true, 2), Err(Refusal::Stopped)));
        assert!(take(&lanes).is_empty());
        // This thread forgets the closed lane at its next registration elsewhere.
        let next = Lanes::new();
        stage(&next, false, 3).unwrap();
        MINE.with_borrow(|m| assert!(m.iter().all(|(id, _)| *id != lanes.id)));
    }

    #[test]
    fn lanes_share_one_byte_budget_beyond_their_allowance_and_get_it_back_when_taken() {
        const MIB: usize = 1 << 20;
        let lanes = Arc::new(Lanes::new());
        let big = |lanes: &Lanes| {
            lanes.stage(false, |out| {
                out.resize(out.len() + MIB, b' ');
                Ok(true)
            })
        };
        let mut staged = 0;
        while big(&lanes).is_ok() {
            staged += 1;
        }
        assert_eq!(staged, (LANE_FREE + BUDGET) / MIB);
        // The budget is spent: another thread's lane has its allowance only, less than one of
        // these events.
        let other = lanes.clone();
        let theirs = std::thread::spawn(move || {
            let mut n = 0;
            while big(&other).is_ok() {
                n += 1;
            }
            n
        })
        .join()
        .unwrap();
        assert_eq!(theirs, 0);
        let (mut scratch, mut spares, mut taken) = (Vec::new(), Vec::new(), Vec::new());
        lanes.take(&mut scratch, &mut spares, &mut taken);
        assert_eq!(taken.iter().map(|b| b.bodies().count()).sum::<usize>(), staged + theirs);
        assert_eq!(lanes.budget.load(Ordering::Relaxed), 0);
        assert!(big(&lanes).is_ok());
    }

    #[test]
    fn an_encoding_error_leaves_the_lane_as_it_was() {
        let lanes = Lanes::new();
        stage(&lanes, false, 1).unwrap();
        let bad = lanes.stage(false, |out| {
            out.extend_from_slice(b"{\"half");
            Err(ChainError::Json(serde::ser::Error::custom("no")))
        });
        assert!(matches!(bad, Err(Refusal::Encode(_))));
        stage(&lanes, false, 2).unwrap();
        assert_eq!(take(&lanes), vec![vec![id(1), id(2)]]);
    }

    #[test]
    fn an_idle_worker_is_woken_by_the_first_event_only() {
        let lanes = Lanes::new();
        assert!(!lanes.going_idle(&mut Vec::new()));
        stage(&lanes, false, 1).unwrap();
        // The first event cleared the flag (and unparked the worker); the next does not wake.
        assert!(!lanes.idle.load(Ordering::SeqCst));
        assert!(
            lanes.going_idle(&mut Vec::new()),
            "an event is staged: the worker must not sleep"
        );
    }
}
