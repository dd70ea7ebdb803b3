//! What the running binary was built from: its version, git commit, tree state and build date.
//! The binary crate bakes them in at build time and passes one [`BuildInfo`] down to the
//! components that report it (`/version`, the `kfsec_build_info` metric); nothing reads them
//! from the environment at run time.
//!
//! Invariants: no IO; the values are reported verbatim, so they never carry secrets.

/// The build of the running binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// kfsec's version (the workspace's package version), e.g. `0.1.0`.
    pub version: String,
    /// The full git commit hash, or `unknown` for a build outside git (a source tarball).
    pub commit: String,
    /// Whether the tree had uncommitted changes: `clean`, `dirty`, or empty when unknown (as
    /// Kubernetes leaves `gitTreeState` unset).
    pub tree_state: String,
    /// When it was built, Unix seconds: the commit's date (reproducible), or
    /// `SOURCE_DATE_EPOCH` when the build set it.
    pub build_date: i64,
}

impl BuildInfo {
    /// The commit, shortened to 12 characters for people (`unknown` stays `unknown`).
    pub fn short_commit(&self) -> &str {
        self.commit.get(..12).unwrap_or(&self.commit)
    }

    /// What `kfsec --version` prints after the name: `0.1.0 (commit 0123456789ab, built
    /// 2026-12-05)`.
    pub fn version_line(&self) -> String {
        let date = self.build_date_rfc3339();
        format!(
            "{} (commit {}, built {})",
            self.version,
            self.short_commit(),
            date.get(..10).unwrap_or(&date)
        )
    }

    /// The build date in RFC 3339 (`2026-12-05T14:02:40Z`), as `/version`'s `buildDate`.
    pub fn build_date_rfc3339(&self) -> String {
        crate::time::format_rfc3339(self.build_date)
    }
}

impl Default for BuildInfo {
    /// What a library user (tests, embedders) gets without a build script: the version of this
    /// crate, commit `unknown`, and the Unix epoch as the date (Kubernetes' own unset default).
    fn default() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: "unknown".to_owned(),
            tree_state: String::new(),
            build_date: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_commit_and_date() {
        let b = BuildInfo {
            version: "0.1.0".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            tree_state: "clean".into(),
            build_date: 1_796_479_360,
        };
        assert_eq!(b.short_commit(), "0123456789ab");
        assert_eq!(b.build_date_rfc3339(), "2026-12-05T14:02:40Z");
        assert_eq!(b.version_line(), "0.1.0 (commit 0123456789ab, built 2026-12-05)");
        assert_eq!(BuildInfo::default().short_commit(), "unknown");
    }
}
