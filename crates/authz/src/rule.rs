//! Rule matching with the Kubernetes RBAC semantics, in two forms: the plain predicates
//! ([`rule_allows`] and friends, mirroring `rbac/v1/evaluation_helpers.go`), and [`CompiledRules`],
//! the same decision precomputed per role for the hot path.
//!
//! Semantics: a verb, API group or resource matches when equal or when the rule lists `*`; a
//! request with a subresource matches on `resource/subresource` or `*/subresource` (`pods/*` is a
//! literal, as in Kubernetes); a rule with `resourceNames` matches only requests whose name is
//! listed (so never a nameless `list` or `create`); a non-resource URL matches `*`, exactly, or by
//! prefix when it ends in `*`. Invariant: for every rule set and request,
//! `CompiledRules::new(rules).allows(req).is_some() == rules.iter().any(|r| rule_allows(req, r))`.

use rustc_hash::FxHashMap;

use crate::attributes::{NonResourceAttributes, RequestAttributes, ResourceAttributes};
use kfsec_types::rbac::{PolicyRule, WILDCARD};

/// Whether the rule lists `verb` or `*`.
pub fn verb_matches(rule: &PolicyRule, verb: &str) -> bool {
    rule.verbs.iter().any(|v| v == WILDCARD || v == verb)
}

/// Whether the rule lists `api_group` or `*`.
pub fn api_group_matches(rule: &PolicyRule, api_group: &str) -> bool {
    rule.api_groups.iter().any(|g| g == WILDCARD || g == api_group)
}

/// Whether the rule lists `resource[/subresource]`, `*`, or `*/subresource`.
pub fn resource_matches(rule: &PolicyRule, resource: &str, subresource: &str) -> bool {
    rule.resources.iter().any(|r| {
        r == WILDCARD
            || combined_eq(r, resource, subresource)
            || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
    })
}

/// Whether the rule has no `resourceNames` or lists `name`.
pub fn resource_name_matches(rule: &PolicyRule, name: &str) -> bool {
    rule.resource_names.is_empty() || rule.resource_names.iter().any(|n| n == name)
}

/// Whether the rule lists `path`, `*`, or a `prefix*` that `path` starts with.
pub fn non_resource_url_matches(rule: &PolicyRule, path: &str) -> bool {
    rule.non_resource_urls.iter().any(|u| url_matches(u, path))
}

fn url_matches(rule_url: &str, path: &str) -> bool {
    rule_url == WILDCARD
        || rule_url == path
        || (rule_url.ends_with('*') && path.starts_with(rule_url.trim_end_matches('*')))
}

/// Whether one rule allows the request (Kubernetes `RuleAllows`).
pub fn rule_allows(request: &RequestAttributes, rule: &PolicyRule) -> bool {
    match request {
        RequestAttributes::Resource(r) => {
            verb_matches(rule, &r.verb)
                && api_group_matches(rule, &r.api_group)
                && resource_matches(rule, &r.resource, &r.subresource)
                && resource_name_matches(rule, &r.name)
        }
        RequestAttributes::NonResource(n) => verb_matches(rule, &n.verb) && non_resource_url_matches(rule, &n.path),
    }
}

/// `full == resource` when there is no subresource, else `full == resource + "/" + subresource`,
/// without allocating.
fn combined_eq(full: &str, resource: &str, subresource: &str) -> bool {
    if subresource.is_empty() {
        return full == resource;
    }
    full.len() == resource.len() + 1 + subresource.len()
        && full.starts_with(resource)
        && full.as_bytes().get(resource.len()) == Some(&b'/')
        && full.ends_with(subresource)
}

/// The well-known verbs get a bit each; others are compared as text.
fn verb_bit(verb: &str) -> Option<u16> {
    Some(match verb {
        "get" => 1,
        "list" => 1 << 1,
        "watch" => 1 << 2,
        "create" => 1 << 3,
        "update" => 1 << 4,
        "patch" => 1 << 5,
        "delete" => 1 << 6,
        "deletecollection" => 1 << 7,
        _ => return None,
    })
}

/// A rule's verbs, precomputed.
#[derive(Debug, Clone, Default)]
struct VerbSet {
    all: bool,
    bits: u16,
    other: Box<[Box<str>]>,
}

impl VerbSet {
    fn new(verbs: &[String]) -> Self {
        let mut set = Self::default();
        let mut other = Vec::new();
        for verb in verbs {
            if verb == WILDCARD {
                set.all = true;
            } else if let Some(bit) = verb_bit(verb) {
                set.bits |= bit;
            } else {
                other.push(verb.as_str().into());
            }
        }
        set.other = other.into_boxed_slice();
        set
    }

    #[inline]
    fn contains(&self, verb: &str) -> bool {
        self.all
            || match verb_bit(verb) {
                Some(bit) => self.bits & bit != 0,
                None => self.other.iter().any(|o| &**o == verb),
            }
    }
}

/// The verb and name conditions shared by every (group, resource) pair of one rule.
#[derive(Debug, Clone)]
struct Grant {
    verbs: VerbSet,
    /// `None`: any name; `Some`: only these names.
    names: Option<Box<[Box<str>]>>,
    /// Index of the source rule in [`CompiledRules::rules`].
    rule: u32,
}

impl Grant {
    #[inline]
    fn allows(&self, verb: &str, name: &str) -> bool {
        self.verbs.contains(verb)
            && self
                .names
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| &**n == name))
    }
}

/// One exact `(group, resource)` pair of a rule: `sub` is `None` for `pods`, `Some("log")` for
/// `pods/log`.
#[derive(Debug, Clone)]
struct ExactEntry {
    sub: Option<Box<str>>,
    grant: u32,
}

/// The resource side of a pair that involves a wildcard.
#[derive(Debug, Clone)]
enum ResourcePattern {
    /// `*`.
    Any,
    /// `*/sub`.
    AnyWithSub(Box<str>),
    /// A literal `resource[/sub]`.
    Literal(Box<str>),
}

/// A `(group, resource)` pair with a wildcard group or resource; scanned linearly.
#[derive(Debug, Clone)]
struct WildEntry {
    /// `None` for `*`.
    group: Option<Box<str>>,
    resource: ResourcePattern,
    grant: u32,
}

impl WildEntry {
    fn matches(&self, r: &ResourceAttributes) -> bool {
        self.group.as_deref().is_none_or(|g| g == r.api_group)
            && match &self.resource {
                ResourcePattern::Any => true,
                ResourcePattern::AnyWithSub(sub) => !r.subresource.is_empty() && **sub == *r.subresource,
                ResourcePattern::Literal(full) => combined_eq(full, &r.resource, &r.subresource),
            }
    }
}

/// A role's rules indexed for fast evaluation: exact `(group, resource)` pairs go in a hash map,
/// pairs with wildcards in a short list, non-resource rules in another.
#[derive(Debug, Clone, Default)]
pub struct CompiledRules {
    rules: Vec<PolicyRule>,
    grants: Vec<Grant>,
    exact: FxHashMap<Box<str>, FxHashMap<Box<str>, Vec<ExactEntry>>>,
    wild: Vec<WildEntry>,
    /// `(grant, url)` pairs.
    non_resource: Vec<(u32, Box<str>)>,
}

impl CompiledRules {
    /// Compiles `rules`.
    pub fn new(rules: Vec<PolicyRule>) -> Self {
        let mut compiled = Self::default();
        for (index, rule) in rules.iter().enumerate() {
            let grant = u32::try_from(compiled.grants.len()).unwrap_or(u32::MAX);
            compiled.grants.push(Grant {
                verbs: VerbSet::new(&rule.verbs),
                names: (!rule.resource_names.is_empty())
                    .then(|| rule.resource_names.iter().map(|n| n.as_str().into()).collect()),
                rule: u32::try_from(index).unwrap_or(u32::MAX),
            });
            for group in &rule.api_groups {
                for resource in &rule.resources {
                    compiled.add_pair(group, resource, grant);
                }
            }
            for url in &rule.non_resource_urls {
                compiled.non_resource.push((grant, url.as_str().into()));
            }
        }
        compiled.rules = rules;
        compiled
    }

    fn add_pair(&mut self, group: &str, resource: &str, grant: u32) {
        let wild_group = group == WILDCARD;
        let pattern = if resource == WILDCARD {
            Some(ResourcePattern::Any)
        } else {
            resource
                .strip_prefix("*/")
                .map(|sub| ResourcePattern::AnyWithSub(sub.into()))
        };
        if wild_group || pattern.is_some() {
            self.wild.push(WildEntry {
                group: (!wild_group).then(|| group.into()),
                resource: pattern.unwrap_or_else(|| ResourcePattern::Literal(resource.into())),
                grant,
            });
            return;
        }
        let (base, sub) = match resource.split_once('/') {
            Some((base, sub)) => (base, Some(sub.into())),
            None => (resource, None),
        };
        self.exact
            .entry(group.into())
            .or_default()
            .entry(base.into())
            .or_default()
            .push(ExactEntry { sub, grant });
    }

    /// The source rules, in order.
    pub fn rules(&self) -> &[PolicyRule] {
        &self.rules
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule (by index) that allows the request, if any.
    pub fn allows(&self, request: &RequestAttributes) -> Option<&PolicyRule> {
        let grant = match request {
            RequestAttributes::Resource(r) => self.allows_resource(r, true),
            RequestAttributes::NonResource(n) => self.allows_non_resource(n),
        }?;
        self.grants
            .get(grant as usize)
            .and_then(|g| self.rules.get(g.rule as usize))
    }

    /// Whether any rule allows the request.
    #[inline]
    pub fn allows_any(&self, request: &RequestAttributes) -> bool {
        match request {
            RequestAttributes::Resource(r) => self.allows_resource(r, false).is_some(),
            RequestAttributes::NonResource(n) => self.allows_non_resource(n).is_some(),
        }
    }

    fn grant_allows(&self, grant: u32, verb: &str, name: &str) -> bool {
        self.grants.get(grant as usize).is_some_and(|g| g.allows(verb, name))
    }

    /// The lowest-indexed allowing grant when `first`, else any allowing grant (faster).
    fn allows_resource(&self, r: &ResourceAttributes, first: bool) -> Option<u32> {
        if r.resource.contains('/') {
            // Rules are indexed by the part before the first '/'; a request resource containing
            // '/' (never produced by a real API path) takes the plain path.
            let request = RequestAttributes::Resource(r.clone());
            return self
                .grants
                .iter()
                .enumerate()
                .find(|(_, g)| {
                    self.rules
                        .get(g.rule as usize)
                        .is_some_and(|rule| rule_allows(&request, rule))
                })
                .and_then(|(i, _)| u32::try_from(i).ok());
        }
        let mut best: Option<u32> = None;
        if let Some(entries) = self
            .exact
            .get(r.api_group.as_str())
            .and_then(|m| m.get(r.resource.as_str()))
        {
            for entry in entries {
                let sub_ok = match &entry.sub {
                    None => r.subresource.is_empty(),
                    Some(sub) => !r.subresource.is_empty() && **sub == *r.subresource,
                };
                if sub_ok && best.is_none_or(|b| entry.grant < b) && self.grant_allows(entry.grant, &r.verb, &r.name) {
                    if !first {
                        return Some(entry.grant);
                    }
                    best = Some(entry.grant);
                }
            }
        }
        for entry in &self.wild {
            if best.is_none_or(|b| entry.grant < b)
                && entry.matches(r)
                && self.grant_allows(entry.grant, &r.verb, &r.name)
            {
                if !first {
                    return Some(entry.grant);
                }
                best = Some(entry.grant);
            }
        }
        best
    }

    fn allows_non_resource(&self, n: &NonResourceAttributes) -> Option<u32> {
        self.non_resource
            .iter()
            .find(|(grant, url)| url_matches(url, &n.path) && self.grant_allows(*grant, &n.verb, ""))
            .map(|(grant, _)| *grant)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn res(verb: &str, group: &str, resource: &str, sub: &str) -> RequestAttributes {
        RequestAttributes::Resource(ResourceAttributes {
            verb: verb.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: "ns".into(),
            name: String::new(),
        })
    }

    fn named(verb: &str, group: &str, resource: &str, name: &str) -> RequestAttributes {
        RequestAttributes::Resource(ResourceAttributes {
            verb: verb.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: "ns".into(),
            name: name.into(),
        })
    }

    fn url(verb: &str, path: &str) -> RequestAttributes {
        RequestAttributes::NonResource(NonResourceAttributes {
            verb: verb.into(),
            path: path.into(),
        })
    }

    /// Checks a table against both the plain predicate and the compiled form.
    fn check(name: &str, rule: PolicyRule, cases: &[(RequestAttributes, bool)]) {
        let compiled = CompiledRules::new(vec![rule.clone()]);
        for (request, expected) in cases {
            assert_eq!(rule_allows(request, &rule), *expected, "{name}: plain {request:?}");
            assert_eq!(compiled.allows_any(request), *expected, "{name}: compiled {request:?}");
        }
    }

    // The tables below mirror Kubernetes' TestRuleMatches.
    #[test]
    fn star_verb_exact_other() {
        check(
            "star verb",
            PolicyRule::resource(["group1"], ["resource1"], ["*"]),
            &[
                (res("verb1", "group1", "resource1", ""), true),
                (res("verb1", "group2", "resource1", ""), false),
                (res("verb1", "group1", "resource2", ""), false),
                (res("verb2", "group1", "resource1", ""), true),
                (res("verb2", "group2", "resource2", ""), false),
            ],
        );
    }

    #[test]
    fn star_group_exact_other() {
        check(
            "star group",
            PolicyRule::resource(["*"], ["resource1"], ["verb1"]),
            &[
                (res("verb1", "group1", "resource1", ""), true),
                (res("verb1", "group2", "resource1", ""), true),
                (res("verb1", "group1", "resource2", ""), false),
                (res("verb2", "group1", "resource1", ""), false),
            ],
        );
    }

    #[test]
    fn star_resource_exact_other() {
        check(
            "star resource",
            PolicyRule::resource(["group1"], ["*"], ["verb1"]),
            &[
                (res("verb1", "group1", "resource1", ""), true),
                (res("verb1", "group1", "resource2", ""), true),
                (res("verb1", "group1", "resource2", "status"), true),
                (res("verb1", "group2", "resource1", ""), false),
                (res("verb2", "group1", "resource1", ""), false),
            ],
        );
    }

    #[test]
    fn tuple_expansion() {
        let rule = PolicyRule::resource(["group1", "group2"], ["resource1", "resource2"], ["verb1", "verb2"]);
        let mut cases = Vec::new();
        for v in ["verb1", "verb2"] {
            for g in ["group1", "group2"] {
                for r in ["resource1", "resource2"] {
                    cases.push((res(v, g, r, ""), true));
                }
            }
        }
        cases.push((res("verb3", "group1", "resource1", ""), false));
        check("tuple", rule, &cases);
    }

    #[test]
    fn subresource_expansion() {
        check(
            "subresource",
            PolicyRule::resource(["*"], ["resource1/subresource1"], ["*"]),
            &[
                (res("verb1", "group1", "resource1", "subresource1"), true),
                (res("verb1", "group2", "resource1", "subresource2"), false),
                (res("verb1", "group1", "resource2", "subresource1"), false),
                (res("verb2", "group1", "resource1", "subresource1"), true),
                (res("verb1", "group1", "resource1", ""), false),
            ],
        );
        // Exact group, so the compiled form uses the hash map.
        check(
            "pods/log",
            PolicyRule::resource([""], ["pods/log"], ["get"]),
            &[
                (res("get", "", "pods", "log"), true),
                (res("get", "", "pods", ""), false),
                (res("get", "", "pods", "exec"), false),
                (res("get", "apps", "pods", "log"), false),
            ],
        );
        check(
            "pods only",
            PolicyRule::resource([""], ["pods"], ["get"]),
            &[
                (res("get", "", "pods", ""), true),
                (res("get", "", "pods", "status"), false),
            ],
        );
    }

    #[test]
    fn star_subresource() {
        check(
            "*/scale",
            PolicyRule::resource(["apps"], ["*/scale"], ["update"]),
            &[
                (res("update", "apps", "deployments", "scale"), true),
                (res("update", "apps", "statefulsets", "scale"), true),
                (res("update", "apps", "deployments", ""), false),
                (res("update", "apps", "deployments", "status"), false),
                (res("update", "", "pods", "scale"), false),
            ],
        );
        // `pods/*` is not a pattern in Kubernetes: it only matches the literal subresource "*".
        check(
            "pods/*",
            PolicyRule::resource([""], ["pods/*"], ["get"]),
            &[
                (res("get", "", "pods", "log"), false),
                (res("get", "", "pods", "*"), true),
            ],
        );
    }

    #[test]
    fn resource_names() {
        check(
            "names",
            PolicyRule::resource([""], ["configmaps"], ["get", "update"]).with_resource_names(["a", "b"]),
            &[
                (named("get", "", "configmaps", "a"), true),
                (named("update", "", "configmaps", "b"), true),
                (named("get", "", "configmaps", "c"), false),
                (named("get", "", "configmaps", ""), false),
                (named("list", "", "configmaps", "a"), false),
            ],
        );
        check(
            "wild names",
            PolicyRule::resource(["*"], ["*"], ["*"]).with_resource_names(["a"]),
            &[(named("get", "x", "y", "a"), true), (named("get", "x", "y", ""), false)],
        );
    }

    #[test]
    fn custom_and_star_verbs() {
        check(
            "custom",
            PolicyRule::resource(["pipelines.kubeflow.org"], ["runs"], ["readArtifact", "get"]),
            &[
                (res("readArtifact", "pipelines.kubeflow.org", "runs", ""), true),
                (res("readartifact", "pipelines.kubeflow.org", "runs", ""), false),
                (res("get", "pipelines.kubeflow.org", "runs", ""), true),
                (res("*", "pipelines.kubeflow.org", "runs", ""), false),
            ],
        );
    }

    #[test]
    fn non_resource_urls() {
        check(
            "star nonresource",
            PolicyRule::non_resource(["*"], ["verb1"]),
            &[
                (url("verb1", "/foo"), true),
                (url("verb1", "/foo/bar/one"), true),
                (url("verb2", "/foo"), false),
            ],
        );
        check(
            "subpath",
            PolicyRule::non_resource(["/foo/*"], ["verb1"]),
            &[
                (url("verb1", "/foo"), false),
                (url("verb1", "/foo/bar"), true),
                (url("verb1", "/foo/baz/one"), true),
                (url("verb1", "/notfoo"), false),
                (url("verb1", "/notfoo/bar"), false),
            ],
        );
        check(
            "exact",
            PolicyRule::non_resource(["/foo", "/foo/bar/one"], ["*"]),
            &[
                (url("verb1", "/foo"), true),
                (url("verb1", "/foo/bar"), false),
                (url("verb2", "/foo/bar/one"), true),
                (url("verb2", "/foo/baz/one"), false),
            ],
        );
        // Resource rules never match non-resource requests and vice versa.
        check(
            "resource rule vs url",
            PolicyRule::resource(["*"], ["*"], ["*"]),
            &[(url("get", "/x"), false)],
        );
        check(
            "url rule vs resource",
            PolicyRule::non_resource(["*"], ["*"]),
            &[(res("get", "", "pods", ""), false)],
        );
    }

    #[test]
    fn first_allowing_rule_is_reported() {
        let rules = vec![
            PolicyRule::resource(["*"], ["pods"], ["get"]),
            PolicyRule::resource([""], ["pods"], ["get"]),
        ];
        let compiled = CompiledRules::new(rules.clone());
        assert_eq!(compiled.allows(&res("get", "", "pods", "")), Some(&rules[0]));
        assert_eq!(compiled.allows(&res("list", "", "pods", "")), None);
    }

    #[test]
    fn slash_in_request_resource_takes_plain_path() {
        let compiled = CompiledRules::new(vec![PolicyRule::resource([""], ["pods/log"], ["get"])]);
        assert!(compiled.allows_any(&res("get", "", "pods/log", "")));
        assert!(!compiled.allows_any(&res("get", "", "pods/log", "x")));
    }
}
