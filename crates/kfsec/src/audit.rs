//! `kfsec audit verify` and `kfsec audit query`: the audit log's hash chain and signed
//! checkpoints checked across rotated files, and questions answered without jq.
//!
//! Invariants: nothing in a log file is trusted before it is verified (query reads it as
//! untrusted JSON, printing escaped); the verifier's public key comes from the operator
//! (`--key`, default `<dataDir>/audit/audit.pub`), never from the log.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Subcommand, ValueEnum};
use kfsec_audit::{chain, files, query};

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain and the signed checkpoints of FILE... (in order; one base path
    /// such as audit.log includes its rotated files): exit 0 printing `intact` and the count,
    /// or exit 1 printing FILE:LINE: reason for the first bad line.
    Verify {
        /// Log files in chain order [default: the configured audit.log.path with its rotated files].
        files: Vec<PathBuf>,
        /// Public key (PEM) of the audit signing key, repeatable [default: <data-dir>/audit/audit.pub].
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
    },
    /// Print the events matching all the filters given, one line each (time, user, verb,
    /// resource, code, decision), or the raw lines with -o json.
    Query {
        /// Log files [default: the configured audit.log.path with its rotated files].
        files: Vec<PathBuf>,
        /// The user (or impersonated user).
        #[arg(long)]
        user: Option<String>,
        /// Only events received since this long ago (1h, 30m, 7d) or since an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// The verb (get, create, login, …).
        #[arg(long)]
        verb: Option<String>,
        /// allow or deny.
        #[arg(long)]
        decision: Option<DecisionArg>,
        /// The resource (pods, logins, pods/log, …).
        #[arg(long)]
        resource: Option<String>,
        /// The namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Output: text (one readable line per event) or json (the log's lines).
        #[arg(short = 'o', long, default_value = "text")]
        output: Output,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DecisionArg {
    Allow,
    Deny,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// The files to read: as given (one base path expands to its chain), else the configured log.
fn log_files(given: Vec<PathBuf>, cfg: &kfsec_server::config::Config) -> Result<Vec<PathBuf>> {
    let files = match given.as_slice() {
        [] => {
            let Some(kfsec_audit::log::LogTarget::File(base)) = cfg.audit.log.as_ref().map(|l| l.target.clone()) else {
                bail!("no audit log file is configured (audit.log.path); pass the files");
            };
            files::chain_files(&base).with_context(|| format!("listing {}", base.display()))?
        }
        [one] if one.is_file() && !is_backup(one) => {
            files::chain_files(one).with_context(|| format!("listing {}", one.display()))?
        }
        _ => given,
    };
    if files.is_empty() {
        bail!("no audit log files found");
    }
    for f in &files {
        if !f.is_file() {
            bail!("{}: no such file", f.display());
        }
    }
    Ok(files)
}

fn is_backup(p: &Path) -> bool {
    // `audit-2026-12-05T21-00-00.000.log`: a name with a rotation timestamp.
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.rfind('-').is_some_and(|_| {
        let (stem, ext) = match name.rfind('.') {
            Some(i) if i > 0 => (&name[..i], &name[i..]),
            _ => (name.as_str(), ""),
        };
        stem.len() > 24 && {
            let base = format!("{}{ext}", &stem[..stem.len() - 24]);
            files::backup_time(&p.with_file_name(base), &name).is_some()
        }
    })
}

fn read_keys(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading the audit public key {}", p.display()))?;
        let Some(k) = chain::parse_public_pem(&text) else {
            bail!("{}: not an Ed25519 public key (PEM, PUBLIC KEY)", p.display());
        };
        keys.push(k);
    }
    Ok(keys)
}

/// Runs `kfsec audit …`. `Ok(false)`: the verdict was negative (exit 1, already printed).
pub fn run(cmd: AuditCmd, cfg: &kfsec_server::config::Config) -> Result<bool> {
    match cmd {
        AuditCmd::Verify { files: given, keys } => {
            let files = log_files(given, cfg)?;
            let key_files = if keys.is_empty() {
                let k = kfsec_server::auditing::key_dir(&cfg.data_dir).join("audit.pub");
                if !k.is_file() {
                    bail!(
                        "no audit public key at {} (pass --key FILE, or --data-dir of the server that wrote the log)",
                        k.display()
                    );
                }
                // Whoever can rewrite the log can usually rewrite this file too.
                eprintln!(
                    "kfsec: key {} (from the data dir; against someone who can write it, verify with --key and a copy kept elsewhere)",
                    k.display()
                );
                vec![k]
            } else {
                keys
            };
            let keys = read_keys(&key_files)?;
            match files::verify_files(&files, &keys)? {
                Err(failure) => {
                    say!("{failure}");
                    Ok(false)
                }
                Ok(r) => {
                    let signed = match r.keys.as_slice() {
                        [] => "none signed".to_owned(),
                        ks => format!("signed by key {}", ks.join(", ")),
                    };
                    let files_note = if r.files == 1 {
                        String::new()
                    } else {
                        format!(" in {} files", r.files)
                    };
                    say!(
                        "intact: {} events ({} checkpoints, {signed}){files_note}",
                        r.events,
                        r.checkpoints
                    );
                    if let Some((first, last)) = r.seqs {
                        say!("chain sequence {first}..{last}");
                        if first > 1 {
                            say!(
                                "the chain starts at sequence {first}: earlier lines are in files not given (rotated away or elsewhere)"
                            );
                        }
                    }
                    if r.unsigned_tail > 0 {
                        say!(
                            "the last {} events follow the last checkpoint: chained but not yet signed",
                            r.unsigned_tail
                        );
                    }
                    // kfsec signs every `checkpointLines` lines; even a kill -9 and restart leave
                    // fewer than twice that unsigned. More means checkpoints were removed and the
                    // lines after them rewritten and re-chained.
                    let every = cfg
                        .audit
                        .log
                        .as_ref()
                        .map_or(kfsec_audit::log::DEFAULT_CHECKPOINT_LINES, |l| l.checkpoint_lines);
                    if r.unsigned_tail > every.saturating_mul(2) {
                        say!(
                            "NOT VERIFIED: {} events after the last checkpoint, but kfsec signs a checkpoint every {every} lines (audit.log.checkpointLines): checkpoints were removed and the lines after them may have been rewritten; compare with the witness's checkpoints",
                            r.unsigned_tail
                        );
                        return Ok(false);
                    }
                    Ok(true)
                }
            }
        }
        AuditCmd::Query {
            files: given,
            user,
            since,
            verb,
            decision,
            resource,
            namespace,
            output,
        } => {
            let files = log_files(given, cfg)?;
            let since = match since {
                None => None,
                Some(s) => Some(match kfsec_types::time::parse_rfc3339(&s) {
                    Some(t) => t,
                    None => {
                        let d = kfsec_types::config::parse_duration(&s)
                            .map_err(|e| anyhow::anyhow!("--since {s:?}: {e} (use 1h, 30m, 7d or an RFC 3339 time)"))?;
                        let now = kfsec_types::Clock::now(&kfsec_types::SystemClock);
                        i64::try_from(now.sub(d).as_secs()).unwrap_or(0)
                    }
                }),
            };
            let filter = query::Filter {
                user,
                since,
                verb,
                decision: decision.map(|d| match d {
                    DecisionArg::Allow => query::Decision::Allow,
                    DecisionArg::Deny => query::Decision::Deny,
                }),
                resource,
                namespace,
            };
            let mut unreadable = 0u64;
            for f in &files {
                let file = std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
                let mut r = std::io::BufReader::new(file);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line)
                        .with_context(|| format!("reading {}", f.display()))?
                        == 0
                    {
                        break;
                    }
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
                        unreadable += 1;
                        continue;
                    };
                    if query::is_checkpoint(&v) || !filter.matches(&v) {
                        continue;
                    }
                    match output {
                        Output::Json => say!("{}", String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line))),
                        Output::Text => say!("{}", query::summary(&v)),
                    }
                }
            }
            if unreadable > 0 {
                eprintln!("kfsec: {unreadable} lines were not JSON and were skipped (kfsec audit verify says why)");
            }
            Ok(true)
        }
    }
}
