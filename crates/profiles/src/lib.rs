//! Kubeflow multi-tenancy on top of the Kubernetes-style API: the profile controller, KFAM and
//! the Central Dashboard's backend API (which goes through KFAM's code path).
//!
//! Invariants: everything here writes through `kfsec-api`'s typed helpers (validation and
//! admission run, `resourceVersion` bumps), and every decision about who may change a workspace
//! goes through the RBAC authorizer or the Profile's owner field.

pub mod controller;
pub mod credentials;
pub mod dashboard;
pub mod kfam;
pub mod pages;

pub use controller::{ProfileController, ProfileSettings};
pub use dashboard::{DASHBOARD_PATHS, Dashboard, DashboardSettings};
pub use kfam::{AuthzSync, Kfam, refusal_response as kfam_refusal_response};
pub use pages::PAGE_PATHS;

/// The front-door paths KFAM owns (where the composition nests [`Kfam::router`]); handed to the
/// gateway with [`kfam_refusal_response`].
pub const KFAM_PATHS: &[&str] = &["/kfam/"];
