//! A WebSocket tunnel's life after `101`: bytes copied both ways until both sides have ended,
//! until no byte has moved either way for the idle limit (`frontDoor.tunnelIdleTimeout`), or
//! until the credential that opened it no longer holds.
//!
//! Invariants: a tunnel ends at the latest one idle limit after its last byte, whatever either
//! peer does — a client gone without a word, an upstream that ignores the client's end of
//! stream — so it cannot keep its request's place under its client's caps, or its two
//! connections, for longer; a tunnel opened with a credential ends as soon as it is found no
//! longer holding ([`Credential`], asked every [`RECHECK_TICK`] beside the copy: a logout,
//! "log out everywhere", a revocation, the session's end), so a terminal opened with a stolen
//! session does not outlive it; ending it shuts both sides down (TLS `close_notify` to the
//! client), each given a moment, then drops them.
#![allow(clippy::disallowed_methods)] // IO deadlines are monotonic socket time, not logic time

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, MissedTickBehavior};

/// How long each side is given to take its shutdown when kfsec ends a tunnel.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How often a tunnel asks whether its credential still holds.
pub(crate) const RECHECK_TICK: Duration = Duration::from_secs(1);

/// The credential a tunnel was opened with, asked again while the tunnel lives.
pub(crate) trait Credential: Send {
    /// Whether it still holds; asked every [`RECHECK_TICK`] (an answer is expected to be cheap
    /// while nothing it depends on changed).
    fn holds(&mut self) -> BoxFuture<'_, bool>;
}

/// When bytes last moved through a tunnel: milliseconds since its start.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One side of a tunnel, stamping the activity on every byte read or written.
struct Watched<'a, T> {
    io: T,
    activity: &'a Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Both sides ended their streams (or one failed).
    Closed,
    /// No byte moved either way for the idle limit.
    Idle,
    /// The credential it was opened with no longer holds.
    Revoked,
}

/// Copies between `client` and `upstream` until both have ended, the tunnel has been idle for
/// `idle`, or `credential` (if any) no longer holds.
pub(crate) async fn run<C, U>(client: C, upstream: U, idle: Duration, credential: Option<Box<dyn Credential>>) -> Ended
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let mut client = Watched {
        io: client,
        activity: &activity,
    };
    let mut upstream = Watched {
        io: upstream,
        activity: &activity,
    };
    // (asked beside the copy, not instead of it: a check that waits on the store or an
    // upstream IdP holds no byte up)
    let lapsed = async {
        match credential {
            Some(c) => lapse(c).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(lapsed);
    let ended = {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        loop {
            let last = activity.last();
            // (a limit past the clock's range is no limit)
            let quiet_until = last.checked_add(idle);
            tokio::select! {
                _ = &mut copy => return Ended::Closed,
                // (quiet for the whole limit unless bytes moved meanwhile: then wait again)
                () = sleep_until_some(quiet_until) => {
                    if activity.last() == last {
                        break Ended::Idle;
                    }
                }
                () = &mut lapsed => break Ended::Revoked,
            }
        }
    };
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, client.shutdown()).await;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, upstream.shutdown()).await;
    ended
}

/// Ends once `credential` no longer holds, asked every [`RECHECK_TICK`].
async fn lapse(mut credential: Box<dyn Credential>) {
    let mut tick = tokio::time::interval_at(Instant::now() + RECHECK_TICK, RECHECK_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !credential.holds().await {
            return;
        }
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

    #[tokio::test(start_paused = true)]
    async fn bytes_either_way_keep_a_tunnel_and_its_quiet_ends_it() {
        let (client, mut client_far) = duplex(64);
        let (upstream, mut upstream_far) = duplex(64);
        let tunnel = tokio::spawn(run(client, upstream, Duration::from_secs(10), None));
        // Traffic each way, 6 s apart, for 30 s: alive.
        let mut byte = [0u8; 1];
        for i in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            if i % 2 == 0 {
                client_far.write_all(b"c").await.unwrap();
                upstream_far.read_exact(&mut byte).await.unwrap();
            } else {
                upstream_far.write_all(b"u").await.unwrap();
                client_far.read_exact(&mut byte).await.unwrap();
            }
            assert!(!tunnel.is_finished(), "ended after {i} exchanges");
        }
        // The client ends its stream; the upstream ignores it and says nothing: the tunnel ends
        // one idle limit after the last byte, and both far ends see the end of stream.
        client_far.shutdown().await.unwrap();
        assert_eq!(upstream_far.read(&mut byte).await.unwrap(), 0);
        let at = Instant::now();
        assert_eq!(tunnel.await.unwrap(), Ended::Idle);
        let waited = at.elapsed();
        assert!(
            waited > Duration::from_secs(9) && waited <= Duration::from_secs(10),
            "{waited:?}"
        );
        assert_eq!(client_far.read(&mut byte).await.unwrap(), 0);
    }

    /// Holds until a set time.
    struct Until(Instant, std::sync::Arc<AtomicU64>);

    impl Credential for Until {
        fn holds(&mut self) -> BoxFuture<'_, bool> {
            self.1.fetch_add(1, Ordering::Relaxed);
            let holds = Instant::now() < self.0;
            Box::pin(async move { holds })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_tunnel_ends_within_a_tick_of_its_credential() {
        let (client, mut client_far) = duplex(64);
        let (upstream, mut upstream_far) = duplex(64);
        let asked = std::sync::Arc::new(AtomicU64::new(0));
        let ends = Instant::now() + Duration::from_millis(5_500);
        let cred = Box::new(Until(ends, asked.clone()));
        let tunnel = tokio::spawn(run(client, upstream, Duration::from_secs(3600), Some(cred)));
        // Busy both ways (a message every 100 ms) past the credential's end.
        let mut byte = [0u8; 1];
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if client_far.write_all(b"c").await.is_err() || upstream_far.read_exact(&mut byte).await.is_err() {
                break;
            }
            if tunnel.is_finished() {
                break;
            }
            assert!(
                Instant::now() < ends + RECHECK_TICK + Duration::from_millis(200),
                "still open"
            );
        }
        assert_eq!(tunnel.await.unwrap(), Ended::Revoked);
        assert!(Instant::now() >= ends, "ended before its credential did");
        assert_eq!(asked.load(Ordering::Relaxed), 6, "asked once a tick");
        assert_eq!(
            client_far.read(&mut byte).await.unwrap(),
            0,
            "the client was told the end"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_both_sides_end_closes_at_once() {
        let (client, mut client_far) = duplex(64);
        let (upstream, mut upstream_far) = duplex(64);
        let tunnel = tokio::spawn(run(client, upstream, Duration::from_secs(3600), None));
        client_far.write_all(b"bye").await.unwrap();
        client_far.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        upstream_far.shutdown().await.unwrap();
        let at = Instant::now();
        assert_eq!(tunnel.await.unwrap(), Ended::Closed);
        assert!(at.elapsed() < Duration::from_secs(1), "{:?}", at.elapsed());
    }
}
