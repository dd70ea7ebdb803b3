//! Attacks on the audit log as someone who can write the log file: `kfsec audit verify` must
//! not call a rewritten log intact.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use kfsec_audit::chain::{Head, SigningKey, log_event};
use kfsec_audit::log::DEFAULT_CHECKPOINT_LINES;
use kfsec_types::{SequenceRng, UnixTime};

const BIN: &str = env!("CARGO_BIN_EXE_kfsec");

fn verify(data: &Path, log: &Path) -> (bool, String) {
    let o = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(log)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// `n` events as kfsec writes them (a checkpoint after every [`DEFAULT_CHECKPOINT_LINES`]
/// lines), the events where `tamper` holds rewritten and re-chained by someone without the key
/// (who must drop every checkpoint after the first rewritten line).
fn log(key: &SigningKey, n: u64, tamper: impl Fn(u64) -> bool) -> String {
    let rng = SequenceRng::default();
    let mut head = Head::default();
    let mut out = String::new();
    let mut since = 0;
    let mut signed = true;
    for i in 0..n {
        let name = if tamper(i) {
            "forged".to_owned()
        } else {
            format!("cm-{i}")
        };
        let mut a = BTreeMap::new();
        a.insert("kfsec.io/test-name".to_owned(), name);
        let e = log_event("configmaps", "create", UnixTime::from_secs(1_796_504_400 + i), &rng, a);
        out.push_str(&head.seal(e, i == 0).unwrap());
        out.push('\n');
        since += 1;
        if since == DEFAULT_CHECKPOINT_LINES {
            since = 0;
            // The attacker cannot sign the rewritten head: from the tampered line on, no checkpoint.
            if (0..=i).any(&tamper) {
                signed = false;
            }
            if signed {
                let cp = key.checkpoint(&head, UnixTime::from_secs(1_796_504_400 + i), &rng);
                out.push_str(&head.seal(cp, false).unwrap());
                out.push('\n');
            }
        }
    }
    out
}

#[test]
fn checkpoints_removed_after_a_rewrite_are_not_called_intact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = SigningKey::load_or_create(&data.join("audit"), &SequenceRng::default()).unwrap();
    let path = dir.path().join("audit.log");

    // As written: intact.
    std::fs::write(&path, log(&key, 3500, |_| false)).unwrap();
    let (ok, out) = verify(&data, &path);
    assert!(ok, "{out}");

    // Line 1500 (signed by the checkpoint after line 2000) rewritten, the chain re-hashed and
    // the checkpoints that no longer match dropped: 2500 lines with no checkpoint, while kfsec
    // signs every 1000 (a crash and restart leaves fewer than 2000).
    std::fs::write(&path, log(&key, 3500, |i| i == 1500)).unwrap();
    let (ok, out) = verify(&data, &path);
    assert!(
        !ok,
        "a tail longer than the checkpoint cadence must not pass as intact: {out}"
    );
    assert!(out.contains("checkpoint"), "{out}");
}
