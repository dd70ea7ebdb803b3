//! One leader for the singleton work: `kfsec_leader` on `/metrics` is 1 on a single replica (redb:
//! won at once); two replicas on one real etcd — exactly one leads and runs the profile
//! controller, and when it shuts down the other leads at once and reconciles the Profiles
//! created meanwhile. The etcd test is skipped (said on stderr) when etcd is not installed,
//! unless `KFSEC_REQUIRE_ETCD` is set.
#![allow(clippy::disallowed_methods)] // polls real time while real replicas elect and hand over

use std::path::Path;
use std::time::{Duration, Instant};

use kfsec_store::sealed::SealKey;
use kfsec_store_etcd::testing::{EtcdCluster, etcd_binary};
use serde_json::{Value, json};

use crate::harness::*;

/// The value of `kfsec_leader` on the admin listener's `/metrics`.
pub async fn leader_gauge(k: &Kfsec) -> Option<i64> {
    let m = reqwest::get(format!("http://{}/metrics", k.running.admin_addr))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    m.lines()
        .find_map(|l| l.strip_prefix("kfsec_leader "))
        .and_then(|v| v.trim().parse().ok())
}

async fn gauge_becomes(k: &Kfsec, want: i64, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if leader_gauge(k).await == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_single_replica_leads_at_once() {
    let k = Kfsec::start("").await;
    assert!(
        gauge_becomes(&k, 1, Duration::from_secs(3)).await,
        "kfsec_leader 1 on a single replica: {:?}",
        leader_gauge(&k).await
    );
    let m = metrics_text(&k).await;
    assert!(m.contains("# TYPE kfsec_leader gauge"), "{m}");
    k.running.shutdown().await;
}

fn profile(name: &str) -> Value {
    json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": name},
           "spec": {"owner": {"kind": "User", "name": "alice@example.com"}}})
}

async fn create_profile(k: &Kfsec, name: &str) {
    let r = kfsec_api::ApiServer::resource("kubeflow.org", "v1", "profiles").unwrap();
    k.running.api.create_object(r, "", profile(name)).await.unwrap();
}

async fn namespace_exists(k: &Kfsec, name: &str) -> bool {
    let r = kfsec_api::ApiServer::resource("", "v1", "namespaces").unwrap();
    matches!(k.running.api.get_object(r, "", name).await, Ok(Some(_)))
}

async fn namespace_within(k: &Kfsec, name: &str, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if namespace_exists(k, name).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn etcd_yaml(key: &Path, endpoints: &[String]) -> String {
    format!(
        "store:\n  type: etcd\n  endpoints: [{}]\n  prefix: /kfsec-leader\nsecretsEncryption:\n  keyFile: {}\n",
        endpoints.join(", "),
        key.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_etcd_one_leads_and_a_shutdown_hands_over_at_once() {
    let Some(bin) = etcd_binary().unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    let cluster = EtcdCluster::single(&bin).await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("kek");
    SealKey::generate(&kfsec_pki::OsRng).write_new(&key).unwrap();
    let yaml = etcd_yaml(&key, &cluster.endpoints());
    let a = Kfsec::start(&yaml).await;
    assert!(
        gauge_becomes(&a, 1, Duration::from_secs(5)).await,
        "the first replica leads"
    );
    let b = Kfsec::start(&yaml).await;
    // b follows: the lease is a's and a renews it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(leader_gauge(&b).await, Some(0), "exactly one leader");
    assert_eq!(leader_gauge(&a).await, Some(1));
    // The controller runs on the leader: a Profile written through the follower is reconciled.
    create_profile(&b, "written-on-b").await;
    assert!(namespace_within(&b, "written-on-b", Duration::from_secs(10)).await);
    // A graceful shutdown of the leader (a rolling restart) hands over at once.
    a.running.shutdown().await;
    let handed = Instant::now();
    assert!(
        gauge_becomes(&b, 1, Duration::from_secs(3)).await,
        "b leads after a's shutdown"
    );
    assert!(handed.elapsed() < Duration::from_secs(3));
    create_profile(&b, "after-handover").await;
    assert!(
        namespace_within(&b, "after-handover", Duration::from_secs(10)).await,
        "the controller resumed on b"
    );
    b.running.shutdown().await;
}
