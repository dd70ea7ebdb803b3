//! The federation part of the configuration: Dex's `connectors:` (ids, env expansion, each
//! type's own schema through `kfsec_idp::connector::config::open`), `enablePasswordDB`,
//! `oauth2.alwaysShowLoginScreen` / `passwordConnector`, `frontend:` (login-page branding) and
//! `session.revalidateFederated`.
//!
//! Invariants: every problem of this part is reported in one run, each with its path
//! (`connectors[1](corp-ldap).config.userSearch.baseDN: …`); values read from the environment
//! (they may be secrets) never appear in a message or a log line, only variable names do;
//! connector ids are safe in a URL path and in Dex's `sub`; a logo URL is http(s) or a path,
//! never a script or data URL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kfsec_idp::Branding;
use kfsec_idp::connector::config::{OpenContext, expand_env, open};
use kfsec_idp::connector::{Connector, DEFAULT_TIMEOUT, LOCAL};
use kfsec_types::Clock;
use kfsec_types::config::{ConfigFile, DexConnector};
use serde::Deserialize;

use super::Env;

/// Longest connector id (it is a URL path segment and half of every `sub`).
const MAX_ID_LEN: usize = 64;

/// Default of `session.revalidateFederated`.
pub const DEFAULT_REVALIDATE_FEDERATED: Duration = Duration::from_secs(15 * 60);

/// Dex's login-page themes.
const THEMES: [&str; 2] = ["light", "dark"];

/// What the federation part of the file amounts to.
#[derive(Debug, Clone)]
pub struct Federation {
    /// The configured connectors, in file order, their `config` env-expanded (`Debug` hides it).
    pub connectors: Vec<DexConnector>,
    /// Whether `local` is offered (after the configured connectors).
    pub password_db: bool,
    /// `oauth2.alwaysShowLoginScreen`.
    pub always_show_login_screen: bool,
    /// `oauth2.passwordConnector`, checked to name a password connector.
    pub password_connector: Option<String>,
    /// `frontend.issuer` / `logoURL` / `theme`.
    pub branding: Branding,
    /// How often a federated user's session is re-checked upstream
    /// (`session.revalidateFederated`, default 15m; None: off).
    pub revalidate_federated: Option<Duration>,
    /// Re-check every session, local users' too, as federated ones are (tests only: it lets the
    /// gateway's revalidation run without an upstream; not settable from the file).
    pub revalidate_all_sessions: bool,
    /// Startup lines (info): decisions and their reasons (password database, revalidation).
    pub notes: Vec<String>,
    /// Startup lines (warn): environment variables that are not set (names only).
    pub warnings: Vec<String>,
}

/// Dex's feature-flag reading (`pkg/featureflags`): unset or unparsable → the default;
/// otherwise Go's `strconv.ParseBool`.
fn feature_flag(env: &dyn Env, name: &str, default: bool) -> bool {
    match env.var(name).as_deref() {
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => true,
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => false,
        _ => default,
    }
}

/// Whether `id` is usable as a connector id (a URL path segment, half of `sub`).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && id != "."
        && id != ".."
}

/// `connectors[i](id)`, or `connectors[i]` when the id is not printable safely.
fn entry_path(i: usize, id: &str) -> String {
    if valid_id(id) {
        format!("connectors[{i}]({id})")
    } else {
        format!("connectors[{i}]")
    }
}

/// Dex's `frontend:` section as kfsec reads it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Frontend {
    dir: Option<String>,
    #[serde(rename = "logoURL")]
    logo_url: Option<String>,
    issuer: Option<String>,
    theme: Option<String>,
    extra: Option<BTreeMap<String, String>>,
}

/// Checks `frontend.logoURL`: an http(s) URL or a path (relative to the login page), nothing
/// a browser would run or inline.
fn logo_url(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.is_empty() {
        return Err("is empty (leave it out for no logo)".into());
    }
    if v.chars()
        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '"' | '<' | '>' | '\\'))
    {
        return Err("contains spaces, control characters, quotes, angle brackets or backslashes".into());
    }
    // A scheme is letters/digits/+-. before the first ':' that comes before any '/', '?', '#'.
    let head = v.split(['/', '?', '#']).next().unwrap_or("");
    if let Some((scheme, _)) = head.split_once(':') {
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "has the scheme {scheme:?}: only http(s) URLs or paths are allowed (a javascript: or data: URL would run or inline content in the login page)"
            ));
        }
        let rest = &v[scheme.len() + 1..];
        if !rest.starts_with("//") || rest.starts_with("///") {
            return Err("is not a valid URL: it has no host (write scheme://host/path)".into());
        }
        let url = url::Url::parse(v).map_err(|e| format!("is not a valid URL: {e}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("carries credentials; use a URL without user:password@".into());
        }
    }
    Ok(v.to_owned())
}

/// Reads `frontend:` into branding (problems pushed with their paths).
fn branding(value: Option<&serde_json::Value>, problems: &mut Vec<String>, acknowledged: &mut Vec<String>) -> Branding {
    let mut out = Branding::default();
    let fe: Frontend = match value {
        None | Some(serde_json::Value::Null) => return out,
        Some(v @ serde_json::Value::Object(_)) => match serde_path_to_error::deserialize(v.clone()) {
            Ok(fe) => fe,
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.inner().to_string();
                let why = if inner.starts_with("unknown field") {
                    format!("{inner} (kfsec knows Dex's frontend keys only)")
                } else {
                    inner
                };
                problems.push(if path == "." {
                    format!("frontend: {why}")
                } else {
                    format!("frontend.{path}: {why}")
                });
                return out;
            }
        },
        Some(_) => {
            problems.push("frontend: must be a mapping, as in Dex".into());
            return out;
        }
    };
    if let Some(name) = fe.issuer {
        let name = name.trim();
        if name.chars().any(char::is_control) || name.chars().count() > 100 {
            problems.push("frontend.issuer: must be at most 100 characters, without control characters".into());
        } else if !name.is_empty() {
            name.clone_into(&mut out.issuer_name);
        }
    }
    if let Some(u) = fe.logo_url {
        match logo_url(&u) {
            Ok(u) => out.logo_url = Some(u),
            Err(why) => problems.push(format!("frontend.logoURL: {why}")),
        }
    }
    if let Some(t) = fe.theme {
        let t = t.trim();
        if THEMES.contains(&t) {
            t.clone_into(&mut out.theme);
        } else if !t.is_empty() {
            problems.push(format!(
                "frontend.theme: {t:?} is not one of Dex's themes ({})",
                THEMES.join(", ")
            ));
        }
    }
    let ignored: Vec<&str> = [("dir", fe.dir.is_some()), ("extra", fe.extra.is_some())]
        .into_iter()
        .filter_map(|(k, present)| present.then_some(k))
        .collect();
    if !ignored.is_empty() {
        acknowledged.push(format!(
            "Dex's `frontend` ({}) is accepted but not used: kfsec's login pages are compiled into the binary, so template directories and extra template values have no effect; frontend.issuer, logoURL and theme brand them",
            ignored.join(", ")
        ));
    }
    out
}

/// Expands `$VAR`/`${VAR}` in each connector's `config` (unless `DEX_EXPAND_ENV` is false) and
/// checks ids and names. Returns the expanded entries and the unset variables with the entries
/// that use them.
fn expand_connectors(
    f: &ConfigFile,
    env: &dyn Env,
    problems: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> (Vec<DexConnector>, BTreeMap<String, Vec<String>>) {
    let expand = feature_flag(env, "DEX_EXPAND_ENV", true);
    if !expand && !f.connectors.is_empty() {
        notes.push("DEX_EXPAND_ENV is false: $VAR and ${VAR} in connector configs are kept as written".into());
    }
    let lookup = |name: &str| env.var(name);
    let mut unset: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = Vec::with_capacity(f.connectors.len());
    for (i, c) in f.connectors.iter().enumerate() {
        let at = entry_path(i, &c.id);
        if !valid_id(&c.id) {
            problems.push(format!(
                "connectors[{i}].id: {:?} is not a usable connector id: use 1 to {MAX_ID_LEN} of the characters A-Z a-z 0-9 . _ - (it appears in URL paths and in every user's sub)",
                c.id.chars().take(80).collect::<String>()
            ));
        } else if c.id == LOCAL {
            problems.push(format!(
                "connectors[{i}].id: \"local\" is reserved for the built-in password database (enable it with enablePasswordDB: true)"
            ));
        } else if let Some(first) = seen.insert(&c.id, i) {
            problems.push(format!(
                "{at}.id: {:?} is already the id of connectors[{first}]; ids must be unique",
                c.id
            ));
        }
        if c.name.trim().is_empty() {
            problems.push(format!(
                "{at}.name: must not be empty (it is shown as \"Log in with {{name}}\")"
            ));
        }
        let mut c = c.clone();
        if expand {
            for var in expand_env(&mut c.config, &lookup) {
                unset.entry(var).or_default().push(at.clone());
            }
        }
        out.push(c);
    }
    (out, unset)
}

/// Reads the federation part of the file, and the Dex keys it accepts without using them (with
/// why). `issuer`: the issuer when it is known before the listeners bind (then every connector
/// is also opened once here, so that its problems are reported with the rest); None defers
/// opening to the start.
pub(super) fn federation(
    f: &ConfigFile,
    env: &dyn Env,
    issuer: Option<&str>,
) -> Result<(Federation, Vec<String>), Vec<String>> {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut warnings = Vec::new();
    let mut acknowledged = Vec::new();

    let (connectors, unset) = expand_connectors(f, env, &mut problems, &mut notes);
    for (var, users) in &unset {
        warnings.push(format!(
            "environment variable {var} is not set; it expands to an empty string in {}",
            users.join(", ")
        ));
    }
    if let Some(issuer) = issuer {
        // A trial open, for its problems only: the server opens the connectors again at start,
        // and that open says what each connector has to say (its warnings are not printed twice).
        let ctx = OpenContext::new(issuer, DEFAULT_TIMEOUT);
        let trial = tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            open_each(&connectors, &ctx)
        });
        problems.extend(trial.err().unwrap_or_default());
    }

    let configured = connectors.len();
    let password_db = match f.enable_password_db {
        Some(true) => {
            notes.push(format!(
                "local password database on (enablePasswordDB: true){}",
                if configured == 0 {
                    String::new()
                } else {
                    format!(", offered after the {configured} configured connector(s), as in Dex")
                }
            ));
            true
        }
        Some(false) => {
            notes.push("local password database off (enablePasswordDB: false): static and kfsec-managed users, the bootstrap admin included, cannot log in".into());
            false
        }
        None if configured == 0 => {
            notes.push("local password database on (enablePasswordDB unset and no connectors configured)".into());
            true
        }
        None => {
            notes.push(format!(
                "local password database off (enablePasswordDB unset and {configured} connector(s) configured, as in Dex); set enablePasswordDB: true to offer local users (the bootstrap admin too)"
            ));
            false
        }
    };
    if !password_db && configured == 0 {
        problems.push(
            "enablePasswordDB: false with no connectors leaves no way to log in: add a connectors: entry or enable the password database".into(),
        );
    }

    let password_connector = f.oauth2.password_connector.as_deref().map(str::trim).map(str::to_owned);
    if let Some(pc) = &password_connector {
        let ok = if pc == LOCAL {
            password_db
        } else {
            connectors.iter().any(|c| &c.id == pc && c.type_name == "ldap")
        };
        if !ok {
            let mut kinds: Vec<String> = connectors
                .iter()
                .filter(|c| c.type_name == "ldap")
                .map(|c| c.id.clone())
                .collect();
            if password_db {
                kinds.push(LOCAL.into());
            }
            let what = match connectors.iter().find(|c| &c.id == pc) {
                Some(c) => format!(
                    "connector {pc:?} is of type {:?}, which has no password form",
                    c.type_name
                ),
                None if pc == LOCAL => "the local password database is off (enablePasswordDB)".into(),
                None => format!("there is no connector {pc:?}"),
            };
            problems.push(format!(
                "oauth2.passwordConnector: {what}; it must name a password connector (local or an ldap one){}",
                if kinds.is_empty() {
                    String::new()
                } else {
                    format!(": {}", kinds.join(", "))
                }
            ));
        }
    }

    let branding = branding(f.frontend.as_ref(), &mut problems, &mut acknowledged);

    let revalidate_federated = match f.session.revalidate_federated {
        None => Some(DEFAULT_REVALIDATE_FEDERATED),
        Some(d) if d.is_zero() => {
            notes.push("session.revalidateFederated is 0s: sessions of federated users are not re-checked against their identity provider; a user removed upstream keeps their session until it expires (session.ttl)".into());
            None
        }
        Some(d) if d < Duration::from_secs(10) => {
            problems.push("session.revalidateFederated: must be 0s (off) or at least 10s".into());
            None
        }
        Some(d) => Some(d),
    };

    if !problems.is_empty() {
        return Err(problems);
    }
    let fed = Federation {
        connectors,
        password_db,
        always_show_login_screen: f.oauth2.always_show_login_screen.unwrap_or(false),
        password_connector,
        branding,
        revalidate_federated,
        revalidate_all_sessions: false,
        notes,
        warnings,
    };
    Ok((fed, acknowledged))
}

/// Opens every entry; all problems of all entries, each with its path.
fn open_each(connectors: &[DexConnector], ctx: &OpenContext) -> Result<Vec<Connector>, Vec<String>> {
    let mut out = Vec::with_capacity(connectors.len() + 1);
    let mut problems = Vec::new();
    for (i, c) in connectors.iter().enumerate() {
        match open(&c.type_name, &c.id, &c.name, c.config.clone(), ctx) {
            Ok(conn) => out.push(conn),
            Err(ps) => {
                let at = entry_path(i, &c.id);
                problems.extend(ps.into_iter().map(|p| {
                    if p.field.is_empty() {
                        format!("{at}: {}", p.message)
                    } else {
                        format!("{at}.config.{}: {}", p.field, p.message)
                    }
                }));
            }
        }
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

/// The connectors in chooser order: the configured ones (opened against `issuer`), then `local`
/// when the password database is on.
pub(super) fn open_connectors(
    connectors: &[DexConnector],
    password_db: bool,
    issuer: &str,
    clock: Arc<dyn Clock>,
) -> Result<Vec<Connector>, Vec<String>> {
    let ctx = OpenContext {
        clock,
        ..OpenContext::new(issuer, DEFAULT_TIMEOUT)
    };
    let mut out = open_each(connectors, &ctx)?;
    if password_db {
        out.push(Connector::local());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigError, Env, Overrides, parse, validate};
    use super::*;

    struct MapEnv(Vec<(&'static str, &'static str)>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        }
    }

    /// Validates `yaml` with the front door on a port the system picks and no issuer, so the
    /// connectors are checked here but opened only at start.
    fn load(yaml: &str, env: &MapEnv) -> Result<Config, ConfigError> {
        let f = parse(Path::new("c.yaml"), yaml)?;
        let o = Overrides {
            https_addr: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        validate(f, &o, env)
    }

    fn problems(yaml: &str, env: &MapEnv) -> Vec<String> {
        match load(yaml, env) {
            Err(ConfigError::Problems(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    pub(super) const THREE: &str = r#"
connectors:
- type: oidc
  id: keycloak
  name: Keycloak
  config:
    issuer: https://keycloak.example.com/realms/kubeflow
    clientID: kubeflow-oidc-authservice
    clientSecret: ${KEYCLOAK_SECRET}
    redirectURI: https://kf.example.com/dex/callback
- type: ldap
  id: corp-ldap
  name: Corporate directory
  config:
    host: ldap.example.com:636
    bindDN: cn=svc,dc=example,dc=com
    bindPW: $LDAP_BIND_PW
    userSearch:
      baseDN: ou=people,dc=example,dc=com
      username: uid
      idAttr: uid
      emailAttr: mail
      nameAttr: cn
- type: microsoft
  id: entra
  name: Entra ID
  config:
    clientID: $MICROSOFT_APPLICATION_ID
    clientSecret: $MICROSOFT_CLIENT_SECRET
    tenant: 4a1b7c3e-0000-4000-8000-000000000001
    redirectURI: https://kf.example.com/dex/callback
oauth2:
  passwordConnector: corp-ldap
"#;

    fn three_env() -> MapEnv {
        MapEnv(vec![
            ("KEYCLOAK_SECRET", "kc-secret-value"),
            ("LDAP_BIND_PW", "bind-pw-value"),
            ("MICROSOFT_APPLICATION_ID", "app-id-value"),
            ("MICROSOFT_CLIENT_SECRET", "ms-secret-value"),
        ])
    }

    #[test]
    fn a_three_connector_config_is_read_in_order_with_env_expanded() {
        let c = load(THREE, &three_env()).unwrap();
        let ids: Vec<_> = c
            .federation
            .connectors
            .iter()
            .map(|c| (c.id.as_str(), c.type_name.as_str()))
            .collect();
        assert_eq!(
            ids,
            [("keycloak", "oidc"), ("corp-ldap", "ldap"), ("entra", "microsoft")]
        );
        assert_eq!(c.federation.connectors[0].config["clientSecret"], "kc-secret-value");
        assert_eq!(c.federation.connectors[1].config["bindPW"], "bind-pw-value");
        assert_eq!(c.federation.connectors[2].config["clientID"], "app-id-value");
        assert_eq!(c.federation.password_connector.as_deref(), Some("corp-ldap"));
        // Connectors configured, enablePasswordDB unset: no local database, as in Dex, and said.
        assert!(!c.federation.password_db);
        assert!(
            c.federation
                .notes
                .iter()
                .any(|n| n
                    .starts_with("local password database off (enablePasswordDB unset and 3 connector(s) configured")),
            "{:?}",
            c.federation.notes
        );
        assert!(c.federation.warnings.is_empty(), "{:?}", c.federation.warnings);
        // The connectors' Debug never shows their config (secrets).
        let dbg = format!("{c:?}");
        for secret in ["kc-secret-value", "bind-pw-value", "ms-secret-value"] {
            assert!(!dbg.contains(secret), "{secret} in {dbg}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_path() {
        let yaml = r#"
connectors:
- {type: github, id: gh, name: GitHub}
- {type: nope, id: "bad id/x", name: X}
- {type: oidc, id: local, name: Local}
- {type: oidc, id: dup, name: ""}
- {type: ldap, id: dup, name: Again}
- {type: microsoft, id: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", name: Long}
oauth2:
  passwordConnector: gh
frontend:
  theme: blue
  logoURL: "javascript:alert(1)"
session:
  revalidateFederated: 1s
"#;
        let p = problems(yaml, &MapEnv(vec![]));
        let has = |prefix: &str, text: &str| {
            assert!(
                p.iter().any(|l| l.starts_with(prefix) && l.contains(text)),
                "no {prefix:?} … {text:?} in {p:#?}"
            );
        };
        has("connectors[1].id:", "not a usable connector id");
        has("connectors[2].id:", "\"local\" is reserved");
        has("connectors[3](dup).name:", "must not be empty");
        has("connectors[4](dup).id:", "already the id of connectors[3]");
        has("connectors[5].id:", "1 to 64");
        has(
            "oauth2.passwordConnector:",
            "connector \"gh\" is of type \"github\", which has no password form",
        );
        has("frontend.theme:", "\"blue\" is not one of Dex's themes (light, dark)");
        has("frontend.logoURL:", "javascript");
        has("session.revalidateFederated:", "at least 10s");
        assert_eq!(p.len(), 9, "{p:#?}");
        // The error names how many, one per line.
        let e = ConfigError::Problems(p).to_string();
        assert!(
            e.starts_with("invalid configuration (9 problems):\n  - connectors[1].id:"),
            "{e}"
        );
    }

    #[test]
    fn opening_reports_each_connector_with_its_path() {
        // With the issuer known before binding, connectors are opened while validating, so their
        // own problems join the rest.
        let yaml = "issuer: https://kf.example.com/dex\nconnectors:\n- {type: github, id: gh, name: GitHub}\n- {type: saml, id: corp, name: SAML}\n- {type: nope, id: x, name: X}\n- {type: ldap, id: dir, name: Directory, config: {host: ldap.example.com, userSearch: {baseDN: 'ou=people,dc=example,dc=com', username: uid, idAttr: uid, emailAttr: mail, nameAttr: cn}, bindPW: x, insecureSkipVerify: maybe}}\nfrontend: {theme: blue}\n";
        let f = parse(Path::new("c.yaml"), yaml).unwrap();
        let e = validate(f, &Overrides::default(), &MapEnv(vec![])).unwrap_err();
        let ConfigError::Problems(p) = e else { panic!("{e:?}") };
        assert!(
            p[0].starts_with(
                "connectors[0](gh): connector type \"github\" is a Dex connector kfsec does not implement"
            ),
            "{p:#?}"
        );
        assert!(
            p[1].starts_with("connectors[1](corp): connector type \"saml\""),
            "{p:#?}"
        );
        assert_eq!(p[2], "connectors[2](x): unknown connector type \"nope\"");
        // The type's own schema, below `config`.
        assert!(
            p[3].starts_with("connectors[3](dir).config.insecureSkipVerify: "),
            "{p:#?}"
        );
        assert!(p.last().is_some_and(|l| l.starts_with("frontend.theme:")), "{p:#?}");
    }

    #[test]
    fn env_expansion_as_dex_warns_once_per_unset_variable_and_never_shows_values() {
        let yaml = "connectors:\n- type: oidc\n  id: a\n  name: A\n  config:\n    clientSecret: ${SET_SECRET}\n    issuer: https://$HOST/x\n    scopes: [\"$MISSING\", \"${MISSING}\"]\n- type: oidc\n  id: b\n  name: B\n  config: {clientID: $MISSING}\n";
        let env = MapEnv(vec![("SET_SECRET", "s3cr3t-$NOT_AGAIN"), ("HOST", "idp.example.com")]);
        let c = load(yaml, &env).unwrap();
        assert_eq!(c.federation.connectors[0].config["clientSecret"], "s3cr3t-$NOT_AGAIN");
        assert_eq!(c.federation.connectors[0].config["issuer"], "https://idp.example.com/x");
        assert_eq!(c.federation.connectors[0].config["scopes"], serde_json::json!(["", ""]));
        assert_eq!(c.federation.connectors[1].config["clientID"], "");
        assert_eq!(
            c.federation.warnings,
            [
                "environment variable MISSING is not set; it expands to an empty string in connectors[0](a), connectors[1](b)"
            ]
        );
        assert!(!format!("{:?}{:?}", c.federation.warnings, c.federation.notes).contains("s3cr3t"));
        // DEX_EXPAND_ENV=false (Go's ParseBool spellings) keeps the text as written.
        for off in ["false", "0", "F", "FALSE"] {
            let env = MapEnv(vec![("DEX_EXPAND_ENV", off), ("HOST", "idp.example.com")]);
            let c = load(yaml, &env).unwrap();
            assert_eq!(c.federation.connectors[0].config["issuer"], "https://$HOST/x", "{off}");
            assert!(c.federation.warnings.is_empty());
            assert!(c.federation.notes.iter().any(|n| n.contains("DEX_EXPAND_ENV is false")));
        }
        // Anything else is Dex's default (on).
        let env = MapEnv(vec![("DEX_EXPAND_ENV", "nope"), ("HOST", "h")]);
        assert_eq!(
            load(yaml, &env).unwrap().federation.connectors[0].config["issuer"],
            "https://h/x"
        );
    }

    #[test]
    fn enable_password_db_rules() {
        let one = "connectors:\n- {type: oidc, id: kc, name: Keycloak}\n";
        let db = |yaml: &str| load(yaml, &MapEnv(vec![])).map(|c| (c.federation.password_db, c.federation.notes));
        // Unset, no connectors: on (kfsec's default).
        let (on, notes) = db("").unwrap();
        assert!(on);
        assert!(
            notes[0].contains("on (enablePasswordDB unset and no connectors configured)"),
            "{notes:?}"
        );
        // Unset, connectors: off (as Dex).
        let (on, notes) = db(one).unwrap();
        assert!(!on);
        assert!(
            notes[0].contains("off (enablePasswordDB unset and 1 connector(s) configured, as in Dex)"),
            "{notes:?}"
        );
        // true: on, after the connectors.
        let (on, notes) = db(&format!("enablePasswordDB: true\n{one}")).unwrap();
        assert!(on);
        assert!(
            notes[0].contains("offered after the 1 configured connector(s)"),
            "{notes:?}"
        );
        // false with connectors: off; false alone: nobody could log in.
        let (on, _) = db(&format!("enablePasswordDB: false\n{one}")).unwrap();
        assert!(!on);
        let p = problems("enablePasswordDB: false\n", &MapEnv(vec![]));
        assert!(p[0].contains("leaves no way to log in"), "{p:?}");
        // The chooser's list: local last, only when on.
        let c = load("", &MapEnv(vec![])).unwrap();
        let list = c
            .open_connectors("https://kf.example.com/dex", Arc::new(kfsec_types::SystemClock))
            .unwrap();
        assert_eq!(list.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["local"]);
    }

    #[test]
    fn password_connector_must_be_a_password_connector_that_exists() {
        let base = "connectors:\n- {type: oidc, id: kc, name: Keycloak}\n- {type: ldap, id: corp, name: Corp}\n";
        let ok =
            |extra: &str| load(&format!("{base}{extra}"), &MapEnv(vec![])).map(|c| c.federation.password_connector);
        assert_eq!(
            ok("oauth2: {passwordConnector: corp}\n").unwrap().as_deref(),
            Some("corp")
        );
        assert_eq!(
            ok("enablePasswordDB: true\noauth2: {passwordConnector: local}\n")
                .unwrap()
                .as_deref(),
            Some("local")
        );
        for (extra, why) in [
            (
                "oauth2: {passwordConnector: kc}\n",
                "connector \"kc\" is of type \"oidc\", which has no password form; it must name a password connector (local or an ldap one): corp",
            ),
            (
                "oauth2: {passwordConnector: ghost}\n",
                "there is no connector \"ghost\"",
            ),
            (
                "oauth2: {passwordConnector: local}\n",
                "the local password database is off (enablePasswordDB)",
            ),
        ] {
            let p = problems(&format!("{base}{extra}"), &MapEnv(vec![]));
            assert!(
                p.len() == 1 && p[0].starts_with("oauth2.passwordConnector: ") && p[0].contains(why),
                "{extra}: {p:?}"
            );
        }
    }

    #[test]
    fn frontend_brands_the_login_pages() {
        let c = load(
            "frontend:\n  issuer: Acme Kubeflow\n  logoURL: https://cdn.example.com/logo.png\n  theme: dark\n  dir: /srv/dex/web\n  extra: {tos: https://example.com/tos}\n",
            &MapEnv(vec![]),
        )
        .unwrap();
        assert_eq!(
            c.federation.branding,
            Branding {
                issuer_name: "Acme Kubeflow".into(),
                logo_url: Some("https://cdn.example.com/logo.png".into()),
                theme: "dark".into(),
            }
        );
        assert_eq!(c.acknowledged.len(), 1, "{:?}", c.acknowledged);
        assert!(c.acknowledged[0].starts_with(
            "Dex's `frontend` (dir, extra) is accepted but not used: kfsec's login pages are compiled into the binary"
        ));
        // Defaults.
        assert_eq!(
            load("frontend: {}\n", &MapEnv(vec![])).unwrap().federation.branding,
            Branding::default()
        );
        assert!(load("", &MapEnv(vec![])).unwrap().acknowledged.is_empty());
        for good in [
            "/static/logo.svg",
            "theme/logo.png",
            "HTTP://cdn.example.com/l.png",
            "//cdn.example.com/l.png",
        ] {
            let c = load(&format!("frontend: {{logoURL: {good:?}}}\n"), &MapEnv(vec![])).unwrap();
            assert_eq!(c.federation.branding.logo_url.as_deref(), Some(good));
        }
        for (bad, why) in [
            ("javascript:alert(1)", "\"javascript\""),
            ("JavaScript:alert(1)", "\"javascript\""),
            ("data:image/svg+xml;base64,PHN2Zz4=", "\"data\""),
            ("vbscript:x", "\"vbscript\""),
            ("https://user:pw@cdn.example.com/l.png", "credentials"),
            ("https:///l.png", "no host"),
            ("/a\" onerror=\"x", "quotes"),
            ("", "empty"),
        ] {
            let p = problems(&format!("frontend: {{logoURL: {bad:?}}}\n"), &MapEnv(vec![]));
            assert!(
                p[0].starts_with("frontend.logoURL: ") && p[0].contains(why),
                "{bad}: {p:?}"
            );
        }
        let p = problems("frontend: {theme: coreos}\n", &MapEnv(vec![]));
        assert_eq!(
            p,
            ["frontend.theme: \"coreos\" is not one of Dex's themes (light, dark)"]
        );
    }

    #[test]
    fn federated_sessions_are_revalidated_every_15m_by_default() {
        let c = load("", &MapEnv(vec![])).unwrap();
        assert_eq!(c.federation.revalidate_federated, Some(Duration::from_secs(900)));
        assert!(!c.federation.revalidate_all_sessions);
        let c = load("session: {revalidateFederated: 5m}\n", &MapEnv(vec![])).unwrap();
        assert_eq!(c.federation.revalidate_federated, Some(Duration::from_secs(300)));
        let c = load("session: {revalidateFederated: 0s}\n", &MapEnv(vec![])).unwrap();
        assert_eq!(c.federation.revalidate_federated, None);
        assert!(
            c.federation
                .notes
                .iter()
                .any(|n| n.starts_with("session.revalidateFederated is 0s")),
            "{:?}",
            c.federation.notes
        );
    }
}

#[cfg(test)]
mod opened {
    use std::path::Path;

    use super::super::{Env, Overrides, parse, validate};
    use super::*;

    struct Vars;
    impl Env for Vars {
        fn var(&self, name: &str) -> Option<String> {
            Some(format!("value-of-{name}"))
        }
    }

    #[test]
    fn a_three_connector_config_opens_in_config_order_with_local_last() {
        let yaml = format!(
            "issuer: https://kf.example.com/dex\nenablePasswordDB: true\n{}",
            super::tests::THREE
        );
        let f = parse(Path::new("c.yaml"), &yaml).unwrap();
        let c = validate(f, &Overrides::default(), &Vars).unwrap();
        let list = c
            .open_connectors("https://kf.example.com/dex", Arc::new(kfsec_types::SystemClock))
            .unwrap();
        let got: Vec<_> = list
            .iter()
            .map(|c| (c.id.as_str(), c.type_name.as_str(), c.name.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("keycloak", "oidc", "Keycloak"),
                ("corp-ldap", "ldap", "Corporate directory"),
                ("entra", "microsoft", "Entra ID"),
                ("local", "local", "Email"),
            ]
        );
    }
}
