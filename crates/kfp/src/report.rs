//! The persistence agent's report endpoints (`POST …/workflows`, `POST …/scheduledworkflows`):
//! an Argo Workflow (or ScheduledWorkflow) as observed in the cluster updates the matching run
//! (label `pipeline/runid`) or job (the ScheduledWorkflow's uid, as in KFP).
//!
//! Invariants: the caller must be allowed verb `report` on `workflows` / `scheduledworkflows`
//! in group `pipelines.kubeflow.org` cluster-wide (KFP's check; its persistence agent holds a
//! ClusterRole for it) — a user's profile roles never grant that; a report can only change a
//! run in the workflow's own namespace; the body is parsed with bounds and bad input is
//! InvalidArgument.

use serde_json::{Map, Value};

use crate::access::{self, res};
use crate::error::{KfpError, KfpResult};
use crate::json;
use crate::routes::Req;
use crate::{Kfp, jobs, runs};

/// The workflow label holding the run id.
pub const RUN_ID_LABEL: &str = "pipeline/runid";

/// The body is the workflow JSON, or (grpc-gateway's `body: "workflow"`) a JSON string holding
/// it; parsed on the bounded blocking pool.
async fn parse_body(k: &Kfp, r: &Req, what: &'static str) -> KfpResult<(Value, Vec<u8>)> {
    let body = r.body.clone();
    k.offload(move || parse_report(&body, what)).await
}

fn parse_report(body: &[u8], what: &str) -> KfpResult<(Value, Vec<u8>)> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| KfpError::InvalidInput(format!("Could not unmarshal {what}: {e}")))?;
    let (obj, raw) = match v {
        Value::String(s) => {
            let inner: Value = serde_json::from_str(&s)
                .map_err(|e| KfpError::InvalidInput(format!("Could not unmarshal {what}: {e}")))?;
            (inner, s.into_bytes())
        }
        other => (other, body.to_vec()),
    };
    if !obj.is_object() {
        return Err(KfpError::InvalidInput(format!(
            "Could not unmarshal {what}: not an object"
        )));
    }
    Ok((obj, raw))
}

/// Before the body is read: reporting is a cluster-wide right of the persistence agent.
pub fn authorize_report(k: &Kfp, r: &Req, scheduled: bool) -> KfpResult<()> {
    let (resource, what) = if scheduled {
        (res::SCHEDULED_WORKFLOWS, "scheduledworkflows")
    } else {
        (res::WORKFLOWS, "workflows")
    };
    access::check(k.authz.as_ref(), &r.who, "report", resource, "", "")
        .map_err(|e| e.wrap(format!("Failed to report {what} due to authorization error.")))
}

fn meta(obj: &Value, key: &str) -> String {
    obj.pointer(&format!("/metadata/{key}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn check_meta(obj: &Value, kind: &str) -> KfpResult<(String, String, String)> {
    let (name, ns, uid) = (meta(obj, "name"), meta(obj, "namespace"), meta(obj, "uid"));
    if name.is_empty() {
        return Err(KfpError::InvalidInput(format!("The {kind} must have a name")));
    }
    if ns.is_empty() {
        return Err(KfpError::InvalidInput(format!("The {kind} must have a namespace")));
    }
    if uid.is_empty() {
        return Err(KfpError::InvalidInput(format!("The {kind} must have a UID")));
    }
    Ok((name, ns, uid))
}

/// Argo phase (and shutdown request) → KFP v2 runtime state.
pub fn state_of(workflow: &Value) -> &'static str {
    let phase = workflow
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let shutdown = workflow
        .pointer("/spec/shutdown")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty());
    let state = match phase {
        "Running" => "RUNNING",
        "Succeeded" => "SUCCEEDED",
        "Failed" | "Error" => "FAILED",
        "Skipped" => "SKIPPED",
        _ => "PENDING",
    };
    if shutdown && !runs::is_final(state) {
        "CANCELING"
    } else {
        state
    }
}

/// `POST …/workflows`.
pub async fn workflow(k: &Kfp, r: &Req) -> KfpResult<Value> {
    let (wf, raw) = parse_body(k, r, "workflow")
        .await
        .map_err(|e| e.wrap("Report workflow failed"))?;
    let (name, ns, _) = check_meta(&wf, "workflow").map_err(|e| e.wrap("Report workflow failed"))?;
    access::check(k.authz.as_ref(), &r.who, "report", res::WORKFLOWS, "", "").map_err(|e| {
        e.wrap(format!(
            "Failed to report workflows `{name}` due to authorization error."
        ))
    })?;
    let run_id = wf
        .pointer("/metadata/labels")
        .and_then(|l| l.get(RUN_ID_LABEL))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if run_id.is_empty() {
        return Err(
            KfpError::InvalidInput(format!("Workflow[{name}] missing the Run ID label"))
                .wrap("Failed to report workflow"),
        );
    }
    let finished_ms = wf
        .pointer("/status/finishedAt")
        .and_then(Value::as_str)
        .and_then(kfsec_types::time::parse_rfc3339)
        .map_or(0, |s| s.saturating_mul(1000));
    let state = state_of(&wf);
    runs::apply_report(k, &run_id, &ns, state, finished_ms, &raw)
        .await
        .map_err(|e| e.wrap("Failed to report workflow"))?;
    tracing::info!(target: "audit", reporter = %r.who.user, run = %run_id, %state, "kfp workflow reported");
    Ok(Value::Object(Map::new()))
}

/// `POST …/scheduledworkflows`.
pub async fn scheduled_workflow(k: &Kfp, r: &Req) -> KfpResult<Value> {
    let (swf, _) = parse_body(k, r, "scheduled workflow")
        .await
        .map_err(|e| e.wrap("Report scheduled workflow failed"))?;
    let (_, ns, uid) = check_meta(&swf, "resource").map_err(|e| e.wrap("Report scheduled workflow failed"))?;
    access::check(k.authz.as_ref(), &r.who, "report", res::SCHEDULED_WORKFLOWS, "", "").map_err(|e| {
        e.wrap(format!(
            "Failed to report scheduledworkflows `{uid}` due to authorization error."
        ))
    })?;
    let status = swf
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.last())
        .map(|c| json::string(c, "type"))
        .transpose()?
        .unwrap_or_default();
    jobs::apply_report(k, &uid, &ns, &status)
        .await
        .map_err(|e| e.wrap("Failed to report scheduled workflow"))?;
    Ok(Value::Object(Map::new()))
}
