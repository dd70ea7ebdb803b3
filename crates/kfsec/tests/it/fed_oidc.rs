//! The `oidc` connector against real providers: a second kfsec as the upstream OP (its login
//! form, its tokens, its refresh and its `user delete`), and a Cognito-shaped provider of our own
//! (`fake_op`) for the quirks (string `email_verified`, `cognito:groups`, no `name`) and for
//! hostile or failing upstreams (bad tokens, rotated keys, huge, slow and dead endpoints).
#![allow(clippy::disallowed_methods)] // measures real elapsed time of bounded upstream calls

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kfsec_idp::connector::config::{OpenContext, open};
use kfsec_idp::connector::{CallbackConnector, ConnectorError, ConnectorKind, Scopes, UpstreamIdentity};
use kfsec_server::admin::{AdminRequest, AdminResponse};
use kfsec_types::{ManualClock, SystemClock};
use serde_json::{Value, json};

use crate::fake_op::{CLIENT_ID, CLIENT_SECRET, FakeOp, Tweak};
use crate::harness::*;

const ISSUER: &str = "https://kf.example.com/dex";
const CALLBACK: &str = "https://kf.example.com/dex/callback";
const STATE: &str = "kfsec-state-0123456789";

fn ctx() -> OpenContext {
    OpenContext::new(ISSUER, Duration::from_secs(10))
}

fn build(config: Value, ctx: &OpenContext) -> Arc<dyn CallbackConnector> {
    match open("oidc", "up", "Upstream", config, ctx).unwrap().kind {
        ConnectorKind::Callback(c) => c,
        _ => panic!("oidc is a callback connector"),
    }
}

/// A config for the fake OP: Cognito's documented settings, plus `extra`.
fn cognito(op: &FakeOp, extra: Value) -> Value {
    let mut c = json!({
        "issuer": op.base,
        "clientID": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "redirectURI": CALLBACK,
        "scopes": ["openid", "email", "profile", "offline_access"],
        "insecureEnableGroups": true,
        "claimMapping": {"groups": "cognito:groups"},
        "userNameKey": "cognito:username",
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn plain_http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn query_of(url: &str) -> HashMap<String, String> {
    url::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

const OFFLINE: Scopes = Scopes {
    offline_access: true,
    groups: true,
};

/// login_url → the upstream's `/authorize` (which answers at once) → callback.
async fn login(c: &dyn CallbackConnector) -> Result<UpstreamIdentity, ConnectorError> {
    let r = c.login_url(OFFLINE, CALLBACK, STATE, &kfsec_pki::OsRng).await?;
    let resp = plain_http().get(&r.url).send().await.unwrap();
    assert_eq!(resp.status(), 302, "{}", r.url);
    let back = location(&resp).to_owned();
    assert!(back.starts_with(&format!("{CALLBACK}?")), "{back}");
    let q = query_of(&back);
    assert_eq!(q.get("state").map(String::as_str), Some(STATE));
    c.callback(OFFLINE, CALLBACK, &r.pending, &q).await
}

#[tokio::test]
async fn cognito_shapes_log_in_and_refresh_with_rotation() {
    let op = FakeOp::start().await;
    let c = build(cognito(&op, json!({})), &ctx());
    let id = login(c.as_ref()).await.unwrap();
    assert_eq!(id.user_id, "3f1b9a52-cognito-sub");
    assert_eq!(id.email, "ann@example.com");
    assert!(id.email_verified, "the string \"true\" is true");
    assert_eq!(
        id.username, "ann",
        "userNameKey: cognito:username (Cognito sends no name)"
    );
    assert_eq!(id.groups, ["ml-team", "admins"], "claimMapping.groups: cognito:groups");
    let first_rt = id.connector_data.as_ref().unwrap()["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !format!("{id:?}").contains(&first_rt),
        "connector data is hidden in Debug"
    );
    {
        let s = op.state();
        let a = &s.authorize_requests[0];
        assert_eq!(a["scope"], "openid email profile offline_access");
        assert_eq!(a["response_type"], "code");
        assert_eq!(a["code_challenge_method"], "S256", "PKCE picked from discovery");
        assert_eq!(a["prompt"], "consent", "Dex's default prompt with offline_access");
        assert_eq!(a["access_type"], "offline");
        assert!(a["nonce"].len() >= 32);
        let (form, auth) = &s.token_requests[0];
        assert!(auth.as_deref().unwrap().starts_with("Basic "), "client_secret_basic");
        assert!(!form.contains_key("client_secret"));
        assert_eq!(form["redirect_uri"], CALLBACK);
    }

    // Refresh: claims re-read, the rotated refresh token handed back.
    op.state().claims["email_verified"] = "false".into();
    op.state().claims["cognito:groups"] = json!(["ml-team"]);
    let fresh = c.refresh(OFFLINE, &id).await.unwrap();
    assert!(!fresh.email_verified, "the string \"false\" is false");
    assert_eq!(fresh.groups, ["ml-team"], "groups re-read upstream");
    let second_rt = fresh.connector_data.as_ref().unwrap()["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(first_rt, second_rt, "the upstream rotated its refresh token");
    // The rotated-out token is refused upstream: Revoked (invalid_grant).
    let e = c.refresh(OFFLINE, &id).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Revoked(_)), "{e:?}");
    assert_eq!(e.status(), 403);
    // The user removed upstream: the current token is refused too.
    op.revoke_all();
    assert!(matches!(
        c.refresh(OFFLINE, &fresh).await,
        Err(ConnectorError::Revoked(_))
    ));
    // An upstream that gives no refresh token: no connector data, and a refresh is Revoked
    // (never a pass without asking the upstream).
    op.state().no_refresh_token = true;
    op.state().refresh_tokens.clear();
    let without = login(c.as_ref()).await.unwrap();
    assert_eq!(without.connector_data, None);
    assert!(matches!(
        c.refresh(OFFLINE, &without).await,
        Err(ConnectorError::Revoked(_))
    ));
    assert!(
        !op.state()
            .token_requests
            .iter()
            .any(|(f, _)| f.get("refresh_token").is_some_and(|t| t.is_empty())),
        "no empty refresh_token sent upstream"
    );
    // No upstream refresh token at all (no offline_access upstream): Revoked, never a pass.
    let mut none = fresh.clone();
    none.connector_data = None;
    assert!(matches!(
        c.refresh(OFFLINE, &none).await,
        Err(ConnectorError::Revoked(_))
    ));
}

#[tokio::test]
async fn get_user_info_reads_cognito_userinfo_and_checks_its_subject() {
    let op = FakeOp::start().await;
    // A thin ID token: the email comes from userinfo, with email_verified as a string.
    op.state().claims = json!({"sub": "3f1b9a52-cognito-sub", "cognito:groups": ["ml-team"], "token_use": "id"});
    let c = build(
        cognito(&op, json!({"getUserInfo": true, "userNameKey": "email"})),
        &ctx(),
    );
    let id = login(c.as_ref()).await.unwrap();
    assert_eq!(
        (id.email.as_str(), id.username.as_str()),
        ("ann@example.com", "ann@example.com")
    );
    assert!(id.email_verified);
    assert_eq!(id.groups, ["ml-team"]);

    // A refresh answer without an ID token: the user is read from userinfo.
    op.state().no_id_token_on_refresh = true;
    op.state().userinfo["email"] = "ann.new@example.com".into();
    let fresh = c.refresh(OFFLINE, &id).await.unwrap();
    assert_eq!(fresh.email, "ann.new@example.com");
    assert_eq!(fresh.user_id, id.user_id);

    // userinfo about someone else is refused.
    op.state().userinfo["sub"] = "someone-else".into();
    let e = login(c.as_ref()).await.unwrap_err();
    assert!(matches!(&e, ConnectorError::Upstream(m) if m.contains("sub")), "{e:?}");
    let e = c.refresh(OFFLINE, &fresh).await.unwrap_err();
    assert!(matches!(&e, ConnectorError::Upstream(m) if m.contains("sub")), "{e:?}");

    // Without getUserInfo, a refresh answer without an ID token says what to set.
    let plain = build(cognito(&op, json!({})), &ctx());
    op.state().userinfo["sub"] = "3f1b9a52-cognito-sub".into();
    op.state().no_id_token_on_refresh = false;
    op.state().claims = json!({"sub": "3f1b9a52-cognito-sub", "email": "ann@example.com",
        "email_verified": "true", "cognito:username": "ann"});
    let id = login(plain.as_ref()).await.unwrap();
    op.state().no_id_token_on_refresh = true;
    let e = plain.refresh(OFFLINE, &id).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Upstream(m) if m.contains("getUserInfo")),
        "{e:?}"
    );
    assert_eq!(e.status(), 502);
}

#[tokio::test]
async fn missing_claims_name_the_setting_to_fix() {
    let op = FakeOp::start().await;
    op.state().claims = json!({"sub": "s1", "email_verified": true, "cognito:username": "ann"});
    let c = build(cognito(&op, json!({})), &ctx());
    let e = login(c.as_ref()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Misconfigured(m) if m.contains("\"email\"")),
        "{e:?}"
    );
    assert_eq!(e.status(), 502);
    // Dex's default userNameKey is name, which Cognito does not send.
    op.state().claims = json!({"sub": "s1", "email": "a@example.com", "email_verified": true});
    let mut cfg = cognito(&op, json!({}));
    cfg.as_object_mut().unwrap().remove("userNameKey");
    let e = login(build(cfg, &ctx()).as_ref()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Misconfigured(m) if m.contains("\"name\"") && m.contains("userNameKey")),
        "{e:?}"
    );
    // No email_verified: refused unless insecureSkipEmailVerified.
    op.state().claims = json!({"sub": "s1", "email": "a@example.com", "cognito:username": "ann"});
    let e = login(c.as_ref()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Misconfigured(m) if m.contains("insecureSkipEmailVerified")),
        "{e:?}"
    );
    let skip = build(cognito(&op, json!({"insecureSkipEmailVerified": true})), &ctx());
    assert!(login(skip.as_ref()).await.unwrap().email_verified);
}

#[tokio::test]
async fn allowed_groups_refuse_outsiders_with_403_and_trim_the_rest() {
    let op = FakeOp::start().await;
    let c = build(cognito(&op, json!({"allowedGroups": ["platform-admins"]})), &ctx());
    let e = login(c.as_ref()).await.unwrap_err();
    assert!(matches!(e, ConnectorError::NotInAllowedGroups), "{e:?}");
    assert_eq!(e.status(), 403);
    assert_eq!(
        e.user_message(),
        "You are not a member of any of the required groups to authenticate."
    );
    let c = build(cognito(&op, json!({"allowedGroups": ["admins", "nobody"]})), &ctx());
    assert_eq!(
        login(c.as_ref()).await.unwrap().groups,
        ["admins"],
        "trimmed as Dex does"
    );
}

/// `acrValues` is not only asked for: the login's ID token must name one of them in `acr`
/// (the parameter rides in the browser's redirect, where the user can delete it). Without
/// `acrValues` no `acr` is looked at.
#[tokio::test]
async fn acr_values_are_required_of_the_login_id_token() {
    let op = FakeOp::start().await;
    let c = build(cognito(&op, json!({"acrValues": ["phr", "phrh"]})), &ctx());
    for acr in [None, Some(json!("pwd")), Some(json!("PHR")), Some(json!(["phr"]))] {
        match &acr {
            Some(v) => op.state().claims["acr"] = v.clone(),
            None => drop(op.state().claims.as_object_mut().unwrap().remove("acr")),
        }
        let e = login(c.as_ref()).await.unwrap_err();
        assert!(
            matches!(&e, ConnectorError::Denied(m) if m.contains("acrValues")),
            "{acr:?}: {e:?}"
        );
        assert_eq!(e.status(), 403);
    }
    op.state().claims["acr"] = json!("phrh");
    assert_eq!(login(c.as_ref()).await.unwrap().email, "ann@example.com");
    op.state().claims["acr"] = json!("pwd");
    let plain = build(cognito(&op, json!({})), &ctx());
    assert!(login(plain.as_ref()).await.is_ok(), "no acrValues, no acr check");
}

#[tokio::test]
async fn hostile_id_tokens_are_refused() {
    let op = FakeOp::start().await;
    let c = build(cognito(&op, json!({})), &ctx());
    let cases: Vec<(&str, Tweak, &str)> = vec![
        (
            "wrong audience",
            Tweak {
                aud: Some(json!(["another-client"])),
                ..Tweak::default()
            },
            "audience",
        ),
        (
            "wrong issuer",
            Tweak {
                iss: Some("https://evil.example".into()),
                ..Tweak::default()
            },
            "issuer",
        ),
        (
            "expired",
            Tweak {
                exp_in: Some(-120),
                ..Tweak::default()
            },
            "expired",
        ),
        (
            "bad signature",
            Tweak {
                bad_signature: true,
                ..Tweak::default()
            },
            "signature",
        ),
        (
            "alg none",
            Tweak {
                alg_none: true,
                ..Tweak::default()
            },
            "\"none\"",
        ),
        (
            "foreign key",
            Tweak {
                foreign_key: true,
                ..Tweak::default()
            },
            "signature",
        ),
        (
            "unknown kid",
            Tweak {
                kid: Some("nope".into()),
                ..Tweak::default()
            },
            "nope",
        ),
    ];
    for (what, tweak, says) in cases {
        op.state().tweak = tweak;
        let e = login(c.as_ref()).await.unwrap_err();
        assert!(
            matches!(&e, ConnectorError::Upstream(m) if m.contains(says)),
            "{what}: {e:?}"
        );
        assert_eq!(e.status(), 502, "{what}");
        assert!(
            !e.user_message().contains(says),
            "{what}: no internals shown to the user"
        );
    }
    // Still fine afterwards, and an audience list that contains the client is accepted.
    op.state().tweak = Tweak {
        aud: Some(json!(["another-client", CLIENT_ID])),
        ..Tweak::default()
    };
    assert!(login(c.as_ref()).await.is_ok());
}

#[tokio::test]
async fn a_rotated_key_is_fetched_again_at_most_once_per_interval() {
    let op = FakeOp::start().await;
    let clock = ManualClock::new(kfsec_types::Clock::now(&SystemClock));
    let mut ctx = ctx();
    ctx.clock = clock.clone();
    let c = build(cognito(&op, json!({})), &ctx);
    login(c.as_ref()).await.unwrap();
    assert_eq!(op.state().jwks_hits, 1, "keys fetched on first use");
    login(c.as_ref()).await.unwrap();
    assert_eq!(op.state().jwks_hits, 1, "and cached");

    // The upstream rotates to an EC key: the first login after it fetches the keys again.
    clock.advance(Duration::from_secs(11));
    op.rotate_to_ec("e1");
    let id = login(c.as_ref()).await.unwrap();
    assert_eq!(id.email, "ann@example.com");
    assert_eq!(op.state().jwks_hits, 2);

    // Tokens naming unknown keys do not make kfsec fetch again within the interval…
    op.state().tweak.kid = Some("bogus".into());
    for _ in 0..3 {
        assert!(login(c.as_ref()).await.is_err());
    }
    assert_eq!(op.state().jwks_hits, 2, "no refetch within the interval");
    // …and once per interval after it.
    clock.advance(Duration::from_secs(11));
    assert!(login(c.as_ref()).await.is_err());
    assert!(login(c.as_ref()).await.is_err());
    assert_eq!(op.state().jwks_hits, 3);
}

#[tokio::test]
async fn huge_slow_and_dead_upstreams_fail_in_bounded_time() {
    let op = FakeOp::start().await;
    let c = build(cognito(&op, json!({"timeout": "1s"})), &ctx());
    op.state().huge_token_answer = true;
    let e = login(c.as_ref()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Upstream(m) if m.contains("larger than")),
        "{e:?}"
    );
    op.state().huge_token_answer = false;

    op.state().token_delay = Duration::from_secs(30);
    let start = Instant::now();
    let e = login(c.as_ref()).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, ConnectorError::Timeout), "{e:?}");
    assert_eq!(e.status(), 504);
    assert!(took < Duration::from_millis(2500), "{took:?}");

    // A dead upstream: kfsec starts (nothing is fetched at open), a login says Unreachable.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = json!({"issuer": format!("http://127.0.0.1:{port}"), "clientID": "x", "clientSecret": "y",
        "redirectURI": CALLBACK, "timeout": "2s"});
    let c = build(dead, &ctx());
    let start = Instant::now();
    let e = c
        .login_url(OFFLINE, CALLBACK, STATE, &kfsec_pki::OsRng)
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Unreachable(_)), "{e:?}");
    assert_eq!(e.status(), 502);
    assert!(start.elapsed() < Duration::from_secs(3));

    // Discovery that failed is remembered for a few seconds (a dead upstream is not asked once
    // per login attempt), then tried again.
    let op = FakeOp::start().await;
    op.state().discovery_failures = 2;
    let clock = ManualClock::new(kfsec_types::Clock::now(&SystemClock));
    let mut with_clock = ctx();
    with_clock.clock = clock.clone();
    let c = build(cognito(&op, json!({})), &with_clock);
    let e = login(c.as_ref()).await.unwrap_err();
    assert!(matches!(&e, ConnectorError::Upstream(m) if m.contains("503")), "{e:?}");
    let e = login(c.as_ref()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Unreachable(m) if m.contains("failed recently")),
        "{e:?}"
    );
    assert_eq!(
        op.state().discovery_failures,
        1,
        "answered from memory, not asked again"
    );
    clock.advance(Duration::from_secs(6));
    let e = login(c.as_ref()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Upstream(m) if m.contains("503")),
        "asked again: {e:?}"
    );
    clock.advance(Duration::from_secs(6));
    assert!(login(c.as_ref()).await.is_ok());
}

#[tokio::test]
async fn an_upstream_refusal_is_denied_and_a_forged_answer_is_a_bad_callback() {
    let op = FakeOp::start().await;
    let c = build(cognito(&op, json!({})), &ctx());
    op.state().authorize_error = Some("access_denied".into());
    let e = login(c.as_ref()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Denied(m) if m.contains("access_denied")),
        "{e:?}"
    );
    assert_eq!(e.status(), 403);
    op.state().authorize_error = None;

    let r = c.login_url(OFFLINE, CALLBACK, STATE, &kfsec_pki::OsRng).await.unwrap();
    // No code; a code the upstream never issued; another issuer named (RFC 9207).
    let no_code = HashMap::from([("state".to_owned(), STATE.to_owned())]);
    let e = c.callback(OFFLINE, CALLBACK, &r.pending, &no_code).await.unwrap_err();
    assert!(matches!(e, ConnectorError::BadCallback(_)), "{e:?}");
    let forged = HashMap::from([("code".to_owned(), "code-999".to_owned())]);
    let e = c.callback(OFFLINE, CALLBACK, &r.pending, &forged).await.unwrap_err();
    assert!(matches!(e, ConnectorError::BadCallback(_)), "{e:?}");
    assert_eq!(e.status(), 400);
    let mixup = HashMap::from([
        ("code".to_owned(), "code-1".to_owned()),
        ("iss".to_owned(), "https://evil.example".to_owned()),
    ]);
    let e = c.callback(OFFLINE, CALLBACK, &r.pending, &mixup).await.unwrap_err();
    assert!(matches!(e, ConnectorError::BadCallback(_)), "{e:?}");
    // A code replayed with another login's pending state (other nonce, other PKCE verifier).
    let other = c.login_url(OFFLINE, CALLBACK, STATE, &kfsec_pki::OsRng).await.unwrap();
    let resp = plain_http().get(&r.url).send().await.unwrap();
    let q = query_of(location(&resp));
    let e = c.callback(OFFLINE, CALLBACK, &other.pending, &q).await.unwrap_err();
    assert!(
        matches!(e, ConnectorError::BadCallback(_)),
        "PKCE binds the code to its login: {e:?}"
    );
    // basicAuthUnsupported: the secret goes in the body, never in a header.
    let c = build(cognito(&op, json!({"basicAuthUnsupported": true})), &ctx());
    login(c.as_ref()).await.unwrap();
    {
        let s = op.state();
        let (form, auth) = s.token_requests.last().unwrap();
        assert!(auth.is_none(), "{auth:?}");
        assert_eq!(form["client_secret"], CLIENT_SECRET);
    }
    // A wrong client secret is the operator's problem, said as such.
    let c = build(cognito(&op, json!({"clientSecret": "wrong"})), &ctx());
    let e = login(c.as_ref()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Misconfigured(m) if m.contains("clientSecret")),
        "{e:?}"
    );
}

/// A second kfsec is the upstream OP: its login form, its tokens, its refresh, its user removal.
#[tokio::test]
async fn a_second_kfsec_is_the_upstream_provider() {
    let up = Kfsec::start("").await;
    let client = AdminRequest::ClientAdd {
        id: "kfsec-downstream".into(),
        name: Some("Downstream kfsec".into()),
        redirect_uris: vec![CALLBACK.into()],
        public: false,
    };
    let AdminResponse::Client(client) = kfsec_server::admin::call(up._dir.path(), &client)
        .await
        .unwrap()
        .unwrap()
    else {
        panic!("client add");
    };
    let secret = client.secret.unwrap();
    let (email, password) = ("fed.user@example.org", "federated password 1");
    let add = AdminRequest::UserAdd {
        email: email.into(),
        username: Some("Fed User".into()),
        groups: vec!["ml-team".into(), "platform".into()],
        password: password.into(),
    };
    assert!(matches!(
        kfsec_server::admin::call(up._dir.path(), &add).await.unwrap().unwrap(),
        AdminResponse::User(_)
    ));
    let config = json!({
        "issuer": up.running.issuer,
        "clientID": "kfsec-downstream",
        "clientSecret": secret,
        "redirectURI": CALLBACK,
        "rootCAs": [up.running.ca_pem],
        "scopes": ["profile", "email", "groups", "offline_access"],
        "insecureEnableGroups": true,
    });
    let c = build(config, &ctx());

    let r = c.login_url(OFFLINE, CALLBACK, STATE, &kfsec_pki::OsRng).await.unwrap();
    assert!(r.url.starts_with(&format!("{}/auth?", up.running.issuer)), "{}", r.url);
    let mut b = up.client();
    let (form, form_url) = b.follow(&r.url).await;
    assert_eq!(form.status(), 200, "the upstream's login form at {form_url}");
    let resp = b
        .post_form(&form_url, &[("login", email), ("password", password)])
        .await;
    let mut next = location(&resp).to_owned();
    if next.starts_with("/dex/approval") {
        let req = query_param(&next, "req").unwrap();
        let resp = b.post_form(&next, &[("req", &req), ("approval", "approve")]).await;
        next = location(&resp).to_owned();
    }
    assert!(next.starts_with(&format!("{CALLBACK}?")), "{next}");
    let q = query_of(&next);
    assert_eq!(q["state"], STATE);
    let id = c.callback(OFFLINE, CALLBACK, &r.pending, &q).await.unwrap();
    assert_eq!(id.email, email);
    assert!(id.email_verified);
    assert_eq!(id.username, "Fed User");
    assert_eq!(id.groups, ["ml-team", "platform"]);
    assert!(!id.user_id.is_empty());
    assert!(
        id.connector_data.is_some(),
        "offline_access gave an upstream refresh token"
    );

    // Refresh re-checks the upstream and hands back its rotated refresh token.
    let fresh = c.refresh(OFFLINE, &id).await.unwrap();
    assert_eq!(
        (fresh.email.as_str(), fresh.user_id.as_str()),
        (email, id.user_id.as_str())
    );
    assert_eq!(fresh.groups, ["ml-team", "platform"]);
    assert_ne!(fresh.connector_data, id.connector_data, "kfsec rotates refresh tokens");

    // The user is deleted upstream: the next refresh says Revoked.
    let del = AdminRequest::UserDelete { email: email.into() };
    assert!(matches!(
        kfsec_server::admin::call(up._dir.path(), &del).await.unwrap().unwrap(),
        AdminResponse::Ok
    ));
    let e = c.refresh(OFFLINE, &fresh).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Revoked(_)), "{e:?}");
    up.running.shutdown().await;
}

/// The issuer the downstream kfsec is configured with in the browser tests; the browser reaches
/// it at the harness's `base` (the upstream redirects to `<issuer>/callback`).
pub(crate) const E2E_ISSUER: &str = "https://kf.example.org/dex";
pub(crate) const FED_USER: &str = "fed.user@example.org";
const FED_PASSWORD: &str = "federated password 1";

/// An upstream kfsec (client `kfsec-downstream`, user [`FED_USER`] in `ml-team` and `platform`)
/// and a downstream kfsec whose `oidc` connector `corp` logs in there, next to the local
/// password database (so `/dex/auth` shows the chooser).
pub(crate) struct Federation {
    pub(crate) up: Kfsec,
    pub(crate) down: Kfsec,
}

async fn federation() -> Federation {
    federation_with(false).await
}

/// Like [`federation`]; with `manual_clock` the downstream kfsec runs on a manual clock (its
/// `clock`), the upstream on the system clock.
pub(crate) async fn federation_with(manual_clock: bool) -> Federation {
    let up = Kfsec::start("").await;
    let admin = |req: AdminRequest| {
        let dir = up._dir.path().to_path_buf();
        async move { kfsec_server::admin::call(&dir, &req).await.unwrap().unwrap() }
    };
    let AdminResponse::Client(client) = admin(AdminRequest::ClientAdd {
        id: "kfsec-downstream".into(),
        name: Some("Kubeflow".into()),
        redirect_uris: vec![format!("{E2E_ISSUER}/callback")],
        public: false,
    })
    .await
    else {
        panic!("client add");
    };
    let added = admin(AdminRequest::UserAdd {
        email: FED_USER.into(),
        username: Some("Fed User".into()),
        groups: vec!["ml-team".into(), "platform".into()],
        password: FED_PASSWORD.into(),
    })
    .await;
    assert!(matches!(added, AdminResponse::User(_)));
    let config = json!({
        "issuer": up.running.issuer,
        "clientID": "kfsec-downstream",
        "clientSecret": client.secret.unwrap(),
        "redirectURI": format!("{E2E_ISSUER}/callback"),
        "rootCAs": [up.running.ca_pem],
        "scopes": ["profile", "email", "groups", "offline_access"],
        "insecureEnableGroups": true,
    });
    let yaml = format!(
        "issuer: {E2E_ISSUER}\nenablePasswordDB: true\nconnectors:\n- type: oidc\n  id: corp\n  name: Corporate SSO\n  config: {config}\n"
    );
    let down = if manual_clock {
        Kfsec::start_with_clock(&yaml).await
    } else {
        Kfsec::start(&yaml).await
    };
    Federation { up, down }
}

/// A browser across kfsec (`down`), an optional upstream kfsec (`up`) — each through its own
/// cookie jar — and plain-HTTP providers on 127.0.0.1 (`fake_op`); the upstream kfsec's login
/// form is answered with [`FED_USER`]'s password and approvals are granted. Follows redirects
/// and returns the last answer and every URL visited.
async fn walk(
    down_base: &str,
    up_base: Option<&str>,
    down: &mut Browser,
    up: &mut Browser,
    start: &str,
) -> (reqwest::Response, Vec<String>) {
    let public = E2E_ISSUER.trim_end_matches("/dex");
    let ours = |u: &str| u.starts_with(down_base) || up_base.is_some_and(|b| u.starts_with(b));
    let mut visited = Vec::new();
    let mut url = down.url(&start.replace(public, down_base));
    loop {
        assert!(visited.len() < 20, "redirect loop: {visited:#?}");
        visited.push(url.clone());
        if url.starts_with("http://127.0.0.1") {
            let r = plain_http().get(&url).send().await.unwrap();
            if !r.status().is_redirection() {
                return (r, visited);
            }
            url = location(&r).replace(public, down_base);
            continue;
        }
        let on_up = up_base.is_some_and(|b| url.starts_with(b));
        let b: &mut Browser = if on_up { &mut *up } else { &mut *down };
        let mut r = b.get(&url).await;
        if on_up && r.status() == 200 && url.contains("/dex/auth/local/login") {
            r = b
                .post_form(&url, &[("login", FED_USER), ("password", FED_PASSWORD)])
                .await;
        }
        if !r.status().is_redirection() {
            return (r, visited);
        }
        let mut next = location(&r).to_owned();
        if next.starts_with("/dex/approval") {
            let req = query_param(&next, "req").unwrap();
            let a = b.post_form(&next, &[("req", &req), ("approval", "approve")]).await;
            next = location(&a).to_owned();
        }
        let next = next.replace(public, down_base);
        url = match (next.starts_with('/'), on_up, up_base) {
            (true, true, Some(b)) => format!("{b}{next}"),
            (true, _, _) => format!("{down_base}{next}"),
            _ => next,
        };
        if !ours(&url) && !url.starts_with("http://127.0.0.1") {
            // Back to a relying party outside the test (its redirect URI).
            visited.push(url);
            return (r, visited);
        }
    }
}

impl Federation {
    pub(crate) async fn walk(
        &self,
        down: &mut Browser,
        up: &mut Browser,
        start: &str,
    ) -> (reqwest::Response, Vec<String>) {
        walk(&self.down.base, Some(&self.up.base), down, up, start).await
    }
}

#[tokio::test]
async fn a_browser_logs_in_through_the_chooser_and_an_upstream_kfsec_to_the_home_page() {
    let f = federation().await;
    let (mut down, mut up) = (f.down.client(), f.up.client());
    // A protected page → the gatekeeper → /dex/auth: the chooser.
    let (chooser, visited) = f.walk(&mut down, &mut up, "/app/notebooks").await;
    assert_eq!(chooser.status(), 200, "{visited:#?}");
    let page = chooser.text().await.unwrap();
    assert!(page.contains("Log in with Corporate SSO"), "{page}");
    let auth_url = visited.last().unwrap().clone();
    assert!(auth_url.contains("/dex/auth?"), "{auth_url}");

    // connector_id=corp → the upstream kfsec's login form → /dex/callback → the gatekeeper's
    // callback → the page, as the upstream's user with the upstream's groups.
    let (last, visited) = f
        .walk(&mut down, &mut up, &format!("{auth_url}&connector_id=corp"))
        .await;
    assert!(
        visited
            .iter()
            .any(|u| u.starts_with(&format!("{}/dex/auth/local/login", f.up.base))),
        "{visited:#?}"
    );
    assert!(
        visited.iter().any(|u| u.contains("/dex/callback?code=")),
        "{visited:#?}"
    );
    assert_eq!(last.status(), 200, "{visited:#?}");
    let seen: Value = last.json().await.unwrap();
    assert_eq!(seen["path"], "/app/notebooks");
    assert_eq!(seen["headers"]["kubeflow-userid"], FED_USER);
    assert_eq!(seen["headers"]["kubeflow-groups"], "ml-team,platform");
    let home = down.get("/").await.text().await.unwrap();
    assert!(home.contains(FED_USER) && home.contains("ml-team"), "{home}");
    f.down.running.shutdown().await;
    f.up.running.shutdown().await;
}

#[tokio::test]
async fn a_client_refresh_re_asks_the_upstream_kfsec_and_ends_when_the_user_is_deleted() {
    let f = federation().await;
    let (mut down, mut up) = (f.down.client(), f.up.client());
    let verifier = "v".repeat(50);
    let challenge = kfsec_idp::secret::sha256_b64(verifier.as_bytes());
    let auth = format!(
        "/dex/auth?client_id=rp-test&redirect_uri=https%3A%2F%2Frp.example%2Fcb&response_type=code&scope=openid+email+groups+profile+federated%3Aid+offline_access&state=s1&code_challenge={challenge}&code_challenge_method=S256&connector_id=corp"
    );
    let (_, visited) = f.walk(&mut down, &mut up, &auth).await;
    let back = visited.last().unwrap();
    assert!(back.starts_with("https://rp.example/cb?"), "{visited:#?}");
    let code = query_param(back, "code").unwrap();

    let token = |form: Vec<(&'static str, String)>| rp_token(&f.down, form);
    let (status, t) = token(vec![
        ("grant_type", "authorization_code".into()),
        ("code", code),
        ("redirect_uri", "https://rp.example/cb".into()),
        ("code_verifier", verifier),
    ])
    .await;
    assert_eq!(status, 200, "{t}");
    let claims = id_token_claims(&t);
    assert_eq!(claims["email"], FED_USER);
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["name"], "Fed User");
    assert_eq!(claims["groups"], json!(["ml-team", "platform"]));
    assert_eq!(claims["federated_claims"]["connector_id"], "corp");
    assert!(
        claims["federated_claims"]["user_id"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );

    // A refresh asks the upstream again (its refresh grant).
    let refresh = |rt: &Value| {
        vec![("grant_type", "refresh_token"), ("refresh_token", rt.as_str().unwrap())]
            .into_iter()
            .map(|(k, v)| (k, v.to_owned()))
            .collect::<Vec<_>>()
    };
    let (status, t2) = token(refresh(&t["refresh_token"])).await;
    assert_eq!(status, 200, "{t2}");
    assert_eq!(id_token_claims(&t2)["email"], FED_USER);

    // Deleted upstream: the next refresh is invalid_grant (400, OAuth2 JSON).
    let del = AdminRequest::UserDelete { email: FED_USER.into() };
    assert!(matches!(
        kfsec_server::admin::call(f.up._dir.path(), &del)
            .await
            .unwrap()
            .unwrap(),
        AdminResponse::Ok
    ));
    let (status, e) = token(refresh(&t2["refresh_token"])).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"], "invalid_grant", "{e}");
    f.down.running.shutdown().await;
    f.up.running.shutdown().await;
}

/// Cognito end to end: one connector (no password database) goes straight to the provider; the
/// user lands with Cognito's groups; the provider's refusal and a slow token endpoint are pages
/// (403, 504 in bounded time), never a 500.
#[tokio::test]
async fn a_browser_logs_in_through_a_cognito_shaped_provider_and_failures_are_pages() {
    let op = FakeOp::start().await;
    let config = cognito(
        &op,
        json!({"redirectURI": format!("{E2E_ISSUER}/callback"), "timeout": "1s"}),
    );
    let k = Kfsec::start(&format!(
        "issuer: {E2E_ISSUER}\nconnectors:\n- type: oidc\n  id: cognito\n  name: AWS Cognito\n  config: {config}\n"
    ))
    .await;
    let go = |path: &'static str| {
        let k = &k;
        async move {
            let (mut b, mut unused) = (k.client(), k.client());
            let out = walk(&k.base, None, &mut b, &mut unused, path).await;
            (out, b)
        }
    };
    let ((last, visited), mut b) = go("/app/notebooks").await;
    assert!(
        visited
            .iter()
            .any(|u| u.starts_with(&format!("{}/authorize?", op.base))),
        "{visited:#?}"
    );
    assert_eq!(last.status(), 200, "{visited:#?}");
    let seen: Value = last.json().await.unwrap();
    assert_eq!(seen["headers"]["kubeflow-userid"], "ann@example.com");
    assert_eq!(seen["headers"]["kubeflow-groups"], "ml-team,admins");
    assert!(b.get("/").await.text().await.unwrap().contains("ann@example.com"));

    op.state().authorize_error = Some("access_denied".into());
    let ((refused, visited), _) = go("/app/").await;
    let status = refused.status();
    let page = refused.text().await.unwrap();
    assert_eq!(status, 403, "{visited:#?}: {page}");
    assert!(page.contains("refused the login"), "{page}");
    op.state().authorize_error = None;

    op.state().token_delay = Duration::from_secs(30);
    let start = Instant::now();
    let ((slow, visited), _) = go("/app/").await;
    let status = slow.status();
    let page = slow.text().await.unwrap();
    assert_eq!(status, 504, "{visited:#?}: {page}");
    assert!(page.contains("did not answer in time"), "{page}");
    assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());
    k.running.shutdown().await;
}

#[tokio::test]
async fn discovery_issuer_alias_and_overrides_as_dex() {
    let op = FakeOp::start().await;
    // An issuer that differs from the one the provider names: refused, saying what to set…
    let c = build(cognito(&op, json!({"issuer": format!("{}/", op.base)})), &ctx());
    let e = login(c.as_ref()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Misconfigured(m) if m.contains("issuerAlias")),
        "{e:?}"
    );
    // …and accepted with issuerAlias naming the discovered issuer (ID tokens carry that one).
    let c = build(
        cognito(&op, json!({"issuer": format!("{}/", op.base), "issuerAlias": op.base})),
        &ctx(),
    );
    assert_eq!(login(c.as_ref()).await.unwrap().email, "ann@example.com");

    // Overrides replace the discovered endpoints.
    let c = build(
        cognito(
            &op,
            json!({"providerDiscoveryOverrides": {"jwksURL": format!("{}/no-keys-here", op.base)}}),
        ),
        &ctx(),
    );
    let e = login(c.as_ref()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Upstream(m) if m.contains("/no-keys-here")),
        "{e:?}"
    );
    let c = build(
        cognito(
            &op,
            json!({"getUserInfo": true, "providerDiscoveryOverrides": {"userInfoURL": format!("{}/nowhere", op.base)}}),
        ),
        &ctx(),
    );
    let e = login(c.as_ref()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Upstream(m) if m.contains("userinfo")),
        "{e:?}"
    );
    let c = build(
        cognito(
            &op,
            json!({"providerDiscoveryOverrides": {"authURL": "https://sso.example.com/authorize?p=B2C_1_signin"}}),
        ),
        &ctx(),
    );
    let r = c.login_url(OFFLINE, CALLBACK, STATE, &kfsec_pki::OsRng).await.unwrap();
    assert!(
        r.url
            .starts_with("https://sso.example.com/authorize?p=B2C_1_signin&client_id="),
        "{}",
        r.url
    );
    assert!(!query_of(&r.url).contains_key("acr_values"), "no acr_values unless set");
    let c = build(
        cognito(&op, json!({"acrValues": ["phr", "phrh"], "promptType": "login"})),
        &ctx(),
    );
    let r = c.login_url(OFFLINE, CALLBACK, STATE, &kfsec_pki::OsRng).await.unwrap();
    let q = query_of(&r.url);
    assert_eq!((q["acr_values"].as_str(), q["prompt"].as_str()), ("phr phrh", "login"));
    // prompt and access_type only when the client asked for offline_access, as Dex.
    let online = Scopes {
        offline_access: false,
        groups: true,
    };
    let q = query_of(
        &c.login_url(online, CALLBACK, STATE, &kfsec_pki::OsRng)
            .await
            .unwrap()
            .url,
    );
    assert!(!q.contains_key("prompt") && !q.contains_key("access_type"), "{q:?}");
}

#[tokio::test]
async fn upstream_tls_is_verified_unless_insecure_skip_verify() {
    let up = Kfsec::start("").await;
    let cfg = |extra: Value| {
        let mut c = json!({"issuer": up.running.issuer, "clientID": "x", "clientSecret": "y", "redirectURI": CALLBACK});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        build(c, &ctx())
    };
    let e = cfg(json!({}))
        .login_url(OFFLINE, CALLBACK, STATE, &kfsec_pki::OsRng)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ConnectorError::Unreachable(m) if m.to_lowercase().contains("certificate")),
        "{e:?}"
    );
    for ok in [
        json!({"rootCAs": [up.running.ca_pem]}),
        json!({"insecureSkipVerify": true}),
    ] {
        let r = cfg(ok.clone())
            .login_url(OFFLINE, CALLBACK, STATE, &kfsec_pki::OsRng)
            .await;
        assert!(r.is_ok(), "{ok}: {r:?}");
    }
    up.running.shutdown().await;
}

/// Dex keeps one upstream refresh token per user and connector, so an upstream that rotates
/// refresh tokens breaks every other client's refresh (dex#2728). kfsec keeps one per refresh
/// token: two clients of one user refresh in turn against a strictly rotating provider, and
/// each refresh carries what changed upstream.
#[tokio::test]
async fn each_refresh_token_keeps_its_own_upstream_token() {
    let op = FakeOp::start().await;
    let config = cognito(&op, json!({"redirectURI": format!("{E2E_ISSUER}/callback")}));
    let k = Kfsec::start(&format!(
        "issuer: {E2E_ISSUER}\nconnectors:\n- type: oidc\n  id: cognito\n  name: AWS Cognito\n  config: {config}\n"
    ))
    .await;
    let token = |form: Vec<(&'static str, String)>| rp_token(&k, form);
    let mut refresh_tokens = Vec::new();
    for _ in 0..2 {
        let verifier = "w".repeat(50);
        let challenge = kfsec_idp::secret::sha256_b64(verifier.as_bytes());
        let auth = format!(
            "/dex/auth?client_id=rp-test&redirect_uri=https%3A%2F%2Frp.example%2Fcb&response_type=code&scope=openid+email+groups+profile+offline_access&state=s1&code_challenge={challenge}&code_challenge_method=S256&connector_id=cognito"
        );
        let (mut b, mut unused) = (k.client(), k.client());
        let (_, visited) = walk(&k.base, None, &mut b, &mut unused, &auth).await;
        let back = visited.last().unwrap();
        assert!(back.starts_with("https://rp.example/cb?"), "{visited:#?}");
        let (status, t) = token(vec![
            ("grant_type", "authorization_code".into()),
            ("code", query_param(back, "code").unwrap()),
            ("redirect_uri", "https://rp.example/cb".into()),
            ("code_verifier", verifier),
        ])
        .await;
        assert_eq!(status, 200, "{t}");
        assert_eq!(id_token_claims(&t)["groups"], json!(["ml-team", "admins"]));
        refresh_tokens.push(t["refresh_token"].as_str().unwrap().to_owned());
    }
    for round in 0..3 {
        op.state().claims["cognito:groups"] = json!([format!("round-{round}")]);
        for rt in &mut refresh_tokens {
            let (status, t) = token(
                vec![("grant_type", "refresh_token"), ("refresh_token", rt.as_str())]
                    .into_iter()
                    .map(|(k, v)| (k, v.to_owned()))
                    .collect(),
            )
            .await;
            assert_eq!(status, 200, "round {round}: {t}");
            assert_eq!(id_token_claims(&t)["groups"], json!([format!("round-{round}")]));
            *rt = t["refresh_token"].as_str().unwrap().to_owned();
        }
    }
    let upstream_refreshes = op
        .state()
        .token_requests
        .iter()
        .filter(|(f, _)| f["grant_type"] == "refresh_token")
        .count();
    assert_eq!(upstream_refreshes, 6, "every refresh re-asked the provider");
    k.running.shutdown().await;
}
