//! The OpenAPI documents through the real front door (TLS, gateway): kubectl 1.32's `explain`
//! and validated `create -f` of a review kind, kubectl's cache of the hashed v3 documents, and
//! kube-apiserver's caching answers (ETag, 304, immutable hashed URLs, 301 for a stale hash,
//! 404 `Status` for an unknown group-version, 406 for a media type it cannot give).

use crate::harness::*;
use crate::rbac::Kubectl;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_with_kubectl_and_http_caching() {
    let k = Kfsec::start("bearerAudiences: [rp-test]\noauth2:\n  passwordConnector: local\n").await;
    let admin = Kubectl::new(k._dir.path());

    let (code, out, err) = admin.run(&["explain", "profile.spec.owner"], None).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("FIELD: owner <Object>") && out.contains("kind\t<string>"),
        "{out}"
    );
    // The second explain reads the hashed document from kubectl's HTTP cache (client-go's
    // httpcache marks such answers X-From-Cache).
    let hashed = |log: &str| {
        log.split("GET https://")
            .find(|r| {
                r.starts_with(&format!(
                    "{}/openapi/v3/api/v1?hash=",
                    k.base.trim_start_matches("https://")
                ))
            })
            .map(|r| r.contains("X-From-Cache: 1"))
    };
    let (code, _, err) = admin.run(&["explain", "configmap.data", "-v=8"], None).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(hashed(&err), Some(false), "{err}");
    let (code, out, err) = admin.run(&["explain", "configmap.data", "-v=8"], None).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("FIELD: data <map[string]string>"), "{out}");
    assert_eq!(hashed(&err), Some(true), "fetched again:\n{err}");

    let review = "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec:\n  token: nonsense\n";
    let (code, out, err) = admin
        .run(
            &["create", "-f", "-", "-o", "jsonpath={.status.authenticated}"],
            Some(review),
        )
        .await;
    assert_eq!((code, out.as_str()), (0, "false"), "{err}");

    let http = http_client(&k.running.ca_pem);
    let token = password_id_token(&k, USER, PASSWORD).await;
    let get = |path: &str, accept: Option<&str>, etag: Option<&str>| {
        let mut r = http.get(format!("{}{path}", k.base)).bearer_auth(&token);
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        if let Some(e) = etag {
            r = r.header("if-none-match", e);
        }
        r.send()
    };
    let r = get("/openapi/v3", None, None).await.unwrap();
    assert_eq!(r.status(), 200);
    let index: serde_json::Value = r.json().await.unwrap();
    let url = index["paths"]["apis/kubeflow.org/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = get(&url, Some("application/json"), None).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "public, immutable");
    assert!(r.headers().contains_key("expires"));
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(format!("\"{}\"", url.rsplit('=').next().unwrap()), etag);
    let doc: serde_json::Value = r.json().await.unwrap();
    assert!(doc["components"]["schemas"]["org.kubeflow.v1.Profile"].is_object());
    let r = get(&url, None, Some(&etag)).await.unwrap();
    assert_eq!(r.status(), 304);
    let redirect = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(k.running.ca_pem.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = redirect
        .get(format!("{}/openapi/v3/apis/kubeflow.org/v1?hash=0123", k.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], url.as_str());
    let r = get("/openapi/v3/apis/nope.example.com/v1", None, None).await.unwrap();
    assert_eq!(r.status(), 404);
    let s: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (s["kind"].as_str(), s["reason"].as_str()),
        (Some("Status"), Some("NotFound"))
    );
    let r = get(
        "/openapi/v2",
        Some("application/com.github.proto-openapi.spec.v2@v1.0+protobuf"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
    );
    assert_eq!(get("/openapi/v2", Some("text/html"), None).await.unwrap().status(), 406);
    // Anonymous callers get nothing.
    let r = http.get(format!("{}/openapi/v2", k.base)).send().await.unwrap();
    assert_eq!(r.status(), 401);
}
