//! Table tests of PodDefault merging and conflicts: every field upstream merges (env, envFrom,
//! volumes, volumeMounts by name and by mountPath, tolerations by key, imagePullSecrets,
//! initContainers, sidecars, labels, annotations, serviceAccountName,
//! automountServiceAccountToken, command/args) plus selection, exclusion and the messages.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test-only crate: helpers outside #[test] fns may fail loudly

use kfsec_admission::{PodDefaultError, apply_poddefaults};
use serde_json::{Value, json};

const NS: &str = "kubeflow-user";

fn pod(spec: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": NS, "labels": {"app": "nb"}},
        "spec": spec,
    })
}

fn one(containers: Value) -> Value {
    pod(json!({"containers": containers}))
}

fn main_container() -> Value {
    one(json!([{"name": "main", "image": "img"}]))
}

fn pd(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    if spec.get("selector").is_none() {
        spec["selector"] = json!({"matchLabels": {"app": "nb"}});
    }
    json!({
        "apiVersion": "kubeflow.org/v1alpha1",
        "kind": "PodDefault",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": format!("rv-{name}")},
        "spec": spec,
    })
}

fn ok(pod: &Value, pds: &[Value]) -> Value {
    apply_poddefaults(pod, pds).unwrap_or_else(|e| panic!("unexpected error: {e}"))
}

fn conflict(pod: &Value, pds: &[Value]) -> String {
    match apply_poddefaults(pod, pds) {
        Err(PodDefaultError::Conflict { message, .. }) => message,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn prefix(names: &str) -> String {
    format!("conflict occurred while applying poddefaults: {names} on pod: p err: ")
}

// ----- env -----

#[test]
fn env_is_added_to_every_container_including_istio_proxy() {
    let p = one(json!([{"name": "main"}, {"name": "istio-proxy"}]));
    let out = ok(&p, &[pd("a", json!({"env": [{"name": "X", "value": "1"}]}))]);
    for c in out["spec"]["containers"].as_array().unwrap() {
        assert_eq!(c["env"], json!([{"name": "X", "value": "1"}]), "{c}");
    }
}

#[test]
fn env_existing_equal_value_is_kept_once() {
    let p = one(json!([{"name": "main", "env": [{"name": "X", "value": "1"}]}]));
    let out = ok(
        &p,
        &[pd(
            "a",
            json!({"env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}),
        )],
    );
    assert_eq!(
        out["spec"]["containers"][0]["env"],
        json!([{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}])
    );
}

#[test]
fn env_zero_values_compare_like_go() {
    // `value: ""` and an absent value decode to the same Go struct.
    let p = one(json!([{"name": "main", "env": [{"name": "X", "value": ""}]}]));
    let out = ok(&p, &[pd("a", json!({"env": [{"name": "X"}]}))]);
    assert_eq!(out["spec"]["containers"][0]["env"], json!([{"name": "X", "value": ""}]));
}

#[test]
fn env_conflict_with_pod() {
    let p = one(json!([{"name": "main", "env": [{"name": "X", "value": "old"}]}]));
    let msg = conflict(&p, &[pd("a", json!({"env": [{"name": "X", "value": "new"}]}))]);
    assert_eq!(
        msg,
        format!(
            "{}merging env for a has a conflict on X: \nv1.EnvVar{{Name:\"X\", Value:\"new\", ValueFrom:(*v1.EnvVarSource)(nil)}}\ndoes not match\nv1.EnvVar{{Name:\"X\", Value:\"old\", ValueFrom:(*v1.EnvVarSource)(nil)}}\n in container",
            prefix("a")
        )
    );
}

#[test]
fn env_conflict_between_poddefaults_in_two_containers_is_reported_once() {
    let p = one(json!([{"name": "main"}, {"name": "side"}]));
    let msg = conflict(
        &p,
        &[
            pd("a", json!({"env": [{"name": "X", "value": "1"}]})),
            pd("b", json!({"env": [{"name": "X", "value": "2"}]})),
        ],
    );
    // Same message from both containers: deduplicated, so no brackets.
    assert!(
        msg.starts_with(&format!("{}merging env for b has a conflict on X: ", prefix("a,b"))),
        "{msg}"
    );
    assert!(!msg.contains('['), "{msg}");
}

#[test]
fn env_from_is_appended_without_checks() {
    let p = one(json!([{"name": "main", "envFrom": [{"configMapRef": {"name": "c"}}]}]));
    let out = ok(
        &p,
        &[
            pd("a", json!({"envFrom": [{"configMapRef": {"name": "c"}}]})),
            pd("b", json!({"envFrom": [{"secretRef": {"name": "s"}}]})),
        ],
    );
    assert_eq!(
        out["spec"]["containers"][0]["envFrom"],
        json!([{"configMapRef": {"name": "c"}}, {"configMapRef": {"name": "c"}}, {"secretRef": {"name": "s"}}])
    );
}

// ----- volumes -----

#[test]
fn volumes_are_merged_by_name() {
    let p = pod(json!({"containers": [{"name": "main"}], "volumes": [{"name": "v1", "emptyDir": {}}]}));
    let out = ok(
        &p,
        &[pd(
            "a",
            json!({"volumes": [{"name": "v1", "emptyDir": {}}, {"name": "v2", "secret": {"secretName": "s"}}]}),
        )],
    );
    assert_eq!(
        out["spec"]["volumes"],
        json!([{"name": "v1", "emptyDir": {}}, {"name": "v2", "secret": {"secretName": "s"}}])
    );
}

#[test]
fn volume_conflict() {
    let p = pod(json!({"containers": [{"name": "main"}], "volumes": [{"name": "v1", "emptyDir": {}}]}));
    let msg = conflict(
        &p,
        &[pd(
            "a",
            json!({"volumes": [{"name": "v1", "secret": {"secretName": "s"}}]}),
        )],
    );
    let rest = msg.strip_prefix(&prefix("a")).unwrap();
    assert!(rest.starts_with("merging volumes for a has a conflict on v1: \nv1.Volume{Name:\"v1\", VolumeSource:v1.VolumeSource{HostPath:(*v1.HostPathVolumeSource)(nil), EmptyDir:(*v1.EmptyDirVolumeSource)(nil), "), "{rest}");
    assert!(
        rest.contains("Secret:(*v1.SecretVolumeSource)({\"secretName\":\"s\"})"),
        "{rest}"
    );
    assert!(rest.contains("\ndoes not match\nv1.Volume{Name:\"v1\", VolumeSource:v1.VolumeSource{HostPath:(*v1.HostPathVolumeSource)(nil), EmptyDir:(*v1.EmptyDirVolumeSource)({})"), "{rest}");
    assert!(
        rest.ends_with("Ephemeral:(*v1.EphemeralVolumeSource)(nil)}}\n in container"),
        "{rest}"
    );
}

// ----- volumeMounts -----

#[test]
fn volume_mounts_are_added_to_every_container() {
    let p = one(json!([{"name": "main"}, {"name": "istio-proxy"}]));
    let out = ok(
        &p,
        &[pd("a", json!({"volumeMounts": [{"name": "d", "mountPath": "/data"}]}))],
    );
    for c in out["spec"]["containers"].as_array().unwrap() {
        assert_eq!(c["volumeMounts"], json!([{"name": "d", "mountPath": "/data"}]));
    }
}

#[test]
fn volume_mount_conflict_by_name() {
    let p = one(json!([{"name": "main", "volumeMounts": [{"name": "d", "mountPath": "/a"}]}]));
    let msg = conflict(
        &p,
        &[pd("a", json!({"volumeMounts": [{"name": "d", "mountPath": "/b"}]}))],
    );
    assert_eq!(
        msg,
        format!(
            "{}merging volume mounts for a has a conflict on d: \nv1.VolumeMount{{Name:\"d\", ReadOnly:false, MountPath:\"/b\", SubPath:\"\", MountPropagation:(*v1.MountPropagationMode)(nil), SubPathExpr:\"\"}}\ndoes not match\nv1.VolumeMount{{Name:\"d\", ReadOnly:false, MountPath:\"/a\", SubPath:\"\", MountPropagation:(*v1.MountPropagationMode)(nil), SubPathExpr:\"\"}}\n in container",
            prefix("a")
        )
    );
}

#[test]
fn volume_mount_conflict_by_mount_path() {
    let p = one(json!([{"name": "main", "volumeMounts": [{"name": "d", "mountPath": "/a"}]}]));
    let msg = conflict(
        &p,
        &[pd(
            "a",
            json!({"volumeMounts": [{"name": "e", "mountPath": "/a", "readOnly": true}]}),
        )],
    );
    assert_eq!(
        msg,
        format!(
            "{}merging volume mounts for a has a conflict on mount path /a: \nv1.VolumeMount{{Name:\"e\", ReadOnly:true, MountPath:\"/a\", SubPath:\"\", MountPropagation:(*v1.MountPropagationMode)(nil), SubPathExpr:\"\"}}\ndoes not match\nv1.VolumeMount{{Name:\"d\", ReadOnly:false, MountPath:\"/a\", SubPath:\"\", MountPropagation:(*v1.MountPropagationMode)(nil), SubPathExpr:\"\"}}\n in container",
            prefix("a")
        )
    );
}

#[test]
fn volume_mount_same_name_and_path_is_not_duplicated() {
    let p = one(json!([{"name": "main", "volumeMounts": [{"name": "d", "mountPath": "/a", "readOnly": false}]}]));
    let out = ok(
        &p,
        &[pd("a", json!({"volumeMounts": [{"name": "d", "mountPath": "/a"}]}))],
    );
    assert_eq!(
        out["spec"]["containers"][0]["volumeMounts"].as_array().unwrap().len(),
        1
    );
}

// ----- tolerations -----

#[test]
fn tolerations_are_merged_by_key() {
    let p = pod(json!({"containers": [{"name": "main"}], "tolerations": [{"key": "a", "operator": "Exists"}]}));
    let out = ok(
        &p,
        &[pd(
            "a",
            json!({"tolerations": [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Equal", "value": "x", "effect": "NoSchedule"}]}),
        )],
    );
    assert_eq!(
        out["spec"]["tolerations"],
        json!([{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Equal", "value": "x", "effect": "NoSchedule"}])
    );
}

#[test]
fn toleration_conflict_on_key() {
    let p = pod(
        json!({"containers": [{"name": "main"}], "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}),
    );
    let msg = conflict(
        &p,
        &[pd(
            "a",
            json!({"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]}),
        )],
    );
    assert_eq!(
        msg,
        format!(
            "{}merging tolerations for a has a conflict on gpu: \nv1.Toleration{{Key:\"gpu\", Operator:\"Exists\", Value:\"\", Effect:\"NoExecute\", TolerationSeconds:(*int64)(30)}}\ndoes not match\nv1.Toleration{{Key:\"gpu\", Operator:\"Exists\", Value:\"\", Effect:\"NoSchedule\", TolerationSeconds:(*int64)(nil)}}\n in container",
            prefix("a")
        )
    );
}

// ----- imagePullSecrets -----

#[test]
fn image_pull_secrets_are_merged_by_name() {
    let p = pod(json!({"containers": [{"name": "main"}], "imagePullSecrets": [{"name": "reg"}]}));
    let out = ok(
        &p,
        &[
            pd("a", json!({"imagePullSecrets": [{"name": "reg"}, {"name": "other"}]})),
            pd("b", json!({"imagePullSecrets": [{"name": "other"}]})),
        ],
    );
    assert_eq!(
        out["spec"]["imagePullSecrets"],
        json!([{"name": "reg"}, {"name": "other"}])
    );
}

// ----- labels and annotations -----

#[test]
fn labels_and_annotations_are_map_merged() {
    let mut p = main_container();
    p["metadata"]["annotations"] = json!({"keep": "me"});
    let out = ok(
        &p,
        &[pd(
            "a",
            json!({"labels": {"app": "nb", "team": "ml"}, "annotations": {"keep": "me", "note": "x"}}),
        )],
    );
    assert_eq!(out["metadata"]["labels"], json!({"app": "nb", "team": "ml"}));
    assert_eq!(
        out["metadata"]["annotations"],
        json!({"keep": "me", "note": "x", "poddefault.admission.kubeflow.org/poddefault-a": "rv-a"})
    );
}

#[test]
fn label_conflict() {
    let p = main_container();
    let msg = conflict(&p, &[pd("a", json!({"labels": {"app": "other"}}))]);
    assert_eq!(
        msg,
        format!(
            "{}merging has conflict on app: \n\"other\"\ndoes not match\n\"nb\"\n in pod",
            prefix("a")
        )
    );
}

#[test]
fn annotation_conflict_between_poddefaults() {
    let p = main_container();
    let msg = conflict(
        &p,
        &[
            pd("a", json!({"annotations": {"k": "1"}})),
            pd("b", json!({"annotations": {"k": "2"}})),
        ],
    );
    assert_eq!(
        msg,
        format!(
            "{}merging has conflict on k: \n\"2\"\ndoes not match\n\"1\"\n in pod",
            prefix("a,b")
        )
    );
}

// ----- containers -----

#[test]
fn sidecars_are_appended_to_containers_after_the_merge() {
    let p = main_container();
    let out = ok(
        &p,
        &[pd(
            "a",
            json!({"env": [{"name": "X", "value": "1"}], "sidecars": [{"name": "proxy", "image": "envoy"}]}),
        )],
    );
    let cs = out["spec"]["containers"].as_array().unwrap();
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0]["env"], json!([{"name": "X", "value": "1"}]));
    // Sidecars do not receive the PodDefault's env (they are added after the merge).
    assert_eq!(cs[1], json!({"name": "proxy", "image": "envoy"}));
}

#[test]
fn sidecar_conflict_with_existing_container() {
    let p = main_container();
    let msg = conflict(
        &p,
        &[pd("a", json!({"sidecars": [{"name": "main", "image": "other"}]}))],
    );
    let rest = msg.strip_prefix(&prefix("a")).unwrap();
    assert!(
        rest.starts_with("merging containers for a has a conflict on main: \nv1.Container{Name:\"main\", Image:\"other\", Command:[]string(nil), Args:[]string(nil), WorkingDir:\"\", Ports:[]v1.ContainerPort(nil), "),
        "{rest}"
    );
    assert!(
        rest.contains("\ndoes not match\nv1.Container{Name:\"main\", Image:\"img\", "),
        "{rest}"
    );
    assert!(
        rest.ends_with("Stdin:false, StdinOnce:false, TTY:false}\n in container"),
        "{rest}"
    );
}

#[test]
fn identical_sidecar_is_not_duplicated() {
    let p = one(json!([{"name": "main", "image": "img"}, {"name": "proxy", "image": "envoy"}]));
    let out = ok(
        &p,
        &[pd("a", json!({"sidecars": [{"name": "proxy", "image": "envoy"}]}))],
    );
    assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 2);
}

#[test]
fn init_containers_are_merged_by_name() {
    let p = pod(json!({"containers": [{"name": "main"}], "initContainers": [{"name": "init", "image": "a"}]}));
    let out = ok(
        &p,
        &[pd(
            "a",
            json!({"initContainers": [{"name": "init", "image": "a"}, {"name": "fetch", "image": "b"}]}),
        )],
    );
    assert_eq!(
        out["spec"]["initContainers"],
        json!([{"name": "init", "image": "a"}, {"name": "fetch", "image": "b"}])
    );
    // Init containers get no env / volumeMounts from PodDefaults.
    let out = ok(&p, &[pd("b", json!({"env": [{"name": "X", "value": "1"}]}))]);
    assert!(out["spec"]["initContainers"][0].get("env").is_none());
}

#[test]
fn init_container_conflict() {
    let p = pod(json!({"containers": [{"name": "main"}], "initContainers": [{"name": "init", "image": "a"}]}));
    let msg = conflict(
        &p,
        &[pd("a", json!({"initContainers": [{"name": "init", "image": "b"}]}))],
    );
    assert!(
        msg.starts_with(&format!(
            "{}merging containers for a has a conflict on init: \nv1.Container{{Name:\"init\", Image:\"b\"",
            prefix("a")
        )),
        "{msg}"
    );
}

// ----- last-wins and first-wins -----

#[test]
fn service_account_and_automount_last_wins() {
    let p = pod(json!({"containers": [{"name": "main"}], "serviceAccountName": "default-editor"}));
    let out = ok(
        &p,
        &[
            pd(
                "a",
                json!({"serviceAccountName": "first", "automountServiceAccountToken": true}),
            ),
            pd(
                "b",
                json!({"serviceAccountName": "second", "automountServiceAccountToken": false}),
            ),
            pd("c", json!({})),
        ],
    );
    assert_eq!(out["spec"]["serviceAccountName"], "second");
    assert_eq!(out["spec"]["automountServiceAccountToken"], false);
}

#[test]
fn command_and_args_first_wins_skipping_istio_proxy_and_set_containers() {
    let p = one(json!([
        {"name": "main"},
        {"name": "istio-proxy"},
        {"name": "has-cmd", "command": ["own"]}
    ]));
    let out = ok(
        &p,
        &[
            pd("a", json!({"command": ["python"], "args": ["-m", "a"]})),
            pd("b", json!({"command": ["bash"], "args": ["-c", "b"]})),
        ],
    );
    let cs = &out["spec"]["containers"];
    assert_eq!(cs[0]["command"], json!(["python"]));
    assert_eq!(cs[0]["args"], json!(["-m", "a"]));
    assert!(cs[1].get("command").is_none() && cs[1].get("args").is_none());
    assert_eq!(cs[2]["command"], json!(["own"]));
    assert_eq!(cs[2]["args"], json!(["-m", "a"]));
}

#[test]
fn empty_command_counts_as_set_but_is_not_written() {
    let p = main_container();
    let out = ok(
        &p,
        &[pd("a", json!({"command": []})), pd("b", json!({"command": ["bash"]}))],
    );
    assert!(out["spec"]["containers"][0].get("command").is_none());
}

// ----- selection, exclusion, annotations -----

#[test]
fn annotation_records_each_applied_poddefault() {
    let p = main_container();
    let out = ok(
        &p,
        &[
            pd("a", json!({})),
            pd(
                "b",
                json!({"selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["nb"]}]}}),
            ),
            pd("c", json!({"selector": {"matchLabels": {"app": "other"}}})),
        ],
    );
    assert_eq!(
        out["metadata"]["annotations"],
        json!({
            "poddefault.admission.kubeflow.org/poddefault-a": "rv-a",
            "poddefault.admission.kubeflow.org/poddefault-b": "rv-b"
        })
    );
}

#[test]
fn exclude_annotation_and_mirror_pods_are_left_alone() {
    let mut p = main_container();
    p["metadata"]["annotations"] = json!({"poddefault.admission.kubeflow.org/exclude": "true"});
    assert_eq!(ok(&p, &[pd("a", json!({"labels": {"x": "y"}}))]), p);
    let mut p = main_container();
    p["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "abc"});
    assert_eq!(ok(&p, &[pd("a", json!({"labels": {"x": "y"}}))]), p);
    // Only the exact value "true" excludes.
    let mut p = main_container();
    p["metadata"]["annotations"] = json!({"poddefault.admission.kubeflow.org/exclude": "yes"});
    assert_ne!(ok(&p, &[pd("a", json!({"labels": {"x": "y"}}))]), p);
}

#[test]
fn other_namespace_and_non_matching_poddefaults_are_ignored() {
    let p = main_container();
    let mut foreign = pd("f", json!({"labels": {"x": "y"}}));
    foreign["metadata"]["namespace"] = json!("someone-else");
    let nomatch = pd(
        "n",
        json!({"selector": {"matchLabels": {"app": "web"}}, "labels": {"x": "y"}}),
    );
    assert_eq!(ok(&p, &[foreign, nomatch]), p);
    assert_eq!(ok(&p, &[]), p);
}

#[test]
fn empty_selector_matches_every_pod() {
    let p = main_container();
    let out = ok(&p, &[pd("all", json!({"selector": {}, "labels": {"x": "y"}}))]);
    assert_eq!(out["metadata"]["labels"]["x"], "y");
}

#[test]
fn applying_twice_is_idempotent() {
    let p = one(json!([{"name": "main"}]));
    let pds = [pd(
        "a",
        json!({
            "env": [{"name": "X", "value": "1"}],
            "volumes": [{"name": "v", "emptyDir": {}}],
            "volumeMounts": [{"name": "v", "mountPath": "/v"}],
            "tolerations": [{"key": "t", "operator": "Exists"}],
            "imagePullSecrets": [{"name": "r"}],
            "initContainers": [{"name": "i", "image": "x"}],
            "labels": {"l": "1"},
            "annotations": {"n": "1"}
        }),
    )];
    let once = ok(&p, &pds);
    assert_eq!(ok(&once, &pds), once);
}

#[test]
fn several_conflicts_are_aggregated_in_upstream_order() {
    let p = pod(json!({
        "containers": [{"name": "main", "env": [{"name": "X", "value": "1"}]}],
        "volumes": [{"name": "v", "emptyDir": {}}]
    }));
    let msg = conflict(
        &p,
        &[pd(
            "a",
            json!({"volumes": [{"name": "v", "hostPath": {"path": "/"}}], "env": [{"name": "X", "value": "2"}], "labels": {"app": "x"}}),
        )],
    );
    let rest = msg.strip_prefix(&prefix("a")).unwrap();
    assert!(
        rest.starts_with("[merging volumes for a has a conflict on v: "),
        "{rest}"
    );
    let env = rest.find(", merging env for a has a conflict on X: ").unwrap();
    let label = rest.find(", merging has conflict on app: ").unwrap();
    assert!(env < label, "{rest}");
    assert!(rest.ends_with("\n in pod]"), "{rest}");
}

#[test]
fn invalid_selector_is_reported() {
    let p = main_container();
    let err = apply_poddefaults(
        &p,
        &[pd(
            "a",
            json!({"selector": {"matchExpressions": [{"key": "k", "operator": "In"}]}}),
        )],
    )
    .unwrap_err();
    assert_eq!(
        err,
        PodDefaultError::InvalidSelector(
            "label selector conversion failed: {map[] [{k In []}]} for selector: values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty".into()
        )
    );
}

#[test]
fn undecodable_poddefault_is_reported() {
    let p = main_container();
    let err = apply_poddefaults(&p, &[pd("a", json!({"env": "X=1"}))]).unwrap_err();
    assert!(
        matches!(err, PodDefaultError::InvalidPodDefault(ref m) if m.contains("spec.env: expected an array")),
        "{err:?}"
    );
}
