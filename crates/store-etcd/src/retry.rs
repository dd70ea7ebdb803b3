//! Riding out a member's death or a leader election: which etcd failures may be retried, and
//! the retry loops. Invariants: a read is retried on any transient failure until the operation
//! deadline (2 × the request timeout); a write transaction is retried blindly only when it
//! certainly never reached etcd (connection refused, no leader) — after an ambiguous failure
//! (timeout, leader changed, broken connection) the caller must look at the transaction's
//! receipt and the key before trying again (see the crate docs), so a write is never applied
//! twice and never reported lost when it was applied.

use std::future::Future;
use std::time::Duration;

use kfsec_store::StoreError;

use crate::EtcdStore;

/// What a failure says about the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The request never reached a member that could apply it: safe to send again.
    NotSent,
    /// It may or may not have been applied (timeout, leader change, broken stream).
    Unknown,
    /// Retrying cannot help (bad request, permission, compacted revision, corrupt value).
    Final,
}

// gRPC status codes (tonic::Code's discriminants).
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;
const DEADLINE_EXCEEDED: i32 = 4;
const ABORTED: i32 = 10;
const UNAVAILABLE: i32 = 14;

/// Classifies an etcd client error.
pub(crate) fn classify(e: &etcd_client::Error) -> Failure {
    let text = e.to_string();
    if text.contains("tcp connect error") || text.contains("Connection refused") || text.contains("no leader") {
        return Failure::NotSent;
    }
    match e {
        etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision has been compacted") => {
            Failure::Final
        }
        etcd_client::Error::GRpcStatus(s) => match s.code() as i32 {
            CANCELLED | UNKNOWN | DEADLINE_EXCEEDED | ABORTED | UNAVAILABLE => Failure::Unknown,
            _ => Failure::Final,
        },
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => Failure::Unknown,
        _ => Failure::Final,
    }
}

/// The outcome of one write attempt series.
pub(crate) enum Sent<T> {
    /// etcd answered.
    Done(T),
    /// It may have been applied: look before retrying.
    Unknown(StoreError),
}

impl EtcdStore {
    fn attempt_timeout(&self) -> Duration {
        self.request_timeout.saturating_add(Duration::from_secs(1))
    }

    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.request_timeout.saturating_mul(2)
    }

    /// Runs `f` until it succeeds, fails finally, or `retry_unknown` is false and the failure
    /// is ambiguous; transient failures are retried with backoff until the operation deadline.
    async fn run<T, F, Fut>(&self, retry_unknown: bool, mut f: F) -> Result<Sent<T>, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = self.deadline();
        let mut delay = Duration::from_millis(20);
        loop {
            // No attempt runs past the operation deadline.
            let budget = self
                .attempt_timeout()
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let (err, class) = match tokio::time::timeout(budget, f()).await {
                Ok(Ok(v)) => return Ok(Sent::Done(v)),
                Ok(Err(e)) => {
                    let class = classify(&e);
                    (StoreError::Backend(format!("etcd: {e}")), class)
                }
                Err(_) => (
                    StoreError::Backend(format!("etcd: no answer within {budget:?}")),
                    Failure::Unknown,
                ),
            };
            match class {
                Failure::Final => return Err(err),
                Failure::Unknown if !retry_unknown => return Ok(Sent::Unknown(err)),
                _ => {}
            }
            if tokio::time::Instant::now() + delay >= deadline {
                return Err(err);
            }
            tracing::debug!(error = %err, "etcd request failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// One attempt, bounded by the attempt timeout (for watch set-up, which has its own retry).
    pub(crate) async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.attempt_timeout(), f).await {
            Ok(r) => r.map_err(|e| StoreError::Backend(format!("etcd: {e}"))),
            Err(_) => Err(StoreError::Backend(format!(
                "etcd: no answer within {:?}",
                self.attempt_timeout()
            ))),
        }
    }

    /// A read (or another request that is harmless to repeat): retried on every transient
    /// failure until the operation deadline.
    pub(crate) async fn read_retry<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        match self.run(true, f).await? {
            Sent::Done(v) => Ok(v),
            Sent::Unknown(e) => Err(e),
        }
    }

    /// A write: retried only while it certainly was not sent.
    pub(crate) async fn write_once<T, F, Fut>(&self, f: F) -> Result<Sent<T>, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.run(false, f).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_refused_is_not_sent_and_bad_requests_are_final() {
        let e = etcd_client::Error::InvalidArgs("x".into());
        assert_eq!(classify(&e), Failure::Final);
        let e = etcd_client::Error::WatchError("tcp connect error: Connection refused".into());
        assert_eq!(classify(&e), Failure::NotSent);
        let e = etcd_client::Error::IoError(std::io::Error::other("reset"));
        assert_eq!(classify(&e), Failure::Unknown);
    }
}
