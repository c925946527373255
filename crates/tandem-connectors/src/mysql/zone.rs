//! Instants in MariaDB/MySQL columns that have no zone.
//!
//! `TIMESTAMP` holds an instant; Tandem's sessions use UTC, so it reads as UTC and is shown the
//! way PostgreSQL shows a `timestamptz` in UTC (`2026-11-26 13:14:15.5+00`). `DATETIME` is a
//! wall-clock reading with no zone: as is, unless the system's `datetime_zone` says which zone
//! it means; then it reads as the instant in UTC too, and instants are written as that zone's
//! wall-clock time (a wall-clock time a DST change skips or repeats takes the earlier instant).

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};

/// The zone a system's `DATETIME` columns mean.
#[derive(Clone, Debug)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

impl Zone {
    /// `Europe/Berlin` (from the system's time zone database), `UTC`, or a fixed offset such as
    /// `+01:00`.
    pub fn parse(name: &str) -> Result<Zone, String> {
        let n = name.trim();
        let tz = if let Some(secs) = offset_seconds(n) {
            Offset::from_seconds(secs).map(TimeZone::fixed).map_err(|e| format!("offset {n}: {e}"))?
        } else {
            TimeZone::get(n).map_err(|_| {
                format!("`{n}` is not a time zone this machine knows (an IANA name such as Europe/Berlin, UTC, or an offset such as +01:00)")
            })?
        };
        Ok(Zone { name: n.to_string(), tz })
    }

    /// The name as configured.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `+HH`, `+HH:MM`, `+HHMM` (or `-…`), `Z` → seconds east of UTC.
fn offset_seconds(t: &str) -> Option<i32> {
    if t == "Z" {
        return Some(0);
    }
    let (sign, rest) = match t.as_bytes().first()? {
        b'+' => (1, &t[1..]),
        b'-' => (-1, &t[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !(digits.len() == 2 || digits.len() == 4) {
        return None;
    }
    let h: i32 = digits[..2].parse().ok()?;
    let m: i32 = if digits.len() == 4 { digits[2..].parse().ok()? } else { 0 };
    (h <= 23 && m <= 59).then_some(sign * (h * 3600 + m * 60))
}

/// Splits `2026-11-26 13:14:15.5+02` into the wall-clock part and the offset, if it has one.
fn split_offset(t: &str) -> (&str, Option<i32>) {
    if let Some(rest) = t.strip_suffix('Z') {
        return (rest, Some(0));
    }
    // The offset starts at the last sign after the time of day (dates have '-' too).
    if let Some(i) = t.rfind(['+', '-']).filter(|i| *i > 10) {
        if let Some(secs) = offset_seconds(&t[i..]) {
            return (t[..i].trim_end(), Some(secs));
        }
    }
    (t, None)
}

fn civil(t: &str) -> Option<DateTime> {
    t.trim().replacen(' ', "T", 1).parse::<DateTime>().ok()
}

/// `2026-11-26T13:14:15.5` → `2026-11-26 13:14:15.5`.
fn show(dt: DateTime) -> String {
    dt.to_string().replacen('T', " ", 1)
}

/// A value read from a UTC `TIMESTAMP` column (or a `DATETIME` column meaning `zone`), as an
/// instant in UTC with PostgreSQL's `+00` suffix; text that is not a date and time stays as is.
pub(crate) fn read_instant(t: &str, zone: Option<&Zone>) -> String {
    let Some(dt) = civil(t) else { return t.to_string() };
    let utc = match zone {
        None => dt,
        Some(z) => match z.tz.to_ambiguous_zoned(dt).compatible() {
            Ok(zoned) => zoned.timestamp().to_zoned(TimeZone::UTC).datetime(),
            Err(_) => return t.to_string(),
        },
    };
    format!("{}+00", show(utc))
}

/// The wall-clock text to write into a column for `t`: an instant with an offset becomes UTC
/// (for `TIMESTAMP`, `zone` `None`) or `zone`'s wall clock (for `DATETIME`); text without an
/// offset is written as it is. `Err` when an instant goes to a `DATETIME` nobody said the zone of.
pub(crate) fn write_instant(t: &str, timestamp: bool, zone: Option<&Zone>) -> Result<String, String> {
    let (wall, offset) = split_offset(t.trim());
    let Some(secs) = offset else { return Ok(t.to_string()) };
    let dt = civil(wall).ok_or_else(|| "is not a date and time".to_string())?;
    let tz = match (timestamp, zone) {
        (true, _) => TimeZone::UTC,
        (false, Some(z)) => z.tz.clone(),
        (false, None) => {
            return Err("carries a time zone offset, and this DATETIME column has none: set `datetime_zone` on the system to say which zone its values mean".into())
        }
    };
    let offset = Offset::from_seconds(secs).map_err(|e| e.to_string())?;
    let instant = offset.to_timestamp(dt).map_err(|e| e.to_string())?;
    Ok(show(instant.to_zoned(tz).datetime()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_mean_their_zone_both_ways() {
        let berlin = Zone::parse("Europe/Berlin").unwrap();
        // Winter (+01) and summer (+02) time.
        assert_eq!(read_instant("2026-11-26 14:14:15.5", Some(&berlin)), "2026-11-26 13:14:15.5+00");
        assert_eq!(read_instant("2026-07-01 12:00:00", Some(&berlin)), "2026-07-01 10:00:00+00");
        assert_eq!(write_instant("2026-11-26 13:14:15.5+00", false, Some(&berlin)).unwrap(), "2026-11-26 14:14:15.5");
        assert_eq!(write_instant("2026-07-01 12:00:00+02", false, Some(&berlin)).unwrap(), "2026-07-01 12:00:00");
        // TIMESTAMP: UTC both ways; a value without an offset is written as it is.
        assert_eq!(read_instant("2026-11-26 13:14:15", None), "2026-11-26 13:14:15+00");
        assert_eq!(write_instant("2026-11-26 15:14:15+02:00", true, None).unwrap(), "2026-11-26 13:14:15");
        assert_eq!(write_instant("2026-11-26 13:14:15", true, None).unwrap(), "2026-11-26 13:14:15");
        assert_eq!(write_instant("2026-11-26T13:14:15Z", true, None).unwrap(), "2026-11-26 13:14:15");
        // An instant into a DATETIME without a zone is refused, not guessed.
        assert!(write_instant("2026-11-26 13:14:15+00", false, None).is_err());
        let fixed = Zone::parse("-05:00").unwrap();
        assert_eq!(read_instant("2026-11-26 08:00:00", Some(&fixed)), "2026-11-26 13:00:00+00");
        assert!(Zone::parse("Mars/Olympus").is_err());
        // Text that is no date and time is left alone (TIME columns, odd values).
        assert_eq!(read_instant("13:14:15", None), "13:14:15");
    }
}
