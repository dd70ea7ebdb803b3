//! The profile controller: for each `kubeflow.org/v1` Profile it creates what Kubeflow's
//! creates — the Namespace (annotation `owner`, default labels), the `namespaceAdmin`
//! RoleBinding to `kubeflow-admin`, the `default-editor`/`default-viewer` ServiceAccounts bound
//! to `kubeflow-edit`/`kubeflow-view`, the `kf-resource-quota` ResourceQuota — records status
//! conditions, and deletes the namespace (and so its contents) when the Profile goes. With
//! workspace credentials configured (`credentials::WorkspaceCredentials`: the S3 keys), it also
//! writes their Secrets into the namespace and revokes them when the Profile goes (or, for a
//! Profile deleted while unwatched, at the next re-list).
//!
//! Invariants: a namespace owned by someone else is never taken over (the Profile gets a Failed
//! condition) — only a namespace this very Profile created (its owner reference) is adopted;
//! system namespaces (`kube-*`, `default`, `kubeflow`, `kfsec`) exist from the first start,
//! belong to no profile, are never deleted with one, and a Profile claiming one (left by older
//! data: the API refuses new ones) is not honoured — whatever it granted there is revoked;
//! existing namespace labels are never overwritten; reconciliation is idempotent and writes only
//! when something differs, so following its own writes cannot loop. Profiles are read as
//! `kfsec_types::kubeflow::Profile` and written back re-encoded from it (unknown members kept);
//! one that does not decode is not reconciled (logged) and, for KFAM, has no owner; the objects
//! written are typed (`RoleBinding`) or core objects with typed metadata (`CoreObject`).

use std::collections::BTreeMap;
use std::sync::Arc;

use kfsec_api::{ApiError, ApiServer, ObjectEvent, Resource};
use kfsec_store::EventKind;
use kfsec_types::Field;
use kfsec_types::kubeflow::{
    AwsIamForServiceAccount, Condition, PROFILE_API_VERSION, Profile, ProfileOwner, ProfileStatus, ResourceQuotaSpec,
    WorkloadIdentity,
};
use kfsec_types::meta::{ObjectMeta, OwnerReference};
use kfsec_types::rbac::{RBAC_GROUP, RoleBinding, RoleRef, Subject, SubjectKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::credentials::WorkspaceCredentials;

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

/// A stored or submitted Profile, typed.
pub(crate) fn decode_profile(v: Value) -> Result<Profile, serde_json::Error> {
    serde_json::from_value(v)
}

/// A Profile with nothing but `metadata` (one whose spec cannot be read: no owner, no grants).
fn metadata_only(metadata: ObjectMeta) -> Profile {
    Profile {
        metadata: Field::new(metadata),
        ..Profile::default()
    }
}

/// The metadata of a stored object (`None` if it has none that decodes).
fn metadata_of(obj: &Value) -> Option<ObjectMeta> {
    obj.get("metadata").and_then(|m| ObjectMeta::deserialize(m).ok())
}

/// A stored Profile for reading who owns it: one that does not decode is logged and read as
/// its metadata alone, so it has no owner and grants nothing.
pub(crate) fn stored_profile(v: Value) -> Profile {
    let meta = metadata_of(&v);
    decode_profile(v).unwrap_or_else(|e| {
        let meta = meta.unwrap_or_default();
        tracing::error!(profile = %meta.name, error = %e, "a stored Profile does not decode; it is read as having no owner");
        metadata_only(meta)
    })
}

/// An object as JSON for the API.
pub(crate) fn encode<T: Serialize>(obj: &T) -> Result<Value, ApiError> {
    serde_json::to_value(obj).map_err(|e| ApiError::Internal(format!("encoding an object: {e}")))
}

/// A core object (Namespace, ServiceAccount, ResourceQuota, RoleBinding, …) as far as the
/// controller and KFAM read it: typed metadata, every other member kept as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct CoreObject {
    /// `apiVersion`, `kind`, `spec`, … as stored.
    #[serde(flatten)]
    pub(crate) rest: Map<String, Value>,
    /// Metadata.
    #[serde(default)]
    pub(crate) metadata: ObjectMeta,
}

impl CoreObject {
    /// A new object of `kind` with `metadata`.
    fn new(api_version: &str, kind: &str, metadata: ObjectMeta) -> Self {
        let mut rest = Map::new();
        rest.insert("apiVersion".into(), Value::String(api_version.into()));
        rest.insert("kind".into(), Value::String(kind.into()));
        Self { rest, metadata }
    }

    /// A stored object; one that does not decode is reported as an internal error.
    pub(crate) fn decode(v: Value) -> Result<Self, ApiError> {
        serde_json::from_value(v).map_err(|e| ApiError::Internal(format!("decoding a stored object: {e}")))
    }

    /// Whether it carries a profile's ownership (the `owner` annotation or a Profile owner
    /// reference).
    pub(crate) fn claimed(&self) -> bool {
        self.metadata.annotations.contains_key("owner")
            || self.metadata.owner_references().iter().any(|r| r.kind == "Profile")
    }

    /// Whether it has an owner reference to the Profile named `name` (any uid when `uid` is
    /// None).
    pub(crate) fn owned_by_profile(&self, name: &str, uid: Option<&str>) -> bool {
        self.metadata
            .owner_references()
            .iter()
            .any(|r| r.kind == "Profile" && r.name == name && uid.is_none_or(|u| r.uid == u))
    }
}

pub(crate) fn uid_of(profile: &Profile) -> &str {
    profile.metadata.get().map_or("", |m| m.uid.as_str())
}

/// Metadata of an object the Profile owns: `name` in the profile's namespace, controlled by it.
fn owned_meta(profile: &Profile, name: &str) -> ObjectMeta {
    let mut meta = ObjectMeta::namespaced(profile.name(), name);
    meta.set_owner_references(&[OwnerReference {
        api_version: PROFILE_API_VERSION.into(),
        kind: "Profile".into(),
        name: profile.name().into(),
        uid: uid_of(profile).into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    meta
}

/// `spec.owner` as a RoleBinding subject: `kind` defaults to `User`, and `apiGroup` to the RBAC
/// group unless the owner is a service account.
fn owner_subject(owner: Option<&ProfileOwner>) -> Subject {
    let field = |f: Option<&Field<String>>| f.and_then(Field::get).cloned();
    let kind = match field(owner.map(|o| &o.kind)).as_deref() {
        None => SubjectKind::User,
        Some("User") => SubjectKind::User,
        Some("Group") => SubjectKind::Group,
        Some("ServiceAccount") => SubjectKind::ServiceAccount,
        Some(other) => SubjectKind::Other(other.to_owned()),
    };
    let api_group = match field(owner.map(|o| &o.api_group)) {
        Some(group) => group,
        None if kind == SubjectKind::ServiceAccount => String::new(),
        None => RBAC_GROUP.to_owned(),
    };
    Subject {
        kind,
        api_group,
        name: field(owner.map(|o| &o.name)).unwrap_or_default(),
        namespace: field(owner.map(|o| &o.namespace)).unwrap_or_default(),
    }
}

/// The profile controller.
pub struct ProfileController {
    api: Arc<ApiServer>,
    settings: ProfileSettings,
    credentials: Option<Arc<dyn WorkspaceCredentials>>,
}

enum Outcome {
    Ok,
    Failed(String),
}

impl ProfileController {
    /// A controller reading, following and writing the objects through `api`.
    pub fn new(api: Arc<ApiServer>, settings: ProfileSettings) -> Arc<Self> {
        Arc::new(Self {
            api,
            settings,
            credentials: None,
        })
    }

    /// The same, also giving every profile namespace the Secrets of `credentials` (issued at the
    /// first reconcile, revoked when the Profile goes).
    pub fn with_credentials(
        api: Arc<ApiServer>,
        settings: ProfileSettings,
        credentials: Arc<dyn WorkspaceCredentials>,
    ) -> Arc<Self> {
        Arc::new(Self {
            api,
            settings,
            credentials: Some(credentials),
        })
    }

    /// Writes the credential Secrets of the Profile `namespace` (a rotation's new key, a Secret
    /// someone deleted); nothing when there is no such Profile or no credentials are configured.
    pub async fn sync_credentials(&self, namespace: &str) -> Result<(), ApiError> {
        let Some(profile) = self.api.get_object(profiles()?, "", namespace).await? else {
            return Ok(());
        };
        let profile =
            decode_profile(profile).map_err(|e| ApiError::Internal(format!("decoding a stored Profile: {e}")))?;
        self.ensure_credentials(&profile).await
    }

    /// Issues (or finds) the namespace's credentials and writes them as Secrets it owns.
    async fn ensure_credentials(&self, profile: &Profile) -> Result<(), ApiError> {
        use base64::Engine;
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        let secrets = res("", "v1", "secrets")?;
        let wanted = credentials
            .secrets(profile.name())
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        for s in wanted {
            let mut secret = CoreObject::new("v1", "Secret", owned_meta(profile, &s.name));
            let data: Map<String, Value> = s
                .data
                .iter()
                .map(|(k, v)| {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(v.as_bytes());
                    (k.clone(), Value::String(encoded))
                })
                .collect();
            secret.rest.insert("type".into(), Value::String("Opaque".into()));
            secret.rest.insert("data".into(), Value::Object(data));
            self.ensure(secrets, &secret, &["data", "type"]).await?;
        }
        Ok(())
    }

    /// Revokes the credentials of the deleted Profile `name`, unless a Profile of that name
    /// lives again (a re-created one keeps what its reconcile issued).
    async fn revoke_credentials(&self, name: &str, uid: &str) -> Result<(), ApiError> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        if let Some(live) = self.api.get_object(profiles()?, "", name).await?
            && metadata_of(&live).is_some_and(|m| m.uid != uid)
        {
            return Ok(());
        }
        credentials
            .revoke(name)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Revokes the credentials of every namespace no Profile in `live` (names) has.
    async fn revoke_orphan_credentials(&self, live: &std::collections::HashSet<String>) -> Result<(), ApiError> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        let holders = credentials
            .holders()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        for ns in holders.iter().filter(|ns| !live.contains(*ns)) {
            tracing::info!(namespace = %ns, "revoking the credentials of a Profile deleted while unwatched");
            credentials
                .revoke(ns)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        Ok(())
    }

    /// Creates or updates `desired` (matched by namespace/name) when it differs in the fields
    /// the controller owns (top-level members `owned`, and the labels and annotations it sets).
    /// A create that finds the object created meanwhile, or an update that finds it changed (a
    /// second controller for a moment, during a leader handover), reads it again and re-checks:
    /// create-if-absent and compare-and-swap, never a duplicate or a lost write.
    async fn ensure(&self, r: &'static Resource, desired: &impl Serialize, owned: &[&str]) -> Result<(), ApiError> {
        let desired = CoreObject::decode(encode(desired)?)?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.ensure_once(r, &desired, owned).await {
                Err(ApiError::AlreadyExists { .. } | ApiError::Conflict { .. }) if attempts < 5 => continue,
                other => return other,
            }
        }
    }

    async fn ensure_once(&self, r: &'static Resource, desired: &CoreObject, owned: &[&str]) -> Result<(), ApiError> {
        let (ns, name) = (&desired.metadata.namespace, &desired.metadata.name);
        match self.api.get_object(r, ns, name).await? {
            None => {
                self.api.create_object(r, ns, encode(&desired)?).await?;
            }
            Some(current) => {
                let mut current = CoreObject::decode(current)?;
                let mut changed = false;
                for field in owned {
                    let want = desired.rest.get(*field);
                    if current.rest.get(*field) != want {
                        match want {
                            Some(v) => current.rest.insert((*field).to_owned(), v.clone()),
                            None => current.rest.remove(*field),
                        };
                        changed = true;
                    }
                }
                for (have, want) in [
                    (&mut current.metadata.labels, &desired.metadata.labels),
                    (&mut current.metadata.annotations, &desired.metadata.annotations),
                ] {
                    for (k, v) in want {
                        if have.get(k) != Some(v) {
                            have.insert(k.clone(), v.clone());
                            changed = true;
                        }
                    }
                }
                if changed {
                    self.api.update_object(r, encode(&current)?).await?;
                }
            }
        }
        Ok(())
    }

    async fn ensure_namespace(&self, profile: &Profile) -> Result<Outcome, ApiError> {
        let nsr = res("", "v1", "namespaces")?;
        let name = profile.name();
        let owner = profile.owner_name();
        match self.api.get_object(nsr, "", name).await? {
            Some(ns) => {
                let mut ns = CoreObject::decode(ns)?;
                // Only the namespace this Profile created is its own: an operator's namespace,
                // even one annotated with the same owner, is not adopted.
                if !ns.owned_by_profile(name, Some(uid_of(profile))) {
                    return Ok(Outcome::Failed(format!(
                        "namespace already exist, but not owned by profile creator {owner}"
                    )));
                }
                // Its own namespace follows the Profile's owner: a workspace handed to another
                // user (spec.owner changed) is theirs, and `namespaceAdmin` follows below (the
                // previous owner keeps nothing).
                let mut changed = false;
                if ns.metadata.annotations.get("owner").map(String::as_str) != Some(owner) {
                    ns.metadata.annotations.insert("owner".into(), owner.to_owned());
                    changed = true;
                }
                let labels = &mut ns.metadata.labels;
                for (k, v) in &self.settings.namespace_labels {
                    if v.is_empty() {
                        changed |= labels.remove(k).is_some();
                    } else if !labels.contains_key(k) {
                        labels.insert(k.clone(), v.clone());
                        changed = true;
                    }
                }
                if changed {
                    match self.api.update_object(nsr, encode(&ns)?).await {
                        Ok(_) => {}
                        // Changed meanwhile (another controller for a moment): check again.
                        Err(ApiError::Conflict { .. }) => return Box::pin(self.ensure_namespace(profile)).await,
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                let mut meta = owned_meta(profile, "");
                meta.namespace.clear();
                meta.name = name.to_owned();
                meta.annotations.insert("owner".into(), owner.to_owned());
                meta.labels = self
                    .settings
                    .namespace_labels
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let ns = CoreObject::new("v1", "Namespace", meta);
                match self.api.create_object(nsr, "", encode(&ns)?).await {
                    Ok(_) => {}
                    // Created meanwhile (another controller during a leader handover): check
                    // whose it is, as for one that existed.
                    Err(ApiError::AlreadyExists { .. }) => return Box::pin(self.ensure_namespace(profile)).await,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Outcome::Ok)
    }

    /// Brings everything a Profile implies into being and records the outcome in its status.
    pub async fn reconcile(&self, profile: &Profile) -> Result<(), ApiError> {
        if profile
            .metadata
            .get()
            .and_then(|m| m.extra.get("deletionTimestamp"))
            .is_some_and(|t| !t.is_null())
        {
            return Ok(());
        }
        let name = profile.name();
        if self.api.is_reserved_namespace(name) {
            tracing::error!(
                profile = %name,
                owner = %profile.owner_name(),
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

    async fn ensure_contents(&self, profile: &Profile) -> Result<(), ApiError> {
        let ns = profile.name();
        let spec = profile.spec.get();
        let rb = res("rbac.authorization.k8s.io", "v1", "rolebindings")?;
        let sa = res("", "v1", "serviceaccounts")?;
        let mut admin = RoleBinding::new(
            ns,
            "namespaceAdmin",
            RoleRef::cluster_role("kubeflow-admin"),
            vec![owner_subject(spec.and_then(|s| s.owner.get()))],
        );
        admin.metadata = owned_meta(profile, "namespaceAdmin");
        admin.metadata.annotations = BTreeMap::from([
            ("user".to_owned(), profile.owner_name().to_owned()),
            ("role".to_owned(), "admin".to_owned()),
        ]);
        self.ensure(rb, &admin, &["roleRef", "subjects"]).await?;
        let plugins = plugin_annotations(profile);
        for (name, role) in [("default-editor", "kubeflow-edit"), ("default-viewer", "kubeflow-view")] {
            let mut account = CoreObject::new("v1", "ServiceAccount", owned_meta(profile, name));
            if name == "default-editor" {
                account.metadata.annotations = plugins.clone();
            }
            self.ensure(sa, &account, &[]).await?;
            let mut binding = RoleBinding::new(
                ns,
                name,
                RoleRef::cluster_role(role),
                vec![Subject::service_account(ns, name)],
            );
            binding.metadata = owned_meta(profile, name);
            self.ensure(rb, &binding, &["roleRef", "subjects"]).await?;
        }
        let rq = res("", "v1", "resourcequotas")?;
        let quota = spec.and_then(|s| s.resource_quota_spec.get());
        let has_hard = quota.and_then(|q| q.hard.get()).is_some_and(|h| !h.is_empty());
        if has_hard {
            /// The ResourceQuota `kf-resource-quota`, with the Profile's quota spec.
            #[derive(Serialize)]
            struct ResourceQuota<'a> {
                #[serde(flatten)]
                object: CoreObject,
                spec: Option<&'a ResourceQuotaSpec>,
            }
            let quota = ResourceQuota {
                object: CoreObject::new("v1", "ResourceQuota", owned_meta(profile, "kf-resource-quota")),
                spec: quota,
            };
            self.ensure(rq, &quota, &["spec"]).await?;
        } else {
            self.api.delete_object(rq, ns, "kf-resource-quota").await?;
        }
        self.ensure_credentials(profile).await
    }

    async fn set_status(&self, profile: &Profile, outcome: Outcome) -> Result<(), ApiError> {
        let cond = match &outcome {
            Outcome::Ok => Condition::new("Successful", "True", ""),
            Outcome::Failed(m) => Condition::new("Failed", "True", m),
        };
        let want = vec![cond];
        if profile.status.get().and_then(|s| s.conditions.get()) == Some(&want) {
            return Ok(());
        }
        let mut p = profile.clone();
        p.status = Field::new(ProfileStatus {
            conditions: Field::new(want),
            extra: Map::new(),
        });
        match self.api.update_object(profiles()?, encode(&p)?).await {
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
                    let ns = CoreObject::new("v1", "Namespace", ObjectMeta::named(name.as_str()));
                    match self.api.create_object(nsr, "", encode(&ns)?).await {
                        Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                // Taken by a profile (older data): take it back. Otherwise leave the operator's
                // own bindings there alone.
                Some(ns) => {
                    if CoreObject::decode(ns)?.claimed() {
                        self.disown(&name).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Revokes what a Profile squatting the system namespace `name` holds there: the namespace's
    /// owner annotation and profile owner references (so deleting the Profile cannot delete the
    /// namespace), and the RoleBindings, ServiceAccounts and quota it created or KFAM added.
    async fn disown(&self, name: &str) -> Result<(), ApiError> {
        let nsr = res("", "v1", "namespaces")?;
        if let Some(ns) = self.api.get_object(nsr, "", name).await? {
            let mut ns = CoreObject::decode(ns)?;
            let mut changed = ns.metadata.annotations.remove("owner").is_some();
            if ns.metadata.extra.contains_key("ownerReferences") {
                let keep: Vec<OwnerReference> = ns
                    .metadata
                    .owner_references()
                    .into_iter()
                    .filter(|r| r.kind != "Profile")
                    .collect();
                ns.metadata.set_owner_references(&keep);
                changed = true;
            }
            if changed {
                tracing::warn!(namespace = %name, "system namespace taken back from a profile");
                self.api.update_object(nsr, encode(&ns)?).await?;
            }
        }
        for (group, plural) in [
            ("rbac.authorization.k8s.io", "rolebindings"),
            ("", "serviceaccounts"),
            ("", "resourcequotas"),
        ] {
            let r = res(group, "v1", plural)?;
            for obj in self.api.list_objects(r, Some(name), "").await?.items {
                let obj = CoreObject::decode(obj)?;
                let annotations = &obj.metadata.annotations;
                let kfam =
                    plural == "rolebindings" && annotations.contains_key("user") && annotations.contains_key("role");
                if kfam || obj.owned_by_profile(name, None) {
                    let n = &obj.metadata.name;
                    tracing::warn!(namespace = %name, %plural, name = %n, "revoking what a profile held in a system namespace");
                    self.api.delete_object(r, name, n).await?;
                }
            }
        }
        Ok(())
    }

    /// Deletes what a deleted Profile owned: its namespace, if the namespace is still its own
    /// (never a system namespace).
    pub async fn finalize(&self, profile: &Profile) -> Result<(), ApiError> {
        let nsr = res("", "v1", "namespaces")?;
        let name = profile.name();
        if self.api.is_reserved_namespace(name) {
            return Ok(());
        }
        self.revoke_credentials(name, uid_of(profile)).await?;
        if let Some(ns) = self.api.get_object(nsr, "", name).await? {
            let uid = uid_of(profile);
            let owned = CoreObject::decode(ns)?
                .metadata
                .owner_references()
                .iter()
                .any(|r| r.kind == "Profile" && r.uid == uid);
            if owned {
                self.api.delete_object(nsr, "", name).await?;
            }
        }
        Ok(())
    }

    /// Finalizes every namespace a Profile owned that is not among `live` (the uids of every
    /// stored Profile, from one consistent snapshot): a Profile deleted while no watch ran —
    /// before a start, or during a lost watch — leaves nothing behind, as Kubernetes' garbage
    /// collector sees to through the same owner references. Namespaces no Profile owns are
    /// never touched, nor system namespaces.
    pub async fn finalize_orphans(&self, live: &std::collections::HashSet<String>) -> Result<(), ApiError> {
        let nsr = res("", "v1", "namespaces")?;
        for ns in self.api.list_objects(nsr, None, "").await?.items {
            let ns = CoreObject::decode(ns)?;
            let owner = ns
                .metadata
                .owner_references()
                .into_iter()
                .find(|r| r.kind == "Profile" && r.api_version.starts_with("kubeflow.org/"));
            let Some(owner) = owner.filter(|r| !live.contains(&r.uid)) else {
                continue;
            };
            tracing::info!(namespace = %ns.metadata.name, profile_uid = %owner.uid, "finalizing the namespace of a Profile deleted while unwatched");
            let meta = ObjectMeta {
                name: ns.metadata.name.clone(),
                uid: owner.uid.clone(),
                ..ObjectMeta::default()
            };
            self.finalize(&metadata_only(meta)).await?;
        }
        Ok(())
    }

    /// Reconciles every Profile, then follows changes until the task is dropped.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let r = match profiles() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "profile controller not started");
                    return;
                }
            };
            // Lists (and after a lost watch re-lists) every Profile, then follows changes.
            let mut follow = me.api.objects().follow(&[r]);
            loop {
                let (kind, objects) = match follow.next().await {
                    Ok(ObjectEvent::Restarted { objects, .. }) => {
                        // Deletions missed while unwatched first, then every live Profile. A
                        // Profile whose uid cannot be read might own any namespace: no sweep.
                        let live: Option<std::collections::HashSet<String>> = objects
                            .iter()
                            .map(|o| {
                                let v = o.decode().ok()?;
                                metadata_of(&v).map(|m| m.uid).filter(|uid| !uid.is_empty())
                            })
                            .collect();
                        match live {
                            None => tracing::warn!(
                                "a stored Profile without a readable uid: namespaces of deleted Profiles are not finalized"
                            ),
                            Some(live) => {
                                if let Err(e) = me.finalize_orphans(&live).await {
                                    tracing::warn!(error = %e, "finalizing namespaces of deleted Profiles failed; retried at the next re-list");
                                }
                            }
                        }
                        let names: std::collections::HashSet<String> = objects.iter().map(|o| o.name.clone()).collect();
                        if let Err(e) = me.revoke_orphan_credentials(&names).await {
                            tracing::warn!(error = %e, "revoking the credentials of deleted Profiles failed; retried at the next re-list");
                        }
                        (EventKind::Put, objects)
                    }
                    Ok(ObjectEvent::Applied(o)) => (EventKind::Put, vec![o]),
                    Ok(ObjectEvent::Deleted(o)) => (EventKind::Delete, vec![o]),
                    Ok(ObjectEvent::Progress(_)) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "profile controller lost its watch; re-listing");
                        continue;
                    }
                };
                for o in objects {
                    match o.decode() {
                        Ok(obj) => me.handle(kind.clone(), obj).await,
                        Err(e) => {
                            tracing::error!(profile = %o.name, error = %e, "a stored Profile that does not decode is not reconciled");
                        }
                    }
                }
            }
        })
    }

    /// Reconciles (`Put`) or finalizes (`Delete`) one stored Profile, logging a failure. One
    /// that does not decode is not reconciled (logged: its owner and contents cannot be known);
    /// a deleted one is finalized from its metadata, which the API always writes.
    async fn handle(&self, kind: EventKind, obj: Value) {
        let meta = metadata_of(&obj).unwrap_or_default();
        let result = match (kind, decode_profile(obj)) {
            (EventKind::Put, Ok(p)) => self.reconcile(&p).await,
            (EventKind::Delete, Ok(p)) => self.finalize(&p).await,
            (EventKind::Put, Err(e)) => {
                tracing::error!(profile = %meta.name, error = %e, "a Profile that does not decode is not reconciled");
                Ok(())
            }
            (EventKind::Delete, Err(_)) => self.finalize(&metadata_only(meta.clone())).await,
        };
        if let Err(e) = result {
            tracing::warn!(profile = %meta.name, error = %e, "profile reconcile failed");
        }
    }
}

/// Service-account annotations from the Profile's plugins (GCP Workload Identity, AWS IRSA).
fn plugin_annotations(profile: &Profile) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let plugins = profile.spec.get().map_or(&[][..], |s| s.plugins.as_slice());
    for p in plugins {
        let annotation = match p.kind.as_str() {
            "WorkloadIdentity" => p
                .spec_as::<WorkloadIdentity>()
                .and_then(|w| w.gcp_service_account.get().cloned())
                .map(|sa| ("iam.gke.io/gcp-service-account", sa)),
            "AwsIamForServiceAccount" => p
                .spec_as::<AwsIamForServiceAccount>()
                .and_then(|a| a.aws_iam_role.get().cloned())
                .map(|role| ("eks.amazonaws.com/role-arn", role)),
            _ => None,
        };
        if let Some((key, value)) = annotation {
            out.insert(key.to_owned(), value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! What the controller writes, member by member, as Kubeflow's controller writes it.

    use kfsec_api::{Attributes, Authorize, Decision, SubjectRules};
    use kfsec_store::{MemoryStore, Store};
    use kfsec_types::identity::UserInfo;
    use kfsec_types::{ManualClock, Rng, UnixTime};
    use serde_json::json;

    use super::*;

    struct Nobody;

    impl Authorize for Nobody {
        fn authorize(&self, _a: &Attributes) -> Decision {
            Decision::NoOpinion
        }
        fn rules_for(&self, _user: &UserInfo, _namespace: &str) -> SubjectRules {
            SubjectRules::default()
        }
    }

    struct Sevens;

    impl Rng for Sevens {
        fn fill(&self, buf: &mut [u8]) {
            buf.fill(7);
        }
    }

    async fn get(api: &ApiServer, plural: &str, ns: &str, name: &str) -> Value {
        let group = match plural {
            "rolebindings" => "rbac.authorization.k8s.io",
            "profiles" => "kubeflow.org",
            _ => "",
        };
        let r = res(group, "v1", plural).unwrap();
        api.get_object(r, ns, name).await.unwrap().unwrap_or(Value::Null)
    }

    /// A workspace handed to another user (`spec.owner` changed): the namespace's `owner` and
    /// `namespaceAdmin` follow, so the previous owner keeps no admin binding (it used to stay,
    /// with the Profile Failed, while KFAM already treated the new owner as the owner).
    #[tokio::test]
    async fn a_profile_handed_to_another_owner_moves_its_admin_binding() {
        let clock = ManualClock::new(UnixTime::from_millis(1_700_000_000_000));
        let store = MemoryStore::new(clock.clone());
        let api = ApiServer::new(store.clone(), Arc::new(Nobody), clock, Arc::new(Sevens));
        let profile = |owner: &str| {
            json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": "team"},
                   "spec": {"owner": {"kind": "User", "name": owner}}})
        };
        api.create_object(profiles().unwrap(), "", profile("alice@example.com"))
            .await
            .unwrap();
        let c = ProfileController::new(api.clone(), ProfileSettings::default());
        c.reconcile(&decode_profile(get(&api, "profiles", "", "team").await).unwrap())
            .await
            .unwrap();
        let mut handed = get(&api, "profiles", "", "team").await;
        handed["spec"] = profile("carol@example.com")["spec"].clone();
        api.update_object(profiles().unwrap(), handed).await.unwrap();
        c.reconcile(&decode_profile(get(&api, "profiles", "", "team").await).unwrap())
            .await
            .unwrap();
        let ns = get(&api, "namespaces", "", "team").await;
        assert_eq!(ns["metadata"]["annotations"]["owner"], "carol@example.com");
        let admin = get(&api, "rolebindings", "team", "namespaceAdmin").await;
        assert_eq!(
            admin["subjects"],
            json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "carol@example.com"}])
        );
        assert_eq!(admin["metadata"]["annotations"]["user"], "carol@example.com");
        let status = get(&api, "profiles", "", "team").await["status"].clone();
        assert_eq!(status["conditions"][0]["type"], "Successful", "{status}");
    }

    #[tokio::test]
    async fn a_profile_gets_kubeflows_objects_and_a_second_pass_writes_nothing() {
        let clock = ManualClock::new(UnixTime::from_millis(1_700_000_000_000));
        let store = MemoryStore::new(clock.clone());
        let api = ApiServer::new(store.clone(), Arc::new(Nobody), clock, Arc::new(Sevens));
        let profile = json!({
            "apiVersion": "kubeflow.org/v1", "kind": "Profile",
            "metadata": {"name": "team", "labels": {"x": "y"}},
            "spec": {
                "owner": {"kind": "User", "name": "alice@example.com"},
                "plugins": [{"kind": "WorkloadIdentity", "spec": {"gcpServiceAccount": "sa@p.iam"}},
                    {"kind": "Unknown", "spec": null}],
                "resourceQuotaSpec": {"hard": {"cpu": "2"}, "scopeSelector": null},
                "futureField": [null]
            }
        });
        let stored = api
            .create_object(profiles().unwrap(), "", profile.clone())
            .await
            .unwrap();
        let uid = stored["metadata"]["uid"].clone();
        let c = ProfileController::new(api.clone(), ProfileSettings::default());
        c.reconcile(&decode_profile(stored).unwrap()).await.unwrap();

        let owner_refs = json!([{"apiVersion": "kubeflow.org/v1", "kind": "Profile", "name": "team",
            "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
        let ns = get(&api, "namespaces", "", "team").await;
        assert_eq!(ns["metadata"]["annotations"], json!({"owner": "alice@example.com"}));
        assert_eq!(ns["metadata"]["ownerReferences"], owner_refs);
        assert_eq!(
            ns["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "kubeflow-profile"
        );
        let admin = get(&api, "rolebindings", "team", "namespaceAdmin").await;
        assert_eq!(
            admin["metadata"]["annotations"],
            json!({"user": "alice@example.com", "role": "admin"})
        );
        assert_eq!(admin["metadata"]["ownerReferences"], owner_refs);
        assert_eq!(
            admin["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubeflow-admin"})
        );
        assert_eq!(
            admin["subjects"],
            json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice@example.com"}])
        );
        for (name, role) in [("default-editor", "kubeflow-edit"), ("default-viewer", "kubeflow-view")] {
            let rb = get(&api, "rolebindings", "team", name).await;
            assert_eq!(rb["roleRef"]["name"], role);
            assert_eq!(
                rb["subjects"],
                json!([{"kind": "ServiceAccount", "name": name, "namespace": "team"}])
            );
            let sa = get(&api, "serviceaccounts", "team", name).await;
            assert_eq!(sa["metadata"]["ownerReferences"], owner_refs);
            let annotations = if name == "default-editor" {
                json!({"iam.gke.io/gcp-service-account": "sa@p.iam"})
            } else {
                Value::Null
            };
            assert_eq!(sa["metadata"]["annotations"], annotations);
        }
        let quota = get(&api, "resourcequotas", "team", "kf-resource-quota").await;
        assert_eq!(quota["spec"], json!({"hard": {"cpu": "2"}, "scopeSelector": null}));
        let p = get(&api, "profiles", "", "team").await;
        assert_eq!(p["spec"], profile["spec"], "the spec is written back exactly");
        assert_eq!(
            p["status"],
            json!({"conditions": [{"type": "Successful", "status": "True", "message": ""}]})
        );

        // Reconciling what it wrote changes nothing.
        let before = store.revision().await.unwrap();
        c.reconcile(&decode_profile(p).unwrap()).await.unwrap();
        assert_eq!(store.revision().await.unwrap(), before);
    }

    /// Credentials issued per namespace, counted: what the controller asks of them.
    #[derive(Default)]
    struct Creds {
        issued: std::sync::Mutex<BTreeMap<String, u32>>,
        revoked: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl WorkspaceCredentials for Creds {
        async fn secrets(
            &self,
            ns: &str,
        ) -> Result<Vec<crate::credentials::CredentialSecret>, crate::credentials::CredentialError> {
            let mut issued = self.issued.lock().unwrap();
            let n = *issued.entry(ns.to_owned()).or_insert(1);
            let data = [
                ("accesskey".to_owned(), zeroize::Zeroizing::new(format!("KEY{n}"))),
                (
                    "secretkey".to_owned(),
                    zeroize::Zeroizing::new(format!("secret-of-{ns}")),
                ),
            ];
            Ok(vec![crate::credentials::CredentialSecret {
                name: crate::credentials::ARTIFACT_SECRET.into(),
                data: data.into_iter().collect(),
            }])
        }
        async fn revoke(&self, ns: &str) -> Result<(), crate::credentials::CredentialError> {
            self.issued.lock().unwrap().remove(ns);
            self.revoked.lock().unwrap().push(ns.to_owned());
            Ok(())
        }
        async fn holders(&self) -> Result<Vec<String>, crate::credentials::CredentialError> {
            Ok(self.issued.lock().unwrap().keys().cloned().collect())
        }
    }

    #[tokio::test]
    async fn credentials_become_the_namespaces_secret_once_and_go_with_the_profile() {
        let clock = ManualClock::new(UnixTime::from_millis(1_700_000_000_000));
        let store = MemoryStore::new(clock.clone());
        let api = ApiServer::new(store.clone(), Arc::new(Nobody), clock, Arc::new(Sevens));
        let creds = Arc::new(Creds::default());
        let c = ProfileController::with_credentials(api.clone(), ProfileSettings::default(), creds.clone());
        let profile = json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": "team"},
            "spec": {"owner": {"kind": "User", "name": "alice@example.com"}}});
        let stored = api.create_object(profiles().unwrap(), "", profile).await.unwrap();
        c.reconcile(&decode_profile(stored.clone()).unwrap()).await.unwrap();
        let secret = get(&api, "secrets", "team", "mlpipeline-minio-artifact").await;
        assert_eq!(secret["type"], "Opaque");
        // base64 of "KEY1" and "secret-of-team", as Kubernetes stores `data`.
        assert_eq!(
            secret["data"],
            json!({"accesskey": "S0VZMQ==", "secretkey": "c2VjcmV0LW9mLXRlYW0="})
        );
        assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "Profile");
        let p = get(&api, "profiles", "", "team").await;
        let before = store.revision().await.unwrap();
        c.reconcile(&decode_profile(p.clone()).unwrap()).await.unwrap();
        assert_eq!(store.revision().await.unwrap(), before, "a second pass writes nothing");
        // A deleted Secret is written back at the next reconcile; a changed one is put right.
        let secrets = res("", "v1", "secrets").unwrap();
        api.delete_object(secrets, "team", "mlpipeline-minio-artifact")
            .await
            .unwrap();
        c.sync_credentials("team").await.unwrap();
        assert_eq!(
            get(&api, "secrets", "team", "mlpipeline-minio-artifact").await["data"]["accesskey"],
            "S0VZMQ=="
        );
        let mut changed = get(&api, "secrets", "team", "mlpipeline-minio-artifact").await;
        changed["data"]["secretkey"] = json!("b3RoZXI=");
        api.update_object(secrets, changed).await.unwrap();
        c.reconcile(&decode_profile(p.clone()).unwrap()).await.unwrap();
        assert_eq!(
            get(&api, "secrets", "team", "mlpipeline-minio-artifact").await["data"]["secretkey"],
            "c2VjcmV0LW9mLXRlYW0="
        );
        // A re-created Profile of the same name keeps its credentials when the old one's deletion
        // is handled; the Profile's own deletion revokes them.
        let mut old = decode_profile(p).unwrap();
        if let Some(m) = old.metadata.get_mut() {
            m.uid = "an-older-profile".into();
        }
        c.finalize(&old).await.unwrap();
        assert!(creds.revoked.lock().unwrap().is_empty());
        api.delete_object(profiles().unwrap(), "", "team").await.unwrap();
        c.finalize(&decode_profile(stored).unwrap()).await.unwrap();
        assert_eq!(*creds.revoked.lock().unwrap(), ["team"]);
        // Holders without a Profile (deleted while unwatched) are revoked at the next list.
        creds.issued.lock().unwrap().insert("gone".into(), 1);
        c.revoke_orphan_credentials(&["other".to_owned()].into_iter().collect())
            .await
            .unwrap();
        assert_eq!(*creds.revoked.lock().unwrap(), ["team", "gone"]);
    }

    /// A Profile deleted while no controller watched (before a start, during a lost watch):
    /// the next (re-)list finalizes its namespace; other Profiles' namespaces, namespaces no
    /// Profile owns and system namespaces stay.
    #[tokio::test]
    async fn a_profile_deleted_while_unwatched_is_finalized_at_the_next_list() {
        let clock = ManualClock::new(UnixTime::from_millis(1_700_000_000_000));
        let store = MemoryStore::new(clock.clone());
        let api = ApiServer::new(
            store.clone(),
            Arc::new(Nobody),
            clock,
            Arc::new(kfsec_types::SequenceRng::default()),
        );
        let c = ProfileController::new(api.clone(), ProfileSettings::default());
        for name in ["gone", "kept"] {
            let profile = json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": name},
                                 "spec": {"owner": {"kind": "User", "name": "alice@example.com"}}});
            let stored = api.create_object(profiles().unwrap(), "", profile).await.unwrap();
            c.reconcile(&decode_profile(stored).unwrap()).await.unwrap();
        }
        let nsr = res("", "v1", "namespaces").unwrap();
        api.create_object(
            nsr,
            "",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}}),
        )
        .await
        .unwrap();
        assert_ne!(get(&api, "namespaces", "", "gone").await, Value::Null);
        // deleted with no controller running
        api.delete_object(profiles().unwrap(), "", "gone").await.unwrap();
        let task = c.spawn();
        let mut finalized = false;
        for _ in 0..500 {
            if get(&api, "namespaces", "", "gone").await == Value::Null {
                finalized = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        task.abort();
        assert!(finalized, "the deleted Profile's namespace is finalized");
        assert_ne!(get(&api, "namespaces", "", "kept").await, Value::Null);
        assert_ne!(get(&api, "namespaces", "", "plain").await, Value::Null);
    }

    /// A store whose reads and writes yield first, so two controllers interleave between a
    /// read and the write that depends on it (as two replicas on etcd do).
    struct Yielding(Arc<MemoryStore>);

    #[async_trait::async_trait]
    impl Store for Yielding {
        async fn get(&self, key: &str) -> Result<Option<kfsec_store::KeyValue>, kfsec_store::StoreError> {
            tokio::task::yield_now().await;
            self.0.get(key).await
        }
        async fn list(
            &self,
            prefix: &str,
            limit: usize,
            start_after: Option<&str>,
        ) -> Result<kfsec_store::ListPage, kfsec_store::StoreError> {
            self.0.list(prefix, limit, start_after).await
        }
        async fn create(
            &self,
            key: &str,
            value: Vec<u8>,
            ttl: Option<std::time::Duration>,
        ) -> Result<u64, kfsec_store::StoreError> {
            tokio::task::yield_now().await;
            self.0.create(key, value, ttl).await
        }
        async fn update(
            &self,
            key: &str,
            value: Vec<u8>,
            expected: Option<u64>,
            ttl: Option<std::time::Duration>,
        ) -> Result<u64, kfsec_store::StoreError> {
            tokio::task::yield_now().await;
            self.0.update(key, value, expected, ttl).await
        }
        async fn put(
            &self,
            key: &str,
            value: Vec<u8>,
            ttl: Option<std::time::Duration>,
        ) -> Result<u64, kfsec_store::StoreError> {
            self.0.put(key, value, ttl).await
        }
        async fn delete(
            &self,
            key: &str,
            expected: Option<u64>,
        ) -> Result<kfsec_store::KeyValue, kfsec_store::StoreError> {
            self.0.delete(key, expected).await
        }
        async fn take(&self, key: &str) -> Result<Option<kfsec_store::KeyValue>, kfsec_store::StoreError> {
            self.0.take(key).await
        }
        async fn revision(&self) -> Result<u64, kfsec_store::StoreError> {
            self.0.revision().await
        }
        async fn watch(&self, prefix: &str, after: u64) -> Result<kfsec_store::WatchStream, kfsec_store::StoreError> {
            self.0.watch(prefix, after).await
        }
    }

    /// Two controllers at once on one store (two replicas during a leader handover, each with
    /// its own API server): every Profile gets exactly one namespace, its three RoleBindings and
    /// two ServiceAccounts, once each, and a Successful status — never "namespace already
    /// exist" from the race.
    #[tokio::test]
    async fn two_controllers_at_once_make_exactly_one_of_each_object() {
        let clock = ManualClock::new(UnixTime::from_millis(1_700_000_000_000));
        let store: Arc<dyn Store> = Arc::new(Yielding(MemoryStore::new(clock.clone())));
        let replica = || {
            ApiServer::new(
                store.clone(),
                Arc::new(Nobody),
                clock.clone(),
                Arc::new(kfsec_types::SequenceRng::default()),
            )
        };
        let (a, b) = (replica(), replica());
        let ca = ProfileController::new(a.clone(), ProfileSettings::default());
        let cb = ProfileController::new(b.clone(), ProfileSettings::default());
        let (ta, tb) = (ca.spawn(), cb.spawn());
        const N: usize = 12;
        for i in 0..N {
            let api = if i % 2 == 0 { &a } else { &b };
            let profile = json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": format!("team-{i}")},
                                 "spec": {"owner": {"kind": "User", "name": format!("u{i}@example.com")},
                                          "resourceQuotaSpec": {"hard": {"cpu": "1"}}}});
            api.create_object(profiles().unwrap(), "", profile).await.unwrap();
        }
        // Both also reconcile every Profile directly, racing each other and the watchers.
        let listed = a.list_objects(profiles().unwrap(), None, "").await.unwrap();
        let mut racers = Vec::new();
        for o in listed.items {
            for c in [ca.clone(), cb.clone()] {
                let p = decode_profile(o.clone()).unwrap();
                racers.push(tokio::spawn(async move { c.reconcile(&p).await }));
            }
        }
        for r in racers {
            // A status write that lost to the other's is fine; a lost create must not fail it.
            r.await.unwrap().unwrap();
        }
        let mut settled = false;
        for _ in 0..500 {
            let ps = a.list_objects(profiles().unwrap(), None, "").await.unwrap();
            if ps
                .items
                .iter()
                .all(|p| p["status"]["conditions"][0]["type"] == "Successful")
            {
                settled = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        ta.abort();
        tb.abort();
        assert!(settled, "every Profile ends Successful");
        let names = |items: Vec<Value>| -> Vec<String> {
            let mut v: Vec<String> = items
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
                .collect();
            v.sort();
            v
        };
        let rb = res("rbac.authorization.k8s.io", "v1", "rolebindings").unwrap();
        let sa = res("", "v1", "serviceaccounts").unwrap();
        let rq = res("", "v1", "resourcequotas").unwrap();
        let nsr = res("", "v1", "namespaces").unwrap();
        for i in 0..N {
            let ns = format!("team-{i}");
            let n = get(&a, "namespaces", "", &ns).await;
            assert_eq!(n["metadata"]["ownerReferences"].as_array().unwrap().len(), 1);
            assert_eq!(
                names(a.list_objects(rb, Some(&ns), "").await.unwrap().items),
                ["default-editor", "default-viewer", "namespaceAdmin"]
            );
            assert_eq!(
                names(a.list_objects(sa, Some(&ns), "").await.unwrap().items),
                ["default-editor", "default-viewer"]
            );
            assert_eq!(
                names(a.list_objects(rq, Some(&ns), "").await.unwrap().items),
                ["kf-resource-quota"]
            );
        }
        let all = names(a.list_objects(nsr, None, "").await.unwrap().items);
        assert_eq!(all.iter().filter(|n| n.starts_with("team-")).count(), N);
    }
}
