//! Agent runs: the loop guard's steps (STEP, RUN.END), and the runs that
//! RESERVE / SPEND … RUN name (their cost per run is reported from the
//! ledger, `family::run_report`).
//!
//! A run is allowed `max` steps, and no signature (say, a tool call with its
//! arguments) `repeats` times within its last `window` steps. A step that
//! breaks either rule is denied (a normal reply, and a `StepDenied` ledger
//! entry so denials are counted per scope for alerts); allowed steps are
//! `Step` entries, so runs replay. Runs that stop stepping are forgotten
//! after `Config::run_timeout_ms` (a `RunEnd` entry from `tick`).
//!
//! Signatures are kept as a stable 64-bit digest (the first 8 bytes of their
//! SHA-256): bounded memory for any signature size, and the same digest in
//! every process, so repeats are still caught after a restart.

use std::collections::{BTreeSet, VecDeque};

use sha2::{Digest as _, Sha256};

/// Defaults when STEP gives none.
pub const DEFAULT_MAX_STEPS: u64 = 100;
pub const DEFAULT_REPEATS: u64 = 3;
pub const DEFAULT_WINDOW: u64 = 5;
/// The most recent signatures a run keeps (the largest WINDOW accepted).
pub const MAX_WINDOW: u64 = 100;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Run {
    pub scope: Option<String>,
    pub steps: u64,
    pub denials: u64,
    /// Digests of the last `MAX_WINDOW` allowed steps, newest last.
    pub recent: VecDeque<u64>,
    pub last_at: u64,
}

impl Run {
    /// How many of the last `window - 1` steps had this signature, counting
    /// this one.
    pub fn repeats(&self, sig: u64, window: u64) -> u64 {
        let earlier = window.saturating_sub(1) as usize;
        1 + self
            .recent
            .iter()
            .rev()
            .take(earlier)
            .filter(|&&s| s == sig)
            .count() as u64
    }
}

pub fn signature_digest(signature: &[u8]) -> u64 {
    let h = Sha256::digest(signature);
    u64::from_be_bytes(h[..8].try_into().expect("a SHA-256 has 32 bytes"))
}

/// Runs by id, with their last activity in order (for the timeout).
#[derive(Clone, Debug, Default)]
pub struct Runs {
    pub runs: super::Map<String, Run>,
    idle: BTreeSet<(u64, String)>,
}

impl Runs {
    /// Runs read from a snapshot (the idle index is rebuilt when needed).
    pub fn from_runs(runs: impl IntoIterator<Item = (String, Run)>) -> Runs {
        Runs {
            runs: runs.into_iter().collect(),
            idle: BTreeSet::new(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Run> {
        self.runs.get(id)
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The run, created if new, marked active at `ts` (its place in the
    /// idle index moves); it keeps the scope of its first step or call.
    pub fn touch(&mut self, id: &str, scope: Option<&str>, ts: u64) -> &mut Run {
        self.rebuild_idle_if_needed();
        if let Some(run) = self.runs.get(id) {
            self.idle.remove(&(run.last_at, id.to_string()));
        }
        let run = self.runs.entry(id.to_string()).or_default();
        if run.scope.is_none() {
            run.scope = scope.map(str::to_string);
        }
        run.last_at = ts;
        self.idle.insert((ts, id.to_string()));
        run
    }

    /// Records an allowed step.
    pub fn step(&mut self, id: &str, scope: Option<&str>, sig: u64, ts: u64) {
        let run = self.touch(id, scope, ts);
        run.steps += 1;
        run.recent.push_back(sig);
        if run.recent.len() > MAX_WINDOW as usize {
            run.recent.pop_front();
        }
    }

    /// Records a denied step (the run counts as active).
    pub fn denied(&mut self, id: &str, scope: Option<&str>, ts: u64) {
        self.touch(id, scope, ts).denials += 1;
    }

    pub fn end(&mut self, id: &str) -> Option<Run> {
        self.rebuild_idle_if_needed();
        let run = self.runs.remove(id)?;
        self.idle.remove(&(run.last_at, id.to_string()));
        Some(run)
    }

    /// Runs idle since before `cutoff`, oldest first.
    pub fn idle_before(&mut self, cutoff: u64) -> Vec<String> {
        self.rebuild_idle_if_needed();
        self.idle
            .iter()
            .take_while(|(t, _)| *t < cutoff)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// The idle index is not in snapshots; it is rebuilt from the runs.
    fn rebuild_idle_if_needed(&mut self) {
        if self.idle.len() != self.runs.len() {
            self.idle = self
                .runs
                .iter()
                .map(|(id, r)| (r.last_at, id.clone()))
                .collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_count_within_the_window_only() {
        let mut r = Run::default();
        for s in [1, 2, 1, 3, 4, 5] {
            r.recent.push_back(s);
        }
        // Last 4 earlier steps: 1 3 4 5 → one earlier 1, plus this one.
        assert_eq!(r.repeats(1, 5), 2);
        // Last 2 earlier steps: 4 5.
        assert_eq!(r.repeats(1, 3), 1);
        assert_eq!(r.repeats(9, 100), 1);
    }

    #[test]
    fn digests_are_stable() {
        assert_eq!(
            signature_digest(b"search(q=budget)"),
            signature_digest(b"search(q=budget)")
        );
        assert_ne!(signature_digest(b"a"), signature_digest(b"b"));
        // The same in every process: a fixed value.
        assert_eq!(signature_digest(b""), 0xe3b0c44298fc1c14);
    }
}
