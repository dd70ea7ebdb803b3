//! Kubeflow's default ClusterRoles as data: `cluster-admin`, the `kubeflow-admin` ⊃
//! `kubeflow-edit` ⊃ `kubeflow-view` aggregators, and the per-application aggregators and leaf
//! roles (Kubernetes core kinds, Pipelines, PodDefaults, Notebooks, Katib, KServe, volumes and
//! PVC viewers), with the labels and selectors of the Kubeflow manifests (1.10 era).
//!
//! Invariants: aggregators carry no rules of their own (Kubernetes ignores rules on an
//! aggregating role, k8s#65171); every leaf reaches the top-level aggregators only through labels,
//! so view ⊂ edit ⊂ admin holds by construction of the selectors.

use kfsec_types::LabelSelector;

use kfsec_types::rbac::{ClusterRole, PolicyRule, WILDCARD};

/// The label prefix of Kubeflow's aggregation labels.
pub const KUBEFLOW_AGGREGATE_PREFIX: &str = "rbac.authorization.kubeflow.org/aggregate-to-";

/// `rbac.authorization.kubeflow.org/aggregate-to-<target>`.
pub fn aggregate_label(target: &str) -> String {
    format!("{KUBEFLOW_AGGREGATE_PREFIX}{target}")
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule::resource(groups.iter().copied(), resources.iter().copied(), verbs.iter().copied())
}

/// A role with `rules`, labelled to aggregate into each of `into`.
fn leaf(name: &str, into: &[&str], rules: Vec<PolicyRule>) -> ClusterRole {
    into.iter().fold(ClusterRole::new(name, rules), |role, target| {
        role.with_label(aggregate_label(target), "true")
    })
}

/// An aggregator selecting `aggregate-to-<name>`, labelled to aggregate into each of `into`.
fn aggregator(name: &str, into: &[&str]) -> ClusterRole {
    into.iter().fold(
        ClusterRole::aggregator(name, vec![LabelSelector::match_label(aggregate_label(name), "true")]),
        |role, target| role.with_label(aggregate_label(target), "true"),
    )
}

const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ: &[&str] = &["get", "list", "watch"];
const ALL_CRUD: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "delete",
    "deletecollection",
    "patch",
    "update",
];

fn cluster_admin() -> ClusterRole {
    let mut role = ClusterRole::new(
        "cluster-admin",
        vec![
            rule(&[WILDCARD], &[WILDCARD], &[WILDCARD]),
            PolicyRule::non_resource([WILDCARD], [WILDCARD]),
        ],
    )
    .with_label("kubernetes.io/bootstrapping", "rbac-defaults");
    role.metadata.annotations.insert(
        "rbac.authorization.kubernetes.io/autoupdate".to_owned(),
        "true".to_owned(),
    );
    role
}

fn kubernetes_roles() -> Vec<ClusterRole> {
    let admin = leaf(
        "kubeflow-kubernetes-admin",
        &["kubeflow-admin"],
        vec![
            rule(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]),
            rule(
                &["rbac.authorization.k8s.io"],
                &["rolebindings", "roles"],
                &[
                    "create",
                    "delete",
                    "deletecollection",
                    "get",
                    "list",
                    "patch",
                    "update",
                    "watch",
                ],
            ),
        ],
    );
    let edit = leaf(
        "kubeflow-kubernetes-edit",
        &["kubeflow-edit"],
        vec![
            rule(
                &[""],
                &[
                    "pods/attach",
                    "pods/exec",
                    "pods/portforward",
                    "pods/proxy",
                    "secrets",
                    "services/proxy",
                ],
                READ,
            ),
            rule(
                &[""],
                &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"],
                WRITE,
            ),
            rule(
                &[""],
                &[
                    "configmaps",
                    "endpoints",
                    "persistentvolumeclaims",
                    "replicationcontrollers",
                    "replicationcontrollers/scale",
                    "secrets",
                    "serviceaccounts",
                    "services",
                    "services/proxy",
                ],
                WRITE,
            ),
            rule(
                &["apps"],
                &[
                    "daemonsets",
                    "deployments",
                    "deployments/rollback",
                    "deployments/scale",
                    "replicasets",
                    "replicasets/scale",
                    "statefulsets",
                    "statefulsets/scale",
                ],
                WRITE,
            ),
            rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
            rule(&["batch"], &["cronjobs", "jobs"], WRITE),
            rule(
                &["extensions"],
                &[
                    "daemonsets",
                    "deployments",
                    "deployments/rollback",
                    "deployments/scale",
                    "ingresses",
                    "networkpolicies",
                    "replicasets",
                    "replicasets/scale",
                    "replicationcontrollers/scale",
                ],
                WRITE,
            ),
            rule(&["policy"], &["poddisruptionbudgets"], WRITE),
            rule(&["networking.k8s.io"], &["ingresses", "networkpolicies"], WRITE),
        ],
    );
    let view = leaf(
        "kubeflow-kubernetes-view",
        &["kubeflow-view"],
        vec![
            rule(
                &[""],
                &[
                    "configmaps",
                    "endpoints",
                    "persistentvolumeclaims",
                    "persistentvolumeclaims/status",
                    "pods",
                    "replicationcontrollers",
                    "replicationcontrollers/scale",
                    "serviceaccounts",
                    "services",
                    "services/status",
                ],
                READ,
            ),
            rule(
                &[""],
                &[
                    "bindings",
                    "events",
                    "limitranges",
                    "namespaces/status",
                    "pods/log",
                    "pods/status",
                    "replicationcontrollers/status",
                    "resourcequotas",
                    "resourcequotas/status",
                ],
                READ,
            ),
            rule(&[""], &["namespaces"], READ),
            rule(
                &["apps"],
                &[
                    "controllerrevisions",
                    "daemonsets",
                    "daemonsets/status",
                    "deployments",
                    "deployments/scale",
                    "deployments/status",
                    "replicasets",
                    "replicasets/scale",
                    "replicasets/status",
                    "statefulsets",
                    "statefulsets/scale",
                    "statefulsets/status",
                ],
                READ,
            ),
            rule(
                &["autoscaling"],
                &["horizontalpodautoscalers", "horizontalpodautoscalers/status"],
                READ,
            ),
            rule(
                &["batch"],
                &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                READ,
            ),
            rule(
                &["extensions"],
                &[
                    "daemonsets",
                    "daemonsets/status",
                    "deployments",
                    "deployments/scale",
                    "deployments/status",
                    "ingresses",
                    "ingresses/status",
                    "networkpolicies",
                    "replicasets",
                    "replicasets/scale",
                    "replicasets/status",
                    "replicationcontrollers/scale",
                ],
                READ,
            ),
            rule(
                &["policy"],
                &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                READ,
            ),
            rule(
                &["networking.k8s.io"],
                &["ingresses", "ingresses/status", "networkpolicies"],
                READ,
            ),
        ],
    );
    vec![admin, edit, view]
}

fn pipelines_roles() -> Vec<ClusterRole> {
    const KFP: &str = "pipelines.kubeflow.org";
    vec![
        aggregator("kubeflow-pipelines-edit", &["kubeflow-edit"]),
        aggregator("kubeflow-pipelines-view", &["kubeflow-pipelines-edit", "kubeflow-view"]),
        leaf(
            "aggregate-to-kubeflow-pipelines-edit",
            &["kubeflow-pipelines-edit"],
            vec![
                rule(
                    &[KFP],
                    &["pipelines", "pipelineversions"],
                    &["create", "delete", "update"],
                ),
                rule(&[KFP], &["experiments"], &["archive", "create", "delete", "unarchive"]),
                rule(
                    &[KFP],
                    &["runs"],
                    &[
                        "archive",
                        "create",
                        "delete",
                        "retry",
                        "terminate",
                        "unarchive",
                        "reportMetrics",
                        "readArtifact",
                    ],
                ),
                rule(&[KFP], &["jobs"], &["create", "delete", "disable", "enable"]),
                rule(&["kubeflow.org"], &["scheduledworkflows"], &[WILDCARD]),
                rule(
                    &["argoproj.io"],
                    &[
                        "cronworkflows",
                        "cronworkflows/finalizers",
                        "workflows",
                        "workflows/finalizers",
                        "workfloweventbindings",
                        "workflowtemplates",
                        "workflowtaskresults",
                    ],
                    &[WILDCARD],
                ),
            ],
        ),
        leaf(
            "aggregate-to-kubeflow-pipelines-view",
            &["kubeflow-pipelines-view"],
            vec![
                rule(
                    &[KFP],
                    &["pipelines", "pipelineversions", "experiments", "jobs"],
                    &["get", "list"],
                ),
                rule(&[KFP], &["runs"], &["get", "list", "readArtifact"]),
                rule(&["kubeflow.org"], &["viewers"], &["create", "get", "delete"]),
                rule(&[KFP], &["visualizations"], &["create"]),
            ],
        ),
    ]
}

fn poddefaults_roles() -> Vec<ClusterRole> {
    vec![
        aggregator("kubeflow-poddefaults-admin", &["kubeflow-admin"]),
        aggregator("kubeflow-poddefaults-edit", &["kubeflow-edit"]),
        leaf(
            "kubeflow-poddefaults-view",
            &[
                "kubeflow-poddefaults-admin",
                "kubeflow-poddefaults-edit",
                "kubeflow-view",
            ],
            vec![rule(&["kubeflow.org"], &["poddefaults"], READ)],
        ),
    ]
}

fn notebooks_roles() -> Vec<ClusterRole> {
    vec![
        aggregator("kubeflow-notebooks-admin", &["kubeflow-admin"]),
        leaf(
            "kubeflow-notebooks-edit",
            &["kubeflow-edit", "kubeflow-notebooks-admin"],
            vec![rule(&["kubeflow.org"], &["notebooks", "notebooks/status"], ALL_CRUD)],
        ),
        leaf(
            "kubeflow-notebooks-view",
            &["kubeflow-view"],
            vec![rule(&["kubeflow.org"], &["notebooks", "notebooks/status"], READ)],
        ),
    ]
}

fn katib_roles() -> Vec<ClusterRole> {
    vec![
        aggregator("kubeflow-katib-admin", &["kubeflow-admin"]),
        leaf(
            "kubeflow-katib-edit",
            &["kubeflow-edit", "kubeflow-katib-admin"],
            vec![
                rule(&["kubeflow.org"], &["experiments", "trials", "suggestions"], ALL_CRUD),
                rule(&[""], &["pods"], &["list"]),
                rule(&[""], &["pods/log"], &["get"]),
            ],
        ),
        leaf(
            "kubeflow-katib-view",
            &["kubeflow-view"],
            vec![rule(&["kubeflow.org"], &["experiments", "trials", "suggestions"], READ)],
        ),
    ]
}

fn kserve_roles() -> Vec<ClusterRole> {
    let knative = &[
        "services",
        "services/status",
        "routes",
        "routes/status",
        "configurations",
        "configurations/status",
        "revisions",
        "revisions/status",
    ];
    let app = |role: ClusterRole| {
        role.with_label("app", "kserve")
            .with_label("app.kubernetes.io/name", "kserve")
    };
    vec![
        app(aggregator("kubeflow-kserve-admin", &["kubeflow-admin"])),
        app(leaf(
            "kubeflow-kserve-edit",
            &["kubeflow-edit", "kubeflow-kserve-admin"],
            vec![
                rule(&["serving.kserve.io"], &["inferenceservices"], ALL_CRUD),
                rule(&["serving.knative.dev"], knative, ALL_CRUD),
            ],
        )),
        app(leaf(
            "kubeflow-kserve-view",
            &["kubeflow-view"],
            vec![
                rule(&["serving.kserve.io"], &["inferenceservices"], READ),
                rule(&["serving.knative.dev"], knative, &["get", "list"]),
            ],
        )),
    ]
}

/// The volumes web app's roles, which carry the PVC viewer (`kubeflow.org` `pvcviewers`) rights.
fn volumes_roles() -> Vec<ClusterRole> {
    vec![
        leaf("kubeflow-volume-ui-admin", &["kubeflow-admin"], Vec::new()),
        leaf(
            "kubeflow-volume-ui-edit",
            &["kubeflow-edit"],
            vec![
                rule(
                    &[""],
                    &["persistentvolumeclaims"],
                    &["create", "delete", "get", "list", "watch", "update", "patch"],
                ),
                rule(&["kubeflow.org"], &["pvcviewers"], &["get", "list", "create", "delete"]),
            ],
        ),
        leaf(
            "kubeflow-volume-ui-view",
            &["kubeflow-view"],
            vec![
                rule(&[""], &["persistentvolumeclaims"], READ),
                rule(&["storage.k8s.io"], &["storageclasses"], READ),
                rule(&["kubeflow.org"], &["pvcviewers"], &["get", "list"]),
            ],
        ),
    ]
}

/// Kubeflow's default ClusterRoles (plus Kubernetes' `cluster-admin`).
pub fn kubeflow_default_cluster_roles() -> Vec<ClusterRole> {
    let mut roles = vec![
        cluster_admin(),
        aggregator("kubeflow-admin", &[]),
        aggregator("kubeflow-edit", &["kubeflow-admin"]),
        aggregator("kubeflow-view", &["kubeflow-edit"]),
    ];
    roles.extend(kubernetes_roles());
    roles.extend(pipelines_roles());
    roles.extend(poddefaults_roles());
    roles.extend(notebooks_roles());
    roles.extend(katib_roles());
    roles.extend(kserve_roles());
    roles.extend(volumes_roles());
    roles
}

#[cfg(test)]
mod tests {

    use std::collections::HashSet;

    use super::*;
    use crate::index::RbacIndex;

    fn effective(index: &RbacIndex, name: &str) -> HashSet<PolicyRule> {
        index.cluster_role_rules(name).unwrap().iter().cloned().collect()
    }

    #[test]
    fn names_are_unique_and_aggregators_have_no_rules() {
        let roles = kubeflow_default_cluster_roles();
        let names: HashSet<_> = roles.iter().map(|r| r.metadata.name.clone()).collect();
        assert_eq!(names.len(), roles.len());
        for role in &roles {
            if role.is_aggregator() {
                assert!(role.rules.is_empty(), "{}", role.metadata.name);
            }
        }
        for expected in [
            "cluster-admin",
            "kubeflow-admin",
            "kubeflow-edit",
            "kubeflow-view",
            "kubeflow-pipelines-edit",
            "aggregate-to-kubeflow-pipelines-view",
            "kubeflow-poddefaults-view",
            "kubeflow-notebooks-edit",
            "kubeflow-katib-view",
            "kubeflow-kserve-edit",
            "kubeflow-volume-ui-view",
        ] {
            assert!(names.contains(expected), "{expected}");
        }
    }

    #[test]
    fn view_within_edit_within_admin() {
        let index = RbacIndex::from_objects(vec![], kubeflow_default_cluster_roles(), vec![], vec![]).unwrap();
        let admin = effective(&index, "kubeflow-admin");
        let edit = effective(&index, "kubeflow-edit");
        let view = effective(&index, "kubeflow-view");
        assert!(!view.is_empty());
        assert!(view.is_subset(&edit));
        assert!(edit.is_subset(&admin));
        assert!(view.len() < edit.len() && edit.len() < admin.len());
        // Pipelines view rules reach kubeflow-view through kubeflow-pipelines-view.
        assert!(view.contains(&rule(
            &["pipelines.kubeflow.org"],
            &["runs"],
            &["get", "list", "readArtifact"]
        )));
        // Admin-only: RBAC objects.
        assert!(
            !edit
                .iter()
                .any(|r| r.api_groups.contains(&"rbac.authorization.k8s.io".to_owned()))
        );
        assert!(
            admin
                .iter()
                .any(|r| r.api_groups.contains(&"rbac.authorization.k8s.io".to_owned()))
        );
        // Secrets are readable by edit, not by view.
        assert!(!view.iter().any(|r| r.resources.contains(&"secrets".to_owned())));
        assert!(edit.iter().any(|r| r.resources.contains(&"secrets".to_owned())));
    }
}
