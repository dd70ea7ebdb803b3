//! The one place the front door turns its own refusals into responses, per protocol family:
//! Kubernetes `Status` for `/api` and `/apis`, KFP error JSON for `/pipeline/apis`, JSON for
//! `/kfam`, HTML pages for browsers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The protocol family a path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Kubernetes-style API.
    Kubernetes,
    /// Kubeflow Pipelines API.
    Pipelines,
    /// KFAM.
    Kfam,
    /// Everything else (browsers, proxied apps).
    Browser,
}

/// Classifies `path`.
pub fn family(path: &str) -> Family {
    // KFP's persistence-agent report endpoints live under `/apis/v1beta1/` but are Pipelines.
    if path.starts_with("/pipeline/apis/")
        || path == "/apis/v1beta1/workflows"
        || path == "/apis/v1beta1/scheduledworkflows"
    {
        Family::Pipelines
    } else if path == "/api"
        || path == "/apis"
        || path == "/version"
        || path.starts_with("/api/")
        || path.starts_with("/apis/")
        || path.starts_with("/openapi/")
    {
        Family::Kubernetes
    } else if path.starts_with("/kfam/") {
        Family::Kfam
    } else {
        Family::Browser
    }
}

/// A redirect with no body.
pub fn redirect(status: StatusCode, location: &str) -> Response {
    let mut resp = status.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An HTML error page.
pub fn html_error(status: StatusCode, title: &str, message: &str) -> Response {
    kfsec_idp::page(
        status,
        title,
        &format!(
            "<p class=\"err\">{}</p><p><a href=\"/\">Home</a></p>",
            kfsec_idp::escape_html(message)
        ),
    )
}

/// A refusal in the format `path`'s clients understand.
pub fn error(path: &str, status: StatusCode, message: &str) -> Response {
    let code = status.as_u16();
    let mut resp = match family(path) {
        Family::Kubernetes => {
            let reason = match code {
                401 => "Unauthorized",
                403 => "Forbidden",
                404 => "NotFound",
                413 => "RequestEntityTooLarge",
                _ => "BadRequest",
            };
            (
                status,
                axum::Json(serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": message, "reason": reason, "code": code,
                })),
            )
                .into_response()
        }
        Family::Pipelines => {
            let grpc = match code {
                401 => 16,
                403 => 7,
                404 => 5,
                _ => 3,
            };
            (
                status,
                axum::Json(serde_json::json!({"error": message, "code": grpc, "message": message, "details": []})),
            )
                .into_response()
        }
        Family::Kfam => (status, axum::Json(serde_json::json!({"error": message, "code": code}))).into_response(),
        Family::Browser => return html_error(status, status.canonical_reason().unwrap_or("Error"), message),
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// 401 for a request without valid credentials.
pub fn unauthenticated(path: &str) -> Response {
    let msg = match family(path) {
        Family::Pipelines => "Failed to check authorization. User identity is empty in the request header",
        _ => "Unauthorized",
    };
    let mut resp = error(path, StatusCode::UNAUTHORIZED, msg);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"kfsec\""),
    );
    resp
}
