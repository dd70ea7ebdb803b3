//! Backend-independent semantics: the write rules (existence, conflicts, TTL visibility, one
//! revision and one logged event per write, change-log trimming), list paging, the record codec,
//! watch forwarding and the sweeper loop. Backends supply only a transactional [`Tables`] view, so
//! both behave identically by construction. Invariant: every check of an operation happens before
//! its first mutation, so a failed operation leaves the tables untouched.

use std::future::Future;
use std::ops::Bound;
use std::sync::{Arc, Weak};
use std::time::Duration;

use kfsec_types::UnixTime;
use tokio::sync::{broadcast, mpsc};

use crate::{EventKind, KeyValue, Revision, StoreError, WatchEvent, WatchStream};

/// The persisted counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// The global revision (the revision of the latest write).
    pub revision: Revision,
    /// Every logged event with revision <= this has been dropped from the change log.
    pub compacted: Revision,
}

/// One write operation.
pub(crate) enum Op {
    Create {
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    },
    Put {
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Take {
        key: String,
    },
    Sweep,
}

/// What a write operation returns.
pub(crate) enum Outcome {
    Written(Revision),
    Deleted(KeyValue),
    Taken(Option<KeyValue>),
    Swept(usize),
}

/// A write transaction's view of a backend's tables. Expiry times are Unix milliseconds.
pub(crate) trait Tables {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    fn set(&mut self, kv: &KeyValue) -> Result<(), StoreError>;
    fn remove(&mut self, key: &str) -> Result<(), StoreError>;
    fn expiry_insert(&mut self, at: u64, key: &str) -> Result<(), StoreError>;
    fn expiry_remove(&mut self, at: u64, key: &str) -> Result<(), StoreError>;
    /// Index entries with `at <= now`, in expiry order.
    fn expired_up_to(&mut self, now: u64) -> Result<Vec<(u64, String)>, StoreError>;
    fn log_append(&mut self, ev: &WatchEvent) -> Result<(), StoreError>;
    /// Drops logged events with `from < revision <= to`.
    fn log_remove(&mut self, from: Revision, to: Revision) -> Result<(), StoreError>;
    fn counters(&mut self) -> Result<Counters, StoreError>;
    fn set_counters(&mut self, c: Counters) -> Result<(), StoreError>;
}

/// Whether `kv` is visible at `now`.
pub(crate) fn is_live(kv: &KeyValue, now: UnixTime) -> bool {
    kv.expires_at.is_none_or(|at| now < at)
}

/// `now + ttl`, rounded up to whole milliseconds (records never expire early, and the value
/// survives the millisecond codec unchanged).
fn expiry(now: UnixTime, ttl: Duration) -> UnixTime {
    let t = now.add(ttl);
    let ms = t.as_millis();
    if UnixTime::from_millis(ms) < t {
        UnixTime::from_millis(ms.saturating_add(1))
    } else {
        UnixTime::from_millis(ms)
    }
}

struct Batch<'a, T: Tables> {
    t: &'a mut T,
    c: Counters,
    now: UnixTime,
    events: Vec<WatchEvent>,
}

impl<T: Tables> Batch<'_, T> {
    fn next_revision(&mut self) -> Result<Revision, StoreError> {
        self.c.revision = self
            .c
            .revision
            .checked_add(1)
            .ok_or_else(|| StoreError::Backend("revision overflow".into()))?;
        Ok(self.c.revision)
    }

    /// Writes `value` at `key`; `prev` is the raw record there (live or expired).
    fn write(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
        prev: Option<KeyValue>,
    ) -> Result<Revision, StoreError> {
        let rev = self.next_revision()?;
        let mut create_revision = rev;
        if let Some(p) = prev {
            if is_live(&p, self.now) {
                create_revision = p.create_revision;
            }
            if let Some(at) = p.expires_at {
                self.t.expiry_remove(at.as_millis(), &key)?;
            }
        }
        let expires_at = ttl.map(|d| expiry(self.now, d));
        let kv = KeyValue {
            key,
            value,
            create_revision,
            mod_revision: rev,
            expires_at,
        };
        self.t.set(&kv)?;
        if let Some(at) = expires_at {
            self.t.expiry_insert(at.as_millis(), &kv.key)?;
        }
        self.log(WatchEvent {
            kind: EventKind::Put,
            kv,
        })?;
        Ok(rev)
    }

    /// Deletes the record `prev` (as read from the tables); returns it with the deleting revision.
    fn erase(&mut self, mut prev: KeyValue) -> Result<KeyValue, StoreError> {
        let rev = self.next_revision()?;
        self.t.remove(&prev.key)?;
        if let Some(at) = prev.expires_at {
            self.t.expiry_remove(at.as_millis(), &prev.key)?;
        }
        prev.mod_revision = rev;
        self.log(WatchEvent {
            kind: EventKind::Delete,
            kv: prev.clone(),
        })?;
        Ok(prev)
    }

    fn log(&mut self, ev: WatchEvent) -> Result<(), StoreError> {
        self.t.log_append(&ev)?;
        self.events.push(ev);
        Ok(())
    }

    /// The live record at `key` plus the raw one.
    fn lookup(&mut self, key: &str) -> Result<(Option<KeyValue>, bool), StoreError> {
        let raw = self.t.get(key)?;
        let live = raw.as_ref().is_some_and(|kv| is_live(kv, self.now));
        Ok((raw, live))
    }

    fn sweep(&mut self) -> Result<usize, StoreError> {
        let mut n = 0;
        for (at, key) in self.t.expired_up_to(self.now.as_millis())? {
            match self.t.get(&key)? {
                Some(kv) if kv.expires_at.map(UnixTime::as_millis) == Some(at) && !is_live(&kv, self.now) => {
                    self.erase(kv)?;
                    n += 1;
                }
                // A stale index entry (cannot normally happen): drop it.
                _ => self.t.expiry_remove(at, &key)?,
            }
        }
        Ok(n)
    }
}

fn check_expected(kv: &KeyValue, expected: Option<Revision>) -> Result<(), StoreError> {
    match expected {
        Some(e) if e != kv.mod_revision => Err(StoreError::Conflict {
            key: kv.key.clone(),
            expected: e,
            found: kv.mod_revision,
        }),
        _ => Ok(()),
    }
}

/// Applies `op` at time `now`. Returns the outcome, the events written (in revision order; empty
/// if nothing changed, in which case the transaction need not be committed) and the new counters.
pub(crate) fn apply<T: Tables>(
    t: &mut T,
    op: Op,
    now: UnixTime,
    retention: usize,
) -> Result<(Outcome, Vec<WatchEvent>, Counters), StoreError> {
    let c = t.counters()?;
    let mut b = Batch {
        t,
        c,
        now,
        events: Vec::new(),
    };
    let outcome = match op {
        Op::Create { key, value, ttl } => {
            let (raw, live) = b.lookup(&key)?;
            if live {
                return Err(StoreError::AlreadyExists(key));
            }
            Outcome::Written(b.write(key, value, ttl, raw)?)
        }
        Op::Update {
            key,
            value,
            expected,
            ttl,
        } => match b.lookup(&key)? {
            (Some(kv), true) => {
                check_expected(&kv, expected)?;
                Outcome::Written(b.write(key, value, ttl, Some(kv))?)
            }
            _ => return Err(StoreError::NotFound(key)),
        },
        Op::Put { key, value, ttl } => {
            let (raw, _) = b.lookup(&key)?;
            Outcome::Written(b.write(key, value, ttl, raw)?)
        }
        Op::Delete { key, expected } => match b.lookup(&key)? {
            (Some(kv), true) => {
                check_expected(&kv, expected)?;
                Outcome::Deleted(b.erase(kv)?)
            }
            _ => return Err(StoreError::NotFound(key)),
        },
        Op::Take { key } => match b.lookup(&key)? {
            (Some(kv), true) => Outcome::Taken(Some(b.erase(kv)?)),
            _ => Outcome::Taken(None),
        },
        Op::Sweep => Outcome::Swept(b.sweep()?),
    };
    let Batch { t, mut c, events, .. } = b;
    if !events.is_empty() {
        let keep = Revision::try_from(retention).unwrap_or(Revision::MAX);
        let floor = c.revision.saturating_sub(keep);
        if floor > c.compacted {
            t.log_remove(c.compacted, floor)?;
            c.compacted = floor;
        }
        t.set_counters(c)?;
    }
    Ok((outcome, events, c))
}

/// Where a list scan starts.
pub(crate) fn start_bound<'a>(prefix: &'a str, start_after: Option<&'a str>) -> Bound<&'a str> {
    match start_after {
        Some(s) if s >= prefix => Bound::Excluded(s),
        _ => Bound::Included(prefix),
    }
}

/// Collects one list page from a key-ordered scan starting at [`start_bound`]. Stops at the
/// first key outside `prefix`, so at most one record beyond the prefix range is read.
pub(crate) fn page<I>(
    iter: I,
    prefix: &str,
    limit: usize,
    now: UnixTime,
) -> Result<(Vec<KeyValue>, Option<String>), StoreError>
where
    I: IntoIterator<Item = Result<KeyValue, StoreError>>,
{
    let mut items: Vec<KeyValue> = Vec::new();
    for kv in iter {
        let kv = kv?;
        if !kv.key.starts_with(prefix) {
            break;
        }
        if !is_live(&kv, now) {
            continue;
        }
        if limit != 0 && items.len() == limit {
            let cont = items.last().map(|k| k.key.clone());
            return Ok((items, cont));
        }
        items.push(kv);
    }
    Ok((items, None))
}

/// Checks that a watch from `after` can be served from a log compacted through `compacted`.
pub(crate) fn check_watchable(after: Revision, compacted: Revision) -> Result<(), StoreError> {
    if after < compacted {
        Err(StoreError::Compacted {
            requested: after,
            oldest: compacted,
        })
    } else {
        Ok(())
    }
}

/// Starts the task that feeds one watcher: first `replay` (events up to `snapshot`, already
/// filtered), then live events from `live` (subscribed before the snapshot was read) with
/// revision > max(after, snapshot) under `prefix`. Live revisions are contiguous, so after the
/// broadcast channel reports a lag, a gap in revisions means lost events: the watcher gets
/// `Err(Compacted)` and the stream ends.
pub(crate) fn spawn_watch(
    prefix: String,
    after: Revision,
    replay: Vec<WatchEvent>,
    snapshot: Revision,
    mut live: broadcast::Receiver<Arc<WatchEvent>>,
    buffer: usize,
) -> WatchStream {
    let (tx, rx) = mpsc::channel(buffer.max(1));
    tokio::spawn(async move {
        for ev in replay {
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
        }
        let mut last = after.max(snapshot);
        let mut lagged = false;
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return,
                r = live.recv() => r,
            };
            match next {
                Ok(ev) => {
                    let rev = ev.kv.mod_revision;
                    if rev <= last {
                        continue;
                    }
                    if lagged && rev > last.saturating_add(1) {
                        let _ = tx
                            .send(Err(StoreError::Compacted {
                                requested: last,
                                oldest: rev.saturating_sub(1),
                            }))
                            .await;
                        return;
                    }
                    lagged = false;
                    last = rev;
                    if ev.kv.key.starts_with(&prefix) && tx.send(Ok((*ev).clone())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(prefix = %prefix, skipped = n, "store watcher lagged");
                    lagged = true;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    rx
}

/// Starts the background sweeper: every `interval`, while `target` is alive, runs `sweep`.
pub(crate) fn spawn_sweeper<T, F, Fut>(target: Weak<T>, interval: Option<Duration>, sweep: F)
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<usize, StoreError>> + Send,
{
    let Some(interval) = interval.filter(|d| !d.is_zero()) else {
        return;
    };
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("store opened outside a tokio runtime: no background TTL sweeper");
        return;
    };
    handle.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(store) = target.upgrade() else {
                return;
            };
            match sweep(store).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "swept expired store records"),
                Err(e) => tracing::warn!(error = %e, "store TTL sweep failed"),
            }
        }
    });
}

// ---- codec (used by the persistent backend) ----

const RECORD_VERSION: u8 = 1;
const HEADER: usize = 1 + 8 + 8 + 1 + 8;

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("corrupt {what} in the database"))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Encodes a record without its key: version, create, mod, expiry flag + millis, value.
pub(crate) fn encode_record(kv: &KeyValue, out: &mut Vec<u8>) {
    out.reserve(HEADER + kv.value.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    match kv.expires_at {
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.as_millis().to_le_bytes());
        }
        None => {
            out.push(0);
            out.extend_from_slice(&0u64.to_le_bytes());
        }
    }
    out.extend_from_slice(&kv.value);
}

pub(crate) fn decode_record(key: &str, b: &[u8]) -> Result<KeyValue, StoreError> {
    let parse = || -> Option<KeyValue> {
        if *b.first()? != RECORD_VERSION {
            return None;
        }
        let expires_at = match *b.get(17)? {
            0 => None,
            1 => Some(UnixTime::from_millis(read_u64(b, 18)?)),
            _ => return None,
        };
        Some(KeyValue {
            key: key.to_owned(),
            value: b.get(HEADER..)?.to_vec(),
            create_revision: read_u64(b, 1)?,
            mod_revision: read_u64(b, 9)?,
            expires_at,
        })
    };
    parse().ok_or_else(|| corrupt("record"))
}

/// Encodes a logged event: kind, key length, key, record.
pub(crate) fn encode_event(ev: &WatchEvent) -> Vec<u8> {
    let key = ev.kv.key.as_bytes();
    let mut out = Vec::with_capacity(1 + 4 + key.len() + HEADER + ev.kv.value.len());
    out.push(match ev.kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    let len = u32::try_from(key.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(key);
    encode_record(&ev.kv, &mut out);
    out
}

pub(crate) fn decode_event(b: &[u8]) -> Result<WatchEvent, StoreError> {
    let parse = || -> Option<(EventKind, &str, &[u8])> {
        let kind = match *b.first()? {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            _ => return None,
        };
        let len: [u8; 4] = b.get(1..5)?.try_into().ok()?;
        let end = 5usize.checked_add(usize::try_from(u32::from_le_bytes(len)).ok()?)?;
        let key = std::str::from_utf8(b.get(5..end)?).ok()?;
        Some((kind, key, b.get(end..)?))
    };
    let (kind, key, rest) = parse().ok_or_else(|| corrupt("change-log entry"))?;
    Ok(WatchEvent {
        kind,
        kv: decode_record(key, rest)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trips() {
        let kv = KeyValue {
            key: "/a/é".into(),
            value: b"{\"x\":1}".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            expires_at: Some(UnixTime::from_millis(123_456)),
        };
        let mut buf = Vec::new();
        encode_record(&kv, &mut buf);
        assert_eq!(decode_record("/a/é", &buf).unwrap(), kv);
        let ev = WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                expires_at: None,
                value: Vec::new(),
                ..kv
            },
        };
        assert_eq!(decode_event(&encode_event(&ev)).unwrap(), ev);
        assert!(decode_event(&[7]).is_err());
        assert!(decode_record("k", &[1, 2]).is_err());
    }

    #[test]
    fn expiry_rounds_up_to_millis() {
        let now = UnixTime::from_millis(1_000).add(Duration::from_nanos(1));
        assert_eq!(expiry(now, Duration::from_secs(1)), UnixTime::from_millis(2_001));
        assert_eq!(
            expiry(UnixTime::from_millis(5), Duration::from_millis(5)),
            UnixTime::from_millis(10)
        );
    }

    #[test]
    fn start_bound_never_precedes_prefix() {
        assert_eq!(start_bound("/a/", None), Bound::Included("/a/"));
        assert_eq!(start_bound("/a/", Some("/0")), Bound::Included("/a/"));
        assert_eq!(start_bound("/a/", Some("/a/x")), Bound::Excluded("/a/x"));
    }
}
