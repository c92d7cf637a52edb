//! The embedded API's apply rate: RESERVE + COMMIT pairs through
//! `spendb::Spendb` in-process (the whole path: validation, the state
//! machine, the ledger append, group commit), with durability `none` (the
//! CPU cost) and `fsync` (one fdatasync per call: the disk's latency).
//!
//! Run: `cargo bench --bench embedded` (figures in docs/BENCHMARKS.md).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spendb::embedded::{Options, Reservation, Spendb};
use spendb::engine::Durability;
use spendb::state::limit::LimitSpec;
use spendb::state::price::Usage;

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
        db.close().unwrap();
    }
    g.finish();
}

criterion_group!(benches, reserve_commit);
criterion_main!(benches);
