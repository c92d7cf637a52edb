//! The semantic cache (CACHE.VSET / VGET / VDEL / VCONFIG): values stored
//! under embeddings the client computes, answered for the nearest stored
//! embedding whose cosine similarity reaches the namespace's threshold.
//!
//! - Entries persist in sled's `vcache-v1` tree, key `<namespace> 0x00 <id,
//!   big-endian u64>`, value a CRC-framed [`VEntryV1`] (the vector already
//!   normalised); a namespace's dimension, threshold and search ef in
//!   `vcache-config-v2` ([`VConfigV2`]; a `vcache-config-v1` tree of
//!   [`VConfigV1`], which had no ef, is converted at start and dropped). The
//!   index ([`super::vindex`]) lives in memory and is rebuilt from the tree
//!   at start.
//! - The first vector stored fixes the namespace's dimension; another is an
//!   error. The threshold defaults to [`DEFAULT_THRESHOLD`], the search's ef
//!   to [`DEFAULT_EF_SEARCH`]; a request may give its own of either.
//! - An entry is never served at or after its expiry (the search skips it);
//!   expired entries are deleted by `sweep`, which runs every second.
//! - Each namespace is bounded in bytes (vector + value + key, the exact
//!   cache's `--cache-max-bytes`); past it the least recently used entries
//!   are evicted.
//! - An entry stored with a KEY replaces the namespace's entry with the same
//!   KEY (the prompt it answers, say), so storing an answer again does not
//!   duplicate it.
//!
//! Savings (a hit with SCOPE books the entry's COST) are ledger entries,
//! through the engine, as for the exact cache.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::cache::{count, hit_rate, CacheLimits};
use super::frame;
pub use super::vindex::DEFAULT_EF_SEARCH;
use super::vindex::{normalised, EntryId, VectorIndex, MAX_DIMENSION, MAX_EF_SEARCH};
use super::StoreError;
use crate::state::Value;

/// The cosine similarity a hit needs unless the namespace or the request
/// says otherwise (RedisVL's default distance threshold, 0.1, as a
/// similarity).
pub const DEFAULT_THRESHOLD: f32 = 0.9;

/// The longest KEY text.
pub const MAX_KEY: usize = 64 * 1024;

/// One stored entry, as written to sled.
#[derive(Serialize, Deserialize)]
pub struct VEntryV1 {
    /// 0: never.
    pub expires_at: u64,
    /// Nano-USD a hit saves.
    pub cost: u64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Normalised to length 1.
    pub vector: Vec<f32>,
}

/// A namespace's settings, as written to sled before the search's ef was
/// one of them (read only, to convert).
#[derive(Serialize, Deserialize, Clone, Copy)]
pub struct VConfigV1 {
    /// 0 until the first vector is stored.
    pub dimension: u32,
    pub threshold: f32,
}

/// A namespace's settings, as written to sled.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct VConfigV2 {
    /// 0 until the first vector is stored.
    pub dimension: u32,
    pub threshold: f32,
    /// Candidates an HNSW search keeps (0: [`DEFAULT_EF_SEARCH`]).
    pub ef: u32,
}

impl VConfigV2 {
    /// The ef this namespace's searches use unless a request gives one.
    pub fn ef_search(&self) -> usize {
        match self.ef {
            0 => DEFAULT_EF_SEARCH,
            ef => ef as usize,
        }
    }
}

impl From<VConfigV1> for VConfigV2 {
    fn from(c: VConfigV1) -> VConfigV2 {
        VConfigV2 {
            dimension: c.dimension,
            threshold: c.threshold,
            ef: 0,
        }
    }
}

type KeyDigest = [u8; 32];

#[derive(Clone, Copy)]
struct Meta {
    size: u64,
    expires_at: u64,
    /// Recency: a larger tick was used later.
    tick: u64,
    key: Option<KeyDigest>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct VStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub bytes: u64,
    pub evictions: u64,
    pub expired: u64,
    /// Nano-USD of the hits' COST.
    pub saved: u64,
    /// The namespace's dimension (0: not fixed yet, or several namespaces).
    pub dimension: u32,
    /// Bytes the index holds in memory.
    pub index_bytes: u64,
    /// Namespaces searched by an HNSW graph now (the others exactly).
    pub approximate: u64,
    /// Namespaces whose graph is being (re)built in the background now.
    pub building: u64,
}

impl VStats {
    fn add(&mut self, o: &VStats) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.entries += o.entries;
        self.bytes += o.bytes;
        self.evictions += o.evictions;
        self.expired += o.expired;
        self.saved = self.saved.saturating_add(o.saved);
        self.index_bytes += o.index_bytes;
        self.approximate += o.approximate;
        self.building += o.building;
    }

    /// The semantic fields of CACHE.STATS, after the exact cache's.
    pub fn reply_fields(&self) -> Vec<(&'static str, Value)> {
        let rate = hit_rate(self.hits, self.misses);
        vec![
            ("semantic_entries", count(self.entries)),
            ("semantic_dimension", count(u64::from(self.dimension))),
            ("semantic_hits", count(self.hits)),
            ("semantic_misses", count(self.misses)),
            ("semantic_hit_rate", rate),
            ("semantic_saved", Value::Money(self.saved as i128)),
            ("semantic_bytes", count(self.bytes)),
            ("semantic_evictions", count(self.evictions)),
            ("semantic_expired", count(self.expired)),
            ("semantic_index_bytes", count(self.index_bytes)),
            ("semantic_approximate", count(self.approximate)),
            ("semantic_building", count(self.building)),
        ]
    }
}

struct Space {
    config: VConfigV2,
    index: Option<VectorIndex>,
    entries: HashMap<EntryId, Meta>,
    by_key: HashMap<KeyDigest, EntryId>,
    lru: BTreeMap<u64, EntryId>,
    stats: VStats,
}

impl Space {
    fn new(config: VConfigV2) -> Space {
        Space {
            config,
            index: None,
            entries: HashMap::new(),
            by_key: HashMap::new(),
            lru: BTreeMap::new(),
            stats: VStats::default(),
        }
    }
}

#[derive(Default)]
struct Spaces {
    spaces: HashMap<String, Space>,
    expiry: BTreeSet<(u64, String, EntryId)>,
    tick: u64,
    next_id: EntryId,
    /// Entries from which a namespace's index is approximate (HNSW).
    approx_from: usize,
    /// While the cache is loaded at start: no index builds until the end.
    loading: bool,
}

impl Spaces {
    fn space(&mut self, ns: &str) -> &mut Space {
        self.spaces
            .entry(ns.to_string())
            .or_insert_with(|| Space::new(default_config()))
    }

    fn forget(&mut self, ns: &str, id: EntryId) -> Option<Meta> {
        let space = self.spaces.get_mut(ns)?;
        let m = space.entries.remove(&id)?;
        space.lru.remove(&m.tick);
        if let Some(k) = m.key {
            if space.by_key.get(&k) == Some(&id) {
                space.by_key.remove(&k);
            }
        }
        if let Some(ix) = space.index.as_mut() {
            ix.remove(id);
        }
        space.stats.entries -= 1;
        space.stats.bytes -= m.size;
        if m.expires_at > 0 {
            self.expiry.remove(&(m.expires_at, ns.to_string(), id));
        }
        Some(m)
    }

    fn remember(&mut self, ns: &str, id: EntryId, unit: &[f32], meta: Meta) {
        self.next_id = self.next_id.max(id + 1);
        let (approx_from, loading) = (self.approx_from, self.loading);
        let space = self.space(ns);
        space
            .index
            .get_or_insert_with(|| {
                let mut ix = VectorIndex::new(unit.len(), approx_from);
                ix.allow_builds(!loading);
                ix
            })
            .insert(id, unit);
        space.entries.insert(id, meta);
        space.lru.insert(meta.tick, id);
        if let Some(k) = meta.key {
            space.by_key.insert(k, id);
        }
        space.stats.entries += 1;
        space.stats.bytes += meta.size;
        if meta.expires_at > 0 {
            self.expiry.insert((meta.expires_at, ns.to_string(), id));
        }
    }

    /// Lets every namespace's index take in a finished background build.
    fn refresh_indexes(&mut self) {
        for ix in self.spaces.values_mut().filter_map(|s| s.index.as_mut()) {
            ix.refresh();
        }
    }

    fn touch(&mut self, ns: &str, id: EntryId) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(space) = self.spaces.get_mut(ns) {
            if let Some(m) = space.entries.get_mut(&id) {
                space.lru.remove(&m.tick);
                m.tick = tick;
                space.lru.insert(tick, id);
            }
        }
    }
}

fn default_config() -> VConfigV2 {
    VConfigV2 {
        dimension: 0,
        threshold: DEFAULT_THRESHOLD,
        ef: 0,
    }
}

fn tree_key(ns: &str, id: EntryId) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.len() + 9);
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn key_digest(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

/// What a VGET found.
#[derive(Debug, PartialEq)]
pub struct VHit {
    pub id: EntryId,
    pub score: f32,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub cost: u64,
}

/// A threshold as a client gives it: a cosine similarity in [-1, 1].
pub fn check_threshold(t: f32) -> Result<f32, String> {
    if !(-1.0..=1.0).contains(&t) {
        return Err("THRESHOLD must be a cosine similarity between -1 and 1".into());
    }
    Ok(t)
}

/// A search's ef as a client gives it: 1 to [`MAX_EF_SEARCH`].
pub fn check_ef(ef: u64) -> Result<usize, String> {
    match usize::try_from(ef) {
        Ok(ef) if (1..=MAX_EF_SEARCH).contains(&ef) => Ok(ef),
        _ => Err(format!("EF must be from 1 to {MAX_EF_SEARCH}")),
    }
}

pub struct SemanticCache {
    tree: sled::Tree,
    config_tree: sled::Tree,
    limits: CacheLimits,
    inner: Mutex<Spaces>,
}

impl SemanticCache {
    /// Opens the trees and rebuilds every namespace's index, dropping
    /// entries that expired while the server was down.
    pub fn open(db: &sled::Db, limits: CacheLimits, now: u64) -> Result<SemanticCache, StoreError> {
        let tree = db.open_tree("vcache-v1")?;
        let config_tree = open_config_v2(db)?;
        let mut inner = Spaces {
            approx_from: limits.semantic_approx_from,
            loading: true,
            ..Spaces::default()
        };
        for kv in config_tree.iter() {
            let (k, v) = kv?;
            if let (Ok(ns), Ok(c)) = (std::str::from_utf8(&k), frame::decode::<VConfigV2>(&v)) {
                inner.spaces.insert(ns.to_string(), Space::new(c));
            }
        }
        let mut dead = Vec::new();
        for kv in tree.iter() {
            let (k, v) = kv?;
            let parsed = k
                .iter()
                .position(|&b| b == 0)
                .filter(|&split| k.len() == split + 9)
                .and_then(|split| {
                    let ns = std::str::from_utf8(&k[..split]).ok()?;
                    let id = u64::from_be_bytes(k[split + 1..].try_into().ok()?);
                    Some((ns.to_string(), id))
                });
            let Some((ns, id)) = parsed else {
                dead.push(k);
                continue;
            };
            let dim = inner
                .spaces
                .get(&ns)
                .map_or(0, |s| s.config.dimension as usize);
            match frame::decode::<VEntryV1>(&v) {
                Ok(e)
                    if (e.expires_at == 0 || e.expires_at > now)
                        && e.vector.len() == dim
                        && dim > 0 =>
                {
                    inner.tick += 1;
                    let meta = Meta {
                        size: entry_size(&e),
                        expires_at: e.expires_at,
                        tick: inner.tick,
                        key: e.key.as_deref().map(key_digest),
                    };
                    inner.remember(&ns, id, &e.vector, meta);
                }
                // Expired, damaged, or of no known namespace: a cache may drop it.
                _ => dead.push(k),
            }
        }
        for k in dead {
            tree.remove(k)?;
        }
        // The large namespaces' HNSW graphs are built now, in the background;
        // the exact index answers until each is ready.
        inner.loading = false;
        for space in inner.spaces.values_mut() {
            if let Some(ix) = space.index.as_mut() {
                ix.allow_builds(true);
            }
        }
        Ok(SemanticCache {
            tree,
            config_tree,
            limits,
            inner: Mutex::new(inner),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Spaces> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save_config(&self, ns: &str, c: VConfigV2) -> Result<(), String> {
        self.config_tree
            .insert(ns.as_bytes(), frame::encode(&c))
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Stores `value` under `vector`; returns the entry's id.
    #[allow(clippy::too_many_arguments)]
    pub fn set(
        &self,
        ns: &str,
        vector: &[f32],
        value: &[u8],
        ttl_ms: Option<u64>,
        cost: u64,
        key: Option<&[u8]>,
        now: u64,
    ) -> Result<EntryId, String> {
        if value.len() > self.limits.max_value {
            return Err(format!(
                "value of {} bytes is over the {}-byte limit",
                value.len(),
                self.limits.max_value
            ));
        }
        if key.is_some_and(|k| k.len() > MAX_KEY) {
            return Err(format!("KEY must be at most {MAX_KEY} bytes"));
        }
        let expires_at = match ttl_ms {
            Some(0) => return Err("TTL must be at least 1 ms".into()),
            Some(t) => now.saturating_add(t),
            None => 0,
        };
        let unit = normalised(vector)?;
        let entry = VEntryV1 {
            expires_at,
            cost,
            key: key.map(<[u8]>::to_vec),
            value: value.to_vec(),
            vector: unit,
        };
        let size = entry_size(&entry);
        if size > self.limits.max_bytes {
            return Err(format!(
                "entry of {size} bytes is over the namespace bound of {} bytes",
                self.limits.max_bytes
            ));
        }
        let mut inner = self.inner();
        let space = inner.space(ns);
        let dim = space.config.dimension as usize;
        if dim == 0 {
            space.config.dimension = vector.len() as u32;
            let c = space.config;
            self.save_config(ns, c)?;
        } else if dim != vector.len() {
            return Err(format!(
                "vector has {} dimensions; namespace {ns} has {dim}",
                vector.len()
            ));
        }
        let digest = key.map(key_digest);
        let replaced = digest.and_then(|d| space.by_key.get(&d).copied());
        let id = inner.next_id;
        self.tree
            .insert(tree_key(ns, id), frame::encode(&entry))
            .map_err(|e| e.to_string())?;
        if let Some(old) = replaced {
            inner.forget(ns, old);
            self.tree
                .remove(tree_key(ns, old))
                .map_err(|e| e.to_string())?;
        }
        inner.tick += 1;
        let meta = Meta {
            size,
            expires_at,
            tick: inner.tick,
            key: digest,
        };
        inner.remember(ns, id, &entry.vector, meta);
        // Evict the least recently used until the namespace fits again.
        loop {
            let space = inner.spaces.get_mut(ns).expect("just remembered");
            if space.stats.bytes <= self.limits.max_bytes {
                break;
            }
            let Some(victim) = space.lru.values().next().copied() else {
                break;
            };
            inner.forget(ns, victim);
            inner.spaces.get_mut(ns).expect("exists").stats.evictions += 1;
            self.tree
                .remove(tree_key(ns, victim))
                .map_err(|e| e.to_string())?;
        }
        Ok(id)
    }

    /// The nearest live entry to `vector` whose similarity reaches the
    /// threshold (the request's, else the namespace's), or None. An HNSW
    /// search keeps `ef` candidates (the request's, else the namespace's).
    /// A request's threshold and ef are checked as `configure` checks them.
    pub fn get(
        &self,
        ns: &str,
        vector: &[f32],
        threshold: Option<f32>,
        ef: Option<u64>,
        now: u64,
    ) -> Result<Option<VHit>, String> {
        let threshold = threshold.map(check_threshold).transpose()?;
        let ef = ef.map(check_ef).transpose()?;
        let unit = normalised(vector)?;
        let mut inner = self.inner();
        let Some(space) = inner.spaces.get_mut(ns) else {
            inner.space(ns).stats.misses += 1;
            return Ok(None);
        };
        let dim = space.config.dimension as usize;
        if dim != 0 && dim != vector.len() {
            return Err(format!(
                "vector has {} dimensions; namespace {ns} has {dim}",
                vector.len()
            ));
        }
        let threshold = threshold.unwrap_or(space.config.threshold);
        let ef = ef.unwrap_or(space.config.ef_search());
        let Space { index, entries, .. } = space;
        let nearest = index.as_mut().and_then(|ix| {
            ix.nearest(&unit, ef, |id| {
                entries
                    .get(&id)
                    .is_some_and(|m| m.expires_at == 0 || m.expires_at > now)
            })
        });
        let Some(hit) = nearest.filter(|n| n.score >= threshold) else {
            space.stats.misses += 1;
            return Ok(None);
        };
        let raw = self
            .tree
            .get(tree_key(ns, hit.id))
            .map_err(|e| e.to_string())?;
        let Some(Ok(e)) = raw.map(|v| frame::decode::<VEntryV1>(&v)) else {
            // Damaged on disk: drop it; this lookup is a miss.
            inner.forget(ns, hit.id);
            inner.space(ns).stats.misses += 1;
            return Ok(None);
        };
        inner.touch(ns, hit.id);
        let space = inner.space(ns);
        space.stats.hits += 1;
        space.stats.saved = space.stats.saved.saturating_add(e.cost);
        Ok(Some(VHit {
            id: hit.id,
            score: hit.score,
            key: e.key,
            value: e.value,
            cost: e.cost,
        }))
    }

    pub fn del(&self, ns: &str, id: EntryId) -> Result<bool, String> {
        let mut inner = self.inner();
        let known = inner.forget(ns, id).is_some();
        self.tree
            .remove(tree_key(ns, id))
            .map_err(|e| e.to_string())?;
        Ok(known)
    }

    /// Sets the namespace's default threshold, its search's ef, or both
    /// (each checked first: nothing changes unless both are good).
    pub fn configure(
        &self,
        ns: &str,
        threshold: Option<f32>,
        ef: Option<u64>,
    ) -> Result<(), String> {
        let threshold = threshold.map(check_threshold).transpose()?;
        let ef = ef.map(check_ef).transpose()?;
        let mut inner = self.inner();
        let space = inner.space(ns);
        if let Some(t) = threshold {
            space.config.threshold = t;
        }
        if let Some(ef) = ef {
            space.config.ef = ef as u32;
        }
        let c = space.config;
        self.save_config(ns, c)
    }

    /// The namespace's settings (the defaults for one never configured).
    pub fn config(&self, ns: &str) -> VConfigV2 {
        self.inner()
            .spaces
            .get(ns)
            .map_or(default_config(), |s| s.config)
    }

    /// Statistics of the namespaces `pick` chooses, summed; `dimension` is
    /// set when exactly one namespace was picked.
    pub fn stats_where(&self, pick: impl Fn(&str) -> bool) -> VStats {
        let mut inner = self.inner();
        inner.refresh_indexes();
        let mut total = VStats::default();
        let mut picked = 0;
        for (name, space) in &inner.spaces {
            if !pick(name) {
                continue;
            }
            picked += 1;
            let mut s = space.stats.clone();
            s.index_bytes = space
                .index
                .as_ref()
                .map_or(0, |ix| ix.memory_bytes() as u64);
            s.approximate = u64::from(
                space
                    .index
                    .as_ref()
                    .is_some_and(VectorIndex::is_approximate),
            );
            total.add(&s);
            total.dimension = space.config.dimension;
        }
        if picked != 1 {
            total.dimension = 0;
        }
        total
    }

    /// Deletes entries expired by `now`; returns how many. Also adopts the
    /// index builds that finished.
    pub fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        let due: Vec<(u64, String, EntryId)> = {
            let mut inner = self.inner();
            inner.refresh_indexes();
            inner
                .expiry
                .iter()
                .take_while(|(t, _, _)| *t <= now)
                .cloned()
                .collect()
        };
        for (_, ns, id) in &due {
            let mut inner = self.inner();
            if inner.forget(ns, *id).is_some() {
                inner.space(ns).stats.expired += 1;
                self.tree.remove(tree_key(ns, *id))?;
            }
        }
        Ok(due.len())
    }
}

/// The settings tree, after converting a `vcache-config-v1` tree into it
/// (a namespace already in v2 keeps its v2 settings, so a conversion cut
/// short by a crash finishes on the next start).
fn open_config_v2(db: &sled::Db) -> Result<sled::Tree, StoreError> {
    let v2 = db.open_tree("vcache-config-v2")?;
    const V1: &[u8] = b"vcache-config-v1";
    if db.tree_names().iter().any(|n| n.as_ref() == V1) {
        let v1 = db.open_tree(V1)?;
        for kv in v1.iter() {
            let (k, v) = kv?;
            if let Ok(c) = frame::decode::<VConfigV1>(&v) {
                if !v2.contains_key(&k)? {
                    v2.insert(k, frame::encode(&VConfigV2::from(c)))?;
                }
            }
        }
        v2.flush()?;
        db.drop_tree(V1)?;
    }
    Ok(v2)
}

/// What an entry counts against its namespace's byte bound.
fn entry_size(e: &VEntryV1) -> u64 {
    (e.vector.len() * 4 + e.value.len() + e.key.as_ref().map_or(0, Vec::len)) as u64
}

/// Parses an FP32 blob (little-endian float32s, as Redis's VADD takes).
pub fn fp32_blob(blob: &[u8]) -> Result<Vec<f32>, String> {
    if blob.is_empty() || !blob.len().is_multiple_of(4) {
        return Err("FP32 takes a blob of little-endian float32s (a multiple of 4 bytes)".into());
    }
    let v: Vec<f32> = blob
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    check_dimension(v.len())?;
    Ok(v)
}

pub fn check_dimension(n: usize) -> Result<(), String> {
    if n == 0 || n > MAX_DIMENSION {
        return Err(format!(
            "a vector must have 1 to {MAX_DIMENSION} dimensions"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(limits: CacheLimits) -> (tempfile::TempDir, sled::Db, SemanticCache) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_sled(&sled::Config::new().path(dir.path())).unwrap();
        let c = SemanticCache::open(&db, limits, 0).unwrap();
        (dir, db, c)
    }

    #[test]
    fn near_hits_misses_and_the_dimension() {
        let (_d, _db, c) = cache(CacheLimits::default());
        let a = c
            .set("ns", &[1.0, 0.0, 0.0], b"east", None, 5, Some(b"k1"), 0)
            .unwrap();
        c.set("ns", &[0.0, 1.0, 0.0], b"north", None, 0, None, 0)
            .unwrap();
        let hit = c
            .get("ns", &[0.95, 0.05, 0.0], None, None, 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            (hit.id, hit.value.as_slice(), hit.cost),
            (a, &b"east"[..], 5)
        );
        assert_eq!(hit.key.as_deref(), Some(&b"k1"[..]));
        assert!(
            c.get("ns", &[0.7, 0.7, 0.1], None, None, 0)
                .unwrap()
                .is_none(),
            "0.70 < 0.9"
        );
        // Equally near both: the older entry (east, COST 5) answers.
        let tie = c
            .get("ns", &[0.7, 0.7, 0.1], Some(0.7), None, 0)
            .unwrap()
            .unwrap();
        assert_eq!(tie.id, a);
        assert!(c.set("ns", &[1.0, 0.0], b"x", None, 0, None, 0).is_err());
        assert!(c.get("ns", &[1.0, 0.0], None, None, 0).is_err());
        let s = c.stats_where(|n| n == "ns");
        assert_eq!(
            (s.hits, s.misses, s.entries, s.saved, s.dimension),
            (2, 1, 2, 10, 3)
        );
        // The same KEY replaces the entry.
        let b = c
            .set("ns", &[1.0, 0.1, 0.0], b"east2", None, 0, Some(b"k1"), 0)
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(c.stats_where(|n| n == "ns").entries, 2);
        assert!(!c.del("ns", a).unwrap());
        assert!(c.del("ns", b).unwrap());
    }

    #[test]
    fn expiry_eviction_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let entry = 3 * 4 + 10;
        let limits = CacheLimits {
            max_bytes: entry * 2,
            max_value: 100,
            ..CacheLimits::default()
        };
        {
            let db = crate::store::open_sled(&sled::Config::new().path(dir.path())).unwrap();
            let c = SemanticCache::open(&db, limits, 0).unwrap();
            c.set("s", &[1.0, 0.0, 0.0], &[1; 10], Some(100), 0, None, 1_000)
                .unwrap();
            assert!(c
                .get("s", &[1.0, 0.0, 0.0], None, None, 1_099)
                .unwrap()
                .is_some());
            assert!(c
                .get("s", &[1.0, 0.0, 0.0], None, None, 1_100)
                .unwrap()
                .is_none());
            assert_eq!(c.sweep(1_100).unwrap(), 1);
            let x = c
                .set("s", &[1.0, 0.0, 0.0], &[2; 10], None, 0, None, 0)
                .unwrap();
            c.set("s", &[0.0, 1.0, 0.0], &[3; 10], None, 0, None, 0)
                .unwrap();
            c.get("s", &[1.0, 0.0, 0.0], None, None, 0)
                .unwrap()
                .unwrap(); // x is the newest now
            c.set("s", &[0.0, 0.0, 1.0], &[4; 10], None, 0, None, 0)
                .unwrap();
            let s = c.stats_where(|n| n == "s");
            assert_eq!((s.entries, s.evictions), (2, 1));
            assert!(c
                .get("s", &[0.0, 1.0, 0.0], Some(0.99), None, 0)
                .unwrap()
                .is_none());
            assert_eq!(
                c.get("s", &[1.0, 0.0, 0.0], None, None, 0)
                    .unwrap()
                    .unwrap()
                    .id,
                x
            );
            c.configure("s", Some(0.5), None).unwrap();
            // A bad ef changes nothing, the threshold beside it included.
            assert!(c.configure("s", Some(0.7), Some(0)).is_err());
            assert!(c
                .configure("s", None, Some(MAX_EF_SEARCH as u64 + 1))
                .is_err());
            assert_eq!(c.config("s").threshold, 0.5);
            assert_eq!(c.config("s").ef_search(), DEFAULT_EF_SEARCH);
            c.configure("s", None, Some(40)).unwrap();
            db.flush().unwrap();
        }
        let db = crate::store::open_sled(&sled::Config::new().path(dir.path())).unwrap();
        let c = SemanticCache::open(&db, limits, 0).unwrap();
        assert_eq!(c.stats_where(|n| n == "s").entries, 2);
        assert_eq!(
            c.config("s"),
            VConfigV2 {
                dimension: 3,
                threshold: 0.5,
                ef: 40
            }
        );
        let hit = c
            .get("s", &[0.0, 0.6, 0.8], None, None, 0)
            .unwrap()
            .unwrap();
        assert_eq!(hit.value, vec![4; 10]);
        // New ids never reuse an old one.
        let y = c
            .set("s", &[0.5, 0.5, 0.0], &[5; 10], None, 0, None, 0)
            .unwrap();
        assert!(y > hit.id);
    }

    #[test]
    fn a_namespace_is_searched_exactly_until_approx_from() {
        let limits = CacheLimits {
            semantic_approx_from: 30,
            ..CacheLimits::default()
        };
        let (_d, _db, c) = cache(limits);
        let built = |c: &SemanticCache| {
            let mut inner = c.inner();
            inner
                .spaces
                .get_mut("n")
                .unwrap()
                .index
                .as_mut()
                .unwrap()
                .wait_for_build();
            drop(inner);
            c.stats_where(|n| n == "n").approximate
        };
        for i in 0..40 {
            let x = i as f32;
            c.set("n", &[x.sin(), x.cos(), 0.5], b"v", None, 0, None, 0)
                .unwrap();
            if i == 20 {
                assert_eq!(built(&c), 0, "exact below 30 entries");
            }
        }
        assert_eq!(built(&c), 1, "a graph from 30 entries");
    }

    #[test]
    fn settings_written_before_ef_are_converted() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_sled(&sled::Config::new().path(dir.path())).unwrap();
        let v1 = db.open_tree("vcache-config-v1").unwrap();
        for (ns, t) in [("old", 0.8), ("both", 0.7)] {
            let c = VConfigV1 {
                dimension: 2,
                threshold: t,
            };
            v1.insert(ns, frame::encode(&c)).unwrap();
        }
        // A conversion cut short: "both" reached v2 (with an ef) already.
        let done = VConfigV2 {
            dimension: 2,
            threshold: 0.7,
            ef: 12,
        };
        db.open_tree("vcache-config-v2")
            .unwrap()
            .insert("both", frame::encode(&done))
            .unwrap();
        drop(v1);
        let c = SemanticCache::open(&db, CacheLimits::default(), 0).unwrap();
        assert_eq!(
            c.config("old"),
            VConfigV2 {
                dimension: 2,
                threshold: 0.8,
                ef: 0
            }
        );
        assert_eq!(c.config("old").ef_search(), DEFAULT_EF_SEARCH);
        assert_eq!(c.config("both"), done);
        assert!(!db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == b"vcache-config-v1"));
        // The entries of a converted namespace are read with its dimension.
        c.set("old", &[0.0, 1.0], b"v", None, 0, None, 0).unwrap();
        drop(c);
        let c = SemanticCache::open(&db, CacheLimits::default(), 0).unwrap();
        assert_eq!(c.stats_where(|n| n == "old").entries, 1);
    }

    #[test]
    fn blobs_and_bounds() {
        let blob: Vec<u8> = [1.0f32, -2.5]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        assert_eq!(fp32_blob(&blob).unwrap(), vec![1.0, -2.5]);
        assert!(fp32_blob(&blob[..7]).is_err());
        assert!(fp32_blob(&[]).is_err());
        assert!(check_threshold(1.5).is_err());
        assert_eq!(check_ef(1), Ok(1));
        assert_eq!(check_ef(MAX_EF_SEARCH as u64), Ok(MAX_EF_SEARCH));
        assert!(check_ef(0).is_err());
        assert!(check_ef(MAX_EF_SEARCH as u64 + 1).is_err());
        assert!(check_dimension(MAX_DIMENSION + 1).is_err());
    }
}
