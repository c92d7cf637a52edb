//! A node's data dir rebuilt from its archive (`spendb restore --from
//! <url>/<node> --data-dir <dir> [--to-seq N]`): the ledger from the chunks
//! (every chunk's and every record's CRC checked, the seqs checked to run
//! without a gap), the snapshots and rollups that the restored ledger
//! covers. The response caches are not in the archive: a restored node
//! starts with empty ones. `ledger verify` and `ledger export --from`
//! restore into a temporary dir and read that.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::target::Target;
use super::{rollup_key, snapshot_key, MANIFEST};
use crate::store::format::chunk::ManifestV1;
use crate::store::log_store::{scan_seqs, SEGMENT_MAX};

/// What `restore` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub first_seq: u64,
    pub last_seq: u64,
    /// What the manifest says is shipped (≥ `last_seq`).
    pub shipped_seq: u64,
    pub chunks: u64,
    pub snapshots: Vec<u64>,
    pub rollups: Vec<u64>,
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing {}: {e}", dir.display()))
}

/// The ledger segment being written.
struct Segment {
    file: File,
    path: PathBuf,
    len: u64,
}

/// Rebuilds `data_dir` (which must be empty or absent) from `from`, a
/// node's part of an archive, through entry `to_seq` (None: all of it).
pub fn restore(from: &str, data_dir: &Path, to_seq: Option<u64>) -> Result<Restored, String> {
    if let Ok(mut rd) = std::fs::read_dir(data_dir) {
        if rd.next().is_some() {
            return Err(format!(
                "{} is not empty: restore into a new data dir",
                data_dir.display()
            ));
        }
    }
    let target = Target::open(from)?;
    let bytes = target.get(MANIFEST)?.ok_or_else(|| {
        format!(
            "{from} holds no {MANIFEST}: not a node's archive (give --from <archive url>/<node>)"
        )
    })?;
    let m = ManifestV1::decode(&bytes)?;
    let end = to_seq.unwrap_or(u64::MAX);
    if end < m.first_seq {
        return Err(format!(
            "--to-seq {end}: the archive begins at entry {}",
            m.first_seq
        ));
    }
    let chunks = super::chunk_keys(&target, 0)?;
    let seg_dir = data_dir.join("ledger");
    std::fs::create_dir_all(&seg_dir).map_err(|e| format!("{}: {e}", seg_dir.display()))?;
    let mut next = m.first_seq;
    let mut segment: Option<Segment> = None;
    let mut used = 0;
    let close = |seg: Option<Segment>| -> Result<(), String> {
        if let Some(s) = seg {
            s.file
                .sync_all()
                .map_err(|e| format!("{}: {e}", s.path.display()))?;
        }
        Ok(())
    };
    for (first, last, key) in chunks {
        if next > end || first > next {
            break;
        }
        if last < next {
            continue; // a chunk shipped twice (the shipper stopped between put and manifest)
        }
        let chunk = super::read_chunk(&target, first, last, &key)?;
        let (records, damage) = scan_seqs(&chunk, first);
        if let Some(d) = damage {
            return Err(format!("{from}/{key}: entry {}: {}", d.seq, d.what));
        }
        if records.last().map(|r| r.1) != Some(last) {
            return Err(format!(
                "{from}/{key}: holds entries {first} to {:?}, not to {last}",
                records.last().map(|r| r.1)
            ));
        }
        let upto = last.min(end);
        let offset_of = |seq: u64| -> usize {
            records
                .iter()
                .find(|r| r.1 == seq)
                .map_or(chunk.len(), |r| r.0 as usize)
        };
        let slice = &chunk[offset_of(next)..offset_of(upto + 1)];
        if segment.as_ref().is_none_or(|s| s.len >= SEGMENT_MAX) {
            close(segment.take())?;
            let path = seg_dir.join(format!("{next:020}.seg"));
            let file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            segment = Some(Segment { file, path, len: 0 });
        }
        let s = segment.as_mut().expect("opened above");
        s.file
            .write_all(slice)
            .map_err(|e| format!("{}: {e}", s.path.display()))?;
        s.len += slice.len() as u64;
        used += 1;
        next = upto + 1;
    }
    close(segment.take())?;
    sync_dir(&seg_dir)?;
    let last_seq = next - 1;
    let want = end.min(m.shipped_seq);
    if last_seq < want {
        return Err(format!(
            "{from}: the chunks hold entries {} to {last_seq} without a gap, and the manifest \
             says {want}: entry {next} is missing",
            m.first_seq
        ));
    }
    if let Some(to) = to_seq {
        if last_seq < to {
            return Err(format!(
                "--to-seq {to}: {from} holds entries through {last_seq}"
            ));
        }
    }
    let mut restored = Restored {
        first_seq: m.first_seq,
        last_seq,
        shipped_seq: m.shipped_seq,
        chunks: used,
        snapshots: Vec::new(),
        rollups: Vec::new(),
    };
    for (list, dir, key_of, ext) in [
        (
            &m.snapshots,
            "snapshots",
            snapshot_key as fn(u64) -> String,
            "snap",
        ),
        (
            &m.rollups,
            "rollups",
            rollup_key as fn(u64) -> String,
            "rollup",
        ),
    ] {
        let dir = data_dir.join(dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for &seq in list.iter().filter(|&&s| s <= last_seq) {
            let Some(bytes) = target.get(&key_of(seq))? else {
                tracing::warn!("{from}: {} is listed but not there", key_of(seq));
                continue;
            };
            let path = dir.join(format!("{seq:020}.{ext}"));
            let mut f = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            f.write_all(&bytes)
                .and_then(|_| f.sync_all())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            match ext {
                "snap" => restored.snapshots.push(seq),
                _ => restored.rollups.push(seq),
            }
        }
        sync_dir(&dir)?;
    }
    if m.first_seq > 1 && !restored.snapshots.iter().any(|&s| s + 1 >= m.first_seq) {
        return Err(format!(
            "{from}: the ledger begins at entry {} and no snapshot at or after entry {} that the \
             restored ledger reaches is there: a node cannot start from it",
            m.first_seq,
            m.first_seq - 1
        ));
    }
    sync_dir(data_dir)?;
    Ok(restored)
}
