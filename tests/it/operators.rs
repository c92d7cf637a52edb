//! What redis-cli users and operators type: INFO's fields (the ones
//! `redis-cli --stat` and dashboards read), CONFIG GET, SHUTDOWN.

use crate::common::*;

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
    let mut s = Server::with_users(
        r#"
        [users.ops]
        password = "ops-pass"
        commands = ["@admin"]

        [users.agent]
        password = "agent-pass"
        commands = ["@agent"]
        "#,
        &[],
    );
    let conn = |s: &Server, user: &str, pass: &str| {
        redis::Client::open(format!("redis://{user}:{pass}@127.0.0.1:{}/", s.port))
            .unwrap()
            .get_connection()
            .unwrap()
    };
    let mut agent = conn(&s, "agent", "agent-pass");
    assert!(err(&mut agent, "SHUTDOWN").starts_with("NOPERM"));
    let mut ops = conn(&s, "ops", "ops-pass");
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
    let mut ops = conn(&s, "ops", "ops-pass");
    assert_eq!(dim(&q(&mut ops, "BALANCE org:s"), "spent", "tokens"), "11");
}
