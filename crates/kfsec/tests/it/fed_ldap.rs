//! The `ldap` connector against a real OpenLDAP slapd (see `slapd`): ldaps and StartTLS logins
//! with groups from two matchers, hostile and non-ASCII user names, refresh after the directory
//! changed, TLS trust and client certificates, and dead or silent directories answering in
//! bounded time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kfsec_idp::connector::config::OpenContext;
use kfsec_idp::connector::ldap::{LdapConnector, build};
use kfsec_idp::connector::{ConnectorError, PasswordConnector, Scopes, UpstreamIdentity};
use serde_json::json;

use crate::slapd::*;

#[allow(clippy::disallowed_methods)] // measures how long real network waits take (the bounds under test)
fn now() -> Instant {
    Instant::now()
}

const ALL: Scopes = Scopes {
    offline_access: true,
    groups: true,
};

fn ctx() -> OpenContext {
    OpenContext::new("https://kf.example.com/dex", Duration::from_secs(10))
}

fn connector(config: serde_json::Value) -> LdapConnector {
    build("ldap", config, &ctx()).unwrap()
}

async fn login(c: &LdapConnector, user: &str, pw: &str) -> Option<UpstreamIdentity> {
    c.login(ALL, user, pw).await.unwrap()
}

fn groups(id: &UpstreamIdentity) -> Vec<&str> {
    id.groups.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldaps_login_with_groups_from_two_matchers_and_refresh() {
    let Some(d) = Slapd::start().await else { return };
    let c = connector(d.config());
    assert_eq!(c.prompt(), "Directory user");

    let id = login(&c, "alice", ALICE_PW).await.expect("alice logs in");
    assert_eq!(id.user_id, "alice");
    assert_eq!(id.email, "alice@example.org");
    assert!(id.email_verified);
    assert_eq!(id.username, "Alice Example");
    assert_eq!(id.preferred_username, "alice-ex");
    // member DN (admins), its parent by recursion (platform), memberUid (developers).
    assert_eq!(groups(&id), ["admins", "platform", "developers"]);
    assert_eq!(
        id.connector_data,
        Some(json!({"dn": format!("uid=alice,{PEOPLE}"), "username": "alice"}))
    );
    // Without the groups scope no group search; refresh data all the same.
    let plain = c.login(Scopes::default(), "alice", ALICE_PW).await.unwrap().unwrap();
    assert!(plain.groups.is_empty());
    assert!(plain.connector_data.is_some());

    assert!(login(&c, "alice", "wrong").await.is_none());
    assert!(login(&c, "alice", &format!("{ALICE_PW} ")).await.is_none());
    assert!(login(&c, "mallory", ALICE_PW).await.is_none());
    assert!(login(&c, "alice", "").await.is_none());

    // Refresh reads the directory again.
    let r = c.refresh(ALL, &id).await.unwrap();
    assert_eq!(
        (r.email.as_str(), groups(&r)),
        ("alice@example.org", vec!["admins", "platform", "developers"])
    );
    assert_eq!(r.connector_data, id.connector_data);
    d.admin(
        "ldapmodify",
        &[],
        &format!(
            "dn: uid=alice,{PEOPLE}\nchangetype: modify\nreplace: mail\nmail: alice.new@example.org\n\n\
             dn: cn=developers,{GROUPS}\nchangetype: modify\ndelete: memberUid\nmemberUid: alice\n"
        ),
    );
    let r = c.refresh(ALL, &id).await.unwrap();
    assert_eq!(r.email, "alice.new@example.org");
    assert_eq!(groups(&r), ["admins", "platform"]);

    // Removed upstream: the refresh is refused, and so is a login.
    d.admin("ldapdelete", &[&format!("uid=alice,{PEOPLE}")], "");
    match c.refresh(ALL, &id).await {
        Err(ConnectorError::Revoked(why)) => assert!(why.contains("not found"), "{why}"),
        other => panic!("refresh of a deleted user: {other:?}"),
    }
    assert!(login(&c, "alice", ALICE_PW).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_non_ascii_special_and_hostile_user_names() {
    let Some(d) = Slapd::start().await else { return };
    let c = connector(d.config_starttls());

    // Non-ASCII name and password (Dex's double escape never matches these).
    let j = login(&c, JUERGEN, JUERGEN_PW).await.expect("jürgen logs in");
    assert_eq!(j.user_id, JUERGEN);
    assert_eq!(j.username, "Jürgen Groß");
    assert_eq!(j.email, "juergen@example.org");
    assert_eq!(groups(&j), ["admins", "platform"]);
    assert!(login(&c, JUERGEN, "pässwörd").await.is_none());

    // `( ) * \` in the name: found, bound, and its groups found by DN and by memberUid.
    let s = login(&c, SPECIAL, SPECIAL_PW).await.expect("the special user logs in");
    assert_eq!(s.user_id, SPECIAL);
    assert_eq!(s.email, "special@example.org");
    assert_eq!(groups(&s), ["specials", "developers"]);
    let r = c.refresh(ALL, &s).await.unwrap();
    assert_eq!(groups(&r), ["specials", "developers"]);

    // A user in no group.
    let n = login(&c, "nogroup", NOGROUP_PW).await.expect("nogroup logs in");
    assert!(n.groups.is_empty());

    // Filter injection: each of these would match admin (or everyone) if not escaped.
    for name in [
        "*",
        "ad*",
        "admin)(uid=*",
        "admin)(|(uid=*",
        "*)(uid=admin",
        "admin\0",
        "\\61dmin",
        "admin\\",
    ] {
        for pw in [ADMIN_PW, ALICE_PW] {
            assert!(
                login(&c, name, pw).await.is_none(),
                "{name:?} must not log in as anyone"
            );
        }
    }
    // The real admin still can (the directory compares uid case-insensitively).
    assert_eq!(login(&c, "Admin", ADMIN_PW).await.unwrap().user_id, "admin");

    // Two entries with uid=dup: refused as ambiguous (409), whatever the password.
    for pw in [DUP_PW, "wrong"] {
        match c.login(ALL, "dup", pw).await {
            Err(e @ ConnectorError::Ambiguous(_)) => assert_eq!(e.status(), 409),
            other => panic!("dup: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_of_a_moved_or_replaced_entry_is_revoked() {
    let Some(d) = Slapd::start().await else { return };
    let c = connector(d.config());
    let alice = login(&c, "alice", ALICE_PW).await.unwrap();
    let special = login(&c, SPECIAL, SPECIAL_PW).await.unwrap();

    // Renamed: the same user name now finds another DN.
    d.admin(
        "ldapmodify",
        &[],
        &format!("dn: uid=alice,{PEOPLE}\nchangetype: modrdn\nnewrdn: cn=Alice Example\ndeleteoldrdn: 0\n"),
    );
    match c.refresh(ALL, &alice).await {
        Err(ConnectorError::Revoked(why)) => assert!(why.contains("expected DN"), "{why}"),
        other => panic!("refresh of a moved entry: {other:?}"),
    }

    // Same DN, but the entry was deleted and re-created for someone else (new idAttr value).
    d.admin(
        "ldapmodify",
        &[],
        &format!("dn: {SPECIAL_DN}\nchangetype: modify\nreplace: uid\nuid: {SPECIAL}\nuid: other\n"),
    );
    // (idAttr's first value is still the same: not revoked.)
    assert!(c.refresh(ALL, &special).await.is_ok());
    let mut replaced = special.clone();
    replaced.user_id = "someone-else".into();
    assert!(matches!(
        c.refresh(ALL, &replaced).await,
        Err(ConnectorError::Revoked(_))
    ));

    // Refresh data that is not ours: refused (that chain only), not a panic.
    let mut junk = special.clone();
    junk.connector_data = Some(json!({"nope": 1}));
    assert!(matches!(
        c.refresh(ALL, &junk).await,
        Err(ConnectorError::Misconfigured(_))
    ));

    // A second entry now answers to the name: ambiguous (that chain ends, not the user).
    let dup = login(&c, "nogroup", NOGROUP_PW).await.unwrap();
    d.admin(
        "ldapmodify",
        &[],
        &format!(
            "dn: uid=nogroup2,ou=staff,{PEOPLE}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: nogroup2\nuid: nogroup\ncn: X\nsn: X\nmail: x@example.org\n"
        ),
    );
    assert!(matches!(c.refresh(ALL, &dup).await, Err(ConnectorError::Ambiguous(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_ldap_tls_trust_and_client_certificates() {
    let Some(d) = Slapd::start().await else { return };

    // insecureNoSSL: plain LDAP on the plain port.
    let mut plain = d.config();
    plain["host"] = format!("127.0.0.1:{}", d.ldap_port).into();
    plain["insecureNoSSL"] = true.into();
    plain.as_object_mut().unwrap().remove("rootCAData");
    assert!(login(&connector(plain), "alice", ALICE_PW).await.is_some());

    // rootCA as a file path, and "localhost" as the TLS name.
    let mut by_file = d.config();
    by_file["host"] = format!("localhost:{}", d.ldaps_port).into();
    by_file.as_object_mut().unwrap().remove("rootCAData");
    by_file["rootCA"] = d.pki.ca_file.display().to_string().into();
    assert!(login(&connector(by_file), "alice", ALICE_PW).await.is_some());

    // A CA that did not issue the server's certificate: a TLS error, over ldaps and StartTLS.
    let other = tempfile::tempdir().unwrap();
    let other_ca = kfsec_pki::CertificateAuthority::load_or_create(
        other.path(),
        kfsec_pki::KeyAlgorithm::EcdsaP256,
        &kfsec_types::SystemClock,
    )
    .unwrap();
    for mut cfg in [d.config(), d.config_starttls()] {
        cfg["rootCAData"] = STANDARD.encode(other_ca.cert_pem()).into();
        match connector(cfg.clone()).login(ALL, "alice", ALICE_PW).await {
            Err(ConnectorError::Unreachable(why)) => {
                // (Both CAs are named alike: webpki finds the issuer by name, then the
                // signature fails.)
                assert!(why.contains("TLS") && why.contains("invalid peer certificate"), "{why}")
            }
            other => panic!("wrong CA: {other:?}"),
        }
        // insecureSkipVerify accepts it (as Dex does).
        cfg["insecureSkipVerify"] = true.into();
        assert!(login(&connector(cfg), "alice", ALICE_PW).await.is_some());
    }

    // ldaps to the plain port: an error, quickly.
    let mut wrong_port = d.config();
    wrong_port["host"] = format!("127.0.0.1:{}", d.ldap_port).into();
    let t = now();
    assert!(matches!(
        connector(wrong_port).login(ALL, "alice", ALICE_PW).await,
        Err(ConnectorError::Unreachable(_) | ConnectorError::Timeout)
    ));
    assert!(t.elapsed() < Duration::from_secs(5));

    // A directory that demands a client certificate.
    let Some(strict) = Slapd::start_with(Options {
        require_client_cert: true,
        ..Options::default()
    })
    .await
    else {
        return;
    };
    match connector(strict.config()).login(ALL, "alice", ALICE_PW).await {
        Err(ConnectorError::Unreachable(_)) => {}
        other => panic!("no client certificate: {other:?}"),
    }
    let mut with_cert = strict.config();
    with_cert["clientCert"] = strict.pki.client_cert.display().to_string().into();
    with_cert["clientKey"] = strict.pki.client_key.display().to_string().into();
    assert!(login(&connector(with_cert), "alice", ALICE_PW).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_anonymous_bind_and_a_restarted_directory() {
    let Some(mut d) = Slapd::start().await else { return };

    let mut bad = d.config();
    bad["bindPW"] = "not-the-password".into();
    match connector(bad).login(ALL, "alice", ALICE_PW).await {
        Err(e @ ConnectorError::Misconfigured(_)) => {
            assert!(!format!("{e}").contains("not-the-password"));
            assert_eq!(e.status(), 502);
        }
        other => panic!("wrong service password: {other:?}"),
    }

    // No bindDN/bindPW: an anonymous bind (this directory lets anonymous users search).
    let mut anon = d.config();
    anon.as_object_mut().unwrap().remove("bindDN");
    anon.as_object_mut().unwrap().remove("bindPW");
    assert!(login(&connector(anon), "alice", ALICE_PW).await.is_some());

    // Pooled connections cut by a restart: the next login opens new ones.
    let c = connector(d.config());
    assert!(login(&c, "alice", ALICE_PW).await.is_some());
    d.restart().await;
    assert!(login(&c, "alice", ALICE_PW).await.is_some());
    assert!(login(&c, JUERGEN, JUERGEN_PW).await.is_some());
}

/// A TCP listener that accepts and never answers; counts connections.
async fn blackhole() -> (u16, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (port, count)
}

fn offline_config(host: String) -> serde_json::Value {
    json!({
        "host": host,
        "insecureSkipVerify": true,
        "bindDN": SERVICE_DN,
        "bindPW": SERVICE_PW,
        "timeout": "1s",
        "userSearch": {"baseDN": PEOPLE, "username": "uid", "idAttr": "uid", "emailAttr": "mail"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_silent_directories_answer_in_bounded_time() {
    let slack = Duration::from_millis(1500);

    // Nothing listens: unreachable, at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = now();
    match connector(offline_config(format!("127.0.0.1:{closed}")))
        .login(ALL, "alice", "pw")
        .await
    {
        Err(ConnectorError::Unreachable(_)) => {}
        other => panic!("closed port: {other:?}"),
    }
    assert!(t.elapsed() < slack, "{:?}", t.elapsed());

    // A listener that never answers (TLS handshake, StartTLS, bind all hang).
    let (port, accepted) = blackhole().await;
    let silent = Arc::new(connector(offline_config(format!("127.0.0.1:{port}"))));
    // An empty password never reaches it.
    let t = now();
    assert!(silent.login(ALL, "alice", "").await.unwrap().is_none());
    assert!(t.elapsed() < Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "an empty password contacted the directory"
    );

    for start_tls in [false, true] {
        let mut cfg = offline_config(format!("127.0.0.1:{port}"));
        cfg["startTLS"] = start_tls.into();
        let t = now();
        match connector(cfg).login(ALL, "alice", "pw").await {
            Err(ConnectorError::Timeout) => {}
            other => panic!("silent directory (startTLS {start_tls}): {other:?}"),
        }
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(1) + slack,
            "{took:?}"
        );
    }

    // Many logins at once (a 3 s timeout this time): each ends within the timeout (they wait
    // for the pool's few connections no longer than that), opening no more connections than
    // the pool holds, and a healthy directory's logins meanwhile are not held up.
    let (port, accepted) = blackhole().await;
    let mut cfg = offline_config(format!("127.0.0.1:{port}"));
    cfg["timeout"] = "3s".into();
    let silent = Arc::new(connector(cfg));
    let healthy = Slapd::start().await;
    let t = now();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let c = silent.clone();
        tasks.push(tokio::spawn(async move {
            let r = c.login(ALL, &format!("user{i}"), "pw").await;
            (r, now())
        }));
    }
    if let Some(d) = &healthy {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = now();
        assert!(login(&connector(d.config()), "alice", ALICE_PW).await.is_some());
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }
    for task in tasks {
        let (r, ended) = task.await.unwrap();
        assert!(matches!(r, Err(ConnectorError::Timeout)), "{r:?}");
        assert!(ended - t < Duration::from_secs(3) + slack, "{:?}", ended - t);
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!(opened <= kfsec_idp::connector::ldap::POOL_SIZE, "{opened} connections");
}

/// Follows kfsec's redirects from `url` (approving if asked); the last answer and its URL.
async fn through(b: &mut crate::harness::Browser, url: &str) -> (reqwest::Response, String) {
    let mut url = url.to_owned();
    for _ in 0..20 {
        let r = b.get(&url).await;
        if !r.status().is_redirection() {
            return (r, url);
        }
        url = crate::harness::location(&r).to_owned();
        if url.starts_with("/dex/approval") {
            let req = crate::harness::query_param(&url, "req").unwrap();
            let r = b.post_form(&url, &[("req", &req), ("approval", "approve")]).await;
            url = crate::harness::location(&r).to_owned();
        }
    }
    panic!("redirect loop at {url}");
}

/// From a protected page through the chooser to the LDAP form; submits `user`/`password`.
async fn browser_login(b: &mut crate::harness::Browser, user: &str, password: &str) -> (reqwest::Response, String) {
    let (chooser, auth_url) = through(b, "/app/notebooks").await;
    assert_eq!(chooser.status(), 200, "{auth_url}");
    let page = chooser.text().await.unwrap();
    assert!(page.contains("Log in with Corporate LDAP"), "{page}");
    let (form, form_url) = through(b, &format!("{auth_url}&connector_id=corp-ldap")).await;
    assert_eq!(form.status(), 200, "{form_url}");
    assert!(form_url.contains("/dex/auth/corp-ldap/login"), "{form_url}");
    assert!(form.text().await.unwrap().contains("Directory user"));
    let r = b.post_form(&form_url, &[("login", user), ("password", password)]).await;
    if !r.status().is_redirection() {
        return (r, form_url);
    }
    let next = crate::harness::location(&r).to_owned();
    through(b, &next).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_logs_in_through_the_chooser_and_ldap_to_the_home_page() {
    let Some(d) = Slapd::start().await else { return };
    let yaml = format!(
        "enablePasswordDB: true\nconnectors:\n- type: ldap\n  id: corp-ldap\n  name: Corporate LDAP\n  config: {}\n",
        d.config()
    );
    let k = crate::harness::Kfsec::start(&yaml).await;

    // alice: a protected page → the gatekeeper → the chooser → the LDAP form → the page, as
    // alice with her groups from both matchers.
    let mut b = k.client();
    let (last, url) = browser_login(&mut b, "alice", ALICE_PW).await;
    assert_eq!(last.status(), 200, "{url}");
    let seen: serde_json::Value = last.json().await.unwrap();
    assert_eq!(seen["path"], "/app/notebooks");
    assert_eq!(seen["headers"]["kubeflow-userid"], "alice@example.org");
    assert_eq!(seen["headers"]["kubeflow-groups"], "admins,platform,developers");
    let home = b.get("/").await.text().await.unwrap();
    assert!(home.contains("alice@example.org"), "{home}");
    assert!(home.contains("developers"), "{home}");

    // A non-ASCII name and password through the form's encoding.
    let mut b = k.client();
    let (last, url) = browser_login(&mut b, JUERGEN, JUERGEN_PW).await;
    assert_eq!(last.status(), 200, "{url}");
    let seen: serde_json::Value = last.json().await.unwrap();
    assert_eq!(seen["headers"]["kubeflow-userid"], "juergen@example.org");
    assert_eq!(seen["headers"]["kubeflow-groups"], "admins,platform");

    // Wrong password and a filter injection: the form again, 401, no session.
    for (user, pw) in [("alice", "wrong"), ("*", ALICE_PW), ("admin)(uid=*", ADMIN_PW)] {
        let mut b = k.client();
        let (r, _) = browser_login(&mut b, user, pw).await;
        assert_eq!(r.status(), 401, "{user:?}");
        assert!(!b.cookies.contains_key("authservice_session"), "{user:?}");
    }
    // Two entries share the name: a 409 page that says so, never a 500.
    let mut b = k.client();
    let (r, _) = browser_login(&mut b, "dup", DUP_PW).await;
    assert_eq!(r.status(), 409);
    let page = r.text().await.unwrap();
    assert!(page.contains("More than one account matches"), "{page}");
    assert!(!page.contains("ou=people"), "no directory detail for users: {page}");
}

/// The password grant (Dex's `oauth2.passwordConnector`) as the CLI uses it, against the LDAP
/// connector; the refresh re-searches the directory, and a user deleted there loses every
/// credential (refresh, access token, browser session) at the next refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_grant_refresh_and_removal_upstream_end_to_end() {
    let Some(d) = Slapd::start().await else { return };
    let yaml = format!(
        "enablePasswordDB: true\noauth2:\n  passwordConnector: corp-ldap\nconnectors:\n- type: ldap\n  id: corp-ldap\n  name: Corporate LDAP\n  config: {}\n",
        d.config()
    );
    let k = crate::harness::Kfsec::start(&yaml).await;
    let http = crate::harness::http_client(&k.running.ca_pem);
    let token = |form: Vec<(&'static str, String)>| crate::harness::rp_token(&k, form);
    let password = |user: &str, pw: &str| {
        vec![
            ("grant_type", "password".to_owned()),
            ("username", user.to_owned()),
            ("password", pw.to_owned()),
            (
                "scope",
                "openid email groups profile offline_access federated:id".to_owned(),
            ),
        ]
    };
    let (status, t) = token(password("alice", ALICE_PW)).await;
    assert_eq!(status, 200, "{t}");
    let c = crate::harness::id_token_claims(&t);
    assert_eq!(c["email"], "alice@example.org");
    assert_eq!(c["email_verified"], true);
    assert_eq!(c["name"], "Alice Example");
    assert_eq!(c["groups"], json!(["admins", "platform", "developers"]));
    assert_eq!(c["sub"], kfsec_idp::dex_subject("alice", "corp-ldap"));
    assert_eq!(
        c["federated_claims"],
        json!({"connector_id": "corp-ldap", "user_id": "alice"})
    );
    let (status, e) = token(password("alice", "wrong")).await;
    assert_eq!(status, 401, "{e}");
    let (status, e) = token(password("*", ALICE_PW)).await;
    assert_eq!(status, 401, "{e}");

    // Brute force against a directory user meets the same lockout as the local database.
    for _ in 0..12 {
        let (status, e) = token(password("nogroup", "guess")).await;
        assert_eq!(status, 401, "{e}");
    }
    let (status, e) = token(password("nogroup", NOGROUP_PW)).await;
    assert_eq!(status, 401, "locked out even with the right password: {e}");

    // alice also has a browser session.
    let mut b = k.client();
    let (last, url) = browser_login(&mut b, "alice", ALICE_PW).await;
    assert_eq!(last.status(), 200, "{url}");

    // A refresh reads the directory again: the new group membership shows.
    d.admin(
        "ldapmodify",
        &[],
        &format!("dn: cn=developers,{GROUPS}\nchangetype: modify\ndelete: memberUid\nmemberUid: alice\n"),
    );
    let (status, t2) = token(vec![
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", t["refresh_token"].as_str().unwrap().into()),
    ])
    .await;
    assert_eq!(status, 200, "{t2}");
    assert_eq!(
        crate::harness::id_token_claims(&t2)["groups"],
        json!(["admins", "platform"])
    );

    // Deleted in the directory: the next refresh is invalid_grant, and alice's access token
    // and browser session end with it.
    d.admin("ldapdelete", &[&format!("uid=alice,{PEOPLE}")], "");
    let (status, e) = token(vec![
        ("grant_type", "refresh_token".to_owned()),
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
    assert_eq!(r.status(), 401, "the access token is revoked");
    let r = b.get("/app/notebooks").await;
    assert!(r.status().is_redirection(), "the browser session ended: {}", r.status());
    let (status, e) = token(password("alice", ALICE_PW)).await;
    assert_eq!(status, 401, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_size_limit_never_makes_an_ambiguous_name_unique() {
    // The directory stops every answer after one entry (sizeLimitExceeded).
    let Some(d) = Slapd::start_with(Options {
        size_limit: Some(1),
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let c = connector(d.config());
    assert!(matches!(
        c.login(ALL, "dup", DUP_PW).await,
        Err(ConnectorError::Ambiguous(_))
    ));
    let alice = login(&c, "alice", ALICE_PW).await.unwrap();
    assert_eq!(groups(&alice), ["admins", "platform", "developers"]);
}

/// A TCP relay to `to` that counts the connections it carried.
async fn counting_relay(to: u16) -> (u16, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (port, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_reuse_pooled_connections_and_binds_use_fresh_ones() {
    let Some(d) = Slapd::start().await else { return };
    let (port, opened) = counting_relay(d.ldaps_port).await;
    let mut cfg = d.config();
    cfg["host"] = format!("127.0.0.1:{port}").into();
    let c = connector(cfg);
    // Each login: one user search, a bind, and four group searches (two matchers, one with a
    // parent level).
    for _ in 0..5 {
        assert_eq!(
            groups(&login(&c, "alice", ALICE_PW).await.unwrap()),
            ["admins", "platform", "developers"]
        );
    }
    // 25 searches on one pooled service connection; 5 binds on 5 fresh ones.
    assert_eq!(opened.load(Ordering::SeqCst), 1 + 5);
    // Refreshes search only.
    let id = login(&c, "alice", ALICE_PW).await.unwrap();
    for _ in 0..3 {
        c.refresh(ALL, &id).await.unwrap();
    }
    assert_eq!(opened.load(Ordering::SeqCst), 1 + 6);
}

/// The real binary on a Dex-shaped config with an `ldap` connector (`bindPW` from the
/// environment, as Dex's docs advise): the insecureNoSSL warning is printed at startup, a CLI
/// login through the password grant works, and the bind password appears in no output line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_warns_about_plain_ldap_and_never_prints_the_bind_password() {
    use std::io::BufRead;
    let Some(d) = Slapd::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = crate::harness::free_port();
    let config = dir.path().join("dex.yaml");
    std::fs::write(
        &config,
        format!(
            "issuer: https://localhost:{port}/dex
staticClients:
- id: kubectl
  name: kubectl
  secret: kubectl-secret-0123456789
  redirectURIs: [\"http://localhost:8000\"]
oauth2:
  passwordConnector: corp-ldap
connectors:
- type: ldap
  id: corp-ldap
  name: Corporate LDAP
  config:
    host: 127.0.0.1:{ldap}
    insecureNoSSL: true
    bindDN: {SERVICE_DN}
    bindPW: $LDAP_BIND_PW
    userSearch:
      baseDN: {PEOPLE}
      username: uid
      idAttr: uid
      emailAttr: mail
      nameAttr: cn
    groupSearch:
      baseDN: {GROUPS}
      userMatchers:
      - userAttr: DN
        groupAttr: member
      nameAttr: cn
",
            ldap = d.ldap_port,
        ),
    )
    .unwrap();
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" \"$@\" 2>&1")
        .arg(env!("CARGO_BIN_EXE_kfsec"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--https-addr", &format!("127.0.0.1:{port}")])
        .args(["--admin-addr", "127.0.0.1:0", "--webhook-addr", "127.0.0.1:0"])
        .env("KFSEC_LOG", "debug")
        .env("LDAP_BIND_PW", SERVICE_PW)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let child = Killed(child);
    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if l.starts_with("kfsec ready:") {
                let _ = ready_tx.send(());
            }
            sink.lock().unwrap().push(l);
        }
    });
    if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
        panic!("kfsec did not become ready: {:?}", lines.lock().unwrap());
    }

    let ca = std::fs::read_to_string(dir.path().join("data/pki/ca.crt")).unwrap();
    let r = crate::harness::http_client(&ca)
        .post(format!("https://localhost:{port}/dex/token"))
        .basic_auth("kubectl", Some("kubectl-secret-0123456789"))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", ALICE_PW),
            ("scope", "openid email groups"),
        ])
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    drop(child);
    reader.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body["id_token"].is_string(), "{body}");

    let lines = lines.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("insecureNoSSL") && l.contains("clear text")),
        "no insecureNoSSL warning: {lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains(SERVICE_PW)),
        "the bind password was printed: {lines:#?}"
    );
}

/// Guesses at one directory user spelled as the directory compares names alike — case,
/// full-width forms, zero-width and soft-hyphen characters, doubled spaces — share one lockout
/// budget: five of them lock the user (from that address) even for the right password, as
/// five guesses at the plain name do. (Each spelling used to buy a budget of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spellings_of_one_directory_name_share_its_lockout_budget() {
    let Some(d) = Slapd::start().await else { return };
    let yaml = format!(
        "enablePasswordDB: true\noauth2:\n  passwordConnector: corp-ldap\nconnectors:\n- type: ldap\n  id: corp-ldap\n  name: Corporate LDAP\n  config: {}\n",
        d.config()
    );
    let k = crate::harness::Kfsec::start(&yaml).await;
    let password = |user: &str, pw: &str| {
        vec![
            ("grant_type", "password".to_owned()),
            ("username", user.to_owned()),
            ("password", pw.to_owned()),
            ("scope", "openid email".to_owned()),
        ]
    };
    for spelling in [
        "ALICE",
        "ａｌｉｃｅ",
        "al\u{200B}ice",
        "ali\u{00AD}ce",
        "Ａlice\u{FEFF}",
    ] {
        let (status, e) = crate::harness::rp_token(&k, password(spelling, "guess")).await;
        assert_eq!(status, 401, "{spelling}: {e}");
    }
    let (status, e) = crate::harness::rp_token(&k, password("alice", ALICE_PW)).await;
    assert_eq!(status, 401, "not locked out after five guesses in other spellings: {e}");
    // Another user from the same address is not locked.
    let (status, e) = crate::harness::rp_token(&k, password("nogroup", NOGROUP_PW)).await;
    assert_eq!(status, 200, "{e}");
}
