//! spendb embedded in a Rust agent: no server, no socket. Opens a data dir,
//! sets a budget, and runs a few model calls through RESERVE / COMMIT, one
//! of them denied; the ledger it writes is the server's (serve it later
//! with `spendb serve --data-dir <dir>`, check it with `spendb ledger verify`).
//!
//! Run: `cargo run --example embedded [data dir]` (default: a temp dir).

use spendb::embedded::{Options, Reservation, Spendb};
use spendb::state::limit::{Dim, LimitSpec};
use spendb::state::money::format_signed_usd;
use spendb::state::price::Usage;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let db = Spendb::open(&dir, Options::default())?;
    db.budget_set(
        "org:demo",
        &[
            LimitSpec::from_words("TOKENS", "20000", "PER", "DAY")?,
            LimitSpec::from_words("COST", "0.05", "PER", "DAY")?,
        ],
    )?;
    for call in 0..5 {
        let hold = format!("demo-call-{call}");
        match db.reserve(&hold, "org:demo/agent:planner", "gpt-4o", 3000, 1000)? {
            Reservation::Granted(g) => {
                // ... the model call would run here ...
                let used = Usage {
                    input: 3000,
                    output: 400 + 100 * call,
                    ..Usage::default()
                };
                let c = db.commit(&hold, used)?;
                println!(
                    "{hold}: held {} tokens, used {}, {} back to the budget",
                    g.tokens, c.tokens, c.released_tokens
                );
            }
            Reservation::Denied(d) => {
                let left = match d.limit.dim {
                    Dim::Cost => format!("${}", format_signed_usd(d.remaining)),
                    _ => d.remaining.to_string(),
                };
                println!(
                    "{hold}: denied by {} {} ({left} left)",
                    d.scope,
                    d.limit.dim.name()
                )
            }
        }
    }
    println!("ledger at {}", dir.display());
    db.close()?;
    Ok(())
}
