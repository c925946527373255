//! PostgreSQL values travel as their text form, cast to and from each column's type in SQL:
//! exact for numeric, dates, uuids, json and arrays; integers, floats, booleans and bytea are
//! read into their Tandem types.

use tandem_core::value::Value;

/// Type OIDs read into a typed value; everything else stays text.
const BOOL: u32 = 16;
const BYTEA: u32 = 17;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const TEXT: u32 = 25;
const VARCHAR: u32 = 1043;

/// Reads a column's text form.
pub(crate) fn from_text(type_oid: u32, text: Option<&str>) -> Value {
    let Some(t) = text else { return Value::Null };
    match type_oid {
        BOOL => Value::Bool(t == "t" || t == "true"),
        INT2 | INT4 | INT8 => t.parse().map(Value::Int).unwrap_or_else(|_| Value::Text(t.to_string())),
        FLOAT4 | FLOAT8 => t.parse().map(Value::Float).unwrap_or_else(|_| Value::Text(t.to_string())),
        BYTEA => match t.strip_prefix("\\x") {
            Some(hex) => Value::Bytes(
                (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect(),
            ),
            None => Value::Text(t.to_string()),
        },
        _ => Value::Text(t.to_string()),
    }
}

/// The text form a value is bound as (`None` for NULL).
pub(crate) fn to_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => {
            Some(if f.is_finite() { format!("{f:?}") } else { f.to_string().replace("inf", "Infinity") })
        }
        Value::Text(s) => Some(s.clone()),
        Value::Bytes(b) => Some(format!("\\x{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())),
        Value::Bool(b) => Some(b.to_string()),
    }
}

/// A key value as reading the column back gives it, where its text form is canonical
/// (integers and text); `None` otherwise (or for NULL).
pub(crate) fn key_value(type_oid: u32, v: &Value) -> Option<Value> {
    let t = to_text(v)?;
    match type_oid {
        INT2 | INT4 | INT8 => t.parse().ok().map(Value::Int),
        TEXT | VARCHAR => Some(Value::Text(t)),
        _ => None,
    }
}

/// Appends a value in `COPY … FROM STDIN` text format.
pub(crate) fn copy_text(v: &Value, out: &mut Vec<u8>) {
    let Some(t) = to_text(v) else {
        out.extend_from_slice(b"\\N");
        return;
    };
    for b in t.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
}

/// Whether a value can be cast to a column of this type (checked for the types where the
/// answer is cheap to know, so the dead letter can name the field); other casts are left to
/// the server.
pub(crate) fn fits(type_oid: u32, type_name: &str, v: &Value) -> bool {
    // Only these types are checked; the text of other values is not needed.
    let checked = matches!(type_oid, INT2 | INT4 | INT8 | FLOAT4 | FLOAT8 | BOOL) || type_name.starts_with("numeric");
    if !checked {
        return true;
    }
    let Some(t) = to_text(v) else { return true };
    let t = t.trim();
    match type_oid {
        INT2 => t.parse::<i16>().is_ok(),
        INT4 => t.parse::<i32>().is_ok(),
        INT8 => t.parse::<i64>().is_ok(),
        FLOAT4 | FLOAT8 => t.parse::<f64>().is_ok() || ["NaN", "Infinity", "-Infinity"].contains(&t),
        BOOL => {
            ["t", "f", "true", "false", "1", "0", "yes", "no", "on", "off"].contains(&t.to_ascii_lowercase().as_str())
        }
        _ if type_name.starts_with("numeric") => t.parse::<f64>().is_ok() && !t.contains(['e', 'E', 'x']),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        for (oid, t) in [
            (INT4, "42"),
            (FLOAT8, "1.5"),
            (BOOL, "t"),
            (BYTEA, "\\x00ff"),
            (1700, "12.50"),
            (2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ] {
            let v = from_text(oid, Some(t));
            let back = to_text(&v).unwrap();
            assert_eq!(from_text(oid, Some(&back)), v, "{t}");
        }
        assert_eq!(from_text(25, None), Value::Null);
        assert_eq!(from_text(25, Some("")), Value::Text(String::new()));
    }

    #[test]
    fn fit_checks_name_impossible_casts() {
        assert!(fits(INT4, "integer", &Value::Text("12".into())));
        assert!(!fits(INT2, "smallint", &Value::Int(70_000)));
        assert!(!fits(1700, "numeric(12,2)", &Value::Text("abc".into())));
        assert!(fits(25, "text", &Value::Int(3)));
    }
}
