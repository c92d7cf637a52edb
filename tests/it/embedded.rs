//! The embedded API (`spendb::Spendb`): the same rules, ledger and data dir
//! as the server, in-process. A data dir written here reopens with the same
//! figures, verifies with `spendb ledger verify`, and serves over RESP.

use spendb::embedded::{Error, Options, Reservation, Spendb};
use spendb::state::limit::{Blocker, LimitSpec};
use spendb::state::price::Usage;
use spendb::state::{ErrorCode, Value};

use crate::common::*;

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    v.field(name)
        .unwrap_or_else(|| panic!("no {name} in {v:?}"))
}

fn tokens_spent(v: &Value) -> i64 {
    match field(field(v, "spent"), "tokens") {
        Value::Int(n) => *n,
        other => panic!("{other:?}"),
    }
}

#[test]
fn reserve_commit_release_spend_in_process_then_reopen_verify_and_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let db = Spendb::open(&dir, Options::default()).unwrap();
    let limit = LimitSpec::from_words("TOKENS", "1000", "PER", "TOTAL").unwrap();
    db.budget_set("org:e", &[limit]).unwrap();

    let Reservation::Granted(g) = db
        .reserve("h1", "org:e/agent:a", "gpt-4o", 500, 100)
        .unwrap()
    else {
        panic!("room for 600 of 1000")
    };
    assert_eq!((g.hold.as_str(), g.tokens), ("h1", 600));
    // A replay is the same grant; other arguments are EXISTS.
    assert_eq!(
        db.reserve("h1", "org:e/agent:a", "gpt-4o", 500, 100)
            .unwrap(),
        Reservation::Granted(g.clone())
    );
    let exists = db
        .reserve("h1", "org:e/agent:a", "gpt-4o", 1, 1)
        .unwrap_err();
    assert!(
        matches!(
            exists,
            Error::Refused {
                code: ErrorCode::Exists,
                ..
            }
        ),
        "{exists:?}"
    );
    let Reservation::Denied(d) = db.reserve("h2", "org:e", "gpt-4o", 500, 0).unwrap() else {
        panic!("600 held + 500 > 1000")
    };
    // The open hold is what blocks: room comes back when it expires.
    assert_eq!(
        (d.scope.as_str(), d.remaining, d.held, d.reason),
        ("org:e", 400, 600, Blocker::Held)
    );
    let retry = d.retry_after.expect("waiting for the hold to expire helps");
    assert!(retry > 0 && retry <= 10 * 60_000, "{retry}");

    let c = db
        .commit(
            "h1",
            Usage {
                input: 500,
                output: 30,
                ..Usage::default()
            },
        )
        .unwrap();
    assert_eq!((c.tokens, c.released_tokens, c.late), (530, 70, false));
    let Reservation::Granted(_) = db.reserve("h3", "org:e", "gpt-4o", 10, 0).unwrap() else {
        panic!()
    };
    let r = db.release("h3").unwrap();
    assert_eq!((r.released_tokens, r.expired), (10, false));
    let s = db
        .spend(
            "org:e/agent:b",
            "gpt-4o",
            Usage {
                input: 40,
                output: 2,
                ..Usage::default()
            },
            Some("s1"),
        )
        .unwrap();
    assert_eq!(s.tokens, 42);
    // Idempotent by id: booked once.
    db.spend(
        "org:e/agent:b",
        "gpt-4o",
        Usage {
            input: 40,
            output: 2,
            ..Usage::default()
        },
        Some("s1"),
    )
    .unwrap();
    let bal = db.balance("org:e").unwrap();
    assert_eq!(tokens_spent(&bal), 572);
    // Bounds hold here too.
    let long = "m".repeat(200);
    assert!(matches!(
        db.reserve("h4", "org:e", &long, 1, 1),
        Err(Error::Refused {
            code: ErrorCode::Err,
            ..
        })
    ));
    db.close().unwrap();

    // Reopened: the same figures.
    let db = Spendb::open(&dir, Options::default()).unwrap();
    // budget, hold, commit, hold, release, spend: replays wrote nothing.
    assert_eq!(db.recovered().last_seq, 6);
    assert_eq!(db.balance("org:e").unwrap(), bal);
    drop(db);

    // The server's tools read it, and the server serves it.
    let (ok, text) = verify(&dir);
    assert!(ok, "{text}");
    let mut server = Server::start_in(&dir, &[]);
    let mut c = server.conn();
    assert_eq!(dim(&q(&mut c, "BALANCE org:e"), "spent", "tokens"), "572");
    assert_eq!(q(&mut c, "HOLD.GET h1").s("status"), "committed");
    assert!(server.stop().success());
}
