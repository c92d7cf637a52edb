//! Evolving: `apply_entry`, the one place balances change. Live commands
//! go through it too (`State::emit`), so replaying the ledger rebuilds the
//! live state exactly.

use super::limit::Window;
use super::*;

impl State {
    /// Whether `e` can be applied next: the invariants `apply_entry`
    /// asserts, checked first when the entry comes from disk (recovery,
    /// `ledger verify`), so a ledger that breaks them is refused with what
    /// and where instead of stopping the process.
    pub fn check_entry(&self, e: &Entry) -> Result<(), String> {
        if e.seq != self.next_seq {
            return Err(format!(
                "entry {} where entry {} was expected",
                e.seq, self.next_seq
            ));
        }
        let open = |id: &str| self.holds.get(id).map(|h| h.status == HoldStatus::Open);
        match &e.kind {
            EntryKind::Commit { id, late, .. } => match open(id) {
                None => Err(format!("entry {}: commit of unknown hold {id}", e.seq)),
                Some(o) if o == *late => Err(format!(
                    "entry {}: commit of hold {id} marked late={late} while the hold is {}",
                    e.seq,
                    if o { "open" } else { "ended" }
                )),
                Some(_) => Ok(()),
            },
            EntryKind::Release { id } | EntryKind::Expire { id } => match open(id) {
                Some(true) => Ok(()),
                _ => Err(format!("entry {}: hold {id} is not open", e.seq)),
            },
            _ => Ok(()),
        }
    }

    /// Applies one ledger entry. The only place balances change.
    pub fn apply_entry(&mut self, e: &Entry) {
        assert_eq!(
            e.seq, self.next_seq,
            "ledger entries apply in order without gaps"
        );
        let ts = e.ts;
        match &e.kind {
            EntryKind::BudgetSet { scope, limits } => {
                let node = self.nodes.entry(scope.clone()).or_default();
                let mut old = std::mem::take(&mut node.limits);
                // New rolling limits, which count the requests still open as
                // if they had been there when those were made.
                let mut fresh = Vec::new();
                node.limits = limits
                    .iter()
                    .enumerate()
                    .map(|(i, spec)| {
                        // A limit that stays (same dimension and window) keeps its usage.
                        let counter = match old
                            .iter()
                            .position(|l| l.spec.dim == spec.dim && l.spec.window == spec.window)
                        {
                            Some(j) => old.swap_remove(j).counter,
                            None => {
                                if matches!(spec.window, Window::Rolling(_)) {
                                    fresh.push(i);
                                }
                                Counter::new(spec.window, ts)
                            }
                        };
                        Limit {
                            spec: *spec,
                            counter,
                        }
                    })
                    .collect();
                if !fresh.is_empty() {
                    self.count_open_holds(scope, &fresh, ts);
                }
            }
            EntryKind::BudgetDel { scope } => {
                if let Some(n) = self.nodes.get_mut(scope) {
                    n.limits.clear();
                }
            }
            EntryKind::Hold {
                id,
                scope,
                model,
                input,
                output,
                ttl_ms,
                amounts,
                expires_at,
                run,
            } => {
                if let Some(run) = run {
                    self.runs.touch(run, Some(scope), ts);
                }
                for s in chain(scope) {
                    let n = self.node_mut(s);
                    n.held.add(amounts);
                    n.open_holds += 1;
                    // A request counts in rolling windows when it is made.
                    for l in &mut n.limits {
                        if let Counter::Rolling(r) = &mut l.counter {
                            r.add(ts, amounts.get(l.spec.dim));
                        }
                    }
                }
                let hold = Hold {
                    scope: scope.as_str().into(),
                    model: model.as_str().into(),
                    input: *input,
                    output: *output,
                    ttl_ms: *ttl_ms,
                    amounts: *amounts,
                    created_at: ts,
                    expires_at: *expires_at,
                    status: HoldStatus::Open,
                };
                self.holds.insert(id, hold);
            }
            EntryKind::Commit {
                id,
                usage,
                cost,
                late,
            } => {
                let h = self.hold(id);
                let (held, model) = (h.amounts, h.model.clone());
                let (scope, was_open) = self.end_hold(id);
                assert_eq!(
                    was_open, !late,
                    "a commit is late exactly when its hold had ended"
                );
                let actual = Dims::call(usage.input, usage.output, *cost);
                self.settle(&h, ts, Some(&actual));
                self.series.add(
                    &scope,
                    &model,
                    usage.input.saturating_add(usage.output),
                    *cost,
                );
                if !self.alerts.is_empty() {
                    let overrun = actual.get(Dim::Cost) > held.get(Dim::Cost)
                        || actual.get(Dim::Tokens) > held.get(Dim::Tokens);
                    self.alert_inputs(&scope, ts, &actual, overrun);
                }
                let settled = HoldStatus::Committed(Settlement {
                    usage: *usage,
                    cost: *cost,
                    late: *late,
                    at: ts,
                });
                self.holds.set_status(id, settled);
            }
            EntryKind::Release { id } | EntryKind::Expire { id } => {
                let h = self.hold(id);
                let (_, was_open) = self.end_hold(id);
                self.settle(&h, ts, None);
                assert!(was_open, "only an open hold is released or expires");
                let ended = match e.kind {
                    EntryKind::Release { .. } => HoldStatus::Released { at: ts },
                    _ => HoldStatus::Expired { at: ts },
                };
                self.holds.set_status(id, ended);
            }
            EntryKind::Spend {
                id,
                scope,
                model,
                usage,
                cost,
                run,
            } => {
                if let Some(run) = run {
                    self.runs.touch(run, Some(scope), ts);
                }
                let actual = Dims::call(usage.input, usage.output, *cost);
                self.charge(scope, ts, &actual);
                self.series.add(
                    scope,
                    model,
                    usage.input.saturating_add(usage.output),
                    *cost,
                );
                if !self.alerts.is_empty() {
                    self.alert_inputs(scope, ts, &actual, false);
                }
                if let Some(id) = id {
                    let r = SpendRecord {
                        scope: scope.clone(),
                        model: model.clone(),
                        usage: *usage,
                        cost: *cost,
                        at: ts,
                    };
                    self.spends.insert(id.clone(), r);
                    self.spends_seen.push_back((ts, id.clone()));
                }
            }
            EntryKind::PriceSet { model, price } => {
                // An entry without a maximum output (written before there
                // were any) keeps the one the model had.
                let known = self.prices.get(model).and_then(|p| p.max_output);
                let price = price.with_max_output(price.max_output.or(known));
                self.prices.insert(model.clone(), price);
            }
            EntryKind::Step { run, scope, sig } => {
                self.runs.step(run, scope.as_deref(), *sig, ts);
            }
            EntryKind::StepDenied { run, scope } => {
                self.runs.denied(run, scope.as_deref(), ts);
                if let Some(scope) = scope {
                    for s in chain(scope) {
                        self.node_mut(s).loop_denials += 1;
                    }
                    if !self.alerts.is_empty() {
                        self.alert_inputs(scope, ts, &Dims::default(), true);
                    }
                }
            }
            EntryKind::RunEnd { run, .. } => {
                self.runs.end(run);
            }
            EntryKind::Saved { scope, cost } => {
                for s in chain(scope) {
                    let n = self.node_mut(s);
                    n.saved = n.saved.saturating_add(*cost);
                }
            }
            EntryKind::AlertRules { scope, rules } => match rules {
                Some(rules) => {
                    let mut fresh = alerts::ScopeAlerts::new(rules.clone(), ts);
                    if let Some(old) = self.alerts.scopes.remove(scope) {
                        // What fired this period stays fired when rules change.
                        fresh.fired = old.fired;
                    }
                    self.alerts.scopes.insert(scope.clone(), fresh);
                }
                None => {
                    self.alerts.scopes.remove(scope);
                }
            },
            EntryKind::Alert(ev) => self.alerts.fired(e.seq, ts, ev),
            EntryKind::AlertDelivered { id } => self.alerts.delivered(*id, ts),
            EntryKind::Grant(line) => {
                // A line goes when its period is over, but a rolling line
                // stays while the store still counts its room: what it did
                // not use goes back from it (`grant_uses` lists it). The
                // store's answer to a take may arrive after the period it
                // was for has ended; it is recorded all the same, or that
                // room would be stranded until it aged out of the window.
                let kept = |l: &grant::GrantLine| !l.ended(ts) || l.returnable(ts);
                self.grants.retain(|_, l| kept(l));
                if kept(line) {
                    self.grants.insert(line.key(), line.clone());
                }
            }
        }
        self.next_seq = e.seq + 1;
        self.last_ts = self.last_ts.max(ts);
    }

    /// Feeds the spike and runaway rules of the scope and its ancestors.
    pub(in crate::state) fn alert_inputs(
        &mut self,
        scope: &str,
        ts: u64,
        usage: &Dims,
        event: bool,
    ) {
        for s in chain(scope) {
            if let Some(a) = self.alerts.scopes.get_mut(s) {
                a.record_usage(ts, usage);
                if event {
                    a.record_event(ts);
                }
            }
        }
    }

    pub(in crate::state) fn node_mut(&mut self, scope: &str) -> &mut Node {
        if !self.nodes.contains_key(scope) {
            self.nodes.insert(scope.to_string(), Node::default());
        }
        self.nodes.get_mut(scope).unwrap()
    }

    /// Takes an open hold's amounts off every level it held on. Returns the
    /// hold's scope and whether it was open.
    pub(in crate::state) fn end_hold(&mut self, id: &str) -> (Arc<str>, bool) {
        let h = self.hold(id);
        if h.status != HoldStatus::Open {
            return (h.scope, false);
        }
        for s in chain(&h.scope) {
            let n = self.node_mut(s);
            n.held.sub(&h.amounts);
            n.open_holds -= 1;
        }
        (h.scope, true)
    }

    /// Settles hold `h` (as it was before this entry) at `ts`: books its
    /// `actual` usage (None: released or expired, nothing used) on its
    /// scope and every ancestor, into their calendar and TOTAL limits, and
    /// corrects their rolling windows, which counted it when it was made
    /// (`Ring::settle`: the bucket of its reservation while that is still
    /// in the window, an overrun in the current one after).
    pub(in crate::state) fn settle(&mut self, h: &Hold, ts: u64, actual: Option<&Dims>) {
        for s in chain(&h.scope) {
            let n = self.node_mut(s);
            if let Some(a) = actual {
                n.spent.add(a);
            }
            for l in &mut n.limits {
                let dim = l.spec.dim;
                let used = actual.map_or(0, |a| a.get(dim));
                match &mut l.counter {
                    Counter::Rolling(r) => {
                        // What the window counts of it now: all it held while
                        // open; after an expiry, nothing if the expiry gave it
                        // back, all of it if it had rolled off first.
                        let held = h.amounts.get(dim);
                        let counted = match h.status {
                            HoldStatus::Open => held,
                            HoldStatus::Expired { at } if r.counts(h.created_at, at) => 0,
                            HoldStatus::Expired { .. } => held,
                            _ => unreachable!("only open or expired holds are settled"),
                        };
                        r.settle(h.created_at, ts, counted, used);
                    }
                    c => {
                        if actual.is_some() {
                            c.charge(l.spec.window, ts, used);
                        }
                    }
                }
            }
        }
    }

    /// Counts the open holds at or below `scope` in the rolling limits
    /// `which` (indexes into its limits), made at `ts`.
    fn count_open_holds(&mut self, scope: &str, which: &[usize], ts: u64) {
        let Some(node) = self.nodes.get_mut(scope) else {
            return;
        };
        for (made, _, amounts) in self.holds.open_under(|s| scope::is_within(s, scope)) {
            for &i in which {
                let l = &mut node.limits[i];
                if let Counter::Rolling(r) = &mut l.counter {
                    r.add_at(made, ts, amounts.get(l.spec.dim));
                }
            }
        }
    }

    /// Counts every open hold in every rolling window: for a state from a
    /// snapshot written before rolling windows counted holds when made
    /// (snapshot layout 3), at `now`.
    pub fn count_open_holds_in_rolling_windows(&mut self, now: u64) {
        let scopes: Vec<(String, Vec<usize>)> = self
            .nodes
            .iter()
            .map(|(s, n)| {
                let which = (n.limits.iter().enumerate())
                    .filter(|(_, l)| l.is_rolling())
                    .map(|(i, _)| i)
                    .collect();
                (s.clone(), which)
            })
            .filter(|(_, w): &(String, Vec<usize>)| !w.is_empty())
            .collect();
        for (s, which) in scopes {
            self.count_open_holds(&s, &which, now);
        }
    }

    /// Books settled usage on the scope and every ancestor, and into every
    /// limit on them.
    pub(in crate::state) fn charge(&mut self, scope: &str, ts: u64, actual: &Dims) {
        for s in chain(scope) {
            let n = self.node_mut(s);
            n.spent.add(actual);
            for l in &mut n.limits {
                l.counter.charge(l.spec.window, ts, actual.get(l.spec.dim));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, kind: EntryKind) -> Entry {
        Entry {
            seq,
            ts: 1_000,
            kind,
        }
    }

    #[test]
    fn entries_from_disk_are_checked_before_they_are_applied() {
        let mut st = State::new(Config::default());
        let hold = EntryKind::Hold {
            id: "h1".into(),
            scope: "org:a".into(),
            model: "gpt-4o".into(),
            input: 1,
            output: 1,
            ttl_ms: None,
            amounts: Dims::call(1, 1, 1),
            expires_at: 5_000,
            run: None,
        };
        assert!(st
            .check_entry(&entry(2, hold.clone()))
            .unwrap_err()
            .contains("expected"));
        st.check_entry(&entry(1, hold.clone())).unwrap();
        st.apply_entry(&entry(1, hold));
        let usage = Usage::default();
        let late = EntryKind::Commit {
            id: "h1".into(),
            usage,
            cost: 0,
            late: true,
        };
        assert!(st
            .check_entry(&entry(2, late))
            .unwrap_err()
            .contains("late=true"));
        let unknown = EntryKind::Release { id: "nope".into() };
        assert!(st
            .check_entry(&entry(2, unknown))
            .unwrap_err()
            .contains("not open"));
        let release = EntryKind::Release { id: "h1".into() };
        st.check_entry(&entry(2, release.clone())).unwrap();
        st.apply_entry(&entry(2, release.clone()));
        // Released: neither released again, expired, nor committed on time.
        assert!(st.check_entry(&entry(3, release)).is_err());
        let expire = EntryKind::Expire { id: "h1".into() };
        assert!(st.check_entry(&entry(3, expire)).is_err());
        let on_time = EntryKind::Commit {
            id: "h1".into(),
            usage,
            cost: 0,
            late: false,
        };
        assert!(st
            .check_entry(&entry(3, on_time))
            .unwrap_err()
            .contains("ended"));
        let gone = EntryKind::Commit {
            id: "x".into(),
            usage,
            cost: 0,
            late: false,
        };
        assert!(st
            .check_entry(&entry(3, gone))
            .unwrap_err()
            .contains("unknown hold"));
    }
}
