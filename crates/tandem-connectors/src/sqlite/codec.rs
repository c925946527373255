//! Conversions between SQLite values and Tandem values, and the type-fit check.

use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use tandem_core::value::Value;

/// Reads one SQLite value.
pub(crate) fn from_sql(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Float(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
    }
}

/// Turns a Tandem value into a bindable SQLite value.
pub(crate) fn to_sql(v: &Value) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(match v {
        Value::Null => SqlValue::Null,
        Value::Int(i) => SqlValue::Integer(*i),
        Value::Float(f) => SqlValue::Real(*f),
        Value::Text(s) => SqlValue::Text(s.clone()),
        Value::Bytes(b) => SqlValue::Blob(b.clone()),
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
    })
}

/// SQLite's type affinity of a declared column type (section 3.1 of its datatype docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    pub(crate) fn of(decl: &str) -> Affinity {
        let d = decl.to_ascii_uppercase();
        if d.contains("INT") {
            Affinity::Integer
        } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
            Affinity::Text
        } else if d.contains("BLOB") || d.is_empty() {
            Affinity::Blob
        } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }

    /// Whether a value can be stored in a column of this affinity without turning into
    /// something else: text that is not a number does not fit a numeric column.
    pub(crate) fn fits(self, v: &Value) -> bool {
        match (self, v) {
            (_, Value::Null) => true,
            (Affinity::Text | Affinity::Blob, _) => true,
            (_, Value::Int(_) | Value::Float(_) | Value::Bool(_)) => true,
            (Affinity::Integer, Value::Text(t)) => {
                t.trim().parse::<i64>().is_ok() || t.trim().parse::<f64>().is_ok_and(|f| f.fract() == 0.0)
            }
            (_, Value::Text(t)) => t.trim().parse::<f64>().is_ok(),
            (_, Value::Bytes(_)) => false,
        }
    }

    /// A word for messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Affinity::Integer => "an integer",
            Affinity::Text => "a text",
            Affinity::Blob => "a blob",
            Affinity::Real => "a real",
            Affinity::Numeric => "a numeric",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_follows_sqlite_rules_and_fit_check() {
        assert_eq!(Affinity::of("BIGINT"), Affinity::Integer);
        assert_eq!(Affinity::of("varchar(20)"), Affinity::Text);
        assert_eq!(Affinity::of(""), Affinity::Blob);
        assert_eq!(Affinity::of("DOUBLE"), Affinity::Real);
        assert_eq!(Affinity::of("DECIMAL(10,2)"), Affinity::Numeric);
        assert!(Affinity::Integer.fits(&Value::Text("12".into())));
        assert!(!Affinity::Integer.fits(&Value::Text("twelve".into())));
        assert!(!Affinity::Real.fits(&Value::Text("".into())));
        assert!(Affinity::Text.fits(&Value::Int(3)));
    }
}
