//! [`Authorizer`]: the shared, concurrently readable RBAC authorizer, and the [`Change`] events a
//! store watch feeds it.
//!
//! Invariants: readers never block each other (a `parking_lot` read lock around the
//! [`RbacIndex`]); a writer applies one change, or a batch, in place under the write lock, so an
//! update costs the size of the change (plus re-aggregation when an aggregated ClusterRole is
//! touched), never a rebuild; a decision observes either all or none of a batch.

use std::fmt;

use parking_lot::{RwLock, RwLockReadGuard};
use serde::Serialize;

use crate::attributes::Attributes;
use crate::decision::{Decision, Explanation, NonResourceRule, ResourceRule};
use crate::error::AuthzError;
use crate::index::{IndexStats, RbacIndex};
use kfsec_types::rbac::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

/// The four RBAC kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum RbacKind {
    /// `Role`.
    Role,
    /// `ClusterRole`.
    ClusterRole,
    /// `RoleBinding`.
    RoleBinding,
    /// `ClusterRoleBinding`.
    ClusterRoleBinding,
}

impl RbacKind {
    /// The kind as written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Role => "Role",
            Self::ClusterRole => "ClusterRole",
            Self::RoleBinding => "RoleBinding",
            Self::ClusterRoleBinding => "ClusterRoleBinding",
        }
    }

    /// Parses a `kind:` value.
    pub fn parse(kind: &str) -> Option<Self> {
        Some(match kind {
            "Role" => Self::Role,
            "ClusterRole" => Self::ClusterRole,
            "RoleBinding" => Self::RoleBinding,
            "ClusterRoleBinding" => Self::ClusterRoleBinding,
            _ => return None,
        })
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        matches!(self, Self::Role | Self::RoleBinding)
    }
}

impl fmt::Display for RbacKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Any RBAC object.
#[derive(Debug, Clone, PartialEq)]
pub enum RbacObject {
    /// A Role.
    Role(Role),
    /// A ClusterRole.
    ClusterRole(ClusterRole),
    /// A RoleBinding.
    RoleBinding(RoleBinding),
    /// A ClusterRoleBinding.
    ClusterRoleBinding(ClusterRoleBinding),
}

impl RbacObject {
    /// Decodes a JSON object by its `kind`.
    pub fn from_value(value: serde_json::Value) -> Result<Self, AuthzError> {
        let kind_text = value
            .get("kind")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        let kind = RbacKind::parse(kind_text).ok_or_else(|| AuthzError::UnknownKind(kind_text.to_owned()))?;
        let decode = |source| AuthzError::Decode { kind, source };
        Ok(match kind {
            RbacKind::Role => Self::Role(serde_json::from_value(value).map_err(decode)?),
            RbacKind::ClusterRole => Self::ClusterRole(serde_json::from_value(value).map_err(decode)?),
            RbacKind::RoleBinding => Self::RoleBinding(serde_json::from_value(value).map_err(decode)?),
            RbacKind::ClusterRoleBinding => Self::ClusterRoleBinding(serde_json::from_value(value).map_err(decode)?),
        })
    }

    /// The object's kind.
    pub fn kind(&self) -> RbacKind {
        match self {
            Self::Role(_) => RbacKind::Role,
            Self::ClusterRole(_) => RbacKind::ClusterRole,
            Self::RoleBinding(_) => RbacKind::RoleBinding,
            Self::ClusterRoleBinding(_) => RbacKind::ClusterRoleBinding,
        }
    }
}

/// One change to the RBAC objects.
// Changes are short-lived events moved straight into `apply`; boxing the object would only add an
// allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create or replace an object (matched by kind, namespace and name).
    Upsert(RbacObject),
    /// Delete `(kind, namespace, name)`; the namespace is ignored for cluster-scoped kinds.
    Delete(RbacKind, String, String),
}

/// The RBAC authorizer: `Send + Sync`, cheap to read from many threads, updated in place.
#[derive(Debug, Default)]
pub struct Authorizer {
    index: RwLock<RbacIndex>,
}

impl Authorizer {
    /// An authorizer with no objects (allows only `system:masters`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the authorizer from a full snapshot of the RBAC objects.
    pub fn from_objects(
        roles: Vec<Role>,
        cluster_roles: Vec<ClusterRole>,
        role_bindings: Vec<RoleBinding>,
        cluster_role_bindings: Vec<ClusterRoleBinding>,
    ) -> Result<Self, AuthzError> {
        Ok(Self::from_index(RbacIndex::from_objects(
            roles,
            cluster_roles,
            role_bindings,
            cluster_role_bindings,
        )?))
    }

    /// Wraps an index.
    pub fn from_index(index: RbacIndex) -> Self {
        Self {
            index: RwLock::new(index),
        }
    }

    /// Applies one change.
    pub fn apply(&self, change: Change) -> Result<(), AuthzError> {
        self.index.write().apply(change)
    }

    /// Applies changes under one write lock. Every valid change is applied; the first error (if
    /// any) is returned.
    pub fn apply_all(&self, changes: impl IntoIterator<Item = Change>) -> Result<(), AuthzError> {
        let mut index = self.index.write();
        let mut first_error = None;
        for change in changes {
            if let Err(error) = index.apply(change) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Replaces every object with a new snapshot (after a watch was lost).
    pub fn replace(
        &self,
        roles: Vec<Role>,
        cluster_roles: Vec<ClusterRole>,
        role_bindings: Vec<RoleBinding>,
        cluster_role_bindings: Vec<ClusterRoleBinding>,
    ) -> Result<(), AuthzError> {
        let index = RbacIndex::from_objects(roles, cluster_roles, role_bindings, cluster_role_bindings)?;
        *self.index.write() = index;
        Ok(())
    }

    /// The Kubernetes RBAC decision for `attrs`, with Kubernetes' reason text.
    pub fn authorize(&self, attrs: &Attributes) -> Decision {
        self.index.read().authorize(attrs)
    }

    /// Whether `attrs` is allowed (no reason string is built).
    pub fn allows(&self, attrs: &Attributes) -> bool {
        self.index.read().allows(attrs)
    }

    /// The rules of `user` with `groups` in `namespace`, for SelfSubjectRulesReview.
    pub fn rules_for(
        &self,
        user: &str,
        groups: &[String],
        namespace: &str,
    ) -> (Vec<ResourceRule>, Vec<NonResourceRule>) {
        self.index.read().rules_for(user, groups, namespace)
    }

    /// The decision for `attrs` with the bindings behind it (`kfsec why`).
    pub fn explain(&self, attrs: &Attributes) -> Explanation {
        self.index.read().explain(attrs)
    }

    /// Object counts.
    pub fn stats(&self) -> IndexStats {
        self.index.read().stats()
    }

    /// A read guard on the index, for many decisions under one lock acquisition.
    pub fn read(&self) -> RwLockReadGuard<'_, RbacIndex> {
        self.index.read()
    }
}
