//! The per-request CPU of the hot path, piece by piece: the state machine's
//! apply rate per command, the RESP frame parser and command parser, the
//! ledger record encoding, reply encoding, and token counting (MB/s per
//! encoding, on tests/data/tokens/long.txt: prose, code, CJK and emoji).
//!
//! Run: `cargo bench --bench hot_path` (figures in docs/BENCHMARKS.md).

use std::borrow::Cow;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use spendb::resp::{cmd, encode::encode, frame};
use spendb::state::{Command, Config, Entry, State, Value};
use spendb::store::frame::{decode_entry, encode_entry_into};

const NOW: u64 = 1_795_305_600_000;

fn command(line: &str) -> Command {
    let words: Vec<&str> = line.split_whitespace().collect();
    let args: Vec<Cow<[u8]>> = words[1..]
        .iter()
        .map(|w| Cow::Borrowed(w.as_bytes()))
        .collect();
    cmd::parse(&words[0].to_ascii_lowercase(), &args).expect(line)
}

/// A state with budgets on an org and a team, and `holds` open holds.
fn state(holds: u64) -> State {
    let mut s = State::new(Config::default());
    let mut out = Vec::new();
    s.apply(
        NOW,
        &command("BUDGET.SET org:o TOKENS 1000000000000 PER MONTH COST 1000000 PER DAY"),
        &mut out,
    );
    s.apply(
        NOW,
        &command("BUDGET.SET org:o/team:t REQUESTS 1000000000 PER MINUTE"),
        &mut out,
    );
    for i in 0..holds {
        s.apply(
            NOW,
            &command(&format!(
                "RESERVE pre{i} org:o/team:t/agent:a{} gpt-4o INPUT 1000 OUTPUT 500",
                i % 64
            )),
            &mut out,
        );
    }
    s
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(1));
    let reserves: Vec<Command> = (0..100_000)
        .map(|i| {
            command(&format!(
                "RESERVE h{i} org:o/team:t/agent:a{} gpt-4o INPUT 1000 OUTPUT 500",
                i % 64
            ))
        })
        .collect();
    g.bench_function("reserve_granted", |b| {
        let mut s = state(10_000);
        let mut out = Vec::with_capacity(16);
        let mut i = 0;
        b.iter(|| {
            out.clear();
            let v = s.apply(NOW, &reserves[i % reserves.len()], &mut out);
            i += 1;
            black_box(v)
        });
    });
    g.bench_function("reserve_replayed", |b| {
        let mut s = state(10_000);
        let mut out = Vec::new();
        let again = command("RESERVE pre7 org:o/team:t/agent:a7 gpt-4o INPUT 1000 OUTPUT 500");
        b.iter(|| black_box(s.apply(NOW, &again, &mut out)));
    });
    let commit = command("COMMIT pre7 INPUT 1000 OUTPUT 300");
    g.bench_function("commit", |b| {
        // Every iteration commits an open hold of a fresh 20-hold state (the
        // state's set-up is not timed).
        b.iter_batched_ref(
            || (state(20), Vec::with_capacity(16)),
            |(s, out)| black_box(s.apply(NOW, &commit, out)),
            BatchSize::SmallInput,
        );
    });
    g.bench_function("balance", |b| {
        let mut s = state(1_000);
        let mut out = Vec::new();
        let bal = command("BALANCE org:o/team:t/agent:a3");
        b.iter(|| black_box(s.apply(NOW, &bal, &mut out)));
    });
    g.bench_function("apply_entry_replay", |b| {
        let mut s = state(0);
        let mut entries = Vec::new();
        let mut src = state(0);
        for r in reserves.iter().take(10_000) {
            src.apply(NOW, r, &mut entries);
        }
        let mut i = 0;
        b.iter_batched_ref(
            || (),
            |_| {
                if i == entries.len() {
                    s = state(0);
                    i = 0;
                }
                s.apply_entry(&entries[i]);
                i += 1;
            },
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

fn protocol(c: &mut Criterion) {
    let mut g = c.benchmark_group("protocol");
    g.throughput(Throughput::Elements(1));
    let words =
        "RESERVE h-0000000000001 org:acme/team:search/agent:coder gpt-4o INPUT 1200 OUTPUT 800";
    let words: Vec<&str> = words.split(' ').collect();
    let mut req = format!("*{}\r\n", words.len());
    for w in &words {
        req += &format!("${}\r\n{w}\r\n", w.len());
    }
    let req = req.as_bytes();
    let limits = frame::FrameLimits::default();
    g.bench_function("frame_parse_reserve", |b| {
        b.iter(|| black_box(frame::parse(black_box(req), &limits).unwrap()))
    });
    g.bench_function("frame_and_command_parse_reserve", |b| {
        b.iter(|| {
            let r = frame::parse(black_box(req), &limits).unwrap().unwrap();
            let args: Vec<Cow<[u8]>> = r
                .args
                .iter()
                .map(|a| frame::arg_bytes(req, a, false))
                .collect();
            black_box(cmd::parse("reserve", &args[1..]).unwrap())
        })
    });
    let mut s = state(0);
    let mut out = Vec::new();
    let reply = s.apply(
        NOW,
        &command("RESERVE x org:o/team:t/agent:a1 gpt-4o INPUT 1200 OUTPUT 800"),
        &mut out,
    );
    assert!(matches!(reply, Value::Map(_)));
    for proto in [2u8, 3] {
        g.bench_function(format!("encode_reserve_reply_resp{proto}"), |b| {
            let mut buf = Vec::with_capacity(512);
            b.iter(|| {
                buf.clear();
                encode(black_box(&reply), proto, &mut buf);
                black_box(buf.len())
            })
        });
    }
    g.finish();
}

fn ledger(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger_record");
    g.throughput(Throughput::Elements(1));
    let mut s = state(0);
    let mut out: Vec<Entry> = Vec::new();
    s.apply(
        NOW,
        &command(
            "RESERVE h-0000000000001 org:acme/team:search/agent:coder gpt-4o INPUT 1200 OUTPUT 800",
        ),
        &mut out,
    );
    let hold = out.pop().expect("a hold entry");
    g.bench_function("encode_hold", |b| {
        let mut buf = Vec::with_capacity(256);
        b.iter(|| {
            buf.clear();
            encode_entry_into(black_box(&hold), &mut buf);
            black_box(buf.len())
        })
    });
    let mut rec = Vec::new();
    encode_entry_into(&hold, &mut rec);
    g.bench_function("decode_hold", |b| {
        b.iter(|| black_box(decode_entry(&rec[4..]).unwrap()))
    });
    g.finish();
}

fn token_counting(c: &mut Criterion) {
    use spendb::tokens::{count, Encoding};
    let mut g = c.benchmark_group("count");
    let text =
        std::fs::read_to_string("tests/data/tokens/long.txt").expect("the committed long text");
    g.throughput(Throughput::Bytes(text.len() as u64));
    for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
        count(enc, "warm the encoder up");
        g.bench_function(enc.name(), |b| {
            b.iter(|| black_box(count(enc, black_box(&text))))
        });
    }
    g.finish();
}

criterion_group!(benches, apply, protocol, ledger, token_counting);
criterion_main!(benches);
