//! The exact-response cache over a real server: binary keys and values, TTL,
//! survival across a restart, eviction under the bound, the value size
//! limit, and savings booked to a scope (visible in BALANCE, and kept in the
//! ledger).

use std::time::Duration;

use crate::common::*;

fn cmd(con: &mut redis::Connection, args: &[&[u8]]) -> redis::RedisResult<redis::Value> {
    let mut c = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con)
}

fn bulk(v: redis::Value) -> Option<Vec<u8>> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::Nil => None,
        other => panic!("{other:?}"),
    }
}

#[test]
fn set_get_del_with_whole_prompts_as_keys() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let prompt = "Summarise this contract:\n".repeat(2000); // 50 KB key
    let answer = b"\x00binary\r\nanswer\xff".to_vec();
    assert_eq!(
        cmd(&mut c, &[b"CACHE.SET", b"llm", prompt.as_bytes(), &answer]).unwrap(),
        redis::Value::Okay
    );
    let got = bulk(cmd(&mut c, &[b"CACHE.GET", b"llm", prompt.as_bytes()]).unwrap());
    assert_eq!(got.as_deref(), Some(&answer[..]));
    // Another namespace, another prompt: misses.
    assert_eq!(
        bulk(cmd(&mut c, &[b"CACHE.GET", b"other", prompt.as_bytes()]).unwrap()),
        None
    );
    assert_eq!(
        bulk(cmd(&mut c, &[b"CACHE.GET", b"llm", b"nope"]).unwrap()),
        None
    );
    let st = fields(cmd(&mut c, &[b"CACHE.STATS", b"llm"]).unwrap());
    assert_eq!((st.i("hits"), st.i("misses"), st.i("entries")), (1, 1, 1));
    assert_eq!(st.s("hit_rate"), "0.5000");
    assert_eq!(
        cmd(&mut c, &[b"CACHE.DEL", b"llm", prompt.as_bytes()]).unwrap(),
        redis::Value::Int(1)
    );
    assert_eq!(
        cmd(&mut c, &[b"CACHE.DEL", b"llm", prompt.as_bytes()]).unwrap(),
        redis::Value::Int(0)
    );
    assert_eq!(
        bulk(cmd(&mut c, &[b"CACHE.GET", b"llm", prompt.as_bytes()]).unwrap()),
        None
    );
    assert!(err(&mut c, "CACHE.SET llm k v TTL 0").starts_with("ERR"));
    assert!(err(&mut c, "CACHE.SET llm k v COST abc").starts_with("ERR"));
    assert!(err(&mut c, "CACHE.GET llm").starts_with("ERR"));
}

#[test]
fn an_expired_entry_is_never_served_and_is_reclaimed() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "CACHE.SET t short v TTL 200").unwrap();
    raw(&mut c, "CACHE.SET t long v TTL 600000").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(bulk(raw(&mut c, "CACHE.GET t short").unwrap()), None);
    assert_eq!(
        bulk(raw(&mut c, "CACHE.GET t long").unwrap()).as_deref(),
        Some(&b"v"[..])
    );
    // One more that nobody asks for: the background sweep takes it.
    raw(&mut c, "CACHE.SET t swept v TTL 100").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let st = q(&mut c, "CACHE.STATS t");
    assert_eq!(st.i("entries"), 1);
    assert_eq!(st.i("expired"), 2);
}

#[test]
fn entries_survive_a_restart() {
    let mut s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "CACHE.SET keep k1 hello").unwrap();
    raw(&mut c, "CACHE.SET keep k2 gone TTL 100").unwrap();
    drop(c);
    assert!(s.stop().success());
    std::thread::sleep(Duration::from_millis(150));
    s.restart();
    let mut c = s.conn();
    assert_eq!(
        bulk(raw(&mut c, "CACHE.GET keep k1").unwrap()).as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(bulk(raw(&mut c, "CACHE.GET keep k2").unwrap()), None);
    assert_eq!(q(&mut c, "CACHE.STATS keep").i("entries"), 1);
}

#[test]
fn the_least_recently_used_are_evicted_under_the_bound() {
    // Each entry: "ns" NUL digest (35 bytes) + a 100-byte value.
    let s = Server::start(&["--cache-max-bytes", "540", "--cache-max-value", "200"]);
    let mut c = s.conn();
    let v = "x".repeat(100);
    for k in ["a", "b", "c", "d"] {
        raw(&mut c, &format!("CACHE.SET ns {k} {v}")).unwrap();
    }
    raw(&mut c, "CACHE.GET ns a").unwrap(); // a is used again: b is the oldest
    raw(&mut c, &format!("CACHE.SET ns e {v}")).unwrap();
    assert_eq!(bulk(raw(&mut c, "CACHE.GET ns b").unwrap()), None);
    for k in ["a", "c", "d", "e"] {
        assert!(
            bulk(raw(&mut c, &format!("CACHE.GET ns {k}")).unwrap()).is_some(),
            "{k}"
        );
    }
    let st = q(&mut c, "CACHE.STATS ns");
    assert_eq!(
        (st.i("entries"), st.i("bytes"), st.i("evictions")),
        (4, 540, 1)
    );
    let big = "y".repeat(201);
    assert!(err(&mut c, &format!("CACHE.SET ns big {big}")).contains("over the 200-byte limit"));
}

#[test]
fn a_hit_with_scope_books_its_cost_as_savings() {
    let mut s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "CACHE.SET llm q1 answer COST 0.012").unwrap();
    for _ in 0..2 {
        let v = bulk(raw(&mut c, "CACHE.GET llm q1 SCOPE org:acme/agent:bot").unwrap());
        assert_eq!(v.as_deref(), Some(&b"answer"[..]));
    }
    // Without SCOPE nothing is booked to a scope.
    raw(&mut c, "CACHE.GET llm q1").unwrap();
    let b = q(&mut c, "BALANCE org:acme");
    assert_eq!(b.s("saved"), "0.024");
    assert_eq!(q(&mut c, "BALANCE org:acme/agent:bot").s("saved"), "0.024");
    assert_eq!(q(&mut c, "CACHE.STATS llm").s("saved"), "0.036");
    // Savings are ledger entries: they survive a restart and verify.
    drop(c);
    assert!(s.stop().success());
    assert!(verify(&s.dir).0);
    s.restart();
    let mut c = s.conn();
    assert_eq!(q(&mut c, "BALANCE org:acme").s("saved"), "0.024");
}
