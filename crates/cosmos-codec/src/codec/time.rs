//! .NET `DateTime` strings as EF Core's Cosmos provider writes them, and back.
//!
//! Accepted: `YYYY-MM-DDTHH:MM:SS` with 0 to 9 fractional digits (.NET writes up to 7), followed
//! by `Z`, by an offset `±HH:MM` (converted to UTC), or by nothing: a value without an offset
//! was written from a `DateTime` of kind `Unspecified`/`Utc`, which the app means as UTC.
//! Written: always 7 fractional digits and `Z` (.NET's round-trip `O` format for UTC), so the
//! app reads back exactly the tick it wrote, to 100 ns.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Timelike, Utc};

/// `DateTime.MaxValue` as .NET writes it (no offset). In `Subscription.EndDate` it means
/// "no end".
pub const DOTNET_MAX_VALUE: &str = "9999-12-31T23:59:59.9999999";

/// Why a string is not a .NET date-time (a rule, never the value).
const RULE: &str = "must be a date-time like 2025-12-20T10:15:30.1234567Z (offset optional)";

/// Parses a .NET date-time string to UTC. The error is the rule that was broken.
pub fn parse_dotnet(raw: &str) -> Result<DateTime<Utc>, &'static str> {
    let (naive_part, offset_part) = split_offset(raw).ok_or(RULE)?;
    let naive = parse_naive(naive_part).ok_or(RULE)?;
    match offset_part {
        "" | "Z" | "z" => Ok(naive.and_utc()),
        offset => {
            let with_offset = format!("{}{offset}", naive.format("%Y-%m-%dT%H:%M:%S%.f"));
            DateTime::parse_from_rfc3339(&with_offset)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|_| RULE)
        }
    }
}

/// Whether a parsed value is .NET's `DateTime.MaxValue` (to the second: some writers drop
/// digits).
pub fn is_max_value(value: DateTime<Utc>) -> bool {
    let max = NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_opt(23, 59, 59))
        .map(|n| n.and_utc());
    max.is_some_and(|m| value >= m)
}

/// Whether a value is .NET's `DateTime.MinValue` (`0001-01-01T00:00:00`), the CLR default of a
/// `DateTime` nobody set.
pub fn is_min_value(value: DateTime<Utc>) -> bool {
    NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .is_some_and(|m| value.naive_utc() == m)
}

/// A birth date: the calendar date as written (a bare date, or a date-time whose date part is
/// taken literally, before any offset conversion, because the app stores dates at local
/// midnight). Returns the date and whether the time part was midnight.
pub fn parse_dotnet_date(raw: &str) -> Result<(NaiveDate, bool), &'static str> {
    let bare = fixed_width_date(raw.as_bytes())
        .or_else(|| NaiveDate::parse_from_str(raw, "%Y-%m-%d").ok());
    if let Some(date) = bare {
        return Ok((date, true));
    }
    let (naive_part, _) = split_offset(raw).ok_or(RULE)?;
    let naive = parse_naive(naive_part).ok_or(RULE)?;
    // Validate the offset too, so a broken string is not half-accepted.
    parse_dotnet(raw)?;
    let midnight = naive.time().num_seconds_from_midnight() == 0 && naive.nanosecond() == 0;
    Ok((naive.date(), midnight))
}

/// Writes a UTC date-time in .NET's round-trip format: 7 fractional digits and `Z`.
pub fn format_dotnet(value: DateTime<Utc>) -> String {
    // Leap-second nanoseconds (>= 1e9) are clamped to the last tick of the second.
    let ticks = value.nanosecond().min(999_999_999) / 100;
    format!("{}.{ticks:07}Z", value.format("%Y-%m-%dT%H:%M:%S"))
}

/// Writes a birth date as a midnight date-time in the same format.
pub fn format_dotnet_date(value: NaiveDate) -> String {
    format!("{}T00:00:00.0000000Z", value.format("%Y-%m-%d"))
}

/// Splits `2025-01-02T03:04:05.123+01:00` into the local part and the offset suffix (`Z`,
/// `±HH:MM` or empty). `None` when the string is too short to hold a date-time.
fn split_offset(raw: &str) -> Option<(&str, &str)> {
    // The offset can only start after `YYYY-MM-DDTHH:MM:SS` (19 bytes).
    let tail_start = 19;
    if raw.len() < tail_start || !raw.is_char_boundary(tail_start) {
        return None;
    }
    let tail = &raw[tail_start..];
    let cut = tail
        .find(['Z', 'z', '+', '-'])
        .map_or(raw.len(), |i| tail_start + i);
    Some((&raw[..cut], &raw[cut..]))
}

fn parse_naive(raw: &str) -> Option<NaiveDateTime> {
    let bytes = raw.as_bytes();
    // Exactly YYYY-MM-DDTHH:MM:SS, then optionally `.` and 1-9 digits; chrono alone would also
    // accept other widths and separators.
    let shape_ok = bytes.len() >= 19
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && (bytes[10] == b'T' || bytes[10] == b't')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !shape_ok {
        return None;
    }
    match &bytes[19..] {
        [] => {}
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
        }
        _ => return None,
    }
    if let Some(parsed) = fixed_width_date_time(bytes) {
        return Some(parsed);
    }
    NaiveDateTime::parse_from_str(&raw.replace('t', "T"), "%Y-%m-%dT%H:%M:%S%.f").ok()
}

/// The common shape, every field its full width in ASCII digits and the second below 60, read
/// without chrono's format interpreter (which parses the format string on every call: a few
/// percent of a migration's client CPU). Gives what chrono gives for such a string; anything
/// else (`None`) goes to chrono.
fn fixed_width_date_time(bytes: &[u8]) -> Option<NaiveDateTime> {
    let date = fixed_width_date(bytes.get(..10)?)?;
    let number = |at: usize| two_digits(bytes.get(at..at + 2)?);
    let (hour, minute, second) = (number(11)?, number(14)?, number(17)?);
    if second >= 60 {
        return None;
    }
    let nanos = match bytes.get(19..) {
        None | Some([]) => 0,
        Some([b'.', digits @ ..]) => {
            let mut n = 0u32;
            for d in digits {
                n = n * 10 + u32::from(d.checked_sub(b'0').filter(|d| *d <= 9)?);
            }
            n * 10u32.pow(9 - u32::try_from(digits.len()).ok()?)
        }
        Some(_) => return None,
    };
    date.and_hms_nano_opt(hour, minute, second, nanos)
}

/// `YYYY-MM-DD` in ASCII digits exactly, as a calendar date; `None` otherwise.
fn fixed_width_date(bytes: &[u8]) -> Option<NaiveDate> {
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let year = two_digits(&bytes[..2])? * 100 + two_digits(&bytes[2..4])?;
    NaiveDate::from_ymd_opt(
        i32::try_from(year).ok()?,
        two_digits(&bytes[5..7])?,
        two_digits(&bytes[8..10])?,
    )
}

fn two_digits(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [a @ b'0'..=b'9', b @ b'0'..=b'9'] => Some(u32::from(a - b'0') * 10 + u32::from(b - b'0')),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_width_reading_agrees_with_chrono() {
        let mut checked = 0;
        for date in [
            "2025-12-20",
            "0001-01-01",
            "9999-12-31",
            "2024-02-29",
            "2023-02-29",
            "2025-13-01",
            "2025-00-10",
            "2025-04-31",
            "0000-01-01",
        ] {
            let chrono = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok();
            assert_eq!(fixed_width_date(date.as_bytes()), chrono, "{date}");
            for time in [
                "00:00:00", "23:59:59", "24:00:00", "12:60:00", "10:15:59", "10:15:60",
            ] {
                for fraction in ["", ".1", ".12", ".1234567", ".123456789", ".000000001"] {
                    let raw = format!("{date}T{time}{fraction}");
                    let chrono = NaiveDateTime::parse_from_str(&raw, "%Y-%m-%dT%H:%M:%S%.f").ok();
                    let fast = fixed_width_date_time(raw.as_bytes());
                    // the fast path may decline (None) and leave the string to chrono, but
                    // what it reads must be what chrono reads
                    if fast.is_some() {
                        assert_eq!(fast, chrono, "{raw}");
                        checked += 1;
                    }
                    assert_eq!(parse_naive(&raw), chrono, "{raw}");
                }
            }
        }
        assert_eq!(
            checked, 90,
            "the fast path read {checked} strings, not every valid one"
        );
    }

    #[test]
    fn every_digit_count_and_offset_form_parses() {
        let base = parse_dotnet("2025-12-20T10:15:30Z").expect("base");
        for (raw, nanos) in [
            ("2025-12-20T10:15:30", 0),
            ("2025-12-20T10:15:30.1", 100_000_000),
            ("2025-12-20T10:15:30.123Z", 123_000_000),
            ("2025-12-20T10:15:30.1234567", 123_456_700),
            ("2025-12-20T11:15:30.1234567+01:00", 123_456_700),
            ("2025-12-20T05:15:30.1234567-05:00", 123_456_700),
        ] {
            let parsed = parse_dotnet(raw).expect(raw);
            assert_eq!(parsed.timestamp(), base.timestamp(), "{raw}");
            assert_eq!(parsed.nanosecond(), nanos, "{raw}");
        }
        for bad in [
            "",
            "2025-12-20",
            "2025-12-20 10:15:30",
            "2025-12-20T10:15:30.",
            "2025-12-20T10:15:30.1234567890",
            "2025-13-20T10:15:30",
            "2025-12-20T10:15:30+25:00",
            "2025-12-20T10:15:30Zjunk",
            "yesterday at noon, roughly",
            "2025-12-20T10:15:3é",
        ] {
            assert!(parse_dotnet(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn format_is_seven_digits_and_z_and_round_trips() {
        let v = parse_dotnet("2025-12-20T10:15:30.1234567").expect("valid");
        assert_eq!(format_dotnet(v), "2025-12-20T10:15:30.1234567Z");
        assert_eq!(parse_dotnet(&format_dotnet(v)), Ok(v));
        let max = parse_dotnet(DOTNET_MAX_VALUE).expect("max");
        assert!(is_max_value(max));
        assert_eq!(format_dotnet(max), format!("{DOTNET_MAX_VALUE}Z"));
        assert!(is_min_value(
            parse_dotnet("0001-01-01T00:00:00").expect("min")
        ));
    }

    #[test]
    fn birth_dates_take_the_written_calendar_date() {
        let d = NaiveDate::from_ymd_opt(2015, 6, 1).expect("date");
        assert_eq!(parse_dotnet_date("2015-06-01T00:00:00"), Ok((d, true)));
        assert_eq!(
            parse_dotnet_date("2015-06-01T00:00:00+02:00"),
            Ok((d, true))
        );
        assert_eq!(parse_dotnet_date("2015-06-01"), Ok((d, true)));
        assert_eq!(parse_dotnet_date("2015-06-01T13:00:00Z"), Ok((d, false)));
        assert_eq!(parse_dotnet_date(&format_dotnet_date(d)), Ok((d, true)));
        assert!(parse_dotnet_date("2015-06-01T00:00:00+99:00").is_err());
    }
}
