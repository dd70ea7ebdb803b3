//! `kfsec login`: the device flow from the real CLI, the browser leg driven here, and the
//! resulting kubeconfig's token used as a bearer token.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kfsec_login_uses_the_device_flow() {
    let k = Kfsec::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &k.running.ca_pem).unwrap();
    let kubeconfig = dir.path().join("user.kubeconfig");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kfsec"))
        .args(["login", "--server", &k.base, "--ca-file"])
        .arg(&ca)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // "To log in, open <url> and confirm the code <code>"
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap()
        .to_owned();
    let code = first.rsplit(' ').next().unwrap().to_owned();
    assert!(url.contains("/dex/device?user_code="), "{first}");

    let mut b = k.client();
    let page = b.get(&url).await.text().await.unwrap();
    assert!(page.contains(&code));
    // a wrong code is refused
    assert_eq!(
        b.post_form("/dex/device/auth/verify_code", &[("user_code", "ZZZZ-ZZZZ")])
            .await
            .status(),
        400
    );
    let r = b
        .post_form("/dex/device/auth/verify_code", &[("user_code", &code)])
        .await;
    assert!(r.status().is_redirection());
    let (form, form_url) = b.follow(location(&r)).await;
    assert_eq!(form.status(), 200);
    let next = login_and_approve(&mut b, &form_url).await;
    assert!(next.starts_with("/dex/device/callback?"), "{next}");
    let done = b.get(&next).await;
    assert_eq!(done.status(), 200);
    // the callback is single-use
    assert_eq!(b.get(&next).await.status(), 400);

    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let raw = http_client(&k.running.ca_pem);
    let r = raw
        .get(format!("{}/app/whoami", k.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["kubeflow-userid"], USER);
    k.running.shutdown().await;
}

/// The device login's browser-binding cookie.
const DEVICE_COOKIE: &str = "__Host-kfsec_device_login";

/// A fresh device code for `kfsec-cli` with a refresh token's scopes: (device_code, user_code).
async fn device_code_offline(k: &Kfsec) -> (String, String) {
    crate::sec_login::device_code_for(k, "openid email groups offline_access").await
}

/// One device-code poll by `kfsec-cli`: (status, body).
async fn poll(k: &Kfsec, device_code: &str) -> (u16, serde_json::Value) {
    let r = crate::sec_login::device_poll(k, device_code).await;
    (r.status().as_u16(), r.json().await.unwrap())
}

/// One browser enters device A's code, then device B's (two `kfsec login`s): B's binding
/// replaces A's, so finishing A there is refused — but A is not denied nor its code used up,
/// and entering A's code again finishes it.
#[tokio::test]
async fn a_second_code_in_the_same_browser_does_not_deny_the_first_device() {
    let k = Kfsec::start("oauth2:\n  skipApprovalScreen: true\n").await;
    let (device_a, code_a) = device_code_offline(&k).await;
    let (_, code_b) = device_code_offline(&k).await;
    let mut b = k.client();
    let enter = async |b: &mut crate::harness::Browser, code: &str| {
        let r = b
            .send(
                b.http
                    .post(b.url("/dex/device/auth/verify_code"))
                    .header("origin", &k.base)
                    .form(&[("user_code", code)]),
            )
            .await;
        assert_eq!(r.status(), 303);
        location(&r).to_owned()
    };
    let login_a = enter(&mut b, &code_a).await;
    enter(&mut b, &code_b).await;
    let (_, form_url) = b.follow(&login_a).await;
    let r = b.post_form(&form_url, &[("login", USER), ("password", PASSWORD)]).await;
    let to = location(&r).to_owned();
    let req = query_param(&to, "req").unwrap();
    let r = b.post_form(&to, &[("req", &req), ("approval", "approve")]).await;
    let callback = location(&r).to_owned();
    let r = b.get(&callback).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("entered another device code"));
    assert_eq!(
        poll(&k, &device_a).await.1["error"],
        "authorization_pending",
        "A is not denied"
    );
    // A's code entered again in this browser finishes A.
    let login_a = enter(&mut b, &code_a).await;
    let (_, form_url) = b.follow(&login_a).await;
    let r = b.post_form(&form_url, &[("login", USER), ("password", PASSWORD)]).await;
    let to = location(&r).to_owned();
    let req = query_param(&to, "req").unwrap();
    let r = b.post_form(&to, &[("req", &req), ("approval", "approve")]).await;
    assert_eq!(b.get(location(&r)).await.status(), 200);
    let (status, tokens) = poll(&k, &device_a).await;
    assert_eq!(status, 200, "{tokens}");
    k.running.shutdown().await;
}

/// A device code lives the `expires_in` it was issued with however often it is polled (each
/// poll used to restart its five minutes, so a polling device kept it forever), and each
/// `slow_down` adds five seconds to the interval for every later poll (RFC 8628 §3.5).
#[tokio::test]
async fn polling_neither_extends_a_device_code_nor_outruns_slow_down() {
    let k = Kfsec::start_with_clock("").await;
    let clock = k.clock.clone().unwrap();
    let (device_code, _) = device_code_offline(&k).await;
    let error = |r: (u16, serde_json::Value)| (r.0, r.1["error"].as_str().unwrap_or_default().to_owned());
    let pending = (400, "authorization_pending".to_owned());
    let slow = (400, "slow_down".to_owned());
    assert_eq!(error(poll(&k, &device_code).await), pending);
    clock.advance(Duration::from_secs(3));
    assert_eq!(error(poll(&k, &device_code).await), slow, "3 s after, interval 5 s");
    clock.advance(Duration::from_secs(6));
    assert_eq!(
        error(poll(&k, &device_code).await),
        slow,
        "6 s after, interval now 10 s"
    );
    clock.advance(Duration::from_secs(16));
    assert_eq!(
        error(poll(&k, &device_code).await),
        pending,
        "16 s after, interval 15 s"
    );
    // Polled every 16 s to just before the end of its 300 s: pending; past them: expired.
    let mut t = 25;
    while t + 16 < 300 {
        clock.advance(Duration::from_secs(16));
        t += 16;
        assert_eq!(error(poll(&k, &device_code).await), pending, "at {t} s");
    }
    clock.advance(Duration::from_secs(301 - t));
    assert_eq!(
        error(poll(&k, &device_code).await),
        (400, "expired_token".to_owned()),
        "a device code polled all along still ends 300 s after it was issued"
    );
    k.running.shutdown().await;
}

/// RFC 8628 §5.4 (remote phishing): someone starts a device login for their own device and
/// sends its login link to a victim. With `skipApprovalScreen` (Kubeflow's default) the victim
/// who logs in is still shown the confirmation naming the code; one who confirms anyway
/// completes nothing, since their browser did not enter the code: they are told so, and the
/// device is denied instead of getting the victim's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_login_link_finished_in_another_browser_gets_the_device_nothing() {
    let k = Kfsec::start("oauth2:\n  skipApprovalScreen: true\n").await;
    let (device_code, user_code) = device_code_offline(&k).await;
    // the attacker enters their own code (no Origin: not a browser) and keeps the link
    let mut attacker = k.client();
    let r = attacker
        .post_form("/dex/device/auth/verify_code", &[("user_code", &user_code)])
        .await;
    assert_eq!(r.status(), 303);
    let link = location(&r).to_owned();
    assert!(link.starts_with("/dex/auth/local/login?"), "{link}");

    // the victim, another browser, follows the link and logs in with their password
    let mut victim = k.client();
    let (form, form_url) = victim.follow(&link).await;
    assert_eq!(form.status(), 200);
    let r = victim
        .post_form(&form_url, &[("login", USER), ("password", PASSWORD)])
        .await;
    assert_eq!(r.status(), 303);
    let mut callback = location(&r).to_owned();
    // a victim who confirms whatever is shown
    let mut confirmation = None;
    if callback.starts_with("/dex/approval?") {
        confirmation = Some(victim.get(&callback).await.text().await.unwrap());
        assert_eq!(poll(&k, &device_code).await.1["error"], "authorization_pending");
        let req = query_param(&callback, "req").unwrap();
        let r = victim
            .post_form(&callback, &[("req", &req), ("approval", "approve")])
            .await;
        assert_eq!(r.status(), 303);
        callback = location(&r).to_owned();
    }
    assert!(callback.starts_with("/dex/device/callback?"), "{callback}");
    let r = victim.get(&callback).await;
    let (status, content_type) = (r.status(), r.headers().get("content-type").cloned());
    let redirected = r.headers().contains_key("location");
    let text = r.text().await.unwrap();

    // the device gets no tokens: denied, then gone
    let (polled, body) = poll(&k, &device_code).await;
    assert_ne!(polled, 200, "the attacker's device got the victim's tokens: {body}");
    assert!(body.get("id_token").is_none() && body.get("refresh_token").is_none());
    assert_eq!((polled, body["error"].as_str()), (400, Some("access_denied")), "{body}");
    assert_eq!(poll(&k, &device_code).await.1["error"], "expired_token");
    // the victim's browser is told why, on an error page
    assert_eq!(status, 403, "{text}");
    assert!(!redirected);
    assert!(content_type.unwrap().to_str().unwrap().starts_with("text/html"));
    assert!(
        text.contains("This device login was started in another browser, so it was not completed."),
        "{text}"
    );
    assert!(!text.contains("Return to your device"), "{text}");
    // and was shown the confirmation naming the code, although approval screens are skipped
    let page = confirmation.expect("a device login is confirmed even with skipApprovalScreen");
    assert!(
        page.contains(&format!(
            "Confirm the code shown on your device: <b id=\"user-code\">{user_code}</b>"
        )),
        "{page}"
    );
    assert!(page.contains("A device is asking for access to your account"), "{page}");
    // nor does the attacker's own browser finish it with the victim's code afterwards
    assert_eq!(attacker.get(&callback).await.status(), 400);
    assert_eq!(poll(&k, &device_code).await.1["error"], "expired_token");
    k.running.shutdown().await;
}

/// The device callback is no redirect URI of an authorization request: a page that sends a
/// victim to `/dex/auth` for `kfsec-cli` ending there (with the challenge read from a signed
/// device login, so the victim's silent SSO would complete the attacker's device) gets the
/// error page for an unregistered redirect URI, never a redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_request_cannot_end_at_the_device_callback() {
    use base64::Engine;
    let k = Kfsec::start("oauth2:\n  skipApprovalScreen: true\n").await;
    let (_, user_code) = device_code_offline(&k).await;
    let mut attacker = k.client();
    let r = attacker
        .post_form("/dex/device/auth/verify_code", &[("user_code", &user_code)])
        .await;
    let link = location(&r).to_owned();
    // the signed request is signed, not sealed: its challenge can be read
    let signed = query_param(&link, "state").unwrap();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signed.split('.').next().unwrap())
        .unwrap();
    let req: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let challenge = req["code_challenge"].as_str().unwrap().to_owned();
    let state = req["state"].as_str().unwrap().to_owned();

    let mut victim = k.client();
    for redirect in [
        "/dex/device/callback".to_owned(),
        format!("{}/device/callback", k.running.issuer),
        format!("{}/device/callback?x=1", k.running.issuer),
    ] {
        for (entry, state) in [("/dex/auth", &state), ("/dex/auth/local", &user_code)] {
            let q = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("client_id", "kfsec-cli"),
                    ("redirect_uri", redirect.as_str()),
                    ("response_type", "code"),
                    ("scope", "openid email groups offline_access"),
                    ("state", state.as_str()),
                    ("code_challenge", challenge.as_str()),
                    ("code_challenge_method", "S256"),
                ])
                .finish();
            let r = victim.get(&format!("{entry}?{q}")).await;
            assert_eq!(r.status(), 400, "{entry} {redirect}");
            assert!(r.headers().get("location").is_none(), "{entry} {redirect}");
            assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
            let text = r.text().await.unwrap();
            assert!(text.contains("Unregistered redirect_uri"), "{entry} {redirect}: {text}");
        }
    }
    k.running.shutdown().await;
}

/// The device flow as users expect it: the browser that entered the code logs in, is shown the
/// confirmation naming the code (also with `skipApprovalScreen`), confirms, and the device's
/// poll gets the tokens; a cancel there denies the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_login_confirmed_in_the_browser_that_entered_the_code_gets_the_device_tokens() {
    let k = Kfsec::start("oauth2:\n  skipApprovalScreen: true\n").await;
    let (device_code, user_code) = device_code_offline(&k).await;
    let mut b = k.client();
    let page = b
        .get(&format!("/dex/device?user_code={user_code}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains(&user_code));
    let r = b
        .send(
            b.http
                .post(b.url("/dex/device/auth/verify_code"))
                .header("origin", &k.base)
                .form(&[("user_code", &user_code)]),
        )
        .await;
    assert_eq!(r.status(), 303);
    let set: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .filter(|v| v.starts_with(&format!("{DEVICE_COOKIE}=")))
        .collect();
    let (form, form_url) = b.follow(location(&r)).await;
    assert_eq!(form.status(), 200);
    let r = b.post_form(&form_url, &[("login", USER), ("password", PASSWORD)]).await;
    let to = location(&r).to_owned();
    assert!(
        to.starts_with("/dex/approval?"),
        "a device login is confirmed even with skipApprovalScreen: {to}"
    );
    // (the code's browser holds the binding, a `__Host-` cookie for as long as a user code lives)
    assert_eq!(set.len(), 1, "{set:?}");
    assert!(
        set[0].ends_with("; Path=/; Max-Age=300; HttpOnly; Secure; SameSite=Lax"),
        "{set:?}"
    );
    let page = b.get(&to).await.text().await.unwrap();
    assert!(
        page.contains(&format!(
            "Confirm the code shown on your device: <b id=\"user-code\">{user_code}</b>"
        )),
        "{page}"
    );
    assert!(page.contains("Grant Access"), "{page}");
    assert_eq!(poll(&k, &device_code).await.1["error"], "authorization_pending");
    // the confirmation is a same-origin form too
    let req = query_param(&to, "req").unwrap();
    let r = b
        .send(
            b.http
                .post(b.url(&to))
                .header("origin", "https://evil.example")
                .form(&[("req", req.as_str()), ("approval", "approve")]),
        )
        .await;
    assert_eq!(r.status(), 403);
    let r = b.post_form(&to, &[("req", &req), ("approval", "approve")]).await;
    let callback = location(&r).to_owned();
    assert!(callback.starts_with("/dex/device/callback?"), "{callback}");
    let r = b.get(&callback).await;
    assert_eq!(r.status(), 200);
    assert!(!b.cookies.contains_key(DEVICE_COOKIE), "the binding is cleared");
    assert!(r.text().await.unwrap().contains("Return to your device"));
    let (status, tokens) = poll(&k, &device_code).await;
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens["refresh_token"].is_string(), "{tokens}");
    let claims = id_token_claims(&tokens);
    assert_eq!(claims["email"], USER);
    assert_eq!(claims["aud"], "kfsec-cli");

    // another device login in the same browser, cancelled on the confirmation: denied
    let (device_code, user_code) = device_code_offline(&k).await;
    let r = b
        .post_form("/dex/device/auth/verify_code", &[("user_code", &user_code)])
        .await;
    let (_, form_url) = b.follow(location(&r)).await;
    let r = b.post_form(&form_url, &[("login", USER), ("password", PASSWORD)]).await;
    let to = location(&r).to_owned();
    let req = query_param(&to, "req").unwrap();
    let r = b.post_form(&to, &[("req", &req), ("approval", "rejected")]).await;
    let callback = location(&r).to_owned();
    assert!(callback.starts_with("/dex/device/callback?"), "{callback}");
    let r = b.get(&callback).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("The device was not logged in."));
    let (status, body) = poll(&k, &device_code).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "{body}");
    k.running.shutdown().await;
}
