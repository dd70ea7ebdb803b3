//! The real binary: admin commands while it runs, `kill -9` and restart, TLS versions with
//! openssl.

#![allow(clippy::disallowed_methods)] // waits for the real binary against a monotonic deadline

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_kfsec");

struct Proc {
    child: Child,
    port: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kfsec serve`; returns it once `kfsec ready:` is printed, plus the stdout lines.
fn serve(dir: &std::path::Path, port: u16) -> (Proc, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args([
            "--https-addr",
            &format!("127.0.0.1:{port}"),
            "--admin-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            "127.0.0.1:0",
        ])
        .env("KFSEC_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = until_ready(child.stdout.take().unwrap());
    (Proc { child, port }, lines)
}

/// The lines `out` prints up to and including `kfsec ready:` (within 60 s); the rest is drained
/// in the background.
fn until_ready(out: std::process::ChildStdout) -> Vec<String> {
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reader = BufReader::new(out);
    loop {
        assert!(Instant::now() < deadline, "kfsec did not become ready: {lines:?}");
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap() == 0 {
            panic!("kfsec exited early: {lines:?}");
        }
        let ready = l.starts_with("kfsec ready:");
        lines.push(l);
        if ready {
            break;
        }
    }
    std::thread::spawn(move || for _ in reader.lines() {});
    lines
}

fn cli(dir: &std::path::Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut c = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(c.stdin.take());
    }
    c.wait_with_output().unwrap()
}

#[tokio::test]
async fn state_survives_kill_9_and_admin_commands_work_while_running() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (p, lines) = serve(dir.path(), port);
    let all = lines.concat();
    assert!(all.contains("login:    admin@kfsec.local"), "{all}");
    let bootstrap = all
        .lines()
        .find_map(|l| l.trim().strip_prefix("password: "))
        .expect("bootstrap password printed")
        .to_owned();
    assert_eq!(bootstrap.len(), 24);

    // the front-door certificate names what users type
    let san = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(dir.path().join("pki/frontdoor.crt"))
        .output()
        .unwrap();
    let san = String::from_utf8_lossy(&san.stdout).to_string();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for name in ["DNS:localhost", "IP Address:127.0.0.1", &format!("DNS:{}", host.trim())] {
        assert!(san.contains(name), "{name} missing from {san}");
    }

    // admin commands while the server holds the store
    let o = cli(
        dir.path(),
        &["user", "add", "carol@example.org", "--group", "ml"],
        Some("carol-password-1\n"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli(
        dir.path(),
        &["user", "add", "carol@example.org"],
        Some("carol-password-1\n"),
    );
    assert!(!o.status.success(), "duplicate users are refused");
    let o = cli(
        dir.path(),
        &[
            "client",
            "add",
            "notebook-app",
            "--redirect-uri",
            "https://nb.example/cb",
        ],
        None,
    );
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let secret = out.lines().find_map(|l| l.strip_prefix("secret ")).unwrap().to_owned();
    assert_eq!(secret.len(), 30);
    assert!(secret.chars().all(|c| c.is_ascii_alphanumeric()));
    let list = String::from_utf8_lossy(&cli(dir.path(), &["user", "list"], None).stdout).to_string();
    assert!(
        list.contains("carol@example.org") && list.contains("admin@kfsec.local"),
        "{list}"
    );
    // the store holds no plaintext secret or password
    let db = std::fs::read(dir.path().join("kfsec.redb")).unwrap();
    for needle in [secret.as_bytes(), b"carol-password-1".as_slice(), bootstrap.as_bytes()] {
        assert!(
            !db.windows(needle.len()).any(|w| w == needle),
            "plaintext secret in the store"
        );
    }

    // log in as the new user and as the bootstrap admin
    let ca = std::fs::read_to_string(dir.path().join("pki/ca.crt")).unwrap();
    let base = format!("https://localhost:{}", p.port);
    let mut b = Browser::new(&ca, &base);
    let (r, _) = b.login("/", "carol@example.org", "carol-password-1").await;
    assert_eq!(r.status(), 200);
    let mut admin = Browser::new(&ca, &base);
    let (r, _) = admin.login("/", "admin@kfsec.local", &bootstrap).await;
    assert_eq!(r.status(), 200);
    let home = r.text().await.unwrap();
    assert!(home.contains("kfsec:admins"));
    let keys_before: serde_json::Value = b.get("/dex/keys").await.json().await.unwrap();

    // kill -9 and restart on the same port: sessions, users, clients and keys survive
    let mut p = p;
    p.child.kill().unwrap(); // SIGKILL
    p.child.wait().unwrap();
    drop(p);
    let (p2, lines2) = serve(dir.path(), port);
    // a new connection (the old one died with the process), the same cookies
    let mut b = Browser {
        http: http_client(&ca),
        base: base.clone(),
        cookies: b.cookies,
    };
    assert!(
        !lines2.concat().contains("password:"),
        "the bootstrap password is never shown again"
    );
    let r = b.get("/").await;
    assert_eq!(r.status(), 200, "the session survived the crash");
    assert!(r.text().await.unwrap().contains("carol@example.org"));
    let keys_after: serde_json::Value = b.get("/dex/keys").await.json().await.unwrap();
    assert_eq!(keys_before, keys_after, "signing keys survived");
    let clients = String::from_utf8_lossy(&cli(dir.path(), &["client", "list"], None).stdout).to_string();
    assert!(clients.contains("notebook-app"), "{clients}");

    // password change and delete while running
    let o = cli(
        dir.path(),
        &["user", "passwd", "carol@example.org"],
        Some("carol-password-2\n"),
    );
    assert!(o.status.success());
    let mut c2 = Browser::new(&ca, &base);
    let (r, _) = c2.login("/", "carol@example.org", "carol-password-1").await;
    assert_eq!(r.status(), 401, "old password no longer works");
    let (r, _) = c2.login("/", "carol@example.org", "carol-password-2").await;
    assert_eq!(r.status(), 200);
    assert!(
        cli(dir.path(), &["user", "delete", "carol@example.org"], None)
            .status
            .success()
    );
    drop(p2);

    // cert list / cert issue: a service certificate that openssl verifies against the CA
    let out = String::from_utf8_lossy(&cli(dir.path(), &["cert", "list"], None).stdout).to_string();
    assert!(
        out.contains("CN=kfsec internal CA") && out.contains("frontdoor.crt") && out.contains("DNS:localhost"),
        "{out}"
    );
    let wh = dir.path().join("webhook-cert");
    let o = cli(
        dir.path(),
        &[
            "cert",
            "issue",
            "--service",
            "admission-webhook-service",
            "--namespace",
            "kubeflow",
            "--out",
            wh.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(wh.join("tls.key")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let v = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(wh.join("ca.crt"))
        .arg(wh.join("tls.crt"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let san = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(wh.join("tls.crt"))
        .output()
        .unwrap();
    let san = String::from_utf8_lossy(&san.stdout).to_string();
    assert!(san.contains("DNS:admission-webhook-service.kubeflow.svc"), "{san}");

    // the webhook configurations carry the CA bundle
    let out = String::from_utf8_lossy(&cli(dir.path(), &["webhook", "manifests"], None).stdout).to_string();
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read_to_string(dir.path().join("pki/ca.crt")).unwrap());
    assert!(
        out.contains("kind: MutatingWebhookConfiguration") && out.contains("/apply-poddefault"),
        "{out}"
    );
    assert!(out.contains(&format!("caBundle: \"{bundle}\"")), "{out}");
    // every webhook Service certificate verifies against that bundle and names its Service
    let bundle_file = dir.path().join("bundle.pem");
    std::fs::write(
        &bundle_file,
        base64::engine::general_purpose::STANDARD.decode(&bundle).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for e in std::fs::read_dir(dir.path().join("pki/webhooks")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "crt") {
            continue;
        }
        let v = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&bundle_file)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            v.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&v.stderr)
        );
        let service = path.file_stem().unwrap().to_string_lossy().to_string();
        let san = Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&path)
            .output()
            .unwrap();
        let san = String::from_utf8_lossy(&san.stdout).to_string();
        assert!(san.contains(&format!("DNS:{service}.kubeflow.svc")), "{san}");
        checked += 1;
    }
    assert_eq!(checked, 4, "one certificate per webhook Service");

    // CA rotation with the real command, the server stopped (`rotation.rs` covers a running
    // one): the files change now, the certificates at the next start
    let o = cli(dir.path(), &["cert", "rotate-ca", "--window", "1h"], None);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("signing CA: CN=kfsec internal CA 2"), "{out}");
    assert!(out.contains("re-issued at the next start"), "{out}");
    assert!(out.contains("also trusted until"), "{out}");
    let o = cli(dir.path(), &["cert", "rotate-ca"], None);
    assert!(!o.status.success(), "a second rotation waits for the window");
    assert!(String::from_utf8_lossy(&o.stderr).contains("in progress"));
    let list = String::from_utf8_lossy(&cli(dir.path(), &["cert", "list"], None).stdout).to_string();
    assert!(
        list.contains("CA rotation window: CN=kfsec internal CA is trusted until"),
        "{list}"
    );
    let out = String::from_utf8_lossy(&cli(dir.path(), &["webhook", "manifests"], None).stdout).to_string();
    let bundle_pem = std::fs::read_to_string(dir.path().join("pki/ca-bundle.crt")).unwrap();
    assert_eq!(
        bundle_pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "both CAs in the bundle"
    );
    let bundle = base64::engine::general_purpose::STANDARD.encode(&bundle_pem);
    assert!(out.contains(&format!("caBundle: \"{bundle}\"")), "{out}");
    let o = cli(dir.path(), &["cert", "rotate-ca", "--finish"], None);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success() && out.contains("no other CA is trusted"), "{out}");
    let o = cli(dir.path(), &["cert", "rotate-ca", "--finish"], None);
    assert!(String::from_utf8_lossy(&o.stderr).contains("none is in progress"));

    // with the server stopped, commands open the store directly
    let list = String::from_utf8_lossy(&cli(dir.path(), &["user", "list"], None).stdout).to_string();
    assert!(
        !list.contains("carol@example.org") && list.contains("admin@kfsec.local"),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_is_refused_and_1_2_and_1_3_work() {
    let k = Kfsec::start("").await;
    let port = k.running.https_addr.port().to_string();
    let run = |flag: &'static str| {
        let port = port.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let mut c = tokio::process::Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &format!("127.0.0.1:{port}"),
                    flag,
                    "-servername",
                    "localhost",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("openssl is installed by scripts/install-test-deps.sh");
            c.stdin.take().unwrap().write_all(b"Q\n").await.unwrap();
            let o = tokio::time::timeout(Duration::from_secs(30), c.wait_with_output())
                .await
                .expect("openssl finished")
                .unwrap();
            (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string())
        }
    };
    let (ok, out) = run("-tls1_1").await;
    assert!(!ok || !out.contains("Cipher is ECDHE"), "TLS 1.1 must fail: {out}");
    let (ok, out) = run("-tls1_2").await;
    assert!(ok && out.contains("TLSv1.2"), "TLS 1.2: {out}");
    let (ok, out) = run("-tls1_3").await;
    assert!(ok && out.contains("TLSv1.3"), "TLS 1.3: {out}");
    k.running.shutdown().await;
}

/// Starts the real binary on a Dex config fixture of `crates/server/fixtures/` with `env`;
/// returns it (and its data directory), the lines printed until ready, and the discovery document.
async fn serve_dex_fixture(
    name: &str,
    env: &[(&str, &str)],
) -> ((Proc, tempfile::TempDir), Vec<String>, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let fixture = format!("{}/../server/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" \"$@\" 2>&1")
        .arg(BIN)
        .args(["serve", "--config", &fixture, "--data-dir"])
        .arg(dir.path())
        .args(["--https-addr", &format!("127.0.0.1:{port}")])
        .args(["--admin-addr", "127.0.0.1:0", "--webhook-addr", "127.0.0.1:0"])
        .env("KFSEC_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = until_ready(child.stdout.take().unwrap());
    let proc = Proc { child, port };
    let ca = std::fs::read_to_string(dir.path().join("pki/ca.crt")).unwrap();
    let r = http_client(&ca)
        .get(format!("https://localhost:{port}/dex/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let discovery = r.json().await.unwrap();
    ((proc, dir), lines, discovery)
}

/// Each Dex section is named by exactly one startup line, with why kfsec does not use it.
fn assert_acknowledged_once(lines: &[String], sections: &[(&str, &str)]) {
    for (section, why) in sections {
        let said: Vec<_> = lines
            .iter()
            .filter(|l| l.contains(&format!("Dex's `{section}`")))
            .collect();
        assert_eq!(said.len(), 1, "one line for {section}: {lines:?}");
        assert!(said[0].contains(why), "{said:?}");
    }
}

/// kubeflow/manifests' Dex config starts the real binary unchanged: its `storage` and `web`
/// sections are acknowledged with one line each saying why kfsec does not use them, `web.http`
/// opens no listener, and discovery names the config's issuer.
#[tokio::test]
async fn the_kubeflow_manifests_dex_config_starts_kfsec_unchanged() {
    let (_proc, lines, discovery) = serve_dex_fixture(
        "dex-kubeflow-manifests.yaml",
        &[
            ("DEX_USER_PASSWORD", HASH),
            ("OIDC_CLIENT_ID", "kubeflow-oidc-authservice"),
            ("OIDC_CLIENT_SECRET", "pUBnBOY80SnXgjibTYM9ZWNzY2xreNGQok"),
        ],
    )
    .await;
    assert_acknowledged_once(
        &lines,
        &[
            ("storage", "kfsec keeps its state"),
            ("web", "web.http and web.https never open a listener"),
        ],
    );
    assert!(
        std::net::TcpStream::connect("127.0.0.1:5556").is_err(),
        "web.http opened a listener"
    );
    assert_eq!(discovery["issuer"], "http://dex.auth.svc.cluster.local:5556/dex");
}

/// The Dex config Canonical's dex-auth charm renders starts the real binary unchanged: its
/// `storage`, `web` and `telemetry` sections are acknowledged with one line each, none opens a
/// listener, the static user `admin` loads, the guide's microsoft connector opens (its secrets
/// from the environment, printed nowhere) with the password database after it, and discovery
/// names the config's issuer.
#[tokio::test]
async fn the_charmed_kubeflow_dex_config_starts_kfsec_unchanged() {
    let secret = "ms-client-secret-never-printed";
    let (_proc, lines, discovery) = serve_dex_fixture(
        "dex-charmed-kubeflow.yaml",
        &[
            ("MICROSOFT_APPLICATION_ID", "0e7c1c6e-0000-4000-8000-00000000c0de"),
            ("MICROSOFT_CLIENT_SECRET", secret),
        ],
    )
    .await;
    assert_acknowledged_once(
        &lines,
        &[
            ("storage", "kfsec keeps its state"),
            ("web", "web.http and web.https never open a listener"),
            ("telemetry", "no telemetry listener is opened"),
        ],
    );
    let db: Vec<_> = lines.iter().filter(|l| l.contains("local password database")).collect();
    assert_eq!(db.len(), 1, "{lines:?}");
    assert!(
        db[0].contains("on (enablePasswordDB: true), offered after the 1 configured connector(s)"),
        "{db:?}"
    );
    assert!(!lines.iter().any(|l| l.contains(secret)), "{lines:?}");
    for dex_port in [5556, 5558] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", dex_port)).is_err(),
            "a Dex listener was opened on {dex_port}"
        );
    }
    assert_eq!(
        discovery["issuer"],
        "https://my-charmed-kubeflow.uksouth.cloudapp.azure.com/dex"
    );
}
