//! Reading certificate facts (validity, serial, names) with x509-parser, and converting between
//! [`UnixTime`] and the ASN.1 times rcgen writes.
//!
//! Invariant: read-only; nothing here trusts a certificate, it only describes one.

use kfsec_types::UnixTime;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::time::ASN1Time;

use crate::error::PkiError;

/// Facts about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: UnixTime,
    /// End of validity.
    pub not_after: UnixTime,
    /// Serial number, lowercase hex, no separators.
    pub serial_hex: String,
    /// Subject distinguished name (RFC 4514-ish text).
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Subject alternative names as text (`DNS:x`, `IP:1.2.3.4`, `URI:spiffe://…`).
    pub sans: Vec<String>,
}

/// Describes the first certificate in a PEM bundle.
pub fn parse_cert_pem(pem: &str) -> Result<CertInfo, PkiError> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or(PkiError::NoCertificate("PEM bundle"))?
        .map_err(|e| PkiError::pem("certificate", e))?;
    parse_cert_der(&der)
}

pub(crate) fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::X509(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::X509("trailing data after certificate".into()));
    }
    Ok(cert)
}

pub(crate) fn parse_cert_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let cert = parse_x509(der)?;
    let validity = cert.validity();
    Ok(CertInfo {
        not_before: asn1_to_unix(&validity.not_before),
        not_after: asn1_to_unix(&validity.not_after),
        serial_hex: cert
            .raw_serial()
            .iter()
            .skip_while(|&&b| b == 0)
            .map(|b| format!("{b:02x}"))
            .collect(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans: sans_of(&cert),
    })
}

/// Certificate times before the epoch are clamped to it.
pub(crate) fn asn1_to_unix(t: &ASN1Time) -> UnixTime {
    UnixTime::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
}

/// The ASN.1 time rcgen expects for `t` (second precision).
pub(crate) fn unix_to_asn1(t: UnixTime) -> Result<ASN1Time, PkiError> {
    let secs = i64::try_from(t.as_secs()).map_err(|_| PkiError::InvalidRequest("time out of range".into()))?;
    ASN1Time::from_timestamp(secs).map_err(|e| PkiError::InvalidRequest(format!("time: {e}")))
}

/// The Kubernetes identity in a (verified) client certificate, and until when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject's CN.
    pub user: String,
    /// The subject's O values.
    pub groups: Vec<String>,
    /// The certificate's notAfter: it authenticates nothing from then on.
    pub not_after: UnixTime,
}

/// The identity in the leaf of a (verified) client certificate chain, as [`client_identity`]
/// reads it, holding until the earliest notAfter of the chain's certificates (an intermediate
/// that expires first ends it too; one that does not parse is not counted).
pub fn client_identity_in_chain<D: AsRef<[u8]>>(chain: &[D]) -> Result<ClientCert, PkiError> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| PkiError::X509("no client certificate".into()))?;
    let mut cert = client_identity(leaf.as_ref())?;
    for der in intermediates {
        if let Ok(c) = parse_x509(der.as_ref()) {
            cert.not_after = cert.not_after.min(asn1_to_unix(&c.validity().not_after));
        }
    }
    Ok(cert)
}

/// The Kubernetes identity in a (verified) client certificate: the subject's CN is the user name
/// and each O is a group, as the API server reads client certificates.
pub fn client_identity(der: &[u8]) -> Result<ClientCert, PkiError> {
    let cert = parse_x509(der)?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or_else(|| PkiError::X509("client certificate has no common name".into()))?
        .to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_owned)
        .collect();
    Ok(ClientCert {
        user,
        groups,
        not_after: asn1_to_unix(&cert.validity().not_after),
    })
}

/// The names a (verified) certificate answers to, for matching against an allow-list: its
/// subject CNs, then its DNS and URI subject alternative names, each as written.
pub fn cert_names(der: &[u8]) -> Result<Vec<String>, PkiError> {
    use x509_parser::extensions::GeneralName;
    let cert = parse_x509(der)?;
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .collect();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push((*d).to_owned()),
                GeneralName::URI(u) => names.push((*u).to_owned()),
                _ => {}
            }
        }
    }
    Ok(names)
}

fn sans_of(cert: &X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::URI(u) => format!("URI:{u}"),
            GeneralName::IPAddress(b) => match <[u8; 4]>::try_from(*b) {
                Ok(v4) => format!("IP:{}", std::net::Ipv4Addr::from(v4)),
                Err(_) => match <[u8; 16]>::try_from(*b) {
                    Ok(v6) => format!("IP:{}", std::net::Ipv6Addr::from(v6)),
                    Err(_) => "IP:?".to_owned(),
                },
            },
            other => format!("{other}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_chain_holds_until_its_earliest_not_after() {
        let dir = tempfile::tempdir().unwrap();
        let clock = kfsec_types::ManualClock::new(UnixTime::from_secs(1_700_000_000));
        let ca =
            crate::CertificateAuthority::load_or_create(dir.path(), crate::KeyAlgorithm::EcdsaP256, clock.as_ref())
                .unwrap();
        let issue = |secs| {
            let c = ca
                .issue_client(
                    "alice",
                    &["team".into()],
                    std::time::Duration::from_secs(secs),
                    clock.as_ref(),
                )
                .unwrap();
            let der = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                .next()
                .unwrap()
                .unwrap();
            der.as_ref().to_vec()
        };
        let (leaf, short) = (issue(86_400), issue(3_600));
        let alone = client_identity_in_chain(std::slice::from_ref(&leaf)).unwrap();
        assert_eq!(
            (alone.user.as_str(), alone.groups.as_slice()),
            ("alice", &["team".to_owned()][..])
        );
        assert_eq!(alone.not_after, UnixTime::from_secs(1_700_000_000 + 86_400));
        let chained = client_identity_in_chain(&[leaf, short, b"not a certificate".to_vec()]).unwrap();
        assert_eq!(chained.not_after, UnixTime::from_secs(1_700_000_000 + 3_600));
        assert!(client_identity_in_chain::<Vec<u8>>(&[]).is_err());
    }
}
