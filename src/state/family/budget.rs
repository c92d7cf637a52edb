//! The budget family: BUDGET.SET, BUDGET.GET, BUDGET.DEL, BUDGET.LIST,
//! BALANCE and the burn-rate forecast: deciding each, and its reply.

use crate::state::*;

/// What makes a BUDGET.SET invalid whatever the state: a bad scope, no
/// limits, too many, one given twice.
pub(in crate::state) fn budget_check(scope: &str, limits: &[LimitSpec]) -> Result<(), String> {
    scope::validate_scope(scope)?;
    if limits.is_empty() {
        return Err("BUDGET.SET needs at least one limit".into());
    }
    if limits.len() > MAX_LIMITS_PER_SCOPE {
        return Err(format!("at most {MAX_LIMITS_PER_SCOPE} limits per scope"));
    }
    for (i, l) in limits.iter().enumerate() {
        if limits[..i]
            .iter()
            .any(|o| o.dim == l.dim && o.window == l.window)
        {
            return Err(format!(
                "limit {} {} is given twice",
                l.dim.name(),
                l.window.describe()
            ));
        }
    }
    Ok(())
}

impl State {
    pub(in crate::state) fn budget_set(
        &mut self,
        now: u64,
        scope: &str,
        limits: &[LimitSpec],
        out: &mut Vec<Entry>,
    ) -> Value {
        if let Err(e) = budget_check(scope, limits) {
            return syntax(e);
        }
        self.emit(
            now,
            EntryKind::BudgetSet {
                scope: scope.to_string(),
                limits: limits.to_vec(),
            },
            out,
        );
        Value::Ok
    }

    pub(in crate::state) fn budget_del(
        &mut self,
        now: u64,
        scope: &str,
        out: &mut Vec<Entry>,
    ) -> Value {
        match self.nodes.get(scope) {
            Some(n) if !n.limits.is_empty() => {
                self.emit(
                    now,
                    EntryKind::BudgetDel {
                        scope: scope.to_string(),
                    },
                    out,
                );
                Value::Int(1)
            }
            _ => Value::Int(0),
        }
    }

    pub(in crate::state) fn budget_get(&self, now: u64, scope: &str) -> Value {
        match self.nodes.get(scope) {
            Some(n) if !n.limits.is_empty() => Value::Map(vec![
                ("scope", Value::str(scope)),
                (
                    "limits",
                    Value::Array(
                        n.limits
                            .iter()
                            .map(|l| {
                                limit_value(None, n, l, now, self.cluster_figures(now, scope, n, l))
                            })
                            .collect(),
                    ),
                ),
            ]),
            _ => Value::err(ErrorCode::Unknown, format!("budget {scope}")),
        }
    }

    pub(in crate::state) fn budget_list(&self, prefix: Option<&str>, visible: Visible) -> Value {
        let mut scopes: Vec<&String> = self
            .nodes
            .iter()
            .filter(|(s, n)| {
                !n.limits.is_empty() && visible(s) && prefix.is_none_or(|p| scope::is_within(s, p))
            })
            .map(|(s, _)| s)
            .collect();
        scopes.sort();
        Value::Array(scopes.into_iter().map(|s| Value::str(s.clone())).collect())
    }

    pub(in crate::state) fn balance(&self, now: u64, scope: &str) -> Value {
        if let Err(e) = scope::validate_scope(scope) {
            return syntax(e);
        }
        let empty = Node::default();
        let n = self.nodes.get(scope).unwrap_or(&empty);
        let mut limits = Vec::new();
        for s in chain(scope) {
            if let Some(node) = self.nodes.get(s) {
                limits.extend(node.limits.iter().map(|l| {
                    let cluster = self.cluster_figures(now, s, node, l);
                    limit_value(Some(s), node, l, now, cluster)
                }));
            }
        }
        Value::Map(vec![
            ("scope", Value::str(scope)),
            ("spent", dims_value(&n.spent)),
            ("held", dims_value(&n.held)),
            ("open_holds", Value::Int(n.open_holds as i64)),
            ("loop_denials", Value::Int(n.loop_denials as i64)),
            ("saved", Value::Money(n.saved as i128)),
            ("limits", Value::Array(limits)),
        ])
    }

    /// For each calendar limit on the scope: the recent burn rate (usage
    /// over the last [`limit::recent_window_ms`] of the period's kind), the
    /// usage projected at the period's end at that rate, and when the limit
    /// runs out at that rate (None if it does not within the period).
    /// Rolling and TOTAL limits have no period end and are listed without a
    /// projection.
    pub(in crate::state) fn forecast(&self, now: u64, scope: &str) -> Value {
        if let Err(e) = scope::validate_scope(scope) {
            return syntax(e);
        }
        let Some(node) = self.nodes.get(scope).filter(|n| !n.limits.is_empty()) else {
            return Value::err(ErrorCode::Unknown, format!("budget {scope}"));
        };
        let items = node
            .limits
            .iter()
            .map(|l| {
                let dim = l.spec.dim;
                let (used, held) = (l.used(now) as u128, l.held_part(node.held.get(dim)) as u128);
                let mut f = vec![
                    ("dim", Value::str(dim.name())),
                    ("window", Value::Str(l.spec.window.describe())),
                    ("limit", amount_value(dim, l.spec.amount as i128)),
                    ("used", amount_value(dim, used as i128)),
                    ("held", amount_value(dim, held as i128)),
                ];
                let Some(b) = l.burn(now, held as u64) else {
                    f.extend([("projected", Value::Null), ("exhausted_at", Value::Null)]);
                    return Value::Map(f);
                };
                f.extend([
                    ("period_end", Value::Int(b.period_end as i64)),
                    ("recent", amount_value(dim, b.recent as i128)),
                    ("rate_window_ms", Value::Int(b.rate_window_ms as i64)),
                ]);
                // As the forecast alert: no projection from less than a whole
                // rate window (it would extrapolate a month from seconds),
                // and a field that says so and until when.
                if b.full_window {
                    f.extend([
                        ("projection", Value::str("ready")),
                        ("projected", amount_value(dim, b.projected as i128)),
                        (
                            "exhausted_at",
                            b.exhausted_at.map_or(Value::Null, |t| Value::Int(t as i64)),
                        ),
                    ]);
                } else {
                    f.extend([
                        ("projection", Value::str("watching")),
                        ("ready_at", Value::Int(b.watched_at as i64)),
                        ("projected", Value::Null),
                        ("exhausted_at", Value::Null),
                    ]);
                }
                Value::Map(f)
            })
            .collect();
        Value::Map(vec![
            ("scope", Value::str(scope)),
            ("limits", Value::Array(items)),
        ])
    }
}

#[cfg(test)]
mod forecast_tests {
    use crate::state::limit::{LimitSpec, Period, Window, Zone};
    use crate::state::*;

    #[test]
    fn the_recent_rate_projects_the_end_and_the_exhaustion_time() {
        let mut st = State::new(Config::default());
        let mut out = Vec::new();
        let day = limit::period_start(Period::Day, Zone::UTC, 1_795_305_600_123);
        let hour = 3_600_000;
        let set = Command::BudgetSet {
            scope: "org:f".into(),
            limits: vec![LimitSpec {
                dim: Dim::Tokens,
                window: Window::Calendar(Period::Day, Zone::UTC),
                amount: 5000,
            }],
        };
        st.apply(day, &set, &mut out);
        let spend = |input| Command::Spend {
            run: None,
            scope: "org:f".into(),
            model: "gpt-4o".into(),
            usage: price::Usage {
                input,
                output: 0,
                cached: 0,
                cache_write: 0,
            },
            id: None,
        };
        // 300 early in the day, then 590 within the last two hours: the
        // rate follows the recent pace, not the day's average.
        st.apply(day + hour, &spend(300), &mut out);
        // An hour in, less than the 2 h rate window was watched: no
        // projection yet, and the reply says until when.
        let early = st.apply(
            day + hour,
            &Command::Forecast {
                scope: "org:f".into(),
            },
            &mut Vec::new(),
        );
        let Some(Value::Array(early)) = early.field("limits") else {
            panic!("{early:?}")
        };
        assert_eq!(early[0].field("projection"), Some(&Value::str("watching")));
        assert_eq!(
            early[0].field("ready_at"),
            Some(&Value::Int((day + 2 * hour) as i64))
        );
        assert_eq!(early[0].field("projected"), Some(&Value::Null));
        assert_eq!(early[0].field("exhausted_at"), Some(&Value::Null));
        st.apply(day + 5 * hour, &spend(590), &mut out);
        let now = day + 6 * hour;
        let forecast = |st: &mut State, now| {
            let cmd = Command::Forecast {
                scope: "org:f".into(),
            };
            let v = st.apply(now, &cmd, &mut Vec::new());
            let Value::Array(limits) = v.field("limits").unwrap().clone() else {
                panic!("{v:?}")
            };
            limits[0].clone()
        };
        let l = forecast(&mut st, now);
        // The 2 h window is 60 buckets of 2 min; at a bucket boundary the
        // live ones cover 59 × 2 min = 7,080,000 ms. 590 in that is one token
        // per 12 s: 5400 more in the 18 h left, 6290 in all.
        assert_eq!(l.field("projection"), Some(&Value::str("ready")));
        assert_eq!(l.field("recent"), Some(&Value::Int(590)));
        assert_eq!(l.field("rate_window_ms"), Some(&Value::Int(7_080_000)));
        assert_eq!(l.field("projected"), Some(&Value::Int(6290)));
        // The 4110 left last 4110 × 12 s.
        assert_eq!(
            l.field("exhausted_at"),
            Some(&Value::Int((now + 4110 * 12_000) as i64))
        );
        assert_eq!(
            l.field("period_end"),
            Some(&Value::Int((day + 24 * hour) as i64))
        );
        // Two quiet hours later the recent rate is nil: no more spend
        // projected, and the limit does not run out.
        let l = forecast(&mut st, now + 2 * hour);
        assert_eq!(l.field("projected"), Some(&Value::Int(890)));
        assert_eq!(l.field("exhausted_at"), Some(&Value::Null));
        let none = Command::Forecast {
            scope: "org:none".into(),
        };
        assert!(st.apply(now, &none, &mut out).is_error());
    }
}

#[cfg(test)]
mod get_tests {
    use crate::state::*;

    #[test]
    fn a_scope_with_holds_but_no_limits_has_no_budget() {
        let mut st = State::new(Config::default());
        let mut out = Vec::new();
        let r = Command::Reserve(ReserveArgs::new(
            "h",
            "org:a/team:t",
            "gpt-4o",
            1,
            OutputAsk::Tokens(0),
        ));
        st.apply(1_000, &r, &mut out);
        // org:a carries the hold (a node) but no limits: no budget.
        let get = Command::BudgetGet {
            scope: "org:a".into(),
        };
        let v = st.apply(1_000, &get, &mut out);
        assert!(
            matches!(
                &v,
                Value::Error {
                    code: ErrorCode::Unknown,
                    ..
                }
            ),
            "{v:?}"
        );
    }
}
