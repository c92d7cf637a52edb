//! One set of books across a cluster (issue #29, part 0), with real
//! `spendb serve --etcd … --node …` processes on a real three-member etcd
//! on loopback: usage booked on one node outside the RESERVE rules (SPEND,
//! a COMMIT past its hold, a COMMIT after its hold expired) is charged to
//! the shared pool before it is acknowledged, so another node is not
//! granted that room again; and BALANCE / BUDGET.GET (RESP and the admin
//! API) show the cluster's used, held and remaining, beside this node's
//! own share.
//!
//! Needs the `etcd` binary (`scripts/test` installs it).

use std::time::Duration;

use crate::cluster_nodes::{budget, node, wait_until};
use crate::common::etcd::EtcdCluster;
use crate::common::{q, raw, Get, Http, Server};

/// RESERVEs of 1,000 tokens on `s` (each committed as held) until `stop`
/// denials in a row: the tokens granted.
fn drain(s: &Server, scope: &str, prefix: &str, stop: u32) -> u64 {
    let mut c = s.conn();
    let (mut granted, mut denials) = (0, 0);
    for i in 0.. {
        let id = format!("{prefix}{i}");
        let r = q(
            &mut c,
            &format!("RESERVE {id} {scope} gpt-4o INPUT 1000 OUTPUT 0"),
        );
        if r.s("status") == "granted" {
            q(&mut c, &format!("COMMIT {id} INPUT 1000 OUTPUT 0"));
            granted += 1_000;
            denials = 0;
        } else {
            denials += 1;
            if denials >= stop {
                break;
            }
        }
    }
    granted
}

/// The one limit of `scope` as the admin API's balance shows it.
fn limit_of(s: &Server, scope: &str) -> serde_json::Value {
    let (status, b) = Http::new(s, None).get(&format!("/v1/balances/{scope}"));
    assert_eq!(status, 200, "{b}");
    (b["limits"].as_array().unwrap().iter())
        .find(|l| l["scope"] == scope)
        .cloned()
        .unwrap_or_else(|| panic!("no limit of {scope} in {b}"))
}

/// The first example: `TOKENS 30000 PER TOTAL`, node 1 books
/// 25,000 tokens with SPEND, and node 2 is granted exactly the 5,000 a
/// single node given the same commands grants (it was 14,000, or the whole
/// 30,000, before). Then the two other paths past the rules on fresh
/// budgets: a COMMIT of 20,000 on a hold of 1,000, and a hold committed
/// with 9,000 after it expired; the two nodes together are then granted
/// no more than a single node would be.
#[test]
fn usage_booked_on_one_node_past_its_grant_is_not_granted_again_on_another() {
    let etcd = EtcdCluster::start();
    let eps = etcd.endpoints();
    let (n1, n2) = (node(&eps, "n1"), node(&eps, "n2"));
    let all = [&n1, &n2];
    let mut c1 = n1.conn();

    budget(&n1, &all, "org:s TOKENS 30000 PER TOTAL");
    let r = q(&mut c1, "SPEND org:s/agent:a gpt-4o INPUT 25000 OUTPUT 0");
    assert_eq!(r.i("tokens"), 25_000);
    assert_eq!(drain(&n2, "org:s/agent:b", "s", 2), 5_000, "as one node");
    assert_eq!(
        drain(&n1, "org:s/agent:a", "s1-", 2),
        0,
        "and nothing on node 1"
    );

    // A COMMIT past its hold: 20,000 used of 1,000 held. A single node
    // then grants 10 calls of 1,000; node 1 may hold a little room of its
    // own (its refill), which a recall brings back to node 2.
    budget(&n1, &all, "org:o TOKENS 30000 PER TOTAL");
    let r = q(
        &mut c1,
        "RESERVE o1 org:o/agent:a gpt-4o INPUT 1000 OUTPUT 0",
    );
    assert_eq!(r.s("status"), "granted");
    let r = q(&mut c1, "COMMIT o1 INPUT 20000 OUTPUT 0");
    assert_eq!(r.i("overrun_tokens"), 19_000);
    let more = drain(&n2, "org:o/agent:b", "o", 2) + drain(&n1, "org:o/agent:a", "o1-", 2);
    assert!(
        (9_000..=10_000).contains(&more),
        "{more} granted after the overrun"
    );

    // A hold that expired, committed late: its 2,000 went back at expiry,
    // the 9,000 it used are charged at the COMMIT.
    budget(&n1, &all, "org:l TOKENS 30000 PER TOTAL");
    let r = q(
        &mut c1,
        "RESERVE l1 org:l/agent:a gpt-4o INPUT 2000 OUTPUT 0 TTL 500",
    );
    assert_eq!(r.s("status"), "granted");
    std::thread::sleep(Duration::from_millis(800));
    let r = q(&mut c1, "COMMIT l1 INPUT 9000 OUTPUT 0");
    assert_eq!(r.i("late"), 1, "{r:?}");
    let more = drain(&n2, "org:l/agent:b", "l", 2) + drain(&n1, "org:l/agent:a", "l1-", 2);
    assert!(
        (20_000..=21_000).contains(&more),
        "{more} granted after the late commit"
    );

    // Every pool says it was charged: the limit, all of it.
    let st = crate::cluster_nodes::cluster(&n1);
    for key in ["org:s|", "org:o|", "org:l|"] {
        let p = (st["store"]["pools"].as_array().unwrap().iter())
            .find(|p| p["key"].as_str().unwrap().starts_with(key))
            .unwrap_or_else(|| panic!("no pool {key} in {st}"));
        let charged = p["granted"].as_u64().unwrap()
            + p["consumed"].as_u64().unwrap()
            + p["presumed"].as_u64().unwrap();
        assert!(charged >= 30_000, "{p}");
        assert_eq!(p["available"], 0, "{p}");
    }
    assert!(
        crate::cluster_nodes::cluster(&n1)["node"]["stats"]["absorbed"]
            .as_u64()
            .unwrap()
            > 0
    );
}

/// The second example: 10,000 tokens spent on node 1 and 20,000
/// on node 2 of a budget of 1,000,000. BALANCE and BUDGET.GET on node 1
/// (RESP and the admin API) say used 30,000, remaining 970,000, this
/// node's share 10,000, counting both nodes; a hold open on node 2 shows
/// as held once node 2 has reported it.
#[test]
fn balance_and_budget_get_show_the_clusters_figures_beside_this_nodes_share() {
    let etcd = EtcdCluster::start();
    let eps = etcd.endpoints();
    let (n1, n2) = (node(&eps, "n1"), node(&eps, "n2"));
    let all = [&n1, &n2];
    budget(&n1, &all, "org:v TOKENS 1000000 PER TOTAL");
    q(
        &mut n1.conn(),
        "SPEND org:v/agent:a gpt-4o INPUT 10000 OUTPUT 0",
    );
    q(
        &mut n2.conn(),
        "SPEND org:v/agent:b gpt-4o INPUT 20000 OUTPUT 0",
    );

    let l = limit_of(&n1, "org:v");
    assert_eq!(l["used"], 30_000, "{l}");
    assert_eq!(l["held"], 0, "{l}");
    assert_eq!(l["remaining"], 970_000, "{l}");
    assert_eq!(l["covers"], "cluster", "{l}");
    assert_eq!(l["this_node"]["used"], 10_000, "{l}");
    assert_eq!(l["nodes"], serde_json::json!(["n1", "n2"]), "{l}");
    // Node 2 says the same of the cluster, and its own share.
    let l2 = limit_of(&n2, "org:v");
    assert_eq!(
        (l2["used"].clone(), l2["this_node"]["used"].clone()),
        (30_000.into(), 20_000.into())
    );
    // BUDGET.GET over the admin API and over RESP.
    let (_, b) = Http::new(&n1, None).get("/v1/budgets/org:v");
    assert_eq!(b["limits"][0]["remaining"], 970_000, "{b}");
    let resp = format!("{:?}", raw(&mut n1.conn(), "BUDGET.GET org:v").unwrap());
    assert!(
        resp.contains("970000") && resp.contains("cluster"),
        "{resp}"
    );
    let resp = format!(
        "{:?}",
        raw(&mut n1.conn(), "BALANCE org:v/agent:a").unwrap()
    );
    assert!(
        resp.contains("970000") && resp.contains("this_node"),
        "{resp}"
    );

    // A hold open on node 2: node 1 shows it held once node 2 reports.
    let r = q(
        &mut n2.conn(),
        "RESERVE h1 org:v/agent:b gpt-4o INPUT 3000 OUTPUT 0",
    );
    assert_eq!(r.s("status"), "granted");
    wait_until(Duration::from_secs(15), "node 1 sees node 2's hold", || {
        limit_of(&n1, "org:v")["held"] == 3_000
    });
    let l = limit_of(&n1, "org:v");
    assert_eq!(
        (l["used"].clone(), l["remaining"].clone()),
        (30_000.into(), 967_000.into()),
        "{l}"
    );
    assert_eq!(l["this_node"]["held"], 0, "{l}");
}
