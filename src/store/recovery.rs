//! Start-up and audit. Recovery loads the newest snapshot whose CRC holds and
//! replays the ledger tail after it; `verify` rebuilds the state from the
//! first entry and compares it with every stored snapshot.

use super::format::snapshot;
use super::{LedgerRead, Storage, StoreError};
use crate::state::{Config, State};

/// What start-up found.
#[derive(Debug)]
pub struct Recovered {
    pub state: State,
    /// Ledger position of the snapshot used, if any.
    pub snapshot_seq: Option<u64>,
    /// Entries replayed after it.
    pub replayed: u64,
    /// A damaged last record that was cut off (its seq).
    pub cut_tail: Option<u64>,
}

/// What start-up found, without the state itself (for logs).
#[derive(Clone, Copy, Debug)]
pub struct RecoveryInfo {
    pub last_seq: u64,
    pub snapshot_seq: Option<u64>,
    pub replayed: u64,
    pub cut_tail: Option<u64>,
}

impl Recovered {
    pub fn info(&self) -> RecoveryInfo {
        RecoveryInfo {
            last_seq: self.state.next_seq - 1,
            snapshot_seq: self.snapshot_seq,
            replayed: self.replayed,
            cut_tail: self.cut_tail,
        }
    }
}

/// Frames a state for `Storage::save_snapshot` (`format::snapshot`).
pub fn encode_snapshot(state: &State) -> Vec<u8> {
    snapshot::encode(state)
}

/// Reads a snapshot stored at ledger position `seq` (`format::snapshot`).
pub fn decode_snapshot(seq: u64, bytes: &[u8], config: &Config) -> Result<State, String> {
    snapshot::decode(seq, bytes, config)
}

/// Rebuilds the state: newest good snapshot, then the ledger after it. A
/// damaged *last* record is a torn tail and is cut back (it was never
/// acknowledged: a batch is acknowledged only after it is durable); damage
/// anywhere else is refused with the position.
pub fn recover(store: &mut dyn Storage, config: Config) -> Result<Recovered, StoreError> {
    let began = std::time::Instant::now();
    let mut state = None;
    let mut snapshot_seq = None;
    for seq in store.snapshot_seqs()? {
        let Some(bytes) = store.read_snapshot(seq)? else {
            continue;
        };
        match decode_snapshot(seq, &bytes, &config) {
            Ok(s) => {
                snapshot_seq = Some(seq);
                state = Some(s);
                break;
            }
            Err(e) => tracing::warn!(
                "snapshot at ledger entry {seq} is unusable ({e}); trying an older one"
            ),
        }
    }
    let mut state = state.unwrap_or_else(|| State::new(config));
    let loaded = began.elapsed();
    let last = store.last_seq()?;
    // Room for the holds the tail adds (at most one per two entries when
    // each is reserved and settled), so the hold index is not rehashed
    // while millions of entries are replayed (7 % of a 3.5M-entry replay).
    let tail = last.saturating_sub(state.next_seq - 1);
    state.holds.reserve_records((tail / 2) as usize);
    let mut replayed = 0;
    let mut cut_tail = None;
    for item in store.read_from(state.next_seq) {
        match item {
            Ok(e) => {
                if e.seq != state.next_seq {
                    return Err(StoreError::Corrupt {
                        seq: state.next_seq,
                        what: format!("missing: the ledger jumps to {}", e.seq),
                    });
                }
                if let Err(what) = state.check_entry(&e) {
                    return Err(StoreError::Corrupt { seq: e.seq, what });
                }
                state.apply_entry(&e);
                replayed += 1;
            }
            Err(StoreError::Corrupt { seq, what }) if seq == last => {
                tracing::warn!("ledger record {seq}, the last one, is damaged ({what}): cutting the tail back to {}", seq - 1);
                cut_tail = Some(seq);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(seq) = cut_tail {
        store.truncate_from(seq)?;
    }
    tracing::info!(
        "recovery: snapshot {snapshot_seq:?} ({} holds) loaded in {loaded:?}, {replayed} entries replayed in {:?}",
        state.holds.len(),
        began.elapsed() - loaded
    );
    Ok(Recovered {
        state,
        snapshot_seq,
        replayed,
        cut_tail,
    })
}

#[derive(Debug)]
pub struct VerifyReport {
    /// Set when the ledger's older entries are archived away: the replay
    /// began at this snapshot.
    pub from_snapshot: Option<u64>,
    pub entries: u64,
    pub snapshots_compared: usize,
    pub open_holds: usize,
    pub scopes: usize,
}

/// Replays the whole ledger from scratch, checking every CRC and that
/// sequence numbers have no gaps, checks the state's invariants, and compares
/// the rebuilt state with every stored snapshot at its position.
pub fn verify(store: &dyn LedgerRead, config: Config) -> Result<VerifyReport, String> {
    let mut snaps = Vec::new();
    for (seq, bytes) in store.snapshots().map_err(|e| e.to_string())? {
        let s = decode_snapshot(seq, &bytes, &config)
            .map_err(|e| format!("snapshot at entry {seq}: {e}"))?;
        // A layout 3 snapshot's rolling windows counted holds when settled,
        // not when made: they are not compared (format::snapshot).
        let old_rolling = snapshot::layout(&bytes)? == snapshot::SNAPSHOT_LAYOUT_3;
        snaps.push((seq, s, old_rolling));
    }
    snaps.sort_by_key(|(seq, ..)| *seq);
    // Entries archived and then moved away: start from the oldest snapshot
    // at or after the first entry still here (said in the report).
    let first = store
        .read_from(1)
        .next()
        .transpose()
        .map_err(|e| e.to_string())?
        .map_or(1, |e| e.seq);
    let mut state = State::new(config);
    let mut from_snapshot = None;
    if first > 1 {
        let i = snaps
            .iter()
            .position(|(seq, ..)| *seq >= first - 1)
            .ok_or_else(|| {
                format!(
                    "the ledger starts at entry {first} (older entries were archived and are not in \
                     archive/) and no snapshot is at or after entry {}: put the archived segments back",
                    first - 1
                )
            })?;
        let (seq, snap, _) = snaps.remove(i);
        snap.check_invariants()
            .map_err(|e| format!("snapshot at entry {seq}: {e}"))?;
        state = snap;
        from_snapshot = Some(seq);
        snaps.retain(|(s, ..)| *s > seq);
    }
    let mut pending = snaps.into_iter().peekable();
    let mut compared = 0;
    let mut compare = |state: &State,
                       pending: &mut std::iter::Peekable<
        std::vec::IntoIter<(u64, State, bool)>,
    >| {
        while let Some((seq, snap, old_rolling)) =
            pending.next_if(|(seq, ..)| *seq == state.next_seq - 1)
        {
            state
                .check_invariants()
                .map_err(|e| format!("after entry {seq}: {e}"))?;
            let (mut ours, mut theirs) = (state.digest(), snap.digest());
            if old_rolling {
                ours.leave_out_rolling_windows();
                theirs.leave_out_rolling_windows();
            }
            if let Some(d) = ours.diff(&theirs) {
                return Err(format!("the state rebuilt from the ledger differs from the snapshot at entry {seq}: {d}"));
            }
            compared += 1;
        }
        Ok::<(), String>(())
    };
    compare(&state, &mut pending)?;
    for item in store.read_from(state.next_seq) {
        let e = item.map_err(|e| e.to_string())?;
        if e.seq != state.next_seq {
            return Err(format!(
                "ledger record {} missing: the ledger jumps to {}",
                state.next_seq, e.seq
            ));
        }
        state.check_entry(&e)?;
        state.apply_entry(&e);
        compare(&state, &mut pending)?;
    }
    if let Some((seq, ..)) = pending.next() {
        return Err(format!(
            "a snapshot at entry {seq} is ahead of the ledger, which ends at {}",
            state.next_seq - 1
        ));
    }
    state
        .check_invariants()
        .map_err(|e| format!("at the end of the ledger: {e}"))?;
    Ok(VerifyReport {
        from_snapshot,
        entries: state.next_seq - 1,
        snapshots_compared: compared,
        open_holds: state.digest().open_holds.len(),
        scopes: state.nodes.len(),
    })
}
