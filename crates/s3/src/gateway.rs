//! `gateway`: the S3 gateway's HTTP service — for each request: address (path style always,
//! virtual-host style `<bucket>.<domain>` when a domain is set), verify SigV4 (`sigv4`) against
//! the key (`keys::KeyLookup`), classify the operation and authorize it by the key's namespace
//! (`policy`), check the body as it streams (`chunked`, `checksum`), re-sign to the upstream
//! (`upstream`) and stream the answer back, filtering listings broader than the policy
//! (`listing`). One audit Event per request (user `s3:<namespace>`, objectRef
//! `objects`/`buckets` of API group `s3.kfsec.io`).
//!
//! Invariants: nothing reaches the upstream before the signature verified against a live key
//! and the policy allowed the bucket and key (the copy source of a copy too); only an
//! allow-list of headers is forwarded, and the client's credentials never are; bucket
//! administration (create, delete, policy, ACL, CORS, lifecycle…) is refused with
//! `AccessDenied`; a body whose checksum or signature fails aborts the upstream request before
//! its last byte is sent, so the store never completes the write; every refusal is S3 XML from
//! `error`, and upstream failures are 503 `ServiceUnavailable` with the cause only in the log.
//! The store acts on what was checked, never on a second reading of the client's input: each
//! query parameter and forwarded header once (a repeat is refused, as stores disagree on which
//! copy wins), the copy source rebuilt from its checked bucket, key and versionId, the
//! DeleteObjects list re-serialized from the strict parse (with its own `Content-MD5`), object
//! subresources from an allow-list; store-internal metadata (`x-amz-meta-snowball-*`,
//! `x-amz-meta-minio-*`, `x-amz-snowball-*`) is refused; answers carry `nosniff` and
//! `Content-Security-Policy: sandbox`.

use std::sync::Arc;

use axum::extract::State;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body as HttpBody;
use http_body_util::BodyExt as _;
use kfsec_audit::event::ObjectRef;
use kfsec_audit::request::{Begin, new_audit_id};
use kfsec_audit::{Auditor, RequestAudit};
use kfsec_types::identity::UserInfo;
use kfsec_types::{Clock, Rng};

use crate::error::{BoxError, S3Error};
use crate::keys::KeyLookup;
use crate::listing;
use crate::policy::{ListScope, Need, Policy};
use crate::sigv4::{self, Auth, RequestParts};
use crate::upstream::{self, Upstream, UpstreamRequest};

/// How long a body-less request waits for the upstream store's answer head.
pub const UPSTREAM_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The audit API group of S3 requests.
pub const AUDIT_GROUP: &str = "s3.kfsec.io";

/// What the gateway is configured with.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The region clients sign for.
    pub region: String,
    /// Base domain for virtual-host-style requests (lower case, no trailing dot).
    pub domain: Option<String>,
    /// Who reaches what.
    pub policy: Policy,
}

/// Counts what the gateway decides and answers (the server maps it to its metrics).
pub trait Observer: Send + Sync + 'static {
    /// One authorization decision.
    fn decision(&self, allowed: bool);
    /// One answered request: status and seconds taken until the response head.
    fn request(&self, code: u16, seconds: f64);
}

/// The gateway service.
pub struct Gateway {
    cfg: GatewayConfig,
    keys: Arc<dyn KeyLookup>,
    upstream: Upstream,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    auditor: Auditor,
    observer: Option<Arc<dyn Observer>>,
    peer: Option<PeerOf>,
    markers: listing::MarkerSeal,
}

/// Reads the client's address from a request's extensions (the listener puts it there).
pub type PeerOf = fn(&http::Extensions) -> Option<std::net::IpAddr>;

/// What a request does, as the policy and the audit log see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// An object read (GetObject, HeadObject, ListParts, GetObjectTagging).
    ReadObject,
    /// An object write (PutObject, UploadPart, multipart create/complete/abort, DeleteObject,
    /// tagging), with the copy source `(bucket, key)` of a copy.
    WriteObject {
        /// `x-amz-copy-source`, decoded.
        copy_source: Option<(String, String)>,
    },
    /// ListObjects (V1/V2) or ListObjectVersions of `prefix`.
    List {
        /// The listed prefix.
        prefix: String,
    },
    /// ListMultipartUploads of `prefix`.
    ListUploads {
        /// The listed prefix.
        prefix: String,
    },
    /// HeadBucket, GetBucketLocation.
    BucketInfo,
    /// DeleteObjects (`POST ?delete`): every key in the body must be writable.
    DeleteObjects,
    /// Anything else (bucket administration, ACLs, policies, ListBuckets): refused.
    Refused,
}

impl Operation {
    fn verb(&self, method: &Method) -> &'static str {
        match self {
            Self::ReadObject | Self::BucketInfo => "get",
            Self::List { .. } | Self::ListUploads { .. } => "list",
            Self::WriteObject { .. } if method == Method::DELETE => "delete",
            Self::DeleteObjects => "delete",
            Self::WriteObject { .. } => "create",
            Self::Refused => match *method {
                Method::GET | Method::HEAD => "get",
                Method::DELETE => "delete",
                _ => "create",
            },
        }
    }
}

/// Query parameters an object request may carry (besides the presign ones): anything else
/// (`acl`, `retention`, `legal-hold`, `restore`, `select`, a store's own extensions…) makes
/// the request refused.
const OBJECT_PARAMS: [&str; 16] = [
    "versionId",
    "partNumber",
    "uploadId",
    "uploads",
    "tagging",
    "attributes",
    "x-id",
    "max-parts",
    "part-number-marker",
    "encoding-type",
    "response-content-type",
    "response-content-language",
    "response-expires",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
];

/// Headers forwarded to the upstream as the client sent them (plus `x-amz-meta-*`).
const FORWARDED: [&str; 22] = [
    "content-type",
    "content-md5",
    "content-disposition",
    "content-language",
    "cache-control",
    "expires",
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "x-amz-copy-source",
    "x-amz-copy-source-range",
    "x-amz-copy-source-if-match",
    "x-amz-copy-source-if-none-match",
    "x-amz-copy-source-if-modified-since",
    "x-amz-copy-source-if-unmodified-since",
    "x-amz-metadata-directive",
    "x-amz-tagging",
    "x-amz-tagging-directive",
    "x-amz-storage-class",
    "x-amz-server-side-encryption",
];

/// Presigned-URL parameters, never forwarded.
const PRESIGN_PARAMS: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// `%XX`-decoded UTF-8 text (`None` for a bad escape or invalid UTF-8).
fn percent_decoded(s: &str) -> Option<String> {
    sigv4::percent_decode(s.as_bytes()).and_then(|b| String::from_utf8(b).ok())
}

/// The decoded query: (name, value, had `=`), in order.
struct Query(Vec<(String, String, bool)>);

impl Query {
    fn parse(raw: &str) -> Result<Self, S3Error> {
        let mut out = Vec::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (n, v, eq) = match pair.split_once('=') {
                Some((n, v)) => (n, v, true),
                None => (pair, "", false),
            };
            let dec = |s: &str| percent_decoded(s).ok_or(S3Error::InvalidUri);
            let n = dec(n)?;
            // One value per name: stores disagree on which of several they use.
            if out.iter().any(|(m, _, _): &(String, String, bool)| *m == n) {
                return Err(S3Error::InvalidArgument(
                    "A query parameter may be given only once".into(),
                ));
            }
            out.push((n, dec(v)?, eq));
        }
        Ok(Self(out))
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _, _)| n == name).map(|(_, v, _)| v.as_str())
    }
    /// The query for the upstream: presign parameters removed, re-encoded.
    fn upstream(&self) -> String {
        let mut out = String::new();
        for (n, v, eq) in &self.0 {
            if PRESIGN_PARAMS.contains(&n.as_str()) {
                continue;
            }
            if !out.is_empty() {
                out.push('&');
            }
            sigv4::uri_encode(&mut out, n.as_bytes(), false);
            if *eq {
                out.push('=');
                sigv4::uri_encode(&mut out, v.as_bytes(), false);
            }
        }
        out
    }
}

/// Which bucket and key a request names: `(bucket, key)`; `bucket` is `None` for the service.
fn address(
    host: Option<&str>,
    raw_path: &str,
    domain: Option<&str>,
) -> Result<(Option<String>, Option<String>), S3Error> {
    let decode = |s: &str| percent_decoded(s).ok_or(S3Error::InvalidUri);
    let path = raw_path.strip_prefix('/').ok_or(S3Error::InvalidUri)?;
    let host = host.map(|h| {
        let h = h.trim_end_matches('.');
        // Strip a port (not inside an IPv6 literal).
        let h = match h.rfind(':') {
            Some(i) if !h.ends_with(']') && h[..i].find(':').is_none() => &h[..i],
            _ => h,
        };
        h.to_ascii_lowercase()
    });
    if let (Some(domain), Some(host)) = (domain, host.as_deref())
        && let Some(bucket) = host.strip_suffix(domain).and_then(|b| b.strip_suffix('.'))
        && !bucket.is_empty()
    {
        let key = decode(path)?;
        return Ok((Some(bucket.to_owned()), (!key.is_empty()).then_some(key)));
    }
    if path.is_empty() {
        return Ok((None, None));
    }
    let (bucket, key) = match path.split_once('/') {
        Some((b, k)) => (decode(b)?, decode(k)?),
        None => (decode(path)?, String::new()),
    };
    Ok((Some(bucket), (!key.is_empty()).then_some(key)))
}

fn bucket_name_ok(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
}

/// `x-amz-copy-source`, checked: `(bucket, key, versionId)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CopySource {
    bucket: String,
    key: String,
    version_id: Option<String>,
}

impl CopySource {
    /// The header the upstream gets: rebuilt from the checked parts, URI-encoded, never the
    /// client's string.
    fn header(&self) -> Option<HeaderValue> {
        let mut out = String::from("/");
        sigv4::uri_encode(&mut out, self.bucket.as_bytes(), false);
        out.push('/');
        sigv4::uri_encode(&mut out, self.key.as_bytes(), true);
        if let Some(v) = &self.version_id {
            out.push_str("?versionId=");
            sigv4::uri_encode(&mut out, v.as_bytes(), false);
        }
        HeaderValue::from_str(&out).ok()
    }
}

/// `x-amz-copy-source`: `[/]bucket/key[?versionId=…]`, URL-encoded; anything else after the
/// `?` is refused.
fn copy_source(v: &HeaderValue) -> Result<CopySource, S3Error> {
    let bad = || {
        S3Error::InvalidArgument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey".into())
    };
    let s = v.to_str().map_err(|_| bad())?;
    let (s, query) = match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    };
    let s = s.strip_prefix('/').unwrap_or(s);
    let (b, k) = s.split_once('/').ok_or_else(bad)?;
    let dec = |x: &str| percent_decoded(x).ok_or_else(bad);
    let (b, k) = (dec(b)?, dec(k)?);
    if b.is_empty() || k.is_empty() {
        return Err(bad());
    }
    let version_id = match query {
        None => None,
        Some(q) => Some(dec(q.strip_prefix("versionId=").ok_or_else(bad)?)?),
    };
    Ok(CopySource {
        bucket: b,
        key: k,
        version_id,
    })
}

/// Refuses headers that make a store act beyond the checked request: MinIO's and Snowball's
/// extraction and internal metadata (`x-amz-meta-snowball-*`, `x-amz-meta-minio-*`,
/// `x-amz-snowball-*`: a tar body unpacked under its entries' own names), and a repeat of any
/// header the gateway forwards (stores disagree on whether the first or the last counts).
fn check_headers(headers: &HeaderMap) -> Result<(), S3Error> {
    for name in headers.keys() {
        let n = name.as_str();
        if n.starts_with("x-amz-meta-snowball-")
            || n.starts_with("x-amz-meta-minio-")
            || n.starts_with("x-amz-snowball-")
        {
            return Err(S3Error::InvalidArgument(
                "Store-internal metadata headers are not accepted".into(),
            ));
        }
        let forwarded = FORWARDED.contains(&n)
            || n.starts_with("x-amz-meta-")
            || n.starts_with("x-amz-checksum-")
            || n.starts_with("x-amz-copy-source")
            || n == "content-encoding";
        if forwarded && headers.get_all(name).iter().nth(1).is_some() {
            return Err(S3Error::InvalidArgument(
                format!("The header {n} may be given only once").into(),
            ));
        }
    }
    Ok(())
}

/// Classifies a request on `bucket` (and `key`).
fn classify(method: &Method, key: Option<&str>, q: &Query, headers: &HeaderMap) -> Result<Operation, S3Error> {
    if key.is_some() {
        if q.0
            .iter()
            .any(|(n, _, _)| !OBJECT_PARAMS.contains(&n.as_str()) && !PRESIGN_PARAMS.contains(&n.as_str()))
        {
            return Ok(Operation::Refused);
        }
        return Ok(match *method {
            Method::GET | Method::HEAD => Operation::ReadObject,
            Method::PUT | Method::POST | Method::DELETE => Operation::WriteObject {
                copy_source: match headers.get("x-amz-copy-source") {
                    Some(v) if *method == Method::PUT => copy_source(v).map(|c| Some((c.bucket, c.key)))?,
                    _ => None,
                },
            },
            _ => Operation::Refused,
        });
    }
    let prefix = || q.get("prefix").unwrap_or_default().to_owned();
    // Bucket-level: listings and information only.
    let subresources: Vec<&str> =
        q.0.iter()
            .map(|(n, _, _)| n.as_str())
            .filter(|n| {
                !PRESIGN_PARAMS.contains(n)
                    && !matches!(
                        *n,
                        "prefix"
                            | "delimiter"
                            | "marker"
                            | "max-keys"
                            | "encoding-type"
                            | "list-type"
                            | "continuation-token"
                            | "fetch-owner"
                            | "start-after"
                            | "key-marker"
                            | "upload-id-marker"
                            | "max-uploads"
                            | "version-id-marker"
                            | "x-id"
                    )
            })
            .collect();
    Ok(match (method.clone(), subresources.as_slice()) {
        (Method::GET, []) | (Method::GET, ["versions"]) => Operation::List { prefix: prefix() },
        (Method::GET, ["uploads"]) => Operation::ListUploads { prefix: prefix() },
        (Method::GET, ["location"]) | (Method::HEAD, []) => Operation::BucketInfo,
        (Method::POST, ["delete"]) => Operation::DeleteObjects,
        _ => Operation::Refused,
    })
}

/// Hop-by-hop and framing headers never copied from the upstream's answer.
fn response_header_kept(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "te" | "trailer"
    )
}

/// A request's failure recorded for the body stream: the first error a body check raised, so
/// the handler can answer it instead of a generic upstream failure.
#[derive(Clone, Default)]
pub struct BodyFailure(Arc<parking_lot_free::Slot>);

mod parking_lot_free {
    use std::sync::Mutex;

    use crate::error::S3Error;

    /// One error slot.
    #[derive(Default)]
    pub struct Slot(Mutex<Option<S3Error>>);

    impl Slot {
        pub fn set(&self, e: S3Error) {
            let mut g = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if g.is_none() {
                *g = Some(e);
            }
        }
        pub fn take(&self) -> Option<S3Error> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
        }
    }
}

impl BodyFailure {
    /// Records `e` (the first one wins).
    pub fn set(&self, e: S3Error) {
        self.0.set(e);
    }
    /// The recorded error, if any.
    pub fn take(&self) -> Option<S3Error> {
        self.0.take()
    }
}

/// Everything decided about one request before it is forwarded.
struct Decided {
    namespace: String,
    bucket: String,
    key: Option<String>,
    op: Operation,
    auth: Box<sigv4::Verified>,
}

type Resp = Response<axum::body::Body>;

fn s3_response(e: &S3Error, method: &Method, resource: &str, request_id: &str) -> Resp {
    e.to_response(method, resource, request_id).map(axum::body::Body::new)
}

impl Gateway {
    /// A gateway over `keys` and `upstream`.
    pub fn new(
        cfg: GatewayConfig,
        keys: Arc<dyn KeyLookup>,
        upstream: Upstream,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
    ) -> Self {
        let mut secret = [0u8; 32];
        rng.fill(&mut secret);
        Self {
            markers: listing::MarkerSeal::new(&secret),
            cfg,
            keys,
            upstream,
            clock,
            rng,
            auditor: Auditor::disabled(),
            observer: None,
            peer: None,
        }
    }

    /// Records one audit Event per request through `auditor`.
    pub fn with_auditor(mut self, auditor: Auditor) -> Self {
        self.auditor = auditor;
        self
    }

    /// Seals the paging markers of filtered listings with a key derived from `secret` (default:
    /// a random key, so markers open only on this process; replicas sharing a secret open each
    /// other's).
    pub fn with_marker_secret(mut self, secret: &[u8]) -> Self {
        self.markers = listing::MarkerSeal::new(secret);
        self
    }

    /// Reads the client's address (audit `sourceIPs`) with `peer`.
    pub fn with_peer(mut self, peer: PeerOf) -> Self {
        self.peer = Some(peer);
        self
    }

    /// Reports decisions and answers to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The upstream this gateway forwards to (shared with KFP's artifact endpoint).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The service: every method and path.
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(handle).with_state(self)
    }

    fn request_id(&self) -> String {
        let mut b = [0u8; 8];
        self.rng.fill(&mut b);
        kfsec_types::hex::encode(&b).to_ascii_uppercase()
    }

    fn begin_audit(&self, req: &Request<axum::body::Body>) -> Option<RequestAudit> {
        if !self.auditor.enabled() {
            return None;
        }
        let peer = self.peer.and_then(|f| f(req.extensions())).map(|ip| ip.to_string());
        RequestAudit::begin(
            &self.auditor,
            &self.clock,
            Begin {
                audit_id: new_audit_id(self.rng.as_ref()).into(),
                method: req.method().clone(),
                request_uri: kfsec_audit::request::redacted_uri(
                    req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
                ),
                source_ips: peer.into_iter().collect(),
                user_agent: req
                    .headers()
                    .get(header::USER_AGENT)
                    .map(|v| kfsec_audit::request::user_agent(v.as_bytes())),
            },
        )
    }

    /// Authenticates and authorizes; the error is the S3 refusal.
    async fn decide(&self, parts: &http::request::Parts, audit: Option<&RequestAudit>) -> Result<Decided, S3Error> {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(http::uri::Authority::as_str));
        let (bucket, key) = address(host, parts.uri.path(), self.cfg.domain.as_deref())?;
        let q = Query::parse(parts.uri.query().unwrap_or_default())?;
        let now = self.clock.now();
        let rp = RequestParts::from_parts(parts);
        let Some(auth) = Auth::parse(rp, &self.cfg.region, now)? else {
            return Err(S3Error::AccessDenied("Access Denied".into()));
        };
        if auth.security_token().is_some() {
            return Err(S3Error::InvalidArgument(
                "kfsec's keys have no session token: send no X-Amz-Security-Token".into(),
            ));
        }
        let found = self
            .keys
            .lookup(auth.access_key_id(), now)
            .await
            .map_err(|e| S3Error::ServiceUnavailable(Some(Box::new(e))))?;
        let verified = auth.verify(rp, found.as_ref())?;
        let Some(found) = found else {
            return Err(S3Error::InvalidAccessKeyId);
        };
        let namespace = found.namespace.clone();
        if let Some(a) = audit {
            a.set_user(UserInfo {
                username: format!("s3:{namespace}"),
                groups: vec!["kfsec:s3".to_owned(), "system:authenticated".to_owned()],
                ..UserInfo::default()
            });
            a.annotate("s3.kfsec.io/access-key-id", found.id.clone());
        }
        let Some(bucket) = bucket else {
            return Err(S3Error::AccessDenied("Access Denied".into()));
        };
        if !bucket_name_ok(&bucket) {
            return Err(S3Error::NoSuchBucket);
        }
        check_headers(&parts.headers)?;
        let op = classify(&parts.method, key.as_deref(), &q, &parts.headers)?;
        let p = &self.cfg.policy;
        let allowed = match (&op, key.as_deref()) {
            (Operation::ReadObject, Some(k)) => p.object(&namespace, &bucket, k, Need::Read),
            (Operation::WriteObject { copy_source }, Some(k)) => {
                p.object(&namespace, &bucket, k, Need::Write)
                    && copy_source
                        .as_ref()
                        .is_none_or(|(sb, sk)| p.object(&namespace, sb, sk, Need::Read))
            }
            (Operation::List { prefix } | Operation::ListUploads { prefix }, None) => {
                p.listing(&namespace, &bucket, prefix) != ListScope::Denied
            }
            (Operation::BucketInfo, None) => p.bucket_visible(&namespace, &bucket),
            // The keys are checked when the body has been read (`forward`).
            (Operation::DeleteObjects, None) => p.bucket_visible(&namespace, &bucket),
            _ => false,
        };
        if let Some(a) = audit {
            a.resource(
                op.verb(&parts.method),
                ObjectRef {
                    resource: Some(if key.is_some() { "objects" } else { "buckets" }.to_owned()),
                    namespace: Some(namespace.clone()),
                    name: Some(match &key {
                        Some(k) => format!("{bucket}/{}", k.chars().take(1024).collect::<String>()),
                        None => bucket.clone(),
                    }),
                    api_group: Some(AUDIT_GROUP.to_owned()),
                    ..ObjectRef::default()
                },
            );
            a.decision(allowed, if allowed { "s3: allowed by the s3 policy" } else { "" });
        }
        if let Some(o) = &self.observer {
            o.decision(allowed);
        }
        if !allowed {
            return Err(S3Error::AccessDenied("Access Denied".into()));
        }
        Ok(Decided {
            namespace,
            bucket,
            key,
            op,
            auth: Box::new(verified),
        })
    }

    /// The request as the upstream gets it: allow-listed headers, the checked body.
    fn upstream_request(
        &self,
        parts: &http::request::Parts,
        body: axum::body::Body,
        d: &Decided,
        failure: &BodyFailure,
        filtered: bool,
    ) -> Result<UpstreamRequest, S3Error> {
        let mut q = Query::parse(parts.uri.query().unwrap_or_default())?;
        if filtered {
            // A filtered listing pages on from sealed markers only: a client-chosen marker would
            // let it bisect the hidden keys. Another delimiter than `/` would show partial names.
            let scope = listing::marker_scope(&d.namespace, &d.bucket);
            for (n, v, _) in &mut q.0 {
                if n == "delimiter" && !listing::filtered_delimiter_ok(v) {
                    return Err(S3Error::InvalidArgument(
                        "A listing broader than this key's prefixes takes delimiter '/' or none".into(),
                    ));
                }
                if listing::MARKER_PARAMS.contains(&n.as_str()) && !v.is_empty() {
                    *v = self.markers.open(&scope, v).ok_or_else(|| {
                        S3Error::InvalidArgument(
                            format!(
                                "A listing broader than this key's prefixes takes only the {n} of its previous page; list inside an allowed prefix to choose one"
                            )
                            .into(),
                        )
                    })?;
                }
            }
        }
        let copying = matches!(&d.op, Operation::WriteObject { copy_source: Some(_) });
        let mut headers = HeaderMap::new();
        for (name, value) in &parts.headers {
            let n = name.as_str();
            if n.starts_with("x-amz-copy-source") {
                // Only on a checked copy; the source itself is rebuilt below.
                if copying && n != "x-amz-copy-source" && FORWARDED.contains(&n) {
                    headers.insert(name.clone(), value.clone());
                }
            } else if FORWARDED.contains(&n) || n.starts_with("x-amz-meta-") {
                headers.insert(name.clone(), value.clone());
            } else if n == "content-encoding" {
                if let Some(v) = value
                    .to_str()
                    .ok()
                    .and_then(crate::chunked::forward_content_encoding)
                    .and_then(|v| HeaderValue::from_str(&v).ok())
                {
                    headers.insert(header::CONTENT_ENCODING, v);
                }
            } else if n.starts_with("x-amz-checksum-") && n != "x-amz-checksum-algorithm" && n != "x-amz-checksum-type"
            {
                // A checksum sent as a header: the store checks it too.
                headers.insert(name.clone(), value.clone());
            }
        }
        if copying {
            // The source as checked (bucket, key, versionId), not the client's spelling.
            let source = parts
                .headers
                .get("x-amz-copy-source")
                .map(copy_source)
                .transpose()?
                .and_then(|c| c.header())
                .ok_or_else(|| S3Error::InvalidArgument("Copy Source is not valid".into()))?;
            headers.insert("x-amz-copy-source", source);
        }
        let body = crate::gateway::body::checked(parts, body, &d.auth, &mut headers, failure)?;
        Ok(UpstreamRequest {
            method: parts.method.clone(),
            bucket: Some(d.bucket.clone()),
            key: d.key.clone(),
            query: q.upstream(),
            headers,
            body,
        })
    }

    async fn forward(
        &self,
        parts: &http::request::Parts,
        body: axum::body::Body,
        d: &Decided,
        request_id: &str,
    ) -> Result<Resp, S3Error> {
        let filter = match &d.op {
            Operation::List { prefix } | Operation::ListUploads { prefix } => {
                self.cfg.policy.listing(&d.namespace, &d.bucket, prefix) == ListScope::Filter
            }
            _ => false,
        };
        let failure = BodyFailure::default();
        let mut up = self.upstream_request(parts, body, d, &failure, filter)?;
        settle_empty_body(&mut up, &failure).await?;
        if d.op == Operation::DeleteObjects {
            // Read the (checked) list, refuse it unless every key is writable, send it on as read.
            let doc = read_request_body(
                std::mem::replace(&mut up.body, upstream::empty()),
                listing::MAX_DELETE_BYTES,
            )
            .await
            .map_err(|_| {
                failure
                    .take()
                    .unwrap_or_else(|| S3Error::InvalidRequest("The Delete body is too large or incomplete".into()))
            })?;
            let del = listing::delete_request(&doc).map_err(|_| S3Error::MalformedXml)?;
            let p = &self.cfg.policy;
            if !del.keys().all(|k| p.object(&d.namespace, &d.bucket, k, Need::Write)) {
                return Err(S3Error::AccessDenied("Access Denied".into()));
            }
            // The store gets the list as checked, re-serialized, never the client's bytes; its
            // integrity headers are recomputed over the new body.
            let doc = Bytes::from(del.to_xml());
            delete_body_headers(&mut up.headers, &doc);
            up.body = upstream::full(doc);
        }
        // A request without a body waits at most UPSTREAM_HEAD_TIMEOUT for the store's answer
        // head (an upload's answer comes after its body, which the listener's stall timer bounds).
        let sent = if matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE) {
            match tokio::time::timeout(UPSTREAM_HEAD_TIMEOUT, self.upstream.send(up)).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(S3Error::ServiceUnavailable(Some(
                        "the upstream store did not answer in time".into(),
                    )));
                }
            }
        } else {
            self.upstream.send(up).await
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                if let Some(body_error) = failure.take() {
                    return Err(body_error);
                }
                return Err(S3Error::ServiceUnavailable(Some(Box::new(e))));
            }
        };
        if let Some(body_error) = failure.take() {
            return Err(body_error);
        }
        let (mut rparts, rbody) = resp.into_parts();
        let status = rparts.status;
        if status.is_server_error() {
            let text = read_capped(rbody, 4096).await.unwrap_or_default();
            tracing::warn!(
                status = status.as_u16(),
                body = %String::from_utf8_lossy(&text),
                "s3 gateway: the upstream store failed"
            );
            return Err(if status == StatusCode::NOT_IMPLEMENTED {
                S3Error::NotImplemented("not implemented by the object store".into())
            } else {
                S3Error::ServiceUnavailable(None)
            });
        }
        if status == StatusCode::FORBIDDEN {
            // The store refusing kfsec's own credentials is kfsec's configuration, not the
            // client's doing.
            let text = read_capped(rbody, 64 << 10).await.unwrap_or_default();
            let s = String::from_utf8_lossy(&text);
            if s.contains("<Code>InvalidAccessKeyId</Code>") || s.contains("<Code>SignatureDoesNotMatch</Code>") {
                tracing::warn!("s3 gateway: the upstream store refused kfsec's upstream credentials (s3.upstream)");
                return Err(S3Error::ServiceUnavailable(None));
            }
            return Ok(build(rparts, axum::body::Body::from(text), request_id));
        }
        if filter && status.is_success() {
            let doc = read_capped(rbody, listing::MAX_LISTING_BYTES)
                .await
                .map_err(|e| S3Error::ServiceUnavailable(Some(e)))?;
            let (ns, bucket, p) = (&d.namespace, &d.bucket, &self.cfg.policy);
            let scope = listing::marker_scope(ns, bucket);
            let seal = |m: &str| self.markers.seal(&scope, m, self.rng.as_ref());
            let out = listing::filter(
                &doc,
                |k| p.key_visible(ns, bucket, k),
                |c| p.prefix_visible(ns, bucket, c),
                seal,
            )
            .map_err(|e| S3Error::ServiceUnavailable(Some(Box::new(e))))?;
            rparts.headers.remove(header::CONTENT_LENGTH);
            return Ok(build(rparts, axum::body::Body::from(out), request_id));
        }
        Ok(build(
            rparts,
            axum::body::Body::new(rbody.map_err(BoxError::from)),
            request_id,
        ))
    }
}

/// The headers of a re-serialized DeleteObjects body `doc`: the client's checksums and
/// framing headers dropped, `Content-Length` and `Content-MD5` (S3 requires an integrity
/// header on DeleteObjects) computed over `doc`.
pub(crate) fn delete_body_headers(headers: &mut HeaderMap, doc: &[u8]) {
    use base64::Engine as _;
    use md5::Digest as _;
    let drop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-amz-checksum-") || *n == header::CONTENT_ENCODING)
        .cloned()
        .collect();
    for n in drop {
        headers.remove(n);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(doc.len()));
    // The document kfsec wrote, whatever type the client claimed (a form type could make a
    // store parse the body as parameters).
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(doc));
    if let Ok(v) = HeaderValue::from_str(&md5) {
        headers.insert("content-md5", v);
    }
}

/// An upload announced empty (decoded length 0): the store would complete the write from the
/// headers alone, before any check of the body ran. So the whole body — framing, chunk
/// signatures, trailer checksums, nothing more than announced — is read and checked first, and
/// only an empty body that passed is sent on.
async fn settle_empty_body(up: &mut UpstreamRequest, failure: &BodyFailure) -> Result<(), S3Error> {
    if up
        .headers
        .get(header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() != b"0")
    {
        return Ok(());
    }
    let body = std::mem::replace(&mut up.body, upstream::empty());
    // The checked body holds no data (more than 0 bytes fails); the cap is a backstop.
    let rest = read_request_body(body, 0).await.map_err(|()| {
        failure
            .take()
            .unwrap_or_else(|| S3Error::IncompleteBody("The request body could not be read".into()))
    })?;
    up.body = upstream::full(rest);
    Ok(())
}

/// Reads a request body of at most `cap` bytes.
async fn read_request_body(mut body: upstream::Body, cap: usize) -> Result<Bytes, ()> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(|_| ())?.into_data() {
            if out.len() + data.len() > cap {
                return Err(());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// Reads a body of at most `cap` bytes.
pub(crate) async fn read_capped<B>(body: B, cap: usize) -> Result<Bytes, BoxError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let limited = http_body_util::Limited::new(body, cap);
    Ok(limited.collect().await?.to_bytes())
}

fn build(parts: http::response::Parts, body: axum::body::Body, request_id: &str) -> Resp {
    let mut out = Response::new(body);
    *out.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if response_header_kept(name) && name != "x-amz-request-id" && name != "x-amz-id-2" && name != "server" {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        out.headers_mut().insert("x-amz-request-id", v);
    }
    // An object's Content-Type is the uploader's (or `response-content-type`'s) choice: a
    // browser opening a presigned URL must neither sniff it nor run it with this origin.
    out.headers_mut()
        .insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    out.headers_mut()
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    out
}

async fn handle(State(gw): State<Arc<Gateway>>, req: Request<axum::body::Body>) -> Resp {
    let started = gw.clock.now();
    let request_id = gw.request_id();
    let audit = gw.begin_audit(&req);
    let (parts, body) = req.into_parts();
    let resource = parts.uri.path().to_owned();
    let result = match gw.decide(&parts, audit.as_ref()).await {
        Ok(d) => gw.forward(&parts, body, &d, &request_id).await,
        Err(e) => Err(e),
    };
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            match &e {
                S3Error::ServiceUnavailable(cause) | S3Error::InternalError(cause) => {
                    tracing::warn!(
                        request_id,
                        code = e.code(),
                        cause = cause.as_ref().map(ToString::to_string).unwrap_or_default(),
                        "s3 gateway request failed"
                    );
                }
                _ => {}
            }
            s3_response(&e, &parts.method, &resource, &request_id)
        }
    };
    let code = resp.status().as_u16();
    if let Some(a) = &audit {
        a.complete(code);
    }
    if let Some(o) = &gw.observer {
        o.request(code, gw.clock.now().since(started).as_secs_f64());
    }
    let mut resp = resp;
    if let Some(a) = &audit
        && let Ok(v) = HeaderValue::from_str(a.audit_id())
    {
        resp.headers_mut().insert(kfsec_audit::request::AUDIT_ID_HEADER, v);
    }
    resp
}

pub(crate) mod body {
    //! The request body as the upstream gets it: `chunked::VerifyingBody` (aws-chunked decoding,
    //! chunk and trailer signatures, checksums, decoded length; its last frame withheld until
    //! every check passed), its failure recorded for the answer.
    use super::*;
    use crate::chunked::{BodyPlan, VerifyingBody};

    /// The checked body with `Content-Length` set to the decoded length (empty for GET, HEAD
    /// and DELETE).
    pub(crate) fn checked(
        parts: &http::request::Parts,
        body: axum::body::Body,
        auth: &sigv4::Verified,
        headers: &mut HeaderMap,
        failure: &BodyFailure,
    ) -> Result<upstream::Body, S3Error> {
        if matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE) {
            return Ok(upstream::empty());
        }
        let plan = BodyPlan::from_request(&parts.headers, auth)?;
        // A body of unknown length (HTTP/2 without Content-Length) with data in it: S3 needs
        // the length up front.
        if !auth.payload.is_aws_chunked()
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
            && !body.is_end_stream()
        {
            return Err(S3Error::MissingContentLength);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(plan.decoded_len));
        let failure = failure.clone();
        Ok(VerifyingBody::new(body, plan)
            .map_err(move |e| -> BoxError {
                failure.set(e);
                "request body check failed".into()
            })
            .boxed_unsync())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_virtual_host_addressing() {
        let a = |host: Option<&str>, path: &str, domain: Option<&str>| address(host, path, domain).unwrap();
        assert_eq!(
            a(Some("localhost:9000"), "/mlpipeline/private/a%20b/c", None),
            (Some("mlpipeline".into()), Some("private/a b/c".into()))
        );
        assert_eq!(
            a(Some("localhost"), "/mlpipeline", None),
            (Some("mlpipeline".into()), None)
        );
        assert_eq!(
            a(Some("localhost"), "/mlpipeline/", None),
            (Some("mlpipeline".into()), None)
        );
        assert_eq!(a(Some("localhost"), "/", None), (None, None));
        assert_eq!(
            a(Some("MLPipeline.S3.Example.com:9000"), "/x/y", Some("s3.example.com")),
            (Some("mlpipeline".into()), Some("x/y".into()))
        );
        assert_eq!(
            a(Some("s3.example.com"), "/b/k", Some("s3.example.com")),
            (Some("b".into()), Some("k".into()))
        );
        // Without a domain, a bucket-like host is ignored: path style.
        assert_eq!(
            a(Some("evil.s3.example.com"), "/b/k", None),
            (Some("b".into()), Some("k".into()))
        );
        assert!(address(None, "/b/%zz", None).is_err());
        assert!(address(None, "/b/%ff", None).is_err());
    }

    #[test]
    fn bucket_administration_is_refused_and_objects_are_classified() {
        let q = |s: &str| Query::parse(s).unwrap();
        let h = HeaderMap::new();
        let c = |m: Method, key: Option<&str>, query: &str| classify(&m, key, &q(query), &h).unwrap();
        assert_eq!(c(Method::GET, Some("k"), "x-id=GetObject"), Operation::ReadObject);
        assert_eq!(c(Method::GET, Some("k"), "uploadId=1"), Operation::ReadObject);
        assert_eq!(
            c(Method::PUT, Some("k"), "partNumber=1&uploadId=2"),
            Operation::WriteObject { copy_source: None }
        );
        assert_eq!(c(Method::PUT, Some("k"), "acl"), Operation::Refused);
        assert_eq!(c(Method::GET, Some("k"), "acl="), Operation::Refused);
        assert_eq!(
            c(Method::GET, None, "list-type=2&prefix=private%2F&delimiter=%2F"),
            Operation::List {
                prefix: "private/".into()
            }
        );
        assert_eq!(
            c(Method::GET, None, "uploads"),
            Operation::ListUploads { prefix: String::new() }
        );
        assert_eq!(c(Method::GET, None, "location"), Operation::BucketInfo);
        assert_eq!(c(Method::HEAD, None, ""), Operation::BucketInfo);
        assert_eq!(c(Method::POST, None, "delete"), Operation::DeleteObjects);
        for (m, query) in [
            (Method::PUT, ""),
            (Method::DELETE, ""),
            (Method::GET, "policy"),
            (Method::GET, "acl"),
            (Method::PUT, "policy"),
            (Method::GET, "cors"),
            (Method::GET, "prefix=a&lifecycle"),
        ] {
            assert_eq!(c(m.clone(), None, query), Operation::Refused, "{m} ?{query}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            "x-amz-copy-source",
            HeaderValue::from_static("/other/private%2Fx?versionId=1"),
        );
        assert_eq!(
            classify(&Method::PUT, Some("k"), &q(""), &h).unwrap(),
            Operation::WriteObject {
                copy_source: Some(("other".into(), "private/x".into()))
            }
        );
        h.insert("x-amz-copy-source", HeaderValue::from_static("nokey"));
        assert!(classify(&Method::PUT, Some("k"), &q(""), &h).is_err());
    }

    /// Findings 3 and 5 of the security review: one value per query parameter and forwarded
    /// header; the copy source rebuilt from what was checked; an allow-list of object
    /// subresources.
    #[test]
    fn repeats_are_refused_and_the_copy_source_is_rebuilt() {
        for dup in [
            "prefix=private-artifacts/team-a/&prefix=private-artifacts/team-b/",
            "prefix=a&prefix",
            "versionId=1&versionId=2",
            "prefix=a&pre%66ix=b",
        ] {
            assert!(Query::parse(dup).is_err(), "{dup}");
        }
        let cs = |v: &'static str| copy_source(&HeaderValue::from_static(v));
        let c = cs("/other/private%2Fx?versionId=1").unwrap();
        assert_eq!((c.bucket.as_str(), c.key.as_str()), ("other", "private/x"));
        assert_eq!(c.header().unwrap(), "/other/private/x?versionId=1");
        // A `?` the client encoded is part of the key, and stays encoded.
        let c = cs("mlpipeline/private-artifacts/team-a/a%3F%20b").unwrap();
        assert_eq!(c.key, "private-artifacts/team-a/a? b");
        assert_eq!(c.header().unwrap(), "/mlpipeline/private-artifacts/team-a/a%3F%20b");
        // Anything but versionId after the `?` is refused.
        for bad in ["/b/k?x=1", "/b/k?", "/b/k?versionId=%zz", "/b/", "nokey"] {
            assert!(cs(bad).is_err(), "{bad}");
        }
        let q = |s: &str| Query::parse(s).unwrap();
        let h = HeaderMap::new();
        let c = |m: Method, query: &str| classify(&m, Some("k"), &q(query), &h).unwrap();
        for ok in [
            "response-content-type=text%2Fplain&versionId=1",
            "attributes",
            "tagging",
            "uploadId=1&max-parts=10&part-number-marker=2",
            "X-Amz-Signature=1&X-Amz-Date=2",
        ] {
            assert_ne!(c(Method::GET, ok), Operation::Refused, "{ok}");
        }
        for refused in [
            "acl",
            "retention",
            "legal-hold",
            "restore",
            "select&select-type=2",
            "torrent",
            "lambdaArn=x",
            "x",
        ] {
            assert_eq!(c(Method::GET, refused), Operation::Refused, "{refused}");
            assert_eq!(c(Method::POST, refused), Operation::Refused, "{refused}");
        }
    }

    /// Findings 2 and 3: store-internal metadata and repeated forwarded headers are refused.
    #[test]
    fn snowball_metadata_and_repeated_headers_are_refused() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
            }
            check_headers(&h)
        };
        for name in [
            "x-amz-meta-snowball-auto-extract",
            "x-amz-meta-minio-snowball-prefix",
            "x-amz-snowball-extract",
            "x-amz-meta-minio-internal",
        ] {
            let e = with(&[(name, "true")]).unwrap_err();
            assert_eq!(e.code(), "InvalidArgument", "{name}");
        }
        // Any case: header names arrive lower-cased, so one spelling covers them all.
        let upper = HeaderName::from_bytes(b"X-Amz-Meta-Snowball-Auto-Extract").unwrap();
        let mut h = HeaderMap::new();
        h.insert(upper, HeaderValue::from_static("true"));
        assert!(check_headers(&h).is_err());
        for dup in [
            "x-amz-copy-source",
            "x-amz-meta-a",
            "content-type",
            "x-amz-checksum-crc32",
            "content-encoding",
        ] {
            assert!(with(&[(dup, "a"), (dup, "b")]).is_err(), "{dup}");
        }
        with(&[
            ("x-amz-meta-a", "1"),
            ("x-amz-meta-b", "2"),
            ("content-type", "text/plain"),
        ])
        .unwrap();
    }

    /// Finding 1: the re-serialized Delete body carries its own integrity headers.
    #[test]
    fn a_reserialized_delete_gets_its_own_content_md5() {
        use base64::Engine as _;
        use md5::Digest as _;
        let mut h = HeaderMap::new();
        h.insert("content-md5", HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA=="));
        h.insert("x-amz-checksum-crc32", HeaderValue::from_static("AAAAAA=="));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        let doc = b"<Delete/>";
        delete_body_headers(&mut h, doc);
        assert!(h.get("x-amz-checksum-crc32").is_none());
        assert_eq!(h[header::CONTENT_LENGTH], "9");
        assert_eq!(
            h["content-md5"],
            base64::engine::general_purpose::STANDARD
                .encode(md5::Md5::digest(doc))
                .as_str()
        );
    }

    #[test]
    fn presign_parameters_are_not_forwarded() {
        let q = Query::parse("X-Amz-Signature=abc&uploads&prefix=a%20b&X-Amz-Credential=x%2Fy").unwrap();
        assert_eq!(q.upstream(), "uploads&prefix=a%20b");
    }
}
