//! Time and randomness as parameters: production code asks a [`Clock`] for the time and an
//! [`Rng`] for secure random bytes, so expiry, rotation and lockout are testable deterministically.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(Duration);

impl UnixTime {
    /// A time `secs` seconds after the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
    /// A time `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }
    /// Whole seconds since the epoch.
    pub const fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
    /// Milliseconds since the epoch (saturating).
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
    /// Duration since the epoch.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }
    /// This time plus `d` (saturating).
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d))
    }
    /// This time minus `d` (saturating at the epoch).
    #[allow(clippy::should_implement_trait)]
    pub fn sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(d))
    }
    /// RFC 3339 in UTC with second precision, e.g. `2026-11-22T06:30:00Z`.
    pub fn to_rfc3339(self) -> String {
        crate::time::format_rfc3339(i64::try_from(self.as_secs()).unwrap_or(i64::MAX))
    }
    /// RFC 3339 in UTC with microseconds, e.g. `2026-11-22T06:30:00.123456Z` (Kubernetes'
    /// MicroTime).
    pub fn to_rfc3339_micros(self) -> String {
        self.rfc3339_micros().as_str().to_owned()
    }

    /// [`UnixTime::to_rfc3339_micros`] on the stack.
    pub fn rfc3339_micros(self) -> crate::time::MicroTime {
        crate::time::MicroTime::new(
            i64::try_from(self.as_secs()).unwrap_or(i64::MAX),
            self.0.subsec_micros(),
        )
    }
    /// How long from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: UnixTime) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

#[cfg(test)]
mod tests {
    use super::UnixTime;

    #[test]
    fn rfc3339() {
        assert_eq!(UnixTime::from_secs(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(UnixTime::from_secs(951_782_400).to_rfc3339(), "2000-02-29T00:00:00Z");
        assert_eq!(UnixTime::from_secs(1_795_321_800).to_rfc3339(), "2026-11-22T04:30:00Z");
    }
}

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> UnixTime;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        #[allow(clippy::disallowed_methods)]
        let now = SystemTime::now();
        UnixTime(now.duration_since(UNIX_EPOCH).unwrap_or_default())
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock standing at `t`.
    pub fn new(t: UnixTime) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(t.as_millis())))
    }
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    /// Sets the clock to `t`.
    pub fn set(&self, t: UnixTime) {
        self.0.store(t.as_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        UnixTime::from_millis(self.0.load(Ordering::SeqCst))
    }
}

/// A cryptographically secure random source.
pub trait Rng: Send + Sync + 'static {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);
}

/// Deterministic, distinct bytes (not random at all); for tests, like [`ManualClock`].
#[derive(Debug, Default)]
pub struct SequenceRng(AtomicU64);

impl Rng for SequenceRng {
    fn fill(&self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let n = self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
            let bytes = n.wrapping_mul(0xBF58_476D_1CE4_E5B9).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Random bytes as a fixed-size array.
pub fn random_array<const N: usize>(rng: &dyn Rng) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill(&mut out);
    out
}
