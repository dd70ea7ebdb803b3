//! Real kubectl 1.32 against a running kfsec for the verbs beyond CRUD: `kubectl create token`
//! (TokenRequest; the tokens work wherever `kfsec token create`'s do: the front door,
//! TokenReview, Pipelines with `pipelines.kubeflow.org`), `kubectl auth whoami` (SelfSubjectReview)
//! for a client-certificate admin, a bearer-token user and an impersonated user, and the
//! Forbidden line a user without the grant sees.

use crate::harness::*;
use crate::rbac::Kubectl;

/// A kubeconfig for [`USER`] with a bearer ID token (password grant of `rp-test`, accepted as a
/// bearer through `bearerAudiences`), next to the admin one.
pub(crate) async fn user_kubectl(k: &Kfsec, dir: &std::path::Path) -> Kubectl {
    let id_token = password_id_token(k, USER, PASSWORD).await;
    let path = dir.join("user.kubeconfig");
    std::fs::copy(k._dir.path().join("admin.kubeconfig"), &path).unwrap();
    let kc = Kubectl::with_kubeconfig(&path);
    let token = format!("--token={id_token}");
    let (code, _, err) = kc.run(&["config", "set-credentials", "user1", &token], None).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kc
        .run(&["config", "set-context", "--current", "--user=user1"], None)
        .await;
    assert_eq!(code, 0, "{err}");
    kc
}

fn claims(token: &str) -> serde_json::Value {
    jwt_claims(token.trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_token_and_whoami() {
    let k = Kfsec::start("bearerAudiences: [rp-test]\noauth2:\n  passwordConnector: local\n").await;
    let admin = Kubectl::new(k._dir.path());
    let tmp = tempfile::tempdir().unwrap();
    let user = user_kubectl(&k, tmp.path()).await;
    for args in [
        vec!["create", "namespace", "team"],
        vec!["create", "serviceaccount", "robot", "-n", "team"],
    ] {
        let (code, out, err) = admin.run(&args, None).await;
        assert_eq!(code, 0, "{out}{err}");
    }

    // kubectl create token: defaults (audience kfsec, one hour).
    let (code, token, err) = admin.run(&["create", "token", "robot", "-n", "team"], None).await;
    assert_eq!(code, 0, "{err}");
    let c = claims(&token);
    assert_eq!(c["sub"], "system:serviceaccount:team:robot");
    assert_eq!(c["aud"], serde_json::json!(["kfsec"]));
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 3600);
    // … accepted at the front door as the account (the 403 names who it is) …
    let http = http_client(&k.running.ca_pem);
    let r = http
        .get(format!("{}/api/v1/namespaces/team/configmaps", k.base))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("User \"system:serviceaccount:team:robot\" cannot list"),
        "{body}"
    );
    // … and by TokenReview, with the account's groups.
    let review = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token.trim()}});
    let (code, out, err) = admin
        .run(
            &[
                "create",
                "--raw",
                "/apis/authentication.k8s.io/v1/tokenreviews",
                "-f",
                "-",
            ],
            Some(&review.to_string()),
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(r["status"]["user"]["username"], "system:serviceaccount:team:robot");
    assert_eq!(
        r["status"]["user"]["groups"],
        serde_json::json!([
            "system:serviceaccounts",
            "system:serviceaccounts:team",
            "system:authenticated"
        ])
    );

    // --audience for Kubeflow Pipelines and --duration 10m: accepted on the Pipelines API only.
    let (code, kfp, err) = admin
        .run(
            &[
                "create",
                "token",
                "robot",
                "-n",
                "team",
                "--audience",
                "pipelines.kubeflow.org",
                "--duration",
                "10m",
            ],
            None,
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let c = claims(&kfp);
    assert_eq!(c["aud"], serde_json::json!(["pipelines.kubeflow.org"]));
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 600);
    let status = |path: &'static str, t: String| {
        let http = http.clone();
        let url = format!("{}{path}", k.base);
        async move { http.get(url).bearer_auth(t).send().await.unwrap().status().as_u16() }
    };
    assert_ne!(
        status("/pipeline/apis/v2beta1/healthz", kfp.trim().to_owned()).await,
        401
    );
    assert_ne!(status("/apis/v1beta1/workflows", kfp.trim().to_owned()).await, 401);
    assert_eq!(
        status("/api/v1/namespaces/team/configmaps", kfp.trim().to_owned()).await,
        401
    );
    // A longer duration is capped at 48 hours; -o json shows the TokenRequest kfsec answered.
    let (code, out, err) = admin
        .run(
            &[
                "create",
                "token",
                "robot",
                "-n",
                "team",
                "--duration",
                "100h",
                "-o",
                "json",
            ],
            None,
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let tr: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(tr["kind"], "TokenRequest");
    assert_eq!(tr["spec"]["expirationSeconds"], 172_800);
    assert!(tr["status"]["expirationTimestamp"].is_string());

    // kube-apiserver's refusals, as kubectl prints them.
    let (code, _, err) = admin
        .run(&["create", "token", "robot", "-n", "team", "--duration", "1m"], None)
        .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"),
        "{err}"
    );
    let (code, _, err) = admin.run(&["create", "token", "ghost", "-n", "team"], None).await;
    assert_eq!(code, 1);
    assert!(err.contains("serviceaccounts \"ghost\" not found"), "{err}");
    // Bound to a Secret: works while the secret exists, with its uid in the token.
    let (code, _, err) = admin
        .run(
            &["create", "secret", "generic", "s", "-n", "team", "--from-literal=a=b"],
            None,
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, bound, err) = admin
        .run(
            &[
                "create",
                "token",
                "robot",
                "-n",
                "team",
                "--bound-object-kind",
                "Secret",
                "--bound-object-name",
                "s",
            ],
            None,
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(claims(&bound)["kubernetes.io"]["secret"]["name"], "s");
    assert_eq!(
        status("/api/v1/namespaces/team/configmaps", bound.trim().to_owned()).await,
        403
    );
    let (code, _, err) = admin.run(&["delete", "secret", "s", "-n", "team"], None).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        status("/api/v1/namespaces/team/configmaps", bound.trim().to_owned()).await,
        401
    );
    assert_eq!(
        status("/api/v1/namespaces/team/configmaps", token.trim().to_owned()).await,
        403
    );
    let (code, _, err) = admin
        .run(
            &[
                "create",
                "token",
                "robot",
                "-n",
                "team",
                "--bound-object-kind",
                "Secret",
                "--bound-object-name",
                "s",
            ],
            None,
        )
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("secrets \"s\" not found"), "{err}");
    let (code, _, err) = admin
        .run(
            &[
                "create",
                "token",
                "robot",
                "-n",
                "team",
                "--bound-object-kind",
                "Node",
                "--bound-object-name",
                "n",
            ],
            None,
        )
        .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot bind token to object of type /v1, Kind=Node"),
        "{err}"
    );
    // No token passes for an ID token of one of kfsec's OAuth2 clients.
    for client in ["kfsec-cli", "rp-test"] {
        let (code, _, err) = admin
            .run(&["create", "token", "robot", "-n", "team", "--audience", client], None)
            .await;
        assert_eq!(code, 1);
        assert!(
            err.contains(&format!(
                "spec.audiences: Invalid value: \"{client}\": names an OAuth2 client of this issuer"
            )),
            "{err}"
        );
    }
    // A user without the grant gets kubectl's Forbidden line.
    let (code, _, err) = user.run(&["create", "token", "robot", "-n", "team"], None).await;
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "serviceaccounts \"robot\" is forbidden: User \"{USER}\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"team\""
        )),
        "{err}"
    );
    // Deleting the account voids its tokens.
    let (code, _, err) = admin
        .run(&["delete", "serviceaccount", "robot", "-n", "team"], None)
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        status("/api/v1/namespaces/team/configmaps", token.trim().to_owned()).await,
        401
    );

    // kubectl auth whoami: the client-certificate admin, the bearer user, impersonation.
    let (code, out, err) = admin.run(&["auth", "whoami"], None).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Username") && out.contains("kfsec-admin"), "{out}");
    assert!(
        out.contains("system:masters") && out.contains("system:authenticated"),
        "{out}"
    );
    let (code, out, err) = user.run(&["auth", "whoami", "-o", "json"], None).await;
    assert_eq!(code, 0, "{err}");
    let who: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(who["kind"], "SelfSubjectReview");
    assert_eq!(who["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(who["status"]["userInfo"]["username"], USER);
    assert_eq!(
        who["status"]["userInfo"]["groups"],
        serde_json::json!(["team-a", "system:authenticated"])
    );
    let (code, out, err) = admin
        .run(
            &["auth", "whoami", "--as", "someone@example.org", "--as-group", "team-b"],
            None,
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("someone@example.org") && out.contains("team-b"), "{out}");
    let (code, _, err) = user.run(&["auth", "whoami", "--as", "someone@example.org"], None).await;
    assert_eq!(code, 1);
    // kubectl words any refusal of the review so (the 403 for the impersonation comes first).
    assert!(
        err.contains(
            "the selfsubjectreviews API is not enabled in the cluster or you do not have permission to call it"
        ),
        "{err}"
    );
    k.running.shutdown().await;
}

/// Through the front door: the trailing-slash discovery paths answer as kube-apiserver's (the
/// Python client asks `/version/`), unknown paths under the API's prefixes are a 404 `Status`,
/// and `watch=True` streams.
#[tokio::test]
async fn discovery_paths_and_watch_spellings_through_the_front_door() {
    let k = Kfsec::start("").await;
    let admin = Kubectl::new(k._dir.path());
    let get = |path: &str| {
        let admin = &admin;
        let path = path.to_owned();
        async move { admin.run(&["get", "--raw", &path], None).await }
    };
    for (path, key, want) in [
        ("/version/", "major", "1"),
        ("/api/", "kind", "APIVersions"),
        ("/apis/", "kind", "APIGroupList"),
        ("/api/v1/", "groupVersion", "v1"),
        ("/apis/kubeflow.org/v1/", "groupVersion", "kubeflow.org/v1"),
    ] {
        let (code, out, err) = get(path).await;
        assert_eq!(code, 0, "{path}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[key], want, "{path}: {v}");
    }
    // Unknown API paths: kube-apiserver's 404 Status (JSON, never an HTML page).
    let http = http_client(&k.running.ca_pem);
    for path in ["/version/x", "/apis/nope.io/v1/things", "/api/v2/"] {
        let r = http.get(format!("{}{path}", k.base)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("application/json"), "{path}: {ct}");
        let (code, _, err) = get(path).await;
        assert_eq!(code, 1, "{path}");
        assert!(
            err.contains("the server could not find the requested resource"),
            "{path}: {err}"
        );
    }
    // The Python client's spelling of watch: a stream of events, not a list.
    for args in [
        vec!["create", "namespace", "w"],
        vec!["create", "configmap", "c1", "-n", "w"],
    ] {
        let (code, _, err) = admin.run(&args, None).await;
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = get("/api/v1/namespaces/w/configmaps?watch=True&timeoutSeconds=1").await;
    assert_eq!(code, 0, "{err}");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or("")).unwrap();
    assert_eq!(
        (&first["type"], &first["object"]["metadata"]["name"]),
        (&serde_json::json!("ADDED"), &serde_json::json!("c1")),
        "{out}"
    );
    k.running.shutdown().await;
}
