//! `spendb bench`: a load generator for spendb's own workload, over the Redis
//! protocol (any spendb reachable on a port).
//!
//! Each connection runs transactions: RESERVE a hold, then COMMIT it (or,
//! for `--release-ratio` of them, RELEASE it); `--deny-ratio` of RESERVEs
//! go to a scope whose budget is spent, so they are denied. Before the
//! RESERVE, `--count-ratio` of transactions COUNT a ~1 KB prompt and
//! `--cache-ratio` look one up with CACHE.GET (prefilled: hits). Hold ids
//! are unique per run; scopes are spread over an org × team × agent tree.
//!
//! - Closed loop (default): every connection sends `--pipeline` RESERVEs at
//!   once, then the COMMITs / RELEASEs for them, as fast as replies come.
//!   A command's latency is the round trip of its pipeline.
//! - Open loop (`--rate R`): transactions start on a fixed schedule, R per
//!   second over all connections, whether or not earlier ones finished. A
//!   RESERVE that starts late because earlier replies were slow has its
//!   latency measured from when it *should* have been sent, so a server that
//!   stalls is charged for the requests that queued behind the stall (no
//!   coordinated omission).
//!
//! Latencies go into HDR histograms (1 µs to 60 s, 3 significant digits).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub host: String,
    pub port: u16,
    /// A Unix socket to connect to instead of host and port.
    pub socket: Option<std::path::PathBuf>,
    pub password: Option<String>,
    pub connections: usize,
    pub pipeline: usize,
    /// Transactions per second over all connections (open loop); None: closed.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Stop after this many transactions (whichever comes first).
    pub transactions: Option<u64>,
    /// orgs × teams per org × agents per team.
    pub tree: (usize, usize, usize),
    pub release_ratio: f64,
    pub deny_ratio: f64,
    /// Fraction of transactions that COUNT their prompt first.
    pub count_ratio: f64,
    /// Fraction of transactions that look the prompt up in the cache first
    /// (CACHE.GET of one of `CACHE_KEYS` prefilled entries: hits).
    pub cache_ratio: f64,
    /// Fraction of granted holds neither committed nor released: left to
    /// expire (use with `ttl_ms`).
    pub abandon_ratio: f64,
    /// TTL given with each RESERVE (None: the server's default).
    pub ttl_ms: Option<u64>,
    /// Fraction of transactions that CACHE.SET a new key (10 s TTL): the
    /// cache churns, entries expiring as fast as they come.
    pub cache_set_ratio: f64,
    pub model: String,
    /// The client's own floor: each transaction is two PINGs instead of
    /// RESERVE and COMMIT, through the same connections and schedule.
    pub ping: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub progress: bool,
}

#[derive(Debug, Serialize)]
pub struct CommandStats {
    pub count: u64,
    pub per_second: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub target: String,
    pub connections: usize,
    pub pipeline: usize,
    pub mode: String,
    pub target_rate: Option<f64>,
    pub seconds: f64,
    pub transactions: u64,
    pub granted: u64,
    /// Granted holds left to expire (`abandon_ratio`).
    pub abandoned: u64,
    pub denied: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Every command sent, per second.
    pub commands_per_second: f64,
    /// Per command: reserve (granted and denied), commit, release (or
    /// ping, with `--ping`).
    pub commands: Vec<(String, CommandStats)>,
    /// CPU this client process used per transaction (user + system, µs):
    /// the load generator's own cost, on the same cores as the server.
    pub client_cpu_us_per_transaction: f64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    granted: AtomicU64,
    abandoned: AtomicU64,
    denied: AtomicU64,
    errors: AtomicU64,
}

struct Hists {
    reserve: Histogram<u64>,
    commit: Histogram<u64>,
    release: Histogram<u64>,
    count: Histogram<u64>,
    cache_get: Histogram<u64>,
    cache_set: Histogram<u64>,
    ping: Histogram<u64>,
    first_error: Option<String>,
}

impl Hists {
    fn new() -> Hists {
        Hists {
            reserve: histogram(),
            commit: histogram(),
            release: histogram(),
            count: histogram(),
            cache_get: histogram(),
            cache_set: histogram(),
            ping: histogram(),
            first_error: None,
        }
    }
}

fn record(h: &mut Histogram<u64>, since: Instant) {
    let us = since.elapsed().as_micros().max(1) as u64;
    h.saturating_record(us);
}

/// Entries prefilled in the `bench` cache namespace for `--cache-ratio`.
const CACHE_KEYS: u64 = 1000;
/// The prompt COUNTed for `--count-ratio` (about 1 KB of mixed text).
const PROMPT: &str =
    "You are a careful assistant. Summarise the following ticket for the on-call engineer, \
    list the services involved, and propose the first three diagnostic steps. Ticket #4812: \
    checkout latency p99 rose from 180 ms to 2.4 s at 09:14 UTC after deploy 7f3a2c; errors \
    in payments-gateway (HTTP 502, 3.1 %), retries in cart-service; 中文日志：连接超时。 🙂 \
    Keep it under 120 words and do not speculate beyond the evidence given above. ";

/// The org of the scope whose budget is spent, for denials.
const DENY_SCOPE: &str = "org:bench-deny/agent:x";

fn scope(rng: &mut impl RngExt, tree: (usize, usize, usize)) -> String {
    format!(
        "org:o{}/team:t{}/agent:a{}",
        rng.random_range(0..tree.0),
        rng.random_range(0..tree.1),
        rng.random_range(0..tree.2)
    )
}

/// Where the benchmark connects, as the report names it.
fn target(cfg: &BenchConfig) -> String {
    match &cfg.socket {
        Some(p) => format!("unix:{}", p.display()),
        None => format!("{}:{}", cfg.host, cfg.port),
    }
}

async fn connect(cfg: &BenchConfig) -> Result<redis::aio::MultiplexedConnection, String> {
    use redis::IntoConnectionInfo as _;
    let addr = match &cfg.socket {
        Some(path) => redis::ConnectionAddr::Unix(path.clone()),
        None => redis::ConnectionAddr::Tcp(cfg.host.clone(), cfg.port),
    };
    let mut info = addr.into_connection_info().map_err(|e| e.to_string())?;
    if let Some(p) = &cfg.password {
        let settings = info.redis_settings().clone().set_password(p);
        info = info.set_redis_settings(settings);
    }
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    // redis-rs 1.x gives up on a reply after 500 ms by default; the load
    // generator measures latency, so it waits (bounded, for a hung server).
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_connection_timeout(Some(Duration::from_secs(10)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("connecting to {}: {e}", target(cfg)))
}

/// Budgets for the tree (large, so only `--deny-ratio` denies) and for the
/// deny scope (spent at once).
async fn setup(cfg: &BenchConfig) -> Result<(), String> {
    let mut con = connect(cfg).await?;
    let set = |args: Vec<String>| {
        let mut c = redis::cmd("BUDGET.SET");
        for a in args {
            c.arg(a);
        }
        c
    };
    for o in 0..cfg.tree.0 {
        let c = set(vec![
            format!("org:o{o}"),
            "TOKENS".into(),
            "1000000000000000".into(),
            "PER".into(),
            "MONTH".into(),
        ]);
        let _: () = c.query_async(&mut con).await.map_err(|e| e.to_string())?;
        for t in 0..cfg.tree.1 {
            let c = set(vec![
                format!("org:o{o}/team:t{t}"),
                "REQUESTS".into(),
                "1000000000000".into(),
                "PER".into(),
                "DAY".into(),
            ]);
            let _: () = c.query_async(&mut con).await.map_err(|e| e.to_string())?;
        }
    }
    let c = set(vec![
        "org:bench-deny".into(),
        "TOKENS".into(),
        "1".into(),
        "PER".into(),
        "DAY".into(),
    ]);
    let _: () = c.query_async(&mut con).await.map_err(|e| e.to_string())?;
    if cfg.cache_ratio > 0.0 {
        let mut p = redis::pipe();
        for k in 0..CACHE_KEYS {
            p.cmd("CACHE.SET")
                .arg("bench")
                .arg(format!("{PROMPT}{k}"))
                .arg("a cached answer of a few dozen bytes, as a model would give")
                .arg("COST")
                .arg("0.001")
                .ignore();
        }
        let _: () = p.query_async(&mut con).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The `status` field of a RESERVE reply (a RESP2 array of field, value).
fn status_of(v: &redis::Value) -> Option<String> {
    let items: Vec<(&redis::Value, &redis::Value)> = match v {
        redis::Value::Array(a) => a
            .chunks(2)
            .filter_map(|p| Some((p.first()?, p.get(1)?)))
            .collect(),
        redis::Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        _ => return None,
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    items
        .into_iter()
        .find(|(k, _)| text(k).as_deref() == Some("status"))
        .and_then(|(_, v)| text(v))
}

struct Worker {
    cfg: Arc<BenchConfig>,
    id: usize,
    run: String,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn error(&self, h: &mut Hists, e: impl std::fmt::Display) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        if h.first_error.is_none() {
            h.first_error = Some(e.to_string());
        }
    }

    /// Claims up to `n` transactions from the budget of the run.
    fn claim(&self, n: u64) -> u64 {
        let done = self.counters.transactions.fetch_add(n, Ordering::Relaxed);
        match self.cfg.transactions {
            Some(max) if done >= max => 0,
            Some(max) => n.min(max - done),
            None => n,
        }
    }

    async fn run(self) -> Hists {
        let mut h = Hists::new();
        let mut con = match connect(&self.cfg).await {
            Ok(c) => c,
            Err(e) => {
                self.error(&mut h, e);
                return h;
            }
        };
        let mut rng = rand::rngs::SmallRng::seed_from_u64(self.id as u64 * 7919 + 1);
        let mut seq = 0u64;
        let mut churn = 0u64;
        let interval = self
            .cfg
            .rate
            .map(|r| Duration::from_secs_f64(self.cfg.connections as f64 / r));
        let start = Instant::now();
        let mut tick = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            let (n, intended) = match interval {
                Some(iv) => {
                    // Open loop: the k-th transaction is due at start + k·iv.
                    // Late because replies were slow: latency counts from
                    // when it was due. Early: we sleep, and count from the
                    // wake-up, so the timer's own lateness (tokio's timer
                    // has 1 ms resolution) is not charged to the server.
                    let due = start + iv * tick;
                    tick += 1;
                    if due > Instant::now() {
                        tokio::time::sleep_until(due.into()).await;
                        (1, Instant::now())
                    } else {
                        (1, due)
                    }
                }
                None => (self.cfg.pipeline as u64, Instant::now()),
            };
            let n = self.claim(n);
            if n == 0 {
                break;
            }
            // What an agent does before reserving: count the prompt, look
            // it up in the cache (one round trip for both, when asked for).
            let mut pre = redis::pipe();
            let (mut counts, mut gets, mut sets) = (0, 0, 0);
            for _ in 0..n {
                if rng.random_bool(self.cfg.count_ratio) {
                    pre.cmd("COUNT").arg(&self.cfg.model).arg(PROMPT);
                    counts += 1;
                }
                if rng.random_bool(self.cfg.cache_ratio) {
                    let k = rng.random_range(0..CACHE_KEYS);
                    pre.cmd("CACHE.GET")
                        .arg("bench")
                        .arg(format!("{PROMPT}{k}"));
                    gets += 1;
                }
                if rng.random_bool(self.cfg.cache_set_ratio) {
                    churn += 1;
                    pre.cmd("CACHE.SET")
                        .arg("bench-churn")
                        .arg(format!("{}-{}-{churn}", self.run, self.id))
                        .arg(PROMPT)
                        .arg("TTL")
                        .arg(10_000);
                    sets += 1;
                }
            }
            if counts + gets + sets > 0 {
                let sent = Instant::now();
                match pre.query_async::<Vec<redis::Value>>(&mut con).await {
                    Ok(r) => {
                        for v in &r {
                            if matches!(v, redis::Value::ServerError(_) | redis::Value::Nil) {
                                self.error(&mut h, format!("COUNT / CACHE.GET / CACHE.SET: {v:?}"));
                            }
                        }
                        for _ in 0..counts {
                            record(&mut h.count, sent);
                        }
                        for _ in 0..gets {
                            record(&mut h.cache_get, sent);
                        }
                        for _ in 0..sets {
                            record(&mut h.cache_set, sent);
                        }
                    }
                    Err(e) => self.error(&mut h, e),
                }
            }
            if self.cfg.ping {
                // Two round trips, as RESERVE then COMMIT, each timed as a
                // RESERVE is: the first from when it was due.
                let mut firsts = Some(intended);
                for _ in 0..2 {
                    let mut p = redis::pipe();
                    for _ in 0..n {
                        p.cmd("PING");
                    }
                    let sent = firsts.take().unwrap_or_else(Instant::now);
                    match p.query_async::<Vec<redis::Value>>(&mut con).await {
                        Ok(r) => {
                            for _ in &r {
                                record(&mut h.ping, sent);
                            }
                        }
                        Err(e) => self.error(&mut h, e),
                    }
                }
                continue;
            }
            let mut reserve = redis::pipe();
            let mut ids = Vec::with_capacity(n as usize);
            for _ in 0..n {
                seq += 1;
                let id = format!("{}-{}-{}", self.run, self.id, seq);
                let deny = rng.random_bool(self.cfg.deny_ratio);
                let scope = if deny {
                    DENY_SCOPE.to_string()
                } else {
                    scope(&mut rng, self.cfg.tree)
                };
                reserve
                    .cmd("RESERVE")
                    .arg(&id)
                    .arg(scope)
                    .arg(&self.cfg.model)
                    .arg("INPUT")
                    .arg(self.cfg.input_tokens)
                    .arg("OUTPUT")
                    .arg(self.cfg.output_tokens);
                if let Some(ttl) = self.cfg.ttl_ms {
                    reserve.arg("TTL").arg(ttl);
                }
                ids.push(id);
            }
            let replies: Vec<redis::Value> = match reserve.query_async(&mut con).await {
                Ok(r) => r,
                Err(e) => {
                    self.error(&mut h, e);
                    continue;
                }
            };
            for _ in &replies {
                record(&mut h.reserve, intended);
            }
            let mut settle = redis::pipe();
            let mut releases = 0;
            let mut commits = 0;
            for (id, reply) in ids.iter().zip(&replies) {
                match status_of(reply).as_deref() {
                    Some("granted") => {
                        self.counters.granted.fetch_add(1, Ordering::Relaxed);
                        if rng.random_bool(self.cfg.abandon_ratio) {
                            self.counters.abandoned.fetch_add(1, Ordering::Relaxed);
                        } else if rng.random_bool(self.cfg.release_ratio) {
                            settle.cmd("RELEASE").arg(id);
                            releases += 1;
                        } else {
                            settle
                                .cmd("COMMIT")
                                .arg(id)
                                .arg("INPUT")
                                .arg(self.cfg.input_tokens)
                                .arg("OUTPUT")
                                .arg(rng.random_range(0..=self.cfg.output_tokens));
                            commits += 1;
                        }
                    }
                    Some("denied") => {
                        self.counters.denied.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => self.error(&mut h, format!("RESERVE {id}: {reply:?}")),
                }
            }
            if commits + releases == 0 {
                continue;
            }
            let sent = Instant::now();
            let settled: Result<Vec<redis::Value>, _> = settle.query_async(&mut con).await;
            match settled {
                Ok(r) => {
                    for v in &r {
                        if let redis::Value::ServerError(e) = v {
                            self.error(&mut h, format!("{e:?}"));
                        }
                    }
                    for _ in 0..commits {
                        record(&mut h.commit, sent);
                    }
                    for _ in 0..releases {
                        record(&mut h.release, sent);
                    }
                }
                Err(e) => self.error(&mut h, e),
            }
        }
        h
    }
}

fn stats(h: &Histogram<u64>, secs: f64) -> CommandStats {
    CommandStats {
        count: h.len(),
        per_second: h.len() as f64 / secs,
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        mean_us: h.mean(),
    }
}

/// Runs the benchmark and returns its report (nothing printed but the
/// progress bar, when asked for).
pub async fn run(cfg: BenchConfig) -> Result<BenchReport, String> {
    if cfg.connections == 0 || cfg.pipeline == 0 {
        return Err("--connections and --pipeline must be at least 1".into());
    }
    let ratios = [
        cfg.release_ratio,
        cfg.deny_ratio,
        cfg.count_ratio,
        cfg.cache_ratio,
        cfg.abandon_ratio,
        cfg.cache_set_ratio,
    ];
    if ratios.iter().any(|r| !(0.0..=1.0).contains(r)) {
        return Err("ratios must be between 0 and 1".into());
    }
    if cfg.tree.0 == 0 || cfg.tree.1 == 0 || cfg.tree.2 == 0 {
        return Err("--tree needs at least one org, team and agent".into());
    }
    setup(&cfg).await?;
    let cfg = Arc::new(cfg);
    let run_id = format!("b{:08x}", rand::random::<u32>());
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = cpu_us();
    let start = Instant::now();
    let workers: Vec<_> = (0..cfg.connections)
        .map(|id| {
            let w = Worker {
                cfg: cfg.clone(),
                id,
                run: run_id.clone(),
                counters: counters.clone(),
                stop: stop.clone(),
            };
            tokio::spawn(w.run())
        })
        .collect();
    let bar = if cfg.progress {
        let bar = indicatif::ProgressBar::new(cfg.duration.as_millis() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {msg}",
            )
            .expect("valid template"),
        );
        Some(bar)
    } else {
        None
    };
    let done = || {
        let t = counters.transactions.load(Ordering::Relaxed);
        cfg.transactions.is_some_and(|max| t >= max)
    };
    while start.elapsed() < cfg.duration && !done() && !workers.iter().all(|w| w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(bar) = &bar {
            let secs = start.elapsed().as_secs_f64();
            let t = counters.transactions.load(Ordering::Relaxed);
            bar.set_position(start.elapsed().as_millis() as u64);
            bar.set_message(format!(
                "{t} transactions, {:.0}/s, {} denied, {} errors",
                t as f64 / secs,
                counters.denied.load(Ordering::Relaxed),
                counters.errors.load(Ordering::Relaxed)
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Hists::new();
    for w in workers {
        let h = w.await.map_err(|e| e.to_string())?;
        all.reserve.add(&h.reserve).map_err(|e| e.to_string())?;
        all.commit.add(&h.commit).map_err(|e| e.to_string())?;
        all.release.add(&h.release).map_err(|e| e.to_string())?;
        all.count.add(&h.count).map_err(|e| e.to_string())?;
        all.cache_get.add(&h.cache_get).map_err(|e| e.to_string())?;
        all.cache_set.add(&h.cache_set).map_err(|e| e.to_string())?;
        all.ping.add(&h.ping).map_err(|e| e.to_string())?;
        all.first_error = all.first_error.or(h.first_error);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_us().saturating_sub(cpu_before);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let sent = all.reserve.len()
        + all.commit.len()
        + all.release.len()
        + all.count.len()
        + all.cache_get.len()
        + all.cache_set.len()
        + all.ping.len();
    let transactions = if cfg.ping {
        all.ping.len() / 2
    } else {
        all.reserve.len()
    };
    let mut commands = if cfg.ping {
        vec![("ping".to_string(), stats(&all.ping, secs))]
    } else {
        vec![("reserve".to_string(), stats(&all.reserve, secs))]
    };
    if !all.commit.is_empty() {
        commands.push(("commit".into(), stats(&all.commit, secs)));
    }
    if !all.release.is_empty() {
        commands.push(("release".into(), stats(&all.release, secs)));
    }
    if !all.count.is_empty() {
        commands.push(("count".into(), stats(&all.count, secs)));
    }
    if !all.cache_get.is_empty() {
        commands.push(("cache.get".into(), stats(&all.cache_get, secs)));
    }
    if !all.cache_set.is_empty() {
        commands.push(("cache.set".into(), stats(&all.cache_set, secs)));
    }
    Ok(BenchReport {
        target: target(&cfg),
        connections: cfg.connections,
        pipeline: if cfg.rate.is_some() { 1 } else { cfg.pipeline },
        mode: if cfg.rate.is_some() { "open" } else { "closed" }.into(),
        target_rate: cfg.rate,
        seconds: secs,
        transactions,
        granted: counters.granted.load(Ordering::Relaxed),
        abandoned: counters.abandoned.load(Ordering::Relaxed),
        denied: counters.denied.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        first_error: all.first_error,
        commands_per_second: sent as f64 / secs,
        commands,
        client_cpu_us_per_transaction: cpu as f64 / transactions.max(1) as f64,
    })
}

/// CPU time (user + system) this process has used, in µs.
fn cpu_us() -> u64 {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(u.ru_utime) + us(u.ru_stime)
}

/// The report as a table for a terminal.
pub fn format_report(r: &BenchReport) -> String {
    let mut out = format!(
        "spendb bench → {}: {} connections, {} loop{}{}, {:.1} s\n",
        r.target,
        r.connections,
        r.mode,
        if r.mode == "closed" {
            format!(", pipeline {}", r.pipeline)
        } else {
            String::new()
        },
        r.target_rate
            .map_or(String::new(), |t| format!(", target {t:.0} transactions/s")),
        r.seconds
    );
    out += &format!(
        "transactions {} ({:.0}/s): granted {} ({} left to expire), denied {}, errors {}; {:.0} commands/s\n",
        r.transactions,
        r.transactions as f64 / r.seconds,
        r.granted,
        r.abandoned,
        r.denied,
        r.errors,
        r.commands_per_second
    );
    out += &format!(
        "{:<8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}   (latency, ms)\n",
        "command", "count", "per sec", "p50", "p90", "p99", "p99.9", "max"
    );
    let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
    for (name, s) in &r.commands {
        out += &format!(
            "{:<8} {:>10} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            name,
            s.count,
            s.per_second,
            ms(s.p50_us),
            ms(s.p90_us),
            ms(s.p99_us),
            ms(s.p999_us),
            ms(s.max_us)
        );
    }
    out += &format!(
        "client CPU {:.1} µs a transaction (this load generator's own, on the server's cores)\n",
        r.client_cpu_us_per_transaction
    );
    if let Some(e) = &r.first_error {
        out += &format!("first error: {e}\n");
    }
    out
}
