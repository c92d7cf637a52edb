//! Alerts end to end: rules set over HTTP, spend through the Redis port, and
//! webhook delivery to a real local HTTP receiver that fails at first.
//! Thresholds fire exactly once, failed POSTs are retried, nothing is
//! delivered twice (not even after a restart), and the ledger records it all.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

/// What the receiver saw: (the status it answered, the JSON body).
type Seen = Arc<Mutex<Vec<(u16, Value)>>>;

/// A minimal HTTP/1.1 receiver on a free port that answers 500 to its first
/// `fail_first` requests and 200 after.
fn receiver(fail_first: usize) -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let mut log = log.lock().unwrap();
            let status = if log.len() < fail_first { 500 } else { 200 };
            log.push((status, serde_json::from_slice(&body).unwrap()));
            drop(log);
            let reply =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    (port, seen)
}

fn delivered(seen: &Seen) -> Vec<Value> {
    let seen = seen.lock().unwrap();
    seen.iter()
        .filter(|(st, _)| *st == 200)
        .map(|(_, b)| b.clone())
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn thresholds_fire_once_and_webhooks_retry_without_duplicates() {
    let (port, seen) = receiver(2);
    let hook = format!("http://127.0.0.1:{port}/hook");
    let mut s = Server::start(&[
        "--alert-webhook",
        &hook,
        "--webhook-backoff",
        "50ms",
        "--webhook-max-backoff",
        "200ms",
    ]);
    let h = Http::new(&s, None);
    let mut con = s.conn();
    raw(&mut con, "BUDGET.SET team:t TOKENS 1000 PER DAY").unwrap();
    let (st, v) = h.call(
        "PUT",
        "/v1/alerts/rules/team:t",
        Some(r#"{"thresholds": [100, 50, 80]}"#),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["thresholds"], json!([50, 80, 100]));
    assert_eq!(v["webhook"], Value::Null);
    assert_eq!(v["forecast"], json!(false));

    // 400, 600 (50 %), 900 (80 %), 950, 1050 (100 %), 1100: three crossings.
    for tokens in [400, 200, 300, 50, 100, 50] {
        let r = q(
            &mut con,
            &format!("SPEND team:t/agent:a gpt-4o INPUT {tokens} OUTPUT 0"),
        );
        assert_eq!(string(&r["status"]), "spent");
    }
    wait_for("three deliveries", || delivered(&seen).len() >= 3);
    // Time for a duplicate to show up, were one going to.
    std::thread::sleep(Duration::from_millis(1000));
    let got = delivered(&seen);
    assert_eq!(got.len(), 3, "{got:?}");
    let keys: Vec<&str> = got.iter().map(|b| b["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "threshold:50:tokens:per_day",
            "threshold:80:tokens:per_day",
            "threshold:100:tokens:per_day"
        ]
    );
    let mut ids: Vec<u64> = got.iter().map(|b| b["id"].as_u64().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each alert delivered once: {got:?}");
    assert_eq!(got[1]["observed"], 900);
    assert_eq!(got[1]["bound"], 800);
    assert_eq!(got[1]["scope"], "team:t");
    assert_eq!(got[1]["source"], "spendb");
    // The first two POSTs failed and were retried.
    let all = seen.lock().unwrap().clone();
    assert_eq!(all.len(), 5, "{all:?}");
    assert!(all[..2].iter().all(|(st, _)| *st == 500));
    assert_eq!(
        all[0].1["id"], all[2].1["id"],
        "the failed alert is retried first"
    );

    // /v1/alerts lists them, delivered; the ledger recorded firing and delivery.
    let (_, v) = h.get("/v1/alerts");
    let alerts = v["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 3);
    assert!(alerts.iter().all(|a| a["delivered_at"].is_u64()), "{v}");
    let (_, v) = h.get("/v1/alerts?undelivered=true");
    assert_eq!(v["alerts"], json!([]));
    let (_, v) = h.get("/v1/ledger?kind=alert");
    assert_eq!(v["entries"].as_array().unwrap().len(), 3, "{v}");
    let (_, v) = h.get("/v1/ledger?kind=alert_delivered");
    assert_eq!(v["entries"].as_array().unwrap().len(), 3, "{v}");
    let (_, v) = h.get("/metrics");
    let text = v.as_str().unwrap();
    assert!(text.contains("spendb_webhook_posts_total{result=\"delivered\"} 3"));
    assert!(text.contains("spendb_webhook_posts_total{result=\"failed\"} 2"));

    // After a restart nothing is sent again, and further spend this period
    // does not fire the same thresholds.
    s.stop();
    s.restart();
    let mut con = s.conn();
    q(&mut con, "SPEND team:t gpt-4o INPUT 500 OUTPUT 0");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(seen.lock().unwrap().len(), 5);
    let h = Http::new(&s, None);
    let (_, v) = h.get("/v1/alerts");
    assert_eq!(v["alerts"].as_array().unwrap().len(), 3);
    s.stop();
    let (ok, out) = verify(&s.dir);
    assert!(ok, "{out}");
}

#[test]
fn runaway_rules_errors_and_undelivered_alerts() {
    let s = Server::start(&[]);
    let h = Http::new(&s, None);
    let mut con = s.conn();

    // Bad rules are 422 with a message, bad JSON 400, unknown fields 422.
    for (body, want) in [
        (r#"{}"#, 422),
        (r#"{"thresholds": [0]}"#, 422),
        (r#"{"thresholds": [50], "webhook": "ftp://x"}"#, 422),
        (
            r#"{"spike": {"dim": "cost", "factor": 1, "window": "5m"}}"#,
            422,
        ),
        (
            r#"{"spike": {"dim": "pennies", "factor": 3, "window": "5m"}}"#,
            422,
        ),
        (r#"{"runaway": {"events": 2, "window": "soon"}}"#, 422),
        (r#"{"thresholds": [50], "colour": "red"}"#, 422),
        (r#"{"thresholds": [50"#, 400),
    ] {
        let (st, v) = h.call("PUT", "/v1/alerts/rules/org:o", Some(body));
        assert_eq!(st, want, "{body}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let (st, _) = h.call("DELETE", "/v1/alerts/rules/org:o", None);
    assert_eq!(st, 404);

    let rules = r#"{"runaway": {"events": 2, "window": "1m"},
                    "spike": {"dim": "cost", "factor": 3, "window": "5m", "min": "0.01"}}"#;
    let (st, v) = h.call("PUT", "/v1/alerts/rules/org:o", Some(rules));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["spike"]["min"], "0.01");
    assert_eq!(v["runaway"]["window"], "1m");
    assert_eq!(v["forecast"], json!(false));
    let (_, v) = h.get("/v1/alerts/rules?prefix=org:o");
    assert_eq!(v["rules"].as_array().unwrap().len(), 1);
    // Flags read back as JSON booleans, as they were written.
    let (st, v) = h.call(
        "PUT",
        "/v1/alerts/rules/org:fc",
        Some(r#"{"forecast": true}"#),
    );
    assert_eq!((st, &v["forecast"]), (200, &json!(true)), "{v}");
    assert_eq!(h.call("DELETE", "/v1/alerts/rules/org:fc", None).0, 200);

    // Repeating the same step is denied after 3 repeats: 2 denials → runaway.
    let mut denied = 0;
    for _ in 0..6 {
        let r = q(&mut con, "STEP run:1 same-call SCOPE org:o/agent:x");
        if string(&r["status"]) == "denied" {
            denied += 1;
        }
    }
    assert_eq!(denied, 4);
    let (_, v) = h.get("/v1/alerts?scope=org:o");
    let alerts = v["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{v}");
    assert_eq!(alerts[0]["rule"], "runaway");
    assert_eq!(alerts[0]["observed"], 2);
    // No webhook anywhere: kept, undelivered.
    assert_eq!(alerts[0]["delivered_at"], Value::Null);
    let (_, v) = h.get("/v1/alerts?undelivered=true&limit=10");
    assert_eq!(v["alerts"].as_array().unwrap().len(), 1);
    let (st, _) = h.get("/v1/alerts?undelivered=maybe");
    assert_eq!(st, 400);

    let (st, v) = h.call("DELETE", "/v1/alerts/rules/org:o", None);
    assert_eq!(st, 200, "{v}");
    let (_, v) = h.get("/v1/alerts/rules");
    assert_eq!(v["rules"], json!([]));
}
