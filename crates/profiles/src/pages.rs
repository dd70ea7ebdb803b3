//! kfsec's own dashboard pages — home (your workspaces, the namespace selector, the configured
//! links, "Download kubeconfig"), a workspace's contributors page, the registration page and the
//! cluster admins' list of workspaces — over the same calls as the Central Dashboard API
//! (`dashboard`), rendered by `kfsec_idp::pages`.
//!
//! Invariants: no membership or permission rule lives here — what a caller sees is
//! `Kfam::workspaces`, who may change a workspace is `Kfam::may_manage` and every change is the
//! dashboard API's own handler (so KFAM's owner/cluster-admin checks); a form is acted on only
//! when its token matches the caller's session token (constant time) — checked before anything
//! else, and the front door has already refused cross-site cookie writes; a workspace an
//! outsider may not see answers exactly as one that does not exist; `?ns=` is honoured only for
//! one of the caller's workspaces; a change answers with a redirect to the page (POST, redirect,
//! GET). A kubeconfig is made only for a caller signed in by a browser session (the front door's
//! `SessionLogin`), after the form check, by the composition's [`KubeconfigSource`] (which mints
//! the token through the IdP's one path for session tokens); its answer is never cached, never
//! sniffed, and the token is never logged; it is answered only to a top-level navigation (Fetch
//! Metadata), never to a script or a frame on this origin that could read it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kfsec_idp::pages::{
    ContributorEntry, ContributorsView, CsrfToken, DashboardView, KubeconfigOffer, LinkEntry, ProfileEntry,
    WorkspaceEntry, contributors_page, dashboard_page, error_page, profiles_page, register_page,
};
use kfsec_idp::{IdpError, SessionLogin};
use kfsec_types::Identity;
use kfsec_types::identity::UserInfo;
use serde_json::{Value, json};

use crate::dashboard::{
    Dashboard, MAX_BODY, add_contributor, contributors, create, dashboard_role, default_namespace, dns_label,
    remove_contributor,
};
use crate::kfam::Workspace;

/// The front-door paths the pages own (handed to the gateway's `Pages`).
pub const PAGE_PATHS: &[&str] = &["/", "/workspaces/", "/register", "/admin/profiles", "/kubeconfig"];

/// The one answer for a workspace that does not exist and one the caller may not see.
const NO_WORKSPACE: &str = "There is no such workspace, or you are not a member of it.";

/// The composition's side of the home page's "Download kubeconfig": it knows the front door's
/// URL and the CA a client must trust, and mints the user's token.
#[async_trait::async_trait]
pub trait KubeconfigSource: Send + Sync {
    /// The longest a token lives (the page says so); never past the session.
    fn lifetime(&self) -> Duration;
    /// The kubeconfig (YAML) for `id`'s browser session `login`, its context in namespace `ns`.
    async fn kubeconfig(&self, id: &Identity, login: &SessionLogin, ns: Option<&str>) -> Result<String, IdpError>;
}

impl Dashboard {
    /// Offers "Download kubeconfig" on the home page, made by `source` (once; a second call is
    /// ignored).
    pub fn offer_kubeconfig(&self, source: Arc<dyn KubeconfigSource>) {
        let _ = self.kubeconfig.set(source);
    }

    /// The pages' router (paths [`PAGE_PATHS`]); requests carry `Extension<Identity>` and
    /// `Extension<CsrfToken>`.
    pub fn pages_router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(home).fallback(wrong_method))
            .route(
                "/workspaces/{ns}/contributors",
                get(contributors_get).post(contributors_post).fallback(wrong_method),
            )
            .route(
                "/register",
                get(register_get).post(register_post).fallback(wrong_method),
            )
            .route("/admin/profiles", get(all_profiles).fallback(wrong_method))
            .route(
                "/kubeconfig",
                get(|| async { see_other("/") })
                    .post(kubeconfig_post)
                    .fallback(wrong_method),
            )
            .fallback(not_found)
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            // The pages' changes are KFAM's: their decisions go into the request's audit Event.
            .layer(axum::middleware::from_fn(kfsec_api::audit::layer))
            .with_state(self.clone())
    }
}

async fn wrong_method() -> Response {
    error_page(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        "Method not allowed.",
    )
}

async fn not_found() -> Response {
    error_page(StatusCode::NOT_FOUND, "Not found", "Not found.")
}

fn no_workspace() -> Response {
    error_page(StatusCode::NOT_FOUND, "Not found", NO_WORKSPACE)
}

fn unavailable() -> Response {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        "The workspaces cannot be read right now. Try again later.",
    )
}

/// 303 to `location` (a path of ours).
fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A dashboard role in words.
fn role_words(role: &str) -> &'static str {
    match role {
        "owner" => "owner",
        "contributor" | "edit" => "contributor (edit)",
        _ => "viewer",
    }
}

/// The value of `key` in a query string or form body (the first one).
fn field(raw: &[u8], key: &str) -> Option<String> {
    url::form_urlencoded::parse(raw)
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The 403 for a form without the caller's token (logged); `None` when the token matches.
fn forged_form(id: &Identity, csrf: &CsrfToken, body: &[u8]) -> Option<Response> {
    if field(body, "csrf").is_some_and(|t| csrf.matches(&t)) {
        return None;
    }
    tracing::warn!(target: "audit", user = %id.user, "dashboard form without a valid CSRF token refused");
    Some(error_page(
        StatusCode::FORBIDDEN,
        "Forbidden",
        "This form did not come from this site or has expired. Reload the page and try again.",
    ))
}

/// The caller's workspaces, or the page saying they cannot be read.
async fn workspaces(d: &Dashboard, id: &Identity) -> Result<Vec<Workspace>, Response> {
    d.kfam.workspaces(id).await.map_err(|r| {
        tracing::warn!(status = %r.status(), "dashboard page: workspaces unavailable");
        unavailable()
    })
}

/// Workspace `ns` if the caller may see it; otherwise the same 404 whether it exists or not.
async fn page_workspace(d: &Dashboard, id: &Identity, ns: &str) -> Result<Workspace, Response> {
    if !dns_label(ns) {
        return Err(no_workspace());
    }
    workspaces(d, id)
        .await?
        .into_iter()
        .find(|w| w.name == ns)
        .ok_or_else(no_workspace)
}

/// `link` with `{ns}` replaced by the URL-encoded namespace.
fn substitute(link: &str, ns: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(ns.as_bytes()).collect();
    link.replace("{ns}", &encoded)
}

/// The entries of one list of the links document (a section's items follow it, "Section: item").
fn link_entries(links: &Value, key: &str, ns: &str) -> Vec<LinkEntry> {
    let mut out = Vec::new();
    let text = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut push = |e: &Value, prefix: &str| {
        let Some(link) = e.get("link").and_then(Value::as_str) else {
            return;
        };
        let name = text(e, "text");
        out.push(LinkEntry {
            text: if prefix.is_empty() {
                name
            } else {
                format!("{prefix}: {name}")
            },
            desc: text(e, "desc"),
            href: substitute(link, ns),
        });
    };
    for e in links.get(key).and_then(Value::as_array).into_iter().flatten() {
        push(e, "");
        let section = text(e, "text");
        for item in e.get("items").and_then(Value::as_array).into_iter().flatten() {
            push(item, &section);
        }
    }
    out
}

/// The caller's workspaces with their role in each.
fn mine<'a>(all: &'a [Workspace], id: &Identity) -> Vec<(&'a Workspace, &'static str)> {
    all.iter()
        .filter_map(|w| dashboard_role(w, &id.user).map(|r| (w, r)))
        .collect()
}

/// The selected namespace: `asked` only if it is one of the caller's workspaces; else the first
/// they own, else the first; empty when they have none.
fn selected_namespace(mine: &[(&Workspace, &'static str)], asked: Option<String>) -> String {
    asked
        .filter(|a| mine.iter().any(|(w, _)| w.name == *a))
        .or_else(|| mine.iter().find(|(_, r)| *r == "owner").map(|(w, _)| w.name.clone()))
        .or_else(|| mine.first().map(|(w, _)| w.name.clone()))
        .unwrap_or_default()
}

/// A duration in words: `24 hours`, `90 minutes`, `1 hour`.
fn duration_words(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = if s >= 3600 && s.is_multiple_of(3600) {
        (s / 3600, "hour")
    } else if s >= 60 && s.is_multiple_of(60) {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

async fn home(
    State(d): State<Arc<Dashboard>>,
    Extension(id): Extension<Identity>,
    Extension(csrf): Extension<CsrfToken>,
    RawQuery(query): RawQuery,
) -> Response {
    let all = match workspaces(&d, &id).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let mine = mine(&all, &id);
    let asked = query.as_deref().and_then(|q| field(q.as_bytes(), "ns"));
    let selected = selected_namespace(&mine, asked);
    let links = &d.settings.links;
    let view = DashboardView {
        user: id.user.clone(),
        groups: id.groups.clone(),
        cluster_admin: d.kfam.cluster_admin(&UserInfo::from(&id)),
        workspaces: mine
            .iter()
            .map(|(w, r)| WorkspaceEntry {
                name: w.name.clone(),
                role: role_words(r),
                selected: w.name == selected,
            })
            .collect(),
        register: d.settings.registration_flow && !mine.iter().any(|(_, r)| *r == "owner"),
        menu: link_entries(links, "menuLinks", &selected),
        quick: link_entries(links, "quickLinks", &selected),
        external: link_entries(links, "externalLinks", ""),
        docs: link_entries(links, "documentationItems", &selected),
        kubeconfig: d.kubeconfig.get().map(|k| KubeconfigOffer {
            csrf,
            ns: selected.clone(),
            valid_for: duration_words(k.lifetime()),
        }),
    };
    dashboard_page(&view)
}

/// `kubeconfig-<name>.yaml` for user `user`: lower-case letters, digits and `-` only.
fn kubeconfig_file_name(user: &str) -> String {
    let mut name = String::new();
    for c in user.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
        if name.len() >= 63 {
            break;
        }
    }
    let name = name.trim_end_matches('-');
    format!("kubeconfig-{}.yaml", if name.is_empty() { "kfsec" } else { name })
}

/// Whether a request is a top-level navigation by Fetch Metadata: `Sec-Fetch-Mode: navigate`
/// and `Sec-Fetch-Dest: document` when the browser sends them (a header left out passes, as
/// older browsers and command-line clients send none). A script's `fetch`/XHR (mode `cors`,
/// `same-origin`…) or a frame's load (dest `iframe`) could read the answer; a top-level
/// navigation to an attachment cannot be read by any page.
fn page_navigation(headers: &HeaderMap) -> bool {
    let is = |name: &str, want: &str| {
        headers
            .get(name)
            .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(want.as_bytes()))
    };
    is("sec-fetch-mode", "navigate") && is("sec-fetch-dest", "document")
}

/// `POST /kubeconfig`: the caller's kubeconfig, as a download — only for a top-level form
/// navigation ([`page_navigation`]): a script of a proxied app on this origin (a notebook's
/// page, an HTML artifact), which the browser lets send the cookie and the page's token, must
/// not carry a bearer token away.
async fn kubeconfig_post(
    State(d): State<Arc<Dashboard>>,
    Extension(id): Extension<Identity>,
    Extension(csrf): Extension<CsrfToken>,
    login: Option<Extension<SessionLogin>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = forged_form(&id, &csrf, &body) {
        return r;
    }
    if !page_navigation(&headers) {
        tracing::warn!(target: "audit", user = %id.user, "kubeconfig refused: not a top-level form navigation");
        return error_page(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Download the kubeconfig with the home page's button.",
        );
    }
    let Some(source) = d.kubeconfig.get() else {
        return not_found().await;
    };
    let Some(Extension(login)) = login else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "A kubeconfig is made for a browser session only. Sign in with the browser, or use kfsec login.",
        );
    };
    let all = match workspaces(&d, &id).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let ns = selected_namespace(&mine(&all, &id), field(&body, "ns"));
    let yaml = match source
        .kubeconfig(&id, &login, Some(ns.as_str()).filter(|n| !n.is_empty()))
        .await
    {
        Ok(y) => y,
        Err(e) => {
            tracing::warn!(user = %id.user, error = %e, "kubeconfig could not be made");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The kubeconfig cannot be made right now. Reload the page and try again, or sign in again.",
            );
        }
    };
    tracing::info!(target: "audit", user = %id.user, namespace = %ns, "kubeconfig downloaded");
    let mut r = (StatusCode::OK, yaml).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", kubeconfig_file_name(&id.user))) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

async fn contributors_get(
    State(d): State<Arc<Dashboard>>,
    Extension(id): Extension<Identity>,
    Extension(csrf): Extension<CsrfToken>,
    Path(ns): Path<String>,
) -> Response {
    contributors_view(&d, &id, csrf, &ns, StatusCode::OK, None).await
}

/// The contributors page of `ns` for the caller (controls for owners and cluster admins).
async fn contributors_view(
    d: &Dashboard,
    id: &Identity,
    csrf: CsrfToken,
    ns: &str,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let w = match page_workspace(d, id, ns).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let manage = match d.kfam.may_manage(&UserInfo::from(id), ns).await {
        Ok(m) => m,
        Err(_) => return unavailable(),
    };
    let listed = contributors(&w)
        .into_iter()
        .map(|user| {
            let role = w
                .bindings
                .iter()
                .find(|(u, _)| *u == user)
                .map_or("viewer", |(_, r)| role_words(r));
            ContributorEntry { user, role }
        })
        .collect();
    contributors_page(
        status,
        &ContributorsView {
            ns: w.name,
            owner: w.owner,
            contributors: listed,
            manage,
            csrf,
            error,
        },
    )
}

/// The `{"error"}` text of a dashboard API answer (the text is client-facing by construction).
async fn api_error(resp: Response) -> String {
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "The change failed.".to_owned())
}

async fn contributors_post(
    State(d): State<Arc<Dashboard>>,
    Extension(id): Extension<Identity>,
    Extension(csrf): Extension<CsrfToken>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(r) = forged_form(&id, &csrf, &body) {
        return r;
    }
    if let Err(r) = page_workspace(&d, &id, &ns).await {
        return r;
    }
    let contributor = field(&body, "contributor").unwrap_or_default();
    let json = |role: Option<String>| Bytes::from(json!({"contributor": contributor, "role": role}).to_string());
    let resp = match field(&body, "action").as_deref() {
        Some("add") => {
            let role = field(&body, "role").filter(|r| r == "edit" || r == "view");
            let Some(role) = role else {
                let error = Some("Choose the role edit or view.".to_owned());
                return contributors_view(&d, &id, csrf, &ns, StatusCode::BAD_REQUEST, error).await;
            };
            add_contributor(
                State(d.clone()),
                Extension(id.clone()),
                Path(ns.clone()),
                json(Some(role)),
            )
            .await
        }
        Some("remove") => {
            remove_contributor(State(d.clone()), Extension(id.clone()), Path(ns.clone()), json(None)).await
        }
        _ => return error_page(StatusCode::BAD_REQUEST, "Bad request", "Unknown action."),
    };
    let status = resp.status();
    if status.is_success() {
        return see_other(&format!("/workspaces/{ns}/contributors"));
    }
    let error = api_error(resp).await;
    contributors_view(&d, &id, csrf, &ns, status, Some(error)).await
}

/// Whether the caller owns a workspace.
fn owns_one(all: &[Workspace], id: &Identity) -> bool {
    all.iter().any(|w| dashboard_role(w, &id.user) == Some("owner"))
}

async fn register_get(
    State(d): State<Arc<Dashboard>>,
    Extension(id): Extension<Identity>,
    Extension(csrf): Extension<CsrfToken>,
) -> Response {
    if !d.settings.registration_flow {
        return not_found().await;
    }
    match workspaces(&d, &id).await {
        Ok(all) if owns_one(&all, &id) => see_other("/"),
        Ok(_) => register_page(StatusCode::OK, &default_namespace(&id.user), &csrf, None),
        Err(r) => r,
    }
}

async fn register_post(
    State(d): State<Arc<Dashboard>>,
    Extension(id): Extension<Identity>,
    Extension(csrf): Extension<CsrfToken>,
    body: Bytes,
) -> Response {
    if let Some(r) = forged_form(&id, &csrf, &body) {
        return r;
    }
    if !d.settings.registration_flow {
        return not_found().await;
    }
    let ns = field(&body, "namespace").unwrap_or_default();
    let req = Bytes::from(json!({"namespace": ns}).to_string());
    let resp = create(State(d.clone()), Extension(id.clone()), req).await;
    let status = resp.status();
    if status.is_success() {
        let encoded: String = url::form_urlencoded::byte_serialize(ns.as_bytes()).collect();
        return see_other(&format!("/?ns={encoded}"));
    }
    let error = api_error(resp).await;
    register_page(status, &ns, &csrf, Some(&error))
}

async fn all_profiles(State(d): State<Arc<Dashboard>>, Extension(id): Extension<Identity>) -> Response {
    if !d.kfam.cluster_admin(&UserInfo::from(&id)) {
        return error_page(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Only cluster admins may list every workspace.",
        );
    }
    match workspaces(&d, &id).await {
        Ok(all) => {
            let rows: Vec<ProfileEntry> = all
                .iter()
                .map(|w| ProfileEntry {
                    name: w.name.clone(),
                    owner: w.owner.clone(),
                    contributors: contributors(w).len(),
                })
                .collect();
            profiles_page(&rows)
        }
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_substitute_the_namespace_encoded_and_flatten_sections() {
        let links = json!({
            "menuLinks": [
                {"type": "item", "text": "Notebooks", "link": "/jupyter/?ns={ns}"},
                {"type": "section", "text": "Pipelines", "items": [{"type": "item", "text": "Runs", "link": "/pipeline/#/runs?ns={ns}"}]},
                {"type": "item", "text": "no link"},
            ],
        });
        let got = link_entries(&links, "menuLinks", "a b&c");
        let hrefs: Vec<&str> = got.iter().map(|l| l.href.as_str()).collect();
        assert_eq!(hrefs, ["/jupyter/?ns=a+b%26c", "/pipeline/#/runs?ns=a+b%26c"]);
        assert_eq!(got[1].text, "Pipelines: Runs");
        assert!(link_entries(&links, "quickLinks", "x").is_empty());
    }

    #[test]
    fn form_fields_are_decoded_and_the_first_wins() {
        assert_eq!(field(b"csrf=a%2Bb&csrf=c", "csrf").as_deref(), Some("a+b"));
        assert_eq!(field(b"x=1", "csrf"), None);
        assert_eq!(role_words("edit"), "contributor (edit)");
        assert_eq!(role_words("viewer"), "viewer");
    }

    #[test]
    fn kubeconfig_file_names_and_lifetimes() {
        assert_eq!(
            kubeconfig_file_name("User1@Example.com"),
            "kubeconfig-user1-example-com.yaml"
        );
        assert_eq!(kubeconfig_file_name("\"; rm -rf /\r\n"), "kubeconfig-rm-rf.yaml");
        assert_eq!(kubeconfig_file_name("éé"), "kubeconfig-kfsec.yaml");
        assert_eq!(
            kubeconfig_file_name(&"a".repeat(500)).len(),
            "kubeconfig-.yaml".len() + 63
        );
        assert_eq!(duration_words(Duration::from_secs(86_400)), "24 hours");
        assert_eq!(duration_words(Duration::from_secs(3600)), "1 hour");
        assert_eq!(duration_words(Duration::from_secs(5400)), "90 minutes");
        assert_eq!(duration_words(Duration::from_secs(61)), "61 seconds");
    }

    #[test]
    fn kubeconfigs_answer_top_level_navigations_only() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        for ok in [
            h(&[]),
            h(&[("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "document")]),
            h(&[("sec-fetch-mode", "Navigate"), ("sec-fetch-user", "?1")]),
        ] {
            assert!(page_navigation(&ok), "{ok:?}");
        }
        for script in [
            h(&[("sec-fetch-mode", "cors"), ("sec-fetch-dest", "empty")]),
            h(&[("sec-fetch-mode", "same-origin")]),
            h(&[("sec-fetch-mode", "no-cors")]),
            h(&[("sec-fetch-dest", "empty")]),
            h(&[("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "iframe")]),
            h(&[("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "frame")]),
            h(&[("sec-fetch-mode", "navigate "), ("sec-fetch-dest", "document")]),
        ] {
            assert!(!page_navigation(&script), "{script:?}");
        }
    }

    #[test]
    fn the_selected_namespace_is_one_of_the_callers() {
        let ws = |name: &str| Workspace {
            name: name.into(),
            owner: "o".into(),
            bindings: vec![],
        };
        let (a, b) = (ws("a"), ws("b"));
        let mine = vec![(&a, "viewer"), (&b, "owner")];
        assert_eq!(selected_namespace(&mine, Some("a".into())), "a");
        assert_eq!(selected_namespace(&mine, Some("kube-system".into())), "b");
        assert_eq!(selected_namespace(&mine, None), "b");
        assert_eq!(selected_namespace(&mine[..1], None), "a");
        assert_eq!(selected_namespace(&[], Some("a".into())), "");
    }
}
