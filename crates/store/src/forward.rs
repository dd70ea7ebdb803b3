//! Test support: [`Forward`], a store that hands every call to an inner store except the few a
//! test overrides (a store that hangs, fails, races, yields or records), so such a test states
//! only what differs from the store it wraps: a [`Forward::before`] hook run ahead of every call,
//! and any method replaced whole.
//!
//! Invariants: a method not overridden is the inner store's, answer for answer — including
//! [`Store::upkeep`] and [`Store::check_current`], which a wrapper must never silently drop (a
//! wrapped shared store stays shared).
//!
//! Use: `impl kfsec_store::forward::Forward for MyWrapper { fn inner(&self) -> &dyn Store { … } }`
//! plus the overrides; every `Forward` is a [`Store`]. Name the trait by its path rather than
//! importing it next to [`Store`], so calls on the wrapper are not ambiguous between the two.

use std::time::Duration;

use crate::{KeyValue, ListPage, Revision, Store, StoreError, Upkeep, WatchStream};

/// Which [`Store`] call [`Forward::before`] runs ahead of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// [`Store::get`].
    Get,
    /// [`Store::list`].
    List,
    /// [`Store::create`].
    Create,
    /// [`Store::update`].
    Update,
    /// [`Store::put`].
    Put,
    /// [`Store::delete`].
    Delete,
    /// [`Store::take`].
    Take,
    /// [`Store::revision`].
    Revision,
    /// [`Store::watch`].
    Watch,
}

/// A [`Store`] that forwards to [`Forward::inner`] whatever it does not override, each call after
/// [`Forward::before`].
#[async_trait::async_trait]
pub trait Forward: Send + Sync + 'static {
    /// The store every call not overridden goes to.
    fn inner(&self) -> &dyn Store;

    /// Runs ahead of every call the default methods forward (an error is the call's answer).
    async fn before(&self, _call: Call) -> Result<(), StoreError> {
        Ok(())
    }

    /// [`Store::get`].
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.before(Call::Get).await?;
        self.inner().get(key).await
    }
    /// [`Store::list`].
    async fn list(&self, prefix: &str, limit: usize, start_after: Option<&str>) -> Result<ListPage, StoreError> {
        self.before(Call::List).await?;
        self.inner().list(prefix, limit, start_after).await
    }
    /// [`Store::create`].
    async fn create(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.before(Call::Create).await?;
        self.inner().create(key, value, ttl).await
    }
    /// [`Store::update`].
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> Result<Revision, StoreError> {
        self.before(Call::Update).await?;
        self.inner().update(key, value, expected, ttl).await
    }
    /// [`Store::put`].
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        self.before(Call::Put).await?;
        self.inner().put(key, value, ttl).await
    }
    /// [`Store::delete`].
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        self.before(Call::Delete).await?;
        self.inner().delete(key, expected).await
    }
    /// [`Store::take`].
    async fn take(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.before(Call::Take).await?;
        self.inner().take(key).await
    }
    /// [`Store::revision`].
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.before(Call::Revision).await?;
        self.inner().revision().await
    }
    /// [`Store::watch`].
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.before(Call::Watch).await?;
        self.inner().watch(prefix, after).await
    }
    /// [`Store::upkeep`].
    fn upkeep(&self) -> Option<&dyn Upkeep> {
        self.inner().upkeep()
    }
    /// [`Store::check_current`].
    fn check_current(&self) -> Result<(), StoreError> {
        self.inner().check_current()
    }
}

#[async_trait::async_trait]
impl<T: Forward> Store for T {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Forward::get(self, key).await
    }
    async fn list(&self, prefix: &str, limit: usize, start_after: Option<&str>) -> Result<ListPage, StoreError> {
        Forward::list(self, prefix, limit, start_after).await
    }
    async fn create(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        Forward::create(self, key, value, ttl).await
    }
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
        ttl: Option<Duration>,
    ) -> Result<Revision, StoreError> {
        Forward::update(self, key, value, expected, ttl).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<Revision, StoreError> {
        Forward::put(self, key, value, ttl).await
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        Forward::delete(self, key, expected).await
    }
    async fn take(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Forward::take(self, key).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        Forward::revision(self).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        Forward::watch(self, prefix, after).await
    }
    fn upkeep(&self) -> Option<&dyn Upkeep> {
        Forward::upkeep(self)
    }
    fn check_current(&self) -> Result<(), StoreError> {
        Forward::check_current(self)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use kfsec_types::{ManualClock, UnixTime};

    use crate::{MemoryStore, Store};

    /// Counts creates; everything else is the memory store's.
    struct Counting(Arc<MemoryStore>, AtomicUsize);

    #[async_trait::async_trait]
    impl super::Forward for Counting {
        fn inner(&self) -> &dyn Store {
            self.0.as_ref()
        }
        async fn create(
            &self,
            key: &str,
            value: Vec<u8>,
            ttl: Option<std::time::Duration>,
        ) -> Result<crate::Revision, crate::StoreError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.create(key, value, ttl).await
        }
    }

    #[tokio::test]
    async fn calls_not_overridden_reach_the_inner_store_and_overrides_run() {
        let inner = MemoryStore::new(ManualClock::new(UnixTime::from_secs(1_700_000_000)));
        let counting = Arc::new(Counting(inner.clone(), AtomicUsize::new(0)));
        let s: Arc<dyn Store> = counting.clone();
        let rev = s.create("/a", b"1".to_vec(), None).await.unwrap();
        s.put("/b", b"2".to_vec(), None).await.unwrap();
        assert_eq!(inner.get("/a").await.unwrap().unwrap().mod_revision, rev);
        assert_eq!(s.get("/b").await.unwrap().unwrap().value, b"2");
        assert_eq!(s.list("/", 0, None).await.unwrap().items.len(), 2);
        assert_eq!(s.revision().await.unwrap(), inner.revision().await.unwrap());
        assert!(s.take("/b").await.unwrap().is_some());
        assert!(s.upkeep().is_none(), "the memory store's (none)");
        assert!(s.check_current().is_ok());
        assert_eq!(counting.1.load(Ordering::SeqCst), 1, "the override ran once");
    }
}
