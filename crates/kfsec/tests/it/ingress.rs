//! kfsec as the authenticator of another ingress: real nginx with `auth_request` pointed at
//! `/authservice/check`, passing the identity headers on to its upstream.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// A real nginx on a free loopback port whose `server` block holds `locations`, in which
/// `{kfsec}` is kfsec's front door (`https://localhost:PORT`, verified against its CA) and `{up}`
/// the harness's echo upstream; stopped when dropped.
pub struct Nginx {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    pub async fn start(k: &Kfsec, locations: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), &k.running.ca_pem).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display().to_string();
        let locations = locations
            .replace("{kfsec}", &format!("https://localhost:{}", k.running.https_addr.port()))
            .replace("{up}", &k.upstream.to_string());
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  proxy_ssl_server_name on;
  proxy_ssl_name localhost;
  proxy_ssl_verify on;
  proxy_ssl_trusted_certificate {d}/ca.crt;
  server {{
    listen 127.0.0.1:{port};
{locations}
  }}
}}
"#
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .args(["-c", &format!("{d}/nginx.conf"), "-p", &d])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx is installed by scripts/install-test-deps.sh");
        let nginx = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        // Any answer means it is up (not following redirects: a login redirect loops through it).
        let plain = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        for _ in 0..100 {
            if plain.get(format!("{}/x", nginx.base)).send().await.is_ok() {
                return nginx;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "nginx did not start: {}",
            std::fs::read_to_string(format!("{d}/error.log")).unwrap_or_default()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_uses_the_check_endpoint() {
    let k = Kfsec::start("").await;
    let nginx = Nginx::start(
        &k,
        r#"    location / {
      auth_request /_kfsec_check;
      auth_request_set $kf_user $upstream_http_kubeflow_userid;
      auth_request_set $kf_groups $upstream_http_kubeflow_groups;
      proxy_set_header kubeflow-userid $kf_user;
      proxy_set_header kubeflow-groups $kf_groups;
      proxy_pass http://{up};
    }
    location = /_kfsec_check {
      internal;
      proxy_pass {kfsec}/authservice/check;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
    }"#,
    )
    .await;
    let base = nginx.base.clone();
    let plain = reqwest::Client::new();

    // without a session nginx refuses
    let r = plain
        .get(format!("{base}/x"))
        .header("kubeflow-userid", "forged@evil")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // with a kfsec session nginx forwards the identity kfsec vouched for
    let mut b = k.client();
    let (r, _) = b.login("/", USER, PASSWORD).await;
    assert_eq!(r.status(), 200);
    let cookie = format!("authservice_session={}", b.cookies["authservice_session"]);
    let r = plain
        .get(format!("{base}/notebooks"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["kubeflow-userid"], USER);
    assert_eq!(seen["headers"]["kubeflow-groups"], "team-a");
    drop(nginx);
    k.running.shutdown().await;
}
