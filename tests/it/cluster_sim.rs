//! Deterministic simulation of the escrow protocol (`spendb::cluster`,
//! issue #15): N nodes share two global limits through `MemStore` (the
//! linearizable store behind the etcd trait), on a simulated clock and a
//! lossy network, under seeded faults: requests lost before the store sees
//! them, replies lost after it applied them, nodes crashing with or without
//! their disk, nodes paused past their lease and resumed, janitors
//! reclaiming dead nodes' grants from reads that go stale.
//!
//! Checked after every step, for each limit: the true use (every local
//! reservation ever granted, on every node and incarnation) ≤ the limit;
//! the pool's `granted` = the sum of the live grants; `granted + consumed +
//! presumed` ≤ the limit. Each seed runs twice and must give the same
//! trace. A planted bug (reclaim without the fencing compares) must be
//! caught by some seed.
//!
//! `SPENDB_CLUSTER_SEEDS` (default 40) seeds of `SPENDB_CLUSTER_STEPS`
//! (default 2000) steps; `SPENDB_CLUSTER_SEED=<n>` replays one.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use spendb::cluster::escrow::{self, EscrowConfig, Fencing, Node, ReclaimPlan};
use spendb::cluster::kv::{Compare, GlobalStore, KeyValue, KvError, LeaseId, MemStore, Op};

const NODES: usize = 5;
const LIMITS: [(&str, u64); 2] = [("org:a", 20_000), ("org:a/team:t", 6_000)];
const TTL: u64 = 10_000;

/// The network between a node and the store: drops a request before the
/// store sees it, or its reply after the store applied it.
struct Net<'a> {
    store: &'a mut MemStore,
    rng: &'a mut SmallRng,
    /// Per mille of requests lost, and of replies lost.
    lose_request: u32,
    lose_reply: u32,
}

impl Net<'_> {
    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut MemStore) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        if self.rng.random_range(0..1000) < self.lose_request {
            return Err(KvError::Unavailable("request lost".into()));
        }
        let r = f(self.store);
        if self.rng.random_range(0..1000) < self.lose_reply {
            return Err(KvError::Unavailable("reply lost".into()));
        }
        r
    }
}

impl GlobalStore for Net<'_> {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, KvError> {
        self.call(|s| s.get(key))
    }
    fn range(&mut self, prefix: &str) -> Result<Vec<KeyValue>, KvError> {
        self.call(|s| s.range(prefix))
    }
    fn txn(&mut self, when: &[Compare], then: &[Op]) -> Result<bool, KvError> {
        self.call(|s| s.txn(when, then))
    }
    fn lease_grant(&mut self, ttl_ms: u64) -> Result<LeaseId, KvError> {
        self.call(|s| s.lease_grant(ttl_ms))
    }
    fn lease_keepalive(&mut self, lease: LeaseId) -> Result<(), KvError> {
        self.call(|s| s.lease_keepalive(lease))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Up,
    /// Stopped (SIGSTOP): does nothing, keeps its memory, lease runs out.
    Paused,
    /// Crashed: its disk (the node's grants and use) may come back.
    Down,
}

struct Sim {
    rng: SmallRng,
    store: MemStore,
    now: u64,
    nodes: Vec<Node>,
    life: Vec<Life>,
    registered: Vec<bool>,
    /// Every reservation granted, per limit: what was truly used.
    true_use: BTreeMap<&'static str, u64>,
    plans: Vec<ReclaimPlan>,
    fencing: Fencing,
    trace: std::collections::hash_map::DefaultHasher,
    stats: Stats,
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    reserved: u64,
    denied: u64,
    crashes: u64,
    reclaims: u64,
    lost: u64,
}

fn config() -> EscrowConfig {
    EscrowConfig {
        u_max: 700,
        chunk: 1_500,
        lease_ttl_ms: TTL,
    }
}

impl Sim {
    fn new(seed: u64, fencing: Fencing) -> Sim {
        let mut store = MemStore::new(1_000);
        for (limit, amount) in LIMITS {
            escrow::set_limit(&mut store, limit, amount).unwrap();
        }
        Sim {
            rng: SmallRng::seed_from_u64(seed),
            store,
            now: 1_000,
            nodes: (0..NODES)
                .map(|i| Node::new(&format!("n{i}"), config()))
                .collect(),
            life: vec![Life::Up; NODES],
            registered: vec![false; NODES],
            true_use: LIMITS.iter().map(|(l, _)| (*l, 0)).collect(),
            plans: Vec::new(),
            fencing,
            trace: Default::default(),
            stats: Stats::default(),
        }
    }

    /// The limits a node's reservations count against: the org, and the
    /// team for the first two nodes.
    fn limits_of(i: usize) -> &'static [(&'static str, u64)] {
        if i < 2 {
            &LIMITS
        } else {
            &LIMITS[..1]
        }
    }

    fn step(&mut self) -> Result<(), String> {
        let i = self.rng.random_range(0..NODES);
        let r = self.rng.random_range(0..1000);
        let (lose_request, lose_reply) =
            (self.rng.random_range(0..60), self.rng.random_range(0..60));
        let mut net = Net {
            store: &mut self.store,
            rng: &mut self.rng,
            lose_request,
            lose_reply,
        };
        let node = &mut self.nodes[i];
        let up = self.life[i] == Life::Up;
        let what: String = match r {
            _ if up && !self.registered[i] => {
                // (Re)register, then join every limit.
                match node.register(&mut net) {
                    Ok(true) => {
                        self.registered[i] = true;
                        for (limit, _) in Self::limits_of(i) {
                            let _ = node.join(&mut net, limit);
                        }
                        format!("n{i} registered epoch {}", node.epoch)
                    }
                    Ok(false) => format!("n{i} waits for its old lease"),
                    Err(e) => format!("n{i} register: {e}"),
                }
            }
            0..=399 if up => {
                let a = net.rng.random_range(1..120);
                let want: Vec<(&str, u64)> =
                    Self::limits_of(i).iter().map(|(l, _)| (*l, a)).collect();
                if node.reserve(&want) {
                    for (l, _) in &want {
                        *self.true_use.get_mut(l).unwrap() += a;
                    }
                    self.stats.reserved += 1;
                    format!("n{i} reserved {a}")
                } else {
                    // As the agent does: a denial asks for room at once.
                    self.stats.denied += 1;
                    let short: Vec<&str> = (want.iter())
                        .filter(|(l, a)| node.grants.get(*l).is_none_or(|g| g.used + a > g.granted))
                        .map(|(l, _)| *l)
                        .collect();
                    for l in &short {
                        let _ = node.refill(&mut net, l, a);
                    }
                    format!("n{i} denied {a}, refilled {short:?}")
                }
            }
            400..=519 if up => {
                let (limit, _) =
                    Self::limits_of(i)[net.rng.random_range(0..Self::limits_of(i).len())];
                format!("n{i} refill {limit}: {:?}", node.refill(&mut net, limit, 0))
            }
            520..=619 if up => format!("n{i} report: {:?}", node.report(&mut net)),
            620..=649 if up => {
                let (limit, _) = Self::limits_of(i)[0];
                format!("n{i} give back: {:?}", node.give_back(&mut net, limit, 0))
            }
            650..=689 if up => format!("n{i} sync: {:?}", node.sync(&mut net)),
            690..=759 if up => match node.lease.map(|l| net.lease_keepalive(l)) {
                Some(Err(KvError::NoLease(_))) => {
                    // Its lease ran out (a pause): it must register again.
                    self.registered[i] = false;
                    format!("n{i} lost its lease")
                }
                other => format!("n{i} keepalive {other:?}"),
            },
            760..=764 => {
                // A crash, with its disk (the node's figures) or without.
                self.stats.crashes += 1;
                self.life[i] = Life::Down;
                self.registered[i] = false;
                if net.rng.random_range(0..2) == 0 {
                    *node = Node::new(&node.name.clone(), config());
                    format!("n{i} crashed, disk lost")
                } else {
                    format!("n{i} crashed, disk kept")
                }
            }
            780..=799 if self.life[i] == Life::Up => {
                self.life[i] = Life::Paused;
                format!("n{i} paused")
            }
            800..=839 if self.life[i] != Life::Up => {
                // Back: a paused node resumes with what it believed; a
                // crashed one restarts and registers again.
                if self.life[i] == Life::Down {
                    self.registered[i] = false;
                }
                self.life[i] = Life::Up;
                format!("n{i} back")
            }
            840..=899 => {
                // A janitor reads a grant to reclaim (it may act much later).
                let (limit, _) = LIMITS[net.rng.random_range(0..LIMITS.len())];
                match escrow::plan_reclaim(&mut net, limit, &format!("n{i}")) {
                    Ok(Some(plan)) => {
                        self.plans.push(plan);
                        format!("janitor plans n{i} {limit}")
                    }
                    other => format!("janitor n{i} {limit}: {other:?}"),
                }
            }
            900..=939 if !self.plans.is_empty() => {
                let plan = self.plans.remove(net.rng.random_range(0..self.plans.len()));
                let done = escrow::reclaim(&mut net, &plan, config().u_max, self.fencing);
                if done == Ok(true) {
                    self.stats.reclaims += 1;
                }
                format!("janitor reclaims {} {}: {done:?}", plan.node, plan.limit)
            }
            _ => {
                // Time passes: sometimes past a lease.
                let ms = match net.rng.random_range(0..10) {
                    0 => TTL + 1_000,
                    _ => net.rng.random_range(0..2_000),
                };
                self.now += ms;
                self.store.set_time(self.now);
                format!("+{ms} ms")
            }
        };
        if what.contains("lost") {
            self.stats.lost += 1;
        }
        what.hash(&mut self.trace);
        self.check().map_err(|e| format!("{e} (after: {what})"))
    }

    fn check(&mut self) -> Result<(), String> {
        for (limit, amount) in LIMITS {
            let (pool, grants) = escrow::read_limit(&mut self.store, limit).unwrap();
            let used = self.true_use[limit];
            if used > amount {
                return Err(format!("{limit}: true use {used} > limit {amount}"));
            }
            let live: u64 = grants
                .iter()
                .filter(|(_, g)| g.presumed.is_none())
                .map(|(_, g)| g.granted)
                .sum();
            if pool.granted != live {
                return Err(format!(
                    "{limit}: pool.granted {} != live grants {live}",
                    pool.granted
                ));
            }
            if pool.granted + pool.consumed + pool.presumed > pool.limit {
                return Err(format!("{limit}: pool over its limit: {pool:?}"));
            }
            for (node, g) in &grants {
                if g.reported > g.granted && g.presumed.is_none() {
                    return Err(format!(
                        "{limit}: {node} reported {} of {} granted",
                        g.reported, g.granted
                    ));
                }
            }
        }
        Ok(())
    }
}

fn run(seed: u64, steps: usize, fencing: Fencing) -> Result<(u64, Stats, u64), String> {
    let mut sim = Sim::new(seed, fencing);
    for n in 1..=steps {
        sim.step()
            .map_err(|e| format!("seed {seed}, step {n}: {e}"))?;
    }
    let used: u64 = sim.true_use["org:a"];
    Ok((sim.trace.finish(), sim.stats, used))
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn escrow_never_lets_the_total_pass_the_limit() {
    let steps = env("SPENDB_CLUSTER_STEPS", 2000) as usize;
    let seeds: Vec<u64> = match std::env::var("SPENDB_CLUSTER_SEED") {
        Ok(s) => vec![s.parse().expect("SPENDB_CLUSTER_SEED is a number")],
        Err(_) => (1..=env("SPENDB_CLUSTER_SEEDS", 40)).collect(),
    };
    let mut total = Stats::default();
    let mut used_share = Vec::new();
    for seed in seeds {
        let (trace, stats, used) =
            run(seed, steps, Fencing::Checked).unwrap_or_else(|e| panic!("{e}"));
        let (again, _, _) = run(seed, steps, Fencing::Checked).unwrap();
        assert_eq!(trace, again, "seed {seed} did not reproduce the same run");
        total.reserved += stats.reserved;
        total.denied += stats.denied;
        total.crashes += stats.crashes;
        total.reclaims += stats.reclaims;
        total.lost += stats.lost;
        used_share.push(used * 100 / LIMITS[0].1);
    }
    used_share.sort();
    eprintln!(
        "cluster simulation: {} reservations, {} denied, {} crashes, {} reclaims, {} lost messages; org limit used at the end: median {} %; overshoot 0",
        total.reserved, total.denied, total.crashes, total.reclaims, total.lost, used_share[used_share.len() / 2]
    );
    // The faults happened, and the budget was really spent.
    assert!(total.crashes > 0 && total.reclaims > 0 && total.lost > 0);
    assert!(used_share[used_share.len() / 2] >= 50, "{used_share:?}");
}

#[test]
fn a_reclaim_without_its_fencing_compares_is_caught() {
    let caught = (1..=40).find_map(|seed| run(seed, 2000, Fencing::Unchecked).err());
    let e = caught.expect("no seed caught the planted bug");
    eprintln!("planted bug caught: {e}");
    assert!(e.contains("true use") || e.contains("pool"), "{e}");
}

/// Counts the store operations the nodes make.
struct Counting<'a> {
    store: &'a mut MemStore,
    ops: u64,
}

impl GlobalStore for Counting<'_> {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, KvError> {
        self.ops += 1;
        self.store.get(key)
    }
    fn range(&mut self, prefix: &str) -> Result<Vec<KeyValue>, KvError> {
        self.ops += 1;
        self.store.range(prefix)
    }
    fn txn(&mut self, when: &[Compare], then: &[Op]) -> Result<bool, KvError> {
        self.ops += 1;
        self.store.txn(when, then)
    }
    fn lease_grant(&mut self, ttl_ms: u64) -> Result<LeaseId, KvError> {
        self.ops += 1;
        self.store.lease_grant(ttl_ms)
    }
    fn lease_keepalive(&mut self, lease: LeaseId) -> Result<(), KvError> {
        self.ops += 1;
        self.store.lease_keepalive(lease)
    }
}

/// Room left on the other nodes when one is first denied for good (the
/// pool dry, its own grant short), as a share of the limit: 20 nodes, two
/// of them taking 70 % of the calls, the others giving back idle room
/// beyond a small reserve when the pool runs low (the recall). The issue's
/// goal is at most 5 %. Also the store operations per reservation.
#[test]
fn little_room_is_stranded_at_the_first_global_denial() {
    const N: usize = 20;
    let limit = "org:big";
    let amount = 1_000_000;
    let mut figures = Vec::new();
    for seed in 1..=10u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut store = MemStore::new(0);
        escrow::set_limit(&mut store, limit, amount).unwrap();
        let cfg = EscrowConfig {
            u_max: 5_000,
            chunk: 10_000,
            lease_ttl_ms: TTL,
        };
        let mut c = Counting {
            store: &mut store,
            ops: 0,
        };
        let mut nodes: Vec<Node> = (0..N).map(|i| Node::new(&format!("n{i}"), cfg)).collect();
        for n in nodes.iter_mut() {
            assert!(n.register(&mut c).unwrap());
            n.join(&mut c, limit).unwrap();
        }
        let setup = c.ops;
        let mut reservations = 0u64;
        let stranded = loop {
            let i = if rng.random_range(0..10) < 7 {
                rng.random_range(0..2)
            } else {
                rng.random_range(2..N)
            };
            let a = rng.random_range(1..200);
            let n = &mut nodes[i];
            let ok = n.reserve(&[(limit, a)])
                || (n.report(&mut c).is_ok() && n.reserve(&[(limit, a)]))
                || (n.refill(&mut c, limit, a).unwrap() > 0 && n.reserve(&[(limit, a)]));
            if ok {
                reservations += 1;
            } else {
                let idle: u64 = (nodes.iter())
                    .map(|n| n.grants[limit].granted - n.grants[limit].used)
                    .sum();
                break idle;
            }
            // Now and then a node looks at the pool and, if it runs low,
            // keeps a small reserve and gives the rest back.
            let j = rng.random_range(0..N);
            if rng.random_range(0..4) == 0 {
                nodes[j].relieve(&mut c, limit, 200).unwrap();
            }
        };
        let ops_per_reservation = (c.ops - setup) as f64 / reservations as f64;
        figures.push((stranded as f64 * 100.0 / amount as f64, ops_per_reservation));
    }
    let mut shares: Vec<f64> = figures.iter().map(|f| f.0).collect();
    shares.sort_by(f64::total_cmp);
    let mut ops: Vec<f64> = figures.iter().map(|f| f.1).collect();
    ops.sort_by(f64::total_cmp);
    eprintln!(
        "stranded at the first global denial: median {:.3} %, worst {:.3} % of the limit; store operations per reservation: median {:.3}",
        shares[shares.len() / 2],
        shares[shares.len() - 1],
        ops[ops.len() / 2]
    );
    assert!(shares[shares.len() - 1] <= 5.0, "{shares:?}");
}
