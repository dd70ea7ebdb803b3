//! Security regression suite, headers at the front door: identity headers cannot be forged in
//! any spelling (dash, underscore, case, `Connection`-named, duplicated, HTTP/2) on protected and
//! public routes, as seen by a real WSGI upstream and by a raw-socket upstream recording exact
//! bytes; forwarding headers come from kfsec, not the client; `Authorization` reaches only routes
//! that opt in; look-alikes of framing headers (`Content_Length`) never reach an upstream; every
//! response carries kfsec's HSTS and `nosniff`, and no upstream's answer sets kfsec's cookies or
//! clears the site; upstream failures and malformed
//! bodies are answered without internal detail.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// Request heads a raw upstream received, byte for byte (as text).
pub type Seen = Arc<Mutex<Vec<String>>>;

/// A raw-socket upstream: records each request head exactly as received, reads the body to its
/// end (sized or chunked), and answers 200 with `respond(request line)` as the body.
pub async fn raw_upstream(respond: fn(&str) -> String) -> (SocketAddr, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                seen.lock().unwrap().push(head.clone());
                let lower = head.to_ascii_lowercase();
                let length = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                let chunked = lower.contains("transfer-encoding: chunked");
                loop {
                    let body = &buf[head_end..];
                    let done = match length {
                        Some(n) => body.len() >= n,
                        None => !chunked || body.windows(5).any(|w| w == b"0\r\n\r\n"),
                    };
                    if done {
                        break;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let line = head.lines().next().unwrap_or_default().to_owned();
                let body = respond(&line);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, out)
}

/// A TLS connection to the front door offering `alpn`.
pub async fn tls_to(k: &Kfsec, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut cfg = kfsec_pki::client_config_trusting(&k.running.ca_pem).unwrap();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(k.running.https_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// One HTTP/1.1 request written byte for byte (`Host` and `Connection: close` are added, then
/// `body`); returns the status and the whole response text.
pub async fn h1(k: &Kfsec, request_line: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut s = tls_to(k, b"http/1.1").await;
    let mut req = format!("{request_line}\r\nHost: localhost\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the front door answered");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

/// One HTTP/2 request with `path` as `:path`, byte for byte; returns status, headers and body.
pub async fn h2(k: &Kfsec, path: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
    let s = tls_to(k, b"h2").await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder().uri(format!("https://localhost{path}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

const WSGI: &str = r#"
import json, sys
from wsgiref.simple_server import make_server, WSGIRequestHandler
class Quiet(WSGIRequestHandler):
    def log_message(self, *a): pass
def app(environ, start):
    seen = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
    body = json.dumps(seen).encode()
    start("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
srv = make_server("127.0.0.1", 0, app, handler_class=Quiet)
print(srv.server_port, flush=True)
srv.serve_forever()
"#;

/// A real WSGI server (Python's wsgiref) answering with the `HTTP_*` environ it built.
async fn wsgi_upstream(dir: &std::path::Path) -> (SocketAddr, tokio::process::Child) {
    use tokio::io::AsyncBufReadExt;
    let script = dir.join("wsgi_env.py");
    std::fs::write(&script, WSGI).unwrap();
    let mut child = tokio::process::Command::new("python3")
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (SocketAddr::from(([127, 0, 0, 1], port)), child)
}

async fn session_cookie(k: &Kfsec) -> String {
    let mut b = k.client();
    let (r, _) = b.login("/", USER, PASSWORD).await;
    assert_eq!(r.status(), 200);
    format!("authservice_session={}", b.cookies["authservice_session"])
}

/// Forged identity in every spelling a proxy or a CGI/WSGI mapping could confuse.
fn forgeries() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        (
            "dash",
            vec![("kubeflow-userid", "FORGED@evil"), ("kubeflow-groups", "FORGED")],
        ),
        (
            "mixed case",
            vec![("Kubeflow-UserID", "FORGED@evil"), ("KUBEFLOW-GROUPS", "FORGED")],
        ),
        (
            "underscore",
            vec![("kubeflow_userid", "FORGED@evil"), ("kubeflow_groups", "FORGED")],
        ),
        (
            "underscore upper",
            vec![("KUBEFLOW_USERID", "FORGED@evil"), ("Kubeflow_Groups", "FORGED")],
        ),
        (
            "mixed separators",
            vec![("kubeflow_userid", "FORGED@evil"), ("kubeflow-userid", "FORGED2@evil")],
        ),
        (
            "duplicated",
            vec![("kubeflow-userid", "FORGED@evil"), ("kubeflow-userid", "FORGED2@evil")],
        ),
        ("other punctuation", vec![("kubeflow.userid", "FORGED@evil")]),
        (
            "connection drops the real one",
            vec![("Connection", "kubeflow-userid, kubeflow-groups")],
        ),
        (
            "connection + underscore",
            vec![
                ("Connection", "kubeflow-userid, kubeflow-groups"),
                ("kubeflow_userid", "FORGED@evil"),
            ],
        ),
        (
            "connection naming the underscore spelling",
            vec![
                ("Connection", "kubeflow_userid, keep-alive"),
                ("kubeflow_userid", "FORGED@evil"),
            ],
        ),
        (
            "other identity names",
            vec![
                ("x-forwarded-user", "FORGED"),
                ("X_Forwarded_Email", "FORGED"),
                ("x-auth-request-user", "FORGED"),
                ("x_auth_request_groups", "FORGED"),
                ("Remote-User", "FORGED"),
                ("remote_user", "FORGED"),
                ("X-Remote-User", "FORGED"),
            ],
        ),
    ]
}

fn check_env(env: &serde_json::Value, logged_in: bool, what: &str) {
    let env = env.as_object().unwrap_or_else(|| panic!("{what}: not JSON: {env}"));
    for (k, v) in env {
        assert!(
            !v.as_str().unwrap_or("").contains("FORGED"),
            "{what}: {k}={v} reached the upstream"
        );
    }
    let user = env.get("HTTP_KUBEFLOW_USERID").and_then(|v| v.as_str());
    let groups = env.get("HTTP_KUBEFLOW_GROUPS").and_then(|v| v.as_str());
    if logged_in {
        assert_eq!(user, Some(USER), "{what}: the upstream must see the real user");
        assert_eq!(groups, Some("team-a"), "{what}: the upstream must see the real groups");
    } else {
        assert_eq!(user, None, "{what}: no identity for an anonymous caller");
        assert_eq!(groups, None, "{what}: no groups for an anonymous caller");
    }
}

#[tokio::test]
async fn identity_headers_cannot_be_forged_at_a_wsgi_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (wsgi, _child) = wsgi_upstream(dir.path()).await;
    let k = Kfsec::start(&format!(
        "- prefix: /wsgi/\n  upstream: http://{wsgi}\n- prefix: /wsgi-open/\n  upstream: http://{wsgi}\n  public: true\n"
    ))
    .await;
    let cookie = session_cookie(&k).await;
    let cases = [("/wsgi/x", true), ("/wsgi-open/x", true), ("/wsgi-open/x", false)];
    for (path, logged_in) in cases {
        for (what, forged) in forgeries() {
            let mut headers = forged.clone();
            if logged_in {
                headers.push(("Cookie", &cookie));
            }
            let what = format!("HTTP/1.1 {path} logged_in={logged_in} {what}");
            let (status, resp) = h1(&k, &format!("GET {path} HTTP/1.1"), &headers, b"").await;
            assert_eq!(status, 200, "{what}: {resp}");
            check_env(&serde_json::from_str(body_of(&resp)).unwrap(), logged_in, &what);
            // HTTP/2 carries lowercase names and no `Connection`
            if forged.iter().any(|(n, _)| n.eq_ignore_ascii_case("connection")) {
                continue;
            }
            let lower: Vec<(String, &str)> = headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), *v)).collect();
            let lower: Vec<(&str, &str)> = lower.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            let (status, _, body) = h2(&k, path, &lower).await;
            let what = what.replace("HTTP/1.1", "HTTP/2");
            assert_eq!(status, 200, "{what}: {body}");
            check_env(&serde_json::from_str(&body).unwrap(), logged_in, &what);
        }
    }
    // malformed spellings are refused outright or arrive clean
    for (name, value) in [
        ("kubeflow-userid", "x\r\n FORGED@evil"),
        ("kubeflow-userid ", "FORGED@evil"),
        ("kubeflow-userid\t", "FORGED@evil"),
        (" kubeflow-userid", "FORGED@evil"),
        ("kubeflow_userid\r\nkubeflow_groups", "FORGED"),
    ] {
        let (status, resp) = h1(&k, "GET /wsgi-open/x HTTP/1.1", &[(name, value)], b"").await;
        if status == 200 {
            check_env(
                &serde_json::from_str(body_of(&resp)).unwrap(),
                false,
                &format!("{name:?}"),
            );
        } else {
            assert_eq!(status, 400, "{name:?}: {resp}");
        }
    }
    k.running.shutdown().await;
}

/// Canonical form of a header name as any CGI-style mapping could read it.
fn canonical(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn header_lines(head: &str) -> Vec<(String, String)> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
        .collect()
}

#[tokio::test]
async fn forwarding_headers_come_from_kfsec_not_the_client() {
    let (raw, seen) = raw_upstream(|_| "ok".into()).await;
    let k = Kfsec::start(&format!(
        "- prefix: /raw/\n  upstream: http://{raw}\n- prefix: /raw-open/\n  upstream: http://{raw}\n  public: true\n\
- prefix: /raw-auth/\n  upstream: http://{raw}\n  forwardAuthorization: true\n\
publicURL: https://kubeflow.example.org\nuserIdHeader: x-goog-authenticated-user-email\nuserIdPrefix: \"accounts.google.com:\"\ngroupsHeader: x-goog-groups\n"
    ))
    .await;
    let cookie = session_cookie(&k).await;
    let spoofed: Vec<(&str, &str)> = vec![
        ("X-Real-IP", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6;host=evil.example"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Prefix", "/evil"),
        ("X_Forwarded_For", "6.6.6.6"),
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("X-Auth-Request-Email", "FORGED"),
        ("Remote-User", "FORGED"),
        ("x_goog_authenticated_user_email", "FORGED"),
        ("X-Goog-Authenticated-User-Email", "FORGED"),
        ("x-goog-groups", "FORGED"),
        ("Connection", "x-goog-groups, x-forwarded-host"),
        ("kubeflow-userid", "FORGED"),
    ];
    let reserved = [
        "x-real-ip",
        "forwarded",
        "x-original-url",
        "x-rewrite-url",
        "x-auth-request-email",
        "remote-user",
        "kubeflow-userid",
        "x-forwarded-prefix",
        "authorization",
    ];
    for (path, logged_in) in [("/raw/a", true), ("/raw-open/a", true), ("/raw-open/a", false)] {
        let mut headers = spoofed.clone();
        if logged_in {
            headers.push(("Cookie", &cookie));
        }
        headers.push(("Authorization", "Basic dXNlcjpwYXNz"));
        seen.lock().unwrap().clear();
        let (status, resp) = h1(&k, &format!("GET {path} HTTP/1.1"), &headers, b"").await;
        assert_eq!(status, 200, "{path}: {resp}");
        let head = seen.lock().unwrap().pop().unwrap();
        let lines = header_lines(&head);
        let all = |name: &str| -> Vec<&str> {
            lines
                .iter()
                .filter(|(n, _)| canonical(n) == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        for name in reserved {
            assert!(all(name).is_empty(), "{path}: {name} reached the upstream:\n{head}");
        }
        assert_eq!(all("x-forwarded-for"), ["127.0.0.1"], "{path}:\n{head}");
        assert_eq!(all("x-forwarded-host"), ["kubeflow.example.org"], "{path}:\n{head}");
        assert_eq!(all("x-forwarded-proto"), ["https"], "{path}:\n{head}");
        if logged_in {
            assert_eq!(
                all("x-goog-authenticated-user-email"),
                [format!("accounts.google.com:{USER}").as_str()],
                "{path}:\n{head}"
            );
            assert_eq!(all("x-goog-groups"), ["team-a"], "{path}:\n{head}");
        } else {
            assert!(all("x-goog-authenticated-user-email").is_empty(), "{path}:\n{head}");
            assert!(all("x-goog-groups").is_empty(), "{path}:\n{head}");
        }
        assert!(
            !head.contains("FORGED") && !head.contains("6.6.6.6") && !head.contains("evil"),
            "{head}"
        );
    }
    // HTTP/2 too
    seen.lock().unwrap().clear();
    let (status, _, _) = h2(
        &k,
        "/raw-open/b",
        &[
            ("x_goog_authenticated_user_email", "FORGED"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("authorization", "Basic dXNlcjpwYXNz"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let head = seen.lock().unwrap().pop().unwrap();
    assert!(!head.contains("FORGED") && !head.contains("6.6.6.6"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("authorization"), "{head}");
    // a route that opts in receives `Authorization` (a bearer token authenticates the caller)
    let token = k
        .running
        .idp
        .keys()
        .keys()
        .signing
        .sign(&test_claims(&k, &k.running.issuer, "kfsec-gatekeeper", 600))
        .unwrap();
    let bearer = format!("Bearer {token}");
    for (path, forwarded) in [("/raw-auth/x", true), ("/raw/x", false)] {
        seen.lock().unwrap().clear();
        let (status, resp) = h1(&k, &format!("GET {path} HTTP/1.1"), &[("Authorization", &bearer)], b"").await;
        assert_eq!(status, 200, "{path}: {resp}");
        let head = seen.lock().unwrap().pop().unwrap();
        assert_eq!(head.contains(&bearer), forwarded, "{path}:\n{head}");
    }
    k.running.shutdown().await;
}

/// Names that read, the CGI way, as a framing or hop-by-hop header but are spelled otherwise
/// never reach an upstream (one that read them as the real names could frame a request other
/// than kfsec did, on a connection other users' requests share), on the lean `GET` path, a
/// `POST` with a body (hyper's path) and HTTP/2; other names with `_` or `.` still do, and the
/// real body arrives whole.
#[tokio::test]
async fn framing_header_look_alikes_never_reach_an_upstream() {
    let (raw, seen) = raw_upstream(|_| "ok".into()).await;
    let k = Kfsec::start(&format!(
        "- prefix: /raw-open/\n  upstream: http://{raw}\n  public: true\n"
    ))
    .await;
    let look_alikes: Vec<(&str, &str)> = vec![
        ("Content_Length", "5"),
        ("content.length", "0"),
        ("Transfer_Encoding", "chunked"),
        ("transfer~encoding", "chunked"),
        ("Keep_Alive", "timeout=5"),
        ("proxy_connection", "keep-alive"),
        ("X_Custom", "kept"),
        ("x.trace.id", "kept"),
    ];
    let check = |head: &str, what: &str| {
        let lines = header_lines(head);
        for (n, _) in &lines {
            let spelled_otherwise = n.bytes().any(|b| !(b.is_ascii_alphanumeric() || b == b'-'));
            let c = canonical(n);
            assert!(
                !(spelled_otherwise
                    && ["content-length", "transfer-encoding", "keep-alive", "proxy-connection"].contains(&c.as_str())),
                "{what}: {n} reached the upstream:\n{head}"
            );
        }
        for n in ["x_custom", "x.trace.id"] {
            assert!(
                lines.iter().any(|(m, v)| m.eq_ignore_ascii_case(n) && v == "kept"),
                "{what}: {n} was dropped:\n{head}"
            );
        }
    };
    seen.lock().unwrap().clear();
    let (status, resp) = h1(&k, "GET /raw-open/a HTTP/1.1", &look_alikes, b"").await;
    assert_eq!(status, 200, "{resp}");
    let head = seen.lock().unwrap().pop().unwrap();
    check(&head, "GET");
    assert!(!head.to_ascii_lowercase().contains("content-length"), "GET:\n{head}");
    let mut with_body = look_alikes.clone();
    with_body.push(("Content-Length", "11"));
    seen.lock().unwrap().clear();
    let (status, resp) = h1(&k, "POST /raw-open/b HTTP/1.1", &with_body, b"hello world").await;
    assert_eq!(status, 200, "{resp}");
    let head = seen.lock().unwrap().pop().unwrap();
    check(&head, "POST");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 11"),
        "POST:\n{head}"
    );
    seen.lock().unwrap().clear();
    let lower: Vec<(String, &str)> = look_alikes.iter().map(|(n, v)| (n.to_ascii_lowercase(), *v)).collect();
    let lower: Vec<(&str, &str)> = lower.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let (status, _, _) = h2(&k, "/raw-open/c", &lower).await;
    assert_eq!(status, 200);
    let head = seen.lock().unwrap().pop().unwrap();
    check(&head, "HTTP/2");
    k.running.shutdown().await;
}

/// An upstream's answer cannot set, replace or clear kfsec's cookies (the session — planted under
/// a path of another user's app, the browser would send it first — the login states; a
/// nameless cookie too, which comes back as `name=value`), clear the whole site, have every
/// request to the origin reported elsewhere, or switch HSTS off, on the lean `GET` path, hyper's (`POST`) and HTTP/2; its
/// own cookies reach the client.
/// The headers with which an answer would speak for the whole origin (the test's own list).
const ORIGIN_WIDE: [&str; 7] = [
    "clear-site-data",
    "nel",
    "report-to",
    "alt-svc",
    "accept-ch",
    "origin-agent-cluster",
    "set-login",
];

#[tokio::test]
async fn upstream_answers_cannot_plant_kfsecs_cookies_or_clear_the_site() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\
Set-Cookie: authservice_session=ATTACKERS; Path=/victim/; Secure\r\n\
Set-Cookie: theme=dark; Path=/up/\r\n\
Set-Cookie: =authservice_session=ATTACKERS; Path=/victim/\r\n\
NEL: {\"report_to\":\"g\",\"max_age\":31536000,\"success_fraction\":1}\r\n\
Report-To: {\"group\":\"g\",\"max_age\":31536000,\"endpoints\":[{\"url\":\"https://evil.example\"}]}\r\n\
Set-Cookie: __Host-oidc_state_csrf=FORGED; Path=/; Secure\r\n\
set-cookie: __host-kfsec_upstream_login=; Max-Age=0\r\n\
Clear-Site-Data: \"cookies\", \"storage\"\r\n\
Accept-CH: Sec-CH-UA-Full-Version-List, Device-Memory\r\n\
Origin-Agent-Cluster: ?0\r\n\
Set-Login: logged-out\r\n\
Alt-Svc: h3=\"evil.example:443\"; ma=86400\r\n\
Strict-Transport-Security: max-age=0\r\nConnection: close\r\n\r\nok";
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let k = Kfsec::start(&format!("- prefix: /up/\n  upstream: http://{up}\n  public: true\n")).await;
    let check = |what: &str, cookies: Vec<String>, confined: bool, hsts: Vec<String>| {
        assert_eq!(cookies, ["theme=dark; Path=/up/"], "{what}");
        assert!(
            !confined,
            "{what}: a header that speaks for the whole origin reached the client"
        );
        assert_eq!(hsts, ["max-age=31536000"], "{what}");
    };
    for (line, body) in [("GET /up/a HTTP/1.1", &b""[..]), ("POST /up/b HTTP/1.1", b"x")] {
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("Content-Length", "1")]
        };
        let (status, resp) = h1(&k, line, headers, body).await;
        assert_eq!(status, 200, "{resp}");
        let lines = header_lines(resp.split("\r\n\r\n").next().unwrap());
        let all = |name: &str| -> Vec<String> {
            lines
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .collect()
        };
        check(
            line,
            all("set-cookie"),
            ORIGIN_WIDE.iter().any(|n| !all(n).is_empty()),
            all("strict-transport-security"),
        );
    }
    let (status, h, _) = h2(&k, "/up/c", &[]).await;
    assert_eq!(status, 200);
    let all = |name: &str| -> Vec<String> { h.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect() };
    check(
        "HTTP/2",
        all("set-cookie"),
        ORIGIN_WIDE.iter().any(|n| h.contains_key(*n)),
        all("strict-transport-security"),
    );
    k.running.shutdown().await;
}

/// A cookie an app on the origin set with bytes that are not ASCII (a browser sends every cookie
/// in one header) does not hide the session cookie beside it: the caller is still signed in.
#[tokio::test]
async fn a_non_ascii_cookie_beside_the_session_does_not_sign_the_user_out() {
    let (raw, seen) = raw_upstream(|_| "ok".into()).await;
    let k = Kfsec::start(&format!("- prefix: /raw/\n  upstream: http://{raw}\n")).await;
    let session = session_cookie(&k).await;
    let mut s = tls_to(&k, b"http/1.1").await;
    let mut req = b"GET /raw/a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nCookie: theme=caf".to_vec();
    req.extend_from_slice("\u{e9}; ".as_bytes());
    req.extend_from_slice(session.as_bytes());
    req.extend_from_slice(b"; raw=\xff\r\n\r\n");
    s.write_all(&req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let head = seen.lock().unwrap().pop().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("kubeflow-userid: {USER}").to_ascii_lowercase()),
        "{head}"
    );
    k.running.shutdown().await;
}

/// Requests pipelined in one write on one connection: plain `GET` and `HEAD` (the front door's
/// lean loop), a `POST` with a chunked body whose data spells a request (handed to hyper with
/// every byte already read), then a `GET` (hyper's now). Each is answered once, in order, and the
/// body never reaches the upstream as a request, whichever side of the hand-over it lies on.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_a_body_is_never_a_request() {
    let (raw, seen) = raw_upstream(|line| format!("<{line}>")).await;
    let k = Kfsec::start(&format!(
        "- prefix: /raw-open/\n  upstream: http://{raw}\n  public: true\n"
    ))
    .await;
    let smuggled = "GET /raw-open/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for split in [None, Some(60)] {
        seen.lock().unwrap().clear();
        let mut s = tls_to(&k, b"http/1.1").await;
        let pipeline = format!(
            "GET /raw-open/1 HTTP/1.1\r\nHost: localhost\r\n\r\n\
             HEAD /raw-open/2 HTTP/1.1\r\nHost: localhost\r\n\r\n\
             POST /raw-open/3 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{smuggled}\r\n0\r\n\r\n\
             GET /raw-open/4 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            smuggled.len()
        );
        match split {
            // All at once, then in two writes cut inside the second request's head.
            None => s.write_all(pipeline.as_bytes()).await.unwrap(),
            Some(at) => {
                s.write_all(&pipeline.as_bytes()[..at]).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                s.write_all(&pipeline.as_bytes()[at..]).await.unwrap();
            }
        }
        s.flush().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the front door answered and closed")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{text}");
        let order: Vec<usize> = [
            "<GET /raw-open/1 HTTP/1.1>",
            "<POST /raw-open/3 HTTP/1.1>",
            "<GET /raw-open/4 HTTP/1.1>",
        ]
        .iter()
        .map(|b| text.find(b).unwrap_or_else(|| panic!("{b} missing: {text}")))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(
            !text.contains("HEAD /raw-open/2") && !text.contains("smuggled"),
            "{text}"
        );
        let lines: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|h| h.lines().next().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            lines,
            [
                "GET /raw-open/1 HTTP/1.1",
                "HEAD /raw-open/2 HTTP/1.1",
                "POST /raw-open/3 HTTP/1.1",
                "GET /raw-open/4 HTTP/1.1"
            ],
            "{split:?}"
        );
    }
}

/// A client that hangs up while its request waits on a silent upstream ends that request: kfsec
/// drops the upstream connection (so a client cannot hold upstream connections and places under
/// the in-flight caps after leaving), on the lean path as on hyper's.
#[tokio::test]
async fn a_client_that_hangs_up_ends_its_request_upstream() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = l.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Duration>(4);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                // Read the request and never answer; report when kfsec closes the connection.
                let mut chunk = [0u8; 4096];
                let mut got = 0;
                let mut since = None;
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            got += n;
                            since.get_or_insert_with(tokio::time::Instant::now);
                        }
                    }
                }
                if got > 0 {
                    let _ = tx.send(since.map_or(Duration::ZERO, |t| t.elapsed())).await;
                }
            });
        }
    });
    let k = Kfsec::start(&format!(
        "- prefix: /silent/\n  upstream: http://{silent}\n  public: true\n"
    ))
    .await;
    for body in ["", "POST"] {
        let mut s = tls_to(&k, b"http/1.1").await;
        let req = if body.is_empty() {
            "GET /silent/a HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned()
        } else {
            "POST /silent/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nok".to_owned()
        };
        s.write_all(req.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(s);
        let held = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{body:?}: the upstream connection outlived the client"))
            .unwrap();
        assert!(held < Duration::from_secs(5), "{held:?}");
    }
}

#[tokio::test]
async fn forwarded_for_is_appended_only_for_trusted_proxies() {
    let (raw, seen) = raw_upstream(|_| "ok".into()).await;
    let k = Kfsec::start(&format!(
        "- prefix: /raw-open/\n  upstream: http://{raw}\n  public: true\ntrustedProxies: [\"127.0.0.1\"]\n"
    ))
    .await;
    let (status, _) = h1(
        &k,
        "GET /raw-open/a HTTP/1.1",
        &[("X-Forwarded-For", "203.0.113.7"), ("X-Real-IP", "6.6.6.6")],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let head = seen.lock().unwrap().pop().unwrap();
    let xff: Vec<_> = header_lines(&head)
        .into_iter()
        .filter(|(n, _)| canonical(n) == "x-forwarded-for")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(xff, ["203.0.113.7, 127.0.0.1"], "{head}");
    assert!(!head.contains("6.6.6.6"), "{head}");
    k.running.shutdown().await;
}

#[tokio::test]
async fn front_door_responses_carry_security_headers() {
    let k = Kfsec::start("").await;
    let cookie = session_cookie(&k).await;
    let mut framed_pages = 0;
    for (path, with_cookie) in [
        ("/", true),
        ("/", false),
        ("/app/x", true),
        ("/app/x", false),
        ("/open/x", false),
        ("/nowhere", true),
        ("/dex/.well-known/openid-configuration", false),
        ("/dex/auth?client_id=nobody", false),
        ("/apis/kubeflow.org/v1/profiles", false),
    ] {
        let headers: Vec<(&str, &str)> = if with_cookie { vec![("Cookie", &cookie)] } else { vec![] };
        let (status, resp) = h1(&k, &format!("GET {path} HTTP/1.1"), &headers, b"").await;
        let head = resp.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(
            head.contains("\r\nstrict-transport-security: max-age=31536000"),
            "{path} ({status}): {head}"
        );
        assert!(
            head.contains("\r\nx-content-type-options: nosniff"),
            "{path} ({status}): {head}"
        );
        if head.contains("content-type: text/html") {
            assert!(head.contains("\r\nx-frame-options: deny"), "{path} ({status}): {head}");
            framed_pages += 1;
        }
        let (_, h, _) = h2(&k, path, &headers).await;
        assert_eq!(h["strict-transport-security"], "max-age=31536000", "HTTP/2 {path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "HTTP/2 {path}");
    }
    assert!(framed_pages > 0, "kfsec's own HTML pages were checked");
    k.running.shutdown().await;
}

#[tokio::test]
async fn upstream_failures_and_malformed_bodies_are_answered_generically() {
    // a "TLS" upstream that answers plain HTTP at once: the handshake fails inside kfsec
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
            let _ = s.shutdown().await;
        }
    });
    let (raw, seen) = raw_upstream(|_| "ok".into()).await;
    let k = Kfsec::start(&format!(
        "- prefix: /tls-open/\n  upstream: https://127.0.0.1:{}\n  public: true\n  tls: {{mode: simple, serverName: localhost}}\n\
- prefix: /raw-open/\n  upstream: http://{raw}\n  public: true\n",
        plain.port()
    ))
    .await;
    let (status, resp) = h1(&k, "GET /tls-open/x HTTP/1.1", &[], b"").await;
    assert_eq!(status, 502, "{resp}");
    let body = body_of(&resp).to_ascii_lowercase();
    for leak in [
        "tls",
        "certificate",
        "ca ",
        "corrupt",
        "message",
        "localhost",
        "error",
        "invalid",
    ] {
        assert!(!body.contains(leak), "502 body names internals ({leak}): {body}");
    }
    // malformed chunked request bodies are the client's fault: 400, not 502
    for bad in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        &b"5\r\nhello world and more\r\n0\r\n\r\n"[..],
        &b"-1\r\nx\r\n0\r\n\r\n"[..],
        &b"ffffffffffffffffffff\r\nx\r\n"[..],
    ] {
        let (status, resp) = h1(
            &k,
            "POST /raw-open/upload HTTP/1.1",
            &[("Transfer-Encoding", "chunked")],
            bad,
        )
        .await;
        assert_eq!(status, 400, "{:?}: {resp}", String::from_utf8_lossy(bad));
    }
    // … and on kfsec's own endpoints never a 5xx
    for path in [
        "/dex/token",
        "/authservice/logout",
        "/apis/kubeflow.org/v1/profiles",
        "/app/x",
    ] {
        let (status, resp) = h1(
            &k,
            &format!("POST {path} HTTP/1.1"),
            &[
                ("Transfer-Encoding", "chunked"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            b"zz\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert!(status < 500, "{path}: {resp}");
    }
    // a well-formed chunked body still passes
    let (status, resp) = h1(
        &k,
        "POST /raw-open/upload HTTP/1.1",
        &[("Transfer-Encoding", "chunked")],
        b"5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    assert!(!seen.lock().unwrap().is_empty());
    k.running.shutdown().await;
}
