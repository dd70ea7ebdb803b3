//! kfsec's read-only Pipelines view at `/pipeline/` (served when no route claims `/pipeline/`):
//! a namespace's experiments, runs with their state, recurring runs, and pipelines with their
//! versions (namespaced and shared), each at its own path (`/pipeline/runs/details/<id>`…), and
//! the one script (`/pipeline/kfsec-links.js`) that turns the KFP UI's `#/runs/details/<id>`
//! links, which the KFP SDK prints, into those paths. It lives in the composition because it
//! joins two crates: the data comes from `kfp` (`Kfp::read`, the API's own handlers), the HTML
//! from `idp::pages` (askama templates); neither crate depends on the other.
//!
//! Invariants: every read is `Kfp::read` with the caller's `Identity` (the gateway's pages
//! router puts it there after authentication), so KFP's own authorization decides — there is no
//! second copy of its rules; the namespace selector offers only namespaces where KFP lets the
//! caller list runs; an item the caller may not read and an item that does not exist get the same
//! 404 page (existence is not revealed); a failure of kfsec is a generic page, the cause logged;
//! nothing here writes.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use kfsec_api::ApiServer;
use kfsec_idp::pages::{ItemField, ItemRow, ItemSection};
use kfsec_kfp::view::Read;
use kfsec_kfp::{Kfp, KfpError};
use kfsec_types::Identity;
use serde_json::Value;

/// The paths this view owns, for the gateway's pages.
pub const PATHS: &[&str] = &["/pipeline", "/pipeline/"];

struct Ui {
    kfp: Arc<Kfp>,
    api: Arc<ApiServer>,
}

/// The router of the view (requests carry the caller's `Identity`).
pub fn router(kfp: Arc<Kfp>, api: Arc<ApiServer>) -> Router {
    let script = || async { kfsec_idp::pages::pipeline_links_script() };
    // No router fallback: the composition merges this into the pages router, whose fallback
    // answers unknown paths.
    Router::new()
        .route("/pipeline", get(to_slash).fallback(wrong_method))
        .route("/pipeline/", get(overview).fallback(wrong_method))
        .route("/pipeline/kfsec-links.js", get(script).fallback(wrong_method))
        .route("/pipeline/runs/details/{id}", get(run).fallback(wrong_method))
        .route(
            "/pipeline/experiments/details/{id}",
            get(experiment).fallback(wrong_method),
        )
        .route("/pipeline/pipelines/details/{id}", get(pipeline).fallback(wrong_method))
        .route(
            "/pipeline/recurringruns/details/{id}",
            get(recurring_run).fallback(wrong_method),
        )
        // KFP's checks name each page's request in its audit Event (`kfsec_api::audit`).
        .layer(axum::middleware::from_fn(kfsec_api::audit::layer))
        .with_state(Arc::new(Ui { kfp, api }))
}

async fn wrong_method() -> Response {
    kfsec_idp::error_page(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        "This page is read-only.",
    )
}

/// The one answer for an item that is missing or not the caller's.
fn no_item(what: &str) -> Response {
    kfsec_idp::error_page(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("No {what} with this id that you can read."),
    )
}

fn failed(e: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "pipelines page failed");
    kfsec_idp::error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        "The pipelines could not be read. Try again later.",
    )
}

/// A refused item read: missing and refused look the same; a failure of kfsec is logged.
fn refused(e: &KfpError, what: &str) -> Response {
    match e.code() {
        kfsec_kfp::error_code::NOT_FOUND
        | kfsec_kfp::error_code::PERMISSION_DENIED
        | kfsec_kfp::error_code::INVALID_ARGUMENT => no_item(what),
        _ => failed(e),
    }
}

async fn to_slash(uri: axum::http::Uri) -> Response {
    let to = match uri.query() {
        Some(q) => format!("/pipeline/?{q}"),
        None => "/pipeline/".to_owned(),
    };
    kfsec_gateway::responses::redirect(StatusCode::FOUND, &to)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn items<'a>(v: &'a Value, k: &str) -> &'a [Value] {
    v.get(k).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn row(kind: &str, v: &Value, id_key: &str, detail: String) -> ItemRow {
    let id = s(v, id_key);
    let name = s(v, "display_name");
    ItemRow {
        href: format!("/pipeline/{kind}/details/{}", url_segment(id)),
        name: if name.is_empty() {
            id.to_owned()
        } else {
            name.to_owned()
        },
        detail,
        created: s(v, "created_at").to_owned(),
    }
}

/// An id as one path segment (ids are kfsec's own, but never trusted to be).
fn url_segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// A section whose columns are Name, `detail_heading` and Created.
fn section(id: &str, title: &str, detail_heading: &str, rows: Vec<ItemRow>) -> ItemSection {
    ItemSection {
        id: id.into(),
        title: title.into(),
        columns: ("Name".into(), detail_heading.into(), "Created".into()),
        rows,
    }
}

/// `label`: `value` linking to the `kind` page of `id` (plain text when `id` is empty).
fn link_field(label: &str, value: &str, kind: &str, id: &str) -> ItemField {
    ItemField {
        label: label.into(),
        value: if value.is_empty() { id.into() } else { value.into() },
        href: format!("/pipeline/{kind}/details/{}", url_segment(id)),
    }
}

/// The profile namespaces where KFP lets `who` list runs, sorted.
async fn readable_namespaces(ui: &Ui, who: &Identity) -> Result<Vec<String>, String> {
    let res = ApiServer::resource("kubeflow.org", "v1", "profiles").ok_or("profiles are not served")?;
    let list = ui.api.list_objects(res, None, "").await.map_err(|e| e.to_string())?;
    let mut out: Vec<String> = list
        .items
        .iter()
        .filter_map(|p| p.pointer("/metadata/name").and_then(Value::as_str))
        .filter(|ns| ui.kfp.may_read(who, ns))
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

#[derive(serde::Deserialize)]
struct NsQuery {
    #[serde(default)]
    ns: String,
}

/// Pipelines rows with their versions' names as the detail.
async fn pipeline_rows(ui: &Ui, who: &Identity, namespace: &str) -> Result<Vec<ItemRow>, KfpError> {
    let list = ui.kfp.read(who, Read::Pipelines(namespace)).await?;
    let mut rows = Vec::new();
    for p in items(&list, "pipelines") {
        let versions = ui.kfp.read(who, Read::Versions(s(p, "pipeline_id"))).await?;
        let names: Vec<&str> = items(&versions, "pipeline_versions")
            .iter()
            .map(|v| s(v, "display_name"))
            .collect();
        rows.push(row("pipelines", p, "pipeline_id", names.join(", ")));
    }
    Ok(rows)
}

async fn overview(
    State(ui): State<Arc<Ui>>,
    Extension(who): Extension<Identity>,
    Query(q): Query<NsQuery>,
) -> Response {
    let namespaces = match readable_namespaces(&ui, &who).await {
        Ok(n) => n,
        Err(e) => return failed(&e),
    };
    let selected = if q.ns.is_empty() {
        namespaces.first().cloned().unwrap_or_default()
    } else if namespaces.contains(&q.ns) {
        q.ns.clone()
    } else {
        return kfsec_idp::error_page(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "You cannot read the pipelines of this namespace.",
        );
    };
    let mut sections = Vec::new();
    let loaded: Result<(), KfpError> = async {
        if !selected.is_empty() {
            let ns = selected.as_str();
            // (what, list key, path kind, id key, detail key, section id, title, detail heading)
            let lists = [
                (
                    Read::Runs(ns),
                    "runs",
                    "runs",
                    "run_id",
                    "state",
                    "runs",
                    "Runs",
                    "State",
                ),
                (
                    Read::Experiments(ns),
                    "experiments",
                    "experiments",
                    "experiment_id",
                    "storage_state",
                    "experiments",
                    "Experiments",
                    "Storage",
                ),
                (
                    Read::RecurringRuns(ns),
                    "recurring_runs",
                    "recurringruns",
                    "recurring_run_id",
                    "status",
                    "recurring-runs",
                    "Recurring runs",
                    "Status",
                ),
            ];
            for (what, key, kind, id_key, detail, id, title, heading) in lists {
                let list = ui.kfp.read(&who, what).await?;
                let rows = items(&list, key)
                    .iter()
                    .map(|x| row(kind, x, id_key, s(x, detail).to_owned()))
                    .collect();
                sections.push(section(id, title, heading, rows));
            }
            let rows = pipeline_rows(&ui, &who, ns).await?;
            sections.push(section("pipelines", "Pipelines of the namespace", "Versions", rows));
        }
        let rows = pipeline_rows(&ui, &who, "").await?;
        sections.push(section("shared-pipelines", "Shared pipelines", "Versions", rows));
        Ok(())
    }
    .await;
    if let Err(e) = loaded {
        return match e.code() {
            kfsec_kfp::error_code::PERMISSION_DENIED => kfsec_idp::error_page(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "You cannot read the pipelines of this namespace.",
            ),
            _ => failed(&e),
        };
    }
    kfsec_idp::pages::pipelines_page(&who.user, &namespaces, &selected, &sections)
}

fn back(namespace: &str) -> String {
    if namespace.is_empty() {
        "/pipeline/".to_owned()
    } else {
        format!("/pipeline/?ns={}", url_segment(namespace))
    }
}

/// KFP's rendering of an unset time.
const NEVER: &str = "1970-01-01T00:00:00Z";

/// The fields of `v` named by `keys` (label, key) that have a value, as text.
fn fields(v: &Value, keys: &[(&str, &str)]) -> Vec<ItemField> {
    keys.iter()
        .filter_map(|(label, k)| {
            let x = s(v, k);
            // KFP's zero time stands for "not yet" (a run not finished).
            (!x.is_empty() && x != NEVER).then(|| ItemField {
                label: (*label).to_owned(),
                value: x.to_owned(),
                href: String::new(),
            })
        })
        .collect()
}

/// A field linking to experiment `id` under its name, and the experiment's namespace ("" when
/// the caller may not read it: the link then shows the id, and the page answers for itself).
async fn experiment_link(ui: &Ui, who: &Identity, id: &str) -> Option<(ItemField, String)> {
    if id.is_empty() {
        return None;
    }
    let e = ui.kfp.read(who, Read::Experiment(id)).await.ok();
    let (name, ns) = e
        .as_ref()
        .map(|e| (s(e, "display_name"), s(e, "namespace")))
        .unwrap_or_default();
    Some((link_field("Experiment", name, "experiments", id), ns.to_owned()))
}

/// A run parameter as a person reads it: a string without JSON's quotes, anything else as JSON.
fn parameter_text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

async fn run(State(ui): State<Arc<Ui>>, Extension(who): Extension<Identity>, Path(id): Path<String>) -> Response {
    let r = match ui.kfp.read(&who, Read::Run(&id)).await {
        Ok(r) => r,
        Err(e) => return refused(&e, "run"),
    };
    let mut f = fields(
        &r,
        &[
            ("Run id", "run_id"),
            ("Name", "display_name"),
            ("State", "state"),
            ("Description", "description"),
        ],
    );
    let experiment = experiment_link(&ui, &who, s(&r, "experiment_id")).await;
    let ns = experiment.as_ref().map(|(_, ns)| ns.clone()).unwrap_or_default();
    f.extend(experiment.map(|(field, _)| field));
    let recurring = s(&r, "recurring_run_id");
    if !recurring.is_empty() {
        f.push(link_field("Recurring run", "", "recurringruns", recurring));
    }
    f.extend(fields(
        &r,
        &[
            ("Storage", "storage_state"),
            ("Created", "created_at"),
            ("Scheduled", "scheduled_at"),
            ("Finished", "finished_at"),
        ],
    ));
    if let Some(p) = r.get("pipeline_version_reference") {
        let pipeline = s(p, "pipeline_id");
        if !pipeline.is_empty() {
            f.push(link_field("Pipeline", "", "pipelines", pipeline));
        }
        f.extend(fields(p, &[("Pipeline version", "pipeline_version_id")]));
    }
    if let Some(params) = r.pointer("/runtime_config/parameters").and_then(Value::as_object) {
        for (k, v) in params {
            f.push(ItemField {
                label: format!("Parameter {k}"),
                value: parameter_text(v),
                href: String::new(),
            });
        }
    }
    let history = items(&r, "state_history")
        .iter()
        .map(|h| ItemRow {
            href: String::new(),
            name: s(h, "state").to_owned(),
            detail: String::new(),
            created: s(h, "update_time").to_owned(),
        })
        .filter(|h| !h.name.is_empty())
        .collect::<Vec<_>>();
    let title = format!("Run {}", s(&r, "display_name"));
    let sections = if history.is_empty() {
        Vec::new()
    } else {
        vec![ItemSection {
            id: "history".into(),
            title: "State history".into(),
            columns: ("State".into(), String::new(), "Since".into()),
            rows: history,
        }]
    };
    kfsec_idp::pages::pipeline_item_page(&title, &back(&ns), &f, &sections)
}

async fn experiment(
    State(ui): State<Arc<Ui>>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> Response {
    let e = match ui.kfp.read(&who, Read::Experiment(&id)).await {
        Ok(e) => e,
        Err(e) => return refused(&e, "experiment"),
    };
    let ns = s(&e, "namespace").to_owned();
    let f = fields(
        &e,
        &[
            ("Experiment id", "experiment_id"),
            ("Name", "display_name"),
            ("Description", "description"),
            ("Namespace", "namespace"),
            ("Storage", "storage_state"),
            ("Created", "created_at"),
            ("Last run", "last_run_created_at"),
        ],
    );
    let runs = match ui.kfp.read(&who, Read::Runs(&ns)).await {
        Ok(r) => r,
        Err(e) => return refused(&e, "experiment"),
    };
    let rows = items(&runs, "runs")
        .iter()
        .filter(|r| s(r, "experiment_id") == s(&e, "experiment_id"))
        .map(|r| row("runs", r, "run_id", s(r, "state").to_owned()))
        .collect();
    let title = format!("Experiment {}", s(&e, "display_name"));
    kfsec_idp::pages::pipeline_item_page(&title, &back(&ns), &f, &[section("runs", "Runs", "State", rows)])
}

async fn recurring_run(
    State(ui): State<Arc<Ui>>,
    Extension(who): Extension<Identity>,
    Path(id): Path<String>,
) -> Response {
    let j = match ui.kfp.read(&who, Read::RecurringRun(&id)).await {
        Ok(j) => j,
        Err(e) => return refused(&e, "recurring run"),
    };
    let mut f = fields(
        &j,
        &[
            ("Recurring run id", "recurring_run_id"),
            ("Name", "display_name"),
            ("Description", "description"),
            ("Namespace", "namespace"),
        ],
    );
    f.extend(
        experiment_link(&ui, &who, s(&j, "experiment_id"))
            .await
            .map(|(field, _)| field),
    );
    f.extend(fields(
        &j,
        &[("Status", "status"), ("Mode", "mode"), ("Created", "created_at")],
    ));
    if let Some(t) = j.get("trigger") {
        f.push(ItemField {
            label: "Trigger".into(),
            value: t.to_string(),
            href: String::new(),
        });
    }
    let title = format!("Recurring run {}", s(&j, "display_name"));
    kfsec_idp::pages::pipeline_item_page(&title, &back(s(&j, "namespace")), &f, &[])
}

async fn pipeline(State(ui): State<Arc<Ui>>, Extension(who): Extension<Identity>, Path(id): Path<String>) -> Response {
    let p = match ui.kfp.read(&who, Read::Pipeline(&id)).await {
        Ok(p) => p,
        Err(e) => return refused(&e, "pipeline"),
    };
    let versions = match ui.kfp.read(&who, Read::Versions(&id)).await {
        Ok(v) => v,
        Err(e) => return refused(&e, "pipeline"),
    };
    let mut f = fields(
        &p,
        &[
            ("Pipeline id", "pipeline_id"),
            ("Name", "display_name"),
            ("Description", "description"),
            ("Namespace", "namespace"),
            ("Created", "created_at"),
        ],
    );
    if s(&p, "namespace").is_empty() {
        f.push(ItemField {
            label: "Namespace".into(),
            value: "(shared)".into(),
            href: String::new(),
        });
    }
    let rows = items(&versions, "pipeline_versions")
        .iter()
        .map(|v| ItemRow {
            href: String::new(),
            name: s(v, "display_name").to_owned(),
            detail: s(v, "pipeline_version_id").to_owned(),
            created: s(v, "created_at").to_owned(),
        })
        .collect();
    let title = format!("Pipeline {}", s(&p, "display_name"));
    kfsec_idp::pages::pipeline_item_page(
        &title,
        &back(s(&p, "namespace")),
        &f,
        &[section("versions", "Versions", "Version id", rows)],
    )
}
