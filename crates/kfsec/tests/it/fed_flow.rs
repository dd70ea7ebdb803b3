//! The login flow with several connectors, as relying parties and browsers see it: Dex's
//! chooser and `connector_id=`, password connectors' forms, a federated login through a second
//! kfsec (the upstream) to tokens with Dex's `sub` and `federated_claims`, the callback bound
//! to the browser that started it, refresh that re-asks the upstream, and the password grant.

use kfsec_server::admin::{AdminRequest, AdminResponse};
use serde_json::Value;

use crate::harness::*;

const RP: &str = "client_id=rp-test&redirect_uri=https%3A%2F%2Frp.example%2Fcb&response_type=code&state=s1";

/// `location` resolved against the URL it answered.
fn resolve(from: &str, location: &str) -> String {
    url::Url::parse(from).unwrap().join(location).unwrap().to_string()
}

/// GETs `url`, following redirects across hosts; returns the last response and its URL.
async fn follow(b: &mut Browser, url: &str) -> (reqwest::Response, String) {
    let mut url = url.to_owned();
    for _ in 0..10 {
        let resp = b.get(&url).await;
        if !resp.status().is_redirection() {
            return (resp, url);
        }
        url = resolve(&url, location(&resp));
    }
    panic!("redirect loop");
}

/// Three connectors (an LDAP directory and an OIDC provider that are both unreachable, and the
/// password database) on a kfsec listening at `port`.
fn three_connectors(port: u16) -> String {
    let dead = free_port();
    format!(
        "enablePasswordDB: true
connectors:
- type: ldap
  id: corp-ldap
  name: Corporate LDAP
  config:
    host: 127.0.0.1:{dead}
    insecureNoSSL: true
    timeout: 2s
    userSearch: {{baseDN: 'ou=people,dc=example,dc=org', username: uid, idAttr: uid, emailAttr: mail, nameAttr: cn}}
- type: oidc
  id: keycloak
  name: Keycloak
  config:
    issuer: https://127.0.0.1:{dead}/realms/kubeflow
    clientID: kubeflow
    clientSecret: s3cret-s3cret
    redirectURI: https://localhost:{port}/dex/callback
    timeout: 2s
"
    )
}

#[tokio::test]
async fn the_chooser_offers_every_connector_and_connector_id_picks_one() {
    let port = free_port();
    let k = Kfsec::start_on(port, &three_connectors(port)).await;
    let mut b = k.client();
    let auth = format!("/dex/auth?{RP}&scope=openid+email");

    let r = b.get(&auth).await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("<title>Log in to kfsec</title>"), "{html}");
    let order: Vec<usize> = [
        "Log in with Corporate LDAP",
        "Log in with Keycloak",
        "Log in with Email",
    ]
    .iter()
    .map(|t| html.find(t).unwrap_or_else(|| panic!("{t} in {html}")))
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "configured order, local last: {html}"
    );
    assert!(html.contains("class=\"dex-btn-icon--ldap\""), "{html}");

    // connector_id: unknown is Dex's 400; known goes to /auth/{id} with the rest of the query.
    let r = b.get(&format!("{auth}&connector_id=nope")).await;
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Connector ID does not match a valid Connector")
    );
    let r = b.get(&format!("{auth}&connector_id=local")).await;
    assert!(r.status().is_redirection(), "{}", r.status());
    let to = location(&r).to_owned();
    assert!(to.starts_with("/dex/auth/local?"), "{to}");
    assert!(!to.contains("connector_id"), "{to}");
    // An unknown connector in the path is refused the same way.
    assert_eq!(b.get(&format!("/dex/auth/nope?{RP}&scope=openid")).await.status(), 400);

    // The LDAP button leads to its form, labelled as Dex labels it, with a way back.
    let href = |id: &str| {
        let at = html.find(&format!("id=\"connector-{id}\"")).unwrap();
        let start = html[..at].rfind("href=\"").unwrap() + 6;
        html[start..at].split('"').next().unwrap().replace("&#38;", "&")
    };
    let (form, form_url) = b.follow(&href("corp-ldap")).await;
    assert_eq!(form.status(), 200);
    assert!(form_url.contains("/dex/auth/corp-ldap/login?state="), "{form_url}");
    let page = form.text().await.unwrap();
    assert!(page.contains(">Username</label>"), "{page}");
    assert!(page.contains("Select another login method."), "{page}");
    // The directory is down: a 502/504 page after at most the timeout, never a 500, and the
    // lockout does not count it.
    for _ in 0..6 {
        let r = b
            .post_form(&form_url, &[("login", "ann"), ("password", "pw-pw-pw-pw")])
            .await;
        assert!(matches!(r.status().as_u16(), 502 | 504), "{}", r.status());
        let text = r.text().await.unwrap();
        assert!(
            text.contains("could not be reached") || text.contains("in time"),
            "{text}"
        );
    }
    // An empty password never reaches the directory: the form answers at once.
    let r = b.post_form(&form_url, &[("login", "ann"), ("password", "")]).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("Invalid Username and password."));

    // The OIDC button: the upstream's discovery fails → an error page with a link back.
    let r = b.get(&href("keycloak")).await;
    assert!(matches!(r.status().as_u16(), 502 | 504), "{}", r.status());
    let text = r.text().await.unwrap();
    assert!(text.contains("Back to the login"), "{text}");
    assert!(!text.contains("127.0.0.1"), "no upstream detail for users: {text}");

    // The local button still logs the user in, through the same chooser.
    let (form, form_url) = b.follow(&href("local")).await;
    assert_eq!(form.status(), 200);
    assert!(form.text().await.unwrap().contains(">Email Address</label>"));
    let next = login_and_approve(&mut b, &form_url).await;
    assert!(next.starts_with("https://rp.example/cb?code="), "{next}");
}

#[tokio::test]
async fn one_connector_goes_straight_on_unless_the_chooser_is_forced() {
    let k = Kfsec::start("").await;
    let mut b = k.client();
    let r = b.get(&format!("/dex/auth?{RP}&scope=openid")).await;
    assert!(r.status().is_redirection());
    assert!(location(&r).starts_with("/dex/auth/local?"), "{}", location(&r));

    let k = Kfsec::start("oauth2:\n  alwaysShowLoginScreen: true\nfrontend:\n  issuer: Example Corp\n  theme: dark\n  logoURL: https://example.com/logo.png\n").await;
    let mut b = k.client();
    let r = b.get(&format!("/dex/auth?{RP}&scope=openid")).await;
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    let html = r.text().await.unwrap();
    assert!(html.contains("<h1>Log in to Example Corp</h1>"), "{html}");
    assert!(html.contains("<body class=\"dark\">"), "{html}");
    assert!(
        html.contains("<img class=\"logo\" src=\"https://example.com/logo.png\""),
        "{html}"
    );
    assert!(csp.contains("img-src 'self' https:"), "{csp}");
    assert!(html.contains("Log in with Email"), "{html}");
    assert!(!html.contains("Select another"), "{html}");
}

/// A kfsec (`k`) whose `oidc` connector `upstream` logs users in at a second kfsec (`up`), a
/// browser trusting both, and a user of the upstream.
struct Federation {
    up: Kfsec,
    k: Kfsec,
    b: Browser,
    callback: String,
    email: &'static str,
    password: &'static str,
}

async fn federation() -> Federation {
    let port = free_port();
    let callback = format!("https://localhost:{port}/dex/callback");
    let up = Kfsec::start("oauth2:\n  skipApprovalScreen: true\n").await;
    let AdminResponse::Client(client) = admin(
        &up,
        &AdminRequest::ClientAdd {
            id: "kfsec-downstream".into(),
            name: Some("Downstream".into()),
            redirect_uris: vec![callback.clone()],
            public: false,
        },
    )
    .await
    else {
        panic!("client add");
    };
    let (email, password): (&str, &str) = ("fed.user@example.org", "federated password 1");
    admin(
        &up,
        &AdminRequest::UserAdd {
            email: email.into(),
            username: Some("Fed User".into()),
            groups: vec!["ml-team".into(), "system:masters".into()],
            password: password.into(),
        },
    )
    .await;
    let ca = up.running.ca_pem.replace('\n', "\\n");
    let k = Kfsec::start_on(
        port,
        &format!(
            "oauth2:\n  skipApprovalScreen: true\nconnectors:\n- type: oidc\n  id: upstream\n  name: Upstream kfsec\n  config:\n    issuer: {}\n    clientID: kfsec-downstream\n    clientSecret: \"{}\"\n    redirectURI: {callback}\n    rootCAs: [\"{ca}\"]\n    scopes: [profile, email, groups, offline_access]\n    insecureEnableGroups: true\n",
            up.running.issuer,
            client.secret.unwrap()
        ),
    )
    .await;
    // A browser that trusts both sites.
    let mut b = k.client();
    b.http = reqwest::Client::builder()
        .tls_certs_only(
            [&k.running.ca_pem, &up.running.ca_pem].map(|p| reqwest::Certificate::from_pem(p.as_bytes()).unwrap()),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Federation {
        up,
        k,
        b,
        callback,
        email,
        password,
    }
}

#[tokio::test]
async fn a_federated_login_through_a_second_kfsec_mints_dex_identities_and_refresh_rechecks_it() {
    let Federation {
        up,
        k,
        mut b,
        callback,
        email,
        password,
    } = federation().await;
    let start = format!(
        "{}/auth?{RP}&scope=openid+email+profile+groups+offline_access+federated%3Aid&connector_id=upstream",
        k.running.issuer
    );
    // To the upstream, which shows its own login form.
    let (form, form_url) = follow(&mut b, &start).await;
    assert_eq!(form.status(), 200, "{form_url}");
    assert!(form_url.starts_with(&up.running.issuer), "{form_url}");
    assert!(
        b.cookies.contains_key("__Host-kfsec_upstream_login"),
        "the login is bound to this browser"
    );
    let r = b
        .post_form(&form_url, &[("login", email), ("password", password)])
        .await;
    assert_eq!(r.status(), 303);
    let back_to_us = resolve(&form_url, location(&r));
    assert!(back_to_us.starts_with(&callback), "{back_to_us}");

    // The callback only works in the browser that started the login.
    let mut stranger = k.client();
    let r = stranger.get(&back_to_us).await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("does not belong to a login started in this browser"),
        "{text}"
    );

    let r = b.get(&back_to_us).await;
    assert_eq!(r.status(), 303, "{:?}", r.text().await);
    let done = location(&r).to_owned();
    assert!(done.starts_with("https://rp.example/cb?code="), "{done}");
    assert!(!b.cookies.contains_key("__Host-kfsec_upstream_login"), "cleared");
    // Replaying the callback (same state, same code) in the same browser does not log in twice.
    assert_ne!(b.get(&back_to_us).await.status(), 303);

    let http = http_client(&k.running.ca_pem);
    let token = |form: Vec<(&'static str, String)>| rp_token(&k, form);
    let code = query_param(&done, "code").unwrap();
    let (status, t) = token(vec![
        ("grant_type", "authorization_code".into()),
        ("code", code),
        ("redirect_uri", "https://rp.example/cb".into()),
    ])
    .await;
    assert_eq!(status, 200, "{t}");
    let c = id_token_claims(&t);
    assert_eq!(c["email"], email);
    assert_eq!(c["email_verified"], true);
    assert_eq!(c["name"], "Fed User");
    assert_eq!(
        c["groups"],
        serde_json::json!(["ml-team"]),
        "system: groups never come from upstream"
    );
    let upstream_user = c["federated_claims"]["user_id"].as_str().unwrap().to_owned();
    assert_eq!(c["federated_claims"]["connector_id"], "upstream");
    assert_eq!(
        c["sub"],
        kfsec_idp::dex_subject(&upstream_user, "upstream"),
        "Dex's sub"
    );
    assert_eq!(
        kfsec_idp::connector::parse_subject(c["sub"].as_str().unwrap()),
        Some((upstream_user.clone(), "upstream".into()))
    );

    // Refresh asks the upstream again (a new token from the same upstream login); two at once
    // (a CLI's parallel processes) both succeed with the same successor.
    let refresh = || {
        token(vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", t["refresh_token"].as_str().unwrap().into()),
        ])
    };
    let ((status, t2), (status_b, t2b)) = tokio::join!(refresh(), refresh());
    assert_eq!((status, status_b), (200, 200), "{t2} {t2b}");
    assert_eq!(t2["refresh_token"], t2b["refresh_token"]);
    assert_eq!(id_token_claims(&t2)["email"], email);

    // The password changes upstream (which revokes the upstream's grant): the next refresh is
    // invalid_grant (400, OAuth2 JSON), and the tokens already issued are revoked with
    // everything else the user held.
    admin(
        &up,
        &AdminRequest::UserPasswd {
            email: email.into(),
            password: "a new federated password".into(),
        },
    )
    .await;
    let (status, e) = token(vec![
        ("grant_type", "refresh_token".into()),
        ("refresh_token", t2["refresh_token"].as_str().unwrap().into()),
    ])
    .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"], "invalid_grant");
    let r = http
        .get(format!("{}/userinfo", k.running.issuer))
        .bearer_auth(t2["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the user's tokens are revoked");
    up.running.shutdown().await;
}

#[tokio::test]
async fn the_password_grant_checks_the_password_connector_under_the_lockout() {
    let http_for = |k: &Kfsec| (http_client(&k.running.ca_pem), format!("{}/token", k.running.issuer));
    let grant = |http: reqwest::Client, url: String, password: &'static str| async move {
        let r = http
            .post(url)
            .basic_auth("rp-test", Some("rp-secret-0123456789"))
            .form(&[
                ("grant_type", "password"),
                ("username", USER),
                ("password", password),
                ("scope", "openid email groups profile offline_access federated:id"),
            ])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };

    // Off unless configured, as in Dex.
    let k = Kfsec::start("").await;
    let (http, url) = http_for(&k);
    let (status, e) = grant(http, url, PASSWORD).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("unsupported_grant_type")),
        "{e}"
    );

    let k = Kfsec::start("oauth2:\n  passwordConnector: local\n").await;
    let disc: Value = http_client(&k.running.ca_pem)
        .get(format!("{}/.well-known/openid-configuration", k.running.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        disc["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&"password".into())
    );
    let (http, url) = http_for(&k);
    let (status, t) = grant(http.clone(), url.clone(), PASSWORD).await;
    assert_eq!(status, 200, "{t}");
    assert!(t["refresh_token"].is_string());
    let c = id_token_claims(&t);
    // The reference's test vector: static user 15841185641784 of the local connector.
    assert_eq!(c["sub"], "Cg4xNTg0MTE4NTY0MTc4NBIFbG9jYWw");
    assert_eq!(
        c["federated_claims"],
        serde_json::json!({"connector_id": "local", "user_id": "15841185641784"})
    );
    assert_eq!(c["groups"], serde_json::json!(["team-a"]));

    // Wrong passwords are refused in OAuth2 JSON, and the lockout counts them.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let (status, e) = grant(http.clone(), url.clone(), "wrong-password").await;
        assert!(e["error"].is_string(), "{e}");
        statuses.push(status);
    }
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let (status, e) = grant(http, url, PASSWORD).await;
    assert_eq!(status, 401, "locked out even with the right password: {e}");
}

#[tokio::test]
async fn the_idps_forms_refuse_cross_site_posts() {
    let k = Kfsec::start("").await;
    let mut b = k.client();
    let (form, form_url) = b.follow(&format!("/dex/auth?{RP}&scope=openid")).await;
    assert_eq!(form.status(), 200);
    let cross = |req: reqwest::RequestBuilder| req.header("sec-fetch-site", "cross-site");
    // A login posted from another site (login CSRF) is refused before any password check.
    let r = b
        .send(cross(
            b.http
                .post(b.url(&form_url))
                .form(&[("login", USER), ("password", PASSWORD)]),
        ))
        .await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("sent from another site"));
    let r = b
        .send(
            b.http
                .post(b.url(&form_url))
                .header("origin", "https://evil.example")
                .form(&[("login", USER), ("password", PASSWORD)]),
        )
        .await;
    assert_eq!(r.status(), 403);
    // A device code posted for the victim from another site does not start their login.
    let r = b
        .send(cross(
            b.http
                .post(b.url("/dex/device/auth/verify_code"))
                .form(&[("user_code", "ABCD-EFGH")]),
        ))
        .await;
    assert_eq!(r.status(), 403);
    // The approval form too.
    let r = b
        .send(cross(
            b.http
                .post(b.url("/dex/approval"))
                .form(&[("req", "x"), ("approval", "approve")]),
        ))
        .await;
    assert_eq!(r.status(), 403);
    // The same forms from kfsec's own pages work.
    let r = b
        .send(
            b.http
                .post(b.url(&form_url))
                .header("sec-fetch-site", "same-origin")
                .form(&[("login", USER), ("password", PASSWORD)]),
        )
        .await;
    assert_eq!(r.status(), 303);
}

#[tokio::test]
async fn non_ascii_names_reach_the_upstream_as_utf8_headers() {
    // Directory users are often not ASCII (`jürgen`, `équipe`); the identity headers carry
    // them as UTF-8 rather than being dropped (which left the upstream without a user).
    let k = Kfsec::start("").await;
    admin(
        &k,
        &AdminRequest::UserAdd {
            email: "jürgen@example.org".into(),
            username: Some("jürgen".into()),
            groups: vec!["équipe".into(), "team-b".into()],
            password: PASSWORD.into(),
        },
    )
    .await;
    let mut b = k.client();
    let (r, _) = b.login("/app/", "jürgen@example.org", PASSWORD).await;
    assert_eq!(r.status(), 200);
    let r = b.get("/authservice/check").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["kubeflow-userid"].as_bytes(),
        "jürgen@example.org".as_bytes()
    );
    assert_eq!(r.headers()["kubeflow-groups"].as_bytes(), "équipe,team-b".as_bytes());
}

#[tokio::test]
async fn a_local_session_keeps_no_refresh_token() {
    // The gatekeeper asks for offline_access (federated sessions are re-checked with it); a
    // local session is not re-checked, so its refresh token is dropped at once.
    let k = Kfsec::start("").await;
    let mut b = k.client();
    let (r, _) = b.login("/app/", USER, PASSWORD).await;
    assert_eq!(r.status(), 200);
    let left = kfsec_store::list_all(k.running.store.as_ref(), "/kfsec/idp/refresh/")
        .await
        .unwrap()
        .items;
    assert!(left.is_empty(), "{} refresh records left", left.len());
}

#[tokio::test]
async fn replayed_callbacks_are_throttled_per_address() {
    // Each callback may cost a call to the upstream's token endpoint with kfsec's credentials:
    // one address replaying a (valid, browser-bound) callback with junk codes is cut off.
    let Federation {
        up, k, mut b, callback, ..
    } = federation().await;
    // /dex/auth → /dex/auth/upstream → the upstream's /auth with the state it must echo.
    let mut url = format!(
        "{}/auth?{RP}&scope=openid+email&connector_id=upstream",
        k.running.issuer
    );
    while url.starts_with(&k.running.issuer) {
        let r = b.get(&url).await;
        assert!(r.status().is_redirection(), "{url}: {}", r.status());
        url = resolve(&url, location(&r));
    }
    assert!(url.starts_with(&up.running.issuer), "{url}");
    assert!(b.cookies.contains_key("__Host-kfsec_upstream_login"));
    let upstream_state = query_param(&url, "state").unwrap();
    let mut statuses = Vec::new();
    for _ in 0..32 {
        let r = b
            .get(&format!("{callback}?state={upstream_state}&code=junk-code"))
            .await;
        statuses.push(r.status().as_u16());
    }
    assert!(statuses[..30].iter().all(|s| *s == 400), "{statuses:?}");
    assert_eq!(statuses[30..], [429, 429], "{statuses:?}");
    up.running.shutdown().await;
}
