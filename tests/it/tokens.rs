//! COUNT, TRUNCATE and RESERVE … TEXT over a real server, against reference
//! counts from an independent tiktoken implementation (js-tiktoken; see
//! tests/data/tokens/reference.mjs) on a committed set of texts.

use std::path::Path;

use crate::common::*;
use spendb::tokens::{self, Encoding};

fn data(name: &str) -> String {
    std::fs::read_to_string(Path::new("tests/data/tokens").join(name)).unwrap()
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&data("reference.json")).unwrap()
}

const FILES: [&str; 5] = ["ascii.txt", "code.txt", "cjk.txt", "emoji.txt", "long.txt"];
/// A model of each encoding.
const MODELS: [(&str, &str, Encoding); 2] = [
    ("o200k_base", "gpt-4o", Encoding::O200kBase),
    ("cl100k_base", "gpt-4", Encoding::Cl100kBase),
];

fn cmd(con: &mut redis::Connection, args: &[&[u8]]) -> redis::Value {
    let mut c = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con).unwrap()
}

#[test]
fn counts_equal_the_reference_for_every_text_and_encoding() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let want = reference();
    for (enc_name, model, enc) in MODELS {
        for f in FILES {
            let text = data(f);
            let expected = want[enc_name][f].as_u64().unwrap();
            assert_eq!(tokens::count(enc, &text) as u64, expected, "{enc_name} {f}");
            let r = fields(cmd(&mut c, &[b"COUNT", model.as_bytes(), text.as_bytes()]));
            assert_eq!(r.i("tokens") as u64, expected, "COUNT {model} {f}");
            assert_eq!(r.s("encoding"), enc_name);
            assert_eq!(r.i("estimate"), 0);
        }
    }
    // Models tiktoken does not cover are counted with o200k_base, flagged.
    let r = fields(cmd(
        &mut c,
        &[b"COUNT", b"claude-sonnet-4", data("ascii.txt").as_bytes()],
    ));
    assert_eq!(r.i("estimate"), 1);
    assert_eq!(r.s("encoding"), "o200k_base");
    assert_eq!(
        r.i("tokens") as u64,
        want["o200k_base"]["ascii.txt"].as_u64().unwrap()
    );
}

#[test]
fn truncation_round_trips() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    for (_, model, enc) in MODELS {
        for f in ["cjk.txt", "emoji.txt", "code.txt"] {
            let text = data(f);
            let total = tokens::count(enc, &text);
            for max in [0, 1, 7, total / 2, total - 1, total, total + 10] {
                let m = max.to_string();
                let r = fields(cmd(
                    &mut c,
                    &[b"TRUNCATE", model.as_bytes(), text.as_bytes(), m.as_bytes()],
                ));
                let cut = r.s("text");
                assert!(text.starts_with(&cut), "{f} {max}: not a prefix");
                let n = r.i("tokens") as usize;
                assert!(n <= max, "{f} {max}: {n} tokens");
                assert_eq!(n, tokens::count(enc, &cut), "{f} {max}");
                assert_eq!(r.i("truncated"), (max < total) as i64, "{f} {max}");
                if max >= total {
                    assert_eq!(cut, text);
                }
            }
        }
    }
}

#[test]
fn reserve_text_holds_the_counted_prompt() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:t TOKENS 1000000 PER DAY").unwrap();
    let prompt = data("code.txt");
    let want = reference()["o200k_base"]["code.txt"].as_u64().unwrap() as i64;
    let reserve: [&[u8]; 8] = [
        b"RESERVE",
        b"t1",
        b"org:t/agent:a",
        b"gpt-4o",
        b"TEXT",
        prompt.as_bytes(),
        b"OUTPUT",
        b"100",
    ];
    let r = fields(cmd(&mut c, &reserve));
    assert_eq!(r.s("status"), "granted");
    assert_eq!(r.i("tokens"), want + 100);
    let h = q(&mut c, "HOLD.GET t1");
    assert_eq!(h.i("input"), want);
    // A repeat with the same text is the same request (idempotent).
    let again = fields(cmd(&mut c, &reserve));
    assert_eq!(again.s("status"), "granted");
    let both = err(
        &mut c,
        "RESERVE t2 org:t gpt-4o INPUT 5 OUTPUT 0 TEXT hello",
    );
    assert!(
        both.contains("INPUT <n> or TEXT <prompt>, not both"),
        "{both}"
    );
    let none = err(&mut c, "RESERVE t3 org:t gpt-4o TEXT");
    assert!(none.starts_with("ERR"), "{none}");
}

#[test]
fn a_multi_megabyte_text_is_counted_exactly() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let big = data("long.txt").repeat(20); // 2.2 MB: counted on the blocking pool
    let r = fields(cmd(&mut c, &[b"COUNT", b"gpt-4o", big.as_bytes()]));
    assert_eq!(
        r.i("tokens") as usize,
        tokens::count(Encoding::O200kBase, &big)
    );
    // The connection and the server carry on.
    assert_eq!(
        raw(&mut c, "PING").unwrap(),
        redis::Value::SimpleString("PONG".into())
    );
}
