//! The authorization contract this crate asks on every request: `kfsec_authz`'s request
//! [`Attributes`] and [`Decision`], the [`Authorize`] trait (implemented for
//! `kfsec_authz::Authorizer`) and the rules listing behind SelfSubjectRulesReview, for the
//! effective caller (a [`UserInfo`] of `kfsec_types::identity`, which owns the naming rules).
//!
//! Invariants: only [`Decision::Allow`] allows; anything else (including an authorizer that
//! has no opinion) denies. Every authenticated user carries `system:authenticated`.

pub use kfsec_authz::{
    Attributes, Decision, NonResourceAttributes, NonResourceRule, RequestAttributes, ResourceAttributes, ResourceRule,
};
use kfsec_types::identity::UserInfo;

/// Attributes of a resource request by `user` (its groups as given, implicit ones included).
pub fn attributes_for(user: &UserInfo, r: ResourceAttributes) -> Attributes {
    Attributes {
        user: user.username.clone(),
        groups: user.groups.clone(),
        request: RequestAttributes::Resource(r),
    }
}

/// What a user may do in a namespace (for `kubectl auth can-i --list`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectRules {
    /// Resource rules.
    pub resource_rules: Vec<ResourceRule>,
    /// Non-resource rules.
    pub non_resource_rules: Vec<NonResourceRule>,
    /// True when the list may be incomplete.
    pub incomplete: bool,
    /// Errors met while evaluating.
    pub evaluation_error: String,
}

/// The authorizer this crate consults; implemented for `kfsec_authz::Authorizer` (and by test
/// fakes, or a chain of authorizers the server builds).
pub trait Authorize: Send + Sync + 'static {
    /// Decides one request (only `Decision::Allow` allows).
    fn authorize(&self, attributes: &Attributes) -> Decision;
    /// The rules that apply to `user` in `namespace` (cluster-wide rules included).
    fn rules_for(&self, user: &UserInfo, namespace: &str) -> SubjectRules;
    /// A receiver whose value changes whenever decisions may have changed (an RBAC object was
    /// added, changed or removed), so long-running requests (watches) can be re-authorized;
    /// `None` (the default) when decisions never change.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

impl Authorize for kfsec_authz::Authorizer {
    fn authorize(&self, attributes: &Attributes) -> Decision {
        kfsec_authz::Authorizer::authorize(self, attributes)
    }

    fn rules_for(&self, user: &UserInfo, namespace: &str) -> SubjectRules {
        let (resource_rules, non_resource_rules) =
            kfsec_authz::Authorizer::rules_for(self, &user.username, &user.groups, namespace);
        SubjectRules {
            resource_rules,
            non_resource_rules,
            incomplete: false,
            evaluation_error: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn forbidden_text() {
        let a = Attributes::resource("u", vec![], "get", "", "pods", "ns")
            .with_subresource("log")
            .with_name("p");
        assert_eq!(
            a.forbidden_message(),
            r#"User "u" cannot get resource "pods/log" in API group "" in the namespace "ns""#
        );
        let n = Attributes::non_resource("u", vec![], "get", "/metrics");
        assert_eq!(n.forbidden_message(), r#"User "u" cannot get path "/metrics""#);
    }
}
