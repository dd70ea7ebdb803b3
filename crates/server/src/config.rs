//! Configuration: the YAML file (`apiVersion: kfsec/v1`, Dex sections accepted), environment
//! references and command-line overrides, validated once into an immutable [`Config`].
//!
//! Invariants: unknown fields are errors naming their path; secrets given by environment
//! variable are resolved here and never logged; no setting defaults to a password; the
//! federation part (`federation`: connectors, password database, branding, revalidation) reports
//! all of its problems in one run.

pub mod audit;
mod federation;
pub mod s3;
pub mod store;

pub use federation::{DEFAULT_REVALIDATE_FEDERATED, Federation};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use kfsec_gateway::Route;
use kfsec_gateway::listener::ListenerLimits;
use kfsec_idp::connector::Connector;
use kfsec_idp::lockout::LockoutPolicy;
use kfsec_idp::{Client, ClientAuth, RefreshPolicy, User};
use kfsec_types::Clock;
use kfsec_types::config::ConfigFile;

/// Configuration errors, each naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// File unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// YAML syntax.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// Schema violation with the field's path.
    #[error("{path}: {field}: {message}")]
    Field {
        /// The file.
        path: PathBuf,
        /// Dotted path of the field, e.g. `staticClients[0].secrett`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A semantic problem.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// Several problems, each starting with its path (all of them, found in one run).
    #[error("invalid configuration ({} problem{}):\n  - {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("\n  - "))]
    Problems(Vec<String>),
}

/// Access to environment variables (a trait so tests never touch the process environment).
pub trait Env {
    /// The value of `name`.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Command-line overrides (flags win over the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--https-addr`.
    pub https_addr: Option<String>,
    /// `--admin-addr`.
    pub admin_addr: Option<String>,
    /// `--webhook-addr`.
    pub webhook_addr: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Front-door address.
    pub https_addr: SocketAddr,
    /// Admin address.
    pub admin_addr: SocketAddr,
    /// Webhooks address.
    pub webhook_addr: SocketAddr,
    /// Public URL (None: derived from the bound address).
    pub public_url: Option<url::Url>,
    /// Issuer (None: `<publicURL>/dex`).
    pub issuer: Option<String>,
    /// Users from the file.
    pub static_users: Vec<User>,
    /// Clients from the file.
    pub static_clients: Vec<Client>,
    /// Skip approval.
    pub skip_approval: bool,
    /// ID token lifetime.
    pub id_token_ttl: Duration,
    /// Signing key rotation.
    pub signing_key_rotation: Duration,
    /// Auth request lifetime.
    pub auth_request_ttl: Duration,
    /// Refresh policy.
    pub refresh: RefreshPolicy,
    /// Lockout policy.
    pub lockout: LockoutPolicy,
    /// Routes.
    pub routes: Vec<Route>,
    /// Session lifetime.
    pub session_ttl: Duration,
    /// Cookie name.
    pub cookie_name: String,
    /// User id header.
    pub user_id_header: HeaderName,
    /// User id prefix.
    pub user_id_prefix: String,
    /// Groups header.
    pub groups_header: HeaderName,
    /// User-supplied certificate and key.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Trusted proxies (addresses and CIDR ranges).
    pub trusted_proxies: kfsec_gateway::forwarded::TrustedProxies,
    /// Log level.
    pub log_level: Option<String>,
    /// Log format.
    pub log_format: Option<String>,
    /// Self-registration of profiles.
    pub registration_flow: bool,
    /// The Central Dashboard API's links and settings documents (`dashboard:`), checked.
    pub dashboard: (serde_json::Value, serde_json::Value),
    /// Extra client ids whose ID tokens are bearer tokens (`bearerAudiences`; each must exist as
    /// a client, checked at start where the store's clients are known).
    pub bearer_audiences: Vec<String>,
    /// Concurrent sessions per user (`session.maxPerUser`, default 100).
    pub max_sessions_per_user: usize,
    /// Key algorithm of a new CA.
    pub key_algorithm: kfsec_pki::KeyAlgorithm,
    /// Lifetime of kfsec's own serving certificates.
    pub leaf_lifetime: Duration,
    /// Stored pipeline packages per namespace: (bytes, count) (`pipelines:`).
    pub pipeline_package_quota: (u64, u64),
    /// Front-door timeouts and connection caps (`frontDoor:`).
    pub front_door: ListenerLimits,
    /// How long an upstream may let one wait last (`frontDoor.upstreamTimeout`, default 60s).
    pub upstream_timeout: Duration,
    /// How long a WebSocket tunnel may stay quiet (`frontDoor.tunnelIdleTimeout`, default 1h).
    pub tunnel_idle_timeout: Duration,
    /// Webhook listener timeouts (the front door's) and connection caps (`webhooks:`).
    pub webhook_limits: ListenerLimits,
    /// Client-certificate authentication of webhook callers (`webhooks.clientAuth`).
    pub webhook_client_auth: Option<WebhookClientAuth>,
    /// Where the webhooks' settings ConfigMaps are (`webhooks.katibConfigMap`, `kserveConfigMap`).
    pub webhook_settings: WebhookSettingsMaps,
    /// Dex sections the file has that kfsec acknowledges but does not use, each with the reason
    /// (logged once at startup).
    pub acknowledged: Vec<String>,
    /// Connectors, password database, chooser, branding and session revalidation.
    pub federation: Federation,
    /// The keys sealing secret material in the store (`secretsEncryption`), read at load.
    pub secrets_encryption: Option<kfsec_store::sealed::Keyring>,
    /// Where the state lives (`store:`): redb under the data directory, or etcd.
    pub store: store::StoreSettings,
    /// The audit policy and backends (`audit:`); `--audit-log-path` sets the log's path.
    pub audit: audit::AuditSettings,
    /// The S3 gateway (`s3:`; `None`: off).
    pub s3: Option<s3::S3Settings>,
    /// The binary's build, reported by `/version` and the `kfsec_build_info` metric: filled by
    /// the binary (its build script); [`validate`] leaves the library default.
    pub build: kfsec_types::BuildInfo,
}

impl Config {
    /// The connectors in chooser order (the configured ones, opened against `issuer`, then
    /// `local` when the password database is on); every problem of every entry in one error.
    pub fn open_connectors(&self, issuer: &str, clock: Arc<dyn Clock>) -> Result<Vec<Connector>, ConfigError> {
        let f = &self.federation;
        federation::open_connectors(&f.connectors, f.password_db, issuer, clock).map_err(ConfigError::Problems)
    }
}

/// The issuer as far as it is known before the listeners bind, as the server derives it at start
/// (None: it depends on a port the system picks).
fn known_issuer(issuer: Option<&str>, public_url: Option<&url::Url>, https_addr: SocketAddr) -> Option<String> {
    if let Some(i) = issuer {
        return Some(i.trim_end_matches('/').to_owned());
    }
    match public_url {
        Some(u) => Some(format!("{}/dex", u.as_str().trim_end_matches('/'))),
        None if https_addr.port() != 0 => Some(format!("https://localhost:{}/dex", https_addr.port())),
        None => None,
    }
}

/// The Dex sections kfsec accepts so that a Dex config pastes in unchanged, with why each is
/// not used. A section must be a mapping (or empty), as Dex requires.
fn acknowledge_dex_sections(f: &ConfigFile) -> Result<Vec<String>, ConfigError> {
    let sections: [(&str, &Option<serde_json::Value>, &str); 4] = [
        (
            "storage",
            &f.storage,
            "kfsec keeps its state (users, clients, tokens, sessions) in its own store under dataDir; nothing is read from or written to Dex's storage",
        ),
        (
            "web",
            &f.web,
            "kfsec's listeners are its own (httpsAddr / --https-addr, HTTPS only); web.http and web.https never open a listener",
        ),
        (
            "telemetry",
            &f.telemetry,
            "health and metrics are served on adminAddr (/healthz, /readyz, /metrics); no telemetry listener is opened",
        ),
        (
            "grpc",
            &f.grpc,
            "kfsec has no gRPC API (manage users and clients with `kfsec user` / `kfsec client`); no gRPC listener is opened",
        ),
    ];
    let mut out = Vec::new();
    for t in &f.oauth2.response_types {
        if t != "code" {
            return Err(ConfigError::Invalid(format!(
                "oauth2.responseTypes: {t:?} is not supported: kfsec issues tokens only through the authorization code flow (with PKCE), never in the redirect (implicit and hybrid flows); use [code] or leave it out"
            )));
        }
    }
    for (name, value, why) in sections {
        let keys = match value {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::Object(m)) => m.keys().cloned().collect::<Vec<_>>().join(", "),
            Some(_) => return Err(ConfigError::Invalid(format!("{name}: must be a mapping, as in Dex"))),
        };
        out.push(format!("Dex's `{name}` ({keys}) is accepted but not used: {why}"));
    }
    Ok(out)
}

/// The ConfigMaps the webhooks read their settings from: `(namespace, name)` each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettingsMaps {
    /// Katib's `katib-config`.
    pub katib: (String, String),
    /// KServe's `inferenceservice-config`.
    pub kserve: (String, String),
}

/// `namespace/name` of a ConfigMap (`key` names the setting in refusals), or `default`.
fn config_map_ref(v: Option<&str>, key: &str, default: (&str, &str)) -> Result<(String, String), ConfigError> {
    let Some(v) = v else {
        return Ok((default.0.to_owned(), default.1.to_owned()));
    };
    match v.split_once('/') {
        Some((ns, name))
            if kfsec_types::validation::is_dns1123_label(ns) && kfsec_types::validation::is_dns1123_subdomain(name) =>
        {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(ConfigError::Invalid(format!(
            "{key}: {v:?} is not namespace/name of a ConfigMap (e.g. {}/{})",
            default.0, default.1
        ))),
    }
}

/// Who may call the admission webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookClientAuth {
    /// CA bundle client certificates must chain to (None: kfsec's internal CA, followed through
    /// rotations).
    pub ca_file: Option<PathBuf>,
    /// Accepted certificate names (subject CN, DNS or URI SAN).
    pub allowed_names: Vec<String>,
}

/// `session.cookieName` (default `authservice_session`, the name Kubeflow's clients know): a
/// cookie name (an RFC 6265 token of at most 128 bytes) that, like its `__Host-` twin (which
/// browsers are held to: `kfsec_gateway::session_cookie`), is none of kfsec's other cookies. A
/// `__Host-` name is accepted — kfsec's session cookie is `Secure`, `Path=/` and has no
/// `Domain` — and is then the only name.
fn session_cookie_name(name: Option<String>) -> Result<String, ConfigError> {
    let name = name.unwrap_or_else(|| "authservice_session".into());
    let token = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
    if !token {
        return Err(ConfigError::Invalid(format!(
            "session.cookieName {name:?} is not a cookie name (1-128 of letters, digits and !#$%&'*+-.^_`|~)"
        )));
    }
    // (its `__Host-` twin, which browsers are held to, included)
    let names = kfsec_gateway::session_cookie::SessionCookie::new(&name);
    if let Some(clash) = names.names().find(|n| {
        std::iter::once(kfsec_gateway::CSRF_COOKIE)
            .chain(kfsec_idp::cookies::IDP_COOKIES)
            .any(|own| own.eq_ignore_ascii_case(n))
    }) {
        return Err(ConfigError::Invalid(format!(
            "session.cookieName {name:?}: {clash:?} is the name of another of kfsec's cookies"
        )));
    }
    // (a prefix in another case protects only where browsers match prefixes case-blind)
    for prefix in ["__Host-", "__Secure-"] {
        if name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix) && !name.starts_with(prefix)
        {
            return Err(ConfigError::Invalid(format!(
                "session.cookieName {name:?}: spell the prefix {prefix:?}, as browsers define it"
            )));
        }
    }
    Ok(name)
}

/// How long an upstream may let one wait last by default (nginx's `proxy_read_timeout`).
const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a WebSocket tunnel may stay quiet by default (Istio's idle timeout).
const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A timeout setting `what`: `default` when absent; from 100ms (there is no "none") to 24h.
fn timeout_setting(v: Option<Duration>, what: &str, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        Some(d) if d < Duration::from_millis(100) => Err(ConfigError::Invalid(format!(
            "{what} must be at least 100ms (a slow service needs a longer one, not none)"
        ))),
        Some(d) if d > Duration::from_secs(86_400) => Err(ConfigError::Invalid(format!("{what} must be at most 24h"))),
        v => Ok(v.unwrap_or(default)),
    }
}

/// The listener limits of `frontDoor:` and `webhooks:`.
fn listener_limits(f: &ConfigFile) -> Result<(ListenerLimits, ListenerLimits, Option<WebhookClientAuth>), ConfigError> {
    let fd = &f.front_door;
    let positive = |v: Option<usize>, what: &str, default: usize| match v {
        Some(0) => Err(ConfigError::Invalid(format!("{what} must be at least 1"))),
        v => Ok(v.unwrap_or(default)),
    };
    let timeout = timeout_setting;
    let (fdd, whd) = (ListenerLimits::FRONT_DOOR, ListenerLimits::WEBHOOKS);
    let front = ListenerLimits {
        header_timeout: timeout(fd.header_timeout, "frontDoor.headerTimeout", fdd.header_timeout)?,
        idle_timeout: timeout(fd.idle_timeout, "frontDoor.idleTimeout", fdd.idle_timeout)?,
        max_connections: positive(fd.max_connections, "frontDoor.maxConnections", fdd.max_connections)?,
        max_connections_per_address: positive(
            fd.max_connections_per_address,
            "frontDoor.maxConnectionsPerAddress",
            fdd.max_connections_per_address,
        )?,
    };
    let wh = &f.webhooks;
    let webhooks = ListenerLimits {
        header_timeout: front.header_timeout,
        idle_timeout: front.idle_timeout,
        max_connections: positive(wh.max_connections, "webhooks.maxConnections", whd.max_connections)?,
        max_connections_per_address: positive(
            wh.max_connections_per_address,
            "webhooks.maxConnectionsPerAddress",
            whd.max_connections_per_address,
        )?,
    };
    let client_auth = match &wh.client_auth {
        None => None,
        Some(ca) => {
            let allowed_names: Vec<String> = ca
                .allowed_names
                .iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect();
            if allowed_names.is_empty() {
                return Err(ConfigError::Invalid(
                    "webhooks.clientAuth.allowedNames: name at least one certificate name (e.g. the API server's CN)"
                        .into(),
                ));
            }
            Some(WebhookClientAuth {
                ca_file: ca.ca_file.as_ref().map(PathBuf::from),
                allowed_names,
            })
        }
    };
    Ok((front, webhooks, client_auth))
}

/// Parses the YAML text of a config file into its data model.
pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    let value: serde_json::Value = if text.trim().is_empty() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.into(),
            // The parser's first line says where and what; the source snippet under it does
            // not fit the one line an error is printed as.
            message: e
                .to_string()
                .lines()
                .next()
                .map(|l| l.trim_start_matches("error: ").to_owned())
                .unwrap_or_default(),
        })?
    };
    serde_path_to_error::deserialize(value).map_err(|e| ConfigError::Field {
        path: path.into(),
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

fn addr(s: &str, what: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| ConfigError::Invalid(format!("{what} {s:?} is not an address like 0.0.0.0:8443")))
}

fn header(s: &str, what: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| ConfigError::Invalid(format!("{what} {s:?} is not a valid header name")))
}

/// Loads and validates. `path` None means no file (all defaults).
pub fn load(path: Option<&Path>, overrides: &Overrides, env: &dyn Env) -> Result<Config, ConfigError> {
    let file = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.into(), source })?;
            parse(p, &text)?
        }
        None => ConfigFile::default(),
    };
    validate(file, overrides, env)
}

/// `bearerAudiences`: client ids, no empty or repeated entry.
fn bearer_audiences(ids: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        if id.trim().is_empty() || id.trim() != id || id.len() > 255 {
            return Err(ConfigError::Invalid(format!(
                "bearerAudiences: {id:?} is not a client id"
            )));
        }
        if out.contains(id) {
            return Err(ConfigError::Invalid(format!("bearerAudiences: {id:?} is listed twice")));
        }
        out.push(id.clone());
    }
    Ok(out)
}

/// `dashboard:`: the links and settings documents, read and checked now (a bad file fails the
/// start with the reason), or the defaults.
fn dashboard_documents(
    d: &kfsec_types::config::DashboardConfig,
) -> Result<(serde_json::Value, serde_json::Value), ConfigError> {
    let read = |key: &str, file: &Option<String>, parse: fn(&[u8]) -> Result<serde_json::Value, String>, default| {
        let Some(file) = file else { return Ok(default) };
        let bytes = std::fs::read(file).map_err(|source| ConfigError::Read {
            path: file.into(),
            source,
        })?;
        parse(&bytes).map_err(|e| ConfigError::Invalid(format!("dashboard.{key}: {file}: {e}")))
    };
    Ok((
        read(
            "links",
            &d.links,
            kfsec_profiles::dashboard::parse_links,
            kfsec_profiles::dashboard::default_links(),
        )?,
        read(
            "settings",
            &d.settings,
            kfsec_profiles::dashboard::parse_settings,
            kfsec_profiles::dashboard::default_settings(),
        )?,
    ))
}

/// `secretsEncryption:`: the key files, read and checked now (a bad one fails the start,
/// naming the setting and the file). `data_dir_kek`: the data directory's own key
/// (`crate::kek`, redb only), held decrypt-only when it exists, so a store sealed with it is
/// re-sealed under `keyFile` at the first start with `secretsEncryption`.
fn secrets_keys(
    s: Option<&kfsec_types::config::SecretsEncryptionConfig>,
    data_dir_kek: Option<&Path>,
) -> Result<Option<kfsec_store::sealed::Keyring>, ConfigError> {
    use kfsec_store::sealed::{Keyring, SealKey};
    let Some(s) = s else { return Ok(None) };
    let load = |what: &str, file: &str| {
        if file.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "secretsEncryption.{what}: name a key file"
            )));
        }
        SealKey::load(Path::new(file)).map_err(|e| ConfigError::Invalid(format!("secretsEncryption.{what}: {e}")))
    };
    let primary = load("keyFile", &s.key_file)?;
    let mut previous = s
        .previous_key_files
        .iter()
        .enumerate()
        .map(|(i, f)| load(&format!("previousKeyFiles[{i}]"), f))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(kek) = data_dir_kek.filter(|p| p.exists()) {
        previous.push(SealKey::load(kek).map_err(|e| ConfigError::Invalid(format!("the data directory's key: {e}")))?);
    }
    Ok(Some(Keyring::new(primary, previous)))
}

/// Turns the data model into a validated [`Config`].
pub fn validate(f: ConfigFile, o: &Overrides, env: &dyn Env) -> Result<Config, ConfigError> {
    if let Some(v) = &f.api_version
        && v != "kfsec/v1"
    {
        return Err(ConfigError::Invalid(format!("apiVersion must be kfsec/v1, not {v:?}")));
    }
    let data_dir = o
        .data_dir
        .clone()
        .or_else(|| f.data_dir.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("./kfsec-data"));
    let https_addr = addr(
        o.https_addr
            .as_deref()
            .or(f.https_addr.as_deref())
            .unwrap_or("0.0.0.0:8443"),
        "httpsAddr",
    )?;
    let webhook_addr = addr(
        o.webhook_addr
            .as_deref()
            .or(f.webhook_addr.as_deref())
            .unwrap_or("127.0.0.1:9443"),
        "webhookAddr",
    )?;
    let admin_addr = addr(
        o.admin_addr
            .as_deref()
            .or(f.admin_addr.as_deref())
            .unwrap_or("127.0.0.1:9090"),
        "adminAddr",
    )?;
    let public_url = f
        .public_url
        .as_deref()
        .map(|u| {
            let url = url::Url::parse(u).map_err(|e| ConfigError::Invalid(format!("publicURL {u:?}: {e}")))?;
            if url.scheme() != "https" && url.scheme() != "http" {
                return Err(ConfigError::Invalid(format!("publicURL {u:?} must be an https URL")));
            }
            Ok(url)
        })
        .transpose()?;
    if let Some(iss) = &f.issuer {
        url::Url::parse(iss).map_err(|e| ConfigError::Invalid(format!("issuer {iss:?}: {e}")))?;
    }

    let mut static_users = Vec::new();
    for (i, p) in f.static_passwords.iter().enumerate() {
        let hash = match (&p.hash, &p.hash_from_env) {
            (Some(h), None) => h.clone(),
            (None, Some(var)) => env.var(var).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "staticPasswords[{i}].hashFromEnv: environment variable {var} is not set"
                ))
            })?,
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "staticPasswords[{i}]: exactly one of hash and hashFromEnv is required"
                )));
            }
        };
        let hash = hash.trim().to_owned();
        if !(hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"))
            || bcrypt::verify("", &hash).is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "staticPasswords[{i}] ({}): hash is not a bcrypt hash",
                p.email
            )));
        }
        kfsec_idp::users::validate_login_name(&p.email)
            .map_err(|e| ConfigError::Invalid(format!("staticPasswords[{i}]: {e}")))?;
        static_users.push(User {
            email: p.email.clone(),
            username: p.username.clone().unwrap_or_else(|| p.email.clone()),
            user_id: p.user_id.clone().unwrap_or_else(|| p.email.clone()),
            hash,
            groups: p.groups.clone(),
        });
    }

    let mut static_clients = Vec::new();
    for (i, c) in f.static_clients.iter().enumerate() {
        let resolve = |v: &Option<String>, e: &Option<String>, what: &str| -> Result<Option<String>, ConfigError> {
            match (v, e) {
                (Some(v), None) => Ok(Some(v.clone())),
                (None, Some(var)) => env.var(var).map(Some).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "staticClients[{i}].{what}Env: environment variable {var} is not set"
                    ))
                }),
                (None, None) => Ok(None),
                (Some(_), Some(_)) => Err(ConfigError::Invalid(format!(
                    "staticClients[{i}]: give {what} or {what}Env, not both"
                ))),
            }
        };
        let id = resolve(&c.id, &c.id_env, "id")?
            .ok_or_else(|| ConfigError::Invalid(format!("staticClients[{i}]: id is required")))?;
        let secret = resolve(&c.secret, &c.secret_env, "secret")?;
        let auth = match (c.public, secret) {
            (true, _) => ClientAuth::Public,
            (false, Some(s)) if !s.is_empty() => ClientAuth::Static(s),
            (false, _) => {
                return Err(ConfigError::Invalid(format!(
                    "staticClients[{i}] ({id}): a secret is required unless public: true"
                )));
            }
        };
        static_clients.push(Client {
            name: c.name.clone().unwrap_or_else(|| id.clone()),
            id,
            redirect_uris: c.redirect_uris.clone(),
            auth,
        });
    }

    let mut routes = Vec::new();
    for r in &f.routes {
        let tls = r.tls.as_ref().map(|t| (t.mode.clone(), t.server_name.clone()));
        let route = Route::new(&r.prefix, &r.upstream, r.public, r.rewrite_prefix.clone(), tls)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?
            .with_forward_authorization(r.forward_authorization);
        for reserved in ["/dex", "/authservice", "/oauth2"] {
            if route.prefix.starts_with(reserved)
                || (reserved.starts_with(route.prefix.trim_end_matches('/')) && route.prefix != "/")
            {
                return Err(ConfigError::Invalid(format!(
                    "route prefix {} overlaps kfsec's own {reserved}",
                    route.prefix
                )));
            }
        }
        routes.push(route);
    }

    let tls_files = match &f.tls {
        Some(t) => match (&t.cert_file, &t.key_file) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            _ => return Err(ConfigError::Invalid("tls: certFile and keyFile go together".into())),
        },
        None => None,
    };
    let trusted_proxies = kfsec_gateway::forwarded::TrustedProxies::new(
        f.trusted_proxies
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|e| ConfigError::Invalid(format!("trustedProxies: {e}")))
            })
            .collect::<Result<_, _>>()?,
    );

    let hours = |h: u64| Duration::from_secs(h * 3600);
    let e = &f.expiry;
    let lp = &f.login_protection;
    let defaults = LockoutPolicy::default();
    let session_ttl = f.session.ttl.unwrap_or(hours(24));
    if session_ttl < Duration::from_secs(60) {
        return Err(ConfigError::Invalid("session.ttl must be at least 1m".into()));
    }
    if lp.window.is_some_and(|w| w < Duration::from_secs(1)) {
        return Err(ConfigError::Invalid(
            "loginProtection.window must be at least 1s".into(),
        ));
    }
    if lp.max_state_length.is_some_and(|n| !(8..=4096).contains(&n)) {
        return Err(ConfigError::Invalid(
            "loginProtection.maxStateLength must be between 8 and 4096 bytes".into(),
        ));
    }
    let (front_door, webhook_limits, webhook_client_auth) = listener_limits(&f)?;
    let upstream_timeout = timeout_setting(
        f.front_door.upstream_timeout,
        "frontDoor.upstreamTimeout",
        DEFAULT_UPSTREAM_TIMEOUT,
    )?;
    let tunnel_idle_timeout = timeout_setting(
        f.front_door.tunnel_idle_timeout,
        "frontDoor.tunnelIdleTimeout",
        DEFAULT_TUNNEL_IDLE_TIMEOUT,
    )?;
    let mut acknowledged = acknowledge_dex_sections(&f)?;
    let (federation, unused) = federation::federation(
        &f,
        env,
        known_issuer(f.issuer.as_deref(), public_url.as_ref(), https_addr).as_deref(),
    )
    .map_err(ConfigError::Problems)?;
    acknowledged.extend(unused);
    let webhook_settings = WebhookSettingsMaps {
        katib: config_map_ref(
            f.webhooks.katib_config_map.as_deref(),
            "webhooks.katibConfigMap",
            ("kubeflow", kfsec_admission::settings::KATIB_CONFIG_MAP),
        )?,
        kserve: config_map_ref(
            f.webhooks.kserve_config_map.as_deref(),
            "webhooks.kserveConfigMap",
            ("kubeflow", kfsec_admission::settings::KSERVE_CONFIG_MAP),
        )?,
    };
    let audit = audit::settings(f.audit.as_ref(), &data_dir)?;
    // The data directory's own key (redb only), which `secretsEncryption` takes over from.
    let data_dir_kek = (f.store.as_ref().and_then(|s| s.kind.as_deref()).unwrap_or("redb") == "redb")
        .then(|| crate::kek::path(&data_dir));
    Ok(Config {
        audit,
        data_dir,
        https_addr,
        admin_addr,
        webhook_addr,
        public_url,
        issuer: f.issuer.map(|i| i.trim_end_matches('/').to_owned()),
        static_users,
        static_clients,
        skip_approval: f.oauth2.skip_approval_screen,
        id_token_ttl: e.id_tokens.unwrap_or(hours(24)),
        signing_key_rotation: e.signing_keys.unwrap_or(hours(6)),
        auth_request_ttl: e.auth_requests.unwrap_or(Duration::from_secs(1800)),
        refresh: RefreshPolicy {
            reuse_interval: e.refresh_tokens.reuse_interval.unwrap_or(Duration::from_secs(3)),
            idle: e.refresh_tokens.valid_if_not_used_for.unwrap_or(hours(24 * 90)),
            absolute: e.refresh_tokens.absolute_lifetime.unwrap_or(hours(24 * 165)),
        },
        lockout: LockoutPolicy {
            per_account: lp.max_failures_per_account.unwrap_or(defaults.per_account).max(1),
            per_address: lp.max_failures_per_address.unwrap_or(defaults.per_address).max(1),
            window: lp.window.unwrap_or(defaults.window),
            lockout: lp.lockout.unwrap_or(defaults.lockout),
            account_budget: lp
                .max_verifications_per_account
                .unwrap_or(defaults.account_budget)
                .max(1),
            user_code_per_address: lp
                .max_user_code_attempts_per_address
                .unwrap_or(defaults.user_code_per_address)
                .max(1),
            user_code_global: lp.max_user_code_attempts.unwrap_or(defaults.user_code_global).max(1),
            device_codes_per_address: lp
                .max_device_codes_per_address
                .unwrap_or(defaults.device_codes_per_address)
                .max(1),
            max_pending_device_codes: lp
                .max_pending_device_codes
                .unwrap_or(defaults.max_pending_device_codes)
                .max(1),
            max_state_length: lp.max_state_length.unwrap_or(defaults.max_state_length),
        },
        routes,
        session_ttl,
        cookie_name: session_cookie_name(f.session.cookie_name)?,
        user_id_header: header(f.user_id_header.as_deref().unwrap_or("kubeflow-userid"), "userIdHeader")?,
        user_id_prefix: f.user_id_prefix.unwrap_or_default(),
        groups_header: header(f.groups_header.as_deref().unwrap_or("kubeflow-groups"), "groupsHeader")?,
        tls_files,
        trusted_proxies,
        log_level: f.logger.as_ref().and_then(|l| l.level.clone()),
        log_format: f.logger.and_then(|l| l.format),
        registration_flow: f.registration_flow,
        dashboard: dashboard_documents(&f.dashboard)?,
        pipeline_package_quota: (
            f.pipelines.max_package_bytes_per_namespace.unwrap_or(512 * 1024 * 1024),
            f.pipelines.max_packages_per_namespace.unwrap_or(1000),
        ),
        bearer_audiences: bearer_audiences(&f.bearer_audiences)?,
        max_sessions_per_user: match f.session.max_per_user {
            None => 100,
            Some(0) => return Err(ConfigError::Invalid("session.maxPerUser must be at least 1".into())),
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        },
        key_algorithm: match f.pki.key_algorithm.as_deref() {
            None => kfsec_pki::KeyAlgorithm::Rsa2048,
            Some(a) => a
                .parse()
                .map_err(|_| ConfigError::Invalid(format!("pki.keyAlgorithm {a:?}: use rsa2048 or ecdsa-p256")))?,
        },
        leaf_lifetime: {
            let l = f.pki.leaf_lifetime.unwrap_or(Duration::from_secs(90 * 86_400));
            if l < Duration::from_secs(3) {
                return Err(ConfigError::Invalid("pki.leafLifetime must be at least 3s".into()));
            }
            l
        },
        front_door,
        upstream_timeout,
        tunnel_idle_timeout,
        webhook_limits,
        webhook_client_auth,
        webhook_settings,
        acknowledged,
        federation,
        store: store::settings(f.store.as_ref(), f.secrets_encryption.is_some(), env)?,
        secrets_encryption: secrets_keys(f.secrets_encryption.as_ref(), data_dir_kek.as_deref())?,
        s3: s3::settings(f.s3.as_ref(), None, env)?,
        build: kfsec_types::BuildInfo::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct MapEnv(Vec<(&'static str, &'static str)>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        }
    }

    const DEX: &str = r#"
apiVersion: kfsec/v1
issuer: http://dex.auth.svc.cluster.local:5556/dex
enablePasswordDB: true
oauth2:
  skipApprovalScreen: true
staticPasswords:
- email: user@example.com
  hashFromEnv: DEX_USER_PASSWORD
  username: user
  userID: "15841185641784"
staticClients:
- idEnv: OIDC_CLIENT_ID
  secretEnv: OIDC_CLIENT_SECRET
  name: 'Dex Login Application'
  redirectURIs:
  - /oauth2/callback
expiry:
  idTokens: 1h
  refreshTokens:
    reuseInterval: 5s
routes:
- prefix: /jupyter/
  upstream: http://127.0.0.1:8888
  rewritePrefix: /
"#;

    #[test]
    fn accepts_dex_sections_and_resolves_env() {
        let env = MapEnv(vec![
            (
                "DEX_USER_PASSWORD",
                "$2y$12$4K/VkmDd1q1Orb3xAt82zu8gk7Ad6ReFR4LCP9UeYE90NLiN9Df72",
            ),
            ("OIDC_CLIENT_ID", "kubeflow-oidc-authservice"),
            ("OIDC_CLIENT_SECRET", "pUBnBOY80SnXgjibTYM9ZWNzY2xreNGQok"),
        ]);
        let f = parse(Path::new("t.yaml"), DEX).unwrap();
        let c = validate(f, &Overrides::default(), &env).unwrap();
        assert_eq!(c.static_users[0].user_id, "15841185641784");
        assert_eq!(c.static_clients[0].id, "kubeflow-oidc-authservice");
        assert_eq!(c.id_token_ttl, Duration::from_secs(3600));
        assert_eq!(c.refresh.reuse_interval, Duration::from_secs(5));
        assert!(c.skip_approval);
        assert_eq!(c.cookie_name, "authservice_session");
        assert_eq!(c.https_addr.to_string(), "0.0.0.0:8443");
        // missing env var is a clear error
        let f = parse(Path::new("t.yaml"), DEX).unwrap();
        let err = validate(f, &Overrides::default(), &MapEnv(vec![]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("DEX_USER_PASSWORD"), "{err}");
    }

    #[test]
    fn unknown_fields_name_their_path() {
        let err = parse(Path::new("c.yaml"), "staticClients:\n- id: a\n  secrett: x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("staticClients[0]") && err.contains("secrett"), "{err}");
        let err = parse(Path::new("c.yaml"), "session:\n  cookiename: x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("session") && err.contains("cookiename"), "{err}");
        let err = parse(Path::new("c.yaml"), "expiry:\n  idTokens: 10 parsecs\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expiry.idTokens"), "{err}");
    }

    #[test]
    fn secrets_encryption_loads_private_key_files_and_names_a_bad_one() {
        use kfsec_store::sealed::SealKey;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| dir.path().join(name).display().to_string();
        let (new, old) = (SealKey::from_bytes([1; 32]), SealKey::from_bytes([2; 32]));
        new.write_new(Path::new(&file("new"))).unwrap();
        old.write_new(Path::new(&file("old"))).unwrap();
        let load = |yaml: String| {
            parse(Path::new("c.yaml"), &yaml)
                .map_err(|e| e.to_string())
                .and_then(|f| validate(f, &Overrides::default(), &MapEnv(vec![])).map_err(|e| e.to_string()))
        };
        let c = load(format!(
            "secretsEncryption:\n  keyFile: {}\n  previousKeyFiles: [{}]\n",
            file("new"),
            file("old")
        ))
        .unwrap();
        let ring = c.secrets_encryption.unwrap();
        assert_eq!(ring.primary_id(), new.id());
        assert_eq!(ring.held(), format!("{}, {}", new.id(), old.id()));
        assert!(load(String::new()).unwrap().secrets_encryption.is_none());

        let err = load(format!(
            "secretsEncryption:\n  keyFile: {}\n  keyfile: x\n",
            file("new")
        ))
        .unwrap_err();
        assert!(err.contains("secretsEncryption") && err.contains("keyfile"), "{err}");
        let err = load("secretsEncryption: {}\n".into()).unwrap_err();
        assert!(err.contains("keyFile"), "{err}");
        let err = load(format!("secretsEncryption:\n  keyFile: {}\n", file("missing"))).unwrap_err();
        assert!(
            err.contains("secretsEncryption.keyFile") && err.contains("missing"),
            "{err}"
        );
        std::fs::write(file("short"), "c2hvcnQ=\n").unwrap();
        std::fs::set_permissions(file("short"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load(format!(
            "secretsEncryption:\n  keyFile: {}\n  previousKeyFiles: [{}]\n",
            file("new"),
            file("short")
        ))
        .unwrap_err();
        assert!(
            err.contains("secretsEncryption.previousKeyFiles[0]") && err.contains("5 bytes, not 32"),
            "{err}"
        );
        std::fs::set_permissions(file("old"), std::fs::Permissions::from_mode(0o604)).unwrap();
        let err = load(format!("secretsEncryption:\n  keyFile: {}\n", file("old"))).unwrap_err();
        assert!(err.contains("chmod 600") && err.contains(&file("old")), "{err}");
    }

    #[test]
    fn flags_override_file() {
        let f = parse(Path::new("c.yaml"), "httpsAddr: 0.0.0.0:1\ndataDir: /x\n").unwrap();
        let o = Overrides {
            https_addr: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let c = validate(f, &o, &MapEnv(vec![])).unwrap();
        assert_eq!(c.https_addr.to_string(), "127.0.0.1:2");
        assert_eq!(c.data_dir, PathBuf::from("/x"));
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "apiVersion: v2\n",
            "staticPasswords:\n- email: a@b.c\n  hash: plaintext\n",
            "staticClients:\n- id: a\n  redirectURIs: [/cb]\n",
            "routes:\n- prefix: /dex/x\n  upstream: http://h\n",
            "routes:\n- prefix: /oauth2/\n  upstream: http://h\n",
            "routes:\n- prefix: /x\n  upstream: ftp://h\n",
            "routes:\n- prefix: /a//b/\n  upstream: http://h\n",
            "routes:\n- prefix: /a/../b/\n  upstream: http://h\n",
            "routes:\n- prefix: /%61/\n  upstream: http://h\n",
            "routes:\n- prefix: /x/\n  upstream: http://h\n  forwardAuthorization: maybe\n",
            "tls:\n  certFile: a\n",
            "frontDoor:\n  maxConnections: 0\n",
            "frontDoor:\n  headerTimeout: 0s\n",
            "webhooks:\n  clientAuth: {}\n",
            "loginProtection:\n  window: 0s\n",
            "loginProtection:\n  maxStateLength: 5000\n",
        ] {
            // Refused when read (a value of the wrong type) or when validated.
            let refused = parse(Path::new("c.yaml"), bad)
                .map(|f| validate(f, &Overrides::default(), &MapEnv(vec![])).is_err())
                .unwrap_or(true);
            assert!(refused, "{bad}");
        }
    }

    #[test]
    fn webhooks_listen_on_loopback_and_listeners_have_limits_by_default() {
        let c = validate(ConfigFile::default(), &Overrides::default(), &MapEnv(vec![])).unwrap();
        assert_eq!(c.webhook_addr.to_string(), "127.0.0.1:9443");
        assert!(c.webhook_addr.ip().is_loopback());
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:9090");
        assert_eq!(c.front_door, ListenerLimits::FRONT_DOOR);
        assert_eq!(c.front_door.header_timeout, Duration::from_secs(30));
        assert_eq!(c.front_door.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.webhook_limits, ListenerLimits::WEBHOOKS);
        assert_eq!(c.webhook_client_auth, None);
    }

    #[test]
    fn the_kubeflow_manifests_dex_config_loads_unchanged() {
        let text = include_str!("../fixtures/dex-kubeflow-manifests.yaml");
        let f = parse(Path::new("config.yaml"), text).unwrap();
        let env = MapEnv(vec![
            (
                "DEX_USER_PASSWORD",
                "$2y$12$4K/VkmDd1q1Orb3xAt82zu8gk7Ad6ReFR4LCP9UeYE90NLiN9Df72",
            ),
            ("OIDC_CLIENT_ID", "kubeflow-oidc-authservice"),
            ("OIDC_CLIENT_SECRET", "pUBnBOY80SnXgjibTYM9ZWNzY2xreNGQok"),
        ]);
        let c = validate(f, &Overrides::default(), &env).unwrap();
        assert_eq!(c.issuer.as_deref(), Some("http://dex.auth.svc.cluster.local:5556/dex"));
        assert_eq!(c.static_users.len(), 1);
        assert_eq!(c.static_clients.len(), 1);
        assert!(c.skip_approval);
        // storage and web are acknowledged, each once, with the reason; nothing else is
        assert_eq!(c.acknowledged.len(), 2, "{:?}", c.acknowledged);
        assert!(
            c.acknowledged[0]
                .starts_with("Dex's `storage` (config, type) is accepted but not used: kfsec keeps its state")
        );
        assert!(
            c.acknowledged[1].starts_with("Dex's `web` (http) is accepted but not used: kfsec's listeners are its own")
        );
        // web.http opens nothing: the addresses are kfsec's defaults
        assert_eq!(c.https_addr.to_string(), "0.0.0.0:8443");
    }

    /// Every connector example of the README's "Sign in with your identity provider" section
    /// loads and opens (with its `$VAR`s set and its CA file paths pointing at a real CA), so the
    /// documentation cannot drift from what kfsec accepts.
    #[test]
    fn the_readmes_connector_examples_load() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("### Sign in with your identity provider").unwrap();
        let end = start + readme[start..].find("\n## ").unwrap();
        let section = &readme[start..end];
        let dir = tempfile::tempdir().unwrap();
        let authority = kfsec_pki::CertificateAuthority::load_or_create(
            dir.path(),
            kfsec_pki::KeyAlgorithm::EcdsaP256,
            &kfsec_types::SystemClock,
        )
        .unwrap();
        let ca = dir.path().join("example-ca.pem");
        std::fs::write(&ca, authority.cert_pem()).unwrap();
        let mut examples = 0;
        for block in section.split("```yaml\n").skip(1) {
            let yaml = block.split("```").next().unwrap();
            if !yaml.starts_with("- type:") {
                continue;
            }
            examples += 1;
            let yaml = yaml
                .replace("/etc/kfsec/keycloak-ca.pem", &ca.display().to_string())
                .replace("/etc/kfsec/ldap-ca.pem", &ca.display().to_string());
            let text = format!("issuer: https://kubeflow.example.com/dex\nconnectors:\n{yaml}");
            let f = parse(Path::new("readme.yaml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            let env = MapEnv(vec![
                ("KEYCLOAK_CLIENT_SECRET", "s"),
                ("COGNITO_CLIENT_ID", "c"),
                ("COGNITO_CLIENT_SECRET", "s"),
                ("ENTRA_CLIENT_ID", "c"),
                ("ENTRA_CLIENT_SECRET", "s"),
                ("LDAP_BIND_PW", "p"),
            ]);
            let c = validate(f, &Overrides::default(), &env).unwrap_or_else(|e| panic!("{e}\n{text}"));
            c.open_connectors("https://kubeflow.example.com/dex", Arc::new(kfsec_types::SystemClock))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
        }
        assert_eq!(examples, 4, "Keycloak, Cognito, Entra ID and LDAP");
    }

    /// The README's "Configuration reference" block is a config kfsec accepts as written: every
    /// key it shows exists, with the value type shown (tests/readme/readme_test.py runs the
    /// README's commands; this is its check for the reference).
    #[test]
    fn the_readmes_configuration_reference_loads() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("## Configuration reference").unwrap();
        let yaml = readme[start..]
            .split("```yaml\n")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        let f = parse(Path::new("kfsec.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
        let c = validate(f, &Overrides::default(), &MapEnv(vec![])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.issuer.as_deref(), Some("https://kubeflow.example.com/dex"));
        assert!(c.skip_approval);
    }

    #[test]
    fn the_charmed_kubeflow_dex_config_loads_unchanged() {
        let text = include_str!("../fixtures/dex-charmed-kubeflow.yaml");
        let f = parse(Path::new("config.docker.yaml"), text).unwrap();
        let env = MapEnv(vec![
            ("MICROSOFT_APPLICATION_ID", "0e7c1c6e-0000-4000-8000-00000000c0de"),
            ("MICROSOFT_CLIENT_SECRET", "ms-client-secret-value"),
        ]);
        let c = validate(f, &Overrides::default(), &env).unwrap();
        let issuer = "https://my-charmed-kubeflow.uksouth.cloudapp.azure.com/dex";
        assert_eq!(c.issuer.as_deref(), Some(issuer));
        // The static user `admin` (a bare name, as the charm writes it) and the relation's client.
        assert_eq!(c.static_users[0].email, "admin");
        assert_eq!(c.static_users[0].user_id, "5c0b8ff9-6b11-4a3a-9c8f-2f1e2f0b7a6e");
        assert_eq!(c.static_clients[0].id, "authservice-oidc");
        assert!(c.skip_approval);
        // storage, telemetry and web: one line each; nothing else is unused.
        let named: Vec<_> = c
            .acknowledged
            .iter()
            .map(|a| a.split(' ').nth(1).unwrap_or(""))
            .collect();
        assert_eq!(named, ["`storage`", "`web`", "`telemetry`"], "{:?}", c.acknowledged);
        // The microsoft connector, then the password database (enablePasswordDB: true).
        assert!(c.federation.password_db);
        assert_eq!(
            c.federation.connectors[0].config["clientSecret"],
            "ms-client-secret-value"
        );
        let list = c.open_connectors(issuer, Arc::new(kfsec_types::SystemClock)).unwrap();
        let ids: Vec<_> = list.iter().map(|c| (c.id.as_str(), c.name.as_str())).collect();
        assert_eq!(ids, [("microsoft", "Microsoft"), ("local", "Email")]);
        assert!(c.federation.warnings.is_empty(), "{:?}", c.federation.warnings);
        assert!(!format!("{c:?}").contains("ms-client-secret-value"));
    }

    #[test]
    fn static_users_named_like_the_charmed_kubeflow_admin_load_as_in_dex() {
        let hash = "$2y$12$4K/VkmDd1q1Orb3xAt82zu8gk7Ad6ReFR4LCP9UeYE90NLiN9Df72";
        let yaml = |email: &str| {
            format!("staticPasswords:\n- email: {email:?}\n  hash: {hash:?}\n  username: admin\n  userID: \"b1d2c3\"\n")
        };
        let f = parse(Path::new("c.yaml"), &yaml("admin")).unwrap();
        let c = validate(f, &Overrides::default(), &MapEnv(vec![])).unwrap();
        assert_eq!(c.static_users[0].email, "admin");
        for bad in ["", "ad min", "ad/min", "a\tb"] {
            let f = parse(Path::new("c.yaml"), &yaml(bad)).unwrap();
            let e = validate(f, &Overrides::default(), &MapEnv(vec![]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("staticPasswords[0]") && e.contains("not a usable login name"),
                "{bad:?}: {e}"
            );
        }
        for reserved in ["system:masters", "system:serviceaccount:kubeflow:pipeline-runner"] {
            let f = parse(Path::new("c.yaml"), &yaml(reserved)).unwrap();
            let e = validate(f, &Overrides::default(), &MapEnv(vec![]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("system: prefix"), "{reserved}: {e}");
        }
    }

    #[test]
    fn implicit_response_types_are_refused_and_the_chooser_keys_applied() {
        for t in ["token", "id_token", "code id_token"] {
            let f = parse(
                Path::new("c.yaml"),
                &format!("oauth2:\n  responseTypes: [code, {t:?}]\n"),
            )
            .unwrap();
            let e = validate(f, &Overrides::default(), &MapEnv(vec![]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("oauth2.responseTypes") && e.contains("authorization code flow"),
                "{e}"
            );
        }
        let f = parse(
            Path::new("c.yaml"),
            "oauth2:\n  responseTypes: [code]\n  alwaysShowLoginScreen: true\n  passwordConnector: local\n",
        )
        .unwrap();
        let c = validate(f, &Overrides::default(), &MapEnv(vec![])).unwrap();
        // Applied now, so not named as unused.
        assert!(c.acknowledged.is_empty(), "{:?}", c.acknowledged);
        assert!(c.federation.always_show_login_screen);
        assert_eq!(c.federation.password_connector.as_deref(), Some("local"));
    }

    #[test]
    fn dex_sections_must_be_mappings_and_other_top_level_keys_stay_refused() {
        for section in ["storage", "web", "telemetry", "grpc", "frontend"] {
            let f = parse(Path::new("c.yaml"), &format!("{section}: 5\n")).unwrap();
            let e = validate(f, &Overrides::default(), &MapEnv(vec![]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(section) && e.contains("mapping"), "{e}");
        }
        // `frontend` is read (branding); an unknown key in it is refused, not acknowledged.
        let f = parse(Path::new("c.yaml"), "frontend: {a: 1}\n").unwrap();
        let e = validate(f, &Overrides::default(), &MapEnv(vec![]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("frontend") && e.contains("unknown field `a`"), "{e}");
        for section in ["storage", "web", "telemetry", "grpc"] {
            let f = parse(Path::new("c.yaml"), &format!("{section}: {{a: 1}}\n")).unwrap();
            let c = validate(f, &Overrides::default(), &MapEnv(vec![])).unwrap();
            assert!(
                c.acknowledged[0].contains(&format!("`{section}` (a)")),
                "{:?}",
                c.acknowledged
            );
        }
        assert!(parse(Path::new("c.yaml"), "connectorz: []\n").is_err());
    }

    #[test]
    fn webhook_settings_config_maps() {
        let c = validate(ConfigFile::default(), &Overrides::default(), &MapEnv(vec![])).unwrap();
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(c.webhook_settings.katib, pair("kubeflow", "katib-config"));
        assert_eq!(c.webhook_settings.kserve, pair("kubeflow", "inferenceservice-config"));
        let f = parse(
            Path::new("c.yaml"),
            "webhooks:\n  katibConfigMap: katib/katib-config\n  kserveConfigMap: kserve/inferenceservice-config\n",
        )
        .unwrap();
        let c = validate(f, &Overrides::default(), &MapEnv(vec![])).unwrap();
        assert_eq!(c.webhook_settings.katib, pair("katib", "katib-config"));
        assert_eq!(c.webhook_settings.kserve, pair("kserve", "inferenceservice-config"));
        for bad in [
            "katib-config",
            "Kubeflow/katib-config",
            "kubeflow/",
            "/x",
            "a/b/c",
            "a/B",
        ] {
            let f = parse(Path::new("c.yaml"), &format!("webhooks:\n  katibConfigMap: {bad:?}\n")).unwrap();
            let e = validate(f, &Overrides::default(), &MapEnv(vec![]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("webhooks.katibConfigMap"), "{bad}: {e}");
        }
    }

    #[test]
    fn front_door_and_webhook_blocks() {
        let f = parse(
            Path::new("c.yaml"),
            "frontDoor:\n  headerTimeout: 5s\n  idleTimeout: 1m\n  maxConnections: 100\n  maxConnectionsPerAddress: 10\nwebhooks:\n  maxConnections: 7\n  clientAuth:\n    caFile: /etc/ca.pem\n    allowedNames: [kube-apiserver]\n",
        )
        .unwrap();
        let c = validate(f, &Overrides::default(), &MapEnv(vec![])).unwrap();
        assert_eq!(c.front_door.header_timeout, Duration::from_secs(5));
        assert_eq!(c.front_door.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.front_door.max_connections, 100);
        assert_eq!(c.front_door.max_connections_per_address, 10);
        assert_eq!(c.webhook_limits.max_connections, 7);
        assert_eq!(c.webhook_limits.idle_timeout, Duration::from_secs(60));
        let auth = c.webhook_client_auth.unwrap();
        assert_eq!(auth.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(auth.allowed_names, ["kube-apiserver"]);
        let err = parse(Path::new("c.yaml"), "frontDoor:\n  idleTimeOut: 5s\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("frontDoor") && err.contains("idleTimeOut"), "{err}");
    }

    /// `yaml` parsed and validated, with no overrides or environment.
    fn validated(yaml: &str) -> Result<Config, ConfigError> {
        validate(
            parse(Path::new("c.yaml"), yaml).unwrap(),
            &Overrides::default(),
            &MapEnv(vec![]),
        )
    }

    #[test]
    fn session_cookie_names_are_cookie_tokens_and_not_kfsecs_other_cookies() {
        let config = |name: &str| {
            validated(&format!(
                "session:\n  cookieName: {}\n",
                serde_json::to_string(name).unwrap()
            ))
        };
        for good in [
            "authservice_session",
            "__Host-authservice_session",
            "__Secure-s",
            "_oauth2_proxy",
            "a!#$%&'*+-.^_`|~",
        ] {
            assert_eq!(config(good).unwrap().cookie_name, good);
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            "a b",
            "a;b",
            "a=b",
            "a,b",
            "a\"b",
            "sess\u{e9}",
            "a\tb",
            "(s)",
            long.as_str(),
        ] {
            let e = config(bad).unwrap_err().to_string();
            assert!(e.contains("is not a cookie name"), "{bad:?}: {e}");
        }
        // (YAML delivers a DEL only escaped)
        let e = validated("session:\n  cookieName: \"a\\x7f\"\n");
        assert!(e.unwrap_err().to_string().contains("is not a cookie name"));
        for own in [
            "__Host-oidc_state_csrf",
            "__Host-kfsec_upstream_login",
            "__Host-kfsec_device_login",
            "__Host-OIDC_State_CSRF",
            // (their `__Host-` twins are)
            "oidc_state_csrf",
            "kfsec_upstream_login",
            "__Secure-oidc_state_csrf",
        ] {
            let e = config(own).unwrap_err().to_string();
            assert!(e.contains("another of kfsec's cookies"), "{own}: {e}");
        }
        for odd in ["__host-authservice_session", "__HOST-s", "__secure-s"] {
            let e = config(odd).unwrap_err().to_string();
            assert!(e.contains("spell the prefix"), "{odd}: {e}");
        }
    }

    #[test]
    fn the_upstream_timeout_defaults_to_nginxs_and_has_no_off() {
        assert_eq!(validated("").unwrap().upstream_timeout, Duration::from_secs(60));
        assert_eq!(
            validated("frontDoor:\n  upstreamTimeout: 10m\n")
                .unwrap()
                .upstream_timeout,
            Duration::from_secs(600)
        );
        for bad in ["0s", "50ms"] {
            let e = validated(&format!("frontDoor:\n  upstreamTimeout: {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("frontDoor.upstreamTimeout must be at least 100ms"),
                "{bad}: {e}"
            );
        }
        assert_eq!(validated("").unwrap().tunnel_idle_timeout, Duration::from_secs(3600));
        assert_eq!(
            validated("frontDoor:\n  tunnelIdleTimeout: 90s\n")
                .unwrap()
                .tunnel_idle_timeout,
            Duration::from_secs(90)
        );
        for (key, bad) in [
            ("upstreamTimeout", "25h"),
            ("idleTimeout", "1000000d"),
            ("tunnelIdleTimeout", "2d"),
        ] {
            let e = validated(&format!("frontDoor:\n  {key}: {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("frontDoor.{key} must be at most 24h")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges_that_do_not_trust_everyone() {
        let t = validated("trustedProxies: [10.0.0.5, 10.244.0.0/16, \"fd00::/8\"]\n")
            .unwrap()
            .trusted_proxies;
        for ip in ["10.0.0.5", "10.244.3.7", "fd00::1"] {
            assert!(t.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(!t.contains("10.0.0.6".parse().unwrap()));
        for (bad, why) in [
            ("0.0.0.0/0", "trusts every address"),
            ("10.244.0.1/16", "the range is 10.244.0.0/16"),
            ("10.0.0.0/40", "at most 32"),
            ("proxy.internal", "not an IP address or a CIDR range"),
        ] {
            let e = validated(&format!("trustedProxies: [\"{bad}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("trustedProxies") && e.contains(why), "{bad}: {e}");
        }
    }
}
