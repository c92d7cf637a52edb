//! The ledger off the node (`--archive`, issue #29 part 2), against real
//! stores: a directory (`file://`) and an S3 server on 127.0.0.1 (moto's
//! server mode, from PyPI: scripts/test installs it with DuckDB under
//! target/clients/s3). A node's data dir is wiped under load and rebuilt
//! from the bucket alone; the store goes down and comes back behind a TCP
//! proxy the test cuts; DuckDB reads the Parquet files.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster_nodes::wait_until;
use crate::common::*;

/// A tool of the S3 test venv (moto_server, python with duckdb).
fn s3_tool(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/clients/s3/bin")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/test, which installs moto[server] and duckdb (PyPI) under \
         target/clients/s3",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// moto's S3 server on 127.0.0.1, killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let port = free_port();
        let child = Command::new(s3_tool("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server");
        let moto = Moto { child, port };
        wait_until(Duration::from_secs(30), "moto answers", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        moto
    }

    /// Creates a bucket (moto takes an unsigned PUT).
    fn bucket(&self, name: &str) {
        let url = format!("http://127.0.0.1:{}/{name}", self.port);
        let resp = ureq::put(&url).send_empty().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The S3 secret key the tests use: it must never show.
const SECRET: &str = "sekrit-9f2c41";

/// The environment an S3 archive at `endpoint` is reached with.
fn s3_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT", endpoint.to_string()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn archive_status(s: &Server) -> serde_json::Value {
    let (status, v) = Http::new(s, None).get("/v1/archive");
    assert_eq!(status, 200, "{v}");
    v
}

/// Waits until the node's archive holds everything it made durable.
fn caught_up(s: &Server) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), "the archive catches up", || {
        last = archive_status(s);
        last["lag_entries"] == 0 && last["shipped_seq"].as_u64() > Some(0)
    });
    last
}

/// The entries of a ledger export, as JSON.
fn entries(export: &str) -> Vec<serde_json::Value> {
    export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Load on `s` from `threads` connections until `stop`: RESERVE, then
/// COMMIT (most), RELEASE or a SPEND beside it. Each acknowledged RESERVE
/// is recorded with when its answer came.
fn load(
    s: &Server,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<(String, Instant)>>> {
    (0..threads)
        .map(|t| {
            let mut c = s.conn();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    i += 1;
                    let id = format!("h-{t}-{i}");
                    let line =
                        format!("RESERVE {id} org:a/u:{t} gpt-4o INPUT 100 OUTPUT 50 RUN r-{t}");
                    if raw(&mut c, &line).is_err() {
                        break;
                    }
                    acked.push((id.clone(), Instant::now()));
                    let next = match i % 7 {
                        0 => format!("RELEASE {id}"),
                        3 => format!("COMMIT {id} INPUT 100 OUTPUT 80"),
                        _ => format!("COMMIT {id} INPUT 100 OUTPUT {}", i % 50),
                    };
                    if raw(&mut c, &next).is_err() {
                        break;
                    }
                    if i.is_multiple_of(5)
                        && raw(
                            &mut c,
                            &format!("SPEND org:a/u:{t} gpt-4o INPUT 7 OUTPUT 3"),
                        )
                        .is_err()
                    {
                        break;
                    }
                }
                acked
            })
        })
        .collect()
}

fn budget(s: &Server) {
    let mut c = s.conn();
    raw(
        &mut c,
        "BUDGET.SET org:a TOKENS 1000000000 PER MONTH COST 100000 PER MONTH",
    )
    .unwrap();
}

/// Small segments, a short retention and frequent snapshots: segments
/// close, move to archive/ and are removed once shipped while the test runs.
const CHURN: [&str; 6] = [
    "--segment-bytes",
    "8192",
    "--ledger-retain",
    "200",
    "--snapshot-every",
    "100",
];

/// `spendb restore` of node n1 of the archive at `url` into `dir`, with
/// `more` arguments; it must succeed: what it printed.
fn restore(url: &str, dir: &Path, more: &[&str]) -> String {
    let from = format!("{url}/n1");
    let mut args = vec![
        "restore",
        "--from",
        &from,
        "--data-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    spendb_ok(&args)
}

/// A server with the test budget on a fresh data dir (under the second
/// temp dir), shipping as node `n1` every `interval` to a fresh directory
/// (its URL, and the dir), with CHURN's settings.
fn churning(interval: &str) -> (Server, String, tempfile::TempDir, tempfile::TempDir) {
    let bucket = tempfile::tempdir().unwrap();
    let url = format!("file://{}", bucket.path().display());
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--archive",
        &url,
        "--archive-node",
        "n1",
        "--archive-interval",
        interval,
    ];
    args.extend(CHURN);
    let s = Server::start_in(&tmp.path().join("data"), &args);
    budget(&s);
    (s, url, tmp, bucket)
}

#[test]
fn a_data_dir_wiped_under_load_is_rebuilt_from_the_archive_with_every_older_entry() {
    let (mut s, url, tmp, _bucket) = churning("200ms");
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&s, 3, stop.clone());
    std::thread::sleep(Duration::from_secs(4));
    // The node is lost: its process killed, its disk wiped, under load.
    s.crash();
    let lost_at = Instant::now();
    std::fs::remove_dir_all(&s.dir).unwrap();
    stop.store(true, Ordering::Release);
    let acked: Vec<(String, Instant)> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let restored = tmp.path().join("restored");
    let said = restore(&url, &restored, &[]);
    assert!(said.starts_with("restored entries 1 to "), "{said}");
    let (ok, text) = verify(&restored);
    assert!(ok, "{text}");
    let export = entries(&spendb_ok(&[
        "ledger",
        "export",
        "--data-dir",
        restored.to_str().unwrap(),
    ]));
    let holds: std::collections::HashSet<&str> = export
        .iter()
        .filter(|e| e["kind"] == "hold")
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    // Every RESERVE answered longer ago than the interval plus an upload
    // (generously: 3 s on a loaded 2-core machine) is in the bucket.
    let older = lost_at - Duration::from_millis(200) - Duration::from_secs(3);
    let must: Vec<&(String, Instant)> = acked.iter().filter(|(_, at)| *at < older).collect();
    assert!(must.len() > 100, "only {} RESERVEs to check", must.len());
    for (id, _) in &must {
        assert!(
            holds.contains(id.as_str()),
            "hold {id} was acknowledged and is not in the archive"
        );
    }
    let last_ts = export.last().unwrap()["ts"].as_u64().unwrap();
    let lost_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - lost_at.elapsed().as_millis() as u64;
    eprintln!(
        "archive under load: {} of {} acknowledged RESERVEs restored; the newest entry restored \
         is {} ms older than the loss",
        acked
            .iter()
            .filter(|(id, _)| holds.contains(id.as_str()))
            .count(),
        acked.len(),
        lost_ms.saturating_sub(last_ts)
    );
    // The restored node serves from what it got.
    let r = Server::start_in(&restored, &[]);
    let mut c = r.conn();
    let b = q(&mut c, "BALANCE org:a");
    assert!(b.contains_key("spent"), "{b:?}");
}

#[test]
fn a_restored_node_answers_every_figure_the_lost_one_acknowledged() {
    let (mut s, url, tmp, _bucket) = churning("300ms");
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&s, 2, stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Release);
    for w in workers {
        w.join().unwrap();
    }
    // A hold left open, and what the node answers now.
    let mut c = s.conn();
    q(
        &mut c,
        "RESERVE open-1 org:a/u:9 gpt-4o INPUT 1000 OUTPUT 500",
    );
    let mut status = caught_up(&s);
    wait_until(
        Duration::from_secs(15),
        "shipped segments leave the disk",
        || {
            status = archive_status(&s);
            status["removed_segments"].as_u64() > Some(0)
        },
    );
    assert!(
        std::fs::read_dir(s.dir.join("archive")).map_or(0, |d| d.count()) < 3,
        "shipped segments stay in archive/"
    );
    let balance = raw(&mut c, "BALANCE org:a").unwrap();
    let user = raw(&mut c, "BALANCE org:a/u:1").unwrap();
    let h = Http::new(&s, None);
    let report = h.get("/v1/reports/spend?group=scope&level=2").1;
    let runs = h.get("/v1/reports/runs").1;
    let shipped = status["shipped_seq"].as_u64().unwrap();
    s.crash();
    std::fs::remove_dir_all(&s.dir).unwrap();

    let restored = tmp.path().join("restored");
    let said = restore(&url, &restored, &[]);
    assert!(said.contains(&format!(" to {shipped} ")), "{said}");
    let r = Server::start_in(&restored, &[]);
    let mut c = r.conn();
    assert_eq!(raw(&mut c, "BALANCE org:a").unwrap(), balance);
    assert_eq!(raw(&mut c, "BALANCE org:a/u:1").unwrap(), user);
    let h = Http::new(&r, None);
    assert_eq!(h.get("/v1/reports/spend?group=scope&level=2").1, report);
    assert_eq!(h.get("/v1/reports/runs").1, runs);
    // The open hold is open there, and can be committed.
    let done = q(&mut c, "COMMIT open-1 INPUT 1000 OUTPUT 10");
    assert_eq!(done.s("status"), "committed");

    // As of an earlier entry: the ledger through it, and it verifies.
    let earlier = tmp.path().join("earlier");
    let to = shipped / 2;
    let said = restore(&url, &earlier, &["--to-seq", &to.to_string()]);
    assert!(
        said.starts_with(&format!("restored entries 1 to {to} ")),
        "{said}"
    );
    let (ok, text) = verify(&earlier);
    assert!(ok, "{text}");
    // verify and export from the bucket alone.
    let from = format!("{url}/n1");
    let said = spendb_ok(&["ledger", "verify", "--from", &from]);
    assert!(
        said.contains(&format!("ledger ok: {shipped} entries")),
        "{said}"
    );
    let exported = entries(&spendb_ok(&["ledger", "export", "--from", &from]));
    assert_eq!(exported.len() as u64, shipped);
    assert_eq!(exported.last().unwrap()["seq"], shipped);
    // A restore never writes over a data dir.
    let out = Command::new(bin())
        .args(["restore", "--from", &from, "--data-dir"])
        .arg(&restored)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));
}

#[test]
fn an_s3_archive_rides_out_the_store_going_down_and_catches_up() {
    let moto = Moto::start();
    moto.bucket("books");
    let proxy = Proxy::to(&format!("127.0.0.1:{}", moto.port));
    let env = s3_env(&proxy.url);
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_in_env(
        &tmp.path().join("data"),
        &[
            "--archive",
            "s3://books/spend",
            "--archive-node",
            "n1",
            "--archive-interval",
            "200ms",
            "--archive-lag-alert",
            "1s",
        ],
        &env,
    );
    budget(&s);
    let mut c = s.conn();
    for i in 0..20 {
        q(
            &mut c,
            &format!("SPEND org:a/u:{} gpt-4o INPUT 10 OUTPUT 5", i % 3),
        );
    }
    let before = caught_up(&s);
    assert_eq!(before["shipped_seq"], 21, "{before}");
    assert_eq!(before["url"], "s3://books/spend/n1");

    proxy.cut();
    for i in 0..20 {
        // The node serves while the store is away.
        let r = q(
            &mut c,
            &format!("SPEND org:a/u:{} gpt-4o INPUT 10 OUTPUT 5", i % 3),
        );
        assert_eq!(r.s("status"), "spent");
    }
    let mut down = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), "the lag alert", || {
        down = archive_status(&s);
        down["lagging"] == true
    });
    assert_eq!(down["lag_entries"], 20, "{down}");
    assert!(down["errors"].as_u64() > Some(0), "{down}");
    assert!(
        down["last_error"]
            .as_str()
            .unwrap()
            .contains("s3://books/spend/n1"),
        "{down}"
    );
    let h = Http::new(&s, None);
    assert_eq!(
        h.get("/readyz").0,
        200,
        "readiness does not hang on the archive"
    );
    let metrics = h.get("/metrics").1;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("spendb_archive_lag_entries 20"),
        "{metrics}"
    );
    assert!(metrics.contains("spendb_archive_lagging 1"), "{metrics}");
    assert!(!metrics.contains(SECRET) && !down.to_string().contains(SECRET));

    proxy.heal();
    let after = caught_up(&s);
    assert_eq!(after["shipped_seq"], 41, "{after}");
    assert_eq!(after["lagging"], false);
    assert_eq!(after["last_error"], serde_json::Value::Null);

    // The bucket alone: verify, export, equal to the node's own ledger.
    let from = "s3://books/spend/n1";
    let said = spendb_ok_env(&["ledger", "verify", "--from", from], &env);
    assert!(said.contains("ledger ok: 41 entries"), "{said}");
    let remote = spendb_ok_env(&["ledger", "export", "--from", from], &env);
    let local = spendb_ok(&["ledger", "export", "--data-dir", s.dir.to_str().unwrap()]);
    assert_eq!(remote, local);
}

#[test]
fn s3_keys_may_come_from_the_shared_credentials_file() {
    let moto = Moto::start();
    moto.bucket("books");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("credentials");
    std::fs::write(
        &file,
        format!("[default]\naws_access_key_id = x\n[ci]\naws_access_key_id = AKIACI\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    // No keys in the environment: only the file's `ci` profile has them
    // (without any, object_store would ask the instance metadata service).
    let mut env: Vec<(String, String)> = s3_env(&format!("http://127.0.0.1:{}", moto.port))
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET"))
        .collect();
    env.push((
        "AWS_SHARED_CREDENTIALS_FILE".into(),
        file.display().to_string(),
    ));
    env.push(("AWS_PROFILE".into(), "ci".into()));
    env.push(("AWS_EC2_METADATA_DISABLED".into(), "true".into()));
    let s = Server::start_in_env(
        &tmp.path().join("data"),
        &[
            "--archive",
            "s3://books/creds",
            "--archive-node",
            "n1",
            "--archive-interval",
            "200ms",
        ],
        &env,
    );
    q(&mut s.conn(), "SPEND org:a gpt-4o INPUT 10 OUTPUT 5");
    let st = caught_up(&s);
    assert_eq!(st["shipped_seq"], 1, "{st}");
    let said = spendb_ok_env(&["ledger", "verify", "--from", "s3://books/creds/n1"], &env);
    assert!(said.contains("ledger ok: 1 entries"), "{said}");
}

#[test]
fn a_store_never_reached_raises_the_lag_alert_while_the_node_serves() {
    // Nothing listens on this port: the bucket is never read.
    let env = s3_env(&format!("http://127.0.0.1:{}", free_port()));
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_in_env(
        &tmp.path().join("data"),
        &[
            "--archive",
            "s3://books/x",
            "--archive-node",
            "n1",
            "--archive-lag-alert",
            "1s",
        ],
        &env,
    );
    let mut c = s.conn();
    assert_eq!(
        q(&mut c, "SPEND org:a gpt-4o INPUT 10 OUTPUT 5").s("status"),
        "spent"
    );
    let mut st = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), "the lag alert", || {
        st = archive_status(&s);
        st["lagging"] == true
    });
    assert_eq!(st["shipped_seq"], 0, "{st}");
    assert_eq!(st["lag_entries"], 1, "{st}");
    assert!(st["errors"].as_u64() > Some(0), "{st}");
    assert_eq!(Http::new(&s, None).get("/readyz").0, 200);
    assert_eq!(
        q(&mut c, "SPEND org:a gpt-4o INPUT 10 OUTPUT 5").s("status"),
        "spent"
    );
}

#[test]
fn a_bucket_ahead_of_the_data_dir_is_not_written_over() {
    let bucket = tempfile::tempdir().unwrap();
    let url = format!("file://{}", bucket.path().display());
    let args = [
        "--archive",
        url.as_str(),
        "--archive-node",
        "n1",
        "--archive-interval",
        "200ms",
    ];
    let mut s = Server::start(&args);
    let mut c = s.conn();
    for _ in 0..5 {
        q(&mut c, "SPEND org:a gpt-4o INPUT 10 OUTPUT 5");
    }
    caught_up(&s);
    s.stop();
    // Another data dir under the same name: it serves, and ships nothing.
    let other = Server::start(&args);
    let mut c = other.conn();
    q(&mut c, "SPEND org:b gpt-4o INPUT 10 OUTPUT 5");
    let mut st = serde_json::Value::Null;
    wait_until(Duration::from_secs(15), "the refusal", || {
        st = archive_status(&other);
        !st["refused"].is_null()
    });
    assert!(
        st["refused"].as_str().unwrap().contains("through entry 5"),
        "{st}"
    );
    let metrics = Http::new(&other, None).get("/metrics").1;
    assert!(metrics
        .as_str()
        .unwrap()
        .contains("spendb_archive_refused 1"));
    let exported = entries(&spendb_ok(&[
        "ledger",
        "export",
        "--from",
        &format!("{url}/n1"),
    ]));
    assert_eq!(exported.len(), 5);
    assert!(exported.iter().all(|e| e["scope"] == "org:a"));
    // Without --archive, /v1/archive says so.
    let plain = Server::start(&[]);
    assert_eq!(Http::new(&plain, None).get("/v1/archive").0, 404);
}

/// nano-USD of a report's decimal USD string.
fn nanos(usd: &str) -> i64 {
    let (whole, frac) = usd.split_once('.').unwrap_or((usd, ""));
    let frac = format!("{frac:0<9}");
    whole.parse::<i64>().unwrap() * 1_000_000_000 + frac[..9].parse::<i64>().unwrap()
}

#[test]
fn duckdb_reads_the_parquet_books_and_their_totals_equal_the_spend_report() {
    let python = s3_tool("python");
    let bucket = tempfile::tempdir().unwrap();
    let url = format!("file://{}", bucket.path().display());
    let mut s = Server::start(&[
        "--archive",
        &url,
        "--archive-node",
        "n1",
        "--archive-interval",
        "200ms",
        "--archive-parquet",
    ]);
    budget(&s);
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&s, 2, stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Release);
    let n: usize = workers.into_iter().map(|w| w.join().unwrap().len()).sum();
    assert!(n > 50);
    let h = Http::new(&s, None);
    let all = h.get("/v1/reports/spend").1;
    let user = h.get("/v1/reports/spend?scope=org:a/u:1").1;
    caught_up(&s);
    s.stop();
    let glob = format!("{}/parquet/**/*.parquet", bucket.path().display());
    let script = format!(
        r#"
import duckdb, json
t = "read_parquet('{glob}', hive_partitioning=true)"
q = lambda sql: duckdb.sql(sql.replace("T", t)).fetchall()
total = q("select sum(cost_nusd), sum(input_tokens + output_tokens), count(*) from T where kind in ('commit', 'spend')")[0]
user = q("select sum(c.cost_nusd) from T c join T h on c.id = h.id and h.kind = 'hold' where c.kind = 'commit' and h.scope like 'org:a/u:1%'")[0][0]
user += q("select coalesce(sum(cost_nusd), 0) from T where kind = 'spend' and scope like 'org:a/u:1%'")[0][0]
nodes = q("select distinct node from T")
print(json.dumps({{"cost": int(total[0]), "tokens": int(total[1]), "rows": total[2], "user": int(user), "nodes": [n[0] for n in nodes]}}))
"#
    );
    let out = Command::new(python).args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["nodes"], serde_json::json!(["n1"]));
    assert_eq!(
        got["cost"].as_i64().unwrap(),
        nanos(all["total"]["cost"].as_str().unwrap())
    );
    assert_eq!(got["tokens"], all["total"]["tokens"]);
    assert_eq!(
        got["user"].as_i64().unwrap(),
        nanos(user["total"]["cost"].as_str().unwrap())
    );
    assert!(got["cost"].as_i64().unwrap() > 0);
}
