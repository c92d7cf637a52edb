//! The escrow protocol (issue #15) against a real three-member etcd cluster
//! on loopback, started here (free ports from the OS, a temp dir, every
//! member killed at the end): nodes drain a shared limit exactly; the etcd
//! leader is killed during refills and no room is granted twice; a node
//! that stops renewing its lease has its grant reclaimed by another.
//!
//! Needs the `etcd` binary (Debian: `apt-get install etcd-server`;
//! `scripts/test` installs it): without it these tests fail and say so.

use std::time::{Duration, Instant};

use spendb::cluster::escrow::{self, EscrowConfig, Fencing, Node};
use spendb::cluster::etcd::EtcdStore;
use spendb::cluster::kv::GlobalStore;

use crate::common::etcd::EtcdCluster;

fn config(ttl_ms: u64) -> EscrowConfig {
    EscrowConfig {
        u_max: 400,
        chunk: 1_000,
        lease_ttl_ms: ttl_ms,
    }
}

/// What the agent side does for one call: reserve locally; when stalled on
/// unreported usage, report and try again; when short of room, refill (for
/// at least this call) and try again.
fn take(n: &mut Node, s: &mut EtcdStore, limit: &str, amount: u64) -> bool {
    if n.reserve(&[(limit, amount)]) || (n.report(s).is_ok() && n.reserve(&[(limit, amount)])) {
        return true;
    }
    match n.refill(s, limit, amount, 1_000) {
        Ok(x) => x > 0 && n.reserve(&[(limit, amount)]),
        // The refill's outcome is unknown (its member died): read the
        // grant again, as the agent does.
        Err(_) => n.sync(s).is_ok() && n.reserve(&[(limit, amount)]),
    }
}

/// A node registered and joined to `limit`, with its own connection.
fn joined(etcd: &EtcdCluster, name: &str, ttl_ms: u64, limit: &str) -> (Node, EtcdStore) {
    let mut s = etcd.store();
    let mut n = Node::new(name, config(ttl_ms));
    assert!(n.register(&mut s).unwrap());
    assert!(n.join(&mut s, limit).unwrap());
    (n, s)
}

/// Node `a` on a 2 s lease, holding 1,000 of `limit` with 300 used and
/// reported.
fn a_holding_room(etcd: &EtcdCluster, limit: &str) -> (Node, EtcdStore) {
    let (mut a, mut sa) = joined(etcd, "a", 2_000, limit);
    assert_eq!(a.refill(&mut sa, limit, 0, 1_000).unwrap(), 1_000);
    assert!(a.reserve(&[(limit, 300)]));
    a.report(&mut sa).unwrap();
    (a, sa)
}

/// Waits for `node`'s lease to run out (20 s at most), then reclaims its
/// grant of `limit` as a janitor does.
fn reclaim_once_expired(store: &mut EtcdStore, limit: &str, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let plan = loop {
        if let Some(plan) = escrow::plan_reclaim(store, limit, node).unwrap() {
            break plan;
        }
        assert!(Instant::now() < deadline, "{node}'s lease never expired");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(escrow::reclaim(store, &plan, Fencing::Checked).unwrap());
}

/// Takes `step` at a time until the node can get no more: what it got.
fn drain(n: &mut Node, s: &mut EtcdStore, limit: &str, step: u64) -> u64 {
    let mut got = 0;
    while take(n, s, limit, step) {
        got += step;
    }
    got
}

fn audit(store: &mut dyn GlobalStore, limit: &str, amount: u64) {
    let (pool, grants) = escrow::read_limit(store, limit).unwrap();
    let live: u64 = grants
        .iter()
        .filter(|(_, g)| g.presumed.is_none())
        .map(|(_, g)| g.granted)
        .sum();
    assert_eq!(
        pool.granted, live,
        "pool.granted is the sum of the live grants: {pool:?} {grants:?}"
    );
    assert!(
        pool.granted + pool.consumed + pool.presumed <= amount,
        "{pool:?}"
    );
}

#[test]
fn three_nodes_drain_a_shared_limit_exactly_while_the_etcd_leader_dies() {
    let mut etcd = EtcdCluster::start();
    let limit = "org:shared";
    let amount = 12_000;
    let mut store = etcd.store();
    escrow::set_limit(&mut store, limit, amount).unwrap();
    let mut nodes: Vec<(Node, EtcdStore)> = (0..3)
        .map(|i| joined(&etcd, &format!("n{i}"), 10_000, limit))
        .collect();
    let mut used = 0;
    let mut killed = false;
    // Round robin: each node reserves 50 at a time, refilling when short
    // (fair shares of what is left, so the last room is spread over the
    // nodes), until none can; the leader is killed a third of the way
    // through.
    loop {
        let mut progress = false;
        for (n, s) in nodes.iter_mut() {
            if take(n, s, limit, 50) {
                used += 50;
                progress = true;
            }
        }
        if !killed && used >= amount / 3 {
            let leader = etcd.leader();
            etcd.kill(leader);
            killed = true;
        }
        assert!(used <= amount);
        if !progress {
            // The pool is dry: the nodes give back their idle room (the
            // recall), and the round is tried again until that frees none.
            let mut freed = 0;
            for (n, s) in nodes.iter_mut() {
                freed += n.relieve(s, limit, 0).unwrap_or(0);
            }
            if freed == 0 {
                break;
            }
        }
    }
    assert!(killed);
    // Every unit of the limit was used, none twice.
    assert_eq!(used, amount, "room was stranded or lost");
    audit(&mut store, limit, amount);
}

#[test]
fn a_dead_nodes_room_is_reclaimed_after_its_lease() {
    let etcd = EtcdCluster::start();
    let limit = "org:reclaim";
    let amount = 5_000;
    let mut store = etcd.store();
    escrow::set_limit(&mut store, limit, amount).unwrap();
    let (mut a, mut sa) = a_holding_room(&etcd, limit);
    assert!(a.reserve(&[(limit, 100)]), "100 unreported");
    // a stops renewing its lease (SIGKILL, or a pause past the TTL).
    let died = Instant::now();
    reclaim_once_expired(&mut store, limit, "a");
    let reclaim_ms = died.elapsed().as_millis();
    let (pool, _) = escrow::read_limit(&mut store, limit).unwrap();
    // Charged what it reported plus all it may have used unreported.
    assert_eq!((pool.granted, pool.presumed), (0, 300 + 400));
    audit(&mut store, limit, amount);
    // Another node can use the rest at once.
    let (mut b, mut sb) = joined(&etcd, "b", 10_000, limit);
    assert_eq!(drain(&mut b, &mut sb, limit, 100), amount - 700);
    // a comes back with its disk: its true use (400) replaces the 700
    // presumed, and the 300 difference returns to the pool.
    assert!(a.register(&mut sa).unwrap());
    let (pool, _) = escrow::read_limit(&mut store, limit).unwrap();
    assert_eq!((pool.presumed, pool.consumed), (0, 400), "{pool:?}");
    assert_eq!(b.refill(&mut sb, limit, 300, 1_000).unwrap(), 300);
    audit(&mut store, limit, amount);
    // `spendb cluster status` shows the same figures.
    let out =
        crate::common::spendb_ok(&["cluster", "status", "--etcd", &etcd.endpoints().join(",")]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    let nodes: Vec<&str> = (status["nodes"].as_array().unwrap().iter())
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["a", "b"]);
    assert!(status["revision"].as_u64() > Some(0), "{status}");
    let pool = &status["pools"][0];
    assert_eq!(
        (pool["key"].as_str(), pool["consumed"].as_u64()),
        (Some(limit), Some(400))
    );
    assert_eq!(pool["available"], 0);
    let (_, grants) = escrow::read_limit(&mut store, limit).unwrap();
    let b_granted = grants.iter().find(|(n, _)| n == "b").unwrap().1.granted;
    assert_eq!(pool["grants"][1]["granted"].as_u64(), Some(b_granted));
    eprintln!(
        "reclaim: a's room came back {reclaim_ms} ms after its last keepalive (lease TTL 2 s)"
    );
}

#[test]
fn a_node_paused_past_its_lease_resumes_fenced_and_the_bound_holds() {
    let etcd = EtcdCluster::start();
    let limit = "org:paused";
    let amount = 5_000;
    let mut store = etcd.store();
    escrow::set_limit(&mut store, limit, amount).unwrap();
    let (mut a, mut sa) = a_holding_room(&etcd, limit);
    let mut a_used = 300;
    // a is paused (SIGSTOP): no keepalive. Its lease runs out and a janitor
    // reclaims its grant, charging 300 reported + 400 u_max.
    reclaim_once_expired(&mut store, limit, "a");
    // b takes everything the pool has left.
    let (mut b, mut sb) = joined(&etcd, "b", 10_000, limit);
    let b_used = drain(&mut b, &mut sb, limit, 100);
    assert_eq!(b_used, amount - 700);
    // a resumes (SIGCONT) not knowing: it goes on from its grant, but only
    // as far as the presumed charge, and none of its writes land.
    while a.reserve(&[(limit, 50)]) {
        a_used += 50;
    }
    assert_eq!(a_used, 700, "report-or-stall stops it at reported + u_max");
    a.report(&mut sa).unwrap();
    assert_eq!(a.refill(&mut sa, limit, 50, 1_000).unwrap(), 0, "fenced");
    assert!(!a.reserve(&[(limit, 50)]));
    assert!(a_used + b_used <= amount);
    let (_, grants) = escrow::read_limit(&mut store, limit).unwrap();
    let a_grant = grants.iter().find(|(n, _)| n == "a").unwrap().1;
    assert_eq!(
        (a_grant.reported, a_grant.presumed),
        (300, Some(700)),
        "a's late report did not land"
    );
    // Its keepalive tells it the lease is gone; it registers again with its
    // disk and its true use replaces the presumed charge (both 700 here).
    assert!(matches!(
        sa.lease_keepalive(a.lease.unwrap()),
        Err(spendb::cluster::kv::KvError::NoLease(_))
    ));
    assert!(a.register(&mut sa).unwrap());
    let (pool, _) = escrow::read_limit(&mut store, limit).unwrap();
    assert_eq!(
        (pool.presumed, pool.consumed, pool.available()),
        (0, 700, 0),
        "{pool:?}"
    );
    audit(&mut store, limit, amount);
}

/// The watch a node keeps on recalls and definitions: it starts with a
/// "look yourself" (None), then sees each change under the prefix (and
/// nothing outside it); when the member it streams from dies, it moves to
/// another, says so again, and goes on.
#[test]
fn a_watch_sees_each_change_and_survives_its_member_dying() {
    use spendb::cluster::kv::Op;
    use std::sync::mpsc;
    let mut etcd = EtcdCluster::start();
    let eps = etcd.endpoints();
    let (tx, rx) = mpsc::channel::<Option<String>>();
    let watching = eps.clone();
    // As the node does: each member in turn.
    std::thread::spawn(move || {
        for endpoint in watching.iter().cycle() {
            let on = |k| tx.send(k).is_ok();
            if spendb::cluster::etcd::watch(endpoint, "/spendb/v1/recall/", true, on) == Ok(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let next = || rx.recv_timeout(Duration::from_secs(10)).expect("an event");
    assert_eq!(next(), None, "a started watch says so first");
    let mut s = etcd.store();
    let put = |s: &mut EtcdStore, key: &str| {
        let op = Op::Put {
            key: key.to_string(),
            value: b"\"n1\"".to_vec(),
            lease: None,
        };
        assert!(s.txn(&[], &[op]).unwrap());
    };
    put(&mut s, "/spendb/v1/pool/x");
    put(&mut s, "/spendb/v1/recall/a");
    put(&mut s, "/spendb/v1/recall/b");
    assert_eq!(next(), Some("/spendb/v1/recall/a".to_string()));
    assert_eq!(next(), Some("/spendb/v1/recall/b".to_string()));
    // The watch streams from the first member: kill it.
    etcd.kill(0);
    etcd.wait_healthy(Duration::from_secs(30));
    assert_eq!(next(), None, "a restarted watch says so");
    let mut s = etcd.store();
    put(&mut s, "/spendb/v1/recall/c");
    assert_eq!(next(), Some("/spendb/v1/recall/c".to_string()));
}
