//! The state store in one embedded SQLite file (WAL mode): every commit is one transaction.

use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tandem_core::mapping::Side;
use tandem_core::store::{AuditRow, Conflict, DeadLetter, InboxEntry, Intent, Link, Op, StateStore, StoreError};
use tandem_core::value::{row_from_json, row_to_json, Key, Row, Value};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cursors (sync TEXT NOT NULL, side TEXT NOT NULL, pos INTEGER NOT NULL, PRIMARY KEY (sync, side));
CREATE TABLE IF NOT EXISTS inbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, sync TEXT NOT NULL, side TEXT NOT NULL, key TEXT NOT NULL, at INTEGER NOT NULL, UNIQUE (sync, side, key));
CREATE TABLE IF NOT EXISTS links (sync TEXT NOT NULL, left_key TEXT NOT NULL, right_key TEXT NOT NULL, base TEXT NOT NULL, tombstone TEXT, pending TEXT, PRIMARY KEY (sync, left_key), UNIQUE (sync, right_key));
CREATE TABLE IF NOT EXISTS intents (sync TEXT NOT NULL, id TEXT NOT NULL, source TEXT NOT NULL, source_key TEXT NOT NULL, base TEXT NOT NULL, revisit INTEGER NOT NULL, PRIMARY KEY (sync, id));
CREATE TABLE IF NOT EXISTS conflicts (id INTEGER PRIMARY KEY AUTOINCREMENT, sync TEXT NOT NULL, left_key TEXT NOT NULL, right_key TEXT NOT NULL, field TEXT NOT NULL, base TEXT, left_value TEXT NOT NULL, right_value TEXT NOT NULL, opened_at INTEGER NOT NULL, resolution TEXT);
CREATE INDEX IF NOT EXISTS conflicts_open ON conflicts (sync, left_key) WHERE resolution IS NULL;
CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, sync TEXT NOT NULL, side TEXT NOT NULL, key TEXT NOT NULL, field TEXT, value_type TEXT, error TEXT NOT NULL, at INTEGER NOT NULL, UNIQUE (sync, side, key));
CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, sync TEXT NOT NULL, kind TEXT NOT NULL, source TEXT, left_key TEXT, right_key TEXT, field TEXT, base TEXT, left_value TEXT, right_value TEXT, winner TEXT, rule TEXT, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_keys ON audit (sync, left_key);
CREATE TABLE IF NOT EXISTS meta (sync TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (sync, name));
";

/// Reads the `[left, right]` JSON of a link's pending values.
fn pending_from_json(text: &str) -> [Row; 2] {
    match serde_json::from_str::<Vec<serde_json::Value>>(text) {
        Ok(v) if v.len() == 2 => [row_from_json(&v[0].to_string()), row_from_json(&v[1].to_string())],
        _ => Default::default(),
    }
}

fn err(what: &str, e: rusqlite::Error) -> StoreError {
    StoreError { message: format!("{what}: {e}"), source: Some(Box::new(e)) }
}

fn enc(v: &Value) -> String {
    v.to_json().to_string()
}

fn dec(s: &str) -> Value {
    serde_json::from_str(s).map(|j| Value::from_json(&j)).unwrap_or(Value::Null)
}

fn key(s: String) -> Key {
    Key::parse(&s).unwrap_or_else(|| Key::from_values(&[Value::Text(s)]))
}

fn side(s: &str) -> Side {
    Side::parse(s).unwrap_or(Side::Left)
}

/// Tandem's state in a SQLite file.
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating when missing) the state file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|e| err(&format!("opening {}", path.display()), e))?;
        conn.set_prepared_statement_cache_capacity(64);
        Self::init(conn)
    }

    /// Opens an existing state file without creating one (for read-only commands).
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::new(format!(
                "state file {} does not exist yet; run `tandem run` first",
                path.display()
            )));
        }
        Self::open(path)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(Duration::from_secs(30)).map_err(|e| err("busy timeout", e))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| err("WAL mode", e))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| err("synchronous", e))?;
        conn.execute_batch(SCHEMA).map_err(|e| err("creating state schema", e))?;
        // State files from before links had `pending` get the column.
        let has_pending: bool = conn
            .query_row("SELECT count(*) FROM pragma_table_info('links') WHERE name = 'pending'", [], |r| r.get(0))
            .map_err(|e| err("reading state schema", e))?;
        if !has_pending {
            conn.execute_batch("ALTER TABLE links ADD COLUMN pending TEXT")
                .map_err(|e| err("upgrading state schema", e))?;
        }
        Ok(SqliteStore { conn })
    }

    fn apply(tx: &rusqlite::Transaction<'_>, op: Op) -> rusqlite::Result<()> {
        match op {
            Op::Cursor { sync, side, pos } => {
                tx.prepare_cached("INSERT INTO cursors (sync, side, pos) VALUES (?1, ?2, ?3) ON CONFLICT (sync, side) DO UPDATE SET pos = excluded.pos")?.execute(params![sync, side.as_str(), pos as i64])?;
            }
            Op::Touch { sync, side, key, at } => {
                tx.prepare_cached("INSERT INTO inbox (sync, side, key, at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (sync, side, key) DO UPDATE SET at = max(at, excluded.at)")?.execute(params![sync, side.as_str(), key.as_str(), at])?;
            }
            Op::Untouch { sync, side, key } => {
                tx.prepare_cached("DELETE FROM inbox WHERE sync = ?1 AND side = ?2 AND key = ?3")?.execute(params![
                    sync,
                    side.as_str(),
                    key.as_str()
                ])?;
            }
            Op::PutLink { sync, link } => {
                // Most puts give an existing link a new base: update it in place (no index
                // changes). Otherwise OR REPLACE removes a link holding either key (primary
                // key or unique right key) and inserts this one.
                let pending = (!link.pending.iter().all(Row::is_empty))
                    .then(|| format!("[{},{}]", row_to_json(&link.pending[0]), row_to_json(&link.pending[1])));
                let p = params![
                    sync,
                    link.left.as_str(),
                    link.right.as_str(),
                    row_to_json(&link.base),
                    link.tombstone.map(Side::as_str),
                    pending
                ];
                let updated = tx
                    .prepare_cached(
                        "UPDATE links SET base = ?4, tombstone = ?5, pending = ?6 WHERE sync = ?1 AND left_key = ?2 AND right_key = ?3",
                    )?
                    .execute(p)?;
                if updated == 0 {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO links (sync, left_key, right_key, base, tombstone, pending) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(p)?;
                }
            }
            Op::DropLink { sync, left } => {
                tx.prepare_cached("DELETE FROM links WHERE sync = ?1 AND left_key = ?2")?
                    .execute(params![sync, left.as_str()])?;
            }
            Op::PutIntent { sync, intent } => {
                tx.prepare_cached("INSERT OR REPLACE INTO intents (sync, id, source, source_key, base, revisit) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?.execute(params![sync, intent.id, intent.source.as_str(), intent.source_key.as_str(), row_to_json(&intent.base), intent.revisit])?;
            }
            Op::DropIntent { sync, id } => {
                tx.prepare_cached("DELETE FROM intents WHERE sync = ?1 AND id = ?2")?.execute(params![sync, id])?;
            }
            Op::OpenConflict(c) => {
                tx.prepare_cached("INSERT INTO conflicts (sync, left_key, right_key, field, base, left_value, right_value, opened_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")?.execute(params![c.sync, c.left_key.as_str(), c.right_key.as_str(), c.field, c.base.as_ref().map(enc), enc(&c.left), enc(&c.right), c.opened_at])?;
            }
            Op::RefreshConflict { id, left, right } => {
                tx.prepare_cached("UPDATE conflicts SET left_value = ?2, right_value = ?3 WHERE id = ?1")?
                    .execute(params![id, enc(&left), enc(&right)])?;
            }
            Op::CloseConflict { id, resolution } => {
                tx.prepare_cached("UPDATE conflicts SET resolution = ?2 WHERE id = ?1 AND resolution IS NULL")?
                    .execute(params![id, resolution])?;
            }
            Op::DeadLetter(d) => {
                tx.prepare_cached("INSERT OR REPLACE INTO dead_letters (sync, side, key, field, value_type, error, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?.execute(params![d.sync, d.side.as_str(), d.key.as_str(), d.field, d.value_type, d.error, d.at])?;
            }
            Op::ClearDeadLetter { sync, side, key } => {
                tx.prepare_cached("DELETE FROM dead_letters WHERE sync = ?1 AND side = ?2 AND key = ?3")?
                    .execute(params![sync, side.as_str(), key.as_str()])?;
            }
            Op::Audit(a) => {
                tx.prepare_cached("INSERT INTO audit (at, sync, kind, source, left_key, right_key, field, base, left_value, right_value, winner, rule, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)")?.execute(params![
                        a.at,
                        a.sync,
                        a.kind,
                        a.source.map(Side::as_str),
                        a.left_key.as_ref().map(Key::as_str),
                        a.right_key.as_ref().map(Key::as_str),
                        a.field,
                        a.base.as_ref().map(enc),
                        a.left.as_ref().map(enc),
                        a.right.as_ref().map(enc),
                        a.winner.map(Side::as_str),
                        a.rule,
                        a.detail
                    ])?;
            }
            Op::Meta { sync, name, value } => match value {
                Some(v) => {
                    tx.prepare_cached("INSERT INTO meta (sync, name, value) VALUES (?1, ?2, ?3) ON CONFLICT (sync, name) DO UPDATE SET value = excluded.value")?.execute(params![sync, name, v])?;
                }
                None => {
                    tx.prepare_cached("DELETE FROM meta WHERE sync = ?1 AND name = ?2")?
                        .execute(params![sync, name])?;
                }
            },
        }
        Ok(())
    }

    fn link_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Link> {
        Ok(Link {
            left: key(r.get(0)?),
            right: key(r.get(1)?),
            base: row_from_json(&r.get::<_, String>(2)?),
            tombstone: r.get::<_, Option<String>>(3)?.map(|s| side(&s)),
            pending: r.get::<_, Option<String>>(4)?.map(|p| pending_from_json(&p)).unwrap_or_default(),
        })
    }

    fn conflict_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Conflict> {
        Ok(Conflict {
            id: r.get(0)?,
            sync: r.get(1)?,
            left_key: key(r.get(2)?),
            right_key: key(r.get(3)?),
            field: r.get(4)?,
            base: r.get::<_, Option<String>>(5)?.map(|s| dec(&s)),
            left: dec(&r.get::<_, String>(6)?),
            right: dec(&r.get::<_, String>(7)?),
            opened_at: r.get(8)?,
            resolution: r.get(9)?,
        })
    }

    /// Audit rows of one record (by its left or right key), in order.
    pub fn audit_of(&mut self, sync: Option<&str>, key_text: &str) -> Result<Vec<AuditRow>, StoreError> {
        let all = self.audit(sync)?;
        let k =
            Key::parse(key_text).or_else(|| key_text.parse::<i64>().ok().map(|i| Key::from_values(&[Value::Int(i)])));
        let k = k.unwrap_or_else(|| Key::from_values(&[Value::Text(key_text.to_string())]));
        Ok(all.into_iter().filter(|a| a.left_key.as_ref() == Some(&k) || a.right_key.as_ref() == Some(&k)).collect())
    }
}

const CONFLICT_COLS: &str =
    "id, sync, left_key, right_key, field, base, left_value, right_value, opened_at, resolution";

impl StateStore for SqliteStore {
    fn commit(&mut self, ops: Vec<Op>) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| err("beginning commit", e))?;
        for op in ops {
            Self::apply(&tx, op).map_err(|e| err("writing state", e))?;
        }
        tx.commit().map_err(|e| err("committing state", e))
    }

    fn cursor(&mut self, sync: &str, s: Side) -> Result<Option<u64>, StoreError> {
        self.conn
            .query_row("SELECT pos FROM cursors WHERE sync = ?1 AND side = ?2", params![sync, s.as_str()], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|p| p.map(|p| p as u64))
            .map_err(|e| err("reading cursor", e))
    }

    fn inbox(&mut self, sync: &str, limit: usize) -> Result<Vec<InboxEntry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, side, key, at FROM inbox WHERE sync = ?1 ORDER BY seq LIMIT ?2")
            .map_err(|e| err("reading inbox", e))?;
        let rows = stmt
            .query_map(params![sync, limit as i64], |r| {
                Ok(InboxEntry {
                    seq: r.get(0)?,
                    side: side(&r.get::<_, String>(1)?),
                    key: key(r.get(2)?),
                    at: r.get(3)?,
                })
            })
            .and_then(|it| it.collect())
            .map_err(|e| err("reading inbox", e))?;
        Ok(rows)
    }

    fn inbox_len(&mut self, sync: &str, s: Side) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM inbox WHERE sync = ?1 AND side = ?2", params![sync, s.as_str()], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(|e| err("counting inbox", e))
    }

    fn inbox_at(&mut self, sync: &str, s: Side, k: &Key) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row(
                "SELECT at FROM inbox WHERE sync = ?1 AND side = ?2 AND key = ?3",
                params![sync, s.as_str(), k.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| err("reading inbox", e))
    }

    fn link(&mut self, sync: &str, s: Side, k: &Key) -> Result<Option<Link>, StoreError> {
        let sql = match s {
            Side::Left => {
                "SELECT left_key, right_key, base, tombstone, pending FROM links WHERE sync = ?1 AND left_key = ?2"
            }
            Side::Right => {
                "SELECT left_key, right_key, base, tombstone, pending FROM links WHERE sync = ?1 AND right_key = ?2"
            }
        };
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| err("reading link", e))?;
        stmt.query_row(params![sync, k.as_str()], Self::link_from).optional().map_err(|e| err("reading link", e))
    }

    fn links_of(&mut self, sync: &str, s: Side, keys: &[Key]) -> Result<HashMap<Key, Link>, StoreError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = match s {
            Side::Left => "SELECT l.left_key, l.right_key, l.base, l.tombstone, l.pending FROM json_each(?2) AS j CROSS JOIN links AS l ON l.sync = ?1 AND l.left_key = j.value",
            Side::Right => "SELECT l.left_key, l.right_key, l.base, l.tombstone, l.pending FROM json_each(?2) AS j CROSS JOIN links AS l ON l.sync = ?1 AND l.right_key = j.value",
        };
        let wanted = serde_json::to_string(&keys.iter().map(Key::as_str).collect::<Vec<_>>())
            .map_err(|e| StoreError::new(format!("encoding keys: {e}")))?;
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| err("reading links", e))?;
        let links: Vec<Link> = stmt
            .query_map(params![sync, wanted], Self::link_from)
            .and_then(|it| it.collect())
            .map_err(|e| err("reading links", e))?;
        Ok(links.into_iter().map(|l| (l.key(s).clone(), l)).collect())
    }

    fn links(&mut self, sync: &str) -> Result<Vec<Link>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT left_key, right_key, base, tombstone, pending FROM links WHERE sync = ?1")
            .map_err(|e| err("reading links", e))?;
        let rows =
            stmt.query_map([sync], Self::link_from).and_then(|it| it.collect()).map_err(|e| err("reading links", e))?;
        Ok(rows)
    }

    fn link_count(&mut self, sync: &str) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM links WHERE sync = ?1 AND tombstone IS NULL", [sync], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(|e| err("counting links", e))
    }

    fn intents(&mut self, sync: &str) -> Result<Vec<Intent>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, source, source_key, base, revisit FROM intents WHERE sync = ?1")
            .map_err(|e| err("reading intents", e))?;
        let rows = stmt
            .query_map([sync], |r| {
                Ok(Intent {
                    id: r.get(0)?,
                    source: side(&r.get::<_, String>(1)?),
                    source_key: key(r.get(2)?),
                    base: row_from_json(&r.get::<_, String>(3)?),
                    revisit: r.get(4)?,
                })
            })
            .and_then(|it| it.collect())
            .map_err(|e| err("reading intents", e))?;
        Ok(rows)
    }

    fn conflicts(&mut self, sync: Option<&str>, open_only: bool) -> Result<Vec<Conflict>, StoreError> {
        let sql = format!(
            "SELECT {CONFLICT_COLS} FROM conflicts WHERE (?1 IS NULL OR sync = ?1) AND (?2 = 0 OR resolution IS NULL) ORDER BY id"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| err("reading conflicts", e))?;
        let rows = stmt
            .query_map(params![sync, open_only], Self::conflict_from)
            .and_then(|it| it.collect())
            .map_err(|e| err("reading conflicts", e))?;
        Ok(rows)
    }

    fn dead_letters(&mut self, sync: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, sync, side, key, field, value_type, error, at FROM dead_letters WHERE (?1 IS NULL OR sync = ?1) ORDER BY id")
            .map_err(|e| err("reading dead letters", e))?;
        let rows = stmt
            .query_map(params![sync], |r| {
                Ok(DeadLetter {
                    id: r.get(0)?,
                    sync: r.get(1)?,
                    side: side(&r.get::<_, String>(2)?),
                    key: key(r.get(3)?),
                    field: r.get(4)?,
                    value_type: r.get(5)?,
                    error: r.get(6)?,
                    at: r.get(7)?,
                })
            })
            .and_then(|it| it.collect())
            .map_err(|e| err("reading dead letters", e))?;
        Ok(rows)
    }

    fn audit(&mut self, sync: Option<&str>) -> Result<Vec<AuditRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, at, sync, kind, source, left_key, right_key, field, base, left_value, right_value, winner, rule, detail FROM audit WHERE (?1 IS NULL OR sync = ?1) ORDER BY id")
            .map_err(|e| err("reading audit", e))?;
        let rows = stmt
            .query_map(params![sync], |r| {
                Ok(AuditRow {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    sync: r.get(2)?,
                    kind: r.get(3)?,
                    source: r.get::<_, Option<String>>(4)?.map(|s| side(&s)),
                    left_key: r.get::<_, Option<String>>(5)?.map(key),
                    right_key: r.get::<_, Option<String>>(6)?.map(key),
                    field: r.get(7)?,
                    base: r.get::<_, Option<String>>(8)?.map(|s| dec(&s)),
                    left: r.get::<_, Option<String>>(9)?.map(|s| dec(&s)),
                    right: r.get::<_, Option<String>>(10)?.map(|s| dec(&s)),
                    winner: r.get::<_, Option<String>>(11)?.map(|s| side(&s)),
                    rule: r.get(12)?,
                    detail: r.get(13)?,
                })
            })
            .and_then(|it| it.collect())
            .map_err(|e| err("reading audit", e))?;
        Ok(rows)
    }

    fn meta(&mut self, sync: &str, name: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE sync = ?1 AND name = ?2", params![sync, name], |r| r.get(0))
            .optional()
            .map_err(|e| err("reading meta", e))
    }
}
