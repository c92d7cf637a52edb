//! An old data dir keeps opening (issue #13, explicit formats): the data dir
//! in `tests/data/datadir-v0.1.0.tar.gz` was made by the release before the
//! formats became their own types (commit ab9a7a5, with
//! `tests/data/make-datadir.sh`): every entry kind, a snapshot at entry 17 and
//! a ledger tail after it, cut by SIGKILL. This build must verify it, export
//! exactly the JSON lines that release exported, and serve its figures.

use std::process::Command;

use crate::common::*;

fn unpack() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let archive = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/datadir-v0.1.0.tar.gz"
    );
    let st = Command::new("tar")
        .args(["xzf", archive, "-C"])
        .arg(tmp.path())
        .status()
        .expect("tar (to unpack the old data dir)");
    assert!(st.success());
    let dir = tmp.path().join("data");
    (tmp, dir)
}

#[test]
fn a_data_dir_of_the_previous_release_verifies_exports_and_serves() {
    let (_tmp, dir) = unpack();
    let (ok, text) = verify(&dir);
    assert!(ok, "{text}");
    assert!(
        text.contains("ledger ok: 23 entries") && text.contains("1 snapshot(s) matched the replay"),
        "{text}"
    );
    // The JSON view of the ledger is the same, byte for byte.
    let exported = spendb_ok(&["ledger", "export", "--data-dir", dir.to_str().unwrap()]);
    let want = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/datadir-v0.1.0.export.jsonl"
    ))
    .unwrap();
    assert_eq!(exported, want);

    // It serves the figures the old release had, whatever the date: a run
    // timeout of a century keeps run-2 (idle since the fixture was made),
    // and what does not depend on time is checked (the open holds may have
    // expired by now; usage of a TOTAL limit never resets).
    let mut s = Server::start_in(&dir, &["--run-timeout", "876000h"]);
    let mut c = s.conn();
    let h = q(&mut c, "HOLD.GET open-1");
    assert!(
        ["open", "expired"].contains(&h.s("status").as_str()),
        "{h:?}"
    );
    assert_eq!(
        (h.s("scope"), h.i("input"), h.i("output"), h.i("tokens")),
        ("org:old/team:a/agent:x".into(), 1000, 500, 1500)
    );
    let b = q(&mut c, "BUDGET.GET org:old/team:a");
    assert_eq!(limit(&b, "INPUT", "PER TOTAL").i("used"), 2000);
    assert_eq!(q(&mut c, "PRICE.GET old-model").s("output"), "6");
    // run-1 ended in the ledger; run-2 (after the snapshot) is still there.
    assert!(err(&mut c, "RUN.END run-1").starts_with("UNKNOWN"));
    assert_eq!(q(&mut c, "RUN.END run-2").i("steps"), 1);
    assert_eq!(
        q(
            &mut c,
            "RESERVE new-1 org:old/team:a gpt-4o INPUT 1 OUTPUT 0"
        )
        .s("status"),
        "granted"
    );
    assert!(s.stop().success());
    // The new entries follow the old ones, which export unchanged.
    let (ok, text) = verify(&dir);
    assert!(ok, "{text}");
    let now = spendb_ok(&["ledger", "export", "--data-dir", dir.to_str().unwrap()]);
    assert!(now.starts_with(&want), "the old entries changed");
    assert!(now.lines().count() >= 25, "{now}");
}
