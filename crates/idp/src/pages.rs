//! kfsec's HTML pages — the IdP's login form, approval screen and device pages, browser error
//! pages, and the front door's home page — as compiled askama templates (`crates/idp/templates/`,
//! one base layout). This is the one place kfsec writes HTML; the gateway calls [`error_page`]
//! and [`home_page`].
//!
//! Invariants: every interpolated value is escaped by the template engine (text and quoted
//! attribute values; no template marks a value safe), so no caller escapes or builds markup;
//! pages carry no inline script, only the inline style their Content-Security-Policy allows; the
//! only scripts are kfsec's own files (the login pages' `kfsec-login.js`, the Pipelines pages'
//! `kfsec-links.js`), allowed by `script-src 'self'` on those pages alone; pages forbid framing
//! and caching. A page that fails to render is a generic 500, never a panic.

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The Content-Security-Policy of every page: nothing but the inline style, forms posting to
/// this origin, no framing.
const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' https:; form-action 'self'; frame-ancestors 'none'";

/// The Content-Security-Policy of the pages that load one of kfsec's own script files — the
/// login pages (chooser, password form, approval: [`LOGIN_SCRIPT`]) and the Pipelines pages —
/// the pages' own plus `script-src 'self'` (no inline script or handler).
const SCRIPT_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' https:; form-action 'self'; frame-ancestors 'none'";

/// The path of the login pages' script under the issuer path (`/dex/static/kfsec-login.js`).
pub(crate) const LOGIN_SCRIPT: &str = "/static/kfsec-login.js";

/// The branding a login page shows (from [`crate::Branding`]) and where its script is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Brand<'a> {
    logo: Option<&'a str>,
    dark: bool,
    /// The issuer path (`/dex`): the login script is at `{issuer_path}`[`LOGIN_SCRIPT`].
    issuer_path: &'a str,
}

impl<'a> Brand<'a> {
    /// `b`'s branding on a page of the IdP mounted at `issuer_path`.
    pub(crate) fn new(b: &'a crate::Branding, issuer_path: &'a str) -> Self {
        Self {
            logo: b.logo_url.as_deref(),
            dark: b.theme == "dark",
            issuer_path,
        }
    }

    /// The login script's URL (a path on this origin).
    fn script(&self) -> String {
        format!("{}{LOGIN_SCRIPT}", self.issuer_path)
    }
}

/// One line of the approval screen: a scope in words, or a scope kfsec has no words for as it was
/// sent (`raw`, shown as code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScopeLine {
    /// The words, or the scope itself.
    pub(crate) text: String,
    /// Whether `text` is the scope as sent.
    pub(crate) raw: bool,
}

/// The prefix of Dex's cross-client scope (`audience:server:client_id:<id>`: tokens for that
/// client too).
pub(crate) const CROSS_CLIENT_PREFIX: &str = "audience:server:client_id:";

/// What `scope` lets a client do, in words; for a cross-client scope `peer_name` is the other
/// client's name when it exists (its id otherwise).
pub(crate) fn describe_scope(scope: &str, peer_name: Option<&str>) -> ScopeLine {
    let words = |t: &str| ScopeLine {
        text: t.to_owned(),
        raw: false,
    };
    match scope {
        "openid" => words("Confirm who you are (sign you in)"),
        "email" => words("See your email address"),
        "profile" => words("See your name and user name"),
        "groups" => words("See the groups you belong to"),
        "offline_access" => words("Keep access when you are not using it (stay signed in)"),
        "federated:id" => words("See which identity provider you logged in with and your account ID there"),
        _ => match scope.strip_prefix(CROSS_CLIENT_PREFIX) {
            Some(peer) if !peer.is_empty() => ScopeLine {
                text: format!("Issue tokens for {}", peer_name.unwrap_or(peer)),
                raw: false,
            },
            _ => ScopeLine {
                text: scope.to_owned(),
                raw: true,
            },
        },
    }
}

/// One button of the connector chooser.
#[derive(Debug, Clone)]
pub(crate) struct Choice {
    /// Connector id.
    pub(crate) id: String,
    /// Display name.
    pub(crate) name: String,
    /// Dex type (the button's CSS class, as Dex's `dex-btn-icon--{type}`).
    pub(crate) type_name: String,
    /// `/auth/{id}?<the request's parameters>`.
    pub(crate) href: String,
}

/// The connector chooser.
#[derive(Template)]
#[template(path = "chooser.html")]
struct Chooser<'a> {
    title: &'a str,
    brand: Brand<'a>,
    choices: &'a [Choice],
}

/// The password form.
#[derive(Template)]
#[template(path = "login.html")]
struct Login<'a> {
    title: &'a str,
    brand: Brand<'a>,
    action: &'a str,
    prompt: &'a str,
    email_input: bool,
    login: &'a str,
    error: Option<&'a str>,
    back: Option<&'a str>,
}

/// The approval screen; for a device login, the confirmation naming its user code.
#[derive(Template)]
#[template(path = "approval.html")]
struct Approval<'a> {
    title: &'a str,
    brand: Brand<'a>,
    req: &'a str,
    client_name: &'a str,
    scopes: &'a [ScopeLine],
    /// A device login's user code.
    user_code: Option<&'a str>,
}

/// The page a browser lands on after a logout that names no return path.
#[derive(Template)]
#[template(path = "logged_out.html")]
struct LoggedOut<'a> {
    title: &'a str,
    brand: Brand<'a>,
}

/// The form where a user types a device's code.
#[derive(Template)]
#[template(path = "device.html")]
struct Device<'a> {
    title: &'a str,
    issuer_path: &'a str,
    code: &'a str,
}

/// How a one-paragraph message is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tone {
    /// Plain text.
    Notice,
    /// An error.
    Error,
    /// An error announced to assistive technology (`role="alert"`).
    Alert,
}

/// A page with one paragraph of text (errors, confirmations).
#[derive(Template)]
#[template(path = "message.html")]
struct Message<'a> {
    title: &'a str,
    text: &'a str,
    tone: Tone,
    back: Option<&'a str>,
    home: bool,
}

/// The front door's home page.
#[derive(Template)]
#[template(path = "home.html")]
struct Home<'a> {
    title: &'a str,
    user: &'a str,
    groups: &'a [String],
}

/// The per-session token every dashboard form carries (the front door derives it from the
/// session; a page handler compares what a form sends with [`CsrfToken::matches`]). Its Debug
/// output hides the value.
#[derive(Clone)]
pub struct CsrfToken(String);

impl std::fmt::Debug for CsrfToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfToken(..)")
    }
}

impl std::fmt::Display for CsrfToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl CsrfToken {
    /// Wraps a derived token.
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// Whether a form's `submitted` token is this one (constant time; an empty token never
    /// matches).
    pub fn matches(&self, submitted: &str) -> bool {
        !self.0.is_empty() && crate::secret::ct_eq(self.0.as_bytes(), submitted.as_bytes())
    }
}

/// One of the caller's workspaces on the home page.
#[derive(Debug, Clone)]
pub struct WorkspaceEntry {
    /// The namespace.
    pub name: String,
    /// The caller's role, in words (`owner`, `contributor (edit)`, `viewer`).
    pub role: &'static str,
    /// Whether it is the namespace selected in `?ns=`.
    pub selected: bool,
}

/// A link of the dashboard's links configuration, `{ns}` already substituted.
#[derive(Debug, Clone)]
pub struct LinkEntry {
    /// The text.
    pub text: String,
    /// A description (may be empty).
    pub desc: String,
    /// The target (checked at configuration load: http(s) or a same-site path).
    pub href: String,
}

/// What the dashboard's home page shows.
#[derive(Debug, Clone, Default)]
pub struct DashboardView {
    /// The signed-in user.
    pub user: String,
    /// Their groups.
    pub groups: Vec<String>,
    /// Whether they are a cluster admin.
    pub cluster_admin: bool,
    /// Their workspaces and their role in each.
    pub workspaces: Vec<WorkspaceEntry>,
    /// Whether to offer the registration page.
    pub register: bool,
    /// Menu links.
    pub menu: Vec<LinkEntry>,
    /// Quick links.
    pub quick: Vec<LinkEntry>,
    /// External links.
    pub external: Vec<LinkEntry>,
    /// Documentation links.
    pub docs: Vec<LinkEntry>,
    /// The "Download kubeconfig" form, when offered.
    pub kubeconfig: Option<KubeconfigOffer>,
}

/// The home page's "Download kubeconfig" form.
#[derive(Debug, Clone)]
pub struct KubeconfigOffer {
    /// The form's token.
    pub csrf: CsrfToken,
    /// The namespace of the kubeconfig's context (the selected workspace; empty: none).
    pub ns: String,
    /// How long the token in it is valid, in words (`24 hours`).
    pub valid_for: String,
}

/// The dashboard's home page.
#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage<'a> {
    title: &'a str,
    v: &'a DashboardView,
}

/// A contributor on a workspace's contributors page.
#[derive(Debug, Clone)]
pub struct ContributorEntry {
    /// The contributor.
    pub user: String,
    /// Their role in words.
    pub role: &'static str,
}

/// What a workspace's contributors page shows.
#[derive(Debug, Clone)]
pub struct ContributorsView {
    /// The workspace.
    pub ns: String,
    /// Its owner.
    pub owner: String,
    /// Its contributors.
    pub contributors: Vec<ContributorEntry>,
    /// Whether the caller may add and remove (owner or cluster admin): the forms are shown.
    pub manage: bool,
    /// The forms' token.
    pub csrf: CsrfToken,
    /// Why the last change failed.
    pub error: Option<String>,
}

/// A workspace's contributors page.
#[derive(Template)]
#[template(path = "contributors.html")]
struct ContributorsPage<'a> {
    title: &'a str,
    v: &'a ContributorsView,
}

/// One row of the cluster admins' list of workspaces.
#[derive(Debug, Clone)]
pub struct ProfileEntry {
    /// The workspace.
    pub name: String,
    /// Its owner.
    pub owner: String,
    /// How many contributors it has.
    pub contributors: usize,
}

/// The cluster admins' list of workspaces.
#[derive(Template)]
#[template(path = "profiles.html")]
struct ProfilesPage<'a> {
    title: &'a str,
    rows: &'a [ProfileEntry],
}

/// The registration page.
#[derive(Template)]
#[template(path = "register.html")]
struct RegisterPage<'a> {
    title: &'a str,
    namespace: &'a str,
    csrf: &'a CsrfToken,
    error: Option<&'a str>,
}

/// The dashboard's home page.
pub fn dashboard_page(view: &DashboardView) -> Response {
    respond(
        StatusCode::OK,
        &DashboardPage {
            title: "kfsec",
            v: view,
        },
    )
}

/// A workspace's contributors page (`status` is not 200 when a change failed).
pub fn contributors_page(status: StatusCode, view: &ContributorsView) -> Response {
    let title = format!("Contributors of {}", view.ns);
    respond(status, &ContributorsPage { title: &title, v: view })
}

/// The cluster admins' list of every workspace with its owner and contributor count.
pub fn profiles_page(rows: &[ProfileEntry]) -> Response {
    respond(
        StatusCode::OK,
        &ProfilesPage {
            title: "All workspaces",
            rows,
        },
    )
}

/// The registration page: a form creating the caller's workspace, `namespace` prefilled.
pub fn register_page(status: StatusCode, namespace: &str, csrf: &CsrfToken, error: Option<&str>) -> Response {
    respond(
        status,
        &RegisterPage {
            title: "Create your workspace",
            namespace,
            csrf,
            error,
        },
    )
}

/// `template` rendered as a complete page with safe headers.
fn respond(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => respond_html(status, html),
        Err(e) => {
            tracing::error!(error = %e, "page template failed to render");
            respond_html(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.".to_owned())
        }
    }
}

/// A page with a form whose answer redirects to `target` (a client's redirect URI on another
/// origin): browsers hold a form's whole redirect chain to `form-action`, so the policy names
/// that origin (or scheme, for an app's custom scheme) besides `'self'`.
/// Login pages load kfsec's login script ([`SCRIPT_CSP`]).
fn respond_form(status: StatusCode, template: &impl Template, target: Option<&str>) -> Response {
    let mut resp = respond(status, template);
    let csp = match target.and_then(csp_source) {
        Some(source) => SCRIPT_CSP.replace("form-action 'self'", &format!("form-action 'self' {source}")),
        None => SCRIPT_CSP.to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&csp) {
        resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

/// The CSP source expression of a redirect URI: its origin for http(s), its scheme for an app's
/// custom scheme; `None` for a relative URI (this origin) or one that is not a URL.
fn csp_source(redirect_uri: &str) -> Option<String> {
    let u = url::Url::parse(redirect_uri).ok()?;
    match u.scheme() {
        "http" | "https" => Some(u.origin().ascii_serialization()).filter(|o| o != "null"),
        scheme => Some(format!("{scheme}:")),
    }
}

/// `html` with the pages' headers.
fn respond_html(status: StatusCode, html: String) -> Response {
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    resp
}

/// A browser-facing error page: `message` under the heading `title`, with a link home.
pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    respond(
        status,
        &Message {
            title,
            text: message,
            tone: Tone::Error,
            back: None,
            home: true,
        },
    )
}

/// The page after a logout that names no return path (or a refused one): "You are logged out"
/// and a link to log in again (`/`), with the login pages' branding. It needs no session, so
/// showing it never starts a login; it carries no script.
pub fn logged_out_page(branding: &crate::Branding) -> Response {
    respond(
        StatusCode::OK,
        &LoggedOut {
            title: "You are logged out",
            brand: Brand::new(branding, ""),
        },
    )
}

/// The front door's home page for a signed-in user: user name, groups, log-out buttons.
pub fn home_page(user: &str, groups: &[String]) -> Response {
    respond(
        StatusCode::OK,
        &Home {
            title: "kfsec",
            user,
            groups,
        },
    )
}

/// One linked row of a Pipelines page (a run, an experiment, a pipeline…).
#[derive(Debug, Clone, Default)]
pub struct ItemRow {
    /// The item's page (`/pipeline/runs/details/<id>`…).
    pub href: String,
    /// Its display name.
    pub name: String,
    /// A run's state, a pipeline's description…
    pub detail: String,
    /// When it was created (RFC 3339).
    pub created: String,
}

/// A titled table of [`ItemRow`]s.
#[derive(Debug, Clone, Default)]
pub struct ItemSection {
    /// The heading's element id.
    pub id: String,
    /// The heading.
    pub title: String,
    /// The column headings: name, detail (an empty one leaves the column out), time.
    pub columns: (String, String, String),
    /// The rows.
    pub rows: Vec<ItemRow>,
}

/// One labelled value of a Pipelines item page, a link when `href` is not empty.
#[derive(Debug, Clone, Default)]
pub struct ItemField {
    /// The label (`Run id`, `Experiment`…).
    pub label: String,
    /// The value shown.
    pub value: String,
    /// The page the value links to (`/pipeline/experiments/details/<id>`…), or empty.
    pub href: String,
}

/// The read-only Pipelines view of one namespace.
#[derive(Template)]
#[template(path = "pipelines.html")]
struct Pipelines<'a> {
    title: &'a str,
    user: &'a str,
    namespaces: &'a [String],
    selected: &'a str,
    sections: &'a [ItemSection],
}

/// One KFP object: its fields and related items.
#[derive(Template)]
#[template(path = "pipeline_item.html")]
struct PipelineItem<'a> {
    title: &'a str,
    back: &'a str,
    fields: &'a [ItemField],
    sections: &'a [ItemSection],
}

/// `resp` with the Pipelines pages' policy (kfsec's own script allowed).
fn with_pipeline_csp(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(SCRIPT_CSP));
    resp
}

/// The Pipelines view (`/pipeline/`): `user`, the namespace selector (`namespaces`, `selected`)
/// and the namespace's items in `sections`.
pub fn pipelines_page(user: &str, namespaces: &[String], selected: &str, sections: &[ItemSection]) -> Response {
    with_pipeline_csp(respond(
        StatusCode::OK,
        &Pipelines {
            title: "Pipelines",
            user,
            namespaces,
            selected,
            sections,
        },
    ))
}

/// One KFP object's page under `title`: `fields`, related `sections`, a link `back` to its
/// namespace's view.
pub fn pipeline_item_page(title: &str, back: &str, fields: &[ItemField], sections: &[ItemSection]) -> Response {
    with_pipeline_csp(respond(
        StatusCode::OK,
        &PipelineItem {
            title,
            back,
            fields,
            sections,
        },
    ))
}

/// The login pages' script (`{issuer}/static/kfsec-login.js`): carries the page's URL fragment
/// into its forms' and same-origin links' targets, so a fragment the user arrived with (the KFP
/// UI's `#/runs/details/<id>`) survives the login's POST and the redirects after it.
pub(crate) fn login_script() -> Response {
    script(include_str!("../static/kfsec-login.js"))
}

/// The Pipelines pages' script (`/pipeline/kfsec-links.js`): turns the KFP UI's `#/runs/details/<id>`
/// (and experiments, pipelines, recurring runs) into kfsec's `/pipeline/runs/details/<id>`.
pub fn pipeline_links_script() -> Response {
    script(include_str!("../static/kfsec-links.js"))
}

/// A static script of kfsec's with its headers.
fn script(source: &'static str) -> Response {
    let mut resp = (StatusCode::OK, source).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    resp
}

/// The IdP's own error page (no link home: the IdP is mounted under the issuer path); `back`
/// links to the login's chooser when the user can try again.
pub(crate) fn idp_error(status: StatusCode, message: &str, back: Option<&str>) -> Response {
    let title = if status.is_server_error() {
        "Login failed"
    } else {
        "Bad request"
    };
    respond(
        status,
        &Message {
            title,
            text: message,
            tone: Tone::Error,
            back,
            home: false,
        },
    )
}

/// The connector chooser: "Log in with {name}" per connector, under "Log in to {issuer}".
pub(crate) fn chooser(branding: &crate::Branding, issuer_path: &str, choices: &[Choice]) -> Response {
    let title = format!("Log in to {}", branding.issuer_name);
    respond_form(
        StatusCode::OK,
        &Chooser {
            title: &title,
            brand: Brand::new(branding, issuer_path),
            choices,
        },
        None,
    )
}

/// What a password form shows besides its fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PasswordForm<'a> {
    /// The login pages' branding.
    pub(crate) branding: &'a crate::Branding,
    /// The issuer path (where the login script is).
    pub(crate) issuer_path: &'a str,
    /// The form's own URL.
    pub(crate) action: &'a str,
    /// The user-name label (`Email Address` for local, the connector's `usernamePrompt`).
    pub(crate) prompt: &'a str,
    /// Whether the user name is an email address (the input's type).
    pub(crate) email_input: bool,
    /// The chooser, when there is more than one connector.
    pub(crate) back: Option<&'a str>,
    /// Where the form's answer redirects: the client's redirect URI.
    pub(crate) redirect_uri: &'a str,
}

/// The password form. `error` is shown above the form (and makes the answer a 401, or
/// `status` when given: an upstream failure's 502/504).
pub(crate) fn login_form(
    form: PasswordForm<'_>,
    login: &str,
    error: Option<&str>,
    status: Option<StatusCode>,
) -> Response {
    let status = status.unwrap_or(if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    });
    respond_form(
        status,
        &Login {
            title: "Log in to Your Account",
            brand: Brand::new(form.branding, form.issuer_path),
            action: form.action,
            prompt: form.prompt,
            email_input: form.email_input,
            login,
            error,
            back: form.back,
        },
        Some(form.redirect_uri),
    )
}

/// The approval screen: `client_name` asks for `scopes` (in words, [`describe_scope`]); `req`
/// is the signed request.
pub(crate) fn approval(
    brand: Brand<'_>,
    req: &str,
    client_name: &str,
    scopes: &[ScopeLine],
    redirect_uri: &str,
    user_code: Option<&str>,
) -> Response {
    respond_form(
        StatusCode::OK,
        &Approval {
            title: if user_code.is_some() {
                "Confirm device login"
            } else {
                "Grant Access"
            },
            brand,
            req,
            client_name,
            scopes,
            user_code,
        },
        Some(redirect_uri),
    )
}

/// The device page: the form posting a user code (`code` prefilled) to the issuer's
/// `/device/auth/verify_code`.
pub(crate) fn device(issuer_path: &str, code: &str) -> Response {
    respond(
        StatusCode::OK,
        &Device {
            title: "Log in a device",
            issuer_path,
            code,
        },
    )
}

/// The device page's answer to too many code entries (429; the caller adds `Retry-After`).
pub(crate) fn device_throttled() -> Response {
    respond(
        StatusCode::TOO_MANY_REQUESTS,
        &Message {
            title: "Log in a device",
            text: "Too many attempts. Wait a few minutes and try again.",
            tone: Tone::Alert,
            back: None,
            home: false,
        },
    )
}

/// The device flow's last page in the browser when the user cancelled on the confirmation.
pub(crate) fn device_cancelled() -> Response {
    respond(
        StatusCode::OK,
        &Message {
            title: "Login cancelled",
            text: "The device was not logged in. You can close this page.",
            tone: Tone::Notice,
            back: None,
            home: false,
        },
    )
}

/// The device flow's last page in the browser.
pub(crate) fn device_done() -> Response {
    respond(
        StatusCode::OK,
        &Message {
            title: "Login successful",
            text: "You are logged in. Return to your device to continue.",
            tone: Tone::Notice,
            back: None,
            home: false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile text for every slot: tags, both quotes, ampersands, an attribute breakout.
    const HOSTILE: &str = "<script>alert(1)</script>\"'&amp;\" onmouseover=\"x\" a='b' </p><p>";

    fn body(template: &impl Template) -> String {
        template.render().unwrap()
    }

    /// A login page's HTML without its one script element, kfsec's own login script (asserted
    /// there exactly once).
    fn without_login_script(html: &str) -> String {
        let own = "<script src=\"/dex/static/kfsec-login.js\"></script>";
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        assert_eq!(html.matches(own).count(), 1, "{html}");
        html.replacen(own, "", 1)
    }

    /// No hostile markup or quote survives unescaped, and the escaped form is there once per slot.
    fn assert_escaped(html: &str, slots: usize) {
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("onmouseover=\""), "{html}");
        assert!(!html.contains("a='b'"), "{html}");
        assert!(!html.contains("</p><p>"), "{html}");
        assert!(!html.contains("&amp;"), "an ampersand left unescaped: {html}");
        assert_eq!(
            html.matches("&#60;script&#62;alert(1)&#60;/script&#62;&#34;&#39;&#38;amp;&#34; onmouseover=&#34;x&#34; a=&#39;b&#39; &#60;/p&#62;&#60;p&#62;").count(),
            slots,
            "{html}"
        );
    }

    #[test]
    fn login_escapes_every_slot() {
        let brand = Brand {
            logo: Some(HOSTILE),
            dark: true,
            issuer_path: "/dex",
        };
        let html = body(&Login {
            title: HOSTILE,
            brand,
            action: HOSTILE,
            prompt: HOSTILE,
            email_input: false,
            login: HOSTILE,
            error: Some(HOSTILE),
            back: Some(HOSTILE),
        });
        let html = without_login_script(&html);
        // title twice (<title> and <h1>), logo, action, prompt, login, error, back.
        assert_escaped(&html, 8);
        assert!(html.contains("<body class=\"dark\">"), "{html}");
        let html = body(&Login {
            title: "Log in",
            brand: Brand {
                logo: None,
                dark: false,
                issuer_path: "/dex",
            },
            action: "/dex/auth/local/login?req=a&b=c",
            prompt: "Email Address",
            email_input: true,
            login: "",
            error: None,
            back: None,
        });
        assert!(html.contains("<body><main><h1>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("Select another login method"), "{html}");
        assert!(html.contains("type=\"email\""), "{html}");
        assert!(
            html.contains("action=\"/dex/auth/local/login?req=a&#38;b=c\""),
            "{html}"
        );
        assert!(
            html.contains("name=\"login\"") && html.contains("name=\"password\""),
            "{html}"
        );
        assert!(!html.contains("role=\"alert\""), "{html}");
        assert!(
            html.contains("<form method=\"post\" action=\"/dex/auth/local/login?req=a&#38;b=c\" id=\"login-form\">"),
            "{html}"
        );
        without_login_script(&html);
    }

    #[test]
    fn scopes_are_described_in_words_and_unknown_ones_shown_as_sent() {
        let d = |s: &str, peer: Option<&str>| describe_scope(s, peer);
        for known in ["openid", "email", "profile", "groups", "offline_access", "federated:id"] {
            let line = d(known, None);
            assert!(
                !line.raw && line.text != known && line.text.contains(' '),
                "{known}: {line:?}"
            );
        }
        assert_eq!(d("email", None).text, "See your email address");
        assert_eq!(
            d("offline_access", None).text,
            "Keep access when you are not using it (stay signed in)"
        );
        assert_eq!(
            d("audience:server:client_id:kfp", Some("Kubeflow Pipelines")).text,
            "Issue tokens for Kubeflow Pipelines"
        );
        // A peer that does not exist is named by its id; an empty one is just an unknown scope.
        assert_eq!(
            d("audience:server:client_id:ghost", None).text,
            "Issue tokens for ghost"
        );
        assert_eq!(
            d("audience:server:client_id:", None),
            ScopeLine {
                text: "audience:server:client_id:".into(),
                raw: true
            }
        );
        // Spellings that are not the scope are not described as it.
        for other in ["Email", "email ", "openid\0", "groups:x", "GROUPS"] {
            assert_eq!(
                d(other, None),
                ScopeLine {
                    text: other.into(),
                    raw: true
                },
                "{other:?}"
            );
        }
    }

    #[test]
    fn cross_client_scopes_are_refused_before_any_screen_names_a_peer() {
        // kfsec has no trusted peers: a request naming another client (to learn its name on
        // the approval screen, or to get tokens for it) is refused at /auth, the device flow
        // and the password grant alike, so `describe_scope`'s peer lookup sees no such scope.
        for raw in [
            "openid audience:server:client_id:kfsec-gatekeeper",
            "openid audience:server:client_id:",
            "openid email Audience:Server:Client_ID:kfsec-cli",
        ] {
            assert!(crate::flow::requested_scopes(raw).is_err(), "{raw:?}");
        }
        assert!(crate::flow::requested_scopes("openid email groups").is_ok());
    }

    #[test]
    fn scope_lists_are_read_as_dex_reads_them_however_long() {
        let read = |raw: &str| crate::flow::requested_scopes(raw).map_err(|e| e.description.to_string());
        assert_eq!(
            read(" email\topenid email  groups openid ").unwrap(),
            ["email", "openid", "groups"],
            "de-duplicated, first spelling's order"
        );
        // Missing openid is said before an unknown scope, as Dex does; the first unknown is named.
        assert_eq!(read("zz email").unwrap_err(), "Missing required scope(s) [\"openid\"].");
        assert_eq!(read("openid zz yy zz").unwrap_err(), "Unrecognized scope(s) [\"zz\"]");
        // Thousands of distinct scopes (a 64 KiB body's worth) are one pass, not a comparison
        // of each with all before it; the answer is the same refusal.
        let many: String = (0..16_000).map(|i| format!("s{i} ")).collect::<String>() + "openid";
        assert_eq!(read(&many).unwrap_err(), "Unrecognized scope(s) [\"s0\"]");
    }

    #[test]
    fn approval_escapes_every_slot() {
        let scopes = vec![
            describe_scope(HOSTILE, None),
            describe_scope(&format!("{CROSS_CLIENT_PREFIX}x"), Some(HOSTILE)),
            describe_scope("openid", None),
            describe_scope("groups", None),
        ];
        let html = body(&Approval {
            title: HOSTILE,
            brand: Brand {
                logo: None,
                dark: false,
                issuer_path: "/dex",
            },
            req: HOSTILE,
            client_name: HOSTILE,
            scopes: &scopes,
            user_code: None,
        });
        let html = without_login_script(&html);
        // title twice, req, client name, the unknown scope (as code), the peer's name.
        assert_escaped(&html, 6);
        assert!(html.contains("<ul id=\"scopes\"><li><code>&#60;script"), "{html}");
        assert!(html.contains("<li>Issue tokens for &#60;script"), "{html}");
        assert!(
            html.contains("<li>Confirm who you are (sign you in)</li><li>See the groups you belong to</li></ul>"),
            "{html}"
        );
        assert!(
            !html.contains("<code>openid</code>") && !html.contains(">groups<"),
            "{html}"
        );
        assert!(html.contains("<form method=\"post\" id=\"approval-form\">"), "{html}");
        assert!(html.contains("name=\"approval\" value=\"approve\""), "{html}");
        assert!(!html.contains("style=\""), "no inline style attribute: {html}");
    }

    #[test]
    fn device_confirmation_names_the_code_and_escapes_every_slot() {
        let scopes = vec![describe_scope("openid", None)];
        let html = body(&Approval {
            title: HOSTILE,
            brand: Brand {
                logo: None,
                dark: false,
                issuer_path: "/dex",
            },
            req: HOSTILE,
            client_name: HOSTILE,
            scopes: &scopes,
            user_code: Some(HOSTILE),
        });
        let html = without_login_script(&html);
        // title twice, req, client name, user code.
        assert_escaped(&html, 5);
        assert!(
            html.contains("A device is asking for access to your account as <b>"),
            "{html}"
        );
        assert!(
            html.contains("Confirm the code shown on your device: <b id=\"user-code\">&#60;script"),
            "{html}"
        );
        assert!(!html.contains("would like to"), "{html}");
        assert!(html.contains("<form method=\"post\" id=\"approval-form\">"), "{html}");
        assert!(
            html.contains("name=\"approval\" value=\"approve\">Grant Access"),
            "{html}"
        );
    }

    #[test]
    fn device_escapes_every_slot() {
        let html = body(&Device {
            title: HOSTILE,
            issuer_path: HOSTILE,
            code: HOSTILE,
        });
        assert_escaped(&html, 4);
        let html = body(&Device {
            title: "t",
            issuer_path: "/dex",
            code: "ABCD-EFGH",
        });
        assert!(html.contains("action=\"/dex/device/auth/verify_code\""), "{html}");
        assert!(html.contains("name=\"user_code\" value=\"ABCD-EFGH\""), "{html}");
    }

    #[test]
    fn message_escapes_every_slot() {
        for tone in [Tone::Notice, Tone::Error, Tone::Alert] {
            for home in [false, true] {
                let html = body(&Message {
                    title: HOSTILE,
                    text: HOSTILE,
                    tone,
                    back: Some(HOSTILE),
                    home,
                });
                assert_escaped(&html, 4);
                assert_eq!(html.contains("<a href=\"/\">Home</a>"), home, "{html}");
                assert_eq!(html.contains("role=\"alert\""), tone == Tone::Alert, "{html}");
            }
        }
    }

    #[test]
    fn forms_may_redirect_to_their_clients_origin_only() {
        assert_eq!(
            csp_source("https://rp.example:8443/cb?x=1").as_deref(),
            Some("https://rp.example:8443")
        );
        assert_eq!(
            csp_source("http://127.0.0.1:5555/callback").as_deref(),
            Some("http://127.0.0.1:5555")
        );
        assert_eq!(
            csp_source("com.example.app:/oauth").as_deref(),
            Some("com.example.app:")
        );
        assert_eq!(csp_source("/authservice/oidc/callback"), None);
        let branding = crate::Branding::default();
        let form = |redirect_uri| PasswordForm {
            branding: &branding,
            issuer_path: "/dex",
            action: "/a",
            prompt: "Username",
            email_input: false,
            back: None,
            redirect_uri,
        };
        let csp = |r: Response| {
            r.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .to_owned()
        };
        let page = csp(login_form(form("https://rp.example/cb"), "", None, None));
        assert!(page.contains("form-action 'self' https://rp.example;"), "{page}");
        // Login pages load kfsec's own script file, nothing else.
        assert_eq!(
            csp(login_form(form("/authservice/oidc/callback"), "", None, None)),
            SCRIPT_CSP
        );
        // A redirect URI cannot inject directives: only a parsed origin or scheme gets in.
        let page = csp(login_form(form("https://rp.example/cb; script-src *"), "", None, None));
        assert!(!page.contains('*') && page.matches("script-src").count() == 1, "{page}");
        let brand = Brand::new(&branding, "/dex");
        let page = csp(approval(brand, "r", "RP", &[], "https://rp.example/cb", None));
        assert!(page.contains("form-action 'self' https://rp.example;"), "{page}");
    }

    #[test]
    fn chooser_escapes_every_slot() {
        let choices = vec![
            Choice {
                id: HOSTILE.into(),
                name: HOSTILE.into(),
                type_name: HOSTILE.into(),
                href: HOSTILE.into(),
            },
            Choice {
                id: "local".into(),
                name: "Email".into(),
                type_name: "local".into(),
                href: "/dex/auth/local?client_id=a&state=b".into(),
            },
        ];
        let html = body(&Chooser {
            title: HOSTILE,
            brand: Brand {
                logo: Some(HOSTILE),
                dark: false,
                issuer_path: "/dex",
            },
            choices: &choices,
        });
        let html = without_login_script(&html);
        // title twice, logo, and id, name, type, href of the first choice.
        assert_escaped(&html, 7);
        assert!(
            html.contains("<a href=\"/dex/auth/local?client_id=a&#38;state=b\" class=\"dex-btn-icon--local\" id=\"connector-local\">Log in with Email</a>"),
            "{html}"
        );
    }

    #[test]
    fn home_escapes_every_slot() {
        let groups = vec![HOSTILE.to_owned(), HOSTILE.to_owned()];
        let html = body(&Home {
            title: HOSTILE,
            user: HOSTILE,
            groups: &groups,
        });
        assert_escaped(&html, 5);
        let html = body(&Home {
            title: "kfsec",
            user: "a@b",
            groups: &[],
        });
        assert!(
            html.contains("<span id=\"groups\"><span class=\"muted\">none</span></span>"),
            "{html}"
        );
        let groups = vec!["g1".to_owned(), "g2".to_owned()];
        let html = body(&Home {
            title: "kfsec",
            user: "a@b",
            groups: &groups,
        });
        assert!(html.contains("<b id=\"user\">a@b</b>"), "{html}");
        assert!(
            html.contains("<span id=\"groups\"><code>g1</code> <code>g2</code></span>"),
            "{html}"
        );
    }

    #[test]
    fn pipelines_pages_escape_every_slot() {
        let row = ItemRow {
            href: HOSTILE.into(),
            name: HOSTILE.into(),
            detail: HOSTILE.into(),
            created: HOSTILE.into(),
        };
        let sections = vec![ItemSection {
            id: HOSTILE.into(),
            title: HOSTILE.into(),
            columns: (HOSTILE.into(), HOSTILE.into(), HOSTILE.into()),
            rows: vec![row],
        }];
        let namespaces = vec![HOSTILE.to_owned()];
        let html = body(&Pipelines {
            title: HOSTILE,
            user: HOSTILE,
            namespaces: &namespaces,
            selected: HOSTILE,
            sections: &sections,
        });
        // kfsec's own script file is the page's only script.
        let own = "<script src=\"/pipeline/kfsec-links.js\"></script>";
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        let html = html.replacen(own, "", 1);
        // title twice, user, the option's value and text, section id, title, three headings, the
        // row's four.
        assert_escaped(&html, 14);
        assert!(html.contains(" selected>"), "{html}");
        let fields = vec![ItemField {
            label: HOSTILE.into(),
            value: HOSTILE.into(),
            href: HOSTILE.into(),
        }];
        let html = body(&PipelineItem {
            title: HOSTILE,
            back: HOSTILE,
            fields: &fields,
            sections: &sections,
        });
        // title twice, back, the field's three, the section's five, the row's four.
        assert_escaped(&html, 15);
        let resp = pipelines_page("u", &[], "", &[]);
        let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("script-src 'self';") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        let js = pipeline_links_script();
        assert_eq!(js.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    }

    #[test]
    fn dashboard_escapes_every_slot() {
        let link = || LinkEntry {
            text: HOSTILE.into(),
            desc: HOSTILE.into(),
            href: HOSTILE.into(),
        };
        let view = DashboardView {
            user: HOSTILE.into(),
            groups: vec![HOSTILE.into()],
            cluster_admin: true,
            workspaces: vec![WorkspaceEntry {
                name: HOSTILE.into(),
                role: "owner",
                selected: true,
            }],
            register: true,
            menu: vec![link()],
            quick: vec![link()],
            external: vec![link()],
            docs: vec![link()],
            kubeconfig: Some(KubeconfigOffer {
                csrf: CsrfToken::new(HOSTILE.into()),
                ns: HOSTILE.into(),
                valid_for: HOSTILE.into(),
            }),
        };
        let html = body(&DashboardPage {
            title: HOSTILE,
            v: &view,
        });
        // title twice, user, group, workspace name 6 times (link, text, contributors link and
        // its text, option value and text), menu 2, quick 3, external 2, docs 3, the kubeconfig
        // form 5 (token, namespace twice, lifetime, user).
        assert_escaped(&html, 2 + 1 + 1 + 6 + 2 + 3 + 2 + 3 + 5);
        assert!(html.contains("<form method=\"post\" action=\"/kubeconfig\""), "{html}");
        // The token is stateless: the page must not let the user believe "Log out" voids it.
        assert!(
            html.contains("&ldquo;Log out&rdquo; on this device does not revoke it; &ldquo;Log out everywhere&rdquo; or a password change does."),
            "{html}"
        );
        assert!(html.contains("<label for=\"ns\">Namespace</label>"), "{html}");
        assert!(html.contains("href=\"/register\"") && html.contains("href=\"/admin/profiles\""));
        // One "Log out" control (a link to oauth2-proxy's path) and a differently named
        // "Log out everywhere".
        assert_eq!(html.matches(">Log out<").count(), 1, "{html}");
        assert!(
            html.contains("<a href=\"/oauth2/sign_out\" id=\"logout\">Log out</a>"),
            "{html}"
        );
        assert_eq!(html.matches(">Log out everywhere<").count(), 1, "{html}");
        assert!(!html.contains("/authservice/logout\""), "{html}");
        let html = body(&DashboardPage {
            title: "kfsec",
            v: &DashboardView::default(),
        });
        assert!(
            html.contains("id=\"no-workspaces\"") && !html.contains("<select"),
            "{html}"
        );
        assert!(
            !html.contains("/register") && !html.contains("/admin/profiles") && !html.contains("/kubeconfig"),
            "{html}"
        );
    }

    #[test]
    fn contributors_escapes_every_slot_and_shows_controls_to_managers_only() {
        for manage in [true, false] {
            let view = ContributorsView {
                ns: HOSTILE.into(),
                owner: HOSTILE.into(),
                contributors: vec![ContributorEntry {
                    user: HOSTILE.into(),
                    role: "viewer",
                }],
                manage,
                csrf: CsrfToken::new(HOSTILE.into()),
                error: Some(HOSTILE.into()),
            };
            let html = body(&ContributorsPage {
                title: HOSTILE,
                v: &view,
            });
            // title 2, ns 2, owner, error, user; when managing: remove form (action, token,
            // user, label) and add form (action, token).
            assert_escaped(&html, if manage { 7 + 6 } else { 7 });
            assert_eq!(html.contains("<form"), manage, "{html}");
            assert_eq!(html.contains("name=\"csrf\""), manage, "{html}");
        }
    }

    #[test]
    fn profiles_and_register_escape_every_slot() {
        let rows = vec![ProfileEntry {
            name: HOSTILE.into(),
            owner: HOSTILE.into(),
            contributors: 3,
        }];
        let html = body(&ProfilesPage {
            title: HOSTILE,
            rows: &rows,
        });
        assert_escaped(&html, 2 + 3);
        assert!(html.contains("<td class=\"count\">3</td>"), "{html}");
        let csrf = CsrfToken::new(HOSTILE.into());
        let html = body(&RegisterPage {
            title: HOSTILE,
            namespace: HOSTILE,
            csrf: &csrf,
            error: Some(HOSTILE),
        });
        assert_escaped(&html, 2 + 3);
        assert!(html.contains("<label for=\"namespace\">"), "{html}");
    }

    #[test]
    fn the_logged_out_page_says_so_links_to_a_new_login_and_has_no_script() {
        let branding = crate::Branding {
            issuer_name: HOSTILE.into(),
            logo_url: Some(HOSTILE.into()),
            theme: "dark".into(),
        };
        let html = body(&LoggedOut {
            title: "You are logged out",
            brand: Brand::new(&branding, HOSTILE),
        });
        // The logo is the only slot (the issuer path is not used: the page loads no script).
        assert_escaped(&html, 1);
        assert!(html.contains("<h1>You are logged out</h1>"), "{html}");
        assert!(
            html.contains("<a href=\"/\" id=\"login-again\">Log in again</a>"),
            "{html}"
        );
        assert!(html.contains("id=\"logged-out\" role=\"status\""), "{html}");
        assert!(html.contains("<body class=\"dark\">"), "branded: {html}");
        let resp = logged_out_page(&crate::Branding::default());
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn the_login_script_is_served_as_a_script_and_keeps_only_the_fragment() {
        let js = login_script();
        assert_eq!(js.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        let src = include_str!("../static/kfsec-login.js");
        // Targets are rebuilt with the URL API and must stay on this origin; nothing is written
        // as markup or evaluated.
        assert!(src.contains("new URL(") && src.contains("u.origin !== here"), "{src}");
        for banned in ["innerHTML", "eval(", "document.write", "Function("] {
            assert!(!src.contains(banned), "{banned}");
        }
    }

    #[test]
    fn csrf_tokens_compare_whole_and_hide_in_debug() {
        let t = CsrfToken::new("abc".into());
        assert!(t.matches("abc"));
        assert!(!t.matches("ab") && !t.matches("abcd") && !t.matches(""));
        assert!(!CsrfToken::new(String::new()).matches(""));
        assert!(!format!("{t:?}").contains("abc"));
    }

    #[test]
    fn pages_are_complete_documents_with_safe_headers() {
        let resp = error_page(StatusCode::FORBIDDEN, "Forbidden", "no");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let h = resp.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP);
        let html = body(&Message {
            title: "Forbidden",
            text: "no",
            tone: Tone::Error,
            back: None,
            home: true,
        });
        assert!(html.starts_with("<!doctype html>"), "{html}");
        assert!(
            html.contains("<title>Forbidden</title>") && html.contains("<h1>Forbidden</h1>"),
            "{html}"
        );
        assert!(html.contains("<p class=\"err\">no</p>"), "{html}");
        assert!(html.trim_end().ends_with("</html>"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        let branding = crate::Branding::default();
        let form = PasswordForm {
            branding: &branding,
            issuer_path: "/dex",
            action: "/a",
            prompt: "Username",
            email_input: false,
            back: None,
            redirect_uri: "/authservice/oidc/callback",
        };
        assert_eq!(
            login_form(form, "", Some("bad"), None).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(login_form(form, "", None, None).status(), StatusCode::OK);
        assert_eq!(
            login_form(form, "", Some("slow"), Some(StatusCode::GATEWAY_TIMEOUT)).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(device_throttled().status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
