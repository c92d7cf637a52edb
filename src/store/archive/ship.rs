//! The shipper: one thread that copies a node's durable ledger, its
//! snapshots and its rollups to the archive, off every command's path (it
//! reads the segment files, as `ledger export` does, and never takes the
//! engine's lock).
//!
//! Each round (every second, or when woken):
//! 1. the manifest is read from the bucket once (a node that restarts goes
//!    on where it stopped; a bucket that holds more of this node's ledger
//!    than the data dir does is refused: restore first);
//! 2. when `interval` has passed since the last chunk, or a segment closed,
//!    or a backlog spans segments, the durable entries after the shipped
//!    seq, up to the end of their segment, become the pending chunk (and,
//!    with Parquet, its files);
//! 3. the pending chunk is put; on success the snapshots and rollups the
//!    shipped seq covers are put, then the manifest; on failure it is kept
//!    and retried, exactly the same bytes, after a backoff (1 s doubling to
//!    `MAX_BACKOFF`), while the node serves as before;
//! 4. once the manifest that covers them is written, segments that
//!    `--ledger-retain` moved to `archive/` are removed from the disk.
//!
//! What it is doing shows in [`ArchiveStatus`] (`/metrics`,
//! `/v1/archive`): the lag in entries and in seconds (the age of the oldest
//! durable entry not yet in the bucket), errors, and `lagging` once the lag
//! passes `lag_alert`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::target::Target;
use super::{rollup_key, snapshot_key, MANIFEST};
use crate::store::format::chunk::{chunk_key, encode_chunk, ManifestV1};
use crate::store::log_store::{all_segments, read_records, scan_seqs, snapshot_seqs};
use crate::store::rollups::rollup_files;

/// The longest wait between two tries while the store fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long `stop` goes on shipping what is left.
const STOP_WITHIN: Duration = Duration::from_secs(10);
/// How often a round runs when nothing wakes it (or every interval, if
/// shorter).
const ROUND: Duration = Duration::from_secs(1);
/// Snapshots and rollups kept in the bucket: the newest ones, besides the
/// first shipped (a restore of a ledger that begins after entry 1 needs it).
const KEPT_IN_BUCKET: usize = 2;

/// What `--archive` and its flags say.
#[derive(Clone, Debug)]
pub struct ArchiveConfig {
    /// `s3://bucket/prefix` or `file:///path`.
    pub url: String,
    /// This node's name: its part of the bucket is `<url>/<node>/`.
    pub node: String,
    /// A chunk at least this often (and whenever a segment closes).
    pub interval: Duration,
    /// Also write the ledger as Parquet files.
    pub parquet: bool,
    /// `lagging` once the oldest unshipped entry is older than this.
    pub lag_alert: Duration,
}

/// What the shipper has done and is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveStatus {
    /// Where this node's part of the archive is (`<url>/<node>`).
    pub url: String,
    /// The last durable entry.
    pub durable_seq: u64,
    /// Every entry through this one is in the bucket (0 before the
    /// manifest was read).
    pub shipped_seq: u64,
    /// Durable entries not in the bucket yet.
    pub lag_entries: u64,
    /// The age of the oldest of them (ms; 0 when none).
    pub lag_ms: u64,
    /// The lag is past `lag_alert`.
    pub lagging: bool,
    /// Chunks and their bytes shipped since start.
    pub chunks: u64,
    pub bytes: u64,
    /// Failed tries since start, and the last failure (cleared by a
    /// success).
    pub errors: u64,
    pub last_error: Option<String>,
    /// Archived segments removed from the disk once shipped.
    pub removed_segments: u64,
    /// Why nothing more will be shipped (a bucket ahead of this ledger).
    pub refused: Option<String>,
}

/// The durable end of the ledger (the engine's, through the rollups' feed).
pub type Durable = Arc<dyn Fn() -> u64 + Send + Sync>;

pub struct Shipper {
    status: Mutex<ArchiveStatus>,
    durable: Arc<dyn Fn() -> u64 + Send + Sync>,
    stopping: AtomicBool,
    woken: Mutex<bool>,
    wake: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Where entry `shipped + 1` is on disk: its segment and byte offset.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    segment: u64,
    offset: u64,
}

struct Pending {
    first: u64,
    last: u64,
    last_ts: u64,
    chunk: bytes::Bytes,
    parquet: Vec<(String, bytes::Bytes)>,
    next: Cursor,
}

struct Ship {
    dir: PathBuf,
    config: ArchiveConfig,
    target: Target,
    parquet: Option<Target>,
    durable: Durable,
    /// As the bucket has it (None until read).
    manifest: Option<ManifestV1>,
    /// The manifest in memory is ahead of the bucket's.
    manifest_dirty: bool,
    /// Keys to remove from the bucket once the manifest is written.
    unlisted: Vec<String>,
    cursor: Option<Cursor>,
    pending: Option<Pending>,
    last_chunk_at: Instant,
    retry_at: Instant,
    backoff: Duration,
    segments_seen: usize,
    /// (seq, ts) of the oldest unshipped entry, as last read.
    oldest: Option<(u64, u64)>,
    /// When the shipper started (the lag while the bucket cannot be read).
    started: Instant,
    status: ArchiveStatus,
}

/// A node's name is one path segment of the bucket: letters, digits, `.`,
/// `_`, `-`, at most 64, and not `parquet` (the warehouses' folder).
pub fn node_name_ok(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "parquet"
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "the archive's node name {name:?}: letters, digits, '.', '_', '-' (at most 64), \
             not \"parquet\""
        )),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shipper {
    /// Starts shipping the ledger of `data_dir`. Fails only on a URL that
    /// names no store; a store that cannot be reached is retried.
    pub fn start(
        data_dir: &Path,
        config: ArchiveConfig,
        durable: Durable,
    ) -> Result<Arc<Shipper>, String> {
        node_name_ok(&config.node)?;
        let root = Target::open(&config.url)?;
        let target = root.child(&config.node);
        let parquet = config
            .parquet
            .then(|| root.child(&format!("parquet/node={}", config.node)));
        let status = ArchiveStatus {
            url: target.url().to_string(),
            ..Default::default()
        };
        let shipper = Arc::new(Shipper {
            status: Mutex::new(status.clone()),
            durable: durable.clone(),
            stopping: AtomicBool::new(false),
            woken: Mutex::new(false),
            wake: Condvar::new(),
            thread: Mutex::new(None),
        });
        let mut ship = Ship {
            dir: data_dir.to_path_buf(),
            config,
            target,
            parquet,
            durable,
            manifest: None,
            manifest_dirty: false,
            unlisted: Vec::new(),
            cursor: None,
            pending: None,
            last_chunk_at: Instant::now(),
            retry_at: Instant::now(),
            backoff: Duration::ZERO,
            segments_seen: 0,
            oldest: None,
            started: Instant::now(),
            status,
        };
        let me = shipper.clone();
        let t = std::thread::Builder::new()
            .name("spendb-archive".into())
            .spawn(move || me.run(&mut ship))
            .map_err(|e| format!("the archive's thread: {e}"))?;
        *shipper.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
        Ok(shipper)
    }

    /// What the last round did, with the ledger's durable end as of now
    /// (an entry written since the last round is lag already).
    pub fn status(&self) -> ArchiveStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        s.durable_seq = s.durable_seq.max((self.durable)());
        if s.shipped_seq > 0 || s.durable_seq > 0 {
            s.lag_entries = s.durable_seq.saturating_sub(s.shipped_seq);
        }
        s
    }

    /// Ships now rather than at the next round (a test, a segment closed).
    pub fn wake(&self) {
        *self.woken.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Ships what is durable (for at most `STOP_WITHIN`), then stops.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wake();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }

    fn run(&self, ship: &mut Ship) {
        let mut stop_by: Option<Instant> = None;
        loop {
            let stopping = self.stopping.load(Ordering::Acquire);
            if stopping && stop_by.is_none() {
                stop_by = Some(Instant::now() + STOP_WITHIN);
                ship.retry_at = Instant::now();
            }
            // While stopping, rounds follow each other until everything is
            // shipped, the time is up, or a try fails.
            let errors = ship.status.errors;
            ship.round(stopping);
            *self.status.lock().unwrap_or_else(|p| p.into_inner()) = ship.status.clone();
            if let Some(by) = stop_by {
                let done = ship.caught_up() || ship.status.refused.is_some();
                if done || Instant::now() >= by || ship.status.errors > errors {
                    if !done {
                        tracing::warn!(
                            "archive: stopping with entries {}..={} not shipped (they stay in the data dir)",
                            ship.status.shipped_seq + 1,
                            ship.status.durable_seq
                        );
                    }
                    return;
                }
                continue;
            }
            let mut woken = self.woken.lock().unwrap_or_else(|p| p.into_inner());
            if !*woken {
                woken = self
                    .wake
                    .wait_timeout(woken, ROUND.min(ship.config.interval))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            *woken = false;
        }
    }
}

impl Ship {
    fn caught_up(&self) -> bool {
        self.pending.is_none()
            && !self.manifest_dirty
            && self
                .manifest
                .as_ref()
                .is_some_and(|m| m.shipped_seq >= (self.durable)())
    }

    fn failed(&mut self, what: String) {
        self.status.errors += 1;
        self.backoff = (self.backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
        self.retry_at = Instant::now() + self.backoff;
        tracing::warn!(
            "archive: {what} (retrying in {:?}; the node serves on, the entries stay on disk)",
            self.backoff
        );
        self.status.last_error = Some(what);
    }

    fn succeeded(&mut self) {
        if self.status.last_error.take().is_some() {
            tracing::info!("archive: {} reachable again", self.target.url());
        }
        self.backoff = Duration::ZERO;
    }

    fn round(&mut self, stopping: bool) {
        if self.status.refused.is_some() {
            return;
        }
        let durable = (self.durable)();
        self.status.durable_seq = durable;
        let result = self.ship(durable, stopping);
        if let Err(e) = result {
            self.failed(e);
        }
        self.measure(durable);
    }

    fn ship(&mut self, durable: u64, stopping: bool) -> Result<(), String> {
        if Instant::now() < self.retry_at {
            return Ok(());
        }
        if self.manifest.is_none() {
            self.manifest = Some(self.load_manifest()?);
            self.succeeded();
        }
        let shipped = self.shipped();
        if durable < shipped {
            let why = format!(
                "{} holds this node's ledger through entry {shipped}, and this data dir's ends at \
                 {durable}: another node of the same name, or a data dir that lost entries. \
                 Nothing is shipped; restore the data dir (spendb restore) or give the node \
                 another name",
                self.target.url()
            );
            tracing::error!("archive: {why}");
            self.status.refused = Some(why);
            return Ok(());
        }
        loop {
            if self.pending.is_none() && durable > self.shipped() {
                let segments = all_segments(&self.dir).map_err(|e| e.to_string())?;
                let closed = segments.len() > self.segments_seen && self.segments_seen > 0;
                self.segments_seen = segments.len();
                let backlog = self
                    .cursor
                    .is_some_and(|c| segments.last().is_some_and(|(f, _)| *f > c.segment));
                let due = stopping
                    || closed
                    || backlog
                    || self.last_chunk_at.elapsed() >= self.config.interval;
                if due {
                    self.pending = self.read_pending(&segments, durable)?;
                }
            }
            if let Some(p) = &self.pending {
                self.target
                    .put(&chunk_key(p.first, p.last), p.chunk.clone())?;
                if let Some(parquet) = &self.parquet {
                    for (key, bytes) in &p.parquet {
                        parquet.put(key, bytes.clone())?;
                    }
                }
                let p = self.pending.take().expect("pending");
                let m = self.manifest.as_mut().expect("read above");
                m.shipped_seq = p.last;
                m.shipped_ts = p.last_ts;
                m.chunks += 1;
                m.bytes += p.chunk.len() as u64;
                self.status.chunks += 1;
                self.status.bytes += p.chunk.len() as u64;
                self.cursor = Some(p.next);
                self.last_chunk_at = Instant::now();
                self.manifest_dirty = true;
                self.succeeded();
                // A backlog is shipped chunk after chunk.
                if durable > p.last {
                    continue;
                }
            }
            break;
        }
        self.ship_files()?;
        if self.manifest_dirty {
            let m = self.manifest.as_mut().expect("read above");
            m.updated_ms = now_ms();
            self.target.put(MANIFEST, m.encode())?;
            self.manifest_dirty = false;
            for key in std::mem::take(&mut self.unlisted) {
                if let Err(e) = self.target.delete(&key) {
                    tracing::warn!("archive: {e}");
                }
            }
            self.succeeded();
        }
        // Segments `--ledger-retain` moved since are removed too.
        self.remove_shipped_segments();
        Ok(())
    }

    fn shipped(&self) -> u64 {
        self.manifest.as_ref().map_or(0, |m| m.shipped_seq)
    }

    /// The bucket's manifest for this node, or a new one that begins at
    /// the data dir's first entry.
    fn load_manifest(&self) -> Result<ManifestV1, String> {
        match self.target.get(MANIFEST)? {
            Some(bytes) => {
                let m = ManifestV1::decode(&bytes)
                    .map_err(|e| format!("{}/{MANIFEST}: {e}", self.target.url()))?;
                if m.node != self.config.node {
                    return Err(format!(
                        "{}/{MANIFEST} is node {:?}'s",
                        self.target.url(),
                        m.node
                    ));
                }
                tracing::info!(
                    "archive: {} holds entries {}..={}; shipping on from there",
                    self.target.url(),
                    m.first_seq,
                    m.shipped_seq
                );
                Ok(m)
            }
            None => {
                let segments = all_segments(&self.dir).map_err(|e| e.to_string())?;
                let first = segments.first().map_or(1, |(f, _)| *f);
                tracing::info!(
                    "archive: shipping this node's ledger from entry {first} to {}",
                    self.target.url()
                );
                let mut m = ManifestV1::new(&self.config.node, first, self.config.parquet);
                m.shipped_seq = first - 1;
                Ok(m)
            }
        }
    }

    /// Where entry `seq` begins on disk.
    fn locate(&self, segments: &[(u64, PathBuf)], seq: u64) -> Result<Cursor, String> {
        let Some((first, path)) = segments.iter().rev().find(|(f, _)| *f <= seq) else {
            return Err(format!(
                "entry {seq} is neither in {} nor in the data dir (it begins at {}): it was \
                 removed before it was shipped",
                self.target.url(),
                segments.first().map_or(0, |s| s.0)
            ));
        };
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (records, _) = scan_seqs(&bytes, *first);
        // The offset of `seq`, or the end of the segment's records when
        // `seq` is the next segment's first.
        let offset = match records.iter().find(|(_, s)| *s == seq) {
            Some((at, _)) => *at,
            None => records.last().map_or(0, |(at, _)| {
                let at = *at as usize;
                at as u64 + 4 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as u64
            }),
        };
        Ok(Cursor {
            segment: *first,
            offset,
        })
    }

    /// The durable entries after the shipped seq, to the end of their
    /// segment, as a chunk (None: nothing readable yet).
    fn read_pending(
        &mut self,
        segments: &[(u64, PathBuf)],
        durable: u64,
    ) -> Result<Option<Pending>, String> {
        let from = self.shipped() + 1;
        let mut cursor = match self.cursor {
            Some(c) => c,
            None => self.locate(segments, from)?,
        };
        for _ in 0..2 {
            let Some((_, path)) = segments.iter().find(|(f, _)| *f == cursor.segment) else {
                // Moved to archive/ between two listings: found next round.
                self.cursor = None;
                return Ok(None);
            };
            let records = read_records(path, cursor.offset, from, durable)
                .map_err(|e| format!("reading the ledger to ship it: {e}"))?;
            if let (Some(first), Some(last)) = (records.entries.first(), records.entries.last()) {
                let parquet = match self.parquet.is_some() {
                    true => super::parquet::by_day(&records.entries)?,
                    false => Vec::new(),
                };
                return Ok(Some(Pending {
                    first: first.seq,
                    last: last.seq,
                    last_ts: last.ts,
                    chunk: encode_chunk(first.seq, last.seq, &records.bytes).into(),
                    parquet,
                    next: Cursor {
                        segment: cursor.segment,
                        offset: records.end,
                    },
                }));
            }
            // This segment is shipped to its end: on to the next.
            match segments.iter().find(|(f, _)| *f == from) {
                Some((f, _)) => {
                    cursor = Cursor {
                        segment: *f,
                        offset: 0,
                    };
                    self.cursor = Some(cursor);
                }
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Puts the snapshots and rollups the shipped seq covers, newest first
    /// (one of each a round); older ones leave the bucket's list.
    fn ship_files(&mut self) -> Result<(), String> {
        let shipped = self.shipped();
        let snaps = snapshot_seqs(&self.dir.join("snapshots")).unwrap_or_default();
        let rollups: Vec<u64> = rollup_files(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        // A key is also the file's path in the data dir.
        type KeyOf = fn(u64) -> String;
        let kinds: [(&[u64], KeyOf, bool); 2] =
            [(&snaps, snapshot_key, true), (&rollups, rollup_key, false)];
        for (local, key_of, is_snapshot) in kinds {
            let Some(&seq) = local.iter().find(|&&s| s <= shipped) else {
                continue;
            };
            let m = self.manifest.as_ref().expect("read above");
            let listed = if is_snapshot {
                &m.snapshots
            } else {
                &m.rollups
            };
            if listed.contains(&seq) {
                continue;
            }
            let bytes = match std::fs::read(self.dir.join(key_of(seq))) {
                Ok(b) => b,
                // Replaced by a newer one meanwhile: next round.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("reading {}: {e}", key_of(seq))),
            };
            self.target.put(&key_of(seq), bytes)?;
            let m = self.manifest.as_mut().expect("read above");
            let listed = if is_snapshot {
                &mut m.snapshots
            } else {
                &mut m.rollups
            };
            listed.push(seq);
            listed.sort_unstable();
            // The first one stays (see KEPT_IN_BUCKET), and the newest.
            while listed.len() > KEPT_IN_BUCKET + 1 {
                let gone = listed.remove(1);
                self.unlisted.push(key_of(gone));
            }
            self.manifest_dirty = true;
        }
        Ok(())
    }

    /// Removes the segments in `archive/` that the written manifest covers.
    fn remove_shipped_segments(&mut self) {
        let shipped = self.shipped();
        let Ok(segments) = all_segments(&self.dir) else {
            return;
        };
        let archive = self.dir.join("archive");
        let mut removed = false;
        for pair in segments.windows(2) {
            let ((first, path), (next, _)) = (&pair[0], &pair[1]);
            if next - 1 > shipped || !path.starts_with(&archive) {
                continue;
            }
            match std::fs::remove_file(path) {
                Ok(()) => {
                    tracing::info!(
                        "archive: removed {} (entries {first}..={}, in the bucket)",
                        path.display(),
                        next - 1
                    );
                    self.status.removed_segments += 1;
                    removed = true;
                }
                Err(e) => tracing::warn!("archive: removing {}: {e}", path.display()),
            }
        }
        if removed {
            if let Err(e) = std::fs::File::open(&archive).and_then(|d| d.sync_all()) {
                tracing::warn!("archive: syncing {}: {e}", archive.display());
            }
        }
    }

    /// The lag: entries, and the age of the oldest unshipped one.
    fn measure(&mut self, durable: u64) {
        let shipped = self.shipped();
        self.status.shipped_seq = shipped;
        self.status.lag_entries = durable.saturating_sub(shipped);
        if self.status.lag_entries == 0 {
            self.oldest = None;
            self.status.lag_ms = 0;
        } else if self.manifest.is_none() {
            // The bucket was never read: nothing is known shipped, and the
            // lag is at least as old as this shipper.
            self.status.lag_ms = self.started.elapsed().as_millis() as u64;
        } else {
            let want = shipped + 1;
            if self.oldest.is_none_or(|(seq, _)| seq != want) {
                self.oldest = self.read_ts(want).map(|ts| (want, ts));
            }
            if let Some((_, ts)) = self.oldest {
                self.status.lag_ms = now_ms().saturating_sub(ts);
            }
        }
        let lagging = self.status.lag_ms > self.config.lag_alert.as_millis() as u64;
        if lagging != self.status.lagging {
            match lagging {
                true => tracing::error!(
                    "archive: entries older than {:?} are not in {} yet ({} entries behind)",
                    self.config.lag_alert,
                    self.target.url(),
                    self.status.lag_entries
                ),
                false => tracing::info!("archive: caught up with the lag alert's threshold"),
            }
            self.status.lagging = lagging;
        }
    }

    /// The time of durable entry `seq`, read from the disk.
    fn read_ts(&mut self, seq: u64) -> Option<u64> {
        let segments = all_segments(&self.dir).ok()?;
        let cursor = match self.cursor {
            Some(c) => c,
            None => self.locate(&segments, seq).ok()?,
        };
        let (_, path) = segments.iter().find(|(f, _)| *f == cursor.segment)?;
        let records = read_records(path, cursor.offset, seq, seq).ok()?;
        match records.entries.first() {
            Some(e) => Some(e.ts),
            None => {
                let (_, next) = segments.iter().find(|(f, _)| *f == seq)?;
                read_records(next, 0, seq, seq)
                    .ok()?
                    .entries
                    .first()
                    .map(|e| e.ts)
            }
        }
    }
}
