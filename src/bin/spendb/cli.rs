//! The command line: clap's definitions of `spendb serve`, `spendb bench`
//! and `spendb ledger`, and the checks that turn flags into the engine's,
//! the rules' and the webhooks' settings (durations parsed by clap).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use spendb::engine::Durability;
use spendb::state::limit::parse_duration_ms;
use spendb::state::money::parse_usd;
use spendb::state::price::Price;
use spendb::state::runs::MAX_WINDOW;
use spendb::state::Config;

/// A duration flag ("500ms", "10s", "1m", "24h"), parsed by clap.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    parse_duration_ms(s).map(Duration::from_millis)
}

/// A share of a limit, `0.5%` (up to four decimals, at most `100%`; a
/// bare `0` is none), in millionths.
pub(crate) fn share_ppm(s: &str) -> Result<u64, String> {
    let bad = || format!("'{s}': a share of the limit such as 0.5% (0% to 100%)");
    if s.trim() == "0" {
        return Ok(0);
    }
    let number = s.trim().strip_suffix('%').ok_or_else(bad)?;
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) if digits(f) => (w, f),
        Some(_) => return Err(bad()),
        None => (number, ""),
    };
    if !digits(whole) || frac.len() > 4 || whole.len() > 3 {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let frac: u64 = format!("{frac:0<4}").parse().map_err(|_| bad())?;
    let ppm = whole * 10_000 + frac;
    match ppm <= 1_000_000 {
        true => Ok(ppm),
        false => Err(bad()),
    }
}

/// A file mode in octal ("700", "0770"): permission bits only.
pub(crate) fn octal_mode(s: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(s, 8).map_err(|_| format!("{s:?} is not an octal mode"))?;
    if mode > 0o777 {
        return Err(format!("{s:?}: a mode is at most 777"));
    }
    Ok(mode)
}

pub(crate) fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

#[derive(Parser)]
#[command(
    name = "spendb",
    version,
    about = "A spend database server for LLM agents"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
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
    /// Rebuild a node's data dir from its archive (--archive): the ledger
    /// (to its end, or --to-seq), the snapshots and rollups it covers.
    Restore(RestoreArgs),
    /// Cluster mode (docs/CLUSTER.md): look at a cluster in etcd.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
}

#[derive(Subcommand)]
pub(crate) enum ClusterCmd {
    /// Print the cluster's figures in etcd as JSON: the registered nodes
    /// (epoch, lease), and every pool (limit, granted, consumed, presumed,
    /// available) with each node's grant.
    Status {
        /// etcd client URLs, comma-separated (e.g. http://127.0.0.1:2379).
        #[arg(long, env = "SPENDB_ETCD", value_delimiter = ',', required = true)]
        etcd: Vec<String>,
    },
    /// Print the cluster's spend: every node's books in the archive (live,
    /// dead or removed nodes alike, each as of the last entry it shipped),
    /// merged; the nodes etcd lists as live that the archive lacks are
    /// named as missing.
    Report(Box<ClusterReportArgs>),
}

/// `spendb cluster report`.
#[derive(Args)]
pub(crate) struct ClusterReportArgs {
    /// etcd client URLs, comma-separated (the live nodes).
    #[arg(long, env = "SPENDB_ETCD", value_delimiter = ',', required = true)]
    pub(crate) etcd: Vec<String>,
    /// The archive the nodes ship to (their --archive): each node's books
    /// are read from it.
    #[arg(long, env = "SPENDB_ARCHIVE", required = true)]
    pub(crate) archive: String,
    /// scope (default), model, day or hour (UTC).
    #[arg(long, default_value = "scope")]
    pub(crate) group: String,
    /// With --group scope: how many segments of the scope to keep.
    #[arg(long, default_value_t = 1)]
    pub(crate) level: usize,
    /// Only spend at or below this scope.
    #[arg(long)]
    pub(crate) scope: Option<String>,
    /// Spend at or after this time (ms since the epoch; rounded down to
    /// the hour).
    #[arg(long)]
    pub(crate) from: Option<u64>,
    /// Spend before this time (ms since the epoch; rounded down to the hour).
    #[arg(long)]
    pub(crate) to: Option<u64>,
    /// Print JSON (as /v1/reports/spend answers) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand)]
pub(crate) enum LedgerCmd {
    /// Replay the whole ledger, check every CRC and entry, and compare the
    /// rebuilt state with the stored snapshots. Read-only; for a complete
    /// answer run it on a stopped server's data dir.
    Verify {
        #[arg(long, env = "SPENDB_DATA_DIR", default_value = "./spendb-data")]
        data_dir: PathBuf,
        /// Verify a node's archive instead (`<archive url>/<node>`, e.g.
        /// s3://bucket/prefix/node-1): restored into a temporary dir first.
        #[arg(long)]
        from: Option<String>,
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
        /// Export a node's archive instead (`<archive url>/<node>`):
        /// restored into a temporary dir first.
        #[arg(long)]
        from: Option<String>,
    },
}

/// `spendb restore`.
#[derive(Args)]
pub(crate) struct RestoreArgs {
    /// A node's archive: `<archive url>/<node>` (s3://bucket/prefix/node-1,
    /// file:///mnt/archive/node-1). S3 credentials from the environment.
    #[arg(long)]
    pub(crate) from: String,
    /// The data dir to rebuild (must be empty or absent).
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// Restore the ledger through this entry only (the books as of then).
    #[arg(long)]
    pub(crate) to_seq: Option<u64>,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    #[arg(long, short = 'p', default_value_t = 7379)]
    pub(crate) port: u16,
    /// Connect to this Unix socket instead of --host/--port (as
    /// redis-benchmark -s).
    #[arg(long, short = 's')]
    pub(crate) socket: Option<PathBuf>,
    /// Password for AUTH (default user).
    #[arg(long, env = "SPENDB_BENCH_PASSWORD")]
    pub(crate) password: Option<String>,
    /// Connections, each its own task.
    #[arg(long, short = 'c', default_value_t = 50)]
    pub(crate) connections: usize,
    /// Transactions in flight per connection (closed loop only).
    #[arg(long, short = 'P', default_value_t = 1)]
    pub(crate) pipeline: usize,
    /// Open loop: start this many transactions per second over all
    /// connections, on schedule (latency without coordinated omission).
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// How long to run, e.g. 10s, 1m.
    #[arg(long, short = 'd', default_value = "10s", value_parser = duration)]
    pub(crate) duration: Duration,
    /// Stop after this many transactions (if sooner than --duration).
    #[arg(long, short = 'n')]
    pub(crate) transactions: Option<u64>,
    /// Scope tree as ORGSxTEAMSxAGENTS (teams per org, agents per team).
    #[arg(long, default_value = "2x4x16")]
    pub(crate) tree: String,
    /// Each transaction is two PINGs instead of RESERVE and COMMIT, on
    /// the same connections and schedule: the floor this client and the
    /// transport add to every figure.
    #[arg(long)]
    pub(crate) ping: bool,
    /// Fraction of granted holds released instead of committed.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) release_ratio: f64,
    /// Fraction of RESERVEs sent to a spent budget (denied).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) deny_ratio: f64,
    /// Fraction of transactions that COUNT a ~1 KB prompt first.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) count_ratio: f64,
    /// Fraction of transactions that CACHE.GET a prompt first (hits).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) cache_ratio: f64,
    /// Fraction of granted holds left to expire (neither committed nor released).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) abandon_ratio: f64,
    /// TTL of each RESERVE, in ms (default: the server's).
    #[arg(long)]
    pub(crate) ttl: Option<u64>,
    /// Fraction of transactions that CACHE.SET a new key with a 10 s TTL (cache churn).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) cache_set_ratio: f64,
    #[arg(long, default_value = "gpt-4o")]
    pub(crate) model: String,
    #[arg(long, default_value_t = 1000)]
    pub(crate) input_tokens: u64,
    #[arg(long, default_value_t = 500)]
    pub(crate) output_tokens: u64,
    /// Also write the results as JSON to this file ("-": standard output,
    /// instead of the table).
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
}

#[derive(Args)]
pub(crate) struct RulesArgs {
    /// Price for models the table does not know, as "<input usd/M>:<output usd/M>"
    /// (default: unknown models get NOPRICE).
    #[arg(long, env = "SPENDB_DEFAULT_PRICE")]
    pub(crate) default_price: Option<String>,
    /// How long settled holds and spend ids are remembered for idempotent
    /// replays (at most 7d).
    #[arg(long, env = "SPENDB_ID_RETENTION", default_value = "10m", value_parser = duration)]
    pub(crate) id_retention: Duration,
    /// Hold TTL when RESERVE gives none.
    #[arg(long, env = "SPENDB_DEFAULT_TTL", default_value = "10m", value_parser = duration)]
    pub(crate) default_ttl: Duration,
    /// Output tokens a RESERVE without OUTPUT holds for a model whose
    /// maximum output the price table does not know.
    #[arg(long, env = "SPENDB_DEFAULT_OUTPUT", default_value_t = 4096)]
    pub(crate) default_output: u64,
    /// An agent run (STEP) that has not stepped for this long is forgotten.
    #[arg(long, env = "SPENDB_RUN_TIMEOUT", default_value = "1h", value_parser = duration)]
    pub(crate) run_timeout: Duration,
    /// Loop guard default: steps allowed per run when STEP gives no MAX.
    #[arg(long, env = "SPENDB_LOOP_MAX_STEPS", default_value_t = 100)]
    pub(crate) loop_max_steps: u64,
    /// Loop guard default: a signature seen this many times within the
    /// window is denied (STEP … REPEATS).
    #[arg(long, env = "SPENDB_LOOP_REPEATS", default_value_t = 3)]
    pub(crate) loop_repeats: u64,
    /// Loop guard default: how many recent steps the repeat rule looks at
    /// (STEP … WINDOW; at most 100).
    #[arg(long, env = "SPENDB_LOOP_WINDOW", default_value_t = 5)]
    pub(crate) loop_window: u64,
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Where the ledger and snapshots live.
    #[arg(long, env = "SPENDB_DATA_DIR", default_value = "./spendb-data")]
    pub(crate) data_dir: PathBuf,
    /// Redis-protocol port (0: any free port, printed at start).
    #[arg(long, env = "SPENDB_PORT", default_value_t = 7379)]
    pub(crate) port: u16,
    /// Address to bind.
    #[arg(long, env = "SPENDB_BIND", default_value = "127.0.0.1")]
    pub(crate) bind: IpAddr,
    /// Also serve the Redis protocol on this Unix socket (a sidecar's
    /// clients skip the TCP stack). A stale socket file there is replaced;
    /// a live server's is not.
    #[arg(long, env = "SPENDB_UNIXSOCKET")]
    pub(crate) unixsocket: Option<PathBuf>,
    /// The Unix socket's permissions, in octal as Redis takes them (e.g.
    /// 770 to let the group's users connect); default: as the umask leaves
    /// them.
    #[arg(long, env = "SPENDB_UNIXSOCKETPERM", value_parser = octal_mode, requires = "unixsocket")]
    pub(crate) unixsocketperm: Option<u32>,
    /// fsync (reply after fsync), interval:<ms> (sync at most every ms), or none.
    #[arg(long, env = "SPENDB_DURABILITY", default_value = "fsync")]
    pub(crate) durability: Durability,
    /// Who writes a group commit in fsync mode: leader (the request that
    /// finds no write in flight writes and syncs the group on its own
    /// thread) or thread (a committer thread does, and wakes the requests).
    /// For measuring the two; docs/BENCHMARKS.md.
    #[arg(long, env = "SPENDB_GROUP_COMMIT", default_value = "leader")]
    pub(crate) group_commit: spendb::engine::GroupCommit,
    /// Password clients must give (AUTH / HELLO … AUTH) before any command.
    #[arg(long, env = "SPENDB_REQUIREPASS", hide_env_values = true)]
    pub(crate) requirepass: Option<String>,
    /// Users, their passwords, commands and scope prefixes (TOML; see docs/OPERATIONS.md).
    #[arg(long, env = "SPENDB_USERS")]
    pub(crate) users: Option<PathBuf>,
    /// Allow binding a non-loopback address without a password.
    #[arg(long, env = "SPENDB_INSECURE_NO_AUTH")]
    pub(crate) insecure_no_auth: bool,
    /// Port of the HTTP admin API (on --admin-bind); 0 picks a free one.
    #[arg(long, env = "SPENDB_ADMIN_PORT", default_value_t = 7380)]
    pub(crate) admin_port: u16,
    /// Address of the admin API, if not --bind's: e.g. 0.0.0.0 so that a
    /// kubelet's probes reach /readyz while the Redis protocol stays on
    /// loopback and a Unix socket. Off loopback it needs --admin-token or
    /// a password (or --insecure-no-auth).
    #[arg(long, env = "SPENDB_ADMIN_BIND")]
    pub(crate) admin_bind: Option<IpAddr>,
    /// Bearer token the admin API requires on everything but /healthz and
    /// /readyz (required when --bind is not a loopback address).
    #[arg(long, env = "SPENDB_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
    /// Threads that serve the Redis protocol, the Unix socket and the admin
    /// API (the async runtime's workers; the ledger, snapshots and the
    /// semantic index have threads of their own). Default: one per core.
    /// One keeps a sidecar to one core's protocol work; on two cores it was
    /// no faster (docs/OPERATIONS.md, "Threads").
    #[arg(long, env = "SPENDB_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) workers: Option<u16>,
    /// Most client connections at once; more are refused with an error.
    #[arg(long, env = "SPENDB_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub(crate) max_connections: u64,
    /// Close connections idle this long (e.g. 300s); 0 never does.
    #[arg(long, env = "SPENDB_IDLE_TIMEOUT", default_value = "0", value_parser = duration)]
    pub(crate) idle_timeout: Duration,
    /// Close connections that do not read their replies for this long.
    #[arg(long, env = "SPENDB_WRITE_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub(crate) write_timeout: Duration,
    /// SLOWLOG records commands whose engine batch took at least this long
    /// (0 records every command).
    #[arg(long, env = "SPENDB_SLOWLOG_THRESHOLD", default_value = "10ms", value_parser = duration)]
    pub(crate) slowlog_threshold: Duration,
    /// Entries SLOWLOG keeps (the oldest go first).
    #[arg(long, env = "SPENDB_SLOWLOG_MAX_LEN", default_value_t = 128)]
    pub(crate) slowlog_max_len: usize,
    /// Largest single argument, in bytes (checked before it is buffered).
    #[arg(long, env = "SPENDB_MAX_BULK", default_value_t = 16 * 1024 * 1024)]
    pub(crate) max_bulk: usize,
    /// Most arguments in one request.
    #[arg(long, env = "SPENDB_MAX_ARGS", default_value_t = 1024 * 1024)]
    pub(crate) max_args: usize,
    /// Bytes (keys + values) each cache namespace may hold before its least
    /// recently used entries are evicted.
    #[arg(long, env = "SPENDB_CACHE_MAX_BYTES", default_value_t = 64 << 20)]
    pub(crate) cache_max_bytes: u64,
    /// Largest value CACHE.SET accepts, in bytes.
    #[arg(long, env = "SPENDB_CACHE_MAX_VALUE", default_value_t = 1 << 20)]
    pub(crate) cache_max_value: usize,
    /// Entries from which a semantic cache namespace is searched by an HNSW
    /// graph (approximate, built in the background) instead of exactly.
    #[arg(long, env = "SPENDB_SEMANTIC_APPROX_FROM", default_value_t = 10_000)]
    pub(crate) semantic_approx_from: usize,
    /// Snapshot the state at least this many ledger entries apart (0: only at
    /// shutdown); a larger state waits longer, as long as a start after a
    /// crash stays short (docs/OPERATIONS.md, "Durability").
    #[arg(long, env = "SPENDB_SNAPSHOT_EVERY", default_value_t = 100_000)]
    pub(crate) snapshot_every: u64,
    /// Keep this many newest ledger entries live; older 64 MiB segments that
    /// every snapshot covers move to <data-dir>/archive/ (unset: keep all).
    #[arg(long, env = "SPENDB_LEDGER_RETAIN")]
    pub(crate) ledger_retain: Option<u64>,
    /// Ship the ledger, snapshots and rollups to object storage:
    /// s3://bucket/prefix (S3 and S3-compatible stores; credentials and
    /// endpoint from the environment: AWS_ACCESS_KEY_ID, AWS_ENDPOINT, …)
    /// or file:///path (docs/OPERATIONS.md, "Archive").
    #[arg(long, env = "SPENDB_ARCHIVE")]
    pub(crate) archive: Option<String>,
    /// This node's folder in the archive (default: --node, else the host
    /// name).
    #[arg(long, env = "SPENDB_ARCHIVE_NODE", requires = "archive")]
    pub(crate) archive_node: Option<String>,
    /// Ship a chunk at least this often (and whenever a segment closes).
    #[arg(long, env = "SPENDB_ARCHIVE_INTERVAL", default_value = "10s", value_parser = duration)]
    pub(crate) archive_interval: Duration,
    /// Also write the ledger as Parquet files, partitioned by node and day.
    #[arg(long, env = "SPENDB_ARCHIVE_PARQUET", requires = "archive")]
    pub(crate) archive_parquet: bool,
    /// Log an error and set spendb_archive_lagging once the oldest entry
    /// not yet shipped is older than this.
    #[arg(long, env = "SPENDB_ARCHIVE_LAG_ALERT", default_value = "5m", value_parser = duration)]
    pub(crate) archive_lag_alert: Duration,
    /// Size at which a ledger segment is closed (tests of archiving).
    #[arg(long, hide = true, default_value_t = spendb::store::log_store::SEGMENT_MAX)]
    pub(crate) segment_bytes: u64,
    /// Where alerts are POSTed as JSON (a scope's rules may name their own).
    #[arg(long, env = "SPENDB_ALERT_WEBHOOK")]
    pub(crate) alert_webhook: Option<String>,
    /// First retry of a failed webhook POST after this long; each further
    /// retry waits twice as long, up to --webhook-max-backoff.
    #[arg(long, env = "SPENDB_WEBHOOK_BACKOFF", default_value = "500ms", value_parser = duration)]
    pub(crate) webhook_backoff: Duration,
    #[arg(long, env = "SPENDB_WEBHOOK_MAX_BACKOFF", default_value = "60s", value_parser = duration)]
    pub(crate) webhook_max_backoff: Duration,
    /// Timeout of one webhook POST.
    #[arg(long, env = "SPENDB_WEBHOOK_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub(crate) webhook_timeout: Duration,
    /// Cluster mode: etcd client URLs, comma-separated; every node given the
    /// same etcd shares its limits (docs/CLUSTER.md).
    #[arg(long, env = "SPENDB_ETCD", value_delimiter = ',', requires = "node")]
    pub(crate) etcd: Vec<String>,
    /// Cluster mode: this node's name, unique in the cluster (letters,
    /// digits, '-', '_', '.').
    #[arg(long, env = "SPENDB_NODE", requires = "etcd")]
    pub(crate) node: Option<String>,
    /// Cluster mode: how long a node's registration lives without a
    /// keepalive; a dead node's room returns to the others after it.
    #[arg(long, env = "SPENDB_LEASE_TTL", default_value = "10s", value_parser = duration)]
    pub(crate) lease_ttl: Duration,
    /// Cluster mode: how far past its grant this node may go while it
    /// cannot reach etcd, as a share of each limit (`0.5%`): the cluster's
    /// spend stays within each limit plus every node's allowance. 0, the
    /// default, never passes a limit (the node fails closed).
    #[arg(long, env = "SPENDB_PARTITION_ALLOWANCE", default_value = "0%", value_parser = share_ppm)]
    pub(crate) partition_allowance: u64,
    #[command(flatten)]
    pub(crate) rules: RulesArgs,
}

/// Checks a cluster node's name (one segment of the store's keys).
pub(crate) fn node_name(n: &str) -> Result<&str, String> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    match ok {
        true => Ok(n),
        false => Err(format!(
            "--node '{n}': 1 to 64 letters, digits, '-', '_' or '.'"
        )),
    }
}

pub(crate) fn webhook_config(a: &ServeArgs) -> Result<spendb::webhook::WebhookConfig, String> {
    let ms = |d: Duration, flag: &str| match d.is_zero() {
        true => Err(format!("{flag} must be more than 0")),
        false => Ok(d),
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
        timeout: ms(a.webhook_timeout, "--webhook-timeout")?,
        base_backoff: ms(a.webhook_backoff, "--webhook-backoff")?,
        max_backoff: ms(a.webhook_max_backoff, "--webhook-max-backoff")?,
        ..Default::default()
    })
}

pub(crate) fn rules(a: &RulesArgs) -> Result<Config, String> {
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
    let default_ttl_ms = millis(a.default_ttl);
    let base = Config::default();
    if default_ttl_ms == 0 || default_ttl_ms > base.max_ttl_ms {
        return Err("--default-ttl must be between 1ms and 24h".into());
    }
    // A hold it remembers can be committed late; the reports' rollups count
    // a late COMMIT this long after its hold expired.
    let id_retention_ms = millis(a.id_retention);
    if id_retention_ms > spendb::state::rollup::LATE_COMMIT_MS {
        return Err("--id-retention must be at most 7d".into());
    }
    Ok(Config {
        default_price,
        id_retention_ms,
        default_ttl_ms,
        default_output: match a.default_output {
            n if n == 0 || n > spendb::state::bounds::MAX_TOKENS => {
                return Err(format!(
                    "--default-output must be between 1 and {}",
                    spendb::state::bounds::MAX_TOKENS
                ))
            }
            n => n,
        },
        run_timeout_ms: match millis(a.run_timeout) {
            0 => return Err("--run-timeout must be more than 0".into()),
            ms => ms,
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
        if c.loop_repeats < 2 || c.loop_window < c.loop_repeats || c.loop_window > MAX_WINDOW {
            return Err(format!(
                "--loop-repeats must be at least 2 and --loop-window from it to {MAX_WINDOW}"
            ));
        }
        Ok(c)
    })
}

#[cfg(test)]
mod tests {
    use super::share_ppm;

    #[test]
    fn a_partition_allowance_is_a_share_of_the_limit() {
        assert_eq!(share_ppm("0"), Ok(0));
        assert_eq!(share_ppm("0%"), Ok(0));
        assert_eq!(share_ppm("1%"), Ok(10_000));
        assert_eq!(share_ppm("0.5%"), Ok(5_000));
        assert_eq!(share_ppm("2.0001%"), Ok(20_001));
        assert_eq!(share_ppm("100%"), Ok(1_000_000));
        for bad in [
            "1", "100.01%", "101%", "-1%", "1.23456%", ".5%", "5.%", "x%", "", "%",
        ] {
            assert!(share_ppm(bad).is_err(), "{bad}");
        }
    }
}
