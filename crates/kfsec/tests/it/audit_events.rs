//! The audit Events requests leave, read back from the log file kfsec writes by default
//! (`<dataDir>/audit/audit.log`): identity events (failed and successful logins with connector
//! and reason, session start, logout, password grant, token refresh, device code and approval),
//! a proxied request (non-resource, route decision), the `Audit-ID` header (a client's reused,
//! a bad one replaced by a generated UUID, echoed either way), `sourceIPs` with and without a
//! trusted proxy — and no password, token, code or cookie anywhere in the log.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// Every Event in the audit log (checkpoints left out) and the log's raw text, after the
/// pipeline has written what it holds.
pub(crate) async fn audit_log(k: &Kfsec) -> (Vec<Value>, String) {
    let pipeline = k.running.audit.clone().expect("the audit log is on by default");
    let flushed = tokio::task::spawn_blocking(move || pipeline.flush(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(flushed, "the audit log flushed");
    let text = std::fs::read_to_string(k._dir.path().join("audit").join("audit.log")).unwrap();
    let mut events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == "Event" && e["verb"] != "checkpoint")
        .collect();
    // Events recorded on different threads may be written in another order than they happened
    // (as kube-apiserver's batching backend writes them): put back in the order the requests
    // came (fixed-width microsecond times sort as text).
    events.sort_by(|a, b| {
        let at = |e: &Value| e["requestReceivedTimestamp"].as_str().unwrap_or_default().to_owned();
        at(a).cmp(&at(b))
    });
    (events, text)
}

/// The Events of `verb` on identity resource `resource`.
fn identity<'a>(events: &'a [Value], resource: &str, verb: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["verb"] == verb
                && e["objectRef"]["apiGroup"] == "identity.kfsec.io"
                && e["objectRef"]["resource"] == resource
        })
        .collect()
}

fn annotation<'a>(e: &'a Value, key: &str) -> &'a str {
    e["annotations"][key].as_str().unwrap_or_default()
}

/// The password grant's form for `user` with `password` and `scope`.
fn password_grant(user: &str, password: &str, scope: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "password".to_owned()),
        ("username", user.to_owned()),
        ("password", password.to_owned()),
        ("scope", scope.to_owned()),
    ]
}

/// Fails naming the secret if `text` (the whole log) contains any of `secrets`.
fn assert_no_secrets(text: &str, secrets: &[(&str, &str)]) {
    for (what, s) in secrets {
        assert!(s.len() >= 6, "{what} too short to search for");
        assert!(!text.contains(s), "the audit log contains the {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_logout_and_proxied_requests_leave_events_without_secrets() {
    let k = Kfsec::start("").await;
    let mut b = k.client();
    let (form, form_url) = b.follow("/app/hello").await;
    assert_eq!(form.status(), 200);
    // A wrong password: the form again, and a failed `login` naming the attempted account.
    let wrong = "not the password 7781";
    let r = b.post_form(&form_url, &[("login", USER), ("password", wrong)]).await;
    assert_eq!(r.status(), 401);
    let failed_id = r.headers()["audit-id"].to_str().unwrap().to_owned();
    // The right one: the login succeeds, the gatekeeper's callback starts a session.
    let next = login_and_approve(&mut b, &form_url).await;
    let (page, _) = b.follow(&next).await;
    assert_eq!(page.status(), 200);
    let session = b.cookies["authservice_session"].clone();
    // A proxied request, with the client's Audit-ID and a forged X-Forwarded-For.
    let r = b
        .send(
            b.http
                .get(b.url("/app/x?y=1"))
                .header("audit-id", "trace-4711.a:b")
                .header("x-forwarded-for", "203.0.113.9"),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["audit-id"],
        "trace-4711.a:b",
        "a sane client Audit-ID is echoed"
    );
    // An unauthenticated API-style call to the route: refused, an unsafe Audit-ID replaced.
    let r = http_client(&k.running.ca_pem)
        .post(format!("{}/app/x", k.base))
        .header("audit-id", "x".repeat(200))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let generated = r.headers()["audit-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "a generated UUID: {generated}");
    assert_eq!(&generated[14..15], "4", "a version-4 UUID: {generated}");
    // Logout.
    let r = b.post_form("/authservice/logout", &[]).await;
    assert_eq!(r.status(), 302);

    let (events, text) = audit_log(&k).await;
    // Every request got its Event(s), all at ResponseComplete under the default policy.
    assert!(events.iter().all(|e| e["apiVersion"] == "audit.k8s.io/v1"));
    assert!(
        events.iter().all(|e| e["stage"] == "ResponseComplete"),
        "RequestReceived is omitted by default"
    );

    let logins = identity(&events, "logins", "login");
    let failed = logins
        .iter()
        .find(|e| annotation(e, "kfsec.io/outcome") == "failure")
        .expect("a failed login event");
    assert_eq!(
        failed["auditID"],
        failed_id.as_str(),
        "the Event's id is the response's Audit-ID"
    );
    assert_eq!(failed["objectRef"]["name"], USER, "the attempted account");
    assert_eq!(annotation(failed, "kfsec.io/connector"), "local");
    assert_eq!(annotation(failed, "kfsec.io/reason"), "invalid credentials");
    assert_eq!(failed["user"]["username"], "system:anonymous");
    assert_eq!(failed["sourceIPs"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(failed["responseStatus"]["code"], 401);
    assert!(
        failed["requestURI"]
            .as_str()
            .unwrap()
            .starts_with("/dex/auth/local/login")
    );
    assert!(
        failed.get("requestObject").is_none(),
        "a login's body is never recorded"
    );
    let ok = logins
        .iter()
        .find(|e| annotation(e, "kfsec.io/outcome") == "success")
        .expect("a successful login event");
    assert_eq!(ok["user"]["username"], USER);
    assert_eq!(ok["objectRef"]["name"], USER);
    assert_eq!(annotation(ok, "kfsec.io/connector"), "local");
    assert!(ok["annotations"].get("kfsec.io/reason").is_none());

    let started = identity(&events, "sessions", "issue");
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["user"]["username"], USER);
    assert_eq!(annotation(started[0], "kfsec.io/outcome"), "success", "{}", started[0]);
    assert!(started[0]["requestURI"].as_str().unwrap().contains("code=REDACTED"));
    let logout = identity(&events, "sessions", "logout");
    assert_eq!(logout.len(), 1);
    assert_eq!(logout[0]["user"]["username"], USER);
    assert_eq!(logout[0]["objectRef"]["name"], USER);

    // The proxied request: a non-resource request, the route's decision, the client's id,
    // and the forged X-Forwarded-For not believed.
    let proxied = events
        .iter()
        .find(|e| e["requestURI"] == "/app/x?y=1")
        .expect("the proxied request's event");
    assert_eq!(proxied["auditID"], "trace-4711.a:b");
    assert_eq!(proxied["verb"], "get");
    assert!(proxied.get("objectRef").is_none());
    assert_eq!(proxied["user"]["username"], USER);
    assert!(
        proxied["user"]["groups"]
            .as_array()
            .unwrap()
            .contains(&Value::from("team-a"))
    );
    assert_eq!(proxied["sourceIPs"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(proxied["responseStatus"]["code"], 200);
    assert_eq!(annotation(proxied, "authorization.k8s.io/decision"), "allow");
    assert_eq!(
        annotation(proxied, "authorization.k8s.io/reason"),
        "route /app/: authenticated"
    );
    assert!(proxied["requestReceivedTimestamp"].as_str().unwrap().len() == "2026-01-01T00:00:00.000000Z".len());

    let refused = events
        .iter()
        .find(|e| e["auditID"] == generated.as_str())
        .expect("the refused request's event, under the generated id");
    assert_eq!(refused["verb"], "post");
    assert_eq!(refused["user"]["username"], "system:anonymous");
    assert_eq!(refused["responseStatus"]["code"], 401);
    assert_eq!(refused["responseStatus"]["status"], "Failure");
    assert_eq!(refused["responseStatus"]["reason"], "Unauthorized");
    assert_eq!(annotation(refused, "authorization.k8s.io/decision"), "forbid");

    assert_no_secrets(
        &text,
        &[
            ("password", PASSWORD),
            ("wrong password", wrong),
            ("session cookie", &session),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_forwarded_address_is_believed() {
    // the proxy, and a range of ingress pods behind it
    let k = Kfsec::start("trustedProxies: [\"127.0.0.1\", 10.0.0.0/8]\n").await;
    let mut ids = Vec::new();
    for xff in ["198.51.100.1, 203.0.113.9", "198.51.100.1, 203.0.113.9, 10.4.4.4"] {
        let r = http_client(&k.running.ca_pem)
            .get(format!("{}/open/x", k.base))
            .header("x-forwarded-for", xff)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        ids.push(r.headers()["audit-id"].to_str().unwrap().to_owned());
    }
    let (events, _) = audit_log(&k).await;
    let find = |id: &str| events.iter().find(|e| e["auditID"] == id).unwrap();
    // The client the proxies reported (the last entry no trusted hop wrote: through a pod too),
    // then the proxy itself.
    for id in &ids {
        assert_eq!(find(id)["sourceIPs"], serde_json::json!(["203.0.113.9", "127.0.0.1"]));
    }
    let e = find(&ids[0]);
    assert_eq!(
        annotation(e, "authorization.k8s.io/reason"),
        "route /open/: public route"
    );
    assert_eq!(e["user"]["username"], "system:anonymous");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_grant_and_refresh_are_token_events_without_tokens() {
    let k = Kfsec::start("oauth2:\n  passwordConnector: local\n").await;
    let wrong = "wrong-password-5521";
    let (status, _) = rp_token(&k, password_grant(USER, wrong, "openid email")).await;
    assert_eq!(status, 401);
    let (status, t) = rp_token(&k, password_grant(USER, PASSWORD, "openid email groups offline_access")).await;
    assert_eq!(status, 200, "{t}");
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();
    let (status, t2) = rp_token(
        &k,
        vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh.clone()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{t2}");
    // An unknown refresh token is refused: a failed refresh.
    let (status, replayed) = rp_token(
        &k,
        vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", "no-such-refresh-token".to_owned()),
        ],
    )
    .await;
    assert_ne!(status, 200, "{replayed}");

    let (events, text) = audit_log(&k).await;
    let by_outcome = |events: &[&'_ Value], o: &str| -> Value {
        let of: Vec<_> = events
            .iter()
            .filter(|e| annotation(e, "kfsec.io/outcome") == o)
            .collect();
        assert_eq!(of.len(), 1, "{o}: {events:?}");
        (*of[0]).clone()
    };
    let logins = identity(&events, "logins", "login");
    assert_eq!(logins.len(), 2, "{logins:?}");
    let failed = by_outcome(&logins, "failure");
    assert_eq!(failed["objectRef"]["name"], USER);
    assert_eq!(annotation(&failed, "kfsec.io/reason"), "invalid credentials");
    assert_eq!(annotation(&failed, "kfsec.io/grant-type"), "password");
    assert_eq!(annotation(&failed, "kfsec.io/client"), "rp-test");
    assert_eq!(failed["responseStatus"]["code"], 401);
    let ok = by_outcome(&logins, "success");
    assert_eq!(ok["user"]["username"], USER);

    let refreshes = identity(&events, "tokens", "refresh");
    assert_eq!(refreshes.len(), 2, "{refreshes:?}");
    let (ok, failed) = (by_outcome(&refreshes, "success"), by_outcome(&refreshes, "failure"));
    assert_eq!(ok["user"]["username"], USER, "the tokens' subject");
    assert_eq!(annotation(&ok, "kfsec.io/client"), "rp-test");
    assert_eq!(annotation(&ok, "kfsec.io/grant-type"), "refresh_token");
    assert_eq!(
        annotation(&failed, "kfsec.io/reason"),
        replayed["error"].as_str().unwrap()
    );

    let s = |v: &Value, f: &str| v[f].as_str().unwrap().to_owned();
    assert_no_secrets(
        &text,
        &[
            ("password", PASSWORD),
            ("wrong password", wrong),
            ("client secret", "rp-secret-0123456789"),
            ("refresh token", &refresh),
            ("access token", &s(&t, "access_token")),
            ("ID token", &s(&t, "id_token")),
            ("refreshed refresh token", &s(&t2, "refresh_token")),
            ("refreshed ID token", &s(&t2, "id_token")),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_issue_and_approval_are_events_without_codes() {
    let k = Kfsec::start("").await;
    let (device_code, user_code) = crate::sec_login::device_code(&k).await;
    let mut b = k.client();
    let r = b
        .post_form("/dex/device/auth/verify_code", &[("user_code", &user_code)])
        .await;
    assert!(r.status().is_redirection());
    let (form, form_url) = b.follow(location(&r)).await;
    assert_eq!(form.status(), 200);
    let next = login_and_approve(&mut b, &form_url).await;
    assert!(next.starts_with("/dex/device/callback?"), "{next}");
    let code = query_param(&next, "code").unwrap();
    assert_eq!(b.get(&next).await.status(), 200);

    let (events, text) = audit_log(&k).await;
    let issued = identity(&events, "devicecodes", "issue");
    assert_eq!(issued.len(), 1);
    assert_eq!(annotation(issued[0], "kfsec.io/client"), "kfsec-cli");
    // The user's answer on the approval screen, then the browser leg's completion.
    let approved = identity(&events, "devicecodes", "approve");
    assert_eq!(approved.len(), 2, "{approved:?}");
    assert!(approved[0]["requestURI"].as_str().unwrap().starts_with("/dex/approval"));
    assert!(
        approved[1]["requestURI"]
            .as_str()
            .unwrap()
            .starts_with("/dex/device/callback")
    );
    for (e, code) in approved.iter().zip([303, 200]) {
        assert_eq!(e["user"]["username"], USER);
        assert_eq!(annotation(e, "kfsec.io/client"), "kfsec-cli");
        assert_eq!(annotation(e, "kfsec.io/outcome"), "success");
        assert_eq!(e["responseStatus"]["code"], code);
        assert!(e["objectRef"].get("name").is_none(), "no code in the name: {e}");
    }
    assert_no_secrets(
        &text,
        &[
            ("device code", &device_code),
            ("user code", &user_code),
            ("authorization code", &code),
            ("password", PASSWORD),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_and_userinfo_name_the_user_who_answered_or_holds_the_token() {
    let k = Kfsec::start("").await;
    let auth = "/dex/auth?client_id=rp-test&redirect_uri=https%3A%2F%2Frp.example%2Fcb&response_type=code&scope=openid+email+groups&state=s1";
    // Approved: a code for the client.
    let mut b = k.client();
    let (form, form_url) = b.follow(auth).await;
    assert_eq!(form.status(), 200);
    let r = b.post_form(&form_url, &[("login", USER), ("password", PASSWORD)]).await;
    let approval = location(&r).to_owned();
    assert!(approval.starts_with("/dex/approval?"), "{approval}");
    let req = query_param(&approval, "req").unwrap();
    let r = b.post_form(&approval, &[("req", &req), ("approval", "approve")]).await;
    let code = query_param(location(&r), "code").unwrap();
    // Declined.
    let mut b2 = k.client();
    let (_, form_url) = b2.follow(auth).await;
    let r = b2
        .post_form(&form_url, &[("login", USER), ("password", PASSWORD)])
        .await;
    let approval2 = location(&r).to_owned();
    let req2 = query_param(&approval2, "req").unwrap();
    let r = b2.post_form(&approval2, &[("req", &req2), ("approval", "deny")]).await;
    assert!(location(&r).contains("error=access_denied"));
    // Answered twice: refused.
    let r = b2
        .post_form(&approval2, &[("req", &req2), ("approval", "approve")])
        .await;
    assert!(r.status().is_client_error(), "{}", r.status());

    let (status, t) = rp_token(
        &k,
        vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.clone()),
            ("redirect_uri", "https://rp.example/cb".to_owned()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{t}");
    let access = t["access_token"].as_str().unwrap().to_owned();
    let path = url::Url::parse(&k.running.issuer)
        .unwrap()
        .path()
        .trim_end_matches('/')
        .to_owned();
    let http = http_client(&k.running.ca_pem);
    let userinfo = format!("{}{path}/userinfo", k.base);
    let r = http.get(&userinfo).bearer_auth(&access).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http.get(&userinfo).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(r.status(), 401);
    // A browser session, ended everywhere: `revoke` on `tokens`.
    let mut b3 = k.client();
    let (_, form_url) = b3.follow("/app/hello").await;
    let next = login_and_approve(&mut b3, &form_url).await;
    assert_eq!(b3.follow(&next).await.0.status(), 200);
    let logout_all = b3
        .http
        .post(b3.url("/authservice/logout-all"))
        .header("origin", &k.base);
    let r = b3.send(logout_all).await;
    assert!(r.status().is_success() || r.status().is_redirection(), "{}", r.status());

    let (events, text) = audit_log(&k).await;
    let approvals = identity(&events, "tokens", "approve");
    assert_eq!(approvals.len(), 3, "{approvals:?}");
    for e in &approvals {
        assert_eq!(e["requestURI"], "/dex/approval?req=REDACTED", "{e}");
    }
    let (yes, no, again) = (approvals[0], approvals[1], approvals[2]);
    assert_eq!(yes["user"]["username"], USER);
    assert_eq!(yes["objectRef"]["name"], "rp-test");
    assert_eq!(annotation(yes, "kfsec.io/client"), "rp-test");
    assert_eq!(annotation(yes, "kfsec.io/outcome"), "success");
    assert_eq!(no["user"]["username"], USER);
    assert_eq!(annotation(no, "kfsec.io/outcome"), "failure");
    assert_eq!(annotation(no, "kfsec.io/reason"), "access_denied");
    assert_eq!(annotation(again, "kfsec.io/outcome"), "failure");
    assert_eq!(annotation(again, "kfsec.io/reason"), "invalid approval request");
    assert_eq!(again["responseStatus"]["code"], 400);
    // The code redeemed: `issue` on `tokens` for the client, user = the tokens' subject.
    let issued = identity(&events, "tokens", "issue");
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0]["objectRef"]["name"], "rp-test");
    assert_eq!(issued[0]["user"]["username"], USER);
    assert_eq!(annotation(issued[0], "kfsec.io/grant-type"), "authorization_code");
    assert_eq!(annotation(issued[0], "kfsec.io/outcome"), "success");
    let revoked = identity(&events, "tokens", "revoke");
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["user"]["username"], USER);
    assert_eq!(revoked[0]["objectRef"]["name"], USER);
    assert_eq!(annotation(revoked[0], "kfsec.io/reason"), "logout everywhere");
    let infos: Vec<&Value> = events
        .iter()
        .filter(|e| e["requestURI"] == format!("{path}/userinfo").as_str())
        .collect();
    assert_eq!(infos.len(), 2, "{infos:?}");
    assert_eq!(infos[0]["user"]["username"], USER, "the token's subject");
    assert_eq!(infos[0]["responseStatus"]["code"], 200);
    assert_eq!(infos[1]["user"]["username"], "system:anonymous");
    assert_no_secrets(
        &text,
        &[
            ("approval request", &req),
            ("declined approval request", &req2),
            ("authorization code", &code),
            ("access token", &access),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_front_door_certificate_file_is_a_rotate_event() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = crate::proxying::user_pair(pki.path());
    let k = Kfsec::start(&format!(
        "tls:\n  certFile: {}\n  keyFile: {}\n",
        cert.display(),
        key.display()
    ))
    .await;
    let front_door = |events: &[Value], outcome: &str| {
        identity(events, "certificates", "rotate")
            .into_iter()
            .filter(|e| e["objectRef"]["name"] == "front-door" && annotation(e, "kfsec.io/outcome") == outcome)
            .count()
    };
    assert_eq!(front_door(&audit_log(&k).await.0, "success"), 0);
    // The operator (or cert-manager) replaces the pair: recorded once it serves.
    let second = crate::proxying::issue_localhost(&ca, "second");
    std::fs::write(&key, &second.key_pem).unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    let mut seen = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if front_door(&audit_log(&k).await.0, "success") == 1 {
            seen = true;
            break;
        }
    }
    assert!(seen, "no rotate event for the reloaded front-door certificate");
    // A pair that does not load: recorded as a failure, the old certificate kept. (The key
    // written before the certificate above may have been seen alone: a failure too.)
    let failures = front_door(&audit_log(&k).await.0, "failure");
    std::fs::write(&cert, "not a certificate").unwrap();
    let mut failed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if front_door(&audit_log(&k).await.0, "failure") > failures {
            failed = true;
            break;
        }
    }
    assert!(
        failed,
        "no failure event for a front-door certificate that does not load"
    );
    let (events, _) = audit_log(&k).await;
    let e = identity(&events, "certificates", "rotate")
        .into_iter()
        .rfind(|e| e["objectRef"]["name"] == "front-door")
        .unwrap();
    assert_eq!(e["user"]["username"], "system:kfsec");
    assert!(
        annotation(e, "kfsec.io/reason").contains("current certificate is kept"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockout_is_its_own_event_beside_the_failed_login_that_caused_it() {
    let k = Kfsec::start("oauth2:\n  passwordConnector: local\nloginProtection:\n  maxFailuresPerAccount: 2\n").await;
    for _ in 0..3 {
        let (status, _) = rp_token(&k, password_grant(USER, "not the password 9931", "openid")).await;
        assert_eq!(status, 401);
    }
    let (events, text) = audit_log(&k).await;
    let logins = identity(&events, "logins", "login");
    let reasons: Vec<&str> = logins.iter().map(|e| annotation(e, "kfsec.io/reason")).collect();
    assert_eq!(reasons, ["invalid credentials", "invalid credentials", "locked out"]);
    let lockouts = identity(&events, "lockouts", "lockout");
    assert_eq!(lockouts.len(), 1, "{lockouts:?}");
    let lockout = lockouts[0];
    assert_eq!(lockout["objectRef"]["name"], USER);
    assert_eq!(annotation(lockout, "kfsec.io/connector"), "local");
    assert_eq!(annotation(lockout, "kfsec.io/reason"), "too many failed attempts");
    assert_eq!(
        lockout["auditID"], logins[1]["auditID"],
        "the failed login that locked the account"
    );
    assert_eq!(lockout["sourceIPs"], logins[1]["sourceIPs"]);
    assert_no_secrets(&text, &[("wrong password", "not the password 9931")]);
}

/// An LDAP connector's logins through the password grant: the connector's id, the attempted
/// account, and `upstream error` when the directory is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_logins_name_the_connector_and_the_upstream_error() {
    let Some(d) = crate::slapd::Slapd::start().await else {
        return;
    };
    let yaml = format!(
        "oauth2:\n  passwordConnector: corp-ldap\nconnectors:\n- type: ldap\n  id: corp-ldap\n  name: Corporate LDAP\n  config: {}\n",
        d.config()
    );
    let k = Kfsec::start(&yaml).await;
    let grant = |user: &str, pw: &str| password_grant(user, pw, "openid email groups");
    let (status, t) = rp_token(&k, grant("alice", crate::slapd::ALICE_PW)).await;
    assert_eq!(status, 200, "{t}");
    let (status, _) = rp_token(&k, grant("alice", "wrong-ldap-pw-1")).await;
    assert_eq!(status, 401);
    drop(d);
    let (status, _) = rp_token(&k, grant("alice", crate::slapd::ALICE_PW)).await;
    assert_ne!(status, 200);

    let (events, text) = audit_log(&k).await;
    let logins = identity(&events, "logins", "login");
    assert_eq!(logins.len(), 3, "{logins:?}");
    assert!(
        logins
            .iter()
            .all(|e| annotation(e, "kfsec.io/connector") == "corp-ldap")
    );
    assert_eq!(logins[0]["user"]["username"], "alice@example.org");
    assert!(
        logins[0]["user"]["groups"]
            .as_array()
            .unwrap()
            .contains(&Value::from("admins"))
    );
    assert_eq!(logins[1]["objectRef"]["name"], "alice");
    assert_eq!(annotation(logins[1], "kfsec.io/reason"), "invalid credentials");
    assert_eq!(annotation(logins[2], "kfsec.io/reason"), "upstream error");
    assert_eq!(annotation(logins[2], "kfsec.io/outcome"), "failure");
    assert_no_secrets(
        &text,
        &[
            ("password", crate::slapd::ALICE_PW),
            ("wrong password", "wrong-ldap-pw-1"),
        ],
    );
}

/// What kfsec does by itself — a signing-key rotation, a CA rotation and the certificates it
/// re-issues — are Events of `system:kfsec`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_and_certificate_rotations_are_system_events() {
    let k = Kfsec::start_with_clock("expiry:\n  signingKeys: 1h\n").await;
    let clock = k.clock.clone().unwrap();
    let idp = k.running.idp.clone();
    clock.advance(Duration::from_secs(3601));
    let _ = idp.keys().tick().await.unwrap();
    let kid = idp.keys().keys().signing.kid().to_owned();
    k.running.trust.rotate(Duration::from_secs(3600)).await.unwrap();

    let (events, _) = audit_log(&k).await;
    let keys = identity(&events, "signingkeys", "rotate");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["objectRef"]["name"], kid.as_str());
    assert_eq!(keys[0]["user"]["username"], "system:kfsec");
    let certs = identity(&events, "certificates", "rotate");
    assert!(
        certs
            .iter()
            .any(|e| e["objectRef"]["name"] == "ca" && annotation(e, "kfsec.io/reason") == "CA rotation started"),
        "{certs:?}"
    );
    assert!(
        certs
            .iter()
            .any(|e| annotation(e, "kfsec.io/reason") == "certificate issued"),
        "{certs:?}"
    );
    assert!(certs.iter().all(|e| e["user"]["username"] == "system:kfsec"));
    // Each background Event has its own id.
    let mut ids: Vec<&str> = certs.iter().map(|e| e["auditID"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), certs.len());
}

/// A login through an upstream OpenID Connect provider (a second kfsec): the callback's Event
/// is the `login`, with the connector and the upstream's user and groups; the upstream records
/// its own local login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_callback_is_a_login_of_the_upstream_user() {
    use crate::fed_oidc::{FED_USER, federation_with};
    let f = federation_with(false).await;
    let (mut down, mut up) = (f.down.client(), f.up.client());
    let (_, visited) = f.walk(&mut down, &mut up, "/app/x").await;
    let auth_url = visited.last().unwrap().clone();
    let (last, visited) = f
        .walk(&mut down, &mut up, &format!("{auth_url}&connector_id=corp"))
        .await;
    assert_eq!(last.status(), 200, "{visited:#?}");

    let (events, _) = audit_log(&f.down).await;
    let logins = identity(&events, "logins", "login");
    assert_eq!(logins.len(), 1, "{logins:?}");
    let e = logins[0];
    assert!(
        e["requestURI"]
            .as_str()
            .unwrap()
            .starts_with("/dex/callback?code=REDACTED&state=REDACTED"),
        "{e}"
    );
    assert_eq!(annotation(e, "kfsec.io/connector"), "corp");
    assert_eq!(annotation(e, "kfsec.io/outcome"), "success");
    assert_eq!(e["user"]["username"], FED_USER);
    assert!(
        e["user"]["groups"]
            .as_array()
            .unwrap()
            .contains(&Value::from("ml-team"))
    );
    let (up_events, _) = audit_log(&f.up).await;
    let up_logins = identity(&up_events, "logins", "login");
    assert_eq!(up_logins.len(), 1);
    assert_eq!(annotation(up_logins[0], "kfsec.io/connector"), "local");
    assert_eq!(up_logins[0]["user"]["username"], FED_USER);
}
