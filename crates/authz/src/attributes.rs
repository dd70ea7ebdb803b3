//! Request attributes (who asks to do what, where). The identity conventions of the Kubernetes API
//! server (service-account user names, their implicit groups, `system:authenticated`,
//! `system:masters`) are [`kfsec_types::identity`]'s.
//!
//! Invariants: an [`Attributes`] is either a resource request or a non-resource request, never
//! both; a non-resource request has no namespace, so only ClusterRoleBindings can grant it. The
//! helpers here only compute names; they never decide anything.

use kfsec_types::Identity;
use serde::Serialize;

/// What a resource request asks for (`/apis/GROUP/VERSION/namespaces/NS/RESOURCE/NAME/SUB`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAttributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or a
    /// custom verb (`impersonate`, `readArtifact`, …).
    pub verb: String,
    /// API group; `""` for the core group.
    pub api_group: String,
    /// Resource (plural), e.g. `pods`.
    pub resource: String,
    /// Subresource, e.g. `log`; `""` when none.
    pub subresource: String,
    /// Namespace; `""` for cluster-scoped requests.
    pub namespace: String,
    /// Object name; `""` for collection requests.
    pub name: String,
}

/// What a non-resource request asks for (`GET /healthz`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NonResourceAttributes {
    /// Lower-case HTTP verb (`get`, `post`, …).
    pub verb: String,
    /// URL path.
    pub path: String,
}

/// Either kind of request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RequestAttributes {
    /// A request on an API resource.
    Resource(ResourceAttributes),
    /// A request on a plain path.
    NonResource(NonResourceAttributes),
}

/// Everything the authorizer looks at for one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Attributes {
    /// The user name.
    pub user: String,
    /// The user's groups, as authenticated (see [`kfsec_types::identity::authenticated_groups`]). The implicit
    /// service-account groups are also applied by the authorizer itself.
    pub groups: Vec<String>,
    /// What is asked.
    pub request: RequestAttributes,
}

impl Attributes {
    /// A resource request; add a subresource or name with the `with_*` methods.
    pub fn resource(
        user: impl Into<String>,
        groups: Vec<String>,
        verb: impl Into<String>,
        api_group: impl Into<String>,
        resource: impl Into<String>,
        namespace: impl Into<String>,
    ) -> Self {
        Self {
            user: user.into(),
            groups,
            request: RequestAttributes::Resource(ResourceAttributes {
                verb: verb.into(),
                api_group: api_group.into(),
                resource: resource.into(),
                subresource: String::new(),
                namespace: namespace.into(),
                name: String::new(),
            }),
        }
    }

    /// A non-resource request.
    pub fn non_resource(
        user: impl Into<String>,
        groups: Vec<String>,
        verb: impl Into<String>,
        path: impl Into<String>,
    ) -> Self {
        Self {
            user: user.into(),
            groups,
            request: RequestAttributes::NonResource(NonResourceAttributes {
                verb: verb.into(),
                path: path.into(),
            }),
        }
    }

    /// Attributes for `identity` (its groups are used as given).
    pub fn for_identity(identity: &Identity, request: RequestAttributes) -> Self {
        Self {
            user: identity.user.clone(),
            groups: identity.groups.clone(),
            request,
        }
    }

    /// The same request with a subresource (no effect on a non-resource request).
    #[must_use]
    pub fn with_subresource(mut self, subresource: impl Into<String>) -> Self {
        if let RequestAttributes::Resource(r) = &mut self.request {
            r.subresource = subresource.into();
        }
        self
    }

    /// The same request naming one object (no effect on a non-resource request).
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        if let RequestAttributes::Resource(r) = &mut self.request {
            r.name = name.into();
        }
        self
    }

    /// The verb.
    pub fn verb(&self) -> &str {
        match &self.request {
            RequestAttributes::Resource(r) => &r.verb,
            RequestAttributes::NonResource(n) => &n.verb,
        }
    }

    /// The namespace; `""` for cluster-scoped and non-resource requests.
    pub fn namespace(&self) -> &str {
        match &self.request {
            RequestAttributes::Resource(r) => &r.namespace,
            RequestAttributes::NonResource(_) => "",
        }
    }

    /// The API server's denial text, e.g. `User "u" cannot list resource "pods" in API group ""
    /// in the namespace "ns"` (the `<resource> is forbidden: ` prefix is the caller's).
    pub fn forbidden_message(&self) -> String {
        match &self.request {
            RequestAttributes::NonResource(n) => {
                format!("User {:?} cannot {} path {:?}", self.user, n.verb, n.path)
            }
            RequestAttributes::Resource(r) => {
                let resource = if r.subresource.is_empty() {
                    r.resource.clone()
                } else {
                    format!("{}/{}", r.resource, r.subresource)
                };
                if r.namespace.is_empty() {
                    format!(
                        "User {:?} cannot {} resource {:?} in API group {:?} at the cluster scope",
                        self.user, r.verb, resource, r.api_group
                    )
                } else {
                    format!(
                        "User {:?} cannot {} resource {:?} in API group {:?} in the namespace {:?}",
                        self.user, r.verb, resource, r.api_group, r.namespace
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn forbidden_messages_match_the_api_server() {
        let a = Attributes::resource("u", vec![], "list", "", "pods", "ns");
        assert_eq!(
            a.forbidden_message(),
            r#"User "u" cannot list resource "pods" in API group "" in the namespace "ns""#
        );
        let a = Attributes::resource("Y", vec![], "impersonate", "", "users", "");
        assert_eq!(
            a.forbidden_message(),
            r#"User "Y" cannot impersonate resource "users" in API group "" at the cluster scope"#
        );
        let a = Attributes::resource("u", vec![], "get", "", "pods", "ns").with_subresource("log");
        assert!(a.forbidden_message().contains(r#"resource "pods/log""#));
        let a = Attributes::non_resource("u", vec![], "get", "/metrics");
        assert_eq!(a.forbidden_message(), r#"User "u" cannot get path "/metrics""#);
    }
}
