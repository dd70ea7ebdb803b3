//! The session check's per-thread front: each worker thread remembers the answers of the full
//! check ([`crate::session::Sessions::check`], then the revocation epoch) for the session
//! cookies it has seen, so a cookie it saw before costs one SHA-256 of the cookie and two
//! atomic loads instead of an HMAC, a SHA-256, two shared locks and their shared cache lines.
//!
//! Security invariants: an entry answers only for the cookie whose SHA-256 it holds (found by
//! the digest, compared in constant time), and only while (1) the session cache and the
//! revocation-epoch cache are both at the versions read *before* the full check that made the
//! entry — every login, logout, revocation, re-check, watch event, prune or drop of either
//! cache moves its version and so retires every entry of every thread at once —, (2) the epoch
//! cache follows the store (otherwise every check reads the store, and so does every request),
//! (3) the session has not expired and (4) its upstream re-check is not due. It never answers
//! for a request the full check would refuse; the caller checks first that the store is
//! current, as for the full check. Entries keep no cookie, only its digest, from which none can
//! be made (as the session store keeps only its id's); the table is bounded and an entry found
//! retired is dropped at once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest;
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
    /// The cookie's SHA-256.
    digest: [u8; 32],
    holds: Holds,
    authn: Arc<Authenticated>,
}

/// One thread's entries, for the front they belong to.
struct Table {
    front: u64,
    /// By the digest's first eight bytes.
    entries: HashMap<u64, Entry, rustc_hash::FxBuildHasher>,
}

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

/// A front of the session check (one per [`crate::App`]).
pub(crate) struct Front {
    /// Tells this front's entries from another's on the same thread.
    id: u64,
}

/// `cookie`'s SHA-256, and the table slot it goes in.
fn digest_of(cookie: &str) -> ([u8; 32], u64) {
    let mut d = [0u8; 32];
    d.copy_from_slice(digest::digest(&digest::SHA256, cookie.as_bytes()).as_ref());
    let mut slot = [0u8; 8];
    slot.copy_from_slice(&d[..8]);
    (d, u64::from_le_bytes(slot))
}

impl Front {
    pub(crate) fn new() -> Self {
        static FRONTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            id: FRONTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The answer remembered for `cookie` on this thread, if it still holds at `versions`
    /// (read now, before this request's other checks) and `now`.
    pub(crate) fn get(&self, cookie: &str, versions: Versions, now: UnixTime) -> Option<Arc<Authenticated>> {
        let (digest, slot) = digest_of(cookie);
        TABLE.with_borrow_mut(|table| {
            let entries = &mut table.as_mut().filter(|t| t.front == self.id)?.entries;
            let e = entries.get(&slot)?;
            if verify_slices_are_equal(&e.digest, &digest).is_err() {
                return None;
            }
            let holds = e.holds.versions == versions
                && now.as_secs() < e.holds.expires_at
                && now.as_millis() < e.holds.recheck_at_ms;
            if !holds {
                // Retired: not kept until the slot is reused.
                entries.remove(&slot);
                return None;
            }
            Some(e.authn.clone())
        })
    }

    /// Remembers the full check's answer for `cookie` on this thread.
    pub(crate) fn put(&self, cookie: &str, holds: Holds, authn: &Arc<Authenticated>) {
        let (digest, slot) = digest_of(cookie);
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
                    digest,
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

    fn alice() -> Arc<Authenticated> {
        Arc::new(Authenticated {
            identity: Identity::new("alice@example.com", vec!["team".into()]),
            audiences: vec![],
            kind: CredentialKind::Session,
            expires_at: None,
        })
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
    fn entries_keep_the_cookies_digest_not_the_cookie() {
        let f = Front::new();
        f.put("the-cookie.its-mac", holds(), &alice());
        let (digest, slot) = digest_of("the-cookie.its-mac");
        let want = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"the-cookie.its-mac");
        assert_eq!(digest.as_slice(), want.as_ref());
        TABLE.with_borrow(|t| {
            let e = t.as_ref().and_then(|t| t.entries.get(&slot));
            assert_eq!(e.map(|e| e.digest), Some(digest));
        });
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
