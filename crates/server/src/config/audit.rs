//! `audit:` — the audit policy (`policyFile`, read and checked now), the log file backend (on by
//! default at `<dataDir>/audit/audit.log`; `path: ""` turns it off, `-` is stdout) and the
//! webhook backend (`url`, `caFile`).
//!
//! Invariants: every problem names its setting; the policy file is parsed at load, so a bad one
//! fails the start naming the field; a webhook URL is `https://`, or `http://` only to a
//! loopback address (events are not sent in the clear over a network); its user information is
//! never repeated in a message.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kfsec_audit::Policy;
use kfsec_audit::log::{LogSettings, LogTarget};
use kfsec_audit::webhook::WebhookSettings;
use kfsec_types::config::{AuditConfig, AuditWebhookConfig};

use super::ConfigError;

/// The validated `audit:` section.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The policy (the default one without `policyFile`).
    pub policy: Policy,
    /// The log backend; `None`: off.
    pub log: Option<LogSettings>,
    /// The webhook backend; `None`: off.
    pub webhook: Option<WebhookSettings>,
}

impl AuditSettings {
    /// Whether any backend is on.
    pub fn enabled(&self) -> bool {
        self.log.is_some() || self.webhook.is_some()
    }

    /// `--audit-log-path`: replaces `audit.log.path` (`-` stdout, `""` off).
    pub fn set_log_path(&mut self, path: &str) {
        let target = match path {
            "" => None,
            "-" => Some(LogTarget::Stdout),
            p => Some(LogTarget::File(PathBuf::from(p))),
        };
        self.log = match (target, self.log.take()) {
            (None, _) => None,
            (Some(t), Some(mut l)) => {
                l.target = t;
                Some(l)
            }
            (Some(t), None) => Some(LogSettings::new(t)),
        };
    }
}

/// The default log file under the data directory.
pub fn default_log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit").join("audit.log")
}

fn invalid(msg: String) -> ConfigError {
    ConfigError::Invalid(msg)
}

/// A collector's `{url, caFile}` (`field` names it in messages): `https://`, or `http://` to a
/// loopback address; no user information; the CA file exists.
fn endpoint(field: &str, w: &AuditWebhookConfig) -> Result<WebhookSettings, ConfigError> {
    let bad = |why: &str| invalid(format!("{field}.url: {why}"));
    let u = url::Url::parse(&w.url).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad("no user or password in the URL"));
    }
    let loopback = match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match u.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(bad("use https:// (http:// only to a loopback collector)")),
        s => return Err(bad(&format!("unsupported scheme {s:?}"))),
    }
    if u.fragment().is_some() {
        return Err(bad("no #fragment"));
    }
    let url: http::Uri = u.as_str().parse().map_err(|_| bad("not a valid URI"))?;
    let ca_file = w.ca_file.as_ref().map(PathBuf::from);
    if let Some(f) = &ca_file
        && let Err(e) = std::fs::metadata(f)
    {
        return Err(invalid(format!("{field}.caFile {}: {e}", f.display())));
    }
    Ok(WebhookSettings { url, ca_file })
}

/// Validates `audit:` (absent: the default policy, the log at its default path).
pub fn settings(a: Option<&AuditConfig>, data_dir: &Path) -> Result<AuditSettings, ConfigError> {
    let default = AuditConfig::default();
    let a = a.unwrap_or(&default);
    let policy = match &a.policy_file {
        None => Policy::default_policy(),
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| invalid(format!("audit.policyFile {f}: {e}")))?;
            Policy::parse(&text).map_err(|e| invalid(format!("audit.policyFile {f}: {e}")))?
        }
    };
    let l = a.log.clone().unwrap_or_default();
    let log = match l.path.as_deref() {
        Some("") => None,
        path => {
            let target = match path {
                Some("-") => LogTarget::Stdout,
                Some(p) => LogTarget::File(PathBuf::from(p)),
                None => LogTarget::File(default_log_path(data_dir)),
            };
            let mut s = LogSettings::new(target);
            if let Some(v) = l.max_size_mb {
                s.max_size_mb = v;
            }
            if let Some(v) = l.max_backups {
                s.max_backups = v;
            }
            if let Some(v) = l.max_age_days {
                s.max_age_days = v;
            }
            if let Some(v) = l.checkpoint_lines {
                if v == 0 {
                    return Err(invalid("audit.log.checkpointLines must be at least 1".into()));
                }
                s.checkpoint_lines = v;
            }
            s.witness = l
                .witness
                .as_ref()
                .map(|w| endpoint("audit.log.witness", w))
                .transpose()?;
            if let Some(v) = l.checkpoint_interval {
                if v < Duration::from_millis(100) {
                    return Err(invalid("audit.log.checkpointInterval must be at least 100ms".into()));
                }
                s.checkpoint_interval = v;
            }
            Some(s)
        }
    };
    let webhook = a.webhook.as_ref().map(|w| endpoint("audit.webhook", w)).transpose()?;
    Ok(AuditSettings { policy, log, webhook })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overrides, parse, validate};

    struct NoEnv;
    impl crate::config::Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn load(yaml: &str) -> Result<AuditSettings, String> {
        let f = parse(Path::new("t.yaml"), &format!("apiVersion: kfsec/v1\n{yaml}")).map_err(|e| e.to_string())?;
        let o = Overrides {
            data_dir: Some("/d".into()),
            ..Default::default()
        };
        validate(f, &o, &NoEnv).map(|c| c.audit).map_err(|e| e.to_string())
    }

    #[test]
    fn audit_is_on_by_default_in_the_data_dir_with_kubernetes_rotation_defaults() {
        let a = load("").unwrap_or_else(|e| panic!("{e}"));
        let log = a.log.unwrap_or_else(|| panic!("log off"));
        assert_eq!(log.target, LogTarget::File("/d/audit/audit.log".into()));
        assert_eq!((log.max_size_mb, log.max_backups, log.max_age_days), (100, 100, 366));
        assert!(a.webhook.is_none());
        let off = load("audit: {log: {path: \"\"}}").unwrap_or_else(|e| panic!("{e}"));
        assert!(!off.enabled());
        let mut flag = off.clone();
        flag.set_log_path("/var/log/kfsec/audit.log");
        assert_eq!(
            flag.log.map(|l| l.target),
            Some(LogTarget::File("/var/log/kfsec/audit.log".into()))
        );
        let s = load("audit: {log: {path: '-', maxSizeMB: 5, maxBackups: 2, maxAgeDays: 1, checkpointLines: 10, checkpointInterval: 2s}}")
            .unwrap_or_else(|e| panic!("{e}"));
        let log = s.log.unwrap_or_else(|| panic!("log off"));
        assert_eq!(log.target, LogTarget::Stdout);
        assert_eq!(
            (log.max_size_mb, log.max_backups, log.max_age_days, log.checkpoint_lines),
            (5, 2, 1, 10)
        );
        assert_eq!(log.checkpoint_interval, Duration::from_secs(2));
    }

    #[test]
    fn bad_audit_settings_are_refused_naming_the_setting() {
        let e = |y: &str| load(y).err().unwrap_or_default();
        assert!(
            e("audit: {log: {maxSize: 3}}").contains("audit.log"),
            "{}",
            e("audit: {log: {maxSize: 3}}")
        );
        assert!(e("audit: {policy: x}").contains("audit"));
        assert!(e("audit: {policyFile: /nonexistent/p.yaml}").contains("audit.policyFile /nonexistent/p.yaml"));
        assert!(e("audit: {webhook: {url: 'http://collector.example.com/'}}").contains("https"));
        assert!(e("audit: {webhook: {url: 'https://u:secret@c.example.com/'}}").contains("audit.webhook.url"));
        assert!(!e("audit: {webhook: {url: 'https://u:secret@c.example.com/'}}").contains("secret"));
        assert!(e("audit: {webhook: {url: 'https://c.example.com/', caFile: /nonexistent.pem}}").contains("caFile"));
        assert!(e("audit: {log: {checkpointLines: 0}}").contains("checkpointLines"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("p.yaml");
        std::fs::write(
            &p,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n  usr: [a]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let msg = e(&format!("audit: {{policyFile: {}}}", p.display()));
        assert!(msg.contains("rules[0]") && msg.contains("usr"), "{msg}");
        assert!(load("audit: {webhook: {url: 'http://127.0.0.1:9/'}}").is_ok_and(|a| a.webhook.is_some()));
        assert!(e("audit: {log: {witness: {url: 'http://w.example.com/'}}}").contains("audit.log.witness.url"));
        assert!(
            load("audit: {log: {witness: {url: 'https://w.example.com/cp'}}}")
                .is_ok_and(|a| a.log.is_some_and(|l| l.witness.is_some()))
        );
    }

    /// The README's "Audit log" configuration example loads as written (its files stood in).
    #[test]
    fn the_readmes_audit_example_loads() {
        let readme = include_str!("../../../../README.md");
        let start = readme
            .find("### Audit log")
            .unwrap_or_else(|| panic!("no Audit log section"));
        let block = readme[start..]
            .split("```yaml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .unwrap_or_default();
        assert!(block.starts_with("audit:"), "{block}");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let policy = dir.path().join("audit-policy.yaml");
        std::fs::write(
            &policy,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ca = dir.path().join("siem-ca.pem");
        std::fs::write(&ca, "").unwrap_or_else(|e| panic!("{e}"));
        let yaml = block
            .replace("audit-policy.yaml", &policy.display().to_string())
            .replace("siem-ca.pem", &ca.display().to_string());
        let a = load(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let log = a.log.unwrap_or_else(|| panic!("log off"));
        assert_eq!(log.target, LogTarget::File("/var/log/kfsec/audit.log".into()));
        assert!(a.webhook.is_some());
    }
}
