//! The engine: the single owner of the state. Front ends send commands over a
//! channel; the engine takes whatever has queued, applies it in order, writes
//! all resulting entries as one batch with one sync (group commit), and only
//! then sends the replies. Hold expiry and housekeeping run here on the clock.
//!
//! It runs on its own OS thread: the sync is a blocking syscall, and a
//! dedicated thread keeps it off the async runtime that serves connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::state::{Access, Command, Config, Entry, State, Value};
use crate::store::recovery::{self, encode_snapshot, RecoveryInfo};
use crate::store::{Storage, StoreError};

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
    /// Write a snapshot after this many ledger entries, or twice the state's
    /// records if that is more (0: only at shutdown).
    pub snapshot_every: u64,
    /// Most commands applied in one group commit.
    pub max_batch: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            durability: Durability::Fsync,
            rules: Config::default(),
            snapshot_every: 100_000,
            max_batch: 8192,
        }
    }
}

/// Counters the engine keeps for INFO and metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub batches: AtomicU64,
    pub commands: AtomicU64,
    pub entries: AtomicU64,
    pub syncs: AtomicU64,
    pub last_seq: AtomicU64,
    pub open_holds: AtomicU64,
    pub write_errors: AtomicU64,
}

/// A connection's commands, its access, and where its replies go.
type Pending = (
    Vec<Command>,
    Option<Arc<Access>>,
    oneshot::Sender<Vec<Value>>,
);

enum Msg {
    Batch {
        cmds: Vec<Command>,
        access: Option<Arc<Access>>,
        reply: oneshot::Sender<Vec<Value>>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// A cheap, cloneable handle for sending commands to the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Msg>,
    pub stats: Arc<EngineStats>,
}

impl EngineHandle {
    /// Runs commands in order and returns their replies, after the entries
    /// they caused are durable (per the durability mode).
    pub async fn execute(&self, cmds: Vec<Command>) -> Vec<Value> {
        self.execute_as(cmds, None).await
    }

    /// `execute` for a caller limited to some scopes.
    pub async fn execute_as(&self, cmds: Vec<Command>, access: Option<Arc<Access>>) -> Vec<Value> {
        let n = cmds.len();
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .send(Msg::Batch {
                cmds,
                access,
                reply: tx,
            })
            .is_err()
        {
            return vec![Value::err("SHUTDOWN", "the server is shutting down"); n];
        }
        rx.await
            .unwrap_or_else(|_| vec![Value::err("SHUTDOWN", "the server is shutting down"); n])
    }

    /// Finishes what is queued, snapshots, syncs and stops the engine.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Recovers the state from `store` and starts the engine thread.
pub fn start(
    mut store: Box<dyn Storage>,
    config: EngineConfig,
    clock: Clock,
) -> Result<(EngineHandle, std::thread::JoinHandle<()>, RecoveryInfo), StoreError> {
    let recovered = recovery::recover(&mut *store, config.rules.clone())?;
    let info = recovered.info();
    let state = recovered.state;
    let (tx, rx) = mpsc::channel();
    let stats = Arc::new(EngineStats::default());
    stats.last_seq.store(state.next_seq - 1, Ordering::Relaxed);
    let mut engine = Engine {
        state,
        store,
        config,
        clock,
        rx,
        stats: stats.clone(),
        last_now: 0,
        last_sync: 0,
        dirty: false,
        since_snapshot: info.replayed,
    };
    let thread = std::thread::Builder::new()
        .name("spendb-engine".into())
        .spawn(move || engine.run())?;
    Ok((EngineHandle { tx, stats }, thread, info))
}

struct Engine {
    state: State,
    store: Box<dyn Storage>,
    config: EngineConfig,
    clock: Clock,
    rx: mpsc::Receiver<Msg>,
    stats: Arc<EngineStats>,
    last_now: u64,
    last_sync: u64,
    /// Entries appended but not yet synced (interval / none modes).
    dirty: bool,
    since_snapshot: u64,
}

/// Longest the engine sleeps without looking at the clock.
const TICK: Duration = Duration::from_millis(50);

impl Engine {
    fn now(&mut self) -> u64 {
        // Never let time run backwards, whatever the system clock does.
        self.last_now = (self.clock)().max(self.last_now);
        self.last_now
    }

    fn run(&mut self) {
        let mut batch: Vec<Pending> = Vec::new();
        loop {
            let now = self.now();
            let wait = self.state.next_expiry().map_or(TICK, |t| {
                Duration::from_millis(t.saturating_sub(now)).min(TICK)
            });
            let mut shutdown = None;
            match self.rx.recv_timeout(wait) {
                Ok(Msg::Batch {
                    cmds,
                    access,
                    reply,
                }) => batch.push((cmds, access, reply)),
                Ok(Msg::Shutdown(done)) => shutdown = Some(done),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let mut queued: usize = batch.iter().map(|(c, _, _)| c.len()).sum();
            while queued < self.config.max_batch && shutdown.is_none() {
                match self.rx.try_recv() {
                    Ok(Msg::Batch {
                        cmds,
                        access,
                        reply,
                    }) => {
                        queued += cmds.len();
                        batch.push((cmds, access, reply));
                    }
                    Ok(Msg::Shutdown(done)) => shutdown = Some(done),
                    Err(_) => break,
                }
            }
            self.process(&mut batch);
            if let Some(done) = shutdown {
                // Whatever was sent before the shutdown is answered first.
                while let Ok(Msg::Batch {
                    cmds,
                    access,
                    reply,
                }) = self.rx.try_recv()
                {
                    batch.push((cmds, access, reply));
                    self.process(&mut batch);
                }
                self.snapshot();
                let _ = done.send(());
                return;
            }
        }
        self.snapshot();
    }

    /// Applies a batch, commits its entries, then replies.
    fn process(&mut self, batch: &mut Vec<Pending>) {
        let now = self.now();
        let mut entries: Vec<Entry> = Vec::new();
        let mut replies: Vec<Vec<Value>> = Vec::with_capacity(batch.len());
        let mut commands = 0;
        for (cmds, access, _) in batch.iter() {
            commands += cmds.len();
            replies.push(
                cmds.iter()
                    .map(|c| self.state.apply_as(now, c, access.as_deref(), &mut entries))
                    .collect(),
            );
        }
        self.state.tick(now, &mut entries);
        let mark = self.store.mark();
        let result = self.commit(now, &entries);
        let s = &self.stats;
        s.commands.fetch_add(commands as u64, Ordering::Relaxed);
        if !batch.is_empty() {
            s.batches.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(()) => {
                s.entries.fetch_add(entries.len() as u64, Ordering::Relaxed);
                s.last_seq.store(self.state.next_seq - 1, Ordering::Relaxed);
                s.open_holds
                    .store(self.state.open_hold_count() as u64, Ordering::Relaxed);
                for ((_, _, tx), r) in batch.drain(..).zip(replies) {
                    let _ = tx.send(r);
                }
                self.since_snapshot += entries.len() as u64;
                // At least `snapshot_every` entries apart, and at least twice
                // the records a snapshot writes: a large state is not rewritten
                // every few entries (amortized O(1) per entry), while replay
                // at start-up stays bounded by about twice the state's size.
                let every = self.config.snapshot_every;
                if every > 0 && self.since_snapshot >= every.max(2 * self.state.records() as u64) {
                    self.snapshot();
                }
            }
            Err(e) => {
                s.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "writing {} ledger entries failed: {e}; nothing in this batch is acknowledged",
                    entries.len()
                );
                for ((cmds, _, tx), _) in batch.drain(..).zip(replies) {
                    let _ = tx.send(vec![
                        Value::err(
                            "IOERR",
                            format!("the ledger write failed: {e}")
                        );
                        cmds.len()
                    ]);
                }
                // Drop the batch from the ledger, then rebuild the state (which
                // ran ahead of it) from what is stored: nothing unacknowledged
                // is served now or found after a restart.
                if let Err(e) = self.store.rollback(mark) {
                    tracing::error!("cannot drop the failed batch from the ledger: {e}; stopping");
                    std::process::exit(1);
                }
                match recovery::recover(&mut *self.store, self.config.rules.clone()) {
                    Ok(r) => self.state = r.state,
                    Err(e) => {
                        tracing::error!(
                            "cannot rebuild the state after a failed write: {e}; stopping"
                        );
                        std::process::exit(1);
                    }
                }
            }
        }
    }

    fn commit(&mut self, now: u64, entries: &[Entry]) -> Result<(), StoreError> {
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

    fn snapshot(&mut self) {
        let seq = self.state.next_seq - 1;
        let framed = encode_snapshot(&self.state);
        match self.store.save_snapshot(seq, &framed) {
            Ok(()) => {
                self.dirty = false;
                self.since_snapshot = 0;
                tracing::debug!("snapshot at ledger entry {seq} ({} bytes)", framed.len());
            }
            Err(e) => tracing::error!("snapshot at ledger entry {seq} failed: {e}"),
        }
    }
}
