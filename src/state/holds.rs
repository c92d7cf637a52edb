//! The hold table: every hold the state knows (open, and settled ones kept
//! for idempotent replays), stored compactly, with the open holds' expiry
//! order.
//!
//! Open holds are the state's bulk (a busy server has as many as calls in
//! flight), so one costs about 110 bytes instead of the ~640 a
//! `HashMap<String, Hold>` took (docs/BENCHMARKS.md, "Memory"):
//! - records sit in a slab (`CowSlab<Rec>`, 80 bytes each: the id inline up
//!   to 24 bytes, scope and model as interned numbers, no per-hold
//!   allocation), in copy-on-write chunks so a snapshot's copy is cheap;
//! - how settled holds ended is in a map by slot (`CowSlotMap`, likewise);
//! - the id → slot index is a `hashbrown::HashTable<u32>` (4 bytes a slot);
//! - expiry is a min-heap of `(expires_at, slot)` (16 bytes), cleaned lazily:
//!   an entry whose slot no longer holds an open hold due then is skipped.
//!
//! Readers get a [`Hold`], a by-value view (its strings are shared `Arc`s).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::Arc;

use compact_str::CompactString;

use super::cow::{CowQueue, CowSlab, CowSlotMap};
use super::limit::{Dim, Dims};
use super::{HoldStatus, Map};

/// A hold, as readers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub scope: Arc<str>,
    pub model: Arc<str>,
    pub input: u64,
    pub output: u64,
    /// The TTL the client asked for (None: the default applied).
    pub ttl_ms: Option<u64>,
    pub amounts: Dims,
    pub created_at: u64,
    pub expires_at: u64,
    pub status: HoldStatus,
}

impl Hold {
    pub fn ended_at(&self) -> Option<u64> {
        Hold::ended_at_of(&self.status)
    }

    fn ended_at_of(status: &HoldStatus) -> Option<u64> {
        match status {
            HoldStatus::Open => None,
            HoldStatus::Committed(s) => Some(s.at),
            HoldStatus::Released { at } | HoldStatus::Expired { at } => Some(*at),
        }
    }
}

/// No TTL given by the client.
const NO_TTL: u32 = u32::MAX;

#[derive(Clone)]
struct Rec {
    id: CompactString,
    scope: u32,
    model: u32,
    /// Client TTL in ms, or NO_TTL. TTLs are capped far below 49 days.
    ttl: u32,
    /// Bit 31: the hold is open. Bits 0–30: the slot's generation, bumped
    /// each time it is reused, so queued references to an earlier occupant
    /// are recognised. (Packed: it keeps a record at 80 bytes.)
    gen_open: u32,
    input: u64,
    output: u64,
    cost: u64,
    created_at: u64,
    expires_at: u64,
}

const OPEN: u32 = 1 << 31;

impl Rec {
    fn is_open(&self) -> bool {
        self.gen_open & OPEN != 0
    }
    fn close(&mut self) {
        self.gen_open &= !OPEN;
    }
    fn gen(&self) -> u32 {
        self.gen_open & !OPEN
    }
}

/// Strings stored once, numbered.
#[derive(Clone, Default)]
struct Interner {
    all: Vec<Arc<str>>,
    index: Map<Arc<str>, u32>,
}

impl Interner {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.all.len() as u32;
        let a: Arc<str> = Arc::from(s);
        self.all.push(a.clone());
        self.index.insert(a, i);
        i
    }
}

/// `Clone` is cheap where the table is big: the records and the settled
/// statuses are copy-on-write chunks (`cow.rs`), shared with the clone until
/// written, and so is the end order; the id index and the expiry heap are
/// copied (memcpy). The engine clones the state under its lock for a snapshot and
/// encodes the clone after releasing it.
#[derive(Clone, Default)]
pub struct HoldTable {
    recs: CowSlab<Rec>,
    /// Slots of removed records, for reuse.
    free: Vec<u32>,
    index: hashbrown::HashTable<u32>,
    hasher: super::FixedHasher,
    strings: Interner,
    /// How settled holds ended (only they have an entry).
    ended: CowSlotMap<HoldStatus>,
    expiry: BinaryHeap<Reverse<(u64, u32)>>,
    open: usize,
    /// Settled holds in the order they ended, (ended at, slot, generation),
    /// for forgetting them after the retention.
    ended_order: CowQueue<(u64, u32, u32)>,
    /// (hash, slot) of records loaded from a snapshot and not yet in
    /// `index`: [`HoldTable::index_loaded`] puts them in all at once, in
    /// the index's own order. Empty at every other time.
    unindexed: Vec<(u64, u32)>,
}

impl std::fmt::Debug for HoldTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl HoldTable {
    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    fn slot(&self, id: &str) -> Option<u32> {
        debug_assert!(self.unindexed.is_empty(), "a lookup while loading");
        let recs = &self.recs;
        self.index
            .find(self.hash(id), |&s| recs[s as usize].id == id)
            .copied()
    }

    fn view(&self, slot: u32) -> Hold {
        let r = &self.recs[slot as usize];
        Hold {
            scope: self.strings.all[r.scope as usize].clone(),
            model: self.strings.all[r.model as usize].clone(),
            input: r.input,
            output: r.output,
            ttl_ms: (r.ttl != NO_TTL).then_some(r.ttl as u64),
            amounts: Dims::call(r.input, r.output, r.cost),
            created_at: r.created_at,
            expires_at: r.expires_at,
            status: if r.is_open() {
                HoldStatus::Open
            } else {
                self.ended.get(&slot).cloned().unwrap_or(HoldStatus::Open)
            },
        }
    }

    pub fn get(&self, id: &str) -> Option<Hold> {
        self.slot(id).map(|s| self.view(s))
    }

    pub fn contains(&self, id: &str) -> bool {
        self.slot(id).is_some()
    }

    /// Holds known (open and settled).
    /// Room for `additional` more holds without growing (a snapshot's
    /// record list sizes the table once).
    fn reserve(&mut self, additional: usize) {
        self.recs.reserve(additional);
        let (recs, hasher) = (&self.recs, &self.hasher);
        self.index.reserve(additional, |&s| {
            hasher.hash_one(recs[s as usize].id.as_str())
        });
        self.ended_order.reserve(additional);
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn open_count(&self) -> usize {
        self.open
    }

    /// Adds a hold (replacing none: ids are unique).
    pub fn insert(&mut self, id: &str, h: Hold) {
        debug_assert!(!self.contains(id), "hold {id} inserted twice");
        debug_assert_eq!(
            h.amounts,
            Dims::call(h.input, h.output, h.amounts.get(Dim::Cost))
        );
        let ttl = match h.ttl_ms {
            Some(t) => u32::try_from(t).unwrap_or(NO_TTL - 1).min(NO_TTL - 1),
            None => NO_TTL,
        };
        let rec = Rec {
            id: CompactString::from(id),
            scope: self.strings.intern(&h.scope),
            model: self.strings.intern(&h.model),
            ttl,
            gen_open: if h.status == HoldStatus::Open {
                OPEN
            } else {
                0
            },
            input: h.input,
            output: h.output,
            cost: h.amounts.get(Dim::Cost),
            created_at: h.created_at,
            expires_at: h.expires_at,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                let gen = (self.recs[s as usize].gen() + 1) & !OPEN;
                self.recs[s as usize] = Rec {
                    gen_open: (rec.gen_open & OPEN) | gen,
                    ..rec
                };
                s
            }
            None => {
                self.recs.push(rec);
                (self.recs.len() - 1) as u32
            }
        };
        if h.status == HoldStatus::Open {
            self.open += 1;
            self.expiry.push(Reverse((h.expires_at, slot)));
        } else if let Some(at) = h.ended_at() {
            let gen = self.recs[slot as usize].gen();
            self.ended.insert(slot, h.status);
            self.ended_order.push_back((at, slot, gen));
        }
        let hash = self.hash(id);
        let (recs, hasher) = (&self.recs, &self.hasher);
        self.index.insert_unique(hash, slot, |&s| {
            hasher.hash_one(recs[s as usize].id.as_str())
        });
    }

    /// Settles an open hold (or re-settles an expired one committed late).
    pub fn set_status(&mut self, id: &str, status: HoldStatus) {
        let Some(slot) = self.slot(id) else {
            debug_assert!(false, "status of unknown hold {id}");
            return;
        };
        let r = &mut self.recs[slot as usize];
        debug_assert!(status != HoldStatus::Open, "holds never reopen");
        if r.is_open() {
            r.close();
            self.open -= 1;
            // Its expiry entry is skipped when it comes up (lazy removal).
        }
        let gen = r.gen();
        self.ended.insert(slot, status);
        if let Some(at) = Hold::ended_at_of(&status) {
            self.ended_order.push_back((at, slot, gen));
        }
        self.compact_expiry();
    }

    /// Forgets settled holds that ended at or before `keep_after`.
    pub fn forget_ended(&mut self, keep_after: u64) {
        while let Some(&(t, slot, gen)) = self.ended_order.front() {
            if t > keep_after {
                break;
            }
            self.ended_order.pop_front();
            let r = &self.recs[slot as usize];
            if r.gen() != gen || r.is_open() || r.id.is_empty() {
                continue; // the slot moved on to another hold
            }
            // A hold can be queued twice (expired, then committed late): only
            // forget it once its latest end is old enough.
            let latest = self.ended.get(&slot).and_then(Hold::ended_at_of);
            if latest.is_some_and(|end| end <= keep_after) {
                let id = r.id.to_string();
                self.remove(&id);
            }
        }
    }

    /// Drops the stale entries of the expiry heap once most of it is stale
    /// (settled holds), so it stays proportional to the open holds. The work
    /// is proportional to the heap, never to the table: the first version
    /// rebuilt it from every hold known, and with millions of settled holds
    /// retained (replaying a ledger, where nothing pops the heap) that was
    /// quadratic — 10M entries did not replay in 2 minutes.
    fn compact_expiry(&mut self) {
        if self.expiry.len() <= 2 * self.open + 1024 {
            return;
        }
        let recs = &self.recs;
        self.expiry.retain(|Reverse((t, s))| {
            let r = &recs[*s as usize];
            r.is_open() && r.expires_at == *t
        });
    }

    /// Forgets a hold.
    pub fn remove(&mut self, id: &str) {
        let hash = self.hash(id);
        let recs = &self.recs;
        let Ok(entry) = self.index.find_entry(hash, |&s| recs[s as usize].id == id) else {
            return;
        };
        let (slot, _) = entry.remove();
        let r = &mut self.recs[slot as usize];
        if r.is_open() {
            r.close();
            self.open -= 1;
        }
        r.id = CompactString::default();
        self.ended.remove(&slot);
        self.free.push(slot);
        self.compact_expiry();
    }

    /// The open hold that expires first, if any is due by `now`.
    pub fn due(&mut self, now: u64) -> Option<String> {
        while let Some(&Reverse((t, slot))) = self.expiry.peek() {
            let r = &self.recs[slot as usize];
            if !(r.is_open() && r.expires_at == t) {
                // Settled, or its slot was reused by a later hold.
                self.expiry.pop();
                continue;
            }
            return (t <= now).then(|| r.id.to_string());
        }
        None
    }

    /// When the first open hold expires (may be early: entries of settled
    /// holds are cleaned lazily, so this only ever wakes the engine sooner).
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiry.peek().map(|Reverse((t, _))| *t)
    }

    /// The open holds whose scope passes `within`, as (made at, expires
    /// at, amounts), in no order. Read from the expiry index, which holds
    /// one live entry per open hold (`check_expiry_index`) and is at most
    /// [`HoldTable::expiry_entries`] long: what a caller bounds its scan by.
    pub fn open_under<'a>(
        &'a self,
        within: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = (u64, u64, Dims)> + 'a {
        self.expiry
            .iter()
            .map(|Reverse((t, s))| (*t, &self.recs[*s as usize]))
            .filter(move |(t, r)| {
                r.is_open() && r.expires_at == *t && within(&self.strings.all[r.scope as usize])
            })
            .map(|(t, r)| (r.created_at, t, Dims::call(r.input, r.output, r.cost)))
    }

    /// Entries of the expiry index (open holds, and settled ones not yet
    /// cleaned out: at most twice the open ones plus 1024).
    pub fn expiry_entries(&self) -> usize {
        self.expiry.len()
    }

    /// Every open hold, through the expiry index (the open holds and at
    /// most as many settled ones not yet cleaned out), not every hold
    /// remembered: HOLD.LIST and the dashboard read it under the engine's
    /// lock. A slot may appear twice (reused at the same expiry): the
    /// caller dedups by id.
    pub fn open(&self) -> impl Iterator<Item = (&str, Hold)> + '_ {
        self.expiry.iter().filter_map(|Reverse((t, s))| {
            let r = &self.recs[*s as usize];
            (r.is_open() && r.expires_at == *t).then(|| (r.id.as_str(), self.view(*s)))
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, Hold)> + '_ {
        self.index
            .iter()
            .map(|&s| (self.recs[s as usize].id.as_str(), self.view(s)))
    }

    /// Every open hold has an expiry entry at its own expiry time.
    pub fn check_expiry_index(&self) -> Result<(), String> {
        let entries: std::collections::BTreeSet<(u64, u32)> =
            self.expiry.iter().map(|Reverse(e)| *e).collect();
        let mut open = 0;
        for &s in self.index.iter() {
            let r = &self.recs[s as usize];
            if r.is_open() {
                open += 1;
                if !entries.contains(&(r.expires_at, s)) {
                    return Err(format!(
                        "open hold {} is missing from the expiry index",
                        r.id
                    ));
                }
            }
        }
        if open != self.open {
            return Err(format!(
                "{open} open holds but the count says {}",
                self.open
            ));
        }
        Ok(())
    }
}

/// One hold as a snapshot stores it: the record with its scope and model by
/// their number in the string table ([`HoldTable::strings`]), and how it
/// ended. The snapshot format itself is `store::format::snapshot`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRecord {
    pub id: CompactString,
    pub scope: u32,
    pub model: u32,
    /// The client's TTL in ms, or `u32::MAX` when none was given.
    pub ttl: u32,
    pub input: u64,
    pub output: u64,
    pub cost: u64,
    pub created_at: u64,
    pub expires_at: u64,
    pub status: HoldStatus,
}

impl HoldRecord {
    /// Whether its scope and model are in a string table of `strings`.
    pub fn check(&self, strings: usize) -> Result<(), String> {
        let n = strings as u64;
        if u64::from(self.scope) >= n || u64::from(self.model) >= n {
            return Err("a hold names an unknown string".into());
        }
        Ok(())
    }
}

/// What a snapshot stores of the table, read from it without copying it:
/// the string table, then the open holds (in slot order), then the settled
/// ones in the order they ended (each once, at its latest end).
impl HoldTable {
    /// The string table: scope and model names, numbered by position.
    pub fn strings(&self) -> &[Arc<str>] {
        &self.strings.all
    }

    /// The slots of the open holds and of the settled ones, as a snapshot
    /// lists them. Slot order, not the index's hash order: a snapshot's
    /// bytes (and the order of holds expiring in one millisecond after a
    /// restart) depend on the commands alone.
    pub fn snapshot_slots(&self) -> (Vec<u32>, Vec<u32>) {
        let mut open: Vec<u32> = self
            .index
            .iter()
            .copied()
            .filter(|&slot| self.recs[slot as usize].is_open())
            .collect();
        open.sort_unstable();
        // Each settled hold once, where its latest end puts it (a hold that
        // expired and was then committed late is queued twice).
        // Walked from the newest, keeping a slot's last queue entry only.
        let mut seen = vec![false; self.recs.len()];
        let mut settled: Vec<u32> = self
            .ended_order
            .iter()
            .rev()
            .filter(|&&(at, slot, gen)| {
                let r = &self.recs[slot as usize];
                let keep = r.gen() == gen
                    && !r.is_open()
                    && !r.id.is_empty()
                    && !seen[slot as usize]
                    && self.ended.get(&slot).and_then(Hold::ended_at_of) == Some(at);
                seen[slot as usize] |= keep;
                keep
            })
            .map(|&(_, slot, _)| slot)
            .collect();
        settled.reverse();
        assert_eq!(
            open.len() + settled.len(),
            self.index.len(),
            "every hold is open or settled once"
        );
        (open, settled)
    }

    /// The record in `slot` (one of [`HoldTable::snapshot_slots`]).
    pub fn record(&self, slot: u32) -> HoldRecord {
        let r = &self.recs[slot as usize];
        let status = if r.is_open() {
            HoldStatus::Open
        } else {
            self.ended.get(&slot).copied().unwrap_or(HoldStatus::Open)
        };
        HoldRecord {
            id: r.id.clone(),
            scope: r.scope,
            model: r.model,
            ttl: r.ttl,
            input: r.input,
            output: r.output,
            cost: r.cost,
            created_at: r.created_at,
            expires_at: r.expires_at,
            status,
        }
    }

    /// An empty table with a snapshot's string table, to load its records
    /// into; an error if a string repeats.
    pub fn with_strings(strings: &[Arc<str>]) -> Result<HoldTable, String> {
        let mut t = HoldTable::default();
        for s in strings {
            t.strings.intern(s);
        }
        if t.strings.all.len() != strings.len() {
            return Err("the string table repeats a string".into());
        }
        Ok(t)
    }

    /// Room for `n` more records (sized once: growing the tables as records
    /// arrive, rehashing millions of entries, was a third of the loading).
    pub fn reserve_records(&mut self, n: usize) {
        self.reserve(n);
    }

    /// Room for `n` more records read from a snapshot ([`HoldTable::load_record`]),
    /// and for their place in the queue of records awaiting the index.
    pub fn reserve_loading(&mut self, n: usize) {
        self.reserve(n);
        self.unindexed.reserve(n);
    }

    /// Checks a record read from a snapshot against the string table.
    pub fn check_record(&self, rec: &HoldRecord) -> Result<(), String> {
        rec.check(self.strings.all.len())
    }

    /// Adds a record read from a snapshot (checked with
    /// [`HoldTable::check_record`]), in the snapshot's order. It can be
    /// looked up once [`HoldTable::index_loaded`] has run.
    pub fn load_record(&mut self, rec: HoldRecord) {
        let open = rec.status == HoldStatus::Open;
        let slot = self.recs.len() as u32;
        let hash = self.hash(&rec.id);
        self.recs.push(Rec {
            id: rec.id,
            scope: rec.scope,
            model: rec.model,
            ttl: rec.ttl,
            gen_open: if open { OPEN } else { 0 },
            input: rec.input,
            output: rec.output,
            cost: rec.cost,
            created_at: rec.created_at,
            expires_at: rec.expires_at,
        });
        if open {
            self.open += 1;
            self.expiry.push(Reverse((rec.expires_at, slot)));
        } else if let Some(at) = Hold::ended_at_of(&rec.status) {
            self.ended.insert(slot, rec.status);
            self.ended_order.push_back((at, slot, 0));
        }
        self.unindexed.push((hash, slot));
    }

    /// Puts the records loaded since the last call into the id index;
    /// called once a snapshot's records are all read, before any lookup.
    ///
    /// Why not one insert per record as it arrives: each went to a random
    /// place in an index of millions and missed the cache twice (its
    /// control byte, its slot), two thirds of loading a record (perf,
    /// docs/BENCHMARKS.md "Issue #18"). hashbrown starts looking for a
    /// hash's place at `hash & (buckets - 1)`, so inserting in the order of
    /// that position (a counting sort into 4,096 runs, each a small stretch
    /// of the table) walks the table from front to back instead.
    pub fn index_loaded(&mut self) {
        let pending = std::mem::take(&mut self.unindexed);
        if pending.is_empty() {
            return;
        }
        let (recs, hasher) = (&self.recs, &self.hasher);
        let rehash = |&s: &u32| hasher.hash_one(recs[s as usize].id.as_str());
        self.index.reserve(pending.len(), rehash);
        // hashbrown keeps 7/8 of a power of two as its capacity. A wrong
        // guess only costs speed: every order inserts the same entries.
        let buckets = (self.index.capacity() * 8 / 7).next_power_of_two();
        let ordered = in_bucket_order(pending, buckets);
        for (hash, slot) in ordered {
            self.index.insert_unique(hash, slot, rehash);
        }
    }
}

/// `pending` sorted (stably, by counting) on the high bits of each hash's
/// start position in a table of `buckets` buckets.
fn in_bucket_order(pending: Vec<(u64, u32)>, buckets: usize) -> Vec<(u64, u32)> {
    const RUN_BITS: u32 = 12;
    let bits = buckets.trailing_zeros();
    if bits <= RUN_BITS {
        return pending; // the whole table is a few pages: any order is as fast
    }
    let shift = bits - RUN_BITS;
    let run = |h: u64| ((h as usize) & (buckets - 1)) >> shift;
    let mut starts = vec![0usize; (1 << RUN_BITS) + 1];
    for &(h, _) in &pending {
        starts[run(h) + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut ordered = vec![(0u64, 0u32); pending.len()];
    for &(h, slot) in &pending {
        let at = &mut starts[run(h)];
        ordered[*at] = (h, slot);
        *at += 1;
    }
    ordered
}

/// An open hold of 10 input and 5 output tokens on `gpt-4o` (the hold
/// table's tests and the snapshot format's).
#[cfg(test)]
pub(crate) fn open_hold_for_tests(scope: &str, expires_at: u64) -> Hold {
    Hold {
        scope: scope.into(),
        model: "gpt-4o".into(),
        input: 10,
        output: 5,
        ttl_ms: None,
        amounts: Dims::call(10, 5, 7),
        created_at: 0,
        expires_at,
        status: HoldStatus::Open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_loaded_in_bulk_are_all_found_by_id() {
        // Enough for the index to be sorted into runs before it is filled
        // (more than 4,096 buckets), open and settled, then a second batch
        // into the same table.
        let strings: Vec<Arc<str>> = vec!["org:x".into(), "gpt-4o".into()];
        let mut t = HoldTable::with_strings(&strings).unwrap();
        let rec = |i: u64| HoldRecord {
            id: CompactString::from(format!("hold-{i}")),
            scope: 0,
            model: 1,
            ttl: NO_TTL,
            input: i,
            output: 1,
            cost: 2,
            created_at: 0,
            expires_at: 1_000 + i,
            status: if i.is_multiple_of(3) {
                HoldStatus::Open
            } else {
                HoldStatus::Released { at: i }
            },
        };
        t.reserve_loading(20_000);
        for i in 0..20_000 {
            t.load_record(rec(i));
        }
        t.index_loaded();
        for i in 20_000..20_500 {
            t.load_record(rec(i));
        }
        t.index_loaded();
        assert_eq!(t.len(), 20_500);
        for i in 0..20_500 {
            let h = t
                .get(&format!("hold-{i}"))
                .unwrap_or_else(|| panic!("hold-{i}"));
            assert_eq!((h.input, h.expires_at), (i, 1_000 + i));
        }
        assert!(t.get("hold-20500").is_none());
        let (open, settled) = t.snapshot_slots();
        assert_eq!((open.len(), settled.len()), (6_834, 13_666));
        t.check_expiry_index().unwrap();
    }

    #[test]
    fn bucket_order_is_a_stable_sort_on_the_start_position() {
        let buckets = 1 << 16;
        let pending: Vec<(u64, u32)> = (0..50_000u32)
            .map(|s| ((s as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15), s))
            .collect();
        let ordered = in_bucket_order(pending.clone(), buckets);
        let run = |h: u64| (h as usize & (buckets - 1)) >> 4;
        assert!(ordered
            .windows(2)
            .all(|w| run(w[0].0) < run(w[1].0) || (run(w[0].0) == run(w[1].0) && w[0].1 < w[1].1)));
        let mut same = ordered.clone();
        same.sort_unstable_by_key(|&(_, s)| s);
        assert_eq!(same, pending);
        // A small table is left as it is.
        assert_eq!(in_bucket_order(pending.clone(), 4096), pending);
    }

    fn open(scope: &str, expires_at: u64) -> Hold {
        open_hold_for_tests(scope, expires_at)
    }

    #[test]
    fn reused_slots_and_lazy_expiry_expire_the_right_hold_at_the_right_time() {
        let mut t = HoldTable::default();
        t.insert("a", open("org:x", 100));
        t.set_status("a", HoldStatus::Released { at: 5 });
        t.remove("a");
        // "b" takes a's slot; a's stale expiry entry (100) must not expire it.
        t.insert("b", open("org:y", 300));
        assert_eq!(t.due(100), None);
        assert_eq!(t.due(299), None);
        assert_eq!(t.due(300).as_deref(), Some("b"));
        assert_eq!(t.get("b").unwrap().scope.as_ref(), "org:y");
        assert!(t.get("a").is_none());
        assert_eq!((t.len(), t.open_count()), (1, 1));
        t.check_expiry_index().unwrap();
    }

    #[test]
    fn forgetting_an_open_hold_counts_it_out_and_a_reused_slot_moves_on_a_generation() {
        let mut t = HoldTable::default();
        t.insert("a", open("org:x", 100));
        assert_eq!(t.open_count(), 1);
        let slot = t.slot("a").unwrap();
        let gen = t.recs[slot as usize].gen();
        t.remove("a");
        assert_eq!((t.len(), t.open_count()), (0, 0));
        // The next hold takes the slot with the next generation, so queued
        // references to "a" (end order, expiry) are told apart from it.
        t.insert("b", open("org:x", 200));
        assert_eq!(t.slot("b"), Some(slot));
        assert_eq!(t.recs[slot as usize].gen(), gen + 1);
        assert!(t.recs[slot as usize].is_open());
    }

    #[test]
    fn the_expiry_heap_stays_proportional_to_open_holds() {
        let mut t = HoldTable::default();
        for i in 0..10_000u64 {
            let id = format!("h{i}");
            t.insert(&id, open("org:x", 1_000_000 + i));
            t.set_status(&id, HoldStatus::Released { at: i });
        }
        assert_eq!(t.open_count(), 0);
        assert!(t.expiry.len() <= 1024 + 1, "{}", t.expiry.len());
        t.insert("live", open("org:x", 5));
        assert_eq!(t.due(5).as_deref(), Some("live"));
    }
}

#[cfg(test)]
mod size {
    #[test]
    fn a_record_is_80_bytes() {
        assert_eq!(std::mem::size_of::<super::Rec>(), 80);
    }
}
