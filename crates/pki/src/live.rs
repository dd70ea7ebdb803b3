//! TLS configuration that changes while connections are open: trust anchors replaced after a
//! CA rotation, a server config whose client-certificate roots change, and the gateway's own
//! client certificate renewed in place ([`ReloadingResolver`] also resolves client certs).
//!
//! Invariants: a replacement is validated before it is swapped in (a bad bundle never replaces a
//! good one); each handshake reads the current value once, so an established connection is never
//! affected; verification is always webpki against the current roots — nothing here relaxes it.

use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use crate::error::PkiError;
use crate::reload::ReloadingResolver;
use crate::tls::{crypto_provider, root_store};

/// Verifies server certificates against roots that can be replaced at run time.
pub struct LiveRoots {
    inner: RwLock<(u64, Arc<WebPkiServerVerifier>)>,
}

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
            inner: RwLock::new((0, verifier(ca_pem)?)),
        }))
    }

    /// From now on trusts exactly the certificates in `ca_pem`.
    pub fn replace(&self, ca_pem: &str) -> Result<(), PkiError> {
        let next = verifier(ca_pem)?;
        let mut inner = self.inner.write();
        *inner = (inner.0 + 1, next);
        Ok(())
    }

    /// How many times the roots were replaced (connections verified under an older generation
    /// should not be reused).
    pub fn generation(&self) -> u64 {
        self.inner.read().0
    }

    fn current(&self) -> Arc<WebPkiServerVerifier> {
        self.inner.read().1.clone()
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
    let mut config = match identity {
        Some(id) => builder.with_client_cert_resolver(id),
        None => builder.with_no_client_auth(),
    };
    // A resumed session skips certificate checks on both sides, and a session ticket can
    // arrive after the roots or our certificate changed; connections are pooled, so every new
    // one simply gets a full handshake against the current roots with the current certificate.
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// A server config that can be replaced at run time (e.g. new client-certificate roots after a
/// CA rotation); every new connection uses the current one, and listeners can watch for
/// replacements to close connections that were authenticated under the old one.
pub struct LiveServerConfig {
    inner: tokio::sync::watch::Sender<Arc<ServerConfig>>,
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
            inner: tokio::sync::watch::Sender::new(Arc::new(config)),
        })
    }

    /// The config for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.inner.borrow().clone()
    }

    /// Replaces the config for handshakes from now on.
    pub fn replace(&self, config: ServerConfig) {
        self.inner.send_replace(Arc::new(config));
    }

    /// Tells whether [`Self::replace`] was called after this call.
    pub fn replaced(&self) -> Replaced {
        Replaced(self.inner.subscribe())
    }
}

/// A connection's view of its [`LiveServerConfig`]'s replacements since it was taken
/// ([`LiveServerConfig::replaced`]).
#[derive(Clone)]
pub struct Replaced(tokio::sync::watch::Receiver<Arc<ServerConfig>>);

impl fmt::Debug for Replaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Replaced").field(&self.fired()).finish()
    }
}

impl Replaced {
    /// Whether the config was replaced since (one atomic load, no lock: cheap enough to ask
    /// before every request).
    pub fn fired(&self) -> bool {
        matches!(self.0.has_changed(), Ok(true))
    }

    /// Resolves at the first replacement since (never, once the config is dropped).
    pub async fn wait(mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
