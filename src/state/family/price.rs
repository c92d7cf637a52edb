//! The price family: PRICE.SET, PRICE.GET, PRICE.LIST, and the lookup
//! every other family prices a call with.

use crate::state::outcome::Outcome;
use crate::state::*;

impl State {
    pub(in crate::state) fn price_of(&self, model: &str) -> Option<Price> {
        price::lookup(&self.prices, self.config.default_price.as_ref(), model).copied()
    }

    pub(in crate::state) fn price_get(&self, model: &str) -> Value {
        for c in price::family_candidates(model) {
            if let Some(p) = self.prices.get(&c) {
                return price_value(model, &c, p);
            }
        }
        match &self.config.default_price {
            Some(p) => price_value(model, "default", p),
            None => Value::err(ErrorCode::NoPrice, format!("model {model}")),
        }
    }

    /// PRICE.SET: USD per million tokens as nano-USD; the cache rates
    /// default to the input rate (no discount assumed).
    /// A price set without a maximum output keeps the one known for the
    /// model (its own or its family's).
    pub(in crate::state) fn price_set(
        &mut self,
        now: u64,
        model: &str,
        price: Price,
        max_output: Option<u64>,
        out: &mut Vec<Entry>,
    ) -> Outcome {
        let known = price::lookup(&self.prices, None, model).and_then(|p| p.max_output);
        let price = price.with_max_output(max_output.or(known));
        let kind = EntryKind::PriceSet {
            model: model.to_ascii_lowercase(),
            price,
        };
        self.emit(now, kind, out);
        Outcome::Done
    }

    /// PRICE.LIST: the table, sorted by model.
    pub(in crate::state) fn price_list(&self) -> Value {
        let sorted: BTreeMap<_, _> = self.prices.iter().collect();
        Value::Array(
            sorted
                .into_iter()
                .map(|(m, p)| price_value(m, m, p))
                .collect(),
        )
    }
}
