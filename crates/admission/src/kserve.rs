//! KServe InferenceService webhooks (`kserve/kserve` v0.15.2 `pkg/apis/serving/v1beta1`): the
//! defaulter (`/mutate-serving-kserve-io-v1beta1-inferenceservice`) and the validator
//! (`/validate-serving-kserve-io-v1beta1-inferenceservice`).
//!
//! Invariants: the validator refuses names outside `^[a-z]([-a-z0-9]*[a-z0-9])?$`, components
//! without exactly one implementation, unsupported autoscaler classes and deployment-mode changes,
//! with upstream's messages (`Denied`, 403); the defaulter only fills what is missing (framework
//! predictors become `model` with a `modelFormat`, custom containers get their name and the
//! configured resource defaults) and never removes user data other than the framework key it
//! converts.

use kfsec_types::admission::{AdmissionRequest, Operation};
use kfsec_types::kubeflow::InferenceService;
use serde_json::{Map, Value, json};

use crate::registration::{FailurePolicy, Registration, Rule, WebhookKind};
use crate::webhook::{AdmissionOutcome, Context, ContextNeeds, Webhook, decode_typed};

/// Annotation selecting the deployment mode.
pub const DEPLOYMENT_MODE: &str = "serving.kserve.io/deploymentMode";
/// Annotation selecting the autoscaler class.
pub const AUTOSCALER_CLASS: &str = "serving.kserve.io/autoscalerClass";
/// The predictor container name.
pub const CONTAINER_NAME: &str = "kserve-container";
const TRANSFORMER_CONTAINER: &str = "transformer-container";
const STORAGE_URI_ENV: &str = "STORAGE_URI";
const SERVICE: &str = "kserve-webhook-server-service";
const CONFIGURATION: &str = "inferenceservice.serving.kserve.io";
const NAME_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";

/// What `inferenceservice-config` provides (defaults as shipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KServeSettings {
    /// `inferenceService.resource.cpuRequest` (empty = none).
    pub cpu_request: String,
    /// `inferenceService.resource.memoryRequest`.
    pub memory_request: String,
    /// `inferenceService.resource.cpuLimit`.
    pub cpu_limit: String,
    /// `inferenceService.resource.memoryLimit`.
    pub memory_limit: String,
    /// `deploy.defaultDeploymentMode`.
    pub default_deployment_mode: String,
    /// `security.autoMountServiceAccountToken`.
    pub auto_mount_service_account_token: bool,
    /// `explainers.art.defaultImageVersion`.
    pub art_default_image_version: String,
}

impl Default for KServeSettings {
    fn default() -> Self {
        Self {
            cpu_request: "1".into(),
            memory_request: "2Gi".into(),
            cpu_limit: "1".into(),
            memory_limit: "2Gi".into(),
            default_deployment_mode: "Serverless".into(),
            auto_mount_service_account_token: true,
            art_default_image_version: "latest".into(),
        }
    }
}

fn rules() -> Vec<Rule> {
    vec![Rule::new(
        &["CREATE", "UPDATE"],
        &["serving.kserve.io"],
        &["v1beta1"],
        &["inferenceservices"],
    )]
}

fn registration(name: &'static str, path: &'static str, kind: WebhookKind) -> Registration {
    Registration {
        name,
        path,
        kind,
        configuration: CONFIGURATION,
        service: SERVICE,
        rules: rules(),
        admission_review_versions: &["v1beta1"],
        failure_policy: FailurePolicy::Fail,
        namespace_selector: None,
        object_selector: None,
        match_conditions: Vec::new(),
        reinvocation_policy: None,
    }
}

fn present<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Predictor framework keys (each is also its `modelFormat` name).
const FRAMEWORKS: [&str; 10] = [
    "xgboost",
    "pytorch",
    "triton",
    "sklearn",
    "tensorflow",
    "onnx",
    "pmml",
    "lightgbm",
    "paddle",
    "huggingface",
];

/// `setPredictorModelDefaults`' order (first non-nil framework wins).
const CONVERSION_ORDER: [&str; 10] = [
    "sklearn",
    "tensorflow",
    "xgboost",
    "pytorch",
    "triton",
    "onnx",
    "huggingface",
    "pmml",
    "lightgbm",
    "paddle",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Component {
    Predictor,
    Transformer,
    Explainer,
}

impl Component {
    fn key(self) -> &'static str {
        match self {
            Self::Predictor => "predictor",
            Self::Transformer => "transformer",
            Self::Explainer => "explainer",
        }
    }

    fn exactly_one_error(self) -> &'static str {
        match self {
            Self::Predictor => {
                "exactly one of [SKLearn, XGBoost, Tensorflow, PyTorch, Triton, ONNX, HuggingFace, PMML, LightGBM, Paddle, Model, WorkerSpec, PodSpec] must be specified in PredictorSpec"
            }
            Self::Transformer => "exactly one of [PodSpec] must be specified in TransformerSpec",
            Self::Explainer => "exactly one of [ART, PodSpec] must be specified in ExplainerSpec",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Implementation {
    Framework,
    Model,
    Art,
    Custom,
}

fn containers(comp: &Value) -> &[Value] {
    comp.get("containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// `GetImplementations()`.
fn implementations(kind: Component, comp: &Value) -> Vec<Implementation> {
    let mut out = Vec::new();
    match kind {
        Component::Predictor => {
            for key in FRAMEWORKS {
                if present(comp, key).is_some() {
                    out.push(Implementation::Framework);
                }
            }
            if present(comp, "model").is_some() {
                out.push(Implementation::Model);
            }
            let cs = containers(comp);
            if !cs.is_empty() {
                for c in cs {
                    if text(c, "name") == CONTAINER_NAME {
                        out.push(Implementation::Custom);
                    }
                }
                if out.is_empty() {
                    out.push(Implementation::Custom);
                }
            }
        }
        Component::Transformer => {
            if !containers(comp).is_empty() {
                out.push(Implementation::Custom);
            }
        }
        Component::Explainer => {
            if present(comp, "art").is_some() {
                out.push(Implementation::Art);
            }
            if !containers(comp).is_empty() {
                out.push(Implementation::Custom);
            }
        }
    }
    out
}

fn set_resource_defaults(cfg: &KServeSettings, container: &mut Map<String, Value>) {
    let wanted = [
        ("requests", "cpu", &cfg.cpu_request),
        ("requests", "memory", &cfg.memory_request),
        ("limits", "cpu", &cfg.cpu_limit),
        ("limits", "memory", &cfg.memory_limit),
    ];
    for (section, res, value) in wanted {
        if value.is_empty() {
            continue;
        }
        let resources = container.entry("resources").or_insert_with(|| json!({}));
        if !resources.is_object() {
            *resources = json!({});
        }
        let Value::Object(resources) = resources else { continue };
        let list = resources.entry(section).or_insert_with(|| json!({}));
        if !list.is_object() {
            *list = json!({});
        }
        if let Value::Object(list) = list
            && list.get(res).is_none_or(Value::is_null)
        {
            list.insert(res.to_string(), Value::String(value.clone()));
        }
    }
}

/// `InferenceService.DefaultInferenceService` on a JSON InferenceService.
///
/// `typed` is `isvc` decoded; the defaults are written into a copy of `isvc`, so every member
/// they do not touch stays exactly as sent.
pub fn default_inference_service(isvc: &Value, typed: &InferenceService, cfg: &KServeSettings) -> Value {
    let mut out = isvc.clone();
    let Value::Object(root) = &mut out else {
        return isvc.clone();
    };
    let mode = typed.annotation(DEPLOYMENT_MODE).map(str::to_string);
    if mode.is_none() && matches!(cfg.default_deployment_mode.as_str(), "ModelMesh" | "RawDeployment") {
        let meta = root.entry("metadata").or_insert_with(|| json!({}));
        if let Value::Object(meta) = meta {
            let ann = meta.entry("annotations").or_insert_with(|| json!({}));
            if !ann.is_object() {
                *ann = json!({});
            }
            if let Value::Object(ann) = ann {
                ann.insert(
                    DEPLOYMENT_MODE.into(),
                    Value::String(cfg.default_deployment_mode.clone()),
                );
            }
        }
    }
    let model_mesh = mode.as_deref() == Some("ModelMesh");
    let Some(Value::Object(spec)) = root.get_mut("spec") else {
        return out;
    };
    let mut components = vec![Component::Transformer, Component::Explainer];
    if !model_mesh {
        if let Some(Value::Object(pred)) = spec.get_mut("predictor") {
            convert_framework(pred);
        }
        components.push(Component::Predictor);
    }
    for kind in components {
        let Some(comp) = spec.get_mut(kind.key()).filter(|c| c.is_object()) else {
            continue;
        };
        let impls = implementations(kind, comp);
        if impls.len() != 1 {
            continue;
        }
        let Value::Object(comp) = comp else { continue };
        match impls[..] {
            [Implementation::Custom] => {
                let Some(Value::Array(cs)) = comp.get_mut("containers") else {
                    continue;
                };
                let single = cs.len() == 1;
                if let Some(Value::Object(c0)) = cs.first_mut() {
                    let unnamed = c0.get("name").and_then(Value::as_str).unwrap_or_default().is_empty();
                    if kind != Component::Predictor || single || unnamed {
                        c0.insert("name".into(), Value::String(CONTAINER_NAME.into()));
                    }
                    set_resource_defaults(cfg, c0);
                }
            }
            [Implementation::Art] => {
                if let Some(Value::Object(art)) = comp.get_mut("art") {
                    art.insert("name".into(), Value::String(CONTAINER_NAME.into()));
                    if art.get("runtimeVersion").is_none_or(Value::is_null) {
                        art.insert(
                            "runtimeVersion".into(),
                            Value::String(cfg.art_default_image_version.clone()),
                        );
                    }
                    set_resource_defaults(cfg, art);
                }
            }
            _ => {}
        }
    }
    if !cfg.auto_mount_service_account_token {
        for key in ["predictor", "transformer", "explainer"] {
            if key == "predictor" && !spec.contains_key(key) {
                spec.insert(key.into(), json!({}));
            }
            if let Some(Value::Object(comp)) = spec.get_mut(key)
                && comp.get("automountServiceAccountToken").is_none_or(Value::is_null)
            {
                comp.insert("automountServiceAccountToken".into(), Value::Bool(false));
            }
        }
    }
    out
}

/// `setPredictorModelDefaults`: the first framework predictor becomes `model`.
fn convert_framework(pred: &mut Map<String, Value>) {
    for key in CONVERSION_ORDER {
        let Some(fw) = pred.get(key).filter(|v| !v.is_null()).cloned() else {
            continue;
        };
        let mut model = match fw {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        if matches!(key, "triton" | "onnx" | "huggingface") && model.get("protocolVersion").is_none_or(Value::is_null) {
            model.insert("protocolVersion".into(), json!("v2"));
        }
        model.insert("modelFormat".into(), json!({"name": key}));
        pred.insert("model".into(), Value::Object(model));
        pred.remove(key);
        break;
    }
    if let Some(Value::Object(model)) = pred.get_mut("model") {
        let triton = model
            .get("modelFormat")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            == Some("triton");
        if triton && model.get("protocolVersion").is_none_or(Value::is_null) {
            model.insert("protocolVersion".into(), json!("v2"));
        }
    }
}

/// `/mutate-serving-kserve-io-v1beta1-inferenceservice`.
#[derive(Debug, Clone, Copy, Default)]
pub struct InferenceServiceDefaulter;

impl Webhook for InferenceServiceDefaulter {
    fn name(&self) -> &str {
        "inferenceservice.kserve-webhook-server.defaulter"
    }

    fn path(&self) -> &str {
        "/mutate-serving-kserve-io-v1beta1-inferenceservice"
    }

    fn registration(&self) -> Registration {
        registration(
            "inferenceservice.kserve-webhook-server.defaulter",
            "/mutate-serving-kserve-io-v1beta1-inferenceservice",
            WebhookKind::Mutating,
        )
    }

    fn context_needs(&self) -> ContextNeeds {
        ContextNeeds {
            settings: true,
            ..ContextNeeds::none()
        }
    }

    fn admit(&self, req: &AdmissionRequest, ctx: &Context) -> AdmissionOutcome {
        let Some(isvc @ Value::Object(_)) = &req.object else {
            return AdmissionOutcome::deny(400, "there is no content to decode");
        };
        match decode_typed(isvc, "InferenceService") {
            Ok(typed) => {
                AdmissionOutcome::from_mutation(isvc, &default_inference_service(isvc, &typed, &ctx.settings.kserve))
            }
            Err(denied) => denied,
        }
    }
}

/// `/validate-serving-kserve-io-v1beta1-inferenceservice`.
#[derive(Debug, Clone, Copy, Default)]
pub struct InferenceServiceValidator;

fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_lowercase() && (l.is_ascii_lowercase() || l.is_ascii_digit()) && b.iter().all(inner)
        }
        _ => false,
    }
}

fn env_has(container: &Value, name: &str) -> bool {
    container
        .get("env")
        .and_then(Value::as_array)
        .is_some_and(|env| env.iter().any(|e| text(e, "name") == name))
}

/// `validateInferenceService` (v0.15.2), first error wins.
pub fn validate_inference_service(isvc: &InferenceService) -> Result<(), String> {
    let name = isvc.name();
    if !is_valid_name(name) {
        return Err(format!(
            "the InferenceService \"{name}\" is invalid: a InferenceService name must consist of lower case alphanumeric characters or '-', and must start with alphabetical character. (e.g. \"my-name\" or \"abc-123\", regex used for validation is '{NAME_FMT}')"
        ));
    }
    if let Some(class) = isvc.annotation(AUTOSCALER_CLASS)
        && !matches!(class, "hpa" | "external" | "keda" | "none")
    {
        return Err(format!("[{class}] is not a supported autoscaler class type"));
    }
    let spec = isvc.spec.get();
    let no_predictor = json!({});
    let predictor = spec.and_then(|s| s.predictor.get()).unwrap_or(&no_predictor);
    let q = crate::gofmt::quote(name);
    if let Some(worker) = present(predictor, "workerSpec") {
        if containers(worker).len() > 1 {
            return Err(format!(
                "the InferenceService {q} is invalid: setting multiple containers in workerSpec is not allowed"
            ));
        }
        if let Some(model) = present(predictor, "model") {
            if env_has(model, "PIPELINE_PARALLEL_SIZE") {
                return Err(format!(
                    "the InferenceService {q} is invalid: setting PIPELINE_PARALLEL_SIZE in environment variables is not allowed"
                ));
            }
            if env_has(model, "TENSOR_PARALLEL_SIZE") {
                return Err(format!(
                    "the InferenceService {q} is invalid: setting TENSOR_PARALLEL_SIZE in environment variables is not allowed"
                ));
            }
            match model.get("storageUri").and_then(Value::as_str) {
                None => {
                    return Err(format!(
                        "the InferenceService {q} is invalid: StorageURI must be set for multinode enabled"
                    ));
                }
                Some(uri) => {
                    let protocol = uri.split("://").next().unwrap_or_default();
                    if protocol != "pvc" {
                        return Err(format!(
                            "the InferenceService {q} is invalid: Multinode only supports 'pvc' Storage Protocol({protocol})"
                        ));
                    }
                }
            }
            let class = isvc.annotation(AUTOSCALER_CLASS).unwrap_or_default();
            if class != "none" {
                return Err(format!(
                    "the InferenceService {q} is invalid: Multinode only supports 'none' autoscaler({class})"
                ));
            }
        }
        for (field, label) in [
            ("pipelineParallelSize", "PipelineParallelSize"),
            ("tensorParallelSize", "TensorParallelSize"),
        ] {
            if let Some(n) = worker.get(field).and_then(Value::as_i64)
                && n < 1
            {
                return Err(format!(
                    "the InferenceService {q} is invalid: WorkerSpec.{label} cannot be less than 1({n})"
                ));
            }
        }
    }
    for c in containers(predictor) {
        if text(c, "name") == TRANSFORMER_CONTAINER {
            if env_has(c, STORAGE_URI_ENV) {
                return Err("storage uri should not be specified in transformer container".into());
            }
            break;
        }
    }
    for (kind, comp) in [
        (Component::Predictor, Some(predictor)),
        (Component::Transformer, spec.and_then(|s| s.transformer.get())),
        (Component::Explainer, spec.and_then(|s| s.explainer.get())),
    ] {
        let Some(comp) = comp else { continue };
        if implementations(kind, comp).len() != 1 {
            return Err(kind.exactly_one_error().into());
        }
        validate_extensions(comp)?;
    }
    Ok(())
}

/// `ComponentExtensionSpec.Validate`.
fn validate_extensions(comp: &Value) -> Result<(), String> {
    if comp
        .get("containerConcurrency")
        .and_then(Value::as_i64)
        .is_some_and(|c| c < 0)
    {
        return Err("parallelism cannot be less than 0".into());
    }
    let min = comp.get("minReplicas").and_then(Value::as_i64).unwrap_or(1);
    let max = comp.get("maxReplicas").and_then(Value::as_i64).unwrap_or(0);
    if min < 0 {
        return Err("'MinReplicas' cannot be less than 0".into());
    }
    if max < 0 {
        return Err("'MaxReplicas' cannot be less than 0".into());
    }
    if min > max && max != 0 {
        return Err("'MinReplicas' cannot be greater than MaxReplicas".into());
    }
    if let Some(logger) = present(comp, "logger")
        && !matches!(text(logger, "mode"), "all" | "request" | "response")
    {
        return Err("invalid logger type".into());
    }
    Ok(())
}

impl Webhook for InferenceServiceValidator {
    fn name(&self) -> &str {
        "inferenceservice.kserve-webhook-server.validator"
    }

    fn path(&self) -> &str {
        "/validate-serving-kserve-io-v1beta1-inferenceservice"
    }

    fn registration(&self) -> Registration {
        registration(
            "inferenceservice.kserve-webhook-server.validator",
            "/validate-serving-kserve-io-v1beta1-inferenceservice",
            WebhookKind::Validating,
        )
    }

    fn context_needs(&self) -> ContextNeeds {
        ContextNeeds::none()
    }

    fn admit(&self, req: &AdmissionRequest, _ctx: &Context) -> AdmissionOutcome {
        let Some(isvc @ Value::Object(_)) = &req.object else {
            return AdmissionOutcome::deny(400, "there is no content to decode");
        };
        let isvc: InferenceService = match decode_typed(isvc, "InferenceService") {
            Ok(isvc) => isvc,
            Err(denied) => return denied,
        };
        if req.operation == Operation::Update
            && let Some(old @ Value::Object(_)) = &req.old_object
        {
            let old: InferenceService = match decode_typed(old, "old InferenceService") {
                Ok(old) => old,
                Err(denied) => return denied,
            };
            let status_mode = old.status.get().map_or("", |s| s.deployment_mode.as_str());
            if let Some(mode) = isvc.annotation(DEPLOYMENT_MODE)
                && !status_mode.is_empty()
                && mode != status_mode
            {
                return AdmissionOutcome::deny(
                    403,
                    format!("update rejected: deploymentMode cannot be changed from '{status_mode}' to '{mode}'"),
                );
            }
        }
        match validate_inference_service(&isvc) {
            Ok(()) => AdmissionOutcome::Allow,
            Err(message) => AdmissionOutcome::deny(403, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use kfsec_types::admission::{GroupVersionKind, GroupVersionResource};

    use super::*;

    fn request(operation: Operation, isvc: Value, old: Option<Value>) -> AdmissionRequest {
        let mut req = AdmissionRequest::for_object(
            operation,
            GroupVersionKind::new("serving.kserve.io", "v1beta1", "InferenceService"),
            GroupVersionResource::new("serving.kserve.io", "v1beta1", "inferenceservices"),
            "ns",
            "sklearn-iris",
            isvc,
        );
        req.old_object = old;
        req
    }

    #[test]
    fn a_wrongly_typed_member_is_refused_by_both_webhooks() {
        let isvc = json!({"metadata": {"name": "sklearn-iris", "annotations": {AUTOSCALER_CLASS: 1}},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}}});
        let ctx = Context::default();
        for hook in [&InferenceServiceValidator as &dyn Webhook, &InferenceServiceDefaulter] {
            match hook.admit(&request(Operation::Create, isvc.clone(), None), &ctx) {
                AdmissionOutcome::Deny { code: 400, message } => assert_eq!(
                    message,
                    "cannot decode InferenceService: metadata.annotations.serving.kserve.io/autoscalerClass: invalid type: integer `1`, expected a string"
                ),
                other => panic!("{}: {other:?}", hook.name()),
            }
        }
    }

    #[test]
    fn the_deployment_mode_cannot_change_on_update() {
        let isvc = |mode: &str| {
            json!({"metadata": {"name": "sklearn-iris", "annotations": {DEPLOYMENT_MODE: mode}},
                "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}},
                "status": {"deploymentMode": mode, "url": null}})
        };
        let ctx = Context::default();
        let same = request(Operation::Update, isvc("Serverless"), Some(isvc("Serverless")));
        assert_eq!(InferenceServiceValidator.admit(&same, &ctx), AdmissionOutcome::Allow);
        let changed = request(Operation::Update, isvc("RawDeployment"), Some(isvc("Serverless")));
        assert_eq!(
            InferenceServiceValidator.admit(&changed, &ctx),
            AdmissionOutcome::deny(
                403,
                "update rejected: deploymentMode cannot be changed from 'Serverless' to 'RawDeployment'"
            )
        );
    }
}
