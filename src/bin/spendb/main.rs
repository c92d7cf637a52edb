//! The spendb binary: `spendb serve` (the server, on the embedded API),
//! `spendb bench` (the load generator, with the default `bench` feature) and
//! `spendb ledger verify` / `export`. Flags: `cli.rs`.

#[cfg(feature = "bench")]
mod bench;
mod cli;

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use cli::{rules, webhook_config, Cli, ClusterCmd, Cmd, LedgerCmd, ServeArgs};
use spendb::embedded::{Options, Spendb};
use spendb::engine::EngineConfig;
use spendb::resp::{self, frame::FrameLimits, ServerCtx};
use spendb::state::Config;
use spendb::store::cache::CacheLimits;
use spendb::store::{reader::LedgerReader, recovery};

#[cfg(feature = "bench")]
fn bench(a: cli::BenchArgs) -> Result<(), String> {
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
    let duration = a.duration;
    let cfg = bench::BenchConfig {
        host: a.host,
        port: a.port,
        socket: a.socket,
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
        ping: a.ping,
        model: a.model,
        input_tokens: a.input_tokens,
        output_tokens: a.output_tokens,
        progress: !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let report = runtime.block_on(bench::run(cfg))?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    match a.json.as_deref() {
        Some(p) if p == std::path::Path::new("-") => println!("{json}"),
        Some(p) => {
            std::fs::write(p, json + "\n").map_err(|e| format!("writing {}: {e}", p.display()))?;
            print!("{}", bench::format_report(&report));
        }
        None => print!("{}", bench::format_report(&report)),
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
            cmd: LedgerCmd::Verify { data_dir, from },
        } => match from {
            Some(url) => from_archive(&url, verify),
            None => verify(&data_dir),
        },
        Cmd::Ledger {
            cmd:
                LedgerCmd::Export {
                    data_dir,
                    after,
                    from,
                },
        } => match from {
            Some(url) => from_archive(&url, |dir| export(dir, after)),
            None => export(&data_dir, after),
        },
        Cmd::Restore(a) => restore(a),
        Cmd::Cluster {
            cmd: ClusterCmd::Status { etcd },
        } => cluster_status(&etcd),
        Cmd::Cluster {
            cmd: ClusterCmd::Report(a),
        } => cluster_report(*a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spendb: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `spendb cluster report`: every node's books in the archive, merged.
fn cluster_report(a: cli::ClusterReportArgs) -> Result<(), String> {
    use spendb::state::money::format_usd;
    use spendb::state::rollup::HOUR_MS;
    use spendb::state::spend_report::{merge, SpendGroup, SpendQuery};
    let group = match a.group.as_str() {
        "scope" if (1..=8).contains(&a.level) => SpendGroup::Scope { level: a.level },
        "model" => SpendGroup::Model,
        "day" => SpendGroup::Day,
        "hour" => SpendGroup::Hour,
        _ => return Err("--group is scope (with --level 1 to 8), model, day or hour".into()),
    };
    let query = SpendQuery {
        group,
        scope: a.scope.clone(),
        from: a.from.map(|t| t / HOUR_MS * HOUR_MS),
        to: a.to.map(|t| t / HOUR_MS * HOUR_MS),
    };
    let mut store = spendb::cluster::etcd::EtcdStore::new(&a.etcd, Duration::from_secs(5));
    let live: Vec<String> = spendb::cluster::escrow::nodes(&mut store)
        .map_err(|e| format!("reading the live nodes from etcd: {e}"))?
        .into_iter()
        .map(|n| n.node)
        .collect();
    let books = spendb::store::archive::ArchiveBooks::open(&a.archive)?;
    let mut names = books.nodes()?;
    names.extend(live.iter().cloned());
    names.sort();
    names.dedup();
    let (mut parts, mut nodes, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    for n in names {
        match books.with(&n, |r, cov| (r.spend(&query), cov.clone())) {
            Ok((part, cov)) => {
                parts.push(part);
                nodes.push(
                    serde_json::json!({"node": n, "seq": cov.seq, "source": "archive",
                    "shipped_at": cov.ts, "live": live.contains(&n)}),
                );
            }
            Err(why) => missing.push(serde_json::json!({"node": n, "why": why})),
        }
    }
    let (rows, total) = merge(parts);
    if a.json {
        let tally = |key: Option<&str>, g: &spendb::state::spend_report::SpendTally| {
            let mut o = serde_json::json!({"cost": format_usd(g.cost), "tokens": g.tokens,
                "requests": g.requests, "saved": format_usd(g.saved)});
            if let Some(k) = key {
                o["key"] = k.into();
            }
            o
        };
        let groups: Vec<_> = rows.iter().map(|(k, g)| tally(Some(k), g)).collect();
        let body = serde_json::json!({"groups": groups, "total": tally(None, &total),
            "from": query.from, "to": query.to,
            "cluster": {"nodes": nodes, "complete": missing.is_empty(), "missing": missing}});
        println!(
            "{}",
            serde_json::to_string_pretty(&body).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "{:<40} {:>16} {:>14} {:>10} {:>14}",
        a.group, "cost USD", "tokens", "requests", "saved USD"
    );
    for (key, g) in rows
        .iter()
        .chain(std::iter::once(&("total".to_string(), total)))
    {
        println!(
            "{key:<40} {:>16} {:>14} {:>10} {:>14}",
            format_usd(g.cost),
            g.tokens,
            g.requests,
            format_usd(g.saved)
        );
    }
    for n in &nodes {
        println!(
            "node {}: through entry {} ({}, from the archive)",
            n["node"].as_str().unwrap_or(""),
            n["seq"],
            if n["live"] == true {
                "live"
            } else {
                "not live"
            },
        );
    }
    for m in &missing {
        println!(
            "node {}: MISSING: {}",
            m["node"].as_str().unwrap_or("?"),
            m["why"].as_str().unwrap_or("")
        );
    }
    if !missing.is_empty() {
        return Err(format!(
            "{} node(s) missing: the figures above are partial",
            missing.len()
        ));
    }
    Ok(())
}

fn cluster_status(etcd: &[String]) -> Result<(), String> {
    use spendb::cluster::{escrow, etcd::EtcdStore};
    let mut store = EtcdStore::new(etcd, std::time::Duration::from_secs(5));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let status = escrow::status(&mut store, now).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?;
    println!("{json}");
    Ok(())
}

/// `spendb restore`: the data dir rebuilt from a node's archive.
fn restore(a: cli::RestoreArgs) -> Result<(), String> {
    let r = spendb::store::archive::restore(&a.from, &a.data_dir, a.to_seq)?;
    println!(
        "restored entries {} to {} from {} chunk(s) of {} ({} snapshot(s), {} rollup(s)) into {}; \
         the archive holds entries through {}",
        r.first_seq,
        r.last_seq,
        r.chunks,
        a.from,
        r.snapshots.len(),
        r.rollups.len(),
        a.data_dir.display(),
        r.shipped_seq
    );
    Ok(())
}

/// Runs `f` on a temporary data dir restored from a node's archive (for
/// `ledger verify --from`, `ledger export --from`), then removes it.
fn from_archive(
    url: &str,
    f: impl FnOnce(&std::path::Path) -> Result<(), String>,
) -> Result<(), String> {
    let tmp = std::env::temp_dir().join(format!("spendb-from-archive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = spendb::store::archive::restore(url, &tmp, None).and_then(|_| f(&tmp));
    let _ = std::fs::remove_dir_all(&tmp);
    result
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
    // The reports' rollups, as persisted: each equals the ledger folded
    // through its seq.
    let rollups = spendb::store::rollups::verify(dir)
        .map_err(|e| format!("ledger verify FAILED: the rollups: {e}"))?;
    let mut said = Vec::new();
    if let Some(seq) = rollups.checked.last() {
        said.push(format!(
            "{} rollup(s) matched the fold (the last at entry {seq})",
            rollups.checked.len()
        ));
    }
    if !rollups.unchecked.is_empty() {
        said.push(format!(
            "{} rollup(s) not checked (the ledger before them is archived elsewhere)",
            rollups.unchecked.len()
        ));
    }
    if !rollups.ahead.is_empty() {
        said.push(format!(
            "{} rollup(s) past the ledger's end (a cut tail), folded again at the next start",
            rollups.ahead.len()
        ));
    }
    let rollups: String = said.iter().map(|s| format!(", {s}")).collect();
    println!(
        "ledger ok: {} entries, every CRC checked, {} snapshot(s) matched the replay, {} scopes, {} open holds{from}{rollups}",
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
    let mut rules = rules(&a.rules)?;
    let cluster = match &a.node {
        Some(n) => {
            let name = cli::node_name(n)?.to_string();
            if a.lease_ttl < Duration::from_secs(1) {
                return Err("--lease-ttl must be at least 1s".into());
            }
            rules.cluster = Some(spendb::state::grant::ClusterRules {
                partition_allowance_ppm: a.partition_allowance,
                ..Default::default()
            });
            Some(name)
        }
        None if a.partition_allowance > 0 => {
            return Err("--partition-allowance is for a cluster node (--etcd … --node …)".into())
        }
        None => None,
    };
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
    let admin_bind = a.admin_bind.unwrap_or(a.bind);
    if !admin_bind.is_loopback() && !has_password && a.admin_token.is_none() && !a.insecure_no_auth
    {
        return Err(format!(
            "refusing to serve the admin API on {admin_bind} without credentials: set \
             --admin-token or --requirepass, or bind it to 127.0.0.1, or pass \
             --insecure-no-auth if the network is trusted"
        ));
    }
    // Off loopback there is always a password or a token by now: the admin
    // API takes the Redis side's credentials (HTTP Basic) or --admin-token.
    let idle_timeout = (!a.idle_timeout.is_zero()).then_some(a.idle_timeout);
    let write_timeout = a.write_timeout.max(Duration::from_millis(1));
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
            group_commit: a.group_commit,
        },
        segment_bytes: a.segment_bytes,
        cache: CacheLimits {
            max_bytes: a.cache_max_bytes,
            max_value: a.cache_max_value,
            semantic_approx_from: a.semantic_approx_from,
        },
        archive: archive_config(&a, cluster.as_deref())?,
    };
    // The server is a user of the embedded API: the same engine, store and
    // cache, with the Redis and HTTP front ends in front of them.
    let db = Spendb::open(&a.data_dir, options).map_err(|e| e.to_string())?;
    let rec = *db.recovered();
    let (handle, cache) = (db.engine().clone(), db.cache().clone());
    let rollups = db.rollups().clone();
    let archive = db.shipper().cloned();
    // A cluster node reads the other nodes' books from the archive.
    let books = match (&a.archive, &cluster) {
        (Some(url), Some(_)) => Some(Arc::new(
            spendb::store::archive::ArchiveBooks::open(url)
                .map_err(|e| format!("--archive: {e}"))?,
        )),
        _ => None,
    };
    let cluster_node = match &cluster {
        Some(name) => {
            let store = spendb::cluster::etcd::EtcdStore::new(&a.etcd, Duration::from_secs(2));
            let config = spendb::cluster::agent::AgentConfig::new(cli::millis(a.lease_ttl));
            let node = spendb::node::ClusterNode::start(
                handle.clone(),
                Box::new(store),
                name,
                config,
                Some(a.etcd.clone()),
            )
            .map_err(|e| format!("starting the cluster agent: {e}"))?;
            tracing::info!("cluster node {name} on etcd {}", a.etcd.join(","));
            Some(node)
        }
        None => None,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.workers {
        runtime.worker_threads(n.into());
    }
    let runtime = runtime.enable_all().build().map_err(|e| e.to_string())?;
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
        let unix = match &a.unixsocket {
            Some(path) => Some((bind_unix(path, a.unixsocketperm)?, path.clone())),
            None => None,
        };
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
            ops_sample: std::sync::Mutex::new((started, 0, 0)),
            shutdown: tokio::sync::Notify::new(),
            clients: Default::default(),
            slowlog: std::sync::Mutex::new(resp::SlowLog::new(a.slowlog_max_len)),
            monitors: tokio::sync::broadcast::channel(4096).0,
            monitoring: AtomicU64::new(0),
            slowlog_threshold: a.slowlog_threshold,
        });
        tracing::info!(
            "serving the Redis protocol on {addr} (durability {:?})",
            a.durability
        );
        let admin_listener = tokio::net::TcpListener::bind((admin_bind, a.admin_port))
            .await
            .map_err(|e| {
                format!(
                    "binding the admin API on {admin_bind}:{}: {e}",
                    a.admin_port
                )
            })?;
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
            rollups: rollups.clone(),
            cluster: cluster_node.clone(),
            archive: archive.clone(),
            books: books.clone(),
        });
        let admin = tokio::spawn(spendb::admin::serve(admin_listener, admin_ctx));
        let webhooks = spendb::webhook::spawn(handle.clone(), webhooks);
        tracing::info!("serving the admin API on http://{admin_addr}");
        let unix_path = unix.as_ref().map(|(_, p)| p.clone());
        let unix_ctx = ctx.clone();
        let unix_served = async move {
            match unix {
                Some((listener, path)) => {
                    tracing::info!("serving the Redis protocol on {}", path.display());
                    let shown = path.display().to_string();
                    resp::run_unix(listener, shown, unix_ctx).await
                }
                None => std::future::pending().await,
            }
        };
        let stop_signal = shutdown_signal()?;
        // Tests and scripts read this line to learn the ports.
        match &unix_path {
            Some(p) => println!(
                "spendb ready resp={addr} admin={admin_addr} unix={}",
                p.display()
            ),
            None => println!("spendb ready resp={addr} admin={admin_addr}"),
        }
        let _ = std::io::stdout().flush();
        let mut failure = None;
        let asked = ctx.clone();
        tokio::select! {
            _ = resp::run(listener, ctx) => {}
            _ = unix_served => {}
            _ = stop_signal => tracing::info!("shutting down: finishing queued commands"),
            _ = asked.shutdown.notified() => tracing::info!("SHUTDOWN: finishing queued commands"),
            reason = handle.stopped_on_failure() => failure = Some(reason),
        }
        admin.abort();
        webhooks.abort();
        sweeper.abort();
        if let Some(p) = &unix_path {
            // New clients get "no such file" rather than a refused connect.
            let _ = std::fs::remove_file(p);
        }
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

/// `--archive` and its flags: the node's folder is --archive-node, else
/// the cluster node's name, else the host name.
fn archive_config(
    a: &ServeArgs,
    cluster_node: Option<&str>,
) -> Result<Option<spendb::store::archive::ArchiveConfig>, String> {
    let Some(url) = &a.archive else {
        return Ok(None);
    };
    let node = match (&a.archive_node, cluster_node) {
        (Some(n), _) => n.clone(),
        (None, Some(n)) => n.to_string(),
        (None, None) => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .ok_or("--archive: name this node's folder with --archive-node (no host name)")?,
    };
    spendb::store::archive::ship::node_name_ok(&node)
        .map_err(|e| format!("--archive-node: {e}"))?;
    if a.archive_interval < Duration::from_millis(100) {
        return Err("--archive-interval must be at least 100ms".into());
    }
    Ok(Some(spendb::store::archive::ArchiveConfig {
        url: url.clone(),
        node,
        interval: a.archive_interval,
        parquet: a.archive_parquet,
        lag_alert: a.archive_lag_alert,
    }))
}

/// Binds `--unixsocket`: a socket file left by a server that is gone is
/// replaced; one a live server answers on, or any other file, is an error.
fn bind_unix(
    path: &std::path::Path,
    mode: Option<u32>,
) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let shown = path.display();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "--unixsocket {shown}: a file that is not a socket is there"
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!("--unixsocket {shown}: a server is listening there"));
        }
        std::fs::remove_file(path).map_err(|e| format!("--unixsocket {shown}: {e}"))?;
    }
    let listener =
        tokio::net::UnixListener::bind(path).map_err(|e| format!("--unixsocket {shown}: {e}"))?;
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("--unixsocketperm on {shown}: {e}"))?;
    }
    Ok(listener)
}

/// SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: a signal that arrives right after the
/// ready line (a script, a kubelet) must be a clean stop, not the default
/// action's kill.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
