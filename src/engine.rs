//! The engine: the single owner of the state and of the store.
//!
//! - A front end calls [`EngineHandle::execute_as`]: under the engine's lock
//!   its commands are applied to the state in order, their ledger entries are
//!   queued, and the replies are computed; then the caller waits, off the
//!   lock, until everything it could have seen is durable.
//! - The **committer** thread takes every queued entry at once, writes them
//!   as one batch and syncs once (group commit), then publishes the durable
//!   position, which releases the waiting replies. While it syncs, new
//!   commands keep being applied and queue up for the next batch. Hold expiry
//!   and snapshots run on the committer.
//!
//! Why a lock and not a channel to an engine thread (the first design):
//! measured on the 2-core machine, handing every request to another thread
//! and back cost ~8 µs of CPU per RESERVE, more than the apply itself; the
//! lock is held for microseconds and the only thread hand-off left is one
//! wake-up per group commit (docs/BENCHMARKS.md).
//!
//! A failed write or sync: the batch is rolled back on disk, the state is
//! rebuilt from the store, and every reply not yet released (the batch, and
//! whatever was applied on top of it) becomes `IOERR`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::state::grant::ClusterView;
use crate::state::limit::Blocker;
use crate::state::outcome::Denied;
use crate::state::{Access, Command, Config, Entry, ErrorCode, Outcome, State, Value};
use crate::store::recovery::{self, encode_snapshot, RecoveryInfo};
use crate::store::{SnapshotSink, Storage, StoreError};

/// When an acknowledged write is on stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Reply only after the batch is fsynced (default).
    Fsync,
    /// Sync at most this many ms apart; a crash can lose that much.
    Interval(u64),
    /// Never sync explicitly (tests and benchmarks that say so).
    None,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "none" => Ok(Durability::None),
            _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(Durability::Interval(ms)),
                _ => Err(format!(
                    "'{s}': expected fsync, interval:<ms> (ms > 0) or none"
                )),
            },
        }
    }
}

/// The clock the engine reads (ms since the Unix epoch); replaceable for
/// simulation.
pub type Clock = Box<dyn Fn() -> u64 + Send>;

pub fn system_clock() -> Clock {
    Box::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    })
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub durability: Durability,
    pub rules: Config,
    /// Write a snapshot after this many ledger entries, or as many as the
    /// state's records if that is more (0: only at shutdown).
    pub snapshot_every: u64,
    /// Keep at least this many newest entries in the live ledger; older
    /// closed segments that every snapshot covers go to the archive (None:
    /// keep everything live).
    pub retain_entries: Option<u64>,
    /// Who writes a group in `fsync` mode (the other modes always use the
    /// committer thread).
    pub group_commit: GroupCommit,
}

/// Who writes and syncs a group commit in `fsync` mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupCommit {
    /// The caller that finds no write in flight writes the group itself, on
    /// its own thread, and releases everyone queued behind it; the next
    /// group is led by the oldest caller waiting (a leader hands over to a
    /// follower). No hand-off to another thread when one caller is alone.
    Leader,
    /// The committer thread writes every group and wakes the callers.
    Thread,
}

impl std::str::FromStr for GroupCommit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "leader" => Ok(GroupCommit::Leader),
            "thread" => Ok(GroupCommit::Thread),
            _ => Err(format!("'{s}': expected leader or thread")),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            durability: Durability::Fsync,
            rules: Config::default(),
            snapshot_every: 100_000,
            retain_entries: None,
            group_commit: GroupCommit::Leader,
        }
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl EngineStats {
    fn saved(&self) {
        self.last_snapshot_at.store(unix_secs(), Ordering::Relaxed);
        self.snapshots_saved.fetch_add(1, Ordering::Release);
    }
}

/// Counters the engine keeps for INFO and metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Group commits (ledger batches written).
    pub batches: AtomicU64,
    pub commands: AtomicU64,
    pub entries: AtomicU64,
    pub syncs: AtomicU64,
    pub last_seq: AtomicU64,
    pub open_holds: AtomicU64,
    pub write_errors: AtomicU64,
    /// Writes are being refused after a failed write (see `Core::degraded`).
    pub degraded: AtomicBool,
    /// Snapshots stored since start, and when the last was (unix seconds;
    /// the start until one is): SAVE waits on the first, LASTSAVE reads the
    /// second.
    pub snapshots_saved: AtomicU64,
    pub last_snapshot_at: AtomicU64,
    /// Outcomes, latencies and group commit figures for `/metrics`.
    pub metrics: crate::metrics::Metrics,
}

struct Core {
    state: State,
    clock: Clock,
    last_now: u64,
    /// Entries applied but not yet taken by the committer.
    pending: Vec<Entry>,
    commands: u64,
    /// The committer is waiting for entries (so it needs a wake-up).
    committer_idle: bool,
    /// Every entry up to this seq is written (and synced, in fsync mode).
    durable: u64,
    /// Callers waiting for their replies to be released, in seq order: each
    /// is sent `Durable` once `durable` reaches its seq, `Failed` if the
    /// write failed, or `Lead` to write the next group itself.
    waiters: std::collections::VecDeque<(u64, oneshot::Sender<Release>)>,
    /// Callers lead group commits (fsync mode, `GroupCommit::Leader`, the
    /// threaded engine).
    leaders: bool,
    /// A caller is writing a group, or has been told to lead the next one:
    /// entries queued meanwhile are its successor's to write. Invariant:
    /// while it is false, no entry is pending that no one will write (a
    /// caller that queues one then leads, or the committer was woken).
    writing: bool,
    shutdown: bool,
    /// Set when a ledger write failed, until a probe write succeeds: writes
    /// are refused at once and reads answered from the state as of the last
    /// durable entry (its time frozen, so they cause no expiry entries).
    degraded: Option<String>,
    /// Told when the committer has stopped.
    stopped: Vec<oneshot::Sender<()>>,
    /// SAVE / BGSAVE asked for a snapshot now.
    snapshot_asked: bool,
    /// The committer has stopped (a later shutdown has nothing to wait for).
    committer_done: bool,
    /// Set when the store can be neither rolled back nor recovered after a
    /// failed write: the state may not match the ledger, so nothing is
    /// answered any more and the engine stops; `spendb serve` exits with it.
    fatal: Option<String>,
}

impl Core {
    /// After commands queued entries beyond `before`: wakes the committer
    /// if it waits for work, and returns what releases the caller once the
    /// ledger holds everything it could have observed (the whole ledger so
    /// far, other callers' entries not yet written included); None when
    /// that is durable already.
    fn queued(&mut self, before: usize, work: &Condvar) -> Option<(u64, Wait)> {
        let seq = self.state.next_seq - 1;
        // Nothing past the durable position: nothing queued either.
        if seq <= self.durable {
            return None;
        }
        if self.leaders {
            if !self.writing {
                // No write in flight: this caller writes the group.
                self.writing = true;
                return Some((seq, Wait::Lead));
            }
        } else if self.pending.len() > before && self.committer_idle {
            self.committer_idle = false;
            work.notify_one();
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push_back((seq, tx));
        Some((seq, Wait::Follow(rx)))
    }

    /// A leader's group is written (or it gave up its turn): the oldest
    /// caller still waiting leads the next group if entries are pending;
    /// otherwise no one writes until the next caller queues one.
    fn pass_leadership(&mut self, work: &Condvar) {
        debug_assert!(self.leaders && self.writing);
        if !self.pending.is_empty() && !self.shutdown && self.degraded.is_none() {
            while let Some((_, tx)) = self.waiters.pop_front() {
                // A caller that went away cannot lead (and needs no reply).
                if tx.send(Release::Lead).is_ok() {
                    return;
                }
            }
        }
        self.writing = false;
        if !self.pending.is_empty() && self.committer_idle {
            // Shutting down, degraded, or no one left waiting: the
            // committer thread writes (or refuses) what is queued.
            self.committer_idle = false;
            work.notify_one();
        }
    }

    fn now(&mut self) -> u64 {
        // Never let time run backwards, whatever the system clock does.
        self.last_now = (self.clock)().max(self.last_now);
        self.last_now
    }
}

struct Shared {
    core: Mutex<Core>,
    work: Condvar,
    /// The ledger's writer. The committer thread and, in leader mode, the
    /// caller leading a group take turns holding it (lock order: `writer`,
    /// then `core`). None in manual mode (the `ManualCommitter` owns it) and
    /// once the committer thread has stopped.
    writer: Mutex<Option<Committer>>,
    /// Cluster mode's link (`crate::node`), set once at start.
    link: std::sync::OnceLock<Arc<dyn ClusterLink>>,
    /// Where every group of entries goes once durable (the reports'
    /// rollups, `store::rollups`), set once at start.
    tap: std::sync::OnceLock<Tap>,
}

/// What cluster mode adds to a command's path (`crate::node` implements
/// it): room from the global store for a RESERVE this node's grants are
/// short of, and the store's copy of every definition.
pub trait ClusterLink: Send + Sync {
    /// A RESERVE was denied for want of grant room or of a report
    /// (`Blocker::Grant`, `Blocker::Unreported`): the answer comes once the
    /// cluster agent has asked the store.
    fn short(&self, denied: &Denied) -> oneshot::Receiver<Asked>;
    /// Some for a definition (BUDGET.SET / DEL, PRICE.SET): the answer
    /// comes once the store holds it (Err: refuse the command).
    fn publish(&self, cmd: &Command) -> Option<oneshot::Receiver<Result<(), String>>>;
    /// Usage was booked past this node's grants of these lines (SPEND, a
    /// COMMIT past its hold or after it expired; `State::overdrawn`): the
    /// answer comes once the agent has charged it to the shared pools, or
    /// could not (its rounds go on trying).
    fn overdrawn(&self, lines: Vec<(String, u64)>) -> oneshot::Receiver<()>;
    /// What the store says of these lines beyond this node
    /// (`State::view_keys`), for a BALANCE or BUDGET.GET to show the
    /// cluster's figures.
    fn view(&self, keys: Vec<String>) -> oneshot::Receiver<ClusterView>;
    /// Claims the delivery of this node's alert (its scope, rule key and
    /// period) for the cluster: one node delivers each (issue #29).
    fn claim_alert(
        &self,
        scope: &str,
        key: &str,
        period: u64,
    ) -> oneshot::Receiver<Result<AlertClaim, String>>;
    /// This node delivered that alert (Ok(false): another node had taken
    /// the claim over meanwhile).
    fn alert_delivered(
        &self,
        scope: &str,
        key: &str,
        period: u64,
    ) -> oneshot::Receiver<Result<bool, String>>;
    /// This node's name (a hold another node granted is not here).
    fn node(&self) -> &str;
    /// Why the node may not grant yet (it has not read the cluster's
    /// definitions since it started), or None.
    fn not_ready(&self) -> Option<String>;
}

/// Who delivers an alert in a cluster (`ClusterLink::claim_alert`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlertClaim {
    /// This node: deliver it.
    Mine,
    /// Delivered already, by this node: record it, send nothing.
    Delivered { by: String },
    /// Another live node holds it: wait.
    Held { by: String },
}

/// What asking the global store for room did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    /// Room was granted or usage reported: decide the RESERVE again.
    Retry,
    /// The store had nothing more to give (a rolling window's pool: for
    /// `retry_after` ms, when its oldest charge ages out).
    NoMore { retry_after: Option<u64> },
    /// The store could not be reached.
    Unreachable,
}

/// Takes each group of entries the ledger has made durable, in order.
pub type Tap = Box<dyn Fn(Vec<Entry>) + Send + Sync>;

/// Whether cluster mode writes `cmd` to the global store first.
fn link_publishes(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::BudgetSet { .. }
            | Command::BudgetDel { .. }
            | Command::PriceSet { .. }
            | Command::AlertRulesSet { .. }
    )
}

/// Whether cluster mode shows the cluster's figures in `cmd`'s reply,
/// read from the global store first.
fn shows_cluster(cmd: &Command) -> bool {
    matches!(cmd, Command::Balance { .. } | Command::BudgetGet { .. })
}

/// How many times one RESERVE asks for room (or a report) before its
/// denial stands: near a dry pool one RESERVE may need both, more than once.
const MAX_ASKS: u32 = 8;

fn is_short(o: &Outcome) -> Option<&Denied> {
    match o {
        Outcome::Denied(d) if matches!(d.reason, Blocker::Grant | Blocker::Unreported) => Some(d),
        _ => None,
    }
}

impl Shared {
    /// Sends every waiter whose seq is durable its go-ahead (outside the
    /// lock: waking a task is a syscall when its worker sleeps).
    fn release_durable(&self) {
        let released: Vec<_> = {
            let mut core = self.lock();
            let durable = core.durable;
            let n = core.waiters.partition_point(|(seq, _)| *seq <= durable);
            core.waiters.drain(..n).collect()
        };
        for (_, tx) in released {
            let _ = tx.send(Release::Durable);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves no half-applied command
        // (apply either emits its entries or not), so poisoning is ignored.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Replies of submitted commands: final, or to be released once the ledger
/// holds what they saw (or its write failed: IOERR).
pub enum Submitted {
    Done(Vec<Outcome>),
    Waiting(Vec<Outcome>, Durable),
}

/// What a waiting caller is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Everything it saw is durable.
    Durable,
    /// The write failed: its commands were not applied.
    Failed,
    /// Leader mode: write the next group (`Durable::wait` does).
    Lead,
}

enum Wait {
    /// Write the group now (no write was in flight).
    Lead,
    /// Wait for the writer of the group.
    Follow(oneshot::Receiver<Release>),
    Settled,
}

/// The wait of a caller whose replies are released once the ledger holds
/// everything up to `seq`. Dropped without waiting (a caller that went
/// away), it passes a turn to lead on, so no group is left unwritten.
pub struct Durable {
    shared: Arc<Shared>,
    seq: u64,
    wait: Wait,
}

impl Durable {
    /// Waits (async) until released: Ok(true) durable, Ok(false) failed,
    /// Err when the engine shut down first.
    pub async fn wait(mut self) -> Result<bool, oneshot::error::RecvError> {
        loop {
            if let Wait::Follow(rx) = &mut self.wait {
                // Polled in place: dropped while it waits, `Drop` finds a
                // turn to lead that arrived meanwhile and passes it on.
                match rx.await? {
                    Release::Lead => self.wait = Wait::Lead,
                    release => {
                        self.wait = Wait::Settled;
                        return Ok(release == Release::Durable);
                    }
                }
            }
            debug_assert!(matches!(self.wait, Wait::Lead), "waited once");
            // Before writing, let the runtime read the requests that have
            // arrived: they join this group instead of waiting for the next
            // sync. On one worker (`--workers 1`) nothing else would run
            // until the sync is done, and every group would be one caller
            // (docs/BENCHMARKS.md, "Issue #18", "Third session"); on two,
            // over TCP at 50 connections, it measured 12 % more RESERVEs/s.
            // Dropped here, `Drop` passes the turn on.
            tokio::task::yield_now().await;
            self.wait = Wait::Settled;
            if let Some(written) = self.lead() {
                return Ok(written);
            }
        }
    }

    /// `wait` for a plain thread.
    pub fn wait_blocking(mut self) -> Result<bool, oneshot::error::RecvError> {
        loop {
            let release = match std::mem::replace(&mut self.wait, Wait::Settled) {
                Wait::Lead => Release::Lead,
                Wait::Follow(rx) => rx.blocking_recv()?,
                Wait::Settled => unreachable!("waited once"),
            };
            if let Some(written) = self.on_release(release) {
                return Ok(written);
            }
        }
    }

    /// What a release means: the answer (durable or not), or, after
    /// leading, None when this caller must wait again (`self.wait`).
    fn on_release(&mut self, release: Release) -> Option<bool> {
        match release {
            Release::Durable => Some(true),
            Release::Failed => Some(false),
            Release::Lead => self.lead(),
        }
    }

    /// Without waiting: the release if it came (the simulation polls).
    pub fn try_release(&mut self) -> Result<Release, oneshot::error::TryRecvError> {
        match &mut self.wait {
            Wait::Follow(rx) => {
                let r = rx.try_recv();
                if r.is_ok() {
                    self.wait = Wait::Settled;
                }
                r
            }
            Wait::Lead => Ok(Release::Lead),
            Wait::Settled => unreachable!("released once"),
        }
    }

    /// Writes every pending entry as one group on this thread, then passes
    /// the turn on: Some(true) when the ledger holds this caller's `seq`,
    /// Some(false) when the write failed. None when shutting down: the
    /// committer thread writes what is queued, and this caller waits for it
    /// as a follower (`self.wait`).
    fn lead(&mut self) -> Option<bool> {
        let shared = &*self.shared;
        let written = {
            let mut writer = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
            match writer.as_mut() {
                Some(c) => c.lead_round(),
                None => true, // stopped: the shutdown wrote what was queued
            }
        };
        let mut core = shared.lock();
        let durable = core.durable >= self.seq;
        let answer = if written && !durable && core.shutdown && !core.committer_done {
            let (tx, rx) = oneshot::channel();
            let at = core.waiters.partition_point(|(s, _)| *s <= self.seq);
            core.waiters.insert(at, (self.seq, tx));
            self.wait = Wait::Follow(rx);
            None
        } else {
            Some(written && durable)
        };
        core.pass_leadership(&shared.work);
        answer
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        let lead = match &mut self.wait {
            Wait::Lead => true,
            Wait::Follow(rx) => {
                // No send can land after close: a turn to lead already
                // sent is in the channel, or never comes.
                rx.close();
                matches!(rx.try_recv(), Ok(Release::Lead))
            }
            Wait::Settled => false,
        };
        if lead {
            self.shared.lock().pass_leadership(&self.shared.work);
        }
    }
}

/// A cheap, cloneable handle for running commands.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
    pub stats: Arc<EngineStats>,
}

/// Replies released (`Ok(true)`), failed with the batch's write, or cut by
/// a shutdown.
fn settle(
    replies: Vec<Outcome>,
    released: Result<bool, oneshot::error::RecvError>,
) -> Vec<Outcome> {
    match released {
        Ok(true) => replies,
        Ok(false) => {
            let msg = "the ledger write failed; this command was not applied";
            vec![Outcome::refused(ErrorCode::IoErr, msg); replies.len()]
        }
        Err(_) => shutting_down(replies.len()),
    }
}

fn shutting_down(n: usize) -> Vec<Outcome> {
    vec![Outcome::refused(ErrorCode::Shutdown, "the server is shutting down"); n]
}

impl EngineHandle {
    /// Runs commands in order and returns their replies, after the entries
    /// they caused are durable (per the durability mode).
    pub async fn execute(&self, cmds: Vec<Command>) -> Vec<Value> {
        let outcomes = self.execute_as(cmds, None).await;
        outcomes.into_iter().map(Value::from).collect()
    }

    /// `execute` for a caller limited to some scopes.
    pub async fn execute_as(
        &self,
        cmds: Vec<Command>,
        access: Option<Arc<Access>>,
    ) -> Vec<Outcome> {
        self.execute_slice_as(&cmds, access).await
    }

    /// `execute_as` that leaves the commands with the caller.
    pub async fn execute_slice_as(
        &self,
        cmds: &[Command],
        access: Option<Arc<Access>>,
    ) -> Vec<Outcome> {
        let Some(link) = self.shared.link.get() else {
            return match self.submit(cmds, access) {
                Submitted::Done(replies) => replies,
                Submitted::Waiting(replies, released) => settle(replies, released.wait().await),
            };
        };
        // Cluster mode: in order, a definition goes to the store first, and
        // a RESERVE short of grant room waits for the agent to ask the store
        // (at most MAX_ASKS times), then is decided again.
        let mut out = Vec::with_capacity(cmds.len());
        let mut asks = 0;
        let mut unreachable = false;
        // When a rolling window's pool frees room, if that is why the
        // store had no more.
        let mut frees_in: Option<u64> = None;
        // A node that has not read the cluster's definitions grants nothing.
        let not_ready = link.not_ready();
        let stops_here = |c: &Command| {
            link_publishes(c)
                || shows_cluster(c)
                || (not_ready.is_some() && matches!(c, Command::Reserve(_)))
        };
        while out.len() < cmds.len() {
            let at = out.len();
            if let (Some(why), Command::Reserve(_)) = (&not_ready, &cmds[at]) {
                out.push(Outcome::refused(ErrorCode::ClusterDown, why.clone()));
                continue;
            }
            if link_publishes(&cmds[at]) {
                // Refused whatever the state: refused here, never written.
                if let Err((code, msg)) = State::check_definition(&cmds[at], access.as_deref()) {
                    out.push(Outcome::refused(code, msg));
                    continue;
                }
                if let Some(rx) = link.publish(&cmds[at]) {
                    let written = rx
                        .await
                        .unwrap_or_else(|_| Err("the cluster agent stopped".into()));
                    if let Err(e) = written {
                        out.push(Outcome::refused(ErrorCode::ClusterDown, e));
                        continue;
                    }
                }
            }
            let end = at
                + 1
                + cmds[at + 1..]
                    .iter()
                    .position(stops_here)
                    .unwrap_or(cmds.len() - at - 1);
            // A read of the cluster's figures reads the store first.
            let view = match shows_cluster(&cmds[at]) {
                true => {
                    let keys = {
                        let mut core = self.shared.lock();
                        let now = core.now();
                        core.state.view_keys(now, &cmds[at])
                    };
                    Some(match keys.is_empty() {
                        true => Ok(Default::default()),
                        false => (link.view(keys).await)
                            .unwrap_or_else(|_| Err("the cluster agent stopped".into())),
                    })
                }
                false => None,
            };
            let (sub, short, overdrawn) =
                self.submit_until(&cmds[at..end], access.clone(), asks < MAX_ASKS, view);
            let mut replies = match sub {
                Submitted::Done(r) => r,
                Submitted::Waiting(r, released) => settle(r, released.wait().await),
            };
            // Usage booked past this node's grants is charged to the shared
            // pools before it is acknowledged, so a client that goes on to
            // another node finds it counted there.
            if !overdrawn.is_empty() {
                let _ = link.overdrawn(overdrawn).await;
            }
            // The store could not be asked: the denial says so; or it had
            // no room until a rolling window frees some: it says when.
            if let Some(Outcome::Denied(d)) = replies.first_mut() {
                if unreachable && matches!(d.reason, Blocker::Grant | Blocker::Unreported) {
                    d.reason = Blocker::StoreUnreachable;
                }
                if let (Some(ms), Blocker::Grant) = (frees_in, d.reason) {
                    d.retry_after = Some(ms);
                }
            }
            if !replies.is_empty() {
                asks = 0;
                unreachable = false;
                frees_in = None;
            }
            out.extend(replies);
            if let Some(d) = short {
                match link.short(&d).await.unwrap_or(Asked::Unreachable) {
                    Asked::Retry => asks += 1,
                    Asked::NoMore { retry_after } => {
                        asks = MAX_ASKS;
                        frees_in = retry_after;
                    }
                    Asked::Unreachable => {
                        asks = MAX_ASKS;
                        unreachable = true;
                    }
                }
            }
        }
        // Holds live on the node that granted them (Redis Cluster's MOVED,
        // without the address: a sidecar's clients talk to their own node).
        for (cmd, o) in cmds.iter().zip(out.iter_mut()) {
            if let (
                Command::Commit { .. } | Command::Release { .. } | Command::HoldGet { .. },
                Outcome::Refused {
                    code: ErrorCode::Unknown,
                    msg,
                },
            ) = (cmd, o)
            {
                msg.push_str(&format!(
                    " on node {} (a hold is settled on the node that granted it)",
                    link.node()
                ));
            }
        }
        out
    }

    /// Hands every group of entries to `tap` once durable, from now on
    /// (once, at start; what was written before is the tap's to read).
    pub fn set_tap(&self, tap: Tap) {
        if self.shared.tap.set(tap).is_err() {
            panic!("the tap is set once");
        }
    }

    /// Connects cluster mode (once, at start).
    pub fn set_cluster_link(&self, link: Arc<dyn ClusterLink>) {
        if self.shared.link.set(link).is_err() {
            panic!("the cluster link is set once");
        }
    }

    /// Whether a caller holds the turn to write the next group (leader
    /// mode). False whenever nothing is queued: a turn is never lost.
    pub fn turn_taken(&self) -> bool {
        self.shared.lock().writing
    }

    /// Cluster mode's link (None on a single node).
    pub fn cluster_link(&self) -> Option<Arc<dyn ClusterLink>> {
        self.shared.link.get().cloned()
    }

    /// Whether this engine is a cluster node's.
    pub fn is_clustered(&self) -> bool {
        self.shared.link.get().is_some()
    }

    /// Runs `f` on the state under the engine's lock at the engine's time,
    /// queueing the entries it emits, and blocks until they are durable (a
    /// plain thread: the cluster agent). Err when writes are refused.
    pub fn decide_with<R>(
        &self,
        f: impl FnOnce(&mut State, u64, &mut Vec<Entry>) -> R,
    ) -> Result<R, String> {
        let (r, rx) = {
            let mut guard = self.shared.lock();
            let core = &mut *guard;
            if let Some(reason) = core.fatal.as_ref().or(core.degraded.as_ref()) {
                return Err(format!("the ledger cannot be written: {reason}"));
            }
            if core.shutdown {
                return Err("the server is shutting down".into());
            }
            let now = core.now();
            let before = core.pending.len();
            let r = f(&mut core.state, now, &mut core.pending);
            match core.queued(before, &self.shared.work) {
                None => return Ok(r),
                Some((seq, wait)) => (
                    r,
                    Durable {
                        shared: self.shared.clone(),
                        seq,
                        wait,
                    },
                ),
            }
        };
        match rx.wait_blocking() {
            Ok(true) => Ok(r),
            _ => Err("the ledger write failed".into()),
        }
    }

    /// `execute_as` for a plain thread (the embedded API): blocks until the
    /// entries are durable. Not from inside an async runtime (it would
    /// block the runtime's thread): use `execute_as` there.
    pub fn execute_blocking(&self, cmds: &[Command], access: Option<Arc<Access>>) -> Vec<Outcome> {
        match self.submit(cmds, access) {
            Submitted::Done(replies) => replies,
            Submitted::Waiting(replies, released) => settle(replies, released.wait_blocking()),
        }
    }

    /// Asks for a snapshot now (SAVE, BGSAVE): the committer takes one at
    /// its next round, after any being written. Returns the snapshots
    /// stored so far, to wait for the count to pass.
    pub fn snapshot_now(&self) -> u64 {
        let saved = self.stats.snapshots_saved.load(Ordering::Acquire);
        let mut core = self.shared.lock();
        core.snapshot_asked = true;
        if core.committer_idle {
            core.committer_idle = false;
            self.shared.work.notify_one();
        }
        saved
    }

    /// Runs `f` on the state under the engine's lock (tests, simulation).
    pub fn inspect<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.shared.lock().state)
    }

    /// Whether entries are applied but not yet taken by the committer.
    pub fn has_pending(&self) -> bool {
        !self.shared.lock().pending.is_empty()
    }

    /// Applies commands and returns their replies, and whether they must
    /// wait for the ledger (the first half of `execute_as`; the simulation
    /// drives it directly).
    pub fn submit(&self, cmds: &[Command], access: Option<Arc<Access>>) -> Submitted {
        self.submit_until(cmds, access, false, None).0
    }

    /// `submit`, stopping before a RESERVE short of grant room when
    /// `stop_short` (cluster mode): that one is not among the replies, and
    /// its denial is returned to ask the store with; and the lines the
    /// commands took past their grants (cluster mode, `State::overdrawn`).
    fn submit_until(
        &self,
        cmds: &[Command],
        access: Option<Arc<Access>>,
        stop_short: bool,
        view: Option<ClusterView>,
    ) -> (Submitted, Option<Denied>, Vec<(String, u64)>) {
        let mut short = None;
        let mut overdrawn = Vec::new();
        let submitted = {
            let mut guard = self.shared.lock();
            let core = &mut *guard;
            if let Some(reason) = &core.fatal {
                let msg = format!("the engine stopped after a storage failure: {reason}");
                return (
                    Submitted::Done(vec![Outcome::refused(ErrorCode::IoErr, msg); cmds.len()]),
                    None,
                    overdrawn,
                );
            }
            if core.shutdown {
                return (Submitted::Done(shutting_down(cmds.len())), None, overdrawn);
            }
            if let Some(reason) = &core.degraded {
                let msg = format!(
                    "the ledger cannot be written ({reason}); writes are refused until the disk \
                     takes them again (checked every second), reads are answered"
                );
                let frozen = core.state.last_ts;
                let mut none = Vec::new();
                let replies = cmds
                    .iter()
                    .map(|c| {
                        if c.is_read() {
                            core.state.decide(frozen, c, access.as_deref(), &mut none)
                        } else {
                            Outcome::refused(ErrorCode::IoErr, msg.clone())
                        }
                    })
                    .collect();
                debug_assert!(
                    none.is_empty(),
                    "a read at the last entry's time writes nothing"
                );
                return (Submitted::Done(replies), None, overdrawn);
            }
            let now = core.now();
            let before = core.pending.len();
            let mut replies: Vec<Outcome> = Vec::with_capacity(cmds.len());
            // An input for this call's commands only (the lock is held).
            core.state.cluster_view = view;
            for c in cmds {
                let o = core
                    .state
                    .decide(now, c, access.as_deref(), &mut core.pending);
                if stop_short {
                    if let Some(d) = is_short(&o) {
                        short = Some(d.clone());
                        break;
                    }
                }
                replies.push(o);
            }
            core.commands += replies.len() as u64;
            core.state.cluster_view = None;
            if !core.state.overdrawn.is_empty() {
                overdrawn.extend(std::mem::take(&mut core.state.overdrawn));
            }
            match core.queued(before, &self.shared.work) {
                None => Submitted::Done(replies),
                Some((seq, wait)) => Submitted::Waiting(
                    replies,
                    Durable {
                        shared: self.shared.clone(),
                        seq,
                        wait,
                    },
                ),
            }
        };
        (submitted, short, overdrawn)
    }

    /// Writes what is queued, snapshots, syncs and stops the committer.
    /// Why the engine stopped on its own (a storage failure it could not
    /// recover from), if it did.
    pub fn fatal(&self) -> Option<String> {
        self.shared.lock().fatal.clone()
    }

    /// Waits until the engine stops on its own; returns why.
    pub async fn stopped_on_failure(&self) -> String {
        loop {
            if let Some(reason) = self.fatal() {
                return reason;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Finishes the queued commands, writes a last snapshot and stops the
    /// committer; later commands are refused (`SHUTDOWN`).
    pub async fn shutdown(&self) {
        let _ = self.begin_shutdown().await;
    }

    /// `shutdown` for a plain thread (not inside an async runtime).
    pub fn shutdown_blocking(&self) {
        let _ = self.begin_shutdown().blocking_recv();
    }

    fn begin_shutdown(&self) -> oneshot::Receiver<()> {
        let mut core = self.shared.lock();
        core.shutdown = true;
        let (tx, rx) = oneshot::channel();
        if core.committer_done {
            let _ = tx.send(());
        } else {
            core.stopped.push(tx);
        }
        self.shared.work.notify_one();
        rx
    }
}

/// Recovers the state from `store` and starts the committer thread.
pub fn start(
    store: Box<dyn Storage>,
    config: EngineConfig,
    clock: Clock,
) -> Result<(EngineHandle, std::thread::JoinHandle<()>, RecoveryInfo), StoreError> {
    let sink = store.snapshot_sink()?;
    let leaders =
        config.durability == Durability::Fsync && config.group_commit == GroupCommit::Leader;
    let (handle, mut committer, info) = build(store, config, clock)?;
    committer.snapshots = Snapshotter::start(sink, committer.stats.clone())?;
    handle.shared.lock().leaders = leaders;
    *handle
        .shared
        .writer
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(committer);
    let shared = handle.shared.clone();
    let thread = std::thread::Builder::new()
        .name("spendb-commit".into())
        .spawn(move || run_committer(&shared))?;
    Ok((handle, thread, info))
}

/// The engine without threads, for deterministic simulation: the caller
/// submits commands (`EngineHandle::submit`) and runs the committer's rounds
/// itself (`ManualCommitter::step`); snapshots are stored inline. Time is the
/// `clock` given, and nothing else is read from the outside world.
pub fn start_manual(
    store: Box<dyn Storage>,
    config: EngineConfig,
    clock: Clock,
) -> Result<(EngineHandle, ManualCommitter, RecoveryInfo), StoreError> {
    let sink = store.snapshot_sink()?;
    let (handle, mut committer, info) = build(store, config, clock)?;
    committer.snapshots.inline = Some(sink);
    Ok((handle, ManualCommitter { committer }, info))
}

/// The committer of `start_manual`, run by hand.
pub struct ManualCommitter {
    committer: Committer,
}

impl ManualCommitter {
    /// One round: while writes are refused, a probe of the disk; otherwise
    /// expire due holds, write (and sync, per the durability mode) whatever
    /// is queued as one group, release its replies, and snapshot if due.
    pub fn step(&mut self) {
        let c = &mut self.committer;
        if c.shared.lock().degraded.is_some() {
            c.probe_disk();
            return;
        }
        let shared = c.shared.clone();
        let taken = c.try_take(&mut shared.lock());
        if let Some((entries, now, snapshot, _)) = taken {
            c.round(entries, now, snapshot);
        }
    }
}

fn build(
    mut store: Box<dyn Storage>,
    config: EngineConfig,
    clock: Clock,
) -> Result<(EngineHandle, Committer, RecoveryInfo), StoreError> {
    let recovered = recovery::recover(&mut *store, config.rules.clone())?;
    let info = recovered.info();
    let state = recovered.state;
    let stats = Arc::new(EngineStats::default());
    stats.last_snapshot_at.store(unix_secs(), Ordering::Relaxed);
    let last = state.next_seq - 1;
    stats.last_seq.store(last, Ordering::Relaxed);
    stats
        .open_holds
        .store(state.open_hold_count() as u64, Ordering::Relaxed);
    let shared = Arc::new(Shared {
        core: Mutex::new(Core {
            state,
            clock,
            last_now: 0,
            pending: Vec::new(),
            commands: 0,
            committer_idle: false,
            durable: last,
            waiters: Default::default(),
            leaders: false,
            writing: false,
            shutdown: false,
            degraded: None,
            stopped: Vec::new(),
            snapshot_asked: false,
            committer_done: false,
            fatal: None,
        }),
        work: Condvar::new(),
        writer: Mutex::new(None),
        link: std::sync::OnceLock::new(),
        tap: std::sync::OnceLock::new(),
    });
    let committer = Committer {
        shared: shared.clone(),
        store,
        config,
        stats: stats.clone(),
        last_sync: 0,
        dirty: false,
        since_snapshot: info.replayed,
        commands_seen: 0,
        snapshot_copy: Duration::ZERO,
        snapshots: Snapshotter::idle(),
    };
    Ok((EngineHandle { shared, stats }, committer, info))
}

struct Committer {
    shared: Arc<Shared>,
    store: Box<dyn Storage>,
    config: EngineConfig,
    stats: Arc<EngineStats>,
    last_sync: u64,
    /// Entries written but not yet synced (interval / none modes).
    dirty: bool,
    since_snapshot: u64,
    commands_seen: u64,
    /// How long the last snapshot held the engine's lock (copying the state).
    snapshot_copy: Duration,
    snapshots: Snapshotter,
}

/// The thread that encodes and stores snapshots, so that neither the lock
/// nor the ledger waits for a large one (measured: 1.1M holds, 78 MB, took
/// 57 ms to copy under the lock, then 350 ms to encode and 480 ms to store).
struct Snapshotter {
    tx: Option<mpsc::SyncSender<(State, Duration)>>,
    /// A snapshot is being written; the next is skipped until it is done.
    busy: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Manual mode: snapshots are stored by the committer itself.
    inline: Option<Box<dyn SnapshotSink>>,
}

impl Snapshotter {
    fn idle() -> Snapshotter {
        Snapshotter {
            tx: None,
            busy: Arc::new(AtomicBool::new(false)),
            thread: None,
            inline: None,
        }
    }

    fn start(
        mut sink: Box<dyn SnapshotSink>,
        stats: Arc<EngineStats>,
    ) -> std::io::Result<Snapshotter> {
        let (tx, rx) = mpsc::sync_channel::<(State, Duration)>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let done = busy.clone();
        let thread = std::thread::Builder::new()
            .name("spendb-snapshot".into())
            .spawn(move || {
                for (state, copied) in rx {
                    let seq = state.next_seq - 1;
                    let t = std::time::Instant::now();
                    let framed = encode_snapshot(&state);
                    drop(state);
                    let encoded = t.elapsed();
                    match sink.save(seq, &framed) {
                        Ok(()) => {
                            tracing::info!(
                                "snapshot at ledger entry {seq}: {} bytes; state copied in {copied:?} (commands waited), encoded in {encoded:?} and stored in {:?} (nothing waited)",
                                framed.len(),
                                t.elapsed() - encoded
                            );
                            stats.saved();
                        }
                        Err(e) => tracing::error!("snapshot at ledger entry {seq} failed: {e}"),
                    }
                    done.store(false, Ordering::Release);
                }
            })?;
        Ok(Snapshotter {
            tx: Some(tx),
            busy,
            thread: Some(thread),
            inline: None,
        })
    }
}

/// The shortest tail a periodic snapshot waits for, as a share of the
/// state's records (1/16): writing a snapshot costs at most sixteen record
/// encodes per entry, however large the state.
const SNAPSHOT_TAIL_SHARE: u64 = 16;
/// What loading a snapshot and replaying the tail after it may take
/// together at start-up, by the estimates below: 2 s, which leaves the rest
/// of a 3 s start (opening the store, the token tables, the listeners;
/// about 0.4 s on the development machine) to the process.
const START_BUDGET_NS: u64 = 2_000_000_000;
/// Loading one snapshot record (5M holds: 1.6–1.9 s) and replaying one
/// ledger entry (842,596: 1.3–1.4 s), rounded up; measured on the 2-core
/// development machine (docs/BENCHMARKS.md, "Start-up in the worst case").
const LOAD_NS_PER_RECORD: u64 = 400;
const REPLAY_NS_PER_ENTRY: u64 = 1_600;

/// How many entries after the last snapshot the next one is due, for a
/// state of `records` records and `--snapshot-every` `every` (> 0).
///
/// Snapshots cost CPU in proportion to the state (each writes every
/// record), so the tail is let grow as long as a start after a crash stays
/// within `START_BUDGET_NS`: loading the records plus replaying twice the
/// tail (the tail can grow by what arrives while the previous snapshot is
/// written). It never grows past the records themselves (at most one record
/// written per entry, the rule before issue #18), nor shrinks below a
/// sixteenth of them (at most sixteen per entry: past ~5M records the
/// budget is spent on loading alone, and the start is as short as a
/// sixteenth's tail allows), nor below `every`.
///
/// With a sixteenth always (issue #18's first rule) a state of a million
/// open holds was rewritten every 100,000 entries: ten record encodes per
/// entry, about a tenth of the server's CPU under load. This rule takes it
/// every ~500,000 (docs/BENCHMARKS.md, "Issue #18").
fn snapshot_due_after(records: u64, every: u64) -> u64 {
    let loading = records.saturating_mul(LOAD_NS_PER_RECORD);
    let room = START_BUDGET_NS.saturating_sub(loading) / (2 * REPLAY_NS_PER_ENTRY);
    every
        .max(records / SNAPSHOT_TAIL_SHARE)
        .max(room.min(records))
}

/// Longest the committer sleeps without looking at the clock.
const TICK: Duration = Duration::from_millis(50);
/// How often a probe write checks whether a failing disk takes writes again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The committer thread: writes what is queued when it is woken (or its
/// clock says hold expiry or an interval sync is due), holding the writer
/// only while it works, so a leading caller can take it in between.
fn run_committer(shared: &Shared) {
    loop {
        let mut writer = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        let c = writer
            .as_mut()
            .expect("the writer is the committer thread's until it stops");
        if c.wait_for_disk() {
            continue;
        }
        let mut core = shared.lock();
        if let Some((entries, now, snapshot, stop)) = c.try_take(&mut core) {
            drop(core);
            c.round(entries, now, snapshot);
            if stop {
                let c = writer.take().expect("just used");
                drop(writer);
                c.stop();
                return;
            }
            continue;
        }
        let now = core.now();
        core.committer_idle = true;
        let wait = core.state.next_expiry().map_or(TICK, |t| {
            Duration::from_millis(t.saturating_sub(now)).min(TICK)
        });
        // Leaders may write while this thread sleeps.
        drop(writer);
        let mut core = shared
            .work
            .wait_timeout(core, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        core.committer_idle = false;
    }
}

impl Committer {
    /// After the last round: waits for the last snapshot to be stored and
    /// tells whoever waits for the stop.
    fn stop(mut self) {
        let Snapshotter { tx, thread, .. } =
            std::mem::replace(&mut self.snapshots, Snapshotter::idle());
        drop(tx);
        let _ = thread.map(|t| t.join());
        let mut core = self.shared.lock();
        // Anyone still waiting (nothing should be) is told SHUTDOWN.
        core.waiters.clear();
        for tx in core.stopped.drain(..) {
            let _ = tx.send(());
        }
        core.committer_done = true;
    }

    /// A leading caller's round: everything pending as one group, unless
    /// writes are refused or the engine is stopping (the committer thread
    /// handles both). False when the write failed.
    fn lead_round(&mut self) -> bool {
        let shared = self.shared.clone();
        let taken = {
            let mut core = shared.lock();
            if core.shutdown || core.degraded.is_some() {
                None
            } else {
                self.try_take(&mut core)
            }
        };
        match taken {
            Some((entries, now, snapshot, _)) => self.round(entries, now, snapshot),
            None => true,
        }
    }

    /// Writes one group (if any, or an interval sync is due), then hands
    /// the snapshot taken with it on, once the group is durable. False when
    /// the write failed.
    fn round(&mut self, entries: Vec<Entry>, now: u64, snapshot: Option<State>) -> bool {
        let written = if !entries.is_empty() || self.sync_due(now) {
            self.commit(now, entries)
        } else {
            true
        };
        // A snapshot is stored only once the ledger it reflects is.
        match (snapshot, written) {
            (Some(state), true) => {
                let seq = state.next_seq - 1;
                self.hand_off_snapshot(state);
                if let Some(keep) = self.config.retain_entries {
                    match self.store.archive(seq.saturating_sub(keep)) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            "archived {n} ledger entries (before the last {keep}, covered by every snapshot)"
                        ),
                        Err(e) => tracing::warn!("archiving old ledger segments failed: {e}"),
                    }
                }
            }
            (Some(_), false) => self.snapshots.busy.store(false, Ordering::Release),
            _ => {}
        }
        written
    }

    /// While writes are refused: waits `PROBE_EVERY` (or a wake-up), then
    /// probes the disk. True while still refusing (and not shutting down).
    fn wait_for_disk(&mut self) -> bool {
        {
            let core = self.shared.lock();
            if core.degraded.is_none() || core.shutdown {
                return false;
            }
            let _ = self.shared.work.wait_timeout(core, PROBE_EVERY);
        }
        self.probe_disk()
    }

    /// Lifts the refusal of writes if a probe write succeeds. True while
    /// still refusing.
    fn probe_disk(&mut self) -> bool {
        match self.store.probe() {
            Ok(()) => {
                // Taken outside the macro: tracing skips its arguments when
                // the level is off.
                let reason = self.shared.lock().degraded.take().unwrap_or_default();
                tracing::warn!(
                    "the disk takes writes again: accepting writes (they were refused after: {reason})"
                );
                self.stats.degraded.store(false, Ordering::Relaxed);
                false
            }
            Err(e) => {
                tracing::debug!("probe write failed: {e}; writes stay refused");
                true
            }
        }
    }

    /// Expires due holds, then takes the queued entries if there are any (or
    /// a sync is due, or shutdown), with a snapshot if one is due.
    fn try_take(&mut self, core: &mut Core) -> Option<(Vec<Entry>, u64, Option<State>, bool)> {
        let now = core.now();
        core.state.tick(now, &mut core.pending);
        // A snapshot asked for waits while one is being written.
        let asked = core.snapshot_asked && !self.snapshots.busy.load(Ordering::Acquire);
        if core.pending.is_empty() && !core.shutdown && !self.sync_due(now) && !asked {
            return None;
        }
        let entries = std::mem::take(&mut core.pending);
        let n = core.commands - self.commands_seen;
        self.commands_seen = core.commands;
        self.stats.commands.fetch_add(n, Ordering::Relaxed);
        self.stats
            .open_holds
            .store(core.state.open_hold_count() as u64, Ordering::Relaxed);
        self.since_snapshot += entries.len() as u64;
        // A snapshot of the state as of these entries, taken now (the state
        // and the batch agree) and saved once they are durable, once the
        // tail since the last one is as long as a start-up can replay
        // (`snapshot_due_after`).
        let every = self.config.snapshot_every;
        let due_after = snapshot_due_after(core.state.records() as u64, every);
        let snapshot = if core.shutdown
            || (asked && !self.snapshots.busy.swap(true, Ordering::AcqRel))
            || (every > 0
                && self.since_snapshot >= due_after
                && !self.snapshots.busy.swap(true, Ordering::AcqRel))
        {
            self.since_snapshot = 0;
            core.snapshot_asked = false;
            // A copy (mostly memcpy) under the lock; it is encoded after the
            // lock is released.
            let t = std::time::Instant::now();
            let copy = core.state.clone();
            self.snapshot_copy = t.elapsed();
            Some(copy)
        } else {
            None
        };
        Some((entries, now, snapshot, core.shutdown))
    }

    fn sync_due(&self, now: u64) -> bool {
        match self.config.durability {
            Durability::Interval(ms) => self.dirty && now >= self.last_sync + ms,
            _ => false,
        }
    }

    /// Makes the ledger durable up to the snapshot (interval and none modes
    /// may not have synced it yet), then gives it to the snapshot thread.
    fn hand_off_snapshot(&mut self, state: State) {
        if self.dirty {
            if let Err(e) = self.store.sync() {
                tracing::error!("snapshot skipped: syncing the ledger failed: {e}");
                self.snapshots.busy.store(false, Ordering::Release);
                return;
            }
            self.dirty = false;
        }
        if let Some(sink) = &mut self.snapshots.inline {
            let seq = state.next_seq - 1;
            match sink.save(seq, &encode_snapshot(&state)) {
                Ok(()) => self.stats.saved(),
                Err(e) => tracing::error!("snapshot at ledger entry {seq} failed: {e}"),
            }
            self.snapshots.busy.store(false, Ordering::Release);
            return;
        }
        match &self.snapshots.tx {
            Some(tx) => {
                let _ = tx.send((state, self.snapshot_copy));
            }
            None => self.snapshots.busy.store(false, Ordering::Release),
        }
    }

    /// Writes one batch, syncs per the durability mode, and releases the
    /// replies waiting for it. False when the write failed.
    fn commit(&mut self, now: u64, entries: Vec<Entry>) -> bool {
        let mark = self.store.mark();
        let started = std::time::Instant::now();
        match self.write(now, &entries) {
            Ok(()) => {
                if !entries.is_empty() {
                    let m = &self.stats.metrics;
                    m.write_us.observe(started.elapsed().as_micros() as u64);
                    m.group_entries.observe(entries.len() as u64);
                }
                let s = &self.stats;
                if let Some(last) = entries.last() {
                    s.batches.fetch_add(1, Ordering::Relaxed);
                    s.entries.fetch_add(entries.len() as u64, Ordering::Relaxed);
                    s.last_seq.store(last.seq, Ordering::Relaxed);
                    self.shared.lock().durable = last.seq;
                    self.shared.release_durable();
                }
                if let Some(tap) = self.shared.tap.get() {
                    tap(entries);
                }
                true
            }
            Err(e) => {
                self.failed(mark, &entries, &e);
                false
            }
        }
    }

    fn write(&mut self, now: u64, entries: &[Entry]) -> Result<(), StoreError> {
        if !entries.is_empty() {
            self.store.append(entries)?;
            self.dirty = true;
        }
        let due = match self.config.durability {
            Durability::Fsync => self.dirty,
            Durability::Interval(ms) => self.dirty && now >= self.last_sync + ms,
            Durability::None => false,
        };
        if due {
            self.store.sync()?;
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            self.dirty = false;
            self.last_sync = now;
        }
        Ok(())
    }

    /// A write or sync failed: drop the batch from the ledger, rebuild the
    /// state from what is stored, and fail every reply not yet released.
    fn failed(&mut self, mark: crate::store::Mark, entries: &[Entry], e: &StoreError) {
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            "writing {} ledger entries failed: {e}; they and everything applied after them are answered IOERR",
            entries.len()
        );
        let mut core = self.shared.lock();
        let rebuilt = match self.store.rollback(mark) {
            Err(e) => Err(format!("cannot drop the failed batch from the ledger: {e}")),
            Ok(()) => recovery::recover(&mut *self.store, self.config.rules.clone())
                .map_err(|e| format!("cannot rebuild the state after a failed write: {e}")),
        };
        match rebuilt {
            Ok(r) => core.state = r.state,
            Err(reason) => {
                // Nothing more can be trusted: stop answering and stop.
                tracing::error!("{reason}; stopping");
                core.fatal = Some(reason);
                core.shutdown = true;
                core.pending.clear();
                for (_, tx) in core.waiters.drain(..) {
                    let _ = tx.send(Release::Failed);
                }
                self.shared.work.notify_all();
                return;
            }
        }
        // Everything applied since the last good write is gone: the batch,
        // and whatever was applied on top of it.
        core.pending.clear();
        // Until the disk takes writes again, refuse them up front rather
        // than apply, fail and rebuild the state for every batch.
        core.degraded = Some(e.to_string());
        self.stats.degraded.store(true, Ordering::Relaxed);
        core.durable = core.state.next_seq - 1;
        for (_, tx) in core.waiters.drain(..) {
            let _ = tx.send(Release::Failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The estimated start after a crash (load, then twice the tail).
    fn start_ns(records: u64, tail: u64) -> u64 {
        records * LOAD_NS_PER_RECORD + 2 * tail * REPLAY_NS_PER_ENTRY
    }

    #[test]
    fn a_small_state_is_snapshotted_every_snapshot_every_entries() {
        assert_eq!(snapshot_due_after(0, 100_000), 100_000);
        assert_eq!(snapshot_due_after(50_000, 100_000), 100_000);
        assert_eq!(snapshot_due_after(5_000_000, 10_000_000), 10_000_000);
    }

    #[test]
    fn a_mid_sized_state_waits_as_long_as_the_start_up_budget_allows() {
        // 1.2M records load in 0.48 s: 1.52 s left for twice the tail.
        assert_eq!(snapshot_due_after(1_200_000, 100_000), 475_000);
        assert_eq!(start_ns(1_200_000, 475_000), START_BUDGET_NS);
        // 300k records: the budget would allow 587,500, the records cap it.
        assert_eq!(snapshot_due_after(300_000, 100_000), 300_000);
    }

    #[test]
    fn a_large_state_is_snapshotted_every_sixteenth_of_its_records() {
        // 5M records take the whole budget to load.
        assert_eq!(snapshot_due_after(5_000_000, 100_000), 312_500);
        assert_eq!(snapshot_due_after(80_000_000, 100_000), 5_000_000);
        assert_eq!(snapshot_due_after(u64::MAX, 1), u64::MAX / 16);
    }

    #[test]
    fn the_tail_stays_between_its_bounds_and_within_the_budget() {
        for every in [1, 10_000, 100_000, 1_000_000] {
            for records in (0..12_000_000).step_by(37_321) {
                let due = snapshot_due_after(records, every);
                assert!(due >= every && due >= records / SNAPSHOT_TAIL_SHARE);
                assert!(due <= every.max(records), "{records} {every} {due}");
                if due > every.max(records / SNAPSHOT_TAIL_SHARE) {
                    assert!(start_ns(records, due) <= START_BUDGET_NS, "{records} {due}");
                }
            }
        }
    }
}
