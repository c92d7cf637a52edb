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

use crate::store::format;

/// A snapshot's key under a node's prefix.
pub(crate) fn snapshot_key(seq: u64) -> String {
    format!("snapshots/{seq:020}.snap")
}

/// A rollup's key under a node's prefix.
pub(crate) fn rollup_key(seq: u64) -> String {
    format!("rollups/{seq:020}.rollup")
}

pub(crate) const MANIFEST: &str = "manifest.json";

/// The ledger chunks under a node's `target` holding entries after
/// `after`: (first, last, key), in order (a chunk shipped twice, as when
/// the shipper stopped between its put and the manifest, is listed twice).
pub(crate) fn chunk_keys(target: &Target, after: u64) -> Result<Vec<(u64, u64, String)>, String> {
    use crate::store::format::chunk::parse_chunk_key;
    let mut chunks: Vec<(u64, u64, String)> = (target.list("ledger")?.into_iter())
        .filter_map(|(key, _)| parse_chunk_key(&key).map(|(f, l)| (f, l, key)))
        .filter(|&(_, last, _)| last > after)
        .collect();
    chunks.sort();
    Ok(chunks)
}

/// A chunk's records (entries `first..=last`, as `chunk_keys` listed it),
/// read and checked: the chunk's CRC, and that it says the entries its key
/// names. Each record's own CRC is checked as the caller scans them.
pub(crate) fn read_chunk(
    target: &Target,
    first: u64,
    last: u64,
    key: &str,
) -> Result<Vec<u8>, String> {
    let at = || format!("{}/{key}", target.url());
    let mut bytes =
        (target.get(key)?).ok_or_else(|| format!("{} went away while it was read", at()))?;
    let chunk = format::chunk::decode_chunk(&bytes).map_err(|e| format!("{}: {e}", at()))?;
    if (chunk.first, chunk.last) != (first, last) {
        return Err(format!(
            "{}: the chunk says entries {} to {}",
            at(),
            chunk.first,
            chunk.last
        ));
    }
    let header = bytes.len() - chunk.records.len();
    bytes.drain(..header);
    Ok(bytes)
}
