//! Durations and times as people type and read them: `--max-verify-age 24h`, `1d 6h`, and
//! timestamps in UTC.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// `90s`, `15m`, `24h`, `2d`, or several together (`1h30m`); a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("expected a duration such as 24h, 90m or 3600s".to_owned());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => {
                return Err(
                    "expected a duration such as 24h, 90m or 3600s (units s, m, h, d)".to_owned(),
                );
            }
        };
        let n: u64 = number
            .parse()
            .map_err(|_| "expected a number before each unit, e.g. 24h".to_owned())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or("the duration is too long")?;
        number.clear();
    }
    if !number.is_empty() {
        return Err("a number at the end has no unit (s, m, h or d)".to_owned());
    }
    Ok(Duration::from_secs(total))
}

/// `1d 2h`, `30h 5m`, `42s`: the two largest units.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m {seconds}s"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// A time for people, in UTC to the second.
pub(super) fn at(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("24").is_ok());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("1h30").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(
            format_duration(Duration::from_secs(30 * 3600 + 300)),
            "1d 6h"
        );
        assert_eq!(format_duration(Duration::from_secs(42)), "42s");
    }
}
