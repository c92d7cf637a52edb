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

use crate::common::env_u64;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use spendb::cluster::escrow::{self, EscrowConfig, Fencing, Node, ReclaimPlan};
use spendb::cluster::kv::{Compare, GlobalStore, KeyValue, KvError, LeaseId, MemStore, Op, Rev};

const NODES: usize = 5;
const LIMITS: [(&str, u64); 2] = [("org:a", 20_000), ("org:a/team:t", 6_000)];
const TTL: u64 = 10_000;

/// Per mille of transactions the network delivers twice.
const DUPLICATED: u32 = 20;

/// The network between a node and the store: drops a request before the
/// store sees it, or its reply after the store applied it, or delivers a
/// transaction twice.
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
    fn count(&mut self, prefix: &str) -> Result<u64, KvError> {
        self.call(|s| s.count(prefix))
    }
    fn revision(&mut self) -> Result<Rev, KvError> {
        self.call(|s| s.revision())
    }
    fn txn(&mut self, when: &[Compare], then: &[Op]) -> Result<bool, KvError> {
        // Now and then the network delivers a request twice: the store
        // applies the copy too, right after (its guard decides).
        let twice = self.rng.random_range(0..1000) < DUPLICATED;
        let r = self.call(|s| s.txn(when, then));
        if twice {
            let _ = self.store.txn(when, then);
        }
        r
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
                        let _ = node.refill(&mut net, l, a, config().chunk);
                    }
                    format!("n{i} denied {a}, refilled {short:?}")
                }
            }
            400..=519 if up => {
                let (limit, _) =
                    Self::limits_of(i)[net.rng.random_range(0..Self::limits_of(i).len())];
                format!(
                    "n{i} refill {limit}: {:?}",
                    node.refill(&mut net, limit, 0, config().chunk)
                )
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
                let done = escrow::reclaim(&mut net, &plan, self.fencing);
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

#[test]
fn escrow_never_lets_the_total_pass_the_limit() {
    let _turn = crate::common::etcd::cpu_turn();
    let steps = env_u64("SPENDB_CLUSTER_STEPS", 2000) as usize;
    let seeds: Vec<u64> = match std::env::var("SPENDB_CLUSTER_SEED") {
        Ok(s) => vec![s.parse().expect("SPENDB_CLUSTER_SEED is a number")],
        Err(_) => (1..=env_u64("SPENDB_CLUSTER_SEEDS", 40)).collect(),
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
    let _turn = crate::common::etcd::cpu_turn();
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
    fn count(&mut self, prefix: &str) -> Result<u64, KvError> {
        self.ops += 1;
        self.store.count(prefix)
    }
    fn revision(&mut self) -> Result<Rev, KvError> {
        self.ops += 1;
        self.store.revision()
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
    let _turn = crate::common::etcd::cpu_turn();
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
                || (n.refill(&mut c, limit, a, cfg.chunk).unwrap() > 0 && n.reserve(&[(limit, a)]));
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

/// The protocol at internet scale, by simulation (`SPENDB_CLUSTER_SCALE_NODES`,
/// default 1,000; `SPENDB_CLUSTER_SCALE_SECONDS` of simulated time, default
/// 300): one budget shared by nodes under skewed load (1 % hot at 40 calls/s,
/// 9 % warm at 2/s, the rest idle at one call a minute), nodes dying (their
/// leases run out and a janitor reclaims their grants) and new ones joining,
/// on `MemStore`. Each node renews its lease every 3 s, and every 5 s reports
/// what it has not reported and relieves the pool if it runs low; it reports
/// at once when half of `u_max` is unreported and refills when short. The
/// budget is sized to run dry near the end. Checked: overshoot 0 throughout
/// and at most 5 % of the limit stranded on other nodes at the first global
/// denial; printed: store operations per node per second, the share of calls
/// (before the budget ran dry) that waited for the store, and the stranded
/// share.
/// The scale runs' skewed load: node `i`'s calls per second, times 1000
/// (1 % of the nodes hot, 9 % warm, the rest nearly idle; a call is 100
/// tokens on average).
fn rate_mhz(i: usize) -> u64 {
    if i.is_multiple_of(100) {
        40_000
    } else if i % 100 < 10 {
        2_000
    } else {
        17
    }
}

/// An exponential inter-arrival time (ms) at `mhz` calls per 1000 s.
fn gap(rng: &mut SmallRng, mhz: u64) -> u64 {
    let u: f64 = rng.random_range(1e-9..1.0);
    (-u.ln() * 1e6 / mhz as f64) as u64
}

#[test]
fn a_thousand_nodes_share_one_budget() {
    let _turn = crate::common::etcd::cpu_turn();
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    let n_nodes = env_u64("SPENDB_CLUSTER_SCALE_NODES", 1_000) as usize;
    let seconds = env_u64("SPENDB_CLUSTER_SCALE_SECONDS", 300);
    let limit = "org:planet";
    let cfg = EscrowConfig {
        u_max: 20_000,
        chunk: 20_000,
        lease_ttl_ms: TTL,
    };
    // The room a node asks for: what it uses in 10 s at its rate (the
    // agent measures its rate; here it is known), at least one call's worth.
    let want_of = |i: usize| (rate_mhz(i) * 100 * 10 / 1000).max(200);
    let expected_use: u64 = (0..n_nodes)
        .map(|i| rate_mhz(i) * 100 * seconds / 1000)
        .sum();
    let amount = expected_use * 9 / 10;
    let mut rng = SmallRng::seed_from_u64(7);
    let mut store = MemStore::new(0);
    escrow::set_limit(&mut store, limit, amount).unwrap();
    let mut c = Counting {
        store: &mut store,
        ops: 0,
    };

    #[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
    enum Ev {
        Call,
        Tick,
        Keepalive,
        /// A janitor looks at a dead node's grant once its lease ran out.
        Reclaim,
    }
    let mut nodes: Vec<(Node, bool)> = Vec::new();
    let mut queue: BinaryHeap<Reverse<(u64, usize, Ev)>> = BinaryHeap::new();
    let join = |c: &mut Counting,
                nodes: &mut Vec<(Node, bool)>,
                queue: &mut BinaryHeap<Reverse<(u64, usize, Ev)>>,
                rng: &mut SmallRng,
                now: u64| {
        let i = nodes.len();
        let mut n = Node::new(&format!("n{i}"), cfg);
        assert!(n.register(c).unwrap());
        n.join(c, limit).unwrap();
        nodes.push((n, true));
        queue.push(Reverse((now + gap(rng, rate_mhz(i)), i, Ev::Call)));
        queue.push(Reverse((now + rng.random_range(0..5_000), i, Ev::Tick)));
        queue.push(Reverse((
            now + rng.random_range(0..3_000),
            i,
            Ev::Keepalive,
        )));
    };
    for _ in 0..n_nodes {
        join(&mut c, &mut nodes, &mut queue, &mut rng, 0);
    }
    let setup_ops = c.ops;
    let (mut used, mut calls, mut waited, mut deaths) = (0u64, 0u64, 0u64, 0u64);
    let mut first_denial: Option<(u64, u64)> = None;
    let end = seconds * 1000;
    while let Some(Reverse((t, i, ev))) = queue.pop() {
        if t > end {
            break;
        }
        c.store.set_time(t);
        if ev == Ev::Reclaim {
            let name = nodes[i].0.name.clone();
            assert!(
                c.get(&escrow::node_key(&name)).unwrap().is_none(),
                "{name}'s lease outlived it"
            );
            // (Nothing to reclaim if it never held room.)
            if let Some(plan) = escrow::plan_reclaim(&mut c, limit, &name).unwrap() {
                assert!(escrow::reclaim(&mut c, &plan, Fencing::Checked).unwrap());
            }
            continue;
        }
        if !nodes[i].1 {
            continue;
        }
        match ev {
            Ev::Call => {
                if first_denial.is_none() {
                    calls += 1;
                }
                let a = rng.random_range(1..200);
                let n = &mut nodes[i].0;
                let want = want_of(i);
                let mut ok = n.reserve(&[(limit, a)]);
                if !ok {
                    if first_denial.is_none() {
                        waited += 1;
                    }
                    ok = (n.report(&mut c).is_ok() && n.reserve(&[(limit, a)]))
                        || (n.refill(&mut c, limit, a, want).unwrap() > 0
                            && n.reserve(&[(limit, a)]));
                }
                let g = n.grants[limit];
                if ok {
                    used += a;
                    // In the background, after the reply: report at half of
                    // u_max, refill when less than half of `want` is left.
                    if g.used - g.reported >= cfg.u_max / 2 {
                        n.report(&mut c).unwrap();
                    }
                    if g.granted - g.used < want / 2 {
                        n.refill(&mut c, limit, 0, want).unwrap();
                    }
                } else if first_denial.is_none() {
                    let idle: u64 = (nodes.iter().filter(|(_, alive)| *alive))
                        .map(|(n, _)| n.grants[limit].granted - n.grants[limit].used)
                        .sum();
                    first_denial = Some((t, idle));
                }
                assert!(used <= amount, "overshoot: {used} > {amount}");
                queue.push(Reverse((t + gap(&mut rng, rate_mhz(i)), i, Ev::Call)));
            }
            Ev::Tick => {
                let n = &mut nodes[i].0;
                if n.grants[limit].used > n.grants[limit].reported {
                    n.report(&mut c).unwrap();
                }
                n.relieve(&mut c, limit, want_of(i)).unwrap();
                queue.push(Reverse((t + 5_000, i, Ev::Tick)));
                // Now and then a node dies; its room comes back by reclaim,
                // and a new node takes its place.
                if rng.random_range(0..2_000) == 0 {
                    nodes[i].1 = false;
                    deaths += 1;
                    queue.push(Reverse((t + TTL + 500, i, Ev::Reclaim)));
                    join(&mut c, &mut nodes, &mut queue, &mut rng, t);
                }
            }
            Ev::Keepalive => {
                let n = &mut nodes[i].0;
                if let Some(l) = n.lease {
                    let _ = c.lease_keepalive(l);
                }
                queue.push(Reverse((t + 3_000, i, Ev::Keepalive)));
            }
            Ev::Reclaim => unreachable!("handled above"),
        }
    }
    let ops_per_node_s = (c.ops - setup_ops) as f64 / (n_nodes as f64 * seconds as f64);
    let (denied_at, stranded) = first_denial.expect("the budget was sized to run dry");
    let stranded_pct = stranded as f64 * 100.0 / amount as f64;
    eprintln!(
        "{n_nodes} nodes, {seconds} s simulated: {calls} calls before the first global denial, {:.2} % of them waited for the store; {:.2} store operations per node per second; {deaths} nodes died and were reclaimed; first global denial at {:.0} s with {:.2} % of the limit on other nodes; overshoot 0",
        waited as f64 * 100.0 / calls as f64,
        ops_per_node_s,
        denied_at as f64 / 1000.0,
        stranded_pct
    );
    assert!(stranded_pct <= 5.0, "{stranded_pct} % stranded");
}

// ----- the agent and the state machine together -------------------------
//
// The same faults, with what a real node runs: `cluster::agent::Agent`
// deciding against `MemStore` (through the lossy `Net`), and a real
// `State` with cluster rules deciding every RESERVE, its grant lines
// changed only through the agent's `Local` calls. Nodes crash (with their
// state, as a restart with the disk replays it, or without) and pause past
// their lease. After every step the true use (every hold granted, on every
// node and incarnation, committed in full) must be within the limit.

mod agents {
    use std::cell::{Cell, RefCell};

    use rand::rngs::SmallRng;
    use rand::{RngExt, SeedableRng};
    use spendb::cluster::agent::{self, Agent, AgentConfig, Answer, Local, Shortage};
    use spendb::cluster::escrow;
    use spendb::cluster::kv::MemStore;
    use spendb::state::grant::{self, ClusterRules, GrantLine, GrantUse};
    use spendb::state::limit::{Blocker, Dim, LimitSpec, Period, Window, Zone};
    use spendb::state::price::Usage;
    use spendb::state::{Command, Config, Outcome, ReserveArgs, State};

    use super::Net;
    use crate::common::env_u64;

    const TTL: u64 = 3_000;

    pub(super) struct LocalState {
        pub(super) state: RefCell<State>,
        pub(super) now: Cell<u64>,
    }

    impl Local for LocalState {
        fn uses(&self) -> Result<Vec<GrantUse>, String> {
            Ok(self.state.borrow().grant_uses(self.now.get()))
        }
        fn confirm(&self, line: GrantLine) -> Result<(), String> {
            let mut st = self.state.borrow_mut();
            st.grant_confirm(self.now.get(), line, &mut Vec::new());
            Ok(())
        }
        fn lower(&self, key: &str, keep: u64) -> Result<Option<GrantLine>, String> {
            let mut st = self.state.borrow_mut();
            Ok(st.grant_lower(self.now.get(), key, keep, &mut Vec::new()))
        }
        fn cut_off(&self, yes: bool) -> Result<(), String> {
            self.state.borrow_mut().cut_off = yes;
            Ok(())
        }
        fn define(&self, cmd: Command) -> Result<(), String> {
            self.state
                .borrow_mut()
                .apply(self.now.get(), &cmd, &mut Vec::new());
            Ok(())
        }
    }

    fn fresh_state(allowance_ppm: u64) -> State {
        State::new(Config {
            cluster: Some(ClusterRules {
                partition_allowance_ppm: allowance_ppm,
                ..ClusterRules::default()
            }),
            ..Config::default()
        })
    }

    /// Each node's epoch, whether it is registered, and its TOKENS lines
    /// (epoch, base, granted, reported, used): what a failure prints.
    #[allow(clippy::type_complexity)]
    fn token_lines(
        nodes: &[SimNode],
        now: u64,
    ) -> Vec<(u64, bool, Vec<(u64, u64, u64, u64, u64)>)> {
        (nodes.iter())
            .map(|n| {
                let u = (n.local.state.borrow().grant_uses(now).into_iter())
                    .filter(|u| u.line.spec.dim == Dim::Tokens)
                    .map(|u| {
                        (
                            u.line.epoch,
                            u.line.base,
                            u.line.granted,
                            u.line.reported,
                            u.used,
                        )
                    })
                    .collect();
                (n.agent.node.epoch, n.agent.registered, u)
            })
            .collect()
    }

    /// A hold granted and left open, to be committed later (perhaps after
    /// it expired).
    struct OpenHold {
        node: usize,
        id: String,
        tokens: u64,
        /// By the granting node's clock.
        expires_at: u64,
        /// Whether the true use still counts it (until it expires).
        counted: bool,
        /// The day its request was counted in, and when it was granted.
        day: u64,
        at: u64,
    }

    impl OpenHold {
        /// It expired unused (or its node lost it): its tokens, its
        /// request in its day, and its request in the rolling window are
        /// no longer used.
        fn uncount(
            &self,
            tokens: &mut u64,
            requests: &mut std::collections::BTreeMap<u64, u64>,
            times: &mut Vec<u64>,
        ) {
            *tokens -= self.tokens;
            *requests.get_mut(&self.day).unwrap() -= 1;
            if let Some(p) = times.iter().position(|t| *t == self.at) {
                times.remove(p);
            }
        }
    }

    /// Usage booked past a node's grants is charged to the pools before
    /// it is acknowledged, as the engine has the agent do.
    fn absorb(n: &mut SimNode, net: &mut Net) {
        let keys: Vec<(String, u64)> = std::mem::take(&mut n.local.state.borrow_mut().overdrawn)
            .into_iter()
            .collect();
        if !keys.is_empty() {
            let t = n.local.now.get();
            let _ = n.agent.absorb(net, &n.local, &keys, t);
        }
    }

    struct SimNode {
        local: LocalState,
        agent: Agent,
        /// Does nothing until then (a pause past its lease).
        paused_until: u64,
    }

    fn config() -> AgentConfig {
        AgentConfig {
            report_every_ms: 1_000,
            relieve_every_ms: 1_000,
            definitions_every_ms: 200,
            ..AgentConfig::new(TTL)
        }
    }

    fn limits(rolling_only: bool) -> Vec<LimitSpec> {
        if rolling_only {
            return vec![LimitSpec {
                dim: Dim::Requests,
                window: Window::Rolling(ROLLING_MS),
                amount: ROLLING_LIMIT,
            }];
        }
        vec![
            LimitSpec {
                dim: Dim::Tokens,
                window: Window::Total,
                amount: 40_000,
            },
            LimitSpec {
                dim: Dim::Requests,
                window: Window::Calendar(Period::Day, Zone::UTC),
                amount: 400,
            },
            LimitSpec {
                dim: Dim::Requests,
                window: Window::Rolling(ROLLING_MS),
                amount: ROLLING_LIMIT,
            },
        ]
    }

    const ROLLING_MS: u64 = 10_000;
    const ROLLING_LIMIT: u64 = 60;

    /// The most requests granted in any rolling window as a node's ring
    /// counts it (a request counts until its sub-bucket is `n` buckets
    /// old), among `times`, the grants' times, at each of them.
    fn rolling_peak(times: &[u64]) -> (u64, u64) {
        let w = spendb::state::limit::Ring::width_of(ROLLING_MS);
        let n = ROLLING_MS.div_ceil(w);
        let mut peak = (0, 0);
        for &t in times {
            let c = times
                .iter()
                .filter(|&&x| x <= t && x / w + n > t / w)
                .count() as u64;
            if c > peak.0 {
                peak = (c, t);
            }
        }
        peak
    }

    /// One seed: Ok(granted calls, crashes) or the first violation.
    /// One seed: Ok(granted calls, crashes, the rolling window's peak, the
    /// most tokens granted past the limit) or the first violation. Nodes
    /// have a partition allowance of `allowance_ppm` (millionths): each
    /// incarnation may pass each limit by that much (one restarted without
    /// its disk is a new node as far as the bound goes).
    fn run(
        seed: u64,
        steps: usize,
        rolling_only: bool,
        allowance_ppm: u64,
        skew_ms: u64,
    ) -> Result<(u64, u64, u64, u64), String> {
        run_with(
            seed,
            steps,
            rolling_only,
            allowance_ppm,
            skew_ms,
            false,
            false,
        )
    }

    /// `run`, and with `with_spend` the nodes also book usage outside the
    /// RESERVE rules: SPEND, COMMITs past their holds, and holds committed
    /// after they expired. The bound is then the limit plus that usage
    /// (what a single node lets through too). `lossless`: no request or
    /// reply is lost and crashes keep the disk, so every use is charged
    /// to the pool as it is booked, which is checked after every step:
    /// the tokens used are at most the pool's charges plus what the agents
    /// could not charge yet (booked while their node was not registered),
    /// or could not charge before their node crashed.
    #[allow(clippy::too_many_arguments)]
    fn run_with(
        seed: u64,
        steps: usize,
        rolling_only: bool,
        allowance_ppm: u64,
        skew_ms: u64,
        with_spend: bool,
        lossless: bool,
    ) -> Result<(u64, u64, u64, u64), String> {
        let lose = if lossless { 0 } else { 20 };
        let mut rng = SmallRng::seed_from_u64(seed);
        // Each node's clock is off by up to `skew_ms`, either way.
        let skew = skew_ms as i64;
        let mut skews: Vec<i64> = (0..4).map(|_| rng.random_range(-skew..=skew)).collect();
        let mut store = MemStore::new(0);
        // Start 20 s before a UTC midnight: the day's pool changes midway.
        let mut now = 1_796_256_000_000 - 20_000;
        let budget = Command::BudgetSet {
            scope: "org:a".into(),
            // A rolling window is measured by each node's own clock: with skewed
            // clocks the check below could not say which window a request is in.
            limits: (limits(rolling_only).into_iter())
                .filter(|l| skew_ms == 0 || !matches!(l.window, Window::Rolling(_)))
                .collect(),
        };
        store.set_time(now);
        agent::publish(&mut store, &budget, now).map_err(|e| e.to_string())?;
        let mut nodes: Vec<SimNode> = (0..4)
            .map(|i| SimNode {
                local: LocalState {
                    state: RefCell::new(fresh_state(allowance_ppm)),
                    now: Cell::new(now),
                },
                agent: Agent::new(&format!("n{i}"), config()),
                paused_until: 0,
            })
            .collect();
        // The true use: tokens in total (every COMMIT's usage, every
        // SPEND, and the holds still open), requests per day.
        let mut tokens = 0u64;
        let mut requests: std::collections::BTreeMap<u64, u64> = Default::default();
        // Of that, what was booked outside the RESERVE rules, which a
        // single node lets past its limit too: SPEND, what a COMMIT used
        // past its hold, a COMMIT after its hold expired (tokens; requests
        // per day).
        let mut unruled = 0u64;
        let mut unruled_requests: std::collections::BTreeMap<u64, u64> = Default::default();
        // Holds granted and left open, to be committed later (perhaps
        // after they expired).
        let mut open: Vec<OpenHold> = Vec::new();
        // Booked outside the rules and not charged when its node crashed.
        let mut uncharged = 0u64;
        let mut times: Vec<u64> = Vec::new();
        // Node incarnations so far (each crash without the disk adds one).
        let mut incarnations = 4;
        let mut over = 0;
        let mut max_peak = 0;
        let (mut granted, mut crashes) = (0u64, 0u64);
        for step in 0..steps {
            now += rng.random_range(1..120);
            store.set_time(now);
            let i = rng.random_range(0..nodes.len());
            let n = &mut nodes[i];
            // The node's own clock: off by its skew.
            let t = now.saturating_add_signed(skews[i]);
            n.local.now.set(t);
            if n.paused_until > now {
                continue;
            }
            let mut net = Net {
                store: &mut store,
                rng: &mut rng,
                lose_request: lose,
                lose_reply: lose,
            };
            let roll = net.rng.random_range(0..100);
            match roll {
                // A node that has not read the definitions refuses (the
                // engine's CLUSTERDOWN).
                0..=59 if !n.agent.definitions_loaded => {}
                // SPEND: usage without a hold.
                0..=2 if with_spend => {
                    let amount = net.rng.random_range(1..600);
                    let spend = Command::Spend {
                        run: None,
                        id: None,
                        scope: "org:a/agent:y".into(),
                        model: "gpt-4o".into(),
                        usage: Usage {
                            input: amount,
                            ..Usage::default()
                        },
                    };
                    let o = (n.local.state.borrow_mut()).decide(t, &spend, None, &mut Vec::new());
                    assert!(matches!(o, Outcome::Spent(_)), "{o:?}");
                    absorb(n, &mut net);
                    tokens += amount;
                    unruled += amount;
                    let day = t / 86_400_000;
                    *requests.entry(day).or_default() += 1;
                    *unruled_requests.entry(day).or_default() += 1;
                }
                // A hold left open is committed, perhaps after it expired.
                3..=5 if with_spend && open.iter().any(|h| h.node == i) => {
                    let at = open.iter().position(|h| h.node == i).unwrap();
                    let h = open.remove(at);
                    if h.counted {
                        h.uncount(&mut tokens, &mut requests, &mut times);
                    }
                    let (id, amount, expires_at, day) = (h.id, h.tokens, h.expires_at, h.day);
                    let used = amount + net.rng.random_range(0..200);
                    let commit = Command::Commit {
                        hold: id,
                        usage: Usage {
                            input: used,
                            ..Usage::default()
                        },
                    };
                    let o = (n.local.state.borrow_mut()).decide(t, &commit, None, &mut Vec::new());
                    let Outcome::Committed(c) = o else {
                        panic!("step {step}: {o:?}");
                    };
                    assert_eq!(c.late, t >= expires_at, "step {step}");
                    absorb(n, &mut net);
                    // Its usage and request: in the hold's day, or, after
                    // it expired and gave its room back, all of it past
                    // the rules, today.
                    tokens += used;
                    let today = t / 86_400_000;
                    *requests
                        .entry(if c.late { today } else { day })
                        .or_default() += 1;
                    if c.late {
                        unruled += used;
                        *unruled_requests.entry(today).or_default() += 1;
                    } else {
                        unruled += used - amount;
                    }
                }
                0..=59 => {
                    let amount = net.rng.random_range(1..600);
                    // With SPEND in play, some holds live a few seconds
                    // and are committed later, maybe late.
                    let keep_open = with_spend && net.rng.random_range(0..5) == 0;
                    let ttl = net.rng.random_range(500..4_000);
                    let r = Command::Reserve(ReserveArgs {
                        ttl_ms: keep_open.then_some(ttl),
                        ..ReserveArgs::new(format!("h{step}"), "org:a/agent:x", "gpt-4o", amount, 0)
                    });
                    let mut outcome =
                        n.local
                            .state
                            .borrow_mut()
                            .decide(t, &r, None, &mut Vec::new());
                    for _ in 0..8 {
                        let Outcome::Denied(d) = &outcome else { break };
                        if !matches!(d.reason, Blocker::Grant | Blocker::Unreported) {
                            break;
                        }
                        let short = Shortage::of(d, t).unwrap();
                        let mut net = Net {
                            store: &mut store,
                            rng: &mut rng,
                            lose_request: lose,
                            lose_reply: lose,
                        };
                        if n.agent.ask(&mut net, &n.local, &short, true, t) != Ok(Answer::Moved) {
                            break;
                        }
                        outcome = n
                            .local
                            .state
                            .borrow_mut()
                            .decide(t, &r, None, &mut Vec::new());
                    }
                    if let Outcome::Granted(g) = outcome {
                        granted += 1;
                        tokens += amount;
                        // The day as the granting node's clock has it.
                        let day = t / 86_400_000;
                        *requests.entry(day).or_default() += 1;
                        times.push(t);
                        if keep_open {
                            open.push(OpenHold {
                                node: i,
                                id: format!("h{step}"),
                                tokens: amount,
                                expires_at: g.expires_at,
                                counted: true,
                                day,
                                at: t,
                            });
                        } else {
                            // Now and then a call uses more than it held.
                            let over = match with_spend && rng.random_range(0..10) == 0 {
                                true => rng.random_range(1..300),
                                false => 0,
                            };
                            let commit = Command::Commit {
                                hold: format!("h{step}"),
                                usage: Usage {
                                    input: amount + over,
                                    ..Usage::default()
                                },
                            };
                            n.local
                                .state
                                .borrow_mut()
                                .apply(t, &commit, &mut Vec::new());
                            let mut net = Net {
                                store: &mut store,
                                rng: &mut rng,
                                lose_request: lose,
                                lose_reply: lose,
                            };
                            absorb(n, &mut net);
                            tokens += over;
                            unruled += over;
                        }
                    }
                }
                60..=93 => n.agent.tick(&mut net, &n.local, t),
                94..=96 => {
                    // A crash: with the disk the state comes back as the
                    // ledger replays it; without it, empty.
                    crashes += 1;
                    // (With an allowance, crashes keep the disk: one
                    // without it is a new node for the bound.)
                    if net.rng.random_range(0..2) == 0 && allowance_ppm == 0 && !lossless {
                        incarnations += 1;
                        n.local.state.replace(fresh_state(allowance_ppm));
                        // Its open holds are gone with it: never committed.
                        open.retain(|h| {
                            if h.node == i && h.counted {
                                h.uncount(&mut tokens, &mut requests, &mut times);
                            }
                            h.node != i
                        });
                    }
                    // What its agent had not charged yet is charged from
                    // the pool's room when the grant is refilled, in full
                    // when it closes (docs/CLUSTER.md): the strong check
                    // below allows for it.
                    uncharged += n.agent.unabsorbed();
                    n.agent = Agent::new(&format!("n{i}"), config());
                    // Its clock drifts a little across the restart.
                    if skew_ms > 0 {
                        skews[i] += net.rng.random_range(-100..=100);
                    }
                }
                _ => n.paused_until = now + TTL + net.rng.random_range(0..TTL),
            }
            // The bound: every limit, every period.
            // What the nodes may pass each limit by, in all.
            let slack = |limit: u64| limit * allowance_ppm / 1_000_000 * incarnations;
            // Holds that expired unused gave their room back: no use.
            for h in open.iter_mut().filter(|h| h.counted) {
                if now.saturating_add_signed(skews[h.node]) >= h.expires_at {
                    h.uncount(&mut tokens, &mut requests, &mut times);
                    h.counted = false;
                }
            }
            over = over.max(tokens.saturating_sub(40_000 + unruled));
            if tokens > 40_000 + slack(40_000) + unruled && !rolling_only {
                let st = escrow::read_limit(&mut store, "org:a|TOKENS|PER TOTAL|0");
                let views = token_lines(&nodes, now);
                return Err(format!(
                    "step {step}: {tokens} tokens granted of 40,000; store {st:?}; nodes {views:?}"
                ));
            }
            let over_day = (requests.iter()).find(|(day, r)| {
                let unruled = unruled_requests.get(day).copied().unwrap_or(0);
                **r > 400 + slack(400) + unruled && !rolling_only
            });
            if let Some((day, r)) = over_day {
                return Err(format!("step {step}: {r} requests on day {day} of 400"));
            }
            times.retain(|&t| t + 2 * ROLLING_MS > now);
            let (peak, at) = rolling_peak(&times);
            max_peak = max_peak.max(peak);
            if skew_ms == 0 && peak > ROLLING_LIMIT + slack(ROLLING_LIMIT) {
                return Err(format!(
                    "step {step}: {peak} requests in the rolling window at {at} of {ROLLING_LIMIT}"
                ));
            }
            let (pool, grants) = escrow::read_limit(&mut store, "org:a|TOKENS|PER TOTAL|0")
                .map_err(|e| e.to_string())?;
            let live: u64 = (grants.iter())
                .filter(|(_, g)| g.presumed.is_none())
                .map(|(_, g)| g.granted)
                .sum();
            // The pool is charged what a node used past its grant, too:
            // past the limit by no more than the use outside the rules.
            let charged = pool.granted + pool.consumed + pool.presumed;
            if pool.granted != live || charged > pool.limit + slack(pool.limit) + unruled {
                return Err(format!("step {step}: pool {pool:?}, live grants {live}"));
            }
            if lossless && !rolling_only {
                // Booked while its node was not registered (paused past
                // its lease): charged once it is again.
                let pending: u64 =
                    uncharged + nodes.iter().map(|n| n.agent.unabsorbed()).sum::<u64>();
                if tokens > charged + pending {
                    let views = token_lines(&nodes, now);
                    return Err(format!(
                        "step {step}: {tokens} tokens used, the pool charged {charged} \
                         ({pool:?}, {grants:?}), {pending} past grants not yet charged; nodes \
                         (epoch, registered, [(line epoch, base, granted, reported, used)]): {views:?}"
                    ));
                }
            }
        }
        Ok((granted, crashes, max_peak, over))
    }

    #[test]
    fn agents_on_real_states_never_pass_the_limit() {
        let _turn = crate::common::etcd::cpu_turn();
        let seeds = env_u64("SPENDB_CLUSTER_SEEDS", 40);
        let steps = env_u64("SPENDB_CLUSTER_STEPS", 2_000) as usize;
        let (mut calls, mut crashes) = (0, 0);
        for seed in 0..seeds {
            let (g, c, _, _) =
                run(seed, steps, false, 0, 0).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            calls += g;
            crashes += c;
        }
        eprintln!("agents: {seeds} seeds, {calls} calls granted, {crashes} crashes");
        assert!(calls > seeds * 100, "the nodes got room: {calls} calls");
    }

    /// Nodes whose clocks are up to 3 s apart (and drift across restarts)
    /// around a UTC midnight: the total and each day's requests, the day
    /// as each granting node's clock has it, stay within their limits —
    /// clocks only pick a period's pool.
    #[test]
    fn agents_with_skewed_clocks_keep_every_limit() {
        let _turn = crate::common::etcd::cpu_turn();
        let seeds = env_u64("SPENDB_CLUSTER_SEEDS", 40);
        let steps = env_u64("SPENDB_CLUSTER_STEPS", 2_000) as usize;
        let mut calls = 0;
        for seed in 0..seeds {
            let (g, _, _, _) =
                run(seed, steps, false, 0, 1_500).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            calls += g;
        }
        assert!(calls > seeds * 100, "the nodes got room: {calls} calls");
    }

    /// With a partition allowance of 1 %, a node cut off from the store
    /// (here: any request or reply lost) may pass each limit by 1 % of it:
    /// four nodes (crashing with their disks) never pass it by more than
    /// 4 %, and some pass it. A planted allowance three times too large is
    /// caught.
    #[test]
    fn agents_pass_a_limit_by_no_more_than_their_partition_allowances() {
        let _turn = crate::common::etcd::cpu_turn();
        let seeds = env_u64("SPENDB_CLUSTER_SEEDS", 40);
        let steps = env_u64("SPENDB_CLUSTER_STEPS", 2_000) as usize;
        let mut overs = Vec::new();
        for seed in 0..seeds {
            for rolling_only in [false, true] {
                let (_, _, _, over) = run(seed, steps, rolling_only, 10_000, 0)
                    .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                if !rolling_only {
                    overs.push(over);
                }
            }
        }
        overs.sort_unstable();
        eprintln!("partition allowance: tokens past the limit per seed {overs:?}");
        assert!(
            overs.iter().any(|o| *o > 0),
            "the allowance is used when cut off"
        );
    }

    /// Nodes that also book usage outside the RESERVE rules — SPEND,
    /// COMMITs past their holds, holds committed after they expired —
    /// with lost and late replies, crashes and pauses: the cluster's use
    /// never passes the limit by more than that usage (which a single node
    /// lets through too), and every pool's charges say the same; without
    /// losses, every token used is charged to the pool as it is booked.
    #[test]
    fn agents_booking_past_the_rules_pass_a_limit_by_no_more_than_that() {
        let _turn = crate::common::etcd::cpu_turn();
        let seeds = env_u64("SPENDB_CLUSTER_SEEDS", 40);
        let steps = env_u64("SPENDB_CLUSTER_STEPS", 2_000) as usize;
        let mut calls = 0;
        for seed in 0..seeds {
            for lossless in [false, true] {
                let (g, _, _, _) = run_with(seed, steps, false, 0, 0, true, lossless)
                    .unwrap_or_else(|e| panic!("seed {seed} (lossless {lossless}): {e}"));
                calls += g;
            }
        }
        assert!(calls > seeds * 100, "the nodes got room: {calls} calls");
    }

    /// Two nodes sharing `org:s TOKENS <limit> PER TOTAL`, registered and
    /// watching, at `now`.
    fn two_total_nodes(now: u64, limit: u64) -> (MemStore, [SimNode; 2]) {
        two_nodes_with(now, &total_budget(limit))
    }

    fn total_budget(limit: u64) -> Command {
        Command::BudgetSet {
            scope: "org:s".into(),
            limits: vec![LimitSpec {
                dim: Dim::Tokens,
                window: Window::Total,
                amount: limit,
            }],
        }
    }

    /// A command on a node as the engine runs it: a RESERVE short of its
    /// grant asks the agent (at most 8 times), and usage booked past the
    /// grants is charged to the pool before the answer.
    fn on_node(n: &mut SimNode, store: &mut MemStore, cmd: &Command, t: u64) -> Outcome {
        n.local.now.set(t);
        let decide = || (n.local.state.borrow_mut()).decide(t, cmd, None, &mut Vec::new());
        let mut outcome = decide();
        for _ in 0..8 {
            let Outcome::Denied(d) = &outcome else { break };
            if !matches!(d.reason, Blocker::Grant | Blocker::Unreported) {
                break;
            }
            let short = Shortage::of(d, t).unwrap();
            if n.agent.ask(store, &n.local, &short, true, t) != Ok(Answer::Moved) {
                break;
            }
            outcome = decide();
        }
        let keys: Vec<(String, u64)> = std::mem::take(&mut n.local.state.borrow_mut().overdrawn)
            .into_iter()
            .collect();
        if !keys.is_empty() {
            n.agent.absorb(store, &n.local, &keys, t).unwrap();
        }
        outcome
    }

    fn spend(tokens: u64) -> Command {
        Command::Spend {
            run: None,
            id: None,
            scope: "org:s/agent:x".into(),
            model: "gpt-4o".into(),
            usage: Usage {
                input: tokens,
                ..Usage::default()
            },
        }
    }

    fn reserve(id: &str, tokens: u64, ttl_ms: Option<u64>) -> Command {
        Command::Reserve(ReserveArgs {
            ttl_ms,
            ..ReserveArgs::new(id, "org:s/agent:x", "gpt-4o", tokens, 0)
        })
    }

    fn commit(id: &str, tokens: u64) -> Command {
        Command::Commit {
            hold: id.into(),
            usage: Usage {
                input: tokens,
                ..Usage::default()
            },
        }
    }

    /// RESERVEs of 1,000 tokens (each committed as held) until one is
    /// denied: the tokens granted.
    fn drain(mut run: impl FnMut(&Command) -> Outcome, prefix: &str) -> u64 {
        let mut granted = 0;
        for i in 0.. {
            let id = format!("{prefix}{i}");
            match run(&reserve(&id, 1_000, None)) {
                Outcome::Granted(_) => {
                    granted += 1_000;
                    assert!(matches!(run(&commit(&id, 1_000)), Outcome::Committed(_)));
                }
                Outcome::Denied(_) => return granted,
                other => panic!("{other:?}"),
            }
        }
        unreachable!()
    }

    /// What a single node grants after the same usage: the reference.
    fn single_node(limit: u64, t: u64, before: &[(Command, u64)]) -> u64 {
        let mut st = State::new(Config::default());
        st.apply(t, &total_budget(limit), &mut Vec::new());
        let mut last = t;
        for (cmd, at) in before {
            st.decide(*at, cmd, None, &mut Vec::new());
            last = *at;
        }
        drain(|c| st.decide(last, c, None, &mut Vec::new()), "s")
    }

    /// The first example, and its two other paths: usage booked
    /// on node a past its grant (a SPEND of 25,000 on a line it never
    /// joined; a COMMIT of 20,000 on a hold of 1,000; a hold of 2,000
    /// committed with 9,000 after it expired) is charged to the pool at
    /// once, so node b, holding no room, is granted exactly what a single
    /// node given the same commands grants — not the whole limit again.
    #[test]
    fn usage_past_a_grant_is_charged_to_the_pool_so_the_cluster_answers_as_one_node() {
        let t0 = 1_796_256_000_000;
        let cases: Vec<Vec<(Command, u64)>> = vec![
            vec![(spend(25_000), t0)],
            vec![(reserve("o", 1_000, None), t0), (commit("o", 20_000), t0)],
            vec![
                (reserve("l", 2_000, Some(1_000)), t0),
                (commit("l", 9_000), t0 + 5_000),
            ],
            // Spent past the limit: nothing more anywhere.
            vec![(spend(20_000), t0), (spend(15_000), t0 + 1)],
        ];
        for before in cases {
            let (mut store, [mut a, mut b]) = two_total_nodes(t0, 30_000);
            let mut last = t0;
            for (cmd, at) in &before {
                on_node(&mut a, &mut store, cmd, *at);
                last = *at;
            }
            let cluster = drain(|c| on_node(&mut b, &mut store, c, last), "b");
            let single = single_node(30_000, t0, &before);
            assert_eq!(cluster, single, "after {before:?}");
            assert!(a.agent.stats.absorbed > 0, "{:?}", a.agent.stats);
            // The pool says it too: the limit, or all that was booked.
            let (pool, _) = escrow::read_limit(&mut store, "org:s|TOKENS|PER TOTAL|0").unwrap();
            let charged = pool.granted + pool.consumed + pool.presumed;
            assert!(charged >= 30_000, "{pool:?}");
        }
    }

    /// Node b holds room it has not used when node a books usage past its
    /// grant and the pool runs low: a's charge recalls it, and b gives it
    /// back in its next round, so b is then granted what a single node
    /// would be. The only slack is what b used of its room before the
    /// recall reached it.
    #[test]
    fn usage_past_a_grant_recalls_the_other_nodes_idle_room() {
        let t0 = 1_796_256_000_000;
        let (mut store, [mut a, mut b]) = two_total_nodes(t0, 30_000);
        // b takes room ahead: a RESERVE, then rounds at its rate.
        let mut t = t0;
        for i in 0..3 {
            assert!(matches!(
                on_node(
                    &mut b,
                    &mut store,
                    &reserve(&format!("w{i}"), 1_000, None),
                    t
                ),
                Outcome::Granted(_)
            ));
            on_node(&mut b, &mut store, &commit(&format!("w{i}"), 1_000), t);
            t += 100;
            b.agent.tick(&mut store, &b.local, t);
        }
        let line = |n: &SimNode, t| {
            (n.local.state.borrow().grant_uses(t).into_iter())
                .find(|u| u.line.spec.dim == Dim::Tokens)
                .unwrap()
        };
        let idle = line(&b, t).line.granted - line(&b, t).used;
        assert!(idle > 0, "b holds idle room: {:?}", line(&b, t));
        let recalls = a.agent.stats.recalls;
        on_node(&mut a, &mut store, &spend(25_000), t);
        assert_eq!(
            a.agent.stats.recalls,
            recalls + 1,
            "the pool is low: a recalls"
        );
        // b's watch delivers the recall; its next round gives back.
        b.agent.watched(None);
        b.local.now.set(t + 10);
        b.agent.tick(&mut store, &b.local, t + 10);
        let u = line(&b, t + 10);
        assert_eq!(u.line.granted, u.used, "b gave back its idle room");
        let cluster = 3_000 + drain(|c| on_node(&mut b, &mut store, c, t + 20), "b");
        let single = single_node(
            30_000,
            t0,
            &[
                (reserve("w0", 1_000, None), t0),
                (commit("w0", 1_000), t0),
                (reserve("w1", 1_000, None), t0),
                (commit("w1", 1_000), t0),
                (reserve("w2", 1_000, None), t0),
                (commit("w2", 1_000), t0),
                (spend(25_000), t),
            ],
        ) + 3_000;
        assert_eq!(cluster, single, "b's room came back before it used it");
    }

    /// Nodes a and b, registered at `now`, sharing `org:w`'s limit of
    /// `limit` requests in a rolling window of `window_ms`.
    fn two_nodes(now: u64, window_ms: u64, limit: u64) -> (MemStore, [SimNode; 2]) {
        let budget = Command::BudgetSet {
            scope: "org:w".into(),
            limits: vec![LimitSpec {
                dim: Dim::Requests,
                window: Window::Rolling(window_ms),
                amount: limit,
            }],
        };
        two_nodes_with(now, &budget)
    }

    /// Nodes a and b on a fresh store with `budget` in it, registered and
    /// watching, at `now`.
    fn two_nodes_with(now: u64, budget: &Command) -> (MemStore, [SimNode; 2]) {
        let mut store = MemStore::new(now);
        agent::publish(&mut store, budget, now).unwrap();
        let mut nodes = ["a", "b"].map(|name| SimNode {
            local: LocalState {
                state: RefCell::new(fresh_state(0)),
                now: Cell::new(now),
            },
            agent: Agent::new(name, config()),
            paused_until: 0,
        });
        for n in &mut nodes {
            n.agent.watched(None);
            n.agent.tick(&mut store, &n.local, now);
            assert!(n.agent.registered && n.agent.definitions_loaded);
        }
        (store, nodes)
    }

    /// One RESERVE of a request on `n` at `t`, asking its agent as the
    /// engine does (a recall's poll included: `recalled` is then told to
    /// `other`, whose watch would deliver it, and `other` runs a round):
    /// whether it was granted (and committed).
    fn request(
        n: &mut SimNode,
        other: &mut SimNode,
        store: &mut MemStore,
        id: &str,
        t: u64,
    ) -> bool {
        n.local.now.set(t);
        other.local.now.set(t);
        let r = Command::Reserve(ReserveArgs::new(id, "org:w", "gpt-4o", 1, 1));
        let decide = || {
            n.local
                .state
                .borrow_mut()
                .decide(t, &r, None, &mut Vec::new())
        };
        let mut outcome = decide();
        let mut first = true;
        for _ in 0..8 {
            let Outcome::Denied(d) = &outcome else { break };
            if d.reason != Blocker::Grant {
                break;
            }
            let short = Shortage::of(d, t).unwrap();
            match n.agent.ask(store, &n.local, &short, first, t).unwrap() {
                Answer::Moved => {}
                Answer::Dry { recalled: true, .. } => {
                    other.agent.watched(None);
                    other.agent.tick(store, &other.local, t);
                    first = false;
                    if n.agent.ask(store, &n.local, &short, false, t).unwrap() != Answer::Moved {
                        break;
                    }
                }
                _ => break,
            }
            outcome = decide();
        }
        let granted = matches!(outcome, Outcome::Granted(_));
        if granted {
            let commit = Command::Commit {
                hold: id.into(),
                usage: Usage {
                    input: 1,
                    output: 1,
                    ..Usage::default()
                },
            };
            n.local
                .state
                .borrow_mut()
                .apply(t, &commit, &mut Vec::new());
        }
        granted
    }

    /// Node a takes a burst of requests, then sits idle; its decaying rate
    /// still takes room of the next grant period ahead of use. Node b takes
    /// requests until denied: its recall brings a's room back, and a's
    /// rounds do not take it again while the recall lasts, so b is denied
    /// only when the window holds the whole limit.
    #[test]
    fn recalled_rolling_room_is_not_taken_back_ahead_of_use() {
        const LIMIT: u64 = 50;
        let span = grant::rolling_span(ROLLING_MS);
        // Late in a grant period: a's burst ends just before the next.
        let mut now = 1_796_256_000_000 - 1_796_256_000_000 % span + span - 450;
        let (mut store, mut nodes) = two_nodes(now, ROLLING_MS, LIMIT);
        let [a, b] = &mut nodes;
        let tick = |n: &mut SimNode, store: &mut MemStore, t: u64| {
            store.set_time(t);
            n.local.now.set(t);
            n.agent.tick(store, &n.local, t);
        };
        // a's rounds every 100 ms, as its thread runs them.
        let mut granted = 0;
        for i in 0..10 {
            assert!(request(a, b, &mut store, &format!("a{i}"), now));
            granted += 1;
            now += 30;
            if i % 3 == 2 {
                tick(a, &mut store, now);
            }
        }
        // Into the next grant period: a, idle, takes room of it ahead of
        // use.
        let next = now - now % span + span;
        while now < next + 10 {
            now += 100;
            tick(a, &mut store, now);
        }
        let ahead = |a: &SimNode, t: u64| {
            let uses = a.local.state.borrow().grant_uses(t);
            let u = uses.iter().find(|u| !u.ended).unwrap().clone();
            u.line.granted.saturating_sub(u.used)
        };
        assert!(ahead(a, now) > 0, "a takes room ahead of use");
        // b until denied, a running its rounds every 100 ms meanwhile.
        let mut next_tick = now + 100;
        for i in 0.. {
            now += 10;
            store.set_time(now);
            if now >= next_tick {
                tick(a, &mut store, now);
                tick(b, &mut store, now);
                next_tick += 100;
            }
            let ok = request(b, a, &mut store, &format!("b{i}"), now);
            if !ok {
                break;
            }
            granted += 1;
            assert!(granted <= LIMIT);
        }
        assert_eq!(granted, LIMIT, "b is denied only when the window is full");
        // a's rounds for the rest of the recall take nothing ahead.
        for _ in 0..20 {
            now += 100;
            tick(a, &mut store, now);
            assert_eq!(ahead(a, now), 0);
        }
    }

    /// A node whose rolling pool is dry recalls idle room once per grant
    /// period while the recall lasts (3 s): another RESERVE short of room
    /// meanwhile is denied at once, one after the recall's life recalls
    /// again, and so does the first of a new period.
    #[test]
    fn a_recall_of_rolling_room_is_out_for_three_seconds_per_grant_period() {
        const LIMIT: u64 = 5;
        const MINUTE: u64 = 60_000;
        let span = grant::rolling_span(MINUTE);
        let period = 1_796_256_000_000 - 1_796_256_000_000 % span;
        // 5 s before the period ends.
        let mut now = period + span - 5_000;
        let (mut store, mut nodes) = two_nodes(now, MINUTE, LIMIT);
        let [a, b] = &mut nodes;
        // a takes the whole limit.
        for i in 0..LIMIT {
            now += 10;
            assert!(request(a, b, &mut store, &format!("a{i}"), now));
        }
        // Whether b's next RESERVE, at `t`, finds the pool dry and recalls.
        let mut recalls = |b: &mut SimNode, t: u64| {
            store.set_time(t);
            b.local.now.set(t);
            let r = Command::Reserve(ReserveArgs::new(format!("r{t}"), "org:w", "gpt-4o", 1, 1));
            let d = match b
                .local
                .state
                .borrow_mut()
                .decide(t, &r, None, &mut Vec::new())
            {
                Outcome::Denied(d) => d,
                o => panic!("{o:?}"),
            };
            assert_eq!(d.reason, Blocker::Grant);
            let short = Shortage::of(&d, t).unwrap();
            match b.agent.ask(&mut store, &b.local, &short, true, t).unwrap() {
                Answer::Dry { recalled, .. } => recalled,
                o => panic!("{o:?}"),
            }
        };
        let first = now + 10;
        assert!(recalls(b, first));
        assert!(!recalls(b, first + 100), "one recall at a time");
        assert!(!recalls(b, first + 2_999));
        assert!(recalls(b, first + 3_000), "the last one's life is over");
        // The next grant period, within 3 s of the last recall.
        let next = period + span + 10;
        assert!(next < first + 3_000 + 3_000);
        assert!(recalls(b, next), "a new period's line");
        assert!(!recalls(b, next + 100));
    }

    /// Four nodes share a rolling window of 60 requests per 10 s, asked
    /// for about 100 per 10 s, under the same faults: never more than 60
    /// in any window, and the window fills.
    #[test]
    fn agents_share_a_rolling_window_without_passing_it() {
        let _turn = crate::common::etcd::cpu_turn();
        let seeds = env_u64("SPENDB_CLUSTER_SEEDS", 40);
        let steps = env_u64("SPENDB_CLUSTER_STEPS", 2_000) as usize;
        let (mut calls, mut peaks) = (0, Vec::new());
        for seed in 0..seeds {
            let (g, _, peak, _) =
                run(seed, steps, true, 0, 0).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            calls += g;
            peaks.push(peak);
        }
        peaks.sort_unstable();
        let median = peaks[peaks.len() / 2];
        eprintln!("rolling agents: {seeds} seeds, {calls} calls granted, peak per seed {peaks:?}");
        assert!(
            median >= ROLLING_LIMIT * 3 / 4,
            "the window fills: median peak {median} of {ROLLING_LIMIT}"
        );
    }
}

// ----- 1,000 agents -------------------------------------------------------

mod scale {
    use std::cell::{Cell, RefCell};
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use rand::rngs::SmallRng;
    use rand::{RngExt, SeedableRng};
    use spendb::cluster::agent::{self, Agent, AgentConfig, Answer, Shortage};
    use spendb::cluster::kv::MemStore;
    use spendb::state::grant::ClusterRules;
    use spendb::state::limit::{Blocker, Dim, LimitSpec, Window};
    use spendb::state::price::Usage;
    use spendb::state::{Command, Config, Outcome, ReserveArgs, State};

    use super::agents::LocalState;
    use super::{gap, rate_mhz, Counting};
    use crate::common::env_u64;

    struct SimNode {
        local: LocalState,
        agent: Agent,
        alive: bool,
        /// A RESERVE waiting for recalled room: its amount, when it began,
        /// and the store operations it has waited for so far.
        waiting: Option<(u64, u64, u64)>,
    }

    #[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
    enum Ev {
        Call,
        /// A RESERVE that found the pool dry asks again (every 200 ms, for
        /// up to 3 s, as the node's thread does every 50 ms).
        Retry,
        Tick,
    }

    const SCOPE: &str = "org:planet";
    const KEY: &str = "org:planet|TOKENS|PER TOTAL|0";

    /// The scale run with what a node runs: N agents, each on a
    /// real `State`, sharing one TOTAL budget under skewed load (1 % of the
    /// nodes hot, 9 % warm, 90 % nearly idle), a node dying now and then
    /// and a new one joining, at production timings (lease 10 s, a round
    /// every 100 ms). A recall reaches every node as etcd's watch would
    /// deliver it (no store operation). Overshoot is checked after every
    /// call; printed: store operations per node per second between 60 s
    /// and the first global denial, room on other nodes then, the share of
    /// calls that asked the store and their p99 store round trips.
    #[test]
    fn a_thousand_agents_share_one_budget() {
        let _turn = crate::common::etcd::cpu_turn();
        let n_nodes = env_u64("SPENDB_CLUSTER_AGENT_NODES", 300) as usize;
        let seconds = env_u64("SPENDB_CLUSTER_AGENT_SECONDS", 100);
        let expected: u64 = (0..n_nodes)
            .map(|i| rate_mhz(i) * 100 * seconds / 1000)
            .sum();
        // Sized to run dry well before the end (a node that dies is
        // replaced by one of the class its new index falls in).
        let amount = expected * 3 / 4;
        let mut rng = SmallRng::seed_from_u64(11);
        let mut store = MemStore::new(0);
        let budget = Command::BudgetSet {
            scope: SCOPE.into(),
            limits: vec![LimitSpec {
                dim: Dim::Tokens,
                window: Window::Total,
                amount,
            }],
        };
        agent::publish(&mut store, &budget, 0).unwrap();
        let mut c = Counting {
            store: &mut store,
            ops: 0,
        };
        let mut nodes: Vec<SimNode> = Vec::new();
        let mut queue: BinaryHeap<Reverse<(u64, usize, Ev)>> = BinaryHeap::new();
        let join = |nodes: &mut Vec<SimNode>,
                    queue: &mut BinaryHeap<Reverse<(u64, usize, Ev)>>,
                    rng: &mut SmallRng,
                    now: u64| {
            let i = nodes.len();
            let mut agent = Agent::new(&format!("n{i}"), AgentConfig::new(10_000));
            agent.watched(None);
            let state = State::new(Config {
                cluster: Some(ClusterRules::default()),
                ..Config::default()
            });
            nodes.push(SimNode {
                local: LocalState {
                    state: RefCell::new(state),
                    now: Cell::new(now),
                },
                agent,
                alive: true,
                waiting: None,
            });
            queue.push(Reverse((now + gap(rng, rate_mhz(i)), i, Ev::Call)));
            queue.push(Reverse((now + rng.random_range(0..100), i, Ev::Tick)));
        };
        for _ in 0..n_nodes {
            join(&mut nodes, &mut queue, &mut rng, 0);
        }
        let (mut granted, mut calls, mut asked, mut deaths, mut recalls) = (0u64, 0u64, 0, 0, 0);
        let mut steady_calls = 0u64;
        let mut waits: Vec<u64> = Vec::new();
        let mut first_denial: Option<(u64, u64)> = None;
        let (mut ops_at_20, mut ops_at_60, mut live_at_20) = (None, None, 0);
        let end = seconds * 1000;
        let mut seq = 0u64;
        while let Some(Reverse((t, i, ev))) = queue.pop() {
            // Until a little after the first global denial.
            if t > 2 * end || first_denial.is_some_and(|(at, _)| t > at + 5_000) {
                break;
            }
            // Steady state: from 20 s (all registered, rates measured) to
            // 60 s (before the pool runs low).
            if t >= 20_000 && ops_at_20.is_none() {
                ops_at_20 = Some(c.ops);
                live_at_20 = nodes.iter().filter(|n| n.alive).count();
            }
            if t >= 60_000 && ops_at_60.is_none() {
                ops_at_60 = Some(c.ops);
            }
            c.store.set_time(t);
            if !nodes[i].alive {
                continue;
            }
            nodes[i].local.now.set(t);
            let mut recalled = false;
            match ev {
                Ev::Tick => {
                    let n = &mut nodes[i];
                    n.agent.tick(&mut c, &n.local, t);
                    queue.push(Reverse((t + 100, i, Ev::Tick)));
                    if rng.random_range(0..100_000) == 0 {
                        nodes[i].alive = false;
                        deaths += 1;
                        join(&mut nodes, &mut queue, &mut rng, t);
                    }
                }
                Ev::Call | Ev::Retry => {
                    // A node that has not read the definitions refuses
                    // (the engine's CLUSTERDOWN).
                    let not_ready = !nodes[i].agent.definitions_loaded;
                    if ev == Ev::Call && (nodes[i].waiting.is_some() || not_ready) {
                        // Its client waits for the RESERVE before.
                        queue.push(Reverse((t + gap(&mut rng, rate_mhz(i)), i, Ev::Call)));
                        continue;
                    }
                    let (a, began, mut ops) = match (ev, nodes[i].waiting.take()) {
                        (Ev::Retry, Some(w)) => w,
                        _ => (rng.random_range(1..200), t, 0),
                    };
                    if ev == Ev::Call && first_denial.is_none() {
                        calls += 1;
                        steady_calls += (20_000..60_000).contains(&t) as u64;
                    }
                    seq += 1;
                    let id = format!("h{seq}");
                    let r = Command::Reserve(ReserveArgs::new(&id, SCOPE, "gpt-4o", a, 0));
                    let n = &mut nodes[i];
                    let decide = |n: &SimNode| {
                        let mut st = n.local.state.borrow_mut();
                        st.decide(t, &r, None, &mut Vec::new())
                    };
                    let mut outcome = decide(n);
                    let mut dry = false;
                    for ask in 0..8 {
                        let Outcome::Denied(d) = &outcome else { break };
                        if !matches!(d.reason, Blocker::Grant | Blocker::Unreported) {
                            break;
                        }
                        if ask == 0 && ev == Ev::Call && (20_000..60_000).contains(&t) {
                            asked += 1;
                        }
                        let short = Shortage::of(d, t).unwrap();
                        let before = c.ops;
                        let answer = n.agent.ask(&mut c, &n.local, &short, ev == Ev::Call, t);
                        ops += c.ops - before;
                        match answer {
                            Ok(Answer::Moved) => outcome = decide(n),
                            Ok(Answer::Dry { recalled: r, .. }) => {
                                recalled |= r;
                                dry = true;
                                break;
                            }
                            _ => break,
                        }
                    }
                    match outcome {
                        Outcome::Granted(_) => {
                            granted += a;
                            let commit = Command::Commit {
                                hold: id,
                                usage: Usage {
                                    input: a,
                                    ..Usage::default()
                                },
                            };
                            n.local
                                .state
                                .borrow_mut()
                                .apply(t, &commit, &mut Vec::new());
                            if ops > 0 && (20_000..60_000).contains(&began) {
                                waits.push(ops);
                            }
                        }
                        _ if dry && t < began + 3_000 => {
                            n.waiting = Some((a, began, ops));
                            queue.push(Reverse((t + 200, i, Ev::Retry)));
                        }
                        _ => {
                            if first_denial.is_none() {
                                let idle: u64 = (nodes.iter().filter(|n| n.alive))
                                    .flat_map(|n| n.local.state.borrow().grant_uses(t))
                                    .filter(|u| u.line.key() == KEY)
                                    .map(|u| u.line.granted.saturating_sub(u.used))
                                    .sum();
                                first_denial = Some((t, idle));
                            }
                        }
                    }
                    assert!(granted <= amount, "overshoot at {t}: {granted} > {amount}");
                    // The client's next call, once this one is answered.
                    if nodes[i].waiting.is_none() {
                        queue.push(Reverse((t + gap(&mut rng, rate_mhz(i)), i, Ev::Call)));
                    }
                }
            }
            if recalled {
                // etcd's watch tells every node of the recall.
                recalls += 1;
                let key = format!("/spendb/v1/recall/{KEY}");
                for n in nodes.iter_mut().filter(|n| n.alive) {
                    n.agent.watched(Some(&key));
                }
            }
        }
        let (denied_at, stranded) = first_denial.unwrap_or_else(|| {
            panic!("the budget was sized to run dry: {granted} of {amount} used, {calls} calls")
        });
        let (ops20, ops60) = (ops_at_20.unwrap(), ops_at_60.expect("ran past 60 s"));
        assert!(denied_at > 60_000, "the pool ran low before 60 s");
        let steady = (ops60 - ops20) as f64 / (live_at_20 as f64 * 40.0);
        waits.sort_unstable();
        let p99 = waits.get(waits.len() * 99 / 100).copied().unwrap_or(0);
        let stranded_pct = stranded as f64 * 100.0 / amount as f64;
        eprintln!(
            "{n_nodes} agents: {calls} calls before the first global denial at {:.0} s; from 20 to 60 s {steady:.2} store operations per node per second, and {:.2} % of the calls asked the store (p99 {p99} store round trips); {:.2} % of the limit on other nodes at the first denial; {deaths} nodes died, {recalls} recalls; overshoot 0",
            denied_at as f64 / 1e3,
            asked as f64 * 100.0 / steady_calls.max(1) as f64,
            stranded_pct,
        );
        assert!(
            steady <= 2.0,
            "{steady} store operations per node per second"
        );
        assert!(stranded_pct <= 5.0, "{stranded_pct} % stranded");
    }
}
