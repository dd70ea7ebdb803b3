//! The IdP's HTML: login form, approval screen, error page. Every interpolated value goes
//! through [`escape_html`]; pages forbid framing and caching.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f4f6f8;margin:0}\
main{max-width:380px;margin:10vh auto;background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 4px #0002}\
h1{font-size:1.3rem;margin-top:0}label{display:block;margin:.8rem 0 .2rem}\
input[type=text],input[type=email],input[type=password]{width:100%;padding:.5rem;box-sizing:border-box}\
button{margin-top:1rem;padding:.5rem 1rem;background:#1a73e8;color:#fff;border:0;border-radius:4px;cursor:pointer}\
.err{color:#b00020}.muted{color:#555}code{background:#eee;padding:0 .2rem}";

/// A complete page with kfsec's look and safe headers.
pub fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{t}</title><style>{STYLE}</style></head><body><main><h1>{t}</h1>{body}</main></body></html>",
        t = escape_html(title)
    );
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    resp
}

/// The password form. `action` is the form's own URL; `error` is shown above the form.
pub(crate) fn login_form(action: &str, login: &str, error: Option<&str>) -> Response {
    let err = error
        .map(|e| format!("<p class=\"err\" role=\"alert\">{}</p>", escape_html(e)))
        .unwrap_or_default();
    let body = format!(
        "{err}<form method=\"post\" action=\"{a}\">\
<label for=\"login\">Email Address</label><input type=\"email\" id=\"login\" name=\"login\" value=\"{l}\" autocomplete=\"username\" required autofocus>\
<label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
<button type=\"submit\" id=\"submit-login\">Login</button></form>",
        a = escape_html(action),
        l = escape_html(login),
    );
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    page(status, "Log in to Your Account", &body)
}

/// The approval screen.
pub(crate) fn approval(req: &str, client_name: &str, scopes: &[String]) -> Response {
    let items: String = scopes
        .iter()
        .map(|s| format!("<li><code>{}</code></li>", escape_html(s)))
        .collect();
    let body = format!(
        "<p><b>{c}</b> would like to:</p><ul>{items}</ul>\
<form method=\"post\"><input type=\"hidden\" name=\"req\" value=\"{r}\">\
<button type=\"submit\" name=\"approval\" value=\"approve\">Grant Access</button> \
<button type=\"submit\" name=\"approval\" value=\"rejected\" style=\"background:#777\">Cancel</button></form>",
        c = escape_html(client_name),
        r = escape_html(req),
    );
    page(StatusCode::OK, "Grant Access", &body)
}
