//! One view of a cluster's spend (issue #29 part 3): three
//! `spendb serve --etcd … --node … --archive …` processes on a real etcd,
//! each spending; every node's `/v1/reports/spend` and `/v1/reports/runs`
//! answer for the whole cluster (its own books live, the others' from the
//! archive, each as of the last entry it shipped), say which nodes and
//! seqs they cover, and keep a killed node whose data dir is gone at what
//! it had shipped; `spendb cluster report` prints the same from the
//! command line.
//!
//! Needs the `etcd` binary (`scripts/test` installs it).

use std::time::Duration;

use crate::cluster_nodes::{node_with, wait_until};
use crate::common::etcd::EtcdCluster;
use crate::common::{bin, q, spendb_ok, Get, Http, Server};

/// nano-USD of a decimal USD string.
fn nanos(usd: &str) -> u64 {
    let (whole, frac) = usd.split_once('.').unwrap_or((usd, ""));
    let frac = format!("{frac:0<9}");
    whole.parse::<u64>().unwrap() * 1_000_000_000 + frac[..9].parse::<u64>().unwrap()
}

fn report(s: &Server, path: &str) -> serde_json::Value {
    let (status, v) = Http::new(s, None).get(path);
    assert_eq!(status, 200, "{v}");
    v
}

/// The nodes a report covers, by name.
fn covered(r: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = (r["cluster"]["nodes"].as_array().unwrap().iter())
        .map(|n| n["node"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn every_node_reports_the_clusters_spend_and_a_lost_nodes_shipped_books_stay_in_it() {
    let etcd = EtcdCluster::start();
    let eps = etcd.endpoints();
    let bucket = tempfile::tempdir().unwrap();
    let url = format!("file://{}", bucket.path().display());
    let args = ["--archive", url.as_str(), "--archive-interval", "200ms"];
    let mut nodes: Vec<Server> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| node_with(&eps, n, &args))
        .collect();
    // Each node spends on its own scopes, in runs that end.
    let plan = [
        ("n1", "org:a/u:1", 3),
        ("n2", "org:a/u:2", 2),
        ("n3", "org:b/u:3", 4),
    ];
    let (mut tokens, mut cost) = (0u64, 0u64);
    for (i, (name, scope, calls)) in plan.iter().enumerate() {
        let mut c = nodes[i].conn();
        for k in 0..*calls {
            let r = q(
                &mut c,
                &format!("SPEND {scope} gpt-4o INPUT 1000 OUTPUT 10 RUN run-{name}-{k}"),
            );
            tokens += r.i("tokens") as u64;
            cost += nanos(&r.s("cost"));
            q(&mut c, &format!("RUN.END run-{name}-{k} OUTCOME success"));
        }
    }
    assert_eq!(tokens, 9 * 1010);
    let everyone = vec!["n1".to_string(), "n2".into(), "n3".into()];
    for s in &nodes {
        let mut last = serde_json::Value::Null;
        wait_until(
            Duration::from_secs(30),
            "the node's report covers the cluster",
            || {
                last = report(s, "/v1/reports/spend");
                last["total"]["tokens"] == tokens && last["cluster"]["complete"] == true
            },
        );
        assert_eq!(covered(&last), everyone, "{last}");
        assert_eq!(nanos(last["total"]["cost"].as_str().unwrap()), cost);
        assert_eq!(last["total"]["requests"], 9);
        let groups = &last["groups"];
        assert_eq!(groups[0]["key"], "org:a", "{groups}");
        assert_eq!(groups[0]["tokens"], 5 * 1010);
        assert_eq!(groups[1]["key"], "org:b");
        assert_eq!(groups[1]["tokens"], 4 * 1010);
        let runs = report(s, "/v1/reports/runs");
        assert_eq!(runs["total"]["runs"], 9, "{runs}");
        assert_eq!(runs["total"]["succeeded"], 9);
        assert_eq!(runs["cluster"]["complete"], true);
    }
    // `node=this`: one node's own books, as before.
    let mine = report(&nodes[0], "/v1/reports/spend?node=this");
    assert_eq!(mine["total"]["tokens"], 3 * 1010);
    assert!(mine.get("cluster").is_none(), "{mine}");
    // The command line: the same figures from etcd and the archive.
    let etcd_arg = eps.join(",");
    let printed = spendb_ok(&[
        "cluster",
        "report",
        "--etcd",
        &etcd_arg,
        "--archive",
        &url,
        "--json",
    ]);
    let printed: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(printed["total"]["tokens"], tokens, "{printed}");
    assert_eq!(printed["cluster"]["complete"], true);
    let table = spendb_ok(&["cluster", "report", "--etcd", &etcd_arg, "--archive", &url]);
    assert!(table.contains("org:a"), "{table}");
    assert!(table.contains("node n3: through entry"), "{table}");

    // n3 is lost with its disk, after it shipped everything: its books stay.
    wait_until(Duration::from_secs(30), "n3 shipped everything", || {
        Http::new(&nodes[2], None).get("/v1/archive").1["lag_entries"] == 0
    });
    let mut n3 = nodes.pop().unwrap();
    n3.crash();
    std::fs::remove_dir_all(&n3.dir).unwrap();
    let mut after = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), "n3's lease runs out", || {
        after = report(&nodes[0], "/v1/reports/spend");
        let n3 = (after["cluster"]["nodes"].as_array().unwrap().iter())
            .find(|n| n["node"] == "n3")
            .cloned();
        n3.is_some_and(|n| n["live"] == false)
    });
    assert_eq!(after["total"]["tokens"], tokens, "{after}");
    assert_eq!(covered(&after), everyone);
    assert_eq!(after["cluster"]["complete"], true);
    // A node given another archive reads none of these books, and says so.
    let other = tempfile::tempdir().unwrap();
    let other_url = format!("file://{}", other.path().display());
    let n4 = node_with(&eps, "n4", &["--archive", &other_url]);
    let r = report(&n4, "/v1/reports/spend");
    assert_eq!(r["cluster"]["complete"], false, "{r}");
    let missing: Vec<&str> = (r["cluster"]["missing"].as_array().unwrap().iter())
        .map(|m| m["node"].as_str().unwrap())
        .collect();
    assert!(missing.contains(&"n1") && missing.contains(&"n2"), "{r}");
    // cluster report exits non-zero when a live node is missing.
    let out = std::process::Command::new(bin())
        .args([
            "cluster",
            "report",
            "--etcd",
            &etcd_arg,
            "--archive",
            &other_url,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("partial"));
}
