//! Request bodies read with a size limit, for the Kubernetes-style API and the Pipelines API, and
//! the one process-wide pool their CPU-heavy parsing runs on.
//!
//! Invariants: at most `limit` bytes are buffered. An oversized body is still read to its end and
//! discarded (up to 4× the limit, for at most 30 s) so that a client that is still sending
//! receives the 413 instead of a connection reset mid-upload; a YAML body decodes under
//! [`yaml_options`], so aliases cannot expand it beyond the limit. CPU-heavy parsing never runs on an
//! async worker: [`run_blocking`] runs it on tokio's blocking threads, at most half the cores'
//! worth at once (at least one) across the whole process, so the async workers — and with them
//! every listener, the admin `/healthz` included — always keep CPU.

use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;

/// The CPU-heavy jobs running at once, process-wide: half the cores, at least one.
fn pool() -> &'static std::sync::Arc<tokio::sync::Semaphore> {
    static POOL: std::sync::OnceLock<std::sync::Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        std::sync::Arc::new(tokio::sync::Semaphore::new((cores / 2).max(1)))
    })
}

/// Why [`run_blocking`] could not run a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// No turn within the wait budget (the pool is saturated).
    #[error("the server is busy parsing other requests")]
    Busy,
    /// The job panicked or the runtime is shutting down.
    #[error("a parse job failed")]
    Failed,
}

/// Runs CPU-heavy `work` on the blocking pool once a turn is free (waiting at most `wait`).
pub async fn run_blocking<T: Send + 'static>(
    wait: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PoolError> {
    let permit = tokio::time::timeout(wait, pool().clone().acquire_owned())
        .await
        .map_err(|_| PoolError::Busy)?
        .map_err(|_| PoolError::Failed)?;
    tokio::task::spawn_blocking(move || {
        let out = work();
        drop(permit);
        out
    })
    .await
    .map_err(|_| PoolError::Failed)
}

/// The most events YAML aliases may replay while one body decodes ("billion laughs" stay small).
pub const MAX_YAML_ALIAS_EVENTS: usize = 100_000;

/// The decoding options of a YAML request body of `len` bytes under the body limit `max`:
/// aliases replay at most [`MAX_YAML_ALIAS_EVENTS`] events, and the decoded scalars total at
/// most what one body may carry (at least twice the body's own length: an escape such as `\L`
/// decodes longer than it is written) — so a small body cannot decode to a huge object.
pub fn yaml_options(len: usize, max: usize) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_total_scalar_bytes = max.max(len.saturating_mul(2));
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = MAX_YAML_ALIAS_EVENTS;
    options
}

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Larger than the limit.
    TooLarge,
    /// The client broke off, or was too slow.
    Read,
}

const DRAIN_FACTOR: usize = 4;
const DRAIN_TIME: Duration = Duration::from_secs(30);

/// Reads `body` if it holds at most `limit` bytes.
pub async fn read_bounded(mut body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut buf = Vec::new();
    let mut seen = 0usize;
    let drain_until = limit.saturating_mul(DRAIN_FACTOR);
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => f,
            Ok(None) => break,
            Ok(Some(Err(_))) | Err(_) if seen > limit => return Err(BodyError::TooLarge),
            Ok(Some(Err(_))) | Err(_) => return Err(BodyError::Read),
        };
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            buf.extend_from_slice(&data);
        } else if seen > drain_until {
            return Err(BodyError::TooLarge);
        }
    }
    if seen > limit {
        return Err(BodyError::TooLarge);
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_and_drains() {
        assert_eq!(read_bounded(Body::from("abc"), 3).await.as_deref(), Ok(&b"abc"[..]));
        assert_eq!(read_bounded(Body::from("abcd"), 3).await, Err(BodyError::TooLarge));
        // A streamed oversized body is consumed to its end before the answer.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let body = Body::from_stream(tokio_stream_from(rx));
        let sender = tokio::spawn(async move {
            for _ in 0..8 {
                if tx.send(Ok(Bytes::from_static(b"xxxx"))).await.is_err() {
                    return false;
                }
            }
            true
        });
        assert_eq!(read_bounded(body, 10).await, Err(BodyError::TooLarge));
        assert!(sender.await.unwrap_or(false), "every chunk was accepted");
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
