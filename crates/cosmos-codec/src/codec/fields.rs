//! Typed reads of document fields, each failure classified and named by its field path, and
//! the id / discriminator rules shared by the three containers.
//!
//! "Missing" and `null` are treated alike: EF Core writes `null` for an unset nullable
//! property, and older documents simply lack properties added later.

use chrono::{DateTime, NaiveDate, Utc};
use mystira_domain::MappedId;
use serde_json::{Map, Value, json};

use super::time::{is_max_value, parse_dotnet, parse_dotnet_date};
use super::{DecodeError, Note};

pub(crate) type Object = Map<String, Value>;

/// The object at the root of a document, or a `wrong_type` rejection.
pub(crate) fn root(doc: &Value) -> Result<&Object, DecodeError> {
    doc.as_object()
        .ok_or_else(|| DecodeError::wrong_type("$", "a JSON object (a Cosmos document)"))
}

/// Strips EF 8's `<EntityType>|` prefix from an id.
pub(crate) fn strip_type_prefix<'a>(raw: &'a str, entity_type: &str) -> &'a str {
    raw.strip_prefix(entity_type)
        .and_then(|rest| rest.strip_prefix('|'))
        .unwrap_or(raw)
}

/// Checks `$type` / `Discriminator` against the container's entity type. Neither present is
/// fine (the container tells the type).
pub(crate) fn check_entity_type(obj: &Object, entity_type: &str) -> Result<(), DecodeError> {
    for name in ["$type", "Discriminator"] {
        match obj.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t == entity_type => {}
            Some(Value::String(_)) => {
                return Err(DecodeError::new(
                    "foreign_type",
                    name,
                    &format!(
                        "names another entity type than {entity_type}, the only type this container holds"
                    ),
                ));
            }
            Some(_) => {
                return Err(DecodeError::wrong_type(
                    name,
                    "a string naming the entity type",
                ));
            }
        }
    }
    Ok(())
}

/// A document's `id` and the key it maps to.
#[derive(Debug)]
pub(crate) struct DocIds<'a> {
    /// The `id` exactly as stored.
    pub document_id: &'a str,
    /// The key (from `Id`, or `id` without a type prefix), and the original `id` when it is not
    /// the key's canonical text.
    pub mapped: MappedId,
}

impl<'a> DocIds<'a> {
    pub(crate) fn read(obj: &'a Object, entity_type: &str) -> Result<Self, DecodeError> {
        let fields = Fields::new(obj, "");
        let document_id = fields.req_str("id")?;
        if document_id.trim().is_empty() {
            return Err(DecodeError::new("invalid_id", "id", "must not be empty"));
        }
        Self::from_strings(document_id, fields.opt_str("Id")?, entity_type)
    }

    /// The rest of [`Self::read`], from a non-empty `id` and the `Id` string if any (also used
    /// by [`super::document_key_of_json`], which reads the two without building the document).
    pub(crate) fn from_strings(
        document_id: &'a str,
        upper_id: Option<&'a str>,
        entity_type: &str,
    ) -> Result<Self, DecodeError> {
        let key_source = match upper_id {
            Some(id) if id.trim().is_empty() => {
                return Err(DecodeError::new(
                    "invalid_id",
                    "Id",
                    "must not be empty when present",
                ));
            }
            Some(id) => id,
            None => strip_type_prefix(document_id, entity_type),
        };
        let uuid = MappedId::from_source(key_source).uuid;
        let canonical = uuid.hyphenated().to_string();
        let cosmos_id = (canonical != document_id).then(|| document_id.to_owned());
        Ok(Self {
            document_id,
            mapped: MappedId { uuid, cosmos_id },
        })
    }
}

/// Cosmos's own properties (on every document) and the two discriminators: never entity
/// fields, so never "unknown".
const SYSTEM_FIELDS: [&str; 8] = [
    "_rid",
    "_self",
    "_etag",
    "_attachments",
    "_ts",
    "_lsn",
    "$type",
    "Discriminator",
];

/// An `email_trimmed` note when the email as stored has surrounding whitespace, which the
/// domain's `Email` rule removes.
pub(crate) fn note_email_trimmed(field: &str, raw: &str, notes: &mut Vec<Note>) {
    if raw.trim() != raw {
        notes.push(
            Note::new(
                "email_trimmed",
                field,
                json!({ "rule": "surrounding whitespace removed" }),
            )
            .with_original(json!(raw)),
        );
    }
}

/// Typed access to one JSON object, with the path prefix used in errors and notes
/// (`""` at the root, `"Subscription."` inside the subscription, ...).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields<'a> {
    obj: &'a Object,
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(obj: &'a Object, prefix: &'a str) -> Self {
        Self { obj, prefix }
    }

    pub(crate) fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Records the keys of this object that the entity has no place for: the app ignores
    /// unknown properties and the PostgreSQL row cannot hold them, so an
    /// `unknown_fields_dropped` note keeps them, values included, as its original. `known`
    /// lists every property the decoder reads (system fields need not be listed).
    pub(crate) fn note_unknown(&self, known: &[&str], notes: &mut Vec<Note>) {
        let unknown: Object = self
            .obj
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()) && !SYSTEM_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if unknown.is_empty() {
            return;
        }
        // field names are the app's vocabulary, not personal data: safe in the detail
        let names: Vec<&String> = unknown.keys().collect();
        let subject = match self.prefix.strip_suffix('.') {
            Some(object) => object.to_owned(),
            None => "$".to_owned(),
        };
        notes.push(
            Note::new(
                "unknown_fields_dropped",
                subject,
                json!({ "fields": names, "rule": "no column holds them; kept here" }),
            )
            .with_original(Value::Object(unknown)),
        );
    }

    /// The value, or `None` when missing or `null`.
    pub(crate) fn get(&self, name: &str) -> Option<&'a Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    pub(crate) fn opt_str(&self, name: &str) -> Result<Option<&'a str>, DecodeError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(DecodeError::wrong_type(self.path(name), "a string")),
        }
    }

    pub(crate) fn req_str(&self, name: &str) -> Result<&'a str, DecodeError> {
        self.opt_str(name)?
            .ok_or_else(|| DecodeError::missing(self.path(name)))
    }

    /// An optional string where `""` also means none (the app's default for "no value").
    pub(crate) fn opt_nonempty_str(&self, name: &str) -> Result<Option<&'a str>, DecodeError> {
        Ok(self.opt_str(name)?.filter(|s| !s.trim().is_empty()))
    }

    /// A string the app always writes; missing or `null` reads as `""` (the CLR default the
    /// app would see), recorded as a `field_defaulted` note.
    pub(crate) fn str_or_empty(
        &self,
        name: &str,
        notes: &mut Vec<Note>,
    ) -> Result<String, DecodeError> {
        self.or_default(name, notes, String::new(), |s| {
            s.opt_str(name).map(|o| o.map(str::to_owned))
        })
    }

    /// A `bool` the app always writes; missing or `null` reads as `false` (the CLR default),
    /// recorded as a `field_defaulted` note.
    pub(crate) fn bool_or_false(
        &self,
        name: &str,
        notes: &mut Vec<Note>,
    ) -> Result<bool, DecodeError> {
        self.or_default(name, notes, false, |s| match s.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(DecodeError::wrong_type(s.path(name), "true or false")),
        })
    }

    /// An integer the app always writes; missing or `null` reads as `0`, with a note.
    pub(crate) fn int_or_zero(
        &self,
        name: &str,
        notes: &mut Vec<Note>,
    ) -> Result<i64, DecodeError> {
        self.or_default(name, notes, 0, |s| s.opt_int(name))
    }

    pub(crate) fn opt_int(&self, name: &str) -> Result<Option<i64>, DecodeError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                        .map(|f| f as i64)
                })
                .map(Some)
                .ok_or_else(|| DecodeError::wrong_type(self.path(name), "an integer")),
            Some(_) => Err(DecodeError::wrong_type(self.path(name), "an integer")),
        }
    }

    /// A float (`TriggerValue`, `Threshold`); missing or `null` reads as `0`, with a note.
    pub(crate) fn f32_or_zero(
        &self,
        name: &str,
        notes: &mut Vec<Note>,
    ) -> Result<f32, DecodeError> {
        let value = self.or_default(name, notes, 0.0, |s| match s.get(name) {
            None => Ok(None),
            // The app's property is a .NET `float`; its values are f32, written as doubles.
            Some(Value::Number(n)) => n
                .as_f64()
                .map(|f| f as f32)
                .filter(|f| f.is_finite())
                .map(Some)
                .ok_or_else(|| {
                    DecodeError::wrong_type(s.path(name), "a number in the range of a 32-bit float")
                }),
            Some(_) => Err(DecodeError::wrong_type(s.path(name), "a number")),
        })?;
        // `REAL` keeps 24 bits of mantissa: a double the app did not write (a hand-edited or
        // imported document) can change value; keep what was stored
        // (compared by the float's shortest decimal, as .NET and we write it: `0.1` stored is
        // the float 0.1, not a change)
        if let Some(stored) = self.get(name).and_then(Value::as_f64)
            && value.to_string().parse::<f64>().ok() != Some(stored)
        {
            notes.push(
                Note::new(
                    "real_narrowed",
                    self.path(name),
                    json!({ "rule": "narrowed to a 32-bit float (REAL); the value changed" }),
                )
                .with_original(json!(stored)),
            );
        }
        Ok(value)
    }

    fn or_default<T>(
        &self,
        name: &str,
        notes: &mut Vec<Note>,
        default: T,
        read: impl FnOnce(&Self) -> Result<Option<T>, DecodeError>,
    ) -> Result<T, DecodeError> {
        match read(self)? {
            Some(v) => Ok(v),
            None => {
                notes.push(Note::new(
                    "field_defaulted",
                    self.path(name),
                    json!({ "rule": "missing or null; the app's default was applied" }),
                ));
                Ok(default)
            }
        }
    }

    pub(crate) fn opt_date(&self, name: &str) -> Result<Option<DateTime<Utc>>, DecodeError> {
        self.opt_str(name)?
            .map(|s| {
                parse_dotnet(s)
                    .map_err(|rule| DecodeError::new("invalid_date", self.path(name), rule))
            })
            .transpose()
    }

    pub(crate) fn req_date(&self, name: &str) -> Result<DateTime<Utc>, DecodeError> {
        self.opt_date(name)?
            .ok_or_else(|| DecodeError::missing(self.path(name)))
    }

    /// A nullable date where .NET's `DateTime.MaxValue` also means none (`EndDate`).
    pub(crate) fn opt_date_max_is_none(
        &self,
        name: &str,
    ) -> Result<Option<DateTime<Utc>>, DecodeError> {
        Ok(self.opt_date(name)?.filter(|d| !is_max_value(*d)))
    }

    /// A nullable calendar date stored as a midnight date-time (`DateOfBirth`). A time other
    /// than midnight keeps the written date and adds a `date_not_midnight` note.
    pub(crate) fn opt_calendar_date(
        &self,
        name: &str,
        notes: &mut Vec<Note>,
    ) -> Result<Option<NaiveDate>, DecodeError> {
        let Some(raw) = self.opt_str(name)? else {
            return Ok(None);
        };
        let (date, midnight) = parse_dotnet_date(raw)
            .map_err(|rule| DecodeError::new("invalid_date", self.path(name), rule))?;
        if !midnight {
            notes.push(
                Note::new(
                    "date_not_midnight",
                    self.path(name),
                    json!({ "rule": "the written calendar date was kept, the time of day dropped" }),
                )
                .with_original(json!(raw)),
            );
        }
        Ok(Some(date))
    }

    /// A list stored as a comma-joined string (`"a,b"`, the app's format) or, leniently, as a
    /// JSON array of strings. Items are trimmed; empty items are dropped; when that changed
    /// anything, a `list_normalised` note keeps the value as stored.
    pub(crate) fn list(
        &self,
        name: &str,
        notes: &mut Vec<Note>,
    ) -> Result<Vec<String>, DecodeError> {
        let list = self.list_as_read(name)?;
        let changed = match self.get(name) {
            // `a,b` and `a, b` are two spellings of one list (both occur), not a change
            Some(Value::String(s)) => list.join(",") != *s && list.join(", ") != *s,
            Some(Value::Array(items)) => {
                items.len() != list.len()
                    || items.iter().zip(&list).any(|(a, b)| a.as_str() != Some(b))
            }
            _ => false,
        };
        if changed && let Some(raw) = self.get(name) {
            notes.push(
                Note::new(
                    "list_normalised",
                    self.path(name),
                    json!({ "rule": "items trimmed and empty items dropped" }),
                )
                .with_original(raw.clone()),
            );
        }
        Ok(list)
    }

    fn list_as_read(&self, name: &str) -> Result<Vec<String>, DecodeError> {
        let items: Vec<&str> = match self.get(name) {
            None => Vec::new(),
            Some(Value::String(s)) => s.split(',').collect(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| {
                        DecodeError::wrong_type(
                            self.path(name),
                            "a comma-joined string or an array of strings",
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(DecodeError::wrong_type(
                    self.path(name),
                    "a comma-joined string or an array of strings",
                ));
            }
        };
        Ok(items
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// A nested object, `None` when missing or `null`.
    pub(crate) fn opt_object(&self, name: &str) -> Result<Option<&'a Object>, DecodeError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(_) => Err(DecodeError::wrong_type(self.path(name), "an object")),
        }
    }
}

/// Turns an entity's `validate()` failure into a rejection naming the document field.
pub(crate) fn validation_to_decode(
    prefix: &str,
    err: &mystira_domain::ValidationError,
) -> DecodeError {
    DecodeError::validation(format!("{prefix}{}", document_field(err.field())), err)
}

/// The document's (PascalCase) name of an entity field.
pub(crate) fn document_field(entity_field: &str) -> String {
    match entity_field {
        "auth0_user_id" => "ExternalUserId".to_owned(),
        "age_group" => "AgeGroupName".to_owned(),
        "subscription_type" | "type" => "Type".to_owned(),
        "preferred_themes" => "PreferredFantasyThemes".to_owned(),
        other => other
            .split('_')
            .map(|part| {
                let mut chars = part.chars();
                chars
                    .next()
                    .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect(),
    }
}

/// Writes `id` (the entity's Cosmos id) and, when `id` alone would not map back to `key`, the
/// EF 8 `Id` property: see the module docs of [`super`] for why this makes the round trip exact.
pub(crate) fn write_ids(
    obj: &mut Object,
    entity_type: &str,
    key: uuid::Uuid,
    cosmos_id: Option<&str>,
) {
    let canonical = key.hyphenated().to_string();
    let id = cosmos_id.unwrap_or(&canonical);
    let stripped = strip_type_prefix(id, entity_type);
    obj.insert("id".into(), Value::String(id.to_owned()));
    if MappedId::from_source(stripped).uuid != key {
        obj.insert("Id".into(), Value::String(canonical));
    } else if stripped != id {
        // EF 8's `Type|<guid>` form: keep its `Id` with the spelling the `id` carries.
        obj.insert("Id".into(), Value::String(stripped.to_owned()));
    }
}

/// The Cosmos id of an embedded object with its own `Id` (subscription, badge): the original
/// string or the key's canonical text.
pub(crate) fn embedded_id(key: uuid::Uuid, cosmos_id: Option<&str>) -> String {
    cosmos_id.map_or_else(|| key.hyphenated().to_string(), str::to_owned)
}

/// Reads an embedded object's `Id`: `None` when missing, null or empty (then the caller derives
/// a key).
pub(crate) fn read_embedded_id(fields: &Fields<'_>) -> Result<Option<MappedId>, DecodeError> {
    Ok(fields.opt_nonempty_str("Id")?.map(MappedId::from_source))
}

/// A date or `null`.
pub(crate) fn date_value(value: Option<DateTime<Utc>>) -> Value {
    value.map_or(Value::Null, |d| {
        Value::String(super::time::format_dotnet(d))
    })
}

/// A string or `null`.
pub(crate) fn opt_string_value(value: Option<&str>) -> Value {
    value.map_or(Value::Null, |s| Value::String(s.to_owned()))
}
