//! One side's wait on its peer, timed: the time between two successive operations (nginx's
//! `client_body_timeout`, `send_timeout`, `proxy_read_timeout`), never the whole transfer.
//!
//! Invariant: a wait counts from its first `Pending`; any progress ends it, and so does
//! [`StallTimer::disarm`]; a wait that lasted the limit is answered with the caller's stall
//! error, never with `Pending` again. The timer's `Sleep` is made at the first wait and reused
//! (a later deadline is an atomic update in tokio's wheel, not a new registration).
#![allow(clippy::disallowed_methods)] // IO deadlines are monotonic socket time, not logic time

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// The longest wait when the limit is longer than the clock can count (about 30 years, as
/// tokio's own far future).
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Times one side's wait on the peer: armed at the first `Pending` of a wait, disarmed by
/// progress, ready once the wait has lasted `limit`.
pub(crate) struct StallTimer {
    limit: Duration,
    /// Made at the first wait (most request bodies are empty and never wait).
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl StallTimer {
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            limit,
            sleep: None,
            armed: false,
        }
    }

    /// The longest wait.
    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// Ends the current wait: the next `Pending` starts a new one.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Starts a new wait now, `cx`'s task to be woken at its end: for a wait that begins where
    /// no `Pending` will come to arm the timer (the task may not look again until woken).
    pub(crate) fn restart(&mut self, cx: &mut Context<'_>) {
        self.armed = false;
        // (a fresh wait cannot have ended: its end is seen by the next `watch`)
        let _ = self.wait(cx);
    }

    /// `poll` under this timer: progress disarms it; a wait of `limit` becomes `stalled()`.
    pub(crate) fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<T>, stalled: impl FnOnce() -> T) -> Poll<T> {
        match poll {
            Poll::Ready(v) => {
                self.armed = false;
                Poll::Ready(v)
            }
            Poll::Pending => match self.wait(cx) {
                Poll::Ready(()) => Poll::Ready(stalled()),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    /// The running wait (one starts now if none runs), polled with `cx`: ready at its end.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = match (&mut self.sleep, self.armed) {
            (Some(sleep), true) => sleep,
            (slot, _) => {
                self.armed = true;
                // (a limit past the end of time waits as long as there is)
                let now = Instant::now();
                let deadline = now.checked_add(self.limit).unwrap_or_else(|| now + FAR);
                match slot {
                    Some(sleep) => {
                        sleep.as_mut().reset(deadline);
                        sleep
                    }
                    None => slot.insert(Box::pin(tokio::time::sleep_until(deadline))),
                }
            }
        };
        sleep.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn a_limit_past_the_end_of_time_waits_and_never_panics() {
        let mut timer = StallTimer::new(Duration::MAX);
        let waited = std::future::poll_fn(|cx| Poll::Ready(timer.watch(cx, Poll::<()>::Pending, || ())));
        assert!(waited.await.is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_limit_and_progress_or_a_disarm_starts_a_new_one() {
        let mut timer = StallTimer::new(Duration::from_secs(10));
        let wait = |timer: &mut StallTimer| {
            std::future::poll_fn(|cx| Poll::Ready(timer.watch(cx, Poll::<bool>::Pending, || true))).now_or_never()
        };
        assert_eq!(wait(&mut timer), Some(Poll::Pending));
        tokio::time::sleep(Duration::from_secs(6)).await;
        // progress: the next wait starts afresh
        let ready = std::future::poll_fn(|cx| Poll::Ready(timer.watch(cx, Poll::Ready(false), || true)));
        assert_eq!(ready.now_or_never(), Some(Poll::Ready(false)));
        assert_eq!(wait(&mut timer), Some(Poll::Pending));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(wait(&mut timer), Some(Poll::Pending));
        timer.disarm();
        assert_eq!(wait(&mut timer), Some(Poll::Pending));
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(wait(&mut timer), Some(Poll::Pending));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(wait(&mut timer), Some(Poll::Ready(true)));
    }
}
