//! The HTTP entry point: identity and impersonation, routing, verb mapping, authorization, body
//! decoding, and the response shapes (objects, lists, Tables, watch streams) of every resource
//! request.
//!
//! Invariants: no resource handler runs before the authorizer allowed the exact (user, verb,
//! group, resource, subresource, namespace, name) it is about to touch; a missing identity is a
//! 401; bodies are capped (413) and decoded strictly (400/415), large ones on the bounded blocking
//! pool (never on an async worker); discovery documents are served to
//! every authenticated caller, like Kubernetes' `system:discovery` role, and expose only the
//! static registry.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kfsec_types::Identity;
use kfsec_types::identity::UserInfo;
use serde_json::{Value, json};

use crate::authorize::RequestAttributes;
use crate::authorize::{ResourceAttributes, attributes_for};
use crate::discovery;
use crate::objects::{ApplyOptions, ListQuery, Preconditions, WriteCtx};
use crate::patch::PatchType;
use crate::registry::Backing;
use crate::route::{self, Query, Route, Target};
use crate::selector::{FieldSelector, LabelQuery};
use crate::status::{ApiError, FieldCause, status_response};
use crate::table::{self, Format, Include};
use crate::watch::WatchParams;
use crate::{ApiServer, audit};
use crate::{fieldcheck, openapi};

/// The axum handler for every API path.
pub(crate) async fn handle(State(api): State<Arc<ApiServer>>, req: Request) -> Response {
    let ctx = kfsec_audit::RequestAudit::from_extensions(req.extensions());
    audit::scope(ctx, async {
        match api.serve(req).await {
            Ok(r) => r,
            Err(e) => status_response(&e, api.rng.as_ref()),
        }
    })
    .await
}

pub(crate) fn json_response(code: StatusCode, v: &Value) -> Response {
    let mut resp = (code, v.to_string()).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Parses a create/update body by its content type; `max` is the body limit, which a YAML
/// body's aliases may not expand its scalars beyond.
fn decode_object(ct: &str, body: &[u8], max: usize) -> Result<Value, ApiError> {
    let base = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match base.as_str() {
        "" | "application/json" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the body of the request could not be decoded as JSON: {e}"))),
        "application/vnd.kubernetes.protobuf" => crate::proto::decode_body(body).map_err(|e| match e {
            crate::proto::ProtoError::Unsupported(_) => ApiError::UnsupportedMediaType(e.to_string()),
            crate::proto::ProtoError::Malformed(_) => ApiError::BadRequest(e.to_string()),
        }),
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            let text =
                std::str::from_utf8(body).map_err(|_| ApiError::BadRequest("the YAML body is not UTF-8".into()))?;
            // Aliases replay their anchor: a 50 KB body could otherwise decode to 60 MB. Its
            // scalars may total what one body may carry (at least twice its own length: an
            // escape such as `\L` decodes longer than it is written).
            let options = crate::body::yaml_options(body.len(), max);
            serde_saphyr::from_str_with_options::<Value>(text, options)
                .map_err(|e| ApiError::BadRequest(format!("the body of the request could not be decoded as YAML: {e}")))
        }
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {ct:?})"
        ))),
    }
}

fn parse_usize(q: &Query, k: &str) -> Result<Option<u64>, ApiError> {
    match q.get(k).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("invalid {k}: {v:?}"))),
    }
}

/// The field manager of a write (`?fieldManager=`, else the User-Agent's product, as
/// kube-apiserver), after kube-apiserver's checks of the write options (422 `…Options` Invalid).
fn write_manager(verb: &str, q: &Query, headers: &HeaderMap) -> Result<String, ApiError> {
    let kind = match verb {
        "create" => "CreateOptions",
        "update" => "UpdateOptions",
        "patch" => "PatchOptions",
        _ => return Ok(String::new()),
    };
    let given = q.get("fieldManager").unwrap_or("");
    let mut causes = Vec::new();
    if verb == "patch" {
        let apply = PatchType::from_content_type(&content_type(headers)).is_ok_and(|t| t == PatchType::Apply);
        if !apply && q.get("force").is_some() {
            causes.push(FieldCause::forbidden(
                "force",
                "may not be specified for non-apply patch",
            ));
        }
        if apply && given.is_empty() {
            causes.push(FieldCause::required("fieldManager", "is required for apply patch"));
        }
    }
    if given.len() > MAX_FIELD_MANAGER {
        causes.push(FieldCause {
            reason: kfsec_types::CauseType::FieldValueTooLong,
            field: "fieldManager".into(),
            message: format!("Too long: may not be more than {MAX_FIELD_MANAGER} bytes"),
        });
    }
    if !given.chars().all(printable) {
        causes.push(FieldCause::invalid(
            "fieldManager",
            given,
            "must only contain printable characters",
        ));
    }
    if !causes.is_empty() {
        return Err(ApiError::Invalid {
            kind: kind.into(),
            group: "meta.k8s.io".into(),
            name: String::new(),
            causes,
        });
    }
    if !given.is_empty() {
        return Ok(given.to_owned());
    }
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut out = String::new();
    for c in agent.split('/').next().unwrap_or("").chars().filter(|c| printable(*c)) {
        if out.len() >= MAX_FIELD_MANAGER {
            break;
        }
        out.push(c);
    }
    Ok(out)
}

/// The audit reason of a discovery request no RBAC binding grants (kfsec serves discovery to
/// every authenticated caller).
const DISCOVERY_REASON: &str = "kfsec: discovery is served to every authenticated user";

/// The longest field manager name (kube-apiserver's `FieldManagerMaxLength`).
const MAX_FIELD_MANAGER: usize = 128;

/// Go's `unicode.IsPrint`, near enough: no control characters, no space but ASCII space.
fn printable(c: char) -> bool {
    c == ' ' || !(c.is_control() || c.is_whitespace())
}

fn dry_run(q: &Query) -> Result<bool, ApiError> {
    match q.get("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "unsupported dryRun value {other:?}: only All is supported"
        ))),
    }
}

/// The Kubernetes verb of a resource request (`None`: no verb serves this method there).
fn resource_verb(method: &Method, t: &Target, query: &Query) -> Option<&'static str> {
    let watch = query.flag("watch");
    Some(match (method, t.name.is_some()) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) => "get",
        (&Method::POST, false) => "create",
        (&Method::POST, true) if t.subresource.as_deref() == Some("token") => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => return None,
    })
}

/// Records a refused impersonation in the audit Event: the verb and objectRef of the request the
/// caller attempted (from its path, as kube-apiserver's request info names them: `namespaces/NAME`
/// in namespace NAME), decision `forbid`, and as the reason the refusal the caller was sent
/// (which impersonation was refused).
fn audit_refused_impersonation(method: &Method, uri: &axum::http::Uri, refusal: &str) {
    if !audit::active() {
        return;
    }
    if let Ok(Route::Resource(t)) = route::parse(uri.path())
        && let Some(verb) = resource_verb(method, &t, &Query::parse(uri.query()))
    {
        let res = t.res;
        let name = t.name.clone().unwrap_or_default();
        let namespace = if res.group.is_empty() && res.plural == "namespaces" {
            name.clone()
        } else {
            t.namespace.clone().unwrap_or_default()
        };
        let object = audit::ObjectRef {
            subresource: t.subresource.clone(),
            ..audit::object_ref(res.group, res.version, res.plural, &namespace, &name)
        };
        audit::decided(verb, object, false, refusal);
    } else {
        audit::decided_non_resource(&method.as_str().to_ascii_lowercase(), false, refusal);
    }
}

impl ApiServer {
    /// Reads and decodes a body (JSON, YAML, protobuf); a large one is decoded on the bounded
    /// blocking pool.
    async fn read_object(&self, headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
        let raw = self.read_body(body).await?;
        let ct = content_type(headers);
        let max = self.options.max_body_bytes;
        self.offload(raw.len(), move || decode_object(&ct, &raw, max)).await
    }

    async fn read_body(&self, body: Body) -> Result<bytes::Bytes, ApiError> {
        let max = self.options.max_body_bytes;
        crate::body::read_bounded(body, max).await.map_err(|e| match e {
            crate::body::BodyError::TooLarge => ApiError::TooLarge(max),
            crate::body::BodyError::Read => ApiError::BadRequest("failed to read the request body".into()),
        })
    }

    async fn serve(self: &Arc<Self>, req: Request) -> Result<Response, ApiError> {
        let identity = req
            .extensions()
            .get::<Identity>()
            .filter(|i| !i.user.is_empty())
            .cloned()
            .ok_or(ApiError::Unauthorized)?;
        let (parts, body) = req.into_parts();
        if let Some(len) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            && len > self.options.max_body_bytes
        {
            // Read (and discard) what the client is sending, so it sees the 413.
            let _ = self.read_body(body).await;
            return Err(ApiError::TooLarge(self.options.max_body_bytes));
        }
        let user = match self.effective_user(&identity, &parts.headers) {
            Ok(user) => user,
            Err(e) => {
                if let ApiError::Forbidden { message, .. } = &e {
                    audit_refused_impersonation(&parts.method, &parts.uri, message);
                }
                return Err(e);
            }
        };
        if parts.headers.contains_key("impersonate-user") {
            audit::impersonated(&user);
        }
        let route = route::parse(parts.uri.path())?;
        let query = Query::parse(parts.uri.query());
        if !matches!(route, Route::Resource(_)) {
            self.audit_discovery(&user, &parts.method, parts.uri.path());
        }
        let discovery_doc = |v: Option<Value>| -> Result<Response, ApiError> {
            if parts.method != Method::GET && parts.method != Method::HEAD {
                return Err(ApiError::MethodNotAllowed);
            }
            v.map(|v| json_response(StatusCode::OK, &v)).ok_or(ApiError::NoRoute)
        };
        match route {
            Route::Version => discovery_doc(Some(discovery::version(&self.options.git_version, &self.options.build))),
            Route::Api => discovery_doc(Some(discovery::api_versions())),
            Route::Apis => discovery_doc(Some(discovery::api_group_list())),
            Route::ApiGroup(g) => discovery_doc(discovery::api_group(&g)),
            Route::ResourceList { group, version } => discovery_doc(discovery::resource_list(&group, &version)),
            Route::OpenApiV3Root | Route::OpenApiV3(_) | Route::OpenApiV2 => {
                let which = match &route {
                    Route::OpenApiV3(p) => openapi::Which::V3(p),
                    Route::OpenApiV2 => openapi::Which::V2,
                    _ => openapi::Which::V3Index,
                };
                let now = self.clock.now().as_secs();
                openapi::serve(which, &parts.method, &parts.headers, query.get("hash"), now)
            }
            Route::Resource(t) => {
                self.resource_request(t, parts.method, &parts.headers, &query, body, &user)
                    .await
            }
        }
    }

    /// Records a discovery, OpenAPI or version request in the audit Event: a non-resource
    /// request every authenticated caller may make (what Kubernetes' `system:discovery` role
    /// grants), with RBAC's reason when a binding grants it.
    fn audit_discovery(&self, user: &UserInfo, method: &Method, path: &str) {
        if !audit::active() {
            return;
        }
        let verb = method.as_str().to_ascii_lowercase();
        let attrs = crate::authorize::Attributes::non_resource(user.username.clone(), user.groups.clone(), &verb, path);
        let decision = self.authz.authorize(&attrs);
        let reason = match decision.reason() {
            "" => DISCOVERY_REASON,
            r => r,
        };
        audit::decided_non_resource(&verb, true, reason);
    }

    #[allow(clippy::too_many_lines)]
    async fn resource_request(
        self: &Arc<Self>,
        t: Target,
        method: Method,
        headers: &HeaderMap,
        query: &Query,
        body: Body,
        user: &UserInfo,
    ) -> Result<Response, ApiError> {
        let res = t.res;
        let verb = resource_verb(&method, &t, query).ok_or(ApiError::MethodNotAllowed)?;
        let sub = t.subresource.clone().unwrap_or_default();
        let sub_verb = match sub.as_str() {
            "" => true,
            "token" => verb == "create",
            _ => matches!(verb, "get" | "update" | "patch"),
        };
        if !res.serves(verb) || !sub_verb {
            return Err(ApiError::MethodNotAllowed);
        }
        // A namespaced type's cluster-wide path serves only list and watch.
        if res.namespaced && t.namespace.is_none() && !matches!(verb, "list" | "watch") {
            return Err(ApiError::MethodNotAllowed);
        }
        let path_ns = t.namespace.clone().unwrap_or_default();
        let name = t.name.clone().unwrap_or_default();
        let lists = matches!(verb, "list" | "watch" | "deletecollection");
        let (labels, fields) = if lists {
            let l =
                LabelQuery::parse(query.get("labelSelector").unwrap_or("")).map_err(|e| ApiError::BadRequest(e.0))?;
            let mut f = FieldSelector::parse(query.get("fieldSelector").unwrap_or(""), res.kind)
                .map_err(|e| ApiError::BadRequest(e.0))?;
            if !name.is_empty() {
                f = FieldSelector::for_name(&name);
            }
            (l, f)
        } else {
            (LabelQuery::default(), FieldSelector::default())
        };
        // Kubernetes authorizes `namespaces/NAME` requests in namespace NAME, and list/watch with
        // a `metadata.name=` field selector as a request on that one name.
        let attr_ns = if res.group.is_empty() && res.plural == "namespaces" && !name.is_empty() {
            name.clone()
        } else {
            path_ns.clone()
        };
        let attr_name = if name.is_empty() {
            fields.pinned_name().map(str::to_owned).unwrap_or_default()
        } else {
            name.clone()
        };
        let attrs = attributes_for(
            user,
            ResourceAttributes {
                verb: verb.to_owned(),
                api_group: res.group.to_owned(),
                resource: res.plural.to_owned(),
                subresource: sub.clone(),
                namespace: attr_ns,
                name: attr_name,
            },
        );
        let decision = self.authz.authorize(&attrs);
        if audit::active()
            && let RequestAttributes::Resource(r) = &attrs.request
        {
            audit::decided(
                verb,
                audit::resource_ref(r, res.version),
                decision.is_allowed(),
                decision.reason(),
            );
        }
        if !decision.is_allowed() {
            return Err(ApiError::forbidden(&attrs));
        }

        if sub == "token" {
            let obj = self.read_object(headers, body).await?;
            let out = self.token_request(res, &path_ns, &name, user, obj).await?;
            return Ok(json_response(StatusCode::CREATED, &out));
        }
        if let Backing::Review(kind) = res.backing {
            let obj = self.read_object(headers, body).await?;
            let out = self.review(res, kind, &path_ns, user, obj).await?;
            return Ok(json_response(StatusCode::CREATED, &out));
        }

        let format = table::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
        let include = Include::parse(query.get("includeObject"));
        let now = i64::try_from(self.clock.now().as_secs()).unwrap_or(i64::MAX);
        let manager = write_manager(verb, query, headers)?;
        let ctx = WriteCtx {
            user,
            http: true,
            dry_run: dry_run(query)?,
            subresource: &sub,
            manager: &manager,
        };
        let one = |obj: Value| -> Value {
            match format {
                Format::Table(v) => {
                    let rv = obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                    table::table(res.kind, &[obj], v, include, now, json!({"resourceVersion": rv}))
                }
                Format::Objects => obj,
            }
        };
        match verb {
            "get" => {
                let obj = self.get_in(res, &path_ns, &name).await?;
                Ok(json_response(StatusCode::OK, &one(obj)))
            }
            "list" => {
                let limit = parse_usize(query, "limit")?.unwrap_or(0);
                let q = ListQuery {
                    labels,
                    fields,
                    limit: usize::try_from(limit).unwrap_or(usize::MAX),
                    continue_token: query.get("continue").map(str::to_owned),
                };
                let out = self.list_in(res, t.namespace.as_deref(), &q).await?;
                let mut meta = json!({"resourceVersion": out.revision.to_string()});
                if let (Some(c), Some(m)) = (&out.continue_token, meta.as_object_mut()) {
                    m.insert("continue".into(), json!(c));
                }
                let body = match format {
                    Format::Table(v) => table::table(res.kind, &out.items, v, include, now, meta),
                    Format::Objects => json!({
                        "kind": format!("{}List", res.kind),
                        "apiVersion": res.api_version(),
                        "metadata": meta,
                        "items": out.items,
                    }),
                };
                Ok(json_response(StatusCode::OK, &body))
            }
            "watch" => {
                let from = match query.get("resourceVersion").filter(|v| !v.is_empty()) {
                    None => None,
                    Some(v) => Some(
                        v.parse::<u64>()
                            .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {v:?}")))?,
                    ),
                };
                let max = self.options.max_watch_timeout;
                let timeout = parse_usize(query, "timeoutSeconds")?.map_or(max, |s| Duration::from_secs(s).min(max));
                self.watch(WatchParams {
                    res,
                    namespace: t.namespace.clone(),
                    query: ListQuery {
                        labels,
                        fields,
                        limit: 0,
                        continue_token: None,
                    },
                    from,
                    timeout,
                    format,
                    include,
                    attrs: attrs.clone(),
                })
                .await
            }
            "create" => {
                let obj = self.read_object(headers, body).await?;
                audit::request_body(res.plural, || Some(obj.clone()));
                let warn = fieldcheck::check(res, query.get("fieldValidation"), &obj)?;
                let out = self.create_in(res, &path_ns, obj, ctx).await?;
                audit::written(&out);
                Ok(fieldcheck::with_warnings(
                    json_response(StatusCode::CREATED, &out),
                    &warn,
                ))
            }
            "update" => {
                let obj = self.read_object(headers, body).await?;
                audit::request_body(res.plural, || Some(obj.clone()));
                let warn = fieldcheck::check(res, query.get("fieldValidation"), &obj)?;
                let out = self.update_in(res, &path_ns, &name, obj, ctx).await?;
                audit::written(&out);
                Ok(fieldcheck::with_warnings(json_response(StatusCode::OK, &out), &warn))
            }
            "patch" => {
                let kind = PatchType::from_content_type(&content_type(headers))?;
                let raw = self.read_body(body).await?;
                if audit::wants_body(res.plural) {
                    // Parsed off the async workers when large, like every body; a busy pool
                    // costs the Event its body, never the request.
                    let copy = raw.clone();
                    let parsed = self
                        .offload(raw.len(), move || Ok(serde_json::from_slice(&copy).ok()))
                        .await;
                    audit::request_body(res.plural, || parsed.ok().flatten());
                }
                if kind == PatchType::Apply {
                    // As kube-apiserver: an apply that creates also needs `create`.
                    let mut create = attrs.clone();
                    if let RequestAttributes::Resource(r) = &mut create.request {
                        r.verb = "create".into();
                    }
                    let create_denied =
                        (!self.authz.authorize(&create).is_allowed()).then(|| ApiError::forbidden(&create));
                    let denied_text = create_denied.as_ref().map(ToString::to_string);
                    let opts = ApplyOptions {
                        force: query.flag("force"),
                        field_validation: query.get("fieldValidation").map(str::to_owned),
                        create_denied,
                    };
                    let applied = self.apply_in(res, &path_ns, &name, &raw, opts, ctx).await;
                    // The apply would have created the object, which the caller may not.
                    if let Err(e @ ApiError::Forbidden { .. }) = &applied
                        && denied_text.as_deref() == Some(e.to_string().as_str())
                    {
                        audit::refused();
                    }
                    let (out, created, warn) = applied?;
                    audit::written(&out);
                    let code = if created { StatusCode::CREATED } else { StatusCode::OK };
                    return Ok(fieldcheck::with_warnings(json_response(code, &one(out)), &warn));
                }
                let warn = fieldcheck::check_patch(res, query.get("fieldValidation"), kind, &raw)?;
                let out = self.patch_in(res, &path_ns, &name, kind, &raw, ctx).await?;
                audit::written(&out);
                Ok(fieldcheck::with_warnings(json_response(StatusCode::OK, &out), &warn))
            }
            "delete" => {
                let raw = self.read_body(body).await?;
                let mut pre = Preconditions::default();
                let mut dry = ctx.dry_run;
                if !raw.is_empty() {
                    let opts = decode_object(&content_type(headers), &raw, self.options.max_body_bytes)?;
                    let s = |p: &str| opts.pointer(p).and_then(Value::as_str).map(str::to_owned);
                    pre.uid = s("/preconditions/uid");
                    pre.resource_version = s("/preconditions/resourceVersion");
                    if let Some(Value::Array(d)) = opts.get("dryRun") {
                        dry |= d.iter().any(|x| x == "All");
                    }
                }
                let out = self
                    .delete_in(res, &path_ns, &name, &pre, WriteCtx { dry_run: dry, ..ctx })
                    .await?;
                audit::written(&out);
                let pending = out.pointer("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null());
                if pending && !dry {
                    return Ok(json_response(StatusCode::ACCEPTED, &out));
                }
                // Like Kubernetes: most built-in kinds answer an immediate delete with a Success
                // Status; pods, namespaces and custom resources return the deleted object.
                let returns_object = !matches!(res.group, "" | "rbac.authorization.k8s.io")
                    || matches!(res.plural, "pods" | "namespaces");
                if returns_object {
                    return Ok(json_response(StatusCode::OK, &out));
                }
                let mut details = serde_json::Map::new();
                details.insert("name".into(), json!(name));
                if !res.group.is_empty() {
                    details.insert("group".into(), json!(res.group));
                }
                details.insert("kind".into(), json!(res.plural));
                if let Some(uid) = out.pointer("/metadata/uid") {
                    details.insert("uid".into(), uid.clone());
                }
                let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details});
                Ok(json_response(StatusCode::OK, &status))
            }
            "deletecollection" => {
                let q = ListQuery {
                    labels,
                    fields,
                    limit: 0,
                    continue_token: None,
                };
                let list = self.list_in(res, t.namespace.as_deref(), &q).await?;
                let mut deleted = Vec::new();
                for o in list.items {
                    let ns = crate::objects::namespace_of(&o).to_owned();
                    let n = crate::objects::name_of(&o).to_owned();
                    match self.delete_in(res, &ns, &n, &Preconditions::default(), ctx).await {
                        Ok(v) => deleted.push(v),
                        Err(ApiError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                let body = json!({
                    "kind": format!("{}List", res.kind),
                    "apiVersion": res.api_version(),
                    "metadata": {},
                    "items": deleted,
                });
                Ok(json_response(StatusCode::OK, &body))
            }
            _ => Err(ApiError::MethodNotAllowed),
        }
    }
}
