//! The authenticated caller and the Kubernetes user-naming rules, in one place: service-account
//! user names (`system:serviceaccount:NS:NAME`), their groups (`system:serviceaccounts`,
//! `system:serviceaccounts:NS`), `system:authenticated`, `system:anonymous`, `system:masters`, and
//! the Kubernetes [`UserInfo`] built from an [`Identity`].
//!
//! Invariants: handlers receive an [`Identity`], never a raw cookie or token; an `Identity`
//! exists only after authentication succeeded. A service-account user name parses only with
//! exactly two non-empty parts after the prefix (Kubernetes' rule); the implicit groups are added
//! once each, in the API server's order, and never to `system:anonymous`. These helpers only
//! compute names; they never decide anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::null_default;

/// The superuser group: always allowed, like the API server's privileged-group authorizer.
pub const SYSTEM_MASTERS: &str = "system:masters";
/// The group every authenticated user carries.
pub const SYSTEM_AUTHENTICATED: &str = "system:authenticated";
/// The group of anonymous requests.
pub const SYSTEM_UNAUTHENTICATED: &str = "system:unauthenticated";
/// The anonymous user name.
pub const SYSTEM_ANONYMOUS: &str = "system:anonymous";
/// Service-account user names start with this prefix: `system:serviceaccount:NS:NAME`.
pub const SERVICE_ACCOUNT_USER_PREFIX: &str = "system:serviceaccount:";
/// The group of all service accounts; `system:serviceaccounts:NS` is the per-namespace group.
pub const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";
/// The user kfsec's own controllers act as (a member of [`SYSTEM_MASTERS`]).
pub const KFSEC_SYSTEM_USER: &str = "system:kfsec";

/// The group bound to `cluster-admin` at first start (kfsec's own space, see
/// [`is_reserved_group`]).
pub const KFSEC_ADMINS: &str = "kfsec:admins";
/// The spaces of group names that carry meaning only kfsec may assign: Kubernetes' `system:`
/// (`system:masters` is every permission) and kfsec's `kfsec:` ([`KFSEC_ADMINS`] is bound to
/// `cluster-admin`). Matched without regard to ASCII case.
pub const RESERVED_GROUP_PREFIXES: [&str; 2] = ["system:", "kfsec:"];

/// Whether `group` lies in a reserved space ([`RESERVED_GROUP_PREFIXES`]): a group of that name
/// from outside kfsec (an upstream identity provider's) must never reach RBAC.
pub fn is_reserved_group(group: &str) -> bool {
    RESERVED_GROUP_PREFIXES
        .iter()
        .any(|p| group.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p)))
}

/// `system:serviceaccount:NS:NAME`.
pub fn service_account_username(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNT_USER_PREFIX}{namespace}:{name}")
}

/// `(namespace, name)` of a service-account user name; `None` for other users. Like Kubernetes,
/// exactly two non-empty `:`-separated parts must follow the prefix.
pub fn parse_service_account_username(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix(SERVICE_ACCOUNT_USER_PREFIX)?;
    let (namespace, name) = rest.split_once(':')?;
    if namespace.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    Some((namespace, name))
}

/// `system:serviceaccounts:NS`.
pub fn service_account_namespace_group(namespace: &str) -> String {
    format!("{SERVICE_ACCOUNTS_GROUP}:{namespace}")
}

/// The groups of a service account in `namespace`: `system:serviceaccounts` and
/// `system:serviceaccounts:NS`.
pub fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![
        SERVICE_ACCOUNTS_GROUP.to_owned(),
        service_account_namespace_group(namespace),
    ]
}

/// The groups the API server's authenticator attaches to `user`: the given groups, then the two
/// service-account groups for a service account, then `system:authenticated` unless the user is
/// `system:anonymous` (each added once).
pub fn authenticated_groups(user: &str, groups: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(groups.len() + 3);
    let mut push = |g: String| {
        if !out.contains(&g) {
            out.push(g);
        }
    };
    for g in groups {
        push(g.clone());
    }
    if let Some((namespace, _)) = parse_service_account_username(user) {
        for g in service_account_groups(namespace) {
            push(g);
        }
    }
    if user != SYSTEM_ANONYMOUS {
        push(SYSTEM_AUTHENTICATED.to_owned());
    }
    out
}

/// Who is calling: a user name (an email for IdP users) and the groups they belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user name, e.g. `user@example.com` or `system:serviceaccount:ns:name`.
    pub user: String,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Identity {
    /// An identity with the given name and groups.
    pub fn new(user: impl Into<String>, groups: Vec<String>) -> Self {
        Self {
            user: user.into(),
            groups,
        }
    }

    /// The identity of service account `namespace/name`, with its two groups.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self::new(
            service_account_username(namespace, name),
            service_account_groups(namespace),
        )
    }
}

/// `authentication.k8s.io/v1 UserInfo`: the effective caller of a Kubernetes request (after
/// impersonation), as sent in TokenReview, AdmissionReview and the authorizer's attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// User name.
    #[serde(default, deserialize_with = "null_default")]
    pub username: String,
    /// Optional uid.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Groups, including the implicit ones.
    #[serde(default, deserialize_with = "null_default", skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Extra attributes (impersonated `Impersonate-Extra-*`).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// Whether `other` is the same user, field by field: `==` without a call into `memcmp`
    /// per string ([`crate::same`]; not constant-time: a user's fields are not secret).
    pub fn same_as(&self, other: &UserInfo) -> bool {
        crate::same::str(&self.username, &other.username)
            && crate::same::str(&self.uid, &other.uid)
            && crate::same::strs(&self.groups, &other.groups)
            && self.extra.len() == other.extra.len()
            && self
                .extra
                .iter()
                .zip(&other.extra)
                .all(|((k, v), (k2, v2))| crate::same::str(k, k2) && crate::same::strs(v, v2))
    }

    /// A user with `groups` plus the implicit groups the authenticator adds
    /// ([`authenticated_groups`]).
    pub fn authenticated(username: impl Into<String>, groups: &[String]) -> Self {
        let username = username.into();
        Self {
            groups: authenticated_groups(&username, groups),
            username,
            uid: String::new(),
            extra: BTreeMap::new(),
        }
    }

    /// The identity kfsec's controllers act as ([`KFSEC_SYSTEM_USER`] in [`SYSTEM_MASTERS`]).
    pub fn system() -> Self {
        Self::authenticated(KFSEC_SYSTEM_USER, &[SYSTEM_MASTERS.to_owned()])
    }
}

impl From<&Identity> for UserInfo {
    /// The Kubernetes user of an authenticated caller: its name, and its groups plus the
    /// implicit ones.
    fn from(identity: &Identity) -> Self {
        Self::authenticated(identity.user.clone(), &identity.groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_as_is_equality_field_by_field() {
        let base = UserInfo {
            username: "alice@example.com".into(),
            uid: "1000".into(),
            groups: vec!["team".into(), "system:authenticated".into()],
            extra: BTreeMap::from([("scopes".to_owned(), vec!["a".to_owned(), "b".to_owned()])]),
        };
        assert!(base.same_as(&base.clone()));
        let variants: Vec<fn(&mut UserInfo)> = vec![
            |u| u.username.push('x'),
            |u| u.uid.clear(),
            |u| u.groups.reverse(),
            |u| drop(u.groups.pop()),
            |u| u.groups.push(String::new()),
            |u| u.extra.clear(),
            |u| drop(u.extra.insert("scopes".into(), vec!["a".into()])),
            |u| drop(u.extra.insert("scopez".into(), vec![])),
            |u| {
                let v = u.extra.remove("scopes").unwrap_or_default();
                u.extra.insert("scopex".into(), v);
            },
        ];
        for (i, change) in variants.iter().enumerate() {
            let mut other = base.clone();
            change(&mut other);
            assert_eq!(base.same_as(&other), base == other, "variant {i}");
            assert!(!base.same_as(&other), "variant {i}");
            assert!(!other.same_as(&base), "variant {i}");
        }
    }

    #[test]
    fn service_account_names() {
        assert_eq!(service_account_username("ns", "sa"), "system:serviceaccount:ns:sa");
        assert_eq!(
            parse_service_account_username("system:serviceaccount:ns:sa"),
            Some(("ns", "sa"))
        );
        assert_eq!(parse_service_account_username("system:serviceaccount:ns"), None);
        assert_eq!(parse_service_account_username("system:serviceaccount::sa"), None);
        assert_eq!(parse_service_account_username("system:serviceaccount:a:b:c"), None);
        assert_eq!(parse_service_account_username("alice"), None);
        assert_eq!(
            Identity::service_account("kf", "sa"),
            Identity::new(
                "system:serviceaccount:kf:sa",
                vec!["system:serviceaccounts".into(), "system:serviceaccounts:kf".into()]
            )
        );
    }

    #[test]
    fn implicit_groups_added_once() {
        assert_eq!(
            authenticated_groups("system:serviceaccount:kf:default-editor", &["x".to_owned()]),
            vec![
                "x",
                "system:serviceaccounts",
                "system:serviceaccounts:kf",
                "system:authenticated"
            ]
        );
        assert_eq!(
            authenticated_groups("alice", &["system:authenticated".to_owned()]),
            vec!["system:authenticated"]
        );
        assert!(authenticated_groups(SYSTEM_ANONYMOUS, &[]).is_empty());
        let u = UserInfo::from(&Identity::service_account("kf", "sa"));
        assert_eq!(u.username, "system:serviceaccount:kf:sa");
        assert_eq!(
            u.groups,
            vec![
                "system:serviceaccounts",
                "system:serviceaccounts:kf",
                "system:authenticated"
            ]
        );
    }

    #[test]
    fn user_info_wire() {
        let u: UserInfo = serde_json::from_str(r#"{"username":"a","groups":null,"extra":null}"#).unwrap();
        assert_eq!(
            u,
            UserInfo {
                username: "a".into(),
                ..UserInfo::default()
            }
        );
        assert_eq!(serde_json::to_string(&u).unwrap(), r#"{"username":"a"}"#);
    }

    #[test]
    fn reserved_group_spaces_are_matched_in_any_ascii_case() {
        for g in [
            SYSTEM_MASTERS,
            KFSEC_ADMINS,
            "kfsec:s3",
            "KFSEC:Admins",
            "System:Masters",
            "kfsec:",
            "system:",
        ] {
            assert!(is_reserved_group(g), "{g}");
        }
        for g in [
            "kfsec",
            "kfsec-admins",
            "kubeflow-admins",
            "team:kfsec:admins",
            " kfsec:admins",
            "kfse",
            "ſystem:masters",
            "kfsec\u{0}:admins",
        ] {
            assert!(!is_reserved_group(g), "{g}");
        }
    }
}
