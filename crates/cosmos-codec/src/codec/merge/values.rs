//! Reading a stored document's properties as the decoder reads them (to tell whether a stored
//! value means what PostgreSQL holds), and writing a property only where its meaning differs.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};

use crate::codec::fields::{date_value, opt_string_value};
use crate::codec::time::{parse_dotnet, parse_dotnet_date};

use super::Object;

/// Cosmos's own properties: never part of what is written (Cosmos sets them).
const SYSTEM_PROPERTIES: [&str; 6] = ["_rid", "_self", "_etag", "_attachments", "_ts", "_lsn"];

/// The stored document without Cosmos's system properties.
pub(super) fn user_properties(stored: &Object) -> Object {
    stored
        .iter()
        .filter(|(k, _)| !SYSTEM_PROPERTIES.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A property, `None` when missing or `null` (the decoder reads both alike).
pub(super) fn get<'a>(obj: &'a Object, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

/// Keeps the stored value when it means PostgreSQL's (`same`), else writes `encoded`.
pub(super) fn put(out: &mut Object, name: &str, same: bool, encoded: Value) {
    if !same {
        out.insert(name.to_owned(), encoded);
    }
}

pub(super) fn put_date(out: &mut Object, stored: &Object, name: &str, pg: Option<DateTime<Utc>>) {
    put(
        out,
        name,
        date_of(get(stored, name)) == Some(pg.map(pg_micros)),
        date_value(pg),
    );
}

pub(super) fn put_bool(out: &mut Object, stored: &Object, name: &str, pg: bool, default: bool) {
    put(
        out,
        name,
        bool_of(get(stored, name), default) == Some(pg),
        json!(pg),
    );
}

pub(super) fn put_opt_str(out: &mut Object, stored: &Object, name: &str, pg: Option<&str>) {
    let same = match get(stored, name) {
        None => pg.is_none(),
        Some(Value::String(s)) => pg == Some(s.as_str()),
        Some(_) => false,
    };
    put(out, name, same, opt_string_value(pg));
}

/// A string the decoder reads as `""` when missing.
pub(super) fn str_or_empty_is(stored: Option<&Value>, pg: &str) -> bool {
    match stored {
        None => pg.is_empty(),
        Some(Value::String(s)) => s == pg,
        Some(_) => false,
    }
}

/// A bool as the decoder reads it (`default` when missing); `None` when it is not one.
pub(super) fn bool_of(stored: Option<&Value>, default: bool) -> Option<bool> {
    match stored {
        None => Some(default),
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => None,
    }
}

/// An integer as the decoder reads it (`default` when missing); `None` when it is not one.
pub(super) fn int_of(stored: Option<&Value>, default: i64) -> Option<i64> {
    match stored {
        None => Some(default),
        Some(Value::Number(n)) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        }),
        Some(_) => None,
    }
}

/// An optional date as PostgreSQL would keep it (`Some(None)` when missing); `None` when it is
/// not a date.
pub(super) fn date_of(stored: Option<&Value>) -> Option<Option<Option<i64>>> {
    match stored {
        None => Some(None),
        Some(Value::String(s)) => parse_dotnet(s).ok().map(|d| Some(pg_micros(d))),
        Some(_) => None,
    }
}

/// An optional calendar date (`DateOfBirth`) as the decoder reads it.
pub(super) fn calendar_date_of(stored: Option<&Value>) -> Option<Option<NaiveDate>> {
    match stored {
        None => Some(None),
        Some(Value::String(s)) => parse_dotnet_date(s).ok().map(|(d, _)| Some(d)),
        Some(_) => None,
    }
}

/// The instant PostgreSQL keeps for `t`: whole microseconds since 2000-01-01, truncated toward
/// zero, as sqlx sends a `timestamptz` (`None` out of range, where no write succeeds).
pub(crate) fn pg_micros(t: DateTime<Utc>) -> Option<i64> {
    let epoch = NaiveDate::from_ymd_opt(2000, 1, 1)?.and_hms_opt(0, 0, 0)?;
    (t.naive_utc() - epoch).num_microseconds()
}

/// A comma-joined string or an array of strings as the decoder reads it (items trimmed, empty
/// ones dropped); `None` when it is neither.
pub(super) fn list_of(stored: Option<&Value>) -> Option<Vec<String>> {
    let items: Vec<&str> = match stored {
        None => Vec::new(),
        Some(Value::String(s)) => s.split(',').collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<&str>>>()?,
        Some(_) => return None,
    };
    Some(
        items
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// `ExternalUserId` (else `Auth0UserId`, blank meaning none) as the decoder reads it.
pub(super) fn merge_user_id(out: &mut Object, stored: &Object, pg: Option<&str>) {
    let decoded =
        nonblank(stored, "ExternalUserId").and_then(|e| Ok(e.or(nonblank(stored, "Auth0UserId")?)));
    if decoded == Ok(pg) {
        return;
    }
    out.insert("ExternalUserId".into(), json!(pg.unwrap_or("")));
    // the legacy name would be read when `ExternalUserId` is blank, and contradict it otherwise
    out.shift_remove("Auth0UserId");
}

/// A string property where blank means none; `Err` when it is not a string.
pub(super) fn nonblank<'a>(obj: &'a Object, name: &str) -> Result<Option<&'a str>, ()> {
    match get(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str()).filter(|s| !s.trim().is_empty())),
        Some(_) => Err(()),
    }
}
