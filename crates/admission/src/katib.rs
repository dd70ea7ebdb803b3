//! Katib webhooks (`kubeflow/katib` `pkg/webhook/v1beta1`): the Experiment defaulter
//! (`/mutate-experiment`), the Experiment validator (`/validate-experiment`) and the trial pod
//! mutator (`/mutate-pod`).
//!
//! Invariants: the validator refuses Experiments in namespaces without
//! `katib.kubeflow.org/metrics-collector-injection: enabled` and, on update, any change other than
//! the three trial counts; errors are apimachinery field errors aggregated exactly as upstream
//! (`Errored(400)`); the pod mutator only ever adds labels and one env var, and only to pods whose
//! owner chain (looked up in the context, never fetched) leads to a Trial.

use std::collections::BTreeMap;

use kfsec_types::admission::AdmissionRequest;
use kfsec_types::meta::LabelSelector;
use serde_json::{Map, Value, json};

use crate::gofmt::{self, BadValue, FieldError};
use crate::registration::{FailurePolicy, MatchCondition, Registration, Rule, WebhookKind};
use crate::webhook::{AdmissionOutcome, Context, ContextNeeds, Webhook};

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
const TRIAL_API_VERSION: &str = "kubeflow.org/v1beta1";
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

fn int(v: &Value, path: &[&str]) -> Option<i64> {
    get(v, path).and_then(Value::as_i64)
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

/// `Experiment.SetDefault()` on a JSON Experiment.
pub fn default_experiment(exp: &Value) -> Value {
    let mut out = exp.clone();
    if get(&out, &["spec", "parallelTrialCount"]).is_none() {
        set(&mut out, &["spec", "parallelTrialCount"], json!(3));
    }
    if s(&out, &["spec", "resumePolicy"]).is_empty() {
        set(&mut out, &["spec", "resumePolicy"], json!("Never"));
    }
    // Objective: one metric strategy per metric.
    if let Some(obj) = get(&out, &["spec", "objective"]).filter(|o| o.is_object()).cloned() {
        let objective = s(&obj, &["objectiveMetricName"]).to_string();
        let by_type = match s(&obj, &["type"]) {
            "minimize" => "min",
            "maximize" => "max",
            _ => "latest",
        };
        let mut strategies: Vec<Value> = get(&obj, &["metricStrategies"])
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut has_objective = false;
        let mut with_default = Vec::new();
        for st in &strategies {
            let name = s(st, &["name"]);
            if name == objective {
                has_objective = true;
            } else {
                with_default.push(name.to_string());
            }
        }
        if !has_objective {
            strategies.push(json!({"name": objective, "value": by_type}));
        }
        if let Some(extra) = get(&obj, &["additionalMetricNames"]).and_then(Value::as_array) {
            for m in extra.iter().filter_map(Value::as_str) {
                if !with_default.iter().any(|w| w == m) {
                    strategies.push(json!({"name": m, "value": by_type}));
                }
            }
        }
        if !strategies.is_empty() {
            set(
                &mut out,
                &["spec", "objective", "metricStrategies"],
                Value::Array(strategies),
            );
        }
    }
    // Trial template conditions and primary pod labels.
    if let Some(kind) = get(&out, &["spec", "trialTemplate", "trialSpec"])
        .filter(|t| t.is_object())
        .map(|t| s(t, &["kind"]).to_string())
    {
        let tt = ["spec", "trialTemplate"];
        let empty = |o: &Value, f: &str| s(o, &[tt[0], tt[1], f]).is_empty();
        let (success, failure, labels): (&str, &str, Option<Value>) = match kind.as_str() {
            "Job" => (
                "status.conditions.#(type==\"Complete\")#|#(status==\"True\")#",
                "status.conditions.#(type==\"Failed\")#|#(status==\"True\")#",
                None,
            ),
            "TrainJob" => (
                "status.conditions.#(type==\"Complete\")#|#(status==\"True\")#",
                "status.conditions.#(type==\"Failed\")#|#(status==\"True\")#",
                Some(
                    json!({"jobset.sigs.k8s.io/replicatedjob-name": "node", "batch.kubernetes.io/job-completion-index": "0"}),
                ),
            ),
            "TFJob" | "PyTorchJob" | "XGBoostJob" | "MPIJob" => (
                "status.conditions.#(type==\"Succeeded\")#|#(status==\"True\")#",
                "status.conditions.#(type==\"Failed\")#|#(status==\"True\")#",
                Some(json!({"training.kubeflow.org/job-role": "master"})),
            ),
            _ => ("", "", None),
        };
        if !success.is_empty() {
            if empty(&out, "successCondition") {
                set(&mut out, &["spec", "trialTemplate", "successCondition"], json!(success));
            }
            if empty(&out, "failureCondition") {
                set(&mut out, &["spec", "trialTemplate", "failureCondition"], json!(failure));
            }
        }
        if let Some(l) = labels {
            let has = get(&out, &["spec", "trialTemplate", "primaryPodLabels"])
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty());
            if !has {
                set(&mut out, &["spec", "trialTemplate", "primaryPodLabels"], l);
            }
        }
    }
    // Metrics collector.
    let mc = ["spec", "metricsCollectorSpec"];
    if get(&out, &[mc[0], mc[1], "collector"]).is_none() {
        set(&mut out, &[mc[0], mc[1], "collector"], json!({"kind": "StdOut"}));
    }
    fn source(f: &[&'static str]) -> Vec<&'static str> {
        ["spec", "metricsCollectorSpec", "source"]
            .iter()
            .chain(f)
            .copied()
            .collect()
    }
    match s(&out, &[mc[0], mc[1], "collector", "kind"]) {
        "PrometheusMetric" => {
            if s(&out, &source(&["httpGet", "path"])).is_empty() {
                set(&mut out, &source(&["httpGet", "path"]), json!("/metrics"));
            }
            if port_string(get(&out, &source(&["httpGet", "port"]))) == "0" {
                set(&mut out, &source(&["httpGet", "port"]), json!(8080));
            }
        }
        "File" => {
            for (f, d) in [
                ("kind", "File"),
                ("path", "/var/log/katib/metrics.log"),
                ("format", "TEXT"),
            ] {
                if s(&out, &source(&["fileSystemPath", f])).is_empty() {
                    set(&mut out, &source(&["fileSystemPath", f]), json!(d));
                }
            }
        }
        "TensorFlowEvent" => {
            for (f, d) in [("kind", "Directory"), ("path", "/var/log/katib/tfevent/")] {
                if s(&out, &source(&["fileSystemPath", f])).is_empty() {
                    set(&mut out, &source(&["fileSystemPath", f]), json!(d));
                }
            }
        }
        _ => {}
    }
    // Parameter distributions.
    if let Some(Value::Array(params)) = out.get_mut("spec").and_then(|s| s.get_mut("parameters")) {
        for p in params.iter_mut().filter(|p| p.is_object()) {
            if s(p, &["feasibleSpace", "distribution"]).is_empty() {
                set(p, &["feasibleSpace", "distribution"], json!("uniform"));
            }
        }
    }
    out
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
        match decode_object(req, "Experiment") {
            Ok(exp) => AdmissionOutcome::from_mutation(exp, &default_experiment(exp)),
            Err(denied) => denied,
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
        let exp = match decode_object(req, "Experiment") {
            Ok(e) => e,
            Err(denied) => return denied,
        };
        let old = match &req.old_object {
            Some(o @ Value::Object(_)) => Some(o),
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
                    gofmt::quote(s(exp, &["metadata", "name"])),
                    gofmt::quote(&req.namespace)
                ),
            );
        }
        let errs = validate_experiment(exp, old, &ctx.settings.katib);
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

fn condition_true<'a>(exp: &'a Value, ty: &str) -> Option<&'a Value> {
    get(exp, &["status", "conditions"])
        .and_then(Value::as_array)?
        .iter()
        .rev()
        .find(|c| s(c, &["type"]) == ty)
        .filter(|c| s(c, &["status"]) == "True")
}

/// `DefaultValidator.ValidateExperiment`.
fn validate_experiment(exp: &Value, old: Option<&Value>, cfg: &KatibSettings) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = s(exp, &["metadata", "name"]);
    if !name.as_bytes().first().is_some_and(u8::is_ascii_lowercase) || name.len() > 40 {
        errs.push(invalid_str(
            "metadata.name",
            name,
            "name must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name', or 'abc-123', regex used for validation is '^[a-z]([-a-z0-9]*[a-z0-9])?)') and may not be longer than 40 characters. ",
        ));
    }
    let max_failed = int(exp, &["spec", "maxFailedTrialCount"]);
    let max = int(exp, &["spec", "maxTrialCount"]);
    let parallel = int(exp, &["spec", "parallelTrialCount"]);
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
    let spec = exp.get("spec").cloned().unwrap_or(Value::Null);
    if let Some(old) = old {
        let old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
        let restarting = semantic(&spec) != semantic(&old_spec);
        let completed = condition_true(old, "Succeeded").is_some() || condition_true(old, "Failed").is_some();
        let restartable = condition_true(old, "Succeeded")
            .is_some_and(|c| s(c, &["reason"]) == "ExperimentMaxTrialsReached")
            && matches!(s(old, &["spec", "resumePolicy"]), "LongRunning" | "FromVolume");
        if restarting && completed && !restartable {
            errs.push(invalid_str(
                "spec.resumePolicy",
                s(exp, &["spec", "resumePolicy"]),
                "Experiment can be restarted if it is in succeeded state by reaching max trials and spec.resumePolicy = LongRunning or spec.resumePolicy = FromVolume, when experiment is completed",
            ));
        }
        if restarting
            && let Some(m) = max
            && m <= int(old, &["status", "trials"]).unwrap_or(0)
        {
            errs.push(invalid_int(
                "spec.maxTrialCount",
                m,
                "must be greater than status.trials count",
            ));
        }
        let mut patched = old_spec;
        if let Value::Object(m) = &mut patched {
            for f in ["maxFailedTrialCount", "maxTrialCount", "parallelTrialCount"] {
                match spec.get(f) {
                    Some(v) => m.insert(f.to_string(), v.clone()),
                    None => m.remove(f),
                };
            }
        }
        if semantic(&spec) != semantic(&patched) {
            errs.push(FieldError::Forbidden {
                path: "spec".into(),
                detail: "only spec.parallelTrialCount, spec.maxTrialCount and spec.maxFailedTrialCount are editable"
                    .into(),
            });
        }
    }
    let objective_errs = validate_objective(get(exp, &["spec", "objective"]));
    if !objective_errs.is_empty() {
        errs.extend(objective_errs);
        return errs;
    }
    validate_algorithm(exp, cfg, &mut errs);
    if let Some(es) = get(exp, &["spec", "earlyStopping"]) {
        let n = s(es, &["algorithmName"]);
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
    let rp = s(exp, &["spec", "resumePolicy"]);
    if !matches!(rp, "" | "Never" | "LongRunning" | "FromVolume") {
        errs.push(invalid_str("spec.resumePolicy", rp, "invalid ResumePolicyType"));
    }
    validate_trial_template(exp, &mut errs);
    let params = get(exp, &["spec", "parameters"])
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let nas = get(exp, &["spec", "nasConfig"]);
    if params.is_empty() && nas.is_none() {
        errs.push(required("spec", "spec.parameters or spec.nasConfig must be specified"));
    }
    if !params.is_empty() && nas.is_some() {
        errs.push(FieldError::Invalid {
            path: "spec".into(),
            value: BadValue::Raw(format!("v1beta1.ExperimentSpec{}", spec)),
            detail: "only one of spec.parameters and spec.nasConfig can be specified".into(),
        });
    }
    validate_parameters(params, &mut errs);
    validate_metrics_collector(exp, cfg, &mut errs);
    errs
}

fn validate_objective(obj: Option<&Value>) -> Vec<FieldError> {
    let Some(obj) = obj else {
        return vec![required("spec.objective", "must be specified")];
    };
    let mut errs = Vec::new();
    let ty = s(obj, &["type"]);
    if ty != "minimize" && ty != "maximize" {
        errs.push(invalid_str("spec.objective.type", ty, "must be minimize or maximize"));
    }
    let name = s(obj, &["objectiveMetricName"]);
    if name.is_empty() {
        errs.push(required("spec.objective.objectiveMetricName", "must be specified"));
    }
    let extra = strings(get(obj, &["additionalMetricNames"]));
    if extra.iter().any(|m| m == name) {
        errs.push(FieldError::Invalid {
            path: "spec.objective.additionalMetricNames".into(),
            value: BadValue::Raw(gofmt::sharp_v_strings(&extra)),
            detail: "should not contain spec.objective.objectiveMetricName".into(),
        });
    }
    errs
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn validate_algorithm(exp: &Value, cfg: &KatibSettings, errs: &mut Vec<FieldError>) {
    let Some(alg) = get(exp, &["spec", "algorithm"]) else {
        errs.push(required("spec.algorithm", "must be specified"));
        return;
    };
    let n = s(alg, &["algorithmName"]);
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
fn trial_params_v(params: &[Value]) -> String {
    let items: Vec<String> = params
        .iter()
        .map(|p| {
            format!(
                "{{{} {} {}}}",
                s(p, &["name"]),
                s(p, &["description"]),
                s(p, &["reference"])
            )
        })
        .collect();
    format!("[{}]", items.join(" "))
}

/// Go's `%v` of `[]ParameterSpec`.
fn params_v(params: &[Value]) -> String {
    let items: Vec<String> = params
        .iter()
        .map(|p| {
            format!(
                "{{{} {} {{{} {} [{}] {} {}}}}}",
                s(p, &["name"]),
                s(p, &["parameterType"]),
                s(p, &["feasibleSpace", "max"]),
                s(p, &["feasibleSpace", "min"]),
                strings(get(p, &["feasibleSpace", "list"])).join(" "),
                s(p, &["feasibleSpace", "step"]),
                s(p, &["feasibleSpace", "distribution"]),
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

fn validate_trial_template(exp: &Value, errs: &mut Vec<FieldError>) {
    let Some(tt) = get(exp, &["spec", "trialTemplate"]) else {
        errs.push(required("spec.trialTemplate", "must be specified"));
        return;
    };
    if s(tt, &["primaryContainerName"]).is_empty() {
        errs.push(required("spec.trialTemplate.primaryContainerName", "must be specified"));
    }
    if s(tt, &["successCondition"]).is_empty() || s(tt, &["failureCondition"]).is_empty() {
        errs.push(required(
            "spec.trialTemplate",
            "successCondition and failureCondition must be specified",
        ));
    }
    let Some(trial_params) = get(tt, &["trialParameters"]) else {
        errs.push(required("spec.trialTemplate.trialParameters", "must be specified"));
        return;
    };
    let trial_params = trial_params.as_array().map(Vec::as_slice).unwrap_or_default();
    let trial_spec = get(tt, &["trialSpec"]);
    let config_map = get(tt, &["configMap"]);
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
            if ["configMapName", "configMapNamespace", "templatePath"]
                .iter()
                .any(|f| s(cm, &[f]).is_empty())
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
    let exp_params: Vec<String> = get(exp, &["spec", "parameters"])
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|p| s(p, &["name"]).to_string()).collect())
        .unwrap_or_default();
    let all_params = get(exp, &["spec", "parameters"])
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut names: Vec<&str> = Vec::new();
    let mut refs: Vec<&str> = Vec::new();
    for (i, p) in trial_params.iter().enumerate() {
        let name = s(p, &["name"]);
        let reference = s(p, &["reference"]);
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
        if !exp_params.is_empty() && !is_meta_key(reference) && !exp_params.iter().any(|n| n == reference) {
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

fn validate_parameters(params: &[Value], errs: &mut Vec<FieldError>) {
    for (i, p) in params.iter().enumerate() {
        let path = format!("spec.parameters[{i}]");
        let ty = s(p, &["parameterType"]);
        if !matches!(ty, "int" | "double" | "categorical" | "discrete" | "unknown") {
            errs.push(invalid_str(
                &format!("{path}.parameterType"),
                ty,
                format!("parameterType: {ty} is not supported"),
            ));
        }
        let dist = s(p, &["feasibleSpace", "distribution"]);
        if !dist.is_empty() && !matches!(dist, "uniform" | "logUniform" | "normal" | "logNormal" | "unknown") {
            errs.push(invalid_str(
                &format!("{path}.feasibleSpace.distribution"),
                dist,
                format!("distribution: {dist} is not supported"),
            ));
        }
        let fs = |f: &str| s(p, &["feasibleSpace", f]);
        let list = strings(get(p, &["feasibleSpace", "list"]));
        let has_list = get(p, &["feasibleSpace", "list"]).is_some();
        if fs("max").is_empty() && fs("min").is_empty() && fs("step").is_empty() && dist.is_empty() && !has_list {
            errs.push(required(
                &format!("{path}.feasibleSpace"),
                "feasibleSpace must be specified",
            ));
        } else if matches!(ty, "double" | "int") {
            if !list.is_empty() {
                errs.push(FieldError::Invalid {
                    path: format!("{path}.feasibleSpace.list"),
                    value: BadValue::Raw(gofmt::sharp_v_strings(&list)),
                    detail: format!("feasibleSpace.list is not supported for parameterType: {ty}"),
                });
            }
            if fs("max").is_empty() || fs("min").is_empty() {
                errs.push(required(
                    &format!("{path}.feasibleSpace.max"),
                    format!("feasibleSpace.max or feasibleSpace.min must be specified for parameterType: {ty}"),
                ));
            }
        } else if matches!(ty, "categorical" | "discrete")
            && (!fs("max").is_empty() || !fs("min").is_empty() || !fs("step").is_empty())
        {
            let list_v = if has_list {
                gofmt::sharp_v_strings(&list)
            } else {
                "[]string(nil)".to_string()
            };
            errs.push(FieldError::Invalid {
                path: format!("{path}.feasibleSpace"),
                value: BadValue::Raw(format!(
                    "v1beta1.FeasibleSpace{{Max:{}, Min:{}, List:{list_v}, Step:{}, Distribution:{}}}",
                    gofmt::quote(fs("max")),
                    gofmt::quote(fs("min")),
                    gofmt::quote(fs("step")),
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

fn validate_metrics_collector(exp: &Value, cfg: &KatibSettings, errs: &mut Vec<FieldError>) {
    let mc = get(exp, &["spec", "metricsCollectorSpec"])
        .cloned()
        .unwrap_or(Value::Null);
    let kind = s(&mc, &["collector", "kind"]);
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
    let fsp = get(&mc, &["source", "fileSystemPath"]);
    let fsp_s = |f: &str| fsp.map(|p| s(p, &[f])).unwrap_or_default();
    let abs = |p: &str| p.starts_with('/');
    match kind {
        "Push" | "StdOut" => return,
        "File" => {
            if fsp.is_none() || fsp_s("kind") != "File" || !abs(fsp_s("path")) {
                errs.push(required(
                    "spec.metricsCollectorSpec.source.fileSystemPath.path",
                    "file path where metrics file exists is required",
                ));
            }
            let format = fsp_s("format");
            if format != "TEXT" && format != "JSON" {
                errs.push(required(
                    "spec.metricsCollectorSpec.source.fileSystemPath.format",
                    "format of metrics file is required for metrics collector",
                ));
            }
            if format == "JSON" && get(&mc, &["source", "filter"]).is_some() {
                errs.push(invalid_str(
                    "spec.metricsCollectorSpec.source.filter",
                    "",
                    "filter must be nil when format of metrics file is json",
                ));
            }
        }
        "TensorFlowEvent" => {
            if fsp.is_none() || fsp_s("kind") != "Directory" || !abs(fsp_s("path")) {
                errs.push(required(
                    "spec.metricsCollectorSpec.source",
                    "directory path where tensorflow event files exist is required by .spec.metricsCollectorSpec.source.fileSystemPath.path",
                ));
            }
            let format = fsp_s("format");
            if !format.is_empty() {
                errs.push(invalid_str(
                    "spec.metricsCollectorSpec.source.fileSystemPath.format",
                    format,
                    "must be empty",
                ));
            }
        }
        "PrometheusMetric" => {
            let port = port_string(get(&mc, &["source", "httpGet", "port"]));
            if !port.parse::<i64>().is_ok_and(|p| p > 0) {
                errs.push(invalid_str(
                    "spec.metricsCollectorSpec.source.httpGet.port",
                    &port,
                    format!("must be a positive integer value for metrics collector kind: {kind}"),
                ));
            }
            let path = s(&mc, &["source", "httpGet", "path"]);
            if !path.starts_with('/') {
                errs.push(invalid_str(
                    "spec.metricsCollectorSpec.source.httpGet.path",
                    path,
                    format!("path is invalid for metrics collector kind: {kind}"),
                ));
            }
        }
        "Custom" => {
            if get(&mc, &["collector", "customCollector"]).is_none() {
                errs.push(required(
                    "spec.metricsCollectorSpec.collector.customCollector",
                    format!("metrics collector kind: {kind} is required"),
                ));
            }
            if fsp.is_some() && (!abs(fsp_s("path")) || !matches!(fsp_s("kind"), "Directory" | "File")) {
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
    for f in strings(get(&mc, &["source", "filter", "metricsFormat"])) {
        if !two_groups(&f) {
            errs.push(invalid_str(
                "spec.metricsCollectorSpec.source.filter.metricsFormat",
                &f,
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
    if refs.iter().any(|(av, k, _)| k == "Trial" && av == TRIAL_API_VERSION) {
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
            objects: vec![("batch/v1", "Job"), (TRIAL_API_VERSION, "Trial")],
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
        let Some(trial) = find_object(&ctx.objects, TRIAL_API_VERSION, "Trial", &job) else {
            return AdmissionOutcome::deny(500, format!("trials.kubeflow.org {} not found", gofmt::quote(&job)));
        };
        let mut out = pod.clone();
        let mut labels: BTreeMap<String, Value> = get(pod, &["metadata", "labels"])
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        if let Some(tl) = get(trial, &["metadata", "labels"]).and_then(Value::as_object) {
            for (k, v) in tl {
                labels.insert(k.clone(), v.clone());
            }
        }
        labels.insert(LABEL_TRIAL_NAME.into(), json!(s(trial, &["metadata", "name"])));
        set(
            &mut out,
            &["metadata", "labels"],
            Value::Object(labels.into_iter().collect()),
        );
        let primary = s(trial, &["spec", "primaryContainerName"]);
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
