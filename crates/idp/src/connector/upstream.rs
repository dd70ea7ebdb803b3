//! The HTTP client connectors use to reach an upstream identity provider: TLS roots as Dex
//! reads them (`rootCAs`: a file, a PEM string or base64 of a PEM, added to the system's),
//! a per-request deadline, and capped response bodies.
//!
//! Invariants: every call ends within the connector's timeout (the whole exchange, not just the
//! connect); a response body is read up to [`MAX_BODY`] (or the larger cap a caller names for
//! one call) and no further; redirects are not followed (an IdP's token or JWKS endpoint does
//! not redirect, and following one could leak a client secret); TLS is verified unless the
//! operator set `insecureSkipVerify`.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::DeserializeOwned;

use super::ConnectorError;

/// The largest upstream answer read (discovery, JWKS, token, userinfo, Graph pages).
pub const MAX_BODY: usize = 1024 * 1024;

/// TLS settings for an upstream.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Extra trusted roots, each a file path, a PEM string, or base64 of a PEM (Dex's `rootCAs`).
    pub root_cas: Vec<String>,
    /// Skip certificate verification (Dex's `insecureSkipVerify`; warned about at startup).
    pub insecure_skip_verify: bool,
}

/// Reads one `rootCAs` entry as Dex does: a PEM string, base64 of a PEM, or a file path.
pub fn read_root_ca(entry: &str) -> Result<Vec<u8>, String> {
    let trimmed = entry.trim();
    if trimmed.starts_with("-----BEGIN") {
        return Ok(trimmed.as_bytes().to_vec());
    }
    if let Ok(raw) = STANDARD.decode(trimmed)
        && raw.starts_with(b"-----BEGIN")
    {
        return Ok(raw);
    }
    std::fs::read(trimmed).map_err(|e| format!("cannot read root CA file {trimmed:?}: {e}"))
}

/// A client for one upstream.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// An upstream answer: status and (capped) body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body bytes (at most [`MAX_BODY`]).
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON of type `T`, or [`ConnectorError::Upstream`] naming `what`.
    pub fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, ConnectorError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ConnectorError::Upstream(format!("{what}: not the expected JSON: {e}")))
    }

    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl Upstream {
    /// A client with `tls` roots whose every call ends within `timeout`.
    pub fn new(tls: &TlsSettings, timeout: Duration) -> Result<Self, String> {
        let mut certs = Vec::new();
        for entry in &tls.root_cas {
            let pem = read_root_ca(entry)?;
            let found = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("root CA {entry:?}: {e}"))?;
            if found.is_empty() {
                return Err(format!("root CA {entry:?} holds no certificate"));
            }
            certs.extend(found);
        }
        let client = reqwest::Client::builder()
            .tls_certs_merge(certs)
            .tls_danger_accept_invalid_certs(tls.insecure_skip_verify)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("kfsec/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self { client, timeout })
    }

    /// The timeout of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The underlying client, to build requests the helpers below do not cover.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `req` and reads the answer (capped), mapping transport failures to
    /// [`ConnectorError::Timeout`] / [`ConnectorError::Unreachable`].
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Answer, ConnectorError> {
        self.send_capped(req, MAX_BODY).await
    }

    /// [`Upstream::send`] reading up to `cap` bytes (for answers known to be larger than
    /// [`MAX_BODY`], such as Graph's full directory objects).
    pub async fn send_capped(&self, req: reqwest::RequestBuilder, cap: usize) -> Result<Answer, ConnectorError> {
        let deadline = self.timeout;
        let run = async {
            let mut resp = req.send().await.map_err(transport)?;
            let status = resp.status().as_u16();
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(transport)? {
                if body.len() + chunk.len() > cap {
                    return Err(ConnectorError::Upstream(format!("answer larger than {cap} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Answer { status, body })
        };
        tokio::time::timeout(deadline, run)
            .await
            .map_err(|_| ConnectorError::Timeout)?
    }

    /// `GET url`, with an optional bearer token.
    pub async fn get(&self, url: &str, bearer: Option<&str>) -> Result<Answer, ConnectorError> {
        let mut req = self.client.get(url).header(reqwest::header::ACCEPT, "application/json");
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    /// `POST url` with a form body, and client credentials in HTTP Basic (`basic`) or the body.
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        client: Option<(&str, &str, bool)>,
    ) -> Result<Answer, ConnectorError> {
        let mut pairs: Vec<(&str, &str)> = form.to_vec();
        let mut req = self
            .client
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some((id, secret, basic)) = client {
            if basic {
                // RFC 6749 §2.3.1: both parts form-urlencoded before Basic.
                let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                req = req.basic_auth(enc(id), Some(enc(secret)));
            } else {
                pairs.push(("client_id", id));
                pairs.push(("client_secret", secret));
            }
        }
        self.send(req.form(&pairs)).await
    }

    /// `POST url` with a JSON body and a bearer token.
    pub async fn post_json(&self, url: &str, body: &serde_json::Value, bearer: &str) -> Result<Answer, ConnectorError> {
        let req = self
            .client
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .bearer_auth(bearer)
            .json(body);
        self.send(req).await
    }
}

fn transport(e: reqwest::Error) -> ConnectorError {
    if e.is_timeout() {
        ConnectorError::Timeout
    } else {
        // The error's chain names the cause (DNS, refused, TLS) without any secret.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        ConnectorError::Unreachable(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_cas_are_read_as_dex_reads_them() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(read_root_ca(pem).unwrap(), pem.trim().as_bytes());
        assert_eq!(read_root_ca(&STANDARD.encode(pem)).unwrap(), pem.as_bytes());
        assert!(
            read_root_ca("/nonexistent/ca.pem")
                .unwrap_err()
                .contains("/nonexistent/ca.pem")
        );
    }
}
