//! The spend report (`/v1/reports/spend`): settled spend and cache savings
//! over a time range, grouped by scope level, model, UTC day or hour,
//! folded from the ledger. Pure, like the runs report (`run_report.rs`):
//! entries in (in ledger order), figures out; the admin API reads the
//! ledger and formats.
//!
//! A commit names its hold; the hold's entry, earlier in the ledger, names
//! the scope and model. Spends name both; a cache hit's savings name a
//! scope only (so they are left out of the groups by model).

use std::collections::BTreeMap;

use super::{scope, Entry, EntryKind, Map};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpendGroup {
    /// The scope cut to `level` segments.
    Scope {
        level: usize,
    },
    Model,
    /// The UTC day (`2026-12-02`) or hour (`2026-12-02T14:00Z`).
    Day,
    Hour,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendQuery {
    pub group: SpendGroup,
    /// Only spend at or below this scope.
    pub scope: Option<String>,
    /// Only spend booked in `[from, to)` (ms since the epoch).
    pub from: Option<u64>,
    pub to: Option<u64>,
}

/// One group's figures (cost and savings in nano-USD).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpendTally {
    pub cost: u64,
    pub tokens: u64,
    pub requests: u64,
    pub saved: u64,
}

impl SpendTally {
    pub fn add(&mut self, o: &SpendTally) {
        self.cost = self.cost.saturating_add(o.cost);
        self.tokens = self.tokens.saturating_add(o.tokens);
        self.requests = self.requests.saturating_add(o.requests);
        self.saved = self.saved.saturating_add(o.saved);
    }
}

/// Several books' answers to one spend query as one (a cluster's nodes,
/// each its own ledger: issue #29): groups of the same key summed, sorted
/// as one answer is (cost, largest first, then key), the totals summed.
pub fn merge(
    parts: Vec<(Vec<(String, SpendTally)>, SpendTally)>,
) -> (Vec<(String, SpendTally)>, SpendTally) {
    let mut groups: BTreeMap<String, SpendTally> = BTreeMap::new();
    let mut total = SpendTally::default();
    for (rows, t) in parts {
        total.add(&t);
        for (key, g) in rows {
            groups.entry(key).or_default().add(&g);
        }
    }
    let mut rows: Vec<(String, SpendTally)> = groups.into_iter().collect();
    rows.sort_by(|a, b| b.1.cost.cmp(&a.1.cost).then_with(|| a.0.cmp(&b.0)));
    (rows, total)
}

/// The fold: feed it the ledger in order, then `finish`.
#[derive(Debug)]
pub struct SpendReport {
    query: SpendQuery,
    /// hold → (scope, model), from its Hold entry.
    holds: Map<String, (String, String)>,
    groups: Map<String, SpendTally>,
}

impl SpendReport {
    pub fn new(query: SpendQuery) -> SpendReport {
        SpendReport {
            query,
            holds: Map::default(),
            groups: Map::default(),
        }
    }

    pub fn add(&mut self, e: &Entry) {
        let call = |tokens: u64, cost: u64| SpendTally {
            cost,
            tokens,
            requests: 1,
            ..SpendTally::default()
        };
        let (scope, model, tally) = match &e.kind {
            EntryKind::Hold {
                id, scope, model, ..
            } => {
                self.holds
                    .insert(id.clone(), (scope.clone(), model.clone()));
                return;
            }
            EntryKind::Commit {
                id, usage, cost, ..
            } => match self.holds.get(id) {
                Some((s, m)) => (
                    s.clone(),
                    Some(m.clone()),
                    call(usage.input + usage.output, *cost),
                ),
                None => return,
            },
            EntryKind::Spend {
                scope,
                model,
                usage,
                cost,
                ..
            } => (
                scope.clone(),
                Some(model.clone()),
                call(usage.input + usage.output, *cost),
            ),
            EntryKind::Saved { scope, cost } => (
                scope.clone(),
                None,
                SpendTally {
                    saved: *cost,
                    ..SpendTally::default()
                },
            ),
            _ => return,
        };
        let q = &self.query;
        if q.from.is_some_and(|f| e.ts < f) || q.to.is_some_and(|t| e.ts >= t) {
            return;
        }
        if q.scope
            .as_deref()
            .is_some_and(|p| !scope::is_within(&scope, p))
        {
            return;
        }
        let utc = |format: &str| {
            chrono::DateTime::from_timestamp_millis(e.ts as i64)
                .map_or(String::new(), |t| t.format(format).to_string())
        };
        let key = match (q.group, model) {
            (SpendGroup::Scope { level }, _) => scope::top(&scope, level).to_string(),
            (SpendGroup::Model, Some(model)) => model,
            (SpendGroup::Model, None) => return,
            (SpendGroup::Day, _) => utc("%Y-%m-%d"),
            (SpendGroup::Hour, _) => utc("%Y-%m-%dT%H:00Z"),
        };
        self.groups.entry(key).or_default().add(&tally);
    }

    /// The groups, largest cost first (then by key), and their total.
    pub fn finish(self) -> (Vec<(String, SpendTally)>, SpendTally) {
        let mut rows: Vec<(String, SpendTally)> = self.groups.into_iter().collect();
        rows.sort_by(|a, b| b.1.cost.cmp(&a.1.cost).then_with(|| a.0.cmp(&b.0)));
        let mut total = SpendTally::default();
        for (_, g) in &rows {
            total.add(g);
        }
        (rows, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::limit::Dims;
    use crate::state::price::Usage;

    #[test]
    fn merged_answers_sum_each_key_once_and_sort_as_one_answer() {
        let t = |cost, tokens, requests, saved| SpendTally {
            cost,
            tokens,
            requests,
            saved,
        };
        let a = (
            vec![
                ("org:a".to_string(), t(5, 50, 1, 0)),
                ("org:b".into(), t(3, 30, 1, 1)),
            ],
            t(8, 80, 2, 1),
        );
        let b = (
            vec![
                ("org:b".to_string(), t(4, 40, 2, 2)),
                ("org:c".into(), t(6, 60, 1, 0)),
            ],
            t(10, 100, 3, 2),
        );
        let (rows, total) = merge(vec![a, b]);
        assert_eq!(
            rows,
            vec![
                ("org:b".to_string(), t(7, 70, 3, 3)),
                ("org:c".into(), t(6, 60, 1, 0)),
                ("org:a".into(), t(5, 50, 1, 0)),
            ]
        );
        assert_eq!(total, t(18, 180, 5, 3));
        // Equal costs: by key.
        let (rows, _) = merge(vec![(
            vec![
                ("z".to_string(), t(1, 0, 0, 0)),
                ("y".into(), t(1, 0, 0, 0)),
            ],
            t(2, 0, 0, 0),
        )]);
        assert_eq!(rows[0].0, "y");
        assert_eq!(merge(Vec::new()), (Vec::new(), SpendTally::default()));
    }

    fn report(
        kinds: &[EntryKind],
        group: SpendGroup,
        scope: Option<&str>,
    ) -> Vec<(String, SpendTally)> {
        let mut r = SpendReport::new(SpendQuery {
            group,
            scope: scope.map(str::to_string),
            from: Some(2_000),
            to: None,
        });
        for (i, k) in kinds.iter().enumerate() {
            r.add(&Entry {
                seq: i as u64 + 1,
                ts: (i as u64 + 1) * 1_000,
                kind: k.clone(),
            });
        }
        r.finish().0
    }

    #[test]
    fn commits_take_their_holds_scope_and_model_and_savings_have_no_model() {
        let usage = Usage {
            input: 10,
            output: 5,
            ..Usage::default()
        };
        let kinds = [
            // At 1 s, before `from`: not counted.
            EntryKind::Spend {
                id: None,
                scope: "org:a/t:x".into(),
                model: "m1".into(),
                usage,
                cost: 99,
                run: None,
            },
            EntryKind::Hold {
                id: "h".into(),
                scope: "org:a/t:y".into(),
                model: "m2".into(),
                input: 10,
                output: 5,
                ttl_ms: None,
                amounts: Dims::call(10, 5, 7),
                expires_at: u64::MAX,
                run: None,
            },
            EntryKind::Commit {
                id: "h".into(),
                usage,
                cost: 7,
                late: false,
            },
            EntryKind::Saved {
                scope: "org:b".into(),
                cost: 3,
            },
        ];
        let by_scope = report(&kinds, SpendGroup::Scope { level: 1 }, None);
        assert_eq!(by_scope[0].0, "org:a");
        assert_eq!(
            (
                by_scope[0].1.cost,
                by_scope[0].1.tokens,
                by_scope[0].1.requests
            ),
            (7, 15, 1)
        );
        assert_eq!((by_scope[1].0.as_str(), by_scope[1].1.saved), ("org:b", 3));
        let by_model = report(&kinds, SpendGroup::Model, None);
        assert_eq!(by_model.len(), 1);
        assert_eq!(by_model[0].0, "m2");
        assert!(report(&kinds, SpendGroup::Model, Some("org:b")).is_empty());
    }
}
