//! Brute-force protection for password logins, shared by every replica over the store.
//!
//! Policy (all counts per `window`, default 15 minutes):
//! * **Reserve, then verify.** A password is checked only under a [`Permit`] taken atomically
//!   before the check; a permit counts as a failure until the check succeeds (a dropped or
//!   errored check stays a failure). So concurrent guesses cannot overrun a budget: at most
//!   `per_account` passwords are ever verified per (account, source) and window, however many
//!   requests arrive at once and at however many replicas; the others get the lockout answer
//!   without a check.
//! * **Per (account, source), not per account.** `per_account` failures for one account from one
//!   source (an IPv4 address or an IPv6 /64) lock that pair for `lockout`, doubling with each
//!   repeated lockout (capped at 24 h) until the pair has been quiet for a window (or for the
//!   last lockout, if longer); each failure also delays its answer a little more. Failures from
//!   one source therefore never lock the owner out from another source, and the admin's
//!   certificate path (kubeconfig) never goes through password login at all.
//! * **Per source.** `per_address` failures from one source over all accounts lock the source.
//! * **Per account, all sources together: slowed, not locked.** Every account has a budget of
//!   `account_budget` checks per window (a burst, then refilled evenly: GCRA); past it, checks
//!   for that account are spaced `window / account_budget` apart (one waiter per slot, a wait of
//!   at most 10 s), the rest get the lockout answer. A distributed attack is thus held to the
//!   budget's rate while the owner still gets through between its attempts. The pacing is
//!   shared by the replicas like the counters (one compare-and-swap per attempt), so N replicas
//!   do not give N budgets. Only the cap of 8 checks of one account running at once is per
//!   replica (it bounds this process's work, not the guesses).
//! * **The store decides.** Pair, source and account records live under
//!   `/kfsec/idp/lockout/{pair,source,account}/<sha256>` and every change is a read-modify-write
//!   with the store's compare-and-swap (`create`, or `update` at the read revision; a conflict
//!   re-reads and decides again). A reservation adds one to the record's count *and* to its
//!   pending count in the same write; the outcome later takes it off the pending count (a
//!   failure: it stays counted; a success: it is taken back). So no increment is ever lost and a
//!   lock set by one replica refuses at every other at once. Each value carries its absolute
//!   times (window start, lock end, GCRA time in ms); the store's TTL is only clean-up and is
//!   set past them. The local map is a cache of records this replica has read or written: it
//!   may refuse on its own (a cached lock, a spent budget — never more permissive than the
//!   store was; never on reservations in flight, which other replicas settle unseen), and every
//!   grant goes through the store.
//! * **Fail closed.** A store error while reserving refuses that login with a "try again later"
//!   answer ([`Gate::Unavailable`]) and is logged; what was already reserved is given back if the
//!   store lets us, and otherwise stays counted. An error while recording an outcome is logged
//!   and leaves the reservation counted as a failure.
//! * **Keys.** The account key is the login as users are looked up (trimmed, ASCII-lowercased),
//!   so case and whitespace variants share one budget; keys are kept as SHA-256 digests.
//!   Unknown accounts are counted exactly like known ones, so the lockout never reveals whether
//!   an account exists.
//! * **Nothing recorded for a refusal.** A request is checked against its source, its pair and its
//!   account by lookups alone; records are written only when a check is granted. A locked source
//!   can send any number of logins without growing the store or the cache.
//! * **Bounded cache, never full.** Each cached table (pairs, sources, accounts) holds at most
//!   `MAX_ENTRIES` entries (plus accounts with a check in flight). A new key arriving at a full
//!   table evicts, in one batch down to 7/8 of the bound (so the O(n) pass is amortised over many
//!   insertions): first entries carrying nothing, then unlocked partial counts (fewest failures,
//!   then oldest), and last entries still locked (the soonest to unlock first). Eviction only
//!   forgets the cached copy: the store still holds the count, so an evicted key is read again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kfsec_store::{MemoryStore, Revision, Store, StoreError};
use kfsec_types::time::format_rfc3339;
use kfsec_types::{Clock, UnixTime};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
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
/// Checks of one account running at once in this replica, from all sources.
const MAX_IN_FLIGHT_PER_ACCOUNT: u32 = 8;
const MAX_ENTRIES: usize = 100_000;
const PREFIX: &str = "/kfsec/idp/lockout/";
/// Compare-and-swap rounds before a contended record is given up on (the login then fails
/// closed).
const CAS_ATTEMPTS: usize = 64;
/// How long past its last relevant time a record is kept by the store (a check in flight
/// outlives the window it was reserved in by at most this).
const CHECK_SLACK: Duration = Duration::from_secs(120);
/// How far ahead a refusal for a store error tells the user to come back.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(60);

/// A pair's or a source's counters, as stored (absolute times in Unix ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// Failures in the current window, reservations not yet decided included.
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
    /// Reservations of this window whose check has not reported yet (counted in `failures`).
    #[serde(rename = "p", default)]
    pending: u32,
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
    /// Failures whose check has reported.
    fn confirmed(&self) -> u32 {
        self.failures.saturating_sub(self.pending)
    }
    /// When the entry carries no information any more.
    fn stale_at(&self, window: u64) -> u64 {
        self.window_start
            .saturating_add(window.max(self.last_lock))
            .max(self.locked_until.unwrap_or(0))
    }
    /// The store TTL: past every time the entry still means something (clean-up only).
    fn ttl(&self, now: u64, window: u64) -> Duration {
        Duration::from_millis(self.stale_at(window).saturating_sub(now)).saturating_add(CHECK_SLACK)
    }
    /// What the entry is worth keeping when its cache table is full.
    fn rank(&self, now: u64, window: u64) -> Rank<(u8, u64, u64)> {
        if self.locked(now) {
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
    /// Rolls the window forward (reservations of an old window are forgotten: their outcome
    /// counts in the window it arrives in); forgets strikes after a quiet period.
    fn refresh(&mut self, now: u64, window: u64) {
        if self.locked(now) {
            return;
        }
        if now >= self.stale_at(window) {
            *self = Self::fresh(now);
        } else if now >= self.window_start.saturating_add(window) {
            self.failures = 0;
            self.pending = 0;
            self.window_start = now;
        }
    }
    /// Until when (ms) a new check is refused, if it is: the end of a lock, the end of a window
    /// whose count is spent, or, when only reservations in flight fill the budget, `soon`.
    fn refused_until(&self, now: u64, window: u64, limit: u32, soon: u64) -> Option<u64> {
        self.settled_refusal(now, window, limit)
            .or_else(|| (self.failures >= limit).then_some(soon))
    }
    /// The refusals a cached copy may decide alone: a lock or a spent count of reported
    /// failures. Not reservations in flight: other replicas settle theirs without this one
    /// seeing it, so a copy holding them would refuse until its window ended.
    fn settled_refusal(&self, now: u64, window: u64, limit: u32) -> Option<u64> {
        if let Some(until) = self.locked_until.filter(|_| self.locked(now)) {
            Some(until)
        } else if self.confirmed() >= limit {
            Some(self.window_start.saturating_add(window))
        } else {
            None
        }
    }
    /// Counts a failure reserved in the window starting at `reserved`: already counted if that
    /// window is current, else counted now. Returns the failures confirmed in this window (before
    /// a lockout resets them) and whether a lockout started.
    fn fail(&mut self, now: u64, reserved: u64, limit: u32, lockout: Duration) -> (u32, bool) {
        if self.window_start == reserved && self.pending > 0 {
            self.pending -= 1;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        let n = self.confirmed();
        if n < limit || self.locked(now) {
            return (n, false);
        }
        self.strikes = self.strikes.saturating_add(1);
        let factor = 1u32 << self.strikes.saturating_sub(1).min(16);
        let len = lockout.saturating_mul(factor).min(MAX_LOCKOUT.max(lockout));
        let until = now.saturating_add(ms(len));
        self.locked_until = Some(until);
        self.last_lock = ms(len);
        self.failures = 0;
        self.pending = 0;
        self.window_start = until;
        (n, true)
    }
    /// Takes back a reservation of the window starting at `reserved` (not a failure).
    fn give_back(&mut self, reserved: u64) {
        if self.window_start == reserved && self.pending > 0 {
            self.pending -= 1;
            self.failures = self.failures.saturating_sub(1);
        }
    }
    /// A pair's check succeeded: its count and strikes are cleared, keeping only the other
    /// reservations still in flight.
    fn clear(&mut self, now: u64, reserved: u64) {
        self.give_back(reserved);
        let pending = self.pending;
        let window_start = if pending == 0 { now } else { self.window_start };
        *self = Self {
            failures: pending,
            pending,
            ..Self::fresh(window_start)
        };
    }
    /// Worth no record in the store.
    fn empty(&self) -> bool {
        self.failures == 0 && self.pending == 0 && self.strikes == 0 && self.locked_until.is_none()
    }
}

/// An account's pacing, as stored: the GCRA's theoretical arrival time (Unix ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Pace {
    #[serde(rename = "t")]
    tat: u64,
}

impl Pace {
    fn gcra(self) -> Gcra {
        Gcra::at(UnixTime::from_millis(self.tat))
    }
    fn of(g: Gcra) -> Self {
        Self {
            tat: g.full_at().as_millis(),
        }
    }
    fn ttl(self, now: u64) -> Duration {
        Duration::from_millis(self.tat.saturating_sub(now)).saturating_add(CHECK_SLACK)
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

/// A cached record and the store revision it was read or written at.
type Cached<V> = (V, Revision);

/// An account as this replica sees it: the pacing last read or written, and its checks running
/// here.
#[derive(Debug, Clone, Copy, Default)]
struct Account {
    pace: Option<Cached<Pace>>,
    in_flight: u32,
}

#[derive(Default)]
struct State {
    pairs: HashMap<String, Cached<Entry>>,
    sources: HashMap<String, Cached<Entry>>,
    accounts: HashMap<String, Account>,
}

/// The counted tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Pair,
    Source,
}

impl Table {
    fn key(self, digest: &str) -> String {
        match self {
            Self::Pair => format!("{PREFIX}pair/{digest}"),
            Self::Source => format!("{PREFIX}source/{digest}"),
        }
    }
    fn map(self, st: &mut State) -> &mut HashMap<String, Cached<Entry>> {
        match self {
            Self::Pair => &mut st.pairs,
            Self::Source => &mut st.sources,
        }
    }
}

/// The lockout's name for a user name typed at a directory connector: the string a directory
/// compares it as (RFC 4518's preparation, as LDAP's `caseIgnoreMatch` does it): every kind of
/// space made SPACE, characters that map to nothing (controls, soft hyphen, zero-width and
/// joiner characters, variation selectors, byte order marks, other format characters) dropped,
/// NFKC-normalised and case-folded, runs of spaces made one and the ends trimmed. So `Alice`, `ａｌｉｃｅ` (full-width) and `al\u{200B}ice`, which
/// such a directory finds as the same entry, share one budget instead of buying one each.
pub fn directory_account(typed: &str) -> String {
    // RFC 4518 §2.2: tabs, line breaks and other spaces are SPACE; then the invisible go.
    let visible: String = typed
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .filter(|&c| !maps_to_nothing(c))
        .collect();
    let nfkc = icu_normalizer::ComposingNormalizerBorrowed::new_nfkc();
    let folded = fold_case(&nfkc.normalize(&visible));
    let folded = nfkc.normalize(&folded).into_owned();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Lower case, with the full case folds lower-casing alone misses: final sigma, sharp s.
fn fold_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().flat_map(char::to_lowercase) {
        match c {
            'ς' => out.push('σ'),
            'ß' => out.push_str("ss"),
            c => out.push(c),
        }
    }
    out
}

/// RFC 3454 table B.1 (commonly mapped to nothing), controls and other invisible format
/// characters.
fn maps_to_nothing(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{1806}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFC}'
                | '\u{E0000}'..='\u{E0FFF}'
                // other format characters (general category Cf)
                | '\u{0600}'..='\u{0605}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
        )
}

fn account_key(digest: &str) -> String {
    format!("{PREFIX}account/{digest}")
}

/// One decision of a read-modify-write.
enum Step<V, R> {
    /// Write nothing (a refusal, or nothing to change).
    Keep(R),
    /// Write this value with this store TTL.
    Put(V, Duration, R),
    /// Delete the record.
    Remove(R),
}

/// What a read-modify-write ended with: the decision's result, the record as it now is, and
/// whether it was written.
struct Done<V, R> {
    result: R,
    now: Option<Cached<V>>,
    wrote: bool,
}

struct Inner {
    policy: LockoutPolicy,
    clock: Arc<dyn Clock>,
    store: Arc<dyn Store>,
    /// Most entries per cached table (pairs, sources, accounts) beyond accounts in flight.
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
    /// The counters could not be read or written (a store error, logged): the login is refused
    /// without a check; [`Retry::at`] is a guess of when to try again.
    Unavailable(Retry),
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
    keys: Keys,
    /// The windows the pair and the source reservations were counted in.
    pair_window: u64,
    source_window: u64,
    wait: Duration,
    done: bool,
}

/// The digests a login is counted under.
#[derive(Debug, Clone)]
struct Keys {
    pair: String,
    source: String,
    account: String,
}

impl Keys {
    fn new(account: &str, address: &str) -> Self {
        let source = source_key(address);
        Self {
            pair: sha256_hex(format!("pair\0{account}\0{source}").as_bytes()),
            source: sha256_hex(format!("source\0{source}").as_bytes()),
            account: sha256_hex(format!("account\0{account}").as_bytes()),
        }
    }
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

/// Reads a record: its value (`None` if absent or unreadable) and revision (`None` if absent).
async fn read<V: DeserializeOwned>(store: &dyn Store, key: &str) -> Result<(Option<V>, Option<Revision>), StoreError> {
    let Some(kv) = store.get(key).await? else {
        return Ok((None, None));
    };
    let value = match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            // An unreadable counter starts from zero (and is overwritten at its revision).
            tracing::warn!(key = %kv.key, error = %e, "unreadable login-protection record ignored");
            None
        }
    };
    Ok((value, Some(kv.mod_revision)))
}

impl Inner {
    /// Read-modify-write of `key` by compare-and-swap: `decide` sees the current value (first the
    /// cached one, `start`, if any; after a conflict, the store's) and says what to write. A
    /// decision taken on the cached value alone is only ever a [`Step::Keep`] the caller accepts
    /// as a refusal; every write is checked against the store's revision.
    async fn modify<V, R>(
        &self,
        key: &str,
        start: Option<Cached<V>>,
        mut decide: impl FnMut(Option<V>) -> Step<V, R>,
    ) -> Result<Done<V, R>, StoreError>
    where
        V: Serialize + DeserializeOwned + Copy,
    {
        let mut guess = start.map(|(v, rev)| (Some(v), Some(rev)));
        for _ in 0..CAS_ATTEMPTS {
            let (value, rev) = match guess.take() {
                Some(g) => g,
                None => read(self.store.as_ref(), key).await?,
            };
            let written = match decide(value) {
                Step::Keep(result) => {
                    return Ok(Done {
                        result,
                        now: value.zip(rev),
                        wrote: false,
                    });
                }
                Step::Put(v, ttl, result) => {
                    let body = serde_json::to_vec(&v).map_err(|e| StoreError::Backend(e.to_string()))?;
                    let res = match rev {
                        Some(rev) => self.store.update(key, body, Some(rev), Some(ttl)).await,
                        None => self.store.create(key, body, Some(ttl)).await,
                    };
                    res.map(|rev| (Some((v, rev)), result))
                }
                Step::Remove(result) => match rev {
                    None => Ok((None, result)),
                    Some(rev) => match self.store.delete(key, Some(rev)).await {
                        Err(StoreError::NotFound(_)) => Ok((None, result)),
                        r => r.map(|_| (None, result)),
                    },
                },
            };
            match written {
                Ok((now, result)) => {
                    return Ok(Done {
                        result,
                        now,
                        wrote: true,
                    });
                }
                // Another replica (or task) wrote first: read again and decide again.
                Err(StoreError::Conflict { .. } | StoreError::NotFound(_) | StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Backend(format!("{key}: too many conflicting writes")))
    }

    /// [`Self::modify`] on a pair or source record, keeping the cache: a write inserts or
    /// updates the cached copy, a mere read only updates one already cached (a refusal records
    /// nothing).
    async fn entry<R>(
        &self,
        table: Table,
        digest: &str,
        decide: impl FnMut(Option<Entry>) -> Step<Entry, R>,
    ) -> Result<R, StoreError> {
        // A copy holding reservations in flight is no start: others settle theirs unseen, and
        // a decision on it alone could refuse on what no longer is.
        let start = table
            .map(&mut self.state.lock())
            .get(digest)
            .copied()
            .filter(|(e, _)| e.pending == 0);
        let done = match self.modify(&table.key(digest), start, decide).await {
            Ok(done) => done,
            Err(e) => {
                // What was cached may be what made the write fail: forget it.
                table.map(&mut self.state.lock()).remove(digest);
                return Err(e);
            }
        };
        let now = self.clock.now().as_millis();
        let window = ms(self.policy.window);
        let mut st = self.state.lock();
        let map = table.map(&mut st);
        match done.now {
            Some(c) if done.wrote || map.contains_key(digest) => {
                if !map.contains_key(digest) {
                    make_room(map, self.max_entries, |(e, _)| e.rank(now, window));
                }
                map.insert(digest.to_owned(), c);
            }
            Some(_) => {}
            None => {
                map.remove(digest);
            }
        }
        Ok(done.result)
    }

    /// [`Self::modify`] on an account's pacing, keeping the cache like [`Self::entry`].
    async fn pace<R>(&self, digest: &str, decide: impl FnMut(Option<Pace>) -> Step<Pace, R>) -> Result<R, StoreError> {
        let start = self.state.lock().accounts.get(digest).and_then(|a| a.pace);
        let done = self.modify(&account_key(digest), start, decide).await;
        let mut st = self.state.lock();
        let done = match done {
            Ok(done) => done,
            Err(e) => {
                if let Some(a) = st.accounts.get_mut(digest) {
                    a.pace = None;
                }
                return Err(e);
            }
        };
        if let Some(a) = st.accounts.get_mut(digest) {
            a.pace = done.now;
            if a.pace.is_none() && a.in_flight == 0 {
                st.accounts.remove(digest);
            }
        }
        Ok(done.result)
    }

    /// Counts a check of `account` in flight here: false if the account has too many already.
    fn enter(&self, account: &str) -> bool {
        let now = self.clock.now();
        let mut st = self.state.lock();
        if !st.accounts.contains_key(account) {
            make_room(&mut st.accounts, self.max_entries, |a| {
                if a.in_flight > 0 {
                    Rank::Keep
                } else {
                    match a.pace {
                        Some((p, _)) if !p.gcra().is_idle(now) => Rank::Evict(p.tat),
                        _ => Rank::Drop,
                    }
                }
            });
        }
        let a = st.accounts.entry(account.to_owned()).or_default();
        if a.in_flight >= MAX_IN_FLIGHT_PER_ACCOUNT {
            return false;
        }
        a.in_flight += 1;
        true
    }

    /// Ends a check of `account` in flight here.
    fn leave(&self, account: &str) {
        let mut st = self.state.lock();
        if let Some(a) = st.accounts.get_mut(account) {
            a.in_flight = a.in_flight.saturating_sub(1);
            if a.in_flight == 0 && a.pace.is_none() {
                st.accounts.remove(account);
            }
        }
    }

    /// Whether the cache alone refuses the login (never grants: a grant is the store's).
    fn cached_refusal(&self, keys: &Keys, now_t: UnixTime) -> Option<u64> {
        let p = &self.policy;
        let now = now_t.as_millis();
        let window = ms(p.window);
        let soon = now.saturating_add(ms(MAX_WAIT));
        let st = self.state.lock();
        let refused = [
            (&st.sources, &keys.source, p.per_address),
            (&st.pairs, &keys.pair, p.per_account),
        ]
        .into_iter()
        .filter_map(|(map, k, limit)| {
            let (mut e, _) = map.get(k).copied()?;
            e.refresh(now, window);
            e.settled_refusal(now, window, limit)
        })
        .max();
        if refused.is_some() {
            return refused;
        }
        let a = st.accounts.get(&keys.account)?;
        if a.in_flight >= MAX_IN_FLIGHT_PER_ACCOUNT {
            return Some(soon);
        }
        let (pace, _) = a.pace?;
        let mut g = pace.gcra();
        let max_wait = self.max_wait();
        match g.take(p.account_budget, p.window, now_t, max_wait) {
            Some(_) => None,
            None => Some(self.pacing_retry(g, now_t)),
        }
    }

    fn max_wait(&self) -> Duration {
        Gcra::interval(self.policy.account_budget, self.policy.window).min(MAX_WAIT)
    }

    /// When the pacing's next slot is close enough to wait for: the bucket's earliest time (as
    /// `Gcra::take` computes it) less the wait a check may spend (ms).
    fn pacing_retry(&self, g: Gcra, now_t: UnixTime) -> u64 {
        let p = &self.policy;
        let tolerance = p.window.saturating_sub(Gcra::interval(p.account_budget, p.window));
        g.full_at().max(now_t).sub(tolerance).sub(self.max_wait()).as_millis()
    }

    /// Reserves a check in the store: the source, the pair, then the account's pacing, each
    /// given back if a later one refuses. `Ok(Err(until))`: refused until then (ms).
    async fn reserve(&self, keys: &Keys, now_t: UnixTime) -> Result<Result<(u64, u64, Duration), u64>, StoreError> {
        let p = &self.policy;
        let now = now_t.as_millis();
        let window = ms(p.window);
        let soon = now.saturating_add(ms(MAX_WAIT));
        if let Some(until) = self.cached_refusal(keys, now_t) {
            return Ok(Err(until));
        }
        let take = |limit: u32| {
            move |cur: Option<Entry>| {
                let mut e = cur.unwrap_or_else(|| Entry::fresh(now));
                e.refresh(now, window);
                match e.refused_until(now, window, limit, soon) {
                    Some(until) => Step::Keep(Err(until)),
                    None => {
                        e.failures = e.failures.saturating_add(1);
                        e.pending = e.pending.saturating_add(1);
                        Step::Put(e, e.ttl(now, window), Ok(e.window_start))
                    }
                }
            }
        };
        let source_window = match self.entry(Table::Source, &keys.source, take(p.per_address)).await? {
            Ok(w) => w,
            Err(until) => return Ok(Err(until)),
        };
        let pair_window = match self.entry(Table::Pair, &keys.pair, take(p.per_account)).await {
            Ok(Ok(w)) => w,
            other => {
                self.give_back(Table::Source, &keys.source, source_window).await;
                return other.map(|r| r.map(|_| (0, 0, Duration::ZERO)));
            }
        };
        let undo = || async {
            self.give_back(Table::Pair, &keys.pair, pair_window).await;
            self.give_back(Table::Source, &keys.source, source_window).await;
        };
        if !self.enter(&keys.account) {
            undo().await;
            return Ok(Err(soon));
        }
        let max_wait = self.max_wait();
        let paced = self
            .pace(&keys.account, |cur| {
                let mut g = cur.map(Pace::gcra).unwrap_or_default();
                match g.take(p.account_budget, p.window, now_t, max_wait) {
                    None => Step::Keep(Err(self.pacing_retry(g, now_t))),
                    Some(wait) => {
                        let pace = Pace::of(g);
                        Step::Put(pace, pace.ttl(now), Ok(wait))
                    }
                }
            })
            .await;
        match paced {
            Ok(Ok(wait)) => Ok(Ok((pair_window, source_window, wait))),
            other => {
                self.leave(&keys.account);
                undo().await;
                other.map(|r| r.map(|_| (0, 0, Duration::ZERO)))
            }
        }
    }

    /// Takes back a reservation that was not a check (logged if the store refuses: it then
    /// stays counted, which only errs on the safe side).
    async fn give_back(&self, table: Table, digest: &str, reserved: u64) {
        let res = self
            .entry(table, digest, |cur| match cur {
                None => Step::Keep(()),
                Some(mut e) => {
                    e.give_back(reserved);
                    let now = self.clock.now().as_millis();
                    let window = ms(self.policy.window);
                    if e.empty() {
                        Step::Remove(())
                    } else {
                        Step::Put(e, e.ttl(now, window), ())
                    }
                }
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "login protection: a reservation could not be given back; it stays counted");
        }
    }

    /// Gives an account's pacing slot back (a check that should not count).
    async fn refund(&self, account: &str) {
        let p = &self.policy;
        let now_t = self.clock.now();
        let res = self
            .pace(account, |cur| match cur {
                None => Step::Keep(()),
                Some(pace) => {
                    let mut g = pace.gcra();
                    g.refund(p.account_budget, p.window);
                    if g.is_idle(now_t) {
                        Step::Remove(())
                    } else {
                        let pace = Pace::of(g);
                        Step::Put(pace, pace.ttl(now_t.as_millis()), ())
                    }
                }
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "login protection: a pacing slot could not be given back");
        }
    }

    /// Counts a failure on one record; returns the failures confirmed in the window and the
    /// lock it started, if any.
    async fn fail_one(&self, table: Table, digest: &str, reserved: u64, limit: u32) -> (u32, Option<u64>) {
        let p = &self.policy;
        let res = self
            .entry(table, digest, |cur| {
                let now = self.clock.now().as_millis();
                let window = ms(p.window);
                let mut e = cur.unwrap_or_else(|| Entry::fresh(now));
                e.refresh(now, window);
                let (n, locked) = e.fail(now, reserved, limit, p.lockout);
                Step::Put(e, e.ttl(now, window), (n, e.locked_until.filter(|_| locked)))
            })
            .await;
        res.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "login protection: a failure could not be recorded; its reservation stays counted");
            (0, None)
        })
    }

    /// Counts a failed check.
    async fn fail(&self, keys: &Keys, pair_window: u64, source_window: u64) -> Failure {
        let p = &self.policy;
        self.leave(&keys.account);
        let ((n, pair_lock), (_, source_lock)) = tokio::join!(
            self.fail_one(Table::Pair, &keys.pair, pair_window, p.per_account),
            self.fail_one(Table::Source, &keys.source, source_window, p.per_address),
        );
        let now = self.clock.now();
        let lock = pair_lock.max(source_lock);
        Failure {
            delay: Duration::from_millis(200 * u64::from(n.saturating_sub(1).min(10))),
            locked: lock.is_some(),
            retry: lock.map(|until| Retry {
                now,
                at: UnixTime::from_millis(until),
            }),
        }
    }

    /// A successful check: the pair is cleared, the source's reservation and the account's
    /// pacing slot are given back.
    async fn succeed(&self, keys: &Keys, pair_window: u64, source_window: u64) {
        self.leave(&keys.account);
        let clear = self.entry(Table::Pair, &keys.pair, |cur| match cur {
            None => Step::Keep(()),
            Some(mut e) => {
                let now = self.clock.now().as_millis();
                e.clear(now, pair_window);
                if e.empty() {
                    Step::Remove(())
                } else {
                    Step::Put(e, e.ttl(now, ms(self.policy.window)), ())
                }
            }
        });
        let (cleared, (), ()) = tokio::join!(
            clear,
            self.give_back(Table::Source, &keys.source, source_window),
            self.refund(&keys.account),
        );
        if let Err(e) = cleared {
            tracing::warn!(error = %e, "login protection: a successful login could not clear its count");
        }
    }

    /// Releases a reservation without counting it (the check could not be made).
    async fn cancel(&self, keys: &Keys, pair_window: u64, source_window: u64) {
        self.leave(&keys.account);
        tokio::join!(
            self.give_back(Table::Pair, &keys.pair, pair_window),
            self.give_back(Table::Source, &keys.source, source_window),
            self.refund(&keys.account),
        );
    }
}

impl Lockout {
    /// A limiter with `policy`; its counters live in `store` (shared by every replica using
    /// it), or in a store of its own when none is given.
    pub fn new(policy: LockoutPolicy, clock: Arc<dyn Clock>, store: Option<Arc<dyn Store>>) -> Self {
        Self::with_capacity(policy, clock, store, MAX_ENTRIES)
    }

    /// A limiter caching at most `max_entries` keys per table.
    fn with_capacity(
        policy: LockoutPolicy,
        clock: Arc<dyn Clock>,
        store: Option<Arc<dyn Store>>,
        max_entries: usize,
    ) -> Self {
        let store = store.unwrap_or_else(|| MemoryStore::new(clock.clone()));
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

    /// Warms the cache with the stored counters (at start, at most what the cache holds);
    /// returns how many were cached. The store stays the authority: a record left out is read
    /// when it is needed.
    pub async fn restore(&self) -> Result<usize, StoreError> {
        let inner = &self.0;
        let mut records = Vec::new();
        let mut after: Option<String> = None;
        while records.len() < inner.max_entries.saturating_mul(3) {
            let page = inner.store.list(PREFIX, 500, after.as_deref()).await?;
            records.extend(page.items);
            match page.continue_key {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        let mut n = 0;
        let mut st = inner.state.lock();
        for kv in &records {
            let Some((table, k)) = kv.key.strip_prefix(PREFIX).and_then(|r| r.split_once('/')) else {
                continue;
            };
            let cached = match table {
                "pair" => serde_json::from_slice(&kv.value).ok().map(|e| (&mut st.pairs, e)),
                "source" => serde_json::from_slice(&kv.value).ok().map(|e| (&mut st.sources, e)),
                "account" => {
                    if let Ok(pace) = serde_json::from_slice::<Pace>(&kv.value)
                        && st.accounts.len() < inner.max_entries
                    {
                        st.accounts.insert(
                            k.to_owned(),
                            Account {
                                pace: Some((pace, kv.mod_revision)),
                                in_flight: 0,
                            },
                        );
                        n += 1;
                    }
                    continue;
                }
                _ => continue,
            };
            if let Some((map, e)) = cached
                && map.len() < inner.max_entries
            {
                map.insert(k.to_owned(), (e, kv.mod_revision));
                n += 1;
            }
        }
        Ok(n)
    }

    /// Lockouts in force now (pairs and client addresses locked), read from the store, so every
    /// replica's count is the same; at most `limit` records are read.
    pub async fn active(&self, limit: usize) -> Result<usize, StoreError> {
        let inner = &self.0;
        let now = inner.clock.now().as_millis();
        let (mut read, mut locked) = (0usize, 0usize);
        let mut after: Option<String> = None;
        while read < limit {
            let page = inner.store.list(PREFIX, 500, after.as_deref()).await?;
            read += page.items.len();
            locked += page
                .items
                .iter()
                .filter(|kv| {
                    let table = kv.key.strip_prefix(PREFIX).and_then(|r| r.split_once('/')).map(|t| t.0);
                    matches!(table, Some("pair" | "source"))
                        && serde_json::from_slice::<Entry>(&kv.value).is_ok_and(|e| e.locked(now))
                })
                .count();
            match page.continue_key {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        Ok(locked)
    }

    /// Reserves a password check for `account` (already normalised as users are looked up) from
    /// `address`.
    pub async fn reserve(&self, account: &str, address: &str) -> Gate {
        let inner = &self.0;
        let now_t = inner.clock.now();
        let keys = Keys::new(account, address);
        let retry = |at: u64| Retry {
            now: now_t,
            at: UnixTime::from_millis(at.max(now_t.as_millis().saturating_add(1000))),
        };
        match inner.reserve(&keys, now_t).await {
            Ok(Ok((pair_window, source_window, wait))) => Gate::Open(Permit {
                inner: inner.clone(),
                keys,
                pair_window,
                source_window,
                wait,
                done: false,
            }),
            Ok(Err(until)) => Gate::Locked(retry(until)),
            Err(e) => {
                tracing::warn!(error = %e, "login protection: the store failed; the login is refused unchecked");
                Gate::Unavailable(retry(now_t.add(UNAVAILABLE_RETRY).as_millis()))
            }
        }
    }
}

impl Permit {
    /// How long to wait before checking (the per-account pacing); zero within the budget.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// The check failed: counts it, returns the answer delay.
    pub async fn failure(mut self) -> Failure {
        self.done = true;
        self.inner.fail(&self.keys, self.pair_window, self.source_window).await
    }

    /// The check could not be made (an upstream directory failed before it could answer):
    /// the reservation is given back and nothing is counted, as no password was judged.
    pub async fn release(mut self) {
        self.done = true;
        self.inner
            .cancel(&self.keys, self.pair_window, self.source_window)
            .await;
    }

    /// The check succeeded: the pair's count is cleared (the source's is not, so logging in to
    /// one's own account does not buy more guesses at others).
    pub async fn success(mut self) {
        self.done = true;
        self.inner
            .succeed(&self.keys, self.pair_window, self.source_window)
            .await;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Counted as a failure; without a runtime the reservation simply stays counted.
        let (inner, keys) = (self.inner.clone(), self.keys.clone());
        let (pair_window, source_window) = (self.pair_window, self.source_window);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    inner.fail(&keys, pair_window, source_window).await;
                });
            }
            Err(_) => inner.leave(&keys.account),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_a_directory_finds_alike_are_one_account() {
        let plain = directory_account("alice");
        for spelling in [
            "Alice",
            "  ALICE ",
            "ａｌｉｃｅ",
            "Ａｌｉｃｅ",
            "al\u{200B}ice",
            "ali\u{00AD}ce",
            "\u{FEFF}alice",
            "a\u{FE0F}lice",
            "alice\u{7}",
        ] {
            assert_eq!(directory_account(spelling), plain, "{spelling:?}");
        }
        assert_eq!(directory_account("John  Smith"), directory_account("john smith"));
        assert_eq!(directory_account("john\tsmith"), directory_account("john smith"));
        assert_eq!(directory_account("john\u{85}smith"), directory_account("john smith"));
        assert_eq!(directory_account("jo\u{0600}hn"), directory_account("john"));
        assert_eq!(directory_account("STRASSE"), directory_account("straße"));
        assert_eq!(directory_account("ΑΣ"), directory_account("ας"));
        assert_eq!(directory_account("ﬁona"), directory_account("fiona"));
        // Different names stay different.
        for other in ["alice2", "alicia", "a lice", "bob"] {
            assert_ne!(directory_account(other), plain, "{other:?}");
        }
    }
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

    async fn permit(l: &Lockout, account: &str, address: &str) -> Permit {
        match l.reserve(account, address).await {
            Gate::Open(p) => p,
            Gate::Locked(_) => panic!("{account} from {address} is locked"),
            Gate::Unavailable(_) => panic!("the store failed"),
        }
    }

    async fn locked(l: &Lockout, account: &str, address: &str) -> bool {
        match l.reserve(account, address).await {
            Gate::Open(p) => {
                p.release().await;
                false
            }
            Gate::Locked(_) => true,
            Gate::Unavailable(_) => panic!("the store failed"),
        }
    }

    /// Lets spawned work (a dropped permit's outcome) run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
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
            permit(&l, &format!("u{i}"), "10.6.6.6").await.failure().await;
            permit(&l, &format!("v{i}"), &format!("2001:db8:6::{i}"))
                .await
                .failure()
                .await;
        }
        let before = sizes(&l);
        assert_eq!(before, (10, 2, 10));
        // … then spray distinct logins (over every address of the /64): all refused, none recorded
        for i in 0..1_000 {
            assert!(locked(&l, &format!("r{i}@x"), "10.6.6.6").await);
            assert!(locked(&l, &format!("r{i}@x"), &format!("2001:db8:6::{i:x}:1")).await);
        }
        assert_eq!(sizes(&l), before, "refused requests insert nothing");
        // past the window (not the lockout): still refused, still nothing recorded
        clock.advance(Duration::from_secs(100));
        for i in 0..200 {
            assert!(locked(&l, &format!("s{i}@x"), "10.6.6.6").await);
        }
        assert_eq!(sizes(&l), before);
        // a fresh account from another source, and the same account logging in again, get in
        permit(&l, "alice", "10.0.0.2").await.success().await;
        permit(&l, "alice", "10.0.0.2").await.success().await;
        permit(&l, "admin", "2001:db8:7::1").await.success().await;
    }

    #[tokio::test]
    async fn many_self_locking_sources_never_lock_out_a_legitimate_user() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let cap = 64;
        let l = Lockout::with_capacity(policy(), clock.clone(), None, cap);
        // the owner has a typo on record; a pair locked out before the flood stays locked as long
        // as cheaper entries can be evicted
        permit(&l, "alice", "10.0.0.2").await.failure().await;
        for _ in 0..3 {
            permit(&l, "victim", "10.9.9.9").await.failure().await;
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
                let p = permit(&l, &format!("x{s}-{i}@x"), &addr).await;
                if s % 50 == 0 && i == 0 {
                    held.push(p);
                } else {
                    p.failure().await;
                }
            }
            if s % 50 != 0 {
                assert!(locked(&l, "anyone", &addr).await);
            }
            let (pairs, sources, accounts) = sizes(&l);
            let bound = cap + held.len();
            assert!(pairs <= bound && sources <= bound && accounts <= bound, "bounded");
            // at every step legitimate users get in: a fresh account from a fresh source, the
            // owner of a failure elsewhere, and one who logged in before
            permit(&l, &format!("new{s}"), &format!("10.1.{}.{}", s / 256, s % 256))
                .await
                .success()
                .await;
            permit(&l, "alice", "10.0.0.3").await.success().await;
            permit(&l, "bob", "10.0.0.4").await.success().await;
        }
        assert!(
            locked(&l, "victim", "10.9.9.9").await,
            "a locked pair outlives cheaper entries"
        );
        // the held checks still count when they end
        for p in held {
            p.failure().await;
        }
        permit(&l, "alice", "10.0.0.2").await.success().await;
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
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(permit(&l, "a", "10.0.0.1").await);
        }
        assert!(locked(&l, "a", "10.0.0.1").await);
        // a success gives the slot back
        let mut held = held.into_iter();
        held.next().unwrap().success().await;
        let p = permit(&l, "a", "10.0.0.1").await;
        // failures (and dropped permits) count
        p.failure().await;
        drop(held.next());
        settle().await;
        let f = held.next().unwrap().failure().await;
        assert!(f.locked, "third failure locks");
        assert!(locked(&l, "a", "10.0.0.1").await);
        // the same account from elsewhere is not locked
        permit(&l, "a", "10.0.0.2").await.success().await;
    }

    #[tokio::test]
    async fn lockouts_are_per_pair_progressive_and_expire() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let l = Lockout::new(policy(), clock.clone(), None);
        async fn fail(l: &Lockout) -> Failure {
            permit(l, "a", "10.0.0.1").await.failure().await
        }
        assert_eq!(fail(&l).await.delay, Duration::ZERO);
        assert_eq!(fail(&l).await.delay, Duration::from_millis(200));
        assert!(fail(&l).await.locked);
        assert!(locked(&l, "a", "10.0.0.1").await);
        clock.advance(Duration::from_secs(121));
        for _ in 0..2 {
            fail(&l).await;
        }
        assert!(fail(&l).await.locked);
        // the second lockout is twice as long
        clock.advance(Duration::from_secs(121));
        assert!(locked(&l, "a", "10.0.0.1").await);
        clock.advance(Duration::from_secs(120));
        assert!(!locked(&l, "a", "10.0.0.1").await);
        // after a quiet period as long as the last lockout, strikes are forgotten
        clock.advance(Duration::from_secs(241));
        for _ in 0..3 {
            fail(&l).await;
        }
        clock.advance(Duration::from_secs(121));
        assert!(!locked(&l, "a", "10.0.0.1").await, "back to the first lockout length");
    }

    async fn retry(l: &Lockout, account: &str, address: &str) -> Retry {
        match l.reserve(account, address).await {
            Gate::Open(_) => panic!("{account} from {address} is not locked"),
            Gate::Locked(r) => r,
            Gate::Unavailable(_) => panic!("the store failed"),
        }
    }

    #[tokio::test]
    async fn a_lock_says_when_it_ends_by_the_lockouts_clock() {
        // 2026-12-05 17:30:20 UTC.
        let start = UnixTime::from_secs(1_796_491_820);
        let clock = ManualClock::new(start);
        let l = Lockout::new(policy(), clock.clone(), None);
        for _ in 0..2 {
            assert_eq!(permit(&l, "a", "10.0.0.1").await.failure().await.retry, None);
        }
        // The failure that locks says until when (120 s).
        let f = permit(&l, "a", "10.0.0.1").await.failure().await;
        let until = UnixTime::from_secs(1_796_491_940);
        assert_eq!(f.retry, Some(Retry { now: start, at: until }));
        clock.advance(Duration::from_secs(30));
        let r = retry(&l, "a", "10.0.0.1").await;
        assert_eq!((r.at, r.remaining()), (until, Duration::from_secs(90)));
        // 17:30:50 → ends 17:32:20: shown as 17:33, three minutes on the wall clock.
        assert_eq!(r.in_words(), "in 3 minutes (at 17:33 UTC)");
        clock.advance(Duration::from_secs(90));
        assert!(!locked(&l, "a", "10.0.0.1").await);
        // The second lock lasts twice as long: its remaining time grows with it.
        for _ in 0..3 {
            let _ = permit(&l, "a", "10.0.0.1").await.failure().await;
        }
        assert_eq!(retry(&l, "a", "10.0.0.1").await.remaining(), Duration::from_secs(240));
        // Another account from the same source is not locked; the source's own budget is 5.
        assert!(!locked(&l, "b", "10.0.0.1").await);
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
            let _ = permit(&l, "a", &format!("10.0.0.{i}")).await.failure().await;
        }
        let r = retry(&l, "a", "10.0.0.9").await;
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
            permit(&l, &format!("u{i}"), &format!("2001:db8::{i}"))
                .await
                .failure()
                .await;
        }
        assert!(locked(&l, "fresh", "2001:db8::ffff").await, "same /64");
        permit(&l, "fresh", "2001:db9::1").await.success().await;
        // a success does not clear the source's count
        let clock2 = ManualClock::new(UnixTime::from_secs(1_000));
        let l = Lockout::new(policy(), clock2, None);
        for i in 0..4 {
            permit(&l, &format!("u{i}"), "10.1.1.1").await.failure().await;
        }
        permit(&l, "mine", "10.1.1.1").await.success().await;
        permit(&l, "u9", "10.1.1.1").await.failure().await;
        assert!(locked(&l, "other", "10.1.1.1").await);
    }

    #[tokio::test]
    async fn the_account_budget_slows_a_distributed_attack_without_locking() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let l = Lockout::new(policy(), clock.clone(), None);
        // ten sources, one guess each: the budget (10) is spent
        for i in 0..10 {
            permit(&l, "admin", &format!("10.0.1.{i}")).await.failure().await;
        }
        // the next check must wait for its slot (window / budget = 6 s) …
        let p = permit(&l, "admin", "10.0.2.1").await;
        assert_eq!(p.wait(), Duration::from_secs(6));
        // … and only one waiter gets that slot
        assert!(locked(&l, "admin", "10.0.2.2").await);
        p.failure().await;
        // time passes: the owner gets through, with no lockout
        clock.advance(Duration::from_secs(12));
        let p = permit(&l, "admin", "10.9.9.9").await;
        assert_eq!(p.wait(), Duration::ZERO);
        p.success().await;
        // other accounts are unaffected
        assert_eq!(permit(&l, "bob", "10.0.2.2").await.wait(), Duration::ZERO);
    }

    #[tokio::test]
    async fn counters_survive_a_restart_through_the_store() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let store: Arc<dyn Store> = MemoryStore::new(clock.clone());
        let l = Lockout::new(policy(), clock.clone(), Some(store.clone()));
        for _ in 0..3 {
            permit(&l, "a", "10.0.0.1").await.failure().await;
        }
        permit(&l, "b", "10.0.0.1").await.failure().await;
        let l2 = Lockout::new(policy(), clock.clone(), Some(store.clone()));
        assert_eq!(
            l2.restore().await.unwrap(),
            5,
            "two pairs, one source and two accounts' pacing"
        );
        assert!(locked(&l2, "a", "10.0.0.1").await);
        // the source count (4 of 5) came back too
        permit(&l2, "c", "10.0.0.1").await.failure().await;
        assert!(locked(&l2, "d", "10.0.0.1").await);
        // records expire with the lockout
        clock.advance(Duration::from_secs(3600));
        let l3 = Lockout::new(policy(), clock.clone(), Some(store));
        l3.restore().await.unwrap();
        assert!(!locked(&l3, "a", "10.0.0.1").await);
    }

    /// Two replicas over one store, racing `tasks` logins each (from `address`, for the account
    /// `account(i)`); every granted check fails. Returns how many were granted.
    async fn race(replicas: &[Lockout], tasks: usize, account: impl Fn(usize) -> String, address: &str) -> usize {
        let granted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut all = Vec::new();
        for (r, l) in replicas.iter().enumerate() {
            for i in 0..tasks {
                let (l, granted, who, address) =
                    (l.clone(), granted.clone(), account(r * tasks + i), address.to_owned());
                all.push(tokio::spawn(async move {
                    match l.reserve(&who, &address).await {
                        Gate::Open(p) => {
                            granted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            p.failure().await;
                        }
                        Gate::Locked(_) => {}
                        Gate::Unavailable(_) => panic!("the store did not fail"),
                    }
                }));
            }
        }
        for t in all {
            t.await.unwrap();
        }
        granted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn replicas(n: usize, policy: &LockoutPolicy, clock: &Arc<ManualClock>, store: &Arc<dyn Store>) -> Vec<Lockout> {
        (0..n)
            .map(|_| Lockout::new(policy.clone(), clock.clone(), Some(store.clone())))
            .collect()
    }

    async fn stored(store: &Arc<dyn Store>, table: Table, digest: &str) -> Entry {
        let kv = store.get(&table.key(digest)).await.unwrap().expect("a record");
        serde_json::from_slice(&kv.value).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn replicas_never_verify_more_than_the_budget_together() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let store: Arc<dyn Store> = MemoryStore::new(clock.clone());
        let two = replicas(2, &policy(), &clock, &store);
        // One account from one source, 2 × 50 guesses at once: per_account (3) checks in all.
        let n = race(&two, 50, |_| "victim".to_owned(), "10.0.0.1").await;
        assert!((1..=3).contains(&n), "{n} passwords checked for one pair (budget 3)");
        assert_eq!(n, 3, "the budget is spent, not wasted");
        for l in &two {
            assert!(locked(l, "victim", "10.0.0.1").await, "the lock holds on every replica");
        }
        // Many accounts from one source, 3 replicas × 40 at once: per_address (5) in all.
        let three = replicas(3, &policy(), &clock, &store);
        let n = race(&three, 40, |i| format!("u{i}"), "10.0.0.2").await;
        assert_eq!(n, 5, "{n} passwords checked from one source (budget 5)");
        for l in &three {
            assert!(locked(l, "someone-else", "10.0.0.2").await);
        }
        // The other sources and the owner elsewhere are untouched.
        permit(&two[1], "victim", "10.0.0.3").await.success().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_failures_on_replicas_lose_no_increment() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let store: Arc<dyn Store> = MemoryStore::new(clock.clone());
        let roomy = LockoutPolicy {
            per_account: 1_000,
            per_address: 1_000,
            account_budget: 10_000,
            ..policy()
        };
        let two = replicas(2, &roomy, &clock, &store);
        let n = race(&two, 100, |i| format!("u{}", i % 7), "10.0.0.1").await;
        // (only the per-replica cap of 8 checks of one account at once refuses some)
        assert!(n >= 7 * 8, "{n} granted");
        let n = u32::try_from(n).unwrap();
        let source = stored(&store, Table::Source, &Keys::new("x", "10.0.0.1").source).await;
        assert_eq!((source.failures, source.pending), (n, 0), "every failure counted once");
        assert_eq!(pair_sum(&store, 7).await, n);
    }

    async fn pair_sum(store: &Arc<dyn Store>, accounts: usize) -> u32 {
        let mut sum = 0;
        for i in 0..accounts {
            sum += stored(store, Table::Pair, &Keys::new(&format!("u{i}"), "10.0.0.1").pair)
                .await
                .failures;
        }
        sum
    }

    #[tokio::test]
    async fn a_lock_set_on_one_replica_refuses_at_the_other_at_once() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let store: Arc<dyn Store> = MemoryStore::new(clock.clone());
        let [a, b]: [Lockout; 2] = replicas(2, &policy(), &clock, &store).try_into().ok().unwrap();
        // B has the pair cached with one failure (an unlocked copy) …
        permit(&b, "a", "10.0.0.1").await.failure().await;
        // … A locks it …
        for _ in 0..2 {
            permit(&a, "a", "10.0.0.1").await.failure().await;
        }
        let r = retry(&b, "a", "10.0.0.1").await;
        assert_eq!(r.remaining(), Duration::from_secs(120), "B refuses with A's lock end");
        // A success on B clears the pair for A too (after the lock).
        clock.advance(Duration::from_secs(121));
        permit(&b, "a", "10.0.0.1").await.failure().await;
        permit(&b, "a", "10.0.0.1").await.success().await;
        let f = [permit(&a, "a", "10.0.0.1").await.failure().await];
        assert_eq!(f[0].delay, Duration::ZERO, "the count started again");
        // The account pacing is one budget over the replicas: 10 checks in all, then spaced.
        for i in 0..10 {
            let l = if i % 2 == 0 { &a } else { &b };
            permit(l, "admin", &format!("10.0.1.{i}")).await.failure().await;
        }
        assert_eq!(permit(&a, "admin", "10.0.2.1").await.wait(), Duration::from_secs(6));
        assert!(
            locked(&b, "admin", "10.0.2.2").await,
            "one waiter per slot, on any replica"
        );
    }

    #[tokio::test]
    async fn reservations_another_replica_settled_do_not_refuse_from_the_cache() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let store: Arc<dyn Store> = MemoryStore::new(clock.clone());
        let [a, b]: [Lockout; 2] = replicas(2, &policy(), &clock, &store).try_into().ok().unwrap();
        // B caches the pair (one failure); A's two checks in flight fill the budget (3), so B
        // is refused "soon" and its cached copy now holds A's reservations …
        permit(&b, "a", "10.0.0.1").await.failure().await;
        let held = [permit(&a, "a", "10.0.0.1").await, permit(&a, "a", "10.0.0.1").await];
        assert!(locked(&b, "a", "10.0.0.1").await, "the budget is in flight");
        // … which A then settles as successes: the pair is clear in the store, and B must
        // ask the store again rather than refuse from its copy until the window ends.
        for p in held {
            p.success().await;
        }
        permit(&b, "a", "10.0.0.1").await.success().await;
        permit(&a, "a", "10.0.0.1").await.success().await;
    }

    #[tokio::test]
    async fn a_failing_store_fails_closed() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let flaky = kfsec_store::flaky::Flaky::new(MemoryStore::new(clock.clone()));
        let store: Arc<dyn Store> = flaky.clone();
        let l = Lockout::new(policy(), clock.clone(), Some(store.clone()));
        // Warm the cache: the fast path must not grant on its own either.
        permit(&l, "a", "10.0.0.1").await.success().await;
        flaky.fail(true);
        for who in ["a", "b"] {
            match l.reserve(who, "10.0.0.1").await {
                Gate::Unavailable(r) => assert_eq!(r.remaining(), UNAVAILABLE_RETRY),
                Gate::Open(_) => panic!("granted while the store fails"),
                Gate::Locked(_) => panic!("a lock, not a store failure"),
            }
        }
        flaky.fail(false);
        // A failure whose outcome cannot be written stays counted: three such lock the pair.
        for _ in 0..3 {
            let p = permit(&l, "a", "10.0.0.1").await;
            flaky.fail(true);
            let f = p.failure().await;
            assert!(!f.locked);
            flaky.fail(false);
        }
        assert!(
            locked(&l, "a", "10.0.0.1").await,
            "reservations count until their outcome is written"
        );
        let other = Lockout::new(policy(), clock.clone(), Some(store));
        assert!(locked(&other, "a", "10.0.0.1").await, "and on other replicas");
    }
}
