//! The formats spendb writes to disk and publishes, as their own versioned
//! types, converted from and to the state's types. The state machine's types
//! carry no serde of their own: renaming a field or reordering a variant in
//! `src/state/` cannot change a byte of the ledger or a snapshot, or a field
//! of `/v1/ledger` and `spendb ledger export`. A change of format is a new
//! version here, and readers keep reading the old ones (or refuse them by
//! number, never misread them).
//!
//! - `ledger`: a ledger entry, version 1 (bincode 2, inside the CRC frame
//!   of `frame.rs`); its JSON view for `/v1/ledger` and `ledger export`.
//! - `snapshot`: the state at a ledger position, layout 3.
//! - `rollup`: the reports' rollups at a ledger position, version 1.
//! - `chunk`: what `--archive` ships: ledger chunks (version 1) and the
//!   manifest of a node's part of the bucket (JSON, version 1).

pub mod chunk;
pub mod ledger;
pub mod rollup;
pub mod snapshot;
