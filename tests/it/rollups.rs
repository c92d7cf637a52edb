//! The reports' rollups (issue #29, part 1) with the real server: the
//! spend and runs reports answer from them, a clean stop persists them
//! (`rollups/<seq>.rollup`) and `ledger verify` checks them against a fold
//! of the ledger, a restart resumes them at their seq, a crash loses
//! nothing (the ledger after the last persisted rollup is folded again),
//! and a damaged rollup file fails verify and is rebuilt at start.

use serde_json::Value;

use crate::common::*;

/// Spend and runs, in whole figures (the reports' JSON, without the seq
/// they cover).
fn reports(s: &Server) -> (Value, Value, Value) {
    let h = Http::new(s, None);
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("seq");
        v
    };
    let (st, spend) = h.get("/v1/reports/spend?group=scope&level=2");
    assert_eq!(st, 200, "{spend}");
    let (_, by_model) = h.get("/v1/reports/spend?group=model");
    let (_, runs) = h.get("/v1/reports/runs?group=model");
    (strip(spend), strip(by_model), strip(runs))
}

fn book(c: &mut redis::Connection, tag: &str) {
    q(
        c,
        &format!("RESERVE {tag}h1 org:a/agent:x gpt-4o INPUT 1000 OUTPUT 100 RUN {tag}r1"),
    );
    q(c, &format!("COMMIT {tag}h1 INPUT 1000 OUTPUT 100"));
    q(
        c,
        &format!("SPEND org:b/agent:y gpt-4o-mini INPUT 5000 OUTPUT 10 RUN {tag}r2"),
    );
    q(c, &format!("RUN.END {tag}r1 OUTCOME success"));
    // A hold of an ended run, committed afterwards: still the run's.
    q(
        c,
        &format!("RESERVE {tag}h2 org:b gpt-4o INPUT 300 OUTPUT 0 RUN {tag}r2"),
    );
    q(c, &format!("RUN.END {tag}r2 OUTCOME failure"));
    q(c, &format!("COMMIT {tag}h2 INPUT 300 OUTPUT 0"));
}

#[test]
fn reports_answer_from_rollups_that_survive_a_stop_a_crash_and_damage() {
    let mut s = Server::start(&[]);
    let mut c = s.conn();
    book(&mut c, "a");
    let first = reports(&s);
    let groups = first.0["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3, "{}", first.0);
    assert_eq!(first.2["total"]["runs"], 2, "{}", first.2);
    assert_eq!(first.2["total"]["calls"], 3, "{}", first.2);
    // The range is rounded down to the hour, and said.
    let (_, v) = Http::new(&s, None).get("/v1/reports/spend?from=3600001&to=7300000");
    assert_eq!(
        (v["from"].clone(), v["to"].clone()),
        (3_600_000.into(), 7_200_000.into())
    );

    // A clean stop persists them; verify folds the ledger and compares.
    assert!(s.stop().success());
    let files: Vec<_> = std::fs::read_dir(s.dir.join("rollups")).unwrap().collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let (ok, out) = verify(&s.dir);
    assert!(ok && out.contains("1 rollup(s) matched the fold"), "{out}");
    s.restart();
    assert_eq!(reports(&s), first, "resumed at its seq");

    // More, then a crash: what the last rollup did not cover is folded
    // again from the ledger.
    let mut c = s.conn();
    book(&mut c, "b");
    let second = reports(&s);
    assert_eq!(second.2["total"]["runs"], 4, "{}", second.2);
    s.crash();
    s.restart();
    assert_eq!(reports(&s), second, "after a crash");

    // A damaged rollup: verify says so; the server starts and rebuilds.
    assert!(s.stop().success());
    let mut files: Vec<_> = (std::fs::read_dir(s.dir.join("rollups")).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let newest = files.last().unwrap().clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    let (ok, out) = verify(&s.dir);
    assert!(
        !ok && out.contains("the rollups") && out.contains("CRC"),
        "{out}"
    );
    s.restart();
    assert_eq!(reports(&s), second, "rebuilt past the damaged file");
    assert!(s.stop().success());
    let (ok, out) = verify(&s.dir);
    assert!(ok, "{out}");
}
