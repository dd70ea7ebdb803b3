//! kfsec's OIDC identity provider, compatible with Dex: discovery, JWKS, the authorization code
//! flow with PKCE, the local password connector, refresh tokens and userinfo, under the issuer's
//! path (`/dex` by default).
//!
//! Invariants: codes are single-use and short-lived; ID tokens are RS256 and verified only
//! against our own published keys; redirect URIs match exactly; every password check runs
//! through the lockout gate; secrets, codes and tokens are stored only as digests.

mod audit;
pub mod authn;
pub mod clients;
pub mod connector;
pub mod cookies;
mod device;
mod error;
mod flow;
pub mod jwt;
pub mod keys;
pub mod lockout;
pub mod pages;
pub mod revocation;
pub mod secret;
pub mod serviceaccount;
#[cfg(test)]
mod test_support;
mod throttle;
mod tokens;
pub mod users;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use kfsec_store::Store;
use kfsec_types::{Clock, Rng};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub use authn::{Authenticated, Authenticator, CredentialKind, Refusal, Surface};
pub use clients::{Client, ClientAuth, ClientRegistry};
pub use error::{IdpError, OAuthCode, OAuthError};
pub use pages::{error_page, home_page};
pub use tokens::{Claims, SessionLogin, SessionToken, TokenResponse, VerifyError, delete_refresh_tokens, dex_subject};
pub use users::{User, UserDirectory};

use keys::KeyManager;
use lockout::{Lockout, LockoutPolicy};

/// The IdP's store prefixes holding secret material, sealed at rest when `secretsEncryption` is
/// on: signing keys, the authorization-request key, password hashes, client secret digests,
/// and the records that carry tokens or an upstream's credentials (`connector_data`):
/// approval records, codes, refresh tokens, device-flow grants.
pub const SECRET_PREFIXES: &[&str] = &[
    keys::KEYS_KEY,
    flow::AUTHREQ_KEY,
    users::PREFIX,
    clients::PREFIX,
    flow::AUTHREQ_PREFIX,
    tokens::CODE_PREFIX,
    tokens::REFRESH_PREFIX,
    device::DEVICE_PREFIX,
];

/// The address a request came from, as the front door determined it (peer address, or the
/// `X-Forwarded-For` entry of a trusted proxy). Inserted as a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Refresh token lifetimes.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    /// How long a rotated-out token still answers with its successor.
    pub reuse_interval: Duration,
    /// Idle lifetime.
    pub idle: Duration,
    /// Absolute lifetime.
    pub absolute: Duration,
}

/// Validated IdP settings.
#[derive(Debug, Clone)]
pub struct IdpSettings {
    /// Issuer URL without a trailing slash, e.g. `https://kf.example.com/dex`.
    pub issuer: String,
    /// ID and access token lifetime.
    pub id_token_ttl: Duration,
    /// Signing key rotation period.
    pub signing_key_rotation: Duration,
    /// Authorization request lifetime.
    pub auth_request_ttl: Duration,
    /// Refresh token policy.
    pub refresh: RefreshPolicy,
    /// Skip the approval screen for every client.
    pub skip_approval: bool,
    /// Users from the config file.
    pub static_users: Vec<User>,
    /// Clients from the config file.
    pub static_clients: Vec<Client>,
    /// Built-in clients (the gatekeeper).
    pub builtin_clients: Vec<Client>,
    /// Brute-force protection.
    pub lockout: LockoutPolicy,
    /// Client ids whose ID tokens are accepted as bearer tokens, besides the built-in
    /// gatekeeper and CLI clients (config `bearerAudiences`).
    pub bearer_audiences: Vec<String>,
    /// The connectors, in chooser order: the configured ones, then `local` when
    /// `enablePasswordDB` is on (as Dex appends it).
    pub connectors: Vec<connector::Connector>,
    /// Show the chooser even with one connector (`oauth2.alwaysShowLoginScreen`).
    pub always_show_login_screen: bool,
    /// The connector the resource-owner password grant checks (`oauth2.passwordConnector`).
    pub password_connector: Option<String>,
    /// How the login pages look (Dex's `frontend:`).
    pub branding: Branding,
}

/// The login pages' branding (Dex's `frontend.issuer`, `logoURL`, `theme`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branding {
    /// The name in "Log in to {issuer}" (Dex's `frontend.issuer`, default `kfsec`).
    pub issuer_name: String,
    /// A logo shown above the forms (`frontend.logoURL`).
    pub logo_url: Option<String>,
    /// `light` (default) or `dark` (`frontend.theme`).
    pub theme: String,
}

impl Default for Branding {
    fn default() -> Self {
        Self {
            issuer_name: "kfsec".into(),
            logo_url: None,
            theme: "light".into(),
        }
    }
}

impl IdpSettings {
    /// The path part of the issuer (`/dex`), under which the IdP is mounted.
    pub fn issuer_path(&self) -> String {
        let rest = self.issuer.split_once("://").map_or(self.issuer.as_str(), |(_, r)| r);
        rest.find('/')
            .map_or_else(String::new, |i| rest[i..].trim_end_matches('/').to_owned())
    }
}

/// Login metrics.
#[derive(Clone, Default)]
struct Metrics {
    logins: Family<Vec<(String, String)>, Counter>,
    lockouts: Counter,
    verifications: Counter,
    tokens: Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    /// Counts one login at `connector` (a configured connector id) with `outcome` (`success`,
    /// `failure`, `locked`, `unavailable`, `error`).
    pub(crate) fn login(&self, connector: &str, outcome: &str) {
        self.logins
            .get_or_create(&vec![
                ("connector".to_owned(), connector.to_owned()),
                ("outcome".to_owned(), outcome.to_owned()),
            ])
            .inc();
    }

    /// Counts one token response of the token endpoint by its (known) grant type.
    pub(crate) fn token_issued(&self, grant_type: &str) {
        self.tokens
            .get_or_create(&vec![("grant_type".to_owned(), grant_type.to_owned())])
            .inc();
    }
}

/// The identity provider.
pub struct Idp {
    settings: IdpSettings,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    keys: Arc<KeyManager>,
    users: Arc<UserDirectory>,
    clients: Arc<ClientRegistry>,
    lockout: Lockout,
    metrics: Metrics,
    auth_key: flow::AuthRequestKey,
    device_limits: device::DeviceLimits,
    epochs: Arc<revocation::Epochs>,
    service_accounts: Arc<dyn serviceaccount::ServiceAccountLookup>,
    refresh_flights: tokens::Flights,
    /// Upstream callbacks per client address (each may cost a call to the upstream's token
    /// endpoint with kfsec's client credentials).
    callback_limits: parking_lot::Mutex<throttle::KeyedCounter>,
}

impl Idp {
    /// Builds the IdP, loading or creating signing keys, and registers its metrics.
    pub async fn new(
        settings: IdpSettings,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
        registry: &mut Registry,
        service_accounts: Arc<dyn serviceaccount::ServiceAccountLookup>,
    ) -> Result<Arc<Self>, IdpError> {
        let keys = KeyManager::open(
            store.clone(),
            clock.clone(),
            rng.clone(),
            settings.signing_key_rotation,
            settings.id_token_ttl,
        )
        .await?;
        let users = Arc::new(UserDirectory::new(store.clone(), settings.static_users.clone())?);
        let clients = Arc::new(ClientRegistry::new(
            store.clone(),
            settings.static_clients.clone(),
            settings.builtin_clients.clone(),
        ));
        let lockout = Lockout::new(settings.lockout.clone(), clock.clone(), Some(store.clone()));
        lockout.restore().await?;
        let auth_key = flow::AuthRequestKey::load(store.as_ref(), rng.as_ref()).await?;
        let device_limits = device::DeviceLimits::load(&settings.lockout, store.as_ref(), clock.now()).await?;
        let epochs = revocation::Epochs::new(store.clone(), rng.clone());
        let metrics = Metrics::default();
        registry.register(
            "kfsec_logins",
            "Logins by connector (configured connector id) and outcome (success, failure, locked, unavailable, error)",
            metrics.logins.clone(),
        );
        registry.register(
            "kfsec_tokens_issued",
            "Token responses of the token endpoint by grant type",
            metrics.tokens.clone(),
        );
        registry.register(
            "kfsec_lockouts",
            "Lockouts started by failed logins",
            metrics.lockouts.clone(),
        );
        registry.register(
            "kfsec_password_verifications",
            "Passwords checked (bcrypt runs) by the login form",
            metrics.verifications.clone(),
        );
        Ok(Arc::new(Self {
            settings,
            store,
            clock,
            rng,
            keys,
            users,
            clients,
            lockout,
            metrics,
            auth_key,
            device_limits,
            epochs,
            service_accounts,
            refresh_flights: tokens::Flights::default(),
            callback_limits: parking_lot::Mutex::new(throttle::KeyedCounter::new(
                flow::CALLBACKS_PER_ADDRESS,
                flow::CALLBACK_WINDOW,
                10_000,
            )),
        }))
    }

    /// The login lockout (shared by every replica over the store).
    pub fn lockout(&self) -> &Lockout {
        &self.lockout
    }

    /// The settings.
    pub fn settings(&self) -> &IdpSettings {
        &self.settings
    }
    /// The user directory (admin commands).
    pub fn users(&self) -> &Arc<UserDirectory> {
        &self.users
    }
    /// The client registry (admin commands).
    pub fn clients(&self) -> &Arc<ClientRegistry> {
        &self.clients
    }
    /// The random source.
    pub fn rng(&self) -> &dyn Rng {
        self.rng.as_ref()
    }
    /// The signing keys.
    pub fn keys(&self) -> &KeyManager {
        &self.keys
    }
    /// The users' revocation epochs.
    pub fn epochs(&self) -> &Arc<revocation::Epochs> {
        &self.epochs
    }
    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
    /// Where service accounts are looked up.
    pub fn service_accounts(&self) -> &dyn serviceaccount::ServiceAccountLookup {
        self.service_accounts.as_ref()
    }

    /// Keeps the signing keys current every `every` until the task is dropped: rotates when due
    /// while `leading` says this replica leads; otherwise only re-reads the leader's rotations.
    pub fn spawn_rotation(
        self: &Arc<Self>,
        every: Duration,
        leading: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                // Only the leader rotates (a compare-and-swap, so a second leader for a moment
                // changes nothing); every replica re-reads what it wrote.
                let done = if *leading.borrow() {
                    me.keys.tick().await
                } else {
                    me.keys.reload().await
                };
                if let Err(e) = done {
                    tracing::warn!(error = %e, "signing key maintenance failed");
                }
            }
        })
    }
}
