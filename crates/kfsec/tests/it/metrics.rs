//! The admin listener's `/metrics` after real traffic: logins by connector and outcome, tokens by
//! grant type, authorization decisions by surface, per-surface route labels (never `other` for
//! kfsec's own surfaces), sessions counted from the store, certificate expiry and signing-key age
//! read at scrape time, store latency by operation; the Prometheus text format for plain
//! scrapers and OpenMetrics for those that ask.

use std::time::Duration;

use crate::harness::{Kfsec, PASSWORD, USER, http_client, password_id_token, rp_token};

async fn scrape(k: &Kfsec, accept: Option<&str>) -> (String, String) {
    let mut req = reqwest::Client::new().get(format!("http://{}/metrics", k.running.admin_addr));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let kind = r.headers()["content-type"].to_str().unwrap().to_owned();
    (kind, r.text().await.unwrap())
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn families_and_labels_after_traffic_on_every_surface() {
    let k = Kfsec::start("bearerAudiences: [rp-test]\noauth2:\n  passwordConnector: local\n").await;
    // A browser: one failed and one successful login at the local connector; a session.
    let mut b = k.client();
    b.login("/", USER, "wrong password").await;
    let (r, _) = b.login("/", USER, PASSWORD).await;
    assert_eq!(r.status(), 200);
    let token = password_id_token(&k, USER, PASSWORD).await;
    let http = http_client(&k.running.ca_pem);
    let get = |path: &str| http.get(format!("{}{path}", k.base)).bearer_auth(&token).send();
    // Denied by RBAC on the Kubernetes-style API and KFP; KFAM answers an outsider an empty list
    // (its bindings filtered by RBAC); allowed on a proxied route.
    assert_eq!(get("/api/v1/namespaces/default/secrets").await.unwrap().status(), 403);
    let kfp = get("/pipeline/apis/v2beta1/experiments?namespace=default")
        .await
        .unwrap();
    assert_eq!(kfp.status(), 403, "{:?}", kfp.text().await);
    let kfam = get("/kfam/v1/bindings?namespace=default").await.unwrap();
    assert_eq!(kfam.status(), 200, "{:?}", kfam.text().await);
    assert_eq!(get("/app/hello").await.unwrap().status(), 200);

    let (kind, m) = scrape(&k, None).await;
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    for series in [
        "kfsec_logins_total{connector=\"local\",outcome=\"failure\"}",
        "kfsec_logins_total{connector=\"local\",outcome=\"success\"}",
        "kfsec_tokens_issued_total{grant_type=\"password\"}",
        "kfsec_authz_decisions_total{surface=\"api\",decision=\"deny\"}",
        "kfsec_authz_decisions_total{surface=\"kfp\",decision=\"deny\"}",
        "kfsec_authz_decisions_total{surface=\"proxy\",decision=\"allow\"}",
        "kfsec_http_requests_total{route=\"api\",code=\"403\"}",
        "kfsec_http_requests_total{route=\"kfp\",code=\"403\"}",
        "kfsec_http_requests_total{route=\"kfam\",code=\"200\"}",
        "kfsec_http_requests_total{route=\"/app/\",code=\"200\"}",
        "kfsec_http_requests_total{route=\"dex-token\",code=\"200\"}",
        "kfsec_http_request_duration_seconds_count{route=\"api\"}",
    ] {
        assert!(
            value(&m, series).is_some_and(|v| v >= 1.0),
            "{series} missing or 0 in\n{m}"
        );
    }
    assert!(m.contains("kfsec_authz_decisions_total{surface=\"kfam\","), "{m}");
    assert!(!m.contains("route=\"other\""), "{m}");
    assert!(m.contains("route=\"dex-auth\""), "the login form's route: {m}");
    // Read at scrape time from the live PKI and key set.
    for name in ["ca", "front-door", "gateway-workload"] {
        let left = value(&m, &format!("kfsec_certificate_expiry_seconds{{name=\"{name}\"}}"));
        assert!(left.is_some_and(|s| s > 3600.0), "{name}: {left:?}\n{m}");
    }
    assert!(m.contains("kfsec_certificate_expiry_seconds{name=\"webhook-"), "{m}");
    assert!(
        value(&m, "kfsec_signing_key_age_seconds").is_some_and(|s| (0.0..3600.0).contains(&s)),
        "{m}"
    );
    assert_eq!(value(&m, "kfsec_ready"), Some(1.0), "{m}");
    assert!(value(&m, "kfsec_store_operation_duration_seconds_count{op=\"get\"}").is_some_and(|v| v >= 1.0));
    assert!(m.contains("kfsec_build_info{version=\""), "{m}");
    // Every family has help text under the name its samples carry.
    for family in [
        "kfsec_logins_total",
        "kfsec_authz_decisions_total",
        "kfsec_build_info",
        "kfsec_sessions_active",
    ] {
        assert!(m.contains(&format!("# HELP {family} ")), "{family}\n{m}");
    }

    // Sessions are counted from the store every 5 s: the browser's session shows.
    let mut sessions = None;
    for _ in 0..40 {
        sessions = value(&scrape(&k, None).await.1, "kfsec_sessions_active");
        if sessions.is_some_and(|s| s >= 1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(sessions.is_some_and(|s| s >= 1.0), "{sessions:?}");
    assert!(value(&m, "kfsec_lockouts_active").is_some(), "{m}");

    // Prometheus asks for OpenMetrics and gets it.
    let (kind, om) = scrape(&k, Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")).await;
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert!(
        om.ends_with("# EOF\n") && om.contains("# TYPE kfsec_logins counter"),
        "{om}"
    );
    k.running.shutdown().await;
}

#[tokio::test]
async fn a_lockout_shows_in_lockouts_active_and_logins_by_outcome() {
    let k = Kfsec::start("oauth2:\n  passwordConnector: local\nloginProtection:\n  maxFailuresPerAccount: 2\n").await;
    let (_, m) = scrape(&k, None).await;
    assert_eq!(value(&m, "kfsec_lockouts_active"), Some(0.0), "{m}");
    for _ in 0..3 {
        let (status, _) = rp_token(
            &k,
            vec![
                ("grant_type", "password".to_owned()),
                ("username", USER.to_owned()),
                ("password", "not the password".to_owned()),
                ("scope", "openid".to_owned()),
            ],
        )
        .await;
        assert_eq!(status, 401);
    }
    // Counted from the store every 5 s.
    let mut m = String::new();
    for _ in 0..40 {
        m = scrape(&k, None).await.1;
        if value(&m, "kfsec_lockouts_active").is_some_and(|n| n >= 1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(value(&m, "kfsec_lockouts_active"), Some(1.0), "{m}");
    assert_eq!(value(&m, "kfsec_lockouts_total"), Some(1.0), "{m}");
    assert_eq!(
        value(&m, "kfsec_logins_total{connector=\"local\",outcome=\"failure\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        value(&m, "kfsec_logins_total{connector=\"local\",outcome=\"locked\"}"),
        Some(1.0),
        "{m}"
    );
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_callers_certificate_checks_are_counted() {
    use crate::sec_webhooks::{client, issue_client_cert, review, url};
    let k = Kfsec::start("webhooks:\n  clientAuth:\n    allowedNames: [kube-apiserver]\n").await;
    let dir = tempfile::tempdir().unwrap();
    let good = issue_client_cert(k._dir.path(), "kube-apiserver", &dir.path().join("good"));
    let bad = issue_client_cert(k._dir.path(), "someone-else", &dir.path().join("bad"));
    let post = |id: &str| client(&k, Some(id)).post(url(&k)).json(&review(1)).send();
    assert_eq!(post(&good).await.unwrap().status(), 200);
    assert!(
        post(&bad).await.is_err(),
        "a caller not allowed is refused in the handshake"
    );
    let (_, m) = scrape(&k, None).await;
    assert!(
        value(
            &m,
            "kfsec_authz_decisions_total{surface=\"webhook\",decision=\"allow\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{m}"
    );
    assert!(
        value(&m, "kfsec_authz_decisions_total{surface=\"webhook\",decision=\"deny\"}").is_some_and(|v| v >= 1.0),
        "{m}"
    );
    k.running.shutdown().await;
}

/// The value of `series` on `k`'s scrape once it reaches `want` (polled for 8 s: the store
/// gauges are refreshed every 5 s), else the last value seen.
async fn gauge_reaches(k: &Kfsec, series: &str, want: f64) -> Option<f64> {
    let mut seen = None;
    for _ in 0..32 {
        seen = value(&scrape(k, None).await.1, series);
        if seen.is_some_and(|v| v >= want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_every_replica_reports_the_clusters_sessions_and_lockouts() {
    use kfsec_store::sealed::SealKey;
    use kfsec_store_etcd::testing::{EtcdCluster, etcd_binary};
    let Some(bin) = etcd_binary().unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    let cluster = EtcdCluster::single(&bin).await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("kek");
    SealKey::generate(&kfsec_pki::OsRng).write_new(&key).unwrap();
    let yaml = format!(
        "store:\n  type: etcd\n  endpoints: [{}]\n  prefix: /kfsec-metrics\nsecretsEncryption:\n  keyFile: {}\noauth2:\n  passwordConnector: local\nloginProtection:\n  maxFailuresPerAccount: 2\n",
        cluster.endpoints().join(", "),
        key.display()
    );
    let a = Kfsec::start(&yaml).await;
    let b = Kfsec::start(&yaml).await;
    // A session and a lockout made through replica a…
    let mut browser = a.client();
    let (r, _) = browser.login("/", USER, PASSWORD).await;
    assert_eq!(r.status(), 200);
    for _ in 0..2 {
        let form = vec![
            ("grant_type", "password".to_owned()),
            ("username", "someone@example.org".to_owned()),
            ("password", "wrong".to_owned()),
            ("scope", "openid".to_owned()),
        ];
        assert_eq!(rp_token(&a, form).await.0, 401);
    }
    // …are counted by replica b, which saw neither request.
    assert_eq!(gauge_reaches(&b, "kfsec_sessions_active", 1.0).await, Some(1.0));
    assert_eq!(gauge_reaches(&b, "kfsec_lockouts_active", 1.0).await, Some(1.0));
    assert_eq!(gauge_reaches(&a, "kfsec_sessions_active", 1.0).await, Some(1.0));
    a.running.shutdown().await;
    b.running.shutdown().await;
}
