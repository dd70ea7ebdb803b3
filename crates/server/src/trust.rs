//! The live PKI of a running kfsec: the CA set, every certificate kfsec issues to itself (front
//! door, webhook Services, the gateway's workload certificate) and everything that trusts the CA
//! (the front door's client-certificate verifier, the gateway's upstream verifier, the admin
//! kubeconfig).
//!
//! - Renewal: a certificate is re-issued when two thirds of its lifetime have passed, written to
//!   its files and swapped into its resolver — new handshakes get it, open connections are
//!   untouched.
//! - CA rotation (`kfsec cert rotate-ca`): a new signing CA; every certificate is re-issued at
//!   once with the cross-signed chain, and every verifier trusts both CAs until the window ends,
//!   when the previous CA is dropped everywhere.
//!
//! - Replicas share all of it through the store ([`shared`]): each change is written there by
//!   compare-and-swap and followed by the other replicas' watches.
//! - Who renews (issue 14: one leader for singleton work). The leader's pass ([`Trust::spawn`],
//!   run under `Leadership::while_leading`) does the shared work: it ends a CA rotation window and
//!   renews every certificate when it is [`due`]. Every other replica follows the store (its
//!   watch adopts the leader's certificates within moments) and runs only the follower's pass
//!   ([`Trust::spawn_follower`]), which is for what is genuinely this replica's: the admin
//!   kubeconfig (a file of its own, never in the store), and a certificate nobody else renews —
//!   a record is named by the names a certificate is issued for, and the front door's include
//!   this host's name, so on replicas with host names of their own each front-door record is
//!   one replica's alone. The follower cannot know whether the leader serves the same record, so
//!   it renews a certificate only once it is [`overdue`] (a sixth of its lifetime left: the
//!   leader, passing every twelfth of the lifetime, renews by a quarter left), or when it is of
//!   an older CA set [`BEHIND_GRACE`] after the set changed (the leader re-issues at once). A
//!   record the leader shares (webhooks, the gateway's, a front door on one host) is thus never
//!   written by a follower while the leader is alive, and a leader that died does not leave
//!   certificates to expire before another takes over. A user-supplied front-door pair is not
//!   this module's: every replica watches its own files.
//!
//! Invariants: a failed renewal keeps serving the current certificate and is retried on the next
//! tick; private keys are written 0600; rotations, window ends and renewals are serialised.

pub mod shared;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kfsec_pki::{CaSet, CertificateAuthority, IssuedCert, LiveRoots, LiveServerConfig, PkiError, ReloadingResolver};
use kfsec_types::{Clock, UnixTime};
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::ServerError;

/// Issues a fresh certificate for one identity.
pub type Issue = Box<dyn Fn(&CertificateAuthority, &dyn Clock) -> Result<IssuedCert, PkiError> + Send + Sync>;

/// A certificate kfsec issues to itself.
pub struct CertSpec {
    /// For logs.
    pub name: String,
    /// How to issue it.
    pub issue: Issue,
    /// Certificate (chain) and key files.
    pub files: (PathBuf, PathBuf),
    /// The lifetime it is issued with.
    pub lifetime: Duration,
    /// A file and the text it must hold for a stored certificate to be reused (e.g. the names
    /// it was issued for); written with each issuance.
    pub tag: Option<(PathBuf, String)>,
}

/// A certificate kept fresh, and the resolver it is served from.
pub struct Renewable {
    spec: CertSpec,
    resolver: Arc<ReloadingResolver>,
    /// The [`Trust`] epoch (CA set) its certificate was issued under.
    epoch: AtomicU64,
}

impl Renewable {
    /// Loads the stored certificate when it is still good (chain of the current CA set, not due,
    /// same tag) or issues and stores a new one.
    pub fn establish(spec: CertSpec, cas: &CaSet, clock: &dyn Clock) -> Result<Self, ServerError> {
        let (crt, key) = &spec.files;
        if let (Ok(c), Ok(k)) = (std::fs::read_to_string(crt), std::fs::read_to_string(key))
            && spec
                .tag
                .as_ref()
                .is_none_or(|(path, text)| std::fs::read_to_string(path).is_ok_and(|t| &t == text))
            && cas.is_current_chain(&c)
            && let Ok(resolver) = ReloadingResolver::from_pem(&c, &k)
            && !due(resolver.not_after(), clock.now(), spec.lifetime)
        {
            return Ok(Self::new(spec, resolver));
        }
        let (chain, key_pem) = issue(&spec, cas, clock)?;
        // Validated by the resolver first, then persisted for the next start.
        let resolver = ReloadingResolver::from_pem(&chain, &key_pem)?;
        store(&spec, &chain, &key_pem)?;
        Ok(Self::new(spec, resolver))
    }

    fn new(spec: CertSpec, resolver: Arc<ReloadingResolver>) -> Self {
        Self {
            spec,
            resolver,
            epoch: AtomicU64::new(0),
        }
    }

    /// Where it is served from.
    pub fn resolver(&self) -> &Arc<ReloadingResolver> {
        &self.resolver
    }

    fn renew(&self, cas: &CaSet, epoch: u64, clock: &dyn Clock) -> Result<(), ServerError> {
        let (chain, key_pem) = issue(&self.spec, cas, clock)?;
        // Swap first (validates the pair), then persist for the next start.
        self.resolver.replace(&chain, &key_pem)?;
        self.epoch.store(epoch, Ordering::Release);
        store(&self.spec, &chain, &key_pem)
    }
}

/// A new certificate for `spec` from the signing CA: its chain and key (PEM).
fn issue(spec: &CertSpec, cas: &CaSet, clock: &dyn Clock) -> Result<(String, String), ServerError> {
    let issued = (spec.issue)(cas.current(), clock)?;
    Ok((cas.chain_pem(&issued), issued.key_pem))
}

fn store(spec: &CertSpec, chain: &str, key_pem: &str) -> Result<(), ServerError> {
    let write = |path: &PathBuf, text: &str| kfsec_pki::write_public_file(path, text.as_bytes());
    let (crt, key) = &spec.files;
    kfsec_pki::write_private_file(key, key_pem.as_bytes())?;
    write(crt, chain)?;
    if let Some((path, text)) = &spec.tag {
        write(path, text)?;
    }
    Ok(())
}

/// Whether a certificate issued for `lifetime` and ending at `not_after` is due at `now`: a
/// third of its lifetime or less remains (i.e. two thirds have passed).
pub fn due(not_after: UnixTime, now: UnixTime, lifetime: Duration) -> bool {
    not_after.since(now) <= lifetime / 3
}

/// Whether a certificate has gone unrenewed past the point the leader renews it by: a sixth of
/// its lifetime or less remains. Only then does a follower renew it ([`Trust::follower_tick`]).
pub fn overdue(not_after: UnixTime, now: UnixTime, lifetime: Duration) -> bool {
    not_after.since(now) <= lifetime / 6
}

/// How often the renewal passes run for certificates of `lifetime`: a twelfth of it (between
/// 0.5 s and 60 s), so the leader renews a certificate with at least a quarter of its lifetime
/// left, well before a follower would take it for [`overdue`].
pub fn renewal_period(lifetime: Duration) -> Duration {
    (lifetime / 12).clamp(Duration::from_millis(500), Duration::from_secs(60))
}

/// How long a follower leaves a certificate of an older CA set to the leader (which re-issues
/// every certificate with the change) before it re-issues it itself.
pub const BEHIND_GRACE: Duration = Duration::from_secs(5);

/// Work to redo for a new CA set.
pub type OnCaChange = Box<dyn Fn(&CaSet) -> Result<(), ServerError> + Send + Sync>;

/// Everything that trusts the CA set, rebuilt when it changes.
pub struct Trusting {
    /// The front door's config (its client-certificate roots) and its certificate resolver.
    pub front_door: (Arc<LiveServerConfig>, Arc<ReloadingResolver>),
    /// The gateway's upstream verifier.
    pub upstream_roots: Arc<LiveRoots>,
    /// Rewrites the admin kubeconfig for a CA set.
    pub admin_kubeconfig: OnCaChange,
}

/// The front door's TLS config: certificates from `resolver`, optional client certificates
/// verified against the CA set's trust bundle.
pub fn front_door_config(resolver: Arc<ReloadingResolver>, cas: &CaSet) -> Result<rustls::ServerConfig, PkiError> {
    kfsec_pki::server_config_with_client_auth(resolver, true, &cas.trust_bundle_pem(), kfsec_pki::ClientAuth::Optional)
}

/// The state of a CA rotation, for `kfsec cert rotate-ca`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationStatus {
    /// The signing CA's subject.
    pub current: String,
    /// The previous CA's subject, while it is still trusted.
    pub previous: Option<String>,
    /// The end of the window (RFC 3339).
    pub trusted_until: Option<String>,
    /// Certificates re-issued by this call.
    pub reissued: Vec<String>,
}

fn status(cas: &CaSet, reissued: Vec<String>) -> RotationStatus {
    RotationStatus {
        current: cas.current().info().subject.clone(),
        previous: cas.previous().map(|p| p.info.subject.clone()),
        trusted_until: cas.previous().map(|p| p.trusted_until.to_rfc3339()),
        reissued,
    }
}

/// Changes to the CA set when no server runs: the next start re-issues what is needed.
pub fn rotate_offline(
    pki_dir: &std::path::Path,
    window: Option<Duration>,
    clock: &dyn Clock,
) -> Result<RotationStatus, PkiError> {
    let cas = CaSet::load_or_create(pki_dir, kfsec_pki::KeyAlgorithm::default(), clock)?;
    let cas = match window {
        Some(w) => cas.rotate(pki_dir, w, clock)?,
        None if cas.previous().is_none() => return Err(PkiError::Rotation("none is in progress".into())),
        None => cas.finish(pki_dir, clock)?,
    };
    Ok(status(&cas, Vec::new()))
}

/// The live PKI.
pub struct Trust {
    pki_dir: PathBuf,
    clock: Arc<dyn Clock>,
    cas: RwLock<Arc<CaSet>>,
    /// Bumped each time the CA set changes; an item of an older epoch is re-issued.
    epoch: AtomicU64,
    /// The epoch the admin kubeconfig was last written for.
    kubeconfig_epoch: AtomicU64,
    items: Vec<Renewable>,
    trusting: Trusting,
    busy: tokio::sync::Mutex<()>,
    /// Wakes the leader's loop when the CA set changed (a new window end to wait for).
    changed: tokio::sync::Notify,
    /// Wakes the follower's loop when the CA set changed (certificates to catch up).
    changed_follow: tokio::sync::Notify,
    /// When the CA set last changed here (ms since the epoch, this replica's clock).
    changed_at: AtomicU64,
    /// Certificates issued here since the start (renewals, re-issues for a new CA set).
    issued: AtomicU64,
    /// The store the replicas share the PKI through, once [`Self::share`]d.
    shared: std::sync::OnceLock<shared::Shared>,
    /// Where certificate and CA rotations made here are recorded, once [`Self::audit`] is set.
    auditor: std::sync::OnceLock<(kfsec_audit::Auditor, Arc<dyn kfsec_types::Rng>)>,
}

impl Trust {
    /// Takes over `items` (established for `cas`) and the things that trust `cas`.
    pub fn new(
        pki_dir: PathBuf,
        clock: Arc<dyn Clock>,
        cas: Arc<CaSet>,
        items: Vec<Renewable>,
        trusting: Trusting,
    ) -> Arc<Self> {
        Arc::new(Self {
            pki_dir,
            clock,
            cas: RwLock::new(cas),
            epoch: AtomicU64::new(0),
            kubeconfig_epoch: AtomicU64::new(0),
            items,
            trusting,
            busy: tokio::sync::Mutex::new(()),
            changed: tokio::sync::Notify::new(),
            changed_follow: tokio::sync::Notify::new(),
            changed_at: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            shared: std::sync::OnceLock::new(),
            auditor: std::sync::OnceLock::new(),
        })
    }

    /// Records the certificates issued and the CA changes made here as audit events (`rotate`
    /// on `certificates`, named by the certificate or `ca`; once, a second call is ignored).
    pub fn audit(&self, auditor: kfsec_audit::Auditor, rng: Arc<dyn kfsec_types::Rng>) {
        let _ = self.auditor.set((auditor, rng));
    }

    fn audited(&self, name: &str, reason: &str) {
        if let Some((auditor, rng)) = self.auditor.get() {
            kfsec_audit::request::background(
                auditor,
                self.clock.as_ref(),
                rng.as_ref(),
                kfsec_audit::request::identity::CERTIFICATES,
                kfsec_audit::request::identity::ROTATE,
                Some(name),
                &[(kfsec_audit::request::REASON_ANNOTATION, reason)],
            );
        }
    }

    /// Every certificate served or trusted now, by name (`ca`, `ca-previous`, `front-door`,
    /// `gateway-workload`, `webhook-<service>`), with its end of validity: read from the live
    /// resolvers and CA set at each call, so a renewal shows at once.
    pub fn certificates(&self) -> Vec<(String, UnixTime)> {
        let slug = |s: &str| s.to_ascii_lowercase().replace(' ', "-");
        let cas = self.cas();
        let mut out = vec![("ca".to_owned(), cas.current().not_after())];
        if let Some(p) = cas.previous() {
            out.push(("ca-previous".to_owned(), p.info.not_after));
        }
        out.extend(self.items.iter().map(|i| (slug(&i.spec.name), i.resolver.not_after())));
        if !out.iter().any(|(n, _)| n == "front-door") {
            out.push(("front-door".to_owned(), self.trusting.front_door.1.not_after()));
        }
        out
    }

    /// The current CA set.
    pub fn cas(&self) -> Arc<CaSet> {
        self.cas.read().clone()
    }

    /// How many certificates this replica has issued since it started (renewals and re-issues
    /// for a new CA set; not those established at start or adopted from another replica).
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Acquire)
    }

    fn renew(&self, item: &Renewable, cas: &CaSet, epoch: u64) -> Result<(), ServerError> {
        item.renew(cas, epoch, self.clock.as_ref())?;
        self.issued.fetch_add(1, Ordering::AcqRel);
        self.audited(&item.spec.name, "certificate issued");
        Ok(())
    }

    /// Starts a CA rotation: a new signing CA, the old one trusted for `window`; every
    /// certificate is re-issued before this returns.
    pub async fn rotate(&self, window: Duration) -> Result<RotationStatus, ServerError> {
        let _busy = self.busy.lock().await;
        // Shared: from the store's CA set, and back to it (a race with another replica's
        // rotation is lost by one of them, which adopts the other's).
        self.sync_locked().await?;
        let next = self.cas().rotate(&self.pki_dir, window, self.clock.as_ref())?;
        self.audited("ca", "CA rotation started");
        let status = self.install(next);
        if !self.publish_locked().await? {
            return Err(shared::changing());
        }
        status
    }

    /// Ends the rotation window now.
    pub async fn finish(&self) -> Result<RotationStatus, ServerError> {
        let _busy = self.busy.lock().await;
        self.sync_locked().await?;
        let cas = self.cas();
        if cas.previous().is_none() {
            return Err(PkiError::Rotation("none is in progress".into()).into());
        }
        let next = cas.finish(&self.pki_dir, self.clock.as_ref())?;
        self.audited("ca", "CA rotation finished");
        let status = self.install(next);
        if !self.publish_locked().await? {
            return Err(shared::changing());
        }
        status
    }

    /// Makes `next` the CA set everywhere: verifiers trust its bundle, every certificate is
    /// re-issued from its signing CA with its chain.
    fn install(&self, next: CaSet) -> Result<RotationStatus, ServerError> {
        let (next, epoch) = self.trust_set(next)?;
        // Every item is attempted; one that fails is retried by the next tick (its epoch is
        // behind), and the first failure is reported.
        let mut reissued = Vec::new();
        let mut first_error = None;
        for item in &self.items {
            match self.renew(item, &next, epoch) {
                Ok(()) => reissued.push(item.spec.name.clone()),
                Err(e) => {
                    tracing::warn!(cert = %item.spec.name, error = %e, "re-issuing for the new CA set failed; retrying");
                    first_error.get_or_insert(e);
                }
            }
        }
        match (self.trusting.admin_kubeconfig)(&next) {
            Ok(()) => {
                self.kubeconfig_epoch.store(epoch, Ordering::Release);
                reissued.push("admin kubeconfig".into());
            }
            Err(e) => {
                tracing::warn!(error = %e, "rewriting the admin kubeconfig failed; retrying");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(status(&next, reissued)),
        }
    }

    /// Makes `next` the CA set in memory and of every verifier (the certificates are the
    /// caller's); returns it and its epoch.
    fn trust_set(&self, next: CaSet) -> Result<(Arc<CaSet>, u64), ServerError> {
        let next = Arc::new(next);
        // The set on disk has changed: memory follows first, whatever fails below (a retried
        // rotation must see the open window; the next tick retries what is behind).
        *self.cas.write() = next.clone();
        self.changed_at.store(self.clock.now().as_millis(), Ordering::Release);
        self.changed.notify_one();
        self.changed_follow.notify_one();
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let bundle = next.trust_bundle_pem();
        // Verifiers before certificates, so a peer presenting a new certificate is accepted by
        // the time any certificate of ours changes.
        self.trusting.upstream_roots.replace(&bundle)?;
        let (live, resolver) = &self.trusting.front_door;
        live.replace(front_door_config(resolver.clone(), &next)?);
        Ok((next, epoch))
    }

    /// The leader's pass: ends a window that is over, renews what is due.
    pub async fn tick(&self) {
        let _busy = self.busy.lock().await;
        // Shared: what another replica changed first (it may have renewed already).
        if let Err(e) = self.sync_locked().await {
            tracing::warn!(error = %e, "reading the shared PKI failed; retrying");
        }
        let cas = self.cas();
        let now = self.clock.now();
        if cas.window_ended(now) {
            match cas.finish(&self.pki_dir, self.clock.as_ref()) {
                Ok(next) => match self.install(next) {
                    Ok(_) => {
                        self.audited("ca", "CA rotation window over");
                        tracing::info!("CA rotation window over; certificates re-issued")
                    }
                    Err(e) => tracing::warn!(error = %e, "re-issuing after the CA rotation window failed; retrying"),
                },
                Err(e) => tracing::warn!(error = %e, "ending the CA rotation window failed; retrying"),
            }
        }
        // Renewals go on even when ending the window failed.
        let cas = self.cas();
        let epoch = self.epoch.load(Ordering::Acquire);
        for item in &self.items {
            if item.epoch.load(Ordering::Acquire) == epoch && !due(item.resolver.not_after(), now, item.spec.lifetime) {
                continue;
            }
            match self.renew(item, &cas, epoch) {
                Ok(()) => tracing::info!(cert = %item.spec.name, "renewed certificate"),
                Err(e) => tracing::warn!(cert = %item.spec.name, error = %e, "certificate renewal failed; retrying"),
            }
        }
        self.catch_up_kubeconfig(&cas, epoch);
        // Shared: what changed here goes to the store (a race lost adopts the winner's).
        if let Err(e) = self.publish_locked().await {
            tracing::warn!(error = %e, "sharing the PKI through the store failed; retrying");
        }
    }

    /// Rewrites the admin kubeconfig if an earlier attempt for the CA set of `epoch` failed.
    fn catch_up_kubeconfig(&self, cas: &CaSet, epoch: u64) {
        if self.kubeconfig_epoch.load(Ordering::Acquire) != epoch {
            match (self.trusting.admin_kubeconfig)(cas) {
                Ok(()) => self.kubeconfig_epoch.store(epoch, Ordering::Release),
                Err(e) => tracing::warn!(error = %e, "rewriting the admin kubeconfig failed; retrying"),
            }
        }
    }

    /// The certificates a follower renews itself at `now` ([`overdue`], or of an older CA set
    /// for [`BEHIND_GRACE`]), and how long until one of an older set is its own to re-issue.
    fn follower_work(&self, now: UnixTime) -> (Vec<usize>, Option<Duration>) {
        let epoch = self.epoch.load(Ordering::Acquire);
        let behind_for = now.since(UnixTime::from_millis(self.changed_at.load(Ordering::Acquire)));
        let mut wait = None;
        let mut todo = Vec::new();
        for (i, item) in self.items.iter().enumerate() {
            let behind = item.epoch.load(Ordering::Acquire) != epoch;
            if overdue(item.resolver.not_after(), now, item.spec.lifetime) || (behind && behind_for >= BEHIND_GRACE) {
                todo.push(i);
            } else if behind {
                wait = Some(BEHIND_GRACE.saturating_sub(behind_for));
            }
        }
        (todo, wait)
    }

    /// A follower's pass: what is this replica's own (module docs). Returns how soon to pass
    /// again, if sooner than the regular period.
    pub async fn follower_tick(&self) -> Option<Duration> {
        let _busy = self.busy.lock().await;
        let (todo, wait) = self.follower_work(self.clock.now());
        if !todo.is_empty() {
            // The watch may lag: the leader's certificates first.
            if let Err(e) = self.sync_locked().await {
                tracing::warn!(error = %e, "reading the shared PKI failed; retrying");
            }
        }
        let (todo, wait) = if todo.is_empty() {
            (todo, wait)
        } else {
            self.follower_work(self.clock.now())
        };
        let cas = self.cas();
        let epoch = self.epoch.load(Ordering::Acquire);
        for &i in &todo {
            let item = &self.items[i];
            match self.renew(item, &cas, epoch) {
                Ok(()) => {
                    tracing::info!(cert = %item.spec.name, "renewed certificate (not renewed by the leader in time)");
                }
                Err(e) => tracing::warn!(cert = %item.spec.name, error = %e, "certificate renewal failed; retrying"),
            }
        }
        self.catch_up_kubeconfig(&cas, epoch);
        if !todo.is_empty()
            && let Err(e) = self.publish_locked().await
        {
            tracing::warn!(error = %e, "sharing the PKI through the store failed; retrying");
        }
        wait
    }

    /// Runs [`Self::follower_tick`] every `every` (sooner when the CA set changed) while this
    /// replica does not lead (`leading`), until the task is dropped.
    pub fn spawn_follower(
        self: &Arc<Self>,
        every: Duration,
        mut leading: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let wait = if *leading.borrow_and_update() {
                    None
                } else {
                    this.follower_tick().await
                };
                let wait = wait.map_or(every, |w| w.min(every)).max(Duration::from_millis(10));
                let lead_change = async {
                    if leading.changed().await.is_err() {
                        // The election is over (shutting down): only the timers wake us.
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = this.changed_follow.notified() => {}
                    () = lead_change => {}
                }
            }
        })
    }

    /// Calls [`Self::tick`] (the leader's pass) every `every`, and at the end of a rotation
    /// window, until the task is dropped.
    pub fn spawn(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.tick().await;
                // Sooner when a rotation window ends before the next regular pass.
                let now = this.clock.now();
                let wait = match this.cas().previous() {
                    Some(p) => every.min(p.trusted_until.since(now)),
                    None => every,
                };
                tokio::select! {
                    () = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
                    () = this.changed.notified() => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::due;
    use kfsec_types::UnixTime;

    #[test]
    fn due_at_two_thirds() {
        let life = std::time::Duration::from_secs(90);
        let end = UnixTime::from_secs(90);
        assert!(!due(end, UnixTime::from_secs(59), life));
        assert!(due(end, UnixTime::from_secs(60), life));
        assert!(due(end, UnixTime::from_secs(200), life));
    }
}
