//! The alert family: rules per scope, the checks that fire alerts after a
//! commit, spend or loop-guard denial, the alert log, deliveries.

use crate::state::outcome::Outcome;
use crate::state::*;

impl State {
    /// Checks the alert rules of `scope` and its ancestors after a change
    /// there, and records what fires.
    pub(in crate::state) fn check_alerts(&mut self, now: u64, scope: &str, out: &mut Vec<Entry>) {
        if self.alerts.is_empty() {
            return;
        }
        let mut fired = Vec::new();
        for s in chain(scope) {
            let Some(a) = self.alerts.scopes.get(s) else {
                continue;
            };
            if let Some(n) = self.nodes.get(s) {
                // Cluster mode: a global limit's threshold is the cluster's
                // use, as the agent last read it (`cluster_seen`) with
                // this node's own use now; until a view is read, this
                // node's own (never more than the cluster's).
                // (Rolling windows are not checked: no key is looked up.)
                let used_of = |l: &crate::state::limit::Limit| -> u64 {
                    let own = l.used(now);
                    if self.config.cluster.is_none() {
                        return own;
                    }
                    let Some((key, _)) = grant::key(s, &l.spec, now) else {
                        return own;
                    };
                    let Some(view) = self.cluster_seen.get(&key) else {
                        return own;
                    };
                    let held = l.held_part(n.held.get(l.spec.dim));
                    let base = self.grants.get(&key).map_or(0, |g| g.base);
                    view.figures(own, held, base).used.max(own)
                };
                a.check_limits_with(s, &n.limits, now, &used_of, &mut fired);
            }
            a.check_spike(s, now, &mut fired);
            a.check_runaway(s, now, &mut fired);
        }
        for ev in fired {
            self.emit(now, EntryKind::Alert(ev), out);
        }
    }

    /// Cluster mode: the keys of the global lines that alert thresholds
    /// watch (the calendar and TOTAL limits of every scope with
    /// thresholds), for the node to read their pools (`alerts_seen`).
    pub fn alert_keys(&self, now: u64) -> Vec<String> {
        if self.config.cluster.is_none() {
            return Vec::new();
        }
        let mut keys = Vec::new();
        for (s, a) in &self.alerts.scopes {
            if a.rules.thresholds.is_empty() {
                continue;
            }
            let Some(n) = self.nodes.get(s) else {
                continue;
            };
            for l in n.limits.iter().filter(|l| !l.is_rolling()) {
                keys.extend(grant::key(s, &l.spec, now).map(|(k, _)| k));
            }
        }
        keys
    }

    /// Cluster mode: the pools of the lines `alert_keys` named, as the node
    /// just read them (an input, like the clock); the thresholds are
    /// checked again against the cluster's use, and what fires is
    /// recorded (each node fires its own alert; the webhook task delivers
    /// one per cluster, deduplicated through the store).
    pub fn alerts_seen(
        &mut self,
        now: u64,
        views: BTreeMap<String, grant::PoolView>,
        out: &mut Vec<Entry>,
    ) {
        self.cluster_seen = views;
        let scopes: Vec<String> = (self.alerts.scopes.iter())
            .filter(|(_, a)| !a.rules.thresholds.is_empty())
            .map(|(s, _)| s.clone())
            .collect();
        for s in scopes {
            self.check_alerts(now, &s, out);
        }
    }

    pub(in crate::state) fn alert_rules_set(
        &mut self,
        now: u64,
        scope: &str,
        rules: &Option<alerts::AlertRules>,
        out: &mut Vec<Entry>,
    ) -> Value {
        if let Err(e) = scope::validate_scope(scope) {
            return syntax(e);
        }
        let rules = match rules.clone().map(alerts::AlertRules::validate).transpose() {
            Ok(r) => r,
            Err(e) => return syntax(e),
        };
        if rules.is_none() && !self.alerts.scopes.contains_key(scope) {
            return Value::err(ErrorCode::Unknown, format!("alert rules on {scope}"));
        }
        let value = rules.as_ref().map(|r| alert_rules_value(scope, r));
        self.emit(
            now,
            EntryKind::AlertRules {
                scope: scope.to_string(),
                rules,
            },
            out,
        );
        // Usage already past a threshold fires now, not at the next commit.
        self.check_alerts(now, scope, out);
        value.unwrap_or(Value::Ok)
    }

    /// Every scope's alert rules at or below `prefix`.
    pub(in crate::state) fn alert_rules_list(
        &self,
        prefix: Option<&str>,
        visible: Visible,
    ) -> Value {
        Value::Array(
            self.alerts
                .scopes
                .iter()
                .filter(|(s, _)| visible(s) && prefix.is_none_or(|p| scope::is_within(s, p)))
                .map(|(s, a)| alert_rules_value(s, &a.rules))
                .collect(),
        )
    }

    /// Fired alerts with an id above `after`, oldest first.
    pub(in crate::state) fn alert_list(
        &self,
        after: u64,
        limit: usize,
        undelivered: bool,
        prefix: Option<&str>,
        visible: Visible,
    ) -> Value {
        Value::Array(
            self.alerts
                .log
                .iter()
                .filter(|r| {
                    r.id > after
                        && visible(&r.event.scope)
                        && (!undelivered || r.delivered_at.is_none())
                        && prefix.is_none_or(|p| scope::is_within(&r.event.scope, p))
                })
                .take(limit)
                .map(alert_value)
                .collect(),
        )
    }

    /// The webhook task delivered alert `id` (once; a repeat is OK).
    pub(in crate::state) fn alert_delivered(
        &mut self,
        now: u64,
        id: u64,
        out: &mut Vec<Entry>,
    ) -> Outcome {
        match self.alerts.record(id) {
            None => Outcome::refused(ErrorCode::Unknown, format!("alert {id}")),
            Some(r) if r.delivered_at.is_some() => Outcome::Done,
            Some(_) => {
                self.emit(now, EntryKind::AlertDelivered { id }, out);
                Outcome::Done
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::state::alerts::AlertEvent;
    use crate::state::*;

    fn fire(st: &mut State, scope: &str) -> u64 {
        let seq = st.next_seq;
        let event = AlertEvent {
            scope: scope.into(),
            rule: "threshold".into(),
            key: format!("k{seq}"),
            period: 0,
            dim: None,
            observed: 1,
            bound: 1,
            message: "m".into(),
            webhook: None,
        };
        st.apply_entry(&Entry {
            seq,
            ts: 1_000 + seq,
            kind: EntryKind::Alert(event),
        });
        seq
    }

    fn ids(v: &Value) -> Vec<i64> {
        let Value::Array(items) = v else {
            panic!("{v:?}")
        };
        items
            .iter()
            .map(|a| match a.field("id") {
                Some(Value::Int(n)) => *n,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn alert_pages_start_after_the_cursor_and_a_delivery_is_recorded_once() {
        let mut st = State::new(Config::default());
        let mut out = Vec::new();
        let (a, b) = (fire(&mut st, "org:a"), fire(&mut st, "org:b"));
        let list = |after| Command::AlertList {
            after,
            limit: 10,
            undelivered: false,
            prefix: None,
        };
        assert_eq!(
            ids(&st.apply(5_000, &list(0), &mut out)),
            [a as i64, b as i64]
        );
        // The cursor is the last id seen: the next page starts after it.
        assert_eq!(ids(&st.apply(5_000, &list(a), &mut out)), [b as i64]);
        assert!(ids(&st.apply(5_000, &list(b), &mut out)).is_empty());

        let delivered = Command::AlertDelivered { id: a };
        assert_eq!(st.apply(5_000, &delivered, &mut out), Value::Ok);
        assert_eq!(out.len(), 1, "the first delivery is a ledger entry");
        assert_eq!(st.apply(6_000, &delivered, &mut out), Value::Ok);
        assert_eq!(out.len(), 1, "a repeated delivery writes nothing");
        let undelivered = Command::AlertList {
            after: 0,
            limit: 10,
            undelivered: true,
            prefix: None,
        };
        assert_eq!(ids(&st.apply(6_000, &undelivered, &mut out)), [b as i64]);
    }
}
