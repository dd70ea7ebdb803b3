//! TLS configuration that changes while connections are open: trust anchors replaced after a
//! CA rotation, a server config whose client-certificate roots change, and the gateway's own
//! client certificate renewed in place ([`ReloadingResolver`] also resolves client certs).
//!
//! Invariants: a replacement is validated before it is swapped in (a bad bundle never replaces a
//! good one); each handshake reads the current value once, so an established connection is never
//! affected; verification is always webpki against the current roots — nothing here relaxes it.

use std::fmt;
use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue, WebPkiServerVerifier,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, DigitallySignedStruct, NamedGroup, ServerConfig, SignatureScheme};

use crate::error::PkiError;
use crate::reload::ReloadingResolver;
use crate::tls::{crypto_provider, root_store};

/// Verifies server certificates against roots that can be replaced at run time.
pub struct LiveRoots {
    inner: RwLock<Arc<WebPkiServerVerifier>>,
    /// Bumped by every replacement.
    generation: AtomicU64,
}

/// Resumable sessions kept per [`LiveRoots`] generation.
const SESSIONS: usize = 256;

impl fmt::Debug for LiveRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveRoots").finish_non_exhaustive()
    }
}

fn verifier(ca_pem: &str) -> Result<Arc<WebPkiServerVerifier>, PkiError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(ca_pem)?), crypto_provider())
        .build()
        .map_err(|e| PkiError::InvalidRequest(format!("server verifier: {e}")))
}

impl LiveRoots {
    /// Trusts exactly the certificates in `ca_pem`.
    pub fn new(ca_pem: &str) -> Result<Arc<Self>, PkiError> {
        Ok(Arc::new(Self {
            inner: RwLock::new(verifier(ca_pem)?),
            generation: AtomicU64::new(0),
        }))
    }

    /// From now on trusts exactly the certificates in `ca_pem`.
    pub fn replace(&self, ca_pem: &str) -> Result<(), PkiError> {
        let next = verifier(ca_pem)?;
        *self.inner.write() = next;
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn current(&self) -> Arc<WebPkiServerVerifier> {
        self.inner.read().clone()
    }
}

impl ServerCertVerifier for LiveRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The resumable sessions of one live client config. A resumed session skips certificate
/// checks on both sides, so the cache is dropped whenever the roots or our own certificate
/// change: no connection resumes a session the new roots would refuse, and upstreams see a
/// renewed client certificate on the next connection.
#[derive(Debug)]
struct LiveSessions {
    roots: Arc<LiveRoots>,
    identity: Option<Arc<ReloadingResolver>>,
    cache: Mutex<((u64, u64), Arc<ClientSessionMemoryCache>)>,
}

impl LiveSessions {
    fn new(roots: Arc<LiveRoots>, identity: Option<Arc<ReloadingResolver>>) -> Self {
        let cache = Mutex::new(((0, 0), Arc::new(ClientSessionMemoryCache::new(SESSIONS))));
        Self { roots, identity, cache }
    }

    fn current(&self) -> Arc<ClientSessionMemoryCache> {
        let tag = (
            self.roots.generation.load(Ordering::Acquire),
            self.identity.as_ref().map_or(0, |i| i.generation()),
        );
        let mut cache = self.cache.lock();
        if cache.0 != tag {
            *cache = (tag, Arc::new(ClientSessionMemoryCache::new(SESSIONS)));
        }
        cache.1.clone()
    }
}

impl ClientSessionStore for LiveSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.current().set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.current().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.current().set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.current().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.current().remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.current().insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.current().take_tls13_ticket(server_name)
    }
}

impl ResolvesClientCert for ReloadingResolver {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client config (TLS 1.3 + 1.2) verifying servers against `roots` and, when `identity` is
/// given, presenting its current certificate.
pub fn client_config_live(
    roots: Arc<LiveRoots>,
    identity: Option<Arc<ReloadingResolver>>,
) -> Result<ClientConfig, PkiError> {
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&TLS13, &TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(roots.clone());
    let sessions = Arc::new(LiveSessions::new(roots, identity.clone()));
    let mut config = match identity {
        Some(id) => builder.with_client_cert_resolver(id),
        None => builder.with_no_client_auth(),
    };
    config.resumption = Resumption::store(sessions);
    Ok(config)
}

/// A server config that can be replaced at run time (e.g. new client-certificate roots after a
/// CA rotation); every new connection uses the current one.
pub struct LiveServerConfig {
    inner: RwLock<Arc<ServerConfig>>,
}

impl fmt::Debug for LiveServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveServerConfig").finish_non_exhaustive()
    }
}

impl LiveServerConfig {
    /// Starts with `config`.
    pub fn new(config: ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            inner: RwLock::new(Arc::new(config)),
        })
    }

    /// The config for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.inner.read().clone()
    }

    /// Replaces the config for handshakes from now on.
    pub fn replace(&self, config: ServerConfig) {
        *self.inner.write() = Arc::new(config);
    }
}
