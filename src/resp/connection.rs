//! One client connection: read bytes, frame every complete request in the
//! buffer, send the engine's commands as one batch, then write all replies,
//! in request order, with one write. Connection-level commands (PING, HELLO,
//! CLIENT, INFO, …) are answered here.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::cmd::{self, Args};
use super::encode::encode;
use super::frame::{self, FrameError};
use super::ServerCtx;
use crate::state::Value;

/// Most requests taken from the buffer before replying.
const MAX_PIPELINE: usize = 4096;

struct Conn {
    id: u64,
    proto: u8,
    name: Option<String>,
}

enum Slot {
    Now(Value),
    Engine,
}

pub async fn serve(mut stream: TcpStream, ctx: Arc<ServerCtx>) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        id: ctx.next_client_id.fetch_add(1, Ordering::Relaxed),
        proto: 2,
        name: None,
    };
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut wbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        let mut slots = Vec::new();
        let mut cmds = Vec::new();
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
                        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
                        if cmd::is_engine_command(&name) {
                            match cmd::parse(&name, &args[1..]) {
                                Ok(c) => {
                                    cmds.push(c);
                                    slots.push(Slot::Engine);
                                }
                                Err(e) => slots.push(Slot::Now(e)),
                            }
                        } else {
                            let (v, quit) = local(&mut conn, &ctx, &name, &args[1..]);
                            slots.push(Slot::Now(v));
                            close = quit;
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
                            Value::err("ERR", format!("Protocol error: {m}"))
                        }
                        FrameError::TooBig(m) => Value::err("TOOBIG", m),
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
                ctx.engine.execute(cmds).await
            }
            .into_iter();
            for s in &slots {
                match s {
                    Slot::Now(v) => encode(v, conn.proto, &mut wbuf),
                    Slot::Engine => encode(
                        &replies.next().expect("one reply per command"),
                        conn.proto,
                        &mut wbuf,
                    ),
                }
            }
            if stream.write_all(&wbuf).await.is_err() {
                return;
            }
            wbuf.clear();
            if close {
                return;
            }
            continue; // more may already be buffered
        }
        match stream.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn word(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

fn wrong_args(name: &str) -> Value {
    Value::err(
        "ERR",
        format!("wrong number of arguments for '{name}' command"),
    )
}

/// Connection and server commands. Returns the reply and whether to close.
fn local(conn: &mut Conn, ctx: &ServerCtx, name: &str, args: &Args) -> (Value, bool) {
    let v = match name {
        "ping" => match args.len() {
            0 => Value::Status("PONG"),
            1 => Value::Str(String::from_utf8_lossy(&args[0]).into_owned()),
            _ => wrong_args(name),
        },
        "echo" if args.len() == 1 => Value::Str(String::from_utf8_lossy(&args[0]).into_owned()),
        "echo" => wrong_args(name),
        "quit" => return (Value::Ok, true),
        "hello" => hello(conn, args),
        "auth" => Value::err(
            "ERR",
            "AUTH <password> called without any password configured for the default user",
        ),
        "select" => match args.first().map(|a| &a[..]) {
            Some(b"0") if args.len() == 1 => Value::Ok,
            Some(_) if args.len() == 1 => Value::err(
                "ERR",
                "DB index is out of range (spendb has only database 0)",
            ),
            _ => wrong_args(name),
        },
        "client" => client(conn, args),
        "command" => command(args),
        "info" => Value::Str(info(ctx, conn)),
        "config" => match args.first().map(|a| word(a)).as_deref() {
            Some("GET") if args.len() == 2 => {
                // redis-benchmark asks for save and appendonly at start.
                let key = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
                match key.as_str() {
                    "save" => Value::Array(vec![Value::str("save"), Value::str("")]),
                    "appendonly" => Value::Array(vec![Value::str("appendonly"), Value::str("no")]),
                    _ => Value::Array(vec![]),
                }
            }
            _ => Value::err("ERR", "spendb supports only CONFIG GET"),
        },
        _ => Value::err("ERR", format!("unknown command '{name}'")),
    };
    (v, false)
}

fn hello(conn: &mut Conn, args: &Args) -> Value {
    let mut i = 0;
    if let Some(v) = args.first() {
        match &v[..] {
            b"2" => conn.proto = 2,
            b"3" => conn.proto = 3,
            _ => return Value::err("NOPROTO", "unsupported protocol version"),
        }
        i = 1;
    }
    while i < args.len() {
        match word(&args[i]).as_str() {
            "AUTH" if args.len() >= i + 3 => {
                return Value::err(
                    "ERR",
                    "AUTH called without any password configured for the default user",
                );
            }
            "SETNAME" if args.len() > i + 1 => {
                conn.name = Some(String::from_utf8_lossy(&args[i + 1]).into_owned());
                i += 2;
            }
            _ => return Value::err("ERR", "syntax error in HELLO"),
        }
    }
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

fn client(conn: &mut Conn, args: &Args) -> Value {
    let Some(sub) = args.first().map(|a| word(a)) else {
        return wrong_args("client");
    };
    match sub.as_str() {
        "SETNAME" if args.len() == 2 => {
            conn.name = Some(String::from_utf8_lossy(&args[1]).into_owned());
            Value::Ok
        }
        "GETNAME" => conn.name.clone().map_or(Value::Null, Value::Str),
        "ID" => Value::Int(conn.id as i64),
        "SETINFO" => Value::Ok,
        _ => Value::err("ERR", format!("unknown subcommand '{sub}' for CLIENT")),
    }
}

fn command(args: &Args) -> Value {
    match args.first().map(|a| word(a)).as_deref() {
        None | Some("INFO") => Value::Array(
            cmd::COMMANDS
                .iter()
                .map(|c| {
                    Value::Array(vec![
                        Value::str(c.0),
                        Value::Int(c.1),
                        Value::Array(vec![Value::str(c.2)]),
                        Value::Int(if c.1 == 1 { 0 } else { 1 }),
                        Value::Int(if c.1 == 1 { 0 } else { 1 }),
                        Value::Int(if c.1 == 1 { 0 } else { 1 }),
                    ])
                })
                .collect(),
        ),
        Some("COUNT") => Value::Int(cmd::COMMANDS.len() as i64),
        Some("DOCS") => Value::Array(vec![]),
        Some(s) => Value::err("ERR", format!("unknown subcommand '{s}' for COMMAND")),
    }
}

fn info(ctx: &ServerCtx, conn: &Conn) -> String {
    let s = &ctx.engine.stats;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "# Server\r\nredis_version:7.0.0\r\nspendb_version:{}\r\nredis_mode:standalone\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n\
         # Clients\r\nconnected_clients:{}\r\nclient_proto:{}\r\n\r\n\
         # Persistence\r\ndurability:{:?}\r\nledger_last_seq:{}\r\nsyncs:{}\r\nwrite_errors:{}\r\n\r\n\
         # Stats\r\ntotal_commands_processed:{}\r\ngroup_commits:{}\r\nledger_entries_written:{}\r\nopen_holds:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        ctx.port,
        ctx.started.elapsed().as_secs(),
        ctx.connections.load(Ordering::Relaxed),
        conn.proto,
        ctx.durability,
        l(&s.last_seq),
        l(&s.syncs),
        l(&s.write_errors),
        l(&s.commands),
        l(&s.batches),
        l(&s.entries),
        l(&s.open_holds),
    )
}
