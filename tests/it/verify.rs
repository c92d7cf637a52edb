//! `spendb ledger verify` and start-up against damaged data: a flipped byte in
//! a ledger record, a snapshot that disagrees with the ledger, a damaged tail.

use crate::common::*;
use spendb::state::Config;
use spendb::store::recovery::{self, decode_snapshot, encode_snapshot};
use spendb::store::{log_store, LedgerRead, LogStore, Storage};

/// A stopped server's data dir with a few entries and a snapshot.
fn populated() -> Server {
    let mut s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:v TOKENS 5000 PER DAY").unwrap();
    q(&mut c, "RESERVE v1 org:v gpt-4o INPUT 100 OUTPUT 0");
    q(&mut c, "COMMIT v1 INPUT 100 OUTPUT 5");
    q(&mut c, "RESERVE v2 org:v gpt-4o INPUT 100 OUTPUT 0");
    assert!(s.stop().success());
    s
}

/// Flips a bit in the last byte of ledger record `seq`, in its segment file.
fn flip_record(dir: &std::path::Path, seq: u64) {
    let (path, offset) = log_store::locate(dir, seq).unwrap().expect("record exists");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = offset as usize;
    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    bytes[at + 4 + len - 1] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn verify_refuses_a_damaged_record() {
    let s = populated();
    assert!(verify(&s.dir).0);
    flip_record(&s.dir, 2);
    let (ok, out) = verify(&s.dir);
    assert!(!ok, "{out}");
    assert!(
        out.contains("ledger verify FAILED: ledger record 2: CRC mismatch"),
        "{out}"
    );
    // Start-up refuses damage in the middle too, naming the record.
    let store = LogStore::open(&s.dir).unwrap();
    // The snapshot covers the damaged record; drop it to force a full replay.
    let snaps = store.snapshots().unwrap();
    assert!(!snaps.is_empty());
    drop(store);
    std::fs::remove_dir_all(s.dir.join("snapshots")).unwrap();
    let mut store = LogStore::open(&s.dir).unwrap();
    let e = recovery::recover(&mut store, Config::default()).unwrap_err();
    assert!(e.to_string().contains("ledger record 2"), "{e}");
}

#[test]
fn verify_refuses_a_snapshot_that_disagrees_with_the_ledger() {
    let s = populated();
    let mut store = LogStore::open(&s.dir).unwrap();
    let (seq, bytes) = store.snapshots().unwrap().remove(0);
    let mut state = decode_snapshot(seq, &bytes, &Config::default()).unwrap();
    // A well-formed snapshot (valid CRC) whose figures are wrong.
    state.nodes.get_mut("org:v").unwrap().spent.0[0] += 1;
    store.save_snapshot(seq, &encode_snapshot(&state)).unwrap();
    drop(store);
    let (ok, out) = verify(&s.dir);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "differs from the snapshot at entry {seq}: scope org:v"
        )),
        "{out}"
    );
}

#[test]
fn a_damaged_last_record_is_cut_back_at_start() {
    let s = populated();
    let store = LogStore::open(&s.dir).unwrap();
    let last = store.last_seq().unwrap();
    drop(store);
    std::fs::remove_dir_all(s.dir.join("snapshots")).unwrap();
    flip_record(&s.dir, last);
    let mut store = LogStore::open(&s.dir).unwrap();
    let r = recovery::recover(&mut store, Config::default()).unwrap();
    assert_eq!(r.cut_tail, Some(last));
    assert_eq!(r.state.next_seq, last);
    assert_eq!(store.last_seq().unwrap(), last - 1);
    drop(store);
    let (ok, out) = verify(&s.dir);
    assert!(ok, "{out}");
    // The rollup persisted at the stop covered the entry cut: stale.
    assert!(out.contains("1 rollup(s) past the ledger's end"), "{out}");
}

/// A ledger whose records are intact (CRCs good) but break an invariant —
/// a hold released twice — is refused by `ledger verify` and by start-up
/// with what and where, instead of stopping the process in `apply_entry`.
#[test]
fn a_ledger_that_breaks_an_invariant_is_refused_with_a_message() {
    use spendb::state::limit::Dims;
    use spendb::state::{Entry, EntryKind};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut store = LogStore::open(&dir).unwrap();
    let e = |seq, kind| Entry {
        seq,
        ts: 1_000,
        kind,
    };
    let hold = EntryKind::Hold {
        id: "h1".into(),
        scope: "org:bad".into(),
        model: "gpt-4o".into(),
        input: 1,
        output: 1,
        ttl_ms: None,
        amounts: Dims::call(1, 1, 1),
        expires_at: 9_000_000_000_000,
        run: None,
    };
    let release = EntryKind::Release { id: "h1".into() };
    store
        .append(&[e(1, hold), e(2, release.clone()), e(3, release)])
        .unwrap();
    store.sync().unwrap();
    drop(store);
    let (ok, out) = verify(&dir);
    assert!(!ok, "{out}");
    assert!(out.contains("entry 3: hold h1 is not open"), "{out}");
    let mut store = LogStore::open(&dir).unwrap();
    let err = match recovery::recover(&mut store, Config::default()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("recovered a ledger that releases a hold twice"),
    };
    assert!(
        err.contains("ledger record 3: entry 3: hold h1 is not open"),
        "{err}"
    );
}
