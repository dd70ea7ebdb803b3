//! Kubeflow's custom objects as typed wire types: `Profile` (`kubeflow.org/v1`), `PodDefault`
//! (`kubeflow.org/v1alpha1`), Katib's `Experiment` and `Trial` (`kubeflow.org/v1beta1`) and
//! KServe's `InferenceService` (`serving.kserve.io/v1beta1`).
//!
//! Invariants: only the members kfsec reads or writes are typed, each as a [`Field`] (absent,
//! `null` and set kept apart); every object and every typed nested struct keeps all other
//! members in `extra`, so `to_value(from_value(v)) == v` for any object that decodes, and a
//! webhook or controller that changes one member produces a patch or write touching only it.
//! Pod specs, containers, volumes and other core kinds stay `serde_json::Value`. Decoding is
//! the only check done here: a member of the wrong JSON type fails, nothing else is validated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::field::Field;
use crate::meta::{LabelSelector, ObjectMeta};

/// `kubeflow.org/v1`, the Profile version kfsec writes.
pub const PROFILE_API_VERSION: &str = "kubeflow.org/v1";
/// `kubeflow.org/v1alpha1`.
pub const PODDEFAULT_API_VERSION: &str = "kubeflow.org/v1alpha1";
/// `kubeflow.org/v1beta1` (Katib Experiments and Trials).
pub const KATIB_API_VERSION: &str = "kubeflow.org/v1beta1";
/// `serving.kserve.io/v1beta1`.
pub const KSERVE_API_VERSION: &str = "serving.kserve.io/v1beta1";

/// Declares a wire struct whose members are all [`Field`]s (camelCase on the wire, absent ones
/// not written) plus `extra`, the members not typed here.
macro_rules! wire {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            $(
                $(#[$fm])*
                #[serde(default, skip_serializing_if = "Field::is_absent")]
                pub $field: Field<$ty>,
            )*
            /// Every other member, kept as received.
            #[serde(flatten)]
            pub extra: Map<String, Value>,
        }
    };
}

/// Accessors every top-level object has.
macro_rules! object {
    ($name:ident, $spec:ty) => {
        impl $name {
            /// `metadata.name` (`""` when absent).
            pub fn name(&self) -> &str {
                self.metadata.get().map_or("", |m| m.name.as_str())
            }

            /// `metadata.namespace` (`""` when absent).
            pub fn namespace(&self) -> &str {
                self.metadata.get().map_or("", |m| m.namespace.as_str())
            }

            /// `metadata`, created empty when absent.
            pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
                self.metadata.get_or_insert_with(ObjectMeta::default)
            }

            /// `spec`, created empty when absent.
            pub fn spec_mut(&mut self) -> &mut $spec {
                self.spec.get_or_insert_with(<$spec>::default)
            }
        }
    };
}

wire! {
    /// A status condition (`type`, `status`, `reason`, `message`; timestamps kept in `extra`).
    pub struct Condition {
        /// `Successful`, `Failed`, `Succeeded`, `Running`, ….
        r#type: String,
        /// `True`, `False` or `Unknown`.
        status: String,
        /// A CamelCase reason.
        reason: String,
        /// A human-readable message.
        message: String,
    }
}

impl Condition {
    /// A condition with `type`, `status` and `message` (what the profile controller writes).
    pub fn new(r#type: &str, status: &str, message: &str) -> Self {
        Self {
            r#type: Field::new(r#type.to_owned()),
            status: Field::new(status.to_owned()),
            message: Field::new(message.to_owned()),
            ..Self::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Profile

wire! {
    /// A Kubeflow Profile: a namespace with an owner (cluster-scoped).
    pub struct Profile {
        /// `kubeflow.org/v1` (or `v1beta1`).
        api_version: String,
        /// `Profile`.
        kind: String,
        /// Metadata; the name is the namespace's.
        metadata: ObjectMeta,
        /// The owner, plugins and quota.
        spec: ProfileSpec,
        /// Conditions the controller records.
        status: ProfileStatus,
    }
}

object!(Profile, ProfileSpec);

impl Profile {
    /// `spec.owner.name` (`""` when absent).
    pub fn owner_name(&self) -> &str {
        self.spec
            .get()
            .and_then(|s| s.owner.get())
            .map_or("", |o| o.name.as_str())
    }

    /// `status.conditions` (empty when absent).
    pub fn conditions(&self) -> &[Condition] {
        self.status.get().map_or(&[], |s| s.conditions.as_slice())
    }
}

wire! {
    /// `ProfileSpec`.
    pub struct ProfileSpec {
        /// The owner: an rbacv1.Subject, usually `{kind: User, name: <email>}`.
        owner: ProfileOwner,
        /// Plugins (`WorkloadIdentity`, `AwsIamForServiceAccount`; others are ignored).
        plugins: Vec<ProfilePlugin>,
        /// The namespace's ResourceQuota spec.
        resource_quota_spec: ResourceQuotaSpec,
    }
}

wire! {
    /// `spec.owner` as written in the Profile: a Subject whose `kind` and `apiGroup` may be
    /// missing (the controller defaults them).
    pub struct ProfileOwner {
        /// `User` (the default), `Group` or `ServiceAccount`.
        kind: String,
        /// `rbac.authorization.k8s.io` for users and groups.
        api_group: String,
        /// The owner's name.
        name: String,
        /// A service account's namespace.
        namespace: String,
    }
}

wire! {
    /// One `spec.plugins[]` entry: `{kind, spec}` with a free-form spec.
    pub struct ProfilePlugin {
        /// `WorkloadIdentity`, `AwsIamForServiceAccount`, ….
        kind: String,
        /// The plugin's own settings; read with [`ProfilePlugin::spec_as`].
        spec: Value,
    }
}

impl ProfilePlugin {
    /// The plugin spec decoded as `T`, if it decodes (a plugin is free-form: one that does not
    /// fit is ignored, as upstream ignores plugins it cannot use).
    pub fn spec_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        self.spec.get().and_then(|v| T::deserialize(v).ok())
    }
}

wire! {
    /// `WorkloadIdentity` plugin spec.
    pub struct WorkloadIdentity {
        /// The GCP service account bound to `default-editor`.
        gcp_service_account: String,
    }
}

wire! {
    /// `AwsIamForServiceAccount` plugin spec.
    pub struct AwsIamForServiceAccount {
        /// The IAM role ARN bound to `default-editor` (`annotateOnly` and the rest kept in `extra`).
        aws_iam_role: String,
    }
}

wire! {
    /// A core `ResourceQuotaSpec`; only `hard` is read.
    pub struct ResourceQuotaSpec {
        /// Resource name → quantity (a string, or a number as Kubernetes also accepts).
        hard: Map<String, Value>,
    }
}

wire! {
    /// `ProfileStatus`.
    pub struct ProfileStatus {
        /// `[{type: Successful|Failed, status, message}]`.
        conditions: Vec<Condition>,
    }
}

// ---------------------------------------------------------------------------------------------
// PodDefault

wire! {
    /// A PodDefault: what to add to the pods its selector matches (namespaced).
    pub struct PodDefault {
        /// `kubeflow.org/v1alpha1`.
        api_version: String,
        /// `PodDefault`.
        kind: String,
        /// Metadata; `resourceVersion` is written into the pods it applies to.
        metadata: ObjectMeta,
        /// What to add.
        spec: PodDefaultSpec,
    }
}

object!(PodDefault, PodDefaultSpec);

wire! {
    /// `PodDefaultSpec`. Core objects (env vars, volumes, containers, …) stay JSON.
    pub struct PodDefaultSpec {
        /// Which pods of the namespace it applies to.
        selector: LabelSelector,
        /// A description shown by the notebook UI.
        desc: String,
        /// Env vars for every container.
        env: Vec<Value>,
        /// Env sources for every container.
        env_from: Vec<Value>,
        /// Pod volumes.
        volumes: Vec<Value>,
        /// Volume mounts for every container.
        volume_mounts: Vec<Value>,
        /// Pod annotations.
        annotations: BTreeMap<String, String>,
        /// Pod labels.
        labels: BTreeMap<String, String>,
        /// The pod's service account.
        service_account_name: String,
        /// The pod's `automountServiceAccountToken`.
        automount_service_account_token: bool,
        /// Pod tolerations.
        tolerations: Vec<Value>,
        /// Pod image pull secrets.
        image_pull_secrets: Vec<Value>,
        /// Init containers.
        init_containers: Vec<Value>,
        /// Containers added next to the pod's.
        sidecars: Vec<Value>,
        /// Command for containers without one.
        command: Vec<String>,
        /// Args for containers without any.
        args: Vec<String>,
    }
}

// ---------------------------------------------------------------------------------------------
// Katib

wire! {
    /// A Katib Experiment (namespaced).
    pub struct Experiment {
        /// `kubeflow.org/v1beta1`.
        api_version: String,
        /// `Experiment`.
        kind: String,
        /// Metadata.
        metadata: ObjectMeta,
        /// The search.
        spec: ExperimentSpec,
        /// What the controller records.
        status: ExperimentStatus,
    }
}

object!(Experiment, ExperimentSpec);

impl Experiment {
    /// The last condition of type `ty`, if its status is `True`.
    pub fn condition_true(&self, ty: &str) -> Option<&Condition> {
        self.status
            .get()
            .map_or(&[][..], |s| s.conditions.as_slice())
            .iter()
            .rev()
            .find(|c| c.r#type.as_str() == ty)
            .filter(|c| c.status.as_str() == "True")
    }
}

wire! {
    /// `ExperimentSpec`.
    pub struct ExperimentSpec {
        /// The search space.
        parameters: Vec<ParameterSpec>,
        /// What to optimize.
        objective: ObjectiveSpec,
        /// The suggestion algorithm.
        algorithm: AlgorithmSpec,
        /// The early-stopping algorithm.
        early_stopping: AlgorithmSpec,
        /// How a trial is run.
        trial_template: TrialTemplate,
        /// Trials run at once.
        parallel_trial_count: i64,
        /// Trials in all.
        max_trial_count: i64,
        /// Failed trials tolerated.
        max_failed_trial_count: i64,
        /// How metrics are collected.
        metrics_collector_spec: MetricsCollectorSpec,
        /// Neural architecture search (instead of `parameters`).
        nas_config: Value,
        /// `Never`, `LongRunning` or `FromVolume`.
        resume_policy: String,
    }
}

wire! {
    /// One `spec.parameters[]` entry.
    pub struct ParameterSpec {
        /// Parameter name.
        name: String,
        /// `int`, `double`, `categorical` or `discrete`.
        parameter_type: String,
        /// Its range or values.
        feasible_space: FeasibleSpace,
    }
}

wire! {
    /// `FeasibleSpace`.
    pub struct FeasibleSpace {
        /// Upper bound.
        max: String,
        /// Lower bound.
        min: String,
        /// Values (categorical, discrete).
        list: Vec<String>,
        /// Step.
        step: String,
        /// `uniform`, `logUniform`, `normal` or `logNormal`.
        distribution: String,
    }
}

wire! {
    /// `ObjectiveSpec`.
    pub struct ObjectiveSpec {
        /// `minimize` or `maximize`.
        r#type: String,
        /// The metric optimized.
        objective_metric_name: String,
        /// Other metrics collected.
        additional_metric_names: Vec<String>,
        /// How each metric is reduced.
        metric_strategies: Vec<MetricStrategy>,
    }
}

wire! {
    /// `{name, value: min|max|latest}`.
    pub struct MetricStrategy {
        /// Metric name.
        name: String,
        /// `min`, `max` or `latest`.
        value: String,
    }
}

wire! {
    /// `AlgorithmSpec` / `EarlyStoppingSpec`: the algorithm's name (settings kept in `extra`).
    pub struct AlgorithmSpec {
        /// Algorithm name.
        algorithm_name: String,
    }
}

wire! {
    /// `TrialTemplate`.
    pub struct TrialTemplate {
        /// The container whose metrics count.
        primary_container_name: String,
        /// Labels of the primary pod.
        primary_pod_labels: BTreeMap<String, String>,
        /// gjson condition for success.
        success_condition: String,
        /// gjson condition for failure.
        failure_condition: String,
        /// Placeholders of the template.
        trial_parameters: Vec<TrialParameterSpec>,
        /// The trial's object template (any kind, kept as JSON).
        trial_spec: Value,
        /// A template kept in a ConfigMap instead.
        config_map: ConfigMapSource,
    }
}

wire! {
    /// One `trialParameters[]` entry.
    pub struct TrialParameterSpec {
        /// Placeholder name (`${trialParameters.<name>}`).
        name: String,
        /// Description.
        description: String,
        /// The experiment parameter (or `${trialSpec.…}` meta key) it takes its value from.
        reference: String,
    }
}

wire! {
    /// `ConfigMapSource`.
    pub struct ConfigMapSource {
        /// ConfigMap name.
        config_map_name: String,
        /// ConfigMap namespace.
        config_map_namespace: String,
        /// Key of the template in the ConfigMap.
        template_path: String,
    }
}

wire! {
    /// `MetricsCollectorSpec`.
    pub struct MetricsCollectorSpec {
        /// Where metrics are read from.
        source: SourceSpec,
        /// Which collector.
        collector: CollectorSpec,
    }
}

wire! {
    /// `SourceSpec`.
    pub struct SourceSpec {
        /// Prometheus endpoint.
        http_get: HttpGetSource,
        /// File or directory.
        file_system_path: FileSystemPath,
        /// Metric line filter.
        filter: FilterSpec,
    }
}

wire! {
    /// The `httpGet` source (a core HTTPGetAction; only path and port are read).
    pub struct HttpGetSource {
        /// URL path.
        path: String,
        /// Port: a number or a named port (IntOrString).
        port: Value,
    }
}

wire! {
    /// `FileSystemPath`.
    pub struct FileSystemPath {
        /// Absolute path.
        path: String,
        /// `File` or `Directory`.
        kind: String,
        /// `TEXT` or `JSON`.
        format: String,
    }
}

wire! {
    /// `FilterSpec`.
    pub struct FilterSpec {
        /// Regular expressions with two groups (name, value).
        metrics_format: Vec<String>,
    }
}

wire! {
    /// `CollectorSpec`.
    pub struct CollectorSpec {
        /// `StdOut`, `File`, `TensorFlowEvent`, `PrometheusMetric`, `Custom` or `None`.
        kind: String,
        /// The custom collector container.
        custom_collector: Value,
    }
}

wire! {
    /// `ExperimentStatus`.
    pub struct ExperimentStatus {
        /// Conditions (`Created`, `Running`, `Succeeded`, `Failed`, …).
        conditions: Vec<Condition>,
        /// Trials created so far.
        trials: i64,
    }
}

wire! {
    /// A Katib Trial (namespaced): what the trial pod mutator follows owner references to.
    pub struct Trial {
        /// `kubeflow.org/v1beta1`.
        api_version: String,
        /// `Trial`.
        kind: String,
        /// Metadata; its labels are copied onto trial pods.
        metadata: ObjectMeta,
        /// The trial.
        spec: TrialSpec,
    }
}

object!(Trial, TrialSpec);

wire! {
    /// `TrialSpec`.
    pub struct TrialSpec {
        /// The container that gets `KATIB_TRIAL_NAME`.
        primary_container_name: String,
    }
}

// ---------------------------------------------------------------------------------------------
// KServe

wire! {
    /// A KServe InferenceService (namespaced).
    pub struct InferenceService {
        /// `serving.kserve.io/v1beta1`.
        api_version: String,
        /// `InferenceService`.
        kind: String,
        /// Metadata; annotations select the deployment mode and autoscaler class.
        metadata: ObjectMeta,
        /// Components (kept as JSON: each is a pod spec with extensions).
        spec: InferenceServiceSpec,
        /// What the controller records.
        status: InferenceServiceStatus,
    }
}

object!(InferenceService, InferenceServiceSpec);

impl InferenceService {
    /// The annotation `key`, if present.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.get()?.annotations.get(key).map(String::as_str)
    }
}

wire! {
    /// `InferenceServiceSpec`.
    pub struct InferenceServiceSpec {
        /// The predictor.
        predictor: Value,
        /// The transformer.
        transformer: Value,
        /// The explainer.
        explainer: Value,
    }
}

wire! {
    /// `InferenceServiceStatus`.
    pub struct InferenceServiceStatus {
        /// The mode the service was deployed in.
        deployment_mode: String,
    }
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde_json::json;

    use super::*;

    /// `v` decodes as `T` and re-encodes to an equal JSON value.
    fn round_trip<T: Serialize + DeserializeOwned>(v: Value) -> T {
        let t: T = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&t).unwrap(), v);
        t
    }

    #[test]
    fn profile_round_trips() {
        let p: Profile = round_trip(json!({
            "apiVersion": "kubeflow.org/v1",
            "kind": "Profile",
            "metadata": {"name": "kubeflow-user-example-com", "uid": "0b7a", "resourceVersion": "12",
                "finalizers": ["profile-finalizer"], "generation": 1,
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {
                "owner": {"kind": "User", "name": "user@example.com", "x-unknown": [1, null]},
                "plugins": [
                    {"kind": "WorkloadIdentity", "spec": {"gcpServiceAccount": "sa@p.iam.gserviceaccount.com"}},
                    {"kind": "AwsIamForServiceAccount", "spec": {"awsIamRole": "arn:aws:iam::1:role/r", "annotateOnly": true}},
                    {"kind": "Custom", "spec": null}
                ],
                "resourceQuotaSpec": {"hard": {"cpu": "2", "memory": "2Gi", "pods": 10}, "scopes": null},
                "futureField": {"a": null}
            },
            "status": {"conditions": [{"type": "Successful", "status": "True", "message": "",
                "lastTransitionTime": null}]}
        }));
        assert_eq!(p.name(), "kubeflow-user-example-com");
        assert_eq!(p.owner_name(), "user@example.com");
        let plugins = p.spec.get().unwrap().plugins.as_slice();
        let wi: WorkloadIdentity = plugins[0].spec_as().unwrap();
        assert_eq!(wi.gcp_service_account.as_str(), "sa@p.iam.gserviceaccount.com");
        let aws: AwsIamForServiceAccount = plugins[1].spec_as().unwrap();
        assert_eq!(aws.aws_iam_role.as_str(), "arn:aws:iam::1:role/r");
        assert!(plugins[2].spec_as::<WorkloadIdentity>().is_none());
        assert_eq!(p.conditions()[0].r#type.as_str(), "Successful");
        // nulls and a bare object
        round_trip::<Profile>(json!({"spec": {"owner": null, "plugins": null, "resourceQuotaSpec": {}}}));
        round_trip::<Profile>(json!({}));
        assert!(serde_json::from_value::<Profile>(json!({"spec": {"owner": {"name": 5}}})).is_err());
        assert!(serde_json::from_value::<Profile>(json!({"spec": []})).is_err());
    }

    #[test]
    fn poddefault_round_trips() {
        let pd: PodDefault = round_trip(json!({
            "apiVersion": "kubeflow.org/v1alpha1",
            "kind": "PodDefault",
            "metadata": {"name": "access-ml-pipeline", "namespace": "kubeflow-user-example-com",
                "resourceVersion": "5"},
            "spec": {
                "desc": "Allow access to Kubeflow Pipelines",
                "selector": {"matchLabels": {"access-ml-pipeline": "true"}},
                "env": [{"name": "KF_PIPELINES_SA_TOKEN_PATH",
                    "value": "/var/run/secrets/kubeflow/pipelines/token"}],
                "volumes": [{"name": "volume-kf-pipeline-token", "projected": {"sources": [{
                    "serviceAccountToken": {"path": "token", "expirationSeconds": 7200,
                        "audience": "pipelines.kubeflow.org"}}]}}],
                "volumeMounts": [{"mountPath": "/var/run/secrets/kubeflow/pipelines",
                    "name": "volume-kf-pipeline-token", "readOnly": true}],
                "envFrom": null,
                "annotations": {"a": "b"}, "labels": {},
                "serviceAccountName": "default-editor", "automountServiceAccountToken": false,
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "imagePullSecrets": [{"name": "reg"}],
                "initContainers": [], "sidecars": [{"name": "s", "image": "busybox"}],
                "command": ["sh"], "args": null,
                "unknownSpecField": 1
            }
        }));
        let spec = pd.spec.get().unwrap();
        assert_eq!(spec.selector.get().unwrap().match_labels["access-ml-pipeline"], "true");
        assert_eq!(spec.automount_service_account_token.get(), Some(&false));
        assert!(spec.args.is_null());
        assert!(serde_json::from_value::<PodDefault>(json!({"spec": {"env": {}}})).is_err());
    }

    #[test]
    fn experiment_round_trips() {
        let e: Experiment = round_trip(json!({
            "apiVersion": "kubeflow.org/v1beta1",
            "kind": "Experiment",
            "metadata": {"name": "random", "namespace": "kubeflow",
                "annotations": {"x": "y"}},
            "spec": {
                "objective": {"type": "maximize", "goal": 0.99, "objectiveMetricName": "Validation-accuracy",
                    "additionalMetricNames": ["Train-accuracy"],
                    "metricStrategies": [{"name": "Validation-accuracy", "value": "max"}]},
                "algorithm": {"algorithmName": "random", "algorithmSettings": [{"name": "random_state", "value": "10"}]},
                "earlyStopping": null,
                "parallelTrialCount": 3, "maxTrialCount": 12, "maxFailedTrialCount": 3,
                "parameters": [
                    {"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "0.01", "max": "0.03"}},
                    {"name": "optimizer", "parameterType": "categorical",
                        "feasibleSpace": {"list": ["sgd", "adam", "ftrl"], "distribution": null}}
                ],
                "trialTemplate": {
                    "primaryContainerName": "training-container",
                    "trialParameters": [{"name": "learningRate", "description": "Learning rate", "reference": "lr"}],
                    "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {
                        "containers": [{"name": "training-container", "image": "x",
                            "command": ["--lr=${trialParameters.learningRate}"]}],
                        "restartPolicy": "Never"}}}},
                    "retain": true
                },
                "metricsCollectorSpec": {"collector": {"kind": "Prometheus", "customCollector": null},
                    "source": {"httpGet": {"path": "/metrics", "port": "metrics", "scheme": "HTTP"},
                        "filter": {"metricsFormat": ["([\\w|-]+)\\s*=\\s*([+-]?\\d*(\\.\\d+)?)"]}}},
                "resumePolicy": "LongRunning"
            },
            "status": {"conditions": [{"type": "Succeeded", "status": "True",
                "reason": "ExperimentMaxTrialsReached", "message": "done",
                "lastUpdateTime": "2024-01-01T00:00:00Z"}],
                "trials": 12, "trialsSucceeded": 12, "currentOptimalTrial": {"bestTrialName": ""}}
        }));
        assert_eq!(
            e.condition_true("Succeeded").unwrap().reason.as_str(),
            "ExperimentMaxTrialsReached"
        );
        assert_eq!(e.spec.get().unwrap().max_trial_count.get(), Some(&12));
        let mut e = e;
        e.spec_mut().parallel_trial_count.set(5);
        assert_eq!(serde_json::to_value(&e).unwrap()["spec"]["parallelTrialCount"], 5);
        assert!(serde_json::from_value::<Experiment>(json!({"spec": {"maxTrialCount": "12"}})).is_err());
    }

    #[test]
    fn trial_round_trips() {
        let t: Trial = round_trip(json!({
            "apiVersion": "kubeflow.org/v1beta1",
            "kind": "Trial",
            "metadata": {"name": "random-abc", "namespace": "kubeflow",
                "labels": {"katib.kubeflow.org/experiment": "random"},
                "ownerReferences": [{"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment",
                    "name": "random", "uid": "u", "controller": true}]},
            "spec": {"primaryContainerName": "training-container",
                "runSpec": {"apiVersion": "batch/v1", "kind": "Job"},
                "parameterAssignments": [{"name": "lr", "value": "0.02"}]},
            "status": {"startTime": null}
        }));
        assert_eq!(
            t.spec.get().unwrap().primary_container_name.as_str(),
            "training-container"
        );
    }

    #[test]
    fn inference_service_round_trips() {
        let isvc: InferenceService = round_trip(json!({
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "sklearn-iris", "namespace": "kserve-test",
                "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"},
                "storageUri": "gs://kfserving-examples/models/sklearn/1.0/model"}},
                "transformer": null},
            "status": {"deploymentMode": "RawDeployment", "url": "http://x", "conditions": []}
        }));
        assert_eq!(
            isvc.annotation("serving.kserve.io/deploymentMode"),
            Some("RawDeployment")
        );
        assert!(isvc.spec.get().unwrap().transformer.is_null());
    }
}
