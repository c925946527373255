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
}
