//! Read-only access to KFP's objects for kfsec's own Pipelines pages (`/pipeline/…`): the same
//! list and get handlers the API serves (v2beta1 shapes), called in-process with the caller's
//! identity.
//!
//! Invariants: every read goes through the API handler of that object, so it is authorized by
//! the one KFP check (`access::check`, in the object's stored namespace) — there is no second
//! copy of KFP's rules here; nothing here writes; a list is one page of at most
//! `list::MAX_PAGE_SIZE` items, newest first.

use axum::body::Bytes;
use kfsec_types::Identity;
use serde_json::Value;

use crate::error::KfpResult;
use crate::routes::Req;
use crate::{Kfp, experiments, jobs, pipelines, runs};

/// What a page reads.
#[derive(Debug, Clone, Copy)]
pub enum Read<'a> {
    /// The experiments of a namespace.
    Experiments(&'a str),
    /// The runs of a namespace.
    Runs(&'a str),
    /// The recurring runs of a namespace.
    RecurringRuns(&'a str),
    /// The pipelines of a namespace (`""`: the shared pipelines).
    Pipelines(&'a str),
    /// The versions of a pipeline (by id).
    Versions(&'a str),
    /// One experiment (by id).
    Experiment(&'a str),
    /// One run (by id).
    Run(&'a str),
    /// One recurring run (by id).
    RecurringRun(&'a str),
    /// One pipeline (by id).
    Pipeline(&'a str),
}

impl Kfp {
    /// Reads `what` as `who`, exactly as `GET /pipeline/apis/v2beta1/…` would answer it (the
    /// v2beta1 JSON), with the API's authorization and errors.
    pub async fn read(&self, who: &Identity, what: Read<'_>) -> KfpResult<Value> {
        let mut query = vec![
            ("page_size".to_owned(), crate::list::MAX_PAGE_SIZE.to_string()),
            ("sort_by".to_owned(), "created_at desc".to_owned()),
        ];
        if let Read::Experiments(ns) | Read::Runs(ns) | Read::RecurringRuns(ns) | Read::Pipelines(ns) = what {
            query.push(("namespace".to_owned(), ns.to_owned()));
        }
        let r = Req {
            who: who.clone(),
            query,
            body: Bytes::new(),
            content_type: String::new(),
            v2: true,
            parsed: None,
        };
        match what {
            Read::Experiments(_) => experiments::list(self, &r).await,
            Read::Runs(_) => runs::list(self, &r).await,
            Read::RecurringRuns(_) => jobs::list(self, &r).await,
            Read::Pipelines(_) => pipelines::list(self, &r).await,
            Read::Versions(id) => pipelines::list_versions(self, &r, id).await,
            Read::Experiment(id) => experiments::get(self, &r, id).await,
            Read::Run(id) => runs::get(self, &r, id).await,
            Read::RecurringRun(id) => jobs::get(self, &r, id).await,
            Read::Pipeline(id) => pipelines::get(self, &r, id).await,
        }
    }
}

impl Kfp {
    /// Whether `who` may list runs in `namespace` (KFP's own check, as `GET runs?namespace=`).
    /// A filter, not the request's decision: not recorded in its audit Event.
    pub fn may_read(&self, who: &Identity, namespace: &str) -> bool {
        crate::storage::valid_namespace(namespace)
            && kfsec_api::audit::unrecorded(|| {
                crate::access::check(
                    self.authz.as_ref(),
                    who,
                    "list",
                    crate::access::res::RUNS,
                    namespace,
                    "",
                )
                .is_ok()
            })
    }
}
