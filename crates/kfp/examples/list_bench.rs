//! Namespace-listing benchmark: `GET /pipeline/apis/v2beta1/experiments?namespace=target`
//! (one page of 20) when the store holds 1,000 experiments in total, against the same listing
//! when it holds 100,000 over 1,000 namespaces. The target namespace holds 20 experiments in
//! both; the other namespaces sit on both sides of it in key order. A listing that never reads
//! other namespaces costs the same in both (ratio ≈ 1).
//!
//! Run: `cargo run --release -p kfsec-kfp --example list_bench` (or `bash bench/kfp.sh`).
//! Env: `STORE=redb|memory` (default redb, file under /dev/shm when present), `BIG=100000`,
//! `BIG_NS=1000`, `SMALL=1000`, `SMALL_NS=10`, `ITER=3000`.

#![allow(clippy::disallowed_methods)] // a benchmark measures real elapsed time

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use kfsec_api::{Attributes, Authorize, Decision, SubjectRules};
use kfsec_kfp::{Kfp, KfpSettings};
use kfsec_store::{MemoryStore, RedbStore, Store};
use kfsec_types::identity::UserInfo;
use kfsec_types::{Identity, Rng, SystemClock};
use tower::ServiceExt;

struct AllowAll;
impl Authorize for AllowAll {
    fn authorize(&self, _: &Attributes) -> Decision {
        Decision::Allow { reason: "bench".into() }
    }
    fn rules_for(&self, _: &UserInfo, _: &str) -> SubjectRules {
        SubjectRules::default()
    }
}

struct BenchRng(std::sync::atomic::AtomicU64);
impl Rng for BenchRng {
    fn fill(&self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            let mut x = self
                .0
                .fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed);
            x ^= x >> 33;
            x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
            *b = (x >> 56) as u8;
        }
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn call(router: &Router, method: Method, uri: &str, body: String) -> (u16, Vec<u8>) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap_or_default();
    req.extensions_mut().insert(Identity::new("bench@example.com", vec![]));
    match router.clone().oneshot(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            (status, bytes.to_vec())
        }
        Err(never) => match never {},
    }
}

struct Scenario {
    total: usize,
    namespaces: usize,
}

async fn build(s: &Scenario, store: Arc<dyn Store>) -> Router {
    let kfp = match Kfp::new(
        store,
        Arc::new(AllowAll),
        Arc::new(SystemClock),
        Arc::new(BenchRng(std::sync::atomic::AtomicU64::new(1))),
        KfpSettings::default(),
    )
    .await
    {
        Ok(k) => k,
        Err(e) => {
            eprintln!("kfp: {e}");
            std::process::exit(2);
        }
    };
    let router = kfp.router();
    // 20 in the target namespace; the rest spread over the other namespaces, half of them
    // sorting before `target` and half after.
    let others = s.namespaces.saturating_sub(1).max(1);
    let rest = s.total.saturating_sub(20);
    let t0 = Instant::now();
    let mut made = 0usize;
    let create = |ns: String, name: String| {
        let router = router.clone();
        async move {
            let body = format!(r#"{{"display_name":"{name}","namespace":"{ns}"}}"#);
            let (st, b) = call(&router, Method::POST, "/pipeline/apis/v2beta1/experiments", body).await;
            if st != 200 {
                eprintln!("create failed: {st} {}", String::from_utf8_lossy(&b));
                std::process::exit(2);
            }
        }
    };
    for i in 0..20 {
        create("target".into(), format!("exp-{i:03}")).await;
    }
    for i in 0..rest {
        let n = i % others;
        let ns = if n.is_multiple_of(2) {
            format!("aaa-{n:04}")
        } else {
            format!("zzz-{n:04}")
        };
        create(ns, format!("exp-{i:06}")).await;
        made += 1;
        if made.is_multiple_of(20_000) {
            eprintln!("  … {made}/{rest} ({:.0}/s)", made as f64 / t0.elapsed().as_secs_f64());
        }
    }
    eprintln!(
        "  filled {} experiments over {} namespaces in {:.1}s",
        s.total,
        s.namespaces,
        t0.elapsed().as_secs_f64()
    );
    router
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn measure(router: &Router, iters: usize) -> (Duration, Duration) {
    let uri = "/pipeline/apis/v2beta1/experiments?namespace=target&page_size=20";
    for _ in 0..200 {
        call(router, Method::GET, uri, String::new()).await;
    }
    let mut lat = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let (st, body) = call(router, Method::GET, uri, String::new()).await;
        lat.push(t.elapsed());
        if st != 200 || !body.starts_with(b"{\"experiments\":[") {
            eprintln!("list failed: {st} {}", String::from_utf8_lossy(&body));
            std::process::exit(2);
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if v["experiments"].as_array().map(Vec::len) != Some(20) || v["total_size"] != 20 {
            eprintln!("unexpected page: {v}");
            std::process::exit(2);
        }
    }
    lat.sort();
    (pct(&lat, 0.50), pct(&lat, 0.99))
}

fn store_for(kind: &str, dir: &std::path::Path, name: &str) -> Arc<dyn Store> {
    if kind == "memory" {
        return MemoryStore::new(Arc::new(SystemClock));
    }
    match RedbStore::open(&dir.join(format!("{name}.redb")), Arc::new(SystemClock)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("redb: {e}");
            std::process::exit(2);
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let kind = std::env::var("STORE").unwrap_or_else(|_| "redb".into());
    let iters = env("ITER", 3000);
    let small = Scenario {
        total: env("SMALL", 1000),
        namespaces: env("SMALL_NS", 10),
    };
    let big = Scenario {
        total: env("BIG", 100_000),
        namespaces: env("BIG_NS", 1000),
    };
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let dir = match tempfile::Builder::new().prefix("kfsec-kfp-bench.").tempdir_in(base) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tempdir: {e}");
            std::process::exit(2);
        }
    };
    println!("kfp namespace listing (store: {kind}, {iters} requests each, page of 20 from a namespace of 20)");
    eprintln!("filling the small store…");
    let r_small = build(&small, store_for(&kind, dir.path(), "small")).await;
    eprintln!("filling the big store…");
    let r_big = build(&big, store_for(&kind, dir.path(), "big")).await;
    // Interleave the measurements so that machine noise hits both alike.
    let mut s50 = Vec::new();
    let mut s99 = Vec::new();
    let mut b50 = Vec::new();
    let mut b99 = Vec::new();
    for _ in 0..3 {
        let (a, b) = measure(&r_small, iters / 3).await;
        s50.push(a);
        s99.push(b);
        let (a, b) = measure(&r_big, iters / 3).await;
        b50.push(a);
        b99.push(b);
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (s50, s99, b50, b99) = (med(&mut s50), med(&mut s99), med(&mut b50), med(&mut b99));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "  {:>7} experiments / {:>4} namespaces: p50 {:>8.1} µs   p99 {:>8.1} µs",
        small.total,
        small.namespaces,
        us(s50),
        us(s99)
    );
    println!(
        "  {:>7} experiments / {:>4} namespaces: p50 {:>8.1} µs   p99 {:>8.1} µs",
        big.total,
        big.namespaces,
        us(b50),
        us(b99)
    );
    let r50 = us(b50) / us(s50).max(1e-9);
    let r99 = us(b99) / us(s99).max(1e-9);
    println!("  ratio big/small: p50 {r50:.2}x   p99 {r99:.2}x   (aim ≤ 1.5x)");
    if r50 > 1.5 || r99 > 1.5 {
        println!("kfp-bench: ABOVE the 1.5x aim");
    } else {
        println!("kfp-bench: within the 1.5x aim");
    }
}
