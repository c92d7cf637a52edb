//! An alert on a global budget is the cluster's (issue #29 part 3): three
//! `spendb serve --etcd … --node …` processes on a real etcd with one
//! webhook; a threshold rule set on one node reaches them all. Their spending crosses the
//! threshold together while no node's own share does: the alert fires
//! (on every node, on the cluster's use) and its webhook is delivered
//! once. Then the node that claimed a delivery dies while the receiver
//! fails; another takes the claim over once its lease runs out, and the
//! receiver takes exactly one delivery.
//!
//! Needs the `etcd` binary (`scripts/test` installs it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster_nodes::{budget, node_with, wait_until};
use crate::common::etcd::EtcdCluster;
use crate::common::{q, Http, Server};

/// One POST the receiver saw: its status, its node and alert-key headers,
/// its body.
#[derive(Clone, Debug)]
struct Post {
    status: u16,
    node: String,
    key: String,
    body: serde_json::Value,
}

type Posts = Arc<Mutex<Vec<Post>>>;

/// A webhook receiver on 127.0.0.1 that answers 500 while `failing`.
fn receiver(failing: Arc<AtomicBool>) -> (u16, Posts) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let posts: Posts = Arc::default();
    let log = posts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut len, mut node, mut key) = (0, String::new(), String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                let value = || line.split_once(':').unwrap().1.trim().to_string();
                if lower.starts_with("content-length:") {
                    len = value().parse().unwrap();
                } else if lower.starts_with("x-spendb-node:") {
                    node = value();
                } else if lower.starts_with("x-spendb-alert-key:") {
                    key = value();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let status = if failing.load(Ordering::Acquire) {
                500
            } else {
                200
            };
            log.lock().unwrap().push(Post {
                status,
                node,
                key,
                body: serde_json::from_slice(&body).unwrap_or_default(),
            });
            let reply =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    (port, posts)
}

fn posts_for(posts: &Posts, scope: &str) -> Vec<Post> {
    (posts.lock().unwrap().iter())
        .filter(|p| p.key.starts_with(&format!("{scope}|")))
        .cloned()
        .collect()
}

/// A 50 % threshold rule on `scope`, set on the first node: it reaches
/// every node through etcd, as budgets do.
fn rules(nodes: &[&Server], scope: &str) {
    let (st, v) = Http::new(nodes[0], None).call(
        "PUT",
        &format!("/v1/alerts/rules/{scope}"),
        Some(r#"{"thresholds": [50]}"#),
    );
    assert_eq!(st, 200, "{v}");
    for s in nodes {
        wait_until(Duration::from_secs(20), "every node has the rules", || {
            let (_, v) = Http::new(s, None).get("/v1/alerts/rules");
            v.to_string().contains(&format!("\"scope\":\"{scope}\""))
        });
    }
}

/// This node's alerts of `scope`.
fn alerts_of(s: &Server, scope: &str) -> Vec<serde_json::Value> {
    let (st, v) = Http::new(s, None).get("/v1/alerts");
    assert_eq!(st, 200, "{v}");
    (v["alerts"].as_array().unwrap().iter())
        .filter(|a| a["scope"] == scope)
        .cloned()
        .collect()
}

#[test]
fn a_global_threshold_fires_on_the_clusters_use_and_is_delivered_once() {
    let etcd = EtcdCluster::start();
    let eps = etcd.endpoints();
    let failing = Arc::new(AtomicBool::new(false));
    let (port, posts) = receiver(failing.clone());
    let hook = format!("http://127.0.0.1:{port}/hook");
    let args = [
        "--alert-webhook",
        hook.as_str(),
        "--webhook-backoff",
        "100ms",
        "--webhook-max-backoff",
        "300ms",
    ];
    let mut nodes: Vec<Server> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| node_with(&eps, n, &args))
        .collect();
    let all: Vec<&Server> = nodes.iter().collect();
    budget(&nodes[0], &all, "org:x TOKENS 10000 PER DAY");
    rules(&all, "org:x");
    // 2,000 tokens on each node: 60 % of the budget, 20 % of it each.
    for s in &nodes {
        q(
            &mut s.conn(),
            "SPEND org:x/agent:a gpt-4o INPUT 2000 OUTPUT 0",
        );
    }
    wait_until(Duration::from_secs(30), "the alert is delivered", || {
        posts_for(&posts, "org:x").iter().any(|p| p.status == 200)
    });
    // Every node fired it on the cluster's use, and each records it as
    // delivered (by itself or another node), while only one POST went out.
    for s in &nodes {
        wait_until(
            Duration::from_secs(20),
            "each node records the delivery",
            || {
                let a = alerts_of(s, "org:x");
                a.len() == 1 && !a[0]["delivered_at"].is_null()
            },
        );
        let a = &alerts_of(s, "org:x")[0];
        assert_eq!(a["rule"], "threshold");
        assert!(
            a["message"].as_str().unwrap().contains("50% threshold"),
            "{a}"
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let sent = posts_for(&posts, "org:x");
    assert_eq!(sent.len(), 1, "one POST for the cluster: {sent:?}");
    assert_eq!(sent[0].body["scope"], "org:x");

    // The node that claims the next one dies while the receiver fails.
    failing.store(true, Ordering::Release);
    budget(&nodes[0], &all, "org:y TOKENS 10000 PER DAY");
    rules(&all, "org:y");
    for s in &nodes {
        q(
            &mut s.conn(),
            "SPEND org:y/agent:a gpt-4o INPUT 2000 OUTPUT 0",
        );
    }
    wait_until(Duration::from_secs(30), "a delivery is tried", || {
        !posts_for(&posts, "org:y").is_empty()
    });
    let claimer = posts_for(&posts, "org:y")[0].node.clone();
    let tried: Vec<String> = (posts_for(&posts, "org:y").iter())
        .map(|p| p.node.clone())
        .collect();
    assert!(
        tried.iter().all(|n| *n == claimer),
        "only the claimer tries: {tried:?}"
    );
    let i = ["n1", "n2", "n3"]
        .iter()
        .position(|n| *n == claimer)
        .unwrap();
    let mut dead = nodes.remove(i);
    dead.crash();
    failing.store(false, Ordering::Release);
    wait_until(Duration::from_secs(30), "another node delivers it", || {
        posts_for(&posts, "org:y").iter().any(|p| p.status == 200)
    });
    std::thread::sleep(Duration::from_secs(2));
    let ok: Vec<Post> = (posts_for(&posts, "org:y").into_iter())
        .filter(|p| p.status == 200)
        .collect();
    assert_eq!(ok.len(), 1, "delivered once: {ok:?}");
    assert_ne!(ok[0].node, claimer);
    // The dead node comes back with its disk: its copy is recorded as
    // delivered, not sent again.
    dead.restart();
    wait_until(
        Duration::from_secs(30),
        "the restarted node records it",
        || {
            let a = alerts_of(&dead, "org:y");
            a.len() == 1 && !a[0]["delivered_at"].is_null()
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let ok = (posts_for(&posts, "org:y").into_iter())
        .filter(|p| p.status == 200)
        .count();
    assert_eq!(ok, 1);
}
