//! Read-only access to a data dir: the ledger segments (live and archived)
//! and the snapshot files, for the admin API's ledger pages and reports and
//! for `spendb ledger verify` / `export`. It opens nothing for writing and
//! never touches sled, so it works beside a running server (a record the
//! server is writing at that moment reads as a torn tail and ends a page).

use std::path::{Path, PathBuf};

use super::log_store::{all_segments, read_page, read_segments, snap_name, snapshot_seqs};
use super::{LedgerRead, StoreError};
use crate::state::Entry;

pub struct LedgerReader {
    dir: PathBuf,
}

impl LedgerReader {
    /// A reader of the data dir `dir`; an error if it holds no ledger.
    pub fn open(dir: &Path) -> Result<LedgerReader, String> {
        if !dir.join("ledger").is_dir() {
            return Err(format!(
                "{} holds no spendb data (no ledger/ in it)",
                dir.display()
            ));
        }
        Ok(LedgerReader {
            dir: dir.to_path_buf(),
        })
    }

    /// Entries after `after` (a seq), in order, that `keep` accepts, at most
    /// `limit` of them (each call reads the segments it needs from disk).
    pub fn page(
        &self,
        after: u64,
        limit: usize,
        keep: impl FnMut(&Entry) -> bool,
    ) -> std::io::Result<Vec<Entry>> {
        read_page(&self.dir, after, limit, keep)
    }
}

impl LedgerRead for LedgerReader {
    fn read_from(&self, from: u64) -> Box<dyn Iterator<Item = Result<Entry, StoreError>> + '_> {
        match all_segments(&self.dir) {
            Ok(segs) => read_segments(segs, from),
            Err(e) => Box::new(std::iter::once(Err(e.into()))),
        }
    }

    fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError> {
        match snapshot_seqs(&self.dir.join("snapshots")) {
            Ok(seqs) => Ok(seqs),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    fn read_snapshot(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(self.dir.join("snapshots").join(snap_name(seq))) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
