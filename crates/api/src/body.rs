//! Request bodies read with a size limit, for the Kubernetes-style API and the Pipelines API.
//!
//! Invariant: at most `limit` bytes are buffered. An oversized body is still read to its end and
//! discarded (up to 4× the limit, for at most 30 s) so that a client that is still sending
//! receives the 413 instead of a connection reset mid-upload.

use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;

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
