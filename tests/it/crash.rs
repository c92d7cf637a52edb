//! Crash test: the real binary under a stream of acknowledged reserves,
//! commits and releases from several clients is killed with SIGKILL at random
//! moments and restarted on the same data dir, 30 times (SPENDB_CRASH_CYCLES
//! to change). After each crash `spendb ledger verify` passes, every
//! acknowledged reserve, commit and release is there, replaying a COMMIT
//! returns its original reply, and the spend at the root is at least what
//! was acknowledged and at most that plus what was in flight. The seed is
//! printed; SPENDB_CRASH_SEED replays its timings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::common::*;

const CLIENTS: usize = 4;
const CYCLES: usize = 30;
const TOKENS_PER_COMMIT: i64 = 30; // INPUT 20 OUTPUT 10

#[derive(Default)]
struct Acked {
    reserves: Vec<String>,
    releases: Vec<String>,
    /// (hold, the COMMIT reply)
    commits: Vec<(String, Reply)>,
    in_flight_commits: usize,
    /// Holds whose COMMIT or RELEASE was sent but not answered (the crash
    /// came first): either outcome is allowed.
    in_flight: std::collections::HashMap<String, &'static str>,
}

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn sigkill_under_load_loses_nothing_acknowledged() {
    let mut seed = std::env::var("SPENDB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    let cycles = std::env::var("SPENDB_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CYCLES);
    eprintln!("crash test seed {seed} (SPENDB_CRASH_SEED), {cycles} cycles");
    let mut s = Server::start(&["--snapshot-every", "500"]);
    raw(
        &mut s.conn(),
        "BUDGET.SET org:crash TOKENS 100000000 PER MONTH",
    )
    .unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));

    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..CLIENTS)
            .map(|w| {
                let (url, stop, acked) = (s.url(), stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let id = format!("c{cycle}-w{w}-{i}");
                        let Ok(v) = raw(
                            &mut c,
                            &format!("RESERVE {id} org:crash/w:{w} gpt-4o INPUT 20 OUTPUT 20"),
                        ) else {
                            return;
                        };
                        assert_eq!(fields(v).s("status"), "granted");
                        acked.lock().unwrap().reserves.push(id.clone());
                        if i % 3 == 2 {
                            continue; // leave some holds open
                        }
                        if i % 5 == 4 {
                            acked
                                .lock()
                                .unwrap()
                                .in_flight
                                .insert(id.clone(), "released");
                            let r = raw(&mut c, &format!("RELEASE {id}"));
                            let mut a = acked.lock().unwrap();
                            match r {
                                Ok(v) => {
                                    assert_eq!(fields(v).s("status"), "released");
                                    a.in_flight.remove(&id);
                                    a.releases.push(id);
                                    continue;
                                }
                                Err(_) => return, // killed mid-request: stays in flight
                            }
                        }
                        {
                            let mut a = acked.lock().unwrap();
                            a.in_flight_commits += 1;
                            a.in_flight.insert(id.clone(), "committed");
                        }
                        let r = raw(&mut c, &format!("COMMIT {id} INPUT 20 OUTPUT 10"));
                        let mut a = acked.lock().unwrap();
                        match r {
                            Ok(v) => {
                                a.in_flight_commits -= 1;
                                a.in_flight.remove(&id);
                                a.commits.push((id, fields(v)));
                            }
                            Err(_) => return, // killed mid-request: stays in flight
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100 + next(&mut seed) % 300));
        s.crash();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }

        let (ok, out) = verify(&s.dir);
        assert!(ok, "cycle {cycle}: {out}");
        s.restart();
        let mut c = s.conn();
        let a = acked.lock().unwrap();
        assert!(!a.reserves.is_empty());
        // Every acknowledged hold, in one pipeline.
        let mut pipe = redis::pipe();
        for id in &a.reserves {
            pipe.cmd("HOLD.GET").arg(id);
        }
        let holds: Vec<redis::Value> = pipe.query(&mut c).unwrap();
        let released: std::collections::HashSet<&String> = a.releases.iter().collect();
        let committed: std::collections::HashSet<&String> =
            a.commits.iter().map(|(id, _)| id).collect();
        for (id, h) in a.reserves.iter().zip(holds) {
            let status = fields(h).s("status");
            let ok = if released.contains(id) {
                status == "released"
            } else if committed.contains(id) {
                status == "committed"
            } else {
                status == "open" || a.in_flight.get(id) == Some(&status.as_str())
            };
            assert!(ok, "cycle {cycle}: {id} is {status}");
        }
        for (id, reply) in &a.commits {
            assert_eq!(
                &q(&mut c, &format!("COMMIT {id} INPUT 20 OUTPUT 10")),
                reply,
                "cycle {cycle}: replay of {id}"
            );
        }
        let spent: i64 = dim(&q(&mut c, "BALANCE org:crash"), "spent", "tokens")
            .parse()
            .unwrap();
        let acked_tokens = a.commits.len() as i64 * TOKENS_PER_COMMIT;
        let in_flight = a.in_flight_commits as i64 * TOKENS_PER_COMMIT;
        assert!(
            spent >= acked_tokens && spent <= acked_tokens + in_flight,
            "cycle {cycle}: spent {spent}, acked {acked_tokens}, in flight {in_flight}"
        );
        eprintln!(
            "cycle {cycle}: {} reserves, {} commits and {} releases acknowledged so far, all recovered",
            a.reserves.len(),
            a.commits.len(),
            a.releases.len()
        );
    }
}
