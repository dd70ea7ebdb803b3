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
    pub omit_stages: Stages,
}

impl Decision {
    /// Record nothing.
    pub fn none() -> Self {
        Self {
            level: Level::None,
            omit_stages: Stages::default(),
        }
    }
}

/// A set of [`Stage`]s (a policy's `omitStages`), without allocation: decided per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stages(u8);

impl Stages {
    /// The set of `stages`.
    pub fn of(stages: &[Stage]) -> Self {
        stages.iter().copied().collect()
    }

    fn bit(stage: Stage) -> u8 {
        match stage {
            Stage::RequestReceived => 1,
            Stage::ResponseStarted => 2,
            Stage::ResponseComplete => 4,
            Stage::Panic => 8,
        }
    }

    /// Whether `stage` is in the set.
    pub fn contains(&self, stage: &Stage) -> bool {
        self.0 & Self::bit(*stage) != 0
    }

    /// Both sets' stages.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl FromIterator<Stage> for Stages {
    fn from_iter<I: IntoIterator<Item = Stage>>(stages: I) -> Self {
        Self(stages.into_iter().fold(0, |bits, s| bits | Self::bit(s)))
    }
}

/// Verbs the default policy records at `Request` level (writes).
pub const WRITE_VERBS: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

/// A policy file that cannot be used, naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Neither YAML nor JSON.
    #[error("audit policy: {0}")]
    Syntax(String),
    /// A field kfsec does not know or a wrong type, with the field's path (`rules[1].levl`).
    #[error("audit policy: {field}: {message}")]
    Field {
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A semantic problem (apiVersion, kind, a rule with both resources and URLs…).
    #[error("audit policy: {0}")]
    Invalid(String),
}

/// `audit.k8s.io/v1` `Policy` as written in a policy file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyFile {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    rules: Vec<RuleFile>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: bool,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleFile {
    level: Level,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    user_groups: Vec<String>,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
    #[serde(default)]
    omit_stages: Vec<Stage>,
    #[serde(default)]
    omit_managed_fields: Option<bool>,
}

/// `resources[]` of a rule: a group and resource names within it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GroupResources {
    #[serde(default)]
    group: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// One rule: what it matches, and the level and omitted stages when it does.
#[derive(Debug, Clone)]
struct Rule {
    level: Level,
    users: Vec<String>,
    user_groups: Vec<String>,
    verbs: Vec<String>,
    resources: Vec<GroupResources>,
    namespaces: Vec<String>,
    non_resource_urls: Vec<String>,
    omit_stages: Stages,
    omit_managed_fields: Option<bool>,
}

/// A loaded audit policy: ordered rules, first match wins, no match records nothing.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    omit_stages: Stages,
    omit_managed_fields: bool,
}

fn any_or(list: &[String], f: impl Fn(&str) -> bool) -> bool {
    list.is_empty() || list.iter().any(|x| f(x))
}

impl GroupResources {
    fn matches(&self, r: &ResourceAttributes<'_>) -> bool {
        if self.group != "*" && self.group != r.api_group {
            return false;
        }
        let names_ok = self.resource_names.is_empty() || self.resource_names.iter().any(|n| n == r.name);
        if self.resources.is_empty() {
            return names_ok;
        }
        let full = if r.subresource.is_empty() {
            r.resource.to_owned()
        } else {
            format!("{}/{}", r.resource, r.subresource)
        };
        self.resources.iter().any(|pat| {
            let hit = match pat.as_str() {
                "*" => true,
                p if p == full => true,
                // `pods/*`: every subresource of pods (not pods itself).
                p if p
                    .strip_suffix("/*")
                    .is_some_and(|base| base == r.resource && !r.subresource.is_empty()) =>
                {
                    true
                }
                // `*/scale`: that subresource of every resource.
                p if p
                    .strip_prefix("*/")
                    .is_some_and(|sub| !sub.is_empty() && sub == r.subresource) =>
                {
                    true
                }
                _ => false,
            };
            hit && names_ok
        })
    }
}

impl Rule {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        if !any_or(&self.users, |u| u == a.user.username) {
            return false;
        }
        if !any_or(&self.user_groups, |g| a.user.groups.iter().any(|x| x == g)) {
            return false;
        }
        if !any_or(&self.verbs, |v| v == a.verb) {
            return false;
        }
        match &a.resource {
            Some(r) => {
                if !self.non_resource_urls.is_empty() {
                    return false;
                }
                if !any_or(&self.namespaces, |n| n == r.namespace) {
                    return false;
                }
                self.resources.is_empty() || self.resources.iter().any(|g| g.matches(r))
            }
            None => {
                if !self.resources.is_empty() || !self.namespaces.is_empty() {
                    return false;
                }
                any_or(&self.non_resource_urls, |u| match u.strip_suffix('*') {
                    Some(prefix) => a.path.starts_with(prefix),
                    None => a.path == u,
                })
            }
        }
    }
}

/// Whether recording this request's bodies could record a secret or a credential: Secrets
/// (core), everything of `identity.kfsec.io`, token reviews, token requests and service-account
/// tokens. Such requests are capped at `Metadata` by every policy.
pub fn carries_secrets(r: &ResourceAttributes<'_>) -> bool {
    (r.api_group.is_empty() && r.resource == "secrets")
        || r.api_group == crate::event::IDENTITY_GROUP
        || r.resource == "tokenreviews"
        || r.resource == "tokenrequests"
        || r.subresource == "token"
}

impl Policy {
    /// The default policy: `Metadata` for everything, `Request` for writes (`create`, `update`,
    /// `patch`, `delete`, `deletecollection`), stage `RequestReceived` omitted — with the
    /// secret caps every policy has.
    pub fn default_policy() -> Self {
        let rule = |level: Level, verbs: &[&str]| Rule {
            level,
            users: Vec::new(),
            user_groups: Vec::new(),
            verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
            resources: Vec::new(),
            namespaces: Vec::new(),
            non_resource_urls: Vec::new(),
            omit_stages: Stages::default(),
            omit_managed_fields: None,
        };
        Self {
            rules: vec![rule(Level::Request, WRITE_VERBS), rule(Level::Metadata, &[])],
            omit_stages: Stages::of(&[Stage::RequestReceived]),
            omit_managed_fields: false,
        }
    }

    /// Parses a policy file (YAML or JSON): `apiVersion: audit.k8s.io/v1`, `kind: Policy`.
    /// Unknown fields are refused naming their path, as are `audit.k8s.io/v1beta1` (removed
    /// from kube-apiserver in 1.24) and rules mixing `resources` with `nonResourceURLs`.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| {
            PolicyError::Syntax(
                e.to_string()
                    .lines()
                    .next()
                    .map(|l| l.trim_start_matches("error: ").to_owned())
                    .unwrap_or_default(),
            )
        })?;
        let file: PolicyFile = serde_path_to_error::deserialize(value).map_err(|e| PolicyError::Field {
            field: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        match file.api_version.as_deref() {
            Some("audit.k8s.io/v1") => {}
            Some(v) => {
                return Err(PolicyError::Invalid(format!(
                    "apiVersion {v:?} is not supported: use audit.k8s.io/v1"
                )));
            }
            None => return Err(PolicyError::Invalid("apiVersion is required (audit.k8s.io/v1)".into())),
        }
        if file.kind.as_deref() != Some("Policy") {
            return Err(PolicyError::Invalid("kind must be Policy".into()));
        }
        let _ = file.metadata;
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, r) in file.rules.into_iter().enumerate() {
            if !r.resources.is_empty() && !r.non_resource_urls.is_empty() {
                return Err(PolicyError::Invalid(format!(
                    "rules[{i}]: resources and nonResourceURLs are mutually exclusive"
                )));
            }
            if !r.namespaces.is_empty() && !r.non_resource_urls.is_empty() {
                return Err(PolicyError::Invalid(format!(
                    "rules[{i}]: namespaces and nonResourceURLs are mutually exclusive"
                )));
            }
            for (j, u) in r.non_resource_urls.iter().enumerate() {
                let star = u.find('*');
                if star.is_some_and(|p| p + 1 != u.len()) || !(u.starts_with('/') || u == "*") {
                    return Err(PolicyError::Invalid(format!(
                        "rules[{i}].nonResourceURLs[{j}] {u:?}: a path starting with / and `*` only as its last character"
                    )));
                }
            }
            for (j, g) in r.resources.iter().enumerate() {
                for (k, res) in g.resources.iter().enumerate() {
                    let ok = match res.split_once('/') {
                        None => res == "*" || !res.contains('*'),
                        Some((a, b)) => {
                            !a.is_empty()
                                && !b.is_empty()
                                && !b.contains('/')
                                && (a == "*" || !a.contains('*'))
                                && (b == "*" || !b.contains('*'))
                                && !(a == "*" && b == "*")
                        }
                    };
                    if !ok || res.is_empty() {
                        return Err(PolicyError::Invalid(format!(
                            "rules[{i}].resources[{j}].resources[{k}] {res:?}: use a resource, `*`, `resource/*` or `*/subresource`"
                        )));
                    }
                }
            }
            rules.push(Rule {
                level: r.level,
                users: r.users,
                user_groups: r.user_groups,
                verbs: r.verbs,
                resources: r.resources,
                namespaces: r.namespaces,
                non_resource_urls: r.non_resource_urls,
                omit_stages: r.omit_stages.into_iter().collect(),
                omit_managed_fields: r.omit_managed_fields,
            });
        }
        Ok(Self {
            rules,
            omit_stages: file.omit_stages.into_iter().collect(),
            omit_managed_fields: file.omit_managed_fields,
        })
    }

    fn first_match(&self, a: &Attributes<'_>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(a))
    }

    /// The level and omitted stages for a request: the first matching rule's (no match:
    /// `None`), its `omitStages` unioned with the policy's; `Request` and `RequestResponse`
    /// are capped at `Metadata` for non-resource requests (as kube-apiserver does) and for
    /// requests that [carry secrets](carries_secrets).
    pub fn decide(&self, a: &Attributes<'_>) -> Decision {
        let Some(rule) = self.first_match(a) else {
            return Decision::none();
        };
        let capped = match &a.resource {
            None => true,
            Some(r) => carries_secrets(r),
        };
        let level = if capped {
            rule.level.min(Level::Metadata)
        } else {
            rule.level
        };
        Decision {
            level,
            omit_stages: self.omit_stages.union(rule.omit_stages),
        }
    }

    /// Whether `metadata.managedFields` is left out of recorded bodies for this request (the
    /// matching rule's `omitManagedFields`, else the policy's).
    pub fn omit_managed_fields(&self, a: &Attributes<'_>) -> bool {
        self.first_match(a)
            .and_then(|r| r.omit_managed_fields)
            .unwrap_or(self.omit_managed_fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_sets_hold_exactly_their_stages() {
        let all = [
            Stage::RequestReceived,
            Stage::ResponseStarted,
            Stage::ResponseComplete,
            Stage::Panic,
        ];
        let a = Stages::of(&[Stage::RequestReceived]);
        let b = Stages::of(&[Stage::Panic, Stage::Panic]);
        for s in all {
            assert_eq!(a.contains(&s), s == Stage::RequestReceived);
            assert_eq!(
                a.union(b).contains(&s),
                matches!(s, Stage::RequestReceived | Stage::Panic)
            );
            assert!(!Stages::default().contains(&s));
            assert!(Stages::of(&all).contains(&s));
        }
    }

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            username: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn res<'a>(
        group: &'a str,
        resource: &'a str,
        sub: &'a str,
        ns: &'a str,
        name: &'a str,
    ) -> Option<ResourceAttributes<'a>> {
        Some(ResourceAttributes {
            api_group: group,
            resource,
            subresource: sub,
            namespace: ns,
            name,
        })
    }

    /// The example policy of the Kubernetes auditing documentation (audit-policy.yaml), in
    /// YAML, as kube-apiserver reads it.
    const K8S_EXAMPLE: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages:
  - "RequestReceived"
rules:
  - level: RequestResponse
    resources:
    - group: ""
      resources: ["pods"]
  - level: Metadata
    resources:
    - group: ""
      resources: ["pods/log", "pods/status"]
  - level: None
    resources:
    - group: ""
      resources: ["configmaps"]
      resourceNames: ["controller-leader"]
  - level: None
    users: ["system:kube-proxy"]
    verbs: ["watch"]
    resources:
    - group: ""
      resources: ["endpoints", "services"]
  - level: None
    userGroups: ["system:authenticated"]
    nonResourceURLs:
    - "/api*"
    - "/version"
  - level: Request
    resources:
    - group: ""
      resources: ["configmaps"]
    namespaces: ["kube-system"]
  - level: Metadata
    resources:
    - group: ""
      resources: ["secrets", "configmaps"]
  - level: Request
    resources:
    - group: ""
    - group: "extensions"
  - level: Metadata
    omitStages:
      - "RequestReceived"
"#;

    #[test]
    fn the_kubernetes_documentation_example_decides_as_documented() {
        let p = Policy::parse(K8S_EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        let alice = user("alice", &["system:authenticated"]);
        let proxy = user("system:kube-proxy", &[]);
        let cases: Vec<(&UserInfo, &str, Option<ResourceAttributes<'_>>, &str, Level)> = vec![
            // Pods at RequestResponse.
            (
                &alice,
                "create",
                res("", "pods", "", "ns", ""),
                "",
                Level::RequestResponse,
            ),
            // pods/log: Metadata (the second rule; `pods` does not match the subresource).
            (&alice, "get", res("", "pods", "log", "ns", "p"), "", Level::Metadata),
            // The leader ConfigMap: None; another ConfigMap in kube-system: Request.
            (
                &alice,
                "update",
                res("", "configmaps", "", "kube-system", "controller-leader"),
                "",
                Level::None,
            ),
            (
                &alice,
                "update",
                res("", "configmaps", "", "kube-system", "other"),
                "",
                Level::Request,
            ),
            // ConfigMaps elsewhere: Metadata; Secrets: Metadata.
            (
                &alice,
                "get",
                res("", "configmaps", "", "default", "x"),
                "",
                Level::Metadata,
            ),
            (
                &alice,
                "get",
                res("", "secrets", "", "default", "x"),
                "",
                Level::Metadata,
            ),
            // kube-proxy watching endpoints: None; listing them: core group → Request.
            (&proxy, "watch", res("", "endpoints", "", "", ""), "", Level::None),
            (&proxy, "list", res("", "endpoints", "", "", ""), "", Level::Request),
            // Non-resource /api* and /version for authenticated users: None.
            (&alice, "get", None, "/apis/apps/v1", Level::None),
            (&alice, "get", None, "/version", Level::None),
            // Other groups fall to the catch-all Metadata; other URLs too.
            (
                &alice,
                "create",
                res("apps", "deployments", "", "ns", ""),
                "",
                Level::Metadata,
            ),
            (&alice, "get", None, "/healthz", Level::Metadata),
            (&alice, "get", None, "/versions", Level::Metadata),
        ];
        for (u, verb, resource, path, want) in cases {
            let a = Attributes {
                user: u,
                verb,
                resource,
                path,
            };
            let d = p.decide(&a);
            assert_eq!(d.level, want, "{verb} {resource:?} {path}");
            assert_eq!(d.omit_stages, Stages::of(&[Stage::RequestReceived]));
        }
    }

    #[test]
    fn resource_wildcards_and_cluster_scope() {
        let p = Policy::parse(
            r#"{"apiVersion":"audit.k8s.io/v1","kind":"Policy","rules":[
              {"level":"RequestResponse","resources":[{"group":"*","resources":["*/scale"]}]},
              {"level":"Request","resources":[{"group":"","resources":["pods/*"]}]},
              {"level":"Metadata","namespaces":[""]},
              {"level":"None","omitStages":["ResponseStarted"]}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let u = user("bob", &[]);
        let d = |verb, r, path| {
            p.decide(&Attributes {
                user: &u,
                verb,
                resource: r,
                path,
            })
        };
        assert_eq!(
            d("update", res("apps", "deployments", "scale", "ns", "d"), "").level,
            Level::RequestResponse
        );
        assert_eq!(d("get", res("", "pods", "exec", "ns", "p"), "").level, Level::Request);
        // `pods/*` is every subresource, not pods itself: pods in a namespace fall through.
        assert_eq!(d("get", res("", "pods", "", "ns", "p"), "").level, Level::None);
        // namespaces: [""] matches cluster-scoped only.
        assert_eq!(d("get", res("", "nodes", "", "", "n"), "").level, Level::Metadata);
        assert_eq!(
            d("get", res("", "configmaps", "", "ns", "c"), "").omit_stages,
            Stages::of(&[Stage::ResponseStarted])
        );
        // A rule with namespaces never matches non-resource requests.
        assert_eq!(d("get", None, "/metrics").level, Level::None);
    }

    #[test]
    fn bodies_of_secrets_and_credentials_are_never_recorded_whatever_the_file_says() {
        let p = Policy::parse("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: RequestResponse\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let u = user("admin", &["system:masters"]);
        let d = |verb, r| {
            p.decide(&Attributes {
                user: &u,
                verb,
                resource: r,
                path: "/x",
            })
            .level
        };
        assert_eq!(d("create", res("", "secrets", "", "ns", "s")), Level::Metadata);
        assert_eq!(
            d("create", res("", "serviceaccounts", "token", "ns", "sa")),
            Level::Metadata
        );
        assert_eq!(
            d("create", res("authentication.k8s.io", "tokenreviews", "", "", "")),
            Level::Metadata
        );
        assert_eq!(
            d("login", res(crate::event::IDENTITY_GROUP, "logins", "", "", "alice")),
            Level::Metadata
        );
        assert_eq!(
            d("issue", res(crate::event::IDENTITY_GROUP, "tokens", "", "", "")),
            Level::Metadata
        );
        // Non-resource requests: Metadata at most, as kube-apiserver does.
        assert_eq!(d("post", None), Level::Metadata);
        // Others keep their level; a group named like core's secrets is not capped.
        assert_eq!(
            d("create", res("", "configmaps", "", "ns", "c")),
            Level::RequestResponse
        );
        assert_eq!(
            d("create", res("example.com", "secrets", "", "ns", "c")),
            Level::RequestResponse
        );
    }

    #[test]
    fn omit_managed_fields_is_the_rules_else_the_policys() {
        let p = Policy::parse(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitManagedFields: true\nrules:\n- level: Request\n  verbs: [create]\n  omitManagedFields: false\n- level: Metadata\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let u = user("a", &[]);
        let at = |verb| Attributes {
            user: &u,
            verb,
            resource: res("", "configmaps", "", "ns", "c"),
            path: "/api",
        };
        assert!(!p.omit_managed_fields(&at("create")));
        assert!(p.omit_managed_fields(&at("update")));
        assert!(!Policy::default_policy().omit_managed_fields(&at("update")));
    }

    #[test]
    fn the_default_policy_is_metadata_with_request_for_writes() {
        let p = Policy::default_policy();
        let u = user("alice", &[]);
        let d = |verb, r| {
            p.decide(&Attributes {
                user: &u,
                verb,
                resource: r,
                path: "/api",
            })
            .level
        };
        for verb in WRITE_VERBS {
            assert_eq!(d(verb, res("", "configmaps", "", "ns", "")), Level::Request, "{verb}");
            assert_eq!(d(verb, res("", "secrets", "", "ns", "")), Level::Metadata, "{verb}");
        }
        assert_eq!(d("get", res("", "configmaps", "", "ns", "c")), Level::Metadata);
        assert_eq!(
            d("login", res(crate::event::IDENTITY_GROUP, "logins", "", "", "a")),
            Level::Metadata
        );
        assert_eq!(d("get", None), Level::Metadata);
        assert_eq!(d("post", None), Level::Metadata);
    }

    #[test]
    fn files_kfsec_cannot_honour_are_refused_naming_the_problem() {
        let err = |t: &str| Policy::parse(t).err().map(|e| e.to_string()).unwrap_or_default();
        let head = "apiVersion: audit.k8s.io/v1\nkind: Policy\n";
        assert!(
            err(&format!("{head}rules:\n- level: Metadata\n  verb: [get]\n")).contains("rules[0]"),
            "{}",
            err(&format!("{head}rules:\n- level: Metadata\n  verb: [get]\n"))
        );
        assert!(err(&format!("{head}rules:\n- level: Metadata\n  verb: [get]\n")).contains("verb"));
        assert!(err(&format!("{head}rulez: []\n")).contains("rulez"));
        assert!(err(&format!("{head}rules:\n- level: Verbose\n")).contains("rules[0].level"));
        assert!(err("apiVersion: audit.k8s.io/v1beta1\nkind: Policy\n").contains("audit.k8s.io/v1"));
        assert!(err("kind: Policy\n").contains("apiVersion"));
        assert!(err("apiVersion: audit.k8s.io/v1\nkind: Pod\n").contains("kind"));
        assert!(
            err(&format!("{head}rules:\n- level: None\n  nonResourceURLs: ['/a*b']\n")).contains("nonResourceURLs[0]")
        );
        assert!(
            err(&format!(
                "{head}rules:\n- level: None\n  nonResourceURLs: ['/a']\n  resources: [{{group: ''}}]\n"
            ))
            .contains("exclusive")
        );
        assert!(
            err(&format!(
                "{head}rules:\n- level: None\n  resources: [{{resources: ['p*ds']}}]\n"
            ))
            .contains("resources[0].resources[0]")
        );
        assert!(err("[: :").contains("audit policy"));
        // Kubernetes' metadata is accepted.
        assert!(Policy::parse(&format!("{head}metadata: {{name: p}}\nrules: []\n")).is_ok());
    }
}
