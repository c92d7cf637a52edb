//! What redis-cli users and operators type: INFO's fields (the ones
//! `redis-cli --stat` and dashboards read), CONFIG GET, SHUTDOWN, CLIENT
//! LIST / KILL / INFO (through redis-cli itself, as an operator would).

use crate::common::*;

/// A users file with an admin (`ops`) and an agent.
const OPS_AND_AGENT: &str = r#"
    [users.ops]
    password = "ops-pass"
    commands = ["@admin"]

    [users.agent]
    password = "agent-pass"
    commands = ["@agent"]
"#;

fn info_field(info: &str, name: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in INFO:\n{info}"))
        .trim()
        .to_string()
}

#[test]
fn info_has_the_fields_redis_cli_stat_reads_and_config_get_the_settings() {
    let s = Server::start(&["--max-connections", "77"]);
    let mut c = s.conn();
    q(&mut c, "SPEND org:i gpt-4o INPUT 1 OUTPUT 1");
    let _second = s.conn();
    let info = string(&raw(&mut c, "INFO").unwrap());
    assert!(info_field(&info, "used_memory").parse::<u64>().unwrap() > 1 << 20);
    assert!(info_field(&info, "used_memory_human").ends_with('M'));
    assert_eq!(info_field(&info, "blocked_clients"), "0");
    assert_eq!(info_field(&info, "connected_clients"), "2");
    assert!(
        info_field(&info, "total_connections_received")
            .parse::<u64>()
            .unwrap()
            >= 2
    );
    assert!(info_field(&info, "instantaneous_ops_per_sec")
        .parse::<u64>()
        .is_ok());
    assert!(
        info_field(&info, "total_commands_processed")
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(info_field(&info, "db0"), "keys=0,expires=0,avg_ttl=0");
    let memory = string(&raw(&mut c, "INFO memory").unwrap());
    assert!(memory.starts_with("# Memory"), "{memory}");

    let get = |c: &mut redis::Connection, k: &str| -> Vec<String> {
        match raw(c, &format!("CONFIG GET {k}")).unwrap() {
            redis::Value::Array(v) => v.iter().map(string).collect(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(get(&mut c, "maxclients"), ["maxclients", "77"]);
    assert_eq!(
        get(&mut c, "port"),
        ["port".to_string(), s.port.to_string()]
    );
    assert_eq!(get(&mut c, "appendfsync"), ["appendfsync", "always"]);
    let all = get(&mut c, "*");
    for k in [
        "port",
        "maxclients",
        "timeout",
        "save",
        "appendonly",
        "durability",
    ] {
        assert!(all.iter().any(|x| x == k), "{k} in {all:?}");
    }
    assert_eq!(get(&mut c, "max*"), ["maxclients", "77"]);
    assert!(get(&mut c, "nosuch").is_empty());
}

#[test]
fn shutdown_stops_cleanly_for_an_admin_only() {
    let mut s = Server::with_users(OPS_AND_AGENT, &[]);
    let mut agent = s.conn_as("agent", "agent-pass");
    assert!(err(&mut agent, "SHUTDOWN").starts_with("NOPERM"));
    let mut ops = s.conn_as("ops", "ops-pass");
    q(
        &mut ops,
        "SPEND org:s gpt-4o INPUT 10 OUTPUT 1 ID before-shutdown",
    );
    assert!(err(&mut ops, "SHUTDOWN LATER").contains("syntax"));
    assert_eq!(
        raw(&mut ops, "SHUTDOWN NOSAVE").unwrap(),
        redis::Value::Okay
    );
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // A clean stop: the data dir verifies and the spend is there.
    let (ok, text) = verify(&s.dir);
    assert!(ok, "{text}");
    s.restart();
    let mut ops = s.conn_as("ops", "ops-pass");
    assert_eq!(dim(&q(&mut ops, "BALANCE org:s"), "spent", "tokens"), "11");
}

#[test]
fn ledger_verify_reads_a_running_servers_data_dir() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    raw(&mut c, "BUDGET.SET org:live TOKENS 100000 PER DAY").unwrap();
    for i in 0..50 {
        q(&mut c, &format!("SPEND org:live gpt-4o INPUT {i} OUTPUT 1"));
    }
    q(&mut c, "RESERVE live-1 org:live gpt-4o INPUT 5 OUTPUT 5");
    // The server is still running and holds its locks (sled's among them):
    // verify opens nothing but the ledger and snapshot files, read-only.
    let (ok, text) = verify(&s.dir);
    assert!(ok, "{text}");
    assert!(text.contains("ledger ok: 52 entries"), "{text}");
    assert!(text.contains("1 open holds"), "{text}");
    // And the server is unaffected.
    assert_eq!(q(&mut c, "HOLD.GET live-1").s("status"), "open");
}

/// Runs redis-cli (Debian's redis-tools; .ci/run installs it).
fn redis_cli(port: u16, user: Option<(&str, &str)>, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new("redis-cli");
    cmd.args(["-p", &port.to_string()]);
    if let Some((u, p)) = user {
        cmd.args(["--user", u, "--pass", p, "--no-auth-warning"]);
    }
    let out = cmd
        .args(args)
        .output()
        .expect("redis-cli is missing: apt-get install redis-tools");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn client_list_and_kill_show_and_end_connections() {
    let s = Server::with_users(
        r#"
        [users.ops]
        password = "ops-pass"
        commands = ["@admin"]

        [users.agent]
        password = "agent-pass"
        commands = ["@agent"]
        scopes = ["org:acme", "org:beta/team:x"]
        "#,
        &[],
    );
    let mut agent = s.conn_as("agent", "agent-pass");
    raw(&mut agent, "CLIENT SETNAME worker-1").unwrap();
    q(&mut agent, "RESERVE k1 org:acme gpt-4o INPUT 1 OUTPUT 0");
    let ops = Some(("ops", "ops-pass"));
    let list = redis_cli(s.port, ops, &["CLIENT", "LIST"]);
    let line = list
        .lines()
        .find(|l| l.contains("name=worker-1"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("user=agent"), "{line}");
    assert!(line.contains("scopes=org:acme,org:beta/team:x"), "{line}");
    assert!(line.contains("cmds="), "{line}");
    let id: u64 = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("id="))
        .unwrap()
        .parse()
        .unwrap();
    // Seeing and ending others' connections is an admin's right.
    assert!(err(&mut agent, "CLIENT LIST").starts_with("NOPERM"));
    assert!(err(&mut agent, &format!("CLIENT KILL ID {id}")).starts_with("NOPERM"));
    let own = string(&raw(&mut agent, "CLIENT INFO").unwrap());
    assert!(
        own.contains(&format!("id={id} ")) && own.contains("resp=2"),
        "{own}"
    );
    // The operator ends it; the agent's next command finds it closed.
    assert_eq!(
        redis_cli(s.port, ops, &["CLIENT", "KILL", "ID", &id.to_string()]).trim(),
        "(integer) 1".trim_start_matches("(integer) ")
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        raw(&mut agent, "PING").is_err(),
        "the killed connection is closed"
    );
    let list = redis_cli(s.port, ops, &["CLIENT", "LIST"]);
    assert!(!list.contains("worker-1"), "{list}");
    assert_eq!(
        redis_cli(s.port, ops, &["CLIENT", "KILL", "127.0.0.1:1"]).trim(),
        "ERR No such client"
    );
}

#[test]
fn slowlog_keeps_slow_batches_and_monitor_streams_commands() {
    use std::io::{BufRead, BufReader, Write};
    let s = Server::with_users(
        OPS_AND_AGENT,
        &["--slowlog-threshold", "0", "--slowlog-max-len", "3"],
    );
    let ops = Some(("ops", "ops-pass"));
    // MONITOR on a raw connection: +OK, then a line per command received.
    let mut m = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    // Bounded: a line that never comes fails the test instead of hanging it.
    m.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    m.write_all(b"AUTH ops ops-pass\r\nMONITOR\r\n").unwrap();
    let mut lines = BufReader::new(m.try_clone().unwrap());
    let mut line = String::new();
    for want in ["+OK", "+OK"] {
        line.clear();
        lines.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), want);
    }
    let mut agent = s.conn_as("agent", "agent-pass");
    for i in 0..5 {
        q(
            &mut agent,
            &format!("RESERVE s{i} org:slow gpt-4o INPUT 1 OUTPUT 0"),
        );
    }
    // The monitor saw the agent's AUTH (its password redacted) and RESERVEs.
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|l: &&String| l.contains("\"RESERVE\""))
        .count()
        < 5
    {
        line.clear();
        lines.read_line(&mut line).unwrap();
        seen.push(line.trim_end().to_string());
    }
    let auth = seen
        .iter()
        .find(|l| l.contains("\"AUTH\""))
        .expect("AUTH shown");
    assert!(
        auth.contains("(redacted)") && !auth.contains("agent-pass"),
        "{auth}"
    );
    assert!(seen.iter().any(|l| l.contains("\"s4\"")), "{seen:?}");
    m.write_all(b"QUIT\r\n").unwrap();

    // Every engine batch is "slow" at threshold 0; 3 are kept, newest first.
    assert!(err(&mut agent, "SLOWLOG LEN").starts_with("NOPERM"));
    assert_eq!(redis_cli(s.port, ops, &["SLOWLOG", "LEN"]).trim(), "3");
    let got = redis_cli(s.port, ops, &["SLOWLOG", "GET", "1"]);
    assert!(got.contains("RESERVE") && got.contains("s4"), "{got}");
    assert_eq!(redis_cli(s.port, ops, &["SLOWLOG", "RESET"]).trim(), "OK");
    assert_eq!(redis_cli(s.port, ops, &["SLOWLOG", "LEN"]).trim(), "0");
}

#[test]
fn save_and_bgsave_take_a_snapshot_now() {
    let s = Server::with_users(OPS_AND_AGENT, &[]);
    let ops = Some(("ops", "ops-pass"));
    let snaps = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(s.dir.join("snapshots"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let started: i64 = redis_cli(s.port, ops, &["LASTSAVE"])
        .trim()
        .parse()
        .unwrap();
    assert!(started > 1_700_000_000, "{started}");
    let mut agent = s.conn_as("agent", "agent-pass");
    for i in 0..3 {
        q(
            &mut agent,
            &format!("SPEND org:sv gpt-4o INPUT {i} OUTPUT 1"),
        );
    }
    assert!(err(&mut agent, "SAVE").starts_with("NOPERM"));
    assert!(err(&mut agent, "BGSAVE").starts_with("NOPERM"));
    assert!(snaps().is_empty(), "{:?}", snaps());
    // SAVE answers once the snapshot of the state now is stored.
    assert_eq!(redis_cli(s.port, ops, &["SAVE"]).trim(), "OK");
    let after_save = snaps();
    assert_eq!(after_save.len(), 1, "{after_save:?}");
    assert!(
        after_save[0].starts_with("00000000000000000003"),
        "{after_save:?}"
    );
    q(&mut agent, "SPEND org:sv gpt-4o INPUT 9 OUTPUT 1");
    assert_eq!(
        redis_cli(s.port, ops, &["BGSAVE"]).trim(),
        "Background saving started"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while snaps().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", snaps());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        snaps()[1].starts_with("00000000000000000004"),
        "{:?}",
        snaps()
    );
    let last: i64 = redis_cli(s.port, ops, &["LASTSAVE"])
        .trim()
        .parse()
        .unwrap();
    assert!(last >= started);
    let (ok, text) = verify(&s.dir);
    assert!(ok && text.contains("2 snapshot(s) matched"), "{text}");
}
