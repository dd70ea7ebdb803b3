//! Admin operations (users, clients) shared by the running server and the CLI.
//!
//! While the server runs it holds the store file, so the CLI sends its request over a Unix
//! socket in the data directory (`admin.sock`, mode 0600, owner only) and the server runs the
//! same [`AdminOps::execute`] it would run directly. Invariants: passwords travel only over that
//! socket and are hashed before storage; generated client secrets are returned once; a password
//! change, a deletion and `user logout-all` revoke all of the user's sessions, ID tokens, codes
//! and refresh tokens at once, online and offline alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kfsec_idp::clients::{ClientSummary, NewClient};
use kfsec_idp::users::UserSummary;
use kfsec_idp::{ClientRegistry, IdpError, UserDirectory};
use kfsec_types::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// One admin request.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum AdminRequest {
    /// Add a user.
    UserAdd {
        /// Email.
        email: String,
        /// User name.
        username: Option<String>,
        /// Groups.
        groups: Vec<String>,
        /// Password (hashed by the server).
        password: String,
    },
    /// Change a password.
    UserPasswd {
        /// Email.
        email: String,
        /// New password.
        password: String,
    },
    /// List users.
    UserList,
    /// Delete a user.
    UserDelete {
        /// Email.
        email: String,
    },
    /// End every session and token of a user.
    UserLogoutAll {
        /// Email.
        email: String,
    },
    /// Register a client.
    ClientAdd {
        /// Client id.
        id: String,
        /// Name.
        name: Option<String>,
        /// Redirect URIs.
        redirect_uris: Vec<String>,
        /// Public client.
        public: bool,
    },
    /// List clients.
    ClientList,
    /// Delete a client.
    ClientDelete {
        /// Client id.
        id: String,
    },
    /// Explain an authorization decision (`kfsec can-i` / `kfsec why`).
    Explain {
        /// User.
        user: String,
        /// Extra groups.
        groups: Vec<String>,
        /// Verb.
        verb: String,
        /// `resource[.group][/subresource]` or a `/path`.
        resource: String,
        /// Namespace.
        namespace: String,
        /// Object name.
        name: String,
    },
    /// Issue a service-account token.
    TokenCreate {
        /// Namespace.
        namespace: String,
        /// Service account name.
        name: String,
        /// Audiences.
        audiences: Vec<String>,
        /// Lifetime in seconds.
        seconds: u64,
    },
    /// Rotate the internal CA, trusting the old one for `window_seconds`; `None` ends the
    /// window now (`kfsec cert rotate-ca [--window D | --finish]`).
    CaRotate {
        /// Length of the trust window.
        window_seconds: Option<u64>,
    },
    /// Issue a new S3 key for a profile namespace and write it into the namespace's Secret; the
    /// keys current until now stay valid for `overlap_seconds` (`kfsec s3 rotate`).
    S3Rotate {
        /// The profile namespace.
        namespace: String,
        /// How long the previous keys stay valid.
        overlap_seconds: u64,
        /// Return the new secret too (only on explicit request).
        show_secret: bool,
    },
    /// List a namespace's live S3 keys, without secrets (`kfsec s3 keys`).
    S3Keys {
        /// The profile namespace.
        namespace: String,
    },
}

impl std::fmt::Debug for AdminRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::UserAdd { .. } => "UserAdd",
            Self::UserPasswd { .. } => "UserPasswd",
            Self::UserList => "UserList",
            Self::UserDelete { .. } => "UserDelete",
            Self::UserLogoutAll { .. } => "UserLogoutAll",
            Self::ClientAdd { .. } => "ClientAdd",
            Self::ClientList => "ClientList",
            Self::ClientDelete { .. } => "ClientDelete",
            Self::TokenCreate { .. } => "TokenCreate",
            Self::Explain { .. } => "Explain",
            Self::CaRotate { .. } => "CaRotate",
            Self::S3Rotate { .. } => "S3Rotate",
            Self::S3Keys { .. } => "S3Keys",
        })
    }
}

/// The answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum AdminResponse {
    /// Done.
    Ok,
    /// A user.
    User(UserSummary),
    /// Users.
    Users {
        /// Items.
        items: Vec<UserSummary>,
    },
    /// A new client with its one-time secret.
    Client(NewClientView),
    /// Clients.
    Clients {
        /// Items.
        items: Vec<ClientSummary>,
    },
    /// A decision with its explanation.
    Explanation {
        /// Allowed or not.
        allowed: bool,
        /// `kfsec_authz::Explanation` as JSON.
        explanation: serde_json::Value,
    },
    /// A token.
    Token {
        /// The signed token.
        token: String,
    },
    /// The CA set after a rotation step.
    Rotation(crate::trust::RotationStatus),
    /// A new S3 key.
    S3Key(S3KeyView),
    /// A namespace's S3 keys (no secrets).
    S3Keys {
        /// The namespace.
        namespace: String,
        /// Oldest first.
        items: Vec<kfsec_s3::keystore::KeySummary>,
    },
    /// Failed.
    Error {
        /// Message.
        message: String,
    },
}

/// A new S3 key as the CLI shows it: the secret only when asked for.
#[derive(Serialize, Deserialize)]
pub struct S3KeyView {
    /// The namespace.
    pub namespace: String,
    /// Access key id.
    pub id: String,
    /// The secret's salted SHA-256 fingerprint.
    pub fingerprint: String,
    /// The secret (only with `show_secret`).
    pub secret: Option<String>,
}

impl std::fmt::Debug for S3KeyView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3KeyView")
            .field("namespace", &self.namespace)
            .field("id", &self.id)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Serializable mirror of [`NewClient`].
#[derive(Debug, Serialize, Deserialize)]
pub struct NewClientView {
    /// Id.
    pub id: String,
    /// Secret, shown once.
    pub secret: Option<String>,
}

impl From<NewClient> for NewClientView {
    fn from(c: NewClient) -> Self {
        Self {
            id: c.id,
            secret: c.secret,
        }
    }
}

/// Users and clients management.
pub struct AdminOps {
    /// Users.
    pub users: Arc<UserDirectory>,
    /// Clients.
    pub clients: Arc<ClientRegistry>,
    /// Randomness.
    pub rng: Arc<dyn Rng>,
    /// The running IdP (token issuance needs the live signing keys).
    pub idp: Option<Arc<kfsec_idp::Idp>>,
    /// The store.
    pub store: Arc<dyn kfsec_store::Store>,
    /// The live authorizer (None offline: loaded from the store on demand).
    pub rbac: Option<Arc<crate::rbac::RbacCache>>,
    /// The live PKI (None offline: CA rotation then acts on the files).
    pub trust: Option<Arc<crate::trust::Trust>>,
    /// The CA's directory.
    pub pki_dir: PathBuf,
    /// The live session table (None offline: sessions are deleted in the store).
    pub sessions: Option<Arc<kfsec_gateway::Sessions>>,
    /// The audit log (disabled offline): S3 key rotations are recorded there.
    pub auditor: kfsec_audit::Auditor,
}

/// Splits `resource[.group][/subresource]`; a bare plural served by exactly one group gets it.
pub fn parse_resource(spec: &str) -> (String, String, String) {
    let (main, sub) = spec.split_once('/').unwrap_or((spec, ""));
    let (resource, group) = match main.split_once('.') {
        Some((r, g)) => (r.to_owned(), g.to_owned()),
        None => {
            let groups: std::collections::BTreeSet<&str> = kfsec_api::registry::all()
                .iter()
                .filter(|r| r.plural == main)
                .map(|r| r.group)
                .collect();
            let group = if groups.len() == 1 {
                groups.into_iter().next().unwrap_or_default()
            } else {
                ""
            };
            (main.to_owned(), group.to_owned())
        }
    };
    (resource, group, sub.to_owned())
}

impl AdminOps {
    /// Voids every credential of `email` issued up to now: the revocation epoch (sessions,
    /// ID tokens, codes), refresh tokens and session records.
    async fn revoke_user(&self, email: &str) -> Result<(), IdpError> {
        match &self.idp {
            Some(idp) => idp.revoke_user(email).await?,
            None => {
                let now = kfsec_types::Clock::now(&kfsec_types::SystemClock).as_millis();
                kfsec_idp::revocation::write(self.store.as_ref(), email, now).await?;
                kfsec_idp::delete_refresh_tokens(self.store.as_ref(), email).await?;
            }
        }
        let ended = match &self.sessions {
            Some(s) => s.revoke_user(email).await,
            None => kfsec_gateway::session::delete_user_sessions(self.store.as_ref(), email).await,
        };
        ended.map_err(|e| IdpError::Internal(e.to_string()))?;
        tracing::info!(target: "audit", user = %email, "sessions and tokens revoked");
        Ok(())
    }

    /// Runs one request.
    pub async fn execute(&self, req: AdminRequest) -> AdminResponse {
        let r: Result<AdminResponse, IdpError> = async {
            Ok(match req {
                AdminRequest::UserAdd {
                    email,
                    username,
                    groups,
                    password,
                } => AdminResponse::User(
                    self.users
                        .add(self.rng.as_ref(), &email, username, groups, &password)
                        .await?,
                ),
                AdminRequest::UserPasswd { email, password } => {
                    self.users.set_password(&email, &password).await?;
                    self.revoke_user(&email).await?;
                    AdminResponse::Ok
                }
                AdminRequest::UserList => AdminResponse::Users {
                    items: self.users.list().await?,
                },
                AdminRequest::UserDelete { email } => {
                    self.users.delete(&email).await?;
                    self.revoke_user(&email).await?;
                    AdminResponse::Ok
                }
                AdminRequest::UserLogoutAll { email } => {
                    if self.users.find(&email).await?.is_none() {
                        return Err(IdpError::NotFound(format!("user {email}")));
                    }
                    self.revoke_user(&email).await?;
                    AdminResponse::Ok
                }
                AdminRequest::ClientAdd {
                    id,
                    name,
                    redirect_uris,
                    public,
                } => AdminResponse::Client(
                    self.clients
                        .add(self.rng.as_ref(), &id, name, redirect_uris, public)
                        .await?
                        .into(),
                ),
                AdminRequest::ClientList => AdminResponse::Clients {
                    items: self.clients.list().await?,
                },
                AdminRequest::ClientDelete { id } => {
                    self.clients.delete(&id).await?;
                    AdminResponse::Ok
                }
                AdminRequest::Explain {
                    user,
                    groups,
                    verb,
                    resource,
                    namespace,
                    name,
                } => {
                    let cache = match &self.rbac {
                        Some(c) => c.clone(),
                        None => {
                            let c = crate::rbac::RbacCache::new();
                            let api = kfsec_api::ApiServer::new(
                                self.store.clone(),
                                c.clone(),
                                Arc::new(kfsec_types::SystemClock),
                                self.rng.clone(),
                            );
                            c.load(&api).await.map_err(|e| IdpError::Internal(e.to_string()))?;
                            c
                        }
                    };
                    let groups = kfsec_types::identity::authenticated_groups(&user, &groups);
                    let attrs = if resource.starts_with('/') {
                        kfsec_authz::Attributes::non_resource(user, groups, verb, resource)
                    } else {
                        let (res, group, sub) = parse_resource(&resource);
                        kfsec_authz::Attributes::resource(user, groups, verb, group, res, namespace)
                            .with_subresource(sub)
                            .with_name(name)
                    };
                    let e = cache.authorizer().explain(&attrs);
                    AdminResponse::Explanation {
                        allowed: e.decision.is_allowed(),
                        explanation: serde_json::to_value(&e)?,
                    }
                }
                AdminRequest::TokenCreate {
                    namespace,
                    name,
                    audiences,
                    seconds,
                } => {
                    let Some(idp) = &self.idp else {
                        return Err(IdpError::Invalid(
                            "token create needs the running server; start kfsec serve".into(),
                        ));
                    };
                    let lifetime =
                        std::time::Duration::from_secs(seconds).max(kfsec_idp::serviceaccount::MIN_TOKEN_LIFETIME);
                    let token = idp
                        .token_for_account(&namespace, &name, audiences, lifetime, None)
                        .await?
                        .token;
                    AdminResponse::Token { token }
                }
                AdminRequest::CaRotate { window_seconds } => {
                    let window = window_seconds.map(std::time::Duration::from_secs);
                    let status = match (&self.trust, window) {
                        (Some(t), Some(w)) => t.rotate(w).await.map_err(|e| e.to_string()),
                        (Some(t), None) => t.finish().await.map_err(|e| e.to_string()),
                        (None, w) => crate::trust::shared::rotate_offline(
                            self.store.as_ref(),
                            &self.pki_dir,
                            w,
                            &kfsec_types::SystemClock,
                        )
                        .await
                        .map_err(|e| e.to_string()),
                    };
                    AdminResponse::Rotation(status.map_err(IdpError::Invalid)?)
                }
                AdminRequest::S3Rotate {
                    namespace,
                    overlap_seconds,
                    show_secret,
                } => {
                    let events = crate::s3keys::KeyEvents::new(
                        self.auditor.clone(),
                        Arc::new(kfsec_types::SystemClock),
                        self.rng.clone(),
                    );
                    let key = crate::s3keys::rotate(
                        self.store.clone(),
                        &namespace,
                        std::time::Duration::from_secs(overlap_seconds),
                        events,
                    )
                    .await
                    .map_err(|e| IdpError::Invalid(e.to_string()))?;
                    AdminResponse::S3Key(S3KeyView {
                        namespace,
                        id: key.id.clone(),
                        fingerprint: key.fingerprint.clone(),
                        secret: show_secret.then(|| key.secret.to_string()),
                    })
                }
                AdminRequest::S3Keys { namespace } => {
                    let keys = kfsec_s3::keystore::KeyStore::new(
                        self.store.clone(),
                        Arc::new(kfsec_types::SystemClock),
                        self.rng.clone(),
                    );
                    let items = keys
                        .list(&namespace)
                        .await
                        .map_err(|e| IdpError::Invalid(e.to_string()))?;
                    AdminResponse::S3Keys { namespace, items }
                }
            })
        }
        .await;
        r.unwrap_or_else(|e| AdminResponse::Error { message: e.to_string() })
    }
}

/// The socket path inside a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// Serves admin requests on the data directory's socket until the task is dropped.
pub fn serve(data_dir: &Path, ops: Arc<AdminOps>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let ops = ops.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(r).take(1024 * 1024);
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let resp = match serde_json::from_str::<AdminRequest>(&line) {
                    Ok(req) => ops.execute(req).await,
                    Err(e) => AdminResponse::Error {
                        message: format!("bad request: {e}"),
                    },
                };
                let mut out = serde_json::to_vec(&resp).unwrap_or_default();
                out.push(b'\n');
                let _ = w.write_all(&out).await;
            });
        }
    }))
}

/// Sends one request to a running server. `Ok(None)` if no server listens.
pub async fn call(data_dir: &Path, req: &AdminRequest) -> std::io::Result<Option<AdminResponse>> {
    let stream = match UnixStream::connect(socket_path(data_dir)).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let (r, mut w) = stream.into_split();
    let mut body = serde_json::to_vec(req)?;
    body.push(b'\n');
    w.write_all(&body).await?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    Ok(Some(serde_json::from_str(&line)?))
}

use tokio::io::AsyncReadExt as _;
