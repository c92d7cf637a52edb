//! Password authentication and the connection commands of issue #3 that
//! exist so far: AUTH, HELLO … AUTH, RESET, DBSIZE, TIME, CLIENT INFO, and
//! the refusal to serve a non-loopback address without a password.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn exchange(sock: &mut TcpStream, req: &[u8], until: &[u8]) -> String {
    sock.write_all(req).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(until) {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

#[test]
fn without_a_password_auth_is_an_error_and_everything_runs() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert!(err(&mut c, "AUTH x").contains("without any password configured"));
    assert_eq!(
        raw(&mut c, "PING").unwrap(),
        redis::Value::SimpleString("PONG".into())
    );
}

#[test]
fn requirepass_gates_every_command_until_auth() {
    let s = Server::start(&["--requirepass", "s3cret"]);
    let mut sock = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Nothing runs before AUTH, and a wrong password changes nothing. In one
    // pipeline: the commands after a good AUTH run.
    let out = exchange(
        &mut sock,
        b"PING\r\nBUDGET.SET org:a TOKENS 5 PER DAY\r\nAUTH nope\r\nBALANCE org:a\r\nAUTH s3cret\r\nBUDGET.SET org:a TOKENS 5 PER DAY\r\n",
        b"+OK\r\n+OK\r\n",
    );
    assert_eq!(
        out,
        "-NOAUTH Authentication required.\r\n-NOAUTH Authentication required.\r\n\
         -WRONGPASS invalid username-password pair or user is disabled.\r\n\
         -NOAUTH Authentication required.\r\n+OK\r\n+OK\r\n"
    );
    // RESET forgets the authentication.
    let out = exchange(&mut sock, b"RESET\r\nPING\r\n", b"required.\r\n");
    assert_eq!(out, "+RESET\r\n-NOAUTH Authentication required.\r\n");
    // HELLO without AUTH is refused; with the wrong user too.
    let out = exchange(
        &mut sock,
        b"HELLO 3\r\nHELLO 3 AUTH admin s3cret\r\n",
        b"disabled.\r\n",
    );
    assert!(out.starts_with("-NOAUTH HELLO must be called"), "{out}");
    assert!(
        out.ends_with("-WRONGPASS invalid username-password pair or user is disabled.\r\n"),
        "{out}"
    );

    // Real clients: redis-rs with a password in the URL (RESP2: AUTH) ...
    let url = format!("redis://:s3cret@127.0.0.1:{}/", s.port);
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    assert_eq!(q(&mut c, "BUDGET.GET org:a").s("scope"), "org:a");
    // ... and with RESP3 (HELLO 3 AUTH default <password>).
    let url = format!(
        "redis://default:s3cret@127.0.0.1:{}/?protocol=resp3",
        s.port
    );
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    assert!(matches!(
        raw(&mut c, "BUDGET.GET org:a").unwrap(),
        redis::Value::Map(_)
    ));
    // A wrong password fails the connection.
    let url = format!("redis://:wrong@127.0.0.1:{}/", s.port);
    assert!(redis::Client::open(url).unwrap().get_connection().is_err());
}

#[test]
fn non_loopback_bind_needs_a_password_or_an_explicit_opt_out() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args([
            "serve",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--bind",
            "0.0.0.0",
            "--data-dir",
        ])
        .arg(tmp.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("refusing to serve on 0.0.0.0 without a password"),
        "{msg}"
    );
}

#[test]
fn dbsize_time_and_client_info() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q(&mut c, "RESERVE t1 org:t gpt-4o INPUT 1 OUTPUT 0");
    q(&mut c, "RESERVE t2 org:t gpt-4o INPUT 1 OUTPUT 0");
    assert_eq!(raw(&mut c, "DBSIZE").unwrap(), redis::Value::Int(2));
    let redis::Value::Array(t) = raw(&mut c, "TIME").unwrap() else {
        panic!()
    };
    let secs: u64 = string(&t[0]).parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(secs.abs_diff(now) <= 5);
    raw(&mut c, "CLIENT SETNAME tester").unwrap();
    let info = string(&raw(&mut c, "CLIENT INFO").unwrap());
    assert!(
        info.starts_with("id=") && info.contains("name=tester") && info.contains("addr=127.0.0.1:"),
        "{info}"
    );
}

#[test]
fn info_sections() {
    let s = Server::start(&["--durability", "interval:100"]);
    let mut c = s.conn();
    q(&mut c, "RESERVE i1 org:i gpt-4o INPUT 1 OUTPUT 0");
    let all = string(&raw(&mut c, "INFO").unwrap());
    for section in [
        "# Server",
        "# Clients",
        "# Persistence",
        "# Stats",
        "# Keyspace",
    ] {
        assert!(all.contains(section), "{all}");
    }
    assert!(all.contains("db0:keys=1,expires=1"), "{all}");
    assert!(all.contains("durability:interval(100)"), "{all}");
    let some = string(&raw(&mut c, "INFO persistence KEYSPACE").unwrap());
    assert!(
        some.starts_with("# Persistence\r\n")
            && some.contains("# Keyspace")
            && !some.contains("# Server"),
        "{some}"
    );
    assert_eq!(string(&raw(&mut c, "INFO nosuch").unwrap()), "");
}

#[test]
fn users_are_confined_to_their_commands_and_scopes() {
    let tmp = tempfile::tempdir().unwrap();
    let users = tmp.path().join("users.toml");
    std::fs::write(
        &users,
        r#"
        [users.ops]
        password = "ops-pass"
        commands = ["@admin"]

        [users.acme-agent]
        password = "acme-pass"
        commands = ["@agent"]
        scopes = ["org:acme"]

        [users.acme-viewer]
        password = "view-pass"
        commands = ["@read"]
        scopes = ["org:acme/"]
        "#,
    )
    .unwrap();
    let s = Server::start(&["--users", users.to_str().unwrap()]);
    let conn = |user: &str, pass: &str| s.conn_as(user, pass);
    // Without credentials nothing runs (there is no default user).
    assert!(err(&mut s.conn(), "BALANCE org:acme").starts_with("NOAUTH"));

    let mut ops = conn("ops", "ops-pass");
    raw(&mut ops, "BUDGET.SET org:acme TOKENS 1000 PER DAY").unwrap();
    raw(&mut ops, "BUDGET.SET org:other TOKENS 1000 PER DAY").unwrap();
    q(
        &mut ops,
        "RESERVE other-hold org:other gpt-4o INPUT 10 OUTPUT 0",
    );

    let mut agent = conn("acme-agent", "acme-pass");
    assert_eq!(
        q(
            &mut agent,
            "RESERVE a1 org:acme/agent:x gpt-4o INPUT 10 OUTPUT 0"
        )
        .s("status"),
        "granted"
    );
    assert_eq!(
        q(&mut agent, "COMMIT a1 INPUT 10 OUTPUT 1").s("status"),
        "committed"
    );
    // Another org: neither reserve, nor read, nor touch its holds.
    assert!(
        err(&mut agent, "RESERVE a2 org:other gpt-4o INPUT 10 OUTPUT 0")
            .starts_with("NOPERM scope org:other is outside")
    );
    assert!(
        err(&mut agent, "RESERVE a2 org:acme2 gpt-4o INPUT 10 OUTPUT 0")
            .starts_with("NOPERM scope org:acme2")
    );
    assert!(err(&mut agent, "BALANCE org:other").starts_with("NOPERM"));
    assert!(err(&mut agent, "SPEND org:other gpt-4o INPUT 1 OUTPUT 1").starts_with("NOPERM"));
    assert!(err(&mut agent, "HOLD.GET other-hold").starts_with("UNKNOWN hold other-hold"));
    assert!(err(&mut agent, "COMMIT other-hold INPUT 1 OUTPUT 1")
        .starts_with("UNKNOWN hold other-hold"));
    assert!(err(&mut agent, "RELEASE other-hold").starts_with("UNKNOWN hold other-hold"));
    // And no admin commands.
    assert!(err(&mut agent, "BUDGET.SET org:acme TOKENS 1 PER DAY")
        .starts_with("NOPERM this user has no permissions to run the 'budget.set' command"));
    assert!(err(&mut agent, "PRICE.SET gpt-4o INPUT 0 OUTPUT 0").starts_with("NOPERM"));
    // The other org's hold is untouched.
    assert_eq!(q(&mut ops, "HOLD.GET other-hold").s("status"), "open");

    let mut viewer = conn("acme-viewer", "view-pass");
    assert_eq!(
        raw(&mut viewer, "BUDGET.LIST").unwrap(),
        redis::Value::Array(vec![redis::Value::BulkString(b"org:acme".to_vec())])
    );
    assert!(err(&mut viewer, "BUDGET.GET org:other").starts_with("NOPERM"));
    assert!(
        err(&mut viewer, "RESERVE v1 org:acme gpt-4o INPUT 1 OUTPUT 0")
            .starts_with("NOPERM this user has no permissions")
    );
    // Wrong password, unknown user.
    assert!(
        redis::Client::open(format!("redis://acme-agent:ops-pass@127.0.0.1:{}/", s.port))
            .unwrap()
            .get_connection()
            .is_err()
    );
    assert!(
        redis::Client::open(format!("redis://nobody:x@127.0.0.1:{}/", s.port))
            .unwrap()
            .get_connection()
            .is_err()
    );
}
