//! Writes a real ledger through the engine, spread over weeks: the
//! fixture of the report benchmarks (docs/BENCHMARKS.md, "Reports at any
//! size"). `cargo run --release --example ledger_gen -- <data-dir>
//! <entries> [days]`: RESERVE + COMMIT pairs (each in a run; a run ends
//! every 20 calls, one in three failing), a SPEND in every ten, over 4
//! orgs × 8 teams × 64 agents and 4 models, the clock moving evenly
//! through the last `days` (default 30) so the ledger's hours are those of
//! a month. Durability `none` (the figures, not the fsyncs, are what the
//! fixture is for); the rollups are folded and persisted as in `serve`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use spendb::embedded::{Options, Spendb};
use spendb::engine::Durability;
use spendb::state::price::Usage;
use spendb::state::{Command, ReserveArgs, RunOutcome};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: ledger_gen <data-dir> <entries> [days]");
        std::process::exit(2);
    }
    let dir = std::path::PathBuf::from(&args[1]);
    let entries: u64 = args[2].parse().expect("entries: a number");
    let days: u64 = args
        .get(3)
        .map_or(30, |d| d.parse().expect("days: a number"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let span = days * 86_400_000;
    let clock = Arc::new(AtomicU64::new(now - span));
    let tick = clock.clone();
    let mut options = Options::default();
    options.engine.durability = Durability::None;
    let db = Spendb::open_with_clock(
        &dir,
        options,
        Box::new(move || tick.load(Ordering::Relaxed)),
    )
    .expect("open");
    let first = db.recovered().last_seq;
    // Two entries a call, a tenth more for the SPENDs and run ends.
    let calls = entries * 10 / 22;
    let step = span / calls.max(1);
    let models = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "o3"];
    let started = std::time::Instant::now();
    let mut batch = Vec::with_capacity(2_048);
    for i in 0..calls {
        let scope = format!("org:{}/team:{}/agent:{}", i % 4, (i / 4) % 8, (i / 32) % 64);
        let model = models[(i % 4) as usize];
        let run = format!("run-{}", i / 20);
        let hold = format!("g{first}-{i}");
        batch.push(Command::Reserve(ReserveArgs {
            run: Some(run.clone()),
            ..ReserveArgs::new(&hold, &scope, model, 800 + i % 400, 200)
        }));
        batch.push(Command::Commit {
            hold,
            usage: Usage {
                input: 800 + i % 400,
                output: 100 + i % 100,
                ..Usage::default()
            },
        });
        if i % 10 == 9 {
            batch.push(Command::Spend {
                id: None,
                scope: scope.clone(),
                model: model.into(),
                usage: Usage {
                    input: 2_000,
                    output: 50,
                    ..Usage::default()
                },
                run: Some(run.clone()),
            });
        }
        if i % 20 == 19 {
            let outcome = match (i / 20) % 3 {
                0 => RunOutcome::Failure,
                _ => RunOutcome::Success,
            };
            batch.push(Command::RunEnd {
                run,
                outcome: Some(outcome),
            });
        }
        if batch.len() >= 2_000 {
            clock.fetch_add(step * (batch.len() as u64 / 2), Ordering::Relaxed);
            db.execute_batch(&batch);
            batch.clear();
        }
        if i % 1_000_000 == 0 && i > 0 {
            eprintln!("{i} calls, {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    db.execute_batch(&batch);
    db.close().expect("close");
    eprintln!(
        "ledger_gen: {calls} calls over {days} days in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
