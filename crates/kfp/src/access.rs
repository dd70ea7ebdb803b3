//! KFP's authorization check (`ResourceManager.IsAuthorized`): a SubjectAccessReview-equivalent
//! question to the RBAC authorizer — group `pipelines.kubeflow.org`, version `v1beta1` (also for
//! v2beta1 calls), a resource, a verb, the object's namespace and name — and KFP's
//! PermissionDenied text when the answer is no.
//!
//! Invariants: only `Decision::Allow` allows; every decision (allowed or not) is written to the
//! audit log; the caller's groups are those the front door authenticated plus the implicit ones
//! (`UserInfo::authenticated`).

use kfsec_api::{Attributes, Authorize, Decision, UserInfo};
use kfsec_types::Identity;

use crate::error::{KfpError, KfpResult};

/// The API group of every KFP authorization question.
pub const GROUP: &str = "pipelines.kubeflow.org";
/// The version KFP puts in every question, whatever the API version called.
pub const VERSION: &str = "v1beta1";

/// KFP's RBAC resources.
pub mod res {
    /// Experiments.
    pub const EXPERIMENTS: &str = "experiments";
    /// Runs.
    pub const RUNS: &str = "runs";
    /// Jobs (recurring runs).
    pub const JOBS: &str = "jobs";
    /// Pipelines (also checked for pipeline versions, as KFP does).
    pub const PIPELINES: &str = "pipelines";
    /// Argo workflows reported by the persistence agent.
    pub const WORKFLOWS: &str = "workflows";
    /// Scheduled workflows reported by the persistence agent.
    pub const SCHEDULED_WORKFLOWS: &str = "scheduledworkflows";
}

/// KFP's `&ResourceAttributes{…}` rendering (Go's `%+v` of the Kubernetes type).
pub fn resource_attributes_text(namespace: &str, verb: &str, resource: &str, name: &str) -> String {
    format!(
        "&ResourceAttributes{{Namespace:{namespace},Verb:{verb},Group:{GROUP},Version:{VERSION},Resource:{resource},Subresource:,Name:{name},}}"
    )
}

/// KFP's PermissionDenied text (the RBAC deny reason is empty, hence two spaces before `(`).
pub fn denied_text(user: &str, namespace: &str, verb: &str, resource: &str, name: &str) -> String {
    format!(
        "User '{user}' is not authorized with reason:  (request: {})",
        resource_attributes_text(namespace, verb, resource, name)
    )
}

/// Asks the authorizer whether `who` may `verb` the `resource` named `name` in `namespace`.
pub fn check(
    authz: &dyn Authorize,
    who: &Identity,
    verb: &str,
    resource: &str,
    namespace: &str,
    name: &str,
) -> KfpResult<()> {
    if who.user.is_empty() {
        return Err(KfpError::Unauthenticated(
            "Failed to check authorization. User identity is empty in the request header".into(),
        ));
    }
    let user = UserInfo::authenticated(who.user.clone(), &who.groups);
    let attrs = Attributes::resource(
        user.username.clone(),
        user.groups.clone(),
        verb,
        GROUP,
        resource,
        namespace,
    )
    .with_name(name);
    match authz.authorize(&attrs) {
        Decision::Allow { reason } => {
            tracing::debug!(target: "audit", user = %who.user, verb, resource, namespace, name, %reason, "kfp allowed");
            Ok(())
        }
        _ => {
            tracing::info!(target: "audit", user = %who.user, verb, resource, namespace, name, "kfp denied");
            Err(KfpError::PermissionDenied(denied_text(
                &who.user, namespace, verb, resource, name,
            )))
        }
    }
}
