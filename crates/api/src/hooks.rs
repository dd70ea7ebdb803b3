//! Extension points the server wires in: in-process admission ([`Admission`]) run on every
//! create, update and patch, token validation for TokenReview ([`TokenReviewer`]),
//! service-account token minting for TokenRequest ([`TokenIssuer`]) and the data other APIs keep
//! per namespace ([`NamespaceData`]), emptied with the namespace.
//!
//! Invariants: admission runs after all API-side defaulting and validation and before the store
//! write; a denial never writes anything; a mutating plugin's output is validated again (name,
//! namespace and uid are restored, not trusted); the issuer is asked only after the caller was
//! authorized for `create serviceaccounts/token` on that account and the request validated, and
//! an issued token never appears in a log or `Debug` output.

use kfsec_types::admission::{self, GroupVersionKind, GroupVersionResource, Operation};
use kfsec_types::identity::UserInfo;
use serde_json::Value;

use crate::registry::Resource;

/// What an admission plugin sees of a write (Kubernetes' `admission.Attributes`): a borrowed,
/// in-process view over the shared admission vocabulary; [`AdmissionAttributes::to_request`] is
/// the one conversion to the AdmissionReview request webhooks read.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionAttributes<'a> {
    /// Create or update.
    pub operation: Operation,
    /// The resource type (group, version, kind, plural).
    pub resource: &'static Resource,
    /// `""` or `status` (status updates are admitted too).
    pub subresource: &'a str,
    /// Namespace (`""` for cluster-scoped).
    pub namespace: &'a str,
    /// Object name.
    pub name: &'a str,
    /// The object before the change (updates only).
    pub old_object: Option<&'a Value>,
    /// The caller.
    pub user: &'a UserInfo,
    /// True for `?dryRun=All`.
    pub dry_run: bool,
}

impl AdmissionAttributes<'_> {
    /// The AdmissionReview request for this write of `object`, identified by `uid`.
    pub fn to_request(&self, uid: &str, object: Value) -> admission::AdmissionRequest {
        let res = self.resource;
        admission::AdmissionRequest {
            uid: uid.to_owned(),
            kind: GroupVersionKind::new(res.group, res.version, res.kind),
            resource: GroupVersionResource::new(res.group, res.version, res.plural),
            sub_resource: self.subresource.to_owned(),
            name: self.name.to_owned(),
            namespace: self.namespace.to_owned(),
            operation: self.operation,
            user_info: self.user.clone(),
            object: Some(object),
            old_object: self.old_object.cloned(),
            dry_run: Some(self.dry_run),
            ..admission::AdmissionRequest::default()
        }
    }
}

/// A refusal: becomes `admission webhook "<webhook>" denied the request: <message>` with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionDenied {
    /// Webhook name, e.g. `poddefaults-webhook-deployment.kubeflow.org`.
    pub webhook: String,
    /// HTTP code; anything outside 400–499 is sent as 400.
    pub code: u16,
    /// Reason text.
    pub message: String,
    /// The webhook could not be run (e.g. its context failed to load) and its `failurePolicy` is
    /// `Fail`: sent as Kubernetes' 500 `failed calling webhook` with a generic message and an
    /// incident id; `message` is then the cause, logged under that id, never sent (`code` is
    /// ignored).
    pub call_failed: bool,
}

/// In-process admission: may mutate `object` in place or deny.
#[async_trait::async_trait]
pub trait Admission: Send + Sync + 'static {
    /// Admits (and possibly mutates) `object`.
    async fn admit(&self, request: AdmissionAttributes<'_>, object: &mut Value) -> Result<(), AdmissionDenied>;
}

/// The default: admit everything unchanged.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoAdmission;

#[async_trait::async_trait]
impl Admission for NoAdmission {
    async fn admit(&self, _request: AdmissionAttributes<'_>, _object: &mut Value) -> Result<(), AdmissionDenied> {
        Ok(())
    }
}

/// Data another API keeps for a namespace outside the Kubernetes-style objects (Pipelines'
/// experiments, runs, jobs and pipelines). A Namespace is deleted only after every
/// [`NamespaceData`] emptied it, so a later namespace of the same name, perhaps another
/// user's, starts empty.
#[async_trait::async_trait]
pub trait NamespaceData: Send + Sync + 'static {
    /// Deletes everything kept for `namespace`. An error keeps the Namespace (the delete, or
    /// the removal of its last finalizer, fails and can be retried).
    async fn purge_namespace(&self, namespace: &str) -> Result<(), kfsec_store::StoreError>;

    /// Called before a Namespace is created where none exists: whatever is still kept for the
    /// name — written by a request that was authorized before the last such namespace went and
    /// landed after its purge — goes now. An error fails the create. Default: nothing.
    async fn before_create(&self, namespace: &str) -> Result<(), kfsec_store::StoreError> {
        let _ = namespace;
        Ok(())
    }
}

/// A TokenReview verdict (wire `status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenReviewStatus {
    /// True if the token is valid.
    pub authenticated: bool,
    /// Who the token belongs to.
    pub user: Option<UserInfo>,
    /// The audiences the token is valid for.
    pub audiences: Vec<String>,
    /// Why it failed (empty when authenticated).
    pub error: String,
}

/// Validates bearer tokens for `authentication.k8s.io/v1 TokenReview`.
#[async_trait::async_trait]
pub trait TokenReviewer: Send + Sync + 'static {
    /// Reviews `token` for `audiences` (empty = the server's default audience).
    async fn review(&self, token: &str, audiences: &[String]) -> TokenReviewStatus;
}

/// The default: every token is unauthenticated.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTokenReviewer;

#[async_trait::async_trait]
impl TokenReviewer for NoTokenReviewer {
    async fn review(&self, _token: &str, _audiences: &[String]) -> TokenReviewStatus {
        TokenReviewStatus {
            error: "token review is not configured".into(),
            ..TokenReviewStatus::default()
        }
    }
}

/// What a TokenRequest asks the issuer for (validated: audiences non-empty strings, lifetime at
/// least Kubernetes' 10 minutes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// The account's namespace.
    pub namespace: String,
    /// The account's name.
    pub name: String,
    /// `spec.audiences`; empty asks for the server's own audiences.
    pub audiences: Vec<String>,
    /// `spec.expirationSeconds`; the issuer may cap it.
    pub lifetime: std::time::Duration,
    /// `spec.boundObjectRef`, checked: an existing object of the account's namespace.
    pub bound: Option<BoundRef>,
}

/// The object a TokenRequest binds its token to (the token works only while it exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundRef {
    /// `Pod` or `Secret` (core).
    pub kind: BoundKindRef,
    /// Its name.
    pub name: String,
    /// Its uid, as stored.
    pub uid: String,
}

/// The kinds a token can be bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundKindRef {
    /// A core Pod (running as the account).
    Pod,
    /// A core Secret.
    Secret,
}

/// A token as the issuer made it.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The signed token (a secret: never logged).
    pub token: String,
    /// The audiences it carries (the defaults when none were asked for).
    pub audiences: Vec<String>,
    /// Issued at (seconds since the epoch).
    pub issued_at: u64,
    /// Expires at (seconds since the epoch).
    pub expires_at: u64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"<redacted>")
            .field("audiences", &self.audiences)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why the issuer did not issue.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The account does not exist (any more).
    #[error("no such service account")]
    NoAccount,
    /// The issuer refuses this audience (one of its OAuth2 clients: the token could pass for
    /// that client's ID token).
    #[error("audience {0:?} refused")]
    Audience(String),
    /// Nothing issues tokens on this server.
    #[error("service-account tokens are not issued here")]
    Unsupported,
    /// The issuer failed (cause kept for the log, never sent).
    #[error("token issue failed: {0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Mints service-account tokens for `serviceaccounts/token` (TokenRequest).
#[async_trait::async_trait]
pub trait TokenIssuer: Send + Sync + 'static {
    /// Issues a token for `grant`'s account.
    async fn issue(&self, grant: &TokenGrant) -> Result<IssuedToken, IssueError>;
}

/// The default: no tokens are issued.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTokenIssuer;

#[async_trait::async_trait]
impl TokenIssuer for NoTokenIssuer {
    async fn issue(&self, _grant: &TokenGrant) -> Result<IssuedToken, IssueError> {
        Err(IssueError::Unsupported)
    }
}
