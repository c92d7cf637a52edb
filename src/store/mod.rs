//! Durability: the ledger and snapshots on disk, behind [`Storage`] so the
//! engine never depends on sled's quirks (and tests can inject faults).
//!
//! - `frame`: CRC-framed, bincode-encoded records;
//! - `log_store`: the ledger in append-only segment files, snapshot files,
//!   and the sled database the response cache lives in;
//! - `reader`: read-only access to a data dir (the admin API's ledger pages
//!   and reports, `ledger verify` / `export`), which never opens sled;
//! - `recovery`: start-up (snapshot + replay of the tail) and `ledger verify`;
//! - `cache`: the exact-response cache in sled;
//! - `vcache`, `vindex`: the semantic cache in sled, and its vector index.

pub mod archive;
pub mod cache;
pub mod format;
pub mod frame;
pub mod log_store;
pub mod reader;
pub mod recovery;
pub mod rollups;
pub mod vcache;
pub mod vindex;

use crate::state::Entry;

pub use log_store::LogStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("ledger record {seq}: {what}")]
    Corrupt { seq: u64, what: String },
}

/// Opens the sled database of a data dir. sled locks its files, and a
/// database dropped in this process lets go of the lock only once sled's
/// own background work on it has ended (a moment later, longer under
/// load): opening the same dir again at once, as the embedded API's
/// close-then-open does, may find it still locked. That lock is waited for,
/// at most `SLED_LOCK_WAIT`; another process holding it is an error then.
pub(crate) fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// How long `open_sled` waits for sled's lock on a data dir.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reading a ledger and its snapshots: what `ledger verify` needs (a
/// [`reader::LedgerReader`] does it without opening anything for writing).
pub trait LedgerRead {
    /// Ledger entries with seq ≥ `from`, in order, each CRC-checked.
    fn read_from(&self, from: u64) -> Box<dyn Iterator<Item = Result<Entry, StoreError>> + '_>;
    /// The seqs of the stored snapshots, newest first (without reading
    /// them: start-up reads only the one it uses).
    fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError>;
    /// One stored snapshot's framed bytes (None if it is gone).
    fn read_snapshot(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Snapshots, newest first, as (seq, framed bytes): every one read.
    fn snapshots(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for seq in self.snapshot_seqs()? {
            if let Some(bytes) = self.read_snapshot(seq)? {
                out.push((seq, bytes));
            }
        }
        Ok(out)
    }
}

/// What the engine needs from a store.
pub trait Storage: LedgerRead + Send {
    /// Writes a group of entries as one crash-atomic batch. Not yet durable.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError>;
    /// Makes everything appended so far durable (survives power loss).
    fn sync(&mut self) -> Result<(), StoreError>;
    /// The highest seq in the ledger (0 when empty).
    fn last_seq(&self) -> Result<u64, StoreError>;
    /// Stores a framed snapshot of the state as of ledger position `seq`.
    fn save_snapshot(&mut self, seq: u64, framed: &[u8]) -> Result<(), StoreError>;
    /// A writer of snapshots for another thread. The caller makes sure the
    /// ledger is durable up to a snapshot's seq before saving it there.
    fn snapshot_sink(&self) -> Result<Box<dyn SnapshotSink>, StoreError>;
    /// Removes a ledger tail from `from` on (cutting back a damaged tail).
    fn truncate_from(&mut self, from: u64) -> Result<(), StoreError>;
    /// Where the ledger ends now; taken before a batch is appended.
    fn mark(&self) -> Mark;
    /// Drops everything appended after `mark` (a batch whose write or sync
    /// failed), on disk too, so nothing unacknowledged survives a restart.
    fn rollback(&mut self, mark: Mark) -> Result<(), StoreError>;
    /// Moves closed ledger segments whose entries all have seq ≤ `upto` and
    /// ≤ every stored snapshot out of the live ledger (to the archive);
    /// returns how many entries moved. Balances never change: start-up
    /// begins at a snapshot after them.
    fn archive(&mut self, _upto: u64) -> Result<u64, StoreError> {
        Ok(0)
    }
    /// Checks that the disk takes writes again after a failure (writes and
    /// syncs a scratch file beside the ledger, then removes it).
    fn probe(&mut self) -> Result<(), StoreError>;
}

/// Stores snapshots; see [`Storage::snapshot_sink`].
pub trait SnapshotSink: Send {
    fn save(&mut self, seq: u64, framed: &[u8]) -> Result<(), StoreError>;
}

/// A position in the ledger to roll back to; see [`Storage::mark`].
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub len: u64,
    pub last_seq: u64,
    pub segments: usize,
}
