//! The global store cluster mode runs on, as a trait: the few etcd v3
//! operations the escrow protocol needs (get, prefix range, a transaction of
//! revision compares and puts, leases), so the protocol runs unchanged
//! against etcd and against [`MemStore`], the in-memory linearizable store
//! the simulation uses.
//!
//! Revisions are etcd's: one global counter, bumped by every successful
//! write transaction; a key's `mod_rev` is the revision that last wrote it,
//! and 0 stands for "absent" in a compare. Keys attached to a lease vanish
//! when it expires (etcd deletes them; `MemStore` when its clock passes the
//! expiry).

use std::collections::BTreeMap;

pub type Rev = u64;
pub type LeaseId = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_rev: Rev,
    pub lease: Option<LeaseId>,
}

/// A transaction's guard (etcd's `Compare`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key was last written at this revision (0: the key is absent).
    ModRev(String, Rev),
}

/// A transaction's write (etcd's `RequestOp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete(String),
}

/// Why the store did not answer. The request may or may not have been
/// applied (a lost reply): callers find out by reading again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("the global store is unreachable: {0}")]
    Unavailable(String),
    #[error("lease {0} is unknown or expired")]
    NoLease(LeaseId),
    #[error("the global store holds a value spendb cannot read: {0}")]
    Corrupt(String),
}

/// The operations cluster mode asks of its store. Blocking: the cluster
/// agent runs them on its own thread, off the engine's path.
pub trait GlobalStore {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, KvError>;
    /// Every key that starts with `prefix`, in key order.
    fn range(&mut self, prefix: &str) -> Result<Vec<KeyValue>, KvError>;
    /// How many keys start with `prefix` (etcd's `count_only` range).
    fn count(&mut self, prefix: &str) -> Result<u64, KvError>;
    /// Applies every op of `then` atomically if every compare holds;
    /// Ok(false) (nothing written) if one does not.
    fn txn(&mut self, when: &[Compare], then: &[Op]) -> Result<bool, KvError>;
    /// A new lease of `ttl_ms`.
    fn lease_grant(&mut self, ttl_ms: u64) -> Result<LeaseId, KvError>;
    /// Extends the lease by its TTL; `NoLease` once it has expired.
    fn lease_keepalive(&mut self, lease: LeaseId) -> Result<(), KvError>;
    /// The store's current revision.
    fn revision(&mut self) -> Result<Rev, KvError>;
}

/// An in-memory linearizable store with etcd's revision and lease rules,
/// on a clock its owner moves (`set_time`): the simulation's etcd.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    now: u64,
    rev: Rev,
    data: BTreeMap<String, KeyValue>,
    /// lease → (ttl, expires at)
    leases: BTreeMap<LeaseId, (u64, u64)>,
    next_lease: LeaseId,
}

impl MemStore {
    pub fn new(now: u64) -> MemStore {
        MemStore {
            now,
            ..MemStore::default()
        }
    }

    /// Moves the clock (never back) and expires the leases it passed,
    /// deleting their keys in one revision.
    pub fn set_time(&mut self, now: u64) {
        self.now = self.now.max(now);
        let expired: Vec<LeaseId> = (self.leases.iter())
            .filter(|(_, (_, at))| *at <= self.now)
            .map(|(l, _)| *l)
            .collect();
        if expired.is_empty() {
            return;
        }
        self.rev += 1;
        for l in expired {
            self.leases.remove(&l);
            self.data.retain(|_, kv| kv.lease != Some(l));
        }
    }

    pub fn now(&self) -> u64 {
        self.now
    }
}

impl GlobalStore for MemStore {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, KvError> {
        Ok(self.data.get(key).cloned())
    }

    fn range(&mut self, prefix: &str) -> Result<Vec<KeyValue>, KvError> {
        Ok(self
            .data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect())
    }

    fn count(&mut self, prefix: &str) -> Result<u64, KvError> {
        Ok(self
            .data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .count() as u64)
    }

    fn txn(&mut self, when: &[Compare], then: &[Op]) -> Result<bool, KvError> {
        let holds = when.iter().all(|c| match c {
            Compare::ModRev(k, rev) => self.data.get(k).map_or(0, |kv| kv.mod_rev) == *rev,
        });
        if !holds {
            return Ok(false);
        }
        for op in then {
            if let Op::Put { lease: Some(l), .. } = op {
                if !self.leases.contains_key(l) {
                    return Err(KvError::NoLease(*l));
                }
            }
        }
        self.rev += 1;
        for op in then {
            match op {
                Op::Put { key, value, lease } => {
                    self.data.insert(
                        key.clone(),
                        KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            mod_rev: self.rev,
                            lease: *lease,
                        },
                    );
                }
                Op::Delete(key) => {
                    self.data.remove(key);
                }
            }
        }
        Ok(true)
    }

    fn lease_grant(&mut self, ttl_ms: u64) -> Result<LeaseId, KvError> {
        self.next_lease += 1;
        self.leases
            .insert(self.next_lease, (ttl_ms, self.now + ttl_ms));
        Ok(self.next_lease)
    }

    fn revision(&mut self) -> Result<Rev, KvError> {
        Ok(self.rev)
    }

    fn lease_keepalive(&mut self, lease: LeaseId) -> Result<(), KvError> {
        let now = self.now;
        match self.leases.get_mut(&lease) {
            Some((ttl, at)) => {
                *at = now + *ttl;
                Ok(())
            }
            None => Err(KvError::NoLease(lease)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str, lease: Option<LeaseId>) -> Op {
        Op::Put {
            key: k.into(),
            value: v.as_bytes().to_vec(),
            lease,
        }
    }

    #[test]
    fn compares_guard_writes_and_revisions_count_transactions() {
        let mut s = MemStore::new(0);
        assert!(s
            .txn(&[Compare::ModRev("a".into(), 0)], &[put("a", "1", None)])
            .unwrap());
        assert_eq!(s.revision(), Ok(1));
        // "a" is no longer absent: the same guarded create fails.
        assert!(!s
            .txn(&[Compare::ModRev("a".into(), 0)], &[put("a", "2", None)])
            .unwrap());
        assert!(s
            .txn(
                &[Compare::ModRev("a".into(), 1)],
                &[put("a", "2", None), put("b", "x", None)]
            )
            .unwrap());
        let a = s.get("a").unwrap().unwrap();
        assert_eq!((a.value, a.mod_rev), (b"2".to_vec(), 2));
        let keys: Vec<String> = s.range("").unwrap().into_iter().map(|kv| kv.key).collect();
        assert_eq!(keys, ["a", "b"]);
    }

    #[test]
    fn keys_of_an_expired_lease_vanish_and_keepalive_extends() {
        let mut s = MemStore::new(1_000);
        let l = s.lease_grant(10_000).unwrap();
        assert!(s.txn(&[], &[put("node/a", "1", Some(l))]).unwrap());
        s.set_time(8_000);
        s.lease_keepalive(l).unwrap();
        s.set_time(17_999);
        assert!(
            s.get("node/a").unwrap().is_some(),
            "kept alive at 8 s: until 18 s"
        );
        s.set_time(18_000);
        assert!(s.get("node/a").unwrap().is_none());
        assert_eq!(s.lease_keepalive(l), Err(KvError::NoLease(l)));
        assert_eq!(
            s.txn(&[], &[put("node/a", "1", Some(l))]),
            Err(KvError::NoLease(l))
        );
        // The clock never goes back.
        s.set_time(5);
        assert_eq!(s.now(), 18_000);
    }
}
