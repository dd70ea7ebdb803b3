//! Test harness: an in-process kfsec with a temp data dir and an echo upstream, plus a small
//! cookie-keeping HTTPS client that never follows redirects (each hop is asserted).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::routing::any;
use kfsec_server::config::{Env, Overrides, parse, validate};
use kfsec_server::{Running, start_with};
use kfsec_types::{Clock, ManualClock, SystemClock};
use reqwest::header::{HeaderMap, HeaderValue};

pub const USER: &str = "test.user1@example.org";
pub const PASSWORD: &str = "correct horse battery";
/// bcrypt (cost 12, `$2y$`) of [`PASSWORD`], as Dex configs write it.
pub const HASH: &str = "$2y$12$99qz3xSNm5CHLxYv7OXd4.sTbzXEjUxzy6oDsZF10Rm5hM.WhqXPa";

struct NoEnv;
impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

/// An ID token of `user` from the password grant of `rp-test` (scopes openid email groups
/// profile): a bearer token for the front door when `rp-test` is in `bearerAudiences` and
/// `oauth2.passwordConnector` is set.
pub async fn password_id_token(k: &Kfsec, user: &str, password: &str) -> String {
    let (status, t) = rp_token(
        k,
        vec![
            ("grant_type", "password".to_owned()),
            ("username", user.to_owned()),
            ("password", password.to_owned()),
            ("scope", "openid email groups profile".to_owned()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{t}");
    t["id_token"].as_str().unwrap_or_else(|| panic!("{t}")).to_owned()
}

/// The test relying party `rp-test` at `k`'s `/token` (HTTP Basic client authentication), reached
/// at the listener: the status and the JSON answer.
pub async fn rp_token(k: &Kfsec, form: Vec<(&'static str, String)>) -> (u16, serde_json::Value) {
    // At the listener (the issuer's host may be a name tests do not resolve).
    let path = url::Url::parse(&k.running.issuer)
        .unwrap()
        .path()
        .trim_end_matches('/')
        .to_owned();
    let r = http_client(&k.running.ca_pem)
        .post(format!("{}{path}/token", k.base))
        .basic_auth("rp-test", Some("rp-secret-0123456789"))
        .form(&form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The claims of a JWT kfsec signed (its signatures are tested elsewhere).
pub fn jwt_claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// The claims of a token answer's ID token.
pub fn id_token_claims(t: &serde_json::Value) -> serde_json::Value {
    jwt_claims(t["id_token"].as_str().unwrap())
}

/// A loopback port free at the time of asking, for a server that binds it later. Taken from
/// below the kernel's ephemeral range (32768-60999), which every `bind(:0)` and outgoing
/// connection of the parallel tests draws from, so nothing else takes it in between (drawing
/// from the ephemeral range itself made a test fail with AddrInUse now and then).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Each test process starts at its own offset; ports are handed out once per process.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (std::process::id() % 600) as u16 * 20;
    loop {
        let port = 20_000 + (offset + NEXT.fetch_add(1, Ordering::Relaxed) % 12_000) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An upstream that reads the request's body and answers with the request it saw, as JSON
/// (`body_bytes`: the body's length).
pub async fn echo_upstream() -> SocketAddr {
    let app = Router::new().fallback(any(|req: Request| async move {
        let (parts, body) = req.into_parts();
        let headers: BTreeMap<String, String> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body_bytes = axum::body::to_bytes(body, usize::MAX).await.map(|b| b.len()).ok();
        axum::Json(serde_json::json!({
            "path": parts.uri.path_and_query().map(|p| p.to_string()),
            "method": parts.method.as_str(),
            "headers": headers,
            "body_bytes": body_bytes,
        }))
    }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

pub struct Kfsec {
    pub running: Running,
    pub base: String,
    pub _dir: tempfile::TempDir,
    #[allow(dead_code)]
    pub upstream: SocketAddr,
    pub clock: Option<Arc<ManualClock>>,
}

impl Kfsec {
    /// Boots kfsec with `extra` YAML appended to a base config (one static user, a route
    /// `/app/` to an echo upstream and a public `/open/` route).
    pub async fn start(extra: &str) -> Self {
        Self::start_inner(extra, None, tempfile::tempdir().unwrap()).await
    }

    /// Like [`start`], on a chosen front-door port (so its issuer, `https://localhost:PORT/dex`,
    /// is known before it starts: an upstream needs its callback URL).
    pub async fn start_on(port: u16, extra: &str) -> Self {
        Self::start_full(extra, None, tempfile::tempdir().unwrap(), &format!("127.0.0.1:{port}")).await
    }

    /// Like [`start`], on an existing data directory (a restart).
    pub async fn start_in(dir: tempfile::TempDir, extra: &str) -> Self {
        Self::start_inner(extra, None, dir).await
    }

    /// Stops the server and hands back its data directory.
    pub async fn stop(self) -> tempfile::TempDir {
        self.running.shutdown().await;
        self._dir
    }

    /// Like [`start`], with a manual clock.
    pub async fn start_with_clock(extra: &str) -> Self {
        Self::start_inner(
            extra,
            Some(ManualClock::new(SystemClock.now())),
            tempfile::tempdir().unwrap(),
        )
        .await
    }

    async fn start_inner(extra: &str, clock: Option<Arc<ManualClock>>, dir: tempfile::TempDir) -> Self {
        Self::start_full(extra, clock, dir, "127.0.0.1:0").await
    }

    async fn start_full(
        extra: &str,
        clock: Option<Arc<ManualClock>>,
        dir: tempfile::TempDir,
        https_addr: &str,
    ) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let upstream = echo_upstream().await;
        let yaml = format!(
            "apiVersion: kfsec/v1\nstaticPasswords:\n- email: {USER}\n  hash: \"{HASH}\"\n  username: user1\n  userID: \"15841185641784\"\n  groups: [team-a]\nstaticClients:\n- id: rp-test\n  secret: rp-secret-0123456789\n  name: RP test\n  redirectURIs: [\"https://rp.example/cb\"]\nroutes:\n- prefix: /app/\n  upstream: http://{upstream}\n- prefix: /open/\n  upstream: http://{upstream}\n  public: true\n{extra}"
        );
        let file = parse(Path::new("test.yaml"), &yaml).unwrap();
        let o = Overrides {
            data_dir: Some(dir.path().to_path_buf()),
            https_addr: Some(https_addr.into()),
            admin_addr: Some("127.0.0.1:0".into()),
            webhook_addr: Some("127.0.0.1:0".into()),
        };
        let cfg = validate(file, &o, &NoEnv).unwrap();
        let c: Arc<dyn Clock> = match &clock {
            Some(m) => m.clone(),
            None => Arc::new(SystemClock),
        };
        let running = start_with(cfg, c, Arc::new(kfsec_pki::OsRng)).await.unwrap();
        let base = format!("https://localhost:{}", running.https_addr.port());
        Self {
            running,
            base,
            _dir: dir,
            upstream,
            clock,
        }
    }

    /// Adds a local user (no groups).
    pub async fn add_user(&self, email: &str, password: &str) {
        self.running
            .idp
            .users()
            .add(self.running.idp.rng(), email, None, vec![], password)
            .await
            .unwrap();
    }

    pub fn client(&self) -> Browser {
        Browser::new(&self.running.ca_pem, &self.base)
    }
}

/// A cookie-keeping HTTPS client that does not follow redirects.
pub struct Browser {
    pub http: reqwest::Client,
    pub base: String,
    pub cookies: BTreeMap<String, String>,
}

/// Where the API stores an object, for tests that plant raw records (legacy data, corrupt
/// records): the key schema is the API's own, so it is asked, never spelled.
pub fn object_key(group: &str, version: &str, plural: &str, namespace: &str, name: &str) -> String {
    kfsec_api::ApiServer::resource(group, version, plural)
        .expect("a served resource")
        .key(namespace, name)
}

pub fn http_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

impl Browser {
    pub fn new(ca_pem: &str, base: &str) -> Self {
        Self {
            http: http_client(ca_pem),
            base: base.to_owned(),
            cookies: BTreeMap::new(),
        }
    }

    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.base)
        }
    }

    fn cookie_header(&self) -> Option<HeaderValue> {
        if self.cookies.is_empty() {
            return None;
        }
        let s: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        HeaderValue::from_str(&s.join("; ")).ok()
    }

    pub fn absorb(&mut self, headers: &HeaderMap) {
        for sc in headers.get_all(reqwest::header::SET_COOKIE) {
            let sc = sc.to_str().unwrap();
            let first = sc.split(';').next().unwrap();
            let (k, v) = first.split_once('=').unwrap();
            if v.is_empty() || sc.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
    }

    pub async fn send(&mut self, req: reqwest::RequestBuilder) -> reqwest::Response {
        let req = match self.cookie_header() {
            Some(c) => req.header(reqwest::header::COOKIE, c),
            None => req,
        };
        let resp = req.send().await.unwrap();
        self.absorb(resp.headers());
        resp
    }

    pub async fn get(&mut self, path: &str) -> reqwest::Response {
        let req = self.http.get(self.url(path));
        self.send(req).await
    }

    pub async fn post_form(&mut self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let req = self.http.post(self.url(path)).form(form);
        self.send(req).await
    }

    /// Follows redirects from `path` until a non-redirect, returning it and its URL.
    pub async fn follow(&mut self, path: &str) -> (reqwest::Response, String) {
        let mut url = self.url(path);
        for _ in 0..10 {
            let resp = self.get(&url).await;
            if !resp.status().is_redirection() {
                return (resp, url);
            }
            url = self.url(location(&resp));
        }
        panic!("redirect loop from {path}");
    }

    /// Goes from a protected `path` through the login form with `password`; returns the final
    /// response after the callback redirect chain (or the login form on failure) and its URL.
    pub async fn login(&mut self, path: &str, user: &str, password: &str) -> (reqwest::Response, String) {
        let (form, form_url) = self.follow(path).await;
        assert_eq!(form.status(), 200, "expected the login form at {form_url}");
        assert!(form_url.contains("/dex/auth/local/login"), "{form_url}");
        let resp = self
            .post_form(&form_url, &[("login", user), ("password", password)])
            .await;
        if resp.status() != 303 {
            return (resp, form_url);
        }
        let next = location(&resp).to_owned();
        self.follow(&next).await
    }
}

/// An admin call (`kfsec user ...`) on a running kfsec.
pub async fn admin(k: &Kfsec, req: &kfsec_server::admin::AdminRequest) -> kfsec_server::admin::AdminResponse {
    kfsec_server::admin::call(k._dir.path(), req).await.unwrap().unwrap()
}

/// The admin listener's `/metrics` text.
pub async fn metrics_text(k: &Kfsec) -> String {
    reqwest::get(format!("http://{}/metrics", k.running.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the admin listener's metric `series`, a name with its labels (0 when absent).
pub async fn metric(k: &Kfsec, series: &str) -> f64 {
    let text = metrics_text(k).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

pub fn location(resp: &reqwest::Response) -> &str {
    resp.headers()
        .get(reqwest::header::LOCATION)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_default()
}

pub fn query_param(url: &str, name: &str) -> Option<String> {
    let full = if url.starts_with('/') {
        format!("https://x{url}")
    } else {
        url.to_owned()
    };
    url::Url::parse(&full)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Claims for a hand-made token (signed by a test with the server's own key).
pub fn test_claims(k: &Kfsec, iss: &str, aud: &str, exp_from_now: i64) -> kfsec_idp::Claims {
    let now = match &k.clock {
        Some(c) => c.now().as_secs(),
        None => SystemClock.now().as_secs(),
    };
    kfsec_idp::Claims {
        iss: iss.into(),
        sub: "x".into(),
        aud: vec![aud.into()],
        exp: now.saturating_add_signed(exp_from_now),
        iat: now,
        nonce: None,
        at_hash: None,
        azp: None,
        nbf: None,
        iat_ms: None,
        user: None,
        email: Some(USER.into()),
        email_verified: Some(true),
        groups: Some(vec!["system:masters".into()]),
        name: None,
        preferred_username: None,
        federated_claims: None,
    }
}

/// Submits [`USER`]'s password on the login form at `form_url` and approves the request if the
/// approval screen follows; returns where the IdP sends the browser next.
pub async fn login_and_approve(b: &mut Browser, form_url: &str) -> String {
    let r = b.post_form(form_url, &[("login", USER), ("password", PASSWORD)]).await;
    let mut next = location(&r).to_owned();
    if next.starts_with("/dex/approval") {
        let req = query_param(&next, "req").unwrap();
        let r = b.post_form(&next, &[("req", &req), ("approval", "approve")]).await;
        next = location(&r).to_owned();
    }
    next
}

/// Polls `f` every 100 ms for up to 10 s.
pub(crate) async fn eventually<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}
