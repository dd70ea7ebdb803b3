//! IdP errors and the one place they become responses: OAuth2 error JSON for the token and
//! userinfo endpoints, an HTML page for browser endpoints.
//!
//! Invariants: internal details (store errors, key problems) are logged, never shown; the
//! caller sees a generic `server_error`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kfsec_store::StoreError;

use crate::jwt::JwtError;

/// Everything that can go wrong inside the IdP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdpError {
    /// Storage failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A stored record did not decode.
    #[error("corrupt record: {0}")]
    Json(#[from] serde_json::Error),
    /// Key handling failed.
    #[error("keys: {0}")]
    Jwt(#[from] JwtError),
    /// An invariant broke.
    #[error("internal: {0}")]
    Internal(String),
    /// Bad input from an admin command.
    #[error("{0}")]
    Invalid(String),
    /// Already exists / defined elsewhere.
    #[error("{0}")]
    Conflict(String),
    /// No such thing.
    #[error("{0} not found")]
    NotFound(String),
}

/// An OAuth2 error (RFC 6749 §5.2).
#[derive(Debug)]
pub struct OAuthError {
    /// HTTP status.
    pub status: StatusCode,
    /// The `error` code.
    pub error: &'static str,
    /// Human-readable detail.
    pub description: String,
}

impl OAuthError {
    /// A 400 with `error`.
    pub fn bad(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
        }
    }
    /// `invalid_grant`.
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::bad("invalid_grant", description)
    }
    /// `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::bad("invalid_request", description)
    }
    /// 401 `invalid_client`.
    pub fn invalid_client() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: "Invalid client credentials.".into(),
        }
    }
}

impl From<IdpError> for OAuthError {
    fn from(e: IdpError) -> Self {
        tracing::error!(error = %e, "identity provider failure");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "server_error",
            description: "Internal server error.".into(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.error, "error_description": self.description});
        let mut resp = (self.status, Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"kfsec\""),
            );
        }
        resp
    }
}

/// A browser-facing error page.
#[derive(Debug)]
pub struct PageError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl PageError {
    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<IdpError> for PageError {
    fn from(e: IdpError) -> Self {
        tracing::error!(error = %e, "identity provider failure");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "Internal server error.".into(),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        crate::pages::idp_error(self.status, &self.message)
    }
}
