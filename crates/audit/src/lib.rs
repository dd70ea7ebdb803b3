//! kfsec-audit: the audit log of every decision kfsec makes, in Kubernetes' `audit.k8s.io/v1`
//! format — the wire types ([`event`]), the policy that picks a level per request
//! ([`policy`]), and the [`Auditor`] handle every surface records through.
//!
//! Security invariants: recording never blocks a request (a full or dead backend drops the
//! event, counts it and logs it); passwords, tokens and Secret bodies are never recorded at any
//! level; the log is hash-chained and periodically signed so tampering is detected and located.

use std::sync::Arc;

pub mod chain;
pub mod encode;
pub mod event;
pub mod files;
mod lanes;
pub mod log;
pub mod pipeline;
pub mod policy;
pub mod query;
pub mod request;
pub mod testing;
pub mod webhook;

pub use event::{Event, EventList, IDENTITY_GROUP, Level, ObjectRef, ResponseStatus, Stage};
pub use pipeline::{AuditMetrics, Pipeline, PipelineSettings};
pub use policy::{Attributes, Decision, Policy, PolicyError, ResourceAttributes};
pub use request::RequestAudit;

/// Where events go: the policy's decision for a request, and the non-blocking hand-off of an
/// event to the configured backends. Implemented by the real pipeline (policy + log file +
/// webhook) and by tests' capturing sinks.
pub trait Sink: Send + Sync {
    /// The level and omitted stages for a request with these attributes.
    fn decide(&self, attributes: &Attributes<'_>) -> Decision;
    /// Hands `event` to the backends without blocking; drops (and counts) it when they are full.
    fn record(&self, event: Event);
    /// [`Sink::record`] of an event by reference (the request path's, built from its state):
    /// a sink that only serializes need not copy it into an owned [`Event`].
    fn record_view(&self, view: &encode::EventView<'_>) {
        self.record(view.to_event());
    }
    /// [`Sink::record_view`] of an event of a request that records several over time (its
    /// `RequestReceived` or `ResponseStarted` before the response ends, a side event, and the
    /// stages after one of those): a sink that stages events per thread keeps these in the
    /// order recorded, whichever threads record them.
    fn record_stage(&self, view: &encode::EventView<'_>) {
        self.record_view(view);
    }
    /// Whether recorded bodies leave out `metadata.managedFields` (the policy's
    /// `omitManagedFields` for the matching rule; default no).
    fn omit_managed_fields(&self, _attributes: &Attributes<'_>) -> bool {
        false
    }
}

/// The cheap, cloneable handle surfaces record through. [`Auditor::disabled`] records nothing
/// and decides [`Level::None`] for everything.
#[derive(Clone, Default)]
pub struct Auditor {
    sink: Option<Arc<dyn Sink>>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("enabled", &self.sink.is_some())
            .finish()
    }
}

impl Auditor {
    /// An auditor that records nothing.
    pub fn disabled() -> Self {
        Self { sink: None }
    }

    /// An auditor recording into `sink`.
    pub fn new(sink: Arc<dyn Sink>) -> Self {
        Self { sink: Some(sink) }
    }

    /// Whether anything can be recorded at all (lets callers skip building attributes).
    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// The policy's decision for a request ([`Level::None`] when disabled).
    pub fn decide(&self, attributes: &Attributes<'_>) -> Decision {
        match &self.sink {
            Some(sink) => sink.decide(attributes),
            None => Decision::none(),
        }
    }

    /// Whether recorded bodies leave out `metadata.managedFields` for this request.
    pub fn omit_managed_fields(&self, attributes: &Attributes<'_>) -> bool {
        self.sink.as_ref().is_some_and(|s| s.omit_managed_fields(attributes))
    }

    /// Records `event` (dropped when disabled or when its level is [`Level::None`]).
    pub fn record(&self, event: Event) {
        if let Some(sink) = &self.sink
            && event.level != Level::None
        {
            sink.record(event);
        }
    }

    /// [`Auditor::record`] of an event by reference.
    pub fn record_view(&self, view: &encode::EventView<'_>) {
        if let Some(sink) = &self.sink
            && view.level != Level::None
        {
            sink.record_view(view);
        }
    }

    /// [`Auditor::record_view`] of one of several stages of a request ([`Sink::record_stage`]).
    pub fn record_stage(&self, view: &encode::EventView<'_>) {
        if let Some(sink) = &self.sink
            && view.level != Level::None
        {
            sink.record_stage(view);
        }
    }
}
