//! Building connectors from Dex's `connectors:` entries: `$VAR` expansion as Dex does it, the
//! type dispatch, and problems reported with their paths — all of them, not just the first.
//!
//! Invariants: a key kfsec does not implement is a problem (Dex would silently ignore it);
//! a known Dex connector type kfsec lacks is refused with the list of supported types; expanded
//! values (they may be secrets) never appear in a problem's text.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kfsec_types::Clock;

use serde::de::DeserializeOwned;

use super::{Connector, ConnectorKind};

/// One problem in the `connectors:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Path below the connector's `config`, e.g. `userSearch.baseDN` (empty: the entry itself).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigProblem {
    /// A problem at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What building a connector needs from the rest of the configuration.
#[derive(Clone)]
pub struct OpenContext {
    /// The issuer (`redirectURI` of callback connectors must be `<issuer>/callback`).
    pub issuer: String,
    /// Upstream timeout unless the connector sets its own.
    pub default_timeout: Duration,
    /// The time (upstream token expiry); the system clock unless a test sets its own.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for OpenContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenContext")
            .field("issuer", &self.issuer)
            .field("default_timeout", &self.default_timeout)
            .finish_non_exhaustive()
    }
}

impl OpenContext {
    /// A context for `issuer` with the system clock.
    pub fn new(issuer: impl Into<String>, default_timeout: Duration) -> Self {
        Self {
            issuer: issuer.into(),
            default_timeout,
            clock: Arc::new(kfsec_types::SystemClock),
        }
    }

    /// The callback URL every redirect connector must be registered with upstream.
    pub fn callback(&self) -> String {
        format!("{}/callback", self.issuer.trim_end_matches('/'))
    }
}

/// Dex's connector types kfsec implements.
pub const SUPPORTED: [&str; 3] = ["oidc", "ldap", "microsoft"];

/// Dex's connector types kfsec does not implement (refused with a reason rather than
/// "unknown").
const DEX_ONLY: [&str; 14] = [
    "keystone",
    "gitea",
    "github",
    "gitlab",
    "google",
    "oauth",
    "saml",
    "samlExperimental",
    "authproxy",
    "linkedin",
    "bitbucket-cloud",
    "openshift",
    "atlassian-crowd",
    "mockCallback",
];

/// Builds one connector from its Dex entry (`config` already env-expanded).
pub fn open(
    type_name: &str,
    id: &str,
    name: &str,
    config: serde_json::Value,
    ctx: &OpenContext,
) -> Result<Connector, Vec<ConfigProblem>> {
    let kind = match type_name {
        "local" => {
            return Err(vec![ConfigProblem::new(
                "",
                "the local password database is not configured as a connector: set enablePasswordDB: true",
            )]);
        }
        t if DEX_ONLY.contains(&t) || t == "mockPassword" => {
            return Err(vec![ConfigProblem::new(
                "",
                format!(
                    "connector type {t:?} is a Dex connector kfsec does not implement; kfsec supports {} (most identity providers speak oidc)",
                    SUPPORTED.join(", ")
                ),
            )]);
        }
        t if SUPPORTED.contains(&t) => open_supported(t, id, config, ctx)?,
        t => return Err(vec![ConfigProblem::new("", format!("unknown connector type {t:?}"))]),
    };
    Ok(Connector {
        id: id.to_owned(),
        name: name.to_owned(),
        type_name: type_name.to_owned(),
        kind,
    })
}

fn open_supported(
    type_name: &str,
    id: &str,
    config: serde_json::Value,
    ctx: &OpenContext,
) -> Result<ConnectorKind, Vec<ConfigProblem>> {
    let _ = (id, &config, ctx);
    // Each connector module replaces its arm with its `open`.
    match type_name {
        "oidc" => super::oidc::open(id, config, ctx),
        "ldap" => super::ldap::open(id, config, ctx),
        "microsoft" => super::microsoft::open(id, config, ctx),
        other => Err(vec![ConfigProblem::new(
            "",
            format!("unknown connector type {other:?}"),
        )]),
    }
}

/// Deserializes a connector's `config` into `T` (whose unknown keys land in a flattened
/// `extra` map, see [`unknown_keys`]), naming the failing field.
pub fn parse<T: DeserializeOwned>(config: serde_json::Value) -> Result<T, Vec<ConfigProblem>> {
    let config = if config.is_null() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        config
    };
    serde_path_to_error::deserialize(config).map_err(|e| {
        let field = e.path().to_string();
        vec![ConfigProblem::new(
            if field == "." { String::new() } else { field },
            e.inner().to_string(),
        )]
    })
}

/// One problem per key of `extra` (the keys a connector's config type did not recognise), each
/// with a hint for known mistakes (`hints`: key → what to use instead).
pub fn unknown_keys(
    type_name: &str,
    prefix: &str,
    extra: &BTreeMap<String, serde_json::Value>,
    hints: &[(&str, &str)],
) -> Vec<ConfigProblem> {
    extra
        .keys()
        .map(|k| {
            let hint = hints
                .iter()
                .find(|(key, _)| key == k)
                .map_or_else(String::new, |(_, h)| format!("; {h}"));
            ConfigProblem::new(
                format!("{prefix}{k}"),
                format!(
                    "unknown field of the {type_name} connector (Dex would silently ignore it; kfsec refuses it){hint}"
                ),
            )
        })
        .collect()
}

/// Expands `$VAR` and `${VAR}` in every string of `value`, as Dex does for connector configs
/// (an unset variable expands to the empty string; `$$` stays a `$`). Returns the names of
/// unset variables so the caller can warn.
pub fn expand_env(value: &mut serde_json::Value, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut unset = Vec::new();
    expand_in(value, env, &mut unset);
    unset.sort();
    unset.dedup();
    unset
}

fn expand_in(value: &mut serde_json::Value, env: &dyn Fn(&str) -> Option<String>, unset: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) if s.contains('$') => *s = expand_str(s, env, unset),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| expand_in(v, env, unset)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| expand_in(v, env, unset)),
        _ => {}
    }
}

fn is_name(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// Go's `os.Expand` shell-name rules, which Dex uses: `${NAME}`; `$NAME` (letters, digits,
/// `_`); `$` before one of `*#$@!?-` or a digit names that one-character variable (so `$$`
/// expands, to nothing unless set); `${` without a closing brace (or `${}`) is dropped; a `$`
/// before anything else, or at the end, stays as written.
fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>, unset: &mut Vec<String>) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' || i + 1 >= bytes.len() {
            i += 1;
            continue;
        }
        out.push_str(&s[copied..i]);
        let after = &s[i + 1..];
        let ab = after.as_bytes();
        // (name, bytes consumed after the `$`)
        let (name, width) = match ab[0] {
            b'{' => match after.find('}') {
                Some(1) | None => ("", if after.len() > 1 && ab[1] == b'}' { 2 } else { 1 }),
                Some(end) => (&after[1..end], end + 1),
            },
            b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9' => (&after[..1], 1),
            _ => {
                let end = ab.iter().position(|c| !is_name(*c)).unwrap_or(ab.len());
                (&after[..end], end)
            }
        };
        if name.is_empty() && width == 0 {
            // Not followed by a name: the dollar stays.
            out.push('$');
        } else if !name.is_empty() {
            match env(name) {
                Some(v) => out.push_str(&v),
                None => unset.push(name.to_owned()),
            }
        }
        i += 1 + width;
        copied = i;
    }
    out.push_str(&s[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TENANT_ID" => Some("t-123".into()),
            "SECRET" => Some("s3cr$t".into()),
            _ => None,
        }
    }

    #[test]
    fn env_is_expanded_anywhere_as_dex_does() {
        let mut v = serde_json::json!({
            "issuer": "https://login.microsoftonline.com/$TENANT_ID/v2.0",
            "clientSecret": "${SECRET}",
            "nested": {"list": ["a$TENANT_ID", "${TENANT_ID}b", "$MISSING-x"]},
            "price": "$5 and $$ and $ x and ${} and $",
            "open": "a ${ b",
            "n": 3,
        });
        let unset = expand_env(&mut v, &env);
        assert_eq!(v["issuer"], "https://login.microsoftonline.com/t-123/v2.0");
        // An expanded value is not expanded again.
        assert_eq!(v["clientSecret"], "s3cr$t");
        assert_eq!(v["nested"]["list"], serde_json::json!(["at-123", "t-123b", "-x"]));
        // As Go's os.Expand: `$5` and `$$` are (unset) variables, `${` and `${}` are dropped, a
        // lone `$` stays.
        assert_eq!(v["price"], " and  and $ x and  and $");
        assert_eq!(v["open"], "a  b");
        assert_eq!(v["n"], 3);
        assert_eq!(unset, vec!["$".to_owned(), "5".to_owned(), "MISSING".to_owned()]);
    }

    #[test]
    fn unsupported_and_unknown_types_say_why() {
        let ctx = OpenContext::new("https://kf.example.com/dex", Duration::from_secs(10));
        let e = open("github", "gh", "GitHub", serde_json::Value::Null, &ctx).unwrap_err();
        assert!(e[0].message.contains("does not implement"), "{e:?}");
        let e = open("nope", "x", "X", serde_json::Value::Null, &ctx).unwrap_err();
        assert_eq!(e[0].message, "unknown connector type \"nope\"");
        let e = open("local", "local", "Email", serde_json::Value::Null, &ctx).unwrap_err();
        assert!(e[0].message.contains("enablePasswordDB"), "{e:?}");
    }
}
