//! Calendar limits in the budget owner's time zone (`PER DAY|WEEK|MONTH …
//! TZ <IANA name>`), over RESP and the admin API: the window they report,
//! when they reset (the next local midnight, computed here with chrono-tz),
//! the forecast's period end, clear refusals, and limits that keep their
//! zone across a restart from the ledger and from a snapshot.

use chrono::{Datelike, Duration, NaiveTime, TimeZone};
use chrono_tz::Tz;
use serde_json::json;

use crate::common::*;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The next local midnight in `tz` after now (the first, if it happens
/// twice; the moment the clocks jump, if it is skipped), and the first of
/// the next month.
fn next_midnights(tz: Tz) -> (i64, i64) {
    let today = tz.timestamp_millis_opt(now_ms()).unwrap().date_naive();
    let at = |d: chrono::NaiveDate| {
        let naive = d.and_time(NaiveTime::MIN);
        match tz.from_local_datetime(&naive).earliest() {
            Some(t) => t.timestamp_millis(),
            // A skipped midnight: the day starts when the clocks jump.
            None => (0..180)
                .find_map(|m| {
                    tz.from_local_datetime(&(naive + Duration::minutes(m)))
                        .earliest()
                })
                .unwrap()
                .timestamp_millis(),
        }
    };
    let next_month = if today.month() == 12 {
        today.with_year(today.year() + 1).unwrap().with_month(1)
    } else {
        today.with_month(today.month() + 1)
    };
    (
        at(today + Duration::days(1)),
        at(next_month.unwrap().with_day(1).unwrap()),
    )
}

#[test]
fn a_day_and_a_month_in_a_time_zone_reset_at_local_midnight() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    raw(
        &mut c,
        "BUDGET.SET org:sf TOKENS 1000 PER DAY TZ America/Los_Angeles COST 50 PER MONTH tz asia/kolkata TOKENS 5000 PER DAY",
    )
    .unwrap();
    q(&mut c, "SPEND org:sf gpt-4o INPUT 100 OUTPUT 20");
    let b = q(&mut c, "BALANCE org:sf");
    let (la_day, _) = next_midnights(Tz::America__Los_Angeles);
    let (_, kolkata_month) = next_midnights(Tz::Asia__Kolkata);
    let (utc_day, _) = next_midnights(Tz::UTC);
    let la = limit(&b, "TOKENS", "PER DAY TZ America/Los_Angeles");
    assert_eq!((la.i("used"), la.i("resets_at")), (120, la_day));
    // The name is read in any case and reported as the tz database has it.
    let month = limit(&b, "COST", "PER MONTH TZ Asia/Kolkata");
    assert_eq!(month.i("resets_at"), kolkata_month);
    // Without TZ a day is still UTC's, and both limits count the spend.
    let utc = limit(&b, "TOKENS", "PER DAY");
    assert_eq!((utc.i("used"), utc.i("resets_at")), (120, utc_day));
    let got = q(&mut c, "BUDGET.GET org:sf");
    limit(&got, "TOKENS", "PER DAY TZ America/Los_Angeles");

    // A denial names the zoned limit, and waiting means local midnight.
    let d = q(&mut c, "RESERVE h1 org:sf gpt-4o INPUT 900 OUTPUT 0");
    assert_eq!(d.s("status"), "denied");
    assert_eq!(d.s("limit"), "TOKENS PER DAY TZ America/Los_Angeles");
    assert_eq!(d.s("reason"), "used");
    let wait_until = now_ms() + d.i("retry_after_ms");
    assert!(
        (la_day - wait_until).abs() < 10_000,
        "{wait_until} vs {la_day}"
    );

    // The forecast counts to the end of the local period.
    let h = Http::new(&s, None);
    let (st, v) = h.get("/v1/reports/forecast/org:sf");
    assert_eq!(st, 200);
    let la_forecast = (v["limits"].as_array().unwrap().iter())
        .find(|l| l["window"] == "PER DAY TZ America/Los_Angeles")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(la_forecast["period_end"].as_i64(), Some(la_day));
}

#[test]
fn a_bad_zone_or_a_zone_on_the_wrong_window_is_refused_plainly() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let e = err(&mut c, "BUDGET.SET org:x TOKENS 10 PER DAY TZ Mars/Olympus");
    assert!(e.contains("unknown time zone 'Mars/Olympus'"), "{e}");
    for line in [
        "BUDGET.SET org:x TOKENS 10 PER HOUR TZ Europe/Berlin",
        "BUDGET.SET org:x TOKENS 10 PER TOTAL TZ Europe/Berlin",
        "BUDGET.SET org:x TOKENS 10 ROLLING 1m TZ Europe/Berlin",
    ] {
        let e = err(&mut c, line);
        assert!(
            e.contains("TZ applies to PER DAY, WEEK or MONTH only"),
            "{line}: {e}"
        );
    }
    // TZ without a name is a syntax error; nothing was set by any of these.
    let e = err(&mut c, "BUDGET.SET org:x TOKENS 10 PER DAY TZ");
    assert!(
        e.starts_with("ERR syntax: BUDGET.SET") && e.contains("[TZ <zone>]"),
        "{e}"
    );
    assert!(raw(&mut c, "BUDGET.GET org:x").is_err());
    // The same day in UTC and in Berlin are two limits; the same zone
    // twice is one limit given twice.
    raw(
        &mut c,
        "BUDGET.SET org:x TOKENS 10 PER DAY TOKENS 20 PER DAY TZ Europe/Berlin",
    )
    .unwrap();
    let e = err(
        &mut c,
        "BUDGET.SET org:x TOKENS 10 PER DAY TZ Europe/Berlin TOKENS 20 PER DAY TZ europe/berlin",
    );
    assert!(e.contains("given twice"), "{e}");

    // The admin API takes the zone as `tz`.
    let h = Http::new(&s, None);
    let (st, v) = h.call(
        "PUT",
        "/v1/budgets/org:y",
        Some(&json!({"limits": [{"dim": "TOKENS", "amount": 5, "per": "WEEK", "tz": "Pacific/Auckland"}]}).to_string()),
    );
    assert_eq!(st, 200, "{v}");
    let (_, b) = h.get("/v1/budgets/org:y");
    assert_eq!(
        b["limits"][0]["window"], "PER WEEK TZ Pacific/Auckland",
        "{b}"
    );
    let (st, v) = h.call(
        "PUT",
        "/v1/budgets/org:y",
        Some(&json!({"limits": [{"dim": "TOKENS", "amount": 5, "rolling": "1m", "tz": "Pacific/Auckland"}]}).to_string()),
    );
    assert_eq!(st, 422, "{v}");
}

#[test]
fn zoned_limits_keep_their_zone_across_restarts() {
    let mut s = Server::start(&[]);
    let mut c = s.conn();
    raw(
        &mut c,
        "BUDGET.SET org:z TOKENS 1000 PER WEEK TZ America/Santiago",
    )
    .unwrap();
    q(&mut c, "SPEND org:z gpt-4o INPUT 10 OUTPUT 0");
    let window = "PER WEEK TZ America/Santiago";
    let before = limit(&q(&mut c, "BALANCE org:z"), "TOKENS", window);
    let kept = |s: &Server| {
        let after = limit(&q(&mut s.conn(), "BALANCE org:z"), "TOKENS", window);
        assert_eq!(
            (after.i("used"), after.i("resets_at")),
            (10, before.i("resets_at"))
        );
    };
    // From the ledger after a crash...
    s.crash();
    s.restart();
    kept(&s);
    // ...and from a snapshot after a clean stop.
    raw(&mut s.conn(), "SAVE").unwrap();
    s.stop();
    s.restart();
    kept(&s);
    s.stop();
    let (ok, out) = verify(&s.dir);
    assert!(ok, "{out}");
}
