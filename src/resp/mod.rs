//! The Redis-protocol front end: `frame` finds requests in bytes, `cmd`
//! turns spendb's commands into [`crate::state::Command`]s, `encode` turns
//! replies into RESP2/RESP3, `connection` runs one client. Front ends hold no
//! rules.

pub mod auth;
pub mod cmd;
pub mod connection;
pub mod encode;
pub mod frame;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;

use crate::engine::{Durability, EngineHandle};
use frame::FrameLimits;

/// What every connection shares.
pub struct ServerCtx {
    pub engine: EngineHandle,
    pub limits: FrameLimits,
    pub next_client_id: AtomicU64,
    pub connections: AtomicU64,
    pub started: Instant,
    pub port: u16,
    pub durability: Durability,
    pub auth: auth::Auth,
}

/// Accepts connections until the task is dropped.
pub async fn run(listener: TcpListener, ctx: Arc<ServerCtx>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            ctx.connections.fetch_add(1, Ordering::Relaxed);
            connection::serve(stream, ctx.clone()).await;
            ctx.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
