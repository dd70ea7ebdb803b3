//! The PKI the replicas share through the store, under [`PREFIX`]: the CA set (the signing CA
//! with its private key, and during a rotation window the previous CA, the cross certificate and
//! the window's end) and every certificate kfsec issues to itself (front door, webhook Services,
//! the gateway's workload certificate) with its key. The store is the source of truth; the pki
//! directory is each replica's copy, written at start and on every change the watch reports, so
//! the files tools and docs read (`pki/ca.crt`, `pki/ca-bundle.crt`, `pki/frontdoor.crt`) stay
//! where they are, with what every replica serves.
//!
//! - The CA: the first replica publishes its CA with `create` (create-if-absent). A data
//!   directory that already has a CA (a single-replica kfsec before the store held the PKI)
//!   migrates it into the store as it is; a new CA is minted only when neither has one. A replica
//!   that loses the race adopts the winner's before it issues anything: never two CAs.
//! - Every change (renewal, rotation, the end of a window) is a compare-and-swap on the record's
//!   revision. The loser of a race adopts the stored value when it is usable (a chain of the
//!   current CA set, not due), so replicas renewing at once converge on one certificate.
//! - A certificate's record is named by its file and, for one issued for a set of names (the
//!   front door), a digest of those names: replicas serving the same names share one
//!   certificate, a replica with a host name of its own has its own, from the same CA.
//! - The admin kubeconfig is not shared: each replica issues its own admin client certificate
//!   from the shared CA (`CN=kfsec-admin, O=system:masters`), which every replica accepts.
//!
//! Invariants: every value under [`PREFIX`] holds a private key, so the whole prefix is secret
//! ([`SECRET_PREFIXES`], sealed under `secretsEncryption`); key files are written 0600 and
//! atomically, before their certificates; a stored certificate is validated (PEM, key matches,
//! chain of the current CA set, not due) before it is served, and a bad one never replaces a
//! good one; a local rotation the store refused is undone from the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kfsec_pki::{CaSet, KeyAlgorithm, PkiError};
use kfsec_store::{KeyValue, Revision, Store, StoreError};
use kfsec_types::Clock;

use super::{RotationStatus, Trust, due};
use crate::ServerError;

/// Where the shared PKI lives in the store.
pub const PREFIX: &str = "/kfsec/pki/";
/// Secret prefixes owned here: every PKI record holds a private key.
pub const SECRET_PREFIXES: &[&str] = &[PREFIX];
/// The CA set's record.
const CA_RECORD: &str = "/kfsec/pki/ca";
/// The CA set's files, in writing order: the key before its certificate (a copy cut short
/// leaves an incomplete CA, an error, never a certificate without its key), the window's end
/// before the window's certificates.
const CA_FILES: [&str; 5] = [
    "ca.key",
    "ca.crt",
    "ca-rotation.json",
    "ca-previous.crt",
    "ca-cross.crt",
];
/// A local rotation's commit record (`kfsec_pki::CaSet`); never shared: the store's CA set wins.
const CA_PENDING: &str = "ca-rotation.pending";
const ATTEMPTS: usize = 5;
/// How long the follower waits before watching again after the store failed.
const RETRY: Duration = Duration::from_secs(1);

/// One record: file name (relative to the pki directory) → contents.
#[derive(Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Files {
    files: BTreeMap<String, String>,
}

/// A file of a record: its name in the record and its path.
type Names = Vec<(String, PathBuf)>;

fn unreadable(key: &str, cause: impl std::fmt::Display) -> ServerError {
    ServerError::Pki(PkiError::InvalidCa(format!(
        "the stored PKI record {key} is unreadable: {cause}"
    )))
}

fn decode(kv: &KeyValue) -> Result<Files, ServerError> {
    serde_json::from_slice(&kv.value).map_err(|e| unreadable(&kv.key, e))
}

/// The CA set's record, which always holds the signing CA and its key (never taken as "no CA",
/// which would mint one).
fn decode_ca(kv: &KeyValue) -> Result<Files, ServerError> {
    let files = decode(kv)?;
    if !(files.files.contains_key("ca.crt") && files.files.contains_key("ca.key")) {
        return Err(unreadable(&kv.key, "it holds no CA certificate and key"));
    }
    Ok(files)
}

fn encode(key: &str, files: &Files) -> Result<Vec<u8>, ServerError> {
    serde_json::to_vec(files).map_err(|e| unreadable(key, e))
}

fn read_opt(path: &Path) -> Result<Option<String>, ServerError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ServerError::Io {
            what: format!("reading {}", path.display()),
            source,
        }),
    }
}

fn remove(path: &Path) -> Result<(), ServerError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ServerError::Io {
            what: format!("removing {}", path.display()),
            source,
        }),
    }
}

/// The files of `names` that exist.
fn snapshot(names: &Names) -> Result<Files, ServerError> {
    let mut files = BTreeMap::new();
    for (name, path) in names {
        if let Some(text) = read_opt(path)? {
            files.insert(name.clone(), text);
        }
    }
    Ok(Files { files })
}

/// Makes the files of `names` hold `files` (absent ones removed), keys 0600, each atomically;
/// whether anything changed.
fn materialise(files: &Files, names: &Names) -> Result<bool, ServerError> {
    let mut changed = false;
    for (name, path) in names {
        let want = files.files.get(name);
        if read_opt(path)?.as_ref() == want {
            continue;
        }
        changed = true;
        match want {
            Some(text) if name.ends_with(".key") => kfsec_pki::write_private_file(path, text.as_bytes())?,
            Some(text) => kfsec_pki::write_public_file(path, text.as_bytes())?,
            None => remove(path)?,
        }
    }
    Ok(changed)
}

fn ca_names(dir: &Path) -> Names {
    CA_FILES.iter().map(|n| ((*n).to_owned(), dir.join(n))).collect()
}

/// FNV-1a: a stable digest naming a certificate's record after the names it is issued for (not
/// a security boundary: a stored certificate is checked before it is served).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A certificate's record key and its files (key, certificate, then the names tag).
fn item_names(dir: &Path, spec: &super::CertSpec) -> (String, Names) {
    let rel = |p: &Path| p.strip_prefix(dir).unwrap_or(p).to_string_lossy().into_owned();
    let (crt, key) = &spec.files;
    let mut names = vec![(rel(key), key.clone()), (rel(crt), crt.clone())];
    let mut record = format!("{PREFIX}certs/{}", rel(crt));
    if let Some((path, text)) = &spec.tag {
        names.push((rel(path), path.clone()));
        record.push_str(&format!("@{:016x}", fnv1a(text.as_bytes())));
    }
    (record, names)
}

/// Makes the pki directory's CA set the store's, and loads it: the stored one is written into
/// `dir`; without one, the directory's (an upgrade: migrated as it is) or a new one is published
/// with `create`, and a replica that loses that race adopts the winner's. Returns the set and
/// its record's revision.
pub async fn ensure_ca(
    store: &dyn Store,
    dir: &Path,
    alg: KeyAlgorithm,
    clock: &dyn Clock,
) -> Result<(CaSet, Revision), ServerError> {
    let names = ca_names(dir);
    for _ in 0..ATTEMPTS {
        if let Some(kv) = store.get(CA_RECORD).await? {
            let files = decode_ca(&kv)?;
            if let Some(rotated) = local_successor(dir, &files, alg, clock) {
                let (cas, local) = rotated?;
                match store
                    .update(CA_RECORD, encode(CA_RECORD, &local)?, Some(kv.mod_revision), None)
                    .await
                {
                    Ok(rev) => {
                        tracing::info!(subject = %cas.current().info().subject, "the CA rotation made in the pki directory while no server ran is now the shared CA set");
                        return Ok((cas, rev));
                    }
                    Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            ensure_dir(dir)?;
            let had = dir.join("ca.crt").exists();
            // The store's set wins over a rotation this directory began but never shared.
            remove(&dir.join(CA_PENDING))?;
            if materialise(&files, &names)? {
                if had {
                    tracing::warn!(dir = %dir.display(), "the pki directory's CA differed from the shared CA in the store; replaced by the store's");
                } else {
                    tracing::info!(dir = %dir.display(), "wrote the shared CA from the store");
                }
            }
            return Ok((CaSet::load_or_create(dir, alg, clock)?, kv.mod_revision));
        }
        let had = dir.join("ca.crt").exists();
        let cas = CaSet::load_or_create(dir, alg, clock)?;
        let files = snapshot(&names)?;
        match store.create(CA_RECORD, encode(CA_RECORD, &files)?, None).await {
            Ok(rev) => {
                if had {
                    tracing::info!(subject = %cas.current().info().subject, "the data directory's CA is now the shared CA (migrated into the store)");
                } else {
                    tracing::info!(subject = %cas.current().info().subject, "published the new CA to the store");
                }
                return Ok((cas, rev));
            }
            Err(StoreError::AlreadyExists(_)) => {
                tracing::info!("another replica published its CA first; adopting it");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(changing())
}

/// The pki directory's CA set when it is the stored one's next state, made there with files
/// only while no server ran (`kfsec_server::trust::rotate_offline`, or a crash between a
/// rotation and its publication): the stored CA rotated (its certificate is the directory's
/// previous CA) or its window ended (same signing CA, no previous one). Anything else in the
/// directory is not the store's and is replaced.
fn local_successor(
    dir: &Path,
    stored: &Files,
    alg: KeyAlgorithm,
    clock: &dyn Clock,
) -> Option<Result<(CaSet, Files), ServerError>> {
    if !dir.join("ca.crt").exists() && !dir.join(CA_PENDING).exists() {
        return None;
    }
    let stored_ca = stored.files.get("ca.crt")?;
    let stored_previous = stored.files.get("ca-previous.crt");
    // Only a directory that holds one of those states is loaded (a pending rotation rolled
    // forward): reading the files first decides nothing is written otherwise.
    let local = snapshot(&ca_names(dir)).ok()?;
    let pending = dir.join(CA_PENDING).exists();
    // Rotated from the stored signing CA (a stored window of an older CA had ended here first).
    let rotated = pending || local.files.get("ca-previous.crt") == Some(stored_ca);
    let finished = stored_previous.is_some()
        && local.files.get("ca.crt") == Some(stored_ca)
        && !local.files.contains_key("ca-previous.crt");
    if !(rotated || finished) {
        return None;
    }
    let cas = match CaSet::load_or_create(dir, alg, clock) {
        Ok(cas) => cas,
        Err(e) => return Some(Err(e.into())),
    };
    let local = match snapshot(&ca_names(dir)) {
        Ok(l) => l,
        Err(e) => return Some(Err(e)),
    };
    let successor = if rotated {
        local.files.get("ca-previous.crt") == Some(stored_ca)
    } else {
        cas.previous().is_none()
    };
    successor.then_some(Ok((cas, local)))
}

fn ensure_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ServerError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })
}

/// A change of the shared CA set lost to another replica's (which was adopted).
pub(super) fn changing() -> ServerError {
    ServerError::Pki(PkiError::Rotation(
        "another replica changed the shared CA set at the same time; its change is kept, try again".into(),
    ))
}

/// `kfsec cert rotate-ca` when no server runs here: the store's CA set is rotated (or its window
/// ended) and written back by compare-and-swap; the pki directory follows the store either way.
pub async fn rotate_offline(
    store: &dyn Store,
    dir: &Path,
    window: Option<Duration>,
    clock: &dyn Clock,
) -> Result<RotationStatus, ServerError> {
    let (_, rev) = ensure_ca(store, dir, KeyAlgorithm::default(), clock).await?;
    let status = super::rotate_offline(dir, window, clock)?;
    let files = snapshot(&ca_names(dir))?;
    match store
        .update(CA_RECORD, encode(CA_RECORD, &files)?, Some(rev), None)
        .await
    {
        Ok(_) => Ok(status),
        Err(e) => {
            // Undo the local change: the directory mirrors the store.
            ensure_ca(store, dir, KeyAlgorithm::default(), clock).await?;
            Err(match e {
                StoreError::Conflict { .. } | StoreError::NotFound(_) => changing(),
                e => e.into(),
            })
        }
    }
}

/// How a [`Trust`] shares through the store.
pub(super) struct Shared {
    /// Weak: the PKI never keeps a store open (a redb file stays locked while it is open)
    /// after the server that opened it is gone.
    store: std::sync::Weak<dyn Store>,
    /// The CA record's revision this replica's CA set is.
    ca_rev: AtomicU64,
    /// Per item (same order): the revision of its record this replica serves or wrote.
    item_revs: Vec<AtomicU64>,
}

impl Shared {
    fn store(&self) -> Result<Arc<dyn Store>, ServerError> {
        self.store
            .upgrade()
            .ok_or_else(|| ServerError::Store(StoreError::Unavailable("the store is closed".into())))
    }
}

impl Trust {
    /// Shares this PKI through `store`, whose CA record at `ca_rev` is this replica's CA set
    /// ([`ensure_ca`]): publishes what changed here (a window that ended at start), adopts each
    /// certificate another replica published or publishes this one's, then follows the store's
    /// changes (the returned task): a renewal or rotation made on another replica is served here
    /// without a restart.
    pub async fn share(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        ca_rev: Revision,
    ) -> Result<tokio::task::JoinHandle<()>, ServerError> {
        let shared = Shared {
            store: Arc::downgrade(&store),
            ca_rev: AtomicU64::new(ca_rev),
            item_revs: self.items.iter().map(|_| AtomicU64::new(0)).collect(),
        };
        if self.shared.set(shared).is_err() {
            return Err(ServerError::Pki(PkiError::InvalidRequest(
                "the PKI is shared already".into(),
            )));
        }
        {
            let _busy = self.busy.lock().await;
            self.publish_locked().await?;
        }
        Ok(self.spawn_follow())
    }

    /// Brings this replica to the store's CA set and certificates (busy lock held).
    pub(super) async fn sync_locked(&self) -> Result<(), ServerError> {
        let Some(sh) = self.shared.get() else { return Ok(()) };
        self.adopt_ca(sh).await?;
        for (i, item) in self.items.iter().enumerate() {
            let (record, names) = item_names(&self.pki_dir, &item.spec);
            let Some(kv) = sh.store()?.get(&record).await? else {
                continue;
            };
            if kv.mod_revision == sh.item_revs[i].load(Ordering::Acquire) {
                continue;
            }
            let stored = decode(&kv)?;
            if stored == snapshot(&names)? || self.adopt_item(i, &stored, &names)? {
                sh.item_revs[i].store(kv.mod_revision, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Writes what changed here (CA set, certificates) to the store by compare-and-swap; where
    /// another replica wrote first, adopts its value (busy lock held). Whether this replica's CA
    /// set is the stored one (false: another replica's change won and was adopted). Every item
    /// is attempted; the first failure is returned.
    pub(super) async fn publish_locked(&self) -> Result<bool, ServerError> {
        let Some(sh) = self.shared.get() else { return Ok(true) };
        let kept = self.publish_ca(sh).await?;
        let mut first = None;
        for i in 0..self.items.len() {
            if let Err(e) = self.publish_item(sh, i).await {
                tracing::warn!(cert = %self.items[i].spec.name, error = %e, "sharing the certificate through the store failed; retrying");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(kept), Err)
    }

    async fn publish_ca(&self, sh: &Shared) -> Result<bool, ServerError> {
        let local = snapshot(&ca_names(&self.pki_dir))?;
        let stored = sh.store()?.get(CA_RECORD).await?;
        let written = match &stored {
            Some(kv) if decode(kv)? == local => {
                sh.ca_rev.store(kv.mod_revision, Ordering::Release);
                return Ok(true);
            }
            Some(kv) if kv.mod_revision == sh.ca_rev.load(Ordering::Acquire) => {
                sh.store()?
                    .update(CA_RECORD, encode(CA_RECORD, &local)?, Some(kv.mod_revision), None)
                    .await
            }
            // Another replica changed the set since this one read it: theirs is kept.
            Some(_) => Err(StoreError::Conflict {
                key: CA_RECORD.into(),
                expected: sh.ca_rev.load(Ordering::Acquire),
                found: 0,
            }),
            None => sh.store()?.create(CA_RECORD, encode(CA_RECORD, &local)?, None).await,
        };
        match written {
            Ok(rev) => {
                sh.ca_rev.store(rev, Ordering::Release);
                tracing::info!(subject = %self.cas().current().info().subject, "shared the changed CA set through the store");
                Ok(true)
            }
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => {
                tracing::info!("another replica changed the shared CA set first; adopting its change");
                self.adopt_ca(sh).await?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the stored CA set if it is not the one this replica has: files, verifiers, admin
    /// kubeconfig (certificates follow from their own records). Whether it changed.
    async fn adopt_ca(&self, sh: &Shared) -> Result<bool, ServerError> {
        let Some(kv) = sh.store()?.get(CA_RECORD).await? else {
            return Ok(false);
        };
        if kv.mod_revision == sh.ca_rev.load(Ordering::Acquire) {
            return Ok(false);
        }
        let files = decode_ca(&kv)?;
        remove(&self.pki_dir.join(CA_PENDING))?;
        materialise(&files, &ca_names(&self.pki_dir))?;
        let current = self.cas();
        let next = CaSet::load_or_create(&self.pki_dir, current.current().key_algorithm(), self.clock.as_ref())?;
        sh.ca_rev.store(kv.mod_revision, Ordering::Release);
        if next.current().cert_pem() == current.current().cert_pem()
            && next.trust_bundle_pem() == current.trust_bundle_pem()
            && next.chain_suffix_pem() == current.chain_suffix_pem()
        {
            return Ok(false);
        }
        tracing::info!(subject = %next.current().info().subject, "adopted the CA set another replica changed");
        let (cas, epoch) = self.trust_set(next)?;
        match (self.trusting.admin_kubeconfig)(&cas) {
            Ok(()) => self.kubeconfig_epoch.store(epoch, Ordering::Release),
            Err(e) => tracing::warn!(error = %e, "rewriting the admin kubeconfig failed; retrying"),
        }
        Ok(true)
    }

    async fn publish_item(&self, sh: &Shared, i: usize) -> Result<(), ServerError> {
        let (record, names) = item_names(&self.pki_dir, &self.items[i].spec);
        let known = &sh.item_revs[i];
        for _ in 0..ATTEMPTS {
            let local = snapshot(&names)?;
            let written = match sh.store()?.get(&record).await? {
                None if !self.is_current(&local, &names) => return Ok(()),
                None => sh.store()?.create(&record, encode(&record, &local)?, None).await,
                Some(kv) => {
                    let stored = decode(&kv)?;
                    if stored == local
                        || (kv.mod_revision != known.load(Ordering::Acquire) && self.adopt_item(i, &stored, &names)?)
                    {
                        known.store(kv.mod_revision, Ordering::Release);
                        return Ok(());
                    }
                    if !self.is_current(&local, &names) {
                        // Issued under a CA set this replica no longer has: re-issued first.
                        return Ok(());
                    }
                    sh.store()?
                        .update(&record, encode(&record, &local)?, Some(kv.mod_revision), None)
                        .await
                }
            };
            match written {
                Ok(rev) => {
                    known.store(rev, Ordering::Release);
                    return Ok(());
                }
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_) | StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(changing())
    }

    /// Whether `files` hold a chain of the current CA set.
    fn is_current(&self, files: &Files, names: &Names) -> bool {
        names
            .get(1)
            .and_then(|(crt_name, _)| files.files.get(crt_name))
            .is_some_and(|chain| self.cas().is_current_chain(chain))
    }

    /// Serves `stored` for item `i` if it is usable (a valid pair, a chain of the current CA set,
    /// issued for the same names, not due) and writes its files. Whether it did.
    fn adopt_item(&self, i: usize, stored: &Files, names: &Names) -> Result<bool, ServerError> {
        let item = &self.items[i];
        let [(key_name, _), (crt_name, _), tag @ ..] = names.as_slice() else {
            return Ok(false);
        };
        let (Some(chain), Some(key_pem)) = (stored.files.get(crt_name), stored.files.get(key_name)) else {
            return Ok(false);
        };
        let same_names = match (tag.first(), &item.spec.tag) {
            (Some((tag_name, _)), Some((_, text))) => stored.files.get(tag_name) == Some(text),
            _ => true,
        };
        let fresh = kfsec_pki::parse_cert_pem(chain)
            .is_ok_and(|info| !due(info.not_after, self.clock.now(), item.spec.lifetime));
        if !(same_names && fresh && self.cas().is_current_chain(chain)) {
            return Ok(false);
        }
        if let Err(e) = item.resolver.replace(chain, key_pem) {
            tracing::warn!(cert = %item.spec.name, error = %e, "the stored certificate is unusable; keeping the current one");
            return Ok(false);
        }
        item.epoch.store(self.epoch.load(Ordering::Acquire), Ordering::Release);
        materialise(stored, names)?;
        tracing::info!(cert = %item.spec.name, "serving the certificate shared through the store");
        Ok(true)
    }

    /// Follows the store's PKI records until the task is dropped: each change is adopted.
    fn spawn_follow(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let mut events = match this.open_watch().await {
                    None => return,
                    Some(Ok(w)) => w,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching the shared PKI failed; retrying");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                };
                while let Some(event) = events.recv().await {
                    if let Err(e) = event {
                        tracing::warn!(error = %e, "the shared PKI watch ended; watching again");
                        break;
                    }
                    // One pass for a burst of changes (a rotation writes every record).
                    while let Ok(Ok(_)) = events.try_recv() {}
                    this.sync().await;
                }
                tokio::time::sleep(RETRY).await;
            }
        })
    }

    /// A watch of [`PREFIX`] from now, after one pass over what changed before it; `None` once
    /// the store is closed. The store is held only for this.
    async fn open_watch(&self) -> Option<Result<kfsec_store::WatchStream, StoreError>> {
        let store = self.shared.get()?.store.upgrade()?;
        let from = match store.revision().await {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        // Whatever changed before the watch starts.
        self.sync().await;
        Some(store.watch(PREFIX, from).await)
    }

    async fn sync(&self) {
        let _busy = self.busy.lock().await;
        if let Err(e) = self.sync_locked().await {
            tracing::warn!(error = %e, "following the shared PKI failed; retrying at the next change");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{BEHIND_GRACE, CertSpec, Renewable, Trusting, front_door_config};
    use kfsec_pki::{LiveRoots, LiveServerConfig};
    use kfsec_store::MemoryStore;
    use kfsec_types::{ManualClock, UnixTime};

    type R<T = ()> = Result<T, Box<dyn std::error::Error>>;

    const LIFETIME: Duration = Duration::from_secs(3000);

    struct Replica {
        trust: Arc<Trust>,
        dir: tempfile::TempDir,
        _follow: tokio::task::JoinHandle<()>,
    }

    impl Replica {
        fn pki(&self) -> PathBuf {
            self.dir.path().join("pki")
        }
        fn file(&self, name: &str) -> String {
            std::fs::read_to_string(self.pki().join(name)).unwrap_or_default()
        }
        fn serving(&self) -> String {
            self.trust.items[0].resolver().info().serial_hex
        }
    }

    /// A replica's PKI as `start_with` builds it (CA from the store, a front-door certificate),
    /// on `dir`, sharing through `store`.
    async fn replica_in(dir: tempfile::TempDir, store: Arc<dyn Store>, clock: Arc<ManualClock>) -> R<Replica> {
        replica_named(dir, store, clock, "localhost").await
    }

    /// [`replica_in`] with a front-door certificate for `host` (a host name of its own: a record
    /// of its own).
    async fn replica_named(
        dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        clock: Arc<ManualClock>,
        host: &str,
    ) -> R<Replica> {
        let pki = dir.path().join("pki");
        let (cas, rev) = ensure_ca(store.as_ref(), &pki, KeyAlgorithm::EcdsaP256, clock.as_ref()).await?;
        let names = vec![host.to_owned()];
        let spec = CertSpec {
            name: "front door".into(),
            tag: Some((pki.join("frontdoor.names"), format!("{names:?} []"))),
            issue: Box::new(move |ca: &kfsec_pki::CertificateAuthority, clock: &dyn Clock| {
                ca.issue_server("kfsec front door", &names, &[], LIFETIME, clock)
            }),
            files: (pki.join("frontdoor.crt"), pki.join("frontdoor.key")),
            lifetime: LIFETIME,
        };
        let item = Renewable::establish(spec, &cas, clock.as_ref())?;
        let resolver = item.resolver().clone();
        let trusting = Trusting {
            front_door: (
                LiveServerConfig::new(front_door_config(resolver.clone(), &cas)?),
                resolver,
            ),
            upstream_roots: LiveRoots::new(&cas.trust_bundle_pem())?,
            admin_kubeconfig: Box::new(|_: &CaSet| Ok(())),
        };
        let trust = Trust::new(pki, clock, Arc::new(cas), vec![item], trusting);
        let follow = trust.share(store, rev).await?;
        Ok(Replica {
            trust,
            dir,
            _follow: follow,
        })
    }

    async fn replica(store: Arc<dyn Store>, clock: Arc<ManualClock>) -> R<Replica> {
        replica_in(tempfile::tempdir()?, store, clock).await
    }

    fn setup() -> (Arc<dyn Store>, Arc<ManualClock>) {
        let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000));
        (MemoryStore::new(clock.clone()), clock)
    }

    /// Polls (10 ms) until `f` holds, for at most 5 s.
    async fn eventually(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn replicas_starting_together_share_one_ca_and_one_front_door_certificate() -> R {
        for _ in 0..3 {
            let (store, clock) = setup();
            let (a, b) = tokio::join!(
                replica(store.clone(), clock.clone()),
                replica(store.clone(), clock.clone())
            );
            let (a, b) = (a?, b?);
            assert_eq!(a.file("ca.crt"), b.file("ca.crt"), "one CA");
            assert_eq!(a.file("ca.key"), b.file("ca.key"));
            assert_eq!(a.file("ca-bundle.crt"), b.file("ca-bundle.crt"));
            assert_eq!(a.trust.cas().current().cert_pem(), b.trust.cas().current().cert_pem());
            assert!(
                eventually(|| a.serving() == b.serving()).await,
                "one front-door certificate"
            );
            assert!(eventually(|| a.file("frontdoor.crt") == b.file("frontdoor.crt")).await);
            // The files are what is served, keys 0600.
            use std::os::unix::fs::PermissionsExt;
            for r in [&a, &b] {
                let served = kfsec_pki::parse_cert_pem(&r.file("frontdoor.crt"))?.serial_hex;
                assert_eq!(served, r.serving());
                for key in ["ca.key", "frontdoor.key"] {
                    let mode = std::fs::metadata(r.pki().join(key))?.permissions().mode();
                    assert_eq!(mode & 0o777, 0o600, "{key}");
                }
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_new_replica_adopts_the_stored_pki_instead_of_its_own_files() -> R {
        let (store, clock) = setup();
        let a = replica(store.clone(), clock.clone()).await?;
        // A data directory with a CA of its own (another cluster's, or left behind).
        let stale = tempfile::tempdir()?;
        CaSet::load_or_create(&stale.path().join("pki"), KeyAlgorithm::EcdsaP256, clock.as_ref())?;
        let b = replica_in(stale, store.clone(), clock.clone()).await?;
        assert_eq!(b.file("ca.crt"), a.file("ca.crt"));
        assert_eq!(b.file("ca.key"), a.file("ca.key"));
        assert_eq!(b.serving(), a.serving(), "adopted at start, before serving");
        Ok(())
    }

    #[tokio::test]
    async fn an_existing_data_dir_migrates_its_ca_and_certificates_into_the_store() -> R {
        let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000));
        // A single-replica kfsec from before the store held the PKI: files only.
        let old = tempfile::tempdir()?;
        let before = {
            let store: Arc<dyn Store> = MemoryStore::new(clock.clone());
            let r = replica_in(old, store, clock.clone()).await?;
            let serial = r.serving();
            let ca = r.file("ca.crt");
            (ca, serial, r.dir)
        };
        let (ca, serial, dir) = before;
        // Its first start on a store without PKI records.
        let store: Arc<dyn Store> = MemoryStore::new(clock.clone());
        let r = replica_in(dir, store.clone(), clock.clone()).await?;
        assert_eq!(
            r.file("ca.crt"),
            ca,
            "the CA is kept: every kubeconfig and caBundle stays valid"
        );
        assert_eq!(r.serving(), serial, "and the front-door certificate too");
        let stored = decode(&store.get(CA_RECORD).await?.ok_or("no CA record")?)?;
        assert_eq!(stored.files.get("ca.crt"), Some(&ca));
        // A replica joining later serves the migrated CA.
        let b = replica(store, clock).await?;
        assert_eq!(b.file("ca.crt"), ca);
        assert_eq!(b.serving(), serial);
        Ok(())
    }

    #[tokio::test]
    async fn a_rotation_on_one_replica_is_served_by_the_other_without_restart() -> R {
        let (store, clock) = setup();
        let a = replica(store.clone(), clock.clone()).await?;
        let b = replica(store.clone(), clock.clone()).await?;
        let status = a.trust.rotate(Duration::from_secs(3600)).await?;
        assert!(status.previous.is_some());
        let subject = a.trust.cas().current().info().subject.clone();
        assert!(
            eventually(|| b.trust.cas().current().info().subject == subject).await,
            "B follows A's rotation"
        );
        assert!(
            eventually(|| b.serving() == a.serving()).await,
            "and serves A's re-issued certificate"
        );
        assert!(b.trust.cas().is_current_chain(&b.file("frontdoor.crt")));
        for f in [
            "ca.crt",
            "ca-bundle.crt",
            "ca-previous.crt",
            "ca-cross.crt",
            "ca-rotation.json",
        ] {
            assert_eq!(b.file(f), a.file(f), "{f}");
        }
        // A second rotation is refused on B while A's window is open (the shared state).
        assert!(b.trust.rotate(Duration::from_secs(60)).await.is_err());
        // Ending the window on B reaches A.
        b.trust.finish().await?;
        assert!(eventually(|| a.trust.cas().previous().is_none()).await);
        assert!(eventually(|| !a.pki().join("ca-previous.crt").exists()).await);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotations_racing_on_two_replicas_leave_one_ca_set() -> R {
        for _ in 0..3 {
            let (store, clock) = setup();
            let a = replica(store.clone(), clock.clone()).await?;
            let b = replica(store.clone(), clock.clone()).await?;
            let window = Duration::from_secs(3600);
            let (ta, tb) = (a.trust.clone(), b.trust.clone());
            let (ra, rb) = tokio::join!(
                tokio::spawn(async move { ta.rotate(window).await }),
                tokio::spawn(async move { tb.rotate(window).await })
            );
            let (ra, rb) = (ra?, rb?);
            assert!(ra.is_ok() != rb.is_ok(), "exactly one rotation wins: {ra:?} {rb:?}");
            let lost = ra.err().or(rb.err()).ok_or("no loser")?;
            // Lost at the compare-and-swap, or seen before starting (the other's window is open).
            let lost = lost.to_string();
            assert!(
                lost.contains("another replica changed") || lost.contains("one is in progress"),
                "{lost}"
            );
            let stored = decode(&store.get(CA_RECORD).await?.ok_or("no record")?)?;
            let stored_ca = stored.files.get("ca.crt").ok_or("no ca.crt")?.clone();
            for r in [&a, &b] {
                assert!(eventually(|| r.trust.cas().current().cert_pem() == stored_ca).await);
                assert_eq!(r.file("ca.crt"), stored_ca);
            }
            assert!(eventually(|| a.serving() == b.serving()).await, "one certificate");
            assert!(b.trust.cas().is_current_chain(&b.file("frontdoor.crt")));
            assert!(a.trust.cas().is_current_chain(&a.file("frontdoor.crt")));
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_renewal_on_one_replica_is_served_by_the_other_which_issues_nothing() -> R {
        let (store, clock) = setup();
        let a = replica(store.clone(), clock.clone()).await?;
        let b = replica(store.clone(), clock.clone()).await?;
        let old = a.serving();
        assert_eq!(b.serving(), old);
        clock.advance(LIFETIME * 2 / 3 + Duration::from_secs(1));
        // Only A runs the renewal (the leader); B follows the store.
        a.trust.tick().await;
        assert_ne!(a.serving(), old, "renewed");
        assert!(eventually(|| b.serving() == a.serving()).await, "B serves A's renewal");
        assert!(eventually(|| b.file("frontdoor.crt") == a.file("frontdoor.crt")).await);
        Ok(())
    }

    #[tokio::test]
    async fn renewals_racing_on_two_replicas_converge_on_one_certificate() -> R {
        for _ in 0..3 {
            let (store, clock) = setup();
            let a = replica(store.clone(), clock.clone()).await?;
            let b = replica(store.clone(), clock.clone()).await?;
            clock.advance(LIFETIME * 2 / 3 + Duration::from_secs(1));
            tokio::join!(a.trust.tick(), b.trust.tick());
            assert!(
                eventually(|| a.serving() == b.serving()).await,
                "one certificate after the race"
            );
            let record = format!("{PREFIX}certs/frontdoor.crt@");
            let page = store.list(&record, 0, None).await?;
            assert_eq!(page.items.len(), 1);
            let stored = decode(&page.items[0])?;
            let stored = kfsec_pki::parse_cert_pem(stored.files.get("frontdoor.crt").ok_or("no crt")?)?;
            assert_eq!(stored.serial_hex, a.serving(), "the stored one is the one served");
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_follower_leaves_renewal_to_the_leader_and_serves_its_certificate() -> R {
        let (store, clock) = setup();
        let a = replica(store.clone(), clock.clone()).await?;
        let b = replica(store.clone(), clock.clone()).await?;
        let old = b.serving();
        // Due (the leader renews now), not overdue: the follower's pass issues nothing.
        clock.advance(LIFETIME * 2 / 3 + Duration::from_secs(1));
        assert_eq!(b.trust.follower_tick().await, None);
        assert_eq!((b.trust.issued(), b.serving()), (0, old.clone()));
        a.trust.tick().await;
        assert_eq!(a.trust.issued(), 1);
        assert!(eventually(|| b.serving() == a.serving()).await, "B serves A's renewal");
        // Past the follower's threshold too: what the leader renewed is not renewed again.
        clock.advance(LIFETIME / 6);
        b.trust.follower_tick().await;
        assert_eq!(b.trust.issued(), 0);
        assert_ne!(b.serving(), old);
        Ok(())
    }

    #[tokio::test]
    async fn a_certificate_nobody_else_renews_is_renewed_by_its_follower_once_overdue() -> R {
        let (store, clock) = setup();
        let _leader = replica(store.clone(), clock.clone()).await?;
        // A host name of its own: no other replica serves (or renews) this record.
        let b = replica_named(tempfile::tempdir()?, store.clone(), clock.clone(), "b.example").await?;
        let old = b.serving();
        clock.advance(LIFETIME * 2 / 3 + Duration::from_secs(1));
        b.trust.follower_tick().await;
        assert_eq!(b.serving(), old, "due, but the leader's to renew first");
        clock.advance(LIFETIME / 6);
        b.trust.follower_tick().await;
        assert_eq!(b.trust.issued(), 1, "overdue: renewed by the follower");
        assert_ne!(b.serving(), old);
        // And shared like any renewal.
        let (record, _) = item_names(&b.pki(), &b.trust.items[0].spec);
        let stored = decode(&store.get(&record).await?.ok_or("no record")?)?;
        let stored = kfsec_pki::parse_cert_pem(stored.files.get("frontdoor.crt").ok_or("no crt")?)?;
        assert_eq!(stored.serial_hex, b.serving());
        Ok(())
    }

    #[tokio::test]
    async fn a_follower_reissues_its_own_certificate_for_a_new_ca_set_after_the_grace() -> R {
        let (store, clock) = setup();
        let a = replica(store.clone(), clock.clone()).await?;
        let b = replica_named(tempfile::tempdir()?, store.clone(), clock.clone(), "b.example").await?;
        a.trust.rotate(Duration::from_secs(3600)).await?;
        let subject = a.trust.cas().current().info().subject.clone();
        assert!(eventually(|| b.trust.cas().current().info().subject == subject).await);
        // The leader re-issued its own certificates; B's record is B's alone.
        assert!(!b.trust.cas().is_current_chain(&b.file("frontdoor.crt")));
        assert_eq!(
            b.trust.follower_tick().await,
            Some(BEHIND_GRACE),
            "left to the leader for a while"
        );
        assert_eq!(b.trust.issued(), 0);
        clock.advance(BEHIND_GRACE);
        assert_eq!(b.trust.follower_tick().await, None);
        assert_eq!(b.trust.issued(), 1);
        assert!(b.trust.cas().is_current_chain(&b.file("frontdoor.crt")));
        Ok(())
    }

    #[tokio::test]
    async fn a_stored_certificate_of_another_ca_is_never_served() -> R {
        let (store, clock) = setup();
        let a = replica(store.clone(), clock.clone()).await?;
        let serving = a.serving();
        let (record, names) = item_names(&a.pki(), &a.trust.items[0].spec);
        let other = tempfile::tempdir()?;
        let foreign = CaSet::load_or_create(other.path(), KeyAlgorithm::EcdsaP256, clock.as_ref())?;
        let leaf = foreign
            .current()
            .issue_server("evil", &["localhost".to_owned()], &[], LIFETIME, clock.as_ref())?;
        let mut files = snapshot(&names)?;
        files.files.insert("frontdoor.crt".into(), foreign.chain_pem(&leaf));
        files.files.insert("frontdoor.key".into(), leaf.key_pem.clone());
        store.put(&record, encode(&record, &files)?, None).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.trust.tick().await;
        assert_eq!(a.serving(), serving, "a chain of another CA is not adopted");
        assert!(a.trust.cas().is_current_chain(&a.file("frontdoor.crt")));
        Ok(())
    }

    #[tokio::test]
    async fn a_rotation_made_in_the_files_while_no_server_ran_becomes_the_shared_set() -> R {
        let (store, clock) = setup();
        let a = tempfile::tempdir()?;
        let (first, _) = ensure_ca(store.as_ref(), a.path(), KeyAlgorithm::EcdsaP256, clock.as_ref()).await?;
        // Files only (the pre-store offline path), then the next start.
        let status = super::super::rotate_offline(a.path(), Some(Duration::from_secs(600)), clock.as_ref())?;
        let (now, _) = ensure_ca(store.as_ref(), a.path(), KeyAlgorithm::EcdsaP256, clock.as_ref()).await?;
        assert_eq!(now.current().info().subject, status.current, "kept, not reverted");
        let b = tempfile::tempdir()?;
        let (other, _) = ensure_ca(store.as_ref(), b.path(), KeyAlgorithm::EcdsaP256, clock.as_ref()).await?;
        assert_eq!(other.current().cert_pem(), now.current().cert_pem(), "and shared");
        assert_eq!(
            other.previous().map(|p| p.cert_pem.clone()),
            Some(first.current().cert_pem().to_owned())
        );
        // Its window ended the same way.
        super::super::rotate_offline(b.path(), None, clock.as_ref())?;
        let (ended, _) = ensure_ca(store.as_ref(), b.path(), KeyAlgorithm::EcdsaP256, clock.as_ref()).await?;
        assert!(ended.previous().is_none());
        let (at_a, _) = ensure_ca(store.as_ref(), a.path(), KeyAlgorithm::EcdsaP256, clock.as_ref()).await?;
        assert!(at_a.previous().is_none());
        assert!(!a.path().join("ca-previous.crt").exists());
        // A directory that rotated some other CA is not taken for the store's next state.
        let c = tempfile::tempdir()?;
        CaSet::load_or_create(c.path(), KeyAlgorithm::EcdsaP256, clock.as_ref())?;
        super::super::rotate_offline(c.path(), Some(Duration::from_secs(600)), clock.as_ref())?;
        let (at_c, _) = ensure_ca(store.as_ref(), c.path(), KeyAlgorithm::EcdsaP256, clock.as_ref()).await?;
        assert_eq!(at_c.current().cert_pem(), now.current().cert_pem());
        assert!(!c.path().join("ca-previous.crt").exists());
        Ok(())
    }

    #[tokio::test]
    async fn a_stored_ca_record_without_its_key_is_an_error_never_a_new_ca() -> R {
        let (store, clock) = setup();
        let a = tempfile::tempdir()?;
        ensure_ca(store.as_ref(), a.path(), KeyAlgorithm::EcdsaP256, clock.as_ref()).await?;
        let mut files = decode(&store.get(CA_RECORD).await?.ok_or("no record")?)?;
        files.files.remove("ca.key");
        store.put(CA_RECORD, encode(CA_RECORD, &files)?, None).await?;
        let b = tempfile::tempdir()?;
        let err = ensure_ca(store.as_ref(), b.path(), KeyAlgorithm::EcdsaP256, clock.as_ref())
            .await
            .err()
            .ok_or("accepted")?;
        assert!(err.to_string().contains("no CA certificate and key"), "{err}");
        assert!(!b.path().join("ca.crt").exists(), "no CA of its own");
        Ok(())
    }

    #[tokio::test]
    async fn offline_rotation_goes_through_the_store() -> R {
        let (store, clock) = setup();
        let a = tempfile::tempdir()?;
        let b = tempfile::tempdir()?;
        let (first, _) = ensure_ca(store.as_ref(), a.path(), KeyAlgorithm::EcdsaP256, clock.as_ref()).await?;
        let status = rotate_offline(store.as_ref(), b.path(), Some(Duration::from_secs(600)), clock.as_ref()).await?;
        assert_eq!(
            status.previous.as_deref(),
            Some(first.current().info().subject.as_str())
        );
        // The other directory follows the store at its next start.
        let (now, _) = ensure_ca(store.as_ref(), a.path(), KeyAlgorithm::EcdsaP256, clock.as_ref()).await?;
        assert_eq!(now.current().info().subject, status.current);
        assert!(now.previous().is_some());
        Ok(())
    }
}
