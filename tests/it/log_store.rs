//! The ledger's segment files on a real disk: rotation, reopening, torn
//! tails after the preallocated zeros, damage in a closed segment, rollback.

use spendb::state::{Entry, EntryKind};
use spendb::store::{log_store, LedgerRead, LogStore, Storage, StoreError};

fn entry(seq: u64) -> Entry {
    Entry {
        seq,
        ts: 1_000 + seq,
        kind: EntryKind::Release {
            id: format!("hold-{seq}"),
        },
    }
}

/// Appends entries `from..=to` as batches of `batch`, syncing each.
fn append(store: &mut LogStore, from: u64, to: u64, batch: u64) {
    let mut seq = from;
    while seq <= to {
        let end = (seq + batch - 1).min(to);
        let entries: Vec<Entry> = (seq..=end).map(entry).collect();
        store.append(&entries).unwrap();
        store.sync().unwrap();
        seq = end + 1;
    }
}

fn seqs(store: &LogStore, from: u64) -> Vec<u64> {
    store.read_from(from).map(|r| r.unwrap().seq).collect()
}

#[test]
fn segments_rotate_and_everything_reads_back_in_order_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open_with(dir.path(), 512).unwrap();
    append(&mut store, 1, 300, 7);
    let segments = store.segment_paths();
    assert!(segments.len() > 5, "{segments:?}");
    drop(store);
    let store = LogStore::open_with(dir.path(), 512).unwrap();
    assert_eq!(store.last_seq().unwrap(), 300);
    assert_eq!(seqs(&store, 1), (1..=300).collect::<Vec<_>>());
    assert_eq!(seqs(&store, 123), (123..=300).collect::<Vec<_>>());
    assert!(seqs(&store, 301).is_empty());
    // Each batch sits whole in one segment: a segment starts at a batch start.
    for p in store.segment_paths() {
        let first: u64 = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!((first - 1) % 7, 0, "{p:?}");
    }
}

#[test]
fn a_torn_batch_before_the_preallocated_zeros_is_the_tail_and_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path()).unwrap();
    append(&mut store, 1, 20, 4);
    let path = store.segment_paths().pop().unwrap();
    drop(store);
    // Half of a record written after entry 20, then the zeros as before.
    let (_, off20) = log_store::locate(dir.path(), 20).unwrap().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let len20 = 4 + u32::from_le_bytes(bytes[off20 as usize..][..4].try_into().unwrap()) as usize;
    let end = off20 as usize + len20;
    assert!(bytes[end..].iter().all(|&b| b == 0), "preallocated zeros");
    bytes[end..end + 10].copy_from_slice(&[30, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
    std::fs::write(&path, &bytes).unwrap();

    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(
        store.last_seq().unwrap(),
        21,
        "the torn record counts as the last"
    );
    let items: Vec<_> = store.read_from(1).collect();
    assert_eq!(items.len(), 21);
    assert!(matches!(
        items[20],
        Err(StoreError::Corrupt { seq: 21, .. })
    ));
    store.truncate_from(21).unwrap();
    assert_eq!(store.last_seq().unwrap(), 20);
    append(&mut store, 21, 25, 5);
    drop(store);
    let store = LogStore::open(dir.path()).unwrap();
    assert_eq!(seqs(&store, 1), (1..=25).collect::<Vec<_>>());
}

#[test]
fn damage_in_a_closed_segment_is_reported_with_its_seq_and_nothing_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open_with(dir.path(), 256).unwrap();
    append(&mut store, 1, 100, 5);
    drop(store);
    let (path, off) = log_store::locate(dir.path(), 3).unwrap().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[off as usize + 9] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let store = LogStore::open_with(dir.path(), 256).unwrap();
    assert_eq!(store.last_seq().unwrap(), 100);
    let items: Vec<_> = store.read_from(1).collect();
    assert_eq!(
        items.len(),
        3,
        "two good entries, then the error, then nothing"
    );
    match &items[2] {
        Err(StoreError::Corrupt { seq, what }) => {
            assert_eq!(*seq, 3);
            assert!(what.contains("CRC mismatch"), "{what}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rollback_drops_a_batch_on_disk_even_across_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open_with(dir.path(), 300).unwrap();
    append(&mut store, 1, 10, 5);
    let mark = store.mark();
    let before = store.segment_paths().len();
    append(&mut store, 11, 40, 10);
    assert!(store.segment_paths().len() > before);
    store.rollback(mark).unwrap();
    assert_eq!(store.segment_paths().len(), before);
    assert_eq!(store.last_seq().unwrap(), 10);
    append(&mut store, 11, 12, 2);
    drop(store);
    let store = LogStore::open_with(dir.path(), 300).unwrap();
    assert_eq!(seqs(&store, 1), (1..=12).collect::<Vec<_>>());
}
