//! The leader election ([`kfsec_store::leader`]) on a real etcd member, each candidate on its
//! own connection, in real time with the default timing; and the leader's upkeep through the
//! store contract.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use kfsec_store::leader::{Elector, LEADER_KEY, LeaderConfig, Leadership, LeaseRecord};
use kfsec_store::{Store, StoreError};
use kfsec_types::SystemClock;

use crate::testing::{EtcdCluster, etcd_binary};
use crate::{EtcdConfig, EtcdStore, connect};

async fn single() -> Option<EtcdCluster> {
    let bin = etcd_binary().unwrap()?;
    Some(EtcdCluster::single(&bin).await.unwrap())
}

async fn store(cluster: &EtcdCluster) -> Arc<EtcdStore> {
    Arc::new(
        connect(
            &EtcdConfig::new(cluster.endpoints(), "/kfsec"),
            Arc::new(SystemClock),
            crate::tests::rng(),
        )
        .await
        .unwrap(),
    )
}

async fn candidate(cluster: &EtcdCluster, name: &str) -> Leadership {
    Elector::new(
        store(cluster).await,
        LeaderConfig::new(name),
        Arc::new(SystemClock),
        crate::tests::rng(),
    )
    .unwrap()
    .spawn()
}

/// Waits until one of `cands` leads; returns its index and how long that took.
async fn first_leader(cands: &[&Leadership], within: Duration) -> (usize, Duration) {
    #[allow(clippy::disallowed_methods)] // a test's stopwatch
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if let Some(i) = cands.iter().position(|c| c.is_leader()) {
            return (i, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no leader within {within:?}");
}

#[tokio::test]
async fn a_killed_leader_is_replaced_within_ten_seconds() {
    let Some(cluster) = single().await else { return };
    let a = candidate(&cluster, "replica-a").await;
    let b = candidate(&cluster, "replica-b").await;
    let (first, _) = first_leader(&[&a, &b], Duration::from_secs(5)).await;
    // Let the follower see a few renewals; exactly one leads.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(a.is_leader() ^ b.is_leader(), "exactly one leader");
    let (leader, follower) = if first == 0 { (a, b) } else { (b, a) };
    let old = leader.identity().to_owned();
    // kill -9 of the leader's election: no renewal, no release.
    drop(leader);
    let (_, took) = first_leader(&[&follower], Duration::from_secs(12)).await;
    assert!(took <= Duration::from_secs(10), "took over after {took:?}");
    // Never before the lease since the last renewal, which was at most one retry period
    // before the kill.
    let cfg = LeaderConfig::new("x");
    let earliest = cfg.lease_duration.saturating_sub(cfg.retry_period);
    assert!(took >= earliest, "took over after only {took:?} (< {earliest:?})");
    let etcd = store(&cluster).await;
    let rec = LeaseRecord::read(etcd.as_ref(), LEADER_KEY).await.unwrap().unwrap();
    assert_eq!(rec.holder_identity, follower.identity());
    assert_ne!(rec.holder_identity, old);
    assert_eq!(rec.leader_transitions, 1);
    follower.release().await;
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    let Some(cluster) = single().await else { return };
    let a = candidate(&cluster, "replica-a").await;
    first_leader(&[&a], Duration::from_secs(5)).await;
    let b = candidate(&cluster, "replica-b").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(a.is_leader() && !b.is_leader());
    a.release().await;
    let (_, took) = first_leader(&[&b], Duration::from_secs(5)).await;
    assert!(took <= Duration::from_millis(1_500), "took over after {took:?}");
    b.release().await;
}

#[tokio::test]
async fn the_leaders_upkeep_sweeps_and_compacts_through_the_contract() {
    let Some(cluster) = single().await else { return };
    let etcd = store(&cluster).await;
    let s: &dyn Store = etcd.as_ref();
    let before = s.put("/up/a", b"1".to_vec(), None).await.unwrap();
    let now = s.put("/up/a", b"2".to_vec(), None).await.unwrap();
    let upkeep = s.upkeep().expect("etcd is a shared store");
    upkeep.compact_before(now).await.unwrap();
    // Compacting again at the same revision is no error.
    upkeep.compact_before(now).await.unwrap();
    assert!(matches!(
        s.watch("/up/", before - 1).await,
        Err(StoreError::Compacted { .. })
    ));
    assert_eq!(upkeep.sweep().await.unwrap(), 0);
}
