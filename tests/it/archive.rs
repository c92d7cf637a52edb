//! Ledger retention: old segments that every snapshot covers move to
//! `archive/` while the server runs, without changing any balance; start-up
//! needs only the live ledger; `ledger verify` and `ledger export` read the
//! archive too, and verify still passes (from a snapshot) once the archive
//! has been moved elsewhere.

use crate::common::*;

fn export(dir: &std::path::Path) -> Vec<serde_json::Value> {
    spendb_ok(&["ledger", "export", "--data-dir", dir.to_str().unwrap()])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn segments(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn old_segments_are_archived_and_balances_do_not_change() {
    let mut s = Server::start(&[
        "--segment-bytes",
        "4096",
        "--snapshot-every",
        "100",
        "--ledger-retain",
        "200",
    ]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:a TOKENS 100000000 PER MONTH").unwrap();
    for i in 0..1500 {
        let mut p = redis::pipe();
        p.cmd("RESERVE")
            .arg(format!("h{i}"))
            .arg(format!("org:a/agent:{}", i % 7))
            .arg("gpt-4o")
            .arg("INPUT")
            .arg(100)
            .arg("OUTPUT")
            .arg(50);
        if i % 4 != 0 {
            p.cmd("COMMIT")
                .arg(format!("h{i}"))
                .arg("INPUT")
                .arg(90)
                .arg("OUTPUT")
                .arg(40);
        }
        let _: Vec<redis::Value> = p.query(&mut c).unwrap();
    }
    let before = q(&mut c, "BALANCE org:a");
    let archived = segments(&s.dir.join("archive"));
    let live = segments(&s.dir.join("ledger"));
    assert!(archived.len() > 3, "archive: {archived:?}");
    assert_ne!(live[0], "00000000000000000001.seg", "live: {live:?}");

    // Start-up from the live ledger alone gives the same balances.
    s.stop();
    std::fs::rename(s.dir.join("archive"), s.dir.join("archive.away")).unwrap();
    s.restart();
    let mut c = s.conn();
    assert_eq!(q(&mut c, "BALANCE org:a"), before);
    assert_eq!(q(&mut c, "HOLD.GET h1499").s("status"), "committed");
    s.stop();

    // Without the archive, verify replays from a snapshot and says so.
    let (ok, out) = verify(&s.dir);
    assert!(ok, "{out}");
    assert!(out.contains("archived elsewhere"), "{out}");
    // The rollups too: the persisted one cannot be checked from entry 1.
    assert!(out.contains("rollup(s) not checked"), "{out}");

    // With it back, verify and export cover the whole ledger from entry 1.
    // (The restarted server may have archived more meanwhile.)
    std::fs::create_dir_all(s.dir.join("archive")).unwrap();
    for name in segments(&s.dir.join("archive.away")) {
        std::fs::rename(
            s.dir.join("archive.away").join(&name),
            s.dir.join("archive").join(&name),
        )
        .unwrap();
    }
    let (ok, out) = verify(&s.dir);
    assert!(ok, "{out}");
    assert!(!out.contains("archived elsewhere"), "{out}");
    let entries = export(&s.dir);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1, "{e}");
    }
    assert_eq!(entries[0]["kind"], "budget_set");
    let commits = entries.iter().filter(|e| e["kind"] == "commit").count();
    assert_eq!(commits, 1125);
    assert!(entries
        .iter()
        .any(|e| e["kind"] == "hold" && e["id"] == "h0" && e["scope"] == "org:a/agent:0"));
}
