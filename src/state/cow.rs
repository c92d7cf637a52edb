//! Copy-on-write containers for the hold table: a slab and a map keyed by
//! slot, both cut into chunks of [`CHUNK`] slots behind `Arc`s.
//!
//! Why: the engine takes a snapshot by cloning the state under its lock.
//! With millions of holds a deep clone stalled every command for seconds
//! (2.0 s for 5M retained settled holds, docs/BENCHMARKS.md "Start-up").
//! Cloning these is one `Arc` increment per chunk; afterwards, the first
//! write to a chunk the snapshot still shares copies that chunk alone
//! (`Arc::make_mut`), so the copying is spread over the writes that follow,
//! a chunk at a time, and a chunk nobody writes is never copied.

use std::ops::{Index, IndexMut};
use std::sync::Arc;

/// Slots per chunk: 4096 records are ~320 KiB, a copy of well under a
/// millisecond.
pub const CHUNK_BITS: u32 = 12;
pub const CHUNK: usize = 1 << CHUNK_BITS;

/// A `Vec` in chunks that clones in O(chunks) and copies a chunk on its
/// first write after a clone.
#[derive(Clone)]
pub struct CowSlab<T> {
    chunks: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T> Default for CowSlab<T> {
    fn default() -> Self {
        CowSlab {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Clone> CowSlab<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, v: T) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        let last = self.chunks.last_mut().expect("a chunk with room");
        Arc::make_mut(last).push(v);
        self.len += 1;
    }

    /// Room for `additional` more elements' chunk pointers (the chunks
    /// themselves are allocated whole as they are needed).
    pub fn reserve(&mut self, additional: usize) {
        let chunks = (self.len + additional).div_ceil(CHUNK);
        self.chunks
            .reserve(chunks.saturating_sub(self.chunks.len()));
    }
}

impl<T> Index<usize> for CowSlab<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        assert!(i < self.len, "slot {i} of {}", self.len);
        &self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }
}

impl<T: Clone> IndexMut<usize> for CowSlab<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        assert!(i < self.len, "slot {i} of {}", self.len);
        &mut Arc::make_mut(&mut self.chunks[i >> CHUNK_BITS])[i & (CHUNK - 1)]
    }
}

/// A queue in chunks (pushed at the back, popped at the front), cloned
/// and copied like [`CowSlab`]: popping never writes to a chunk, it moves
/// past it and drops it once it is used up.
#[derive(Clone)]
pub struct CowQueue<T> {
    chunks: std::collections::VecDeque<Arc<Vec<T>>>,
    /// Elements of the first chunk already popped.
    head: usize,
    len: usize,
}

impl<T> Default for CowQueue<T> {
    fn default() -> Self {
        CowQueue {
            chunks: Default::default(),
            head: 0,
            len: 0,
        }
    }
}

impl<T: Clone> CowQueue<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push_back(&mut self, v: T) {
        if self.chunks.back().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push_back(Arc::new(Vec::with_capacity(CHUNK)));
        }
        let last = self.chunks.back_mut().expect("a chunk with room");
        Arc::make_mut(last).push(v);
        self.len += 1;
    }

    pub fn front(&self) -> Option<&T> {
        (self.len > 0).then(|| &self.chunks[0][self.head])
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let v = self.front()?.clone();
        self.head += 1;
        self.len -= 1;
        if self.head == self.chunks[0].len() {
            // Used up: a full chunk, or the last one with nothing left.
            self.chunks.pop_front();
            self.head = 0;
        }
        Some(v)
    }

    /// Front to back.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + '_ {
        let head = self.head;
        self.chunks
            .iter()
            .enumerate()
            .flat_map(move |(i, c)| c[if i == 0 { head } else { 0 }..].iter())
    }

    pub fn reserve(&mut self, additional: usize) {
        self.chunks.reserve(additional.div_ceil(CHUNK) + 1);
    }
}

/// Hashes a slot number so that hashbrown puts slot n in bucket n modulo
/// its capacity (the low bits) while its tags (the top 7 bits) stay spread.
/// Slots are small dense numbers, so none collide below the capacity, and
/// slots inserted in order (a snapshot loading) fill the table in memory
/// order: hashed at random, those inserts missed the cache every time and
/// were 36 % of loading 5M settled holds (perf, docs/BENCHMARKS.md).
#[derive(Clone, Copy, Default)]
pub struct SlotHasher(u64);

impl std::hash::Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u32(&mut self, n: u32) {
        let n = n as u64;
        self.0 = n | (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) & (0x7F << 57));
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u32 keys are hashed here; anything else still hashes.
        for &b in bytes {
            self.write_u32((self.0 as u32).rotate_left(8) ^ b as u32);
        }
    }
}

type SlotMap<V> = hashbrown::HashMap<u32, V, std::hash::BuildHasherDefault<SlotHasher>>;

/// A map from slot to value for a minority of slots, in one small map per
/// chunk of slots, each shared copy-on-write like [`CowSlab`]'s chunks.
#[derive(Clone)]
pub struct CowSlotMap<V> {
    shards: Vec<Arc<SlotMap<V>>>,
}

impl<V> Default for CowSlotMap<V> {
    fn default() -> Self {
        CowSlotMap { shards: Vec::new() }
    }
}

impl<V: Clone> CowSlotMap<V> {
    fn shard(slot: u32) -> usize {
        (slot >> CHUNK_BITS) as usize
    }

    pub fn get(&self, slot: &u32) -> Option<&V> {
        self.shards.get(Self::shard(*slot))?.get(slot)
    }

    pub fn insert(&mut self, slot: u32, v: V) {
        let i = Self::shard(slot);
        if i >= self.shards.len() {
            self.shards.resize_with(i + 1, Default::default);
        }
        Arc::make_mut(&mut self.shards[i]).insert(slot, v);
    }

    pub fn remove(&mut self, slot: &u32) {
        if let Some(shard) = self.shards.get_mut(Self::shard(*slot)) {
            if shard.contains_key(slot) {
                Arc::make_mut(shard).remove(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_keeps_its_values_while_the_original_changes() {
        let mut a = CowSlab::default();
        for i in 0..3 * CHUNK as u64 + 5 {
            a.push(i);
        }
        let snapshot = a.clone();
        a[7] = 1_000_000;
        a[2 * CHUNK + 1] = 2_000_000;
        a.push(42);
        assert_eq!(
            (snapshot[7], snapshot[2 * CHUNK + 1]),
            (7, 2 * CHUNK as u64 + 1)
        );
        assert_eq!((a[7], a[2 * CHUNK + 1]), (1_000_000, 2_000_000));
        assert_eq!((snapshot.len(), a.len()), (3 * CHUNK + 5, 3 * CHUNK + 6));
        // Only the chunks written to were copied.
        let shared = (0..a.chunks.len().min(snapshot.chunks.len()))
            .filter(|&c| Arc::ptr_eq(&a.chunks[c], &snapshot.chunks[c]))
            .count();
        assert_eq!(shared, 1, "chunks 0, 2 and 3 (the push) were written");

        let mut m = CowSlotMap::default();
        m.insert(3, "a");
        m.insert(CHUNK as u32 * 5 + 1, "b");
        let before = m.clone();
        m.remove(&3);
        m.insert(CHUNK as u32 * 5 + 1, "c");
        assert_eq!((before.get(&3), m.get(&3)), (Some(&"a"), None));
        assert_eq!(before.get(&(CHUNK as u32 * 5 + 1)), Some(&"b"));
        assert_eq!(m.get(&(CHUNK as u32 * 5 + 1)), Some(&"c"));
        assert_eq!(m.get(&(CHUNK as u32 * 9)), None);
    }

    #[test]
    fn a_queue_pops_in_order_and_its_clone_is_unaffected() {
        let mut q = CowQueue::default();
        let mut model = std::collections::VecDeque::new();
        let mut next = 0u32;
        // Pushes and pops across chunk boundaries, emptying it on the way.
        for round in 0..6 {
            for _ in 0..(CHUNK + 7) * (round % 3) {
                q.push_back(next);
                model.push_back(next);
                next += 1;
            }
            let copy = q.clone();
            let copied: Vec<u32> = copy.iter().copied().collect();
            for _ in 0..(CHUNK / 2 + 3) * (round % 4) {
                assert_eq!(q.pop_front(), model.pop_front());
            }
            assert_eq!(q.len(), model.len());
            assert_eq!(q.front(), model.front());
            assert!(q.iter().copied().eq(model.iter().copied()));
            assert!(q.iter().rev().copied().eq(model.iter().rev().copied()));
            // The clone still holds what it held.
            assert_eq!(copy.iter().copied().collect::<Vec<_>>(), copied);
        }
        while let Some(v) = q.pop_front() {
            assert_eq!(Some(v), model.pop_front());
        }
        assert!(model.is_empty() && q.is_empty() && q.front().is_none());
        q.push_back(9);
        assert_eq!(q.pop_front(), Some(9));
    }

    #[test]
    #[should_panic(expected = "slot 5 of 5")]
    fn reading_past_the_end_panics() {
        let mut a = CowSlab::default();
        for i in 0..5u8 {
            a.push(i);
        }
        let _ = a[5];
    }
}
