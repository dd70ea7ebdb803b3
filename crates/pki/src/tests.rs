//! Crate tests: CA lifecycle, issuance (parsed back with x509-parser and verified with webpki),
//! real TLS handshakes through tokio-rustls, and hot reload.

use std::error::Error;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use kfsec_types::{Clock, ManualClock, SystemClock, UnixTime};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::version::TLS12;
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_PKCS1_SHA256WITHRSA, OID_SIG_ECDSA_WITH_SHA256};

use crate::*;

type R = Result<(), Box<dyn Error + Send + Sync>>;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn localhost_sans() -> (Vec<String>, Vec<IpAddr>) {
    (vec!["localhost".to_string()], vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
}

fn new_ca(alg: KeyAlgorithm) -> Result<(tempfile::TempDir, CertificateAuthority), Box<dyn Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::load_or_create(&dir.path().join("pki"), alg, &SystemClock)?;
    Ok((dir, ca))
}

fn first_der(pem: &str) -> Result<CertificateDer<'static>, Box<dyn Error + Send + Sync>> {
    Ok(CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or("no certificate")??)
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, Box<dyn Error + Send + Sync>> {
    let mut roots = RootCertStore::empty();
    roots.add(first_der(ca_pem)?)?;
    Ok(Arc::new(roots))
}

fn server_cert(ca: &CertificateAuthority) -> Result<IssuedCert, PkiError> {
    let (dns, ips) = localhost_sans();
    ca.issue_server("localhost", &dns, &ips, DAY, &SystemClock)
}

#[test]
fn ca_is_created_0600_and_loaded_unchanged() -> R {
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let ca = CertificateAuthority::load_or_create(&pki, KeyAlgorithm::EcdsaP256, &SystemClock)?;
    let key_mode = fs::metadata(pki.join("ca.key"))?.permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600);
    assert_eq!(fs::metadata(&pki)?.permissions().mode() & 0o777, 0o700);
    assert_eq!(fs::read_to_string(pki.join("ca.crt"))?, ca.cert_pem());
    assert!(fs::read_to_string(pki.join("ca.key"))?.starts_with("-----BEGIN PRIVATE KEY-----"));

    // Loading (even asking for another algorithm) keeps the existing CA.
    let again = CertificateAuthority::load_or_create(&pki, KeyAlgorithm::Rsa2048, &SystemClock)?;
    assert_eq!(again.cert_pem(), ca.cert_pem());
    assert_eq!(again.key_algorithm(), KeyAlgorithm::EcdsaP256);

    // CA shape: CN, CA:TRUE pathlen 1 (room for a cross-signed successor), keyCertSign + cRLSign, ~10 years.
    let x = x509_parser::parse_x509_certificate(ca.cert_der())?.1;
    assert_eq!(x.subject().to_string(), "CN=kfsec internal CA");
    let bc = x.basic_constraints()?.ok_or("no basicConstraints")?.value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(1));
    let ku = x.key_usage()?.ok_or("no keyUsage")?.value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    let life = ca.not_after().since(ca.info().not_before);
    assert!(life >= 3650 * DAY && life <= 3651 * DAY);

    // A leaf issued by the reloaded CA chains to the original CA.
    let leaf = server_cert(&again)?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca.cert_pem())?, crypto_provider()).build()?;
    verifier.verify_server_cert(
        &first_der(&leaf.cert_pem)?,
        &[],
        &ServerName::try_from("localhost")?,
        &[],
        rustls_pki_types::UnixTime::now(),
    )?;
    Ok(())
}

#[test]
fn incomplete_ca_is_an_error() -> R {
    let dir = tempfile::tempdir()?;
    CertificateAuthority::load_or_create(dir.path(), KeyAlgorithm::EcdsaP256, &SystemClock)?;
    fs::remove_file(dir.path().join("ca.crt"))?;
    let err = CertificateAuthority::load_or_create(dir.path(), KeyAlgorithm::EcdsaP256, &SystemClock)
        .err()
        .ok_or("expected error")?;
    assert!(matches!(err, PkiError::IncompleteCa { missing: "ca.crt", .. }), "{err}");
    assert!(dir.path().join("ca.key").exists(), "key must not be touched");
    Ok(())
}

#[test]
fn expired_ca_is_refused() -> R {
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000));
    CertificateAuthority::load_or_create(dir.path(), KeyAlgorithm::EcdsaP256, clock.as_ref())?;
    clock.advance(3660 * DAY);
    let err = CertificateAuthority::load_or_create(dir.path(), KeyAlgorithm::EcdsaP256, clock.as_ref())
        .err()
        .ok_or("expected error")?;
    assert!(matches!(err, PkiError::InvalidCa(_)), "{err}");
    Ok(())
}

fn check_server_leaf(alg: KeyAlgorithm) -> R {
    let (_dir, ca) = new_ca(alg)?;
    let clock = SystemClock;
    let now = clock.now();
    let leaf = server_cert(&ca)?;
    assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(leaf.not_after, UnixTime::from_secs(now.add(DAY).as_secs()));

    let der = first_der(&leaf.cert_pem)?;
    let x = x509_parser::parse_x509_certificate(&der)?.1;
    let ca_x = x509_parser::parse_x509_certificate(ca.cert_der())?.1;
    assert_eq!(x.issuer(), ca_x.subject());
    assert_eq!(x.subject().to_string(), "CN=localhost");
    let sans = &x.subject_alternative_name()?.ok_or("no SAN")?.value.general_names;
    assert!(sans.contains(&GeneralName::DNSName("localhost")));
    assert!(sans.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
    let eku = x.extended_key_usage()?.ok_or("no EKU")?.value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!(!x.is_ca());
    let expected_sig = match alg {
        KeyAlgorithm::Rsa2048 => OID_PKCS1_SHA256WITHRSA,
        KeyAlgorithm::EcdsaP256 => OID_SIG_ECDSA_WITH_SHA256,
    };
    assert_eq!(x.signature_algorithm.algorithm, expected_sig);
    let nb = x.validity().not_before.timestamp();
    let skew = i64::try_from(now.as_secs())? - nb;
    assert!((299..=301).contains(&skew), "notBefore skew {skew}");
    assert_eq!(
        u64::try_from(x.validity().not_after.timestamp())?,
        leaf.not_after.as_secs()
    );

    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca.cert_pem())?, crypto_provider()).build()?;
    for name in ["localhost", "127.0.0.1"] {
        verifier.verify_server_cert(
            &der,
            &[],
            &ServerName::try_from(name)?,
            &[],
            rustls_pki_types::UnixTime::now(),
        )?;
    }
    assert!(
        verifier
            .verify_server_cert(
                &der,
                &[],
                &ServerName::try_from("example.com")?,
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .is_err()
    );
    // The chain bundle parses as leaf + CA.
    assert_eq!(
        CertificateDer::pem_slice_iter(leaf.chain_pem(&ca).as_bytes()).count(),
        2
    );
    let dbg = format!("{leaf:?}");
    assert!(!dbg.contains("PRIVATE KEY") && dbg.contains("redacted"));
    assert!(!format!("{ca:?}").contains("PRIVATE"));
    Ok(())
}

#[test]
fn server_leaf_rsa() -> R {
    check_server_leaf(KeyAlgorithm::Rsa2048)
}

#[test]
fn server_leaf_ecdsa() -> R {
    check_server_leaf(KeyAlgorithm::EcdsaP256)
}

#[test]
fn issuance_follows_the_clock_and_never_outlives_the_ca() -> R {
    let dir = tempfile::tempdir()?;
    let t0 = UnixTime::from_secs(1_800_000_000);
    let clock = ManualClock::new(t0);
    let ca = CertificateAuthority::load_or_create(dir.path(), KeyAlgorithm::EcdsaP256, clock.as_ref())?;
    let (dns, ips) = localhost_sans();
    let leaf = ca.issue_server("x", &dns, &ips, DAY, clock.as_ref())?;
    assert_eq!(leaf.not_after, t0.add(DAY));
    clock.advance(3649 * DAY);
    let late = ca.issue_server("x", &dns, &ips, 30 * DAY, clock.as_ref())?;
    assert_eq!(late.not_after, ca.not_after());
    assert!(ca.issue_server("x", &[], &[], DAY, clock.as_ref()).is_err(), "no SANs");
    assert!(
        ca.issue_server("x", &dns, &ips, Duration::ZERO, clock.as_ref())
            .is_err()
    );
    Ok(())
}

#[test]
fn client_cert_carries_groups_and_client_auth() -> R {
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
        let (_dir, ca) = new_ca(alg)?;
        let groups = vec!["system:masters".to_string(), "kubeflow-admins".to_string()];
        let leaf = ca.issue_client("admin@kubeflow.org", &groups, DAY, &SystemClock)?;
        let der = first_der(&leaf.cert_pem)?;
        let x = x509_parser::parse_x509_certificate(&der)?.1;
        let cn: Vec<_> = x
            .subject()
            .iter_common_name()
            .map(|a| a.as_str())
            .collect::<Result<_, _>>()?;
        assert_eq!(cn, ["admin@kubeflow.org"]);
        let orgs: Vec<_> = x
            .subject()
            .iter_organization()
            .map(|a| a.as_str())
            .collect::<Result<_, _>>()?;
        assert_eq!(orgs, ["system:masters", "kubeflow-admins"]);
        let eku = x.extended_key_usage()?.ok_or("no EKU")?.value;
        assert!(eku.client_auth && !eku.server_auth);
        let ca_x = x509_parser::parse_x509_certificate(ca.cert_der())?.1;
        assert_eq!(x.issuer(), ca_x.subject());
        assert_eq!(
            u64::try_from(x.validity().not_after.timestamp())?,
            leaf.not_after.as_secs()
        );

        // The re-signed certificate verifies as a client certificate against the CA.
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca.cert_pem())?, crypto_provider()).build()?;
        verifier.verify_client_cert(&der, &[], rustls_pki_types::UnixTime::now())?;
        // And its key matches.
        load_certified_key(&leaf.cert_pem, &leaf.key_pem)?;
    }
    Ok(())
}

#[test]
fn key_algorithm_names() -> R {
    assert_eq!(KeyAlgorithm::default(), KeyAlgorithm::Rsa2048);
    assert_eq!("RSA-2048".parse::<KeyAlgorithm>()?, KeyAlgorithm::Rsa2048);
    assert_eq!("ecdsa-p256".parse::<KeyAlgorithm>()?, KeyAlgorithm::EcdsaP256);
    assert!("dsa".parse::<KeyAlgorithm>().is_err());
    Ok(())
}

#[test]
fn mismatched_key_is_rejected() -> R {
    let (_dir, ca) = new_ca(KeyAlgorithm::EcdsaP256)?;
    let a = server_cert(&ca)?;
    let b = server_cert(&ca)?;
    let err = load_certified_key(&a.cert_pem, &b.key_pem)
        .err()
        .ok_or("expected error")?;
    assert!(matches!(err, PkiError::KeyMismatch), "{err}");
    assert!(matches!(
        load_certified_key("", &a.key_pem),
        Err(PkiError::NoCertificate(_))
    ));
    assert!(matches!(load_certified_key(&a.cert_pem, ""), Err(PkiError::Pem { .. })));
    Ok(())
}

struct Handshake {
    version: Option<ProtocolVersion>,
    alpn: Option<Vec<u8>>,
    server_serial: String,
    client_cert_seen: Option<String>,
}

async fn handshake(server: ServerConfig, client: ClientConfig) -> Result<Handshake, Box<dyn Error + Send + Sync>> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let srv = tokio::spawn(async move {
        let mut s = acceptor.accept(a).await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        s.write_all(b"pong").await?;
        s.flush().await?;
        let seen = s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| parse_cert_der_pub(c));
        Ok::<_, std::io::Error>(seen)
    });
    let mut c = connector
        .connect(ServerName::try_from("localhost")?.to_owned(), b)
        .await?;
    c.write_all(b"ping").await?;
    c.flush().await?;
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"pong");
    let conn = c.get_ref().1;
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no server cert")?;
    let client_cert_seen = srv.await??.transpose()?;
    Ok(Handshake {
        version: conn.protocol_version(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        server_serial: crate::x509::parse_cert_der(leaf)?.serial_hex,
        client_cert_seen,
    })
}

fn parse_cert_der_pub(der: &CertificateDer<'_>) -> Result<String, PkiError> {
    crate::x509::parse_cert_der(der).map(|i| i.subject)
}

fn tls12_only_client(ca_pem: &str) -> Result<ClientConfig, Box<dyn Error + Send + Sync>> {
    Ok(ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&TLS12])?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth())
}

#[tokio::test]
async fn tls13_and_tls12_handshakes() -> R {
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
        let (_dir, ca) = new_ca(alg)?;
        let leaf = server_cert(&ca)?;
        let resolver = ReloadingResolver::from_pem(&leaf.chain_pem(&ca), &leaf.key_pem)?;
        let serial = resolver.info().serial_hex;

        let mut client = client_config_trusting(ca.cert_pem())?;
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let hs = handshake(server_config(resolver.clone(), true)?, client).await?;
        assert_eq!(hs.version, Some(ProtocolVersion::TLSv1_3));
        assert_eq!(hs.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(hs.server_serial, serial);

        let mut client12 = tls12_only_client(ca.cert_pem())?;
        client12.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let hs = handshake(server_config(resolver.clone(), false)?, client12).await?;
        assert_eq!(hs.version, Some(ProtocolVersion::TLSv1_2));
        assert_eq!(hs.alpn.as_deref(), Some(&b"http/1.1"[..]));

        // A client trusting another CA refuses the server.
        let (_d2, other) = new_ca(alg)?;
        let bad = handshake(
            server_config(resolver, true)?,
            client_config_trusting(other.cert_pem())?,
        )
        .await;
        assert!(bad.is_err());
    }
    Ok(())
}

#[tokio::test]
async fn mtls_client_certificate_reaches_the_server() -> R {
    let (_dir, ca) = new_ca(KeyAlgorithm::EcdsaP256)?;
    let leaf = server_cert(&ca)?;
    let resolver = ReloadingResolver::from_pem(&leaf.cert_pem, &leaf.key_pem)?;
    let user = ca.issue_client("alice", &["system:masters".to_string()], DAY, &SystemClock)?;

    let server = server_config_with_client_auth(resolver.clone(), true, ca.cert_pem(), ClientAuth::Optional)?;
    let client = client_config_with_identity(ca.cert_pem(), &user.cert_pem, &user.key_pem)?;
    let hs = handshake(server, client).await?;
    assert_eq!(hs.client_cert_seen.as_deref(), Some("O=system:masters, CN=alice"));

    // Optional: anonymous clients still connect.
    let server = server_config_with_client_auth(resolver.clone(), true, ca.cert_pem(), ClientAuth::Optional)?;
    let hs = handshake(server, client_config_trusting(ca.cert_pem())?).await?;
    assert_eq!(hs.client_cert_seen, None);

    // Required: anonymous clients are refused.
    let server = server_config_with_client_auth(resolver, true, ca.cert_pem(), ClientAuth::Required)?;
    assert!(handshake(server, client_config_trusting(ca.cert_pem())?).await.is_err());
    Ok(())
}

#[tokio::test]
async fn replace_swaps_for_new_handshakes_and_rejects_bad_pairs() -> R {
    let (_dir, ca) = new_ca(KeyAlgorithm::EcdsaP256)?;
    let first = server_cert(&ca)?;
    let resolver = ReloadingResolver::from_pem(&first.cert_pem, &first.key_pem)?;
    let serial1 = resolver.info().serial_hex;
    let cfg = || server_config(resolver.clone(), true);
    let client = || client_config_trusting(ca.cert_pem());
    assert_eq!(handshake(cfg()?, client()?).await?.server_serial, serial1);

    let second = server_cert(&ca)?;
    resolver.replace(&second.cert_pem, &second.key_pem)?;
    let serial2 = resolver.info().serial_hex;
    assert_ne!(serial1, serial2);
    assert_eq!(resolver.not_after(), second.not_after);
    assert_eq!(handshake(cfg()?, client()?).await?.server_serial, serial2);

    let third = server_cert(&ca)?;
    let err = resolver
        .replace(&third.cert_pem, &first.key_pem)
        .err()
        .ok_or("expected error")?;
    assert!(matches!(err, PkiError::KeyMismatch), "{err}");
    assert!(resolver.replace("garbage", "garbage").is_err());
    assert_eq!(handshake(cfg()?, client()?).await?.server_serial, serial2);
    Ok(())
}

#[tokio::test]
async fn watch_files_reloads_rewritten_files() -> R {
    let (dir, ca) = new_ca(KeyAlgorithm::EcdsaP256)?;
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    let first = server_cert(&ca)?;
    fs::write(&cert_path, &first.cert_pem)?;
    write_private_file(&key_path, first.key_pem.as_bytes())?;
    let resolver = ReloadingResolver::from_files(&cert_path, &key_path)?;
    let serial1 = resolver.info().serial_hex;
    let task = resolver.watch_files(cert_path.clone(), key_path.clone(), Duration::from_millis(20));

    // A half-rotated pair (new cert, old key) is refused; the old cert keeps serving.
    let second = server_cert(&ca)?;
    fs::write(&cert_path, &second.cert_pem)?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(resolver.info().serial_hex, serial1);

    // Completing the rotation is picked up.
    write_private_file(&key_path, second.key_pem.as_bytes())?;
    let serial2 = wait_for_change(&resolver, &serial1).await?;
    assert_eq!(serial2, crate::parse_cert_pem(&second.cert_pem)?.serial_hex);
    let hs = handshake(
        server_config(resolver.clone(), true)?,
        client_config_trusting(ca.cert_pem())?,
    )
    .await?;
    assert_eq!(hs.server_serial, serial2);

    // The watcher stops once the resolver is gone.
    drop(resolver);
    tokio::time::timeout(Duration::from_secs(5), task).await??;
    Ok(())
}

async fn wait_for_change(resolver: &ReloadingResolver, old: &str) -> Result<String, Box<dyn Error + Send + Sync>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = resolver.info().serial_hex;
        if now != old {
            return Ok(now);
        }
        if tokio::time::Instant::now() > deadline {
            return Err("watcher did not reload within 5s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn verify_with(ca_pem: &str, chain_pem: &str, now: UnixTime) -> Result<(), rustls::Error> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| rustls::Error::General(e.to_string()))?)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    verifier
        .verify_server_cert(
            &certs[0],
            &certs[1..],
            &ServerName::try_from("localhost").map_err(|e| rustls::Error::General(e.to_string()))?,
            &[],
            rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs())),
        )
        .map(|_| ())
}

#[test]
fn rotation_window_trusts_both_generations_then_only_the_new_one() -> R {
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let clock = ManualClock::new(UnixTime::from_secs(1_800_000_000));
    let clock = clock.as_ref();
    let set = CaSet::load_or_create(&pki, KeyAlgorithm::Rsa2048, clock)?;
    assert!(set.previous().is_none());
    assert_eq!(set.current().generation(), 1);
    assert_eq!(fs::read_to_string(bundle_path(&pki))?, set.current().cert_pem());
    let old_ca = set.current().cert_pem().to_owned();
    let (dns, ips) = localhost_sans();
    let old_leaf = set.current().issue_server("localhost", &dns, &ips, DAY, clock)?;
    let old_chain = set.chain_pem(&old_leaf);
    assert!(set.is_current_chain(&old_chain));

    let set = set.rotate(&pki, 2 * DAY, clock)?;
    assert_eq!(set.current().generation(), 2);
    assert_eq!(set.current().info().subject, "CN=kfsec internal CA 2");
    let new_ca = set.current().cert_pem().to_owned();
    assert_ne!(old_ca, new_ca);
    assert!(!set.is_current_chain(&old_chain), "old leaves must be re-issued");
    let bundle = fs::read_to_string(bundle_path(&pki))?;
    assert_eq!(bundle, set.trust_bundle_pem());
    assert_eq!(CertificateDer::pem_slice_iter(bundle.as_bytes()).count(), 2);
    // The old CA's key is gone: ca.key now belongs to the new CA.
    let reloaded = CaSet::load_or_create(&pki, KeyAlgorithm::Rsa2048, clock)?;
    assert_eq!(reloaded.current().cert_pem(), new_ca);
    assert!(reloaded.previous().is_some());

    let leaf = set.current().issue_server("localhost", &dns, &ips, DAY, clock)?;
    let chain = set.chain_pem(&leaf);
    assert!(set.is_current_chain(&chain));
    let now = clock.now();
    // Clients of the old CA verify the new leaf through the cross-signed certificate,
    verify_with(&old_ca, &chain, now)?;
    // clients of the new CA and of the bundle too, and old leaves stay valid for bundle holders.
    verify_with(&new_ca, &chain, now)?;
    verify_with(&bundle, &chain, now)?;
    verify_with(&bundle, &old_chain, now)?;
    // A second rotation must wait for the window to end.
    let err = set.rotate(&pki, DAY, clock).err().ok_or("second rotation accepted")?;
    assert!(err.to_string().contains("in progress"), "{err}");

    let set = CaSet::load_or_create(&pki, KeyAlgorithm::Rsa2048, clock)?;
    clock.advance(2 * DAY);
    assert!(set.window_ended(clock.now()));
    let set = set.finish(&pki, clock)?;
    assert!(set.previous().is_none());
    assert_eq!(fs::read_to_string(bundle_path(&pki))?, new_ca);
    for gone in ["ca-previous.crt", "ca-cross.crt", "ca-rotation.json"] {
        assert!(!pki.join(gone).exists(), "{gone} left behind");
    }
    // Afterwards only the new CA verifies, with the plain chain.
    let leaf = set.current().issue_server("localhost", &dns, &ips, DAY, clock)?;
    let chain = set.chain_pem(&leaf);
    verify_with(&new_ca, &chain, clock.now())?;
    assert!(verify_with(&old_ca, &chain, clock.now()).is_err());
    // The next rotation is generation 3.
    let set = set.rotate(&pki, DAY, clock)?;
    assert_eq!(set.current().generation(), 3);
    Ok(())
}

#[test]
fn ecdsa_rotation_keeps_the_algorithm() -> R {
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let set = CaSet::load_or_create(&pki, KeyAlgorithm::EcdsaP256, &SystemClock)?;
    let old_ca = set.current().cert_pem().to_owned();
    let set = set.rotate(&pki, DAY, &SystemClock)?;
    assert_eq!(set.current().key_algorithm(), KeyAlgorithm::EcdsaP256);
    let (dns, ips) = localhost_sans();
    let leaf = set.current().issue_server("localhost", &dns, &ips, DAY, &SystemClock)?;
    verify_with(&old_ca, &set.chain_pem(&leaf), SystemClock.now())?;
    Ok(())
}
