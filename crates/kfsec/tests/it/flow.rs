//! The Charmed-Kubeflow login flow end to end, and what the upstream sees.

use crate::harness::*;

#[tokio::test]
async fn login_flow_end_to_end() {
    let k = Kfsec::start("").await;
    let mut b = k.client();

    // 1. unauthenticated browser request → 302 to /dex/auth with code + PKCE + state
    let r = b.get("/app/notebooks?ns=user1").await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "front door speaks HTTP/2");
    let loc = location(&r).to_owned();
    assert!(loc.starts_with("/dex/auth?"), "{loc}");
    assert_eq!(query_param(&loc, "response_type").as_deref(), Some("code"));
    assert_eq!(
        query_param(&loc, "scope").as_deref(),
        Some("openid profile email groups offline_access"),
        "offline_access: the refresh token a federated session is re-checked with"
    );
    assert_eq!(query_param(&loc, "code_challenge_method").as_deref(), Some("S256"));
    assert!(query_param(&loc, "state").is_some_and(|s| s.len() > 16));
    assert!(
        b.cookies.contains_key("__Host-oidc_state_csrf"),
        "state bound to a CSRF cookie"
    );

    // 2. login form
    let (form, form_url) = b.follow(&loc).await;
    assert_eq!(form.status(), 200);
    assert!(form.text().await.unwrap().contains("name=\"password\""));

    // 3. wrong password: the form again, an error, no code
    let r = b
        .post_form(&form_url, &[("login", USER), ("password", "wrong password!")])
        .await;
    assert!(r.headers().get("location").is_none());
    let body = r.text().await.unwrap();
    assert!(body.contains("Invalid Email Address and password"), "{body}");
    assert!(!body.contains("code="));

    // 4. right password → 303 to the callback with code and state
    let r = b.post_form(&form_url, &[("login", USER), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 303);
    let cb = location(&r).to_owned();
    assert!(cb.starts_with("/authservice/oidc/callback?code="), "{cb}");

    // 5. callback → session cookie with secure flags → back to the original URL
    let r = b.get(&cb).await;
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r), "/app/notebooks?ns=user1");
    let set: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("authservice_session="))
        .expect("session cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(session.contains(flag), "{session} lacks {flag}");
    }

    // 6. the upstream sees the user, never a forged identity, never the session cookie
    let r = b
        .send(
            b.http
                .get(b.url("/app/notebooks?ns=user1"))
                .header("kubeflow-userid", "admin@evil.example")
                .header("KubeFlow-Groups", "system:masters")
                .header("x-forwarded-user", "admin"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["path"], "/app/notebooks?ns=user1");
    assert_eq!(seen["headers"]["kubeflow-userid"], USER);
    assert_eq!(seen["headers"]["kubeflow-groups"], "team-a");
    assert!(seen["headers"].get("x-forwarded-user").is_none());
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    let cookie = seen["headers"]["cookie"].as_str().unwrap_or("");
    assert!(
        !cookie.contains("authservice_session"),
        "session cookie leaked upstream: {cookie}"
    );

    // the home page shows who you are
    let home = b.get("/").await.text().await.unwrap();
    assert!(home.contains(USER) && home.contains("team-a") && home.contains("/authservice/logout"));

    // check endpoint for nginx/Envoy
    let r = b.get("/authservice/check").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["kubeflow-userid"], USER);
    let anon = Browser::new(&k.running.ca_pem, &k.base).get("/authservice/check").await;
    assert_eq!(anon.status(), 401);

    // code replay at the callback is refused
    let r = b.get(&cb).await;
    assert_eq!(r.status(), 400);

    // 7. logout ends the session server-side: a copied cookie stops working at once
    let copied = b.cookies["authservice_session"].clone();
    let r = b.post_form("/authservice/logout", &[]).await;
    assert_eq!(r.status(), 302);
    assert_eq!(
        location(&r),
        "/authservice/logged_out",
        "logout leads to the logged-out page"
    );
    assert!(!b.cookies.contains_key("authservice_session"), "cookie cleared");
    let mut thief = Browser::new(&k.running.ca_pem, &k.base);
    thief.cookies.insert("authservice_session".into(), copied);
    let r = thief.get("/app/notebooks").await;
    assert_eq!(r.status(), 302, "a revoked cookie must not authenticate");
    let r = thief.get("/apis/kubeflow.org/v1/profiles").await;
    assert_eq!(r.status(), 401);
    k.running.shutdown().await;
}

#[tokio::test]
async fn api_paths_get_401_json_and_public_routes_pass() {
    let k = Kfsec::start("").await;
    let mut b = k.client();
    for (path, needle) in [
        ("/api/v1/namespaces", "\"kind\":\"Status\""),
        ("/apis/kubeflow.org/v1/profiles", "\"reason\":\"Unauthorized\""),
        ("/pipeline/apis/v1beta1/experiments", "\"code\":16"),
        ("/kfam/v1/bindings", "\"error\""),
    ] {
        let r = b.get(path).await;
        assert_eq!(r.status(), 401, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let body = r.text().await.unwrap();
        assert!(body.contains(needle), "{path}: {body}");
    }
    // /dex is never gated
    assert_eq!(b.get("/dex/healthz").await.status(), 200);
    // a public route reaches the upstream without identity, and forged headers are stripped
    let r = b
        .send(b.http.get(b.url("/open/x")).header("kubeflow-userid", "forged@x"))
        .await;
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert!(seen["headers"].get("kubeflow-userid").is_none(), "{seen}");
    // POST to a protected browser path without a session: 401, not a redirect
    assert_eq!(b.post_form("/app/x", &[]).await.status(), 401);
    k.running.shutdown().await;
}

#[tokio::test]
async fn metrics_and_health_on_the_admin_listener() {
    let k = Kfsec::start("").await;
    let mut b = k.client();
    b.login("/", USER, "bad password").await;
    let (r, _) = b.login("/", USER, PASSWORD).await;
    assert_eq!(r.status(), 200);
    let admin = format!("http://{}", k.running.admin_addr);
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{admin}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{admin}/readyz")).send().await.unwrap().status(), 200);
    let m = http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("kfsec_logins_total{connector=\"local\",outcome=\"success\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("kfsec_logins_total{connector=\"local\",outcome=\"failure\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("kfsec_http_requests_total{route=\"home\",code=\"200\"}"),
        "{m}"
    );
    assert!(m.contains("kfsec_http_request_duration_seconds_bucket"), "{m}");
    assert!(m.contains("kfsec_lockouts_total"), "{m}");
    k.running.shutdown().await;
}

#[tokio::test]
async fn a_browsers_sub_resource_request_does_not_restart_the_login_in_progress() {
    // Chromium asks for /favicon.ico after every page: answered 401, it must not replace the
    // state cookie of the login the page started (whose callback would then fail).
    let k = Kfsec::start("").await;
    let mut b = k.client();
    let started = b
        .send(b.http.get(b.url("/app/notebooks")).header("sec-fetch-dest", "document"))
        .await;
    assert_eq!(started.status(), 302);
    let state_cookie = b
        .cookies
        .get("__Host-oidc_state_csrf")
        .cloned()
        .expect("a login started");
    for dest in ["image", "script", "empty", "style"] {
        let r = b
            .send(b.http.get(b.url("/favicon.ico")).header("sec-fetch-dest", dest))
            .await;
        assert_eq!(r.status(), 401, "{dest}");
        assert_eq!(b.cookies.get("__Host-oidc_state_csrf"), Some(&state_cookie), "{dest}");
    }
    // The login the page started still completes.
    let (form, form_url) = b.follow(location(&started)).await;
    assert_eq!(form.status(), 200);
    let next = login_and_approve(&mut b, &form_url).await;
    let (home, _) = b.follow(&next).await;
    assert_eq!(home.status(), 200, "{next}");
}
