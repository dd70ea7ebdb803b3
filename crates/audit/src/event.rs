//! The `audit.k8s.io/v1` wire types kfsec writes: [`Event`], [`EventList`], [`Level`], [`Stage`],
//! [`ObjectRef`]. Field names, order and omission rules follow kube-apiserver's
//! (`k8s.io/apiserver/pkg/apis/audit/v1/types.go`), so any tool that reads Kubernetes audit logs
//! reads kfsec's. Pure data: no IO, no policy.
//!
//! Security invariant: an `Event` only carries what its producer put in it; request and
//! response bodies are attached by [`crate`]'s callers only at the levels that allow them, and
//! never for secrets (the policy decides, the producer obeys).

use std::collections::BTreeMap;

use kfsec_types::identity::UserInfo;
use serde::{Deserialize, Serialize};

/// The API group of the identity events Kubernetes has no verb for (logins, sessions, tokens…).
pub const IDENTITY_GROUP: &str = "identity.kfsec.io";

/// How much of a request is recorded. Ordered: `None < Metadata < Request < RequestResponse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Level {
    /// Not recorded.
    None,
    /// User, verb, object, timestamps, response code; no bodies.
    Metadata,
    /// Metadata plus the request body.
    Request,
    /// Request plus the response body.
    RequestResponse,
}

/// When in the request's life an event was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stage {
    /// As soon as the request is received.
    RequestReceived,
    /// Response headers sent, body not yet complete (long-running requests such as watch).
    ResponseStarted,
    /// The response is complete.
    ResponseComplete,
    /// The handler panicked.
    Panic,
}

/// The object a request acts on: no name for collection verbs (list, create, deletecollection),
/// absent for non-resource requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Resource, plural lower case (`pods`, `profiles`, `logins`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Namespace, for namespaced objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Object name (for failed logins: the attempted account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Object uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// API group (`""` core is omitted, as kube-apiserver does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    /// API version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Resource version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Subresource (`status`, `token`, `log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
}

/// The subset of `metav1.Status` an event records: the code always, the rest on failure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseStatus {
    /// `Success` or `Failure` (omitted on success, as kube-apiserver's events do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Human-readable reason of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Machine-readable reason of a failure (`Forbidden`, `NotFound`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// HTTP status code.
    pub code: u16,
}

/// One audit event (`kind: Event`, `apiVersion: audit.k8s.io/v1`), one JSON line in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Always `Event`.
    pub kind: String,
    /// Always `audit.k8s.io/v1`.
    pub api_version: String,
    /// The level the policy chose.
    pub level: Level,
    /// The request's audit id (the `Audit-ID` header).
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// The stage this event was written at.
    pub stage: Stage,
    /// The request URI (path and query).
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    /// Kubernetes verb, the lower-cased HTTP method for non-resource requests, or the identity
    /// action (`login`, `logout`, `refresh`…).
    pub verb: String,
    /// The authenticated caller (`system:anonymous` when none).
    pub user: UserInfo,
    /// The impersonated user, when the caller impersonated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impersonated_user: Option<UserInfo>,
    /// Client addresses: trusted proxies' forwarded entries first, the peer address last.
    #[serde(default, rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    /// The client's User-Agent (not trusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The object acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectRef>,
    /// The response's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_status: Option<ResponseStatus>,
    /// The request body (level Request and up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_object: Option<serde_json::Value>,
    /// The response body (level RequestResponse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_object: Option<serde_json::Value>,
    /// When the request arrived (RFC 3339 with microseconds).
    pub request_received_timestamp: String,
    /// When this stage was reached (RFC 3339 with microseconds).
    pub stage_timestamp: String,
    /// Annotations: `authorization.k8s.io/decision`, `authorization.k8s.io/reason`,
    /// `kfsec.io/connector`, `kfsec.io/reason`, and the hash chain's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A batch of events, as the webhook backend posts it (`kind: EventList`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventList {
    /// Always `EventList`.
    pub kind: String,
    /// Always `audit.k8s.io/v1`.
    pub api_version: String,
    /// List metadata (empty).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The events.
    pub items: Vec<Event>,
}
