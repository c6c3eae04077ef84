//! Calendar arithmetic on millisecond timestamps and day numbers (days since the Unix epoch),
//! in UTC or a program's time zone ([`Calendar`]): the one calendar of the workspace. Attribution names days and months with it
//! (daily caps, monthly tiers, stats rows), and the CLI, admin API and audits parse and print
//! dates and times with it. Pure and exact; the proleptic Gregorian calendar, years 1970-9999.

pub const DAY_MS: u64 = 86_400_000;

/// The calendar a program counts its days and months in (daily caps, monthly tiers and
/// milestones, stats rows): UTC, the default, or an IANA time zone (`time_zone =
/// "Europe/Berlin"` in the program). Zones come from the copy of the IANA database compiled
/// into the binary (jiff's bundle), never the host's `zoneinfo`, so a replay on an auditor's
/// machine counts days by the same rules as the live worker did.
#[derive(Clone, Debug, Default)]
pub enum Calendar {
    #[default]
    Utc,
    Zone(jiff::tz::TimeZone),
}

impl Calendar {
    /// The calendar named `name` (an IANA name such as `America/New_York`, or `UTC`).
    pub fn named(name: &str) -> Option<Calendar> {
        if name == "UTC" {
            return Some(Calendar::Utc);
        }
        static DB: std::sync::OnceLock<jiff::tz::TimeZoneDatabase> = std::sync::OnceLock::new();
        let zone = DB.get_or_init(jiff::tz::TimeZoneDatabase::bundled).get(name).ok()?;
        Some(Calendar::Zone(zone))
    }

    /// The day number of the local date at `ts_ms`: days since 1970-01-01 of the calendar's
    /// wall-clock date, so [`format_day`] and [`month_of_day`] name it as the zone does.
    pub fn day_of(&self, ts_ms: u64) -> u32 {
        match self {
            Calendar::Utc => day_of(ts_ms),
            Calendar::Zone(tz) => {
                let Ok(ms) = i64::try_from(ts_ms) else { return day_of(ts_ms) };
                let Ok(t) = jiff::Timestamp::from_millisecond(ms) else { return day_of(ts_ms) };
                let local = ms.saturating_add(i64::from(tz.to_offset(t).seconds()) * 1000);
                u32::try_from(local.div_euclid(DAY_MS as i64)).unwrap_or(0)
            }
        }
    }

    /// The local hour (0-23) and weekday (0 Monday .. 6 Sunday) at `ts_ms`.
    pub fn hour_and_weekday(&self, ts_ms: u64) -> (u8, u8) {
        let local = match self {
            Calendar::Utc => i64::try_from(ts_ms).unwrap_or(i64::MAX),
            Calendar::Zone(tz) => {
                let ms = i64::try_from(ts_ms).unwrap_or(i64::MAX);
                let offset = jiff::Timestamp::from_millisecond(ms).map_or(0, |t| tz.to_offset(t).seconds());
                ms.saturating_add(i64::from(offset) * 1000)
            }
        };
        let day = local.div_euclid(DAY_MS as i64);
        let hour = local.rem_euclid(DAY_MS as i64) / 3_600_000;
        // 1970-01-01 was a Thursday (3, counting from Monday).
        ((hour as u8), ((day + 3).rem_euclid(7)) as u8)
    }

    /// The IANA name, `UTC` for the default.
    pub fn name(&self) -> &str {
        match self {
            Calendar::Utc => "UTC",
            Calendar::Zone(tz) => tz.iana_name().unwrap_or("UTC"),
        }
    }
}

/// Days since the epoch of a millisecond timestamp.
pub fn day_of(ts_ms: u64) -> u32 {
    u32::try_from(ts_ms / DAY_MS).unwrap_or(u32::MAX)
}

/// The calendar month (UTC) of a day number, as `yyyymm`.
pub fn month_of_day(day: u32) -> u32 {
    let (y, m, _) = civil_from_days(i64::from(day));
    u32::try_from(y).unwrap_or(0) * 100 + m
}

/// `YYYY-MM-DD` of a day number.
pub fn format_day(day: u32) -> String {
    let (y, m, d) = civil_from_days(i64::from(day));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Parses `YYYY-MM-DD` into a day number.
pub fn parse_day(s: &str) -> Option<u32> {
    let mut it = s.split('-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    u32::try_from(days_from_civil(y, m, d)).ok()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of a millisecond timestamp (UTC).
pub fn format_ts(ts_ms: u64) -> String {
    let ms_of_day = ts_ms % DAY_MS;
    let (h, m, s, ms) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{}T{h:02}:{m:02}:{s:02}.{ms:03}Z", format_day(day_of(ts_ms)))
}

/// Parses a UTC time, `YYYY-MM-DD` (midnight) or `YYYY-MM-DDTHH:MM:SS[.mmm]Z`, into ms.
pub fn parse_time(s: &str) -> Option<u64> {
    // RFC 3339 allows the separator and the zone letter in lower case.
    let (date, time) = match s.split_once(['T', 't']) {
        Some((d, t)) => (d, Some(t.strip_suffix(['Z', 'z'])?)),
        None => (s, None),
    };
    let day = u64::from(parse_day(date)?);
    let mut ms = 0u64;
    if let Some(t) = time {
        let (hms, frac) = match t.split_once('.') {
            Some((a, f)) if (1..=3).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) => {
                (a, f.parse::<u64>().ok()? * 10u64.pow(3 - f.len() as u32))
            }
            Some(_) => return None,
            None => (t, 0),
        };
        let parts: Vec<&str> = hms.split(':').collect();
        let [h, m, sec] = parts.as_slice() else { return None };
        if [h, m, sec].iter().any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit())) {
            return None;
        }
        let (h, m, sec): (u64, u64, u64) = (h.parse().ok()?, m.parse().ok()?, sec.parse().ok()?);
        if h > 23 || m > 59 || sec > 59 {
            return None;
        }
        ms = ((h * 60 + m) * 60 + sec) * 1000 + frac;
    }
    Some(day * DAY_MS + ms)
}

/// The day `months` calendar months after `day`: the same day of the month, or the month's
/// last day when it is shorter (January 31st plus one month is February 28th or 29th).
pub fn add_months(day: u32, months: u32) -> u32 {
    let (y, m, d) = civil_from_days(i64::from(day));
    let total = y * 12 + i64::from(m) - 1 + i64::from(months);
    let (ty, tm) = (total.div_euclid(12), u32::try_from(total.rem_euclid(12)).unwrap_or(0) + 1);
    u32::try_from(days_from_civil(ty, tm, d.min(days_in_month(ty, tm)))).unwrap_or(u32::MAX)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil calendar algorithms (public domain), for the proleptic Gregorian
// calendar; a whole date library is not needed to name a day or a month.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn local_hour_and_weekday_follow_the_zone() {
        assert_eq!(Calendar::Utc.hour_and_weekday(0), (0, 3), "1970-01-01 was a Thursday");
        // 2026-12-07 (a Monday) 23:30 UTC is Tuesday 00:30 in Berlin, Monday 18:30 in New York.
        let t = 1_796_686_200_000;
        assert_eq!(Calendar::Utc.hour_and_weekday(t), (23, 0));
        assert_eq!(Calendar::named("Europe/Berlin").unwrap().hour_and_weekday(t), (0, 1));
        assert_eq!(Calendar::named("America/New_York").unwrap().hour_and_weekday(t), (18, 0));
    }

    #[test]
    fn adding_months_keeps_the_day_or_takes_the_months_last() {
        let d = |s| parse_day(s).unwrap();
        for (from, n, to) in [
            ("2026-01-15", 1, "2026-02-15"),
            ("2026-01-31", 1, "2026-02-28"),
            ("2024-01-31", 1, "2024-02-29"),
            ("2026-11-30", 3, "2027-02-28"),
            ("2026-12-01", 12, "2027-12-01"),
            ("2026-05-31", 0, "2026-05-31"),
        ] {
            assert_eq!(format_day(add_months(d(from), n)), to, "{from} + {n}");
        }
    }

    #[test]
    fn calendar() {
        assert_eq!(format_day(0), "1970-01-01");
        assert_eq!(format_day(day_of(1_700_000_000_000)), "2023-11-14");
        assert_eq!(month_of_day(day_of(1_700_000_000_000)), 202311);
        assert_eq!(format_day(parse_day("2024-02-29").unwrap()), "2024-02-29");
        for bad in ["2023-02-29", "2024-13-01", "2024-1-01", "24-01-01", "2024-01-01x", "", "1969-12-31"] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
        for day in (0..40_000).step_by(7) {
            assert_eq!(parse_day(&format_day(day)), Some(day));
        }
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(format_ts(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_time("2023-11-14T22:13:20.123Z"), Some(1_700_000_000_123));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20.1Z"), Some(1_700_000_000_100));
        assert_eq!(parse_time("2023-11-14"), Some(u64::from(parse_day("2023-11-14").unwrap()) * DAY_MS));
        for bad in
            ["2023-11-14T22:13:20", "2023-11-14T24:00:00Z", "2023-11-14T1:00:00Z", "2023-11-14T22:13:20.1234Z", "x", ""]
        {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_zone_calendar_counts_local_days_across_daylight_saving() {
        let ny = Calendar::named("America/New_York").unwrap();
        assert_eq!(ny.name(), "America/New_York");
        let at = |s: &str| parse_time(s).unwrap();
        // 03:00 UTC on the 23rd is 22:00 on the 22nd in New York (UTC-5 in November).
        assert_eq!(format_day(ny.day_of(at("2026-11-23T03:00:00Z"))), "2026-11-22");
        assert_eq!(format_day(ny.day_of(at("2026-11-23T05:00:00Z"))), "2026-11-23");
        // In July it is UTC-4: 03:59 UTC is still the previous day, 04:00 the next.
        assert_eq!(format_day(ny.day_of(at("2026-07-02T03:59:59.999Z"))), "2026-07-01");
        assert_eq!(format_day(ny.day_of(at("2026-07-02T04:00:00Z"))), "2026-07-02");
        // East of UTC the local day starts earlier.
        let tokyo = Calendar::named("Asia/Tokyo").unwrap();
        assert_eq!(format_day(tokyo.day_of(at("2026-11-22T15:00:00Z"))), "2026-11-23");
        assert_eq!(month_of_day(tokyo.day_of(at("2026-11-30T15:00:00Z"))), 202612);
        // UTC is the default and the plain day.
        let utc = Calendar::named("UTC").unwrap();
        assert_eq!(utc.day_of(at("2026-11-23T03:00:00Z")), day_of(at("2026-11-23T03:00:00Z")));
        assert!(matches!(Calendar::default(), Calendar::Utc));
        assert!(Calendar::named("Mars/Olympus_Mons").is_none());
        assert!(Calendar::named("").is_none());
    }
}
