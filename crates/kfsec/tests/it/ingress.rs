//! kfsec as the authenticator of another ingress: real nginx with `auth_request` pointed at
//! `/authservice/check`, passing the identity headers on to its upstream.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_uses_the_check_endpoint() {
    let k = Kfsec::start("").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), &k.running.ca_pem).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /_kfsec_check;
      auth_request_set $kf_user $upstream_http_kubeflow_userid;
      auth_request_set $kf_groups $upstream_http_kubeflow_groups;
      proxy_set_header kubeflow-userid $kf_user;
      proxy_set_header kubeflow-groups $kf_groups;
      proxy_pass http://{up};
    }}
    location = /_kfsec_check {{
      internal;
      proxy_pass https://localhost:{kp}/authservice/check;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_ssl_server_name on;
      proxy_ssl_name localhost;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {d}/ca.crt;
    }}
  }}
}}
"#,
        d = dir.path().display(),
        up = k.upstream,
        kp = k.running.https_addr.port(),
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let mut nginx = Command::new("nginx")
        .args([
            "-c",
            &dir.path().join("nginx.conf").display().to_string(),
            "-p",
            &dir.path().display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nginx is installed by scripts/install-test-deps.sh");
    let base = format!("http://127.0.0.1:{port}");
    let plain = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if plain.get(format!("{base}/x")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        up,
        "nginx did not start: {}",
        std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
    );

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
    let _ = nginx.kill();
    let _ = nginx.wait();
    k.running.shutdown().await;
}
