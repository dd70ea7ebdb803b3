//! Kubernetes RBAC authorization for kfsec over the `rbac.authorization.k8s.io/v1` wire types of
//! [`kfsec_types::rbac`]: an indexed, incrementally updated authorizer with the API server's exact
//! semantics and reason texts, SelfSubjectRulesReview rules, decision explanations, and Kubeflow's
//! default ClusterRoles.
//!
//! Invariants: authorization is a pure function of (attributes, RBAC objects); no IO happens here;
//! a decision never scans all bindings (see [`index`]); [`Authorizer`] is `Send + Sync`.

pub mod attributes;
pub mod authorizer;
pub mod decision;
pub mod defaults;
pub mod error;
pub mod index;
pub mod rule;

pub use attributes::{Attributes, NonResourceAttributes, RequestAttributes, ResourceAttributes};
pub use authorizer::{Authorizer, Change, RbacKind, RbacObject};
pub use decision::{BindingKind, BindingRef, BindingTrace, Decision, Explanation, NonResourceRule, ResourceRule};
pub use defaults::kubeflow_default_cluster_roles;
pub use error::AuthzError;
pub use index::{IndexStats, RbacIndex};
