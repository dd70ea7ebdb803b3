//! Errors of the Kubernetes-style API and the ONE place they become Kubernetes `Status`
//! responses ([`status_response`]).
//!
//! Invariants: every failure a client can cause maps to a 4xx `Status` with Kubernetes' exact
//! `reason` and message shape; storage failures become a 500 whose message never carries
//! record contents; no error path panics.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kfsec_store::StoreError;
use kfsec_types::{
    CauseType, Failure, Incident, Refusal, RefusalKind, Rng, Status, StatusCause, StatusDetails, StatusReason,
};

use crate::authorize::{Attributes, RequestAttributes};

/// One field problem of a 422 Invalid error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldCause {
    /// What is wrong with the field.
    pub reason: CauseType,
    /// Field path, e.g. `metadata.name`.
    pub field: String,
    /// The text after the field path, e.g. `Invalid value: "X": a lowercase RFC 1123 …`.
    pub message: String,
}

impl FieldCause {
    /// `Invalid value: "<value>": <detail>`.
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        Self {
            reason: CauseType::FieldValueInvalid,
            field: field.into(),
            message: format!("Invalid value: {value:?}: {detail}"),
        }
    }
    /// `Required value: <detail>`.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        Self {
            reason: CauseType::FieldValueRequired,
            field: field.into(),
            message: format!("Required value: {detail}"),
        }
    }
    /// `Forbidden: <detail>`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            reason: CauseType::FieldValueForbidden,
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }
}

/// Everything that can go wrong in the API. See [`status_response`] for the wire shape.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No authenticated identity on the request.
    #[error("Unauthorized")]
    Unauthorized,
    /// The authorizer said no (or impersonation was refused).
    #[error("{message}")]
    Forbidden {
        /// Full message, `<resource> "<name>" is forbidden: User …`.
        message: String,
        /// `details.group`.
        group: String,
        /// `details.kind` (the plural resource).
        kind: String,
        /// `details.name`.
        name: String,
    },
    /// No such path / resource type.
    #[error("the server could not find the requested resource")]
    NoRoute,
    /// No such object.
    #[error("{qualified} {name:?} not found")]
    NotFound {
        /// `plural[.group]`.
        qualified: String,
        /// API group.
        group: String,
        /// Plural.
        kind: String,
        /// Object name.
        name: String,
    },
    /// Create of an existing name.
    #[error("{qualified} {name:?} already exists")]
    AlreadyExists {
        /// `plural[.group]`.
        qualified: String,
        /// API group.
        group: String,
        /// Plural.
        kind: String,
        /// Object name.
        name: String,
    },
    /// Optimistic-concurrency or precondition failure.
    #[error("Operation cannot be fulfilled on {qualified} {name:?}: {detail}")]
    Conflict {
        /// `plural[.group]`.
        qualified: String,
        /// API group.
        group: String,
        /// Plural.
        kind: String,
        /// Object name.
        name: String,
        /// The text after the colon.
        detail: String,
    },
    /// Server-side apply found fields owned by other managers (409, `FieldManagerConflict`
    /// causes), in structured-merge-diff's message format.
    #[error("{message}")]
    ApplyConflict {
        /// `Apply failed with N conflict(s): …`.
        message: String,
        /// One per conflicting field.
        causes: Vec<FieldCause>,
    },
    /// Validation failed (422).
    #[error("{} {name:?} is invalid", group_kind(.kind, .group))]
    Invalid {
        /// The object kind, e.g. `ConfigMap`.
        kind: String,
        /// API group.
        group: String,
        /// Object name.
        name: String,
        /// Field problems.
        causes: Vec<FieldCause>,
    },
    /// Malformed request (400).
    #[error("{0}")]
    BadRequest(String),
    /// The verb is not served for this resource (405).
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// Unsupported body type (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Body over the limit (413).
    #[error("Request entity too large: limit is {0}")]
    TooLarge(usize),
    /// A request over another limit (413), e.g. the operations of a JSON patch.
    #[error("{0}")]
    TooLargeWith(String),
    /// Too busy now; retry later (429).
    #[error("{0}")]
    TooManyRequests(String),
    /// Watch or continue from a revision no longer available (410).
    #[error("{0}")]
    Expired(String),
    /// An admission plugin refused the object.
    #[error("admission webhook {webhook:?} denied the request: {message}")]
    AdmissionDenied {
        /// The webhook name.
        webhook: String,
        /// HTTP code (400 or 403 usually).
        code: u16,
        /// The plugin's message.
        message: String,
    },
    /// An admission webhook whose `failurePolicy` is `Fail` could not be run (500).
    #[error("Internal error occurred: failed calling webhook {webhook:?}: the webhook could not be run")]
    AdmissionFailed {
        /// The webhook name.
        webhook: String,
        /// Why it could not be run: for the log only, never sent.
        cause: String,
    },
    /// Storage failed.
    #[error("storage: {0}")]
    Store(#[source] StoreError),
    /// An invariant broke.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted { requested, oldest } => {
                Self::Expired(format!("too old resource version: {requested} ({oldest})"))
            }
            other => Self::Store(other),
        }
    }
}

/// `Kind` or `Kind.group`, as Kubernetes' `GroupKind.String()` (the subject of a 422).
fn group_kind(kind: &str, group: &str) -> String {
    if group.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}.{group}")
    }
}

/// `resource` or `resource.group`, as Kubernetes' `GroupResource.String()`.
pub fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}

impl ApiError {
    /// The 403 for a denied request, in `responsewriters.Forbidden`'s exact shape.
    pub fn forbidden(attrs: &Attributes) -> Self {
        let inner = attrs.forbidden_message();
        match &attrs.request {
            RequestAttributes::Resource(r) => {
                let q = qualified(&r.api_group, &r.resource);
                let message = if r.name.is_empty() {
                    format!("{q} is forbidden: {inner}")
                } else {
                    format!("{q} {:?} is forbidden: {inner}", r.name)
                };
                Self::Forbidden {
                    message,
                    group: r.api_group.clone(),
                    kind: r.resource.clone(),
                    name: r.name.clone(),
                }
            }
            RequestAttributes::NonResource(_) => Self::Forbidden {
                message: format!("forbidden: {inner}"),
                group: String::new(),
                kind: String::new(),
                name: String::new(),
            },
        }
    }

    /// HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::Forbidden { .. } => 403,
            Self::NoRoute | Self::NotFound { .. } => 404,
            Self::AlreadyExists { .. } | Self::Conflict { .. } | Self::ApplyConflict { .. } => 409,
            Self::Invalid { .. } => 422,
            Self::BadRequest(_) => 400,
            Self::MethodNotAllowed => 405,
            Self::UnsupportedMediaType(_) => 415,
            Self::TooLarge(_) | Self::TooLargeWith(_) => 413,
            Self::TooManyRequests(_) => 429,
            Self::Expired(_) => 410,
            Self::AdmissionDenied { code, .. } => *code,
            Self::Store(e) if e.is_unavailable() => 503,
            Self::Store(_) | Self::Internal(_) | Self::AdmissionFailed { .. } => 500,
        }
    }

    /// The Kubernetes `Status` object for this error.
    pub fn to_status(&self) -> Status {
        let code = self.code();
        let object = |group: &str, kind: &str, name: &str| StatusDetails {
            name: name.to_owned(),
            group: group.to_owned(),
            kind: kind.to_owned(),
            causes: Vec::new(),
        };
        let (reason, message, details) = match self {
            Self::Unauthorized => (StatusReason::Unauthorized, self.to_string(), StatusDetails::default()),
            Self::Forbidden {
                message,
                group,
                kind,
                name,
            } => (StatusReason::Forbidden, message.clone(), object(group, kind, name)),
            Self::NoRoute => (StatusReason::NotFound, self.to_string(), StatusDetails::default()),
            Self::NotFound { group, kind, name, .. } => {
                (StatusReason::NotFound, self.to_string(), object(group, kind, name))
            }
            Self::AlreadyExists { group, kind, name, .. } => {
                (StatusReason::AlreadyExists, self.to_string(), object(group, kind, name))
            }
            Self::Conflict { group, kind, name, .. } => {
                (StatusReason::Conflict, self.to_string(), object(group, kind, name))
            }
            Self::ApplyConflict { message, causes } => (
                StatusReason::Conflict,
                message.clone(),
                StatusDetails {
                    causes: status_causes(causes),
                    ..StatusDetails::default()
                },
            ),
            Self::Invalid {
                kind,
                group,
                name,
                causes,
            } => {
                let texts: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
                let joined = if texts.len() == 1 {
                    texts.join("")
                } else {
                    format!("[{}]", texts.join(", "))
                };
                let details = StatusDetails {
                    causes: status_causes(causes),
                    ..object(group, kind, name)
                };
                (
                    StatusReason::Invalid,
                    format!("{} {name:?} is invalid: {joined}", group_kind(kind, group)),
                    details,
                )
            }
            Self::BadRequest(m) => (StatusReason::BadRequest, m.clone(), StatusDetails::default()),
            Self::MethodNotAllowed => (
                StatusReason::MethodNotAllowed,
                self.to_string(),
                StatusDetails::default(),
            ),
            Self::UnsupportedMediaType(m) => (StatusReason::UnsupportedMediaType, m.clone(), StatusDetails::default()),
            Self::TooLarge(_) => (
                StatusReason::RequestEntityTooLarge,
                self.to_string(),
                StatusDetails::default(),
            ),
            Self::TooLargeWith(m) => (StatusReason::RequestEntityTooLarge, m.clone(), StatusDetails::default()),
            Self::TooManyRequests(m) => (StatusReason::TooManyRequests, m.clone(), StatusDetails::default()),
            Self::Expired(m) => (StatusReason::Expired, m.clone(), StatusDetails::default()),
            Self::AdmissionDenied { code, .. } => {
                let r = match code {
                    403 => StatusReason::Forbidden,
                    422 => StatusReason::Invalid,
                    409 => StatusReason::Conflict,
                    404 => StatusReason::NotFound,
                    _ => StatusReason::BadRequest,
                };
                (r, self.to_string(), StatusDetails::default())
            }
            Self::AdmissionFailed { .. } => (StatusReason::InternalError, self.to_string(), StatusDetails::default()),
            Self::Store(e) if e.is_unavailable() => (
                StatusReason::ServiceUnavailable,
                "the request could not be completed: storage is unavailable; retry later".to_owned(),
                StatusDetails::default(),
            ),
            Self::Store(_) | Self::Internal(_) => (
                StatusReason::InternalError,
                "Internal error occurred: the server failed to complete the request".to_owned(),
                StatusDetails::default(),
            ),
        };
        Status::failure(code, reason, message).with_details(details)
    }
}

/// The `details.causes` of field problems.
fn status_causes(causes: &[FieldCause]) -> Vec<StatusCause> {
    causes
        .iter()
        .map(|c| StatusCause {
            reason: c.reason,
            message: c.message.clone(),
            field: c.field.clone(),
        })
        .collect()
}

/// The Status for a [`Refusal`] (the front door's own refusals on the API's paths, failures
/// with an incident id).
pub fn refusal_status(r: &Refusal) -> Status {
    let reason = match r.kind {
        RefusalKind::BadRequest => StatusReason::BadRequest,
        RefusalKind::Unauthenticated => StatusReason::Unauthorized,
        RefusalKind::Forbidden => StatusReason::Forbidden,
        RefusalKind::NotFound => StatusReason::NotFound,
        RefusalKind::TooLarge => StatusReason::RequestEntityTooLarge,
        RefusalKind::TooManyRequests => StatusReason::TooManyRequests,
        RefusalKind::Unavailable | RefusalKind::BadGateway => StatusReason::ServiceUnavailable,
        RefusalKind::GatewayTimeout => StatusReason::Timeout,
        _ => StatusReason::InternalError,
    };
    Status::failure(r.code(), reason, r.text())
}

/// Renders `status` as the response (`Cache-Control: no-store`; a 401 also carries
/// `WWW-Authenticate`).
fn render(status: &Status) -> Response {
    let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (code, axum::Json(status)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status.reason == StatusReason::Unauthorized {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"kfsec\""),
        );
    }
    resp
}

/// The Kubernetes family's renderer for a [`Refusal`].
pub fn refusal_response(r: &Refusal) -> Response {
    render(&refusal_status(r))
}

/// The one function that turns an [`ApiError`] into an HTTP response. A failure of kfsec
/// (storage, a broken invariant) is logged with its cause under a fresh incident id (from
/// `rng`) and answered 500 with a generic message carrying only that id.
pub fn status_response(err: &ApiError, rng: &dyn Rng) -> Response {
    render(&status_of(err, rng))
}

/// The `Status` a client gets for `err` (a response body or a watch's `ERROR` event): a failure
/// of kfsec is logged with its cause under a fresh incident id (from `rng`) and becomes a generic
/// 500 carrying only that id; anything else is [`ApiError::to_status`].
pub fn status_of(err: &ApiError, rng: &dyn Rng) -> Status {
    if let ApiError::AdmissionFailed { webhook, cause } = err {
        let r = Refusal {
            incident: Some(Incident::new(rng)),
            ..Refusal::new(RefusalKind::Internal, err.to_string())
        };
        tracing::error!(incident = %r.incident_id(), webhook, error = %cause, "admission webhook could not be run; write refused (failurePolicy Fail)");
        return Status {
            message: r.text(),
            ..err.to_status()
        };
    }
    if let ApiError::Store(e) = err
        && e.is_unavailable()
    {
        let r = Refusal::failure(Failure::Storage, rng);
        tracing::warn!(incident = %r.incident_id(), error = %err, "kubernetes api: store unavailable; answered 503");
        return refusal_status(&r);
    }
    if matches!(err, ApiError::Store(_) | ApiError::Internal(_)) {
        let r = Refusal::failure(Failure::Internal, rng);
        tracing::error!(incident = %r.incident_id(), error = %err, "kubernetes api internal error");
        return refusal_status(&r);
    }
    err.to_status()
}

#[cfg(test)]
mod tests {

    use super::*;
    use serde_json::{Value, json};

    fn st(e: &ApiError) -> Value {
        serde_json::to_value(e.to_status()).unwrap()
    }

    #[test]
    fn an_upstream_that_timed_out_is_a_504_timeout_status() {
        let s = refusal_status(&Refusal::new(RefusalKind::GatewayTimeout, "too slow"));
        let s = serde_json::to_value(s).unwrap();
        assert_eq!((s["code"].as_u64(), s["reason"].as_str()), (Some(504), Some("Timeout")));
        assert_eq!(s["message"], "too slow");
    }

    #[test]
    fn forbidden_named_object_shape() {
        let a = Attributes::resource("alice", vec![], "get", "kubeflow.org", "poddefaults", "x").with_name("pd");
        let s = st(&ApiError::forbidden(&a));
        assert_eq!(
            s,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"poddefaults.kubeflow.org \"pd\" is forbidden: User \"alice\" cannot get resource \"poddefaults\" in API group \"kubeflow.org\" in the namespace \"x\"",
            "reason":"Forbidden","details":{"name":"pd","group":"kubeflow.org","kind":"poddefaults"},"code":403})
        );
    }

    #[test]
    fn forbidden_list_cluster_scope() {
        let a = Attributes::resource("bob", vec![], "list", "", "namespaces", "");
        let s = st(&ApiError::forbidden(&a));
        assert_eq!(
            s["message"],
            "namespaces is forbidden: User \"bob\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
        );
        assert_eq!(s["details"], json!({"kind": "namespaces"}));
    }

    #[test]
    fn invalid_and_conflict_messages() {
        let e = ApiError::Invalid {
            kind: "ConfigMap".into(),
            group: String::new(),
            name: "A".into(),
            causes: vec![FieldCause::invalid("metadata.name", "A", "bad")],
        };
        assert_eq!(
            st(&e)["message"],
            "ConfigMap \"A\" is invalid: metadata.name: Invalid value: \"A\": bad"
        );
        assert_eq!(e.code(), 422);
        let c = ApiError::Conflict {
            qualified: "configmaps".into(),
            group: String::new(),
            kind: "configmaps".into(),
            name: "c".into(),
            detail: "the object has been modified; please apply your changes to the latest version and try again"
                .into(),
        };
        assert_eq!(
            st(&c)["message"],
            "Operation cannot be fulfilled on configmaps \"c\": the object has been modified; please apply your changes to the latest version and try again"
        );
        assert_eq!(st(&c)["reason"], "Conflict");
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let e = ApiError::Store(StoreError::Backend("secret path /x".into()));
        let s = st(&e);
        assert_eq!(s["code"], 500);
        assert!(!s["message"].as_str().unwrap().contains("secret"));
    }

    #[test]
    fn an_unavailable_store_is_503_service_unavailable_without_the_cause() {
        let e = ApiError::Store(StoreError::Unavailable("etcd 10.0.0.7:2379 refused".into()));
        assert_eq!(e.code(), 503);
        let s = serde_json::to_value(status_of(&e, &kfsec_types::SequenceRng::default())).unwrap();
        assert_eq!(
            (s["code"].as_u64(), s["reason"].as_str()),
            (Some(503), Some("ServiceUnavailable"))
        );
        let m = s["message"].as_str().unwrap();
        assert!(m.contains("storage is unavailable") && !m.contains("10.0.0.7"), "{m}");
    }
}
