//! The run family (the loop guard): STEP and RUN.END.

use crate::state::outcome::{Outcome, Stepped};
use crate::state::*;

impl State {
    pub(in crate::state) fn step(
        &mut self,
        now: u64,
        run: &str,
        signature: &[u8],
        scope: Option<&str>,
        (max, repeats, window): (Option<u64>, Option<u64>, Option<u64>),
        out: &mut Vec<Entry>,
    ) -> Outcome {
        if let Some(s) = scope {
            if let Err(e) = scope::validate_scope(s) {
                return refuse(e);
            }
        }
        let max = max.unwrap_or(self.config.loop_max_steps);
        let repeats = repeats.unwrap_or(self.config.loop_repeats);
        let window = window.unwrap_or(self.config.loop_window);
        if max == 0 || repeats < 2 || window < repeats || window > runs::MAX_WINDOW {
            return refuse(format!(
                "MAX must be at least 1, REPEATS at least 2, and WINDOW from REPEATS to {}",
                runs::MAX_WINDOW
            ));
        }
        let sig = runs::signature_digest(signature);
        let (steps, seen) = match self.runs.get(run) {
            Some(r) => (r.steps, r.repeats(sig, window)),
            None => (0, 1),
        };
        let reason = if steps >= max {
            Some("max_steps")
        } else if seen >= repeats {
            Some("repeated")
        } else {
            None
        };
        let scope_owned = scope.map(str::to_string);
        match reason {
            Some(_) => {
                self.emit(
                    now,
                    EntryKind::StepDenied {
                        run: run.to_string(),
                        scope: scope_owned,
                    },
                    out,
                );
                if let Some(s) = scope {
                    self.check_alerts(now, s, out);
                }
            }
            None => {
                self.emit(
                    now,
                    EntryKind::Step {
                        run: run.to_string(),
                        scope: scope_owned,
                        sig,
                    },
                    out,
                );
            }
        }
        let allowed = reason.is_none() as u64;
        Outcome::Stepped(Stepped {
            run: run.to_string(),
            denied: reason,
            steps: steps + allowed,
            remaining: if reason.is_none() { max - steps - 1 } else { 0 },
            repeats: seen,
        })
    }

    /// RUN.END: ends a run (its steps are forgotten), with the outcome
    /// its client reports, for cost per successful run.
    pub(in crate::state) fn run_end(
        &mut self,
        now: u64,
        run: &str,
        outcome: Option<RunOutcome>,
        out: &mut Vec<Entry>,
    ) -> Outcome {
        match self.runs.get(run) {
            Some(r) => {
                let steps = r.steps;
                self.emit(
                    now,
                    EntryKind::RunEnd {
                        run: run.to_string(),
                        outcome,
                    },
                    out,
                );
                Outcome::RunEnded {
                    run: run.to_string(),
                    steps,
                    outcome,
                }
            }
            None => Outcome::refused(ErrorCode::Unknown, format!("run {run}")),
        }
    }
}
