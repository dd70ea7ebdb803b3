//! The `ldap` connector's settings: Dex's fields as Dex spells them and defaults them, checked
//! all at once (every problem with its path), the search filters built from them, and the
//! rustls client configuration its TLS fields describe.
//!
//! Invariants: an unknown key is a problem (with the exact spelling when only the case
//! differs); values are escaped into filters exactly once (RFC 4515); settings that would make
//! every login fail, or give every user the same email (`emailSuffix` without `nameAttr`), are
//! refused at startup; TLS trusts only `rootCA`/`rootCAData` when given (else the system's
//! roots) and skips verification only with `insecureSkipVerify`; the bind password lives in a
//! zeroized string and never in `Debug` output.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ldap3::{Scope, ldap_escape};
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::version::{TLS12, TLS13};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::connector::config::{ConfigProblem, OpenContext, parse, unknown_keys};

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawConfig {
    host: String,
    #[serde(rename = "insecureNoSSL")]
    insecure_no_ssl: bool,
    insecure_skip_verify: bool,
    #[serde(rename = "startTLS")]
    start_tls: bool,
    #[serde(rename = "rootCA")]
    root_ca: String,
    #[serde(rename = "rootCAData")]
    root_ca_data: String,
    client_cert: String,
    client_key: String,
    #[serde(rename = "bindDN")]
    bind_dn: String,
    #[serde(rename = "bindPW", deserialize_with = "secret")]
    bind_pw: Zeroizing<String>,
    username_prompt: String,
    user_search: RawUserSearch,
    group_search: RawGroupSearch,
    /// kfsec's own: bounds connecting and each directory operation (Go duration).
    #[serde(deserialize_with = "kfsec_types::config::opt_duration")]
    timeout: Option<Duration>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawUserSearch {
    #[serde(rename = "baseDN")]
    base_dn: String,
    filter: String,
    #[serde(deserialize_with = "one_or_many")]
    username: Vec<String>,
    scope: String,
    id_attr: String,
    email_attr: String,
    name_attr: String,
    preferred_username_attr: String,
    email_suffix: String,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawGroupSearch {
    #[serde(rename = "baseDN")]
    base_dn: String,
    filter: String,
    scope: String,
    user_attr: String,
    group_attr: String,
    recursion_group_attr: String,
    user_matchers: Vec<RawMatcher>,
    name_attr: String,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawMatcher {
    user_attr: String,
    group_attr: String,
    recursion_group_attr: String,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

const TOP_KEYS: [&str; 14] = [
    "host",
    "insecureNoSSL",
    "insecureSkipVerify",
    "startTLS",
    "rootCA",
    "rootCAData",
    "clientCert",
    "clientKey",
    "bindDN",
    "bindPW",
    "usernamePrompt",
    "userSearch",
    "groupSearch",
    "timeout",
];
const USER_KEYS: [&str; 9] = [
    "baseDN",
    "filter",
    "username",
    "scope",
    "idAttr",
    "emailAttr",
    "nameAttr",
    "preferredUsernameAttr",
    "emailSuffix",
];
const GROUP_KEYS: [&str; 8] = [
    "baseDN",
    "filter",
    "scope",
    "userAttr",
    "groupAttr",
    "recursionGroupAttr",
    "userMatchers",
    "nameAttr",
];
const MATCHER_KEYS: [&str; 3] = ["userAttr", "groupAttr", "recursionGroupAttr"];

/// Dex master's `userSearch.username`: one attribute, or a list OR-combined.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(Vec::new()),
        serde_json::Value::String(s) if s.is_empty() => Ok(Vec::new()),
        serde_json::Value::String(s) => Ok(vec![s]),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(serde::de::Error::custom(
                    "username must be a string or a list of strings",
                )),
            })
            .collect(),
        _ => Err(serde::de::Error::custom(
            "username must be a string or a list of strings",
        )),
    }
}

fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(d).map(Zeroizing::new)
}

/// Go's JSON decoding leaves a field at its zero value for `null` (YAML's `filter:` with nothing
/// after it); serde would refuse it, so nulls are dropped before parsing.
fn drop_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Unknown keys of one level, with a hint when only the letter case differs (Go's JSON decoder
/// matches keys case-insensitively; kfsec wants Dex's spelling).
fn unknown(prefix: &str, extra: &BTreeMap<String, serde_json::Value>, known: &[&str]) -> Vec<ConfigProblem> {
    let hints: Vec<(String, String)> = extra
        .keys()
        .filter_map(|k| {
            known
                .iter()
                .find(|n| !n.is_empty() && n.eq_ignore_ascii_case(k))
                .map(|n| (k.clone(), format!("Dex spells it {n:?}")))
        })
        .collect();
    let mut hints: Vec<(&str, &str)> = hints.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    hints.push((
        "kerberos",
        "Dex master's SPNEGO (Kerberos) login, which kfsec does not implement: users type their password",
    ));
    unknown_keys("ldap", prefix, extra, &hints)
}

/// One attribute to group matcher (Dex's `UserMatcher`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Matcher {
    pub(super) user_attr: String,
    pub(super) group_attr: String,
    pub(super) recursion_group_attr: String,
}

#[derive(Debug, Clone)]
pub(super) struct UserSearch {
    pub(super) base_dn: String,
    pub(super) filter: String,
    pub(super) username: Vec<String>,
    pub(super) scope: Scope,
    pub(super) id_attr: String,
    pub(super) email_attr: String,
    pub(super) name_attr: String,
    pub(super) preferred_username_attr: String,
    pub(super) email_suffix: String,
}

#[derive(Debug, Clone)]
pub(super) struct GroupSearch {
    pub(super) base_dn: String,
    pub(super) filter: String,
    pub(super) scope: Scope,
    pub(super) matchers: Vec<Matcher>,
    pub(super) name_attr: String,
}

/// A connector's validated settings.
pub(super) struct Settings {
    pub(super) id: String,
    pub(super) url: url::Url,
    pub(super) host: String,
    pub(super) tls: Option<Arc<ClientConfig>>,
    pub(super) start_tls: bool,
    pub(super) bind_dn: String,
    pub(super) bind_pw: Zeroizing<String>,
    pub(super) prompt: String,
    pub(super) timeout: Duration,
    pub(super) user: UserSearch,
    pub(super) groups: Option<GroupSearch>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("id", &self.id)
            .field("url", &self.url.as_str())
            .field("tls", &self.tls.is_some())
            .field("start_tls", &self.start_tls)
            .field("bind_dn", &self.bind_dn)
            .field("timeout", &self.timeout)
            .field("user", &self.user)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

fn scope(field: &str, value: &str, problems: &mut Vec<ConfigProblem>) -> Scope {
    match value {
        "" | "sub" => Scope::Subtree,
        "one" => Scope::OneLevel,
        other => {
            problems.push(ConfigProblem::new(
                field,
                format!("unknown value {other:?}: use sub (the default) or one"),
            ));
            Scope::Subtree
        }
    }
}

/// `(&<filter><inner>)`, or `inner` alone without a filter (Dex's composition).
fn and_filter(filter: &str, inner: &str) -> String {
    if filter.is_empty() {
        inner.to_owned()
    } else {
        format!("(&{filter}{inner})")
    }
}

/// The user search filter for `username` (escaped here, once).
pub(super) fn user_filter(search: &UserSearch, username: &str) -> String {
    let value = ldap_escape(username);
    let inner = if search.username.len() == 1 {
        format!("({}={value})", search.username[0])
    } else {
        let alts: String = search.username.iter().map(|a| format!("({a}={value})")).collect();
        format!("(|{alts})")
    };
    and_filter(&search.filter, &inner)
}

/// The group search filter for one value of a user (or group) attribute (escaped here, once).
pub(super) fn group_filter(search: &GroupSearch, group_attr: &str, value: &str) -> String {
    and_filter(&search.filter, &format!("({group_attr}={})", ldap_escape(value)))
}

fn check_filter(field: &str, filter: &str, problems: &mut Vec<ConfigProblem>) {
    if ldap3::parse_filter(filter).is_err() {
        problems.push(ConfigProblem::new(
            field,
            format!(
                "{filter:?} is not a valid LDAP search filter (RFC 4515): write it in parentheses, e.g. (objectClass=person)"
            ),
        ));
    }
}

/// Dex's `host`: `host[:port]`, port 636 by default (389 with `insecureNoSSL`). Returns the URL
/// and the host part (the TLS server name).
fn parse_host(raw: &RawConfig, problems: &mut Vec<ConfigProblem>) -> Option<(url::Url, String)> {
    let host = raw.host.trim();
    if host.is_empty() {
        problems.push(ConfigProblem::new(
            "host",
            "required (host or host:port of the LDAP server)",
        ));
        return None;
    }
    let bad = || {
        ConfigProblem::new(
            "host",
            format!("{host:?} is not host or host:port (no scheme, path or user)"),
        )
    };
    if host.contains(['/', '@', '?', '#', ' ']) {
        problems.push(bad());
        return None;
    }
    let default_port = if raw.insecure_no_ssl { 389 } else { 636 };
    let scheme = if raw.insecure_no_ssl || raw.start_tls {
        "ldap"
    } else {
        "ldaps"
    };
    let Ok(mut url) = url::Url::parse(&format!("{scheme}://{host}")) else {
        problems.push(bad());
        return None;
    };
    let Some(name) = url.host_str().map(str::to_owned) else {
        problems.push(bad());
        return None;
    };
    if url.port().is_none() && url.set_port(Some(default_port)).is_err() {
        problems.push(bad());
        return None;
    }
    if matches!(url.host(), Some(url::Host::Ipv6(_))) && !raw.insecure_no_ssl {
        // The LDAP library names the TLS server by the URL's host, which is `[…]` here.
        problems.push(ConfigProblem::new(
            "host",
            format!("{host:?}: TLS to an IPv6 address is not supported; use the directory's DNS name"),
        ));
        return None;
    }
    let name = name.trim_start_matches('[').trim_end_matches(']').to_owned();
    Some((url, name))
}

/// Accepts any certificate but still checks the handshake signatures (Go's
/// `InsecureSkipVerify`).
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `rootCAData` is Go `[]byte`: base64 of a PEM bundle in JSON (a PEM text is accepted too).
fn root_ca_data(data: &str) -> Result<Vec<u8>, String> {
    let trimmed = data.trim();
    if trimmed.starts_with("-----BEGIN") {
        return Ok(trimmed.as_bytes().to_vec());
    }
    let compact: String = trimmed.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD
        .decode(compact)
        .map_err(|e| format!("not base64 of a PEM bundle: {e}"))
}

/// The rustls client config Dex's TLS fields describe (aws-lc-rs, TLS 1.3 and 1.2): only the
/// `rootCA`/`rootCAData` roots when given, else the system's; the client certificate when both
/// `clientCert` and `clientKey` are set.
fn tls_config(raw: &RawConfig, problems: &mut Vec<ConfigProblem>) -> Option<Arc<ClientConfig>> {
    let provider = kfsec_pki::crypto_provider();
    let mut roots = RootCertStore::empty();
    let custom = if !raw.root_ca_data.trim().is_empty() {
        Some(("rootCAData", root_ca_data(&raw.root_ca_data)))
    } else if !raw.root_ca.trim().is_empty() {
        Some((
            "rootCA",
            std::fs::read(raw.root_ca.trim()).map_err(|e| format!("cannot read {:?}: {e}", raw.root_ca.trim())),
        ))
    } else {
        None
    };
    match custom {
        Some((field, Ok(pem))) => {
            let mut found = 0;
            for der in CertificateDer::pem_slice_iter(&pem) {
                match der
                    .map_err(|e| e.to_string())
                    .and_then(|d| roots.add(d).map_err(|e| e.to_string()))
                {
                    Ok(()) => found += 1,
                    Err(e) => problems.push(ConfigProblem::new(field, format!("bad certificate: {e}"))),
                }
            }
            if found == 0 {
                problems.push(ConfigProblem::new(field, "no certificates found (expected PEM)"));
            }
        }
        Some((field, Err(e))) => problems.push(ConfigProblem::new(field, e)),
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 && !raw.insecure_skip_verify && !raw.insecure_no_ssl {
                tracing::warn!(
                    "ldap connector: no rootCA/rootCAData and no system CA certificates found; TLS to {} will fail",
                    raw.host
                );
            }
        }
    }
    let builder = match ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(&[&TLS13, &TLS12])
    {
        Ok(b) => b,
        Err(e) => {
            problems.push(ConfigProblem::new("", format!("TLS setup failed: {e}")));
            return None;
        }
    };
    let builder = if raw.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
    } else {
        builder.with_root_certificates(roots)
    };
    let cert = raw.client_cert.trim();
    let key = raw.client_key.trim();
    let config = match (cert.is_empty(), key.is_empty()) {
        (true, true) => builder.with_no_client_auth(),
        (false, true) | (true, false) => {
            let (set, unset) = if cert.is_empty() {
                ("clientKey", "clientCert")
            } else {
                ("clientCert", "clientKey")
            };
            problems.push(ConfigProblem::new(
                unset,
                format!("{set} is set but {unset} is not: set both (a client certificate and its key) or neither"),
            ));
            return None;
        }
        (false, false) => match client_identity(cert, key) {
            Ok((certs, key)) => match builder.with_client_auth_cert(certs, key) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(ConfigProblem::new("clientKey", format!("unusable client key: {e}")));
                    return None;
                }
            },
            Err(p) => {
                problems.push(p);
                return None;
            }
        },
    };
    Some(Arc::new(config))
}

type ClientIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_identity(cert_path: &str, key_path: &str) -> Result<ClientIdentity, ConfigProblem> {
    let cert_pem = std::fs::read_to_string(cert_path)
        .map_err(|e| ConfigProblem::new("clientCert", format!("cannot read {cert_path:?}: {e}")))?;
    let key_pem = Zeroizing::new(
        std::fs::read_to_string(key_path)
            .map_err(|e| ConfigProblem::new("clientKey", format!("cannot read {key_path:?}: {e}")))?,
    );
    // Proves the key matches the certificate (and both parse).
    kfsec_pki::load_certified_key(&cert_pem, &key_pem)
        .map_err(|e| ConfigProblem::new("clientCert", format!("client certificate and key are unusable: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigProblem::new("clientCert", format!("bad PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| ConfigProblem::new("clientKey", format!("bad PEM: {e}")))?;
    Ok((certs, key))
}

/// `userSearch`, checked: every problem into `problems`.
fn user_search(us: &RawUserSearch, problems: &mut Vec<ConfigProblem>) -> UserSearch {
    let search = UserSearch {
        base_dn: us.base_dn.clone(),
        filter: us.filter.clone(),
        username: us.username.clone(),
        scope: scope("userSearch.scope", &us.scope, problems),
        id_attr: us.id_attr.clone(),
        email_attr: us.email_attr.clone(),
        name_attr: us.name_attr.clone(),
        preferred_username_attr: us.preferred_username_attr.clone(),
        email_suffix: us.email_suffix.clone(),
    };
    if us.base_dn.is_empty() {
        problems.push(ConfigProblem::new(
            "userSearch.baseDN",
            "required (where users are searched)",
        ));
    }
    if us.username.is_empty() || us.username.iter().any(String::is_empty) {
        problems.push(ConfigProblem::new(
            "userSearch.username",
            "required: the attribute (or list of attributes) the login name is matched against, e.g. uid",
        ));
    } else {
        let field = if us.filter.is_empty() {
            "userSearch.username"
        } else {
            "userSearch.filter"
        };
        check_filter(field, &user_filter(&search, "x"), problems);
    }
    if us.id_attr.is_empty() {
        problems.push(ConfigProblem::new(
            "userSearch.idAttr",
            "required: the attribute that identifies a user for good (e.g. uid; sAMAccountName on Active Directory); Dex fails every login without it",
        ));
    }
    if us.email_suffix.is_empty() && us.email_attr.is_empty() {
        problems.push(ConfigProblem::new(
            "userSearch.emailAttr",
            "required (it becomes the email claim, the Kubeflow user), unless emailSuffix is set",
        ));
    }
    if !us.email_suffix.is_empty() && us.name_attr.is_empty() {
        problems.push(ConfigProblem::new(
            "userSearch.emailSuffix",
            "needs userSearch.nameAttr: the email is <nameAttr value>@<emailSuffix> (without nameAttr every user would be the same \"@suffix\")",
        ));
    }
    if us.email_suffix.starts_with('@') {
        problems.push(ConfigProblem::new("userSearch.emailSuffix", "write it without the @"));
    }
    search
}

/// Dex's matcher choice: `userMatchers` when the first has a `userAttr`, else the deprecated
/// flat `userAttr`/`groupAttr`/`recursionGroupAttr`.
fn matchers(id: &str, gs: &RawGroupSearch, problems: &mut Vec<ConfigProblem>) -> Vec<Matcher> {
    if gs.user_matchers.first().is_some_and(|m| !m.user_attr.is_empty()) {
        if !gs.user_attr.is_empty() || !gs.group_attr.is_empty() {
            tracing::warn!(
                "ldap connector {id:?}: groupSearch.userAttr/groupAttr are ignored because userMatchers is set (as in Dex)"
            );
        }
        return gs
            .user_matchers
            .iter()
            .map(|m| Matcher {
                user_attr: m.user_attr.clone(),
                group_attr: m.group_attr.clone(),
                recursion_group_attr: m.recursion_group_attr.clone(),
            })
            .collect();
    }
    if gs.user_attr.is_empty() && gs.group_attr.is_empty() {
        if !gs.user_matchers.is_empty() {
            problems.push(ConfigProblem::new(
                "groupSearch.userMatchers[0].userAttr",
                "required: the user attribute whose values the groups' groupAttr holds (DN for the entry's DN)",
            ));
        }
        return Vec::new();
    }
    if !gs.base_dn.is_empty() {
        tracing::warn!(
            "ldap connector {id:?}: groupSearch.userAttr/groupAttr are deprecated in Dex: use groupSearch.userMatchers"
        );
    }
    vec![Matcher {
        user_attr: gs.user_attr.clone(),
        group_attr: gs.group_attr.clone(),
        recursion_group_attr: gs.recursion_group_attr.clone(),
    }]
}

/// `groupSearch`, checked (`None`: no `baseDN`, so no groups, as in Dex).
fn group_search(id: &str, gs: &RawGroupSearch, problems: &mut Vec<ConfigProblem>) -> Option<GroupSearch> {
    let search = GroupSearch {
        base_dn: gs.base_dn.clone(),
        filter: gs.filter.clone(),
        scope: scope("groupSearch.scope", &gs.scope, problems),
        matchers: matchers(id, gs, problems),
        name_attr: gs.name_attr.clone(),
    };
    if gs.base_dn.is_empty() {
        if !search.matchers.is_empty() || !gs.name_attr.is_empty() {
            tracing::warn!("ldap connector {id:?}: groupSearch has no baseDN, so users get no groups (as in Dex)");
        }
        return None;
    }
    if gs.name_attr.is_empty() {
        problems.push(ConfigProblem::new(
            "groupSearch.nameAttr",
            "required with groupSearch.baseDN: the group attribute that becomes the group name, e.g. cn",
        ));
    }
    if search.matchers.is_empty() {
        problems.push(ConfigProblem::new(
            "groupSearch.userMatchers",
            "required with groupSearch.baseDN: at least one {userAttr, groupAttr} pair, e.g. {userAttr: DN, groupAttr: member}",
        ));
    }
    let legacy = gs.user_matchers.is_empty();
    for (i, m) in search.matchers.iter().enumerate() {
        let at = |f: &str| {
            if legacy {
                format!("groupSearch.{f}")
            } else {
                format!("groupSearch.userMatchers[{i}].{f}")
            }
        };
        if m.user_attr.is_empty() {
            problems.push(ConfigProblem::new(at("userAttr"), "required (DN for the entry's DN)"));
        }
        if m.group_attr.is_empty() {
            problems.push(ConfigProblem::new(
                at("groupAttr"),
                "required, e.g. member or memberUid",
            ));
        } else {
            check_filter(&at("groupAttr"), &group_filter(&search, &m.group_attr, "x"), problems);
        }
        if !m.recursion_group_attr.is_empty() {
            check_filter(
                &at("recursionGroupAttr"),
                &group_filter(&search, &m.recursion_group_attr, "x"),
                problems,
            );
        }
    }
    Some(search)
}

pub(super) fn settings(id: &str, config: serde_json::Value, ctx: &OpenContext) -> Result<Settings, Vec<ConfigProblem>> {
    let mut config = config;
    drop_nulls(&mut config);
    let raw: RawConfig = parse(config)?;
    let mut problems = Vec::new();
    problems.extend(unknown("", &raw.extra, &TOP_KEYS));
    problems.extend(unknown("userSearch.", &raw.user_search.extra, &USER_KEYS));
    problems.extend(unknown("groupSearch.", &raw.group_search.extra, &GROUP_KEYS));
    for (i, m) in raw.group_search.user_matchers.iter().enumerate() {
        problems.extend(unknown(
            &format!("groupSearch.userMatchers[{i}]."),
            &m.extra,
            &MATCHER_KEYS,
        ));
    }

    let target = parse_host(&raw, &mut problems);
    if raw.insecure_no_ssl {
        tracing::warn!(
            "ldap connector {id:?}: insecureNoSSL is set: passwords and directory data cross the network in clear text to {}",
            raw.host
        );
        if raw.start_tls {
            tracing::warn!("ldap connector {id:?}: startTLS has no effect with insecureNoSSL (as in Dex)");
        }
    } else if raw.insecure_skip_verify {
        tracing::warn!("ldap connector {id:?}: insecureSkipVerify is set: the directory's certificate is not checked");
    }
    let tls = if raw.insecure_no_ssl {
        None
    } else {
        tls_config(&raw, &mut problems)
    };

    if raw.bind_dn.is_empty() != raw.bind_pw.is_empty() {
        let msg = if raw.bind_dn.is_empty() {
            "bindPW is set but bindDN is not: set both for a service account, or neither for an anonymous bind"
        } else {
            "bindDN is set but bindPW is empty (an unset $VAR expands to nothing): set both for a service account, or neither for an anonymous bind"
        };
        problems.push(ConfigProblem::new(
            if raw.bind_dn.is_empty() { "bindDN" } else { "bindPW" },
            msg,
        ));
    }

    let user = user_search(&raw.user_search, &mut problems);
    let groups = group_search(id, &raw.group_search, &mut problems);

    let timeout = raw.timeout.unwrap_or(ctx.default_timeout);
    if timeout.is_zero() {
        problems.push(ConfigProblem::new("timeout", "must be more than 0 (e.g. 10s)"));
    }

    match target {
        Some((url, host)) if problems.is_empty() => Ok(Settings {
            id: id.to_owned(),
            url,
            host,
            tls,
            start_tls: raw.start_tls && !raw.insecure_no_ssl,
            bind_dn: raw.bind_dn.clone(),
            bind_pw: raw.bind_pw.clone(),
            prompt: if raw.username_prompt.is_empty() {
                "Username".into()
            } else {
                raw.username_prompt.clone()
            },
            timeout,
            user,
            groups,
        }),
        _ => Err(problems),
    }
}
