//! Kubeflow PodDefaults (`kubeflow.org/v1alpha1`): selecting the PodDefaults of a pod's namespace
//! that match it, rejecting conflicting ones with upstream's message, merging the rest into the
//! pod, and the `/apply-poddefault` webhook.
//!
//! Semantics follow `kubeflow/kubeflow` `components/admission-webhook/main.go` (v1.9.2, the same
//! logic as `kubeflow/dashboard` `components/poddefaults-webhooks`): keyed merges must be
//! `DeepEqual` when the key exists (env by name in every container; volumeMounts by name and by
//! mountPath; volumes, imagePullSecrets, initContainers and sidecars by name; tolerations by key),
//! envFrom is appended, labels/annotations are map merges, serviceAccountName and
//! automountServiceAccountToken are last-wins, command/args are first-wins on containers that have
//! none (never istio-proxy), and each applied PodDefault leaves
//! `poddefault.admission.kubeflow.org/poddefault-<name>: <resourceVersion>`.
//!
//! Invariants: any conflict rejects the whole pod and nothing is applied; the exclude annotation
//! and mirror pods are never touched; a PodDefault from another namespace never applies; the
//! pod's existing fields are never removed or rewritten — PodDefaults only add.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use kfsec_types::admission::{AdmissionRequest, GroupVersionResource};
use kfsec_types::meta::LabelSelector;
use serde_json::{Map, Value};

use crate::gofmt::{self, Schema};
use crate::registration::{FailurePolicy, Registration, Rule, WebhookKind};
use crate::selector::{self, Selector};
use crate::webhook::{AdmissionOutcome, Context, ContextNeeds, Webhook};

/// Prefix of the PodDefault annotations.
pub const ANNOTATION_PREFIX: &str = "poddefault.admission.kubeflow.org";
/// Pods with this annotation set to `"true"` are left alone.
pub const EXCLUDE_ANNOTATION: &str = "poddefault.admission.kubeflow.org/exclude";
/// Kubernetes' mirror-pod annotation; mirror pods are left alone.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The container that never gets command/args.
pub const ISTIO_PROXY: &str = "istio-proxy";
/// The webhook's registered name (`kubeflow/dashboard` manifests).
pub const WEBHOOK_NAME: &str = "poddefaults-webhook-deployment.kubeflow.org";
/// The webhook's path.
pub const WEBHOOK_PATH: &str = "/apply-poddefault";

/// Why PodDefaults could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodDefaultError {
    /// Matching PodDefaults conflict with the pod or with each other (upstream's message).
    #[error("{message}")]
    Conflict {
        /// Names of the matching PodDefaults.
        pod_defaults: Vec<String>,
        /// `conflict occurred while applying poddefaults: … on pod: … err: …`.
        message: String,
    },
    /// A PodDefault's selector is not a valid label selector.
    #[error("{0}")]
    InvalidSelector(String),
    /// A PodDefault of the namespace does not decode.
    #[error("{0}")]
    InvalidPodDefault(String),
    /// The pod does not decode.
    #[error("{0}")]
    InvalidPod(String),
}

/// One entry of a keyed list, with its key(s) and its Go-normalized form.
#[derive(Debug, Clone)]
struct Item {
    key: String,
    path: String,
    norm: Value,
    raw: Value,
}

#[derive(Debug, Clone, Default)]
struct Spec {
    env: Vec<Item>,
    env_from: Vec<Value>,
    volumes: Vec<Item>,
    volume_mounts: Vec<Item>,
    tolerations: Vec<Item>,
    image_pull_secrets: Vec<Item>,
    init_containers: Vec<Item>,
    sidecars: Vec<Item>,
    annotations: Vec<(String, String)>,
    labels: Vec<(String, String)>,
    service_account_name: String,
    automount_service_account_token: Option<bool>,
    command: Option<Vec<Value>>,
    args: Option<Vec<Value>>,
}

/// A PodDefault decoded once (selector compiled, merge items normalized), ready to apply.
#[derive(Debug, Clone)]
pub struct PodDefault {
    name: String,
    namespace: Option<String>,
    resource_version: String,
    selector: LabelSelector,
    compiled: Result<Selector, String>,
    spec: Result<Spec, String>,
}

impl PodDefault {
    /// Decodes a stored PodDefault. Decoding problems are kept and reported when it is used.
    pub fn from_value(v: &Value) -> Self {
        let meta = v.get("metadata");
        let text = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str).map(str::to_string);
        let name = text("name").unwrap_or_default();
        let spec_v = v.get("spec").unwrap_or(&Value::Null);
        let (selector, compiled) = match selector::decode(spec_v.get("selector").unwrap_or(&Value::Null)) {
            Ok(s) => {
                let c = Selector::compile(&s);
                (s, c)
            }
            Err(e) => (LabelSelector::default(), Err(e)),
        };
        let spec = if v.is_object() && (spec_v.is_object() || spec_v.is_null()) {
            decode_spec(spec_v).map_err(|e| format!("PodDefault {}: spec.{e}", gofmt::quote(&name)))
        } else {
            Err(format!("PodDefault {}: expected an object", gofmt::quote(&name)))
        };
        Self {
            namespace: text("namespace").filter(|n| !n.is_empty()),
            resource_version: text("resourceVersion").unwrap_or_default(),
            name,
            selector,
            compiled,
            spec,
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `metadata.resourceVersion`.
    pub fn resource_version(&self) -> &str {
        &self.resource_version
    }
}

/// The PodDefaults of one namespace, decoded and indexed by the label each selector requires;
/// cheap to clone (the caller can cache one per namespace and store revision).
#[derive(Debug, Clone, Default)]
pub struct PodDefaultSet(Arc<SetInner>);

#[derive(Debug, Default)]
struct SetInner {
    pds: Vec<PodDefault>,
    /// PodDefaults whose selector requires label `key` (an `In` requirement), by key.
    by_label: HashMap<String, Vec<usize>>,
    /// PodDefaults that may match a pod without any particular label.
    unindexed: Vec<usize>,
    /// The first PodDefault that does not decode.
    first_invalid_spec: Option<usize>,
    /// The first PodDefault whose selector is invalid.
    first_invalid_selector: Option<usize>,
}

impl PodDefaultSet {
    /// Decodes stored PodDefaults, keeping their order.
    pub fn from_values(values: &[Value]) -> Self {
        values.iter().map(PodDefault::from_value).collect()
    }

    /// Number of PodDefaults.
    pub fn len(&self) -> usize {
        self.0.pds.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.pds.is_empty()
    }

    /// The PodDefaults, in list order.
    pub fn as_slice(&self) -> &[PodDefault] {
        &self.0.pds
    }

    /// Indices of the PodDefaults that could match a pod with these labels, in list order.
    fn candidates(&self, labels: Option<&Map<String, Value>>) -> Vec<usize> {
        let mut out = self.0.unindexed.clone();
        if let Some(labels) = labels {
            for (k, v) in labels {
                if v.is_string()
                    && let Some(idx) = self.0.by_label.get(k)
                {
                    out.extend_from_slice(idx);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl FromIterator<PodDefault> for PodDefaultSet {
    fn from_iter<I: IntoIterator<Item = PodDefault>>(iter: I) -> Self {
        let mut inner = SetInner {
            pds: iter.into_iter().collect(),
            ..SetInner::default()
        };
        for (i, pd) in inner.pds.iter().enumerate() {
            if pd.spec.is_err() && inner.first_invalid_spec.is_none() {
                inner.first_invalid_spec = Some(i);
            }
            match &pd.compiled {
                Err(_) => {
                    if inner.first_invalid_selector.is_none() {
                        inner.first_invalid_selector = Some(i);
                    }
                }
                Ok(sel) => match sel.required_key() {
                    Some(key) => inner.by_label.entry(key.to_string()).or_default().push(i),
                    None => inner.unindexed.push(i),
                },
            }
        }
        Self(Arc::new(inner))
    }
}

fn array<'a>(obj: &'a Value, field: &str) -> Result<&'a [Value], String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => {
            if let Some(i) = items.iter().position(|v| !v.is_object()) {
                return Err(format!("{field}[{i}]: expected an object"));
            }
            Ok(items)
        }
        Some(_) => Err(format!("{field}: expected an array")),
    }
}

fn string_array(obj: &Value, field: &str) -> Result<Option<Vec<Value>>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            if items.iter().any(|v| !v.is_string()) {
                return Err(format!("{field}: expected an array of strings"));
            }
            Ok(Some(items.clone()))
        }
        Some(_) => Err(format!("{field}: expected an array")),
    }
}

fn string_map(obj: Option<&Value>, field: &str) -> Result<Vec<(String, String)>, String> {
    match obj.and_then(|o| o.get(field)) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(m)) => {
            let mut out = Vec::with_capacity(m.len());
            for (k, v) in m {
                match v {
                    Value::String(s) => out.push((k.clone(), s.clone())),
                    Value::Null => out.push((k.clone(), String::new())),
                    _ => return Err(format!("{field}.{k}: expected a string")),
                }
            }
            out.sort();
            Ok(out)
        }
        Some(_) => Err(format!("{field}: expected an object")),
    }
}

fn string_field(obj: &Value, field: &str) -> Result<String, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{field}: expected a string")),
    }
}

fn bool_field(obj: &Value, field: &str) -> Result<Option<bool>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("{field}: expected a boolean")),
    }
}

fn text_of(v: &Value, field: &str) -> String {
    v.get(field).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn items(obj: &Value, field: &str, key: &str, schema: &Schema) -> Result<Vec<Item>, String> {
    let raw = array(obj, field)?;
    let mut out = Vec::with_capacity(raw.len());
    for (i, v) in raw.iter().enumerate() {
        check_scalars(v, schema).map_err(|e| format!("{field}[{i}].{e}"))?;
        out.push(Item {
            key: text_of(v, key),
            path: text_of(v, "mountPath"),
            norm: gofmt::normalize(v, schema),
            raw: v.clone(),
        });
    }
    Ok(out)
}

/// The key fields a merge reads must have the right JSON type.
fn check_scalars(v: &Value, schema: &Schema) -> Result<(), String> {
    for (_, json, ty) in schema.fields {
        if let (gofmt::Ty::Str, Some(f)) = (ty, v.get(*json))
            && !(f.is_string() || f.is_null())
        {
            return Err(format!("{json}: expected a string"));
        }
    }
    Ok(())
}

fn decode_spec(spec: &Value) -> Result<Spec, String> {
    Ok(Spec {
        env: items(spec, "env", "name", &gofmt::ENV_VAR)?,
        env_from: array(spec, "envFrom")?.to_vec(),
        volumes: items(spec, "volumes", "name", &gofmt::VOLUME)?,
        volume_mounts: items(spec, "volumeMounts", "name", &gofmt::VOLUME_MOUNT)?,
        tolerations: items(spec, "tolerations", "key", &gofmt::TOLERATION)?,
        image_pull_secrets: items(spec, "imagePullSecrets", "name", &gofmt::LOCAL_OBJECT_REFERENCE)?,
        init_containers: items(spec, "initContainers", "name", &gofmt::CONTAINER)?,
        sidecars: items(spec, "sidecars", "name", &gofmt::CONTAINER)?,
        annotations: string_map(Some(spec), "annotations")?,
        labels: string_map(Some(spec), "labels")?,
        service_account_name: string_field(spec, "serviceAccountName")?,
        automount_service_account_token: bool_field(spec, "automountServiceAccountToken")?,
        command: string_array(spec, "command")?,
        args: string_array(spec, "args")?,
    })
}

/// A keyed merge (`mergeEnv`, `mergeVolumes`, …): items whose key is new are appended; an
/// existing key must hold a `DeepEqual` value, else a conflict message is recorded.
struct KeyedMerge<'a> {
    seen: HashMap<&'a str, (Cow<'a, Value>, &'a Value)>,
    added: Vec<Value>,
}

impl<'a> KeyedMerge<'a> {
    fn new(existing: &'a [Value], key: &str, schema: &Schema) -> Self {
        let mut seen = HashMap::with_capacity(existing.len());
        for v in existing {
            let k = v.get(key).and_then(Value::as_str).unwrap_or_default();
            seen.insert(k, (Cow::Owned(gofmt::normalize(v, schema)), v));
        }
        Self {
            seen,
            added: Vec::new(),
        }
    }

    fn merge(&mut self, pd: &str, it: &'a Item, what: &str, schema: &Schema, errs: &mut Vec<String>) {
        match self.seen.get(it.key.as_str()) {
            None => {
                self.seen.insert(&it.key, (Cow::Borrowed(&it.norm), &it.raw));
                self.added.push(it.raw.clone());
            }
            Some((norm, raw)) => {
                if **norm != it.norm {
                    errs.push(conflict_text(what, pd, &it.key, &it.raw, raw, schema));
                }
            }
        }
    }
}

fn conflict_text(what: &str, pd: &str, key: &str, new: &Value, found: &Value, schema: &Schema) -> String {
    format!(
        "merging {what} for {pd} has a conflict on {key}: \n{}\ndoes not match\n{}\n in container",
        gofmt::sharp_v(new, schema),
        gofmt::sharp_v(found, schema)
    )
}

/// Per-container results.
#[derive(Default)]
struct ContainerPlan {
    env: Vec<Value>,
    mounts: Vec<Value>,
    env_from: Vec<Value>,
    command: Option<Vec<Value>>,
    args: Option<Vec<Value>>,
}

/// Everything the matching PodDefaults add, computed before anything is written.
struct Plan {
    volumes: Vec<Value>,
    tolerations: Vec<Value>,
    image_pull_secrets: Vec<Value>,
    containers: Vec<ContainerPlan>,
    annotations: Vec<(String, String)>,
    labels: Vec<(String, String)>,
    init_containers: Vec<Value>,
    sidecars: Vec<Value>,
    service_account_name: Option<String>,
    automount: Option<bool>,
}

/// The parts of a pod the merge reads, type-checked.
struct PodView<'a> {
    name: &'a str,
    namespace: &'a str,
    annotations: Vec<(String, String)>,
    labels: Option<&'a Map<String, Value>>,
    label_pairs: Vec<(String, String)>,
    volumes: &'a [Value],
    tolerations: &'a [Value],
    image_pull_secrets: &'a [Value],
    init_containers: &'a [Value],
    containers: &'a [Value],
}

fn view(pod: &Value) -> Result<PodView<'_>, String> {
    if !pod.is_object() {
        return Err("cannot decode pod: expected an object".into());
    }
    let meta = match pod.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m),
        Some(_) => return Err("cannot decode pod: metadata: expected an object".into()),
    };
    let spec = match pod.get("spec") {
        None | Some(Value::Null) => &Value::Null,
        Some(s @ Value::Object(_)) => s,
        Some(_) => return Err("cannot decode pod: spec: expected an object".into()),
    };
    let bad = |e: String| format!("cannot decode pod: {e}");
    let meta_str = |k: &str| -> Result<&str, String> {
        match meta.and_then(|m| m.get(k)) {
            None | Some(Value::Null) => Ok(""),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(format!("cannot decode pod: metadata.{k}: expected a string")),
        }
    };
    let containers = array(spec, "containers").map_err(|e| bad(format!("spec.{e}")))?;
    for (i, c) in containers.iter().enumerate() {
        for f in ["env", "volumeMounts", "envFrom"] {
            array(c, f).map_err(|e| bad(format!("spec.containers[{i}].{e}")))?;
        }
        for f in ["command", "args"] {
            string_array(c, f).map_err(|e| bad(format!("spec.containers[{i}].{e}")))?;
        }
        string_field(c, "name").map_err(|e| bad(format!("spec.containers[{i}].{e}")))?;
    }
    string_field(spec, "serviceAccountName").map_err(|e| bad(format!("spec.{e}")))?;
    bool_field(spec, "automountServiceAccountToken").map_err(|e| bad(format!("spec.{e}")))?;
    Ok(PodView {
        name: meta_str("name")?,
        namespace: meta_str("namespace")?,
        annotations: string_map(meta, "annotations").map_err(|e| bad(format!("metadata.{e}")))?,
        labels: meta.and_then(|m| m.get("labels")).and_then(Value::as_object),
        label_pairs: string_map(meta, "labels").map_err(|e| bad(format!("metadata.{e}")))?,
        volumes: array(spec, "volumes").map_err(|e| bad(format!("spec.{e}")))?,
        tolerations: array(spec, "tolerations").map_err(|e| bad(format!("spec.{e}")))?,
        image_pull_secrets: array(spec, "imagePullSecrets").map_err(|e| bad(format!("spec.{e}")))?,
        init_containers: array(spec, "initContainers").map_err(|e| bad(format!("spec.{e}")))?,
        containers,
    })
}

/// `mergeMap`: keys new to the pod are added; a differing value is a conflict.
fn merge_map(
    existing: &[(String, String)],
    pds: &[&PodDefault],
    pick: fn(&Spec) -> &[(String, String)],
    errs: &mut Vec<String>,
) -> Vec<(String, String)> {
    let mut out: HashMap<&str, &str> = existing.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut added = Vec::new();
    for pd in pds {
        let Ok(spec) = &pd.spec else { continue };
        for (k, v) in pick(spec) {
            match out.get(k.as_str()) {
                None => {
                    out.insert(k, v);
                    added.push((k.clone(), v.clone()));
                }
                Some(ov) if *ov != v => errs.push(format!(
                    "merging has conflict on {k}: \n{}\ndoes not match\n{}\n in pod",
                    gofmt::quote(v),
                    gofmt::quote(ov)
                )),
                Some(_) => {}
            }
        }
    }
    added
}

fn plan(pod: &PodView<'_>, pds: &[&PodDefault]) -> Result<Plan, Vec<String>> {
    let specs: Vec<(&str, &Spec)> = pds
        .iter()
        .filter_map(|pd| pd.spec.as_ref().ok().map(|s| (pd.name.as_str(), s)))
        .collect();
    let mut errs = Vec::new();

    let keyed = |existing: &'_ [Value],
                 key: &str,
                 schema: &Schema,
                 what: &str,
                 pick: fn(&Spec) -> &[Item],
                 errs: &mut Vec<String>|
     -> Vec<Value> {
        let mut m = KeyedMerge::new(existing, key, schema);
        let mut local = Vec::new();
        for (name, spec) in &specs {
            for it in pick(spec) {
                m.merge(name, it, what, schema, &mut local);
            }
        }
        errs.extend(local);
        m.added
    };

    let volumes = keyed(
        pod.volumes,
        "name",
        &gofmt::VOLUME,
        "volumes",
        |s| &s.volumes,
        &mut errs,
    );
    let tolerations = keyed(
        pod.tolerations,
        "key",
        &gofmt::TOLERATION,
        "tolerations",
        |s| &s.tolerations,
        &mut errs,
    );
    let image_pull_secrets = keyed(
        pod.image_pull_secrets,
        "name",
        &gofmt::LOCAL_OBJECT_REFERENCE,
        "imagePullSecret",
        |s| &s.image_pull_secrets,
        &mut errs,
    );

    let mut containers = Vec::with_capacity(pod.containers.len());
    for c in pod.containers {
        let mut cp = ContainerPlan {
            env: keyed(
                array(c, "env").unwrap_or_default(),
                "name",
                &gofmt::ENV_VAR,
                "env",
                |s| &s.env,
                &mut errs,
            ),
            ..ContainerPlan::default()
        };
        // volumeMounts: by name and by mountPath.
        let existing = array(c, "volumeMounts").unwrap_or_default();
        let mut by_name = KeyedMerge::new(existing, "name", &gofmt::VOLUME_MOUNT);
        let mut by_path: HashMap<&str, (Cow<'_, Value>, &Value)> = existing
            .iter()
            .map(|v| {
                (
                    v.get("mountPath").and_then(Value::as_str).unwrap_or_default(),
                    (Cow::Owned(gofmt::normalize(v, &gofmt::VOLUME_MOUNT)), v),
                )
            })
            .collect();
        for (name, spec) in &specs {
            for it in &spec.volume_mounts {
                by_name.merge(name, it, "volume mounts", &gofmt::VOLUME_MOUNT, &mut errs);
                match by_path.get(it.path.as_str()) {
                    None => {
                        by_path.insert(&it.path, (Cow::Borrowed(&it.norm), &it.raw));
                    }
                    Some((norm, raw)) => {
                        if **norm != it.norm {
                            errs.push(format!(
                                "merging volume mounts for {name} has a conflict on mount path {}: \n{}\ndoes not match\n{}\n in container",
                                it.path,
                                gofmt::sharp_v(&it.raw, &gofmt::VOLUME_MOUNT),
                                gofmt::sharp_v(raw, &gofmt::VOLUME_MOUNT)
                            ));
                        }
                    }
                }
            }
        }
        cp.mounts = by_name.added;
        for (_, spec) in &specs {
            cp.env_from.extend(spec.env_from.iter().cloned());
        }
        if text_of(c, "name") != ISTIO_PROXY {
            let mut has_cmd = !c.get("command").is_none_or(Value::is_null);
            let mut has_args = !c.get("args").is_none_or(Value::is_null);
            for (_, spec) in &specs {
                if !has_cmd && let Some(cmd) = &spec.command {
                    cp.command = Some(cmd.clone());
                    has_cmd = true;
                }
                if !has_args && let Some(args) = &spec.args {
                    cp.args = Some(args.clone());
                    has_args = true;
                }
            }
        }
        containers.push(cp);
    }

    let annotations = merge_map(&pod.annotations, pds, |s| &s.annotations, &mut errs);
    let labels = merge_map(&pod.label_pairs, pds, |s| &s.labels, &mut errs);
    let init_containers = keyed(
        pod.init_containers,
        "name",
        &gofmt::CONTAINER,
        "containers",
        |s| &s.init_containers,
        &mut errs,
    );
    // Sidecars are compared against the pod's containers as submitted (upstream's conflict
    // check); see the crate docs for the one upstream quirk this deliberately does not copy.
    let sidecars = keyed(
        pod.containers,
        "name",
        &gofmt::CONTAINER,
        "containers",
        |s| &s.sidecars,
        &mut errs,
    );

    if !errs.is_empty() {
        return Err(errs);
    }
    let mut service_account_name = None;
    let mut automount = None;
    for (_, spec) in &specs {
        if let Some(b) = spec.automount_service_account_token {
            automount = Some(b);
        }
        if !spec.service_account_name.is_empty() {
            service_account_name = Some(spec.service_account_name.clone());
        }
    }
    Ok(Plan {
        volumes,
        tolerations,
        image_pull_secrets,
        containers,
        annotations,
        labels,
        init_containers,
        sidecars,
        service_account_name,
        automount,
    })
}

/// Runs `f` on the object member `key` of `parent`, creating it (or replacing a non-object).
fn with_obj<R>(parent: &mut Map<String, Value>, key: &str, f: impl FnOnce(&mut Map<String, Value>) -> R) -> R {
    let mut m = match parent.remove(key) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let r = f(&mut m);
    parent.insert(key.to_string(), Value::Object(m));
    r
}

fn extend_array(parent: &mut Map<String, Value>, key: &str, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    let slot = parent
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    if let Value::Array(a) = slot {
        a.extend(items);
    }
}

fn write(pod: &Value, plan: Plan, pds: &[&PodDefault]) -> Value {
    let mut out = pod.clone();
    let Value::Object(root) = &mut out else {
        return pod.clone();
    };
    let Plan {
        volumes,
        tolerations,
        image_pull_secrets,
        containers,
        annotations,
        labels,
        init_containers,
        sidecars,
        service_account_name,
        automount,
    } = plan;
    with_obj(root, "spec", |spec| {
        extend_array(spec, "volumes", volumes);
        extend_array(spec, "tolerations", tolerations);
        extend_array(spec, "imagePullSecrets", image_pull_secrets);
        if let Some(b) = automount {
            spec.insert("automountServiceAccountToken".into(), Value::Bool(b));
        }
        if let Some(sa) = service_account_name {
            spec.insert("serviceAccountName".into(), Value::String(sa));
        }
        if let Some(Value::Array(cs)) = spec.get_mut("containers") {
            for (c, cp) in cs.iter_mut().zip(containers) {
                let Value::Object(c) = c else { continue };
                extend_array(c, "env", cp.env);
                extend_array(c, "volumeMounts", cp.mounts);
                extend_array(c, "envFrom", cp.env_from);
                // An empty list is what Go's omitempty drops: it counts as set but is not written.
                if let Some(cmd) = cp.command.filter(|v| !v.is_empty()) {
                    c.insert("command".into(), Value::Array(cmd));
                }
                if let Some(args) = cp.args.filter(|v| !v.is_empty()) {
                    c.insert("args".into(), Value::Array(args));
                }
            }
        }
        extend_array(spec, "initContainers", init_containers);
        extend_array(spec, "containers", sidecars);
    });
    with_obj(root, "metadata", |meta| {
        if !labels.is_empty() {
            with_obj(meta, "labels", |l| {
                for (k, v) in labels {
                    l.insert(k, Value::String(v));
                }
            });
        }
        with_obj(meta, "annotations", |a| {
            for (k, v) in annotations {
                a.insert(k, Value::String(v));
            }
            for pd in pds {
                a.insert(
                    format!("{ANNOTATION_PREFIX}/poddefault-{}", pd.name),
                    Value::String(pd.resource_version.clone()),
                );
            }
        });
    });
    out
}

/// Applies the PodDefaults of `set` to `pod` (whose namespace is `namespace`, which wins over
/// `metadata.namespace` when non-empty). `Ok(None)` means the pod is left unchanged.
pub fn apply_set(pod: &Value, namespace: &str, set: &PodDefaultSet) -> Result<Option<Value>, PodDefaultError> {
    let v = view(pod).map_err(PodDefaultError::InvalidPod)?;
    let ns = if v.namespace.is_empty() { namespace } else { v.namespace };
    let annotated = |k: &str| v.annotations.iter().find(|(a, _)| a == k).map(|(_, val)| val.as_str());
    if annotated(EXCLUDE_ANNOTATION) == Some("true") || annotated(MIRROR_POD_ANNOTATION).is_some() {
        return Ok(None);
    }
    let all = set.as_slice();
    // Upstream decodes the whole list first, then walks every selector: one bad PodDefault
    // fails every pod of the namespace.
    if let Some(bad) = set.0.first_invalid_spec.and_then(|i| all.get(i))
        && let Err(e) = &bad.spec
    {
        return Err(PodDefaultError::InvalidPodDefault(format!(
            "error fetching poddefaults: {e}"
        )));
    }
    if let Some(bad) = set.0.first_invalid_selector.and_then(|i| all.get(i))
        && let Err(e) = &bad.compiled
    {
        return Err(PodDefaultError::InvalidSelector(format!(
            "label selector conversion failed: {} for selector: {e}",
            selector::go_v(&bad.selector)
        )));
    }
    let mut matching: Vec<&PodDefault> = Vec::new();
    for pd in set.candidates(v.labels).into_iter().filter_map(|i| all.get(i)) {
        let Ok(selector) = &pd.compiled else { continue };
        if !selector.matches_json(v.labels) {
            continue;
        }
        if pd.namespace.as_deref().is_some_and(|pns| pns != ns) {
            continue;
        }
        matching.push(pd);
    }
    if matching.is_empty() {
        return Ok(None);
    }
    match plan(&v, &matching) {
        Ok(p) => Ok(Some(write(pod, p, &matching))),
        Err(errs) => {
            let names: Vec<String> = matching.iter().map(|pd| pd.name.clone()).collect();
            let message = format!(
                "conflict occurred while applying poddefaults: {} on pod: {} err: {}",
                names.join(","),
                v.name,
                gofmt::aggregate(&errs)
            );
            Err(PodDefaultError::Conflict {
                pod_defaults: names,
                message,
            })
        }
    }
}

/// Applies `defaults` (stored PodDefault objects of the pod's namespace, in list order) to `pod`
/// with upstream's semantics and returns the resulting pod (a copy of `pod` when none applies).
///
/// PodDefaults whose `metadata.namespace` differs from the pod's are skipped; a PodDefault without
/// a namespace is taken to be in the pod's namespace.
pub fn apply_poddefaults(pod: &Value, defaults: &[Value]) -> Result<Value, PodDefaultError> {
    let set = PodDefaultSet::from_values(defaults);
    Ok(apply_set(pod, "", &set)?.unwrap_or_else(|| pod.clone()))
}

/// The `/apply-poddefault` mutating webhook.
#[derive(Debug, Clone, Copy, Default)]
pub struct PodDefaultWebhook;

impl Webhook for PodDefaultWebhook {
    fn name(&self) -> &str {
        WEBHOOK_NAME
    }

    fn path(&self) -> &str {
        WEBHOOK_PATH
    }

    fn registration(&self) -> Registration {
        Registration {
            name: WEBHOOK_NAME,
            path: WEBHOOK_PATH,
            kind: WebhookKind::Mutating,
            configuration: "poddefaults-webhook-mutating-webhook-configuration",
            service: "poddefaults-webhook-service",
            rules: vec![Rule::new(&["CREATE"], &[""], &["v1"], &["pods"])],
            admission_review_versions: &["v1beta1", "v1"],
            failure_policy: FailurePolicy::Fail,
            namespace_selector: Some(LabelSelector::from_labels([(
                "app.kubernetes.io/part-of",
                "kubeflow-profile",
            )])),
            object_selector: None,
            match_conditions: Vec::new(),
            reinvocation_policy: None,
        }
    }

    fn context_needs(&self) -> ContextNeeds {
        ContextNeeds {
            pod_defaults: true,
            ..ContextNeeds::none()
        }
    }

    fn admit(&self, req: &AdmissionRequest, ctx: &Context) -> AdmissionOutcome {
        if req.resource != GroupVersionResource::new("", "v1", "pods") {
            return AdmissionOutcome::deny(400, "expect resource to be { v1 pods}");
        }
        let Some(pod) = &req.object else {
            return AdmissionOutcome::deny(400, "cannot decode pod: the request has no object");
        };
        match apply_set(pod, &req.namespace, &ctx.pod_defaults) {
            Ok(None) => AdmissionOutcome::Allow,
            Ok(Some(after)) => AdmissionOutcome::from_mutation(pod, &after),
            Err(PodDefaultError::Conflict { message, .. }) => AdmissionOutcome::deny(403, message),
            Err(e) => AdmissionOutcome::deny(400, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;

    #[test]
    fn label_index_never_hides_a_match() {
        let selectors = [
            json!({}),
            json!({"matchLabels": {"a": "1"}}),
            json!({"matchLabels": {"a": "1", "b": "2"}}),
            json!({"matchExpressions": [{"key": "b", "operator": "In", "values": ["2", "3"]}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}),
            json!({"matchExpressions": [{"key": "c", "operator": "Exists"}]}),
            json!({"matchExpressions": [{"key": "c", "operator": "DoesNotExist"}]}),
        ];
        let pds: Vec<Value> = selectors
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"metadata": {"name": format!("pd{i}")}, "spec": {"selector": s}}))
            .collect();
        let set = PodDefaultSet::from_values(&pds);
        let label_sets = [
            json!({}),
            json!({"a": "1"}),
            json!({"a": "2", "b": "2"}),
            json!({"b": "3", "c": ""}),
            json!({"a": "1", "b": "2", "c": "x"}),
        ];
        for labels in &label_sets {
            let labels = labels.as_object();
            let candidates = set.candidates(labels);
            for (i, pd) in set.as_slice().iter().enumerate() {
                let matches = pd.compiled.as_ref().unwrap().matches_json(labels);
                assert!(!matches || candidates.contains(&i), "{} hidden for {labels:?}", pd.name);
            }
            assert!(candidates.windows(2).all(|w| w[0] < w[1]), "list order kept");
        }
    }
}
