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
        id: &Option<String>,
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
        };
        self.emit(now, kind, out);
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
