//! Test support: a store that fails on demand, for the tests that prove a surface answers a
//! storage failure with a generic message and an incident id (never the store's text).
//!
//! Invariants: while failing (or for the next N reads), an operation returns
//! [`StoreError::Backend`] carrying [`Flaky::CAUSE`], text that must never reach a client;
//! otherwise it is the inner store, with the hooks a test set (a write after a read, a watch
//! that ends at once) run exactly as documented.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::forward::Call;
use crate::{ListPage, MemoryStore, Revision, Store, StoreError, WatchStream};

/// A [`MemoryStore`] whose operations fail while [`Flaky::fail`] is on.
pub struct Flaky {
    inner: Arc<MemoryStore>,
    failing: AtomicBool,
    /// Run once, right after the next `list` read.
    after_list: Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>,
    /// How many of the next reads (`list`, `revision`, `watch`) fail.
    fail_reads: AtomicUsize,
    /// How many of the next watches end at once.
    close_watches: AtomicUsize,
    /// Run once, when the next `watch` is asked for (before it starts).
    before_watch: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Written after every `list` page while set (so pages are not one snapshot).
    write_after_pages: Mutex<Option<String>>,
}

impl Flaky {
    /// The failure's text: only the store (and the log) may know it.
    pub const CAUSE: &'static str = "redb: I/O error reading /var/lib/kfsec/kfsec.redb page 7";

    /// A working store over `inner`.
    pub fn new(inner: Arc<MemoryStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            failing: AtomicBool::new(false),
            after_list: Mutex::new(None),
            fail_reads: AtomicUsize::new(0),
            close_watches: AtomicUsize::new(0),
            before_watch: Mutex::new(None),
            write_after_pages: Mutex::new(None),
        })
    }

    /// Turns failing on or off.
    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// Runs `f` right after the next `list` has read its page (a write there lands between that
    /// read and whatever the reader does next).
    pub fn after_next_list(&self, f: impl Future<Output = ()> + Send + 'static) {
        *self.after_list.lock() = Some(Box::pin(f));
    }

    /// Makes the next `n` reads (`list`, `revision`, `watch`) fail, one each.
    pub fn fail_next_reads(&self, n: usize) {
        self.fail_reads.store(n, Ordering::SeqCst);
    }

    /// Makes the next `n` watches return a stream that has already ended.
    pub fn close_next_watches(&self, n: usize) {
        self.close_watches.store(n, Ordering::SeqCst);
    }

    /// Runs `f` when the next `watch` is asked for, before it starts (a write there lands
    /// between the reader's list and its watch).
    pub fn before_next_watch(&self, f: impl FnOnce() + Send + 'static) {
        *self.before_watch.lock() = Some(Box::new(f));
    }

    /// While `key` is set, writes it after every `list` page that reads something.
    pub fn write_after_every_page(&self, key: Option<&str>) {
        *self.write_after_pages.lock() = key.map(str::to_owned);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::Backend(Self::CAUSE.into()))
        } else {
            Ok(())
        }
    }

    /// [`Self::check`], and one of the failures [`Self::fail_next_reads`] asked for.
    fn check_read(&self) -> Result<(), StoreError> {
        self.check()?;
        let counted_down = self
            .fail_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match counted_down {
            Ok(_) => Err(StoreError::Backend(Self::CAUSE.into())),
            Err(_) => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl crate::forward::Forward for Flaky {
    fn inner(&self) -> &dyn Store {
        self.inner.as_ref()
    }
    async fn before(&self, call: Call) -> Result<(), StoreError> {
        match call {
            Call::List | Call::Revision | Call::Watch => self.check_read(),
            _ => self.check(),
        }
    }
    async fn list(&self, prefix: &str, limit: usize, start_after: Option<&str>) -> Result<ListPage, StoreError> {
        self.check_read()?;
        let page = self.inner.list(prefix, limit, start_after).await;
        let write = self.write_after_pages.lock().clone();
        if let Some(key) = write.filter(|_| limit > 0) {
            self.inner.put(&key, b"new".to_vec(), None).await?;
        }
        let after = self.after_list.lock().take();
        if let Some(after) = after {
            after.await;
        }
        page
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.check_read()?;
        let hook = self.before_watch.lock().take();
        if let Some(hook) = hook {
            hook();
        }
        let closing = self
            .close_watches
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if closing.is_ok() {
            return Ok(tokio::sync::mpsc::channel(1).1);
        }
        self.inner.watch(prefix, after).await
    }
}
