//! The HTTP admin API over real HTTP against the running binary: every
//! route, the bearer token, and the error statuses (JSON bodies, never a
//! 500 for bad input).

use crate::common::*;
use serde_json::{json, Value};

#[test]
fn budgets_balances_holds_prices_and_cache_stats() {
    let s = Server::start(&[]);
    let h = Http::new(&s, None);
    assert_eq!(h.get("/healthz"), (200, json!({"status": "ok"})));
    let (st, ready) = h.get("/readyz");
    assert_eq!((st, ready["status"].as_str()), (200, Some("ready")));

    let budget = r#"{"limits": [{"dim": "TOKENS", "amount": "10000", "per": "DAY"},
                                {"dim": "COST", "amount": 5, "per": "MONTH"},
                                {"dim": "REQUESTS", "amount": "60", "rolling": "1m"}]}"#;
    let (st, v) = h.call("PUT", "/v1/budgets/org:acme", Some(budget));
    assert_eq!((st, v), (200, json!({"ok": true})));
    h.call(
        "PUT",
        "/v1/budgets/org:acme/team:search",
        Some(r#"{"limits": [{"dim": "TOKENS", "amount": "5000", "per": "HOUR"}]}"#),
    );
    let (st, v) = h.get("/v1/budgets");
    assert_eq!(st, 200);
    assert_eq!(v["scopes"], json!(["org:acme", "org:acme/team:search"]));
    assert_eq!(
        h.get("/v1/budgets?prefix=org:acme/team:search").1["scopes"],
        json!(["org:acme/team:search"])
    );
    let (st, v) = h.get("/v1/budgets/org:acme");
    assert_eq!(st, 200);
    assert_eq!(v["limits"].as_array().unwrap().len(), 3);
    assert_eq!(v["limits"][0]["remaining"], json!(10000));

    // Activity through the Redis port shows up here.
    let mut c = s.conn();
    q(
        &mut c,
        "RESERVE h1 org:acme/team:search/agent:a gpt-4o INPUT 1000 OUTPUT 500",
    );
    q(
        &mut c,
        "RESERVE h2 org:acme/agent:b gpt-4o INPUT 100 OUTPUT 0",
    );
    let (st, v) = h.get("/v1/balances/org:acme/team:search");
    assert_eq!(st, 200);
    assert_eq!(v["held"]["tokens"], json!(1500));
    assert_eq!(v["open_holds"], json!(1));
    let (st, v) = h.get("/v1/holds?scope=org:acme");
    assert_eq!(st, 200);
    let ids: Vec<&str> = v["holds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hold"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["h1", "h2"], "oldest first");
    assert_eq!(
        h.get("/v1/holds?scope=org:acme/agent:b&limit=5").1["holds"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        h.get("/v1/holds?limit=1").1["holds"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (st, v) = h.get("/v1/holds/h1");
    assert_eq!(
        (st, v["status"].as_str(), v["cost"].as_str()),
        (200, Some("open"), Some("0.0075"))
    );

    let (st, v) = h.call(
        "PUT",
        "/v1/prices/my-model",
        Some(r#"{"input": "1.5", "output": 3}"#),
    );
    assert_eq!((st, v), (200, json!({"ok": true})));
    let (_, v) = h.get("/v1/prices");
    assert!(v["prices"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["model"] == "my-model"));

    raw(&mut c, "CACHE.SET ns k v COST 0.5").unwrap();
    raw(&mut c, "CACHE.GET ns k").unwrap();
    let (st, v) = h.get("/v1/cache/stats?ns=ns");
    assert_eq!(
        (st, v["hits"].clone(), v["saved"].clone()),
        (200, json!(1), json!("0.5"))
    );

    let (st, v) = h.call("DELETE", "/v1/budgets/org:acme/team:search", None);
    assert_eq!((st, v), (200, json!({"deleted": true})));
    assert_eq!(
        h.call("DELETE", "/v1/budgets/org:acme/team:search", None).1,
        json!({"deleted": false})
    );
}

#[test]
fn errors_are_json_with_the_right_status() {
    let s = Server::start(&[]);
    let h = Http::new(&s, None);
    let code = |r: &(u16, Value)| (r.0, r.1["error"]["code"].as_str().unwrap_or("").to_string());
    assert_eq!(
        code(&h.get("/v1/budgets/org:none")),
        (404, "UNKNOWN".into())
    );
    assert_eq!(code(&h.get("/v1/holds/nope")), (404, "UNKNOWN".into()));
    assert_eq!(code(&h.get("/v1/no/such/route")), (404, "NOTFOUND".into()));
    assert_eq!(
        code(&h.call("PUT", "/v1/budgets/org:x", Some("{not json"))),
        (400, "BADJSON".into())
    );
    assert_eq!(
        code(&h.call(
            "PUT",
            "/v1/budgets/org:x",
            Some(r#"{"limits": [], "extra": 1}"#)
        )),
        (422, "ERR".into()),
        "unknown field"
    );
    assert_eq!(
        code(&h.call("PUT", "/v1/budgets/org:x", Some(r#"{"limits": "x"}"#))),
        (422, "ERR".into())
    );
    assert_eq!(
        code(&h.call("PUT", "/v1/budgets/org:x", Some(r#"{"limits": []}"#))),
        (422, "ERR".into())
    );
    for bad in [
        r#"{"limits": [{"dim": "TOKENS", "amount": "-5", "per": "DAY"}]}"#,
        r#"{"limits": [{"dim": "FLOPS", "amount": "5", "per": "DAY"}]}"#,
        r#"{"limits": [{"dim": "TOKENS", "amount": "5", "per": "FORTNIGHT"}]}"#,
        r#"{"limits": [{"dim": "TOKENS", "amount": "5", "per": "DAY", "rolling": "1m"}]}"#,
        r#"{"limits": [{"dim": "TOKENS", "amount": "99999999999999999999999999", "per": "DAY"}]}"#,
        r#"{"limits": [{"dim": "TOKENS", "amount": true, "per": "DAY"}]}"#,
    ] {
        assert_eq!(
            code(&h.call("PUT", "/v1/budgets/org:x", Some(bad))).0,
            422,
            "{bad}"
        );
    }
    assert_eq!(
        code(&h.call(
            "PUT",
            "/v1/budgets/bad scope",
            Some(r#"{"limits": [{"dim": "TOKENS", "amount": 1, "per": "DAY"}]}"#)
        ))
        .0,
        422
    );
    assert_eq!(code(&h.get("/v1/holds?limit=0")).0, 422);
    assert_eq!(
        code(&h.get("/v1/holds?limit=abc")),
        (400, "BADQUERY".into())
    );
    assert_eq!(code(&h.get("/v1/holds?bogus=1")), (400, "BADQUERY".into()));
    assert_eq!(
        code(&h.call(
            "PUT",
            "/v1/prices/m",
            Some(r#"{"input": "x", "output": 1}"#)
        ))
        .0,
        422
    );
}

#[test]
fn users_of_the_redis_side_sign_in_with_basic_auth() {
    let s = Server::with_users(
        r#"
[users.ops]
password = "ops-pw"
commands = ["@admin"]
[users.viewer]
password = "view-pw"
commands = ["@read"]
[users.acme-agent]
password = "agent-pw"
commands = ["@agent"]
scopes = ["org:acme"]
"#,
        &[],
    );
    let budget = Some(r#"{"limits": [{"dim": "TOKENS", "amount": 10, "per": "DAY"}]}"#);
    let anon = Http::new(&s, None);
    let (st, v) = anon.get("/v1/budgets");
    assert_eq!((st, v["error"]["code"].as_str()), (401, Some("NOAUTH")));
    assert_eq!(Http::basic(&s, "ops", "wrong").get("/v1/budgets").0, 401);
    assert_eq!(
        Http::basic(&s, "nobody", "ops-pw").get("/v1/budgets").0,
        401
    );

    let ops = Http::basic(&s, "ops", "ops-pw");
    assert_eq!(ops.call("PUT", "/v1/budgets/org:acme", budget).0, 200);
    assert_eq!(ops.get("/v1/budgets").0, 200);
    let rules = Some(r#"{"thresholds": [50]}"#);
    assert_eq!(ops.call("PUT", "/v1/alerts/rules/org:acme", rules).0, 200);

    // @read: every GET, no writes.
    let viewer = Http::basic(&s, "viewer", "view-pw");
    for path in ["/v1/budgets", "/v1/alerts", "/metrics", "/v1/reports/spend"] {
        assert_eq!(viewer.get(path).0, 200, "{path}");
    }
    let (st, v) = viewer.call("PUT", "/v1/budgets/org:acme", budget);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("NOPERM")),
        "{v}"
    );
    assert_eq!(
        viewer.call("DELETE", "/v1/alerts/rules/org:acme", None).0,
        403
    );

    // Users limited to scopes keep to the Redis port.
    let agent = Http::basic(&s, "acme-agent", "agent-pw");
    assert_eq!(agent.get("/v1/balances/org:acme").0, 403);
    assert_eq!(anon.get("/healthz").0, 200);
}

#[test]
fn a_token_protects_everything_but_health() {
    let s = Server::start(&["--admin-token", "s3cret"]);
    let anon = Http::new(&s, None);
    let wrong = Http::new(&s, Some("nope"));
    let ok = Http::new(&s, Some("s3cret"));
    assert_eq!(anon.get("/healthz").0, 200);
    assert_eq!(anon.get("/readyz").0, 200);
    for path in ["/v1/budgets", "/metrics", "/v1/openapi.json", "/v1/prices"] {
        let (st, v) = anon.get(path);
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (401, Some("NOAUTH")),
            "{path}"
        );
        assert_eq!(wrong.get(path).0, 401, "{path}");
        assert_eq!(ok.get(path).0, 200, "{path}");
    }
}

#[test]
fn metrics_and_the_openapi_document() {
    let s = Server::start(&[]);
    let h = Http::new(&s, None);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:m TOKENS 100 PER DAY").unwrap();
    q(&mut c, "RESERVE m1 org:m gpt-4o INPUT 10 OUTPUT 0");
    assert_eq!(
        q(&mut c, "RESERVE m2 org:m gpt-4o INPUT 1000 OUTPUT 0").s("status"),
        "denied"
    );
    // Settled spend by top-level scope and model (1M gpt-4o input = $2.50).
    q(&mut c, "SPEND org:m/agent:a gpt-4o INPUT 1000000 OUTPUT 0");
    q(&mut c, "SPEND org:m gpt-4o-mini INPUT 10 OUTPUT 5");
    q(&mut c, "SPEND org:n\"x gpt-4o INPUT 1 OUTPUT 0");
    let (st, text) = h.get("/metrics");
    assert_eq!(st, 200);
    let text = text.as_str().unwrap().to_string();
    // Prometheus text format: HELP and TYPE before every sample, sample
    // lines "name value" with a numeric value.
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            typed.insert(w.next().unwrap().to_string());
            assert!(
                matches!(w.next(), Some("counter" | "gauge" | "histogram")),
                "{line}"
            );
        } else if !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "{name} has no TYPE");
            value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
        }
    }
    assert!(text.contains("\nspendb_open_holds 1\n"), "{text}");
    for line in [
        "spendb_spend_requests_total{scope=\"org:m\",model=\"gpt-4o\"} 1\n",
        "spendb_spend_tokens_total{scope=\"org:m\",model=\"gpt-4o\"} 1000000\n",
        "spendb_spend_usd_total{scope=\"org:m\",model=\"gpt-4o\"} 2.5\n",
        "spendb_spend_tokens_total{scope=\"org:m\",model=\"gpt-4o-mini\"} 15\n",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    // Outcomes and latencies counted from the Redis port's traffic.
    assert!(
        text.contains("spendb_reserves_total{outcome=\"granted\",dim=\"\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("spendb_request_duration_seconds_count{command=\"reserve\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("spendb_group_commit_entries_count "),
        "{text}"
    );
    assert!(
        text.contains("spendb_reserves_total{outcome=\"denied\",dim=\"TOKENS\"} 1\n"),
        "{text}"
    );
    let (st, doc) = h.get("/v1/openapi.json");
    assert_eq!(st, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/budgets/{scope}",
        "/v1/holds",
        "/v1/prices/{model}",
        "/metrics",
        "/healthz",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the document"
        );
    }
    assert!(doc["components"]["schemas"].get("BudgetBody").is_some());
}

#[test]
fn the_ledger_in_pages_with_filters() {
    let s = Server::start(&[]);
    let h = Http::new(&s, None);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:a TOKENS 100000 PER DAY").unwrap(); // 1
    q(&mut c, "RESERVE l1 org:a/agent:x gpt-4o INPUT 10 OUTPUT 0"); // 2
    q(&mut c, "RESERVE l2 org:b gpt-4o INPUT 10 OUTPUT 0"); // 3
    q(&mut c, "COMMIT l1 INPUT 10 OUTPUT 1"); // 4
    q(&mut c, "RELEASE l2"); // 5

    // Paging: two at a time, no gaps, then the end.
    let mut seqs = Vec::new();
    let mut after = 0;
    loop {
        let (st, v) = h.get(&format!("/v1/ledger?after={after}&limit=2"));
        assert_eq!(st, 200);
        for e in v["entries"].as_array().unwrap() {
            seqs.push(e["seq"].as_u64().unwrap());
        }
        match v["next_after"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let (_, v) = h.get("/v1/ledger?kind=hold");
    let holds = v["entries"].as_array().unwrap();
    assert_eq!(holds.len(), 2);
    assert_eq!(holds[0]["id"], "l1");
    assert_eq!(holds[0]["kind"], "hold");
    assert_eq!(holds[0]["scope"], "org:a/agent:x");
    let (_, v) = h.get("/v1/ledger?scope=org:a");
    let kinds: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["budget_set", "hold"]);
    let ts = holds[1]["ts"].as_u64().unwrap();
    let (_, v) = h.get(&format!("/v1/ledger?from={ts}&to={}", ts + 1));
    assert!(v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["ts"].as_u64() == Some(ts)));
    assert_eq!(h.get("/v1/ledger?limit=0").0, 422);
    assert_eq!(h.get("/v1/ledger?after=x").0, 400);
    assert_eq!(h.get("/v1/ledger?after=99").1["entries"], json!([]));
}

#[test]
fn the_dashboard_page_is_served_from_the_binary() {
    let s = Server::start(&["--admin-token", "t"]);
    // The page holds no data (its script reads /v1 with the token), so it
    // is served without one.
    let mut resp = ureq::get(&format!("http://127.0.0.1:{}/", s.admin_port))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = resp.body_mut().read_to_string().unwrap();
    for needle in [
        "/v1/budgets",
        "/v1/balances/",
        "/v1/holds",
        "/v1/cache/stats",
        "Bearer ",
    ] {
        assert!(page.contains(needle), "{needle}");
    }
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no outside resources"
    );
}

#[test]
fn spend_reports_by_scope_model_and_time() {
    let s = Server::start(&[]);
    let h = Http::new(&s, None);
    let mut c = s.conn();
    // gpt-4o: $2.50/M in, $10/M out.
    q(
        &mut c,
        "RESERVE r1 org:a/team:x/agent:1 gpt-4o INPUT 1000 OUTPUT 1000",
    );
    q(&mut c, "COMMIT r1 INPUT 1000 OUTPUT 500"); // 0.0025 + 0.005 = 0.0075
    q(
        &mut c,
        "RESERVE r2 org:b/agent:2 gpt-4o-mini INPUT 1000 OUTPUT 0",
    );
    q(&mut c, "COMMIT r2 INPUT 1000 OUTPUT 0"); // gpt-4o-mini: $0.15/M → 0.00015
    q(&mut c, "SPEND org:a/team:y gpt-4o INPUT 2000 OUTPUT 0"); // 0.005
    q(&mut c, "RESERVE r3 org:a gpt-4o INPUT 50 OUTPUT 0"); // open: not spend
    raw(&mut c, "CACHE.SET llm k v COST 0.25").unwrap();
    raw(&mut c, "CACHE.GET llm k SCOPE org:b/agent:2").unwrap();

    let (st, v) = h.get("/v1/reports/spend");
    assert_eq!(st, 200);
    assert_eq!(
        v["groups"],
        json!([
            {"key": "org:a", "cost": "0.0125", "tokens": 3500, "requests": 2, "saved": "0"},
            {"key": "org:b", "cost": "0.00015", "tokens": 1000, "requests": 1, "saved": "0.25"},
        ])
    );
    assert_eq!(v["total"]["cost"], "0.01265");
    let (_, v) = h.get("/v1/reports/spend?group=scope&level=2&scope=org:a");
    let keys: Vec<&str> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["org:a/team:x", "org:a/team:y"]);
    let (_, v) = h.get("/v1/reports/spend?group=model&top=1");
    assert_eq!(
        v["groups"],
        json!([{"key": "gpt-4o", "cost": "0.0125", "tokens": 3500, "requests": 2, "saved": "0"}])
    );
    let (_, v) = h.get("/v1/reports/spend?group=day");
    assert_eq!(v["groups"].as_array().unwrap().len(), 1);
    assert!(v["groups"][0]["key"].as_str().unwrap().starts_with("20"));
    let (_, v) = h.get("/v1/reports/spend?from=0&to=1");
    assert_eq!(v["groups"], json!([]));
    assert_eq!(h.get("/v1/reports/spend?group=planet").0, 422);
    assert_eq!(h.get("/v1/reports/spend?top=x").0, 400);
}

#[test]
fn a_burn_rate_forecast_per_budget() {
    let s = Server::start(&[]);
    let h = Http::new(&s, None);
    let mut c = s.conn();
    raw(
        &mut c,
        "BUDGET.SET org:f TOKENS 1000000 PER MONTH REQUESTS 10 ROLLING 1m",
    )
    .unwrap();
    q(&mut c, "SPEND org:f gpt-4o INPUT 500 OUTPUT 0");
    let (st, v) = h.get("/v1/reports/forecast/org:f");
    assert_eq!(st, 200);
    let limits = v["limits"].as_array().unwrap();
    let month = &limits[0];
    assert_eq!(
        (month["dim"].as_str(), month["used"].as_i64()),
        (Some("TOKENS"), Some(500))
    );
    // Half a second of usage says nothing about a month: no projection
    // until a whole rate window (2 days for a month) was watched, and the
    // report says until when.
    assert_eq!(month["projection"], "watching");
    assert_eq!(month["projected"], Value::Null);
    assert_eq!(month["exhausted_at"], Value::Null);
    let ready = month["ready_at"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        ready > now + 2 * 86_400_000 - 60_000 && ready <= now + 2 * 86_400_000,
        "{ready}"
    );
    assert_eq!(month["recent"].as_i64(), Some(500));
    assert!(month["rate_window_ms"].as_i64().unwrap() >= 1);
    assert!(month["period_end"].as_i64().unwrap() > 0);
    // A rolling window has no period end: no projection.
    assert_eq!(limits[1]["projected"], Value::Null);
    assert_eq!(h.get("/v1/reports/forecast/org:none").0, 404);
}
