//! Request routing: method and path (after `/pipeline`) to a handler, the caller's identity,
//! the query and the bounded body; answers are JSON, errors go through `error_response`.
//!
//! Invariants: no handler runs without an `Identity` (401 otherwise); whatever can be authorized
//! from the path and the query (an upload's namespace, a version's parent pipeline) is
//! authorized before a byte of the body is read, so an unauthorised upload costs nothing; the
//! body is read with a hard limit before any parsing (413 above it), and a large JSON body is
//! parsed on the bounded blocking pool, never on an async worker; an unknown path or method is
//! KFP's NotFound JSON, never an HTML page or a panic.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kfsec_api::audit;
use kfsec_types::{Failure, Identity, Refusal};
use serde_json::{Value, json};

use crate::error::{KfpError, KfpResult, error_response};
use crate::{Kfp, experiments, jobs, pipelines, report, runs};

/// One parsed request.
#[derive(Debug)]
pub struct Req {
    /// The caller.
    pub who: Identity,
    /// Query pairs, decoded.
    pub query: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// `Content-Type`.
    pub content_type: String,
    /// Called under `/apis/v2beta1`.
    pub v2: bool,
    /// The body already parsed as a JSON object (large bodies are parsed off the async workers).
    pub parsed: Option<Result<Value, String>>,
}

impl Req {
    /// A query parameter ("" when absent); `a.b` also matches its camelCase spelling.
    pub fn q(&self, key: &str) -> String {
        let camel = crate::json::camel(key);
        self.query
            .iter()
            .find(|(k, _)| k == key || *k == camel)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// The body as a JSON object.
    pub fn json(&self) -> KfpResult<Value> {
        match &self.parsed {
            Some(Ok(v)) => Ok(v.clone()),
            Some(Err(m)) => Err(KfpError::InvalidInput(m.clone())),
            None => crate::json::body_object(&self.body),
        }
    }
}

fn not_found() -> KfpError {
    KfpError::NotFound("Not Found".into())
}

/// Bodies above this size are parsed on the blocking pool.
const INLINE_PARSE_BYTES: usize = 64 * 1024;

/// The single entry point for every KFP path; the request's audit context is current while it
/// is served, so each authorization check records its decision (`access::check`).
pub async fn dispatch(State(k): State<Arc<Kfp>>, req: Request) -> Response {
    let ctx = audit::RequestAudit::from_extensions(req.extensions());
    audit::scope(ctx, serve(k, req)).await
}

async fn serve(k: Arc<Kfp>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Some(who) = parts.extensions.get::<Identity>().cloned() else {
        return error_response(&KfpError::Unauthenticated(crate::error::NO_IDENTITY.into()));
    };
    let path = parts.uri.path();
    let path = path.strip_prefix("/pipeline").unwrap_or(path);
    let query: Vec<(String, String)> = url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let v2 = segs.get(1) == Some(&"v2beta1");
    let mut r = Req {
        who,
        query,
        body: Bytes::new(),
        content_type,
        v2,
        parsed: None,
    };
    let result = match segs.as_slice() {
        ["apis", "v1beta1" | "v2beta1", rest @ ..] => match before_body(&k, &parts.method, rest, &r).await {
            Err(e) => Err(e),
            Ok(()) => match read_body(&k, body, &mut r, json_body(rest)).await {
                Err(e) => Err(e),
                Ok(()) => route(&k, &parts.method, rest, &r).await,
            },
        },
        _ => Err(not_found()),
    };
    match result {
        Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
        Err(e) if e.code() == crate::error::code::INTERNAL => {
            // The cause goes to the log under an incident id; the client sees the id only.
            let r = Refusal::failure(Failure::Internal, k.rng.as_ref());
            tracing::error!(incident = %r.incident_id(), error = %e, path = %parts.uri.path(), "kfp request failed");
            error_response(&KfpError::Failed(r))
        }
        Err(e) => {
            if e.code() == crate::error::code::DATA_LOSS {
                tracing::error!(error = %e, path = %parts.uri.path(), "kfp request failed");
            }
            error_response(&e)
        }
    }
}

/// Whether the handler of `rest` reads its body as a JSON object (not a multipart upload, not a
/// persistence-agent report).
fn json_body(rest: &[&str]) -> bool {
    !matches!(
        rest,
        ["workflows" | "scheduledworkflows"] | ["pipelines", "upload" | "upload_version"]
    )
}

/// Reads the bounded body into `r`; a large JSON body is parsed off the async workers.
async fn read_body(k: &Kfp, body: axum::body::Body, r: &mut Req, json: bool) -> KfpResult<()> {
    let body = kfsec_api::body::read_bounded(body, k.settings.max_body_bytes)
        .await
        .map_err(|_| {
            KfpError::TooLarge(format!(
                "The request body is larger than the maximum of {} bytes",
                k.settings.max_body_bytes
            ))
        })?;
    if json && body.len() > INLINE_PARSE_BYTES {
        let b = body.clone();
        let parsed = k
            .offload(move || Ok(crate::json::body_object(&b).map_err(|e| e.external())))
            .await?;
        r.parsed = Some(parsed);
    }
    r.body = body;
    Ok(())
}

/// Authorizes what the path and the query already tell, before the body is read: an upload's
/// target namespace, an upload's or a new version's parent pipeline. The handlers check again
/// (with the body's details); this only makes sure an unauthorised body is never read.
async fn before_body(k: &Kfp, m: &Method, rest: &[&str], r: &Req) -> KfpResult<()> {
    if m != Method::POST {
        return Ok(());
    }
    match rest {
        ["pipelines", "upload"] => pipelines::authorize_upload(k, r),
        ["pipelines", "upload_version"] => pipelines::authorize_upload_version(k, r).await,
        ["pipelines", id, "versions"] if r.v2 => pipelines::authorize_new_version(k, r, id).await,
        ["workflows"] => report::authorize_report(k, r, false),
        ["scheduledworkflows"] => report::authorize_report(k, r, true),
        _ => Ok(()),
    }
}

/// `id:action` → (`id`, `action`).
fn action(seg: &str) -> (&str, &str) {
    seg.split_once(':').unwrap_or((seg, ""))
}

async fn route(k: &Kfp, m: &Method, rest: &[&str], r: &Req) -> KfpResult<Value> {
    let get = m == Method::GET;
    let post = m == Method::POST;
    let del = m == Method::DELETE;
    match rest {
        ["healthz"] if get => Ok(healthz(r.v2)),
        // experiments
        ["experiments"] if post => experiments::create(k, r).await,
        ["experiments"] if get => experiments::list(k, r).await,
        ["experiments", seg] => {
            let (id, act) = action(seg);
            match (act, get, post, del) {
                ("", true, _, _) => experiments::get(k, r, id).await,
                ("", _, _, true) => experiments::delete(k, r, id).await,
                ("archive", _, true, _) => experiments::set_archived(k, r, id, true).await,
                ("unarchive", _, true, _) => experiments::set_archived(k, r, id, false).await,
                _ => Err(not_found()),
            }
        }
        // runs
        ["runs"] if post => runs::create(k, r).await,
        ["runs"] if get => runs::list(k, r).await,
        ["runs", seg] => {
            let (id, act) = action(seg);
            match (act, get, post, del) {
                ("", true, _, _) => runs::get(k, r, id).await,
                ("", _, _, true) => runs::delete(k, r, id).await,
                ("archive", _, true, _) => runs::set_archived(k, r, id, true).await,
                ("unarchive", _, true, _) => runs::set_archived(k, r, id, false).await,
                ("terminate", _, true, _) if r.v2 => runs::terminate(k, r, id).await,
                ("retry", _, true, _) if r.v2 => runs::retry(k, r, id).await,
                ("reportMetrics", _, true, _) if !r.v2 => runs::report_metrics(k, r, id).await,
                _ => Err(not_found()),
            }
        }
        ["runs", id, "terminate"] if post && !r.v2 => runs::terminate(k, r, id).await,
        ["runs", id, "retry"] if post && !r.v2 => runs::retry(k, r, id).await,
        ["runs", run, "nodes", node, "artifacts", seg] if get => match action(seg) {
            (name, "read") => crate::artifacts::read_run_artifact(k, r, run, node, name).await,
            _ => Err(not_found()),
        },
        // jobs (v1) and recurring runs (v2)
        ["jobs"] if post && !r.v2 => jobs::create(k, r).await,
        ["jobs"] if get && !r.v2 => jobs::list(k, r).await,
        ["recurringruns"] if post && r.v2 => jobs::create(k, r).await,
        ["recurringruns"] if get && r.v2 => jobs::list(k, r).await,
        ["jobs", id] if get && !r.v2 => jobs::get(k, r, id).await,
        ["jobs", id] if del && !r.v2 => jobs::delete(k, r, id).await,
        ["jobs", id, "enable"] if post && !r.v2 => jobs::set_enabled(k, r, id, true).await,
        ["jobs", id, "disable"] if post && !r.v2 => jobs::set_enabled(k, r, id, false).await,
        ["recurringruns", seg] if r.v2 => {
            let (id, act) = action(seg);
            match (act, get, post, del) {
                ("", true, _, _) => jobs::get(k, r, id).await,
                ("", _, _, true) => jobs::delete(k, r, id).await,
                ("enable", _, true, _) => jobs::set_enabled(k, r, id, true).await,
                ("disable", _, true, _) => jobs::set_enabled(k, r, id, false).await,
                _ => Err(not_found()),
            }
        }
        // pipelines
        ["pipelines", "upload"] if post => pipelines::upload(k, r).await,
        ["pipelines", "upload_version"] if post => pipelines::upload_version(k, r).await,
        ["pipelines", "create"] if post && r.v2 => pipelines::create_with_version(k, r).await,
        ["pipelines", "names", name] if get && r.v2 => pipelines::get_by_name(k, r, &r.q("namespace"), name).await,
        ["namespaces", ns, "pipelines", name] if get && !r.v2 => pipelines::get_by_name(k, r, ns, name).await,
        ["pipelines"] if post => pipelines::create(k, r).await,
        ["pipelines"] if get => pipelines::list(k, r).await,
        ["pipelines", id] if get => pipelines::get(k, r, id).await,
        ["pipelines", id] if del => pipelines::delete(k, r, id).await,
        ["pipelines", id, "templates"] if get && !r.v2 => pipelines::template(k, r, id).await,
        ["pipelines", id, "default_version", vid] if post && !r.v2 => {
            pipelines::set_default_version(k, r, id, vid).await
        }
        ["pipelines", id, "versions"] if get && r.v2 => pipelines::list_versions(k, r, id).await,
        ["pipelines", id, "versions"] if post && r.v2 => pipelines::create_version(k, r, id).await,
        ["pipelines", _, "versions", vid] if get && r.v2 => pipelines::get_version(k, r, vid).await,
        ["pipelines", _, "versions", vid] if del && r.v2 => pipelines::delete_version(k, r, vid).await,
        ["pipeline_versions"] if get && !r.v2 => {
            let pid = crate::refs::query_key(&r.query, "resource_key")?
                .map(|(_, id)| id)
                .unwrap_or_default();
            pipelines::list_versions(k, r, &pid).await
        }
        ["pipeline_versions"] if post && !r.v2 => pipelines::create_version(k, r, "").await,
        ["pipeline_versions", vid] if get && !r.v2 => pipelines::get_version(k, r, vid).await,
        ["pipeline_versions", vid] if del && !r.v2 => pipelines::delete_version(k, r, vid).await,
        ["pipeline_versions", vid, "templates"] if get && !r.v2 => pipelines::version_template(k, r, vid).await,
        // the persistence agent
        ["workflows"] if post => report::workflow(k, r).await,
        ["scheduledworkflows"] if post => report::scheduled_workflow(k, r).await,
        _ => Err(not_found()),
    }
}

fn healthz(v2: bool) -> Value {
    let mut v = json!({"commit_sha": "unknown", "tag_name": "unknown", "multi_user": true});
    if v2 && let Some(m) = v.as_object_mut() {
        m.insert("pipeline_store".into(), Value::String("database".into()));
    }
    v
}
