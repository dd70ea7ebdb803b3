//! Hostile input: open redirects, state and CSRF tampering, code replay, forged tokens
//! (`alg: none`, HS256 keyed with the public key, wrong `iss`/`aud`, expired), tampered
//! cookies, oversized headers and bodies. Each must be a 4xx, never a panic or a 5xx.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kfsec_idp::Claims;

use crate::harness::*;

#[tokio::test]
async fn forged_and_foreign_tokens_are_refused() {
    let k = Kfsec::start("").await;
    let raw = http_client(&k.running.ca_pem);
    let keys = k.running.idp.keys().keys();
    let sign = |c: &Claims| keys.signing.sign(c).unwrap();
    let iss = k.running.issuer.clone();
    let good = sign(&test_claims(&k, &iss, "kfsec-cli", 600));
    let kid = keys.signing.kid().to_owned();
    let body = B64.encode(serde_json::to_vec(&test_claims(&k, &iss, "kfsec-cli", 600)).unwrap());
    let none = format!("{}.{body}.", B64.encode(format!(r#"{{"alg":"none","kid":"{kid}"}}"#)));
    let hs_head = B64.encode(format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#));
    let jwk = keys.signing.public().to_jwk();
    let hmac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, jwk["n"].as_str().unwrap().as_bytes());
    let tag = aws_lc_rs::hmac::sign(&hmac_key, format!("{hs_head}.{body}").as_bytes());
    let hs256 = format!("{hs_head}.{body}.{}", B64.encode(tag.as_ref()));
    let cases = [
        ("alg none", none),
        ("HS256 keyed with the public key", hs256),
        (
            "wrong iss",
            sign(&test_claims(&k, "https://evil.example/dex", "kfsec-cli", 600)),
        ),
        ("unknown aud", sign(&test_claims(&k, &iss, "somebody-else", 600))),
        ("expired", sign(&test_claims(&k, &iss, "kfsec-cli", -10))),
        ("garbage", "a.b.c".into()),
        ("truncated signature", good[..good.len() - 4].to_owned()),
    ];
    for (what, token) in cases {
        let r = raw
            .get(format!("{}/app/x", k.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what} must be refused");
        let r = raw
            .get(format!("{}/apis/kubeflow.org/v1/profiles", k.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what} must be refused on the API");
        let r = raw
            .get(format!("{}/authservice/check", k.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what} must be refused by the check endpoint");
    }
    // the same claims correctly signed pass (the cases above fail for the stated reason)
    let r = raw
        .get(format!("{}/app/x", k.base))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    k.running.shutdown().await;
}

#[tokio::test]
async fn redirects_state_and_cookies_cannot_be_abused() {
    let k = Kfsec::start("").await;
    // open redirect through the original URL: only same-origin relative paths come back
    for evil in ["//evil.example/x", "/\\evil.example"] {
        let mut b = k.client();
        let r = b.get(&format!("/app/{}", evil.trim_start_matches('/'))).await;
        assert_eq!(r.status(), 302);
        let (done, url) = b.login(evil, USER, PASSWORD).await;
        assert!(url.starts_with(&k.base), "left the origin: {url}");
        assert_ne!(done.status(), 500);
    }
    assert_eq!(kfsec_gateway::safe_return_path("//evil.example/x"), "/");
    assert_eq!(kfsec_gateway::safe_return_path("https://evil.example/"), "/");
    assert_eq!(kfsec_gateway::safe_return_path("/\\evil"), "/");
    assert_eq!(kfsec_gateway::safe_return_path("/ok?x=1"), "/ok?x=1");

    // a forged state whose return URL points elsewhere: refused (it no longer matches the cookie)
    let mut b = k.client();
    let (form, form_url) = b.follow("/app/a").await;
    assert_eq!(form.status(), 200);
    let r = b.post_form(&form_url, &[("login", USER), ("password", PASSWORD)]).await;
    let cb = location(&r).to_owned();
    let code = query_param(&cb, "code").unwrap();
    let state = query_param(&cb, "state").unwrap();
    let forged = format!("{}.{}", B64.encode(b"x"), B64.encode(b"//evil.example"));
    let r = b
        .get(&format!("/authservice/oidc/callback?code={code}&state={forged}"))
        .await;
    assert_eq!(r.status(), 400, "mismatched state");
    // missing state
    assert_eq!(
        b.get(&format!("/authservice/oidc/callback?code={code}")).await.status(),
        400
    );
    // no CSRF cookie (another browser)
    let mut other = k.client();
    assert_eq!(other.get(&cb).await.status(), 400);
    // tampered CSRF cookie
    let saved_csrf = b.cookies["__Host-oidc_state_csrf"].clone();
    b.cookies
        .insert("__Host-oidc_state_csrf".into(), saved_csrf.replacen('e', "f", 1));
    assert_eq!(b.get(&cb).await.status(), 400);
    b.cookies.insert("__Host-oidc_state_csrf".into(), saved_csrf.clone());
    // the genuine callback works once …
    let r = b
        .get(&format!("/authservice/oidc/callback?code={code}&state={state}"))
        .await;
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r), "/app/a");
    // … and a replay of the same code (with the CSRF cookie restored) is refused
    b.cookies.insert("__Host-oidc_state_csrf".into(), saved_csrf);
    let r = b.get(&cb).await;
    assert_eq!(r.status(), 400, "code replay");

    // a tampered session cookie is refused
    let mut t = k.client();
    let real = b.cookies["authservice_session"].clone();
    let (id, mac) = real.split_once('.').unwrap();
    let flipped = if mac.starts_with('A') {
        mac.replacen('A', "B", 1)
    } else {
        format!("A{}", &mac[1..])
    };
    t.cookies
        .insert("authservice_session".into(), format!("{id}.{flipped}"));
    assert_eq!(t.get("/apis/kubeflow.org/v1/profiles").await.status(), 401);
    t.cookies.insert("authservice_session".into(), "garbage".into());
    assert_eq!(t.get("/apis/x").await.status(), 401);
    k.running.shutdown().await;
}

#[tokio::test]
async fn oversized_input_is_a_clean_4xx() {
    let k = Kfsec::start("").await;
    let raw = http_client(&k.running.ca_pem);
    // oversized header
    let big = "x".repeat(100 * 1024);
    let r = raw.get(format!("{}/app/x", k.base)).header("x-big", &big).send().await;
    match r {
        Ok(r) => assert!(r.status().is_client_error(), "{}", r.status()),
        Err(e) => assert!(!e.is_timeout(), "connection refused the header: {e}"),
    }
    // oversized body to the login form and the token endpoint
    let mut b = k.client();
    let (_, form_url) = b.follow("/app/y").await;
    let body = vec![b'a'; 2 * 1024 * 1024];
    let r = raw
        .post(&form_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = raw
        .post(format!("{}/token", k.running.issuer))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    // malformed form, unknown state, bad query
    let r = raw
        .post(&form_url)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    let r = raw
        .get(format!("{}/auth/local/login?state=nope", k.running.issuer))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = raw
        .get(format!("{}/auth?client_id=nobody", k.running.issuer))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // the server is still healthy
    assert_eq!(
        raw.get(format!("{}/healthz", k.running.issuer))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    k.running.shutdown().await;
}

#[tokio::test]
async fn brute_force_is_slowed_then_locked_without_revealing_accounts() {
    let k = Kfsec::start_with_clock(
        "loginProtection:\n  maxFailuresPerAccount: 3\n  maxFailuresPerAddress: 50\n  lockout: 10m\n",
    )
    .await;
    let clock = k.clock.clone().unwrap();
    let mut b = k.client();
    for _ in 0..3 {
        let (r, _) = b.login("/", USER, "wrong password!").await;
        assert_eq!(r.status(), 401);
    }
    // locked: even the right password is refused, with the same kind of answer as for nobody
    let (r, _) = b.login("/", USER, PASSWORD).await;
    assert_eq!(r.status(), 401);
    let locked_body = r.text().await.unwrap();
    assert!(locked_body.contains("Too many failed attempts"));
    for _ in 0..3 {
        b.login("/", "nobody@example.org", "wrong password!").await;
    }
    let (r, _) = b.login("/", "nobody@example.org", "whatever pass").await;
    assert!(
        r.text().await.unwrap().contains("Too many failed attempts"),
        "unknown accounts lock the same way"
    );
    // after the lockout period the right password works again
    clock.advance(Duration::from_secs(601));
    let (r, url) = b.login("/", USER, PASSWORD).await;
    assert_eq!(r.status(), 200, "{url}");
    k.running.shutdown().await;
}

#[tokio::test]
async fn service_account_tokens_are_audience_and_account_bound() {
    let k = Kfsec::start("").await;
    let raw = http_client(&k.running.ca_pem);
    let store = k.running.store.clone();
    let key = &object_key("", "v1", "serviceaccounts", "user1", "default-editor");
    let sa = |uid: &str| {
        serde_json::to_vec(
            &serde_json::json!({"metadata": {"name": "default-editor", "namespace": "user1", "uid": uid}}),
        )
        .unwrap()
    };
    store.put(key, sa("uid-1"), None).await.unwrap();
    let idp = &k.running.idp;
    let hour = Duration::from_secs(3600);
    let token = idp
        .issue_service_account_token("user1", "default-editor", "uid-1", vec!["kfsec".into()], hour)
        .unwrap();
    let get = |path: &str, t: &str| raw.get(format!("{}{path}", k.base)).bearer_auth(t.to_owned()).send();
    let r = get("/app/x", &token).await.unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        seen["headers"]["kubeflow-userid"],
        "system:serviceaccount:user1:default-editor"
    );
    assert_eq!(
        seen["headers"]["kubeflow-groups"],
        "system:serviceaccounts,system:serviceaccounts:user1"
    );

    // the pipelines audience is accepted only on the Pipelines API
    let kfp = idp
        .issue_service_account_token(
            "user1",
            "default-editor",
            "uid-1",
            vec!["pipelines.kubeflow.org".into()],
            hour,
        )
        .unwrap();
    assert_eq!(get("/app/x", &kfp).await.unwrap().status(), 401);
    assert_ne!(get("/pipeline/apis/v1beta1/healthz", &kfp).await.unwrap().status(), 401);
    // … including the persistence agent's report path, which sits under /apis/v1beta1/
    assert_ne!(get("/apis/v1beta1/workflows", &kfp).await.unwrap().status(), 401);
    // a foreign audience is refused everywhere
    let other = idp
        .issue_service_account_token("user1", "default-editor", "uid-1", vec!["vault".into()], hour)
        .unwrap();
    assert_eq!(get("/app/x", &other).await.unwrap().status(), 401);
    // re-creating the account (new uid) or deleting it revokes its tokens
    store.put(key, sa("uid-2"), None).await.unwrap();
    assert_eq!(get("/app/x", &token).await.unwrap().status(), 401);
    store.delete(key, None).await.unwrap();
    assert_eq!(get("/app/x", &token).await.unwrap().status(), 401);
    k.running.shutdown().await;
}
