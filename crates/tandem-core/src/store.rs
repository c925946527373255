//! The state store: links, bases, cursors, inbox, intents, conflicts, dead letters, audit.
//!
//! Every change to state goes through [`StateStore::commit`], which applies a list of [`Op`]s
//! atomically: all of them or none. That is what makes a crash at any instant safe.

use crate::mapping::Side;
use crate::value::{Key, Row, Value};
use std::collections::{BTreeMap, HashMap};

/// A record waiting to be synced: it was changed on `side` at `at` (ms).
#[derive(Clone, Debug, PartialEq)]
pub struct InboxEntry {
    /// Arrival order; stable across restarts.
    pub seq: i64,
    /// The side where the record changed.
    pub side: Side,
    /// The record's key on that side.
    pub key: Key,
    /// Latest commit time seen for it (0 for initial-load rows).
    pub at: i64,
    /// Latest position in the side's change stream seen for it (0 for initial-load rows).
    pub pos: u64,
}

/// One row of the identity map.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    /// Key on the left.
    pub left: Key,
    /// Key on the right.
    pub right: Key,
    /// The last state both sides agreed on, canonical field → value.
    pub base: Row,
    /// Set when the record was deleted on that side and the delete rule kept the other side's
    /// record (soft or ignore): the record is no longer synced, and is not created again.
    pub tombstone: Option<Side>,
    /// Values Tandem is writing to each side (canonical field → value), recorded before the
    /// write and cleared with the new base after it: after a crash in between, a side whose
    /// value is the one Tandem wrote has not been changed by a user.
    pub pending: [Row; 2],
}

impl Link {
    /// The key on `side`.
    pub fn key(&self, side: Side) -> &Key {
        match side {
            Side::Left => &self.left,
            Side::Right => &self.right,
        }
    }
}

/// A create announced before it is applied, so a crash cannot create the record twice.
#[derive(Clone, Debug, PartialEq)]
pub struct Intent {
    /// Unique id, also recorded on the target beside the insert.
    pub id: String,
    /// The side the record came from.
    pub source: Side,
    /// Its key there.
    pub source_key: Key,
    /// The base the link gets once the create is confirmed.
    pub base: Row,
    /// Whether the target must be read again after the create (fields it owns).
    pub revisit: bool,
}

/// A field changed on both sides under the `hold` rule, waiting for a person.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    /// Id to resolve it by.
    pub id: i64,
    /// The sync.
    pub sync: String,
    /// Left key of the record.
    pub left_key: Key,
    /// Right key of the record.
    pub right_key: Key,
    /// The canonical field.
    pub field: String,
    /// The base value (`None` when the record was linked without one).
    pub base: Option<Value>,
    /// Left's value.
    pub left: Value,
    /// Right's value.
    pub right: Value,
    /// When it was opened (ms).
    pub opened_at: i64,
    /// How it was resolved, once it is.
    pub resolution: Option<String>,
}

/// A record that could not be synced, with the exact reason.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Id to retry it by.
    pub id: i64,
    /// The sync.
    pub sync: String,
    /// The side the change came from.
    pub side: Side,
    /// The record's key on that side.
    pub key: Key,
    /// The field at fault, when known.
    pub field: Option<String>,
    /// The type of the offending value, when known.
    pub value_type: Option<String>,
    /// What the target (or the mapping) said.
    pub error: String,
    /// When it happened (ms).
    pub at: i64,
}

/// One audit trail row: a change applied, a rule decision, a link, a delete, a conflict.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditRow {
    /// Position in the trail.
    pub id: i64,
    /// When (ms).
    pub at: i64,
    /// The sync.
    pub sync: String,
    /// `apply`, `create`, `link`, `delete`, `decision`, `conflict`, `resolve`, `dead_letter`.
    pub kind: String,
    /// The side the change came from.
    pub source: Option<Side>,
    /// Left key.
    pub left_key: Option<Key>,
    /// Right key.
    pub right_key: Option<Key>,
    /// Field, for decisions and conflicts.
    pub field: Option<String>,
    /// Base value, for decisions.
    pub base: Option<Value>,
    /// Left value, for decisions.
    pub left: Option<Value>,
    /// Right value, for decisions.
    pub right: Option<Value>,
    /// Which side's value won.
    pub winner: Option<Side>,
    /// The rule that decided.
    pub rule: Option<String>,
    /// Free detail (for `apply`: field → [before, after] as JSON).
    pub detail: String,
    /// The source's change-stream position of the change, when it came from one.
    pub position: Option<u64>,
}

/// One change to state; see [`StateStore::commit`].
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Move a side's capture position.
    Cursor { sync: String, side: Side, pos: u64 },
    /// Add a record to the inbox (or raise its time when it is there).
    Touch { sync: String, side: Side, key: Key, at: i64, pos: u64 },
    /// Remove a record from the inbox.
    Untouch { sync: String, side: Side, key: Key },
    /// Insert or replace the link with this left or right key.
    PutLink { sync: String, link: Link },
    /// A link for records that had none (a bulk load): the same as `PutLink`, without first
    /// looking for a link to update.
    NewLink { sync: String, link: Link },
    /// Remove a link by its left key.
    DropLink { sync: String, left: Key },
    /// Announce a create.
    PutIntent { sync: String, intent: Intent },
    /// Forget a create (confirmed or abandoned).
    DropIntent { sync: String, id: String },
    /// Open a held conflict (the id is assigned by the store).
    OpenConflict(Conflict),
    /// Update the values of an open conflict.
    RefreshConflict { id: i64, left: Value, right: Value },
    /// Close a conflict.
    CloseConflict { id: i64, resolution: String },
    /// Record (or replace) the dead letter of a record (the id is assigned by the store).
    DeadLetter(DeadLetter),
    /// Remove a record's dead letter.
    ClearDeadLetter { sync: String, side: Side, key: Key },
    /// Append to the audit trail (the id is assigned by the store).
    Audit(AuditRow),
    /// Set or clear a named value of a sync.
    Meta { sync: String, name: String, value: Option<String> },
}

/// What went wrong with the state store.
#[derive(Debug, thiserror::Error)]
#[error("state store: {message}")]
pub struct StoreError {
    /// What happened.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A new error without a source.
    pub fn new(message: impl Into<String>) -> Self {
        StoreError { message: message.into(), source: None }
    }
}

/// Durable state of all syncs.
pub trait StateStore {
    /// Applies all `ops` atomically and durably, in order.
    fn commit(&mut self, ops: Vec<Op>) -> Result<(), StoreError>;
    /// A side's capture position.
    fn cursor(&mut self, sync: &str, side: Side) -> Result<Option<u64>, StoreError>;
    /// Up to `limit` inbox entries in arrival order.
    fn inbox(&mut self, sync: &str, limit: usize) -> Result<Vec<InboxEntry>, StoreError>;
    /// How many records wait in the inbox of a side.
    fn inbox_len(&mut self, sync: &str, side: Side) -> Result<u64, StoreError>;
    /// The change time of a record waiting in the inbox, if it is there.
    fn inbox_at(&mut self, sync: &str, side: Side, key: &Key) -> Result<Option<i64>, StoreError>;
    /// The link of a record by its key on `side`.
    fn link(&mut self, sync: &str, side: Side, key: &Key) -> Result<Option<Link>, StoreError>;
    /// The links of many records by their keys on `side` (records without a link are absent).
    fn links_of(&mut self, sync: &str, side: Side, keys: &[Key]) -> Result<HashMap<Key, Link>, StoreError> {
        let mut out = HashMap::new();
        for k in keys {
            if let Some(l) = self.link(sync, side, k)? {
                out.insert(k.clone(), l);
            }
        }
        Ok(out)
    }
    /// All links of a sync (for checks and reconciliation).
    fn links(&mut self, sync: &str) -> Result<Vec<Link>, StoreError>;
    /// Number of links (tombstones excluded).
    fn link_count(&mut self, sync: &str) -> Result<u64, StoreError>;
    /// Announced creates not yet confirmed.
    fn intents(&mut self, sync: &str) -> Result<Vec<Intent>, StoreError>;
    /// Conflicts, optionally of one sync, optionally only open ones, in id order.
    fn conflicts(&mut self, sync: Option<&str>, open_only: bool) -> Result<Vec<Conflict>, StoreError>;
    /// Dead letters, optionally of one sync.
    fn dead_letters(&mut self, sync: Option<&str>) -> Result<Vec<DeadLetter>, StoreError>;
    /// The audit trail, optionally of one sync, in order.
    fn audit(&mut self, sync: Option<&str>) -> Result<Vec<AuditRow>, StoreError>;
    /// A named value of a sync.
    fn meta(&mut self, sync: &str, name: &str) -> Result<Option<String>, StoreError>;
}

/// An in-memory state store, for tests and the simulation.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    cursors: BTreeMap<(String, Side), u64>,
    inbox: BTreeMap<(String, Side, Key), (i64, i64, u64)>,
    links: BTreeMap<(String, Key), Link>,
    intents: BTreeMap<(String, String), Intent>,
    conflicts: Vec<Conflict>,
    dead: Vec<DeadLetter>,
    audit: Vec<AuditRow>,
    meta: BTreeMap<(String, String), String>,
    seq: i64,
    /// When set, the next commit fails (and applies nothing): a crash before commit.
    pub fail_next_commit: bool,
}

impl MemoryStore {
    fn apply(&mut self, op: Op) {
        match op {
            Op::Cursor { sync, side, pos } => {
                self.cursors.insert((sync, side), pos);
            }
            Op::Touch { sync, side, key, at, pos } => {
                self.seq += 1;
                let seq = self.seq;
                let e = self.inbox.entry((sync, side, key)).or_insert((seq, at, pos));
                e.1 = e.1.max(at);
                e.2 = e.2.max(pos);
            }
            Op::Untouch { sync, side, key } => {
                self.inbox.remove(&(sync, side, key));
            }
            Op::PutLink { sync, link } | Op::NewLink { sync, link } => {
                self.links.retain(|(s, _), l| !(s == &sync && (l.left == link.left || l.right == link.right)));
                self.links.insert((sync, link.left.clone()), link);
            }
            Op::DropLink { sync, left } => {
                self.links.remove(&(sync, left));
            }
            Op::PutIntent { sync, intent } => {
                self.intents.insert((sync, intent.id.clone()), intent);
            }
            Op::DropIntent { sync, id } => {
                self.intents.remove(&(sync, id));
            }
            Op::OpenConflict(mut c) => {
                c.id = self.conflicts.len() as i64 + 1;
                self.conflicts.push(c);
            }
            Op::RefreshConflict { id, left, right } => {
                if let Some(c) = self.conflicts.iter_mut().find(|c| c.id == id) {
                    c.left = left;
                    c.right = right;
                }
            }
            Op::CloseConflict { id, resolution } => {
                if let Some(c) = self.conflicts.iter_mut().find(|c| c.id == id) {
                    c.resolution = Some(resolution);
                }
            }
            Op::DeadLetter(mut d) => {
                self.dead.retain(|x| !(x.sync == d.sync && x.side == d.side && x.key == d.key));
                self.seq += 1;
                d.id = self.seq;
                self.dead.push(d);
            }
            Op::ClearDeadLetter { sync, side, key } => {
                self.dead.retain(|x| !(x.sync == sync && x.side == side && x.key == key));
            }
            Op::Audit(mut a) => {
                a.id = self.audit.len() as i64 + 1;
                self.audit.push(a);
            }
            Op::Meta { sync, name, value } => match value {
                Some(v) => {
                    self.meta.insert((sync, name), v);
                }
                None => {
                    self.meta.remove(&(sync, name));
                }
            },
        }
    }
}

impl StateStore for MemoryStore {
    fn commit(&mut self, ops: Vec<Op>) -> Result<(), StoreError> {
        if std::mem::take(&mut self.fail_next_commit) {
            return Err(StoreError::new("injected crash before commit"));
        }
        for op in ops {
            self.apply(op);
        }
        Ok(())
    }

    fn cursor(&mut self, sync: &str, side: Side) -> Result<Option<u64>, StoreError> {
        Ok(self.cursors.get(&(sync.to_string(), side)).copied())
    }

    fn inbox(&mut self, sync: &str, limit: usize) -> Result<Vec<InboxEntry>, StoreError> {
        let mut v: Vec<InboxEntry> = self
            .inbox
            .iter()
            .filter(|((s, _, _), _)| s == sync)
            .map(|((_, side, key), (seq, at, pos))| InboxEntry {
                seq: *seq,
                side: *side,
                key: key.clone(),
                at: *at,
                pos: *pos,
            })
            .collect();
        v.sort_by_key(|e| e.seq);
        v.truncate(limit);
        Ok(v)
    }

    fn inbox_len(&mut self, sync: &str, side: Side) -> Result<u64, StoreError> {
        Ok(self.inbox.keys().filter(|(s, sd, _)| s == sync && *sd == side).count() as u64)
    }

    fn inbox_at(&mut self, sync: &str, side: Side, key: &Key) -> Result<Option<i64>, StoreError> {
        Ok(self.inbox.get(&(sync.to_string(), side, key.clone())).map(|(_, at, _)| *at))
    }

    fn link(&mut self, sync: &str, side: Side, key: &Key) -> Result<Option<Link>, StoreError> {
        Ok(self.links.iter().find(|((s, _), l)| s == sync && l.key(side) == key).map(|(_, l)| l.clone()))
    }

    fn links(&mut self, sync: &str) -> Result<Vec<Link>, StoreError> {
        Ok(self.links.iter().filter(|((s, _), _)| s == sync).map(|(_, l)| l.clone()).collect())
    }

    fn link_count(&mut self, sync: &str) -> Result<u64, StoreError> {
        Ok(self.links.iter().filter(|((s, _), l)| s == sync && l.tombstone.is_none()).count() as u64)
    }

    fn intents(&mut self, sync: &str) -> Result<Vec<Intent>, StoreError> {
        Ok(self.intents.iter().filter(|((s, _), _)| s == sync).map(|(_, i)| i.clone()).collect())
    }

    fn conflicts(&mut self, sync: Option<&str>, open_only: bool) -> Result<Vec<Conflict>, StoreError> {
        Ok(self
            .conflicts
            .iter()
            .filter(|c| sync.is_none_or(|s| c.sync == s) && (!open_only || c.resolution.is_none()))
            .cloned()
            .collect())
    }

    fn dead_letters(&mut self, sync: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self.dead.iter().filter(|d| sync.is_none_or(|s| d.sync == s)).cloned().collect())
    }

    fn audit(&mut self, sync: Option<&str>) -> Result<Vec<AuditRow>, StoreError> {
        Ok(self.audit.iter().filter(|a| sync.is_none_or(|s| a.sync == s)).cloned().collect())
    }

    fn meta(&mut self, sync: &str, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.meta.get(&(sync.to_string(), name.to_string())).cloned())
    }
}
