//! kfsec's IdP driven by a real relying-party library (`openidconnect`): discovery, code flow
//! with PKCE, ID token verified against `/keys`, refresh — and the token used as a bearer.

use std::future::Future;
use std::pin::Pin;

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, HttpRequest, HttpResponse, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
};

use crate::harness::*;

type HttpFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, std::io::Error>> + Send>>;

/// openidconnect's HTTP hook, backed by our reqwest (trusting only the test CA, no redirects).
fn http(client: reqwest::Client) -> impl Fn(HttpRequest) -> HttpFuture {
    move |req: HttpRequest| {
        let client = client.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let resp = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(std::io::Error::other)?;
            let mut out = http::Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            let bytes = resp.bytes().await.map_err(std::io::Error::other)?;
            out.body(bytes.to_vec()).map_err(std::io::Error::other)
        })
    }
}

/// Runs the browser part: authorize URL → login form → 303 to the RP's redirect URI; returns
/// the code and state the RP receives.
pub async fn authorize(b: &mut Browser, auth_url: &str) -> (String, String) {
    let (form, form_url) = b.follow(auth_url).await;
    assert_eq!(form.status(), 200, "{form_url}");
    let r = b.post_form(&form_url, &[("login", USER), ("password", PASSWORD)]).await;
    assert_eq!(r.status(), 303);
    let mut to = location(&r).to_owned();
    if to.starts_with("/dex/approval?") {
        // Dex's default: third-party clients need the user's approval
        let page = b.get(&to).await.text().await.unwrap();
        assert!(page.contains("RP test") && page.contains("Grant Access"), "{page}");
        let req = query_param(&to, "req").unwrap();
        let r = b.post_form(&to, &[("req", &req), ("approval", "approve")]).await;
        assert_eq!(r.status(), 303);
        to = location(&r).to_owned();
        // an approval answers once
        assert_eq!(
            b.post_form("/dex/approval", &[("req", &req), ("approval", "approve")])
                .await
                .status(),
            400
        );
    }
    assert!(to.starts_with("https://rp.example/cb?"), "{to}");
    (query_param(&to, "code").unwrap(), query_param(&to, "state").unwrap())
}

#[tokio::test]
async fn openidconnect_relying_party() {
    let k = Kfsec::start("bearerAudiences: [rp-test]\n").await;
    let raw = http_client(&k.running.ca_pem);
    let h = http(raw.clone());
    let issuer = IssuerUrl::new(k.running.issuer.clone()).unwrap();
    let meta = CoreProviderMetadata::discover_async(issuer, &h)
        .await
        .expect("discovery");
    let client = CoreClient::from_provider_metadata(
        meta,
        ClientId::new("rp-test".into()),
        Some(ClientSecret::new("rp-secret-0123456789".into())),
    )
    .set_redirect_uri(RedirectUrl::new("https://rp.example/cb".into()).unwrap());

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("groups".into()))
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("offline_access".into()))
        .set_pkce_challenge(challenge)
        .url();
    let mut b = k.client();
    let (code, state) = authorize(&mut b, url.as_str()).await;
    assert_eq!(&state, csrf.secret());

    let token = client
        .exchange_code(AuthorizationCode::new(code.clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&h)
        .await
        .expect("code exchange");
    let id_token = token.id_token().expect("id token");
    let claims = id_token
        .claims(&client.id_token_verifier(), &nonce)
        .expect("ID token verifies against /keys");
    assert_eq!(claims.email().map(|e| e.as_str()), Some(USER));
    assert_eq!(claims.email_verified(), Some(true));
    assert_eq!(claims.preferred_username().map(|u| u.as_str()), Some("user1"));
    // Dex's subject encoding of userID 15841185641784 with connector "local"
    assert_eq!(claims.subject().as_str(), "Cg4xNTg0MTE4NTY0MTc4NBIFbG9jYWw");
    let raw_claims: serde_json::Value = {
        use base64::Engine;
        let part = id_token.to_string().split('.').nth(1).unwrap().to_owned();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    assert_eq!(raw_claims["groups"], serde_json::json!(["team-a"]));
    assert!(raw_claims["at_hash"].is_string());

    // refresh rotates the token; the old one still answers inside the reuse window
    let rt = token
        .refresh_token()
        .expect("offline_access gives a refresh token")
        .clone();
    let fresh = client
        .exchange_refresh_token(&rt)
        .unwrap()
        .request_async(&h)
        .await
        .expect("refresh");
    let rt2 = fresh.refresh_token().expect("rotated refresh token").clone();
    assert_ne!(rt.secret(), rt2.secret());
    let within = client
        .exchange_refresh_token(&rt)
        .unwrap()
        .request_async(&h)
        .await
        .expect("reuse window");
    assert_eq!(within.refresh_token().unwrap().secret(), rt2.secret());
    let claims2 = fresh
        .id_token()
        .unwrap()
        .claims(&client.id_token_verifier(), |_: Option<&Nonce>| Ok(()))
        .unwrap();
    assert_eq!(claims2.email().map(|e| e.as_str()), Some(USER));

    // The code is single-use, and presenting it again revokes the refresh tokens it led to
    // (RFC 6749 §4.1.2): the rotated one no longer refreshes.
    let again = client
        .exchange_code(AuthorizationCode::new(code))
        .unwrap()
        .request_async(&h)
        .await;
    assert!(again.is_err(), "a code must not be redeemable twice");
    let revoked = client.exchange_refresh_token(&rt2).unwrap().request_async(&h).await;
    assert!(revoked.is_err(), "the replayed code left its refresh chain alive");

    // userinfo with the access token
    let ui: serde_json::Value = raw
        .get(format!("{}/userinfo", k.running.issuer))
        .bearer_auth(token.access_token().secret())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ui["email"], USER);

    // the ID token works as a bearer token at the front door (rp-test is in bearerAudiences)
    let r = raw
        .get(format!("{}/app/x", k.base))
        .bearer_auth(id_token.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["kubeflow-userid"], USER);
    k.running.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_refuses_bad_clients_and_verifiers() {
    let k = Kfsec::start("").await;
    let raw = http_client(&k.running.ca_pem);
    let token_url = format!("{}/token", k.running.issuer);
    let verifier = "v".repeat(50);
    let challenge = kfsec_idp::secret::sha256_b64(verifier.as_bytes());
    let auth = format!(
        "{}/auth?client_id=rp-test&redirect_uri=https%3A%2F%2Frp.example%2Fcb&response_type=code&scope=openid+email&state=s1&code_challenge={challenge}&code_challenge_method=S256",
        k.running.issuer
    );
    let mut b = k.client();
    let (code, _) = authorize(&mut b, &auth).await;
    let post = |form: Vec<(&'static str, String)>, basic: Option<(&'static str, &'static str)>| {
        let mut r = raw.post(&token_url).form(&form);
        if let Some((u, p)) = basic {
            r = r.basic_auth(u, Some(p));
        }
        r.send()
    };
    // wrong client secret → 401 invalid_client
    let r = post(
        vec![("grant_type", "authorization_code".into()), ("code", code.clone())],
        Some(("rp-test", "nope")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "invalid_client");
    // wrong PKCE verifier → 400 invalid_grant (and the code is burnt)
    let r = post(
        vec![
            ("grant_type", "authorization_code".into()),
            ("code", code.clone()),
            ("redirect_uri", "https://rp.example/cb".into()),
            ("code_verifier", "w".repeat(50)),
        ],
        Some(("rp-test", "rp-secret-0123456789")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["error"], "invalid_grant");
    // unsupported grant type, client auth in the body
    let r = post(
        vec![
            ("grant_type", "password".into()),
            ("client_id", "rp-test".into()),
            ("client_secret", "rp-secret-0123456789".into()),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
    // the gatekeeper's client cannot be used over HTTP
    let r = post(
        vec![
            ("grant_type", "authorization_code".into()),
            ("client_id", "kfsec-gatekeeper".into()),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    // an unregistered redirect URI gets an error page, never a redirect
    let r = b
        .get(&format!(
            "{}/auth?client_id=rp-test&redirect_uri=https%3A%2F%2Fevil.example%2Fcb&response_type=code&scope=openid",
            k.running.issuer
        ))
        .await;
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    k.running.shutdown().await;
}
