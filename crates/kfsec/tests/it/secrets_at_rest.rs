//! Secrets at rest (`secretsEncryption`): the redb file never holds the signing key, the session
//! MAC key or a password hash in the clear; a restart with the wrong key (or none) is refused
//! naming the store's key id; the right key brings back the sessions and users; a rotation by
//! `previousKeyFiles` re-seals everything at start, after which the old key can go.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use kfsec_server::config::{Env, Overrides, parse, validate};
use kfsec_store::sealed::SealKey;
use kfsec_types::SystemClock;

use crate::harness::*;

struct NoEnv;
impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

fn new_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let key = SealKey::generate(&kfsec_pki::OsRng);
    key.write_new(&path).unwrap();
    (path, key.id().to_string())
}

fn sealing(key: &Path, previous: &[&Path]) -> String {
    let mut yaml = format!("secretsEncryption:\n  keyFile: {}\n", key.display());
    if !previous.is_empty() {
        let list: Vec<String> = previous.iter().map(|p| p.display().to_string()).collect();
        yaml.push_str(&format!("  previousKeyFiles: [{}]\n", list.join(", ")));
    }
    yaml
}

/// Stops `k` and waits until its store file can be opened again (redb's lock released).
pub(crate) async fn stop(k: Kfsec) -> tempfile::TempDir {
    let dir = k.stop().await;
    let db = dir.path().join("kfsec.redb");
    for _ in 0..100 {
        let options = kfsec_store::StoreOptions {
            sweep_interval: None,
            ..Default::default()
        };
        if kfsec_store::RedbStore::open_with_options(&db, Arc::new(SystemClock), options).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    dir
}

/// A start on `dir` that must fail: its error text.
async fn refused_start(dir: &Path, extra: &str) -> String {
    let file = parse(Path::new("test.yaml"), &format!("apiVersion: kfsec/v1\n{extra}")).unwrap();
    let o = Overrides {
        data_dir: Some(dir.to_path_buf()),
        https_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        webhook_addr: Some("127.0.0.1:0".into()),
    };
    let cfg = validate(file, &o, &NoEnv).unwrap();
    match kfsec_server::start_with(cfg, Arc::new(SystemClock), Arc::new(kfsec_pki::OsRng)).await {
        Ok(_) => panic!("kfsec started with {extra}"),
        Err(e) => e.to_string(),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The secret values as kfsec reads them (through the sealing store).
async fn secrets(k: &Kfsec) -> Vec<(&'static str, Vec<u8>)> {
    let get = |key: &'static str| {
        let store = k.running.store.clone();
        async move {
            let kv = store.get(key).await.unwrap().unwrap_or_else(|| panic!("{key} missing"));
            serde_json::from_slice::<serde_json::Value>(&kv.value).unwrap()
        }
    };
    let idp_keys = get("/kfsec/idp/keys").await;
    let pkcs8 = idp_keys["signing"]["pkcs8"].as_str().unwrap().to_owned();
    let gateway = get("/kfsec/gateway/keys").await;
    let session_key = gateway["session"].as_str().unwrap().to_owned();
    let admin = get("/kfsec/idp/users/admin@kfsec.local").await;
    let hash = admin["hash"].as_str().unwrap().to_owned();
    assert!(hash.starts_with("$2"), "{hash}");
    vec![
        ("signing key PKCS#8 (base64)", pkcs8.clone().into_bytes()),
        ("signing key PKCS#8 (DER)", B64.decode(&pkcs8).unwrap()),
        ("session MAC key (base64)", session_key.clone().into_bytes()),
        ("session MAC key", URL_SAFE_NO_PAD.decode(&session_key).unwrap()),
        ("admin password hash", hash.into_bytes()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_and_only_the_right_key_opens_the_store() {
    let keys = tempfile::tempdir().unwrap();
    let (good, good_id) = new_key(keys.path(), "kek");
    let (wrong, wrong_id) = new_key(keys.path(), "other");
    let cfg = sealing(&good, &[]);

    let k = Kfsec::start(&cfg).await;
    let admin_password = k.running.bootstrap_password.clone().unwrap();
    let mut b = k.client();
    let (r, _) = b.login("/app/", USER, PASSWORD).await;
    assert_eq!(r.status(), 200, "logged in through the gatekeeper");
    let cookies = b.cookies.clone();
    let secrets = secrets(&k).await;
    let dir = stop(k).await;

    let file = std::fs::read(dir.path().join("kfsec.redb")).unwrap();
    assert!(
        contains(&file, b"/kfsec/gateway/keys"),
        "the scan reads the store's bytes"
    );
    assert!(contains(&file, b"/kfsec/sealed-check"), "the canary is there");
    for (what, secret) in &secrets {
        assert!(secret.len() >= 32, "{what}");
        assert!(!contains(&file, secret), "the {what} is in the redb file in the clear");
    }

    // The wrong key, or none: the start is refused, naming the store's key id.
    let err = refused_start(dir.path(), &sealing(&wrong, &[])).await;
    assert!(
        err.contains(&format!(
            "the store is sealed with key {good_id}; this replica has keys {wrong_id} (secretsEncryption.keyFile)"
        )),
        "{err}"
    );
    let err = refused_start(dir.path(), "").await;
    assert!(
        err.contains(&good_id) && err.contains("secretsEncryption.keyFile"),
        "{err}"
    );

    // The right key: the session and the store's user work as before.
    let k = Kfsec::start_in(dir, &cfg).await;
    let mut b = k.client();
    b.cookies = cookies.clone();
    let r = b.get("/app/whoami").await;
    assert_eq!(r.status(), 200, "the session from before the restart is accepted");
    let mut admin = k.client();
    let (r, _) = admin
        .login("/app/", kfsec_server::BOOTSTRAP_ADMIN, &admin_password)
        .await;
    assert_eq!(r.status(), 200, "the admin's sealed password hash still checks");

    // Rotation: the new key primary, the old one decrypt-only — one start re-seals everything.
    let (new, new_id) = new_key(keys.path(), "kek-2");
    let dir = stop(k).await;
    let k = Kfsec::start_in(dir, &sealing(&new, &[&good])).await;
    let dir = stop(k).await;
    // The old key alone no longer opens the store; the new one alone does.
    let err = refused_start(dir.path(), &sealing(&good, &[])).await;
    assert!(err.contains(&format!("sealed with key {new_id}")), "{err}");
    let k = Kfsec::start_in(dir, &sealing(&new, &[])).await;
    let mut b = k.client();
    b.cookies = cookies;
    assert_eq!(
        b.get("/app/whoami").await.status(),
        200,
        "the session survives the rotation"
    );
    let mut admin = k.client();
    let (r, _) = admin
        .login("/app/", kfsec_server::BOOTSTRAP_ADMIN, &admin_password)
        .await;
    assert_eq!(r.status(), 200);
    k.running.shutdown().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_kfsec");

fn kfsec_cli(args: &[&std::ffi::OsStr], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut c = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_private_keys_and_opens_a_sealed_store_only_with_its_key() {
    use std::ffi::OsStr;
    use std::os::unix::fs::PermissionsExt;
    let keys = tempfile::tempdir().unwrap();
    let file = keys.path().join("kek.b64");
    let generate = [OsStr::new("secrets"), OsStr::new("generate-key"), file.as_os_str()];
    let (ok, out, err) = kfsec_cli(&generate, "");
    assert!(ok, "{err}");
    let id = SealKey::load(&file).unwrap().id().to_string();
    assert!(out.contains(&format!("key id {id}")), "{out}");
    assert!(out.ends_with("}\n"), "every line ends with a newline: {out:?}");
    assert!(
        std::fs::read_to_string(&file).unwrap().ends_with('\n'),
        "so does the key file"
    );
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let (ok, _, err) = kfsec_cli(&generate, "");
    assert!(!ok && err.contains("exists"), "{err}");
    assert_eq!(
        SealKey::load(&file).unwrap().id().to_string(),
        id,
        "the key was not replaced"
    );
    let (wrong, wrong_id) = new_key(keys.path(), "wrong");

    let k = Kfsec::start(&sealing(&file, &[])).await;
    let dir = stop(k).await;
    let config = |name: &str, yaml: &str| {
        let path = keys.path().join(name);
        std::fs::write(&path, format!("apiVersion: kfsec/v1\n{yaml}")).unwrap();
        path
    };
    let (right_cfg, wrong_cfg, none_cfg) = (
        config("right.yaml", &sealing(&file, &[])),
        config("wrong.yaml", &sealing(&wrong, &[])),
        config("none.yaml", ""),
    );
    // No server runs: the admin commands open the store themselves, through the same seal.
    let admin = |cfg: &Path, args: &[&str]| {
        let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        all.extend([
            OsStr::new("--config"),
            cfg.as_os_str(),
            OsStr::new("--data-dir"),
            dir.path().as_os_str(),
        ]);
        all.iter().map(|s| s.to_os_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<std::ffi::OsString>, stdin: &str| {
        let refs: Vec<&OsStr> = args.iter().map(|s| s.as_os_str()).collect();
        kfsec_cli(&refs, stdin)
    };
    let (ok, out, err) = run(admin(&right_cfg, &["user", "list"]), "");
    assert!(ok && out.contains("admin@kfsec.local"), "{out}{err}");
    let (ok, _, err) = run(
        admin(&right_cfg, &["user", "add", "cli.user@example.org"]),
        "a-cli-password-123\n",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = run(admin(&wrong_cfg, &["user", "list"]), "");
    assert!(
        !ok && err.contains(&format!(
            "the store is sealed with key {id}; this replica has keys {wrong_id}"
        )),
        "{err}"
    );
    let (ok, _, err) = run(admin(&none_cfg, &["user", "list"]), "");
    assert!(!ok && err.contains(&id), "{err}");

    // The user the CLI wrote (its hash sealed by the CLI) logs in on the server.
    let k = Kfsec::start_in(dir, &sealing(&file, &[])).await;
    let mut b = k.client();
    let (r, _) = b.login("/app/", "cli.user@example.org", "a-cli-password-123").await;
    assert_eq!(r.status(), 200);
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_secrets_are_sealed_at_rest_and_kubectl_reads_them_back() {
    let keys = tempfile::tempdir().unwrap();
    let (kek, _) = new_key(keys.path(), "kek");
    let k = Kfsec::start(&sealing(&kek, &[])).await;
    let value = "s3cr3t-minio-password-0123456789abcdef";
    let kubectl = crate::rbac::Kubectl::new(k._dir.path());
    let (code, _, err) = kubectl
        .run(
            &[
                "create",
                "secret",
                "generic",
                "mlpipeline-minio-artifact",
                "-n",
                "default",
                &format!("--from-literal=secretkey={value}"),
            ],
            None,
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = kubectl
        .run(
            &[
                "get",
                "secret",
                "mlpipeline-minio-artifact",
                "-n",
                "default",
                "-o",
                "jsonpath={.data.secretkey}",
            ],
            None,
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(B64.decode(out.trim()).unwrap(), value.as_bytes());
    let dir = stop(k).await;
    let file = std::fs::read(dir.path().join("kfsec.redb")).unwrap();
    assert!(
        contains(&file, b"mlpipeline-minio-artifact"),
        "the scan reads the store's bytes"
    );
    for needle in [value.to_owned(), B64.encode(value)] {
        assert!(
            !contains(&file, needle.as_bytes()),
            "a Secret's data is in the redb file in the clear"
        );
    }
}
