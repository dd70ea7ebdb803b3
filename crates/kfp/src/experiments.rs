//! Experiments (v1beta1 and v2beta1): create, get, list, delete, archive, unarchive, and their
//! JSON forms.
//!
//! Invariants: an experiment always has a namespace (empty → KFP's InvalidArgument); every
//! operation is authorized on `experiments` in the experiment's stored namespace with its name;
//! names are unique per namespace; archiving also archives the experiment's runs and disables
//! its jobs, as KFP does.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::access::{self, res};
use crate::error::{KfpError, KfpResult};
use crate::json::{self, Out};
use crate::list::{FieldValue, ListRequest, Listable};
use crate::routes::Req;
use crate::storage::{self, Kind, Stored, valid_namespace};
use crate::{Kfp, jobs, refs, runs};

/// A stored experiment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Experiment {
    /// Id.
    pub id: String,
    /// Name (v2 `display_name`).
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Namespace (never empty).
    pub namespace: String,
    /// Creation time (ms).
    pub created_ms: i64,
    /// Archived.
    #[serde(default)]
    pub archived: bool,
    /// When its last run was created (ms), 0 if never.
    #[serde(default)]
    pub last_run_ms: i64,
}

impl Stored for Experiment {
    const KIND: Kind = Kind::Experiment;
    fn id(&self) -> &str {
        &self.id
    }
    fn scope(&self) -> &str {
        &self.namespace
    }
    fn unique_name(&self) -> Option<&str> {
        Some(&self.name)
    }
}

const FIELDS: &[&str] = &[
    "id",
    "experiment_id",
    "name",
    "display_name",
    "description",
    "created_at",
    "namespace",
    "storage_state",
    "last_run_created_at",
];

impl Listable for Experiment {
    fn list_id(&self) -> &str {
        &self.id
    }
    fn value(&self, key: &str) -> Option<FieldValue> {
        Some(match key {
            "id" | "experiment_id" => FieldValue::Str(self.id.clone()),
            "name" | "display_name" => FieldValue::Str(self.name.clone()),
            "description" => FieldValue::Str(self.description.clone()),
            "created_at" => FieldValue::Int(self.created_ms / 1000),
            "namespace" => FieldValue::Str(self.namespace.clone()),
            "storage_state" => FieldValue::Str(self.storage_state().into()),
            "last_run_created_at" => FieldValue::Int(self.last_run_ms / 1000),
            _ => return None,
        })
    }
    fn knows(key: &str) -> bool {
        FIELDS.contains(&key)
    }
}

impl Experiment {
    fn storage_state(&self) -> &'static str {
        if self.archived { "ARCHIVED" } else { "AVAILABLE" }
    }

    /// The v1beta1 JSON.
    pub fn v1(&self) -> Value {
        Out::new()
            .s("id", &self.id)
            .s("name", &self.name)
            .s("description", &self.description)
            .ts("created_at", self.created_ms / 1000)
            .v(
                "resource_references",
                Value::Array(vec![refs::render("NAMESPACE", &self.namespace, "", "OWNER")]),
            )
            .s("storage_state", &format!("STORAGESTATE_{}", self.storage_state()))
            .build()
    }

    /// The v2beta1 JSON.
    pub fn v2(&self) -> Value {
        Out::new()
            .s("experiment_id", &self.id)
            .s("display_name", &self.name)
            .s("description", &self.description)
            .ts("created_at", self.created_ms / 1000)
            .s("namespace", &self.namespace)
            .s("storage_state", self.storage_state())
            .ts("last_run_created_at", self.last_run_ms / 1000)
            .build()
    }

    fn render(&self, v2: bool) -> Value {
        if v2 { self.v2() } else { self.v1() }
    }
}

fn empty_namespace() -> KfpError {
    KfpError::InvalidInput("An experiment cannot have an empty namespace in multi-user mode".into())
}

/// Checks a namespace given by a caller: empty → KFP's text; not a DNS label → InvalidArgument.
pub fn checked_namespace(ns: &str, empty: impl Fn() -> KfpError) -> KfpResult<()> {
    if ns.is_empty() {
        return Err(empty());
    }
    if !valid_namespace(ns) {
        return Err(KfpError::InvalidInput(format!("Invalid namespace {ns:?}")));
    }
    Ok(())
}

fn not_found(id: &str) -> KfpError {
    KfpError::NotFound(format!("Experiment {id} not found"))
}

/// Loads an experiment and authorizes `verb` on it (KFP's `canAccessExperiment` with an id).
pub async fn load_authorized(k: &Kfp, r: &Req, id: &str, verb: &str) -> KfpResult<Experiment> {
    let exp = load(k, id)
        .await
        .map_err(|e| e.wrap("Failed to authorize with the experiment ID"))?;
    access::check(
        k.authz.as_ref(),
        &r.who,
        verb,
        res::EXPERIMENTS,
        &exp.namespace,
        &exp.name,
    )
    .map_err(|e| e.wrap("Failed to authorize with API"))?;
    kfsec_api::audit::identified(None, Some(id));
    Ok(exp)
}

/// Loads an experiment (no authorization).
pub async fn load(k: &Kfp, id: &str) -> KfpResult<Experiment> {
    match k.db.load::<Experiment>(id).await? {
        Some((e, _)) => Ok(e),
        None => Err(not_found(id)),
    }
}

fn version_label(v2: bool) -> &'static str {
    if v2 { "experiment" } else { "v1beta1 experiment" }
}

/// `POST experiments`.
pub async fn create(k: &Kfp, r: &Req) -> KfpResult<Value> {
    let ctx = format!("Failed to create a {}", version_label(r.v2));
    let inner = async {
        let body = r.json()?;
        let (name, namespace) = if r.v2 {
            (json::string(&body, "display_name")?, json::string(&body, "namespace")?)
        } else {
            let refs = refs::parse(&body)?;
            (
                json::string(&body, "name")?,
                refs::find(&refs, "NAMESPACE").unwrap_or_default().to_owned(),
            )
        };
        let description = json::string(&body, "description")?;
        if name.is_empty() {
            return Err(KfpError::InvalidInput(
                "Experiment name is empty. Please specify a valid experiment name".into(),
            ));
        }
        checked_namespace(&namespace, empty_namespace).map_err(|e| e.wrap("Failed to authorize the request"))?;
        access::check(k.authz.as_ref(), &r.who, "create", res::EXPERIMENTS, &namespace, &name).map_err(|e| {
            e.wrap("Failed to authorize with API")
                .wrap("Failed to authorize the request")
        })?;
        let exp = Experiment {
            id: k.new_id(),
            name,
            description,
            namespace,
            created_ms: k.now_ms(),
            archived: false,
            last_run_ms: 0,
        };
        k.db.insert(&exp, "experiment").await?;
        kfsec_api::audit::identified(Some(&exp.name), Some(&exp.id));
        tracing::info!(target: "audit", user = %r.who.user, id = %exp.id, namespace = %exp.namespace, "kfp experiment created");
        Ok(exp.render(r.v2))
    };
    inner.await.map_err(|e: KfpError| e.wrap(ctx))
}

/// `GET experiments/{id}`.
pub async fn get(k: &Kfp, r: &Req, id: &str) -> KfpResult<Value> {
    let exp = load_authorized(k, r, id, "get").await.map_err(|e| {
        e.wrap("Failed to authorize the request")
            .wrap(format!("Failed to fetch {}", version_label(r.v2)))
    })?;
    Ok(exp.render(r.v2))
}

/// `GET experiments`.
pub async fn list(k: &Kfp, r: &Req) -> KfpResult<Value> {
    let outer = if r.v2 {
        "List experiments failed"
    } else {
        "List v1beta1 experiments failed"
    };
    let namespace = if r.v2 {
        r.q("namespace")
    } else {
        match refs::query_key(&r.query, "resource_reference_key")? {
            None => String::new(),
            Some((t, id)) if t == "NAMESPACE" => id,
            Some((t, id)) => {
                return Err(KfpError::InvalidInput(format!(
                    "Failed to list v1beta1 experiment due to invalid resource reference key. It must be of type 'Namespace' and contain an existing or empty namespace, but you provided {id} of type {t}"
                )));
            }
        }
    };
    let lr = ListRequest::from_query(&r.query).map_err(|e| e.wrap("Failed to create list options"))?;
    checked_namespace(&namespace, empty_namespace).map_err(|e| e.wrap("Failed to authorize with API").wrap(outer))?;
    access::check(k.authz.as_ref(), &r.who, "list", res::EXPERIMENTS, &namespace, "").map_err(|e| {
        e.wrap("Failed to authorize with API")
            .wrap("Failed to authorize with API")
            .wrap(outer)
    })?;
    let all: Vec<Experiment> = k.db.list(&storage::scope_prefix(Kind::Experiment, &namespace)).await?;
    let page = k
        .pager
        .page(all, &lr, &format!("experiments/{namespace}"))
        .map_err(|e| e.wrap("Failed to create list options"))?;
    let items = page.items.iter().map(|e| e.render(r.v2)).collect();
    Ok(json::list_response("experiments", items, page.total, &page.next))
}

/// `DELETE experiments/{id}`.
pub async fn delete(k: &Kfp, r: &Req, id: &str) -> KfpResult<Value> {
    let outer = format!("Failed to delete {}", version_label(r.v2));
    let exp = load_authorized(k, r, id, "delete")
        .await
        .map_err(|e| e.wrap("Failed to authorize the request").wrap(outer.clone()))?;
    k.db.remove(&exp).await.map_err(|e| e.wrap(outer))?;
    tracing::info!(target: "audit", user = %r.who.user, id = %exp.id, namespace = %exp.namespace, "kfp experiment deleted");
    Ok(Value::Object(serde_json::Map::new()))
}

/// `POST experiments/{id}:archive` / `:unarchive`.
pub async fn set_archived(k: &Kfp, r: &Req, id: &str, archived: bool) -> KfpResult<Value> {
    let verb = if archived { "archive" } else { "unarchive" };
    let outer = format!("Failed to {verb} {}", version_label(r.v2));
    let exp = load_authorized(k, r, id, verb)
        .await
        .map_err(|e| e.wrap("Failed to authorize the request").wrap(outer.clone()))?;
    k.db.modify::<Experiment>(
        id,
        || not_found(id),
        |e| {
            e.archived = archived;
            Ok(())
        },
    )
    .await
    .map_err(|e| e.wrap(outer.clone()))?;
    if archived {
        runs::archive_in_experiment(k, &exp).await?;
        jobs::disable_in_experiment(k, &exp).await?;
    }
    Ok(Value::Object(serde_json::Map::new()))
}

/// Records that a run was created in experiment `id` (v2 `last_run_created_at`).
pub async fn touch_last_run(k: &Kfp, id: &str, at_ms: i64) -> KfpResult<()> {
    k.db.modify::<Experiment>(
        id,
        || not_found(id),
        |e| {
            e.last_run_ms = e.last_run_ms.max(at_ms);
            Ok(())
        },
    )
    .await
    .map(|_| ())
}
