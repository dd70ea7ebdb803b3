//! The webhook backend: posts `audit.k8s.io/v1` `EventList` batches to `audit.webhook.url` —
//! a batch when 400 events are waiting or 1 s after its first event, whichever is first — with
//! a bounded retry (3 attempts, 0.25 s / 0.5 s backoff, 5 s per attempt), over HTTPS with the
//! system roots plus `caFile`.
//!
//! Security invariants: the queue is bounded ([`crate::pipeline::QUEUE_CAPACITY`]); `push`
//! never waits (full → dropped and counted); a batch that fails every attempt is dropped and
//! counted, so a dead webhook costs memory bounded by the queue and never slows requests; the
//! URL's user information (a password) is never logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use crate::event::{Event, EventList};
use crate::pipeline::{AuditMetrics, QUEUE_CAPACITY};

/// Events in one batch at most.
pub const MAX_BATCH: usize = 400;
/// Longest time an event waits for its batch.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
const ATTEMPTS: u32 = 3;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// `audit.webhook`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Where batches are posted (`https://…`, or `http://` for a local collector).
    pub url: http::Uri,
    /// A PEM CA bundle trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
}

/// The webhook backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// `caFile`.
    #[error("audit.webhook.caFile {path}: {message}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// TLS setup.
    #[error("audit.webhook: TLS: {0}")]
    Tls(String),
    /// No Tokio runtime.
    #[error("audit.webhook needs a Tokio runtime")]
    NoRuntime,
}

pub(crate) type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The running backend.
pub struct WebhookBackend {
    tx: mpsc::Sender<Event>,
    closing: Arc<Notify>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

pub(crate) fn client(ca_file: Option<&PathBuf>) -> Result<HttpsClient, WebhookError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        use rustls_pki_types::pem::PemObject as _;
        let ca = |message: String| WebhookError::Ca {
            path: path.clone(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
        let mut n = 0;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ca(format!("not PEM certificates ({e})")))?;
            roots.add(cert).map_err(|e| ca(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(ca("no certificate in the file".into()));
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The URL as logs show it: no user information.
pub(crate) fn shown(uri: &http::Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("https"),
        uri.host().unwrap_or_default(),
        uri.path()
    )
}

pub(crate) async fn post(client: &HttpsClient, url: &http::Uri, body: &Bytes) -> Result<(), String> {
    let req = http::Request::post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(ATTEMPT_TIMEOUT, client.request(req)).await {
        Err(_) => Err("no answer within 5s".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(format!("answered {}", resp.status())),
    }
}

async fn deliver(client: &HttpsClient, url: &http::Uri, batch: Vec<Event>, metrics: &AuditMetrics, retry: bool) {
    let n = batch.len() as u64;
    let list = EventList {
        kind: "EventList".into(),
        api_version: "audit.k8s.io/v1".into(),
        metadata: serde_json::Map::new(),
        items: batch,
    };
    let body = match serde_json::to_vec(&list) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            tracing::warn!(error = %e, "serializing an audit batch failed");
            metrics.dropped("webhook", n, "serialization failed");
            return;
        }
    };
    let attempts = if retry { ATTEMPTS } else { 1 };
    let mut backoff = Duration::from_millis(250);
    for attempt in 1..=attempts {
        match post(client, url, &body).await {
            Ok(()) => {
                metrics.written("webhook", n);
                return;
            }
            Err(e) => {
                tracing::debug!(url = %shown(url), attempt, error = %e, "audit webhook delivery failed");
                if attempt < attempts {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }
    metrics.dropped("webhook", n, "delivery failed after retries");
}

impl WebhookBackend {
    /// Starts the sender task.
    pub fn start(settings: WebhookSettings, metrics: AuditMetrics) -> Result<Self, WebhookError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
        let client = client(settings.ca_file.as_ref())?;
        let (tx, mut rx) = mpsc::channel::<Event>(QUEUE_CAPACITY);
        let closing = Arc::new(Notify::new());
        let stop = closing.clone();
        let url = settings.url;
        let task = handle.spawn(async move {
            loop {
                let first = tokio::select! {
                    ev = rx.recv() => ev,
                    () = stop.notified() => None,
                };
                let Some(first) = first else { break };
                let mut batch = vec![first];
                let deadline = tokio::time::Instant::now() + MAX_WAIT;
                let mut closing = false;
                while batch.len() < MAX_BATCH {
                    tokio::select! {
                        ev = rx.recv() => match ev {
                            Some(ev) => batch.push(ev),
                            None => { closing = true; break }
                        },
                        () = tokio::time::sleep_until(deadline) => break,
                        () = stop.notified() => { closing = true; break }
                    }
                }
                deliver(&client, &url, batch, &metrics, !closing).await;
                if closing {
                    break;
                }
            }
            // Closing: what is still queued gets one attempt.
            let mut rest = Vec::new();
            while let Ok(ev) = rx.try_recv() {
                rest.push(ev);
                if rest.len() == MAX_BATCH {
                    deliver(&client, &url, std::mem::take(&mut rest), &metrics, false).await;
                }
            }
            if !rest.is_empty() {
                deliver(&client, &url, rest, &metrics, false).await;
            }
        });
        Ok(Self {
            tx,
            closing,
            task: Mutex::new(Some(task)),
        })
    }

    /// Queues `event` without waiting; a full queue drops it (counted).
    pub fn push(&self, event: Event, metrics: &AuditMetrics) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => metrics.dropped("webhook", 1, "queue full"),
            Err(mpsc::error::TrySendError::Closed(_)) => metrics.dropped("webhook", 1, "webhook sender stopped"),
        }
    }

    /// Stops the task after one last delivery attempt, waiting at most `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        self.closing.notify_one();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let abort = task.abort_handle();
            if tokio::time::timeout(timeout, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// The witness: each signed checkpoint line posted as it is written (`audit.log.witness`), so a
/// copy of the chain's signed heads lives outside this machine's trust domain. Bounded (64
/// checkpoints queued; more are dropped and logged), 3 attempts each, never blocking the log.
pub struct Witness {
    tx: mpsc::Sender<String>,
}

impl Witness {
    /// Starts the sender task.
    pub fn start(settings: WebhookSettings) -> Result<Self, WebhookError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
        let client = client(settings.ca_file.as_ref())?;
        let (tx, mut rx) = mpsc::channel::<String>(64);
        let url = settings.url;
        handle.spawn(async move {
            while let Some(line) = rx.recv().await {
                let body = Bytes::from(line);
                let mut backoff = Duration::from_millis(250);
                for attempt in 1..=ATTEMPTS {
                    match post(&client, &url, &body).await {
                        Ok(()) => break,
                        Err(e) if attempt == ATTEMPTS => {
                            tracing::warn!(url = %shown(&url), error = %e, "the audit witness did not take a checkpoint");
                        }
                        Err(_) => {
                            tokio::time::sleep(backoff).await;
                            backoff *= 2;
                        }
                    }
                }
            }
        });
        Ok(Self { tx })
    }

    /// Queues a checkpoint line without waiting.
    pub fn send(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            tracing::warn!("audit witness queue full or stopped: a checkpoint was not sent");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A collector answering 200 to each POST, handing over each body.
    pub(crate) async fn collector() -> (String, mpsc::UnboundedReceiver<serde_json::Value>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!("http://{}/audit", l.local_addr().unwrap_or_else(|e| panic!("{e}")));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 8192];
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        let body: Vec<u8> = buf.drain(..end + 4 + len).skip(end + 4).collect();
                        let _ = tx.send(serde_json::from_slice(&body).unwrap_or_default());
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                    }
                });
            }
        });
        (url, rx)
    }

    #[tokio::test]
    async fn batches_are_event_lists_posted_within_a_second() {
        let (url, mut rx) = collector().await;
        let metrics = AuditMetrics::default();
        let settings = WebhookSettings {
            url: url.parse().unwrap_or_else(|e| panic!("{e}")),
            ca_file: None,
        };
        let b = WebhookBackend::start(settings, metrics.clone()).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..5 {
            b.push(crate::chain::tests::event(i), &metrics);
        }
        let got = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no batch within 3 s"))
            .unwrap_or_default();
        assert_eq!(got["kind"], "EventList");
        assert_eq!(got["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(got["items"].as_array().map(Vec::len), Some(5));
        assert_eq!(got["items"][0]["kind"], "Event");
        // A full batch goes at once; the rest follows within the second.
        for i in 0..(MAX_BATCH as u64 + 10) {
            b.push(crate::chain::tests::event(i), &metrics);
        }
        let full = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(full["items"].as_array().map(Vec::len), Some(MAX_BATCH));
        let rest = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        assert_eq!(rest["items"].as_array().map(Vec::len), Some(10));
        b.shutdown(Duration::from_secs(1)).await;
        assert_eq!(metrics.written_count("webhook"), 5 + MAX_BATCH as u64 + 10);
        assert_eq!(metrics.dropped_count("webhook"), 0);
    }
}
