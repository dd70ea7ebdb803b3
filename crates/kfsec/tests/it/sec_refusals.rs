//! Security regression suite, refusals (issue 10): the front door's own refusals are written by
//! the surface that owns the path (Kubernetes `Status`, KFP error JSON — KFP's persistence-agent
//! paths under `/apis/v1beta1/` included —, KFAM JSON, an HTML page elsewhere), each with
//! `Cache-Control: no-store` and a 401 with `WWW-Authenticate`; a failure of kfsec (here a
//! corrupt IdP record) is a 500 with a generic message and an incident id, never internal text.

use serde_json::Value;

use crate::harness::*;

#[tokio::test]
async fn the_front_doors_refusals_are_rendered_by_the_surface_that_owns_the_path() {
    let k = Kfsec::start("").await;
    let b = k.client();
    for (method, path, family) in [
        ("GET", "/api/v1/namespaces", "k8s"),
        ("GET", "/apis/kubeflow.org/v1/profiles", "k8s"),
        ("GET", "/version", "k8s"),
        ("GET", "/pipeline/apis/v1beta1/experiments", "kfp"),
        ("POST", "/apis/v1beta1/workflows", "kfp"),
        ("POST", "/apis/v1beta1/scheduledworkflows", "kfp"),
        ("GET", "/kfam/v1/bindings", "kfam"),
        ("POST", "/app/x", "html"),
    ] {
        let r = b
            .http
            .request(method.parse().unwrap(), b.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"kfsec\"", "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        let text = r.text().await.unwrap();
        if family == "html" {
            assert!(ct.starts_with("text/html"), "{path}: {ct}");
            assert!(text.contains("Unauthorized"), "{path}: {text}");
            continue;
        }
        assert!(ct.starts_with("application/json"), "{path}: {ct}");
        let v: Value = serde_json::from_str(&text).unwrap();
        match family {
            "k8s" => {
                assert_eq!(
                    (
                        v["kind"].as_str(),
                        v["status"].as_str(),
                        v["reason"].as_str(),
                        v["code"].as_u64()
                    ),
                    (Some("Status"), Some("Failure"), Some("Unauthorized"), Some(401)),
                    "{path}: {v}"
                );
                assert_eq!(v["message"], "Unauthorized", "{path}: {v}");
            }
            "kfp" => {
                assert_eq!(v["code"], 16, "{path}: {v}");
                assert_eq!(
                    v["details"][0]["message"],
                    "Failed to check authorization. User identity is empty in the request header",
                    "{path}: {v}"
                );
            }
            _ => assert_eq!(v["error"], "Unauthorized", "{path}: {v}"),
        }
    }
    k.running.shutdown().await;
}

#[tokio::test]
async fn an_idp_failure_is_a_server_error_with_an_incident_id_and_no_internal_text() {
    let k = Kfsec::start("").await;
    let b = k.client();
    // A refresh-token record that cannot be decoded.
    let token = "a-refresh-token-whose-record-is-corrupt";
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    k.running
        .store
        .put(
            &format!("/kfsec/idp/refresh/{hex}"),
            b"{\"grant\": {\"ema".to_vec(),
            None,
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = b
            .http
            .post(b.url("/dex/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", token),
                ("client_id", "kfsec-cli"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        assert_eq!(r.headers()["cache-control"], "no-store");
        let text = r.text().await.unwrap();
        for internal in ["corrupt", "EOF", "/kfsec/", "record", "decode", "grant"] {
            assert!(!text.contains(internal), "leaks {internal:?}: {text}");
        }
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"], "server_error", "{v}");
        let d = v["error_description"].as_str().unwrap();
        let id = kfsec_types::Incident::quoted_in(d).unwrap_or_else(|| panic!("no incident id: {d}"));
        ids.push(id.to_owned());
    }
    assert_ne!(ids[0], ids[1]);
    k.running.shutdown().await;
}

/// A form body the IdP cannot read — not a form, over 64 KiB — is refused in the endpoint's
/// own format: OAuth2's error JSON (`invalid_request`) at the token and device authorization
/// endpoints, an HTML page at the browser forms; never axum's plain text.
#[tokio::test]
async fn unreadable_idp_forms_are_refused_in_their_protocols_format() {
    let k = Kfsec::start("").await;
    let b = k.client();
    let big = format!("grant_type=password&username={}", "a".repeat(70 * 1024));
    let form = "application/x-www-form-urlencoded";
    for (path, content_type, body, status, family) in [
        ("/dex/token", "application/json", "{}".to_owned(), 415, "oauth"),
        ("/dex/token", form, big.clone(), 413, "oauth"),
        ("/dex/device/code", "text/plain", "client_id=x".to_owned(), 415, "oauth"),
        ("/dex/device/code", form, big.clone(), 413, "oauth"),
        ("/dex/approval", "application/json", "{}".to_owned(), 415, "html"),
        (
            "/dex/device/auth/verify_code",
            "text/plain",
            "user_code=x".to_owned(),
            415,
            "html",
        ),
        ("/dex/auth/local/login", form, big.clone(), 413, "html"),
    ] {
        let r = b
            .http
            .post(b.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path} {content_type}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        let text = r.text().await.unwrap();
        if family == "html" {
            assert!(ct.starts_with("text/html"), "{path}: {ct}: {text}");
            assert!(text.contains("form"), "{path}: {text}");
        } else {
            assert!(ct.starts_with("application/json"), "{path}: {ct}: {text}");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}"));
            assert_eq!(v["error"], "invalid_request", "{path}: {v}");
            assert!(!text.contains("Failed to"), "axum's text leaked: {text}");
        }
    }
}
