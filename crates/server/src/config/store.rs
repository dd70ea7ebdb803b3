//! `store:` — which backend holds kfsec's state: the embedded redb file under `dataDir`
//! (default) or an etcd cluster shared by several replicas.
//!
//! Invariants: every problem names its setting (`store.endpoints[1]`, `store.tls.caFile`) and,
//! for files and endpoints, the file or endpoint; etcd is refused without `secretsEncryption`
//! (secret material would otherwise sit readable in a store other machines share); TLS files are
//! read now, so a missing one fails the start, not the first request; the etcd password is
//! never in `Debug` output or an error message.

use std::path::PathBuf;
use std::time::Duration;

use kfsec_store_etcd::{EtcdConfig, EtcdTls};
use kfsec_types::config::StoreConfig;

use super::{ConfigError, Env};

/// The default `store.staleLimit`.
pub const DEFAULT_STALE_LIMIT: Duration = Duration::from_secs(60);

/// One etcd request's timeout: a read is retried until twice this, so a write against a dead
/// cluster is answered (503) within 10 s.
pub const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The validated `store:` section.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// The redb file under the data directory.
    Redb,
    /// An etcd cluster.
    Etcd {
        /// How to reach it (checked: URLs, TLS files readable, user and password together).
        config: Box<EtcdConfig>,
        /// How long cached sessions and authorization outlive the last contact with etcd.
        stale_limit: Duration,
    },
}

fn invalid(msg: String) -> ConfigError {
    ConfigError::Invalid(msg)
}

/// An endpoint as messages show it: any user information (`user:password@`) replaced by `***`,
/// so a password put in the URL is never repeated in an error or a log.
fn shown(e: &str) -> String {
    let start = e.find("://").map_or(0, |i| i + 3);
    let rest = &e[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{}***{}", &e[..start], &rest[at..]),
        None => e.to_owned(),
    }
}

/// Checks one endpoint: an `http(s)://host:port` URL with nothing else.
fn endpoint(i: usize, e: &str, tls: bool) -> Result<(), ConfigError> {
    let bad = |why: &str| invalid(format!("store.endpoints[{i}] {:?}: {why}", shown(e)));
    let u = url::Url::parse(e).map_err(|err| bad(&format!("not a URL ({err})")))?;
    match (u.scheme(), tls) {
        ("http", false) | ("https", true) => {}
        ("https", false) => return Err(bad("https:// needs store.tls (caFile)")),
        ("http", true) => return Err(bad("store.tls is set: use https://")),
        (s, _) => return Err(bad(&format!("unsupported scheme {s:?} (use http:// or https://)"))),
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad(
            "put the etcd user in store.username / store.password, not in the URL",
        ));
    }
    if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
        return Err(bad("only scheme, host and port (no path or query)"));
    }
    Ok(())
}

/// A TLS file, read now so a missing or unreadable one fails the start naming it.
fn tls_file(what: &str, file: Option<&String>) -> Result<Option<PathBuf>, ConfigError> {
    let Some(file) = file else { return Ok(None) };
    if file.is_empty() {
        return Err(invalid(format!("store.tls.{what}: name a file")));
    }
    std::fs::read(file).map_err(|e| invalid(format!("store.tls.{what}: {file}: {e}")))?;
    Ok(Some(PathBuf::from(file)))
}

/// Validates `store:`; `sealed` says whether `secretsEncryption` is configured.
pub fn settings(s: Option<&StoreConfig>, sealed: bool, env: &dyn Env) -> Result<StoreSettings, ConfigError> {
    let Some(s) = s else { return Ok(StoreSettings::Redb) };
    match s.kind.as_deref().unwrap_or("redb") {
        "redb" => {
            let extra = [
                ("endpoints", !s.endpoints.is_empty()),
                ("prefix", s.prefix.is_some()),
                ("tls", s.tls.is_some()),
                ("username", s.username.is_some()),
                ("password", s.password.is_some()),
                ("passwordEnv", s.password_env.is_some()),
                ("staleLimit", s.stale_limit.is_some()),
            ];
            if let Some((key, _)) = extra.iter().find(|(_, set)| *set) {
                return Err(invalid(format!(
                    "store.{key} is a setting of type: etcd (the redb store is a file under dataDir)"
                )));
            }
            Ok(StoreSettings::Redb)
        }
        "etcd" => etcd(s, sealed, env),
        other => Err(invalid(format!("store.type {other:?}: use redb or etcd"))),
    }
}

fn etcd(s: &StoreConfig, sealed: bool, env: &dyn Env) -> Result<StoreSettings, ConfigError> {
    if !sealed {
        return Err(invalid(
            "store.type etcd needs secretsEncryption (keyFile): the store holds signing keys, password hashes and sessions, which must not sit readable in a store other machines share; give every replica the same key file (`kfsec secrets generate-key`)".into(),
        ));
    }
    if s.endpoints.is_empty() {
        return Err(invalid(
            "store.endpoints: list the etcd client URLs (e.g. http://127.0.0.1:2379)".into(),
        ));
    }
    let tls = match &s.tls {
        None => None,
        Some(t) => {
            let ca = tls_file("caFile", t.ca_file.as_ref())?;
            if ca.is_none() {
                return Err(invalid("store.tls.caFile: required with store.tls".into()));
            }
            let cert = tls_file("certFile", t.cert_file.as_ref())?;
            let key = tls_file("keyFile", t.key_file.as_ref())?;
            if cert.is_some() != key.is_some() {
                return Err(invalid("store.tls: certFile and keyFile go together".into()));
            }
            Some(EtcdTls {
                ca_file: ca,
                cert_file: cert,
                key_file: key,
            })
        }
    };
    for (i, e) in s.endpoints.iter().enumerate() {
        endpoint(i, e, tls.is_some())?;
    }
    let prefix = s.prefix.clone().unwrap_or_else(|| "/kfsec".into());
    let root = prefix.trim_end_matches('/');
    if !prefix.starts_with('/') || root.is_empty() || root.chars().any(char::is_control) {
        return Err(invalid(format!(
            "store.prefix {prefix:?}: an absolute key path such as /kfsec (not / itself)"
        )));
    }
    let password = match (&s.password, &s.password_env) {
        (Some(p), None) => Some(p.clone()),
        (None, Some(var)) => Some(
            env.var(var)
                .ok_or_else(|| invalid(format!("store.passwordEnv: environment variable {var} is not set")))?,
        ),
        (None, None) => None,
        (Some(_), Some(_)) => return Err(invalid("store: give password or passwordEnv, not both".into())),
    };
    if s.username.is_some() != password.is_some() {
        return Err(invalid("store: username and password go together".into()));
    }
    let stale_limit = s.stale_limit.unwrap_or(DEFAULT_STALE_LIMIT);
    if stale_limit < Duration::from_secs(1) {
        return Err(invalid("store.staleLimit must be at least 1s".into()));
    }
    let mut config = EtcdConfig::new(s.endpoints.clone(), prefix);
    config.tls = tls;
    config.username = s.username.clone();
    config.password = password;
    config.request_timeout = ETCD_REQUEST_TIMEOUT;
    config.connect_timeout = ETCD_REQUEST_TIMEOUT;
    Ok(StoreSettings::Etcd {
        config: Box::new(config),
        stale_limit,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use kfsec_store::sealed::SealKey;

    use super::*;
    use crate::config::{Overrides, parse, validate};

    struct Vars;
    impl Env for Vars {
        fn var(&self, name: &str) -> Option<String> {
            (name == "ETCD_PASSWORD").then(|| "from-env-s3cret".to_owned())
        }
    }

    /// Loads `store_yaml` (and, when `key` is set, a secretsEncryption key) as a whole config.
    fn load(dir: &Path, store_yaml: &str, key: bool) -> Result<crate::Config, String> {
        let mut yaml = store_yaml.to_owned();
        if key {
            let file = dir.join("kek");
            if !file.exists() {
                SealKey::from_bytes([7; 32])
                    .write_new(&file)
                    .map_err(|e| e.to_string())?;
            }
            yaml.push_str(&format!("secretsEncryption:\n  keyFile: {}\n", file.display()));
        }
        parse(Path::new("c.yaml"), &yaml)
            .map_err(|e| e.to_string())
            .and_then(|f| validate(f, &Overrides::default(), &Vars).map_err(|e| e.to_string()))
    }

    fn refused(dir: &Path, store_yaml: &str, key: bool, wants: &[&str]) {
        let err = load(dir, store_yaml, key).map(|_| ()).unwrap_err();
        for w in wants {
            assert!(err.contains(w), "{store_yaml}: {err:?} should name {w:?}");
        }
    }

    #[test]
    fn etcd_settings_load_with_defaults_and_redb_stays_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(matches!(load(d, "", false).unwrap().store, StoreSettings::Redb));
        assert!(matches!(
            load(d, "store: {type: redb}\n", false).unwrap().store,
            StoreSettings::Redb
        ));
        let c = load(
            d,
            "store:\n  type: etcd\n  endpoints: [http://127.0.0.1:2379, \"http://[::1]:2379\"]\n  username: kfsec\n  passwordEnv: ETCD_PASSWORD\n",
            true,
        )
        .unwrap();
        let StoreSettings::Etcd { config, stale_limit } = &c.store else {
            panic!("etcd expected")
        };
        assert_eq!(*stale_limit, DEFAULT_STALE_LIMIT);
        assert_eq!(config.prefix, "/kfsec");
        assert_eq!(config.password.as_deref(), Some("from-env-s3cret"));
        assert_eq!(config.request_timeout, ETCD_REQUEST_TIMEOUT);
        assert!(
            !format!("{c:?}").contains("from-env-s3cret"),
            "no password in Debug output"
        );
        let c = load(
            d,
            "store: {type: etcd, endpoints: [http://e1:2379], prefix: /team-a/kfsec/, staleLimit: 2s, username: u, password: p}\n",
            true,
        )
        .unwrap();
        let StoreSettings::Etcd { config, stale_limit } = &c.store else {
            panic!("etcd expected")
        };
        assert_eq!(
            (config.prefix.as_str(), *stale_limit),
            ("/team-a/kfsec/", Duration::from_secs(2))
        );
        assert!(!format!("{c:?}").contains("password: p"));
    }

    /// The README's "HA with etcd" example loads as written, its files put in a scratch
    /// directory and its `passwordEnv` set.
    #[test]
    fn the_readmes_etcd_example_loads() {
        let readme = include_str!("../../../../README.md");
        let start = readme.find("### HA with etcd").unwrap();
        let mut yaml = readme[start..]
            .split("```yaml\n")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap()
            .to_owned();
        let dir = tempfile::tempdir().unwrap();
        for name in ["etcd-ca.crt", "etcd-client.crt", "etcd-client.key"] {
            let file = dir.path().join(name);
            std::fs::write(&file, "pem").unwrap();
            yaml = yaml.replace(&format!("/etc/kfsec/{name}"), &file.display().to_string());
        }
        let key = dir.path().join("kek.b64");
        SealKey::from_bytes([9; 32]).write_new(&key).unwrap();
        yaml = yaml.replace("/etc/kfsec/kek.b64", &key.display().to_string());
        struct Password;
        impl Env for Password {
            fn var(&self, name: &str) -> Option<String> {
                (name == "KFSEC_ETCD_PASSWORD").then(|| "pw".to_owned())
            }
        }
        let f = parse(Path::new("kfsec.yaml"), &yaml).unwrap_or_else(|e| panic!("{e}"));
        let c = validate(f, &Overrides::default(), &Password).unwrap_or_else(|e| panic!("{e}"));
        let StoreSettings::Etcd { config, stale_limit } = &c.store else {
            panic!("etcd expected")
        };
        assert_eq!(config.endpoints.len(), 3);
        assert!(config.tls.as_ref().is_some_and(|t| t.key_file.is_some()));
        assert_eq!(
            (config.username.as_deref(), config.password.as_deref()),
            (Some("kfsec"), Some("pw"))
        );
        assert_eq!(*stale_limit, Duration::from_secs(60));
    }

    #[test]
    fn an_endpoint_with_credentials_is_refused_without_repeating_the_password() {
        let dir = tempfile::tempdir().unwrap();
        for e in [
            "http://root:hunter2-etcd@a:2379",
            "https://root:hunter2-etcd@a:2379/path",
            "ftp://root:hunter2-etcd@a:2379",
            "http://root:hunter2-etcd@:2379",
            "http://root:hunter2-etcd@a:99999",
        ] {
            let err = load(
                dir.path(),
                &format!("store: {{type: etcd, endpoints: ['{e}']}}\n"),
                true,
            )
            .map(|_| ())
            .unwrap_err();
            assert!(err.contains("store.endpoints[0]"), "{err}");
            assert!(!err.contains("hunter2-etcd"), "the password is repeated: {err}");
        }
    }

    #[test]
    fn etcd_without_secrets_encryption_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        refused(
            dir.path(),
            "store: {type: etcd, endpoints: [http://127.0.0.1:2379]}\n",
            false,
            &["store.type etcd needs secretsEncryption", "other machines share"],
        );
    }

    #[test]
    fn bad_settings_are_refused_naming_the_setting_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cases: &[(&str, &[&str])] = &[
            (
                "store: {type: etcd, endpoints: [127.0.0.1:2379]}",
                &["store.endpoints[0]", "127.0.0.1:2379"],
            ),
            (
                "store: {type: etcd, endpoints: [http://a:2379, ftp://b:2379]}",
                &["store.endpoints[1]", "ftp://b:2379", "unsupported scheme"],
            ),
            (
                "store: {type: etcd, endpoints: [\"unix:///run/etcd.sock\"]}",
                &["store.endpoints[0]", "unix"],
            ),
            (
                "store: {type: etcd, endpoints: [https://a:2379]}",
                &["store.endpoints[0]", "store.tls"],
            ),
            ("store: {type: etcd, endpoints: [\"http://\"]}", &["store.endpoints[0]"]),
            (
                "store: {type: etcd, endpoints: [http://u:p@a:2379]}",
                &["store.endpoints[0]", "store.username"],
            ),
            (
                "store: {type: etcd, endpoints: [http://a:2379/v3]}",
                &["store.endpoints[0]", "no path"],
            ),
            ("store: {type: etcd}", &["store.endpoints"]),
            (
                "store: {type: etcd, endpoints: [http://a:2379], prefix: /}",
                &["store.prefix"],
            ),
            (
                "store: {type: etcd, endpoints: [http://a:2379], prefix: kfsec}",
                &["store.prefix"],
            ),
            (
                "store: {type: etcd, endpoints: [http://a:2379], username: u}",
                &["username and password"],
            ),
            (
                "store: {type: etcd, endpoints: [http://a:2379], username: u, passwordEnv: NOPE}",
                &["store.passwordEnv", "NOPE"],
            ),
            (
                "store: {type: etcd, endpoints: [http://a:2379], staleLimit: 10ms}",
                &["store.staleLimit"],
            ),
            (
                "store: {type: etcd, endpoints: [http://a:2379], endpoint: x}",
                &["store", "endpoint"],
            ),
            (
                "store: {type: etcd, endpoints: [http://a:2379], tls: {cafile: x}}",
                &["store.tls", "cafile"],
            ),
            ("store: {type: consul}", &["store.type", "consul"]),
            (
                "store: {type: redb, endpoints: [http://a:2379]}",
                &["store.endpoints", "type: etcd"],
            ),
            ("store: {staleLimit: 5s}", &["store.staleLimit", "type: etcd"]),
            (
                "store: {type: etcd, endpoints: [https://a:2379], tls: {caFile: /nonexistent/ca.crt}}",
                &["store.tls.caFile", "/nonexistent/ca.crt"],
            ),
            (
                "store: {type: etcd, endpoints: [https://a:2379], tls: {}}",
                &["store.tls.caFile"],
            ),
        ];
        for (yaml, wants) in cases {
            refused(d, &format!("{yaml}\n"), true, wants);
        }
        let ca = d.join("ca.crt");
        std::fs::write(&ca, "pem").unwrap();
        refused(
            d,
            &format!(
                "store: {{type: etcd, endpoints: [https://a:2379], tls: {{caFile: {}, certFile: {}}}}}\n",
                ca.display(),
                ca.display()
            ),
            true,
            &["certFile and keyFile"],
        );
        refused(
            d,
            &format!(
                "store: {{type: etcd, endpoints: [http://a:2379], tls: {{caFile: {}}}}}\n",
                ca.display()
            ),
            true,
            &["store.endpoints[0]", "https://"],
        );
        assert!(
            load(
                d,
                &format!(
                    "store: {{type: etcd, endpoints: [https://a:2379], tls: {{caFile: {}}}}}\n",
                    ca.display()
                ),
                true
            )
            .is_ok()
        );
    }
}
