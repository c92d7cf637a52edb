//! A cluster node (`spendb serve --etcd … --node …`, docs/CLUSTER.md): the
//! cluster agent's thread beside the engine, and the two links between
//! them — the engine asks the agent for room and for definitions to be
//! written to the store ([`ClusterLink`]), and the agent reads and records
//! grant lines and applies definitions through the engine ([`Local`]).
//! Every decision is the agent's (`cluster/agent.rs`) or the state's
//! (`state/grant.rs`); this file owns the thread, the clock and the
//! channel.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::oneshot;

use crate::cluster::agent::{self, Agent, AgentConfig, AgentStats, Answer, Local, Shortage};
use crate::cluster::escrow::{self, ClusterStatus};
use crate::cluster::kv::{Compare, GlobalStore, KeyValue, KvError, LeaseId, Op, Rev};
use crate::engine::{AlertClaim, Asked, ClusterLink, EngineHandle};
use crate::state::grant::{ClusterView, GrantLine, GrantUse};
use crate::state::outcome::Denied;
use crate::state::{Command, Outcome};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

enum Request {
    Short(Shortage, oneshot::Sender<Asked>),
    Publish(Command, oneshot::Sender<Result<(), String>>),
    Status(oneshot::Sender<Result<ClusterStatus, String>>),
    /// The registered nodes' names (one range).
    LiveNodes(oneshot::Sender<Result<Vec<String>, String>>),
    /// Usage was booked past these lines' grants: charge it to the pools.
    Overdrawn(Vec<(String, u64)>, oneshot::Sender<()>),
    /// What the store says of these lines beyond this node (a BALANCE or
    /// BUDGET.GET shows the cluster's figures).
    View(Vec<String>, oneshot::Sender<ClusterView>),
    /// A watched key changed (None: a watch started).
    Watched(Option<String>),
    /// May this node deliver this alert (its store key)?
    ClaimAlert(String, oneshot::Sender<Result<AlertClaim, String>>),
    /// This node delivered this alert.
    AlertDelivered(String, oneshot::Sender<Result<bool, String>>),
}

/// The store, counting every request this node sends it (the figure the
/// issue's "store operations per node per second" is measured by).
struct Counted {
    inner: Box<dyn GlobalStore + Send>,
    ops: u64,
}

impl GlobalStore for Counted {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, KvError> {
        self.ops += 1;
        self.inner.get(key)
    }
    fn range(&mut self, prefix: &str) -> Result<Vec<KeyValue>, KvError> {
        self.ops += 1;
        self.inner.range(prefix)
    }
    fn count(&mut self, prefix: &str) -> Result<u64, KvError> {
        self.ops += 1;
        self.inner.count(prefix)
    }
    fn txn(&mut self, when: &[Compare], then: &[Op]) -> Result<bool, KvError> {
        self.ops += 1;
        self.inner.txn(when, then)
    }
    fn lease_grant(&mut self, ttl_ms: u64) -> Result<LeaseId, KvError> {
        self.ops += 1;
        self.inner.lease_grant(ttl_ms)
    }
    fn lease_keepalive(&mut self, lease: LeaseId) -> Result<(), KvError> {
        self.ops += 1;
        self.inner.lease_keepalive(lease)
    }
    fn revision(&mut self) -> Result<Rev, KvError> {
        self.ops += 1;
        self.inner.revision()
    }
}

/// What `/v1/cluster` and `/metrics` show of this node.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeView {
    pub node: String,
    pub epoch: u64,
    pub registered: bool,
    /// Whether the last store request was answered.
    pub store_reachable: bool,
    /// Requests sent to the store since start (reads, transactions,
    /// leases).
    pub store_ops: u64,
    pub stats: AgentStats,
    /// This node's grants: key, granted, reported, used (in the period).
    pub grants: Vec<GrantView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GrantView {
    pub key: String,
    pub epoch: u64,
    pub granted: u64,
    pub reported: u64,
    pub used: u64,
    pub u_max: u64,
}

/// The running agent: a handle to ask it things.
pub struct ClusterNode {
    name: String,
    /// Set once the agent has read the cluster's definitions.
    ready: Arc<std::sync::atomic::AtomicBool>,
    tx: Mutex<mpsc::Sender<Request>>,
    view: Arc<Mutex<NodeView>>,
}

struct EngineLocal(EngineHandle);

impl Local for EngineLocal {
    fn uses(&self) -> Result<Vec<GrantUse>, String> {
        self.0.decide_with(|s, now, _| s.grant_uses(now))
    }
    fn confirm(&self, line: GrantLine) -> Result<(), String> {
        self.0
            .decide_with(|s, now, out| s.grant_confirm(now, line, out))
    }
    fn lower(&self, key: &str, keep: u64) -> Result<Option<GrantLine>, String> {
        self.0
            .decide_with(|s, now, out| s.grant_lower(now, key, keep, out))
    }
    fn cut_off(&self, yes: bool) -> Result<(), String> {
        self.0.decide_with(|s, _, _| s.cut_off = yes)
    }
    fn define(&self, cmd: Command) -> Result<(), String> {
        match self.0.execute_blocking(&[cmd], None).remove(0) {
            // A definition this build refuses is refused on every node
            // alike; the store keeps it for the operator to fix.
            Outcome::Refused {
                code: crate::state::ErrorCode::IoErr,
                msg,
            } => Err(msg),
            _ => Ok(()),
        }
    }
}

impl ClusterNode {
    /// Starts the agent's thread on `store` and links it to the engine;
    /// with `watch` (etcd's client URLs), a thread per watched key tells
    /// the agent of recalls and definitions as they happen.
    pub fn start(
        engine: EngineHandle,
        store: Box<dyn GlobalStore + Send>,
        name: &str,
        config: AgentConfig,
        watch: Option<Vec<String>>,
    ) -> std::io::Result<Arc<ClusterNode>> {
        let (tx, rx) = mpsc::channel::<Request>();
        for (key, prefix) in agent::watched_keys()
            .into_iter()
            .filter(|_| watch.is_some())
        {
            let (tx, endpoints) = (tx.clone(), watch.clone().unwrap_or_default());
            std::thread::Builder::new()
                .name("spendb-watch".into())
                .spawn(move || {
                    // Each member in turn, for as long as the agent runs.
                    for endpoint in endpoints.iter().cycle() {
                        let on = |k| tx.send(Request::Watched(k)).is_ok();
                        if crate::cluster::etcd::watch(endpoint, &key, prefix, on) == Ok(false) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(500));
                    }
                })?;
        }
        let view = Arc::new(Mutex::new(NodeView {
            node: name.to_string(),
            ..NodeView::default()
        }));
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let node = Arc::new(ClusterNode {
            ready: ready.clone(),
            name: name.to_string(),
            tx: Mutex::new(tx),
            view: view.clone(),
        });
        let local = EngineLocal(engine.clone());
        let mut store = Counted {
            inner: store,
            ops: 0,
        };
        let mut agent = Agent::new(name, config);
        std::thread::Builder::new()
            .name("spendb-cluster".into())
            .spawn(move || {
                let tick = Duration::from_millis(100);
                let mut last_tick = 0;
                let mut last_alert_view = 0;
                // RESERVEs waiting while other nodes give recalled room back.
                let mut waiting: Vec<Waiting> = Vec::new();
                loop {
                    let wait = if waiting.is_empty() {
                        tick
                    } else {
                        RECALL_POLL
                    };
                    match rx.recv_timeout(wait) {
                        Ok(req) => {
                            if let Some(w) = serve(&mut agent, &mut store, &local, req) {
                                waiting.push(w);
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    let now = now_ms();
                    if now.saturating_sub(last_tick) >= tick.as_millis() as u64 {
                        agent.tick(&mut store, &local, now);
                        last_tick = now;
                    }
                    if agent.registered
                        && agent.reachable
                        && now.saturating_sub(last_alert_view) >= ALERT_VIEW_EVERY_MS
                    {
                        refresh_alert_views(&mut agent, &mut store, &local);
                        last_alert_view = now;
                    }
                    waiting = (waiting.into_iter())
                        .filter_map(|w| poll(&mut agent, &mut store, &local, w, now))
                        .collect();
                    if agent.definitions_loaded {
                        ready.store(true, std::sync::atomic::Ordering::Release);
                    }
                    let fresh = view_of(&agent, &local, store.ops);
                    *view.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                }
            })?;
        engine.set_cluster_link(node.clone());
        Ok(node)
    }

    fn send(&self, req: Request) {
        // A stopped agent drops the reply's sender: the caller sees it.
        let _ = self.tx.lock().unwrap_or_else(|p| p.into_inner()).send(req);
    }

    /// This node's figures, as of the agent's last round.
    pub fn view(&self) -> NodeView {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The names of the nodes registered in the store now (the cluster's
    /// reports: which nodes are live).
    pub async fn live_nodes(&self) -> Result<Vec<String>, String> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::LiveNodes(tx));
        rx.await
            .unwrap_or_else(|_| Err("the cluster agent stopped".into()))
    }

    /// The whole cluster's figures, read from the store now.
    pub async fn status(&self) -> Result<ClusterStatus, String> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Status(tx));
        rx.await
            .unwrap_or_else(|_| Err("the cluster agent stopped".into()))
    }
}

fn view_of(agent: &Agent, local: &EngineLocal, store_ops: u64) -> NodeView {
    let grants = (local.uses().unwrap_or_default().into_iter())
        .filter(|u| u.line.epoch != 0)
        .map(|u| GrantView {
            key: u.line.key(),
            epoch: u.line.epoch,
            granted: u.line.granted,
            reported: u.line.reported,
            used: u.used,
            u_max: u.line.u_max,
        })
        .collect();
    NodeView {
        node: agent.node.name.clone(),
        epoch: agent.node.epoch,
        registered: agent.registered,
        store_reachable: agent.reachable,
        store_ops,
        stats: agent.stats,
        grants,
    }
}

/// How long a RESERVE waits for recalled room, and how often it looks.
const RECALL_WAIT_MS: u64 = agent::RECALL_LIFE_MS;
const RECALL_POLL: Duration = Duration::from_millis(50);

struct Waiting {
    short: Shortage,
    reply: oneshot::Sender<Asked>,
    until: u64,
}

fn asked(agent: &Agent, short: &Shortage, r: Result<Answer, String>) -> Asked {
    match r {
        Ok(Answer::Moved) => Asked::Retry,
        // Room that frees while the answer travels: try again at once
        // (1 ms; a denial's 0 would say "no wait" of a request that did not
        // fit when it was decided).
        Ok(Answer::Dry { frees_at, .. }) => Asked::NoMore {
            retry_after: frees_at.map(|at| at.saturating_sub(now_ms()).max(1)),
        },
        Ok(Answer::Nothing) => Asked::NoMore { retry_after: None },
        Err(e) => {
            tracing::warn!("cluster: asking the store for room of {}: {e}", short.key);
            match agent.reachable {
                false => Asked::Unreachable,
                true => Asked::NoMore { retry_after: None },
            }
        }
    }
}

/// Asks again for a waiting RESERVE: Some while it should wait on.
fn poll(
    agent: &mut Agent,
    store: &mut dyn GlobalStore,
    local: &EngineLocal,
    w: Waiting,
    now: u64,
) -> Option<Waiting> {
    let r = agent.ask(store, local, &w.short, false, now);
    if matches!(r, Ok(Answer::Dry { .. })) && now < w.until {
        return Some(w);
    }
    let _ = w.reply.send(asked(agent, &w.short, r));
    None
}

fn serve(
    agent: &mut Agent,
    store: &mut dyn GlobalStore,
    local: &EngineLocal,
    req: Request,
) -> Option<Waiting> {
    match req {
        Request::Short(short, reply) => {
            let r = agent.ask(store, local, &short, true, now_ms());
            if matches!(r, Ok(Answer::Dry { recalled: true, .. })) {
                let until = now_ms() + RECALL_WAIT_MS;
                return Some(Waiting {
                    short,
                    reply,
                    until,
                });
            }
            let _ = reply.send(asked(agent, &short, r));
        }
        Request::Publish(cmd, reply) => {
            let r = match agent::publish(store, &cmd, now_ms()) {
                Ok(rev) => {
                    agent.published(&cmd, rev.unwrap_or(0));
                    Ok(())
                }
                Err(e) => Err(format!("the cluster store did not take it: {e}")),
            };
            let _ = reply.send(r);
        }
        Request::Watched(key) => agent.watched(key.as_deref()),
        Request::View(keys, reply) => {
            let view = agent.view(store, &keys).map_err(|e| e.to_string());
            let _ = reply.send(view);
        }
        Request::Overdrawn(lines, reply) => {
            if let Err(e) = agent.absorb(store, local, &lines, now_ms()) {
                tracing::warn!("cluster: charging use past the grants of {lines:?}: {e}");
            }
            let _ = reply.send(());
        }
        Request::Status(reply) => {
            let _ = reply.send(escrow::status(store, now_ms()).map_err(|e| e.to_string()));
        }
        Request::LiveNodes(reply) => {
            let names = escrow::nodes(store)
                .map(|ns| ns.into_iter().map(|n| n.node).collect())
                .map_err(|e| e.to_string());
            let _ = reply.send(names);
        }
        Request::ClaimAlert(key, reply) => {
            let me = agent.node.name.clone();
            let r = match crate::cluster::alerts::claim(store, &me, &key) {
                Ok(crate::cluster::alerts::Claim::Mine) => Ok(AlertClaim::Mine),
                Ok(crate::cluster::alerts::Claim::Delivered { by }) => {
                    Ok(AlertClaim::Delivered { by })
                }
                Ok(crate::cluster::alerts::Claim::Held { by }) => Ok(AlertClaim::Held { by }),
                Err(e) => Err(e.to_string()),
            };
            let _ = reply.send(r);
        }
        Request::AlertDelivered(key, reply) => {
            let me = agent.node.name.clone();
            let r = crate::cluster::alerts::delivered(store, &me, &key).map_err(|e| e.to_string());
            let _ = reply.send(r);
        }
    }
    None
}

/// How often the pools that alert thresholds watch are read (two store
/// reads a line), so a threshold fires on the cluster's use.
const ALERT_VIEW_EVERY_MS: u64 = 1_000;

/// Reads the pools of the lines alert thresholds watch and hands them to
/// the state, which checks the thresholds against the cluster's use.
fn refresh_alert_views(agent: &mut Agent, store: &mut dyn GlobalStore, local: &EngineLocal) {
    let keys = match local.0.decide_with(|s, now, _| s.alert_keys(now)) {
        Ok(k) if !k.is_empty() => k,
        _ => return,
    };
    match agent.view(store, &keys) {
        Ok(views) => {
            if let Err(e) = local
                .0
                .decide_with(|s, now, out| s.alerts_seen(now, views, out))
            {
                tracing::warn!("cluster: checking alert thresholds: {e}");
            }
        }
        Err(e) => tracing::debug!("cluster: reading the pools alerts watch: {e}"),
    }
}

impl ClusterLink for ClusterNode {
    fn short(&self, denied: &Denied) -> oneshot::Receiver<Asked> {
        let (tx, rx) = oneshot::channel();
        match Shortage::of(denied, now_ms()) {
            Some(short) => self.send(Request::Short(short, tx)),
            None => {
                let _ = tx.send(Asked::NoMore { retry_after: None });
            }
        }
        rx
    }

    fn view(&self, keys: Vec<String>) -> oneshot::Receiver<ClusterView> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::View(keys, tx));
        rx
    }

    fn overdrawn(&self, lines: Vec<(String, u64)>) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Overdrawn(lines, tx));
        rx
    }

    fn claim_alert(
        &self,
        scope: &str,
        key: &str,
        period: u64,
    ) -> oneshot::Receiver<Result<AlertClaim, String>> {
        let (tx, rx) = oneshot::channel();
        let key = crate::cluster::alerts::alert_key(scope, key, period);
        self.send(Request::ClaimAlert(key, tx));
        rx
    }

    fn alert_delivered(
        &self,
        scope: &str,
        key: &str,
        period: u64,
    ) -> oneshot::Receiver<Result<bool, String>> {
        let (tx, rx) = oneshot::channel();
        let key = crate::cluster::alerts::alert_key(scope, key, period);
        self.send(Request::AlertDelivered(key, tx));
        rx
    }

    fn node(&self) -> &str {
        &self.name
    }

    fn not_ready(&self) -> Option<String> {
        match self.ready.load(std::sync::atomic::Ordering::Acquire) {
            true => None,
            false => Some(format!(
                "node {} has not read the cluster's budgets from etcd yet",
                self.name
            )),
        }
    }

    fn publish(&self, cmd: &Command) -> Option<oneshot::Receiver<Result<(), String>>> {
        agent::definition(cmd)?;
        let (tx, rx) = oneshot::channel();
        self.send(Request::Publish(cmd.clone(), tx));
        Some(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_rolling_pool_says_when_room_frees_never_zero() {
        let agent = Agent::new("n", AgentConfig::new(3_000));
        let short = Shortage {
            key: "org:a|REQUESTS|ROLLING 10s|0".into(),
            by: 1,
            report: false,
            amount: 1,
        };
        let dry = |frees_at| {
            Ok(Answer::Dry {
                frees_at,
                recalled: false,
            })
        };
        // Freed while the answer travelled: try again at once.
        let past = now_ms() - 5;
        assert_eq!(
            asked(&agent, &short, dry(Some(past))),
            Asked::NoMore {
                retry_after: Some(1)
            }
        );
        let Asked::NoMore {
            retry_after: Some(ms),
        } = asked(&agent, &short, dry(Some(now_ms() + 60_000)))
        else {
            panic!("a dry pool's answer says when");
        };
        assert!((59_000..=60_000).contains(&ms), "{ms}");
        assert_eq!(
            asked(&agent, &short, dry(None)),
            Asked::NoMore { retry_after: None }
        );
    }
}
