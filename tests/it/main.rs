//! spendb's integration tests, one crate so `cargo test` links the library
//! once: each module is one area (the file names say which), all sharing the
//! harness in `common` (the real binary on a free port, temp dirs, clients).
//! Run one area with `cargo test --test it <module>::`.

mod common;

mod admin;
mod alerts;
mod architecture;
mod archive;
mod auth;
mod bench;
mod cache;
mod cluster_alerts;
mod cluster_books;
mod cluster_etcd;
mod cluster_nodes;
mod cluster_sim;
mod cluster_view;
mod compat;
mod crash;
mod edges;
mod embedded;
mod engine;
mod fuzz;
mod limits;
mod log_store;
mod loop_guard;
mod model;
mod operators;
mod rollups;
mod runs;
mod semantic;
mod server;
mod ship;
mod sidecar;
mod sim;
mod tenants;
mod tokens;
mod transactions;
mod verify;
mod zones;
