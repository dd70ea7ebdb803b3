//! The real binary's log lines and files under hostile input and a permissive umask: values a
//! client chose cannot forge log lines or escape codes (text and JSON formats), and nothing
//! kfsec writes is readable by other users even when it is started with `umask 000`.

#![allow(clippy::disallowed_methods)] // waits for the real binary and its log against monotonic deadlines

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

const BIN: &str = env!("CARGO_BIN_EXE_kfsec");

/// A user name that tries to end its log line, forge an audit line and blank the terminal.
const HOSTILE: &str = "mallory@example.org\r\n2026-12-05T00:00:00.000000Z  INFO audit: contributor added caller=admin@kfsec.local\u{1b}[2J\u{2028}x\u{202e}";
const FORGED: &str = "2026-12-05T00:00:00.000000Z  INFO audit";

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kfsec serve` under `umask 000` on a free port, stderr into `log`; returns once ready.
fn serve(dir: &Path, log: &Path, config: Option<&Path>) -> (Proc, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--https-addr", &format!("127.0.0.1:{port}")])
        .args(["--admin-addr", "127.0.0.1:0", "--webhook-addr", "127.0.0.1:0"]);
    if let Some(f) = config {
        c.arg("--config").arg(f);
    }
    let mut child = c
        .env("KFSEC_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "kfsec did not become ready");
        let mut l = String::new();
        assert!(out.read_line(&mut l).unwrap() > 0, "kfsec exited early");
        if l.starts_with("kfsec ready:") {
            break;
        }
    }
    std::thread::spawn(move || for _ in out.lines() {});
    (p, port)
}

/// An HTTPS client presenting the admin kubeconfig's client certificate.
pub(crate) fn admin_client(dir: &Path) -> reqwest::Client {
    let text = std::fs::read_to_string(dir.join("admin.kubeconfig")).unwrap();
    let field = |name: &str| {
        let v = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap();
        base64::engine::general_purpose::STANDARD.decode(v).unwrap()
    };
    let mut pem = field("client-certificate-data");
    pem.extend(field("client-key-data"));
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&field("certificate-authority-data")).unwrap()])
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

/// Creates profile `ns` and adds [`HOSTILE`] as its contributor through KFAM (the audit line
/// `contributor added` carries the user name).
async fn add_hostile_contributor(dir: &Path, port: u16, ns: &str) {
    let c = admin_client(dir);
    let base = format!("https://localhost:{port}");
    let profile = serde_json::json!({
        "apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": ns},
        "spec": {"owner": {"kind": "User", "name": "admin@kfsec.local"}},
    });
    let r = c
        .post(format!("{base}/apis/kubeflow.org/v1/profiles"))
        .json(&profile)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let binding = serde_json::json!({
        "user": {"kind": "User", "name": HOSTILE}, "referredNamespace": ns,
        "RoleRef": {"kind": "ClusterRole", "name": "edit"},
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .post(format!("{base}/kfam/v1/bindings"))
            .json(&binding)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        // The profile controller creates the namespace asynchronously.
        assert!(
            Instant::now() < deadline,
            "KFAM binding: {} {}",
            r.status(),
            r.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `log` has a line containing `needle`; returns the whole log.
async fn log_with(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn hostile_values_cannot_forge_log_lines_and_files_stay_private_under_umask_000() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let log = tmp.path().join("text.log");

    // Text format.
    let (p, port) = serve(&dir, &log, None);
    add_hostile_contributor(&dir, port, "logs-text").await;
    let text = log_with(&log, "contributor added").await;
    for l in text.lines() {
        assert!(!l.starts_with(FORGED), "a forged line: {l:?}");
    }
    assert!(
        !text.contains('\r') && !text.contains('\u{1b}'),
        "raw control characters: {text:?}"
    );
    assert!(
        !text.contains('\u{2028}') && !text.contains('\u{202e}'),
        "raw separators: {text:?}"
    );
    let line = text.lines().find(|l| l.contains("contributor added")).unwrap();
    assert!(
        line.contains("mallory@example.org\\r\\n2026-12-05T00:00:00.000000Z  INFO audit"),
        "the value is kept, escaped, on its own line: {line}"
    );

    // Files: whatever the umask, nothing but certificates is readable by group or others.
    let mut seen = 0;
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            seen += 1;
            if name.ends_with(".crt") {
                assert_eq!(mode & 0o022, 0, "{name} is {mode:o}");
            } else {
                assert_eq!(mode & 0o077, 0, "{name} is {mode:o} (umask 000 at start)");
            }
        }
    }
    assert!(seen >= 5, "walked the data directory ({seen} files)");
    drop(p);

    // JSON format: every line is valid JSON and the value arrives intact.
    let config = tmp.path().join("json.yaml");
    std::fs::write(&config, "apiVersion: kfsec/v1\nlogger:\n  format: json\n").unwrap();
    let log = tmp.path().join("json.log");
    let (_p, port) = serve(&dir, &log, Some(&config));
    add_hostile_contributor(&dir, port, "logs-json").await;
    let text = log_with(&log, "contributor added").await;
    let mut found = false;
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
        if v["message"] == "contributor added" && v["namespace"] == "logs-json" {
            assert_eq!(v["user"], HOSTILE, "{l}");
            found = true;
        }
    }
    assert!(found, "{text}");
}
