//! SQLite: trigger capture into a change-log table, keyset snapshot, transactional apply.
//!
//! Capture installs, per synced table, three triggers (`_tandem_<table>_ins/_upd/_del`) that
//! append the written record's key and commit time to `_tandem_changes`. Tandem's own writes run
//! in a transaction that first inserts a row into `_tandem_session`; the triggers skip writes
//! while that row exists, and since SQLite has one writer at a time no other program's write
//! can fall into that window. Creates also record their intent id in `_tandem_intents` in the
//! same transaction, so a crash between the insert and Tandem's state commit never duplicates.

mod codec;
mod schema;

pub use schema::{table_columns, Column};

use codec::{from_sql, to_sql, Affinity};
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tandem_core::connector::{
    CaptureState, ChangePage, Connector, ConnectorError, ErrorKind, RowError, Touched, Write, WriteResult,
};
use tandem_core::value::{Key, Row, Value};

/// Quotes an identifier for SQL.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Maps a rusqlite error to a connector error.
pub(crate) fn sql_err(context: impl std::fmt::Display, e: rusqlite::Error) -> ConnectorError {
    let kind = match e.sqlite_error_code() {
        Some(
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked | rusqlite::ErrorCode::CannotOpen,
        ) => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    };
    ConnectorError { kind, message: format!("{context}: {e}"), source: Some(Box::new(e)) }
}

/// Opens an existing SQLite file for reading and writing (never creates one: a wrong path in
/// the config must not produce an empty database).
pub fn open(path: &Path) -> Result<Connection, ConnectorError> {
    if !path.exists() {
        return Err(ConnectorError::new(
            ErrorKind::Schema,
            format!("SQLite file {} does not exist; check the system's `path`", path.display()),
        ));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| sql_err(format_args!("opening {}", path.display()), e))?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(|e| sql_err("setting busy timeout", e))?;
    Ok(conn)
}

/// One table of one SQLite file.
pub struct SqliteTable {
    conn: Connection,
    path: PathBuf,
    table: String,
    key: Vec<String>,
    columns: Vec<Column>,
}

const CHANGES_DDL: &str = "
CREATE TABLE IF NOT EXISTS _tandem_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    pk TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS _tandem_changes_key ON _tandem_changes(tbl, pk);
CREATE TABLE IF NOT EXISTS _tandem_session (active INTEGER);
CREATE TABLE IF NOT EXISTS _tandem_intents (id TEXT PRIMARY KEY, tbl TEXT NOT NULL, pk TEXT NOT NULL);
";

const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

impl SqliteTable {
    /// Opens `table` in the SQLite file at `path`, keyed by `key`.
    pub fn open(path: &Path, table: &str, key: &[String]) -> Result<Self, ConnectorError> {
        let conn = open(path)?;
        let columns =
            table_columns(&conn, table).map_err(|e| sql_err(format_args!("reading {}", path.display()), e))?;
        if columns.is_empty() {
            return Err(ConnectorError::new(
                ErrorKind::Schema,
                format!("table `{table}` does not exist in {}", path.display()),
            ));
        }
        for k in key {
            if !columns.iter().any(|c| &c.name == k) {
                return Err(ConnectorError::new(
                    ErrorKind::Schema,
                    format!("key column `{k}` does not exist in {}:{table}", path.display()),
                ));
            }
        }
        Ok(SqliteTable { conn, path: path.to_path_buf(), table: table.to_string(), key: key.to_vec(), columns })
    }

    fn ctx(&self, what: &str) -> String {
        format!("{} on {}:{}", what, self.path.display(), self.table)
    }

    fn trigger(&self, suffix: &str) -> String {
        format!("_tandem_{}_{}", self.table, suffix)
    }

    fn key_json(&self, prefix: &str) -> String {
        // Blobs cannot go into JSON as they are: they take the same `{"$bytes": hex}` form as
        // Tandem's keys.
        let cols: Vec<String> = self
            .key
            .iter()
            .map(|k| {
                let c = format!("{prefix}.{}", ident(k));
                format!("CASE typeof({c}) WHEN 'blob' THEN json_object('$bytes', lower(hex({c}))) ELSE {c} END")
            })
            .collect();
        format!("json_array({})", cols.join(", "))
    }

    /// Whether capture is installed for this table.
    pub fn capture_installed(&self) -> Result<bool, ConnectorError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN (?1, ?2, ?3)",
                [self.trigger("ins"), self.trigger("upd"), self.trigger("del")],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n == 3)
            .map_err(|e| sql_err(self.ctx("checking capture"), e))
    }

    /// Removes this table's capture triggers, and Tandem's tables when no synced table is left.
    /// Returns what was removed.
    fn remove_capture(&mut self) -> Result<String, ConnectorError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| sql_err(self.ctx("uninstalling"), e))?;
        for s in ["ins", "upd", "del"] {
            tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {};", ident(&self.trigger(s))))
                .map_err(|e| sql_err("dropping trigger", e))?;
        }
        let left: i64 = tx
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_tandem\\_%' ESCAPE '\\'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| sql_err("counting triggers", e))?;
        let mut what = format!("removed capture triggers of {} from {}", self.table, self.path.display());
        if left == 0 {
            tx.execute_batch("DROP TABLE IF EXISTS _tandem_changes; DROP TABLE IF EXISTS _tandem_session; DROP TABLE IF EXISTS _tandem_intents;")
                .map_err(|e| sql_err("dropping change log", e))?;
            what.push_str(" and Tandem's tables (_tandem_changes, _tandem_session, _tandem_intents)");
        } else {
            tx.execute("DELETE FROM _tandem_changes WHERE tbl = ?1", [&self.table])
                .map_err(|e| sql_err("clearing change log", e))?;
        }
        tx.commit().map_err(|e| sql_err("uninstalling", e))?;
        Ok(what)
    }

    /// How many captured changes of this table come after `after`.
    fn count_backlog(&mut self, after: u64) -> Result<u64, ConnectorError> {
        if !self.capture_installed()? {
            return Ok(0);
        }
        self.conn
            .query_row(
                "SELECT count(*) FROM _tandem_changes WHERE tbl = ?1 AND id > ?2",
                rusqlite::params![self.table, after as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| sql_err(self.ctx("counting backlog"), e))
    }

    fn key_where(&self) -> String {
        self.key.iter().enumerate().map(|(i, k)| format!("{} = ?{}", ident(k), i + 1)).collect::<Vec<_>>().join(" AND ")
    }

    fn row_from(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<(Key, Row)> {
        let mut row = Row::new();
        for (i, c) in self.columns.iter().enumerate() {
            row.insert(c.name.clone(), from_sql(r.get_ref(i)?));
        }
        let key = Key::from_values(
            &self.key.iter().map(|k| row.get(k.as_str()).cloned().unwrap_or(Value::Null)).collect::<Vec<_>>(),
        );
        Ok((key, row))
    }

    fn select(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| ident(&c.name)).collect();
        format!("SELECT {} FROM {}", cols.join(", "), ident(&self.table))
    }

    fn check_fit(&self, values: &Row) -> Result<(), RowError> {
        for (col, v) in values {
            let Some(c) = self.columns.iter().find(|c| &c.name == col) else {
                return Err(RowError::new(
                    Some(col.to_string()),
                    Some(v.type_name()),
                    format!("column {}.{col} does not exist", self.table),
                ));
            };
            let aff = Affinity::of(&c.decl_type);
            if !aff.fits(v) {
                return Err(RowError::new(
                    Some(col.to_string()),
                    Some(v.type_name()),
                    format!(
                        "column {}.{col} is {} column ({}); a {} value does not fit",
                        self.table,
                        aff.name(),
                        c.decl_type,
                        v.type_name()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn write_one(&self, tx: &rusqlite::Transaction<'_>, w: &Write) -> Result<Result<Key, RowError>, rusqlite::Error> {
        let values = match w {
            Write::Insert { values, .. } | Write::Update { values, .. } => Some(values),
            Write::Delete { .. } => None,
        };
        if let Some(values) = values {
            if let Err(e) = self.check_fit(values) {
                return Ok(Err(e));
            }
        }
        let result = match w {
            Write::Insert { intent, values } => {
                // A NULL for a NOT NULL column with a default means "let the default apply".
                let values: Row = values
                    .iter()
                    .filter(|(c, v)| {
                        !(v.is_null() && self.columns.iter().any(|x| &x.name == *c && x.not_null && x.has_default))
                    })
                    .map(|(c, v)| (c.clone(), v.clone()))
                    .collect();
                let cols: Vec<String> = values.keys().map(|c| ident(c)).collect();
                let marks: Vec<String> = (1..=values.len()).map(|i| format!("?{i}")).collect();
                let keys: Vec<String> = self.key.iter().map(|k| ident(k)).collect();
                let sql = if values.is_empty() {
                    format!("INSERT INTO {} DEFAULT VALUES RETURNING {}", ident(&self.table), keys.join(", "))
                } else {
                    format!(
                        "INSERT INTO {} ({}) VALUES ({}) RETURNING {}",
                        ident(&self.table),
                        cols.join(", "),
                        marks.join(", "),
                        keys.join(", ")
                    )
                };
                let key = tx.query_row(&sql, params_from_iter(values.values().map(to_sql)), |r| {
                    (0..self.key.len()).map(|i| r.get_ref(i).map(from_sql)).collect::<rusqlite::Result<Vec<Value>>>()
                });
                if let Ok(k) = &key {
                    if k.iter().any(Value::is_null) {
                        let cols = self.key.join(", ");
                        return Ok(Err(RowError::new(
                            None,
                            None,
                            format!(
                                "{}:{} gave the new record no key ({cols} is NULL): map a field to the key column or give it a default",
                                self.path.display(),
                                self.table
                            ),
                        )));
                    }
                }
                key.map(|k| Key::from_values(&k)).and_then(|k| {
                    tx.execute(
                        "INSERT OR REPLACE INTO _tandem_intents (id, tbl, pk) VALUES (?1, ?2, ?3)",
                        rusqlite::params![intent, self.table, k.as_str()],
                    )?;
                    Ok(k)
                })
            }
            Write::Update { key, values, expect } => {
                let sets: Vec<String> =
                    values.keys().enumerate().map(|(i, c)| format!("{} = ?{}", ident(c), i + 1)).collect();
                let n = values.len();
                let mut wh: Vec<String> =
                    self.key.iter().enumerate().map(|(i, k)| format!("{} = ?{}", ident(k), n + i + 1)).collect();
                let m = n + self.key.len();
                wh.extend(expect.keys().enumerate().map(|(i, c)| format!("{} IS ?{}", ident(c), m + i + 1)));
                let sql = format!("UPDATE {} SET {} WHERE {}", ident(&self.table), sets.join(", "), wh.join(" AND "));
                let params: Vec<Value> =
                    values.values().cloned().chain(key.values()).chain(expect.values().cloned()).collect();
                match tx.execute(&sql, params_from_iter(params.iter().map(to_sql))) {
                    Ok(0) if !expect.is_empty() => {
                        let sql = format!("SELECT count(*) FROM {} WHERE {}", ident(&self.table), self.key_where());
                        let exists: i64 =
                            tx.query_row(&sql, params_from_iter(key.values().iter().map(to_sql)), |r| r.get(0))?;
                        if exists > 0 {
                            // Someone wrote the record after the engine read it.
                            return Ok(Err(RowError::stale()));
                        }
                        Ok(key.clone())
                    }
                    other => other.map(|_| key.clone()),
                }
            }
            Write::Delete { key } => {
                let sql = format!("DELETE FROM {} WHERE {}", ident(&self.table), self.key_where());
                tx.execute(&sql, params_from_iter(key.values().iter().map(to_sql))).map(|_| key.clone())
            }
        };
        match result {
            Ok(k) => Ok(Ok(k)),
            Err(e @ rusqlite::Error::SqliteFailure(..))
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
                    || e.sqlite_error_code() == Some(rusqlite::ErrorCode::TypeMismatch) =>
            {
                let msg = e.to_string();
                let column = msg
                    .rsplit_once(": ")
                    .map(|(_, c)| c.rsplit('.').next().unwrap_or(c).to_string())
                    .filter(|c| self.columns.iter().any(|x| &x.name == c));
                let value_type = column
                    .as_ref()
                    .map(|c| values.and_then(|v| v.get(c.as_str())).map(Value::type_name).unwrap_or("null"));
                Ok(Err(RowError::new(
                    column,
                    value_type,
                    format!("{}:{} refused the write: {msg}", self.path.display(), self.table),
                )))
            }
            Err(e) => Err(e),
        }
    }
}

impl Connector for SqliteTable {
    fn capture_state(&mut self, cursor: Option<u64>) -> Result<CaptureState, ConnectorError> {
        if !self.capture_installed()? {
            return Ok(CaptureState::Missing);
        }
        let head = self.head()?;
        Ok(match cursor {
            Some(c) if c > head => CaptureState::Lost(format!(
                "its change log ends at {head}, before Tandem's position {c} (was the file restored from a backup?)"
            )),
            _ => CaptureState::Ready,
        })
    }

    fn identity(&mut self) -> Result<Option<String>, ConnectorError> {
        Ok(None)
    }

    fn install(&mut self) -> Result<String, ConnectorError> {
        let t = ident(&self.table);
        let lit = self.table.replace('\'', "''");
        let ins =
            format!("INSERT INTO _tandem_changes (tbl, pk, at) VALUES ('{lit}', {}, {NOW_MS})", self.key_json("NEW"));
        let old =
            format!("INSERT INTO _tandem_changes (tbl, pk, at) SELECT '{lit}', {}, {NOW_MS}", self.key_json("OLD"));
        let changed: Vec<String> = self.key.iter().map(|k| format!("OLD.{0} IS NOT NEW.{0}", ident(k))).collect();
        let when = "WHEN NOT EXISTS (SELECT 1 FROM _tandem_session)";
        let ddl = format!(
            "{CHANGES_DDL}
CREATE TRIGGER IF NOT EXISTS {ti} AFTER INSERT ON {t} {when} BEGIN {ins}; END;
CREATE TRIGGER IF NOT EXISTS {tu} AFTER UPDATE ON {t} {when} BEGIN {ins}; {old} WHERE {changed}; END;
CREATE TRIGGER IF NOT EXISTS {td} AFTER DELETE ON {t} {when} BEGIN {old}; END;",
            ti = ident(&self.trigger("ins")),
            tu = ident(&self.trigger("upd")),
            td = ident(&self.trigger("del")),
            changed = changed.join(" OR "),
        );
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| sql_err(self.ctx("installing capture"), e))?;
        tx.execute_batch(&ddl).map_err(|e| sql_err(self.ctx("installing capture"), e))?;
        tx.commit().map_err(|e| sql_err(self.ctx("installing capture"), e))?;
        Ok(format!(
            "installed change capture on {}:{} (triggers {}_ins/_upd/_del writing to table _tandem_changes; remove with `tandem uninstall`)",
            self.path.display(),
            self.table,
            self.trigger("").trim_end_matches('_')
        ))
    }

    fn head(&mut self) -> Result<u64, ConnectorError> {
        self.conn
            .query_row(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = '_tandem_changes'), 0)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| sql_err(self.ctx("reading change log head"), e))
    }

    fn changes(&mut self, after: u64, limit: usize, _wait: bool) -> Result<ChangePage, ConnectorError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, pk, at FROM _tandem_changes WHERE tbl = ?1 AND id > ?2 ORDER BY id LIMIT ?3")
            .map_err(|e| sql_err(self.ctx("reading changes"), e))?;
        let rows = stmt
            .query_map(rusqlite::params![self.table, after as i64, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
            })
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| sql_err(self.ctx("reading changes"), e))?;
        let mut touched = Vec::with_capacity(rows.len());
        for (id, pk, at) in rows {
            let key = Key::parse(&pk).ok_or_else(|| {
                ConnectorError::new(
                    ErrorKind::Internal,
                    format!("change {id} in {} has an unreadable key", self.path.display()),
                )
            })?;
            touched.push(Touched { pos: id as u64, key, at_ms: at });
        }
        let next = touched.last().map(|t| t.pos).unwrap_or(after);
        // A full page: more changes may be waiting.
        let behind = touched.len() == limit;
        Ok(ChangePage { touched, next, behind, label: None })
    }

    fn trim(&mut self, upto: u64) -> Result<(), ConnectorError> {
        self.conn
            .execute(
                "DELETE FROM _tandem_changes WHERE tbl = ?1 AND id <= ?2",
                rusqlite::params![self.table, upto as i64],
            )
            .map(|_| ())
            .map_err(|e| sql_err(self.ctx("trimming change log"), e))
    }

    fn last_change_at(&mut self, key: &Key) -> Result<Option<i64>, ConnectorError> {
        self.conn
            .query_row(
                "SELECT max(at) FROM _tandem_changes WHERE tbl = ?1 AND pk = ?2",
                rusqlite::params![self.table, key.as_str()],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map_err(|e| sql_err(self.ctx("reading change time"), e))
    }

    fn read(&mut self, keys: &[Key]) -> Result<Vec<Option<Row>>, ConnectorError> {
        let sql = format!("{} WHERE {}", self.select(), self.key_where());
        let tx = self.conn.unchecked_transaction().map_err(|e| sql_err(self.ctx("reading"), e))?;
        let mut out = Vec::with_capacity(keys.len());
        {
            let mut stmt = tx.prepare_cached(&sql).map_err(|e| sql_err("reading", e))?;
            for k in keys {
                let row = stmt
                    .query_row(params_from_iter(k.values().iter().map(to_sql)), |r| self.row_from(r))
                    .optional()
                    .map_err(|e| sql_err(format!("reading {}:{}", self.path.display(), self.table), e))?;
                out.push(row.map(|(_, r)| r));
            }
        }
        tx.commit().map_err(|e| sql_err(self.ctx("reading"), e))?;
        Ok(out)
    }

    fn scan(&mut self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Row)>, ConnectorError> {
        let keys: Vec<String> = self.key.iter().map(|k| ident(k)).collect();
        let order = keys.join(", ");
        let (sql, params): (String, Vec<Value>) = match after {
            None => (format!("{} ORDER BY {order} LIMIT {limit}", self.select()), vec![]),
            Some(k) => {
                let marks: Vec<String> = (1..=keys.len()).map(|i| format!("?{i}")).collect();
                (
                    format!(
                        "{} WHERE ({order}) > ({}) ORDER BY {order} LIMIT {limit}",
                        self.select(),
                        marks.join(", ")
                    ),
                    k.values(),
                )
            }
        };
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| sql_err(self.ctx("scanning"), e))?;
        let rows = stmt
            .query_map(params_from_iter(params.iter().map(to_sql)), |r| self.row_from(r))
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| sql_err(self.ctx("scanning"), e))?;
        Ok(rows)
    }

    fn find(&mut self, column: &str, value: &Value, case_insensitive: bool) -> Result<Vec<(Key, Row)>, ConnectorError> {
        let c = ident(column);
        let sql = if case_insensitive && matches!(value, Value::Text(_)) {
            format!(
                "{} WHERE lower({c}) = lower(?1) ORDER BY {}",
                self.select(),
                self.key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ")
            )
        } else {
            format!(
                "{} WHERE {c} = ?1 ORDER BY {}",
                self.select(),
                self.key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ")
            )
        };
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| sql_err(self.ctx("matching"), e))?;
        let rows = stmt
            .query_map([to_sql(value)], |r| self.row_from(r))
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| sql_err(self.ctx("matching"), e))?;
        Ok(rows)
    }

    fn apply(&mut self, writes: &[Write]) -> Result<Vec<WriteResult>, ConnectorError> {
        let ctx = self.ctx("applying");
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| sql_err(&ctx, e))?;
        tx.execute("INSERT INTO _tandem_session (active) VALUES (1)", []).map_err(|e| sql_err(&ctx, e))?;
        let mut out = Vec::with_capacity(writes.len());
        for w in writes {
            tx.execute_batch("SAVEPOINT tandem_write").map_err(|e| sql_err(&ctx, e))?;
            let r = self.write_one(&tx, w).map_err(|e| sql_err(&ctx, e))?;
            if r.is_err() {
                tx.execute_batch("ROLLBACK TO tandem_write").map_err(|e| sql_err(&ctx, e))?;
            }
            tx.execute_batch("RELEASE tandem_write").map_err(|e| sql_err(&ctx, e))?;
            out.push(r);
        }
        tx.execute("DELETE FROM _tandem_session", []).map_err(|e| sql_err(&ctx, e))?;
        tx.commit().map_err(|e| sql_err(&ctx, e))?;
        Ok(out)
    }

    fn created(&mut self, intent: &str) -> Result<Option<Key>, ConnectorError> {
        self.conn
            .query_row(
                "SELECT pk FROM _tandem_intents WHERE id = ?1 AND tbl = ?2",
                [intent, self.table.as_str()],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map(|pk| pk.and_then(|p| Key::parse(&p)))
            .map_err(|e| sql_err(self.ctx("reading intents"), e))
    }

    fn forget_intents(&mut self, ids: &[String]) -> Result<(), ConnectorError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| sql_err(self.ctx("forgetting intents"), e))?;
        for id in ids {
            tx.execute("DELETE FROM _tandem_intents WHERE id = ?1", [id])
                .map_err(|e| sql_err("forgetting intents", e))?;
        }
        tx.commit().map_err(|e| sql_err(self.ctx("forgetting intents"), e))
    }

    fn intent_ids(&mut self) -> Result<Vec<String>, ConnectorError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM _tandem_intents WHERE tbl = ?1")
            .map_err(|e| sql_err(self.ctx("reading intents"), e))?;
        stmt.query_map([&self.table], |r| r.get::<_, String>(0))
            .and_then(|it| it.collect())
            .map_err(|e| sql_err(self.ctx("reading intents"), e))
    }

    fn check_write(&mut self, w: &Write) -> Result<(), RowError> {
        if let Some(values) = crate::written(w) {
            self.check_fit(values)?;
        }
        let cols = self.columns.iter().map(|c| (c.name.as_str(), c.not_null, c.has_default));
        crate::check_required(&self.table, cols, w)
    }

    fn changes_read_only(&self) -> bool {
        true
    }

    fn backlog(&mut self, after: u64) -> Result<Option<u64>, ConnectorError> {
        self.count_backlog(after).map(Some)
    }

    fn row_estimate(&mut self) -> Result<Option<u64>, ConnectorError> {
        let sql = format!("SELECT count(*) FROM {}", ident(&self.table));
        self.conn
            .query_row(&sql, [], |r| r.get::<_, i64>(0))
            .map(|n| Some(n as u64))
            .map_err(|e| sql_err(self.ctx("counting rows"), e))
    }

    fn uninstall(&mut self) -> Result<String, ConnectorError> {
        self.remove_capture()
    }

    fn key_of(&self, values: &Row) -> Option<Key> {
        let vals: Option<Vec<Value>> = self
            .key
            .iter()
            .map(|k| {
                let c = self.columns.iter().find(|c| &c.name == k)?;
                match (Affinity::of(&c.decl_type), values.get(k.as_str())?) {
                    (Affinity::Integer, Value::Int(i)) => Some(Value::Int(*i)),
                    (Affinity::Text, Value::Text(t)) => Some(Value::Text(t.clone())),
                    (Affinity::Text, Value::Int(i)) => Some(Value::Text(i.to_string())),
                    _ => None,
                }
            })
            .collect();
        Some(Key::from_values(&vals?))
    }

    fn bulk_insert(
        &mut self,
        batch: &str,
        rows: Vec<Row>,
        before_commit: &mut dyn FnMut(&[Key]) -> bool,
    ) -> Result<Result<(), RowError>, ConnectorError> {
        for r in &rows {
            if let Err(e) = self.check_fit(r) {
                return Ok(Err(e));
            }
        }
        let ctx = self.ctx("copying");
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| sql_err(&ctx, e))?;
        tx.execute("INSERT INTO _tandem_session (active) VALUES (1)", []).map_err(|e| sql_err(&ctx, e))?;
        let returning: Vec<String> = self.key.iter().map(|k| ident(k)).collect();
        let mut keys = Vec::with_capacity(rows.len());
        for r in &rows {
            let cols: Vec<String> = r.keys().map(|c| ident(c)).collect();
            let marks: Vec<String> = (1..=r.len()).map(|i| format!("?{i}")).collect();
            let sql = if r.is_empty() {
                format!("INSERT INTO {} DEFAULT VALUES RETURNING {}", ident(&self.table), returning.join(", "))
            } else {
                format!(
                    "INSERT INTO {} ({}) VALUES ({}) RETURNING {}",
                    ident(&self.table),
                    cols.join(", "),
                    marks.join(", "),
                    returning.join(", ")
                )
            };
            let done = tx.prepare_cached(&sql).and_then(|mut stmt| {
                stmt.query_row(params_from_iter(r.values().map(to_sql)), |row| {
                    (0..self.key.len()).map(|i| row.get_ref(i).map(from_sql)).collect::<rusqlite::Result<Vec<Value>>>()
                })
            });
            match done {
                Ok(k) if k.iter().any(Value::is_null) => {
                    return Ok(Err(RowError::new(None, None, format!("{ctx}: a new record got no key"))));
                }
                Ok(k) => keys.push(Key::from_values(&k)),
                Err(e @ rusqlite::Error::SqliteFailure(..))
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) =>
                {
                    // Dropping the transaction rolls it back: nothing of the batch stays.
                    return Ok(Err(RowError::new(
                        None,
                        None,
                        format!("{}:{} refused the write: {e}", self.path.display(), self.table),
                    )));
                }
                Err(e) => return Err(sql_err(&ctx, e)),
            }
        }
        if !before_commit(&keys) {
            return Err(ConnectorError::new(ErrorKind::Unavailable, format!("{ctx}: abandoned")));
        }
        tx.execute("INSERT OR REPLACE INTO _tandem_intents (id, tbl, pk) VALUES (?1, ?2, '[]')", [batch, &self.table])
            .map_err(|e| sql_err(&ctx, e))?;
        tx.execute("DELETE FROM _tandem_session", []).map_err(|e| sql_err(&ctx, e))?;
        tx.commit().map_err(|e| sql_err(&ctx, e))?;
        Ok(Ok(()))
    }
}
