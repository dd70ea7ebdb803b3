//! kfsec-store: the storage contract (etcd-like keys, one global revision, TTLs, watch) and its
//! backends. Invariants every backend keeps: each successful write (including each TTL-expiry
//! deletion) bumps the single global revision by exactly one and produces exactly one watch event;
//! expired records are invisible to reads before the sweeper deletes them; watchers never silently
//! skip an event (they get `Err(Compacted)` instead and the stream ends).

use std::time::Duration;

use kfsec_types::UnixTime;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod engine;
#[cfg(any(test, feature = "testing"))]
pub mod flaky;
pub mod follow;
#[cfg(any(test, feature = "testing"))]
pub mod forward;
pub mod leader;
pub mod memory;
pub mod redb_store;
pub mod sealed;

pub use follow::{Backoff, Event, Initial, Snapshot, Watcher, WatcherConfig, list_all};
pub use memory::MemoryStore;
pub use redb_store::RedbStore;

/// A global store revision; 0 means "before any write".
pub type Revision = u64;

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, e.g. `/kfsec/users/alice@example.com`.
    pub key: String,
    /// The opaque value (usually JSON).
    pub value: Vec<u8>,
    /// The revision that created this record (a create after delete/expiry starts a new record).
    pub create_revision: Revision,
    /// The revision that last wrote this record.
    pub mod_revision: Revision,
    /// When the record stops being visible, if it has a TTL (millisecond precision, rounded up).
    pub expires_at: Option<UnixTime>,
}

/// One page of a [`Store::list`].
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// Records in key order.
    pub items: Vec<KeyValue>,
    /// The store revision at read time (watch from here to follow changes after this list).
    pub revision: Revision,
    /// Pass back as `start_after` for the next page; `None` when there are no more records.
    pub continue_key: Option<String>,
}

/// What happened to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Created or replaced.
    Put,
    /// Deleted, taken or expired.
    Delete,
}

/// One change, as delivered by [`Store::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or Delete.
    pub kind: EventKind,
    /// For Put: the new record. For Delete: the last value, with `mod_revision` = the deleting
    /// revision. `kv.mod_revision` is always the revision of this event.
    pub kv: KeyValue,
}

/// Errors of every store operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `create` on a key holding a live record.
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// The key has no live record.
    #[error("key {0} not found")]
    NotFound(String),
    /// The record's `mod_revision` is not the expected one.
    #[error("revision conflict on {key}: expected {expected}, found {found}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: Revision,
        /// The record's actual `mod_revision`.
        found: Revision,
    },
    /// The events the caller asked for are no longer available (watch from a revision older than
    /// the retained change log, or a watcher that fell behind). `requested` is the `after` the
    /// caller asked for (or the last revision a lagging watcher delivered); `oldest` is the
    /// smallest `after` the store could still serve. Re-list, then watch from the list revision.
    #[error("revision {requested} has been compacted; oldest available is {oldest}")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision still available.
        oldest: Revision,
    },
    /// A whole-prefix read ([`list_all`]) found more records than it may return.
    #[error("more than {max} records under {prefix}")]
    TooLarge {
        /// The prefix read.
        prefix: String,
        /// The bound.
        max: usize,
    },
    /// The database file is held by another process.
    #[error("the store is open in another process")]
    Locked,
    /// A sealed value that cannot be opened, or a store sealed with a key this process does not
    /// hold (`secretsEncryption`, [`sealed`]).
    #[error(transparent)]
    Sealed(#[from] sealed::SealError),
    /// Any other storage failure.
    #[error("storage backend: {0}")]
    Backend(String),
    /// The store cannot be reached now (a shared store's cluster is down or has no quorum, or
    /// nothing has been heard from it for longer than allowed): retry later (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether this is [`StoreError::Unavailable`]: the renderers answer 503 for it, 500 for
    /// other failures.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Whether `cause` (an error's text, where the error was turned into text on the way up)
    /// carries a [`StoreError::Unavailable`].
    pub fn text_is_unavailable(cause: &str) -> bool {
        cause.contains("store unavailable: ")
    }
}

/// A watch: `Ok` events in revision order; an `Err` is always the last item.
pub type WatchStream = tokio::sync::mpsc::Receiver<Result<WatchEvent, StoreError>>;

/// The storage contract (modelled on etcd). See the crate docs for the invariants.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The live record at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Keys with `prefix`, in key order, strictly after `start_after` if given, at most `limit`
    /// (0 = no limit).
    async fn list(&self, prefix: &str, limit: usize, start_after: Option<&str>) -> Result<ListPage, StoreError>;
    /// Fails with AlreadyExists if a live (unexpired) record is present. Returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError>;
    /// `expected`: Some(rev) → Conflict unless the record's mod_revision == rev; None →
    /// unconditional. NotFound if absent. `ttl` replaces the expiry (None = no expiry).
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> Result<Revision, StoreError>;
    /// Create-or-replace, unconditional. Returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError>;
    /// NotFound if absent; Conflict if `expected` given and differs. Returns the deleted record
    /// (its last value, with `mod_revision` = the deleting revision, as in the Delete event).
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError>;
    /// Atomically delete and return a record (single-use codes): Ok(None) if absent or expired.
    /// The returned record is shaped like [`Store::delete`]'s.
    async fn take(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Current global revision.
    async fn revision(&self) -> Result<Revision, StoreError>;
    /// Events for keys under `prefix` with revision > `after` (replayed from the change log,
    /// then live). `after` older than the retained log → Err(Compacted) immediately.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;
    /// The upkeep of a store other processes share (etcd): its expired records and its history
    /// need one process at a time — the elected leader ([`leader`]) — to tend them. `None`
    /// (the default) for a store this process owns alone (redb's file lock, memory), which
    /// tends itself. A wrapper store forwards its inner store's.
    fn upkeep(&self) -> Option<&dyn Upkeep> {
        None
    }
    /// `Err(Unavailable)` when what this process caches from the store may no longer be
    /// trusted: a shared store not heard from for longer than its stale limit. Caches of
    /// sessions and authorization call it before serving a cached answer (one atomic load);
    /// a local store (the default) is always current. A wrapper store forwards its inner
    /// store's.
    fn check_current(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Housekeeping of a shared store, run by the leader only (see [`Store::upkeep`]).
#[async_trait::async_trait]
pub trait Upkeep: Send + Sync {
    /// Deletes the records whose expiry has passed (one revision and one Delete event each);
    /// returns how many. Safe to run twice at once (each delete is a compare-and-swap).
    async fn sweep(&self) -> Result<usize, StoreError>;
    /// Discards the change history before `revision` (watches from older revisions get
    /// [`StoreError::Compacted`]); compacting at an already compacted revision is no error.
    async fn compact_before(&self, revision: Revision) -> Result<(), StoreError>;
}

/// Tuning shared by the backends.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How often the background sweeper deletes expired records; `None` (or zero) = no
    /// background sweeper (call `sweep_expired` yourself). Default 1 s.
    pub sweep_interval: Option<Duration>,
    /// How many of the latest events the change log keeps for watch replay. Default 10,000.
    pub log_retention: usize,
    /// Capacity of the live-event broadcast channel; a watcher further behind than this loses
    /// events and gets `Err(Compacted)`. Default 4,096.
    pub watch_channel_capacity: usize,
    /// Capacity of each watcher's own stream. Default 256.
    pub watch_buffer: usize,
    /// Key prefixes of disposable records (authorization requests, codes): writes to them are
    /// committed without an fsync of their own and become durable with the next durable commit.
    /// A crash may lose the latest of them, never a record outside these prefixes. Default none.
    pub volatile_prefixes: Vec<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            sweep_interval: Some(Duration::from_secs(1)),
            log_retention: 10_000,
            watch_channel_capacity: 4_096,
            watch_buffer: 256,
            volatile_prefixes: Vec::new(),
        }
    }
}
