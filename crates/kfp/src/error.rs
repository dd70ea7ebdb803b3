//! KFP's errors: one `thiserror` enum and the one function ([`error_response`]) that turns an
//! error into Kubeflow Pipelines' JSON error body
//! (`{"error","code","message","details":[{"@type":"type.googleapis.com/google.rpc.Status",…}]}`).
//!
//! Invariants: the HTTP status is derived from the gRPC code only (grpc-gateway's table), except
//! for an oversized body (413); internal failures (store errors) never leak their text to the
//! caller, they are logged and answered with a generic Internal error.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kfsec_types::{Refusal, RefusalKind};
use serde_json::json;

/// KFP's answer to a request without a caller identity (its `Unauthenticated` detail).
pub const NO_IDENTITY: &str = "Failed to check authorization. User identity is empty in the request header";

/// gRPC status codes used by the KFP API.
pub mod code {
    /// InvalidArgument.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// DeadlineExceeded (a service behind kfsec did not answer in time).
    pub const DEADLINE_EXCEEDED: i32 = 4;
    /// NotFound.
    pub const NOT_FOUND: i32 = 5;
    /// AlreadyExists.
    pub const ALREADY_EXISTS: i32 = 6;
    /// PermissionDenied.
    pub const PERMISSION_DENIED: i32 = 7;
    /// ResourceExhausted (a quota).
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    /// FailedPrecondition.
    pub const FAILED_PRECONDITION: i32 = 9;
    /// Aborted (KFP's BadRequestError).
    pub const ABORTED: i32 = 10;
    /// Unimplemented.
    pub const UNIMPLEMENTED: i32 = 12;
    /// Internal.
    pub const INTERNAL: i32 = 13;
    /// Unavailable (overloaded; retry later).
    pub const UNAVAILABLE: i32 = 14;
    /// DataLoss.
    pub const DATA_LOSS: i32 = 15;
    /// Unauthenticated.
    pub const UNAUTHENTICATED: i32 = 16;
}

/// Every failure of the KFP API. `Display` is KFP's internal message (the whole wrap chain);
/// [`KfpError::external`] is the message KFP puts in the error detail.
#[derive(Debug, thiserror::Error)]
pub enum KfpError {
    /// Bad request data (gRPC 3, HTTP 400).
    #[error("Invalid input error: {0}")]
    InvalidInput(String),
    /// A body larger than the limit (gRPC 3, HTTP 413).
    #[error("Invalid input error: {0}")]
    TooLarge(String),
    /// A missing object (gRPC 5, HTTP 404), e.g. `Experiment 123 not found`.
    #[error("ResourceNotFoundError: {0}")]
    NotFound(String),
    /// A duplicate name (gRPC 6, HTTP 409).
    #[error("Already exist error: {0}")]
    AlreadyExists(String),
    /// The authorizer said no (gRPC 7, HTTP 403); holds KFP's `User '…' is not authorized …` text.
    #[error("PermissionDenied: {0}: Unauthorized access")]
    PermissionDenied(String),
    /// No caller identity (gRPC 16, HTTP 401).
    #[error("Unauthenticated: {0}")]
    Unauthenticated(String),
    /// The object is in the wrong state for the operation (gRPC 9, HTTP 400).
    #[error("FailedPreconditionError: {0}")]
    FailedPrecondition(String),
    /// KFP's BadRequestError (gRPC 10, HTTP 409).
    #[error("BadRequestError: {0}")]
    BadRequest(String),
    /// Stored data failed its integrity check (gRPC 15, HTTP 500); never served.
    #[error("DataLoss: {0}")]
    DataLoss(String),
    /// A quota would be exceeded (gRPC 8, HTTP 429).
    #[error("ResourceExhausted: {0}")]
    ResourceExhausted(String),
    /// Too busy to do the work now (gRPC 14, HTTP 503).
    #[error("Unavailable: {0}")]
    Unavailable(String),
    /// A service behind kfsec did not answer in time (gRPC 4, HTTP 504).
    #[error("DeadlineExceeded: {0}")]
    DeadlineExceeded(String),
    /// Not offered by kfsec (gRPC 12, HTTP 501).
    #[error("Unimplemented: {0}")]
    Unimplemented(String),
    /// A storage or encoding failure (gRPC 13, HTTP 500); the detail is logged, not returned.
    #[error("Internal error: {0}")]
    Internal(String),
    /// A failure already logged under an incident id (gRPC 13 or 14, HTTP 500 or 503): the
    /// client sees the refusal's generic text and the id, nothing else.
    #[error("{}", .0.text())]
    Failed(Refusal),
    /// Context added on the way up, as KFP's `util.Wrap`.
    #[error("{context}: {source}")]
    Wrapped {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: Box<KfpError>,
    },
}

impl KfpError {
    /// Adds context in front of the message (the external message and code are unchanged).
    #[must_use]
    pub fn wrap(self, context: impl Into<String>) -> Self {
        Self::Wrapped {
            context: context.into(),
            source: Box::new(self),
        }
    }

    fn root(&self) -> &Self {
        match self {
            Self::Wrapped { source, .. } => source.root(),
            other => other,
        }
    }

    /// The gRPC status code.
    pub fn code(&self) -> i32 {
        match self.root() {
            Self::InvalidInput(_) | Self::TooLarge(_) => code::INVALID_ARGUMENT,
            Self::NotFound(_) => code::NOT_FOUND,
            Self::AlreadyExists(_) => code::ALREADY_EXISTS,
            Self::PermissionDenied(_) => code::PERMISSION_DENIED,
            Self::Unauthenticated(_) => code::UNAUTHENTICATED,
            Self::FailedPrecondition(_) => code::FAILED_PRECONDITION,
            Self::BadRequest(_) => code::ABORTED,
            Self::DataLoss(_) => code::DATA_LOSS,
            Self::Unimplemented(_) => code::UNIMPLEMENTED,
            Self::ResourceExhausted(_) => code::RESOURCE_EXHAUSTED,
            Self::Unavailable(_) => code::UNAVAILABLE,
            Self::DeadlineExceeded(_) => code::DEADLINE_EXCEEDED,
            Self::Failed(r) if r.kind == RefusalKind::Unavailable => code::UNAVAILABLE,
            Self::Internal(_) | Self::Failed(_) | Self::Wrapped { .. } => code::INTERNAL,
        }
    }

    /// The message KFP shows to users (the error detail).
    pub fn external(&self) -> String {
        match self.root() {
            Self::InvalidInput(m)
            | Self::TooLarge(m)
            | Self::NotFound(m)
            | Self::AlreadyExists(m)
            | Self::PermissionDenied(m)
            | Self::Unauthenticated(m)
            | Self::FailedPrecondition(m)
            | Self::BadRequest(m)
            | Self::DataLoss(m)
            | Self::Unimplemented(m)
            | Self::ResourceExhausted(m)
            | Self::Unavailable(m)
            | Self::DeadlineExceeded(m) => m.clone(),
            Self::Failed(r) => r.text(),
            Self::Internal(_) | Self::Wrapped { .. } => "Internal error".into(),
        }
    }

    /// HTTP status for this error (grpc-gateway's mapping).
    pub fn http_status(&self) -> StatusCode {
        if matches!(self.root(), Self::TooLarge(_)) {
            return StatusCode::PAYLOAD_TOO_LARGE;
        }
        match self.code() {
            code::INVALID_ARGUMENT | code::FAILED_PRECONDITION => StatusCode::BAD_REQUEST,
            code::NOT_FOUND => StatusCode::NOT_FOUND,
            code::ALREADY_EXISTS | code::ABORTED => StatusCode::CONFLICT,
            code::PERMISSION_DENIED => StatusCode::FORBIDDEN,
            code::UNAUTHENTICATED => StatusCode::UNAUTHORIZED,
            code::UNIMPLEMENTED => StatusCode::NOT_IMPLEMENTED,
            code::RESOURCE_EXHAUSTED => StatusCode::TOO_MANY_REQUESTS,
            code::UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
            code::DEADLINE_EXCEEDED => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A store failure, answered as a generic Internal error; the cause is kept for the log line
    /// (written with an incident id where the request is answered), never shown.
    /// Logged here too, for callers that ignore a best-effort cleanup's failure.
    /// A store that cannot be reached now is answered 503 (`Unavailable`, gRPC 14) instead.
    pub fn store(e: &kfsec_store::StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "kfp: store unavailable; answered 503");
            return Self::Unavailable("the request could not be completed: storage is unavailable; retry later".into());
        }
        tracing::error!(error = %e, "kfp: store failure");
        Self::Internal(format!("storage failure: {e}"))
    }
}

/// The one place that renders an error as KFP's JSON error body.
pub fn error_response(err: &KfpError) -> Response {
    let code = err.code();
    let (message, external) = match err.root() {
        KfpError::Internal(_) => ("Internal error".to_owned(), "Internal error".to_owned()),
        KfpError::Failed(r) => (r.text(), r.text()),
        _ => (err.to_string(), err.external()),
    };
    let body = json!({
        "error": message,
        "code": code,
        "message": message,
        "details": [{
            "@type": "type.googleapis.com/google.rpc.Status",
            "code": code,
            "message": external,
        }],
    });
    let mut resp = (err.http_status(), axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

impl KfpError {
    /// The KFP error for a protocol-neutral refusal: KFP's own text for a missing identity, the
    /// refusal's text (with its incident id) otherwise.
    pub fn from_refusal(r: &Refusal) -> Self {
        let m = r.text();
        match r.kind {
            RefusalKind::Unauthenticated => Self::Unauthenticated(NO_IDENTITY.into()),
            RefusalKind::Forbidden => Self::PermissionDenied(m),
            RefusalKind::NotFound => Self::NotFound(m),
            RefusalKind::TooLarge => Self::TooLarge(m),
            RefusalKind::TooManyRequests => Self::ResourceExhausted(m),
            RefusalKind::Internal => Self::Failed(r.clone()),
            RefusalKind::Unavailable if r.incident.is_some() => Self::Failed(r.clone()),
            RefusalKind::Unavailable | RefusalKind::BadGateway => Self::Unavailable(m),
            RefusalKind::GatewayTimeout => Self::DeadlineExceeded(m),
            _ => Self::InvalidInput(m),
        }
    }
}

/// KFP's renderer for a protocol-neutral refusal (the front door's own refusals on KFP's paths).
pub fn refusal_response(r: &Refusal) -> Response {
    error_response(&KfpError::from_refusal(r))
}

impl IntoResponse for KfpError {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

/// Result of the KFP operations.
pub type KfpResult<T> = Result<T, KfpError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_that_timed_out_is_deadline_exceeded() {
        let e = KfpError::from_refusal(&Refusal::new(RefusalKind::GatewayTimeout, "too slow"));
        assert_eq!(
            (e.code(), e.http_status()),
            (code::DEADLINE_EXCEEDED, StatusCode::GATEWAY_TIMEOUT)
        );
        assert_eq!(e.external(), "too slow");
    }
}
