//! The local password database: static users from the config file plus users managed with
//! `kfsec user …`, stored in the store.
//!
//! Invariants: passwords are stored only as bcrypt hashes (cost 12 for new ones); every password
//! check costs the same bcrypt work — that of the most expensive configured hash (at least 12,
//! at most 14) — whether the account is unknown, cheaply hashed or expensively hashed, so answer
//! times do not reveal which accounts exist; static hashes cheaper than cost 12 are warned about
//! at start; emails match case-insensitively.

use std::collections::HashMap;
use std::sync::Arc;

use kfsec_store::{Store, StoreError};
use kfsec_types::{Rng, random_array};
use serde::{Deserialize, Serialize};

use crate::IdpError;

pub(crate) const PREFIX: &str = "/kfsec/idp/users/";
/// bcrypt cost for new hashes (Dex recommends 12).
pub const BCRYPT_COST: u32 = 12;
const DUMMY_HASH: &str = "$2b$12$MDP2xh3kgw9JK0BTDD/7QOhK.RnXxrW7fY4ZAWp/4eNN717b8wbgu";
/// The highest cost every check is padded to (a costlier static hash makes only its own user's
/// checks slower).
const MAX_CHECK_COST: u32 = 14;

/// The cost field of a bcrypt hash (`$2b$12$…` → 12).
fn bcrypt_cost(hash: &str) -> Option<u32> {
    let mut parts = hash.split('$');
    let (empty, version, cost) = (parts.next()?, parts.next()?, parts.next()?);
    if !empty.is_empty() || !matches!(version, "2a" | "2b" | "2x" | "2y") || cost.len() != 2 {
        return None;
    }
    cost.parse().ok().filter(|c| (4..=31).contains(c))
}

/// A hash of a discarded password at `cost`: checking against it costs what a real check at
/// that cost does (bcrypt's work depends only on the cost), and never matches.
fn dummy_hash(cost: u32) -> String {
    format!("$2b${cost:02}${}", DUMMY_HASH.get(7..).unwrap_or_default())
}

/// Checks `password` against `hash`, then pads the work to `target`: 2^target = 2^c +
/// Σ_{k=c}^{target-1} 2^k, so a cost-`c` hash answers as slowly as a cost-`target` one.
fn verify_padded(password: &[u8], hash: &str, target: u32) -> bool {
    let ok = bcrypt::verify(password, hash).unwrap_or(false);
    match bcrypt_cost(hash) {
        Some(c) => {
            for k in c..target {
                let _ = bcrypt::verify(password, &dummy_hash(k));
            }
        }
        None => {
            let _ = bcrypt::verify(password, &dummy_hash(target));
        }
    }
    ok
}

/// A local user.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// Login email.
    pub email: String,
    /// User name (`preferred_username`, `name`).
    pub username: String,
    /// Stable id (basis of `sub`).
    #[serde(rename = "userID")]
    pub user_id: String,
    /// bcrypt hash.
    pub hash: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("email", &self.email)
            .field("username", &self.username)
            .field("user_id", &self.user_id)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// What `kfsec user list` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UserSummary {
    /// Login email.
    pub email: String,
    /// User name.
    pub username: String,
    /// Stable id.
    #[serde(rename = "userID")]
    pub user_id: String,
    /// Groups.
    pub groups: Vec<String>,
    /// `config` for static users, `store` for managed ones.
    pub source: String,
}

/// Hashes a password with bcrypt at [`BCRYPT_COST`], refusing passwords bcrypt would truncate.
pub fn hash_password(password: &str) -> Result<String, IdpError> {
    validate_password(password)?;
    bcrypt::non_truncating_hash(password, BCRYPT_COST).map_err(|e| IdpError::Invalid(e.to_string()))
}

/// Checks length rules: 8 to 72 bytes.
pub fn validate_password(password: &str) -> Result<(), IdpError> {
    if password.len() < 8 {
        return Err(IdpError::Invalid("password must be at least 8 characters".into()));
    }
    if password.len() > 72 {
        return Err(IdpError::Invalid(
            "password must be at most 72 bytes (bcrypt's limit)".into(),
        ));
    }
    Ok(())
}

fn key(email: &str) -> String {
    format!("{PREFIX}{}", email.to_ascii_lowercase())
}

/// Users: static ones from config, managed ones in the store.
pub struct UserDirectory {
    store: Arc<dyn Store>,
    static_users: HashMap<String, User>,
    dummy_hash: String,
    check_cost: u32,
}

impl UserDirectory {
    /// A directory over `store` with `static_users` from the config file.
    pub fn new(store: Arc<dyn Store>, static_users: Vec<User>) -> Result<Self, IdpError> {
        // Every check costs as much as the costliest configured hash (managed users get
        // BCRYPT_COST): unknown emails check against a dummy of that cost, cheaper hashes are
        // padded up to it.
        let mut check_cost = BCRYPT_COST;
        for u in &static_users {
            match bcrypt_cost(&u.hash) {
                Some(c) if c < BCRYPT_COST => tracing::warn!(
                    email = %u.email,
                    cost = c,
                    "static password hash is cheaper than bcrypt cost {BCRYPT_COST}: fast to crack if the config leaks; \
                regenerate it with `kfsec hash-password` (logins are padded to cost {BCRYPT_COST} meanwhile)"
                ),
                Some(c) => check_cost = check_cost.max(c.min(MAX_CHECK_COST)),
                None => {
                    tracing::warn!(email = %u.email, "static password hash is not a bcrypt hash; this user cannot log in")
                }
            }
        }
        let dummy_hash = dummy_hash(check_cost);
        let static_users = static_users
            .into_iter()
            .map(|u| (u.email.to_ascii_lowercase(), u))
            .collect();
        Ok(Self {
            store,
            static_users,
            dummy_hash,
            check_cost,
        })
    }

    /// Looks a user up by email.
    pub async fn find(&self, email: &str) -> Result<Option<User>, IdpError> {
        if let Some(u) = self.static_users.get(&email.to_ascii_lowercase()) {
            return Ok(Some(u.clone()));
        }
        match self.store.get(&key(email)).await? {
            Some(kv) => Ok(Some(serde_json::from_slice(&kv.value)?)),
            None => Ok(None),
        }
    }

    /// Verifies a password; `None` on any failure. bcrypt runs off the async threads.
    pub async fn verify(&self, email: &str, password: &str) -> Result<Option<User>, IdpError> {
        let user = self.find(email).await?;
        let hash = user
            .as_ref()
            .map_or_else(|| self.dummy_hash.clone(), |u| u.hash.clone());
        let password = zeroize::Zeroizing::new(password.to_owned());
        let target = self.check_cost;
        let ok = tokio::task::spawn_blocking(move || verify_padded(password.as_bytes(), &hash, target))
            .await
            .map_err(|e| IdpError::Internal(e.to_string()))?;
        Ok(user.filter(|_| ok))
    }

    /// Adds a managed user.
    pub async fn add(
        &self,
        rng: &dyn Rng,
        email: &str,
        username: Option<String>,
        groups: Vec<String>,
        password: &str,
    ) -> Result<UserSummary, IdpError> {
        validate_email(email)?;
        if self.static_users.contains_key(&email.to_ascii_lowercase()) {
            return Err(IdpError::Conflict(format!(
                "user {email} is defined in the config file"
            )));
        }
        let hash = hash_blocking(password).await?;
        let user = User {
            email: email.to_owned(),
            username: username.unwrap_or_else(|| email.split('@').next().unwrap_or(email).to_owned()),
            user_id: kfsec_types::hex::encode(&random_array::<16>(rng)),
            hash,
            groups,
        };
        match self.store.create(&key(email), serde_json::to_vec(&user)?, None).await {
            Ok(_) => Ok(summary(&user, "store")),
            Err(StoreError::AlreadyExists(_)) => Err(IdpError::Conflict(format!("user {email} already exists"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces a managed user's password.
    pub async fn set_password(&self, email: &str, password: &str) -> Result<(), IdpError> {
        if self.static_users.contains_key(&email.to_ascii_lowercase()) {
            return Err(IdpError::Conflict(format!(
                "user {email} is defined in the config file; change its hash there"
            )));
        }
        let hash = hash_blocking(password).await?;
        let kv = self
            .store
            .get(&key(email))
            .await?
            .ok_or_else(|| IdpError::NotFound(format!("user {email}")))?;
        let mut user: User = serde_json::from_slice(&kv.value)?;
        user.hash = hash;
        self.store
            .update(&key(email), serde_json::to_vec(&user)?, Some(kv.mod_revision), None)
            .await?;
        Ok(())
    }

    /// Deletes a managed user.
    pub async fn delete(&self, email: &str) -> Result<(), IdpError> {
        if self.static_users.contains_key(&email.to_ascii_lowercase()) {
            return Err(IdpError::Conflict(format!(
                "user {email} is defined in the config file"
            )));
        }
        match self.store.delete(&key(email), None).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound(_)) => Err(IdpError::NotFound(format!("user {email}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// All users, static first.
    pub async fn list(&self) -> Result<Vec<UserSummary>, IdpError> {
        let mut out: Vec<UserSummary> = self.static_users.values().map(|u| summary(u, "config")).collect();
        out.sort_by(|a, b| a.email.cmp(&b.email));
        for kv in &kfsec_store::list_all(self.store.as_ref(), PREFIX).await?.items {
            let u: User = serde_json::from_slice(&kv.value)?;
            out.push(summary(&u, "store"));
        }
        Ok(out)
    }
}

async fn hash_blocking(password: &str) -> Result<String, IdpError> {
    let password = zeroize::Zeroizing::new(password.to_owned());
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| IdpError::Internal(e.to_string()))?
}

fn summary(u: &User, source: &str) -> UserSummary {
    UserSummary {
        email: u.email.clone(),
        username: u.username.clone(),
        user_id: u.user_id.clone(),
        groups: u.groups.clone(),
        source: source.into(),
    }
}

/// A light check that `email` looks like an address and is safe as a store key (users added
/// with `kfsec user add`).
pub fn validate_email(email: &str) -> Result<(), IdpError> {
    let address = email
        .split_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty());
    if address && validate_login_name(email).is_ok() {
        Ok(())
    } else {
        Err(IdpError::Invalid(format!("{email:?} is not a valid email address")))
    }
}

/// What a static password's `email` may be: Dex loads any non-empty name there (the Charmed
/// Kubeflow charm's static user is `admin`), so only what is unsafe as a store key or an
/// identity header value is refused — empty, over 254 bytes, control characters, whitespace,
/// `/` — and names in Kubernetes' reserved `system:` space (a static user must not be able to
/// be `system:serviceaccount:…` or `system:masters` to RBAC).
pub fn validate_login_name(name: &str) -> Result<(), IdpError> {
    let ok =
        !name.is_empty() && name.len() <= 254 && !name.chars().any(|c| c.is_control() || c.is_whitespace() || c == '/');
    if !ok {
        return Err(IdpError::Invalid(format!(
            "{name:?} is not a usable login name (empty, over 254 bytes, or holding whitespace, control characters or '/')"
        )));
    }
    if name.to_ascii_lowercase().starts_with("system:") {
        return Err(IdpError::Invalid(format!(
            "{name:?} is not a usable login name: the system: prefix is Kubernetes' own"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kfsec_store::MemoryStore;
    use kfsec_types::{ManualClock, UnixTime};

    fn user(email: &str, hash: String) -> User {
        User {
            email: email.into(),
            username: "u".into(),
            user_id: "1".into(),
            hash,
            groups: vec![],
        }
    }

    #[tokio::test]
    async fn verifies_2a_2b_and_2y_hashes_and_ignores_email_case() {
        // One real hash, written in each of bcrypt's three prefixes (Dex configs use $2y$).
        let h = bcrypt::hash_with_result("12341234", 10)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoB);
        let rest = h.strip_prefix("$2b$").unwrap().to_owned();
        let store = MemoryStore::new(ManualClock::new(UnixTime::from_secs(1)));
        let dir = UserDirectory::new(
            store,
            vec![
                user("a@example.com", format!("$2a${rest}")),
                user("b@example.com", format!("$2b${rest}")),
                user("Y@Example.com", format!("$2y${rest}")),
                user("admin", format!("$2y${rest}")),
            ],
        )
        .unwrap();
        for email in ["a@example.com", "b@example.com", "y@example.COM", "admin", "ADMIN"] {
            assert!(dir.verify(email, "12341234").await.unwrap().is_some(), "{email}");
            assert!(dir.verify(email, "12341235").await.unwrap().is_none(), "{email}");
        }
        assert!(dir.verify("nobody@example.com", "12341234").await.unwrap().is_none());
    }

    #[test]
    fn managed_users_need_an_address_static_ones_a_safe_name() {
        assert!(validate_email("a@b.c").is_ok());
        assert!(validate_email("admin").is_err());
        assert!(validate_login_name("admin").is_ok());
        for reserved in ["system:serviceaccount:kubeflow:pipeline-runner", "System:masters"] {
            assert!(validate_login_name(reserved).is_err(), "{reserved:?}");
        }
        for bad in ["", "a b", "a/b", "a\nb", &"x".repeat(255)] {
            assert!(validate_login_name(bad).is_err(), "{bad:?}");
            assert!(
                validate_email(&format!("{bad}@x")).is_err() || bad.is_empty(),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn managed_users_are_hashed_and_static_ones_protected() {
        let store = MemoryStore::new(ManualClock::new(UnixTime::from_secs(1)));
        let dir = UserDirectory::new(
            store.clone(),
            vec![user("s@example.com", hash_password("static-pass").unwrap())],
        )
        .unwrap();
        let rng = TestRng;
        dir.add(&rng, "m@example.com", None, vec!["g".into()], "managed-pass")
            .await
            .unwrap();
        let raw = store.get("/kfsec/idp/users/m@example.com").await.unwrap().unwrap();
        let text = String::from_utf8(raw.value).unwrap();
        assert!(!text.contains("managed-pass") && text.contains("$2b$12$"), "{text}");
        assert!(matches!(
            dir.add(&rng, "s@example.com", None, vec![], "whatever1").await,
            Err(IdpError::Conflict(_))
        ));
        assert!(matches!(
            dir.add(&rng, "x@example.com", None, vec![], "short").await,
            Err(IdpError::Invalid(_))
        ));
        assert!(matches!(
            dir.add(&rng, "x@example.com", None, vec![], &"p".repeat(73)).await,
            Err(IdpError::Invalid(_))
        ));
        assert!(matches!(dir.delete("s@example.com").await, Err(IdpError::Conflict(_))));
        dir.set_password("m@example.com", "another-pass").await.unwrap();
        assert!(dir.verify("m@example.com", "another-pass").await.unwrap().is_some());
        dir.delete("m@example.com").await.unwrap();
        assert!(dir.find("m@example.com").await.unwrap().is_none());
    }

    #[test]
    fn costs_parse_and_dummies_are_well_formed() {
        assert_eq!(bcrypt_cost(DUMMY_HASH), Some(12));
        assert_eq!(bcrypt_cost("$2y$04$abc"), Some(4));
        assert_eq!(bcrypt_cost("$2b$4$abc"), None);
        assert_eq!(bcrypt_cost("$1$04$abc"), None);
        assert_eq!(bcrypt_cost("plain"), None);
        let d = dummy_hash(5);
        assert_eq!(bcrypt_cost(&d), Some(5));
        assert_eq!(d.len(), DUMMY_HASH.len());
        assert!(
            bcrypt::verify("x", &d).is_ok_and(|ok| !ok),
            "a well-formed hash that never matches"
        );
    }

    #[tokio::test]
    async fn checks_cost_the_same_for_cheap_unknown_and_expensive_accounts() {
        // padded work: a cost-4 hash checked at target 6 costs 2^4 + 2^4 + 2^5 = 2^6
        let cheap = bcrypt::hash("pw-cheap-1", 4).unwrap();
        assert!(verify_padded(b"pw-cheap-1", &cheap, 6));
        assert!(!verify_padded(b"wrong", &cheap, 6));
        // the directory's target follows its costliest static hash, at least BCRYPT_COST
        let store = MemoryStore::new(ManualClock::new(UnixTime::from_secs(1)));
        let dir = UserDirectory::new(store.clone(), vec![user("c@example.com", cheap.clone())]).unwrap();
        assert_eq!(dir.check_cost, BCRYPT_COST);
        assert_eq!(bcrypt_cost(&dir.dummy_hash), Some(BCRYPT_COST));
        let h13 = format!("$2b$13${}", cheap.get(7..).unwrap());
        let dir = UserDirectory::new(store, vec![user("e@example.com", h13)]).unwrap();
        assert_eq!(dir.check_cost, 13);
    }

    struct TestRng;
    impl Rng for TestRng {
        fn fill(&self, buf: &mut [u8]) {
            buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        }
    }
}
