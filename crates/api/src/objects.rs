//! The object engine: create, update, patch, delete, get and list of stored objects, shared by the
//! HTTP handlers and the typed helpers controllers call.
//!
//! Invariants: `metadata.resourceVersion` is always the store's mod revision, injected on read and
//! stripped before every write; `uid`, `creationTimestamp`, `name` and `namespace` cannot be
//! changed by an update, a patch or an admission plugin; every write is conditional on the
//! revision that was read (lost updates are impossible); namespaced objects are only created in
//! namespaces that exist and are not terminating (for HTTP callers); a create or update never
//! stores an object larger than three request bodies (413), so no sequence of writes grows one
//! without bound.

pub(crate) use crate::list::ListQuery;

use kfsec_store::{KeyValue, Revision, StoreError};
use kfsec_types::admission::Operation;
use kfsec_types::identity::UserInfo;
use serde_json::{Map, Value, json};

use crate::ApiServer;
use crate::hooks::AdmissionAttributes;
use crate::kinds::{prepare_kind, spec_changed};
use crate::managed::{self, Entry, Writer};
use crate::meta::{name_suffix, new_uid, validate_maps, validate_name};
use crate::patch::{self, PatchType};
use crate::registry::{self, Resource};
use crate::status::{ApiError, FieldCause};

/// How many times a write retries after losing a race (when the caller gave no precondition).
const RETRIES: usize = 8;

/// Who writes, and how strictly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteCtx<'a> {
    /// The caller (for admission and RBAC escalation checks).
    pub user: &'a UserInfo,
    /// An external (HTTP) request: namespace must exist, the main resource cannot change
    /// `status` of types with a status subresource, RBAC escalation is checked.
    pub http: bool,
    /// `?dryRun=All`: everything but the store write.
    pub dry_run: bool,
    /// `""` or `"status"`.
    pub subresource: &'a str,
    /// The field manager recorded in `metadata.managedFields` (`""`: a system-internal write,
    /// which records nothing and keeps the entries as they are).
    pub manager: &'a str,
}

/// Server-side apply's request options.
#[derive(Debug)]
pub(crate) struct ApplyOptions {
    /// `?force=true`: take over conflicting fields.
    pub force: bool,
    /// `?fieldValidation=`: `Strict` refuses duplicate and unknown fields, `Warn` (default)
    /// warns about unknown fields.
    pub field_validation: Option<String>,
    /// Set when the caller may not `create`: an apply that would create fails with it.
    pub create_denied: Option<ApiError>,
}

/// Preconditions of a DELETE.
#[derive(Debug, Clone, Default)]
pub(crate) struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

pub(crate) fn not_found(res: &Resource, name: &str) -> ApiError {
    ApiError::NotFound {
        qualified: res.qualified(),
        group: res.group.to_owned(),
        kind: res.plural.to_owned(),
        name: name.to_owned(),
    }
}

pub(crate) fn conflict(res: &Resource, name: &str, detail: &str) -> ApiError {
    ApiError::Conflict {
        qualified: res.qualified(),
        group: res.group.to_owned(),
        kind: res.plural.to_owned(),
        name: name.to_owned(),
        detail: detail.to_owned(),
    }
}

const MODIFIED: &str = "the object has been modified; please apply your changes to the latest version and try again";

pub(crate) fn invalid(res: &Resource, name: &str, causes: Vec<FieldCause>) -> ApiError {
    ApiError::Invalid {
        kind: res.kind.to_owned(),
        group: res.group.to_owned(),
        name: name.to_owned(),
        causes,
    }
}

pub(crate) fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

pub(crate) fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the object must be a JSON object".into()))?;
    let m = o.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if m.is_null() {
        *m = Value::Object(Map::new());
    }
    m.as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("metadata must be a JSON object".into()))
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    meta(obj)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The object's name.
pub(crate) fn name_of(obj: &Value) -> &str {
    meta_str(obj, "name")
}

/// The object's namespace.
pub(crate) fn namespace_of(obj: &Value) -> &str {
    meta_str(obj, "namespace")
}

/// Checks body `apiVersion` / `kind` against `res` and stamps them.
pub(crate) fn check_type(res: &Resource, mut obj: Value) -> Result<Value, ApiError> {
    let want_av = res.api_version();
    let Some(o) = obj.as_object_mut() else {
        return Err(ApiError::BadRequest(format!(
            "the body of the request must be a JSON object (an {} object)",
            res.kind
        )));
    };
    if let Some(av) = o.get("apiVersion").filter(|v| !v.is_null()) {
        let av = av.as_str().unwrap_or("<not a string>");
        // Served versions of one stored type are interchangeable here (same schema).
        let same_type = registry::find_kind(av, res.kind).is_some_and(|r| r.group == res.group);
        if av != want_av && !same_type {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
    }
    if let Some(k) = o.get("kind").filter(|v| !v.is_null()) {
        let k = k.as_str().unwrap_or("<not a string>");
        if k != res.kind {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )));
        }
    }
    o.insert("apiVersion".into(), Value::String(want_av));
    o.insert("kind".into(), Value::String(res.kind.to_owned()));
    meta_mut(&mut obj)?;
    Ok(obj)
}

/// Stamps output fields on a stored object.
pub(crate) fn present(res: &Resource, mut obj: Value, rev: Revision) -> Value {
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), Value::String(res.api_version()));
        o.insert("kind".into(), Value::String(res.kind.to_owned()));
        if let Some(Value::Object(m)) = o.get_mut("metadata") {
            m.insert("resourceVersion".into(), Value::String(rev.to_string()));
        }
    }
    obj
}

/// Decodes a stored record as `res`.
pub(crate) fn decode(res: &Resource, kv: &KeyValue) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("corrupt record at {}: {e}", kv.key)))?;
    Ok(present(res, v, kv.mod_revision))
}

fn encode(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let mut o = obj.clone();
    if let Some(Value::Object(m)) = o.get_mut("metadata") {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&o).map_err(|e| ApiError::Internal(format!("encode: {e}")))
}

/// [`encode`] for a create or an update, which may not store more than `max` bytes (413): the
/// store's limit on one object, as etcd's request limit bounds kube-apiserver's objects. Without
/// it an object grows without bound — a merge patch adds a body's worth of keys each time, a
/// server-side apply by one more field manager adds a `managedFields` entry as large as its
/// configuration.
fn encode_bounded(obj: &Value, max: usize) -> Result<Vec<u8>, ApiError> {
    let bytes = encode(obj)?;
    if bytes.len() > max {
        return Err(ApiError::TooLargeWith(format!(
            "Request entity too large: the object would be {} bytes, limit is {max}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

impl ApiServer {
    /// The largest object a create or update stores: three request bodies (the object, its
    /// `managedFields` and slack).
    fn max_object_bytes(&self) -> usize {
        self.options.max_body_bytes.saturating_mul(3)
    }

    /// Reads one object: `(object with resourceVersion, revision)`.
    pub(crate) async fn read(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
    ) -> Result<Option<(Value, Revision)>, ApiError> {
        match self.store.get(&res.key(ns, name)).await? {
            Some(kv) => Ok(Some((decode(res, &kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    pub(crate) async fn get_in(&self, res: &Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.read(res, ns, name)
            .await?
            .map(|(v, _)| v)
            .ok_or_else(|| not_found(res, name))
    }

    async fn check_namespace_open(&self, res: &Resource, ns: &str, name: &str) -> Result<(), ApiError> {
        let nsres = registry::find("", "v1", "namespaces").ok_or(ApiError::NoRoute)?;
        match self.read(nsres, "", ns).await? {
            None => Err(not_found(nsres, ns)),
            Some((n, _)) if meta(&n).is_some_and(|m| m.get("deletionTimestamp").is_some_and(|d| !d.is_null())) => {
                Err(ApiError::Forbidden {
                    message: format!(
                        "{} {name:?} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        res.qualified()
                    ),
                    group: res.group.to_owned(),
                    kind: res.plural.to_owned(),
                    name: name.to_owned(),
                })
            }
            Some(_) => Ok(()),
        }
    }

    /// A built-in admission rule: no Profile may claim a system namespace, through any path and
    /// for any caller (Kubeflow's controller never takes over a namespace it does not own).
    fn check_profile_name(&self, res: &Resource, name: &str) -> Result<(), ApiError> {
        if res.group == "kubeflow.org" && res.plural == "profiles" && self.is_reserved_namespace(name) {
            return Err(ApiError::Forbidden {
                message: format!(
                    "{} {name:?} is forbidden: namespace {name:?} is reserved for the system and cannot be owned by a profile",
                    res.qualified()
                ),
                group: res.group.to_owned(),
                kind: res.plural.to_owned(),
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    async fn admit(&self, req: AdmissionAttributes<'_>, obj: &mut Value) -> Result<(), ApiError> {
        self.admission.admit(req, obj).await.map_err(|d| {
            if d.call_failed {
                ApiError::AdmissionFailed {
                    webhook: d.webhook,
                    cause: d.message,
                }
            } else {
                ApiError::AdmissionDenied {
                    webhook: d.webhook,
                    code: if (400..500).contains(&d.code) { d.code } else { 400 },
                    message: d.message,
                }
            }
        })?;
        if !obj.is_object() {
            return Err(ApiError::Internal("admission returned a non-object".into()));
        }
        Ok(())
    }

    /// Creates an object. `ns` is the namespace from the path (or the caller).
    pub(crate) async fn create_in(
        &self,
        res: &'static Resource,
        ns: &str,
        body: Value,
        ctx: WriteCtx<'_>,
    ) -> Result<Value, ApiError> {
        self.create_managed(res, ns, body, ctx, None).await
    }

    /// The writer of `ctx` for field management.
    fn writer<'a>(&self, res: &Resource, ctx: WriteCtx<'a>, api_version: &'a str, now: &'a str) -> Writer<'a> {
        Writer {
            manager: ctx.manager,
            api_version,
            subresource: ctx.subresource,
            has_status: res.has_status(),
            now,
        }
    }

    /// The managed fields after a non-apply write of `new` over `old` (`None`: create): the
    /// entries `given` (server-side apply), or the Update of `ctx.manager`, or — for
    /// system-internal writes — the old entries unchanged; the entries the writer `requested`
    /// (the body's `managedFields`) replace the old ones as in [`managed::requested_or`].
    fn managed_after(
        &self,
        res: &Resource,
        old: Option<&Value>,
        new: &Value,
        ctx: WriteCtx<'_>,
        given: Option<Vec<Entry>>,
        requested: Option<&Value>,
    ) -> Option<Value> {
        let before = managed::requested_or(old.map(managed::entries_of).unwrap_or_default(), requested);
        if let Some(g) = given {
            return managed::encode(g);
        }
        if ctx.manager.is_empty() {
            return managed::encode(before);
        }
        let av = res.api_version();
        let now = self.clock.now().to_rfc3339();
        let w = self.writer(res, ctx, &av, &now);
        let empty = Value::Object(Map::new());
        managed::encode(managed::update(&before, old.unwrap_or(&empty), new, &w))
    }

    /// Creates an object with the field managers `given` (server-side apply) or those of
    /// `ctx.manager`'s write.
    async fn create_managed(
        &self,
        res: &'static Resource,
        ns: &str,
        body: Value,
        ctx: WriteCtx<'_>,
        given: Option<Vec<Entry>>,
    ) -> Result<Value, ApiError> {
        let mut obj = check_type(res, body)?;
        let requested = meta(&obj).and_then(|m| m.get("managedFields")).cloned();
        if ctx.http
            && res.has_status()
            && let Some(o) = obj.as_object_mut()
        {
            // As for Kubernetes types with a status subresource: clients cannot set status.
            o.remove("status");
        }
        let now = self.clock.now().to_rfc3339();
        let uid = new_uid(self.rng.as_ref());
        let (name, generate) = {
            let m = meta_mut(&mut obj)?;
            if res.namespaced {
                let body_ns = m.get("namespace").and_then(Value::as_str).unwrap_or("");
                if !body_ns.is_empty() && body_ns != ns {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ));
                }
                if ns.is_empty() {
                    return Err(ApiError::BadRequest(
                        "a namespace is required for a namespaced resource".into(),
                    ));
                }
                m.insert("namespace".into(), Value::String(ns.to_owned()));
            } else {
                m.remove("namespace");
            }
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "managedFields",
            ] {
                m.remove(k);
            }
            m.insert("uid".into(), Value::String(uid.clone()));
            m.insert("creationTimestamp".into(), Value::String(now));
            m.insert("generation".into(), json!(1));
            let name = m.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
            let generate = m.get("generateName").and_then(Value::as_str).unwrap_or("").to_owned();
            (name, generate)
        };
        let managed_fields = self.managed_after(res, None, &obj, ctx, given, requested.as_ref());
        let given_name = name;
        if given_name.is_empty() && generate.is_empty() {
            return Err(invalid(
                res,
                "",
                vec![FieldCause::required(
                    "metadata.name",
                    "name or generateName is required",
                )],
            ));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let name = if given_name.is_empty() {
                format!("{generate}{}", name_suffix(self.rng.as_ref()))
            } else {
                given_name.clone()
            };
            meta_mut(&mut obj)?.insert("name".into(), Value::String(name.clone()));
            let mut causes = validate_name(res.names, &name);
            causes.extend(validate_maps(meta(&obj).unwrap_or(&Map::new())));
            if !causes.is_empty() {
                return Err(invalid(res, &name, causes));
            }
            self.check_profile_name(res, &name)?;
            if ctx.http && res.namespaced {
                self.check_namespace_open(res, ns, &name).await?;
            }
            let mut candidate = obj.clone();
            prepare_kind(res, &mut candidate, None)?;
            if ctx.http {
                self.check_rbac_escalation(res, ns, &name, &candidate, ctx.user).await?;
            }
            let req = admission_request(res, Operation::Create, ns, &name, None, ctx);
            self.admit(req, &mut candidate).await?;
            restore_identity(&mut candidate, &obj)?;
            prepare_kind(res, &mut candidate, None)?;
            revalidate(res, &name, &candidate)?;
            set_managed(&mut candidate, managed_fields.clone())?;
            if ctx.dry_run {
                return Ok(candidate);
            }
            if res.group.is_empty() && res.plural == "namespaces" {
                self.clear_for_new_namespace(res, &name).await?;
            }
            match self
                .store
                .create(
                    &res.key(ns, &name),
                    encode_bounded(&candidate, self.max_object_bytes())?,
                    None,
                )
                .await
            {
                Ok(rev) => return Ok(present(res, candidate, rev)),
                Err(StoreError::AlreadyExists(_)) if !given_name.is_empty() || attempt >= 5 => {
                    return Err(ApiError::AlreadyExists {
                        qualified: res.qualified(),
                        group: res.group.to_owned(),
                        kind: res.plural.to_owned(),
                        name,
                    });
                }
                Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Replaces an object (PUT / internal update / the second half of PATCH).
    pub(crate) async fn update_in(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        body: Value,
        ctx: WriteCtx<'_>,
    ) -> Result<Value, ApiError> {
        let mut obj = check_type(res, body)?;
        {
            let m = meta_mut(&mut obj)?;
            let body_name = m.get("name").and_then(Value::as_str).unwrap_or("");
            if body_name.is_empty() {
                m.insert("name".into(), Value::String(name.to_owned()));
            } else if body_name != name {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            if res.namespaced {
                let body_ns = m.get("namespace").and_then(Value::as_str).unwrap_or("");
                if !body_ns.is_empty() && body_ns != ns {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ));
                }
            }
        }
        let precondition = meta_str(&obj, "resourceVersion").to_owned();
        for _ in 0..RETRIES {
            let (current, rev) = self.read(res, ns, name).await?.ok_or_else(|| not_found(res, name))?;
            if !precondition.is_empty() && precondition != rev.to_string() {
                return Err(conflict(res, name, MODIFIED));
            }
            match self
                .write_update(res, ns, name, obj.clone(), &current, rev, ctx, None)
                .await?
            {
                Some(v) => return Ok(v),
                None if !precondition.is_empty() => return Err(conflict(res, name, MODIFIED)),
                None => {}
            }
        }
        Err(conflict(res, name, MODIFIED))
    }

    /// Applies a PATCH body and writes the result.
    pub(crate) async fn patch_in(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        kind: PatchType,
        body: &[u8],
        ctx: WriteCtx<'_>,
    ) -> Result<Value, ApiError> {
        let builtin = matches!(res.group, "" | "rbac.authorization.k8s.io");
        let body = bytes::Bytes::copy_from_slice(body);
        for _ in 0..RETRIES {
            let (current, rev) = self.read(res, ns, name).await?.ok_or_else(|| not_found(res, name))?;
            let (doc, raw) = (current.clone(), body.clone());
            let patched = self
                .offload(raw.len(), move || patch::apply(&doc, kind, &raw, builtin))
                .await?;
            let wanted = meta_str(&patched, "resourceVersion").to_owned();
            let pinned = !wanted.is_empty() && wanted != rev.to_string();
            if pinned {
                return Err(conflict(res, name, MODIFIED));
            }
            if name_of(&patched) != name {
                return Err(invalid(
                    res,
                    name,
                    vec![FieldCause::invalid(
                        "metadata.name",
                        name_of(&patched),
                        "field is immutable",
                    )],
                ));
            }
            let patched = check_type(res, patched)?;
            if let Some(v) = self
                .write_update(res, ns, name, patched, &current, rev, ctx, None)
                .await?
            {
                return Ok(v);
            }
        }
        Err(conflict(res, name, MODIFIED))
    }

    /// Server-side apply of the body `raw` (`PATCH` with `application/apply-patch+yaml`):
    /// creates the object if it does not exist, else merges it under the field managers'
    /// rules (see [`managed::apply`]). Returns the object and whether it was created.
    pub(crate) async fn apply_in(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        raw: &[u8],
        opts: ApplyOptions,
        ctx: WriteCtx<'_>,
    ) -> Result<(Value, bool, Vec<String>), ApiError> {
        let strict = opts.field_validation.as_deref() == Some("Strict");
        let body = bytes::Bytes::copy_from_slice(raw);
        let max = self.options.max_body_bytes;
        let cfg = self
            .offload(body.len(), move || {
                managed::decode_config(&body, strict, max).map_err(|e| {
                    let prefix = if strict {
                        "error strict decoding YAML"
                    } else {
                        "error decoding YAML"
                    };
                    ApiError::BadRequest(format!("{prefix}: {e}"))
                })
            })
            .await?;
        let cfg = check_applied(res, name, ns, cfg)?;
        let warnings = crate::fieldcheck::check(res, opts.field_validation.as_deref(), &cfg)?;
        let wanted = meta_str(&cfg, "resourceVersion").to_owned();
        let av = res.api_version();
        let cfg = std::sync::Arc::new(cfg);
        for _ in 0..RETRIES {
            let now = self.clock.now().to_rfc3339();
            let current = self.read(res, ns, name).await?;
            let entries = current
                .as_ref()
                .map(|(c, _)| managed::entries_of(c))
                .unwrap_or_default();
            if let Some((_, rev)) = &current
                && !wanted.is_empty()
                && wanted != rev.to_string()
            {
                return Err(conflict(res, name, MODIFIED));
            }
            // An apply creates only through the main resource (the status subresource's
            // update never creates, as kube-apiserver's StatusREST).
            if current.is_none() && (!wanted.is_empty() || !ctx.subresource.is_empty()) {
                return Err(not_found(res, name));
            }
            let live = current.as_ref().map(|(c, _)| {
                let mut c = c.clone();
                if let Some(Value::Object(m)) = c.get_mut("metadata") {
                    m.remove("managedFields");
                    m.remove("resourceVersion");
                }
                c
            });
            let (w_manager, w_sub, has_status) = (ctx.manager.to_owned(), ctx.subresource.to_owned(), res.has_status());
            let (cfg2, av2, force) = (cfg.clone(), av.clone(), opts.force);
            let size = raw.len();
            let (merged, new_entries) = self
                .offload(size, move || {
                    let w = Writer {
                        manager: &w_manager,
                        api_version: &av2,
                        subresource: &w_sub,
                        has_status,
                        now: &now,
                    };
                    managed::apply(&entries, live.as_ref(), &cfg2, &w, force).map_err(apply_error)
                })
                .await?;
            let mut merged = merged;
            if let Some(m) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            match current {
                None => {
                    if let Some(e) = opts.create_denied {
                        return Err(e);
                    }
                    match self.create_managed(res, ns, merged, ctx, Some(new_entries)).await {
                        Err(ApiError::AlreadyExists { .. }) => continue,
                        other => return other.map(|v| (v, true, warnings)),
                    }
                }
                Some((current, rev)) => {
                    let merged = check_type(res, merged)?;
                    if let Some(v) = self
                        .write_update(res, ns, name, merged, &current, rev, ctx, Some(new_entries))
                        .await?
                    {
                        return Ok((v, false, warnings));
                    }
                    if !wanted.is_empty() {
                        return Err(conflict(res, name, MODIFIED));
                    }
                }
            }
        }
        Err(conflict(res, name, MODIFIED))
    }

    /// Builds and writes the updated object; `Ok(None)` = lost a race (re-read and retry).
    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        body: Value,
        current: &Value,
        rev: Revision,
        ctx: WriteCtx<'_>,
        given: Option<Vec<Entry>>,
    ) -> Result<Option<Value>, ApiError> {
        let mut new = if ctx.subresource == "status" {
            let mut n = current.clone();
            if let Some(o) = n.as_object_mut() {
                match body.get("status") {
                    Some(s) => o.insert("status".into(), s.clone()),
                    None => o.remove("status"),
                };
            }
            n
        } else {
            let mut n = body;
            if ctx.http
                && res.has_status()
                && let Some(o) = n.as_object_mut()
            {
                match current.get("status") {
                    Some(s) => o.insert("status".into(), s.clone()),
                    None => o.remove("status"),
                };
            }
            n
        };
        restore_identity(&mut new, current)?;
        if ctx.http {
            // A Profile squatting a system namespace (from older data) cannot be changed by
            // callers; the controller may still record its Failed condition, and it can be deleted.
            self.check_profile_name(res, name)?;
        }
        let requested = {
            let m = meta_mut(&mut new)?;
            m.remove("selfLink");
            m.remove("managedFields").filter(|_| ctx.subresource.is_empty())
        };
        let managed_fields = self.managed_after(res, Some(current), &new, ctx, given, requested.as_ref());
        let generation = meta(current)
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let generation = if spec_changed(current, &new) {
            generation + 1
        } else {
            generation
        };
        meta_mut(&mut new)?.insert("generation".into(), json!(generation));
        let causes = validate_maps(meta(&new).unwrap_or(&Map::new()));
        if !causes.is_empty() {
            return Err(invalid(res, name, causes));
        }
        prepare_kind(res, &mut new, Some(current))?;
        if ctx.http {
            self.check_rbac_escalation(res, ns, name, &new, ctx.user).await?;
        }
        self.admit(
            admission_request(res, Operation::Update, ns, name, Some(current), ctx),
            &mut new,
        )
        .await?;
        restore_identity(&mut new, current)?;
        prepare_kind(res, &mut new, Some(current))?;
        revalidate(res, name, &new)?;
        set_managed(&mut new, managed_fields)?;
        meta_mut(&mut new)?.insert("resourceVersion".into(), Value::String(rev.to_string()));
        if new == *current {
            return Ok(Some(new));
        }
        let terminating = meta(&new).is_some_and(|m| m.get("deletionTimestamp").is_some_and(|d| !d.is_null()));
        let finalizers_done = meta(&new)
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if ctx.dry_run {
            return Ok(Some(new));
        }
        let key = res.key(ns, name);
        if terminating && finalizers_done {
            // The last finalizer of a terminating Namespace gone: it is emptied before it goes,
            // as by a DELETE without finalizers (a namespace of the same name made later must not
            // inherit its RoleBindings, Roles or Secrets).
            if res.group.is_empty() && res.plural == "namespaces" {
                self.purge_namespace(name).await?;
            }
            return match self.store.delete(&key, Some(rev)).await {
                Ok(kv) => Ok(Some(present(res, new, kv.mod_revision))),
                Err(StoreError::Conflict { .. }) => Ok(None),
                Err(StoreError::NotFound(_)) => Err(not_found(res, name)),
                Err(e) => Err(e.into()),
            };
        }
        match self
            .store
            .update(&key, encode_bounded(&new, self.max_object_bytes())?, Some(rev), None)
            .await
        {
            Ok(r) => Ok(Some(present(res, new, r))),
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(StoreError::NotFound(_)) => Err(not_found(res, name)),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes an object (or marks it terminating while finalizers remain).
    pub(crate) async fn delete_in(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        pre: &Preconditions,
        ctx: WriteCtx<'_>,
    ) -> Result<Value, ApiError> {
        for _ in 0..RETRIES {
            let (current, rev) = self.read(res, ns, name).await?.ok_or_else(|| not_found(res, name))?;
            if let Some(uid) = &pre.uid
                && uid != meta_str(&current, "uid")
            {
                let detail = format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&current, "uid")
                );
                return Err(conflict(res, name, &detail));
            }
            if let Some(want) = &pre.resource_version
                && *want != rev.to_string()
            {
                let detail = format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rev}"
                );
                return Err(conflict(res, name, &detail));
            }
            if ctx.dry_run {
                return Ok(current);
            }
            let has_finalizers = meta(&current)
                .and_then(|m| m.get("finalizers"))
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            let key = res.key(ns, name);
            if has_finalizers {
                if meta(&current).is_some_and(|m| m.get("deletionTimestamp").is_some_and(|d| !d.is_null())) {
                    return Ok(current);
                }
                let mut marked = current.clone();
                let m = meta_mut(&mut marked)?;
                m.insert("deletionTimestamp".into(), Value::String(self.clock.now().to_rfc3339()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                match self.store.update(&key, encode(&marked)?, Some(rev), None).await {
                    Ok(r) => return Ok(present(res, marked, r)),
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(StoreError::NotFound(_)) => return Err(not_found(res, name)),
                    Err(e) => return Err(e.into()),
                }
            }
            if res.group.is_empty() && res.plural == "namespaces" {
                self.purge_namespace(name).await?;
            }
            match self.store.delete(&key, Some(rev)).await {
                Ok(kv) => return decode(res, &kv),
                Err(StoreError::Conflict { .. }) => {}
                Err(StoreError::NotFound(_)) => return Err(not_found(res, name)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(conflict(res, name, MODIFIED))
    }

    /// Before Namespace `name` is created, where none exists: what other APIs still keep for
    /// the name (written after the last such namespace's purge) goes. An existing namespace's
    /// data is never touched (its create fails as AlreadyExists).
    async fn clear_for_new_namespace(&self, namespaces: &Resource, name: &str) -> Result<(), ApiError> {
        if self.namespace_data.is_empty() {
            return Ok(());
        }
        if self.store.get(&namespaces.key("", name)).await?.is_some() {
            return Ok(());
        }
        for data in &self.namespace_data {
            data.before_create(name).await?;
        }
        Ok(())
    }

    /// Deletes every namespaced object in `ns`, then what other APIs keep for it (the namespace
    /// controller's job, done inline).
    async fn purge_namespace(&self, ns: &str) -> Result<(), ApiError> {
        for res in registry::namespaced_storage() {
            let prefix = res.list_prefix(Some(ns));
            // Again until empty: an object created meanwhile goes too.
            loop {
                let all = kfsec_store::list_all(self.store.as_ref(), &prefix).await?;
                if all.items.is_empty() {
                    break;
                }
                for kv in all.items {
                    match self.store.delete(&kv.key, None).await {
                        Ok(_) | Err(StoreError::NotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        for data in &self.namespace_data {
            data.purge_namespace(ns).await?;
        }
        Ok(())
    }
}

fn admission_request<'a>(
    res: &'static Resource,
    operation: Operation,
    namespace: &'a str,
    name: &'a str,
    old_object: Option<&'a Value>,
    ctx: WriteCtx<'a>,
) -> AdmissionAttributes<'a> {
    AdmissionAttributes {
        operation,
        resource: res,
        subresource: ctx.subresource,
        namespace,
        name,
        old_object,
        user: ctx.user,
        dry_run: ctx.dry_run,
    }
}

/// Validates metadata maps again (after admission plugins may have changed them).
fn revalidate(res: &Resource, name: &str, obj: &Value) -> Result<(), ApiError> {
    let causes = validate_maps(meta(obj).unwrap_or(&Map::new()));
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(res, name, causes))
    }
}

/// Checks an applied configuration against the request as kube-apiserver does: its
/// `apiVersion` is exactly the URL's, its `kind` the resource's, no `managedFields`, and name
/// and namespace (if given) those of the URL.
fn check_applied(res: &Resource, name: &str, ns: &str, cfg: Value) -> Result<Value, ApiError> {
    let av = cfg.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let want = res.api_version();
    if av != want {
        return Err(ApiError::BadRequest(format!(
            "Incorrect version specified in apply patch. Specified patch version: {av}, expected: {want}"
        )));
    }
    let kind = cfg.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != res.kind {
        return Err(ApiError::BadRequest(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            res.kind
        )));
    }
    if let Some(m) = cfg.get("metadata").filter(|m| !m.is_null()) {
        let Some(m) = m.as_object() else {
            return Err(ApiError::BadRequest("metadata must be a JSON object".into()));
        };
        if m.get("managedFields").is_some_and(|v| !v.is_null()) {
            return Err(ApiError::BadRequest("metadata.managedFields must be nil".into()));
        }
        let body_name = m.get("name").and_then(Value::as_str).unwrap_or("");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = m.get("namespace").and_then(Value::as_str).unwrap_or("");
        if res.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
    }
    let mut cfg = cfg;
    let m = meta_mut(&mut cfg)?;
    m.insert("name".into(), Value::String(name.to_owned()));
    if res.namespaced {
        m.insert("namespace".into(), Value::String(ns.to_owned()));
    }
    Ok(cfg)
}

/// The Status of a failed apply: 409 with one `FieldManagerConflict` cause per field, or 400.
fn apply_error(e: managed::ApplyError) -> ApiError {
    match e {
        managed::ApplyError::Config(c) => ApiError::BadRequest(format!("failed to create typed patch object: {c}")),
        managed::ApplyError::Conflicts(list) => ApiError::ApplyConflict {
            message: managed::conflict_message(&list),
            causes: list
                .into_iter()
                .map(|c| FieldCause {
                    reason: kfsec_types::CauseType::FieldManagerConflict,
                    field: c.path,
                    message: format!("conflict with {}", c.manager),
                })
                .collect(),
        },
    }
}

/// Sets (or, for `None`, removes) `metadata.managedFields`: computed before admission, so
/// neither a client nor an admission plugin can forge ownership.
fn set_managed(obj: &mut Value, managed_fields: Option<Value>) -> Result<(), ApiError> {
    let m = meta_mut(obj)?;
    match managed_fields {
        Some(v) => m.insert("managedFields".into(), v),
        None => m.remove("managedFields"),
    };
    Ok(())
}

/// Puts back the fields no update, patch or admission plugin may change.
fn restore_identity(new: &mut Value, from: &Value) -> Result<(), ApiError> {
    let src = meta(from).cloned().unwrap_or_default();
    let m = meta_mut(new)?;
    for k in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match src.get(k) {
            Some(v) => {
                m.insert(k.to_owned(), v.clone());
            }
            None => {
                m.remove(k);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn type_checks() {
        let cm = registry::find("", "v1", "configmaps").unwrap();
        assert!(check_type(cm, json!({"apiVersion": "v1", "kind": "ConfigMap"})).is_ok());
        assert!(check_type(cm, json!({})).is_ok());
        assert_eq!(check_type(cm, json!({"apiVersion": "v2"})).unwrap_err().code(), 400);
        assert_eq!(check_type(cm, json!({"kind": "Secret"})).unwrap_err().code(), 400);
        assert_eq!(check_type(cm, json!([1])).unwrap_err().code(), 400);
        assert_eq!(check_type(cm, json!({"metadata": 5})).unwrap_err().code(), 400);
        let p1 = registry::find("kubeflow.org", "v1", "profiles").unwrap();
        let v = check_type(p1, json!({"apiVersion": "kubeflow.org/v1beta1", "kind": "Profile"})).unwrap();
        assert_eq!(v["apiVersion"], "kubeflow.org/v1");
    }
}
