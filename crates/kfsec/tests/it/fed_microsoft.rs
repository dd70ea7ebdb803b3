//! The `microsoft` connector (Entra ID) against a Graph-shaped provider of our own
//! ([`crate::fake_entra`]), pointed at it by Dex's `apiURL` / `graphURL`: identity from `/me`,
//! groups by name and id, paging, batches above Graph's 1000-id limit, allowed groups, refresh
//! and revocation, Graph's errors, slow and dead upstreams.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kfsec_idp::connector::config::{OpenContext, open};
use kfsec_idp::connector::{CallbackConnector, ConnectorError, ConnectorKind, Scopes, UpstreamIdentity};
use kfsec_types::SequenceRng;
use serde_json::{Value, json};

use crate::fake_entra::{CLIENT_ASSERTION, CLIENT_ID, CLIENT_SECRET, FakeEntra, Group, TENANT, User};
use crate::harness::{id_token_claims, rp_token};

const ISSUER: &str = "https://kf.example.test/dex";
const CALLBACK: &str = "https://kf.example.test/dex/callback";
const ALICE: &str = "6e1c7f0a-0000-4000-8000-00000000a11c";
const BOB: &str = "6e1c7f0a-0000-4000-8000-000000000b0b";

const GROUPS: Scopes = Scopes {
    groups: true,
    offline_access: false,
};
const OFFLINE: Scopes = Scopes {
    groups: true,
    offline_access: true,
};

fn alice() -> User {
    User {
        id: ALICE.into(),
        display_name: "Alice Smith".into(),
        upn: "Alice.Smith@Contoso.example".into(),
        groups: vec![
            Group::new("g-admins", "kubeflow-admins", true),
            Group::new("g-team", "team-ml", false),
            Group::new("g-all", "everyone", true),
        ],
    }
}

fn bob() -> User {
    User {
        id: BOB.into(),
        display_name: "Bob".into(),
        upn: "bob@contoso.example".into(),
        groups: vec![Group::new("g-team", "team-ml", false)],
    }
}

async fn fake() -> FakeEntra {
    FakeEntra::start(vec![alice(), bob()]).await
}

/// The connector as `config::open` builds it from a Dex entry, pointed at `fake`.
fn connector(fake: &FakeEntra, extra: Value) -> Arc<dyn CallbackConnector> {
    let mut config = json!({
        "clientID": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "redirectURI": CALLBACK,
        "tenant": TENANT,
        "apiURL": fake.base,
        "graphURL": format!("{}/", fake.base),
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            config.as_object_mut().unwrap().remove(k);
        } else {
            config[k] = v.clone();
        }
    }
    let ctx = OpenContext::new(ISSUER, Duration::from_secs(10));
    let c = open("microsoft", "entra", "Entra ID", config, &ctx).unwrap();
    assert_eq!(c.type_name, "microsoft");
    match c.kind {
        ConnectorKind::Callback(c) => c,
        _ => panic!("the microsoft connector is a callback connector"),
    }
}

/// A browser's trip: kfsec's login URL → the provider (which signs the user in and redirects
/// back) → the callback with the provider's query.
async fn login(c: &dyn CallbackConnector, scopes: Scopes) -> Result<UpstreamIdentity, ConnectorError> {
    let start = c
        .login_url(scopes, CALLBACK, "kfsec-state", &SequenceRng::default())
        .await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http.get(&start.url).send().await.unwrap();
    assert!(resp.status().is_redirection(), "{}", resp.status());
    let back = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    assert!(back.as_str().starts_with(CALLBACK), "{back}");
    let query: HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!(query["state"], "kfsec-state");
    c.callback(scopes, CALLBACK, &start.pending, &query).await
}

#[tokio::test]
async fn login_maps_graph_me_to_the_identity() {
    let fake = fake().await;
    let c = connector(&fake, json!({}));
    let id = login(c.as_ref(), Scopes::default()).await.unwrap();
    assert_eq!(id.user_id, ALICE);
    assert_eq!(id.username, "Alice Smith");
    // userPrincipalName, as written (Dex lowercases only with emailToLowercase).
    assert_eq!(id.email, "Alice.Smith@Contoso.example");
    assert!(id.email_verified);
    assert_eq!(id.preferred_username, "");
    assert!(id.groups.is_empty(), "no groups scope, no groups: {:?}", id.groups);
    let data = id.connector_data.clone().unwrap();
    assert!(data["accessToken"].as_str().unwrap().starts_with("at-"));
    assert!(data["expiry"].as_str().unwrap().ends_with('Z'));
    assert!(!format!("{id:?}").contains("at-"), "Debug hides the upstream token");
    let s = fake.state();
    assert_eq!(s.me_selects, ["id,displayName,userPrincipalName"]);
    assert!(s.member_groups_bodies.is_empty());
}

#[tokio::test]
async fn email_is_lowercased_and_preferred_username_set_when_configured() {
    let fake = fake().await;
    let c = connector(
        &fake,
        json!({"emailToLowercase": true, "preferredUsernameField": "email"}),
    );
    let id = login(c.as_ref(), Scopes::default()).await.unwrap();
    assert_eq!(id.email, "alice.smith@contoso.example");
    assert_eq!(id.preferred_username, "alice.smith@contoso.example");
    for (field, want) in [
        ("name", "Alice Smith"),
        ("mailNickname", "Alice.Smith"),
        ("onPremisesSamAccountName", "ALICE.SMITH"),
    ] {
        let c = connector(&fake, json!({"preferredUsernameField": field}));
        let id = login(c.as_ref(), Scopes::default()).await.unwrap();
        assert_eq!(id.preferred_username, want, "{field}");
        assert_eq!(id.email, "Alice.Smith@Contoso.example");
    }
    let selects = fake.state().me_selects.clone();
    assert_eq!(
        selects,
        [
            "id,displayName,userPrincipalName",
            "id,displayName,userPrincipalName",
            "id,displayName,userPrincipalName,mailNickname",
            "id,displayName,userPrincipalName,onPremisesSamAccountName",
        ]
    );
}

#[tokio::test]
async fn scopes_sent_to_microsoft() {
    let fake = fake().await;
    let c = connector(
        &fake,
        json!({"promptType": "select_account", "domainHint": "contoso.example"}),
    );
    login(c.as_ref(), Scopes::default()).await.unwrap();
    login(c.as_ref(), GROUPS).await.unwrap();
    login(c.as_ref(), OFFLINE).await.unwrap();
    let s = fake.state();
    let scopes: Vec<&str> = s.authorize.iter().map(|q| q["scope"].as_str()).collect();
    assert_eq!(
        scopes,
        [
            "user.read",
            "user.read directory.read.all",
            "user.read directory.read.all offline_access"
        ]
    );
    let q = &s.authorize[0];
    assert_eq!(q["prompt"], "select_account");
    assert_eq!(q["domain_hint"], "contoso.example");
    assert_eq!(q["redirect_uri"], CALLBACK);
    assert_eq!(q["code_challenge_method"], "S256");
    // The code is redeemed with the PKCE verifier and the client secret in the body.
    let f = &s.token_forms[0];
    assert_eq!(f["grant_type"], "authorization_code");
    assert!(f["code_verifier"].len() >= 43);
    assert_eq!(f["client_secret"], CLIENT_SECRET);
    // Only the offline login got an upstream refresh token.
    assert_eq!(s.token_forms.len(), 3);
}

#[tokio::test]
async fn groups_by_name_and_by_id() {
    let fake = fake().await;
    let by_name = login(connector(&fake, json!({})).as_ref(), GROUPS).await.unwrap();
    assert_eq!(by_name.groups, ["kubeflow-admins", "team-ml", "everyone"]);
    assert_eq!(fake.state().by_ids_sizes, [3]);
    let by_id = login(connector(&fake, json!({"groupNameFormat": "id"})).as_ref(), GROUPS)
        .await
        .unwrap();
    assert_eq!(by_id.groups, ["g-admins", "g-team", "g-all"]);
    assert_eq!(fake.state().by_ids_sizes, [3], "ids need no name lookup");
}

#[tokio::test]
async fn only_security_groups_is_sent_to_graph() {
    let fake = fake().await;
    let all = login(connector(&fake, json!({})).as_ref(), GROUPS).await.unwrap();
    let security = login(connector(&fake, json!({"onlySecurityGroups": true})).as_ref(), GROUPS)
        .await
        .unwrap();
    assert_eq!(all.groups.len(), 3);
    assert_eq!(security.groups, ["kubeflow-admins", "everyone"]);
    let s = fake.state();
    assert_eq!(
        s.member_groups_bodies,
        [
            json!({"securityEnabledOnly": false}),
            json!({"securityEnabledOnly": true})
        ]
    );
}

#[tokio::test]
async fn users_in_2500_groups_get_every_name_in_batches_of_1000() {
    let mut many = alice();
    many.groups = (0..2500)
        .map(|i| Group::new(&format!("id-{i:04}"), &format!("group-{i:04}"), true))
        .collect();
    let fake = FakeEntra::start(vec![many]).await;
    fake.state().page_size = 1000;
    let id = login(connector(&fake, json!({})).as_ref(), GROUPS).await.unwrap();
    assert_eq!(id.groups.len(), 2500);
    assert_eq!(id.groups[0], "group-0000");
    assert_eq!(id.groups[2499], "group-2499");
    let s = fake.state();
    // getMemberGroups paged by @odata.nextLink (3 pages); getByIds in batches Graph accepts.
    assert_eq!(
        s.graph_paths
            .iter()
            .filter(|p| p.as_str() == "/v1.0/me/getMemberGroups")
            .count(),
        3
    );
    assert_eq!(s.by_ids_sizes, [1000, 1000, 500]);
}

#[tokio::test]
async fn graph_refuses_more_than_1000_ids_as_the_real_one_does() {
    // The fake's own check, so the batching test above can fail: one request of 1001 ids is a 400.
    let fake = fake().await;
    let id = login(connector(&fake, json!({})).as_ref(), Scopes::default())
        .await
        .unwrap();
    let token = id.connector_data.unwrap()["accessToken"].as_str().unwrap().to_owned();
    let ids: Vec<String> = (0..1001).map(|i| format!("x{i}")).collect();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1.0/directoryObjects/getByIds", fake.base))
        .bearer_auth(token)
        .json(&json!({"ids": ids, "types": ["group"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Request_BadRequest");
}

#[tokio::test]
async fn allowed_groups_refuse_users_in_none_and_the_whitelist_trims() {
    let fake = fake().await;
    let c = connector(&fake, json!({"groups": ["kubeflow-admins", "absent"]}));
    // Groups are read for the check even without the groups scope (Dex does the same).
    let id = login(c.as_ref(), Scopes::default()).await.unwrap();
    assert_eq!(id.groups, ["kubeflow-admins", "team-ml", "everyone"]);
    assert!(fake.state().authorize[0]["scope"].contains("directory.read.all"));

    fake.state().login_as = BOB.into();
    let e = login(c.as_ref(), GROUPS).await.unwrap_err();
    assert!(matches!(e, ConnectorError::NotInAllowedGroups), "{e:?}");
    assert_eq!(e.status(), 403);
    assert_eq!(
        e.user_message(),
        "You are not a member of any of the required groups to authenticate."
    );

    fake.state().login_as = ALICE.into();
    let trimmed = connector(
        &fake,
        json!({"groups": ["kubeflow-admins", "everyone"], "useGroupsAsWhitelist": true}),
    );
    let id = login(trimmed.as_ref(), GROUPS).await.unwrap();
    assert_eq!(id.groups, ["kubeflow-admins", "everyone"]);
    // By id, the list names ids.
    let ids = connector(
        &fake,
        json!({"groups": ["g-team"], "groupNameFormat": "id", "useGroupsAsWhitelist": true}),
    );
    assert_eq!(login(ids.as_ref(), GROUPS).await.unwrap().groups, ["g-team"]);
}

#[tokio::test]
async fn tenant_common_never_reads_groups() {
    let fake = fake().await;
    for tenant in ["common", "organizations", "consumers"] {
        let c = connector(&fake, json!({"tenant": tenant}));
        let id = login(c.as_ref(), GROUPS).await.unwrap();
        assert!(id.groups.is_empty());
    }
    let s = fake.state();
    assert!(s.member_groups_bodies.is_empty(), "no Graph group call");
    assert!(s.authorize.iter().all(|q| q["scope"] == "user.read"));
    drop(s);
    // A groups: list with such a tenant is refused at startup (Dex would let everyone in).
    let ctx = OpenContext::new(ISSUER, Duration::from_secs(10));
    let config = json!({
        "clientID": CLIENT_ID, "clientSecret": CLIENT_SECRET, "redirectURI": CALLBACK,
        "groups": ["kubeflow-admins"], "tenant": "common",
    });
    let problems = open("microsoft", "entra", "Entra ID", config.clone(), &ctx).unwrap_err();
    assert_eq!(problems[0].field, "groups");
    assert!(problems[0].message.contains("tenant"), "{problems:?}");
    // No tenant at all is Dex's `common` (warned about at start), so it is refused with groups too.
    let mut unset = config;
    unset.as_object_mut().unwrap().remove("tenant");
    let problems = open("microsoft", "entra", "Entra ID", unset, &ctx).unwrap_err();
    assert_eq!(problems[0].field, "groups");
}

#[tokio::test]
async fn graph_error_is_upstream_with_its_code() {
    let fake = fake().await;
    fake.state().groups_error = Some((
        403,
        "Authorization_RequestDenied".into(),
        "Insufficient privileges to complete the operation.".into(),
    ));
    let e = login(connector(&fake, json!({})).as_ref(), GROUPS).await.unwrap_err();
    let ConnectorError::Upstream(detail) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        detail,
        "get groups: Authorization_RequestDenied: Insufficient privileges to complete the operation."
    );
    assert_eq!(e.status(), 502);
    assert!(!e.user_message().contains("Authorization_RequestDenied"));
}

#[tokio::test]
async fn graph_rejecting_the_token_is_upstream() {
    let fake = fake().await;
    fake.state().graph_rejects_tokens = true;
    let e = login(connector(&fake, json!({})).as_ref(), Scopes::default())
        .await
        .unwrap_err();
    let ConnectorError::Upstream(detail) = &e else {
        panic!("{e:?}")
    };
    assert!(detail.contains("InvalidAuthenticationToken"), "{detail}");
}

#[tokio::test]
async fn a_next_page_on_another_origin_is_refused_and_gets_no_token() {
    let elsewhere = crate::harness::echo_upstream().await;
    let fake = fake().await;
    fake.state().next_link_override = Some(format!("http://{elsewhere}/v1.0/me/getMemberGroups?$skiptoken=1"));
    let e = login(connector(&fake, json!({})).as_ref(), GROUPS).await.unwrap_err();
    let ConnectorError::Upstream(detail) = &e else {
        panic!("{e:?}")
    };
    assert!(detail.contains("outside"), "{detail}");
    // A next page on Graph's origin that never ends is cut off.
    fake.state().next_link_override = Some(format!("{}/v1.0/me/getMemberGroups?$skiptoken=0", fake.base));
    let e = login(connector(&fake, json!({})).as_ref(), GROUPS).await.unwrap_err();
    assert!(e.to_string().contains("pages"), "{e}");
    let calls = fake
        .state()
        .graph_paths
        .iter()
        .filter(|p| p.as_str() == "/v1.0/me/getMemberGroups")
        .count();
    assert!(calls <= 66, "{calls}");
}

#[tokio::test]
async fn a_huge_graph_answer_is_cut_off() {
    let fake = fake().await;
    fake.state().padding = 9 * 1024 * 1024;
    let e = login(connector(&fake, json!({})).as_ref(), GROUPS).await.unwrap_err();
    let ConnectorError::Upstream(detail) = &e else {
        panic!("{e:?}")
    };
    assert!(detail.contains("larger than"), "{detail}");
}

#[tokio::test]
async fn callback_refusals() {
    let fake = fake().await;
    let c = connector(&fake, json!({}));
    let rng = SequenceRng::default();
    let start = c.login_url(GROUPS, CALLBACK, "s", &rng).await.unwrap();
    let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    let denied = c
        .callback(
            GROUPS,
            CALLBACK,
            &start.pending,
            &q(&[
                ("error", "access_denied"),
                ("error_description", "AADSTS65004: User declined to consent."),
            ]),
        )
        .await
        .unwrap_err();
    assert!(matches!(denied, ConnectorError::Denied(_)), "{denied:?}");
    let no_code = c
        .callback(GROUPS, CALLBACK, &start.pending, &q(&[("state", "s")]))
        .await
        .unwrap_err();
    assert!(matches!(no_code, ConnectorError::BadCallback(_)), "{no_code:?}");
    // A code the provider does not know (replayed, expired) is a bad callback, not a 5xx.
    let replay = c
        .callback(GROUPS, CALLBACK, &start.pending, &q(&[("code", "code-999")]))
        .await
        .unwrap_err();
    assert!(matches!(replay, ConnectorError::BadCallback(_)), "{replay:?}");
    assert_eq!(replay.status(), 400);
    // Another login's verifier does not redeem this code (PKCE).
    let other = c.login_url(GROUPS, CALLBACK, "s2", &rng).await.unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http.get(&start.url).send().await.unwrap();
    let back = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let query: HashMap<String, String> = back.query_pairs().into_owned().collect();
    assert_ne!(other.pending, start.pending, "a fresh verifier per login");
    let forged = other.pending;
    let e = c.callback(GROUPS, CALLBACK, &forged, &query).await.unwrap_err();
    assert!(matches!(e, ConnectorError::BadCallback(_)), "{e:?}");
    // A callback URL that is not the configured one.
    let e = c
        .callback(GROUPS, "https://evil.example/dex/callback", &start.pending, &query)
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Misconfigured(_)), "{e:?}");
}

#[tokio::test]
async fn refresh_rotates_the_upstream_token_and_rereads_graph() {
    let fake = fake().await;
    let c = connector(&fake, json!({}));
    let first = login(c.as_ref(), OFFLINE).await.unwrap();
    let old_refresh = first.connector_data.as_ref().unwrap()["refreshToken"].clone();
    assert!(old_refresh.as_str().unwrap().starts_with("rt-"));
    {
        let mut s = fake.state();
        let a = s.users.get_mut(ALICE).unwrap();
        a.display_name = "Alice Jones".into();
        a.upn = "alice.jones@contoso.example".into();
        a.groups.retain(|g| g.id != "g-admins");
    }
    let again = c.refresh(OFFLINE, &first).await.unwrap();
    assert_eq!(again.user_id, ALICE);
    assert_eq!(again.username, "Alice Jones");
    assert_eq!(again.email, "alice.jones@contoso.example");
    assert_eq!(again.groups, ["team-ml", "everyone"]);
    let new_refresh = again.connector_data.as_ref().unwrap()["refreshToken"].clone();
    assert_ne!(new_refresh, old_refresh, "Entra rotated it; the new one is kept");
    let f = fake.state().token_forms.last().unwrap().clone();
    assert_eq!(f["grant_type"], "refresh_token");
    assert_eq!(f["scope"], "user.read directory.read.all offline_access");
    // The rotated one works; the used one no longer does.
    c.refresh(OFFLINE, &again).await.unwrap();
    let e = c.refresh(OFFLINE, &first).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Revoked(_)), "{e:?}");
}

#[tokio::test]
async fn refresh_after_an_upstream_revocation_is_revoked() {
    let fake = fake().await;
    let c = connector(&fake, json!({}));
    let id = login(c.as_ref(), OFFLINE).await.unwrap();
    fake.state().revoke_sessions(ALICE);
    let e = c.refresh(OFFLINE, &id).await.unwrap_err();
    let ConnectorError::Revoked(detail) = &e else {
        panic!("{e:?}")
    };
    assert!(detail.contains("invalid_grant"), "{detail}");
    // A record without a usable upstream token is revoked too (never a 5xx).
    let mut bare = id.clone();
    bare.connector_data = None;
    assert!(matches!(
        c.refresh(OFFLINE, &bare).await,
        Err(ConnectorError::Revoked(_))
    ));
    bare.connector_data = Some(json!("garbage"));
    assert!(matches!(
        c.refresh(OFFLINE, &bare).await,
        Err(ConnectorError::Revoked(_))
    ));
}

#[tokio::test]
async fn refresh_of_a_deleted_user_is_revoked() {
    let fake = fake().await;
    let c = connector(&fake, json!({}));
    // With an upstream refresh token: the token endpoint says invalid_grant.
    let offline = login(c.as_ref(), OFFLINE).await.unwrap();
    // Without one (no offline_access): Graph no longer finds the user (404).
    let online = login(c.as_ref(), GROUPS).await.unwrap();
    assert_eq!(online.connector_data.as_ref().unwrap()["refreshToken"], "");
    c.refresh(GROUPS, &online).await.unwrap();
    fake.state().delete_user(ALICE);
    for id in [&offline, &online] {
        let e = c.refresh(OFFLINE, id).await.unwrap_err();
        assert!(matches!(e, ConnectorError::Revoked(_)), "{e:?}");
    }
}

#[tokio::test]
async fn refresh_without_a_refresh_token_ends_with_the_access_token() {
    let fake = fake().await;
    fake.state().expires_in = 10;
    let c = connector(&fake, json!({}));
    let id = login(c.as_ref(), Scopes::default()).await.unwrap();
    // 10 s left is inside the skew: the access token counts as expired, and there is nothing to
    // renew it with.
    let e = c.refresh(Scopes::default(), &id).await.unwrap_err();
    let ConnectorError::Revoked(detail) = &e else {
        panic!("{e:?}")
    };
    assert!(detail.contains("offline_access"), "{detail}");
}

#[tokio::test]
async fn slow_graph_times_out_within_the_timeout() {
    let fake = fake().await;
    fake.state().graph_delay = Duration::from_secs(30);
    let c = connector(&fake, json!({"timeout": "1s"}));
    #[allow(clippy::disallowed_methods)] // measuring the bound of a real network wait
    let t = Instant::now();
    let e = login(c.as_ref(), GROUPS).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Timeout), "{e:?}");
    assert_eq!(e.status(), 504);
    assert!(t.elapsed() < Duration::from_millis(2500), "{:?}", t.elapsed());
    // Pages that are each fast enough but too many together are bounded as a whole, too.
    fake.state().graph_delay = Duration::from_millis(400);
    let t2 = {
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    };
    let e = login(c.as_ref(), GROUPS).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Timeout), "{e:?}");
    assert!(t2.elapsed() < Duration::from_millis(2500), "{:?}", t2.elapsed());
}

#[tokio::test]
async fn dead_endpoint_is_unreachable() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let fake = fake().await;
    // The authorize step is the browser's; the token endpoint is dead.
    let c = connector(&fake, json!({}));
    let start = c
        .login_url(GROUPS, CALLBACK, "s", &SequenceRng::default())
        .await
        .unwrap();
    let dead_token = connector(&fake, json!({"apiURL": format!("http://{dead}")}));
    let query: HashMap<String, String> = [("code".to_owned(), "code-1".to_owned())].into();
    let e = dead_token
        .callback(GROUPS, CALLBACK, &start.pending, &query)
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Unreachable(_)), "{e:?}");
    assert_eq!(e.status(), 502);
    // Graph dead after a good token exchange.
    let dead_graph = connector(&fake, json!({"graphURL": format!("http://{dead}")}));
    let e = login(dead_graph.as_ref(), GROUPS).await.unwrap_err();
    assert!(matches!(e, ConnectorError::Unreachable(_)), "{e:?}");
}

#[tokio::test]
async fn a_client_assertion_file_replaces_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, "stale.token.value\n").unwrap();
    let fake = fake().await;
    let c = connector(
        &fake,
        json!({"clientSecret": null, "clientAssertion": file.to_str().unwrap()}),
    );
    // The file is read at each token request: a rotated token is used at once.
    std::fs::write(&file, format!("{CLIENT_ASSERTION}\n")).unwrap();
    let id = login(c.as_ref(), Scopes::default()).await.unwrap();
    assert_eq!(id.user_id, ALICE);
    let f = fake.state().token_forms[0].clone();
    assert_eq!(f["client_assertion"], CLIENT_ASSERTION);
    assert_eq!(
        f["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert!(!f.contains_key("client_secret"));
    // A stale credential is the provider's refusal, a 502 page (not a 500).
    std::fs::write(&file, "stale.token.value").unwrap();
    let e = login(c.as_ref(), Scopes::default()).await.unwrap_err();
    assert!(e.to_string().contains("invalid_client"), "{e}");
    assert_eq!(e.status(), 502);
}

#[tokio::test]
async fn refresh_of_a_user_removed_from_the_allowed_groups_is_revoked() {
    let fake = fake().await;
    let c = connector(&fake, json!({"groups": ["kubeflow-admins"]}));
    let id = login(c.as_ref(), OFFLINE).await.unwrap();
    let id = c.refresh(OFFLINE, &id).await.unwrap();
    fake.state()
        .users
        .get_mut(ALICE)
        .unwrap()
        .groups
        .retain(|g| g.name != "kubeflow-admins");
    let e = c.refresh(OFFLINE, &id).await.unwrap_err();
    let ConnectorError::Revoked(detail) = &e else {
        panic!("{e:?}")
    };
    assert!(detail.contains("required groups"), "{detail}");
}

/// The issuer kfsec is configured with in the browser tests; the Browser reaches it at the
/// harness's `base` (the upstream redirects to `<issuer>/callback`).
const E2E_ISSUER: &str = "https://kf.example.test/dex";

/// kfsec with the Entra connector (allowed groups `kubeflow-admins`, `everyone`, trimmed to them)
/// and the local password database, so `/dex/auth` shows the chooser.
async fn kfsec_with_entra(fake: &FakeEntra) -> crate::harness::Kfsec {
    crate::harness::Kfsec::start(&entra_yaml(fake)).await
}

fn entra_yaml(fake: &FakeEntra) -> String {
    entra_yaml_with(
        fake,
        "    groups: [kubeflow-admins, everyone]\n    useGroupsAsWhitelist: true\n",
    )
}

/// The Entra connector's entry with `more` config lines.
fn entra_yaml_with(fake: &FakeEntra, more: &str) -> String {
    format!(
        "issuer: {E2E_ISSUER}\nenablePasswordDB: true\nconnectors:\n- type: microsoft\n  id: entra\n  name: Contoso Entra ID\n  config:\n    clientID: {CLIENT_ID}\n    clientSecret: {CLIENT_SECRET}\n    redirectURI: {E2E_ISSUER}/callback\n    tenant: {TENANT}\n    apiURL: {base}\n    graphURL: {base}\n    emailToLowercase: true\n{more}",
        base = fake.base
    )
}

/// A browser: kfsec's pages through `b` (with its cookies), the provider's directly; follows
/// redirects (approving if asked) and returns the last answer and every URL visited.
async fn walk(
    k: &crate::harness::Kfsec,
    b: &mut crate::harness::Browser,
    fake: &FakeEntra,
    start: &str,
) -> (reqwest::Response, Vec<String>) {
    let public = E2E_ISSUER.trim_end_matches("/dex");
    let external = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut visited = Vec::new();
    let mut url = start.replace(public, &k.base);
    loop {
        assert!(visited.len() < 20, "redirect loop: {visited:#?}");
        visited.push(url.clone());
        let r = if url.starts_with(&fake.base) {
            external.get(&url).send().await.unwrap()
        } else {
            b.get(&url).await
        };
        if !r.status().is_redirection() {
            return (r, visited);
        }
        url = crate::harness::location(&r).replace(public, &k.base);
        let r = if url.starts_with("/dex/approval") {
            let req = crate::harness::query_param(&url, "req").unwrap();
            let r = b.post_form(&url, &[("req", &req), ("approval", "approve")]).await;
            url = crate::harness::location(&r).replace(public, &k.base);
            r
        } else {
            r
        };
        if url.starts_with("https://") && !url.starts_with(&k.base) {
            // Back to a relying party outside the test (its redirect URI).
            visited.push(url);
            return (r, visited);
        }
    }
}

/// From a protected `path` to the chooser, then `connector_id=entra` onwards.
async fn entra_login(
    k: &crate::harness::Kfsec,
    b: &mut crate::harness::Browser,
    fake: &FakeEntra,
    path: &str,
) -> (reqwest::Response, Vec<String>) {
    let (chooser, auth_url) = walk(k, b, fake, path).await;
    assert_eq!(chooser.status(), 200, "{auth_url:?}");
    let auth_url = auth_url.last().unwrap().clone();
    assert!(auth_url.contains("/dex/auth?"), "{auth_url}");
    let page = chooser.text().await.unwrap();
    assert!(page.contains("Log in with Contoso Entra ID"), "{page}");
    walk(k, b, fake, &format!("{auth_url}&connector_id=entra")).await
}

#[tokio::test]
async fn browser_logs_in_through_the_chooser_and_entra_to_the_home_page() {
    let fake = fake().await;
    let k = kfsec_with_entra(&fake).await;
    let mut b = k.client();
    // A protected page → the gatekeeper → /dex/auth (the chooser) → connector_id=entra →
    // Entra's authorize → back to /dex/callback → the gatekeeper's callback → the page.
    let (last, visited) = entra_login(&k, &mut b, &fake, "/app/notebooks").await;
    assert!(
        visited
            .iter()
            .any(|u| u.starts_with(&format!("{}/{TENANT}/oauth2/v2.0/authorize?", fake.base))),
        "{visited:#?}"
    );
    assert!(
        visited.iter().any(|u| u.contains("/dex/callback?code=")),
        "{visited:#?}"
    );
    assert_eq!(last.status(), 200, "{visited:#?}");
    let seen: Value = last.json().await.unwrap();
    assert_eq!(seen["path"], "/app/notebooks");
    // userPrincipalName (lowercased) is the Kubeflow user; the groups are Graph's names, trimmed
    // to the allowed ones.
    assert_eq!(seen["headers"]["kubeflow-userid"], "alice.smith@contoso.example");
    let groups: Vec<&str> = seen["headers"]["kubeflow-groups"]
        .as_str()
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(groups, ["kubeflow-admins", "everyone"]);
    let scope = fake.state().authorize[0]["scope"].clone();
    assert!(scope.contains("directory.read.all"), "{scope}");

    // The home page shows who is logged in.
    let home = b.get("/").await.text().await.unwrap();
    assert!(home.contains("alice.smith@contoso.example"), "{home}");
    assert!(home.contains("kubeflow-admins"), "{home}");

    // Bob is in none of the allowed groups: a 403 page saying so, not a 500.
    fake.state().login_as = BOB.into();
    let mut b = k.client();
    let (refused, visited) = entra_login(&k, &mut b, &fake, "/app/").await;
    let status = refused.status();
    let page = refused.text().await.unwrap();
    assert_eq!(status, 403, "{visited:#?}: {page}");
    assert!(page.contains("not a member of any of the required groups"), "{page}");
}

#[tokio::test]
async fn a_client_refresh_re_asks_entra_and_ends_when_the_user_is_deleted() {
    let fake = fake().await;
    let k = kfsec_with_entra(&fake).await;
    let mut b = k.client();
    let verifier = "v".repeat(50);
    let challenge = kfsec_idp::secret::sha256_b64(verifier.as_bytes());
    let auth = format!(
        "/dex/auth?client_id=rp-test&redirect_uri=https%3A%2F%2Frp.example%2Fcb&response_type=code&scope=openid+email+groups+profile+federated%3Aid+offline_access&state=s1&code_challenge={challenge}&code_challenge_method=S256&connector_id=entra"
    );
    let (_, visited) = walk(&k, &mut b, &fake, &auth).await;
    let back = visited.last().unwrap();
    assert!(back.starts_with("https://rp.example/cb?"), "{visited:#?}");
    let code = crate::harness::query_param(back, "code").unwrap();
    // Entra was asked for a refresh token because the client asked for one.
    let scope = fake.state().authorize[0]["scope"].clone();
    assert_eq!(scope, "user.read directory.read.all offline_access");

    let token = |form: Vec<(&'static str, String)>| rp_token(&k, form);
    let (status, t) = token(vec![
        ("grant_type", "authorization_code".into()),
        ("code", code),
        ("redirect_uri", "https://rp.example/cb".into()),
        ("code_verifier", verifier),
    ])
    .await;
    assert_eq!(status, 200, "{t}");
    let claims = id_token_claims(&t);
    assert_eq!(claims["email"], "alice.smith@contoso.example");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["name"], "Alice Smith");
    assert_eq!(claims["groups"], json!(["kubeflow-admins", "everyone"]));
    assert_eq!(
        claims["federated_claims"],
        json!({"connector_id": "entra", "user_id": ALICE})
    );

    // A refresh asks Entra again (refresh grant, Graph) and carries what changed there.
    fake.state().users.get_mut(ALICE).unwrap().display_name = "Alice Jones".into();
    let refresh = |rt: &Value| {
        vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", rt.as_str().unwrap().to_owned()),
        ]
    };
    let rt = t["refresh_token"].clone();
    let (status, t2) = token(refresh(&rt)).await;
    assert_eq!(status, 200, "{t2}");
    assert_eq!(id_token_claims(&t2)["name"], "Alice Jones");
    let upstream_grants = fake
        .state()
        .token_forms
        .iter()
        .filter(|f| f["grant_type"] == "refresh_token")
        .count();
    assert_eq!(upstream_grants, 1);

    // Deleted in Entra: the next refresh is invalid_grant (400, OAuth2 JSON).
    fake.state().delete_user(ALICE);
    let (status, e) = token(refresh(&t2["refresh_token"])).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"], "invalid_grant", "{e}");
}

#[tokio::test]
async fn a_gatekeeper_session_ends_when_entra_deletes_the_user() {
    let fake = fake().await;
    let k = crate::harness::Kfsec::start_with_clock(&entra_yaml(&fake)).await;
    let clock = k.clock.clone().unwrap();
    let mut b = k.client();
    let (page, visited) = entra_login(&k, &mut b, &fake, "/app/").await;
    assert_eq!(page.status(), 200, "{visited:#?}");
    // The gatekeeper asked for a refresh token, so Entra was asked for one too.
    let scope = fake.state().authorize[0]["scope"].clone();
    assert!(scope.ends_with("offline_access"), "{scope}");

    fake.state().delete_user(ALICE);
    // Within the revalidation interval (15m by default) the session goes on…
    clock.advance(Duration::from_secs(5 * 60));
    assert_eq!(b.get("/app/").await.status(), 200);
    // …and at the next check Entra says no: the session ends, the browser is sent to log in.
    clock.advance(Duration::from_secs(11 * 60));
    let r = b.get("/app/").await;
    assert!(r.status().is_redirection(), "{}", r.status());
    assert!(
        crate::harness::location(&r).contains("/dex/auth"),
        "{}",
        crate::harness::location(&r)
    );
    let upstream_refreshes = fake
        .state()
        .token_forms
        .iter()
        .filter(|f| f["grant_type"] == "refresh_token")
        .count();
    assert_eq!(upstream_refreshes, 1);
}

#[tokio::test]
async fn hostile_graph_answers_do_not_become_kubernetes_identities() {
    let mallory = User {
        id: "m-1".into(),
        display_name: "Mallory".into(),
        upn: "system:serviceaccount:kubeflow:default-editor".into(),
        groups: vec![],
    };
    let eve = User {
        id: "e-1".into(),
        display_name: "Eve".into(),
        upn: "eve@contoso.example".into(),
        groups: vec![
            Group::new("g1", "system:masters", true),
            Group::new("g2", "team-ml,kubeflow-admins", true),
            Group::new("g3", "bad\nname", true),
            Group::new("g4", "ok-group", true),
        ],
    };
    let fake = FakeEntra::start(vec![mallory, eve]).await;
    let k = crate::harness::Kfsec::start(&entra_yaml_with(&fake, "")).await;

    // A user principal name in Kubernetes' system: space is refused (a 4xx page, not a 500).
    let mut b = k.client();
    let (refused, visited) = entra_login(&k, &mut b, &fake, "/app/").await;
    assert_eq!(refused.status(), 403, "{visited:#?}");

    // Groups Kubernetes would misread are dropped; the rest reach kubeflow-groups.
    fake.state().login_as = "e-1".into();
    let mut b = k.client();
    let (page, visited) = entra_login(&k, &mut b, &fake, "/app/").await;
    assert_eq!(page.status(), 200, "{visited:#?}");
    let seen: Value = page.json().await.unwrap();
    assert_eq!(seen["headers"]["kubeflow-userid"], "eve@contoso.example");
    assert_eq!(seen["headers"]["kubeflow-groups"], "ok-group");
}
