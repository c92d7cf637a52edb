//! Snapshot layout 5: the state at a ledger position, as `[crc32][bincode 2
//! of (layout, state)]`. The state's parts in order: next seq, last time,
//! scopes (limits with their counters, held, spent, open holds, loop-guard
//! denials, savings), the hold table (string table, open holds, settled
//! holds in the order they ended), ID'd spends and the order they were
//! seen, prices, agent runs, alert rules and log, spend series. Keyed parts
//! are written sorted by key, so the same state gives the same bytes.
//!
//! Layout history: 1 (no number) and 2 (hold table as a string table and
//! records) are refused by number; 3 added the calendar limits' recent
//! usage. Layout 3 was first written by serde derives on the state's own
//! types (until issue #13); these types reproduce it byte for byte
//! (`tests/it/compat.rs` reads a data dir of that release). Layout 4 is
//! layout 3's bytes followed by the prices' maximum output tokens (model,
//! tokens), with a new meaning: rolling windows count open holds
//! from when they were made (issue #14). A layout 3 snapshot is read, its
//! models take the shipped table's maximum output tokens, and
//! its open holds are then counted in its rolling windows at its last time
//! (`State::count_open_holds_in_rolling_windows`); `ledger verify`
//! compares such a snapshot with the replay leaving rolling windows out.
//! Layout 5 (issue #15) appends a cluster node's grant lines; layout 4 is
//! read as a state without any.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use compact_str::CompactString;
use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ledger::{
    AlertEventV1, AlertRulesV1, DimsV1, GrantLineV1, LimitSpecV1, PriceV1, UsageV1,
};
use crate::state::alerts::{AlertRecord, Alerts, ScopeAlerts};
use crate::state::grant::GrantLine;
use crate::state::holds::HoldRecord;
use crate::state::limit::{Counter, Dims, Limit, Ring};
use crate::state::runs::{Run, Runs};
use crate::state::{
    Config, HoldStatus, HoldTable, Node, SeriesTotals, Settlement, SpendRecord, SpendSeries, State,
};
use crate::store::frame;

/// Written first, so a snapshot of another layout is refused by number
/// (recovery then falls back to an older one or to the whole ledger).
pub const SNAPSHOT_LAYOUT: u32 = 0x5350_4435;
/// Layout 4: layout 5 without the grant lines (issue #15); read as a node
/// without grants.
pub const SNAPSHOT_LAYOUT_4: u32 = 0x5350_4434;
/// The layout before rolling windows counted holds when made: read, then
/// brought to layout 4's meaning.
pub const SNAPSHOT_LAYOUT_3: u32 = 0x5350_4433;

/// The layout number a snapshot was written with.
pub fn layout(bytes: &[u8]) -> Result<u32, String> {
    frame::decode_prefix(bytes)
}

type Text<'a> = Cow<'a, str>;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RingV3 {
    width: u64,
    buckets: Vec<u64>,
    newest: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum CounterV3 {
    Period {
        start: u64,
        used: u64,
        recent: RingV3,
        since: u64,
    },
    Total {
        used: u64,
    },
    Rolling(RingV3),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct LimitV3 {
    spec: LimitSpecV1,
    counter: CounterV3,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct NodeV3 {
    limits: Vec<LimitV3>,
    held: DimsV1,
    spent: DimsV1,
    open_holds: u64,
    loop_denials: u64,
    saved: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SpendRecordV3<'a> {
    scope: Text<'a>,
    model: Text<'a>,
    usage: UsageV1,
    cost: u64,
    at: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunV3<'a> {
    scope: Option<Text<'a>>,
    steps: u64,
    denials: u64,
    recent: Cow<'a, VecDeque<u64>>,
    last_at: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ScopeAlertsV3<'a> {
    rules: AlertRulesV1<'a>,
    since: u64,
    fired: Cow<'a, BTreeMap<String, u64>>,
    minutes: Cow<'a, VecDeque<(u64, u64)>>,
    events: Cow<'a, VecDeque<u64>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct AlertRecordV3<'a> {
    id: u64,
    at: u64,
    event: AlertEventV1<'a>,
    delivered_at: Option<u64>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct SeriesTotalsV3 {
    requests: u64,
    tokens: u64,
    cost: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct SettlementV3 {
    usage: UsageV1,
    cost: u64,
    late: bool,
    at: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
enum HoldStatusV3 {
    Open,
    Committed(SettlementV3),
    Released { at: u64 },
    Expired { at: u64 },
}

/// One hold record as stored: (id, scope, model, ttl, input, output, cost,
/// created at, expires at, status).
type RecV3 = (
    CompactString,
    u32,
    u32,
    u32,
    u64,
    u64,
    u64,
    u64,
    u64,
    HoldStatusV3,
);

/// A map as stored: a length, then key and value pairs (the bytes of a
/// bincode map), written in key order.
type Pairs<K, V> = Vec<(K, V)>;

// ----- the state → the format ----------------------------------------------

fn ring(r: &Ring) -> RingV3 {
    RingV3 {
        width: r.width,
        buckets: r.buckets.clone(),
        newest: r.newest,
    }
}

fn node(n: &Node) -> NodeV3 {
    NodeV3 {
        limits: n
            .limits
            .iter()
            .map(|l| LimitV3 {
                spec: l.spec.into(),
                counter: match &l.counter {
                    Counter::Period {
                        start,
                        used,
                        recent,
                        since,
                    } => CounterV3::Period {
                        start: *start,
                        used: *used,
                        recent: ring(recent),
                        since: *since,
                    },
                    Counter::Total { used } => CounterV3::Total { used: *used },
                    Counter::Rolling(r) => CounterV3::Rolling(ring(r)),
                },
            })
            .collect(),
        held: DimsV1(n.held.0),
        spent: DimsV1(n.spent.0),
        open_holds: n.open_holds,
        loop_denials: n.loop_denials,
        saved: n.saved,
    }
}

fn status(s: HoldStatus) -> HoldStatusV3 {
    match s {
        HoldStatus::Open => HoldStatusV3::Open,
        HoldStatus::Committed(s) => HoldStatusV3::Committed(SettlementV3 {
            usage: s.usage.into(),
            cost: s.cost,
            late: s.late,
            at: s.at,
        }),
        HoldStatus::Released { at } => HoldStatusV3::Released { at },
        HoldStatus::Expired { at } => HoldStatusV3::Expired { at },
    }
}

fn sorted<'a, V, W>(
    m: impl Iterator<Item = (&'a String, V)>,
    f: impl Fn(V) -> W,
) -> Pairs<&'a str, W> {
    let mut v: Vec<(&str, W)> = m.map(|(k, x)| (k.as_str(), f(x))).collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    v
}

/// The hold table, streamed from the state's records.
struct HoldsOut<'a>(&'a HoldTable);

struct RecsOut<'a>(&'a HoldTable, Vec<u32>);

impl Serialize for RecsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.1.len()))?;
        for &slot in &self.1 {
            let r = self.0.record(slot);
            let rec: RecV3 = (
                r.id,
                r.scope,
                r.model,
                r.ttl,
                r.input,
                r.output,
                r.cost,
                r.created_at,
                r.expires_at,
                status(r.status),
            );
            seq.serialize_element(&rec)?;
        }
        seq.end()
    }
}

impl Serialize for HoldsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (open, settled) = self.0.snapshot_slots();
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(self.0.strings())?;
        t.serialize_element(&RecsOut(self.0, open))?;
        t.serialize_element(&RecsOut(self.0, settled))?;
        t.end()
    }
}

#[derive(Serialize)]
struct AlertsOut<'a> {
    scopes: Pairs<&'a str, ScopeAlertsV3<'a>>,
    log: Vec<AlertRecordV3<'a>>,
}

#[derive(Serialize)]
struct StateOut<'a> {
    next_seq: u64,
    last_ts: u64,
    nodes: Pairs<&'a str, NodeV3>,
    holds: HoldsOut<'a>,
    spends: Pairs<&'a str, SpendRecordV3<'a>>,
    spends_seen: &'a VecDeque<(u64, String)>,
    prices: Pairs<&'a str, PriceV1>,
    runs: Pairs<&'a str, RunV3<'a>>,
    alerts: AlertsOut<'a>,
    series: Pairs<&'a str, Pairs<&'a str, SeriesTotalsV3>>,
}

fn state_out(s: &State) -> StateOut<'_> {
    StateOut {
        next_seq: s.next_seq,
        last_ts: s.last_ts,
        nodes: sorted(s.nodes.iter(), node),
        holds: HoldsOut(&s.holds),
        spends: sorted(s.spends.iter(), |r: &SpendRecord| SpendRecordV3 {
            scope: Cow::Borrowed(&r.scope),
            model: Cow::Borrowed(&r.model),
            usage: r.usage.into(),
            cost: r.cost,
            at: r.at,
        }),
        spends_seen: s.spends_seen(),
        prices: sorted(s.prices.iter(), |p| PriceV1::from(*p)),
        runs: sorted(s.runs.runs.iter(), |r: &Run| RunV3 {
            scope: r.scope.as_deref().map(Cow::Borrowed),
            steps: r.steps,
            denials: r.denials,
            recent: Cow::Borrowed(&r.recent),
            last_at: r.last_at,
        }),
        alerts: AlertsOut {
            scopes: sorted(s.alerts.scopes.iter(), |a: &ScopeAlerts| ScopeAlertsV3 {
                rules: (&a.rules).into(),
                since: a.since,
                fired: Cow::Borrowed(&a.fired),
                minutes: Cow::Borrowed(&a.minutes),
                events: Cow::Borrowed(&a.events),
            }),
            log: s
                .alerts
                .log
                .iter()
                .map(|r| AlertRecordV3 {
                    id: r.id,
                    at: r.at,
                    event: (&r.event).into(),
                    delivered_at: r.delivered_at,
                })
                .collect(),
        },
        series: sorted(s.series.by_scope.iter(), |models: &BTreeMap<_, _>| {
            sorted(models.iter(), |t: &SeriesTotals| SeriesTotalsV3 {
                requests: t.requests,
                tokens: t.tokens,
                cost: t.cost,
            })
        }),
    }
}

/// Frames a state as a snapshot (for `Storage::save_snapshot`).
pub fn encode(state: &State) -> Vec<u8> {
    // Layout 4 appends the prices' maximum output tokens.
    let max_outputs: Pairs<&str, u64> = {
        let mut v: Vec<(&str, u64)> = (state.prices.iter())
            .filter_map(|(m, p)| p.max_output.map(|x| (m.as_str(), x)))
            .collect();
        v.sort_unstable();
        v
    };
    // Layout 5 appends cluster mode's grant lines, in key order.
    let grants: Vec<GrantLineV1> = state.grants.values().map(GrantLineV1::from).collect();
    frame::encode(&(SNAPSHOT_LAYOUT, state_out(state), max_outputs, grants))
}

// ----- the format → the state ----------------------------------------------

fn ring_in(r: RingV3) -> Ring {
    Ring {
        width: r.width,
        buckets: r.buckets,
        newest: r.newest,
    }
}

fn node_in(n: NodeV3) -> Node {
    Node {
        limits: n
            .limits
            .into_iter()
            .map(|l| Limit {
                spec: l.spec.into(),
                counter: match l.counter {
                    CounterV3::Period {
                        start,
                        used,
                        recent,
                        since,
                    } => Counter::Period {
                        start,
                        used,
                        recent: ring_in(recent),
                        since,
                    },
                    CounterV3::Total { used } => Counter::Total { used },
                    CounterV3::Rolling(r) => Counter::Rolling(ring_in(r)),
                },
            })
            .collect(),
        held: Dims(n.held.0),
        spent: Dims(n.spent.0),
        open_holds: n.open_holds,
        loop_denials: n.loop_denials,
        saved: n.saved,
    }
}

fn status_in(s: HoldStatusV3) -> HoldStatus {
    match s {
        HoldStatusV3::Open => HoldStatus::Open,
        HoldStatusV3::Committed(s) => HoldStatus::Committed(Settlement {
            usage: s.usage.into(),
            cost: s.cost,
            late: s.late,
            at: s.at,
        }),
        HoldStatusV3::Released { at } => HoldStatus::Released { at },
        HoldStatusV3::Expired { at } => HoldStatus::Expired { at },
    }
}

fn record_in(r: RecV3) -> HoldRecord {
    HoldRecord {
        id: r.0,
        scope: r.1,
        model: r.2,
        ttl: r.3,
        input: r.4,
        output: r.5,
        cost: r.6,
        created_at: r.7,
        expires_at: r.8,
        status: status_in(r.9),
    }
}

/// Record lists at least this long load on two threads: this one decodes
/// while another inserts (each insert into the id index misses the cache;
/// overlapped, loading takes the longer of the two instead of their sum).
const PIPELINE_MIN: usize = 100_000;
const PIPELINE_CHUNK: usize = 16_384;

/// Streams a list of records into the table (no intermediate list).
struct RecsInto<'a>(&'a mut HoldTable);

impl<'de> DeserializeSeed<'de> for RecsInto<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecsInto<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of hold records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(n) = seq.size_hint() {
            self.0.reserve_loading(n);
        }
        let big = seq.size_hint().is_some_and(|n| n >= PIPELINE_MIN);
        if !big {
            while let Some(rec) = seq.next_element::<RecV3>()? {
                let rec = record_in(rec);
                self.0.check_record(&rec).map_err(A::Error::custom)?;
                self.0.load_record(rec);
            }
            return Ok(());
        }
        // One consumer, in order: the same table as loading on one thread.
        let table = self.0;
        let strings = table.strings().len();
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<HoldRecord>>(4);
            let inserter = scope.spawn(move || {
                for chunk in rx {
                    for rec in chunk {
                        table.load_record(rec);
                    }
                }
            });
            let mut chunk = Vec::with_capacity(PIPELINE_CHUNK);
            let decoded = (|| {
                while let Some(rec) = seq.next_element::<RecV3>()? {
                    let rec = record_in(rec);
                    rec.check(strings).map_err(A::Error::custom)?;
                    chunk.push(rec);
                    if chunk.len() == PIPELINE_CHUNK {
                        let full =
                            std::mem::replace(&mut chunk, Vec::with_capacity(PIPELINE_CHUNK));
                        if tx.send(full).is_err() {
                            break; // the inserter panicked: join() reports it
                        }
                    }
                }
                Ok(())
            })();
            if !chunk.is_empty() {
                let _ = tx.send(chunk);
            }
            drop(tx);
            if let Err(panic) = inserter.join() {
                std::panic::resume_unwind(panic);
            }
            decoded
        })
    }
}

struct HoldsVisitor;

impl<'de> Visitor<'de> for HoldsVisitor {
    type Value = HoldTable;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a hold table: strings, open holds, settled holds")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HoldTable, A::Error> {
        let strings: Vec<Arc<str>> = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(0, &self))?;
        let mut t = HoldTable::with_strings(&strings).map_err(A::Error::custom)?;
        seq.next_element_seed(RecsInto(&mut t))?
            .ok_or_else(|| A::Error::invalid_length(1, &self))?;
        seq.next_element_seed(RecsInto(&mut t))?
            .ok_or_else(|| A::Error::invalid_length(2, &self))?;
        t.index_loaded();
        Ok(t)
    }
}

fn holds_in<'de, D: Deserializer<'de>>(d: D) -> Result<HoldTable, D::Error> {
    d.deserialize_tuple(3, HoldsVisitor)
}

#[derive(Deserialize)]
struct AlertsIn {
    scopes: Pairs<String, ScopeAlertsV3<'static>>,
    log: Vec<AlertRecordV3<'static>>,
}

#[derive(Deserialize)]
struct StateIn {
    next_seq: u64,
    last_ts: u64,
    nodes: Pairs<String, NodeV3>,
    #[serde(deserialize_with = "holds_in")]
    holds: HoldTable,
    spends: Pairs<String, SpendRecordV3<'static>>,
    spends_seen: VecDeque<(u64, String)>,
    prices: Pairs<String, PriceV1>,
    runs: Pairs<String, RunV3<'static>>,
    alerts: AlertsIn,
    series: Pairs<String, Pairs<String, SeriesTotalsV3>>,
}

fn state_in(s: StateIn, config: &Config) -> State {
    let mut state = State::new(config.clone());
    state.next_seq = s.next_seq;
    state.last_ts = s.last_ts;
    state.nodes = s.nodes.into_iter().map(|(k, n)| (k, node_in(n))).collect();
    state.holds = s.holds;
    state.spends = s
        .spends
        .into_iter()
        .map(|(k, r)| {
            let r = SpendRecord {
                scope: r.scope.into_owned(),
                model: r.model.into_owned(),
                usage: r.usage.into(),
                cost: r.cost,
                at: r.at,
            };
            (k, r)
        })
        .collect();
    state.set_spends_seen(s.spends_seen);
    state.prices = s.prices.into_iter().map(|(k, p)| (k, p.into())).collect();
    state.runs = Runs::from_runs(s.runs.into_iter().map(|(k, r)| {
        let run = Run {
            scope: r.scope.map(Cow::into_owned),
            steps: r.steps,
            denials: r.denials,
            recent: r.recent.into_owned(),
            last_at: r.last_at,
        };
        (k, run)
    }));
    state.alerts = Alerts {
        scopes: s
            .alerts
            .scopes
            .into_iter()
            .map(|(k, a)| {
                let a = ScopeAlerts {
                    rules: a.rules.into(),
                    since: a.since,
                    fired: a.fired.into_owned(),
                    minutes: a.minutes.into_owned(),
                    events: a.events.into_owned(),
                };
                (k, a)
            })
            .collect(),
        log: s
            .alerts
            .log
            .into_iter()
            .map(|r| AlertRecord {
                id: r.id,
                at: r.at,
                event: r.event.into(),
                delivered_at: r.delivered_at,
            })
            .collect(),
    };
    state.series = SpendSeries {
        by_scope: s
            .series
            .into_iter()
            .map(|(scope, models)| {
                let models = models
                    .into_iter()
                    .map(|(m, t)| {
                        let t = SeriesTotals {
                            requests: t.requests,
                            tokens: t.tokens,
                            cost: t.cost,
                        };
                        (m, t)
                    })
                    .collect();
                (scope, models)
            })
            .collect(),
    };
    state
}

/// Reads a snapshot stored at ledger position `seq`: refused when its
/// layout is not this build's, its CRC fails, or it holds another position.
pub fn decode(seq: u64, bytes: &[u8], config: &Config) -> Result<State, String> {
    let layout = layout(bytes)?;
    if ![SNAPSHOT_LAYOUT, SNAPSHOT_LAYOUT_4, SNAPSHOT_LAYOUT_3].contains(&layout) {
        return Err(format!(
            "snapshot layout {layout:#x}, this build reads {SNAPSHOT_LAYOUT:#x}, \
             {SNAPSHOT_LAYOUT_4:#x} and {SNAPSHOT_LAYOUT_3:#x}"
        ));
    }
    let mut grants = Vec::new();
    let (s, max_outputs) = if layout == SNAPSHOT_LAYOUT_3 {
        // Before maximum output tokens: the shipped table's, for its models.
        let (_, s): (u32, StateIn) = frame::decode(bytes)?;
        let shipped = crate::state::price::default_prices();
        let m = (s.prices.iter())
            .filter_map(|(model, _)| Some((model.clone(), shipped.get(model)?.max_output?)))
            .collect();
        (s, m)
    } else if layout == SNAPSHOT_LAYOUT_4 {
        let (_, s, m): (u32, StateIn, Pairs<String, u64>) = frame::decode(bytes)?;
        (s, m)
    } else {
        let (_, s, m, g): (u32, StateIn, Pairs<String, u64>, Vec<GrantLineV1<'static>>) =
            frame::decode(bytes)?;
        grants = g;
        (s, m)
    };
    if s.next_seq != seq + 1 {
        return Err(format!(
            "snapshot stored at {seq} holds the state at {}",
            s.next_seq - 1
        ));
    }
    let mut state = state_in(s, config);
    for (model, max) in max_outputs {
        if let Some(p) = state.prices.get_mut(&model) {
            p.max_output = Some(max);
        }
    }
    for g in grants {
        let line = GrantLine::from(g);
        state.grants.insert(line.key(), line);
    }
    if layout == SNAPSHOT_LAYOUT_3 {
        let now = state.last_ts;
        state.count_open_holds_in_rolling_windows(now);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Hold;

    #[test]
    fn a_layout_3_snapshot_counts_its_open_holds_in_rolling_windows() {
        use crate::state::limit::{Counter, Ring, Window};
        use crate::state::{Command, ReserveArgs};
        let config = Config::default();
        let mut st = State::new(config.clone());
        let mut out = Vec::new();
        let t0 = 1_795_305_600_000;
        let budget = Command::BudgetSet {
            scope: "org:a".into(),
            limits: vec![crate::state::limit::LimitSpec {
                dim: crate::state::limit::Dim::Requests,
                window: Window::Rolling(60_000),
                amount: 10,
            }],
        };
        st.apply(t0, &budget, &mut out);
        let reserve = Command::Reserve(ReserveArgs::new(
            "h",
            "org:a/agent:x",
            "gpt-4o",
            1,
            crate::state::OutputAsk::Tokens(1),
        ));
        st.apply(t0 + 1_000, &reserve, &mut out);
        let used = |s: &State| s.nodes.get("org:a").unwrap().limits[0].used(t0 + 2_000);
        assert_eq!(used(&st), 1);
        // What the release before issue #14 wrote: the hold open, the window
        // empty (it counted holds when settled).
        let mut old = st.clone();
        old.nodes.get_mut("org:a").unwrap().limits[0].counter = Counter::Rolling(Ring::new(60_000));
        let bytes = frame::encode(&(SNAPSHOT_LAYOUT_3, state_out(&old)));
        assert_eq!(layout(&bytes).unwrap(), SNAPSHOT_LAYOUT_3);
        let back = decode(st.next_seq - 1, &bytes, &config).unwrap();
        assert_eq!(used(&back), 1, "the open hold counts in the window again");
        // Another layout is refused by number.
        let other = frame::encode(&(0x5350_4432u32, state_out(&st)));
        assert!(decode(st.next_seq - 1, &other, &config)
            .unwrap_err()
            .contains("layout 0x53504432"));
    }

    #[test]
    fn idd_spends_are_forgotten_after_a_snapshot_as_they_would_have_been() {
        use crate::state::price::Usage;
        use crate::state::Command;
        let config = Config::default();
        let mut st = State::new(config.clone());
        let mut out = Vec::new();
        let t0 = 1_795_305_600_000;
        for (i, id) in ["s1", "s2"].iter().enumerate() {
            let spend = Command::Spend {
                run: None,
                scope: "org:a".into(),
                model: "gpt-4o".into(),
                usage: Usage {
                    input: 10,
                    output: 1,
                    ..Usage::default()
                },
                id: Some(id.to_string()),
            };
            st.apply(t0 + i as u64 * 60_000, &spend, &mut out);
        }
        let seq = st.next_seq - 1;
        let mut back = decode(seq, &encode(&st), &config).unwrap();
        assert_eq!(back.spends_seen(), st.spends_seen());
        assert_eq!(back.spends.len(), 2);
        // Past the retention of the first only: it alone is forgotten.
        let t = t0 + config.id_retention_ms + 30_000;
        back.tick(t, &mut out);
        st.tick(t, &mut out);
        assert!(!back.spends.contains_key("s1") && back.spends.contains_key("s2"));
        assert_eq!(back.spends_seen(), st.spends_seen());
    }

    /// The hold table as the snapshot reads it.
    #[derive(Deserialize)]
    struct HoldsIn(#[serde(deserialize_with = "holds_in")] HoldTable);

    fn open(scope: &str, expires_at: u64) -> Hold {
        crate::state::holds::open_hold_for_tests(scope, expires_at)
    }

    #[test]
    fn a_snapshot_round_trip_keeps_every_hold_and_status() {
        let mut t = HoldTable::default();
        t.insert("o", open("org:x/team:t", 50));
        t.insert("c", open("org:x", 60));
        t.set_status("c", HoldStatus::Expired { at: 60 });
        let bytes =
            bincode::serde::encode_to_vec(HoldsOut(&t), bincode::config::standard()).unwrap();
        let (HoldsIn(back), _) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back.get("o"), t.get("o"));
        assert_eq!(back.get("c"), t.get("c"));
        assert_eq!(back.open_count(), 1);
        back.check_expiry_index().unwrap();
    }

    #[test]
    fn a_table_past_the_pipeline_size_loads_the_same_on_two_threads() {
        // Above PIPELINE_MIN records the decode and the inserts run on two
        // threads: the result must be the same table, in the same order.
        let mut t = HoldTable::default();
        let n = PIPELINE_MIN as u64 + 3 * PIPELINE_CHUNK as u64 / 2;
        for i in 0..n {
            let id = format!("h{i}");
            t.insert(
                &id,
                open(["org:a", "org:b/team:c"][i as usize % 2], 1000 + i),
            );
            match i % 3 {
                0 => t.set_status(&id, HoldStatus::Released { at: i }),
                1 => t.set_status(&id, HoldStatus::Expired { at: i }),
                _ => {}
            }
        }
        let bytes =
            bincode::serde::encode_to_vec(HoldsOut(&t), bincode::config::standard()).unwrap();
        let (HoldsIn(back), _) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!((back.len(), back.open_count()), (t.len(), t.open_count()));
        for (id, h) in t.iter() {
            assert_eq!(back.get(id).as_ref(), Some(&h), "{id}");
        }
        back.check_expiry_index().unwrap();
        // Settled holds keep the order they ended in (retention forgets
        // the oldest first): forgetting up to the same time leaves the same.
        let (mut a, mut b) = (t.clone(), back);
        a.forget_ended(n / 2);
        b.forget_ended(n / 2);
        assert_eq!((a.len(), a.open_count()), (b.len(), b.open_count()));
        assert!(a.iter().all(|(id, h)| b.get(id).as_ref() == Some(&h)));
        // A damaged record list is refused, not half-loaded silently.
        let cut = &bytes[..bytes.len() - 7];
        assert!(
            bincode::serde::decode_from_slice::<HoldsIn, _>(cut, bincode::config::standard())
                .is_err()
        );
    }

    #[test]
    fn a_layout_5_snapshot_keeps_the_grant_lines_and_layout_4_reads_without() {
        use crate::state::grant::ClusterRules;
        use crate::state::limit::{Dim, LimitSpec, Window};
        let config = Config {
            cluster: Some(ClusterRules::default()),
            ..Config::default()
        };
        let mut st = State::new(config.clone());
        let line = GrantLine {
            scope: "org:a".into(),
            spec: LimitSpec {
                dim: Dim::Tokens,
                window: Window::Total,
                amount: 1_000,
            },
            period: 0,
            epoch: 2,
            base: 5,
            granted: 300,
            reported: 100,
            u_max: 50,
        };
        st.grant_confirm(1_000, line.clone(), &mut Vec::new());
        let bytes = encode(&st);
        let back = decode(st.next_seq - 1, &bytes, &config).unwrap();
        assert_eq!(back.grants.get(&line.key()), Some(&line));
        assert_eq!(back.digest(), st.digest());
        // The layout before: the same state without its lines.
        let max_outputs: Pairs<&str, u64> = Vec::new();
        let old = frame::encode(&(SNAPSHOT_LAYOUT_4, state_out(&st), max_outputs));
        let back = decode(st.next_seq - 1, &old, &config).unwrap();
        assert!(back.grants.is_empty());
    }
}
