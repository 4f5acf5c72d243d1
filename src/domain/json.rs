//! JSON parsing for everything that comes from outside (requests, messages, import files,
//! exports): `serde_json::Value`, but an object with the same key twice is refused.

use serde_json::Value;

/// Parses JSON text, refusing an object with a key given twice (naming the key).
pub fn parse(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Strict>(bytes).map(|s| s.0)
}

/// JSON with every object's keys sorted, compact: the same value however it was spelled
/// (key order, white space, escapes).
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    write_canonical(value, &mut out);
    out
}

/// [`canonical`], of an object's fields.
pub fn canonical_object(fields: &serde_json::Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    write_object(fields, &mut out);
    out
}

fn write_object(fields: &serde_json::Map<String, Value>, out: &mut Vec<u8>) {
    let mut keys: Vec<&String> = fields.keys().collect();
    keys.sort_unstable();
    out.push(b'{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, key).expect("writing to a Vec cannot fail");
        out.push(b':');
        write_canonical(&fields[key], out);
    }
    out.push(b'}');
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(fields) => write_object(fields, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec cannot fail"),
    }
}

/// [`parse`], of a string.
pub fn parse_str(text: &str) -> Result<Value, serde_json::Error> {
    parse(text.as_bytes())
}

/// The top-level fields `names` of a JSON object, as [`parse`] gives them, and whether the
/// rest is JSON that [`parse`] accepts (a key twice, at any depth, is the same error), without
/// building the rest: for a reader that needs two fields of every line of a large file (the
/// importer). `Ok(None)` when the text is JSON but not an object; a field given as `null` is
/// `Some(Value::Null)`.
pub fn object_fields<const N: usize>(
    text: &str,
    names: [&str; N],
) -> Result<Option<[Option<Value>; N]>, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let fields = Fields { names }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(fields)
}

/// JSON as `serde_json::Value` parses it, except that an object with the same key twice is
/// refused (naming the key) instead of keeping the last: `{"name": "A", "name": "B"}` is
/// ambiguous, and parsers disagree on which one counts.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            match fields.entry(key) {
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                serde_json::map::Entry::Occupied(slot) => return Err(key_twice(slot.key())),
            }
        }
        Ok(Value::Object(fields))
    }
}

/// An object key, borrowed from the text when it holds no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The error for an object that gives `key` twice.
fn key_twice<E: serde::de::Error>(key: &str) -> E {
    E::custom(format_args!(
        "the key {:?} appears twice in one object",
        key.chars().take(64).collect::<String>()
    ))
}

/// The keys of one object so far.
#[derive(Default)]
struct Seen<'de>(Vec<Key<'de>>);

impl<'de> Seen<'de> {
    fn insert<E: serde::de::Error>(&mut self, key: Key<'de>) -> Result<(), E> {
        if self.0.iter().any(|k| k.0 == key.0) {
            return Err(key_twice(&key.0));
        }
        self.0.push(key);
        Ok(())
    }
}

/// JSON that [`parse`] accepts, checked and dropped.
struct Valid;

impl<'de> serde::Deserialize<'de> for Valid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValidVisitor)
    }
}

struct ValidVisitor;

impl<'de> serde::de::Visitor<'de> for ValidVisitor {
    type Value = Valid;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_str<E>(self, _: &str) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_unit<E>(self) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_none<E>(self) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
        while seq.next_element::<Valid>()?.is_some() {}
        Ok(Valid)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
        let mut seen = Seen::default();
        while let Some(key) = map.next_key::<Key>()? {
            seen.insert(key)?;
            map.next_value::<Valid>()?;
        }
        Ok(Valid)
    }
}

/// What [`object_fields`] reads.
struct Fields<'n, const N: usize> {
    names: [&'n str; N],
}

impl<'de, const N: usize> serde::de::DeserializeSeed<'de> for Fields<'_, N> {
    type Value = Option<[Option<Value>; N]>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, const N: usize> serde::de::Visitor<'de> for Fields<'_, N> {
    type Value = Option<[Option<Value>; N]>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        ValidVisitor.visit_seq(seq).map(|_| None)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found: [Option<Value>; N] = std::array::from_fn(|_| None);
        let mut seen = Seen::default();
        while let Some(key) = map.next_key::<Key>()? {
            match self.names.iter().position(|name| *name == key.0) {
                Some(i) => found[i] = Some(map.next_value::<Strict>()?.0),
                None => {
                    map.next_value::<Valid>()?;
                }
            }
            seen.insert(key)?;
        }
        Ok(Some(found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_twice_is_refused_at_any_depth_and_everything_else_parses_as_serde_json_does() {
        for text in [r#"{"a":1,"a":2}"#, r#"[{"x":{"b":1,"b":1}}]"#, r#"{"a":1,"\u0061":2}"#] {
            let e = parse_str(text).unwrap_err().to_string();
            assert!(e.contains("appears twice"), "{text}: {e}");
        }
        for text in [r#"{"a":[1,-2,3.5,"s",null,true,{"b":{}}],"c":18446744073709551615}"#, "[]", "7"] {
            assert_eq!(parse_str(text).unwrap(), serde_json::from_str::<Value>(text).unwrap(), "{text}");
        }
    }

    #[test]
    fn object_fields_reads_what_parse_reads_and_refuses_what_parse_refuses() {
        let texts = [
            r#"{"id":"u1","name":"A","attributes":{"tags":["x",{"k":null}]},"ingestedAt":null}"#,
            r#"{"name":"A"}"#,
            r#"{"id":7,"\u0069ngestedAt":"2026-01-01T00:00:00Z"}"#,
            r#"{"id":{"nested":[1,2]}}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"id":"u1","attributes":{"x":{"b":1,"b":1}}}"#,
            r#"{"id":"u1","\u0069d":"u2"}"#,
            r#"{"id":{"b":1,"b":2}}"#,
            r#"[{"x":{"b":1,"b":1}}]"#,
            r#"{"id":"u1"} trailing"#,
            r#"{"id":"u1""#,
            r#"[1,{"id":"u1"}]"#,
            "7",
            "\"text\"",
            "null",
        ];
        for text in texts {
            let whole = parse_str(text);
            let fields = object_fields(text, ["id", "ingestedAt"]);
            match (&whole, &fields) {
                (Ok(Value::Object(map)), Ok(Some([id, at]))) => {
                    assert_eq!(id.as_ref(), map.get("id"), "{text}");
                    assert_eq!(at.as_ref(), map.get("ingestedAt"), "{text}");
                }
                (Ok(other), Ok(None)) => assert!(!other.is_object(), "{text}"),
                (Err(a), Err(b)) => assert_eq!(
                    a.to_string().contains("appears twice"),
                    b.to_string().contains("appears twice"),
                    "{text}: {a} / {b}"
                ),
                _ => panic!("{text}: parse gave {whole:?}, object_fields gave {fields:?}"),
            }
        }
    }
}
