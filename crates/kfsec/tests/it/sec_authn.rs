//! Authentication as one policy (issue 9, findings 3 and 9 and the JWT/CSRF items): the same
//! credential gets the same identity or the same refusal at `/authservice/check`, a proxied
//! route, the Kubernetes-style API, Pipelines and TokenReview; ID tokens only for the listed
//! audiences; strict JWT headers and times; revocation of sessions, ID tokens, codes and refresh
//! tokens at once on `user passwd`, `user delete` and logout-all; the session limit; and the
//! same-origin rule for cookie-authenticated writes.

#![allow(clippy::disallowed_methods)] // signs test tokens with aws-lc-rs, whose RSA API takes its own SecureRandom

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kfsec_server::admin::{AdminRequest, AdminResponse};
use kfsec_types::{Clock, SystemClock};
use serde_json::{Value, json};

use crate::harness::*;

const SA_USER: &str = "system:serviceaccount:user1:default-editor";

/// Signs `claims` with the server's key under an arbitrary header (alg and kid are filled in).
fn sign_raw(k: &Kfsec, mut header: Value, claims: &Value) -> String {
    let keys = k.running.idp.keys().keys();
    let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&keys.signing.to_pkcs8().unwrap()).unwrap();
    header["alg"] = json!("RS256");
    header["kid"] = json!(keys.signing.kid());
    let msg = format!(
        "{}.{}",
        B64.encode(serde_json::to_vec(&header).unwrap()),
        B64.encode(serde_json::to_vec(claims).unwrap())
    );
    let mut sig = vec![0u8; pair.public_modulus_len()];
    pair.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        msg.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{msg}.{}", B64.encode(sig))
}

fn now() -> u64 {
    SystemClock.now().as_secs()
}

/// ID-token claims for [`USER`] (group `team-a`) with `aud`, adjusted by `f`.
fn id_claims(k: &Kfsec, aud: &[&str], f: impl FnOnce(&mut Value)) -> Value {
    let mut c = json!({
        "iss": k.running.issuer,
        "sub": "x",
        "aud": aud,
        "exp": now() + 600,
        "iat": now(),
        "email": USER,
        "email_verified": true,
        "groups": ["team-a"],
    });
    f(&mut c);
    c
}

fn sa_claims(k: &Kfsec, aud: &[&str], f: impl FnOnce(&mut Value)) -> Value {
    let mut c = json!({
        "iss": k.running.issuer,
        "sub": SA_USER,
        "aud": aud,
        "exp": now() + 600,
        "iat": now(),
        "nbf": now(),
        "kubernetes.io": {"namespace": "user1", "serviceaccount": {"name": "default-editor", "uid": "uid-1"}},
    });
    f(&mut c);
    c
}

async fn put_service_account(k: &Kfsec) {
    let body = json!({"metadata": {"name": "default-editor", "namespace": "user1", "uid": "uid-1"}});
    k.running
        .store
        .put(
            &object_key("", "v1", "serviceaccounts", "user1", "default-editor"),
            serde_json::to_vec(&body).unwrap(),
            None,
        )
        .await
        .unwrap();
}

/// A credential as a client presents it.
#[derive(Clone)]
enum Cred {
    Bearer(String),
    /// The session cookie under its configured name, as the kfp SDK and scripts send it.
    Cookie(String),
    /// The session cookie as a browser holds it: under both names (the `__Host-` one first).
    Browser(String),
    /// A client presenting a TLS client certificate issued by kfsec's CA.
    Cert(reqwest::Client),
}

impl Cred {
    /// The client that presents this credential: its own for a certificate, `raw` otherwise.
    fn client<'a>(&'a self, raw: &'a reqwest::Client) -> &'a reqwest::Client {
        match self {
            Cred::Cert(c) => c,
            _ => raw,
        }
    }

    fn apply(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Cred::Bearer(t) => r.bearer_auth(t),
            Cred::Cookie(c) => r.header("cookie", format!("authservice_session={c}")),
            Cred::Browser(c) => r.header(
                "cookie",
                format!("__Host-authservice_session={c}; authservice_session={c}"),
            ),
            Cred::Cert(_) => r,
        }
    }
}

/// Who a surface says the caller is: (user, groups without `system:authenticated`), or None.
type Who = Option<(String, Vec<String>)>;

fn split_groups(s: &str) -> Vec<String> {
    s.split(',').filter(|g| !g.is_empty()).map(str::to_owned).collect()
}

struct Surfaces {
    raw: reqwest::Client,
    base: String,
    admin: String,
}

impl Surfaces {
    fn new(k: &Kfsec) -> Self {
        // system:masters (from the test claims) may create TokenReviews
        let admin = k
            .running
            .idp
            .keys()
            .keys()
            .signing
            .sign(&test_claims(k, &k.running.issuer, "kfsec-cli", 600))
            .unwrap();
        Self {
            raw: http_client(&k.running.ca_pem),
            base: k.base.clone(),
            admin,
        }
    }

    async fn check(&self, c: &Cred) -> Who {
        let r = c
            .apply(c.client(&self.raw).get(format!("{}/authservice/check", self.base)))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            assert_eq!(r.status(), 401);
            return None;
        }
        let h = |n: &str| {
            r.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        Some((h("kubeflow-userid"), split_groups(&h("kubeflow-groups"))))
    }

    async fn route(&self, c: &Cred) -> Who {
        let r = c
            .apply(c.client(&self.raw).get(format!("{}/app/x", self.base)))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            assert!(r.status() == 401 || r.status() == 302, "{}", r.status());
            return None;
        }
        let v: Value = r.json().await.unwrap();
        let h = |n: &str| v["headers"][n].as_str().unwrap_or_default().to_owned();
        Some((h("kubeflow-userid"), split_groups(&h("kubeflow-groups"))))
    }

    /// Authenticated (any answer but 401) at `path`.
    async fn passes(&self, c: &Cred, path: &str) -> bool {
        let r = c
            .apply(c.client(&self.raw).get(format!("{}{path}", self.base)))
            .send()
            .await
            .unwrap();
        r.status() != 401
    }

    async fn review(&self, token: &str, audiences: &[&str]) -> (Who, Vec<String>) {
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        });
        let r = self
            .raw
            .post(format!("{}/apis/authentication.k8s.io/v1/tokenreviews", self.base))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "TokenReview answered");
        let v: Value = r.json().await.unwrap();
        let st = &v["status"];
        if st["authenticated"] != json!(true) {
            return (None, vec![]);
        }
        let groups: Vec<String> = st["user"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_str().unwrap().to_owned())
            .filter(|g| g != "system:authenticated")
            .collect();
        assert!(
            st["user"]["groups"]
                .as_array()
                .unwrap()
                .contains(&json!("system:authenticated"))
        );
        let aud = st["audiences"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        (Some((st["user"]["username"].as_str().unwrap().to_owned(), groups)), aud)
    }
}

/// Logs `user` in through the browser flow and returns the session cookie.
async fn session_of(k: &Kfsec, user: &str, password: &str) -> (Browser, String) {
    let mut b = k.client();
    let (r, url) = b.login("/app/x", user, password).await;
    assert_eq!(r.status(), 200, "logged in ({url})");
    let c = b.cookies["authservice_session"].clone();
    (b, c)
}

#[tokio::test]
async fn audience_policy_is_the_same_on_every_surface() {
    let k = Kfsec::start("bearerAudiences: [rp-test]\n").await;
    put_service_account(&k).await;
    // a registered relying party that is not in bearerAudiences
    k.running
        .idp
        .clients()
        .add(
            k.running.idp.rng(),
            "rp-other",
            None,
            vec!["https://other.example/cb".into()],
            false,
        )
        .await
        .unwrap();
    let s = Surfaces::new(&k);
    let iss = k.running.issuer.clone();
    let user: Who = Some((USER.into(), vec!["team-a".into()]));
    let sa: Who = Some((
        SA_USER.into(),
        vec!["system:serviceaccounts".into(), "system:serviceaccounts:user1".into()],
    ));
    let id = |aud: &[&str], azp: Option<&str>| {
        sign_raw(
            &k,
            json!({}),
            &id_claims(&k, aud, |c| {
                if let Some(a) = azp {
                    c["azp"] = json!(a);
                }
            }),
        )
    };
    let sat = |aud: &[&str]| sign_raw(&k, json!({}), &sa_claims(&k, aud, |_| {}));
    let (_b, cookie) = session_of(&k, USER, PASSWORD).await;
    let cas = k.running.trust.cas();
    let leaf = cas
        .current()
        .issue_client(USER, &["team-a".into()], Duration::from_secs(600), &SystemClock)
        .unwrap();
    let cert = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(k.running.ca_pem.as_bytes()).unwrap()])
        .identity(reqwest::Identity::from_pem(format!("{}{}", cas.chain_pem(&leaf), leaf.key_pem).as_bytes()).unwrap())
        .build()
        .unwrap();
    // (what, credential, identity on the gateway surfaces, accepted on Pipelines)
    let cases: Vec<(&str, Cred, Who, bool)> = vec![
        ("session", Cred::Cookie(cookie), user.clone(), true),
        ("client certificate", Cred::Cert(cert), user.clone(), true),
        (
            "gatekeeper aud",
            Cred::Bearer(id(&["kfsec-gatekeeper"], None)),
            user.clone(),
            true,
        ),
        ("cli aud", Cred::Bearer(id(&["kfsec-cli"], None)), user.clone(), true),
        ("listed aud", Cred::Bearer(id(&["rp-test"], None)), user.clone(), true),
        (
            "unlisted registered aud",
            Cred::Bearer(id(&["rp-other"], None)),
            None,
            false,
        ),
        ("unknown aud", Cred::Bearer(id(&["nobody"], None)), None, false),
        (
            "multi aud without azp",
            Cred::Bearer(id(&["other", "kfsec-cli"], None)),
            None,
            false,
        ),
        (
            "multi aud, azp listed",
            Cred::Bearer(id(&["other", "kfsec-cli"], Some("kfsec-cli"))),
            user.clone(),
            true,
        ),
        (
            "multi aud, azp unlisted",
            Cred::Bearer(id(&["rp-other", "kfsec-cli"], Some("rp-other"))),
            None,
            false,
        ),
        (
            "one aud, azp unlisted",
            Cred::Bearer(id(&["kfsec-cli"], Some("rp-other"))),
            None,
            false,
        ),
        (
            "issuer as aud (ID token)",
            Cred::Bearer(id(&[iss.as_str()], None)),
            None,
            false,
        ),
        ("SA kfsec aud", Cred::Bearer(sat(&["kfsec"])), sa.clone(), true),
        ("SA issuer aud", Cred::Bearer(sat(&[iss.as_str()])), sa.clone(), true),
        (
            "SA pipelines aud",
            Cred::Bearer(sat(&["pipelines.kubeflow.org"])),
            None,
            true,
        ),
        ("SA foreign aud", Cred::Bearer(sat(&["vault"])), None, false),
    ];
    for (what, cred, who, on_kfp) in &cases {
        assert_eq!(&s.check(cred).await, who, "{what}: /authservice/check");
        assert_eq!(&s.route(cred).await, who, "{what}: proxied route");
        assert_eq!(
            s.passes(cred, "/apis/kubeflow.org/v1/profiles").await,
            who.is_some(),
            "{what}: Kubernetes-style API"
        );
        assert_eq!(
            s.passes(cred, "/api/v1/namespaces/x/configmaps").await,
            who.is_some(),
            "{what}: core API"
        );
        assert_eq!(s.passes(cred, "/kfam/v1/bindings").await, who.is_some(), "{what}: KFAM");
        assert_eq!(
            s.passes(cred, "/pipeline/apis/v2beta1/healthz").await,
            *on_kfp,
            "{what}: Pipelines"
        );
        assert_eq!(
            s.passes(cred, "/authservice/check/pipeline/apis/v2beta1/healthz").await,
            *on_kfp,
            "{what}: /authservice/check for a Pipelines path"
        );
        if let Cred::Bearer(t) = cred {
            let (reviewed, _) = s.review(t, &[]).await;
            assert_eq!(&reviewed, who, "{what}: TokenReview");
        }
    }
    // TokenReview names the audience KFP asks for: the pipelines SA token passes, with groups
    let (who, aud) = s
        .review(&sat(&["pipelines.kubeflow.org"]), &["pipelines.kubeflow.org"])
        .await;
    assert_eq!(who, sa);
    assert_eq!(aud, vec!["pipelines.kubeflow.org".to_owned()]);
    let (who, _) = s.review(&sat(&["kfsec"]), &["pipelines.kubeflow.org"]).await;
    assert_eq!(
        who, None,
        "a token for another audience is refused when the review names one"
    );
    // an ID token reviewed for an audience it does not carry is refused too
    let (who, _) = s.review(&id(&["kfsec-cli"], None), &["pipelines.kubeflow.org"]).await;
    assert_eq!(who, None);
    let (who, aud) = s.review(&id(&["kfsec-cli"], None), &[]).await;
    assert_eq!(who, user);
    assert_eq!(aud, vec!["kfsec-cli".to_owned()]);
    k.running.shutdown().await;
}

#[tokio::test]
async fn unknown_bearer_audience_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "apiVersion: kfsec/v1\nbearerAudiences: [not-a-client]\nstaticPasswords:\n- email: {USER}\n  hash: \"{HASH}\"\n"
    );
    struct NoEnv;
    impl kfsec_server::config::Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }
    let o = kfsec_server::config::Overrides {
        data_dir: Some(dir.path().to_path_buf()),
        https_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        webhook_addr: Some("127.0.0.1:0".into()),
    };
    let file = kfsec_server::config::parse(std::path::Path::new("t.yaml"), &yaml).unwrap();
    let cfg = kfsec_server::config::validate(file, &o, &NoEnv).unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let err = match kfsec_server::start_with(
        cfg,
        std::sync::Arc::new(SystemClock),
        std::sync::Arc::new(kfsec_pki::OsRng),
    )
    .await
    {
        Ok(r) => {
            r.shutdown().await;
            panic!("started with an unknown bearer audience");
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("not-a-client"), "{err}");
    for bad in ["bearerAudiences: [\"\"]", "bearerAudiences: [a, a]"] {
        let file = kfsec_server::config::parse(
            std::path::Path::new("t.yaml"),
            &format!("apiVersion: kfsec/v1\n{bad}\n"),
        )
        .unwrap();
        assert!(kfsec_server::config::validate(file, &o, &NoEnv).is_err(), "{bad}");
    }
}

/// The PKCE verifier of the test code flows.
fn verifier() -> String {
    "v".repeat(50)
}

/// Starts the code flow of `rp-test` for `user` with `scope` and submits the password; returns
/// the browser and where the login sent it (the approval screen, or the client with a code).
async fn code_flow_login(k: &Kfsec, user: &str, password: &str, scope: &str) -> (Browser, String) {
    let challenge = kfsec_idp::secret::sha256_b64(verifier().as_bytes());
    let scope: String = url::form_urlencoded::byte_serialize(scope.as_bytes()).collect();
    let auth = format!(
        "{}/auth?client_id=rp-test&redirect_uri=https%3A%2F%2Frp.example%2Fcb&response_type=code&scope={scope}&state=s1&code_challenge={challenge}&code_challenge_method=S256",
        k.running.issuer
    );
    let mut b = k.client();
    let (form, form_url) = b.follow(&auth).await;
    assert_eq!(form.status(), 200, "{form_url}");
    let r = b.post_form(&form_url, &[("login", user), ("password", password)]).await;
    assert_eq!(r.status(), 303);
    let to = location(&r).to_owned();
    (b, to)
}

/// Answers the approval screen at `to` (a `/dex/approval?req=` path) with "approve"; returns
/// where it sent the browser.
async fn approve(b: &mut Browser, to: &str) -> String {
    let req = query_param(to, "req").unwrap();
    let r = b.post_form(to, &[("req", &req), ("approval", "approve")]).await;
    assert_eq!(r.status(), 303, "approval answered");
    location(&r).to_owned()
}

/// Redeems the code in `to` (the client's redirect) for `rp-test`.
async fn redeem(k: &Kfsec, to: &str) -> reqwest::Response {
    let code = query_param(to, "code").unwrap_or_else(|| panic!("no code in {to}"));
    http_client(&k.running.ca_pem)
        .post(format!("{}/token", k.running.issuer))
        .basic_auth("rp-test", Some("rp-secret-0123456789"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://rp.example/cb"),
            ("code_verifier", &verifier()),
        ])
        .send()
        .await
        .unwrap()
}

/// Runs the code flow of `rp-test` for `user` with `scope`; returns the token response as JSON.
async fn code_flow_scoped(k: &Kfsec, user: &str, password: &str, scope: &str) -> Value {
    let (mut b, mut to) = code_flow_login(k, user, password, scope).await;
    if to.starts_with("/dex/approval?") {
        to = approve(&mut b, &to).await;
    }
    let r = redeem(k, &to).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Runs the code flow of `rp-test` for `user` (scopes with offline access); returns the token
/// response as JSON.
async fn code_flow(k: &Kfsec, user: &str, password: &str) -> Value {
    code_flow_scoped(k, user, password, "openid email groups offline_access").await
}

/// The status of `/userinfo` for bearer `token`.
async fn userinfo(k: &Kfsec, token: &str) -> reqwest::StatusCode {
    http_client(&k.running.ca_pem)
        .get(format!("{}/userinfo", k.running.issuer))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

async fn refresh(k: &Kfsec, token: &str) -> reqwest::StatusCode {
    http_client(&k.running.ca_pem)
        .post(format!("{}/token", k.running.issuer))
        .basic_auth("rp-test", Some("rp-secret-0123456789"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn jwt_headers_and_times_are_strict() {
    let k = Kfsec::start("bearerAudiences: [rp-test]\n").await;
    put_service_account(&k).await;
    let s = Surfaces::new(&k);
    // (what, header, service-account token?, claim set to a value)
    let no = None::<(&str, u64)>;
    let variant = |header: Value, sa: bool, claim: Option<(&str, u64)>| {
        let tweak = |c: &mut Value| {
            if let Some((name, v)) = claim {
                c[name] = json!(v);
            }
        };
        let claims = if sa {
            sa_claims(&k, &["kfsec"], tweak)
        } else {
            id_claims(&k, &["kfsec-cli"], tweak)
        };
        sign_raw(&k, header, &claims)
    };
    let later = now() + 120;
    let soon = now() + 30;
    let refused = [
        ("crit", json!({"crit": ["exp"]}), false, no),
        ("crit b64", json!({"crit": ["b64"], "b64": false}), false, no),
        ("empty crit", json!({"crit": []}), false, no),
        ("typ at+jwt", json!({"typ": "at+jwt"}), false, no),
        (
            "typ application/at+JWT",
            json!({"typ": "application/at+JWT"}),
            false,
            no,
        ),
        ("typ JOSE", json!({"typ": "JOSE"}), false, no),
        ("typ logout+jwt", json!({"typ": "logout+jwt"}), false, no),
        ("nbf in 2 min", json!({}), false, Some(("nbf", later))),
        ("iat in 2 min", json!({}), false, Some(("iat", later))),
        ("SA iat in 2 min", json!({}), true, Some(("iat", later))),
        ("SA nbf in 2 min", json!({}), true, Some(("nbf", later))),
        ("SA typ at+jwt", json!({"typ": "at+jwt"}), true, no),
        ("SA crit", json!({"crit": ["x"]}), true, no),
    ]
    .map(|(what, h, sa, claim)| (what, variant(h, sa, claim)));
    let accepted = [
        ("typ JWT", json!({"typ": "JWT"}), false, no),
        ("typ jwt", json!({"typ": "jwt"}), false, no),
        ("typ application/jwt", json!({"typ": "application/jwt"}), false, no),
        ("nbf within leeway", json!({}), false, Some(("nbf", soon))),
        ("iat within leeway", json!({}), false, Some(("iat", soon))),
        ("SA typ JWT", json!({"typ": "JWT"}), true, no),
    ]
    .map(|(what, h, sa, claim)| (what, variant(h, sa, claim)));
    for (what, t) in &refused {
        let c = Cred::Bearer(t.clone());
        assert_eq!(s.check(&c).await, None, "{what}: check");
        assert!(!s.passes(&c, "/apis/kubeflow.org/v1/profiles").await, "{what}: API");
        assert!(!s.passes(&c, "/pipeline/apis/v2beta1/healthz").await, "{what}: KFP");
        assert_eq!(s.review(t, &[]).await.0, None, "{what}: TokenReview");
    }
    for (what, t) in &accepted {
        let c = Cred::Bearer(t.clone());
        assert!(s.check(&c).await.is_some(), "{what}: check");
        assert!(s.review(t, &[]).await.0.is_some(), "{what}: TokenReview");
    }
    // a real access token is not an ID token (though its client is listed), but /userinfo takes it
    let tokens = code_flow(&k, USER, PASSWORD).await;
    let at = tokens["access_token"].as_str().unwrap();
    let idt = tokens["id_token"].as_str().unwrap();
    let header: Value = serde_json::from_slice(&B64.decode(at.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["typ"], "at+jwt", "RFC 9068 access token");
    for (what, t, ok) in [("access token", at, false), ("ID token", idt, true)] {
        let c = Cred::Bearer(t.to_owned());
        assert_eq!(s.check(&c).await.is_some(), ok, "{what}: check");
        assert_eq!(s.passes(&c, "/apis/kubeflow.org/v1/profiles").await, ok, "{what}: API");
        assert_eq!(s.passes(&c, "/pipeline/apis/v2beta1/healthz").await, ok, "{what}: KFP");
        assert_eq!(s.review(t, &[]).await.0.is_some(), ok, "{what}: TokenReview");
    }
    assert_eq!(
        userinfo(&k, at).await,
        200,
        "userinfo takes the access token (Dex-compatible)"
    );
    k.running.shutdown().await;
}

/// Everything a logged-in user holds: a session, an ID token, an access token, a refresh token.
struct Held {
    cookie: String,
    id_token: String,
    access_token: String,
    refresh_token: String,
}

async fn hold(k: &Kfsec, user: &str, password: &str) -> Held {
    let (_, cookie) = session_of(k, user, password).await;
    let t = code_flow(k, user, password).await;
    Held {
        cookie,
        id_token: t["id_token"].as_str().unwrap().to_owned(),
        access_token: t["access_token"].as_str().unwrap().to_owned(),
        refresh_token: t["refresh_token"].as_str().unwrap().to_owned(),
    }
}

/// Which of the held credentials still work: (session, ID token, access token, refresh token).
async fn works(k: &Kfsec, h: &Held) -> (bool, bool, bool, bool) {
    let s = Surfaces::new(k);
    let session = s.check(&Cred::Cookie(h.cookie.clone())).await.is_some();
    let id = s.check(&Cred::Bearer(h.id_token.clone())).await.is_some()
        && s.passes(&Cred::Bearer(h.id_token.clone()), "/apis/kubeflow.org/v1/profiles")
            .await;
    let at = userinfo(k, &h.access_token).await == 200;
    (session, id, at, refresh(k, &h.refresh_token).await == 200)
}

const ALL: (bool, bool, bool, bool) = (true, true, true, true);
const NONE: (bool, bool, bool, bool) = (false, false, false, false);

#[tokio::test]
async fn passwd_delete_and_logout_all_revoke_everything_at_once() {
    let k = Kfsec::start("bearerAudiences: [rp-test]\n").await;
    let (email, pw1, pw2) = ("rev@example.org", "first password 1", "second password 2");
    let add = AdminRequest::UserAdd {
        email: email.into(),
        username: None,
        groups: vec![],
        password: pw1.into(),
    };
    assert!(matches!(admin(&k, &add).await, AdminResponse::User(_)));
    let before = hold(&k, email, pw1).await;
    // a second, untouched user keeps everything
    let other = hold(&k, USER, PASSWORD).await;
    assert!(works(&k, &before).await.0);

    // password change: all of them stop at once (refresh was rotated once by `works`: hold anew)
    let before = hold(&k, email, pw1).await;
    let passwd = AdminRequest::UserPasswd {
        email: email.into(),
        password: pw2.into(),
    };
    assert!(matches!(admin(&k, &passwd).await, AdminResponse::Ok));
    assert_eq!(works(&k, &before).await, NONE, "after passwd");
    // the new password works at once (same second), the other user is untouched
    let after = hold(&k, email, pw2).await;
    assert_eq!(works(&k, &after).await, ALL, "fresh login after passwd");
    assert!(works(&k, &other).await.0);

    // logout-all from the admin path
    let after = hold(&k, email, pw2).await;
    assert!(matches!(
        admin(&k, &AdminRequest::UserLogoutAll { email: email.into() }).await,
        AdminResponse::Ok
    ));
    assert_eq!(works(&k, &after).await, NONE, "after logout-all");
    assert!(matches!(
        admin(
            &k,
            &AdminRequest::UserLogoutAll {
                email: "nobody@example.org".into()
            }
        )
        .await,
        AdminResponse::Error { .. }
    ));

    // deletion
    let last = hold(&k, email, pw2).await;
    assert!(matches!(
        admin(&k, &AdminRequest::UserDelete { email: email.into() }).await,
        AdminResponse::Ok
    ));
    let (session, id, _, refresh) = works(&k, &last).await;
    assert_eq!((session, id, refresh), (false, false, false), "after delete");
    k.running.shutdown().await;
}

async fn user_add(k: &Kfsec, email: &str, password: &str) {
    let add = AdminRequest::UserAdd {
        email: email.into(),
        username: None,
        groups: vec![],
        password: password.into(),
    };
    assert!(matches!(admin(k, &add).await, AdminResponse::User(_)));
}

async fn passwd(k: &Kfsec, email: &str, password: &str) {
    let req = AdminRequest::UserPasswd {
        email: email.into(),
        password: password.into(),
    };
    assert!(matches!(admin(k, &req).await, AdminResponse::Ok));
}

/// Whether any of `tokens` (a `/token` answer of `client`) still works: the ID token at the
/// front door, the access token at `/userinfo`, the refresh token at `/token`.
async fn any_token_works(k: &Kfsec, tokens: &Value, client: (&str, Option<&str>)) -> Vec<&'static str> {
    let s = Surfaces::new(k);
    let mut working = vec![];
    if let Some(idt) = tokens["id_token"].as_str()
        && s.check(&Cred::Bearer(idt.to_owned())).await.is_some()
    {
        working.push("ID token");
    }
    if let Some(at) = tokens["access_token"].as_str()
        && userinfo(k, at).await == 200
    {
        working.push("access token");
    }
    if let Some(rt) = tokens["refresh_token"].as_str() {
        let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", rt)];
        let mut req = s.raw.post(format!("{}/token", k.running.issuer));
        match client.1 {
            Some(secret) => req = req.basic_auth(client.0, Some(secret)),
            None => form.push(("client_id", client.0)),
        }
        if req.form(&form).send().await.unwrap().status() == 200 {
            working.push("refresh token");
        }
    }
    working
}

/// A login whose password was checked before `user passwd` gets nothing that outlives the
/// change, however long it waits on the approval screen before it is approved: the browser
/// code flow of a relying party and the device flow of `kfsec-cli` (public client: anyone can
/// start it) alike. A login with the new password afterwards works.
#[tokio::test]
async fn approval_screen_login_cannot_outlive_a_password_change() {
    let k = Kfsec::start("bearerAudiences: [rp-test]\n").await;
    let email = "race@example.org";
    user_add(&k, email, "password number 0").await;

    // the code flow of rp-test: the password is checked, the approval screen waits
    let (mut b, to) = code_flow_login(&k, email, "password number 0", "openid email groups offline_access").await;
    assert!(to.starts_with("/dex/approval?"), "approval screen shown: {to}");
    assert_eq!(b.get(&to).await.status(), 200);
    passwd(&k, email, "password number 1").await;
    let back = approve(&mut b, &to).await;
    if query_param(&back, "code").is_some() {
        let r = redeem(&k, &back).await;
        if r.status() == 200 {
            let tokens: Value = r.json().await.unwrap();
            let working = any_token_works(&k, &tokens, ("rp-test", Some("rp-secret-0123456789"))).await;
            assert!(working.is_empty(), "code flow approved after passwd: {working:?} work");
        } else {
            assert_eq!(r.status(), 400, "the code is refused as a grant");
        }
    }

    // the device flow of kfsec-cli
    let (device_code, user_code) = crate::sec_login::device_code_for(&k, "openid email groups offline_access").await;
    let (device_code, user_code) = (device_code.as_str(), user_code.as_str());
    let mut b = k.client();
    let r = b
        .post_form("/dex/device/auth/verify_code", &[("user_code", user_code)])
        .await;
    assert!(r.status().is_redirection());
    let (form, form_url) = b.follow(location(&r)).await;
    assert_eq!(form.status(), 200);
    let r = b
        .post_form(&form_url, &[("login", email), ("password", "password number 1")])
        .await;
    assert_eq!(r.status(), 303);
    let to = location(&r).to_owned();
    assert!(to.starts_with("/dex/approval?"), "approval screen shown: {to}");
    passwd(&k, email, "password number 2").await;
    let callback = approve(&mut b, &to).await;
    assert!(callback.starts_with("/dex/device/callback?"), "{callback}");
    let done = b.get(&callback).await.status();
    let r = crate::sec_login::device_poll(&k, device_code).await;
    if r.status() == 200 {
        let tokens: Value = r.json().await.unwrap();
        let working = any_token_works(&k, &tokens, ("kfsec-cli", None)).await;
        assert!(
            working.is_empty(),
            "device flow approved after passwd: {working:?} work"
        );
    } else {
        assert_eq!(done, 400, "the device callback refused the code");
    }

    // the new password still logs in, and everything it gets works
    let fresh = hold(&k, email, "password number 2").await;
    assert_eq!(works(&k, &fresh).await, ALL, "fresh login after the race");
    k.running.shutdown().await;
}

/// Tokens minted without the `email` scope carry no email, and are revoked all the same: their
/// access token stops working at `/userinfo` after logout-all (and after `user delete`).
#[tokio::test]
async fn tokens_without_email_are_revoked_too() {
    let k = Kfsec::start("bearerAudiences: [rp-test]\n").await;
    let email = "noemail@example.org";
    user_add(&k, email, "some password 1").await;
    let scopes = ["openid", "openid groups", "openid profile", "openid groups profile"];
    for revoke in [
        AdminRequest::UserLogoutAll { email: email.into() },
        AdminRequest::UserDelete { email: email.into() },
    ] {
        let mut held = vec![];
        for scope in scopes {
            let t = code_flow_scoped(&k, email, "some password 1", scope).await;
            assert!(t["id_token"].is_string());
            let at = t["access_token"].as_str().unwrap().to_owned();
            assert_eq!(userinfo(&k, &at).await, 200, "{scope}: userinfo before");
            held.push((scope, at));
        }
        let what = format!("{revoke:?}");
        assert!(matches!(admin(&k, &revoke).await, AdminResponse::Ok));
        for (scope, at) in held {
            assert_eq!(userinfo(&k, &at).await, 401, "{scope}: userinfo after {what}");
        }
    }
    // a token with a login time but no user to hold it against is refused, ID or access token
    for header in [json!({}), json!({"typ": "at+jwt"})] {
        let orphan = json!({
            "iss": k.running.issuer,
            "sub": "x",
            "aud": "rp-test",
            "exp": now() + 600,
            "iat": now(),
            "kfsec_iat_ms": now() * 1000,
        });
        let t = sign_raw(&k, header.clone(), &orphan);
        assert_eq!(userinfo(&k, &t).await, 401, "no user: {header}");
        // nor is one whose sealed user does not open (kfsec_user is not a name anyone can set)
        let mut forged = orphan.clone();
        forged["kfsec_user"] = json!("bm90LWEtc2VhbGVkLXVzZXItdmFsdWUtYXQtYWxsLWZvcmdlZA");
        let t = sign_raw(&k, header.clone(), &forged);
        assert_eq!(userinfo(&k, &t).await, 401, "unsealed user: {header}");
    }
    // A token minted before kfsec_user was sealed (the plain email) is held against that
    // user's epoch: revoked by logout-all like the rest.
    let legacy_user = "legacy@example.org";
    user_add(&k, legacy_user, "some password 2").await;
    let legacy = sign_raw(
        &k,
        json!({"typ": "at+jwt"}),
        &json!({
            "iss": k.running.issuer,
            "sub": "x",
            "aud": "rp-test",
            "exp": now() + 600,
            "iat": now(),
            "kfsec_iat_ms": now() * 1000 - 1000,
            "kfsec_user": legacy_user,
        }),
    );
    assert_eq!(userinfo(&k, &legacy).await, 200, "legacy token before logout-all");
    let revoke = AdminRequest::UserLogoutAll {
        email: legacy_user.into(),
    };
    assert!(matches!(admin(&k, &revoke).await, AdminResponse::Ok));
    assert_eq!(userinfo(&k, &legacy).await, 401, "legacy token after logout-all");
    k.running.shutdown().await;
}

#[tokio::test]
async fn log_out_everywhere_button_and_session_limit() {
    let k = Kfsec::start("bearerAudiences: [rp-test]\nsession:\n  maxPerUser: 2\n").await;
    let raw = http_client(&k.running.ca_pem);
    let s = Surfaces::new(&k);
    // the home page offers the button
    let (mut b1, c1) = session_of(&k, USER, PASSWORD).await;
    let home = b1.get("/").await.text().await.unwrap();
    assert!(home.contains("/authservice/logout-all"), "{home}");
    let (_, c2) = session_of(&k, USER, PASSWORD).await;
    let t = code_flow(&k, USER, PASSWORD).await;
    let idt = t["id_token"].as_str().unwrap().to_owned();
    assert!(s.check(&Cred::Cookie(c1.clone())).await.is_some());
    assert!(s.check(&Cred::Cookie(c2.clone())).await.is_some());

    // a cross-site form post cannot log the user out everywhere
    for (h, v) in [("sec-fetch-site", "cross-site"), ("origin", "https://evil.example")] {
        let r = raw
            .post(format!("{}/authservice/logout-all", k.base))
            .header("cookie", format!("__Host-authservice_session={c1}"))
            .header(h, v)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{h}: {v}");
    }
    assert!(s.check(&Cred::Cookie(c2.clone())).await.is_some());
    // nor log it out of this one
    let r = raw
        .post(format!("{}/authservice/logout", k.base))
        .header("cookie", format!("__Host-authservice_session={c2}"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(s.check(&Cred::Cookie(c2.clone())).await.is_some());
    // the button (a same-origin form post) ends every session and the user's tokens
    let r = b1
        .send(
            b1.http
                .post(b1.url("/authservice/logout-all"))
                .header("sec-fetch-site", "same-origin"),
        )
        .await;
    assert!(r.status().is_redirection(), "{}", r.status());
    for c in [&c1, &c2] {
        assert_eq!(s.check(&Cred::Cookie(c.clone())).await, None);
    }
    assert_eq!(s.check(&Cred::Bearer(idt)).await, None);
    assert_ne!(refresh(&k, t["refresh_token"].as_str().unwrap()).await, 200);

    // at most two sessions: a third login ends the oldest
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, a) = session_of(&k, USER, PASSWORD).await;
    let (_, b) = session_of(&k, USER, PASSWORD).await;
    let (_, c) = session_of(&k, USER, PASSWORD).await;
    assert_eq!(s.check(&Cred::Cookie(a)).await, None, "oldest evicted");
    assert!(s.check(&Cred::Cookie(b)).await.is_some());
    assert!(s.check(&Cred::Cookie(c)).await.is_some());
    k.running.shutdown().await;
}

#[tokio::test]
async fn cookie_writes_must_be_same_origin() {
    let k = Kfsec::start("bearerAudiences: [rp-test]\n").await;
    let raw = http_client(&k.running.ca_pem);
    let (_, cookie) = session_of(&k, USER, PASSWORD).await;
    let bearer = k
        .running
        .idp
        .keys()
        .keys()
        .signing
        .sign(&test_claims(&k, &k.running.issuer, "kfsec-cli", 600))
        .unwrap();
    let own = k.base.clone();
    // (path, content type, body)
    let writes: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "/apis/kubeflow.org/v1/profiles",
            "text/plain",
            br#"{"apiVersion":"kubeflow.org/v1","kind":"Profile","metadata":{"name":"csrf"},"spec":{"owner":{"kind":"User","name":"x@example.org"}}}"#.to_vec(),
        ),
        ("/api/v1/namespaces/user1/configmaps", "application/json", br#"{"metadata":{"name":"c"}}"#.to_vec()),
        (
            "/pipeline/apis/v1beta1/pipelines/upload",
            "multipart/form-data; boundary=X",
            b"--X\r\nContent-Disposition: form-data; name=\"uploadfile\"; filename=\"p.yaml\"\r\n\r\nkind: x\r\n--X--\r\n".to_vec(),
        ),
        ("/pipeline/apis/v2beta1/experiments", "text/plain", br#"{"display_name":"e"}"#.to_vec()),
        ("/kfam/v1/bindings", "text/plain", br#"{"user":{"kind":"User","name":"evil@example.org"},"referredNamespace":"user1","RoleRef":{"kind":"ClusterRole","name":"kubeflow-edit"}}"#.to_vec()),
    ];
    let cross: Vec<Vec<(&str, String)>> = vec![
        vec![("sec-fetch-site", "cross-site".into())],
        vec![("sec-fetch-site", "same-site".into())],
        vec![("sec-fetch-site", "cross-site".into()), ("origin", own.clone())],
        vec![("origin", "https://evil.example".into())],
        vec![("origin", "null".into())],
        vec![("origin", format!("{own}.evil.example"))],
    ];
    let fine: Vec<Vec<(&str, String)>> = vec![
        vec![("sec-fetch-site", "same-origin".into())],
        vec![("sec-fetch-site", "none".into())],
        vec![("origin", own.clone())],
        vec![],
    ];
    let refused_csrf = |status: u16, body: &str| status == 403 && body.contains("Cross-site");
    for (path, ct, body) in &writes {
        for method in [
            reqwest::Method::POST,
            reqwest::Method::PUT,
            reqwest::Method::PATCH,
            reqwest::Method::DELETE,
        ] {
            for (hs, expect_refused, cred) in cross
                .iter()
                .map(|h| (h, true, Cred::Browser(cookie.clone())))
                .chain(fine.iter().map(|h| (h, false, Cred::Browser(cookie.clone()))))
                .chain(cross.iter().map(|h| (h, false, Cred::Bearer(bearer.clone()))))
            {
                let mut r = cred
                    .apply(raw.request(method.clone(), format!("{}{path}", k.base)))
                    .header("content-type", *ct)
                    .body(body.clone());
                for (n, v) in hs {
                    r = r.header(*n, v);
                }
                let resp = r.send().await.unwrap();
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap();
                assert_eq!(
                    refused_csrf(status, &text),
                    expect_refused,
                    "{method} {path} {hs:?} bearer={}: {status} {text}",
                    matches!(cred, Cred::Bearer(_))
                );
            }
        }
    }
    // reads are never refused for their origin
    let r = raw
        .get(format!("{}/apis/kubeflow.org/v1/profiles", k.base))
        .header("cookie", format!("authservice_session={cookie}"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert!(!r.text().await.unwrap().contains("Cross-site"));
    k.running.shutdown().await;
}

#[tokio::test]
async fn offline_logout_all_survives_a_restart() {
    let k = Kfsec::start("bearerAudiences: [rp-test]\n").await;
    let held = hold(&k, USER, PASSWORD).await;
    let dir = k.stop().await;
    // `kfsec user logout-all` with the server stopped acts on the store
    let cfg = {
        struct NoEnv;
        impl kfsec_server::config::Env for NoEnv {
            fn var(&self, _: &str) -> Option<String> {
                None
            }
        }
        let yaml = format!("apiVersion: kfsec/v1\nstaticPasswords:\n- email: {USER}\n  hash: \"{HASH}\"\n");
        let file = kfsec_server::config::parse(std::path::Path::new("t.yaml"), &yaml).unwrap();
        let o = kfsec_server::config::Overrides {
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        kfsec_server::config::validate(file, &o, &NoEnv).unwrap()
    };
    {
        // the stopped server's aborted tasks let go of the store file as the runtime drops them
        let mut opened = None;
        for _ in 0..100 {
            match kfsec_server::open_store(
                &kfsec_server::DataDir(dir.path().to_path_buf()),
                std::sync::Arc::new(SystemClock),
            ) {
                Ok(s) => {
                    opened = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let store = opened.expect("the store reopens after shutdown");
        let ops = kfsec_server::admin_ops(store, &cfg).unwrap();
        let r = ops.execute(AdminRequest::UserLogoutAll { email: USER.into() }).await;
        assert!(matches!(r, AdminResponse::Ok), "{r:?}");
    }
    let k = Kfsec::start_in(dir, "bearerAudiences: [rp-test]\n").await;
    // (the held ID and access tokens name the old port's issuer; sessions and refresh tokens
    // would have survived the restart)
    assert_eq!(works(&k, &held).await, NONE, "revoked while stopped");
    // an ID token of the new issuer issued before the revocation is void too
    let old = sign_raw(
        &k,
        json!({}),
        &id_claims(&k, &["kfsec-cli"], |c| c["iat"] = json!(now() - 5)),
    );
    let s = Surfaces::new(&k);
    assert_eq!(
        s.check(&Cred::Bearer(old)).await,
        None,
        "issued before the offline revocation"
    );
    let new = sign_raw(
        &k,
        json!({}),
        &id_claims(&k, &["kfsec-cli"], |c| c["iat"] = json!(now() + 1)),
    );
    assert!(s.check(&Cred::Bearer(new)).await.is_some());
    let fresh = hold(&k, USER, PASSWORD).await;
    assert_eq!(works(&k, &fresh).await, ALL);
    k.running.shutdown().await;
}

/// How many of `n` checks of `cookie`, each on a connection of its own (so both workers see
/// it, several times), were accepted.
async fn checks_on_fresh_connections(k: &Kfsec, cookie: &str, n: usize) -> usize {
    let mut checks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (client, url) = (http_client(&k.running.ca_pem), format!("{}/authservice/check", k.base));
        let cookie = format!("authservice_session={cookie}");
        checks.spawn(async move {
            let mut ok = 0;
            for _ in 0..3 {
                let r = client.get(&url).header("cookie", &cookie).send().await.unwrap();
                assert!(matches!(r.status().as_u16(), 200 | 401), "{}", r.status());
                ok += usize::from(r.status() == 200);
            }
            ok
        });
    }
    checks.join_all().await.into_iter().sum()
}

/// Each worker thread remembers the sessions it has checked (the front of the session check):
/// a logout, a "log out everywhere" and a password change still end a session at once on all
/// of them, and the user's other sessions and other users' go on.
#[tokio::test]
async fn a_session_every_worker_has_seen_ends_at_once() {
    let k = Kfsec::start("").await;
    let (_, bystander) = session_of(&k, USER, PASSWORD).await;
    for (i, end) in ["logout", "logout-all", "passwd"].into_iter().enumerate() {
        let (email, password) = (format!("front{i}@example.org"), format!("front password {i}"));
        user_add(&k, &email, &password).await;
        let (_, cookie) = session_of(&k, &email, &password).await;
        let (_, second) = session_of(&k, &email, &password).await;
        assert_eq!(checks_on_fresh_connections(&k, &cookie, 8).await, 24, "{end}: before");
        assert_eq!(checks_on_fresh_connections(&k, &second, 4).await, 12, "{end}: before");
        assert_eq!(
            checks_on_fresh_connections(&k, &bystander, 4).await,
            12,
            "{end}: before"
        );
        match end {
            "logout" => {
                let r = http_client(&k.running.ca_pem)
                    .post(format!("{}/authservice/logout", k.base))
                    .header("cookie", format!("authservice_session={cookie}"))
                    .header("origin", &k.base)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_redirection() || r.status().is_success(), "{}", r.status());
            }
            "logout-all" => assert!(matches!(
                admin(&k, &AdminRequest::UserLogoutAll { email: email.clone() }).await,
                AdminResponse::Ok
            )),
            _ => passwd(&k, &email, "a new front password").await,
        }
        assert_eq!(checks_on_fresh_connections(&k, &cookie, 8).await, 0, "{end}: after");
        let second_left = if end == "logout" { 12 } else { 0 };
        assert_eq!(
            checks_on_fresh_connections(&k, &second, 4).await,
            second_left,
            "{end}: the other session"
        );
        assert_eq!(
            checks_on_fresh_connections(&k, &bystander, 4).await,
            12,
            "{end}: another user"
        );
    }
    k.running.shutdown().await;
}

/// A revocation that reaches the server only as an epoch in the store (another replica's, or a
/// refresh the upstream refused: the user's sessions are not deleted) ends a session every
/// worker has seen, as soon as the store's watch delivers it, and for good.
#[tokio::test]
async fn an_epoch_written_elsewhere_ends_a_session_every_worker_has_seen() {
    let k = Kfsec::start("").await;
    let (email, password) = ("epoch-front@example.org", "epoch front password 1");
    user_add(&k, email, password).await;
    let (_, cookie) = session_of(&k, email, password).await;
    let (_, bystander) = session_of(&k, USER, PASSWORD).await;
    for _ in 0..3 {
        assert_eq!(checks_on_fresh_connections(&k, &cookie, 8).await, 24, "before");
    }
    let now = SystemClock.now().as_millis();
    kfsec_idp::revocation::write(k.running.store.as_ref(), email, now)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while checks_on_fresh_connections(&k, &cookie, 2).await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the watched epoch never ended the session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        assert_eq!(checks_on_fresh_connections(&k, &cookie, 8).await, 0, "after");
    }
    assert_eq!(checks_on_fresh_connections(&k, &bystander, 4).await, 12, "another user");
    k.running.shutdown().await;
}

/// Callers taking turns on one keep-alive connection (so on one worker thread, which keeps the
/// last caller's identity header values) each reach the upstream as themselves, groups and all.
#[tokio::test]
async fn callers_taking_turns_on_one_connection_each_reach_the_upstream_as_themselves() {
    let k = Kfsec::start("").await;
    let (email, password) = ("turns@example.org", "turns password 1");
    user_add(&k, email, password).await;
    let (_, mine) = session_of(&k, email, password).await;
    let (_, theirs) = session_of(&k, USER, PASSWORD).await;
    let s = Surfaces::new(&k);
    let me = Some((email.to_owned(), vec![]));
    let them = Some((USER.to_owned(), vec!["team-a".to_owned()]));
    for _ in 0..3 {
        for (cookie, who) in [(&mine, &me), (&mine, &me), (&theirs, &them), (&mine, &me)] {
            assert_eq!(&s.route(&Cred::Cookie(cookie.clone())).await, who);
        }
    }
    k.running.shutdown().await;
}

/// A session cookie another page or site of the domain set beside the user's (a narrower
/// `Path`, a `Domain` attribute, a nameless cookie: the browser sends it first) cannot sign the
/// user in as its owner: kfsec sets one session cookie per browser, so session cookies of
/// several values are refused — with a 401 that says why, never a login that would loop — and
/// the sessions they name are ended, also when the front remembers the first (forged values cost
/// no store access; more than 64 values are refused without a look); elsewhere such a request is anonymous (public routes) or refused (403 at
/// the check endpoints, `Status` on the API); a logout ends each; the same value twice is the
/// user.
#[tokio::test]
async fn session_cookies_of_several_values_are_refused_and_their_sessions_ended() {
    let k = Kfsec::start("").await;
    let (email, password) = ("tosser@example.org", "tosser password 1");
    user_add(&k, email, password).await;
    let s = Surfaces::new(&k);
    let two = |a: &str, b: &str| Cred::Cookie(format!("{a}; authservice_session={b}"));
    let user = Some((USER.to_owned(), vec!["team-a".to_owned()]));
    let alive = |cookie: &String| Cred::Cookie(cookie.clone());
    let get = |c: &Cred, path: &str| c.apply(s.raw.get(format!("{}{path}", k.base))).send();
    let (_, victim) = session_of(&k, USER, PASSWORD).await;
    assert_eq!(s.route(&two(&victim, &victim)).await, user, "one value twice");
    // What the browser is told: why, in the path's format, and no login.
    let (_, other) = session_of(&k, USER, PASSWORD).await;
    let r = two(&other, "forged")
        .apply(
            s.raw
                .get(format!("{}/app/x", k.base))
                .header("sec-fetch-dest", "document"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("location").is_none());
    assert!(r.text().await.unwrap().contains("more than one session cookie"));
    assert_eq!(
        s.route(&alive(&other)).await,
        None,
        "a session beside a forged cookie was not ended"
    );
    // Elsewhere: anonymous on a public route; 403 at the check endpoints (an ingress that sends a
    // 401 to the login would loop); `Status` JSON on kfsec's API.
    let (_, a) = session_of(&k, USER, PASSWORD).await;
    let (_, b) = session_of(&k, email, password).await;
    let open: Value = get(&two(&a, &b), "/open/x").await.unwrap().json().await.unwrap();
    assert_eq!(open["headers"]["kubeflow-userid"], Value::Null, "{open}");
    for path in ["/authservice/check", "/oauth2/auth", "/oauth2/userinfo"] {
        let r = get(&two(&a, &b), path).await.unwrap();
        assert_eq!(r.status(), 403, "{path}");
        assert!(
            r.text().await.unwrap().contains("more than one session cookie"),
            "{path}"
        );
    }
    let r = get(&two(&a, &b), "/api/v1/namespaces").await.unwrap();
    assert_eq!(r.status(), 401);
    let status: Value = r.json().await.unwrap();
    assert_eq!(status["kind"], "Status", "{status}");
    for victim_first in [false, true] {
        let (_, planted) = session_of(&k, email, password).await;
        let (_, victim) = session_of(&k, USER, PASSWORD).await;
        let both = if victim_first {
            // (the victim's cookie answered once, so that its front remembers it)
            assert_eq!(s.check(&alive(&victim)).await, user);
            two(&victim, &planted)
        } else {
            two(&planted, &victim)
        };
        assert_eq!(s.route(&both).await, None, "victim first: {victim_first}");
        for alone in [&victim, &planted] {
            assert_eq!(s.route(&alive(alone)).await, None, "a session was not ended");
            assert_eq!(s.check(&alive(alone)).await, None, "a session was not ended");
        }
        // A fresh session beside the dead planted cookie is refused too; alone, it is the user.
        let (_, fresh) = session_of(&k, USER, PASSWORD).await;
        assert_eq!(s.route(&two(&planted, &fresh)).await, None);
        let (_, fresh) = session_of(&k, USER, PASSWORD).await;
        assert_eq!(s.route(&alive(&fresh)).await, user);
    }
    // Forged values cost no store access, however many: the one kfsec issued is still ended.
    let (_, kept) = session_of(&k, USER, PASSWORD).await;
    let forged: String = (0..40).map(|i| format!("; authservice_session=forged{i}")).collect();
    assert_eq!(s.route(&Cred::Cookie(format!("{kept}{forged}"))).await, None);
    assert_eq!(s.check(&alive(&kept)).await, None);
    // More than 64 values: refused without a look (the session is not ended either).
    let (_, kept) = session_of(&k, USER, PASSWORD).await;
    let forged: String = (0..70).map(|i| format!("; authservice_session=forged{i}")).collect();
    assert_eq!(s.route(&Cred::Cookie(format!("{kept}{forged}"))).await, None);
    assert_eq!(s.check(&alive(&kept)).await, user);
    // A logout with several values ends each session kfsec issued.
    let (_, c) = session_of(&k, USER, PASSWORD).await;
    let (_, d) = session_of(&k, email, password).await;
    let r = two(&c, &d)
        .apply(s.raw.post(format!("{}/authservice/logout", k.base)))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success() || r.status().is_redirection(), "{}", r.status());
    assert_eq!(s.check(&alive(&c)).await, None);
    assert_eq!(s.check(&alive(&d)).await, None);
    k.running.shutdown().await;
}

/// A browser (it sends Fetch Metadata) is held to the session cookie's `__Host-` name, which no
/// other site of the domain, no network attacker over plain HTTP and no narrower path can set:
/// a plain `authservice_session` planted while the user has no session does not sign them in as
/// the planter (a navigation goes to the login, an XHR and the check endpoint get 401), and one
/// planted beside the user's `__Host-` cookie neither shadows it nor ends either session — for
/// any client: the `__Host-` name, when sent, is the only one read. Clients that send no Fetch
/// Metadata (the kfp SDK, curl, scripts) still present the plain name alone. The login sets both
/// names to one value; logout clears both; no upstream sees either.
#[tokio::test]
async fn a_browser_is_held_to_the_host_session_cookie() {
    let k = Kfsec::start("").await;
    let (email, password) = ("planter@example.org", "planter password 1");
    user_add(&k, email, password).await;
    let s = Surfaces::new(&k);
    let planter = Some((email.to_owned(), vec![]));
    let user = Some((USER.to_owned(), vec!["team-a".to_owned()]));
    let (_, planted) = session_of(&k, email, password).await;
    let browser = |r: reqwest::RequestBuilder, mode: &str, dest: &str| {
        r.header("sec-fetch-site", "same-origin")
            .header("sec-fetch-mode", mode)
            .header("sec-fetch-dest", dest)
    };
    let send = |path: &str, cookie: String, mode: &str, dest: &str| {
        let r = s.raw.get(format!("{}{path}", k.base)).header("cookie", cookie);
        browser(r, mode, dest).send()
    };
    // The planted plain cookie alone, in a browser: no session, whatever is asked.
    let alone = format!("authservice_session={planted}");
    let r = send("/app/x", alone.clone(), "navigate", "document").await.unwrap();
    assert_eq!(r.status(), 302, "a navigation goes to the login");
    assert!(location(&r).contains("/dex/auth"), "{}", location(&r));
    for (path, mode) in [
        ("/app/x", "cors"),
        ("/api/v1/namespaces", "cors"),
        ("/authservice/check", "no-cors"),
    ] {
        let r = send(path, alone.clone(), mode, "empty").await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = send("/app/x", alone.clone(), "websocket", "websocket").await.unwrap();
    assert_eq!(r.status(), 401, "a WebSocket is a browser's request too");
    // The same cookie from a client without Fetch Metadata is the planter's session, alive.
    assert_eq!(s.route(&Cred::Cookie(planted.clone())).await, planter);
    // The login sets both names to one value.
    let mut b = k.client();
    let (r, _) = b.login("/app/x", USER, PASSWORD).await;
    assert_eq!(r.status(), 200);
    let mine = b.cookies["__Host-authservice_session"].clone();
    assert_eq!(b.cookies["authservice_session"], mine);
    // Planted beside the user's own, in either order: the browser is the user, nothing ends,
    // and the upstream sees neither session cookie.
    for cookie in [
        format!("authservice_session={planted}; a=1; __Host-authservice_session={mine}"),
        format!("__Host-authservice_session={mine}; a=1; authservice_session={planted}"),
    ] {
        let r = send("/app/x", cookie, "navigate", "document").await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["headers"]["kubeflow-userid"], USER, "{v}");
        assert_eq!(v["headers"]["cookie"], "a=1", "{v}");
    }
    assert_eq!(
        s.route(&Cred::Cookie(planted.clone())).await,
        planter,
        "the planter's session ended"
    );
    assert_eq!(
        s.route(&Cred::Cookie(mine.clone())).await,
        user,
        "the user's session ended"
    );
    // Without Fetch Metadata (an old browser, a check endpoint asked without the browser's
    // headers) the `__Host-` name wins too: a plain cookie beside it, planted or garbage, is
    // neither the session nor a second one (which would refuse and end the user's).
    for planted in [planted.as_str(), "garbage"] {
        let two = format!("authservice_session={planted}; __Host-authservice_session={mine}");
        let get = |path: &str| s.raw.get(format!("{}{path}", k.base)).header("cookie", &two).send();
        let r = get("/app/x").await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["headers"]["kubeflow-userid"], USER, "{v}");
        let r = get("/authservice/check").await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["kubeflow-userid"], USER);
    }
    assert_eq!(s.route(&Cred::Cookie(mine)).await, user, "the user's session ended");
    // Logout clears both names.
    let mut b = k.client();
    b.login("/app/x", USER, PASSWORD).await;
    let r = b
        .send(browser(b.http.post(b.url("/authservice/logout")), "cors", "empty"))
        .await;
    assert!(r.status().is_redirection(), "{}", r.status());
    let cleared: Vec<&str> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .filter(|c| c.contains("Max-Age=0"))
        .collect();
    for name in ["__Host-authservice_session=;", "authservice_session=;"] {
        assert!(
            cleared.iter().any(|c| c.starts_with(name)),
            "{name} not cleared: {cleared:?}"
        );
    }
    assert!(
        b.cookies.keys().all(|n| !n.contains("authservice_session")),
        "{:?}",
        b.cookies
    );
    k.running.shutdown().await;
}
