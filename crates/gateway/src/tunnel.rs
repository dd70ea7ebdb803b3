//! A WebSocket tunnel's life after `101`: bytes copied both ways until both sides have ended,
//! or until no byte has moved either way for the idle limit (`frontDoor.tunnelIdleTimeout`).
//!
//! Invariant: a tunnel ends at the latest one idle limit after its last byte, whatever either
//! peer does — a client gone without a word, an upstream that ignores the client's end of
//! stream — so it cannot keep its request's place under its client's caps, or its two
//! connections, for longer; ending it shuts both sides down (TLS `close_notify` to the client),
//! each given a moment, then drops them.
#![allow(clippy::disallowed_methods)] // IO deadlines are monotonic socket time, not logic time

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// How long each side is given to take its shutdown when a tunnel ends idle.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

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
}

/// Copies between `client` and `upstream` until both have ended or the tunnel has been idle for
/// `idle`.
pub(crate) async fn run<C, U>(client: C, upstream: U, idle: Duration) -> Ended
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
    {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        loop {
            let last = activity.last();
            // (a limit past the clock's range is no limit)
            let Some(quiet_until) = last.checked_add(idle) else {
                let _ = copy.await;
                return Ended::Closed;
            };
            tokio::select! {
                _ = &mut copy => return Ended::Closed,
                // (quiet for the whole limit unless bytes moved meanwhile: then wait again)
                () = tokio::time::sleep_until(quiet_until) => {
                    if activity.last() == last {
                        break;
                    }
                }
            }
        }
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, client.shutdown()).await;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, upstream.shutdown()).await;
    Ended::Idle
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

    #[tokio::test(start_paused = true)]
    async fn bytes_either_way_keep_a_tunnel_and_its_quiet_ends_it() {
        let (client, mut client_far) = duplex(64);
        let (upstream, mut upstream_far) = duplex(64);
        let tunnel = tokio::spawn(run(client, upstream, Duration::from_secs(10)));
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

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_both_sides_end_closes_at_once() {
        let (client, mut client_far) = duplex(64);
        let (upstream, mut upstream_far) = duplex(64);
        let tunnel = tokio::spawn(run(client, upstream, Duration::from_secs(3600)));
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
