//! Pipelines and pipeline versions (v1beta1 and v2beta1): upload (multipart YAML / zip /
//! tar.gz), create, get, get by name, list, delete, templates, the v1 default version, and the
//! package read path runs use.
//!
//! Invariants: a pipeline with no namespace is shared — every authenticated caller may get and
//! list it, and publish a new one by upload (KFP's upload rule); changing or deleting one (a new
//! version included) is for the user who created it (kfsec records the creator; KFP does not)
//! or needs the right in the KFP system namespace (KFP 2.17's rule, see [`check_pipeline`]);
//! a namespaced pipeline is checked on `pipelines` in its namespace, and
//! so are its versions (as KFP does); every package is stored with its SHA-256 and checked on
//! every read — a mismatch is DataLoss and the package is not served; kfsec never fetches a
//! package from a URL (no server-side requests on a caller's behalf).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use kfsec_api::audit;

use crate::access::{self, res};
use crate::error::{KfpError, KfpResult};
use crate::experiments::checked_namespace;
use crate::json::{self, Out};
use crate::list::{FieldValue, ListRequest, Listable};
use crate::package::{self, Spec};
use crate::routes::Req;
use crate::storage::PACKAGES;
use crate::storage::{self, Kind, Stored};
use crate::{Kfp, refs};

/// A stored pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pipeline {
    /// Id.
    pub id: String,
    /// Name (unique in its namespace).
    pub name: String,
    /// Display name.
    #[serde(default)]
    pub display_name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Namespace; empty = shared.
    #[serde(default)]
    pub namespace: String,
    /// Creation time (ms).
    pub created_ms: i64,
    /// The v1 default version, if set explicitly.
    #[serde(default)]
    pub default_version_id: String,
    /// The newest version.
    #[serde(default)]
    pub latest_version_id: String,
    /// The user who created it (the front door's user name), recorded by kfsec (KFP keeps no
    /// owner). Empty for pipelines stored before kfsec recorded it: those get no owner rule.
    #[serde(default)]
    pub created_by: String,
}

impl Stored for Pipeline {
    const KIND: Kind = Kind::Pipeline;
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

/// A stored pipeline version; its package lives in a blob with this SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    /// Id.
    pub id: String,
    /// Parent pipeline.
    pub pipeline_id: String,
    /// Name (unique per pipeline).
    pub name: String,
    /// Display name.
    #[serde(default)]
    pub display_name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Creation time (ms).
    pub created_ms: i64,
    /// `code_source_url`.
    #[serde(default)]
    pub code_source_url: String,
    /// Hex SHA-256 of the stored package.
    pub sha256: String,
    /// Package size in bytes.
    pub size: usize,
    /// v1 parameters.
    #[serde(default)]
    pub parameters: Vec<(String, String)>,
}

impl Stored for Version {
    const KIND: Kind = Kind::Version;
    fn id(&self) -> &str {
        &self.id
    }
    fn scope(&self) -> &str {
        &self.pipeline_id
    }
    fn unique_name(&self) -> Option<&str> {
        Some(&self.name)
    }
}

const PIPELINE_FIELDS: &[&str] = &[
    "id",
    "pipeline_id",
    "name",
    "display_name",
    "description",
    "created_at",
    "namespace",
];

impl Listable for Pipeline {
    fn list_id(&self) -> &str {
        &self.id
    }
    fn value(&self, key: &str) -> Option<FieldValue> {
        Some(match key {
            "id" | "pipeline_id" => FieldValue::Str(self.id.clone()),
            "name" => FieldValue::Str(self.name.clone()),
            "display_name" => FieldValue::Str(self.shown_name().to_owned()),
            "description" => FieldValue::Str(self.description.clone()),
            "created_at" => FieldValue::Int(self.created_ms / 1000),
            "namespace" => FieldValue::Str(self.namespace.clone()),
            _ => return None,
        })
    }
    fn knows(key: &str) -> bool {
        PIPELINE_FIELDS.contains(&key)
    }
}

const VERSION_FIELDS: &[&str] = &[
    "id",
    "pipeline_version_id",
    "name",
    "display_name",
    "description",
    "created_at",
    "pipeline_id",
];

impl Listable for Version {
    fn list_id(&self) -> &str {
        &self.id
    }
    fn value(&self, key: &str) -> Option<FieldValue> {
        Some(match key {
            "id" | "pipeline_version_id" => FieldValue::Str(self.id.clone()),
            "name" => FieldValue::Str(self.name.clone()),
            "display_name" => FieldValue::Str(self.shown_name().to_owned()),
            "description" => FieldValue::Str(self.description.clone()),
            "created_at" => FieldValue::Int(self.created_ms / 1000),
            "pipeline_id" => FieldValue::Str(self.pipeline_id.clone()),
            _ => return None,
        })
    }
    fn knows(key: &str) -> bool {
        VERSION_FIELDS.contains(&key)
    }
}

impl Pipeline {
    fn shown_name(&self) -> &str {
        if self.display_name.is_empty() {
            &self.name
        } else {
            &self.display_name
        }
    }

    /// The version v1 calls the default: the one set explicitly, else the newest.
    pub fn default_version(&self) -> &str {
        if self.default_version_id.is_empty() {
            &self.latest_version_id
        } else {
            &self.default_version_id
        }
    }

    /// v1beta1 JSON (`default_version` is the rendered default version, if any).
    fn v1(&self, default_version: Option<&Version>) -> Value {
        let mut o = Out::new()
            .s("id", &self.id)
            .ts("created_at", self.created_ms / 1000)
            .s("name", &self.name)
            .s("description", &self.description);
        if let Some(v) = default_version {
            o = o
                .v("parameters", params_json(&v.parameters))
                .v("default_version", v.v1());
        }
        if !self.namespace.is_empty() {
            o = o.v(
                "resource_references",
                Value::Array(vec![refs::render("NAMESPACE", &self.namespace, "", "OWNER")]),
            );
        }
        o.build()
    }

    /// v2beta1 JSON.
    fn v2(&self) -> Value {
        Out::new()
            .s("pipeline_id", &self.id)
            .s("display_name", self.shown_name())
            .s("name", &self.name)
            .s("description", &self.description)
            .ts("created_at", self.created_ms / 1000)
            .s("namespace", &self.namespace)
            .build()
    }
}

fn params_json(ps: &[(String, String)]) -> Value {
    Value::Array(
        ps.iter()
            .map(|(n, v)| Out::new().s("name", n).s("value", v).build())
            .collect(),
    )
}

impl Version {
    fn shown_name(&self) -> &str {
        if self.display_name.is_empty() {
            &self.name
        } else {
            &self.display_name
        }
    }

    fn v1(&self) -> Value {
        Out::new()
            .s("id", &self.id)
            .s("name", &self.name)
            .ts("created_at", self.created_ms / 1000)
            .v("parameters", params_json(&self.parameters))
            .s("code_source_url", &self.code_source_url)
            .v(
                "resource_references",
                Value::Array(vec![refs::render("PIPELINE", &self.pipeline_id, "", "OWNER")]),
            )
            .s("description", &self.description)
            .build()
    }

    fn v2(&self, spec: Option<&Spec>) -> Value {
        let mut o = Out::new()
            .s("pipeline_id", &self.pipeline_id)
            .s("pipeline_version_id", &self.id)
            .s("display_name", self.shown_name())
            .s("name", &self.name)
            .s("description", &self.description)
            .ts("created_at", self.created_ms / 1000)
            .s("code_source_url", &self.code_source_url);
        if let Some(s) = spec {
            o = o.v("pipeline_spec", s.json.clone());
        }
        o.build()
    }
}

fn pipeline_not_found(id: &str) -> KfpError {
    KfpError::NotFound(format!("Pipeline {id} not found"))
}

fn version_not_found(id: &str) -> KfpError {
    KfpError::NotFound(format!("PipelineVersion {id} not found"))
}

/// KFP's `canAccessPipeline`: shared pipelines are open for get/list and checked in the system
/// namespace for writes; namespaced ones are checked in their namespace.
fn check(k: &Kfp, r: &Req, verb: &str, namespace: &str, name: &str, id: &str) -> KfpResult<()> {
    if namespace.is_empty() {
        if is_read(verb) {
            allowed_without_rbac(
                verb,
                name,
                id,
                "kfp: shared pipelines are readable by every authenticated user",
            );
            return Ok(());
        }
        return access::check(
            k.authz.as_ref(),
            &r.who,
            verb,
            res::PIPELINES,
            &k.settings.system_namespace,
            name,
        )
        .map_err(|e| {
            e.wrap(format!(
                "Failed to access shared pipeline {id}. Check if you have permission to {verb} shared pipelines"
            ))
        });
    }
    access::check(k.authz.as_ref(), &r.who, verb, res::PIPELINES, namespace, name).map_err(|e| {
        e.wrap(format!(
            "Failed to access pipeline {id}. Check if you have access to namespace {namespace}"
        ))
    })
}

/// Loads a pipeline (no authorization).
pub async fn load(k: &Kfp, id: &str) -> KfpResult<Pipeline> {
    k.db.load::<Pipeline>(id)
        .await?
        .map(|(p, _)| p)
        .ok_or_else(|| pipeline_not_found(id))
}

async fn load_version(k: &Kfp, id: &str) -> KfpResult<Version> {
    k.db.load::<Version>(id)
        .await?
        .map(|(v, _)| v)
        .ok_or_else(|| version_not_found(id))
}

/// Whether `verb` on a pipeline is a read (open on shared pipelines, as in KFP).
fn is_read(verb: &str) -> bool {
    verb == "get" || verb == "list"
}

/// Whether `r`'s caller created the shared pipeline `p` (kfsec's owner rule, see
/// [`check_pipeline`]). A pipeline stored without a creator has no owner.
fn is_owner(p: &Pipeline, r: &Req) -> bool {
    p.namespace.is_empty() && !p.created_by.is_empty() && p.created_by == r.who.user
}

/// `verb` on the existing pipeline `p` (and, through it, on its versions): KFP's
/// `canAccessPipeline`, plus kfsec's owner rule for shared pipelines.
///
/// Upstream (kubeflow/pipelines `backend/src/apiserver/server`, multi-user mode) has two rules
/// for a new version of a shared pipeline, and records no owner:
/// - the gRPC path (`CreatePipelineVersion`: v1 `POST pipeline_versions`, v2
///   `POST pipelines/{id}/versions`) goes through `canAccessPipeline`, which since KFP 2.17
///   asks `create` on `pipelines` in the KFP system namespace (`POD_NAMESPACE`) for every write
///   to a shared pipeline (before 2.17 it asked nothing);
/// - the multipart path (`pipelines/upload_version`, what kfp 1.8's `upload_pipeline_version`
///   calls) goes through `canUploadVersionedPipeline`, which asks nothing at all when the parent
///   pipeline is shared: any user may add a version to any shared pipeline — and a new version
///   becomes the default that everyone's `run_pipeline(pipeline_id=…)` runs.
///
/// kfsec's rule, on both paths and for every write (`create` a version, `update` the default
/// version, `delete` a version or the pipeline): the user who created the shared pipeline
/// (`created_by`, recorded at creation) may; anyone else needs what KFP 2.17 asks — the verb on
/// `pipelines` in the system namespace (cluster and KFP admins have it), refused with KFP's
/// PermissionDenied text otherwise. So the owner is allowed where 2.17's gRPC path would refuse
/// them, and other users are refused where the upload path would let them in. Reads are open;
/// namespaced pipelines are checked in their namespace, exactly as KFP does.
fn check_pipeline(k: &Kfp, r: &Req, verb: &str, p: &Pipeline) -> KfpResult<()> {
    if !is_read(verb) && is_owner(p, r) {
        tracing::info!(target: "audit", user = %r.who.user, verb, id = %p.id, name = %p.name, "kfp shared pipeline write by its creator");
        allowed_without_rbac(
            verb,
            &p.name,
            &p.id,
            "kfsec: the creator of a shared pipeline may change it",
        );
        return Ok(());
    }
    check(k, r, verb, &p.namespace, &p.name, &p.id)?;
    audit::identified(None, Some(&p.id));
    Ok(())
}

/// Records in the request's audit Event a decision on a shared pipeline that no RBAC rule makes
/// (open reads and uploads, as in KFP; the creator's writes, kfsec's rule).
fn allowed_without_rbac(verb: &str, name: &str, id: &str, reason: &str) {
    if audit::active() {
        let object = audit::object_ref(access::GROUP, access::VERSION, res::PIPELINES, "", name);
        audit::decided(verb, object, true, reason);
        audit::identified(None, Some(id));
    }
}

async fn load_authorized(k: &Kfp, r: &Req, id: &str, verb: &str) -> KfpResult<Pipeline> {
    let p = load(k, id).await.map_err(|e| {
        e.wrap(format!(
            "Failed to access pipeline {id}. Check if it exists and have a namespace assigned"
        ))
    })?;
    check_pipeline(k, r, verb, &p)?;
    Ok(p)
}

/// A version and its pipeline, with `verb` authorized on the pipeline.
pub async fn load_version_authorized(k: &Kfp, r: &Req, vid: &str, verb: &str) -> KfpResult<(Pipeline, Version)> {
    let v = load_version(k, vid)
        .await
        .map_err(|e| e.wrap(format!("Failed to access pipeline version {vid}. Check if it exists")))?;
    let p = load_authorized(k, r, &v.pipeline_id, verb).await?;
    Ok((p, v))
}

/// The package of `v`, integrity-checked.
pub async fn package(k: &Kfp, v: &Version) -> KfpResult<Vec<u8>> {
    k.db.get_blob(PACKAGES, &v.id, &v.sha256).await
}

/// The parsed package of `v`, integrity-checked (parsed on the bounded blocking pool).
pub async fn spec_of(k: &Kfp, v: &Version) -> KfpResult<Spec> {
    let bytes = package(k, v).await?;
    k.offload(move || package::parse_spec(&bytes)).await
}

fn url_refused() -> KfpError {
    KfpError::InvalidInput(
        "kfsec does not fetch pipeline packages from URLs: upload the package (POST …/pipelines/upload) or pass the pipeline spec inline".into(),
    )
}

/// Creates a pipeline record, recording the caller as its creator. `upload`: the multipart
/// upload path, where KFP lets every authenticated caller publish a new shared pipeline (the
/// kfp 1.8 SDK can only upload shared ones); other creations of shared pipelines need the right
/// in the system namespace.
async fn insert_pipeline(k: &Kfp, r: &Req, mut p: Pipeline, upload: bool) -> KfpResult<Pipeline> {
    if p.name.is_empty() {
        return Err(KfpError::InvalidInput("name is required".into()));
    }
    if !p.namespace.is_empty() {
        checked_namespace(&p.namespace, || KfpError::InvalidInput("namespace is required".into()))?;
    }
    let open = upload && p.namespace.is_empty();
    if open {
        tracing::info!(target: "audit", user = %r.who.user, name = %p.name, "kfp shared pipeline upload (open to authenticated users, as in KFP)");
    }
    let checked = if open {
        allowed_without_rbac(
            "create",
            &p.name,
            "",
            "kfp: shared pipelines may be uploaded by every authenticated user",
        );
        Ok(())
    } else {
        check(k, r, "create", &p.namespace, &p.name, "")
    };
    checked.map_err(|e| {
        e.wrap(format!(
            "Failed to create a pipeline due to authorization error. Check if you have write permissions to namespace {}",
            p.namespace
        ))
    })?;
    p.id = k.new_id();
    p.created_ms = k.now_ms();
    p.created_by = r.who.user.clone();
    k.db.insert(&p, "pipeline").await?;
    audit::identified(Some(&p.name), Some(&p.id));
    tracing::info!(target: "audit", user = %r.who.user, id = %p.id, namespace = %p.namespace, "kfp pipeline created");
    Ok(p)
}

/// Refuses a package of `adding` bytes when the namespace's stored packages would exceed the
/// count or byte quota (shared pipelines form one namespace).
async fn check_quota(k: &Kfp, namespace: &str, adding: usize) -> KfpResult<()> {
    let pipelines: Vec<Pipeline> = k.db.list(&storage::scope_prefix(Kind::Pipeline, namespace)).await?;
    let (mut count, mut bytes) = (0u64, 0u64);
    for p in &pipelines {
        let versions: Vec<Version> = k.db.list(&storage::scope_prefix(Kind::Version, &p.id)).await?;
        count = count.saturating_add(u64::try_from(versions.len()).unwrap_or(u64::MAX));
        for v in &versions {
            bytes = bytes.saturating_add(u64::try_from(v.size).unwrap_or(u64::MAX));
        }
    }
    let adding = u64::try_from(adding).unwrap_or(u64::MAX);
    let (max_count, max_bytes) = (
        k.settings.max_packages_per_namespace,
        k.settings.max_package_bytes_per_namespace,
    );
    if count.saturating_add(1) > max_count || bytes.saturating_add(adding) > max_bytes {
        let scope = if namespace.is_empty() {
            "shared pipelines".to_owned()
        } else {
            format!("namespace {namespace}")
        };
        return Err(KfpError::ResourceExhausted(format!(
            "Failed to store the pipeline package: the package quota of {scope} would be exceeded ({count} of {max_count} packages, {bytes} + {adding} of {max_bytes} bytes stored). Delete pipeline versions to free space"
        )));
    }
    Ok(())
}

/// Stores a package as a new version of `p` (authorization already done), within the quota.
async fn insert_version(k: &Kfp, p: &Pipeline, mut v: Version, text: Vec<u8>, spec: &Spec) -> KfpResult<Version> {
    if v.name.is_empty() {
        return Err(KfpError::InvalidInput("name is required".into()));
    }
    // The check and the write are one step: concurrent uploads cannot both squeeze in.
    let _quota = k.quota.lock().await;
    check_quota(k, &p.namespace, text.len()).await?;
    v.id = k.new_id();
    v.pipeline_id = p.id.clone();
    v.created_ms = k.now_ms();
    v.size = text.len();
    v.parameters = spec.parameters();
    if k.db.id_by_name(Kind::Version, &p.id, &v.name).await?.is_some() {
        return Err(KfpError::AlreadyExists(format!(
            "Failed to create a new pipeline version. The name {} already exists. Please specify a new name",
            v.name
        )));
    }
    v.sha256 = k.db.put_blob(PACKAGES, &v.id, text).await?;
    if let Err(e) = k.db.insert(&v, "pipeline version").await {
        let _ = k.db.delete_blob(PACKAGES, &v.id).await;
        return Err(e);
    }
    let vid = v.id.clone();
    k.db.modify::<Pipeline>(
        &p.id,
        || pipeline_not_found(&p.id),
        |pl| {
            pl.latest_version_id = vid.clone();
            Ok(())
        },
    )
    .await?;
    Ok(v)
}

fn upload_name(r: &Req, filename: &str, spec: &Spec) -> String {
    let name = r.q("name");
    if !name.is_empty() {
        return name;
    }
    let dn = r.q("display_name");
    if !dn.is_empty() {
        return dn;
    }
    if filename.is_empty() {
        spec.name()
    } else {
        filename.to_owned()
    }
}

/// The uploaded package: multipart, decompression and YAML parsing, all linear and bounded, on
/// the blocking pool.
async fn read_upload(k: &Kfp, r: &Req) -> KfpResult<(String, Vec<u8>, Spec)> {
    let (content_type, body, max) = (r.content_type.clone(), r.body.clone(), k.settings.max_body_bytes);
    k.offload(move || {
        let up = package::multipart_file(&content_type, &body, "uploadfile")?;
        let text = package::read_pipeline_file(&up.filename, &up.bytes, max)
            .map_err(|e| e.wrap("Failed to read a pipeline spec file"))?;
        let spec = package::parse_spec(&text)?;
        Ok((up.filename, text, spec))
    })
    .await
}

fn upload_checked(k: &Kfp, r: &Req, namespace: &str) -> KfpResult<()> {
    checked_namespace(namespace, || KfpError::InvalidInput("namespace is required".into()))?;
    // The name the upload will have when the query gives it (else it comes from the body).
    let name = [r.q("name"), r.q("display_name")]
        .into_iter()
        .find(|n| !n.is_empty())
        .unwrap_or_default();
    check(k, r, "create", namespace, &name, "").map_err(|e| {
        e.wrap(format!(
            "Failed to create a pipeline due to authorization error. Check if you have write permissions to namespace {namespace}"
        ))
    })
}

/// Before the body of `pipelines/upload` is read: the target namespace (shared uploads are
/// open to every authenticated caller, as in KFP).
pub fn authorize_upload(k: &Kfp, r: &Req) -> KfpResult<()> {
    let namespace = r.q("namespace");
    if namespace.is_empty() {
        return Ok(());
    }
    upload_checked(k, r, &namespace)
}

/// Before the body of `pipelines/upload_version` is read: the parent pipeline.
pub async fn authorize_upload_version(k: &Kfp, r: &Req) -> KfpResult<()> {
    let pid = r.q("pipelineid");
    if pid.is_empty() {
        return Err(KfpError::InvalidInput(
            "Failed to create a pipeline version: pipelineid is required".into(),
        ));
    }
    load_authorized(k, r, &pid, "create").await.map(|_| ())
}

/// Before the body of `pipelines/{id}/versions` is read: the parent pipeline.
pub async fn authorize_new_version(k: &Kfp, r: &Req, pid: &str) -> KfpResult<()> {
    load_authorized(k, r, pid, "create").await.map(|_| ()).map_err(|e| {
        e.wrap(format!(
            "Failed to create a pipeline version due authorization error for pipeline id {pid}"
        ))
    })
}

/// `POST pipelines/upload` (multipart `uploadfile`, query `name`, `display_name`,
/// `description`, `namespace`).
pub async fn upload(k: &Kfp, r: &Req) -> KfpResult<Value> {
    let (filename, text, spec) = read_upload(k, r).await?;
    let name = upload_name(r, &filename, &spec);
    let display = {
        let d = r.q("display_name");
        if d.is_empty() { name.clone() } else { d }
    };
    let p = insert_pipeline(
        k,
        r,
        Pipeline {
            id: String::new(),
            name: name.clone(),
            display_name: display.clone(),
            description: r.q("description"),
            namespace: r.q("namespace"),
            created_ms: 0,
            default_version_id: String::new(),
            latest_version_id: String::new(),
            created_by: String::new(),
        },
        true,
    )
    .await?;
    let v = Version {
        id: String::new(),
        pipeline_id: String::new(),
        name,
        display_name: display,
        description: r.q("description"),
        created_ms: 0,
        code_source_url: r.q("code_source_url"),
        sha256: String::new(),
        size: 0,
        parameters: Vec::new(),
    };
    let v = match insert_version(k, &p, v, text, &spec).await {
        Ok(v) => v,
        Err(e) => {
            let _ = k.db.remove(&p).await;
            return Err(e);
        }
    };
    if r.v2 {
        Ok(p.v2())
    } else {
        let mut p = p;
        p.latest_version_id = v.id.clone();
        Ok(p.v1(Some(&v)))
    }
}

/// `POST pipelines/upload_version` (query `pipelineid`).
pub async fn upload_version(k: &Kfp, r: &Req) -> KfpResult<Value> {
    let pid = r.q("pipelineid");
    if pid.is_empty() {
        return Err(KfpError::InvalidInput(
            "Failed to create a pipeline version: pipelineid is required".into(),
        ));
    }
    let p = load_authorized(k, r, &pid, "create").await?;
    let (filename, text, spec) = read_upload(k, r).await?;
    let name = upload_name(r, &filename, &spec);
    let display = {
        let d = r.q("display_name");
        if d.is_empty() { name.clone() } else { d }
    };
    let v = Version {
        id: String::new(),
        pipeline_id: String::new(),
        name,
        display_name: display,
        description: r.q("description"),
        created_ms: 0,
        code_source_url: r.q("code_source_url"),
        sha256: String::new(),
        size: 0,
        parameters: Vec::new(),
    };
    let v = insert_version(k, &p, v, text, &spec).await?;
    Ok(if r.v2 { v.v2(Some(&spec)) } else { v.v1() })
}

fn pipeline_from_body(b: &Value, r: &Req) -> KfpResult<Pipeline> {
    let display_name = json::string(b, "display_name")?;
    let mut name = json::string(b, "name")?;
    if name.is_empty() {
        name = display_name.clone();
    }
    let namespace = if r.v2 {
        json::string(b, "namespace")?
    } else {
        refs::find(&refs::parse(b)?, "NAMESPACE").unwrap_or_default().to_owned()
    };
    Ok(Pipeline {
        id: String::new(),
        name,
        display_name,
        description: json::string(b, "description")?,
        namespace,
        created_ms: 0,
        default_version_id: String::new(),
        latest_version_id: String::new(),
        created_by: String::new(),
    })
}

/// An inline `pipeline_spec` of a version body, or InvalidArgument for a URL.
fn inline_spec(b: &Value) -> KfpResult<(Vec<u8>, Spec)> {
    if let Some(s) = json::field(b, "pipeline_spec") {
        let spec = package::spec_from_json(s.clone())?;
        let text = serde_json::to_vec(&spec.json).map_err(|e| KfpError::Internal(e.to_string()))?;
        return Ok((text, spec));
    }
    let url = json::field(b, "package_url")
        .map(|u| json::string(u, "pipeline_url"))
        .transpose()?;
    if url.is_some_and(|u| !u.is_empty()) {
        return Err(url_refused());
    }
    Err(KfpError::InvalidInput(
        "Failed to create a pipeline version. Pipeline spec is missing".into(),
    ))
}

/// `POST pipelines`: v1 (from a URL — refused) or v2 (a pipeline without versions).
pub async fn create(k: &Kfp, r: &Req) -> KfpResult<Value> {
    let b = r.json()?;
    if !r.v2 {
        return Err(url_refused().wrap("Failed to create a pipeline (v1beta1)"));
    }
    let p = insert_pipeline(k, r, pipeline_from_body(&b, r)?, false)
        .await
        .map_err(|e| e.wrap("Failed to create a pipeline due to server error"))?;
    Ok(p.v2())
}

/// `POST pipelines/create` (v2): a pipeline and its first version.
pub async fn create_with_version(k: &Kfp, r: &Req) -> KfpResult<Value> {
    let b = r.json()?;
    let pb = json::field(&b, "pipeline").cloned().unwrap_or(Value::Null);
    let vb = json::field(&b, "pipeline_version").cloned().unwrap_or(Value::Null);
    let (text, spec) = inline_spec(&vb)?;
    let p = insert_pipeline(k, r, pipeline_from_body(&pb, r)?, false).await?;
    let v = Version {
        id: String::new(),
        pipeline_id: String::new(),
        name: p.name.clone(),
        display_name: p.shown_name().to_owned(),
        description: p.description.clone(),
        created_ms: 0,
        code_source_url: json::string(&vb, "code_source_url")?,
        sha256: String::new(),
        size: 0,
        parameters: Vec::new(),
    };
    if let Err(e) = insert_version(k, &p, v, text, &spec).await {
        let _ = k.db.remove(&p).await;
        return Err(e);
    }
    Ok(p.v2())
}

/// `POST pipelines/{id}/versions` (v2) / `POST pipeline_versions` (v1).
pub async fn create_version(k: &Kfp, r: &Req, pid: &str) -> KfpResult<Value> {
    let b = r.json()?;
    let pid = if pid.is_empty() {
        refs::parse(&b)?
            .iter()
            .find(|x| x.kind == "PIPELINE")
            .map(|x| x.id.clone())
            .unwrap_or_default()
    } else {
        pid.to_owned()
    };
    if pid.is_empty() {
        return Err(KfpError::InvalidInput(
            "Failed to create a pipeline version. Parent pipeline id is empty".into(),
        ));
    }
    let (text, spec) = inline_spec(&b)?;
    let p = load_authorized(k, r, &pid, "create").await.map_err(|e| {
        e.wrap(format!(
            "Failed to create a pipeline version due authorization error for pipeline id {pid}"
        ))
    })?;
    let display_name = json::string(&b, "display_name")?;
    let mut name = json::string(&b, "name")?;
    if name.is_empty() {
        name = display_name.clone();
    }
    let v = Version {
        id: String::new(),
        pipeline_id: String::new(),
        name,
        display_name,
        description: json::string(&b, "description")?,
        created_ms: 0,
        code_source_url: json::string(&b, "code_source_url")?,
        sha256: String::new(),
        size: 0,
        parameters: Vec::new(),
    };
    let v = insert_version(k, &p, v, text, &spec).await?;
    Ok(if r.v2 { v.v2(Some(&spec)) } else { v.v1() })
}

async fn render(k: &Kfp, p: &Pipeline, v2: bool) -> KfpResult<Value> {
    if v2 {
        return Ok(p.v2());
    }
    let dv = p.default_version();
    let v = if dv.is_empty() {
        None
    } else {
        k.db.load::<Version>(dv).await?.map(|(v, _)| v)
    };
    Ok(p.v1(v.as_ref()))
}

/// `GET pipelines/{id}`.
pub async fn get(k: &Kfp, r: &Req, id: &str) -> KfpResult<Value> {
    let p = load_authorized(k, r, id, "get").await.map_err(|e| {
        e.wrap(format!(
            "Failed to get a pipeline due authorization error for pipeline id {id}"
        ))
    })?;
    render(k, &p, r.v2).await
}

/// `GET pipelines/names/{name}?namespace=` (v2) / `GET namespaces/{ns}/pipelines/{name}` (v1).
pub async fn get_by_name(k: &Kfp, r: &Req, namespace: &str, name: &str) -> KfpResult<Value> {
    let namespace = if namespace == "-" { "" } else { namespace };
    if !namespace.is_empty() {
        checked_namespace(namespace, || KfpError::InvalidInput("namespace is required".into()))?;
    }
    check(k, r, "get", namespace, name, "").map_err(|e| {
        e.wrap(format!(
            "Failed to fetch a pipeline due to authorization error. Check if you have read permission to namespace {namespace}"
        ))
    })?;
    let nf = || KfpError::NotFound(format!("Namespace/name pair [{namespace}]/[{name}] not found"));
    let id = k.db.id_by_name(Kind::Pipeline, namespace, name).await?.ok_or_else(nf)?;
    let p = load(k, &id).await.map_err(|_| nf())?;
    render(k, &p, r.v2).await
}

/// `GET pipelines` (v1: `resource_reference_key` NAMESPACE or none = shared; v2: `namespace`).
pub async fn list(k: &Kfp, r: &Req) -> KfpResult<Value> {
    let namespace = if r.v2 {
        r.q("namespace")
    } else {
        match refs::query_key(&r.query, "resource_reference_key")? {
            None => String::new(),
            Some((t, id)) if t == "NAMESPACE" => id,
            Some((t, id)) => {
                return Err(KfpError::InvalidInput(format!(
                    "Failed to list pipelines (v1beta1) due to invalid resource references for pipelines: {t}/{id}"
                )));
            }
        }
    };
    let lr = ListRequest::from_query(&r.query)?;
    if !namespace.is_empty() {
        checked_namespace(&namespace, || KfpError::InvalidInput("namespace is required".into()))?;
    }
    check(k, r, "list", &namespace, "", "").map_err(|e| {
        e.wrap(format!(
            "Failed to list pipelines due to authorization error. Check if you have read permission to namespace {namespace}"
        ))
    })?;
    let all: Vec<Pipeline> = k.db.list(&storage::scope_prefix(Kind::Pipeline, &namespace)).await?;
    let page = k
        .pager
        .page(all, &lr, &format!("pipelines/{namespace}"))
        .map_err(|e| e.wrap("Failed to list pipelines due invalid list options"))?;
    let mut items = Vec::with_capacity(page.items.len());
    for p in &page.items {
        items.push(render(k, p, r.v2).await?);
    }
    Ok(json::list_response("pipelines", items, page.total, &page.next))
}

/// `DELETE pipelines/{id}`: v1 deletes the versions too (as KFP 1.x did); v2 refuses while
/// versions exist unless `cascade=true`.
pub async fn delete(k: &Kfp, r: &Req, id: &str) -> KfpResult<Value> {
    let p = load_authorized(k, r, id, "delete").await.map_err(|e| {
        e.wrap(format!(
            "Failed to delete a pipeline due authorization error for pipeline id {id}"
        ))
    })?;
    let versions: Vec<Version> = k.db.list(&storage::scope_prefix(Kind::Version, &p.id)).await?;
    let cascade = !r.v2 || r.q("cascade") == "true";
    if !cascade && let Some(v) = versions.last() {
        return Err(KfpError::InvalidInput(format!(
            "Failed to delete pipeline with id {id} as it has existing pipeline versions (e.g. {}). Set cascade=true to delete all versions",
            v.id
        )));
    }
    k.db.remove(&p).await?;
    for v in &versions {
        k.db.remove(v).await?;
        k.db.delete_blob(PACKAGES, &v.id).await?;
    }
    tracing::info!(target: "audit", user = %r.who.user, id = %p.id, namespace = %p.namespace, "kfp pipeline deleted");
    Ok(Value::Object(serde_json::Map::new()))
}

/// `GET pipelines/{id}/templates` (v1): the default version's package text.
pub async fn template(k: &Kfp, r: &Req, id: &str) -> KfpResult<Value> {
    let p = load_authorized(k, r, id, "get").await.map_err(|e| {
        e.wrap(format!(
            "Failed to get the default template (v1beta1) due to authorization error. Verify that you have access to pipeline id {id}"
        ))
    })?;
    let dv = p.default_version().to_owned();
    if dv.is_empty() {
        return Err(KfpError::NotFound(format!(
            "PipelineVersion of pipeline {id} not found"
        )));
    }
    let v = load_version(k, &dv).await?;
    template_of(k, &v).await
}

async fn template_of(k: &Kfp, v: &Version) -> KfpResult<Value> {
    let text = package(k, v).await?;
    let text = String::from_utf8(text).map_err(|_| KfpError::DataLoss("The stored package is not text".into()))?;
    Ok(Out::new().s("template", &text).build())
}

/// `POST pipelines/{id}/default_version/{vid}` (v1).
pub async fn set_default_version(k: &Kfp, r: &Req, id: &str, vid: &str) -> KfpResult<Value> {
    load_authorized(k, r, id, "update").await.map_err(|e| {
        e.wrap(format!(
            "Failed to update (v1beta1) default pipeline version to {vid} for pipeline {id} due to authorization error"
        ))
    })?;
    let v = load_version(k, vid).await?;
    if v.pipeline_id != id {
        return Err(KfpError::InvalidInput(format!(
            "Pipeline version {vid} does not belong to pipeline {id}"
        )));
    }
    k.db.modify::<Pipeline>(
        id,
        || pipeline_not_found(id),
        |p| {
            p.default_version_id = vid.to_owned();
            Ok(())
        },
    )
    .await?;
    Ok(Value::Object(serde_json::Map::new()))
}

/// `GET pipelines/{id}/versions` (v2) / `GET pipeline_versions?resource_key.id=` (v1).
pub async fn list_versions(k: &Kfp, r: &Req, pid: &str) -> KfpResult<Value> {
    if pid.is_empty() {
        return Err(KfpError::InvalidInput(
            "Failed to list pipeline versions. Pipeline id cannot be empty".into(),
        ));
    }
    let lr = ListRequest::from_query(&r.query)?;
    let p = load_authorized(k, r, pid, "list")
        .await
        .map_err(|e| e.wrap("Failed to list pipeline versions due to authorization error"))?;
    let all: Vec<Version> = k.db.list(&storage::scope_prefix(Kind::Version, &p.id)).await?;
    let page = k.pager.page(all, &lr, &format!("versions/{}", p.id))?;
    let items = page
        .items
        .iter()
        .map(|v| if r.v2 { v.v2(None) } else { v.v1() })
        .collect();
    let key = if r.v2 { "pipeline_versions" } else { "versions" };
    Ok(json::list_response(key, items, page.total, &page.next))
}

/// `GET …/versions/{vid}` (v2, with the integrity-checked `pipeline_spec`) /
/// `GET pipeline_versions/{vid}` (v1).
pub async fn get_version(k: &Kfp, r: &Req, vid: &str) -> KfpResult<Value> {
    let (_, v) = load_version_authorized(k, r, vid, "get").await.map_err(|e| {
        e.wrap(format!(
            "Failed to get a pipeline version due to authorization error for pipeline version id {vid}"
        ))
    })?;
    if r.v2 {
        let spec = spec_of(k, &v).await?;
        Ok(v.v2(Some(&spec)))
    } else {
        Ok(v.v1())
    }
}

/// `GET pipeline_versions/{vid}/templates` (v1).
pub async fn version_template(k: &Kfp, r: &Req, vid: &str) -> KfpResult<Value> {
    let (_, v) = load_version_authorized(k, r, vid, "get").await.map_err(|e| {
        e.wrap(format!(
            "Failed to get a pipeline template due to authorization error. Verify that you have access to pipeline version {vid}"
        ))
    })?;
    template_of(k, &v).await
}

/// `DELETE …/versions/{vid}` / `DELETE pipeline_versions/{vid}`.
pub async fn delete_version(k: &Kfp, r: &Req, vid: &str) -> KfpResult<Value> {
    let (p, v) = load_version_authorized(k, r, vid, "delete").await?;
    k.db.remove(&v).await?;
    k.db.delete_blob(PACKAGES, &v.id).await?;
    let rest: Vec<Version> = k.db.list(&storage::scope_prefix(Kind::Version, &p.id)).await?;
    let latest = rest
        .iter()
        .max_by_key(|x| (x.created_ms, x.id.clone()))
        .map(|x| x.id.clone())
        .unwrap_or_default();
    k.db.modify::<Pipeline>(
        &p.id,
        || pipeline_not_found(&p.id),
        |pl| {
            pl.latest_version_id = latest.clone();
            if pl.default_version_id == v.id {
                pl.default_version_id = String::new();
            }
            Ok(())
        },
    )
    .await?;
    Ok(Value::Object(serde_json::Map::new()))
}
