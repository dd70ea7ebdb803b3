//! Composition: configuration → data directory (CA, certificates, store) → components (IdP,
//! gateway) → listeners → graceful shutdown.
//!
//! Invariants: the data directory is private (0700, keys 0600); the bootstrap password exists
//! only once, in the return value of the first start, and is stored as a bcrypt hash; readiness
//! is reported only after every listener is accepting.

mod accounts;
pub mod admin;
pub mod auditing;
pub mod config;
pub mod kek;
mod kubeconfig;
pub mod leader;
pub mod metrics;
mod pipeline_ui;
pub mod rbac;
pub mod s3gateway;
pub mod s3keys;
pub mod storage;
mod tokenrequest;
pub mod tokenreview;
pub mod trust;
pub mod webhooks;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kfsec_gateway::{App, GatewaySettings, cli_client, gatekeeper_client};
use kfsec_idp::{Idp, IdpSettings};
use kfsec_pki::{CaSet, CertificateAuthority, LiveRoots, LiveServerConfig, OsRng, ReloadingResolver};
use kfsec_store::{RedbStore, Store, StoreError};
use kfsec_types::{Clock, Rng, SystemClock};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Config, ConfigError, Overrides};

/// The bootstrap admin's email.
pub const BOOTSTRAP_ADMIN: &str = "admin@kfsec.local";
/// The bootstrap admin's group.
pub const ADMIN_GROUP: &str = kfsec_types::identity::KFSEC_ADMINS;

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Data directory or listener problem.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Storage.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Certificates.
    #[error("pki: {0}")]
    Pki(#[from] kfsec_pki::PkiError),
    /// IdP.
    #[error("identity provider: {0}")]
    Idp(#[from] kfsec_idp::IdpError),
    /// Gateway.
    #[error("gateway: {0}")]
    Gateway(#[from] kfsec_gateway::GatewayError),
    /// Kubernetes-style API.
    #[error("api: {0}")]
    Api(String),
    /// The audit log (file, key, webhook).
    #[error("audit: {0}")]
    Audit(#[from] kfsec_audit::pipeline::PipelineError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// Paths inside the data directory.
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// The store file.
    pub fn store(&self) -> PathBuf {
        self.0.join("kfsec.redb")
    }
    /// CA and certificates.
    pub fn pki(&self) -> PathBuf {
        self.0.join("pki")
    }
    /// Creates the directory with mode 0700.
    pub fn create(&self) -> Result<(), ServerError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.0)
            .map_err(io(format!("creating {}", self.0.display())))?;
        std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700))
            .map_err(io("securing the data directory"))?;
        Ok(())
    }
}

/// A running kfsec.
pub struct Running {
    /// Front-door address.
    pub https_addr: SocketAddr,
    /// Admin address.
    pub admin_addr: SocketAddr,
    /// Admission webhooks address.
    pub webhook_addr: SocketAddr,
    /// Public URL.
    pub public_url: String,
    /// OIDC issuer.
    pub issuer: String,
    /// The CA trust bundle (PEM) at start: the signing CA, and the previous one in a rotation
    /// window.
    pub ca_pem: String,
    /// The live PKI (CA rotation, renewal).
    pub trust: Arc<trust::Trust>,
    /// Set on the very first start only.
    pub bootstrap_password: Option<String>,
    /// The identity provider (for embedding and key inspection).
    pub idp: Arc<Idp>,
    /// The front door.
    pub app: Arc<App>,
    /// The store.
    pub store: Arc<dyn Store>,
    /// The Kubernetes-style API server.
    pub api: Arc<kfsec_api::ApiServer>,
    /// The RBAC authorizer cache.
    pub rbac: Arc<rbac::RbacCache>,
    /// The audit pipeline (`None`: audit off); [`Running::shutdown`] flushes it.
    pub audit: Option<Arc<kfsec_audit::Pipeline>>,
    /// The workspaces' S3 keys (issued by the profile controller when `s3:` is configured).
    pub s3_keys: Arc<kfsec_s3::keystore::KeyStore>,
    /// The S3 gateway's address (`None`: no `s3:` section).
    pub s3_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
    leadership: kfsec_store::leader::Leadership,
}

impl Running {
    /// Hands leadership over, stops accepting, drains connections and waits for the listeners
    /// to finish.
    pub async fn shutdown(self) {
        // The singleton work stops and the leader lease is handed back first, so another
        // replica takes over at once (a rolling restart).
        self.leadership.release().await;
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        for b in self.background {
            b.abort();
        }
        // Everything recorded until now is written and signed by a last checkpoint.
        if let Some(audit) = &self.audit {
            audit.shutdown().await;
        }
    }

    /// Stops at once, as a killed process does (tests of a takeover): every task aborted, the
    /// leader lease not handed back — another replica takes over when it runs out.
    pub fn abandon(self) {
        for t in self.tasks.into_iter().chain(self.background) {
            t.abort();
        }
        // Dropped, not released: the election task is aborted with the lease left as it was.
        drop(self.leadership);
    }
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The front door's certificate resolver, the watcher of a user-supplied pair, and the renewal of
/// a CA-issued one.
type FrontDoorCert = (
    Arc<ReloadingResolver>,
    Option<tokio::task::JoinHandle<()>>,
    Option<trust::Renewable>,
);

/// Records each change of a user-supplied front-door certificate pair as `rotate` on
/// `certificates`, named `front-door`, by kfsec's system user (once `auditor` is set: auditing
/// starts after the certificate).
fn audit_front_door_files(
    auditor: Arc<std::sync::OnceLock<kfsec_audit::Auditor>>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
) -> kfsec_pki::OnFileChange {
    use kfsec_audit::request::{OUTCOME_ANNOTATION, REASON_ANNOTATION, identity};
    Box::new(move |result| {
        let Some(auditor) = auditor.get() else { return };
        let (outcome, reason) = match result {
            Ok(()) => ("success", "the tls certificate files changed: reloaded"),
            Err(_) => (
                "failure",
                "the tls certificate files changed but do not load: the current certificate is kept",
            ),
        };
        kfsec_audit::request::background(
            auditor,
            clock.as_ref(),
            rng.as_ref(),
            identity::CERTIFICATES,
            identity::ROTATE,
            Some("front-door"),
            &[(OUTCOME_ANNOTATION, outcome), (REASON_ANNOTATION, reason)],
        );
    })
}

/// The front-door certificate: a user-supplied pair (watched for changes), or one issued by the
/// internal CA (re-issued when its names or the CA change, or a third of its life remains).
fn front_door_cert(
    cfg: &Config,
    cas: &CaSet,
    dir: &DataDir,
    public_host: Option<String>,
    clock: &dyn Clock,
    on_file_change: kfsec_pki::OnFileChange,
) -> Result<FrontDoorCert, ServerError> {
    if let Some((cert, key)) = &cfg.tls_files {
        let r = ReloadingResolver::from_files(cert, key)?;
        let watch = r.watch_files_notify(cert.clone(), key.clone(), Duration::from_secs(2), on_file_change);
        return Ok((r, Some(watch), None));
    }
    let mut dns = vec!["localhost".to_owned()];
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    dns.extend(host_name());
    if let Some(h) = public_host {
        match h.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(h),
        }
    }
    if !cfg.https_addr.ip().is_unspecified() {
        ips.push(cfg.https_addr.ip());
    }
    dns.sort();
    dns.dedup();
    ips.sort();
    ips.dedup();
    let names = format!("{dns:?} {ips:?}");
    let lifetime = cfg.leaf_lifetime;
    let spec = trust::CertSpec {
        name: "front door".into(),
        issue: Box::new(move |ca: &CertificateAuthority, clock: &dyn Clock| {
            ca.issue_server("kfsec front door", &dns, &ips, lifetime, clock)
        }),
        files: (dir.pki().join("frontdoor.crt"), dir.pki().join("frontdoor.key")),
        lifetime,
        tag: Some((dir.pki().join("frontdoor.names"), names)),
    };
    let item = trust::Renewable::establish(spec, cas, clock)?;
    Ok((item.resolver().clone(), None, Some(item)))
}

/// Writes `<data-dir>/admin.kubeconfig` (client certificate `CN=kfsec-admin, O=system:masters`)
/// when it is missing, points at another server URL or trusts another CA bundle.
fn write_admin_kubeconfig(dir: &DataDir, cas: &CaSet, server: &str, clock: &dyn Clock) -> Result<(), ServerError> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let path = dir.0.join("admin.kubeconfig");
    let server_line = format!("    server: {server}\n");
    let ca_line = format!("    certificate-authority-data: {}\n", b64(&cas.trust_bundle_pem()));
    if std::fs::read_to_string(&path).is_ok_and(|t| t.contains(&server_line) && t.contains(&ca_line)) {
        return Ok(());
    }
    let cert = cas.current().issue_client(
        "kfsec-admin",
        &[kfsec_types::identity::SYSTEM_MASTERS.to_owned()],
        Duration::from_secs(365 * 86_400),
        clock,
    )?;
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kfsec\n  cluster:\n{server_line}{ca_line}users:\n- name: kfsec-admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: kfsec\n  context:\n    cluster: kfsec\n    user: kfsec-admin\ncurrent-context: kfsec\n",
        b64(&cas.chain_pem(&cert)),
        b64(&cert.key_pem),
    );
    kfsec_pki::write_private_file(&path, text.as_bytes())?;
    Ok(())
}

/// The gateway's workload certificate for mutual TLS to upstreams
/// (`spiffe://cluster.local/ns/kfsec/sa/gateway`).
fn gateway_identity(
    dir: &DataDir,
    cas: &CaSet,
    lifetime: Duration,
    clock: &dyn Clock,
) -> Result<trust::Renewable, ServerError> {
    let spec = trust::CertSpec {
        name: "gateway workload".into(),
        issue: Box::new(move |ca: &CertificateAuthority, clock: &dyn Clock| {
            ca.issue_workload(
                "cluster.local",
                "kfsec",
                "gateway",
                &["kfsec-gateway".to_owned()],
                lifetime,
                clock,
            )
        }),
        files: (dir.pki().join("gateway.crt"), dir.pki().join("gateway.key")),
        lifetime,
        tag: None,
    };
    trust::Renewable::establish(spec, cas, clock)
}

/// Creates the bootstrap admin on first start; returns its password that one time.
async fn bootstrap(store: &dyn Store, idp: &Idp, rng: &dyn Rng) -> Result<Option<String>, ServerError> {
    const MARK: &str = "/kfsec/bootstrap";
    if store.get(MARK).await?.is_some() {
        return Ok(None);
    }
    let password = kfsec_idp::secret::random_alnum(rng, 24);
    match idp
        .users()
        .add(
            rng,
            BOOTSTRAP_ADMIN,
            Some("admin".into()),
            vec![ADMIN_GROUP.into()],
            &password,
        )
        .await
    {
        Ok(_) => {}
        Err(kfsec_idp::IdpError::Conflict(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    match store.create(MARK, b"{}".to_vec(), None).await {
        Ok(_) => Ok(Some(password)),
        Err(StoreError::AlreadyExists(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Opens the store file, mapping "held by another process" to a clear error.
pub fn open_store(dir: &DataDir, clock: Arc<dyn Clock>) -> Result<Arc<RedbStore>, ServerError> {
    let options = kfsec_store::StoreOptions {
        // Authorization requests, codes and device requests are disposable: no fsync of their own.
        volatile_prefixes: [
            "/kfsec/idp/authreqs/",
            "/kfsec/idp/codes/",
            "/kfsec/idp/device/",
            "/kfsec/idp/usercodes/",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    Ok(RedbStore::open_with_options(&dir.store(), clock, options)?)
}

/// Kubernetes objects holding secret material: core/v1 Secrets (what kube-apiserver's
/// EncryptionConfiguration encrypts).
const K8S_SECRET_PREFIXES: &[&str] = &["/k8s/core/secrets/"];

/// Every store prefix holding secret material, as the crates that own them declare it.
pub fn secret_prefixes() -> Vec<&'static str> {
    [
        kfsec_idp::SECRET_PREFIXES,
        kfsec_gateway::session::SECRET_PREFIXES,
        trust::shared::SECRET_PREFIXES,
        kfsec_s3::keystore::SECRET_PREFIXES,
        K8S_SECRET_PREFIXES,
    ]
    .concat()
}

/// The store as kfsec uses it: with `secretsEncryption` — or, on the embedded redb store
/// without it, the data directory's key ([`kek`], created at the server's first start when
/// `create_kek`) — wrapped so that the values under [`secret_prefixes`] are sealed, after the
/// start-up check (a store sealed with a key this process lacks is refused naming the key id;
/// plaintext is sealed the first time; values under a previous key are re-sealed under the
/// primary); without a key, a sealed store is refused.
pub async fn seal_store(
    store: Arc<dyn Store>,
    cfg: &Config,
    clock: &dyn Clock,
    rng: Arc<dyn Rng>,
    create_kek: bool,
) -> Result<Arc<dyn Store>, ServerError> {
    use kfsec_store::sealed::{SealedStore, check_unsealed};
    let ring = match (cfg.secrets_encryption.clone(), &cfg.store) {
        (Some(ring), _) => Some(ring),
        (None, config::store::StoreSettings::Redb) => {
            kek::keyring(
                store.as_ref(),
                &cfg.data_dir,
                &secret_prefixes(),
                create_kek,
                rng.as_ref(),
            )
            .await?
        }
        (None, _) => None,
    };
    let Some(ring) = ring else {
        check_unsealed(store.as_ref(), &secret_prefixes()).await?;
        return Ok(store);
    };
    let primary = ring.primary_id();
    let mut sealed = SealedStore::new(store, &secret_prefixes(), ring, rng);
    if !matches!(cfg.store, config::store::StoreSettings::Redb) {
        // A shared store is sealed from its first write: plaintext there was injected.
        sealed = sealed.never_seal_plaintext();
    }
    let done = sealed.prepare(clock).await?;
    if done.first_time && done.sealed > 0 {
        tracing::warn!(key_id = %primary, sealed = done.sealed, "secretsEncryption turned on: the store's existing secret values are now sealed; keep the key file, the store cannot be read without it");
    }
    let kek = kek::path(&cfg.data_dir);
    if done.resealed > 0 && cfg.secrets_encryption.is_some() && kek.exists() {
        tracing::warn!(key_id = %primary, resealed = done.resealed, kek = %kek.display(), "secretsEncryption turned on: the store's existing secret values are now sealed with its keyFile instead of the data directory's key (that file is no longer needed)");
    } else if done.resealed > 0 {
        tracing::warn!(key_id = %primary, resealed = done.resealed, "secret values re-sealed under the primary key; the previous keys can be removed from secretsEncryption.previousKeyFiles once every replica runs with this key");
    }
    tracing::info!(key_id = %primary, "secret values in the store are sealed (AES-256-GCM)");
    Ok(Arc::new(sealed))
}

/// Builds the admin operations over an open store (for the CLI when no server runs).
pub fn admin_ops(store: Arc<dyn Store>, cfg: &Config) -> Result<admin::AdminOps, ServerError> {
    let store_for_ops = store.clone();
    let users = Arc::new(kfsec_idp::UserDirectory::new(store.clone(), cfg.static_users.clone())?);
    let clients = Arc::new(kfsec_idp::ClientRegistry::new(
        store,
        cfg.static_clients.clone(),
        vec![gatekeeper_client(), cli_client()],
    ));
    Ok(admin::AdminOps {
        users,
        clients,
        idp: None,
        store: store_for_ops,
        rbac: None,
        trust: None,
        pki_dir: DataDir(cfg.data_dir.clone()).pki(),
        rng: Arc::new(OsRng),
        sessions: None,
        auditor: kfsec_audit::Auditor::disabled(),
    })
}

/// The listeners' limits, with the connection caps fitted below the open-files limit (raised
/// to its maximum first) so that the admin listener and the store always have descriptors left.
fn listener_limits(
    cfg: &Config,
) -> (
    kfsec_gateway::listener::ListenerLimits,
    kfsec_gateway::listener::ListenerLimits,
) {
    let (mut front, mut webhooks) = (cfg.front_door.clone(), cfg.webhook_limits.clone());
    if let Some(fds) = kfsec_gateway::listener::raise_fd_limit()
        && kfsec_gateway::listener::fit_to_fd_limit(&mut [&mut front, &mut webhooks], fds)
    {
        tracing::warn!(
            open_files_limit = fds,
            front_door_max_connections = front.max_connections,
            webhooks_max_connections = webhooks.max_connections,
            "connection caps lowered to fit the open-files limit (raise it with ulimit -n or LimitNOFILE=)"
        );
    }
    (front, webhooks)
}

/// Starts kfsec with the real clock and randomness.
pub async fn start(cfg: Config) -> Result<Running, ServerError> {
    start_with(cfg, Arc::new(SystemClock), Arc::new(OsRng)).await
}

/// Starts kfsec with the given clock and randomness.
pub async fn start_with(cfg: Config, clock: Arc<dyn Clock>, rng: Arc<dyn Rng>) -> Result<Running, ServerError> {
    for note in &cfg.acknowledged {
        tracing::warn!("{note}");
    }
    for warning in &cfg.federation.warnings {
        tracing::warn!("{warning}");
    }
    for note in &cfg.federation.notes {
        tracing::info!("{note}");
    }
    for range in cfg.trusted_proxies.broad() {
        tracing::warn!(
            %range,
            "trustedProxies: every address in this range can name any client address (its X-Forwarded-For is believed, its connections count for no client); keep every other workload out of it (e.g. with a NetworkPolicy), or list only the proxies' own addresses"
        );
    }
    let dir = DataDir(cfg.data_dir.clone());
    dir.create()?;
    let https = TcpListener::bind(cfg.https_addr)
        .await
        .map_err(io(format!("binding {}", cfg.https_addr)))?;
    let admin_l = TcpListener::bind(cfg.admin_addr)
        .await
        .map_err(io(format!("binding {}", cfg.admin_addr)))?;
    let https_addr = https.local_addr().map_err(io("reading the front-door address"))?;
    let admin_addr = admin_l.local_addr().map_err(io("reading the admin address"))?;
    let webhook_l = TcpListener::bind(cfg.webhook_addr)
        .await
        .map_err(io(format!("binding {}", cfg.webhook_addr)))?;
    let webhook_addr = webhook_l.local_addr().map_err(io("reading the webhook address"))?;
    let s3_listener = s3gateway::bind(cfg.s3.as_ref()).await?;
    // The upstream store behind the S3 gateway (KFP's artifact endpoint reads through it too).
    let s3_upstream = cfg
        .s3
        .as_ref()
        .map(|s| s3gateway::upstream(s, clock.clone()))
        .transpose()?;

    let public_url = match &cfg.public_url {
        Some(u) => u.as_str().trim_end_matches('/').to_owned(),
        None => format!("https://localhost:{}", https_addr.port()),
    };
    let public_host = url::Url::parse(&public_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned));
    let issuer = cfg.issuer.clone().unwrap_or_else(|| format!("{public_url}/dex"));
    // Opened here, where the issuer (the callback URL's base) is final.
    let connectors = cfg.open_connectors(&issuer, clock.clone())?;

    // The admin listener answers from here on: /healthz 200, /readyz 503 with the reason
    // (an unreachable etcd is retried below for as long as it takes) until everything is up.
    let (tx, rx) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let ready = Arc::new(AtomicBool::new(false));
    let store_health = storage::StoreHealth::new(&cfg.store, clock.clone());
    let metrics = Arc::new(std::sync::OnceLock::new());
    let admin_task = kfsec_gateway::listener::serve_plain_dedicated(
        admin_l,
        kfsec_gateway::admin_router(metrics.clone(), ready_check(ready.clone(), store_health.clone())),
        wait(rx.clone()),
    )
    .map_err(io("starting the admin listener"))?;
    let opened = storage::open(&cfg.store, &dir, clock.clone(), rng.clone(), &store_health).await?;
    let store = seal_store(opened.store, &cfg, clock.as_ref(), rng.clone(), true).await?;
    let (store, store_probe): (Arc<dyn Store>, _) = match opened.etcd {
        Some(etcd) => (
            Arc::new(storage::Tracked::new(store, store_health.clone())),
            Some(storage::spawn_probe(etcd, store_health.clone())),
        ),
        None => (store, None),
    };
    // The CA set is the store's (`trust::shared`): adopted, or migrated/created and published.
    let (mut cas, ca_rev) =
        trust::shared::ensure_ca(store.as_ref(), &dir.pki(), cfg.key_algorithm, clock.as_ref()).await?;
    if cas.window_ended(clock.now()) {
        cas = cas.finish(&dir.pki(), clock.as_ref())?;
    }
    let cas = Arc::new(cas);
    let cert_files_auditor = Arc::new(std::sync::OnceLock::new());
    let (resolver, cert_watch, front_renewal) = front_door_cert(
        &cfg,
        &cas,
        &dir,
        public_host,
        clock.as_ref(),
        audit_front_door_files(cert_files_auditor.clone(), clock.clone(), rng.clone()),
    )?;
    // Client certificates are optional; a verified one authenticates (admin kubeconfig).
    let front_tls = LiveServerConfig::new(trust::front_door_config(resolver.clone(), &cas)?);
    write_admin_kubeconfig(&dir, &cas, &public_url, clock.as_ref())?;
    let gateway_cert = gateway_identity(&dir, &cas, cfg.leaf_lifetime, clock.as_ref())?;
    let upstream = kfsec_gateway::UpstreamIdentity {
        roots: LiveRoots::new(&cas.trust_bundle_pem())?,
        certificate: gateway_cert.resolver().clone(),
    };

    let mut registry = Registry::default();
    // Store latency and authorization decisions by surface (`metrics`).
    let store: Arc<dyn Store> = Arc::new(metrics::Timed::new(store, &mut registry));
    let decisions = kfsec_gateway::metrics::Decisions::register(&mut registry);
    registry.register(
        "kfsec_build",
        "The running binary's version and git commit",
        prometheus_client::metrics::info::Info::new(vec![
            ("version".to_owned(), cfg.build.version.clone()),
            ("commit".to_owned(), cfg.build.commit.clone()),
        ]),
    );
    // The audit pipeline (`audit:`; `auditing`): every surface records through `auditor`.
    let (auditor, audit_pipeline) = auditing::start(&cfg, clock.clone(), rng.clone(), &mut registry)?;
    let _ = cert_files_auditor.set(auditor.clone());
    // One leader among the replicas runs the singleton work below (`leader`).
    let (leadership, leader_gauge) =
        leader::elect(store.clone(), clock.clone(), rng.clone(), host_name(), &mut registry)?;
    let idp_settings = IdpSettings {
        issuer: issuer.clone(),
        id_token_ttl: cfg.id_token_ttl,
        signing_key_rotation: cfg.signing_key_rotation,
        auth_request_ttl: cfg.auth_request_ttl,
        refresh: cfg.refresh.clone(),
        skip_approval: cfg.skip_approval,
        static_users: cfg.static_users.clone(),
        static_clients: cfg.static_clients.clone(),
        builtin_clients: vec![gatekeeper_client(), cli_client()],
        lockout: cfg.lockout.clone(),
        bearer_audiences: cfg.bearer_audiences.clone(),
        connectors,
        always_show_login_screen: cfg.federation.always_show_login_screen,
        password_connector: cfg.federation.password_connector.clone(),
        branding: cfg.federation.branding.clone(),
    };
    let accounts = accounts::ServiceAccounts(kfsec_api::Objects::new(store.clone(), rng.clone()));
    let idp = Idp::new(
        idp_settings,
        store.clone(),
        clock.clone(),
        rng.clone(),
        &mut registry,
        Arc::new(accounts),
    )
    .await?;
    for id in &cfg.bearer_audiences {
        if !matches!(idp.clients().get(id).await, Ok(Some(_))) {
            return Err(ConfigError::Invalid(format!(
                "bearerAudiences: {id:?} is not a registered client (staticClients or `kfsec client add`)"
            ))
            .into());
        }
    }
    let bootstrap_password = bootstrap(store.as_ref(), &idp, rng.as_ref()).await?;
    // Kubernetes-style API, RBAC, profiles and KFAM.
    let rbac_cache = rbac::RbacCache::new();
    rbac_cache.guard_with(store.clone());
    let admission = webhooks::InProcessAdmission::new(
        kfsec_api::Objects::new(store.clone(), rng.clone()),
        cfg.webhook_settings.clone(),
    );
    let callers = webhooks::CallerVerifier::new(cfg.webhook_client_auth.as_ref(), &cas)?;
    let (webhook_tls, mut renewables) =
        webhooks::webhook_tls(&cas, &dir.pki(), cfg.leaf_lifetime, clock.as_ref(), callers.clone())?;
    let webhook_tls = LiveServerConfig::new(webhook_tls);
    let mut s3_tls = None;
    renewables.extend(front_renewal);
    renewables.push(gateway_cert);
    if let Some(s3) = &cfg.s3 {
        let cert = s3gateway::certificate(s3, &cas, &dir.pki(), cfg.leaf_lifetime, clock.as_ref())?;
        s3_tls = Some(LiveServerConfig::new(kfsec_pki::server_config(
            cert.resolver().clone(),
            false,
        )?));
        renewables.push(cert);
    }
    let trust = {
        let (dir, public_url) = (DataDir(dir.0.clone()), public_url.clone());
        let admin_clock = clock.clone();
        trust::Trust::new(
            dir.pki(),
            clock.clone(),
            cas.clone(),
            renewables,
            trust::Trusting {
                front_door: (front_tls.clone(), resolver),
                upstream_roots: upstream.roots.clone(),
                admin_kubeconfig: Box::new(move |cas: &CaSet| {
                    write_admin_kubeconfig(&dir, cas, &public_url, admin_clock.as_ref())
                }),
            },
        )
    };
    if let Some(c) = &callers {
        c.follow(trust.clone());
        c.count_decisions(decisions.clone());
    }
    // Certificates another replica published are served instead of this one's; its changes
    // are followed from here on.
    let pki_follow = trust.share(store.clone(), ca_rev).await?;
    // Renewal: the shared PKI by the leader, what is this replica's own by every follower
    // (`trust` module docs).
    let renew_every = trust::renewal_period(cfg.leaf_lifetime);
    let renewal_task = trust.spawn_follower(renew_every, leadership.subscribe());
    let counted = |surface| metrics::CountedAuthz::wrap(rbac_cache.clone(), surface, &decisions);
    // Pipelines' data of a namespace is purged with it (the API asks before a Namespace goes).
    let kfp = kfsec_kfp::Kfp::new(
        store.clone(),
        counted("kfp"),
        clock.clone(),
        rng.clone(),
        kfsec_kfp::KfpSettings {
            max_package_bytes_per_namespace: cfg.pipeline_package_quota.0,
            max_packages_per_namespace: cfg.pipeline_package_quota.1,
            ..kfsec_kfp::KfpSettings::default()
        },
    )
    .await
    .map_err(|e| ServerError::Api(e.to_string()))?;
    let api = kfsec_api::ApiServer::builder(store.clone(), counted("api"), clock.clone(), rng.clone())
        .token_reviewer(Arc::new(tokenreview::Reviewer {
            authn: kfsec_idp::Authenticator::new(idp.clone()),
            rng: rng.clone(),
        }))
        .token_issuer(Arc::new(tokenrequest::Issuer(idp.clone())))
        .admission(admission.clone())
        .namespace_data(kfp.clone());
    let api = match (&cfg.s3, &s3_upstream) {
        (Some(s3), Some(upstream)) => api.namespace_data(Arc::new(s3gateway::NamespaceObjects {
            upstream: upstream.clone(),
            policy: s3.policy.clone(),
        })),
        _ => api,
    };
    let api = api
        .options(kfsec_api::ApiOptions {
            build: cfg.build.clone(),
            reserved_namespaces: reserved_namespaces(&cfg.webhook_settings),
            ..Default::default()
        })
        .build();
    rbac::install_defaults(&api, ADMIN_GROUP)
        .await
        .map_err(|e| ServerError::Api(e.to_string()))?;
    rbac::warn_invalid_roles(&api).await;
    let rbac_task = rbac_cache.spawn(api.clone());
    let rev = store.revision().await?;
    kfsec_profiles::AuthzSync::wait_for(rbac_cache.as_ref(), rev).await;
    // Each profile namespace's S3 key and its Secret, when the S3 gateway is configured.
    let s3_keys = Arc::new(kfsec_s3::keystore::KeyStore::new(
        store.clone(),
        clock.clone(),
        rng.clone(),
    ));
    let controller = match &cfg.s3 {
        Some(_) => kfsec_profiles::ProfileController::with_credentials(
            api.clone(),
            kfsec_profiles::ProfileSettings::default(),
            Arc::new(s3keys::S3Credentials::new(
                s3_keys.clone(),
                s3keys::KeyEvents::new(auditor.clone(), clock.clone(), rng.clone()),
            )),
        ),
        None => kfsec_profiles::ProfileController::new(api.clone(), kfsec_profiles::ProfileSettings::default()),
    };
    // System namespaces exist from the first start and belong to no profile.
    controller
        .ensure_system_namespaces()
        .await
        .map_err(|e| ServerError::Api(e.to_string()))?;
    let kfam = kfsec_profiles::Kfam::new(
        api.clone(),
        store.clone(),
        counted("kfam"),
        rbac_cache.clone(),
        rng.clone(),
        cfg.registration_flow,
    );
    let dashboard = kfsec_profiles::Dashboard::new(
        kfam.clone(),
        api.clone(),
        kfsec_profiles::DashboardSettings {
            links: cfg.dashboard.0.clone(),
            settings: cfg.dashboard.1.clone(),
            registration_flow: cfg.registration_flow,
            version: cfg.build.version.clone(),
            ..Default::default()
        },
    );
    // KFP's artifact endpoint reads through the S3 gateway's upstream, within its policy.
    if let (Some(s3), Some(upstream)) = (&cfg.s3, &s3_upstream) {
        kfp.serve_artifacts(Arc::new(kfsec_kfp::artifacts::S3Artifacts::new(
            upstream.clone(),
            s3.policy.clone(),
            s3.bucket.clone(),
        )));
    }
    // The KFP router goes first: its exact `/apis/v1beta1/{workflows,scheduledworkflows}` win
    // over the Kubernetes API's `/apis/{*rest}`.
    let api_router = axum::Router::new()
        .nest("/kfam", kfam.router())
        // The dashboard's exact `/api/workgroup/…`, `/api/namespaces`… win over `/api/{*rest}`.
        .merge(dashboard.router())
        .merge(kfp.router())
        .merge(api.router());
    // Each mounted surface: the paths it owns, whose service-account audiences apply there, and
    // its refusal renderer (the gateway renders none itself).
    let mounts = vec![
        kfsec_gateway::Mount {
            name: "api",
            paths: kfsec_api::PATHS.to_vec(),
            surface: kfsec_idp::authn::Surface::Gateway,
            render: Arc::new(kfsec_api::refusal_response),
        },
        kfsec_gateway::Mount {
            name: "kfp",
            paths: kfsec_kfp::PATHS.to_vec(),
            surface: kfsec_idp::authn::Surface::Pipelines,
            render: Arc::new(kfsec_kfp::refusal_response),
        },
        kfsec_gateway::Mount {
            name: "dashboard",
            paths: kfsec_profiles::DASHBOARD_PATHS.to_vec(),
            surface: kfsec_idp::authn::Surface::Gateway,
            render: Arc::new(kfsec_profiles::kfam_refusal_response),
        },
        kfsec_gateway::Mount {
            name: "kfam",
            paths: kfsec_profiles::KFAM_PATHS.to_vec(),
            surface: kfsec_idp::authn::Surface::Gateway,
            render: Arc::new(kfsec_profiles::kfam_refusal_response),
        },
    ];

    let gw_settings = GatewaySettings {
        cookie_name: cfg.cookie_name.clone(),
        session_ttl: cfg.session_ttl,
        user_id_header: cfg.user_id_header.clone(),
        user_id_prefix: cfg.user_id_prefix.clone(),
        groups_header: cfg.groups_header.clone(),
        routes: cfg.routes.clone(),
        trusted_proxies: cfg.trusted_proxies.clone(),
        upstream_identity: Some(upstream),
        upstream_timeout: cfg.upstream_timeout,
        tunnel_idle_timeout: cfg.tunnel_idle_timeout,
        forwarded_host: url::Url::parse(&public_url).ok().and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })
        }),
        max_sessions_per_user: cfg.max_sessions_per_user,
        revalidate_federated: cfg.federation.revalidate_federated,
        revalidate_all_sessions: cfg.federation.revalidate_all_sessions,
    };
    let app = App::new(
        gw_settings,
        idp.clone(),
        store.clone(),
        clock.clone(),
        rng.clone(),
        &mut registry,
        Some((api_router, mounts)),
    )
    .await?;
    // Audit: every front-door request, the IdP's key rotations, the certificates and CA
    // changes made here (the pipeline itself is started by `auditing`).
    app.audit(auditor.clone());
    idp.keys().audit(auditor.clone());
    trust.audit(auditor.clone(), rng.clone());
    app.count_decisions(decisions.clone());
    registry.register_collector(Box::new(metrics::Live {
        certificates: {
            let trust = trust.clone();
            Arc::new(move || trust.certificates())
        },
        signing_key_age: {
            let idp = idp.clone();
            Arc::new(move || idp.keys().signing_key_age())
        },
        ready: ready_check(ready.clone(), store_health.clone()),
        clock: clock.clone(),
    }));
    let store_gauges = metrics::StoreGauges::register(&mut registry);
    // "Download kubeconfig" on the home page: `kfsec login`'s server URL and CA.
    dashboard.offer_kubeconfig(Arc::new(kubeconfig::Kubeconfigs {
        idp: idp.clone(),
        server: public_url.clone(),
        trust: cfg.tls_files.is_none().then(|| trust.clone()),
    }));
    // kfsec's dashboard pages (`/`, `/workspaces/…`) on the paths no route claims.
    app.serve_pages(kfsec_gateway::Pages {
        paths: [kfsec_profiles::PAGE_PATHS, pipeline_ui::PATHS].concat(),
        // kfsec's read-only Pipelines view (`/pipeline/`); a configured `/pipeline/` route wins.
        router: dashboard
            .pages_router()
            .merge(pipeline_ui::router(kfp.clone(), api.clone())),
    });

    let ops = Arc::new(admin::AdminOps {
        users: idp.users().clone(),
        clients: idp.clients().clone(),
        rng: rng.clone(),
        idp: Some(idp.clone()),
        store: store.clone(),
        rbac: Some(rbac_cache.clone()),
        trust: Some(trust.clone()),
        pki_dir: dir.pki(),
        sessions: Some(app.sessions().clone()),
        auditor: auditor.clone(),
    });
    let mut background = vec![
        admin::serve(&dir.0, ops).map_err(io("opening the admin socket"))?,
        idp.spawn_rotation(Duration::from_secs(30), leadership.subscribe()),
        idp.epochs().spawn_watch(),
        app.sessions().spawn_watch(),
        app.sessions().spawn_prune(Duration::from_secs(60)),
        rbac_task,
        renewal_task,
        leadership.while_leading("certificate renewal", {
            let trust = trust.clone();
            move || trust.spawn(renew_every)
        }),
        admission.spawn_watch(),
        leadership.while_leading("profile controller", {
            let controller = controller.clone();
            move || controller.spawn()
        }),
        leadership.while_leading("store upkeep", {
            let store = store.clone();
            move || {
                tokio::spawn(leader::upkeep(
                    store.clone(),
                    leader::SWEEP_EVERY,
                    leader::COMPACT_EVERY,
                ))
            }
        }),
        leader_gauge,
    ];
    background.extend(cert_watch);
    background.push(pki_follow);
    background.push(metrics::spawn_gauges(
        store_gauges,
        app.sessions().clone(),
        idp.lockout().clone(),
        Duration::from_secs(5),
    ));
    background.extend(store_probe);

    let s3_router = match (&cfg.s3, &s3_upstream) {
        (Some(s3), Some(upstream)) => Some(s3gateway::router(
            s3,
            s3gateway::Parts {
                keys: s3_keys.clone(),
                upstream: upstream.clone(),
                clock: clock.clone(),
                rng: rng.clone(),
                auditor: auditor.clone(),
                decisions: decisions.clone(),
            },
            &mut registry,
        )),
        _ => None,
    };
    let (front_limits, webhook_limits) = listener_limits(&cfg);
    // The S3 gateway's listener keeps the front door's timeouts and caps.
    let s3_limits = front_limits.clone();
    let listener_metrics = kfsec_gateway::listener::ListenerMetrics::register(&mut registry);
    // Every TLS connection is served whole on one of these (one per core): no request of it
    // hops threads.
    let workers = Arc::new(kfsec_gateway::workers::Workers::per_core().map_err(io("starting the connection workers"))?);
    // (the front door believes trusted proxies' `X-Forwarded-For`; the other listeners do not)
    let settings = |name, limits, trusted_proxies| kfsec_gateway::listener::TlsListenerSettings {
        name,
        limits,
        metrics: listener_metrics.clone(),
        drain: Duration::from_secs(10),
        workers: Some(workers.clone()),
        trusted_proxies,
    };
    let registry = Arc::new(registry);
    let mut tasks = vec![
        tokio::spawn(kfsec_gateway::listener::serve_tls(
            https,
            front_tls,
            app.service(),
            wait(rx.clone()),
            settings("front-door", front_limits, cfg.trusted_proxies.clone()),
        )),
        tokio::spawn(kfsec_gateway::listener::serve_tls(
            webhook_l,
            webhook_tls,
            webhooks::webhook_router(
                admission,
                webhooks::ReviewAudit::new(auditor.clone(), clock.clone(), rng.clone()),
                clock.clone(),
            ),
            wait(rx.clone()),
            settings("webhooks", webhook_limits, Default::default()),
        )),
        // On a thread of its own (started above): front-door load cannot delay /healthz and
        // /metrics.
        admin_task,
    ];
    let s3_addr = s3_listener.as_ref().map(|(_, a)| *a);
    if let (Some((listener, _)), Some(tls), Some(router)) = (s3_listener, s3_tls, s3_router) {
        tasks.push(tokio::spawn(kfsec_gateway::listener::serve_tls(
            listener,
            tls,
            router,
            wait(rx.clone()),
            settings("s3", s3_limits, Default::default()),
        )));
    }
    let _ = metrics.set(registry);
    ready.store(true, Ordering::Release);
    if let Some(a) = s3_addr {
        tracing::info!(s3_addr = %a, "s3 gateway is listening");
    }
    tracing::info!(%https_addr, %admin_addr, %issuer, "kfsec is ready");
    Ok(Running {
        s3_addr,
        https_addr,
        admin_addr,
        webhook_addr,
        public_url,
        issuer,
        ca_pem: cas.trust_bundle_pem(),
        bootstrap_password,
        idp,
        app,
        store,
        api,
        rbac: rbac_cache,
        trust,
        audit: audit_pipeline,
        s3_keys,
        shutdown: tx,
        tasks,
        background,
        leadership,
    })
}

/// The namespaces no Profile may own: the API's defaults and those of the ConfigMaps the
/// in-process webhooks read their settings from (`webhooks.katibConfigMap`,
/// `webhooks.kserveConfigMap`) — a user owning `katib` could otherwise set the images the Katib
/// webhook injects into every workspace's pods.
fn reserved_namespaces(maps: &config::WebhookSettingsMaps) -> Vec<String> {
    let mut out = kfsec_api::ApiOptions::default().reserved_namespaces;
    for (ns, _) in [&maps.katib, &maps.kserve] {
        if !out.contains(ns) {
            out.push(ns.clone());
        }
    }
    out
}

/// `/readyz`: the store's health first (the reason names the store problem), then whether
/// every listener is up.
fn ready_check(ready: Arc<AtomicBool>, store: Arc<storage::StoreHealth>) -> kfsec_gateway::ReadyCheck {
    Arc::new(move || {
        store.ready()?;
        if ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("starting".into())
        }
    })
}

/// Opens the configured store for a command-line admin operation when no server runs here:
/// the redb file (as [`open_store`]) or etcd (one connection attempt: an unreachable cluster is
/// an error naming the endpoints, not a wait), sealed as the server seals it.
pub async fn open_admin_store(cfg: &Config, clock: Arc<dyn Clock>) -> Result<Arc<dyn Store>, ServerError> {
    let store: Arc<dyn Store> = match &cfg.store {
        config::store::StoreSettings::Redb => open_store(&DataDir(cfg.data_dir.clone()), clock.clone())?,
        config::store::StoreSettings::Etcd { config, .. } => Arc::new(
            kfsec_store_etcd::connect(config, clock.clone(), Arc::new(OsRng))
                .await
                .map_err(|e| ServerError::Store(StoreError::Backend(e.to_string())))?,
        ),
    };
    seal_store(store, cfg, clock.as_ref(), Arc::new(OsRng), false).await
}

/// The webhook configurations (YAML) for a cluster's API server to call kfsec's webhooks.
pub fn webhook_manifests(ca_bundle_b64: &str, namespace: &str) -> String {
    kfsec_admission::manifests(ca_bundle_b64, namespace)
}

/// Whether `path` holds a kfsec data directory.
pub fn is_data_dir(path: &Path) -> bool {
    DataDir(path.to_path_buf()).store().exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhooks_settings_namespaces_are_reserved() {
        let maps = |k: &str, s: &str| config::WebhookSettingsMaps {
            katib: (k.into(), "katib-config".into()),
            kserve: (s.into(), "inferenceservice-config".into()),
        };
        assert_eq!(
            reserved_namespaces(&maps("kubeflow", "kubeflow")),
            ["default", "kubeflow", "kfsec"]
        );
        assert_eq!(
            reserved_namespaces(&maps("katib", "kserve")),
            ["default", "kubeflow", "kfsec", "katib", "kserve"]
        );
    }

    #[test]
    fn the_secret_prefixes_cover_the_secret_material_and_nothing_else() {
        let covered = |key: &str| secret_prefixes().iter().any(|p| key.starts_with(p));
        for key in [
            "/kfsec/idp/keys",
            "/kfsec/idp/authreq-key",
            "/kfsec/idp/users/a@example.org",
            "/kfsec/idp/clients/rp",
            "/kfsec/idp/codes/c",
            "/kfsec/idp/refresh/r",
            "/kfsec/idp/authreqs/a",
            "/kfsec/idp/device/d",
            "/kfsec/sessions/s",
            "/kfsec/gateway/keys",
            "/kfsec/pki/ca",
            "/kfsec/pki/certs/frontdoor.crt@0123456789abcdef",
            "/kfsec/pki/certs/webhooks/kfsec-admission.crt",
            "/k8s/core/secrets/ns/s",
            "/kfsec/s3/ns/team-a",
        ] {
            assert!(covered(key), "{key} holds secrets: sealed");
        }
        for key in [
            "/kfsec/idp/lockout/l",
            "/kfsec/idp/revoked/a@example.org",
            "/kfsec/idp/usercodes/ABCD-EFGH",
            "/kfsec/session-users/u/1-h",
            "/kfsec/bootstrap",
            "/kfsec/s3/ids/KF0123456789ABCDEFGH",
            "/k8s/core/namespaces/a",
            "/kfp/runs/r",
        ] {
            assert!(!covered(key), "{key} holds no secret: left as it is");
        }
    }
}
