//! Prices: model → nano-USD per million tokens for input, output, cached
//! input (cache read) and cache write. The shipped default table lives in
//! `data/prices.toml`; PRICE.SET entries override it. A dated or provider-
//! prefixed model name falls back to its family.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::money::{cost_of, format_usd, parse_usd, Nanos};

/// Per-million-token prices in nano-USD (so "$2.50/M" is 2_500_000_000).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    pub input: Nanos,
    pub output: Nanos,
    pub cached: Nanos,
    pub cache_write: Nanos,
    /// The most output tokens one call of the model can produce, when
    /// known: what a RESERVE without OUTPUT holds, and the cap on OUTPUT.
    pub max_output: Option<u64>,
}

/// Token counts of one settled call. `cached` and `cache_write` are the parts
/// of `input` read from and written to a prompt cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
    pub cache_write: u64,
}

impl Usage {
    pub fn check(&self) -> Result<(), String> {
        if self.cached.saturating_add(self.cache_write) > self.input {
            return Err("CACHED + CACHEWRITE cannot exceed INPUT (they are parts of it)".into());
        }
        Ok(())
    }
}

impl Price {
    /// A price whose cache read / write rates default to the input rate when
    /// not known: assume no discount, so a call is never undercharged.
    pub fn new(
        input: Nanos,
        output: Nanos,
        cached: Option<Nanos>,
        cache_write: Option<Nanos>,
    ) -> Price {
        Price {
            input,
            output,
            cached: cached.unwrap_or(input),
            cache_write: cache_write.unwrap_or(input),
            max_output: None,
        }
    }

    /// The same price with the model's maximum output tokens.
    pub fn with_max_output(self, max_output: Option<u64>) -> Price {
        Price { max_output, ..self }
    }

    /// What a settled call cost, rounded up to the nano-dollar.
    pub fn cost(&self, u: &Usage) -> Nanos {
        let plain = u.input - u.cached - u.cache_write;
        cost_of(&[
            (plain, self.input),
            (u.cached, self.cached),
            (u.cache_write, self.cache_write),
            (u.output, self.output),
        ])
    }

    /// The most a call with this input and output cap can cost (all input at
    /// the full input price): what a hold reserves.
    pub fn max_cost(&self, input: u64, output: u64) -> Nanos {
        cost_of(&[(input, self.input), (output, self.output)])
    }

    pub fn describe(&self) -> [(&'static str, String); 4] {
        [
            ("input", format_usd(self.input)),
            ("output", format_usd(self.output)),
            ("cached", format_usd(self.cached)),
            ("cachewrite", format_usd(self.cache_write)),
        ]
    }
}

#[derive(Deserialize)]
struct PriceFile {
    models: BTreeMap<String, PriceRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceRow {
    input: String,
    output: String,
    cached: Option<String>,
    cachewrite: Option<String>,
    /// Maximum output tokens of one call.
    max_output: Option<u64>,
}

pub const DEFAULT_PRICES_TOML: &str = include_str!("../../data/prices.toml");

/// Parses a price table file (the format of `data/prices.toml`).
pub fn parse_price_table(text: &str) -> Result<super::Map<String, Price>, String> {
    let file: PriceFile = toml::from_str(text).map_err(|e| format!("price table: {e}"))?;
    let mut out = super::Map::default();
    for (model, row) in file.models {
        let p = |s: &str| parse_usd(s).map_err(|e| format!("price of {model}: {e}"));
        let price = Price::new(
            p(&row.input)?,
            p(&row.output)?,
            row.cached.as_deref().map(p).transpose()?,
            row.cachewrite.as_deref().map(p).transpose()?,
        )
        .with_max_output(row.max_output);
        if let Some(m) = row.max_output {
            super::bounds::check_tokens(m, &format!("max_output of {model}"))?;
            if m == 0 {
                return Err(format!("max_output of {model} must be at least 1"));
            }
        }
        out.insert(model.to_ascii_lowercase(), price);
    }
    Ok(out)
}

/// The shipped default table.
pub fn default_prices() -> super::Map<String, Price> {
    parse_price_table(DEFAULT_PRICES_TOML).expect("data/prices.toml is valid")
}

/// Candidate names for a model, most specific first: the name itself
/// (lower-cased), then without a provider prefix (`openai/gpt-4o`), then with
/// date/version suffixes stripped one at a time (`-2024-08-06`, `-20250514`,
/// `-0613`, `@20240620`, `-latest`).
pub fn family_candidates(model: &str) -> Vec<String> {
    let mut name = model.to_ascii_lowercase();
    let mut out = vec![name.clone()];
    if let Some((_, rest)) = name.rsplit_once('/') {
        name = rest.to_string();
        out.push(name.clone());
    }
    if let Some((base, _)) = name.split_once('@') {
        name = base.to_string();
        out.push(name.clone());
    }
    loop {
        let stripped = strip_version_suffix(&name);
        match stripped {
            Some(s) if !s.is_empty() => {
                name = s.to_string();
                out.push(name.clone());
            }
            _ => break,
        }
    }
    out
}

fn strip_version_suffix(name: &str) -> Option<&str> {
    let is_digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let (base, last) = name.rsplit_once('-')?;
    if last == "latest" || is_digits(last, 8) || is_digits(last, 4) {
        return Some(base);
    }
    // -YYYY-MM-DD
    if is_digits(last, 2) {
        let (b2, mm) = base.rsplit_once('-')?;
        let (b3, yyyy) = b2.rsplit_once('-')?;
        if is_digits(mm, 2) && is_digits(yyyy, 4) {
            return Some(b3);
        }
    }
    None
}

/// Finds a model's price: exact, then its family, then the configured default.
pub fn lookup<'a>(
    table: &'a super::Map<String, Price>,
    default: Option<&'a Price>,
    model: &str,
) -> Option<&'a Price> {
    // A table key is already a normalized name (its own first candidate),
    // so the exact hit, the common case, skips building the candidates.
    if let Some(p) = table.get(model) {
        return Some(p);
    }
    family_candidates(model)
        .iter()
        .find_map(|c| table.get(c))
        .or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_parses_and_has_families() {
        let t = default_prices();
        assert!(t.len() > 25);
        let p = lookup(&t, None, "gpt-4o-2024-08-06").unwrap();
        assert_eq!(p.input, 2_500_000_000);
        assert_eq!(
            lookup(&t, None, "gpt-4o-mini-2024-07-18").unwrap().input,
            150_000_000
        );
        assert_eq!(
            lookup(&t, None, "claude-sonnet-4-20250514").unwrap().output,
            15_000_000_000
        );
        assert_eq!(
            lookup(&t, None, "anthropic/claude-3-5-sonnet@20240620")
                .unwrap()
                .input,
            3_000_000_000
        );
        assert_eq!(
            lookup(&t, None, "GPT-4-0613").unwrap().input,
            30_000_000_000
        );
        assert!(lookup(&t, None, "llama-3").is_none());
        // "gpt-4o" must not be mistaken for gpt-4 + a version.
        assert_eq!(lookup(&t, None, "gpt-4o").unwrap().input, 2_500_000_000);
    }

    #[test]
    fn costs_split_cached_input() {
        let p = Price {
            input: 3_000_000_000,
            output: 15_000_000_000,
            cached: 300_000_000,
            cache_write: 3_750_000_000,
            max_output: None,
        };
        let u = Usage {
            input: 1_000_000,
            output: 0,
            cached: 500_000,
            cache_write: 0,
        };
        assert_eq!(p.cost(&u), 1_500_000_000 + 150_000_000);
        assert_eq!(p.max_cost(1_000_000, 1_000_000), 18_000_000_000);
        assert!(Usage {
            input: 1,
            cached: 2,
            ..Default::default()
        }
        .check()
        .is_err());
    }
}
