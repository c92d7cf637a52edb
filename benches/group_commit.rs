//! Group commit: the cost of making one batch of ledger entries durable, for
//! the two designs compared:
//! - `sled+fdatasync`: one sled `apply_batch`, `flush()`, then `fdatasync` of
//!   sled's data file (the ledger in sled, the first design);
//! - `segments+fdatasync`: `LogStore` — the same CRC-framed records written
//!   into a preallocated segment file and `fdatasync`ed (the design in use).
//!
//! Run: `cargo bench --bench group_commit`. Per-batch time; divide by the
//! batch size for per-entry cost.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spendb::state::limit::Dims;
use spendb::state::{Entry, EntryKind};
use spendb::store::frame::encode_entry;
use spendb::store::{LogStore, Storage};

fn entry(seq: u64) -> Entry {
    Entry {
        seq,
        ts: 1_795_305_600_000 + seq,
        kind: EntryKind::Hold {
            id: format!("hold-{seq:016}"),
            scope: "org:acme/team:search/agent:coder".into(),
            model: "gpt-4o".into(),
            input: 1200,
            output: 800,
            ttl_ms: None,
            amounts: Dims::call(1200, 800, 11_000_000),
            expires_at: 1_795_305_600_000 + seq + 600_000,
            run: None,
        },
    }
}

fn group_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_commit");
    g.sample_size(30);
    for batch in [1usize, 16, 256] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(
            BenchmarkId::new("sled+fdatasync", batch),
            &batch,
            |b, &batch| {
                let dir = tempfile::tempdir().unwrap();
                let db = sled::Config::new()
                    .path(dir.path())
                    .flush_every_ms(None)
                    .mode(sled::Mode::HighThroughput)
                    .open()
                    .unwrap();
                let ledger = db.open_tree("ledger").unwrap();
                db.flush().unwrap();
                let data_file = std::fs::File::open(dir.path().join("db")).unwrap();
                let mut seq: u64 = 0;
                b.iter(|| {
                    let mut sled_batch = sled::Batch::default();
                    for _ in 0..batch {
                        seq += 1;
                        sled_batch.insert(&seq.to_be_bytes(), encode_entry(&entry(seq)));
                    }
                    ledger.apply_batch(sled_batch).unwrap();
                    db.flush().unwrap();
                    data_file.sync_data().unwrap();
                });
            },
        );
        g.bench_with_input(
            BenchmarkId::new("segments+fdatasync", batch),
            &batch,
            |b, &batch| {
                let dir = tempfile::tempdir().unwrap();
                let mut store = LogStore::open(dir.path()).unwrap();
                let mut seq = 0;
                b.iter(|| {
                    let entries: Vec<Entry> = (0..batch)
                        .map(|_| {
                            seq += 1;
                            entry(seq)
                        })
                        .collect();
                    store.append(&entries).unwrap();
                    store.sync().unwrap();
                });
            },
        );
    }
    g.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
