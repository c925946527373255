//! Deterministic simulation support: an in-memory system and crash fuses.
//!
//! [`MemoryTable`] behaves like a database table with trigger capture: user writes land in a
//! change log, Tandem's writes do not, inserts can generate keys, and each call can be made to
//! fail (system down) or to "crash" before or after it takes effect.

use crate::connector::{
    BulkTarget, CaptureState, ChangePage, Connector, ConnectorError, ErrorKind, RowError, Touched, Write, WriteResult,
};
use crate::store::{MemoryStore, Op, StateStore, StoreError};
use crate::value::{Key, Row, Value};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

/// A countdown shared by every failure point of a simulation: when it reaches zero the
/// current call fails, as if the process died there.
#[derive(Clone, Debug, Default)]
pub struct Fuse(Rc<Cell<Option<u32>>>);

impl Fuse {
    /// Arms the fuse to blow at the `n`th failure point from now (1 = the next one).
    pub fn arm(&self, n: u32) {
        self.0.set(Some(n));
    }

    /// Disarms the fuse.
    pub fn disarm(&self) {
        self.0.set(None);
    }

    /// Counts one failure point; true when the fuse blows here.
    pub fn tick(&self) -> bool {
        match self.0.get() {
            Some(1) => {
                self.0.set(None);
                true
            }
            Some(n) => {
                self.0.set(Some(n - 1));
                false
            }
            None => false,
        }
    }

    /// True while armed.
    pub fn armed(&self) -> bool {
        self.0.get().is_some()
    }
}

/// An in-memory table with trigger-like capture.
#[derive(Debug)]
pub struct MemoryTable {
    /// Rows by key.
    pub rows: BTreeMap<Key, Row>,
    /// The key column (an integer the table generates when an insert leaves it out).
    pub key_column: String,
    /// Columns that refuse NULL.
    pub not_null: Vec<String>,
    log: Vec<Touched>,
    next_pos: u64,
    next_id: i64,
    intents: HashMap<String, Key>,
    installed: bool,
    /// The simulation clock (ms), shared with the harness.
    pub clock: Rc<Cell<i64>>,
    /// While true every call fails as unavailable.
    pub down: bool,
    /// Crash fuse.
    pub fuse: Fuse,
    /// Writes Tandem applied (inserts, updates, deletes), to check an idle pair stays idle.
    pub tandem_writes: u64,
    /// User writes that land at the start of the next `apply`: after the engine read the
    /// records, before it writes them.
    pub interfere: Vec<(Key, Row)>,
    /// The key column is written by the mapping: an insert that gives it keeps it (and is
    /// refused when the key is taken), so the table supports bulk inserts.
    pub mapped_key: bool,
    /// Bulk inserts are refused (as a target with a clashing key or a strict column would).
    pub refuse_bulk: bool,
    /// The table cannot say when a record last changed (as PostgreSQL's capture cannot).
    pub no_change_times: bool,
    /// The `wait` of each `changes` call, in order: whether the engine would have waited for
    /// a stream to catch up.
    pub waits: Vec<bool>,
    /// A bulk load into this table runs: inserts stay out of the change log (as PostgreSQL's
    /// publication leaves them out then), for the load's end to find.
    quiet_inserts: bool,
    /// Keys bulk pages wrote that no user has changed since.
    bulk_written: HashSet<Key>,
}

impl MemoryTable {
    /// An empty table keyed by the integer column `key_column`.
    pub fn new(key_column: &str, clock: Rc<Cell<i64>>, fuse: Fuse) -> Self {
        MemoryTable {
            rows: BTreeMap::new(),
            key_column: key_column.into(),
            not_null: Vec::new(),
            log: Vec::new(),
            next_pos: 0,
            next_id: 1,
            intents: HashMap::new(),
            installed: false,
            clock,
            down: false,
            fuse,
            tandem_writes: 0,
            interfere: Vec::new(),
            mapped_key: false,
            refuse_bulk: false,
            no_change_times: false,
            waits: Vec::new(),
            quiet_inserts: false,
            bulk_written: HashSet::new(),
        }
    }

    /// Markers of creates and bulk pages that Tandem has not removed yet.
    pub fn markers(&self) -> usize {
        self.intents.len()
    }

    /// Makes the keys this table generates start at `first` (to keep two tables' keys apart).
    pub fn generate_keys_from(&mut self, first: i64) {
        self.next_id = first;
    }

    fn record(&mut self, key: Key) {
        if !self.installed {
            return;
        }
        self.next_pos += 1;
        self.log.push(Touched { pos: self.next_pos, key, at_ms: self.clock.get() });
    }

    /// A user inserts a row; returns its generated key.
    pub fn user_insert(&mut self, mut row: Row) -> Key {
        let id = self.next_id;
        self.next_id += 1;
        row.insert(self.key_column.as_str().into(), Value::Int(id));
        let key = Key::from_values(&[Value::Int(id)]);
        self.rows.insert(key.clone(), row);
        if !self.quiet_inserts {
            self.record(key.clone());
        }
        key
    }

    /// A user sets columns of an existing row.
    pub fn user_update(&mut self, key: &Key, values: Row) {
        if let Some(row) = self.rows.get_mut(key) {
            row.extend(values);
            self.bulk_written.remove(key);
            self.record(key.clone());
        }
    }

    /// A user deletes a row.
    pub fn user_delete(&mut self, key: &Key) {
        if self.rows.remove(key).is_some() {
            self.bulk_written.remove(key);
            self.record(key.clone());
        }
    }

    fn gate(&mut self) -> Result<(), ConnectorError> {
        if self.down {
            return Err(ConnectorError::new(ErrorKind::Unavailable, "system is down"));
        }
        if self.fuse.tick() {
            return Err(ConnectorError::new(ErrorKind::Unavailable, "injected crash"));
        }
        Ok(())
    }

    fn apply_one(&mut self, w: &Write) -> WriteResult {
        match w {
            Write::Insert { intent, values } => {
                if let Some(col) = self.not_null.iter().find(|c| values.get(c.as_str()).is_none_or(Value::is_null)) {
                    return Err(RowError::new(
                        Some(col.clone()),
                        Some("null"),
                        format!("NOT NULL constraint failed: {col}"),
                    ));
                }
                let key = match self.key_of(values) {
                    Some(key) if self.rows.contains_key(&key) => {
                        return Err(RowError::new(
                            Some(self.key_column.clone()),
                            Some("int"),
                            format!("UNIQUE constraint failed: {}", self.key_column),
                        ))
                    }
                    Some(key) => key,
                    None => {
                        let id = self.next_id;
                        self.next_id += 1;
                        Key::from_values(&[Value::Int(id)])
                    }
                };
                let mut row = values.clone();
                row.insert(self.key_column.as_str().into(), key.values()[0].clone());
                self.rows.insert(key.clone(), row);
                self.intents.insert(intent.clone(), key.clone());
                Ok(key)
            }
            Write::Update { key, values, expect } => {
                if let Some(row) = self.rows.get(key) {
                    if expect.iter().any(|(c, v)| !row.get(c).unwrap_or(&Value::Null).same(v)) {
                        return Err(RowError::stale());
                    }
                }
                if let Some(col) = self.not_null.iter().find(|c| values.get(c.as_str()).is_some_and(Value::is_null)) {
                    return Err(RowError::new(
                        Some(col.clone()),
                        Some("null"),
                        format!("NOT NULL constraint failed: {col}"),
                    ));
                }
                if let Some(row) = self.rows.get_mut(key) {
                    row.extend(values.clone());
                }
                Ok(key.clone())
            }
            Write::Delete { key } => {
                self.rows.remove(key);
                Ok(key.clone())
            }
        }
    }
}

impl Connector for MemoryTable {
    fn capture_state(&mut self, _cursor: Option<u64>) -> Result<CaptureState, ConnectorError> {
        self.gate()?;
        Ok(if self.installed { CaptureState::Ready } else { CaptureState::Missing })
    }

    fn install(&mut self) -> Result<String, ConnectorError> {
        self.gate()?;
        self.installed = true;
        Ok("in-memory capture".into())
    }

    fn identity(&mut self) -> Result<Option<String>, ConnectorError> {
        self.gate()?;
        Ok(None)
    }

    fn head(&mut self) -> Result<u64, ConnectorError> {
        self.gate()?;
        Ok(self.next_pos)
    }

    fn changes(&mut self, after: u64, limit: usize, wait: bool) -> Result<ChangePage, ConnectorError> {
        self.gate()?;
        self.waits.push(wait);
        let touched: Vec<Touched> = self.log.iter().filter(|t| t.pos > after).take(limit).cloned().collect();
        let next = touched.last().map(|t| t.pos).unwrap_or(after);
        let behind = self.log.iter().any(|t| t.pos > next);
        Ok(ChangePage { touched, next, behind, label: None })
    }

    fn trim(&mut self, upto: u64) -> Result<(), ConnectorError> {
        self.gate()?;
        self.log.retain(|t| t.pos > upto);
        Ok(())
    }

    fn last_change_at(&mut self, key: &Key) -> Result<Option<i64>, ConnectorError> {
        self.gate()?;
        if self.no_change_times {
            return Ok(None);
        }
        Ok(self.log.iter().rev().find(|t| &t.key == key).map(|t| t.at_ms))
    }

    fn read(&mut self, keys: &[Key]) -> Result<Vec<Option<Row>>, ConnectorError> {
        self.gate()?;
        Ok(keys.iter().map(|k| self.rows.get(k).cloned()).collect())
    }

    fn scan(&mut self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Row)>, ConnectorError> {
        self.gate()?;
        let id = |k: &Key| match k.values().first() {
            Some(Value::Int(i)) => *i,
            _ => i64::MIN,
        };
        let mut all: Vec<(Key, Row)> = self.rows.iter().map(|(k, r)| (k.clone(), r.clone())).collect();
        all.sort_by_key(|(k, _)| id(k));
        Ok(all.into_iter().filter(|(k, _)| after.is_none_or(|a| id(k) > id(a))).take(limit).collect())
    }

    fn find(&mut self, column: &str, value: &Value, case_insensitive: bool) -> Result<Vec<(Key, Row)>, ConnectorError> {
        self.gate()?;
        let eq = |v: &Value| match (v, value) {
            (Value::Text(a), Value::Text(b)) if case_insensitive => a.to_lowercase() == b.to_lowercase(),
            _ => v.same(value),
        };
        Ok(self
            .rows
            .iter()
            .filter(|(_, r)| r.get(column).is_some_and(eq))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect())
    }

    fn apply(&mut self, writes: &[Write]) -> Result<Vec<WriteResult>, ConnectorError> {
        self.gate()?;
        for (key, values) in std::mem::take(&mut self.interfere) {
            self.user_update(&key, values);
        }
        let out: Vec<WriteResult> = writes.iter().map(|w| self.apply_one(w)).collect();
        self.tandem_writes += writes.len() as u64;
        // A crash right after the commit: the writes stay, the caller never hears back.
        if self.fuse.tick() {
            return Err(ConnectorError::new(ErrorKind::Unavailable, "injected crash after commit"));
        }
        Ok(out)
    }

    fn created(&mut self, intent: &str) -> Result<Option<Key>, ConnectorError> {
        self.gate()?;
        Ok(self.intents.get(intent).cloned())
    }

    fn forget_intents(&mut self, ids: &[String]) -> Result<(), ConnectorError> {
        self.gate()?;
        for id in ids {
            self.intents.remove(id);
        }
        Ok(())
    }

    fn intent_ids(&mut self) -> Result<Vec<String>, ConnectorError> {
        self.gate()?;
        Ok(self.intents.keys().cloned().collect())
    }

    fn backlog(&mut self, after: u64) -> Result<Option<u64>, ConnectorError> {
        self.gate()?;
        Ok(Some(self.log.iter().filter(|t| t.pos > after).count() as u64))
    }

    fn row_estimate(&mut self) -> Result<Option<u64>, ConnectorError> {
        Ok(Some(self.rows.len() as u64))
    }

    fn uninstall(&mut self) -> Result<String, ConnectorError> {
        self.gate()?;
        self.installed = false;
        self.log.clear();
        Ok("removed in-memory capture".into())
    }

    fn key_of(&self, values: &Row) -> Option<Key> {
        match values.get(self.key_column.as_str()) {
            Some(Value::Int(i)) if self.mapped_key => Some(Key::from_values(&[Value::Int(*i)])),
            _ => None,
        }
    }

    fn bulk_target(&mut self, phase: BulkTarget) -> Result<Vec<Key>, ConnectorError> {
        self.gate()?;
        match phase {
            BulkTarget::Begin => self.quiet_inserts = true,
            BulkTarget::End => {
                self.quiet_inserts = false;
                return Ok(self.rows.keys().filter(|k| !self.bulk_written.contains(*k)).cloned().collect());
            }
            BulkTarget::Forget => self.bulk_written.clear(),
        }
        Ok(Vec::new())
    }

    fn bulk_insert(
        &mut self,
        batch: &str,
        rows: Vec<Row>,
        before_commit: &mut dyn FnMut(&[Key]) -> bool,
    ) -> Result<Result<(), RowError>, ConnectorError> {
        self.gate()?;
        // Refused before or after the caller's commit, depending on the batch.
        if self.refuse_bulk && rows.len() % 2 == 1 {
            return Ok(Err(RowError::new(None, None, "bulk insert refused up front")));
        }
        for (key, values) in std::mem::take(&mut self.interfere) {
            self.user_update(&key, values);
        }
        let mut keys = Vec::with_capacity(rows.len());
        let mut seen = std::collections::HashSet::new();
        let mut next_id = self.next_id;
        for row in &rows {
            let key = self.key_of(row).unwrap_or_else(|| {
                next_id += 1;
                Key::from_values(&[Value::Int(next_id - 1)])
            });
            if self.rows.contains_key(&key) || !seen.insert(key.clone()) {
                return Ok(Err(RowError::new(Some(self.key_column.clone()), None, "UNIQUE constraint failed")));
            }
            if let Some(col) = self.not_null.iter().find(|c| row.get(c.as_str()).is_none_or(Value::is_null)) {
                return Ok(Err(RowError::new(Some(col.clone()), None, "NOT NULL constraint failed")));
            }
            keys.push(key);
        }
        if !before_commit(&keys) {
            return Err(ConnectorError::new(ErrorKind::Unavailable, "abandoned"));
        }
        if self.refuse_bulk {
            return Ok(Err(RowError::new(None, None, "bulk insert refused")));
        }
        self.next_id = next_id;
        self.tandem_writes += rows.len() as u64;
        for (mut row, key) in rows.into_iter().zip(keys) {
            row.insert(self.key_column.as_str().into(), key.values()[0].clone());
            if self.quiet_inserts {
                self.bulk_written.insert(key.clone());
            }
            self.rows.insert(key, row);
        }
        self.intents.insert(batch.to_string(), Key::from_values(&[]));
        if self.fuse.tick() {
            return Err(ConnectorError::new(ErrorKind::Unavailable, "injected crash after commit"));
        }
        Ok(Ok(()))
    }
}

/// A [`MemoryStore`] whose commits can be cut by a [`Fuse`] (a crash before the commit).
#[derive(Debug, Default)]
pub struct FusedStore {
    /// The state that survives crashes.
    pub inner: MemoryStore,
    /// Crash fuse.
    pub fuse: Fuse,
}

impl StateStore for FusedStore {
    fn commit(&mut self, ops: Vec<Op>) -> Result<(), StoreError> {
        if self.fuse.tick() {
            return Err(StoreError::new("injected crash before commit"));
        }
        self.inner.commit(ops)
    }
    fn cursor(&mut self, sync: &str, side: crate::mapping::Side) -> Result<Option<u64>, StoreError> {
        self.inner.cursor(sync, side)
    }
    fn inbox(&mut self, sync: &str, limit: usize) -> Result<Vec<crate::store::InboxEntry>, StoreError> {
        self.inner.inbox(sync, limit)
    }
    fn inbox_len(&mut self, sync: &str, side: crate::mapping::Side) -> Result<u64, StoreError> {
        self.inner.inbox_len(sync, side)
    }
    fn inbox_at(&mut self, sync: &str, side: crate::mapping::Side, key: &Key) -> Result<Option<i64>, StoreError> {
        self.inner.inbox_at(sync, side, key)
    }
    fn link(
        &mut self,
        sync: &str,
        side: crate::mapping::Side,
        key: &Key,
    ) -> Result<Option<crate::store::Link>, StoreError> {
        self.inner.link(sync, side, key)
    }
    fn links(&mut self, sync: &str) -> Result<Vec<crate::store::Link>, StoreError> {
        self.inner.links(sync)
    }
    fn link_count(&mut self, sync: &str) -> Result<u64, StoreError> {
        self.inner.link_count(sync)
    }
    fn intents(&mut self, sync: &str) -> Result<Vec<crate::store::Intent>, StoreError> {
        self.inner.intents(sync)
    }
    fn conflicts(&mut self, sync: Option<&str>, open_only: bool) -> Result<Vec<crate::store::Conflict>, StoreError> {
        self.inner.conflicts(sync, open_only)
    }
    fn dead_letters(&mut self, sync: Option<&str>) -> Result<Vec<crate::store::DeadLetter>, StoreError> {
        self.inner.dead_letters(sync)
    }
    fn audit(&mut self, sync: Option<&str>) -> Result<Vec<crate::store::AuditRow>, StoreError> {
        self.inner.audit(sync)
    }
    fn meta(&mut self, sync: &str, name: &str) -> Result<Option<String>, StoreError> {
        self.inner.meta(sync, name)
    }
}
