//! The command table: one row per command spendb adds to the Redis protocol
//! (and the few only the admin API and the engine's own tasks run). Every
//! list of commands elsewhere derives from it: the RESP dispatcher, COMMAND
//! and COMMAND DOCS, the users file's groups (@agent, @read), metric labels,
//! the admin API's rights, and which commands are reads (still answered
//! while the disk refuses writes).
//!
//! Adding a command: a row here, a `Command` variant, its parser arm in
//! `resp/cmd.rs` and its family's decide function (docs/ARCHITECTURE.md,
//! "How to add a command").

/// The users file's command groups a command belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// What agents need on the hot path.
    Agent,
    /// Reads only.
    Read,
}

/// Where a command is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    /// By the engine (the state machine): parsed into a `Command`.
    Engine,
    /// By the response cache, on the connection's side.
    Cache,
    /// By the token counter, on the connection's side.
    Tokens,
    /// Not a RESP command: run by the admin API or the engine's own tasks.
    Internal,
}

/// One command.
#[derive(Clone, Copy, Debug)]
pub struct CommandSpec {
    /// Lower-case, as in COMMAND and the users file.
    pub name: &'static str,
    /// Redis convention: the words including the name; negative: at least.
    pub arity: i64,
    /// Whether it may write the ledger (or the cache). Reads are answered
    /// while writes are refused.
    pub write: bool,
    pub answered: Answered,
    pub groups: &'static [Group],
    pub summary: &'static str,
    /// Arguments after the name; COMMAND DOCS and redis-cli's hints derive
    /// from it (`resp/docs.rs`).
    pub syntax: &'static str,
}

impl CommandSpec {
    /// Whether clients send it over RESP.
    pub fn is_resp(&self) -> bool {
        self.answered != Answered::Internal
    }
    pub fn in_group(&self, g: Group) -> bool {
        self.groups.contains(&g)
    }
}

use Answered::{Cache, Engine, Internal, Tokens};
use Group::{Agent, Read};

const fn row(
    name: &'static str,
    arity: i64,
    write: bool,
    answered: Answered,
    groups: &'static [Group],
    summary: &'static str,
    syntax: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        write,
        answered,
        groups,
        summary,
        syntax,
    }
}

#[rustfmt::skip]
pub const COMMANDS: &[CommandSpec] = &[
    row("budget.set", -6, true, Engine, &[],
        "Set a scope's limits (replaces them all)",
        "<scope> <DIM> <amount> (PER <period> [TZ <zone>] | ROLLING <duration>) [<DIM> ...]"),
    row("budget.get", 2, false, Engine, &[Read],
        "A scope's limits with used, held, remaining, resets_at",
        "<scope>"),
    row("budget.del", 2, true, Engine, &[],
        "Delete a scope's limits",
        "<scope>"),
    row("budget.list", -1, false, Engine, &[Read],
        "Scopes that have limits",
        "[<prefix>]"),
    row("reserve", -6, true, Engine, &[Agent],
        "Hold an amount against every budget covering a scope (TEXT <prompt> in place of INPUT <n> counts the prompt's tokens)",
        "<hold> <scope> <model> [FALLBACK <models>] INPUT <n> [OUTPUT (<max> | AUTO)] [TTL <ms>] [RUN <run>]"),
    row("commit", -6, true, Engine, &[Agent],
        "Settle a hold at the actual usage",
        "<hold> INPUT <n> OUTPUT <n> [CACHED <n>] [CACHEWRITE <n>]"),
    row("release", 2, true, Engine, &[Agent],
        "Drop a hold",
        "<hold>"),
    row("step", -3, true, Engine, &[Agent],
        "One step of an agent run: denied past MAX steps or when a signature repeats REPEATS times within WINDOW steps",
        "<run> <signature> [SCOPE <scope>] [MAX <n>] [REPEATS <n>] [WINDOW <n>]"),
    row("run.end", -2, true, Engine, &[Agent],
        "End an agent run (forget its steps), with its outcome for cost per successful run",
        "<run> [OUTCOME (success | failure)]"),
    row("cache.set", -4, true, Cache, &[],
        "Store a response under a key (any bytes, stored as its SHA-256)",
        "<ns> <key> <value> [TTL <ms>] [COST <usd>]"),
    row("cache.get", -3, true, Cache, &[],
        "A cached response or nil; with SCOPE a hit books its COST as savings",
        "<ns> <key> [SCOPE <scope>]"),
    row("cache.del", 3, true, Cache, &[],
        "Delete a cached response",
        "<ns> <key>"),
    row("cache.stats", -1, false, Cache, &[Read],
        "Hits, misses, hit rate, entries, bytes, evictions, saved",
        "[<ns>]"),
    row("cache.vset", -5, true, Cache, &[],
        "Store a response under an embedding (the first fixes the namespace's dimension); replies the entry's id",
        "<ns> (FP32 <blob> | VALUES <n> <v1> ...) <value> [TTL <ms>] [COST <usd>] [KEY <text>]"),
    row("cache.vget", -4, true, Cache, &[],
        "The nearest live entry at or above the cosine threshold, with its score, key and id, or nil; with SCOPE a hit books its COST as savings",
        "<ns> (FP32 <blob> | VALUES <n> <v1> ...) [THRESHOLD <cosine>] [EF <n>] [SCOPE <scope>]"),
    row("cache.vdel", 3, true, Cache, &[],
        "Delete a semantic cache entry by id",
        "<ns> <id>"),
    row("cache.vconfig", -2, true, Cache, &[],
        "A semantic namespace's threshold, dimension and search ef, or set its default THRESHOLD and EF",
        "<ns> [THRESHOLD <cosine>] [EF <n>]"),
    row("count", 3, false, Tokens, &[Agent, Read],
        "Tokens in a text for a model's encoding (tiktoken)",
        "<model> <text>"),
    row("truncate", 4, false, Tokens, &[Agent, Read],
        "A text cut to at most max-tokens whole tokens, on a character boundary",
        "<model> <text> <max-tokens>"),
    row("hold.get", 2, false, Engine, &[Agent, Read],
        "A hold and its state",
        "<hold>"),
    row("spend", -7, true, Engine, &[Agent],
        "Book usage that had no hold",
        "<scope> <model> INPUT <n> OUTPUT <n> [CACHED <n>] [CACHEWRITE <n>] [ID <id>] [RUN <run>]"),
    row("balance", 2, false, Engine, &[Agent, Read],
        "Spent and held at a scope, and every limit covering it",
        "<scope>"),
    row("price.set", -6, true, Engine, &[],
        "Set a model's USD per million tokens",
        "<model> INPUT <usd/M> OUTPUT <usd/M> [CACHED <usd/M>] [CACHEWRITE <usd/M>] [MAXOUTPUT <n>]"),
    row("price.get", 2, false, Engine, &[Agent, Read],
        "A model's price (after family fallback)",
        "<model>"),
    row("price.list", 1, false, Engine, &[Agent, Read],
        "The price table",
        ""),
    // Not sent over RESP: the admin API's and the engine's own.
    row("forecast", 0, false, Internal, &[], "Burn-rate forecast of a scope's calendar limits", ""),
    row("hold.list", 0, false, Internal, &[], "Open holds at or below a scope, oldest first", ""),
    row("cache.saved", 0, true, Internal, &[], "A cache hit's savings booked for a scope", ""),
    row("alert.rules.set", 0, true, Internal, &[], "Set or remove a scope's alert rules", ""),
    row("alert.rules.list", 0, false, Internal, &[], "Alert rules at or below a prefix", ""),
    row("alert.list", 0, false, Internal, &[], "Fired alerts", ""),
    row("spend.series", 0, false, Internal, &[], "Settled usage by top-level scope and model", ""),
    row("alert.delivered", 0, true, Internal, &[], "The webhook task delivered an alert", ""),
];

/// The row of a command, by its lower-case name.
pub fn spec(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// A command's position in [`COMMANDS`] (metric label index; the RESP
/// commands come first, so their positions are those of [`resp_commands`]).
pub fn index(name: &str) -> Option<usize> {
    COMMANDS.iter().position(|c| c.name == name)
}

/// The RESP commands, in table order.
pub fn resp_commands() -> impl Iterator<Item = &'static CommandSpec> {
    COMMANDS.iter().filter(|c| c.is_resp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_lower_case() {
        for (i, c) in COMMANDS.iter().enumerate() {
            assert_eq!(c.name, c.name.to_ascii_lowercase());
            assert_eq!(index(c.name), Some(i), "{} twice", c.name);
            assert_eq!(
                c.is_resp(),
                c.arity != 0,
                "{}: RESP rows have an arity",
                c.name
            );
        }
        // RESP rows come first: their positions are the metric labels'.
        let first_internal = COMMANDS.iter().position(|c| !c.is_resp()).unwrap();
        assert!(COMMANDS[first_internal..].iter().all(|c| !c.is_resp()));
        assert_eq!(spec("reserve").map(|c| c.write), Some(true));
        assert!(spec("nosuch").is_none());
    }

    #[test]
    fn groups_hold_what_agents_and_readers_need() {
        let agent: Vec<_> = resp_commands()
            .filter(|c| c.in_group(Agent))
            .map(|c| c.name)
            .collect();
        assert!(agent.contains(&"reserve") && agent.contains(&"commit"));
        assert!(!agent.contains(&"budget.set"));
        // @read holds reads only.
        assert!(resp_commands()
            .filter(|c| c.in_group(Read))
            .all(|c| !c.write));
    }
}
