//! rustls configurations for kfsec listeners and internal clients, and PEM → `CertifiedKey`.
//!
//! Invariants: every config uses the aws-lc-rs provider ([`crypto_provider`]) and states its
//! protocol versions explicitly (TLS 1.3 and 1.2 only); client configs trust only the roots they
//! are given (our CA), never a system store; a `CertifiedKey` is returned only after its private
//! key has been proven to match the end-entity certificate.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, InconsistentKeys, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::PkiError;

/// The one crypto provider of kfsec: aws-lc-rs defaults.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Whether a listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Ask for a certificate; accept connections without one (other credentials may follow).
    Optional,
    /// Require a certificate signed by the given roots.
    Required,
}

fn alpn(alpn_h2: bool) -> Vec<Vec<u8>> {
    let mut protos = Vec::with_capacity(2);
    if alpn_h2 {
        protos.push(b"h2".to_vec());
    }
    protos.push(b"http/1.1".to_vec());
    protos
}

/// A server config: TLS 1.3 + 1.2, aws-lc-rs, no client auth, certificates from `resolver`
/// (consulted per handshake, so a hot-swapped certificate applies to new connections only).
/// ALPN offers `h2` (if `alpn_h2`) then `http/1.1`.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>, alpn_h2: bool) -> Result<ServerConfig, PkiError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&TLS13, &TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn(alpn_h2);
    Ok(config)
}

/// Like [`server_config`], but verifies client certificates against `client_ca_pem` (mTLS).
/// The verified chain is available from the connection's `peer_certificates()`.
pub fn server_config_with_client_auth(
    resolver: Arc<dyn ResolvesServerCert>,
    alpn_h2: bool,
    client_ca_pem: &str,
    mode: ClientAuth,
) -> Result<ServerConfig, PkiError> {
    let provider = crypto_provider();
    let roots = Arc::new(root_store(client_ca_pem)?);
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    let verifier = match mode {
        ClientAuth::Optional => builder.allow_unauthenticated().build()?,
        ClientAuth::Required => builder.build()?,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&TLS13, &TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn(alpn_h2);
    Ok(config)
}

pub(crate) fn root_store(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(der.map_err(|e| PkiError::pem("CA certificate", e))?)?;
    }
    if roots.is_empty() {
        return Err(PkiError::NoCertificate("CA bundle"));
    }
    Ok(roots)
}

/// A client config (TLS 1.3 + 1.2) whose only trust anchors are the certificates in `ca_pem`.
pub fn client_config_trusting(ca_pem: &str) -> Result<ClientConfig, PkiError> {
    Ok(ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&TLS13, &TLS12])?
        .with_root_certificates(root_store(ca_pem)?)
        .with_no_client_auth())
}

/// Like [`client_config_trusting`], presenting a client certificate (mTLS).
pub fn client_config_with_identity(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<ClientConfig, PkiError> {
    // Checked first for the explicit KeyMismatch error.
    load_certified_key(cert_pem, key_pem)?;
    let (certs, key) = parse_pair(cert_pem, key_pem)?;
    Ok(ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&TLS13, &TLS12])?
        .with_root_certificates(root_store(ca_pem)?)
        .with_client_auth_cert(certs, key)?)
}

fn parse_pair(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::pem("certificate", e))?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate("certificate PEM"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| PkiError::pem("private key", e))?;
    Ok((certs, key))
}

/// Parses a certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1 PEM),
/// loads the key with the aws-lc-rs provider and checks that it matches the leaf.
pub fn load_certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, PkiError> {
    let (certs, key) = parse_pair(cert_pem, key_pem)?;
    let signing_key = crypto_provider().key_provider.load_private_key(key)?;
    let certified = CertifiedKey::new(certs, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(PkiError::KeyMismatch),
        Err(e) => Err(e.into()),
    }
}
