//! The authorization contract this crate asks on every request: `kfsec_authz`'s request
//! [`Attributes`] and [`Decision`], the [`Authorize`] trait (implemented for
//! `kfsec_authz::Authorizer`), the rules listing behind SelfSubjectRulesReview, and the effective
//! caller [`UserInfo`].
//!
//! Invariants: only [`Decision::Allow`] allows; anything else (including an authorizer that
//! has no opinion) denies. Every authenticated user carries `system:authenticated`.

use std::collections::BTreeMap;

pub use kfsec_authz::{
    Attributes, Decision, NonResourceAttributes, NonResourceRule, RequestAttributes, ResourceAttributes, ResourceRule,
};
use serde::{Deserialize, Serialize};

/// The group every authenticated user carries.
pub const SYSTEM_AUTHENTICATED: &str = "system:authenticated";
/// The anonymous user name.
pub const SYSTEM_ANONYMOUS: &str = "system:anonymous";
/// Service-account user-name prefix: `system:serviceaccount:NS:NAME`.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The effective caller of a request (after impersonation), as in Kubernetes' `UserInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// User name.
    pub username: String,
    /// Optional uid.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Groups, including the implicit ones.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Extra attributes (impersonated `Impersonate-Extra-*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with `groups` plus the implicit groups the authenticator would add: the two
    /// service-account groups for `system:serviceaccount:NS:NAME`, and `system:authenticated`
    /// (unless the user is `system:anonymous`). Each added once.
    pub fn authenticated(username: impl Into<String>, groups: &[String]) -> Self {
        let username = username.into();
        let mut out: Vec<String> = Vec::with_capacity(groups.len() + 3);
        let mut push = |g: String| {
            if !out.contains(&g) {
                out.push(g);
            }
        };
        for g in groups {
            push(g.clone());
        }
        if let Some((ns, _)) = parse_service_account(&username) {
            push("system:serviceaccounts".to_owned());
            push(format!("system:serviceaccounts:{ns}"));
        }
        if username != SYSTEM_ANONYMOUS {
            push(SYSTEM_AUTHENTICATED.to_owned());
        }
        Self {
            username,
            uid: String::new(),
            groups: out,
            extra: BTreeMap::new(),
        }
    }

    /// The identity controllers act as when they call the typed helpers.
    pub fn system() -> Self {
        Self::authenticated("system:kfsec", &["system:masters".to_owned()])
    }
}

/// `(namespace, name)` of `system:serviceaccount:NS:NAME`.
pub fn parse_service_account(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
    let (ns, name) = rest.split_once(':')?;
    if ns.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    Some((ns, name))
}

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
    fn implicit_groups() {
        let u = UserInfo::authenticated("system:serviceaccount:kf:sa", &["x".to_owned()]);
        assert_eq!(
            u.groups,
            vec![
                "x",
                "system:serviceaccounts",
                "system:serviceaccounts:kf",
                "system:authenticated"
            ]
        );
        let a = UserInfo::authenticated(SYSTEM_ANONYMOUS, &[]);
        assert!(a.groups.is_empty());
        let b = UserInfo::authenticated("bob", &[SYSTEM_AUTHENTICATED.to_owned()]);
        assert_eq!(b.groups, vec![SYSTEM_AUTHENTICATED]);
    }

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
