//! The contract between the engine and one entity (table) of one system.

use crate::value::{Key, Row, Value};

/// One captured change: a record of the entity was written (inserted, updated or deleted) by
/// someone other than Tandem. The engine reads the record's current state when it processes
/// the change, so a change only needs to say which record and when.
#[derive(Clone, Debug, PartialEq)]
pub struct Touched {
    /// The change's position in the system's change stream.
    pub pos: u64,
    /// The record's key.
    pub key: Key,
    /// Commit time on the source system, milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// A page of captured changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChangePage {
    /// Changes after the requested position, in stream order.
    pub touched: Vec<Touched>,
    /// The position to continue from (the last change's, or the requested one when empty).
    pub next: u64,
    /// True when the stream had not yet caught up with the system when the page was cut:
    /// more changes may exist already, so the pair is not idle.
    pub behind: bool,
    /// `next` as the system names it, when that says more than the number (a binlog file and
    /// offset with the GTID there); kept in state beside the cursor, shown by `tandem status`.
    pub label: Option<String>,
}

/// One write Tandem makes to a system.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Create a record. `intent` is recorded in the same transaction, so after a crash the
    /// engine can ask [`Connector::created`] whether the insert happened and which key it got.
    Insert {
        /// Unique id of this create, recorded beside the insert.
        intent: String,
        /// Column values; key columns the system generates are left out.
        values: Row,
    },
    /// Set the given columns of an existing record (other columns stay as they are), but only
    /// while those columns still hold the values in `expect` (what the engine read): a user's
    /// write that lands between the engine's read and this write must not be overwritten. A
    /// record that no longer matches is reported as [`RowError::stale`].
    Update {
        /// The record.
        key: Key,
        /// Columns to set.
        values: Row,
        /// The values the engine read for some of those columns (empty: no check).
        expect: Row,
    },
    /// Delete a record (no error when it is already gone).
    Delete {
        /// The record.
        key: Key,
    },
}

/// Why one write could not be applied (the rest of its batch still is).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct RowError {
    /// The column at fault, when known.
    pub column: Option<String>,
    /// The type of the value written to it, when known.
    pub value_type: Option<&'static str>,
    /// The system's error, in words.
    pub reason: String,
    /// True when the record changed since the engine read it: not an error, the record is
    /// merged again once its new change is captured.
    pub stale: bool,
}

impl RowError {
    /// A row error that a person has to look at.
    pub fn new(column: Option<String>, value_type: Option<&'static str>, reason: impl Into<String>) -> Self {
        RowError { column, value_type, reason: reason.into(), stale: false }
    }

    /// The record changed since it was read.
    pub fn stale() -> Self {
        RowError { column: None, value_type: None, reason: "the record changed since it was read".into(), stale: true }
    }
}

/// The result of one write: the record's key (the generated one for inserts) or why it failed.
pub type WriteResult = Result<Key, RowError>;

/// What went wrong talking to a system.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectorError {
    /// Whether retrying later may help.
    pub kind: ErrorKind,
    /// What happened, where.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Decides retry and the operator's hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The system is down, busy or unreachable: retry with backoff.
    Unavailable,
    /// The system does not look like the config says (missing table or column): fix the config.
    Schema,
    /// Anything else: a bug or corrupted data; stop and report.
    Internal,
}

impl ConnectorError {
    /// A new error without a source.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ConnectorError { kind, message: message.into(), source: None }
    }
}

/// Something about an entity's installed capture that its position does not show, for
/// `tandem check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureNote {
    /// What holds.
    pub text: String,
    /// What to do about it.
    pub fix: String,
    /// True when changes are missed until it is fixed (`tandem check` then fails).
    pub problem: bool,
}

/// Whether change capture is in place for an entity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureState {
    /// Capture is installed and its position is intact.
    Ready,
    /// Capture was never installed (or was removed).
    Missing,
    /// Capture exists but its position can no longer be trusted (a slot invalidated, a log
    /// purged); the text says what happened.
    Lost(String),
}

/// Where a bulk initial load into an entity stands (see [`Connector::bulk_target`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkTarget {
    /// Bulk pages are about to be written into the entity, or go on after a restart.
    Begin,
    /// The last page is written.
    End,
    /// The engine has queued the records [`BulkTarget::End`] reported.
    Forget,
}

/// One entity of one system, as the engine uses it.
///
/// Delivery is at least once: the engine may repeat any write after a crash, so `apply` must be
/// idempotent for updates and deletes; inserts are made idempotent by their intent id. Changes
/// are delivered in stream order. Tandem's own writes must not be delivered by `changes`
/// (they are tagged so capture skips them); the engine's base comparison is the safety net.
pub trait Connector {
    /// Whether capture is installed and intact, given Tandem's durable position (`None` before
    /// the first run): a stream that restarts behind that position, or a slot confirmed past
    /// it, is `Lost`. Reads only.
    fn capture_state(&mut self, cursor: Option<u64>) -> Result<CaptureState, ConnectorError>;
    /// What `tandem check` should say about the installed capture beyond [`Self::capture_state`]
    /// (`loading`: the state file has a bulk load into this entity under way). Reads only.
    fn capture_notes(&mut self, loading: bool) -> Result<Vec<CaptureNote>, ConnectorError> {
        let _ = loading;
        Ok(Vec::new())
    }
    /// Installs change capture (replacing a lost one); returns a description for the user.
    /// After this, every later change is delivered by `changes` from `head()` on.
    fn install(&mut self) -> Result<String, ConnectorError>;
    /// What identifies the system instance (a server's system identifier), so a position is
    /// never used against a different server. `None` where there is nothing to check.
    fn identity(&mut self) -> Result<Option<String>, ConnectorError>;
    /// The position of the latest change in the stream (where a fresh capture starts).
    fn head(&mut self) -> Result<u64, ConnectorError>;
    /// Up to `limit` changes after position `after`, in order. With `wait`, a stream that has
    /// not caught up with the system's current position yet is waited for, briefly; without,
    /// only what has arrived is returned (`behind` tells that more exists), because the engine
    /// has other work meanwhile (an initial load, a backlog of changes to merge).
    fn changes(&mut self, after: u64, limit: usize, wait: bool) -> Result<ChangePage, ConnectorError>;
    /// Forgets changes up to and including `upto`: they are durable in Tandem's state.
    fn trim(&mut self, upto: u64) -> Result<(), ConnectorError>;
    /// The commit time of the latest not yet trimmed change to `key`.
    fn last_change_at(&mut self, key: &Key) -> Result<Option<i64>, ConnectorError>;
    /// A run is about to stop (a `--once` run caught up, or the operator stopped it): a system
    /// may prepare what lets a position acknowledged in one more cycle become where its next run
    /// starts reading. True when it did, and wants that cycle.
    fn prepare_stop(&mut self) -> Result<bool, ConnectorError> {
        Ok(false)
    }
    /// A hint that [`Connector::read`] of these keys follows: a system may start reading them
    /// in the background (the engine reads both sides at once this way).
    fn prefetch(&mut self, _keys: &[Key]) {}
    /// The current rows for `keys` (`None` where the record does not exist), in order.
    fn read(&mut self, keys: &[Key]) -> Result<Vec<Option<Row>>, ConnectorError>;
    /// Up to `limit` records with keys after `after`, in key order (initial load).
    fn scan(&mut self, after: Option<&Key>, limit: usize) -> Result<Vec<(Key, Row)>, ConnectorError>;
    /// Records whose `column` equals `value` (case-insensitively for text when asked).
    fn find(&mut self, column: &str, value: &Value, case_insensitive: bool) -> Result<Vec<(Key, Row)>, ConnectorError>;
    /// Applies the writes in one transaction, tagged as Tandem's own; one result per write.
    /// A write that fails is reported in its result and the others still apply.
    fn apply(&mut self, writes: &[Write]) -> Result<Vec<WriteResult>, ConnectorError>;
    /// The key created by the insert with this intent id, if that insert was committed.
    fn created(&mut self, intent: &str) -> Result<Option<Key>, ConnectorError>;
    /// Forgets the intent records of these ids (their links are durable in Tandem's state).
    fn forget_intents(&mut self, ids: &[String]) -> Result<(), ConnectorError>;
    /// The ids of the intent and batch markers Tandem left with this entity (see
    /// [`Connector::created`]), so markers whose outcome the state already holds can be
    /// swept. Empty where the system keeps none.
    fn intent_ids(&mut self) -> Result<Vec<String>, ConnectorError> {
        Ok(Vec::new())
    }
    /// Whether `write` would be accepted, judged without writing anything (columns, types,
    /// required values), for `tandem plan`. `Ok` where the system cannot tell in advance.
    fn check_write(&mut self, _write: &Write) -> Result<(), RowError> {
        Ok(())
    }
    /// True when [`Connector::changes`] only reads (a change-log table, not a replication
    /// stream that confirms what it was sent), so `tandem plan` may look at waiting changes.
    fn changes_read_only(&self) -> bool {
        false
    }
    /// This connector, where it may be used from another thread: the engine then writes both
    /// sides of a batch at the same time. `None` (the default) keeps them one after the other.
    fn as_send(&mut self) -> Option<&mut (dyn Connector + Send)> {
        None
    }
    /// How many captured changes wait after `after`, where the system can count them.
    fn backlog(&mut self, after: u64) -> Result<Option<u64>, ConnectorError>;
    /// Roughly how many records the entity holds (for progress displays), when cheap to know.
    fn row_estimate(&mut self) -> Result<Option<u64>, ConnectorError>;
    /// Removes what `install` put on the system; returns what was removed.
    fn uninstall(&mut self) -> Result<String, ConnectorError>;
    /// The key of the record an insert of `values` creates, when the values determine it
    /// exactly as [`Connector::read`] would report it (every key column is written, in a type
    /// whose text form is canonical). `None` when the system generates the key or cannot say
    /// (a bulk insert then reports the generated keys).
    fn key_of(&self, _values: &Row) -> Option<Key> {
        None
    }
    /// Tells the target of a bulk load where the load stands. From `Begin` to `End` the change
    /// stream may leave inserts out (Tandem's own pages are most of them: a system that cannot
    /// drop its own writes before sending them would otherwise send the whole load back). `End`
    /// then returns the keys of the records the pages did not write, or that changed since (a
    /// user's insert during the load among them), which the engine queues as changes; `Forget`
    /// comes after that is durable. Each phase may be repeated after a crash. The default
    /// leaves the stream as it is and reports nothing.
    fn bulk_target(&mut self, _phase: BulkTarget) -> Result<Vec<Key>, ConnectorError> {
        Ok(Vec::new())
    }
    /// Inserts all `rows` in one transaction, tagged as Tandem's own, together with the marker
    /// `batch` (reported by [`Connector::created`] and removed by
    /// [`Connector::forget_intents`]), or nothing at all. Calls `before_commit` once with the
    /// keys of the new records in row order (as [`Connector::key_of`] gives them, or as the
    /// system generated them) before the transaction commits; the rows may still be on their
    /// way meanwhile. When it returns false the transaction is rolled back and the call fails.
    /// `Ok(Err(..))` when a row was refused (a key already taken, a value that does not fit):
    /// nothing was written, and the engine takes the rows one by one. The default refuses every
    /// batch.
    fn bulk_insert(
        &mut self,
        _batch: &str,
        _rows: Vec<Row>,
        _before_commit: &mut dyn FnMut(&[Key]) -> bool,
    ) -> Result<Result<(), RowError>, ConnectorError> {
        Ok(Err(RowError::new(None, None, "this system takes new records one by one")))
    }
}
