//! Brute-force protection for password logins: failures are counted per account and per client
//! address inside a window; each failure slows the next answer; past a threshold the key is
//! locked for a period.
//!
//! Invariants: unknown accounts are counted exactly like known ones, so lockout never reveals
//! whether an account exists; memory is bounded (stale entries are pruned).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kfsec_types::{Clock, UnixTime};
use parking_lot::Mutex;

/// Thresholds.
#[derive(Debug, Clone)]
pub struct LockoutPolicy {
    /// Failures per account before a lockout.
    pub per_account: u32,
    /// Failures per client address before a lockout.
    pub per_address: u32,
    /// Counting window.
    pub window: Duration,
    /// Lockout length.
    pub lockout: Duration,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self {
            per_account: 5,
            per_address: 20,
            window: Duration::from_secs(900),
            lockout: Duration::from_secs(900),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: UnixTime,
    locked_until: Option<UnixTime>,
}

const MAX_ENTRIES: usize = 100_000;

/// The limiter.
pub struct Lockout {
    policy: LockoutPolicy,
    clock: Arc<dyn Clock>,
    accounts: Mutex<HashMap<String, Entry>>,
    addresses: Mutex<HashMap<String, Entry>>,
}

/// The verdict before a password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Go ahead.
    Open,
    /// Locked out; the password is not checked.
    Locked,
}

impl Lockout {
    /// A limiter with `policy`.
    pub fn new(policy: LockoutPolicy, clock: Arc<dyn Clock>) -> Self {
        Self {
            policy,
            clock,
            accounts: Mutex::default(),
            addresses: Mutex::default(),
        }
    }

    fn locked(map: &Mutex<HashMap<String, Entry>>, key: &str, now: UnixTime) -> bool {
        map.lock()
            .get(key)
            .and_then(|e| e.locked_until)
            .is_some_and(|t| now < t)
    }

    /// Whether a login for `account` from `address` may be attempted.
    pub fn check(&self, account: &str, address: &str) -> Gate {
        let now = self.clock.now();
        if Self::locked(&self.accounts, account, now) || Self::locked(&self.addresses, address, now) {
            Gate::Locked
        } else {
            Gate::Open
        }
    }

    fn fail(&self, map: &Mutex<HashMap<String, Entry>>, key: &str, limit: u32, now: UnixTime) -> (u32, bool) {
        let mut map = map.lock();
        if map.len() >= MAX_ENTRIES {
            let (window, lockout) = (self.policy.window, self.policy.lockout);
            map.retain(|_, e| {
                now.since(e.window_start) < window || e.locked_until.is_some_and(|t| t > now) || lockout.is_zero()
            });
        }
        let e = map.entry(key.to_owned()).or_insert(Entry {
            failures: 0,
            window_start: now,
            locked_until: None,
        });
        if now.since(e.window_start) >= self.policy.window {
            *e = Entry {
                failures: 0,
                window_start: now,
                locked_until: None,
            };
        }
        e.failures = e.failures.saturating_add(1);
        let newly_locked = e.failures >= limit && e.locked_until.is_none_or(|t| t <= now);
        if newly_locked {
            e.locked_until = Some(now.add(self.policy.lockout));
        }
        (e.failures, newly_locked)
    }

    /// Records a failed attempt. Returns the delay to impose before answering and whether this
    /// failure started a lockout.
    pub fn record_failure(&self, account: &str, address: &str) -> (Duration, bool) {
        let now = self.clock.now();
        let (a, la) = self.fail(&self.accounts, account, self.policy.per_account, now);
        let (b, lb) = self.fail(&self.addresses, address, self.policy.per_address, now);
        let n = a.max(b.saturating_div(4));
        let delay = Duration::from_millis(u64::from(n.min(10)) * 200);
        (delay, la || lb)
    }

    /// Records a successful login: the account's count is cleared.
    pub fn record_success(&self, account: &str) {
        self.accounts.lock().remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kfsec_types::ManualClock;

    #[test]
    fn locks_and_unlocks() {
        let clock = ManualClock::new(UnixTime::from_secs(1_000));
        let l = Lockout::new(
            LockoutPolicy {
                per_account: 3,
                per_address: 5,
                window: Duration::from_secs(60),
                lockout: Duration::from_secs(120),
            },
            clock.clone(),
        );
        assert_eq!(l.check("a", "ip1"), Gate::Open);
        assert!(!l.record_failure("a", "ip1").1);
        assert!(!l.record_failure("a", "ip1").1);
        assert!(l.record_failure("a", "ip1").1);
        assert_eq!(l.check("a", "ip2"), Gate::Locked, "account locked from any address");
        assert_eq!(l.check("nobody", "ip1"), Gate::Open);
        clock.advance(Duration::from_secs(121));
        assert_eq!(l.check("a", "ip1"), Gate::Open);
        // per-address: many accounts from one address
        for i in 0..5 {
            l.record_failure(&format!("u{i}"), "ip9");
        }
        assert_eq!(l.check("fresh", "ip9"), Gate::Locked);
        assert_eq!(l.check("fresh", "ip8"), Gate::Open);
        // success clears the account
        l.record_failure("b", "ip3");
        l.record_success("b");
        l.record_failure("b", "ip3");
        l.record_failure("b", "ip3");
        assert_eq!(l.check("b", "ip3"), Gate::Open);
    }
}
