//! [`Versioned`]: a reader-writer lock that counts its writes, so a copy taken from it (a
//! per-thread front cache) can tell in one atomic load whether the original may have changed.
//!
//! Invariant: every write guard bumps the version when it is dropped — after the writer's last
//! change and before the lock is released — so a reader that loads the version before reading
//! the guarded value, and finds the same version later, knows no write completed in between.
//! There is no way to change the value without a write guard.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A lock whose every write is counted ([`Versioned::version`]).
#[derive(Debug, Default)]
pub struct Versioned<T> {
    value: RwLock<T>,
    version: AtomicU64,
}

impl<T> Versioned<T> {
    /// `value`, at version 0.
    pub fn new(value: T) -> Self {
        Self {
            value: RwLock::new(value),
            version: AtomicU64::new(0),
        }
    }

    /// Reads the value (shared).
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.value.read()
    }

    /// Writes the value (exclusive); the version moves on when the guard is dropped, even if
    /// nothing was changed.
    pub fn write(&self) -> WriteGuard<'_, T> {
        WriteGuard {
            guard: self.value.write(),
            version: &self.version,
        }
    }

    /// How many writes have completed. Load it before reading what a copy is made from: the
    /// copy is current for as long as the version stays the same.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

/// Exclusive access to a [`Versioned`] value; counts as a write when dropped.
#[derive(Debug)]
pub struct WriteGuard<'a, T> {
    guard: RwLockWriteGuard<'a, T>,
    version: &'a AtomicU64,
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        // Runs before `guard` is dropped: the lock is still held.
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::Versioned;

    #[test]
    fn every_write_moves_the_version_and_reads_do_not() {
        let v = Versioned::new(vec![1]);
        assert_eq!(v.version(), 0);
        assert_eq!(v.read().len(), 1);
        assert_eq!(v.version(), 0);
        v.write().push(2);
        assert_eq!(v.version(), 1);
        drop(v.write());
        assert_eq!(v.version(), 2, "a write guard counts even when nothing changed");
        assert_eq!(*v.read(), vec![1, 2]);
    }

    #[test]
    fn a_version_seen_by_another_thread_comes_with_the_write() {
        let v = std::sync::Arc::new(Versioned::new(0u64));
        let w = v.clone();
        let writer = std::thread::spawn(move || {
            for i in 1..=10_000 {
                *w.write() = i;
            }
        });
        // The value is never older than the version said: version n means write n is done.
        loop {
            let seen = v.version();
            let value = *v.read();
            assert!(value >= seen, "version {seen} but value {value}");
            if seen == 10_000 {
                break;
            }
        }
        writer.join().unwrap_or_else(|_| panic!("writer panicked"));
    }
}
