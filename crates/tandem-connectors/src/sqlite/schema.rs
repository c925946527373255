//! Reading a SQLite table's columns.

use rusqlite::Connection;
use tandem_core::value::Name;

/// One column of a table, as `PRAGMA table_info` describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// Column name.
    pub name: Name,
    /// Declared type, as written in the CREATE TABLE.
    pub decl_type: String,
    /// Whether NULL is refused.
    pub not_null: bool,
    /// Whether the column has a default value.
    pub has_default: bool,
    /// Position in the primary key (0 when not part of it).
    pub pk: i64,
}

/// The columns of `table` (empty when the table does not exist).
pub fn table_columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<Column>> {
    let mut stmt =
        conn.prepare("SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk FROM pragma_table_info(?1)")?;
    let rows = stmt.query_map([table], |r| {
        Ok(Column {
            name: r.get::<_, String>(0)?.into(),
            decl_type: r.get(1)?,
            not_null: r.get::<_, i64>(2)? != 0,
            has_default: r.get(3)?,
            pk: r.get(4)?,
        })
    })?;
    rows.collect()
}
