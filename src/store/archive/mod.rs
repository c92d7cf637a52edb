//! The ledger off the node (`--archive`, issue #29 part 2): a thread ships
//! the ledger, the snapshots and the rollups to object storage, and the
//! command-line tools read them back.
//!
//! - `target`: the object store (S3 or a directory) behind a blocking API;
//! - `ship`: the shipper thread: chunks of the durable ledger at least every
//!   `--archive-interval` and whenever a segment closes, the snapshots and
//!   rollups, the manifest, local archived segments removed once confirmed;
//! - `restore`: a data dir rebuilt from the bucket (`spendb restore`, and
//!   `ledger verify` / `export --from`);
//! - `parquet`: the ledger as Parquet files for warehouses
//!   (`--archive-parquet`);
//! - `books`: other nodes' rollups read back from the bucket, caught up
//!   with their shipped chunks, for the cluster's reports.
//!
//! Layout under `<url>` (formats in `format::chunk`):
//!
//! ```text
//! <node>/manifest.json                       what is there, shipped through which entry
//! <node>/ledger/<first>-<last>.chunk         CRC-checked runs of ledger records
//! <node>/snapshots/<seq>.snap                snapshots, as on disk
//! <node>/rollups/<seq>.rollup                the reports' rollups, as on disk
//! parquet/node=<node>/day=<YYYY-MM-DD>/<first>-<last>.parquet
//! ```

pub mod books;
pub mod parquet;
pub mod restore;
pub mod ship;
pub mod target;

pub use books::{ArchiveBooks, Covered};
pub use restore::{restore, Restored};
pub use ship::{ArchiveConfig, ArchiveStatus, Shipper};
pub use target::Target;

/// A snapshot's key under a node's prefix.
pub(crate) fn snapshot_key(seq: u64) -> String {
    format!("snapshots/{seq:020}.snap")
}

/// A rollup's key under a node's prefix.
pub(crate) fn rollup_key(seq: u64) -> String {
    format!("rollups/{seq:020}.rollup")
}

pub(crate) const MANIFEST: &str = "manifest.json";
