//! A private OpenLDAP `slapd` (Debian's) for the `ldap` connector's tests: its own slapd.conf
//! and mdb database in a tempdir, loaded with an LDIF of hostile and ordinary entries, serving
//! ldaps:// and ldap:// (StartTLS) on 127.0.0.1 with a certificate from a kfsec CA. Stopped
//! (killed) on drop.
//!
//! When slapd is not installed the tests skip with a message, unless CI=true (then they fail):
//! `bash scripts/install-test-deps.sh` installs it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kfsec_types::SystemClock;

#[allow(clippy::disallowed_methods)] // a deadline for slapd to start listening
fn now() -> Instant {
    Instant::now()
}

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";

pub const SUFFIX: &str = "dc=example,dc=org";
pub const PEOPLE: &str = "ou=people,dc=example,dc=org";
pub const GROUPS: &str = "ou=groups,dc=example,dc=org";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
pub const ROOT_PW: &str = "admin-pw";
pub const SERVICE_DN: &str = "cn=kfsec,ou=services,dc=example,dc=org";
pub const SERVICE_PW: &str = "service-pw";

pub const ALICE_PW: &str = "alice-pw";
pub const JUERGEN: &str = "jürgen";
pub const JUERGEN_PW: &str = "pässwörd (ü)";
/// A user name with every RFC 4515 metacharacter but NUL: `( ) * \`.
pub const SPECIAL: &str = "sp(e)c*al\\x";
pub const SPECIAL_DN: &str = "uid=sp(e)c*al\\5Cx,ou=people,dc=example,dc=org";
pub const SPECIAL_PW: &str = "special-pw";
pub const NOGROUP_PW: &str = "nogroup-pw";
pub const ADMIN_PW: &str = "admin-user-pw";
pub const DUP_PW: &str = "dup-pw";

/// The directory (`tests/fixtures/ldap/directory.ldif`, shared with the shell fixtures of
/// `scripts/federation-fixtures.sh`): users with a non-ASCII name and password, one with
/// `( ) * \` in its name, one in no group, two entries sharing uid=dup in different OUs; a service
/// account; groups as groupOfNames (member DNs, one nested in another) and posixGroup (memberUid).
/// The constants above name its entries and passwords.
const LDIF: &str = include_str!("../../../../tests/fixtures/ldap/directory.ldif");

/// A CA (kfsec's) and the files slapd and the connector read.
pub struct Pki {
    pub ca_pem: String,
    pub ca_file: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A running private slapd.
pub struct Slapd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    conf: PathBuf,
    pub ldaps_port: u16,
    pub ldap_port: u16,
    pub pki: Pki,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether slapd can run here; when not, says why and whether to skip (outside CI) or fail.
pub fn available() -> bool {
    if Path::new(SLAPD).exists() && Path::new(SLAPADD).exists() {
        return true;
    }
    let msg = "slapd is not installed (bash scripts/install-test-deps.sh installs slapd and ldap-utils)";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}; CI=true, so this fails instead of skipping");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// Options of one directory.
#[derive(Default, Clone, Copy)]
pub struct Options {
    /// `TLSVerifyClient demand`: only clients with a certificate from the CA connect over TLS.
    pub require_client_cert: bool,
    /// slapd's `sizelimit` (server-side: answers stop early with sizeLimitExceeded).
    pub size_limit: Option<u32>,
}

impl Slapd {
    /// Starts a directory, or `None` (with a message) when slapd is not installed outside CI.
    pub async fn start() -> Option<Self> {
        Self::start_with(Options::default()).await
    }

    /// Like [`Slapd::start`] with options.
    pub async fn start_with(opts: Options) -> Option<Self> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pki = pki(d);
        let server = kfsec_pki::CertificateAuthority::load_or_create(
            &d.join("ca"),
            kfsec_pki::KeyAlgorithm::EcdsaP256,
            &SystemClock,
        )
        .unwrap()
        .issue_server(
            "slapd",
            &["localhost".into()],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
            &SystemClock,
        )
        .unwrap();
        std::fs::write(d.join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(d.join("server.key"), &server.key_pem).unwrap();
        std::fs::create_dir(d.join("db")).unwrap();
        let conf = d.join("slapd.conf");
        let verify = if opts.require_client_cert { "demand" } else { "never" };
        let size_limit = opts.size_limit.map(|n| format!("sizelimit {n}\n")).unwrap_or_default();
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile {ca}
TLSCertificateFile {d}/server.pem
TLSCertificateKeyFile {d}/server.key
TLSVerifyClient {verify}
{size_limit}access to attrs=userPassword
  by anonymous auth
  by * none
access to *
  by * read
database mdb
maxsize 10485760
suffix \"{SUFFIX}\"
rootdn \"{ROOT_DN}\"
rootpw {ROOT_PW}
directory {d}/db
index objectClass eq
index uid eq
index member eq
index memberUid eq
",
                d = d.display(),
                ca = pki.ca_file.display(),
            ),
        )
        .unwrap();
        std::fs::write(d.join("data.ldif"), LDIF).unwrap();
        let out = Command::new(SLAPADD)
            .arg("-f")
            .arg(&conf)
            .arg("-l")
            .arg(d.join("data.ldif"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "slapadd failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut s = Self {
            child: None,
            dir,
            conf,
            ldaps_port: free_port(),
            ldap_port: free_port(),
            pki,
        };
        s.spawn().await;
        Some(s)
    }

    async fn spawn(&mut self) {
        let urls = format!(
            "ldaps://127.0.0.1:{}/ ldap://127.0.0.1:{}/",
            self.ldaps_port, self.ldap_port
        );
        let log = std::fs::File::create(self.dir.path().join("slapd.log")).unwrap();
        let child = Command::new(SLAPD)
            .arg("-h")
            .arg(&urls)
            .arg("-f")
            .arg(&self.conf)
            .arg("-d")
            .arg("0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = now();
        loop {
            let both = tokio::net::TcpStream::connect(("127.0.0.1", self.ldap_port))
                .await
                .is_ok()
                && tokio::net::TcpStream::connect(("127.0.0.1", self.ldaps_port))
                    .await
                    .is_ok();
            if both {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("slapd exited with {status}: {}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "slapd did not listen within 15 s: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops slapd and starts it again on the same ports and data (connections held by
    /// clients are cut).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// slapd's own log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// Runs an ldap-utils command (`ldapmodify`, `ldapdelete`, …) as the directory's root over
    /// the plain port, `input` on stdin.
    pub fn admin(&self, tool: &str, args: &[&str], input: &str) {
        use std::io::Write;
        let mut child = Command::new(tool)
            .arg("-x")
            .arg("-H")
            .arg(format!("ldap://127.0.0.1:{}/", self.ldap_port))
            .arg("-D")
            .arg(ROOT_DN)
            .arg("-w")
            .arg(ROOT_PW)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{tool}: {e} (ldap-utils installed?)"));
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The connector config (JSON of Dex's `ldap` config) for this directory: ldaps with the
    /// CA as `rootCAData`, the service account, users under `ou=people` (subtree), groups by
    /// member DN (with nesting) and by memberUid.
    pub fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "host": format!("127.0.0.1:{}", self.ldaps_port),
            "rootCAData": STANDARD.encode(&self.pki.ca_pem),
            "bindDN": SERVICE_DN,
            "bindPW": SERVICE_PW,
            "usernamePrompt": "Directory user",
            "timeout": "3s",
            "userSearch": {
                "baseDN": PEOPLE,
                "filter": "(objectClass=inetOrgPerson)",
                "username": "uid",
                "idAttr": "uid",
                "emailAttr": "mail",
                "nameAttr": "cn",
                "preferredUsernameAttr": "displayName",
            },
            "groupSearch": {
                "baseDN": GROUPS,
                "filter": "(|(objectClass=groupOfNames)(objectClass=posixGroup))",
                "userMatchers": [
                    {"userAttr": "DN", "groupAttr": "member", "recursionGroupAttr": "member"},
                    {"userAttr": "uid", "groupAttr": "memberUid"},
                ],
                "nameAttr": "cn",
            },
        })
    }

    /// [`Slapd::config`] over StartTLS on the plain port.
    pub fn config_starttls(&self) -> serde_json::Value {
        let mut c = self.config();
        c["host"] = format!("localhost:{}", self.ldap_port).into();
        c["startTLS"] = true.into();
        c
    }
}

/// A kfsec CA in `dir/ca` (which also issues slapd's certificate) and a client certificate.
fn pki(dir: &Path) -> Pki {
    let ca = kfsec_pki::CertificateAuthority::load_or_create(
        &dir.join("ca"),
        kfsec_pki::KeyAlgorithm::EcdsaP256,
        &SystemClock,
    )
    .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let client = ca
        .issue_client("kfsec-ldap-client", &[], Duration::from_secs(3600), &SystemClock)
        .unwrap();
    let client_cert = dir.join("client.pem");
    let client_key = dir.join("client.key");
    std::fs::write(&client_cert, &client.cert_pem).unwrap();
    std::fs::write(&client_key, &client.key_pem).unwrap();
    Pki {
        ca_pem: ca.cert_pem().to_owned(),
        ca_file,
        client_cert,
        client_key,
    }
}
