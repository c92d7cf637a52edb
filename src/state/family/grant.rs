//! Cluster mode's grant lines (`state/grant.rs`): what the cluster agent
//! records when the store confirms a grant, the lowering of a line before
//! room is given back, and each line's use. Called by the agent through the
//! engine (`EngineHandle::decide_with`), not by clients: no command names
//! them.

use crate::state::grant::{GrantLine, GrantUse};
use crate::state::*;

impl State {
    /// The node's usage and open holds of a limit (dimension and window)
    /// on `scope` at `now`; None when the scope has no such limit.
    fn taken(&self, now: u64, scope: &str, dim: Dim, window: limit::Window) -> Option<(u64, u64)> {
        let node = self.nodes.get(scope)?;
        let l = (node.limits.iter()).find(|l| l.spec.dim == dim && l.spec.window == window)?;
        Some((
            l.used(now).saturating_add(l.held_part(node.held.get(dim))),
            l.spec.amount,
        ))
    }

    /// Every global limit this node has a line of, or needs one for (its
    /// scopes' calendar and TOTAL limits now), with its use. Lines of
    /// limits a scope no longer has are listed with amount 0.
    pub fn grant_uses(&self, now: u64) -> Vec<GrantUse> {
        let Some(rules) = self.config.cluster else {
            return Vec::new();
        };
        let mut out: BTreeMap<String, GrantUse> = BTreeMap::new();
        for (scope, node) in self.nodes.iter() {
            for l in &node.limits {
                let Some((key, period)) = grant::key(scope, &l.spec, now) else {
                    continue;
                };
                let line = self.grants.get(&key).cloned().unwrap_or(GrantLine {
                    scope: scope.clone(),
                    spec: l.spec,
                    period,
                    epoch: 0,
                    base: 0,
                    granted: 0,
                    reported: 0,
                });
                out.insert(key, self.grant_use(now, line, rules));
            }
        }
        for (key, line) in &self.grants {
            if !out.contains_key(key) && !line.ended(now) {
                out.insert(key.clone(), self.grant_use(now, line.clone(), rules));
            }
        }
        out.into_values().collect()
    }

    fn grant_use(&self, now: u64, line: GrantLine, rules: grant::ClusterRules) -> GrantUse {
        let (taken, amount) = self
            .taken(now, &line.scope, line.spec.dim, line.spec.window)
            .unwrap_or((0, 0));
        GrantUse {
            used: taken.saturating_sub(line.base),
            amount,
            u_max: rules.u_max(amount),
            line,
        }
    }

    /// Records a line the store confirmed.
    pub fn grant_confirm(&mut self, now: u64, line: GrantLine, out: &mut Vec<Entry>) {
        self.emit(now, EntryKind::Grant(line), out);
    }

    /// Lowers the line `key` to what the node has used (or reported, if
    /// more) plus `keep`, before the rest is given back to the store; the
    /// lowered line, or None when there is nothing to give back. From here
    /// on the node cannot use what it is about to give.
    pub fn grant_lower(
        &mut self,
        now: u64,
        key: &str,
        keep: u64,
        out: &mut Vec<Entry>,
    ) -> Option<GrantLine> {
        let rules = self.config.cluster?;
        let line = self.grants.get(key)?.clone();
        let u = self.grant_use(now, line, rules);
        let floor = u.used.max(u.line.reported).saturating_add(keep);
        if u.line.granted <= floor {
            return None;
        }
        let lowered = GrantLine {
            granted: floor,
            ..u.line
        };
        self.emit(now, EntryKind::Grant(lowered.clone()), out);
        Some(lowered)
    }
}
