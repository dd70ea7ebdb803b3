//! The PKI replicas share through the store (`trust::shared`): two kfsec on one real etcd serve
//! one CA and one front-door certificate, an admin kubeconfig written by one replica works
//! against the other with real kubectl, a session created before a replica joined is accepted
//! by it, and a CA rotation made on one replica is served by the other without a restart; only
//! the leader renews certificates (the follower serves them, issuing none) and a replica that
//! takes over from a dead leader renews in its turn; a data directory from before the store
//! held the PKI keeps its CA (every kubeconfig made from it keeps working). The etcd tests are
//! skipped (with a message) when etcd is not installed, unless `KFSEC_REQUIRE_ETCD` is set.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use kfsec_store::sealed::SealKey;
use kfsec_store_etcd::testing::{EtcdCluster, etcd_binary};

use crate::harness::*;
use crate::rbac::Kubectl;

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `kubectl --kubeconfig KUBECONFIG --server URL get namespaces -o name`: exit code and output.
async fn namespaces(kubeconfig: &Path, server: &str) -> (i32, String) {
    let (code, out, err) = Kubectl::with_kubeconfig(kubeconfig)
        .run(&["--server", server, "get", "namespaces", "-o", "name"], None)
        .await;
    (code, format!("{out}{err}"))
}

/// Whether a client trusting only `ca_pem` completes a TLS handshake with `base`'s front door.
async fn verifies(ca_pem: &str, base: &str) -> bool {
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    client.get(format!("{base}/dex/healthz")).send().await.is_ok()
}

/// A single real etcd member and the configuration of replicas sharing it under `prefix` (one
/// key file), with `extra` YAML; `None` when etcd is not installed (skipped).
async fn on_etcd(prefix: &str, extra: &str) -> Option<(EtcdCluster, tempfile::TempDir, String)> {
    let bin = etcd_binary().unwrap_or_else(|e| panic!("{e}"))?;
    let cluster = EtcdCluster::single(&bin).await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let kek = keys.path().join("kek");
    SealKey::generate(&kfsec_pki::OsRng).write_new(&kek).unwrap();
    let yaml = format!(
        "store:\n  type: etcd\n  endpoints: [{}]\n  prefix: {prefix}\nsecretsEncryption:\n  keyFile: {}\n{extra}",
        cluster.endpoints().join(", "),
        kek.display()
    );
    Some((cluster, keys, yaml))
}

async fn within(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_etcd_share_the_ca_certificates_and_admin_kubeconfigs() {
    let Some((cluster, _keys, yaml)) = on_etcd("/kfsec-pki-it", "").await else {
        return;
    };
    let a = Kfsec::start(&yaml).await;
    let (a_dir, a_pki) = (a._dir.path().to_path_buf(), a._dir.path().join("pki"));
    let mut browser = a.client();
    let (r, _) = browser.login("/app/x", USER, PASSWORD).await;
    assert_eq!(r.status(), 200, "a login on A");

    // B joins after A's session exists.
    let b = Kfsec::start(&yaml).await;
    let (b_dir, b_pki) = (b._dir.path().to_path_buf(), b._dir.path().join("pki"));
    for f in ["ca.crt", "ca.key", "ca-bundle.crt", "frontdoor.crt", "frontdoor.key"] {
        assert_eq!(
            read(&a_pki, f),
            read(&b_pki, f),
            "{f}: one CA, one front-door certificate"
        );
    }
    assert_eq!(a.running.ca_pem, b.running.ca_pem);
    // In etcd under the prefix, and sealed: no private key in the clear.
    let mut raw = cluster.raw_client().await.unwrap();
    let all = raw
        .get("/kfsec-pki-it/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let pki: Vec<_> = all
        .kvs()
        .iter()
        .filter(|kv| String::from_utf8_lossy(kv.key()).contains("/kfsec/pki/"))
        .collect();
    assert!(pki.len() >= 3, "the CA and the certificates are in etcd");
    for kv in pki {
        let value = String::from_utf8_lossy(kv.value());
        assert!(
            !value.contains("PRIVATE KEY"),
            "{} is sealed",
            String::from_utf8_lossy(kv.key())
        );
    }
    let mut at_b = Browser::new(&b.running.ca_pem, &b.base);
    at_b.cookies = browser.cookies.clone();
    assert_eq!(at_b.get("/app/y").await.status(), 200, "A's session cookie works on B");

    // Each replica's admin kubeconfig (its own client certificate from the shared CA) works
    // against the other.
    let (code, out) = namespaces(&a_dir.join("admin.kubeconfig"), &b.base).await;
    assert_eq!(code, 0, "A's admin kubeconfig against B: {out}");
    assert!(out.contains("namespace/kubeflow"), "{out}");
    let (code, out) = namespaces(&b_dir.join("admin.kubeconfig"), &a.base).await;
    assert_eq!(code, 0, "B's admin kubeconfig against A: {out}");

    // A CA rotation made on A: B serves a chain of the new CA without a restart, and its files
    // and admin kubeconfig follow.
    let old_ca = read(&a_pki, "ca.crt");
    a.running.trust.rotate(Duration::from_secs(600)).await.unwrap();
    let new_ca = read(&a_pki, "ca.crt");
    assert_ne!(new_ca, old_ca);
    assert!(
        within(Duration::from_secs(10), async || verifies(&new_ca, &b.base).await).await,
        "B serves a certificate of A's new CA"
    );
    assert!(
        within(Duration::from_secs(10), async || read(&b_pki, "ca.crt") == new_ca).await,
        "B's pki/ca.crt follows"
    );
    assert_eq!(read(&b_pki, "ca-bundle.crt"), read(&a_pki, "ca-bundle.crt"));
    assert!(
        verifies(&old_ca, &b.base).await,
        "clients of the old CA verify through the window"
    );
    assert!(
        within(Duration::from_secs(10), async || {
            namespaces(&b_dir.join("admin.kubeconfig"), &a.base).await.0 == 0
                && read(&b_dir, "admin.kubeconfig").contains(&{
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.encode(read(&b_pki, "ca-bundle.crt"))
                })
        })
        .await,
        "B's admin kubeconfig is rewritten for the new CA set and works against A"
    );
    let (code, out) = namespaces(&a_dir.join("admin.kubeconfig"), &b.base).await;
    assert_eq!(code, 0, "A's rewritten admin kubeconfig against B: {out}");
    b.running.shutdown().await;
    a.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_renews_the_followers_serve_its_certificates_and_a_new_leader_takes_over() {
    // 9 s certificates: the leader renews them with 3 s to 2.25 s left (passes every 0.75 s); a
    // follower would renew one itself only with 1.5 s left.
    let Some((_cluster, _keys, yaml)) = on_etcd("/kfsec-renew-it", "pki:\n  leafLifetime: 9s\n").await else {
        return;
    };
    let a = Kfsec::start(&yaml).await;
    let gauge = async |k: &Kfsec, want: i64, limit: Duration| {
        within(limit, async || crate::leader::leader_gauge(k).await == Some(want)).await
    };
    assert!(gauge(&a, 1, Duration::from_secs(5)).await, "the first replica leads");
    let b = Kfsec::start(&yaml).await;
    assert!(gauge(&b, 0, Duration::from_secs(3)).await, "the second follows");
    let ca = a.running.ca_pem.clone();
    let served = async |k: &Kfsec| {
        crate::proxying::served_cert(&ca, k.running.https_addr, "localhost")
            .await
            .serial_hex
    };
    let first = served(&a).await;
    assert_eq!(served(&b).await, first, "one front-door certificate");
    let (a_issued, b_issued) = (a.running.trust.issued(), b.running.trust.issued());
    // Two renewal rounds on the leader, each served by the follower, which issues nothing.
    let mut seen = vec![first];
    for round in 0..2 {
        let before = seen.last().unwrap().clone();
        let mut renewed = None;
        assert!(
            within(Duration::from_secs(12), async || {
                let (sa, sb) = (served(&a).await, served(&b).await);
                if sa == sb && sa != before {
                    renewed = Some(sa);
                    true
                } else {
                    false
                }
            })
            .await,
            "round {round}: the follower serves the leader's renewed certificate"
        );
        seen.push(renewed.unwrap());
    }
    assert!(
        a.running.trust.issued() >= a_issued + 2,
        "the leader renewed: {} → {}",
        a_issued,
        a.running.trust.issued()
    );
    assert_eq!(
        b.running.trust.issued(),
        b_issued,
        "the follower issued no certificate (it wrote nothing under /kfsec/pki/)"
    );
    let on_file = |k: &Kfsec| {
        kfsec_pki::parse_cert_pem(&read(&k._dir.path().join("pki"), "frontdoor.crt"))
            .unwrap()
            .serial_hex
    };
    assert!(
        within(Duration::from_secs(5), async || on_file(&b) == on_file(&a)).await,
        "the follower's pki/frontdoor.crt follows"
    );
    let records = a
        .running
        .store
        .list("/kfsec/pki/certs/frontdoor.crt", 0, None)
        .await
        .unwrap();
    assert_eq!(
        records.items.len(),
        1,
        "one stored front-door certificate for the two replicas"
    );

    // The leader dies without handing over: B leads within the takeover time and renews.
    let last = served(&b).await;
    a.running.abandon();
    assert!(
        gauge(&b, 1, Duration::from_secs(10)).await,
        "B leads within 10 s of the leader's death"
    );
    let at_takeover = b.running.trust.issued();
    let mut renewed = None;
    assert!(
        within(Duration::from_secs(9), async || {
            let s = served(&b).await;
            if s != last && b.running.trust.issued() > at_takeover {
                renewed = Some(s);
                true
            } else {
                false
            }
        })
        .await,
        "the new leader renews (within one lifetime of its takeover)"
    );
    b.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_from_before_the_shared_pki_keeps_its_ca() {
    let k = Kfsec::start("").await;
    let pki = k._dir.path().join("pki");
    let ca = read(&pki, "ca.crt");
    let frontdoor = read(&pki, "frontdoor.crt");
    let kubeconfig = tempfile::tempdir().unwrap();
    let old_kubeconfig = kubeconfig.path().join("admin.kubeconfig");
    std::fs::copy(k._dir.path().join("admin.kubeconfig"), &old_kubeconfig).unwrap();
    let dir = k.stop().await;
    // The store of a kfsec from before: no PKI records, only the files.
    let mut removed = 0;
    for _ in 0..50 {
        match kfsec_server::open_store(
            &kfsec_server::DataDir(dir.path().to_path_buf()),
            std::sync::Arc::new(kfsec_types::SystemClock),
        ) {
            Ok(store) => {
                use kfsec_store::Store;
                let page = store.list("/kfsec/pki/", 0, None).await.unwrap();
                for kv in page.items {
                    store.delete(&kv.key, None).await.unwrap();
                    removed += 1;
                }
                break;
            }
            // The stopped server's last tasks are still letting go of the file.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(removed >= 2, "the CA and the front-door certificate were in the store");
    let k = Kfsec::start_in(dir, "").await;
    assert_eq!(read(&pki, "ca.crt"), ca, "the CA is kept, not minted anew");
    assert_eq!(
        read(&pki, "frontdoor.crt"),
        frontdoor,
        "so is the front-door certificate"
    );
    let (code, out) = namespaces(&old_kubeconfig, &k.base).await;
    assert_eq!(code, 0, "an admin kubeconfig from before works: {out}");
    let stored = k.running.store.get("/kfsec/pki/ca").await.unwrap();
    assert!(stored.is_some(), "the CA is in the store now");
    k.running.shutdown().await;
}
