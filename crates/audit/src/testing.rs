//! A capturing [`Sink`] for tests (this crate's and other crates' integration tests): every
//! event is kept in memory, the level is fixed (or chosen per request by a closure), and
//! [`Capture::events`] returns what a request produced. Not for production: unbounded.
//!
//! Security invariant: none (test support); it never writes anywhere.

use std::sync::{Arc, Mutex};

use crate::event::{Event, Level};
use crate::policy::{Attributes, Decision};
use crate::{Auditor, Sink};

type Choose = dyn Fn(&Attributes<'_>) -> Level + Send + Sync;

/// Keeps every recorded event.
pub struct Capture {
    choose: Box<Choose>,
    events: Mutex<Vec<Event>>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

impl Capture {
    /// Records everything at `level`.
    pub fn with_level(level: Level) -> Arc<Self> {
        Self::choosing(move |_| level)
    }

    /// Records everything at Metadata level.
    pub fn metadata() -> Arc<Self> {
        Self::with_level(Level::Metadata)
    }

    /// Records at the level `choose` picks per request.
    pub fn choosing(choose: impl Fn(&Attributes<'_>) -> Level + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            choose: Box::new(choose),
            events: Mutex::new(Vec::new()),
        })
    }

    /// An [`Auditor`] recording here.
    pub fn auditor(self: &Arc<Self>) -> Auditor {
        Auditor::new(self.clone())
    }

    /// The events recorded so far, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.lock().clone()
    }

    /// The events recorded so far, removing them.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.lock())
    }

    /// The events of the request with `audit_id`.
    pub fn of(&self, audit_id: &str) -> Vec<Event> {
        self.lock().iter().filter(|e| e.audit_id == audit_id).cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Sink for Capture {
    fn decide(&self, attributes: &Attributes<'_>) -> Decision {
        Decision {
            level: (self.choose)(attributes),
            omit_stages: crate::policy::Stages::default(),
        }
    }

    fn record(&self, event: Event) {
        self.lock().push(event);
    }
}
