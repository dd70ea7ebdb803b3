//! kfsec on etcd (`store: {type: etcd}`), on real `/usr/bin/etcd` members: logins and API
//! writes land under the prefix and nowhere else, and the CLI administers the cluster without a
//! local server; etcd fully down → `/readyz` 503 naming etcd, an API write answered 503
//! (Kubernetes `Status` ServiceUnavailable) within 10 s, a cached session serving only until
//! `store.staleLimit` and then failing closed (503); etcd back → ready again by itself; an
//! unreachable endpoint at startup → not ready (`/readyz` names the endpoint), every attempt
//! logged naming it, ready once etcd starts. Skipped (with a message) when etcd is not
//! installed, unless `KFSEC_REQUIRE_ETCD` is set.
// Polling deadlines and the 10 s bound on an answer are monotonic IO timing, not kfsec's time.
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kfsec_server::config::{Env, Overrides, parse, validate};
use kfsec_store::sealed::SealKey;
use kfsec_store_etcd::testing::{EtcdCluster, etcd_binary};
use kfsec_types::SystemClock;
use serde_json::{Value, json};

use crate::harness::*;
use crate::sec_logs::admin_client;

/// etcd's binary, or `None` (the test is skipped, said on stderr).
fn etcd() -> Option<PathBuf> {
    etcd_binary().unwrap_or_else(|e| panic!("{e}"))
}

/// One etcd member on fixed loopback ports and a data directory of its own, which can be
/// killed (SIGKILL) and started again on the same ports and data.
struct Member {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client: String,
    peer: String,
    child: Option<Child>,
}

impl Member {
    fn new(bin: PathBuf) -> Self {
        Self {
            bin,
            dir: tempfile::tempdir().unwrap(),
            client: format!("http://127.0.0.1:{}", free_port()),
            peer: format!("http://127.0.0.1:{}", free_port()),
            child: None,
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .env_clear()
            .args(["--name", "m1", "--data-dir"])
            .arg(self.dir.path().join("m1.etcd"))
            .args([
                "--listen-client-urls",
                &self.client,
                "--advertise-client-urls",
                &self.client,
            ])
            .args([
                "--listen-peer-urls",
                &self.peer,
                "--initial-advertise-peer-urls",
                &self.peer,
            ])
            .args(["--initial-cluster", &format!("m1={}", self.peer)])
            .args(["--initial-cluster-token", &format!("kfsec-it-{}", std::process::id())])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `store:` and `secretsEncryption:` settings for `endpoints` (a new key file in `dir`).
fn etcd_yaml(dir: &Path, endpoints: &[String], stale_limit: &str) -> String {
    let key = dir.join(format!("kek-{}", free_port()));
    SealKey::generate(&kfsec_pki::OsRng).write_new(&key).unwrap();
    format!(
        "store:\n  type: etcd\n  endpoints: [{}]\n  prefix: /kfsec-it\n  staleLimit: {stale_limit}\nsecretsEncryption:\n  keyFile: {}\n",
        endpoints.join(", "),
        key.display()
    )
}

async fn readyz(admin: std::net::SocketAddr) -> (u16, String) {
    match reqwest::get(format!("http://{admin}/readyz")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Polls until `f` holds (every 100 ms), for at most `within`.
async fn until<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Polls `GET path` with the browser's session until it answers `want`, for at most `within`.
async fn get_until(b: &mut Browser, path: &str, want: u16, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if b.get(path).await.status() == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Creates KFP experiment `name` in `default` with the admin kubeconfig's certificate.
async fn write_experiment(k: &Kfsec, name: &str) -> (u16, Value) {
    let r = admin_client(k._dir.path())
        .post(format!("{}/pipeline/apis/v1beta1/experiments", k.base))
        .json(&json!({"name": name, "resource_references": [
            {"key": {"type": "NAMESPACE", "id": "default"}, "relationship": "OWNER"}]}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Redeems a code that was never issued at `/dex/token` (the code is looked up in the store).
async fn bogus_code(k: &Kfsec) -> (u16, Value) {
    rp_token(
        k,
        vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", "never-issued-code-0123456789".to_owned()),
            ("redirect_uri", "https://rp.example/cb".to_owned()),
        ],
    )
    .await
}

/// A browser without a session logging in (the password check reads the user and the login
/// counters from the store): the status and the page.
async fn start_login(k: &Kfsec) -> (u16, String) {
    let mut b = k.client();
    let r = b.get("/app/new").await;
    assert_eq!(r.status(), 302);
    let (form, form_url) = b.follow(location(&r)).await;
    assert_eq!(form.status(), 200, "the login form needs no store");
    let r = b.post_form(&form_url, &[("login", USER), ("password", PASSWORD)]).await;
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// Creates ConfigMap `name` in `default` with the admin kubeconfig's certificate: the status
/// and the JSON answer.
async fn write_configmap(k: &Kfsec, name: &str) -> (u16, Value) {
    let r = admin_client(k._dir.path())
        .post(format!("{}/api/v1/namespaces/default/configmaps", k.base))
        .json(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_api_writes_and_the_cli_work_on_etcd_under_the_prefix_only() {
    let Some(bin) = etcd() else { return };
    let cluster = EtcdCluster::single(&bin).await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let yaml = etcd_yaml(keys.path(), &cluster.endpoints(), "60s");
    let k = Kfsec::start(&yaml).await;
    assert_eq!(readyz(k.running.admin_addr).await, (200, "ready".into()));

    let mut b = k.client();
    let (r, _) = b.login("/app/x", USER, PASSWORD).await;
    assert_eq!(r.status(), 200, "a login on etcd reaches the upstream");
    assert_eq!(b.get("/app/y").await.status(), 200, "and the session holds");
    let (code, v) = write_configmap(&k, "on-etcd").await;
    assert_eq!(code, 201, "{v}");

    // Everything kfsec wrote is under its prefix; the ConfigMap and the session are there.
    let mut raw = cluster.raw_client().await.unwrap();
    let all = raw
        .get(
            vec![0u8],
            Some(etcd_client::GetOptions::new().with_from_key().with_keys_only()),
        )
        .await
        .unwrap();
    let keys_written: Vec<String> = all
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    assert!(keys_written.len() > 10, "{keys_written:?}");
    assert!(
        keys_written.iter().all(|key| key.starts_with("/kfsec-it/")),
        "a key outside the prefix: {keys_written:?}"
    );
    assert!(keys_written.iter().any(|key| key.contains("on-etcd")));
    assert!(
        keys_written
            .iter()
            .any(|key| key.starts_with("/kfsec-it/kfsec/sessions/"))
    );

    // The CLI on a machine with no data directory administers the cluster directly.
    let cfg = k._dir.path().join("etcd.yaml");
    std::fs::write(&cfg, format!("apiVersion: kfsec/v1\n{yaml}")).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kfsec"))
        .args(["user", "list", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(keys.path().join("no-such-dir"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("admin@kfsec.local"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    k.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_fails_writes_and_stale_sessions_closed_and_recovers_by_itself() {
    let Some(bin) = etcd() else { return };
    let mut m = Member::new(bin);
    m.start();
    let yaml = etcd_yaml(m.dir.path(), std::slice::from_ref(&m.client), "3s");
    let k = Kfsec::start(&yaml).await;
    let admin = k.running.admin_addr;
    let mut b = k.client();
    assert_eq!(b.login("/app/x", USER, PASSWORD).await.0.status(), 200);
    assert_eq!(write_configmap(&k, "before").await.0, 201);

    assert_eq!(write_experiment(&k, "before").await.0, 200);
    assert_eq!(bogus_code(&k).await.0, 400);

    m.kill();
    // Within staleLimit the cached session still serves…
    assert_eq!(
        b.get("/app/cached").await.status(),
        200,
        "cached session within staleLimit"
    );
    // …but writes need etcd: 503 in each protocol's format, within 10 s.
    let t = Instant::now();
    let ((code, v), (kfp_code, kfp), (oauth_code, oauth), (page_code, page)) = tokio::join!(
        write_configmap(&k, "during"),
        write_experiment(&k, "during"),
        bogus_code(&k),
        start_login(&k)
    );
    let took = t.elapsed();
    assert!(
        page_code == 503 && page.contains("<html"),
        "login page: {page_code} {page}"
    );
    assert_eq!((kfp_code, kfp["code"].as_u64()), (503, Some(14)), "KFP: {kfp}");
    assert_eq!(
        (oauth_code, oauth["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "OAuth2: {oauth}"
    );
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["reason"], "ServiceUnavailable", "{v}");
    assert!(v["message"].as_str().unwrap().contains("unavailable"), "{v}");
    eprintln!("write during the outage answered in {took:?}: {v}");
    assert!(took < Duration::from_secs(10), "write answered after {took:?}");
    let (code, body) = readyz(admin).await;
    assert!(code == 503 && body.contains("etcd"), "{code} {body}");
    // Past staleLimit after the last contact the cached session fails closed.
    assert!(
        get_until(&mut b, "/app/stale", 503, Duration::from_secs(5)).await,
        "a cached session outlived staleLimit"
    );
    let (code, v) = write_configmap(&k, "stale").await;
    assert_eq!((code, v["reason"].as_str()), (503, Some("ServiceUnavailable")), "{v}");

    m.start();
    assert!(
        until(Duration::from_secs(15), || async { readyz(admin).await.0 == 200 }).await,
        "not ready again after etcd came back: {:?}",
        readyz(admin).await
    );
    assert!(
        get_until(&mut b, "/app/back", 200, Duration::from_secs(5)).await,
        "the session serves again"
    );
    assert_eq!(write_configmap(&k, "after").await.0, 201);
    k.stop().await;
}

/// A log sink for one test's tracing output.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct NoEnv;
impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

// Current-thread: the start runs on this thread, so the thread-local log capture sees it.
#[tokio::test]
async fn an_unreachable_etcd_at_startup_is_retried_not_ready_and_logged_until_it_answers() {
    let Some(bin) = etcd() else { return };
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut m = Member::new(bin);
    let data = tempfile::tempdir().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let yaml = format!(
        "apiVersion: kfsec/v1\n{}",
        etcd_yaml(m.dir.path(), std::slice::from_ref(&m.client), "60s")
    );
    let o = Overrides {
        data_dir: Some(data.path().to_path_buf()),
        https_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some(admin.to_string()),
        webhook_addr: Some("127.0.0.1:0".into()),
    };
    let cfg = validate(parse(Path::new("etcd.yaml"), &yaml).unwrap(), &o, &NoEnv).unwrap();
    let start = tokio::spawn(kfsec_server::start_with(
        cfg,
        Arc::new(SystemClock),
        Arc::new(kfsec_pki::OsRng),
    ));

    // Not ready, saying why, while alive.
    assert!(
        until(Duration::from_secs(5), || async {
            let (code, body) = readyz(admin).await;
            code == 503 && body.contains(&m.client) && body.contains("no etcd endpoint reachable")
        })
        .await,
        "{:?}",
        readyz(admin).await
    );
    let healthz = reqwest::get(format!("http://{admin}/healthz")).await.unwrap();
    assert_eq!(healthz.status(), 200);
    assert!(
        until(Duration::from_secs(5), || async {
            logs.text()
                .lines()
                .filter(|l| l.contains("etcd endpoint not reachable") && l.contains(&m.client))
                .count()
                >= 3
        })
        .await,
        "each attempt is logged naming the endpoint: {}",
        logs.text()
    );
    assert!(!start.is_finished());

    m.start();
    let running = tokio::time::timeout(Duration::from_secs(20), start)
        .await
        .expect("kfsec did not start once etcd answered")
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(readyz(admin).await, (200, "ready".into()));
    running.shutdown().await;
}
