//! `spendb bench` against a real server: the run does what it says (every
//! transaction settled, denials where asked for) and its JSON adds up.

use crate::common::*;

fn bench(port: u16, extra: &[&str]) -> serde_json::Value {
    let port = port.to_string();
    let mut args = vec!["-p", &port];
    args.extend_from_slice(extra);
    let (report, table) = bench_report(&args);
    assert!(table.contains("p99.9"), "{table}");
    report
}

fn command<'a>(r: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    r["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == name)
        .map(|c| &c[1])
}

#[test]
fn closed_loop_with_pipelining_releases_and_denials() {
    let s = Server::start(&[]);
    let r = bench(
        s.port,
        &[
            "-n",
            "3000",
            "-c",
            "4",
            "-P",
            "8",
            "-d",
            "60s",
            "--release-ratio",
            "0.25",
            "--deny-ratio",
            "0.1",
            "--tree",
            "2x2x3",
            "--count-ratio",
            "0.5",
            "--cache-ratio",
            "0.3",
        ],
    );
    assert_eq!(r["mode"], "closed");
    assert_eq!(r["transactions"], 3000);
    assert_eq!(r["errors"], 0);
    let granted = r["granted"].as_u64().unwrap();
    let denied = r["denied"].as_u64().unwrap();
    assert_eq!(granted + denied, 3000);
    assert!(denied > 100 && denied < 600, "{denied}");
    let commits = command(&r, "commit").unwrap()["count"].as_u64().unwrap();
    let releases = command(&r, "release").unwrap()["count"].as_u64().unwrap();
    assert_eq!(commits + releases, granted);
    assert!(releases > 0);
    // Prompts counted and looked up in the cache before reserving (every
    // lookup a hit: errors would count a miss).
    let counts = command(&r, "count").unwrap()["count"].as_u64().unwrap();
    let gets = command(&r, "cache.get").unwrap()["count"].as_u64().unwrap();
    assert!((1200..=1800).contains(&counts), "{counts}");
    assert!((600..=1200).contains(&gets), "{gets}");
    let reserve = command(&r, "reserve").unwrap();
    let p = |k: &str| reserve[k].as_u64().unwrap();
    assert!(p("p50_us") <= p("p99_us") && p("p99_us") <= p("max_us"));

    // The server agrees: every hold settled, the deny budget untouched.
    let mut c = s.conn();
    for org in ["org:o0", "org:o1", "org:bench-deny"] {
        let b = q(&mut c, &format!("BALANCE {org}"));
        assert_eq!(dim(&b, "held", "tokens"), "0", "{org}");
    }
    let b = q(&mut c, "BALANCE org:bench-deny");
    assert_eq!(dim(&b, "spent", "tokens"), "0");
}

#[test]
fn open_loop_keeps_its_schedule() {
    let s = Server::start(&[]);
    let r = bench(s.port, &["--rate", "400", "-d", "2s", "-c", "4"]);
    assert_eq!(r["mode"], "open");
    assert_eq!(r["errors"], 0);
    // 400 transactions a second for 2 s: never more than the schedule
    // allows (a closed loop would run thousands), and the run did go on.
    let t = r["transactions"].as_u64().unwrap() as f64;
    let due = 400.0 * r["seconds"].as_f64().unwrap() + 4.0; // one per connection at 0
    assert!(t <= due && t >= 200.0, "{t} transactions, {due} due");
}
