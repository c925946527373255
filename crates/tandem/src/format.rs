//! Formatting for people: times, values, reports.

use tandem_core::engine::Report;
use tandem_core::rules::SyncSpec;
use tandem_core::value::Value;

/// Formats ms since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads a point in time as a user writes it: `2026-11-26`, `2026-11-26 14:30`,
/// `2026-11-26T14:30:05Z` (UTC), or a span back from `now_ms` such as `90s`, `15m`, `2h`, `7d`.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    let bad = || {
        format!("`{text}` is not a time: write 2026-11-26, 2026-11-26T14:30:00Z (UTC), or a span back from now like 15m, 2h, 7d")
    };
    if let Some(unit) = t.chars().last().filter(|c| "smhd".contains(*c)) {
        if let Ok(n) = t[..t.len() - 1].parse::<i64>() {
            let ms = match unit {
                's' => 1_000,
                'm' => 60_000,
                'h' => 3_600_000,
                _ => 86_400_000,
            };
            return Ok(now_ms - n * ms);
        }
    }
    let t = t.trim_end_matches(" UTC").trim_end_matches('Z');
    let (date, clock) = match t.split_once(['T', ' ']) {
        Some((d, c)) => (d, Some(c)),
        None => (t, None),
    };
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let [y, m, dd] = d[..] else { return Err(bad()) };
    let (y, m, dd) = (num(y)?, num(m)?, num(dd)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&dd) {
        return Err(bad());
    }
    let mut secs = days_from_civil(y, m, dd) * 86_400;
    if let Some(c) = clock {
        let parts: Vec<&str> = c.split(':').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(bad());
        }
        let (h, mi) = (num(parts[0])?, num(parts[1])?);
        let s = match parts.get(2) {
            Some(s) => s.split('.').next().map(num).transpose()?.unwrap_or(0),
            None => 0,
        };
        if h > 23 || mi > 59 || s > 60 {
            return Err(bad());
        }
        secs += h * 3600 + mi * 60 + s;
    }
    Ok(secs * 1000)
}

/// A value for a table cell.
pub fn value(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Text(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

/// The summary lines of a run of one sync.
pub fn summary(spec: &SyncSpec, r: &Report) -> String {
    let (l, rr) = (spec.system(tandem_core::mapping::Side::Left), spec.system(tandem_core::mapping::Side::Right));
    let dir = |i: usize, from: &str, to: &str| {
        format!("  {from} → {to}: {} created, {} updated, {} deleted\n", r.created[i], r.updated[i], r.deleted[i])
    };
    let mut s = format!("sync `{}`:\n", spec.name);
    s.push_str(&dir(0, l, rr));
    s.push_str(&dir(1, rr, l));
    s.push_str(&format!(
        "  {} linked by match_on, {} conflicts decided by rule, {} held for a person, {} dead letters\n",
        r.matched, r.decided, r.held, r.dead_letters
    ));
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_times() {
        assert_eq!(super::time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::time(1_795_700_000_000), "2026-11-26 13:33:20 UTC");
    }

    #[test]
    fn times_read_back_what_they_print() {
        let ms = 1_795_000_000_000;
        use super::{parse_time, time};
        let printed = time(ms);
        assert_eq!(parse_time(&printed, 0), Ok(ms));
        assert_eq!(parse_time("1970-01-02", 0), Ok(86_400_000));
        assert_eq!(parse_time("2026-11-26T14:30:05Z", 0).map(time), Ok("2026-11-26 14:30:05 UTC".into()));
        assert_eq!(parse_time("2h", 10_000_000), Ok(10_000_000 - 7_200_000));
        assert!(parse_time("yesterday", 0).is_err());
        assert!(parse_time("2026-13-01", 0).is_err());
    }
}
