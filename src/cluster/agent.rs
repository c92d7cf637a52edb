//! The cluster agent's decisions (docs/CLUSTER.md, "A node"): what a node
//! does with the global store on each tick and when a RESERVE is short —
//! registration, keepalives, refills sized from the recent rate, reports,
//! giving idle room back, reclaiming dead nodes' grants, and the budget and
//! price definitions every node applies from the store. Its thread and its
//! link to the engine are `crate::node`'s; this file reads no clock (time is
//! an argument) and reaches the engine only through [`Local`], so it runs
//! on `MemStore` as well as on etcd.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::escrow::{self, segment, unsegment, EscrowConfig, LocalGrant, Node, PREFIX};
use super::kv::{GlobalStore, KvError, Op, Rev};
use super::rolling::{self, Took};
use crate::state::alerts::{AlertRules, RunawayRule, SpikeRule};
use crate::state::grant::{self, GrantLine, GrantUse, PoolView};
use crate::state::limit::{Blocker, Dim, LimitSpec, Window};
use crate::state::outcome::Denied;
use crate::state::Command;

/// The engine, as the agent sees it.
pub trait Local {
    /// Every global limit's line with the node's use of it now.
    fn uses(&self) -> Result<Vec<GrantUse>, String>;
    /// Records a line (durably) as the store confirmed it.
    fn confirm(&self, line: GrantLine) -> Result<(), String>;
    /// Lowers a line to the node's use plus `keep`, durably, before the
    /// rest is given back: the lowered line, None if nothing to give.
    fn lower(&self, key: &str, keep: u64) -> Result<Option<GrantLine>, String>;
    /// Applies a definition read from the store, on this node only.
    fn define(&self, cmd: Command) -> Result<(), String>;
    /// Tells the rules whether the node is cut off from the store (it may
    /// then use its partition allowance).
    fn cut_off(&self, yes: bool) -> Result<(), String>;
}

/// The agent's timing and sizing.
#[derive(Clone, Copy, Debug)]
pub struct AgentConfig {
    pub lease_ttl_ms: u64,
    /// A node asks for room it expects to use in this long (at its recent
    /// rate), at most an eighth of the limit.
    pub horizon_ms: u64,
    /// Reports usage the store has not seen at least this often.
    pub report_every_ms: u64,
    /// Looks for low pools to give idle room back to this often.
    pub relieve_every_ms: u64,
    /// Reads the definitions this often (`budget/`, `price/`, `alerts/`).
    pub definitions_every_ms: u64,
}

impl AgentConfig {
    pub fn new(lease_ttl_ms: u64) -> AgentConfig {
        AgentConfig {
            lease_ttl_ms,
            horizon_ms: 10_000,
            report_every_ms: 5_000,
            relieve_every_ms: 5_000,
            definitions_every_ms: 2_000,
        }
    }
}

/// What the agent has done, for `/metrics` and `/v1/cluster`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AgentStats {
    pub registrations: u64,
    pub refills: u64,
    pub room_granted: u64,
    pub reports: u64,
    pub give_backs: u64,
    /// Recalls of idle room this node sent (its pool was dry).
    pub recalls: u64,
    /// Grants an idle node lowered its declared allowance of to 0.
    pub undeclared: u64,
    pub reclaims: u64,
    /// Usage booked beyond this node's grants (SPEND, a COMMIT past its
    /// hold or after it expired) that it charged to the shared pools.
    pub absorbed: u64,
    /// RESERVEs that waited for the store (room or a report).
    pub waits: u64,
    pub store_errors: u64,
    pub definitions_applied: u64,
}

/// A definition as the store keeps it (`budget/<scope>`, `price/<model>`,
/// `alerts/<scope>`):
/// JSON, readable with `etcdctl get --prefix /spendb/v1/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefinitionV1 {
    Budget {
        limits: Vec<LimitV1>,
    },
    Price {
        input: u64,
        output: u64,
        cached: Option<u64>,
        cache_write: Option<u64>,
        max_output: Option<u64>,
    },
    /// A scope's alert rules (`alerts/<scope>`): every node checks them, and
    /// a threshold's alert is delivered once (`cluster::alerts`).
    AlertRules {
        thresholds: Vec<u32>,
        forecast: bool,
        spike: Option<SpikeV1>,
        runaway: Option<RunawayV1>,
        webhook: Option<String>,
    },
}

/// A spike rule as the store keeps it (`dim` by its name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpikeV1 {
    pub dim: String,
    pub factor: u32,
    pub window_ms: u64,
    pub min: u64,
}

/// A runaway rule as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunawayV1 {
    pub events: u32,
    pub window_ms: u64,
}

impl DefinitionV1 {
    fn of_rules(r: &AlertRules) -> DefinitionV1 {
        DefinitionV1::AlertRules {
            thresholds: r.thresholds.clone(),
            forecast: r.forecast,
            spike: r.spike.map(|s| SpikeV1 {
                dim: s.dim.name().to_string(),
                factor: s.factor,
                window_ms: s.window_ms,
                min: s.min,
            }),
            runaway: r.runaway.map(|r| RunawayV1 {
                events: r.events,
                window_ms: r.window_ms,
            }),
            webhook: r.webhook.clone(),
        }
    }
}

/// A limit: its dimension, its amount in the dimension's unit (nano-USD for
/// COST) and its window as BUDGET.SET writes it (`PER DAY TZ Europe/Berlin`,
/// `ROLLING 1m`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitV1 {
    pub dim: String,
    pub amount: u64,
    pub window: String,
}

impl From<&LimitSpec> for LimitV1 {
    fn from(l: &LimitSpec) -> LimitV1 {
        LimitV1 {
            dim: l.dim.name().to_string(),
            amount: l.amount,
            window: l.window.describe(),
        }
    }
}

impl LimitV1 {
    fn spec(&self) -> Result<LimitSpec, String> {
        let w: Vec<&str> = self.window.split_whitespace().collect();
        let (kind, period, tz) = match w.as_slice() {
            [k, p] => (*k, *p, None),
            [k, p, "TZ", z] => (*k, *p, Some(*z)),
            _ => return Err(format!("window '{}'", self.window)),
        };
        let dim = Dim::parse(&self.dim).ok_or_else(|| format!("dimension '{}'", self.dim))?;
        // The amount is in the dimension's unit already: parse the window
        // with a placeholder amount.
        let spec = LimitSpec::from_words_in(dim.name(), "1", kind, period, tz)?;
        Ok(LimitSpec {
            amount: self.amount,
            ..spec
        })
    }
}

fn budget_key(scope: &str) -> String {
    format!("{PREFIX}budget/{}", segment(scope))
}

fn price_key(model: &str) -> String {
    format!("{PREFIX}price/{}", segment(model))
}

fn alerts_key(scope: &str) -> String {
    format!("{PREFIX}alerts/{}", segment(scope))
}

fn definitions_version_key() -> String {
    format!("{PREFIX}definitions")
}

/// The store's copy of a definition command: its key and value (None to
/// delete it); None for a command that is no definition.
pub fn definition(cmd: &Command) -> Option<(String, Option<DefinitionV1>)> {
    Some(match cmd {
        Command::BudgetSet { scope, limits } => (
            budget_key(scope),
            Some(DefinitionV1::Budget {
                limits: limits.iter().map(LimitV1::from).collect(),
            }),
        ),
        Command::BudgetDel { scope } => (budget_key(scope), None),
        Command::PriceSet {
            model,
            input,
            output,
            cached,
            cache_write,
            max_output,
        } => (
            price_key(model),
            Some(DefinitionV1::Price {
                input: *input,
                output: *output,
                cached: *cached,
                cache_write: *cache_write,
                max_output: *max_output,
            }),
        ),
        // Rules the state would refuse are not written to the store: this
        // node refuses them and no other node sees them.
        Command::AlertRulesSet { scope, rules } => (
            alerts_key(scope),
            match rules.clone().map(AlertRules::validate).transpose() {
                Ok(r) => r.as_ref().map(DefinitionV1::of_rules),
                Err(_) => return None,
            },
        ),
        _ => return None,
    })
}

/// The command a stored definition stands for.
fn command_of(key: &str, def: Option<&DefinitionV1>) -> Result<Command, String> {
    let rest = key.strip_prefix(PREFIX).unwrap_or(key);
    match (rest.split_once('/'), def) {
        (Some(("budget", scope)), Some(DefinitionV1::Budget { limits })) => {
            Ok(Command::BudgetSet {
                scope: unsegment(scope),
                limits: limits.iter().map(LimitV1::spec).collect::<Result<_, _>>()?,
            })
        }
        (Some(("budget", scope)), None) => Ok(Command::BudgetDel {
            scope: unsegment(scope),
        }),
        (
            Some(("price", model)),
            Some(DefinitionV1::Price {
                input,
                output,
                cached,
                cache_write,
                max_output,
            }),
        ) => Ok(Command::PriceSet {
            model: unsegment(model),
            input: *input,
            output: *output,
            cached: *cached,
            cache_write: *cache_write,
            max_output: *max_output,
        }),
        (
            Some(("alerts", scope)),
            Some(DefinitionV1::AlertRules {
                thresholds,
                forecast,
                spike,
                runaway,
                webhook,
            }),
        ) => Ok(Command::AlertRulesSet {
            scope: unsegment(scope),
            rules: Some(AlertRules {
                thresholds: thresholds.clone(),
                forecast: *forecast,
                spike: match spike {
                    Some(s) => Some(SpikeRule {
                        dim: Dim::parse(&s.dim)
                            .ok_or_else(|| format!("{key}: dimension '{}'", s.dim))?,
                        factor: s.factor,
                        window_ms: s.window_ms,
                        min: s.min,
                    }),
                    None => None,
                },
                runaway: runaway.as_ref().map(|r| RunawayRule {
                    events: r.events,
                    window_ms: r.window_ms,
                }),
                webhook: webhook.clone(),
            }),
        }),
        (Some(("alerts", scope)), None) => Ok(Command::AlertRulesSet {
            scope: unsegment(scope),
            rules: None,
        }),
        _ => Err(format!("{key}: not a definition spendb wrote")),
    }
}

/// Writes a definition to the store (the node applies it locally after):
/// the budget's current pools take its new amounts.
/// The keys a node watches (`watched`): the definitions' version key, and
/// every recall (a prefix).
pub fn watched_keys() -> [(String, bool); 2] {
    [
        (definitions_version_key(), false),
        (format!("{PREFIX}recall/"), true),
    ]
}

pub fn publish(
    store: &mut dyn GlobalStore,
    cmd: &Command,
    now: u64,
) -> Result<Option<Rev>, KvError> {
    let Some((key, def)) = definition(cmd) else {
        return Ok(None);
    };
    let op = match &def {
        Some(d) => Op::Put {
            key: key.clone(),
            value: serde_json::to_vec(d).expect("definitions encode"),
            lease: None,
        },
        None => Op::Delete(key.clone()),
    };
    // The version key moves with every definition: nodes read it, and
    // read the definitions only when it has moved.
    let version = Op::Put {
        key: definitions_version_key(),
        value: b"{}".to_vec(),
        lease: None,
    };
    store.txn(&[], &[op, version])?;
    if let Command::BudgetSet { scope, limits } = cmd {
        for l in limits {
            if let Window::Rolling(_) = l.window {
                rolling::set_limit(store, &rolling::pool_name_of(scope, l), l.amount)?;
            } else if let Some((k, _)) = crate::state::grant::key(scope, l, now) {
                escrow::set_limit(store, &k, l.amount)?;
            }
        }
    }
    Ok(Some(store.revision()?))
}

/// A RESERVE short of room or of a report: the key of the global limit,
/// and how much it lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortage {
    pub key: String,
    pub by: u64,
    /// It lacks a report (of `by` more than the node reported), not room.
    pub report: bool,
    /// What the RESERVE asks of the limit (in its unit).
    pub amount: u64,
}

impl Shortage {
    /// What a RESERVE denied for want of this node's grant (`grant`) or of
    /// a report (`unreported`) at `now` asks the store for: its limit's
    /// line now, what it lacks, and what it asks of the limit in all (what
    /// it lacks plus what was left). None when the limit has no line.
    pub fn of(denied: &Denied, now: u64) -> Option<Shortage> {
        let (key, _) = grant::key(&denied.scope, &denied.limit, now)?;
        Some(Shortage {
            key,
            by: denied.short_by,
            report: denied.reason == Blocker::Unreported,
            amount: (denied.short_by).saturating_add(denied.remaining.max(0) as u64),
        })
    }
}

/// A limit whose use has not moved for this long, all of it reported, has
/// its grant declare no unreported allowance.
const IDLE_MS: u64 = 10_000;

/// How often the first live node looks for dead nodes' grants (a dead
/// node's room is back within this of its lease running out).
const JANITOR_EVERY_MS: u64 = 2_000;

/// How long a recall of a rolling pool's idle room is waited on: another
/// RESERVE short of the same pool meanwhile does not wait.
pub const RECALL_LIFE_MS: u64 = 3_000;

/// How often a watched agent reads the definitions anyway.
const WATCHED_DEFINITIONS_EVERY_MS: u64 = 30_000;

/// How many times a refill is tried again when another node's write moved
/// the pool under its guard (each try reads the pool afresh).
const MAX_CONFLICTS: usize = 32;

/// The agent: the node's registration and grants (`escrow::Node`), and
/// what it measures.
pub struct Agent {
    pub node: Node,
    pub config: AgentConfig,
    pub registered: bool,
    pub reachable: bool,
    /// The definitions in the store have been read and applied since this
    /// agent started: until then the node must not grant (a node restarted
    /// without its disk knows no budgets; one with its disk may have missed
    /// some).
    pub definitions_loaded: bool,
    pub stats: AgentStats,
    /// Keys whose pool exists and which this registration has joined.
    joined: BTreeSet<String>,
    /// Per key: the use last seen and an EWMA of its rate (per second).
    rates: BTreeMap<String, (u64, f64)>,
    /// Per key: since when its use has not moved.
    idle_since: BTreeMap<String, u64>,
    last_tick: u64,
    last_keepalive: u64,
    last_report: u64,
    last_relieve: u64,
    last_janitor: u64,
    /// The live nodes at the last janitor round, by name.
    live: Vec<String>,
    /// The last janitor round left a dead node's grant to reclaim.
    janitor_pending: bool,
    last_definitions: u64,
    /// The store revision each definition key was applied at.
    applied: BTreeMap<String, Rev>,
    /// The definitions' version key's revision when last read.
    definitions_seen: Rev,
    /// Keys whose pool was last seen low: recalls of them are looked for
    /// every round.
    low: BTreeSet<String>,
    /// The revision of the last recall of each key this node answered.
    recalls_served: BTreeMap<String, Rev>,
    /// Ended rolling lines whose unused room this registration gave back.
    returned: BTreeSet<String>,
    /// Rolling pools found dry (by this node, or by another that recalled
    /// idle room of them), and until when a round does not ask them again
    /// (a RESERVE still does).
    dry_until: BTreeMap<String, u64>,
    /// When this node last recalled idle room of each rolling line (a
    /// pool's grant period): the recalls still out.
    recalled: BTreeMap<String, u64>,
    /// The grant period each rolling pool's rate was last observed in.
    rate_periods: BTreeMap<String, u64>,
    /// What the rules were last told of `reachable` (`Local::cut_off`).
    told_cut_off: bool,
    /// Per line key (a rolling pool's name): when its last refill was, and
    /// what it got.
    last_refill: BTreeMap<String, (u64, u64)>,
    /// A watch on the store tells this agent of recalls and definitions
    /// (`watched`): it then polls for neither (but for a slow look at the
    /// definitions, in case a watch is silently stuck).
    watching: bool,
    /// Watched changes to act on in the next round: recalls by limit, and
    /// whether the definitions moved.
    recalls_due: BTreeSet<String>,
    definitions_due: bool,
    /// A watch (re)started: every recall is read once.
    recalls_rescan: bool,
    /// Per line key: usage booked outside the rules past the line's
    /// grant, not yet charged to its pool (`absorb`).
    unabsorbed: BTreeMap<String, u64>,
}

/// What asking the store did for a RESERVE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Room granted or usage reported: decide it again.
    Moved,
    /// The pool is dry. `recalled`: idle room was recalled for this
    /// RESERVE, ask again shortly. A rolling window's pool says when its
    /// oldest charge ages out (ms).
    Dry {
        frees_at: Option<u64>,
        recalled: bool,
    },
    /// Nothing to be had.
    Nothing,
}

fn local_grant(u: &GrantUse) -> LocalGrant {
    LocalGrant {
        epoch: u.line.epoch,
        granted: u.line.granted,
        used: u.used.max(u.line.reported),
        reported: u.line.reported,
        held: u.held,
    }
}

impl Agent {
    pub fn new(name: &str, config: AgentConfig) -> Agent {
        let escrow = EscrowConfig {
            // Per limit (a twentieth of its amount, `GrantUse::u_max`),
            // set before each call: what a grant this node begins declares.
            u_max: 0,
            chunk: u64::MAX,
            lease_ttl_ms: config.lease_ttl_ms,
        };
        Agent {
            node: Node::new(name, escrow),
            config,
            registered: false,
            reachable: true,
            definitions_loaded: false,
            stats: AgentStats::default(),
            joined: BTreeSet::new(),
            rates: BTreeMap::new(),
            idle_since: BTreeMap::new(),
            last_tick: 0,
            last_keepalive: 0,
            last_report: 0,
            last_relieve: 0,
            last_janitor: 0,
            live: Vec::new(),
            janitor_pending: true,
            last_definitions: 0,
            applied: BTreeMap::new(),
            definitions_seen: 0,
            low: BTreeSet::new(),
            recalls_served: BTreeMap::new(),
            returned: BTreeSet::new(),
            dry_until: BTreeMap::new(),
            recalled: BTreeMap::new(),
            rate_periods: BTreeMap::new(),
            told_cut_off: false,
            last_refill: BTreeMap::new(),
            watching: false,
            recalls_due: BTreeSet::new(),
            definitions_due: false,
            recalls_rescan: false,
            unabsorbed: BTreeMap::new(),
        }
    }

    /// What the store says of each of `keys` beyond this node's own use
    /// (`PoolView`), for a BALANCE or BUDGET.GET in cluster mode: two reads
    /// a limit (its pool, its grants).
    pub fn view(
        &mut self,
        store: &mut dyn GlobalStore,
        keys: &[String],
    ) -> Result<BTreeMap<String, PoolView>, KvError> {
        if !self.reachable {
            return Err(KvError::Unavailable(
                "the last request to it failed; the agent's rounds retry".into(),
            ));
        }
        let mut out = BTreeMap::new();
        for key in keys {
            let (pool, grants) = escrow::read_limit(store, key)?;
            let mut v = PoolView {
                closed: pool.consumed.saturating_add(pool.presumed),
                ..PoolView::default()
            };
            for (node, g) in grants {
                let live = g.presumed.is_none();
                if node == self.node.name {
                    v.mine_reclaimed = !live;
                } else if live {
                    v.others_taken = v.others_taken.saturating_add(g.reported);
                    v.others_held = v.others_held.saturating_add(g.held.min(g.reported));
                }
                if live {
                    v.nodes.push(node);
                }
            }
            out.insert(key.clone(), v);
        }
        Ok(out)
    }

    /// Usage booked outside the rules past this node's grants that it has
    /// not charged to the pools yet, in all (each limit in its own unit).
    pub fn unabsorbed(&self) -> u64 {
        self.unabsorbed
            .values()
            .fold(0, |a, b| a.saturating_add(*b))
    }

    /// Sets the escrow's per-limit figures and the node's view of a line.
    fn load(&mut self, u: &GrantUse) {
        self.node.config.u_max = u.u_max;
        self.node.config.chunk = (u.amount / 8).max(1);
        self.node.grants.insert(u.line.key(), local_grant(u));
    }

    /// Writes the node's view of `key` back as its line.
    fn store_line(&self, local: &dyn Local, u: &GrantUse) -> Result<(), String> {
        let g = self.node.grants[&u.line.key()];
        local.confirm(GrantLine {
            epoch: g.epoch,
            granted: g.granted,
            reported: g.reported,
            ..u.line.clone()
        })
    }

    fn failed(&mut self, e: &KvError) {
        self.stats.store_errors += 1;
        if matches!(e, KvError::Unavailable(_)) {
            self.reachable = false;
        }
        if matches!(e, KvError::NoLease(_)) {
            self.registered = false;
        }
    }

    /// Registers under a new epoch and settles the grants of the last one:
    /// each line is first lowered to its use (so nothing is reserved while
    /// the store settles it), then rewritten as the store settled it.
    pub fn register(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
    ) -> Result<bool, String> {
        for u in local.uses()? {
            if u.line.epoch != 0 {
                local.lower(&u.line.key(), 0)?;
            }
        }
        let before = local.uses()?;
        self.node.grants.clear();
        for u in &before {
            // A rolling line's charges need no settling: they age out.
            if u.line.epoch != 0 && !u.line.is_rolling() {
                self.load(u);
            }
        }
        let ok = match self.node.register(store) {
            Ok(ok) => ok,
            Err(e) => {
                self.failed(&e);
                return Err(e.to_string());
            }
        };
        if !ok {
            return Ok(false);
        }
        self.registered = true;
        self.reachable = true;
        self.stats.registrations += 1;
        self.joined.clear();
        self.returned.clear();
        for u in before.iter().filter(|u| u.line.epoch != 0) {
            let key = u.line.key();
            let g = self.node.grants.get(&key).copied();
            let line = match g {
                // Kept under the new epoch, all its use reported.
                Some(g) if g.epoch == self.node.epoch && (g.granted > 0 || g.used > 0) => {
                    GrantLine {
                        epoch: g.epoch,
                        granted: g.granted,
                        reported: g.reported,
                        ..u.line.clone()
                    }
                }
                // Settled into the pool (reconciled or charged): what it
                // used is the pool's now, not the next grant's.
                // (Its u_max is the store's fresh grant's: the next join
                // reads it.)
                _ => GrantLine {
                    epoch: self.node.epoch,
                    base: u.line.base.saturating_add(u.used),
                    granted: 0,
                    reported: 0,
                    u_max: 0,
                    ..u.line.clone()
                },
            };
            local.confirm(line)?;
        }
        Ok(true)
    }

    /// Makes sure the pool of `u` exists and this registration has a grant
    /// line in it.
    fn join(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        u: &GrantUse,
    ) -> Result<(), KvError> {
        let key = u.line.key();
        if self.joined.contains(&key) && u.line.epoch == self.node.epoch {
            return Ok(());
        }
        escrow::ensure_pool(store, &key, u.amount)?;
        self.load(u);
        if u.line.epoch != self.node.epoch {
            self.node.grants.remove(&key);
        }
        // Creates this registration's grant, or finds it there (a join
        // whose reply was lost, a grant kept or begun at registration); a
        // grant of an older registration still to settle is not joined.
        // Its declared u_max is raised to this limit's first (the store
        // before the line: the node may use only what a reclaim charges).
        self.node.join(store, &key)?;
        let Some(g) = self.node.declare(store, &key, u.u_max)? else {
            self.joined.remove(&key);
            return Ok(());
        };
        let new_line = u.line.epoch != self.node.epoch;
        if new_line || u.line.u_max != g.u_max {
            // A fresh grant after an earlier registration's was settled:
            // what the node used under that one is the pool's already. A
            // line never joined (epoch 0) keeps its use, all of it past
            // the grant: it is charged to the pool (`absorb_one`).
            let fresh = g.granted == 0 && g.reported == 0 && u.line.epoch != 0;
            let line = match new_line {
                true => GrantLine {
                    epoch: self.node.epoch,
                    base: match fresh {
                        true => u.line.base.saturating_add(u.used),
                        false => u.line.base,
                    },
                    granted: g.granted,
                    reported: g.reported,
                    u_max: g.u_max,
                    ..u.line.clone()
                },
                false => GrantLine {
                    u_max: g.u_max,
                    ..u.line.clone()
                },
            };
            local.confirm(line).map_err(KvError::Unavailable)?;
            if new_line {
                self.node.grants.insert(
                    key.clone(),
                    LocalGrant {
                        epoch: self.node.epoch,
                        granted: g.granted,
                        used: g.reported,
                        reported: g.reported,
                        held: g.held,
                    },
                );
            }
        }
        self.joined.insert(key);
        Ok(())
    }

    /// What to ask for when refilling `u`: the recent rate over the
    /// horizon, at most an eighth of the limit. No floor: with a thousand
    /// nodes, a hundredth of the limit each is ten limits; a node with
    /// next to no rate asks when a RESERVE needs it (for what it needs).
    fn want(&self, u: &GrantUse) -> u64 {
        let by_rate = self.expected(&u.line.key(), self.config.horizon_ms);
        (by_rate as u64).clamp(1, (u.amount / 8).max(1))
    }

    /// Twice the last refill of `key` (a line's key, a rolling pool's
    /// name) if it was less than a second ago, at most an eighth of the
    /// limit; else 0.
    fn doubled(&self, key: &str, amount: u64, now: u64) -> u64 {
        match self.last_refill.get(key) {
            Some(&(at, got)) if now.saturating_sub(at) < 1_000 => {
                got.saturating_mul(2).min((amount / 8).max(1))
            }
            _ => 0,
        }
    }

    /// The use `key`'s rate expects in the next `ms`.
    fn expected(&self, key: &str, ms: u64) -> f64 {
        let rate = self.rates.get(key).map_or(0.0, |r| r.1);
        rate * ms as f64 / 1000.0
    }

    /// A RESERVE lacks room or a report of `key`: ask the store now.
    /// `first`: the RESERVE's first ask (a later one polls after a recall).
    pub fn ask(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        short: &Shortage,
        first: bool,
        now: u64,
    ) -> Result<Answer, String> {
        if first {
            self.stats.waits += 1;
        }
        if !self.registered {
            return Ok(Answer::Nothing);
        }
        let uses = local.uses()?;
        // A rolling window's current line, whichever period the RESERVE
        // was decided in (a wait for recalled room outlasts a period).
        let current = |u: &&GrantUse| {
            u.line.is_rolling()
                && !u.ended
                && (short.key.strip_prefix(&rolling::pool_name(&u.line)))
                    .is_some_and(|rest| rest.starts_with('|'))
        };
        let found =
            (uses.iter().find(current)).or_else(|| uses.iter().find(|u| u.line.key() == short.key));
        let Some(u) = found.cloned() else {
            return Ok(Answer::Nothing);
        };
        let answered = match u.line.is_rolling() {
            true => self.rolling_answer(store, local, short, &u, first, now),
            false => self.answer(store, local, short, &u, first, now),
        };
        let r = match answered {
            Ok(a) => {
                self.reachable = true;
                Ok(a)
            }
            Err(e) => {
                self.failed(&e);
                Err(e.to_string())
            }
        };
        self.tell_reachability(local)?;
        r
    }

    /// Tells the rules when the store has become unreachable, or reachable
    /// again (before the RESERVE that asked is decided again).
    fn tell_reachability(&mut self, local: &dyn Local) -> Result<(), String> {
        let cut_off = !self.reachable;
        if self.told_cut_off != cut_off {
            local.cut_off(cut_off)?;
            self.told_cut_off = cut_off;
        }
        Ok(())
    }

    fn answer(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        short: &Shortage,
        u: &GrantUse,
        first: bool,
        now: u64,
    ) -> Result<Answer, KvError> {
        // A round of the agent may have done it since the RESERVE was
        // decided: decide it again.
        let l = &u.line;
        let after = u.used.saturating_add(short.amount);
        let mine = l.epoch == self.node.epoch;
        if mine && after <= l.granted && after <= l.reported.saturating_add(l.u_max) {
            return Ok(Answer::Moved);
        }
        if !short.report {
            if self.serve_one(store, local, u, short.by.max(1), now)? {
                return Ok(Answer::Moved);
            }
            // The pool is dry: recall idle room from the other nodes (once
            // per RESERVE); the caller asks again while they give it back.
            if first {
                self.recall(store, &short.key)?;
            }
            return Ok(Answer::Dry {
                frees_at: None,
                recalled: first,
            });
        }
        // An idle grant declares no allowance: raise it (the store first),
        // then decide again.
        if mine && l.u_max < u.u_max {
            if let Some(g) = self.node.declare(store, &short.key, u.u_max)? {
                if g.u_max > l.u_max {
                    let line = GrantLine {
                        u_max: g.u_max,
                        ..l.clone()
                    };
                    local.confirm(line).map_err(KvError::Unavailable)?;
                    return Ok(Answer::Moved);
                }
            }
        }
        Ok(match self.report_ahead(store, local, u, short.by)? {
            true => Answer::Moved,
            false => Answer::Nothing,
        })
    }

    /// Asks every node holding idle room of `key` to give it back.
    fn recall(&mut self, store: &mut dyn GlobalStore, key: &str) -> Result<(), KvError> {
        self.stats.recalls += 1;
        self.low.insert(key.to_string());
        escrow::recall(store, key, &self.node.name)
    }

    /// A watch on the store saw `key` change (Some), or (re)started (None:
    /// what changed before may have been missed, so every recall and the
    /// definitions are read once). From the first call on, the agent polls
    /// for neither.
    pub fn watched(&mut self, key: Option<&str>) {
        self.watching = true;
        let Some(key) = key else {
            self.definitions_due = true;
            self.recalls_rescan = true;
            return;
        };
        if key == definitions_version_key() {
            self.definitions_due = true;
        } else if let Some(limit) = escrow::recall_limit(key) {
            // A recall of a pool this node had not seen low: it may hold
            // idle room of it all the same.
            self.low.insert(limit.clone());
            self.recalls_due.insert(limit);
        }
    }

    /// Gives back idle room of every low pool another node recalled since
    /// it last looked (watched: of every pool a recall was seen for).
    fn answer_recalls(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        now: u64,
    ) -> Result<(), KvError> {
        let low: Vec<String> = match self.watching {
            true => std::mem::take(&mut self.recalls_due).into_iter().collect(),
            false => self.low.iter().cloned().collect(),
        };
        let mut uses = None;
        for key in low {
            let Some((by, rev)) = escrow::read_recall(store, &key)? else {
                continue;
            };
            if self.recalls_served.get(&key).is_some_and(|r| *r >= rev) {
                continue;
            }
            self.recalls_served.insert(key.clone(), rev);
            if by == self.node.name {
                continue;
            }
            if uses.is_none() {
                uses = Some(local.uses().map_err(KvError::Unavailable)?);
            }
            let Some(u) = (uses.iter().flatten())
                .find(|u| u.line.key() == key && u.line.epoch == self.node.epoch)
            else {
                continue;
            };
            if u.line.is_rolling() {
                // Another node waits for room of this pool: while the
                // recall lasts, a round takes none ahead of use (an idle
                // node's decaying rate would take back what it gives, or
                // take the next period's), only this node's RESERVEs do.
                let until = now.saturating_add(RECALL_LIFE_MS);
                self.dry_until.insert(rolling::pool_name(&u.line), until);
            }
            self.give_back_idle(store, local, u.clone(), 0, now)?;
        }
        Ok(())
    }

    /// Lowers `u`'s line to its use plus `keep` and gives the rest back.
    fn give_back_idle(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        u: GrantUse,
        keep: u64,
        now: u64,
    ) -> Result<(), KvError> {
        let key = u.line.key();
        let Some(lowered) = local.lower(&key, keep).map_err(KvError::Unavailable)? else {
            return Ok(());
        };
        if lowered.is_rolling() {
            if lowered.epoch == self.node.epoch {
                self.rolling_return(store, &lowered, lowered.granted, now)?;
            }
            return Ok(());
        }
        self.load(&GrantUse {
            line: lowered.clone(),
            ..u.clone()
        });
        self.node.give_back_to(store, &key, lowered.granted)?;
        self.stats.give_backs += 1;
        self.store_line(local, &GrantUse { line: lowered, ..u })
            .map_err(KvError::Unavailable)
    }

    /// Usage was booked outside the rules and took these lines past them
    /// (the engine's `State::overdrawn`: each line's key and the amount so
    /// booked): charge what is past the grant to their pools now, recalling
    /// the other nodes' idle room of every pool that leaves low, and
    /// report the rest, so from here on no node is granted room that was
    /// spent on this one, and a reclaim charges all of it. What cannot be
    /// charged now (the store out of reach, the node registering) is
    /// charged by the next rounds.
    pub fn absorb(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        lines: &[(String, u64)],
        now: u64,
    ) -> Result<(), String> {
        for (key, booked) in lines {
            let b = self.unabsorbed.entry(key.clone()).or_default();
            *b = b.saturating_add(*booked);
        }
        // Out of reach (the last request failed): the answer does not wait
        // for the store's timeout; the rounds charge it once it answers.
        if !self.registered || !self.reachable {
            return Ok(());
        }
        let r = (|| -> Result<(), KvError> {
            let uses: Vec<GrantUse> = (local.uses().map_err(KvError::Unavailable)?.into_iter())
                .filter(|u| self.unabsorbed.contains_key(&u.line.key()))
                .collect();
            for u in &uses {
                // A limit gone, or a rolling window's (charged as taken).
                if u.amount == 0 || u.line.is_rolling() {
                    self.unabsorbed.remove(&u.line.key());
                    continue;
                }
                self.serve_one(store, local, u, 0, now)?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => self.reachable = true,
            Err(e) => {
                self.failed(&e);
                self.tell_reachability(local)?;
                return Err(e.to_string());
            }
        }
        self.tell_reachability(local)
    }

    /// Charges what `u` (joined, read fresh) used past its grant to the
    /// pool — past the limit by no more than the usage booked outside the
    /// rules (`unabsorbed`), the rest (a partition allowance's use) from
    /// the room the pool has — writes the line as the store now has it,
    /// and recalls idle room when the pool is left low. Ok(the amount
    /// charged).
    fn absorb_one(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        u: &GrantUse,
    ) -> Result<u64, KvError> {
        let key = u.line.key();
        if u.amount == 0 || u.line.is_rolling() || u.used <= u.line.granted {
            self.unabsorbed.remove(&key);
            return Ok(0);
        }
        if u.line.epoch != self.node.epoch {
            return Ok(0);
        }
        self.load(u);
        let booked = self.unabsorbed.get(&key).copied().unwrap_or(0);
        let mut charged = None;
        for _ in 0..MAX_CONFLICTS {
            charged = self.node.absorb(store, &key, booked)?;
            if charged.is_some() {
                break;
            }
            self.node.sync_limit(store, &key)?;
        }
        let Some(charged) = charged else {
            return Ok(0);
        };
        self.unabsorbed.remove(&key);
        if charged == 0 {
            return Ok(0);
        }
        self.stats.absorbed += charged;
        self.store_line(local, u).map_err(KvError::Unavailable)?;
        // Other nodes may hold room the pool no longer has: call it back.
        if escrow::read_pool(store, &key)?.is_low() {
            self.recall(store, &key)?;
        }
        Ok(charged)
    }

    /// Refills (`need` > 0) or reports `u`; Ok(whether anything changed).
    fn serve_one(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        u: &GrantUse,
        need: u64,
        now: u64,
    ) -> Result<bool, KvError> {
        self.join(store, local, u)?;
        let u = self.fresh(local, u)?;
        // Use past the grant is the pool's first: what the call lacks is
        // then what the grant lacks beyond it.
        let over = self.absorb_one(store, local, &u)?;
        let u = match over > 0 {
            true => self.fresh(local, &u)?,
            false => u,
        };
        let need = match need {
            0 => 0,
            n => n.saturating_sub(over).max(1),
        };
        self.load(&u);
        let key = u.line.key();
        if need == 0 {
            return Ok(over > 0 || self.report_one(store, local, &u, 0)?);
        }
        // A refill within a second of the last asks for twice as much: a
        // node going from idle to a burst reaches its rate in a few round
        // trips while its rate estimate catches up.
        let want = self
            .want(&u)
            .max(need)
            .max(self.doubled(&key, u.amount, now));
        // Other nodes' refills move the pool's revision under this one's
        // guard: try again while the pool has room.
        let mut got = 0;
        for _ in 0..MAX_CONFLICTS {
            got = self.node.refill(store, &key, need, want)?;
            if got > 0 {
                // Less than it wanted: the fair share bound it, so the
                // pool is running low; look for recalls from now on.
                if got < want {
                    self.low.insert(key.clone());
                }
                break;
            }
            let pool = escrow::read_pool(store, &key)?;
            if pool.is_low() {
                self.low.insert(key.clone());
            }
            if pool.available() == 0 {
                break;
            }
        }
        if got > 0 {
            self.last_refill.insert(key.clone(), (now, got));
            self.stats.refills += 1;
            self.stats.room_granted += got;
            self.store_line(local, &u).map_err(KvError::Unavailable)?;
        }
        // A refill that found the store's grant moved (a lost reply) reads
        // it again.
        if got == 0 {
            self.node.sync_limit(store, &key)?;
            self.store_line(local, &u).map_err(KvError::Unavailable)?;
        }
        Ok(got > 0)
    }

    /// Reports `u`'s use, `by` more than its last report at least (ahead
    /// of use, never past the grant): what a RESERVE larger than `u_max`
    /// needs before it is let through.
    fn report_ahead(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        u: &GrantUse,
        by: u64,
    ) -> Result<bool, KvError> {
        self.join(store, local, u)?;
        let u = self.fresh(local, u)?;
        self.report_one(store, local, &u, by)
    }

    /// `u` read again (after a join may have rewritten its line).
    fn fresh(&self, local: &dyn Local, u: &GrantUse) -> Result<GrantUse, KvError> {
        Ok(local
            .uses()
            .map_err(KvError::Unavailable)?
            .into_iter()
            .find(|x| x.line.key() == u.line.key())
            .unwrap_or_else(|| u.clone()))
    }

    fn report_one(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        u: &GrantUse,
        ahead: u64,
    ) -> Result<bool, KvError> {
        let key = u.line.key();
        self.load(u);
        if ahead > 0 {
            let g = self.node.grants.get_mut(&key).expect("loaded");
            g.used = g
                .used
                .max(g.reported.saturating_add(ahead))
                .min(g.granted.max(g.used));
        }
        let before = self.node.grants[&key].reported;
        self.node.report_limit(store, &key)?;
        if self.node.grants[&key].reported == before {
            // Nothing to report as the store sees it: read its figures.
            self.node.sync_limit(store, &key)?;
        }
        let now = self.node.grants[&key];
        if now.reported != before {
            self.stats.reports += 1;
        }
        // The store's figures differ from the line (this report, or one
        // whose reply was lost before): the line takes them.
        let moved = now.reported != u.line.reported || now.granted != u.line.granted;
        if moved {
            self.store_line(local, u).map_err(KvError::Unavailable)?;
        }
        Ok(moved)
    }

    /// One round: keep the lease, register if not, keep every grant ahead
    /// of its use, report, give idle room back, reclaim dead nodes' grants,
    /// and apply new definitions.
    pub fn tick(&mut self, store: &mut dyn GlobalStore, local: &dyn Local, now: u64) {
        if let Err(e) = self.round(store, local, now) {
            self.failed(&e);
        } else {
            self.reachable = true;
        }
        if let Err(e) = self.tell_reachability(local) {
            self.failed(&KvError::Unavailable(e));
        }
    }

    fn round(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        now: u64,
    ) -> Result<(), KvError> {
        let ttl = self.config.lease_ttl_ms;
        if self.registered && now.saturating_sub(self.last_keepalive) >= ttl / 3 {
            let lease = self.node.lease.unwrap_or(0);
            store.lease_keepalive(lease)?;
            self.last_keepalive = now;
        }
        let every = match self.watching {
            true => WATCHED_DEFINITIONS_EVERY_MS,
            false => self.config.definitions_every_ms,
        };
        if !self.definitions_loaded
            || self.definitions_due
            || now.saturating_sub(self.last_definitions) >= every
        {
            self.apply_definitions(store, local)?;
            self.last_definitions = now;
            self.definitions_loaded = true;
            self.definitions_due = false;
        }
        if !self.registered {
            if !self.register(store, local).map_err(KvError::Unavailable)? {
                return Ok(());
            }
            self.last_keepalive = now;
        }
        let uses = local.uses().map_err(KvError::Unavailable)?;
        let dt = now.saturating_sub(self.last_tick).max(1) as f64 / 1000.0;
        self.last_tick = now;
        let report_due = now.saturating_sub(self.last_report) >= self.config.report_every_ms;
        for u in &uses {
            if u.amount == 0 {
                continue;
            }
            let key = u.line.key();
            if u.line.is_rolling() {
                self.rolling_round(store, local, u, now, dt)?;
                continue;
            }
            let (last, _) = self.observe(&key, u.used, dt, false);
            if u.used != last || !self.idle_since.contains_key(&key) {
                self.idle_since.insert(key.clone(), now);
            }
            // Usage booked outside the rules that the engine's call to
            // `absorb` could not charge (the store was out of reach, the
            // node was registering): charge it now.
            if self.unabsorbed.contains_key(&key) {
                self.serve_one(store, local, u, 0, now)?;
                continue;
            }
            // Idle long enough, all its use reported: declare no unreported
            // allowance (the line first), so its death strands nothing; the
            // next RESERVE raises it again with one round trip.
            let quiet = now.saturating_sub(self.idle_since[&key]) >= IDLE_MS;
            if quiet
                && u.line.epoch == self.node.epoch
                && u.line.u_max > 0
                && u.used <= u.line.reported
            {
                local
                    .confirm(GrantLine {
                        u_max: 0,
                        ..u.line.clone()
                    })
                    .map_err(KvError::Unavailable)?;
                self.node.undeclare(store, &key)?;
                self.stats.undeclared += 1;
                continue;
            }
            let want = self.want(u);
            let left = u.line.granted.saturating_sub(u.used);
            // Ahead of use only for use its rate expects (an idle node's
            // decaying rate asks for nothing; a RESERVE asks itself).
            let busy = self.expected(&key, self.config.horizon_ms) >= 1.0;
            if (left < want / 2 || u.line.epoch != self.node.epoch) && busy {
                self.serve_one(store, local, u, want.saturating_sub(left).max(1), now)?;
            } else if u.used > u.line.reported
                && (report_due || u.used - u.line.reported >= u.line.u_max / 2)
            {
                self.serve_one(store, local, u, 0, now)?;
                // A busy node learns with its reports whether the pool runs
                // low, so it answers a recall while the starving node waits.
                if escrow::read_pool(store, &key)?.is_low() {
                    self.low.insert(key.clone());
                }
            }
        }
        if report_due {
            self.last_report = now;
        }
        self.returned
            .retain(|k| uses.iter().any(|u| u.line.key() == *k));
        self.unabsorbed
            .retain(|k, _| uses.iter().any(|u| u.line.key() == *k && u.amount > 0));
        if self.recalls_rescan {
            self.recalls_due.extend(escrow::recalled_limits(store)?);
            self.recalls_rescan = false;
        }
        let recalls = match self.watching {
            true => !self.recalls_due.is_empty(),
            false => !self.low.is_empty(),
        };
        if recalls {
            self.answer_recalls(store, local, now)?;
        }
        if now.saturating_sub(self.last_relieve) >= self.config.relieve_every_ms {
            self.relieve(store, local, now)?;
            self.last_relieve = now;
        }
        // The first live node (by name) looks every 2 s, so a dead node's
        // room comes back within 2 s of its lease running out; the others
        // every TTL, in case it is the one that died.
        let first = self.live.first().is_some_and(|n| *n == self.node.name);
        let every = if first {
            ttl.min(JANITOR_EVERY_MS)
        } else {
            ttl
        };
        if now.saturating_sub(self.last_janitor) >= every {
            self.janitor(store)?;
            self.last_janitor = now;
        }
        Ok(())
    }

    /// Gives back room beyond a second of its rate on every limit whose
    /// pool has less than an eighth of the limit left.
    fn relieve(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        now: u64,
    ) -> Result<(), KvError> {
        for u in local.uses().map_err(KvError::Unavailable)? {
            let key = u.line.key();
            let mine = u.line.epoch == self.node.epoch;
            if !mine || u.ended || u.line.granted <= u.used || u.amount == 0 {
                continue;
            }
            let low = match u.line.is_rolling() {
                true => rolling::read_pool(store, &rolling::pool_name(&u.line))?.is_low(now),
                false => escrow::read_pool(store, &key)?.is_low(),
            };
            if !low {
                self.low.remove(&key);
                continue;
            }
            self.low.insert(key.clone());
            let rate = self.rates.get(&self.rate_key(&u.line)).map_or(0.0, |r| r.1);
            self.give_back_idle(store, local, u, rate as u64, now)?;
        }
        Ok(())
    }

    /// The rate of a limit is kept under its line's key, or for a rolling
    /// window under its pool's name (a line lasts one grant period).
    fn rate_key(&self, line: &GrantLine) -> String {
        match line.is_rolling() {
            true => rolling::pool_name(line),
            false => line.key(),
        }
    }

    /// Updates the EWMA of `key`'s rate (per second) with its use now,
    /// `dt` seconds after the last round (`restarted`: the use counts from
    /// 0 again since, a rolling line's new period): the use last seen, and
    /// the rate.
    fn observe(&mut self, key: &str, used: u64, dt: f64, restarted: bool) -> (u64, f64) {
        let (last, rate) = self.rates.get(key).copied().unwrap_or((used, 0.0));
        let last = if restarted { 0 } else { last };
        // (Use can fall: a hold settled for less than it held.)
        let inst = used.saturating_sub(last) as f64 / dt;
        // A one-second time constant: a node that starts taking calls
        // sizes its refills from its rate within a few rounds.
        let alpha = dt.min(1.0);
        let rate = rate + alpha * (inst - rate);
        self.rates.insert(key.to_string(), (used, rate));
        (last, rate)
    }

    /// What to ask for when refilling a rolling line: its recent rate over
    /// the rest of its period (at most the horizon), at most an eighth of
    /// the limit.
    fn rolling_want(&self, u: &GrantUse, now: u64) -> u64 {
        let left_ms = u.line.end().saturating_sub(now).min(self.config.horizon_ms);
        let by_rate = self.expected(&self.rate_key(&u.line), left_ms);
        (by_rate as u64).clamp(1, (u.amount / 8).max(1))
    }

    /// A round's work on a rolling line: give back what an ended period did
    /// not use, keep the current one ahead of its use.
    fn rolling_round(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        u: &GrantUse,
        now: u64,
        dt: f64,
    ) -> Result<(), KvError> {
        let key = u.line.key();
        let mine = u.line.epoch == self.node.epoch;
        if u.ended {
            if mine && u.line.granted > u.used && !self.returned.contains(&key) {
                self.rolling_return(store, &u.line, u.used, now)?;
            }
            return Ok(());
        }
        let pool = rolling::pool_name(&u.line);
        let restarted =
            self.rate_periods.insert(pool.clone(), u.line.period) != Some(u.line.period);
        let (_, rate) = self.observe(&pool, u.used, dt, restarted);
        let want = self.rolling_want(u, now);
        let left = match mine {
            true => u.line.granted.saturating_sub(u.used),
            false => 0,
        };
        let dry = self.dry_until.get(&pool).is_some_and(|t| *t > now);
        // Taken ahead only for use expected in the rest of the period (an
        // idle node's decaying rate asks for nothing).
        let expected = rate * u.line.end().saturating_sub(now) as f64 / 1000.0;
        if left < want / 2 && expected >= 1.0 && !dry {
            self.rolling_take(store, local, u, 1, want.saturating_sub(left), now)?;
        }
        Ok(())
    }

    /// Charges more room of a rolling line's period: at least `need` (or
    /// nothing), `want` if the pool can spare it. What ended periods of
    /// the same pool did not use goes back in the same transaction.
    fn rolling_take(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        u: &GrantUse,
        need: u64,
        want: u64,
        now: u64,
    ) -> Result<Took, KvError> {
        if !self.registered {
            return Ok(Took::Conflict);
        }
        let pool = rolling::pool_name(&u.line);
        let uses = local.uses().map_err(KvError::Unavailable)?;
        let u = (uses.iter())
            .find(|x| x.line.key() == u.line.key())
            .unwrap_or(u)
            .clone();
        let ended: Vec<&GrantUse> = (uses.iter())
            .filter(|x| x.ended && x.line.is_rolling() && x.line.epoch == self.node.epoch)
            .filter(|x| x.line.granted > x.used && !self.returned.contains(&x.line.key()))
            .filter(|x| rolling::pool_name(&x.line) == pool)
            .collect();
        let returns: Vec<(u64, u64)> = ended.iter().map(|x| (x.line.period, x.used)).collect();
        for _ in 0..MAX_CONFLICTS {
            let took = rolling::take(
                store,
                &self.node,
                &u.line,
                u.amount,
                need,
                want.max(need),
                &returns,
                now,
            )?;
            match took {
                Took::Charged { total, more } => {
                    self.last_refill.insert(pool.clone(), (now, more));
                    self.dry_until.remove(&pool);
                    self.returned.extend(ended.iter().map(|x| x.line.key()));
                    // A line of an earlier registration: what it used
                    // was charged under that one.
                    let base = match u.line.epoch == self.node.epoch {
                        true => u.line.base,
                        false => u.line.base.saturating_add(u.used),
                    };
                    let line = GrantLine {
                        epoch: self.node.epoch,
                        base,
                        granted: total,
                        reported: 0,
                        u_max: 0,
                        ..u.line.clone()
                    };
                    local.confirm(line).map_err(KvError::Unavailable)?;
                    self.stats.refills += 1;
                    self.stats.room_granted += more;
                    if more < want {
                        self.low.insert(u.line.key());
                    }
                    return Ok(took);
                }
                Took::Conflict => continue,
                Took::Dry { frees_at } => {
                    self.low.insert(u.line.key());
                    // Room comes back as charges age out, or when another
                    // node gives some back: look again by then, or in 1 s.
                    let until = frees_at.unwrap_or(u64::MAX).min(now + 1_000);
                    self.dry_until.insert(pool, until);
                    return Ok(took);
                }
            }
        }
        Ok(Took::Conflict)
    }

    /// Lowers this registration's charge of `line`'s period to `keep` (the
    /// line is lowered or ended already: the node uses no more of it).
    fn rolling_return(
        &mut self,
        store: &mut dyn GlobalStore,
        line: &GrantLine,
        keep: u64,
        now: u64,
    ) -> Result<(), KvError> {
        for _ in 0..MAX_CONFLICTS {
            let back = rolling::give_back(store, &self.node, line, &[(line.period, keep)], now)?;
            if let Some(back) = back {
                if back > 0 {
                    self.stats.give_backs += 1;
                }
                if line.ended(now) {
                    self.returned.insert(line.key());
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// A RESERVE short of a rolling line's room: charge it, or say when
    /// the pool frees room.
    fn rolling_answer(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
        short: &Shortage,
        u: &GrantUse,
        first: bool,
        now: u64,
    ) -> Result<Answer, KvError> {
        let mine = u.line.epoch == self.node.epoch;
        if mine && u.used.saturating_add(short.amount) <= u.line.granted {
            return Ok(Answer::Moved);
        }
        let need = short.by.max(1);
        let want = self.rolling_want(u, now).max(need);
        let want = want.max(self.doubled(&rolling::pool_name(&u.line), u.amount, now));
        Ok(match self.rolling_take(store, local, u, need, want, now)? {
            Took::Charged { .. } => Answer::Moved,
            Took::Dry { frees_at } => {
                // One recall at a time per grant period: while one is
                // out, another RESERVE short of room is answered at once.
                // It names the current period's line (the RESERVE may have
                // been decided in the last), so a node whose round took
                // room of a new period ahead of use, after it answered a
                // recall of the last, gives that back too.
                self.recalled.retain(|_, t| now < *t + RECALL_LIFE_MS);
                let line = u.line.key();
                let recalled = first && !self.recalled.contains_key(&line);
                if recalled {
                    self.recall(store, &line)?;
                    self.recalled.insert(line, now);
                }
                Answer::Dry { frees_at, recalled }
            }
            Took::Conflict => Answer::Nothing,
        })
    }

    /// Reclaims the grants of every node whose registration is gone.
    fn janitor(&mut self, store: &mut dyn GlobalStore) -> Result<(), KvError> {
        let live = escrow::live_nodes(store)?;
        // The grants are read only when the live nodes changed (one died,
        // one joined) or the last pass left a grant unreclaimed: one read
        // every round otherwise.
        if live == self.live && !self.janitor_pending {
            return Ok(());
        }
        self.janitor_pending = false;
        for (limit, node) in escrow::grant_holders(store)? {
            if live.contains(&node) {
                continue;
            }
            let Some(plan) = escrow::plan_reclaim(store, &limit, &node)? else {
                continue;
            };
            if escrow::reclaim(store, &plan, escrow::Fencing::Checked)? {
                self.stats.reclaims += 1;
            } else {
                // Its grant or the pool moved since the plan: next round.
                self.janitor_pending = true;
            }
        }
        self.live = live;
        Ok(())
    }

    /// Applies every definition written since it last looked, in revision
    /// order, and the deletion of any it had applied.
    fn apply_definitions(
        &mut self,
        store: &mut dyn GlobalStore,
        local: &dyn Local,
    ) -> Result<(), KvError> {
        let version = store
            .get(&definitions_version_key())?
            .map_or(0, |kv| kv.mod_rev);
        if version == self.definitions_seen {
            return Ok(());
        }
        let mut found = Vec::new();
        for prefix in ["budget/", "price/", "alerts/"] {
            found.extend(store.range(&format!("{PREFIX}{prefix}"))?);
        }
        found.sort_by_key(|kv| kv.mod_rev);
        let mut seen = BTreeMap::new();
        for kv in found {
            seen.insert(kv.key.clone(), ());
            if self.applied.get(&kv.key).is_some_and(|r| *r >= kv.mod_rev) {
                continue;
            }
            let def: Option<DefinitionV1> = serde_json::from_slice(&kv.value).ok();
            let Some(def) = def else {
                return Err(KvError::Corrupt(format!("{}: not a definition", kv.key)));
            };
            let cmd = command_of(&kv.key, Some(&def)).map_err(KvError::Corrupt)?;
            local.define(cmd).map_err(KvError::Unavailable)?;
            self.stats.definitions_applied += 1;
            self.applied.insert(kv.key, kv.mod_rev);
        }
        let gone: Vec<String> = (self.applied.keys())
            .filter(|k| !seen.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.applied.remove(&key);
            // A budget or a scope's alert rules deleted (a price stays).
            if key.starts_with(&format!("{PREFIX}budget/"))
                || key.starts_with(&format!("{PREFIX}alerts/"))
            {
                local
                    .define(command_of(&key, None).map_err(KvError::Corrupt)?)
                    .map_err(KvError::Unavailable)?;
                self.stats.definitions_applied += 1;
            }
        }
        self.definitions_seen = version;
        Ok(())
    }

    /// Notes that this node wrote a definition at `rev` (it has applied it).
    pub fn published(&mut self, cmd: &Command, rev: Rev) {
        if let Some((key, def)) = definition(cmd) {
            match def {
                Some(_) => {
                    self.applied.insert(key, rev);
                }
                None => {
                    self.applied.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::limit::{Period, Window, Zone};

    #[test]
    fn alert_rules_are_definitions_that_round_trip_and_invalid_ones_stay_home() {
        let rules = AlertRules {
            thresholds: vec![50, 80],
            forecast: true,
            spike: Some(SpikeRule {
                dim: Dim::Cost,
                factor: 3,
                window_ms: 300_000,
                min: 5,
            }),
            runaway: Some(RunawayRule {
                events: 10,
                window_ms: 60_000,
            }),
            webhook: Some("http://127.0.0.1:9/hook".into()),
        };
        let set = Command::AlertRulesSet {
            scope: "org:a/team:b".into(),
            rules: Some(rules.clone()),
        };
        let (key, def) = definition(&set).unwrap();
        assert_eq!(key, "/spendb/v1/alerts/org:a%2Fteam:b");
        assert_eq!(command_of(&key, def.as_ref()).unwrap(), set);
        let del = Command::AlertRulesSet {
            scope: "org:a/team:b".into(),
            rules: None,
        };
        let (key, def) = definition(&del).unwrap();
        assert_eq!(def, None);
        assert_eq!(command_of(&key, None).unwrap(), del);
        // Rules the state refuses are not published.
        let bad = Command::AlertRulesSet {
            scope: "org:a".into(),
            rules: Some(AlertRules {
                thresholds: vec![0],
                ..rules
            }),
        };
        assert_eq!(definition(&bad), None);
    }

    #[test]
    fn a_watched_recall_or_definition_is_acted_on_in_the_next_round() {
        let mut a = Agent::new("n1", AgentConfig::new(3_000));
        assert!(!a.watching);
        a.watched(Some("/spendb/v1/recall/org:a%2Fteam:b|TOKENS|PER TOTAL|0"));
        assert!(a.watching);
        let limit = "org:a/team:b|TOKENS|PER TOTAL|0".to_string();
        assert!(a.low.contains(&limit) && a.recalls_due.contains(&limit));
        assert!(!a.definitions_due);
        a.watched(Some("/spendb/v1/definitions"));
        assert!(a.definitions_due);
        // Other keys are none of its business; a (re)started watch reads
        // every recall and the definitions once.
        a.recalls_due.clear();
        a.definitions_due = false;
        a.watched(Some("/spendb/v1/pool/x"));
        assert!(a.recalls_due.is_empty() && !a.definitions_due);
        a.watched(None);
        assert!(a.recalls_rescan && a.definitions_due);
        let mut store = crate::cluster::kv::MemStore::new(0);
        escrow::recall(&mut store, &limit, "n2").unwrap();
        escrow::recall(&mut store, "org:c|REQUESTS|PER TOTAL|0", "n3").unwrap();
        assert_eq!(
            escrow::recalled_limits(&mut store).unwrap(),
            vec![limit, "org:c|REQUESTS|PER TOTAL|0".to_string()]
        );
        let keys = watched_keys();
        assert_eq!(keys[0], ("/spendb/v1/definitions".to_string(), false));
        assert_eq!(keys[1], ("/spendb/v1/recall/".to_string(), true));
    }

    #[test]
    fn a_definition_round_trips_through_the_store_format() {
        let cmd = Command::BudgetSet {
            scope: "org:a/team:b".into(),
            limits: vec![
                LimitSpec {
                    dim: Dim::Cost,
                    window: Window::Calendar(Period::Day, Zone::parse("Europe/Berlin").unwrap()),
                    amount: 5_000_000_000,
                },
                LimitSpec {
                    dim: Dim::Tokens,
                    window: Window::Rolling(60_000),
                    amount: 1_000,
                },
                LimitSpec {
                    dim: Dim::Requests,
                    window: Window::Total,
                    amount: 9,
                },
            ],
        };
        let (key, def) = definition(&cmd).unwrap();
        assert_eq!(key, "/spendb/v1/budget/org:a%2Fteam:b");
        assert_eq!(command_of(&key, def.as_ref()).unwrap(), cmd);
        let del = Command::BudgetDel {
            scope: "org:a".into(),
        };
        let (key, def) = definition(&del).unwrap();
        assert_eq!(def, None);
        assert_eq!(command_of(&key, None).unwrap(), del);
        let price = Command::PriceSet {
            model: "acme/m-1".into(),
            input: 1,
            output: 2,
            cached: None,
            cache_write: Some(3),
            max_output: Some(4),
        };
        let (key, def) = definition(&price).unwrap();
        assert_eq!(command_of(&key, def.as_ref()).unwrap(), price);
        assert!(command_of("/spendb/v1/pool/x", None).is_err());
    }
}
