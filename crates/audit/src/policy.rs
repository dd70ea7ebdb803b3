//! The audit policy: `audit.k8s.io/v1` `Policy` (ordered rules, first match wins) deciding the
//! [`Level`] and omitted stages of each request from its [`Attributes`].
//!
//! Security invariant: whatever a policy file says, Secret bodies and credentials are never
//! recorded (levels above Metadata are capped for them).

use kfsec_types::identity::UserInfo;

use crate::event::{Level, Stage};

/// What a request is, as the policy's rules match it.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The caller (its name and groups are matched by `users` / `userGroups`).
    pub user: &'a UserInfo,
    /// The verb (`get`, `create`…, lower-cased HTTP method for non-resource requests, or the
    /// identity action such as `login`).
    pub verb: &'a str,
    /// The resource acted on; `None` for a non-resource request.
    pub resource: Option<ResourceAttributes<'a>>,
    /// The request path (matched by `nonResourceURLs`).
    pub path: &'a str,
}

/// The resource part of [`Attributes`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceAttributes<'a> {
    /// API group (`""` for core).
    pub api_group: &'a str,
    /// Resource, plural lower case.
    pub resource: &'a str,
    /// Subresource (`""` when none).
    pub subresource: &'a str,
    /// Namespace (`""` for cluster-scoped).
    pub namespace: &'a str,
    /// Object name (`""` when none).
    pub name: &'a str,
}

/// The policy's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// How much to record.
    pub level: Level,
    /// Stages not to record.
    pub omit_stages: Vec<Stage>,
}

impl Decision {
    /// Record nothing.
    pub fn none() -> Self {
        Self {
            level: Level::None,
            omit_stages: Vec::new(),
        }
    }
}
