//! The reports' rollups on a node (issue #29, `state::rollup`): kept off the
//! engine's path by a thread of their own, persisted beside the ledger.
//!
//! The engine hands every group of entries it has made durable to `feed`
//! (a bounded channel: it never waits; a group the channel cannot take is
//! read back from the ledger instead). The thread folds them in order; a
//! gap (a dropped group, the entries written before the rollups started,
//! everything after the last persisted rollup at start-up) is read from
//! the ledger files. Every `PERSIST_EVERY` entries or `PERSIST_AFTER`, and
//! at `stop`, the rollup is written to `rollups/<seq>.rollup` (a temp file,
//! fsync, rename, fsync of the directory; the last two kept), so a restart
//! resumes it at its seq instead of folding the whole ledger again.
//!
//! A report reads the rollup once it has folded everything fed so far
//! (`read`), so an answer covers every acknowledged entry.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::format::rollup::{decode_rollup, encode_rollup};
use super::log_store::{all_segments, read_segments};
use crate::state::rollup::Rollup;
use crate::state::Entry;

/// Persist after this many entries folded...
pub const PERSIST_EVERY: u64 = 1_000_000;
/// ... or this long after the last time, if anything was folded.
pub const PERSIST_AFTER: Duration = Duration::from_secs(60);
/// Groups the channel holds before `feed` drops one (read back later).
const QUEUE: usize = 4_096;
/// How many rollup files are kept.
const KEEP: usize = 2;

struct Kept {
    rollup: Rollup,
    saved_seq: u64,
    saved_at: Instant,
    /// Why the last fold from the ledger failed, if it did.
    error: Option<String>,
}

pub struct Rollups {
    dir: PathBuf,
    kept: Mutex<Kept>,
    folded: Condvar,
    tx: SyncSender<Vec<Entry>>,
    /// The highest seq handed to `feed` (durable in the ledger).
    fed: AtomicU64,
    stopping: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn rollup_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("rollups")
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.rollup")
}

/// The persisted rollups of a data dir, newest first: (seq, path).
pub(crate) fn rollup_files(data_dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = rollup_dir(data_dir);
    let mut out = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(rd) => {
            for e in rd {
                let e = e?;
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(seq) = name
                    .strip_suffix(".rollup")
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    out.push((seq, e.path()));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(out)
}

/// The newest persisted rollup of `data_dir` within the ledger (through
/// `durable`) that reads back whole, or None. A damaged one is skipped
/// with a warning, and one past the ledger's end (its damaged tail was
/// cut) is removed: the ledger folds them again.
pub fn load_latest(data_dir: &Path, durable: u64) -> std::io::Result<Option<Rollup>> {
    for (seq, path) in rollup_files(data_dir)? {
        if seq > durable {
            tracing::warn!(
                "{}: covers entry {seq} but the ledger ends at {durable}; removed, folded again",
                path.display()
            );
            std::fs::remove_file(&path)?;
            continue;
        }
        match decode_rollup(&std::fs::read(&path)?) {
            Ok(r) if r.seq == seq => return Ok(Some(r)),
            Ok(r) => tracing::warn!(
                "{}: says seq {} in a file named for {seq}; skipped",
                path.display(),
                r.seq
            ),
            Err(e) => tracing::warn!("{}: {e}; skipped", path.display()),
        }
    }
    Ok(None)
}

/// Folds the ledger of `data_dir` into `r`, from its seq + 1 through
/// `upto` (or the end). The entries must be there: a ledger whose first
/// entry is past `r.seq + 1` (archived elsewhere) is an error.
pub fn fold_ledger(data_dir: &Path, r: &mut Rollup, upto: Option<u64>) -> Result<(), String> {
    let segs = all_segments(data_dir).map_err(|e| e.to_string())?;
    for e in read_segments(segs, r.seq + 1) {
        let e = e.map_err(|e| e.to_string())?;
        if upto.is_some_and(|u| e.seq > u) {
            break;
        }
        if e.seq <= r.seq {
            continue;
        }
        if e.seq != r.seq + 1 {
            return Err(format!(
                "the ledger has no entries {} to {} (archived elsewhere?)",
                r.seq + 1,
                e.seq - 1
            ));
        }
        r.add(&e);
    }
    Ok(())
}

/// What `ledger verify` found of the persisted rollups.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RollupCheck {
    /// Equal to the ledger folded through their seq.
    pub checked: Vec<u64>,
    /// Past the ledger's end (a damaged tail was cut): stale, removed and
    /// folded again at the next start.
    pub ahead: Vec<u64>,
    /// Not checkable: the ledger before them is archived elsewhere (the
    /// oldest such one is the base the later ones are checked from).
    pub unchecked: Vec<u64>,
}

/// `ledger verify`: every persisted rollup of `data_dir` must read back
/// whole and equal a fold of the ledger through its seq (from entry 1, or
/// from an older rollup when the ledger's start is archived elsewhere).
pub fn verify(data_dir: &Path) -> Result<RollupCheck, String> {
    let mut files = rollup_files(data_dir).map_err(|e| e.to_string())?;
    files.reverse();
    let first = (all_segments(data_dir).map_err(|e| e.to_string())?)
        .first()
        .map_or(1, |(f, _)| *f);
    let mut base = (first <= 1).then(Rollup::new);
    let mut check = RollupCheck::default();
    for (seq, path) in files {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let kept = decode_rollup(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        if kept.seq != seq {
            return Err(format!("{}: says seq {}", path.display(), kept.seq));
        }
        let Some(full) = base.as_mut() else {
            check.unchecked.push(seq);
            if seq + 1 >= first {
                base = Some(kept);
            }
            continue;
        };
        if full.seq > seq {
            return Err(format!("{}: older than its base", path.display()));
        }
        fold_ledger(data_dir, full, Some(seq))?;
        if full.seq < seq {
            check.ahead.push(seq);
            continue;
        }
        if !full.same_as(&kept) {
            return Err(format!(
                "{}: differs from the fold of the ledger through entry {seq}",
                path.display()
            ));
        }
        check.checked.push(seq);
    }
    Ok(check)
}

/// Writes `r` as `rollups/<seq>.rollup`, atomically, and drops older files
/// but the last `KEEP`.
pub fn persist(data_dir: &Path, r: &Rollup) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = rollup_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    let bytes = encode_rollup(r);
    let tmp = dir.join(format!("{}.tmp", file_name(r.seq)));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(file_name(r.seq)))?;
    std::fs::File::open(&dir)?.sync_all()?;
    for (_, old) in rollup_files(data_dir)?.into_iter().skip(KEEP) {
        std::fs::remove_file(old)?;
    }
    Ok(())
}

impl Rollups {
    /// Starts the rollups of `data_dir`, whose ledger is durable through
    /// `durable`: the last persisted rollup (or none) is caught up on the
    /// thread, from the ledger.
    pub fn start(data_dir: &Path, durable: u64) -> std::io::Result<Arc<Rollups>> {
        let rollup = load_latest(data_dir, durable)?.unwrap_or_default();
        let saved_seq = rollup.seq;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let r = Arc::new(Rollups {
            dir: data_dir.to_path_buf(),
            kept: Mutex::new(Kept {
                rollup,
                saved_seq,
                saved_at: Instant::now(),
                error: None,
            }),
            folded: Condvar::new(),
            tx,
            fed: AtomicU64::new(durable),
            stopping: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let me = r.clone();
        let t = std::thread::Builder::new()
            .name("spendb-rollups".into())
            .spawn(move || me.run(rx))?;
        *r.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
        Ok(r)
    }

    /// Entries the ledger has made durable, in order (the engine's tap).
    /// Never waits: a group the queue cannot take is read back from the
    /// ledger.
    pub fn feed(&self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.seq) else {
            return;
        };
        self.fed.fetch_max(last, Ordering::AcqRel);
        match self.tx.try_send(entries) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {}
        }
    }

    /// Runs `f` on the rollup once it covers every entry fed so far (at
    /// most `wait`; then on what it covers). The rollup says its seq.
    pub fn read<R>(&self, wait: Duration, f: impl FnOnce(&Rollup) -> R) -> Result<R, String> {
        let want = self.fed.load(Ordering::Acquire);
        let deadline = Instant::now() + wait;
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        while kept.rollup.seq < want && kept.error.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            kept = (self.folded.wait_timeout(kept, left))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if let Some(e) = &kept.error {
            return Err(format!("the rollups cannot be folded from the ledger: {e}"));
        }
        Ok(f(&kept.rollup))
    }

    /// The last entry the engine made durable (handed to `feed`).
    pub fn durable(&self) -> u64 {
        self.fed.load(Ordering::Acquire)
    }

    /// The seq the rollup covers, and the last seq persisted.
    pub fn seqs(&self) -> (u64, u64) {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        (kept.rollup.seq, kept.saved_seq)
    }

    /// Folds what is left, persists, and stops the thread.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.tx.try_send(Vec::new());
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }

    fn run(&self, rx: Receiver<Vec<Entry>>) {
        loop {
            let got = rx.recv_timeout(Duration::from_millis(500));
            let stopping = self.stopping.load(Ordering::Acquire);
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(batch) = got {
                self.fold(&mut kept, batch);
                // What else is queued, under the same lock.
                while let Ok(batch) = rx.try_recv() {
                    self.fold(&mut kept, batch);
                }
            }
            // A gap: entries fed but not folded (a dropped group, the ledger
            // before the rollups started).
            let fed = self.fed.load(Ordering::Acquire);
            if kept.rollup.seq < fed && kept.error.is_none() {
                let mut r = std::mem::take(&mut kept.rollup);
                if let Err(e) = fold_ledger(&self.dir, &mut r, Some(fed)) {
                    tracing::error!("rollups: {e}");
                    kept.error = Some(e);
                }
                kept.rollup = r;
            }
            self.folded.notify_all();
            let due = kept.rollup.seq > kept.saved_seq
                && (kept.rollup.seq - kept.saved_seq >= PERSIST_EVERY
                    || kept.saved_at.elapsed() >= PERSIST_AFTER
                    || stopping);
            if due {
                match persist(&self.dir, &kept.rollup) {
                    Ok(()) => kept.saved_seq = kept.rollup.seq,
                    Err(e) => tracing::warn!("rollups: persisting at {}: {e}", kept.rollup.seq),
                }
                kept.saved_at = Instant::now();
            }
            if stopping {
                return;
            }
        }
    }

    /// Folds a group, reading from the ledger what lies before it unfolded.
    fn fold(&self, kept: &mut Kept, batch: Vec<Entry>) {
        let Some(first) = batch.first().map(|e| e.seq) else {
            return;
        };
        if kept.error.is_some() {
            return;
        }
        if first > kept.rollup.seq + 1 {
            let mut r = std::mem::take(&mut kept.rollup);
            if let Err(e) = fold_ledger(&self.dir, &mut r, Some(first - 1)) {
                tracing::error!("rollups: {e}");
                kept.error = Some(e);
            }
            kept.rollup = r;
            if kept.error.is_some() {
                return;
            }
        }
        for e in &batch {
            if e.seq > kept.rollup.seq {
                kept.rollup.add(e);
            }
        }
    }
}
