//! Watches on etcd: one etcd watch (with previous values) per store watch, forwarded by a task.
//! Invariants: events reach the caller in revision order with none skipped — a compacted start
//! or a watch etcd cancels for compaction yields `Err(Compacted)` and ends the stream; a broken
//! stream (a member died, lost its leader) is re-opened from the last delivered revision + 1
//! through any other member, with backoff, for up to [`RESUME_FOR`], and events already
//! delivered are not repeated; only then does the stream end with `Err(Backend)`.

use std::time::Duration;

use etcd_client::WatchOptions;
use kfsec_store::{Revision, StoreError, WatchStream};
use tokio::sync::mpsc;

use crate::{EtcdStore, map_event, to_i64};

/// How long a broken watch is retried before the stream ends with an error.
pub const RESUME_FOR: Duration = Duration::from_secs(30);

pub(crate) async fn start(store: &EtcdStore, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
    let (tx, rx) = mpsc::channel(store.watch_buffer);
    let Some((lo, hi)) = store.erange(prefix) else {
        // No store key can match this prefix: a stream that stays open and quiet.
        tokio::spawn(async move { tx.closed().await });
        return Ok(rx);
    };
    // The contract reports a compacted start from `watch` itself, so look before watching.
    let current = kfsec_store::Store::revision(store).await?;
    if after < current {
        let start = after + 1;
        if !store.readable_at(start).await? {
            let first = store.oldest_readable(start, current).await?;
            return Err(StoreError::Compacted {
                requested: after,
                oldest: first.saturating_sub(1),
            });
        }
    }
    let stream = open_retrying(store, &lo, &hi, after).await?;
    let store = store.clone();
    tokio::spawn(forward(store, lo, hi, after, stream, tx));
    Ok(rx)
}

/// [`open`], retried through transient failures until the operation deadline.
async fn open_retrying(
    store: &EtcdStore,
    lo: &[u8],
    hi: &[u8],
    after: Revision,
) -> Result<etcd_client::WatchStream, StoreError> {
    let mut delay = Duration::from_millis(20);
    let deadline = tokio::time::Instant::now() + store.request_timeout.saturating_mul(2);
    loop {
        match open(store, lo, hi, after).await {
            Err(e @ StoreError::Backend(_)) if tokio::time::Instant::now() + delay < deadline => {
                tracing::debug!(error = %e, "etcd watch set-up failed; retrying");
            }
            other => return other,
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// Opens an etcd watch for events after `after` and waits for etcd to confirm it.
async fn open(
    store: &EtcdStore,
    lo: &[u8],
    hi: &[u8],
    after: Revision,
) -> Result<etcd_client::WatchStream, StoreError> {
    let opts = WatchOptions::new()
        .with_range(hi.to_vec())
        .with_start_revision(to_i64(after.saturating_add(1))?)
        .with_prev_key();
    let mut client = store.client.watch_client();
    let mut stream = store.timed(client.watch(lo.to_vec(), Some(opts))).await?;
    loop {
        let resp = store
            .timed(stream.message())
            .await?
            .ok_or_else(|| StoreError::Backend("etcd: watch stream closed at once".into()))?;
        if resp.canceled() {
            return Err(cancelled(after, &resp));
        }
        if resp.created() {
            return Ok(stream);
        }
    }
}

fn cancelled(last: Revision, resp: &etcd_client::WatchResponse) -> StoreError {
    match Revision::try_from(resp.compact_revision()) {
        Ok(c) if c > 0 => StoreError::Compacted {
            requested: last,
            oldest: c.saturating_sub(1),
        },
        _ => StoreError::Backend(format!("etcd: watch cancelled: {}", resp.cancel_reason())),
    }
}

async fn forward(
    store: EtcdStore,
    lo: Vec<u8>,
    hi: Vec<u8>,
    after: Revision,
    mut stream: etcd_client::WatchStream,
    tx: mpsc::Sender<Result<kfsec_store::WatchEvent, StoreError>>,
) {
    let mut last = after;
    // Events at or below this were delivered before the watch was re-opened.
    let mut floor = after;
    loop {
        let msg = tokio::select! {
            _ = tx.closed() => return,
            m = stream.message() => m,
        };
        let broken = match msg {
            Ok(Some(resp)) if resp.canceled() => match cancelled(last, &resp) {
                e @ StoreError::Compacted { .. } => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                other => other.to_string(),
            },
            Ok(Some(resp)) => {
                for ev in resp.events() {
                    let item = map_event(&store, ev);
                    let rev = item.as_ref().map(|e| e.kv.mod_revision).unwrap_or(Revision::MAX);
                    if rev <= floor {
                        continue;
                    }
                    let end = item.is_err();
                    if let Ok(e) = &item {
                        last = e.kv.mod_revision;
                    }
                    if tx.send(item).await.is_err() || end {
                        return;
                    }
                }
                continue;
            }
            Ok(None) => "stream ended".to_owned(),
            Err(e) => e.to_string(),
        };
        tracing::info!(cause = %broken, after = last, "etcd watch broken; re-opening");
        match resume(&store, &lo, &hi, last, &tx).await {
            Some(s) => {
                stream = s;
                floor = last;
            }
            None => return,
        }
    }
}

/// Re-opens a broken watch after `last`; `None` once the caller is gone or the watch cannot be
/// re-opened (the error has then been sent).
async fn resume(
    store: &EtcdStore,
    lo: &[u8],
    hi: &[u8],
    last: Revision,
    tx: &mpsc::Sender<Result<kfsec_store::WatchEvent, StoreError>>,
) -> Option<etcd_client::WatchStream> {
    let deadline = tokio::time::Instant::now() + RESUME_FOR;
    let mut delay = Duration::from_millis(50);
    loop {
        match open(store, lo, hi, last).await {
            Ok(s) => return Some(s),
            Err(e @ StoreError::Compacted { .. }) => {
                let _ = tx.send(Err(e)).await;
                return None;
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                tracing::warn!(error = %e, "etcd watch could not be re-opened");
                let _ = tx.send(Err(e)).await;
                return None;
            }
            Err(e) => tracing::debug!(error = %e, "etcd watch re-open failed; retrying"),
        }
        tokio::select! {
            _ = tx.closed() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
