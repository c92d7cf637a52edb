//! The userland work of N RESERVE + COMMIT transactions without any I/O:
//! frame and command parsing, `State::apply`, ledger record encoding, reply
//! encoding. Made to run under callgrind, whose instruction counts repeat
//! exactly whatever else the machine is doing (docs/BENCHMARKS.md):
//!
//!   cargo build --release --example hot_path_loop
//!   valgrind --tool=callgrind --toggle-collect='*serve_one*' \
//!       --callgrind-out-file=cg.out target/release/examples/hot_path_loop 100000
//!   callgrind_annotate cg.out | head -30

use std::borrow::Cow;

use spendb::resp::{cmd, encode::encode, frame};
use spendb::state::{Config, State};
use spendb::store::frame::encode_entry_into;

fn request(words: &[&str]) -> Vec<u8> {
    let mut r = format!("*{}\r\n", words.len());
    for w in words {
        r += &format!("${}\r\n{w}\r\n", w.len());
    }
    r.into_bytes()
}

/// One request, as the server handles it minus the I/O. Callgrind counts
/// only inside this function with `--toggle-collect='*serve_one*'`.
#[inline(never)]
fn serve_one(
    req: &[u8],
    state: &mut State,
    t: u64,
    limits: &frame::FrameLimits,
    entries: &mut Vec<spendb::state::Entry>,
    ledger: &mut Vec<u8>,
    replies: &mut Vec<u8>,
) {
    let r = frame::parse(req, limits).unwrap().unwrap();
    let args: Vec<Cow<[u8]>> = r
        .args
        .iter()
        .map(|a| frame::arg_bytes(req, a, false))
        .collect();
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let c = cmd::parse(&name, &args[1..]).unwrap();
    entries.clear();
    let v = state.apply(t, &c, entries);
    for e in entries.iter() {
        encode_entry_into(e, ledger);
    }
    encode(&v, 2, replies);
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let limits = frame::FrameLimits::default();
    let mut state = State::new(Config::default());
    let mut entries = Vec::new();
    let mut ledger = Vec::with_capacity(1 << 20);
    let mut replies = Vec::with_capacity(1 << 16);
    let now = 1_795_305_600_000u64;
    let mut run = |req: &[u8], state: &mut State, t: u64| {
        serve_one(
            req,
            state,
            t,
            &limits,
            &mut entries,
            &mut ledger,
            &mut replies,
        );
        if ledger.len() > 1 << 20 {
            ledger.clear();
        }
        if replies.len() > 1 << 16 {
            replies.clear();
        }
    };
    run(
        &request(&[
            "BUDGET.SET",
            "org:o",
            "TOKENS",
            "1000000000000000",
            "PER",
            "MONTH",
        ]),
        &mut state,
        now,
    );
    run(
        &request(&[
            "BUDGET.SET",
            "org:o/team:t",
            "REQUESTS",
            "1000000000000",
            "PER",
            "DAY",
        ]),
        &mut state,
        now,
    );
    for i in 0..n {
        let id = format!("h{i:012}");
        let scope = format!("org:o/team:t/agent:a{}", i % 16);
        let t = now + i / 10;
        run(
            &request(&[
                "RESERVE", &id, &scope, "gpt-4o", "INPUT", "1000", "OUTPUT", "500",
            ]),
            &mut state,
            t,
        );
        run(
            &request(&["COMMIT", &id, "INPUT", "1000", "OUTPUT", "321"]),
            &mut state,
            t,
        );
    }
    println!(
        "{n} transactions; ledger at entry {}; {} holds remembered",
        state.next_seq - 1,
        state.holds.len()
    );
}
