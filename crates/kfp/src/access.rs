//! KFP's authorization check (`ResourceManager.IsAuthorized`): a SubjectAccessReview-equivalent
//! question to the RBAC authorizer — group `pipelines.kubeflow.org`, version `v1beta1` (also for
//! v2beta1 calls), a resource, a verb, the object's namespace and name — and KFP's
//! PermissionDenied text when the answer is no.
//!
//! Invariants: only `Decision::Allow` allows; every decision (allowed or not) is written to the
//! request's audit Event (`kfsec_api::audit`: verb and objectRef are exactly the question asked,
//! group `pipelines.kubeflow.org`, version `v1beta1`, with RBAC's reason) and to the log; the caller's groups are those the front door authenticated plus the implicit ones
//! (`UserInfo::authenticated`).

use kfsec_api::{Attributes, Authorize, Decision, audit};
use kfsec_types::Identity;
use kfsec_types::identity::UserInfo;

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
        return Err(KfpError::Unauthenticated(crate::error::NO_IDENTITY.into()));
    }
    let user = UserInfo::from(who);
    let attrs = Attributes::resource(
        user.username.clone(),
        user.groups.clone(),
        verb,
        GROUP,
        resource,
        namespace,
    )
    .with_name(name);
    let decision = authz.authorize(&attrs);
    if audit::active() {
        let object = audit::object_ref(GROUP, VERSION, resource, namespace, name);
        audit::decided(verb, object, decision.is_allowed(), decision.reason());
    }
    match decision {
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

/// A namespaced object whose access KFP checks by id (runs, jobs).
pub(crate) trait Guarded: crate::storage::Stored {
    /// How messages name it (`run`, `recurring run`).
    const WHAT: &'static str;
    /// Its authorization resource.
    const RESOURCE: &'static str;
    /// Its name.
    fn name(&self) -> &str;
    /// The NotFound error for `id`.
    fn missing(id: &str) -> KfpError;
}

/// Loads a namespaced object by id and checks `verb` on it in its namespace, with KFP's error
/// texts.
pub(crate) async fn load_namespaced<T: Guarded>(k: &crate::Kfp, who: &Identity, id: &str, verb: &str) -> KfpResult<T> {
    let what = T::WHAT;
    let obj =
        k.db.load::<T>(id)
            .await?
            .map(|(x, _)| x)
            .ok_or_else(|| T::missing(id).wrap(format!("Failed to authorize with the {what} ID {id}")))?;
    check(k.authz.as_ref(), who, verb, T::RESOURCE, obj.scope(), obj.name()).map_err(|e| {
        e.wrap(format!(
            "Failed to access {what} {id}. Check if you have access to namespace {}",
            obj.scope()
        ))
        .wrap("Failed to authorize the request")
    })?;
    audit::identified(None, Some(id));
    Ok(obj)
}
