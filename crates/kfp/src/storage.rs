//! How KFP objects live in the kfsec store: JSON under `/kfp/{plural}/{scope}/{id}` (scope = the
//! namespace, `_` for shared pipelines, the pipeline id for versions), an id index
//! (`/kfp/ids/{id}` → kind and scope) so get-by-id never scans, name claims
//! (`/kfp/names/{plural}/{scope}/{name}`) for unique names, and content blobs (pipeline packages,
//! run specs) with their SHA-256.
//!
//! A namespace's objects are purged with it ([`Db::purge_namespace`], called before the
//! Namespace goes).
//!
//! Invariants: a namespace listing is one prefix scan of `/kfp/{plural}/{ns}/` (the trailing
//! slash keeps `user1` from matching `user10`), so it never reads another namespace; scopes are
//! validated DNS labels or ids, so no caller-controlled string can widen a prefix; a blob whose
//! SHA-256 differs from the recorded one is a DataLoss error and is never returned; a stored
//! record that does not decode is DataLoss too.

use std::sync::Arc;

use aws_lc_rs::digest;
use kfsec_store::{Revision, Store, StoreError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{KfpError, KfpResult};

/// The kinds of stored objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Experiments (scope: namespace).
    Experiment,
    /// Runs (scope: namespace).
    Run,
    /// Jobs / recurring runs (scope: namespace).
    Job,
    /// Pipelines (scope: namespace, `_` when shared).
    Pipeline,
    /// Pipeline versions (scope: the pipeline id).
    Version,
}

impl Kind {
    /// The key segment.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Experiment => "experiments",
            Self::Run => "runs",
            Self::Job => "jobs",
            Self::Pipeline => "pipelines",
            Self::Version => "versions",
        }
    }
}

/// Where the content blobs of runs and jobs live.
pub const SPECS: &str = "specs";
/// Where reported workflows live.
pub const RUNTIME: &str = "runtime";
/// Where pipeline versions' packages live.
pub const PACKAGES: &str = "packages";

impl Kind {
    /// The content blobs kept under an object's id.
    fn blobs(self) -> &'static [&'static str] {
        match self {
            Self::Run => &[SPECS, RUNTIME],
            Self::Job => &[SPECS],
            Self::Version => &[PACKAGES],
            Self::Experiment | Self::Pipeline => &[],
        }
    }
}

/// `_` stands for the empty (shared) scope.
pub fn scope_segment(scope: &str) -> &str {
    if scope.is_empty() { "_" } else { scope }
}

/// The prefix holding every object of `kind` in `scope`.
pub fn scope_prefix(kind: Kind, scope: &str) -> String {
    format!("/kfp/{}/{}/", kind.plural(), scope_segment(scope))
}

/// The key of one object.
pub fn object_key(kind: Kind, scope: &str, id: &str) -> String {
    format!("{}{id}", scope_prefix(kind, scope))
}

fn index_key(id: &str) -> String {
    format!("/kfp/ids/{id}")
}

fn name_key(kind: Kind, scope: &str, name: &str) -> String {
    format!("/kfp/names/{}/{}/{name}", kind.plural(), scope_segment(scope))
}

fn blob_key(what: &str, id: &str) -> String {
    format!("/kfp/{what}/{id}")
}

/// A Kubernetes namespace name (DNS label): what may appear as a scope.
pub fn valid_namespace(ns: &str) -> bool {
    kfsec_types::validation::is_dns1123_label(ns)
}

/// An id as kfsec issues them (and a sane bound on what callers may send).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    kfsec_types::hex::encode(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// Where an id lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The kind.
    pub kind: Kind,
    /// The scope (namespace, or pipeline id for versions).
    pub scope: String,
}

/// A stored object.
pub trait Stored: Serialize + DeserializeOwned + Send + Sync {
    /// Its kind.
    const KIND: Kind;
    /// Its id.
    fn id(&self) -> &str;
    /// Its scope.
    fn scope(&self) -> &str;
    /// The name that must be unique in the scope, if any.
    fn unique_name(&self) -> Option<&str> {
        None
    }
}

/// Typed access to the store.
#[derive(Clone)]
pub struct Db {
    store: Arc<dyn Store>,
}

fn corrupt(key: &str) -> KfpError {
    tracing::error!(%key, "kfp: stored record does not decode");
    KfpError::DataLoss(format!("The stored record {key} is corrupt"))
}

impl Db {
    /// Over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Raw bytes at `key`.
    pub async fn get_raw(&self, key: &str) -> KfpResult<Option<(Vec<u8>, Revision)>> {
        match self.store.get(key).await {
            Ok(Some(kv)) => Ok(Some((kv.value, kv.mod_revision))),
            Ok(None) => Ok(None),
            Err(e) => Err(KfpError::store(&e)),
        }
    }

    /// A decoded record.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> KfpResult<Option<(T, Revision)>> {
        match self.get_raw(key).await? {
            None => Ok(None),
            Some((bytes, rev)) => serde_json::from_slice(&bytes)
                .map(|v| Some((v, rev)))
                .map_err(|_| corrupt(key)),
        }
    }

    /// Creates `key`; `Ok(false)` when it exists.
    pub async fn create_raw(&self, key: &str, bytes: Vec<u8>) -> KfpResult<bool> {
        match self.store.create(key, bytes, None).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists(_)) => Ok(false),
            Err(e) => Err(KfpError::store(&e)),
        }
    }

    /// Deletes `key` (absent is fine).
    pub async fn delete(&self, key: &str) -> KfpResult<()> {
        self.erase(key).await.map_err(|e| KfpError::store(&e))
    }

    /// Every record under `prefix`, decoded, in key order.
    pub async fn list<T: DeserializeOwned>(&self, prefix: &str) -> KfpResult<Vec<T>> {
        let all = kfsec_store::list_all(self.store.as_ref(), prefix)
            .await
            .map_err(|e| KfpError::store(&e))?;
        all.items
            .iter()
            .map(|kv| serde_json::from_slice(&kv.value).map_err(|_| corrupt(&kv.key)))
            .collect()
    }

    /// Where `id` lives, if it exists and is of `kind`.
    pub async fn locate(&self, kind: Kind, id: &str) -> KfpResult<Option<String>> {
        if !valid_id(id) {
            return Ok(None);
        }
        Ok(self
            .get::<IndexEntry>(&index_key(id))
            .await?
            .and_then(|(e, _)| (e.kind == kind).then_some(e.scope)))
    }

    /// The object `id` of kind `T`, with its revision.
    pub async fn load<T: Stored>(&self, id: &str) -> KfpResult<Option<(T, Revision)>> {
        let Some(scope) = self.locate(T::KIND, id).await? else {
            return Ok(None);
        };
        self.get::<T>(&object_key(T::KIND, &scope, id)).await
    }

    /// The id claimed by `name` in `scope`.
    pub async fn id_by_name(&self, kind: Kind, scope: &str, name: &str) -> KfpResult<Option<String>> {
        Ok(self
            .get_raw(&name_key(kind, scope, name))
            .await?
            .and_then(|(b, _)| String::from_utf8(b).ok()))
    }

    /// Stores a new object: claims its name (AlreadyExists if taken), then the index, then the
    /// record. `what` names the kind in the AlreadyExists message.
    pub async fn insert<T: Stored>(&self, obj: &T, what: &str) -> KfpResult<()> {
        let scope = obj.scope().to_owned();
        let name_claim = obj.unique_name().map(|n| name_key(T::KIND, &scope, n));
        if let Some(k) = &name_claim
            && !self.create_raw(k, obj.id().as_bytes().to_vec()).await?
        {
            return Err(KfpError::AlreadyExists(format!(
                "Failed to create a new {what}. The name {} already exists. Please specify a new name",
                obj.unique_name().unwrap_or_default()
            )));
        }
        let index = serde_json::to_vec(&IndexEntry {
            kind: T::KIND,
            scope: scope.clone(),
        })
        .map_err(|e| KfpError::Internal(e.to_string()))?;
        let body = serde_json::to_vec(obj).map_err(|e| KfpError::Internal(e.to_string()))?;
        let res = async {
            if !self.create_raw(&index_key(obj.id()), index).await? {
                return Err(KfpError::Internal("id collision".into()));
            }
            if !self.create_raw(&object_key(T::KIND, &scope, obj.id()), body).await? {
                return Err(KfpError::Internal("id collision".into()));
            }
            Ok(())
        }
        .await;
        if res.is_err()
            && let Some(k) = &name_claim
        {
            let _ = self.delete(k).await;
        }
        res
    }

    /// Read-modify-write of object `id` with optimistic concurrency (retried on conflict).
    /// `f` returns an error to abort without writing. NotFound when absent.
    pub async fn modify<T: Stored>(
        &self,
        id: &str,
        not_found: impl Fn() -> KfpError,
        mut f: impl FnMut(&mut T) -> KfpResult<()>,
    ) -> KfpResult<T> {
        let Some(scope) = self.locate(T::KIND, id).await? else {
            return Err(not_found());
        };
        let key = object_key(T::KIND, &scope, id);
        for _ in 0..8 {
            let Some((mut obj, rev)) = self.get::<T>(&key).await? else {
                return Err(not_found());
            };
            f(&mut obj)?;
            let body = serde_json::to_vec(&obj).map_err(|e| KfpError::Internal(e.to_string()))?;
            match self.store.update(&key, body, Some(rev), None).await {
                Ok(_) => return Ok(obj),
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound(_)) => return Err(not_found()),
                Err(e) => return Err(KfpError::store(&e)),
            }
        }
        Err(KfpError::Internal("too many concurrent updates".into()))
    }

    /// Removes an object: the record first (so it disappears at once), then index and name.
    pub async fn remove<T: Stored>(&self, obj: &T) -> KfpResult<()> {
        self.delete(&object_key(T::KIND, obj.scope(), obj.id())).await?;
        self.delete(&index_key(obj.id())).await?;
        if let Some(n) = obj.unique_name() {
            self.delete(&name_key(T::KIND, obj.scope(), n)).await?;
        }
        Ok(())
    }

    /// Stores a content blob (`what` = `packages` or `specs`); returns its SHA-256.
    pub async fn put_blob(&self, what: &str, id: &str, bytes: Vec<u8>) -> KfpResult<String> {
        let sum = sha256_hex(&bytes);
        self.store
            .put(&blob_key(what, id), bytes, None)
            .await
            .map_err(|e| KfpError::store(&e))?;
        Ok(sum)
    }

    /// Reads a content blob and checks it against `sha256`: a mismatch (or a missing blob) is
    /// DataLoss and nothing is returned.
    pub async fn get_blob(&self, what: &str, id: &str, sha256: &str) -> KfpResult<Vec<u8>> {
        let Some((bytes, _)) = self.get_raw(&blob_key(what, id)).await? else {
            tracing::error!(target: "audit", %what, %id, "kfp: stored content is missing");
            return Err(KfpError::DataLoss(format!("The stored content of {id} is missing")));
        };
        if sha256_hex(&bytes) != sha256 {
            tracing::error!(target: "audit", %what, %id, "kfp: stored content failed its SHA-256 check");
            return Err(KfpError::DataLoss(format!(
                "The stored content of {id} failed its integrity check (SHA-256 mismatch)"
            )));
        }
        Ok(bytes)
    }

    /// Deletes a content blob.
    pub async fn delete_blob(&self, what: &str, id: &str) -> KfpResult<()> {
        self.delete(&blob_key(what, id)).await
    }

    /// Deletes everything namespace `ns` holds: its jobs first (so none starts a run
    /// meanwhile), runs, experiments and pipelines with their versions, each as [`Db::remove`]
    /// does with its blobs too.
    pub async fn purge_namespace(&self, ns: &str) -> Result<(), StoreError> {
        for kind in [Kind::Job, Kind::Run, Kind::Experiment, Kind::Pipeline] {
            self.purge_scope(kind, ns).await?;
        }
        Ok(())
    }

    /// Deletes every object of `kind` in `scope` (a pipeline's versions first) with its index
    /// entry and blobs, then the scope's name claims. Only keys are read, so a record that no
    /// longer decodes goes too; each prefix is read again until it is empty, so an object made
    /// meanwhile goes too.
    async fn purge_scope(&self, kind: Kind, scope: &str) -> Result<(), StoreError> {
        let objects = scope_prefix(kind, scope);
        loop {
            let found = kfsec_store::list_all(self.store.as_ref(), &objects).await?;
            if found.items.is_empty() {
                break;
            }
            for kv in found.items {
                let Some(id) = kv.key.strip_prefix(&objects) else {
                    continue;
                };
                if kind == Kind::Pipeline {
                    Box::pin(self.purge_scope(Kind::Version, id)).await?;
                }
                self.erase(&kv.key).await?;
                self.erase(&index_key(id)).await?;
                for what in kind.blobs() {
                    self.erase(&blob_key(what, id)).await?;
                }
            }
        }
        let names = name_key(kind, scope, "");
        loop {
            let found = kfsec_store::list_all(self.store.as_ref(), &names).await?;
            if found.items.is_empty() {
                return Ok(());
            }
            for kv in found.items {
                self.erase(&kv.key).await?;
            }
        }
    }

    /// Deletes `key` (absent is fine).
    async fn erase(&self, key: &str) -> Result<(), StoreError> {
        match self.store.delete(key, None).await {
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A time-ordered id (UUIDv7 layout): 48 bits of milliseconds, then random bits.
pub fn new_id(now_ms: u64, rng: &dyn kfsec_types::Rng) -> String {
    let r: [u8; 10] = kfsec_types::random_array(rng);
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
    b[6..].copy_from_slice(&r);
    b[6] = 0x70 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    let h = kfsec_types::hex::encode(&b);
    format!(
        "{}-{}-{}-{}-{}",
        h.get(0..8).unwrap_or_default(),
        h.get(8..12).unwrap_or_default(),
        h.get(12..16).unwrap_or_default(),
        h.get(16..20).unwrap_or_default(),
        h.get(20..32).unwrap_or_default()
    )
}
