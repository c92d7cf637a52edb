//! Cost per successful task: RESERVE / SPEND … RUN, RUN.END … OUTCOME over
//! RESP, and `/v1/reports/runs` over HTTP, before and after a restart
//! (the report is folded from the ledger on disk).

use serde_json::Value;

use crate::common::*;

fn usd(v: &Value) -> f64 {
    v.as_str()
        .unwrap_or_else(|| panic!("not a USD string: {v}"))
        .parse()
        .unwrap()
}

#[test]
fn runs_report_cost_per_run_and_per_success() {
    let mut s = Server::start(&[]);
    let mut c = s.conn();
    // Run 1 (org:a/agent:x) succeeds after two calls on two models.
    let g = q(
        &mut c,
        "RESERVE h1 org:a/agent:x gpt-4o INPUT 1000 OUTPUT 100 RUN task-1",
    );
    assert_eq!(g.s("status"), "granted");
    q(&mut c, "COMMIT h1 INPUT 1000 OUTPUT 100");
    q(
        &mut c,
        "SPEND org:a/agent:x gpt-4o-mini INPUT 2000 OUTPUT 0 RUN task-1",
    );
    let end = q(&mut c, "RUN.END task-1 OUTCOME success");
    assert_eq!(
        (
            end.s("status"),
            end.s("run"),
            end.i("steps"),
            end.s("outcome")
        ),
        ("ended".into(), "task-1".into(), 0, "success".into())
    );
    // Run 2 (org:b) fails after one call; its hold is committed after the
    // run ended, and still counts for it.
    q(
        &mut c,
        "RESERVE h2 org:b gpt-4o INPUT 3000 OUTPUT 10 run task-2",
    );
    let end = q(&mut c, "RUN.END task-2 outcome FAILURE");
    assert_eq!(end.s("outcome"), "failure");
    q(&mut c, "COMMIT h2 INPUT 3000 OUTPUT 10");
    // Run 3 ends without saying how; run 4 is still going.
    q(&mut c, "SPEND org:a gpt-4o INPUT 10 OUTPUT 10 RUN task-3");
    let end = q(&mut c, "RUN.END task-3");
    assert_eq!(end.get("outcome"), Some(&redis::Value::Nil));
    q(&mut c, "SPEND org:a gpt-4o INPUT 10 OUTPUT 10 RUN task-4");
    // A call outside any run is not in the report.
    q(&mut c, "SPEND org:a gpt-4o INPUT 99999 OUTPUT 0");

    let e = err(&mut c, "RUN.END task-4 OUTCOME maybe");
    assert!(e.contains("OUTCOME must be success or failure"), "{e}");
    let e = err(&mut c, "RUN.END nosuch OUTCOME success");
    assert!(e.starts_with("UNKNOWN"), "{e}");

    let check = |s: &Server| {
        let h = Http::new(s, None);
        let (st, v) = h.get("/v1/reports/runs");
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["open"], 1, "{v}");
        let t = &v["total"];
        assert_eq!(
            (
                &t["runs"],
                &t["succeeded"],
                &t["failed"],
                &t["unreported"],
                &t["calls"]
            ),
            (
                &Value::from(3),
                &Value::from(1),
                &Value::from(1),
                &Value::from(1),
                &Value::from(4)
            ),
            "{v}"
        );
        assert_eq!(t["success_rate"], 0.5);
        let cost = usd(&t["cost"]);
        // gpt-4o $2.50 / $10 per million; gpt-4o-mini $0.15 input.
        let task1 = 1000.0 * 2.5e-6 + 100.0 * 10e-6 + 2000.0 * 0.15e-6;
        let task2 = 3000.0 * 2.5e-6 + 10.0 * 10e-6;
        let task3 = 10.0 * 2.5e-6 + 10.0 * 10e-6;
        assert!((cost - (task1 + task2 + task3)).abs() < 1e-9, "{v}");
        assert!((usd(&t["cost_per_run"]) - cost / 3.0).abs() < 1e-9, "{v}");
        assert!(
            (usd(&t["cost_per_successful_run"]) - task1).abs() < 1e-9,
            "{v}"
        );
        assert!((usd(&t["cost_per_success"]) - cost).abs() < 1e-9, "{v}");
        assert_eq!(t["tokens_per_success"], 1000 + 100 + 2000 + 3010 + 20);
        // By scope (top level): org:a has runs 1 and 3, org:b run 2.
        let groups = v["groups"].as_array().unwrap();
        let keys: Vec<(&str, i64)> = (groups.iter())
            .map(|g| (g["key"].as_str().unwrap(), g["runs"].as_i64().unwrap()))
            .collect();
        assert_eq!(
            keys,
            vec![("org:b", 1), ("org:a", 2)],
            "largest cost first: {v}"
        );
        // By model: task-1 counts under both its models.
        let (_, v) = h.get("/v1/reports/runs?group=model");
        let runs: Vec<(&str, i64)> = (v["groups"].as_array().unwrap().iter())
            .map(|g| (g["key"].as_str().unwrap(), g["runs"].as_i64().unwrap()))
            .collect();
        assert_eq!(runs, vec![("gpt-4o", 3), ("gpt-4o-mini", 1)], "{v}");
        // A scope filter, a level, and a time range that ends before them.
        let (_, v) = h.get("/v1/reports/runs?scope=org:a&level=2");
        let keys: Vec<&str> = (v["groups"].as_array().unwrap().iter())
            .map(|g| g["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, vec!["org:a/agent:x", "org:a"], "{v}");
        assert_eq!(v["open"], 1);
        let (_, v) = h.get("/v1/reports/runs?to=1");
        assert_eq!(
            (&v["total"]["runs"], &v["total"]["success_rate"]),
            (&Value::from(0), &Value::Null)
        );
        assert_eq!(h.get("/v1/reports/runs?group=day").0, 422);
        assert_eq!(h.get("/v1/reports/runs?level=9").0, 422);
        assert_eq!(h.get("/v1/reports/runs?group=model&level=0").0, 422);
        assert_eq!(h.get("/v1/reports/runs?from=x").0, 400);
    };
    check(&s);
    // The report is the ledger's: the same after a crash and restart.
    s.crash();
    s.restart();
    check(&s);
    // Runs and outcomes are ledger entries, in the export too.
    let h = Http::new(&s, None);
    let (_, v) = h.get("/v1/ledger?limit=1000");
    let entries = v["entries"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert!(entries
        .iter()
        .any(|e| e["kind"] == "run_end" && e["run"] == "task-1" && e["outcome"] == "success"));
    assert!(entries
        .iter()
        .any(|e| e["kind"] == "hold" && e["run"] == "task-2"));
    s.stop();
    let (ok, out) = verify(&s.dir);
    assert!(ok, "{out}");
}
