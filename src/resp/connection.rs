//! One client connection: read bytes, frame every complete request in the
//! buffer, send the engine's commands as one batch, then write all replies,
//! in request order, with one write. Connection-level commands (PING, HELLO,
//! CLIENT, INFO, …) are answered here, and so are MULTI / EXEC / DISCARD:
//! a transaction's engine commands are queued on the connection and EXEC
//! appends them to the batch, where the engine decides them in a row under
//! its one lock, nothing in between.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::cache_cmd;
use super::cmd::{self, Args};
use super::count;
use super::encode::encode;
use super::frame::{self, FrameError};
use super::ServerCtx;
use crate::auth::User;
use crate::state::commands::{self, Answered};
use crate::state::{ErrorCode, Value};

/// Most requests taken from the buffer before replying.
const MAX_PIPELINE: usize = 4096;
/// Most commands one MULTI queues (more aborts the transaction).
pub const MAX_MULTI_QUEUE: usize = 10_000;

struct Conn {
    id: u64,
    proto: u8,
    name: Option<String>,
    authed: bool,
    /// Who authenticated; None is the default user (every right).
    user: Option<Arc<User>>,
    addr: String,
    /// Inside MULTI: what is queued for EXEC.
    multi: Option<Transaction>,
    /// This connection in the server's client list (CLIENT LIST / KILL).
    entry: Arc<super::ClientEntry>,
}

impl Conn {
    /// Mirrors name and user into the client list.
    fn publish(&self) {
        let user = self.user.as_ref().map(|u| u.name.clone());
        let scopes = (self.user.as_ref())
            .and_then(|u| u.access.as_ref())
            .map_or_else(Vec::new, |a| a.prefixes.clone());
        *self.entry.who.lock().unwrap_or_else(|e| e.into_inner()) =
            (self.name.clone(), user, scopes);
    }

    /// Whether this connection may see and end others' (an admin's rights).
    fn is_admin(&self) -> bool {
        self.user.as_ref().is_none_or(|u| u.is_admin())
    }
}

/// Takes a connection off the client list when it ends.
struct Registered<'a>(&'a ServerCtx, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// A transaction being queued (MULTI … EXEC).
#[derive(Default)]
struct Transaction {
    items: Vec<Queued>,
    /// An error while queuing: EXEC answers EXECABORT.
    failed: bool,
}

/// An engine command's place in the command table, and the time its
/// request took before it reached the engine (a cache hit's search, when
/// the hit books savings), for the latency histogram.
#[derive(Clone, Copy)]
struct Kind {
    command: usize,
    before_engine_us: u64,
}

/// One queued command of a transaction.
enum Queued {
    /// Answered when queued (PING, ECHO, COUNT, TRUNCATE: they read nothing
    /// the transaction can change).
    Now(Value),
    /// Decided by the engine at EXEC.
    Engine(crate::state::Command, Kind),
}

enum Slot {
    Now(Value),
    Engine,
    /// This value once the engine's reply to its command is not an error
    /// (a cache hit whose savings are booked).
    AfterEngine(Value),
    /// EXEC: its replies, in order; `true` takes the next engine reply.
    Exec(Vec<Option<Value>>),
}

/// A transaction's control commands, answered on the connection.
fn transaction_control(conn: &mut Conn, name: &str, args: &Args) -> Option<Value> {
    let v = match name {
        "multi" if !args.is_empty() => wrong_args(name),
        "multi" if conn.multi.is_some() => {
            Value::err(ErrorCode::Err, "MULTI calls can not be nested")
        }
        "multi" => {
            conn.multi = Some(Transaction::default());
            Value::Ok
        }
        "discard" if conn.multi.is_none() => Value::err(ErrorCode::Err, "DISCARD without MULTI"),
        "discard" => {
            conn.multi = None;
            Value::Ok
        }
        "watch" if conn.multi.is_some() => {
            fail_transaction(conn);
            Value::err(ErrorCode::Err, "WATCH inside MULTI is not allowed")
        }
        "watch" => Value::err(
            ErrorCode::Err,
            "WATCH is not supported: spendb has no keys to watch; a RESERVE checks and holds \
             in one step, and MULTI/EXEC runs its commands with nothing in between",
        ),
        "unwatch" => Value::Ok,
        _ => return None,
    };
    Some(v)
}

fn fail_transaction(conn: &mut Conn) {
    if let Some(t) = &mut conn.multi {
        t.failed = true;
    }
}

/// A client's byte stream: a TCP connection or a Unix socket's.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// Serves one client until it leaves. `addr` is what CLIENT LIST shows
/// (`ip:port`, or Redis's `path:0` for a Unix socket).
pub async fn serve(mut stream: impl Stream, addr: String, ctx: Arc<ServerCtx>) {
    let id = ctx.next_client_id.fetch_add(1, Ordering::Relaxed);
    let entry = Arc::new(super::ClientEntry {
        id,
        addr: addr.clone(),
        connected: std::time::Instant::now(),
        who: Default::default(),
        commands: Default::default(),
        last_active_ms: Default::default(),
        killed: Default::default(),
        kill: Default::default(),
    });
    ctx.clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, entry.clone());
    let _registered = Registered(&ctx, id);
    let mut conn = Conn {
        id,
        proto: 2,
        name: None,
        authed: !ctx.auth.required(),
        user: None,
        addr,
        multi: None,
        entry,
    };
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut wbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut monitoring: Option<Monitor> = None;
    loop {
        if let Some(m) = monitoring.take() {
            return monitor(&mut stream, &ctx, &conn, m).await;
        }
        let mut slots = Vec::new();
        let mut cmds = Vec::new();
        // What each engine command is, for the metrics (the commands
        // themselves go to the engine).
        let mut kinds: Vec<Kind> = Vec::new();
        let mut close = false;
        while slots.len() < MAX_PIPELINE {
            match frame::parse(&rbuf, &ctx.limits) {
                Ok(Some(req)) => {
                    let inline = rbuf[0] != b'*';
                    let args: Vec<Cow<[u8]>> = req
                        .args
                        .iter()
                        .map(|r| frame::arg_bytes(&rbuf, r, inline))
                        .collect();
                    if !args.is_empty() {
                        conn.entry.commands.fetch_add(1, Ordering::Relaxed);
                        if ctx.monitoring.load(Ordering::Relaxed) > 0 {
                            monitor_line(&ctx, &conn, &args);
                        }
                        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
                        let spec = cmd::spendb_command(&name);
                        let before = slots.len();
                        let queuing = conn.multi.is_some()
                            && !matches!(
                                name.as_str(),
                                "exec" | "quit" | "reset" | "multi" | "discard" | "watch"
                            );
                        if let Some(v) = (conn.authed)
                            .then(|| transaction_control(&mut conn, &name, &args[1..]))
                            .flatten()
                        {
                            slots.push(Slot::Now(v));
                        } else if conn.authed && name == "monitor" && !queuing {
                            if conn.is_admin() {
                                // Subscribed before the OK is written: every
                                // command after it reaches this monitor.
                                monitoring = Some(Monitor::new(&ctx));
                                slots.push(Slot::Now(Value::Ok));
                                close = true; // read nothing more this round
                            } else {
                                slots.push(Slot::Now(Value::err(
                                    ErrorCode::NoPerm,
                                    "this user has no permissions to run MONITOR",
                                )));
                            }
                        } else if conn.authed && name == "save" && !queuing {
                            slots.push(Slot::Now(save(&ctx, &conn, &args[1..]).await));
                        } else if conn.authed && name == "exec" {
                            match exec(&mut conn, &args[1..], &mut cmds, &mut kinds) {
                                Ok(items) => slots.push(Slot::Exec(items)),
                                Err(e) => slots.push(Slot::Now(e)),
                            }
                        } else if queuing && !queueable(&name, spec) {
                            fail_transaction(&mut conn);
                            slots.push(Slot::Now(Value::err(
                                ErrorCode::Err,
                                format!(
                                    "{} is not allowed inside MULTI (a transaction holds PING, \
                                     ECHO, COUNT, TRUNCATE and the engine's commands)",
                                    name.to_ascii_uppercase()
                                ),
                            )));
                        } else if !conn.authed
                            && !matches!(name.as_str(), "auth" | "hello" | "quit" | "reset")
                        {
                            slots.push(Slot::Now(Value::err(
                                ErrorCode::NoAuth,
                                "Authentication required.",
                            )));
                        } else if spec.is_none() {
                            let (v, quit) = local(&mut conn, &ctx, &name, &args[1..]);
                            slots.push(Slot::Now(v));
                            close = quit;
                        } else if conn.user.as_ref().is_some_and(|u| !u.may_run(&name)) {
                            let msg =
                                format!("this user has no permissions to run the '{name}' command");
                            slots.push(Slot::Now(Value::err(ErrorCode::NoPerm, msg)));
                        } else if spec.is_some_and(|c| c.answered == Answered::Cache) {
                            let started = std::time::Instant::now();
                            let outcome = cache_cmd::run(
                                &ctx.cache,
                                &name,
                                &args[1..],
                                conn.user.as_ref().and_then(|u| u.access.as_deref()),
                            );
                            let us = started.elapsed().as_micros() as u64;
                            match outcome {
                                cache_cmd::Outcome::Reply(v) => {
                                    let m = &ctx.engine.stats.metrics;
                                    m.observe_latency(command_index(&name), us);
                                    slots.push(Slot::Now(v));
                                }
                                cache_cmd::Outcome::HitSaved(v, c) => {
                                    kinds.push(Kind {
                                        command: command_index(&name),
                                        before_engine_us: us,
                                    });
                                    cmds.push(c);
                                    slots.push(Slot::AfterEngine(v));
                                }
                            }
                        } else if spec.is_some_and(|c| c.answered == Answered::Tokens) {
                            let v = match name.as_str() {
                                "count" => count::count(&args[1..]).await,
                                _ => count::truncate(&args[1..]).await,
                            };
                            slots.push(Slot::Now(v));
                        } else {
                            let counted = match name.as_str() {
                                "reserve" => count::reserve_text(&args[1..]).await,
                                _ => None,
                            };
                            let parsed = match &counted {
                                None => cmd::parse(&name, &args[1..]),
                                Some(Ok(with_input)) => cmd::parse(&name, with_input),
                                Some(Err(e)) => Err(e.clone()),
                            };
                            match parsed {
                                Ok(c) => {
                                    kinds.push(Kind {
                                        command: command_index(&name),
                                        before_engine_us: 0,
                                    });
                                    cmds.push(c);
                                    slots.push(Slot::Engine);
                                }
                                Err(e) => slots.push(Slot::Now(e)),
                            }
                        }
                        if queuing && slots.len() > before {
                            queue(&mut conn, &mut slots, &mut cmds, &mut kinds);
                        }
                    }
                    rbuf.advance(req.len);
                    if close {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let v = match e {
                        FrameError::Protocol(m) => {
                            Value::err(ErrorCode::Err, format!("Protocol error: {m}"))
                        }
                        FrameError::TooBig(m) => Value::err(ErrorCode::TooBig, m),
                    };
                    slots.push(Slot::Now(v));
                    close = true;
                    break;
                }
            }
        }
        if !slots.is_empty() {
            let mut replies = if cmds.is_empty() {
                Vec::new()
            } else {
                let started = std::time::Instant::now();
                let r = ctx
                    .engine
                    .execute_slice_as(&cmds, conn.user.as_ref().and_then(|u| u.access.clone()))
                    .await;
                let elapsed = started.elapsed();
                let us = elapsed.as_micros() as u64;
                log_if_slow(&ctx, &conn, &cmds, elapsed);
                let m = &ctx.engine.stats.metrics;
                for (kind, outcome) in kinds.iter().zip(&r) {
                    m.count(outcome);
                    m.observe_latency(kind.command, kind.before_engine_us + us);
                }
                r
            }
            .into_iter();
            for s in &slots {
                match s {
                    Slot::Now(v) => encode(v, conn.proto, &mut wbuf),
                    Slot::Engine => encode(
                        &Value::from(replies.next().expect("one reply per command")),
                        conn.proto,
                        &mut wbuf,
                    ),
                    Slot::AfterEngine(v) => {
                        let booked = replies.next().expect("one reply per command");
                        if booked.is_refused() {
                            encode(&Value::from(booked), conn.proto, &mut wbuf)
                        } else {
                            encode(v, conn.proto, &mut wbuf)
                        }
                    }
                    Slot::Exec(items) => {
                        let all = items
                            .iter()
                            .map(|item| match item {
                                Some(v) => v.clone(),
                                None => Value::from(replies.next().expect("one reply per command")),
                            })
                            .collect();
                        encode(&Value::Array(all), conn.proto, &mut wbuf)
                    }
                }
            }
            match tokio::time::timeout(ctx.write_timeout, stream.write_all(&wbuf)).await {
                Ok(Ok(())) => {}
                _ => return, // gone, or not reading its replies
            }
            wbuf.clear();
            if close && monitoring.is_none() {
                return;
            }
            if monitoring.is_some() {
                continue;
            }
            continue; // more may already be buffered
        }
        if conn.entry.killed.load(Ordering::Relaxed) {
            return; // CLIENT KILL
        }
        let killed = conn.entry.kill.notified();
        let read = async {
            tokio::select! {
                r = stream.read_buf(&mut rbuf) => r,
                _ = killed => Ok(0),
            }
        };
        let n = match ctx.idle_timeout {
            Some(t) => match tokio::time::timeout(t, read).await {
                Ok(r) => r,
                Err(_) => return, // idle too long
            },
            None => read.await,
        };
        let since_connected = conn.entry.connected.elapsed().as_millis() as u64;
        (conn.entry.last_active_ms).store(since_connected, Ordering::Relaxed);
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Whether a command can be queued in a transaction: the engine's
/// commands, and those answered without reading anything it changes.
fn queueable(name: &str, spec: Option<&commands::CommandSpec>) -> bool {
    match spec {
        None => matches!(name, "ping" | "echo"),
        Some(c) => matches!(c.answered, Answered::Engine | Answered::Tokens),
    }
}

/// Inside MULTI: takes the request just handled back off this round (its
/// slot, and its command if it went to the engine) and queues it, answering
/// QUEUED; an error answers itself and fails the transaction.
fn queue(
    conn: &mut Conn,
    slots: &mut Vec<Slot>,
    cmds: &mut Vec<crate::state::Command>,
    kinds: &mut Vec<Kind>,
) {
    let Some(t) = conn.multi.as_mut() else {
        return; // RESET or QUIT ended it
    };
    let slot = slots.pop().expect("the request's slot");
    let item = match slot {
        Slot::Now(v) if v.is_error() => {
            t.failed = true;
            slots.push(Slot::Now(v));
            return;
        }
        Slot::Now(v) => Queued::Now(v),
        Slot::Engine => Queued::Engine(
            cmds.pop().expect("its command"),
            kinds.pop().expect("its kind"),
        ),
        Slot::AfterEngine(_) | Slot::Exec(_) => unreachable!("not queueable"),
    };
    if t.items.len() >= MAX_MULTI_QUEUE {
        t.failed = true;
        slots.push(Slot::Now(Value::err(
            ErrorCode::Err,
            format!("a transaction queues at most {MAX_MULTI_QUEUE} commands"),
        )));
        return;
    }
    t.items.push(item);
    slots.push(Slot::Now(Value::Status("QUEUED")));
}

/// EXEC: the queued engine commands join this round's batch, in order and
/// together; the reply is the array of every queued command's reply.
fn exec(
    conn: &mut Conn,
    args: &Args,
    cmds: &mut Vec<crate::state::Command>,
    kinds: &mut Vec<Kind>,
) -> Result<Vec<Option<Value>>, Value> {
    if !args.is_empty() {
        fail_transaction(conn);
        return Err(wrong_args("exec"));
    }
    let Some(t) = conn.multi.take() else {
        return Err(Value::err(ErrorCode::Err, "EXEC without MULTI"));
    };
    if t.failed {
        return Err(Value::err(
            ErrorCode::ExecAbort,
            "Transaction discarded because of previous errors.",
        ));
    }
    Ok(t.items
        .into_iter()
        .map(|q| match q {
            Queued::Now(v) => Some(v),
            Queued::Engine(c, kind) => {
                cmds.push(c);
                kinds.push(kind);
                None
            }
        })
        .collect())
}

/// Records the commands of an engine batch that took at least the slow
/// log's threshold: each with its name and what it was asked (the batch's
/// time is each one's: they were decided and made durable together).
fn log_if_slow(
    ctx: &ServerCtx,
    conn: &Conn,
    cmds: &[crate::state::Command],
    took: std::time::Duration,
) {
    if took < ctx.slowlog_threshold {
        return;
    }
    let mut log = ctx.slowlog.lock().unwrap_or_else(|e| e.into_inner());
    if log.max_len == 0 {
        return;
    }
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for c in cmds.iter().take(log.max_len) {
        let mut what = format!("{c:?}");
        if what.len() > super::LOGGED_ARG_BYTES {
            let cut = (0..=super::LOGGED_ARG_BYTES)
                .rev()
                .find(|&i| what.is_char_boundary(i))
                .unwrap_or(0);
            what.truncate(cut);
            what.push_str("...");
        }
        log.push(super::SlowEntry {
            id: 0,
            at,
            micros: took.as_micros() as u64,
            args: vec![c.name().to_ascii_uppercase(), what],
            addr: conn.addr.clone(),
            name: conn.name.clone().unwrap_or_default(),
        });
    }
}

/// What MONITOR shows of a request: `+<unix s>.<µs> [0 <addr>] "arg" …`.
fn monitor_line(ctx: &ServerCtx, conn: &Conn, args: &[Cow<[u8]>]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut line = format!(
        "{}.{:06} [0 {}]",
        now.as_secs(),
        now.subsec_micros(),
        conn.addr
    );
    for a in super::logged_args(args) {
        line.push_str(&format!(" {a:?}"));
    }
    let _ = ctx.monitors.send(line.into());
}

/// A subscription to MONITOR's stream, counted in `ServerCtx::monitoring`
/// (which every request reads) for as long as it lives.
struct Monitor<'a> {
    rx: tokio::sync::broadcast::Receiver<Arc<str>>,
    count: &'a AtomicU64,
}

impl<'a> Monitor<'a> {
    fn new(ctx: &'a ServerCtx) -> Monitor<'a> {
        let rx = ctx.monitors.subscribe();
        ctx.monitoring.fetch_add(1, Ordering::Relaxed);
        Monitor {
            rx,
            count: &ctx.monitoring,
        }
    }
}

impl Drop for Monitor<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// MONITOR: streams every command the server receives, until the client
/// sends QUIT or RESET, goes away, or is killed. A monitor that cannot keep
/// up loses lines (it is told how many), never slows the others.
async fn monitor(stream: &mut impl Stream, ctx: &ServerCtx, conn: &Conn, mut m: Monitor<'_>) {
    use tokio::sync::broadcast::error::RecvError;
    let rx = &mut m.rx;
    let mut input = BytesMut::with_capacity(1024);
    loop {
        let out = tokio::select! {
            msg = rx.recv() => match msg {
                Ok(line) => format!("+{line}\r\n"),
                Err(RecvError::Lagged(n)) => format!("+(monitor fell behind: {n} lines dropped)\r\n"),
                Err(RecvError::Closed) => return,
            },
            r = stream.read_buf(&mut input) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&input).to_ascii_lowercase();
                    if text.contains("quit") || text.contains("reset") {
                        let _ = stream.write_all(b"+OK\r\n").await;
                        return;
                    }
                    input.clear();
                    continue;
                }
            },
            _ = conn.entry.kill.notified() => return,
        };
        match tokio::time::timeout(ctx.write_timeout, stream.write_all(out.as_bytes())).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// SAVE: a snapshot now, answered once it is stored (admin only). The
/// ledger is the data and is already durable; a snapshot only shortens
/// the next start's replay.
async fn save(ctx: &ServerCtx, conn: &Conn, args: &Args<'_>) -> Value {
    if !conn.is_admin() {
        return Value::err(
            ErrorCode::NoPerm,
            "this user has no permissions to run SAVE",
        );
    }
    if !args.is_empty() {
        return wrong_args("save");
    }
    let before = ctx.engine.snapshot_now();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while ctx.engine.stats.snapshots_saved.load(Ordering::Acquire) == before {
        if std::time::Instant::now() > deadline {
            return Value::err(
                ErrorCode::Err,
                "the snapshot was not stored within 2 minutes (see the server log)",
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Value::Ok
}

/// SLOWLOG GET [n] | LEN | RESET (admin only).
fn slowlog(conn: &Conn, ctx: &ServerCtx, args: &Args) -> Value {
    if !conn.is_admin() {
        return Value::err(
            ErrorCode::NoPerm,
            "this user has no permissions to run SLOWLOG",
        );
    }
    let mut log = ctx.slowlog.lock().unwrap_or_else(|e| e.into_inner());
    match args.first().map(|a| word(a)).as_deref() {
        Some("LEN") if args.len() == 1 => Value::Int(log.entries.len() as i64),
        Some("RESET") if args.len() == 1 => {
            log.entries.clear();
            Value::Ok
        }
        Some("GET") if args.len() <= 2 => {
            let n = match args.get(1) {
                None => 10,
                Some(a) => match std::str::from_utf8(a)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    Some(n) if n < 0 => usize::MAX,
                    Some(n) => n as usize,
                    None => return Value::err(ErrorCode::Err, "count should be an integer"),
                },
            };
            Value::Array(
                log.entries
                    .iter()
                    .take(n)
                    .map(|e| {
                        Value::Array(vec![
                            Value::Int(e.id as i64),
                            Value::Int(e.at as i64),
                            Value::Int(e.micros as i64),
                            Value::Array(e.args.iter().map(|a| Value::Str(a.clone())).collect()),
                            Value::Str(e.addr.clone()),
                            Value::Str(e.name.clone()),
                        ])
                    })
                    .collect(),
            )
        }
        _ => Value::err(ErrorCode::Err, "SLOWLOG takes GET [count], LEN or RESET"),
    }
}

/// Position of a command in the table (spendb's commands only reach here).
fn command_index(name: &str) -> usize {
    commands::index(name).expect("a command of the table")
}

fn word(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn wrong_args(name: &str) -> Value {
    Value::err(
        ErrorCode::Err,
        format!("wrong number of arguments for '{name}' command"),
    )
}

/// Connection and server commands. Returns the reply and whether to close.
fn local(conn: &mut Conn, ctx: &ServerCtx, name: &str, args: &Args) -> (Value, bool) {
    let v = match name {
        "ping" => match args.len() {
            0 => Value::Status("PONG"),
            1 => Value::Bulk(args[0].to_vec()),
            _ => wrong_args(name),
        },
        "echo" if args.len() == 1 => Value::Bulk(args[0].to_vec()),
        "echo" => wrong_args(name),
        "quit" => return (Value::Ok, true),
        "shutdown" => {
            if !conn.is_admin() {
                return (
                    Value::err(
                        ErrorCode::NoPerm,
                        "this user has no permissions to run the 'shutdown' command",
                    ),
                    false,
                );
            }
            // The ledger is the data and a last snapshot is written either
            // way: SAVE and NOSAVE both stop cleanly, as SIGTERM does.
            let flags_ok = args
                .iter()
                .all(|a| matches!(word(a).as_str(), "SAVE" | "NOSAVE" | "NOW" | "FORCE"));
            if !flags_ok {
                return (Value::err(ErrorCode::Err, "syntax error"), false);
            }
            tracing::info!("SHUTDOWN from client {} ({})", conn.id, conn.addr);
            ctx.shutdown.notify_one();
            return (Value::Ok, true);
        }
        "hello" => hello(conn, ctx, args),
        "auth" => match args.len() {
            1 | 2 => auth(
                conn,
                ctx,
                (args.len() == 2).then(|| &args[0][..]),
                &args[args.len() - 1],
            ),
            _ => wrong_args(name),
        },
        "reset" => {
            conn.multi = None;
            conn.proto = 2;
            conn.name = None;
            conn.authed = !ctx.auth.required();
            conn.user = None;
            conn.publish();
            Value::Status("RESET")
        }
        "dbsize" => Value::Int(ctx.engine.stats.open_holds.load(Ordering::Relaxed) as i64),
        "time" => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Value::Array(vec![
                Value::Str(now.as_secs().to_string()),
                Value::Str(now.subsec_micros().to_string()),
            ])
        }
        "select" => match args.first().map(|a| &a[..]) {
            Some(b"0") if args.len() == 1 => Value::Ok,
            Some(_) if args.len() == 1 => Value::err(
                ErrorCode::Err,
                "DB index is out of range (spendb has only database 0)",
            ),
            _ => wrong_args(name),
        },
        "client" => client(conn, ctx, args),
        "slowlog" => slowlog(conn, ctx, args),
        "bgsave" if !conn.is_admin() => Value::err(
            ErrorCode::NoPerm,
            "this user has no permissions to run BGSAVE",
        ),
        "bgsave" if args.len() > 1 => wrong_args(name),
        "bgsave" => {
            ctx.engine.snapshot_now();
            Value::Status("Background saving started")
        }
        "lastsave" if args.is_empty() => {
            Value::Int(ctx.engine.stats.last_snapshot_at.load(Ordering::Relaxed) as i64)
        }
        "lastsave" => wrong_args(name),
        "command" => command(args),
        "info" => Value::Str(info(ctx, conn, args)),
        "config" => match args.first().map(|a| word(a)).as_deref() {
            Some("GET") if args.len() == 2 => {
                // redis-benchmark asks for save and appendonly at start.
                let key = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
                config_get(ctx, &key)
            }
            _ => Value::err(ErrorCode::Err, "spendb supports only CONFIG GET"),
        },
        _ => Value::err(ErrorCode::Err, format!("unknown command '{name}'")),
    };
    (v, false)
}

fn auth(conn: &mut Conn, ctx: &ServerCtx, user: Option<&[u8]>, password: &[u8]) -> Value {
    if !ctx.auth.required() {
        return Value::err(
            ErrorCode::Err,
            "AUTH <password> called without any password configured for the default user",
        );
    }
    if let Some(grant) = ctx.auth.check(user, password) {
        conn.authed = true;
        conn.user = grant;
        conn.publish();
        Value::Ok
    } else {
        Value::err(
            ErrorCode::WrongPass,
            "invalid username-password pair or user is disabled.",
        )
    }
}

fn hello(conn: &mut Conn, ctx: &ServerCtx, args: &Args) -> Value {
    let mut proto = conn.proto;
    let mut i = 0;
    if let Some(v) = args.first() {
        match &v[..] {
            b"2" => proto = 2,
            b"3" => proto = 3,
            _ => return Value::err(ErrorCode::NoProto, "unsupported protocol version"),
        }
        i = 1;
    }
    let mut setname = None;
    while i < args.len() {
        match word(&args[i]).as_str() {
            "AUTH" if args.len() >= i + 3 => {
                let v = auth(conn, ctx, Some(&args[i + 1]), &args[i + 2]);
                if v.is_error() {
                    return v;
                }
                i += 3;
            }
            "SETNAME" if args.len() > i + 1 => {
                setname = Some(String::from_utf8_lossy(&args[i + 1]).into_owned());
                i += 2;
            }
            _ => return Value::err(ErrorCode::Err, "syntax error in HELLO"),
        }
    }
    if !conn.authed {
        return Value::err(
            ErrorCode::NoAuth,
            "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        );
    }
    conn.proto = proto;
    if setname.is_some() {
        conn.name = setname;
    }
    conn.publish();
    Value::Map(vec![
        ("server", Value::str("spendb")),
        ("version", Value::str(env!("CARGO_PKG_VERSION"))),
        ("proto", Value::Int(conn.proto as i64)),
        ("id", Value::Int(conn.id as i64)),
        ("mode", Value::str("standalone")),
        ("role", Value::str("master")),
        ("modules", Value::Array(vec![])),
    ])
}

/// CLIENT KILL <addr> (OK, or an error when no such client), or the filter
/// form CLIENT KILL ID <id> | ADDR <addr> | USER <user> … (how many).
fn client_kill(ctx: &ServerCtx, args: &Args) -> Value {
    let text = |a: &[u8]| String::from_utf8_lossy(a).into_owned();
    let filters: Vec<(String, String)> = match args.len() {
        1 => vec![("ADDR".into(), text(&args[0]))],
        n if n >= 2 && n % 2 == 0 => args.chunks(2).map(|p| (word(&p[0]), text(&p[1]))).collect(),
        _ => return Value::err(ErrorCode::Err, "syntax error"),
    };
    if let Some((k, _)) = filters
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "ID" | "ADDR" | "USER"))
    {
        return Value::err(
            ErrorCode::Err,
            format!("CLIENT KILL takes ID, ADDR or USER, not {k}"),
        );
    }
    let clients = ctx.client_entries();
    let mut killed = 0;
    for e in clients {
        let user = e.who.lock().unwrap_or_else(|p| p.into_inner()).1.clone();
        let matches = filters.iter().all(|(k, v)| match k.as_str() {
            "ID" => e.id.to_string() == *v,
            "ADDR" => e.addr == *v,
            _ => user.as_deref().unwrap_or("default") == v,
        });
        if matches {
            e.killed.store(true, Ordering::Relaxed);
            e.kill.notify_one();
            killed += 1;
        }
    }
    match (args.len(), killed) {
        (1, 0) => Value::err(ErrorCode::Err, "No such client"),
        (1, _) => Value::Ok,
        _ => Value::Int(killed),
    }
}

/// One connection's CLIENT LIST line: Redis's fields, and spendb's own
/// (`scopes`: the user's scope prefixes, `cmds`: requests it sent).
fn client_line(e: &super::ClientEntry, proto: Option<u8>) -> String {
    let (name, user, scopes) = e.who.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let age_ms = e.connected.elapsed().as_millis() as u64;
    let idle = age_ms.saturating_sub(e.last_active_ms.load(Ordering::Relaxed)) / 1000;
    let resp = proto.map_or(String::new(), |p| format!(" resp={p}"));
    format!(
        "id={} addr={} name={} age={} idle={idle} user={} scopes={} cmds={}{resp}\n",
        e.id,
        e.addr,
        name.unwrap_or_default(),
        e.connected.elapsed().as_secs(),
        user.unwrap_or_else(|| "default".into()),
        if scopes.is_empty() {
            "*".into()
        } else {
            scopes.join(",")
        },
        e.commands.load(Ordering::Relaxed),
    )
}

fn client(conn: &mut Conn, ctx: &ServerCtx, args: &Args) -> Value {
    let Some(sub) = args.first().map(|a| word(a)) else {
        return wrong_args("client");
    };
    let no_perm = || {
        Value::err(
            ErrorCode::NoPerm,
            format!("this user has no permissions to run CLIENT {sub}"),
        )
    };
    match sub.as_str() {
        "SETNAME" if args.len() == 2 => {
            conn.name = Some(String::from_utf8_lossy(&args[1]).into_owned());
            conn.publish();
            Value::Ok
        }
        "GETNAME" => conn.name.clone().map_or(Value::Null, Value::Str),
        "ID" => Value::Int(conn.id as i64),
        "INFO" => Value::Str(client_line(&conn.entry, Some(conn.proto))),
        "LIST" if !conn.is_admin() => no_perm(),
        "LIST" => {
            let all = ctx.client_entries();
            Value::Str(all.iter().map(|e| client_line(e, None)).collect())
        }
        "KILL" if !conn.is_admin() => no_perm(),
        "KILL" => client_kill(ctx, &args[1..]),
        "SETINFO" => Value::Ok,
        _ => Value::err(
            ErrorCode::Err,
            format!("unknown subcommand '{sub}' for CLIENT"),
        ),
    }
}

fn command(args: &Args) -> Value {
    match args.first().map(|a| word(a)).as_deref() {
        None | Some("INFO") => Value::Array(
            commands::resp_commands()
                .map(|c| {
                    let flag = if c.write { "write" } else { "readonly" };
                    let key = if c.arity == 1 { 0 } else { 1 };
                    Value::Array(vec![
                        Value::str(c.name),
                        Value::Int(c.arity),
                        Value::Array(vec![Value::str(flag)]),
                        Value::Int(key),
                        Value::Int(key),
                        Value::Int(key),
                    ])
                })
                .collect(),
        ),
        Some("COUNT") => Value::Int(commands::resp_commands().count() as i64),
        Some("DOCS") => {
            let names: Vec<String> = args[1..]
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            super::docs::command_docs(&names)
        }
        Some(s) => Value::err(
            ErrorCode::Err,
            format!("unknown subcommand '{s}' for COMMAND"),
        ),
    }
}

/// INFO: the requested sections (all when none, `all`, `default` or
/// `everything` is asked), in Redis's `# Section` / `key:value` format.
/// CONFIG GET: the main settings under their Redis names where Redis has
/// one (`*` and `?` globs as Redis takes them).
fn config_get(ctx: &ServerCtx, pattern: &str) -> Value {
    let fsync = matches!(ctx.durability, crate::engine::Durability::Fsync);
    let settings: [(&str, String); 8] = [
        ("port", ctx.port.to_string()),
        ("maxclients", ctx.max_connections.to_string()),
        (
            "timeout",
            ctx.idle_timeout.map_or(0, |t| t.as_secs()).to_string(),
        ),
        ("proto-max-bulk-len", ctx.limits.max_bulk.to_string()),
        // What redis-benchmark asks at start; spendb's ledger is always on.
        ("save", String::new()),
        ("appendonly", "no".into()),
        (
            "appendfsync",
            if fsync { "always" } else { "everysec" }.into(),
        ),
        (
            "durability",
            format!("{:?}", ctx.durability).to_ascii_lowercase(),
        ),
    ];
    let mut out = Vec::new();
    for (k, v) in settings {
        if glob(pattern.as_bytes(), k.as_bytes()) {
            out.push(Value::str(k));
            out.push(Value::Str(v));
        }
    }
    Value::Array(out)
}

/// Redis-style glob: `*` any run, `?` any one byte, the rest literal.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

/// Bytes as Redis prints them (`1.50M`).
fn human_bytes(n: u64) -> String {
    let units = [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (u, size) in units {
        if n >= size {
            return format!("{:.2}{u}", n as f64 / size as f64);
        }
    }
    format!("{n}B")
}

fn info(ctx: &ServerCtx, conn: &Conn, args: &Args) -> String {
    let s = &ctx.engine.stats;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let memory = super::resident_bytes();
    let sections: [(&str, Vec<(&str, String)>); 6] = [
        (
            "Server",
            vec![
                ("redis_version", "7.0.0".into()),
                ("spendb_version", env!("CARGO_PKG_VERSION").into()),
                ("redis_mode", "standalone".into()),
                ("process_id", std::process::id().to_string()),
                ("tcp_port", ctx.port.to_string()),
                (
                    "uptime_in_seconds",
                    ctx.started.elapsed().as_secs().to_string(),
                ),
                // The threads serving the protocol (`--workers`).
                (
                    "io_threads_active",
                    tokio::runtime::Handle::try_current()
                        .map_or(0, |h| h.metrics().num_workers())
                        .to_string(),
                ),
            ],
        ),
        (
            "Clients",
            vec![
                (
                    "connected_clients",
                    ctx.connections.load(Ordering::Relaxed).to_string(),
                ),
                ("maxclients", ctx.max_connections.to_string()),
                ("blocked_clients", "0".into()),
                ("client_proto", conn.proto.to_string()),
            ],
        ),
        (
            "Memory",
            vec![
                ("used_memory", memory.to_string()),
                ("used_memory_human", human_bytes(memory)),
                ("used_memory_rss", memory.to_string()),
            ],
        ),
        (
            "Persistence",
            vec![
                (
                    "durability",
                    format!("{:?}", ctx.durability).to_ascii_lowercase(),
                ),
                ("ledger_last_seq", l(&s.last_seq).to_string()),
                ("ledger_syncs", l(&s.syncs).to_string()),
                ("ledger_write_errors", l(&s.write_errors).to_string()),
                (
                    "writes_refused",
                    (s.degraded.load(Ordering::Relaxed) as u8).to_string(),
                ),
            ],
        ),
        (
            "Stats",
            vec![
                ("total_commands_processed", l(&s.commands).to_string()),
                (
                    "total_connections_received",
                    (ctx.next_client_id.load(Ordering::Relaxed) - 1).to_string(),
                ),
                (
                    "instantaneous_ops_per_sec",
                    ctx.ops_per_sec(l(&s.commands)).to_string(),
                ),
                ("group_commits", l(&s.batches).to_string()),
                ("ledger_entries_written", l(&s.entries).to_string()),
                ("open_holds", l(&s.open_holds).to_string()),
            ],
        ),
        // What DBSIZE counts: open holds, each with an expiry.
        (
            "Keyspace",
            vec![(
                "db0",
                format!("keys={0},expires={0},avg_ttl=0", l(&s.open_holds)),
            )],
        ),
    ];
    let wanted: Vec<String> = args
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| matches!(w.as_str(), "all" | "default" | "everything"));
    let mut out = String::new();
    for (name, fields) in sections {
        if !all && !wanted.iter().any(|w| w.eq_ignore_ascii_case(name)) {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        out.push_str(&format!("# {name}\r\n"));
        for (k, v) in fields {
            out.push_str(&format!("{k}:{v}\r\n"));
        }
    }
    out
}
