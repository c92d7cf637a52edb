//! Group commit: the cost of making one batch of ledger entries durable, for
//! the two designs issue #2 asked to compare:
//! - `sled+fdatasync`: one sled `apply_batch`, `flush()`, then `fdatasync` of
//!   sled's data file (what `SledStore::sync` does — the design in use);
//! - `logfile+fdatasync`: the same CRC-framed records appended to a plain file
//!   and `fdatasync`ed (the alternative: a log file as the durable record,
//!   sled only for checkpoints).
//!
//! Run: `cargo bench --bench group_commit`. Per-batch time; divide by the
//! batch size for per-entry cost.

use std::io::Write;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use spendb::state::limit::Dims;
use spendb::state::{Entry, EntryKind};
use spendb::store::frame::encode_entry;
use spendb::store::{SledStore, Storage};

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
                let mut store = SledStore::open(dir.path()).unwrap();
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
        g.bench_with_input(
            BenchmarkId::new("logfile+fdatasync", batch),
            &batch,
            |b, &batch| {
                let dir = tempfile::tempdir().unwrap();
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.path().join("ledger.log"))
                    .unwrap();
                let mut seq = 0;
                let mut buf = Vec::new();
                b.iter(|| {
                    buf.clear();
                    for _ in 0..batch {
                        seq += 1;
                        let rec = encode_entry(&entry(seq));
                        buf.extend_from_slice(&(rec.len() as u32).to_le_bytes());
                        buf.extend_from_slice(&rec);
                    }
                    f.write_all(&buf).unwrap();
                    f.sync_data().unwrap();
                });
            },
        );
    }
    g.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
