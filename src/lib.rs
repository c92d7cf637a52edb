//! spendb: a spend database for LLM agents, as a server (`spendb serve`:
//! the Redis protocol in `resp`, the HTTP admin API in `admin`) or embedded
//! ([`Spendb`]). Layers: `state` (the rules, pure) under `engine` (the one
//! owner of state and `store`) under the front ends. See docs/ARCHITECTURE.md.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod embedded;
pub mod engine;
pub mod metrics;
pub mod node;
pub mod resp;
pub mod state;
pub mod store;
pub mod tokens;
pub mod webhook;
pub use embedded::{Options, Spendb};
