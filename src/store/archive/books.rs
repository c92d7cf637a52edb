//! Other nodes' books, read from the archive (issue #29 part 3): a node's
//! rollup as of the last entry it shipped, for the cluster's reports.
//!
//! A node's books in the bucket are its newest shipped rollup and the
//! chunks after it; folded together they equal its ledger through the
//! manifest's `shipped_seq`, exactly (the same fold as the node's own,
//! `state::rollup`). This keeps one rollup per node in memory and folds
//! only what was shipped since the last read, so a dashboard that asks
//! every 10 s reads each node's new chunks once. Live nodes and dead or
//! removed ones are read alike; a figure is each node's own ledger, so a
//! merge counts it once.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::target::Target;
use super::{rollup_key, MANIFEST};
use crate::state::rollup::Rollup;
use crate::store::format::chunk::ManifestV1;
use crate::store::format::rollup::decode_rollup;
use crate::store::log_store::scan;

/// What a node's books cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Covered {
    /// The last entry folded (the manifest's `shipped_seq`).
    pub seq: u64,
    /// Its time (ms since the epoch).
    pub ts: u64,
}

pub struct ArchiveBooks {
    root: Target,
    kept: Mutex<BTreeMap<String, Rollup>>,
}

impl ArchiveBooks {
    /// The books under an archive's URL (`--archive`).
    pub fn open(url: &str) -> Result<ArchiveBooks, String> {
        Ok(ArchiveBooks {
            root: Target::open(url)?,
            kept: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn url(&self) -> &str {
        self.root.url()
    }

    /// The nodes with a folder in the archive.
    pub fn nodes(&self) -> Result<Vec<String>, String> {
        let mut nodes = self.root.folders()?;
        nodes.retain(|n| n != "parquet");
        Ok(nodes)
    }

    /// Runs `f` on `node`'s rollup, caught up with everything it shipped.
    pub fn with<R>(&self, node: &str, f: impl FnOnce(&Rollup, &Covered) -> R) -> Result<R, String> {
        let target = self.root.child(node);
        let bytes = (target.get(MANIFEST)?)
            .ok_or_else(|| format!("{} holds no {MANIFEST}", target.url()))?;
        let m = ManifestV1::decode(&bytes).map_err(|e| format!("{}: {e}", target.url()))?;
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let r = kept.entry(node.to_string()).or_default();
        if r.seq > m.shipped_seq {
            // The folder was written anew (a node restored, renamed back).
            *r = Rollup::default();
        }
        if let Err(e) = catch_up(&target, &m, r) {
            *r = Rollup::default();
            return Err(e);
        }
        Ok(f(
            r,
            &Covered {
                seq: r.seq,
                ts: m.shipped_ts,
            },
        ))
    }
}

/// Folds `r` forward to the manifest's `shipped_seq`: from the newest
/// shipped rollup if it is ahead, then the chunks after it.
fn catch_up(target: &Target, m: &ManifestV1, r: &mut Rollup) -> Result<(), String> {
    if r.seq >= m.shipped_seq {
        return Ok(());
    }
    if let Some(&at) = m.rollups.iter().filter(|&&s| s <= m.shipped_seq).max() {
        if at > r.seq {
            let key = rollup_key(at);
            let bytes = (target.get(&key)?)
                .ok_or_else(|| format!("{}/{key} is listed but not there", target.url()))?;
            *r = decode_rollup(&bytes).map_err(|e| format!("{}/{key}: {e}", target.url()))?;
        }
    }
    if r.seq + 1 < m.first_seq {
        return Err(format!(
            "{}: the ledger there begins at entry {} and no rollup covers what came before",
            target.url(),
            m.first_seq
        ));
    }
    for (first, last, key) in super::chunk_keys(target, r.seq)? {
        if r.seq >= m.shipped_seq {
            break;
        }
        if first > r.seq + 1 {
            return Err(format!(
                "{}: entry {} is in no chunk",
                target.url(),
                r.seq + 1
            ));
        }
        let records = super::read_chunk(target, first, last, &key)?;
        let (entries, damage) = scan(&records, first);
        if let Some(d) = damage {
            return Err(format!(
                "{}/{key}: entry {}: {}",
                target.url(),
                d.seq,
                d.what
            ));
        }
        for (_, e) in entries {
            if e.seq == r.seq + 1 && e.seq <= m.shipped_seq {
                r.add(&e);
                r.seq = e.seq;
            }
        }
    }
    if r.seq < m.shipped_seq {
        return Err(format!(
            "{}: the chunks end at entry {} and the manifest says {}",
            target.url(),
            r.seq,
            m.shipped_seq
        ));
    }
    Ok(())
}
