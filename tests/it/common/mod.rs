//! Test harness: runs the real `spendb` binary on a free port (port 0; the
//! server prints the address it bound) over a temporary data dir, and talks
//! to it with the `redis` crate. Children are killed and dirs removed on drop.
#![allow(dead_code)]

pub mod etcd;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Server {
    pub child: Child,
    pub port: u16,
    /// The HTTP admin API's port.
    pub admin_port: u16,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub extra: Vec<String>,
    /// Environment variables the server runs with (kept for `restart`).
    pub env: Vec<(String, String)>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_spendb")
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = Server::start_in(&dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// A server with a `--users` file of this TOML.
    pub fn with_users(toml: &str, extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let users = tmp.path().join("users.toml");
        std::fs::write(&users, toml).unwrap();
        let mut args = vec!["--users", users.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut s = Server::start_in(&tmp.path().join("data"), &args);
        s._tmp = Some(tmp);
        s
    }

    pub fn start_in(dir: &Path, extra: &[&str]) -> Server {
        Server::start_in_env(dir, extra, &[])
    }

    /// `start_in` with environment variables (an archive's credentials).
    pub fn start_in_env(dir: &Path, extra: &[&str], env: &[(String, String)]) -> Server {
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (child, port, admin_port) = spawn_ports(dir, extra, &refs);
        Server {
            child,
            port,
            admin_port,
            dir: dir.to_path_buf(),
            _tmp: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.to_vec(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A connection authenticated as `user` (a `--users` file's).
    pub fn conn_as(&self, user: &str, pass: &str) -> redis::Connection {
        redis::Client::open(format!("redis://{user}:{pass}@127.0.0.1:{}/", self.port))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        self.child.wait().unwrap()
    }

    /// SIGKILL: a crash.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Restarts on the same data dir (after stop or crash).
    pub fn restart(&mut self) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        (self.child, self.port, self.admin_port) = spawn_ports(&self.dir, &extra, &env);
    }
}

/// Starts the binary and reads the address it bound from its first line.
pub fn spawn(dir: &Path, extra: &[&str]) -> (Child, u16) {
    spawn_env(dir, extra, &[])
}

/// As `spawn`, with extra environment variables.
pub fn spawn_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Child, u16) {
    let (child, port, _) = spawn_ports(dir, extra, env);
    (child, port)
}

/// Starts the binary; returns it with its Redis and admin ports.
pub fn spawn_ports(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Child, u16, u16) {
    let mut child = Command::new(bin())
        .envs(env.iter().copied())
        .args(["serve", "--port", "0", "--admin-port", "0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("SPENDB_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn spendb");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let (resp, admin) = ready_ports(&line);
    (child, resp, admin)
}

/// The ports in "spendb ready resp=ADDR admin=ADDR".
pub fn ready_ports(line: &str) -> (u16, u16) {
    let port = |key: &str| -> u16 {
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        addr.rsplit(':').next().unwrap().parse().unwrap()
    };
    assert!(
        line.starts_with("spendb ready "),
        "unexpected first line {line:?}"
    );
    (port("resp="), port("admin="))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal by name (TERM, STOP, CONT).
pub fn unsafe_kill(pid: u32, sig: &str) {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
}

/// Runs `spendb ledger verify` on a data dir: (success, output).
pub fn verify(dir: &Path) -> (bool, String) {
    let out = Command::new(bin())
        .args(["ledger", "verify", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A spendb reply as field → value (RESP2 flat array or RESP3 map).
pub type Reply = HashMap<String, redis::Value>;

pub fn fields(v: redis::Value) -> Reply {
    match v {
        redis::Value::Array(items) => items
            .chunks(2)
            .map(|kv| (string(&kv[0]), kv[1].clone()))
            .collect(),
        redis::Value::Map(kvs) => kvs.into_iter().map(|(k, v)| (string(&k), v)).collect(),
        other => panic!("not a map reply: {other:?}"),
    }
}

pub fn string(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(n) => n.to_string(),
        redis::Value::Nil => "nil".into(),
        other => panic!("not a string: {other:?}"),
    }
}

pub trait Get {
    fn s(&self, f: &str) -> String;
    fn i(&self, f: &str) -> i64;
}

impl Get for Reply {
    fn s(&self, f: &str) -> String {
        string(
            self.get(f)
                .unwrap_or_else(|| panic!("no field {f} in {self:?}")),
        )
    }
    fn i(&self, f: &str) -> i64 {
        match self.get(f) {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("field {f} is {other:?}"),
        }
    }
}

/// Sends a command given as words; returns the reply as fields.
pub fn q(con: &mut redis::Connection, line: &str) -> Reply {
    fields(raw(con, line).unwrap_or_else(|e| panic!("{line}: {e}")))
}

/// Sends a command given as words; returns the raw reply or the error.
pub fn raw(con: &mut redis::Connection, line: &str) -> redis::RedisResult<redis::Value> {
    let mut words = line.split_whitespace();
    let mut c = redis::cmd(words.next().unwrap());
    for w in words {
        c.arg(w);
    }
    c.query(con)
}

/// The error line of a command that must fail ("CODE message").
pub fn err(con: &mut redis::Connection, line: &str) -> String {
    match raw(con, line) {
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
        Ok(v) => panic!("{line} succeeded: {v:?}"),
    }
}

/// A limit of a BALANCE / BUDGET.GET reply, by dim and window.
pub fn limit(reply: &Reply, dim: &str, window: &str) -> Reply {
    let redis::Value::Array(ls) = reply.get("limits").unwrap().clone() else {
        panic!("limits not an array")
    };
    ls.into_iter()
        .map(fields)
        .find(|l| l.s("dim") == dim && l.s("window") == window)
        .unwrap_or_else(|| panic!("no limit {dim} {window} in {reply:?}"))
}

/// A dimension of a BALANCE's `spent` or `held` map.
pub fn dim(reply: &Reply, map: &str, dim: &str) -> String {
    fields(reply.get(map).unwrap().clone()).s(dim)
}

/// A JSON client of the admin API (ureq), with an optional bearer token.
pub struct Http {
    base: String,
    /// The Authorization header's value.
    authorization: Option<String>,
}

impl Http {
    pub fn new(s: &Server, token: Option<&str>) -> Http {
        Http {
            base: format!("http://127.0.0.1:{}", s.admin_port),
            authorization: token.map(|t| format!("Bearer {t}")),
        }
    }

    /// A client with HTTP Basic credentials.
    pub fn basic(s: &Server, user: &str, password: &str) -> Http {
        use base64::Engine as _;
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Http {
            base: format!("http://127.0.0.1:{}", s.admin_port),
            authorization: Some(format!("Basic {pair}")),
        }
    }

    /// (status, JSON body or the text as a JSON string).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        // Every status is an answer here (the tests check 4xx too).
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = ureq::http::Request::builder()
            .method(method)
            // As ureq 2 did: a space in a path is sent percent-encoded.
            .uri(format!("{}{}", self.base, path.replace(' ', "%20")));
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        if body.is_some() {
            req = req.header("Content-Type", "application/json");
        }
        let req = req
            .body(body.unwrap_or("").to_string())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let mut resp = agent
            .run(req)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, v)
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call("GET", path, None)
    }
}

/// A number from the environment (the simulations' seed and step counts),
/// or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `spendb bench -q --json <file> <args>`, which must succeed: its
/// JSON report and the table it printed.
pub fn bench_report(args: &[&str]) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = Command::new(bin())
        .args(["bench", "-q", "--json", json.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (report, table)
}

/// Runs the binary with `args` (a CLI subcommand), which must succeed (its
/// stderr is the failure's message): its stdout.
pub fn spendb_ok(args: &[&str]) -> String {
    spendb_ok_env(args, &[])
}

/// `spendb_ok` with environment variables (an archive's credentials).
pub fn spendb_ok_env(args: &[&str], env: &[(String, String)]) -> String {
    let out = Command::new(bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spendb {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A TCP proxy on 127.0.0.1 to another local server (an etcd member, an
/// S3 store) that can cut every connection and refuse new ones, then heal.
pub struct Proxy {
    /// `http://127.0.0.1:<port>`: where to connect instead.
    pub url: String,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// A proxy to `target` (`host:port`, with or without `http://`).
    pub fn to(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let target = target.trim_start_matches("http://").to_string();
        let open = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let (o, cs) = (open.clone(), conns.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { return };
                if !o.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(&target) else {
                    continue;
                };
                cs.lock().unwrap().push(inbound.try_clone().unwrap());
                cs.lock().unwrap().push(outbound.try_clone().unwrap());
                for (mut from, mut to) in [
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                    (outbound, inbound),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { url, open, conns }
    }

    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}
