//! A three-member etcd cluster on loopback for the cluster tests: free
//! ports from the OS, a temp dir, every member killed when dropped.
//!
//! Needs the `etcd` binary (Debian: `apt-get install etcd-server`;
//! `scripts/test` installs it): without it the tests fail and say so.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spendb::cluster::etcd::EtcdStore;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Member {
    pub name: String,
    pub client: String,
    pub child: Option<Child>,
}

/// Three etcd members on loopback; killed (and their data dirs removed)
/// when dropped.
pub struct EtcdCluster {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
    /// One etcd cluster at a time: three members and a few spendb nodes
    /// are all a 2-core machine runs without stretching etcd's replies past
    /// the nodes' timeouts. Dropped last, after the members.
    _turn: std::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The same turn for a test that keeps both cores busy without an etcd (the
/// cluster simulations): while it runs, no etcd cluster and its spendb
/// nodes do, so their replies are not stretched past the nodes' timeouts
/// (the three-node drain measured 85.7 % and 94.2 % at its first denial,
/// against 99.6–99.99 % alone, when a simulation ran beside it).
pub fn cpu_turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

impl EtcdCluster {
    pub fn start() -> EtcdCluster {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let etcd = which_etcd();
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = (ports.iter().enumerate())
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        let members = (ports.iter().enumerate())
            .map(|(i, (client, peer))| {
                let name = format!("e{i}");
                let client = format!("http://127.0.0.1:{client}");
                let peer = format!("http://127.0.0.1:{peer}");
                let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
                let child = Command::new(&etcd)
                    .args(["--name", &name])
                    .args(["--data-dir", dir.path().join(&name).to_str().unwrap()])
                    .args([
                        "--listen-client-urls",
                        &client,
                        "--advertise-client-urls",
                        &client,
                    ])
                    .args([
                        "--listen-peer-urls",
                        &peer,
                        "--initial-advertise-peer-urls",
                        &peer,
                    ])
                    .args(["--initial-cluster", &initial.join(",")])
                    .args([
                        "--initial-cluster-state",
                        "new",
                        "--initial-cluster-token",
                        "spendb-test",
                    ])
                    // A small cluster on a busy 2-core machine: elections
                    // that do not fire on a slow fsync.
                    .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot start {etcd}: {e}"));
                Member {
                    name,
                    client,
                    child: Some(child),
                }
            })
            .collect();
        let c = EtcdCluster {
            members,
            _dir: dir,
            _turn: turn,
        };
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    pub fn store(&self) -> EtcdStore {
        EtcdStore::new(&self.endpoints(), Duration::from_secs(5))
    }

    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            loop {
                let ok = ureq::get(&format!("{}/health", m.client))
                    .call()
                    .ok()
                    .and_then(|mut r| r.body_mut().read_to_string().ok())
                    .is_some_and(|b| b.contains("\"true\""));
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} not healthy",
                    m.name
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The index of the member that leads now.
    pub fn leader(&self) -> usize {
        for (i, m) in self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.child.is_some())
        {
            let status: serde_json::Value =
                ureq::post(&format!("{}/v3/maintenance/status", m.client))
                    .send_json(serde_json::json!({}))
                    .unwrap()
                    .body_mut()
                    .read_json()
                    .unwrap();
            if status["leader"] == status["header"]["member_id"] {
                return i;
            }
        }
        panic!("no leader")
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

pub fn which_etcd() -> String {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("these tests need etcd: install it (Debian: apt-get install etcd-server), or run scripts/test, which does");
}
