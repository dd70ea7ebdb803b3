//! A small OpenID provider on 127.0.0.1 shaped like AWS Cognito, for the `oidc` connector's
//! quirk and attack tests: discovery, a JWKS (RSA, then a rotated EC P-256 key), `/authorize`
//! that redirects straight back with a code (or an `error=`), `/token` (code with PKCE S256,
//! HTTP Basic client auth, rotated refresh tokens, `invalid_grant`), `/userinfo` answering as
//! Cognito does (`email_verified` as a string, `cognito:groups`, no `name`). Knobs bend its ID
//! tokens (audience, issuer, expiry, signature, `alg: none`, `kid`) and its timing and size.
#![allow(clippy::disallowed_methods)] // signs tokens with aws-lc-rs, whose API takes its own SecureRandom; times tokens by the wall clock as a real OP does

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "kf-cognito-client";
pub const CLIENT_SECRET: &str = "cognito-s3cret";

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

struct Key {
    kid: String,
    signer: Signer,
}

impl Key {
    fn rsa(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            signer: Signer::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap()),
        }
    }
    fn ec(kid: &str) -> Self {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
        Self {
            kid: kid.into(),
            signer: Signer::Ec(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap()),
        }
    }
    fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Rsa(_) => "RS256",
            Signer::Ec(_) => "ES256",
        }
    }
    fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Rsa(k) => {
                let pk = k.public_key();
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                    "n": B64.encode(pk.modulus().big_endian_without_leading_zero()),
                    "e": B64.encode(pk.exponent().big_endian_without_leading_zero())})
            }
            Signer::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "kid": self.kid, "use": "sig", "crv": "P-256",
                    "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..])})
            }
        }
    }
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match &self.signer {
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig).unwrap();
                sig
            }
            Signer::Ec(k) => k.sign(&SystemRandom::new(), msg).unwrap().as_ref().to_vec(),
        }
    }
}

/// How the next ID tokens are bent.
#[derive(Default, Clone)]
pub struct Tweak {
    pub aud: Option<Value>,
    pub iss: Option<String>,
    /// Seconds from now for `exp` (default 300).
    pub exp_in: Option<i64>,
    pub alg_none: bool,
    pub bad_signature: bool,
    /// A `kid` no published key has.
    pub kid: Option<String>,
    /// Signed by a key it does not publish (with the published key's kid).
    pub foreign_key: bool,
}

pub struct OpState {
    pub base: String,
    /// Claims of the ID token besides iss/aud/exp/iat/nonce.
    pub claims: Value,
    /// The userinfo answer.
    pub userinfo: Value,
    pub tweak: Tweak,
    pub token_delay: Duration,
    /// Answer the token endpoint with 2 MiB.
    pub huge_token_answer: bool,
    /// `/authorize` answers `error=` this.
    pub authorize_error: Option<String>,
    /// No `id_token` in refresh answers.
    pub no_id_token_on_refresh: bool,
    /// No `refresh_token` in code answers.
    pub no_refresh_token: bool,
    pub jwks_hits: usize,
    /// Discovery answers 503 this many more times.
    pub discovery_failures: usize,
    pub token_requests: Vec<(HashMap<String, String>, Option<String>)>,
    pub authorize_requests: Vec<HashMap<String, String>>,
    codes: HashMap<String, (String, String)>,
    pub refresh_tokens: HashMap<String, bool>,
    access_tokens: Vec<String>,
    signing: Key,
    published: Vec<Value>,
    next: u64,
}

pub struct FakeOp {
    pub base: String,
    state: Arc<Mutex<OpState>>,
}

type S = Arc<Mutex<OpState>>;

impl FakeOp {
    pub async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
        let signing = Key::rsa("r1");
        let published = vec![signing.jwk()];
        let state = Arc::new(Mutex::new(OpState {
            base: base.clone(),
            claims: json!({"sub": "3f1b9a52-cognito-sub", "email": "ann@example.com", "email_verified": "true",
                "cognito:username": "ann", "cognito:groups": ["ml-team", "admins"], "token_use": "id"}),
            userinfo: json!({"sub": "3f1b9a52-cognito-sub", "email": "ann@example.com", "email_verified": "true",
                "username": "ann"}),
            tweak: Tweak::default(),
            token_delay: Duration::ZERO,
            huge_token_answer: false,
            authorize_error: None,
            no_id_token_on_refresh: false,
            no_refresh_token: false,
            jwks_hits: 0,
            discovery_failures: 0,
            token_requests: Vec::new(),
            authorize_requests: Vec::new(),
            codes: HashMap::new(),
            refresh_tokens: HashMap::new(),
            access_tokens: Vec::new(),
            signing,
            published,
            next: 0,
        }));
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        Self { base, state }
    }

    pub fn state(&self) -> MutexGuard<'_, OpState> {
        self.state.lock().unwrap()
    }

    /// Signs with a new EC P-256 key `kid` and publishes only it (the old key is gone).
    pub fn rotate_to_ec(&self, kid: &str) {
        let mut s = self.state();
        s.signing = Key::ec(kid);
        s.published = vec![s.signing.jwk()];
    }

    /// Revokes every refresh token (the user was removed upstream).
    pub fn revoke_all(&self) {
        for v in self.state().refresh_tokens.values_mut() {
            *v = false;
        }
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn discovery(State(s): State<S>) -> Response {
    let base = {
        let mut s = s.lock().unwrap();
        if s.discovery_failures > 0 {
            s.discovery_failures -= 1;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        s.base.clone()
    };
    Json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "jwks_uri": format!("{base}/jwks"),
        "userinfo_endpoint": format!("{base}/userinfo"),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }))
    .into_response()
}

async fn jwks(State(s): State<S>) -> Json<Value> {
    let mut s = s.lock().unwrap();
    s.jwks_hits += 1;
    Json(json!({ "keys": s.published }))
}

fn redirect(to: String) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

async fn authorize(State(s): State<S>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut s = s.lock().unwrap();
    s.authorize_requests.push(q.clone());
    let cb = q.get("redirect_uri").cloned().unwrap_or_default();
    let state = q.get("state").cloned().unwrap_or_default();
    let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    if let Some(e) = &s.authorize_error {
        return redirect(format!(
            "{cb}?error={}&error_description=User+cancelled&state={}",
            enc(e),
            enc(&state)
        ));
    }
    s.next += 1;
    let code = format!("code-{}", s.next);
    let nonce = q.get("nonce").cloned().unwrap_or_default();
    let challenge = q.get("code_challenge").cloned().unwrap_or_default();
    s.codes.insert(code.clone(), (nonce, challenge));
    redirect(format!("{cb}?code={code}&state={}", enc(&state)))
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": format!("{error} (fake op)")})),
    )
        .into_response()
}

impl OpState {
    fn id_token(&self, nonce: Option<&str>) -> String {
        let t = &self.tweak;
        let mut claims = json!({
            "iss": t.iss.clone().unwrap_or_else(|| self.base.clone()),
            "aud": t.aud.clone().unwrap_or_else(|| CLIENT_ID.into()),
            "exp": now() + t.exp_in.unwrap_or(300),
            "iat": now(),
            "auth_time": now(),
        });
        if let Some(n) = nonce {
            claims["nonce"] = n.into();
        }
        for (k, v) in self.claims.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let alg = if t.alg_none { "none" } else { self.signing.alg() };
        let kid = t.kid.clone().unwrap_or_else(|| self.signing.kid.clone());
        let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
        let msg = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).unwrap()),
            B64.encode(serde_json::to_vec(&claims).unwrap())
        );
        if t.alg_none {
            return format!("{msg}.");
        }
        let mut sig = if t.foreign_key {
            Key::rsa("other").sign(msg.as_bytes())
        } else {
            self.signing.sign(msg.as_bytes())
        };
        if t.bad_signature {
            sig[10] ^= 1;
        }
        format!("{msg}.{}", B64.encode(sig))
    }

    fn tokens(&mut self, nonce: Option<&str>, id_token: bool, refresh: bool) -> Value {
        self.next += 1;
        let at = format!("at-{}", self.next);
        self.access_tokens.push(at.clone());
        let mut out = json!({"access_token": at, "token_type": "Bearer", "expires_in": 3600});
        if id_token {
            out["id_token"] = self.id_token(nonce).into();
        }
        if refresh {
            let rt = format!("rt-{}", self.next);
            self.refresh_tokens.insert(rt.clone(), true);
            out["refresh_token"] = rt.into();
        }
        out
    }
}

async fn token(State(s): State<S>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    let (delay, huge) = {
        let mut st = s.lock().unwrap();
        let auth = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned());
        st.token_requests.push((form.clone(), auth));
        (st.token_delay, st.huge_token_answer)
    };
    tokio::time::sleep(delay).await;
    if huge {
        return (StatusCode::OK, "x".repeat(2 * 1024 * 1024)).into_response();
    }
    let expected = format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")));
    let basic = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(expected.as_str());
    let post = form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET);
    if !(basic || post) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let mut st = s.lock().unwrap();
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some((nonce, challenge)) = st.codes.remove(form.get("code").map(String::as_str).unwrap_or("")) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let computed = B64.encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                verifier.as_bytes(),
            ));
            if computed != challenge {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            let refresh = !st.no_refresh_token;
            Json(st.tokens(Some(&nonce), true, refresh)).into_response()
        }
        Some("refresh_token") => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            if st.refresh_tokens.get(&rt) != Some(&true) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            // Rotation: the old token stops working.
            st.refresh_tokens.insert(rt, false);
            let id = !st.no_id_token_on_refresh;
            Json(st.tokens(None, id, true)).into_response()
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

async fn userinfo(State(s): State<S>, headers: HeaderMap) -> Response {
    let s = s.lock().unwrap();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !s.access_tokens.iter().any(|t| t == bearer) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(s.userinfo.clone()).into_response()
}
