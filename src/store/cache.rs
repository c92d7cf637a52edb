//! The exact-response cache (CACHE.SET / GET / DEL / STATS), persisted in
//! sled's `cache` tree.
//!
//! - Keys are content-addressed: `<namespace> 0x00 <SHA-256 of the key>`, so a
//!   whole prompt can be the key and every stored key is 32 bytes.
//! - Records are CRC-framed `{expires_at, cost, value}`; an entry is never
//!   served at or after `expires_at` (checked on every GET), and expired
//!   entries are deleted by `sweep`, which the server runs every second.
//! - Each namespace is bounded in bytes (keys + values); past the bound the
//!   least recently used entries are evicted. Values have a maximum size.
//! - The index (sizes, expiries, recency) and the statistics live in memory;
//!   the index is rebuilt from the tree at start (recency then follows
//!   insertion order), the statistics start from zero.
//!
//! Savings (a hit with SCOPE books the entry's COST) are not kept here: they
//! are ledger entries, through the engine.
//!
//! The semantic cache (`vcache`) shares the database, the bounds and the
//! sweep; `Cache::semantic` reaches it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::frame;
use super::vcache::SemanticCache;
use super::StoreError;
use crate::state::Value;

#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    /// Bytes (keys + values) per namespace before LRU eviction.
    pub max_bytes: u64,
    /// Largest value accepted.
    pub max_value: usize,
    /// Entries from which a semantic namespace is searched by an HNSW graph
    /// (approximate) instead of exactly.
    pub semantic_approx_from: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_bytes: 64 << 20,
            max_value: 1 << 20,
            semantic_approx_from: 10_000,
        }
    }
}

/// Namespaces are short names: no NUL (it separates them from the digest).
pub const MAX_NAMESPACE: usize = 64;

#[derive(Serialize, Deserialize)]
struct Record {
    /// 0: never.
    expires_at: u64,
    /// Nano-USD a hit saves.
    cost: u64,
    value: Vec<u8>,
}

type Digest = [u8; 32];

#[derive(Clone, Copy)]
struct Meta {
    size: u64,
    expires_at: u64,
    /// Recency: a larger tick was used later.
    tick: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub bytes: u64,
    pub evictions: u64,
    pub expired: u64,
    /// Nano-USD of the entries' COST over all hits (with or without SCOPE).
    pub saved: u64,
}

impl Stats {
    /// The CACHE.STATS reply (and the admin API's `/v1/cache/stats`).
    pub fn reply(&self) -> Value {
        Value::Map(vec![
            ("hits", count(self.hits)),
            ("misses", count(self.misses)),
            ("hit_rate", hit_rate(self.hits, self.misses)),
            ("entries", count(self.entries)),
            ("bytes", count(self.bytes)),
            ("evictions", count(self.evictions)),
            ("expired", count(self.expired)),
            ("saved", Value::Money(self.saved as i128)),
        ])
    }
}

/// A counter as a reply (saturating at i64's maximum).
pub(super) fn count(n: u64) -> Value {
    Value::Int(n.min(i64::MAX as u64) as i64)
}

/// Hits over lookups, 4 decimals ("0" before the first lookup).
pub(super) fn hit_rate(hits: u64, misses: u64) -> Value {
    let lookups = hits + misses;
    Value::Str(if lookups == 0 {
        "0".to_string()
    } else {
        format!("{:.4}", hits as f64 / lookups as f64)
    })
}

#[derive(Default)]
struct Namespace {
    entries: HashMap<Digest, Meta>,
    lru: BTreeMap<u64, Digest>,
    stats: Stats,
}

#[derive(Default)]
struct Index {
    spaces: HashMap<String, Namespace>,
    expiry: BTreeSet<(u64, String, Digest)>,
    tick: u64,
}

pub struct Cache {
    db: sled::Db,
    tree: sled::Tree,
    limits: CacheLimits,
    index: Mutex<Index>,
    /// The semantic cache (CACHE.V*), in the same database and bounds.
    semantic: SemanticCache,
}

/// What a GET found.
#[derive(Debug, PartialEq, Eq)]
pub struct Hit {
    pub value: Vec<u8>,
    pub cost: u64,
}

fn digest(key: &[u8]) -> Digest {
    Sha256::digest(key).into()
}

fn tree_key(ns: &str, d: &Digest) -> Vec<u8> {
    let mut k = Vec::with_capacity(ns.len() + 33);
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    k.extend_from_slice(d);
    k
}

/// Checks a namespace as a client names it.
pub fn check_namespace(ns: &str) -> Result<(), String> {
    if ns.is_empty()
        || ns.len() > MAX_NAMESPACE
        || ns.bytes().any(|b| b == 0 || b.is_ascii_whitespace())
    {
        return Err(format!(
            "namespace must be 1 to {MAX_NAMESPACE} bytes without spaces or NUL"
        ));
    }
    Ok(())
}

/// A namespace as stored: a client's, possibly qualified with a tenant key
/// (`{org:acme}answers`, see `state::access`), so longer than a client may
/// name one.
pub const MAX_STORED_NAMESPACE: usize = 1024;

fn check_stored_namespace(ns: &str) -> Result<(), String> {
    if ns.is_empty() || ns.len() > MAX_STORED_NAMESPACE || ns.bytes().any(|b| b == 0) {
        return Err(format!(
            "namespace must be 1 to {MAX_STORED_NAMESPACE} bytes without NUL"
        ));
    }
    Ok(())
}

impl Index {
    fn forget(&mut self, ns: &str, d: &Digest) -> Option<Meta> {
        let space = self.spaces.get_mut(ns)?;
        let m = space.entries.remove(d)?;
        space.lru.remove(&m.tick);
        space.stats.entries -= 1;
        space.stats.bytes -= m.size;
        if m.expires_at > 0 {
            self.expiry.remove(&(m.expires_at, ns.to_string(), *d));
        }
        Some(m)
    }

    fn remember(&mut self, ns: &str, d: Digest, size: u64, expires_at: u64) {
        self.tick += 1;
        let tick = self.tick;
        let space = self.spaces.entry(ns.to_string()).or_default();
        space.entries.insert(
            d,
            Meta {
                size,
                expires_at,
                tick,
            },
        );
        space.lru.insert(tick, d);
        space.stats.entries += 1;
        space.stats.bytes += size;
        if expires_at > 0 {
            self.expiry.insert((expires_at, ns.to_string(), d));
        }
    }
}

impl Cache {
    /// Opens the cache in `db` and rebuilds its index, dropping entries that
    /// expired while the server was down.
    pub fn open(db: sled::Db, limits: CacheLimits, now: u64) -> Result<Cache, StoreError> {
        let tree = db.open_tree("cache")?;
        let mut index = Index::default();
        let mut dead = Vec::new();
        for kv in tree.iter() {
            let (k, v) = kv?;
            let Some(split) = k.iter().position(|&b| b == 0) else {
                dead.push(k);
                continue;
            };
            let (ns, d) = (&k[..split], &k[split + 1..]);
            let (Ok(ns), Ok(d)) = (std::str::from_utf8(ns), Digest::try_from(d)) else {
                dead.push(k);
                continue;
            };
            match frame::decode::<Record>(&v) {
                Ok(r) if r.expires_at == 0 || r.expires_at > now => {
                    index.remember(ns, d, (k.len() + r.value.len()) as u64, r.expires_at);
                }
                // Expired, or a damaged record: a cache may drop it.
                _ => dead.push(k),
            }
        }
        for k in dead {
            tree.remove(k)?;
        }
        let semantic = SemanticCache::open(&db, limits, now)?;
        Ok(Cache {
            db,
            tree,
            limits,
            index: Mutex::new(index),
            semantic,
        })
    }

    /// The semantic cache (CACHE.VSET / VGET / VDEL / VCONFIG).
    pub fn semantic(&self) -> &SemanticCache {
        &self.semantic
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `value` under `key`; evicts the namespace's least recently
    /// used entries past its bound.
    pub fn set(
        &self,
        ns: &str,
        key: &[u8],
        value: &[u8],
        ttl_ms: Option<u64>,
        cost: u64,
        now: u64,
    ) -> Result<(), String> {
        check_stored_namespace(ns)?;
        if value.len() > self.limits.max_value {
            return Err(format!(
                "value of {} bytes is over the {}-byte limit",
                value.len(),
                self.limits.max_value
            ));
        }
        let d = digest(key);
        let k = tree_key(ns, &d);
        let size = (k.len() + value.len()) as u64;
        if size > self.limits.max_bytes {
            return Err(format!(
                "entry of {size} bytes is over the namespace bound of {} bytes",
                self.limits.max_bytes
            ));
        }
        let expires_at = match ttl_ms {
            Some(0) => return Err("TTL must be at least 1 ms".into()),
            Some(t) => now.saturating_add(t),
            None => 0,
        };
        let rec = frame::encode(&Record {
            expires_at,
            cost,
            value: value.to_vec(),
        });
        let mut index = self.index();
        self.tree.insert(&k, rec).map_err(|e| e.to_string())?;
        index.forget(ns, &d);
        index.remember(ns, d, size, expires_at);
        // Evict the least recently used until the namespace fits again.
        loop {
            let space = index.spaces.get_mut(ns).expect("just remembered");
            if space.stats.bytes <= self.limits.max_bytes {
                break;
            }
            let Some((_, victim)) = space.lru.iter().next().map(|(t, d)| (*t, *d)) else {
                break;
            };
            index.forget(ns, &victim);
            let space = index.spaces.get_mut(ns).expect("exists");
            space.stats.evictions += 1;
            self.tree
                .remove(tree_key(ns, &victim))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The entry under `key`, unless missing or expired at `now`.
    pub fn get(&self, ns: &str, key: &[u8], now: u64) -> Result<Option<Hit>, String> {
        check_stored_namespace(ns)?;
        let d = digest(key);
        let mut index = self.index();
        let Some(meta) = index
            .spaces
            .get(ns)
            .and_then(|s| s.entries.get(&d))
            .copied()
        else {
            index.spaces.entry(ns.to_string()).or_default().stats.misses += 1;
            return Ok(None);
        };
        if meta.expires_at > 0 && meta.expires_at <= now {
            // Never served at or after its expiry.
            index.forget(ns, &d);
            let space = index.spaces.get_mut(ns).expect("exists");
            space.stats.misses += 1;
            space.stats.expired += 1;
            drop(index);
            self.tree
                .remove(tree_key(ns, &d))
                .map_err(|e| e.to_string())?;
            return Ok(None);
        }
        let raw = self.tree.get(tree_key(ns, &d)).map_err(|e| e.to_string())?;
        let rec = match raw.map(|v| frame::decode::<Record>(&v)) {
            Some(Ok(r)) => r,
            _ => {
                index.forget(ns, &d);
                index.spaces.get_mut(ns).expect("exists").stats.misses += 1;
                return Ok(None);
            }
        };
        // Most recently used now.
        index.tick += 1;
        let tick = index.tick;
        let space = index.spaces.get_mut(ns).expect("exists");
        if let Some(m) = space.entries.get_mut(&d) {
            space.lru.remove(&m.tick);
            m.tick = tick;
            space.lru.insert(tick, d);
        }
        space.stats.hits += 1;
        space.stats.saved = space.stats.saved.saturating_add(rec.cost);
        Ok(Some(Hit {
            value: rec.value,
            cost: rec.cost,
        }))
    }

    pub fn del(&self, ns: &str, key: &[u8]) -> Result<bool, String> {
        check_stored_namespace(ns)?;
        let d = digest(key);
        let mut index = self.index();
        let known = index.forget(ns, &d).is_some();
        self.tree
            .remove(tree_key(ns, &d))
            .map_err(|e| e.to_string())?;
        Ok(known)
    }

    /// Statistics of one namespace, or summed over all.
    pub fn stats(&self, ns: Option<&str>) -> Stats {
        self.stats_where(|name| ns.is_none_or(|n| n == name))
    }

    /// CACHE.STATS's reply (and `/v1/cache/stats`): the exact cache's
    /// figures for one namespace or all, then the semantic cache's.
    pub fn stats_reply(&self, ns: Option<&str>) -> Value {
        let v = self.semantic.stats_where(|n| ns.is_none_or(|x| x == n));
        with_semantic(self.stats(ns), v)
    }

    /// The same, summed over a tenant's namespaces.
    pub fn stats_reply_prefixed(&self, prefix: &str) -> Value {
        let v = self.semantic.stats_where(|n| n.starts_with(prefix));
        with_semantic(self.stats_prefixed(prefix), v)
    }

    /// Statistics summed over the namespaces that start with `prefix` (a
    /// tenant's, see `state::access`).
    pub fn stats_prefixed(&self, prefix: &str) -> Stats {
        self.stats_where(|name| name.starts_with(prefix))
    }

    fn stats_where(&self, pick: impl Fn(&str) -> bool) -> Stats {
        let index = self.index();
        let mut total = Stats::default();
        for (name, space) in &index.spaces {
            if !pick(name) {
                continue;
            }
            let s = &space.stats;
            total.hits += s.hits;
            total.misses += s.misses;
            total.entries += s.entries;
            total.bytes += s.bytes;
            total.evictions += s.evictions;
            total.expired += s.expired;
            total.saved = total.saved.saturating_add(s.saved);
        }
        total
    }

    /// Deletes entries (exact and semantic) expired by `now`; returns how many.
    pub fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        Ok(self.sweep_exact(now)? + self.semantic.sweep(now)?)
    }

    fn sweep_exact(&self, now: u64) -> Result<usize, StoreError> {
        let due: Vec<(u64, String, Digest)> = {
            let index = self.index();
            index
                .expiry
                .iter()
                .take_while(|(t, _, _)| *t <= now)
                .cloned()
                .collect()
        };
        for (_, ns, d) in &due {
            let mut index = self.index();
            if index.forget(ns, d).is_some() {
                index.spaces.get_mut(ns).expect("exists").stats.expired += 1;
                self.tree.remove(tree_key(ns, d))?;
            }
        }
        Ok(due.len())
    }

    /// Writes the cache to disk (sled's flush; a cache needs no fsync).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

fn with_semantic(exact: Stats, semantic: super::vcache::VStats) -> Value {
    let Value::Map(mut fields) = exact.reply() else {
        unreachable!("Stats::reply is a map")
    };
    fields.extend(semantic.reply_fields());
    Value::Map(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(limits: CacheLimits) -> (tempfile::TempDir, Cache) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_sled(&sled::Config::new().path(dir.path())).unwrap();
        (dir, Cache::open(db, limits, 0).unwrap())
    }

    #[test]
    fn an_entry_expires_exactly_at_its_ttl() {
        let (_d, c) = cache(CacheLimits::default());
        c.set("ns", b"k", b"v", Some(100), 0, 1_000).unwrap();
        assert!(c.get("ns", b"k", 1_099).unwrap().is_some());
        assert_eq!(c.get("ns", b"k", 1_100).unwrap(), None);
        assert_eq!(c.stats(Some("ns")).expired, 1);
        // Swept in the background when nobody asks.
        c.set("ns", b"k2", b"v", Some(10), 0, 2_000).unwrap();
        assert_eq!(c.sweep(2_009).unwrap(), 0);
        assert_eq!(c.sweep(2_010).unwrap(), 1);
        assert_eq!(c.stats(Some("ns")).entries, 0);
    }

    #[test]
    fn the_least_recently_used_go_first_past_the_bound() {
        let entry = (5 + 1 + 32 + 100) as u64; // "space", NUL, digest, value
        let (_d, c) = cache(CacheLimits {
            max_bytes: entry * 3,
            max_value: 1000,
            ..CacheLimits::default()
        });
        for k in [b"a", b"b", b"c"] {
            c.set("space", k, &[7; 100], None, 0, 0).unwrap();
        }
        c.get("space", b"a", 0).unwrap().unwrap(); // a is now the newest
        c.set("space", b"d", &[7; 100], None, 0, 0).unwrap();
        assert!(c.get("space", b"b", 0).unwrap().is_none(), "b was the LRU");
        for k in [b"a", b"c", b"d"] {
            assert!(c.get("space", k, 0).unwrap().is_some());
        }
        let s = c.stats(Some("space"));
        assert_eq!((s.entries, s.bytes, s.evictions), (3, entry * 3, 1));
        assert!(c.set("space", b"big", &[0; 1001], None, 0, 0).is_err());
    }
}
