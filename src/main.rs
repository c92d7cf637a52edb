//! The spendb command line: `spendb serve`, `spendb bench`, `spendb ledger verify`.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use spendb::embedded::{Options, Spendb};
use spendb::engine::{Durability, EngineConfig};
use spendb::resp::{self, frame::FrameLimits, ServerCtx};
use spendb::state::limit::parse_duration_ms;
use spendb::state::money::parse_usd;
use spendb::state::price::Price;
use spendb::state::Config;
use spendb::store::cache::CacheLimits;
use spendb::store::{reader::LedgerReader, recovery};

#[derive(Parser)]
#[command(
    name = "spendb",
    version,
    about = "A spend database server for LLM agents"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Load a running spendb with RESERVE + COMMIT transactions and report
    /// throughput and latency percentiles (see docs/BENCHMARKS.md).
    Bench(Box<BenchArgs>),
    /// Inspect the ledger.
    Ledger {
        #[command(subcommand)]
        cmd: LedgerCmd,
    },
}

#[derive(Subcommand)]
enum LedgerCmd {
    /// Replay the whole ledger, check every CRC, and compare the rebuilt state
    /// with the stored snapshots. Run it on a stopped server's data dir.
    Verify {
        #[arg(long, env = "SPENDB_DATA_DIR", default_value = "./spendb-data")]
        data_dir: PathBuf,
    },
    /// Print ledger entries as JSON lines (archived ones too), oldest first:
    /// seq, ts, kind and its fields (amounts in nano-USD). Works while the
    /// server runs (it reads the segment files).
    Export {
        #[arg(long, env = "SPENDB_DATA_DIR", default_value = "./spendb-data")]
        data_dir: PathBuf,
        /// Only entries with a seq above this.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, short = 'p', default_value_t = 7379)]
    port: u16,
    /// Password for AUTH (default user).
    #[arg(long, env = "SPENDB_BENCH_PASSWORD")]
    password: Option<String>,
    /// Connections, each its own task.
    #[arg(long, short = 'c', default_value_t = 50)]
    connections: usize,
    /// Transactions in flight per connection (closed loop only).
    #[arg(long, short = 'P', default_value_t = 1)]
    pipeline: usize,
    /// Open loop: start this many transactions per second over all
    /// connections, on schedule (latency without coordinated omission).
    #[arg(long)]
    rate: Option<f64>,
    /// How long to run, e.g. 10s, 1m.
    #[arg(long, short = 'd', default_value = "10s")]
    duration: String,
    /// Stop after this many transactions (if sooner than --duration).
    #[arg(long, short = 'n')]
    transactions: Option<u64>,
    /// Scope tree as ORGSxTEAMSxAGENTS (teams per org, agents per team).
    #[arg(long, default_value = "2x4x16")]
    tree: String,
    /// Fraction of granted holds released instead of committed.
    #[arg(long, default_value_t = 0.0)]
    release_ratio: f64,
    /// Fraction of RESERVEs sent to a spent budget (denied).
    #[arg(long, default_value_t = 0.0)]
    deny_ratio: f64,
    /// Fraction of transactions that COUNT a ~1 KB prompt first.
    #[arg(long, default_value_t = 0.0)]
    count_ratio: f64,
    /// Fraction of transactions that CACHE.GET a prompt first (hits).
    #[arg(long, default_value_t = 0.0)]
    cache_ratio: f64,
    /// Fraction of granted holds left to expire (neither committed nor released).
    #[arg(long, default_value_t = 0.0)]
    abandon_ratio: f64,
    /// TTL of each RESERVE, in ms (default: the server's).
    #[arg(long)]
    ttl: Option<u64>,
    /// Fraction of transactions that CACHE.SET a new key with a 10 s TTL (cache churn).
    #[arg(long, default_value_t = 0.0)]
    cache_set_ratio: f64,
    #[arg(long, default_value = "gpt-4o")]
    model: String,
    #[arg(long, default_value_t = 1000)]
    input_tokens: u64,
    #[arg(long, default_value_t = 500)]
    output_tokens: u64,
    /// Also write the results as JSON to this file ("-": standard output,
    /// instead of the table).
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn bench(a: BenchArgs) -> Result<(), String> {
    let tree: Vec<usize> = a
        .tree
        .split('x')
        .map(|n| n.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            format!(
                "--tree '{}': expected ORGSxTEAMSxAGENTS, e.g. 2x4x16",
                a.tree
            )
        })?;
    let [orgs, teams, agents] = tree[..] else {
        return Err(format!(
            "--tree '{}': expected ORGSxTEAMSxAGENTS, e.g. 2x4x16",
            a.tree
        ));
    };
    let duration = Duration::from_millis(parse_duration_ms(&a.duration)?);
    let cfg = spendb::bench::BenchConfig {
        host: a.host,
        port: a.port,
        password: a.password,
        connections: a.connections,
        pipeline: a.pipeline,
        rate: a.rate,
        duration,
        transactions: a.transactions,
        tree: (orgs, teams, agents),
        release_ratio: a.release_ratio,
        deny_ratio: a.deny_ratio,
        count_ratio: a.count_ratio,
        cache_ratio: a.cache_ratio,
        abandon_ratio: a.abandon_ratio,
        ttl_ms: a.ttl,
        cache_set_ratio: a.cache_set_ratio,
        model: a.model,
        input_tokens: a.input_tokens,
        output_tokens: a.output_tokens,
        progress: !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let report = runtime.block_on(spendb::bench::run(cfg))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    match a.json.as_deref() {
        Some(p) if p == std::path::Path::new("-") => println!("{json}"),
        Some(p) => {
            std::fs::write(p, json + "\n").map_err(|e| format!("writing {}: {e}", p.display()))?;
            print!("{}", spendb::bench::format_report(&report));
        }
        None => print!("{}", spendb::bench::format_report(&report)),
    }
    if report.errors > 0 {
        return Err(format!(
            "{} errors; first: {}",
            report.errors,
            report.first_error.as_deref().unwrap_or("?")
        ));
    }
    Ok(())
}

#[derive(Args)]
struct RulesArgs {
    /// Price for models the table does not know, as "<input usd/M>:<output usd/M>"
    /// (default: unknown models get NOPRICE).
    #[arg(long, env = "SPENDB_DEFAULT_PRICE")]
    default_price: Option<String>,
    /// How long settled holds and spend ids are remembered for idempotent replays.
    #[arg(long, env = "SPENDB_ID_RETENTION", default_value = "10m")]
    id_retention: String,
    /// Hold TTL when RESERVE gives none.
    #[arg(long, env = "SPENDB_DEFAULT_TTL", default_value = "10m")]
    default_ttl: String,
    /// An agent run (STEP) that has not stepped for this long is forgotten.
    #[arg(long, env = "SPENDB_RUN_TIMEOUT", default_value = "1h")]
    run_timeout: String,
    /// Loop guard default: steps allowed per run when STEP gives no MAX.
    #[arg(long, env = "SPENDB_LOOP_MAX_STEPS", default_value_t = 100)]
    loop_max_steps: u64,
    /// Loop guard default: a signature seen this many times within the
    /// window is denied (STEP … REPEATS).
    #[arg(long, env = "SPENDB_LOOP_REPEATS", default_value_t = 3)]
    loop_repeats: u64,
    /// Loop guard default: how many recent steps the repeat rule looks at
    /// (STEP … WINDOW; at most 100).
    #[arg(long, env = "SPENDB_LOOP_WINDOW", default_value_t = 5)]
    loop_window: u64,
}

#[derive(Args)]
struct ServeArgs {
    /// Where the ledger and snapshots live.
    #[arg(long, env = "SPENDB_DATA_DIR", default_value = "./spendb-data")]
    data_dir: PathBuf,
    /// Redis-protocol port (0: any free port, printed at start).
    #[arg(long, env = "SPENDB_PORT", default_value_t = 7379)]
    port: u16,
    /// Address to bind.
    #[arg(long, env = "SPENDB_BIND", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// fsync (reply after fsync), interval:<ms> (sync at most every ms), or none.
    #[arg(long, env = "SPENDB_DURABILITY", default_value = "fsync")]
    durability: Durability,
    /// Password clients must give (AUTH / HELLO … AUTH) before any command.
    #[arg(long, env = "SPENDB_REQUIREPASS", hide_env_values = true)]
    requirepass: Option<String>,
    /// Users, their passwords, commands and scope prefixes (TOML; see docs/OPERATIONS.md).
    #[arg(long, env = "SPENDB_USERS")]
    users: Option<PathBuf>,
    /// Allow binding a non-loopback address without a password.
    #[arg(long, env = "SPENDB_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// Port of the HTTP admin API (same --bind address); 0 picks a free one.
    #[arg(long, env = "SPENDB_ADMIN_PORT", default_value_t = 7380)]
    admin_port: u16,
    /// Bearer token the admin API requires on everything but /healthz and
    /// /readyz (required when --bind is not a loopback address).
    #[arg(long, env = "SPENDB_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Most client connections at once; more are refused with an error.
    #[arg(long, env = "SPENDB_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: u64,
    /// Close connections idle this long (e.g. 300s); 0 never does.
    #[arg(long, env = "SPENDB_IDLE_TIMEOUT", default_value = "0")]
    idle_timeout: String,
    /// Close connections that do not read their replies for this long.
    #[arg(long, env = "SPENDB_WRITE_TIMEOUT", default_value = "30s")]
    write_timeout: String,
    /// Largest single argument, in bytes (checked before it is buffered).
    #[arg(long, env = "SPENDB_MAX_BULK", default_value_t = 16 * 1024 * 1024)]
    max_bulk: usize,
    /// Most arguments in one request.
    #[arg(long, env = "SPENDB_MAX_ARGS", default_value_t = 1024 * 1024)]
    max_args: usize,
    /// Bytes (keys + values) each cache namespace may hold before its least
    /// recently used entries are evicted.
    #[arg(long, env = "SPENDB_CACHE_MAX_BYTES", default_value_t = 64 << 20)]
    cache_max_bytes: u64,
    /// Largest value CACHE.SET accepts, in bytes.
    #[arg(long, env = "SPENDB_CACHE_MAX_VALUE", default_value_t = 1 << 20)]
    cache_max_value: usize,
    /// Snapshot the state every this many ledger entries, or every as many as
    /// the records the state holds if that is more (0: only at shutdown).
    #[arg(long, env = "SPENDB_SNAPSHOT_EVERY", default_value_t = 100_000)]
    snapshot_every: u64,
    /// Keep this many newest ledger entries live; older 64 MiB segments that
    /// every snapshot covers move to <data-dir>/archive/ (unset: keep all).
    #[arg(long, env = "SPENDB_LEDGER_RETAIN")]
    ledger_retain: Option<u64>,
    /// Size at which a ledger segment is closed (tests of archiving).
    #[arg(long, hide = true, default_value_t = spendb::store::log_store::SEGMENT_MAX)]
    segment_bytes: u64,
    /// Where alerts are POSTed as JSON (a scope's rules may name their own).
    #[arg(long, env = "SPENDB_ALERT_WEBHOOK")]
    alert_webhook: Option<String>,
    /// First retry of a failed webhook POST after this long; each further
    /// retry waits twice as long, up to --webhook-max-backoff.
    #[arg(long, env = "SPENDB_WEBHOOK_BACKOFF", default_value = "500ms")]
    webhook_backoff: String,
    #[arg(long, env = "SPENDB_WEBHOOK_MAX_BACKOFF", default_value = "60s")]
    webhook_max_backoff: String,
    /// Timeout of one webhook POST.
    #[arg(long, env = "SPENDB_WEBHOOK_TIMEOUT", default_value = "5s")]
    webhook_timeout: String,
    #[command(flatten)]
    rules: RulesArgs,
}

fn webhook_config(a: &ServeArgs) -> Result<spendb::webhook::WebhookConfig, String> {
    let ms = |s: &str, flag: &str| match parse_duration_ms(s) {
        Ok(0) => Err(format!("{flag} must be more than 0")),
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(e) => Err(format!("{flag}: {e}")),
    };
    if let Some(u) = &a.alert_webhook {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(format!(
                "--alert-webhook '{u}': expected an http:// or https:// URL"
            ));
        }
    }
    Ok(spendb::webhook::WebhookConfig {
        default_url: a.alert_webhook.clone(),
        timeout: ms(&a.webhook_timeout, "--webhook-timeout")?,
        base_backoff: ms(&a.webhook_backoff, "--webhook-backoff")?,
        max_backoff: ms(&a.webhook_max_backoff, "--webhook-max-backoff")?,
        ..Default::default()
    })
}

fn rules(a: &RulesArgs) -> Result<Config, String> {
    let default_price = match &a.default_price {
        None => None,
        Some(s) => {
            let (i, o) = s
                .split_once(':')
                .ok_or("--default-price: expected <input usd/M>:<output usd/M>")?;
            let input = parse_usd(i).map_err(|e| format!("--default-price: {e}"))?;
            let output = parse_usd(o).map_err(|e| format!("--default-price: {e}"))?;
            Some(Price::new(input, output, None, None))
        }
    };
    let default_ttl_ms =
        parse_duration_ms(&a.default_ttl).map_err(|e| format!("--default-ttl: {e}"))?;
    let base = Config::default();
    if default_ttl_ms == 0 || default_ttl_ms > base.max_ttl_ms {
        return Err("--default-ttl must be between 1ms and 24h".into());
    }
    Ok(Config {
        default_price,
        id_retention_ms: parse_duration_ms(&a.id_retention)
            .map_err(|e| format!("--id-retention: {e}"))?,
        default_ttl_ms,
        run_timeout_ms: match parse_duration_ms(&a.run_timeout) {
            Ok(0) => return Err("--run-timeout must be more than 0".into()),
            Ok(ms) => ms,
            Err(e) => return Err(format!("--run-timeout: {e}")),
        },
        loop_max_steps: match a.loop_max_steps {
            0 => return Err("--loop-max-steps must be at least 1".into()),
            n => n,
        },
        loop_repeats: a.loop_repeats,
        loop_window: a.loop_window,
        ..base
    })
    .and_then(|c: Config| {
        if c.loop_repeats < 2 || c.loop_window < c.loop_repeats || c.loop_window > 100 {
            return Err(
                "--loop-repeats must be at least 2 and --loop-window from it to 100".into(),
            );
        }
        Ok(c)
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPENDB_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(a) => serve(*a),
        Cmd::Bench(a) => bench(*a),
        Cmd::Ledger {
            cmd: LedgerCmd::Verify { data_dir },
        } => verify(&data_dir),
        Cmd::Ledger {
            cmd: LedgerCmd::Export { data_dir, after },
        } => export(&data_dir, after),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spendb: {e}");
            ExitCode::FAILURE
        }
    }
}

fn verify(dir: &std::path::Path) -> Result<(), String> {
    // Read-only: no sled, nothing created or removed.
    let reader = LedgerReader::open(dir)?;
    let r = recovery::verify(&reader, Config::default())
        .map_err(|e| format!("ledger verify FAILED: {e}"))?;
    let from = match r.from_snapshot {
        Some(seq) => format!(
            " (older entries are archived elsewhere: replayed from the snapshot at entry {seq})"
        ),
        None => String::new(),
    };
    println!(
        "ledger ok: {} entries, every CRC checked, {} snapshot(s) matched the replay, {} scopes, {} open holds{from}",
        r.entries, r.snapshots_compared, r.scopes, r.open_holds
    );
    Ok(())
}

fn export(dir: &std::path::Path, mut after: u64) -> Result<(), String> {
    use std::io::Write as _;
    let reader = LedgerReader::open(dir)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        let page = reader
            .page(after, 65_536, |_| true)
            .map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            let line = spendb::admin::entry_json(e).to_string();
            if writeln!(out, "{line}").is_err() {
                return Ok(()); // the reader went away (e.g. `| head`)
            }
        }
    }
    out.flush().map_err(|e| e.to_string())
}

/// Keeps glibc's mmap threshold at its default 128 KiB instead of letting
/// it rise. The hold table's copy-on-write chunks (~320 KiB) are copied and
/// freed around every snapshot. With the dynamic threshold, the first free
/// raised it, later chunks came from the heap, and RSS crept up ~1 MiB a
/// minute in the soak. Pinned, each chunk is its own mapping and goes back
/// to the OS when freed: RSS stayed flat (41 MiB against 57 → 64 MiB over 5
/// minutes; docs/BENCHMARKS.md, "Soak").
fn pin_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn serve(a: ServeArgs) -> Result<(), String> {
    pin_mmap_threshold();
    let rules = rules(&a.rules)?;
    let webhooks = webhook_config(&a)?;
    let users = match &a.users {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--users {}: {e}", path.display()))?;
            spendb::auth::parse_users(&text)?
        }
        None => Vec::new(),
    };
    let auth = Arc::new(spendb::auth::Auth::new(a.requirepass.clone(), users));
    let has_password = auth.required();
    if !a.bind.is_loopback() && !has_password && !a.insecure_no_auth {
        return Err(format!(
            "refusing to serve on {} without a password: set --requirepass, or bind 127.0.0.1, \
             or pass --insecure-no-auth if the network is trusted",
            a.bind
        ));
    }
    // Off loopback there is always a password by now, and the admin API
    // then takes the same credentials (HTTP Basic) or --admin-token.
    let idle_timeout =
        match parse_duration_ms(&a.idle_timeout).map_err(|e| format!("--idle-timeout: {e}"))? {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
    let write_timeout = Duration::from_millis(
        parse_duration_ms(&a.write_timeout)
            .map_err(|e| format!("--write-timeout: {e}"))?
            .max(1),
    );
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let started = Instant::now();
    let options = Options {
        engine: EngineConfig {
            durability: a.durability,
            rules,
            snapshot_every: a.snapshot_every,
            retain_entries: a.ledger_retain,
        },
        segment_bytes: a.segment_bytes,
        cache: CacheLimits {
            max_bytes: a.cache_max_bytes,
            max_value: a.cache_max_value,
        },
    };
    // The server is a user of the embedded API: the same engine, store and
    // cache, with the Redis and HTTP front ends in front of them.
    let db = Spendb::open(&a.data_dir, options).map_err(|e| e.to_string())?;
    let rec = *db.recovered();
    let (handle, cache) = (db.engine().clone(), db.cache().clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    tracing::info!(
        "recovered {} ledger entries in {:?} (snapshot at {:?}, replayed {}{})",
        rec.last_seq,
        started.elapsed(),
        rec.snapshot_seq,
        rec.replayed,
        rec.cut_tail
            .map_or(String::new(), |s| format!(", cut a damaged tail at {s}")),
    );
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.bind, a.port))
            .await
            .map_err(|e| format!("binding {}:{}: {e}", a.bind, a.port))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        // Expired cache entries are reclaimed every second, and the cache
        // is written out (sled's flush) at the same time.
        let sweeper = {
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every.tick().await;
                    let cache = cache.clone();
                    let swept = tokio::task::spawn_blocking(move || {
                        cache.sweep(now_ms()).and_then(|n| cache.flush().map(|_| n))
                    })
                    .await;
                    if let Ok(Err(e)) = swept {
                        tracing::warn!("cache sweep failed: {e}");
                    }
                }
            })
        };
        let auth_for_admin = auth.clone();
        let ctx = Arc::new(ServerCtx {
            engine: handle.clone(),
            cache: cache.clone(),
            limits: FrameLimits {
                max_bulk: a.max_bulk,
                max_args: a.max_args,
                ..FrameLimits::default()
            },
            next_client_id: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            started,
            port: addr.port(),
            durability: a.durability,
            auth,
            max_connections: a.max_connections,
            idle_timeout,
            write_timeout,
        });
        tracing::info!(
            "serving the Redis protocol on {addr} (durability {:?})",
            a.durability
        );
        let admin_listener = tokio::net::TcpListener::bind((a.bind, a.admin_port))
            .await
            .map_err(|e| format!("binding the admin API on {}:{}: {e}", a.bind, a.admin_port))?;
        let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
        let admin_ctx = Arc::new(spendb::admin::AdminCtx {
            engine: handle.clone(),
            cache: cache.clone(),
            token: a.admin_token.clone(),
            auth: auth_for_admin,
            ledger: Arc::new(
                spendb::store::reader::LedgerReader::open(&a.data_dir)
                    .map_err(|e| format!("--data-dir: {e}"))?,
            ),
        });
        let admin = tokio::spawn(spendb::admin::serve(admin_listener, admin_ctx));
        let webhooks = spendb::webhook::spawn(handle.clone(), webhooks);
        tracing::info!("serving the admin API on http://{admin_addr}");
        // Tests and scripts read this line to learn the ports.
        println!("spendb ready resp={addr} admin={admin_addr}");
        let _ = std::io::stdout().flush();
        let mut failure = None;
        tokio::select! {
            _ = resp::run(listener, ctx) => {}
            _ = shutdown_signal() => tracing::info!("shutting down: finishing queued commands"),
            reason = handle.stopped_on_failure() => failure = Some(reason),
        }
        admin.abort();
        webhooks.abort();
        sweeper.abort();
        Ok::<_, String>(failure)
    });
    drop(runtime);
    // Finishes queued commands, writes a last snapshot, writes the cache out.
    let closed = db.close();
    if let Some(reason) = served? {
        return Err(format!("the engine stopped: {reason}"));
    }
    closed.map_err(|e| format!("closing: {e}"))?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
