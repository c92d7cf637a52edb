//! Cluster mode (issue #15): one budget shared by many spendb nodes through
//! a linearizable global store (etcd), by escrow grants with leases. See
//! docs/CLUSTER.md.
//!
//! - `kv.rs` — the store as a trait (`GlobalStore`: etcd's get, range,
//!   guarded transactions and leases) and `MemStore`, the in-memory
//!   linearizable store the simulation runs on;
//! - `escrow.rs` — the protocol: pools and grants, a node's transactions
//!   (refill, report, give back, declare, register and settle) and the
//!   reclaim of a dead node's grant;
//! - `rolling.rs` — rolling windows' pools: room charged to a period of
//!   the window, counting until it ages out;
//! - `agent.rs` — what a node does with the store each round and when a
//!   RESERVE is short, over the engine seen as the `Local` trait;
//! - `etcd.rs` — `GlobalStore` on a real etcd, through its JSON API.
//!
//! The agent's thread and its links to the engine are `crate::node`'s; the
//! rules a RESERVE keeps on a node's grants are the state's
//! (`state/grant.rs`).

pub mod agent;
pub mod alerts;
pub mod escrow;
pub mod etcd;
pub mod kv;
pub mod rolling;
