//! IdP errors and the one place they become responses: OAuth2 error JSON for the token and
//! userinfo endpoints, an HTML page for browser endpoints.
//!
//! Invariants: internal details (store errors, key problems) are logged, never shown; the
//! caller sees a generic `server_error`.

use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kfsec_store::StoreError;
use kfsec_types::{Failure, Refusal};
use serde::de::DeserializeOwned;

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

/// An OAuth2 / OIDC `error` code (RFC 6749 §4.1.2.1 and §5.2, RFC 6750 §3.1, RFC 8628 §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OAuthCode {
    /// The request is missing or repeats a parameter, or is malformed.
    InvalidRequest,
    /// Client authentication failed.
    InvalidClient,
    /// The grant (code, refresh token, device code) is invalid, expired or revoked.
    InvalidGrant,
    /// The client may not use this grant type.
    UnauthorizedClient,
    /// The grant type is not supported.
    UnsupportedGrantType,
    /// The requested scope is invalid or unknown.
    InvalidScope,
    /// The user or the server denied the request.
    AccessDenied,
    /// The response type is not supported.
    UnsupportedResponseType,
    /// The server failed.
    ServerError,
    /// The server is overloaded; retry later.
    TemporarilyUnavailable,
    /// The access token is invalid (bearer-token endpoints).
    InvalidToken,
    /// Device flow: the user has not finished yet.
    AuthorizationPending,
    /// Device flow: poll less often.
    SlowDown,
    /// Device flow: the device code expired.
    ExpiredToken,
}

impl OAuthCode {
    /// The wire spelling, e.g. `invalid_grant`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::AccessDenied => "access_denied",
            Self::UnsupportedResponseType => "unsupported_response_type",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::InvalidToken => "invalid_token",
            Self::AuthorizationPending => "authorization_pending",
            Self::SlowDown => "slow_down",
            Self::ExpiredToken => "expired_token",
        }
    }
}

impl std::fmt::Display for OAuthCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An OAuth2 error (RFC 6749 §5.2).
#[derive(Debug)]
pub struct OAuthError {
    /// HTTP status.
    pub status: StatusCode,
    /// The `error` code.
    pub error: OAuthCode,
    /// Human-readable detail.
    pub description: String,
    /// For a failure of the IdP (500): the cause, for the log line only (never sent).
    pub(crate) cause: Option<String>,
}

impl OAuthError {
    /// A 400 with `error`.
    pub fn bad(error: OAuthCode, description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
            cause: None,
        }
    }
    /// `invalid_grant`.
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::bad(OAuthCode::InvalidGrant, description)
    }
    /// `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::bad(OAuthCode::InvalidRequest, description)
    }
    /// 401 `invalid_client`.
    pub fn invalid_client() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: OAuthCode::InvalidClient,
            description: "Invalid client credentials.".into(),
            cause: None,
        }
    }
}

impl OAuthError {
    /// An error of `status` with `error` and `description`.
    pub fn new(status: StatusCode, error: OAuthCode, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            cause: None,
        }
    }

    /// For a failure of the IdP: its cause, for a log line (never for a client).
    pub fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }

    /// The one renderer of OAuth2 error JSON.
    fn render(&self) -> Response {
        let body = serde_json::json!({"error": self.error.as_str(), "error_description": self.description});
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

impl From<IdpError> for OAuthError {
    fn from(e: IdpError) -> Self {
        Self {
            cause: Some(e.to_string()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                OAuthCode::ServerError,
                "Internal server error.",
            )
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut resp = self.render();
        if let Some(cause) = self.cause {
            resp.extensions_mut().insert(Failed { cause, page: false });
        }
        resp
    }
}

/// A failure of the IdP answered by a handler: the generic answer carries this until the IdP
/// router's [`incidents`] layer replaces it with the answer carrying an incident id and logs the
/// cause under that id.
#[derive(Debug, Clone)]
struct Failed {
    cause: String,
    page: bool,
}

/// The IdP router's layer: a failure (see [`Failed`]) is logged with its cause under a fresh
/// incident id and answered 500 with a generic message and that id, in the endpoint's format
/// (OAuth2 JSON or an HTML page).
pub(crate) async fn incidents(
    axum::extract::State(idp): axum::extract::State<std::sync::Arc<crate::Idp>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let resp = next.run(req).await;
    let Some(failed) = resp.extensions().get::<Failed>().cloned() else {
        return resp;
    };
    if StoreError::text_is_unavailable(&failed.cause) {
        // The store cannot be reached (etcd down): 503, retry later — not a failure of kfsec.
        let r = Refusal::failure(Failure::Storage, idp.rng());
        tracing::warn!(incident = %r.incident_id(), error = %failed.cause, "identity provider: store unavailable; answered 503");
        return if failed.page {
            crate::pages::idp_error(StatusCode::SERVICE_UNAVAILABLE, &r.text(), None)
        } else {
            OAuthError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                OAuthCode::TemporarilyUnavailable,
                r.text(),
            )
            .render()
        };
    }
    let r = Refusal::failure(Failure::Internal, idp.rng());
    tracing::error!(incident = %r.incident_id(), error = %failed.cause, "identity provider failure");
    if failed.page {
        crate::pages::idp_error(StatusCode::INTERNAL_SERVER_ERROR, &r.text(), None)
    } else {
        OAuthError::new(StatusCode::INTERNAL_SERVER_ERROR, OAuthCode::ServerError, r.text()).render()
    }
}

/// A browser-facing error page.
#[derive(Debug)]
pub struct PageError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) cause: Option<String>,
    /// The chooser, when the user can start again.
    pub(crate) back: Option<String>,
}

impl PageError {
    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            cause: None,
            back: None,
        }
    }

    /// A connector's refusal as a page: its status (4xx or 502–504) and its message for users
    /// (the detail is logged, not shown), with a link back to the chooser.
    pub(crate) fn connector(connector: &str, e: &crate::connector::ConnectorError, back: Option<String>) -> Self {
        tracing::warn!(target: "audit", connector, error = %e, "upstream login failed");
        Self {
            status: e.status(),
            message: e.user_message().to_owned(),
            cause: None,
            back,
        }
    }
}

impl From<IdpError> for PageError {
    fn from(e: IdpError) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "Internal server error.".into(),
            cause: Some(e.to_string()),
            back: None,
        }
    }
}

/// What a form body that could not be read gets told (axum's own text is never shown): its
/// status (413 too large, 415 not a form, 400 otherwise) and a sentence.
fn form_problem(e: &FormRejection) -> (StatusCode, &'static str) {
    match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "The form must be sent as application/x-www-form-urlencoded.",
        ),
        _ => (StatusCode::BAD_REQUEST, "The form could not be read."),
    }
}

/// A form body, or the status and sentence of why it cannot be read.
async fn read_form<T: DeserializeOwned, S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<T, (StatusCode, &'static str)> {
    Form::<T>::from_request(req, state)
        .await
        .map(|Form(form)| form)
        .map_err(|e| {
            tracing::debug!(error = %e, "form refused");
            form_problem(&e)
        })
}

/// A browser form (login, approval, user code): one that cannot be read is an HTML error page,
/// as every other refusal of those pages.
pub(crate) struct PageForm<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for PageForm<T> {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &S) -> Result<Self, PageError> {
        read_form(req, state)
            .await
            .map(Self)
            .map_err(|(status, message)| PageError {
                status,
                message: message.to_owned(),
                cause: None,
                back: None,
            })
    }
}

/// An OAuth2 endpoint's form (token, device authorization): one that cannot be read is
/// `invalid_request` in OAuth2's error JSON (RFC 6749 §5.2), with the status the problem has.
pub(crate) struct OAuthForm<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OAuthForm<T> {
    type Rejection = OAuthError;

    async fn from_request(req: Request, state: &S) -> Result<Self, OAuthError> {
        read_form(req, state)
            .await
            .map(Self)
            .map_err(|(status, message)| OAuthError {
                status,
                ..OAuthError::invalid_request(message)
            })
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let mut resp = crate::pages::idp_error(self.status, &self.message, self.back.as_deref());
        if let Some(cause) = self.cause {
            resp.extensions_mut().insert(Failed { cause, page: true });
        }
        resp
    }
}
