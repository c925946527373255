//! Values, rows and record keys as the engine sees them, independent of any system's types.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// One field value in the engine's canonical form.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL, kept apart from the empty string.
    Null,
    /// A 64-bit signed integer.
    Int(i64),
    /// A double-precision float.
    Float(f64),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A boolean, for systems that have one.
    Bool(bool),
}

/// A column or field name. Shared: putting one into a row copies a pointer, not the text (rows
/// are built per record, their names are the same few for a whole table).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

impl Name {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name(s.into())
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name(s.into())
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A record's columns by name.
pub type Row = BTreeMap<Name, Value>;

impl Value {
    /// The name of this value's type, for error messages and dead letters.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "integer",
            Value::Float(_) => "real",
            Value::Text(_) => "text",
            Value::Bytes(_) => "blob",
            Value::Bool(_) => "boolean",
        }
    }

    /// True for `Null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as text when it is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// Equality that tolerates the type changes a storage engine makes on write: an integer
    /// stored into a text column reads back as its decimal text, 1 and 1.0 are the same number.
    /// Used wherever the engine asks "did this field change?", so a coercion never looks like an
    /// edit (which would make two systems bounce a value back and forth forever).
    pub fn same(&self, other: &Value) -> bool {
        if self == other {
            return true;
        }
        match (self, other) {
            (Value::Int(a), Value::Float(b)) | (Value::Float(b), Value::Int(a)) => (*a as f64) == *b,
            (Value::Int(a), Value::Text(t)) | (Value::Text(t), Value::Int(a)) => a.to_string() == *t,
            (Value::Float(a), Value::Text(t)) | (Value::Text(t), Value::Float(a)) => {
                t.parse::<f64>().map(|b| b == *a).unwrap_or(false) && !t.trim().is_empty()
            }
            (Value::Bool(a), Value::Int(i)) | (Value::Int(i), Value::Bool(a)) => i64::from(*a) == *i,
            _ => false,
        }
    }

    /// The JSON form used in the state store and the audit trail.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Int(i) => J::from(*i),
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map(J::Number).unwrap_or_else(|| J::String(f.to_string()))
            }
            Value::Text(s) => J::String(s.clone()),
            Value::Bytes(b) => {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                serde_json::json!({ "$bytes": hex })
            }
            Value::Bool(b) => J::Bool(*b),
        }
    }

    /// Reads the JSON form written by [`Value::to_json`].
    pub fn from_json(j: &serde_json::Value) -> Value {
        use serde_json::Value as J;
        match j {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Value::Text(s.clone()),
            J::Object(o) => match o.get("$bytes").and_then(|h| h.as_str()) {
                Some(hex) => Value::Bytes(
                    (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect(),
                ),
                None => Value::Text(j.to_string()),
            },
            J::Array(_) => Value::Text(j.to_string()),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Text(s) => write!(f, "{s:?}"),
            other => write!(f, "{}", other.to_json()),
        }
    }
}

/// Serializes a value exactly as [`Value::to_json`] would, without building the JSON tree.
struct JsonValue<'a>(&'a Value);

impl serde::Serialize for JsonValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.0 {
            Value::Null => s.serialize_unit(),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Float(f) => s.serialize_str(&f.to_string()),
            Value::Text(t) => s.serialize_str(t),
            Value::Bytes(b) => {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("$bytes", &hex)?;
                m.end()
            }
            Value::Bool(b) => s.serialize_bool(*b),
        }
    }
}

struct JsonRow<'a>(&'a Row);

impl serde::Serialize for JsonRow<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, JsonValue(v))))
    }
}

/// Encodes a row as JSON text.
pub fn row_to_json(row: &Row) -> String {
    serde_json::to_string(&JsonRow(row)).expect("a row encodes as JSON")
}

/// Decodes a row written by [`row_to_json`]; anything else gives an empty row.
pub fn row_from_json(text: &str) -> Row {
    // Read straight into a row (links' bases are read for every change: no JSON tree first).
    serde_json::from_str::<JsonRowOwned>(text).map(|r| r.0).unwrap_or_default()
}

struct JsonRowOwned(Row);

impl<'de> serde::Deserialize<'de> for JsonRowOwned {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> serde::de::Visitor<'de> for RowVisitor {
            type Value = JsonRowOwned;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of field values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonRowOwned, A::Error> {
                let mut row = Row::new();
                while let Some(name) = map.next_key_seed(NameSeed)? {
                    let JsonCell(v) = map.next_value()?;
                    row.insert(name, v);
                }
                Ok(JsonRowOwned(row))
            }
        }
        d.deserialize_map(RowVisitor)
    }
}

struct NameSeed;

impl<'de> serde::de::DeserializeSeed<'de> for NameSeed {
    type Value = Name;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Name, D::Error> {
        d.deserialize_str(NameSeed)
    }
}

impl serde::de::Visitor<'_> for NameSeed {
    type Value = Name;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name, E> {
        Ok(Name::from(v))
    }
}

/// One value of [`row_from_json`], read as [`Value::from_json`] reads it.
struct JsonCell(Value);

impl<'de> serde::Deserialize<'de> for JsonCell {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CellVisitor;
        impl<'de> serde::de::Visitor<'de> for CellVisitor {
            type Value = JsonCell;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<JsonCell, E> {
                Ok(JsonCell(Value::Null))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<JsonCell, E> {
                Ok(JsonCell(Value::Null))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<JsonCell, E> {
                Ok(JsonCell(Value::Bool(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<JsonCell, E> {
                Ok(JsonCell(Value::Int(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<JsonCell, E> {
                Ok(JsonCell(i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64))))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<JsonCell, E> {
                Ok(JsonCell(Value::Float(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<JsonCell, E> {
                Ok(JsonCell(Value::Text(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<JsonCell, E> {
                Ok(JsonCell(Value::Text(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<JsonCell, A::Error> {
                let j = <serde_json::Value as serde::Deserialize>::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(JsonCell(Value::from_json(&j)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<JsonCell, A::Error> {
                let j = <serde_json::Value as serde::Deserialize>::deserialize(
                    serde::de::value::SeqAccessDeserializer::new(seq),
                )?;
                Ok(JsonCell(Value::from_json(&j)))
            }
        }
        d.deserialize_any(CellVisitor)
    }
}

/// Encodes a `[left, right]` pair of rows (a link's pending values) as JSON.
pub fn pair_to_json(pair: &[Row; 2]) -> String {
    format!("[{},{}]", row_to_json(&pair[0]), row_to_json(&pair[1]))
}

/// Reads [`pair_to_json`]'s form from parsed JSON; anything else gives two empty rows.
pub fn pair_from_json_value(j: &serde_json::Value) -> [Row; 2] {
    match j.as_array().map(Vec::as_slice) {
        Some([l, r]) => [row_from_json_value(l), row_from_json_value(r)],
        _ => Default::default(),
    }
}

/// [`row_from_json`] of parsed JSON.
pub fn row_from_json_value(j: &serde_json::Value) -> Row {
    match j {
        serde_json::Value::Object(map) => {
            map.iter().map(|(k, v)| (Name::from(k.as_str()), Value::from_json(v))).collect()
        }
        _ => Row::new(),
    }
}

/// A record's primary key on one system: the key column values in key order, held as their
/// canonical JSON array text so it can be compared, ordered and stored as one string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// Builds a key from its column values.
    pub fn from_values(values: &[Value]) -> Key {
        let items: Vec<JsonValue<'_>> = values.iter().map(JsonValue).collect();
        Key(serde_json::to_string(&items).expect("a key encodes as JSON"))
    }

    /// Parses the stored text form; it is re-encoded so equal keys compare equal.
    pub fn parse(text: &str) -> Option<Key> {
        match serde_json::from_str::<serde_json::Value>(text).ok()? {
            serde_json::Value::Array(items) => {
                let vals: Vec<Value> = items.iter().map(Value::from_json).collect();
                Some(Key::from_values(&vals))
            }
            _ => None,
        }
    }

    /// A key from text that [`Key::as_str`] gave (as stored in the state): taken as it is.
    pub fn from_stored(text: String) -> Key {
        Key(text)
    }

    /// The key column values.
    pub fn values(&self) -> Vec<Value> {
        match serde_json::from_str::<serde_json::Value>(&self.0) {
            Ok(serde_json::Value::Array(items)) => items.iter().map(Value::from_json).collect(),
            _ => Vec::new(),
        }
    }

    /// The stored text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_compare() {
        let k = Key::from_values(&[Value::Int(7), Value::Text("a\"b".into())]);
        assert_eq!(Key::parse(k.as_str()), Some(k.clone()));
        assert_eq!(k.values(), vec![Value::Int(7), Value::Text("a\"b".into())]);
        assert_eq!(Key::parse("[ 7 ]"), Some(Key::from_values(&[Value::Int(7)])));
    }

    #[test]
    fn loose_equality_only_covers_storage_coercions() {
        assert!(Value::Int(5).same(&Value::Text("5".into())));
        assert!(Value::Int(1).same(&Value::Float(1.0)));
        assert!(!Value::Int(5).same(&Value::Text("05".into())));
        assert!(!Value::Null.same(&Value::Text(String::new())));
        assert!(!Value::Text("a".into()).same(&Value::Text("A".into())));
    }

    #[test]
    fn direct_json_matches_the_json_tree() {
        let row: Row = [
            ("a".into(), Value::Null),
            ("b".into(), Value::Int(-7)),
            ("c".into(), Value::Float(0.1)),
            ("d".into(), Value::Float(f64::INFINITY)),
            ("e".into(), Value::Text("q\"\\\n€".into())),
            ("f".into(), Value::Bytes(vec![0, 255])),
            ("g".into(), Value::Bool(true)),
        ]
        .into_iter()
        .collect();
        let tree: serde_json::Map<String, serde_json::Value> =
            row.iter().map(|(k, v)| (k.to_string(), v.to_json())).collect();
        assert_eq!(row_to_json(&row), serde_json::Value::Object(tree).to_string());
    }

    #[test]
    fn rows_round_trip_through_json() {
        let mut row = Row::new();
        row.insert("a".into(), Value::Bytes(vec![0, 255]));
        row.insert("b".into(), Value::Null);
        row.insert("c".into(), Value::Text(String::new()));
        row.insert("d".into(), Value::Float(1.5));
        row.insert("e".into(), Value::Int(-3));
        row.insert("f".into(), Value::Bool(false));
        row.insert("g\"h".into(), Value::Text("\"quoted\" \u{1F600}".into()));
        assert_eq!(row_from_json(&row_to_json(&row)), row);
        // Read as the JSON tree reads it, whatever the text holds.
        for text in [
            r#"{"a":[1,"x"],"b":{"k":1},"c":18446744073709551615,"d":1e3,"e":{"$bytes":"00ff"}}"#,
            r#"{"a":null}"#,
            r#"[1]"#,
            "not json",
        ] {
            let tree =
                serde_json::from_str::<serde_json::Value>(text).map(|j| row_from_json_value(&j)).unwrap_or_default();
            assert_eq!(row_from_json(text), tree, "{text}");
        }
    }
}
