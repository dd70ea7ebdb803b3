//! A small Entra ID + Microsoft Graph shaped provider on 127.0.0.1 for the `microsoft` connector:
//! `/{tenant}/oauth2/v2.0/authorize` (redirects straight back with a code for the user set in
//! `login_as`), `/{tenant}/oauth2/v2.0/token` (code with PKCE S256, refresh tokens rotated,
//! `invalid_grant` as Entra answers it), Graph `/v1.0/me`, `/v1.0/me/getMemberGroups` (paged by
//! `@odata.nextLink`) and `/v1.0/directoryObjects/getByIds` (400 above 1000 ids, as Graph), with
//! Graph's error shape. Every request it sees is recorded for the tests to assert on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "kfsec-app";
pub const CLIENT_SECRET: &str = "entra-s3cret";
/// A federated credential (the content of AKS workload identity's token file).
pub const CLIENT_ASSERTION: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YXV0aDprZnNlYyJ9.c2ln";
pub const TENANT: &str = "11111111-2222-4333-8444-555555555555";

#[derive(Clone, Debug)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub security: bool,
}

impl Group {
    pub fn new(id: &str, name: &str, security: bool) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            security,
        }
    }
}

#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    pub display_name: String,
    pub upn: String,
    pub groups: Vec<Group>,
}

/// Everything the fake knows and saw.
#[derive(Default)]
pub struct Entra {
    pub users: HashMap<String, User>,
    /// The user the authorize endpoint logs in.
    pub login_as: String,
    /// Graph collections page size.
    pub page_size: usize,
    /// Delay before every Graph answer.
    pub graph_delay: Duration,
    /// Answer every group call with this Graph error (status, code, message).
    pub groups_error: Option<(u16, String, String)>,
    /// Replace the getMemberGroups next link (a hostile Graph).
    pub next_link_override: Option<String>,
    /// Bytes of padding added to each getMemberGroups page (a hostile, endless answer).
    pub padding: usize,
    /// Access tokens Graph no longer accepts.
    pub graph_rejects_tokens: bool,
    /// Access token lifetime in seconds.
    pub expires_in: u64,
    codes: HashMap<String, CodeGrant>,
    access: HashMap<String, String>,
    refresh: HashMap<String, String>,
    counter: u64,
    /// Query of each authorize request.
    pub authorize: Vec<HashMap<String, String>>,
    /// Form of each token request (secrets included: the fake is the upstream).
    pub token_forms: Vec<HashMap<String, String>>,
    /// Body of each getMemberGroups request.
    pub member_groups_bodies: Vec<Value>,
    /// Number of ids in each getByIds request.
    pub by_ids_sizes: Vec<usize>,
    /// Graph requests by path.
    pub graph_paths: Vec<String>,
    /// `$select` of each `/me` request.
    pub me_selects: Vec<String>,
}

struct CodeGrant {
    user: String,
    challenge: String,
    redirect_uri: String,
    scope: String,
}

impl Entra {
    fn next(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}-{}", self.counter)
    }

    fn issue(&mut self, user: &str, scope: &str) -> Value {
        let access = self.next("at");
        self.access.insert(access.clone(), user.to_owned());
        let mut answer = json!({
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": self.expires_in,
            "ext_expires_in": self.expires_in,
            "access_token": access,
        });
        if scope.split(' ').any(|s| s == "offline_access") {
            let refresh = self.next("rt");
            self.refresh.insert(refresh.clone(), user.to_owned());
            answer["refresh_token"] = json!(refresh);
        }
        answer
    }

    /// Deletes a user: their refresh tokens stop working and Graph no longer finds them.
    pub fn delete_user(&mut self, id: &str) {
        self.users.remove(id);
        self.refresh.retain(|_, u| u != id);
    }

    /// Revokes the user's refresh tokens (a session revocation in Entra), the account stays.
    pub fn revoke_sessions(&mut self, id: &str) {
        self.refresh.retain(|_, u| u != id);
    }
}

#[derive(Clone)]
pub struct FakeEntra {
    pub base: String,
    state: Arc<Mutex<Entra>>,
}

impl FakeEntra {
    pub async fn start(users: Vec<User>) -> Self {
        let login_as = users.first().map(|u| u.id.clone()).unwrap_or_default();
        let state = Arc::new(Mutex::new(Entra {
            users: users.into_iter().map(|u| (u.id.clone(), u)).collect(),
            login_as,
            page_size: 100,
            expires_in: 3600,
            ..Entra::default()
        }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/authorize", get(authorize))
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/v1.0/me", get(me))
            .route("/v1.0/me/getMemberGroups", post(member_groups))
            .route("/v1.0/directoryObjects/getByIds", post(by_ids))
            .with_state(Fake {
                base: base.clone(),
                state: state.clone(),
            });
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        Self { base, state }
    }

    pub fn state(&self) -> MutexGuard<'_, Entra> {
        self.state.lock().unwrap()
    }
}

#[derive(Clone)]
struct Fake {
    base: String,
    state: Arc<Mutex<Entra>>,
}

impl Fake {
    fn lock(&self) -> MutexGuard<'_, Entra> {
        self.state.lock().unwrap()
    }
}

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "error": error,
            "error_description": description,
            "error_codes": [70000],
            "timestamp": "2026-12-05 10:00:00Z",
            "trace_id": "00000000-0000-0000-0000-000000000000",
        })),
    )
        .into_response()
}

fn graph_error(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"error": {"code": code, "message": message, "innerError": {"date": "2026-12-05T10:00:00"}}})),
    )
        .into_response()
}

async fn authorize(
    State(f): State<Fake>,
    Path(_tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut s = f.lock();
    s.authorize.push(q.clone());
    if q.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || q.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        return (StatusCode::BAD_REQUEST, "AADSTS900144").into_response();
    }
    let code = s.next("code");
    let grant = CodeGrant {
        user: s.login_as.clone(),
        challenge: q.get("code_challenge").cloned().unwrap_or_default(),
        redirect_uri: q.get("redirect_uri").cloned().unwrap_or_default(),
        scope: q.get("scope").cloned().unwrap_or_default(),
    };
    s.codes.insert(code.clone(), grant);
    let mut back = url::Url::parse(q.get("redirect_uri").map_or("", String::as_str)).unwrap();
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", q.get("state").map_or("", String::as_str))
        .append_pair("session_state", "abc");
    Redirect::to(back.as_str()).into_response()
}

async fn token(
    State(f): State<Fake>,
    Path(_tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = f.lock();
    s.token_forms.push(form.clone());
    let get = |k: &str| form.get(k).map_or("", String::as_str);
    let by_assertion = get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        && get("client_assertion") == CLIENT_ASSERTION
        && !form.contains_key("client_secret");
    if get("client_id") != CLIENT_ID || (get("client_secret") != CLIENT_SECRET && !by_assertion) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."})),
        )
            .into_response();
    }
    match get("grant_type") {
        "authorization_code" => {
            let Some(grant) = s.codes.remove(get("code")) else {
                return oauth_error(
                    "invalid_grant",
                    "AADSTS70008: The provided authorization code or refresh token has expired or was already redeemed.",
                );
            };
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, get("code_verifier").as_bytes());
            if B64.encode(digest) != grant.challenge {
                return oauth_error(
                    "invalid_grant",
                    "AADSTS501481: The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                );
            }
            if grant.redirect_uri != get("redirect_uri") {
                return oauth_error("invalid_grant", "AADSTS50148: The redirect_uri does not match.");
            }
            let answer = s.issue(&grant.user, &grant.scope);
            Json(answer).into_response()
        }
        "refresh_token" => {
            let Some(user) = s.refresh.remove(get("refresh_token")) else {
                return oauth_error(
                    "invalid_grant",
                    "AADSTS700082: The refresh token has expired due to inactivity.",
                );
            };
            if !s.users.contains_key(&user) {
                return oauth_error("invalid_grant", "AADSTS50020: User account does not exist in tenant.");
            }
            let scope = get("scope").to_owned();
            let answer = s.issue(&user, &scope);
            Json(answer).into_response()
        }
        _ => oauth_error("unsupported_grant_type", "AADSTS70003"),
    }
}

/// The user behind the bearer token, or Graph's error answer.
async fn graph_user(f: &Fake, headers: &HeaderMap, path: &str) -> Result<User, Response> {
    let delay = {
        let mut s = f.lock();
        s.graph_paths.push(path.to_owned());
        s.graph_delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let s = f.lock();
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let Some(id) = s.access.get(token).filter(|_| !s.graph_rejects_tokens) else {
        return Err(graph_error(
            401,
            "InvalidAuthenticationToken",
            "Access token is empty or invalid.",
        ));
    };
    s.users.get(id).cloned().ok_or_else(|| {
        graph_error(
            404,
            "Request_ResourceNotFound",
            &format!(
                "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
            ),
        )
    })
}

async fn me(State(f): State<Fake>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let user = match graph_user(&f, &headers, "/v1.0/me").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let select = q.get("$select").cloned().unwrap_or_default();
    f.lock().me_selects.push(select.clone());
    let nickname = user.upn.split('@').next().unwrap_or_default().to_owned();
    let mut answer = json!({
        "@odata.context": format!("{}/v1.0/$metadata#users({select})/$entity", f.base),
        "id": user.id,
        "displayName": user.display_name,
        "userPrincipalName": user.upn,
    });
    // Graph returns only what $select names.
    for (field, value) in [
        ("mailNickname", nickname.clone()),
        ("onPremisesSamAccountName", nickname.to_uppercase()),
    ] {
        if select.split(',').any(|s| s == field) {
            answer[field] = json!(value);
        }
    }
    Json(answer).into_response()
}

fn page<T: serde::Serialize>(f: &Fake, path: &str, items: &[T], skip: usize, size: usize) -> Value {
    let end = (skip + size).min(items.len());
    let mut v = json!({
        "@odata.context": format!("{}/v1.0/$metadata#Collection(Edm.String)", f.base),
        "value": &items[skip.min(end)..end],
    });
    if end < items.len() {
        v["@odata.nextLink"] = json!(format!("{}{path}?$skiptoken={end}", f.base));
    }
    v
}

async fn member_groups(
    State(f): State<Fake>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    let user = match graph_user(&f, &headers, "/v1.0/me/getMemberGroups").await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let mut s = f.lock();
    s.member_groups_bodies.push(body.clone());
    if let Some((status, code, message)) = &s.groups_error {
        return graph_error(*status, code, message);
    }
    let Some(security_only) = body.get("securityEnabledOnly").and_then(Value::as_bool) else {
        return graph_error(400, "Request_BadRequest", "securityEnabledOnly is required.");
    };
    let ids: Vec<String> = user
        .groups
        .iter()
        .filter(|g| g.security || !security_only)
        .map(|g| g.id.clone())
        .collect();
    let skip = q.get("$skiptoken").and_then(|t| t.parse().ok()).unwrap_or(0);
    let mut answer = page(&f, "/v1.0/me/getMemberGroups", &ids, skip, s.page_size);
    if let Some(link) = &s.next_link_override {
        answer["@odata.nextLink"] = json!(link);
    }
    if s.padding > 0 {
        answer["padding"] = json!("x".repeat(s.padding));
    }
    Json(answer).into_response()
}

async fn by_ids(
    State(f): State<Fake>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    if let Err(r) = graph_user(&f, &headers, "/v1.0/directoryObjects/getByIds").await {
        return r;
    }
    let mut s = f.lock();
    let ids: Vec<String> = body["ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    s.by_ids_sizes.push(ids.len());
    if let Some((status, code, message)) = &s.groups_error {
        return graph_error(*status, code, message);
    }
    if ids.len() > 1000 {
        return graph_error(
            400,
            "Request_BadRequest",
            "Too many identifiers were specified. The maximum allowed is 1000.",
        );
    }
    if body["types"] != json!(["group"]) {
        return graph_error(400, "Request_BadRequest", "types must be [\"group\"] here.");
    }
    let all: HashMap<String, Group> = s
        .users
        .values()
        .flat_map(|u| u.groups.iter().map(|g| (g.id.clone(), g.clone())))
        .collect();
    // Graph answers in its own order, not the request's.
    let mut objects: Vec<Value> = ids
        .iter()
        .rev()
        .filter_map(|id| all.get(id))
        .map(group_object)
        .collect();
    objects.dedup();
    let skip = q.get("$skiptoken").and_then(|t| t.parse().ok()).unwrap_or(0);
    Json(page(
        &f,
        "/v1.0/directoryObjects/getByIds",
        &objects,
        skip,
        s.page_size.max(1000),
    ))
    .into_response()
}

/// A group as getByIds returns it: the full object, every property (`$select` is not
/// available there), about 1.3 KB each — so 1000 of them are more than 1 MiB.
fn group_object(g: &Group) -> Value {
    let nick = g.name.replace(' ', "");
    json!({
        "@odata.type": "#microsoft.graph.group",
        "id": g.id,
        "deletedDateTime": null,
        "classification": null,
        "createdDateTime": "2024-03-01T09:30:00Z",
        "creationOptions": [],
        "description": format!("{} — members get the Kubeflow profile of their team, the shared notebooks and the pipelines of the group. Owners approve joins. Questions: the platform team.", g.name),
        "displayName": g.name,
        "expirationDateTime": null,
        "groupTypes": if g.security { json!([]) } else { json!(["Unified"]) },
        "isAssignableToRole": null,
        "mail": if g.security { Value::Null } else { json!(format!("{nick}@contoso.example")) },
        "mailEnabled": !g.security,
        "mailNickname": nick,
        "membershipRule": null,
        "membershipRuleProcessingState": null,
        "onPremisesDomainName": "corp.contoso.example",
        "onPremisesLastSyncDateTime": "2026-12-05T08:00:00Z",
        "onPremisesNetBiosName": "CORP",
        "onPremisesSamAccountName": nick,
        "onPremisesSecurityIdentifier": "S-1-5-21-1004336348-1177238915-682003330-512",
        "onPremisesSyncEnabled": true,
        "preferredDataLocation": null,
        "preferredLanguage": null,
        "proxyAddresses": if g.security { json!([]) } else { json!([format!("SMTP:{nick}@contoso.example"), format!("smtp:{nick}@contoso.onmicrosoft.com")]) },
        "renewedDateTime": "2024-03-01T09:30:00Z",
        "resourceBehaviorOptions": [],
        "resourceProvisioningOptions": [],
        "securityEnabled": g.security,
        "securityIdentifier": "S-1-12-1-1234567890-1234567890-1234567890-1234567890",
        "theme": null,
        "visibility": if g.security { Value::Null } else { json!("Private") },
        "onPremisesProvisioningErrors": [],
        "serviceProvisioningErrors": [],
    })
}
