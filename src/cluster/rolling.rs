//! Rolling windows across nodes (docs/CLUSTER.md, "Rolling windows"): the
//! store's pool of a rolling limit and a node's transactions on it.
//!
//! A rolling window has no period to escrow, so the room a node is granted
//! is *charged* to the pool at once, to one grant period of the window
//! (`state::grant::rolling_span`: a sixth of a window of a minute or more),
//! and counts in the pool until a window after that period ends. The node
//! uses it only during that period (its line's rule 1), so every use leaves
//! the window no later than the charge that covers it, and at every moment
//! the use in the window is at most the charges still in it: at most the
//! limit, by the guard on every charge. Nothing is reported after the fact
//! and nothing is reclaimed: a dead node's charges age out like any other.
//! What a node did not use of a period it gives back (its own record says
//! what it was charged, so a repeated give-back changes nothing).
//!
//! Like the escrow pools, every write is one transaction guarded by the
//! revisions it read and by the node's registration (`escrow::Node`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::escrow::{decode, node_key, segment, unsegment, Node, PREFIX};
use super::kv::{Compare, GlobalStore, KvError, Op, Rev};
use crate::state::grant::{rolling_span, GrantLine};
use crate::state::limit::{LimitSpec, Window};

/// The pool of a rolling limit, `<scope>|<DIM>|ROLLING <d>` (a line's key
/// without its period).
pub fn pool_name(line: &GrantLine) -> String {
    pool_name_of(&line.scope, &line.spec)
}

pub fn pool_name_of(scope: &str, spec: &LimitSpec) -> String {
    format!("{scope}|{}|{}", spec.dim.name(), spec.window.describe())
}

pub fn pool_key(pool: &str) -> String {
    format!("{PREFIX}rolling/{}", segment(pool))
}

pub fn grant_key(pool: &str, node: &str) -> String {
    format!("{PREFIX}rolling-grant/{}/{node}", segment(pool))
}

/// A rolling limit's pool: the room granted per grant period (by the
/// period's start, ms), each counting until `window_ms` after its period
/// ends. Invariant: when a charge is raised, the charges still counting
/// sum to at most `limit`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollingPoolV1 {
    pub limit: u64,
    pub window_ms: u64,
    pub span_ms: u64,
    pub charges: BTreeMap<u64, u64>,
}

impl RollingPoolV1 {
    fn counts(&self, period: u64, now: u64) -> bool {
        period
            .saturating_add(self.span_ms)
            .saturating_add(self.window_ms)
            > now
    }

    /// The room charged that still counts at `now`.
    pub fn charged(&self, now: u64) -> u64 {
        (self.charges.iter())
            .filter(|(p, _)| self.counts(**p, now))
            .fold(0u64, |a, (_, c)| a.saturating_add(*c))
    }

    pub fn available(&self, now: u64) -> u64 {
        self.limit.saturating_sub(self.charged(now))
    }

    /// Less than an eighth of the limit left.
    pub fn is_low(&self, now: u64) -> bool {
        self.available(now) < (self.limit / 8).max(1)
    }

    /// When the oldest charge still counting stops counting (None: none).
    pub fn frees_at(&self, now: u64) -> Option<u64> {
        (self.charges.iter())
            .filter(|(p, c)| **c > 0 && self.counts(**p, now))
            .map(|(p, _)| p + self.span_ms + self.window_ms)
            .min()
    }

    fn prune(&mut self, now: u64) {
        let (span, window) = (self.span_ms, self.window_ms);
        self.charges
            .retain(|p, c| *c > 0 && p.saturating_add(span).saturating_add(window) > now);
    }
}

/// A node's charges of one rolling pool, on the node's lease (gone with
/// its registration; the pool's charges stay and age out).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollingGrantV1 {
    pub epoch: u64,
    pub charges: BTreeMap<u64, u64>,
}

fn put<T: Serialize>(key: String, v: &T, lease: Option<u64>) -> Op {
    Op::Put {
        key,
        value: serde_json::to_vec(v).expect("records encode"),
        lease,
    }
}

/// The pool and this node's record, as read for one transaction.
struct Read {
    pool: RollingPoolV1,
    prev: Rev,
    grant: RollingGrantV1,
    grev: Rev,
}

fn read(
    store: &mut dyn GlobalStore,
    node: &Node,
    pool: &str,
    line: &GrantLine,
    amount: u64,
) -> Result<Read, KvError> {
    let (mut p, prev) = decode::<RollingPoolV1>(&store.get(&pool_key(pool))?)?;
    if prev == 0 {
        let Window::Rolling(ms) = line.spec.window else {
            return Err(KvError::Corrupt(format!("{pool}: not a rolling window")));
        };
        p = RollingPoolV1 {
            limit: amount,
            window_ms: ms,
            span_ms: rolling_span(ms),
            charges: BTreeMap::new(),
        };
    }
    let (mut g, grev) = decode::<RollingGrantV1>(&store.get(&grant_key(pool, &node.name))?)?;
    if g.epoch != node.epoch {
        // An older registration's record (its lease has run out, or is
        // about to): its charges are the pool's alone now.
        g = RollingGrantV1 {
            epoch: node.epoch,
            charges: BTreeMap::new(),
        };
    }
    Ok(Read {
        pool: p,
        prev,
        grant: g,
        grev,
    })
}

/// Writes the pool and the node's record if neither moved and the node's
/// registration is still its own.
fn write(
    store: &mut dyn GlobalStore,
    node: &Node,
    pool: &str,
    r: &Read,
    now: u64,
) -> Result<bool, KvError> {
    let mut p = r.pool.clone();
    p.prune(now);
    let mut g = r.grant.clone();
    let span_window = p.span_ms.saturating_add(p.window_ms);
    g.charges
        .retain(|period, c| *c > 0 && period.saturating_add(span_window) > now);
    let guard = [
        Compare::ModRev(pool_key(pool), r.prev),
        Compare::ModRev(grant_key(pool, &node.name), r.grev),
        Compare::ModRev(node_key(&node.name), node.node_rev(store)?),
    ];
    store.txn(
        &guard,
        &[
            put(pool_key(pool), &p, None),
            put(grant_key(pool, &node.name), &g, node.lease),
        ],
    )
}

/// What a take did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Took {
    /// The node's charge of the line's period is now this (its line's
    /// `granted`), `more` of it new.
    Charged { total: u64, more: u64 },
    /// Another node's write moved the pool (or the record) meanwhile.
    Conflict,
    /// The pool has less than `need` left; room frees at this time.
    Dry { frees_at: Option<u64> },
}

/// Charges room of `line`'s period to the pool for this node: `want` (what
/// it expects to use in the rest of the period), or a fair share of what is
/// left when that is less (`available / (2 × live nodes)`), and at least
/// `need` (what a waiting reservation lacks) if the pool has that.
/// `returns`: the node's use of its ended periods of the pool, whose unused
/// charge goes back in the same transaction. `amount`: the limit's amount
/// (a pool this creates takes it).
#[allow(clippy::too_many_arguments)]
pub fn take(
    store: &mut dyn GlobalStore,
    node: &Node,
    line: &GrantLine,
    amount: u64,
    need: u64,
    want: u64,
    returns: &[(u64, u64)],
    now: u64,
) -> Result<Took, KvError> {
    let name = pool_name(line);
    let mut r = read(store, node, &name, line, amount)?;
    give_back_in(&mut r, returns);
    let live = store.count(&format!("{PREFIX}node/"))?.max(1);
    let available = r.pool.available(now);
    let share = available / (2 * live);
    let more = want.min(share).max(need).min(available);
    if more < need.max(1) {
        return Ok(Took::Dry {
            frees_at: r.pool.frees_at(now),
        });
    }
    let total = r.grant.charges.get(&line.period).copied().unwrap_or(0) + more;
    *r.pool.charges.entry(line.period).or_default() += more;
    r.grant.charges.insert(line.period, total);
    Ok(match write(store, node, &name, &r, now)? {
        true => Took::Charged { total, more },
        false => Took::Conflict,
    })
}

/// Lowers the node's charge of each `(period, keep)` to `keep` in `r`.
fn give_back_in(r: &mut Read, returns: &[(u64, u64)]) -> u64 {
    let mut given = 0;
    for &(period, keep) in returns {
        let Some(c) = r.grant.charges.get_mut(&period) else {
            continue;
        };
        let back = c.saturating_sub(keep);
        *c -= back;
        if let Some(p) = r.pool.charges.get_mut(&period) {
            *p = p.saturating_sub(back);
        }
        given += back;
    }
    given
}

/// Lowers the node's charges of `pool` to what it keeps of each period
/// (`returns`: period, keep), the rest back to the pool. The caller has
/// made sure the node uses no more than `keep` of a period (it has lowered
/// its line, or the period has ended). Ok(room given back, or None when
/// the pool moved meanwhile).
pub fn give_back(
    store: &mut dyn GlobalStore,
    node: &Node,
    line: &GrantLine,
    returns: &[(u64, u64)],
    now: u64,
) -> Result<Option<u64>, KvError> {
    let name = pool_name(line);
    let mut r = read(store, node, &name, line, 0)?;
    if r.prev == 0 || r.grev == 0 {
        return Ok(Some(0));
    }
    let given = give_back_in(&mut r, returns);
    if given == 0 {
        return Ok(Some(0));
    }
    Ok(write(store, node, &name, &r, now)?.then_some(given))
}

pub fn read_pool(store: &mut dyn GlobalStore, pool: &str) -> Result<RollingPoolV1, KvError> {
    Ok(decode::<RollingPoolV1>(&store.get(&pool_key(pool))?)?.0)
}

/// A new amount for a rolling limit (BUDGET.SET): the pool, if it exists,
/// takes it (its charges stand).
pub fn set_limit(store: &mut dyn GlobalStore, pool: &str, amount: u64) -> Result<(), KvError> {
    loop {
        let (mut p, rev) = decode::<RollingPoolV1>(&store.get(&pool_key(pool))?)?;
        if rev == 0 {
            return Ok(());
        }
        p.limit = amount;
        if store.txn(
            &[Compare::ModRev(pool_key(pool), rev)],
            &[put(pool_key(pool), &p, None)],
        )? {
            return Ok(());
        }
    }
}

/// A rolling pool as `/v1/cluster` and `spendb cluster status` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RollingStatus {
    /// The limit's name, `<scope>|<DIM>|ROLLING <d>`.
    pub key: String,
    #[serde(flatten)]
    pub pool: RollingPoolV1,
    /// Room not charged to a period still in the window, when read.
    pub available: u64,
    pub grants: Vec<RollingGrantStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RollingGrantStatus {
    pub node: String,
    #[serde(flatten)]
    pub grant: RollingGrantV1,
}

/// Every rolling pool with each node's record (two ranges); `now` (ms)
/// says which charges still count.
pub fn status(store: &mut dyn GlobalStore, now: u64) -> Result<Vec<RollingStatus>, KvError> {
    let prefix = format!("{PREFIX}rolling/");
    let gprefix = format!("{PREFIX}rolling-grant/");
    let mut grants: BTreeMap<String, Vec<RollingGrantStatus>> = BTreeMap::new();
    for kv in store.range(&gprefix)? {
        let rest = kv.key[gprefix.len()..].to_string();
        let Some((pool, node)) = rest.rsplit_once('/') else {
            continue;
        };
        let (pool, node) = (unsegment(pool), node.to_string());
        let (grant, _) = decode::<RollingGrantV1>(&Some(kv))?;
        grants
            .entry(pool)
            .or_default()
            .push(RollingGrantStatus { node, grant });
    }
    let mut out = Vec::new();
    for kv in store.range(&prefix)? {
        let key = unsegment(&kv.key[prefix.len()..]);
        let (pool, _) = decode::<RollingPoolV1>(&Some(kv))?;
        out.push(RollingStatus {
            grants: grants.remove(&key).unwrap_or_default(),
            available: pool.available(now),
            key,
            pool,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::escrow::EscrowConfig;
    use crate::cluster::kv::MemStore;
    use crate::state::limit::Dim;

    const TTL: u64 = 10_000;

    fn node(s: &mut MemStore, name: &str) -> Node {
        let cfg = EscrowConfig {
            u_max: 0,
            chunk: 0,
            lease_ttl_ms: TTL,
        };
        let mut n = Node::new(name, cfg);
        assert!(n.register(s).unwrap());
        n
    }

    /// The line of `org:a REQUESTS 100 ROLLING 60s` in the period of `now`.
    fn line(now: u64) -> GrantLine {
        let spec = LimitSpec {
            dim: Dim::Requests,
            window: Window::Rolling(60_000),
            amount: 100,
        };
        let (_, period) = crate::state::grant::key("org:a", &spec, now).unwrap();
        GrantLine {
            scope: "org:a".into(),
            spec,
            period,
            epoch: 0,
            base: 0,
            granted: 0,
            reported: 0,
            u_max: 0,
        }
    }

    /// The node's charge of `line`'s period as the store has it (0 when it has
    /// none under this registration).
    fn charged(store: &mut dyn GlobalStore, node: &Node, line: &GrantLine) -> Result<u64, KvError> {
        let (g, _) =
            decode::<RollingGrantV1>(&store.get(&grant_key(&pool_name(line), &node.name))?)?;
        Ok(match g.epoch == node.epoch {
            true => g.charges.get(&line.period).copied().unwrap_or(0),
            false => 0,
        })
    }

    fn pool(s: &mut MemStore) -> RollingPoolV1 {
        read_pool(s, "org:a|REQUESTS|ROLLING 1m").unwrap()
    }

    #[test]
    fn room_is_charged_to_its_period_and_counts_until_a_window_after_it() {
        let mut s = MemStore::new(0);
        let a = node(&mut s, "a");
        let t = 1_000_000;
        // The first take creates the pool; a lone node gets at most half.
        let took = take(&mut s, &a, &line(t), 100, 1, 80, &[], t).unwrap();
        assert_eq!(
            took,
            Took::Charged {
                total: 50,
                more: 50
            }
        );
        let p = pool(&mut s);
        assert_eq!((p.limit, p.window_ms, p.span_ms), (100, 60_000, 10_000));
        assert_eq!(p.charges, BTreeMap::from([(1_000_000, 50)]));
        // More than the pool has left is dry, and says when room frees:
        // the period's end plus the window.
        let took = take(&mut s, &a, &line(t), 100, 51, 51, &[], t).unwrap();
        assert_eq!(
            took,
            Took::Dry {
                frees_at: Some(1_070_000)
            }
        );
        let took = take(&mut s, &a, &line(t), 100, 50, 50, &[], t).unwrap();
        assert_eq!(
            took,
            Took::Charged {
                total: 100,
                more: 50
            }
        );
        assert_eq!(pool(&mut s).available(t), 0);
        // The next period has nothing until the first one ages out.
        let t2 = 1_010_000;
        let took = take(&mut s, &a, &line(t2), 100, 1, 1, &[], t2).unwrap();
        assert!(matches!(took, Took::Dry { .. }));
        assert_eq!(pool(&mut s).available(1_069_999), 0);
        assert_eq!(pool(&mut s).available(1_070_000), 100);
        assert!(pool(&mut s).is_low(1_069_999) && !pool(&mut s).is_low(1_070_000));
        let t3 = 1_070_000;
        let took = take(&mut s, &a, &line(t3), 100, 1, 10, &[], t3).unwrap();
        assert_eq!(
            took,
            Took::Charged {
                total: 10,
                more: 10
            }
        );
        // The aged-out charge is gone from the pool and from a's record.
        let p = pool(&mut s);
        assert_eq!(p.charges, BTreeMap::from([(1_070_000, 10)]));
        assert_eq!(charged(&mut s, &a, &line(t3)).unwrap(), 10);
        assert_eq!(charged(&mut s, &a, &line(t)).unwrap(), 0);
    }

    #[test]
    fn a_give_back_returns_the_unused_charge_once_and_a_take_returns_ended_periods() {
        let mut s = MemStore::new(0);
        let (a, b) = (node(&mut s, "a"), node(&mut s, "b"));
        let t = 1_000_000;
        // Two nodes: a fair share is a quarter of what is left.
        let took = take(&mut s, &a, &line(t), 100, 1, 90, &[], t).unwrap();
        assert_eq!(
            took,
            Took::Charged {
                total: 25,
                more: 25
            }
        );
        take(&mut s, &b, &line(t), 100, 1, 10, &[], t).unwrap();
        // a used 5 of its 25: it keeps 5, twice over changes nothing.
        let l = line(t);
        assert_eq!(
            give_back(&mut s, &a, &l, &[(l.period, 5)], t).unwrap(),
            Some(20)
        );
        assert_eq!(
            give_back(&mut s, &a, &l, &[(l.period, 5)], t).unwrap(),
            Some(0)
        );
        assert_eq!(pool(&mut s).charged(t), 15);
        // Never more than it was charged, never another node's.
        assert_eq!(
            give_back(&mut s, &b, &l, &[(l.period, 50)], t).unwrap(),
            Some(0)
        );
        assert_eq!(pool(&mut s).charged(t), 15);
        // b's period ends having used 4 of its 10: its next take returns 6.
        let t2 = 1_010_000;
        let took = take(&mut s, &b, &line(t2), 100, 1, 1, &[(l.period, 4)], t2).unwrap();
        assert_eq!(took, Took::Charged { total: 1, more: 1 });
        let p = pool(&mut s);
        assert_eq!(p.charges, BTreeMap::from([(t, 9), (t2, 1)]));
    }

    #[test]
    fn a_node_whose_registration_is_gone_takes_nothing_and_its_charges_stay() {
        let mut s = MemStore::new(0);
        let a = node(&mut s, "a");
        let t = 1_000_000;
        take(&mut s, &a, &line(t), 100, 1, 20, &[], 0).unwrap();
        // a's lease runs out: its record goes with it, its charge stays.
        s.set_time(TTL + 1);
        assert_eq!(charged(&mut s, &a, &line(t)).unwrap(), 0);
        assert_eq!(pool(&mut s).charged(t), 20);
        assert_eq!(
            take(&mut s, &a, &line(t), 100, 1, 20, &[], t).unwrap(),
            Took::Conflict,
            "fenced"
        );
        let l = line(t);
        assert_eq!(
            give_back(&mut s, &a, &l, &[(l.period, 0)], t).unwrap(),
            Some(0)
        );
        assert_eq!(pool(&mut s).charged(t), 20);
        // A new limit takes effect in the pool; the charges stand.
        set_limit(&mut s, "org:a|REQUESTS|ROLLING 1m", 30).unwrap();
        assert_eq!(pool(&mut s).available(t), 10);
        let st = status(&mut s, t).unwrap();
        assert_eq!((st.len(), st[0].available, st[0].grants.len()), (1, 10, 0));
    }
}
