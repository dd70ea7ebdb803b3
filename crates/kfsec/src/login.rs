//! `kfsec login`: the OAuth2 device flow against a kfsec front door, then a kubeconfig for the
//! user with their ID token.
//!
//! Invariants: the server is trusted only through the given CA bundle (no "insecure" switch);
//! the kubeconfig holding the token is written with mode 0600.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// POSTs a form over HTTPS trusting only `ca_pem`; returns status and body.
async fn post_form(url: &url::Url, ca_pem: &str, form: &[(&str, &str)]) -> Result<(u16, Vec<u8>)> {
    let host = url.host_str().context("the server URL has no host")?.to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let mut cfg = kfsec_pki::client_config_trusting(ca_pem)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let req = http::Request::post(path)
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(bytes::Bytes::from(body)))?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, body))
}

#[derive(Deserialize)]
struct DeviceCode {
    device_code: String,
    user_code: String,
    verification_uri_complete: String,
    #[serde(default = "five")]
    interval: u64,
    expires_in: u64,
}

fn five() -> u64 {
    5
}

#[derive(Deserialize)]
struct Tokens {
    id_token: String,
}

#[derive(Deserialize)]
struct OAuthErr {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Runs the device flow and writes a kubeconfig for the logged-in user.
pub async fn login(server: &str, ca_file: &Path, kubeconfig: &Path) -> Result<()> {
    let ca_pem = std::fs::read_to_string(ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
    let base =
        url::Url::parse(server.trim_end_matches('/')).context("--server must be a URL like https://localhost:8443")?;
    if base.scheme() != "https" {
        bail!("--server must be an https URL");
    }
    let dex = base.join("/dex/")?;
    let (status, body) = post_form(
        &dex.join("device/code")?,
        &ca_pem,
        &[("client_id", "kfsec-cli"), ("scope", "openid profile email groups")],
    )
    .await?;
    if status != 200 {
        bail!(
            "the server refused the device login ({status}): {}",
            String::from_utf8_lossy(&body)
        );
    }
    let dc: DeviceCode = serde_json::from_slice(&body).context("reading the device code")?;
    say!(
        "To log in, open {} and confirm the code {}",
        dc.verification_uri_complete,
        dc.user_code
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(dc.expires_in);
    let mut interval = Duration::from_secs(dc.interval.max(1));
    let token_url = dex.join("token")?;
    let tokens = loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() > deadline {
            bail!("the code expired before the login finished");
        }
        let (status, body) = post_form(
            &token_url,
            &ca_pem,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &dc.device_code),
                ("client_id", "kfsec-cli"),
            ],
        )
        .await?;
        if status == 200 {
            break serde_json::from_slice::<Tokens>(&body).context("reading the tokens")?;
        }
        let err: OAuthErr = serde_json::from_slice(&body).with_context(|| format!("unexpected answer {status}"))?;
        match serde_json::from_value(serde_json::Value::String(err.error.clone())) {
            Ok(kfsec_idp::OAuthCode::AuthorizationPending) => {}
            Ok(kfsec_idp::OAuthCode::SlowDown) => interval += Duration::from_secs(5),
            _ => bail!("login failed: {} {}", err.error, err.error_description),
        }
    };
    let ca = base64::engine::general_purpose::STANDARD.encode(&ca_pem);
    let text = kfsec_types::kubeconfig::BearerKubeconfig {
        server: base.as_str().trim_end_matches('/'),
        ca_data: Some(&ca),
        namespace: None,
        token: &tokens.id_token,
    }
    .render();
    kfsec_pki::write_private_file(kubeconfig, text.as_bytes())?;
    say!("Logged in. Wrote {}", kubeconfig.display());
    Ok(())
}
