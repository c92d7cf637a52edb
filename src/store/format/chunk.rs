//! What `--archive` writes to object storage (`store::archive`): ledger
//! chunks, version 1, and the manifest of a node's part of the bucket.
//!
//! A chunk is a run of consecutive ledger records copied byte for byte from
//! a segment (`[len u32 LE][crc32 LE][bincode entry v1]` each, see
//! `log_store`), behind a header that names them and a CRC of the whole:
//!
//! ```text
//! "SPDBCHNK" | version u32 LE | first seq u64 LE | last seq u64 LE
//!            | records' byte length u64 LE | crc32 of the records u32 LE
//!            | records
//! ```
//!
//! so a chunk cut short, or with any bit flipped, is refused before one of
//! its entries is read, and every entry still carries its own CRC. Its key
//! is `ledger/<first, 20 digits>-<last, 20 digits>.chunk`.
//!
//! The manifest (`manifest.json`, version 1) is JSON, for people and tools
//! as much as for `spendb restore`: what the bucket holds for the node and
//! up to which entry the store confirmed it.

use serde::{Deserialize, Serialize};

pub const CHUNK_MAGIC: &[u8; 8] = b"SPDBCHNK";
pub const CHUNK_VERSION: u32 = 1;
pub const MANIFEST_VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8 + 8 + 8 + 4;

/// A chunk as read back: the seqs it says it holds and its records.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub first: u64,
    pub last: u64,
    pub records: &'a [u8],
}

/// A chunk's bytes for the records `records` (entries `first..=last`).
pub fn encode_chunk(first: u64, last: u64, records: &[u8]) -> Vec<u8> {
    assert!(first <= last, "a chunk holds at least one entry");
    let mut out = Vec::with_capacity(HEADER + records.len());
    out.extend_from_slice(CHUNK_MAGIC);
    out.extend_from_slice(&CHUNK_VERSION.to_le_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&last.to_le_bytes());
    out.extend_from_slice(&(records.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(records).to_le_bytes());
    out.extend_from_slice(records);
    out
}

/// Reads a chunk's header and checks its CRC (the records' own CRCs are
/// checked as they are scanned).
pub fn decode_chunk(bytes: &[u8]) -> Result<Chunk<'_>, String> {
    if bytes.len() < HEADER || &bytes[..8] != CHUNK_MAGIC {
        return Err("not a spendb ledger chunk (no SPDBCHNK header)".into());
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let version = u32_at(8);
    if version != CHUNK_VERSION {
        return Err(format!(
            "chunk format version {version}; this build reads {CHUNK_VERSION}"
        ));
    }
    let (first, last, len, crc) = (u64_at(12), u64_at(20), u64_at(28), u32_at(36));
    let records = &bytes[HEADER..];
    if records.len() as u64 != len {
        return Err(format!(
            "the chunk says {len} bytes of records and holds {}",
            records.len()
        ));
    }
    let got = crc32fast::hash(records);
    if got != crc {
        return Err(format!(
            "chunk CRC mismatch (stored {crc:08x}, computed {got:08x})"
        ));
    }
    if first > last || first == 0 {
        return Err(format!("the chunk says entries {first} to {last}"));
    }
    Ok(Chunk {
        first,
        last,
        records,
    })
}

/// The key of the chunk holding entries `first..=last`.
pub fn chunk_key(first: u64, last: u64) -> String {
    format!("ledger/{first:020}-{last:020}.chunk")
}

/// (first, last) of a chunk key's name (`…/ledger/<first>-<last>.chunk`).
pub fn parse_chunk_key(key: &str) -> Option<(u64, u64)> {
    let name = key.rsplit('/').next()?.strip_suffix(".chunk")?;
    let (first, last) = name.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// What the bucket holds for one node (`<prefix>/<node>/manifest.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestV1 {
    pub version: u32,
    pub node: String,
    /// The first entry shipped (1 unless the ledger's start was archived
    /// away before `--archive` was set).
    pub first_seq: u64,
    /// Every entry through this one is in the bucket's chunks, confirmed.
    pub shipped_seq: u64,
    /// The time (ms since the epoch) of entry `shipped_seq`.
    pub shipped_ts: u64,
    /// Chunks and bytes of ledger shipped so far.
    pub chunks: u64,
    pub bytes: u64,
    /// Seqs of the snapshots under `snapshots/` (`<seq>.snap`), ascending.
    pub snapshots: Vec<u64>,
    /// Seqs of the rollups under `rollups/` (`<seq>.rollup`), ascending.
    pub rollups: Vec<u64>,
    /// Whether the ledger is also written as Parquet
    /// (`<prefix>/parquet/node=<node>/day=<YYYY-MM-DD>/…`).
    pub parquet: bool,
    /// When this manifest was written (ms since the epoch).
    pub updated_ms: u64,
}

impl ManifestV1 {
    pub fn new(node: &str, first_seq: u64, parquet: bool) -> ManifestV1 {
        ManifestV1 {
            version: MANIFEST_VERSION,
            node: node.to_string(),
            first_seq,
            parquet,
            ..Default::default()
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest is plain JSON")
    }

    pub fn decode(bytes: &[u8]) -> Result<ManifestV1, String> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version =
            serde_json::from_slice(bytes).map_err(|e| format!("manifest.json: {e}"))?;
        if v.version != MANIFEST_VERSION {
            return Err(format!(
                "manifest.json version {}; this build reads {MANIFEST_VERSION}",
                v.version
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("manifest.json: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_round_trips_and_any_flipped_bit_or_cut_is_refused() {
        let records = b"0123456789abcdef".to_vec();
        let bytes = encode_chunk(5, 9, &records);
        let c = decode_chunk(&bytes).unwrap();
        assert_eq!((c.first, c.last, c.records), (5, 9, &records[..]));
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            // A flip in `first`/`last` keeps the CRC (it covers the
            // records) but changes what the chunk says: the reader checks
            // those against the key and the records' own seqs.
            let at = i / 8;
            if (12..28).contains(&at) {
                continue;
            }
            assert!(decode_chunk(&b).is_err(), "flip of bit {i} went unnoticed");
        }
        assert!(decode_chunk(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_chunk(&bytes[..10]).is_err());
    }

    #[test]
    fn chunk_keys_name_their_entries() {
        let key = chunk_key(1, 4096);
        assert_eq!(
            key,
            "ledger/00000000000000000001-00000000000000004096.chunk"
        );
        assert_eq!(parse_chunk_key(&format!("p/n1/{key}")), Some((1, 4096)));
        assert_eq!(parse_chunk_key("p/n1/ledger/x.chunk"), None);
        assert_eq!(parse_chunk_key("p/n1/manifest.json"), None);
    }

    #[test]
    fn a_manifest_of_another_version_is_refused_by_number() {
        let m = ManifestV1::new("n1", 1, false);
        assert_eq!(ManifestV1::decode(&m.encode()).unwrap(), m);
        let other = String::from_utf8(m.encode())
            .unwrap()
            .replace("\"version\": 1", "\"version\": 2");
        let err = ManifestV1::decode(other.as_bytes()).unwrap_err();
        assert!(err.contains("version 2"), "{err}");
    }
}
