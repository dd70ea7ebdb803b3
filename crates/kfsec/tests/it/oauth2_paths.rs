//! oauth2-proxy's paths beside oidc-authservice's (`/oauth2/start`, `/oauth2/sign_out`,
//! `/oauth2/auth`, `/oauth2/userinfo`), as Kubeflow 1.8+ front ends and nginx `auth_request`
//! setups call them, and logout through either prefix really ending the session server-side.

use serde_json::Value;

use crate::harness::*;

const COOKIE: &str = "authservice_session";
/// Where a logout without an acceptable `rd` lands.
const LOGGED_OUT: &str = "/oauth2/logged_out";

/// A logged-in browser and its session cookie's value.
async fn signed_in(k: &Kfsec) -> (Browser, String) {
    let mut b = k.client();
    let (r, url) = b.login("/app/x", USER, PASSWORD).await;
    assert_eq!(r.status(), 200, "{url}");
    let session = b.cookies[COOKIE].clone();
    (b, session)
}

/// `/authservice/check` with only `cookie` as the session cookie: its status.
async fn check_with_cookie(k: &Kfsec, cookie: &str) -> u16 {
    let mut thief = k.client();
    thief.cookies.insert(COOKIE.into(), cookie.into());
    thief.get("/authservice/check").await.status().as_u16()
}

/// `method path` with only `Authorization: Bearer token` (no cookie).
async fn with_bearer(k: &Kfsec, method: reqwest::Method, path: &str, token: &str) -> reqwest::Response {
    http_client(&k.running.ca_pem)
        .request(method, format!("{}{path}", k.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn authservice_logout_with_the_session_as_bearer_ends_it() {
    let k = Kfsec::start("").await;
    let (_b, session) = signed_in(&k).await;
    assert_eq!(check_with_cookie(&k, &session).await, 200);
    // oidc-authservice's clients log out with the session in `Authorization`, no cookie.
    let r = with_bearer(&k, reqwest::Method::POST, "/authservice/logout", &session).await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"afterLogoutURL": "/"}));
    assert_eq!(
        check_with_cookie(&k, &session).await,
        401,
        "the session must be over, not only the answer"
    );
    k.running.shutdown().await;
}

/// How many session records the server holds.
async fn sessions_stored(k: &Kfsec) -> usize {
    kfsec_store::list_all(k.running.store.as_ref(), "/kfsec/sessions/")
        .await
        .unwrap()
        .items
        .len()
}

/// `rd` as a query string whose decoded value is exactly `rd`.
fn rd_query(rd: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("rd", rd)
        .finish()
}

/// The return path a login redirect (`Location: /dex/auth?…&state=<s>.<b64 path>`) carries.
fn return_path_in(location: &str) -> String {
    use base64::Engine;
    let state = query_param(location, "state").expect("state");
    let (_, ret) = state.split_once('.').unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(ret).unwrap();
    String::from_utf8(raw).unwrap()
}

#[tokio::test]
async fn a_bearer_that_is_no_session_ends_nothing_and_answers_the_same() {
    let k = Kfsec::start("").await;
    let (_b, session) = signed_in(&k).await;
    let keys = k.running.idp.keys().keys();
    let mut claims = test_claims(&k, &k.running.issuer, "kfsec-cli", 600);
    claims.groups = Some(vec!["team-a".into()]);
    let id_token = keys.signing.sign(&claims).unwrap();
    let forged = format!("{}.AAAA", "x".repeat(43));
    for bearer in [id_token.as_str(), "not-a-session", forged.as_str()] {
        let r = with_bearer(&k, reqwest::Method::POST, "/authservice/logout", bearer).await;
        assert_eq!(r.status(), 201, "{bearer}");
        let body = r.text().await.unwrap();
        assert_eq!(body, r#"{"afterLogoutURL":"/"}"#, "no detail for {bearer}");
    }
    // The user's browser session is untouched; an ID token is stateless and stays valid until
    // it expires (logout-all voids it).
    assert_eq!(check_with_cookie(&k, &session).await, 200);
    let r = with_bearer(&k, reqwest::Method::GET, "/oauth2/userinfo", &id_token).await;
    assert_eq!(r.status(), 200);
    k.running.shutdown().await;
}

#[tokio::test]
async fn oauth2_start_logs_in_and_lands_on_rd() {
    let k = Kfsec::start("").await;
    let mut b = k.client();
    let rd = "/app/x?ns=user1&tab=runs";
    let r = b.get(&format!("/oauth2/start?{}", rd_query(rd))).await;
    assert_eq!(r.status(), 302);
    assert!(location(&r).starts_with("/dex/auth?"), "{}", location(&r));
    assert_eq!(return_path_in(location(&r)), rd);
    let (done, url) = b
        .login(&format!("/oauth2/start?{}", rd_query(rd)), USER, PASSWORD)
        .await;
    assert_eq!(done.status(), 200);
    assert_eq!(url, format!("{}{rd}", k.base));
    let seen: Value = done.json().await.unwrap();
    assert_eq!(seen["headers"]["kubeflow-userid"], USER);
    // oauth2-proxy's sign-in page: kfsec has none, it starts the login the same way.
    let r = b.get(&format!("/oauth2/sign_in?{}", rd_query("/app/y"))).await;
    assert_eq!(return_path_in(location(&r)), "/app/y");
    // Without rd: home.
    let r = b.get("/oauth2/start").await;
    assert_eq!(return_path_in(location(&r)), "/");
    k.running.shutdown().await;
}

#[tokio::test]
async fn oauth2_sign_out_ends_the_session_server_side() {
    let k = Kfsec::start("").await;
    let before = sessions_stored(&k).await;
    let (mut b, session) = signed_in(&k).await;
    assert_eq!(sessions_stored(&k).await, before + 1);
    // The dashboard's logout button: a same-origin top-level GET.
    let r = b
        .send(
            b.http
                .get(b.url(&format!("/oauth2/sign_out?{}", rd_query("/pipeline/#/runs"))))
                .header("sec-fetch-site", "same-origin"),
        )
        .await;
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r), "/pipeline/#/runs");
    let cleared: Vec<&str> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .filter(|c| c.starts_with("authservice_session="))
        .collect();
    assert_eq!(
        cleared,
        ["authservice_session=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax"],
        "cleared with the attributes it was set with"
    );
    assert!(!b.cookies.contains_key(COOKIE));
    assert_eq!(sessions_stored(&k).await, before, "the record is gone");
    // The old cookie, replayed: no session anywhere.
    assert_eq!(check_with_cookie(&k, &session).await, 401);
    let mut thief = k.client();
    thief.cookies.insert(COOKIE.into(), session.clone());
    let r = thief.get("/app/x").await;
    assert_eq!(r.status(), 302);
    assert!(location(&r).starts_with("/dex/auth?"));
    let r = thief.get("/oauth2/userinfo").await;
    assert_eq!(r.status(), 401);

    // POST too, and without rd a logout lands on the logged-out page (not a new login).
    let (mut b, session) = signed_in(&k).await;
    let r = b.post_form("/oauth2/sign_out", &[]).await;
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r), LOGGED_OUT);
    assert_eq!(check_with_cookie(&k, &session).await, 401);

    // A session given as bearer ends there as well (302 as for a browser, as oauth2-proxy).
    let (_b, session) = signed_in(&k).await;
    let r = with_bearer(&k, reqwest::Method::GET, "/oauth2/sign_out", &session).await;
    assert_eq!((r.status().as_u16(), location(&r)), (302, LOGGED_OUT));
    assert_eq!(check_with_cookie(&k, &session).await, 401);
    k.running.shutdown().await;
}

#[tokio::test]
async fn logout_csrf_and_probing_methods_end_nothing() {
    let k = Kfsec::start("").await;
    let (mut b, session) = signed_in(&k).await;
    // A third-party page navigating the browser to either logout: refused, session kept.
    for (site, origin) in [
        ("cross-site", None),
        ("same-site", None),
        ("cross-site", Some("https://evil.example")),
    ] {
        for (method, path) in [
            (reqwest::Method::GET, "/oauth2/sign_out?rd=/x"),
            (reqwest::Method::POST, "/oauth2/sign_out"),
            (reqwest::Method::POST, "/authservice/logout"),
        ] {
            let mut req = b
                .http
                .request(method.clone(), b.url(path))
                .header("sec-fetch-site", site);
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            let r = b.send(req).await;
            assert_eq!(r.status(), 403, "{method} {path} from {site}");
            assert_eq!(check_with_cookie(&k, &session).await, 200);
        }
    }
    // Old browsers: Origin only.
    let r = b
        .send(
            b.http
                .post(b.url("/oauth2/sign_out"))
                .header("origin", "https://evil.example"),
        )
        .await;
    assert_eq!(r.status(), 403);
    // HEAD and OPTIONS never end a session.
    for method in [reqwest::Method::HEAD, reqwest::Method::OPTIONS] {
        let r = b.send(b.http.request(method.clone(), b.url("/oauth2/sign_out"))).await;
        assert_eq!(r.status(), 405, "{method}");
        assert!(r.headers().get("set-cookie").is_none());
        assert_eq!(check_with_cookie(&k, &session).await, 200, "{method}");
    }
    // Starting a login is a GET (or HEAD); nothing else.
    for method in [reqwest::Method::POST, reqwest::Method::OPTIONS, reqwest::Method::DELETE] {
        let r = b.send(b.http.request(method.clone(), b.url("/oauth2/start"))).await;
        assert_eq!(r.status(), 405, "{method}");
    }
    let r = b.send(b.http.head(b.url("/oauth2/start?rd=/app/x"))).await;
    assert_eq!(r.status(), 302);
    // Someone with no session at all, sent from elsewhere: nothing to end, on to rd.
    let mut anon = k.client();
    let r = anon
        .send(
            anon.http
                .get(anon.url("/oauth2/sign_out?rd=/app/x"))
                .header("sec-fetch-site", "cross-site"),
        )
        .await;
    assert_eq!((r.status().as_u16(), location(&r)), (302, "/app/x"));
    k.running.shutdown().await;
}

#[tokio::test]
async fn oauth2_auth_and_userinfo_answer_as_oauth2_proxy() {
    let k = Kfsec::start("").await;
    let (mut b, _session) = signed_in(&k).await;
    for path in ["/oauth2/auth", "/authservice/check"] {
        let r = b
            .send(
                b.http
                    .get(b.url(path))
                    .header("x-auth-request-user", "admin@evil.example")
                    .header("x-auth-request-groups", "system:masters"),
            )
            .await;
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        for (name, want) in [
            ("kubeflow-userid", USER),
            ("kubeflow-groups", "team-a"),
            ("x-auth-request-user", USER),
            ("x-auth-request-email", USER),
            ("x-auth-request-groups", "team-a"),
        ] {
            assert_eq!(h.get(name).and_then(|v| v.to_str().ok()), Some(want), "{path} {name}");
        }
        // The same for HEAD and whatever method the protected request had (ext_authz sends it).
        for method in [reqwest::Method::HEAD, reqwest::Method::POST, reqwest::Method::DELETE] {
            let r = b.send(b.http.request(method.clone(), b.url(path))).await;
            assert_eq!(r.status(), 200, "{method} {path}");
        }
        let anon = k.client().get(path).await;
        assert_eq!(anon.status(), 401, "{path}");
        assert!(anon.headers().get("x-auth-request-user").is_none());
        assert!(anon.headers().get("kubeflow-userid").is_none());
    }
    let r = b.get("/oauth2/userinfo").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"user": USER, "email": USER, "groups": ["team-a"]})
    );
    let anon = k.client().get("/oauth2/userinfo").await;
    assert_eq!(anon.status(), 401);
    let bad = with_bearer(&k, reqwest::Method::GET, "/oauth2/userinfo", "eyJhbGciOiJub25lIn0.e30.").await;
    assert_eq!(bad.status(), 401);
    k.running.shutdown().await;
}

#[tokio::test]
async fn open_redirects_through_rd_are_refused() {
    let k = Kfsec::start("").await;
    let long = format!("/{}", "a".repeat(5000));
    let huge = format!("/{}", "a".repeat(30_000));
    let hostile = [
        "//evil.example/x",
        "///evil.example/x",
        "/\\evil.example",
        "\\\\evil.example",
        "/%2F%2Fevil.example",
        "/%2f%2fevil.example",
        "/%5Cevil.example",
        "%2F%2Fevil.example",
        "https://evil.example/",
        "http:evil.example",
        "javascript:alert(1)",
        "evil.example",
        "/\t/evil.example",
        "/\r\nLocation: https://evil.example",
        "/ /evil.example",
        "/./../evil.example",
        "/a/..//evil.example",
        "/é",
        long.as_str(),
        huge.as_str(),
        "",
    ];
    let mut b = k.client();
    for rd in hostile {
        // Sign out (nothing to end) goes to the default, the logged-out page.
        let r = b.get(&format!("/oauth2/sign_out?{}", rd_query(rd))).await;
        let rd_shown: String = rd.chars().take(60).collect();
        assert_eq!(r.status(), 302, "{rd_shown:?}");
        assert_eq!(location(&r), LOGGED_OUT, "{rd_shown:?}");
        // A login started with it comes back home.
        let r = b.get(&format!("/oauth2/start?{}", rd_query(rd))).await;
        assert_eq!(r.status(), 302, "{rd_shown:?}");
        assert_eq!(return_path_in(location(&r)), "/", "{rd_shown:?}");
        assert_eq!(kfsec_gateway::safe_return_path(rd), "/", "{rd_shown:?}");
    }
    let r = b.get("/oauth2/sign_out").await;
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "these tests speak HTTP/2");
    // Repeated rd: the first counts (as in oauth2-proxy), and it is validated like any.
    let r = b.get("/oauth2/sign_out?rd=/app/ok&rd=//evil.example").await;
    assert_eq!(location(&r), "/app/ok");
    let r = b.get("/oauth2/sign_out?rd=//evil.example&rd=/app/ok").await;
    assert_eq!(location(&r), LOGGED_OUT);
    // A raw (undecoded) query that is not even valid percent-encoding.
    let r = b.get("/oauth2/sign_out?rd=%E0%80%AF%2F%2Fevil").await;
    assert_eq!(location(&r), LOGGED_OUT);
    // A whole login through a hostile rd stays on kfsec's origin.
    let (done, url) = b
        .login(
            &format!("/oauth2/start?{}", rd_query("//evil.example/x")),
            USER,
            PASSWORD,
        )
        .await;
    assert!(url.starts_with(&k.base), "left the origin: {url}");
    assert_ne!(done.status(), 500);
    k.running.shutdown().await;
}

/// nginx in front, configured as oauth2-proxy's nginx guide says (`auth_request /oauth2/auth`,
/// `$upstream_http_x_auth_request_*`, `error_page 401 = /oauth2/sign_in`, `/oauth2/` proxied):
/// kfsec takes oauth2-proxy's place unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_configured_for_oauth2_proxy_works_with_kfsec() {
    let k = Kfsec::start("").await;
    let nginx = crate::ingress::Nginx::start(
        &k,
        r#"    location /oauth2/ {
      proxy_pass {kfsec};
    }
    location = /oauth2/auth {
      proxy_pass {kfsec};
      proxy_set_header Content-Length "";
      proxy_pass_request_body off;
    }
    location / {
      auth_request /oauth2/auth;
      error_page 401 = /oauth2/sign_in;
      auth_request_set $user   $upstream_http_x_auth_request_user;
      auth_request_set $email  $upstream_http_x_auth_request_email;
      auth_request_set $groups $upstream_http_x_auth_request_groups;
      proxy_set_header X-User  $user;
      proxy_set_header X-Email $email;
      proxy_set_header X-Groups $groups;
      proxy_pass http://{up};
    }"#,
    )
    .await;
    let plain = http_client(&k.running.ca_pem);
    let through = |path: &str, cookie: Option<&str>| {
        let req = plain.get(format!("{}{path}", nginx.base));
        let req = match cookie {
            Some(c) => req.header("cookie", c),
            None => req,
        };
        async move { req.send().await.unwrap() }
    };
    // No session: nginx sends the browser to the login.
    let r = through("/notebooks", None).await;
    assert_eq!(r.status(), 302);
    assert!(location(&r).starts_with("/dex/auth?"), "{}", location(&r));
    // A session: the upstream gets the identity from the X-Auth-Request-* answer headers.
    let (_b, session) = signed_in(&k).await;
    let cookie = format!("{COOKIE}={session}");
    let r = through("/notebooks", Some(&cookie)).await;
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["x-user"], USER);
    assert_eq!(seen["headers"]["x-email"], USER);
    assert_eq!(seen["headers"]["x-groups"], "team-a");
    // Logout through nginx ends the session at kfsec.
    let r = through("/oauth2/sign_out?rd=/bye", Some(&cookie)).await;
    assert_eq!((r.status().as_u16(), location(&r)), (302, "/bye"));
    assert_eq!(check_with_cookie(&k, &session).await, 401);
    let r = through("/notebooks", Some(&cookie)).await;
    assert_eq!(r.status(), 302, "the old cookie no longer passes nginx");
    drop(nginx);
    k.running.shutdown().await;
}

/// The logged-out page as a browser gets it: 200 HTML saying so, with a link to log in again, a
/// strict policy and no script; nothing about it starts a login or needs a session.
async fn assert_logged_out_page(b: &mut Browser, path: &str) {
    let r = b
        .send(
            b.http
                .get(b.url(path))
                .header("sec-fetch-site", "same-origin")
                .header("sec-fetch-dest", "document"),
        )
        .await;
    assert_eq!(r.status(), 200, "{path}: {}", location(&r));
    assert!(r.headers().get("set-cookie").is_none(), "{path} starts nothing");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.starts_with("default-src 'none';") && !csp.contains("script-src"),
        "{csp}"
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("<h1>You are logged out</h1>"), "{html}");
    assert!(
        html.contains("<a href=\"/\" id=\"login-again\">Log in again</a>"),
        "{html}"
    );
    assert!(!html.contains("<script") && !html.contains(USER), "{html}");
}

#[tokio::test]
async fn logout_without_rd_shows_the_logged_out_page_and_the_session_is_gone() {
    let k = Kfsec::start("").await;
    // The dashboard's "Log out" link: a same-origin GET without rd.
    let (mut b, session) = signed_in(&k).await;
    let r = b
        .send(
            b.http
                .get(b.url("/oauth2/sign_out"))
                .header("sec-fetch-site", "same-origin"),
        )
        .await;
    assert_eq!((r.status().as_u16(), location(&r)), (302, LOGGED_OUT));
    assert!(!b.cookies.contains_key(COOKIE), "cookie cleared");
    assert_logged_out_page(&mut b, LOGGED_OUT).await;
    // The old cookie, replayed: the login redirect for a page, 401 at the check endpoints.
    let mut thief = k.client();
    thief.cookies.insert(COOKIE.into(), session.clone());
    for path in ["/oauth2/auth", "/authservice/check", "/oauth2/userinfo"] {
        assert_eq!(thief.get(path).await.status(), 401, "{path}");
    }
    let r = thief.get("/").await;
    assert_eq!(r.status(), 302);
    assert!(location(&r).starts_with("/dex/auth?"), "{}", location(&r));
    // The page itself needs no session: with the dead cookie, or none, it is served, not a login.
    assert_logged_out_page(&mut thief, LOGGED_OUT).await;
    assert_logged_out_page(&mut k.client(), LOGGED_OUT).await;
    // "Log in again" (/) starts a new login, which works.
    let (done, url) = b.login("/", USER, PASSWORD).await;
    assert_eq!((done.status().as_u16(), url), (200, format!("{}/", k.base)));

    // oidc-authservice's logout from a browser form lands on the same page under its prefix;
    // the dashboard's XHR (JSON) is told to go there; a bearer logout keeps `/`.
    let (mut b, session) = signed_in(&k).await;
    let r = b.post_form("/authservice/logout", &[]).await;
    assert_eq!((r.status().as_u16(), location(&r)), (302, "/authservice/logged_out"));
    assert_eq!(check_with_cookie(&k, &session).await, 401);
    assert_logged_out_page(&mut b, "/authservice/logged_out").await;
    let (mut b, session) = signed_in(&k).await;
    let r = b
        .send(
            b.http
                .post(b.url("/authservice/logout"))
                .header("accept", "application/json")
                .header("origin", &k.base),
        )
        .await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"afterLogoutURL": "/authservice/logged_out"}));
    assert_eq!(check_with_cookie(&k, &session).await, 401);
    // The page answers GET (and HEAD) only; it ends nothing and reflects nothing of the query.
    let r = k.client().post_form(LOGGED_OUT, &[]).await;
    assert_eq!(r.status(), 405);
    let (mut b, session) = signed_in(&k).await;
    let r = b.get(&format!("{LOGGED_OUT}?rd=%3Cscript%3E")).await;
    assert_eq!(r.status(), 200);
    assert!(!r.text().await.unwrap().contains("script"));
    assert_eq!(
        check_with_cookie(&k, &session).await,
        200,
        "showing the page ends nothing"
    );
    k.running.shutdown().await;
}

/// A fragment the user arrived with (`/pipeline/#/runs/details/<id>`) survives the login: no
/// redirect of the login carries a fragment of its own (a browser then keeps the one it has), and
/// the login pages load kfsec's own script, which puts the fragment on the form's target (the
/// POST would otherwise drop it). The script is served without a session.
#[tokio::test]
async fn the_login_pages_carry_the_fragment_script_and_no_redirect_drops_it() {
    let k = Kfsec::start("").await;
    let mut b = k.client();
    let (form, form_url) = b.follow("/pipeline/").await;
    assert_eq!(form.status(), 200, "{form_url}");
    let csp = form.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self';"), "{csp}");
    let html = form.text().await.unwrap();
    assert!(
        html.contains("<form method=\"post\" action=\"/dex/auth/local/login?"),
        "{html}"
    );
    assert!(html.contains("id=\"login-form\""), "{html}");
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(
        html.contains("<script src=\"/dex/static/kfsec-login.js\"></script>"),
        "{html}"
    );
    // The script itself: no session needed, a script type, nothing that needs a login.
    let mut anon = k.client();
    let r = anon
        .send(
            anon.http
                .get(anon.url("/dex/static/kfsec-login.js"))
                .header("sec-fetch-dest", "script"),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.text().await.unwrap().contains("location.hash"));
    // The login's answers: the 303 to the callback and the callback's 302 back to /pipeline/
    // carry no fragment, so the browser's own (put on the form's target) is kept.
    let r = b.post_form(&form_url, &[("login", USER), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 303);
    assert!(!location(&r).contains('#'), "{}", location(&r));
    let r = b.get(location(&r)).await;
    assert_eq!((r.status().as_u16(), location(&r)), (302, "/pipeline/"));
    k.running.shutdown().await;
}
