//! Auditing: a canonical digest of everything balances depend on (to
//! compare a live state with one rebuilt from the ledger) and the
//! invariants every state must keep.

use super::*;

impl State {
    /// A canonical view of everything balances depend on, for comparing a
    /// live or snapshotted state with one rebuilt from the ledger. Leaves out
    /// what only serves idempotent replies (settled holds, spend ids), whose
    /// forgetting depends on when housekeeping ran.
    pub fn digest(&self) -> Digest {
        Digest {
            next_seq: self.next_seq,
            nodes: self
                .nodes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            open_holds: self
                .holds
                .iter()
                .filter(|(_, h)| h.status == HoldStatus::Open)
                .map(|(k, h)| (k.to_string(), h))
                .collect(),
            prices: self.prices.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            runs: self
                .runs
                .runs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            alerts: self.alerts.clone(),
            grants: self.grants.clone(),
        }
    }

    /// Checks the internal invariants: every scope's held equals the sum of
    /// the open holds at or below it, and the expiry index matches the open
    /// holds. Returns a description of the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.holds.check_expiry_index()?;
        let mut held: BTreeMap<String, (Dims, u64)> = BTreeMap::new();
        for (_, h) in self.holds.iter() {
            if h.status != HoldStatus::Open {
                continue;
            }
            for s in chain(&h.scope) {
                let e = held.entry(s.to_string()).or_default();
                e.0.add(&h.amounts);
                e.1 += 1;
            }
        }
        for (s, n) in &self.nodes {
            let (want, count) = held.get(s.as_str()).copied().unwrap_or_default();
            if n.held != want || n.open_holds != count {
                return Err(format!(
                    "scope {s}: held {:?}/{} but open holds sum to {:?}/{}",
                    n.held, n.open_holds, want, count
                ));
            }
        }
        Ok(())
    }
}

/// See [`State::digest`].
#[derive(Debug, PartialEq, Eq)]
pub struct Digest {
    pub next_seq: u64,
    pub nodes: BTreeMap<String, Node>,
    pub open_holds: BTreeMap<String, Hold>,
    pub prices: BTreeMap<String, Price>,
    pub runs: BTreeMap<String, runs::Run>,
    pub alerts: alerts::Alerts,
    pub grants: BTreeMap<String, grant::GrantLine>,
}

impl Digest {
    /// Empties every rolling window, to compare states whose windows were
    /// counted under different rules (a layout 3 snapshot).
    pub fn leave_out_rolling_windows(&mut self) {
        for n in self.nodes.values_mut() {
            for l in &mut n.limits {
                if let limit::Window::Rolling(ms) = l.spec.window {
                    l.counter = limit::Counter::Rolling(limit::Ring::new(ms));
                }
            }
        }
    }

    /// The first difference between two digests, described for a person.
    pub fn diff(&self, other: &Digest) -> Option<String> {
        if self.next_seq != other.next_seq {
            return Some(format!(
                "ledger position: {} vs {}",
                self.next_seq - 1,
                other.next_seq - 1
            ));
        }
        for (k, v) in &self.nodes {
            match other.nodes.get(k) {
                None => return Some(format!("scope {k}: missing on the other side")),
                Some(o) if o != v => return Some(format!("scope {k}: {v:?} vs {o:?}")),
                _ => {}
            }
        }
        if let Some(k) = other.nodes.keys().find(|k| !self.nodes.contains_key(*k)) {
            return Some(format!("scope {k}: missing on this side"));
        }
        for (k, v) in &self.open_holds {
            if other.open_holds.get(k) != Some(v) {
                return Some(format!(
                    "open hold {k}: {v:?} vs {:?}",
                    other.open_holds.get(k)
                ));
            }
        }
        if let Some(k) = other
            .open_holds
            .keys()
            .find(|k| !self.open_holds.contains_key(*k))
        {
            return Some(format!("open hold {k}: missing on this side"));
        }
        if self.prices != other.prices {
            return Some("price tables differ".into());
        }
        if self.runs != other.runs {
            let k = self
                .runs
                .keys()
                .chain(other.runs.keys())
                .find(|k| self.runs.get(*k) != other.runs.get(*k));
            return Some(format!("run {}: differs", k.map_or("?", |k| k.as_str())));
        }
        if self.alerts != other.alerts {
            return Some("alert rules or fired alerts differ".into());
        }
        None
    }
}
