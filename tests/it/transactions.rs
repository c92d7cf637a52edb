//! MULTI / EXEC / DISCARD: raw RESP, the `redis` crate's atomic pipeline,
//! redis-py's default pipeline and node-redis's multi() (installed by
//! scripts/test under target/clients/), and that a transaction's commands
//! reach the ledger together while another connection writes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// Sends raw RESP and reads until `want` replies' worth of text arrived.
fn resp(stream: &mut TcpStream, request: &str, until: &str) -> String {
    stream.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

fn inline(words: &[&str]) -> String {
    let mut s = format!("*{}\r\n", words.len());
    for w in words {
        s.push_str(&format!("${}\r\n{w}\r\n", w.len()));
    }
    s
}

#[test]
fn multi_exec_over_raw_resp() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:tx REQUESTS 2 PER DAY").unwrap();
    let mut t = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let mut req = inline(&["MULTI"]);
    for h in ["t1", "t2", "t3"] {
        req += &inline(&[
            "RESERVE", h, "org:tx", "gpt-4o", "INPUT", "1", "OUTPUT", "0",
        ]);
    }
    req += &inline(&["PING"]);
    req += &inline(&["EXEC"]);
    let got = resp(&mut t, &req, "PONG");
    assert!(
        got.starts_with("+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*4\r\n"),
        "{got}"
    );
    assert_eq!(got.matches("granted").count(), 2, "{got}");
    assert_eq!(got.matches("denied").count(), 1, "{got}");

    // The control commands' errors, as Redis words them.
    let got = resp(&mut t, &inline(&["EXEC"]), "\r\n");
    assert_eq!(got, "-ERR EXEC without MULTI\r\n");
    let got = resp(&mut t, &inline(&["DISCARD"]), "\r\n");
    assert_eq!(got, "-ERR DISCARD without MULTI\r\n");
    let got = resp(
        &mut t,
        &(inline(&["MULTI"]) + &inline(&["MULTI"]) + &inline(&["DISCARD"])),
        "+OK\r\n-ERR MULTI calls can not be nested\r\n+OK\r\n",
    );
    assert!(got.ends_with("+OK\r\n"), "{got}");
    let got = resp(&mut t, &inline(&["WATCH", "k"]), "\r\n");
    assert!(got.starts_with("-ERR WATCH is not supported"), "{got}");

    // DISCARD drops what was queued: nothing reaches the engine.
    let req = inline(&["MULTI"])
        + &inline(&[
            "RESERVE", "d1", "org:tx2", "gpt-4o", "INPUT", "1", "OUTPUT", "0",
        ])
        + &inline(&["DISCARD"]);
    let got = resp(&mut t, &req, "+OK\r\n+QUEUED\r\n+OK\r\n");
    assert_eq!(got, "+OK\r\n+QUEUED\r\n+OK\r\n");
    assert!(err(&mut c, "HOLD.GET d1").starts_with("UNKNOWN"));

    // An error while queuing (bad syntax, or a command a transaction cannot
    // hold) answers itself, and EXEC then discards everything.
    let req = inline(&["MULTI"])
        + &inline(&[
            "RESERVE", "e1", "org:tx2", "gpt-4o", "INPUT", "1", "OUTPUT", "0",
        ])
        + &inline(&["RESERVE", "e2", "org:tx2", "gpt-4o", "INPUT", "x"])
        + &inline(&["CACHE.SET", "ns", "k", "v"])
        + &inline(&["EXEC"]);
    let got = resp(&mut t, &req, "EXECABORT");
    assert!(got.contains("+QUEUED\r\n-ERR INPUT"), "{got}");
    assert!(
        got.contains("-ERR CACHE.SET is not allowed inside MULTI"),
        "{got}"
    );
    assert!(
        got.ends_with("-EXECABORT Transaction discarded because of previous errors.\r\n"),
        "{got}"
    );
    assert!(err(&mut c, "HOLD.GET e1").starts_with("UNKNOWN"));
    // RESET ends a transaction too.
    let got = resp(
        &mut t,
        &(inline(&["MULTI"]) + &inline(&["RESET"]) + &inline(&["EXEC"])),
        "without MULTI",
    );
    assert!(
        got.starts_with("+OK\r\n+RESET\r\n-ERR EXEC without MULTI"),
        "{got}"
    );
}

#[test]
fn a_transaction_reaches_the_ledger_with_nothing_in_between() {
    let s = Server::start(&[]);
    let url = s.url();
    let writer = std::thread::spawn(move || {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        for i in 0..300 {
            q(
                &mut c,
                &format!("SPEND org:other gpt-4o INPUT {i} OUTPUT 0"),
            );
        }
    });
    let mut c = s.conn();
    for round in 0..10 {
        // The `redis` crate's atomic pipeline is MULTI … EXEC.
        let mut p = redis::pipe();
        p.atomic();
        for i in 0..20 {
            p.cmd("RESERVE")
                .arg(format!("x{round}-{i}"))
                .arg("org:tx")
                .arg("gpt-4o")
                .arg("INPUT")
                .arg(1)
                .arg("OUTPUT")
                .arg(0);
        }
        let replies: Vec<redis::Value> = p.query(&mut c).unwrap();
        assert_eq!(replies.len(), 20);
        for r in replies {
            assert_eq!(fields(r).s("status"), "granted");
        }
    }
    writer.join().unwrap();
    // Each round's 20 holds are consecutive ledger entries.
    let (status, ledger) = Http::new(&s, None).get("/v1/ledger?limit=1000");
    assert_eq!(status, 200, "{ledger}");
    let mut seqs: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for e in ledger["entries"].as_array().unwrap() {
        if e["kind"] == "hold" {
            let id = e["id"].as_str().unwrap();
            let round = id.split('-').next().unwrap().to_string();
            seqs.entry(round)
                .or_default()
                .push(e["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(seqs.len(), 10);
    for (round, s) in seqs {
        assert_eq!(s.len(), 20);
        assert_eq!(s[19] - s[0], 19, "round {round} was interleaved: {s:?}");
    }
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/clients")
}

/// Runs a client script; fails saying what to install when it is missing.
fn run_client(program: &Path, args: &[&str], cwd: &Path) {
    assert!(
        program.exists() || program == Path::new("node"),
        "{} is missing: run scripts/test, which installs redis-py and node-redis under target/clients",
        program.display()
    );
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/test)", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} failed:\n{text}",
        program.display()
    );
    assert!(text.contains("transactions ok"), "{text}");
}

#[test]
fn redis_py_default_pipeline_is_a_transaction() {
    let s = Server::start(&[]);
    let python = clients_dir().join("py/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/transaction.py");
    run_client(
        &python,
        &[script.to_str().unwrap(), &s.port.to_string()],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    let mut c = s.conn();
    assert_eq!(q(&mut c, "HOLD.GET py1").s("status"), "committed");
}

#[test]
fn node_redis_multi_is_a_transaction() {
    let s = Server::start(&[]);
    let node_dir = clients_dir().join("node");
    assert!(
        node_dir.join("node_modules/redis").exists(),
        "node-redis is missing: run scripts/test, which installs it under target/clients/node"
    );
    // ES modules resolve packages from the script's own folder up.
    let script = node_dir.join("transaction.mjs");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/transaction.mjs"),
        &script,
    )
    .unwrap();
    run_client(
        Path::new("node"),
        &[script.to_str().unwrap(), &s.port.to_string()],
        &node_dir,
    );
    let mut c = s.conn();
    assert_eq!(q(&mut c, "HOLD.GET n1").s("status"), "open");
}
