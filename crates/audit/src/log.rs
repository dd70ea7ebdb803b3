//! The log backend's writer: seals each event into the hash chain and appends it to the file,
//! writing each batch of lines its caller hands it in one write ([`LogWriter::flush`]: lines are
//! held in the process only until the batch ends, so a kill -9 loses only what was queued or in
//! the batch), writes signed checkpoints every N lines (and, driven by its caller, every T
//! seconds) and syncs them (those of a flood of lines at most once a second), rotates by size into lumberjack-named backups and prunes them by count and age.
//!
//! Security invariants: files are created mode 0600 (directory 0700); the chain resumes from the
//! last complete line on disk (sequence numbers continue across restarts and rotations); an
//! incomplete last line left by a crash is moved into a recovery event (its bytes kept in an
//! annotation), so the chain stays verifiable and the loss is on record.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kfsec_types::{Clock, Rng, UnixTime};

use crate::chain::{self, Body, Encoded, Head, SigningKey};
use crate::event::Event;
use crate::files;

/// Kubernetes' `--audit-log-maxsize` default (MB).
pub const DEFAULT_MAX_SIZE_MB: u64 = 100;
/// Kubernetes' `--audit-log-maxbackup` default.
pub const DEFAULT_MAX_BACKUPS: u64 = 100;
/// Kubernetes' `--audit-log-maxage` default (days).
pub const DEFAULT_MAX_AGE_DAYS: u64 = 366;
/// Default lines between checkpoints.
pub const DEFAULT_CHECKPOINT_LINES: u64 = 1000;
/// Default time between checkpoints (when anything was written).
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
/// The checkpoints written every N lines are synced at most this often (the others and the
/// writer's idle moments sync at once).
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Where the log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// A file (rotated).
    File(PathBuf),
    /// Standard output (`-`), never rotated.
    Stdout,
}

/// The log backend's settings (`audit.log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The file, or stdout.
    pub target: LogTarget,
    /// Rotate when the file would exceed this many MB (0: never).
    pub max_size_mb: u64,
    /// Rotated files kept (0: all).
    pub max_backups: u64,
    /// Days rotated files are kept (0: forever).
    pub max_age_days: u64,
    /// Lines between checkpoints.
    pub checkpoint_lines: u64,
    /// Time between checkpoints.
    pub checkpoint_interval: Duration,
    /// Where each checkpoint is also posted (a witness in another trust domain).
    pub witness: Option<crate::webhook::WebhookSettings>,
}

impl LogSettings {
    /// Kubernetes' defaults for `path`.
    pub fn new(target: LogTarget) -> Self {
        Self {
            target,
            max_size_mb: DEFAULT_MAX_SIZE_MB,
            max_backups: DEFAULT_MAX_BACKUPS,
            max_age_days: DEFAULT_MAX_AGE_DAYS,
            checkpoint_lines: DEFAULT_CHECKPOINT_LINES,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            witness: None,
        }
    }
}

/// Errors of the log writer.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// File IO.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Sealing.
    #[error(transparent)]
    Chain(#[from] chain::ChainError),
}

enum Out {
    Stdout,
    File { path: PathBuf, file: File, size: u64 },
}

/// Appends sealed events to the log (one owner: the backend's thread).
pub struct LogWriter {
    out: Out,
    /// Sealed lines not yet written (one batch; [`LogWriter::flush`] writes them).
    pending: Vec<u8>,
    /// How many lines `pending` holds.
    pending_lines: u64,
    head: Head,
    first_in_file: bool,
    since_checkpoint: u64,
    /// The checkpoint lines written since the last sync: handed to the witness once synced (a
    /// witness must never hold a checkpoint a crash could still take off the disk).
    unsynced: Vec<String>,
    /// When the file was last synced.
    last_sync: Option<UnixTime>,
    settings: LogSettings,
    key: Arc<SigningKey>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    witness: Option<Box<dyn Fn(String) + Send>>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl Drop for LogWriter {
    /// A writer dropped with lines still pending writes them (best effort: a failure here was
    /// going to be one at the next flush too, and is logged).
    fn drop(&mut self) {
        let lines = self.pending_lines;
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, lines, "writing the audit log's last lines failed");
        }
    }
}

/// Whether `line` (a sealed line read back) is a checkpoint.
fn is_checkpoint_line(line: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| {
        v.pointer("/objectRef/resource").and_then(serde_json::Value::as_str) == Some(chain::CHECKPOINT_RESOURCE)
            && v.get("verb").and_then(serde_json::Value::as_str) == Some("checkpoint")
    })
}

fn open_append(path: &std::path::Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

impl LogWriter {
    /// Opens the log, resuming the chain from the last line on disk (the file's, else its
    /// newest backup's). An incomplete last line is cut off and kept in a recovery event. When
    /// the chain resumed after lines no checkpoint signed (the previous run was killed), a
    /// checkpoint signing them is written first: a process that keeps crashing before its first
    /// checkpoint leaves at most its last run's lines unsigned, never a growing tail that
    /// `kfsec audit verify` must treat as checkpoints removed.
    pub fn open(
        settings: LogSettings,
        key: Arc<SigningKey>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn Rng>,
    ) -> Result<Self, LogError> {
        // Whether the last line on disk is a chained line that is not a checkpoint.
        let mut unsigned_on_disk = false;
        let (out, head, first_in_file, cut) = match &settings.target {
            LogTarget::Stdout => (Out::Stdout, Head::default(), true, None),
            LogTarget::File(path) => {
                let io = |source| LogError::Io {
                    path: path.clone(),
                    source,
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(io)?;
                }
                let file = open_append(path).map_err(io)?;
                let mut size = file.metadata().map_err(io)?.len();
                let (last, tail) = files::last_line(path).map_err(io)?;
                let mut cut = None;
                if tail > 0 {
                    // A crash cut the last write: keep its bytes in the record, not in the file.
                    let data = std::fs::read(path).map_err(io)?;
                    let keep = size - tail;
                    let start = usize::try_from(keep).unwrap_or(data.len()).min(data.len());
                    cut = Some((String::from_utf8_lossy(&data[start..]).into_owned(), tail));
                    file.set_len(keep).map_err(io)?;
                    size = keep;
                }
                let (head, first) = match last.as_deref().and_then(Head::of_line) {
                    Some(h) => {
                        unsigned_on_disk = last.as_deref().is_some_and(|l| !is_checkpoint_line(l));
                        (h, false)
                    }
                    None if last.is_some() => {
                        tracing::warn!(path = %path.display(), "the audit log's last line carries no chain annotations; a new chain starts");
                        (Head::default(), false)
                    }
                    None => {
                        // Empty file: continue from the newest backup, if any.
                        let prev_line = files::backups(path)
                            .map_err(io)?
                            .last()
                            .and_then(|b| files::last_line(b).ok())
                            .and_then(|(l, _)| l);
                        let prev = prev_line.as_deref().and_then(Head::of_line);
                        unsigned_on_disk =
                            prev.is_some() && prev_line.as_deref().is_some_and(|l| !is_checkpoint_line(l));
                        (prev.unwrap_or_default(), true)
                    }
                };
                (
                    Out::File {
                        path: path.clone(),
                        file,
                        size,
                    },
                    head,
                    first,
                    cut,
                )
            }
        };
        let mut w = Self {
            out,
            pending: Vec::new(),
            pending_lines: 0,
            head,
            first_in_file,
            since_checkpoint: 0,
            unsynced: Vec::new(),
            last_sync: None,
            settings,
            key,
            clock,
            rng,
            witness: None,
        };
        let recovered = cut.is_some();
        if let Some((bytes, n)) = cut {
            let mut a = BTreeMap::new();
            a.insert(
                "kfsec.io/reason".to_owned(),
                format!("the log's last line was incomplete at start ({n} bytes; the previous run was killed mid-write): removed from the file, kept here"),
            );
            a.insert("kfsec.io/truncated-line".to_owned(), bytes);
            let ev = chain::log_event(chain::LOG_RESOURCE, "recover", w.clock.now(), w.rng.as_ref(), a);
            let _ = w.append(Encoded::new(ev)?.body())?;
            w.flush()?;
        }
        if (unsigned_on_disk || recovered) && w.head.seq > 0 {
            w.since_checkpoint = w.since_checkpoint.max(1);
            w.checkpoint()?;
        }
        Ok(w)
    }

    /// Hands each checkpoint line, once written, to `f` (the witness backend; must not block).
    pub fn on_checkpoint(&mut self, f: Box<dyn Fn(String) + Send>) {
        self.witness = Some(f);
    }

    /// The chain's head (last line written).
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Seals `body` into the pending batch (rotating first when its line, at its longest, would
    /// not fit in the file); returns where its line starts in `pending`.
    fn append(&mut self, body: Body<'_>) -> Result<usize, LogError> {
        if let Out::File { size, .. } = &self.out {
            let limit = self.settings.max_size_mb.saturating_mul(1024 * 1024);
            let len = body.sealed_len_max() as u64 + 1;
            if limit > 0 && *size > 0 && size.saturating_add(len) > limit {
                self.rotate()?;
            }
        }
        let start = self.pending.len();
        self.head.seal_into(body, self.first_in_file, &mut self.pending);
        self.pending.push(b'\n');
        self.pending_lines += 1;
        if let Out::File { size, .. } = &mut self.out {
            *size += (self.pending.len() - start) as u64;
        }
        self.first_in_file = false;
        self.since_checkpoint += 1;
        Ok(start)
    }

    /// Writes the lines appended since the last flush in one write. On failure the lines are
    /// lost (the error says how many: [`LogWriter::pending_lines`] before the call).
    pub fn flush(&mut self) -> Result<(), LogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = match &mut self.out {
            Out::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(&self.pending)
                    .and_then(|()| o.flush())
                    .map_err(|source| LogError::Io {
                        path: PathBuf::from("-"),
                        source,
                    })
            }
            Out::File { path, file, .. } => file.write_all(&self.pending).map_err(|source| LogError::Io {
                path: path.clone(),
                source,
            }),
        };
        self.pending.clear();
        self.pending_lines = 0;
        result
    }

    /// Lines appended and not yet written.
    pub fn pending_lines(&self) -> u64 {
        self.pending_lines
    }

    /// Appends `event` (sealed; written at the next [`LogWriter::flush`]), and a checkpoint after
    /// it when N lines have passed (a checkpoint flushes).
    pub fn write(&mut self, event: Event) -> Result<(), LogError> {
        self.write_encoded(Encoded::new(event).map_err(LogError::Chain)?.body())
    }

    /// [`LogWriter::write`] of an event already serialized (by the thread that recorded it).
    /// The checkpoint every N lines is synced at most once a second ([`SYNC_EVERY`]): under a
    /// flood of events the log is not synced dozens of times a second; the writer's thread syncs
    /// what is left as soon as its queue is empty ([`LogWriter::sync`]).
    pub fn write_encoded(&mut self, body: Body<'_>) -> Result<(), LogError> {
        let _ = self.append(body)?;
        if self.settings.checkpoint_lines > 0 && self.since_checkpoint >= self.settings.checkpoint_lines {
            self.write_checkpoint()?;
            let now = self.clock.now();
            let due = self.last_sync.is_none_or(|t| now < t || now.since(t) >= SYNC_EVERY);
            if due {
                self.sync()?;
            }
        }
        Ok(())
    }

    /// Writes a signed checkpoint of the head, if anything was written since the last one, and
    /// syncs the file.
    pub fn checkpoint(&mut self) -> Result<(), LogError> {
        self.write_checkpoint()?;
        self.sync()
    }

    /// Writes a signed checkpoint of the head, if anything was written since the last one (not
    /// synced: [`LogWriter::sync`]).
    fn write_checkpoint(&mut self) -> Result<(), LogError> {
        if self.since_checkpoint == 0 {
            return Ok(());
        }
        let cp = self.key.checkpoint(&self.head, self.clock.now(), self.rng.as_ref());
        let start = self.append(Encoded::new(cp)?.body())?;
        let line = String::from_utf8_lossy(&self.pending[start..self.pending.len() - 1]).into_owned();
        self.since_checkpoint = 0;
        self.flush()?;
        self.unsynced.push(line);
        Ok(())
    }

    /// Syncs the file if a checkpoint was written since the last sync, then hands those
    /// checkpoints to the witness. A failed sync is tried again at the next call.
    pub fn sync(&mut self) -> Result<(), LogError> {
        if self.unsynced.is_empty() {
            return Ok(());
        }
        if let Out::File { path, file, .. } = &self.out {
            file.sync_data().map_err(|source| LogError::Io {
                path: path.clone(),
                source,
            })?;
        }
        self.last_sync = Some(self.clock.now());
        for line in std::mem::take(&mut self.unsynced) {
            if let Some(w) = &self.witness {
                w(line);
            }
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        self.flush()?;
        // (a rotated file is left synced up to its last checkpoint)
        self.sync()?;
        let Out::File { path, .. } = &self.out else {
            return Ok(());
        };
        let path = path.clone();
        let io = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        let mut t = self.clock.now();
        let mut backup = files::backup_name(&path, t);
        while backup.exists() {
            t = t.add(Duration::from_millis(1));
            backup = files::backup_name(&path, t);
        }
        std::fs::rename(&path, &backup).map_err(io)?;
        let file = open_append(&path).map_err(io)?;
        self.out = Out::File {
            path: path.clone(),
            file,
            size: 0,
        };
        self.first_in_file = true;
        self.prune(&path);
        Ok(())
    }

    /// Removes backups beyond `maxBackups` (oldest first) and older than `maxAgeDays`.
    fn prune(&self, path: &std::path::Path) {
        let Ok(mut list) = files::backups(path) else { return };
        let now = i64::try_from(self.clock.now().as_secs()).unwrap_or(i64::MAX);
        let max_age = i64::try_from(self.settings.max_age_days.saturating_mul(86_400)).unwrap_or(i64::MAX);
        let mut remove = Vec::new();
        if self.settings.max_backups > 0 {
            let keep = usize::try_from(self.settings.max_backups).unwrap_or(usize::MAX);
            if list.len() > keep {
                remove.extend(list.drain(..list.len() - keep));
            }
        }
        if self.settings.max_age_days > 0 {
            for b in list {
                let name = b
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if files::backup_time(path, &name).is_some_and(|t| now.saturating_sub(t) > max_age) {
                    remove.push(b);
                }
            }
        }
        for b in remove {
            if let Err(e) = std::fs::remove_file(&b) {
                tracing::warn!(file = %b.display(), error = %e, "removing an old audit log backup failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kfsec_types::{ManualClock, SequenceRng, UnixTime};

    fn event(i: u64) -> Event {
        let mut a = BTreeMap::new();
        a.insert("n".to_owned(), format!("{i}{}", "x".repeat(200)));
        chain::log_event(
            "configmaps",
            "create",
            UnixTime::from_secs(1_796_504_400),
            &SequenceRng::default(),
            a,
        )
    }

    fn writer(
        path: &std::path::Path,
        clock: Arc<ManualClock>,
        key: &Arc<SigningKey>,
        max_mb: u64,
        backups: u64,
    ) -> LogWriter {
        let mut s = LogSettings::new(LogTarget::File(path.to_owned()));
        s.max_size_mb = max_mb;
        s.max_backups = backups;
        s.checkpoint_lines = 7;
        LogWriter::open(s, key.clone(), clock, Arc::new(SequenceRng::default())).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A temporary directory, the log's path in it, a clock and the signing key.
    fn setup() -> (tempfile::TempDir, std::path::PathBuf, Arc<ManualClock>, Arc<SigningKey>) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("audit/audit.log");
        let clock = ManualClock::new(UnixTime::from_secs(1_796_504_400));
        let key = Arc::new(
            SigningKey::load_or_create(&dir.path().join("audit"), &SequenceRng::default())
                .unwrap_or_else(|e| panic!("{e}")),
        );
        (dir, path, clock, key)
    }

    #[test]
    fn the_checkpoints_of_a_flood_are_synced_at_most_once_a_second_and_the_rest_on_request() {
        let (_dir, path, clock, key) = setup();
        let mut w = writer(&path, clock.clone(), &key, 0, 0);
        // The witness is handed a checkpoint only once it is synced.
        let witnessed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = witnessed.clone();
        w.on_checkpoint(Box::new(move |line| {
            seen.lock().unwrap_or_else(|e| panic!("{e}")).push(line)
        }));
        let witnessed = move || witnessed.lock().unwrap_or_else(|e| panic!("{e}")).len();
        let write = |w: &mut LogWriter, n: u64| {
            for i in 0..n {
                w.write(event(i)).unwrap_or_else(|e| panic!("{e}"));
            }
        };
        // The first checkpoint is synced at once, the next ones within the second are not.
        write(&mut w, 7);
        assert!(w.unsynced.is_empty(), "the first checkpoint is synced");
        assert_eq!(witnessed(), 1);
        write(&mut w, 7);
        assert!(!w.unsynced.is_empty(), "a second checkpoint within the second waits");
        clock.advance(Duration::from_millis(999));
        write(&mut w, 7);
        assert!(!w.unsynced.is_empty());
        assert_eq!(witnessed(), 1, "no witness of a checkpoint not yet synced");
        // A second after the last sync, the next checkpoint syncs everything before it.
        clock.advance(Duration::from_millis(1));
        write(&mut w, 7);
        assert!(
            w.unsynced.is_empty(),
            "a checkpoint a second after the last sync is synced"
        );
        assert_eq!(witnessed(), 4, "the ones put off are witnessed with it");
        // One put off is synced when asked (the worker asks when its queue is empty), and by a
        // checkpoint asked for (flush, shutdown) whatever the time; a clock gone back syncs.
        write(&mut w, 7);
        assert!(!w.unsynced.is_empty());
        w.sync().unwrap_or_else(|e| panic!("{e}"));
        assert!(w.unsynced.is_empty());
        write(&mut w, 1);
        w.checkpoint().unwrap_or_else(|e| panic!("{e}"));
        assert!(w.unsynced.is_empty(), "a checkpoint asked for is synced");
        clock.set(UnixTime::from_secs(1_796_504_300));
        write(&mut w, 7);
        assert!(w.unsynced.is_empty(), "a clock gone back does not hold syncs off");
        // Every line is on record and signed.
        w.checkpoint().unwrap_or_else(|e| panic!("{e}"));
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let report = chain::verify_bytes(&[("audit.log", &data)], &[key.public()]).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!((report.events, report.unsigned_tail), (43, 0));
        assert_eq!(witnessed() as u64, report.checkpoints);
    }

    #[test]
    fn the_chain_continues_across_rotations_and_restarts_and_backups_are_pruned() {
        let (_dir, path, clock, key) = setup();
        // 1 MB files: ~4,500 lines of ~230 bytes make several rotations.
        let mut w = writer(&path, clock.clone(), &key, 1, 3);
        for i in 0..6000 {
            clock.advance(Duration::from_millis(3));
            w.write(event(i)).unwrap_or_else(|e| panic!("{e}"));
        }
        w.checkpoint().unwrap_or_else(|e| panic!("{e}"));
        drop(w);
        // A restart continues the sequence.
        let mut w = writer(&path, clock.clone(), &key, 1, 3);
        let seq = w.head().seq;
        w.write(event(6000)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.head().seq, seq + 1);
        drop(w);
        let files = files::chain_files(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(files.len() >= 2, "{files:?}");
        for f in &files {
            use std::os::unix::fs::PermissionsExt as _;
            let meta = std::fs::metadata(f).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            assert!(meta.len() <= 1024 * 1024);
        }
        let r = files::verify_files(&files, &[key.public()])
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(r.files, files.len());
        // With max 3 backups, the oldest lines are gone but what is left verifies.
        assert!(
            r.seqs.is_some_and(|(first, last)| first > 1 && last == seq + 1),
            "{r:?}"
        );
        assert_eq!(files::backups(&path).map(|b| b.len()).unwrap_or_default(), 3);
        // A rotated file deleted from the middle is found: a gap.
        std::fs::remove_file(&files[1]).unwrap_or_else(|e| panic!("{e}"));
        let rest: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, f)| f.clone())
            .collect();
        let f = files::verify_files(&rest, &[key.public()])
            .unwrap_or_else(|e| panic!("{e}"))
            .err()
            .unwrap_or_else(|| panic!());
        assert_eq!((f.file, f.line, f.kind), (rest[1].display().to_string(), 1, "deleted"));
    }

    #[test]
    fn a_crash_loop_leaves_only_the_last_runs_lines_unsigned() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("audit.log");
        let clock = ManualClock::new(UnixTime::from_secs(1_796_504_400));
        let key = Arc::new(SigningKey::generate(&SequenceRng::default()).unwrap_or_else(|e| panic!("{e}")));
        // Ten runs, each killed after 5 lines (a checkpoint is due every 7): before this rule the
        // 50 unsigned lines were more than twice checkpointLines, which verify calls removed
        // checkpoints.
        for run in 0..10 {
            let mut w = writer(&path, clock.clone(), &key, 0, 0);
            for i in 0..5 {
                w.write(event(run * 10 + i)).unwrap_or_else(|e| panic!("{e}"));
            }
            w.flush().unwrap_or_else(|e| panic!("{e}"));
            std::mem::forget(w);
        }
        let r = files::verify_files(std::slice::from_ref(&path), &[key.public()])
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|f| panic!("{f}"));
        assert_eq!((r.events, r.checkpoints, r.unsigned_tail), (50, 9, 5), "{r:?}");
        // A restart after a checkpoint adds none; a restart after nothing at all neither.
        let w = writer(&path, clock.clone(), &key, 0, 0);
        drop(w);
        let w = writer(&path, clock, &key, 0, 0);
        drop(w);
        let r = files::verify_files(std::slice::from_ref(&path), &[key.public()])
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|f| panic!("{f}"));
        assert_eq!((r.checkpoints, r.unsigned_tail), (10, 0), "{r:?}");
        let empty = dir.path().join("empty.log");
        drop(writer(&empty, ManualClock::new(UnixTime::from_secs(1)), &key, 0, 0));
        assert_eq!(std::fs::read(&empty).map(|d| d.len()).unwrap_or(1), 0);
    }

    #[test]
    fn an_incomplete_last_line_is_recovered_into_the_record_at_restart() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("audit.log");
        let clock = ManualClock::new(UnixTime::from_secs(1_796_504_400));
        let key = Arc::new(SigningKey::generate(&SequenceRng::default()).unwrap_or_else(|e| panic!("{e}")));
        let mut w = writer(&path, clock.clone(), &key, 0, 0);
        for i in 0..5 {
            w.write(event(i)).unwrap_or_else(|e| panic!("{e}"));
        }
        drop(w);
        // kill -9 in the middle of a write.
        let mut data = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        data.extend_from_slice(br#"{"kind":"Event","apiVers"#);
        std::fs::write(&path, &data).unwrap_or_else(|e| panic!("{e}"));
        let f = files::verify_files(std::slice::from_ref(&path), &[key.public()])
            .unwrap_or_else(|e| panic!("{e}"))
            .err()
            .unwrap_or_else(|| panic!());
        assert_eq!((f.line, f.kind), (6, "truncated"));
        assert!(f.reason.contains("the 5 lines before it are intact"), "{f}");
        let mut w = writer(&path, clock, &key, 0, 0);
        w.write(event(9)).unwrap_or_else(|e| panic!("{e}"));
        drop(w);
        let r = files::verify_files(std::slice::from_ref(&path), &[key.public()])
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(r.events, 7);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let recover = text.lines().nth(5).unwrap_or_default();
        assert!(
            recover.contains(r#""verb":"recover""#) && recover.contains(r#"apiVers"#),
            "{recover}"
        );
    }
}

#[cfg(test)]
mod throughput {
    use super::*;
    use kfsec_types::{SequenceRng, SystemClock};

    #[test]
    #[ignore = "measurement"]
    fn events_per_second() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let key = Arc::new(SigningKey::generate(&SequenceRng::default()).unwrap_or_else(|e| panic!("{e}")));
        let s = LogSettings::new(LogTarget::File(dir.path().join("a.log")));
        let mut w = LogWriter::open(s, key, Arc::new(SystemClock), Arc::new(SequenceRng::default()))
            .unwrap_or_else(|e| panic!("{e}"));
        let ev = crate::chain::tests::event(1);
        #[allow(clippy::disallowed_methods)]
        let t = std::time::Instant::now();
        for _ in 0..50_000 {
            w.write(ev.clone()).unwrap_or_else(|e| panic!("{e}"));
        }
        println!("{:.0} events/s", 50_000.0 / t.elapsed().as_secs_f64());
    }
}
