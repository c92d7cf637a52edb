//! spendb: a spend database server for LLM agents. See docs/ARCHITECTURE.md.

pub mod state;
