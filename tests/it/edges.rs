//! No input can corrupt a figure (issue #13): a property test drives the
//! real server (a debug build, so an arithmetic overflow would panic) with
//! values at the edges of u64 / i64 (0, 1, the documented maxima and one
//! past them, 2^53, 2^63, 2^64−1, 2^64, negative, decimal, exponent) in
//! every numeric argument of every command. Each command is sent in one
//! pipeline between BALANCE reads of every scope, so all of it is applied at
//! one instant; a refused command must leave every BALANCE byte-for-byte
//! unchanged. At the end the server is still up, no thread panicked, every
//! figure is a sane integer, and `spendb ledger verify` passes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use proptest::prelude::*;

const EDGES: &[&str] = &[
    "0",
    "1",
    "2",
    "1000000000000",    // MAX_TOKENS
    "1000000000001",    // one past it
    "1000000000000000", // MAX_LIMIT_AMOUNT
    "1000000000000001", //
    "1000000000",       // MAX_USD in dollars
    "1000000000.000000001",
    "1000000", // MAX_PRICE in dollars
    "1000000.000000001",
    "9007199254740992",     // 2^53
    "9223372036854775807",  // 2^63 - 1
    "9223372036854775808",  // 2^63
    "18446744073709551615", // 2^64 - 1
    "18446744073709551616", // 2^64
    "-1",
    "-9223372036854775808",
    "1.5",
    "0.000000001",
    "0.0000000001",
    "1e3",
    "",
];

const SCOPES: &[&str] = &["org:e", "org:e/team:t", "org:e/team:t/agent:x", "org:f"];

/// Command templates; `#` is replaced by an edge value, `@` by a counter
/// (unique hold, run and spend ids).
const TEMPLATES: &[&str] = &[
    "BUDGET.SET org:e/team:t TOKENS # PER DAY",
    "BUDGET.SET org:f COST # PER MONTH REQUESTS # ROLLING 1m",
    "BUDGET.SET org:f INPUT # TOTAL OUTPUT # PER HOUR",
    "RESERVE h@ org:e/team:t/agent:x gpt-4o INPUT # OUTPUT #",
    "RESERVE h@ org:f edge-model INPUT # OUTPUT # TTL #",
    "RESERVE h@ org:e gpt-4o INPUT # TTL #",
    "COMMIT open-e INPUT # OUTPUT # CACHED # CACHEWRITE #",
    "COMMIT open-f INPUT # OUTPUT #",
    "SPEND org:e/team:t gpt-4o INPUT # OUTPUT # CACHED # CACHEWRITE #",
    "SPEND org:f edge-model INPUT # OUTPUT # ID s@",
    "PRICE.SET edge-model INPUT # OUTPUT # CACHED # CACHEWRITE #",
    "STEP r@ sig SCOPE org:e MAX # REPEATS # WINDOW #",
    "CACHE.SET ns k@ v TTL # COST #",
    "CACHE.GET ns k@ SCOPE org:e",
    "TRUNCATE gpt-4o hello #",
    "HOLD.GET open-e",
];

/// One RESP command as bytes.
fn resp(words: &[String]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        out.extend_from_slice(format!("${}\r\n{w}\r\n", w.len()).as_bytes());
    }
    out
}

/// The length of the first complete RESP2 reply in `buf`, if there is one.
fn reply_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let head = std::str::from_utf8(&buf[1..line_end]).ok()?;
    let after = line_end + 2;
    match buf.first()? {
        b'+' | b'-' | b':' => Some(after),
        b'$' => {
            let n: i64 = head.parse().ok()?;
            if n < 0 {
                return Some(after);
            }
            let end = after + n as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' => {
            let n: i64 = head.parse().ok()?;
            let mut at = after;
            for _ in 0..n.max(0) {
                at += reply_len(&buf[at..])?;
            }
            Some(at)
        }
        other => panic!("unexpected RESP type byte {other}"),
    }
}

struct Raw {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn new(port: u16) -> Raw {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Raw {
            sock,
            buf: Vec::new(),
        }
    }

    /// Sends the commands as one pipeline; the replies' bytes, in order.
    fn pipeline(&mut self, cmds: &[Vec<String>]) -> Vec<Vec<u8>> {
        let bytes: Vec<u8> = cmds.iter().flat_map(|c| resp(c)).collect();
        self.sock.write_all(&bytes).unwrap();
        let mut replies = Vec::new();
        let mut chunk = [0u8; 65536];
        while replies.len() < cmds.len() {
            if let Some(n) = reply_len(&self.buf) {
                replies.push(self.buf.drain(..n).collect());
                continue;
            }
            let n = self.sock.read(&mut chunk).expect("the server answers");
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        replies
    }
}

fn words(line: &str) -> Vec<String> {
    line.split(' ').map(str::to_string).collect()
}

fn balances() -> Vec<Vec<String>> {
    SCOPES
        .iter()
        .map(|s| words(&format!("BALANCE {s}")))
        .collect()
}

#[test]
fn edge_values_in_every_numeric_argument_never_corrupt_a_balance() {
    let mut s = Server::start(&[]);
    let mut c = Raw::new(s.port);
    for setup in [
        "BUDGET.SET org:e TOKENS 1000000 PER DAY COST 100 PER MONTH",
        "BUDGET.SET org:e/team:t REQUESTS 1000 ROLLING 1m",
        "PRICE.SET edge-model INPUT 3 OUTPUT 15",
        "RESERVE open-e org:e/team:t gpt-4o INPUT 10 OUTPUT 10",
        "RESERVE open-f org:f edge-model INPUT 10 OUTPUT 10",
    ] {
        let r = c.pipeline(&[words(setup)]);
        assert!(
            !r[0].starts_with(b"-"),
            "{setup}: {}",
            String::from_utf8_lossy(&r[0])
        );
    }
    // The runner takes an Fn closure: the connection and counts in cells.
    let c = std::cell::RefCell::new(c);
    let counter = std::cell::Cell::new(0u64);
    let refused = std::cell::Cell::new(0u64);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        0..TEMPLATES.len(),
        proptest::collection::vec(0..EDGES.len(), 8),
    );
    runner
        .run(&strategy, |(t, picks)| {
            counter.set(counter.get() + 1);
            let mut edge = picks.iter().map(|&i| EDGES[i]);
            let line: String = TEMPLATES[t]
                .split(' ')
                .map(|w| {
                    if w == "#" {
                        edge.next().unwrap().to_string()
                    } else {
                        w.replace('@', &counter.get().to_string())
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            let cmd: Vec<String> = line.split(' ').map(str::to_string).collect();
            let mut batch = balances();
            batch.push(cmd);
            batch.extend(balances());
            let r = c.borrow_mut().pipeline(&batch);
            let n = SCOPES.len();
            let reply = &r[n];
            if reply.starts_with(b"-") {
                refused.set(refused.get() + 1);
                for i in 0..n {
                    prop_assert_eq!(
                        &r[i],
                        &r[n + 1 + i],
                        "{} was refused ({}) but BALANCE {} changed",
                        line,
                        String::from_utf8_lossy(reply),
                        SCOPES[i]
                    );
                }
            }
            // Every figure in every BALANCE is sane: no wrapped counter (a
            // used or held past 2^63 prints negative, a remaining near
            // -2^63). Only `remaining` may be negative (a limit lowered
            // below what is held), and nothing the edges can book comes
            // near 2^62.
            for b in &r[n + 1..] {
                let text = String::from_utf8_lossy(b);
                let mut key = "";
                for l in text.split("\r\n") {
                    if let Some(v) = l.strip_prefix(':') {
                        let v: i64 = v.parse().unwrap();
                        let ok = (v >= 0 || key == "remaining") && v.unsigned_abs() < 1 << 62;
                        prop_assert!(ok, "{} left {} = {} in {}", line, key, v, text);
                    } else if !l.starts_with(['$', '*']) {
                        key = l;
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    let (refused, counter) = (refused.get(), counter.get());
    assert!(
        refused > 50,
        "the edges were mostly refused: {refused} of {counter}"
    );
    let mut c = c.into_inner();
    // Still up, and every figure readable.
    let r = c.pipeline(&[words("PING")]);
    assert_eq!(r[0], b"+PONG\r\n");
    // A panic would have closed the connection above; a clean stop too.
    assert!(s.stop().success());
    let (ok, text) = verify(&s.dir);
    assert!(ok, "ledger verify failed: {text}");
}
