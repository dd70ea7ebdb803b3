//! Small, memory-bounded rate limiters for what unauthenticated clients can trigger before login:
//! a per-key attempt counter over a fixed window, a global rate (GCRA: a burst of `limit`, then
//! one attempt every `window / limit`), and a capacity bound on live records with an expiry.
//!
//! Invariants: every structure has a hard size bound (new keys past it are refused, never
//! silently admitted); time comes from the caller (a [`kfsec_types::Clock`]), so the limits are
//! testable with a manual clock; IPv6 sources are grouped by /64, the smallest block a single
//! client usually controls.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use kfsec_types::UnixTime;

/// The key of a client address: the address itself for IPv4, its /64 for IPv6.
pub fn source_key(addr: &str) -> String {
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => addr.to_owned(),
    }
}

/// Attempts per key within a fixed window.
#[derive(Debug)]
pub struct KeyedCounter {
    limit: u32,
    window: Duration,
    max_keys: usize,
    counts: HashMap<String, (UnixTime, u32)>,
}

impl KeyedCounter {
    /// `limit` attempts per key per `window`, tracking at most `max_keys` keys.
    pub fn new(limit: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            limit,
            window,
            max_keys,
            counts: HashMap::new(),
        }
    }

    /// Counts an attempt for `key`; false if the key is over its limit (the attempt is refused
    /// and not counted) or the table is full of live keys.
    pub fn try_acquire(&mut self, key: &str, now: UnixTime) -> bool {
        let window = self.window;
        if !self.counts.contains_key(key) && self.counts.len() >= self.max_keys {
            self.counts.retain(|_, (start, _)| now.since(*start) < window);
            if self.counts.len() >= self.max_keys {
                return false;
            }
        }
        let e = self.counts.entry(key.to_owned()).or_insert((now, 0));
        if now.since(e.0) >= window {
            *e = (now, 0);
        }
        if e.1 >= self.limit {
            return false;
        }
        e.1 += 1;
        true
    }

    /// Whether `key` has used its attempts in the current window (nothing is counted).
    pub fn exhausted(&self, key: &str, now: UnixTime) -> bool {
        self.counts
            .get(key)
            .is_some_and(|(start, n)| now.since(*start) < self.window && *n >= self.limit)
    }
}

/// A rate: a burst of `limit`, refilled evenly over `window` (generic cell rate algorithm).
#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    /// Theoretical arrival time: when the bucket is full again.
    tat: UnixTime,
}

impl Default for Gcra {
    fn default() -> Self {
        Self {
            tat: UnixTime::from_secs(0),
        }
    }
}

impl Gcra {
    /// A rate whose bucket is full again at `tat` (a stored state).
    pub fn at(tat: UnixTime) -> Self {
        Self { tat }
    }

    /// The spacing of attempts once the burst is spent.
    pub fn interval(limit: u32, window: Duration) -> Duration {
        window / limit.max(1)
    }

    /// Takes one slot. Returns how long the caller must wait before using it, or `None` (slot not
    /// taken) if that wait would exceed `max_wait`.
    pub fn take(&mut self, limit: u32, window: Duration, now: UnixTime, max_wait: Duration) -> Option<Duration> {
        let t = Self::interval(limit, window);
        let tolerance = window.saturating_sub(t);
        let tat = self.tat.max(now);
        let earliest = tat.sub(tolerance);
        let wait = earliest.since(now);
        if wait > max_wait {
            return None;
        }
        self.tat = tat.add(t);
        Some(wait)
    }

    /// Gives a slot back (an attempt that should not count).
    pub fn refund(&mut self, limit: u32, window: Duration) {
        self.tat = self.tat.sub(Self::interval(limit, window));
    }

    /// Whether the bucket is full again at `now` (the state can be forgotten).
    pub fn is_idle(&self, now: UnixTime) -> bool {
        self.tat <= now
    }

    /// When the bucket is full again.
    pub fn full_at(&self) -> UnixTime {
        self.tat
    }
}

/// At most `max` live records, each live until its expiry.
#[derive(Debug)]
pub struct Capacity {
    max: usize,
    expiries: VecDeque<UnixTime>,
}

impl Capacity {
    /// A bound of `max` live records.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            expiries: VecDeque::new(),
        }
    }

    /// Admits one record living until `until`; false when `max` records are live.
    pub fn try_admit(&mut self, now: UnixTime, until: UnixTime) -> bool {
        self.expiries.retain(|t| *t > now);
        if self.expiries.len() >= self.max {
            return false;
        }
        // Kept sorted so the bound stays exact when records are seeded out of order.
        let at = self.expiries.partition_point(|t| *t <= until);
        self.expiries.insert(at, until);
        true
    }

    /// Live records at `now`.
    #[cfg(test)]
    pub fn live(&mut self, now: UnixTime) -> usize {
        self.expiries.retain(|t| *t > now);
        self.expiries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_group_ipv6_by_64() {
        assert_eq!(source_key("10.0.0.1"), "10.0.0.1");
        assert_eq!(source_key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(source_key("2001:db8:1:2:ffff::1"), "2001:db8:1:2::/64");
        assert_eq!(source_key("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(source_key("unknown"), "unknown");
    }

    #[test]
    fn keyed_counter_limits_each_key_and_the_table() {
        let t0 = UnixTime::from_secs(100);
        let mut c = KeyedCounter::new(2, Duration::from_secs(60), 3);
        assert!(c.try_acquire("a", t0) && c.try_acquire("a", t0));
        assert!(!c.try_acquire("a", t0));
        assert!(c.try_acquire("b", t0) && c.try_acquire("c", t0));
        assert!(!c.try_acquire("d", t0), "table full of live keys");
        let t1 = t0.add(Duration::from_secs(60));
        assert!(c.try_acquire("d", t1) && c.try_acquire("a", t1));
    }

    #[test]
    fn gcra_bursts_then_spaces() {
        let w = Duration::from_secs(100);
        let mut g = Gcra::default();
        let t0 = UnixTime::from_secs(1_000);
        for _ in 0..10 {
            assert_eq!(g.take(10, w, t0, Duration::ZERO), Some(Duration::ZERO));
        }
        assert_eq!(g.take(10, w, t0, Duration::ZERO), None);
        assert_eq!(
            g.take(10, w, t0, Duration::from_secs(10)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(g.take(10, w, t0, Duration::from_secs(10)), None, "one waiter per slot");
        let t1 = t0.add(Duration::from_secs(20));
        assert_eq!(g.take(10, w, t1, Duration::ZERO), Some(Duration::ZERO));
        g.refund(10, w);
        assert_eq!(g.take(10, w, t1, Duration::ZERO), Some(Duration::ZERO));
        assert!(!g.is_idle(t1));
        assert!(g.is_idle(t1.add(w)));
    }

    #[test]
    fn capacity_counts_live_records() {
        let t0 = UnixTime::from_secs(1_000);
        let mut c = Capacity::new(2);
        assert!(c.try_admit(t0, t0.add(Duration::from_secs(10))));
        assert!(c.try_admit(t0, t0.add(Duration::from_secs(5))));
        assert!(!c.try_admit(t0, t0.add(Duration::from_secs(5))));
        let t1 = t0.add(Duration::from_secs(5));
        assert_eq!(c.live(t1), 1);
        assert!(c.try_admit(t1, t1.add(Duration::from_secs(5))));
        assert!(!c.try_admit(t1, t1.add(Duration::from_secs(5))));
    }
}
