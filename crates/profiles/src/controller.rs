//! The profile controller: for each `kubeflow.org/v1` Profile it creates what Kubeflow's
//! creates — the Namespace (annotation `owner`, default labels), the `namespaceAdmin`
//! RoleBinding to `kubeflow-admin`, the `default-editor`/`default-viewer` ServiceAccounts bound
//! to `kubeflow-edit`/`kubeflow-view`, the `kf-resource-quota` ResourceQuota — records status
//! conditions, and deletes the namespace (and so its contents) when the Profile goes.
//!
//! Invariants: a namespace owned by someone else is never taken over (the Profile gets a Failed
//! condition) — only a namespace this very Profile created (its owner reference) is adopted;
//! system namespaces (`kube-*`, `default`, `kubeflow`, `kfsec`) exist from the first start,
//! belong to no profile, are never deleted with one, and a Profile claiming one (left by older
//! data: the API refuses new ones) is not honoured — whatever it granted there is revoked;
//! existing namespace labels are never overwritten; reconciliation is idempotent and writes only
//! when something differs, so following its own writes cannot loop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kfsec_api::{ApiError, ApiServer, Resource};
use kfsec_store::{EventKind, Store};
use serde_json::{Value, json};

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ProfileSettings {
    /// Labels every profile namespace gets unless it already has the key (`""` value: remove).
    pub namespace_labels: BTreeMap<String, String>,
}

impl Default for ProfileSettings {
    fn default() -> Self {
        let labels = [
            ("katib.kubeflow.org/metrics-collector-injection", "enabled"),
            ("serving.kubeflow.org/inferenceservice", "enabled"),
            ("pipelines.kubeflow.org/enabled", "true"),
            ("app.kubernetes.io/part-of", "kubeflow-profile"),
            ("istio-injection", "enabled"),
        ];
        Self {
            namespace_labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }
}

fn res(group: &str, version: &str, plural: &str) -> Result<&'static Resource, ApiError> {
    ApiServer::resource(group, version, plural).ok_or_else(|| ApiError::BadRequest(format!("{plural} is not served")))
}

pub(crate) fn profiles() -> Result<&'static Resource, ApiError> {
    res("kubeflow.org", "v1", "profiles")
}

/// The owner name of a Profile (`spec.owner.name`).
pub fn owner_of(profile: &Value) -> &str {
    profile["spec"]["owner"]["name"].as_str().unwrap_or_default()
}

fn owner_ref(profile: &Value) -> Value {
    json!([{
        "apiVersion": "kubeflow.org/v1",
        "kind": "Profile",
        "name": profile["metadata"]["name"],
        "uid": profile["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

/// The profile controller.
pub struct ProfileController {
    api: Arc<ApiServer>,
    store: Arc<dyn Store>,
    settings: ProfileSettings,
}

enum Outcome {
    Ok,
    Failed(String),
}

/// Whether a namespace carries a profile's ownership (the `owner` annotation or a Profile owner
/// reference).
fn claimed(ns: &Value) -> bool {
    ns["metadata"]["annotations"]["owner"].is_string()
        || ns["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|refs| refs.iter().any(|r| r["kind"] == "Profile"))
}

/// Whether `obj` has an owner reference to the Profile named `name` (any uid when `uid` is None).
fn owned_by_profile(obj: &Value, name: &str, uid: Option<&Value>) -> bool {
    obj["metadata"]["ownerReferences"].as_array().is_some_and(|refs| {
        refs.iter()
            .any(|r| r["kind"] == "Profile" && r["name"] == name && uid.is_none_or(|u| r["uid"] == *u))
    })
}

impl ProfileController {
    /// A controller writing through `api`, following `store`.
    pub fn new(api: Arc<ApiServer>, store: Arc<dyn Store>, settings: ProfileSettings) -> Arc<Self> {
        Arc::new(Self { api, store, settings })
    }

    /// Creates or updates `desired` (matched by namespace/name) when it differs in the fields
    /// the controller owns.
    async fn ensure(&self, r: &'static Resource, desired: Value, owned: &[&str]) -> Result<(), ApiError> {
        let ns = desired["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        let name = desired["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        match self.api.get_object(r, &ns, &name).await? {
            None => {
                self.api.create_object(r, &ns, desired).await?;
            }
            Some(mut current) => {
                let mut changed = false;
                for field in owned {
                    if current[*field] != desired[*field] {
                        current[*field] = desired[*field].clone();
                        changed = true;
                    }
                }
                for m in ["labels", "annotations"] {
                    if let Some(want) = desired["metadata"][m].as_object() {
                        for (k, v) in want {
                            if current["metadata"][m][k] != *v {
                                current["metadata"][m][k] = v.clone();
                                changed = true;
                            }
                        }
                    }
                }
                if changed {
                    self.api.update_object(r, current).await?;
                }
            }
        }
        Ok(())
    }

    async fn ensure_namespace(&self, profile: &Value) -> Result<Outcome, ApiError> {
        let nsr = res("", "v1", "namespaces")?;
        let name = profile["metadata"]["name"].as_str().unwrap_or_default();
        let owner = owner_of(profile);
        match self.api.get_object(nsr, "", name).await? {
            Some(mut ns) => {
                let current_owner = ns["metadata"]["annotations"]["owner"].as_str().unwrap_or_default();
                // Only the namespace this Profile created is its own: an operator's namespace,
                // even one annotated with the same owner, is not adopted.
                if current_owner != owner || !owned_by_profile(&ns, name, Some(&profile["metadata"]["uid"])) {
                    return Ok(Outcome::Failed(format!(
                        "namespace already exist, but not owned by profile creator {owner}"
                    )));
                }
                let mut changed = false;
                let labels = ns["metadata"]["labels"].as_object().cloned().unwrap_or_default();
                let mut labels = labels;
                for (k, v) in &self.settings.namespace_labels {
                    if v.is_empty() {
                        changed |= labels.remove(k).is_some();
                    } else if !labels.contains_key(k) {
                        labels.insert(k.clone(), Value::String(v.clone()));
                        changed = true;
                    }
                }
                if changed {
                    ns["metadata"]["labels"] = Value::Object(labels);
                    self.api.update_object(nsr, ns).await?;
                }
            }
            None => {
                let labels: serde_json::Map<String, Value> = self
                    .settings
                    .namespace_labels
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect();
                let ns = json!({
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {
                        "name": name,
                        "annotations": {"owner": owner},
                        "labels": labels,
                        "ownerReferences": owner_ref(profile),
                    },
                });
                self.api.create_object(nsr, "", ns).await?;
            }
        }
        Ok(Outcome::Ok)
    }

    /// Brings everything a Profile implies into being and records the outcome in its status.
    pub async fn reconcile(&self, profile: &Value) -> Result<(), ApiError> {
        if !profile["metadata"]["deletionTimestamp"].is_null() {
            return Ok(());
        }
        let name = profile["metadata"]["name"].as_str().unwrap_or_default();
        if self.api.is_reserved_namespace(name) {
            tracing::error!(
                profile = %name,
                owner = %owner_of(profile),
                "SECURITY: a Profile claims the system namespace {name:?}; it is not honoured and what it granted there is revoked (delete it: kubectl delete profile {name})"
            );
            self.disown(name).await?;
            let message = format!(
                "namespace {name} is reserved for the system and cannot be owned by a profile; this profile is not honoured"
            );
            return self.set_status(profile, Outcome::Failed(message)).await;
        }
        let outcome = match self.ensure_namespace(profile).await? {
            Outcome::Failed(m) => Outcome::Failed(m),
            Outcome::Ok => {
                self.ensure_contents(profile).await?;
                Outcome::Ok
            }
        };
        self.set_status(profile, outcome).await
    }

    async fn ensure_contents(&self, profile: &Value) -> Result<(), ApiError> {
        let ns = profile["metadata"]["name"].as_str().unwrap_or_default();
        let owner = owner_of(profile);
        let rb = res("rbac.authorization.k8s.io", "v1", "rolebindings")?;
        let sa = res("", "v1", "serviceaccounts")?;
        let owner_subject = {
            let mut s = profile["spec"]["owner"].clone();
            if s["kind"].is_null() {
                s["kind"] = json!("User");
            }
            if s["kind"] != "ServiceAccount" && s["apiGroup"].is_null() {
                s["apiGroup"] = json!("rbac.authorization.k8s.io");
            }
            s
        };
        self.ensure(
            rb,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "namespaceAdmin", "namespace": ns, "annotations": {"user": owner, "role": "admin"}, "ownerReferences": owner_ref(profile)},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubeflow-admin"},
                "subjects": [owner_subject],
            }),
            &["roleRef", "subjects"],
        )
        .await?;
        let plugins = plugin_annotations(profile);
        for (name, role) in [("default-editor", "kubeflow-edit"), ("default-viewer", "kubeflow-view")] {
            let mut account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns, "ownerReferences": owner_ref(profile)}});
            if name == "default-editor" && !plugins.is_empty() {
                account["metadata"]["annotations"] = Value::Object(plugins.clone());
            }
            self.ensure(sa, account, &[]).await?;
            self.ensure(
                rb,
                json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": name, "namespace": ns, "ownerReferences": owner_ref(profile)},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
                }),
                &["roleRef", "subjects"],
            )
            .await?;
        }
        let rq = res("", "v1", "resourcequotas")?;
        let spec = &profile["spec"]["resourceQuotaSpec"];
        let has_hard = spec["hard"].as_object().is_some_and(|h| !h.is_empty());
        if has_hard {
            self.ensure(
                rq,
                json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "kf-resource-quota", "namespace": ns, "ownerReferences": owner_ref(profile)}, "spec": spec}),
                &["spec"],
            )
            .await?;
        } else {
            self.api.delete_object(rq, ns, "kf-resource-quota").await?;
        }
        Ok(())
    }

    async fn set_status(&self, profile: &Value, outcome: Outcome) -> Result<(), ApiError> {
        let cond = match &outcome {
            Outcome::Ok => json!({"type": "Successful", "status": "True", "message": ""}),
            Outcome::Failed(m) => json!({"type": "Failed", "status": "True", "message": m}),
        };
        let want = json!([cond]);
        if profile["status"]["conditions"] == want {
            return Ok(());
        }
        let mut p = profile.clone();
        p["status"] = json!({"conditions": want});
        match self.api.update_object(profiles()?, p).await {
            // A newer version arrived meanwhile; its own event will reconcile it.
            Ok(_) | Err(ApiError::Conflict { .. }) | Err(ApiError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Makes sure every system namespace exists and belongs to no profile (run at start, before
    /// serving): creates the missing ones, and strips a profile's ownership from the others.
    pub async fn ensure_system_namespaces(&self) -> Result<(), ApiError> {
        let nsr = res("", "v1", "namespaces")?;
        for name in self.api.system_namespaces() {
            match self.api.get_object(nsr, "", &name).await? {
                None => {
                    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
                    match self.api.create_object(nsr, "", ns).await {
                        Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                // Taken by a profile (older data): take it back. Otherwise leave the operator's
                // own bindings there alone.
                Some(ns) if claimed(&ns) => self.disown(&name).await?,
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Revokes what a Profile squatting the system namespace `name` holds there: the namespace's
    /// owner annotation and profile owner references (so deleting the Profile cannot delete the
    /// namespace), and the RoleBindings, ServiceAccounts and quota it created or KFAM added.
    async fn disown(&self, name: &str) -> Result<(), ApiError> {
        let nsr = res("", "v1", "namespaces")?;
        if let Some(mut ns) = self.api.get_object(nsr, "", name).await? {
            let mut changed = false;
            if let Some(a) = ns["metadata"]["annotations"].as_object_mut() {
                changed |= a.remove("owner").is_some();
            }
            if let Some(m) = ns["metadata"].as_object_mut()
                && m.get("ownerReferences").is_some()
            {
                let keep: Vec<Value> = m["ownerReferences"]
                    .as_array()
                    .map(|refs| refs.iter().filter(|r| r["kind"] != "Profile").cloned().collect())
                    .unwrap_or_default();
                if keep.is_empty() {
                    m.remove("ownerReferences");
                } else {
                    m.insert("ownerReferences".into(), Value::Array(keep));
                }
                changed = true;
            }
            if changed {
                tracing::warn!(namespace = %name, "system namespace taken back from a profile");
                self.api.update_object(nsr, ns).await?;
            }
        }
        for (group, plural) in [
            ("rbac.authorization.k8s.io", "rolebindings"),
            ("", "serviceaccounts"),
            ("", "resourcequotas"),
        ] {
            let r = res(group, "v1", plural)?;
            for obj in self.api.list_objects(r, Some(name), "").await?.items {
                let kfam = plural == "rolebindings"
                    && obj["metadata"]["annotations"]["user"].is_string()
                    && obj["metadata"]["annotations"]["role"].is_string();
                if kfam || owned_by_profile(&obj, name, None) {
                    let n = obj["metadata"]["name"].as_str().unwrap_or_default();
                    tracing::warn!(namespace = %name, %plural, name = %n, "revoking what a profile held in a system namespace");
                    self.api.delete_object(r, name, n).await?;
                }
            }
        }
        Ok(())
    }

    /// Deletes what a deleted Profile owned: its namespace, if the namespace is still its own
    /// (never a system namespace).
    pub async fn finalize(&self, profile: &Value) -> Result<(), ApiError> {
        let nsr = res("", "v1", "namespaces")?;
        let name = profile["metadata"]["name"].as_str().unwrap_or_default();
        if self.api.is_reserved_namespace(name) {
            return Ok(());
        }
        if let Some(ns) = self.api.get_object(nsr, "", name).await? {
            let owned = ns["metadata"]["ownerReferences"].as_array().is_some_and(|refs| {
                refs.iter()
                    .any(|r| r["kind"] == "Profile" && r["uid"] == profile["metadata"]["uid"])
            });
            if owned {
                self.api.delete_object(nsr, "", name).await?;
            }
        }
        Ok(())
    }

    /// Reconciles every Profile, then follows changes until the task is dropped.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.run().await {
                    tracing::warn!(error = %e, "profile controller restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    async fn run(&self) -> Result<(), ApiError> {
        let r = profiles()?;
        let list = self.api.list_objects(r, None, "").await?;
        for p in &list.items {
            if let Err(e) = self.reconcile(p).await {
                tracing::warn!(profile = %p["metadata"]["name"], error = %e, "profile reconcile failed");
            }
        }
        let mut rx = self
            .store
            .watch(&r.type_prefix(), list.resource_version)
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        while let Some(ev) = rx.recv().await {
            let ev = ev.map_err(|e| ApiError::BadRequest(e.to_string()))?;
            let obj = ApiServer::decode_record(r, &ev.kv)?;
            let result = match ev.kind {
                EventKind::Put => self.reconcile(&obj).await,
                EventKind::Delete => self.finalize(&obj).await,
            };
            if let Err(e) = result {
                tracing::warn!(profile = %obj["metadata"]["name"], error = %e, "profile reconcile failed");
            }
        }
        Ok(())
    }
}

/// Service-account annotations from the Profile's plugins (GCP Workload Identity, AWS IRSA).
fn plugin_annotations(profile: &Value) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for p in profile["spec"]["plugins"].as_array().into_iter().flatten() {
        match p["kind"].as_str() {
            Some("WorkloadIdentity") => {
                if let Some(sa) = p["spec"]["gcpServiceAccount"].as_str() {
                    out.insert("iam.gke.io/gcp-service-account".into(), json!(sa));
                }
            }
            Some("AwsIamForServiceAccount") => {
                if let Some(role) = p["spec"]["awsIamRole"].as_str() {
                    out.insert("eks.amazonaws.com/role-arn".into(), json!(role));
                }
            }
            _ => {}
        }
    }
    out
}
