//! The crate's error type.
//!
//! Invariant: errors describe invalid input objects only; authorization itself never fails (an
//! unresolvable binding simply grants nothing, as in Kubernetes).

use crate::authorizer::RbacKind;

/// Why an RBAC object or change was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthzError {
    /// The object has no `metadata.name`.
    #[error("{kind} has no metadata.name")]
    MissingName {
        /// Object kind.
        kind: RbacKind,
    },
    /// A namespaced object (Role, RoleBinding) has no `metadata.namespace`.
    #[error("{kind} {name:?} has no metadata.namespace")]
    MissingNamespace {
        /// Object kind.
        kind: RbacKind,
        /// Object name.
        name: String,
    },
    /// A JSON object has a `kind` that is not one of the four RBAC kinds.
    #[error("not an RBAC object kind: {0:?}")]
    UnknownKind(String),
    /// A JSON object did not decode as its kind.
    #[error("invalid {kind} object: {source}")]
    Decode {
        /// Object kind.
        kind: RbacKind,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}
