//! The sidecar's transports. `--unixsocket`: the Redis protocol on a Unix
//! socket beside the TCP port, reached by the `redis` crate, redis-cli and
//! `spendb bench`; the socket file's permissions, a stale file replaced, a
//! live one or a plain file refused, the file removed on a clean stop.
//! `--admin-bind`: the admin API off loopback (for a kubelet's probes) only
//! with credentials, and /readyz open without them. `--workers`: the
//! threads that serve them.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;

use crate::common::*;

fn unix_conn(path: &Path) -> redis::Connection {
    redis::Client::open(format!("redis+unix://{}", path.display()))
        .unwrap()
        .get_connection()
        .unwrap()
}

/// `spendb serve` with these arguments must fail at start: its stderr.
fn refused(dir: &Path, extra: &[&str]) -> String {
    let out = std::process::Command::new(bin())
        .args(["serve", "--port", "0", "--admin-port", "0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {extra:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_protocol_over_a_unix_socket_shares_the_engine_with_tcp() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("spendb.sock");
    let sock_arg = sock.to_str().unwrap();
    let mut s = Server::start(&["--unixsocket", sock_arg, "--unixsocketperm", "770"]);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o770);

    let mut u = unix_conn(&sock);
    raw(&mut u, "BUDGET.SET org:u TOKENS 1000 PER DAY").unwrap();
    let g = q(
        &mut u,
        "RESERVE h1 org:u/agent:a gpt-4o INPUT 300 OUTPUT 100",
    );
    assert_eq!(g.s("status"), "granted");
    // The same engine behind both: TCP sees the hold, and its denial.
    let mut t = s.conn();
    let b = q(&mut t, "BALANCE org:u");
    assert_eq!(dim(&b, "held", "tokens"), "400");
    q(&mut t, "COMMIT h1 INPUT 300 OUTPUT 50");
    let d = q(&mut u, "RESERVE h2 org:u gpt-4o INPUT 700 OUTPUT 0");
    assert_eq!(d.s("status"), "denied");
    assert_eq!(dim(&q(&mut u, "BALANCE org:u"), "spent", "tokens"), "350");

    // CLIENT LIST names a socket client as Redis does: path:0.
    let list = string(&raw(&mut t, "CLIENT LIST").unwrap());
    assert!(
        list.contains(&format!("addr={}:0 ", sock.display())),
        "{list}"
    );
    // redis-cli -s, as an operator would.
    let out = std::process::Command::new("redis-cli")
        .args(["-s", sock_arg, "HOLD.GET", "h1"])
        .output()
        .expect("redis-cli is missing: apt-get install redis-tools");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("committed"), "{text}");

    // A clean stop removes the file.
    assert!(s.stop().success());
    assert!(!sock.exists());
}

#[test]
fn a_stale_socket_is_replaced_a_live_one_or_a_plain_file_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("s.sock");
    let sock_arg = sock.to_str().unwrap();
    let mut s = Server::start(&["--unixsocket", sock_arg]);
    // Another server may not take a socket that a live one answers on.
    let other = tmp.path().join("other");
    let msg = refused(&other, &["--unixsocket", sock_arg]);
    assert!(msg.contains("a server is listening there"), "{msg}");
    let mut first = unix_conn(&sock);
    assert_eq!(
        string(&raw(&mut first, "PING").unwrap()),
        "PONG",
        "still served"
    );

    // A SIGKILL leaves the file behind; the restart replaces it.
    s.crash();
    assert!(sock.exists());
    s.restart();
    let mut u = unix_conn(&sock);
    assert_eq!(string(&raw(&mut u, "PING").unwrap()), "PONG");

    // A file that is not a socket is never removed.
    let plain = tmp.path().join("plain");
    std::fs::write(&plain, "keep me").unwrap();
    let msg = refused(&other, &["--unixsocket", plain.to_str().unwrap()]);
    assert!(msg.contains("not a socket"), "{msg}");
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "keep me");

    // Modes are octal permission bits, and only with a socket.
    let msg = refused(
        &other,
        &["--unixsocket", "/tmp/x.sock", "--unixsocketperm", "800"],
    );
    assert!(msg.contains("not an octal mode"), "{msg}");
    let msg = refused(
        &other,
        &["--unixsocket", "/tmp/x.sock", "--unixsocketperm", "1777"],
    );
    assert!(msg.contains("at most 777"), "{msg}");
    let msg = refused(&other, &["--unixsocketperm", "700"]);
    assert!(msg.contains("--unixsocket"), "{msg}");
}

#[test]
fn spendb_bench_runs_over_the_unix_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("b.sock");
    let s = Server::start(&["--unixsocket", sock.to_str().unwrap()]);
    let (r, _) = bench_report(&[
        "-s",
        sock.to_str().unwrap(),
        "-n",
        "500",
        "-c",
        "4",
        "--tree",
        "1x1x2",
    ]);
    assert_eq!(r["transactions"], 500);
    assert_eq!(r["errors"], 0);
    assert_eq!(r["target"], format!("unix:{}", sock.display()));
    // The load went through this server: every hold settled on its tree.
    let b = q(&mut s.conn(), "BALANCE org:o0");
    assert_eq!(dim(&b, "held", "tokens"), "0");
    assert!(dim(&b, "spent", "tokens").parse::<u64>().unwrap() > 0);
}

#[test]
fn the_admin_api_alone_off_loopback_needs_credentials_but_readyz_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let msg = refused(tmp.path(), &["--admin-bind", "0.0.0.0"]);
    assert!(
        msg.contains("admin API on 0.0.0.0 without credentials"),
        "{msg}"
    );

    let s = Server::start(&["--admin-bind", "0.0.0.0", "--admin-token", "probe-secret"]);
    // Reached through loopback here, as a kubelet reaches the pod's address.
    let open = Http::new(&s, None);
    assert_eq!(open.get("/readyz").0, 200);
    assert_eq!(open.get("/v1/budgets").0, 401);
    assert_eq!(
        Http::new(&s, Some("probe-secret")).get("/v1/budgets").0,
        200
    );
    // The Redis protocol stayed on loopback without a password.
    let mut c = s.conn();
    assert_eq!(string(&raw(&mut c, "PING").unwrap()), "PONG");
}

#[test]
fn spendb_bench_ping_measures_the_clients_own_floor() {
    let s = Server::start(&[]);
    let port = s.port.to_string();
    let (r, table) = bench_report(&[
        "-p", &port, "--ping", "--rate", "500", "-d", "1s", "-c", "2",
    ]);
    let commands = r["commands"].as_array().unwrap();
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0][0], "ping");
    // Two PINGs a transaction, and no RESERVE reached the server.
    let t = r["transactions"].as_u64().unwrap();
    assert!(t > 0);
    assert_eq!(commands[0][1]["count"].as_u64().unwrap(), 2 * t);
    assert!(r["client_cpu_us_per_transaction"].as_f64().unwrap() > 0.0);
    let b = q(&mut s.conn(), "BALANCE org:o0");
    assert_eq!(dim(&b, "spent", "requests"), "0");
    assert!(table.contains("client CPU"), "{table}");
}

/// A SIGTERM that arrives right after the ready line (a script, a kubelet
/// stopping a pod that just started) is a clean stop: the handler is in
/// place before the line is printed, so the default action never kills it.
#[test]
fn a_sigterm_right_after_ready_is_a_clean_stop() {
    for _ in 0..10 {
        let mut s = Server::start(&[]);
        assert!(s.stop().success());
        // The clean stop wrote its last snapshot.
        let snaps = std::fs::read_dir(s.dir.join("snapshots")).unwrap().count();
        assert!(snaps >= 1, "no snapshot after the stop");
    }
}

/// The threads serving a running server's protocol, as INFO gives them.
fn workers(s: &Server) -> usize {
    let info = string(&raw(&mut s.conn(), "INFO server").unwrap());
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("io_threads_active:"));
    line.expect("INFO server has io_threads_active")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_worker_per_core_by_default_as_many_as_asked_and_every_answer_is_durable() {
    let cores = std::thread::available_parallelism().unwrap().get();
    for (extra, n) in [
        (&[][..], cores),
        (&["--workers", "1"][..], 1),
        (&["--workers", "3"][..], 3),
    ] {
        let mut s = Server::start(extra);
        assert_eq!(workers(&s), n, "{extra:?}");
        raw(&mut s.conn(), "BUDGET.SET org:w TOKENS 100000 PER DAY").unwrap();
        // Eight clients at once, each RESERVE then COMMIT, 25 times.
        let clients: Vec<_> = (0..8)
            .map(|c| {
                let mut con = s.conn();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let g = q(
                            &mut con,
                            &format!("RESERVE w{c}-{i} org:w gpt-4o INPUT 100 OUTPUT 0"),
                        );
                        assert_eq!(g.s("status"), "granted");
                        q(&mut con, &format!("COMMIT w{c}-{i} INPUT 40 OUTPUT 0"));
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        let spent = |s: &Server| dim(&q(&mut s.conn(), "BALANCE org:w"), "spent", "tokens");
        assert_eq!(spent(&s), "8000");
        // Acknowledged means durable: the same after a SIGKILL.
        s.crash();
        s.restart();
        assert_eq!(spent(&s), "8000");
    }
    let tmp = tempfile::tempdir().unwrap();
    let msg = refused(tmp.path(), &["--workers", "0"]);
    assert!(msg.contains("0 is not in 1..=1024"), "{msg}");
}
