//! kfsec-pki: the internal CA, certificate issuance, hot-reloaded serving certificates and the
//! rustls configurations every kfsec listener and internal client uses.
//!
//! Security invariants:
//! - one crypto provider, aws-lc-rs, for rustls and rcgen alike ([`crypto_provider`]);
//! - TLS 1.3 and 1.2 only, stated explicitly on every config;
//! - private keys never reach disk with a mode wider than 0600 ([`write_private_file`]) and never
//!   appear in `Debug` output;
//! - a certificate/key pair is validated (PEM, key type, key matches certificate) before it is
//!   served; a bad pair never replaces a good one;
//! - time comes from a [`kfsec_types::Clock`]; randomness from a CSPRNG that aborts rather than
//!   return predictable bytes ([`OsRng`]).

mod authority;
mod ca;
mod der;
mod error;
mod files;
mod live;
mod reload;
mod rng;
mod tls;
mod x509;

pub use authority::{CaSet, PreviousCa, bundle_path};
pub use ca::{CertificateAuthority, IssuedCert, KeyAlgorithm};
pub use error::PkiError;
pub use files::{write_private_file, write_public_file};
pub use live::{LiveRoots, LiveServerConfig, Replaced, client_config_live};
pub use reload::{OnFileChange, ReloadingResolver};
pub use rng::OsRng;
pub use tls::{
    ClientAuth, client_config_trusting, client_config_with_identity, crypto_provider, load_certified_key,
    server_config, server_config_with_client_auth,
};
pub use x509::{CertInfo, ClientCert, cert_names, client_identity, client_identity_in_chain, parse_cert_pem};

#[cfg(test)]
mod tests;
