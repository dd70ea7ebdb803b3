//! The audit pipeline: the [`Sink`] kfsec runs — the policy, one bounded queue per backend
//! (log file, webhook), the backends' workers, and the two audit metrics
//! (`kfsec_audit_events_total{backend}`, `kfsec_audit_events_dropped_total{backend}`).
//!
//! Security invariants: `record` never blocks and never waits on IO — a full queue (a slow or
//! dead backend) drops the event, counts it and logs it at most once a second; the log's chain
//! has one writer (the log worker thread), so lines are sealed in the order they are written.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use kfsec_types::{Clock, Rng};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::chain::{Encoded, SigningKey};
use crate::encode::EventView;
use crate::event::Event;
use crate::log::{LogSettings, LogWriter};
use crate::policy::{Attributes, Decision, Policy};
use crate::webhook::{WebhookBackend, WebhookSettings};
use crate::{Auditor, Sink};

/// Events a backend's queue holds before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 10_000;

type Labels = Vec<(String, String)>;

/// The audit metrics, registered on the server's registry.
#[derive(Debug, Clone, Default)]
pub struct AuditMetrics {
    events: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    last_warn: Arc<AtomicU64>,
    /// `events`' series of the log and webhook backends.
    series: Arc<[std::sync::OnceLock<Counter>; 2]>,
}

impl AuditMetrics {
    /// Registers `kfsec_audit_events_total` and `kfsec_audit_events_dropped_total`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "kfsec_audit_events",
            "Audit events written (log) or delivered (webhook), by backend",
            m.events.clone(),
        );
        registry.register(
            "kfsec_audit_events_dropped",
            "Audit events dropped because a backend's queue was full or its write failed, by backend",
            m.dropped.clone(),
        );
        m
    }

    fn labels(backend: &str) -> Labels {
        vec![("backend".to_owned(), backend.to_owned())]
    }

    /// Counts `n` events written/sent by `backend` (the log's and the webhook's series are
    /// looked up once, not per batch).
    pub fn written(&self, backend: &str, n: u64) {
        let known = match backend {
            "log" => &self.series[0],
            "webhook" => &self.series[1],
            _ => {
                self.events.get_or_create(&Self::labels(backend)).inc_by(n);
                return;
            }
        };
        known
            .get_or_init(|| self.events.get_or_create(&Self::labels(backend)).clone())
            .inc_by(n);
    }

    /// Counts `n` events dropped by `backend` and logs it (at most once a second).
    // A monotonic rate limit on a log line, not logic: Instant allowed here.
    #[allow(clippy::disallowed_methods)]
    pub fn dropped(&self, backend: &str, n: u64, why: &str) {
        self.dropped.get_or_create(&Self::labels(backend)).inc_by(n);
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let now = u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_warn.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last_warn
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                backend,
                dropped = n,
                reason = why,
                "audit events dropped (see kfsec_audit_events_dropped_total)"
            );
        }
    }

    /// Events written/sent so far by `backend` (for tests and the bench).
    pub fn written_count(&self, backend: &str) -> u64 {
        self.events.get_or_create(&Self::labels(backend)).get()
    }

    /// Events dropped so far by `backend`.
    pub fn dropped_count(&self, backend: &str) -> u64 {
        self.dropped.get_or_create(&Self::labels(backend)).get()
    }
}

enum Msg {
    /// An event, serialized by the thread that recorded it.
    Event(Encoded),
    Flush(std::sync::mpsc::Sender<()>),
}

struct LogBackend {
    tx: SyncSender<Msg>,
}

/// The settings of a pipeline.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// The policy (the default one when no file is configured).
    pub policy: Policy,
    /// The log backend, if on.
    pub log: Option<LogSettings>,
    /// The webhook backend, if on.
    pub webhook: Option<WebhookSettings>,
    /// Where the audit signing key lives (`<dataDir>/audit`).
    pub key_dir: std::path::PathBuf,
}

/// The running pipeline (the real [`Sink`]).
pub struct Pipeline {
    policy: Policy,
    log: Option<LogBackend>,
    webhook: Option<WebhookBackend>,
    metrics: AuditMetrics,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("log", &self.log.is_some())
            .field("webhook", &self.webhook.is_some())
            .finish_non_exhaustive()
    }
}

/// Starting the pipeline failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The signing key.
    #[error(transparent)]
    Key(#[from] crate::chain::ChainError),
    /// The log file.
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    /// The webhook backend.
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
    /// The worker thread.
    #[error("starting the audit log thread: {0}")]
    Thread(std::io::Error),
}

/// While events keep coming, the log worker sleeps this long between draining its queue instead
/// of waiting on it, so requests hand events over without waking it (no futex wake, no context
/// switch per event) and each batch is one write.
const BATCH_PAUSE: Duration = Duration::from_millis(2);
/// Most events written in one batch (one write) before the worker checks its timers.
const BATCH_MAX: usize = 4096;

/// The log worker's loop: waits for the first event, then — while a drain finds events —
/// drains the queue every [`BATCH_PAUSE`], sealing the batch and writing it at once; a drain
/// that finds nothing sends it back to waiting, after syncing the file if a checkpoint is not
/// synced yet. Checkpoints every `interval` (the writer adds them every N lines) and at a flush
/// request or shutdown.
// The pause and the checkpoint timer are monotonic IO pacing of the worker thread (the
// checkpoint's own time comes from the Clock): Instant and thread sleep allowed here.
#[allow(clippy::disallowed_methods)]
fn log_worker(mut w: LogWriter, rx: Receiver<Msg>, metrics: AuditMetrics, interval: Duration) {
    let mut next = Instant::now() + interval;
    let checkpoint = |w: &mut LogWriter, metrics: &AuditMetrics| {
        if let Err(e) = w.checkpoint() {
            metrics.dropped("log", 0, "checkpoint write failed");
            tracing::warn!(error = %e, "writing an audit checkpoint failed");
        }
    };
    // Writes the batch's pending lines (one write) and counts the `written` events of the batch
    // (less those the write lost).
    let settle = |w: &mut LogWriter, metrics: &AuditMetrics, written: u64| {
        let pending = w.pending_lines();
        let mut lost = 0;
        if let Err(e) = w.flush() {
            tracing::warn!(error = %e, lines = pending, "writing audit events failed");
            metrics.dropped("log", pending, "write failed");
            lost = pending;
        }
        if written > lost {
            metrics.written("log", written - lost);
        }
    };
    let mut busy = false;
    loop {
        let first = if busy {
            std::thread::sleep(BATCH_PAUSE);
            match rx.try_recv() {
                Ok(m) => Ok(Some(m)),
                Err(TryRecvError::Empty) => Ok(None),
                Err(TryRecvError::Disconnected) => Err(()),
            }
        } else {
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(m) => Ok(Some(m)),
                Err(RecvTimeoutError::Timeout) => Ok(None),
                Err(RecvTimeoutError::Disconnected) => Err(()),
            }
        };
        let Ok(first) = first else {
            checkpoint(&mut w, &metrics);
            return;
        };
        busy = first.is_some();
        if !busy {
            // The queue is empty: a checkpoint whose sync was put off is synced now.
            if let Err(e) = w.sync() {
                tracing::warn!(error = %e, "syncing the audit log failed");
            }
        }
        let mut written = 0u64;
        let mut msg = first;
        let mut n = 0;
        while let Some(m) = msg {
            match m {
                Msg::Event(body) => match w.write_encoded(&body) {
                    Ok(()) => written += 1,
                    Err(e) => {
                        tracing::warn!(error = %e, "writing an audit event failed");
                        metrics.dropped("log", 1, "write failed");
                    }
                },
                Msg::Flush(ack) => {
                    settle(&mut w, &metrics, std::mem::take(&mut written));
                    checkpoint(&mut w, &metrics);
                    let _ = ack.send(());
                }
            }
            n += 1;
            msg = if n < BATCH_MAX { rx.try_recv().ok() } else { None };
        }
        settle(&mut w, &metrics, written);
        if Instant::now() >= next {
            checkpoint(&mut w, &metrics);
            next = Instant::now() + interval;
        }
    }
}

impl Pipeline {
    /// Starts the backends: the log worker thread (opening the file and the signing key now,
    /// so a problem fails the start) and the webhook task (needs a Tokio runtime).
    pub fn start(
        settings: PipelineSettings,
        metrics: AuditMetrics,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
    ) -> Result<Arc<Self>, PipelineError> {
        let log = match settings.log {
            None => None,
            Some(log) => {
                let key = Arc::new(SigningKey::load_or_create(&settings.key_dir, rng.as_ref())?);
                let interval = log.checkpoint_interval.max(Duration::from_millis(10));
                let witness = log.witness.clone().map(crate::webhook::Witness::start).transpose()?;
                let mut writer = LogWriter::open(log, key, clock.clone(), rng.clone())?;
                if let Some(w) = witness {
                    writer.on_checkpoint(Box::new(move |line| w.send(line)));
                }
                let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
                let m = metrics.clone();
                std::thread::Builder::new()
                    .name("kfsec-audit-log".into())
                    .spawn(move || log_worker(writer, rx, m, interval))
                    .map_err(PipelineError::Thread)?;
                Some(LogBackend { tx })
            }
        };
        let webhook = match settings.webhook {
            None => None,
            Some(w) => Some(WebhookBackend::start(w, metrics.clone())?),
        };
        // The series of the backends in use exist from the start (at 0), so a rate or an alert
        // on them has data before the first drop.
        for (on, backend) in [(log.is_some(), "log"), (webhook.is_some(), "webhook")] {
            if on {
                metrics.written(backend, 0);
                metrics.dropped.get_or_create(&AuditMetrics::labels(backend)).inc_by(0);
            }
        }
        Ok(Arc::new(Self {
            policy: settings.policy,
            log,
            webhook,
            metrics,
        }))
    }

    /// The auditor surfaces record through.
    pub fn auditor(self: &Arc<Self>) -> Auditor {
        Auditor::new(self.clone())
    }

    /// The metrics.
    pub fn metrics(&self) -> &AuditMetrics {
        &self.metrics
    }

    /// Waits (up to `timeout`) until every event queued so far is written and a checkpoint
    /// signs them. Blocking: call from a blocking context (a monotonic IO deadline: Instant and
    /// thread sleep allowed here).
    #[allow(clippy::disallowed_methods)]
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(log) = &self.log else { return true };
        let (ack, done) = std::sync::mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut msg = Msg::Flush(ack);
        loop {
            match log.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        done.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Flushes, then stops the webhook backend after one last delivery attempt (bounded).
    pub async fn shutdown(self: &Arc<Self>) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.flush(Duration::from_secs(5))).await;
        if let Some(w) = &self.webhook {
            w.shutdown(Duration::from_secs(2)).await;
        }
    }
}

impl Sink for Pipeline {
    fn decide(&self, attributes: &Attributes<'_>) -> Decision {
        self.policy.decide(attributes)
    }

    fn omit_managed_fields(&self, attributes: &Attributes<'_>) -> bool {
        self.policy.omit_managed_fields(attributes)
    }

    fn record(&self, event: Event) {
        if let Some(w) = &self.webhook {
            w.push(event.clone(), &self.metrics);
        }
        self.log_encoded(|| Encoded::new(event));
    }

    fn record_view(&self, view: &EventView<'_>) {
        if let Some(w) = &self.webhook {
            w.push(view.to_event(), &self.metrics);
        }
        self.log_encoded(|| Encoded::of_view(view));
    }
}

impl Pipeline {
    /// Serializes the event (here, on the recording thread: in parallel across requests, and
    /// the event's allocations are freed by the thread that made them) and queues it for the
    /// log worker, which only seals and writes.
    fn log_encoded(&self, encode: impl FnOnce() -> Result<Encoded, crate::chain::ChainError>) {
        let Some(log) = &self.log else { return };
        let body = match encode() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "serializing an audit event failed");
                self.metrics.dropped("log", 1, "serializing failed");
                return;
            }
        };
        match log.tx.try_send(Msg::Event(body)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.metrics.dropped("log", 1, "queue full"),
            Err(TrySendError::Disconnected(_)) => self.metrics.dropped("log", 1, "log writer stopped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogTarget;
    use kfsec_types::{SequenceRng, SystemClock};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_chained_and_signed_and_each_checkpoint_reaches_the_witness() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (url, mut witnessed) = crate::webhook::tests::collector().await;
        let mut log = LogSettings::new(LogTarget::File(dir.path().join("audit.log")));
        log.checkpoint_lines = 3;
        log.witness = Some(WebhookSettings {
            url: url.parse().unwrap_or_else(|e| panic!("{e}")),
            ca_file: None,
        });
        let settings = PipelineSettings {
            policy: Policy::default_policy(),
            log: Some(log),
            webhook: None,
            key_dir: dir.path().join("keys"),
        };
        let mut registry = Registry::default();
        let metrics = AuditMetrics::register(&mut registry);
        let p = Pipeline::start(
            settings,
            metrics.clone(),
            Arc::new(SystemClock),
            Arc::new(SequenceRng::default()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let auditor = p.auditor();
        for i in 0..4 {
            auditor.record(crate::chain::tests::event(i));
        }
        let p2 = p.clone();
        assert!(
            tokio::task::spawn_blocking(move || p2.flush(Duration::from_secs(5)))
                .await
                .unwrap_or(false)
        );
        assert_eq!(metrics.written_count("log"), 4);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_else(|e| panic!("{e}"));
        assert!(text.contains("kfsec_audit_events_total{backend=\"log\"} 4"), "{text}");
        assert!(
            text.contains("kfsec_audit_events_dropped_total{backend=\"log\"} 0"),
            "{text}"
        );
        assert!(!text.contains("backend=\"webhook\""), "{text}");
        // 4 events, a checkpoint after the third line and one at the flush.
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap_or_default();
        assert_eq!(text.lines().count(), 6, "{text}");
        let pem = std::fs::read_to_string(dir.path().join("keys/audit.pub")).unwrap_or_default();
        let key = crate::chain::parse_public_pem(&pem).unwrap_or_default();
        let r = crate::files::verify_files(&[dir.path().join("audit.log")], &[key])
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|f| panic!("{f}"));
        assert_eq!((r.events, r.checkpoints, r.unsigned_tail), (4, 2, 0));
        for line in text.lines().filter(|l| l.contains(r#""verb":"checkpoint""#)) {
            let got = tokio::time::timeout(Duration::from_secs(3), witnessed.recv())
                .await
                .ok()
                .flatten();
            let want: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            assert_eq!(got, Some(want));
        }
    }
}
