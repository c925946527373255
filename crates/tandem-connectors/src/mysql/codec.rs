//! MariaDB/MySQL values: read through the text protocol (every value arrives as its text, or
//! raw bytes for binary columns) and written as SQL literals (text as hex-encoded utf8mb4, so
//! no value is ever parsed as SQL), converted by the server on assignment. Exact for DECIMAL,
//! dates and JSON; integers, floats, booleans and binary columns are read into Tandem's types.

use tandem_core::value::Value;

/// How a column's values are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `TINYINT(1)` / `BOOL`.
    Bool,
    /// An integer type; `bits` for the binlog's unsigned values.
    Int { unsigned: bool, bits: u32 },
    /// `FLOAT` / `DOUBLE`.
    Float { single: bool },
    /// Binary strings and blobs.
    Bytes,
    /// `DATETIME`, `TIMESTAMP`, `TIME`: text with the fraction of a second written as
    /// PostgreSQL writes it (trailing zeros dropped), so the same instant reads the same on both.
    Temporal,
    /// Everything else (text, DECIMAL, dates and times, JSON, ENUM, SET), as its text.
    Text,
}

impl Kind {
    /// The kind of a column from `information_schema.COLUMNS` (`DATA_TYPE`, `COLUMN_TYPE`).
    pub(crate) fn of(data_type: &str, column_type: &str) -> Kind {
        let unsigned = column_type.contains("unsigned");
        match data_type {
            "tinyint" if column_type.starts_with("tinyint(1)") && !unsigned => Kind::Bool,
            "tinyint" => Kind::Int { unsigned, bits: 8 },
            "smallint" => Kind::Int { unsigned, bits: 16 },
            "mediumint" => Kind::Int { unsigned, bits: 24 },
            "int" | "integer" => Kind::Int { unsigned, bits: 32 },
            "bigint" => Kind::Int { unsigned, bits: 64 },
            "float" => Kind::Float { single: true },
            "double" | "real" => Kind::Float { single: false },
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Kind::Bytes,
            "datetime" | "timestamp" | "time" => Kind::Temporal,
            _ => Kind::Text,
        }
    }
}

/// A single-precision value as the shortest number that reads back as it (123456.79, not
/// 123456.7890625), as PostgreSQL prints a `real`: the same float reads the same on both.
fn single(f: f32) -> f64 {
    f.to_string().parse().unwrap_or(f64::from(f))
}

/// Reads one value of the text protocol.
pub(crate) fn decode(kind: Kind, v: &mysql_async::Value) -> Value {
    use mysql_async::Value as M;
    let bytes = match v {
        M::NULL => return Value::Null,
        M::Bytes(b) => b,
        M::Int(i) => return int(kind, *i),
        M::UInt(u) => return i64::try_from(*u).map(Value::Int).unwrap_or_else(|_| Value::Text(u.to_string())),
        M::Float(f) => return Value::Float(single(*f)),
        M::Double(f) => return Value::Float(*f),
        other => return Value::Text(other.as_sql(true).trim_matches('\'').to_string()),
    };
    if kind == Kind::Bytes {
        return Value::Bytes(bytes.clone());
    }
    let Ok(t) = std::str::from_utf8(bytes) else { return Value::Bytes(bytes.clone()) };
    match kind {
        Kind::Bool => match t {
            "0" => Value::Bool(false),
            "1" => Value::Bool(true),
            _ => t.parse().map(Value::Int).unwrap_or_else(|_| Value::Text(t.to_string())),
        },
        Kind::Int { .. } => t.parse().map(Value::Int).unwrap_or_else(|_| Value::Text(t.to_string())),
        Kind::Float { single: true } => {
            t.parse::<f64>().map(|x| Value::Float(single(x as f32))).unwrap_or_else(|_| Value::Text(t.to_string()))
        }
        Kind::Float { .. } => t.parse().map(Value::Float).unwrap_or_else(|_| Value::Text(t.to_string())),
        Kind::Temporal => Value::Text(trim_fraction(t).to_string()),
        Kind::Bytes | Kind::Text => Value::Text(t.to_string()),
    }
}

/// `12:00:00.120000` → `12:00:00.12`, `12:00:00.000000` → `12:00:00`.
fn trim_fraction(t: &str) -> &str {
    match t.rfind('.') {
        Some(dot) if t[dot + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            let trimmed = t.trim_end_matches('0');
            trimmed.strip_suffix('.').unwrap_or(trimmed)
        }
        _ => t,
    }
}

/// An integer as the binlog gives it (unsigned columns arrive as signed values of their width).
pub(crate) fn int(kind: Kind, i: i64) -> Value {
    match kind {
        Kind::Int { unsigned: true, bits } if i < 0 => {
            let u = if bits >= 64 { i as u64 } else { (i as u64) & ((1u64 << bits) - 1) };
            i64::try_from(u).map(Value::Int).unwrap_or_else(|_| Value::Text(u.to_string()))
        }
        Kind::Bool if i == 0 || i == 1 => Value::Bool(i == 1),
        _ => Value::Int(i),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(bytes, &mut out);
    String::from_utf8(out).expect("hexadecimal digits are ASCII")
}

fn push_hex(bytes: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

/// Appends `v` as one field of `LOAD DATA`'s default text format (fields separated by tabs,
/// `\` escapes, `\N` for NULL, so an empty string stays an empty string). With `hex` the
/// field is the value's bytes in hexadecimal, for a column loaded through `UNHEX` (blobs).
pub(crate) fn load_field(v: &Value, hex: bool, out: &mut Vec<u8>) -> Result<(), String> {
    match v {
        Value::Null => out.extend_from_slice(b"\\N"),
        Value::Text(s) if hex => push_hex(s.as_bytes(), out),
        Value::Bytes(b) if hex => push_hex(b, out),
        Value::Bytes(_) => return Err("a blob for a column loaded as text".into()),
        Value::Text(s) => {
            for &b in s.as_bytes() {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    0 => out.extend_from_slice(b"\\0"),
                    _ => out.push(b),
                }
            }
        }
        other => {
            let text = literal(other)?;
            if hex {
                push_hex(text.as_bytes(), out);
            } else {
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
    Ok(())
}

/// The SQL literal of a value, or why it cannot be written.
/// Why `v` has no SQL literal (what [`literal`] refuses), without building one.
pub(crate) fn writable(v: &Value) -> Result<(), String> {
    match v {
        Value::Float(f) if !f.is_finite() => Err(format!("MariaDB/MySQL has no floating-point value {f}")),
        _ => Ok(()),
    }
}

pub(crate) fn literal(v: &Value) -> Result<String, String> {
    writable(v)?;
    Ok(match v {
        Value::Null => "NULL".into(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!("{f:?}"),
        Value::Bool(b) => if *b { "1" } else { "0" }.into(),
        Value::Text(s) if s.is_empty() => "''".into(),
        Value::Text(s) => format!("_utf8mb4 X'{}'", hex(s.as_bytes())),
        Value::Bytes(b) if b.is_empty() => "X''".into(),
        Value::Bytes(b) => format!("X'{}'", hex(b)),
    })
}

/// A key value as reading the column back gives it, where the text form is canonical
/// (integers and text); `None` otherwise (or for NULL).
pub(crate) fn key_value(kind: Kind, v: &Value) -> Option<Value> {
    match (kind, v) {
        (Kind::Int { .. }, Value::Int(i)) => Some(Value::Int(*i)),
        (Kind::Int { .. }, Value::Text(t)) => t.trim().parse().ok().map(Value::Int),
        (Kind::Text, Value::Text(t)) => Some(Value::Text(t.clone())),
        (Kind::Text, Value::Int(i)) => Some(Value::Text(i.to_string())),
        _ => None,
    }
}

/// Quotes an identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_async::Value as M;

    #[test]
    fn kinds_and_text_round_trips() {
        assert_eq!(Kind::of("tinyint", "tinyint(1)"), Kind::Bool);
        assert_eq!(Kind::of("int", "int(10) unsigned"), Kind::Int { unsigned: true, bits: 32 });
        assert_eq!(Kind::of("decimal", "decimal(12,2)"), Kind::Text);
        assert_eq!(decode(Kind::Bool, &M::Bytes(b"1".to_vec())), Value::Bool(true));
        assert_eq!(decode(Kind::Text, &M::Bytes(b"12.50".to_vec())), Value::Text("12.50".into()));
        assert_eq!(decode(Kind::Text, &M::Bytes(Vec::new())), Value::Text(String::new()));
        assert_eq!(decode(Kind::Text, &M::NULL), Value::Null);
        assert_eq!(decode(Kind::Bytes, &M::Bytes(vec![0, 255])), Value::Bytes(vec![0, 255]));
        assert_eq!(Kind::of("datetime", "datetime(6)"), Kind::Temporal);
        let dt = |t: &str| decode(Kind::Temporal, &M::Bytes(t.as_bytes().to_vec()));
        assert_eq!(dt("2026-11-26 12:00:00.120000"), Value::Text("2026-11-26 12:00:00.12".into()));
        assert_eq!(dt("2026-11-26 12:00:00.000000"), Value::Text("2026-11-26 12:00:00".into()));
        assert_eq!(dt("2026-11-26 12:00:10"), Value::Text("2026-11-26 12:00:10".into()));
        assert_eq!(dt("-838:59:59"), Value::Text("-838:59:59".into()));
        assert_eq!(
            decode(Kind::Int { unsigned: true, bits: 64 }, &M::Bytes(b"18446744073709551615".to_vec())),
            Value::Text("18446744073709551615".into())
        );
    }

    #[test]
    fn binlog_unsigned_integers_are_read_at_their_width() {
        assert_eq!(int(Kind::Int { unsigned: true, bits: 32 }, -1), Value::Int(4_294_967_295));
        assert_eq!(int(Kind::Int { unsigned: true, bits: 8 }, -56), Value::Int(200));
        assert_eq!(int(Kind::Int { unsigned: false, bits: 32 }, -1), Value::Int(-1));
        assert_eq!(int(Kind::Int { unsigned: true, bits: 64 }, -1), Value::Text("18446744073709551615".into()));
    }

    #[test]
    fn load_fields_escape_what_the_format_reads_specially() {
        let field = |v: Value, hex: bool| {
            let mut out = Vec::new();
            load_field(&v, hex, &mut out).map(|()| String::from_utf8(out).unwrap())
        };
        assert_eq!(field(Value::Text("a\tb\nc\\N\r\0 🦀".into()), false).unwrap(), "a\\tb\\nc\\\\N\\r\\0 🦀");
        assert_eq!(field(Value::Null, false).unwrap(), "\\N");
        assert_eq!(field(Value::Null, true).unwrap(), "\\N");
        assert_eq!(field(Value::Text(String::new()), false).unwrap(), "");
        assert_eq!(field(Value::Bytes(vec![0, 255, 16]), true).unwrap(), "00ff10");
        assert_eq!(field(Value::Text("\\N".into()), true).unwrap(), "5c4e");
        assert_eq!(field(Value::Int(-7), false).unwrap(), "-7");
        assert_eq!(field(Value::Bool(true), false).unwrap(), "1");
        assert_eq!(field(Value::Float(-1.5e300), false).unwrap(), "-1.5e300");
        assert!(field(Value::Float(f64::NAN), false).is_err());
        assert!(field(Value::Bytes(vec![1]), false).is_err());
    }

    #[test]
    fn literals_never_carry_sql() {
        assert_eq!(
            literal(&Value::Text("a'; DROP TABLE t; --".into())).unwrap(),
            "_utf8mb4 X'61273b2044524f50205441424c4520743b202d2d'"
        );
        assert_eq!(literal(&Value::Text(String::new())).unwrap(), "''");
        assert_eq!(literal(&Value::Null).unwrap(), "NULL");
        assert_eq!(literal(&Value::Float(1.5)).unwrap(), "1.5");
        assert!(literal(&Value::Float(f64::NAN)).is_err());
        assert_eq!(ident("a`b"), "`a``b`");
    }
}
