//! Test support: a store that fails on demand, for the tests that prove a surface answers a
//! storage failure with a generic message and an incident id (never the store's text).
//!
//! Invariants: while failing, every operation returns [`StoreError::Backend`] carrying
//! [`Flaky::CAUSE`], text that must never reach a client; otherwise it is the inner store.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::{KeyValue, ListPage, MemoryStore, Revision, Store, StoreError, WatchStream};

/// A [`MemoryStore`] whose operations fail while [`Flaky::fail`] is on.
pub struct Flaky {
    inner: Arc<MemoryStore>,
    failing: AtomicBool,
    /// Run once, right after the next `list` read.
    after_list: Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>,
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

    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::Backend(Self::CAUSE.into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl Store for Flaky {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.check()?;
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str, limit: usize, start_after: Option<&str>) -> Result<ListPage, StoreError> {
        self.check()?;
        let page = self.inner.list(prefix, limit, start_after).await;
        let after = self.after_list.lock().take();
        if let Some(after) = after {
            after.await;
        }
        page
    }
    async fn create(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.check()?;
        self.inner.create(key, value, ttl).await
    }
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> Result<Revision, StoreError> {
        self.check()?;
        self.inner.update(key, value, expected, ttl).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.check()?;
        self.inner.put(key, value, ttl).await
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        self.check()?;
        self.inner.delete(key, expected).await
    }
    async fn take(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.check()?;
        self.inner.take(key).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.check()?;
        self.inner.revision().await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.check()?;
        self.inner.watch(prefix, after).await
    }
}
