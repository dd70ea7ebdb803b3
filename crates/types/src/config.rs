//! The configuration file's data model (`apiVersion: kfsec/v1`), including Dex's own sections
//! (`issuer`, `staticPasswords`, `staticClients`, `oauth2`, `expiry`) as Dex writes them.
//!
//! Invariants: every struct rejects unknown fields; secrets (`hash`, `secret`) never appear in
//! `Debug` output. Loading, env overlays and validation live in `kfsec-server`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigFile {
    /// Must be `kfsec/v1`.
    pub api_version: Option<String>,
    /// The OIDC issuer URL; defaults to `<publicURL>/dex`.
    pub issuer: Option<String>,
    /// The URL users reach the front door at, e.g. `https://kubeflow.example.com`.
    #[serde(rename = "publicURL")]
    pub public_url: Option<String>,
    /// Directory for the store, keys and certificates.
    pub data_dir: Option<String>,
    /// Front-door listen address.
    pub https_addr: Option<String>,
    /// Admin (metrics, health) listen address.
    pub admin_addr: Option<String>,
    /// Admission webhooks listen address.
    pub webhook_addr: Option<String>,
    /// Dex: whether the local password database is offered (as the `local` connector, after the
    /// configured ones). Unset: on when no connectors are configured, off when some are.
    #[serde(rename = "enablePasswordDB")]
    pub enable_password_db: Option<bool>,
    /// Dex: static users.
    #[serde(default)]
    pub static_passwords: Vec<StaticPassword>,
    /// Dex: upstream identity connectors (`oidc`, `ldap`, `microsoft`).
    #[serde(default)]
    pub connectors: Vec<DexConnector>,
    /// Dex: static OAuth2 clients.
    #[serde(default)]
    pub static_clients: Vec<StaticClient>,
    /// Dex: OAuth2 behaviour.
    #[serde(default)]
    pub oauth2: OAuth2Config,
    /// Dex: lifetimes.
    #[serde(default)]
    pub expiry: ExpiryConfig,
    /// Dex: logging.
    pub logger: Option<LoggerConfig>,
    /// Dex's `storage:` — acknowledged at startup, not used: kfsec keeps its state in its own
    /// store under `dataDir`.
    pub storage: Option<serde_json::Value>,
    /// Dex's `web:` — acknowledged at startup, not used: kfsec's listeners are its own
    /// (`httpsAddr`, HTTPS only); `web.http` never opens a listener.
    pub web: Option<serde_json::Value>,
    /// Dex's `telemetry:` — acknowledged at startup, not used: health and metrics are on
    /// `adminAddr`.
    pub telemetry: Option<serde_json::Value>,
    /// Dex's `grpc:` — acknowledged at startup, not used: kfsec has no gRPC API.
    pub grpc: Option<serde_json::Value>,
    /// Dex's `frontend:` — `issuer`, `logoURL` and `theme` brand the login pages; `dir` and
    /// `extra` are acknowledged at startup (kfsec's templates are compiled in). Read by the
    /// server's config validation, which refuses other keys.
    pub frontend: Option<serde_json::Value>,
    /// Upstream routes of the gateway.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Session cookie settings.
    #[serde(default)]
    pub session: SessionConfig,
    /// Header carrying the user id to upstreams.
    pub user_id_header: Option<String>,
    /// Prefix added before the user id.
    pub user_id_prefix: Option<String>,
    /// Header carrying the user's groups to upstreams.
    pub groups_header: Option<String>,
    /// A user-supplied front-door certificate.
    pub tls: Option<TlsConfig>,
    /// Brute-force protection of logins.
    #[serde(default)]
    pub login_protection: LoginProtectionConfig,
    /// Addresses and CIDR ranges of proxies in front of kfsec whose `X-Forwarded-For` is
    /// trusted.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The internal CA and the certificates it issues to kfsec itself.
    #[serde(default)]
    pub pki: PkiConfig,
    /// Let users create their own profile (Kubeflow's `CD_REGISTRATION_FLOW`).
    #[serde(default)]
    pub registration_flow: bool,
    /// The Kubeflow Pipelines API (`pipelines:`): the per-namespace package quota.
    #[serde(default)]
    pub pipelines: PipelinesConfig,
    /// The Central Dashboard API (`dashboard:`): its links and settings documents.
    #[serde(default)]
    pub dashboard: DashboardConfig,
    /// Client ids whose ID tokens are accepted as bearer tokens, besides `kfsec-gatekeeper` and
    /// `kfsec-cli` (like the Kubernetes API server's `--oidc-client-id`). Each must be a client.
    #[serde(default)]
    pub bearer_audiences: Vec<String>,
    /// Connection limits of the front door (timeouts, connection caps).
    #[serde(default)]
    pub front_door: FrontDoorConfig,
    /// The admission webhook listener (client authentication, connection caps).
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    /// Encryption of the secret material in the store (`secretsEncryption:`).
    pub secrets_encryption: Option<SecretsEncryptionConfig>,
    /// Where kfsec keeps its state (`store:`): the embedded file under `dataDir` (default) or an
    /// etcd cluster several replicas share.
    pub store: Option<StoreConfig>,
    /// The audit log (`audit:`): policy file, log file backend, webhook backend.
    pub audit: Option<AuditConfig>,
    /// The S3 gateway (`s3:`): off when absent.
    pub s3: Option<S3Config>,
}

/// `s3:` — the S3 gateway in front of an upstream S3 store: its listener, the region clients
/// sign for, an optional base domain for virtual-host-style requests, the upstream, the
/// pipelines bucket and the prefix policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct S3Config {
    /// Listen address (default `127.0.0.1:9000`).
    pub addr: Option<String>,
    /// The region clients sign for (default `us-east-1`).
    pub region: Option<String>,
    /// Base domain for virtual-host-style requests (`<bucket>.<domain>`); path style always works.
    pub domain: Option<String>,
    /// The S3 store requests are re-signed to.
    pub upstream: Option<S3UpstreamConfig>,
    /// Kubeflow Pipelines' bucket, which the default policy is about (default `mlpipeline`).
    pub bucket: Option<String>,
    /// Who reaches what (default: SeaweedFS's per-namespace prefixes in `bucket`).
    pub policy: Option<Vec<S3PolicyRule>>,
}

/// `s3.upstream:` — the upstream store and kfsec's own credentials for it (files, or the
/// environment variables `KFSEC_S3_UPSTREAM_ACCESS_KEY` / `KFSEC_S3_UPSTREAM_SECRET_KEY`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct S3UpstreamConfig {
    /// `http(s)://host[:port]` of the store.
    pub endpoint: Option<String>,
    /// The region the store expects signatures for (default: `s3.region`).
    pub region: Option<String>,
    /// A file holding the upstream access key id.
    pub access_key_file: Option<String>,
    /// A file holding the upstream secret access key.
    pub secret_key_file: Option<String>,
    /// A PEM CA bundle trusted for an `https://` endpoint (default: the system roots).
    pub ca_file: Option<String>,
}

/// One `s3.policy` entry: a namespace's key may reach `prefix` (`<ns>` stands for the key's
/// namespace) in `bucket`, reading or reading and writing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct S3PolicyRule {
    /// The bucket (`<ns>` allowed, for a bucket per namespace).
    pub bucket: String,
    /// The key prefix, ending in `/` (or `""`: the whole bucket).
    #[serde(default)]
    pub prefix: String,
    /// `read` or `readWrite` (default `readWrite`).
    pub access: Option<String>,
}

/// `audit:` — Kubernetes' audit settings: `policyFile`, `log`, `webhook`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditConfig {
    /// An `audit.k8s.io/v1` Policy file (YAML or JSON); none: the default policy.
    pub policy_file: Option<String>,
    /// The log file backend (default: on, `<dataDir>/audit/audit.log`).
    pub log: Option<AuditLogConfig>,
    /// The webhook backend (default: off).
    pub webhook: Option<AuditWebhookConfig>,
}

/// `audit.log:` — the file (`-` = stdout, `""` = off), rotation as Kubernetes'
/// `--audit-log-max*` flags, and the checkpoint cadence.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditLogConfig {
    /// The file.
    pub path: Option<String>,
    /// Rotate at this size in MB (default 100; 0 never).
    #[serde(rename = "maxSizeMB")]
    pub max_size_mb: Option<u64>,
    /// Rotated files kept (default 100; 0 all).
    pub max_backups: Option<u64>,
    /// Days rotated files are kept (default 366; 0 forever).
    pub max_age_days: Option<u64>,
    /// Lines between signed checkpoints (default 1000).
    pub checkpoint_lines: Option<u64>,
    /// Longest time between signed checkpoints (default 10s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub checkpoint_interval: Option<Duration>,
    /// Where each signed checkpoint is also posted (a witness outside this machine).
    pub witness: Option<AuditWebhookConfig>,
}

/// `audit.webhook:` — where `EventList` batches are posted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditWebhookConfig {
    /// The collector's URL (`https://…`; `http://` only to a loopback address).
    pub url: String,
    /// A PEM CA bundle trusted for it, besides the system roots.
    pub ca_file: Option<String>,
}

/// `store:` — `type: redb` (default: one file under `dataDir`) or `type: etcd` with the
/// cluster's client URLs, the key prefix, TLS and etcd user.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoreConfig {
    /// `redb` or `etcd`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// etcd client URLs (`http://…` or, with `tls`, `https://…`).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The key prefix everything is stored under (default `/kfsec`).
    pub prefix: Option<String>,
    /// TLS to the etcd members.
    pub tls: Option<StoreTlsConfig>,
    /// etcd user (with a password).
    pub username: Option<String>,
    /// The etcd user's password.
    pub password: Option<String>,
    /// Environment variable holding the etcd user's password (instead of `password`).
    pub password_env: Option<String>,
    /// How long cached sessions and authorization keep serving after the last contact with
    /// the store (default 60s); then they fail closed.
    #[serde(default, deserialize_with = "opt_duration")]
    pub stale_limit: Option<Duration>,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("kind", &self.kind)
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password_env", &self.password_env)
            .field("stale_limit", &self.stale_limit)
            .finish_non_exhaustive()
    }
}

/// `store.tls:` — PEM files for TLS to etcd.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StoreTlsConfig {
    /// The CA that signed the members' certificates.
    pub ca_file: Option<String>,
    /// A client certificate (with `keyFile`).
    pub cert_file: Option<String>,
    /// The client certificate's key.
    pub key_file: Option<String>,
}

/// `secretsEncryption:` — the key-encryption key files (32 random bytes in base64, mode 0600).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretsEncryptionConfig {
    /// The key that seals new writes (and opens).
    pub key_file: String,
    /// Keys that only open (a rotation: the old key, until one start has re-sealed everything).
    #[serde(default)]
    pub previous_key_files: Vec<String>,
}

/// Connection limits of a TLS listener (`frontDoor:`; `webhooks:` takes the caps too).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FrontDoorConfig {
    /// From accept (TLS handshake included) to the end of the first request head (default 30s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub header_timeout: Option<Duration>,
    /// A connection with no request in flight is closed after this long (default 60s; HTTP/1
    /// keep-alive and HTTP/2 alike, PINGs do not count).
    #[serde(default, deserialize_with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// Open connections at once (default 10000); also the most requests in flight at once
    /// (HTTP/2 streams included; more are answered 503).
    pub max_connections: Option<usize>,
    /// Open connections at once from one client address (an IPv6 /64) (default 512); twice
    /// this many requests may be in flight from one address.
    pub max_connections_per_address: Option<usize>,
    /// An upstream that lets one wait last this long — for the next bytes of its answer once
    /// the request was sent, or to take the next bytes of the request — fails the request:
    /// 504 before the answer began, the answer cut after (default 60s; nginx's
    /// `proxy_read_timeout` and `proxy_send_timeout`; 100ms to 24h, as every timeout here).
    /// Never counted: a pooled connection's rest between requests, a client still sending its
    /// body, a WebSocket's quiet.
    #[serde(default, deserialize_with = "opt_duration")]
    pub upstream_timeout: Option<Duration>,
    /// A WebSocket tunnel through which no byte moved either way for this long is closed
    /// (default 1h, Istio's idle timeout; nginx closes at `proxy_read_timeout`, 60s): a client
    /// gone without a word, or an upstream that ignores the client's end, keeps neither the
    /// tunnel's connections nor its request's place longer.
    #[serde(default, deserialize_with = "opt_duration")]
    pub tunnel_idle_timeout: Option<Duration>,
}

/// The admission webhook listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhooksConfig {
    /// Require a client certificate of the API server (its admission kubeconfig).
    pub client_auth: Option<WebhookClientAuthConfig>,
    /// Open connections at once (default 1000).
    pub max_connections: Option<usize>,
    /// Open connections at once from one client address (default 512).
    pub max_connections_per_address: Option<usize>,
    /// `namespace/name` of the ConfigMap Katib's webhooks read their settings from (default
    /// `kubeflow/katib-config`; absent = Katib's shipped defaults).
    pub katib_config_map: Option<String>,
    /// `namespace/name` of the ConfigMap KServe's webhooks read their settings from (default
    /// `kubeflow/inferenceservice-config`; absent = KServe's shipped defaults).
    pub kserve_config_map: Option<String>,
}

/// Client-certificate authentication of the webhook callers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookClientAuthConfig {
    /// PEM bundle of the CAs client certificates must chain to (default: kfsec's internal CA).
    pub ca_file: Option<String>,
    /// Names accepted (the certificate's subject CN, DNS or URI SANs); at least one.
    #[serde(default)]
    pub allowed_names: Vec<String>,
}

/// A Dex `connectors:` entry. `config` is kept as JSON: it is env-expanded and then read by the
/// connector type's own schema.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DexConnector {
    /// Connector type (`oidc`, `ldap`, `microsoft`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// Id: `connector_id=`, the second half of `sub`, the `/auth/{id}` path.
    pub id: String,
    /// Display name on the chooser.
    pub name: String,
    /// The type's settings.
    #[serde(default)]
    pub config: serde_json::Value,
}

impl fmt::Debug for DexConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `config` holds client secrets and bind passwords.
        f.debug_struct("DexConnector")
            .field("type", &self.type_name)
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A Dex static password entry.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticPassword {
    /// Login email.
    pub email: String,
    /// bcrypt hash (`$2a$`, `$2b$` or `$2y$`).
    pub hash: Option<String>,
    /// Name of an environment variable holding the bcrypt hash.
    pub hash_from_env: Option<String>,
    /// Display/user name.
    pub username: Option<String>,
    /// Stable user id (the `sub` claim is derived from it).
    #[serde(rename = "userID")]
    pub user_id: Option<String>,
    /// Groups (a kfsec extension; Dex has none for static users).
    #[serde(default)]
    pub groups: Vec<String>,
}

impl fmt::Debug for StaticPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticPassword")
            .field("email", &self.email)
            .field("username", &self.username)
            .field("user_id", &self.user_id)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// A Dex static client entry.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticClient {
    /// Client id.
    pub id: Option<String>,
    /// Environment variable holding the client id.
    pub id_env: Option<String>,
    /// Client secret.
    pub secret: Option<String>,
    /// Environment variable holding the client secret.
    pub secret_env: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Registered redirect URIs, matched exactly.
    #[serde(default, rename = "redirectURIs")]
    pub redirect_uris: Vec<String>,
    /// Public clients have no secret (PKCE instead).
    #[serde(default)]
    pub public: bool,
}

impl fmt::Debug for StaticClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticClient")
            .field("id", &self.id)
            .field("id_env", &self.id_env)
            .field("name", &self.name)
            .field("redirect_uris", &self.redirect_uris)
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// Dex's `oauth2` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OAuth2Config {
    /// Skip the approval screen for every client.
    #[serde(default)]
    pub skip_approval_screen: bool,
    /// Allowed response types: only `code` (implicit and hybrid types are refused at load).
    #[serde(default)]
    pub response_types: Vec<String>,
    /// Show the connector chooser even when there is only one connector.
    pub always_show_login_screen: Option<bool>,
    /// The connector the resource-owner password grant checks (`local` or an `ldap` one).
    pub password_connector: Option<String>,
}

/// Dex's `expiry` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExpiryConfig {
    /// ID token lifetime (default 24h).
    #[serde(default, deserialize_with = "opt_duration")]
    pub id_tokens: Option<Duration>,
    /// Signing key rotation period (default 6h).
    #[serde(default, deserialize_with = "opt_duration")]
    pub signing_keys: Option<Duration>,
    /// Authorization request lifetime (default 30m).
    #[serde(default, deserialize_with = "opt_duration")]
    pub auth_requests: Option<Duration>,
    /// Device request lifetime (default 5m).
    #[serde(default, deserialize_with = "opt_duration")]
    pub device_requests: Option<Duration>,
    /// Refresh token policy.
    #[serde(default)]
    pub refresh_tokens: RefreshTokenExpiry,
}

/// Dex's `expiry.refreshTokens`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RefreshTokenExpiry {
    /// Accepted for Dex compatibility; rotation is always on.
    pub disable_rotation: Option<bool>,
    /// How long a rotated-out token still works (default 3s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub reuse_interval: Option<Duration>,
    /// Idle lifetime (default 90 days, i.e. 2160h).
    #[serde(default, deserialize_with = "opt_duration")]
    pub valid_if_not_used_for: Option<Duration>,
    /// Absolute lifetime (default 165 days).
    #[serde(default, deserialize_with = "opt_duration")]
    pub absolute_lifetime: Option<Duration>,
}

/// Dex's `logger` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoggerConfig {
    /// `debug`, `info`, `warn` or `error`.
    pub level: Option<String>,
    /// `text` or `json`.
    pub format: Option<String>,
}

/// One upstream route.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteConfig {
    /// Path prefix, e.g. `/jupyter/`.
    pub prefix: String,
    /// Upstream base URL, e.g. `http://127.0.0.1:8888`.
    pub upstream: String,
    /// Public routes skip authentication.
    #[serde(default)]
    pub public: bool,
    /// Replace `prefix` with this before proxying.
    pub rewrite_prefix: Option<String>,
    /// TLS to the upstream (its URL must then be `https://`).
    pub tls: Option<RouteTlsConfig>,
    /// Pass the client's `Authorization` header to the upstream (default false: removed, so a
    /// bearer token meant for kfsec never reaches an application that did not ask for it).
    #[serde(default)]
    pub forward_authorization: bool,
}

/// TLS to one upstream: the upstream's certificate must chain to kfsec's internal CA.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteTlsConfig {
    /// `mutual` (kfsec presents its workload certificate) or `simple` (server certificate only).
    pub mode: String,
    /// The name the upstream's certificate must carry (default: the upstream URL's host).
    pub server_name: Option<String>,
}

/// Session cookie settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionConfig {
    /// Session lifetime (default 24h).
    #[serde(default, deserialize_with = "opt_duration")]
    pub ttl: Option<Duration>,
    /// Cookie name (default `authservice_session`).
    pub cookie_name: Option<String>,
    /// Concurrent sessions per user (default 100); the oldest is ended when a new one starts.
    pub max_per_user: Option<u32>,
    /// How often a session of a federated user (signed in through a connector) is re-checked
    /// against the upstream, at its next request (default 15m; `0s` turns it off).
    #[serde(default, deserialize_with = "opt_duration")]
    pub revalidate_federated: Option<Duration>,
}

/// The Central Dashboard API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DashboardConfig {
    /// A file holding the JSON Kubeflow keeps under the `links` key of its
    /// `centraldashboard-config` ConfigMap (`menuLinks`, `externalLinks`, `quickLinks`,
    /// `documentationItems`); default: the Pipelines links.
    pub links: Option<String>,
    /// A file holding the JSON of the ConfigMap's `settings` key; default
    /// `{"DASHBOARD_FORCE_IFRAME": false}`.
    pub settings: Option<String>,
}

/// The Kubeflow Pipelines API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PipelinesConfig {
    /// Most bytes of stored pipeline packages per namespace; shared pipelines count as one
    /// namespace (default 536870912, 512 MiB).
    pub max_package_bytes_per_namespace: Option<u64>,
    /// Most stored pipeline packages (pipeline versions) per namespace (default 1000).
    pub max_packages_per_namespace: Option<u64>,
}

/// The internal CA.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PkiConfig {
    /// `rsa2048` (default, sha256WithRSAEncryption) or `ecdsa-p256`; chosen when the CA is created.
    pub key_algorithm: Option<String>,
    /// Lifetime of the front-door and webhook certificates (default 2160h); renewed at 2/3.
    #[serde(default, deserialize_with = "opt_duration")]
    pub leaf_lifetime: Option<Duration>,
}

/// A user-supplied front-door certificate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: Option<String>,
    /// PEM private key.
    pub key_file: Option<String>,
}

/// Brute-force protection of the login form.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoginProtectionConfig {
    /// Failures per account from one client address before that address is locked out of that
    /// account (default 5; repeated lockouts double in length).
    pub max_failures_per_account: Option<u32>,
    /// Failures per client address before it is locked (default 20).
    pub max_failures_per_address: Option<u32>,
    /// Window in which failures are counted (default 15m).
    #[serde(default, deserialize_with = "opt_duration")]
    pub window: Option<Duration>,
    /// How long a lockout lasts (default 15m).
    #[serde(default, deserialize_with = "opt_duration")]
    pub lockout: Option<Duration>,
    /// Password checks per account per window from all addresses together before further checks
    /// are spaced out evenly (default 100; slows a distributed attack, never locks the account).
    pub max_verifications_per_account: Option<u32>,
    /// Device user-code entries (the device page and its callback) per client address per
    /// window (default 20).
    pub max_user_code_attempts_per_address: Option<u32>,
    /// Device user-code entries per window from all addresses (default 300).
    pub max_user_code_attempts: Option<u32>,
    /// Device codes issued per client address per window (default 30).
    pub max_device_codes_per_address: Option<u32>,
    /// Device codes pending at once (default 1000).
    pub max_pending_device_codes: Option<u32>,
    /// Longest `state` parameter of an authorization request, in bytes (default 512).
    pub max_state_length: Option<usize>,
}

/// Deserializes an optional Go-style duration string (`10s`, `1h30m`).
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// Parses a Go-style duration such as `24h`, `1h30m`, `90s` or `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("invalid duration {s:?}: expected a number"));
        }
        let (num, tail) = rest.split_at(digits);
        let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m, h)"
                ));
            }
        };
        total = total.saturating_add(d);
        rest = tail;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
