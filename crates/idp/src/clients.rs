//! OAuth2 clients: static ones from the config file, managed ones (`kfsec client …`) in the store,
//! and kfsec's own gatekeeper.
//!
//! Invariants: redirect URIs match registrations exactly; managed client secrets are stored only
//! as salted SHA-256; secret checks are constant-time; the gatekeeper's client cannot be used
//! over HTTP at all (its codes are redeemed in-process).

use std::collections::HashMap;
use std::sync::Arc;

use kfsec_store::{Store, StoreError};
use kfsec_types::Rng;
use serde::{Deserialize, Serialize};

use crate::IdpError;
use crate::secret::{SaltedDigest, ct_eq, random_alnum};

pub(crate) const PREFIX: &str = "/kfsec/idp/clients/";

/// How a client proves itself at `/token`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientAuth {
    /// No secret (PKCE protects the code).
    Public,
    /// A secret from the config file, compared in constant time.
    Static(String),
    /// A generated secret, stored salted.
    Digest(SaltedDigest),
    /// kfsec's own gatekeeper: codes are redeemed in-process only.
    InProcess,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Public => "Public",
            Self::Static(_) => "Static(..)",
            Self::Digest(_) => "Digest(..)",
            Self::InProcess => "InProcess",
        })
    }
}

/// A registered client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    /// Client id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Exact redirect URIs.
    #[serde(rename = "redirectURIs")]
    pub redirect_uris: Vec<String>,
    /// Authentication.
    pub auth: ClientAuth,
}

impl Client {
    /// Whether `presented` authenticates this client over HTTP.
    pub fn authenticate(&self, presented: Option<&str>) -> bool {
        match (&self.auth, presented) {
            (ClientAuth::Public, _) => true,
            (ClientAuth::Static(s), Some(p)) => ct_eq(s.as_bytes(), p.as_bytes()),
            (ClientAuth::Digest(d), Some(p)) => d.verify(p),
            _ => false,
        }
    }
    /// Whether `uri` is registered exactly.
    pub fn redirect_allowed(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|r| r == uri)
    }
}

/// What `kfsec client list` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClientSummary {
    /// Client id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Redirect URIs.
    #[serde(rename = "redirectURIs")]
    pub redirect_uris: Vec<String>,
    /// Whether it is public.
    pub public: bool,
    /// `config`, `store` or `builtin`.
    pub source: String,
}

/// A newly created client with its secret, shown once.
#[derive(Serialize, Deserialize)]
pub struct NewClient {
    /// Client id.
    pub id: String,
    /// The generated secret (absent for public clients).
    pub secret: Option<String>,
}

/// All clients.
pub struct ClientRegistry {
    store: Arc<dyn Store>,
    fixed: HashMap<String, (Client, &'static str)>,
}

impl ClientRegistry {
    /// A registry with config and built-in clients.
    pub fn new(store: Arc<dyn Store>, static_clients: Vec<Client>, builtin: Vec<Client>) -> Self {
        let mut fixed = HashMap::new();
        for c in static_clients {
            fixed.insert(c.id.clone(), (c, "config"));
        }
        for c in builtin {
            fixed.insert(c.id.clone(), (c, "builtin"));
        }
        Self { store, fixed }
    }

    /// Looks a client up.
    pub async fn get(&self, id: &str) -> Result<Option<Client>, IdpError> {
        if let Some((c, _)) = self.fixed.get(id) {
            return Ok(Some(c.clone()));
        }
        if id.is_empty() || id.contains('/') {
            return Ok(None);
        }
        match self.store.get(&format!("{PREFIX}{id}")).await? {
            Some(kv) => Ok(Some(serde_json::from_slice(&kv.value)?)),
            None => Ok(None),
        }
    }

    /// Registers a managed client; returns its secret once.
    pub async fn add(
        &self,
        rng: &dyn Rng,
        id: &str,
        name: Option<String>,
        redirect_uris: Vec<String>,
        public: bool,
    ) -> Result<NewClient, IdpError> {
        if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
            return Err(IdpError::Invalid(
                "client id must be 1-128 characters of [A-Za-z0-9-_.:]".into(),
            ));
        }
        if self.fixed.contains_key(id) {
            return Err(IdpError::Conflict(format!("client {id} is defined in the config file")));
        }
        if redirect_uris.is_empty() {
            return Err(IdpError::Invalid("at least one --redirect-uri is required".into()));
        }
        let secret = (!public).then(|| random_alnum(rng, 30));
        let auth = secret
            .as_deref()
            .map_or(ClientAuth::Public, |s| ClientAuth::Digest(SaltedDigest::new(rng, s)));
        let client = Client {
            id: id.to_owned(),
            name: name.unwrap_or_else(|| id.to_owned()),
            redirect_uris,
            auth,
        };
        match self
            .store
            .create(&format!("{PREFIX}{id}"), serde_json::to_vec(&client)?, None)
            .await
        {
            Ok(_) => Ok(NewClient {
                id: id.to_owned(),
                secret,
            }),
            Err(StoreError::AlreadyExists(_)) => Err(IdpError::Conflict(format!("client {id} already exists"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a managed client.
    pub async fn delete(&self, id: &str) -> Result<(), IdpError> {
        if self.fixed.contains_key(id) {
            return Err(IdpError::Conflict(format!("client {id} is defined in the config file")));
        }
        match self.store.delete(&format!("{PREFIX}{id}"), None).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound(_)) => Err(IdpError::NotFound(format!("client {id}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// All clients.
    pub async fn list(&self) -> Result<Vec<ClientSummary>, IdpError> {
        let mut out: Vec<ClientSummary> = self.fixed.values().map(|(c, src)| summary(c, src)).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        for kv in &kfsec_store::list_all(self.store.as_ref(), PREFIX).await?.items {
            out.push(summary(&serde_json::from_slice(&kv.value)?, "store"));
        }
        Ok(out)
    }
}

fn summary(c: &Client, source: &str) -> ClientSummary {
    ClientSummary {
        id: c.id.clone(),
        name: c.name.clone(),
        redirect_uris: c.redirect_uris.clone(),
        public: c.auth == ClientAuth::Public,
        source: source.into(),
    }
}
