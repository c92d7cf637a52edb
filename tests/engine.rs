//! The engine against a failing disk: a sync that fails answers IOERR to its
//! batch, leaves nothing of it in the state or on disk, and the engine goes
//! on. The store is the real `LogStore` on a real directory, wrapped to fail
//! one sync on request (a real disk cannot be made to fail here).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use spendb::engine::{self, EngineConfig, EngineHandle};
use spendb::resp::cmd;
use spendb::state::{Config, Entry, Value};
use spendb::store::recovery;
use spendb::store::{LogStore, Mark, SnapshotSink, Storage, StoreError};

struct FailingSync {
    inner: LogStore,
    fail_next_sync: Arc<AtomicBool>,
}

impl Storage for FailingSync {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        self.inner.append(entries)
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        if self.fail_next_sync.swap(false, Ordering::SeqCst) {
            return Err(std::io::Error::other("injected: fdatasync failed (EIO)").into());
        }
        self.inner.sync()
    }
    fn read_from(&self, from: u64) -> Box<dyn Iterator<Item = Result<Entry, StoreError>> + '_> {
        self.inner.read_from(from)
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
    fn snapshots(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.snapshots()
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
    matches!(v, Value::Error { code: c, .. } if *c == code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_answers_ioerr_and_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let store = FailingSync {
        inner: LogStore::open(dir.path()).unwrap(),
        fail_next_sync: fail.clone(),
    };
    let (engine, thread, _) = engine::start(
        Box::new(store),
        EngineConfig::default(),
        engine::system_clock(),
    )
    .unwrap();
    let ok = run(&engine, "BUDGET.SET org:f TOKENS 1000 PER DAY").await;
    assert!(matches!(ok, Value::Ok), "{ok:?}");

    fail.store(true, Ordering::SeqCst);
    let lost = run(&engine, "RESERVE lost org:f gpt-4o INPUT 600").await;
    assert!(is_err(&lost, "IOERR"), "{lost:?}");
    // Nothing of it in the state: the hold is unknown and its 600 tokens
    // are not held, so a second 600 fits.
    let gone = run(&engine, "HOLD.GET lost").await;
    assert!(is_err(&gone, "UNKNOWN"), "{gone:?}");
    let kept = run(&engine, "RESERVE kept org:f gpt-4o INPUT 600").await;
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
