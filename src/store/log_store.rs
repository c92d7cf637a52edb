//! The ledger as append-only segment files; snapshots as files beside it.
//!
//! Layout of a data dir:
//! - `ledger/<first seq, 20 digits>.seg` — segments of ledger records, each
//!   `[len u32 LE][crc32 LE][bincode entry]` (`len` counts the CRC and the
//!   entry). A group commit is one `write` of the whole batch and one
//!   `fdatasync`; a batch never spans two segments. A segment is closed at
//!   `SEGMENT_MAX` bytes and a new one named after its first entry begins.
//! - `archive/<first seq>.seg` — closed segments moved out of `ledger/` by
//!   `--ledger-retain` once every stored snapshot covers them: the same
//!   CRC-framed records, no longer needed to start, kept for audit (`ledger
//!   verify`, `ledger export`, reports) until an operator moves them away.
//! - `snapshots/<seq, 20 digits>.snap` — framed snapshots (the newest
//!   two), each written to a `.tmp` file, synced and renamed into place, so
//!   a crash leaves whole snapshots only. They lived in a sled tree at first;
//!   sled reads every value of a tree to list its keys, so start-up read
//!   every stored snapshot (365 MB of an older one to load 13 KB).
//! - sled (`db`, `conf`, …) — the response cache only.
//!
//! Why not the ledger in sled, as DESIGN.md first said: measured on the 2-core
//! machine (docs/BENCHMARKS.md, `cargo bench --bench group_commit`), a sled
//! `apply_batch` + `flush` + `fdatasync` costs 1.8–3.9× a plain append +
//! `fdatasync`, and sled's flush runs on its own pool of I/O threads that took
//! a third of the server's CPU under load. The ledger is append-only and read
//! in order, which a log file does natively; sled keeps what needs a keyed,
//! crash-atomic store (snapshots, and the response cache).
//!
//! Damage: a record that fails its CRC (or is cut short) with no good record
//! after it is a torn tail (the last batch, never acknowledged) and `last_seq`
//! names it, so recovery cuts it back. Damage followed by good records is
//! damage in the middle: recovery refuses to start and names the record.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::frame::{self, decode_entry, encode_entry_into};
use super::{LedgerRead, Mark, SnapshotSink, Storage, StoreError};
use crate::state::Entry;

/// Snapshots kept besides the newest (an older one to fall back on).
const SNAPSHOTS_KEPT: usize = 2;
/// A segment is closed when it reaches this size.
pub const SEGMENT_MAX: u64 = 64 << 20;
/// Segments grow by this many bytes of written zeros at a time. `fdatasync`
/// of a write that does not change the file's size or block map skips the
/// journal: 85 µs instead of 132 µs per sync on the 2-core machine's ext4
/// (docs/BENCHMARKS.md). Zeros after the last record are free space.
const PREALLOCATE: u64 = 1 << 20;

pub struct LogStore {
    dir: PathBuf,
    seg_dir: PathBuf,
    db: sled::Db,
    snap_dir: PathBuf,
    /// First seq of every segment, ascending; the last is being written.
    segments: Vec<u64>,
    /// The segment being written.
    file: File,
    /// Bytes of records in the current segment.
    len: u64,
    /// Size of the current segment file (records, then zeros).
    allocated: u64,
    zeros: Vec<u8>,
    /// Bytes of the current segment known to be on stable storage.
    synced_len: u64,
    last_seq: u64,
    buf: Vec<u8>,
    segment_max: u64,
}

#[derive(Clone, Debug)]
pub struct Damage {
    /// The seq the damaged record should have held.
    pub seq: u64,
    pub offset: u64,
    /// Nothing readable follows it.
    pub tail: bool,
    pub what: String,
}

fn seg_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// One record read from a segment's bytes (the entry, or just its seq).
enum Read<T = Entry> {
    Entry(T, u64),
    /// A damaged record at this offset.
    Bad(String),
    End,
}

/// `data_end`: where the zeros that end a segment begin (free space: a
/// segment is preallocated with zeros).
fn read_at(bytes: &[u8], pos: usize, data_end: usize) -> Read {
    read_with(bytes, pos, data_end, decode_entry)
}

fn read_with<T>(
    bytes: &[u8],
    pos: usize,
    data_end: usize,
    decode: impl Fn(&[u8]) -> Result<T, String>,
) -> Read<T> {
    if pos >= data_end {
        return Read::End;
    }
    let rest = &bytes[pos..];
    if rest.len() < 4 {
        return Read::Bad(format!(
            "{} bytes left, too few for a record header",
            rest.len()
        ));
    }
    let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
    if len < 4 {
        return Read::Bad(format!("record length {len} is too small"));
    }
    if rest.len() < 4 + len {
        return Read::Bad(format!(
            "record of {len} bytes is cut short at {} bytes",
            rest.len() - 4
        ));
    }
    match decode(&rest[4..4 + len]) {
        Ok(e) => Read::Entry(e, (4 + len) as u64),
        Err(what) => Read::Bad(what),
    }
}

/// True when any good record follows a damaged one at `pos` (so the damage
/// is in the middle, not a torn tail). Tries the damaged record's own length
/// first, then every later offset.
fn readable_after(bytes: &[u8], pos: usize, data_end: usize) -> bool {
    (pos + 1..data_end).any(|p| matches!(read_at(bytes, p, data_end), Read::Entry(..)))
}

/// Reads a whole segment: its entries with offsets, and damage if any.
pub fn scan(bytes: &[u8], expect: u64) -> (Vec<(u64, Entry)>, Option<Damage>) {
    scan_with(bytes, expect, decode_entry, |e| e.seq)
}

/// Each good record's offset and seq, and damage if any: what opening,
/// cutting a torn tail and `locate` need of a segment. Reads a record's
/// length, CRC and seq only: decoding every entry at opening and again in
/// the replay was half a second of a start with a full 64 MiB segment
/// (docs/BENCHMARKS.md, "Issue #18"). A record whose CRC holds but that
/// does not decode (never a torn write) is found by the replay, which
/// decodes it, as damage at its seq.
pub fn scan_seqs(bytes: &[u8], expect: u64) -> (Vec<(u64, u64)>, Option<Damage>) {
    scan_with(bytes, expect, frame::entry_seq, |&seq| seq)
}

fn scan_with<T>(
    bytes: &[u8],
    mut expect: u64,
    decode: impl Fn(&[u8]) -> Result<T, String> + Copy,
    seq_of: impl Fn(&T) -> u64,
) -> (Vec<(u64, T)>, Option<Damage>) {
    let data_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut out = Vec::new();
    let mut pos = 0usize;
    loop {
        match read_with(bytes, pos, data_end, decode) {
            Read::End => return (out, None),
            Read::Entry(e, used) if seq_of(&e) == expect => {
                out.push((pos as u64, e));
                pos += used as usize;
                expect += 1;
            }
            Read::Entry(e, _) => {
                let what = format!("record says it is entry {}", seq_of(&e));
                let d = Damage {
                    seq: expect,
                    offset: pos as u64,
                    tail: false,
                    what,
                };
                return (out, Some(d));
            }
            Read::Bad(what) => {
                let d = Damage {
                    seq: expect,
                    offset: pos as u64,
                    tail: !readable_after(bytes, pos, data_end),
                    what,
                };
                return (out, Some(d));
            }
        }
    }
}

/// The first seq of every segment in a data dir, ascending.
fn list_segments(seg_dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut segments: Vec<u64> = std::fs::read_dir(seg_dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse::<u64>().ok()
        })
        .collect();
    segments.sort_unstable();
    Ok(segments)
}

/// Every segment of a data dir, archived ones first: (first seq, path),
/// ascending.
pub fn all_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for sub in ["archive", "ledger"] {
        let d = dir.join(sub);
        if !d.exists() {
            continue;
        }
        for first in list_segments(&d)? {
            out.push((first, d.join(seg_name(first))));
        }
    }
    out.sort_by_key(|(first, _)| *first);
    Ok(out)
}

/// Where ledger record `seq` of a data dir is stored: its segment file and
/// byte offset (for tools and tests; works while the server runs).
pub fn locate(dir: &Path, seq: u64) -> std::io::Result<Option<(PathBuf, u64)>> {
    let segments = all_segments(dir)?;
    let Some((first, path)) = segments.iter().rev().find(|(f, _)| *f <= seq) else {
        return Ok(None);
    };
    let path = path.clone();
    let (records, _) = scan_seqs(&std::fs::read(&path)?, *first);
    Ok(records
        .iter()
        .find(|&&(_, s)| s == seq)
        .map(|&(off, _)| (path.clone(), off)))
}

fn record_len(bytes: &[u8], at: usize) -> u64 {
    4 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as u64
}

/// Entries after `after` (a seq), in order, that `keep` accepts, at most
/// `limit` of them, read from a data dir's segments while a server may be
/// writing (a torn or damaged record ends the read). For the admin API's
/// ledger pages; each call reads the segments it needs from disk.
pub fn read_page(
    dir: &Path,
    after: u64,
    limit: usize,
    mut keep: impl FnMut(&Entry) -> bool,
) -> std::io::Result<Vec<Entry>> {
    let segments = all_segments(dir)?;
    let start = segments
        .iter()
        .rposition(|(f, _)| *f <= after + 1)
        .unwrap_or(0);
    let mut out = Vec::new();
    for (first, path) in &segments[start..] {
        let bytes = std::fs::read(path)?;
        let (entries, damage) = scan(&bytes, *first);
        for (_, e) in entries {
            if e.seq > after && keep(&e) {
                out.push(e);
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        if damage.is_some() {
            break;
        }
    }
    Ok(out)
}

/// Records of one segment read from byte `offset`, where entry `expect`
/// begins, through entry `upto` (a segment the server may be writing:
/// what lies past `upto` is not read as damage).
pub(crate) struct Records {
    /// The records as stored (`[len][crc][entry]` each).
    pub bytes: Vec<u8>,
    pub entries: Vec<Entry>,
    /// The offset after the last record read.
    pub end: u64,
}

/// See [`Records`]. Damage before `upto` is an error.
pub(crate) fn read_records(
    path: &Path,
    offset: u64,
    expect: u64,
    upto: u64,
) -> Result<Records, StoreError> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    let mut buf = vec![0u8; size.saturating_sub(offset) as usize];
    f.read_exact_at(&mut buf, offset)?;
    let (found, damage) = scan(&buf, expect);
    let mut entries = Vec::new();
    let mut end = 0u64;
    for (at, e) in found {
        if e.seq > upto {
            break;
        }
        end = at + record_len(&buf, at as usize);
        entries.push(e);
    }
    // A record the ledger acknowledged that does not read back (past
    // `upto`, a record being written reads as torn: not damage).
    if let Some(d) = damage.filter(|d| d.seq <= upto) {
        return Err(StoreError::Corrupt {
            seq: d.seq,
            what: format!(
                "{} (in {} at byte {})",
                d.what,
                path.display(),
                offset + d.offset
            ),
        });
    }
    buf.truncate(end as usize);
    Ok(Records {
        bytes: buf,
        entries,
        end: offset + end,
    })
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LogStore {
    pub fn open(dir: &Path) -> Result<LogStore, StoreError> {
        Self::open_with(dir, SEGMENT_MAX)
    }

    /// `open` with another segment size (tests of rotation).
    pub fn open_with(dir: &Path, segment_max: u64) -> Result<LogStore, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = super::open_sled(
            &sled::Config::new()
                .path(dir)
                .flush_every_ms(None)
                .mode(sled::Mode::HighThroughput),
        )?;
        // Snapshots of the first layout, in sled: unusable by this build
        // (start-up replays the ledger once instead).
        let legacy = db.open_tree("snapshots")?;
        if !legacy.is_empty() {
            tracing::warn!(
                "dropping {} snapshot(s) stored in sled by an older build",
                legacy.len()
            );
            legacy.clear()?;
        }
        let snap_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snap_dir)?;
        for name in list_names(&snap_dir, ".tmp")? {
            let _ = std::fs::remove_file(snap_dir.join(name));
        }
        db.flush()?;
        // sled's own flush uses `sync_file_range`, which is not power-loss
        // safe (sled #1351, #1452): its data file is synced here too.
        File::open(dir.join("db"))?.sync_all()?;
        let seg_dir = dir.join("ledger");
        std::fs::create_dir_all(&seg_dir)?;
        sync_dir(dir)?;
        let mut segments = list_segments(&seg_dir)?;
        if segments.is_empty() {
            File::create(seg_dir.join(seg_name(1)))?.sync_all()?;
            sync_dir(&seg_dir)?;
            segments.push(1);
        }
        let current = *segments.last().unwrap();
        let path = seg_dir.join(seg_name(current));
        let bytes = std::fs::read(&path)?;
        let (entries, damage) = scan_seqs(&bytes, current);
        let mut last_seq = entries.last().map_or(current - 1, |&(_, seq)| seq);
        let len = match (&damage, entries.last()) {
            (Some(d), _) => d.offset,
            (None, Some((off, _))) => *off + record_len(&bytes, *off as usize),
            (None, None) => 0,
        };
        if let Some(d) = &damage {
            // A torn tail is "the last record"; damage in the middle puts the
            // ledger's end past it, so recovery refuses rather than cuts.
            last_seq = if d.tail { d.seq } else { d.seq + 1 };
        }
        let file = OpenOptions::new().write(true).open(&path)?;
        Ok(LogStore {
            dir: dir.to_path_buf(),
            seg_dir,
            db,
            snap_dir,
            segments,
            file,
            len,
            allocated: bytes.len() as u64,
            zeros: vec![0; PREALLOCATE as usize],
            synced_len: len,
            last_seq,
            buf: Vec::with_capacity(64 * 1024),
            segment_max,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sled database beside the ledger (for the response cache).
    pub fn sled(&self) -> sled::Db {
        self.db.clone()
    }

    /// The segment files, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments
            .iter()
            .map(|s| self.seg_dir.join(seg_name(*s)))
            .collect()
    }

    fn open_segment(&mut self, first: u64) -> Result<(), StoreError> {
        let path = self.seg_dir.join(seg_name(first));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)?;
        file.sync_all()?;
        sync_dir(&self.seg_dir)?;
        self.file = file;
        self.segments.push(first);
        self.len = 0;
        self.allocated = 0;
        self.synced_len = 0;
        Ok(())
    }
}

impl Storage for LogStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if self.len >= self.segment_max {
            // Close the full segment (without its spare zeros) durably, then
            // start the next one.
            self.file.set_len(self.len)?;
            self.file.sync_all()?;
            self.open_segment(first.seq)?;
        }
        self.buf.clear();
        for e in entries {
            encode_entry_into(e, &mut self.buf);
        }
        let end = self.len + self.buf.len() as u64;
        while self.allocated < end {
            self.file.write_all_at(&self.zeros, self.allocated)?;
            self.allocated += PREALLOCATE;
        }
        if let Err(e) = self.file.write_all_at(&self.buf, self.len) {
            // Leave no partial batch behind (best effort; recovery would cut
            // it as a torn tail anyway).
            let _ = self.file.write_all_at(
                &self.zeros[..self.buf.len().min(self.zeros.len())],
                self.len,
            );
            return Err(e.into());
        }
        self.len = end;
        self.last_seq = entries.last().unwrap().seq;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.file.sync_data()?;
        self.synced_len = self.len;
        Ok(())
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.last_seq)
    }

    fn save_snapshot(&mut self, seq: u64, framed: &[u8]) -> Result<(), StoreError> {
        // The ledger up to `seq` must be durable before a snapshot of it is:
        // a snapshot ahead of the ledger would leave a gap after a crash.
        self.sync()?;
        self.snapshot_sink()?.save(seq, framed)
    }

    fn snapshot_sink(&self) -> Result<Box<dyn SnapshotSink>, StoreError> {
        Ok(Box::new(FileSnapshots {
            dir: self.snap_dir.clone(),
        }))
    }

    fn truncate_from(&mut self, from: u64) -> Result<(), StoreError> {
        // Segments that start at or after `from` go entirely (keeping one).
        while self.segments.len() > 1 && *self.segments.last().unwrap() >= from {
            let first = self.segments.pop().unwrap();
            std::fs::remove_file(self.seg_dir.join(seg_name(first)))?;
        }
        let current = *self.segments.last().unwrap();
        let path = self.seg_dir.join(seg_name(current));
        let bytes = std::fs::read(&path)?;
        let (records, damage) = scan_seqs(&bytes, current);
        let cut = records
            .iter()
            .find(|&&(_, seq)| seq >= from)
            .map(|&(off, _)| off)
            .or(damage.map(|d| d.offset))
            .unwrap_or(bytes.len() as u64);
        let file = OpenOptions::new().write(true).open(&path)?;
        file.set_len(cut)?;
        file.sync_all()?;
        sync_dir(&self.seg_dir)?;
        self.file = file;
        self.len = cut;
        self.allocated = cut;
        self.synced_len = cut;
        self.last_seq = from.saturating_sub(1).min(self.last_seq);
        Ok(())
    }

    fn archive(&mut self, upto: u64) -> Result<u64, StoreError> {
        // Only what every stored snapshot already covers: recovery can fall
        // back to the oldest one and still find the ledger after it.
        let Some(&oldest) = self.snapshot_seqs()?.last() else {
            return Ok(0);
        };
        let limit = oldest.min(upto);
        let archive = self.dir.join("archive");
        let mut moved = 0;
        // Closed segments only (never the one being written).
        while self.segments.len() > 1 && self.segments[1] - 1 <= limit {
            if moved == 0 {
                std::fs::create_dir_all(&archive)?;
            }
            let first = self.segments[0];
            let name = seg_name(first);
            std::fs::rename(self.seg_dir.join(&name), archive.join(&name))?;
            moved += self.segments[1] - first;
            self.segments.remove(0);
        }
        if moved > 0 {
            sync_dir(&archive)?;
            sync_dir(&self.seg_dir)?;
        }
        Ok(moved)
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        // As much as a group commit may need, in a new file: a full disk
        // refuses the allocation, a failing one the write or the sync.
        let path = self.dir.join("probe.tmp");
        let result = (|| {
            let f = File::create(&path)?;
            f.write_all_at(&self.zeros, 0)?;
            f.sync_data()
        })();
        let _ = std::fs::remove_file(&path);
        Ok(result?)
    }

    fn rollback(&mut self, mark: Mark) -> Result<(), StoreError> {
        while self.segments.len() > mark.segments {
            let first = self.segments.pop().unwrap();
            std::fs::remove_file(self.seg_dir.join(seg_name(first)))?;
            let current = *self.segments.last().unwrap();
            self.file = OpenOptions::new()
                .write(true)
                .open(self.seg_dir.join(seg_name(current)))?;
        }
        self.file.set_len(mark.len)?;
        self.file.sync_all()?;
        sync_dir(&self.seg_dir)?;
        self.len = mark.len;
        self.allocated = mark.len;
        self.synced_len = self.synced_len.min(mark.len);
        self.last_seq = mark.last_seq;
        Ok(())
    }

    fn mark(&self) -> Mark {
        Mark {
            len: self.len,
            last_seq: self.last_seq,
            segments: self.segments.len(),
        }
    }
}

impl LedgerRead for LogStore {
    fn read_from(&self, from: u64) -> Box<dyn Iterator<Item = Result<Entry, StoreError>> + '_> {
        // Archived segments too, when they are still there (verify reads
        // from 1; recovery never needs them: they end before every snapshot).
        let mut segs: Vec<(u64, PathBuf)> = match list_segments(&self.dir.join("archive")) {
            Ok(firsts) => firsts
                .into_iter()
                .filter(|f| self.segments.first().is_none_or(|live| f < live))
                .map(|f| (f, self.dir.join("archive").join(seg_name(f))))
                .collect(),
            Err(_) => Vec::new(),
        };
        segs.extend(
            self.segments
                .iter()
                .map(|&f| (f, self.seg_dir.join(seg_name(f)))),
        );
        read_segments(segs, from)
    }

    fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError> {
        Ok(snapshot_seqs(&self.snap_dir)?)
    }

    fn read_snapshot(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(self.snap_dir.join(snap_name(seq))) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

pub(crate) fn snap_name(seq: u64) -> String {
    format!("{seq:020}.snap")
}

/// Entries with seq ≥ `from` from these segments ((first seq, path), in
/// order), each CRC-checked; the first damaged record is an error and ends
/// the reading (nothing after damage is trusted).
pub(crate) fn read_segments(
    mut segs: Vec<(u64, PathBuf)>,
    from: u64,
) -> Box<dyn Iterator<Item = Result<Entry, StoreError>>> {
    let start = segs.iter().rposition(|(f, _)| *f <= from).unwrap_or(0);
    let segs = segs.split_off(start);
    Box::new(
        segs.into_iter()
            .map(move |(first, path)| {
                let bytes = std::fs::read(&path).map_err(StoreError::from)?;
                let (entries, damage) = scan(&bytes, first);
                let mut out: Vec<Result<Entry, StoreError>> = entries
                    .into_iter()
                    .filter(|(_, e)| e.seq >= from)
                    .map(|(_, e)| Ok(e))
                    .collect();
                if let Some(d) = damage {
                    out.push(Err(StoreError::Corrupt {
                        seq: d.seq,
                        what: format!("{} (in {} at byte {})", d.what, path.display(), d.offset),
                    }));
                }
                Ok::<_, StoreError>(out)
            })
            .flat_map(|r| match r {
                Ok(v) => v,
                Err(e) => vec![Err(e)],
            })
            // Stop at the first error: nothing after damage is trusted.
            .scan(false, |failed, r| {
                if *failed {
                    return None;
                }
                *failed = r.is_err();
                Some(r)
            }),
    )
}

/// File names in `dir` ending with `suffix`.
fn list_names(dir: &Path, suffix: &str) -> std::io::Result<Vec<String>> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(suffix))
        .collect())
}

/// Seqs of the snapshots in `dir`, newest first.
pub(crate) fn snapshot_seqs(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = list_names(dir, ".snap")?
        .iter()
        .filter_map(|n| n.strip_suffix(".snap")?.parse().ok())
        .collect();
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    Ok(seqs)
}

/// Writes snapshot files from any thread, so a large one does not hold up
/// the ledger: `.tmp`, fdatasync, rename, fsync of the directory; then the
/// older ones beyond the newest `SNAPSHOTS_KEPT` go.
struct FileSnapshots {
    dir: PathBuf,
}

impl SnapshotSink for FileSnapshots {
    fn save(&mut self, seq: u64, framed: &[u8]) -> Result<(), StoreError> {
        let tmp = self.dir.join(format!("{seq:020}.tmp"));
        let f = File::create(&tmp)?;
        f.write_all_at(framed, 0)?;
        f.sync_data()?;
        std::fs::rename(&tmp, self.dir.join(snap_name(seq)))?;
        sync_dir(&self.dir)?;
        for old in snapshot_seqs(&self.dir)?.into_iter().skip(SNAPSHOTS_KEPT) {
            std::fs::remove_file(self.dir.join(snap_name(old)))?;
        }
        Ok(())
    }
}
