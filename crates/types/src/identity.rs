//! The authenticated caller as every handler sees it. Handlers receive an [`Identity`], never
//! a raw cookie or token; an `Identity` exists only after authentication succeeded.

use serde::{Deserialize, Serialize};

/// Who is calling: a user name (an email for IdP users) and the groups they belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user name, e.g. `user@example.com` or `system:serviceaccount:ns:name`.
    pub user: String,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
}

impl Identity {
    /// An identity with the given name and groups.
    pub fn new(user: impl Into<String>, groups: Vec<String>) -> Self {
        Self {
            user: user.into(),
            groups,
        }
    }
}
