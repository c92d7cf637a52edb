//! The spend family: SPEND (usage booked without a hold) and the savings a
//! cache hit books (CACHE.GET … SCOPE).

use crate::state::outcome::{Outcome, Spent};
use crate::state::*;

fn spent(id: Option<&str>, usage: Usage, cost: u64) -> Outcome {
    Outcome::Spent(Spent {
        id: id.map(str::to_string),
        tokens: usage.input.saturating_add(usage.output),
        cost,
    })
}

impl State {
    pub(in crate::state) fn spend(
        &mut self,
        now: u64,
        scope: &str,
        model: &str,
        usage: &Usage,
        // Its idempotency ID and the agent run it belongs to, if given.
        (id, run): (&Option<String>, &Option<String>),
        out: &mut Vec<Entry>,
    ) -> Outcome {
        if let Err(e) = usage.check() {
            return refuse(e);
        }
        if let Some(id) = id {
            if let Some(r) = self.spends.get(id) {
                return if r.scope == scope && r.model == model && r.usage == *usage {
                    spent(Some(id), r.usage, r.cost)
                } else {
                    Outcome::refused(
                        ErrorCode::Exists,
                        format!("spend {id} was recorded with other arguments"),
                    )
                };
            }
        }
        if let Err(e) = scope::validate_scope(scope) {
            return refuse(e);
        }
        let Some(price) = self.price_of(model) else {
            return Outcome::refused(ErrorCode::NoPrice, format!("model {model}"));
        };
        let cost = price.cost(usage);
        if let Err(e) = bounds::check_usd(cost, "the cost of this call") {
            return refuse(e);
        }
        let actual = Dims::call(usage.input, usage.output, cost);
        if let Err(e) = self.headroom(scope, &actual, 0) {
            return refuse(e);
        }
        let kind = EntryKind::Spend {
            id: id.clone(),
            scope: scope.to_string(),
            model: model.to_string(),
            usage: *usage,
            cost,
            run: run.clone(),
        };
        self.emit(now, kind, out);
        self.note_overdrawn(now, scope, &actual);
        self.check_alerts(now, scope, out);
        spent(id.as_deref(), *usage, cost)
    }

    /// A cache hit's savings for `scope` (CACHE.GET … SCOPE).
    pub(in crate::state) fn cache_saved(
        &mut self,
        now: u64,
        scope: &str,
        cost: u64,
        out: &mut Vec<Entry>,
    ) -> Outcome {
        if let Err(e) = scope::validate_scope(scope) {
            return refuse(e);
        }
        if let Err(e) = self.headroom(scope, &Dims::default(), cost) {
            return refuse(e);
        }
        let kind = EntryKind::Saved {
            scope: scope.to_string(),
            cost,
        };
        self.emit(now, kind, out);
        Outcome::Done
    }
}

#[cfg(test)]
mod tests {
    use crate::state::bounds::{MAX_PRICE, MAX_USD};
    use crate::state::price::Usage;
    use crate::state::*;

    /// The most one call may cost, booked until the counters are full: the
    /// call that would take them past 2^63 − 1 is refused and changes
    /// nothing; savings likewise.
    #[test]
    fn a_call_that_would_overflow_a_counter_is_refused_before_anything_changes() {
        let mut st = State::new(Config::default());
        let mut out = Vec::new();
        let now = 1_795_305_600_000;
        let price = Command::PriceSet {
            model: "dear".into(),
            input: MAX_PRICE,
            output: MAX_PRICE,
            cached: None,
            cache_write: None,
            max_output: None,
        };
        assert_eq!(st.apply(now, &price, &mut out), Value::Ok);
        // 10^9 tokens at $10^6 per million: $10^9, the most one call may cost.
        let spend = Command::Spend {
            run: None,
            scope: "org:a/team:b".into(),
            model: "dear".into(),
            usage: Usage {
                input: 1_000_000_000,
                ..Usage::default()
            },
            id: None,
        };
        let full = bounds::MAX_COUNTER / MAX_USD; // 9 such calls fit
        for _ in 0..full {
            let v = st.apply(now, &spend, &mut out);
            assert_eq!(v.field("status"), Some(&Value::str("spent")), "{v:?}");
        }
        let before = (st.digest(), st.next_seq);
        let v = st.apply(now, &spend, &mut out);
        let Value::Error { code, msg } = v else {
            panic!("the 10th call was booked: {v:?}")
        };
        assert_eq!(code, ErrorCode::Err);
        assert!(
            msg.contains("org:a/team:b's COST past the counter maximum"),
            "{msg}"
        );
        assert!(
            (st.digest(), st.next_seq) == before,
            "a refusal changed the state"
        );
        // Savings: the same bound.
        let saved = Command::CacheSaved {
            scope: "org:x".into(),
            cost: MAX_USD,
        };
        for _ in 0..full {
            assert_eq!(st.apply(now, &saved, &mut out), Value::Ok);
        }
        let v = st.apply(now, &saved, &mut out);
        assert!(
            matches!(&v, Value::Error { msg, .. } if msg.contains("saved past the counter maximum")),
            "{v:?}"
        );
        // And a hold is sized against the same counters.
        let reserve = Command::Reserve(ReserveArgs::new(
            "h",
            "org:a",
            "dear",
            1_000_000_000,
            OutputAsk::Tokens(0),
        ));
        let v = st.apply(now, &reserve, &mut out);
        assert!(
            matches!(&v, Value::Error { msg, .. } if msg.contains("counter maximum")),
            "{v:?}"
        );
    }
}
