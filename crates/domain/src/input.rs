//! What a client may submit: the caps and value rules the API applies to new values, on top of
//! the schema's rules (the value types and the entities' `validate` methods).
//!
//! The schema leaves some columns unbounded (`bio`, `badge_message`, `purchase_token` are
//! `text`, lists are JSONB or `text[]`, the settings are JSONB) and some rules loose (an age
//! group is any `<digits>-<digits>`, a date of birth any date). Data already in Cosmos was
//! written under those rules, so the backfill, the codec and the repositories keep them and
//! never call anything here: a stored `9-1` or a long bio is migrated as it is. A value a
//! client sends now is held to these stricter rules as well, through the same types
//! ([`AgeGroup`] is parsed by [`AgeGroup::parse`] first, then checked here). Each error names
//! the field and the rule, never the value.

use chrono::{Datelike as _, Days, NaiveDate};

use crate::error::{ValidationError, check_len};
use crate::values::AgeGroup;

/// `bio`: characters.
pub const BIO_MAX: usize = 2_000;
/// `badge_message`: characters.
pub const BADGE_MESSAGE_MAX: usize = 1_000;
/// `purchase_token`: characters (store tokens and signed transactions are a few KB at most).
pub const PURCHASE_TOKEN_MAX: usize = 8_192;
/// `preferred_themes`: items.
pub const PREFERRED_THEMES_MAX_ITEMS: usize = 20;
/// One item of `preferred_themes`: characters.
pub const THEME_MAX: usize = 50;
/// `purchased_scenarios`: items.
pub const PURCHASED_SCENARIOS_MAX_ITEMS: usize = 1_000;
/// One item of `purchased_scenarios`: characters (as a scenario id anywhere else).
pub const SCENARIO_ID_MAX: usize = 255;
/// `settings`: bytes of its JSON text (the app's object is a few hundred).
pub const SETTINGS_MAX_BYTES: usize = 4_096;
/// The oldest age group bound and date of birth, in years (the app's widest group is `19-150`).
pub const MAX_AGE_YEARS: u32 = 150;

/// An optional text field of at most `max` characters.
pub fn check_text(
    field: &'static str,
    value: Option<&str>,
    max: usize,
) -> Result<(), ValidationError> {
    value.map_or(Ok(()), |v| check_len(field, v, max))
}

/// A list that Cosmos stores comma-joined and reads back split on commas, trimmed, empty items
/// dropped (`PreferredFantasyThemes`, `PurchasedScenarios`): at most `max_items` items, each
/// 1 to `max_len` characters with no comma and no surrounding whitespace, since any other item
/// would not come back from Cosmos as it was sent.
pub fn check_list(
    field: &'static str,
    items: &[String],
    max_items: usize,
    max_len: usize,
) -> Result<(), ValidationError> {
    if items.len() > max_items {
        return Err(ValidationError::TooMany {
            field,
            max: max_items,
            actual: items.len(),
        });
    }
    for item in items {
        if item.is_empty() {
            return Err(ValidationError::Empty { field });
        }
        check_len(field, item, max_len)?;
        if item.contains(',') || item.trim() != item {
            return Err(ValidationError::OutOfRange {
                field,
                rule: "an item may hold no comma and no surrounding whitespace (Cosmos keeps the \
                       list comma-joined)",
            });
        }
    }
    Ok(())
}

/// The settings object's JSON text (`settings_json`): at most [`SETTINGS_MAX_BYTES`].
pub fn check_settings_size(settings_json: &str) -> Result<(), ValidationError> {
    if settings_json.len() > SETTINGS_MAX_BYTES {
        return Err(ValidationError::OutOfRange {
            field: "settings",
            rule: "must be at most 4096 bytes as JSON",
        });
    }
    Ok(())
}

/// A date of birth sent on `today` (UTC): not after tomorrow (a client east of UTC may already
/// be a day ahead), not more than [`MAX_AGE_YEARS`] years ago.
pub fn check_date_of_birth(date: NaiveDate, today: NaiveDate) -> Result<(), ValidationError> {
    let latest = today.checked_add_days(Days::new(1)).unwrap_or(today);
    let earliest = NaiveDate::from_ymd_opt(
        today.year() - i32::try_from(MAX_AGE_YEARS).unwrap_or(150),
        1,
        1,
    )
    .unwrap_or(NaiveDate::MIN);
    if date > latest || date < earliest {
        return Err(ValidationError::OutOfRange {
            field: "date_of_birth",
            rule: "must not be in the future nor more than 150 years ago",
        });
    }
    Ok(())
}

impl AgeGroup {
    /// An age group a client sends: what [`AgeGroup::parse`] accepts (the schema's CHECK, and
    /// what the backfill keeps), and a real range: each bound a number without leading zeros
    /// (`06-9` would be another group than `6-9`), the lower not above the upper, neither
    /// above [`MAX_AGE_YEARS`].
    pub fn parse_input(raw: &str) -> Result<Self, ValidationError> {
        let group = Self::parse(raw)?;
        let bound = |s: &str| {
            let canonical = s == "0" || !s.starts_with('0');
            s.parse::<u32>()
                .ok()
                .filter(|n| canonical && *n <= MAX_AGE_YEARS)
        };
        let range = group
            .as_str()
            .split_once('-')
            .and_then(|(min, max)| Some((bound(min)?, bound(max)?)));
        match range {
            Some((min, max)) if min <= max => Ok(group),
            _ => Err(ValidationError::InvalidAgeGroup {
                field: "age_group",
                rule: "must be a range `<min>-<max>` with min <= max <= 150 and no leading zeros",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_groups_from_clients_are_real_ranges_and_the_backfill_keeps_its_rule() {
        for ok in AgeGroup::CURRENT
            .iter()
            .copied()
            .chain(["0-0", "0-150", "7-7"])
        {
            assert!(AgeGroup::parse_input(ok).is_ok(), "{ok}");
        }
        for bad in [
            "9-1",
            "06-9",
            "1-151",
            "99999-999999",
            "toddlers",
            "6 - 9",
            "",
        ] {
            let e = AgeGroup::parse_input(bad).expect_err(bad);
            assert_eq!(
                (e.code(), e.field()),
                ("invalid_age_group", "age_group"),
                "{bad}"
            );
        }
        // what is stored keeps being read and migrated as the schema allows
        for stored in ["9-1", "06-9", "1-151"] {
            assert!(AgeGroup::parse(stored).is_ok(), "{stored}");
            assert!(AgeGroup::from_source(stored).is_ok(), "{stored}");
        }
    }

    #[test]
    fn dates_of_birth_are_past_and_within_150_years() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap_or_default();
        let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default();
        for ok in [date(2018, 4, 1), today, date(2026, 12, 8), date(1876, 1, 1)] {
            assert!(check_date_of_birth(ok, today).is_ok(), "{ok}");
        }
        for bad in [
            date(2999, 1, 1),
            date(2026, 12, 9),
            date(1875, 12, 31),
            date(1, 1, 1),
        ] {
            let e = check_date_of_birth(bad, today).expect_err("out of range");
            assert_eq!((e.code(), e.field()), ("out_of_range", "date_of_birth"));
        }
    }

    #[test]
    fn lists_are_capped_and_their_items_survive_the_comma_join() {
        let list = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(check_list("preferred_themes", &list(&["space", "sea life"]), 20, 50).is_ok());
        let many = vec!["x".to_owned(); 21];
        assert_eq!(
            check_list("preferred_themes", &many, 20, 50),
            Err(ValidationError::TooMany {
                field: "preferred_themes",
                max: 20,
                actual: 21
            })
        );
        for bad in [
            list(&["a,b"]),
            list(&[" a"]),
            list(&[""]),
            vec!["y".repeat(51)],
        ] {
            let e = check_list("preferred_themes", &bad, 20, 50).expect_err("bad item");
            assert_eq!(e.field(), "preferred_themes");
        }
    }

    #[test]
    fn text_and_settings_caps() {
        assert!(check_text("bio", Some(&"b".repeat(BIO_MAX)), BIO_MAX).is_ok());
        let e = check_text("bio", Some(&"b".repeat(BIO_MAX + 1)), BIO_MAX).expect_err("long");
        assert_eq!((e.code(), e.field()), ("too_long", "bio"));
        assert!(check_text("bio", None, BIO_MAX).is_ok());
        assert!(check_settings_size(&"s".repeat(SETTINGS_MAX_BYTES)).is_ok());
        let e = check_settings_size(&"s".repeat(SETTINGS_MAX_BYTES + 1)).expect_err("large");
        assert_eq!(e.field(), "settings");
    }
}
