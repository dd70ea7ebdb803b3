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

/// Environment variables a test sets for one run.
type Env<'a> = Vec<(&'a str, &'a std::path::Path)>;

/// The real binary run in `cwd` with no inherited `KFSEC_*` setting but `env`, and
/// `RUST_BACKTRACE=1` (so a backtrace, if any were printed, would show).
fn run_in(cwd: &std::path::Path, args: &[&str], env: &[(&str, &std::path::Path)], stdin: &str) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.current_dir(cwd).args(args).env("RUST_BACKTRACE", "1");
    for (k, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("KFSEC_")) {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// `kfsec --version`'s line, split: (version, commit, date).
fn version_line() -> (String, String, String) {
    let o = Command::new(BIN).arg("--version").output().unwrap();
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    let rest = out
        .strip_prefix(&format!("kfsec {} (commit ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{out:?}"));
    let (commit, rest) = rest.split_once(", built ").unwrap_or_else(|| panic!("{out:?}"));
    let date = rest.strip_suffix(")\n").unwrap_or_else(|| panic!("{out:?}"));
    (env!("CARGO_PKG_VERSION").to_owned(), commit.to_owned(), date.to_owned())
}

/// `--version` names the commit this binary was built from (a real object of this repository,
/// or `unknown` outside git) and its build date (the commit's, never the epoch).
#[test]
fn version_flag_names_the_commit_and_build_date() {
    let (_, commit, date) = version_line();
    assert_eq!(date.len(), 10, "{date}");
    let year: u32 = date[..4].parse().unwrap();
    assert!(year >= 2024, "{date}");
    let in_git = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--git-dir"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !in_git {
        assert_eq!(commit, "unknown");
        return;
    }
    assert!(
        commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "{commit}"
    );
    let o = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "cat-file", "-e"])
        .arg(format!("{commit}^{{commit}}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{commit} is not a commit of this repository");
}

/// `/version` (read by the real kubectl) and the `kfsec_build_info` metric report the build
/// `--version` prints: its full commit, the tree state, an RFC 3339 date on the same day.
#[tokio::test]
async fn version_endpoint_and_build_metric_report_the_build() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (version, commit, date) = version_line();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (_p, lines) = serve(dir.path(), port);
    let ready = lines.last().unwrap();
    let admin = ready
        .split("admin http://")
        .nth(1)
        .and_then(|r| r.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("{ready}"));

    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let info = metrics
        .lines()
        .find(|l| l.starts_with("kfsec_build_info{"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let prefix = format!("kfsec_build_info{{version=\"{version}\",commit=\"");
    let full_commit = info
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix("\"} 1"))
        .unwrap_or_else(|| panic!("{info}"));
    assert!(full_commit.starts_with(&commit), "{info} vs {commit}");

    let Some(kubectl) = std::env::var_os("KFSEC_KUBECTL")
        .map_or_else(|| std::path::PathBuf::from("/usr/bin/kubectl"), Into::into)
        .canonicalize()
        .ok()
    else {
        eprintln!("kubectl not installed: /version is checked by the metric only");
        return;
    };
    let certs = dir.path().join("client");
    let o = cli(
        dir.path(),
        &[
            "cert",
            "issue",
            "--client",
            "version-reader",
            "--out",
            certs.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://localhost:{port}\n    certificate-authority: {0}/ca.crt\nusers:\n- name: u\n  user:\n    client-certificate: {0}/tls.crt\n    client-key: {0}/tls.key\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\ncurrent-context: c\n",
            certs.display()
        ),
    )
    .unwrap();
    let o = Command::new(kubectl)
        .args(["version", "-o", "json", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--cache-dir")
        .arg(dir.path().join("kube-cache"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let server = &v["serverVersion"];
    assert_eq!(server["gitCommit"], full_commit, "{v}");
    assert!(
        matches!(server["gitTreeState"].as_str(), Some("clean" | "dirty")),
        "{v}"
    );
    let built = server["buildDate"].as_str().unwrap();
    assert!(
        built.starts_with(&format!("{date}T")) && built.ends_with('Z'),
        "{built} vs {date}"
    );
    assert!(kfsec_types::time::parse_rfc3339(built).unwrap() > 0, "{built}");
    assert_eq!(server["gitVersion"], "v1.32.0-kfsec", "{v}");
}

/// Admin commands run from another directory find the data directory through `--data-dir`,
/// `KFSEC_DATA_DIR` or the config file's `dataDir` (`--config` / `KFSEC_CONFIG`); without one
/// they say so in one line and exit 1, never creating `./kfsec-data`; every expected error is
/// one line on stderr, with no backtrace.
#[tokio::test]
async fn admin_commands_find_the_data_dir_and_never_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_p, _) = serve(&data, free_port());
    let elsewhere = tempfile::tempdir().unwrap();
    let cwd = elsewhere.path();
    let config = cwd.join("kfsec.yaml");
    std::fs::write(&config, format!("apiVersion: kfsec/v1\ndataDir: {}\n", data.display())).unwrap();
    let empty = cwd.join("empty");
    std::fs::create_dir(&empty).unwrap();

    let ok = |o: &std::process::Output, what: &str| {
        assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let found: [(&str, Vec<&str>, Env); 4] = [
        (
            "--data-dir",
            vec!["user", "list", "--data-dir", data.to_str().unwrap()],
            vec![],
        ),
        ("KFSEC_DATA_DIR", vec!["user", "list"], vec![("KFSEC_DATA_DIR", &data)]),
        ("--config", vec!["user", "list", "--config", "kfsec.yaml"], vec![]),
        ("KFSEC_CONFIG", vec!["user", "list"], vec![("KFSEC_CONFIG", &config)]),
    ];
    for (what, args, env) in &found {
        let out = ok(&run_in(cwd, args, env, ""), what);
        assert!(out.contains("admin@kfsec.local"), "{what}: {out}");
    }
    // --data-dir wins over the environment, which wins over the config file.
    let o = run_in(
        cwd,
        &["user", "list", "--data-dir", data.to_str().unwrap()],
        &[("KFSEC_DATA_DIR", &empty)],
        "",
    );
    ok(&o, "--data-dir over KFSEC_DATA_DIR");
    let o = run_in(
        cwd,
        &["user", "list", "--config", "kfsec.yaml"],
        &[("KFSEC_DATA_DIR", &empty)],
        "",
    );
    assert!(!o.status.success(), "KFSEC_DATA_DIR over the config file");

    let missing = "kfsec: no data directory at ./kfsec-data (start the server with \"kfsec serve\", or pass --data-dir / set KFSEC_DATA_DIR)\n";
    let empty_msg = format!(
        "kfsec: no kfsec data in {} (start the server with \"kfsec serve\" there, or pass --data-dir / set KFSEC_DATA_DIR)\n",
        empty.display()
    );
    let refused: Vec<(Vec<&str>, Env, String)> = vec![
        (vec!["user", "list"], vec![], missing.into()),
        (vec!["client", "list"], vec![], missing.into()),
        (vec!["user", "add", "x@example.org"], vec![], missing.into()),
        (
            vec!["token", "create", "default-editor", "-n", "ns"],
            vec![],
            missing.into(),
        ),
        (
            vec!["can-i", "get", "pods", "--as", "x@example.org"],
            vec![],
            missing.into(),
        ),
        (
            vec!["why", "get", "pods", "--as", "x@example.org"],
            vec![],
            missing.into(),
        ),
        (vec!["cert", "list"], vec![], missing.into()),
        (vec!["webhook", "manifests"], vec![], missing.into()),
        (
            vec!["user", "list"],
            vec![("KFSEC_DATA_DIR", &empty)],
            empty_msg.clone(),
        ),
    ];
    for (args, env, want) in &refused {
        let o = run_in(cwd, args, env, "a-password-1\n");
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&o.stderr), *want, "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
        assert!(!cwd.join("kfsec-data").exists(), "{args:?} created ./kfsec-data");
        assert_eq!(
            std::fs::read_dir(&empty).unwrap().count(),
            0,
            "{args:?} wrote into an empty dir"
        );
    }

    // Other expected errors: one line, the causes after the context, no backtrace or Debug.
    let one_line = |o: &std::process::Output, what: &str, needle: &str| {
        assert_eq!(o.status.code(), Some(1), "{what}");
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(err.starts_with("kfsec: ") && err.ends_with('\n'), "{what}: {err:?}");
        assert_eq!(err.lines().count(), 1, "{what}: {err:?}");
        assert!(err.contains(needle), "{what}: {err:?}");
        for debug in ["Caused by", "backtrace", "Error {", "Os {", "kind:"] {
            assert!(!err.contains(debug), "{what}: {err:?}");
        }
    };
    one_line(
        &run_in(cwd, &["user", "list", "--config", "nope.yaml"], &[], ""),
        "missing config",
        "cannot read nope.yaml: No such file or directory",
    );
    std::fs::write(cwd.join("bad.yaml"), "apiVersion: kfsec/v1\nnoSuchKey: 1\ndataDir: [\n").unwrap();
    one_line(
        &run_in(cwd, &["user", "list", "--config", "bad.yaml"], &[], ""),
        "bad config",
        "bad.yaml: line 3 column 10: unclosed bracket",
    );
    let o = run_in(cwd, &["user", "list", "--config", "bad.yaml"], &[], "");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("-->"), "no source snippet");
    let o = run_in(
        cwd,
        &["token", "create", "nobody", "-n", "nowhere"],
        &[("KFSEC_DATA_DIR", &data)],
        "",
    );
    one_line(&o, "token for a missing service account", "nobody");
    let o = run_in(
        cwd,
        &["user", "add", "admin@kfsec.local"],
        &[("KFSEC_DATA_DIR", &data)],
        "a-password-1\n",
    );
    one_line(&o, "duplicate user", "admin@kfsec.local");
    one_line(
        &run_in(cwd, &["login", "--server", "https://localhost:1"], &[], ""),
        "login without a CA",
        "pass --ca-file",
    );
    // Commands that need no data directory work anywhere.
    let o = run_in(cwd, &["hash-password"], &[], "a-password-1\n");
    assert!(ok(&o, "hash-password").starts_with("$2"));
    assert!(!cwd.join("kfsec-data").exists());
}
