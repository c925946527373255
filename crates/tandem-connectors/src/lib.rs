//! Tandem's connectors, one module per kind of system, and the SQLite-backed state store.

#[cfg(feature = "postgres")]
mod commits;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod state;

pub use tandem_core::connector::ConnectorError;

use tandem_core::connector::{RowError, Write};
use tandem_core::value::Row;

/// The values a write sets, or `None` for a delete.
pub(crate) fn written(w: &Write) -> Option<&Row> {
    match w {
        Write::Insert { values, .. } | Write::Update { values, .. } => Some(values),
        Write::Delete { .. } => None,
    }
}

/// Checks a write against a table's NOT NULL columns (`name`, `not_null`, `has_default`): an
/// insert must give every required column without a default a value, and no write may set a
/// required column to NULL.
pub(crate) fn check_required<'a>(
    table: &str,
    columns: impl Iterator<Item = (&'a str, bool, bool)>,
    w: &Write,
) -> Result<(), RowError> {
    let Some(values) = written(w) else { return Ok(()) };
    let insert = matches!(w, Write::Insert { .. });
    for (name, not_null, has_default) in columns {
        if !not_null {
            continue;
        }
        let missing = match values.get(name) {
            Some(v) => v.is_null() && !(insert && has_default),
            None => insert && !has_default,
        };
        if missing {
            return Err(RowError::new(
                Some(name.to_string()),
                None,
                format!("column {table}.{name} is NOT NULL and the record has no value for it"),
            ));
        }
    }
    Ok(())
}

/// The declared character length of a `varchar(n)`/`char(n)` column type
/// (`character varying(20)` in PostgreSQL's words, `varchar(20)` in MariaDB's).
fn declared_length(type_name: &str) -> Option<usize> {
    // Both servers spell their types in lower case.
    let t = type_name.trim();
    let rest = ["character varying(", "varchar(", "character(", "char("].iter().find_map(|p| t.strip_prefix(p))?;
    rest.split(')').next()?.trim().parse().ok()
}

/// Refuses text longer than its column's declared length (the server would refuse it too,
/// or, not in strict mode, cut it).
pub(crate) fn check_length(
    table: &str,
    col: &str,
    type_name: &str,
    v: &tandem_core::value::Value,
) -> Result<(), RowError> {
    let (Some(max), tandem_core::value::Value::Text(t)) = (declared_length(type_name), v) else { return Ok(()) };
    let n = t.chars().count();
    if n > max {
        return Err(RowError::new(
            Some(col.to_string()),
            Some(v.type_name()),
            format!("column {table}.{col} is {type_name}; a text of {n} characters does not fit"),
        ));
    }
    Ok(())
}
