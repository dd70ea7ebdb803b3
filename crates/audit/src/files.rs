//! The audit log's files on disk: rotated backups' names (`audit-2026-12-05T21-00-00.000.log`
//! next to `audit.log`, as lumberjack names them, UTC), finding and ordering them, reading the
//! last line of a file, and verifying a chain across files without loading them in memory.
//!
//! Security invariant: file order comes from the names' timestamps (sortable text), never from
//! modification times an attacker can set; reading is bounded per line by the file itself.

use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use kfsec_types::UnixTime;

use crate::chain::{Failure, Report, Verifier};

/// `audit.log` → (`audit`, `.log`).
fn stem_ext(base: &Path) -> (String, String) {
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rfind('.') {
        Some(i) if i > 0 => (name[..i].to_owned(), name[i..].to_owned()),
        _ => (name, String::new()),
    }
}

/// The name of a backup of `base` rotated at `t`: `<stem>-YYYY-MM-DDTHH-MM-SS.mmm<ext>`.
pub fn backup_name(base: &Path, t: UnixTime) -> PathBuf {
    let (stem, ext) = stem_ext(base);
    let secs = kfsec_types::time::format_rfc3339(i64::try_from(t.as_secs()).unwrap_or(i64::MAX));
    let stamp = format!(
        "{}.{:03}",
        secs.trim_end_matches('Z').replace(':', "-"),
        t.since_epoch().subsec_millis()
    );
    base.with_file_name(format!("{stem}-{stamp}{ext}"))
}

/// The time in a backup's name, if `name` is a backup of `base`.
pub fn backup_time(base: &Path, name: &str) -> Option<i64> {
    let (stem, ext) = stem_ext(base);
    let stamp = name
        .strip_prefix(&stem)?
        .strip_prefix('-')?
        .strip_suffix(ext.as_str())?;
    // 2026-12-05T21-00-00.000
    if stamp.len() != 23 {
        return None;
    }
    let (date, time) = stamp.split_once('T')?;
    let (hms, _millis) = time.split_once('.')?;
    let rfc = format!("{date}T{}Z", hms.replace('-', ":"));
    kfsec_types::time::parse_rfc3339(&rfc)
}

/// The backups of `base`, oldest first (by the time in their names).
pub fn backups(base: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = match base.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if backup_time(base, &name).is_some() {
            out.push((name, e.path()));
        }
    }
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// The files of the log at `base` in chain order: its backups, oldest first, then `base`.
pub fn chain_files(base: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = backups(base)?;
    if base.exists() {
        files.push(base.to_owned());
    }
    Ok(files)
}

/// The last complete line of `file` (without newline), and the length of an incomplete tail
/// after it (bytes after the last newline). `None` line: no complete line.
pub fn last_line(file: &Path) -> std::io::Result<(Option<Vec<u8>>, u64)> {
    let mut f = std::fs::File::open(file)?;
    let len = f.metadata()?.len();
    const CHUNK: u64 = 64 * 1024;
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = len;
    // Read backwards until two newlines (or the start) bound the last complete line.
    loop {
        let start = pos.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; usize::try_from(pos - start).unwrap_or(0)];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        pos = start;
        let newlines: Vec<usize> = buf
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i)
            .collect();
        if let Some(&last_nl) = newlines.last() {
            let tail = u64::try_from(buf.len() - last_nl - 1).unwrap_or(0);
            if newlines.len() >= 2 || pos == 0 {
                let begin = if newlines.len() >= 2 {
                    newlines[newlines.len() - 2] + 1
                } else {
                    0
                };
                return Ok((Some(buf[begin..last_nl].to_vec()), tail));
            }
        } else if pos == 0 {
            return Ok((None, u64::try_from(buf.len()).unwrap_or(0)));
        }
    }
}

/// A problem reading the files (not a chain failure).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct ReadError {
    /// The file.
    pub path: String,
    /// Why.
    pub source: std::io::Error,
}

/// The outcome of verifying files: intact (with the report) or the first bad line.
pub type Verdict = Result<Report, Failure>;

/// Whether sequence number `seq` appears in `files[fi]` after byte `offset`, or in a later file.
fn appears_later(files: &[PathBuf], fi: usize, offset: u64, seq: u64) -> bool {
    for (i, path) in files.iter().enumerate().skip(fi) {
        let Ok(f) = std::fs::File::open(path) else { continue };
        let mut r = BufReader::new(f);
        if i == fi && r.seek(SeekFrom::Start(offset)).is_err() {
            continue;
        }
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if Verifier::seq_of(line.strip_suffix(b"\n").unwrap_or(&line)) == Some(seq) {
                        return true;
                    }
                }
            }
        }
    }
    false
}

/// How often, and how long apart, an incomplete last line is re-read before it is called a
/// truncated tail (a running kfsec appends each event with one `write`).
const TAIL_SETTLE_TRIES: usize = 4;
const TAIL_SETTLE_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Verifies the chain across `files` in order, streaming. Errors reading a file are
/// [`ReadError`]; a bad line is the verdict's [`Failure`].
pub fn verify_files(files: &[PathBuf], keys: &[Vec<u8>]) -> Result<Verdict, ReadError> {
    let mut v = Verifier::new(keys);
    for (fi, path) in files.iter().enumerate() {
        let name = path.display().to_string();
        let rerr = |source| ReadError {
            path: name.clone(),
            source,
        };
        let f = std::fs::File::open(path).map_err(rerr)?;
        let mut r = BufReader::with_capacity(256 * 1024, f);
        let mut line = Vec::new();
        let mut n = 0usize;
        let mut offset = 0u64;
        loop {
            line.clear();
            let got = r.read_until(b'\n', &mut line).map_err(rerr)?;
            if got == 0 {
                break;
            }
            let mut got = got;
            let last = fi + 1 == files.len();
            if last && !line.ends_with(b"\n") {
                // The live log's writer may be mid-`write`: give the line a moment to complete
                // before calling it a truncated tail.
                for _ in 0..TAIL_SETTLE_TRIES {
                    // The CLI's synchronous verifier, never run on a runtime worker.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(TAIL_SETTLE_PAUSE);
                    got += r.read_until(b'\n', &mut line).map_err(rerr)?;
                    if line.ends_with(b"\n") {
                        break;
                    }
                }
            }
            n += 1;
            offset += u64::try_from(got).unwrap_or(0);
            let Some(complete) = line.strip_suffix(b"\n") else {
                return Ok(Err(Failure {
                    file: name,
                    line: n,
                    kind: if last { "truncated" } else { "malformed" },
                    reason: if last {
                        format!(
                            "truncated tail: the last line is incomplete (the write was cut, e.g. by kill -9); the {} lines before it are intact",
                            v.events()
                        )
                    } else {
                        "incomplete line at the end of a rotated file".to_owned()
                    },
                }));
            };
            let mut later = |seq| appears_later(files, fi, offset, seq);
            if let Err(failure) = v.line(&name, n, complete, &mut later) {
                return Ok(Err(failure));
            }
        }
    }
    let mut report = v.finish();
    report.files = files.len();
    Ok(Ok(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_round_trip_and_sort_by_time() {
        let base = Path::new("/var/log/kfsec/audit.log");
        let t = UnixTime::from_millis(1_796_504_400_123);
        let b = backup_name(base, t);
        let name = b.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        assert_eq!(name, "audit-2026-12-05T21-00-00.123.log");
        assert_eq!(backup_time(base, &name), Some(1_796_504_400));
        assert_eq!(backup_time(base, "audit.log"), None);
        assert_eq!(backup_time(base, "other-2026-12-05T21-00-00.123.log"), None);
    }

    #[test]
    fn last_line_finds_the_last_complete_line_and_the_cut_tail() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path().join("a.log");
        std::fs::write(&p, b"one\ntwo\nthr").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            last_line(&p).unwrap_or_else(|e| panic!("{e}")),
            (Some(b"two".to_vec()), 3)
        );
        std::fs::write(&p, b"one\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            last_line(&p).unwrap_or_else(|e| panic!("{e}")),
            (Some(b"one".to_vec()), 0)
        );
        std::fs::write(&p, b"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(last_line(&p).unwrap_or_else(|e| panic!("{e}")), (None, 0));
        let big = format!("{}\n{}\n", "x".repeat(100_000), "y".repeat(70_000));
        std::fs::write(&p, &big).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            last_line(&p).unwrap_or_else(|e| panic!("{e}")).0.map(|l| l.len()),
            Some(70_000)
        );
    }
}
