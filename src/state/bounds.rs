//! The documented maximum of every amount, name and id a command can carry
//! (docs/PROTOCOL.md, "Limits on input"). Front ends refuse larger values
//! when they parse; the state machine checks them again (an embedded caller
//! or the admin API may build a `Command` directly), so no input can reach
//! `apply_entry` that makes a figure overflow.
//!
//! The numbers are far above any real call and chosen so that every sum the
//! state keeps stays below [`MAX_COUNTER`] for as long as a ledger can
//! plausibly run, and any that would not is refused before anything changes.

use super::money::{Nanos, NANOS_PER_USD};

/// Tokens in one argument of one call (INPUT, OUTPUT, CACHED, CACHEWRITE,
/// TRUNCATE's max): 10^12.
pub const MAX_TOKENS: u64 = 1_000_000_000_000;
/// A TOKENS / INPUT / OUTPUT / REQUESTS limit: 10^15.
pub const MAX_LIMIT_AMOUNT: u64 = 1_000_000_000_000_000;
/// Any amount of money: a COST limit, a cache entry's COST, what one call may
/// cost: $1,000,000,000 (10^18 nano-USD).
pub const MAX_USD: Nanos = 1_000_000_000 * NANOS_PER_USD;
/// A model's price: $1,000,000 per million tokens.
pub const MAX_PRICE: Nanos = 1_000_000 * NANOS_PER_USD;
/// Every counter the state keeps (held, spent, used, saved) stays at or
/// below this, so it prints as a signed 64-bit integer everywhere.
pub const MAX_COUNTER: u64 = i64::MAX as u64;
/// A model name, in every command that takes one.
pub const MAX_MODEL_LEN: usize = 128;
/// A hold id, an ID'd spend's id, a run id (as the client gives it).
pub const MAX_ID_LEN: usize = 64;
/// STEP's MAX (steps in one run).
pub const MAX_RUN_STEPS: u64 = 1_000_000_000;
/// Models a RESERVE may fall back to after its first.
pub const MAX_FALLBACKS: usize = 8;
/// Open holds a denial reads to say when their expiry makes room; with
/// more, it answers the earliest expiry of any (a lower bound) instead of
/// scanning them all on every denial.
pub const MAX_EXPIRY_SCAN: usize = 16_384;

// Every single amount fits a counter with room for many more.
const _: () = assert!(MAX_USD < MAX_COUNTER / 8 && MAX_LIMIT_AMOUNT < MAX_COUNTER / 8);

/// Checks a model name's length.
pub fn check_model(model: &str) -> Result<(), String> {
    if model.is_empty() || model.len() > MAX_MODEL_LEN {
        return Err(format!("model name must be 1 to {MAX_MODEL_LEN} bytes"));
    }
    Ok(())
}

/// Checks an id's length; `what` names it in the error ("hold id").
pub fn check_id(id: &str, what: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("{what} must be 1 to {MAX_ID_LEN} bytes"));
    }
    Ok(())
}

/// Checks a token count against [`MAX_TOKENS`]; `what` names the argument.
pub fn check_tokens(n: u64, what: &str) -> Result<(), String> {
    if n > MAX_TOKENS {
        return Err(format!("{what} must be at most {MAX_TOKENS} tokens"));
    }
    Ok(())
}

/// Checks an amount of money against [`MAX_USD`]; `what` names it.
pub fn check_usd(n: Nanos, what: &str) -> Result<(), String> {
    if n > MAX_USD {
        return Err(format!("{what} must be at most $1000000000"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_keep_one_call_far_below_a_counter() {
        // One call: every token field at its maximum, at the highest price,
        // is refused by the cost bound rather than wrapping anything.
        let worst_tokens = 2 * MAX_TOKENS as u128;
        assert!(worst_tokens * (MAX_PRICE as u128) / 1_000_000 > MAX_USD as u128);
        assert!(check_tokens(MAX_TOKENS, "INPUT").is_ok());
        assert!(check_tokens(MAX_TOKENS + 1, "INPUT").is_err());
        assert!(check_usd(MAX_USD, "COST").is_ok());
        assert!(check_usd(MAX_USD + 1, "COST").is_err());
        assert!(check_model(&"m".repeat(MAX_MODEL_LEN)).is_ok());
        assert!(check_model(&"m".repeat(MAX_MODEL_LEN + 1)).is_err());
        assert!(check_model("").is_err());
        assert!(check_id(&"h".repeat(MAX_ID_LEN), "hold id").is_ok());
        assert!(check_id(&"h".repeat(MAX_ID_LEN + 1), "hold id").is_err());
        assert!(check_id("", "hold id").is_err());
    }
}
