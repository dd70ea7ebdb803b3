//! Test support (feature `testing`): real etcd members — Debian's `/usr/bin/etcd` — started as
//! child processes on free 127.0.0.1 ports in a temporary directory, one member or a 3-member
//! cluster, killed (SIGKILL) and reaped when the [`EtcdCluster`] is dropped.
//!
//! Invariants: members never use the packaged `etcd.service` data or ports; each cluster has
//! its own `--initial-cluster-token`; the inherited environment is cleared so `ETCD_*` variables
//! cannot change a member. Tests call [`etcd_binary`] first: when etcd is missing they skip with
//! a message, unless `KFSEC_REQUIRE_ETCD` is set (CI sets it), in which case it is an error.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};

/// The etcd binary the tests run.
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// Set (to anything) to make a missing etcd an error instead of a skip.
pub const REQUIRE_ENV: &str = "KFSEC_REQUIRE_ETCD";

/// `Ok(Some(path))` when etcd is installed; `Ok(None)` (after printing why the test is skipped)
/// when it is not and [`REQUIRE_ENV`] is unset; `Err` when it is missing but required.
pub fn etcd_binary() -> Result<Option<PathBuf>, String> {
    let bin = PathBuf::from(ETCD_BIN);
    if bin.is_file() {
        return Ok(Some(bin));
    }
    if std::env::var_os(REQUIRE_ENV).is_some() {
        return Err(format!(
            "{ETCD_BIN} is missing but {REQUIRE_ENV} is set: run scripts/install-test-deps.sh (package etcd-server)"
        ));
    }
    eprintln!(
        "SKIPPED: {ETCD_BIN} not installed (scripts/install-test-deps.sh installs etcd-server; set {REQUIRE_ENV}=1 to fail instead)"
    );
    Ok(None)
}

/// One etcd member process.
#[derive(Debug)]
pub struct Member {
    /// `--name`.
    pub name: String,
    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub client_url: String,
    /// The peer URL.
    pub peer_url: String,
    child: Option<Child>,
    /// The command line (after the binary) that starts it.
    args: Vec<std::ffi::OsString>,
}

/// A running etcd cluster of 1 or 3 members (see the module docs).
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    tls: Option<TestPki>,
    bin: PathBuf,
}

/// PEM files of a throwaway PKI for TLS to test members: a CA, the members' serving
/// certificate (for 127.0.0.1 and localhost) and a client certificate, all signed by the CA.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate.
    pub ca_file: PathBuf,
    /// The members' certificate.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate (for `--client-cert-auth`).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl TestPki {
    /// Generates the PKI into `dir`.
    pub fn generate(dir: &Path) -> Result<Self, String> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let e = |e: rcgen::Error| e.to_string();
        let write = |name: &str, pem: String| -> Result<PathBuf, String> {
            let p = dir.join(name);
            std::fs::write(&p, pem).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok(p)
        };
        let ca_key = KeyPair::generate().map_err(e)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).map_err(e)?;
        let issuer = Issuer::new(ca_params, &ca_key);
        let leaf = |names: Vec<String>| -> Result<(String, String), String> {
            let key = KeyPair::generate().map_err(e)?;
            let cert = CertificateParams::new(names)
                .map_err(e)?
                .signed_by(&key, &issuer)
                .map_err(e)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()])?;
        let (client_cert, client_key) = leaf(vec!["kfsec-test-client".into()])?;
        Ok(Self {
            ca_file: write("ca.crt", ca_cert.pem())?,
            server_cert: write("server.crt", server_cert)?,
            server_key: write("server.key", server_key)?,
            client_cert: write("client.crt", client_cert)?,
            client_key: write("client.key", client_key)?,
        })
    }

    fn options(&self) -> Result<etcd_client::TlsOptions, String> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        Ok(etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca_file)?))
            .identity(etcd_client::Identity::from_pem(
                read(&self.client_cert)?,
                read(&self.client_key)?,
            )))
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

static CLUSTERS: AtomicU64 = AtomicU64::new(0);

impl EtcdCluster {
    /// Starts a single member and waits until it answers a quorum read.
    pub async fn single(bin: &Path) -> Result<Self, String> {
        Self::start(bin, 1).await
    }

    /// Starts three members and waits until every one answers a quorum read (a leader exists).
    pub async fn three(bin: &Path) -> Result<Self, String> {
        Self::start(bin, 3).await
    }

    /// Starts one member serving clients over TLS only (`https://`), requiring a client
    /// certificate signed by the generated CA ([`EtcdCluster::pki`]).
    pub async fn single_tls(bin: &Path) -> Result<Self, String> {
        Self::start_with(bin, 1, true).await
    }

    /// Starts `n` members.
    pub async fn start(bin: &Path, n: usize) -> Result<Self, String> {
        Self::start_with(bin, n, false).await
    }

    /// Starts the members; a member that dies at once (a free port taken by someone else
    /// between choosing and binding it) makes a fresh attempt on new ports, three at most.
    async fn start_with(bin: &Path, n: usize, tls: bool) -> Result<Self, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(bin, n, tls).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn try_start(bin: &Path, n: usize, tls: bool) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let pki = if tls {
            Some(TestPki::generate(dir.path())?)
        } else {
            None
        };
        let scheme = if tls { "https" } else { "http" };
        let mut members = Vec::new();
        for i in 1..=n {
            members.push(Member {
                name: format!("n{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()?),
                peer_url: format!("http://127.0.0.1:{}", free_port()?),
                child: None,
                args: Vec::new(),
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!(
            "kfsec-test-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        for m in &mut members {
            let mut args: Vec<std::ffi::OsString> = Vec::new();
            if let Some(pki) = &pki {
                args.extend([
                    "--cert-file".into(),
                    pki.server_cert.clone().into(),
                    "--key-file".into(),
                    pki.server_key.clone().into(),
                    "--trusted-ca-file".into(),
                    pki.ca_file.clone().into(),
                    "--client-cert-auth".into(),
                ]);
            }
            let data = dir.path().join(format!("{}.etcd", m.name));
            for (flag, value) in [
                ("--name", m.name.clone().into()),
                ("--data-dir", data.into_os_string()),
                ("--listen-client-urls", m.client_url.clone().into()),
                ("--advertise-client-urls", m.client_url.clone().into()),
                ("--listen-peer-urls", m.peer_url.clone().into()),
                ("--initial-advertise-peer-urls", m.peer_url.clone().into()),
                ("--initial-cluster", initial.clone().into()),
                ("--initial-cluster-token", token.clone().into()),
                ("--initial-cluster-state", "new".into()),
            ] {
                args.push(flag.into());
                args.push(value);
            }
            m.args = args;
        }
        let mut cluster = Self {
            members,
            dir,
            tls: pki,
            bin: bin.to_path_buf(),
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_ready(i, Duration::from_secs(30)).await?;
        }
        Ok(cluster)
    }

    /// Starts member `i`'s process (again, after [`EtcdCluster::kill`]: same ports and data
    /// directory, so it rejoins the cluster with its data). Its output goes to its log.
    pub fn spawn(&mut self, i: usize) -> Result<(), String> {
        let log_path = self.dir.path().join(format!("n{}.log", i + 1));
        let Some(m) = self.members.get_mut(i) else {
            return Err(format!("no member {i}"));
        };
        if m.child.is_some() {
            return Ok(());
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.bin)
            .env_clear()
            .args(&m.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start {}: {e}", self.bin.display()))?;
        m.child = Some(child);
        Ok(())
    }

    /// Waits until member `i` answers a quorum read.
    pub async fn wait_ready(&self, i: usize, within: Duration) -> Result<(), String> {
        let url = self.client_url(i).to_owned();
        let mut last = String::new();
        let poll = async {
            loop {
                let mut opts = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(1))
                    .with_timeout(Duration::from_secs(2))
                    .with_require_leader(true);
                if let Some(pki) = &self.tls {
                    opts = opts.with_tls(pki.options()?);
                }
                let attempt = async {
                    let mut c = Client::connect([url.as_str()], Some(opts)).await?;
                    c.get("health", Some(GetOptions::new().with_count_only())).await
                };
                match tokio::time::timeout(Duration::from_secs(3), attempt).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "timeout".into(),
                }
                if self.exited(i) {
                    return Err(format!("etcd member {i} ({url}) exited; log: {}", self.log(i)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if let Ok(done) = tokio::time::timeout(within, poll).await {
            return done;
        }
        Err(format!(
            "etcd member {i} ({url}) not ready within {within:?}: {last}; log: {}",
            self.log(i)
        ))
    }

    /// The client URLs of all members.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Member `i`'s client URL.
    pub fn client_url(&self, i: usize) -> &str {
        self.members.get(i).map(|m| m.client_url.as_str()).unwrap_or_default()
    }

    /// The tail of member `i`'s log (for failure messages).
    pub fn log(&self, i: usize) -> String {
        let Some(m) = self.members.get(i) else {
            return String::new();
        };
        let text = std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name))).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Whether member `i`'s process has ended (or was killed).
    fn exited(&self, i: usize) -> bool {
        // try_wait needs `&mut`; a zero-signal probe of the pid answers the same question.
        match self.members.get(i).and_then(|m| m.child.as_ref()) {
            Some(child) => !Path::new(&format!("/proc/{}", child.id())).exists() || self.zombie(child.id()),
            None => true,
        }
    }

    fn zombie(&self, pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members.get_mut(i).and_then(|m| m.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The PKI of a TLS cluster.
    pub fn pki(&self) -> Option<&TestPki> {
        self.tls.as_ref()
    }

    /// A raw client to all members (for writing or checking keys outside the store).
    pub async fn raw_client(&self) -> Result<Client, String> {
        let opts = match &self.tls {
            Some(pki) => Some(ConnectOptions::new().with_tls(pki.options()?)),
            None => None,
        };
        Client::connect(self.endpoints(), opts).await.map_err(|e| e.to_string())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
