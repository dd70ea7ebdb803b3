//! Login protection and pre-login state (issue 9, findings 7, 8, 11 and the low items on
//! enumeration by bcrypt cost, device user-code guessing and lockout persistence): concurrent
//! guesses, per-(account, source) lockout, restart, timing, device code throttling and floods of
//! unauthenticated authorization and device requests.

#![allow(clippy::disallowed_methods)] // timing assertions (no enumeration by bcrypt cost) measure real elapsed time

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kfsec_types::SystemClock;

use crate::harness::*;

const LOCKED: &str = "Too many failed attempts";
const INVALID: &str = "Invalid Email Address and password";

/// A browser whose connections come from `ip` (any 127/8 address reaches the loopback listener).
fn browser_from(k: &Kfsec, ip: &str) -> Browser {
    let ip: IpAddr = ip.parse().unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(k.running.ca_pem.as_bytes()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .local_address(ip)
        .resolve("localhost", k.running.https_addr)
        .build()
        .unwrap();
    Browser {
        http,
        base: k.base.clone(),
        cookies: BTreeMap::new(),
    }
}

/// The login form's URL, reached from a protected page.
async fn login_form_url(b: &mut Browser) -> String {
    let (form, url) = b.follow("/app/").await;
    assert_eq!(form.status(), 200, "{url}");
    assert!(url.contains("/dex/auth/local/login"), "{url}");
    url
}

/// A fresh device code for `kfsec-cli`: (device_code, user_code).
pub(crate) async fn device_code(k: &Kfsec) -> (String, String) {
    device_code_for(k, "openid email").await
}

/// A fresh device code for `kfsec-cli` asking for `scope`: (device_code, user_code).
pub(crate) async fn device_code_for(k: &Kfsec, scope: &str) -> (String, String) {
    let r: serde_json::Value = http_client(&k.running.ca_pem)
        .post(format!("{}/device/code", k.running.issuer))
        .form(&[("client_id", "kfsec-cli"), ("scope", scope)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let field = |n: &str| r[n].as_str().unwrap().to_owned();
    (field("device_code"), field("user_code"))
}

/// One device-code poll by `kfsec-cli` at `/token`.
pub(crate) async fn device_poll(k: &Kfsec, device_code: &str) -> reqwest::Response {
    http_client(&k.running.ca_pem)
        .post(format!("{}/token", k.running.issuer))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code),
            ("client_id", "kfsec-cli"),
        ])
        .send()
        .await
        .unwrap()
}

fn with_query(base: &str, q: &[(&str, String)]) -> String {
    let qs = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(q.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    format!("{base}?{qs}")
}

/// bcrypt cost 4 of [`CHEAP_PASSWORD`].
const CHEAP_HASH: &str = "$2b$04$nUYInPokvemVMIP2O69qZO/WFaQFDGIAVxOs9IVhDRD1ZY67wLbc.";
const CHEAP_PASSWORD: &str = "cheap password";

/// A managed user with a cost-4 bcrypt hash, written straight into the store.
async fn cheap_user(k: &Kfsec, email: &str) {
    let hash = CHEAP_HASH;
    let user = serde_json::json!({
        "email": email, "username": email.split('@').next().unwrap(),
        "userID": format!("id-{email}"), "hash": hash, "groups": [],
    });
    k.running
        .store
        .put(
            &format!("/kfsec/idp/users/{email}"),
            serde_json::to_vec(&user).unwrap(),
            None,
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_guesses_verify_at_most_the_budget_for_every_spelling() {
    let k = Kfsec::start("loginProtection:\n  maxFailuresPerAccount: 5\n  maxFailuresPerAddress: 1000\n").await;
    let mut b = k.client();
    let url = login_form_url(&mut b).await;
    let upper = USER.to_ascii_uppercase();
    let spellings = [
        USER.to_owned(),
        format!("  {USER}"),
        format!("{upper}\t"),
        format!("\n{}", USER.replace("test", "TeSt")),
    ];
    let mut tasks = Vec::new();
    for i in 0..40 {
        let http = b.http.clone();
        let url = url.clone();
        let login = spellings[i % spellings.len()].clone();
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(&url)
                .form(&[("login", login.as_str()), ("password", "wrong password!")])
                .send()
                .await
                .unwrap();
            r.text().await.unwrap()
        }));
    }
    let (mut invalid, mut locked) = (0, 0);
    for t in tasks {
        let body = t.await.unwrap();
        if body.contains(INVALID) {
            invalid += 1;
        } else if body.contains(LOCKED) {
            locked += 1;
        } else {
            panic!("unexpected answer: {body}");
        }
    }
    assert!(
        invalid <= 5,
        "{invalid} passwords checked, policy 5 ({locked} locked answers)"
    );
    assert_eq!(invalid + locked, 40);
    let verified = metric(&k, "kfsec_password_verifications_total").await;
    assert!((1.0..=5.0).contains(&verified), "{verified} verifications");
    // the budget is spent: even the right password, in any spelling, gets the lockout answer
    for login in [USER.to_owned(), format!(" {upper} ")] {
        let r = b.post_form(&url, &[("login", &login), ("password", PASSWORD)]).await;
        assert!(r.text().await.unwrap().contains(LOCKED), "{login:?}");
    }
    assert!(metric(&k, "kfsec_password_verifications_total").await <= 5.0);
    k.running.shutdown().await;
}

#[tokio::test]
async fn failures_from_one_address_do_not_lock_the_account_out_from_another() {
    let k = Kfsec::start("loginProtection:\n  maxFailuresPerAccount: 3\n").await;
    let mut attacker = k.client();
    let url = login_form_url(&mut attacker).await;
    for _ in 0..3 {
        let r = attacker
            .post_form(&url, &[("login", USER), ("password", "wrong password!")])
            .await;
        assert_eq!(r.status(), 401);
    }
    let r = attacker
        .post_form(&url, &[("login", USER), ("password", PASSWORD)])
        .await;
    assert!(
        r.text().await.unwrap().contains(LOCKED),
        "the attacking address is locked"
    );
    // the owner, from another address, logs in
    let mut owner = browser_from(&k, "127.0.0.2");
    let (r, url) = owner.login("/app/x", USER, PASSWORD).await;
    assert_eq!(r.status(), 200, "{url}");
    assert!(owner.cookies.contains_key("authservice_session"));
    k.running.shutdown().await;
}

#[tokio::test]
async fn lockout_counters_survive_a_restart() {
    let cfg = "loginProtection:\n  maxFailuresPerAccount: 3\n";
    let k = Kfsec::start(cfg).await;
    let mut b = k.client();
    let url = login_form_url(&mut b).await;
    for _ in 0..3 {
        b.post_form(&url, &[("login", USER), ("password", "wrong password!")])
            .await;
    }
    drop(b);
    let dir = k.stop().await;
    // connection tasks let go of the store shortly after shutdown
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
    let k = Kfsec::start_in(dir, cfg).await;
    let mut b = k.client();
    let (r, _) = b.login("/app/", USER, PASSWORD).await;
    assert!(r.text().await.unwrap().contains(LOCKED), "lockout lost on restart");
    k.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_cheaply_hashed_accounts_answer_alike() {
    let k = Kfsec::start("loginProtection:\n  maxFailuresPerAccount: 50\n  maxFailuresPerAddress: 1000\n").await;
    for i in 0..3 {
        cheap_user(&k, &format!("cheap{i}@example.org")).await;
    }
    let mut b = k.client();
    let url = login_form_url(&mut b).await;
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..3 {
        for (who, times) in [
            (format!("cheap{i}@example.org"), &mut known),
            (format!("nobody{i}@example.org"), &mut unknown),
        ] {
            let t = Instant::now();
            let r = b
                .post_form(&url, &[("login", &who), ("password", "wrong password!")])
                .await;
            assert!(r.text().await.unwrap().contains(INVALID));
            times.push(t.elapsed());
        }
    }
    // the cheap account is genuine: its password works
    let r = b
        .post_form(&url, &[("login", "cheap0@example.org"), ("password", CHEAP_PASSWORD)])
        .await;
    assert_eq!(r.status(), 303);
    known.sort();
    unknown.sort();
    let (k1, u1) = (known[1].as_secs_f64(), unknown[1].as_secs_f64());
    let ratio = k1.max(u1) / k1.min(u1);
    assert!(ratio < 1.8, "known {known:?} vs unknown {unknown:?}");
    k.running.shutdown().await;
}

#[tokio::test]
async fn device_user_code_guessing_is_throttled() {
    let k = Kfsec::start("loginProtection:\n  maxUserCodeAttemptsPerAddress: 5\n  maxUserCodeAttempts: 8\n").await;
    let (_, real) = device_code(&k).await;
    let verify = |b: &Browser, code: String| {
        let req = b
            .http
            .post(b.url("/dex/device/auth/verify_code"))
            .form(&[("user_code", code)]);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let a = k.client();
    let mut statuses = Vec::new();
    for i in 0..8 {
        let (s, body) = verify(&a, format!("ZZZZ-ZZ{i:02}")).await;
        assert!(body.contains("<form") || body.contains("<p"), "an HTML page: {body}");
        statuses.push(s);
    }
    assert_eq!(statuses[..5], [400; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // the throttled address cannot use even the right code now
    assert_eq!(verify(&a, real.clone()).await.0, 429);
    // another address has its own allowance, within the global one (8)
    let b = browser_from(&k, "127.0.0.3");
    let mut other = Vec::new();
    for i in 0..5 {
        other.push(verify(&b, format!("YYYY-YY{i:02}")).await.0);
    }
    assert_eq!(other, [400, 400, 400, 429, 429], "global budget");
    let (s, body) = verify(&b, real).await;
    assert_eq!(s, 429, "{body}");
    assert!(body.contains("Too many"), "{body}");
    k.running.shutdown().await;
}

#[tokio::test]
async fn device_callback_guesses_are_throttled_and_use_up_nothing() {
    let k = Kfsec::start("").await;
    let (_, real) = device_code(&k).await;
    let mut b = k.client();
    let callback = |state: &str| format!("/dex/device/callback?state={state}&code=bogus-code");
    // a callback with the right user code but a code that does not redeem uses nothing up
    assert_eq!(b.get(&callback(&real)).await.status(), 400);
    let r = b
        .post_form("/dex/device/auth/verify_code", &[("user_code", &real)])
        .await;
    assert!(r.status().is_redirection(), "the user code still works: {}", r.status());
    // guessing user codes through the callback is throttled like the page (20 per address)
    let mut statuses = Vec::new();
    for i in 0..20 {
        statuses.push(b.get(&callback(&format!("QQQQ-QQ{i:02}"))).await.status().as_u16());
    }
    assert_eq!(statuses[..18], [400; 18], "{statuses:?}");
    assert_eq!(statuses[18..], [429, 429], "{statuses:?}");
    k.running.shutdown().await;
}

#[tokio::test]
async fn a_device_login_code_completes_only_its_own_user_code() {
    let k = Kfsec::start("").await;
    let raw = http_client(&k.running.ca_pem);
    let codes = [device_code(&k).await, device_code(&k).await];
    let (ours, theirs) = (&codes[0].1, &codes[1]);
    // the attacker completes the browser leg for their own device…
    let mut b = k.client();
    let r = b
        .post_form("/dex/device/auth/verify_code", &[("user_code", ours)])
        .await;
    let (_, form_url) = b.follow(location(&r)).await;
    let next = login_and_approve(&mut b, &form_url).await;
    assert!(next.starts_with("/dex/device/callback?"), "{next}");
    // …and tries to hand the resulting code to the victim's user code
    let code = query_param(&next, "code").unwrap();
    let forged = format!("/dex/device/callback?state={}&code={code}", theirs.1);
    assert_eq!(b.get(&forged).await.status(), 400);
    let poll: serde_json::Value = raw
        .post(format!("{}/token", k.running.issuer))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", "kfsec-cli"),
            ("device_code", theirs.0.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(poll["error"], "authorization_pending", "{poll}");
    k.running.shutdown().await;
}

#[tokio::test]
async fn oversized_authorization_parameters_get_oauth_errors() {
    let k = Kfsec::start("").await;
    let raw = http_client(&k.running.ca_pem);
    let challenge = "a".repeat(43);
    let base = [
        ("client_id", "rp-test".to_owned()),
        ("redirect_uri", "https://rp.example/cb".to_owned()),
        ("response_type", "code".to_owned()),
        ("scope", "openid".to_owned()),
    ];
    for (name, value) in [
        ("state", "s".repeat(513)),
        ("nonce", "n".repeat(513)),
        ("code_challenge", "c".repeat(129)),
    ] {
        for path in ["/auth", "/auth/local"] {
            let mut q: Vec<(&str, String)> = base.to_vec();
            if name != "state" {
                q.push(("state", "st".into()));
            }
            if name != "code_challenge" {
                q.push(("code_challenge", challenge.clone()));
            }
            q.push((name, value.clone()));
            let r = raw
                .get(with_query(&format!("{}{path}", k.running.issuer), &q))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_redirection(), "{name} at {path}: {}", r.status());
            let loc = location(&r).to_owned();
            assert!(loc.starts_with("https://rp.example/cb?"), "{name} at {path}: {loc}");
            assert_eq!(query_param(&loc, "error").as_deref(), Some("invalid_request"), "{loc}");
        }
    }
    // an over-long redirect_uri or client_id is refused with a page, not followed
    for (name, value) in [
        ("redirect_uri", format!("https://rp.example/cb?{}", "x".repeat(3000))),
        ("client_id", "c".repeat(300)),
    ] {
        let mut q: Vec<(&str, String)> = base.iter().filter(|(n, _)| *n != name).cloned().collect();
        q.push((name, value));
        let r = raw
            .get(with_query(&format!("{}/auth/local", k.running.issuer), &q))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{name}");
    }
    k.running.shutdown().await;
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

const FLOOD_TEST: &str = "sec_login::unauthenticated_floods_leave_the_store_and_memory_bounded";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthenticated_floods_leave_the_store_and_memory_bounded() {
    if std::env::var_os("KFSEC_FLOOD_ALONE").is_none() {
        // RSS is per process: measure in a process of our own that runs only this test (this
        // very binary, even if a rebuild replaced the file meanwhile).
        let out = tokio::process::Command::new("/proc/self/exe")
            .args(["--exact", FLOOD_TEST, "--nocapture", "--test-threads=1"])
            .env("KFSEC_FLOOD_ALONE", "1")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        return;
    }
    let k = Kfsec::start("").await;
    let db = k._dir.path().join("kfsec.redb");
    let raw = http_client(&k.running.ca_pem);
    // settle: one request of each kind before the baseline
    raw.get(format!("{}/healthz", k.running.issuer)).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let size0 = std::fs::metadata(&db).unwrap().len();
    let rss0 = vm_rss_kib();
    let issuer = k.running.issuer.clone();
    let mut workers = Vec::new();
    for w in 0..16 {
        let raw = raw.clone();
        let issuer = issuer.clone();
        workers.push(tokio::spawn(async move {
            let (mut auth_ok, mut device_ok, mut device_refused) = (0, 0, 0);
            for i in 0..(3000 / 16) {
                let state = format!("{w}-{i}-{}", "s".repeat(480));
                let path = if i % 2 == 0 { "/auth" } else { "/auth/local" };
                let q = [
                    ("client_id", "rp-test".to_owned()),
                    ("redirect_uri", "https://rp.example/cb".to_owned()),
                    ("response_type", "code".to_owned()),
                    ("scope", "openid email groups profile".to_owned()),
                    ("state", state),
                    ("nonce", "n".repeat(200)),
                ];
                let r = raw
                    .get(with_query(&format!("{issuer}{path}"), &q))
                    .send()
                    .await
                    .unwrap();
                if r.status().is_redirection() && !location(&r).contains("error=") {
                    auth_ok += 1;
                }
                let r = raw
                    .post(format!("{issuer}/device/code"))
                    .form(&[
                        ("client_id", "kfsec-cli"),
                        ("scope", "openid email groups profile offline_access"),
                    ])
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => device_ok += 1,
                    429 | 503 => {
                        let body: serde_json::Value = r.json().await.unwrap();
                        assert!(body["error"].is_string(), "OAuth2 error JSON: {body}");
                        device_refused += 1;
                    }
                    s => panic!("device/code answered {s}"),
                }
            }
            (auth_ok, device_ok, device_refused)
        }));
    }
    let (mut auth_ok, mut device_ok, mut device_refused) = (0, 0, 0);
    for w in workers {
        let (a, d, r) = w.await.unwrap();
        auth_ok += a;
        device_ok += d;
        device_refused += r;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let grown = std::fs::metadata(&db).unwrap().len().saturating_sub(size0);
    let rss_grown = vm_rss_kib().saturating_sub(rss0);
    eprintln!(
        "flood: auth {auth_ok}, device {device_ok} issued / {device_refused} refused; store +{grown} B, RSS +{rss_grown} KiB"
    );
    // the flood was answered (the authorization requests all reach the login form)
    assert!(auth_ok > 2900, "{auth_ok} authorization requests accepted");
    assert!(device_ok + device_refused > 2900);
    assert!(device_refused > 0, "no bound on device codes ({device_ok} issued)");
    // (before the fix: +13.7 MB of store and +18 MiB of RSS for this flood)
    assert!(
        grown < 1 << 20,
        "store grew by {grown} bytes ({device_ok} device codes)"
    );
    assert!(rss_grown < 10 << 10, "RSS grew by {rss_grown} KiB");
    k.running.shutdown().await;
}

/// Text a visitor sends that a page shows back — the login name after a failed login, a device
/// code in the URL — arrives escaped by the page templates: no markup, no attribute breakout;
/// and the pages' CSP allows no script at all.
#[tokio::test]
async fn pages_escape_reflected_input() {
    const HOSTILE: &str = "\"><script>alert(1)</script><x y='&";
    const ESCAPED: &str = "&#34;&#62;&#60;script&#62;alert(1)&#60;/script&#62;&#60;x y=&#39;&#38;";
    let k = Kfsec::start("").await;
    let mut b = k.client();
    let url = login_form_url(&mut b).await;
    let r = b.post_form(&url, &[("login", HOSTILE), ("password", "wrong")]).await;
    assert_eq!(r.status(), 401);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    // The login page loads kfsec's own login script file and nothing else.
    assert!(
        csp.starts_with("default-src 'none'; script-src 'self';") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    let body = r.text().await.unwrap();
    let own = "<script src=\"/dex/static/kfsec-login.js\"></script>";
    assert_eq!(body.matches("<script").count(), 1, "{body}");
    let body = body.replacen(own, "", 1);
    assert!(!body.contains("<script") && !body.contains("<x "), "{body}");
    assert!(body.contains(&format!("value=\"{ESCAPED}\"")), "{body}");
    let r = b
        .get(&with_query("/dex/device", &[("user_code", HOSTILE.to_owned())]))
        .await;
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(!body.contains("<script") && !body.contains("<x "), "{body}");
    assert!(
        body.contains(&format!("name=\"user_code\" value=\"{ESCAPED}\"")),
        "{body}"
    );
    k.running.shutdown().await;
}

/// "Try again in N minutes (at HH:MM UTC)" for `remaining` from `now` (Unix seconds), as the
/// login page words it: whole minutes on the wall clock, rounded up.
fn retry_words(now: u64, remaining: u64) -> String {
    let (now_min, at_min) = (now / 60, (now + remaining).div_ceil(60));
    let at = kfsec_types::time::format_rfc3339(i64::try_from(at_min * 60).unwrap());
    format!("in {} minutes (at {} UTC)", at_min - now_min, &at[11..16])
}

/// The lockout page says how long the lock lasts, from the lockout's own clock: the failure that
/// locks says so at once, the refusals after it count down, and the lock ends when it said.
#[tokio::test]
async fn the_lockout_page_says_when_the_lock_ends() {
    let k = Kfsec::start_with_clock("loginProtection:\n  maxFailuresPerAccount: 3\n  lockout: 10m\n").await;
    let clock = k.clock.clone().unwrap();
    let mut b = k.client();
    let url = login_form_url(&mut b).await;
    for _ in 0..2 {
        let r = b
            .post_form(&url, &[("login", USER), ("password", "wrong password!")])
            .await;
        let body = r.text().await.unwrap();
        assert!(body.contains(INVALID) && !body.contains(LOCKED), "{body}");
    }
    let locked_at = kfsec_types::Clock::now(clock.as_ref()).as_secs();
    let r = b
        .post_form(&url, &[("login", USER), ("password", "wrong password!")])
        .await;
    assert_eq!(r.status(), 401);
    let body = r.text().await.unwrap();
    let want = format!("Too many failed attempts: try again {}.", retry_words(locked_at, 600));
    assert!(body.contains(INVALID) && body.contains(&want), "{want} in {body}");
    assert!(body.contains("role=\"alert\""), "announced: {body}");
    // Four minutes later, even the right password: six minutes left.
    clock.advance(Duration::from_secs(240));
    let r = b.post_form(&url, &[("login", USER), ("password", PASSWORD)]).await;
    let body = r.text().await.unwrap();
    let want = format!(
        "Too many failed attempts. Try again {}.",
        retry_words(locked_at + 240, 360)
    );
    assert!(body.contains(&want), "{want} in {body}");
    // At the time it said, the lock is over.
    clock.advance(Duration::from_secs(360));
    let r = b.post_form(&url, &[("login", USER), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    k.running.shutdown().await;
}

/// A `__Host-` session cookie name (the hardening for apps sharing the origin: no app's script
/// can shadow the session with a cookie of the same name for a narrower path) works end to end,
/// and kfsec's session cookie meets the prefix's rules (`Secure`, `Path=/`, no `Domain`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_prefixed_session_cookie_signs_users_in() {
    const NAME: &str = "__Host-authservice_session";
    let k = Kfsec::start(&format!("session:\n  cookieName: {NAME}\n")).await;
    let mut br = k.client();
    // the cookie as the callback sets it
    let (form, form_url) = br.follow("/app/hello").await;
    assert_eq!(form.status(), 200);
    let resp = br
        .post_form(&form_url, &[("login", USER), ("password", PASSWORD)])
        .await;
    assert_eq!(resp.status(), 303);
    let mut url = br.url(location(&resp));
    let set = loop {
        let resp = br.get(&url).await;
        let set: Vec<String> = resp
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .filter(|v| v.starts_with(&format!("{NAME}=")))
            .collect();
        if !set.is_empty() {
            break set;
        }
        assert!(
            resp.status().is_redirection(),
            "no session cookie on the way back: {}",
            resp.status()
        );
        url = br.url(location(&resp));
    };
    let attributes: Vec<String> = set[0]
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    assert!(attributes.iter().any(|a| a == "secure"), "{set:?}");
    assert!(attributes.iter().any(|a| a == "path=/"), "{set:?}");
    assert!(attributes.iter().any(|a| a == "httponly"), "{set:?}");
    assert!(!attributes.iter().any(|a| a.starts_with("domain")), "{set:?}");
    // signed in under that name; the app never sees the cookie
    let (resp, _) = br.follow("/app/hello").await;
    assert_eq!(resp.status(), 200);
    let echoed: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echoed["headers"]["kubeflow-userid"], USER, "{echoed}");
    assert!(
        !echoed["headers"]["cookie"].as_str().unwrap_or_default().contains(NAME),
        "{echoed}"
    );
    k.running.shutdown().await;
}
