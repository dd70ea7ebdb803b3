//! KFP UI's artifact endpoint, `GET /pipeline/artifacts/get` and `/artifacts/get`
//! (`?source=s3|minio&namespace=&bucket=&key=[&peek=N]`): an object from the pipelines' object
//! store, read through the S3 gateway's upstream with kfsec's own upstream credentials.
//!
//! Invariants (in this order, as KFP's frontend server checks them, tightened): every request
//! carries the front door's `Identity` (401 otherwise); every parameter appears at most once;
//! `namespace` is required (400, KFP's text) and a DNS-1123 label; the caller may `get`
//! `viewers` in group `kubeflow.org` in that namespace (KFP's SubjectAccessReview, asked of
//! kfsec's authorizer and recorded in the audit Event; 403 otherwise); the bucket is a valid S3
//! bucket name and the key at most 1024 bytes, with no empty, `.` or `..` segment, no leading
//! `/`, no backslash and no control character (400); the exact key string that goes upstream lies
//! within the namespace's prefixes of the gateway's policy (403 otherwise) — so naming another
//! namespace's key, in any spelling, reads nothing. Answers are never sniffed or rendered
//! (`nosniff`, `attachment`, `no-store`); a missing object is 404; `peek` bounds the bytes sent.
//! Errors are KFP's plain-text bodies, never an internal error's text.
//!
//! Also KFP's `ReadArtifact` (`runs/{run}/nodes/{node}/artifacts/{name}:read`, v1beta1 and
//! v2beta1): `readArtifact` on the run, the key from the reported workflow's status, refused
//! unless the policy lets the run's own namespace read it (a workflow's status is written in the
//! user's namespace, so it may name any key). kfsec keeps no MLMD artifact records, so the v2
//! `ArtifactService` (`/apis/v2beta1/artifacts/{id}`) stays NotFound.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use kfsec_api::{Attributes, audit};
use kfsec_types::identity::UserInfo;
use kfsec_types::{Identity, Incident};

use crate::Kfp;

/// The front-door paths of the endpoint (KFP's frontend server registers both).
pub const PATHS: &[&str] = &["/pipeline/artifacts/get", "/artifacts/get"];

/// The group of KFP's artifact access question.
pub const VIEWERS_GROUP: &str = "kubeflow.org";
/// The resource of KFP's artifact access question.
pub const VIEWERS: &str = "viewers";
/// The longest object key S3 accepts (and KFP's frontend server).
pub const MAX_KEY_BYTES: usize = 1024;

/// One object as read from the store: its length when known and its streaming body.
pub struct ArtifactObject {
    /// `Content-Length` of what the body yields, when the store said.
    pub length: Option<u64>,
    /// The bytes, streamed.
    pub body: Body,
}

impl std::fmt::Debug for ArtifactObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactObject")
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// A read that failed for a reason other than a missing object (the cause is logged, never sent).
#[derive(Debug, thiserror::Error)]
#[error("artifact store read failed: {0}")]
pub struct ArtifactStoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Where artifacts are read: the S3 gateway's policy (which keys a namespace may reach) and its
/// upstream (the object store, with kfsec's credentials).
#[async_trait::async_trait]
pub trait ArtifactStore: Send + Sync + 'static {
    /// Whether `namespace`'s key may read `key` in `bucket` under the gateway's policy; `key` is
    /// the exact string that [`ArtifactStore::get`] sends upstream.
    fn may_read(&self, namespace: &str, bucket: &str, key: &str) -> bool;
    /// The object, its first `first_bytes` bytes only when given; `Ok(None)` when it does not
    /// exist (no such key or no such bucket).
    async fn get(
        &self,
        bucket: &str,
        key: &str,
        first_bytes: Option<u64>,
    ) -> Result<Option<ArtifactObject>, ArtifactStoreError>;
    /// The pipelines' bucket, where KFP's `ReadArtifact` reads a workflow's artifact keys.
    fn bucket(&self) -> &str;
}

/// The real [`ArtifactStore`]: the S3 gateway's policy and its upstream (kfsec's credentials).
#[derive(Debug, Clone)]
pub struct S3Artifacts {
    upstream: kfsec_s3::upstream::Upstream,
    policy: kfsec_s3::policy::Policy,
    bucket: String,
}

impl S3Artifacts {
    /// Reads through `upstream`, within what `policy` lets a namespace's key read; `bucket` is
    /// the pipelines' bucket (`s3.bucket`).
    pub fn new(upstream: kfsec_s3::upstream::Upstream, policy: kfsec_s3::policy::Policy, bucket: String) -> Self {
        Self {
            upstream,
            policy,
            bucket,
        }
    }
}

#[async_trait::async_trait]
impl ArtifactStore for S3Artifacts {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn may_read(&self, namespace: &str, bucket: &str, key: &str) -> bool {
        self.policy.object(namespace, bucket, key, kfsec_s3::policy::Need::Read)
    }

    async fn get(
        &self,
        bucket: &str,
        key: &str,
        first_bytes: Option<u64>,
    ) -> Result<Option<ArtifactObject>, ArtifactStoreError> {
        let range = first_bytes.map(|n| format!("bytes=0-{}", n.saturating_sub(1)));
        let resp = self
            .upstream
            .get_object(bucket, key, range.as_deref())
            .await
            .map_err(|e| ArtifactStoreError(Box::new(e)))?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            // A peek at an empty object.
            return Ok(Some(ArtifactObject {
                length: Some(0),
                body: Body::empty(),
            }));
        }
        if !(status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT) {
            return Err(ArtifactStoreError(
                format!("the store answered {status} to a GET").into(),
            ));
        }
        let length = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(Some(ArtifactObject {
            length,
            body: Body::new(resp.into_body()),
        }))
    }
}

/// The parsed query.
#[derive(Debug, Default)]
struct Query {
    source: Option<String>,
    namespace: Option<String>,
    bucket: Option<String>,
    key: Option<String>,
    peek: Option<String>,
}

/// A refusal: status and KFP's plain-text message.
type Refused = (StatusCode, String);

fn refused(status: StatusCode, msg: impl Into<String>) -> Refused {
    (status, msg.into())
}

fn parse_query(raw: &str) -> Result<Query, Refused> {
    let mut q = Query::default();
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        let slot = match k.as_ref() {
            "source" => &mut q.source,
            "namespace" => &mut q.namespace,
            "bucket" => &mut q.bucket,
            "key" => &mut q.key,
            "peek" => &mut q.peek,
            // KFP's other parameters (download, keyEncoding, providerInfo, …) select behaviour
            // kfsec does not offer; they are ignored, never honoured.
            _ => continue,
        };
        if slot.is_some() {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                format!("Query parameter {k} must be given at most once"),
            ));
        }
        *slot = Some(v.into_owned());
    }
    Ok(q)
}

/// A DNS-1123 label, as Kubernetes names namespaces (KFP: `isAllowedResourceName`).
fn is_namespace(s: &str) -> bool {
    kfsec_types::validation::is_dns1123_label(s)
}

/// An S3 bucket name: 3–63 characters of lower-case letters, digits, `.` and `-`, starting and
/// ending with a letter or digit, no `..`.
fn is_bucket(s: &str) -> bool {
    let b = s.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && !s.contains("..")
}

/// Why a key is refused before any policy question (`None`: acceptable). Stores that map keys to
/// file paths (SeaweedFS's filer, MinIO) may resolve `.`/`..`/empty segments or backslashes, so
/// none of them is accepted: the string the policy saw is the object the store reads.
fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("Artifact source, bucket, and key are required and must use a supported storage source");
    }
    if key.len() > MAX_KEY_BYTES {
        return Some("Object key too long");
    }
    // The S3 gateway's predicate: one definition of a key kfsec forwards.
    if !kfsec_s3::policy::safe_key(key) {
        return Some("Invalid artifact key");
    }
    None
}

/// The handler of [`PATHS`].
pub async fn get(State(k): State<Arc<Kfp>>, req: Request) -> Response {
    let ctx = audit::RequestAudit::from_extensions(req.extensions());
    audit::scope(ctx, serve(k, req)).await
}

async fn serve(k: Arc<Kfp>, req: Request) -> Response {
    let who = req.extensions().get::<Identity>().cloned();
    let raw = req.uri().query().unwrap_or_default().to_owned();
    match answer(&k, who, &raw).await {
        Ok(r) => r,
        Err((status, msg)) => plain(status, msg),
    }
}

async fn answer(k: &Kfp, who: Option<Identity>, raw: &str) -> Result<Response, Refused> {
    let q = parse_query(raw)?;
    let Some(who) = who.filter(|w| !w.user.is_empty()) else {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "Authentication required for artifact access",
        ));
    };
    let namespace = q.namespace.unwrap_or_default();
    if namespace.is_empty() {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "Namespace parameter is required when authentication is enabled",
        ));
    }
    if !is_namespace(&namespace) {
        return Err(refused(StatusCode::BAD_REQUEST, "Invalid namespace format"));
    }
    authorize(k, &who, &namespace)?;
    let (source, bucket, key) = (
        q.source.unwrap_or_default(),
        q.bucket.unwrap_or_default(),
        q.key.unwrap_or_default(),
    );
    if bucket.is_empty() || key.is_empty() || source.is_empty() {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "Artifact source, bucket, and key are required and must use a supported storage source",
        ));
    }
    if source != "s3" && source != "minio" {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            format!("Artifact source {source:?} is not served here: kfsec serves s3 and minio artifacts"),
        ));
    }
    if !is_bucket(&bucket) {
        return Err(refused(StatusCode::BAD_REQUEST, "Invalid bucket name"));
    }
    if let Some(problem) = key_problem(&key) {
        return Err(refused(StatusCode::BAD_REQUEST, problem));
    }
    let peek = match q.peek.as_deref() {
        None | Some("") => None,
        Some(p) => match p.parse::<u64>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => return Err(refused(StatusCode::BAD_REQUEST, "Invalid peek value")),
        },
    };
    let Some(store) = k.artifacts.get() else {
        return Err(refused(
            StatusCode::NOT_IMPLEMENTED,
            "Artifact storage is not configured: kfsec reads artifacts through its s3 gateway's upstream",
        ));
    };
    if !store.may_read(&namespace, &bucket, &key) {
        tracing::info!(target: "audit", user = %who.user, %namespace, %bucket, "artifact key outside the namespace's prefixes");
        audit::decided(
            "get",
            audit::object_ref("", "", "artifacts", &namespace, &key),
            false,
            "",
        );
        return Err(refused(
            StatusCode::FORBIDDEN,
            "Artifact does not belong to the requested namespace",
        ));
    }
    match store.get(&bucket, &key, peek).await {
        Ok(Some(obj)) => Ok(stream(obj, &key, peek)),
        Ok(None) => Err(refused(
            StatusCode::NOT_FOUND,
            format!("No objects found at {bucket}/{key}"),
        )),
        Err(e) => {
            let incident = Incident::new(k.rng.as_ref());
            tracing::warn!(incident = %incident.as_str(), error = %e, %bucket, "artifact read failed");
            Err(refused(
                StatusCode::BAD_GATEWAY,
                format!("Failed to get object in bucket (incident {})", incident.as_str()),
            ))
        }
    }
}

/// The longest artifact `ReadArtifact` returns (it is answered whole, base64 in JSON).
pub const MAX_READ_ARTIFACT_BYTES: u64 = 16 * 1024 * 1024;

/// KFP's `ReadArtifact` (`GET /apis/{v1beta1,v2beta1}/runs/{run}/nodes/{node}/artifacts/{name}:read`):
/// the caller needs `readArtifact` on the run (in its namespace); the key is the reported
/// workflow's `status.nodes[node].outputs.artifacts[name].s3.key`, read from the pipelines'
/// bucket — but only when the gateway's policy lets the run's namespace read that key, since a
/// workflow's status is written in the user's namespace and could name any key. Answers
/// `{"data": base64}`.
pub(crate) async fn read_run_artifact(
    k: &Kfp,
    r: &crate::routes::Req,
    run_id: &str,
    node_id: &str,
    name: &str,
) -> crate::KfpResult<serde_json::Value> {
    use crate::KfpError;
    let outer = "Failed to read artifact";
    let run = crate::runs::load_authorized(k, r, run_id, "readArtifact")
        .await
        .map_err(|e| e.wrap(outer))?;
    let path = format!("runs/{run_id}/nodes/{node_id}/artifacts/{name}");
    let missing = || KfpError::NotFound(format!("artifact {path} not found")).wrap(outer);
    if run.runtime_sha256.is_empty() {
        return Err(missing());
    }
    let bytes =
        k.db.get_blob(crate::runs::RUNTIME, &run.id, &run.runtime_sha256)
            .await?;
    let workflow: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| KfpError::DataLoss("The stored workflow is not JSON".into()))?;
    let key = workflow
        .pointer("/status/nodes")
        .and_then(|n| n.get(node_id))
        .and_then(|n| n.pointer("/outputs/artifacts"))
        .and_then(serde_json::Value::as_array)
        .and_then(|list| {
            list.iter()
                .find(|a| a.get("name").and_then(serde_json::Value::as_str) == Some(name))
        })
        .and_then(|a| a.pointer("/s3/key"))
        .and_then(serde_json::Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or_else(missing)?
        .to_owned();
    let Some(store) = k.artifacts.get() else {
        return Err(KfpError::Unimplemented(
            "Reading artifacts needs kfsec's s3 gateway (an s3: upstream in the configuration)".into(),
        )
        .wrap(outer));
    };
    let bucket = store.bucket().to_owned();
    if key_problem(&key).is_some() || !store.may_read(&run.namespace, &bucket, &key) {
        tracing::warn!(target: "audit", user = %r.who.user, run = %run_id, namespace = %run.namespace,
            "a reported workflow names an artifact key outside its namespace's prefixes");
        return Err(KfpError::PermissionDenied(format!(
            "The artifact of run {run_id} lies outside namespace {}'s artifact prefixes",
            run.namespace
        ))
        .wrap(outer));
    }
    let obj = match store.get(&bucket, &key, None).await {
        Ok(Some(o)) => o,
        Ok(None) => return Err(missing()),
        Err(e) => {
            tracing::warn!(error = %e, run = %run_id, "artifact read failed");
            return Err(KfpError::Unavailable("The artifact store could not be read; retry later".into()).wrap(outer));
        }
    };
    if obj.length.is_some_and(|l| l > MAX_READ_ARTIFACT_BYTES) {
        return Err(too_big().wrap(outer));
    }
    let data = http_body_util::Limited::new(obj.body, usize::try_from(MAX_READ_ARTIFACT_BYTES).unwrap_or(usize::MAX));
    let data = http_body_util::BodyExt::collect(data)
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_big()
            } else {
                tracing::warn!(error = %e, "artifact read failed mid-stream");
                KfpError::Unavailable("The artifact store could not be read; retry later".into())
            }
        })
        .map_err(|e| e.wrap(outer))?
        .to_bytes();
    use base64::Engine as _;
    Ok(serde_json::json!({ "data": base64::engine::general_purpose::STANDARD.encode(&data) }))
}

fn too_big() -> crate::KfpError {
    crate::KfpError::ResourceExhausted(format!(
        "The artifact is larger than {MAX_READ_ARTIFACT_BYTES} bytes: read it through the S3 gateway or /pipeline/artifacts/get"
    ))
}

/// KFP's question: may `who` `get` `viewers` (`kubeflow.org`) in `namespace`?
fn authorize(k: &Kfp, who: &Identity, namespace: &str) -> Result<(), Refused> {
    let user = UserInfo::from(who);
    let attrs = Attributes::resource(
        user.username.clone(),
        user.groups.clone(),
        "get",
        VIEWERS_GROUP,
        VIEWERS,
        namespace,
    );
    let decision = k.authz.authorize(&attrs);
    if audit::active() {
        let object = audit::object_ref(VIEWERS_GROUP, "v1alpha1", VIEWERS, namespace, "");
        audit::decided("get", object, decision.is_allowed(), decision.reason());
    }
    if decision.is_allowed() {
        return Ok(());
    }
    tracing::info!(target: "audit", user = %who.user, %namespace, "artifact read denied");
    Err(refused(
        StatusCode::FORBIDDEN,
        format!(
            "User is not authorized to GET VIEWERS in namespace {namespace}: User '{}' is not authorized with reason:  (request: &ResourceAttributes{{Namespace:{namespace},Verb:get,Group:{VIEWERS_GROUP},Version:v1beta1,Resource:{VIEWERS},Subresource:,Name:,}})",
            who.user
        ),
    ))
}

/// The hardening every answer carries: never sniffed, never rendered inline, never cached.
fn harden(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    if !h.contains_key(header::CONTENT_DISPOSITION) {
        h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    }
}

fn plain(status: StatusCode, msg: String) -> Response {
    let mut r = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        msg,
    )
        .into_response();
    harden(&mut r);
    r
}

/// `attachment; filename="<ascii>"; filename*=UTF-8''<percent-encoded>` of the key's last segment.
fn disposition(key: &str) -> HeaderValue {
    let base = key.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
    let base = if base.is_empty() { "artifact" } else { base };
    let ascii: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = url::form_urlencoded::byte_serialize(base.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
        .replace('*', "%2A");
    HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

fn stream(obj: ArtifactObject, key: &str, peek: Option<u64>) -> Response {
    let length = match (obj.length, peek) {
        (Some(l), Some(p)) => Some(l.min(p)),
        (l, None) => l,
        (None, Some(_)) => None,
    };
    let body = match peek {
        Some(p) => Body::new(Take {
            inner: obj.body,
            left: p,
        }),
        None => obj.body,
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(l) = length {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(l));
    }
    h.insert(header::CONTENT_DISPOSITION, disposition(key));
    harden(&mut r);
    r
}

/// A body cut after `left` bytes (the `peek` limit, also when the store sent more).
struct Take {
    inner: Body,
    left: u64,
}

impl HttpBody for Take {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        loop {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => f,
                other => return other,
            };
            let Ok(mut data) = frame.into_data() else {
                continue; // trailers are not forwarded
            };
            let n = usize::try_from(self.left).unwrap_or(usize::MAX);
            if data.len() > n {
                data.truncate(n);
            }
            self.left -= data.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut h = SizeHint::new();
        h.set_upper(self.left);
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_be_resolved_elsewhere_are_refused() {
        for bad in [
            "/private-artifacts/a/x",
            "private-artifacts/a/../b/x",
            "private-artifacts/a/./x",
            "private-artifacts//a/x",
            "private-artifacts/a/x\0",
            "private-artifacts/a\\..\\b/x",
            "private-artifacts/a/\nx",
            "..",
        ] {
            assert!(key_problem(bad).is_some(), "{bad:?} accepted");
        }
        assert!(key_problem(&"a".repeat(1025)).is_some());
        for good in [
            "private-artifacts/a/x",
            "private-artifacts/a/dir/",
            "artifacts/run/x.tgz",
            "private-artifacts/a/%2F..%2Fb",
            "private-artifacts/a/x..y",
        ] {
            assert!(key_problem(good).is_none(), "{good:?} refused");
        }
        assert!(key_problem(&"a".repeat(1024)).is_none());
    }

    /// Every key built from pieces a hostile caller would combine, that the endpoint accepts for
    /// team-a under the real default policy, resolves (as a filesystem-backed store would fold
    /// it) inside team-a's or the shared prefixes.
    #[test]
    fn no_accepted_key_resolves_outside_the_namespace() {
        let policy = kfsec_s3::policy::Policy::seaweedfs_default("mlpipeline");
        let pieces = [
            "private-artifacts/",
            "private/",
            "team-a",
            "team-b",
            "/",
            "..",
            ".",
            "%2F",
            "artifacts/",
            "shared/",
            "x",
        ];
        let mut keys = vec![String::new()];
        for _ in 0..5 {
            keys = keys
                .iter()
                .flat_map(|k| pieces.iter().map(move |p| format!("{k}{p}")))
                .collect();
            for key in &keys {
                if key_problem(key).is_some()
                    || !policy.object("team-a", "mlpipeline", key, kfsec_s3::policy::Need::Read)
                {
                    continue;
                }
                let mut resolved: Vec<&str> = Vec::new();
                for seg in key.split('/') {
                    match seg {
                        ".." => {
                            resolved.pop();
                        }
                        "." | "" => {}
                        s => resolved.push(s),
                    }
                }
                let r = resolved.join("/") + "/";
                assert!(
                    ["private-artifacts/team-a/", "private/team-a/", "artifacts/", "shared/"]
                        .iter()
                        .any(|p| r.starts_with(p)),
                    "{key:?} resolves to {r:?}"
                );
            }
        }
    }

    #[test]
    fn bucket_names_follow_s3() {
        for good in ["mlpipeline", "a.b-c", "abc"] {
            assert!(is_bucket(good), "{good}");
        }
        for bad in ["ab", "ML", "-ab", "ab-", "a..b", "a/b", "a b", &"a".repeat(64)] {
            assert!(!is_bucket(bad), "{bad}");
        }
    }

    #[test]
    fn repeated_parameters_are_refused() {
        assert!(parse_query("namespace=a&namespace=b").is_err());
        let q = parse_query("namespace=a&key=x%2Fy&other=1&other=2").unwrap();
        assert_eq!(q.key.as_deref(), Some("x/y"));
    }

    #[test]
    fn the_download_name_is_safe_for_a_header() {
        let d = disposition("private-artifacts/a/we\"ird\r\nname ü");
        let s = d.to_str().unwrap();
        assert!(s.starts_with("attachment; filename=\"we_ird__name__\""), "{s}");
        assert!(!s.contains('\n'));
    }

    mod through_the_router {
        use std::collections::HashMap;

        use axum::http::Request as HttpRequest;
        use kfsec_api::{Decision, RequestAttributes, SubjectRules};
        use kfsec_store::MemoryStore;
        use kfsec_types::{ManualClock, Rng, UnixTime};
        use parking_lot::Mutex;
        use tower::ServiceExt;

        use super::super::*;
        use crate::KfpSettings;

        /// `get viewers` in `team-a` for alice only; every question recorded.
        #[derive(Default)]
        struct Viewers(Mutex<Vec<Attributes>>);

        impl kfsec_api::Authorize for Viewers {
            fn authorize(&self, a: &Attributes) -> Decision {
                self.0.lock().push(a.clone());
                match &a.request {
                    RequestAttributes::Resource(r)
                        if a.user == "alice@example.com"
                            && r.namespace == "team-a"
                            && r.verb == "get"
                            && r.api_group == "kubeflow.org"
                            && r.resource == "viewers" =>
                    {
                        Decision::Allow { reason: "test".into() }
                    }
                    // KFP's own rights: alice edits team-a, the agent reports.
                    RequestAttributes::Resource(r)
                        if r.api_group == "pipelines.kubeflow.org"
                            && ((a.user == "alice@example.com" && r.namespace == "team-a")
                                || (a.user == AGENT && r.verb == "report")) =>
                    {
                        Decision::Allow { reason: "test".into() }
                    }
                    _ => Decision::NoOpinion,
                }
            }
            fn rules_for(&self, _: &UserInfo, _: &str) -> SubjectRules {
                SubjectRules::default()
            }
        }

        struct FixedRng(std::sync::atomic::AtomicU8);
        impl Rng for FixedRng {
            fn fill(&self, buf: &mut [u8]) {
                for b in buf.iter_mut() {
                    *b = self.0.fetch_add(37, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }

        /// The default policy's shape and a map of objects; every key read is recorded.
        #[derive(Default)]
        struct Objects {
            objects: HashMap<String, Vec<u8>>,
            read: Mutex<Vec<(String, Option<u64>)>>,
            fail: bool,
        }

        #[async_trait::async_trait]
        impl ArtifactStore for Objects {
            fn may_read(&self, ns: &str, bucket: &str, key: &str) -> bool {
                bucket == "mlpipeline"
                    && (key.starts_with(&format!("private-artifacts/{ns}/")) || key.starts_with("artifacts/"))
            }
            fn bucket(&self) -> &str {
                "mlpipeline"
            }
            async fn get(
                &self,
                bucket: &str,
                key: &str,
                first: Option<u64>,
            ) -> Result<Option<ArtifactObject>, ArtifactStoreError> {
                self.read.lock().push((key.to_owned(), first));
                if self.fail {
                    return Err(ArtifactStoreError("upstream secret detail".into()));
                }
                Ok(self.objects.get(&format!("{bucket}/{key}")).map(|b| ArtifactObject {
                    length: Some(b.len() as u64),
                    body: Body::from(b.clone()),
                }))
            }
        }

        async fn kfp(store: Option<Arc<Objects>>) -> (Arc<Kfp>, Arc<Viewers>) {
            let clock = ManualClock::new(UnixTime::from_secs(1_700_000_000));
            let authz = Arc::new(Viewers::default());
            let k = Kfp::new(
                MemoryStore::new(clock.clone()),
                authz.clone(),
                clock,
                Arc::new(FixedRng(std::sync::atomic::AtomicU8::new(7))),
                KfpSettings::default(),
            )
            .await
            .unwrap();
            if let Some(s) = store {
                k.serve_artifacts(s);
            }
            (k, authz)
        }

        fn objects() -> Arc<Objects> {
            let mut o = Objects::default();
            o.objects.insert(
                "mlpipeline/private-artifacts/team-a/run/out.txt".into(),
                b"hello artifact".to_vec(),
            );
            o.objects.insert(
                "mlpipeline/private-artifacts/team-b/run/secret.txt".into(),
                b"team b only".to_vec(),
            );
            Arc::new(o)
        }

        async fn call(k: &Arc<Kfp>, who: Option<&str>, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
            let mut req = HttpRequest::builder().uri(uri).body(Body::empty()).unwrap();
            if let Some(u) = who {
                req.extensions_mut().insert(Identity::new(u, vec![]));
            }
            let resp = k.router().oneshot(req).await.unwrap();
            let (parts, body) = resp.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            (
                parts.status,
                parts.headers,
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        }

        const ALICE: Option<&str> = Some("alice@example.com");
        const OWN: &str = "source=s3&namespace=team-a&bucket=mlpipeline&key=private-artifacts%2Fteam-a%2Frun%2Fout.txt";

        #[tokio::test]
        async fn an_own_artifact_is_streamed_on_both_paths() {
            let store = objects();
            let (k, authz) = kfp(Some(store.clone())).await;
            for path in PATHS {
                let (status, h, body) = call(&k, ALICE, &format!("{path}?{OWN}")).await;
                assert_eq!(status, StatusCode::OK, "{path}: {body}");
                assert_eq!(body, "hello artifact");
                assert_eq!(h["x-content-type-options"], "nosniff");
                assert_eq!(h["content-type"], "application/octet-stream");
                assert!(
                    h["content-disposition"]
                        .to_str()
                        .unwrap()
                        .starts_with("attachment; filename=\"out.txt\"")
                );
            }
            let asked = authz.0.lock();
            let RequestAttributes::Resource(r) = &asked[0].request else {
                panic!()
            };
            assert_eq!(
                (
                    r.verb.as_str(),
                    r.api_group.as_str(),
                    r.resource.as_str(),
                    r.namespace.as_str()
                ),
                ("get", "kubeflow.org", "viewers", "team-a")
            );
        }

        #[tokio::test]
        async fn peek_limits_the_bytes() {
            let store = objects();
            let (k, _) = kfp(Some(store.clone())).await;
            let (status, h, body) = call(&k, ALICE, &format!("/pipeline/artifacts/get?{OWN}&peek=5")).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, "hello");
            assert_eq!(h["content-length"], "5");
            assert_eq!(store.read.lock().last().unwrap().1, Some(5));
        }

        #[tokio::test]
        async fn refusals_carry_kfps_statuses_and_read_nothing() {
            let store = objects();
            let (k, _) = kfp(Some(store.clone())).await;
            let p = "/pipeline/artifacts/get";
            let cases: &[(Option<&str>, String, StatusCode, &str)] = &[
                (
                    None,
                    format!("{p}?{OWN}"),
                    StatusCode::UNAUTHORIZED,
                    "Authentication required",
                ),
                (
                    ALICE,
                    format!("{p}?source=s3&bucket=mlpipeline&key=private-artifacts/team-a/run/out.txt"),
                    StatusCode::BAD_REQUEST,
                    "Namespace parameter is required when authentication is enabled",
                ),
                (
                    ALICE,
                    format!("{p}?{OWN}&namespace=team-b"),
                    StatusCode::BAD_REQUEST,
                    "at most once",
                ),
                (
                    ALICE,
                    format!("{p}?source=s3&namespace=Team_A&bucket=mlpipeline&key=x"),
                    StatusCode::BAD_REQUEST,
                    "Invalid namespace format",
                ),
                // another namespace: the access question says no
                (
                    ALICE,
                    format!(
                        "{p}?source=s3&namespace=team-b&bucket=mlpipeline&key=private-artifacts/team-b/run/secret.txt"
                    ),
                    StatusCode::FORBIDDEN,
                    "User is not authorized to GET VIEWERS in namespace team-b",
                ),
                (
                    Some("mallory@example.com"),
                    format!("{p}?{OWN}"),
                    StatusCode::FORBIDDEN,
                    "not authorized",
                ),
                // own namespace, another namespace's key, in several spellings
                (
                    ALICE,
                    format!(
                        "{p}?source=s3&namespace=team-a&bucket=mlpipeline&key=private-artifacts/team-b/run/secret.txt"
                    ),
                    StatusCode::FORBIDDEN,
                    "does not belong to the requested namespace",
                ),
                (
                    ALICE,
                    format!(
                        "{p}?source=s3&namespace=team-a&bucket=mlpipeline&key=private-artifacts/team-a/../team-b/run/secret.txt"
                    ),
                    StatusCode::BAD_REQUEST,
                    "Invalid artifact key",
                ),
                (
                    ALICE,
                    format!(
                        "{p}?source=s3&namespace=team-a&bucket=mlpipeline&key=private-artifacts/team-a%2F..%2F..%2Fprivate-artifacts/team-b/run/secret.txt"
                    ),
                    StatusCode::BAD_REQUEST,
                    "Invalid artifact key",
                ),
                (
                    ALICE,
                    format!("{p}?source=s3&namespace=team-a&bucket=mlpipeline&key=/private-artifacts/team-a/x"),
                    StatusCode::BAD_REQUEST,
                    "Invalid artifact key",
                ),
                (
                    ALICE,
                    format!("{p}?source=s3&namespace=team-a&bucket=mlpipeline&key=private-artifacts/team-a/x%00"),
                    StatusCode::BAD_REQUEST,
                    "Invalid artifact key",
                ),
                (
                    ALICE,
                    format!("{p}?source=s3&namespace=team-a&bucket=mlpipeline&key=private-artifacts/team-ab/x"),
                    StatusCode::FORBIDDEN,
                    "does not belong",
                ),
                (
                    ALICE,
                    format!("{p}?source=s3&namespace=team-a&bucket=other-bucket&key=private-artifacts/team-a/x"),
                    StatusCode::FORBIDDEN,
                    "does not belong",
                ),
                (
                    ALICE,
                    format!("{p}?source=s3&namespace=team-a&bucket=ML..x&key=private-artifacts/team-a/x"),
                    StatusCode::BAD_REQUEST,
                    "Invalid bucket name",
                ),
                (
                    ALICE,
                    format!(
                        "{p}?source=s3&namespace=team-a&bucket=mlpipeline&key=private-artifacts/team-a/{}",
                        "x".repeat(1100)
                    ),
                    StatusCode::BAD_REQUEST,
                    "Object key too long",
                ),
                (
                    ALICE,
                    format!("{p}?source=gcs&namespace=team-a&bucket=mlpipeline&key=private-artifacts/team-a/x"),
                    StatusCode::BAD_REQUEST,
                    "not served",
                ),
                (
                    ALICE,
                    format!("{p}?namespace=team-a&bucket=mlpipeline"),
                    StatusCode::FORBIDDEN,
                    "are required",
                ),
                (
                    ALICE,
                    format!("{p}?{OWN}&peek=-1"),
                    StatusCode::BAD_REQUEST,
                    "Invalid peek",
                ),
            ];
            for (who, uri, status, text) in cases {
                let (got, h, body) = call(&k, *who, uri).await;
                assert_eq!(got, *status, "{uri}: {body}");
                assert!(body.contains(text), "{uri}: {body}");
                assert_eq!(h["x-content-type-options"], "nosniff");
                assert!(h["content-type"].to_str().unwrap().starts_with("text/plain"));
            }
            assert!(
                store.read.lock().is_empty(),
                "a refused request read {:?}",
                store.read.lock()
            );
        }

        const AGENT: &str = "system:serviceaccount:kubeflow:ml-pipeline-persistenceagent";

        async fn json_call(
            k: &Arc<Kfp>,
            who: &str,
            method: &str,
            uri: &str,
            body: serde_json::Value,
        ) -> (StatusCode, serde_json::Value) {
            let mut req = HttpRequest::builder()
                .method(method)
                .uri(uri)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            req.extensions_mut().insert(Identity::new(who, vec![]));
            let resp = k.router().oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            )
        }

        /// A run in team-a whose reported workflow names `key` as node `n1`'s artifact `out`.
        async fn run_with_artifact(k: &Arc<Kfp>, key: &str) -> String {
            let alice = "alice@example.com";
            let (s, v) = json_call(
                k,
                alice,
                "POST",
                "/pipeline/apis/v2beta1/experiments",
                serde_json::json!({"display_name": "e", "namespace": "team-a"}),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let exp = v["experiment_id"].as_str().unwrap().to_owned();
            let spec = serde_json::json!({"pipelineInfo": {"name": "p"}, "root": {"dag": {"tasks": {}}},
                "schemaVersion": "2.1.0", "sdkVersion": "kfp-2.14.6"});
            let (s, v) = json_call(
                k,
                alice,
                "POST",
                "/pipeline/apis/v2beta1/runs",
                serde_json::json!({"display_name": "r", "experiment_id": exp, "pipeline_spec": spec}),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let run = v["run_id"].as_str().unwrap().to_owned();
            let wf = serde_json::json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                "metadata": {"name": "p-1", "namespace": "team-a", "uid": "u-1", "labels": {"pipeline/runid": run}},
                "status": {"phase": "Succeeded", "nodes": {"n1": {"outputs": {"artifacts": [
                    {"name": "main-logs", "s3": {"key": "private-artifacts/team-a/logs"}},
                    {"name": "out", "s3": {"key": key}}]}}}}});
            let (s, v) = json_call(k, AGENT, "POST", "/apis/v1beta1/workflows", wf).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            run
        }

        #[tokio::test]
        async fn read_artifact_reads_the_workflows_key_within_the_runs_namespace() {
            let store = objects();
            let (k, _) = kfp(Some(store.clone())).await;
            let run = run_with_artifact(&k, "private-artifacts/team-a/run/out.txt").await;
            for v in ["v1beta1", "v2beta1"] {
                let (s, body) = json_call(
                    &k,
                    "alice@example.com",
                    "GET",
                    &format!("/pipeline/apis/{v}/runs/{run}/nodes/n1/artifacts/out:read"),
                    serde_json::Value::Null,
                )
                .await;
                assert_eq!(s, StatusCode::OK, "{body}");
                assert_eq!(body["data"], "aGVsbG8gYXJ0aWZhY3Q=", "{body}");
            }
            // another user: KFP's denial; an unknown node or artifact: NotFound
            let (s, body) = json_call(
                &k,
                "mallory@example.com",
                "GET",
                &format!("/pipeline/apis/v1beta1/runs/{run}/nodes/n1/artifacts/out:read"),
                serde_json::Value::Null,
            )
            .await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
            assert!(body["message"].as_str().unwrap().contains("readArtifact"), "{body}");
            for path in ["nodes/n2/artifacts/out:read", "nodes/n1/artifacts/nope:read"] {
                let (s, body) = json_call(
                    &k,
                    "alice@example.com",
                    "GET",
                    &format!("/pipeline/apis/v1beta1/runs/{run}/{path}"),
                    serde_json::Value::Null,
                )
                .await;
                assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {body}");
            }
        }

        #[tokio::test]
        async fn read_artifact_refuses_a_workflow_naming_another_namespaces_key() {
            for key in [
                "private-artifacts/team-b/run/secret.txt",
                "private-artifacts/team-a/../team-b/run/secret.txt",
            ] {
                let store = objects();
                let (k, _) = kfp(Some(store.clone())).await;
                let run = run_with_artifact(&k, key).await;
                let (s, body) = json_call(
                    &k,
                    "alice@example.com",
                    "GET",
                    &format!("/pipeline/apis/v2beta1/runs/{run}/nodes/n1/artifacts/out:read"),
                    serde_json::Value::Null,
                )
                .await;
                assert_eq!(s, StatusCode::FORBIDDEN, "{key}: {body}");
                assert!(!body.to_string().contains("team b only"));
                assert!(store.read.lock().is_empty(), "{key} was read");
            }
        }

        #[tokio::test]
        async fn a_missing_object_is_404_and_a_failed_read_says_nothing_of_its_cause() {
            let (k, _) = kfp(Some(objects())).await;
            let (status, _, body) = call(
                &k,
                ALICE,
                "/artifacts/get?source=minio&namespace=team-a&bucket=mlpipeline&key=private-artifacts/team-a/none",
            )
            .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
            let failing = Arc::new(Objects {
                fail: true,
                ..Objects::default()
            });
            let (k, _) = kfp(Some(failing)).await;
            let (status, _, body) = call(&k, ALICE, &format!("/artifacts/get?{OWN}")).await;
            assert_eq!(status, StatusCode::BAD_GATEWAY);
            assert!(!body.contains("secret detail"), "{body}");
            let (k, _) = kfp(None).await;
            let (status, _, _) = call(&k, ALICE, &format!("/artifacts/get?{OWN}")).await;
            assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
        }
    }
}
