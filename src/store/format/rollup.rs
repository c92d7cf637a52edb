//! A persisted rollup (`state::rollup::Rollup`): version 1, bincode 2 in
//! the CRC frame of `frame.rs`, the version first so a reader refuses an
//! unknown one by number. The rollup covers the ledger through `seq`; a
//! node resumes it with entry `seq + 1`. Written by `store::rollups` as
//! `rollups/<seq>.rollup` (the last two kept), and under `--archive` next
//! to the ledger it was folded from.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::ledger::RunOutcomeV1;
use crate::state::rollup::{HoldMemo, Pair, Rollup, RunCell, RunTally, SpendCell};
use crate::state::run_report::Usage;
use crate::state::RunOutcome;

pub const ROLLUP_VERSION: u32 = 1;

/// A spend cell's figures, in `SpendCell`'s field order.
type SpendV1 = [u64; 9];
/// A run cell's figures: runs, succeeded, failed, unreported, then calls,
/// tokens and cost of all and of the successful runs.
type RunV1 = [u64; 10];

#[derive(Serialize, Deserialize)]
struct RollupV1 {
    version: u32,
    seq: u64,
    scopes: Vec<String>,
    models: Vec<String>,
    /// Per scope: (hour, model, here, all).
    spend: TableV1<SpendV1>,
    runs: TableV1<RunV1>,
    /// (hold id, scope, model, run, hold seq), sorted by id.
    holds: Vec<(String, u32, u32, Option<u64>, u64)>,
    expired: Vec<(u64, String, u64)>,
    /// (run id, run number), sorted by id.
    open: Vec<(String, u64)>,
    /// (run number, scope, by model, ended, holds), sorted by number.
    tallies: Vec<TallyV1>,
    next_run: u64,
}

#[derive(Serialize, Deserialize)]
struct TallyV1 {
    run: u64,
    scope: Option<u32>,
    by_model: Vec<(u32, [u64; 3])>,
    ended: Option<(u32, Option<RunOutcomeV1>)>,
    holds: u32,
}

fn spend_v1(c: &SpendCell) -> SpendV1 {
    [
        c.requests,
        c.input,
        c.output,
        c.cached,
        c.cache_write,
        c.cost,
        c.saved,
        c.grants,
        c.entries,
    ]
}

fn spend_of(v: &SpendV1) -> SpendCell {
    let [requests, input, output, cached, cache_write, cost, saved, grants, entries] = *v;
    SpendCell {
        entries,
        requests,
        input,
        output,
        cached,
        cache_write,
        cost,
        saved,
        grants,
    }
}

fn run_v1(c: &RunCell) -> RunV1 {
    let (u, s) = (c.usage, c.success_usage);
    [
        c.runs,
        c.succeeded,
        c.failed,
        c.unreported,
        u.calls,
        u.tokens,
        u.cost,
        s.calls,
        s.tokens,
        s.cost,
    ]
}

fn run_of(v: &RunV1) -> RunCell {
    let [runs, succeeded, failed, unreported, calls, tokens, cost, s_calls, s_tokens, s_cost] = *v;
    RunCell {
        runs,
        succeeded,
        failed,
        unreported,
        usage: Usage {
            calls,
            tokens,
            cost,
        },
        success_usage: Usage {
            calls: s_calls,
            tokens: s_tokens,
            cost: s_cost,
        },
    }
}

fn outcome_v1(o: RunOutcome) -> RunOutcomeV1 {
    match o {
        RunOutcome::Success => RunOutcomeV1::Success,
        RunOutcome::Failure => RunOutcomeV1::Failure,
    }
}

fn outcome_of(o: RunOutcomeV1) -> RunOutcome {
    match o {
        RunOutcomeV1::Success => RunOutcome::Success,
        RunOutcomeV1::Failure => RunOutcome::Failure,
    }
}

/// A table of cells per scope, as stored: (hour, model, here, all).
type TableV1<V> = Vec<Vec<(u32, u32, V, V)>>;
type Table<T> = Vec<BTreeMap<(u32, u32), Pair<T>>>;

fn table_v1<T, V>(t: &Table<T>, v1: fn(&T) -> V) -> TableV1<V> {
    (t.iter())
        .map(|cells| {
            (cells.iter())
                .map(|(&(h, m), p)| (h, m, v1(&p.here), v1(&p.all)))
                .collect()
        })
        .collect()
}

fn table_of<T, V>(t: TableV1<V>, of: fn(&V) -> T) -> Table<T> {
    (t.into_iter())
        .map(|cells| {
            (cells.into_iter())
                .map(|(h, m, here, all)| {
                    let p = Pair {
                        here: of(&here),
                        all: of(&all),
                    };
                    ((h, m), p)
                })
                .collect()
        })
        .collect()
}

/// The rollup's bytes (the same rollup gives the same bytes).
pub fn encode_rollup(r: &Rollup) -> Vec<u8> {
    let mut holds: Vec<_> = (r.holds.iter())
        .map(|(id, m)| (id.clone(), m.scope, m.model, m.run, m.seq))
        .collect();
    holds.sort();
    let mut open: Vec<_> = r.open.iter().map(|(id, n)| (id.clone(), *n)).collect();
    open.sort();
    let mut tallies: Vec<TallyV1> = (r.tallies.iter())
        .map(|(n, t)| TallyV1 {
            run: *n,
            scope: t.scope,
            by_model: (t.by_model.iter())
                .map(|(m, u)| (*m, [u.calls, u.tokens, u.cost]))
                .collect(),
            ended: t.ended.map(|(h, o)| (h, o.map(outcome_v1))),
            holds: t.holds,
        })
        .collect();
    tallies.sort_by_key(|t| t.run);
    let v = RollupV1 {
        version: ROLLUP_VERSION,
        seq: r.seq,
        scopes: r.scopes.clone(),
        models: r.models.clone(),
        spend: table_v1(&r.spend, spend_v1),
        runs: table_v1(&r.runs, run_v1),
        holds,
        expired: r.expired.iter().cloned().collect(),
        open,
        tallies,
        next_run: r.next_run,
    };
    crate::store::frame::encode(&v)
}

/// A rollup from its bytes: Err for a damaged file or an unknown version.
pub fn decode_rollup(bytes: &[u8]) -> Result<Rollup, String> {
    let version: u32 = crate::store::frame::decode_prefix(bytes)?;
    if version != ROLLUP_VERSION {
        return Err(format!(
            "rollup version {version} (this build reads {ROLLUP_VERSION})"
        ));
    }
    let v: RollupV1 = crate::store::frame::decode(bytes)?;
    let n = v.scopes.len();
    if v.spend.len() != n || v.runs.len() != n {
        return Err("rollup tables disagree on the number of scopes".into());
    }
    let mut r = Rollup {
        seq: v.seq,
        scopes: v.scopes,
        models: v.models,
        spend: table_of(v.spend, spend_of),
        runs: table_of(v.runs, run_of),
        holds: (v.holds.into_iter())
            .map(|(id, scope, model, run, seq)| {
                let m = HoldMemo {
                    scope,
                    model,
                    run,
                    seq,
                };
                (id, m)
            })
            .collect(),
        expired: v.expired.into_iter().collect::<VecDeque<_>>(),
        open: v.open.into_iter().collect(),
        tallies: (v.tallies.into_iter())
            .map(|t| {
                let tally = RunTally {
                    scope: t.scope,
                    by_model: (t.by_model.into_iter())
                        .map(|(m, [calls, tokens, cost])| {
                            (
                                m,
                                Usage {
                                    calls,
                                    tokens,
                                    cost,
                                },
                            )
                        })
                        .collect(),
                    ended: t.ended.map(|(h, o)| (h, o.map(outcome_of))),
                    holds: t.holds,
                };
                (t.run, tally)
            })
            .collect(),
        next_run: v.next_run,
        ..Rollup::default()
    };
    r.reindex();
    Ok(r)
}
