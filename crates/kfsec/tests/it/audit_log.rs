//! The audit log as an operator meets it: the real binary writes it (`--audit-log-path`),
//! `kfsec audit verify` says intact, then names the line of each tampering (modified, deleted,
//! reordered, inserted, truncated tail); `kfsec audit query` answers without jq; a kill -9
//! leaves a log that verifies intact or reports exactly a truncated tail, and the restarted
//! server continues the chain; a server killed again and again before its first checkpoint
//! leaves a log that verifies, with only the last run's lines unsigned. The webhook backend: a collector that stops answering does not
//! slow requests, and the drops are counted.

#![allow(clippy::disallowed_methods)] // waits for the real binary against a monotonic deadline

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_kfsec");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kfsec serve` with `config` and `--audit-log-path log`, once ready.
fn serve(dir: &Path, port: u16, config: &str, log: &Path) -> Proc {
    let cfg = dir.join("config.yaml");
    std::fs::write(&cfg, format!("apiVersion: kfsec/v1\n{config}")).unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--https-addr",
            &format!("127.0.0.1:{port}"),
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .args(["--webhook-addr", "127.0.0.1:0", "--audit-log-path"])
        .arg(log)
        .env("KFSEC_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "kfsec did not become ready");
        let mut l = String::new();
        assert!(reader.read_line(&mut l).unwrap() > 0, "kfsec exited early");
        if l.starts_with("kfsec ready:") {
            break;
        }
    }
    std::thread::spawn(move || for _ in reader.lines() {});
    Proc(child)
}

fn audit(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(BIN)
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn client(dir: &Path) -> reqwest::Client {
    http_client(&std::fs::read_to_string(dir.join("data/pki/ca-bundle.crt")).unwrap())
}

/// Requests that every surface answers: discovery, an unauthenticated API call (401), a
/// failed password login.
async fn drive(c: &reqwest::Client, port: u16, n: usize) {
    let base = format!("https://localhost:{port}");
    for i in 0..n {
        let path = match i % 3 {
            0 => "/dex/.well-known/openid-configuration".to_owned(),
            1 => format!("/api/v1/namespaces/team-{i}/configmaps"),
            _ => "/dex/keys".to_owned(),
        };
        let _ = c.get(format!("{base}{path}")).send().await.unwrap();
    }
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_for_lines(p: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines(p).len() < n {
        assert!(
            Instant::now() < deadline,
            "the audit log has {} lines, want {n}",
            lines(p).len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn term(p: &mut Proc) {
    let _ = Command::new("kill").args(["-TERM", &p.0.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "kfsec did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tampered copy of `src` in its own directory (no rotated siblings), named `copy.log`.
fn tampered(work: &Path, name: &str, src: &[String], f: impl FnOnce(&mut Vec<String>)) -> PathBuf {
    let d = work.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let mut l = src.to_vec();
    f(&mut l);
    let p = d.join("copy.log");
    std::fs::write(&p, l.iter().map(|x| format!("{x}\n")).collect::<String>()).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_each_tampering_of_a_log_written_by_kfsec() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("logs/audit.log");
    let mut p = serve(dir.path(), port, "audit:\n  log:\n    checkpointLines: 5\n", &log);
    drive(&client(dir.path()), port, 24).await;
    wait_for_lines(&log, 24);
    term(&mut p);

    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);
    let key = dir.path().join("data/audit/signing-key.pk8");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

    let log_s = log.to_str().unwrap();
    let (ok, out, err) = audit(dir.path(), &["verify", log_s]);
    assert!(ok, "{out}{err}");
    let first = out.lines().next().unwrap_or_default();
    let orig = lines(&log);
    let checkpoints = orig.iter().filter(|l| l.contains(r#""verb":"checkpoint""#)).count();
    assert!(checkpoints >= 4, "{checkpoints} checkpoints in {} lines", orig.len());
    assert!(
        first.starts_with(&format!(
            "intact: {} events ({checkpoints} checkpoints, signed by key ",
            orig.len() - checkpoints
        )),
        "{out}"
    );
    // Every line is a Kubernetes audit Event.
    for l in &orig {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(v["kind"], "Event");
        assert!(
            v["annotations"]["kfsec.io/chain-hash"]
                .as_str()
                .is_some_and(|h| h.len() == 64),
            "{l}"
        );
    }

    let work = dir.path().join("tampered");
    let check = |path: PathBuf, line: usize, words: &str| {
        let (ok, out, err) = audit(dir.path(), &["verify", path.to_str().unwrap()]);
        assert!(!ok, "tampering not detected ({words}): {out}{err}");
        let want = format!("{}:{line}: ", path.display());
        assert!(
            out.starts_with(&want) && out.contains(words),
            "want {want}…{words}, got {out}{err}"
        );
    };
    // A line of a request in the middle: its user agent or URI changed.
    let target = orig
        .iter()
        .position(|l| l.contains("/api/v1/namespaces/team-"))
        .unwrap();
    check(
        tampered(&work, "modified", &orig, |l| {
            l[target] = l[target].replace("team-", "team-X")
        }),
        target + 1,
        "modified",
    );
    check(tampered(&work, "deleted", &orig, |l| drop(l.remove(7))), 8, "deleted");
    check(tampered(&work, "reordered", &orig, |l| l.swap(9, 10)), 10, "reordered");
    check(
        tampered(&work, "inserted", &orig, |l| l.insert(12, orig[3].clone())),
        13,
        "inserted",
    );
    check(
        tampered(&work, "foreign", &orig, |l| {
            l.insert(
                2,
                r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","verb":"get"}"#.into(),
            )
        }),
        3,
        "inserted",
    );
    // Truncated tail: the last line cut in the middle.
    let cut = tampered(&work, "cut", &orig, |_| {});
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 30]).unwrap();
    check(cut, orig.len(), "truncated tail");
    // The wrong key: the first checkpoint is by an unknown key.
    let other = dir.path().join("other.pub");
    std::fs::write(
        &other,
        "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let (ok, out, _) = audit(dir.path(), &["verify", log_s, "--key", other.to_str().unwrap()]);
    assert!(!ok && out.contains("unknown key"), "{out}");

    // query: the refused API calls, without jq.
    let (ok, out, err) = audit(dir.path(), &["query", log_s, "--decision", "deny"]);
    assert!(ok, "{err}");
    assert!(
        out.lines().count() >= 8 && out.lines().all(|l| l.contains(" deny")),
        "{out}"
    );
    assert!(
        out.contains("/api/v1/namespaces/team-1/configmaps") || out.contains("configmaps"),
        "{out}"
    );
    let (ok, out, _) = audit(dir.path(), &["query", log_s, "--since", "1h", "-o", "json"]);
    assert!(ok);
    assert_eq!(out.lines().count(), orig.len() - checkpoints, "{out}");
    let (ok, _, err) = audit(dir.path(), &["query", log_s, "--since", "yesterday"]);
    assert!(
        !ok && err.starts_with("kfsec: --since") && err.lines().count() == 1,
        "{err}"
    );
    // No files: the configured path (here the default under the data dir, empty of logs).
    let (ok, _, err) = audit(dir.path(), &["verify", "/nonexistent/audit.log"]);
    assert!(!ok && err.lines().count() == 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_loses_at_most_the_tail_and_the_restart_continues_the_chain() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("logs/audit.log");
    let mut p = serve(dir.path(), port, "", &log);
    let c = client(dir.path());
    // Requests in flight while the process is killed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let c = c.clone();
        let stop = stop.clone();
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..8 {
                    let c = c.clone();
                    set.spawn(async move {
                        let _ = c.get(format!("https://localhost:{port}/dex/keys")).send().await;
                    });
                }
                while set.join_next().await.is_some() {}
            }
        }
    });
    wait_for_lines(&log, 40);
    p.0.kill().unwrap();
    p.0.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.await;
    let log_s = log.to_str().unwrap();
    let (ok, out, err) = audit(dir.path(), &["verify", log_s]);
    let n = std::fs::read(&log)
        .unwrap()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert!(
        ok && out.starts_with("intact: ") || !ok && out.starts_with(&format!("{log_s}:{n}: truncated tail")),
        "{out}{err}"
    );
    if ok {
        // Killed before a checkpoint signed the newest lines: said so.
        assert!(out.contains("not yet signed") || out.contains("checkpoints"), "{out}");
    }
    let before = lines(&log).len();

    // The restart resumes the chain (sequence numbers continue) and verify is intact again.
    let mut p = serve(dir.path(), port, "", &log);
    drive(&c, port, 3).await;
    wait_for_lines(&log, before + 3);
    term(&mut p);
    let (ok, out, err) = audit(dir.path(), &["verify", log_s]);
    assert!(ok && out.starts_with("intact: "), "{out}{err}");
    let seqs: Vec<u64> = lines(&log)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["annotations"]["kfsec.io/chain-seq"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_before_the_first_checkpoint_still_verifies() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("logs/audit.log");
    let config = "audit:\n  log:\n    checkpointLines: 5\n    checkpointInterval: 1h\n";
    // Five runs, each killed after 3 requests (fewer than checkpointLines): 15 lines no running
    // process signed, more than the 2 × 5 verify accepts unless each start signs what the
    // previous run left.
    for _ in 0..5 {
        let mut p = serve(dir.path(), port, config, &log);
        let before = lines(&log).len();
        drive(&client(dir.path()), port, 3).await;
        wait_for_lines(&log, before + 3);
        std::thread::sleep(Duration::from_millis(200));
        p.0.kill().unwrap();
        p.0.wait().unwrap();
    }
    let all = lines(&log);
    let unsigned = all
        .iter()
        .rev()
        .take_while(|l| !l.contains(r#""resource":"auditcheckpoints""#))
        .count();
    assert!((3..5).contains(&unsigned), "{unsigned} lines after the last checkpoint");
    let (ok, out, err) = audit(dir.path(), &["verify", log.to_str().unwrap()]);
    assert!(ok && out.starts_with("intact: "), "{out}{err}");
    // What a kill -9 left unsigned is said, exactly.
    assert!(
        out.contains(&format!(
            "the last {unsigned} events follow the last checkpoint: chained but not yet signed"
        )),
        "{out}"
    );
}

#[tokio::test]
async fn a_webhook_that_stops_answering_does_not_slow_requests_and_drops_are_counted() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // A collector that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/audit", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let k = Kfsec::start(&format!("audit:\n  log:\n    path: \"\"\n  webhook:\n    url: {url}\n")).await;
    let c = k.client().http;
    let base = k.base.clone();
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..16 {
        let c = c.clone();
        let base = base.clone();
        set.spawn(async move {
            for _ in 0..(12_000 / 16 + w % 2) {
                let r = c
                    .get(format!("{base}/dex/.well-known/openid-configuration"))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                // Read, as clients do: an HTTP/2 client that drops unread answers resets their
                // streams, and reqwest's gives up the connection after 1,024 such resets.
                r.bytes().await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let took = started.elapsed();
    // 12,000 requests do not wait 5 s per batch on the dead collector.
    assert!(took < Duration::from_secs(60), "{took:?}");
    let audit = k.running.audit.clone().expect("audit on");
    let dropped = audit.metrics().dropped_count("webhook");
    assert!(dropped > 0, "nothing dropped");
    let metrics = metrics_text(&k).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kfsec_audit_events_dropped_total{backend=\"webhook\"}")),
        "{metrics}"
    );
    held.abort();
}
