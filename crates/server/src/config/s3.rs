//! `s3:` — the S3 gateway: its listener (`addr`, `--s3-addr`), the region clients sign for, the
//! optional base domain for virtual-host-style requests, the upstream store and kfsec's
//! credentials for it, the pipelines bucket and the prefix policy (`s3.policy`).
//!
//! Invariants: the gateway is off when `s3:` is absent; the upstream credentials come from
//! `accessKeyFile`/`secretKeyFile` or the environment (`KFSEC_S3_UPSTREAM_ACCESS_KEY`,
//! `KFSEC_S3_UPSTREAM_SECRET_KEY`), are read now (a missing one fails the start naming the
//! setting, never showing a value) and are never in `Debug` output; every problem names its
//! setting.

use std::net::SocketAddr;
use std::path::PathBuf;

use kfsec_s3::policy::{Access, Policy, Rule};
use kfsec_types::config::S3Config;
use zeroize::Zeroizing;

use super::{ConfigError, Env};

/// The environment variable holding the upstream access key id (when no `accessKeyFile`).
pub const ACCESS_KEY_ENV: &str = "KFSEC_S3_UPSTREAM_ACCESS_KEY";
/// The environment variable holding the upstream secret key (when no `secretKeyFile`).
pub const SECRET_KEY_ENV: &str = "KFSEC_S3_UPSTREAM_SECRET_KEY";

/// The validated `s3:` section.
#[derive(Clone)]
pub struct S3Settings {
    /// Listen address.
    pub addr: SocketAddr,
    /// The region clients sign for.
    pub region: String,
    /// Base domain for virtual-host-style requests.
    pub domain: Option<String>,
    /// The upstream store.
    pub upstream: UpstreamSettings,
    /// Kubeflow Pipelines' bucket.
    pub bucket: String,
    /// The prefix policy.
    pub policy: Policy,
}

/// The validated `s3.upstream:`.
#[derive(Clone)]
pub struct UpstreamSettings {
    /// `http(s)://host[:port]`.
    pub endpoint: url::Url,
    /// The region the store expects.
    pub region: String,
    /// kfsec's access key id at the store.
    pub access_key: String,
    /// kfsec's secret key at the store.
    pub secret_key: Zeroizing<String>,
    /// A CA bundle for an `https://` endpoint.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("addr", &self.addr)
            .field("region", &self.region)
            .field("domain", &self.domain)
            .field("upstream", &self.upstream.endpoint.as_str())
            .field("bucket", &self.bucket)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for UpstreamSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSettings")
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.region)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

fn invalid(msg: String) -> ConfigError {
    ConfigError::Invalid(msg)
}

/// A credential from its file (trimmed of the final newline) or the environment variable.
fn credential(what: &str, file: Option<&String>, var: &str, env: &dyn Env) -> Result<Zeroizing<String>, ConfigError> {
    let value = match file {
        Some(path) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| invalid(format!("s3.upstream.{what}: cannot read {path}: {}", e.kind())))?,
            );
            Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned())
        }
        None => Zeroizing::new(env.var(var).ok_or_else(|| {
            invalid(format!(
                "s3.upstream: give {what} or set the environment variable {var}"
            ))
        })?),
    };
    if value.is_empty() || value.len() > 256 || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(format!(
            "s3.upstream: the {} is empty, too long or holds spaces or control characters",
            if what == "accessKeyFile" {
                "access key"
            } else {
                "secret key"
            }
        )));
    }
    Ok(value)
}

fn region(what: &str, r: &str) -> Result<String, ConfigError> {
    if r.is_empty() || r.len() > 64 || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(invalid(format!("{what} {r:?} is not a region name (like us-east-1)")));
    }
    Ok(r.to_owned())
}

/// Validates `s3:`; `None` when absent (`--s3-addr` without it is an error).
pub fn settings(
    s: Option<&S3Config>,
    addr_flag: Option<&str>,
    env: &dyn Env,
) -> Result<Option<S3Settings>, ConfigError> {
    let Some(s) = s else {
        if addr_flag.is_some() {
            return Err(invalid(
                "--s3-addr needs an s3: section naming the upstream store (s3.upstream.endpoint)".into(),
            ));
        }
        return Ok(None);
    };
    let addr_text = addr_flag.or(s.addr.as_deref()).unwrap_or("127.0.0.1:9000");
    let addr = addr_text
        .parse()
        .map_err(|_| invalid(format!("s3.addr {addr_text:?} is not an address like 127.0.0.1:9000")))?;
    let client_region = region("s3.region", s.region.as_deref().unwrap_or("us-east-1"))?;
    let domain = match s.domain.as_deref() {
        None => None,
        Some(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d.is_empty()
                || d.len() > 200
                || d.split('.').any(|l| {
                    l.is_empty()
                        || l.len() > 63
                        || l.starts_with('-')
                        || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
            {
                return Err(invalid(format!("s3.domain {d:?} is not a DNS name")));
            }
            Some(d)
        }
    };
    let bucket = s.bucket.clone().unwrap_or_else(|| "mlpipeline".into());
    let policy = match &s.policy {
        None => Policy::seaweedfs_default(&bucket),
        Some(rules) => {
            let rules = rules
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let access = match r.access.as_deref() {
                        None | Some("readWrite") => Access::ReadWrite,
                        Some("read") => Access::Read,
                        Some(other) => {
                            return Err(invalid(format!(
                                "s3.policy[{i}].access {other:?}: use read or readWrite"
                            )));
                        }
                    };
                    Ok(Rule {
                        bucket: r.bucket.clone(),
                        prefix: r.prefix.clone(),
                        access,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Policy::new(rules).map_err(|e| invalid(e.0))?
        }
    };
    // The bucket itself is checked like a policy bucket.
    Policy::new(vec![Rule {
        bucket: bucket.clone(),
        prefix: String::new(),
        access: Access::Read,
    }])
    .map_err(|_| invalid(format!("s3.bucket {bucket:?} is not a bucket name")))?;
    let up = s
        .upstream
        .as_ref()
        .ok_or_else(|| invalid("s3.upstream: name the upstream store (endpoint)".into()))?;
    let endpoint_text = up
        .endpoint
        .as_deref()
        .ok_or_else(|| invalid("s3.upstream.endpoint is required (like http://seaweedfs.kubeflow:8333)".into()))?;
    let endpoint =
        url::Url::parse(endpoint_text).map_err(|e| invalid(format!("s3.upstream.endpoint {endpoint_text:?}: {e}")))?;
    if !matches!(endpoint.scheme(), "http" | "https")
        || endpoint.host_str().is_none_or(str::is_empty)
        || !endpoint.username().is_empty()
        || endpoint.password().is_some()
        || endpoint.path() != "/"
        || endpoint.query().is_some()
        || endpoint.fragment().is_some()
    {
        return Err(invalid(format!(
            "s3.upstream.endpoint {:?}: use http(s)://host[:port] with nothing else (credentials go in accessKeyFile/secretKeyFile)",
            format!("{}://{}", endpoint.scheme(), endpoint.host_str().unwrap_or_default())
        )));
    }
    let ca_file = up.ca_file.as_ref().map(PathBuf::from);
    if let Some(ca) = &ca_file {
        if endpoint.scheme() != "https" {
            return Err(invalid("s3.upstream.caFile needs an https:// endpoint".into()));
        }
        std::fs::metadata(ca).map_err(|e| invalid(format!("s3.upstream.caFile {}: {}", ca.display(), e.kind())))?;
    }
    let upstream_region = region(
        "s3.upstream.region",
        up.region.as_deref().unwrap_or(client_region.as_str()),
    )?;
    let access_key = credential("accessKeyFile", up.access_key_file.as_ref(), ACCESS_KEY_ENV, env)?;
    let secret_key = credential("secretKeyFile", up.secret_key_file.as_ref(), SECRET_KEY_ENV, env)?;
    Ok(Some(S3Settings {
        addr,
        region: client_region,
        domain,
        upstream: UpstreamSettings {
            endpoint,
            region: upstream_region,
            access_key: access_key.to_string(),
            secret_key,
            ca_file,
        },
        bucket,
        policy,
    }))
}

/// Applies `--s3-addr` to a loaded configuration (an error without an `s3:` section).
pub fn override_addr(s3: Option<&mut S3Settings>, flag: Option<&str>) -> Result<(), ConfigError> {
    let Some(flag) = flag else { return Ok(()) };
    let Some(s3) = s3 else {
        return Err(invalid(
            "--s3-addr needs an s3: section naming the upstream store (s3.upstream.endpoint)".into(),
        ));
    };
    s3.addr = flag
        .parse()
        .map_err(|_| invalid(format!("--s3-addr {flag:?} is not an address like 127.0.0.1:9000")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Vars(Vec<(&'static str, &'static str)>);
    impl Env for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        }
    }

    fn parse(yaml: &str) -> Result<Option<S3Settings>, ConfigError> {
        let f = super::super::parse(std::path::Path::new("kfsec.yaml"), yaml)?;
        let env = Vars(vec![(ACCESS_KEY_ENV, "AKIAUP"), (SECRET_KEY_ENV, "upstream-secret")]);
        settings(f.s3.as_ref(), None, &env)
    }

    #[test]
    fn the_issue_shape_loads_with_defaults() {
        let s = parse("s3:\n  upstream:\n    endpoint: http://127.0.0.1:5000\n")
            .unwrap()
            .unwrap();
        assert_eq!(s.addr.to_string(), "127.0.0.1:9000");
        assert_eq!(s.region, "us-east-1");
        assert_eq!(s.upstream.region, "us-east-1");
        assert_eq!(s.bucket, "mlpipeline");
        assert_eq!(s.policy, Policy::seaweedfs_default("mlpipeline"));
        assert_eq!(s.upstream.access_key, "AKIAUP");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("upstream-secret") && !shown.contains("AKIAUP"),
            "{shown}"
        );
        let full = parse(
            "s3:\n  addr: 127.0.0.1:0\n  region: eu-west-1\n  domain: s3.example.com\n  bucket: pipelines\n  upstream: {endpoint: 'https://s3.example.net', region: us-west-2}\n  policy:\n  - {bucket: pipelines, prefix: 'private/<ns>/'}\n  - {bucket: models, access: read}\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(full.domain.as_deref(), Some("s3.example.com"));
        assert_eq!(full.upstream.region, "us-west-2");
        assert_eq!(full.policy.rules().len(), 2);
        assert_eq!(full.policy.rules()[1].access, Access::Read);
    }

    #[test]
    fn absent_is_off_and_unknown_or_bad_keys_are_refused_with_the_reason() {
        assert!(parse("").unwrap().is_none());
        let err = |yaml: &str| parse(yaml).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err("s3:\n  upstream: {endpoint: http://x}\n  buckets: a\n").contains("unknown field `buckets`"));
        assert!(err("s3:\n  upstream: {endpoint: http://x, secretKey: s}\n").contains("unknown field `secretKey`"));
        assert!(err("s3: {}\n").contains("s3.upstream"));
        assert!(err("s3:\n  upstream: {endpoint: 'ftp://x'}\n").contains("s3.upstream.endpoint"));
        let with_creds = err("s3:\n  upstream: {endpoint: 'http://AK:SECRET@x'}\n");
        assert!(
            with_creds.contains("s3.upstream.endpoint") && !with_creds.contains("SECRET"),
            "{with_creds}"
        );
        assert!(err("s3:\n  upstream: {endpoint: http://x}\n  addr: nine\n").contains("s3.addr"));
        assert!(err("s3:\n  upstream: {endpoint: http://x}\n  domain: 'a..b'\n").contains("s3.domain"));
        assert!(
            err("s3:\n  upstream: {endpoint: http://x}\n  policy: [{bucket: b1b, prefix: x}]\n")
                .contains("s3.policy[0].prefix")
        );
        assert!(
            err("s3:\n  upstream: {endpoint: http://x}\n  policy: [{bucket: b1b, access: all}]\n")
                .contains("s3.policy[0].access")
        );
        let f = super::super::parse(std::path::Path::new("k"), "s3:\n  upstream: {endpoint: http://x}\n").unwrap();
        let missing = settings(f.s3.as_ref(), None, &Vars(vec![]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(missing.contains(ACCESS_KEY_ENV), "{missing}");
        assert!(settings(None, Some("127.0.0.1:9000"), &Vars(vec![])).is_err());
    }

    /// The README's `s3:` example loads as written (its key files stood in).
    #[test]
    fn the_readmes_s3_example_loads() {
        let readme = include_str!("../../../../README.md");
        let start = readme.find("### Object storage").unwrap();
        let block = readme[start..]
            .split("```yaml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .unwrap_or_default();
        assert!(block.starts_with("s3:"), "{block}");
        let dir = tempfile::tempdir().unwrap();
        let mut yaml = block.to_owned();
        for name in ["s3-access-key", "s3-secret-key"] {
            let file = dir.path().join(name);
            std::fs::write(&file, format!("{name}-value\n")).unwrap();
            yaml = yaml.replace(&format!("/etc/kfsec/{name}"), &file.display().to_string());
        }
        let f = super::super::parse(std::path::Path::new("k"), &yaml).unwrap();
        let got = settings(f.s3.as_ref(), None, &Vars(vec![])).unwrap().unwrap();
        assert_eq!(got.domain.as_deref(), Some("s3.example.com"));
        assert_eq!(got.upstream.access_key, "s3-access-key-value");
        assert_eq!(got.policy.rules().len(), 4);
        assert_eq!(got.policy.rules()[3].access, Access::Read);
    }

    #[test]
    fn credentials_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, s) = (dir.path().join("ak"), dir.path().join("sk"));
        std::fs::write(&a, "AKFILE\n").unwrap();
        std::fs::write(&s, "secret-from-file\n").unwrap();
        let yaml = format!(
            "s3:\n  upstream: {{endpoint: http://x, accessKeyFile: {}, secretKeyFile: {}}}\n",
            a.display(),
            s.display()
        );
        let f = super::super::parse(std::path::Path::new("k"), &yaml).unwrap();
        let got = settings(f.s3.as_ref(), Some("127.0.0.1:9100"), &Vars(vec![]))
            .unwrap()
            .unwrap();
        assert_eq!(got.upstream.access_key, "AKFILE");
        assert_eq!(got.upstream.secret_key.as_str(), "secret-from-file");
        assert_eq!(got.addr.port(), 9100);
    }
}
