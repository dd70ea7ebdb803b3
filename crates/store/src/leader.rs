//! Leader election over the [`Store`] contract, for the work one replica must do alone (the
//! profile controller, signing-key rotation, TTL sweeping and compaction of a shared store), in
//! the manner of client-go's `leaderelection`: one lease record ([`LEADER_KEY`]: holder, lease
//! duration, acquire and renew times, transitions), renewed by compare-and-swap on its revision
//! every retry period.
//!
//! Invariants (the arithmetic is in [`LeaderConfig`]):
//! - nobody trusts another replica's clock: the times in the record are for people; a follower
//!   takes over only when the record's revision has not changed for `lease_duration` since it
//!   observed that revision, measured on its own [`Clock`] *and* by the time it has itself slept
//!   (so a wall-clock jump forward on a follower cannot shorten its wait), and only by a
//!   compare-and-swap on that very revision (a renewal in between makes it fail);
//! - a leader that has not renewed within `renew_deadline` of the start of its last successful
//!   renewal (by its clock *or* by the time it slept) stops leading — its store call is abandoned
//!   at the deadline, so a hung store cannot keep it leading — and `renew_deadline <
//!   lease_duration` makes it stop before any follower may take over;
//! - work started by [`Leadership::while_leading`] runs only while this replica leads: it is
//!   aborted when leadership is lost and started again when it is regained; a graceful
//!   [`Leadership::release`] stops that work first, then clears the holder so another replica
//!   takes over at once;
//! - with [`LeaderConfig::exclusive`] (a store no other process can open: redb's file lock, the
//!   memory store) a record naming another holder is a previous run's and is taken at once, and
//!   the lease, once taken, is not renewed (nobody could take it: renewing would be a durable
//!   write every second for nothing); it is still released at a graceful end.
//!
//! Like client-go's, this is no fencing: work run under it must be idempotent (create-if-absent,
//! compare-and-swap), so two leaders for a moment do no harm.

use std::sync::Arc;
use std::time::Duration;

use kfsec_types::{Clock, Rng, UnixTime};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::follow::{Sleep, TokioSleep};
use crate::{Revision, Store, StoreError};

/// The store key of the lease record.
pub const LEADER_KEY: &str = "/kfsec/leader";

/// How the election is timed.
///
/// With the defaults (lease 6 s, renew deadline 4 s, retry 1 s): a leader renews every second;
/// a follower polls every 1–1.2 s and, once it has seen the record unchanged, wakes exactly when
/// the lease would run out. The leader's last renewal (committed at `T`, at most 1 s before it
/// died at `K`) is observed by a follower by `T + 1.2 s`, so it takes over by `T + 1.2 s + 6 s <
/// K + 7.2 s` (plus one store round trip): within 10 s with room for a loaded machine. A leader
/// cut off from the store stops by `T + 4 s` (its deadline runs from the start of that renewal,
/// before `T`), 2 s before the earliest takeover at `T + 6 s` — room for its work to be aborted
/// and for clock rates that differ by up to 6/4.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// The record's key. Default [`LEADER_KEY`].
    pub key: String,
    /// This replica's identity, unique per process (e.g. host name and a random suffix).
    pub identity: String,
    /// How long a follower waits, on its own clock, without seeing the record change before it
    /// takes over.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it stops leading (< `lease_duration`).
    pub renew_deadline: Duration,
    /// Time between renewals (leader) and polls (follower; jittered up to +20 %).
    pub retry_period: Duration,
    /// No other process can use this store: a record naming another holder is taken at once.
    pub exclusive: bool,
}

impl LeaderConfig {
    /// The defaults above for `identity` on a shared store.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            key: LEADER_KEY.to_owned(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(6),
            renew_deadline: Duration::from_secs(4),
            retry_period: Duration::from_secs(1),
            exclusive: false,
        }
    }

    /// Checks the timing rules (as client-go's `NewLeaderElector`): `lease_duration >
    /// renew_deadline > 1.2 × retry_period > 0`, and a non-empty identity.
    pub fn validate(&self) -> Result<(), String> {
        if self.identity.is_empty() {
            return Err("the leader election needs an identity".into());
        }
        if self.retry_period.is_zero() {
            return Err("retry period must be greater than zero".into());
        }
        if self.renew_deadline <= self.retry_period.mul_f64(1.2) {
            return Err("renew deadline must be greater than 1.2 × the retry period".into());
        }
        if self.lease_duration <= self.renew_deadline {
            return Err("lease duration must be greater than the renew deadline".into());
        }
        Ok(())
    }
}

/// The lease record, as stored (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    /// The leader's identity; empty when released.
    pub holder_identity: String,
    /// The holder's lease duration, in milliseconds (informational: followers use their own).
    pub lease_duration_ms: u64,
    /// When the holder acquired the lease, by the holder's clock (ms since the epoch; for people).
    pub acquire_time_ms: u64,
    /// When the holder last renewed, by the holder's clock (ms since the epoch; for people).
    pub renew_time_ms: u64,
    /// How many times leadership changed hands.
    pub leader_transitions: u64,
}

impl LeaseRecord {
    /// The record at `key` (`None` when absent or not a lease record), e.g. to show who leads.
    pub async fn read(store: &dyn Store, key: &str) -> Result<Option<Self>, StoreError> {
        Ok(store
            .get(key)
            .await?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }
}

/// A revision of the record as this replica first saw it.
#[derive(Debug, Clone, Copy)]
struct Observed {
    revision: Revision,
    /// Own clock, and own slept time, at the observation.
    at: UnixTime,
    slept: Duration,
}

/// What one attempt found.
enum Outcome {
    /// We lead (acquired or renewed).
    Leading,
    /// Another holder's lease is live.
    Follower,
}

/// Runs the election for one replica (see the module docs). Build it, then [`Elector::spawn`].
pub struct Elector {
    store: Arc<dyn Store>,
    config: LeaderConfig,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    sleep: Arc<dyn Sleep>,
    leading: watch::Sender<bool>,
    observed: Option<Observed>,
    /// Start (own clock, own slept time) of the last successful renewal while leading.
    renewed: Option<(UnixTime, Duration)>,
    /// Total time this elector has slept (a monotonic measure independent of the wall clock).
    slept: Duration,
    /// The last failure logged, so a long outage is not logged every second.
    last_error: Option<String>,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("config", &self.config)
            .field("leading", &*self.leading.borrow())
            .finish_non_exhaustive()
    }
}

impl Elector {
    /// An elector over `store` waiting with the tokio timer. Fails when `config` breaks the
    /// timing rules ([`LeaderConfig::validate`]).
    pub fn new(
        store: Arc<dyn Store>,
        config: LeaderConfig,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
    ) -> Result<Self, StoreError> {
        config.validate().map_err(StoreError::Backend)?;
        Ok(Self {
            store,
            config,
            clock,
            rng,
            sleep: Arc::new(TokioSleep),
            leading: watch::channel(false).0,
            observed: None,
            renewed: None,
            slept: Duration::ZERO,
            last_error: None,
        })
    }

    /// Waits with `sleep` instead of the tokio timer.
    #[must_use]
    pub fn with_sleep(mut self, sleep: Arc<dyn Sleep>) -> Self {
        self.sleep = sleep;
        self
    }

    fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    fn set_leading(&mut self, on: bool, why: &str) {
        if self.is_leading() == on {
            return;
        }
        if on {
            tracing::info!(identity = %self.config.identity, "{why}: this replica leads (singleton work starts)");
        } else {
            self.renewed = None;
            tracing::warn!(identity = %self.config.identity, "{why}: this replica no longer leads (singleton work stops)");
        }
        self.leading.send_replace(on);
    }

    fn failed(&mut self, what: &str, e: &StoreError) {
        let text = format!("{what}: {e}");
        if self.last_error.as_deref() != Some(text.as_str()) {
            tracing::warn!(identity = %self.config.identity, error = %e, "leader election: {what} failed; retrying");
            self.last_error = Some(text);
        }
    }

    fn record(&self, transitions: u64, acquired: Option<u64>) -> Result<Vec<u8>, StoreError> {
        let now = self.clock.now().as_millis();
        let rec = LeaseRecord {
            holder_identity: self.config.identity.clone(),
            lease_duration_ms: u64::try_from(self.config.lease_duration.as_millis()).unwrap_or(u64::MAX),
            acquire_time_ms: acquired.unwrap_or(now),
            renew_time_ms: now,
            leader_transitions: transitions,
        };
        serde_json::to_vec(&rec).map_err(|e| StoreError::Backend(format!("encoding the lease record: {e}")))
    }

    /// Notes the record's revision, restarting the follower's wait when it changed.
    fn observe(&mut self, revision: Revision) -> Observed {
        match self.observed {
            Some(o) if o.revision == revision => o,
            _ => {
                let o = Observed {
                    revision,
                    at: self.clock.now(),
                    slept: self.slept,
                };
                self.observed = Some(o);
                o
            }
        }
    }

    /// How much of the lease an observation has used up: the smaller of own clock and own
    /// sleeping (both must agree the lease is over).
    fn lease_used(&self, o: Observed) -> Duration {
        self.clock.now().since(o.at).min(self.slept.saturating_sub(o.slept))
    }

    /// One acquire-or-renew: reads the record; renews it when we hold it, takes it when it is
    /// absent, released, ours, a previous run's ([`LeaderConfig::exclusive`]) or unchanged for a
    /// whole lease; otherwise stays a follower.
    async fn try_acquire_or_renew(&mut self) -> Result<Outcome, StoreError> {
        let key = self.config.key.clone();
        let Some(kv) = self.store.get(&key).await? else {
            let value = self.record(0, None)?;
            return match self.store.create(&key, value, None).await {
                Ok(rev) => {
                    self.observe(rev);
                    Ok(Outcome::Leading)
                }
                Err(StoreError::AlreadyExists(_)) => Ok(Outcome::Follower),
                Err(e) => Err(e),
            };
        };
        let observed = self.observe(kv.mod_revision);
        let current: Option<LeaseRecord> = match serde_json::from_slice(&kv.value) {
            Ok(r) => Some(r),
            Err(e) => {
                // Not a record of ours: replaced like an expired lease (after a whole lease).
                tracing::warn!(key = %key, error = %e, "the leader lease record is unreadable");
                None
            }
        };
        let mine = current
            .as_ref()
            .is_some_and(|r| r.holder_identity == self.config.identity);
        let released = current.as_ref().is_some_and(|r| r.holder_identity.is_empty());
        let takeable =
            mine || released || self.config.exclusive || self.lease_used(observed) >= self.config.lease_duration;
        if !takeable {
            return Ok(Outcome::Follower);
        }
        let transitions = current.as_ref().map_or(0, |r| r.leader_transitions);
        let value = match current.as_ref().filter(|_| mine) {
            Some(r) => self.record(transitions, Some(r.acquire_time_ms))?,
            None => self.record(transitions.saturating_add(1), None)?,
        };
        match self.store.update(&key, value, Some(kv.mod_revision), None).await {
            Ok(rev) => {
                self.observe(rev);
                Ok(Outcome::Leading)
            }
            // Someone wrote it meanwhile (a renewal, another taker): not ours.
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => Ok(Outcome::Follower),
            Err(e) => Err(e),
        }
    }

    /// One round; returns how long to wait before the next.
    async fn step(&mut self) -> Duration {
        let retry = self.config.retry_period;
        let deadline = self.config.renew_deadline;
        if self.config.exclusive && self.is_leading() {
            // No other process can open this store: the lease is ours until released.
            return retry;
        }
        let start = (self.clock.now(), self.slept);
        // A leader may spend only what is left of its renew deadline; a follower at most the
        // renew deadline (a hung store must not stall the loop for ever).
        let budget = match self.renewed {
            Some((at, slept)) if self.is_leading() => {
                let spent = start.0.since(at).max(start.1.saturating_sub(slept));
                if spent >= deadline {
                    self.set_leading(false, "the lease was not renewed within the renew deadline");
                    return retry;
                }
                deadline - spent
            }
            _ => deadline,
        };
        let timer = self.sleep.sleep(budget);
        let outcome = tokio::select! {
            r = self.try_acquire_or_renew() => Some(r),
            () = timer => None,
        };
        match outcome {
            Some(Ok(Outcome::Leading)) => {
                self.last_error = None;
                self.renewed = Some(start);
                self.set_leading(true, "acquired the leader lease");
                return retry;
            }
            Some(Ok(Outcome::Follower)) => {
                self.last_error = None;
                self.set_leading(false, "another replica holds the leader lease");
            }
            Some(Err(e)) => self.failed("renewing or acquiring the lease", &e),
            None => {
                self.slept += budget;
                self.failed(
                    "renewing or acquiring the lease",
                    &StoreError::Backend("no answer".into()),
                );
                if self.is_leading() {
                    self.set_leading(false, "the lease was not renewed within the renew deadline");
                }
            }
        }
        if self.is_leading() {
            return retry;
        }
        // A follower polls with jitter, and wakes when the lease it watches would run out.
        let jitter = u64::from_le_bytes(kfsec_types::random_array::<8>(self.rng.as_ref()));
        let extra = retry.mul_f64(0.2 * (jitter >> 11) as f64 / (1u64 << 53) as f64);
        let poll = retry + extra;
        match self.observed {
            Some(o) => {
                let left = self.config.lease_duration.saturating_sub(self.lease_used(o));
                poll.min(left.max(Duration::from_millis(1)))
            }
            None => poll,
        }
    }

    /// Clears the holder if it is us (graceful shutdown: another replica takes over at once).
    async fn release(&mut self) -> Result<(), StoreError> {
        let key = self.config.key.clone();
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(());
        };
        let Ok(rec) = serde_json::from_slice::<LeaseRecord>(&kv.value) else {
            return Ok(());
        };
        if rec.holder_identity != self.config.identity {
            return Ok(());
        }
        let released = LeaseRecord {
            holder_identity: String::new(),
            renew_time_ms: self.clock.now().as_millis(),
            ..rec
        };
        let value = serde_json::to_vec(&released)
            .map_err(|e| StoreError::Backend(format!("encoding the lease record: {e}")))?;
        match self.store.update(&key, value, Some(kv.mod_revision), None).await {
            Ok(_) | Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs the election until [`Leadership::release`] (or until the handle is dropped).
    pub fn spawn(mut self) -> Leadership {
        let leading = self.leading.subscribe();
        let (stop_tx, mut stop) = watch::channel(false);
        let (work_tx, work_rx) = watch::channel(0usize);
        let work = Arc::new(work_tx);
        let identity = self.config.identity.clone();
        let task = tokio::spawn(async move {
            loop {
                let wait = self.step().await;
                let timer = self.sleep.sleep(wait);
                tokio::select! {
                    () = timer => self.slept += wait,
                    _ = stop.wait_for(|s| *s) => break,
                }
                if *stop.borrow() {
                    break;
                }
            }
            // Graceful end: the work stops first (bounded), then the lease is handed back.
            let was_leading = self.is_leading();
            self.set_leading(false, "shutting down");
            if was_leading {
                let mut work = work_rx;
                let timer = self.sleep.sleep(self.config.renew_deadline);
                tokio::select! {
                    _ = work.wait_for(|n| *n == 0) => {}
                    () = timer => tracing::warn!("singleton work did not stop in time; releasing the lease anyway"),
                }
            }
            // Bounded too: a store that does not answer must not hold up the shutdown (the
            // lease then runs out by itself).
            let timer = self.sleep.sleep(self.config.renew_deadline);
            let released = tokio::select! {
                r = self.release() => r,
                () = timer => Err(StoreError::Backend("no answer".into())),
            };
            match released {
                Ok(()) => tracing::info!(identity = %self.config.identity, "released the leader lease"),
                Err(e) => {
                    tracing::warn!(error = %e, "releasing the leader lease failed; another replica takes over when it runs out")
                }
            }
        });
        Leadership {
            leading,
            stop: stop_tx,
            work,
            identity,
            task: Some(task),
        }
    }
}

/// A running election (from [`Elector::spawn`]).
pub struct Leadership {
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    work: Arc<watch::Sender<usize>>,
    identity: String,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("identity", &self.identity)
            .field("leading", &*self.leading.borrow())
            .finish_non_exhaustive()
    }
}

/// Counts one running piece of singleton work while alive.
struct Running(Arc<watch::Sender<usize>>);

impl Running {
    fn new(count: Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Leadership {
    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Follows leadership (true while leading).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// This replica's identity in the election.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Runs singleton work only while leading: `start` is called (it spawns the work) each time
    /// this replica becomes leader, and the task it returns is aborted — and waited for — when
    /// leadership ends. The returned task supervises; aborting it aborts the work.
    pub fn while_leading<F>(&self, name: &'static str, start: F) -> JoinHandle<()>
    where
        F: Fn() -> JoinHandle<()> + Send + 'static,
    {
        let mut leading = self.leading.clone();
        let count = self.work.clone();
        tokio::spawn(async move {
            loop {
                if leading.wait_for(|l| *l).await.is_err() {
                    return;
                }
                let running = Running::new(count.clone());
                let mut work = AbortOnDrop(start());
                tracing::info!(work = name, "leader: started");
                let ended_by_itself = tokio::select! {
                    _ = leading.wait_for(|l| !*l) => false,
                    _ = &mut work.0 => true,
                };
                if ended_by_itself {
                    tracing::warn!(
                        work = name,
                        "leader: the work ended by itself; it starts again at the next leadership"
                    );
                    let _ = leading.wait_for(|l| !*l).await;
                } else {
                    work.0.abort();
                    let _ = (&mut work.0).await;
                    tracing::info!(work = name, "leader: stopped");
                }
                drop(running);
                if leading.has_changed().is_err() {
                    return;
                }
            }
        })
    }

    /// Graceful shutdown: stops the singleton work (waiting for it, at most the renew
    /// deadline), then clears the record's holder if it is this replica, so another replica
    /// takes over at once.
    pub async fn release(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests;
