//! Security regression suite, paths at the front door: with `/static/` public and
//! `/static/admin/` and `/app2/` protected on one upstream, no spelling of a path (dot-segments,
//! percent-encoded dots and letters, doubled slashes, encoded slashes/backslashes/NUL, raw
//! backslashes, `;` parameters, letter case, absolute-form targets, HTTP/2 `:path`) reaches
//! protected content without login — at a maximally lenient raw upstream and at a real nginx.
//! Encoded separators and NUL, and paths whose `;` parameters or letter case would select another
//! route, are refused with 400 in the caller's format; the normalised path is what is forwarded.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::harness::*;
use crate::sec_headers::{h1, h2, raw_upstream};

/// What a lenient upstream makes of a request target: every escape decoded, `\` as `/`, `;`
/// parameters dropped (Tomcat, Jetty), slashes merged, dot-segments resolved, letter case
/// ignored (a case-insensitive file system).
fn lenient(target: &str) -> String {
    let target = target
        .strip_prefix("https://localhost")
        .or_else(|| target.strip_prefix("http://localhost"))
        .unwrap_or(target);
    let path = target.split('?').next().unwrap_or_default();
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            decoded.push(b);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let s = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in s.split('/') {
        let seg = seg.split(';').next().unwrap_or_default();
        match seg.trim_end_matches('\0') {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/")).to_ascii_lowercase()
}

fn lenient_answer(request_line: &str) -> String {
    let target = request_line.split(' ').nth(1).unwrap_or_default();
    let path = lenient(target);
    if path.starts_with("/static/admin") || path.starts_with("/app2") {
        format!("SECRET at {path} (sent {target})")
    } else {
        format!("public {path} (sent {target})")
    }
}

fn routes(upstream: SocketAddr) -> String {
    format!(
        "- prefix: /static/\n  upstream: http://{upstream}\n  public: true\n\
- prefix: /static/admin/\n  upstream: http://{upstream}\n\
- prefix: /app2/\n  upstream: http://{upstream}\n"
    )
}

/// Paths that a lenient upstream resolves into protected content.
const BYPASSES: &[&str] = &[
    "/static/../app2/x",
    "/static/../static/admin/x",
    "/static/%2e%2e/app2/x",
    "/static/%2E%2E/app2/x",
    "/static/.%2e/app2/x",
    "/static/%2e./app2/x",
    "/static//admin/x",
    "/static///admin/x",
    "//static//admin/x",
    "/static/%61dmin/x",
    "/static/%61%64%6D%69%6E/x",
    "/static/./admin/x",
    "/static/%2e/admin/x",
    "/static/x/../admin/x",
    "/static/x/%2e%2e/%2e%2e/app2/x",
    "/static/.//admin/x",
    "/static/admin/.",
    "/static/admin",
    "/static/x/../../app2",
    "/dex/../app2/x",
    "/dex/%2e%2e/static/admin/x",
    "/authservice/../app2/x",
    "/authservice/check/../../static/admin/x",
    "/APP2/x",
];

/// Paths that must be refused with 400 whatever follows.
const REFUSED: &[&str] = &[
    "/static/%2fadmin/x",
    "/static/%2Fadmin/x",
    "/static/..%2fapp2/x",
    "/static/%2e%2e%2fapp2/x",
    "/static/%5cadmin/x",
    "/static/..%5Capp2/x",
    "/static/%00/../admin/x",
    "/static/admin%00/x",
    "/static/..%00/app2/x",
    "/static/..\\app2/x",
    "/static\\admin/x",
    "/static/..;/app2/x",
    "/static/.;/admin/x",
    "/static/%zz/x",
    "/static/%2/x",
    "/static/x%",
    "/static/%0a/x",
    "/static/%c0%ae%c0%ae/app2/x",
    "/static/%C0%AE./app2/x",
    "/static/%e9/x",
    "/static/admin;x=1/x",
    "/static/admin;/x",
    "/static/ADMIN/x",
    "/static/Admin/x",
    "/static/%41dmin/x",
    "/static/x/../Admin;a/x",
];

async fn assert_corpus_is_safe(k: &Kfsec, nginx: bool) {
    let what = if nginx { "nginx" } else { "lenient upstream" };
    for path in BYPASSES.iter().chain(REFUSED) {
        for target in [path.to_string(), format!("https://localhost{path}")] {
            let (status, resp) = h1(k, &format!("GET {target} HTTP/1.1"), &[], b"").await;
            assert!(
                !resp.contains("SECRET"),
                "HTTP/1.1 {target} reached protected content at the {what} without login:\n{resp}"
            );
            assert!(status != 200 || !BYPASSES.contains(path), "{target}: {status}\n{resp}");
            if REFUSED.contains(path) {
                assert_eq!(status, 400, "HTTP/1.1 {target} must be refused:\n{resp}");
            }
        }
        if format!("https://localhost{path}").parse::<http::Uri>().is_ok() {
            let (status, _, body) = h2(k, path, &[]).await;
            assert!(
                !body.contains("SECRET"),
                "HTTP/2 {path} reached protected content at the {what} without login: {body}"
            );
            if REFUSED.contains(path) {
                assert_eq!(status, 400, "HTTP/2 {path} must be refused: {body}");
            }
        }
    }
}

#[tokio::test]
async fn path_corpus_never_reaches_protected_content_without_login() {
    let (up, seen) = raw_upstream(lenient_answer).await;
    let k = Kfsec::start(&routes(up)).await;
    // the public part works
    let (status, resp) = h1(&k, "GET /static/site.css HTTP/1.1", &[], b"").await;
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("public /static/site.css"));
    assert_corpus_is_safe(&k, false).await;

    // refusals speak each family's format
    let (status, resp) = h1(&k, "GET /api/v1/namespaces/%2e%2e%2fkube-system HTTP/1.1", &[], b"").await;
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("\"kind\":\"Status\""), "{resp}");
    let (status, resp) = h1(&k, "GET /pipeline/apis/v2beta1/%2fx HTTP/1.1", &[], b"").await;
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("\"error\""), "{resp}");
    let (status, resp) = h1(&k, "GET /static/%5c HTTP/1.1", &[], b"").await;
    assert_eq!(status, 400, "{resp}");
    assert!(resp.to_ascii_lowercase().contains("<html"), "{resp}");

    // logged in, the normalised path is what the upstream receives (query untouched)
    let mut b = k.client();
    b.login("/", USER, PASSWORD).await;
    let cookie = format!("authservice_session={}", b.cookies["authservice_session"]);
    for (sent, received) in [
        ("/static/./a/%7euser/../b%3b?q=%2F..", "/static/a/b%3B?q=%2F.."),
        ("/static//x", "/static/x"),
        ("/static/%61dmin/y", "/static/admin/y"),
        ("/static/a/b/..", "/static/a/"),
        ("https://localhost/app2/./z", "/app2/z"),
    ] {
        seen.lock().unwrap().clear();
        let (status, resp) = h1(&k, &format!("GET {sent} HTTP/1.1"), &[("Cookie", &cookie)], b"").await;
        assert_eq!(status, 200, "{sent}: {resp}");
        let head = seen.lock().unwrap().pop().unwrap();
        assert!(
            head.starts_with(&format!("GET {received} HTTP/1.1\r\n")),
            "{sent}:\n{head}"
        );
    }
    // over HTTP/2 as well
    seen.lock().unwrap().clear();
    let (status, _, _) = h2(&k, "/static/%2e%2e/static//x", &[]).await;
    assert_eq!(status, 200);
    let head = seen.lock().unwrap().pop().unwrap();
    assert!(head.starts_with("GET /static/x HTTP/1.1\r\n"), "{head}");
    // the login redirect carries the normalised path back
    let (status, resp) = h1(&k, "GET /static/%2e%2e/app2/q HTTP/1.1", &[], b"").await;
    assert_eq!(status, 302, "{resp}");
    k.running.shutdown().await;
}

struct Nginx {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn nginx_upstream() -> (SocketAddr, Nginx) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.path().display();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\n\
http {{\n access_log off;\n client_body_temp_path {d}/tmp;\n proxy_temp_path {d}/tmp;\n fastcgi_temp_path {d}/tmp;\n\
 uwsgi_temp_path {d}/tmp;\n scgi_temp_path {d}/tmp;\n default_type text/plain;\n\
 server {{\n  listen 127.0.0.1:{port};\n\
  location /static/admin/ {{ return 200 \"SECRET admin $uri\\n\"; }}\n\
  location /app2/ {{ return 200 \"SECRET app2 $uri\\n\"; }}\n\
  location = /static/admin {{ return 200 \"SECRET admin $uri\\n\"; }}\n\
  location / {{ return 200 \"public $uri\\n\"; }}\n }}\n}}\n"
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = std::process::Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nginx is installed (scripts/install-test-deps.sh)");
    let nginx = Nginx { child, _dir: dir };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return (addr, nginx);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "nginx did not start: {}",
        std::fs::read_to_string(nginx._dir.path().join("error.log")).unwrap_or_default()
    );
}

#[tokio::test]
async fn path_corpus_against_a_real_nginx_upstream() {
    let (up, _nginx) = nginx_upstream().await;
    let k = Kfsec::start(&routes(up)).await;
    let (status, resp) = h1(&k, "GET /static/site.css HTTP/1.1", &[], b"").await;
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("public /static/site.css"), "{resp}");
    assert_corpus_is_safe(&k, true).await;
    // logged in, protected content is reachable through a normalised spelling
    let mut b = k.client();
    b.login("/", USER, PASSWORD).await;
    let cookie = format!("authservice_session={}", b.cookies["authservice_session"]);
    let (status, resp) = h1(&k, "GET /static/%61dmin/x HTTP/1.1", &[("Cookie", &cookie)], b"").await;
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("SECRET admin /static/admin/x"), "{resp}");
    k.running.shutdown().await;
}
