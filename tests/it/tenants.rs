//! Tenant isolation (issue #13): two users limited to different scope
//! prefixes use the same hold ids, spend ids, run ids and cache namespaces;
//! neither sees, counts, deletes nor collides with the other's. An
//! unrestricted user sees the tenants' ids qualified (`{org:a}same-id`).

use crate::common::*;

const USERS: &str = r#"
    [users.ops]
    password = "ops-pass"
    commands = ["@admin"]

    [users.a]
    password = "a-pass"
    commands = ["@agent", "cache.*"]
    scopes = ["org:a"]

    [users.a2]
    password = "a2-pass"
    commands = ["@agent", "cache.*"]
    scopes = ["org:a/"]

    [users.b]
    password = "b-pass"
    commands = ["@agent", "cache.*"]
    scopes = ["org:b"]
"#;

fn bulk(v: redis::Value) -> Option<Vec<u8>> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::Nil => None,
        other => panic!("not a bulk string: {other:?}"),
    }
}

#[test]
fn holds_and_spend_ids_live_in_each_tenants_keyspace() {
    let s = Server::with_users(USERS, &[]);
    let mut ops = s.conn_as("ops", "ops-pass");
    let mut a = s.conn_as("a", "a-pass");
    let mut a2 = s.conn_as("a2", "a2-pass");
    let mut b = s.conn_as("b", "b-pass");

    // The same id in two tenants is two holds: b is not refused with EXISTS.
    let ga = q(&mut a, "RESERVE same-id org:a gpt-4o INPUT 10 OUTPUT 5");
    assert_eq!(ga.s("status"), "granted");
    assert_eq!(
        ga.s("hold"),
        "same-id",
        "a tenant sees its ids as it gave them"
    );
    let gb = q(&mut b, "RESERVE same-id org:b gpt-4o INPUT 20 OUTPUT 5");
    assert_eq!(gb.s("status"), "granted");
    assert_eq!(gb.s("hold"), "same-id");
    // Each reads back its own.
    assert_eq!(q(&mut a, "HOLD.GET same-id").s("scope"), "org:a");
    assert_eq!(q(&mut b, "HOLD.GET same-id").s("scope"), "org:b");
    // A user with the same prefixes (`org:a/` is `org:a`) shares a's keyspace.
    assert_eq!(q(&mut a2, "HOLD.GET same-id").s("scope"), "org:a");
    // b's COMMIT settles b's hold, not a's; b's RELEASE of an id only a has
    // is unknown.
    q(&mut a, "RESERVE only-a org:a gpt-4o INPUT 1 OUTPUT 0");
    assert!(err(&mut b, "RELEASE only-a").starts_with("UNKNOWN hold only-a"));
    assert!(err(&mut b, "COMMIT only-a INPUT 1 OUTPUT 1").starts_with("UNKNOWN hold only-a"));
    assert!(err(&mut b, "HOLD.GET only-a").starts_with("UNKNOWN hold only-a"));
    assert_eq!(
        q(&mut b, "COMMIT same-id INPUT 20 OUTPUT 1").s("status"),
        "committed"
    );
    assert_eq!(q(&mut a, "HOLD.GET same-id").s("status"), "open");
    assert_eq!(q(&mut a, "RELEASE same-id").s("status"), "released");
    assert_eq!(q(&mut b, "HOLD.GET same-id").s("status"), "committed");
    // An unrestricted user sees both, qualified, and the bare id is neither.
    assert_eq!(
        q(&mut ops, "HOLD.GET {org:a}same-id").s("status"),
        "released"
    );
    assert_eq!(
        q(&mut ops, "HOLD.GET {org:b}same-id").s("status"),
        "committed"
    );
    assert!(err(&mut ops, "HOLD.GET same-id").starts_with("UNKNOWN"));

    // Spend ids: the same ID in two tenants books twice, each once.
    let sa = q(&mut a, "SPEND org:a gpt-4o INPUT 100 OUTPUT 0 ID sp-1");
    assert_eq!(sa.s("id"), "sp-1");
    let sb = q(&mut b, "SPEND org:b gpt-4o INPUT 7 OUTPUT 0 ID sp-1");
    assert_eq!(sb.s("id"), "sp-1");
    // A retry is idempotent within the tenant; with other arguments, EXISTS.
    q(&mut a, "SPEND org:a gpt-4o INPUT 100 OUTPUT 0 ID sp-1");
    assert!(err(&mut b, "SPEND org:b gpt-4o INPUT 8 OUTPUT 0 ID sp-1").starts_with("EXISTS"));
    let bal_a = q(&mut ops, "BALANCE org:a");
    let bal_b = q(&mut ops, "BALANCE org:b");
    assert_eq!(dim(&bal_a, "spent", "input"), "100");
    assert_eq!(dim(&bal_b, "spent", "input"), "27");
    // Lists are filtered to the tenant's scopes only where items have one:
    // the price table is everyone's.
    let Ok(redis::Value::Array(prices)) = raw(&mut a, "PRICE.LIST") else {
        panic!("PRICE.LIST is an array")
    };
    assert!(prices.len() > 10, "a tenant sees the whole price table");
    // Tenants never see each other's ids in the ledger's hold ids either.
    let held = q(&mut ops, "HOLD.GET {org:a}only-a");
    assert_eq!(held.s("hold"), "{org:a}only-a");
}

#[test]
fn runs_live_in_each_tenants_keyspace() {
    let s = Server::with_users(USERS, &[]);
    let mut a = s.conn_as("a", "a-pass");
    let mut b = s.conn_as("b", "b-pass");
    // a's run reaches its MAX; b's run of the same name starts afresh.
    assert_eq!(
        q(&mut a, "STEP run-1 sig-x SCOPE org:a MAX 1").s("status"),
        "ok"
    );
    let denied = q(&mut a, "STEP run-1 sig-y SCOPE org:a MAX 1");
    assert_eq!(denied.s("status"), "denied");
    assert_eq!(denied.s("run"), "run-1");
    let fresh = q(&mut b, "STEP run-1 sig-x SCOPE org:b MAX 1");
    assert_eq!(fresh.s("status"), "ok");
    assert_eq!(fresh.i("steps"), 1);
    // b ends its run; a's is still there (its next step still denied).
    assert_eq!(q(&mut b, "RUN.END run-1").s("status"), "ended");
    assert!(err(&mut b, "RUN.END run-1").starts_with("UNKNOWN run run-1"));
    assert_eq!(q(&mut a, "RUN.END run-1").i("steps"), 1);
    // A run with no scope is still the tenant's own.
    q(&mut a, "STEP run-2 sig MAX 1");
    assert!(err(&mut b, "RUN.END run-2").starts_with("UNKNOWN"));
    assert_eq!(q(&mut a, "RUN.END run-2").s("status"), "ended");
    // Calls name runs in the tenant's keyspace too (RESERVE / SPEND … RUN).
    q(&mut a, "SPEND org:a gpt-4o INPUT 1 OUTPUT 1 RUN run-3");
    let e = err(&mut b, "RUN.END run-3 OUTCOME success");
    assert!(e.starts_with("UNKNOWN"), "{e}");
    q(
        &mut b,
        "RESERVE h-b org:b gpt-4o INPUT 1 OUTPUT 1 RUN run-3",
    );
    let end = q(&mut a, "RUN.END run-3 OUTCOME success");
    assert_eq!(
        (end.s("run"), end.s("outcome")),
        ("run-3".into(), "success".into())
    );
    assert_eq!(q(&mut b, "RUN.END run-3 OUTCOME failure").s("run"), "run-3");
}

#[test]
fn cache_namespaces_live_in_each_tenants_keyspace() {
    let s = Server::with_users(USERS, &[]);
    let mut ops = s.conn_as("ops", "ops-pass");
    let mut a = s.conn_as("a", "a-pass");
    let mut b = s.conn_as("b", "b-pass");
    raw(&mut a, "CACHE.SET ns prompt1 answer-of-a COST 0.5").unwrap();
    // b neither reads nor deletes a's entry under the same namespace and key.
    assert_eq!(bulk(raw(&mut b, "CACHE.GET ns prompt1").unwrap()), None);
    assert_eq!(
        raw(&mut b, "CACHE.DEL ns prompt1").unwrap(),
        redis::Value::Int(0)
    );
    assert_eq!(
        bulk(raw(&mut a, "CACHE.GET ns prompt1").unwrap()).as_deref(),
        Some(&b"answer-of-a"[..])
    );
    // b's own entry under the same name is separate.
    raw(&mut b, "CACHE.SET ns prompt1 answer-of-b").unwrap();
    assert_eq!(
        bulk(raw(&mut b, "CACHE.GET ns prompt1").unwrap()).as_deref(),
        Some(&b"answer-of-b"[..])
    );
    assert_eq!(
        bulk(raw(&mut a, "CACHE.GET ns prompt1").unwrap()).as_deref(),
        Some(&b"answer-of-a"[..])
    );
    // CACHE.STATS counts only the tenant's own entries and lookups.
    let sa = q(&mut a, "CACHE.STATS");
    assert_eq!((sa.i("entries"), sa.i("hits"), sa.i("misses")), (1, 2, 0));
    let sb = q(&mut b, "CACHE.STATS");
    assert_eq!((sb.i("entries"), sb.i("hits"), sb.i("misses")), (1, 1, 1));
    assert_eq!(q(&mut b, "CACHE.STATS ns").i("entries"), 1);
    // The unrestricted user sees both, qualified.
    assert_eq!(q(&mut ops, "CACHE.STATS").i("entries"), 2);
    assert_eq!(q(&mut ops, "CACHE.STATS {org:a}ns").i("entries"), 1);
    assert_eq!(bulk(raw(&mut ops, "CACHE.GET ns prompt1").unwrap()), None);
    // b's DEL deletes only b's.
    assert_eq!(
        raw(&mut b, "CACHE.DEL ns prompt1").unwrap(),
        redis::Value::Int(1)
    );
    assert_eq!(q(&mut a, "CACHE.STATS").i("entries"), 1);
    // A namespace is bounded as the client names it, not as stored.
    let long = "n".repeat(65);
    assert!(err(&mut a, &format!("CACHE.GET {long} k")).contains("namespace must be 1 to 64"));
    assert!(raw(&mut a, &format!("CACHE.SET {} k v", "n".repeat(64))).is_ok());
}
