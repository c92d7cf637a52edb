//! Limits: a dimension × a window × an amount, and the counters that track
//! usage inside the window. Calendar windows are aligned in UTC, or for a
//! day, week or month in the time zone a limit names (`TZ <IANA name>`, the
//! tz database via chrono-tz); rolling windows are a fixed ring of
//! sub-buckets (fixed memory per limit, no event log). Time is always an
//! argument (ms since the Unix epoch).

use chrono::offset::LocalResult;
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// input + output tokens
    Tokens,
    Input,
    Output,
    Requests,
    /// nano-USD
    Cost,
}

impl Dim {
    pub const ALL: [Dim; 5] = [
        Dim::Tokens,
        Dim::Input,
        Dim::Output,
        Dim::Requests,
        Dim::Cost,
    ];

    pub fn parse(s: &str) -> Option<Dim> {
        Some(match s.to_ascii_uppercase().as_str() {
            "TOKENS" => Dim::Tokens,
            "INPUT" => Dim::Input,
            "OUTPUT" => Dim::Output,
            "REQUESTS" => Dim::Requests,
            "COST" => Dim::Cost,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Dim::Tokens => "TOKENS",
            Dim::Input => "INPUT",
            Dim::Output => "OUTPUT",
            Dim::Requests => "REQUESTS",
            Dim::Cost => "COST",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// An amount in every dimension at once (what a hold holds, what a call used).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dims(pub [u64; 5]);

impl Dims {
    /// The amounts of one model call.
    pub fn call(input: u64, output: u64, cost: u64) -> Dims {
        Dims([input.saturating_add(output), input, output, 1, cost])
    }
    pub fn get(&self, d: Dim) -> u64 {
        self.0[d.index()]
    }
    pub fn add(&mut self, o: &Dims) {
        for i in 0..5 {
            self.0[i] = self.0[i].saturating_add(o.0[i]);
        }
    }
    pub fn sub(&mut self, o: &Dims) {
        for i in 0..5 {
            debug_assert!(self.0[i] >= o.0[i], "held would go negative");
            self.0[i] = self.0[i].saturating_sub(o.0[i]);
        }
    }
}

/// A calendar period. Weeks start on Monday (ISO).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

/// The time zone a calendar limit's days, weeks and months are counted in:
/// UTC unless the limit says `TZ <IANA name>`. A local day is 23 or 25
/// hours long across a daylight-saving change; a period whose local
/// midnight is skipped begins when the clocks jump, and one whose midnight
/// happens twice begins at the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Zone(Tz);

impl Zone {
    pub const UTC: Zone = Zone(Tz::UTC);

    pub const fn from_tz(tz: Tz) -> Zone {
        Zone(tz)
    }

    /// A tz database name, e.g. `America/Los_Angeles` (any letter case).
    pub fn parse(name: &str) -> Result<Zone, String> {
        if let Ok(tz) = name.parse::<Tz>() {
            return Ok(Zone(tz));
        }
        (chrono_tz::TZ_VARIANTS.iter())
            .find(|tz| tz.name().eq_ignore_ascii_case(name))
            .map(|tz| Zone(*tz))
            .ok_or_else(|| {
                format!("unknown time zone '{name}' (an IANA tz database name, like America/Los_Angeles or Europe/Berlin)")
            })
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    pub fn is_utc(self) -> bool {
        self == Zone::UTC
    }

    /// The local date at `ms`. (UTC, every calendar limit without `TZ`,
    /// skips the zone's transition table: `used` asks on every check.)
    fn date(self, ms: u64) -> NaiveDate {
        if self.is_utc() {
            return to_dt(ms).date_naive();
        }
        self.0
            .from_utc_datetime(&to_dt(ms).naive_utc())
            .date_naive()
    }

    /// When the local day `d` begins: its midnight, the first one if the
    /// clocks went back over it, or the moment they jumped past it.
    fn midnight(self, d: NaiveDate) -> u64 {
        let naive = d.and_hms_opt(0, 0, 0).unwrap();
        if self.is_utc() {
            return to_ms(Utc.from_utc_datetime(&naive));
        }
        match self.0.from_local_datetime(&naive) {
            LocalResult::Single(t) => to_ms(t.to_utc()),
            LocalResult::Ambiguous(a, b) => to_ms(a.to_utc()).min(to_ms(b.to_utc())),
            LocalResult::None => self.first_at_or_after(naive),
        }
    }

    /// The first instant whose local time is at or after `naive` (which
    /// the clocks skipped). Offsets lie within ±15 h, so the answer is
    /// within 16 h of `naive` read as UTC, and local time only moves
    /// forward across a gap.
    fn first_at_or_after(self, naive: NaiveDateTime) -> u64 {
        let as_utc = to_ms(Utc.from_utc_datetime(&naive));
        let local = |ms: u64| {
            self.0
                .from_utc_datetime(&to_dt(ms).naive_utc())
                .naive_local()
        };
        let (mut lo, mut hi) = (
            as_utc.saturating_sub(16 * 3_600_000),
            as_utc + 16 * 3_600_000,
        );
        debug_assert!(local(lo) < naive && local(hi) >= naive);
        // Bounded: 32 h of milliseconds halve to one in 27 steps.
        for _ in 0..64 {
            if lo + 1 >= hi {
                break;
            }
            let mid = lo + (hi - lo) / 2;
            if local(mid) >= naive {
                hi = mid
            } else {
                lo = mid
            }
        }
        hi
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Window {
    /// A calendar period in a time zone (UTC for MINUTE and HOUR).
    Calendar(Period, Zone),
    /// Never resets.
    Total,
    /// A sliding window of this many milliseconds.
    Rolling(u64),
}

pub const MAX_ROLLING_MS: u64 = 31 * 24 * 3_600_000;
/// Sub-buckets per rolling window: the window's resolution is 1/60 of it.
pub const ROLLING_BUCKETS: u64 = 60;

impl Window {
    /// `PER <period>` argument.
    pub fn parse_period(s: &str) -> Option<Window> {
        Some(match s.to_ascii_uppercase().as_str() {
            "MINUTE" => Window::Calendar(Period::Minute, Zone::UTC),
            "HOUR" => Window::Calendar(Period::Hour, Zone::UTC),
            "DAY" => Window::Calendar(Period::Day, Zone::UTC),
            "WEEK" => Window::Calendar(Period::Week, Zone::UTC),
            "MONTH" => Window::Calendar(Period::Month, Zone::UTC),
            "TOTAL" => Window::Total,
            _ => return None,
        })
    }

    /// `ROLLING <duration>` argument: `500ms`, `60s`, `5m`, `1h`, `1d`, or bare ms.
    pub fn parse_rolling(s: &str) -> Result<Window, String> {
        let ms = parse_duration_ms(s)?;
        if ms == 0 || ms > MAX_ROLLING_MS {
            return Err(format!("rolling window '{s}' must be between 1ms and 31d"));
        }
        Ok(Window::Rolling(ms))
    }

    /// `TZ <name>` after `PER DAY|WEEK|MONTH`.
    pub fn in_zone(self, zone: Zone) -> Result<Window, String> {
        match self {
            _ if zone.is_utc() => Ok(self),
            Window::Calendar(p @ (Period::Day | Period::Week | Period::Month), _) => {
                Ok(Window::Calendar(p, zone))
            }
            _ => Err("TZ applies to PER DAY, WEEK or MONTH only".into()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Window::Calendar(p, z) if z.is_utc() => format!("PER {}", period_name(*p)),
            Window::Calendar(p, z) => format!("PER {} TZ {}", period_name(*p), z.name()),
            Window::Total => "PER TOTAL".into(),
            Window::Rolling(ms) => format!("ROLLING {}", format_duration_ms(*ms)),
        }
    }
}

fn period_name(p: Period) -> &'static str {
    match p {
        Period::Minute => "MINUTE",
        Period::Hour => "HOUR",
        Period::Day => "DAY",
        Period::Week => "WEEK",
        Period::Month => "MONTH",
    }
}

/// Parses `250ms`, `60s`, `5m`, `2h`, `1d`, or a bare number of milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("'{s}' is not a duration (like 500ms, 60s, 5m, 1h, 1d)");
    let lower = s.to_ascii_lowercase();
    let (num, mult) = if let Some(n) = lower.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = lower.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = lower.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = lower.strip_suffix('h') {
        (n, 3_600_000)
    } else if let Some(n) = lower.strip_suffix('d') {
        (n, 86_400_000)
    } else {
        (lower.as_str(), 1)
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)
}

pub fn format_duration_ms(ms: u64) -> String {
    for (unit, m) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(m) {
            return format!("{}{unit}", ms / m);
        }
    }
    format!("{ms}ms")
}

fn to_dt(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .unwrap_or_default()
}

fn to_ms(dt: DateTime<Utc>) -> u64 {
    dt.timestamp_millis().max(0) as u64
}

/// Start of the calendar period containing `now` in `zone`.
pub fn period_start(p: Period, zone: Zone, now: u64) -> u64 {
    match p {
        Period::Minute => now - now % 60_000,
        Period::Hour => now - now % 3_600_000,
        Period::Day if zone.is_utc() => now - now % 86_400_000,
        _ => zone.midnight(first_day(p, zone.date(now))),
    }
}

/// End (exclusive) of the calendar period containing `now` in `zone`: when
/// it resets.
pub fn period_end(p: Period, zone: Zone, now: u64) -> u64 {
    match p {
        Period::Minute => period_start(p, zone, now) + 60_000,
        Period::Hour => period_start(p, zone, now) + 3_600_000,
        Period::Day if zone.is_utc() => period_start(p, zone, now) + 86_400_000,
        _ => {
            let first = first_day(p, zone.date(now));
            let next = match p {
                Period::Week => first + Duration::days(7),
                Period::Month => first.checked_add_months(chrono::Months::new(1)).unwrap(),
                _ => first + Duration::days(1),
            };
            zone.midnight(next)
        }
    }
}

/// The first day of the day, week or month that contains `d`.
fn first_day(p: Period, d: NaiveDate) -> NaiveDate {
    match p {
        Period::Week => d - Duration::days(d.weekday().num_days_from_monday() as i64),
        Period::Month => d.with_day(1).unwrap(),
        _ => d,
    }
}

/// The stretch of recent usage a calendar limit's burn rate is measured
/// over: about a twelfth of the period, so a forecast follows a change of
/// pace within the period instead of averaging it away.
pub fn recent_window_ms(p: Period) -> u64 {
    match p {
        Period::Minute => 10_000,
        Period::Hour => 5 * 60_000,
        Period::Day => 2 * 3_600_000,
        Period::Week => 12 * 3_600_000,
        Period::Month => 2 * 86_400_000,
    }
}

/// A calendar limit's burn: the recent rate and where it leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Burn {
    /// Usage in the rate window, and the window's length in ms (shorter
    /// than [`recent_window_ms`] while the limit is younger than that).
    pub recent: u64,
    pub rate_window_ms: u64,
    /// Whether a whole rate window was watched (a shorter one is noisy:
    /// half a second of calls says nothing about a month).
    pub full_window: bool,
    /// When a whole rate window will have been watched.
    pub watched_at: u64,
    pub period_end: u64,
    /// Usage at the period's end if the recent rate holds.
    pub projected: u64,
    /// When used + held reach the limit at that rate, if before the
    /// period's end (`now` if they already have).
    pub exhausted_at: Option<u64>,
}

/// One limit as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitSpec {
    pub dim: Dim,
    pub window: Window,
    /// tokens, requests, or nano-USD for COST
    pub amount: u64,
}

/// A count as a client writes it: decimal digits only (no sign, point or
/// exponent), at most 2^64 − 1; `what` names it in the error.
pub fn parse_count(s: &str, what: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} must be a non-negative integer"));
    }
    s.parse()
        .map_err(|_| format!("{what} is too large (see the limits on input in PROTOCOL.md)"))
}

impl LimitSpec {
    /// A limit from the words both front ends take: a dimension, an amount
    /// (USD for COST, a count otherwise), `PER` or `ROLLING`, and the
    /// period or duration. Case-insensitive keywords.
    pub fn from_words(
        dim: &str,
        amount: &str,
        kind: &str,
        spec: &str,
    ) -> Result<LimitSpec, String> {
        let dim_word = dim.to_ascii_uppercase();
        let dim = Dim::parse(&dim_word).ok_or_else(|| {
            format!("unknown dimension '{dim_word}' (TOKENS INPUT OUTPUT REQUESTS COST)")
        })?;
        let amount = if dim == Dim::Cost {
            super::money::parse_usd(amount).map_err(|e| format!("COST amount: {e}"))?
        } else {
            parse_count(amount, "limit amount")?
        };
        let spec = spec.to_ascii_uppercase();
        let window = match kind.to_ascii_uppercase().as_str() {
            "PER" => Window::parse_period(&spec).ok_or_else(|| {
                format!("unknown period '{spec}' (MINUTE HOUR DAY WEEK MONTH TOTAL)")
            })?,
            "ROLLING" => Window::parse_rolling(&spec)?,
            other => return Err(format!("syntax: expected PER or ROLLING, not '{other}'")),
        };
        Ok(LimitSpec {
            dim,
            window,
            amount,
        })
    }

    /// [`LimitSpec::from_words`] and, when the front end read `TZ <zone>`
    /// after them, the zone: what both front ends parse.
    pub fn from_words_in(
        dim: &str,
        amount: &str,
        kind: &str,
        spec: &str,
        tz: Option<&str>,
    ) -> Result<LimitSpec, String> {
        let limit = LimitSpec::from_words(dim, amount, kind, spec)?;
        match tz {
            Some(zone) => limit.in_zone(zone),
            None => Ok(limit),
        }
    }

    /// The limit counted in the time zone `TZ <name>` names (a day, week
    /// or month only).
    pub fn in_zone(self, name: &str) -> Result<LimitSpec, String> {
        let window = self.window.in_zone(Zone::parse(name)?)?;
        Ok(LimitSpec { window, ..self })
    }
}

/// Usage counted inside a limit's window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Usage since `start`, the beginning of the current period (lazily
    /// reset), and the recent usage the burn rate is measured over (it
    /// spans period boundaries) since the counter was made at `since`.
    Period {
        start: u64,
        used: u64,
        recent: Ring,
        since: u64,
    },
    Total {
        used: u64,
    },
    Rolling(Ring),
}

/// A sliding window as a ring of `buckets.len()` sub-buckets of `width` ms.
/// A charge at time t lands in bucket `t / width` and counts until bucket
/// `t / width + len` begins, so the window is `len × width` ≥ its duration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    pub width: u64,
    pub buckets: Vec<u64>,
    /// Absolute index of the newest bucket written.
    pub newest: u64,
}

impl Ring {
    /// The width (ms) of a rolling window's sub-buckets.
    pub fn width_of(duration_ms: u64) -> u64 {
        duration_ms.div_ceil(ROLLING_BUCKETS).max(1)
    }

    pub fn new(duration_ms: u64) -> Ring {
        let width = Ring::width_of(duration_ms);
        let n = duration_ms.div_ceil(width);
        Ring {
            width,
            buckets: vec![0; n as usize],
            newest: 0,
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    /// Absolute bucket indexes still inside the window at `now`, oldest first,
    /// with their amounts.
    fn live(&self, now: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let cur = now / self.width;
        let oldest_live = (cur + 1).saturating_sub(self.len());
        let first = self.newest.saturating_sub(self.len() - 1).max(oldest_live);
        (first..=self.newest)
            .filter(move |&i| i <= cur && i >= oldest_live)
            .map(move |i| (i, self.buckets[(i % self.len()) as usize]))
    }

    pub fn sum(&self, now: u64) -> u64 {
        self.live(now)
            .map(|(_, v)| v)
            .fold(0u64, u64::saturating_add)
    }

    /// The live buckets' amounts from time `from` (its bucket included)
    /// to `to` (its bucket excluded).
    pub fn sum_between(&self, from: u64, to: u64, now: u64) -> u64 {
        let (first, end) = (from / self.width, to / self.width);
        self.live(now)
            .filter(|&(i, _)| i >= first && i < end)
            .map(|(_, v)| v)
            .fold(0u64, u64::saturating_add)
    }

    pub fn add(&mut self, now: u64, amount: u64) {
        self.add_at(now, now, amount);
    }

    /// Moves the ring to `now`: zeroes the buckets between the newest
    /// written and now, which hold usage from a lap ago (at most one full
    /// lap needs wiping).
    fn advance(&mut self, now: u64) {
        let cur = now / self.width;
        if cur > self.newest {
            for k in 0..(cur - self.newest).min(self.len()) {
                let slot = ((cur - k) % self.len()) as usize;
                self.buckets[slot] = 0;
            }
            self.newest = cur;
        }
    }

    /// Whether usage recorded at time `t` still counts at `now`.
    pub fn counts(&self, t: u64, now: u64) -> bool {
        t / self.width + self.len() > now / self.width
    }

    /// Adds `amount` to the bucket of time `t` (at or before `now`) if it
    /// still counts at `now`; usage older than the window is dropped.
    pub fn add_at(&mut self, t: u64, now: u64, amount: u64) {
        if let Some(slot) = self.slot_of(t, now) {
            self.buckets[slot] = self.buckets[slot].saturating_add(amount);
        }
    }

    /// Moves the ring to `now` and gives the slot of time `t`'s bucket, if
    /// that bucket is still in the window (after the newest written: never,
    /// as time does not run backwards here).
    fn slot_of(&mut self, t: u64, now: u64) -> Option<usize> {
        self.advance(now);
        let i = t / self.width;
        (i + self.len() > self.newest && i <= self.newest).then(|| (i % self.len()) as usize)
    }

    /// Settles a request counted in the bucket of time `made`: `counted` of
    /// it is in the window now, `actual` is what it used. While that bucket
    /// is still in the window it is corrected (the unused part comes back
    /// at once, an overrun joins the request); once it has rolled off, only
    /// an overrun counts, in the current bucket.
    pub fn settle(&mut self, made: u64, now: u64, counted: u64, actual: u64) {
        if let Some(slot) = self.slot_of(made, now) {
            let b = &mut self.buckets[slot];
            *b = if actual >= counted {
                b.saturating_add(actual - counted)
            } else {
                b.saturating_sub(counted - actual)
            };
        } else if actual > counted {
            self.add(now, actual - counted);
        }
    }

    /// Milliseconds from `now` until at least `excess` of the recorded usage
    /// has aged out of the window; None if all of it ageing out is not enough.
    pub fn time_to_free(&self, now: u64, excess: u64) -> Option<u64> {
        let mut freed = 0u64;
        for (i, v) in self.live(now) {
            freed = freed.saturating_add(v);
            if freed >= excess {
                return Some((i + self.len()) * self.width - now);
            }
        }
        None
    }

    /// How many ms of the past `sum(now)` covers: the live buckets, from
    /// the oldest one's start to `now` (between `(len - 1) × width` and
    /// `len × width`).
    pub fn covered(&self, now: u64) -> u64 {
        let oldest_live = (now / self.width + 1).saturating_sub(self.len());
        now - oldest_live * self.width
    }

    /// When the oldest usage still in the window leaves it.
    pub fn next_change(&self, now: u64) -> Option<u64> {
        self.live(now)
            .find(|&(_, v)| v > 0)
            .map(|(i, _)| (i + self.len()) * self.width)
    }
}

impl Counter {
    pub fn new(window: Window, now: u64) -> Counter {
        match window {
            Window::Calendar(p, z) => Counter::Period {
                start: period_start(p, z, now),
                used: 0,
                recent: Ring::new(recent_window_ms(p)),
                since: now,
            },
            Window::Total => Counter::Total { used: 0 },
            Window::Rolling(ms) => Counter::Rolling(Ring::new(ms)),
        }
    }

    /// Usage inside the window at `now`.
    pub fn used(&self, window: Window, now: u64) -> u64 {
        match (self, window) {
            (Counter::Period { start, used, .. }, Window::Calendar(p, z)) => {
                if period_start(p, z, now) == *start {
                    *used
                } else {
                    0
                }
            }
            (Counter::Total { used }, _) => *used,
            (Counter::Rolling(r), _) => r.sum(now),
            _ => unreachable!("counter does not match its window"),
        }
    }

    pub fn charge(&mut self, window: Window, now: u64, amount: u64) {
        match (self, window) {
            (
                Counter::Period {
                    start,
                    used,
                    recent,
                    ..
                },
                Window::Calendar(p, z),
            ) => {
                let s = period_start(p, z, now);
                if s != *start {
                    *start = s;
                    *used = 0;
                }
                *used = used.saturating_add(amount);
                recent.add(now, amount);
            }
            (Counter::Total { used }, _) => *used = used.saturating_add(amount),
            (Counter::Rolling(r), _) => r.add(now, amount),
            _ => unreachable!("counter does not match its window"),
        }
    }

    /// When this window next frees usage: the period's end, or when the
    /// oldest rolling usage ages out; None for TOTAL or an empty ring.
    pub fn resets_at(&self, window: Window, now: u64) -> Option<u64> {
        match (self, window) {
            (Counter::Period { .. }, Window::Calendar(p, z)) => Some(period_end(p, z, now)),
            (Counter::Rolling(r), _) => r.next_change(now),
            _ => None,
        }
    }
}

/// A limit on a scope: its spec and its usage counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub spec: LimitSpec,
    pub counter: Counter,
}

impl Limit {
    pub fn used(&self, now: u64) -> u64 {
        self.counter.used(self.spec.window, now)
    }

    /// The burn-rate forecast of a calendar limit (None for rolling and
    /// TOTAL limits, which have no period end), with `held` still held.
    /// Integer arithmetic throughout: rate = recent / rate_window_ms.
    pub fn burn(&self, now: u64, held: u64) -> Option<Burn> {
        let (Counter::Period { recent, since, .. }, Window::Calendar(p, z)) =
            (&self.counter, self.spec.window)
        else {
            return None;
        };
        let full = recent_window_ms(p);
        let window = recent.covered(now).min(now.saturating_sub(*since)).max(1);
        let recent = recent.sum(now);
        let used = self.used(now) as u128;
        let end = period_end(p, z, now);
        let left = (end - now) as u128;
        let (r, w) = (recent as u128, window as u128);
        let projected = (used + r * left / w).min(u64::MAX as u128) as u64;
        let room = (self.spec.amount as u128).saturating_sub(used + held as u128);
        let exhausted_at = if room == 0 {
            Some(now)
        } else if r == 0 {
            None
        } else {
            let at = now as u128 + (room * w).div_ceil(r);
            (at < end as u128).then_some(at as u64)
        };
        Some(Burn {
            recent,
            rate_window_ms: window,
            full_window: now.saturating_sub(*since) >= full,
            watched_at: since.saturating_add(full),
            period_end: end,
            projected,
            exhausted_at,
        })
    }

    /// What a cluster grant line of this limit covers at `now` (`grant.rs`):
    /// its usage and the open holds (`held`) — of a rolling window, what
    /// the window counted from `from` to `to`, the line's period (its ring
    /// counts open holds already).
    pub fn taken_between(&self, now: u64, held: u64, from: u64, to: u64) -> u64 {
        match &self.counter {
            Counter::Rolling(r) => r.sum_between(from, to, now),
            _ => self.used(now).saturating_add(self.held_part(held)),
        }
    }

    /// A rolling limit counts a request in the window when it is made, so
    /// its ring holds open holds too; calendar and TOTAL limits count open
    /// holds on top of their usage until they are settled.
    pub fn is_rolling(&self) -> bool {
        matches!(self.spec.window, Window::Rolling(_))
    }

    /// What the scope's open holds (`held` of this limit's dimension) add
    /// to this limit's usage: all of it, or nothing for a rolling limit,
    /// whose window already counts them.
    pub fn held_part(&self, held: u64) -> u64 {
        if self.is_rolling() {
            0
        } else {
            held
        }
    }

    /// Why a request of `amount` does not fit, with `held` held by the open
    /// holds at or below the limit's scope, and when it would (ms since the
    /// epoch, None when waiting cannot help), if nothing else happens
    /// meanwhile. `expired_by(need)` answers when those holds have freed
    /// `need` by expiring. A rolling limit frees room as usage rolls off
    /// (an open hold settled or expired sooner gives its part back sooner).
    pub fn blocked(
        &self,
        now: u64,
        held: u64,
        amount: u64,
        expired_by: impl Fn(u64) -> Option<u64>,
    ) -> (Blocker, Option<u64>) {
        let limit = self.spec.amount;
        let (used, held) = (self.used(now), self.held_part(held));
        if amount > limit {
            return (Blocker::Limit, None);
        }
        let over = |x: u64| x.saturating_add(amount).saturating_sub(limit);
        match (&self.counter, self.spec.window) {
            (Counter::Rolling(r), _) => (
                Blocker::Used,
                r.time_to_free(now, over(used)).map(|t| now + t),
            ),
            (_, Window::Rolling(_)) => unreachable!("counter does not match its window"),
            (_, Window::Total) if used.saturating_add(amount) > limit => (Blocker::Limit, None),
            (_, Window::Total) => (Blocker::Held, expired_by(over(used.saturating_add(held)))),
            (_, Window::Calendar(p, z)) => {
                // After the period ends only the holds still open count.
                let end = period_end(p, z, now);
                let next_period = if over(held) == 0 {
                    Some(end)
                } else {
                    expired_by(over(held)).map(|t| t.max(end))
                };
                if used.saturating_add(amount) <= limit {
                    let by_expiry = expired_by(over(used.saturating_add(held)));
                    let at = match (by_expiry, next_period) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    (Blocker::Held, at)
                } else {
                    (Blocker::Used, next_period)
                }
            }
        }
    }
}

/// What keeps a request from fitting a limit, which says what waiting does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// The request is larger than the limit, or than what is left of a
    /// TOTAL limit: waiting cannot help.
    Limit,
    /// Usage in the window or period: room comes back as it rolls off or
    /// when the period ends.
    Used,
    /// Open holds: room comes back as they settle, at the latest when they
    /// expire.
    Held,
    /// Cluster mode: this node's grant of the global limit is used up and
    /// the store gave no more in time (docs/CLUSTER.md).
    Grant,
    /// Cluster mode: this node holds as much usage as it may before the
    /// store has seen it (`u_max`), and could not report in time.
    Unreported,
    /// Cluster mode: the grant or `u_max` is used up and the global store
    /// cannot be reached (fail closed).
    StoreUnreachable,
}

impl Blocker {
    pub fn as_str(self) -> &'static str {
        match self {
            Blocker::Limit => "limit",
            Blocker::Used => "used",
            Blocker::Held => "held",
            Blocker::Grant => "grant",
            Blocker::Unreported => "unreported",
            Blocker::StoreUnreachable => "store_unreachable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a Thursday

    #[test]
    fn calendar_periods_align_in_utc() {
        let t = T0 + 3 * 86_400_000 + 5 * 3_600_000 + 7 * 60_000 + 11_000; // Sun 2026-01-04 05:07:11
        assert_eq!(period_start(Period::Minute, Zone::UTC, t), t - 11_000);
        assert_eq!(
            period_start(Period::Hour, Zone::UTC, t),
            t - 7 * 60_000 - 11_000
        );
        assert_eq!(period_start(Period::Day, Zone::UTC, t), T0 + 3 * 86_400_000);
        // ISO week: Monday 2025-12-29.
        assert_eq!(
            period_start(Period::Week, Zone::UTC, t),
            T0 - 3 * 86_400_000
        );
        assert_eq!(period_end(Period::Week, Zone::UTC, t), T0 + 4 * 86_400_000);
        assert_eq!(period_start(Period::Month, Zone::UTC, t), T0);
        assert_eq!(
            period_end(Period::Month, Zone::UTC, t),
            T0 + 31 * 86_400_000
        );
        // February 2028 is a leap month.
        let feb = 1_832_457_600_000; // 2028-01-25
        let end_jan = period_end(Period::Month, Zone::UTC, feb);
        assert_eq!(
            period_end(Period::Month, Zone::UTC, end_jan) - end_jan,
            29 * 86_400_000
        );
        // December rolls into the next year.
        let dec = T0 - 86_400_000;
        assert_eq!(period_end(Period::Month, Zone::UTC, dec), T0);
    }

    fn utc(s: &str) -> u64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis() as u64
    }

    #[test]
    fn local_days_follow_daylight_saving() {
        let la = Zone::parse("america/los_angeles").unwrap();
        assert_eq!(la.name(), "America/Los_Angeles");
        let day = |t| {
            (
                period_start(Period::Day, la, t),
                period_end(Period::Day, la, t),
            )
        };
        // 2027-03-14, Los Angeles springs forward: a 23-hour day.
        let (s, e) = day(utc("2027-03-14T12:00:00Z"));
        assert_eq!(
            (s, e),
            (utc("2027-03-14T08:00:00Z"), utc("2027-03-15T07:00:00Z"))
        );
        // 2027-11-07, it falls back: a 25-hour day.
        let (s, e) = day(utc("2027-11-07T12:00:00Z"));
        assert_eq!(
            (s, e),
            (utc("2027-11-07T07:00:00Z"), utc("2027-11-08T08:00:00Z"))
        );
        // The last millisecond of a day belongs to it; the next one does not.
        assert_eq!(day(e - 1).0, s);
        assert_eq!(day(e).0, e);
        // Weeks start on the local Monday, months on the local first.
        let t = utc("2027-11-04T06:59:59Z"); // Wednesday 23:59:59 PDT
        assert_eq!(
            period_start(Period::Week, la, t),
            utc("2027-11-01T07:00:00Z")
        );
        assert_eq!(period_end(Period::Week, la, t), utc("2027-11-08T08:00:00Z"));
        assert_eq!(
            period_start(Period::Month, la, t),
            utc("2027-11-01T07:00:00Z")
        );
        assert_eq!(
            period_end(Period::Month, la, t),
            utc("2027-12-01T08:00:00Z")
        );
        // 2027-11-01T06:59:59Z is still October in Los Angeles.
        assert_eq!(
            period_start(Period::Month, la, utc("2027-11-01T06:59:59Z")),
            utc("2027-10-01T07:00:00Z")
        );
    }

    #[test]
    fn a_skipped_or_repeated_local_midnight_starts_the_day_once() {
        // Santiago springs forward at 24:00 on Saturday 2027-09-04: Sunday
        // has no 00:00, and begins when the clocks jump (04:00Z, 01:00 -03).
        let scl = Zone::parse("America/Santiago").unwrap();
        let t = utc("2027-09-05T12:00:00Z");
        assert_eq!(
            period_start(Period::Day, scl, t),
            utc("2027-09-05T04:00:00Z")
        );
        assert_eq!(
            period_end(Period::Day, scl, utc("2027-09-04T12:00:00Z")),
            utc("2027-09-05T04:00:00Z")
        );
        // It falls back at 24:00 on Saturday 2027-04-03: Saturday's last
        // hour happens twice, and Sunday begins after the second one.
        let sat = utc("2027-04-03T12:00:00Z");
        assert_eq!(
            period_end(Period::Day, scl, sat),
            utc("2027-04-04T04:00:00Z")
        );
        assert_eq!(
            period_start(Period::Day, scl, utc("2027-04-04T03:30:00Z")),
            utc("2027-04-03T03:00:00Z")
        );
        // East of Greenwich the jump comes before midnight read as UTC:
        // Beirut skips 2027-03-28 00:00 (+02), so the day begins at 22:00Z
        // the evening before.
        let bey = Zone::parse("Asia/Beirut").unwrap();
        assert_eq!(
            period_start(Period::Day, bey, utc("2027-03-28T12:00:00Z")),
            utc("2027-03-27T22:00:00Z")
        );
        // Half-hour offsets: Kolkata's day begins at 18:30Z.
        let kol = Zone::parse("Asia/Kolkata").unwrap();
        assert_eq!(
            period_start(Period::Day, kol, utc("2027-01-01T18:29:59Z")),
            utc("2026-12-31T18:30:00Z")
        );
        assert_eq!(
            period_start(Period::Day, kol, utc("2027-01-01T18:30:00Z")),
            utc("2027-01-01T18:30:00Z")
        );
    }

    #[test]
    fn tz_names_one_zone_and_only_for_days_weeks_and_months() {
        assert!(Zone::parse("Mars/Olympus_Mons")
            .unwrap_err()
            .contains("unknown time zone"));
        let day = Window::Calendar(Period::Day, Zone::UTC);
        let la = Zone::parse("America/Los_Angeles").unwrap();
        assert_eq!(
            day.in_zone(la).unwrap().describe(),
            "PER DAY TZ America/Los_Angeles"
        );
        assert_eq!(day.in_zone(Zone::UTC), Ok(day));
        for w in [
            Window::Calendar(Period::Hour, Zone::UTC),
            Window::Total,
            Window::Rolling(60_000),
        ] {
            assert!(w.in_zone(la).unwrap_err().contains("DAY, WEEK or MONTH"));
        }
        // `TZ UTC` is what the limit already had: accepted on any window.
        for w in [
            Window::Calendar(Period::Hour, Zone::UTC),
            Window::Total,
            Window::Rolling(60_000),
        ] {
            assert_eq!(w.in_zone(Zone::UTC), Ok(w));
        }
        let spec = LimitSpec::from_words("tokens", "10", "per", "month").unwrap();
        let spec = spec.in_zone("Europe/Berlin").unwrap();
        assert_eq!(spec.window.describe(), "PER MONTH TZ Europe/Berlin");
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration_ms("60s").unwrap(), 60_000);
        assert_eq!(parse_duration_ms("1h").unwrap(), 3_600_000);
        assert_eq!(parse_duration_ms("250ms").unwrap(), 250);
        assert_eq!(parse_duration_ms("42").unwrap(), 42);
        assert!(parse_duration_ms("1.5s").is_err());
        assert!(parse_duration_ms("s").is_err());
        assert_eq!(format_duration_ms(60_000), "1m");
        assert_eq!(format_duration_ms(1500), "1500ms");
        assert!(Window::parse_rolling("0s").is_err());
        // The longest rolling window is 31 days exactly.
        assert_eq!(
            Window::parse_rolling("31d"),
            Ok(Window::Rolling(MAX_ROLLING_MS))
        );
        assert!(Window::parse_rolling(&(MAX_ROLLING_MS + 1).to_string()).is_err());
        for (word, p) in [
            ("minute", Period::Minute),
            ("HOUR", Period::Hour),
            ("day", Period::Day),
            ("week", Period::Week),
            ("Month", Period::Month),
        ] {
            assert_eq!(
                Window::parse_period(word),
                Some(Window::Calendar(p, Zone::UTC))
            );
        }
        assert_eq!(Window::parse_period("total"), Some(Window::Total));
        assert_eq!(Window::parse_period("fortnight"), None);
    }

    #[test]
    fn a_forecast_watches_about_a_twelfth_of_its_period() {
        let want = [
            (Period::Minute, 10_000),
            (Period::Hour, 5 * 60_000),
            (Period::Day, 2 * 3_600_000),
            (Period::Week, 12 * 3_600_000),
            (Period::Month, 2 * 86_400_000),
        ];
        for (p, ms) in want {
            assert_eq!(recent_window_ms(p), ms, "{p:?}");
        }
    }

    #[test]
    fn a_rolling_window_next_changes_when_its_oldest_usage_leaves() {
        let mut r = Ring::new(60_000);
        assert_eq!(r.next_change(T0), None, "nothing to free");
        // Usage only at 30 s: the empty buckets before it free nothing.
        r.add(T0 + 30_500, 5);
        assert_eq!(r.next_change(T0 + 40_000), Some(T0 + 90_000));
    }

    #[test]
    fn rolling_ring_slides_and_predicts_retry() {
        let mut r = Ring::new(60_000);
        assert_eq!((r.width, r.buckets.len()), (1000, 60));
        {
            // What a grant period of the window counted: its buckets only.
            let mut p = Ring::new(60_000);
            p.add(10_500, 3);
            p.add(20_000, 7);
            assert_eq!(p.sum_between(10_000, 20_000, 20_500), 3);
            assert_eq!(p.sum_between(10_000, 21_000, 20_500), 10);
            assert_eq!(p.sum_between(11_000, 20_000, 20_500), 0);
            assert_eq!(p.sum_between(20_000, 20_000, 20_500), 0);
            // Gone from the window, gone from every period.
            assert_eq!(p.sum_between(10_000, 21_000, 70_000), 7);
        }
        r.add(T0, 10);
        r.add(T0 + 30_500, 5);
        assert_eq!(r.sum(T0 + 59_999), 15);
        assert_eq!(r.sum(T0 + 60_000), 5);
        // The charge at 30.5s sits in bucket [30s, 31s) and leaves at 90s.
        assert_eq!(r.sum(T0 + 89_999), 5);
        assert_eq!(r.sum(T0 + 90_000), 0);
        // Freeing 12 needs both buckets gone: when the 30s bucket leaves.
        assert_eq!(r.time_to_free(T0 + 31_000, 12), Some(59_000));
        assert_eq!(r.time_to_free(T0 + 31_000, 3), Some(29_000));
        assert_eq!(r.time_to_free(T0 + 31_000, 16), None);
        // Writing long after wipes stale buckets.
        r.add(T0 + 500_000, 1);
        assert_eq!(r.sum(T0 + 500_000), 1);
    }

    #[test]
    fn odd_rolling_durations_round_window_up() {
        let r = Ring::new(1000);
        assert_eq!(r.width, 17);
        assert!(r.width * r.buckets.len() as u64 >= 1000);
    }

    #[test]
    fn period_counter_resets_lazily() {
        let w = Window::Calendar(Period::Minute, Zone::UTC);
        let mut c = Counter::new(w, T0);
        c.charge(w, T0 + 1, 7);
        assert_eq!(c.used(w, T0 + 59_999), 7);
        assert_eq!(c.used(w, T0 + 60_000), 0);
        c.charge(w, T0 + 60_001, 2);
        assert_eq!(c.used(w, T0 + 60_002), 2);
    }
}
