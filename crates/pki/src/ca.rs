//! The internal certificate authority: creating/loading it from the data dir and issuing server
//! and client (Kubernetes-style: CN = user, O = group) leaf certificates.
//!
//! Invariants: `ca.key` is created 0600 and written atomically before `ca.crt`; an existing CA is
//! loaded, never silently regenerated, and only if its key matches its certificate and it is a
//! valid CA; a half-present CA is an error; leaves never outlive the CA, carry exactly one EKU
//! (serverAuth or clientAuth), random 127-bit serials and a fresh key of the CA's algorithm;
//! private keys never appear in `Debug` output.

use std::cell::OnceCell;
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use kfsec_types::{Clock, Rng, UnixTime};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
    SigningKey,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::der;
use crate::error::PkiError;
use crate::files::{write_private_file, write_public_file};
use crate::rng::OsRng;
use crate::x509::{CertInfo, parse_cert_der, parse_x509, unix_to_asn1};

const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
/// The first CA's name; the CA of rotation generation `n > 1` is called `kfsec internal CA n`,
/// so that every generation has its own subject and chains never confuse two of them.
const CA_COMMON_NAME: &str = "kfsec internal CA";
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves start this far in the past to tolerate clock skew between peers.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Key (and signature) algorithm of the CA and of the leaves it issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyAlgorithm {
    /// RSA 2048 with sha256WithRSAEncryption (the Kubeflow default).
    #[default]
    Rsa2048,
    /// ECDSA P-256 with ecdsa-with-SHA256.
    EcdsaP256,
}

impl KeyAlgorithm {
    /// Stable name: `rsa2048` or `ecdsa-p256`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rsa2048 => "rsa2048",
            Self::EcdsaP256 => "ecdsa-p256",
        }
    }

    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            Self::Rsa2048 => &PKCS_RSA_SHA256,
            Self::EcdsaP256 => &PKCS_ECDSA_P256_SHA256,
        }
    }

    fn generate(self) -> Result<KeyPair, PkiError> {
        Ok(KeyPair::generate_for(self.signature_algorithm())?)
    }

    fn of_key(key: &KeyPair) -> Option<Self> {
        let alg = key.algorithm();
        [Self::Rsa2048, Self::EcdsaP256]
            .into_iter()
            .find(|a| a.signature_algorithm() == alg)
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = PkiError;
    /// Accepts `rsa2048`/`RSA-2048`/`rsa` and `ecdsa-p256`/`ECDSAP256`/`ecdsa`/`p256`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .flat_map(char::to_lowercase)
            .collect();
        match norm.as_str() {
            "rsa" | "rsa2048" => Ok(Self::Rsa2048),
            "ecdsa" | "ecdsap256" | "p256" => Ok(Self::EcdsaP256),
            _ => Err(PkiError::InvalidRequest(format!(
                "unknown key algorithm {s:?} (expected rsa2048 or ecdsa-p256)"
            ))),
        }
    }
}

/// A freshly issued leaf certificate and its private key.
#[derive(Clone)]
pub struct IssuedCert {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM. Store it with [`crate::write_private_file`].
    pub key_pem: String,
    /// End of validity (second precision).
    pub not_after: UnixTime,
}

impl IssuedCert {
    /// Leaf followed by the CA certificate, for servers that send the chain.
    pub fn chain_pem(&self, ca: &CertificateAuthority) -> String {
        let mut out = self.cert_pem.clone();
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(ca.cert_pem());
        out
    }
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// The internal CA. Cheap to share behind an `Arc`; issuing is `&self`.
pub struct CertificateAuthority {
    alg: KeyAlgorithm,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    info: CertInfo,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("alg", &self.alg)
            .field("subject", &self.info.subject)
            .field("serial", &self.info.serial_hex)
            .field("not_after", &self.info.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn exists(path: &Path) -> Result<bool, PkiError> {
    path.try_exists().map_err(|e| PkiError::io(path, e))
}

fn read_to_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|e| PkiError::io(path, e))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    OsRng.fill(&mut bytes);
    // Positive and without a leading zero octet, so it encodes in exactly 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn ca_common_name(generation: u32) -> String {
    if generation <= 1 {
        CA_COMMON_NAME.to_owned()
    } else {
        format!("{CA_COMMON_NAME} {generation}")
    }
}

/// A CA certificate of rotation generation `generation`; `pathlen:1` leaves room for exactly
/// one intermediate: the next generation's cross-signed certificate during a rotation window.
fn ca_params(generation: u32, not_before: UnixTime, not_after: UnixTime) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn_common_name(&ca_common_name(generation));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = unix_to_asn1(not_before)?.to_datetime();
    params.not_after = unix_to_asn1(not_after)?.to_datetime();
    params.serial_number = Some(random_serial());
    Ok(params)
}

fn dn_common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

impl CertificateAuthority {
    /// Loads `dir/ca.crt` + `dir/ca.key`, or creates both (key 0600) if neither exists.
    /// An existing CA keeps its own key algorithm; `alg` applies only to a new CA.
    pub fn load_or_create(dir: &Path, alg: KeyAlgorithm, clock: &dyn Clock) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => Self::load(&cert_path, &key_path, alg, clock),
            (false, false) => Self::create(dir, &cert_path, &key_path, alg, clock),
            (true, false) => Err(PkiError::IncompleteCa {
                dir: dir.to_path_buf(),
                present: CA_CERT_FILE,
                missing: CA_KEY_FILE,
            }),
            (false, true) => Err(PkiError::IncompleteCa {
                dir: dir.to_path_buf(),
                present: CA_KEY_FILE,
                missing: CA_CERT_FILE,
            }),
        }
    }

    fn create(
        dir: &Path,
        cert_path: &Path,
        key_path: &Path,
        alg: KeyAlgorithm,
        clock: &dyn Clock,
    ) -> Result<Self, PkiError> {
        match fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(PkiError::io(dir, e)),
        }
        let (ca, key_pem) = Self::generate(alg, 1, clock)?;
        // Key first: a crash in between leaves an IncompleteCa error, never a cert without key.
        write_private_file(key_path, key_pem.as_bytes())?;
        write_public_file(cert_path, ca.cert_pem.as_bytes())?;
        tracing::info!(
            dir = %dir.display(),
            alg = %ca.alg,
            serial = %ca.info.serial_hex,
            not_after = ca.info.not_after.as_secs(),
            "created internal CA"
        );
        Ok(ca)
    }

    /// A new self-signed CA of rotation generation `generation` (1 for the first), in memory;
    /// returns it with its private key (PKCS#8 PEM) for the caller to persist.
    pub(crate) fn generate(alg: KeyAlgorithm, generation: u32, clock: &dyn Clock) -> Result<(Self, String), PkiError> {
        let now = clock.now();
        let key = alg.generate()?;
        let params = ca_params(generation, now.sub(CLOCK_SKEW), now.add(CA_LIFETIME))?;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let ca = Self::from_parts(cert.pem(), cert.der().clone(), key, clock)?;
        Ok((ca, key_pem))
    }

    /// A CA from its certificate and private key (PEM).
    pub(crate) fn from_pem(cert_pem: &str, key_pem: &str, clock: &dyn Clock) -> Result<Self, PkiError> {
        let cert_der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .ok_or(PkiError::NoCertificate("ca.crt"))?
            .map_err(|e| PkiError::pem("ca.crt", e))?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| PkiError::pem("ca.key", e))?;
        let key = KeyPair::try_from(&key_der)?;
        Self::from_parts(cert_pem.to_owned(), cert_der, key, clock)
    }

    /// This CA's rotation generation: 1 for `kfsec internal CA`, n for `kfsec internal CA n`.
    pub fn generation(&self) -> u32 {
        self.info
            .subject
            .rsplit_once(CA_COMMON_NAME)
            .map(|(_, rest)| rest.trim())
            .and_then(|n| n.parse().ok())
            .unwrap_or(1)
    }

    /// Whether this CA may sign one intermediate (a cross-signed successor). CAs created before
    /// rotation existed carry `pathlen:0`, which strict verifiers apply to a cross-signed chain.
    pub fn allows_intermediate(&self) -> bool {
        parse_x509(&self.cert_der)
            .ok()
            .and_then(|c| {
                c.basic_constraints()
                    .ok()
                    .flatten()
                    .map(|bc| bc.value.path_len_constraint)
            })
            .is_none_or(|len| len.is_none_or(|n| n >= 1))
    }

    /// Signs `successor`'s certificate with this CA's key: same subject, key and extensions,
    /// valid until `until` (at most this CA's own end). A client that trusts only this CA can
    /// then verify leaves of `successor` through it.
    pub fn cross_sign(
        &self,
        successor: &CertificateAuthority,
        until: UnixTime,
        clock: &dyn Clock,
    ) -> Result<String, PkiError> {
        // The successor's own parameters (subject, constraints, key usages, the key identifier
        // derived from the same key), with the window as validity and a serial of its own.
        let mut params = ca_params(
            successor.generation(),
            clock.now().sub(CLOCK_SKEW),
            until.min(self.info.not_after),
        )?;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(successor.issuer.key(), &self.issuer)?;
        Ok(cert.pem())
    }

    fn load(cert_path: &Path, key_path: &Path, requested: KeyAlgorithm, clock: &dyn Clock) -> Result<Self, PkiError> {
        let mode = fs::metadata(key_path)
            .map_err(|e| PkiError::io(key_path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %key_path.display(),
                mode = format!("{:o}", mode & 0o777),
                "CA private key is accessible to group/others; it should be mode 0600"
            );
        }
        let ca = Self::from_pem(&read_to_string(cert_path)?, &read_to_string(key_path)?, clock)?;
        if ca.alg != requested {
            tracing::warn!(
                existing = %ca.alg,
                requested = %requested,
                "existing CA uses a different key algorithm; keeping it (leaves follow the CA)"
            );
        }
        Ok(ca)
    }

    fn from_parts(
        cert_pem: String,
        cert_der: CertificateDer<'static>,
        key: KeyPair,
        clock: &dyn Clock,
    ) -> Result<Self, PkiError> {
        let alg = KeyAlgorithm::of_key(&key)
            .ok_or_else(|| PkiError::InvalidCa(format!("unsupported CA key algorithm {:?}", key.algorithm())))?;
        {
            let x509 = parse_x509(&cert_der)?;
            if !x509.is_ca() {
                return Err(PkiError::InvalidCa("certificate lacks basicConstraints CA:TRUE".into()));
            }
            if x509.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(PkiError::KeyMismatch);
            }
        }
        let info = parse_cert_der(&cert_der)?;
        if clock.now() > info.not_after {
            return Err(PkiError::InvalidCa(format!(
                "CA certificate expired at {} (unix seconds); rotate it",
                info.not_after.as_secs()
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self {
            alg,
            cert_pem,
            cert_der,
            info,
            issuer,
        })
    }

    /// The CA certificate, PEM. Clients get [`crate::CaSet::trust_bundle_pem`], which also holds
    /// the previous CA during a rotation window.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's key algorithm (and that of every leaf it issues).
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.alg
    }

    /// End of the CA's validity.
    pub fn not_after(&self) -> UnixTime {
        self.info.not_after
    }

    /// Facts about the CA certificate.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    fn leaf_params(
        &self,
        common_name: &str,
        lifetime: Duration,
        eku: ExtendedKeyUsagePurpose,
        clock: &dyn Clock,
    ) -> Result<(CertificateParams, UnixTime), PkiError> {
        if lifetime.is_zero() {
            return Err(PkiError::InvalidRequest("lifetime must be positive".into()));
        }
        let now = clock.now();
        if now > self.info.not_after {
            return Err(PkiError::InvalidCa("CA certificate has expired".into()));
        }
        let mut not_after = UnixTime::from_secs(now.add(lifetime).as_secs());
        if not_after > self.info.not_after {
            tracing::warn!(
                cn = common_name,
                "requested lifetime exceeds the CA's validity; clamping to the CA's notAfter"
            );
            not_after = self.info.not_after;
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn_common_name(common_name);
        params.not_before = unix_to_asn1(now.sub(CLOCK_SKEW))?.to_datetime();
        params.not_after = unix_to_asn1(not_after)?.to_datetime();
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = match self.alg {
            KeyAlgorithm::Rsa2048 => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
            KeyAlgorithm::EcdsaP256 => vec![KeyUsagePurpose::DigitalSignature],
        };
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        Ok((params, not_after))
    }

    /// Issues a TLS server certificate (EKU serverAuth) for the given DNS names and IPs.
    pub fn issue_server(
        &self,
        common_name: &str,
        dns_names: &[String],
        ips: &[IpAddr],
        lifetime: Duration,
        clock: &dyn Clock,
    ) -> Result<IssuedCert, PkiError> {
        if dns_names.is_empty() && ips.is_empty() {
            return Err(PkiError::InvalidRequest(
                "a server certificate needs at least one DNS name or IP address".into(),
            ));
        }
        let (mut params, not_after) =
            self.leaf_params(common_name, lifetime, ExtendedKeyUsagePurpose::ServerAuth, clock)?;
        let mut sans = Vec::with_capacity(dns_names.len() + ips.len());
        for name in dns_names {
            if name.is_empty() {
                return Err(PkiError::InvalidRequest("empty DNS name".into()));
            }
            sans.push(SanType::DnsName(Ia5String::try_from(name.as_str())?));
        }
        sans.extend(ips.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        let key = self.alg.generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// Issues a workload certificate for mutual TLS: serverAuth and clientAuth, a SPIFFE-style
    /// URI SAN `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>` and `dns_names`.
    pub fn issue_workload(
        &self,
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
        dns_names: &[String],
        lifetime: Duration,
        clock: &dyn Clock,
    ) -> Result<IssuedCert, PkiError> {
        let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
        if !(ok(trust_domain) && ok(namespace) && ok(service_account)) {
            return Err(PkiError::InvalidRequest(
                "trust domain, namespace and service account must be DNS-like names".into(),
            ));
        }
        let spiffe = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
        let (mut params, not_after) =
            self.leaf_params(service_account, lifetime, ExtendedKeyUsagePurpose::ServerAuth, clock)?;
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        let mut sans = vec![SanType::URI(Ia5String::try_from(spiffe.as_str())?)];
        for name in dns_names {
            sans.push(SanType::DnsName(Ia5String::try_from(name.as_str())?));
        }
        params.subject_alt_names = sans;
        let key = self.alg.generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// Issues a TLS client certificate (EKU clientAuth) the way Kubernetes reads them:
    /// subject CN = user name, one O per group (e.g. `O=system:masters`).
    pub fn issue_client(
        &self,
        common_name: &str,
        organizations: &[String],
        lifetime: Duration,
        clock: &dyn Clock,
    ) -> Result<IssuedCert, PkiError> {
        if common_name.is_empty() {
            return Err(PkiError::InvalidRequest("empty user name (CN)".into()));
        }
        if organizations.iter().any(String::is_empty) {
            return Err(PkiError::InvalidRequest("empty group name (O)".into()));
        }
        let (params, not_after) =
            self.leaf_params(common_name, lifetime, ExtendedKeyUsagePurpose::ClientAuth, clock)?;
        let key = self.alg.generate()?;
        // rcgen holds one value per attribute type, so let it build the TBSCertificate, capture
        // it unsigned, swap in the multi-O subject, and sign that once with the CA key.
        let capture = TbsCapture {
            key: self.issuer.key(),
            tbs: OnceCell::new(),
        };
        let capturing_issuer = Issuer::from_ca_cert_der(&self.cert_der, &capture)?;
        params.signed_by(&key, &capturing_issuer)?;
        drop(capturing_issuer);
        let tbs = capture
            .tbs
            .into_inner()
            .ok_or_else(|| PkiError::X509("certificate template was not produced".into()))?;
        let subject = der::subject_name(organizations, common_name);
        let cert_der = replace_subject_and_sign(&tbs, &subject, self.issuer.key())?;
        parse_x509(&cert_der)?;
        Ok(IssuedCert {
            cert_pem: der::pem_encode("CERTIFICATE", &cert_der),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }
}

/// A signer that records the TBSCertificate instead of signing it.
struct TbsCapture<'a> {
    key: &'a KeyPair,
    tbs: OnceCell<Vec<u8>>,
}

impl PublicKeyData for TbsCapture<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.key.der_bytes()
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.key.algorithm()
    }
}

impl SigningKey for TbsCapture<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let _ = self.tbs.set(msg.to_vec());
        Ok(Vec::new())
    }
}

/// TBSCertificate ::= SEQUENCE { [0] version, serial, signature, issuer, validity, subject, ... }
/// Returns the DER Certificate with `subject` swapped in, signed by `signer`.
fn replace_subject_and_sign(tbs: &[u8], subject: &[u8], signer: &KeyPair) -> Result<Vec<u8>, PkiError> {
    let malformed = |m: &str| PkiError::X509(format!("unexpected TBSCertificate layout: {m}"));
    let (tag, header, total) = der::read_tlv(tbs)?;
    if tag != der::TAG_SEQUENCE || total != tbs.len() {
        return Err(malformed("not a single SEQUENCE"));
    }
    let content = &tbs[header..];
    let els = der::elements(content)?;
    if els.len() < 7 || content[els[0].start] != 0xa0 {
        return Err(malformed("missing fields"));
    }
    let subject_range = els[5].clone();
    if content[subject_range.start] != der::TAG_SEQUENCE {
        return Err(malformed("subject is not a SEQUENCE"));
    }
    let mut new_content = Vec::with_capacity(content.len() + subject.len());
    new_content.extend_from_slice(&content[..subject_range.start]);
    new_content.extend_from_slice(subject);
    new_content.extend_from_slice(&content[subject_range.end..]);
    let new_tbs = der::tlv(der::TAG_SEQUENCE, &new_content);
    let signature = signer.sign(&new_tbs)?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(&signature);
    let mut cert = new_tbs;
    cert.extend_from_slice(&content[els[2].clone()]); // signatureAlgorithm == TBS signature
    cert.extend(der::tlv(der::TAG_BIT_STRING, &bits));
    Ok(der::tlv(der::TAG_SEQUENCE, &cert))
}
