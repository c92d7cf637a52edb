//! CACHE.GET and CACHE.SET over the protocol: a real server (the release
//! binary, `--durability none`, on a free loopback port), a `redis` crate
//! connection, one request per iteration (round-trip latency, so this is
//! also bound by loopback TCP and the scheduler; see docs/BENCHMARKS.md).
//!
//! Run: `cargo bench --bench cache_protocol`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn cache(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_spendb"))
        .args([
            "serve",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--durability",
            "none",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("resp="))
        .expect("spendb ready resp=…")
        .to_string();
    let client = redis::Client::open(format!("redis://{addr}")).unwrap();
    let mut con = client.get_connection().unwrap();

    let prompt = "Summarise the attached quarterly report in three bullet points. ".repeat(16);
    let answer = "• Revenue grew. • Costs fell. • Guidance holds. ".repeat(8);
    let mut g = c.benchmark_group("cache_protocol");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("set_1k_key_400b_value", |b| {
        b.iter(|| {
            i += 1;
            let _: () = redis::cmd("CACHE.SET")
                .arg("bench")
                .arg(format!("{prompt}{i}"))
                .arg(&answer)
                .arg("TTL")
                .arg(600_000)
                .query(&mut con)
                .unwrap();
        })
    });
    let _: () = redis::cmd("CACHE.SET")
        .arg("bench")
        .arg(&prompt)
        .arg(&answer)
        .query(&mut con)
        .unwrap();
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            let v: Vec<u8> = redis::cmd("CACHE.GET")
                .arg("bench")
                .arg(&prompt)
                .query(&mut con)
                .unwrap();
            assert_eq!(v.len(), answer.len());
        })
    });
    g.bench_function("get_miss", |b| {
        b.iter(|| {
            let v: Option<Vec<u8>> = redis::cmd("CACHE.GET")
                .arg("bench")
                .arg("never stored")
                .query(&mut con)
                .unwrap();
            assert!(v.is_none());
        })
    });
    g.bench_function("ping_baseline", |b| {
        b.iter(|| {
            let _: String = redis::cmd("PING").query(&mut con).unwrap();
        })
    });
    g.finish();
    let _ = server.kill();
    let _ = server.wait();
}

criterion_group!(benches, cache);
criterion_main!(benches);
