//! The hold family: RESERVE (checking every limit on the scope and its
//! ancestors), COMMIT, RELEASE, HOLD.GET and the open-hold list.

use crate::state::outcome::{Denied, Outcome};
use crate::state::*;

impl State {
    pub(in crate::state) fn reserve(
        &mut self,
        now: u64,
        a: &ReserveArgs,
        out: &mut Vec<Entry>,
    ) -> Outcome {
        if let Some(h) = self.holds.get(&a.hold) {
            // The output the server chose (no OUTPUT, or AUTO) matches any;
            // a given one matches itself or what it was clamped to.
            let max = self.price_of(&h.model).and_then(|p| p.max_output);
            let same_output = match a.output {
                OutputAsk::Tokens(n) => {
                    n == h.output || (n > h.output && max.is_some_and(|m| m <= h.output))
                }
                OutputAsk::Max | OutputAsk::Auto => true,
            };
            let same = *h.scope == *a.scope
                && a.models().any(|m| *m == *h.model)
                && h.input == a.input
                && same_output
                && h.ttl_ms == a.ttl_ms;
            return if same {
                let from = self.output_from(a.output, h.output, max);
                Outcome::granted(&a.hold, &h, from)
            } else {
                Outcome::refused(
                    ErrorCode::Exists,
                    format!("hold {} was reserved with other arguments", a.hold),
                )
            };
        }
        if let Err(e) = scope::validate_scope(&a.scope) {
            return refuse(e);
        }
        let ttl = a.ttl_ms.unwrap_or(self.config.default_ttl_ms);
        if ttl == 0 || ttl > self.config.max_ttl_ms {
            return refuse(format!(
                "TTL must be between 1 and {} ms",
                self.config.max_ttl_ms
            ));
        }
        // Every model tried must have a price: a missing one is a
        // configuration error, not a reason to skip to the next.
        // (No list is built: RESERVE without FALLBACK is the hot path.)
        let Some(first) = self.price_of(&a.model) else {
            return Outcome::refused(ErrorCode::NoPrice, format!("model {}", a.model));
        };
        if let Some(m) = a.fallback.iter().find(|m| self.price_of(m).is_none()) {
            return Outcome::refused(ErrorCode::NoPrice, format!("model {m}"));
        }
        // The first model, in order, whose hold fits every limit.
        let mut denied = None;
        for (i, model) in a.models().enumerate() {
            let price = match i {
                0 => first,
                _ => self
                    .price_of(model)
                    .expect("every model's price was checked"),
            };
            let output = self.output_to_hold(now, a, &price);
            let cost = price.max_cost(a.input, output);
            if let Err(e) = bounds::check_usd(cost, "the most this call can cost") {
                return refuse(e);
            }
            let amounts = Dims::call(a.input, output, cost);
            if let Err(e) = self.headroom(&a.scope, &amounts, 0) {
                return refuse(e);
            }
            if let Some(d) = self.check(now, &a.scope, &amounts) {
                denied = Some(Denied {
                    hold: a.hold.clone(),
                    model: model.to_string(),
                    scope: d.scope,
                    limit: d.spec,
                    remaining: d.remaining,
                    held: d.held,
                    reason: d.blocker,
                    retry_after: d.retry_after,
                    short_by: d.short_by,
                    tokens: amounts.get(Dim::Tokens),
                    cost,
                });
                continue;
            }
            let kind = EntryKind::Hold {
                id: a.hold.clone(),
                scope: a.scope.clone(),
                model: model.to_string(),
                input: a.input,
                output,
                ttl_ms: a.ttl_ms,
                amounts,
                expires_at: now.saturating_add(ttl),
                run: a.run.clone(),
            };
            self.emit(now, kind, out);
            let from = self.output_from(a.output, output, price.max_output);
            return Outcome::granted(&a.hold, &self.hold(&a.hold), from);
        }
        // None fitted: the limit that stopped the last one.
        Outcome::Denied(denied.expect("at least one model was tried"))
    }

    /// The output tokens a RESERVE holds (see [`OutputAsk`]).
    fn output_to_hold(&self, now: u64, a: &ReserveArgs, price: &Price) -> u64 {
        let max = price.max_output.unwrap_or(self.config.default_output);
        match a.output {
            OutputAsk::Tokens(n) => price.max_output.map_or(n, |m| n.min(m)),
            OutputAsk::Max => max,
            OutputAsk::Auto => self.output_room(now, &a.scope, a.input, price, max).max(1),
        }
    }

    /// The most output tokens (up to `max`) a call of `input` tokens at
    /// `price` fits in every limit on the scope and its ancestors.
    fn output_room(&self, now: u64, scope: &str, input: u64, price: &Price, max: u64) -> u64 {
        let mut room = max;
        for s in chain(scope) {
            let Some(node) = self.nodes.get(s) else {
                continue;
            };
            for l in &node.limits {
                let dim = l.spec.dim;
                let taken = (l.used(now) as u128) + (l.held_part(node.held.get(dim)) as u128);
                let left = (l.spec.amount as u128).saturating_sub(taken) as u64;
                room = room.min(match dim {
                    Dim::Output => left,
                    Dim::Tokens => left.saturating_sub(input),
                    Dim::Cost => {
                        // The largest output whose hold cost fits: the cost
                        // rounds up, so search rather than divide.
                        let (mut lo, mut hi) = (0u64, room);
                        if price.max_cost(input, 0) > left {
                            0
                        } else {
                            while lo < hi {
                                let mid = lo + (hi - lo).div_ceil(2);
                                if price.max_cost(input, mid) <= left {
                                    lo = mid;
                                } else {
                                    hi = mid - 1;
                                }
                            }
                            lo
                        }
                    }
                    Dim::Input | Dim::Requests => continue,
                });
            }
        }
        room
    }

    /// How a hold's `output` tokens were chosen, for its grant's reply.
    fn output_from(&self, ask: OutputAsk, output: u64, max: Option<u64>) -> OutputFrom {
        let chosen = if max.is_some() {
            OutputFrom::Model
        } else {
            OutputFrom::Default
        };
        match ask {
            OutputAsk::Tokens(n) if n > output => OutputFrom::Clamped,
            OutputAsk::Tokens(_) => OutputFrom::Given,
            OutputAsk::Max => chosen,
            OutputAsk::Auto if output < max.unwrap_or(self.config.default_output) => {
                OutputFrom::Room
            }
            OutputAsk::Auto => chosen,
        }
    }

    /// Checks `amounts` against every limit on the scope and its ancestors.
    /// None if all fit; otherwise the most binding limit (waiting cannot help
    /// beats the longest wait).
    pub(in crate::state) fn check(&self, now: u64, scope: &str, amounts: &Dims) -> Option<Denial> {
        let mut worst: Option<Denial> = None;
        for s in chain(scope) {
            let Some(node) = self.nodes.get(s) else {
                continue;
            };
            for l in &node.limits {
                let dim = l.spec.dim;
                let (amt, used) = (amounts.get(dim), l.used(now));
                let held = l.held_part(node.held.get(dim));
                let after = (used as u128) + (held as u128) + (amt as u128);
                let d = if after <= l.spec.amount as u128 {
                    match self.grant_check(now, s, l, node.held.get(dim), amt) {
                        Some(d) => d,
                        None => continue,
                    }
                } else {
                    let (blocker, at) =
                        l.blocked(now, held, amt, |need| self.expired_by(now, s, dim, need));
                    Denial {
                        scope: s.to_string(),
                        spec: l.spec,
                        remaining: l.spec.amount as i128 - used as i128 - held as i128,
                        held,
                        blocker,
                        retry_after: at.map(|t| t.saturating_sub(now)),
                        short_by: (after - l.spec.amount as u128).min(u64::MAX as u128) as u64,
                    }
                };
                let worse = match (&worst, d.retry_after) {
                    (None, _) => true,
                    (Some(w), None) => w.retry_after.is_some(),
                    (Some(w), Some(t)) => w.retry_after.is_some_and(|wt| t > wt),
                };
                if worse {
                    worst = Some(d);
                }
            }
        }
        worst
    }

    /// Cluster mode: whether `amount` fits this node's grant of a global
    /// limit `l` on scope `s`, whose open holds hold `held` of its
    /// dimension (`grant.rs`). A denial here is the least binding kind
    /// (`retry_after` 0: the cluster agent is asked for room and the
    /// request decided again), so a limit that is itself full names itself.
    fn grant_check(&self, now: u64, s: &str, l: &Limit, held: u64, amount: u64) -> Option<Denial> {
        let rules = self.config.cluster?;
        let (key, _) = grant::key(s, &l.spec, now)?;
        let line = self.grants.get(&key);
        // What the line covers (a rolling line: its period of the window).
        let taken = match line {
            Some(g) => l.taken_between(now, held, g.period, g.end()),
            None => l.taken_between(now, held, now, now),
        };
        // Only on a line the store granted room: a node re-registered while
        // the pool was exhausted has none, so its allowance is not spent
        // again before what it used past its last grant was absorbed.
        let extra = match self.cut_off && line.is_some_and(|g| g.granted > 0) {
            true => rules.partition_extra(&l.spec, l.spec.amount),
            false => 0,
        };
        let short = grant::shortfall(line, taken, amount, extra)?;
        let (base, granted, reported, u_max) =
            line.map_or((0, 0, 0, 0), |g| (g.base, g.granted, g.reported, g.u_max));
        // What is left: of the grant, or of the unreported allowance.
        let (blocker, short_by, room) = match short {
            grant::Short::Room { by } => (limit::Blocker::Grant, by, granted as i128),
            grant::Short::Report { by } => (
                limit::Blocker::Unreported,
                by,
                reported as i128 + u_max as i128,
            ),
        };
        Some(Denial {
            scope: s.to_string(),
            spec: l.spec,
            remaining: room - taken.saturating_sub(base) as i128,
            held: 0,
            blocker,
            retry_after: Some(0),
            short_by,
        })
    }

    /// When the open holds at or below `scope` have freed `need` of `dim`
    /// by expiring (none settling first): the earliest expiry that does it.
    /// With more open holds than [`bounds::MAX_EXPIRY_SCAN`] it answers the
    /// earliest expiry of any open hold, a lower bound, rather than scan
    /// them all on every denial.
    fn expired_by(&self, now: u64, scope: &str, dim: Dim, need: u64) -> Option<u64> {
        if need == 0 {
            return Some(now);
        }
        if self.holds.expiry_entries() > bounds::MAX_EXPIRY_SCAN {
            return self.holds.next_expiry().map(|t| t.max(now));
        }
        let mut open: Vec<(u64, Dims)> = (self.holds)
            .open_under(|s| scope::is_within(s, scope))
            .map(|(_, expires_at, a)| (expires_at, a))
            .collect();
        open.sort_unstable_by_key(|(t, _)| *t);
        let mut freed = 0u64;
        for (t, a) in open {
            freed = freed.saturating_add(a.get(dim));
            if freed >= need {
                return Some(t.max(now));
            }
        }
        None
    }

    pub(in crate::state) fn commit(
        &mut self,
        now: u64,
        id: &str,
        usage: &Usage,
        out: &mut Vec<Entry>,
    ) -> Outcome {
        if let Err(e) = usage.check() {
            return refuse(e);
        }
        let Some(h) = self.holds.get(id) else {
            return Outcome::refused(ErrorCode::Unknown, format!("hold {id}"));
        };
        let late = match &h.status {
            HoldStatus::Committed(s) => {
                return if s.usage == *usage {
                    Outcome::committed(id, &h, s)
                } else {
                    Outcome::refused(
                        ErrorCode::Exists,
                        format!("hold {id} was committed with other arguments"),
                    )
                };
            }
            HoldStatus::Released { .. } => {
                return Outcome::refused(ErrorCode::State, format!("hold {id} was released"));
            }
            HoldStatus::Open => false,
            HoldStatus::Expired { .. } => true,
        };
        // The price a hold was made at may have changed since; an unknown
        // price now (deleted default) falls back to the hold's own estimate.
        let cost = match self.price_of(&h.model) {
            Some(p) => p.cost(usage),
            None => h.amounts.get(Dim::Cost),
        };
        if let Err(e) = bounds::check_usd(cost, "the cost of this call") {
            return refuse(e);
        }
        let actual = Dims::call(usage.input, usage.output, cost);
        if let Err(e) = self.headroom(&h.scope, &actual, 0) {
            return refuse(e);
        }
        self.emit(
            now,
            EntryKind::Commit {
                id: id.to_string(),
                usage: *usage,
                cost,
                late,
            },
            out,
        );
        let held = h.amounts;
        let h = self.hold(id);
        // Past its hold, or after it expired (its room was given back):
        // beyond what RESERVE granted.
        let mut booked = actual;
        if !late {
            booked.0 = std::array::from_fn(|i| actual.0[i].saturating_sub(held.0[i]));
        }
        if booked.0.iter().any(|b| *b > 0) {
            self.note_overdrawn(now, &h.scope, &booked);
        }
        self.check_alerts(now, &h.scope, out);
        match &h.status {
            HoldStatus::Committed(s) => Outcome::committed(id, &h, s),
            _ => unreachable!("commit entry settles the hold"),
        }
    }

    pub(in crate::state) fn release(
        &mut self,
        now: u64,
        id: &str,
        out: &mut Vec<Entry>,
    ) -> Outcome {
        let Some(h) = self.holds.get(id) else {
            return Outcome::refused(ErrorCode::Unknown, format!("hold {id}"));
        };
        match h.status {
            HoldStatus::Open => {
                self.emit(now, EntryKind::Release { id: id.to_string() }, out);
                Outcome::released(id, &self.hold(id))
            }
            HoldStatus::Released { .. } | HoldStatus::Expired { .. } => Outcome::released(id, &h),
            HoldStatus::Committed(_) => {
                Outcome::refused(ErrorCode::State, format!("hold {id} was committed"))
            }
        }
    }

    /// HOLD.GET.
    pub(in crate::state) fn hold_get(&self, hold: &str) -> Value {
        match self.holds.get(hold) {
            Some(h) => hold_value(hold, &h),
            None => Value::err(ErrorCode::Unknown, format!("hold {hold}")),
        }
    }

    /// Open holds at or below `prefix`, oldest first (the admin API).
    pub(in crate::state) fn hold_list(
        &self,
        prefix: Option<&str>,
        limit: usize,
        visible: Visible,
    ) -> Value {
        let mut open: Vec<(&str, Hold)> = self
            .holds
            .open()
            .filter(|(_, h)| {
                visible(&h.scope) && prefix.is_none_or(|p| scope::is_within(&h.scope, p))
            })
            .collect();
        open.sort_by(|a, b| (a.1.created_at, a.0).cmp(&(b.1.created_at, b.0)));
        open.dedup_by(|a, b| a.0 == b.0);
        Value::Array(
            open.into_iter()
                .take(limit)
                .map(|(id, h)| hold_value(id, &h))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::state::*;

    /// HOLD.LIST reads the open holds only (through the expiry index), oldest
    /// first, each once: not the settled ones the state still remembers.
    #[test]
    fn the_hold_list_is_every_open_hold_oldest_first_and_no_settled_one() {
        let mut st = State::new(Config::default());
        let mut out = Vec::new();
        for i in 0..4u64 {
            let r = Command::Reserve(ReserveArgs::new(
                format!("h{i}"),
                "org:a",
                "gpt-4o",
                1,
                OutputAsk::Tokens(0),
            ));
            st.apply(1_000 + i, &r, &mut out);
        }
        let commit = Command::Commit {
            hold: "h1".into(),
            usage: Usage::default(),
        };
        st.apply(2_000, &commit, &mut out);
        let list = Command::HoldList {
            prefix: None,
            limit: 10,
        };
        let v = st.apply(2_001, &list, &mut out);
        let Value::Array(items) = &v else {
            panic!("{v:?}")
        };
        let ids: Vec<_> = items.iter().map(|h| h.field("hold").cloned()).collect();
        let want: Vec<_> = ["h0", "h2", "h3"]
            .iter()
            .map(|h| Some(Value::str(*h)))
            .collect();
        assert_eq!(ids, want, "{v:?}");
    }

    #[test]
    fn a_callers_hold_list_is_filtered_before_its_limit() {
        let mut st = State::new(Config::default());
        let mut out = Vec::new();
        for (i, scope) in ["org:other", "org:a"].iter().enumerate() {
            let r = Command::Reserve(ReserveArgs::new(
                format!("h{i}"),
                scope.to_string(),
                "gpt-4o",
                1,
                OutputAsk::Tokens(0),
            ));
            st.apply(1_000 + i as u64, &r, &mut out);
        }
        let list = Command::HoldList {
            prefix: None,
            limit: 1,
        };
        let a = Access::new(vec!["org:a".into()]);
        // The oldest hold is another tenant's: the page of one is still full.
        let v = st.apply_as(2_000, &list, Some(&a), &mut out);
        let Value::Array(items) = &v else {
            panic!("{v:?}")
        };
        assert_eq!(items.len(), 1, "{v:?}");
        assert_eq!(items[0].field("scope"), Some(&Value::str("org:a")));
    }

    #[test]
    fn a_fallback_grant_replays_with_its_model() {
        let mut st = State::new(Config::default());
        let mut out = Vec::new();
        let budget = Command::BudgetSet {
            scope: "org:f".into(),
            limits: vec![limit::LimitSpec {
                dim: limit::Dim::Cost,
                window: limit::Window::Total,
                amount: 1_000_000, // $0.001
            }],
        };
        st.apply(1_000, &budget, &mut out);
        // 1000 tokens of gpt-4o hold $0.0025; of gpt-4o-mini $0.00015.
        let r = Command::Reserve(ReserveArgs {
            fallback: vec!["claude-opus-4".into(), "gpt-4o-mini".into()],
            ..ReserveArgs::new("f1", "org:f", "gpt-4o", 1_000, OutputAsk::Tokens(0))
        });
        let v = st.apply(1_000, &r, &mut out);
        assert_eq!(v.field("model"), Some(&Value::str("gpt-4o-mini")), "{v:?}");
        let again = st.apply(2_000, &r, &mut out);
        assert_eq!(again, v, "a replay is the same grant");
        assert_eq!(st.hold("f1").model.as_ref(), "gpt-4o-mini");
        // None fits: the denial is the last model's.
        let Command::Reserve(mut big) = r else {
            unreachable!()
        };
        big.hold = "f2".into();
        big.input = 100_000;
        let d = st.apply(2_000, &Command::Reserve(big), &mut out);
        assert_eq!(d.field("status"), Some(&Value::str("denied")));
        assert_eq!(d.field("model"), Some(&Value::str("gpt-4o-mini")));
    }

    #[test]
    fn a_ttl_of_exactly_the_maximum_is_accepted_and_one_more_refused() {
        let mut st = State::new(Config::default());
        let mut out = Vec::new();
        let max = st.config.max_ttl_ms;
        let reserve = |hold: &str, ttl| {
            Command::Reserve(ReserveArgs {
                ttl_ms: Some(ttl),
                ..ReserveArgs::new(hold, "org:a", "gpt-4o", 1, OutputAsk::Tokens(0))
            })
        };
        let v = st.apply(1_000, &reserve("at-max", max), &mut out);
        assert_eq!(v.field("status"), Some(&Value::str("granted")), "{v:?}");
        let v = st.apply(1_000, &reserve("past-max", max + 1), &mut out);
        assert!(
            matches!(&v, Value::Error { msg, .. } if msg.contains("TTL must be between")),
            "{v:?}"
        );
        let v = st.apply(1_000, &reserve("zero", 0), &mut out);
        assert!(v.is_error(), "{v:?}");
    }
}
