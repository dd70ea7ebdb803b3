//! Proxying details: WebSocket upgrades pass through (each keeping its request's place under its
//! client's caps, also behind a trusted proxy, closed when quiet or when the session that
//! opened it ends), request bodies stream to the upstream,
//! and a user-supplied certificate is re-read without a restart or dropped connections.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;
use kfsec_types::Clock as _;

/// An upstream that answers any request with 101 and then echoes bytes.
pub(crate) async fn websocket_echo() -> std::net::SocketAddr {
    websocket_upstream(false).await
}

/// An upstream that answers any request with 101 and then echoes bytes until the client's end
/// of stream — after which, if `deaf`, it keeps the connection open and silent, ignoring it.
async fn websocket_upstream(deaf: bool) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let user = head
                    .lines()
                    .find_map(|l| l.strip_prefix("kubeflow-userid: "))
                    .unwrap_or("")
                    .to_owned();
                s.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nx-user: {user}\r\n\r\n").as_bytes()).await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                if deaf {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            });
        }
    });
    addr
}

/// Logs `USER` in through a browser client: the login's final status, the session cookie's
/// value, and a fresh raw TLS connection to the front door to send requests by hand.
async fn logged_in_connection(k: &Kfsec) -> (reqwest::StatusCode, String, tokio_rustls::client::TlsStream<TcpStream>) {
    let mut b = k.client();
    let (r, _) = b.login("/", USER, PASSWORD).await;
    let cookie = b.cookies["authservice_session"].clone();
    (r.status(), cookie, tls_connect(k).await)
}

async fn tls_connect(k: &Kfsec) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut cfg = kfsec_pki::client_config_trusting(&k.running.ca_pem).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(k.running.https_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn websocket_upgrades_pass_through_with_identity() {
    let ws = websocket_echo().await;
    // appended to the base config's `routes:` list
    let k = Kfsec::start(&format!("- prefix: /notebook/\n  upstream: http://{ws}\n")).await;
    let (status, cookie, mut s) = logged_in_connection(&k).await;
    assert_eq!(status, 200);
    let head = ask_websocket(
        &mut s,
        "/notebook/api/kernels/1/channels",
        &format!("kubeflow-userid: forged@evil\r\nCookie: authservice_session={cookie}\r\n"),
    )
    .await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains(&format!("x-user: {USER}")),
        "upstream saw the real user: {head}"
    );
    for msg in [&b"ping"[..], &b"a longer frame of bytes"[..]] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    k.running.shutdown().await;
}

/// Asks for a WebSocket at `path` over `s`, with `headers` (lines ending in CRLF): the answer's
/// head, lowercase.
pub(crate) async fn ask_websocket(
    s: &mut tokio_rustls::client::TlsStream<TcpStream>,
    path: &str,
    headers: &str,
) -> String {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    read_head(s).await
}

/// Reads an answer's head from `s` (to its blank line, nothing more), lowercase.
pub(crate) async fn read_head(s: &mut tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_lowercase()
}

/// Asks for a WebSocket at `path` on a new connection, as a proxy would for the client `client`:
/// the answer's status and the connection.
async fn tunnel_for(k: &Kfsec, path: &str, client: &str) -> (u16, tokio_rustls::client::TlsStream<TcpStream>) {
    let mut s = tls_connect(k).await;
    let head = ask_websocket(&mut s, path, &format!("X-Forwarded-For: {client}\r\n")).await;
    (head[9..12].parse().unwrap(), s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_one_clients_tunnels_cannot_take_its_connections() {
    let ws = websocket_echo().await;
    // 127.0.0.1 is the trusted proxy; two connections and four requests in flight per address
    let k = Kfsec::start(&format!(
        "- prefix: /notebook/\n  upstream: http://{ws}\n  public: true\n\
         trustedProxies: [127.0.0.1]\n\
         frontDoor:\n  maxConnections: 100\n  maxConnectionsPerAddress: 2\n"
    ))
    .await;
    let (greedy, ws_path) = ("203.0.113.50, 198.51.100.7", "/notebook/api/kernels/1/channels");
    let mut held = Vec::new();
    for i in 0..4 {
        let (status, s) = tunnel_for(&k, ws_path, greedy).await;
        assert_eq!(status, 101, "tunnel {i}");
        held.push(s);
    }
    // Each tunnel keeps its request's place: the client's fifth is refused. The proxy's
    // connections are not its address's, so other clients' tunnels still open (this is the
    // proxy's sixth connection, over a cap of two per address).
    let (fifth, _) = tunnel_for(&k, ws_path, greedy).await;
    assert_eq!(fifth, 503, "a fifth tunnel of one client");
    let (other, mut b) = tunnel_for(&k, ws_path, "192.0.2.1").await;
    assert_eq!(other, 101, "another client's tunnel");
    b.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), b.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping");
    assert_eq!(
        metric(
            &k,
            "kfsec_listener_connections_refused_total{listener=\"front-door\",reason=\"max_requests_per_address\"}"
        )
        .await,
        1.0
    );
    // An upgrade that does not become a tunnel gives its place back at once: answered by the
    // upstream (200), refused before it (a route that needs a session), or by a missing one.
    for path in ["/open/ws", "/app/ws", "/nowhere/ws"] {
        for i in 0..6 {
            let (status, _) = tunnel_for(&k, path, "192.0.2.9").await;
            assert_ne!(status, 503, "{path}, upgrade {i}: an earlier one kept its place");
            assert_ne!(status, 101, "{path}");
        }
    }
    // A tunnel that closes gives its place back.
    let mut first = held.remove(0);
    first.shutdown().await.unwrap();
    drop(first);
    let mut tries = 0;
    while tunnel_for(&k, ws_path, greedy).await.0 != 101 {
        tries += 1;
        assert!(tries < 100, "the closed tunnel kept its place");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    k.running.shutdown().await;
}

/// A tunnel through which nothing moved for `frontDoor.tunnelIdleTimeout` is closed, also when
/// its upstream ignores the client's end of stream (before, it stayed open for good, holding
/// its request's place and both connections); bytes either way keep it open.
#[tokio::test]
#[allow(clippy::disallowed_methods)] // measures how long a real network wait takes (the bound under test)
async fn a_quiet_tunnel_is_closed_even_when_its_upstream_ignores_the_clients_end() {
    let ws = websocket_upstream(true).await;
    let k = Kfsec::start(&format!(
        "- prefix: /notebook/\n  upstream: http://{ws}\n  public: true\n\
         frontDoor:\n  tunnelIdleTimeout: 1s\n"
    ))
    .await;
    let mut s = tls_connect(&k).await;
    let head = ask_websocket(&mut s, "/notebook/api/kernels/1/channels", "").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // A message every 400 ms for twice the limit: still open.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await;
        assert!(matches!(read, Ok(Ok(_))), "message {i}: {read:?}");
        assert_eq!(&back, b"ping");
    }
    // The client ends its side; the upstream ignores that and stays silent: the tunnel is
    // closed (with TLS close_notify) about one limit later.
    s.shutdown().await.unwrap();
    let ended = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "the tunnel was not closed: {read:?}");
    assert!(
        ended.elapsed() >= Duration::from_millis(500),
        "closed early: {:?}",
        ended.elapsed()
    );
    k.running.shutdown().await;
}

/// Whether the tunnel `s` still echoes.
pub(crate) async fn echoes(s: &mut tokio_rustls::client::TlsStream<TcpStream>) -> bool {
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut back = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await,
        Ok(Ok(_)) if &back == b"ping"
    )
}

/// Whether the tunnel `s` is closed (its end read) within `within`.
pub(crate) async fn closes(s: &mut tokio_rustls::client::TlsStream<TcpStream>, within: Duration) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut rest)).await.is_ok()
}

/// "Log out everywhere" for [`USER`] (the admin call: every session and token voided).
async fn log_out_everywhere(k: &Kfsec) {
    let all = kfsec_server::admin::AdminRequest::UserLogoutAll { email: USER.into() };
    assert!(matches!(admin(k, &all).await, kfsec_server::admin::AdminResponse::Ok));
}

/// A tunnel lives while the credential that opened it holds: a logout of its session closes
/// it — and not another session's tunnel — within seconds, however busy it is, and so does
/// "log out everywhere" (a revocation) for every tunnel of the user.
#[tokio::test]
async fn a_tunnel_ends_with_the_session_that_opened_it() {
    let ws = websocket_echo().await;
    let k = Kfsec::start(&format!("- prefix: /notebook/\n  upstream: http://{ws}\n")).await;
    let path = "/notebook/api/kernels/1/channels";
    let (_, first, mut a) = logged_in_connection(&k).await;
    let (_, second, mut b) = logged_in_connection(&k).await;
    for (s, cookie) in [(&mut a, &first), (&mut b, &second)] {
        let head = ask_websocket(s, path, &format!("Cookie: authservice_session={cookie}\r\n")).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
    }
    assert!(echoes(&mut a).await && echoes(&mut b).await);
    let r = http_client(&k.running.ca_pem)
        .post(format!("{}/authservice/logout", k.base))
        .header("cookie", format!("authservice_session={first}"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(
        closes(&mut a, Duration::from_secs(5)).await,
        "the logged-out session's tunnel is open"
    );
    assert!(echoes(&mut b).await, "another session's tunnel was closed");
    log_out_everywhere(&k).await;
    assert!(
        closes(&mut b, Duration::from_secs(5)).await,
        "a revoked user's tunnel is open"
    );
    k.running.shutdown().await;
}

/// A tunnel opened with a bearer ID token is checked again every 30 s (each a signature
/// check), and closed once a refusal is confirmed at the next tick: here after "log out
/// everywhere", which voids the user's tokens.
#[tokio::test]
async fn a_bearer_tunnel_ends_when_its_token_is_voided() {
    let ws = websocket_echo().await;
    let k = Kfsec::start_with_clock(&format!(
        "- prefix: /notebook/\n  upstream: http://{ws}\n\
         bearerAudiences: [rp-test]\noauth2:\n  passwordConnector: local\n"
    ))
    .await;
    let clock = k.clock.clone().unwrap();
    let token = password_id_token(&k, USER, PASSWORD).await;
    let mut s = tls_connect(&k).await;
    let head = ask_websocket(
        &mut s,
        "/notebook/api/kernels/1/channels",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(echoes(&mut s).await);
    // (the voiding epoch is later than the token's issue)
    clock.advance(Duration::from_secs(1));
    log_out_everywhere(&k).await;
    // Between two checks it is not asked again; at the next one it closes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(echoes(&mut s).await, "closed before its check was due");
    clock.advance(Duration::from_secs(31));
    assert!(
        closes(&mut s, Duration::from_secs(5)).await,
        "the voided token's tunnel is open"
    );
    k.running.shutdown().await;
}

/// A tunnel ends within a tick of its credential's own end — the session's expiry, the bearer
/// token's `exp` — not at the next full check up to 30 s later: each case is brought to 5 s
/// before the end by a full check, then just past it.
#[tokio::test]
async fn a_tunnel_ends_when_its_credential_expires() {
    let ws = websocket_echo().await;
    let k = Kfsec::start_with_clock(&format!(
        "- prefix: /notebook/\n  upstream: http://{ws}\n\
         bearerAudiences: [rp-test]\noauth2:\n  passwordConnector: local\nsession:\n  ttl: 1h\n"
    ))
    .await;
    let clock = k.clock.clone().unwrap();
    let path = "/notebook/api/kernels/1/channels";
    let token = password_id_token(&k, USER, PASSWORD).await;
    let exp = jwt_claims(&token)["exp"].as_u64().unwrap();
    let (_, cookie, mut by_session) = logged_in_connection(&k).await;
    let session_ends = clock.now().as_secs() + 3600;
    let mut by_token = tls_connect(&k).await;
    for (s, credential) in [
        (&mut by_session, format!("Cookie: authservice_session={cookie}\r\n")),
        (&mut by_token, format!("Authorization: Bearer {token}\r\n")),
    ] {
        let head = ask_websocket(s, path, &credential).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
    }
    assert!(session_ends < exp, "the session ends first (ID tokens live 24 h)");
    let to = |end: u64| clock.advance(Duration::from_secs(end - clock.now().as_secs()));
    to(session_ends - 5);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(echoes(&mut by_session).await, "closed before the session ended");
    to(session_ends + 1);
    assert!(
        closes(&mut by_session, Duration::from_secs(3)).await,
        "the expired session's tunnel is open"
    );
    assert!(
        echoes(&mut by_token).await,
        "the token's tunnel closed with the session"
    );
    to(exp - 5);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(echoes(&mut by_token).await, "closed before the token expired");
    to(exp + 1);
    assert!(
        closes(&mut by_token, Duration::from_secs(3)).await,
        "the expired token's tunnel is open"
    );
    k.running.shutdown().await;
}

#[tokio::test]
async fn request_bodies_stream_to_the_upstream() {
    let k = Kfsec::start("").await;
    let mut b = k.client();
    b.login("/", USER, PASSWORD).await;
    let body = vec![b'z'; 8 * 1024 * 1024];
    let r = b.send(b.http.post(b.url("/app/upload")).body(body)).await;
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["headers"]["content-length"], "8388608");
    assert_eq!(seen["body_bytes"], 8388608, "the whole body reached the upstream");
    k.running.shutdown().await;
}

#[tokio::test]
async fn a_request_body_that_breaks_off_malformed_is_refused_400_not_502() {
    let k = Kfsec::start("").await;
    let (_, cookie, mut s) = logged_in_connection(&k).await;
    let req = format!(
        "POST /app/upload HTTP/1.1\r\nHost: localhost\r\nCookie: authservice_session={cookie}\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\nzz\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Malformed request body."), "{answer}");
    k.running.shutdown().await;
}

#[tokio::test]
async fn user_certificate_is_reloaded_without_dropping_connections() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = user_pair(pki.path());
    let issue = |cn: &str| issue_localhost(&ca, cn);
    let mut k = Kfsec::start(&format!(
        "tls:\n  certFile: {}\n  keyFile: {}\n",
        cert.display(),
        key.display()
    ))
    .await;
    let subject = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        kfsec_pki::parse_cert_pem(&pem(der.as_ref())).unwrap().subject
    };
    k.running.ca_pem = ca.cert_pem().to_owned();
    let mut old = tls_connect(&k).await;
    assert!(subject(&old).contains("first"));
    // an HTTP/1.1 request on the old connection, kept open
    old.write_all(b"GET /dex/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = old.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    let second = issue("second");
    std::fs::write(&key, &second.key_pem).unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    let mut seen = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if subject(&tls_connect(&k).await).contains("second") {
            seen = true;
            break;
        }
    }
    assert!(seen, "new handshakes use the new certificate");
    // the old connection still works
    old.write_all(b"GET /dex/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let n = old.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    k.running.shutdown().await;
}

/// A user-supplied front-door pair: a CA in `dir`, and a `localhost` certificate it issued to
/// `first` written to `dir/tls.crt` and `dir/tls.key` (returned with the CA).
pub(crate) fn user_pair(
    dir: &std::path::Path,
) -> (kfsec_pki::CertificateAuthority, std::path::PathBuf, std::path::PathBuf) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca = kfsec_pki::CertificateAuthority::load_or_create(
        dir,
        kfsec_pki::KeyAlgorithm::EcdsaP256,
        &kfsec_types::SystemClock,
    )
    .unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let first = issue_localhost(&ca, "first");
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    (ca, cert, key)
}

/// A `localhost` server certificate for `cn` from `ca`, valid an hour.
pub(crate) fn issue_localhost(ca: &kfsec_pki::CertificateAuthority, cn: &str) -> kfsec_pki::IssuedCert {
    ca.issue_server(
        cn,
        &["localhost".into()],
        &[],
        Duration::from_secs(3600),
        &kfsec_types::SystemClock,
    )
    .unwrap()
}

pub fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// A TLS upstream that requires a client certificate from `client_ca` and answers with the
/// client certificate's subject.
pub async fn tls_upstream(listener: TcpListener, cert: kfsec_pki::IssuedCert, client_ca: String) {
    let resolver = kfsec_pki::ReloadingResolver::from_pem(&cert.cert_pem, &cert.key_pem).unwrap();
    let cfg = kfsec_pki::server_config_with_client_auth(resolver, false, &client_ca, kfsec_pki::ClientAuth::Required)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else { return };
                let leaf = s.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
                let subject = leaf
                    .as_ref()
                    .and_then(|d| kfsec_pki::client_identity(d.as_ref()).ok())
                    .map(|c| c.user)
                    .unwrap_or_default();
                let serial = leaf
                    .and_then(|d| kfsec_pki::parse_cert_pem(&pem(d.as_ref())).ok())
                    .map(|i| i.serial_hex)
                    .unwrap_or_default();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let body = format!("client={subject}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Client-Serial: {serial}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_routes_verify_both_sides() {
    let trusted = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let foreign = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (pa, pb) = (
        trusted.local_addr().unwrap().port(),
        foreign.local_addr().unwrap().port(),
    );
    let k = Kfsec::start(&format!(
        "- prefix: /secure/\n  upstream: https://127.0.0.1:{pa}\n  tls: {{mode: mutual, serverName: upstream-a}}\n\
         - prefix: /foreign/\n  upstream: https://127.0.0.1:{pb}\n  tls: {{mode: mutual, serverName: upstream-b}}\n"
    ))
    .await;
    let clock = kfsec_types::SystemClock;
    let hour = Duration::from_secs(3600);
    // upstream A: a certificate from kfsec's own CA; upstream B: a foreign self-made CA
    let ca = kfsec_pki::CertificateAuthority::load_or_create(
        &k._dir.path().join("pki"),
        kfsec_pki::KeyAlgorithm::Rsa2048,
        &clock,
    )
    .unwrap();
    upstream_a(trusted, &k._dir.path().join("pki")).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other =
        kfsec_pki::CertificateAuthority::load_or_create(other_dir.path(), kfsec_pki::KeyAlgorithm::EcdsaP256, &clock)
            .unwrap();
    let b = other
        .issue_server("upstream-b", &["upstream-b".into()], &[], hour, &clock)
        .unwrap();
    tls_upstream(foreign, b, ca.cert_pem().to_owned()).await;

    let mut br = k.client();
    assert_eq!(br.login("/", USER, PASSWORD).await.0.status(), 200);
    let r = br.get("/secure/x").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "client=gateway",
        "the gateway presented its workload certificate"
    );
    let r = br.get("/foreign/x").await;
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    // the reason goes to kfsec's log, never to the client
    assert!(body.contains("The upstream service is unavailable."), "{body}");
    assert!(!body.contains("TLS") && !body.contains("certificate"), "{body}");

    // a client without a certificate is refused by the mutual-TLS upstream
    let mut cfg = kfsec_pki::client_config_trusting(ca.cert_pem()).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", pa)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("upstream-a").unwrap();
    let refused = match tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await {
        Err(_) => true,
        Ok(mut s) => {
            // TLS 1.3 reports the missing certificate after the handshake, on first use
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
            let mut buf = [0u8; 64];
            !matches!(s.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "no client certificate, no service");
    k.running.shutdown().await;
}

/// The certificate a fresh TLS connection to `addr` (SNI `name`) is served, verified against
/// `ca_pem`.
pub async fn served_cert(ca_pem: &str, addr: std::net::SocketAddr, name: &'static str) -> kfsec_pki::CertInfo {
    let mut cfg = kfsec_pki::client_config_trusting(ca_pem).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from(name).unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(sni, tcp)
        .await
        .unwrap();
    let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    kfsec_pki::parse_cert_pem(&pem(der.as_ref())).unwrap()
}

/// Serves [`tls_upstream`] `upstream-a` on `listener` with a workload certificate from the
/// signing CA in `pki`, trusting only that CA for client certificates.
pub async fn upstream_a(listener: TcpListener, pki: &std::path::Path) {
    let clock = kfsec_types::SystemClock;
    let cas = kfsec_pki::CaSet::load_or_create(pki, kfsec_pki::KeyAlgorithm::Rsa2048, &clock).unwrap();
    let cert = cas
        .current()
        .issue_workload(
            "cluster.local",
            "apps",
            "upstream-a",
            &["upstream-a".into()],
            Duration::from_secs(3600),
            &clock,
        )
        .unwrap();
    tls_upstream(listener, cert, cas.current().cert_pem().to_owned()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_under_load_with_zero_failed_requests() {
    // 9 s certificates: renewed when 3 s remain, checked every 1.5 s. A mutual-TLS route shows
    // the gateway's own workload certificate renewing too.
    let upstream_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream_l.local_addr().unwrap().port();
    let k = Kfsec::start(&format!(
        "- prefix: /secure/\n  upstream: https://127.0.0.1:{port}\n  tls: {{mode: mutual, serverName: upstream-a}}\n\
         pki:\n  leafLifetime: 9s\n"
    ))
    .await;
    upstream_a(upstream_l, &k._dir.path().join("pki")).await;
    let mut b = k.client();
    assert_eq!(b.login("/", USER, PASSWORD).await.0.status(), 200);
    let cookie = format!("authservice_session={}", b.cookies["authservice_session"]);
    let (front, hooks) = (k.running.https_addr, k.running.webhook_addr);
    let mut front_serials = std::collections::BTreeSet::new();
    let mut hook_serials = std::collections::BTreeSet::new();
    let mut gateway_serials = std::collections::BTreeSet::new();
    let (mut ok, mut failed) = (0u32, 0u32);
    let keep_alive = http_client(&k.running.ca_pem);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(14);
    while tokio::time::Instant::now() < deadline {
        // a kept-alive connection and a brand-new one, both carrying a real session, to a plain
        // and to a mutual-TLS upstream
        for client in [keep_alive.clone(), http_client(&k.running.ca_pem)] {
            for path in ["/app/load", "/secure/load"] {
                match client
                    .get(format!("{}{path}", k.base))
                    .header("cookie", &cookie)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        ok += 1;
                        if let Some(serial) = r.headers().get("x-client-serial").and_then(|v| v.to_str().ok()) {
                            gateway_serials.insert(serial.to_owned());
                        }
                    }
                    other => {
                        failed += 1;
                        eprintln!("failed request: {other:?}");
                    }
                }
            }
        }
        let hook = "poddefaults-webhook-service.kubeflow.svc";
        front_serials.insert(served_cert(&k.running.ca_pem, front, "localhost").await.serial_hex);
        hook_serials.insert(served_cert(&k.running.ca_pem, hooks, hook).await.serial_hex);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failed, 0, "{ok} ok, {failed} failed");
    assert!(ok > 50, "the load ran ({ok} requests)");
    assert!(
        front_serials.len() >= 2,
        "the front-door certificate was renewed: {front_serials:?}"
    );
    assert!(
        hook_serials.len() >= 2,
        "the webhook certificate was renewed: {hook_serials:?}"
    );
    assert!(
        gateway_serials.len() >= 2,
        "the upstream saw the gateway's renewed workload certificate: {gateway_serials:?}"
    );
    k.running.shutdown().await;
}
