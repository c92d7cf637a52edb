//! Alert rules on a scope, and deciding when they fire.
//!
//! A scope's rules (set over the admin API) are checked by the state machine
//! right after each change that could trip them (a commit or a spend for
//! thresholds, forecasts and spikes; a loop-guard denial or an overrun for
//! runaway). A firing is a ledger entry (`EntryKind::Alert`), so it happens
//! once per period per rule however often the check runs, survives restarts,
//! and is replayed like any other entry. Delivering it (webhooks) is the
//! server's job, outside the state machine; a delivery is recorded as
//! `EntryKind::AlertDelivered` so it is not sent again after a restart.
//!
//! Every decision is integer arithmetic on entry timestamps: replaying the
//! ledger reproduces the same alerts.

use std::collections::{BTreeMap, VecDeque};

use super::limit::{self, Dim, Limit, Window};

pub const MAX_THRESHOLDS: usize = 10;
/// Percentages above 1000 % make no sense for a limit.
pub const MAX_THRESHOLD_PERCENT: u32 = 1000;
/// Alerts kept for `/v1/alerts` (the oldest are forgotten first).
pub const MAX_ALERT_LOG: usize = 1000;
/// A spike is measured against the hour before its window.
pub const SPIKE_BASELINE_MS: u64 = 3_600_000;
pub const MINUTE_MS: u64 = 60_000;
pub const MAX_SPIKE_WINDOW_MS: u64 = 30 * MINUTE_MS;
pub const MAX_RUNAWAY_EVENTS: u32 = 10_000;
pub const MAX_RUNAWAY_WINDOW_MS: u64 = 24 * 3_600_000;
pub const MAX_WEBHOOK_LEN: usize = 2048;
/// The rules on one scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertRules {
    /// Percentages of each calendar or TOTAL limit's amount; each fires once
    /// per period when committed usage reaches it.
    pub thresholds: Vec<u32>,
    /// Fire once per period when a calendar limit's usage, projected to the
    /// period's end at the period's rate so far, exceeds the limit.
    pub forecast: bool,
    pub spike: Option<SpikeRule>,
    pub runaway: Option<RunawayRule>,
    /// Where to POST this scope's alerts; None: the server's default.
    pub webhook: Option<String>,
}

/// Usage of `dim` in the last `window_ms` above `factor` × its average per
/// window over the hour before, and at least `min`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpikeRule {
    pub dim: Dim,
    pub factor: u32,
    pub window_ms: u64,
    pub min: u64,
}

/// At least `events` loop-guard denials or overrun commits at or below the
/// scope within `window_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunawayRule {
    pub events: u32,
    pub window_ms: u64,
}

impl AlertRules {
    /// Checks the rules' values; normalises the thresholds (sorted, unique).
    pub fn validate(mut self) -> Result<AlertRules, String> {
        self.thresholds.sort_unstable();
        self.thresholds.dedup();
        if self.thresholds.len() > MAX_THRESHOLDS {
            return Err(format!("at most {MAX_THRESHOLDS} thresholds"));
        }
        if self
            .thresholds
            .iter()
            .any(|&t| t == 0 || t > MAX_THRESHOLD_PERCENT)
        {
            return Err(format!(
                "thresholds are percentages from 1 to {MAX_THRESHOLD_PERCENT}"
            ));
        }
        if let Some(s) = &self.spike {
            if s.factor < 2 {
                return Err("spike factor must be at least 2".into());
            }
            if s.window_ms < MINUTE_MS
                || s.window_ms > MAX_SPIKE_WINDOW_MS
                || s.window_ms % MINUTE_MS != 0
            {
                return Err("spike window must be whole minutes from 1m to 30m".into());
            }
        }
        if let Some(r) = &self.runaway {
            if r.events == 0 || r.events > MAX_RUNAWAY_EVENTS {
                return Err(format!("runaway events must be 1 to {MAX_RUNAWAY_EVENTS}"));
            }
            if r.window_ms == 0 || r.window_ms > MAX_RUNAWAY_WINDOW_MS {
                return Err("runaway window must be from 1ms to 24h".into());
            }
        }
        if let Some(w) = &self.webhook {
            if !(w.starts_with("http://") || w.starts_with("https://")) || w.len() > MAX_WEBHOOK_LEN
            {
                return Err(format!(
                    "webhook must be an http:// or https:// URL of at most {MAX_WEBHOOK_LEN} bytes"
                ));
            }
        }
        if self.thresholds.is_empty()
            && !self.forecast
            && self.spike.is_none()
            && self.runaway.is_none()
        {
            return Err("give at least one rule: thresholds, forecast, spike or runaway".into());
        }
        Ok(self)
    }
}

/// One firing, as recorded in the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertEvent {
    pub scope: String,
    /// threshold | forecast | spike | runaway
    pub rule: String,
    /// Which rule of the scope: e.g. `threshold:80:tokens:per_day`.
    pub key: String,
    /// Start of the period it fired for (once per period per key).
    pub period: u64,
    pub dim: Option<Dim>,
    /// What was observed (usage, projection, window usage or event count).
    pub observed: u64,
    /// What it was compared with (the threshold amount, the limit, …).
    pub bound: u64,
    pub message: String,
    /// The scope's webhook at the time it fired (None: the server's).
    pub webhook: Option<String>,
}

/// A fired alert as listed by `/v1/alerts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertRecord {
    /// The ledger seq of its `Alert` entry.
    pub id: u64,
    pub at: u64,
    pub event: AlertEvent,
    pub delivered_at: Option<u64>,
}

/// A scope's rules and what their checks remember.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeAlerts {
    pub rules: AlertRules,
    /// When the rules were set (a spike needs a full baseline after it).
    pub since: u64,
    /// Rule key → the period it last fired for.
    pub fired: BTreeMap<String, u64>,
    /// Per-minute usage of the spike rule's dimension: (minute, amount).
    pub minutes: VecDeque<(u64, u64)>,
    /// Times of recent runaway events (within the rule's window).
    pub events: VecDeque<u64>,
}

/// Every scope's rules and the recent alerts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Alerts {
    pub scopes: BTreeMap<String, ScopeAlerts>,
    pub log: VecDeque<AlertRecord>,
}

fn fmt_amount(dim: Dim, v: u64) -> String {
    if dim == Dim::Cost {
        format!("${}", super::money::format_usd(v))
    } else {
        format!("{v} {}", dim.name().to_ascii_lowercase())
    }
}

impl ScopeAlerts {
    pub fn new(rules: AlertRules, now: u64) -> ScopeAlerts {
        ScopeAlerts {
            rules,
            since: now,
            ..Default::default()
        }
    }

    fn not_yet(&self, key: &str, period: u64) -> bool {
        self.fired.get(key) != Some(&period)
    }

    /// Books usage for the spike rule (applied from ledger entries).
    pub fn record_usage(&mut self, ts: u64, usage: &limit::Dims) {
        let Some(spike) = self.rules.spike else {
            return;
        };
        let amount = usage.get(spike.dim);
        let minute = ts / MINUTE_MS;
        match self.minutes.back_mut() {
            Some((m, v)) if *m == minute => *v = v.saturating_add(amount),
            _ => self.minutes.push_back((minute, amount)),
        }
        let span = (spike.window_ms + SPIKE_BASELINE_MS) / MINUTE_MS;
        while self
            .minutes
            .front()
            .is_some_and(|(m, _)| *m + span <= minute)
        {
            self.minutes.pop_front();
        }
    }

    /// Books a runaway event (a loop-guard denial or an overrun).
    pub fn record_event(&mut self, ts: u64) {
        let Some(r) = self.rules.runaway else {
            return;
        };
        self.events.push_back(ts);
        while self.events.front().is_some_and(|t| t + r.window_ms <= ts) {
            self.events.pop_front();
        }
        // Only the count within the window matters, never more than needed.
        while self.events.len() > r.events as usize {
            self.events.pop_front();
        }
    }

    /// Threshold and forecast checks against the scope's limits at `now`.
    pub fn check_limits(&self, scope: &str, limits: &[Limit], now: u64, out: &mut Vec<AlertEvent>) {
        self.check_limits_with(scope, limits, now, &|l: &Limit| l.used(now), out)
    }

    /// `check_limits` with each limit's usage as `used_of` gives it (the
    /// cluster's, for a global limit in cluster mode: issue #29). The
    /// forecast keeps this node's own rate.
    pub fn check_limits_with(
        &self,
        scope: &str,
        limits: &[Limit],
        now: u64,
        used_of: &dyn Fn(&Limit) -> u64,
        out: &mut Vec<AlertEvent>,
    ) {
        for l in limits {
            let (dim, amount) = (l.spec.dim, l.spec.amount);
            let period = match l.spec.window {
                Window::Calendar(p, z) => limit::period_start(p, z, now),
                Window::Total => 0,
                Window::Rolling(_) => continue,
            };
            let used = used_of(l);
            // Nothing to format unless a threshold or the forecast is reached.
            let desc = || {
                let w = l
                    .spec
                    .window
                    .describe()
                    .to_ascii_lowercase()
                    .replace(' ', "_");
                format!("{}:{w}", dim.name().to_ascii_lowercase())
            };
            for &t in &self.rules.thresholds {
                let level = (amount as u128 * t as u128).div_ceil(100) as u64;
                if used < level {
                    continue;
                }
                let desc = desc();
                let key = format!("threshold:{t}:{desc}");
                if self.not_yet(&key, period) {
                    out.push(AlertEvent {
                        scope: scope.to_string(),
                        rule: "threshold".into(),
                        message: format!(
                            "{scope} used {} of its {desc} limit of {} ({t}% threshold)",
                            fmt_amount(dim, used),
                            fmt_amount(dim, amount)
                        ),
                        key,
                        period,
                        dim: Some(dim),
                        observed: used,
                        bound: level,
                        webhook: self.rules.webhook.clone(),
                    });
                }
            }
            if self.rules.forecast && used < amount {
                // A forecast from less than a whole rate window is noise.
                let Some(burn) = l.burn(now, 0).filter(|b| b.full_window) else {
                    continue;
                };
                let projected = burn.projected;
                if projected <= amount {
                    continue;
                }
                let desc = desc();
                let key = format!("forecast:{desc}");
                if self.not_yet(&key, period) {
                    out.push(AlertEvent {
                        scope: scope.to_string(),
                        rule: "forecast".into(),
                        message: format!(
                            "{scope} is on course for {} against its {desc} limit of {}",
                            fmt_amount(dim, projected),
                            fmt_amount(dim, amount)
                        ),
                        key,
                        period,
                        dim: Some(dim),
                        observed: projected,
                        bound: amount,
                        webhook: self.rules.webhook.clone(),
                    });
                }
            }
        }
    }

    /// The spike check at `now` (after usage was recorded).
    pub fn check_spike(&self, scope: &str, now: u64, out: &mut Vec<AlertEvent>) {
        let Some(s) = self.rules.spike else {
            return;
        };
        // A baseline is only meaningful once a whole hour of it was watched.
        if now < self.since + s.window_ms + SPIKE_BASELINE_MS {
            return;
        }
        let minute = now / MINUTE_MS;
        let w = s.window_ms / MINUTE_MS;
        let b = SPIKE_BASELINE_MS / MINUTE_MS;
        let (mut recent, mut baseline) = (0u64, 0u64);
        for &(m, v) in &self.minutes {
            if m + w > minute {
                recent = recent.saturating_add(v);
            } else if m + w + b > minute {
                baseline = baseline.saturating_add(v);
            }
        }
        // recent / w > factor × baseline / b, without division.
        let spiking = recent >= s.min.max(1)
            && recent as u128 * b as u128 > s.factor as u128 * baseline as u128 * w as u128;
        // Once per window: the period is the window the firing fell in.
        let period = now - now % s.window_ms;
        let key = format!("spike:{}", s.dim.name());
        let cooled = self
            .fired
            .get(&key)
            .is_none_or(|&last| last + s.window_ms <= period);
        if spiking && cooled {
            let avg = (baseline as u128 * w as u128 / b as u128) as u64;
            out.push(AlertEvent {
                scope: scope.to_string(),
                rule: "spike".into(),
                message: format!(
                    "{scope} used {} in the last {}, over {}× its average of {} per {} in the hour before",
                    fmt_amount(s.dim, recent),
                    limit::format_duration_ms(s.window_ms),
                    s.factor,
                    fmt_amount(s.dim, avg),
                    limit::format_duration_ms(s.window_ms),
                ),
                key,
                period,
                dim: Some(s.dim),
                observed: recent,
                bound: avg.saturating_mul(s.factor as u64),
                webhook: self.rules.webhook.clone(),
            });
        }
    }

    /// The runaway check at `now` (after the event was recorded).
    pub fn check_runaway(&self, scope: &str, now: u64, out: &mut Vec<AlertEvent>) {
        let Some(r) = self.rules.runaway else {
            return;
        };
        let n = self
            .events
            .iter()
            .filter(|&&t| t + r.window_ms > now)
            .count() as u64;
        let key = "runaway".to_string();
        let cooled = self
            .fired
            .get(&key)
            .is_none_or(|&last| last + r.window_ms <= now);
        if n >= r.events as u64 && cooled {
            out.push(AlertEvent {
                scope: scope.to_string(),
                rule: "runaway".into(),
                message: format!(
                    "{scope} had {n} loop-guard denials or overruns within {}",
                    limit::format_duration_ms(r.window_ms)
                ),
                key,
                period: now,
                dim: None,
                observed: n,
                bound: r.events as u64,
                webhook: self.rules.webhook.clone(),
            });
        }
    }
}

impl Alerts {
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.scopes.len() + self.log.len()
    }

    /// Records a firing (from its ledger entry).
    pub fn fired(&mut self, id: u64, at: u64, event: &AlertEvent) {
        if let Some(s) = self.scopes.get_mut(&event.scope) {
            s.fired.insert(event.key.clone(), event.period);
        }
        self.log.push_back(AlertRecord {
            id,
            at,
            event: event.clone(),
            delivered_at: None,
        });
        while self.log.len() > MAX_ALERT_LOG {
            self.log.pop_front();
        }
    }

    pub fn record(&self, id: u64) -> Option<&AlertRecord> {
        let i = self.log.binary_search_by_key(&id, |r| r.id).ok()?;
        self.log.get(i)
    }

    pub fn delivered(&mut self, id: u64, at: u64) {
        if let Ok(i) = self.log.binary_search_by_key(&id, |r| r.id) {
            self.log[i].delivered_at.get_or_insert(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::limit::{Counter, Dims, LimitSpec, Period, Zone};

    fn day_limit(amount: u64, used: u64, now: u64) -> Limit {
        day_limit_in(Zone::UTC, amount, used, now)
    }

    fn day_limit_in(zone: Zone, amount: u64, used: u64, now: u64) -> Limit {
        let window = Window::Calendar(Period::Day, zone);
        let mut counter = Counter::new(window, now);
        counter.charge(window, now, used);
        Limit {
            spec: LimitSpec {
                dim: Dim::Tokens,
                window,
                amount,
            },
            counter,
        }
    }

    const DAY: u64 = 86_400_000;

    #[test]
    fn thresholds_fire_once_per_level_and_period() {
        let rules = AlertRules {
            thresholds: vec![80, 50],
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(rules.thresholds, vec![50, 80]);
        let mut s = ScopeAlerts::new(rules, 0);
        let now = 100 * DAY + 1000;
        let mut out = Vec::new();
        s.check_limits("org:a", &[day_limit(1000, 499, now)], now, &mut out);
        assert!(out.is_empty());
        s.check_limits("org:a", &[day_limit(1000, 800, now)], now, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].key, "threshold:50:tokens:per_day");
        assert_eq!(out[1].bound, 800);
        for e in &out {
            s.fired.insert(e.key.clone(), e.period);
        }
        let mut again = Vec::new();
        s.check_limits("org:a", &[day_limit(1000, 900, now)], now, &mut again);
        assert!(again.is_empty(), "{again:?}");
        // The next day is a new period.
        let tomorrow = now + DAY;
        s.check_limits(
            "org:a",
            &[day_limit(1000, 600, tomorrow)],
            tomorrow,
            &mut again,
        );
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].period, 101 * DAY);
    }

    #[test]
    fn a_zoned_limit_alerts_once_per_local_day() {
        let la = Zone::parse("America/Los_Angeles").unwrap();
        let limit = |used: u64, now: u64| day_limit_in(la, 1000, used, now);
        let rules = AlertRules {
            thresholds: vec![80],
            ..Default::default()
        };
        let mut s = ScopeAlerts::new(rules.validate().unwrap(), 0);
        // 2027-03-13 15:30 PST (23:30Z), then 23:00 PST (07:00Z, already
        // the 14th in UTC), then 2027-03-14 01:00 PST (a new local day).
        let afternoon = 1_805_007_600_000 - 7 * 3_600_000 - 1_800_000;
        let mut out = Vec::new();
        s.check_limits("org:a", &[limit(900, afternoon)], afternoon, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].period, 1_804_924_800_000, "local midnight, 08:00Z");
        assert_eq!(
            out[0].key,
            "threshold:80:tokens:per_day_tz_america/los_angeles"
        );
        s.fired.insert(out[0].key.clone(), out[0].period);
        let evening = 1_805_007_600_000;
        let mut again = Vec::new();
        s.check_limits("org:a", &[limit(900, evening)], evening, &mut again);
        assert!(
            again.is_empty(),
            "UTC midnight is not Los Angeles' midnight: {again:?}"
        );
        let next_local = evening + 2 * 3_600_000;
        s.check_limits("org:a", &[limit(900, next_local)], next_local, &mut again);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].period, 1_805_011_200_000, "2027-03-14T08:00Z");
    }

    #[test]
    fn forecast_needs_a_whole_rate_window_and_follows_the_recent_pace() {
        let rules = AlertRules {
            forecast: true,
            ..Default::default()
        };
        let s = ScopeAlerts::new(rules, 0);
        let start = 10 * DAY;
        let hour = 3_600_000;
        let window = Window::Calendar(Period::Day, Zone::UTC);
        let mut l = day_limit(1000, 0, start);
        let mut out = Vec::new();
        // 1 h in: 100 of 1000 would project 2400, but the limit was watched
        // for less than its 2 h rate window.
        l.counter.charge(window, start + hour / 2, 100);
        s.check_limits("t", std::slice::from_ref(&l), start + hour, &mut out);
        assert!(out.is_empty());
        // 4 h in: the early 100 left the window; the 400 of the last 2 h
        // (7,080,000 ms covered at a bucket boundary) project
        // 500 + 400 × 20 h / 7,080,000 ms = 500 + 4067.
        l.counter.charge(window, start + 3 * hour, 400);
        let now = start + 4 * hour;
        s.check_limits("t", std::slice::from_ref(&l), now, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].observed, 4567);
        // A quiet stretch projects nothing more: no alert at the same usage.
        let mut later = Vec::new();
        let quiet = start + 7 * hour;
        s.check_limits("t", std::slice::from_ref(&l), quiet, &mut later);
        assert!(later.is_empty(), "{later:?}");
    }

    #[test]
    fn no_forecast_without_its_rule_nor_once_the_limit_is_reached() {
        let start = 10 * DAY;
        let hour = 3_600_000;
        let window = Window::Calendar(Period::Day, Zone::UTC);
        // 4 h in at a pace that projects past the limit (as above).
        let at = |used_last: u64| {
            let mut l = day_limit(1000, 0, start);
            l.counter.charge(window, start + 3 * hour, used_last);
            l
        };
        let now = start + 4 * hour;
        // A threshold rule alone never forecasts.
        let thresholds = ScopeAlerts::new(
            AlertRules {
                thresholds: vec![90],
                ..Default::default()
            },
            0,
        );
        let mut out = Vec::new();
        thresholds.check_limits("t", std::slice::from_ref(&at(400)), now, &mut out);
        assert!(out.is_empty(), "{out:?}");
        // At the limit exactly, a forecast says nothing the threshold
        // does not: the limit is reached, not on course to be.
        let forecast = ScopeAlerts::new(
            AlertRules {
                forecast: true,
                ..Default::default()
            },
            0,
        );
        forecast.check_limits("t", std::slice::from_ref(&at(1000)), now, &mut out);
        assert!(out.is_empty(), "{out:?}");
        forecast.check_limits("t", std::slice::from_ref(&at(999)), now, &mut out);
        assert_eq!(out.len(), 1, "just under it, on course past it");
        assert_eq!(out[0].rule, "forecast");
    }

    /// A spike of 3× the hour's average, over 5 minutes, of tokens.
    fn five_minute_spike_rules() -> AlertRules {
        AlertRules {
            spike: Some(SpikeRule {
                dim: Dim::Tokens,
                factor: 3,
                window_ms: 5 * MINUTE_MS,
                min: 10,
            }),
            ..Default::default()
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn spike_needs_a_baseline_and_a_factor() {
        let rules = five_minute_spike_rules();
        let mut s = ScopeAlerts::new(rules, 0);
        // 100 tokens a minute for 70 minutes: steady, no spike.
        let mut out = Vec::new();
        for m in 0..70 {
            let t = m * MINUTE_MS;
            s.record_usage(t, &Dims::call(100, 0, 0));
            s.check_spike("a", t, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        assert!(s.minutes.len() <= 65);
        // Then 2000 in one minute: 2000 + 4×100 in 5 min vs 3 × 500.
        let t = 70 * MINUTE_MS;
        s.record_usage(t, &Dims::call(2000, 0, 0));
        s.check_spike("a", t, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].observed, 2400);
        assert_eq!(out[0].bound, 1500);
    }

    #[test]
    fn spike_waits_a_whole_baseline_after_its_rules_and_fires_once_a_window() {
        let rules = five_minute_spike_rules();
        // Rules set at minute 7: the first spike can count from minute
        // 7 + 5 + 60 = 72.
        let since = 7 * MINUTE_MS;
        let mut s = ScopeAlerts::new(rules, since);
        let mut out = Vec::new();
        for m in 7..71 {
            s.record_usage(m * MINUTE_MS, &Dims::call(100, 0, 0));
        }
        let t = 71 * MINUTE_MS;
        s.record_usage(t, &Dims::call(5000, 0, 0));
        s.check_spike("a", t, &mut out);
        assert!(out.is_empty(), "a baseline of less than an hour: {out:?}");
        let t = 72 * MINUTE_MS;
        s.record_usage(t, &Dims::call(100, 0, 0));
        s.check_spike("a", t, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(
            out[0].period,
            70 * MINUTE_MS,
            "the 5-minute window it fell in"
        );
        s.fired.insert(out[0].key.clone(), out[0].period);
        // Once per window: not again at minute 74, again in the next window.
        let t = 74 * MINUTE_MS;
        s.record_usage(t, &Dims::call(5000, 0, 0));
        s.check_spike("a", t, &mut out);
        assert_eq!(out.len(), 1);
        let t = 75 * MINUTE_MS;
        s.record_usage(t, &Dims::call(5000, 0, 0));
        s.check_spike("a", t, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1].period, 75 * MINUTE_MS);
    }

    #[test]
    fn runaway_counts_events_within_the_window() {
        let rules = AlertRules {
            runaway: Some(RunawayRule {
                events: 3,
                window_ms: 1000,
            }),
            ..Default::default()
        };
        let mut s = ScopeAlerts::new(rules, 0);
        let mut out = Vec::new();
        for t in [0, 600, 1700, 2000] {
            s.record_event(t);
            s.check_runaway("a", t, &mut out);
        }
        assert!(out.is_empty(), "0 ages out before the third: {out:?}");
        s.record_event(2100);
        s.check_runaway("a", 2100, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].observed, 3);
    }

    #[test]
    fn bad_rules_are_refused() {
        let bad = [
            AlertRules::default(),
            AlertRules {
                thresholds: vec![0],
                ..Default::default()
            },
            AlertRules {
                forecast: true,
                webhook: Some("ftp://x".into()),
                ..Default::default()
            },
            AlertRules {
                spike: Some(SpikeRule {
                    dim: Dim::Cost,
                    factor: 1,
                    window_ms: MINUTE_MS,
                    min: 0,
                }),
                ..Default::default()
            },
        ];
        for r in bad {
            assert!(r.clone().validate().is_err(), "{r:?}");
        }
    }
}
