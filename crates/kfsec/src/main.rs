//! The `kfsec` binary: `serve` and the admin commands.
//!
//! Invariants: the process-wide crypto provider (aws-lc-rs) is installed before anything else;
//! passwords are read from stdin (asked twice, without echo, at a terminal) and never accepted
//! as arguments; admin commands talk to a running server over its socket instead of opening the
//! store it holds.

/// `println!` that ends the process quietly when stdout is closed (`kfsec cert list | head`)
/// instead of panicking on the broken pipe.
macro_rules! say {
    (nonl $($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($t)*) {
            $crate::output_failed(e);
        }
    }};
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            $crate::output_failed(e);
        }
    }};
}

fn output_failed(e: std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("kfsec: writing to stdout: {e}");
    std::process::exit(1);
}

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use kfsec_server::admin::{self, AdminRequest, AdminResponse};
use kfsec_server::config::{self, Overrides, ProcessEnv};

mod audit;
mod logging;
mod login;

/// mimalloc: measurably fewer cycles than glibc malloc on the proxy path (many small, short-lived
/// header and buffer allocations across threads).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kfsec",
    about = "The security plane of a multi-tenant Kubeflow-style ML platform"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Configuration file (YAML, apiVersion: kfsec/v1).
    #[arg(long, env = "KFSEC_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory [default: the config file's dataDir, else ./kfsec-data]. Only `serve`
    /// creates it; the other commands refuse a directory that holds no kfsec data.
    #[arg(long, env = "KFSEC_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Front-door listen address [default: 0.0.0.0:8443].
        #[arg(long, env = "KFSEC_HTTPS_ADDR")]
        https_addr: Option<String>,
        /// Admin (metrics, health) listen address [default: 127.0.0.1:9090].
        #[arg(long, env = "KFSEC_ADMIN_ADDR")]
        admin_addr: Option<String>,
        /// Admission webhooks listen address [default: 127.0.0.1:9443; the API server must reach
        /// it, e.g. 0.0.0.0:9443 in a pod — then also set webhooks.clientAuth in the config].
        #[arg(long, env = "KFSEC_WEBHOOK_ADDR")]
        webhook_addr: Option<String>,
        /// The audit log file, over the config's audit.log.path (`-` stdout, "" off)
        /// [default: <data-dir>/audit/audit.log].
        #[arg(long, value_name = "FILE")]
        audit_log_path: Option<String>,
        /// The S3 gateway's listen address, over the config's s3.addr (needs an s3: section)
        /// [default: 127.0.0.1:9000].
        #[arg(long, env = "KFSEC_S3_ADDR")]
        s3_addr: Option<String>,
    },
    /// The audit log: verify its hash chain and signatures, query its events.
    Audit {
        #[command(subcommand)]
        cmd: audit::AuditCmd,
        #[command(flatten)]
        common: Common,
    },
    /// Admission webhooks.
    Webhook {
        #[command(subcommand)]
        cmd: WebhookCmd,
        #[command(flatten)]
        common: Common,
    },
    /// Manage local users.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
        #[command(flatten)]
        common: Common,
    },
    /// Manage OAuth2 clients.
    Client {
        #[command(subcommand)]
        cmd: ClientCmd,
        #[command(flatten)]
        common: Common,
    },
    /// Print a bcrypt hash (cost 12) of a password read from stdin, for a Dex-style config.
    HashPassword,
    /// Issue a service-account token (audience-bound, signed by kfsec's IdP keys).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
        #[command(flatten)]
        common: Common,
    },
    /// Answer whether USER may VERB RESOURCE, like `kubectl auth can-i` (exit 0 yes, 1 no).
    CanI(Question),
    /// Explain the answer: the binding and rule that allow it, or the user's bindings and why
    /// none matched.
    Why(Question),
    /// Certificates of the internal CA.
    Cert {
        #[command(subcommand)]
        cmd: CertCmd,
        #[command(flatten)]
        common: Common,
    },
    /// Per-workspace S3 keys (the S3 gateway's credentials).
    S3 {
        #[command(subcommand)]
        cmd: S3Cmd,
        #[command(flatten)]
        common: Common,
    },
    /// Encryption of the secrets in the store at rest (`secretsEncryption`).
    Secrets {
        #[command(subcommand)]
        cmd: SecretsCmd,
    },
    /// Log in to a kfsec server with the device flow and write a kubeconfig with your token.
    Login {
        /// The front door, e.g. https://localhost:8443.
        #[arg(long)]
        server: String,
        /// CA bundle that signed the server's certificate [default: <data-dir>/pki/ca-bundle.crt].
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Where to write the kubeconfig.
        #[arg(long, default_value = "kfsec.kubeconfig")]
        kubeconfig: PathBuf,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum S3Cmd {
    /// Issue a new S3 key for a profile namespace and write it into the namespace's Secret
    /// mlpipeline-minio-artifact (accesskey, secretkey); the previous key keeps working for
    /// --overlap, then only the new one does. Prints the new access key id and the salted
    /// fingerprint of its secret.
    Rotate {
        /// The profile namespace.
        #[arg(short = 'n', long)]
        namespace: String,
        /// How long the previous key stays valid, e.g. 1h (0s: it ends now).
        #[arg(long, default_value = "1h")]
        overlap: String,
        /// Also print the new secret key (the namespace's Secret holds it in any case).
        #[arg(long)]
        show_secret: bool,
    },
    /// List a namespace's live S3 keys: access key ids, when each was issued, when a rotated
    /// one ends, and the salted fingerprints of their secrets.
    Keys {
        /// The profile namespace.
        #[arg(short = 'n', long)]
        namespace: String,
    },
}

#[derive(Subcommand)]
enum SecretsCmd {
    /// Write a new key-encryption key (32 random bytes, base64) to FILE, mode 0600; never
    /// overwrites. Configure it as `secretsEncryption: {keyFile: FILE}` on every replica.
    GenerateKey {
        /// The key file to create.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user; the password is read from stdin.
    Add {
        /// Login email.
        email: String,
        /// User name [default: the email's local part].
        #[arg(long)]
        username: Option<String>,
        /// Group (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// Change a user's password (read from stdin); ends all of the user's sessions and tokens.
    Passwd {
        /// Login email.
        email: String,
    },
    /// List users.
    List,
    /// Delete a user and end all of the user's sessions and tokens.
    Delete {
        /// Login email.
        email: String,
    },
    /// End all of a user's sessions, ID tokens and refresh tokens (every device).
    LogoutAll {
        /// Login email.
        email: String,
    },
}

#[derive(Args)]
struct Question {
    /// Verb (get, list, create, …).
    verb: String,
    /// `resource[.group][/subresource]`, or a non-resource `/path`.
    resource: String,
    /// Object name.
    name: Option<String>,
    /// Namespace.
    #[arg(short = 'n', long = "namespace", default_value = "")]
    namespace: String,
    /// The user to ask about.
    #[arg(long = "as")]
    user: String,
    /// Groups of that user (repeatable).
    #[arg(long = "as-group")]
    groups: Vec<String>,
    #[command(flatten)]
    common: Common,
}

impl Question {
    fn request(self) -> (Common, AdminRequest) {
        let req = AdminRequest::Explain {
            user: self.user,
            groups: self.groups,
            verb: self.verb,
            resource: self.resource,
            namespace: self.namespace,
            name: self.name.unwrap_or_default(),
        };
        (self.common, req)
    }
}

fn print_explanation(e: &serde_json::Value) {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    say!(
        "user {} groups [{}]",
        s(&e["user"]),
        e["groups"]
            .as_array()
            .map(|g| g.iter().map(s).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    );
    if let Some(reason) = e["decision"]["reason"].as_str() {
        say!("allowed: {reason}");
    }
    for b in e["bindings"].as_array().into_iter().flatten() {
        let at = if s(&b["namespace"]).is_empty() {
            String::new()
        } else {
            format!("{}/", s(&b["namespace"]))
        };
        let verdict = match &b["matchedRule"] {
            serde_json::Value::Null if b["roleFound"] == false => "role not found".to_owned(),
            serde_json::Value::Null => format!("no rule of its {} matches", b["ruleCount"]),
            rule => format!("matching rule {rule}"),
        };
        say!(
            "  {} {at}{} → {} {}: {verdict}",
            s(&b["kind"]),
            s(&b["name"]),
            s(&b["roleRef"]["kind"]),
            s(&b["roleRef"]["name"])
        );
    }
    for b in e["elsewhere"].as_array().into_iter().flatten() {
        say!(
            "  (also bound in namespace {}: {} → {})",
            s(&b["namespace"]),
            s(&b["name"]),
            s(&b["roleRef"]["name"])
        );
    }
    if let Some(summary) = e["summary"].as_str().filter(|x| !x.is_empty()) {
        say!("{summary}");
    }
}

#[derive(Subcommand)]
enum WebhookCmd {
    /// Print Mutating/ValidatingWebhookConfiguration YAML with kfsec's CA as caBundle.
    Manifests {
        /// Namespace of the webhook Services.
        #[arg(long, default_value = "kubeflow")]
        namespace: String,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// List the certificates in the data directory: subject, SANs, issuer, expiry.
    List,
    /// Issue a serving certificate for a Kubernetes service (`NAME`, `NAME.NS`, `NAME.NS.svc`,
    /// `NAME.NS.svc.cluster.local`), or with `--client NAME` a client certificate (CN=NAME) such
    /// as the API server's for calling the webhooks (`webhooks.clientAuth.allowedNames: [NAME]`;
    /// referenced from its admission kubeconfig), into DIR: tls.crt, tls.key (0600), ca.crt.
    Issue {
        /// Service name.
        #[arg(long, required_unless_present = "client", requires = "namespace")]
        service: Option<String>,
        /// Namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Issue a client certificate for NAME instead (EKU clientAuth).
        #[arg(long, value_name = "NAME", conflicts_with_all = ["service", "namespace"])]
        client: Option<String>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime, e.g. 2160h.
        #[arg(long, default_value = "2160h")]
        duration: String,
    },
    /// Replace the internal CA. Every certificate kfsec serves is re-issued by the new CA at once
    /// (with the new CA cross-signed by the old, so clients that trust only the old CA keep
    /// working); both CAs are trusted until the window ends, then only the new one.
    /// `pki/ca-bundle.crt` holds what clients should trust.
    RotateCa {
        /// How long the old CA stays trusted, e.g. 168h.
        #[arg(long, default_value = "168h", conflicts_with = "finish")]
        window: String,
        /// End the current window now: the old CA is no longer trusted.
        #[arg(long)]
        finish: bool,
    },
}

/// This binary's build, as its build script baked it in.
fn build_info() -> kfsec_types::BuildInfo {
    kfsec_types::BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        commit: env!("KFSEC_GIT_COMMIT").to_owned(),
        tree_state: env!("KFSEC_GIT_TREE_STATE").to_owned(),
        build_date: env!("KFSEC_BUILD_EPOCH").parse().unwrap_or(0),
    }
}

/// The configuration an admin command works with: `--config`/`KFSEC_CONFIG` if given, with
/// `--data-dir`/`KFSEC_DATA_DIR` over the file's `dataDir` (default `./kfsec-data`).
fn admin_config(common: &Common) -> Result<config::Config> {
    Ok(config::load(
        common.config.as_deref(),
        &Overrides {
            data_dir: common.data_dir.clone(),
            ..Default::default()
        },
        &ProcessEnv,
    )?)
}

/// The data directory of an admin command, which must exist: only `serve` creates one.
fn existing_data_dir(dir: &std::path::Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "no data directory at {} (start the server with \"kfsec serve\", or pass --data-dir / set KFSEC_DATA_DIR)",
            dir.display()
        );
    }
    Ok(())
}

fn pki_dir(common: &Common) -> Result<PathBuf> {
    let data = admin_config(common)?.data_dir;
    existing_data_dir(&data)?;
    let dir = data.join("pki");
    if !dir.join("ca.crt").exists() {
        bail!(
            "no internal CA in {} (start kfsec serve once, or pass --data-dir)",
            dir.display()
        );
    }
    Ok(dir)
}

async fn cert_cmd(cmd: CertCmd, common: &Common) -> Result<()> {
    let dir = pki_dir(common)?;
    let clock = kfsec_types::SystemClock;
    match cmd {
        CertCmd::List => {
            let mut files: Vec<PathBuf> = Vec::new();
            let mut stack = vec![dir.clone()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d)? {
                    let p = e?.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "crt") {
                        files.push(p);
                    }
                }
            }
            files.sort();
            let now = kfsec_types::Clock::now(&clock);
            for f in files {
                let info = kfsec_pki::parse_cert_pem(&std::fs::read_to_string(&f)?)?;
                let days = info.not_after.since(now).as_secs() / 86_400;
                say!("{}", f.strip_prefix(&dir).unwrap_or(&f).display());
                say!("  subject: {}\n  issuer:  {}", info.subject, info.issuer);
                if !info.sans.is_empty() {
                    say!("  SANs:    {}", info.sans.join(", "));
                }
                say!("  expires: {} ({days} days)", info.not_after.to_rfc3339());
            }
            let cas = kfsec_pki::CaSet::load_or_create(&dir, kfsec_pki::KeyAlgorithm::default(), &clock)?;
            if let Some(p) = cas.previous() {
                say!(
                    "CA rotation window: {} is trusted until {} (kfsec cert rotate-ca --finish ends it)",
                    p.info.subject,
                    p.trusted_until.to_rfc3339()
                );
            }
            Ok(())
        }
        CertCmd::Issue {
            service,
            namespace,
            client,
            out,
            duration,
        } => {
            let lifetime = kfsec_types::config::parse_duration(&duration).map_err(anyhow::Error::msg)?;
            let cas = kfsec_pki::CaSet::load_or_create(&dir, kfsec_pki::KeyAlgorithm::default(), &clock)?;
            let (service, namespace) = match (client, service, namespace) {
                (Some(name), _, _) => {
                    let cert = cas.current().issue_client(&name, &[], lifetime, &clock)?;
                    std::fs::create_dir_all(&out)?;
                    std::fs::write(out.join("tls.crt"), cas.chain_pem(&cert))?;
                    kfsec_pki::write_private_file(&out.join("tls.key"), cert.key_pem.as_bytes())?;
                    std::fs::write(out.join("ca.crt"), cas.trust_bundle_pem())?;
                    say!(
                        "wrote {0}/tls.crt, {0}/tls.key (0600), {0}/ca.crt: a client certificate for CN={name}",
                        out.display()
                    );
                    return Ok(());
                }
                (None, Some(s), Some(n)) => (s, n),
                _ => bail!("give --service and --namespace, or --client"),
            };
            let names: Vec<String> = vec![
                service.clone(),
                format!("{service}.{namespace}"),
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.cluster.local"),
            ];
            let cert =
                cas.current()
                    .issue_server(&format!("{service}.{namespace}.svc"), &names, &[], lifetime, &clock)?;
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("tls.crt"), cas.chain_pem(&cert))?;
            kfsec_pki::write_private_file(&out.join("tls.key"), cert.key_pem.as_bytes())?;
            std::fs::write(out.join("ca.crt"), cas.trust_bundle_pem())?;
            say!(
                "wrote {0}/tls.crt, {0}/tls.key (0600), {0}/ca.crt for {1}",
                out.display(),
                names.join(", ")
            );
            Ok(())
        }
        CertCmd::RotateCa { window, finish } => {
            let window_seconds = if finish {
                None
            } else {
                let window = kfsec_types::config::parse_duration(&window).map_err(anyhow::Error::msg)?;
                Some(window.as_secs())
            };
            print(admin_call(common, AdminRequest::CaRotate { window_seconds }).await?)
        }
    }
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token for service account NAME in namespace NS.
    Create {
        /// Service account name.
        name: String,
        /// Namespace.
        #[arg(short = 'n', long = "namespace")]
        namespace: String,
        /// Audience (repeatable) [default: kfsec].
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// Lifetime, e.g. 1h (10m to 48h).
        #[arg(long, default_value = "1h")]
        duration: String,
    },
}

#[derive(Subcommand)]
enum ClientCmd {
    /// Register a client; prints its generated secret once.
    Add {
        /// Client id.
        id: String,
        /// Exact redirect URI (repeatable).
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// A public client (no secret; PKCE).
        #[arg(long)]
        public: bool,
    },
    /// List clients.
    List,
    /// Delete a client.
    Delete {
        /// Client id.
        id: String,
    },
}

fn read_password(confirm: bool) -> Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let p = rpassword::prompt_password("Password: ")?;
        if confirm {
            let again = rpassword::prompt_password("Repeat password: ")?;
            if p != again {
                bail!("the passwords do not match");
            }
        }
        return Ok(p);
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let p = line.trim_end_matches(['\n', '\r']).to_owned();
    if p.is_empty() {
        bail!("no password on stdin");
    }
    Ok(p)
}

async fn serve(
    common: Common,
    https_addr: Option<String>,
    admin_addr: Option<String>,
    webhook_addr: Option<String>,
    audit_log_path: Option<String>,
    s3_addr: Option<String>,
) -> Result<()> {
    let overrides = Overrides {
        data_dir: common.data_dir,
        https_addr,
        admin_addr,
        webhook_addr,
    };
    let mut cfg = config::load(common.config.as_deref(), &overrides, &ProcessEnv)?;
    cfg.build = build_info();
    config::s3::override_addr(cfg.s3.as_mut(), s3_addr.as_deref())?;
    if let Some(p) = &audit_log_path {
        cfg.audit.set_log_path(p);
    }
    logging::init(cfg.log_level.as_deref(), cfg.log_format.as_deref() == Some("json"));
    let running = kfsec_server::start(cfg).await?;
    if let Some(p) = &running.bootstrap_password {
        // Printed once, to the terminal only; the store keeps a bcrypt hash.
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "\nFirst start: created the admin account.\n  login:    {}\n  password: {p}\nThis password is shown only now.\n",
            kfsec_server::BOOTSTRAP_ADMIN
        )?;
        out.flush()?;
    }
    say!(
        "kfsec ready: {} (front door https://{}, admin http://{})",
        running.public_url,
        running.https_addr,
        running.admin_addr
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn admin_call(common: &Common, req: AdminRequest) -> Result<AdminResponse> {
    let cfg = admin_config(common)?;
    // On etcd the state is in the cluster: a machine without a data directory (no server here)
    // still administers it.
    let etcd = matches!(cfg.store, kfsec_server::config::store::StoreSettings::Etcd { .. });
    if !etcd || cfg.data_dir.is_dir() {
        existing_data_dir(&cfg.data_dir)?;
        if let Some(resp) = admin::call(&cfg.data_dir, &req)
            .await
            .context("contacting the running server")?
        {
            return Ok(resp);
        }
    }
    let dir = kfsec_server::DataDir(cfg.data_dir.clone());
    if !etcd && !dir.store().exists() {
        bail!(
            "no kfsec data in {} (start the server with \"kfsec serve\" there, or pass --data-dir / set KFSEC_DATA_DIR)",
            cfg.data_dir.display()
        );
    }
    let store = kfsec_server::open_admin_store(&cfg, Arc::new(kfsec_types::SystemClock))
        .await
        .context(if etcd {
            "opening the etcd store"
        } else {
            "opening the store (is a server running without its admin socket?)"
        })?;
    Ok(kfsec_server::admin_ops(store, &cfg)?.execute(req).await)
}

fn print(resp: AdminResponse) -> Result<()> {
    match resp {
        AdminResponse::Ok => say!("ok"),
        AdminResponse::User(u) => say!("added {} (userID {})", u.email, u.user_id),
        AdminResponse::Users { items } => {
            say!("{:<36} {:<20} {:<10} GROUPS", "EMAIL", "USERNAME", "SOURCE");
            for u in items {
                say!(
                    "{:<36} {:<20} {:<10} {}",
                    u.email,
                    u.username,
                    u.source,
                    u.groups.join(",")
                );
            }
        }
        AdminResponse::Client(c) => match c.secret {
            Some(s) => say!(
                "client {}\nsecret {s}\nThe secret is shown only now; only its salted SHA-256 is stored.",
                c.id
            ),
            None => say!("client {} (public)", c.id),
        },
        AdminResponse::Clients { items } => {
            say!("{:<32} {:<8} {:<8} REDIRECT URIS", "ID", "PUBLIC", "SOURCE");
            for c in items {
                say!(
                    "{:<32} {:<8} {:<8} {}",
                    c.id,
                    c.public,
                    c.source,
                    c.redirect_uris.join(" ")
                );
            }
        }
        AdminResponse::Token { token } => say!("{token}"),
        AdminResponse::Rotation(r) => {
            say!("signing CA: {}", r.current);
            match (r.previous, r.trusted_until) {
                (Some(p), Some(until)) => say!("also trusted until {until}: {p}"),
                _ => say!("no other CA is trusted"),
            }
            if r.reissued.is_empty() {
                say!("kfsec is not running: its certificates are re-issued at the next start");
            } else {
                say!("re-issued: {}", r.reissued.join(", "));
            }
            say!("clients should trust: pki/ca-bundle.crt");
        }
        AdminResponse::Explanation { allowed, .. } => say!("{}", if allowed { "yes" } else { "no" }),
        AdminResponse::S3Key(k) => {
            say!("access key id {}", k.id);
            say!("fingerprint {}", k.fingerprint);
            if let Some(secret) = k.secret {
                say!("secret {secret}");
            }
            say!(
                "the Secret mlpipeline-minio-artifact in namespace {} holds the new key",
                k.namespace
            );
        }
        AdminResponse::S3Keys { namespace, items } => {
            if items.is_empty() {
                bail!("namespace {namespace} has no S3 key");
            }
            say!(
                "{:<20}  {:<20}  {:<20}  FINGERPRINT",
                "ACCESS KEY ID",
                "CREATED",
                "NOT AFTER"
            );
            let time = |secs: u64| kfsec_types::UnixTime::from_secs(secs).to_rfc3339();
            for k in items {
                say!(
                    "{:<20}  {:<20}  {:<20}  {}",
                    k.id,
                    time(k.created),
                    k.not_after.map_or_else(|| "-".to_owned(), time),
                    k.fingerprint
                );
            }
        }
        AdminResponse::Error { message } => bail!(message),
    }
    Ok(())
}

/// Runs the command; an error is printed as one line, `kfsec: <what failed>: <why>` (every
/// cause, no backtrace), with exit status 1.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Everything kfsec writes (store, keys, kubeconfigs, sockets) is private unless a file is
    // made public on purpose (certificates are chmod 0644 explicitly): a umask of 000 inherited
    // from a service manager must not make secrets world-readable.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // `--version`: `kfsec 0.1.0 (commit 0123456789ab, built 2026-12-05)`; clap takes the line
    // for the life of the process.
    let version: &'static str = Box::leak(build_info().version_line().into_boxed_str());
    let cli = match Cli::from_arg_matches(&Cli::command().version(version).get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kfsec: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line (`a: b: c`): a cause a message already quotes is not
/// repeated, and the lines of a message (a list of problems) are joined with `; `.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if line.contains(&msg) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&msg);
    }
    let mut out = String::new();
    for l in line.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(l);
    }
    out
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Serve {
            common,
            https_addr,
            admin_addr,
            webhook_addr,
            audit_log_path,
            s3_addr,
        } => serve(common, https_addr, admin_addr, webhook_addr, audit_log_path, s3_addr).await,
        Cmd::Audit { cmd, common } => {
            if !audit::run(cmd, &admin_config(&common)?)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Webhook {
            cmd: WebhookCmd::Manifests { namespace },
            common,
        } => {
            use base64::Engine;
            let ca = std::fs::read_to_string(kfsec_pki::bundle_path(&pki_dir(&common)?))?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(ca);
            say!(nonl "{}", kfsec_server::webhook_manifests(&b64, &namespace));
            Ok(())
        }
        Cmd::Token {
            cmd:
                TokenCmd::Create {
                    name,
                    namespace,
                    audiences,
                    duration,
                },
            common,
        } => {
            let seconds = kfsec_types::config::parse_duration(&duration)
                .map_err(anyhow::Error::msg)?
                .as_secs();
            let audiences = if audiences.is_empty() {
                vec!["kfsec".to_owned()]
            } else {
                audiences
            };
            print(
                admin_call(
                    &common,
                    AdminRequest::TokenCreate {
                        namespace,
                        name,
                        audiences,
                        seconds,
                    },
                )
                .await?,
            )
        }
        Cmd::CanI(q) => {
            let (common, req) = q.request();
            match admin_call(&common, req).await? {
                AdminResponse::Explanation { allowed, .. } => {
                    say!("{}", if allowed { "yes" } else { "no" });
                    std::process::exit(if allowed { 0 } else { 1 });
                }
                other => print(other),
            }
        }
        Cmd::Why(q) => {
            let (common, req) = q.request();
            match admin_call(&common, req).await? {
                AdminResponse::Explanation { allowed, explanation } => {
                    say!("{}", if allowed { "yes" } else { "no" });
                    print_explanation(&explanation);
                    std::process::exit(if allowed { 0 } else { 1 });
                }
                other => print(other),
            }
        }
        Cmd::Cert { cmd, common } => cert_cmd(cmd, &common).await,
        Cmd::S3 { cmd, common } => {
            let req = match cmd {
                S3Cmd::Rotate {
                    namespace,
                    overlap,
                    show_secret,
                } => AdminRequest::S3Rotate {
                    namespace,
                    overlap_seconds: kfsec_types::config::parse_duration(&overlap)
                        .map_err(anyhow::Error::msg)?
                        .as_secs(),
                    show_secret,
                },
                S3Cmd::Keys { namespace } => AdminRequest::S3Keys { namespace },
            };
            print(admin_call(&common, req).await?)
        }
        Cmd::Secrets {
            cmd: SecretsCmd::GenerateKey { file },
        } => {
            let key = kfsec_store::sealed::SealKey::generate(&kfsec_pki::OsRng);
            key.write_new(&file)?;
            say!(
                "wrote {} (mode 0600): key id {}\nuse it on every replica: secretsEncryption: {{keyFile: {}}}",
                file.display(),
                key.id(),
                file.display()
            );
            Ok(())
        }
        Cmd::Login {
            server,
            ca_file,
            kubeconfig,
            common,
        } => {
            let ca = match ca_file {
                Some(f) => f,
                None => {
                    let ca = admin_config(&common)?.data_dir.join("pki/ca-bundle.crt");
                    if !ca.exists() {
                        bail!(
                            "no CA bundle at {} (pass --ca-file with a copy of the server's kfsec-data/pki/ca-bundle.crt)",
                            ca.display()
                        );
                    }
                    ca
                }
            };
            login::login(&server, &ca, &kubeconfig).await
        }
        Cmd::HashPassword => {
            let p = read_password(true)?;
            say!("{}", kfsec_idp::users::hash_password(&p)?);
            Ok(())
        }
        Cmd::User { cmd, common } => {
            let req = match cmd {
                UserCmd::Add {
                    email,
                    username,
                    groups,
                } => AdminRequest::UserAdd {
                    email,
                    username,
                    groups,
                    password: read_password(true)?,
                },
                UserCmd::Passwd { email } => AdminRequest::UserPasswd {
                    email,
                    password: read_password(true)?,
                },
                UserCmd::List => AdminRequest::UserList,
                UserCmd::Delete { email } => AdminRequest::UserDelete { email },
                UserCmd::LogoutAll { email } => AdminRequest::UserLogoutAll { email },
            };
            print(admin_call(&common, req).await?)
        }
        Cmd::Client { cmd, common } => {
            let req = match cmd {
                ClientCmd::Add {
                    id,
                    redirect_uris,
                    name,
                    public,
                } => AdminRequest::ClientAdd {
                    id,
                    name,
                    redirect_uris,
                    public,
                },
                ClientCmd::List => AdminRequest::ClientList,
                ClientCmd::Delete { id } => AdminRequest::ClientDelete { id },
            };
            print(admin_call(&common, req).await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose message already quotes its source, as `#[error("{what}: {source}")]`.
    #[derive(Debug)]
    struct Quoting(std::io::Error);

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "binding 127.0.0.1:8443: {}", self.0)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn errors_print_as_one_line_without_repeating_a_quoted_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let e = anyhow::Error::new(Quoting(io)).context("starting the server");
        assert_eq!(
            one_line(&e),
            "starting the server: binding 127.0.0.1:8443: Address already in use"
        );
        let multi = anyhow::anyhow!("invalid configuration (2 problems):\n  - a\n  - b");
        assert_eq!(one_line(&multi), "invalid configuration (2 problems): - a; - b");
    }
}
