//! Counters and histograms for `/metrics`, shared by the front ends (which
//! count commands, outcomes and latencies) and the engine (group sizes and
//! write latency). Lock-free atomics; every label set is fixed in advance,
//! so the number of series is bounded: commands × 18 buckets, 5 dimensions.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::state::limit::Dim;
use crate::state::Outcome;

/// Upper bounds of the latency buckets, in microseconds.
/// Fine below 3 ms, where the targets are (p99 ≤ 1 ms, p99.9 ≤ 3 ms).
pub const LATENCY_BUCKETS_US: [u64; 17] = [
    50, 100, 250, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000, 25_000, 50_000, 100_000,
    250_000, 500_000, 1_000_000,
];
/// Upper bounds of the group-size buckets, in ledger entries.
pub const GROUP_BUCKETS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024];

/// A Prometheus histogram with fixed bucket bounds.
pub struct Histogram {
    bounds: &'static [u64],
    /// Count per bucket (not cumulative; summed when written out), plus +Inf.
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes `name_bucket{labels,le=…}`, `_sum` and `_count`; `scale`
    /// divides bounds and sum (µs → s).
    fn write(&self, out: &mut String, name: &str, labels: &str, scale: f64) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => format!("{}", *b as f64 / scale),
                None => "+Inf".into(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum.load(Ordering::Relaxed) as f64 / scale;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(
            out,
            "{name}_count{braces} {}",
            self.count.load(Ordering::Relaxed)
        );
    }
}

/// Everything the front ends and the engine count.
pub struct Metrics {
    pub reserves_granted: AtomicU64,
    /// Denied RESERVEs by the dimension of the limit that denied them.
    pub reserves_denied: [AtomicU64; 5],
    pub commits: AtomicU64,
    pub overruns: AtomicU64,
    pub releases: AtomicU64,
    pub steps_denied: AtomicU64,
    pub errors: AtomicU64,
    /// Alert webhook POSTs that succeeded, and attempts that failed.
    pub webhook_delivered: AtomicU64,
    pub webhook_failed: AtomicU64,
    /// Request latency per command of the table, in µs (from the end of
    /// parsing to the reply being ready, including the durability wait).
    latency: Vec<(&'static str, Histogram)>,
    /// Ledger entries per group commit.
    pub group_entries: Histogram,
    /// Time to write and sync one group, in µs.
    pub write_us: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { … }")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reserves_granted: AtomicU64::new(0),
            reserves_denied: Default::default(),
            commits: AtomicU64::new(0),
            overruns: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            steps_denied: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            webhook_delivered: AtomicU64::new(0),
            webhook_failed: AtomicU64::new(0),
            latency: crate::state::commands::resp_commands()
                .map(|c| (c.name, Histogram::new(&LATENCY_BUCKETS_US)))
                .collect(),
            group_entries: Histogram::new(&GROUP_BUCKETS),
            write_us: Histogram::new(&LATENCY_BUCKETS_US),
        }
    }
}

impl Metrics {
    /// `command`: the command's position in `state::commands::COMMANDS`.
    pub fn observe_latency(&self, command: usize, us: u64) {
        if let Some((_, h)) = self.latency.get(command) {
            h.observe(us);
        }
    }

    /// Counts what an engine command did, from its typed outcome.
    pub fn count(&self, outcome: &Outcome) {
        let add = |a: &AtomicU64| {
            a.fetch_add(1, Ordering::Relaxed);
        };
        match outcome {
            Outcome::Refused { .. } => add(&self.errors),
            Outcome::Granted(_) => add(&self.reserves_granted),
            Outcome::Denied(d) => add(&self.reserves_denied[d.limit.dim.index()]),
            Outcome::Committed(c) => {
                add(&self.commits);
                if c.overrun_tokens != 0 {
                    add(&self.overruns);
                }
            }
            Outcome::Released(_) => add(&self.releases),
            Outcome::Stepped(s) if s.denied.is_some() => add(&self.steps_denied),
            _ => {}
        }
    }

    /// The Prometheus text for these metrics.
    pub fn write(&self, out: &mut String) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        head(
            out,
            "spendb_webhook_posts_total",
            "counter",
            "Alert webhook POSTs: delivered (2xx), or failed and to be retried.",
        );
        let _ = writeln!(
            out,
            "spendb_webhook_posts_total{{result=\"delivered\"}} {}",
            l(&self.webhook_delivered)
        );
        let _ = writeln!(
            out,
            "spendb_webhook_posts_total{{result=\"failed\"}} {}",
            l(&self.webhook_failed)
        );
        head(
            out,
            "spendb_reserves_total",
            "counter",
            "RESERVE outcomes (replays of a granted hold count as granted).",
        );
        let _ = writeln!(
            out,
            "spendb_reserves_total{{outcome=\"granted\",dim=\"\"}} {}",
            l(&self.reserves_granted)
        );
        for d in Dim::ALL {
            let _ = writeln!(
                out,
                "spendb_reserves_total{{outcome=\"denied\",dim=\"{}\"}} {}",
                d.name(),
                l(&self.reserves_denied[d.index()])
            );
        }
        for (name, help, v) in [
            ("spendb_commits_total", "Holds committed.", &self.commits),
            (
                "spendb_overruns_total",
                "Commits whose usage passed the hold.",
                &self.overruns,
            ),
            (
                "spendb_releases_total",
                "RELEASE commands answered.",
                &self.releases,
            ),
            (
                "spendb_steps_denied_total",
                "STEPs the loop guard denied.",
                &self.steps_denied,
            ),
            (
                "spendb_command_errors_total",
                "Engine commands answered with an error.",
                &self.errors,
            ),
        ] {
            head(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", l(v));
        }
        head(
            out,
            "spendb_request_duration_seconds",
            "histogram",
            "Time from a parsed request to its reply, durability wait included.",
        );
        for (cmd, h) in &self.latency {
            h.write(
                out,
                "spendb_request_duration_seconds",
                &format!("command=\"{cmd}\""),
                1e6,
            );
        }
        head(
            out,
            "spendb_group_commit_entries",
            "histogram",
            "Ledger entries written per group commit.",
        );
        self.group_entries
            .write(out, "spendb_group_commit_entries", "", 1.0);
        head(
            out,
            "spendb_group_commit_write_seconds",
            "histogram",
            "Time to write (and sync, per durability) one group commit.",
        );
        self.write_us
            .write(out, "spendb_group_commit_write_seconds", "", 1e6);
    }
}
