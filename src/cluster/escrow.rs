//! The escrow protocol (docs/CLUSTER.md): how nodes share one limit
//! through the global store without ever letting the total pass it.
//!
//! For each global limit the store keeps a pool `{limit, granted, consumed,
//! presumed}` and, per node, a grant `{epoch, granted, reported, reclaimed}`;
//! a node is alive while its `node/<name>` key (on its lease) exists. A node
//! decides reservations locally against its grant and keeps two rules:
//!
//! - `used ≤ granted` (it never spends room it was not granted), and
//! - `used − reported ≤ u_max` (report-or-stall: it never holds more than
//!   `u_max` of usage the store has not seen).
//!
//! Every store write is a transaction guarded by the revisions it read, so
//! a lost, duplicated or late request changes nothing it should not. When a
//! node's lease expires, any node may reclaim its grant: the pool is charged
//! `presumed = reported + min(u_max, granted − reported)`, an upper bound
//! of what the node can have used (by the two rules), and the rest returns.
//! So at every moment `Σ true use ≤ granted + consumed + presumed ≤ limit`,
//! whatever the clocks, pauses and message delays.
//!
//! This file is the protocol's logic over [`GlobalStore`]; it keeps no
//! clock of its own (the caller passes times to the store it owns).

use serde::{Deserialize, Serialize};

use super::kv::{Compare, GlobalStore, KeyValue, KvError, LeaseId, Op, Rev};

pub(super) const PREFIX: &str = "/spendb/v1/";

/// A limit's name as one key segment: scopes hold `/`, so it is escaped
/// (`%2F`, and `%` as `%25`), and `grant/<limit>/` is a prefix of that
/// limit's grants only.
pub(super) fn segment(limit: &str) -> String {
    limit.replace('%', "%25").replace('/', "%2F")
}

pub(super) fn unsegment(s: &str) -> String {
    s.replace("%2F", "/").replace("%25", "%")
}

pub fn pool_key(limit: &str) -> String {
    format!("{PREFIX}pool/{}", segment(limit))
}
pub fn grant_key(limit: &str, node: &str) -> String {
    format!("{PREFIX}grant/{}/{node}", segment(limit))
}
/// Where a node whose pool ran dry asks the others for their idle room.
fn recall_key(limit: &str) -> String {
    format!("{PREFIX}recall/{}", segment(limit))
}
pub fn node_key(node: &str) -> String {
    format!("{PREFIX}node/{node}")
}
fn epoch_key(node: &str) -> String {
    format!("{PREFIX}epoch/{node}")
}

/// A global limit's pool. `granted` is the sum of the live grants (used
/// and unused room), `consumed` what closed grants used, `presumed` what
/// reclaimed grants are charged. Invariant: `granted + consumed + presumed
/// ≤ limit`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolV1 {
    pub limit: u64,
    pub granted: u64,
    pub consumed: u64,
    pub presumed: u64,
}

impl PoolV1 {
    /// Less than an eighth of the limit left: nodes give back idle room
    /// and answer recalls.
    pub fn is_low(&self) -> bool {
        self.available() < (self.limit / 8).max(1)
    }

    pub fn available(&self) -> u64 {
        self.limit
            .saturating_sub(self.granted)
            .saturating_sub(self.consumed)
            .saturating_sub(self.presumed)
    }
}

/// One node's grant of a limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantV1 {
    /// The node's registration that holds it.
    pub epoch: u64,
    pub granted: u64,
    /// Usage the node has reported (it may report ahead of use).
    pub reported: u64,
    /// Set when the grant was reclaimed: what the pool was charged for it.
    pub presumed: Option<u64>,
    /// The most usage the node holds unreported under this grant, as it
    /// declared it (raised here before the node uses more, lowered there
    /// first): what a reclaim charges beyond `reported`.
    pub u_max: u64,
    /// Of `reported`, what the node's open holds took when it reported
    /// (the cluster's figures split used from held with it). Absent in a
    /// grant written before it was reported: 0.
    #[serde(default)]
    pub held: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeV1 {
    pub epoch: u64,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records encode")
}

/// A record and the revision it was read at; an absent key is the default
/// record at revision 0. A value that is not such a record (written by
/// something else) is an error, never a guess.
pub(super) fn decode<T: for<'a> Deserialize<'a> + Default>(
    kv: &Option<KeyValue>,
) -> Result<(T, Rev), KvError> {
    match kv {
        Some(kv) => serde_json::from_slice(&kv.value)
            .map(|v| (v, kv.mod_rev))
            .map_err(|e| KvError::Corrupt(format!("{}: {e}", kv.key))),
        None => Ok((T::default(), 0)),
    }
}

fn put<T: Serialize>(key: String, v: &T) -> Op {
    Op::Put {
        key,
        value: encode(v),
        lease: None,
    }
}

/// A revision no key has: the guard of a node whose registration is gone.
const NOT_OURS: Rev = u64::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EscrowConfig {
    /// The most usage a node holds unreported (it stalls rather than pass it).
    pub u_max: u64,
    /// The room a refill asks for.
    pub chunk: u64,
    pub lease_ttl_ms: u64,
}

/// Creates a limit's pool (BUDGET.SET in cluster mode); a pool that exists
/// keeps its figures and takes the new limit.
pub fn set_limit(store: &mut dyn GlobalStore, limit: &str, amount: u64) -> Result<(), KvError> {
    loop {
        let (mut pool, rev) = decode::<PoolV1>(&store.get(&pool_key(limit))?)?;
        pool.limit = amount;
        if store.txn(
            &[Compare::ModRev(pool_key(limit), rev)],
            &[put(pool_key(limit), &pool)],
        )? {
            return Ok(());
        }
    }
}

/// A node's view of its grant of one limit: what the store last confirmed
/// (`granted`, `reported`) and what it used itself. `used` is the node's own
/// ledger's figure: it survives a restart with the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalGrant {
    pub epoch: u64,
    pub granted: u64,
    pub used: u64,
    pub reported: u64,
    /// Of `used`, what open holds take (reported with it).
    pub held: u64,
}

/// A node of the cluster: its registration and its grants.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub epoch: u64,
    pub lease: Option<LeaseId>,
    pub grants: std::collections::BTreeMap<String, LocalGrant>,
    pub config: EscrowConfig,
}

impl Node {
    pub fn new(name: &str, config: EscrowConfig) -> Node {
        Node {
            name: name.to_string(),
            epoch: 0,
            lease: None,
            grants: Default::default(),
            config,
        }
    }

    /// Registers under a new epoch and lease, then settles the grants of
    /// earlier registrations: with its disk (`self.grants` from the ledger)
    /// the node knows what it used and keeps the grant, reporting it; a
    /// grant reclaimed meanwhile is reconciled (the presumed charge
    /// replaced by the true use); without its disk, a live grant is charged
    /// as a reclaim would. Err when the old registration's lease still lives
    /// (wait for it, or for a reclaim).
    pub fn register(&mut self, store: &mut dyn GlobalStore) -> Result<bool, KvError> {
        let lease = store.lease_grant(self.config.lease_ttl_ms)?;
        let (epoch, erev) = decode::<u64>(&store.get(&epoch_key(&self.name))?)?;
        let next = epoch + 1;
        let registered = store.txn(
            &[
                Compare::ModRev(epoch_key(&self.name), erev),
                Compare::ModRev(node_key(&self.name), 0),
            ],
            &[
                put(epoch_key(&self.name), &next),
                Op::Put {
                    key: node_key(&self.name),
                    value: encode(&NodeV1 { epoch: next }),
                    lease: Some(lease),
                },
            ],
        )?;
        if !registered {
            return Ok(false);
        }
        self.epoch = next;
        self.lease = Some(lease);
        let limits: Vec<String> = (grant_holders(store)?.into_iter())
            .filter(|(_, node)| *node == self.name)
            .map(|(limit, _)| limit)
            .collect();
        for limit in limits {
            self.settle_old_grant(store, &limit)?;
        }
        Ok(true)
    }

    fn settle_old_grant(
        &mut self,
        store: &mut dyn GlobalStore,
        limit: &str,
    ) -> Result<(), KvError> {
        loop {
            let (pool, prev) = decode::<PoolV1>(&store.get(&pool_key(limit))?)?;
            let (g, grev) = decode::<GrantV1>(&store.get(&grant_key(limit, &self.name))?)?;
            let local = self
                .grants
                .get(limit)
                .copied()
                .filter(|l| l.epoch == g.epoch);
            let node_rev = self.node_rev(store)?;
            if node_rev == NOT_OURS {
                // The new registration's lease ran out already: no write of
                // ours can succeed; register again.
                return Err(KvError::NoLease(self.lease.unwrap_or(0)));
            }
            let (pool, grant, kept) = match (g.presumed, local) {
                // Reclaimed, and the disk says what was used: the true figure
                // replaces the presumed one (never larger, by the two rules,
                // but for a partition allowance the node used while cut off:
                // that is charged too).
                (Some(p), Some(l)) => {
                    let pool = PoolV1 {
                        presumed: pool.presumed.saturating_sub(p),
                        consumed: pool.consumed + l.used,
                        ..pool
                    };
                    (pool, GrantV1::default(), None)
                }
                // Reclaimed, no disk: the presumed charge stands.
                (Some(_), None) => (pool, GrantV1::default(), None),
                // Live, with the disk: the node keeps the grant under its new
                // epoch, reporting all it used.
                (None, Some(l)) => {
                    let grant = GrantV1 {
                        epoch: self.epoch,
                        granted: g.granted,
                        reported: l.used,
                        presumed: None,
                        u_max: g.u_max,
                        held: l.held.min(l.used),
                    };
                    let kept = LocalGrant {
                        epoch: self.epoch,
                        granted: g.granted,
                        used: l.used,
                        reported: l.used,
                        held: l.held,
                    };
                    (pool, grant, Some(kept))
                }
                // Live, no disk: charged as a reclaim would charge it.
                (None, None) => {
                    let p = presumed(&g);
                    let pool = PoolV1 {
                        granted: pool.granted.saturating_sub(g.granted),
                        presumed: pool.presumed + p,
                        ..pool
                    };
                    (pool, GrantV1::default(), None)
                }
            };
            // A fresh grant declares the node's configured allowance (a
            // kept one keeps its own).
            let grant = GrantV1 {
                epoch: self.epoch,
                u_max: if kept.is_some() {
                    grant.u_max
                } else {
                    self.config.u_max
                },
                ..grant
            };
            if self.write_pool_and_grant(store, limit, [prev, grev, node_rev], &pool, &grant)? {
                let fresh = LocalGrant {
                    epoch: self.epoch,
                    ..LocalGrant::default()
                };
                self.grants.insert(limit.to_string(), kept.unwrap_or(fresh));
                return Ok(());
            }
        }
    }

    /// Writes `limit`'s pool and this node's grant of it in one transaction,
    /// guarded by the revisions they were read at and this registration's
    /// node key (`[pool, grant, node]`): Ok(whether the store took it).
    fn write_pool_and_grant(
        &self,
        store: &mut dyn GlobalStore,
        limit: &str,
        [pool_rev, grant_rev, node_rev]: [Rev; 3],
        pool: &PoolV1,
        grant: &GrantV1,
    ) -> Result<bool, KvError> {
        let guard = [
            Compare::ModRev(pool_key(limit), pool_rev),
            Compare::ModRev(grant_key(limit, &self.name), grant_rev),
            Compare::ModRev(node_key(&self.name), node_rev),
        ];
        let writes = [
            put(pool_key(limit), pool),
            put(grant_key(limit, &self.name), grant),
        ];
        store.txn(&guard, &writes)
    }

    /// The revision of this registration's node key, to guard every write
    /// with; `NOT_OURS` (which no key has) when the key is gone or is
    /// another registration's, so no guarded write of ours can succeed.
    pub(super) fn node_rev(&self, store: &mut dyn GlobalStore) -> Result<Rev, KvError> {
        Ok(match store.get(&node_key(&self.name))? {
            Some(kv) if kv.lease == self.lease => kv.mod_rev,
            _ => NOT_OURS,
        })
    }

    /// Takes `amount` of every limit locally, all or nothing: within each
    /// grant and each `u_max`. No store round trip.
    pub fn reserve(&mut self, amounts: &[(&str, u64)]) -> bool {
        let u_max = self.config.u_max;
        let epoch = self.epoch;
        let fits = amounts.iter().all(|(limit, a)| {
            self.grants.get(*limit).is_some_and(|g| {
                g.epoch == epoch && g.used + a <= g.granted && g.used + a - g.reported <= u_max
            })
        });
        if fits {
            for (limit, a) in amounts {
                self.grants.get_mut(*limit).expect("checked above").used += a;
            }
        }
        fits
    }

    /// Asks for more room of `limit`: `want` (what the node expects to use
    /// soon, from its recent rate; at most `chunk`), or a fair share of what
    /// the pool has left when that is less (`available / (2 × live nodes)`,
    /// so the last room is spread thin instead of parked on one node), and
    /// at least `need` (what a reservation waiting on it lacks) if the pool
    /// has that. Ok(room granted now).
    pub fn refill(
        &mut self,
        store: &mut dyn GlobalStore,
        limit: &str,
        need: u64,
        want: u64,
    ) -> Result<u64, KvError> {
        let (pool, prev) = decode::<PoolV1>(&store.get(&pool_key(limit))?)?;
        let (g, grev) = decode::<GrantV1>(&store.get(&grant_key(limit, &self.name))?)?;
        if g.epoch != self.epoch || g.presumed.is_some() {
            return Ok(0);
        }
        let live = store.count(&format!("{PREFIX}node/"))?.max(1);
        let share = pool.available() / (2 * live);
        let x = (want.min(self.config.chunk).min(share))
            .max(need)
            .min(pool.available());
        if x == 0 {
            return Ok(0);
        }
        let pool2 = PoolV1 {
            granted: pool.granted + x,
            ..pool
        };
        let g2 = GrantV1 {
            granted: g.granted + x,
            ..g
        };
        let node_rev = self.node_rev(store)?;
        let ok = self.write_pool_and_grant(store, limit, [prev, grev, node_rev], &pool2, &g2)?;
        if ok {
            self.confirm(limit, &g2);
        }
        Ok(if ok { x } else { 0 })
    }

    /// Reports every grant's usage (absolute figures: a repeat is harmless).
    pub fn report(&mut self, store: &mut dyn GlobalStore) -> Result<(), KvError> {
        let limits: Vec<String> = self.grants.keys().cloned().collect();
        for limit in limits {
            self.report_limit(store, &limit)?;
        }
        Ok(())
    }

    /// Reports the usage of one grant (`report` for one limit).
    pub fn report_limit(
        &mut self,
        store: &mut dyn GlobalStore,
        limit: &str,
    ) -> Result<(), KvError> {
        let Some(local) = self.grants.get(limit).copied() else {
            return Ok(());
        };
        self.rewrite_own(store, limit, |g| {
            (local.used != g.reported).then_some(GrantV1 {
                reported: local.used,
                held: local.held.min(local.used),
                ..*g
            })
        })?;
        Ok(())
    }

    /// Charges the pool with what this node used of `limit` beyond its
    /// grant: the grant grows by the charge, all use reported, and the
    /// pool's `granted` by as much. Of the use past the grant, up to
    /// `booked` — usage booked outside the rules (SPEND, a COMMIT past its
    /// hold or after it expired) — is charged past the limit if need be:
    /// it happened, and a single node counts it too; from then on no node
    /// is granted room that was spent here (the pool's `available` is what
    /// is left of the limit). The rest (what a partition allowance let the
    /// node use) is charged from the room the pool has, as a refill would:
    /// its bound is the allowance (docs/CLUSTER.md). Ok(Some(the amount
    /// charged)), Ok(None) when another write moved the pool or the grant
    /// under this one (read again and retry).
    pub fn absorb(
        &mut self,
        store: &mut dyn GlobalStore,
        limit: &str,
        booked: u64,
    ) -> Result<Option<u64>, KvError> {
        let Some(local) = self.grants.get(limit).copied() else {
            return Ok(Some(0));
        };
        let (pool, prev) = decode::<PoolV1>(&store.get(&pool_key(limit))?)?;
        let (g, grev) = decode::<GrantV1>(&store.get(&grant_key(limit, &self.name))?)?;
        let over = local.used.saturating_sub(g.granted);
        // Reclaimed (this registration is gone): register again, and the
        // reconcile charges all the node used.
        if over > 0 && grev != 0 && (g.presumed.is_some() || g.epoch > self.epoch) {
            return Err(KvError::NoLease(self.lease.unwrap_or(0)));
        }
        if g.epoch != self.epoch || g.presumed.is_some() || grev == 0 {
            return Ok(Some(0));
        }
        let past_limit = over.min(booked);
        let charge = past_limit + (over - past_limit).min(pool.available());
        if charge == 0 {
            return Ok(Some(0));
        }
        // A registration that is gone: register again, then charge it.
        let node_rev = self.node_rev(store)?;
        if node_rev == NOT_OURS {
            return Err(KvError::NoLease(self.lease.unwrap_or(0)));
        }
        let pool2 = PoolV1 {
            granted: pool.granted.saturating_add(charge),
            ..pool
        };
        let g2 = GrantV1 {
            granted: g.granted + charge,
            reported: local.used.max(g.reported),
            held: local.held.min(local.used),
            ..g
        };
        if self.write_pool_and_grant(store, limit, [prev, grev, node_rev], &pool2, &g2)? {
            self.confirm(limit, &g2);
            return Ok(Some(charge));
        }
        Ok(None)
    }

    /// Rewrites this registration's live grant of `limit` as `change` has
    /// it (None: leave it), guarded by the grant's revision and the node's
    /// key; a written grant is confirmed locally. Ok(None) when the grant
    /// is not this registration's live one; otherwise the grant as the
    /// store now has it, and whether this call wrote it.
    fn rewrite_own(
        &mut self,
        store: &mut dyn GlobalStore,
        limit: &str,
        change: impl FnOnce(&GrantV1) -> Option<GrantV1>,
    ) -> Result<Option<(GrantV1, bool)>, KvError> {
        let (g, grev) = decode::<GrantV1>(&store.get(&grant_key(limit, &self.name))?)?;
        if g.epoch != self.epoch || g.presumed.is_some() || grev == 0 {
            return Ok(None);
        }
        let Some(g2) = change(&g) else {
            return Ok(Some((g, false)));
        };
        let guard = [
            Compare::ModRev(grant_key(limit, &self.name), grev),
            Compare::ModRev(node_key(&self.name), self.node_rev(store)?),
        ];
        if store.txn(&guard, &[put(grant_key(limit, &self.name), &g2)])? {
            self.confirm(limit, &g2);
            Ok(Some((g2, true)))
        } else {
            Ok(Some((g, false)))
        }
    }

    /// When `limit`'s pool runs low (less than a `chunk` left), gives back
    /// its idle room beyond `keep` (what it expects to need soon), so no
    /// room sits on an idle node while another is denied. Ok(room given).
    pub fn relieve(
        &mut self,
        store: &mut dyn GlobalStore,
        limit: &str,
        keep: u64,
    ) -> Result<u64, KvError> {
        let Some(local) = self.grants.get(limit).copied() else {
            return Ok(0);
        };
        if local.granted <= local.used + keep {
            return Ok(0);
        }
        let (pool, _) = decode::<PoolV1>(&store.get(&pool_key(limit))?)?;
        if pool.available() >= self.config.chunk {
            return Ok(0);
        }
        let before = local.granted;
        self.give_back(store, limit, keep)?;
        Ok(before - self.grants[limit].granted)
    }

    /// Gives back the room of `limit` it has not used, beyond `keep`.
    pub fn give_back(
        &mut self,
        store: &mut dyn GlobalStore,
        limit: &str,
        keep: u64,
    ) -> Result<(), KvError> {
        let Some(local) = self.grants.get(limit).copied() else {
            return Ok(());
        };
        let line = local.used + keep;
        if local.granted <= line {
            return Ok(());
        }
        self.give_back_to(store, limit, line)
    }

    /// Gives back the room of `limit` above `line`, which the caller has
    /// checked is at least what the node used (a node embedded in an
    /// engine lowers its line there first, atomically with its
    /// reservations).
    pub fn give_back_to(
        &mut self,
        store: &mut dyn GlobalStore,
        limit: &str,
        line: u64,
    ) -> Result<(), KvError> {
        let Some(local) = self.grants.get(limit).copied() else {
            return Ok(());
        };
        let (pool, prev) = decode::<PoolV1>(&store.get(&pool_key(limit))?)?;
        let (g, grev) = decode::<GrantV1>(&store.get(&grant_key(limit, &self.name))?)?;
        if g.epoch != self.epoch || g.presumed.is_some() {
            return Ok(());
        }
        // Lower its own line first (a site may always do that alone): if
        // the reply is lost, the node must not use room it may have given.
        if let Some(l) = self.grants.get_mut(limit) {
            l.granted = l.granted.min(line);
        }
        // The store may know a smaller grant than the node (a refill whose
        // reply was lost is larger, never smaller): give back from its figure.
        let Some(returned) = g.granted.checked_sub(line) else {
            return Ok(());
        };
        let pool2 = PoolV1 {
            granted: pool.granted.saturating_sub(returned),
            ..pool
        };
        let g2 = GrantV1 {
            granted: line,
            reported: local.used,
            ..g
        };
        let node_rev = self.node_rev(store)?;
        if self.write_pool_and_grant(store, limit, [prev, grev, node_rev], &pool2, &g2)? {
            self.confirm(limit, &g2);
        }
        Ok(())
    }

    /// Re-reads its grants (after a lost reply, say): the store's figures
    /// are the truth for `granted` and `reported`.
    pub fn sync(&mut self, store: &mut dyn GlobalStore) -> Result<(), KvError> {
        let limits: Vec<String> = self.grants.keys().cloned().collect();
        for limit in limits {
            self.sync_limit(store, &limit)?;
        }
        Ok(())
    }

    /// Re-reads one grant (`sync` for one limit).
    pub fn sync_limit(&mut self, store: &mut dyn GlobalStore, limit: &str) -> Result<(), KvError> {
        let (g, _) = decode::<GrantV1>(&store.get(&grant_key(limit, &self.name))?)?;
        if g.epoch == self.epoch && g.presumed.is_none() {
            self.confirm(limit, &g);
        }
        Ok(())
    }

    fn confirm(&mut self, limit: &str, g: &GrantV1) {
        let l = self.grants.entry(limit.to_string()).or_default();
        if l.epoch != g.epoch {
            *l = LocalGrant {
                epoch: g.epoch,
                ..LocalGrant::default()
            };
        }
        // The store's record is the truth for `granted`; `reported` never
        // goes back (a stale read can show an older report).
        l.granted = g.granted;
        l.reported = l.reported.max(g.reported);
    }

    /// Raises the `u_max` its grant of `limit` declares (the store first:
    /// the node may use the larger allowance only once this is confirmed).
    /// Ok(the grant as the store now has it, if it is this registration's).
    pub fn declare(
        &mut self,
        store: &mut dyn GlobalStore,
        limit: &str,
        u_max: u64,
    ) -> Result<Option<GrantV1>, KvError> {
        let raised = self.rewrite_own(store, limit, |g| {
            (g.u_max < u_max).then_some(GrantV1 { u_max, ..*g })
        })?;
        Ok(raised.map(|(g, _)| g))
    }

    /// Lowers the `u_max` its grant of `limit` declares to 0 (an idle node
    /// that has reported all it used: its death then strands none of its
    /// room). The caller has lowered its own line first. Ok(whether the
    /// store took it).
    pub fn undeclare(&mut self, store: &mut dyn GlobalStore, limit: &str) -> Result<bool, KvError> {
        let lowered = self.rewrite_own(store, limit, |g| {
            (g.u_max > 0).then_some(GrantV1 { u_max: 0, ..*g })
        })?;
        Ok(lowered.is_some_and(|(_, wrote)| wrote))
    }

    /// Joins a limit: an empty grant under this epoch (no room yet).
    pub fn join(&mut self, store: &mut dyn GlobalStore, limit: &str) -> Result<bool, KvError> {
        let (g, grev) = decode::<GrantV1>(&store.get(&grant_key(limit, &self.name))?)?;
        if grev != 0 && (g.epoch == self.epoch || g.granted > 0 || g.presumed.is_some()) {
            return Ok(false);
        }
        let g2 = GrantV1 {
            epoch: self.epoch,
            u_max: self.config.u_max,
            ..GrantV1::default()
        };
        let guard = [
            Compare::ModRev(grant_key(limit, &self.name), grev),
            Compare::ModRev(node_key(&self.name), self.node_rev(store)?),
        ];
        let ok = store.txn(&guard, &[put(grant_key(limit, &self.name), &g2)])?;
        if ok {
            self.grants.insert(
                limit.to_string(),
                LocalGrant {
                    epoch: self.epoch,
                    ..LocalGrant::default()
                },
            );
        }
        Ok(ok)
    }
}

/// What a reclaim charges for a grant: all it reported, plus all it may
/// have used unreported (its declared `u_max`), never more than it was
/// granted.
pub fn presumed(g: &GrantV1) -> u64 {
    g.reported + g.u_max.min(g.granted.saturating_sub(g.reported))
}

/// How a reclaim checks the grant's owner is dead. `Unchecked` is a
/// planted bug for the simulation to catch: it reclaims on a stale read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fencing {
    Checked,
    Unchecked,
}

/// What a janitor read of a dead node's grant, to reclaim later.
#[derive(Clone, Debug)]
pub struct ReclaimPlan {
    pub limit: String,
    pub node: String,
    grant: GrantV1,
    grant_rev: Rev,
}

/// Reads a grant to reclaim: Some if its node is not registered.
pub fn plan_reclaim(
    store: &mut dyn GlobalStore,
    limit: &str,
    node: &str,
) -> Result<Option<ReclaimPlan>, KvError> {
    if store.get(&node_key(node))?.is_some() {
        return Ok(None);
    }
    let (grant, grant_rev) = decode::<GrantV1>(&store.get(&grant_key(limit, node))?)?;
    if grant_rev == 0 || grant.presumed.is_some() || grant.granted == 0 {
        return Ok(None);
    }
    Ok(Some(ReclaimPlan {
        limit: limit.to_string(),
        node: node.to_string(),
        grant,
        grant_rev,
    }))
}

/// Reclaims a planned grant: the pool is charged its presumed use and the
/// rest returns. Checked: only if the node is still unregistered and the
/// grant unchanged since the plan. Ok(whether it was reclaimed).
pub fn reclaim(
    store: &mut dyn GlobalStore,
    plan: &ReclaimPlan,
    fencing: Fencing,
) -> Result<bool, KvError> {
    let (pool, prev) = decode::<PoolV1>(&store.get(&pool_key(&plan.limit))?)?;
    let g = plan.grant;
    let p = presumed(&g);
    let pool2 = PoolV1 {
        granted: pool.granted.saturating_sub(g.granted),
        presumed: pool.presumed + p,
        ..pool
    };
    let g2 = GrantV1 {
        granted: 0,
        presumed: Some(p),
        ..g
    };
    let mut guard = vec![Compare::ModRev(pool_key(&plan.limit), prev)];
    if fencing == Fencing::Checked {
        guard.push(Compare::ModRev(node_key(&plan.node), 0));
        guard.push(Compare::ModRev(
            grant_key(&plan.limit, &plan.node),
            plan.grant_rev,
        ));
    }
    store.txn(
        &guard,
        &[
            put(pool_key(&plan.limit), &pool2),
            put(grant_key(&plan.limit, &plan.node), &g2),
        ],
    )
}

/// Creates `limit`'s pool with `amount` if it has none (a pool that
/// exists keeps its figures).
pub fn ensure_pool(store: &mut dyn GlobalStore, limit: &str, amount: u64) -> Result<(), KvError> {
    if store.get(&pool_key(limit))?.is_none() {
        let fresh = PoolV1 {
            limit: amount,
            ..PoolV1::default()
        };
        store.txn(
            &[Compare::ModRev(pool_key(limit), 0)],
            &[put(pool_key(limit), &fresh)],
        )?;
    }
    Ok(())
}

/// Asks every node holding idle room of `limit` to give it back: the
/// recall's revision tells a new recall from one already answered.
pub fn recall(store: &mut dyn GlobalStore, limit: &str, by: &str) -> Result<(), KvError> {
    store.txn(&[], &[put(recall_key(limit), &by)])?;
    Ok(())
}

/// The limit a recall key is of (None: not a recall key).
pub fn recall_limit(key: &str) -> Option<String> {
    let rest = key.strip_prefix(PREFIX)?.strip_prefix("recall/")?;
    Some(unsegment(rest))
}

/// Every limit a recall was ever written for (one range read).
pub fn recalled_limits(store: &mut dyn GlobalStore) -> Result<Vec<String>, KvError> {
    Ok((store.range(&format!("{PREFIX}recall/"))?.iter())
        .filter_map(|kv| recall_limit(&kv.key))
        .collect())
}

/// The last recall of `limit`: who sent it, and its revision.
pub fn read_recall(
    store: &mut dyn GlobalStore,
    limit: &str,
) -> Result<Option<(String, Rev)>, KvError> {
    let kv = store.get(&recall_key(limit))?;
    Ok(match kv.is_some() {
        true => Some(decode::<String>(&kv)?),
        false => None,
    })
}

/// The names of the registered (live) nodes, in name order.
pub fn live_nodes(store: &mut dyn GlobalStore) -> Result<Vec<String>, KvError> {
    let prefix = format!("{PREFIX}node/");
    Ok((store.range(&prefix)?.into_iter())
        .filter_map(|kv| Some(kv.key.strip_prefix(&prefix)?.to_string()))
        .collect())
}

/// Every grant in the store, as (limit, node).
pub fn grant_holders(store: &mut dyn GlobalStore) -> Result<Vec<(String, String)>, KvError> {
    let prefix = format!("{PREFIX}grant/");
    Ok((store.range(&prefix)?.into_iter())
        .filter_map(|kv| {
            let (limit, node) = kv.key.strip_prefix(&prefix)?.rsplit_once('/')?;
            Some((unsegment(limit), node.to_string()))
        })
        .collect())
}

/// The store's pool of one limit (the default, limit 0, if it has none).
pub fn read_pool(store: &mut dyn GlobalStore, limit: &str) -> Result<PoolV1, KvError> {
    Ok(decode::<PoolV1>(&store.get(&pool_key(limit))?)?.0)
}

/// A node's grant of one limit as the store has it (the default, epoch 0,
/// if it has none).
pub fn read_grant(
    store: &mut dyn GlobalStore,
    limit: &str,
    node: &str,
) -> Result<GrantV1, KvError> {
    Ok(decode::<GrantV1>(&store.get(&grant_key(limit, node))?)?.0)
}

/// The store's figures for one limit: its pool and every grant.
pub fn read_limit(
    store: &mut dyn GlobalStore,
    limit: &str,
) -> Result<(PoolV1, Vec<(String, GrantV1)>), KvError> {
    let (pool, _) = decode::<PoolV1>(&store.get(&pool_key(limit))?)?;
    let prefix = format!("{PREFIX}grant/{}/", segment(limit));
    let grants = (store.range(&prefix)?.into_iter())
        .map(|kv| {
            let node = kv.key[prefix.len()..].to_string();
            decode::<GrantV1>(&Some(kv)).map(|(g, _)| (node, g))
        })
        .collect::<Result<_, _>>()?;
    Ok((pool, grants))
}

/// What `spendb cluster status` shows: every registered node, and every
/// pool with its grants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub revision: Rev,
    pub nodes: Vec<NodeStatus>,
    pub pools: Vec<PoolStatus>,
    /// The rolling windows' pools (`rolling.rs`).
    pub rolling: Vec<super::rolling::RollingStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub epoch: u64,
    pub lease: Option<LeaseId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    /// The limit's name (its amount is the pool's `limit`).
    pub key: String,
    #[serde(flatten)]
    pub pool: PoolV1,
    pub available: u64,
    pub grants: Vec<GrantStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrantStatus {
    pub node: String,
    #[serde(flatten)]
    pub grant: GrantV1,
}

/// The registered (live) nodes: one range.
pub fn nodes(store: &mut dyn GlobalStore) -> Result<Vec<NodeStatus>, KvError> {
    (store.range(&format!("{PREFIX}node/"))?.into_iter())
        .map(|kv| {
            let node = kv.key[format!("{PREFIX}node/").len()..].to_string();
            let lease = kv.lease;
            decode::<NodeV1>(&Some(kv)).map(|(n, _)| NodeStatus {
                node,
                epoch: n.epoch,
                lease,
            })
        })
        .collect()
}

/// Reads the whole cluster's figures (five ranges); `now` (ms) says which
/// rolling charges still count.
pub fn status(store: &mut dyn GlobalStore, now: u64) -> Result<ClusterStatus, KvError> {
    let nodes = nodes(store)?;
    let revision = store.revision()?;
    let mut pools = Vec::new();
    for kv in store.range(&format!("{PREFIX}pool/"))? {
        let limit = unsegment(&kv.key[format!("{PREFIX}pool/").len()..]);
        let (pool, _) = decode::<PoolV1>(&Some(kv))?;
        let (_, grants) = read_limit(store, &limit)?;
        pools.push(PoolStatus {
            available: pool.available(),
            pool,
            grants: (grants.into_iter())
                .map(|(node, grant)| GrantStatus { node, grant })
                .collect(),
            key: limit,
        });
    }
    let rolling = super::rolling::status(store, now)?;
    Ok(ClusterStatus {
        revision,
        nodes,
        pools,
        rolling,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::kv::MemStore;

    fn cfg() -> EscrowConfig {
        EscrowConfig {
            u_max: 100,
            chunk: 1_000,
            lease_ttl_ms: 10_000,
        }
    }

    #[test]
    fn a_reclaim_charges_what_was_reported_plus_what_may_be_unreported() {
        let g = |granted, reported| GrantV1 {
            granted,
            reported,
            u_max: 100,
            ..GrantV1::default()
        };
        assert_eq!(presumed(&g(1_000, 300)), 400);
        // Never more than was granted.
        assert_eq!(presumed(&g(1_000, 950)), 1_000);
        assert_eq!(presumed(&g(0, 0)), 0);
        // The grant's own declared allowance, whatever the config.
        assert_eq!(
            presumed(&GrantV1 {
                u_max: 7,
                ..g(1_000, 300)
            }),
            307
        );
    }

    #[test]
    fn a_limit_name_with_slashes_is_one_key_segment() {
        assert_eq!(
            grant_key("org:a/team:b", "n1"),
            "/spendb/v1/grant/org:a%2Fteam:b/n1"
        );
        assert_eq!(unsegment(&segment("a%2F/b")), "a%2F/b");
        // The org's grants are not a prefix of the team's.
        assert!(!grant_key("org:a/team:b", "n1")
            .starts_with(&format!("{PREFIX}grant/{}/", segment("org:a"))));
    }

    #[test]
    fn a_value_spendb_did_not_write_is_an_error_not_a_panic() {
        let mut s = MemStore::new(0);
        set_limit(&mut s, "org:x", 5_000).unwrap();
        let mut n = Node::new("n", cfg());
        assert!(n.register(&mut s).unwrap());
        assert!(n.join(&mut s, "org:x").unwrap());
        let garbage = Op::Put {
            key: pool_key("org:x"),
            value: b"not json".to_vec(),
            lease: None,
        };
        assert!(s.txn(&[], &[garbage]).unwrap());
        assert!(matches!(
            n.refill(&mut s, "org:x", 0, 1_000),
            Err(KvError::Corrupt(_))
        ));
        assert!(matches!(
            read_limit(&mut s, "org:x"),
            Err(KvError::Corrupt(_))
        ));
    }

    #[test]
    fn status_shows_nodes_pools_and_grants() {
        let mut s = MemStore::new(0);
        set_limit(&mut s, "org:a/team:b", 5_000).unwrap();
        let mut n = Node::new("n1", cfg());
        assert!(n.register(&mut s).unwrap());
        n.join(&mut s, "org:a/team:b").unwrap();
        assert_eq!(n.refill(&mut s, "org:a/team:b", 0, 1_000).unwrap(), 1_000);
        let st = status(&mut s, 0).unwrap();
        assert_eq!(st.revision, s.revision().unwrap());
        assert_eq!(st.nodes.len(), 1);
        assert_eq!((st.nodes[0].node.as_str(), st.nodes[0].epoch), ("n1", 1));
        assert_eq!(st.pools.len(), 1);
        let p = &st.pools[0];
        assert_eq!(
            (p.key.as_str(), p.pool.granted, p.available),
            ("org:a/team:b", 1_000, 4_000)
        );
        assert_eq!(
            (p.grants[0].node.as_str(), p.grants[0].grant.granted),
            ("n1", 1_000)
        );
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["pools"][0]["grants"][0]["granted"], 1_000);
        assert_eq!(
            (&json["pools"][0]["key"], &json["pools"][0]["limit"]),
            (
                &serde_json::json!("org:a/team:b"),
                &serde_json::json!(5_000)
            )
        );
    }

    #[test]
    fn settling_old_grants_after_the_new_lease_ran_out_is_an_error_not_a_loop() {
        let mut s = MemStore::new(0);
        set_limit(&mut s, "org:x", 5_000).unwrap();
        let mut n = Node::new("n", cfg());
        assert!(n.register(&mut s).unwrap());
        n.join(&mut s, "org:x").unwrap();
        n.refill(&mut s, "org:x", 0, 1_000).unwrap();
        // The node registers again (after a crash with its disk), and its
        // new lease is gone before it settles its old grant.
        s.set_time(10_000);
        assert!(n.register(&mut s).unwrap());
        s.set_time(20_000);
        assert!(matches!(
            n.settle_old_grant(&mut s, "org:x"),
            Err(KvError::NoLease(_))
        ));
    }

    #[test]
    fn registering_again_while_the_old_lease_lives_waits() {
        let mut s = MemStore::new(0);
        let mut a = Node::new("a", cfg());
        assert!(a.register(&mut s).unwrap());
        let mut again = Node::new("a", cfg());
        assert!(
            !again.register(&mut s).unwrap(),
            "the first registration's key still lives"
        );
        s.set_time(10_000);
        assert!(again.register(&mut s).unwrap());
        assert_eq!(again.epoch, 2);
    }
}
