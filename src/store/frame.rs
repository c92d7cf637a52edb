//! CRC framing of ledger records and snapshots: `[crc32 (LE, 4 bytes)][payload]`,
//! the CRC (crc32fast) taken over the payload. Payloads are bincode 2.

use serde::{de::DeserializeOwned, Serialize};

use super::format::ledger::EntryV1;
use crate::state::Entry;

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Frames any serializable value.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    bincode::serde::encode_into_std_write(value, &mut out, bincode_config())
        .expect("encoding to a Vec cannot fail");
    let crc = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A frame's payload, if its CRC holds.
fn check_crc(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < 4 {
        return Err(format!(
            "record of {} bytes is shorter than its CRC",
            bytes.len()
        ));
    }
    let (crc, payload) = bytes.split_at(4);
    let want = u32::from_le_bytes(crc.try_into().unwrap());
    let got = crc32fast::hash(payload);
    if want != got {
        return Err(format!(
            "CRC mismatch (stored {want:08x}, computed {got:08x})"
        ));
    }
    Ok(payload)
}

/// Checks a frame's CRC and decodes it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let payload = check_crc(bytes)?;
    let (v, used) = bincode::serde::decode_from_slice(payload, bincode_config())
        .map_err(|e| format!("undecodable record: {e}"))?;
    if used != payload.len() {
        return Err(format!(
            "{} trailing bytes after the record",
            payload.len() - used
        ));
    }
    Ok(v)
}

/// Decodes the first value of a frame's payload, ignoring what follows and
/// without checking the CRC (to read a version number before the rest).
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let payload = bytes.get(4..).ok_or("record shorter than its CRC")?;
    bincode::serde::decode_from_slice(payload, bincode_config())
        .map(|(v, _)| v)
        .map_err(|e| format!("undecodable record: {e}"))
}

/// A ledger record's frame: the entry in format v1 (`format::ledger`).
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    encode(&EntryV1::from(e))
}

/// Appends `[len u32 LE][crc32 LE][bincode entry]` to `out` (a segment
/// record; `len` counts the CRC and the entry), without an allocation.
pub fn encode_entry_into(e: &Entry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    bincode::serde::encode_into_std_write(EntryV1::from(e), out, bincode_config())
        .expect("encoding to a Vec cannot fail");
    let crc = crc32fast::hash(&out[start + 8..]);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A ledger record's seq, its CRC checked, the rest not decoded (the seq
/// is the first field of every entry format).
pub fn entry_seq(bytes: &[u8]) -> Result<u64, String> {
    check_crc(bytes)?;
    decode_prefix::<u64>(bytes)
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, String> {
    decode::<EntryV1>(bytes).map(Entry::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::EntryKind;

    #[test]
    fn round_trips_and_detects_any_flipped_bit() {
        let e = Entry {
            seq: 7,
            ts: 123,
            kind: EntryKind::Release { id: "h1".into() },
        };
        let bytes = encode_entry(&e);
        assert_eq!(decode_entry(&bytes).unwrap(), e);
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode_entry(&b).is_err(), "flip of bit {i} went unnoticed");
        }
        assert!(decode_entry(&bytes[..bytes.len() - 1]).is_err());
        // The seq alone, read by opening: the same CRC guards it.
        assert_eq!(entry_seq(&bytes), Ok(7));
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(entry_seq(&b).is_err(), "flip of bit {i} went unnoticed");
        }
        assert!(entry_seq(&bytes[..3]).is_err());
        assert!(decode_entry(&[1, 2]).is_err());
    }
}
