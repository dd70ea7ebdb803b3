//! Table-driven RBAC cases mirroring Kubernetes' own authorizer tests (`rbac_test.go`,
//! `rule.go` semantics), plus aggregation, service accounts, namespace confinement, reason texts,
//! rules_for, explain and incremental updates.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test-only crate: helpers outside #[test] fns may fail loudly

use kfsec_authz::{
    Attributes, Authorizer, BindingKind, Change, Decision, NonResourceRule, RbacKind, RbacObject, ResourceRule,
    kubeflow_default_cluster_roles,
};
use kfsec_types::rbac::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kfsec_types::{LabelSelector, LabelSelectorRequirement};

fn groups(list: &str) -> Vec<String> {
    list.split(',').map(str::to_owned).collect()
}

/// `subject` is `Kind:name` like the Kubernetes test helpers; `ServiceAccount:ns/name` adds a namespace.
fn subject(spec: &str) -> Subject {
    let (kind, name) = spec.split_once(':').unwrap();
    match kind {
        "User" => Subject::user(name),
        "Group" => Subject::group(name),
        "ServiceAccount" => match name.split_once('/') {
            Some((ns, n)) => Subject::service_account(ns, n),
            None => Subject::service_account("", name),
        },
        _ => panic!("bad kind {kind}"),
    }
}

fn subjects(specs: &[&str]) -> Vec<Subject> {
    specs.iter().map(|s| subject(s)).collect()
}

fn rb_cluster(ns: &str, name: &str, role: &str, specs: &[&str]) -> RoleBinding {
    RoleBinding::new(ns, name, RoleRef::cluster_role(role), subjects(specs))
}

fn rb_role(ns: &str, name: &str, role: &str, specs: &[&str]) -> RoleBinding {
    RoleBinding::new(ns, name, RoleRef::role(role), subjects(specs))
}

fn crb(name: &str, role: &str, specs: &[&str]) -> ClusterRoleBinding {
    ClusterRoleBinding::new(name, RoleRef::cluster_role(role), subjects(specs))
}

/// Kubernetes' `newRule("verbs", "groups", "resources", "urls")`.
fn new_rule(verbs: &str, api_groups: &str, resources: &str, urls: &str) -> PolicyRule {
    PolicyRule {
        verbs: groups(verbs),
        api_groups: groups(api_groups),
        resources: groups(resources),
        resource_names: Vec::new(),
        non_resource_urls: groups(urls),
    }
}

/// `(user, groups, verb, resource, subresource, namespace, apiGroup)` as in `defaultAttributes`.
fn res(user: &str, grp: &str, verb: &str, resource: &str, sub: &str, ns: &str, api_group: &str) -> Attributes {
    Attributes::resource(user, groups(grp), verb, api_group, resource, ns).with_subresource(sub)
}

fn url(user: &str, grp: &[&str], verb: &str, path: &str) -> Attributes {
    Attributes::non_resource(user, grp.iter().map(|g| (*g).to_owned()).collect(), verb, path)
}

fn check(authz: &Authorizer, pass: &[Attributes], fail: &[Attributes]) {
    for a in pass {
        assert!(authz.authorize(a).is_allowed(), "incorrectly restricted {a:?}");
        assert!(authz.allows(a), "allows() disagrees for {a:?}");
    }
    for a in fail {
        assert_eq!(authz.authorize(a), Decision::NoOpinion, "incorrectly passed {a:?}");
        assert!(!authz.allows(a), "allows() disagrees for {a:?}");
    }
}

#[test]
fn authorizer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Authorizer>();
}

#[test]
fn k8s_star_rule_in_role_binding() {
    let authz = Authorizer::from_objects(
        vec![],
        vec![ClusterRole::new("admin", vec![new_rule("*", "*", "*", "*")])],
        vec![rb_cluster("ns1", "b", "admin", &["User:admin", "Group:admins"])],
        vec![],
    )
    .unwrap();
    check(
        &authz,
        &[
            res("admin", "", "get", "Pods", "", "ns1", ""),
            res("admin", "", "watch", "Pods", "", "ns1", ""),
            res("admin", "group1", "watch", "Foobar", "", "ns1", ""),
            res("joe", "admins", "watch", "Foobar", "", "ns1", ""),
            res("joe", "group1,admins", "watch", "Foobar", "", "ns1", ""),
        ],
        &[
            res("admin", "", "GET", "Pods", "", "ns2", ""),
            res("admin", "", "GET", "Nodes", "", "", ""),
            res("admin", "admins", "GET", "Pods", "", "ns2", ""),
            res("admin", "admins", "GET", "Nodes", "", "", ""),
        ],
    );
}

#[test]
fn k8s_non_resource_urls() {
    let authz = Authorizer::from_objects(
        vec![],
        vec![
            ClusterRole::new("non-resource-url-getter", vec![new_rule("get", "", "", "/apis")]),
            ClusterRole::new("non-resource-url", vec![new_rule("*", "", "", "/apis")]),
            ClusterRole::new("non-resource-url-prefix", vec![new_rule("get", "", "", "/apis/*")]),
        ],
        vec![],
        vec![
            crb("getter", "non-resource-url-getter", &["User:foo", "Group:bar"]),
            crb("all", "non-resource-url", &["User:admin", "Group:admin"]),
            crb(
                "prefix",
                "non-resource-url-prefix",
                &["User:prefixed", "Group:prefixed"],
            ),
        ],
    )
    .unwrap();
    check(
        &authz,
        &[
            url("foo", &[], "get", "/apis"),
            url("", &["bar"], "get", "/apis"),
            url("admin", &[], "get", "/apis"),
            url("", &["admin"], "get", "/apis"),
            url("admin", &[], "watch", "/apis"),
            url("", &["admin"], "watch", "/apis"),
            url("prefixed", &[], "get", "/apis/v1"),
            url("", &["prefixed"], "get", "/apis/v1"),
            url("prefixed", &[], "get", "/apis/v1/foobar"),
            url("", &["prefixed"], "get", "/apis/v1/foorbar"),
        ],
        &[
            url("foo", &[], "watch", "/apis"),
            url("", &["bar"], "watch", "/apis"),
            url("foo", &[], "get", "/api/v1"),
            url("", &["bar"], "get", "/api/v1"),
            url("admin", &[], "get", "/api/v1"),
            url("", &["admin"], "get", "/api/v1"),
            url("prefixed", &[], "get", "/api/v1"),
            url("", &["prefixed"], "get", "/api/v1"),
        ],
    );
}

#[test]
fn non_resource_rules_in_role_bindings_grant_nothing() {
    let authz = Authorizer::from_objects(
        vec![],
        vec![ClusterRole::new(
            "health",
            vec![PolicyRule::non_resource(["/healthz"], ["get"])],
        )],
        vec![rb_cluster("ns1", "b", "health", &["User:u"])],
        vec![],
    )
    .unwrap();
    check(&authz, &[], &[url("u", &[], "get", "/healthz")]);
}

#[test]
fn k8s_subresource_resolution() {
    let authz = Authorizer::from_objects(
        vec![],
        vec![ClusterRole::new("admin", vec![new_rule("*", "*", "pods", "*")])],
        vec![rb_cluster("ns1", "b", "admin", &["User:admin", "Group:admins"])],
        vec![],
    )
    .unwrap();
    check(
        &authz,
        &[res("admin", "", "get", "pods", "", "ns1", "")],
        &[res("admin", "", "get", "pods", "status", "ns1", "")],
    );

    let authz = Authorizer::from_objects(
        vec![],
        vec![ClusterRole::new("admin", vec![new_rule("*", "*", "pods/status", "*")])],
        vec![rb_cluster("ns1", "b", "admin", &["User:admin", "Group:admins"])],
        vec![],
    )
    .unwrap();
    check(
        &authz,
        &[res("admin", "", "get", "pods", "status", "ns1", "")],
        &[res("admin", "", "get", "pods", "", "ns1", "")],
    );
}

#[test]
fn pods_log_and_star_subresources() {
    let authz = Authorizer::from_objects(
        vec![Role::new(
            "ns1",
            "logs",
            vec![
                PolicyRule::resource([""], ["pods/log"], ["get"]),
                PolicyRule::resource(["apps"], ["*/scale"], ["update"]),
            ],
        )],
        vec![],
        vec![rb_role("ns1", "b", "logs", &["User:u"])],
        vec![],
    )
    .unwrap();
    check(
        &authz,
        &[
            res("u", "", "get", "pods", "log", "ns1", ""),
            res("u", "", "update", "deployments", "scale", "ns1", "apps"),
            res("u", "", "update", "statefulsets", "scale", "ns1", "apps"),
        ],
        &[
            res("u", "", "get", "pods", "", "ns1", ""),
            res("u", "", "get", "pods", "exec", "ns1", ""),
            res("u", "", "get", "pods", "log", "ns2", ""),
            res("u", "", "update", "deployments", "", "ns1", "apps"),
            res("u", "", "update", "deployments", "status", "ns1", "apps"),
        ],
    );
}

#[test]
fn resource_names_restrict() {
    let authz = Authorizer::from_objects(
        vec![Role::new(
            "ns1",
            "cm",
            vec![
                PolicyRule::resource([""], ["configmaps"], ["get", "update", "create", "list"])
                    .with_resource_names(["a"]),
            ],
        )],
        vec![],
        vec![rb_role("ns1", "b", "cm", &["User:u"])],
        vec![],
    )
    .unwrap();
    let named =
        |verb: &str, name: &str| Attributes::resource("u", vec![], verb, "", "configmaps", "ns1").with_name(name);
    check(
        &authz,
        &[named("get", "a"), named("update", "a")],
        &[
            named("get", "b"),
            named("get", ""),
            named("list", ""),
            named("create", ""),
        ],
    );
}

#[test]
fn wildcards_for_verbs_groups_resources() {
    let authz = Authorizer::from_objects(
        vec![],
        vec![
            ClusterRole::new("any-verb", vec![PolicyRule::resource(["group1"], ["resource1"], ["*"])]),
            ClusterRole::new("any-group", vec![PolicyRule::resource(["*"], ["resource2"], ["get"])]),
            ClusterRole::new("any-resource", vec![PolicyRule::resource(["group3"], ["*"], ["list"])]),
        ],
        vec![],
        vec![
            crb("a", "any-verb", &["User:u"]),
            crb("b", "any-group", &["User:u"]),
            crb("c", "any-resource", &["User:u"]),
        ],
    )
    .unwrap();
    check(
        &authz,
        &[
            res("u", "", "frobnicate", "resource1", "", "", "group1"),
            res("u", "", "get", "resource2", "", "ns", "whatever"),
            res("u", "", "list", "anything", "", "", "group3"),
            res("u", "", "list", "anything", "status", "ns", "group3"),
        ],
        &[
            res("u", "", "get", "resource1", "", "", "group2"),
            res("u", "", "list", "resource2", "", "", "g"),
            res("u", "", "get", "anything", "", "", "group3"),
        ],
    );
}

#[test]
fn role_binding_to_cluster_role_is_confined_to_its_namespace() {
    let authz = Authorizer::from_objects(
        vec![],
        kubeflow_default_cluster_roles(),
        vec![rb_cluster(
            "alice",
            "namespaceAdmin",
            "kubeflow-admin",
            &["User:alice@example.com"],
        )],
        vec![],
    )
    .unwrap();
    let a = |verb: &str, group: &str, resource: &str, ns: &str| {
        Attributes::resource(
            "alice@example.com",
            groups("system:authenticated"),
            verb,
            group,
            resource,
            ns,
        )
    };
    check(
        &authz,
        &[
            a("create", "kubeflow.org", "notebooks", "alice"),
            a("get", "pipelines.kubeflow.org", "experiments", "alice"),
            a("create", "rbac.authorization.k8s.io", "rolebindings", "alice"),
        ],
        &[
            a("create", "kubeflow.org", "notebooks", "bob"),
            a("get", "pipelines.kubeflow.org", "experiments", "bob"),
            // Cluster-scoped requests are never granted by a RoleBinding.
            a("list", "", "namespaces", ""),
            a("list", "kubeflow.org", "notebooks", ""),
        ],
    );
}

#[test]
fn role_binding_role_must_be_in_the_same_namespace() {
    let rule = vec![PolicyRule::resource([""], ["pods"], ["get"])];
    let authz = Authorizer::from_objects(
        vec![Role::new("ns1", "reader", rule.clone())],
        vec![],
        vec![
            rb_role("ns2", "b", "reader", &["User:u"]),
            rb_role("ns1", "b", "reader", &["User:v"]),
        ],
        vec![ClusterRoleBinding::new(
            "c",
            RoleRef::role("reader"),
            subjects(&["User:w"]),
        )],
    )
    .unwrap();
    check(
        &authz,
        &[res("v", "", "get", "pods", "", "ns1", "")],
        &[
            res("u", "", "get", "pods", "", "ns2", ""),
            res("u", "", "get", "pods", "", "ns1", ""),
            // A ClusterRoleBinding to a Role grants nothing.
            res("w", "", "get", "pods", "", "ns1", ""),
            res("w", "", "get", "pods", "", "", ""),
        ],
    );
    // Creating the Role in ns2 makes the ns2 binding effective.
    authz
        .apply(Change::Upsert(RbacObject::Role(Role::new("ns2", "reader", rule))))
        .unwrap();
    check(
        &authz,
        &[res("u", "", "get", "pods", "", "ns2", "")],
        &[res("u", "", "get", "pods", "", "ns1", "")],
    );
}

#[test]
fn cluster_role_bindings_apply_everywhere() {
    let authz = Authorizer::from_objects(
        vec![],
        vec![ClusterRole::new(
            "node-reader",
            vec![PolicyRule::resource([""], ["nodes", "pods"], ["get"])],
        )],
        vec![],
        vec![crb("readers", "node-reader", &["Group:ops"])],
    )
    .unwrap();
    check(
        &authz,
        &[
            res("x", "ops", "get", "nodes", "", "", ""),
            res("x", "ops", "get", "pods", "", "any", ""),
            res("x", "a,ops", "get", "pods", "", "", ""),
        ],
        &[
            res("x", "dev", "get", "nodes", "", "", ""),
            res("x", "ops", "list", "pods", "", "any", ""),
        ],
    );
}

#[test]
fn system_masters_is_always_allowed_with_empty_reason() {
    let authz = Authorizer::new();
    let a = res(
        "root",
        "system:authenticated,system:masters",
        "delete",
        "anything",
        "",
        "",
        "x",
    );
    assert_eq!(authz.authorize(&a), Decision::Allow { reason: String::new() });
    assert!(authz.allows(&url("root", &["system:masters"], "post", "/anything")));
    let e = authz.explain(&a);
    assert!(e.privileged);
    assert!(e.summary.contains("system:masters"), "{}", e.summary);
    assert!(!authz.allows(&res("root", "system:authenticated", "get", "pods", "", "", "")));
}

#[test]
fn service_accounts() {
    let authz = Authorizer::from_objects(
        vec![],
        vec![
            ClusterRole::new("pod-reader", vec![PolicyRule::resource([""], ["pods"], ["get"])]),
            ClusterRole::new("cm-reader", vec![PolicyRule::resource([""], ["configmaps"], ["get"])]),
            ClusterRole::new("secret-reader", vec![PolicyRule::resource([""], ["secrets"], ["get"])]),
            ClusterRole::new("svc-reader", vec![PolicyRule::resource([""], ["services"], ["get"])]),
        ],
        vec![
            // Unqualified service account: defaults to the binding's namespace.
            rb_cluster("kf", "default-editor", "pod-reader", &["ServiceAccount:default-editor"]),
            rb_cluster("kf", "ns-sas", "cm-reader", &["Group:system:serviceaccounts:kf"]),
        ],
        vec![
            crb("all-sas", "secret-reader", &["Group:system:serviceaccounts"]),
            // Unqualified service account in a ClusterRoleBinding matches nobody.
            crb("nobody", "svc-reader", &["ServiceAccount:default-editor"]),
            crb("qualified", "svc-reader", &["ServiceAccount:other/robot"]),
        ],
    )
    .unwrap();
    let sa = "system:serviceaccount:kf:default-editor";
    check(
        &authz,
        &[
            res(sa, "", "get", "pods", "", "kf", ""),
            // Implicit groups apply even when the caller did not add them.
            res(sa, "", "get", "configmaps", "", "kf", ""),
            res(sa, "", "get", "secrets", "", "anywhere", ""),
            res("system:serviceaccount:other:robot", "", "get", "services", "", "x", ""),
        ],
        &[
            res(sa, "", "get", "pods", "", "other", ""),
            res(
                "system:serviceaccount:other:default-editor",
                "",
                "get",
                "pods",
                "",
                "kf",
                "",
            ),
            res(
                "system:serviceaccount:other:default-editor",
                "",
                "get",
                "configmaps",
                "",
                "kf",
                "",
            ),
            res(sa, "", "get", "services", "", "kf", ""),
            // Not a service account: no implicit groups.
            res("default-editor", "", "get", "secrets", "", "kf", ""),
        ],
    );
    assert_eq!(
        authz.authorize(&res(sa, "", "get", "pods", "", "kf", "")).reason(),
        r#"RBAC: allowed by RoleBinding "default-editor/kf" of ClusterRole "pod-reader" to ServiceAccount "default-editor/kf""#
    );
    assert_eq!(
        authz
            .authorize(&res(sa, "", "get", "configmaps", "", "kf", ""))
            .reason(),
        r#"RBAC: allowed by RoleBinding "ns-sas/kf" of ClusterRole "cm-reader" to Group "system:serviceaccounts:kf""#
    );
}

#[test]
fn reason_texts_match_kubernetes() {
    let authz = Authorizer::from_objects(
        vec![Role::new(
            "ns1",
            "local",
            vec![PolicyRule::resource([""], ["pods"], ["list"])],
        )],
        vec![ClusterRole::new(
            "view",
            vec![PolicyRule::resource([""], ["pods"], ["get"])],
        )],
        vec![
            rb_cluster("ns1", "rb-view", "view", &["Group:devs", "User:alice"]),
            rb_role("ns1", "rb-local", "local", &["User:alice"]),
        ],
        vec![crb("crb-view", "view", &["User:root"])],
    )
    .unwrap();
    let reason = |a: Attributes| authz.authorize(&a).reason().to_owned();
    assert_eq!(
        reason(res("root", "", "get", "pods", "", "", "")),
        r#"RBAC: allowed by ClusterRoleBinding "crb-view" of ClusterRole "view" to User "root""#
    );
    assert_eq!(
        reason(res("alice", "", "get", "pods", "", "ns1", "")),
        r#"RBAC: allowed by RoleBinding "rb-view/ns1" of ClusterRole "view" to User "alice""#
    );
    // The binding's first subject that applies is named.
    assert_eq!(
        reason(res("alice", "devs", "get", "pods", "", "ns1", "")),
        r#"RBAC: allowed by RoleBinding "rb-view/ns1" of ClusterRole "view" to Group "devs""#
    );
    assert_eq!(
        reason(res("alice", "", "list", "pods", "", "ns1", "")),
        r#"RBAC: allowed by RoleBinding "rb-local/ns1" of Role "local" to User "alice""#
    );
    assert_eq!(
        authz.authorize(&res("alice", "", "delete", "pods", "", "ns1", "")),
        Decision::NoOpinion
    );
}

fn aggregation_fixture() -> Vec<ClusterRole> {
    vec![
        ClusterRole::aggregator("agg", vec![LabelSelector::match_label("agg", "true")]),
        ClusterRole::aggregator(
            "expr",
            vec![LabelSelector {
                match_labels: Default::default(),
                match_expressions: vec![LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: vec!["gold".into(), "silver".into()],
                }],
            }],
        ),
        ClusterRole::new("pods", vec![PolicyRule::resource([""], ["pods"], ["get"])]).with_label("agg", "true"),
        ClusterRole::new("svcs", vec![PolicyRule::resource([""], ["services"], ["get"])]).with_label("tier", "gold"),
        ClusterRole::new("cms", vec![PolicyRule::resource([""], ["configmaps"], ["get"])]).with_label("tier", "bronze"),
    ]
}

#[test]
fn aggregation_and_relabelling() {
    let authz = Authorizer::from_objects(
        vec![],
        aggregation_fixture(),
        vec![],
        vec![crb("a", "agg", &["User:a"]), crb("e", "expr", &["User:e"])],
    )
    .unwrap();
    let get = |user: &str, resource: &str| res(user, "", "get", resource, "", "ns", "");
    check(
        &authz,
        &[get("a", "pods"), get("e", "services")],
        &[get("a", "services"), get("e", "configmaps"), get("e", "pods")],
    );
    // Relabel cms into both aggregators: re-aggregation picks it up.
    let cms = ClusterRole::new("cms", vec![PolicyRule::resource([""], ["configmaps"], ["get"])])
        .with_label("tier", "silver")
        .with_label("agg", "true");
    authz.apply(Change::Upsert(RbacObject::ClusterRole(cms))).unwrap();
    check(
        &authz,
        &[get("a", "configmaps"), get("e", "configmaps")],
        &[get("a", "services")],
    );
    // Remove the label from pods: agg loses pods.
    let pods = ClusterRole::new("pods", vec![PolicyRule::resource([""], ["pods"], ["get"])]);
    authz.apply(Change::Upsert(RbacObject::ClusterRole(pods))).unwrap();
    check(&authz, &[get("a", "configmaps")], &[get("a", "pods")]);
    // Change a selected leaf's rules.
    let svcs =
        ClusterRole::new("svcs", vec![PolicyRule::resource([""], ["secrets"], ["get"])]).with_label("tier", "gold");
    authz.apply(Change::Upsert(RbacObject::ClusterRole(svcs))).unwrap();
    check(&authz, &[get("e", "secrets")], &[get("e", "services")]);
    // Delete a leaf.
    authz
        .apply(Change::Delete(RbacKind::ClusterRole, String::new(), "cms".into()))
        .unwrap();
    check(
        &authz,
        &[get("e", "secrets")],
        &[get("e", "configmaps"), get("a", "configmaps")],
    );
    // Change the aggregator's selector.
    let agg = ClusterRole::aggregator("agg", vec![LabelSelector::match_label("tier", "gold")]);
    authz.apply(Change::Upsert(RbacObject::ClusterRole(agg))).unwrap();
    check(&authz, &[get("a", "secrets")], &[get("a", "pods")]);
    // An aggregator's own stored rules are ignored.
    let mut agg = ClusterRole::aggregator("agg", vec![LabelSelector::match_label("nothing", "x")]);
    agg.rules = vec![PolicyRule::resource(["*"], ["*"], ["*"])];
    authz.apply(Change::Upsert(RbacObject::ClusterRole(agg))).unwrap();
    check(&authz, &[], &[get("a", "secrets"), get("a", "pods")]);
}

#[test]
fn nested_and_cyclic_aggregation() {
    let roles = vec![
        ClusterRole::aggregator("top", vec![LabelSelector::match_label("to-top", "true")]),
        ClusterRole::aggregator("mid", vec![LabelSelector::match_label("to-mid", "true")]).with_label("to-top", "true"),
        ClusterRole::new("leaf", vec![PolicyRule::resource([""], ["pods"], ["get"])]).with_label("to-mid", "true"),
        // A cycle: c1 <-> c2, with a leaf under c2.
        ClusterRole::aggregator("c1", vec![LabelSelector::match_label("to-c1", "true")]).with_label("to-c2", "true"),
        ClusterRole::aggregator("c2", vec![LabelSelector::match_label("to-c2", "true")]).with_label("to-c1", "true"),
        ClusterRole::new("c-leaf", vec![PolicyRule::resource([""], ["secrets"], ["get"])]).with_label("to-c2", "true"),
    ];
    let authz = Authorizer::from_objects(
        vec![],
        roles,
        vec![],
        vec![crb("t", "top", &["User:t"]), crb("c", "c1", &["User:c"])],
    )
    .unwrap();
    check(
        &authz,
        &[
            res("t", "", "get", "pods", "", "", ""),
            res("c", "", "get", "secrets", "", "", ""),
        ],
        &[res("t", "", "get", "secrets", "", "", "")],
    );
    assert_eq!(authz.read().cluster_role_rules("c2").unwrap().len(), 1);
}

#[test]
fn kubeflow_profile_scenario() {
    let ns = "alice";
    let authz = Authorizer::from_objects(
        vec![],
        kubeflow_default_cluster_roles(),
        vec![
            rb_cluster(ns, "namespaceAdmin", "kubeflow-admin", &["User:alice@example.com"]),
            rb_cluster(
                ns,
                "default-editor",
                "kubeflow-edit",
                &["ServiceAccount:alice/default-editor"],
            ),
            rb_cluster(
                ns,
                "default-viewer",
                "kubeflow-view",
                &["ServiceAccount:alice/default-viewer"],
            ),
            rb_cluster(
                ns,
                "user-bob-example-com-clusterrole-edit",
                "kubeflow-edit",
                &["User:bob@example.com"],
            ),
            rb_cluster(
                ns,
                "user-carol-example-com-clusterrole-view",
                "kubeflow-view",
                &["User:carol@example.com"],
            ),
        ],
        vec![],
    )
    .unwrap();
    let a = |user: &str, verb: &str, group: &str, resource: &str| {
        Attributes::resource(user, groups("system:authenticated"), verb, group, resource, ns)
    };
    let (alice, bob, carol, dave) = (
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@example.com",
    );
    check(
        &authz,
        &[
            a(alice, "create", "rbac.authorization.k8s.io", "rolebindings"),
            a(bob, "create", "kubeflow.org", "notebooks"),
            a(bob, "create", "pipelines.kubeflow.org", "runs"),
            a(bob, "get", "", "secrets"),
            a(carol, "list", "kubeflow.org", "notebooks"),
            a(carol, "readArtifact", "pipelines.kubeflow.org", "runs"),
            a(carol, "get", "kubeflow.org", "poddefaults"),
            a(carol, "list", "serving.kserve.io", "inferenceservices"),
            a(carol, "list", "kubeflow.org", "experiments"),
            a(bob, "create", "kubeflow.org", "pvcviewers"),
            a(
                "system:serviceaccount:alice:default-editor",
                "create",
                "argoproj.io",
                "workflows",
            ),
            a(
                "system:serviceaccount:alice:default-viewer",
                "get",
                "pipelines.kubeflow.org",
                "runs",
            ),
        ],
        &[
            a(bob, "create", "rbac.authorization.k8s.io", "rolebindings"),
            a(carol, "create", "kubeflow.org", "notebooks"),
            a(carol, "get", "", "secrets"),
            a(carol, "create", "pipelines.kubeflow.org", "runs"),
            a(dave, "list", "kubeflow.org", "notebooks"),
            a(
                "system:serviceaccount:alice:default-viewer",
                "create",
                "argoproj.io",
                "workflows",
            ),
        ],
    );
    assert_eq!(
        authz.authorize(&a(bob, "create", "kubeflow.org", "notebooks")).reason(),
        r#"RBAC: allowed by RoleBinding "user-bob-example-com-clusterrole-edit/alice" of ClusterRole "kubeflow-edit" to User "bob@example.com""#
    );
}

#[test]
fn incremental_updates() {
    let authz = Authorizer::from_objects(
        vec![],
        kubeflow_default_cluster_roles(),
        vec![rb_cluster(
            "p",
            "user-bob-clusterrole-edit",
            "kubeflow-edit",
            &["User:bob"],
        )],
        vec![],
    )
    .unwrap();
    let nb = |user: &str, verb: &str| Attributes::resource(user, vec![], verb, "kubeflow.org", "notebooks", "p");
    assert!(authz.allows(&nb("bob", "create")));
    // Downgrade to view by replacing the binding.
    authz
        .apply(Change::Upsert(RbacObject::RoleBinding(rb_cluster(
            "p",
            "user-bob-clusterrole-edit",
            "kubeflow-view",
            &["User:bob"],
        ))))
        .unwrap();
    assert!(!authz.allows(&nb("bob", "create")));
    assert!(authz.allows(&nb("bob", "list")));
    // Change the subject.
    authz
        .apply(Change::Upsert(RbacObject::RoleBinding(rb_cluster(
            "p",
            "user-bob-clusterrole-edit",
            "kubeflow-view",
            &["User:carol"],
        ))))
        .unwrap();
    assert!(!authz.allows(&nb("bob", "list")));
    assert!(authz.allows(&nb("carol", "list")));
    // Delete the binding.
    authz
        .apply(Change::Delete(
            RbacKind::RoleBinding,
            "p".into(),
            "user-bob-clusterrole-edit".into(),
        ))
        .unwrap();
    assert!(!authz.allows(&nb("carol", "list")));
    assert_eq!(authz.stats().role_bindings, 0);
    assert_eq!(authz.stats().users, 0);
    // Deleting twice is fine.
    authz
        .apply(Change::Delete(
            RbacKind::RoleBinding,
            "p".into(),
            "user-bob-clusterrole-edit".into(),
        ))
        .unwrap();
    // Deleting the notebooks view leaf removes list from kubeflow-view.
    authz
        .apply(Change::Upsert(RbacObject::RoleBinding(rb_cluster(
            "p",
            "v",
            "kubeflow-view",
            &["User:v"],
        ))))
        .unwrap();
    assert!(authz.allows(&nb("v", "list")));
    authz
        .apply(Change::Delete(
            RbacKind::ClusterRole,
            String::new(),
            "kubeflow-notebooks-view".into(),
        ))
        .unwrap();
    assert!(!authz.allows(&nb("v", "list")));
    // Batch.
    authz
        .apply_all([
            Change::Delete(RbacKind::ClusterRole, String::new(), "kubeflow-view".into()),
            Change::Upsert(RbacObject::ClusterRole(ClusterRole::new(
                "kubeflow-view",
                vec![PolicyRule::resource(["kubeflow.org"], ["notebooks"], ["list"])],
            ))),
        ])
        .unwrap();
    assert!(authz.allows(&nb("v", "list")));
}

#[test]
fn invalid_objects_are_rejected() {
    let authz = Authorizer::new();
    let err = authz
        .apply(Change::Upsert(RbacObject::RoleBinding(rb_cluster(
            "",
            "x",
            "r",
            &["User:u"],
        ))))
        .unwrap_err();
    assert_eq!(err.to_string(), r#"RoleBinding "x" has no metadata.namespace"#);
    let err = authz
        .apply(Change::Upsert(RbacObject::Role(Role::new("ns", "", vec![]))))
        .unwrap_err();
    assert_eq!(err.to_string(), "Role has no metadata.name");
    assert!(
        RbacObject::from_value(serde_json::json!({"kind": "Pod"}))
            .unwrap_err()
            .to_string()
            .contains("Pod")
    );
    let obj = RbacObject::from_value(serde_json::json!({
        "kind": "ClusterRoleBinding", "metadata": {"name": "x"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "name": "u"}]
    }))
    .unwrap();
    assert_eq!(obj.kind(), RbacKind::ClusterRoleBinding);
}

#[test]
fn rules_for_lists_applicable_rules() {
    let authz = Authorizer::from_objects(
        vec![Role::new(
            "ns1",
            "local",
            vec![PolicyRule::resource([""], ["pods"], ["list"])],
        )],
        vec![
            ClusterRole::new("health", vec![PolicyRule::non_resource(["/healthz"], ["get"])]),
            ClusterRole::new(
                "view",
                vec![PolicyRule::resource([""], ["pods"], ["get"]).with_resource_names(["p"])],
            ),
        ],
        vec![
            rb_role("ns1", "b", "local", &["User:u"]),
            rb_cluster("ns2", "other", "view", &["User:u"]),
        ],
        vec![crb("h", "health", &["Group:system:authenticated"])],
    )
    .unwrap();
    let (resource, non_resource) = authz.rules_for("u", &groups("system:authenticated"), "ns1");
    assert_eq!(
        resource,
        vec![ResourceRule {
            verbs: vec!["list".into()],
            api_groups: vec!["".into()],
            resources: vec!["pods".into()],
            resource_names: vec![],
        }]
    );
    assert_eq!(
        non_resource,
        vec![NonResourceRule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/healthz".into()],
        }]
    );
    let (resource, _) = authz.rules_for("u", &[], "ns2");
    assert_eq!(resource.len(), 1);
    assert_eq!(resource[0].resource_names, vec!["p".to_owned()]);
    let (resource, non_resource) = authz.rules_for("u", &[], "");
    assert!(resource.is_empty() && non_resource.is_empty());
    assert_eq!(
        serde_json::to_value(&authz.rules_for("u", &[], "ns2").0[0]).unwrap(),
        serde_json::json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], "resourceNames": ["p"]})
    );
}

#[test]
fn explain_reports_bindings_and_denial_reasons() {
    let authz = Authorizer::from_objects(
        vec![],
        kubeflow_default_cluster_roles(),
        vec![
            rb_cluster("alice", "namespaceAdmin", "kubeflow-admin", &["User:alice"]),
            rb_cluster("team", "user-alice-clusterrole-view", "kubeflow-view", &["User:alice"]),
            rb_cluster("team", "broken", "does-not-exist", &["Group:devs"]),
        ],
        vec![],
    )
    .unwrap();
    // Allowed.
    let e = authz.explain(&Attributes::resource(
        "alice",
        vec![],
        "list",
        "kubeflow.org",
        "notebooks",
        "team",
    ));
    assert!(e.decision.is_allowed());
    assert_eq!(e.bindings.len(), 1);
    assert!(e.bindings[0].matched_rule.is_some());
    assert!(
        e.summary
            .starts_with("allowed: RoleBinding \"user-alice-clusterrole-view/team\""),
        "{}",
        e.summary
    );
    // Denied: a binding applies but no rule matches; the missing role is reported.
    let e = authz.explain(&Attributes::resource(
        "alice",
        groups("devs"),
        "create",
        "kubeflow.org",
        "notebooks",
        "team",
    ));
    assert_eq!(e.decision, Decision::NoOpinion);
    assert_eq!(e.bindings.len(), 2);
    assert!(
        e.bindings
            .iter()
            .all(|b| b.kind == BindingKind::RoleBinding && b.matched_rule.is_none())
    );
    let broken = e.bindings.iter().find(|b| b.name == "broken").unwrap();
    assert!(!broken.role_found);
    assert!(e.summary.contains("2 binding(s) apply"), "{}", e.summary);
    assert!(e.summary.contains(r#"ClusterRole "does-not-exist""#), "{}", e.summary);
    assert_eq!(e.elsewhere.len(), 1);
    assert_eq!(e.elsewhere[0].namespace, "alice");
    // Denied: nothing applies in this namespace.
    let e = authz.explain(&Attributes::resource(
        "alice",
        vec![],
        "list",
        "kubeflow.org",
        "notebooks",
        "bob",
    ));
    assert!(e.bindings.is_empty());
    assert!(
        e.summary
            .contains("no ClusterRoleBinding, and no RoleBinding in namespace \"bob\""),
        "{}",
        e.summary
    );
    assert!(e.summary.contains("other namespaces: alice, team"), "{}", e.summary);
    assert!(serde_json::to_value(&e).is_ok());
}

#[test]
fn concurrent_readers_and_a_writer() {
    use std::sync::Arc;
    let authz = Arc::new(
        Authorizer::from_objects(
            vec![],
            kubeflow_default_cluster_roles(),
            vec![rb_cluster("p", "b", "kubeflow-view", &["User:u"])],
            vec![],
        )
        .unwrap(),
    );
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let authz = Arc::clone(&authz);
            std::thread::spawn(move || {
                let a = Attributes::resource("u", vec![], "list", "kubeflow.org", "notebooks", "p");
                (0..20_000).filter(|_| authz.allows(&a)).count()
            })
        })
        .collect();
    for i in 0..200 {
        authz
            .apply(Change::Upsert(RbacObject::RoleBinding(rb_cluster(
                "p",
                &format!("extra-{i}"),
                "kubeflow-edit",
                &["User:x"],
            ))))
            .unwrap();
    }
    for r in readers {
        assert_eq!(r.join().unwrap(), 20_000);
    }
    assert_eq!(authz.stats().role_bindings, 201);
}
