//! `upstream`: the S3 store behind the gateway — one hyper client (http, or https with the
//! system roots or a CA file), requests re-signed with kfsec's own upstream credentials (SigV4
//! header auth, path style, `UNSIGNED-PAYLOAD`), bodies streamed both ways.
//!
//! Invariants: the credentials are never logged or in `Debug` output; only the headers the
//! caller hands in are sent (the client's `Authorization`, `x-amz-date`, `x-amz-content-sha256`,
//! `x-amz-security-token` and hop-by-hop headers never reach the store, since
//! [`sigv4::sign`](crate::sigv4::sign) replaces the signing headers); the path is built from the
//! decoded bucket and key with S3's one encoding, so what the policy checked is what the store
//! sees; a body that fails mid-stream aborts the upstream request (the connection is dropped, so
//! a store never completes a write the gateway refused); an unreachable store is
//! [`UpstreamError::Unreachable`] (503 to clients).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, header};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kfsec_types::Clock;
use zeroize::Zeroizing;

use crate::error::BoxError;
use crate::sigv4;

/// A request or response body streamed through the gateway.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body of `bytes`.
pub fn full(bytes: Bytes) -> Body {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Where the store is and kfsec's credentials for it.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// `http(s)://host[:port]`.
    pub endpoint: url::Url,
    /// The region the store expects signatures for.
    pub region: String,
    /// kfsec's access key id at the store.
    pub access_key: String,
    /// kfsec's secret key at the store.
    pub secret_key: Zeroizing<String>,
    /// PEM CA certificates trusted for an https endpoint besides the system roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// Why a request to the store failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The configuration is unusable (bad endpoint, CA file).
    #[error("s3 upstream configuration: {0}")]
    Config(String),
    /// The store could not be reached or the exchange failed (or the request body was aborted).
    #[error("s3 upstream unreachable: {0}")]
    Unreachable(#[source] BoxError),
    /// The request could not be built or signed.
    #[error("s3 upstream request: {0}")]
    Request(String),
}

/// One request for the store: bucket and key decoded (they are encoded here), the query as it
/// will be sent (already encoded, presign parameters removed), headers to forward, the body.
pub struct UpstreamRequest {
    /// The method.
    pub method: Method,
    /// The bucket (`None`: the service, e.g. ListBuckets).
    pub bucket: Option<String>,
    /// The object key (decoded).
    pub key: Option<String>,
    /// The encoded query string without `?` (`""` for none).
    pub query: String,
    /// Headers to forward (content type and length, checksums, range, conditions, metadata).
    pub headers: HeaderMap,
    /// The body.
    pub body: Body,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// The store, shared by the gateway and KFP's artifact endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Upstream(Arc<Inner>);

struct Inner {
    client: HttpsClient,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    region: String,
    access_key: String,
    secret_key: Zeroizing<String>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("endpoint", &format!("{}://{}", self.0.scheme, self.0.authority))
            .finish_non_exhaustive()
    }
}

fn roots(ca_pem: Option<&[u8]>) -> Result<rustls::RootCertStore, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = ca_pem {
        use rustls_pki_types::pem::PemObject as _;
        let mut n = 0;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| UpstreamError::Config(format!("caFile: not PEM certificates ({e})")))?;
            roots
                .add(cert)
                .map_err(|e| UpstreamError::Config(format!("caFile: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(UpstreamError::Config("caFile: no certificate in the file".into()));
        }
    }
    Ok(roots)
}

/// Appends `bucket` and `key` as an S3 path (`/bucket/key`, each byte outside the unreserved set
/// and `/` percent-encoded).
pub fn object_path(bucket: &str, key: Option<&str>) -> String {
    let mut path = String::with_capacity(2 + bucket.len() + key.map_or(0, str::len) * 3);
    path.push('/');
    sigv4::uri_encode(&mut path, bucket.as_bytes(), false);
    if let Some(key) = key {
        path.push('/');
        sigv4::uri_encode(&mut path, key.as_bytes(), true);
    }
    path
}

impl Upstream {
    /// A client for the store (no connection is made yet).
    pub fn new(cfg: UpstreamConfig, clock: Arc<dyn Clock>) -> Result<Self, UpstreamError> {
        let scheme = match cfg.endpoint.scheme() {
            "http" => http::uri::Scheme::HTTP,
            "https" => http::uri::Scheme::HTTPS,
            other => return Err(UpstreamError::Config(format!("endpoint scheme {other:?}"))),
        };
        let host = cfg
            .endpoint
            .host_str()
            .ok_or_else(|| UpstreamError::Config("endpoint has no host".into()))?;
        let authority: http::uri::Authority = match cfg.endpoint.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        }
        .parse()
        .map_err(|_| UpstreamError::Config("endpoint host".into()))?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::Config(e.to_string()))?
            .with_root_certificates(roots(cfg.ca_pem.as_deref())?)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(Self(Arc::new(Inner {
            client,
            scheme,
            authority,
            region: cfg.region,
            access_key: cfg.access_key,
            secret_key: cfg.secret_key,
            clock,
        })))
    }

    /// Signs `req` with kfsec's credentials and sends it; the response streams back. A body
    /// that errors mid-stream aborts the exchange ([`UpstreamError::Unreachable`]).
    pub async fn send(&self, req: UpstreamRequest) -> Result<Response<Incoming>, UpstreamError> {
        let inner = &self.0;
        let mut path_and_query = match &req.bucket {
            Some(b) => object_path(b, req.key.as_deref()),
            None => "/".to_owned(),
        };
        if !req.query.is_empty() {
            path_and_query.push('?');
            path_and_query.push_str(&req.query);
        }
        let uri = Uri::builder()
            .scheme(inner.scheme.clone())
            .authority(inner.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| UpstreamError::Request(format!("uri: {e}")))?;
        let mut headers = req.headers;
        headers.insert(
            header::HOST,
            HeaderValue::from_str(inner.authority.as_str())
                .map_err(|_| UpstreamError::Request("host header".into()))?,
        );
        let creds = sigv4::Credentials {
            access_key_id: &inner.access_key,
            secret: &inner.secret_key,
            session_token: None,
        };
        sigv4::sign(
            &req.method,
            &uri,
            &mut headers,
            &creds,
            &inner.region,
            inner.clock.now(),
            sigv4::UNSIGNED_PAYLOAD,
        )
        .map_err(|e| UpstreamError::Request(format!("signing: {}", e.code())))?;
        let mut out = Request::new(req.body);
        *out.method_mut() = req.method;
        *out.uri_mut() = uri;
        *out.headers_mut() = headers;
        inner
            .client
            .request(out)
            .await
            .map_err(|e| UpstreamError::Unreachable(Box::new(e)))
    }

    /// `GET /bucket/key` (with `Range` when given) — for KFP's artifact endpoint.
    pub async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<&str>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut headers = HeaderMap::new();
        if let Some(r) = range {
            headers.insert(
                header::RANGE,
                HeaderValue::from_str(r).map_err(|_| UpstreamError::Request("range header".into()))?,
            );
        }
        self.send(UpstreamRequest {
            method: Method::GET,
            bucket: Some(bucket.to_owned()),
            key: Some(key.to_owned()),
            query: String::new(),
            headers,
            body: empty(),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_encode_keys_once_and_keep_slashes() {
        assert_eq!(object_path("b", Some("a b/c+d/é")), "/b/a%20b/c%2Bd/%C3%A9");
        assert_eq!(object_path("b", None), "/b");
        assert_eq!(object_path("b", Some("x/%2F")), "/b/x/%252F");
    }

    #[test]
    fn debug_output_carries_no_credentials() {
        let cfg = UpstreamConfig {
            endpoint: url::Url::parse("http://127.0.0.1:5000").unwrap(),
            region: "us-east-1".into(),
            access_key: "AKIDSECRETISH".into(),
            secret_key: Zeroizing::new("very-secret".into()),
            ca_pem: None,
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("very-secret") && !shown.contains("AKIDSECRETISH"));
        let up = Upstream::new(cfg, Arc::new(kfsec_types::SystemClock)).unwrap();
        let shown = format!("{up:?}");
        assert!(
            !shown.contains("very-secret") && !shown.contains("AKIDSECRETISH"),
            "{shown}"
        );
    }
}
