//! The semantic cache's index: one nearest-neighbour search (what CACHE.VGET
//! spends besides the protocol and the sled read) over N entries of 384
//! dimensions, a synthetic clustered set from a fixed seed (100 centres,
//! each entry a centre plus noise; each query a fresh point near a centre).
//! The exact (brute-force) index's cost grows with N; the figures say where
//! it stops meeting CACHE.VGET's 1 ms target (docs/BENCHMARKS.md, "Semantic
//! cache"). Then the same 100,000 entries in the HNSW graph (`VectorIndex`
//! past `approx_from`, built as the server builds it), and its recall@1
//! against the exact answer for 500 queries, printed.
//!
//! Run: `cargo bench --bench semantic_index`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::{RngExt as _, SeedableRng};
use spendb::store::vindex::{normalised, FlatIndex, VectorIndex, DEFAULT_EF_SEARCH};

const DIM: usize = 384;

fn clustered(rng: &mut rand::rngs::SmallRng, centres: &[Vec<f32>]) -> Vec<f32> {
    let c = &centres[rng.random_range(0..centres.len())];
    let v: Vec<f32> = c.iter().map(|x| x + rng.random_range(-0.3..0.3)).collect();
    normalised(&v).unwrap()
}

fn search(c: &mut Criterion) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(17);
    let centres: Vec<Vec<f32>> = (0..100)
        .map(|_| (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let mut group = c.benchmark_group("flat_nearest_384d");
    let mut index = FlatIndex::new(DIM);
    let mut n = 0u64;
    for size in [1_000u64, 10_000, 100_000] {
        while n < size {
            index.insert(n, &clustered(&mut rng, &centres));
            n += 1;
        }
        let queries: Vec<Vec<f32>> = (0..64).map(|_| clustered(&mut rng, &centres)).collect();
        let mut i = 0;
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                i = (i + 1) % queries.len();
                index.nearest(&queries[i], |_| true)
            })
        });
    }
    group.finish();

    // The graph over 100,000 entries.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(17);
    let mut graph = VectorIndex::new(DIM, 10_000);
    for id in 0..100_000u64 {
        graph.insert(id, &clustered(&mut rng, &centres));
    }
    graph.wait_for_build();
    assert!(graph.is_approximate());
    let queries: Vec<Vec<f32>> = (0..500).map(|_| clustered(&mut rng, &centres)).collect();
    let exact: Vec<_> = queries
        .iter()
        .map(|q| graph.nearest_exact(q, |_| true))
        .collect();
    // Recall and per-search percentiles for a few ef_search values (the
    // default is 96): what one search costs the server, one at a time.
    for ef in [32, 48, 64, 96] {
        let mut took = Vec::with_capacity(queries.len());
        let mut same = 0;
        for (q, e) in queries.iter().zip(&exact) {
            let t = std::time::Instant::now();
            let g = graph.nearest(q, ef, |_| true);
            took.push(t.elapsed().as_micros());
            if g.zip(*e)
                .is_some_and(|(g, e)| g.id == e.id || g.score == e.score)
            {
                same += 1;
            }
        }
        took.sort_unstable();
        println!(
            "hnsw_nearest_384d/100000 ef {ef}: recall@1 {:.3} over 500 fresh queries, \
             p50 {} µs, p99 {} µs",
            same as f64 / 500.0,
            took[250],
            took[495]
        );
    }
    let mut i = 0;
    c.bench_function("hnsw_nearest_384d/100000", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            graph.nearest(&queries[i], DEFAULT_EF_SEARCH, |_| true)
        })
    });
}

criterion_group!(benches, search);
criterion_main!(benches);
