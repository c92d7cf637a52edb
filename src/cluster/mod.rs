//! Cluster mode (issue #15, in progress): one budget shared by many spendb
//! nodes through a linearizable global store (etcd), by escrow grants with
//! leases. See docs/CLUSTER.md.
//!
//! - `kv.rs` — the store as a trait (`GlobalStore`: etcd's get, range,
//!   guarded transactions and leases) and `MemStore`, the in-memory
//!   linearizable store the simulation runs on;
//! - `escrow.rs` — the protocol: pools and grants, a node's local decisions
//!   and its refill / report / give-back / register transactions, and the
//!   reclaim of a dead node's grant;
//! - `etcd.rs` — `GlobalStore` on a real etcd, through its JSON API.
//!
//! Not wired to the engine yet: the protocol is checked by the
//! deterministic simulation (`tests/it/cluster_sim.rs`) and against a real
//! three-member etcd (`tests/it/cluster_etcd.rs`).

pub mod agent;
pub mod escrow;
pub mod etcd;
pub mod kv;
