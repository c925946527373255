//! The state store in one embedded SQLite file (WAL mode): every commit is one transaction.

use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tandem_core::mapping::Side;
use tandem_core::store::{AuditRow, Conflict, DeadLetter, InboxEntry, Intent, Link, Op, StateStore, StoreError};
use tandem_core::value::{pair_from_json_value, pair_to_json, row_from_json, row_to_json, Key, Row, Value};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cursors (sync TEXT NOT NULL, side TEXT NOT NULL, pos INTEGER NOT NULL, PRIMARY KEY (sync, side));
CREATE TABLE IF NOT EXISTS inbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, sync TEXT NOT NULL, side TEXT NOT NULL, key TEXT NOT NULL, at INTEGER NOT NULL, pos INTEGER NOT NULL DEFAULT 0, UNIQUE (sync, side, key));
CREATE TABLE IF NOT EXISTS links (sync TEXT NOT NULL, left_key TEXT NOT NULL, right_key TEXT NOT NULL, base TEXT NOT NULL, tombstone TEXT, pending TEXT, PRIMARY KEY (sync, left_key), UNIQUE (sync, right_key));
CREATE TABLE IF NOT EXISTS intents (sync TEXT NOT NULL, id TEXT NOT NULL, source TEXT NOT NULL, source_key TEXT NOT NULL, base TEXT NOT NULL, revisit INTEGER NOT NULL, PRIMARY KEY (sync, id));
CREATE TABLE IF NOT EXISTS conflicts (id INTEGER PRIMARY KEY AUTOINCREMENT, sync TEXT NOT NULL, left_key TEXT NOT NULL, right_key TEXT NOT NULL, field TEXT NOT NULL, base TEXT, left_value TEXT NOT NULL, right_value TEXT NOT NULL, opened_at INTEGER NOT NULL, resolution TEXT);
CREATE INDEX IF NOT EXISTS conflicts_open ON conflicts (sync, left_key) WHERE resolution IS NULL;
CREATE TABLE IF NOT EXISTS dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, sync TEXT NOT NULL, side TEXT NOT NULL, key TEXT NOT NULL, field TEXT, value_type TEXT, error TEXT NOT NULL, at INTEGER NOT NULL, UNIQUE (sync, side, key));
CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, sync TEXT NOT NULL, kind TEXT NOT NULL, source TEXT, left_key TEXT, right_key TEXT, field TEXT, base TEXT, left_value TEXT, right_value TEXT, winner TEXT, rule TEXT, detail TEXT NOT NULL, position INTEGER, prev_hash TEXT NOT NULL DEFAULT '', hash TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_keys ON audit (sync, left_key);
CREATE TABLE IF NOT EXISTS meta (sync TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (sync, name));
";

/// Reads the `[left, right]` JSON of a link's pending values.
fn pending_from_json(text: &str) -> [Row; 2] {
    serde_json::from_str(text).map(|j| pair_from_json_value(&j)).unwrap_or_default()
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

/// A key the state stored (written from [`Key::as_str`], so already in its canonical form).
fn key(s: String) -> Key {
    Key::from_stored(s)
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
        // State files from before the audit chain and change positions get the columns, and
        // their audit rows are chained once, in order.
        let column = |table: &str, name: &str| -> Result<bool, StoreError> {
            conn.query_row("SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2", params![table, name], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n > 0)
            .map_err(|e| err("reading state schema", e))
        };
        if !column("inbox", "pos")? {
            conn.execute_batch("ALTER TABLE inbox ADD COLUMN pos INTEGER NOT NULL DEFAULT 0")
                .map_err(|e| err("upgrading state schema", e))?;
        }
        if !column("audit", "hash")? {
            conn.execute_batch(
                "ALTER TABLE audit ADD COLUMN position INTEGER;
                 ALTER TABLE audit ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
                 ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT '';
                 CREATE INDEX IF NOT EXISTS audit_at ON audit (at);",
            )
            .map_err(|e| err("upgrading state schema", e))?;
            let mut store = SqliteStore { conn };
            store.chain_unchained()?;
            return Ok(store);
        }
        Ok(SqliteStore { conn })
    }

    /// Gives audit rows written before the chain existed their hashes, in id order.
    fn chain_unchained(&mut self) -> Result<(), StoreError> {
        let rows = self.audit(None)?;
        let tx = self.conn.transaction().map_err(|e| err("chaining audit", e))?;
        let mut prev = String::new();
        for a in rows {
            let hash = audit_hash(&prev, &a);
            tx.execute("UPDATE audit SET prev_hash = ?2, hash = ?3 WHERE id = ?1", params![a.id, prev, hash])
                .map_err(|e| err("chaining audit", e))?;
            prev = hash;
        }
        tx.commit().map_err(|e| err("chaining audit", e))
    }

    /// Checks the audit trail's hash chain from its first kept row to its last: each row must
    /// carry the hash of the one before (or of the last row removed by retention) and hash to
    /// its own recorded value.
    pub fn verify_audit(&mut self) -> Result<AuditVerdict, StoreError> {
        let anchor = self.meta("", "audit_anchor")?.unwrap_or_default();
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {AUDIT_COLS}, prev_hash, hash FROM audit ORDER BY id"))
            .map_err(|e| err("reading audit", e))?;
        let mut rows = stmt.query([]).map_err(|e| err("reading audit", e))?;
        let mut prev = anchor;
        let mut checked = 0u64;
        while let Some(r) = rows.next().map_err(|e| err("reading audit", e))? {
            let a = audit_from(r).map_err(|e| err("reading audit", e))?;
            let recorded_prev: String = r.get(15).map_err(|e| err("reading audit", e))?;
            let recorded: String = r.get(16).map_err(|e| err("reading audit", e))?;
            if recorded_prev != prev {
                return Ok(AuditVerdict::Broken {
                    id: a.id,
                    why: "it does not carry the hash of the row before it: a row before it was removed, inserted or changed".into(),
                    checked,
                });
            }
            let hash = audit_hash(&prev, &a);
            if hash != recorded {
                return Ok(AuditVerdict::Broken {
                    id: a.id,
                    why: "its content does not match its hash: the row was changed after it was written".into(),
                    checked,
                });
            }
            prev = recorded;
            checked += 1;
        }
        Ok(AuditVerdict::Intact { rows: checked, head: prev })
    }

    /// Removes audit rows older than `before` (ms), keeping the chain checkable: the hash of the
    /// last row removed becomes the anchor the first kept row is checked against.
    pub fn prune_audit(&mut self, before: i64) -> Result<u64, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| err("pruning audit", e))?;
        // Rows go in id order: everything up to the last row that is old enough.
        let last: Option<(i64, String)> = tx
            .query_row("SELECT id, hash FROM audit WHERE at < ?1 ORDER BY id DESC LIMIT 1", params![before], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(|e| err("pruning audit", e))?;
        let Some((id, hash)) = last else { return Ok(0) };
        let n = tx.execute("DELETE FROM audit WHERE id <= ?1", params![id]).map_err(|e| err("pruning audit", e))?;
        tx.execute(
            "INSERT INTO meta (sync, name, value) VALUES ('', 'audit_anchor', ?1) ON CONFLICT (sync, name) DO UPDATE SET value = excluded.value",
            params![hash],
        )
        .map_err(|e| err("pruning audit", e))?;
        tx.commit().map_err(|e| err("pruning audit", e))?;
        Ok(n as u64)
    }

    /// How many conflicts of a sync are open, and how many dead letters it has (for status
    /// displays, without reading them).
    pub fn open_counts(&mut self, sync: &str) -> Result<(u64, u64), StoreError> {
        self.conn
            .query_row(
                "SELECT (SELECT count(*) FROM conflicts WHERE sync = ?1 AND resolution IS NULL),
                        (SELECT count(*) FROM dead_letters WHERE sync = ?1)",
                params![sync],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(|e| err("counting conflicts and dead letters", e))
    }

    /// The oldest change time of a side's records waiting in the inbox (captured changes only).
    pub fn inbox_oldest(&mut self, sync: &str, s: Side) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row(
                "SELECT min(at) FROM inbox WHERE sync = ?1 AND side = ?2 AND at > 0",
                params![sync, s.as_str()],
                |r| r.get(0),
            )
            .map_err(|e| err("reading inbox", e))
    }

    /// Audit rows matching a query, oldest first, at most `limit` (the latest ones).
    pub fn audit_query(&mut self, q: &AuditQuery) -> Result<Vec<AuditRow>, StoreError> {
        let mut sql = format!("SELECT {AUDIT_COLS} FROM audit WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(s) = &q.sync {
            arg(&mut sql, " AND sync = ?", s.clone().into());
        }
        if let Some(k) = &q.key {
            let k = parse_key_text(k);
            arg(&mut sql, " AND (left_key = ? OR right_key = ?)", k.as_str().to_string().into());
        }
        if let Some(from) = q.from {
            arg(&mut sql, " AND at >= ?", from.into());
        }
        if let Some(to) = q.to {
            arg(&mut sql, " AND at < ?", to.into());
        }
        if let Some(rule) = &q.rule {
            arg(&mut sql, " AND (rule = ? OR rule LIKE ? || ':%')", rule.clone().into());
        }
        if let Some(kind) = &q.kind {
            arg(&mut sql, " AND kind = ?", kind.clone().into());
        }
        arg(&mut sql, " ORDER BY id DESC LIMIT ?", (q.limit.min(i64::MAX as usize) as i64).into());
        let mut stmt = self.conn.prepare(&sql).map_err(|e| err("reading audit", e))?;
        let mut rows: Vec<AuditRow> = stmt
            .query_map(rusqlite::params_from_iter(args), audit_from)
            .and_then(|it| it.collect())
            .map_err(|e| err("reading audit", e))?;
        rows.reverse();
        Ok(rows)
    }

    /// Forgets a dead letter without retrying it (the record stays as it is on both sides until
    /// it changes again); audited.
    pub fn discard_dead_letter(&mut self, id: i64, at: i64) -> Result<bool, StoreError> {
        let Some(d) = self.dead_letters(None)?.into_iter().find(|d| d.id == id) else { return Ok(false) };
        self.commit(vec![
            Op::ClearDeadLetter { sync: d.sync.clone(), side: d.side, key: d.key.clone() },
            Op::Audit(AuditRow {
                at,
                sync: d.sync,
                kind: "discard".into(),
                source: Some(d.side),
                left_key: (d.side == Side::Left).then(|| d.key.clone()),
                right_key: (d.side == Side::Right).then(|| d.key.clone()),
                field: d.field,
                detail: format!("dead letter {id} discarded by an operator"),
                ..AuditRow::default()
            }),
        ])?;
        Ok(true)
    }

    fn apply(tx: &rusqlite::Transaction<'_>, op: Op) -> rusqlite::Result<()> {
        match op {
            Op::Cursor { sync, side, pos } => {
                tx.prepare_cached("INSERT INTO cursors (sync, side, pos) VALUES (?1, ?2, ?3) ON CONFLICT (sync, side) DO UPDATE SET pos = excluded.pos")?.execute(params![sync, side.as_str(), pos as i64])?;
            }
            Op::Touch { sync, side, key, at, pos } => {
                tx.prepare_cached("INSERT INTO inbox (sync, side, key, at, pos) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (sync, side, key) DO UPDATE SET at = max(at, excluded.at), pos = max(pos, excluded.pos)")?.execute(params![sync, side.as_str(), key.as_str(), at, pos as i64])?;
            }
            Op::Untouch { sync, side, key } => {
                tx.prepare_cached("DELETE FROM inbox WHERE sync = ?1 AND side = ?2 AND key = ?3")?.execute(params![
                    sync,
                    side.as_str(),
                    key.as_str()
                ])?;
            }
            Op::PutLink { sync, link } => Self::put_link(tx, &sync, &link, true)?,
            Op::NewLink { sync, link } => Self::put_link(tx, &sync, &link, false)?,
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
                let mut prev = None;
                Self::append_audit(tx, &mut prev, &a)?;
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

    /// Writes a link. Most puts give an existing link a new base: with `update_first` it is
    /// updated in place (no index changes). Otherwise, or when there was none, OR REPLACE
    /// removes a link holding either key (primary key or unique right key) and inserts this one.
    fn put_link(tx: &rusqlite::Transaction<'_>, sync: &str, link: &Link, update_first: bool) -> rusqlite::Result<()> {
        let pending = (!link.pending.iter().all(Row::is_empty)).then(|| pair_to_json(&link.pending));
        let p = params![
            sync,
            link.left.as_str(),
            link.right.as_str(),
            row_to_json(&link.base),
            link.tombstone.map(Side::as_str),
            pending
        ];
        let updated = if update_first {
            tx.prepare_cached(
                "UPDATE links SET base = ?4, tombstone = ?5, pending = ?6 WHERE sync = ?1 AND left_key = ?2 AND right_key = ?3",
            )?
            .execute(p)?
        } else {
            0
        };
        if updated == 0 {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO links (sync, left_key, right_key, base, tombstone, pending) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(p)?;
        }
        Ok(())
    }

    /// Appends one audit row to the chain: it carries the hash of the row before it.
    fn append_audit(tx: &rusqlite::Transaction<'_>, prev: &mut Option<String>, a: &AuditRow) -> rusqlite::Result<()> {
        let before = match prev.take() {
            Some(h) => h,
            None => tx
                .query_row("SELECT hash FROM audit ORDER BY id DESC LIMIT 1", [], |r| r.get(0))
                .optional()?
                .or(tx
                    .query_row("SELECT value FROM meta WHERE sync = '' AND name = 'audit_anchor'", [], |r| r.get(0))
                    .optional()?)
                .unwrap_or_default(),
        };
        let hash = audit_hash(&before, a);
        tx.prepare_cached("INSERT INTO audit (at, sync, kind, source, left_key, right_key, field, base, left_value, right_value, winner, rule, detail, position, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)")?.execute(params![
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
            a.detail,
            a.position.map(|p| p as i64),
            before,
            hash
        ])?;
        *prev = Some(hash);
        Ok(())
    }

    fn link_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Link> {
        Ok(Link {
            left: key(r.get(0)?),
            right: key(r.get(1)?),
            base: row_from_json(r.get_ref(2)?.as_str()?),
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
        self.audit_query(&AuditQuery {
            sync: sync.map(str::to_string),
            key: Some(key_text.to_string()),
            limit: usize::MAX,
            ..AuditQuery::default()
        })
    }
}

const AUDIT_COLS: &str = "id, at, sync, kind, source, left_key, right_key, field, base, left_value, right_value, winner, rule, detail, position";

fn audit_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
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
        position: r.get::<_, Option<i64>>(14)?.map(|p| p as u64),
    })
}

/// The hash of an audit row chained to the one before: SHA-256 over the previous hash and
/// every field of the row (not its id, which SQLite assigns), each field length-prefixed so no
/// two rows hash the same input; hex-encoded.
fn audit_hash(prev: &str, a: &AuditRow) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut field = |v: Option<&str>| match v {
        None => h.update([0u8]),
        Some(t) => {
            h.update([1u8]);
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
    };
    let (base, left, right) = (a.base.as_ref().map(enc), a.left.as_ref().map(enc), a.right.as_ref().map(enc));
    let (at, position) = (a.at.to_string(), a.position.map(|p| p.to_string()));
    field(Some(prev));
    field(Some(&at));
    field(Some(&a.sync));
    field(Some(&a.kind));
    field(a.source.map(Side::as_str));
    field(a.left_key.as_ref().map(Key::as_str));
    field(a.right_key.as_ref().map(Key::as_str));
    field(a.field.as_deref());
    field(base.as_deref());
    field(left.as_deref());
    field(right.as_deref());
    field(a.winner.map(Side::as_str));
    field(a.rule.as_deref());
    field(Some(&a.detail));
    field(position.as_deref());
    let digest = h.finalize();
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    out
}

/// What `tandem audit verify` found.
#[derive(Clone, Debug, PartialEq)]
pub enum AuditVerdict {
    /// Every kept row is chained and unchanged.
    Intact {
        /// Rows checked.
        rows: u64,
        /// The last row's hash (write it down elsewhere to detect a rewrite of the whole trail).
        head: String,
    },
    /// The first row that fails.
    Broken {
        /// Its id.
        id: i64,
        /// What is wrong with it.
        why: String,
        /// Rows checked before it.
        checked: u64,
    },
}

/// A filter over the audit trail.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Only this sync.
    pub sync: Option<String>,
    /// Only this record (its left or right key, `7` or `[7]`).
    pub key: Option<String>,
    /// From this time (ms, inclusive).
    pub from: Option<i64>,
    /// Until this time (ms, exclusive).
    pub to: Option<i64>,
    /// Only decisions by this rule (`latest`, `prefer`, `hold`, `match_on`, …).
    pub rule: Option<String>,
    /// Only this kind of row (`apply`, `decision`, `conflict`, …).
    pub kind: Option<String>,
    /// At most this many rows (the latest).
    pub limit: usize,
}

/// A record key as a user types it: `[7]`, `7` or `ada@example.com`.
pub fn parse_key_text(text: &str) -> Key {
    Key::parse(text)
        .or_else(|| text.parse::<i64>().ok().map(|i| Key::from_values(&[Value::Int(i)])))
        .unwrap_or_else(|| Key::from_values(&[Value::Text(text.to_string())]))
}

const CONFLICT_COLS: &str =
    "id, sync, left_key, right_key, field, base, left_value, right_value, opened_at, resolution";

impl StateStore for SqliteStore {
    fn commit(&mut self, ops: Vec<Op>) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| err("beginning commit", e))?;
        let mut prev: Option<String> = None;
        for op in ops {
            if let Op::Audit(a) = op {
                Self::append_audit(&tx, &mut prev, &a).map_err(|e| err("writing audit", e))?;
                continue;
            }
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
            .prepare_cached("SELECT seq, side, key, at, pos FROM inbox WHERE sync = ?1 ORDER BY seq LIMIT ?2")
            .map_err(|e| err("reading inbox", e))?;
        let rows = stmt
            .query_map(params![sync, limit as i64], |r| {
                Ok(InboxEntry {
                    seq: r.get(0)?,
                    side: side(&r.get::<_, String>(1)?),
                    key: key(r.get(2)?),
                    at: r.get(3)?,
                    pos: r.get::<_, i64>(4)? as u64,
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
            .prepare(&format!("SELECT {AUDIT_COLS} FROM audit WHERE (?1 IS NULL OR sync = ?1) ORDER BY id"))
            .map_err(|e| err("reading audit", e))?;
        let rows = stmt
            .query_map(params![sync], audit_from)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at: i64, detail: &str) -> Op {
        Op::Audit(AuditRow { at, sync: "s".into(), kind: "apply".into(), detail: detail.into(), ..AuditRow::default() })
    }

    fn temp_store(name: &str) -> (SqliteStore, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("tandem-state-{name}-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        (SqliteStore::open(&path).unwrap(), path)
    }

    #[test]
    fn the_audit_chain_detects_changed_removed_and_inserted_rows_and_survives_retention() {
        let (mut st, path) = temp_store("chain");
        st.commit((1..=5).map(|i| row(i * 1000, &format!("change {i}"))).collect()).unwrap();
        st.commit(vec![row(6000, "change 6")]).unwrap();
        assert!(matches!(st.verify_audit().unwrap(), AuditVerdict::Intact { rows: 6, .. }));

        // Retention removes the oldest rows; what is kept still verifies.
        assert_eq!(st.prune_audit(2500).unwrap(), 2);
        assert!(matches!(st.verify_audit().unwrap(), AuditVerdict::Intact { rows: 4, .. }));
        st.commit(vec![row(7000, "change 7")]).unwrap();
        assert!(matches!(st.verify_audit().unwrap(), AuditVerdict::Intact { rows: 5, .. }));
        // Everything pruned, then a new row: chained to the anchor.
        assert_eq!(st.prune_audit(i64::MAX).unwrap(), 5);
        st.commit(vec![row(8000, "change 8")]).unwrap();
        assert!(matches!(st.verify_audit().unwrap(), AuditVerdict::Intact { rows: 1, .. }));
        st.commit((9..=12).map(|i| row(i * 1000, &format!("change {i}"))).collect()).unwrap();

        let broken = |st: &mut SqliteStore| match st.verify_audit().unwrap() {
            AuditVerdict::Broken { id, .. } => id,
            v => panic!("tampering not detected: {v:?}"),
        };
        let ids: Vec<i64> = st.audit(None).unwrap().iter().map(|a| a.id).collect();
        // A changed row.
        st.conn.execute("UPDATE audit SET detail = 'forged' WHERE id = ?1", [ids[2]]).unwrap();
        assert_eq!(broken(&mut st), ids[2]);
        st.conn.execute("UPDATE audit SET detail = 'change 10' WHERE id = ?1", [ids[2]]).unwrap();
        assert!(matches!(st.verify_audit().unwrap(), AuditVerdict::Intact { .. }));
        // A removed row: the next one no longer follows its predecessor.
        st.conn.execute("DELETE FROM audit WHERE id = ?1", [ids[1]]).unwrap();
        assert_eq!(broken(&mut st), ids[2]);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn audit_queries_filter_by_key_time_and_rule() {
        let (mut st, path) = temp_store("query");
        let k = |i: i64| Some(Key::from_values(&[Value::Int(i)]));
        st.commit(vec![
            Op::Audit(AuditRow {
                at: 1000,
                sync: "s".into(),
                kind: "apply".into(),
                left_key: k(1),
                right_key: k(10),
                ..AuditRow::default()
            }),
            Op::Audit(AuditRow {
                at: 2000,
                sync: "s".into(),
                kind: "decision".into(),
                left_key: k(2),
                right_key: k(20),
                rule: Some("prefer:erp".into()),
                ..AuditRow::default()
            }),
            Op::Audit(AuditRow {
                at: 3000,
                sync: "s".into(),
                kind: "decision".into(),
                left_key: k(1),
                right_key: k(10),
                rule: Some("latest".into()),
                ..AuditRow::default()
            }),
        ])
        .unwrap();
        let q = |q: AuditQuery| st_query(&path, q);
        fn st_query(path: &Path, q: AuditQuery) -> Vec<i64> {
            SqliteStore::open(path)
                .unwrap()
                .audit_query(&AuditQuery { limit: if q.limit == 0 { 100 } else { q.limit }, ..q })
                .unwrap()
                .iter()
                .map(|a| a.at)
                .collect()
        }
        assert_eq!(q(AuditQuery { key: Some("10".into()), ..AuditQuery::default() }), vec![1000, 3000]);
        assert_eq!(q(AuditQuery { key: Some("[2]".into()), ..AuditQuery::default() }), vec![2000]);
        assert_eq!(q(AuditQuery { rule: Some("prefer".into()), ..AuditQuery::default() }), vec![2000]);
        assert_eq!(q(AuditQuery { from: Some(1500), to: Some(3000), ..AuditQuery::default() }), vec![2000]);
        assert_eq!(q(AuditQuery { kind: Some("decision".into()), limit: 1, ..AuditQuery::default() }), vec![3000]);
        drop(st);
        let _ = std::fs::remove_file(&path);
    }
}
