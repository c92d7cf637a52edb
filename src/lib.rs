//! spendb: a spend database server for LLM agents. See docs/ARCHITECTURE.md.

pub mod admin;
pub mod auth;
pub mod embedded;
pub mod engine;
pub mod metrics;
pub mod resp;
pub mod state;
pub mod store;
pub mod tokens;
pub mod webhook;
pub use embedded::{Options, Spendb};
