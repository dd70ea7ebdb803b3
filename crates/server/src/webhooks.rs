//! Admission wiring: the webhook chain of `kfsec-admission` run in-process on writes through the
//! Kubernetes-style API and served on the webhook listener, with the context each webhook
//! declares ([`kfsec_admission::ContextNeeds`]: namespace labels, the namespace's PodDefaults,
//! related objects such as Katib Trials, settings) read from the store — the settings from the
//! ConfigMaps the upstream controllers read (`katib-config`, `inferenceservice-config`; an absent
//! one means the shipped defaults, an unreadable one fails the load).
//!
//! Invariants: a write sees every store change made before it (a PodDefault created a moment ago
//! applies to the next Pod; cached contexts are used only when provably current); a context that
//! cannot be loaded completely (store error, undecodable record) is never cached nor used — the
//! write is refused as Kubernetes refuses it when a `failurePolicy: Fail` webhook cannot be called
//! (500, generic message; the cause is logged), and the listener answers such a review with 500;
//! a denial is reported as Kubernetes reports a webhook's denial and nothing is written. With
//! `webhooks.clientAuth`, the webhook listener completes a TLS handshake only with a client
//! certificate that chains to the configured CA (kfsec's internal CA by default, followed through
//! rotations) and names one of `allowedNames`.

use std::collections::BTreeMap;
use std::sync::Arc;

use kfsec_admission::katib::KatibSettings;
use kfsec_admission::kserve::KServeSettings;
use kfsec_admission::settings::{KATIB_CONFIG_MAP, KSERVE_CONFIG_MAP, SettingsError, config_map_data};
use kfsec_admission::{Chain, Context, ContextNeeds, Settings};
use kfsec_api::{AdmissionDenied, ApiError, ApiServer, ObjectEvent, Objects, Resource};
use serde_json::Value;

use crate::config::WebhookSettingsMaps;

mod review_audit;

pub use review_audit::ReviewAudit;

/// The in-process admission chain.
pub struct InProcessAdmission {
    objects: Objects,
    chain: Chain,
    settings: Arc<Settings>,
    /// Where Katib's and KServe's settings ConfigMaps are.
    settings_maps: WebhookSettingsMaps,
    /// The types whose objects some webhook's context holds: Namespaces (labels), PodDefaults,
    /// related objects.
    watched: Vec<&'static Resource>,
    cache: ContextCache,
}

/// Why a context could not be loaded. Never cached: the request fails as the webhook's
/// `failurePolicy` says, and only the log carries this text.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The store failed.
    #[error("reading {what}: {source}")]
    Store {
        /// What was being read.
        what: String,
        /// The store's error.
        #[source]
        source: kfsec_store::StoreError,
    },
    /// A record could not be decoded.
    #[error("decoding {what}: {source}")]
    Decode {
        /// The record's key.
        what: String,
        /// The decoder's error.
        #[source]
        source: kfsec_api::ApiError,
    },
    /// A settings ConfigMap could not be read.
    #[error("{0}")]
    Settings(#[from] SettingsError),
}

impl ContextError {
    /// `e`, met while reading `what`.
    fn reading(what: String, e: ApiError) -> Self {
        match e {
            ApiError::Store(source) => Self::Store { what, source },
            source => Self::Decode { what, source },
        }
    }
}

/// One namespace's cached contexts: `(needs, loaded at revision, context)`.
type Entries = Vec<(ContextNeeds, u64, Context)>;

/// Per-namespace contexts (one per distinct [`ContextNeeds`]), invalidated by a watch on the
/// whole store. An entry is used only if the watch has seen every write up to the store's current
/// revision and nothing in its namespace that a context holds changed since it was loaded — so a
/// PodDefault written a moment ago is never missed. Only complete contexts are stored.
#[derive(Default)]
struct ContextCache {
    entries: parking_lot::Mutex<std::collections::HashMap<String, Entries>>,
    last_change: parking_lot::Mutex<std::collections::HashMap<String, u64>>,
    /// Revision of the last write to a settings ConfigMap (every namespace's contexts hold them).
    settings_changed: std::sync::atomic::AtomicU64,
    seen: std::sync::atomic::AtomicU64,
    notify: tokio::sync::Notify,
}

fn namespaces() -> Option<&'static kfsec_api::Resource> {
    ApiServer::resource("", "v1", "namespaces")
}

fn poddefaults() -> Option<&'static kfsec_api::Resource> {
    ApiServer::resource("kubeflow.org", "v1alpha1", "poddefaults")
}

fn configmaps() -> Option<&'static kfsec_api::Resource> {
    ApiServer::resource("", "v1", "configmaps")
}

impl InProcessAdmission {
    /// Kubeflow's standard webhooks over the stored `objects`, reading Katib's and KServe's
    /// settings from the ConfigMaps `settings_maps` names (the rest of [`Settings`] as shipped).
    pub fn new(objects: Objects, settings_maps: WebhookSettingsMaps) -> Arc<Self> {
        let mut watched: Vec<&'static Resource> = namespaces()
            .into_iter()
            .chain(poddefaults())
            .chain(configmaps())
            .collect();
        for hook in kfsec_admission::all_webhooks() {
            for (api_version, kind) in hook.context_needs().objects {
                watched.extend(kfsec_api::registry::find_kind(api_version, kind));
            }
        }
        watched.sort_by_key(|r| (r.group, r.plural));
        watched.dedup();
        Arc::new(Self {
            objects,
            chain: Chain::standard(),
            settings: Arc::new(Settings::default()),
            settings_maps,
            watched,
            cache: ContextCache::default(),
        })
    }

    /// Follows every store write to invalidate cached contexts (a change to a Namespace, or to
    /// an object in a namespace, that a context holds), until the task is dropped.
    pub fn spawn_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        use std::sync::atomic::Ordering;
        let me = self.clone();
        let mut follow = self.objects.follow_changes(&self.watched);
        tokio::spawn(async move {
            loop {
                let seen = match follow.next().await {
                    Ok(ObjectEvent::Restarted { revision, .. }) => {
                        me.cache.entries.lock().clear();
                        revision
                    }
                    Ok(ObjectEvent::Applied(o) | ObjectEvent::Deleted(o)) if Some(o.resource) == configmaps() => {
                        // Only the settings ConfigMaps are in a context, and in every namespace's.
                        let at = (o.namespace.clone(), o.name.clone());
                        if at == me.settings_maps.katib || at == me.settings_maps.kserve {
                            me.cache.settings_changed.fetch_max(o.revision(), Ordering::AcqRel);
                            me.cache.entries.lock().clear();
                        }
                        o.revision()
                    }
                    Ok(ObjectEvent::Applied(o) | ObjectEvent::Deleted(o)) => {
                        let ns = if Some(o.resource) == namespaces() {
                            &o.name
                        } else {
                            &o.namespace
                        };
                        me.cache.last_change.lock().insert(ns.clone(), o.revision());
                        me.cache.entries.lock().remove(ns);
                        o.revision()
                    }
                    Ok(ObjectEvent::Progress(revision)) => revision,
                    Err(e) => {
                        // Changes may be missed until the watch restarts: start over empty.
                        tracing::warn!(error = %e, "admission context watch lost; cache cleared");
                        me.cache.entries.lock().clear();
                        continue;
                    }
                };
                me.cache.seen.store(seen, Ordering::Release);
                me.cache.notify.notify_waiters();
            }
        })
    }

    /// The context of `namespace` holding everything `needs` declares, from the cache when it is
    /// provably current. A failed load is returned, never cached.
    pub async fn context(&self, namespace: &str, needs: &ContextNeeds) -> Result<Context, ContextError> {
        use std::sync::atomic::Ordering;
        let Ok(now) = self.objects.revision().await else {
            return self.load(namespace, needs).await;
        };
        let caught_up = async {
            loop {
                let notified = self.cache.notify.notified();
                if self.cache.seen.load(Ordering::Acquire) >= now {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(std::time::Duration::from_millis(200), caught_up)
            .await
            .is_err()
        {
            return self.load(namespace, needs).await;
        }
        let changed = self.cache.last_change.lock().get(namespace).copied().unwrap_or(0);
        let changed = changed.max(self.cache.settings_changed.load(Ordering::Acquire));
        if let Some(entries) = self.cache.entries.lock().get(namespace)
            && let Some((_, _, ctx)) = entries
                .iter()
                .find(|(n, loaded_at, _)| n == needs && *loaded_at >= changed)
        {
            return Ok(ctx.clone());
        }
        let ctx = self.load(namespace, needs).await?;
        let mut entries = self.cache.entries.lock();
        let list = entries.entry(namespace.to_owned()).or_default();
        list.retain(|(n, _, _)| n != needs);
        list.push((needs.clone(), now, ctx.clone()));
        Ok(ctx)
    }

    /// Every object of `res` in `namespace`.
    async fn list(&self, res: &Resource, namespace: &str) -> Result<Vec<Value>, ContextError> {
        let list = self.objects.list(res, Some(namespace)).await;
        let what = || format!("{} in {namespace}", res.qualified());
        Ok(list.map_err(|e| ContextError::reading(what(), e))?.items)
    }

    /// The `data` of ConfigMap `at` (`(namespace, name)`; `role` names it in errors), or None
    /// when there is none.
    async fn config_map(
        &self,
        at: &(String, String),
        role: &'static str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, ContextError> {
        let Some(res) = configmaps() else {
            return Ok(None);
        };
        let what = || format!("ConfigMap {}/{}", at.0, at.1);
        let Some(cm) = self
            .objects
            .get(res, &at.0, &at.1)
            .await
            .map_err(|e| ContextError::reading(what(), e))?
        else {
            return Ok(None);
        };
        Ok(Some(config_map_data(role, &cm)?))
    }

    /// Katib's and KServe's settings from their ConfigMaps (shipped defaults for an absent one),
    /// the rest as shipped.
    async fn load_settings(&self) -> Result<Settings, ContextError> {
        let mut settings = (*self.settings).clone();
        if let Some(data) = self.config_map(&self.settings_maps.katib, KATIB_CONFIG_MAP).await? {
            settings.katib = KatibSettings::from_config_map(&data)?;
        }
        if let Some(data) = self.config_map(&self.settings_maps.kserve, KSERVE_CONFIG_MAP).await? {
            settings.kserve = KServeSettings::from_config_map(&data)?;
        }
        Ok(settings)
    }

    /// Exactly what `needs` declares about `namespace`, read from the store.
    async fn load(&self, namespace: &str, needs: &ContextNeeds) -> Result<Context, ContextError> {
        let mut ctx = Context::default();
        if needs.settings {
            ctx.settings = Arc::new(self.load_settings().await?);
        }
        if namespace.is_empty() {
            return Ok(ctx);
        }
        if needs.namespace_labels
            && let Some(res) = namespaces()
        {
            let found = self.objects.get(res, "", namespace).await;
            let found = found.map_err(|e| ContextError::reading(format!("namespace {namespace}"), e))?;
            if let Some(ns) = found {
                ctx.namespace_labels = ns["metadata"]["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_else(BTreeMap::new);
            }
        }
        if needs.pod_defaults
            && let Some(res) = poddefaults()
        {
            let defaults = self.list(res, namespace).await?;
            ctx = ctx.with_pod_defaults(&defaults);
        }
        let mut objects = Vec::new();
        for (api_version, kind) in &needs.objects {
            // A kind kfsec does not serve has no objects here.
            if let Some(res) = kfsec_api::registry::find_kind(api_version, kind) {
                objects.extend(self.list(res, namespace).await?);
            }
        }
        Ok(ctx.with_objects(objects))
    }
}

#[async_trait::async_trait]
impl kfsec_api::Admission for InProcessAdmission {
    async fn admit(&self, r: kfsec_api::AdmissionAttributes<'_>, object: &mut Value) -> Result<(), AdmissionDenied> {
        let req = r.to_request("in-process", object.clone());
        // Most writes match no webhook and need no context.
        let Some(needs) = self.chain.needs(&req) else {
            return Ok(());
        };
        let ctx = match self.context(r.namespace, &needs).await {
            Ok(ctx) => ctx,
            Err(e) => {
                let Some(webhook) = self.chain.failing_webhook(&req) else {
                    tracing::warn!(error = %e, namespace = r.namespace, "admission context not loaded; every webhook concerned has failurePolicy Ignore, admitted without them");
                    return Ok(());
                };
                // The API logs the cause under the incident id it answers with.
                return Err(AdmissionDenied {
                    webhook: webhook.to_owned(),
                    code: 500,
                    message: format!("admission context of namespace {:?} not loaded: {e}", r.namespace),
                    call_failed: true,
                });
            }
        };
        // Each mutating webhook called is an annotation of the write's audit Event, with
        // kube-apiserver's key and value (`round_0`: the chain runs once).
        let mut observe = |m: kfsec_admission::chain::Mutation| {
            let quoted = |s: &str| Value::String(s.to_owned()).to_string();
            let value = format!(
                r#"{{"configuration":{},"webhook":{},"mutated":{}}}"#,
                quoted(m.configuration),
                quoted(m.webhook),
                m.mutated
            );
            let key = format!("mutation.webhook.admission.k8s.io/round_0_index_{}", m.index);
            kfsec_api::audit::annotate(key, value);
        };
        let admitted = self.chain.admit_observed(&req, &ctx, object, &mut observe);
        admitted.map_err(|d| AdmissionDenied {
            webhook: d.webhook,
            code: d.code,
            message: d.message,
            call_failed: false,
        })
    }
}

/// The namespace the webhook Services are registered in by default.
pub const WEBHOOK_NAMESPACE: &str = "kubeflow";

/// DNS names of a webhook Service.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Picks the webhook Service's certificate by SNI; the first one otherwise. Each certificate
/// sits in its own hot-swappable resolver, so renewal never restarts the listener.
#[derive(Debug)]
struct SniResolver {
    by_name: std::collections::HashMap<String, Arc<kfsec_pki::ReloadingResolver>>,
    default: Arc<kfsec_pki::ReloadingResolver>,
}

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            hello
                .server_name()
                .and_then(|n| self.by_name.get(n))
                .unwrap_or(&self.default)
                .current(),
        )
    }
}

/// Verifies the client certificates of webhook callers (the API server's admission
/// kubeconfig): webpki against the CA bundle, then the certificate's CN or a DNS/URI SAN must be
/// one of the allowed names. Anything else fails the handshake.
pub struct CallerVerifier {
    allowed: Vec<String>,
    /// kfsec's own CA set when no CA file is configured (set once the PKI is live).
    internal: Option<std::sync::OnceLock<Arc<crate::trust::Trust>>>,
    /// The bundle the current verifier was built from, and the verifier.
    current: parking_lot::RwLock<(String, Arc<dyn rustls::server::danger::ClientCertVerifier>)>,
    /// Where each caller's certificate check is counted (surface `webhook`).
    decisions: std::sync::OnceLock<kfsec_gateway::metrics::Decisions>,
}

impl std::fmt::Debug for CallerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerVerifier")
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

fn client_verifier(
    bundle_pem: &str,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, kfsec_pki::PkiError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(der.map_err(|e| kfsec_pki::PkiError::InvalidRequest(format!("CA certificate: {e}")))?)?;
    }
    if roots.is_empty() {
        return Err(kfsec_pki::PkiError::NoCertificate("webhooks.clientAuth CA bundle"));
    }
    Ok(
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), kfsec_pki::crypto_provider())
            .build()?,
    )
}

impl CallerVerifier {
    /// The verifier `webhooks.clientAuth` asks for, if any (the CA file is read now).
    pub fn new(
        auth: Option<&crate::config::WebhookClientAuth>,
        cas: &kfsec_pki::CaSet,
    ) -> Result<Option<Arc<Self>>, crate::ServerError> {
        let Some(auth) = auth else { return Ok(None) };
        let bundle = match &auth.ca_file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| crate::ServerError::Io {
                what: format!("reading webhooks.clientAuth.caFile {}", path.display()),
                source: e,
            })?,
            None => cas.trust_bundle_pem(),
        };
        let verifier = client_verifier(&bundle)?;
        Ok(Some(Arc::new(Self {
            allowed: auth.allowed_names.clone(),
            internal: auth.ca_file.is_none().then(std::sync::OnceLock::new),
            current: parking_lot::RwLock::new((bundle, verifier)),
            decisions: std::sync::OnceLock::new(),
        })))
    }

    /// Counts each presented certificate's check in `decisions` (surface `webhook`; once).
    pub fn count_decisions(&self, decisions: kfsec_gateway::metrics::Decisions) {
        let _ = self.decisions.set(decisions);
    }

    fn decided(&self, allowed: bool) {
        if let Some(d) = self.decisions.get() {
            d.record("webhook", allowed);
        }
    }

    /// Follows the internal CA set of `trust` from now on (no effect with a CA file).
    pub fn follow(&self, trust: Arc<crate::trust::Trust>) {
        if let Some(slot) = &self.internal {
            let _ = slot.set(trust);
        }
    }

    fn verifier(&self) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
        if let Some(trust) = self.internal.as_ref().and_then(|t| t.get()) {
            let bundle = trust.cas().trust_bundle_pem();
            if self.current.read().0 != bundle {
                match client_verifier(&bundle) {
                    Ok(v) => *self.current.write() = (bundle, v),
                    Err(e) => tracing::warn!(error = %e, "webhook client roots not updated"),
                }
            }
        }
        self.current.read().1.clone()
    }
}

impl rustls::server::danger::ClientCertVerifier for CallerVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .verifier()
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|_| self.decided(false))?;
        let names = kfsec_pki::cert_names(end_entity.as_ref()).unwrap_or_default();
        let allowed = names.iter().any(|n| self.allowed.iter().any(|a| a == n));
        self.decided(allowed);
        if allowed {
            Ok(verified)
        } else {
            tracing::info!(
                ?names,
                "webhook caller refused: certificate name not in webhooks.clientAuth.allowedNames"
            );
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

/// Issues (or reuses) one certificate per webhook Service under `<pki>/webhooks/` and returns
/// the TLS configuration of the webhook listener (TLS ≥ 1.2), requiring a caller certificate
/// when `callers` is given.
pub fn webhook_tls(
    cas: &kfsec_pki::CaSet,
    pki_dir: &std::path::Path,
    lifetime: std::time::Duration,
    clock: &dyn kfsec_types::Clock,
    callers: Option<Arc<CallerVerifier>>,
) -> Result<(rustls::ServerConfig, Vec<crate::trust::Renewable>), crate::ServerError> {
    let dir = pki_dir.join("webhooks");
    std::fs::create_dir_all(&dir).map_err(|e| crate::ServerError::Io {
        what: "creating the webhook pki dir".into(),
        source: e,
    })?;
    let mut by_name = std::collections::HashMap::new();
    let mut first = None;
    let mut renewables = Vec::new();
    for service in kfsec_admission::registration::service_names() {
        let mut names = service_dns_names(service, WEBHOOK_NAMESPACE);
        names.push("localhost".into());
        let spec = crate::trust::CertSpec {
            name: format!("webhook {service}"),
            issue: Box::new(
                move |ca: &kfsec_pki::CertificateAuthority, clock: &dyn kfsec_types::Clock| {
                    issue_webhook_cert(ca, service, &names, lifetime, clock)
                },
            ),
            files: (dir.join(format!("{service}.crt")), dir.join(format!("{service}.key"))),
            lifetime,
            tag: None,
        };
        let item = crate::trust::Renewable::establish(spec, cas, clock)?;
        let resolver = item.resolver().clone();
        for n in service_dns_names(service, WEBHOOK_NAMESPACE) {
            by_name.insert(n, resolver.clone());
        }
        first.get_or_insert(resolver);
        renewables.push(item);
    }
    let default = first.ok_or_else(|| crate::ServerError::Api("no webhooks registered".into()))?;
    let resolver = Arc::new(SniResolver { by_name, default });
    let config = match callers {
        None => kfsec_pki::server_config(resolver, false)?,
        Some(verifier) => {
            let mut c = rustls::ServerConfig::builder_with_provider(kfsec_pki::crypto_provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(kfsec_pki::PkiError::from)?
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(resolver);
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            c
        }
    };
    Ok((config, renewables))
}

fn issue_webhook_cert(
    ca: &kfsec_pki::CertificateAuthority,
    service: &str,
    names: &[String],
    lifetime: std::time::Duration,
    clock: &dyn kfsec_types::Clock,
) -> Result<kfsec_pki::IssuedCert, kfsec_pki::PkiError> {
    let cn = format!("{service}.{WEBHOOK_NAMESPACE}.svc");
    ca.issue_server(&cn, names, &[std::net::IpAddr::from([127, 0, 0, 1])], lifetime, clock)
}

/// The webhook listener's routes: `POST <path>` for every webhook, answering AdmissionReview;
/// each request is one audit Event through `audit` ([`review_audit`]). A caller whose client
/// certificate expired since its connection opened (TLS checks the dates at the handshake only)
/// is answered 401.
pub fn webhook_router(
    admission: Arc<InProcessAdmission>,
    audit: ReviewAudit,
    clock: Arc<dyn kfsec_types::Clock>,
) -> axum::Router {
    use axum::http::{HeaderValue, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    let json = |out: Vec<u8>| -> Response {
        let mut r = (StatusCode::OK, out).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    let invalid = |e: kfsec_admission::ReviewError| -> Response {
        (StatusCode::BAD_REQUEST, format!("invalid AdmissionReview: {e}\n")).into_response()
    };
    let mut router = axum::Router::new();
    for hook in kfsec_admission::all_webhooks() {
        let path = hook.path().to_owned();
        let needs = Arc::new(hook.context_needs());
        let hook: Arc<dyn kfsec_admission::Webhook> = Arc::from(hook);
        let admission = admission.clone();
        let audit = audit.clone();
        let clock = clock.clone();
        router = router.route(
            &path,
            axum::routing::post(move |parts: axum::http::request::Parts, body: axum::body::Bytes| {
                let (hook, admission, needs) = (hook.clone(), admission.clone(), needs.clone());
                let ctx = audit.begin(&parts);
                let expired = parts
                    .extensions
                    .get::<kfsec_gateway::listener::ClientCertIdentity>()
                    .is_some_and(|c| clock.now().as_secs() >= c.not_after);
                async move {
                    if expired {
                        tracing::info!(target: "audit", webhook = hook.name(), "a webhook caller's client certificate expired since its connection opened: refused");
                        let resp = (StatusCode::UNAUTHORIZED, "the client certificate has expired\n").into_response();
                        return review_audit::finish(ctx, resp);
                    }
                    let resp = match kfsec_admission::parse_review(&body) {
                        Ok(review) => {
                            if let Some(ctx) = &ctx {
                                review_audit::reviewed(ctx, hook.name(), &review);
                            }
                            match admission.context(&review.request.namespace, &needs).await {
                                Ok(c) => {
                                    let outcome = kfsec_admission::admit_bounded(hook.as_ref(), &review.request, &c);
                                    if let Some(ctx) = &ctx {
                                        review_audit::outcome(ctx, &outcome);
                                    }
                                    json(kfsec_admission::encode_response(
                                        &review.api_version,
                                        &review.request.uid,
                                        &outcome,
                                    ))
                                }
                                Err(e) => {
                                    // The calling API server applies the webhook's failurePolicy.
                                    tracing::error!(error = %e, webhook = hook.name(), namespace = %review.request.namespace, "admission context not loaded; review answered 500");
                                    (StatusCode::INTERNAL_SERVER_ERROR, "the webhook could not be run\n").into_response()
                                }
                            }
                        }
                        Err(e) => invalid(e),
                    };
                    review_audit::finish(ctx, resp)
                }
            }),
        );
    }
    // Allows everything: a no-op webhook for checking a cluster's wiring (and the baseline of
    // bench/admission.sh). It still parses the review and echoes its uid.
    router = router.route(
        "/allow-all",
        axum::routing::post(move |parts: axum::http::request::Parts, body: axum::body::Bytes| {
            let ctx = audit.begin(&parts);
            async move {
                let resp = match kfsec_admission::parse_review(&body) {
                    Ok(review) => {
                        let outcome = kfsec_admission::AdmissionOutcome::Allow;
                        if let Some(ctx) = &ctx {
                            review_audit::reviewed(ctx, "allow-all", &review);
                            review_audit::outcome(ctx, &outcome);
                        }
                        json(kfsec_admission::encode_response(
                            &review.api_version,
                            &review.request.uid,
                            &outcome,
                        ))
                    }
                    Err(e) => invalid(e),
                };
                review_audit::finish(ctx, resp)
            }
        }),
    );
    router.layer(axum::extract::DefaultBodyLimit::max(3 * 1024 * 1024))
}
