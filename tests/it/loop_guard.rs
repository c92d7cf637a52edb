//! The loop guard (STEP, RUN.END) over a real server: both rules, per-call
//! settings, denials counted per scope, the timeout, and survival across a
//! restart.

use crate::common::*;

fn step(c: &mut redis::Connection, line: &str) -> Reply {
    q(c, &format!("STEP {line}"))
}

#[test]
fn max_steps_and_repeats_are_denied_with_their_reason() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    // MAX: the fourth step of a 3-step run is denied, with a reason.
    for i in 1..=3 {
        let r = step(&mut c, &format!("r1 tool{i} MAX 3"));
        assert_eq!(r.s("status"), "ok");
        assert_eq!(r.i("steps"), i);
        assert_eq!(r.i("remaining"), 3 - i);
    }
    let r = step(&mut c, "r1 tool4 MAX 3");
    assert_eq!(r.s("status"), "denied");
    assert_eq!(r.s("reason"), "max_steps");
    assert_eq!(r.i("steps"), 3);

    // Repeats (default 3 within 5): a, b, a, c, then a third a is denied.
    for sig in ["a", "b", "a", "c"] {
        assert_eq!(step(&mut c, &format!("r2 {sig}")).s("status"), "ok");
    }
    let r = step(&mut c, "r2 a");
    assert_eq!(r.s("status"), "denied");
    assert_eq!(r.s("reason"), "repeated");
    assert_eq!(r.i("repeats"), 3);
    // Outside the window it is allowed again: d e f push the a's out.
    for sig in ["d", "e", "f"] {
        assert_eq!(step(&mut c, &format!("r2 {sig}")).s("status"), "ok");
    }
    assert_eq!(step(&mut c, "r2 a").s("status"), "ok");

    // Per call: two repeats within a window of 2 are too many.
    assert_eq!(step(&mut c, "r3 x REPEATS 2 WINDOW 2").s("status"), "ok");
    assert_eq!(
        step(&mut c, "r3 x REPEATS 2 WINDOW 2").s("reason"),
        "repeated"
    );
    assert!(err(&mut c, "STEP r3 x REPEATS 1").starts_with("ERR"));
    assert!(err(&mut c, "STEP r3 x WINDOW 1000").starts_with("ERR"));
    assert!(err(&mut c, "STEP r3 x MAX 0").starts_with("ERR"));

    // RUN.END forgets a run: it starts again from one.
    assert_eq!(q(&mut c, "RUN.END r1").s("status"), "ended");
    assert_eq!(step(&mut c, "r1 tool1 MAX 3").i("steps"), 1);
    assert!(err(&mut c, "RUN.END nope").starts_with("UNKNOWN"));
}

#[test]
fn denials_are_counted_per_scope_and_survive_a_restart() {
    let mut s = Server::start(&[]);
    let mut c = s.conn();
    for _ in 0..2 {
        step(&mut c, "r9 same SCOPE org:acme/agent:bot");
    }
    for _ in 0..4 {
        let r = step(&mut c, "r9 same SCOPE org:acme/agent:bot");
        assert_eq!(r.s("reason"), "repeated");
    }
    for scope in ["org:acme", "org:acme/agent:bot"] {
        assert_eq!(
            q(&mut c, &format!("BALANCE {scope}")).i("loop_denials"),
            4,
            "{scope}"
        );
    }
    drop(c);
    assert!(s.stop().success());
    s.restart();
    let mut c = s.conn();
    assert_eq!(q(&mut c, "BALANCE org:acme").i("loop_denials"), 4);
    // The run's history came back too: the repeat is still caught.
    assert_eq!(
        step(&mut c, "r9 same SCOPE org:acme/agent:bot").s("reason"),
        "repeated"
    );
    assert_eq!(step(&mut c, "r9 other").i("steps"), 3);
    drop(c);
    assert!(s.stop().success());
    assert!(verify(&s.dir).0);
}

#[test]
fn runs_that_stop_stepping_are_forgotten_after_the_timeout() {
    let s = Server::start(&["--run-timeout", "300ms"]);
    let mut c = s.conn();
    step(&mut c, "idle one");
    step(&mut c, "idle two");
    assert_eq!(step(&mut c, "busy one").i("steps"), 1);
    std::thread::sleep(std::time::Duration::from_millis(700));
    // Forgotten on the clock (a RunEnd entry): both start over.
    assert!(err(&mut c, "RUN.END idle").starts_with("UNKNOWN"));
    assert_eq!(step(&mut c, "busy two").i("steps"), 1);
}

#[test]
fn server_defaults_come_from_flags() {
    let s = Server::start(&[
        "--loop-max-steps",
        "2",
        "--loop-repeats",
        "2",
        "--loop-window",
        "3",
    ]);
    let mut c = s.conn();
    assert_eq!(step(&mut c, "d1 a").s("status"), "ok");
    // Two of "a" within three steps: the second is denied by the defaults.
    assert_eq!(step(&mut c, "d1 a").s("reason"), "repeated");
    assert_eq!(step(&mut c, "d1 b").s("status"), "ok");
    assert_eq!(step(&mut c, "d1 c").s("reason"), "max_steps");
    // A call's own settings win.
    assert_eq!(
        step(&mut c, "d2 a MAX 10 REPEATS 3 WINDOW 5").s("status"),
        "ok"
    );
    assert_eq!(
        step(&mut c, "d2 a MAX 10 REPEATS 3 WINDOW 5").s("status"),
        "ok"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = std::process::Command::new(bin())
        .args([
            "serve",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--loop-repeats",
            "1",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--loop-repeats"));
}
