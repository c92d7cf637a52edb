//! The semantic cache over a real server (issue #17): exact and near hits,
//! misses below the threshold, the namespace's dimension, the FP32 and
//! VALUES forms, TTL edges, eviction, a restart, savings booked and
//! verified, and tenants' namespaces kept apart.

use std::time::Duration;

use crate::common::*;

fn fp32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

/// `CACHE.VSET ns VALUES n … value [extra…]`, returning the id.
fn vset(c: &mut redis::Connection, ns: &str, v: &[f32], value: &str, extra: &[&str]) -> i64 {
    let mut cmd = redis::cmd("CACHE.VSET");
    cmd.arg(ns).arg("VALUES").arg(v.len());
    for x in v {
        cmd.arg(x.to_string());
    }
    cmd.arg(value);
    for e in extra {
        cmd.arg(*e);
    }
    match cmd.query::<redis::Value>(c).unwrap() {
        redis::Value::Int(id) => id,
        other => panic!("VSET answered {other:?}"),
    }
}

/// `CACHE.VGET ns FP32 blob [extra…]`: the hit's fields, or None.
fn vget(c: &mut redis::Connection, ns: &str, v: &[f32], extra: &[&str]) -> Option<Reply> {
    let mut cmd = redis::cmd("CACHE.VGET");
    cmd.arg(ns).arg("FP32").arg(fp32(v));
    for e in extra {
        cmd.arg(*e);
    }
    match cmd.query::<redis::Value>(c).unwrap() {
        redis::Value::Nil => None,
        v => Some(fields(v)),
    }
}

fn vget_err(c: &mut redis::Connection, args: &[&[u8]]) -> String {
    let mut cmd = redis::cmd("CACHE.VGET");
    for a in args {
        cmd.arg(*a);
    }
    match cmd.query::<redis::Value>(c) {
        Err(e) => e.to_string(),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[test]
fn exact_and_near_hits_and_misses_below_the_threshold() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let east = vset(
        &mut c,
        "qa",
        &[1.0, 0.0, 0.0, 0.0],
        "answer-east",
        &["KEY", "what is east?"],
    );
    let north = vset(&mut c, "qa", &[0.0, 1.0, 0.0, 0.0], "answer-north", &[]);
    assert_ne!(east, north);

    let hit = vget(&mut c, "qa", &[1.0, 0.0, 0.0, 0.0], &[]).unwrap();
    assert_eq!(hit.s("value"), "answer-east");
    assert_eq!(hit.s("score"), "1.000000");
    assert_eq!(hit.s("key"), "what is east?");
    assert_eq!(hit.i("id"), east);
    // Near: cosine 0.995 ≥ 0.9 (the default threshold).
    let near = vget(&mut c, "qa", &[1.0, 0.1, 0.0, 0.0], &[]).unwrap();
    assert_eq!(
        (near.s("value").as_str(), near.s("score").as_str()),
        ("answer-east", "0.995037")
    );
    // Below the threshold: cosine 0.707.
    assert!(vget(&mut c, "qa", &[1.0, 1.0, 0.0, 0.0], &[]).is_none());
    // A lower threshold on the request, then as the namespace's default.
    assert!(vget(&mut c, "qa", &[1.0, 1.0, 0.0, 0.0], &["THRESHOLD", "0.7"]).is_some());
    assert_eq!(
        raw(&mut c, "CACHE.VCONFIG qa THRESHOLD 0.7").unwrap(),
        redis::Value::Okay
    );
    assert!(vget(&mut c, "qa", &[1.0, 1.0, 0.0, 0.0], &[]).is_some());
    let cfg = q(&mut c, "CACHE.VCONFIG qa");
    assert_eq!(
        (cfg.s("threshold").as_str(), cfg.i("dimension"), cfg.i("ef")),
        ("0.7", 4, 96)
    );
    // The search's ef, the namespace's and a request's (an exact index
    // below --semantic-approx-from ignores it; the answer is the same).
    assert_eq!(
        raw(&mut c, "CACHE.VCONFIG qa EF 40 THRESHOLD 0.75").unwrap(),
        redis::Value::Okay
    );
    let cfg = q(&mut c, "CACHE.VCONFIG qa");
    assert_eq!((cfg.s("threshold").as_str(), cfg.i("ef")), ("0.75", 40));
    assert!(vget(&mut c, "qa", &[1.0, 1.0, 0.0, 0.0], &[]).is_none());
    raw(&mut c, "CACHE.VCONFIG qa THRESHOLD 0.7").unwrap();
    assert_eq!(q(&mut c, "CACHE.VCONFIG qa").i("ef"), 40, "kept");
    let with_ef = vget(&mut c, "qa", &[1.0, 0.1, 0.0, 0.0], &["EF", "4096"]).unwrap();
    assert_eq!(with_ef.i("id"), east);
    for bad in ["EF 0", "EF 4097", "EF x", "EF -3"] {
        let e = err(&mut c, &format!("CACHE.VGET qa VALUES 4 1 0 0 0 {bad}"));
        assert!(e.starts_with("ERR"), "{bad}: {e}");
        let e = err(&mut c, &format!("CACHE.VCONFIG qa {bad}"));
        assert!(e.starts_with("ERR"), "{bad}: {e}");
    }
    assert!(err(&mut c, "CACHE.VCONFIG qa EF 0").contains("EF must be from 1 to 4096"));
    assert!(err(&mut c, "CACHE.VGET qa VALUES 4 1 0 0 0 EF 1 EF 2").starts_with("ERR syntax"));
    assert!(err(&mut c, "CACHE.VCONFIG qa EF").starts_with("ERR syntax"));
    // A bad THRESHOLD beside a good EF changes neither.
    assert!(err(&mut c, "CACHE.VCONFIG qa EF 10 THRESHOLD 2").contains("between -1 and 1"));
    let cfg = q(&mut c, "CACHE.VCONFIG qa");
    assert_eq!((cfg.s("threshold").as_str(), cfg.i("ef")), ("0.7", 40));

    let st = q(&mut c, "CACHE.STATS qa");
    assert_eq!(
        (
            st.i("semantic_entries"),
            st.i("semantic_dimension"),
            st.i("semantic_hits"),
            st.i("semantic_misses")
        ),
        (2, 4, 5, 2)
    );
    assert_eq!(st.s("semantic_hit_rate"), "0.7143");
    assert!(st.i("semantic_index_bytes") >= 2 * 4 * 4);
    // The exact cache's fields are still there, first.
    assert_eq!(st.i("entries"), 0);

    assert_eq!(
        raw(&mut c, &format!("CACHE.VDEL qa {east}")).unwrap(),
        redis::Value::Int(1)
    );
    assert_eq!(
        raw(&mut c, &format!("CACHE.VDEL qa {east}")).unwrap(),
        redis::Value::Int(0)
    );
    let after = vget(&mut c, "qa", &[1.0, 0.1, 0.0, 0.0], &["THRESHOLD", "-1"]).unwrap();
    assert_eq!(after.s("value"), "answer-north");
    assert_eq!(after.get("key"), Some(&redis::Value::Nil));
}

#[test]
fn the_dimension_and_the_two_vector_forms() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let v = [0.25f32, -1.5, 3.0];
    let id = vset(&mut c, "d", &v, "x", &[]);
    // FP32 and VALUES give the same vector: an exact hit either way.
    assert_eq!(vget(&mut c, "d", &v, &[]).unwrap().i("id"), id);
    let mut by_values = redis::cmd("CACHE.VGET");
    by_values
        .arg("d")
        .arg("VALUES")
        .arg(3)
        .arg("0.25")
        .arg("-1.5")
        .arg("3");
    assert_eq!(
        fields(by_values.query(&mut c).unwrap()).s("score"),
        "1.000000"
    );

    let e = vget_err(&mut c, &[b"d", b"FP32", &fp32(&[1.0, 2.0])]);
    assert!(
        e.contains("vector has 2 dimensions; namespace d has 3"),
        "{e}"
    );
    assert!(err(&mut c, "CACHE.VSET d VALUES 2 1 2 v").contains("namespace d has 3"));
    assert!(vget_err(&mut c, &[b"d", b"FP32", b"abc"]).contains("multiple of 4 bytes"));
    assert!(err(&mut c, "CACHE.VGET d VALUES 3 1 2").contains("VALUES 3 needs 3 numbers"));
    assert!(err(&mut c, "CACHE.VGET d VALUES 3 1 2 x").contains("must be a number"));
    assert!(err(&mut c, "CACHE.VGET d VALUES 3 0 0 0").contains("zero vector"));
    assert!(err(&mut c, "CACHE.VGET d VALUES 0").contains("1 to 4096 dimensions"));
    assert!(err(&mut c, "CACHE.VGET d VALUES 3 1 2 3 THRESHOLD 2").contains("between -1 and 1"));
    assert!(err(&mut c, "CACHE.VSET d VALUES 3 1 2 3 v TTL 0").contains("TTL must be at least 1"));
    assert!(err(&mut c, "CACHE.VSET d VALUES 3 1 2 3 v COST x").starts_with("ERR"));
    assert!(err(&mut c, "CACHE.VSET d VALUES 3 1 2 3").starts_with("ERR syntax"));
    assert!(err(&mut c, "CACHE.VDEL d x").starts_with("ERR"));
    // A new namespace takes any dimension.
    vset(&mut c, "d2", &[1.0, 2.0], "y", &[]);
    // Another dimension in another namespace leaves the sum's dimension unset.
    assert_eq!(q(&mut c, "CACHE.STATS").i("semantic_dimension"), 0);
}

#[test]
fn expired_entries_are_never_served_and_are_reclaimed() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    vset(&mut c, "t", &[1.0, 0.0], "short", &["TTL", "200"]);
    vset(&mut c, "t", &[0.9, 0.1], "long", &["TTL", "600000"]);
    // The short one is the nearer, until it expires.
    assert_eq!(
        vget(&mut c, "t", &[1.0, 0.0], &[]).unwrap().s("value"),
        "short"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        vget(&mut c, "t", &[1.0, 0.0], &[]).unwrap().s("value"),
        "long"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let st = q(&mut c, "CACHE.STATS t");
    assert_eq!((st.i("semantic_entries"), st.i("semantic_expired")), (1, 1));
}

#[test]
fn the_least_recently_used_are_evicted_under_the_bound() {
    // Each entry: 2 × 4 vector bytes + a 100-byte value = 108.
    let s = Server::start(&["--cache-max-bytes", "324", "--cache-max-value", "200"]);
    let mut c = s.conn();
    let v = "x".repeat(100);
    let a = vset(&mut c, "ns", &[1.0, 0.0], &v, &[]);
    vset(&mut c, "ns", &[0.0, 1.0], &v, &[]);
    vset(&mut c, "ns", &[-1.0, 0.0], &v, &[]);
    vget(&mut c, "ns", &[1.0, 0.0], &[]).unwrap(); // a is the newest now
    vset(&mut c, "ns", &[0.0, -1.0], &v, &[]);
    // [0, 1] was the least recently used.
    assert!(vget(&mut c, "ns", &[0.0, 1.0], &["THRESHOLD", "0.99"]).is_none());
    assert_eq!(vget(&mut c, "ns", &[1.0, 0.0], &[]).unwrap().i("id"), a);
    let st = q(&mut c, "CACHE.STATS ns");
    assert_eq!(
        (
            st.i("semantic_entries"),
            st.i("semantic_bytes"),
            st.i("semantic_evictions")
        ),
        (3, 324, 1)
    );
    let big = "y".repeat(201);
    assert!(err(&mut c, &format!("CACHE.VSET ns VALUES 2 1 1 {big}"))
        .contains("over the 200-byte limit"));
}

#[test]
fn entries_and_settings_survive_a_restart_and_savings_are_in_the_ledger() {
    let mut s = Server::start(&[]);
    let mut c = s.conn();
    vset(
        &mut c,
        "keep",
        &[1.0, 0.0, 0.0],
        "kept",
        &["COST", "0.02", "KEY", "prompt 1"],
    );
    vset(&mut c, "keep", &[0.0, 1.0, 0.0], "gone", &["TTL", "100"]);
    raw(&mut c, "CACHE.VCONFIG keep THRESHOLD 0.95 EF 64").unwrap();
    // Two hits booked to a scope, one without.
    for _ in 0..2 {
        let hit = vget(
            &mut c,
            "keep",
            &[1.0, 0.05, 0.0],
            &["SCOPE", "org:acme/agent:a"],
        )
        .unwrap();
        assert_eq!(hit.s("value"), "kept");
    }
    vget(&mut c, "keep", &[1.0, 0.05, 0.0], &[]).unwrap();
    assert_eq!(q(&mut c, "BALANCE org:acme").s("saved"), "0.04");
    assert_eq!(q(&mut c, "CACHE.STATS keep").s("semantic_saved"), "0.06");
    drop(c);
    assert!(s.stop().success());
    let (ok, report) = verify(&s.dir);
    assert!(ok, "{report}");
    std::thread::sleep(Duration::from_millis(150));
    s.restart();
    let mut c = s.conn();
    assert_eq!(q(&mut c, "BALANCE org:acme").s("saved"), "0.04");
    let cfg = q(&mut c, "CACHE.VCONFIG keep");
    assert_eq!(
        (cfg.s("threshold").as_str(), cfg.i("dimension"), cfg.i("ef")),
        ("0.95", 3, 64)
    );
    let hit = vget(&mut c, "keep", &[1.0, 0.05, 0.0], &[]).unwrap();
    assert_eq!(
        (hit.s("value").as_str(), hit.s("key").as_str()),
        ("kept", "prompt 1")
    );
    assert!(vget(&mut c, "keep", &[0.0, 1.0, 0.0], &[]).is_none());
    assert_eq!(q(&mut c, "CACHE.STATS keep").i("semantic_entries"), 1);
    // The same KEY replaces the entry rather than adding one.
    vset(
        &mut c,
        "keep",
        &[1.0, 0.0, 0.0],
        "kept again",
        &["KEY", "prompt 1"],
    );
    assert_eq!(q(&mut c, "CACHE.STATS keep").i("semantic_entries"), 1);
}

const USERS: &str = r#"
    [users.a]
    password = "a-pass"
    commands = ["@agent", "cache.*"]
    scopes = ["org:a"]

    [users.b]
    password = "b-pass"
    commands = ["@agent", "cache.*"]
    scopes = ["org:b"]

    [users.reader]
    password = "r-pass"
    commands = ["@read"]
"#;

#[test]
fn tenants_namespaces_and_rights() {
    let s = Server::with_users(USERS, &[]);
    let mut a = s.conn_as("a", "a-pass");
    let mut b = s.conn_as("b", "b-pass");
    vset(&mut a, "ns", &[1.0, 0.0], "a's answer", &["COST", "0.5"]);
    // b neither finds nor deletes a's entry under the same namespace.
    assert!(vget(&mut b, "ns", &[1.0, 0.0], &[]).is_none());
    assert_eq!(
        raw(&mut b, "CACHE.VDEL ns 0").unwrap(),
        redis::Value::Int(0)
    );
    // b's namespace of the same name has its own dimension.
    vset(&mut b, "ns", &[1.0, 0.0, 0.0], "b's answer", &[]);
    assert_eq!(
        vget(&mut a, "ns", &[1.0, 0.0], &[]).unwrap().s("value"),
        "a's answer"
    );
    // A hit booked to another tenant's scope is refused.
    let mut cmd = redis::cmd("CACHE.VGET");
    cmd.arg("ns")
        .arg("FP32")
        .arg(fp32(&[1.0, 0.0]))
        .arg("SCOPE")
        .arg("org:b");
    let e = cmd.query::<redis::Value>(&mut a).unwrap_err().to_string();
    assert!(e.contains("outside this user's scopes"), "{e}");
    assert!(vget(&mut a, "ns", &[1.0, 0.0], &["SCOPE", "org:a/agent:x"]).is_some());
    assert_eq!(q(&mut a, "BALANCE org:a").s("saved"), "0.5");
    // Each tenant's CACHE.STATS counts its own namespaces.
    assert_eq!(q(&mut a, "CACHE.STATS").i("semantic_entries"), 1);
    // A user without cache.* rights may not write.
    let mut r = s.conn_as("reader", "r-pass");
    assert!(err(&mut r, "CACHE.VSET ns VALUES 2 1 0 v").contains("NOPERM"));
    assert!(err(&mut r, "CACHE.VGET ns VALUES 2 1 0").contains("NOPERM"));
}

#[test]
fn the_admin_api_and_metrics_show_the_semantic_cache() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    vset(&mut c, "qa", &[1.0, 0.0], "a", &["COST", "0.25"]);
    vget(&mut c, "qa", &[1.0, 0.01], &[]).unwrap();
    assert!(vget(&mut c, "qa", &[0.0, 1.0], &[]).is_none());
    // A hit that books savings: timed once, its search and the booking.
    vget(&mut c, "qa", &[1.0, 0.02], &["SCOPE", "org:qa"]).unwrap();
    let h = Http::new(&s, None);
    let (status, stats) = h.get("/v1/cache/stats?ns=qa");
    assert_eq!(status, 200);
    assert_eq!(stats["semantic_entries"], 1);
    assert_eq!(stats["semantic_dimension"], 2);
    assert_eq!(
        (
            stats["semantic_hits"].clone(),
            stats["semantic_misses"].clone()
        ),
        (2.into(), 1.into())
    );
    assert_eq!(stats["semantic_saved"], "0.5");
    assert_eq!(
        stats["entries"], 0,
        "the exact cache's own figures are unchanged"
    );
    let (_, metrics) = h.get("/metrics");
    let text = metrics.as_str().unwrap();
    for line in [
        "spendb_semantic_cache_entries 1",
        "spendb_semantic_cache_hits_total 2",
        "spendb_semantic_cache_misses_total 1",
        "spendb_semantic_cache_saved_usd_total 0.5",
        // Every CACHE command is in the latency histogram, scoped or not.
        "spendb_request_duration_seconds_count{command=\"cache.vset\"} 1",
        "spendb_request_duration_seconds_count{command=\"cache.vget\"} 3",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in /metrics");
    }
}

#[test]
fn past_approx_from_an_hnsw_graph_answers_and_comes_back_after_a_restart() {
    let mut s = Server::start(&["--semantic-approx-from", "40"]);
    let mut c = s.conn();
    // 60 directions around a circle in 3 dimensions, each its own answer.
    let point = |i: usize| {
        let a = i as f32 * std::f32::consts::TAU / 60.0;
        [a.cos(), a.sin(), 0.2]
    };
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(vset(&mut c, "big", &point(i), &format!("answer {i}"), &[]));
    }
    let approximate = |c: &mut redis::Connection| q(c, "CACHE.STATS big").i("semantic_approximate");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while approximate(&mut c) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no HNSW graph after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in [0, 17, 59] {
        let hit = vget(&mut c, "big", &point(i), &["THRESHOLD", "0.999"]).unwrap();
        assert_eq!(
            (hit.s("value"), hit.i("id")),
            (format!("answer {i}"), ids[i])
        );
        // A search that keeps every candidate finds the same.
        let wide = vget(&mut c, "big", &point(i), &["EF", "200"]).unwrap();
        assert_eq!(wide.i("id"), ids[i]);
    }
    // A deleted entry is gone from the graph too; the next nearest answers.
    raw(&mut c, &format!("CACHE.VDEL big {}", ids[17])).unwrap();
    let hit = vget(&mut c, "big", &point(17), &["THRESHOLD", "0.9"]).unwrap();
    assert!(
        ["answer 16", "answer 18"].contains(&hit.s("value").as_str()),
        "{}",
        hit.s("value")
    );
    // An entry that expires is never served, graph or not.
    vset(
        &mut c,
        "big",
        &[0.0, 0.0, 1.0],
        "short-lived",
        &["TTL", "150"],
    );
    assert_eq!(
        vget(&mut c, "big", &[0.0, 0.0, 1.0], &[])
            .unwrap()
            .s("value"),
        "short-lived"
    );
    std::thread::sleep(Duration::from_millis(250));
    let later = vget(&mut c, "big", &[0.0, 0.0, 1.0], &["THRESHOLD", "-1"]).unwrap();
    assert_ne!(later.s("value"), "short-lived");
    // After a restart the graph is rebuilt in the background; the exact
    // index answers the same meanwhile.
    drop(c);
    assert!(s.stop().success());
    s.restart();
    let mut c = s.conn();
    assert_eq!(
        vget(&mut c, "big", &point(59), &[]).unwrap().i("id"),
        ids[59]
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while approximate(&mut c) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no HNSW graph after the restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(vget(&mut c, "big", &point(3), &[]).unwrap().i("id"), ids[3]);
    assert_eq!(q(&mut c, "CACHE.STATS big").i("semantic_entries"), 59);
}
