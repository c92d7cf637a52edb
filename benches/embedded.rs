//! The embedded API's apply rate: RESERVE + COMMIT pairs through
//! `spendb::Spendb` in-process (the whole path: validation, the state
//! machine, the ledger append, group commit), with durability `none` (the
//! CPU cost and the hand-off to the committer thread) and `fsync` (one
//! fdatasync per call: the disk's latency); the same 64 at a time as one
//! batch (one group commit); and a read (BALANCE: no ledger wait).
//!
//! Run: `cargo bench --bench embedded` (figures in docs/BENCHMARKS.md).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spendb::embedded::{Options, Reservation, Spendb};
use spendb::engine::Durability;
use spendb::state::limit::LimitSpec;
use spendb::state::price::Usage;
use spendb::state::{Command, Outcome, ReserveArgs};

fn open(durability: Durability) -> (tempfile::TempDir, Spendb) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::default();
    options.engine.durability = durability;
    let db = Spendb::open(dir.path(), options).unwrap();
    db.budget_set(
        "org:bench",
        &[LimitSpec::from_words("TOKENS", "1000000000000000", "PER", "TOTAL").unwrap()],
    )
    .unwrap();
    (dir, db)
}

fn reserve_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("embedded");
    g.throughput(Throughput::Elements(1));
    for (name, durability) in [("none", Durability::None), ("fsync", Durability::Fsync)] {
        let (_dir, db) = open(durability);
        let mut n = 0u64;
        let usage = Usage {
            input: 100,
            output: 20,
            ..Usage::default()
        };
        g.bench_function(format!("reserve+commit/{name}"), |b| {
            b.iter(|| {
                n += 1;
                let hold = format!("h{n}");
                let r = db
                    .reserve(&hold, "org:bench/agent:a", "gpt-4o", 100, 50)
                    .unwrap();
                assert!(matches!(r, Reservation::Granted(_)));
                db.commit(&hold, usage).unwrap();
            })
        });
        // 64 pairs as one batch: one group commit (one write, one sync).
        let mut batch = Vec::with_capacity(128);
        g.throughput(Throughput::Elements(64));
        g.bench_function(format!("reserve+commit x64 batch/{name}"), |b| {
            b.iter(|| {
                batch.clear();
                for _ in 0..64 {
                    n += 1;
                    let hold = format!("h{n}");
                    batch.push(Command::Reserve(ReserveArgs::new(
                        hold.clone(),
                        "org:bench/agent:a",
                        "gpt-4o",
                        100,
                        50,
                    )));
                    batch.push(Command::Commit { hold, usage });
                }
                let out = db.execute_batch(&batch);
                assert!(matches!(out[0], Outcome::Granted(_)));
            })
        });
        g.throughput(Throughput::Elements(1));
        // A read: answered under the lock, nothing to wait for.
        g.bench_function(format!("balance/{name}"), |b| {
            b.iter(|| db.balance("org:bench/agent:a").unwrap())
        });
        db.close().unwrap();
    }
    g.finish();
}

criterion_group!(benches, reserve_commit);
criterion_main!(benches);
