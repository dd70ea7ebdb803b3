//! Lease reuse for TTL records, as kube-apiserver does: records written with the same TTL within
//! a short window share one etcd lease instead of granting one each (a grant is a raft write).
//! Invariant: a shared lease never ends before the stored expiry of a record attached to it —
//! a lease for TTL class `base` (= ⌈ttl + lease_grace⌉ s) is granted for `base + window` and is
//! handed out only while less than `window − 1 s` has passed since its grant answered, so every
//! record attached to it keeps at least `ttl + lease_grace` of lease; `window` is 5 % of `base`,
//! at most 60 s, and short TTL classes (window < 2 s) are not shared. At most [`MAX_USES`]
//! records share a lease (revoking one deletes them all at once).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How many records one lease carries at most.
pub const MAX_USES: u32 = 1_000;

#[derive(Debug)]
struct Shared {
    id: i64,
    granted: Instant,
    window: Duration,
    uses: u32,
}

/// The leases being shared, by TTL class.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    by_class: Mutex<HashMap<i64, Shared>>,
}

/// The lease a record of TTL class `base` (seconds) needs: its TTL and reuse window.
pub(crate) fn plan(base: i64) -> (i64, Duration) {
    let window = (base / 20).min(60);
    if window < 2 {
        (base, Duration::ZERO)
    } else {
        (base + window, Duration::from_secs(window.unsigned_abs()))
    }
}

impl Leases {
    /// A lease of class `base` still fit for a new record, if one is being shared.
    pub(crate) fn reuse(&self, base: i64) -> Option<i64> {
        let mut map = self.by_class.lock();
        let shared = map.get_mut(&base)?;
        let fit =
            shared.uses < MAX_USES && shared.granted.elapsed().saturating_add(Duration::from_secs(1)) < shared.window;
        if !fit {
            map.remove(&base);
            return None;
        }
        shared.uses += 1;
        Some(shared.id)
    }

    /// Records a fresh lease of class `base`, granted for `window` of sharing.
    pub(crate) fn granted(&self, base: i64, id: i64, window: Duration, granted: Instant) {
        if window.is_zero() {
            return;
        }
        self.by_class.lock().insert(
            base,
            Shared {
                id,
                granted,
                window,
                uses: 1,
            },
        );
    }

    /// Stops sharing lease `id` (etcd no longer knows it).
    pub(crate) fn forget(&self, id: i64) {
        self.by_class.lock().retain(|_, s| s.id != id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn short_classes_are_not_shared_and_long_ones_get_a_window() {
        assert_eq!(plan(2), (2, Duration::ZERO));
        assert_eq!(plan(39), (39, Duration::ZERO));
        assert_eq!(plan(40), (42, Duration::from_secs(2)));
        assert_eq!(plan(3600), (3660, Duration::from_secs(60)));
        assert_eq!(plan(86_400), (86_460, Duration::from_secs(60)));
    }

    #[test]
    fn a_lease_is_shared_only_within_its_window_and_use_count() {
        let ago = |s: u64| Instant::now().checked_sub(Duration::from_millis(s)).unwrap();
        let l = Leases::default();
        l.granted(3600, 7, Duration::from_secs(60), Instant::now());
        assert_eq!(l.reuse(3600), Some(7));
        assert_eq!(l.reuse(1800), None);
        l.granted(3600, 6, Duration::from_secs(60), ago(58_000));
        assert_eq!(l.reuse(3600), Some(6));
        l.granted(3600, 5, Duration::from_secs(60), ago(59_500));
        assert_eq!(l.reuse(3600), None, "less than a second of window left");
        l.granted(3600, 8, Duration::from_secs(60), Instant::now());
        for _ in 1..MAX_USES {
            assert_eq!(l.reuse(3600), Some(8));
        }
        assert_eq!(l.reuse(3600), None);
        l.granted(3600, 9, Duration::from_secs(60), Instant::now());
        l.forget(9);
        assert_eq!(l.reuse(3600), None);
        l.granted(40, 10, Duration::ZERO, Instant::now());
        assert_eq!(l.reuse(40), None);
    }
}
