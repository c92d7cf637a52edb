//! The ledger on sled 0.34: tree `ledger` keyed by big-endian seq, tree
//! `snapshots` keyed by big-endian seq.
//!
//! sled's `flush()` on Linux syncs its file with `sync_file_range`, which
//! does not flush the drive's cache or the file's metadata (sled issues #1351,
//! #1452): a flushed write can still be lost to power loss. So `sync()` flushes
//! and then `fdatasync`s sled's data file itself through a descriptor of our
//! own (fsync acts on the file, whichever descriptor asks). One `apply_batch`
//! per group commit: it is crash-atomic and takes sled's global write lock.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::frame::{decode_entry, encode_entry};
use super::{Storage, StoreError};
use crate::state::Entry;

/// Snapshots kept besides the newest (an older one to fall back on).
const SNAPSHOTS_KEPT: usize = 2;

pub struct SledStore {
    db: sled::Db,
    ledger: sled::Tree,
    snapshots: sled::Tree,
    /// sled's data file, opened by us for fdatasync.
    data_file: File,
    dir: PathBuf,
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            // The engine decides when to flush (group commit, interval mode).
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let ledger = db.open_tree("ledger")?;
        let snapshots = db.open_tree("snapshots")?;
        db.flush()?;
        let data_file = File::open(dir.join("db"))?;
        // Make the files' directory entries durable once, at creation.
        data_file.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(SledStore {
            db,
            ledger,
            snapshots,
            data_file,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn seq_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key.try_into().unwrap_or([0xff; 8]))
}

impl Storage for SledStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for e in entries {
            batch.insert(&e.seq.to_be_bytes(), encode_entry(e));
        }
        self.ledger.apply_batch(batch)?;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.data_file.sync_data()?;
        Ok(())
    }

    fn read_from(&self, from: u64) -> Box<dyn Iterator<Item = Result<Entry, StoreError>> + '_> {
        Box::new(self.ledger.range(from.to_be_bytes()..).map(|kv| {
            let (k, v) = kv?;
            let seq = seq_of(&k);
            let e = decode_entry(&v).map_err(|what| StoreError::Corrupt { seq, what })?;
            if e.seq != seq {
                return Err(StoreError::Corrupt {
                    seq,
                    what: format!("record says it is entry {}", e.seq),
                });
            }
            Ok(e)
        }))
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.ledger.last()?.map_or(0, |(k, _)| seq_of(&k)))
    }

    fn save_snapshot(&mut self, seq: u64, framed: &[u8]) -> Result<(), StoreError> {
        self.snapshots.insert(seq.to_be_bytes(), framed)?;
        let keys: Vec<_> = self.snapshots.iter().keys().collect::<Result<_, _>>()?;
        for k in keys.iter().rev().skip(SNAPSHOTS_KEPT) {
            self.snapshots.remove(k)?;
        }
        self.sync()
    }

    fn snapshots(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.snapshots.iter().rev() {
            let (k, v) = kv?;
            out.push((seq_of(&k), v.to_vec()));
        }
        Ok(out)
    }

    fn truncate_from(&mut self, from: u64) -> Result<(), StoreError> {
        let keys: Vec<_> = self
            .ledger
            .range(from.to_be_bytes()..)
            .keys()
            .collect::<Result<_, _>>()?;
        for k in keys {
            self.ledger.remove(k)?;
        }
        self.sync()
    }
}
