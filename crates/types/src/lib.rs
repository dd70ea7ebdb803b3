//! Wire and configuration types shared by every kfsec crate.
//!
//! Invariants: this crate performs no IO and holds no secrets in `Debug` output; time and
//! randomness reach logic only through [`Clock`] and [`Rng`] so tests can drive them.

pub mod admission;
pub mod build;
pub mod clock;
pub mod config;
pub mod field;
pub mod hex;
pub mod identity;
pub mod kubeconfig;
pub mod kubeflow;
pub mod meta;
pub mod path;
pub mod rbac;
pub mod refusal;
pub mod same;
pub mod status;
pub mod time;
pub mod validation;
pub mod versioned;

pub use build::BuildInfo;
pub use clock::{Clock, ManualClock, Rng, SequenceRng, SystemClock, UnixTime, random_array};
pub use field::Field;
pub use identity::Identity;
pub use meta::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
pub use refusal::{Failure, Incident, Refusal, RefusalKind};
pub use status::{CauseType, Status, StatusCause, StatusDetails, StatusReason};
pub use versioned::Versioned;
