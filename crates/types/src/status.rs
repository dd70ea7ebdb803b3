//! Kubernetes' `metav1.Status` wire type: the body of every failed Kubernetes-style API call,
//! with its `reason` and validation `causes` as closed enums serialising to Kubernetes' exact
//! spellings (`k8s.io/apimachinery/pkg/apis/meta/v1/types.go`).
//!
//! Invariants: pure data, no IO; a `Status` built here carries only what its builder put in it
//! (callers keep internal text out of `message`); fields serialise in Kubernetes' order.

use serde::{Deserialize, Serialize};

/// `metav1.StatusReason`: why a request failed, machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StatusReason {
    /// No reason given (`""`).
    #[serde(rename = "")]
    Unknown,
    /// 401: the request carries no (valid) credentials.
    Unauthorized,
    /// 403: the caller may not do this.
    Forbidden,
    /// 404: no such resource.
    NotFound,
    /// 409: a create found the name taken.
    AlreadyExists,
    /// 409: a conflicting concurrent change (e.g. a stale `resourceVersion`).
    Conflict,
    /// 410: the resource is gone for good.
    Gone,
    /// 422: validation failed; `details.causes` says where.
    Invalid,
    /// 500 (with `retryAfterSeconds`): the server ran out of time.
    ServerTimeout,
    /// 500: a stored object could not be read.
    StoreReadError,
    /// 504: the request itself timed out.
    Timeout,
    /// 429: too many requests; retry later.
    TooManyRequests,
    /// 400: the request is malformed.
    BadRequest,
    /// 405: the verb is not served here.
    MethodNotAllowed,
    /// 406: no acceptable response type.
    NotAcceptable,
    /// 413: the request body is too large.
    RequestEntityTooLarge,
    /// 415: the body's content type is not supported.
    UnsupportedMediaType,
    /// 500: the server failed.
    InternalError,
    /// 410: a watch or continue token is too old.
    Expired,
    /// 503: the service is unavailable.
    ServiceUnavailable,
}

/// `metav1.CauseType`: the kind of one field problem in `details.causes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CauseType {
    /// `FieldValueNotFound`.
    FieldValueNotFound,
    /// `FieldValueRequired`.
    FieldValueRequired,
    /// `FieldValueDuplicate`.
    FieldValueDuplicate,
    /// `FieldValueInvalid`.
    FieldValueInvalid,
    /// `FieldValueNotSupported`.
    FieldValueNotSupported,
    /// `FieldValueForbidden`.
    FieldValueForbidden,
    /// `FieldValueTooLong`.
    FieldValueTooLong,
    /// `FieldValueTooMany`.
    FieldValueTooMany,
    /// `InternalError`.
    InternalError,
    /// `FieldValueTypeInvalid`.
    FieldValueTypeInvalid,
    /// `UnexpectedServerResponse`.
    UnexpectedServerResponse,
    /// `FieldManagerConflict`.
    FieldManagerConflict,
    /// `ResourceVersionTooLarge`.
    ResourceVersionTooLarge,
}

/// `Success` or `Failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The operation succeeded.
    Success,
    /// The operation failed.
    Failure,
}

/// `metav1.ListMeta` as it appears in a `Status` (empty for errors).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusMeta {
    /// `resourceVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// One field problem (`metav1.StatusCause`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCause {
    /// What is wrong with the field.
    pub reason: CauseType,
    /// Human-readable text, e.g. `Invalid value: "X": …`.
    pub message: String,
    /// The field path, e.g. `metadata.name`.
    pub field: String,
}

/// `metav1.StatusDetails`: which object the failure concerns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDetails {
    /// The object's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Its API group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Its kind (or plural resource).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Field problems (422 Invalid).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

/// `metav1.Status`, as a failed call's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Always `Status`.
    pub kind: String,
    /// Always `v1`.
    pub api_version: String,
    /// Empty for errors.
    #[serde(default)]
    pub metadata: StatusMeta,
    /// `Success` or `Failure`.
    pub status: Outcome,
    /// Human-readable, client-facing text.
    #[serde(default)]
    pub message: String,
    /// Machine-readable reason.
    #[serde(default = "unknown")]
    pub reason: StatusReason,
    /// The object concerned; kfsec always sends the field (`{}` when nothing is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    /// The HTTP status code.
    pub code: u16,
}

fn unknown() -> StatusReason {
    StatusReason::Unknown
}

impl Status {
    /// A `Failure` with `code`, `reason`, `message` and empty `details`.
    pub fn failure(code: u16, reason: StatusReason, message: impl Into<String>) -> Self {
        Self {
            kind: "Status".into(),
            api_version: "v1".into(),
            metadata: StatusMeta::default(),
            status: Outcome::Failure,
            message: message.into(),
            reason,
            details: Some(StatusDetails::default()),
            code,
        }
    }

    /// Sets `details`.
    #[must_use]
    pub fn with_details(mut self, details: StatusDetails) -> Self {
        self.details = Some(details);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_and_spellings() {
        let s = Status::failure(422, StatusReason::Invalid, "x").with_details(StatusDetails {
            name: "a".into(),
            causes: vec![StatusCause {
                reason: CauseType::FieldValueForbidden,
                message: "Forbidden: no".into(),
                field: "spec".into(),
            }],
            ..StatusDetails::default()
        });
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"x","reason":"Invalid","details":{"name":"a","causes":[{"reason":"FieldValueForbidden","message":"Forbidden: no","field":"spec"}]},"code":422}"#
        );
        let back: Status = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        for (r, w) in [
            (StatusReason::RequestEntityTooLarge, "\"RequestEntityTooLarge\""),
            (StatusReason::Unknown, "\"\""),
            (StatusReason::ServiceUnavailable, "\"ServiceUnavailable\""),
        ] {
            assert_eq!(serde_json::to_string(&r).unwrap(), w);
        }
        assert_eq!(
            serde_json::to_string(&CauseType::FieldValueTooLong).unwrap(),
            "\"FieldValueTooLong\""
        );
    }
}
