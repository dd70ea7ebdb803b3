//! The S3 gateway's own behaviour against a tiny in-test upstream (an S3-shaped store that
//! records what reaches it): re-signing with the upstream key, the default policy, bucket
//! administration refused, checksums that fail leaving nothing stored, filtered listings, and
//! an unreachable upstream answered 503 in S3's XML. The real clients (boto3, minio, moto) are
//! `tests/s3/`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, Uri};
use kfsec_s3::sigv4;
use kfsec_types::{Clock, SystemClock};

use crate::harness::{Kfsec, http_client};

const UP_AK: &str = "UPSTREAMAK0001";
const UP_SK: &str = "upstream-secret-key-0123456789";

#[derive(Default)]
struct Fake {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
    /// (method, path and query, Authorization) of every request that reached the store.
    seen: Mutex<Vec<(String, String, String)>>,
    /// The headers of every request that reached the store.
    heads: Mutex<Vec<HeaderMap>>,
    /// The bodies of the DeleteObjects requests that reached the store.
    deletes: Mutex<Vec<Vec<u8>>>,
}

fn xml(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "application/xml")], body).into_response()
}

async fn fake(State(f): State<Arc<Fake>>, req: Request) -> Response {
    let (p, body) = req.into_parts();
    let auth = p
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    f.seen.lock().unwrap().push((
        p.method.to_string(),
        p.uri.path_and_query().map(|x| x.to_string()).unwrap_or_default(),
        auth.clone(),
    ));
    f.heads.lock().unwrap().push(p.headers.clone());
    if !auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={UP_AK}/")) {
        return xml(
            StatusCode::FORBIDDEN,
            "<Error><Code>InvalidAccessKeyId</Code></Error>".into(),
        );
    }
    let path = p.uri.path().to_owned();
    let Some(rest) = path.strip_prefix("/mlpipeline") else {
        return xml(StatusCode::NOT_FOUND, "<Error><Code>NoSuchBucket</Code></Error>".into());
    };
    let key = rest.trim_start_matches('/').to_owned();
    match (p.method.clone(), key.is_empty()) {
        (Method::PUT, false) => match axum::body::to_bytes(body, 1 << 20).await {
            Ok(b) => {
                f.objects.lock().unwrap().insert(key, b.to_vec());
                (StatusCode::OK, [("etag", "\"e\"")]).into_response()
            }
            // An aborted upload: nothing stored.
            Err(_) => StatusCode::BAD_REQUEST.into_response(),
        },
        (Method::GET, false) => match f.objects.lock().unwrap().get(&key) {
            Some(b) => b.clone().into_response(),
            None => xml(StatusCode::NOT_FOUND, "<Error><Code>NoSuchKey</Code></Error>".into()),
        },
        (Method::GET, true) => {
            let prefix = p
                .uri
                .query()
                .unwrap_or_default()
                .split('&')
                .find_map(|kv| kv.strip_prefix("prefix="))
                .map(|v| v.replace("%2F", "/"))
                .unwrap_or_default();
            let mut out = String::from(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>mlpipeline</Name><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated>",
            );
            for k in f.objects.lock().unwrap().keys().filter(|k| k.starts_with(&prefix)) {
                out.push_str(&format!("<Contents><Key>{k}</Key><Size>1</Size></Contents>"));
            }
            out.push_str("</ListBucketResult>");
            xml(StatusCode::OK, out)
        }
        (Method::POST, true) => {
            let b = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
            f.deletes.lock().unwrap().push(b.to_vec());
            xml(StatusCode::OK, "<DeleteResult></DeleteResult>".into())
        }
        _ => StatusCode::OK.into_response(),
    }
}

async fn start_fake() -> (SocketAddr, Arc<Fake>) {
    let f = Arc::new(Fake::default());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let app = axum::Router::new().fallback(fake).with_state(f.clone());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, f)
}

/// kfsec with `s3:` in front of `upstream`; the credential files live in `dir`.
async fn start(upstream: SocketAddr, dir: &std::path::Path, extra: &str) -> Kfsec {
    let (ak, sk) = (dir.join("ak"), dir.join("sk"));
    std::fs::write(&ak, format!("{UP_AK}\n")).unwrap();
    std::fs::write(&sk, format!("{UP_SK}\n")).unwrap();
    Kfsec::start(&format!(
        "s3:\n  addr: 127.0.0.1:0\n  upstream:\n    endpoint: http://{upstream}\n    accessKeyFile: {}\n    secretKeyFile: {}\n{extra}",
        ak.display(),
        sk.display()
    ))
    .await
}

struct Client {
    http: reqwest::Client,
    base: String,
    id: String,
    secret: String,
}

impl Client {
    /// The workspace `ns` (a Profile, so its key is not swept as an orphan) and its key.
    async fn new(k: &Kfsec, ns: &str) -> Self {
        let r = kfsec_api::ApiServer::resource("kubeflow.org", "v1", "profiles").unwrap();
        let profile = serde_json::json!({"apiVersion": "kubeflow.org/v1", "kind": "Profile",
            "metadata": {"name": ns}, "spec": {"owner": {"kind": "User", "name": "alice@example.com"}}});
        let _ = k.running.api.create_object(r, "", profile).await;
        let (key, _) = k.running.s3_keys.current_or_issue(ns).await.unwrap();
        Self {
            http: http_client(&k.running.ca_pem),
            base: format!("https://127.0.0.1:{}", k.running.s3_addr.unwrap().port()),
            id: key.id.clone(),
            secret: key.secret.to_string(),
        }
    }

    /// A signed request (`UNSIGNED-PAYLOAD`, extra headers signed when `x-amz-*` or
    /// `content-md5`), answered as (status, body).
    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
        let r = self.response(method, path, headers, body).await;
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The same request, answered as the response.
    async fn response(&self, method: Method, path: &str, headers: &[(&str, &str)], body: &[u8]) -> reqwest::Response {
        let uri: Uri = format!("{}{path}", self.base).parse().unwrap();
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.insert(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let creds = sigv4::Credentials {
            access_key_id: &self.id,
            secret: &self.secret,
            session_token: None,
        };
        sigv4::sign(
            &method,
            &uri,
            &mut h,
            &creds,
            "us-east-1",
            SystemClock.now(),
            sigv4::UNSIGNED_PAYLOAD,
        )
        .unwrap();
        h.remove("host");
        self.http
            .request(method, uri.to_string())
            .headers(h)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn own_prefix_round_trips_re_signed_and_the_policy_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (up, fake) = start_fake().await;
    let k = start(up, dir.path(), "").await;
    let a = Client::new(&k, "team-a").await;

    let (s, b) = a
        .send(
            Method::PUT,
            "/mlpipeline/private-artifacts/team-a/run/x.txt",
            &[],
            b"hello",
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = a
        .send(Method::GET, "/mlpipeline/private-artifacts/team-a/run/x.txt", &[], b"")
        .await;
    assert_eq!((s, b.as_str()), (200, "hello"));
    // Everything the store saw was signed with kfsec's upstream key, never the client's.
    for (_, _, auth) in fake.seen.lock().unwrap().iter() {
        assert!(auth.contains(UP_AK) && !auth.contains(&a.id), "{auth}");
    }
    let seen = fake.seen.lock().unwrap().len();

    for (method, path) in [
        (Method::PUT, "/mlpipeline/private-artifacts/team-b/x"),
        (Method::GET, "/mlpipeline/private/team-b/x"),
        (Method::PUT, "/mlpipeline/private-artifacts/team-a%2F..%2Fteam-b/x"),
        (Method::PUT, "/other-bucket/private-artifacts/team-a/x"),
        (Method::PUT, "/newbucket"),
        (Method::DELETE, "/mlpipeline"),
        (Method::GET, "/mlpipeline?policy"),
        (Method::PUT, "/mlpipeline/private-artifacts/team-a/x?acl"),
        (Method::GET, "/mlpipeline?prefix=private-artifacts%2Fteam-b%2F"),
        (Method::GET, "/"),
    ] {
        let (s, b) = a.send(method.clone(), path, &[], b"x").await;
        assert_eq!(s, 403, "{method} {path}: {b}");
        assert!(b.contains("<Code>AccessDenied</Code>"), "{method} {path}: {b}");
    }
    // A copy from another namespace's prefix into the own one is refused too.
    let (s, b) = a
        .send(
            Method::PUT,
            "/mlpipeline/private-artifacts/team-a/copy",
            &[("x-amz-copy-source", "/mlpipeline/private-artifacts/team-b/secret")],
            b"",
        )
        .await;
    assert_eq!(s, 403, "{b}");
    // DeleteObjects: one key outside the own prefixes refuses the whole request.
    let del = |keys: &[&str]| {
        let objects: String = keys
            .iter()
            .map(|k| format!("<Object><Key>{k}</Key></Object>"))
            .collect();
        format!("<Delete><Quiet>true</Quiet>{objects}</Delete>").into_bytes()
    };
    let (s, b) = a
        .send(
            Method::POST,
            "/mlpipeline?delete",
            &[],
            &del(&["private-artifacts/team-a/run/x.txt", "private-artifacts/team-b/y"]),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(
        fake.seen.lock().unwrap().len(),
        seen,
        "a refused request reached the store"
    );
    let (s, b) = a
        .send(
            Method::POST,
            "/mlpipeline?delete",
            &[],
            &del(&["private-artifacts/team-a/run/x.txt"]),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(
        fake.seen
            .lock()
            .unwrap()
            .iter()
            .any(|(m, p, _)| m == "POST" && p == "/mlpipeline?delete"),
        "the allowed DeleteObjects did not reach the store"
    );

    // A wrong secret, and no signature at all.
    let wrong = Client {
        secret: "not-the-secret".into(),
        ..Client::new(&k, "team-a").await
    };
    let (s, b) = wrong
        .send(Method::GET, "/mlpipeline/private-artifacts/team-a/run/x.txt", &[], b"")
        .await;
    assert_eq!(s, 403);
    assert!(b.contains("<Code>SignatureDoesNotMatch</Code>"), "{b}");
    let r = a
        .http
        .get(format!("{}/mlpipeline/private-artifacts/team-a/run/x.txt", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("<Code>AccessDenied</Code>"));

    // One audit Event per request: the key's namespace as the user, the object in s3.kfsec.io.
    let (events, _) = crate::audit_events::audit_log(&k).await;
    let s3: Vec<_> = events
        .iter()
        .filter(|e| e["objectRef"]["apiGroup"] == "s3.kfsec.io")
        .collect();
    let put = s3
        .iter()
        .find(|e| e["verb"] == "create" && e["objectRef"]["name"] == "mlpipeline/private-artifacts/team-a/run/x.txt")
        .unwrap_or_else(|| panic!("no Event of the PUT in {s3:?}"));
    assert_eq!(put["user"]["username"], "s3:team-a");
    assert_eq!(put["objectRef"]["resource"], "objects");
    assert_eq!(put["objectRef"]["namespace"], "team-a");
    assert_eq!(put["responseStatus"]["code"], 200);
    assert!(
        s3.iter()
            .any(|e| e["objectRef"]["name"] == "mlpipeline/private-artifacts/team-b/x"
                && e["responseStatus"]["code"] == 403
                && e["annotations"]["authorization.k8s.io/decision"] == "forbid"),
        "no refused Event in {s3:?}"
    );

    // Metrics: answers by code under route "s3", decisions under surface "s3".
    let m = reqwest::Client::new()
        .get(format!("http://{}/metrics", k.running.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "kfsec_s3_requests_total{route=\"s3\",code=\"200\"}",
        "kfsec_s3_requests_total{route=\"s3\",code=\"403\"}",
        "kfsec_authz_decisions_total{surface=\"s3\",decision=\"deny\"}",
        "kfsec_authz_decisions_total{surface=\"s3\",decision=\"allow\"}",
    ] {
        assert!(m.contains(series), "{series} missing");
    }
    k.running.shutdown().await;
}

#[tokio::test]
async fn a_bad_content_md5_is_bad_digest_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (up, fake) = start_fake().await;
    let k = start(up, dir.path(), "").await;
    let a = Client::new(&k, "team-a").await;
    // base64(MD5("other bytes")) is not the MD5 of the body sent.
    use base64::Engine as _;
    let md5_of_other = base64::engine::general_purpose::STANDARD.encode([0u8; 16]);
    let (s, b) = a
        .send(
            Method::PUT,
            "/mlpipeline/private-artifacts/team-a/corrupt",
            &[("content-md5", &md5_of_other)],
            &vec![7u8; 200_000],
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("<Code>BadDigest</Code>"), "{b}");
    assert!(
        !fake
            .objects
            .lock()
            .unwrap()
            .contains_key("private-artifacts/team-a/corrupt"),
        "a corrupted body was stored upstream"
    );
    k.running.shutdown().await;
}

#[tokio::test]
async fn broad_listings_show_only_what_the_key_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let (up, fake) = start_fake().await;
    let k = start(up, dir.path(), "").await;
    for key in [
        "private-artifacts/team-a/1",
        "private-artifacts/team-b/2",
        "private/team-b/3",
        "shared/4",
        "elsewhere/5",
    ] {
        fake.objects.lock().unwrap().insert(key.into(), b"x".to_vec());
    }
    let a = Client::new(&k, "team-a").await;
    for path in [
        "/mlpipeline?list-type=2",
        "/mlpipeline?list-type=2&prefix=private-artifacts%2F",
    ] {
        let (s, b) = a.send(Method::GET, path, &[], b"").await;
        assert_eq!(s, 200, "{b}");
        assert!(b.contains("private-artifacts/team-a/1"), "{path}: {b}");
        assert!(!b.contains("team-b") && !b.contains("elsewhere"), "{path}: {b}");
    }
    let (_, b) = a.send(Method::GET, "/mlpipeline?list-type=2", &[], b"").await;
    assert!(b.contains("shared/4") && b.contains("<KeyCount>2</KeyCount>"), "{b}");
    k.running.shutdown().await;
}

/// The security review's findings 1, 2, 3, 5 and 8: what reaches the store is what the gateway
/// checked — a re-serialized Delete list, a rebuilt copy source, one value per parameter — and
/// store-internal metadata never does.
#[tokio::test]
async fn smuggled_keys_sources_and_metadata_never_reach_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (up, fake) = start_fake().await;
    let k = start(up, dir.path(), "").await;
    let a = Client::new(&k, "team-a").await;
    let seen = || fake.seen.lock().unwrap().len();
    let before = seen();
    // Finding 1: Keys the gateway's parse and a Go store's parse read differently.
    for body in [
        "<Delete><Object><Key>private-artifacts/team-a/x</Key><Key>private-artifacts/team-b/victim</Key></Object></Delete>",
        "<Delete><Object><Foo><Key>private-artifacts/team-a/x</Key></Foo><Key>private-artifacts/team-b/victim</Key></Object></Delete>",
        "<Delete><Object><Key>private-artifacts/team-a/x</Key><s3:Key xmlns:s3=\"http://s3.amazonaws.com/doc/2006-03-01/\">private-artifacts/team-b/victim</s3:Key></Object></Delete>",
    ] {
        let (s, b) = a.send(Method::POST, "/mlpipeline?delete", &[], body.as_bytes()).await;
        assert_eq!(s, 400, "{body}: {b}");
        assert!(b.contains("<Code>MalformedXML</Code>"), "{b}");
    }
    // Finding 2: MinIO's snowball extraction (a tar unpacked under its entries' names).
    for h in [
        "x-amz-meta-snowball-auto-extract",
        "X-Amz-Meta-Minio-Snowball-Prefix",
        "x-amz-snowball-extract",
    ] {
        let (s, b) = a
            .send(
                Method::PUT,
                "/mlpipeline/private-artifacts/team-a/t.tar",
                &[(h, "true")],
                b"tar",
            )
            .await;
        assert_eq!(s, 400, "{h}: {b}");
        assert!(b.contains("<Code>InvalidArgument</Code>"), "{b}");
    }
    // Finding 3: a repeated parameter (Ceph keeps the last) and other object subresources.
    for path in [
        "/mlpipeline?prefix=private-artifacts/team-a/&prefix=private-artifacts/team-b/",
        "/mlpipeline/private-artifacts/team-a/x?versionId=1&versionId=2",
    ] {
        let (s, b) = a.send(Method::GET, path, &[], b"").await;
        assert_eq!(s, 400, "{path}: {b}");
    }
    let (s, _) = a
        .send(
            Method::GET,
            "/mlpipeline/private-artifacts/team-a/x?lambdaArn=x",
            &[],
            b"",
        )
        .await;
    assert_eq!(s, 403);
    // Finding 5: what follows a raw `?` is not silently dropped.
    let (s, b) = a
        .send(
            Method::PUT,
            "/mlpipeline/private-artifacts/team-a/dst",
            &[(
                "x-amz-copy-source",
                "mlpipeline/private-artifacts/team-a/x?/../../team-b/victim",
            )],
            b"",
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(seen(), before, "a refused request reached the store");

    // What does reach the store: the Delete list re-serialized with its own Content-MD5…
    let (s, b) = a
        .send(
            Method::POST,
            "/mlpipeline?delete",
            &[],
            b"<Delete>\n<Quiet>true</Quiet><Object>\n <Key>private-artifacts/team-a/a&amp;b</Key></Object></Delete>",
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        String::from_utf8(fake.deletes.lock().unwrap().last().unwrap().clone()).unwrap(),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Quiet>true</Quiet><Object><Key>private-artifacts/team-a/a&amp;b</Key></Object></Delete>"
    );
    // (S3 requires an integrity header on DeleteObjects: the gateway computes it.)
    let md5 = fake.heads.lock().unwrap().last().unwrap()["content-md5"].clone();
    assert_eq!(md5.len(), 24, "{md5:?}");
    // …a copy source rebuilt from the checked parts, and none on a request that is no copy.
    let (s, b) = a
        .send(
            Method::PUT,
            "/mlpipeline/private-artifacts/team-a/dst",
            &[(
                "x-amz-copy-source",
                "mlpipeline/private-artifacts/team-a/a%3Fb%20c?versionId=v%2F1",
            )],
            b"",
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let head = fake.heads.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        head["x-amz-copy-source"],
        "/mlpipeline/private-artifacts/team-a/a%3Fb%20c?versionId=v%2F1"
    );
    fake.objects
        .lock()
        .unwrap()
        .insert("private-artifacts/team-a/page.html".into(), b"<script>".to_vec());
    let r = a
        .response(
            Method::GET,
            "/mlpipeline/private-artifacts/team-a/page.html?response-content-type=text%2Fhtml",
            &[("x-amz-copy-source", "mlpipeline/private-artifacts/team-b/victim")],
            b"",
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        fake.heads
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .get("x-amz-copy-source")
            .is_none()
    );
    // Finding 8: an object a browser opens is neither sniffed nor run as this origin.
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["content-security-policy"], "sandbox");
    k.running.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_503_in_s3_xml() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let k = start(closed, dir.path(), "  domain: s3.example.test\n").await;
    let a = Client::new(&k, "team-a").await;
    let (s, b) = a
        .send(Method::GET, "/mlpipeline/private-artifacts/team-a/x", &[], b"")
        .await;
    assert_eq!(s, 503, "{b}");
    assert!(b.contains("<Code>ServiceUnavailable</Code>"), "{b}");
    assert!(!b.contains("127.0.0.1") && !b.to_lowercase().contains("refused"), "{b}");
    // Virtual-host style: the certificate names `*.s3.example.test`, the bucket comes from the
    // host (the other namespace's key in it is refused, the own one reaches the dead store).
    let s3 = k.running.s3_addr.unwrap();
    let vhost = Client {
        http: reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(k.running.ca_pem.as_bytes()).unwrap()])
            .resolve("mlpipeline.s3.example.test", s3)
            .build()
            .unwrap(),
        base: format!("https://mlpipeline.s3.example.test:{}", s3.port()),
        ..Client::new(&k, "team-a").await
    };
    let (s, b) = vhost.send(Method::GET, "/private-artifacts/team-b/x", &[], b"").await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = vhost.send(Method::GET, "/private-artifacts/team-a/x", &[], b"").await;
    assert_eq!(s, 503, "{b}");
    k.running.shutdown().await;
}

#[tokio::test]
async fn broad_listings_take_no_chosen_marker_nor_another_delimiter() {
    let dir = tempfile::tempdir().unwrap();
    let (up, fake) = start_fake().await;
    let k = start(up, dir.path(), "").await;
    for key in ["private-artifacts/team-a/1", "private-artifacts/team-b/2"] {
        fake.objects.lock().unwrap().insert(key.into(), b"x".to_vec());
    }
    let a = Client::new(&k, "team-a").await;
    let before = fake.seen.lock().unwrap().len();
    // A filtered listing (broader than team-a's prefixes): a chosen marker would let the
    // client bisect team-b's keys; a bogus sealed one is refused too.
    for query in [
        "list-type=2&prefix=private-artifacts%2F&max-keys=1&start-after=private-artifacts%2Fteam-b%2F",
        "list-type=2&prefix=private-artifacts%2F&continuation-token=private-artifacts%2Fteam-b",
        "prefix=private-artifacts%2F&marker=private-artifacts%2Fteam-b",
        "versions&prefix=private-artifacts%2F&key-marker=a&version-id-marker=v",
        "uploads&prefix=private-artifacts%2F&key-marker=a&upload-id-marker=u",
        "list-type=2&start-after=kfsec1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "list-type=2&prefix=private-artifacts%2F&delimiter=-",
    ] {
        let (s, b) = a.send(Method::GET, &format!("/mlpipeline?{query}"), &[], b"").await;
        assert_eq!(s, 400, "{query}: {b}");
        assert!(b.contains("<Code>InvalidArgument</Code>"), "{query}: {b}");
        assert!(!b.contains("team-b"), "{query}: {b}");
    }
    assert_eq!(
        fake.seen.lock().unwrap().len(),
        before,
        "a refused listing reached the store"
    );
    // Empty markers and `/` are fine; inside an allowed prefix, a chosen marker is fine (the
    // prefix bounds the answer whatever the marker).
    for query in [
        "list-type=2&prefix=private-artifacts%2F&start-after=&delimiter=%2F",
        "list-type=2&prefix=private-artifacts%2Fteam-a%2F&start-after=private-artifacts%2Fteam-b%2F&delimiter=-",
    ] {
        let (s, b) = a.send(Method::GET, &format!("/mlpipeline?{query}"), &[], b"").await;
        assert_eq!(s, 200, "{query}: {b}");
        assert!(!b.contains("team-b/2"), "{query}: {b}");
    }
    k.running.shutdown().await;
}

#[tokio::test]
async fn an_empty_upload_is_checked_before_the_store_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let (up, fake) = start_fake().await;
    let k = start(up, dir.path(), "").await;
    let a = Client::new(&k, "team-a").await;
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let wrong_md5 = b64(&[0u8; 16]);
    let wrong_sha = b64(&[0u8; 32]);
    for (header, value, code) in [
        ("content-md5", wrong_md5.as_str(), "BadDigest"),
        ("x-amz-checksum-sha256", wrong_sha.as_str(), "BadDigest"),
    ] {
        let key = format!("private-artifacts/team-a/empty-{header}");
        let (s, b) = a
            .send(Method::PUT, &format!("/mlpipeline/{key}"), &[(header, value)], b"")
            .await;
        assert_eq!(s, 400, "{header}: {b}");
        assert!(b.contains(&format!("<Code>{code}</Code>")), "{header}: {b}");
        assert!(
            !fake
                .seen
                .lock()
                .unwrap()
                .iter()
                .any(|(m, p, _)| m == "PUT" && p.contains(&key)),
            "{header}: an empty upload reached the store before its check"
        );
    }
    // A good empty upload is stored.
    let (s, b) = a
        .send(Method::PUT, "/mlpipeline/private-artifacts/team-a/empty", &[], b"")
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        fake.objects.lock().unwrap().get("private-artifacts/team-a/empty"),
        Some(&Vec::new())
    );
    k.running.shutdown().await;
}
