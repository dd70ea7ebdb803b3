//! Bakes the build's identity into the binary: the git commit, whether the tree was clean, and
//! the build date (the commit's date, so two builds of one commit agree; `SOURCE_DATE_EPOCH`
//! when set). Outside git (a source tarball) the commit is `unknown`, never an error.
//!
//! Only this crate (the binary) has a build script, and it reruns only when HEAD, the current
//! ref (loose or packed) or the workspace's sources change — sources whose change rebuilds this
//! crate anyway — so a commit never rebuilds the rest of the workspace. (The index is not
//! watched: staging changes neither the commit nor whether the tree differs from it.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let git = Git { dir: &manifest };
    let commit = git.out(&["rev-parse", "--verify", "HEAD"]);
    if commit.is_some() {
        watch_git(&git);
    }
    if let Some(root) = manifest.parent().and_then(Path::parent) {
        watch_sources(root);
    }
    let tree_state = match (&commit, git.out(&["status", "--porcelain", "--untracked-files=no"])) {
        (Some(_), Some(changes)) if changes.is_empty() => "clean",
        (Some(_), Some(_)) => "dirty",
        _ => "",
    };
    let date = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .or_else(|| git.out(&["log", "-1", "--format=%ct", "HEAD"])?.parse().ok())
        .unwrap_or_else(now);
    let commit = commit.unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KFSEC_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=KFSEC_GIT_TREE_STATE={tree_state}");
    println!("cargo:rustc-env=KFSEC_BUILD_EPOCH={date}");
}

/// `git` run in the crate's directory (whichever repository or worktree holds it).
struct Git<'a> {
    dir: &'a Path,
}

impl Git<'_> {
    /// The trimmed standard output of a successful `git` command; `None` without git, outside
    /// a repository, or on any failure.
    fn out(&self, args: &[&str]) -> Option<String> {
        // --no-optional-locks: `status` must not rewrite the index it is watched through.
        let o = Command::new("git")
            .arg("--no-optional-locks")
            .arg("-C")
            .arg(self.dir)
            .args(args)
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    }

    fn path(&self, args: &[&str]) -> Option<PathBuf> {
        let p = PathBuf::from(self.out(args)?);
        Some(if p.is_absolute() { p } else { self.dir.join(p) })
    }
}

/// Reruns when HEAD moves (a commit, a checkout: HEAD, its reflog) or the branch it names moves
/// (a loose ref, or `packed-refs` and the directory a loose ref would appear in). Only existing
/// paths are watched: Cargo reruns a script whose watched path is missing on every build.
fn watch_git(git: &Git<'_>) {
    let Some(git_dir) = git.path(&["rev-parse", "--git-dir"]) else {
        return;
    };
    let common = git
        .path(&["rev-parse", "--git-common-dir"])
        .unwrap_or_else(|| git_dir.clone());
    let mut watched = vec![
        git_dir.join("HEAD"),
        git_dir.join("logs/HEAD"),
        common.join("packed-refs"),
    ];
    if let Some(branch) = git.out(&["symbolic-ref", "-q", "HEAD"]) {
        let loose = common.join(branch);
        if !loose.exists()
            && let Some(parent) = loose.parent()
        {
            watched.push(parent.to_path_buf());
        }
        watched.push(loose);
    }
    for p in watched.into_iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

/// Reruns when a workspace crate's sources change (the tree state): every crate directory's
/// entries except its tests, whose edits rebuild only the test binaries.
fn watch_sources(root: &Path) {
    for top in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(top).display());
    }
    let Ok(crates) = std::fs::read_dir(root.join("crates")) else {
        return;
    };
    for krate in crates.flatten() {
        let Ok(entries) = std::fs::read_dir(krate.path()) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name() != "tests" {
                println!("cargo:rerun-if-changed={}", e.path().display());
            }
        }
    }
}

/// The build time, for a build with neither git nor `SOURCE_DATE_EPOCH`.
#[allow(clippy::disallowed_methods)] // a build script: the build's own time is the value asked for
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
