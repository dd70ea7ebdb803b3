//! The IdP's discovery document against Dex v2.45's, field by field; every endpoint it lists
//! answering; and the claims of ID tokens and `/userinfo` following the granted scopes (a claim
//! whose scope was not granted is absent, never `null`), through the real endpoints.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::harness::*;
use crate::oidc::authorize;

/// Dex v2.45.0's discovery document for kfsec's default configuration (one password
/// connector, `oauth2.responseTypes` unset), with `password` among the grants when
/// `oauth2.passwordConnector` is set. Derived from dexidp/dex at tag v2.45.0:
/// `server/handlers.go` (`discovery`, `constructDiscovery`), `server/server.go` (`newServer`:
/// the grants are authorization_code, refresh_token, device_code and token-exchange, plus
/// password with a password connector, sorted; response types default to `code`) — the values
/// its `TestHandleDiscovery` (`server/handlers_test.go`) expects.
fn dex_v2_45(iss: &str, password_grant: bool) -> BTreeMap<&'static str, Value> {
    let mut grants = vec![
        "authorization_code",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:device_code",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    ];
    if password_grant {
        grants.push("password");
    }
    BTreeMap::from([
        ("issuer", json!(iss)),
        ("authorization_endpoint", json!(format!("{iss}/auth"))),
        ("token_endpoint", json!(format!("{iss}/token"))),
        ("jwks_uri", json!(format!("{iss}/keys"))),
        ("userinfo_endpoint", json!(format!("{iss}/userinfo"))),
        ("device_authorization_endpoint", json!(format!("{iss}/device/code"))),
        ("introspection_endpoint", json!(format!("{iss}/token/introspect"))),
        ("grant_types_supported", json!(grants)),
        ("response_types_supported", json!(["code"])),
        ("subject_types_supported", json!(["public"])),
        ("id_token_signing_alg_values_supported", json!(["RS256"])),
        ("code_challenge_methods_supported", json!(["S256", "plain"])),
        (
            "scopes_supported",
            json!(["openid", "email", "groups", "profile", "offline_access"]),
        ),
        (
            "token_endpoint_auth_methods_supported",
            json!(["client_secret_basic", "client_secret_post"]),
        ),
        (
            "claims_supported",
            json!([
                "iss",
                "sub",
                "aud",
                "iat",
                "exp",
                "email",
                "email_verified",
                "locale",
                "name",
                "preferred_username",
                "at_hash"
            ]),
        ),
    ])
}

/// Where kfsec's document differs from Dex's, and why.
enum Deviation {
    /// The key is absent: kfsec does not serve what it names.
    Absent(&'static str),
    /// This value is not in the list: kfsec does not serve it.
    Without(&'static str, &'static str),
    /// This value is added to the list: kfsec serves it.
    With(&'static str, &'static str),
}

const DEVIATIONS: [(Deviation, &str); 3] = [
    (
        Deviation::Absent("introspection_endpoint"),
        "kfsec does not serve token introspection (Dex's /token/introspect)",
    ),
    (
        Deviation::Without(
            "grant_types_supported",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        "kfsec does not serve the token-exchange grant",
    ),
    (
        Deviation::With("scopes_supported", "federated:id"),
        "kfsec honours federated:id (Dex does too, without listing it)",
    ),
];

/// A JSON value with its arrays sorted (the comparison is order-insensitive).
fn sorted(v: &Value) -> Value {
    match v {
        Value::Array(a) => {
            let mut items: Vec<String> = a.iter().map(|x| x.as_str().unwrap().to_owned()).collect();
            items.sort();
            json!(items)
        }
        other => other.clone(),
    }
}

async fn document(k: &Kfsec) -> BTreeMap<String, Value> {
    let r = http_client(&k.running.ca_pem)
        .get(format!("{}/dex/.well-known/openid-configuration", k.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn discovery_matches_dex_v2_45_field_by_field() {
    for (extra, password_grant) in [("", false), ("oauth2:\n  passwordConnector: local\n", true)] {
        let k = Kfsec::start(extra).await;
        let got = document(&k).await;
        let mut want: BTreeMap<String, Value> = dex_v2_45(&k.running.issuer, password_grant)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        for (d, _why) in &DEVIATIONS {
            match *d {
                Deviation::Absent(key) => {
                    want.remove(key);
                }
                Deviation::Without(key, value) => {
                    want.get_mut(key)
                        .unwrap()
                        .as_array_mut()
                        .unwrap()
                        .retain(|v| v != value);
                }
                Deviation::With(key, value) => {
                    want.get_mut(key).unwrap().as_array_mut().unwrap().push(json!(value));
                }
            }
        }
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "the same keys as Dex ({extra:?})"
        );
        for (key, value) in &want {
            assert_eq!(sorted(&got[key]), sorted(value), "{key} ({extra:?})");
        }
        // No grant is listed that /token refuses as unsupported.
        for grant in got["grant_types_supported"].as_array().unwrap() {
            let (status, e) = rp_token(&k, vec![("grant_type", grant.as_str().unwrap().into())]).await;
            assert_ne!(e["error"], "unsupported_grant_type", "{grant}: {status} {e}");
        }
        // And the one Dex lists that kfsec does not serve is refused as such.
        let (status, e) = rp_token(
            &k,
            vec![("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".into())],
        )
        .await;
        assert_eq!(
            (status, e["error"].as_str()),
            (400, Some("unsupported_grant_type")),
            "{e}"
        );
        k.stop().await;
    }
}

#[tokio::test]
async fn every_endpoint_discovery_lists_answers() {
    let k = Kfsec::start("").await;
    let doc = document(&k).await;
    let http = http_client(&k.running.ca_pem);
    // At the listener: the issuer's host is the listener's here, but say so explicitly.
    let at = |url: &Value| {
        let url = url.as_str().unwrap();
        assert!(url.starts_with(&k.running.issuer), "{url}");
        format!("{}/dex{}", k.base, &url[k.running.issuer.len()..])
    };
    let mut checked = Vec::new();
    for (key, url) in &doc {
        if !(key.ends_with("_endpoint") || key == "jwks_uri") {
            continue;
        }
        let (status, body) = match key.as_str() {
            // GET with no parameters: an error page (no client), not a 404.
            "authorization_endpoint" => {
                let r = http.get(at(url)).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
            "jwks_uri" => {
                let r = http.get(at(url)).send().await.unwrap();
                let status = r.status().as_u16();
                let keys: Value = r.json().await.unwrap();
                assert!(!keys["keys"].as_array().unwrap().is_empty());
                (status, keys.to_string())
            }
            "userinfo_endpoint" => {
                let r = http.get(at(url)).send().await.unwrap();
                assert_eq!(r.headers()["www-authenticate"], "Bearer");
                (r.status().as_u16(), r.text().await.unwrap())
            }
            "token_endpoint" => {
                let r = http
                    .post(at(url))
                    .basic_auth("rp-test", Some("rp-secret-0123456789"))
                    .form(&[("grant_type", "authorization_code"), ("code", "nope")])
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }
            "device_authorization_endpoint" => {
                let r = http
                    .post(at(url))
                    .form(&[
                        ("client_id", "rp-test"),
                        ("client_secret", "rp-secret-0123456789"),
                        ("scope", "openid email"),
                    ])
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap();
                assert!(v["device_code"].is_string() && v["user_code"].is_string(), "{v}");
                (status, v.to_string())
            }
            other => panic!("discovery lists {other}, which this test does not know how to call"),
        };
        let want = match key.as_str() {
            "authorization_endpoint" => 400,
            "userinfo_endpoint" => 401,
            "token_endpoint" => 400,
            _ => 200,
        };
        assert_eq!(status, want, "{key}: {body}");
        checked.push(key.clone());
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "authorization_endpoint",
            "device_authorization_endpoint",
            "jwks_uri",
            "token_endpoint",
            "userinfo_endpoint"
        ]
    );
}

/// The claims each scope brings, as Dex v2.45 `newIDToken` (server/oauth2.go) sets them for
/// the harness's static user (user name `user1`, no separate preferred user name).
fn scoped_claims() -> [(&'static str, Vec<(&'static str, Value)>); 3] {
    [
        (
            "profile",
            vec![("name", json!("user1")), ("preferred_username", json!("user1"))],
        ),
        ("email", vec![("email", json!(USER)), ("email_verified", json!(true))]),
        ("groups", vec![("groups", json!(["team-a"]))]),
    ]
}

#[tokio::test]
async fn claims_follow_the_granted_scopes_in_id_tokens_and_userinfo() {
    let k = Kfsec::start("").await;
    let http = http_client(&k.running.ca_pem);
    for scopes in [
        "openid",
        "openid profile",
        "openid email",
        "openid groups",
        "openid profile email",
        "openid email groups",
        "openid profile email groups",
    ] {
        let mut b = k.client();
        let auth = format!(
            "/dex/auth?client_id=rp-test&redirect_uri=https%3A%2F%2Frp.example%2Fcb&response_type=code&scope={}&state=st",
            scopes.replace(' ', "+")
        );
        let (code, _) = authorize(&mut b, &auth).await;
        let (status, t) = rp_token(
            &k,
            vec![
                ("grant_type", "authorization_code".into()),
                ("code", code),
                ("redirect_uri", "https://rp.example/cb".into()),
            ],
        )
        .await;
        assert_eq!(status, 200, "{scopes}: {t}");
        let id = id_token_claims(&t);
        let r = http
            .get(format!("{}/dex/userinfo", k.base))
            .bearer_auth(t["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scopes}");
        let info: Value = r.json().await.unwrap();
        assert_eq!(info["sub"], id["sub"], "{scopes}");
        assert_eq!(info["iss"], k.running.issuer, "{scopes}");
        for (what, claims) in [("ID token", &id), ("userinfo", &info)] {
            let obj = claims.as_object().unwrap();
            assert!(
                obj.values().all(|v| !v.is_null()),
                "{what} for {scopes:?} has a null claim: {claims}"
            );
            for (scope, expected) in scoped_claims() {
                let granted = scopes.split(' ').any(|s| s == scope);
                for (name, value) in expected {
                    if granted {
                        assert_eq!(obj.get(name), Some(&value), "{what}, {scopes:?}: {name}");
                    } else {
                        assert!(
                            !obj.contains_key(name),
                            "{what}, {scopes:?}: {name} without {scope}: {claims}"
                        );
                    }
                }
            }
        }
        // Without the `email` scope no claim discloses the address (kfsec's own `kfsec_user`
        // is sealed), in the ID token or the access token.
        if !scopes.split(' ').any(|s| s == "email") {
            for jwt in ["id_token", "access_token"] {
                let claims = jwt_claims(t[jwt].as_str().unwrap()).to_string();
                assert!(!claims.contains(USER), "{jwt} for {scopes:?}: {claims}");
            }
        }
        // userinfo carries no kfsec bookkeeping claims.
        assert!(
            info.as_object().unwrap().keys().all(|c| !c.starts_with("kfsec_")),
            "{info}"
        );
    }
}
