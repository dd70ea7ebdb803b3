//! Brute-force protection for password logins.
//!
//! Policy (all counts per `window`, default 15 minutes):
//! * **Reserve, then verify.** A password is checked only under a [`Permit`] taken atomically
//!   before the check; a permit counts as a failure until the check succeeds (a dropped or
//!   errored check stays a failure). So concurrent guesses cannot overrun a budget: at most
//!   `per_account` passwords are ever verified per (account, source) and window, however many
//!   requests arrive at once; the others get the lockout answer without a check.
//! * **Per (account, source), not per account.** `per_account` failures for one account from one
//!   source (an IPv4 address or an IPv6 /64) lock that pair for `lockout`, doubling with each
//!   repeated lockout (capped at 24 h) until the pair has been quiet for a window (or for the
//!   last lockout, if longer); each failure also delays its answer a little more. Failures from
//!   one source therefore never lock the owner out from another source, and the admin's
//!   certificate path (kubeconfig) never goes through password login at all.
//! * **Per source.** `per_address` failures from one source over all accounts lock the source.
//! * **Per account, all sources together: slowed, not locked.** Every account has a budget of
//!   `account_budget` checks per window (a burst, then refilled evenly); past it, checks for that
//!   account are spaced `window / account_budget` apart (one waiter per slot, a wait of at most
//!   10 s), the rest get the lockout answer. A distributed attack is thus held to the budget's
//!   rate while the owner still gets through between its attempts.
//! * **Keys.** The account key is the login as users are looked up (trimmed, ASCII-lowercased),
//!   so case and whitespace variants share one budget; keys are kept as SHA-256 digests.
//!   Unknown accounts are counted exactly like known ones, so the lockout never reveals whether
//!   an account exists.
//! * **Persistence.** Pair and source counters are written to the store (with a TTL equal to
//!   their remaining relevance) on every failure and restored at start, so a restart does not
//!   reset them; the decisions themselves run in memory. The per-account pacing restarts full.
//! * **Nothing recorded for a refusal.** A request is checked against its source, its pair and its
//!   account by lookups alone; entries are created only when a check is granted (and a failure
//!   is recorded on them). A locked source can send any number of logins without growing a table.
//! * **Bounded, never full.** Each table (pairs, sources, accounts) holds at most `MAX_ENTRIES`
//!   entries plus those with a check in flight (bounded by the listeners' request caps). A new key
//!   arriving at a full table evicts, in one batch down to 7/8 of the bound (so the O(n) pass is
//!   amortised over many insertions): first entries carrying nothing (stale, or no failures and no
//!   strikes), then unlocked partial counts (fewest failures, then oldest), and last entries still
//!   locked (the soonest to unlock first) — a lock is worth keeping only while it lasts. A full
//!   table therefore never refuses a key with no failures of its own, and an attacker spread over
//!   many sources (IPv6 /64s) mostly evicts its own entries. Under such pressure an evicted source
//!   or pair starts afresh, so the hard bound on guesses at one account is then its
//!   `account_budget` pacing (whose own entries are evicted least-spent first).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kfsec_store::Store;
use kfsec_types::time::format_rfc3339;
use kfsec_types::{Clock, UnixTime};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::secret::sha256_hex;
use crate::throttle::{Gcra, source_key};

/// Thresholds of login protection (the config file's `loginProtection`).
#[derive(Debug, Clone)]
pub struct LockoutPolicy {
    /// Failures per account from one source before that pair is locked.
    pub per_account: u32,
    /// Failures per source (all accounts) before the source is locked.
    pub per_address: u32,
    /// Counting window.
    pub window: Duration,
    /// Length of the first lockout; it doubles with each repeat.
    pub lockout: Duration,
    /// Password checks per account per window from all sources before checks are spaced out.
    pub account_budget: u32,
    /// Device user-code entries per source per window.
    pub user_code_per_address: u32,
    /// Device user-code entries per window from all sources.
    pub user_code_global: u32,
    /// Device codes issued per source per window.
    pub device_codes_per_address: u32,
    /// Device codes pending at once (each lives 5 minutes).
    pub max_pending_device_codes: u32,
    /// Longest `state` an authorization request may carry (bytes).
    pub max_state_length: usize,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self {
            per_account: 5,
            per_address: 20,
            window: Duration::from_secs(900),
            lockout: Duration::from_secs(900),
            account_budget: 100,
            user_code_per_address: 20,
            user_code_global: 300,
            device_codes_per_address: 30,
            max_pending_device_codes: 1000,
            max_state_length: 512,
        }
    }
}

/// The longest a lockout grows to.
const MAX_LOCKOUT: Duration = Duration::from_secs(24 * 3600);
/// The longest a check waits for its slot in the per-account pacing.
const MAX_WAIT: Duration = Duration::from_secs(10);
/// Checks of one account running at once, from all sources.
const MAX_IN_FLIGHT_PER_ACCOUNT: u32 = 8;
const MAX_ENTRIES: usize = 100_000;
const PREFIX: &str = "/kfsec/idp/lockout/";

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Entry {
    /// Failures in the current window.
    #[serde(rename = "f")]
    failures: u32,
    /// Start of the current window (ms).
    #[serde(rename = "w")]
    window_start: u64,
    /// End of the current lockout (ms), if any.
    #[serde(rename = "l", default)]
    locked_until: Option<u64>,
    /// Lockouts so far (each doubles the next).
    #[serde(rename = "s", default)]
    strikes: u32,
    /// Length of the last lockout (ms).
    #[serde(rename = "d", default)]
    last_lock: u64,
    /// Checks running now (not persisted).
    #[serde(skip)]
    in_flight: u32,
}

impl Entry {
    fn fresh(now: u64) -> Self {
        Self {
            window_start: now,
            ..Self::default()
        }
    }
    fn locked(&self, now: u64) -> bool {
        self.locked_until.is_some_and(|t| now < t)
    }
    /// When the entry carries no information any more.
    fn stale_at(&self, window: u64) -> u64 {
        self.window_start
            .saturating_add(window.max(self.last_lock))
            .max(self.locked_until.unwrap_or(0))
    }
    /// What the entry is worth keeping when its table is full.
    fn rank(&self, now: u64, window: u64) -> Rank<(u8, u64, u64)> {
        if self.in_flight > 0 {
            Rank::Keep
        } else if self.locked(now) {
            // Kept while locked, the soonest to unlock evicted first.
            Rank::Evict((2, self.locked_until.unwrap_or(0), 0))
        } else if now >= self.stale_at(window) || (self.failures == 0 && self.strikes == 0) {
            // Carries nothing a fresh entry would not.
            Rank::Drop
        } else {
            // A partial count: the fewest failures evicted first, then the oldest window.
            Rank::Evict((1, u64::from(self.failures), self.window_start))
        }
    }
    /// Rolls the window forward; forgets strikes after a quiet period.
    fn refresh(&mut self, now: u64, window: u64) {
        if self.locked(now) {
            return;
        }
        if now >= self.stale_at(window) {
            let in_flight = self.in_flight;
            *self = Self::fresh(now);
            self.in_flight = in_flight;
        } else if now >= self.window_start.saturating_add(window) {
            self.failures = 0;
            self.window_start = now;
        }
    }
    /// Counts a failure; returns the failures in this window (before a lockout resets them) and
    /// whether a lockout started.
    fn fail(&mut self, now: u64, limit: u32, lockout: Duration) -> (u32, bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.failures = self.failures.saturating_add(1);
        let n = self.failures;
        if n < limit || self.locked(now) {
            return (n, false);
        }
        self.strikes = self.strikes.saturating_add(1);
        let factor = 1u32 << self.strikes.saturating_sub(1).min(16);
        let len = lockout.saturating_mul(factor).min(MAX_LOCKOUT.max(lockout));
        let len = u64::try_from(len.as_millis()).unwrap_or(u64::MAX);
        let until = now.saturating_add(len);
        self.locked_until = Some(until);
        self.last_lock = len;
        self.failures = 0;
        self.window_start = until;
        (n, true)
    }
}

/// What an entry of a full table is worth.
enum Rank<K> {
    /// In use (a check in flight): never evicted.
    Keep,
    /// Worthless: dropped whenever the table is pruned.
    Drop,
    /// Evicted if needed, lowest first.
    Evict(K),
}

/// Makes room for one new key in a table holding `cap` or more entries: drops the worthless ones
/// and, if that is not enough, evicts the lowest ranked down to `cap - cap / 8`. The O(n) pass
/// thus runs at most once per `cap / 8` insertions. Entries in use are never evicted, so the
/// table may exceed `cap` by the checks in flight.
fn make_room<V, K: Ord>(map: &mut HashMap<String, V>, cap: usize, rank: impl Fn(&V) -> Rank<K>) {
    if map.len() < cap {
        return;
    }
    map.retain(|_, v| !matches!(rank(v), Rank::Drop));
    let target = cap.saturating_sub((cap / 8).max(1));
    let excess = map.len().saturating_sub(target);
    if excess == 0 {
        return;
    }
    let mut ranked: Vec<(K, &String)> = map
        .iter()
        .filter_map(|(k, v)| match rank(v) {
            Rank::Evict(r) => Some((r, k)),
            Rank::Keep | Rank::Drop => None,
        })
        .collect();
    let n = excess.min(ranked.len());
    if n == 0 {
        return;
    }
    if n < ranked.len() {
        ranked.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
    }
    let victims: Vec<String> = ranked.iter().take(n).map(|(_, k)| (*k).clone()).collect();
    for k in &victims {
        map.remove(k);
    }
    tracing::warn!(
        evicted = n,
        "login protection table full; evicted the least valuable entries"
    );
}

#[derive(Default)]
struct State {
    pairs: HashMap<String, Entry>,
    sources: HashMap<String, Entry>,
    accounts: HashMap<String, (Gcra, u32)>,
}

/// A store write: the key and the entry with its TTL (ms), or `None` to delete.
type Record = (String, Option<(Entry, u64)>);

struct Inner {
    policy: LockoutPolicy,
    clock: Arc<dyn Clock>,
    store: Option<Arc<dyn Store>>,
    /// Most entries per table (pairs, sources, accounts) beyond the checks in flight.
    max_entries: usize,
    state: Mutex<State>,
}

/// The limiter (cheap to share).
#[derive(Clone)]
pub struct Lockout(Arc<Inner>);

/// The verdict before a password is checked.
#[must_use]
pub enum Gate {
    /// Go ahead, after [`Permit::wait`]; report the outcome on the permit.
    Open(Permit),
    /// Locked out or over budget; the password must not be checked before [`Retry::at`].
    Locked(Retry),
}

/// When a refused login may be tried again, by the lockout's clock: the end of the lock (or an
/// estimate a few seconds ahead when only checks in flight or the account's pacing refused it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// When the refusal was decided.
    pub now: UnixTime,
    /// The earliest time a check may be granted again.
    pub at: UnixTime,
}

impl Retry {
    /// How long the refusal lasts.
    pub fn remaining(&self) -> Duration {
        self.at.since(self.now)
    }

    /// The wait in words for a person, consistent with a wall clock: `in 16 minutes (at 17:46
    /// UTC)` — whole minutes from the current minute to the minute the lock has surely ended
    /// (rounded up, so the user never comes back too early); hours past 60 minutes; the date too
    /// when that is another day (UTC).
    pub fn in_words(&self) -> String {
        const MIN: u64 = 60;
        let now_min = self.now.as_secs() / MIN;
        let at_min = self.at.as_secs().div_ceil(MIN).max(now_min + 1);
        let minutes = at_min - now_min;
        let unit = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let span = match (minutes / 60, minutes % 60) {
            (0, m) => unit(m, "minute"),
            (h, 0) => unit(h, "hour"),
            (h, m) => format!("{} {}", unit(h, "hour"), unit(m, "minute")),
        };
        let stamp = |min: u64| format_rfc3339(i64::try_from(min.saturating_mul(MIN)).unwrap_or(i64::MAX));
        let (at, today) = (stamp(at_min), stamp(now_min));
        let clock = at.get(11..16).unwrap_or_default();
        if at.get(..10) == today.get(..10) {
            format!("in {span} (at {clock} UTC)")
        } else {
            format!("in {span} (at {} {clock} UTC)", at.get(..10).unwrap_or_default())
        }
    }
}

/// A reserved password check. Dropping it without an outcome counts as a failure.
pub struct Permit {
    inner: Arc<Inner>,
    pair: String,
    source: String,
    account: String,
    wait: Duration,
    done: bool,
}

/// The outcome of a failed check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Delay to impose before answering.
    pub delay: Duration,
    /// Whether this failure started a lockout.
    pub locked: bool,
    /// When the lockout this failure started ends.
    pub retry: Option<Retry>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Lockout {
    /// A limiter with `policy`; counters persist in `store` when given.
    pub fn new(policy: LockoutPolicy, clock: Arc<dyn Clock>, store: Option<Arc<dyn Store>>) -> Self {
        Self::with_capacity(policy, clock, store, MAX_ENTRIES)
    }

    /// A limiter tracking at most `max_entries` keys per table.
    fn with_capacity(
        policy: LockoutPolicy,
        clock: Arc<dyn Clock>,
        store: Option<Arc<dyn Store>>,
        max_entries: usize,
    ) -> Self {
        Self(Arc::new(Inner {
            policy,
            clock,
            store,
            max_entries,
            state: Mutex::default(),
        }))
    }

    /// The policy.
    pub fn policy(&self) -> &LockoutPolicy {
        &self.0.policy
    }

    /// Loads persisted counters (at start).
    pub async fn restore(&self) -> Result<usize, kfsec_store::StoreError> {
        let Some(store) = &self.0.store else { return Ok(0) };
        let records = kfsec_store::list_all(store.as_ref(), PREFIX).await?.items;
        let mut n = 0;
        let mut st = self.0.state.lock();
        for kv in &records {
            let Some(rest) = kv.key.strip_prefix(PREFIX) else {
                continue;
            };
            let e = match serde_json::from_slice::<Entry>(&kv.value) {
                Ok(e) => e,
                Err(e) => {
                    // A counter is advisory: an unreadable one starts from zero.
                    tracing::warn!(key = %kv.key, error = %e, "unreadable login-protection counter ignored");
                    continue;
                }
            };
            let map = match rest.split_once('/') {
                Some(("pair", k)) => Some((&mut st.pairs, k)),
                Some(("source", k)) => Some((&mut st.sources, k)),
                _ => None,
            };
            if let Some((map, k)) = map
                && map.len() < self.0.max_entries
            {
                map.insert(k.to_owned(), e);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Reserves a password check for `account` (already normalised as users are looked up) from
    /// `address`.
    pub fn reserve(&self, account: &str, address: &str) -> Gate {
        let inner = &self.0;
        let p = &inner.policy;
        let now_t = inner.clock.now();
        let now = now_t.as_millis();
        let window = ms(p.window);
        let source = source_key(address);
        let pair = sha256_hex(format!("pair\0{account}\0{source}").as_bytes());
        let source_k = sha256_hex(format!("source\0{source}").as_bytes());
        let account_k = sha256_hex(format!("account\0{account}").as_bytes());

        let mut st = inner.state.lock();
        let st = &mut *st;
        // Everything that can refuse is looked up first, without inserting: a refused request
        // leaves no trace, so a locked source cannot fill the tables however many logins it sends.
        // Each check gives the time (ms) it refuses until: the end of a lock, the end of a
        // window whose count is spent, or, when only checks in flight fill the budget, a few
        // seconds (they end within `MAX_WAIT`).
        let soon = now.saturating_add(ms(MAX_WAIT));
        let refused_until = |e: Option<&mut Entry>, limit: u32| match e {
            Some(e) => {
                e.refresh(now, window);
                if let Some(until) = e.locked_until.filter(|_| e.locked(now)) {
                    Some(until)
                } else if e.failures >= limit {
                    Some(e.window_start.saturating_add(window))
                } else {
                    (e.failures.saturating_add(e.in_flight) >= limit).then_some(soon)
                }
            }
            None => (limit == 0).then_some(now.saturating_add(window)),
        };
        let refusals = [
            refused_until(st.sources.get_mut(&source_k), p.per_address),
            refused_until(st.pairs.get_mut(&pair), p.per_account),
        ];
        let locked = |until_ms: u64| {
            Gate::Locked(Retry {
                now: now_t,
                at: UnixTime::from_millis(until_ms.max(now.saturating_add(1000))),
            })
        };
        if let Some(until) = refusals.into_iter().flatten().max() {
            return locked(until);
        }
        let (mut gcra, in_flight) = st.accounts.get(&account_k).copied().unwrap_or_default();
        if in_flight >= MAX_IN_FLIGHT_PER_ACCOUNT {
            return locked(soon);
        }
        let max_wait = Gcra::interval(p.account_budget, p.window).min(MAX_WAIT);
        let Some(wait) = gcra.take(p.account_budget, p.window, now_t, max_wait) else {
            // The pacing's next slot close enough to wait for: the bucket's earliest time
            // (as `Gcra::take` computes it) less the wait a check may spend.
            let tolerance = p.window.saturating_sub(Gcra::interval(p.account_budget, p.window));
            let earliest = gcra.full_at().max(now_t).sub(tolerance).sub(max_wait);
            return locked(earliest.as_millis());
        };
        // Granted: record the reservation, evicting the least valuable entries when a table is
        // full (a full table never refuses a login).
        let cap = inner.max_entries;
        if !st.accounts.contains_key(&account_k) {
            make_room(&mut st.accounts, cap, |(g, inf)| {
                if *inf > 0 {
                    Rank::Keep
                } else if g.is_idle(now_t) {
                    Rank::Drop
                } else {
                    Rank::Evict(g.full_at())
                }
            });
        }
        st.accounts.insert(account_k.clone(), (gcra, in_flight + 1));
        for (map, key) in [(&mut st.pairs, &pair), (&mut st.sources, &source_k)] {
            if !map.contains_key(key) {
                make_room(map, cap, |e| e.rank(now, window));
            }
            map.entry(key.clone()).or_insert_with(|| Entry::fresh(now)).in_flight += 1;
        }
        Gate::Open(Permit {
            inner: self.0.clone(),
            pair,
            source: source_k,
            account: account_k,
            wait,
            done: false,
        })
    }
}

impl Inner {
    /// Counts a failure in memory; returns it and the records to persist.
    fn fail(&self, pair: &str, source: &str, account: &str) -> (Failure, [Record; 2]) {
        let now = self.clock.now().as_millis();
        let p = &self.policy;
        let window = ms(p.window);
        let mut st = self.state.lock();
        if let Some((_, inf)) = st.accounts.get_mut(account) {
            *inf = inf.saturating_sub(1);
        }
        let one = |map: &mut HashMap<String, Entry>, key: &str, limit: u32| {
            let e = map.entry(key.to_owned()).or_insert_with(|| Entry::fresh(now));
            let (n, locked) = e.fail(now, limit, p.lockout);
            let ttl = e.stale_at(window).saturating_sub(now).saturating_add(1000);
            (n, locked, (*e, ttl))
        };
        let (n, pair_locked, pair_rec) = one(&mut st.pairs, pair, p.per_account);
        let (_, source_locked, source_rec) = one(&mut st.sources, source, p.per_address);
        let delay = Duration::from_millis(200 * u64::from(n.saturating_sub(1).min(10)));
        (
            Failure {
                delay,
                locked: pair_locked || source_locked,
                retry: [(pair_locked, &pair_rec), (source_locked, &source_rec)]
                    .into_iter()
                    .filter_map(|(locked, (e, _))| e.locked_until.filter(|_| locked))
                    .max()
                    .map(|until| Retry {
                        now: UnixTime::from_millis(now),
                        at: UnixTime::from_millis(until),
                    }),
            },
            [
                (format!("{PREFIX}pair/{pair}"), Some(pair_rec)),
                (format!("{PREFIX}source/{source}"), Some(source_rec)),
            ],
        )
    }

    fn succeed(&self, pair: &str, source: &str, account: &str) {
        let p = &self.policy;
        let mut st = self.state.lock();
        if let Some((g, inf)) = st.accounts.get_mut(account) {
            *inf = inf.saturating_sub(1);
            g.refund(p.account_budget, p.window);
        }
        if let Some(e) = st.pairs.get_mut(pair) {
            let in_flight = e.in_flight.saturating_sub(1);
            if in_flight == 0 {
                st.pairs.remove(pair);
            } else {
                *e = Entry {
                    in_flight,
                    ..Entry::fresh(self.clock.now().as_millis())
                };
            }
        }
        if let Some(e) = st.sources.get_mut(source) {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }

    /// Releases a reservation without counting it (the check could not be made).
    fn cancel(&self, pair: &str, source: &str, account: &str) {
        let p = &self.policy;
        let mut st = self.state.lock();
        if let Some((g, inf)) = st.accounts.get_mut(account) {
            *inf = inf.saturating_sub(1);
            g.refund(p.account_budget, p.window);
        }
        let st = &mut *st;
        for e in [st.pairs.get_mut(pair), st.sources.get_mut(source)]
            .into_iter()
            .flatten()
        {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }

    async fn persist(&self, records: Vec<Record>) {
        let Some(store) = &self.store else { return };
        for (key, rec) in records {
            let res = match rec {
                Some((e, ttl)) => match serde_json::to_vec(&e) {
                    Ok(v) => store.put(&key, v, Some(Duration::from_millis(ttl))).await.map(|_| ()),
                    Err(_) => Ok(()),
                },
                None => match store.delete(&key, None).await {
                    Err(kfsec_store::StoreError::NotFound(_)) => Ok(()),
                    r => r.map(|_| ()),
                },
            };
            if let Err(e) = res {
                tracing::warn!(error = %e, "could not persist a login-protection counter");
            }
        }
    }
}

impl Permit {
    /// How long to wait before checking (the per-account pacing); zero within the budget.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// The check failed: counts it, persists the counters, returns the answer delay.
    pub async fn failure(mut self) -> Failure {
        self.done = true;
        let (f, recs) = self.inner.fail(&self.pair, &self.source, &self.account);
        self.inner.persist(recs.into()).await;
        f
    }

    /// The check could not be made (an upstream directory failed before it could answer):
    /// the reservation is given back and nothing is counted, as no password was judged.
    pub fn release(mut self) {
        self.done = true;
        self.inner.cancel(&self.pair, &self.source, &self.account);
    }

    /// The check succeeded: the pair's count is cleared (the source's is not, so logging in to
    /// one's own account does not buy more guesses at others).
    pub async fn success(mut self) {
        self.done = true;
        self.inner.succeed(&self.pair, &self.source, &self.account);
        self.inner
            .persist(vec![(format!("{PREFIX}pair/{}", self.pair), None)])
            .await;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (_, recs) = self.inner.fail(&self.pair, &self.source, &self.account);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            rt.spawn(async move { inner.persist(recs.into()).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kfsec_store::MemoryStore;
    use kfsec_types::{ManualClock, UnixTime};

    fn policy() -> LockoutPolicy {
        LockoutPolicy {
            per_account: 3,
            per_address: 5,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(120),
            account_budget: 10,
            ..LockoutPolicy::default()
        }
    }

    fn permit(l: &Lockout, account: &str, address: &str) -> Permit {
        match l.reserve(account, address) {
            Gate::Open(p) => p,
            Gate::Locked(_) => panic!("{account} from {address} is locked"),
        }
    }

    fn locked(l: &Lockout, account: &str, address: &str) -> bool {
        match l.reserve(account, address) {
            Gate::Open(p) => {
                p.release();
                false
            }
            Gate::Locked(_) => true,
        }
    }

    fn sizes(l: &Lockout) -> (usize, usize, usize) {
        let st = l.0.state.lock();
        (st.pairs.len(), st.sources.len(), st.accounts.len())
    }

    #[tokio::test]
    async fn a_locked_source_inserts_nothing_and_cannot_fill_the_table() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let l = Lockout::with_capacity(policy(), clock.clone(), None, 64);
        // one IPv4 source and one IPv6 /64 lock themselves with five failures on five accounts …
        for i in 0..5 {
            permit(&l, &format!("u{i}"), "10.6.6.6").failure().await;
            permit(&l, &format!("v{i}"), &format!("2001:db8:6::{i}"))
                .failure()
                .await;
        }
        let before = sizes(&l);
        assert_eq!(before, (10, 2, 10));
        // … then spray distinct logins (over every address of the /64): all refused, none recorded
        for i in 0..1_000 {
            assert!(locked(&l, &format!("r{i}@x"), "10.6.6.6"));
            assert!(locked(&l, &format!("r{i}@x"), &format!("2001:db8:6::{i:x}:1")));
        }
        assert_eq!(sizes(&l), before, "refused requests insert nothing");
        // past the window (not the lockout): still refused, still nothing recorded
        clock.advance(Duration::from_secs(100));
        for i in 0..200 {
            assert!(locked(&l, &format!("s{i}@x"), "10.6.6.6"));
        }
        assert_eq!(sizes(&l), before);
        // a fresh account from another source, and the same account logging in again, get in
        permit(&l, "alice", "10.0.0.2").success().await;
        permit(&l, "alice", "10.0.0.2").success().await;
        permit(&l, "admin", "2001:db8:7::1").success().await;
    }

    #[tokio::test]
    async fn many_self_locking_sources_never_lock_out_a_legitimate_user() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let cap = 64;
        let l = Lockout::with_capacity(policy(), clock.clone(), None, cap);
        // the owner has a typo on record; a pair locked out before the flood stays locked as long
        // as cheaper entries can be evicted
        permit(&l, "alice", "10.0.0.2").failure().await;
        for _ in 0..3 {
            permit(&l, "victim", "10.9.9.9").failure().await;
        }
        // an attacker spread over 300 IPv6 /64s and IPv4 addresses locks every one of them, each
        // with distinct logins, keeping some checks in flight as it goes
        let mut held = Vec::new();
        for s in 0..300u32 {
            let addr = if s % 2 == 0 {
                format!("2001:db8:{s:x}::1")
            } else {
                format!("10.7.{}.{}", s / 256, s % 256)
            };
            for i in 0..5 {
                let p = permit(&l, &format!("x{s}-{i}@x"), &addr);
                if s % 50 == 0 && i == 0 {
                    held.push(p);
                } else {
                    p.failure().await;
                }
            }
            if s % 50 != 0 {
                assert!(locked(&l, "anyone", &addr));
            }
            let (pairs, sources, accounts) = sizes(&l);
            let bound = cap + held.len();
            assert!(pairs <= bound && sources <= bound && accounts <= bound, "bounded");
            // at every step legitimate users get in: a fresh account from a fresh source, the
            // owner of a failure elsewhere, and one who logged in before
            permit(&l, &format!("new{s}"), &format!("10.1.{}.{}", s / 256, s % 256))
                .success()
                .await;
            permit(&l, "alice", "10.0.0.3").success().await;
            permit(&l, "bob", "10.0.0.4").success().await;
        }
        assert!(
            locked(&l, "victim", "10.9.9.9"),
            "a locked pair outlives cheaper entries"
        );
        // the held checks still count when they end
        for p in held {
            p.failure().await;
        }
        permit(&l, "alice", "10.0.0.2").success().await;
    }

    #[test]
    fn a_full_table_evicts_a_batch_of_the_least_valuable_and_keeps_what_is_in_use() {
        // values: 0 worthless, 1 in use, anything else evictable by its value
        let rank = |v: &u64| match v {
            0 => Rank::Drop,
            1 => Rank::Keep,
            v => Rank::Evict(*v),
        };
        let mut map: HashMap<String, u64> = (0..64u64).map(|i| (format!("k{i}"), 100 + i)).collect();
        make_room(&mut map, 65, rank);
        assert_eq!(map.len(), 64, "not full: untouched");
        make_room(&mut map, 64, rank);
        assert_eq!(map.len(), 56, "one batch of cap / 8");
        assert!((0..8).all(|i| !map.contains_key(&format!("k{i}"))), "the lowest went");
        // worthless entries go first, entries in use never
        let mut map: HashMap<String, u64> = (0..64u64).map(|i| (format!("k{i}"), i % 2)).collect();
        make_room(&mut map, 64, rank);
        assert_eq!(map.len(), 32);
        assert!(map.values().all(|v| *v == 1));
        make_room(&mut map, 16, rank);
        assert_eq!(map.len(), 32, "in use: kept, over the bound");
    }

    #[tokio::test]
    async fn reservations_cap_concurrent_checks() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let l = Lockout::new(policy(), clock.clone(), None);
        // three checks in flight use the whole budget of the pair: the fourth is refused
        let held: Vec<Permit> = (0..3).map(|_| permit(&l, "a", "10.0.0.1")).collect();
        assert!(locked(&l, "a", "10.0.0.1"));
        // a success gives the slot back
        let mut held = held.into_iter();
        held.next().unwrap().success().await;
        let p = permit(&l, "a", "10.0.0.1");
        // failures (and dropped permits) count
        p.failure().await;
        drop(held.next());
        let f = held.next().unwrap().failure().await;
        assert!(f.locked, "third failure locks");
        assert!(locked(&l, "a", "10.0.0.1"));
        // the same account from elsewhere is not locked
        permit(&l, "a", "10.0.0.2").success().await;
    }

    #[tokio::test]
    async fn lockouts_are_per_pair_progressive_and_expire() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let l = Lockout::new(policy(), clock.clone(), None);
        let fail = |l: &Lockout| permit(l, "a", "10.0.0.1").failure();
        assert_eq!(fail(&l).await.delay, Duration::ZERO);
        assert_eq!(fail(&l).await.delay, Duration::from_millis(200));
        assert!(fail(&l).await.locked);
        assert!(locked(&l, "a", "10.0.0.1"));
        clock.advance(Duration::from_secs(121));
        for _ in 0..2 {
            fail(&l).await;
        }
        assert!(fail(&l).await.locked);
        // the second lockout is twice as long
        clock.advance(Duration::from_secs(121));
        assert!(locked(&l, "a", "10.0.0.1"));
        clock.advance(Duration::from_secs(120));
        assert!(!locked(&l, "a", "10.0.0.1"));
        // after a quiet period as long as the last lockout, strikes are forgotten
        clock.advance(Duration::from_secs(241));
        for _ in 0..3 {
            fail(&l).await;
        }
        clock.advance(Duration::from_secs(121));
        assert!(!locked(&l, "a", "10.0.0.1"), "back to the first lockout length");
    }

    fn retry(l: &Lockout, account: &str, address: &str) -> Retry {
        match l.reserve(account, address) {
            Gate::Open(_) => panic!("{account} from {address} is not locked"),
            Gate::Locked(r) => r,
        }
    }

    #[tokio::test]
    async fn a_lock_says_when_it_ends_by_the_lockouts_clock() {
        // 2026-12-05 17:30:20 UTC.
        let start = UnixTime::from_secs(1_796_491_820);
        let clock = ManualClock::new(start);
        let l = Lockout::new(policy(), clock.clone(), None);
        for _ in 0..2 {
            assert_eq!(permit(&l, "a", "10.0.0.1").failure().await.retry, None);
        }
        // The failure that locks says until when (120 s).
        let f = permit(&l, "a", "10.0.0.1").failure().await;
        let until = UnixTime::from_secs(1_796_491_940);
        assert_eq!(f.retry, Some(Retry { now: start, at: until }));
        clock.advance(Duration::from_secs(30));
        let r = retry(&l, "a", "10.0.0.1");
        assert_eq!((r.at, r.remaining()), (until, Duration::from_secs(90)));
        // 17:30:50 → ends 17:32:20: shown as 17:33, three minutes on the wall clock.
        assert_eq!(r.in_words(), "in 3 minutes (at 17:33 UTC)");
        clock.advance(Duration::from_secs(90));
        assert!(!locked(&l, "a", "10.0.0.1"));
        // The second lock lasts twice as long: its remaining time grows with it.
        for _ in 0..3 {
            let _ = permit(&l, "a", "10.0.0.1").failure().await;
        }
        assert_eq!(retry(&l, "a", "10.0.0.1").remaining(), Duration::from_secs(240));
        // Another account from the same source is not locked; the source's own budget is 5.
        assert!(!locked(&l, "b", "10.0.0.1"));
    }

    #[test]
    fn retry_in_words_rounds_up_and_names_hours_and_days() {
        let at = |now: u64, at: u64| {
            Retry {
                now: UnixTime::from_secs(now),
                at: UnixTime::from_secs(at),
            }
            .in_words()
        };
        // 1970-01-01 00:00:00 + offsets.
        assert_eq!(at(0, 1), "in 1 minute (at 00:01 UTC)");
        assert_eq!(at(0, 60), "in 1 minute (at 00:01 UTC)");
        assert_eq!(at(59, 61), "in 2 minutes (at 00:02 UTC)");
        assert_eq!(at(0, 900), "in 15 minutes (at 00:15 UTC)");
        assert_eq!(at(0, 3600), "in 1 hour (at 01:00 UTC)");
        assert_eq!(at(0, 2 * 3600 + 61), "in 2 hours 2 minutes (at 02:02 UTC)");
        assert_eq!(at(23 * 3600, 25 * 3600), "in 2 hours (at 1970-01-02 01:00 UTC)");
        // A lock already over (clock moved) still says at least a minute, never "0 minutes".
        assert_eq!(at(120, 60), "in 1 minute (at 00:03 UTC)");
    }

    #[tokio::test]
    async fn pacing_and_checks_in_flight_give_a_near_retry() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let l = Lockout::new(
            LockoutPolicy {
                account_budget: 2,
                per_account: 100,
                per_address: 100,
                ..policy()
            },
            clock.clone(),
            None,
        );
        // Two checks from different sources spend the burst; a third is refused by the pacing
        // (window 60 s / 2 = one slot per 30 s, at most 10 s waited): retry within the slot.
        for i in 0..2 {
            let _ = permit(&l, "a", &format!("10.0.0.{i}")).failure().await;
        }
        let r = retry(&l, "a", "10.0.0.9");
        assert!(
            r.remaining() > Duration::ZERO && r.remaining() <= Duration::from_secs(30),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn sources_are_limited_across_accounts_and_ipv6_by_prefix() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let l = Lockout::new(policy(), clock.clone(), None);
        for i in 0..5 {
            permit(&l, &format!("u{i}"), &format!("2001:db8::{i}")).failure().await;
        }
        assert!(locked(&l, "fresh", "2001:db8::ffff"), "same /64");
        permit(&l, "fresh", "2001:db9::1").success().await;
        // a success does not clear the source's count
        let clock2 = ManualClock::new(UnixTime::from_secs(1_000));
        let l = Lockout::new(policy(), clock2, None);
        for i in 0..4 {
            permit(&l, &format!("u{i}"), "10.1.1.1").failure().await;
        }
        permit(&l, "mine", "10.1.1.1").success().await;
        permit(&l, "u9", "10.1.1.1").failure().await;
        assert!(locked(&l, "other", "10.1.1.1"));
    }

    #[tokio::test]
    async fn the_account_budget_slows_a_distributed_attack_without_locking() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let l = Lockout::new(policy(), clock.clone(), None);
        // ten sources, one guess each: the budget (10) is spent
        for i in 0..10 {
            permit(&l, "admin", &format!("10.0.1.{i}")).failure().await;
        }
        // the next check must wait for its slot (window / budget = 6 s) …
        let p = permit(&l, "admin", "10.0.2.1");
        assert_eq!(p.wait(), Duration::from_secs(6));
        // … and only one waiter gets that slot
        assert!(locked(&l, "admin", "10.0.2.2"));
        p.failure().await;
        // time passes: the owner gets through, with no lockout
        clock.advance(Duration::from_secs(12));
        let p = permit(&l, "admin", "10.9.9.9");
        assert_eq!(p.wait(), Duration::ZERO);
        p.success().await;
        // other accounts are unaffected
        assert_eq!(permit(&l, "bob", "10.0.2.2").wait(), Duration::ZERO);
    }

    #[tokio::test]
    async fn counters_survive_a_restart_through_the_store() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let store: Arc<dyn Store> = MemoryStore::new(clock.clone());
        let l = Lockout::new(policy(), clock.clone(), Some(store.clone()));
        for _ in 0..3 {
            permit(&l, "a", "10.0.0.1").failure().await;
        }
        permit(&l, "b", "10.0.0.1").failure().await;
        let l2 = Lockout::new(policy(), clock.clone(), Some(store.clone()));
        assert_eq!(l2.restore().await.unwrap(), 3, "two pairs and one source");
        assert!(locked(&l2, "a", "10.0.0.1"));
        // the source count (4 of 5) came back too
        permit(&l2, "c", "10.0.0.1").failure().await;
        assert!(locked(&l2, "d", "10.0.0.1"));
        // records expire with the lockout
        clock.advance(Duration::from_secs(3600));
        let l3 = Lockout::new(policy(), clock.clone(), Some(store));
        l3.restore().await.unwrap();
        assert!(!locked(&l3, "a", "10.0.0.1"));
    }
}
