//! spendb in-process, as sled is: [`Spendb::open`] a data dir and call
//! typed methods. It is the same engine, store and ledger as `spendb serve`
//! (which is itself built on this API: its Redis and HTTP front ends run
//! their commands through the engine and cache opened here), so a data dir
//! can be served later, verified with `spendb ledger verify`, or opened
//! here again. Every method returns once its ledger entries are durable
//! (per [`Options`]' durability), without a socket or a thread hop beyond
//! the group commit.
//!
//! ```
//! use spendb::embedded::{Options, Reservation, Spendb};
//! use spendb::state::limit::LimitSpec;
//! use spendb::state::price::Usage;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let db = Spendb::open(dir.path(), Options::default()).unwrap();
//! db.budget_set("org:acme", &[LimitSpec::from_words("TOKENS", "1000", "PER", "DAY").unwrap()])
//!     .unwrap();
//!
//! // Hold 600 tokens before a model call ...
//! let Reservation::Granted(hold) = db.reserve("call-1", "org:acme/agent:a", "gpt-4o", 500, 100).unwrap()
//! else { panic!("the budget has room") };
//! assert_eq!(hold.tokens, 600);
//! // ... a second call that would pass the budget is denied ...
//! let Reservation::Denied(no) = db.reserve("call-2", "org:acme/agent:b", "gpt-4o", 500, 0).unwrap()
//! else { panic!("600 + 500 > 1000") };
//! assert_eq!(no.remaining, 400);
//! // ... and the first settles at what it used: the rest comes back.
//! let done = db.commit("call-1", Usage { input: 500, output: 40, ..Usage::default() }).unwrap();
//! assert_eq!(done.released_tokens, 60);
//! db.close().unwrap();
//! ```

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::engine::{self, EngineConfig, EngineHandle};
use crate::state::limit::LimitSpec;
use crate::state::money::Nanos;
use crate::state::outcome::{Committed, Denied, Granted, Released, Spent};
use crate::state::price::Usage;
use crate::state::{Command, ErrorCode, Outcome, OutputAsk, ReserveArgs, Value};
use crate::store::archive::{ArchiveConfig, Shipper};
use crate::store::cache::{Cache, CacheLimits};
use crate::store::recovery::RecoveryInfo;
use crate::store::rollups::Rollups;
use crate::store::LogStore;

/// How to open a data dir.
#[derive(Clone, Debug)]
pub struct Options {
    /// Durability, the rules (TTLs, retention, the loop guard's defaults),
    /// snapshot cadence and ledger retention: as `spendb serve`'s flags.
    pub engine: EngineConfig,
    /// Ledger segment size (bytes).
    pub segment_bytes: u64,
    /// The response cache's bounds.
    pub cache: CacheLimits,
    /// Ship the ledger, snapshots and rollups to object storage
    /// (`--archive`, `store::archive`); None: the ledger stays on this disk.
    pub archive: Option<ArchiveConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            engine: EngineConfig::default(),
            segment_bytes: crate::store::log_store::SEGMENT_MAX,
            cache: CacheLimits::default(),
            archive: None,
        }
    }
}

/// Why a call did not do what it asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Refused by the rules (or the disk): nothing changed. The code is the
    /// RESP error code and maps to an HTTP status.
    #[error("{code} {msg}")]
    Refused { code: ErrorCode, msg: String },
    /// The data dir could not be opened or recovered.
    #[error("opening the data dir: {0}")]
    Open(String),
    /// The engine answered with another kind of outcome (a bug).
    #[error("unexpected outcome: {0:?}")]
    Unexpected(Box<Outcome>),
}

/// A RESERVE's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    Granted(Granted),
    Denied(Denied),
}

/// An open data dir. Dropping it closes it (see [`Spendb::close`]).
pub struct Spendb {
    engine: EngineHandle,
    cache: Arc<Cache>,
    /// The reports' rollups (`store::rollups`), fed by the engine.
    rollups: Arc<Rollups>,
    /// The archive's shipper (`--archive`).
    shipper: Option<Arc<Shipper>>,
    committer: Option<JoinHandle<()>>,
    recovered: RecoveryInfo,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unexpected<T>(o: Outcome) -> Result<T, Error> {
    match o {
        Outcome::Refused { code, msg } => Err(Error::Refused { code, msg }),
        o => Err(Error::Unexpected(Box::new(o))),
    }
}

impl Spendb {
    /// Opens (or creates) a data dir: recovers the state from its newest
    /// snapshot and the ledger after it, opens the response cache, and
    /// starts the committer thread.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Spendb, Error> {
        Spendb::open_with_clock(dir, options, engine::system_clock())
    }

    /// `open` on a clock of the caller's (ms since the epoch, never going
    /// back): a generator of a ledger that spans weeks in minutes
    /// (`examples/ledger_gen.rs`), a test.
    pub fn open_with_clock(
        dir: impl AsRef<Path>,
        options: Options,
        clock: engine::Clock,
    ) -> Result<Spendb, Error> {
        let dir = dir.as_ref();
        let store = LogStore::open_with(dir, options.segment_bytes)
            .map_err(|e| Error::Open(format!("{}: {e}", dir.display())))?;
        let cache = Cache::open(store.sled(), options.cache, now_ms())
            .map_err(|e| Error::Open(format!("the cache: {e}")))?;
        let (engine, committer, recovered) = engine::start(Box::new(store), options.engine, clock)
            .map_err(|e| Error::Open(format!("recovery failed: {e}")))?;
        let rollups = Rollups::start(dir, recovered.last_seq)
            .map_err(|e| Error::Open(format!("the rollups: {e}")))?;
        let tap = rollups.clone();
        engine.set_tap(Box::new(move |entries| tap.feed(entries)));
        let shipper = match options.archive {
            Some(config) => {
                let durable = rollups.clone();
                let started = Shipper::start(dir, config, Arc::new(move || durable.durable()));
                Some(started.map_err(|e| Error::Open(format!("--archive: {e}")))?)
            }
            None => None,
        };
        Ok(Spendb {
            engine,
            cache: Arc::new(cache),
            rollups,
            shipper,
            committer: Some(committer),
            recovered,
        })
    }

    /// The engine, for front ends (async `execute_as` with a caller's
    /// access) and tasks that run beside it.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// The reports' rollups.
    pub fn rollups(&self) -> &Arc<Rollups> {
        &self.rollups
    }

    /// The archive's shipper, when the ledger is shipped (`--archive`).
    pub fn shipper(&self) -> Option<&Arc<Shipper>> {
        self.shipper.as_ref()
    }

    /// The response cache.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// What opening recovered (last seq, the snapshot used, entries replayed).
    pub fn recovered(&self) -> &RecoveryInfo {
        &self.recovered
    }

    /// Runs one command; returns once its entries are durable. Blocks the
    /// thread: from async code use `engine().execute_as`.
    pub fn execute(&self, cmd: Command) -> Outcome {
        self.engine
            .execute_blocking(std::slice::from_ref(&cmd), None)
            .pop()
            .expect("one outcome per command")
    }

    /// Runs commands as one batch (one group commit, applied at one
    /// instant with nothing in between).
    pub fn execute_batch(&self, cmds: &[Command]) -> Vec<Outcome> {
        self.engine.execute_blocking(cmds, None)
    }

    fn done(&self, cmd: Command) -> Result<(), Error> {
        match self.execute(cmd) {
            Outcome::Done => Ok(()),
            o => unexpected(o),
        }
    }

    fn read(&self, cmd: Command) -> Result<Value, Error> {
        match self.execute(cmd) {
            Outcome::Reply(v) => Ok(v),
            o => unexpected(o),
        }
    }

    /// RESERVE: holds `input` tokens plus an `output` cap (and their cost
    /// at the model's price) against every budget covering `scope`, all or
    /// nothing, with the default TTL.
    pub fn reserve(
        &self,
        hold: &str,
        scope: &str,
        model: &str,
        input: u64,
        output: impl Into<OutputAsk>,
    ) -> Result<Reservation, Error> {
        self.reserve_with(ReserveArgs::new(hold, scope, model, input, output))
    }

    /// RESERVE with every argument (a TTL of its own).
    pub fn reserve_with(&self, args: ReserveArgs) -> Result<Reservation, Error> {
        match self.execute(Command::Reserve(args)) {
            Outcome::Granted(g) => Ok(Reservation::Granted(g)),
            Outcome::Denied(d) => Ok(Reservation::Denied(d)),
            o => unexpected(o),
        }
    }

    /// COMMIT: settles a hold at the actual usage.
    pub fn commit(&self, hold: &str, usage: Usage) -> Result<Committed, Error> {
        match self.execute(Command::Commit {
            hold: hold.into(),
            usage,
        }) {
            Outcome::Committed(c) => Ok(c),
            o => unexpected(o),
        }
    }

    /// RELEASE: drops a hold.
    pub fn release(&self, hold: &str) -> Result<Released, Error> {
        match self.execute(Command::Release { hold: hold.into() }) {
            Outcome::Released(r) => Ok(r),
            o => unexpected(o),
        }
    }

    /// SPEND: books usage that had no hold (idempotent with an `id`).
    pub fn spend(
        &self,
        scope: &str,
        model: &str,
        usage: Usage,
        id: Option<&str>,
    ) -> Result<Spent, Error> {
        match self.execute(Command::Spend {
            scope: scope.into(),
            model: model.into(),
            usage,
            id: id.map(str::to_string),
            run: None,
        }) {
            Outcome::Spent(s) => Ok(s),
            o => unexpected(o),
        }
    }

    /// BALANCE: spent and held at a scope and every limit covering it (the
    /// reply's fields as in docs/PROTOCOL.md).
    pub fn balance(&self, scope: &str) -> Result<Value, Error> {
        self.read(Command::Balance {
            scope: scope.into(),
        })
    }

    /// BUDGET.SET: replaces a scope's limits.
    pub fn budget_set(&self, scope: &str, limits: &[LimitSpec]) -> Result<(), Error> {
        self.done(Command::BudgetSet {
            scope: scope.into(),
            limits: limits.to_vec(),
        })
    }

    /// BUDGET.GET: a scope's limits with used, held, remaining, resets_at.
    pub fn budget_get(&self, scope: &str) -> Result<Value, Error> {
        self.read(Command::BudgetGet {
            scope: scope.into(),
        })
    }

    /// PRICE.SET: a model's nano-USD per million input and output tokens
    /// (cache rates as the input rate).
    pub fn price_set(&self, model: &str, input: Nanos, output: Nanos) -> Result<(), Error> {
        self.done(Command::PriceSet {
            model: model.into(),
            input,
            output,
            cached: None,
            cache_write: None,
            max_output: None,
        })
    }

    /// Finishes queued commands, writes a last snapshot, stops the
    /// committer and writes the cache out.
    pub fn close(mut self) -> Result<(), Error> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Error> {
        let Some(committer) = self.committer.take() else {
            return Ok(());
        };
        self.engine.shutdown_blocking();
        let _ = committer.join();
        // Everything is written: the rollups fold the rest and persist.
        self.rollups.stop();
        // Then the archive ships what is left (the last rollup with it).
        if let Some(shipper) = &self.shipper {
            shipper.stop();
        }
        self.cache
            .flush()
            .map_err(|e| Error::Open(format!("writing the cache out: {e}")))?;
        match self.engine.fatal() {
            Some(reason) => Err(Error::Refused {
                code: ErrorCode::IoErr,
                msg: reason,
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Spendb {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!("closing spendb: {e}");
        }
    }
}
