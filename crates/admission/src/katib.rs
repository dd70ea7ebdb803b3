//! Katib webhooks (`kubeflow/katib` `pkg/webhook/v1beta1`): the Experiment defaulter
//! (`/mutate-experiment`), the Experiment validator (`/validate-experiment`) and the trial pod
//! mutator (`/mutate-pod`).
//!
//! Invariants: the validator refuses Experiments in namespaces without
//! `katib.kubeflow.org/metrics-collector-injection: enabled` and, on update, any change other than
//! the three trial counts; errors are apimachinery field errors aggregated exactly as upstream
//! (`Errored(400)`); the pod mutator only ever adds labels and one env var, and only to pods whose
//! owner chain (looked up in the context, never fetched) leads to a Trial. Experiments and Trials
//! are read as `kfsec_types::kubeflow` types: a member of the wrong JSON type is refused with 400
//! naming it (as upstream's decoder refuses it), pods stay JSON, and the defaulter re-encodes only
//! the spec (every member it did not default kept exactly), so its patch holds only the defaults.

use std::collections::BTreeMap;

use kfsec_types::Field;
use kfsec_types::admission::AdmissionRequest;
use kfsec_types::kubeflow::{
    CollectorSpec, Experiment, ExperimentSpec, KATIB_API_VERSION, MetricStrategy, MetricsCollectorSpec, ObjectiveSpec,
    ParameterSpec, SourceSpec, Trial, TrialParameterSpec,
};
use kfsec_types::meta::LabelSelector;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::gofmt::{self, BadValue, FieldError};
use crate::registration::{FailurePolicy, MatchCondition, Registration, Rule, WebhookKind};
use crate::webhook::{AdmissionOutcome, Context, ContextNeeds, Webhook, decode_typed};

/// Namespace label Katib requires.
pub const INJECTION_LABEL: &str = "katib.kubeflow.org/metrics-collector-injection";
/// Its required value.
pub const INJECTION_ENABLED: &str = "enabled";
/// Label carrying the trial name on trial pods.
pub const LABEL_TRIAL_NAME: &str = "katib.kubeflow.org/trial";
/// Env var carrying the trial name.
pub const ENV_TRIAL_NAME: &str = "KATIB_TRIAL_NAME";
const CONFIG_MAP: &str = "katib-config";
const SERVICE: &str = "katib-controller";
const CONFIGURATION: &str = "katib.kubeflow.org";
const MAX_OWNER_DEPTH: usize = 16;

/// What `katib-config` provides to the webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KatibSettings {
    /// Suggestion algorithms with a configured image.
    pub suggestion_algorithms: Vec<String>,
    /// Early stopping algorithms with a configured image.
    pub early_stopping_algorithms: Vec<String>,
    /// Metrics collector kinds with a configured image.
    pub metrics_collectors: Vec<String>,
}

impl Default for KatibSettings {
    /// The defaults of Katib's standalone `katib-config.yaml`.
    fn default() -> Self {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_string()).collect();
        Self {
            suggestion_algorithms: v(&[
                "random",
                "tpe",
                "grid",
                "hyperband",
                "bayesianoptimization",
                "cmaes",
                "sobol",
                "multivariate-tpe",
                "enas",
                "darts",
                "pbt",
            ]),
            early_stopping_algorithms: v(&["medianstop"]),
            metrics_collectors: v(&["StdOut", "File", "TensorFlowEvent"]),
        }
    }
}

fn experiment_rules() -> Vec<Rule> {
    vec![Rule::new(
        &["CREATE", "UPDATE"],
        &["kubeflow.org"],
        &["v1beta1"],
        &["experiments"],
    )]
}

fn decode_object<'a>(req: &'a AdmissionRequest, what: &str) -> Result<&'a Value, AdmissionOutcome> {
    match &req.object {
        Some(v @ Value::Object(_)) => match v.get("spec") {
            None | Some(Value::Null | Value::Object(_)) => Ok(v),
            Some(_) => Err(AdmissionOutcome::deny(
                400,
                format!("cannot decode {what}: spec: expected an object"),
            )),
        },
        Some(_) => Err(AdmissionOutcome::deny(
            400,
            format!("cannot decode {what}: expected an object"),
        )),
        None => Err(AdmissionOutcome::deny(400, "there is no content to decode")),
    }
}

/// The request's Experiment, as sent and typed.
fn decode_experiment(req: &AdmissionRequest) -> Result<(&Value, Experiment), AdmissionOutcome> {
    let raw = decode_object(req, "Experiment")?;
    Ok((raw, decode_typed(raw, "Experiment")?))
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path).and_then(Value::as_str).unwrap_or_default()
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    if cur.is_null() { None } else { Some(cur) }
}

fn set(obj: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for p in parents {
        if !cur.get(*p).is_some_and(Value::is_object) {
            if let Value::Object(m) = cur {
                m.insert((*p).to_string(), Value::Object(Map::new()));
            } else {
                return;
            }
        }
        match cur.get_mut(*p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Value::Object(m) = cur {
        m.insert((*last).to_string(), value);
    }
}

/// Sets a text member that is absent, `null` or empty.
fn default_str(field: &mut Field<String>, value: &str) {
    if field.as_str().is_empty() {
        field.set(value.to_owned());
    }
}

/// `Experiment.SetDefault()` on an Experiment's spec.
pub fn default_experiment(spec: &mut ExperimentSpec) {
    if spec.parallel_trial_count.get().is_none() {
        spec.parallel_trial_count.set(3);
    }
    default_str(&mut spec.resume_policy, "Never");
    // Objective: one metric strategy per metric.
    if let Some(obj) = spec.objective.get_mut() {
        let objective = obj.objective_metric_name.as_str().to_string();
        let by_type = match obj.r#type.as_str() {
            "minimize" => "min",
            "maximize" => "max",
            _ => "latest",
        };
        let strategy = |name: &str| MetricStrategy {
            name: Field::new(name.to_owned()),
            value: Field::new(by_type.to_owned()),
            ..MetricStrategy::default()
        };
        let mut strategies = obj.metric_strategies.as_slice().to_vec();
        let mut has_objective = false;
        let mut with_default = Vec::new();
        for st in &strategies {
            let name = st.name.as_str();
            if name == objective {
                has_objective = true;
            } else {
                with_default.push(name.to_string());
            }
        }
        if !has_objective {
            strategies.push(strategy(&objective));
        }
        for m in obj.additional_metric_names.as_slice() {
            if !with_default.iter().any(|w| w == m) {
                strategies.push(strategy(m));
            }
        }
        if !strategies.is_empty() {
            obj.metric_strategies.set(strategies);
        }
    }
    // Trial template conditions and primary pod labels.
    if let Some(tt) = spec.trial_template.get_mut()
        && let Some(kind) = tt
            .trial_spec
            .get()
            .filter(|t| t.is_object())
            .map(|t| s(t, &["kind"]).to_string())
    {
        let (success, failure, labels): (&str, &str, &[(&str, &str)]) = match kind.as_str() {
            "Job" => (
                "status.conditions.#(type==\"Complete\")#|#(status==\"True\")#",
                "status.conditions.#(type==\"Failed\")#|#(status==\"True\")#",
                &[],
            ),
            "TrainJob" => (
                "status.conditions.#(type==\"Complete\")#|#(status==\"True\")#",
                "status.conditions.#(type==\"Failed\")#|#(status==\"True\")#",
                &[
                    ("jobset.sigs.k8s.io/replicatedjob-name", "node"),
                    ("batch.kubernetes.io/job-completion-index", "0"),
                ],
            ),
            "TFJob" | "PyTorchJob" | "XGBoostJob" | "MPIJob" => (
                "status.conditions.#(type==\"Succeeded\")#|#(status==\"True\")#",
                "status.conditions.#(type==\"Failed\")#|#(status==\"True\")#",
                &[("training.kubeflow.org/job-role", "master")],
            ),
            _ => ("", "", &[]),
        };
        if !success.is_empty() {
            default_str(&mut tt.success_condition, success);
            default_str(&mut tt.failure_condition, failure);
        }
        if !labels.is_empty() && tt.primary_pod_labels.get().is_none_or(BTreeMap::is_empty) {
            tt.primary_pod_labels
                .set(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
        }
    }
    // Metrics collector.
    let mc = spec.metrics_collector_spec.get_or_insert_with(Default::default);
    if mc.collector.get().is_none() {
        mc.collector.set(CollectorSpec {
            kind: Field::new("StdOut".to_owned()),
            ..CollectorSpec::default()
        });
    }
    let kind = mc
        .collector
        .get()
        .map(|c| c.kind.as_str().to_owned())
        .unwrap_or_default();
    fn source(mc: &mut MetricsCollectorSpec) -> &mut SourceSpec {
        mc.source.get_or_insert_with(Default::default)
    }
    match kind.as_str() {
        "PrometheusMetric" => {
            let http = source(mc).http_get.get_or_insert_with(Default::default);
            default_str(&mut http.path, "/metrics");
            if port_string(http.port.get()) == "0" {
                http.port.set(json!(8080));
            }
        }
        "File" => {
            let fsp = source(mc).file_system_path.get_or_insert_with(Default::default);
            default_str(&mut fsp.kind, "File");
            default_str(&mut fsp.path, "/var/log/katib/metrics.log");
            default_str(&mut fsp.format, "TEXT");
        }
        "TensorFlowEvent" => {
            let fsp = source(mc).file_system_path.get_or_insert_with(Default::default);
            default_str(&mut fsp.kind, "Directory");
            default_str(&mut fsp.path, "/var/log/katib/tfevent/");
        }
        _ => {}
    }
    // Parameter distributions.
    for p in spec.parameters.get_mut().into_iter().flatten() {
        let fs = p.feasible_space.get_or_insert_with(Default::default);
        default_str(&mut fs.distribution, "uniform");
    }
}

/// `intstr.IntOrString.String()`; absent is `"0"`.
fn port_string(v: Option<&Value>) -> String {
    match v {
        None => "0".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => other.to_string(),
    }
}

/// `/mutate-experiment` (`defaulter.experiment.katib.kubeflow.org`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExperimentDefaulter;

impl Webhook for ExperimentDefaulter {
    fn name(&self) -> &str {
        "defaulter.experiment.katib.kubeflow.org"
    }

    fn path(&self) -> &str {
        "/mutate-experiment"
    }

    fn registration(&self) -> Registration {
        Registration {
            name: "defaulter.experiment.katib.kubeflow.org",
            path: "/mutate-experiment",
            kind: WebhookKind::Mutating,
            configuration: CONFIGURATION,
            service: SERVICE,
            rules: experiment_rules(),
            admission_review_versions: &["v1"],
            failure_policy: FailurePolicy::Fail,
            namespace_selector: None,
            object_selector: None,
            match_conditions: Vec::new(),
            reinvocation_policy: None,
        }
    }

    fn context_needs(&self) -> ContextNeeds {
        ContextNeeds::none()
    }

    fn admit(&self, req: &AdmissionRequest, _ctx: &Context) -> AdmissionOutcome {
        let (raw, mut exp) = match decode_experiment(req) {
            Ok(e) => e,
            Err(denied) => return denied,
        };
        default_experiment(exp.spec_mut());
        // Only the spec is defaulted: the rest of the object is left exactly as sent.
        let mut after = raw.clone();
        match (serde_json::to_value(&exp.spec), after.as_object_mut()) {
            (Ok(spec), Some(obj)) => {
                obj.insert("spec".into(), spec);
                AdmissionOutcome::from_mutation(raw, &after)
            }
            _ => AdmissionOutcome::deny(500, "the defaulted Experiment could not be encoded"),
        }
    }
}

/// `/validate-experiment` (`validator.experiment.katib.kubeflow.org`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExperimentValidator;

impl Webhook for ExperimentValidator {
    fn name(&self) -> &str {
        "validator.experiment.katib.kubeflow.org"
    }

    fn path(&self) -> &str {
        "/validate-experiment"
    }

    fn registration(&self) -> Registration {
        Registration {
            name: "validator.experiment.katib.kubeflow.org",
            path: "/validate-experiment",
            kind: WebhookKind::Validating,
            configuration: CONFIGURATION,
            service: SERVICE,
            rules: experiment_rules(),
            admission_review_versions: &["v1"],
            failure_policy: FailurePolicy::Fail,
            namespace_selector: None,
            object_selector: None,
            match_conditions: Vec::new(),
            reinvocation_policy: None,
        }
    }

    fn context_needs(&self) -> ContextNeeds {
        ContextNeeds {
            namespace_labels: true,
            settings: true,
            ..ContextNeeds::none()
        }
    }

    fn admit(&self, req: &AdmissionRequest, ctx: &Context) -> AdmissionOutcome {
        let exp = match decode_experiment(req) {
            Ok((_, e)) => e,
            Err(denied) => return denied,
        };
        let old: Option<Experiment> = match &req.old_object {
            Some(o @ Value::Object(_)) => match decode_typed(o, "old Experiment") {
                Ok(o) => Some(o),
                Err(denied) => return denied,
            },
            Some(Value::Null) | None => None,
            Some(_) => {
                return AdmissionOutcome::deny(
                    400,
                    "Cannot decode incoming old object: expected an object".to_string(),
                );
            }
        };
        if ctx.namespace_labels.get(INJECTION_LABEL).map(String::as_str) != Some(INJECTION_ENABLED) {
            return AdmissionOutcome::deny(
                400,
                format!(
                    "Cannot create the Experiment {} in namespace {}: the namespace lacks label \"{INJECTION_LABEL}: {INJECTION_ENABLED}\"",
                    gofmt::quote(exp.name()),
                    gofmt::quote(&req.namespace)
                ),
            );
        }
        let errs = validate_experiment(&exp, old.as_ref(), &ctx.settings.katib);
        if errs.is_empty() {
            AdmissionOutcome::Allow
        } else {
            AdmissionOutcome::deny(400, gofmt::field_errors(&errs))
        }
    }
}

fn invalid_int(path: &str, v: i64, detail: &str) -> FieldError {
    FieldError::Invalid {
        path: path.into(),
        value: BadValue::Int(v),
        detail: detail.into(),
    }
}

fn invalid_str(path: &str, v: &str, detail: impl Into<String>) -> FieldError {
    FieldError::Invalid {
        path: path.into(),
        value: BadValue::Str(v.into()),
        detail: detail.into(),
    }
}

fn required(path: &str, detail: impl Into<String>) -> FieldError {
    FieldError::Required {
        path: path.into(),
        detail: detail.into(),
    }
}

/// `equality.Semantic.DeepEqual` approximated on JSON: nulls, empty strings and empty
/// lists/maps are the same as absent.
fn semantic(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), semantic(v)))
                .filter(|(_, v)| !is_zero(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(semantic).collect()),
        other => other.clone(),
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// `DefaultValidator.ValidateExperiment`.
fn validate_experiment(exp: &Experiment, old: Option<&Experiment>, cfg: &KatibSettings) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = exp.name();
    if !name.as_bytes().first().is_some_and(u8::is_ascii_lowercase) || name.len() > 40 {
        errs.push(invalid_str(
            "metadata.name",
            name,
            "name must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name', or 'abc-123', regex used for validation is '^[a-z]([-a-z0-9]*[a-z0-9])?)') and may not be longer than 40 characters. ",
        ));
    }
    let default_spec = ExperimentSpec::default();
    let spec = exp.spec.get().unwrap_or(&default_spec);
    let max_failed = spec.max_failed_trial_count.get().copied();
    let max = spec.max_trial_count.get().copied();
    let parallel = spec.parallel_trial_count.get().copied();
    if let Some(v) = max_failed.filter(|v| *v < 0) {
        errs.push(invalid_int("spec.maxFailedTrialCount", v, "should not be less than 0"));
    }
    if let Some(v) = max.filter(|v| *v <= 0) {
        errs.push(invalid_int("spec.maxTrialCount", v, "must be greater than 0"));
    }
    if let Some(v) = parallel.filter(|v| *v <= 0) {
        errs.push(invalid_int("spec.parallelTrialCount", v, "must be greater than 0"));
    }
    if let (Some(f), Some(m)) = (max_failed, max)
        && f > m
    {
        errs.push(invalid_int(
            "spec.maxFailedTrialCount",
            f,
            "should be less than or equal to spec.maxTrialCount",
        ));
    }
    if let (Some(p), Some(m)) = (parallel, max)
        && p > m
    {
        errs.push(invalid_int(
            "spec.parallelTrialCount",
            p,
            "should be less than or equal to spec.maxTrialCount",
        ));
    }
    // The spec as sent (a Field re-encodes exactly what was decoded).
    let json = |spec: &Field<ExperimentSpec>| serde_json::to_value(spec).unwrap_or(Value::Null);
    let spec_json = json(&exp.spec);
    if let Some(old) = old {
        let restarting = semantic(&spec_json) != semantic(&json(&old.spec));
        let completed = old.condition_true("Succeeded").is_some() || old.condition_true("Failed").is_some();
        let old_policy = old.spec.get().map_or("", |s| s.resume_policy.as_str());
        let restartable = old
            .condition_true("Succeeded")
            .is_some_and(|c| c.reason.as_str() == "ExperimentMaxTrialsReached")
            && matches!(old_policy, "LongRunning" | "FromVolume");
        if restarting && completed && !restartable {
            errs.push(invalid_str(
                "spec.resumePolicy",
                spec.resume_policy.as_str(),
                "Experiment can be restarted if it is in succeeded state by reaching max trials and spec.resumePolicy = LongRunning or spec.resumePolicy = FromVolume, when experiment is completed",
            ));
        }
        let old_trials = old.status.get().and_then(|s| s.trials.get()).copied().unwrap_or(0);
        if restarting
            && let Some(m) = max
            && m <= old_trials
        {
            errs.push(invalid_int(
                "spec.maxTrialCount",
                m,
                "must be greater than status.trials count",
            ));
        }
        // The old spec with the three editable counts taken from the new one.
        let mut patched = old.spec.clone();
        if let Some(p) = patched.get_mut() {
            p.max_failed_trial_count = spec.max_failed_trial_count.clone();
            p.max_trial_count = spec.max_trial_count.clone();
            p.parallel_trial_count = spec.parallel_trial_count.clone();
        }
        if semantic(&spec_json) != semantic(&json(&patched)) {
            errs.push(FieldError::Forbidden {
                path: "spec".into(),
                detail: "only spec.parallelTrialCount, spec.maxTrialCount and spec.maxFailedTrialCount are editable"
                    .into(),
            });
        }
    }
    let objective_errs = validate_objective(spec.objective.get());
    if !objective_errs.is_empty() {
        errs.extend(objective_errs);
        return errs;
    }
    validate_algorithm(spec, cfg, &mut errs);
    if let Some(es) = spec.early_stopping.get() {
        let n = es.algorithm_name.as_str();
        if n.is_empty() {
            errs.push(required("spec.earlyStopping.algorithmName", "must be specified"));
        }
        if !cfg.early_stopping_algorithms.iter().any(|a| a == n) {
            errs.push(invalid_str(
                "spec.earlyStopping.algorithmName",
                n,
                format!(
                    "unable to get EarlyStopping config data for algorithm {n}: failed to find early stopping config for algorithm: {n} in ConfigMap: {CONFIG_MAP}"
                ),
            ));
        }
    }
    let rp = spec.resume_policy.as_str();
    if !matches!(rp, "" | "Never" | "LongRunning" | "FromVolume") {
        errs.push(invalid_str("spec.resumePolicy", rp, "invalid ResumePolicyType"));
    }
    validate_trial_template(spec, &mut errs);
    let params = spec.parameters.as_slice();
    let nas = spec.nas_config.get();
    if params.is_empty() && nas.is_none() {
        errs.push(required("spec", "spec.parameters or spec.nasConfig must be specified"));
    }
    if !params.is_empty() && nas.is_some() {
        errs.push(FieldError::Invalid {
            path: "spec".into(),
            value: BadValue::Raw(format!("v1beta1.ExperimentSpec{spec_json}")),
            detail: "only one of spec.parameters and spec.nasConfig can be specified".into(),
        });
    }
    validate_parameters(params, &mut errs);
    validate_metrics_collector(spec, cfg, &mut errs);
    errs
}

fn validate_objective(obj: Option<&ObjectiveSpec>) -> Vec<FieldError> {
    let Some(obj) = obj else {
        return vec![required("spec.objective", "must be specified")];
    };
    let mut errs = Vec::new();
    let ty = obj.r#type.as_str();
    if ty != "minimize" && ty != "maximize" {
        errs.push(invalid_str("spec.objective.type", ty, "must be minimize or maximize"));
    }
    let name = obj.objective_metric_name.as_str();
    if name.is_empty() {
        errs.push(required("spec.objective.objectiveMetricName", "must be specified"));
    }
    let extra = obj.additional_metric_names.as_slice();
    if extra.iter().any(|m| m == name) {
        errs.push(FieldError::Invalid {
            path: "spec.objective.additionalMetricNames".into(),
            value: BadValue::Raw(gofmt::sharp_v_strings(extra)),
            detail: "should not contain spec.objective.objectiveMetricName".into(),
        });
    }
    errs
}

fn validate_algorithm(spec: &ExperimentSpec, cfg: &KatibSettings, errs: &mut Vec<FieldError>) {
    let Some(alg) = spec.algorithm.get() else {
        errs.push(required("spec.algorithm", "must be specified"));
        return;
    };
    let n = alg.algorithm_name.as_str();
    if n.is_empty() {
        errs.push(required("spec.algorithm.algorithmName", "must be specified"));
    }
    if !cfg.suggestion_algorithms.iter().any(|a| a == n) {
        errs.push(invalid_str(
            "spec.algorithm.algorithmName",
            n,
            format!(
                "unable to get Suggestion config data for algorithm {n}: failed to find suggestion config for algorithm: {n} in ConfigMap: {CONFIG_MAP}"
            ),
        ));
    }
}

/// Go's `%v` of `[]TrialParameterSpec`.
fn trial_params_v(params: &[TrialParameterSpec]) -> String {
    let items: Vec<String> = params
        .iter()
        .map(|p| {
            format!(
                "{{{} {} {}}}",
                p.name.as_str(),
                p.description.as_str(),
                p.reference.as_str()
            )
        })
        .collect();
    format!("[{}]", items.join(" "))
}

/// Go's `%v` of `[]ParameterSpec`.
fn params_v(params: &[ParameterSpec]) -> String {
    let items: Vec<String> = params
        .iter()
        .map(|p| {
            let fs = p.feasible_space.get().cloned().unwrap_or_default();
            format!(
                "{{{} {} {{{} {} [{}] {} {}}}}}",
                p.name.as_str(),
                p.parameter_type.as_str(),
                fs.max.as_str(),
                fs.min.as_str(),
                fs.list.as_slice().join(" "),
                fs.step.as_str(),
                fs.distribution.as_str(),
            )
        })
        .collect();
    format!("[{}]", items.join(" "))
}

const META_KEYS: [&str; 6] = ["Name", "Namespace", "Kind", "APIVersion", "Annotations", "Labels"];

/// `isMetaKey`: `${trialSpec.<Key>}` or `${trialSpec.<Key>[<index>]}`.
fn is_meta_key(reference: &str) -> bool {
    let Some(start) = reference.find("${trialSpec.") else {
        return false;
    };
    let rest = &reference[start + "${trialSpec.".len()..];
    // `(.+?)\}`: at least one character, up to the first `}` after it.
    let Some(end) = rest.char_indices().skip(1).find(|(_, c)| *c == '}').map(|(i, _)| i) else {
        return false;
    };
    let key = &rest[..end];
    if key.contains('\n') {
        return false;
    }
    if META_KEYS.contains(&key) {
        return true;
    }
    // `(.+)\[(.+)]`
    if let Some(open) = key.rfind('[')
        && key.ends_with(']')
        && open > 0
        && open + 2 < key.len()
    {
        return META_KEYS.contains(&&key[..open]);
    }
    false
}

/// All `${trialParameters.<x>}` left in a template (`\$\{trialParameters\..+?\}`).
fn unreplaced(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let marker = "${trialParameters.";
    let mut rest = template;
    while let Some(i) = rest.find(marker) {
        let after = &rest[i + marker.len()..];
        match after.char_indices().skip(1).find(|(_, c)| *c == '}' || *c == '\n') {
            Some((j, '}')) => {
                out.push(format!("{marker}{}}}", &after[..j]));
                rest = &after[j + 1..];
            }
            Some((j, _)) => rest = &after[j..],
            None => break,
        }
    }
    out
}

fn validate_trial_template(spec: &ExperimentSpec, errs: &mut Vec<FieldError>) {
    let Some(tt) = spec.trial_template.get() else {
        errs.push(required("spec.trialTemplate", "must be specified"));
        return;
    };
    if tt.primary_container_name.as_str().is_empty() {
        errs.push(required("spec.trialTemplate.primaryContainerName", "must be specified"));
    }
    if tt.success_condition.as_str().is_empty() || tt.failure_condition.as_str().is_empty() {
        errs.push(required(
            "spec.trialTemplate",
            "successCondition and failureCondition must be specified",
        ));
    }
    let Some(trial_params) = tt.trial_parameters.get() else {
        errs.push(required("spec.trialTemplate.trialParameters", "must be specified"));
        return;
    };
    let trial_spec = tt.trial_spec.get();
    let config_map = tt.config_map.get();
    match (trial_spec, config_map) {
        (None, None) => {
            errs.push(required(
                "spec.trialTemplate.TrialSource",
                "spec.trialTemplate.trialSpec or spec.trialTemplate.configMap must be specified",
            ));
            return;
        }
        (Some(_), Some(_)) => {
            errs.push(required(
                "spec.trialTemplate",
                "only one of spec.trialTemplate.trialSpec or spec.trialTemplate.configMap can be specified",
            ));
            return;
        }
        (None, Some(cm)) => {
            if [&cm.config_map_name, &cm.config_map_namespace, &cm.template_path]
                .iter()
                .any(|f| f.as_str().is_empty())
            {
                errs.push(required(
                    "spec.trialTemplate.configMap",
                    "configMapName, configMapNamespace and templatePath must be specified",
                ));
            }
            // The template lives in a ConfigMap this crate cannot read; upstream validates it there.
            return;
        }
        (Some(_), None) => {}
    }
    let Some(trial_spec) = trial_spec else { return };
    let mut template = trial_spec.to_string();
    let all_params = spec.parameters.as_slice();
    let exp_params: Vec<&str> = all_params.iter().map(|p| p.name.as_str()).collect();
    let mut names: Vec<&str> = Vec::new();
    let mut refs: Vec<&str> = Vec::new();
    for (i, p) in trial_params.iter().enumerate() {
        let name = p.name.as_str();
        let reference = p.reference.as_str();
        let path = format!("spec.trialTemplate.trialParameters[{i}]");
        if name.is_empty() || reference.is_empty() || name.contains('{') || name.contains('}') {
            errs.push(invalid_str(
                &path,
                "",
                "name and reference must be specified and name must not contain '{' or '}'",
            ));
            continue;
        }
        if names.contains(&name) {
            errs.push(invalid_str(
                &format!("{path}.name"),
                name,
                format!(
                    "parameter name {name} can't be duplicated in spec.trialTemplate.trialParameters: {}",
                    trial_params_v(trial_params)
                ),
            ));
            continue;
        }
        if refs.contains(&reference) {
            errs.push(invalid_str(
                &format!("{path}.reference"),
                reference,
                format!(
                    "parameter reference {reference} can't be duplicated in spec.trialTemplate.trialParameters: {}",
                    trial_params_v(trial_params)
                ),
            ));
            continue;
        }
        names.push(name);
        refs.push(reference);
        if !exp_params.is_empty() && !is_meta_key(reference) && !exp_params.contains(&reference) {
            errs.push(invalid_str(
                &format!("{path}.reference"),
                reference,
                format!(
                    "parameter reference {reference} does not exist in spec.parameters: {}",
                    params_v(all_params)
                ),
            ));
        }
        let placeholder = format!("${{trialParameters.{name}}}");
        if !template.contains(&placeholder) {
            errs.push(invalid_str(
                &format!("{path}.name"),
                name,
                format!("parameter name: {name} in spec.trialParameters not found in spec.trialTemplate: {template}"),
            ));
            return;
        }
        template = template.replace(&placeholder, "test-value");
    }
    let left = unreplaced(&template);
    if !left.is_empty() {
        errs.push(invalid_str(
            "spec.trialTemplate",
            "",
            format!(
                "parameters: [{}] in spec.trialTemplate not found in spec.trialParameters: {}",
                left.join(" "),
                trial_params_v(trial_params)
            ),
        ));
    }
    let run_spec: Value = match serde_json::from_str(&template) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            errs.push(invalid_str(
                "spec.trialTemplate",
                "",
                format!("unable to convert spec.trialTemplate: {template} to unstructured"),
            ));
            return;
        }
    };
    if !s(&run_spec, &["metadata", "name"]).is_empty() || !s(&run_spec, &["metadata", "namespace"]).is_empty() {
        errs.push(invalid_str(
            "spec.trialTemplate",
            "",
            "metadata.name and metadata.namespace in spec.trialTemplate must be omitted",
        ));
    }
    if s(&run_spec, &["apiVersion"]).is_empty() || s(&run_spec, &["kind"]).is_empty() {
        errs.push(required(
            "spec.trialTemplate",
            "APIVersion and Kind in spec.trialTemplate must be specified",
        ));
    }
}

fn validate_parameters(params: &[ParameterSpec], errs: &mut Vec<FieldError>) {
    for (i, p) in params.iter().enumerate() {
        let path = format!("spec.parameters[{i}]");
        let ty = p.parameter_type.as_str();
        let space = p.feasible_space.get().cloned().unwrap_or_default();
        if !matches!(ty, "int" | "double" | "categorical" | "discrete" | "unknown") {
            errs.push(invalid_str(
                &format!("{path}.parameterType"),
                ty,
                format!("parameterType: {ty} is not supported"),
            ));
        }
        let dist = space.distribution.as_str();
        if !dist.is_empty() && !matches!(dist, "uniform" | "logUniform" | "normal" | "logNormal" | "unknown") {
            errs.push(invalid_str(
                &format!("{path}.feasibleSpace.distribution"),
                dist,
                format!("distribution: {dist} is not supported"),
            ));
        }
        let (max, min, step) = (space.max.as_str(), space.min.as_str(), space.step.as_str());
        let list = space.list.as_slice();
        let has_list = space.list.get().is_some();
        if max.is_empty() && min.is_empty() && step.is_empty() && dist.is_empty() && !has_list {
            errs.push(required(
                &format!("{path}.feasibleSpace"),
                "feasibleSpace must be specified",
            ));
        } else if matches!(ty, "double" | "int") {
            if !list.is_empty() {
                errs.push(FieldError::Invalid {
                    path: format!("{path}.feasibleSpace.list"),
                    value: BadValue::Raw(gofmt::sharp_v_strings(list)),
                    detail: format!("feasibleSpace.list is not supported for parameterType: {ty}"),
                });
            }
            if max.is_empty() || min.is_empty() {
                errs.push(required(
                    &format!("{path}.feasibleSpace.max"),
                    format!("feasibleSpace.max or feasibleSpace.min must be specified for parameterType: {ty}"),
                ));
            }
        } else if matches!(ty, "categorical" | "discrete") && (!max.is_empty() || !min.is_empty() || !step.is_empty()) {
            let list_v = if has_list {
                gofmt::sharp_v_strings(list)
            } else {
                "[]string(nil)".to_string()
            };
            errs.push(FieldError::Invalid {
                path: format!("{path}.feasibleSpace"),
                value: BadValue::Raw(format!(
                    "v1beta1.FeasibleSpace{{Max:{}, Min:{}, List:{list_v}, Step:{}, Distribution:{}}}",
                    gofmt::quote(max),
                    gofmt::quote(min),
                    gofmt::quote(step),
                    gofmt::quote(dist)
                )),
                detail: format!("feasibleSpace .max, .min and .step is not supported for parameterType: {ty}"),
            });
        }
    }
}

/// `.*\(.*\).*\(.*\).*` on one line.
fn two_groups(format: &str) -> bool {
    format.lines().any(|line| {
        let mut want = ['(', ')', '(', ')'].iter().peekable();
        for c in line.chars() {
            if want.peek().is_some_and(|w| **w == c) {
                want.next();
            }
        }
        want.peek().is_none()
    })
}

fn validate_metrics_collector(spec: &ExperimentSpec, cfg: &KatibSettings, errs: &mut Vec<FieldError>) {
    let mc = spec.metrics_collector_spec.get();
    let collector = mc.and_then(|m| m.collector.get());
    let source = mc.and_then(|m| m.source.get());
    let kind = collector.map_or("", |c| c.kind.as_str());
    if matches!(kind, "StdOut" | "TensorFlowEvent" | "File" | "PrometheusMetric")
        && !cfg.metrics_collectors.iter().any(|k| k == kind)
    {
        errs.push(invalid_str(
            "spec.metricsCollectorSpec.collector.kind",
            kind,
            format!(
                "GetMetricsCollectorConfigData failed: failed to find metrics collector config for kind: {kind} in ConfigMap: {CONFIG_MAP}"
            ),
        ));
    }
    let fsp = source.and_then(|s| s.file_system_path.get());
    let (fsp_kind, fsp_path, fsp_format) =
        fsp.map_or(("", "", ""), |p| (p.kind.as_str(), p.path.as_str(), p.format.as_str()));
    let http = source.and_then(|s| s.http_get.get());
    let filter = source.and_then(|s| s.filter.get());
    let abs = |p: &str| p.starts_with('/');
    match kind {
        "Push" | "StdOut" => return,
        "File" => {
            if fsp.is_none() || fsp_kind != "File" || !abs(fsp_path) {
                errs.push(required(
                    "spec.metricsCollectorSpec.source.fileSystemPath.path",
                    "file path where metrics file exists is required",
                ));
            }
            let format = fsp_format;
            if format != "TEXT" && format != "JSON" {
                errs.push(required(
                    "spec.metricsCollectorSpec.source.fileSystemPath.format",
                    "format of metrics file is required for metrics collector",
                ));
            }
            if format == "JSON" && filter.is_some() {
                errs.push(invalid_str(
                    "spec.metricsCollectorSpec.source.filter",
                    "",
                    "filter must be nil when format of metrics file is json",
                ));
            }
        }
        "TensorFlowEvent" => {
            if fsp.is_none() || fsp_kind != "Directory" || !abs(fsp_path) {
                errs.push(required(
                    "spec.metricsCollectorSpec.source",
                    "directory path where tensorflow event files exist is required by .spec.metricsCollectorSpec.source.fileSystemPath.path",
                ));
            }
            let format = fsp_format;
            if !format.is_empty() {
                errs.push(invalid_str(
                    "spec.metricsCollectorSpec.source.fileSystemPath.format",
                    format,
                    "must be empty",
                ));
            }
        }
        "PrometheusMetric" => {
            let port = port_string(http.and_then(|h| h.port.get()));
            if !port.parse::<i64>().is_ok_and(|p| p > 0) {
                errs.push(invalid_str(
                    "spec.metricsCollectorSpec.source.httpGet.port",
                    &port,
                    format!("must be a positive integer value for metrics collector kind: {kind}"),
                ));
            }
            let path = http.map_or("", |h| h.path.as_str());
            if !path.starts_with('/') {
                errs.push(invalid_str(
                    "spec.metricsCollectorSpec.source.httpGet.path",
                    path,
                    format!("path is invalid for metrics collector kind: {kind}"),
                ));
            }
        }
        "Custom" => {
            if collector.and_then(|c| c.custom_collector.get()).is_none() {
                errs.push(required(
                    "spec.metricsCollectorSpec.collector.customCollector",
                    format!("metrics collector kind: {kind} is required"),
                ));
            }
            if fsp.is_some() && (!abs(fsp_path) || !matches!(fsp_kind, "Directory" | "File")) {
                errs.push(invalid_str(
                    "spec.metricsCollectorSpec.source.fileSystemPath",
                    "",
                    ".spec.metricsCollectorSpec.source is invalid",
                ));
            }
        }
        _ => errs.push(invalid_str(
            "spec.metricsCollectorSpec.collector.kind",
            kind,
            format!("invalid metrics collector kind: {kind}"),
        )),
    }
    for f in filter.map_or(&[][..], |f| f.metrics_format.as_slice()) {
        if !two_groups(f) {
            errs.push(invalid_str(
                "spec.metricsCollectorSpec.source.filter.metricsFormat",
                f,
                "two top subexpressions are required",
            ));
        }
    }
}

/// `/mutate-pod` (`mutator.pod.katib.kubeflow.org`): labels trial pods and gives the primary
/// container `KATIB_TRIAL_NAME`. The metrics-collector sidecar is not injected (see crate docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct TrialPodMutator;

fn owners(obj: &Value) -> Vec<(String, String, String)> {
    get(obj, &["metadata", "ownerReferences"])
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|o| {
                    (
                        s(o, &["apiVersion"]).to_string(),
                        s(o, &["kind"]).to_string(),
                        s(o, &["name"]).to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn find_object<'a>(objects: &'a [Value], api_version: &str, kind: &str, name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| {
        s(o, &["apiVersion"]) == api_version && s(o, &["kind"]) == kind && s(o, &["metadata", "name"]) == name
    })
}

/// `getKatibJob`: the name of the object in the owner chain that a Trial owns.
fn katib_job(obj: &Value, objects: &[Value], depth: usize) -> Result<String, String> {
    let refs = owners(obj);
    if refs.iter().any(|(av, k, _)| k == "Trial" && av == KATIB_API_VERSION) {
        return Ok(s(obj, &["metadata", "name"]).to_string());
    }
    if depth >= MAX_OWNER_DEPTH {
        return Err("owner chain too deep".into());
    }
    for (av, kind, name) in &refs {
        if av != "/" && av.matches('/').count() > 1 {
            return Err(format!(
                "invalid owner API version: unexpected GroupVersion string: {av}"
            ));
        }
        let Some(owner) = find_object(objects, av, kind, name) else {
            return Err(format!(
                "unable to get Job in the trialTemplate: {kind} {name} not found"
            ));
        };
        if let Ok(job) = katib_job(owner, objects, depth + 1) {
            return Ok(job);
        }
    }
    Err("pod does not belong to Katib Job".into())
}

impl Webhook for TrialPodMutator {
    fn name(&self) -> &str {
        "mutator.pod.katib.kubeflow.org"
    }

    fn path(&self) -> &str {
        "/mutate-pod"
    }

    fn registration(&self) -> Registration {
        Registration {
            name: "mutator.pod.katib.kubeflow.org",
            path: "/mutate-pod",
            kind: WebhookKind::Mutating,
            configuration: CONFIGURATION,
            service: SERVICE,
            rules: vec![Rule::new(&["CREATE"], &[""], &["v1"], &["pods"])],
            admission_review_versions: &["v1"],
            failure_policy: FailurePolicy::Fail,
            namespace_selector: Some(LabelSelector::from_labels([(INJECTION_LABEL, INJECTION_ENABLED)])),
            object_selector: None,
            match_conditions: vec![MatchCondition::UsernameIsNot {
                name: "exclude-katib-controller",
                username: "system:serviceaccount:kubeflow:katib-controller",
            }],
            reinvocation_policy: None,
        }
    }

    fn context_needs(&self) -> ContextNeeds {
        ContextNeeds {
            objects: vec![("batch/v1", "Job"), (KATIB_API_VERSION, "Trial")],
            ..ContextNeeds::none()
        }
    }

    fn admit(&self, req: &AdmissionRequest, ctx: &Context) -> AdmissionOutcome {
        let pod = match decode_object(req, "Pod") {
            Ok(p) => p,
            Err(denied) => return denied,
        };
        let Ok(job) = katib_job(pod, &ctx.objects, 0) else {
            return AdmissionOutcome::Allow;
        };
        let Some(trial) = find_object(&ctx.objects, KATIB_API_VERSION, "Trial", &job) else {
            return AdmissionOutcome::deny(500, format!("trials.kubeflow.org {} not found", gofmt::quote(&job)));
        };
        let Ok(trial) = Trial::deserialize(trial) else {
            return AdmissionOutcome::deny(
                500,
                format!("trials.kubeflow.org {} cannot be decoded", gofmt::quote(&job)),
            );
        };
        let mut out = pod.clone();
        let mut labels: BTreeMap<String, Value> = get(pod, &["metadata", "labels"])
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        if let Some(meta) = trial.metadata.get() {
            for (k, v) in &meta.labels {
                labels.insert(k.clone(), Value::String(v.clone()));
            }
        }
        labels.insert(LABEL_TRIAL_NAME.into(), json!(trial.name()));
        set(
            &mut out,
            &["metadata", "labels"],
            Value::Object(labels.into_iter().collect()),
        );
        let primary = trial.spec.get().map_or("", |s| s.primary_container_name.as_str());
        let env = json!({
            "name": ENV_TRIAL_NAME,
            "valueFrom": {"fieldRef": {"fieldPath": format!("metadata.labels['{LABEL_TRIAL_NAME}']")}}
        });
        let containers = out
            .get_mut("spec")
            .and_then(|s| s.get_mut("containers"))
            .and_then(Value::as_array_mut);
        let target = containers.and_then(|cs| cs.iter_mut().find(|c| s(c, &["name"]) == primary));
        match target {
            Some(Value::Object(c)) => {
                let slot = c.entry("env").or_insert_with(|| Value::Array(Vec::new()));
                if !slot.is_array() {
                    *slot = Value::Array(Vec::new());
                }
                if let Value::Array(a) = slot {
                    a.push(env);
                }
            }
            _ => {
                let names: Vec<&str> = get(pod, &["spec", "containers"])
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(|c| s(c, &["name"])).collect())
                    .unwrap_or_default();
                return AdmissionOutcome::deny(
                    400,
                    format!(
                        "Unable to find primary container {primary} in mutated pod containers [{}]",
                        names.join(" ")
                    ),
                );
            }
        }
        AdmissionOutcome::from_mutation(pod, &out)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use kfsec_types::admission::{GroupVersionKind, GroupVersionResource, Operation};

    /// The valid Experiment of the fixtures, changed by `edit`, as a CREATE request.
    fn experiment_request(edit: impl FnOnce(&mut Value)) -> AdmissionRequest {
        let review: Value =
            serde_json::from_str(include_str!("../tests/fixtures/validate-experiment/valid.request.json")).unwrap();
        let mut exp = review["request"]["object"].clone();
        edit(&mut exp);
        AdmissionRequest::for_object(
            Operation::Create,
            GroupVersionKind::new("kubeflow.org", "v1beta1", "Experiment"),
            GroupVersionResource::new("kubeflow.org", "v1beta1", "experiments"),
            "kubeflow-user",
            "random",
            exp,
        )
    }

    fn labelled() -> Context {
        Context::default().with_namespace_labels([(INJECTION_LABEL, INJECTION_ENABLED)])
    }

    #[test]
    fn a_wrongly_typed_member_is_refused_as_upstream_decoding_refuses_it() {
        // Upstream decodes into Go structs: a string count is `Errored(400)`. This was admitted
        // (and defaulted) before the Experiment was typed: the count was read as absent.
        let req = experiment_request(|e| e["spec"]["maxTrialCount"] = json!("12"));
        for hook in [&ExperimentValidator as &dyn Webhook, &ExperimentDefaulter] {
            match hook.admit(&req, &labelled()) {
                AdmissionOutcome::Deny { code: 400, message } => assert_eq!(
                    message,
                    "cannot decode Experiment: spec.maxTrialCount: invalid type: string \"12\", expected i64"
                ),
                other => panic!("{}: {other:?}", hook.name()),
            }
        }
        let req = experiment_request(|e| e["spec"]["parameters"][0]["feasibleSpace"]["list"] = json!([1]));
        assert!(matches!(
            ExperimentValidator.admit(&req, &labelled()),
            AdmissionOutcome::Deny { code: 400, message } if message.contains("spec.parameters[0].feasibleSpace.list[0]")
        ));
    }

    #[test]
    fn defaulting_touches_only_what_it_defaults() {
        // Unknown members, nulls and the metadata as sent are left alone.
        let req = experiment_request(|e| {
            e["metadata"]["creationTimestamp"] = Value::Null;
            e["metadata"]["labels"] = Value::Null;
            e["spec"]["futureField"] = json!({"a": null});
            e["spec"]["nasConfig"] = Value::Null;
            e["spec"]["resumePolicy"] = Value::Null;
        });
        let once = match ExperimentDefaulter.admit(&req, &Context::default()) {
            AdmissionOutcome::Patch(p) => p,
            other => panic!("{other:?}"),
        };
        let mut defaulted = req.object.clone().unwrap();
        json_patch::patch(&mut defaulted, &once).unwrap();
        assert_eq!(defaulted["spec"]["resumePolicy"], "Never");
        assert_eq!(defaulted["spec"]["futureField"], json!({"a": null}));
        assert!(defaulted["metadata"]["creationTimestamp"].is_null());
        // Defaulting a defaulted Experiment changes nothing.
        let again = experiment_request(|e| *e = defaulted.clone());
        assert_eq!(
            ExperimentDefaulter.admit(&again, &Context::default()),
            AdmissionOutcome::Allow
        );
    }

    #[test]
    fn a_trial_that_does_not_decode_refuses_its_pod_without_internal_text() {
        let context: Value = serde_json::from_str(include_str!("../tests/fixtures/mutate-pod/context.json")).unwrap();
        let review: Value =
            serde_json::from_str(include_str!("../tests/fixtures/mutate-pod/trial-job-pod.request.json")).unwrap();
        let req: AdmissionRequest = serde_json::from_value(review["request"].clone()).unwrap();
        let mut objects = context["objects"].as_array().unwrap().clone();
        let ctx = |objects: Vec<Value>| Context::default().with_objects(objects);
        assert!(matches!(
            TrialPodMutator.admit(&req, &ctx(objects.clone())),
            AdmissionOutcome::Patch(_)
        ));
        objects[0]["spec"]["primaryContainerName"] = json!(["training-container"]);
        assert_eq!(
            TrialPodMutator.admit(&req, &ctx(objects)),
            AdmissionOutcome::deny(500, "trials.kubeflow.org \"random-example-x7k2p\" cannot be decoded")
        );
    }

    #[test]
    fn meta_keys() {
        assert!(is_meta_key("${trialSpec.Name}"));
        assert!(is_meta_key("${trialSpec.Labels[app]}"));
        assert!(!is_meta_key("${trialSpec.Foo}"));
        assert!(!is_meta_key("lr"));
    }

    #[test]
    fn unreplaced_placeholders() {
        assert_eq!(
            unreplaced("a ${trialParameters.x} b ${trialParameters.y}"),
            vec!["${trialParameters.x}".to_string(), "${trialParameters.y}".to_string()]
        );
        assert!(unreplaced("${trialParameters.}").is_empty());
    }

    #[test]
    fn metrics_format_groups() {
        assert!(two_groups("([\\w|-]+)\\s*=\\s*([+-]?\\d*(\\.\\d+)?)"));
        assert!(!two_groups("(\\w+)=1"));
    }
}
