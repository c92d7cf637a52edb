//! The engine against a failing disk: a sync that fails answers IOERR to its
//! batch and leaves nothing of it in the state or on disk; while the disk
//! keeps failing, writes are refused at once and reads answered; when it
//! takes writes again the engine resumes by itself. The store is the real
//! `LogStore` on a real directory, wrapped to fail syncs and probe writes
//! while asked to (a real disk cannot be made to fail here).

use std::borrow::Cow;
use std::future::Future as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use spendb::engine::{self, EngineConfig, EngineHandle};
use spendb::resp::cmd;
use spendb::state::{Config, Entry, Value};
use spendb::store::recovery;
use spendb::store::{LedgerRead, LogStore, Mark, SnapshotSink, Storage, StoreError};

struct FailingSync {
    inner: LogStore,
    /// While set, every sync and probe fails (a full or failing disk).
    failing: Arc<AtomicBool>,
    /// While set, every sync takes 2 ms more (a slow disk).
    slow: Arc<AtomicBool>,
}

impl Storage for FailingSync {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.inner.append(entries)
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        if self.slow.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: fdatasync failed (EIO)").into());
        }
        self.inner.sync()
    }
    fn last_seq(&self) -> Result<u64, StoreError> {
        self.inner.last_seq()
    }
    fn save_snapshot(&mut self, seq: u64, framed: &[u8]) -> Result<(), StoreError> {
        self.inner.save_snapshot(seq, framed)
    }
    fn snapshot_sink(&self) -> Result<Box<dyn SnapshotSink>, StoreError> {
        self.inner.snapshot_sink()
    }
    fn truncate_from(&mut self, from: u64) -> Result<(), StoreError> {
        self.inner.truncate_from(from)
    }
    fn mark(&self) -> Mark {
        self.inner.mark()
    }
    fn rollback(&mut self, mark: Mark) -> Result<(), StoreError> {
        self.inner.rollback(mark)
    }
    fn probe(&mut self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: no space left on device").into());
        }
        self.inner.probe()
    }
}

impl LedgerRead for FailingSync {
    fn read_from(&self, from: u64) -> Box<dyn Iterator<Item = Result<Entry, StoreError>> + '_> {
        self.inner.read_from(from)
    }

    fn snapshot_seqs(&self) -> Result<Vec<u64>, StoreError> {
        self.inner.snapshot_seqs()
    }

    fn read_snapshot(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.read_snapshot(seq)
    }
}

async fn run(engine: &EngineHandle, line: &str) -> Value {
    let words: Vec<&str> = line.split_whitespace().collect();
    let args: Vec<Cow<[u8]>> = words[1..]
        .iter()
        .map(|w| Cow::Borrowed(w.as_bytes()))
        .collect();
    let c = cmd::parse(&words[0].to_ascii_lowercase(), &args).expect(line);
    engine.execute(vec![c]).await.remove(0)
}

fn is_err(v: &Value, code: &str) -> bool {
    matches!(v, Value::Error { code: c, .. } if c.as_str() == code)
}

/// Runs a write until it is not refused with IOERR (writes resume within
/// about a second of the disk recovering; gives up after 10 s).
async fn until_written(engine: &EngineHandle, line: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = run(engine, line).await;
        if !is_err(&v, "IOERR") || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Stops the engine and verifies what it left on disk (a full replay).
async fn stop_and_verify(
    dir: &tempfile::TempDir,
    engine: EngineHandle,
    thread: std::thread::JoinHandle<()>,
) -> recovery::VerifyReport {
    engine.shutdown().await;
    thread.join().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    recovery::verify(&store, Config::default()).unwrap()
}

/// The engine on a real LogStore in a temp dir, with the two flags that
/// make it fail (syncs and probes fail) and slow (syncs take 2 ms more).
fn start_wrapped() -> (
    tempfile::TempDir,
    Arc<AtomicBool>,
    Arc<AtomicBool>,
    EngineHandle,
    std::thread::JoinHandle<()>,
) {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let slow = Arc::new(AtomicBool::new(false));
    let store = FailingSync {
        inner: LogStore::open(dir.path()).unwrap(),
        failing: fail.clone(),
        slow: slow.clone(),
    };
    let (engine, thread, _) = engine::start(
        Box::new(store),
        EngineConfig::default(),
        engine::system_clock(),
    )
    .unwrap();
    (dir, fail, slow, engine, thread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_answers_ioerr_and_leaves_no_trace() {
    let (dir, fail, _, engine, thread) = start_wrapped();
    let ok = run(&engine, "BUDGET.SET org:f TOKENS 1000 PER DAY").await;
    assert!(matches!(ok, Value::Ok), "{ok:?}");

    fail.store(true, Ordering::SeqCst);
    let lost = run(&engine, "RESERVE lost org:f gpt-4o INPUT 600 OUTPUT 0").await;
    assert!(is_err(&lost, "IOERR"), "{lost:?}");
    fail.store(false, Ordering::SeqCst);
    // Nothing of it in the state: the hold is unknown and its 600 tokens
    // are not held, so a second 600 fits (once writes resume).
    let gone = run(&engine, "HOLD.GET lost").await;
    assert!(is_err(&gone, "UNKNOWN"), "{gone:?}");
    let kept = until_written(&engine, "RESERVE kept org:f gpt-4o INPUT 600 OUTPUT 0").await;
    assert!(matches!(kept, Value::Map(_)), "{kept:?}");
    assert_eq!(engine.stats.write_errors.load(Ordering::Relaxed), 1);
    engine.shutdown().await;
    thread.join().unwrap();

    // Nor on disk: a restart and a full verify see `kept` only.
    let mut store = LogStore::open(dir.path()).unwrap();
    let r = recovery::recover(&mut store, Config::default()).unwrap();
    assert!(r.state.holds.contains("kept"));
    assert!(!r.state.holds.contains("lost"));
    let report = recovery::verify(&store, Config::default()).unwrap();
    assert_eq!(report.open_holds, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_refuses_writes_answers_reads_and_recovers_by_itself() {
    let (dir, fail, _, engine, thread) = start_wrapped();
    run(&engine, "BUDGET.SET org:d TOKENS 1000 PER DAY").await;
    let before = run(&engine, "RESERVE before org:d gpt-4o INPUT 100 OUTPUT 0").await;
    assert!(matches!(before, Value::Map(_)), "{before:?}");

    fail.store(true, Ordering::SeqCst);
    let first = run(&engine, "RESERVE a org:d gpt-4o INPUT 100 OUTPUT 0").await;
    assert!(is_err(&first, "IOERR"), "{first:?}");
    assert!(engine.stats.degraded.load(Ordering::Relaxed));
    // Past the probe interval the disk still fails: writes are refused up
    // front (no second failed write), with a message that says so.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for line in [
        "RESERVE b org:d gpt-4o INPUT 100 OUTPUT 0",
        "COMMIT before INPUT 10 OUTPUT 0",
        "BUDGET.SET org:d TOKENS 5 PER DAY",
    ] {
        match run(&engine, line).await {
            Value::Error {
                code: spendb::state::ErrorCode::IoErr,
                msg,
            } => assert!(msg.contains("refused"), "{msg}"),
            other => panic!("{line}: {other:?}"),
        }
    }
    assert_eq!(engine.stats.write_errors.load(Ordering::Relaxed), 1);
    // Reads are answered from the last durable state.
    let held = run(&engine, "HOLD.GET before").await;
    assert_eq!(held.field("status"), Some(&Value::str("open")), "{held:?}");
    let bal = run(&engine, "BALANCE org:d").await;
    assert!(matches!(bal, Value::Map(_)), "{bal:?}");
    assert!(matches!(
        run(&engine, "BUDGET.GET org:d").await,
        Value::Map(_)
    ));

    // The disk recovers: writes resume without a restart.
    fail.store(false, Ordering::SeqCst);
    let c = until_written(&engine, "COMMIT before INPUT 10 OUTPUT 0").await;
    assert_eq!(c.field("status"), Some(&Value::str("committed")), "{c:?}");
    assert!(!engine.stats.degraded.load(Ordering::Relaxed));
    let report = stop_and_verify(&dir, engine, thread).await;
    assert_eq!(report.open_holds, 0);
}

/// Leader-based group commit: callers that go away while they wait (a
/// timeout, a closed HTTP request) may hold the turn to write the next
/// group; it must pass on, or every later write would wait forever. Syncs
/// are slowed to 2 ms so that most callers wait behind one and many are
/// dropped while waiting; then every later command must still be answered,
/// and the ledger must hold exactly what the state holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_dropped_while_waiting_never_stall_the_group_commit() {
    let (dir, _, slow, engine, thread) = start_wrapped();
    run(&engine, "BUDGET.SET org:g TOKENS 1000000 PER DAY").await;
    slow.store(true, Ordering::SeqCst);
    // Callers race a clock: whichever is ready first wins, the other is
    // dropped unpolled (as `select!` does), so a turn to lead that arrived
    // at the same moment as the clock is dropped with the caller.
    let mut tasks = Vec::new();
    for i in 0..400u64 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let line = format!("RESERVE g{i} org:g gpt-4o INPUT 10 OUTPUT 0");
            let patience = std::time::Duration::from_micros(250 * (i % 13));
            tokio::select! {
                biased;
                _ = tokio::time::sleep(patience) => false,
                _ = run(&engine, &line) => true,
            }
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap() as usize;
    }
    slow.store(false, Ordering::SeqCst);
    assert!(answered < 400, "some callers must have gone away");
    // Every later command is answered (within 10 s each: not stalled).
    for i in 0..20 {
        let line = format!("RESERVE after{i} org:g gpt-4o INPUT 10 OUTPUT 0");
        let v = tokio::time::timeout(std::time::Duration::from_secs(10), run(&engine, &line))
            .await
            .unwrap_or_else(|_| panic!("{line}: no answer: the group commit stalled"));
        assert!(matches!(v, Value::Map(_)), "{v:?}");
    }
    // Idle again, and no turn to write was lost with a caller: the next
    // caller leads, instead of every later group waiting for the committer
    // thread's clock.
    assert!(!engine.has_pending());
    assert!(!engine.turn_taken());
    let held = engine.inspect(|s| s.open_hold_count());
    // What the state held is what the ledger holds.
    let report = stop_and_verify(&dir, engine, thread).await;
    assert_eq!(report.open_holds as usize, held);
    assert!(held >= answered + 20, "{held} open, {answered} answered");
}

/// A caller given the turn to write first yields to the runtime, so that
/// requests already read join its group; dropped during that yield (a
/// timeout that fires at once), it passes the turn on: the next caller is
/// answered, the dropped caller's command (applied before it went away) is
/// written with the rest, and no turn is left taken. On one worker, as
/// `spendb serve --workers 1` runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_caller_dropped_while_it_yields_its_turn_to_write_passes_it_on() {
    let (dir, _, _, engine, thread) = start_wrapped();
    run(&engine, "BUDGET.SET org:y TOKENS 1000 PER DAY").await;
    // Polled once, then dropped (as a `select!` whose other branch won).
    let mut caller = Box::pin(run(&engine, "RESERVE y1 org:y gpt-4o INPUT 10 OUTPUT 0"));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(caller.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "it yields before writing its group");
    drop(caller);
    assert!(engine.inspect(|s| s.open_hold_count()) == 1);
    let v = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        run(&engine, "RESERVE y2 org:y gpt-4o INPUT 10 OUTPUT 0"),
    )
    .await
    .expect("the next caller is answered");
    assert!(matches!(v, Value::Map(_)), "{v:?}");
    assert!(!engine.has_pending());
    assert!(
        !engine.turn_taken(),
        "the dropped caller's turn was passed on"
    );
    let report = stop_and_verify(&dir, engine, thread).await;
    assert_eq!(report.open_holds, 2);
}

/// Callers queued behind a leader learn their group's outcome from it: with
/// syncs slowed to 2 ms, most of forty concurrent callers follow another's
/// write, and every one is answered as its group went (granted when it was
/// written, IOERR when its sync failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_behind_a_leader_are_told_how_its_write_went() {
    let (dir, fail, slow, engine, thread) = start_wrapped();
    run(&engine, "BUDGET.SET org:f TOKENS 1000000 PER DAY").await;
    slow.store(true, Ordering::SeqCst);
    let batch = |tag: &'static str| {
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let engine = engine.clone();
                let line = format!("RESERVE {tag}{i} org:f gpt-4o INPUT 10 OUTPUT 0");
                tokio::spawn(async move { run(&engine, &line).await })
            })
            .collect();
        async move {
            let mut replies = Vec::new();
            for t in tasks {
                replies.push(t.await.unwrap());
            }
            replies
        }
    };
    let groups = || engine.stats.batches.load(Ordering::SeqCst);
    let before = groups();
    for v in batch("ok").await {
        assert!(matches!(v, Value::Map(_)), "{v:?}");
    }
    assert!(
        groups() - before < 40,
        "some callers followed another's write"
    );
    fail.store(true, Ordering::SeqCst);
    for v in batch("bad").await {
        assert!(is_err(&v, "IOERR"), "{v:?}");
    }
    fail.store(false, Ordering::SeqCst);
    slow.store(false, Ordering::SeqCst);
    assert!(matches!(
        until_written(&engine, "RESERVE last org:f gpt-4o INPUT 10 OUTPUT 0").await,
        Value::Map(_)
    ));
    let report = stop_and_verify(&dir, engine, thread).await;
    assert_eq!(report.open_holds, 41);
}
