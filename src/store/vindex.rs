//! The semantic cache's vector index: nearest neighbour by cosine similarity
//! over one namespace's live entries.
//!
//! Vectors are normalised on the way in, so cosine similarity is a dot
//! product. They live in one flat arena (`dim` floats a slot); a deleted
//! entry's slot goes on a free list and the next insert reuses it, so churn
//! neither grows the arena nor leaves anything behind that a search must
//! skip: a search over N live entries reads exactly N vectors, whatever was
//! deleted before.
//!
//! This is the exact (brute-force) index. It answers with the true nearest
//! neighbour; its cost grows with the namespace (docs/BENCHMARKS.md,
//! "Semantic cache"), which is where an approximate index takes over.

use std::collections::HashMap;

/// An entry's id in its namespace (`CACHE.VSET`'s reply).
pub type EntryId = u64;

/// The most dimensions a vector may have.
pub const MAX_DIMENSION: usize = 4096;

/// `v` scaled to length 1, or an error for a vector with no direction or a
/// component that is not a finite number.
pub fn normalised(v: &[f32]) -> Result<Vec<f32>, String> {
    if v.iter().any(|x| !x.is_finite()) {
        return Err("vector components must be finite numbers".into());
    }
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 {
        return Err("a zero vector has no direction (cosine similarity is undefined)".into());
    }
    Ok(v.iter().map(|x| (f64::from(*x) / norm) as f32).collect())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent sums: the compiler keeps them in SIMD lanes.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// One namespace's vectors.
pub struct FlatIndex {
    dim: usize,
    arena: Vec<f32>,
    /// The entry in each slot (`None`: free).
    owner: Vec<Option<EntryId>>,
    slot_of: HashMap<EntryId, usize>,
    free: Vec<usize>,
}

/// A search's answer: the nearest live entry and its cosine similarity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nearest {
    pub id: EntryId,
    pub score: f32,
}

impl FlatIndex {
    pub fn new(dim: usize) -> FlatIndex {
        assert!(dim > 0 && dim <= MAX_DIMENSION);
        FlatIndex {
            dim,
            arena: Vec::new(),
            owner: Vec::new(),
            slot_of: HashMap::new(),
            free: Vec::new(),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    /// Adds (or replaces) `id`'s vector, already normalised.
    pub fn insert(&mut self, id: EntryId, unit: &[f32]) {
        assert_eq!(
            unit.len(),
            self.dim,
            "the namespace's dimension is checked first"
        );
        let slot = match self.slot_of.get(&id) {
            Some(&s) => s,
            None => match self.free.pop() {
                Some(s) => s,
                None => {
                    self.arena.resize(self.arena.len() + self.dim, 0.0);
                    self.owner.push(None);
                    self.owner.len() - 1
                }
            },
        };
        self.arena[slot * self.dim..(slot + 1) * self.dim].copy_from_slice(unit);
        self.owner[slot] = Some(id);
        self.slot_of.insert(id, slot);
        debug_assert_eq!(self.owner.len() * self.dim, self.arena.len());
    }

    pub fn remove(&mut self, id: EntryId) -> bool {
        let Some(slot) = self.slot_of.remove(&id) else {
            return false;
        };
        self.owner[slot] = None;
        self.free.push(slot);
        debug_assert_eq!(self.owner.len(), self.slot_of.len() + self.free.len());
        true
    }

    /// The live entry most similar to `unit` (normalised) for which `live`
    /// is true (the cache passes "not expired"), if any.
    pub fn nearest(&self, unit: &[f32], live: impl Fn(EntryId) -> bool) -> Option<Nearest> {
        assert_eq!(unit.len(), self.dim);
        let mut best: Option<Nearest> = None;
        for (slot, owner) in self.owner.iter().enumerate() {
            let Some(id) = *owner else { continue };
            let score = dot(unit, &self.arena[slot * self.dim..(slot + 1) * self.dim]);
            if best.is_none_or(|b| score > b.score || (score == b.score && id < b.id)) && live(id) {
                best = Some(Nearest { id, score });
            }
        }
        best
    }

    /// Bytes the index holds in memory (the arena, the slot tables).
    pub fn memory_bytes(&self) -> usize {
        self.arena.capacity() * 4
            + self.owner.capacity() * std::mem::size_of::<Option<EntryId>>()
            + self.slot_of.capacity() * (8 + 8 + 8)
            + self.free.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        normalised(v).unwrap()
    }

    #[test]
    fn the_nearest_by_cosine_and_deleted_slots_are_reused() {
        let mut ix = FlatIndex::new(3);
        ix.insert(1, &unit(&[1.0, 0.0, 0.0]));
        ix.insert(2, &unit(&[0.0, 1.0, 0.0]));
        ix.insert(3, &unit(&[1.0, 1.0, 0.0]));
        let hit = ix.nearest(&unit(&[2.0, 0.1, 0.0]), |_| true).unwrap();
        assert_eq!(hit.id, 1);
        assert!((hit.score - 0.99875).abs() < 1e-4, "{hit:?}");
        // Skips what the cache says is not live.
        assert_eq!(
            ix.nearest(&unit(&[2.0, 0.1, 0.0]), |id| id != 1)
                .unwrap()
                .id,
            3
        );
        assert!(ix.remove(1));
        assert!(!ix.remove(1));
        let before = ix.memory_bytes();
        ix.insert(4, &unit(&[0.0, 0.0, 1.0]));
        assert_eq!(ix.memory_bytes(), before, "the freed slot was reused");
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.nearest(&unit(&[0.0, 0.1, 1.0]), |_| true).unwrap().id, 4);
        // Replacing keeps one slot.
        ix.insert(4, &unit(&[0.0, 1.0, 0.0]));
        assert_eq!(ix.len(), 3);
    }

    #[test]
    fn vectors_without_a_direction_are_refused() {
        assert!(normalised(&[0.0, 0.0]).is_err());
        assert!(normalised(&[f32::NAN, 1.0]).is_err());
        assert!(normalised(&[f32::INFINITY, 1.0]).is_err());
        let u = unit(&[3.0, 4.0]);
        assert!((u[0] - 0.6).abs() < 1e-6 && (u[1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn dot_covers_the_tail_past_the_lanes() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let want: f32 = a.iter().map(|x| x * x).sum();
        assert_eq!(dot(&a, &a), want);
    }
}
