//! The Redis-protocol front end: `frame` finds requests in bytes, `cmd`
//! turns spendb's commands into [`crate::state::Command`]s, `encode` turns
//! replies into RESP2/RESP3, `connection` runs one client. Front ends hold no
//! rules.

pub mod cache_cmd;
pub mod cmd;
pub mod connection;
pub mod count;
pub mod docs;
pub mod encode;
pub mod frame;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UnixListener};

use crate::engine::{Durability, EngineHandle};
use frame::FrameLimits;

/// What every connection shares.
pub struct ServerCtx {
    pub engine: EngineHandle,
    pub cache: Arc<crate::store::cache::Cache>,
    pub limits: FrameLimits,
    pub next_client_id: AtomicU64,
    pub connections: AtomicU64,
    pub started: Instant,
    pub port: u16,
    pub durability: Durability,
    pub auth: Arc<crate::auth::Auth>,
    /// Connections beyond this are told so and closed.
    pub max_connections: u64,
    /// Close a connection that sends nothing for this long (None: never).
    pub idle_timeout: Option<Duration>,
    /// Close a connection that does not read its replies for this long. The
    /// output buffer itself is bounded: replies to at most one pipeline
    /// batch are buffered, and nothing more is read until they are written.
    pub write_timeout: Duration,
    /// The last sample of the command count for INFO's
    /// `instantaneous_ops_per_sec`: (when, commands, the rate then).
    pub ops_sample: std::sync::Mutex<(Instant, u64, u64)>,
    /// SHUTDOWN asks the server to stop here (as SIGTERM does).
    pub shutdown: tokio::sync::Notify,
    /// The connections open now, by id (CLIENT LIST / KILL).
    pub clients: std::sync::Mutex<std::collections::BTreeMap<u64, Arc<ClientEntry>>>,
    /// Commands whose engine batch was slow (SLOWLOG).
    pub slowlog: std::sync::Mutex<SlowLog>,
    /// Every command as MONITOR shows it, to the connections monitoring.
    pub monitors: tokio::sync::broadcast::Sender<Arc<str>>,
    /// How many connections are monitoring: read on every request, so an
    /// atomic (the channel's own count takes a lock).
    pub monitoring: AtomicU64,
    /// SLOWLOG's threshold, read after every engine batch without taking
    /// the log's lock (only a slow batch takes it).
    pub slowlog_threshold: Duration,
}

/// Most arguments, and bytes of each, that SLOWLOG and MONITOR keep of a
/// command (as Redis does, the rest is said to be there).
pub const LOGGED_ARGS: usize = 32;
pub const LOGGED_ARG_BYTES: usize = 128;

/// One SLOWLOG entry.
pub struct SlowEntry {
    pub id: u64,
    /// Unix seconds.
    pub at: u64,
    pub micros: u64,
    pub args: Vec<String>,
    pub addr: String,
    pub name: String,
}

/// The slow log: the newest `max_len` commands at or over the threshold
/// (`ServerCtx::slowlog_threshold`).
pub struct SlowLog {
    pub max_len: usize,
    pub next_id: u64,
    pub entries: std::collections::VecDeque<SlowEntry>,
}

impl SlowLog {
    pub fn new(max_len: usize) -> SlowLog {
        SlowLog {
            max_len,
            next_id: 0,
            entries: Default::default(),
        }
    }

    pub fn push(&mut self, mut e: SlowEntry) {
        e.id = self.next_id;
        self.next_id += 1;
        self.entries.push_front(e);
        self.entries.truncate(self.max_len);
    }
}

/// A command's arguments as the logs keep them: at most [`LOGGED_ARGS`],
/// each cut at [`LOGGED_ARG_BYTES`]; AUTH's and HELLO's redacted.
pub fn logged_args(args: &[std::borrow::Cow<[u8]>]) -> Vec<String> {
    let name = args.first().map(|a| a.to_ascii_lowercase());
    let secret = matches!(name.as_deref(), Some(b"auth") | Some(b"hello"));
    let mut out: Vec<String> = args
        .iter()
        .take(LOGGED_ARGS)
        .enumerate()
        .map(|(i, a)| {
            if secret && i > 0 {
                return "(redacted)".to_string();
            }
            let shown = String::from_utf8_lossy(&a[..a.len().min(LOGGED_ARG_BYTES)]).into_owned();
            if a.len() > LOGGED_ARG_BYTES {
                format!("{shown}... ({} more bytes)", a.len() - LOGGED_ARG_BYTES)
            } else {
                shown
            }
        })
        .collect();
    if args.len() > LOGGED_ARGS {
        out.push(format!("... ({} more arguments)", args.len() - LOGGED_ARGS));
    }
    out
}

/// What CLIENT LIST shows of a connection, and how CLIENT KILL reaches it.
pub struct ClientEntry {
    pub id: u64,
    pub addr: String,
    pub connected: Instant,
    /// Updated by the connection as it goes: (name, user, scope prefixes).
    pub who: std::sync::Mutex<(Option<String>, Option<String>, Vec<String>)>,
    pub commands: std::sync::atomic::AtomicU64,
    /// When it last read a request, in ms after `connected` (an atomic:
    /// written on every read).
    pub last_active_ms: AtomicU64,
    /// Set by CLIENT KILL; the connection closes when it sees it.
    pub killed: std::sync::atomic::AtomicBool,
    pub kill: tokio::sync::Notify,
}

impl ServerCtx {
    /// The connections open now, in id order (a copy: the list's lock is
    /// not held while they are read).
    pub fn client_entries(&self) -> Vec<Arc<ClientEntry>> {
        (self.clients.lock().unwrap_or_else(|e| e.into_inner()))
            .values()
            .cloned()
            .collect()
    }

    /// Commands per second over the time since the last sample (resampled
    /// at most once a second, so frequent INFO calls see a steady figure).
    pub fn ops_per_sec(&self, commands: u64) -> u64 {
        let mut s = self.ops_sample.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = s.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let rate = (commands.saturating_sub(s.1) as f64 / elapsed.as_secs_f64()) as u64;
            *s = (Instant::now(), commands, rate);
        }
        s.2
    }
}

/// This process's resident memory in bytes (Linux: /proc/self/statm, in
/// pages), for INFO's `used_memory`; 0 where it cannot be read.
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a system setting.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Accepts TCP connections until the task is dropped.
pub async fn run(listener: TcpListener, ctx: Arc<ServerCtx>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Replies go out in one write per round: Nagle would only
                // hold the last part of one back.
                let _ = stream.set_nodelay(true);
                admit(stream, peer.to_string(), &ctx);
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// Accepts Unix-socket connections (`--unixsocket`) until the task is
/// dropped: the same protocol and limits, without the TCP stack (a
/// sidecar's clients are on the same host).
pub async fn run_unix(listener: UnixListener, path: String, ctx: Arc<ServerCtx>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => admit(stream, format!("{path}:0"), &ctx),
            Err(e) => accept_failed(e).await,
        }
    }
}

/// A failed accept (out of descriptors, most often) is logged and retried
/// a little later rather than ending the listener.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Starts serving an accepted client, or tells it the server is full.
fn admit(stream: impl connection::Stream + 'static, addr: String, ctx: &Arc<ServerCtx>) {
    let ctx = ctx.clone();
    if ctx.connections.load(Ordering::Relaxed) >= ctx.max_connections {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut stream = stream;
            let _ = stream
                .write_all(b"-ERR max number of clients reached\r\n")
                .await;
        });
        return;
    }
    tokio::spawn(async move {
        ctx.connections.fetch_add(1, Ordering::Relaxed);
        connection::serve(stream, addr, ctx.clone()).await;
        ctx.connections.fetch_sub(1, Ordering::Relaxed);
    });
}
