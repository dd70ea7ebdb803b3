//! Admission wiring: the webhook chain of `kfsec-admission` run in-process on writes through the
//! Kubernetes-style API, with its context (namespace labels, the namespace's PodDefaults) read
//! from the store.
//!
//! Invariants: the context is read fresh for every write (a PodDefault created a moment ago
//! applies to the next Pod); a denial is reported as Kubernetes reports a webhook's denial and
//! nothing is written.

use std::collections::BTreeMap;
use std::sync::Arc;

use kfsec_admission::{AdmissionRequest, Chain, Context, Operation};
use kfsec_api::{AdmissionDenied, ApiServer};
use kfsec_store::Store;
use serde_json::Value;

/// The in-process admission chain.
pub struct InProcessAdmission {
    store: Arc<dyn Store>,
    chain: Chain,
}

impl InProcessAdmission {
    /// Kubeflow's standard webhooks over `store`.
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self { store, chain: Chain::standard() })
    }

    /// The labels of `namespace` and the PodDefaults in it.
    pub async fn context(&self, namespace: &str) -> Context {
        let mut ctx = Context::default();
        if namespace.is_empty() {
            return ctx;
        }
        if let Ok(Some(kv)) = self.store.get(&format!("/k8s/core/namespaces/{namespace}")).await
            && let Ok(ns) = serde_json::from_slice::<Value>(&kv.value)
        {
            ctx.namespace_labels = ns["metadata"]["labels"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
                .unwrap_or_else(BTreeMap::new);
        }
        if let Some(res) = ApiServer::resource("kubeflow.org", "v1alpha1", "poddefaults") {
            let prefix = format!("{}{namespace}/", res.type_prefix());
            let mut defaults = Vec::new();
            let mut after: Option<String> = None;
            while let Ok(page) = self.store.list(&prefix, 1000, after.as_deref()).await {
                defaults.extend(page.items.iter().filter_map(|kv| ApiServer::decode_record(res, kv).ok()));
                match page.continue_key {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
            ctx = ctx.with_pod_defaults(&defaults);
        }
        ctx
    }
}

#[async_trait::async_trait]
impl kfsec_api::Admission for InProcessAdmission {
    async fn admit(&self, r: kfsec_api::AdmissionRequest<'_>, object: &mut Value) -> Result<(), AdmissionDenied> {
        let res = r.resource;
        let req = AdmissionRequest {
            uid: "in-process".into(),
            kind: kfsec_admission::review::GroupVersionKind {
                group: res.group.into(),
                version: res.version.into(),
                kind: res.kind.into(),
            },
            resource: kfsec_admission::review::GroupVersionResource::new(res.group, res.version, res.plural),
            sub_resource: r.subresource.into(),
            name: r.name.into(),
            namespace: r.namespace.into(),
            operation: match r.operation {
                kfsec_api::Operation::Create => Operation::Create,
                kfsec_api::Operation::Update => Operation::Update,
            },
            user_info: kfsec_admission::review::UserInfo {
                username: r.user.username.clone(),
                groups: r.user.groups.clone(),
                ..Default::default()
            },
            object: Some(object.clone()),
            old_object: r.old_object.cloned(),
            dry_run: Some(r.dry_run),
            ..Default::default()
        };
        // Cheap pre-check: most writes match no webhook and need no context.
        if !self.chain.wants(&req, &BTreeMap::new()) && !self.chain_may_want_labels(&req) {
            return Ok(());
        }
        let ctx = self.context(r.namespace).await;
        self.chain
            .admit(&req, &ctx, object)
            .map_err(|d| AdmissionDenied { webhook: d.webhook, code: d.code, message: d.message })
    }
}

impl InProcessAdmission {
    /// Whether a namespace selector could make a webhook want `req` (resource rules matched).
    fn chain_may_want_labels(&self, req: &AdmissionRequest) -> bool {
        matches!(req.resource.resource.as_str(), "pods" | "experiments" | "inferenceservices" | "pvcviewers")
    }
}
