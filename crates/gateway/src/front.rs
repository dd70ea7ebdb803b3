//! The session check's per-thread front: each worker thread remembers the answers of the full
//! check ([`crate::session::Sessions::check`], then the revocation epoch) for the session
//! cookies it has seen, so a cookie it saw before costs a keyed hash, a constant-time
//! comparison and two atomic loads instead of an HMAC, a SHA-256 and two shared locks — and no
//! cache line is written by both cores.
//!
//! Security invariants: an entry answers only for the exact cookie it was made from (found by a
//! keyed hash, then its bytes compared in constant time), and only while (1) the session cache
//! and the revocation-epoch cache are both at the versions read *before* the full check that
//! made the entry — every login, logout, revocation, re-check, watch event, prune or drop of
//! either cache moves its version and so retires every entry of every thread at once —, (2) the
//! epoch cache follows the store (otherwise every check reads the store, and so does every
//! request), (3) the session has not expired and (4) its upstream re-check is not due. It never
//! answers for a request the full check would refuse; the caller checks first that the store
//! is current, as for the full check. Entries hold no secret beyond the cookie itself, which
//! the thread already held; the table is bounded, an entry found retired is dropped at once,
//! and a dropped entry's cookie is zeroed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use kfsec_idp::Authenticated;
use kfsec_types::UnixTime;

/// Entries a thread keeps per front before it starts over.
const MAX_ENTRIES: usize = 4096;

/// The versions of the two caches an answer was derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Versions {
    /// [`crate::session::Sessions::version`].
    pub sessions: u64,
    /// [`kfsec_idp::revocation::Epochs::cached_version`].
    pub epochs: u64,
}

/// How long a full check's answer holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Holds {
    /// The caches' versions read before the check began.
    pub versions: Versions,
    /// The session's end (Unix s).
    pub expires_at: u64,
    /// The session's next upstream re-check (Unix ms; `u64::MAX`: never).
    pub recheck_at_ms: u64,
}

struct Entry {
    /// (a bearer secret: zeroed when the entry goes)
    cookie: zeroize::Zeroizing<Box<[u8]>>,
    holds: Holds,
    authn: Authenticated,
}

/// One thread's entries, for the front they belong to.
struct Table {
    front: u64,
    entries: HashMap<u64, Entry, rustc_hash::FxBuildHasher>,
}

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

/// A front of the session check (one per [`crate::App`]).
pub(crate) struct Front {
    /// Tells this front's entries from another's on the same thread.
    id: u64,
    /// The keyed hash that finds a cookie's entry (its key is random per front, so which
    /// cookies share a slot cannot be chosen or learnt).
    keyed: std::collections::hash_map::RandomState,
}

impl Front {
    pub(crate) fn new() -> Self {
        static FRONTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            id: FRONTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            keyed: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The answer remembered for `cookie` on this thread, if it still holds at `versions`
    /// (read now, before this request's other checks) and `now`.
    pub(crate) fn get(&self, cookie: &str, versions: Versions, now: UnixTime) -> Option<Authenticated> {
        let slot = self.keyed.hash_one(cookie.as_bytes());
        TABLE.with_borrow_mut(|table| {
            let entries = &mut table.as_mut().filter(|t| t.front == self.id)?.entries;
            let e = entries.get(&slot)?;
            if verify_slices_are_equal(&e.cookie, cookie.as_bytes()).is_err() {
                return None;
            }
            let holds = e.holds.versions == versions
                && now.as_secs() < e.holds.expires_at
                && now.as_millis() < e.holds.recheck_at_ms;
            if !holds {
                // Retired: not kept (nor its cookie) until the slot is reused.
                entries.remove(&slot);
                return None;
            }
            Some(e.authn.clone())
        })
    }

    /// Remembers the full check's answer for `cookie` on this thread.
    pub(crate) fn put(&self, cookie: &str, holds: Holds, authn: &Authenticated) {
        let slot = self.keyed.hash_one(cookie.as_bytes());
        TABLE.with_borrow_mut(|table| {
            let t = match table {
                Some(t) if t.front == self.id => t,
                _ => table.insert(Table {
                    front: self.id,
                    entries: HashMap::default(),
                }),
            };
            if t.entries.len() >= MAX_ENTRIES {
                t.entries.clear();
            }
            t.entries.insert(
                slot,
                Entry {
                    cookie: zeroize::Zeroizing::new(cookie.as_bytes().into()),
                    holds,
                    authn: authn.clone(),
                },
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kfsec_idp::CredentialKind;
    use kfsec_types::Identity;

    fn alice() -> Authenticated {
        Authenticated {
            identity: Identity::new("alice@example.com", vec!["team".into()]),
            audiences: vec![],
            kind: CredentialKind::Session,
        }
    }

    const V: Versions = Versions { sessions: 3, epochs: 7 };

    fn holds() -> Holds {
        Holds {
            versions: V,
            expires_at: 1_000,
            recheck_at_ms: u64::MAX,
        }
    }

    #[test]
    fn an_answer_holds_only_for_its_cookie_its_versions_and_its_time() {
        let f = Front::new();
        let now = UnixTime::from_secs(500);
        assert_eq!(f.get("id.mac", V, now), None);
        f.put("id.mac", holds(), &alice());
        assert_eq!(f.get("id.mac", V, now), Some(alice()));
        // another cookie, even one differing in one byte or a prefix of it
        assert_eq!(f.get("id.maC", V, now), None);
        assert_eq!(f.get("id.ma", V, now), None);
        // either cache moved on
        assert_eq!(f.get("id.mac", Versions { sessions: 4, ..V }, now), None);
        assert_eq!(f.get("id.mac", Versions { epochs: 8, ..V }, now), None);
        // the session's end
        assert_eq!(f.get("id.mac", V, UnixTime::from_secs(1_000)), None);
        // a re-check due
        f.put(
            "id.mac",
            Holds {
                recheck_at_ms: 600_000,
                ..holds()
            },
            &alice(),
        );
        assert_eq!(f.get("id.mac", V, UnixTime::from_secs(599)), Some(alice()));
        assert_eq!(f.get("id.mac", V, UnixTime::from_secs(600)), None);
    }

    #[test]
    fn a_retired_answer_is_dropped_when_found() {
        let f = Front::new();
        let len = || TABLE.with_borrow(|t| t.as_ref().filter(|t| t.front == f.id).map_or(0, |t| t.entries.len()));
        f.put("gone", holds(), &alice());
        assert_eq!(len(), 1);
        assert_eq!(f.get("gone!", V, UnixTime::from_secs(1)), None);
        assert_eq!(len(), 1, "another cookie does not retire it");
        assert_eq!(
            f.get("gone", Versions { sessions: 9, ..V }, UnixTime::from_secs(1)),
            None
        );
        assert_eq!(len(), 0, "retired, and dropped");
    }

    #[test]
    fn fronts_and_threads_do_not_share_answers() {
        let (a, b) = (Front::new(), Front::new());
        let now = UnixTime::from_secs(1);
        a.put("c", holds(), &alice());
        assert_eq!(b.get("c", V, now), None, "another front on the same thread");
        let a = std::sync::Arc::new(a);
        let other = a.clone();
        let seen = std::thread::spawn(move || other.get("c", V, now))
            .join()
            .unwrap_or_else(|_| panic!("thread panicked"));
        assert_eq!(seen, None, "another thread");
        assert_eq!(a.get("c", V, now), Some(alice()));
    }

    #[test]
    fn the_table_is_bounded() {
        let f = Front::new();
        let now = UnixTime::from_secs(1);
        for i in 0..=MAX_ENTRIES {
            f.put(&format!("cookie-{i}"), holds(), &alice());
        }
        let kept = TABLE.with_borrow(|t| t.as_ref().map_or(0, |t| t.entries.len()));
        assert!(kept <= MAX_ENTRIES);
        assert_eq!(f.get(&format!("cookie-{MAX_ENTRIES}"), V, now), Some(alice()));
    }
}
