//! `policy`: which buckets and key prefixes a namespace's key reaches — rules of (bucket,
//! prefix, access) with `<ns>` standing for the key's namespace. The default is
//! SeaweedFS-compatible: in the pipelines bucket, `private-artifacts/<ns>/` and `private/<ns>/`
//! are the namespace's own, `artifacts/` and `shared/` are shared by every namespace.
//!
//! Invariants: deny unless a rule allows; a prefix is matched byte for byte (S3 keys are not
//! paths), and every non-empty prefix ends in `/`, so `private/team` never covers
//! `private/team-b/`; keys holding `.`/`..` or empty segments are refused outright (stores with
//! a filesystem underneath, such as SeaweedFS's filer, may fold them into another namespace's
//! prefix); a listing is allowed only where some readable rule lies inside or around its
//! prefix, and [`Policy::listing`] says whether the answer must then be filtered.

/// What a rule lets a key do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Get, head and list.
    Read,
    /// Read, put, delete and multipart uploads.
    ReadWrite,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Reading (GET, HEAD, listing).
    Read,
    /// Writing (PUT, POST, DELETE, multipart).
    Write,
}

impl Access {
    fn grants(self, need: Need) -> bool {
        matches!((self, need), (_, Need::Read) | (Access::ReadWrite, Need::Write))
    }
}

/// The namespace placeholder in buckets and prefixes.
pub const NS: &str = "<ns>";

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The bucket (may hold `<ns>`).
    pub bucket: String,
    /// The key prefix: `""` or ending in `/` (may hold `<ns>` as a whole segment).
    pub prefix: String,
    /// What it grants.
    pub access: Access,
}

/// A configured rule that makes no sense (named with the reason).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// How a listing of `prefix` may be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListScope {
    /// Nothing under the prefix is readable: refuse.
    Denied,
    /// Everything under the prefix is readable: pass the answer through.
    Inside,
    /// Parts are readable: filter the answer's entries ([`Policy::key_visible`],
    /// [`Policy::prefix_visible`]).
    Filter,
}

/// The rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
}

fn fill(template: &str, ns: &str) -> String {
    template.replace(NS, ns)
}

/// Whether `key` is one this gateway (and KFP's artifact endpoint) forwards: no `.` or `..`
/// segment, not even padded with whitespace (a store or a file system trimming names would
/// read it as one); no empty segment inside (a trailing `/`, a "folder" marker, is fine); no
/// `\` (a path separator to Windows-backed stores); no control character (C0, DEL, C1).
pub fn safe_key(key: &str) -> bool {
    if key.is_empty() || key.contains('\\') || key.chars().any(char::is_control) {
        return false;
    }
    let body = key.strip_suffix('/').unwrap_or(key);
    !body
        .split('/')
        .any(|seg| seg.is_empty() || matches!(seg.trim(), "." | ".."))
}

impl Policy {
    /// Checks the rules: a bucket name S3 accepts (3–63 of `a-z0-9.-`, `<ns>` allowed), a
    /// prefix that is `""` or ends in `/`, with `<ns>` only as a whole segment, and no `.`/`..`
    /// or empty segments.
    pub fn new(rules: Vec<Rule>) -> Result<Self, PolicyError> {
        for (i, r) in rules.iter().enumerate() {
            let bucket = r.bucket.replace(NS, "ns");
            if !(3..=63).contains(&bucket.len())
                || !bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            {
                return Err(PolicyError(format!(
                    "s3.policy[{i}].bucket {:?}: not a bucket name (3-63 of a-z, 0-9, '.', '-'; <ns> for the namespace)",
                    r.bucket
                )));
            }
            if r.prefix.is_empty() {
                continue;
            }
            if !r.prefix.ends_with('/') || r.prefix.starts_with('/') {
                return Err(PolicyError(format!(
                    "s3.policy[{i}].prefix {:?}: a prefix ends in '/' and does not start with one (\"\" for the whole bucket)",
                    r.prefix
                )));
            }
            let filled = r.prefix.replace(NS, "ns");
            // Stores answer listings with `encoding-type=url` (botocore asks for it by default)
            // in form encoding, which a '+' or '%' in a prefix would read differently: refused,
            // so a prefix compares the same encoded or not.
            if filled.contains(['%', '+']) {
                return Err(PolicyError(format!(
                    "s3.policy[{i}].prefix {:?}: '%' and '+' are not allowed in a prefix (listings name keys URL-encoded, where they read differently)",
                    r.prefix
                )));
            }
            if !safe_key(&filled) {
                return Err(PolicyError(format!(
                    "s3.policy[{i}].prefix {:?}: no empty, '.' or '..' segments",
                    r.prefix
                )));
            }
            if r.prefix.split('/').any(|seg| seg.contains(NS) && seg != NS)
                || r.prefix.replace(NS, "").contains(['<', '>'])
            {
                return Err(PolicyError(format!(
                    "s3.policy[{i}].prefix {:?}: <ns> stands for a whole segment (like private/<ns>/)",
                    r.prefix
                )));
            }
        }
        Ok(Self { rules })
    }

    /// SeaweedFS's per-namespace policy (KFP's `sync.py`) in `bucket`.
    pub fn seaweedfs_default(bucket: &str) -> Self {
        let rule = |prefix: &str| Rule {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            access: Access::ReadWrite,
        };
        Self {
            rules: vec![
                rule("private-artifacts/<ns>/"),
                rule("private/<ns>/"),
                rule("artifacts/"),
                rule("shared/"),
            ],
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The (prefix, access) pairs of `bucket` for namespace `ns`.
    fn in_bucket<'a>(&'a self, ns: &'a str, bucket: &'a str) -> impl Iterator<Item = (String, Access)> + 'a {
        self.rules
            .iter()
            .filter(move |r| fill(&r.bucket, ns) == bucket)
            .map(move |r| (fill(&r.prefix, ns), r.access))
    }

    /// The (bucket, prefix) pairs that are `ns`'s own: its rules that name [`NS`], in its bucket
    /// or its prefix — what goes with the namespace.
    pub fn owned(&self, ns: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for r in self
            .rules
            .iter()
            .filter(|r| r.bucket.contains(NS) || r.prefix.contains(NS))
        {
            let pair = (fill(&r.bucket, ns), fill(&r.prefix, ns));
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
        out
    }

    /// Whether namespace `ns` may do what `need` says to object `key` of `bucket`.
    pub fn object(&self, ns: &str, bucket: &str, key: &str, need: Need) -> bool {
        safe_key(key)
            && self
                .in_bucket(ns, bucket)
                .any(|(p, a)| a.grants(need) && key.starts_with(p.as_str()))
    }

    /// Whether `ns` has any rule in `bucket` (HeadBucket, GetBucketLocation).
    pub fn bucket_visible(&self, ns: &str, bucket: &str) -> bool {
        self.in_bucket(ns, bucket).next().is_some()
    }

    /// How a listing of `prefix` in `bucket` may be answered for `ns`.
    pub fn listing(&self, ns: &str, bucket: &str, prefix: &str) -> ListScope {
        let mut scope = ListScope::Denied;
        for (p, a) in self.in_bucket(ns, bucket) {
            if !a.grants(Need::Read) {
                continue;
            }
            if prefix.starts_with(p.as_str()) {
                return ListScope::Inside;
            }
            if p.starts_with(prefix) {
                scope = ListScope::Filter;
            }
        }
        scope
    }

    /// Whether a listed key may be shown to `ns`.
    pub fn key_visible(&self, ns: &str, bucket: &str, key: &str) -> bool {
        self.object(ns, bucket, key, Need::Read)
    }

    /// Whether a listed common prefix may be shown to `ns`: it lies inside a readable prefix,
    /// or a readable prefix lies inside it (it leads there).
    pub fn prefix_visible(&self, ns: &str, bucket: &str, common: &str) -> bool {
        self.in_bucket(ns, bucket)
            .any(|(p, _)| common.starts_with(p.as_str()) || p.starts_with(common))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default() -> Policy {
        Policy::seaweedfs_default("mlpipeline")
    }

    #[test]
    fn the_default_keeps_a_namespace_to_its_own_and_the_shared_prefixes() {
        let p = default();
        for key in [
            "private-artifacts/team-a/run/x",
            "private/team-a/x",
            "artifacts/x",
            "shared/a/b",
        ] {
            assert!(p.object("team-a", "mlpipeline", key, Need::Write), "{key}");
            assert!(p.object("team-a", "mlpipeline", key, Need::Read), "{key}");
        }
        for key in [
            "private-artifacts/team-b/x",
            "private-artifacts/team-ab/x",
            "private-artifacts/team-a",
            "private/team-b/x",
            "other/x",
            "private-artifacts/team-a/../team-b/x",
            "private-artifacts/team-a//x",
            "private-artifacts/team-a/./x",
            "shared/\u{0}",
            "",
        ] {
            assert!(!p.object("team-a", "mlpipeline", key, Need::Read), "{key}");
        }
        assert!(!p.object("team-a", "other-bucket", "shared/x", Need::Read));
        assert!(p.bucket_visible("team-a", "mlpipeline"));
        assert!(!p.bucket_visible("team-a", "other-bucket"));
    }

    #[test]
    fn listings_pass_inside_filter_around_and_deny_elsewhere() {
        let p = default();
        let l = |prefix| p.listing("team-a", "mlpipeline", prefix);
        assert_eq!(l("private-artifacts/team-a/"), ListScope::Inside);
        assert_eq!(l("private-artifacts/team-a/run"), ListScope::Inside);
        assert_eq!(l("shared/"), ListScope::Inside);
        assert_eq!(l(""), ListScope::Filter);
        assert_eq!(l("private-artifacts/"), ListScope::Filter);
        assert_eq!(l("private-artifacts/team"), ListScope::Filter);
        assert_eq!(l("private-artifacts/team-b/"), ListScope::Denied);
        assert_eq!(l("other/"), ListScope::Denied);
        assert_eq!(p.listing("team-a", "other", ""), ListScope::Denied);
        assert!(p.prefix_visible("team-a", "mlpipeline", "private-artifacts/"));
        assert!(p.prefix_visible("team-a", "mlpipeline", "private-artifacts/team-a/"));
        assert!(!p.prefix_visible("team-a", "mlpipeline", "private-artifacts/team-b/"));
        assert!(!p.prefix_visible("team-a", "mlpipeline", "other/"));
    }

    #[test]
    fn read_rules_do_not_grant_writes_and_ns_fills_buckets() {
        let p = Policy::new(vec![
            Rule {
                bucket: "models".into(),
                prefix: "".into(),
                access: Access::Read,
            },
            Rule {
                bucket: "ns-<ns>".into(),
                prefix: "".into(),
                access: Access::ReadWrite,
            },
        ])
        .unwrap();
        assert!(p.object("a", "models", "x", Need::Read));
        assert!(!p.object("a", "models", "x", Need::Write));
        assert!(p.object("a", "ns-a", "x", Need::Write));
        assert!(!p.object("a", "ns-b", "x", Need::Read));
        assert_eq!(p.listing("a", "models", ""), ListScope::Inside);
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        let bad = |bucket: &str, prefix: &str| {
            Policy::new(vec![Rule {
                bucket: bucket.into(),
                prefix: prefix.into(),
                access: Access::Read,
            }])
            .unwrap_err()
            .0
        };
        assert!(bad("mlpipeline", "private/<ns>").contains("ends in '/'"));
        assert!(bad("mlpipeline", "/private/").contains("ends in '/'"));
        assert!(bad("mlpipeline", "private/x<ns>/").contains("whole segment"));
        assert!(bad("mlpipeline", "a//").contains("segments"));
        assert!(bad("mlpipeline", "a/../").contains("segments"));
        assert!(bad("ML", "").contains("bucket name"));
        assert!(bad("mlpipeline", "<nsx>/").contains("whole segment"));
        assert!(bad("mlpipeline", "a+b/").contains("'%' and '+'"));
        assert!(bad("mlpipeline", "a%20b/").contains("'%' and '+'"));
    }

    /// Finding 7 of the security review: one key predicate for the gateway and KFP's artifact
    /// endpoint, refusing `\\` and whitespace-padded dot segments.
    #[test]
    fn unsafe_keys_in_every_spelling_are_refused() {
        for ok in ["a", "a/b", "a/b/", "a/.b", "a/..b/c", "a/b c/d", "a/b.txt"] {
            assert!(safe_key(ok), "{ok:?}");
        }
        for bad in [
            "", "/a", "a//b", "a/./b", "a/../b", "..", "a/ .. /b", "a/..\t/b", " ./a", "a/. ", "a\\..\\b", "a\\b",
            "a\u{0}b", "a\u{7f}", "a\u{85}b", "a\nb",
        ] {
            assert!(!safe_key(bad), "{bad:?}");
        }
    }
}
