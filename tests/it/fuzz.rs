//! Fuzzing the protocol front end with proptest (cargo-fuzz needs a nightly
//! toolchain, which this project's machines do not have).
//!
//! - The frame parser, on random bytes and on valid requests with random
//!   mutations and cuts: never panics; every argument range lies inside the
//!   buffer and the consumed length never exceeds it; a cut-short valid
//!   request asks for more bytes instead of failing; a valid request parses to
//!   exactly its arguments.
//! - The command parser, on random argument lists built from real keywords,
//!   numbers and junk: never panics, and whatever it accepts, the state
//!   machine applies without panicking.
//!
//! `PROPTEST_CASES=<n> cargo test --release --test it fuzz::` runs longer.

use std::borrow::Cow;

use proptest::prelude::*;
use spendb::resp::cmd;
use spendb::resp::frame::{arg_bytes, parse, FrameError, FrameLimits};
use spendb::state::{Config, State};

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn encode_request(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn limits() -> FrameLimits {
    FrameLimits {
        max_bulk: 4096,
        max_args: 64,
        max_inline: 4096,
    }
}

/// Parses every request in `buf` in turn, checking the parser's contract.
fn drain(buf: &[u8]) -> Result<usize, TestCaseError> {
    let mut at = 0;
    let mut n = 0;
    while at < buf.len() {
        match parse(&buf[at..], &limits()) {
            Ok(Some(req)) => {
                prop_assert!(
                    req.len > 0 && req.len <= buf.len() - at,
                    "consumed {} of {}",
                    req.len,
                    buf.len() - at
                );
                for r in &req.args {
                    prop_assert!(r.start <= r.end && r.end <= req.len);
                    let _ = arg_bytes(&buf[at..], r, buf[at] != b'*');
                }
                at += req.len;
                n += 1;
            }
            Ok(None) | Err(_) => break,
        }
    }
    Ok(n)
}

const WORDS: &[&str] = &[
    "RESERVE",
    "COMMIT",
    "RELEASE",
    "HOLD.GET",
    "SPEND",
    "BALANCE",
    "BUDGET.SET",
    "BUDGET.GET",
    "BUDGET.DEL",
    "BUDGET.LIST",
    "PRICE.SET",
    "PRICE.GET",
    "PRICE.LIST",
    "INPUT",
    "OUTPUT",
    "CACHED",
    "CACHEWRITE",
    "TTL",
    "ID",
    "TEXT",
    "PER",
    "ROLLING",
    "DAY",
    "MONTH",
    "TOTAL",
    "TOKENS",
    "COST",
    "REQUESTS",
    "60s",
    "1h",
    "0",
    "1",
    "-1",
    "18446744073709551615",
    "18446744073709551616",
    "0.5",
    "1e3",
    "gpt-4o",
    "org:a",
    "org:a/team:b",
    "a//b",
    "h1",
    "",
    " ",
    "\u{0}",
    "é",
    "0.0000000001",
];

fn word() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(WORDS).prop_map(|w| w.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..12),
        1 => (0u64..u64::MAX).prop_map(|n| n.to_string().into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2000), ..ProptestConfig::default() })]

    #[test]
    fn frame_parser_survives_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        drain(&bytes)?;
    }

    #[test]
    fn frame_parser_survives_mutated_requests(
        args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let good = encode_request(&args);
        // Valid: exactly its arguments, whole length.
        let req = parse(&good, &limits()).unwrap().unwrap();
        prop_assert_eq!(req.len, good.len());
        let got: Vec<Vec<u8>> = req.args.iter().map(|r| good[r.clone()].to_vec()).collect();
        prop_assert_eq!(&got, &args);
        // Cut short: needs more bytes, never an error.
        let c = cut.index(good.len());
        prop_assert_eq!(parse(&good[..c], &limits()), Ok(None));
        // Mutated: anything but a panic or an out-of-bounds range.
        let mut bad = good.clone();
        for (i, b) in flips {
            let i = i.index(bad.len());
            bad[i] = b;
        }
        drain(&bad)?;
    }

    #[test]
    fn frame_parser_enforces_limits_before_buffering(n in 65usize..100_000, len in 4097usize..1_000_000) {
        let many = format!("*{n}\r\n");
        prop_assert!(matches!(parse(many.as_bytes(), &limits()), Err(FrameError::TooBig(_))));
        let head = format!("*1\r\n${len}\r\n");
        prop_assert!(matches!(parse(head.as_bytes(), &limits()), Err(FrameError::TooBig(_))));
    }

    #[test]
    fn command_parser_and_state_survive_random_arguments(
        name in prop::sample::select(&WORDS[..13]),
        args in prop::collection::vec(word(), 0..12),
    ) {
        let args: Vec<Cow<[u8]>> = args.into_iter().map(Cow::Owned).collect();
        let name = name.to_ascii_lowercase();
        if let Ok(c) = cmd::parse(&name, &args) {
            let mut st = State::new(Config::default());
            let mut out = Vec::new();
            st.apply(1_795_305_600_000, &c, &mut out);
            st.check_invariants().map_err(TestCaseError::fail)?;
        }
    }
}
