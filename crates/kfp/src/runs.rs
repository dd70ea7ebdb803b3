//! Runs (v1beta1 and v2beta1): create, get, list, delete, archive, unarchive, terminate,
//! retry, reportMetrics; the pipeline source of runs and jobs (a pipeline version, a pipeline's
//! default version, or an inline manifest) and its stored copy.
//!
//! Invariants: a run's namespace is its experiment's (a NAMESPACE reference that disagrees is
//! InvalidArgument); every operation is authorized on `runs` in the run's stored namespace;
//! running a stored pipeline also needs `get` on that pipeline, and its package is
//! integrity-checked when copied; the copied spec is stored with its SHA-256 and checked on
//! every read; kfsec records runs (state PENDING) — engines report progress.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::access::{self, res};
use crate::error::{KfpError, KfpResult};
use crate::experiments::{self, Experiment, checked_namespace};
use crate::json::{self, Out};
use crate::list::{FieldValue, ListRequest, Listable};
use crate::package::{self, Spec};
use crate::routes::Req;
use crate::storage::{self, Kind, Stored};
use crate::{Kfp, pipelines, refs};

pub use crate::storage::{RUNTIME, SPECS};

/// What a run or job executes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Source {
    /// The pipeline, if it came from one.
    #[serde(default)]
    pub pipeline_id: String,
    /// The pipeline's name.
    #[serde(default)]
    pub pipeline_name: String,
    /// The pipeline version, if it came from one.
    #[serde(default)]
    pub pipeline_version_id: String,
    /// v1 parameters.
    #[serde(default)]
    pub parameters: Vec<(String, String)>,
    /// v2 runtime config (`{parameters, pipeline_root}`).
    #[serde(default)]
    pub runtime_config: Option<Value>,
    /// SHA-256 of the stored spec copy.
    #[serde(default)]
    pub spec_sha256: String,
    /// The spec is a KFP v2 pipeline spec (else an Argo Workflow).
    #[serde(default)]
    pub spec_v2: bool,
}

impl Source {
    /// Parses the source of a v1 (`pipeline_spec` + references) or v2 body, resolving stored
    /// pipelines (authorized `get`, integrity-checked). Returns the spec to store.
    pub async fn from_body(k: &Kfp, r: &Req, b: &Value, refs: &[refs::Ref]) -> KfpResult<(Self, Spec)> {
        let mut src = Self::default();
        let mut version_id = String::new();
        let mut pipeline_id = String::new();
        let mut inline: Option<Spec> = None;
        if r.v2 {
            if let Some(vr) = json::field(b, "pipeline_version_reference") {
                pipeline_id = json::string(vr, "pipeline_id")?;
                version_id = json::string(vr, "pipeline_version_id")?;
            }
            if version_id.is_empty() {
                version_id = json::string(b, "pipeline_version_id")?;
            }
            if let Some(s) = json::field(b, "pipeline_spec") {
                inline = Some(package::spec_from_json(s.clone())?);
            }
            if let Some(rc) = json::field(b, "runtime_config") {
                src.runtime_config = Some(runtime_config(rc)?);
            }
        } else {
            let ps = json::field(b, "pipeline_spec").cloned().unwrap_or(Value::Null);
            pipeline_id = json::string(&ps, "pipeline_id")?;
            version_id = refs::find(refs, "PIPELINE_VERSION").unwrap_or_default().to_owned();
            if pipeline_id.is_empty() {
                pipeline_id = refs::find(refs, "PIPELINE").unwrap_or_default().to_owned();
            }
            for key in ["workflow_manifest", "pipeline_manifest"] {
                let text = json::string(&ps, key)?;
                if inline.is_none() && !text.is_empty() {
                    // YAML: parsed on the bounded blocking pool.
                    inline = Some(k.offload(move || package::parse_spec(text.as_bytes())).await?);
                }
            }
            if let Some(list) = json::field(&ps, "parameters") {
                let list = list
                    .as_array()
                    .ok_or_else(|| KfpError::InvalidInput("parameters must be a list".into()))?;
                for p in list {
                    src.parameters
                        .push((json::string(p, "name")?, json::string(p, "value")?));
                }
            }
            if let Some(rc) = json::field(&ps, "runtime_config") {
                src.runtime_config = Some(runtime_config(rc)?);
            }
        }
        let spec = if let Some(spec) = inline.filter(|_| version_id.is_empty() && pipeline_id.is_empty()) {
            spec
        } else if !version_id.is_empty() {
            let (p, v) = pipelines::load_version_authorized(k, r, &version_id, "get").await?;
            if !pipeline_id.is_empty() && pipeline_id != p.id {
                return Err(KfpError::InvalidInput(format!(
                    "Pipeline version {version_id} does not belong to pipeline {pipeline_id}"
                )));
            }
            src.pipeline_id = p.id.clone();
            src.pipeline_name = p.name.clone();
            src.pipeline_version_id = v.id.clone();
            pipelines::spec_of(k, &v).await?
        } else if !pipeline_id.is_empty() {
            let p = pipelines::load(k, &pipeline_id).await?;
            let (p, v) = pipelines::load_version_authorized(k, r, p.default_version(), "get")
                .await
                .map_err(|e| e.wrap(format!("Failed to fetch the default version of pipeline {}", p.id)))?;
            src.pipeline_id = p.id.clone();
            src.pipeline_name = p.name.clone();
            src.pipeline_version_id = v.id.clone();
            pipelines::spec_of(k, &v).await?
        } else {
            return Err(KfpError::InvalidInput(
                "Failed to create a run due to missing pipeline spec: give a pipeline version, a pipeline id or a pipeline manifest".into(),
            ));
        };
        src.spec_v2 = spec.v2;
        if src.parameters.is_empty() && src.runtime_config.is_none() {
            src.parameters = spec.parameters();
        }
        Ok((src, spec))
    }

    /// Stores the spec copy for object `id`.
    pub async fn store_spec(&mut self, k: &Kfp, id: &str, spec: &Spec) -> KfpResult<()> {
        let bytes = serde_json::to_vec(&spec.json).map_err(|e| KfpError::Internal(e.to_string()))?;
        self.spec_sha256 = k.db.put_blob(SPECS, id, bytes).await?;
        Ok(())
    }

    /// The stored spec copy of object `id`, integrity-checked.
    pub async fn load_spec(&self, k: &Kfp, id: &str) -> KfpResult<Value> {
        let bytes = k.db.get_blob(SPECS, id, &self.spec_sha256).await?;
        serde_json::from_slice(&bytes).map_err(|_| KfpError::DataLoss(format!("The stored spec of {id} is corrupt")))
    }

    /// v1 `pipeline_spec` (with manifests when `spec` is given).
    pub fn v1(&self, spec: Option<&Value>) -> Value {
        let mut o = Out::new()
            .s("pipeline_id", &self.pipeline_id)
            .s("pipeline_name", &self.pipeline_name);
        if let Some(s) = spec {
            let text = s.to_string();
            o = if self.spec_v2 {
                o.s("pipeline_manifest", &text)
            } else {
                o.s("workflow_manifest", &text)
            };
        }
        o.v(
            "parameters",
            Value::Array(
                self.parameters
                    .iter()
                    .map(|(n, v)| Out::new().s("name", n).s("value", v).build())
                    .collect(),
            ),
        )
        .v("runtime_config", self.runtime_config.clone().unwrap_or(Value::Null))
        .build()
    }

    /// Adds the v2 source fields to `o`.
    pub fn v2(&self, o: Out, spec: Option<&Value>) -> Out {
        if !self.pipeline_version_id.is_empty() {
            o.v(
                "pipeline_version_reference",
                Out::new()
                    .s("pipeline_id", &self.pipeline_id)
                    .s("pipeline_version_id", &self.pipeline_version_id)
                    .build(),
            )
        } else {
            o.v("pipeline_spec", spec.cloned().unwrap_or(Value::Null))
        }
        .v("runtime_config", self.runtime_config.clone().unwrap_or(Value::Null))
    }
}

fn runtime_config(rc: &Value) -> KfpResult<Value> {
    if !rc.is_object() {
        return Err(KfpError::InvalidInput("runtime_config must be an object".into()));
    }
    let params = match json::field(rc, "parameters") {
        None => Value::Null,
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(KfpError::InvalidInput(
                "runtime_config.parameters must be an object".into(),
            ));
        }
    };
    Ok(Out::new()
        .v("parameters", params)
        .s("pipeline_root", &json::string(rc, "pipeline_root")?)
        .build())
}

/// A stored run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Namespace (the experiment's).
    pub namespace: String,
    /// Experiment.
    pub experiment_id: String,
    /// Creation time (ms).
    pub created_ms: i64,
    /// Scheduled time (ms).
    #[serde(default)]
    pub scheduled_ms: i64,
    /// Finish time (ms), 0 while unfinished.
    #[serde(default)]
    pub finished_ms: i64,
    /// v2 runtime state (`PENDING`, `RUNNING`, `SUCCEEDED`, …).
    pub state: String,
    /// Archived.
    #[serde(default)]
    pub archived: bool,
    /// Service account.
    #[serde(default)]
    pub service_account: String,
    /// What it runs.
    #[serde(default)]
    pub source: Source,
    /// The job that created it.
    #[serde(default)]
    pub recurring_run_id: String,
    /// State changes `(ms, state)`.
    #[serde(default)]
    pub history: Vec<(i64, String)>,
    /// v1 metrics as reported.
    #[serde(default)]
    pub metrics: Vec<Value>,
    /// SHA-256 of the last reported workflow, if any.
    #[serde(default)]
    pub runtime_sha256: String,
}

impl Stored for Run {
    const KIND: Kind = Kind::Run;
    fn id(&self) -> &str {
        &self.id
    }
    fn scope(&self) -> &str {
        &self.namespace
    }
}

/// v2 state → v1 status (KFP's `RuntimeState.ToV1`).
pub fn v1_status(state: &str) -> &'static str {
    match state {
        "PENDING" | "PAUSED" => "Pending",
        "RUNNING" => "Running",
        "SUCCEEDED" => "Succeeded",
        "SKIPPED" => "Skipped",
        "FAILED" | "CANCELED" => "Failed",
        "CANCELING" => "Terminating",
        _ => "Unknown",
    }
}

/// Whether a state is final.
pub fn is_final(state: &str) -> bool {
    matches!(state, "SUCCEEDED" | "FAILED" | "CANCELED" | "SKIPPED")
}

const RUN_FIELDS: &[&str] = &[
    "id",
    "run_id",
    "name",
    "display_name",
    "description",
    "created_at",
    "scheduled_at",
    "finished_at",
    "storage_state",
    "status",
    "state",
    "experiment_id",
    "namespace",
    "pipeline_version_id",
    "recurring_run_id",
];

impl Listable for Run {
    fn list_id(&self) -> &str {
        &self.id
    }
    fn value(&self, key: &str) -> Option<FieldValue> {
        Some(match key {
            "id" | "run_id" => FieldValue::Str(self.id.clone()),
            "name" | "display_name" => FieldValue::Str(self.name.clone()),
            "description" => FieldValue::Str(self.description.clone()),
            "created_at" => FieldValue::Int(self.created_ms / 1000),
            "scheduled_at" => FieldValue::Int(self.scheduled_ms / 1000),
            "finished_at" => FieldValue::Int(self.finished_ms / 1000),
            "storage_state" => FieldValue::Str(if self.archived { "ARCHIVED" } else { "AVAILABLE" }.into()),
            "status" => FieldValue::Str(v1_status(&self.state).into()),
            "state" => FieldValue::Str(self.state.clone()),
            "experiment_id" => FieldValue::Str(self.experiment_id.clone()),
            "namespace" => FieldValue::Str(self.namespace.clone()),
            "pipeline_version_id" => FieldValue::Str(self.source.pipeline_version_id.clone()),
            "recurring_run_id" => FieldValue::Str(self.recurring_run_id.clone()),
            _ => return None,
        })
    }
    fn knows(key: &str) -> bool {
        RUN_FIELDS.contains(&key)
    }
}

impl Run {
    /// v1beta1 JSON (`spec` given on get).
    pub fn v1(&self, spec: Option<&Value>) -> Value {
        let mut rr = vec![
            refs::render("EXPERIMENT", &self.experiment_id, "", "OWNER"),
            refs::render("NAMESPACE", &self.namespace, "", "OWNER"),
        ];
        if !self.recurring_run_id.is_empty() {
            rr.push(refs::render("JOB", &self.recurring_run_id, "", "CREATOR"));
        } else if !self.source.pipeline_version_id.is_empty() {
            rr.push(refs::render(
                "PIPELINE_VERSION",
                &self.source.pipeline_version_id,
                "",
                "CREATOR",
            ));
        }
        Out::new()
            .s("id", &self.id)
            .s("name", &self.name)
            .s(
                "storage_state",
                if self.archived { "STORAGESTATE_ARCHIVED" } else { "" },
            )
            .s("description", &self.description)
            .v("pipeline_spec", self.source.v1(spec))
            .v("resource_references", Value::Array(rr))
            .s("service_account", &self.service_account)
            .ts("created_at", self.created_ms / 1000)
            .ts("scheduled_at", self.scheduled_ms / 1000)
            .ts("finished_at", self.finished_ms / 1000)
            .s("status", v1_status(&self.state))
            .v("metrics", Value::Array(self.metrics.clone()))
            .build()
    }

    /// v2beta1 JSON (`spec` given on get).
    pub fn v2(&self, spec: Option<&Value>) -> Value {
        let o = Out::new()
            .s("experiment_id", &self.experiment_id)
            .s("run_id", &self.id)
            .s("display_name", &self.name)
            .s("storage_state", if self.archived { "ARCHIVED" } else { "AVAILABLE" })
            .s("description", &self.description);
        self.source
            .v2(o, spec)
            .s("service_account", &self.service_account)
            .ts("created_at", self.created_ms / 1000)
            .ts("scheduled_at", self.scheduled_ms / 1000)
            .ts("finished_at", self.finished_ms / 1000)
            .s("state", &self.state)
            .s("recurring_run_id", &self.recurring_run_id)
            .v(
                "state_history",
                Value::Array(
                    self.history
                        .iter()
                        .map(|(t, s)| Out::new().ts("update_time", t / 1000).s("state", s).build())
                        .collect(),
                ),
            )
            .build()
    }
}

fn not_found(id: &str) -> KfpError {
    KfpError::NotFound(format!("Run {id} not found"))
}

fn empty_namespace() -> KfpError {
    KfpError::InvalidInput("A run cannot have an empty namespace in multi-user mode".into())
}

/// KFP's `canAccessRun` with an id.
pub(crate) async fn load_authorized(k: &Kfp, r: &Req, id: &str, verb: &str) -> KfpResult<Run> {
    access::load_namespaced(k, &r.who, id, verb).await
}

impl access::Guarded for Run {
    const WHAT: &'static str = "run";
    const RESOURCE: &'static str = res::RUNS;
    fn name(&self) -> &str {
        &self.name
    }
    fn missing(id: &str) -> KfpError {
        not_found(id)
    }
}

fn label(v2: bool) -> &'static str {
    if v2 { "run" } else { "v1beta1 run" }
}

fn empty() -> Value {
    Value::Object(Map::new())
}

/// Resolves the experiment and namespace of a new run or job: the experiment is required, and
/// a NAMESPACE reference must agree with it.
pub async fn experiment_for(k: &Kfp, experiment_id: &str, namespace: &str) -> KfpResult<Experiment> {
    if experiment_id.is_empty() {
        return Err(KfpError::InvalidInput(
            "Experiment id can not be empty in multi-user mode".into(),
        ));
    }
    let exp = experiments::load(k, experiment_id)
        .await
        .map_err(|e| e.wrap(format!("Failed to fetch namespace for experiment {experiment_id}")))?;
    if !namespace.is_empty() && namespace != exp.namespace {
        return Err(KfpError::InvalidInput(format!(
            "Experiment {experiment_id} belongs to namespace '{}' instead of '{namespace}'",
            exp.namespace
        )));
    }
    Ok(exp)
}

/// `POST runs`.
pub async fn create(k: &Kfp, r: &Req) -> KfpResult<Value> {
    let outer = format!("Failed to create a new {}", label(r.v2));
    let inner = async {
        let b = r.json()?;
        let refs = if r.v2 { Vec::new() } else { refs::parse(&b)? };
        let name = json::string(&b, if r.v2 { "display_name" } else { "name" })?;
        if name.is_empty() {
            return Err(
                KfpError::InvalidInput("The run name is empty. Please specify a valid name".into())
                    .wrap("Failed to create a run due to invalid name"),
            );
        }
        let (exp_id, ns) = if r.v2 {
            (json::string(&b, "experiment_id")?, String::new())
        } else {
            (
                refs::find(&refs, "EXPERIMENT").unwrap_or_default().to_owned(),
                refs::find(&refs, "NAMESPACE").unwrap_or_default().to_owned(),
            )
        };
        let exp = experiment_for(k, &exp_id, &ns)
            .await
            .map_err(|e| e.wrap("Failed to create a run due to invalid experimentId and namespace combination"))?;
        access::check(k.authz.as_ref(), &r.who, "create", res::RUNS, &exp.namespace, "").map_err(|e| {
            e.wrap(format!("Failed to access run . Check if you have access to namespace {}", exp.namespace))
                .wrap(format!(
                    "Failed to create a run due to authorization error. Check if you have write permissions to namespace {}",
                    exp.namespace
                ))
        })?;
        let (mut source, spec) = Source::from_body(k, r, &b, &refs).await?;
        let now = k.now_ms();
        let id = k.new_id();
        source.store_spec(k, &id, &spec).await?;
        let run = Run {
            id,
            name,
            description: json::string(&b, "description")?,
            namespace: exp.namespace.clone(),
            experiment_id: exp.id.clone(),
            created_ms: now,
            scheduled_ms: now,
            finished_ms: 0,
            state: "PENDING".into(),
            archived: false,
            service_account: json::string(&b, "service_account")?,
            source,
            recurring_run_id: String::new(),
            history: vec![(now, "PENDING".into())],
            metrics: Vec::new(),
            runtime_sha256: String::new(),
        };
        if let Err(e) = k.db.insert(&run, "run").await {
            let _ = k.db.delete_blob(SPECS, &run.id).await;
            return Err(e);
        }
        experiments::touch_last_run(k, &exp.id, now).await?;
        kfsec_api::audit::identified(Some(&run.name), Some(&run.id));
        tracing::info!(target: "audit", user = %r.who.user, id = %run.id, namespace = %run.namespace, "kfp run created");
        let spec_json = spec.json;
        Ok(if r.v2 {
            run.v2(Some(&spec_json))
        } else {
            Out::new()
                .v("run", run.v1(Some(&spec_json)))
                .msg("pipeline_runtime", empty())
                .build()
        })
    };
    inner.await.map_err(|e: KfpError| e.wrap(outer))
}

/// `GET runs/{id}`: v1 `{run, pipeline_runtime{workflow_manifest}}`, v2 the run.
pub async fn get(k: &Kfp, r: &Req, id: &str) -> KfpResult<Value> {
    let outer = format!("Failed to get a {}", label(r.v2));
    let run = load_authorized(k, r, id, "get")
        .await
        .map_err(|e| e.wrap(outer.clone()))?;
    let spec = run.source.load_spec(k, &run.id).await?;
    if r.v2 {
        return Ok(run.v2(Some(&spec)));
    }
    let runtime = if run.runtime_sha256.is_empty() {
        String::new()
    } else {
        let bytes = k.db.get_blob(RUNTIME, &run.id, &run.runtime_sha256).await?;
        String::from_utf8(bytes).map_err(|_| KfpError::DataLoss("The stored workflow is not text".into()))?
    };
    Ok(Out::new()
        .v("run", run.v1(Some(&spec)))
        .msg("pipeline_runtime", Out::new().s("workflow_manifest", &runtime).build())
        .build())
}

/// `GET runs` (v1: `resource_reference_key` NAMESPACE or EXPERIMENT; v2: `namespace` or
/// `experiment_id`).
pub async fn list(k: &Kfp, r: &Req) -> KfpResult<Value> {
    let outer = if r.v2 {
        "Failed to list runs"
    } else {
        "Failed to list v1beta1 runs"
    };
    let (mut namespace, experiment_id) = if r.v2 {
        (r.q("namespace"), r.q("experiment_id"))
    } else {
        match refs::query_key(&r.query, "resource_reference_key").map_err(|e| e.wrap(outer))? {
            None => (String::new(), String::new()),
            Some((t, id)) if t == "NAMESPACE" => (id, String::new()),
            Some((t, id)) if t == "EXPERIMENT" => (String::new(), id),
            Some((t, _)) => {
                return Err(KfpError::InvalidInput(format!("Invalid resource reference key type {t}")).wrap(outer));
            }
        }
    };
    let lr = ListRequest::from_query(&r.query).map_err(|e| e.wrap("Failed to create list options"))?;
    if !experiment_id.is_empty() {
        let exp = experiments::load(k, &experiment_id).await.map_err(|e| {
            e.wrap(format!(
                "Failed to list runs due to error fetching namespace for experiment {experiment_id}. Try filtering based on namespace"
            ))
            .wrap(outer)
        })?;
        namespace = exp.namespace;
    }
    let authz_ctx = format!(
        "Failed to list runs due to authorization error. Check if you have permission to access namespace {namespace}"
    );
    checked_namespace(&namespace, empty_namespace).map_err(|e| e.wrap(authz_ctx.clone()).wrap(outer))?;
    access::check(k.authz.as_ref(), &r.who, "list", res::RUNS, &namespace, "").map_err(|e| {
        e.wrap(format!(
            "Failed to access run . Check if you have access to namespace {namespace}"
        ))
        .wrap(authz_ctx)
        .wrap(outer)
    })?;
    let mut all: Vec<Run> = k.db.list(&storage::scope_prefix(Kind::Run, &namespace)).await?;
    if !experiment_id.is_empty() {
        all.retain(|x| x.experiment_id == experiment_id);
    }
    let page = k
        .pager
        .page(all, &lr, &format!("runs/{namespace}/{experiment_id}"))
        .map_err(|e| e.wrap("Failed to create list options"))?;
    let items = page
        .items
        .iter()
        .map(|x| if r.v2 { x.v2(None) } else { x.v1(None) })
        .collect();
    Ok(json::list_response("runs", items, page.total, &page.next))
}

/// `DELETE runs/{id}`.
pub async fn delete(k: &Kfp, r: &Req, id: &str) -> KfpResult<Value> {
    let run = load_authorized(k, r, id, "delete")
        .await
        .map_err(|e| e.wrap(format!("Failed to delete a {}", label(r.v2))))?;
    k.db.remove(&run).await?;
    k.db.delete_blob(SPECS, &run.id).await?;
    k.db.delete_blob(RUNTIME, &run.id).await?;
    tracing::info!(target: "audit", user = %r.who.user, id = %run.id, namespace = %run.namespace, "kfp run deleted");
    Ok(empty())
}

/// `POST runs/{id}:archive` / `:unarchive`.
pub async fn set_archived(k: &Kfp, r: &Req, id: &str, archived: bool) -> KfpResult<Value> {
    let verb = if archived { "archive" } else { "unarchive" };
    load_authorized(k, r, id, verb)
        .await
        .map_err(|e| e.wrap(format!("Failed to {verb} a {}", label(r.v2))))?;
    k.db.modify::<Run>(
        id,
        || not_found(id),
        |x| {
            x.archived = archived;
            Ok(())
        },
    )
    .await?;
    Ok(empty())
}

fn set_state(x: &mut Run, state: &str, at_ms: i64) {
    if x.state != state {
        x.state = state.to_owned();
        x.history.push((at_ms, state.to_owned()));
    }
}

/// `POST runs/{id}/terminate` (v1) / `runs/{id}:terminate` (v2): the run becomes CANCELING.
pub async fn terminate(k: &Kfp, r: &Req, id: &str) -> KfpResult<Value> {
    let outer = format!("Failed to terminate a {}", label(r.v2));
    load_authorized(k, r, id, "terminate")
        .await
        .map_err(|e| e.wrap(outer.clone()))?;
    let now = k.now_ms();
    k.db.modify::<Run>(
        id,
        || not_found(id),
        |x| {
            if is_final(&x.state) {
                return Err(KfpError::FailedPrecondition(format!(
                    "Failed to terminate run {id}: it has already finished ({})",
                    x.state
                )));
            }
            set_state(x, "CANCELING", now);
            Ok(())
        },
    )
    .await
    .map_err(|e| e.wrap(outer))?;
    tracing::info!(target: "audit", user = %r.who.user, id, "kfp run terminated");
    Ok(empty())
}

/// `POST runs/{id}/retry` (v1) / `runs/{id}:retry` (v2): a failed or canceled run goes back to
/// PENDING for the engine to pick up.
pub async fn retry(k: &Kfp, r: &Req, id: &str) -> KfpResult<Value> {
    load_authorized(k, r, id, "retry")
        .await
        .map_err(|e| e.wrap("Failed to retry a run"))?;
    let now = k.now_ms();
    k.db.modify::<Run>(
        id,
        || not_found(id),
        |x| {
            if !matches!(x.state.as_str(), "FAILED" | "CANCELED" | "CANCELING") {
                return Err(KfpError::FailedPrecondition(format!(
                    "Failed to retry run {id} as it does not allow retries: it is {}",
                    x.state
                )));
            }
            x.finished_ms = 0;
            set_state(x, "PENDING", now);
            Ok(())
        },
    )
    .await
    .map_err(|e| e.wrap("Failed to retry a run"))?;
    Ok(empty())
}

/// The most metrics a run keeps (KFP's UI shows a handful per node; a run is loaded whole by
/// every listing of its namespace, so what one caller may append is bounded).
const MAX_RUN_METRICS: usize = 1_000;

/// The longest `node_id` a metric may name (KFP's column for it holds 255).
const MAX_NODE_ID: usize = 255;
/// The formats a metric may have (KFP's `RunMetric.Format`; empty: unspecified).
const METRIC_FORMATS: [&str; 4] = ["", "UNSPECIFIED", "RAW", "PERCENTAGE"];

/// Whether `name` is a metric name KFP accepts: `^[a-z]([-a-z0-9]{0,62}[a-z0-9])?$`.
fn valid_metric_name(name: &str) -> bool {
    let b = name.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter().all(inner)
        && b.last().is_some_and(|c| *c != b'-')
}

/// `POST runs/{id}:reportMetrics` (v1), as KFP answers it: one result per metric — `OK`,
/// `INVALID_ARGUMENT` (a name KFP refuses, no or an over-long `node_id`, another format, or the run full at
/// [`MAX_RUN_METRICS`]) or `DUPLICATE_REPORTING` (that node already reported that name: a
/// metric is reported once and never replaced).
pub async fn report_metrics(k: &Kfp, r: &Req, id: &str) -> KfpResult<Value> {
    load_authorized(k, r, id, "reportMetrics").await?;
    let b = r.json()?;
    let metrics = match json::field(&b, "metrics") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(KfpError::InvalidInput("metrics must be a list".into())),
    };
    let mut asked = Vec::with_capacity(metrics.len());
    for m in &metrics {
        let name = json::string(m, "name")?;
        let node = json::string(m, "node_id")?;
        let value = json::field(m, "number_value").and_then(Value::as_f64).unwrap_or(0.0);
        let format = json::string(m, "format").unwrap_or_default();
        let metric = Out::new()
            .s("name", &name)
            .s("node_id", &node)
            .v(
                "number_value",
                serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number),
            )
            .s("format", &format)
            .build();
        asked.push((name, node, metric));
    }
    let key = |m: &Value| (json::field(m, "node_id").cloned(), json::field(m, "name").cloned());
    let mut results = Vec::new();
    k.db.modify::<Run>(
        id,
        || not_found(id),
        |x| {
            results.clear();
            let mut seen: std::collections::HashSet<_> = x.metrics.iter().map(key).collect();
            for (name, node, metric) in &asked {
                let (status, message) = if !valid_metric_name(name) {
                    (
                        "INVALID_ARGUMENT",
                        "metric name must match ^[a-z]([-a-z0-9]{0,62}[a-z0-9])?$",
                    )
                } else if node.is_empty() || node.len() > MAX_NODE_ID {
                    ("INVALID_ARGUMENT", "metric node_id must be 1 to 255 bytes")
                } else if !METRIC_FORMATS.contains(
                    &json::field(metric, "format")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                ) {
                    (
                        "INVALID_ARGUMENT",
                        "metric format must be UNSPECIFIED, RAW or PERCENTAGE",
                    )
                } else if !seen.insert(key(metric)) {
                    (
                        "DUPLICATE_REPORTING",
                        "this node already reported a metric of this name",
                    )
                } else if x.metrics.len() >= MAX_RUN_METRICS {
                    ("INVALID_ARGUMENT", "the run holds the most metrics kfsec keeps (1000)")
                } else {
                    x.metrics.push(metric.clone());
                    ("OK", "")
                };
                let mut result = Out::new()
                    .s("metric_name", name)
                    .s("metric_node_id", node)
                    .s("status", status);
                if !message.is_empty() {
                    result = result.s("message", message);
                }
                results.push(result.build());
            }
            Ok(())
        },
    )
    .await?;
    Ok(Out::new().v("results", Value::Array(results)).build())
}

/// Archives every run of `exp` (KFP archives an experiment's runs with it).
pub async fn archive_in_experiment(k: &Kfp, exp: &Experiment) -> KfpResult<()> {
    let all: Vec<Run> = k.db.list(&storage::scope_prefix(Kind::Run, &exp.namespace)).await?;
    for run in all.iter().filter(|x| x.experiment_id == exp.id && !x.archived) {
        k.db.modify::<Run>(
            &run.id,
            || not_found(&run.id),
            |x| {
                x.archived = true;
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

/// Applies a reported state to run `id` (the persistence agent's report).
pub async fn apply_report(
    k: &Kfp,
    id: &str,
    namespace: &str,
    state: &str,
    finished_ms: i64,
    workflow: &[u8],
) -> KfpResult<()> {
    let Some((run, _)) = k.db.load::<Run>(id).await? else {
        return Err(not_found(id));
    };
    if run.namespace != namespace {
        return Err(KfpError::InvalidInput(format!(
            "The workflow's namespace {namespace} is not the namespace of run {id}"
        )));
    }
    let sha = k.db.put_blob(RUNTIME, id, workflow.to_vec()).await?;
    let now = k.now_ms();
    k.db.modify::<Run>(
        id,
        || not_found(id),
        |x| {
            set_state(x, state, now);
            if is_final(state) {
                x.finished_ms = if finished_ms > 0 { finished_ms } else { now };
            }
            x.runtime_sha256 = sha.clone();
            Ok(())
        },
    )
    .await?;
    Ok(())
}
