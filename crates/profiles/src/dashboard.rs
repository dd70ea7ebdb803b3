//! The Kubeflow Central Dashboard's backend API (`/api/workgroup/*`, `/api/namespaces`,
//! `/api/activities/{ns}`, `/api/dashboard-links`, `/api/dashboard-settings`) with upstream's
//! routes and JSON shapes, over KFAM's own code path.
//!
//! Invariants: every request carries an authenticated identity (the front door answers 401
//! `{"error": …}` otherwise — upstream's anonymous mode, which hands out every namespace and
//! `isClusterAdmin: true`, does not exist here); every read is limited to what the caller may
//! see (KFAM's membership rule, or RBAC for namespaces and events); every change goes through
//! [`Kfam`]'s methods — the same owner/cluster-admin checks as `/kfam/v1/*`, visible to the
//! authorizer before the answer — and a non-admin can never name another user as a workspace's
//! owner. Errors are `{"error": "…"}` with client-facing text only. Links from the
//! configuration are checked at load: only `http(s)://` URLs or same-site paths, so a page that
//! renders them cannot be handed a `javascript:` link.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{MethodRouter, delete, get, post};
use kfsec_api::audit;
use kfsec_api::{ApiServer, Attributes, Decision};
use kfsec_types::Identity;
use kfsec_types::identity::UserInfo;
use kfsec_types::kubeflow::PROFILE_API_VERSION;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::controller::decode_profile;
use crate::kfam::{
    Binding, Denied, Kfam, MEMBERS_REASON, Workspace, binding_ref, error, json_utf8, owner_reason, profile_ref,
};

/// The largest request body (`{"contributor": …}`, `{"namespace": …}`).
pub(crate) const MAX_BODY: usize = 16 * 1024;

/// The front-door paths the dashboard API owns (handed to the gateway with KFAM's renderer).
pub const DASHBOARD_PATHS: &[&str] = &[
    "/api/workgroup/",
    "/api/dashboard-links",
    "/api/dashboard-settings",
    "/api/namespaces",
    "/api/activities/",
];

/// The keys of Kubeflow's links document (`centraldashboard-config`, key `links`).
const LINK_LISTS: [&str; 4] = ["menuLinks", "externalLinks", "quickLinks", "documentationItems"];

/// What the dashboard API serves besides KFAM's data.
#[derive(Debug, Clone)]
pub struct DashboardSettings {
    /// The links document ([`parse_links`]), served by `/api/dashboard-links`.
    pub links: Value,
    /// Served by `/api/dashboard-settings`.
    pub settings: Value,
    /// `registrationFlow`: users may create their own workspace.
    pub registration_flow: bool,
    /// `platform.logoutUrl` of `env-info`.
    pub logout_url: String,
    /// `platform.kubeflowVersion` of `env-info`.
    pub version: String,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self {
            links: default_links(),
            settings: default_settings(),
            registration_flow: false,
            logout_url: "/oauth2/sign_out".to_owned(),
            version: "unknown".to_owned(),
        }
    }
}

/// The links served without configuration: the Pipelines entries of Kubeflow's default
/// ConfigMap (the one app kfsec serves itself, at `/pipeline/`), no external links, and
/// Kubeflow's getting-started page.
pub fn default_links() -> Value {
    let item = |text: &str, link: &str, icon: &str| json!({"type": "item", "text": text, "link": link, "icon": icon});
    json!({
        "menuLinks": [
            item("Experiments (KFP)", "/pipeline/#/experiments", "done-all"),
            item("Pipelines", "/pipeline/#/pipelines", "kubeflow:pipeline-centered"),
            item("Runs", "/pipeline/#/runs", "maps:directions-run"),
            item("Recurring Runs", "/pipeline/#/recurringruns", "device:access-alarm"),
        ],
        "externalLinks": [],
        "quickLinks": [
            {"text": "View all pipeline runs", "desc": "Pipelines", "link": "/pipeline/#/runs"},
        ],
        "documentationItems": [
            {"text": "Getting Started with Kubeflow",
             "desc": "Get your machine-learning workflow up and running on Kubeflow",
             "link": "https://www.kubeflow.org/docs/started/introduction/"},
        ],
    })
}

/// The settings served without configuration: kfsec has no iframe shell, so apps are not sent
/// to `/_/…`.
pub fn default_settings() -> Value {
    json!({"DASHBOARD_FORCE_IFRAME": false})
}

/// Whether `link` may be offered to a browser: an `http(s)://` URL, or a same-site path (`/…`,
/// not `//…`).
fn safe_link(link: &str) -> bool {
    if link.chars().any(|c| c.is_control() || c == '\\') {
        return false;
    }
    if link.starts_with('/') {
        return !link.starts_with("//");
    }
    let lower = link.to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// Checks one entry (recursing into a section's `items`) and gives it a `link` when it has only
/// `url` (the spelling of Kubeflow's docs; its code reads `link`).
fn check_entry(entry: &mut Value, at: &str) -> Result<(), String> {
    let obj = entry
        .as_object_mut()
        .ok_or_else(|| format!("{at}: an entry must be an object"))?;
    let text = |k: &str| {
        obj.get(k).map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{at}.{k}: must be a string"))
        })
    };
    let link = text("link").transpose()?;
    let url = text("url").transpose()?;
    let chosen = match (link, url) {
        (Some(l), Some(u)) if l != u => return Err(format!("{at}: `link` and `url` differ; give one")),
        (l, u) => l.or(u),
    };
    if let Some(link) = chosen {
        if !safe_link(&link) {
            return Err(format!(
                "{at}.link: {link:?} is neither an http(s) URL nor a path starting with `/`"
            ));
        }
        obj.insert("link".to_owned(), Value::String(link));
    }
    if let Some(items) = obj.get_mut("items") {
        let items = items
            .as_array_mut()
            .ok_or_else(|| format!("{at}.items: must be a list"))?;
        for (i, e) in items.iter_mut().enumerate() {
            check_entry(e, &format!("{at}.items[{i}]"))?;
        }
    }
    Ok(())
}

/// Parses the JSON Kubeflow keeps under the `links` key of its `centraldashboard-config`
/// ConfigMap: an object with `menuLinks`, `externalLinks`, `quickLinks`, `documentationItems`
/// (each a list, each optional). An entry's `url` is accepted for `link`. Refused, with the
/// reason: other keys, entries that are not objects, links that are not `http(s)://` or a path.
pub fn parse_links(bytes: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(map) = v else {
        return Err("must be a JSON object with menuLinks, externalLinks, quickLinks, documentationItems".into());
    };
    let mut out = Map::new();
    for (key, mut list) in map {
        if !LINK_LISTS.contains(&key.as_str()) {
            return Err(format!("unknown key {key:?} (known: {})", LINK_LISTS.join(", ")));
        }
        let items = list.as_array_mut().ok_or_else(|| format!("{key}: must be a list"))?;
        for (i, e) in items.iter_mut().enumerate() {
            check_entry(e, &format!("{key}[{i}]"))?;
        }
        out.insert(key, list);
    }
    for key in LINK_LISTS {
        out.entry(key).or_insert_with(|| json!([]));
    }
    Ok(Value::Object(out))
}

/// Parses the JSON Kubeflow keeps under the `settings` key (an object, e.g.
/// `{"DASHBOARD_FORCE_IFRAME": true}`).
pub fn parse_settings(bytes: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))? {
        v @ Value::Object(_) => Ok(v),
        _ => Err("must be a JSON object".into()),
    }
}

/// The dashboard API's state.
pub struct Dashboard {
    pub(crate) kfam: Arc<Kfam>,
    api: Arc<ApiServer>,
    pub(crate) settings: DashboardSettings,
    /// What the home page's "Download kubeconfig" uses (none: not offered).
    pub(crate) kubeconfig: std::sync::OnceLock<Arc<dyn crate::pages::KubeconfigSource>>,
}

/// A caller's role in a workspace as the dashboard names it (KFAM's `admin|edit|view`).
pub(crate) fn dashboard_role(w: &Workspace, user: &str) -> Option<&'static str> {
    if w.owner == user {
        return Some("owner");
    }
    w.bindings
        .iter()
        .filter(|(u, _)| u == user)
        .find_map(|(_, r)| match r.as_str() {
            "admin" => Some("owner"),
            "edit" => Some("contributor"),
            "view" => Some("viewer"),
            _ => None,
        })
}

/// The contributors (role `edit` or `view`, the owner excluded) of `w`, each once.
pub(crate) fn contributors(w: &Workspace) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (u, r) in &w.bindings {
        if (r == "edit" || r == "view") && *u != w.owner && !out.contains(u) {
            out.push(u.clone());
        }
    }
    out
}

/// A DNS label (`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, at most 63).
pub(crate) fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The dashboard's default workspace name for a user: the email's local part, lower-cased,
/// every other character than `[a-z0-9]` turned into `-`, leading and trailing `-` stripped.
pub fn default_namespace(user: &str) -> String {
    let local = user.split('@').next().unwrap_or_default();
    let mapped: String = local
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = mapped.trim_matches('-');
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

/// Whether `s` looks like an email address (one `@`, non-empty parts, a dot in the domain, no
/// spaces or controls, at most 254 bytes).
fn looks_like_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    s.len() <= 254
        && !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == ',')
}

fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

fn no_access(ns: &str) -> Response {
    error(
        StatusCode::FORBIDDEN,
        &format!("Access denied. You do not have access to namespace '{ns}'."),
    )
}

/// The dashboard's rendering of a KFAM refusal or failure (`{"error": …}` always).
fn denied(d: Denied, what: &str) -> Response {
    match d {
        Denied::Refused(status, message) => {
            let reason = message.unwrap_or_else(|| status.canonical_reason().unwrap_or("Refused").to_owned());
            error(status, &format!("{what}. HTTP {} - {reason}", status.as_u16()))
        }
        Denied::Failed(r) => r,
    }
}

impl Dashboard {
    /// The dashboard API over `kfam` and `api`.
    pub fn new(kfam: Arc<Kfam>, api: Arc<ApiServer>, settings: DashboardSettings) -> Arc<Self> {
        Arc::new(Self {
            kfam,
            api,
            settings,
            kubeconfig: std::sync::OnceLock::new(),
        })
    }

    /// The router, to be merged at the root (its paths are [`DASHBOARD_PATHS`]). Requests carry
    /// `Extension<Identity>`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/workgroup/exists", json_405(get(exists)))
            .route("/api/workgroup/env-info", json_405(get(env_info)))
            .route("/api/workgroup/create", json_405(post(create)))
            .route("/api/workgroup/nuke-self", json_405(delete(nuke_self)))
            .route("/api/workgroup/get-all-namespaces", json_405(get(all_namespaces)))
            .route("/api/workgroup/get-contributors/{ns}", json_405(get(get_contributors)))
            .route("/api/workgroup/add-contributor/{ns}", json_405(post(add_contributor)))
            .route(
                "/api/workgroup/remove-contributor/{ns}",
                json_405(delete(remove_contributor)),
            )
            .route("/api/workgroup/{*rest}", axum::routing::any(not_found))
            .route("/api/dashboard-links", json_405(get(links)))
            .route("/api/dashboard-settings", json_405(get(settings)))
            .route("/api/namespaces", json_405(get(namespaces)))
            .route("/api/activities/{ns}", json_405(get(activities)))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .layer(axum::middleware::from_fn(audit::layer))
            .with_state(self.clone())
    }

    fn allowed(&self, id: &Identity, verb: &str, resource: &str, ns: &str, name: &str) -> bool {
        self.decide(id, verb, resource, ns, name).is_allowed()
    }

    /// RBAC's decision on `verb` of the core `resource` (`name` in `ns`) for the caller.
    fn decide(&self, id: &Identity, verb: &str, resource: &str, ns: &str, name: &str) -> Decision {
        let u = UserInfo::from(id);
        let a = Attributes::resource(u.username, u.groups, verb, "", resource, ns).with_name(name);
        self.kfam.authz().authorize(&a)
    }

    /// The caller's workspace `ns`, if they may see it (member or cluster admin).
    async fn workspace(&self, id: &Identity, ns: &str) -> Result<Workspace, Response> {
        if !dns_label(ns) {
            return Err(bad_request(&format!("{ns:?} is not a namespace name")));
        }
        let all = self.kfam.workspaces(id).await?;
        all.into_iter().find(|w| w.name == ns).ok_or_else(|| no_access(ns))
    }
}

/// `method` answered, any other method refused with `{"error"}` (not axum's empty 405).
fn json_405(method: MethodRouter<Arc<Dashboard>>) -> MethodRouter<Arc<Dashboard>> {
    method.fallback(|| async { error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed") })
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Could not find the route you're looking for")
}

async fn exists(State(d): State<Arc<Dashboard>>, Extension(id): Extension<Identity>) -> Response {
    audit::decided("list", profile_ref(""), true, MEMBERS_REASON);
    let workspaces = match d.kfam.workspaces(&id).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let has = workspaces.iter().any(|w| dashboard_role(w, &id.user) == Some("owner"));
    json_utf8(
        StatusCode::OK,
        json!({
            "hasAuth": true,
            "user": id.user.split('@').next().unwrap_or_default(),
            "hasWorkgroup": has,
            "registrationFlowAllowed": d.settings.registration_flow,
        }),
    )
}

async fn env_info(State(d): State<Arc<Dashboard>>, Extension(id): Extension<Identity>) -> Response {
    audit::decided("list", profile_ref(""), true, MEMBERS_REASON);
    let workspaces = match d.kfam.workspaces(&id).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let namespaces: Vec<Value> = workspaces
        .iter()
        .filter_map(|w| {
            dashboard_role(w, &id.user).map(|role| json!({"namespace": w.name, "role": role, "user": id.user}))
        })
        .collect();
    json_utf8(
        StatusCode::OK,
        json!({
            "user": id.user,
            "platform": {
                "provider": "other://",
                "providerName": "other",
                "kubeflowVersion": d.settings.version,
                "logoutUrl": d.settings.logout_url,
            },
            "namespaces": namespaces,
            "isClusterAdmin": d.kfam.cluster_admin(&UserInfo::from(&id)),
        }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

pub(crate) async fn create(
    State(d): State<Arc<Dashboard>>,
    Extension(id): Extension<Identity>,
    body: axum::body::Bytes,
) -> Response {
    let b: CreateBody = match serde_json::from_slice(if body.is_empty() { b"{}" } else { &body }) {
        Ok(b) => b,
        Err(_) => {
            return bad_request("The body must be a JSON object with optional \"namespace\" and \"user\" strings.");
        }
    };
    let owner = b.user.filter(|u| !u.is_empty()).unwrap_or_else(|| id.user.clone());
    // Upstream lets the body name anyone as owner; here only a cluster admin may.
    if owner != id.user && !d.kfam.cluster_admin(&UserInfo::from(&id)) {
        let ns = b.namespace.as_deref().filter(|n| !n.is_empty());
        audit::decided(
            "create",
            profile_ref(ns.unwrap_or(&default_namespace(&owner))),
            false,
            "",
        );
        tracing::info!(target: "audit", caller = %id.user, owner = %owner, "dashboard create for another user refused");
        return error(
            StatusCode::FORBIDDEN,
            "Only cluster admins may create a workspace for another user.",
        );
    }
    let ns = b
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| default_namespace(&owner));
    if !dns_label(&ns) {
        return bad_request(
            "Name can only start and end with alpha-num characters, dashes are only permitted between start and end. (minlength >= 1)",
        );
    }
    let profile = json!({
        "apiVersion": PROFILE_API_VERSION, "kind": "Profile",
        "metadata": {"name": ns},
        "spec": {"owner": {"kind": "User", "name": owner}},
    });
    let p = match decode_profile(profile) {
        Ok(p) => p,
        Err(_) => return bad_request("Unexpected error creating profile"),
    };
    match d.kfam.make_profile(&id, p).await {
        Ok(()) => json_utf8(StatusCode::OK, json!({"message": format!("Created namespace {ns}")})),
        Err(e) => denied(e, "Unexpected error creating profile"),
    }
}

async fn nuke_self(State(d): State<Arc<Dashboard>>, Extension(id): Extension<Identity>) -> Response {
    let ns = default_namespace(&id.user);
    let refused = || error(StatusCode::FORBIDDEN, &format!("You own no workspace named {ns:?}."));
    // Only the caller's own workspace: a cluster admin's KFAM right to delete any profile does
    // not make somebody else's workspace of the same name "self".
    match d.kfam.workspaces(&id).await {
        Ok(ws) if ws.iter().any(|w| w.name == ns && w.owner == id.user) => {}
        Ok(_) => {
            audit::decided("delete", profile_ref(&ns), false, "");
            return refused();
        }
        Err(r) => return r,
    }
    match d.kfam.remove_profile(&id, &ns).await {
        Ok(()) => json_utf8(
            StatusCode::OK,
            json!({"message": format!("Removed namespace/profile {ns}"), "serverBody": ""}),
        ),
        Err(Denied::Refused(..)) => refused(),
        Err(e) => denied(e, "Unable to remove your workspace"),
    }
}

async fn all_namespaces(State(d): State<Arc<Dashboard>>, Extension(id): Extension<Identity>) -> Response {
    audit::decided("list", profile_ref(""), true, MEMBERS_REASON);
    match d.kfam.workspaces(&id).await {
        Ok(ws) => {
            let rows: Vec<Value> = ws
                .iter()
                .map(|w| json!([w.name, w.owner, contributors(w).join(", ")]))
                .collect();
            json_utf8(StatusCode::OK, Value::Array(rows))
        }
        Err(r) => r,
    }
}

async fn get_contributors(
    State(d): State<Arc<Dashboard>>,
    Extension(id): Extension<Identity>,
    Path(ns): Path<String>,
) -> Response {
    match d.workspace(&id, &ns).await {
        Ok(w) => {
            if audit::active() {
                let reason = match dashboard_role(&w, &id.user) {
                    Some("owner") => Some(owner_reason(&ns)),
                    Some(role) => Some(format!("KFAM: allowed as a {role} of Profile {ns:?}")),
                    None => d.kfam.cluster_admin_reason(&UserInfo::from(&id)),
                };
                let object = binding_ref(&ns, "");
                audit::decided("list", object, true, reason.as_deref().unwrap_or_default());
            }
            json_utf8(StatusCode::OK, json!(contributors(&w)))
        }
        Err(r) => refused_change(r, "list", &ns),
    }
}

#[derive(Deserialize)]
struct ContributorBody {
    #[serde(default)]
    contributor: Option<String>,
    #[serde(default)]
    role: Option<String>,
}

/// The contributor and KFAM role of a body (`role`: `edit`/`contributor` (default) or
/// `view`/`viewer`).
fn contributor_of(body: &[u8]) -> Result<(String, Option<&'static str>), &'static str> {
    let b: ContributorBody = serde_json::from_slice(body).map_err(|_| "Missing contributor field.")?;
    let c = b
        .contributor
        .filter(|c| !c.is_empty())
        .ok_or("Missing contributor field.")?;
    if !looks_like_email(&c) {
        return Err("Contributor doesn't look like a valid email address");
    }
    let role = match b.role.as_deref() {
        None => None,
        Some("edit" | "contributor" | "kubeflow-edit") => Some("edit"),
        Some("view" | "viewer" | "kubeflow-view") => Some("view"),
        Some(_) => return Err("role must be \"edit\" or \"view\""),
    };
    Ok((c, role))
}

/// A contributor change's body and the caller's view of workspace `ns` (refused unless visible).
async fn contributor_request(
    d: &Dashboard,
    id: &Identity,
    ns: &str,
    body: &[u8],
) -> Result<(String, Option<&'static str>, Workspace), Response> {
    let (user, role) = contributor_of(body).map_err(bad_request)?;
    Ok((user, role, d.workspace(id, ns).await?))
}

/// A contributor request refused before KFAM was asked (`r`): a 403 (the workspace is not the
/// caller's to see) is recorded as a refused `verb` on `ns`'s rolebindings.
fn refused_change(r: Response, verb: &str, ns: &str) -> Response {
    if r.status() == StatusCode::FORBIDDEN {
        audit::decided(verb, binding_ref(ns, ""), false, "");
    }
    r
}

/// `ns`'s contributors as the caller sees them (upstream's answer to every contributor route).
async fn contributor_list(d: &Dashboard, id: &Identity, ns: &str) -> Response {
    match d.workspace(id, ns).await {
        Ok(w) => json_utf8(StatusCode::OK, json!(contributors(&w))),
        Err(r) => r,
    }
}

pub(crate) async fn add_contributor(
    State(d): State<Arc<Dashboard>>,
    Extension(id): Extension<Identity>,
    Path(ns): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (user, role, w) = match contributor_request(&d, &id, &ns, &body).await {
        Ok(x) => x,
        Err(r) => return refused_change(r, "create", &ns),
    };
    let role = role.unwrap_or("edit");
    if user == w.owner {
        return bad_request("The owner of a workspace cannot be added as a contributor.");
    }
    let what = format!("Unable to add new contributor for {ns}");
    let Some(b) = Binding::user(&user, &ns, role) else {
        return bad_request("role must be \"edit\" or \"view\"");
    };
    if let Err(e) = d.kfam.bind(&id, &b).await {
        return denied(e, &what);
    }
    // A new role replaces the other one: one contributor, one role.
    let other = if role == "edit" { "view" } else { "edit" };
    if w.bindings.iter().any(|(u, r)| *u == user && r == other)
        && let Some(old) = Binding::user(&user, &ns, other)
        && let Err(e) = d.kfam.unbind(&id, &old).await
    {
        return denied(e, &what);
    }
    contributor_list(&d, &id, &ns).await
}

pub(crate) async fn remove_contributor(
    State(d): State<Arc<Dashboard>>,
    Extension(id): Extension<Identity>,
    Path(ns): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (user, role, w) = match contributor_request(&d, &id, &ns, &body).await {
        Ok(x) => x,
        Err(r) => return refused_change(r, "delete", &ns),
    };
    let what = format!("Unable to remove contributor for {ns}");
    let roles: Vec<&'static str> = ["edit", "view"]
        .into_iter()
        .filter(|r| role.is_none_or(|want| want == *r))
        .filter(|r| w.bindings.iter().any(|(u, br)| *u == user && br == r))
        .collect();
    if roles.is_empty() {
        // Nothing to remove; who asks still decides between "no such contributor" and "no".
        let decided = d.kfam.manage_reason(&UserInfo::from(&id), &ns).await;
        if let Ok(reason) = &decided {
            let object = binding_ref(&ns, "");
            audit::decided(
                "delete",
                object,
                reason.is_some(),
                reason.as_deref().unwrap_or_default(),
            );
        }
        return match decided.map(|r| r.is_some()) {
            Ok(true) => error(StatusCode::NOT_FOUND, &format!("{user} is not a contributor of {ns}.")),
            Ok(false) => denied(Denied::Refused(StatusCode::FORBIDDEN, None), &what),
            Err(_) => denied(Denied::Refused(StatusCode::SERVICE_UNAVAILABLE, None), &what),
        };
    }
    for r in roles {
        let Some(b) = Binding::user(&user, &ns, r) else {
            continue;
        };
        if let Err(e) = d.kfam.unbind(&id, &b).await {
            return denied(e, &what);
        }
    }
    contributor_list(&d, &id, &ns).await
}

async fn links(State(d): State<Arc<Dashboard>>) -> Response {
    json_utf8(StatusCode::OK, d.settings.links.clone())
}

async fn settings(State(d): State<Arc<Dashboard>>) -> Response {
    json_utf8(StatusCode::OK, d.settings.settings.clone())
}

/// `GET /api/namespaces`: the Namespace objects the caller may see — all for one allowed to
/// list namespaces, else those they may `get` or are a workspace member of.
async fn namespaces(State(d): State<Arc<Dashboard>>, Extension(id): Extension<Identity>) -> Response {
    let Some(nsr) = ApiServer::resource("", "v1", "namespaces") else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "namespaces are not served");
    };
    let all = match d.api.list_objects(nsr, None, "").await {
        Ok(l) => l.items,
        Err(e) => return denied(d.kfam.failed("listing namespaces", &e), "Unable to list namespaces"),
    };
    let listing = d.decide(&id, "list", "namespaces", "", "");
    let everything = listing.is_allowed();
    let reason = if everything { listing.reason() } else { MEMBERS_REASON };
    audit::decided("list", audit::object_ref("", "v1", "namespaces", "", ""), true, reason);
    let members: Vec<String> = if everything {
        Vec::new()
    } else {
        match d.kfam.workspaces(&id).await {
            Ok(ws) => ws
                .into_iter()
                .filter(|w| dashboard_role(w, &id.user).is_some())
                .map(|w| w.name)
                .collect(),
            Err(r) => return r,
        }
    };
    let visible: Vec<Value> = all
        .into_iter()
        .filter(|ns| {
            let name = ns.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            everything || members.iter().any(|m| m == name) || d.allowed(&id, "get", "namespaces", "", name)
        })
        .collect();
    json_utf8(StatusCode::OK, Value::Array(visible))
}

/// An Event's time for ordering: `lastTimestamp`, else `eventTime`, else creation.
fn event_time(e: &Value) -> &str {
    ["/lastTimestamp", "/eventTime", "/metadata/creationTimestamp"]
        .into_iter()
        .find_map(|p| e.pointer(p).and_then(Value::as_str))
        .unwrap_or_default()
}

/// `GET /api/activities/{ns}`: the namespace's Events, newest first, if the caller may list
/// events there.
async fn activities(
    State(d): State<Arc<Dashboard>>,
    Extension(id): Extension<Identity>,
    Path(ns): Path<String>,
) -> Response {
    if !dns_label(&ns) {
        return bad_request(&format!("{ns:?} is not a namespace name"));
    }
    let decision = d.decide(&id, "list", "events", &ns, "");
    let object = audit::object_ref("", "v1", "events", &ns, "");
    audit::decided("list", object, decision.is_allowed(), decision.reason());
    if !decision.is_allowed() {
        tracing::info!(target: "audit", caller = %id.user, namespace = %ns, "dashboard activities refused");
        return error(
            StatusCode::FORBIDDEN,
            &format!("Access denied. You do not have permission to view activities for namespace '{ns}'."),
        );
    }
    let Some(ev) = ApiServer::resource("", "v1", "events") else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "events are not served");
    };
    match d.api.list_objects(ev, Some(&ns), "").await {
        Ok(l) => {
            let mut items = l.items;
            items.sort_by(|a, b| event_time(b).cmp(event_time(a)));
            json_utf8(StatusCode::OK, Value::Array(items))
        }
        Err(e) => denied(d.kfam.failed("listing events", &e), "Unable to list activities"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_accept_url_and_refuse_unsafe_links_and_unknown_keys() {
        let v = parse_links(
            br#"{"externalLinks":[{"type":"item","iframe":false,"text":"Docs","url":"https://example.com/docs"}]}"#,
        )
        .unwrap();
        assert_eq!(v["externalLinks"][0]["link"], "https://example.com/docs");
        assert_eq!(v["menuLinks"], json!([]));
        let v = parse_links(br#"{"menuLinks":[{"type":"section","text":"P","items":[{"type":"item","link":"/pipeline/#/runs?ns={ns}","text":"Runs"}]}]}"#).unwrap();
        assert_eq!(v["menuLinks"][0]["items"][0]["link"], "/pipeline/#/runs?ns={ns}");
        for bad in [
            &br#"{"menuLinks":[{"link":"javascript:alert(1)"}]}"#[..],
            br#"{"menuLinks":[{"link":"//evil.example/"}]}"#,
            br#"{"menuLinks":[{"type":"section","items":[{"url":"data:text/html,x"}]}]}"#,
            br#"{"menuLinks":[{"link":"/a","url":"/b"}]}"#,
            br#"{"menuLinks":[{"link":"/\\evil"}]}"#,
            br#"{"menuLinks":{}}"#,
            br#"{"menuLinks":[5]}"#,
            br#"{"menulinks":[]}"#,
            br#"[]"#,
            b"not json",
        ] {
            assert!(parse_links(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse_links(default_links().to_string().as_bytes()).is_ok());
        assert!(parse_settings(b"[1]").is_err());
    }

    #[test]
    fn names_and_emails() {
        assert_eq!(default_namespace("Test.User_2@example.org"), "test-user-2");
        assert_eq!(default_namespace("-x-@e.com"), "x");
        assert!(dns_label("team-1") && !dns_label("Team") && !dns_label("-a") && !dns_label(""));
        assert!(!dns_label(&"a".repeat(64)));
        assert!(looks_like_email("a.b@example.com"));
        for bad in [
            "a",
            "@e.com",
            "a@",
            "a@b",
            "a b@e.com",
            "a@e.com\n",
            "a@b@c.com",
            "a@.com",
        ] {
            assert!(!looks_like_email(bad), "{bad}");
        }
    }
}
