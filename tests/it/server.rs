//! The real binary over real sockets, driven by the `redis` crate.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;

#[test]
fn core_loop_reserve_commit_balance() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert_eq!(
        raw(&mut c, "PING").unwrap(),
        redis::Value::SimpleString("PONG".into())
    );
    assert_eq!(
        raw(
            &mut c,
            "BUDGET.SET org:acme TOKENS 100000 PER DAY COST 10 PER MONTH"
        )
        .unwrap(),
        redis::Value::Okay
    );

    let r = q(
        &mut c,
        "RESERVE h1 org:acme/team:search/agent:coder gpt-4o INPUT 1200 OUTPUT 800",
    );
    assert_eq!(r.s("status"), "granted");
    assert_eq!(r.i("tokens"), 2000);
    // gpt-4o: $2.50/M in, $10/M out → 1200×2.5e-6 + 800×1e-5 = 0.003 + 0.008
    assert_eq!(r.s("cost"), "0.011");
    assert!(r.i("expires_at") > 0);

    let b = q(&mut c, "BALANCE org:acme/team:search/agent:coder");
    assert_eq!(dim(&b, "held", "tokens"), "2000");
    assert_eq!(limit(&b, "TOKENS", "PER DAY").s("remaining"), "98000");

    let r = q(&mut c, "COMMIT h1 INPUT 1200 OUTPUT 350");
    assert_eq!(r.s("status"), "committed");
    assert_eq!(r.s("cost"), "0.0065");
    assert_eq!(r.s("released"), "0.0045");
    assert_eq!(r.i("released_tokens"), 450);
    assert_eq!(r.s("overrun"), "0");
    assert_eq!(r.i("late"), 0);

    // Spend is attributed to every level.
    for scope in [
        "org:acme",
        "org:acme/team:search",
        "org:acme/team:search/agent:coder",
    ] {
        let b = q(&mut c, &format!("BALANCE {scope}"));
        assert_eq!(dim(&b, "spent", "tokens"), "1550", "{scope}");
        assert_eq!(dim(&b, "spent", "cost"), "0.0065", "{scope}");
        assert_eq!(dim(&b, "held", "tokens"), "0", "{scope}");
    }
    let g = q(&mut c, "BUDGET.GET org:acme");
    assert_eq!(limit(&g, "COST", "PER MONTH").s("used"), "0.0065");
    assert_eq!(limit(&g, "COST", "PER MONTH").s("remaining"), "9.9935");
    let h = q(&mut c, "HOLD.GET h1");
    assert_eq!(h.s("status"), "committed");
    assert_eq!(h.s("actual_cost"), "0.0065");
}

#[test]
fn idempotent_replays_and_conflicts() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:x TOKENS 1000 PER DAY").unwrap();
    let first = q(
        &mut c,
        "RESERVE r1 org:x gpt-4o INPUT 100 OUTPUT 100 TTL 60000",
    );
    let again = q(
        &mut c,
        "RESERVE r1 org:x gpt-4o INPUT 100 OUTPUT 100 TTL 60000",
    );
    assert_eq!(first, again);
    assert!(err(
        &mut c,
        "RESERVE r1 org:x gpt-4o INPUT 101 OUTPUT 100 TTL 60000"
    )
    .starts_with("EXISTS hold r1"));
    // Held only once.
    assert_eq!(
        limit(&q(&mut c, "BUDGET.GET org:x"), "TOKENS", "PER DAY").s("held"),
        "200"
    );

    let c1 = q(&mut c, "COMMIT r1 INPUT 100 OUTPUT 50");
    let c2 = q(&mut c, "COMMIT r1 INPUT 100 OUTPUT 50");
    assert_eq!(c1, c2);
    assert!(
        err(&mut c, "COMMIT r1 INPUT 100 OUTPUT 51").starts_with("EXISTS hold r1 was committed")
    );
    assert_eq!(
        limit(&q(&mut c, "BUDGET.GET org:x"), "TOKENS", "PER DAY").s("used"),
        "150"
    );
    // The RESERVE replayed after the commit still returns its first answer.
    assert_eq!(
        q(
            &mut c,
            "RESERVE r1 org:x gpt-4o INPUT 100 OUTPUT 100 TTL 60000"
        ),
        first
    );

    // RELEASE is idempotent; COMMIT after RELEASE and RELEASE after COMMIT are refused.
    q(&mut c, "RESERVE r2 org:x gpt-4o INPUT 10 OUTPUT 0");
    assert_eq!(q(&mut c, "RELEASE r2").s("status"), "released");
    assert_eq!(q(&mut c, "RELEASE r2").s("status"), "released");
    assert!(err(&mut c, "COMMIT r2 INPUT 1 OUTPUT 1").starts_with("STATE hold r2 was released"));
    assert!(err(&mut c, "RELEASE r1").starts_with("STATE hold r1 was committed"));
    assert!(err(&mut c, "COMMIT nope INPUT 1 OUTPUT 1").starts_with("UNKNOWN hold nope"));

    // SPEND with ID is idempotent too.
    let s1 = q(&mut c, "SPEND org:x gpt-4o INPUT 10 OUTPUT 10 ID sp1");
    assert_eq!(
        q(&mut c, "SPEND org:x gpt-4o INPUT 10 OUTPUT 10 ID sp1"),
        s1
    );
    assert!(
        err(&mut c, "SPEND org:x gpt-4o INPUT 11 OUTPUT 10 ID sp1").starts_with("EXISTS spend sp1")
    );
    assert_eq!(
        limit(&q(&mut c, "BUDGET.GET org:x"), "TOKENS", "PER DAY").s("used"),
        "170"
    );
}

#[test]
fn denials_carry_reasons_and_leave_nothing() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:d TOKENS 1000 PER DAY").unwrap();
    q(&mut c, "RESERVE a org:d gpt-4o INPUT 600 OUTPUT 0");
    let d = q(&mut c, "RESERVE b org:d/user:1 gpt-4o INPUT 500 OUTPUT 0");
    assert_eq!(d.s("status"), "denied");
    assert_eq!(d.s("scope"), "org:d");
    assert_eq!(d.s("limit"), "TOKENS PER DAY");
    assert_eq!(d.i("remaining"), 400);
    // The open hold is what blocks: the denial says so, and the wait is
    // until it expires (the default TTL, 10 minutes), not the day's end.
    assert_eq!(d.i("held"), 600);
    assert_eq!(d.s("reason"), "held");
    let retry = d.i("retry_after_ms");
    assert!(retry > 590_000 && retry <= 600_000, "{retry}");
    // The denial created no hold and claimed no id.
    assert!(err(&mut c, "HOLD.GET b").starts_with("UNKNOWN hold b"));
    assert_eq!(
        dim(&q(&mut c, "BALANCE org:d/user:1"), "held", "tokens"),
        "0"
    );

    // Once usage (not holds) is what blocks, the wait is until the period ends.
    q(&mut c, "COMMIT a INPUT 600 OUTPUT 0");
    let d = q(&mut c, "RESERVE b org:d/user:1 gpt-4o INPUT 500 OUTPUT 0");
    assert_eq!(d.s("status"), "denied");
    assert_eq!((d.s("reason"), d.i("held")), ("used".to_string(), 0));
    let retry = d.i("retry_after_ms");
    assert!(retry > 0 && retry <= 86_400_000, "{retry}");
    // Larger than the limit itself: waiting cannot help.
    let d = q(&mut c, "RESERVE big org:d gpt-4o INPUT 1001 OUTPUT 0");
    assert_eq!(
        (d.s("reason"), d.i("retry_after_ms")),
        ("limit".to_string(), -1)
    );
    let resets = limit(&q(&mut c, "BUDGET.GET org:d"), "TOKENS", "PER DAY").i("resets_at");
    assert_eq!(resets % 86_400_000, 0, "a day resets at UTC midnight");

    // Raising the budget: the same id is judged afresh.
    raw(&mut c, "BUDGET.SET org:d TOKENS 2000 PER DAY").unwrap();
    assert_eq!(
        q(&mut c, "RESERVE b org:d/user:1 gpt-4o INPUT 500 OUTPUT 0").s("status"),
        "granted"
    );
    // The usage carried over: the limit kept its window.
    assert_eq!(
        limit(&q(&mut c, "BUDGET.GET org:d"), "TOKENS", "PER DAY").s("used"),
        "600"
    );
}

#[test]
fn hierarchy_every_ancestor_is_checked() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:h REQUESTS 3 PER DAY").unwrap();
    raw(&mut c, "BUDGET.SET org:h/team:a REQUESTS 10 PER DAY").unwrap();
    raw(&mut c, "BUDGET.SET org:h/team:b REQUESTS 1 PER DAY").unwrap();
    assert_eq!(
        q(
            &mut c,
            "RESERVE b1 org:h/team:b/user:1 gpt-4o INPUT 1 OUTPUT 0"
        )
        .s("status"),
        "granted"
    );
    let d = q(
        &mut c,
        "RESERVE b2 org:h/team:b/user:2 gpt-4o INPUT 1 OUTPUT 0",
    );
    assert_eq!(
        (d.s("status"), d.s("scope")),
        ("denied".into(), "org:h/team:b".into())
    );
    assert_eq!(
        q(&mut c, "RESERVE a1 org:h/team:a gpt-4o INPUT 1 OUTPUT 0").s("status"),
        "granted"
    );
    assert_eq!(
        q(
            &mut c,
            "RESERVE a2 org:h/team:a/agent:x gpt-4o INPUT 1 OUTPUT 0"
        )
        .s("status"),
        "granted"
    );
    // team:a allows 10, but the org allows only 3 in all: all or nothing.
    let d = q(&mut c, "RESERVE a3 org:h/team:a gpt-4o INPUT 1 OUTPUT 0");
    assert_eq!(
        (d.s("status"), d.s("scope")),
        ("denied".into(), "org:h".into())
    );
    // team:a's limit was not touched by the failed attempt.
    assert_eq!(
        limit(&q(&mut c, "BUDGET.GET org:h/team:a"), "REQUESTS", "PER DAY").i("held"),
        2
    );
    let list = raw(&mut c, "BUDGET.LIST org:h").unwrap();
    assert_eq!(
        list,
        redis::Value::Array(
            ["org:h", "org:h/team:a", "org:h/team:b"]
                .iter()
                .map(|s| redis::Value::BulkString(s.as_bytes().to_vec()))
                .collect()
        )
    );
    assert_eq!(
        raw(&mut c, "BUDGET.DEL org:h").unwrap(),
        redis::Value::Int(1)
    );
    assert_eq!(
        raw(&mut c, "BUDGET.DEL org:h").unwrap(),
        redis::Value::Int(0)
    );
    assert_eq!(
        q(&mut c, "RESERVE a3 org:h/team:a gpt-4o INPUT 1 OUTPUT 0").s("status"),
        "granted"
    );
}

#[test]
fn cost_budgets_from_prices() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET proj:p COST 0.01 PER DAY").unwrap();
    // Dated names fall back to their family.
    let p = q(&mut c, "PRICE.GET gpt-4o-2024-08-06");
    assert_eq!(
        (p.s("matched"), p.s("input"), p.s("output")),
        ("gpt-4o".into(), "2.5".into(), "10".into())
    );
    // 1000 in + 500 out of gpt-4o = 0.0025 + 0.005 = 0.0075
    assert_eq!(
        q(
            &mut c,
            "RESERVE c1 proj:p gpt-4o-2024-08-06 INPUT 1000 OUTPUT 500"
        )
        .s("cost"),
        "0.0075"
    );
    let d = q(&mut c, "RESERVE c2 proj:p gpt-4o INPUT 1000 OUTPUT 500");
    assert_eq!(
        (d.s("status"), d.s("limit"), d.s("remaining")),
        ("denied".into(), "COST PER DAY".into(), "0.0025".into())
    );
    // A cheaper model fits.
    assert_eq!(
        q(
            &mut c,
            "RESERVE c3 proj:p gpt-4o-mini INPUT 1000 OUTPUT 500"
        )
        .s("cost"),
        "0.00045"
    );
    // Cached input is cheaper: 1000 in of which 800 cached at $1.25/M.
    let r = q(&mut c, "COMMIT c1 INPUT 1000 OUTPUT 100 CACHED 800");
    assert_eq!(r.s("cost"), "0.0025"); // 200×2.5e-6 + 800×1.25e-6 + 100×1e-5
                                       // Prices set at run time apply to later calls.
    assert_eq!(
        raw(&mut c, "PRICE.SET my-model INPUT 1 OUTPUT 2 CACHED 0.1").unwrap(),
        redis::Value::Okay
    );
    assert_eq!(
        q(&mut c, "SPEND proj:p my-model INPUT 1000 OUTPUT 1000").s("cost"),
        "0.003"
    );
    assert!(err(&mut c, "RESERVE c4 proj:p llama-9 INPUT 1 OUTPUT 0")
        .starts_with("NOPRICE model llama-9"));
    assert!(err(&mut c, "PRICE.SET bad INPUT x OUTPUT 1").starts_with("ERR INPUT"));
    let list = raw(&mut c, "PRICE.LIST").unwrap();
    let redis::Value::Array(items) = list else {
        panic!()
    };
    assert!(items.len() > 25);
}

#[test]
fn default_price_for_unknown_models() {
    let s = Server::start(&["--default-price", "1:2"]);
    let mut c = s.conn();
    let r = q(
        &mut c,
        "RESERVE u1 org:u some-local-model INPUT 1000000 OUTPUT 1000000",
    );
    assert_eq!(r.s("cost"), "3");
    assert_eq!(
        q(&mut c, "PRICE.GET some-local-model").s("matched"),
        "default"
    );
}

#[test]
fn holds_expire_and_late_commits_still_charge() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:e TOKENS 1000 PER DAY").unwrap();
    q(&mut c, "RESERVE e1 org:e gpt-4o INPUT 900 OUTPUT 0 TTL 200");
    assert_eq!(
        q(&mut c, "RESERVE e2 org:e gpt-4o INPUT 900 OUTPUT 0").s("status"),
        "denied"
    );
    std::thread::sleep(Duration::from_millis(500));
    let h = q(&mut c, "HOLD.GET e1");
    assert_eq!(h.s("status"), "expired");
    assert_eq!(
        limit(&q(&mut c, "BUDGET.GET org:e"), "TOKENS", "PER DAY").i("held"),
        0
    );
    // Releasing an expired hold reports it expired; nothing is released twice.
    let r = q(&mut c, "RELEASE e1");
    assert_eq!(
        (r.s("status"), r.i("released_tokens")),
        ("expired".into(), 0)
    );
    // The call happened anyway: a late commit charges the actual usage.
    let r = q(&mut c, "COMMIT e1 INPUT 900 OUTPUT 50");
    assert_eq!(
        (r.s("status"), r.i("late"), r.i("released_tokens")),
        ("committed".into(), 1, 0)
    );
    let l = limit(&q(&mut c, "BUDGET.GET org:e"), "TOKENS", "PER DAY");
    assert_eq!((l.i("used"), l.i("held")), (950, 0));
    assert!(err(&mut c, "RESERVE e3 org:e gpt-4o INPUT 1 OUTPUT 0 TTL 0").starts_with("ERR TTL"));
    assert!(err(
        &mut c,
        "RESERVE e3 org:e gpt-4o INPUT 1 OUTPUT 0 TTL 86400001"
    )
    .starts_with("ERR TTL"));
}

#[test]
fn overrun_is_charged_in_full_and_blocks_until_reset() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:o TOKENS 1000 PER DAY").unwrap();
    q(&mut c, "RESERVE o1 org:o gpt-4o INPUT 100 OUTPUT 100");
    let r = q(&mut c, "COMMIT o1 INPUT 100 OUTPUT 1400");
    assert_eq!(r.i("overrun_tokens"), 1300);
    assert_ne!(r.s("overrun"), "0");
    let l = limit(&q(&mut c, "BUDGET.GET org:o"), "TOKENS", "PER DAY");
    assert_eq!((l.i("used"), l.i("remaining")), (1500, -500));
    assert_eq!(
        q(&mut c, "RESERVE o2 org:o gpt-4o INPUT 1 OUTPUT 0").s("status"),
        "denied"
    );
}

#[test]
fn rolling_windows_give_precise_retry_after() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET agent:r REQUESTS 2 ROLLING 1s").unwrap();
    for id in ["w1", "w2"] {
        q(
            &mut c,
            &format!("RESERVE {id} agent:r gpt-4o INPUT 1 OUTPUT 0"),
        );
        q(&mut c, &format!("COMMIT {id} INPUT 1 OUTPUT 1"));
    }
    let d = q(&mut c, "RESERVE w3 agent:r gpt-4o INPUT 1 OUTPUT 0");
    assert_eq!(
        (d.s("status"), d.s("limit")),
        ("denied".into(), "REQUESTS ROLLING 1s".into())
    );
    let retry = d.i("retry_after_ms");
    // The window is 59 sub-buckets of 17 ms (1003 ms).
    assert!(retry > 0 && retry <= 1003, "{retry}");
    std::thread::sleep(Duration::from_millis(retry as u64 + 5));
    assert_eq!(
        q(&mut c, "RESERVE w3 agent:r gpt-4o INPUT 1 OUTPUT 0").s("status"),
        "granted"
    );
}

#[test]
fn rolling_windows_count_a_request_when_it_is_made() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:r REQUESTS 5 ROLLING 2s").unwrap();
    for i in 1..=5 {
        let g = q(
            &mut c,
            &format!("RESERVE a{i} org:r gpt-4o INPUT 1 OUTPUT 1 TTL 60000"),
        );
        assert_eq!(g.s("status"), "granted");
    }
    // Five requests in the window, all still open: the sixth waits for the
    // first to leave the window, not for any of them to finish.
    let d = q(&mut c, "RESERVE a6 org:r gpt-4o INPUT 1 OUTPUT 1");
    assert_eq!(
        (d.s("status"), d.s("reason")),
        ("denied".into(), "used".into())
    );
    assert_eq!(d.i("held"), 0);
    // At most the effective window: 59 sub-buckets of ceil(2000 / 60) =
    // 34 ms, 2,006 ms (docs/ARCHITECTURE.md, `limit.rs`).
    let retry = d.i("retry_after_ms");
    assert!(retry > 0 && retry <= 2_006, "{retry}");
    let got = limit(&q(&mut c, "BUDGET.GET org:r"), "REQUESTS", "ROLLING 2s");
    assert_eq!(
        (got.i("used"), got.i("held"), got.i("remaining")),
        (5, 0, 0)
    );
    std::thread::sleep(Duration::from_millis(retry as u64 + 50));
    assert_eq!(
        q(&mut c, "RESERVE a6 org:r gpt-4o INPUT 1 OUTPUT 1 TTL 60000").s("status"),
        "granted",
        "a1..a5 are still open, but they have left the window"
    );
    // A request released while still in the window gives its room back at
    // once; one committed keeps its actual usage there.
    raw(&mut c, "BUDGET.SET org:t TOKENS 100 ROLLING 1h").unwrap();
    q(&mut c, "RESERVE t1 org:t gpt-4o INPUT 50 OUTPUT 50");
    let d = q(&mut c, "RESERVE t2 org:t gpt-4o INPUT 10 OUTPUT 0");
    assert_eq!(d.s("status"), "denied");
    q(&mut c, "COMMIT t1 INPUT 50 OUTPUT 10");
    let got = limit(&q(&mut c, "BUDGET.GET org:t"), "TOKENS", "ROLLING 1h");
    assert_eq!(got.i("used"), 60);
    q(&mut c, "RESERVE t2 org:t gpt-4o INPUT 20 OUTPUT 20");
    q(&mut c, "RELEASE t2");
    let got = limit(&q(&mut c, "BUDGET.GET org:t"), "TOKENS", "ROLLING 1h");
    assert_eq!(got.i("used"), 60);
}

#[test]
fn holds_without_output_are_sized_by_the_model_maximum() {
    let s = Server::start(&["--default-output", "1000"]);
    let mut c = s.conn();
    // The price table knows gpt-4o's maximum output.
    assert_eq!(q(&mut c, "PRICE.GET gpt-4o").i("max_output"), 16_384);
    let g = q(&mut c, "RESERVE m1 org:o gpt-4o INPUT 100");
    assert_eq!(
        (g.i("output"), g.s("output_from")),
        (16_384, "model".into())
    );
    assert_eq!(g.i("tokens"), 100 + 16_384);
    assert_eq!(q(&mut c, "HOLD.GET m1").i("output"), 16_384);
    // A replay is the same grant.
    let again = q(&mut c, "RESERVE m1 org:o gpt-4o INPUT 100");
    assert_eq!(
        (again.i("output"), again.s("output_from")),
        (16_384, "model".into())
    );
    // OUTPUT above the maximum is clamped, and the reply says so.
    let g = q(&mut c, "RESERVE m2 org:o gpt-4o INPUT 1 OUTPUT 1000000");
    assert_eq!(
        (g.i("output"), g.s("output_from")),
        (16_384, "clamped".into())
    );
    let g = q(&mut c, "RESERVE m3 org:o gpt-4o INPUT 1 OUTPUT 10");
    assert_eq!((g.i("output"), g.s("output_from")), (10, "given".into()));
    // A model whose maximum is not known: --default-output.
    raw(&mut c, "PRICE.SET house INPUT 1 OUTPUT 2").unwrap();
    assert_eq!(string(&q(&mut c, "PRICE.GET house")["max_output"]), "nil");
    let g = q(&mut c, "RESERVE m4 org:o house INPUT 1");
    assert_eq!(
        (g.i("output"), g.s("output_from")),
        (1000, "default".into())
    );
    raw(&mut c, "PRICE.SET house INPUT 1 OUTPUT 2 MAXOUTPUT 300").unwrap();
    let g = q(&mut c, "RESERVE m5 org:o house INPUT 1");
    assert_eq!((g.i("output"), g.s("output_from")), (300, "model".into()));
    // A price set again without MAXOUTPUT keeps the maximum.
    raw(&mut c, "PRICE.SET house INPUT 2 OUTPUT 4").unwrap();
    assert_eq!(q(&mut c, "PRICE.GET house").i("max_output"), 300);
    // OUTPUT AUTO: the room the budget leaves when that is smaller.
    raw(&mut c, "BUDGET.SET org:auto TOKENS 5000 PER DAY").unwrap();
    let g = q(&mut c, "RESERVE a1 org:auto gpt-4o INPUT 1000 OUTPUT AUTO");
    assert_eq!((g.i("output"), g.s("output_from")), (4000, "room".into()));
    let d = q(&mut c, "RESERVE a2 org:auto gpt-4o INPUT 1 OUTPUT AUTO");
    assert_eq!((d.s("status"), d.i("tokens")), ("denied".into(), 2));
    // Without OUTPUT the whole maximum must fit: the hold that would let
    // a call overrun is refused instead.
    raw(&mut c, "BUDGET.SET org:small TOKENS 10000 PER DAY").unwrap();
    assert_eq!(
        q(&mut c, "RESERVE s1 org:small gpt-4o INPUT 10").s("status"),
        "denied"
    );
    assert!(err(&mut c, "RESERVE s2 org:small gpt-4o INPUT 1 OUTPUT lots").contains("OUTPUT"));
    assert!(err(&mut c, "PRICE.SET house INPUT 1 OUTPUT 1 MAXOUTPUT 0").contains("MAXOUTPUT"));
}

#[test]
fn fallback_grants_the_first_model_that_fits() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:f COST 0.01 PER DAY").unwrap();
    // gpt-4o's hold ($0.0125 for 5000 input) does not fit; claude-opus-4's
    // ($0.075) neither; gpt-4o-mini's ($0.00075) does.
    let g = q(
        &mut c,
        "RESERVE f1 org:f/agent:a gpt-4o FALLBACK claude-opus-4,gpt-4o-mini INPUT 5000 OUTPUT 0",
    );
    assert_eq!(
        (g.s("status"), g.s("model")),
        ("granted".into(), "gpt-4o-mini".into())
    );
    assert_eq!(g.s("cost"), "0.00075");
    assert_eq!(q(&mut c, "HOLD.GET f1").s("model"), "gpt-4o-mini");
    // A replay returns the same model, and a price change since does not
    // move the hold to another one.
    raw(&mut c, "PRICE.SET gpt-4o INPUT 0.01 OUTPUT 0.01").unwrap();
    let again = q(
        &mut c,
        "RESERVE f1 org:f/agent:a gpt-4o FALLBACK claude-opus-4,gpt-4o-mini INPUT 5000 OUTPUT 0",
    );
    assert_eq!(again.s("model"), "gpt-4o-mini");
    // COMMIT charges the granted model's prices.
    let done = q(&mut c, "COMMIT f1 INPUT 5000 OUTPUT 100");
    assert_eq!(done.s("cost"), "0.00081"); // 5000 × $0.15/M + 100 × $0.60/M
                                           // None fits: the denial names the limit that stopped the last model.
    let d = q(
        &mut c,
        "RESERVE f2 org:f gpt-4o-mini FALLBACK claude-opus-4 INPUT 5000000 OUTPUT 0",
    );
    assert_eq!(
        (d.s("status"), d.s("model")),
        ("denied".into(), "claude-opus-4".into())
    );
    assert_eq!(d.s("limit"), "COST PER DAY");
    // Every model must have a price; the list is checked.
    assert!(err(
        &mut c,
        "RESERVE f3 org:f gpt-4o FALLBACK nosuch-model INPUT 1"
    )
    .starts_with("NOPRICE model nosuch-model"));
    assert!(err(&mut c, "RESERVE f3 org:f gpt-4o FALLBACK a,,b INPUT 1")
        .contains("separated by commas"));
    let nine = ["gpt-4o"; 9].join(",");
    assert!(err(
        &mut c,
        &format!("RESERVE f3 org:f gpt-4o FALLBACK {nine} INPUT 1")
    )
    .contains("at most 8"));
}

#[test]
fn bad_input_gets_clear_errors_and_the_connection_lives() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert!(err(&mut c, "RESERVE").starts_with("ERR syntax: RESERVE <hold>"));
    assert!(err(&mut c, "RESERVE h org:x gpt-4o INPUT -5").starts_with("ERR INPUT must be"));
    assert!(err(&mut c, "RESERVE h org//x gpt-4o INPUT 5 OUTPUT 0").contains("empty segment"));
    assert!(err(&mut c, "BUDGET.SET org:x TOKENS 1 PER FORTNIGHT").contains("unknown period"));
    assert!(
        err(&mut c, "BUDGET.SET org:x TOKENS 1 PER DAY TOKENS 2 PER DAY").contains("given twice")
    );
    assert!(err(&mut c, "COMMIT h INPUT 5 OUTPUT 1 CACHED 6").contains("cannot exceed INPUT"));
    assert!(err(&mut c, "BUDGET.GET org:none").starts_with("UNKNOWN budget"));
    assert!(err(&mut c, "NOSUCH").contains("unknown command"));
    let long = "x".repeat(65);
    assert!(err(
        &mut c,
        &format!("RESERVE {long} org:x gpt-4o INPUT 1 OUTPUT 0")
    )
    .contains("hold id"));
    // Still serving on the same connection.
    assert_eq!(
        raw(&mut c, "PING").unwrap(),
        redis::Value::SimpleString("PONG".into())
    );
}

/// Raw bytes: pipelining, inline commands, and a malformed frame closing only
/// its own connection.
#[test]
fn pipelines_inline_and_malformed_frames() {
    let s = Server::start(&[]);
    let mut sock = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = Vec::new();
    for i in 0..100 {
        req.extend_from_slice(
            format!("*2\r\n$4\r\nECHO\r\n${}\r\nm{i}\r\n", format!("m{i}").len()).as_bytes(),
        );
    }
    req.extend_from_slice(b"PING\r\nBUDGET.SET \"org:in line\" TOKENS 5 PER DAY\r\nBUDGET.SET org:inline TOKENS 5 PER DAY\r\n");
    sock.write_all(&req).unwrap();
    let mut want = String::new();
    for i in 0..100 {
        want += &format!("${}\r\nm{i}\r\n", format!("m{i}").len());
    }
    want += "+PONG\r\n";
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while !got.ends_with(b"+OK\r\n") {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let got = String::from_utf8(got).unwrap();
    assert!(got.starts_with(&want), "{got}");
    assert!(
        got.contains("-ERR scope 'org:in line' contains whitespace"),
        "{got}"
    );

    // A malformed frame: an error, then that connection closes...
    let mut bad = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    bad.write_all(b"*1\r\n$abc\r\n").unwrap();
    let mut out = String::new();
    bad.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("-ERR Protocol error"), "{out}");
    // ... and an oversized argument is refused before it is buffered.
    let mut big = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    big.write_all(b"*2\r\n$4\r\nECHO\r\n$999999999\r\n")
        .unwrap();
    let mut out = String::new();
    big.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("-TOOBIG"), "{out}");
    // ... while the server and other connections carry on.
    let mut c = s.conn();
    assert_eq!(q(&mut c, "BUDGET.GET org:inline").s("scope"), "org:inline");
    sock.write_all(b"PING\r\n").unwrap();
    let n = sock.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
}

#[test]
fn resp3_clients_get_maps() {
    let s = Server::start(&[]);
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{}/?protocol=resp3", s.port)).unwrap();
    let mut c = client.get_connection().unwrap();
    let v = raw(&mut c, "RESERVE m1 org:m gpt-4o INPUT 10 OUTPUT 0").unwrap();
    assert!(matches!(v, redis::Value::Map(_)), "{v:?}");
    assert_eq!(fields(v).s("status"), "granted");
}

#[test]
fn state_survives_restart_and_verify_passes() {
    let mut s = Server::start(&[]);
    let mut c = s.conn();
    raw(
        &mut c,
        "BUDGET.SET org:s TOKENS 5000 PER DAY COST 1 PER MONTH",
    )
    .unwrap();
    raw(&mut c, "PRICE.SET house INPUT 1 OUTPUT 1").unwrap();
    q(&mut c, "RESERVE s1 org:s/u:1 gpt-4o INPUT 100 OUTPUT 100");
    let committed = q(&mut c, "COMMIT s1 INPUT 100 OUTPUT 20");
    q(&mut c, "RESERVE s2 org:s/u:2 house INPUT 300 OUTPUT 0");
    let before = q(&mut c, "BALANCE org:s/u:1");
    let before_root = q(&mut c, "BUDGET.GET org:s");
    assert!(s.stop().success(), "clean shutdown exits 0");

    let (ok, out) = verify(&s.dir);
    assert!(ok, "{out}");
    assert!(out.contains("ledger ok: 5 entries"), "{out}");

    s.restart();
    let mut c = s.conn();
    assert_eq!(q(&mut c, "BALANCE org:s/u:1"), before);
    assert_eq!(q(&mut c, "BUDGET.GET org:s"), before_root);
    assert_eq!(q(&mut c, "COMMIT s1 INPUT 100 OUTPUT 20"), committed);
    assert_eq!(q(&mut c, "HOLD.GET s2").s("status"), "open");
    assert_eq!(q(&mut c, "PRICE.GET house").s("input"), "1");
}

#[test]
fn verify_reports_damage() {
    let mut s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:v TOKENS 5000 PER DAY").unwrap();
    s.stop();
    let (ok, out) = verify(&s.dir.join("nonexistent"));
    assert!(!ok && out.contains("holds no spendb data"), "{out}");
    let (ok, _) = verify(&s.dir);
    assert!(ok);
}

#[test]
fn interval_and_none_durability_serve_and_recover_after_clean_shutdown() {
    for mode in ["interval:50", "none"] {
        let mut s = Server::start(&["--durability", mode]);
        let mut c = s.conn();
        raw(&mut c, "BUDGET.SET org:dm TOKENS 1000 PER DAY").unwrap();
        q(&mut c, "RESERVE d1 org:dm gpt-4o INPUT 100 OUTPUT 0");
        let committed = q(&mut c, "COMMIT d1 INPUT 100 OUTPUT 7");
        assert!(s.stop().success(), "{mode}");
        let (ok, out) = verify(&s.dir);
        assert!(ok, "{mode}: {out}");
        s.restart();
        let mut c = s.conn();
        assert_eq!(
            q(&mut c, "COMMIT d1 INPUT 100 OUTPUT 7"),
            committed,
            "{mode}"
        );
        assert_eq!(
            limit(&q(&mut c, "BUDGET.GET org:dm"), "TOKENS", "PER DAY").i("used"),
            107,
            "{mode}"
        );
    }
}

#[test]
fn settings_come_from_spendb_environment_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [
        ("SPENDB_DEFAULT_PRICE", "2:4"),
        ("SPENDB_DEFAULT_TTL", "250ms"),
        ("SPENDB_DURABILITY", "interval:20"),
    ];
    let (mut child, port) = spawn_env(&tmp.path().join("data"), &[], &env);
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let r = q(
        &mut c,
        "RESERVE x1 org:env unpriced-model INPUT 1000000 OUTPUT 0",
    );
    assert_eq!(r.s("cost"), "2");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(q(&mut c, "HOLD.GET x1").s("status"), "expired");
    assert!(raw(&mut c, "INFO")
        .map(|v| string(&v))
        .unwrap()
        .contains("durability:interval(20)"));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn echo_is_binary_safe() {
    // redis-cli --pipe ends its stream with an ECHO of 20 random bytes and
    // waits for exactly those bytes back.
    let s = Server::start(&[]);
    let mut c = s.conn();
    let bytes = vec![0xff, 0xfe, 0x00, b'a', b'\r', b'\n'];
    let v: redis::Value = redis::cmd("ECHO").arg(&bytes).query(&mut c).unwrap();
    assert_eq!(v, redis::Value::BulkString(bytes.clone()));
    let v: redis::Value = redis::cmd("PING").arg(&bytes).query(&mut c).unwrap();
    assert_eq!(v, redis::Value::BulkString(bytes));
}

#[test]
fn command_docs_are_what_redis_cli_builds_hints_from() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let docs = fields(raw(&mut c, "COMMAND DOCS reserve").unwrap());
    assert_eq!(docs.len(), 1);
    let reserve = fields(docs["reserve"].clone());
    assert_eq!(reserve.s("group"), "spendb");
    let redis::Value::Array(args) = reserve["arguments"].clone() else {
        panic!()
    };
    let names: Vec<String> = args.iter().map(|a| fields(a.clone()).s("name")).collect();
    assert_eq!(
        names,
        ["hold", "scope", "model", "models", "n", "block", "ms", "run"]
    );
    // [OUTPUT (<max> | AUTO)]: an optional block of the OUTPUT token and a
    // choice of a count or AUTO.
    assert_eq!(fields(args[3].clone()).s("token"), "FALLBACK");
    let output = fields(args[5].clone());
    assert_eq!(output.s("type"), "block");
    // redis-cli asserts that flags are simple strings, and aborts otherwise.
    assert_eq!(
        output["flags"],
        redis::Value::Array(vec![redis::Value::SimpleString("optional".into())])
    );
    let redis::Value::Array(parts) = output["arguments"].clone() else {
        panic!("{output:?}")
    };
    assert_eq!(fields(parts[0].clone()).s("token"), "OUTPUT");
    let choice = fields(parts[1].clone());
    assert_eq!(choice.s("type"), "oneof");
    let redis::Value::Array(alts) = choice["arguments"].clone() else {
        panic!("{choice:?}")
    };
    let alts: Vec<String> = alts.iter().map(|a| fields(a.clone()).s("name")).collect();
    assert_eq!(alts, ["max", "auto"]);
    // All of spendb's commands are documented.
    let all = fields(raw(&mut c, "COMMAND DOCS").unwrap());
    assert_eq!(
        all.len() as i64,
        match raw(&mut c, "COMMAND COUNT").unwrap() {
            redis::Value::Int(n) => n,
            v => panic!("{v:?}"),
        }
    );
}

#[test]
fn redis_crate_pipelines_keep_request_order() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut p = redis::pipe();
    p.cmd("BUDGET.SET")
        .arg("org:pp")
        .arg("REQUESTS")
        .arg(50)
        .arg("PER")
        .arg("DAY");
    for i in 0..60 {
        p.cmd("RESERVE")
            .arg(format!("pp{i}"))
            .arg("org:pp")
            .arg("gpt-4o")
            .arg("INPUT")
            .arg(1)
            .arg("OUTPUT")
            .arg(0);
    }
    p.cmd("BUDGET.GET").arg("org:pp");
    let replies: Vec<redis::Value> = p.query(&mut c).unwrap();
    assert_eq!(replies.len(), 62);
    assert_eq!(replies[0], redis::Value::Okay);
    for (i, r) in replies[1..61].iter().enumerate() {
        let f = fields(r.clone());
        assert_eq!(f.s("hold"), format!("pp{i}"));
        // Applied in request order: the first 50 fit, the rest are denied.
        assert_eq!(
            f.s("status"),
            if i < 50 { "granted" } else { "denied" },
            "reply {i}"
        );
    }
    assert_eq!(
        limit(&fields(replies[61].clone()), "REQUESTS", "PER DAY").i("held"),
        50
    );
}

/// Many connections race for one budget: exactly as many holds are granted
/// as fit, whatever the interleaving, and the figures add up afterwards.
#[test]
fn concurrent_reservations_never_overspend() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    // 100 holds of 100 tokens fit; 16 connections ask for 40 each (640).
    raw(&mut c, "BUDGET.SET org:race TOKENS 10000 PER DAY").unwrap();
    let url = s.url();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let url = url.clone();
            std::thread::spawn(move || {
                let client = redis::Client::open(url).unwrap();
                let mut c = client.get_connection().unwrap();
                let mut granted = 0;
                for i in 0..40 {
                    let r = q(
                        &mut c,
                        &format!("RESERVE r{t}-{i} org:race/agent:a{t} gpt-4o INPUT 100 OUTPUT 0"),
                    );
                    if r.s("status") == "granted" {
                        granted += 1;
                    }
                }
                granted
            })
        })
        .collect();
    let granted: i64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(granted, 100);
    let b = q(&mut c, "BALANCE org:race");
    assert_eq!(dim(&b, "held", "tokens"), "10000");
    assert_eq!(limit(&b, "TOKENS", "PER DAY").s("remaining"), "0");
}
