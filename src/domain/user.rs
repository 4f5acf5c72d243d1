//! The user record of the HTTP contract and the document the store keeps.

use serde::Serialize;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{country, email};

/// The most characters a name may have after trimming.
pub const MAX_NAME_CHARS: usize = 200;
/// The largest `attributes` object, serialized as compact JSON.
pub const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;
/// The deepest `attributes` may nest; the object itself is level 1.
pub const MAX_ATTRIBUTES_DEPTH: usize = 8;
const MAX_ID_LEN: usize = 128;

/// The ingestion times a version may carry. The embedded store orders versions by
/// nanoseconds since 1970 in a signed 64-bit integer, which ends on 2262-04-11: past it (or
/// before 1970) a comparison would wrap and an old version overwrite a newer one.
pub const INGESTED_AT_RANGE: std::ops::Range<OffsetDateTime> =
    time::macros::datetime!(1970-01-01 0:00 UTC)..time::macros::datetime!(2262-01-01 0:00 UTC);

/// How far ahead of `now` an ingestion time from outside may be: producers' clocks differ.
/// Further ahead, the version would win over every update until then.
pub const MAX_CLOCK_SKEW: time::Duration = time::Duration::hours(1);

/// Why an ingestion time from outside, at `now`, lies too far in the future to be stored.
pub fn check_not_ahead(t: OffsetDateTime, now: OffsetDateTime) -> Result<(), &'static str> {
    if t > now + MAX_CLOCK_SKEW {
        Err("is more than an hour in the future")
    } else {
        Ok(())
    }
}

/// Why an ingestion time taken from outside (a message, an export) cannot be stored.
pub fn check_ingested_at(t: OffsetDateTime) -> Result<(), &'static str> {
    if INGESTED_AT_RANGE.contains(&t) {
        Ok(())
    } else {
        Err("must be between 1970-01-01 and 2262-01-01 (UTC)")
    }
}
const MAX_AGE: u64 = 150;

/// One bad field of a request, as listed in a problem+json `errors` array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// A user id that can be stored AND read back: Cosmos DB stores ids holding `/ \ ? #` but
/// can never point-read them, so only a conservative ASCII alphabet is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Checks an id taken from a request body, a URL path or a message.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.is_empty() {
            return Err("must not be empty");
        }
        if raw.len() > MAX_ID_LEN {
            return Err("must be at most 128 characters long");
        }
        // A URL path cannot hold them: /api/users/.. is /api/.
        if raw == "." || raw == ".." {
            return Err("must not be . or .. (a URL path cannot carry them)");
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b);
        if !raw.bytes().all(allowed) {
            return Err("may only hold ASCII letters, digits and - _ . : @");
        }
        Ok(Self(raw.to_owned()))
    }

    /// A fresh id for a record that came without one.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The id of a message that reached the topic without one (another producer): derived
    /// from the message id, so a redelivery of that message lands on the same document.
    pub fn for_message(message_id: &str) -> Self {
        Self(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, message_id.as_bytes()).to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A record a client asked us to ingest, checked field by field.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUser {
    pub id: Option<UserId>,
    pub name: String,
    pub email: String,
    pub age: Option<u8>,
    pub country: Option<String>,
    pub attributes: Option<Map<String, Value>>,
}

/// The document the store keeps and GET returns: the user's fields plus `ingestedAt`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDocument {
    pub id: UserId,
    pub name: String,
    pub email: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Map<String, Value>>,
    #[serde(serialize_with = "rfc3339")]
    pub ingested_at: OffsetDateTime,
}

const RECORD_FIELDS: [&str; 6] = ["id", "name", "email", "age", "country", "attributes"];

impl NewUser {
    /// Checks a request body, naming every bad field at once.
    pub fn parse(body: Value) -> Result<Self, Vec<FieldError>> {
        let Value::Object(fields) = body else {
            return Err(vec![FieldError::new(
                "",
                format!("the body must be a JSON object, not {}", json_kind(&body)),
            )]);
        };
        let (user, _) = parse_fields(fields, false)?;
        Ok(user)
    }

    /// The document as stored: the id given, or a fresh one, and the acceptance time.
    pub fn into_document(self, ingested_at: OffsetDateTime) -> UserDocument {
        let id = self.id.unwrap_or_else(UserId::generate);
        UserDocument {
            id,
            name: self.name,
            email: self.email,
            age: self.age,
            country: self.country,
            attributes: self.attributes,
            ingested_at: truncate_to_micros(ingested_at),
        }
    }
}

impl UserDocument {
    /// Reads a document back from a topic message. The message is checked again: the topic
    /// may carry messages from other producers, and a bad one must be dead-lettered, not
    /// stored. A message without an id gets one derived from `message_id`; one without
    /// `ingestedAt` takes `enqueued_at`.
    pub fn from_message(
        body: Value,
        message_id: &str,
        enqueued_at: OffsetDateTime,
    ) -> Result<Self, Vec<FieldError>> {
        let Value::Object(fields) = body else {
            return Err(vec![FieldError::new(
                "",
                format!("the message must be a JSON object, not {}", json_kind(&body)),
            )]);
        };
        let (user, ingested_at) = parse_fields(fields, true)?;
        let id = user.id.unwrap_or_else(|| UserId::for_message(message_id));
        Ok(Self {
            id,
            name: user.name,
            email: user.email,
            age: user.age,
            country: user.country,
            attributes: user.attributes,
            ingested_at: truncate_to_micros(ingested_at.unwrap_or(enqueued_at)),
        })
    }

    /// The document as compact JSON: what the topic carries and the store keeps.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a user document always serializes")
    }
}

fn parse_fields(
    mut fields: Map<String, Value>,
    allow_ingested_at: bool,
) -> Result<(NewUser, Option<OffsetDateTime>), Vec<FieldError>> {
    let mut errors = Vec::new();

    let ingested_at = if allow_ingested_at {
        match fields.remove("ingestedAt") {
            None | Some(Value::Null) => None,
            // In UTC it must still be a date of years 0000 to 9999 (9999-12-31T23:59:59-01:00 is not).
            Some(Value::String(s)) => {
                match OffsetDateTime::parse(&s, &Rfc3339)
                    .ok()
                    .and_then(|t| t.checked_to_offset(time::UtcOffset::UTC))
                {
                    Some(t) if (0..=9999).contains(&t.year()) => match check_ingested_at(t) {
                        Ok(()) => Some(t),
                        Err(why) => {
                            errors.push(FieldError::new("ingestedAt", why));
                            None
                        }
                    },
                    _ => {
                        errors.push(FieldError::new(
                            "ingestedAt",
                            "must be an RFC 3339 date-time in the years 0000 to 9999 (UTC)",
                        ));
                        None
                    }
                }
            }
            Some(other) => {
                errors.push(FieldError::new(
                    "ingestedAt",
                    format!("must be a string, not {}", json_kind(&other)),
                ));
                None
            }
        }
    } else {
        None
    };

    let mut unknown: Vec<&String> = fields.keys().filter(|k| !RECORD_FIELDS.contains(&k.as_str())).collect();
    unknown.sort();
    for field in unknown {
        errors.push(FieldError::new(field.clone(), "is not a field of a user record"));
    }

    let id = match fields.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match UserId::parse(&s) {
            Ok(id) => Some(id),
            Err(why) => {
                errors.push(FieldError::new("id", why));
                None
            }
        },
        Some(other) => {
            errors.push(FieldError::new("id", format!("must be a string, not {}", json_kind(&other))));
            None
        }
    };

    let name = match fields.remove("name") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("name", "is required"));
            None
        }
        Some(Value::String(s)) => {
            let trimmed = s.trim();
            let chars = trimmed.chars().count();
            // A name must show something: not only white space and characters that render as
            // nothing (Unicode's default-ignorable code points — zero-width spaces and joiners,
            // soft hyphens, bidi controls, variation selectors, tags — the Hangul fillers and
            // the braille blank).
            if chars == 0 || trimmed.chars().all(|c| c.is_whitespace() || renders_as_nothing(c)) {
                errors.push(FieldError::new(
                    "name",
                    "must not be empty, only white space or only invisible characters",
                ));
                None
            } else if chars > MAX_NAME_CHARS {
                errors.push(FieldError::new(
                    "name",
                    format!("must be at most {MAX_NAME_CHARS} characters long"),
                ));
                None
            } else if trimmed.chars().any(char::is_control) {
                errors.push(FieldError::new("name", "must not contain control characters"));
                None
            } else {
                Some(trimmed.to_owned())
            }
        }
        Some(other) => {
            errors.push(FieldError::new("name", format!("must be a string, not {}", json_kind(&other))));
            None
        }
    };

    let email = match fields.remove("email") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("email", "is required"));
            None
        }
        Some(Value::String(s)) => match email::check(&s) {
            Ok(()) => Some(s),
            Err(why) => {
                errors.push(FieldError::new("email", why));
                None
            }
        },
        Some(other) => {
            errors.push(FieldError::new("email", format!("must be a string, not {}", json_kind(&other))));
            None
        }
    };

    let age = match fields.remove("age") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(a) if a <= MAX_AGE => Some(a as u8),
            Some(_) => {
                errors
                    .push(FieldError::new("age", format!("must be a whole number between 0 and {MAX_AGE}")));
                None
            }
            // 36.0: in range, but not an integer literal.
            None if n.as_f64().is_some_and(|f| {
                f.fract() == 0.0 && (0.0..=MAX_AGE as f64).contains(&f) && f.is_sign_positive()
            }) =>
            {
                errors.push(FieldError::new("age", "must be written as an integer (36, not 36.0)"));
                None
            }
            // -3, 1e30, -0.0: whole numbers, out of range (-0.0 is no age either).
            _ if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) => {
                errors
                    .push(FieldError::new("age", format!("must be a whole number between 0 and {MAX_AGE}")));
                None
            }
            _ => {
                errors.push(FieldError::new("age", "must be a whole number"));
                None
            }
        },
        Some(other) => {
            errors.push(FieldError::new("age", format!("must be an integer, not {}", json_kind(&other))));
            None
        }
    };

    let country = match fields.remove("country") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if country::is_assigned(&s) => Some(s),
        Some(Value::String(_)) => {
            errors.push(FieldError::new(
                "country",
                "must be an ISO 3166-1 alpha-2 code in upper case, such as \"DE\"",
            ));
            None
        }
        Some(other) => {
            errors.push(FieldError::new("country", format!("must be a string, not {}", json_kind(&other))));
            None
        }
    };

    let attributes = match fields.remove("attributes") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => {
            let value = Value::Object(map);
            if depth(&value) > MAX_ATTRIBUTES_DEPTH {
                errors.push(FieldError::new(
                    "attributes",
                    format!("must not nest deeper than {MAX_ATTRIBUTES_DEPTH} levels"),
                ));
                None
            } else if serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len()) > MAX_ATTRIBUTES_BYTES {
                errors.push(FieldError::new(
                    "attributes",
                    format!("must be at most {MAX_ATTRIBUTES_BYTES} bytes as JSON"),
                ));
                None
            } else {
                let before = errors.len();
                unexact_numbers(&value, &mut "attributes".to_owned(), &mut errors);
                match value {
                    Value::Object(map) if errors.len() == before => Some(map),
                    _ => None,
                }
            }
        }
        Some(other) => {
            errors.push(FieldError::new(
                "attributes",
                format!("must be a JSON object, not {}", json_kind(&other)),
            ));
            None
        }
    };

    match (name, email) {
        (Some(name), Some(email)) if errors.is_empty() => {
            Ok((NewUser { id, name, email, age, country, attributes }, ingested_at))
        }
        _ => Err(errors),
    }
}

/// Unicode's Default_Ignorable_Code_Point set, with the braille blank (U+2800).
fn renders_as_nothing(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

/// Past ±2^63 a JSON parser keeps a whole number only as a 64-bit float, so
/// 12345678901234567890123 would be stored as 1.2345678901234568e22: changed without a word.
/// Every such number is named (`attributes.a.list[2]`) instead, to be sent as a string.
fn unexact_numbers(value: &Value, path: &mut String, errors: &mut Vec<FieldError>) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                if f.fract() == 0.0 && f.abs() >= 2f64.powi(63) {
                    errors.push(FieldError::new(
                        path.clone(),
                        "is a whole number beyond 64 bits, which cannot be kept exactly: send it as a string",
                    ));
                }
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = path.len();
                path.push('.');
                path.push_str(key);
                unexact_numbers(item, path, errors);
                path.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                unexact_numbers(item, path, errors);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// How deep a value nests: a scalar is 0, an empty or flat object or array is 1.
fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// How a JSON value is named in an error message.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Microseconds are what every backend keeps losslessly (Cosmos, JavaScript clients).
fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    // Every caller's time is UTC already, or in range once in UTC; keep it as it is otherwise.
    let t = t.checked_to_offset(time::UtcOffset::UTC).unwrap_or(t);
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000).expect("a truncated nanosecond is in range")
}

fn rfc3339<S: serde::Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    let text = t.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
    s.serialize_str(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields_of(result: Result<NewUser, Vec<FieldError>>) -> Vec<String> {
        result.expect_err("should be refused").into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_complete_record_is_accepted_with_its_name_trimmed() {
        let user = NewUser::parse(json!({
            "id": "usr-1", "name": "  Frédéric Lambert ", "email": "fl@example.com",
            "age": 0, "country": "FR", "attributes": {"plan": "pro", "tags": ["a"]}
        }))
        .unwrap();
        assert_eq!(user.id.unwrap().as_str(), "usr-1");
        assert_eq!(user.name, "Frédéric Lambert");
        assert_eq!(user.age, Some(0));
        assert_eq!(user.country.as_deref(), Some("FR"));
    }

    #[test]
    fn a_missing_or_null_id_is_left_for_the_server_to_assign() {
        for body in [
            json!({"name": "A", "email": "a@example.com"}),
            json!({"id": null, "name": "A", "email": "a@example.com"}),
        ] {
            let doc = NewUser::parse(body).unwrap().into_document(OffsetDateTime::now_utc());
            assert!(uuid::Uuid::parse_str(doc.id.as_str()).is_ok());
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let table: Vec<(Value, Vec<&str>)> = vec![
            (json!({}), vec!["name", "email"]),
            (json!({"name": "Ada"}), vec!["email"]),
            (json!({"email": "ada@example.com"}), vec!["name"]),
            (json!({"name": "   ", "email": "ada@example.com"}), vec!["name"]),
            (json!({"name": "Ada\u{0}L", "email": "ada@example.com"}), vec!["name"]),
            (json!({"name": "x".repeat(201), "email": "ada@example.com"}), vec!["name"]),
            (json!({"name": "Ada", "email": "ada@"}), vec!["email"]),
            (json!({"name": "Ada", "email": 5}), vec!["email"]),
            (json!({"name": "Ada", "email": "a@example.com", "age": -1}), vec!["age"]),
            (json!({"name": "Ada", "email": "a@example.com", "age": 151}), vec!["age"]),
            (json!({"name": "Ada", "email": "a@example.com", "age": "36"}), vec!["age"]),
            (json!({"name": "Ada", "email": "a@example.com", "age": 36.5}), vec!["age"]),
            (json!({"name": "Ada", "email": "a@example.com", "country": "de"}), vec!["country"]),
            (json!({"name": "Ada", "email": "a@example.com", "country": "XX"}), vec!["country"]),
            (json!({"name": "Ada", "email": "a@example.com", "id": 123}), vec!["id"]),
            (json!({"name": "Ada", "email": "a@example.com", "id": ""}), vec!["id"]),
            (json!({"name": "Ada", "email": "a@example.com", "id": "ab/cd"}), vec!["id"]),
            (json!({"name": "Ada", "email": "a@example.com", "id": "a#b"}), vec!["id"]),
            (json!({"name": "Ada", "email": "a@example.com", "id": "x".repeat(129)}), vec!["id"]),
            (json!({"name": "Ada", "email": "a@example.com", "attributes": "vip"}), vec!["attributes"]),
            (
                json!({"name": "Ada", "email": "a@example.com", "attributes": {"blob": "x".repeat(17_000)}}),
                vec!["attributes"],
            ),
            (
                json!({"name": "Ada", "email": "a@example.com", "ingestedAt": "2024-01-01T00:00:00Z"}),
                vec!["ingestedAt"],
            ),
            (json!({"name": "Ada", "emial": "a@example.com", "email": "a@example.com"}), vec!["emial"]),
            (
                json!({"id": 1, "name": "", "email": "x", "age": 999, "country": "zz", "attributes": [], "extra": 1}),
                vec!["extra", "id", "name", "email", "age", "country", "attributes"],
            ),
        ];
        for (body, expected) in table {
            assert_eq!(fields_of(NewUser::parse(body.clone())), expected, "{body}");
        }
    }

    #[test]
    fn attributes_may_nest_eight_levels_but_not_nine() {
        let nest = |levels: usize| (1..levels).fold(json!({"leaf": 1}), |inner, _| json!({ "a": inner }));
        assert!(NewUser::parse(json!({"name": "A", "email": "a@example.com", "attributes": nest(8)})).is_ok());
        assert_eq!(
            fields_of(NewUser::parse(json!({"name": "A", "email": "a@example.com", "attributes": nest(9)}))),
            ["attributes"]
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused_as_a_whole() {
        for body in [json!([1, 2]), json!("x"), json!(null), json!(3)] {
            assert_eq!(fields_of(NewUser::parse(body)), [""]);
        }
    }

    #[test]
    fn a_document_round_trips_through_a_message() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let doc = NewUser::parse(json!({"name": "Ada", "email": "a@example.com", "age": 36, "attributes": {"k": [1, {"x": null}]}}))
            .unwrap()
            .into_document(t);
        let json: Value = serde_json::from_str(&doc.to_json()).unwrap();
        assert_eq!(json["ingestedAt"], "2023-11-14T22:13:20.123456Z");
        let back = UserDocument::from_message(json, "m-1", OffsetDateTime::UNIX_EPOCH).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn whole_numbers_beyond_64_bits_in_attributes_are_named_not_rounded() {
        let body = r#"{"name": "A", "email": "a@example.com", "attributes": {"ok": 18446744073709551615, "neg": -9223372036854775808, "f": 1.5, "deep": {"list": [1, 12345678901234567890123]}, "big": -1e300}}"#;
        let errors = NewUser::parse(serde_json::from_str(body).unwrap()).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["attributes.big", "attributes.deep.list[1]"], "{errors:?}");
        let fine = r#"{"name": "A", "email": "a@example.com", "attributes": {"u": 18446744073709551615, "i": -9223372036854775808, "f": 0.1, "e": 1e18}}"#;
        let user = NewUser::parse(serde_json::from_str(fine).unwrap()).unwrap();
        let json = serde_json::to_string(&user.attributes).unwrap();
        assert!(json.contains("18446744073709551615") && json.contains("-9223372036854775808"), "{json}");
    }

    #[test]
    fn a_name_of_only_invisible_characters_is_refused() {
        for name in [
            "\u{200B}",
            " \u{200B}\u{FEFF} ",
            "\u{2060}",
            "\u{00AD}",
            "\u{202E}",
            "\u{3164}",
            "\u{2800}",
            "\u{E0020}",
            "\u{FE0F}\u{180E}",
        ] {
            let errors = NewUser::parse(json!({"name": name, "email": "a@example.com"})).unwrap_err();
            assert_eq!(errors[0].field, "name", "{name:?}");
        }
        for name in ["A\u{200D}B", "李", "Ünal", "O'Brien", "محمد", "3", "-", "🦀"] {
            assert!(NewUser::parse(json!({"name": name, "email": "a@example.com"})).is_ok(), "{name}");
        }
    }

    #[test]
    fn an_age_out_of_range_says_so_however_it_is_written() {
        for age in ["-1", "151", "-0.0", "1e30", "200.0"] {
            let body = format!(r#"{{"name": "A", "email": "a@example.com", "age": {age}}}"#);
            let errors = NewUser::parse(serde_json::from_str(&body).unwrap()).unwrap_err();
            assert!(errors[0].message.contains("between 0 and"), "{age}: {errors:?}");
        }
        let errors = NewUser::parse(json!({"name": "A", "email": "a@example.com", "age": 36.5})).unwrap_err();
        assert_eq!(errors[0].message, "must be a whole number");
        let errors = NewUser::parse(
            serde_json::from_str(r#"{"name": "A", "email": "a@example.com", "age": 36.0}"#).unwrap(),
        )
        .unwrap_err();
        assert!(errors[0].message.contains("integer"), "{errors:?}");
    }

    #[test]
    fn an_ingestion_time_outside_the_years_0000_to_9999_in_utc_is_refused_not_a_panic() {
        for t in ["9999-12-31T23:59:59-23:59", "0000-01-01T00:00:00+23:59", "9999-12-31T23:00:00-01:00"] {
            let message = json!({"id": "u1", "name": "A", "email": "a@example.com", "ingestedAt": t});
            let errors = UserDocument::from_message(message, "m", OffsetDateTime::UNIX_EPOCH).unwrap_err();
            assert_eq!(errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["ingestedAt"], "{t}");
        }
        // In range for RFC 3339, but not for the store's ordering (it would wrap): refused too.
        for t in ["9999-12-31T23:59:59+01:00", "2263-01-01T00:00:00Z", "1969-12-31T23:59:59Z"] {
            let message = json!({"id": "u1", "name": "A", "email": "a@example.com", "ingestedAt": t});
            let errors = UserDocument::from_message(message, "m", OffsetDateTime::UNIX_EPOCH).unwrap_err();
            assert!(errors[0].message.contains("between 1970-01-01 and 2262-01-01"), "{t}: {errors:?}");
        }
        let ok =
            json!({"id": "u1", "name": "A", "email": "a@example.com", "ingestedAt": "2261-12-31T23:59:59Z"});
        assert!(UserDocument::from_message(ok, "m", OffsetDateTime::UNIX_EPOCH).is_ok());
        assert!(UserId::parse("..").is_err() && UserId::parse(".").is_err() && UserId::parse("...").is_ok());
    }

    #[test]
    fn a_message_without_id_or_time_takes_them_from_the_message() {
        let enqueued = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let a = UserDocument::from_message(json!({"name": "A", "email": "a@example.com"}), "msg-1", enqueued)
            .unwrap();
        let b = UserDocument::from_message(json!({"name": "A", "email": "a@example.com"}), "msg-1", enqueued)
            .unwrap();
        assert_eq!(a.id, b.id, "a redelivery must map to the same document");
        assert_eq!(a.ingested_at, enqueued);
        let c = UserDocument::from_message(json!({"name": "A", "email": "a@example.com"}), "msg-2", enqueued)
            .unwrap();
        assert_ne!(a.id, c.id);
    }
}
