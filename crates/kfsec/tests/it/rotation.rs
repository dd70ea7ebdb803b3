//! CA rotation (`kfsec cert rotate-ca`) end to end: during the window every client of the old
//! CA keeps working — browsers and kubectl that trust only the old CA, the old admin client
//! certificate, an mTLS upstream with an old-CA certificate — while kfsec already serves leaves
//! of the new CA; after the window only the new CA is trusted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine;
use kfsec_server::admin::{AdminRequest, AdminResponse};
use tokio::net::TcpListener;

use crate::harness::*;
use crate::proxying::{served_cert, upstream_a};
use crate::rbac::Kubectl;

/// A client trusting exactly `ca_pem` (all certificates in it), optionally presenting a
/// client certificate.
fn client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let cfg = match identity {
        Some((cert, key)) => kfsec_pki::client_config_with_identity(ca_pem, cert, key),
        None => kfsec_pki::client_config_trusting(ca_pem),
    }
    .unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The client certificate and key of a kubeconfig, and its CA data.
fn kubeconfig_parts(path: &std::path::Path) -> (String, String, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let field = |name: &str| {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(line).unwrap()).unwrap()
    };
    (
        field("client-certificate-data"),
        field("client-key-data"),
        field("certificate-authority-data"),
    )
}

async fn served_issuer(bundle: &str, addr: std::net::SocketAddr, name: &'static str) -> String {
    served_cert(bundle, addr, name).await.issuer
}

async fn rotate(k: &Kfsec, window_seconds: Option<u64>) -> kfsec_server::trust::RotationStatus {
    match kfsec_server::admin::call(k._dir.path(), &AdminRequest::CaRotate { window_seconds })
        .await
        .unwrap()
        .expect("the admin socket answers")
    {
        AdminResponse::Rotation(s) => s,
        other => panic!("unexpected answer: {other:?}"),
    }
}

fn openssl_verify(ca_file: &std::path::Path, chain_file: &std::path::Path) -> (bool, String) {
    // `-untrusted` supplies the intermediates the server sends after the leaf.
    let o = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca_file)
        .arg("-untrusted")
        .arg(chain_file)
        .arg(chain_file)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_keeps_old_clients_working_through_the_window() {
    let upstream_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream_l.local_addr().unwrap().port();
    let k = Kfsec::start(&format!(
        "- prefix: /secure/\n  upstream: https://127.0.0.1:{port}\n  tls: {{mode: mutual, serverName: upstream-a}}\n"
    ))
    .await;
    let pki = k._dir.path().join("pki");
    let work = tempfile::tempdir().unwrap();
    let old_ca = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    assert_eq!(k.running.ca_pem, old_ca, "no window yet: the bundle is the CA");
    // An upstream whose certificate (and client trust) is the old CA's only.
    upstream_a(upstream_l, &pki).await;
    // The admin kubeconfig as it was: old CA data, old client certificate.
    let old_kubeconfig = work.path().join("old.kubeconfig");
    std::fs::copy(k._dir.path().join("admin.kubeconfig"), &old_kubeconfig).unwrap();
    let (old_admin_cert, old_admin_key, _) = kubeconfig_parts(&old_kubeconfig);

    let mut b = k.client();
    assert_eq!(b.login("/", USER, PASSWORD).await.0.status(), 200);
    let cookie = format!("authservice_session={}", b.cookies["authservice_session"]);

    // Load from clients that trust only the old CA, through the rotation.
    let (ok, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        let (base, old_ca, cookie) = (k.base.clone(), old_ca.clone(), cookie.clone());
        tokio::spawn(async move {
            let kept = client(&old_ca, None);
            while !stop.load(Ordering::Relaxed) {
                for c in [kept.clone(), client(&old_ca, None)] {
                    match c.get(format!("{base}/app/load")).header("cookie", &cookie).send().await {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed request: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let status = rotate(&k, Some(3600)).await;
    assert_eq!(status.current, "CN=kfsec internal CA 2");
    assert_eq!(status.previous.as_deref(), Some("CN=kfsec internal CA"));
    assert!(status.trusted_until.is_some());
    for name in ["front door", "gateway workload", "admin kubeconfig"] {
        assert!(
            status.reissued.iter().any(|r| r == name),
            "{name} re-issued: {:?}",
            status.reissued
        );
    }
    assert!(status.reissued.iter().any(|r| r.starts_with("webhook ")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{ok} ok, {failed} failed across the rotation");
    assert!(ok > 20, "the load ran ({ok} requests)");

    let new_ca = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    assert_ne!(new_ca, old_ca);
    let bundle = std::fs::read_to_string(kfsec_pki::bundle_path(&pki)).unwrap();
    assert_eq!(bundle, format!("{new_ca}{old_ca}"), "the bundle trusts both, new first");
    // kfsec already serves leaves of the new CA, on the front door and the webhook listener.
    let front = k.running.https_addr;
    assert_eq!(
        served_issuer(&bundle, front, "localhost").await,
        "CN=kfsec internal CA 2"
    );
    let hooks = k.running.webhook_addr;
    let hook_name = "poddefaults-webhook-service.kubeflow.svc";
    assert_eq!(served_issuer(&bundle, hooks, hook_name).await, "CN=kfsec internal CA 2");

    // Clients of the old CA, of the new CA and of the bundle all verify the front door.
    for (who, ca) in [("old CA", &old_ca), ("new CA", &new_ca), ("bundle", &bundle)] {
        let r = client(ca, None).get(format!("{}/dex/healthz", k.base)).send().await;
        assert!(
            r.is_ok_and(|r| r.status() == 200),
            "a client trusting the {who} connects"
        );
    }
    // The old admin client certificate still authenticates; so does the new one.
    let api = format!("{}/api/v1/namespaces", k.base);
    // (kept alive across the end of the window)
    let old_admin = client(&bundle, Some((&old_admin_cert, &old_admin_key)));
    let r = old_admin.get(&api).send().await.unwrap();
    assert_eq!(r.status(), 200, "old admin certificate during the window");
    let (new_cert, new_key, new_ca_data) = kubeconfig_parts(&k._dir.path().join("admin.kubeconfig"));
    assert_eq!(new_ca_data, bundle, "the admin kubeconfig trusts the bundle");
    assert_eq!(
        kfsec_pki::parse_cert_pem(&new_cert).unwrap().issuer,
        "CN=kfsec internal CA 2"
    );
    let r = client(&new_ca, Some((&new_cert, &new_key)))
        .get(&api)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "new admin certificate");
    // kubectl with the old kubeconfig (old CA data, old client certificate) and the new one.
    let (code, out, err) = Kubectl::with_kubeconfig(&old_kubeconfig)
        .run(&["get", "namespaces", "-o", "name"], None)
        .await;
    assert_eq!(code, 0, "old kubeconfig during the window: {out}{err}");
    let (code, out, err) = Kubectl::new(k._dir.path())
        .run(&["get", "namespaces", "-o", "name"], None)
        .await;
    assert_eq!(code, 0, "new kubeconfig: {out}{err}");
    // The upstream that trusts only the old CA accepts the gateway's new workload certificate,
    // and the gateway still accepts the upstream's old-CA certificate.
    let r = b.get("/secure/x").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "client=gateway");
    // openssl agrees: the served chain verifies against either CA alone.
    let (old_file, new_file) = (work.path().join("old.pem"), work.path().join("new.pem"));
    std::fs::write(&old_file, &old_ca).unwrap();
    std::fs::write(&new_file, &new_ca).unwrap();
    for chain in [
        pki.join("frontdoor.crt"),
        pki.join("webhooks/poddefaults-webhook-service.crt"),
    ] {
        for ca in [&old_file, &new_file] {
            let (verified, out) = openssl_verify(ca, &chain);
            assert!(
                verified,
                "openssl verify {} with {}: {out}",
                chain.display(),
                ca.display()
            );
        }
    }
    // The printed webhook caBundle carries both CAs.
    let manifests =
        kfsec_server::webhook_manifests(&base64::engine::general_purpose::STANDARD.encode(&bundle), "kubeflow");
    assert!(manifests.contains(&base64::engine::general_purpose::STANDARD.encode(&bundle)));
    // A second rotation waits for the window.
    let refused = kfsec_server::admin::call(
        k._dir.path(),
        &AdminRequest::CaRotate {
            window_seconds: Some(60),
        },
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        matches!(&refused, AdminResponse::Error { message } if message.contains("in progress")),
        "{refused:?}"
    );

    // End of the window: only the new CA is trusted.
    let status = rotate(&k, None).await;
    assert_eq!(status.previous, None);
    let bundle = std::fs::read_to_string(kfsec_pki::bundle_path(&pki)).unwrap();
    assert_eq!(bundle, new_ca);
    for f in ["ca-previous.crt", "ca-cross.crt", "ca-rotation.json"] {
        assert!(!pki.join(f).exists(), "{f} removed");
    }
    let r = client(&old_ca, None)
        .get(format!("{}/dex/healthz", k.base))
        .send()
        .await;
    assert!(r.is_err(), "a client trusting only the old CA is refused now");
    let r = client(&new_ca, None)
        .get(format!("{}/dex/healthz", k.base))
        .send()
        .await;
    assert_eq!(r.unwrap().status(), 200);
    let r = client(&new_ca, Some((&old_admin_cert, &old_admin_key)))
        .get(&api)
        .send()
        .await;
    assert!(
        r.is_err() || r.is_ok_and(|r| r.status() == 401),
        "the old admin certificate no longer authenticates"
    );
    // nor on a connection it opened during the window: that connection was closed when the
    // old CA left the trust, and the new handshake refuses the certificate
    let r = old_admin.get(&api).send().await;
    assert!(
        r.is_err() || r.is_ok_and(|r| r.status() == 401),
        "a kept-alive connection of the old admin certificate is cut at the end of the window"
    );
    let (code, _, _) = Kubectl::with_kubeconfig(&old_kubeconfig)
        .run(&["get", "namespaces", "-o", "name"], None)
        .await;
    assert_ne!(code, 0, "the old kubeconfig stops working after the window");
    let (code, out, err) = Kubectl::new(k._dir.path())
        .run(&["get", "namespaces", "-o", "name"], None)
        .await;
    assert_eq!(code, 0, "the rewritten admin kubeconfig works: {out}{err}");
    let r = b.get("/secure/x").await;
    assert_eq!(r.status(), 502, "an upstream with an old-CA certificate is refused");
    let (verified, _) = openssl_verify(&old_file, &pki.join("frontdoor.crt"));
    assert!(!verified, "the final chain does not verify against the old CA");
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_window_ends_by_itself_and_offline_rotation_applies_at_start() {
    // Default leaf lifetime: the PKI loop's regular pass is once a minute, yet the window ends on
    // time.
    let k = Kfsec::start("").await;
    let pki = k._dir.path().join("pki");
    let gen1 = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    rotate(&k, Some(2)).await;
    let gen2 = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pki.join("ca-previous.crt").exists() {
        assert!(tokio::time::Instant::now() < deadline, "the window did not end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give the loop the moment it needs to re-issue and swap the chains in (about a second for
    // all of them on a loaded machine).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client(&gen1, None)
        .get(format!("{}/dex/healthz", k.base))
        .send()
        .await
        .is_ok()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first CA is no longer trusted after the window"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client(&gen2, None).get(format!("{}/dex/healthz", k.base)).send().await;
    assert_eq!(r.unwrap().status(), 200);

    // Rotated while no server runs (the CLI's path): the next start re-issues everything.
    let dir = k.stop().await;
    let status =
        kfsec_server::trust::rotate_offline(&pki, Some(Duration::from_secs(3600)), &kfsec_types::SystemClock).unwrap();
    assert_eq!(status.current, "CN=kfsec internal CA 3");
    let k = Kfsec::start_in(dir, "").await;
    let bundle = std::fs::read_to_string(kfsec_pki::bundle_path(&pki)).unwrap();
    assert_eq!(k.running.ca_pem, bundle);
    assert_eq!(
        served_issuer(&bundle, k.running.https_addr, "localhost").await,
        "CN=kfsec internal CA 3"
    );
    let r = client(&gen2, None).get(format!("{}/dex/healthz", k.base)).send().await;
    assert_eq!(
        r.unwrap().status(),
        200,
        "clients of generation 2 still verify through the cross certificate"
    );
    k.running.shutdown().await;
}

/// A tunnel opened with a client certificate lives while the trust it was verified under
/// stands: the start of a CA rotation (which closes such connections, so that their next
/// handshake is checked again) closes it too, however busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_tunnel_closes_when_the_trust_is_replaced() {
    use crate::proxying::{ask_websocket, closes, echoes, websocket_echo};
    let ws = websocket_echo().await;
    let k = Kfsec::start(&format!("- prefix: /notebook/\n  upstream: http://{ws}\n")).await;
    let (cert, key, _) = kubeconfig_parts(&k._dir.path().join("admin.kubeconfig"));
    let mut cfg = kfsec_pki::client_config_with_identity(&k.running.ca_pem, &cert, &key).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(k.running.https_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let head = ask_websocket(&mut s, "/notebook/api/kernels/1/channels", "").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let user = head
        .lines()
        .find_map(|l| l.strip_prefix("x-user: "))
        .unwrap_or("")
        .trim();
    assert!(!user.is_empty(), "the upstream saw no user: {head}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(echoes(&mut s).await, "closed before the trust changed");
    rotate(&k, Some(3600)).await;
    assert!(
        closes(&mut s, Duration::from_secs(5)).await,
        "the certificate's tunnel outlived its trust"
    );
    k.running.shutdown().await;
}

/// Sends `GET path` on the kept-alive connection `s` and reads the whole answer (its body by
/// `Content-Length`); returns the status.
async fn get_on(s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let head = crate::proxying::read_head(s).await;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap_or_else(|| panic!("no content-length: {head}"))
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.unwrap();
    head[9..12].parse().unwrap()
}

/// A client certificate authenticates until its notAfter, also on a connection (or a tunnel)
/// opened while it was valid: rustls checks the validity at the handshake only, so a kept-alive
/// connection's requests from then on are 401 and its tunnels end within a tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_ends_at_its_not_after_on_open_connections_too() {
    use crate::proxying::{ask_websocket, closes, echoes, websocket_echo};
    let ws = websocket_echo().await;
    let k = Kfsec::start_with_clock(&format!("- prefix: /notebook/\n  upstream: http://{ws}\n")).await;
    let clock = k.clock.clone().unwrap();
    let (cert, key, _) = kubeconfig_parts(&k._dir.path().join("admin.kubeconfig"));
    let not_after = kfsec_pki::parse_cert_pem(&cert).unwrap().not_after;
    let mut cfg = kfsec_pki::client_config_with_identity(&k.running.ca_pem, &cert, &key).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let cfg = Arc::new(cfg);
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(k.running.https_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(name, tcp)
            .await
            .unwrap()
    };
    let mut tunnel = connect().await;
    let head = ask_websocket(&mut tunnel, "/notebook/api/kernels/1/channels", "").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let mut api = connect().await;
    assert_eq!(get_on(&mut api, "/api/v1/namespaces").await, 200);

    // A minute before notAfter: all holds.
    clock.set(kfsec_types::UnixTime::from_secs(not_after.as_secs() - 60));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        echoes(&mut tunnel).await,
        "the tunnel closed before the certificate expired"
    );
    assert_eq!(get_on(&mut api, "/api/v1/namespaces").await, 200);

    // At notAfter: refused on the open connection, and the tunnel ends.
    clock.set(not_after);
    assert_eq!(get_on(&mut api, "/api/v1/namespaces").await, 401);
    assert!(
        closes(&mut tunnel, Duration::from_secs(5)).await,
        "the tunnel outlived its certificate"
    );
    k.running.shutdown().await;
}
