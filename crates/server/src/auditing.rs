//! Starts the audit pipeline (`audit:`) at server start: the metrics are registered always, the
//! backends only when configured; the signing key lives in `<dataDir>/audit`.
//!
//! Invariant: a log file or key that cannot be opened fails the start (an operator who asked
//! for an audit log never runs without one).

use std::sync::Arc;

use kfsec_audit::{AuditMetrics, Auditor, Pipeline, PipelineSettings};
use kfsec_types::{Clock, Rng};
use prometheus_client::registry::Registry;

use crate::config::Config;

/// The directory of the audit signing key (`signing-key.pk8`, `audit.pub`).
pub fn key_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("audit")
}

/// Registers the audit metrics and starts the configured backends; `None` when audit is off.
pub fn start(
    cfg: &Config,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    registry: &mut Registry,
) -> Result<(Auditor, Option<Arc<Pipeline>>), kfsec_audit::pipeline::PipelineError> {
    let metrics = AuditMetrics::register(registry);
    if !cfg.audit.enabled() {
        tracing::info!("audit log off (audit.log.path is \"\" and no audit.webhook)");
        return Ok((Auditor::disabled(), None));
    }
    let settings = PipelineSettings {
        policy: cfg.audit.policy.clone(),
        log: cfg.audit.log.clone(),
        webhook: cfg.audit.webhook.clone(),
        key_dir: key_dir(&cfg.data_dir),
    };
    let pipeline = Pipeline::start(settings, metrics, clock, rng)?;
    Ok((pipeline.auditor(), Some(pipeline)))
}
