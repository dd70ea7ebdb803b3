//! `s3gateway`: composes the S3 gateway (`kfsec_s3::gateway`) from `s3:` — its certificate from
//! the internal CA (SANs `localhost`, `127.0.0.1`, `::1`, the listen address and, with
//! `s3.domain`, the domain and `*.domain` for virtual-host style; renewed and shared like every
//! certificate kfsec serves), the upstream client, the workspaces' keys, the audit and metrics
//! hooks. The listener is the front door's accept loop (`gateway::listener::serve_tls`: caps,
//! header/idle/stall timers) under the name `s3`. A namespace's own prefixes are emptied before
//! the Namespace goes ([`NamespaceObjects`]).
//!
//! Invariants: the gateway exists only when `s3:` is configured; the upstream secret goes from
//! the validated settings into the client and nowhere else; a Namespace whose objects could not
//! all be deleted stays (its delete fails with 503 and is retried).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kfsec_pki::{CaSet, CertificateAuthority};
use kfsec_s3::gateway::{Gateway, GatewayConfig, Observer};
use kfsec_s3::keys::KeyLookup;
use kfsec_s3::upstream::{Upstream, UpstreamConfig};
use kfsec_types::{Clock, Rng};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ServerError;
use crate::config::s3::S3Settings;
use crate::trust::{CertSpec, Renewable};

/// A namespace's objects in the store, deleted with it (`kfsec_s3::purge`): its next owner
/// of the same name gets a key to empty prefixes.
pub struct NamespaceObjects {
    /// The store.
    pub upstream: Upstream,
    /// The policy whose `<ns>` rules say what is the namespace's own.
    pub policy: kfsec_s3::policy::Policy,
}

#[async_trait::async_trait]
impl kfsec_api::NamespaceData for NamespaceObjects {
    async fn purge_namespace(&self, namespace: &str) -> Result<(), kfsec_store::StoreError> {
        match kfsec_s3::purge::purge_namespace(&self.upstream, &self.policy, namespace).await {
            Ok(objects) => {
                tracing::info!(target: "audit", namespace, objects, "s3: the namespace's objects were deleted with it");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(namespace, error = %e, "s3: the namespace's objects could not all be deleted; the namespace stays until they are");
                Err(kfsec_store::StoreError::Unavailable(format!("the object store: {e}")))
            }
        }
    }
}

/// The names the gateway's certificate is issued for.
pub fn certificate_names(s3: &S3Settings) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec!["localhost".to_owned()];
    if let Some(d) = &s3.domain {
        dns.push(d.clone());
        dns.push(format!("*.{d}"));
    }
    let mut ips = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    if !s3.addr.ip().is_unspecified() {
        ips.push(s3.addr.ip());
    }
    dns.sort();
    dns.dedup();
    ips.sort();
    ips.dedup();
    (dns, ips)
}

/// The gateway's certificate (`<pki>/s3.crt`, re-issued when its names change).
pub fn certificate(
    s3: &S3Settings,
    cas: &CaSet,
    pki: &Path,
    lifetime: Duration,
    clock: &dyn Clock,
) -> Result<Renewable, ServerError> {
    let (dns, ips) = certificate_names(s3);
    let names = format!("{dns:?} {ips:?}");
    let spec = CertSpec {
        name: "s3 gateway".into(),
        issue: Box::new(move |ca: &CertificateAuthority, clock: &dyn Clock| {
            ca.issue_server("kfsec s3 gateway", &dns, &ips, lifetime, clock)
        }),
        files: (pki.join("s3.crt"), pki.join("s3.key")),
        lifetime,
        tag: Some((pki.join("s3.names"), names)),
    };
    Renewable::establish(spec, cas, clock)
}

/// The upstream client (also handed to KFP's artifact endpoint).
pub fn upstream(s3: &S3Settings, clock: Arc<dyn Clock>) -> Result<Upstream, ServerError> {
    let up = &s3.upstream;
    let ca_pem = up
        .ca_file
        .as_ref()
        .map(|p| {
            std::fs::read(p).map_err(|source| ServerError::Io {
                what: format!("reading s3.upstream.caFile {}", p.display()),
                source,
            })
        })
        .transpose()?;
    Upstream::new(
        UpstreamConfig {
            endpoint: up.endpoint.clone(),
            region: up.region.clone(),
            access_key: up.access_key.clone(),
            secret_key: up.secret_key.clone(),
            ca_pem,
        },
        clock,
    )
    .map_err(|e| ServerError::Api(e.to_string()))
}

/// Counts the gateway's answers (`kfsec_s3_requests_total{code}`, latency) and decisions
/// (`kfsec_authz_decisions_total{surface="s3"}`).
struct Counting {
    decisions: kfsec_gateway::metrics::Decisions,
    requests: Family<CodeLabel, Counter>,
    latency: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CodeLabel {
    route: &'static str,
    code: u16,
}

impl Observer for Counting {
    fn decision(&self, allowed: bool) {
        self.decisions.record("s3", allowed);
    }
    fn request(&self, code: u16, seconds: f64) {
        self.requests.get_or_create(&CodeLabel { route: "s3", code }).inc();
        self.latency.observe(seconds);
    }
}

/// Everything the gateway is built from.
pub struct Parts {
    /// The workspaces' keys.
    pub keys: Arc<dyn KeyLookup>,
    /// The upstream.
    pub upstream: Upstream,
    /// Clock.
    pub clock: Arc<dyn Clock>,
    /// Randomness (request ids).
    pub rng: Arc<dyn Rng>,
    /// Audit.
    pub auditor: kfsec_audit::Auditor,
    /// Authorization decision counts.
    pub decisions: kfsec_gateway::metrics::Decisions,
}

/// The gateway's router.
pub fn router(s3: &S3Settings, p: Parts, registry: &mut Registry) -> axum::Router {
    let requests = Family::<CodeLabel, Counter>::default();
    let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
    registry.register(
        "kfsec_s3_requests",
        "S3 gateway requests by status (route=\"s3\")",
        requests.clone(),
    );
    registry.register(
        "kfsec_s3_request_duration_seconds",
        "S3 gateway latency until the response head",
        latency.clone(),
    );
    let gw = Gateway::new(
        GatewayConfig {
            region: s3.region.clone(),
            domain: s3.domain.clone(),
            policy: s3.policy.clone(),
        },
        p.keys,
        p.upstream,
        p.clock,
        p.rng,
    )
    // Replicas share the upstream secret, so each opens the others' sealed paging markers.
    .with_marker_secret(s3.upstream.secret_key.as_bytes())
    .with_auditor(p.auditor)
    .with_peer(|ext| ext.get::<kfsec_idp::ClientAddr>().map(|c| c.0))
    .with_observer(Arc::new(Counting {
        decisions: p.decisions,
        requests,
        latency,
    }));
    Arc::new(gw).router()
}

/// Binds the gateway's listener when `s3:` is configured.
pub async fn bind(s3: Option<&S3Settings>) -> Result<Option<(tokio::net::TcpListener, SocketAddr)>, ServerError> {
    let Some(s3) = s3 else { return Ok(None) };
    let l = tokio::net::TcpListener::bind(s3.addr)
        .await
        .map_err(|source| ServerError::Io {
            what: format!("binding the s3 gateway on {} (s3.addr, --s3-addr)", s3.addr),
            source,
        })?;
    let addr = l.local_addr().map_err(|source| ServerError::Io {
        what: "reading the s3 gateway address".into(),
        source,
    })?;
    Ok(Some((l, addr)))
}
