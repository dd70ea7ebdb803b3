//! Jobs (v1beta1) and recurring runs (v2beta1): create, get, list, delete, enable, disable.
//!
//! Invariants: a job's namespace is its experiment's; every operation is authorized on `jobs`
//! in the job's stored namespace (verbs `create`, `get`, `list`, `delete`, `enable`,
//! `disable`); its pipeline source follows the same rules as a run's (authorized,
//! integrity-checked copy); kfsec records schedules — a scheduler engine executes them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::access::{self, res};
use crate::error::{KfpError, KfpResult};
use crate::experiments::{self, Experiment, checked_namespace};
use crate::json::{self, Out};
use crate::list::{FieldValue, ListRequest, Listable};
use crate::routes::Req;
use crate::runs::{self, SPECS, Source};
use crate::storage::{self, Kind, Stored};
use crate::{Kfp, refs};

/// A stored job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
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
    /// Last update (ms).
    pub updated_ms: i64,
    /// Enabled.
    pub enabled: bool,
    /// Max concurrent runs (1–10).
    pub max_concurrency: i64,
    /// Skip missed runs.
    #[serde(default)]
    pub no_catchup: bool,
    /// `{cron_schedule|periodic_schedule}`, normalized to snake_case.
    pub trigger: Value,
    /// Service account.
    #[serde(default)]
    pub service_account: String,
    /// What it runs.
    #[serde(default)]
    pub source: Source,
    /// Last reported scheduler status (v1 `status`).
    #[serde(default)]
    pub status: String,
}

impl Stored for Job {
    const KIND: Kind = Kind::Job;
    fn id(&self) -> &str {
        &self.id
    }
    fn scope(&self) -> &str {
        &self.namespace
    }
}

const FIELDS: &[&str] = &[
    "id",
    "recurring_run_id",
    "name",
    "display_name",
    "description",
    "created_at",
    "updated_at",
    "enabled",
    "mode",
    "status",
    "experiment_id",
    "namespace",
];

impl Listable for Job {
    fn list_id(&self) -> &str {
        &self.id
    }
    fn value(&self, key: &str) -> Option<FieldValue> {
        Some(match key {
            "id" | "recurring_run_id" => FieldValue::Str(self.id.clone()),
            "name" | "display_name" => FieldValue::Str(self.name.clone()),
            "description" => FieldValue::Str(self.description.clone()),
            "created_at" => FieldValue::Int(self.created_ms / 1000),
            "updated_at" => FieldValue::Int(self.updated_ms / 1000),
            "enabled" => FieldValue::Int(i64::from(self.enabled)),
            "mode" => FieldValue::Str(if self.enabled { "ENABLE" } else { "DISABLE" }.into()),
            "status" => FieldValue::Str(if self.enabled { "ENABLED" } else { "DISABLED" }.into()),
            "experiment_id" => FieldValue::Str(self.experiment_id.clone()),
            "namespace" => FieldValue::Str(self.namespace.clone()),
            _ => return None,
        })
    }
    fn knows(key: &str) -> bool {
        FIELDS.contains(&key)
    }
}

impl Job {
    fn v1(&self, spec: Option<&Value>) -> Value {
        let mut rr = vec![
            refs::render("EXPERIMENT", &self.experiment_id, "", "OWNER"),
            refs::render("NAMESPACE", &self.namespace, "", "OWNER"),
        ];
        if !self.source.pipeline_version_id.is_empty() {
            rr.push(refs::render(
                "PIPELINE_VERSION",
                &self.source.pipeline_version_id,
                "",
                "CREATOR",
            ));
        }
        let status = if self.status.is_empty() {
            if self.enabled { "Enabled" } else { "Disabled" }
        } else {
            &self.status
        };
        Out::new()
            .s("id", &self.id)
            .s("name", &self.name)
            .s("description", &self.description)
            .v("pipeline_spec", self.source.v1(spec))
            .v("resource_references", Value::Array(rr))
            .s("service_account", &self.service_account)
            .i64s("max_concurrency", self.max_concurrency)
            .v("trigger", self.trigger.clone())
            .s("mode", if self.enabled { "ENABLED" } else { "DISABLED" })
            .ts("created_at", self.created_ms / 1000)
            .ts("updated_at", self.updated_ms / 1000)
            .s("status", status)
            .b("enabled", self.enabled)
            .b("no_catchup", self.no_catchup)
            .build()
    }

    fn v2(&self, spec: Option<&Value>) -> Value {
        let o = Out::new()
            .s("recurring_run_id", &self.id)
            .s("display_name", &self.name)
            .s("description", &self.description);
        self.source
            .v2(o, spec)
            .s("service_account", &self.service_account)
            .i64s("max_concurrency", self.max_concurrency)
            .v("trigger", self.trigger.clone())
            .s("mode", if self.enabled { "ENABLE" } else { "DISABLE" })
            .ts("created_at", self.created_ms / 1000)
            .ts("updated_at", self.updated_ms / 1000)
            .s("status", if self.enabled { "ENABLED" } else { "DISABLED" })
            .b("no_catchup", self.no_catchup)
            .s("namespace", &self.namespace)
            .s("experiment_id", &self.experiment_id)
            .build()
    }

    fn render(&self, v2: bool, spec: Option<&Value>) -> Value {
        if v2 { self.v2(spec) } else { self.v1(spec) }
    }
}

fn not_found(id: &str) -> KfpError {
    KfpError::NotFound(format!("Job {id} not found"))
}

fn time_field(v: &Value, key: &str) -> KfpResult<Option<String>> {
    match json::field(v, key) {
        None => Ok(None),
        Some(Value::String(s)) if kfsec_types::time::parse_rfc3339(s).is_some() => Ok(Some(s.clone())),
        Some(_) => Err(KfpError::InvalidInput(format!("{key} must be an RFC 3339 time"))),
    }
}

/// Validates and normalizes a trigger.
fn trigger(t: Option<&Value>) -> KfpResult<Value> {
    let t = t.ok_or_else(|| KfpError::InvalidInput("A recurring run needs a trigger".into()))?;
    let mut out = Map::new();
    if let Some(c) = json::field(t, "cron_schedule") {
        let cron = json::string(c, "cron")?;
        if cron.split_whitespace().count() < 5 || cron.len() > 256 {
            return Err(KfpError::InvalidInput(format!("Invalid cron schedule {cron:?}")));
        }
        let mut m = Map::new();
        for k in ["start_time", "end_time"] {
            if let Some(s) = time_field(c, k)? {
                m.insert(k.into(), Value::String(s));
            }
        }
        m.insert("cron".into(), Value::String(cron));
        out.insert("cron_schedule".into(), Value::Object(m));
    } else if let Some(p) = json::field(t, "periodic_schedule") {
        let secs = json::int64(p, "interval_second")?;
        if secs <= 0 {
            return Err(KfpError::InvalidInput(
                "The interval of a periodic schedule must be positive".into(),
            ));
        }
        let mut m = Map::new();
        for k in ["start_time", "end_time"] {
            if let Some(s) = time_field(p, k)? {
                m.insert(k.into(), Value::String(s));
            }
        }
        m.insert("interval_second".into(), Value::String(secs.to_string()));
        out.insert("periodic_schedule".into(), Value::Object(m));
    } else {
        return Err(KfpError::InvalidInput(
            "A trigger needs a cron_schedule or a periodic_schedule".into(),
        ));
    }
    Ok(Value::Object(out))
}

async fn load_authorized(k: &Kfp, r: &Req, id: &str, verb: &str) -> KfpResult<Job> {
    access::load_namespaced(k, &r.who, id, verb).await
}

impl access::Guarded for Job {
    const WHAT: &'static str = "recurring run";
    const RESOURCE: &'static str = res::JOBS;
    fn name(&self) -> &str {
        &self.name
    }
    fn missing(id: &str) -> KfpError {
        not_found(id)
    }
}

fn label(v2: bool) -> &'static str {
    if v2 { "recurring run" } else { "v1beta1 job" }
}

/// `POST jobs` / `POST recurringruns`.
pub async fn create(k: &Kfp, r: &Req) -> KfpResult<Value> {
    let outer = format!("Failed to create a {}", label(r.v2));
    let inner = async {
        let b = r.json()?;
        let refs = if r.v2 { Vec::new() } else { refs::parse(&b)? };
        let name = json::string(&b, if r.v2 { "display_name" } else { "name" })?;
        if name.is_empty() {
            return Err(KfpError::InvalidInput(
                "The name is empty. Please specify a valid name".into(),
            ));
        }
        let (exp_id, ns) = if r.v2 {
            (json::string(&b, "experiment_id")?, json::string(&b, "namespace")?)
        } else {
            (
                refs::find(&refs, "EXPERIMENT").unwrap_or_default().to_owned(),
                refs::find(&refs, "NAMESPACE").unwrap_or_default().to_owned(),
            )
        };
        let exp = runs::experiment_for(k, &exp_id, &ns).await?;
        access::check(k.authz.as_ref(), &r.who, "create", res::JOBS, &exp.namespace, &name).map_err(|e| {
            e.wrap(format!(
                "Failed to create a recurring run due to authorization error. Check if you have write permissions to namespace {}",
                exp.namespace
            ))
        })?;
        let mut max_concurrency = json::int64(&b, "max_concurrency")?;
        if max_concurrency == 0 {
            max_concurrency = 1;
        }
        if !(1..=10).contains(&max_concurrency) {
            return Err(KfpError::InvalidInput(format!(
                "The max concurrency of the job is out of range. Support 1-10. Received {max_concurrency}"
            )));
        }
        let trigger = trigger(json::field(&b, "trigger"))?;
        let enabled = if r.v2 {
            match json::field(&b, "mode") {
                None => true,
                Some(m) => json::enum_name(m, &["MODE_UNSPECIFIED", "ENABLE", "DISABLE"], "mode")? != "DISABLE",
            }
        } else {
            json::boolean(&b, "enabled")?
        };
        let (mut source, spec) = Source::from_body(k, r, &b, &refs).await?;
        let now = k.now_ms();
        let id = k.new_id();
        source.store_spec(k, &id, &spec).await?;
        let job = Job {
            id,
            name,
            description: json::string(&b, "description")?,
            namespace: exp.namespace.clone(),
            experiment_id: exp.id.clone(),
            created_ms: now,
            updated_ms: now,
            enabled,
            max_concurrency,
            no_catchup: json::boolean(&b, "no_catchup")?,
            trigger,
            service_account: json::string(&b, "service_account")?,
            source,
            status: String::new(),
        };
        if let Err(e) = k.db.insert(&job, "job").await {
            let _ = k.db.delete_blob(SPECS, &job.id).await;
            return Err(e);
        }
        kfsec_api::audit::identified(Some(&job.name), Some(&job.id));
        tracing::info!(target: "audit", user = %r.who.user, id = %job.id, namespace = %job.namespace, "kfp job created");
        Ok(job.render(r.v2, Some(&spec.json)))
    };
    inner.await.map_err(|e: KfpError| e.wrap(outer))
}

/// `GET jobs/{id}` / `GET recurringruns/{id}`.
pub async fn get(k: &Kfp, r: &Req, id: &str) -> KfpResult<Value> {
    let job = load_authorized(k, r, id, "get")
        .await
        .map_err(|e| e.wrap(format!("Failed to get a {}", label(r.v2))))?;
    let spec = job.source.load_spec(k, &job.id).await?;
    Ok(job.render(r.v2, Some(&spec)))
}

/// `GET jobs` / `GET recurringruns`.
pub async fn list(k: &Kfp, r: &Req) -> KfpResult<Value> {
    let outer = format!("Failed to list {}s", label(r.v2));
    let (mut namespace, experiment_id) = if r.v2 {
        (r.q("namespace"), r.q("experiment_id"))
    } else {
        match refs::query_key(&r.query, "resource_reference_key")? {
            None => (String::new(), String::new()),
            Some((t, id)) if t == "NAMESPACE" => (id, String::new()),
            Some((t, id)) if t == "EXPERIMENT" => (String::new(), id),
            Some((t, _)) => {
                return Err(KfpError::InvalidInput(format!(
                    "Invalid resource reference key type {t}"
                )));
            }
        }
    };
    let lr = ListRequest::from_query(&r.query)?;
    if !experiment_id.is_empty() {
        namespace = experiments::load(k, &experiment_id)
            .await
            .map_err(|e| e.wrap(outer.clone()))?
            .namespace;
    }
    checked_namespace(&namespace, || {
        KfpError::InvalidInput("a recurring run cannot have an empty namespace in multi-user mode".into())
    })
    .map_err(|e| e.wrap(outer.clone()))?;
    access::check(k.authz.as_ref(), &r.who, "list", res::JOBS, &namespace, "").map_err(|e| {
        e.wrap(format!(
            "Failed to list recurring runs due to authorization error. Check if you have permission to access namespace {namespace}"
        ))
        .wrap(outer.clone())
    })?;
    let mut all: Vec<Job> = k.db.list(&storage::scope_prefix(Kind::Job, &namespace)).await?;
    if !experiment_id.is_empty() {
        all.retain(|x| x.experiment_id == experiment_id);
    }
    let page = k.pager.page(all, &lr, &format!("jobs/{namespace}/{experiment_id}"))?;
    let items = page.items.iter().map(|x| x.render(r.v2, None)).collect();
    let key = if r.v2 { "recurring_runs" } else { "jobs" };
    Ok(json::list_response(key, items, page.total, &page.next))
}

/// `DELETE jobs/{id}` / `DELETE recurringruns/{id}`.
pub async fn delete(k: &Kfp, r: &Req, id: &str) -> KfpResult<Value> {
    let job = load_authorized(k, r, id, "delete")
        .await
        .map_err(|e| e.wrap(format!("Failed to delete a {}", label(r.v2))))?;
    k.db.remove(&job).await?;
    k.db.delete_blob(SPECS, &job.id).await?;
    tracing::info!(target: "audit", user = %r.who.user, id = %job.id, namespace = %job.namespace, "kfp job deleted");
    Ok(Value::Object(Map::new()))
}

/// `POST jobs/{id}/enable|disable` / `POST recurringruns/{id}:enable|:disable`.
pub async fn set_enabled(k: &Kfp, r: &Req, id: &str, enabled: bool) -> KfpResult<Value> {
    let verb = if enabled { "enable" } else { "disable" };
    load_authorized(k, r, id, verb)
        .await
        .map_err(|e| e.wrap(format!("Failed to {verb} a {}", label(r.v2))))?;
    let now = k.now_ms();
    k.db.modify::<Job>(
        id,
        || not_found(id),
        |j| {
            j.enabled = enabled;
            j.updated_ms = now;
            Ok(())
        },
    )
    .await?;
    Ok(Value::Object(Map::new()))
}

/// Disables every job of `exp` (KFP disables an experiment's jobs when archiving it).
pub async fn disable_in_experiment(k: &Kfp, exp: &Experiment) -> KfpResult<()> {
    let all: Vec<Job> = k.db.list(&storage::scope_prefix(Kind::Job, &exp.namespace)).await?;
    let now = k.now_ms();
    for job in all.iter().filter(|j| j.experiment_id == exp.id && j.enabled) {
        k.db.modify::<Job>(
            &job.id,
            || not_found(&job.id),
            |j| {
                j.enabled = false;
                j.updated_ms = now;
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

/// Records a scheduler status reported for job `id` (the persistence agent's report).
pub async fn apply_report(k: &Kfp, id: &str, namespace: &str, status: &str) -> KfpResult<()> {
    let Some((job, _)) = k.db.load::<Job>(id).await? else {
        return Err(not_found(id));
    };
    if job.namespace != namespace {
        return Err(KfpError::InvalidInput(format!(
            "The scheduled workflow's namespace {namespace} is not the namespace of job {id}"
        )));
    }
    let now = k.now_ms();
    k.db.modify::<Job>(
        id,
        || not_found(id),
        |j| {
            j.status = status.to_owned();
            j.updated_ms = now;
            Ok(())
        },
    )
    .await?;
    Ok(())
}
